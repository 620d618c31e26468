//! Erasure, tried the way a privacy reviewer would: by every identifier of
//! every captured notification, through links (a merged lead, an event with
//! only an email), for bodies kept as `invalid`, for people we never cached,
//! across backup and restore and an index rebuilt from the log, and for a
//! bulk deletion in Intercom. Every check ends in a search of the bytes.

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, Instant};

use common::*;
use intercom_webhooks::identifiers::identifiers;
use serde_json::{json, Value};

/// Small segments so a data dir is quick to search byte by byte.
const SMALL: &str = "[store]\nsegment_max_bytes = 65536\n[purge]\nshred_interval = \"200ms\"\n";

async fn erase(app: &TestApp, body: Value) -> Value {
    let r = app.admin_post("/admin/erase", body.clone()).await;
    assert_eq!(r.status(), 200, "{body}");
    r.json().await.unwrap()
}

/// The status of event `id` in `events list --json` output ("" if absent).
fn status_in(list: &str, id: &str) -> String {
    let v: Value = serde_json::from_str(list).unwrap_or(Value::Null);
    v["events"]
        .as_array()
        .and_then(|es| es.iter().find(|e| e["id"] == id))
        .map(|e| e["status"].as_str().unwrap_or("").to_string())
        .unwrap_or_default()
}

/// Waits until no segment is left to shred (webhook erasures are batched).
async fn wait_shredded(app: &TestApp) {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let stats = app.admin_json("/admin/stats").await;
        if stats["erasure"]["segments_to_shred"] == 0 {
            return;
        }
        assert!(Instant::now() < deadline, "segments never shredded: {stats}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn erasing_by_any_identifier_of_any_capture_leaves_nothing_that_carries_it() {
    let dir = tempfile::tempdir().unwrap();
    let app = spawn_app_with(dir.path(), SMALL, test_env()).await;
    let needles = erase_every_identifier_of_every_capture(&app).await;
    let backup = dir.path().join("after.backup");
    let bin = Binary::new(dir.path()).with_admin(app.admin);
    let (code, _, err) = bin.run(&["backup", "--out", backup.to_str().unwrap()]);
    assert_eq!(code, 0, "{err}");
    app.stop().await;
    // No byte of the data dir or of a backup holds any personal string of
    // an erased notification.
    let needles: Vec<&str> = needles.iter().map(String::as_str).collect();
    assert_absent_from_files(&dir.path().join("data"), &needles);
    assert_absent_from_files(&backup, &needles);
}

fn contact(id: &str, email: &str, role: &str, external_id: Value) -> Value {
    json!({"type":"contact","id":id,"role":role,"email":email,"external_id":external_id,
           "name":"Léa Linked","phone":"+33600000042","updated_at":1767225600})
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn erasure_follows_every_link_to_the_person() {
    let dir = tempfile::tempdir().unwrap();
    let app = spawn_app_with(dir.path(), SMALL, test_env()).await;
    let (lead, user) = ("65f0c0ffee00000000001ead", "65f0c0ffee0000000000005e");
    let email = "lea.linked@example.org";
    let ext = "lea.linked.external@example.org";
    let bodies = [
        // A lead and their conversation...
        notification(
            "n_lead",
            "contact.lead.created",
            contact(lead, email, "lead", Value::Null),
            1767225600,
        ),
        notification(
            "n_conv",
            "conversation.user.created",
            json!({"type":"conversation","id":"8801","updated_at":1767225700,
                   "contacts":{"type":"contact.list","contacts":[{"type":"contact","id":lead}]},
                   "source":{"type":"conversation","body":"<p>Léa here, my flat is 4B</p>","author":{"type":"lead","id":lead,"email":email}}}),
            1767225700,
        ),
        // ...merged into a user whose external id is an email...
        notification(
            "n_merge",
            "contact.merged",
            {
                let mut c = contact(user, email, "user", json!(ext));
                c["merged_from"] = json!({"type":"contact","id":lead});
                c
            },
            1767225800,
        ),
        // ...an event with only an Intercom user id and the email...
        notification(
            "n_event",
            "event.created",
            json!({"type":"event","id":"ev-1","event_name":"bought","intercom_user_id":user,"user_id":ext,"email":email,"created_at":1767225900}),
            1767225900,
        ),
        // ...and a signed body that is not a notification, with the email.
        format!("{{\"note\":\"forwarded by a proxy\",\"who\":\"{email}\" -- truncated").into_bytes(),
    ];
    for b in &bodies {
        let st = app.post_signed(b).await.status();
        assert!(st == 200 || st == 202, "{st}");
    }
    app.wait_idle().await;
    // Indexed a moment after its answer: polled for.
    let invalid = app
        .admin_until("/admin/events?status=invalid", |v| v["events"][0]["id"].is_string())
        .await["events"][0]["id"]
        .as_str()
        .unwrap()
        .to_string();

    // The external id never sits in the cache in plaintext.
    app.stop().await;
    assert_absent_from_files(&dir.path().join("data"), &[ext, email, "Léa Linked", "+33600000042"]);
    let app = spawn_app_with(dir.path(), SMALL, test_env()).await;
    let shown = app.admin_json(&format!("/admin/contacts/{user}")).await;
    assert_eq!(shown["external_id"], ext, "operators still see it: {shown}");

    // By the surviving user's id: the lead's events and conversation too.
    let dry = erase(&app, json!({"contact_id": user, "local_only": true, "dry_run": true})).await;
    let events: BTreeSet<String> = dry["would_erase"]["local"]["events"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_str().unwrap().to_string())
        .collect();
    let expected: BTreeSet<String> = ["n_lead", "n_conv", "n_merge", "n_event", invalid.as_str()]
        .iter()
        .map(|s| s.to_string())
        .collect();
    assert_eq!(events, expected, "{dry}");
    assert_eq!(dry["would_erase"]["local"]["cached_conversations"], json!(["8801"]));
    assert_eq!(dry["matched_nothing"], false);
    let done = erase(&app, json!({"contact_id": user, "local_only": true})).await;
    assert_eq!(done["local"]["events"], 5, "{done}");
    for id in expected.iter() {
        assert!(app.erased(id).await, "{id}");
    }
    assert_eq!(app.admin_get(&format!("/admin/contacts/{lead}")).await.status(), 404);
    assert_eq!(app.admin_get("/admin/conversations/8801").await.status(), 404);

    // Nothing left: said plainly.
    let none = erase(&app, json!({"email": email, "local_only": true, "dry_run": true})).await;
    assert_eq!(none["matched_nothing"], true, "{none}");
    assert!(none["note"].as_str().unwrap().contains("matches nothing"));
    app.stop().await;
    assert_absent_from_files(
        &dir.path().join("data"),
        &[email, ext, "Léa Linked", "+33600000042", "flat is 4B"],
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_email_erases_what_we_never_cached() {
    let dir = tempfile::tempdir().unwrap();
    // Only contact topics are cached: an event.created is stored, never cached.
    let app = spawn_app_with(dir.path(), SMALL, test_env()).await;
    let email = "never.cached@example.org";
    let body = notification(
        "n_only_event",
        "event.created",
        json!({"type":"event","id":"ev-9","event_name":"x","intercom_user_id":"65f0c0ffee00000000000c0c","email":email}),
        1767225600,
    );
    assert_eq!(app.post_signed(&body).await.status(), 200);
    app.wait_idle().await;
    let done = erase(&app, json!({"email": email, "local_only": true})).await;
    assert_eq!(done["local"]["events"], 1, "{done}");
    assert_eq!(done["matched_nothing"], false);
    assert!(app.erased("n_only_event").await);
    app.stop().await;
    assert_absent_from_files(&dir.path().join("data"), &[email]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bulk_deletion_is_unreadable_at_once_and_shredded_in_one_pass() {
    let dir = tempfile::tempdir().unwrap();
    // A long shred interval: what is erased must be unreadable before it.
    let app = spawn_app_with(
        dir.path(),
        "[store]\nsegment_max_bytes = 65536\n[purge]\nshred_interval = \"3s\"\n",
        test_env(),
    )
    .await;
    let n = 60;
    let id = |i: usize| format!("65f0c0ffee00000000{i:06}");
    for i in 0..n {
        let mut c = contact(&id(i), &format!("bulk{i:03}@example.org"), "user", Value::Null);
        c["custom_attributes"] = json!({"bio": "a".repeat(2000)});
        let b = notification(&format!("n_c{i}"), "contact.user.created", c, 1767225600);
        assert_eq!(app.post_signed(&b).await.status(), 200);
    }
    app.wait_idle().await;
    let segments_before = written_segments(&app.data_dir()).len();
    assert!(segments_before >= 3, "spread over segments: {segments_before}");
    for i in 0..n {
        let b = notification(
            &format!("n_d{i}"),
            "contact.deleted",
            json!({"type":"contact","id":id(i),"deleted":true}),
            1767229200,
        );
        assert_eq!(app.post_signed(&b).await.status(), 200);
    }
    app.wait_idle().await;
    for i in 0..n {
        assert!(app.erased(&format!("n_c{i}")).await, "unreadable at once");
    }
    let stats = app.admin_json("/admin/stats").await;
    let queued = stats["erasure"]["segments_to_shred"].as_u64().unwrap();
    assert!(queued >= 1, "shredding is batched: {stats}");
    wait_shredded(&app).await;
    // Each old segment was rewritten once for all 60 erasures, not once each.
    let audit = app.admin_json("/admin/audit").await;
    let erasures = audit["entries"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|e| e["action"] == "erase")
        .count();
    assert_eq!(erasures, n);
    app.stop().await;
    let needles: Vec<String> = (0..n).map(|i| format!("bulk{i:03}@example.org")).collect();
    let needles: Vec<&str> = needles.iter().map(String::as_str).collect();
    assert_absent_from_files(&dir.path().join("data"), &needles);
}

/// Webhook erasures are shredded in one pass per burst: not while they
/// keep coming (nor before the longest wait), and at once after a quiet
/// moment.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_shred_pass_waits_for_a_quiet_moment() {
    for (quiet, shredded) in [("1h", false), ("300ms", true)] {
        let dir = tempfile::tempdir().unwrap();
        let toml = format!(
            "[store]\nsegment_max_bytes = 65536\n[purge]\nshred_interval = \"1h\"\nshred_quiet = \"{quiet}\"\n"
        );
        let app = spawn_app_with(dir.path(), &toml, test_env()).await;
        let id = |i: usize| format!("65f0c0ffee11000000{i:06}");
        for i in 0..4 {
            let c = contact(&id(i), &format!("quiet{i}@example.org"), "user", Value::Null);
            let b = notification(&format!("n_c{i}"), "contact.user.created", c, 1767225600);
            assert_eq!(app.post_signed(&b).await.status(), 200);
            let d = json!({"type":"contact","id":id(i),"deleted":true});
            let b = notification(&format!("n_d{i}"), "contact.deleted", d, 1767229200);
            assert_eq!(app.post_signed(&b).await.status(), 200);
        }
        app.wait_idle().await;
        if shredded {
            wait_shredded(&app).await;
        } else {
            tokio::time::sleep(Duration::from_secs(2)).await;
            let stats = app.admin_json("/admin/stats").await;
            assert!(
                stats["erasure"]["segments_to_shred"].as_u64().unwrap() >= 1,
                "no pass before the quiet moment or the longest wait: {stats}"
            );
        }
        for i in 0..4 {
            assert!(app.erased(&format!("n_c{i}")).await, "unreadable either way");
        }
        app.stop().await;
    }
}

/// The real binary: a backup taken before an erasure, restored after it,
/// does not bring the person back; nor does an index rebuilt from the log.
#[test]
fn restore_and_rebuild_keep_the_erased_erased() {
    let dir = tempfile::tempdir().unwrap();
    let bin = Binary::new(dir.path());
    let (child, public, admin) = bin.serve(&[]);
    let bin = bin.with_admin(admin);
    let email = "restored.ghost@example.org";
    let rt = tokio::runtime::Runtime::new().unwrap();
    let post = |body: Vec<u8>| {
        rt.block_on(async {
            ::reqwest::Client::new()
                .post(format!("http://{public}/webhooks/intercom"))
                .header("x-hub-signature", intercom_webhooks::verify::sign(SECRET, &body))
                .body(body)
                .send()
                .await
                .unwrap()
                .status()
                .as_u16()
        })
    };
    let ghost = "65f0c0ffee0000000000a0a0";
    assert_eq!(
        post(notification(
            "n_ghost",
            "contact.user.created",
            contact(ghost, email, "user", Value::Null),
            1767225600
        )),
        200
    );
    assert_eq!(
        post(notification(
            "n_other",
            "contact.user.created",
            contact("65f0c0ffee0000000000b0b0", "stays@example.org", "user", Value::Null),
            1767225600
        )),
        200
    );
    std::thread::sleep(Duration::from_millis(500));
    let before = dir.path().join("before.backup");
    let (code, _, err) = bin.run(&["backup", "--out", before.to_str().unwrap()]);
    assert_eq!(code, 0, "{err}");
    let (code, _, err) = bin.run(&["erase", "--email", email, "--local-only", "--yes"]);
    assert_eq!(code, 0, "{err}");
    child.terminate();
    let data = dir.path().join("data");
    assert_absent_from_files(&data, &[email]);

    // Restore into a new data dir, with the live ledger.
    let target = dir.path().join("restored");
    let restored = Binary {
        dir: dir.path().to_path_buf(),
        env: bin
            .env
            .iter()
            .filter(|(k, _)| k != "INTERCOM_WEBHOOKS_DATA_DIR" && k != "INTERCOM_WEBHOOKS_ADMIN_URL")
            .cloned()
            .chain([(
                "INTERCOM_WEBHOOKS_DATA_DIR".to_string(),
                target.to_str().unwrap().to_string(),
            )])
            .chain([(
                "INTERCOM_WEBHOOKS_ADMIN_URL".to_string(),
                "http://127.0.0.1:9".to_string(),
            )])
            .collect(),
    };
    let ledger = data.join("erasures.ledger");
    let (code, _, err) = restored.run(&["restore", "--from", before.to_str().unwrap()]);
    assert_eq!(code, 2, "refused without the newer ledger: {err}");
    let (code, out, err) = restored.run(&[
        "restore",
        "--from",
        before.to_str().unwrap(),
        "--ledger",
        ledger.to_str().unwrap(),
    ]);
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("restored"), "{out}");
    let events = restored.run(&["events", "list", "--json"]).1;
    assert_eq!(
        status_in(&events, "n_ghost"),
        "erased",
        "the erased person came back: {events}"
    );
    assert_eq!(status_in(&events, "n_other"), "processed", "{events}");
    assert_eq!(restored.run(&["cache", "show", "contact", ghost]).0, 3);
    assert_absent_from_files(&target, &[email]);

    // Without the newer ledger, knowingly: they come back (documented).
    let careless = dir.path().join("careless");
    let mut c = Binary {
        dir: dir.path().to_path_buf(),
        env: restored.env.clone(),
    };
    c.env.retain(|(k, _)| k != "INTERCOM_WEBHOOKS_DATA_DIR");
    c.env
        .push(("INTERCOM_WEBHOOKS_DATA_DIR".into(), careless.to_str().unwrap().into()));
    let (code, _, err) = c.run(&["restore", "--from", before.to_str().unwrap(), "--without-ledger"]);
    assert_eq!(code, 0, "{err}");
    let events = c.run(&["events", "list", "--json"]).1;
    assert_eq!(status_in(&events, "n_ghost"), "processed", "{events}");

    // An index rebuilt from the intake log (the README's recovery for an
    // index that will not open): the ledger erases them again. Rebuild the
    // careless copy, now with the live ledger beside it.
    std::fs::copy(&ledger, careless.join("erasures.ledger")).unwrap();
    std::fs::rename(careless.join("index"), dir.path().join("index-aside")).unwrap();
    let (server, _, admin) = c.serve(&[]);
    let remote = Binary {
        dir: dir.path().to_path_buf(),
        env: c.env.clone(),
    }
    .with_admin(admin);
    let (code, events, err) = remote.run(&["events", "list", "--json"]);
    assert_eq!(code, 0, "{err}");
    assert_eq!(
        status_in(&events, "n_ghost"),
        "erased",
        "rebuilt index brought them back: {events}"
    );
    assert_eq!(status_in(&events, "n_other"), "processed", "{events}");
    server.terminate();
    assert_absent_from_files(&careless, &[email]);
}

/// Counts per kind of identifier, so a capture set that lost a kind fails.
#[test]
fn the_captures_exercise_every_kind_of_identifier() {
    let mut kinds: BTreeMap<&str, usize> = BTreeMap::new();
    for (_, bytes, _) in captures() {
        let ids = identifiers(&bytes);
        for p in &ids.persons {
            *kinds.entry("contact_id").or_default() += usize::from(p.contact_id.is_some());
            *kinds.entry("email").or_default() += p.emails.len();
            *kinds.entry("external_id").or_default() += p.external_ids.len();
        }
        *kinds.entry("other_email").or_default() += ids.other_emails.len();
        *kinds.entry("merge").or_default() += ids.merges.len();
    }
    for k in ["contact_id", "email", "external_id", "other_email"] {
        assert!(kinds.get(k).copied().unwrap_or(0) > 0, "{k}: {kinds:?}");
    }
}

/// A store indexed by an older release (contact ids only, external ids in
/// the cache in plaintext) is brought up to the current rules when opened.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_older_store_is_reindexed_on_open() {
    let dir = tempfile::tempdir().unwrap();
    let app = spawn_app_with(dir.path(), SMALL, test_env()).await;
    let email = "old.release@example.org";
    let body = notification(
        "n_old",
        "event.created",
        json!({"type":"event","id":"ev-old","event_name":"x","intercom_user_id":"65f0c0ffee00000000000a1d","email":email}),
        1767225600,
    );
    assert_eq!(app.post_signed(&body).await.status(), 200);
    app.wait_idle().await;
    app.stop().await;

    let s = settings(dir.path(), SMALL, &test_env());
    let store = intercom_webhooks::ops::open_store(&s).unwrap();
    store
        .set_subjects("n_old", vec!["65f0c0ffee00000000000a1d".to_string()])
        .unwrap();
    store.clear_state_flag("subjects_v2").unwrap();
    store.close().unwrap();
    drop(store);

    let app = spawn_app_with(dir.path(), SMALL, test_env()).await;
    let done = erase(&app, json!({"email": email, "local_only": true})).await;
    assert_eq!(
        done["local"]["events"], 1,
        "found by its email after the upgrade: {done}"
    );
    app.stop().await;
    assert_absent_from_files(&dir.path().join("data"), &[email]);
}

/// Whatever reaches a worker after a contact's erasure and carries the
/// contact's id (a late or out-of-order notification, or one stored just
/// before the erasure that the index had not taken in when the erasure
/// looked) is erased instead of processed. A notification carrying only the
/// erased email, received later, may be a new person's and is kept.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn what_reaches_a_worker_after_an_erasure_about_the_erased_contact_goes_too() {
    let dir = tempfile::tempdir().unwrap();
    let app = spawn_app_with(dir.path(), SMALL, test_env()).await;
    let (contact, email) = ("65f0c0ffee00000000000d0d", "late.comer@example.org");
    let event = |id: &str, user: Option<&str>| {
        let mut item = json!({"type":"event","id":format!("ev-{id}"),"event_name":"x","email":email});
        if let Some(u) = user {
            item["intercom_user_id"] = json!(u);
        }
        notification(id, "event.created", item, 1767225600)
    };
    assert_eq!(app.post_signed(&event("n_before", Some(contact))).await.status(), 200);
    app.wait_final("n_before").await;
    let done = erase(&app, json!({"contact_id": contact, "local_only": true})).await;
    assert_eq!(done["local"]["events"], 1, "{done}");

    assert_eq!(app.post_signed(&event("n_late", Some(contact))).await.status(), 200);
    assert_eq!(app.post_signed(&event("n_new_person", None)).await.status(), 200);
    app.wait_gone("n_late").await;
    assert_eq!(
        app.post_signed(&event("n_late", Some(contact))).await.status(),
        200,
        "a re-delivery is still a duplicate"
    );
    app.wait_idle().await;
    assert!(app.erased("n_late").await, "and stays erased");
    let kept = app.wait_final("n_new_person").await;
    assert_eq!(kept["status"], "skipped", "{kept}");
    app.wait_idle().await;
    let stats = app.admin_json("/admin/stats").await;
    let held: u64 = stats["events_by_status"]
        .as_object()
        .unwrap()
        .iter()
        .filter(|(status, _)| *status != "erased")
        .map(|(_, v)| v.as_u64().unwrap())
        .sum();
    assert_eq!(held, 1, "only the new person's event is left: {stats}");
    assert_eq!(stats["events_by_status"]["erased"], 2, "{stats}");
    app.stop().await;
}

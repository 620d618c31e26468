//! Dispatch and the data-minimised cache, with real captured payloads and
//! composed ones carrying realistic personal data.

mod common;

use common::*;
use serde_json::{json, Value};

/// facts.md §7.1, with a chosen `updated_at`.
fn contact_item(id: &str, updated: &str) -> Value {
    json!({
        "type":"contact","id":id,"workspace_id":"abc12xyz","external_id":"cust-1042",
        "role":"user","email":"Zoe.Example@Example.org ","phone":"+15550100","name":"Zoë Example","avatar":null,"owner_id":null,
        "social_profiles":{"type":"list","data":[{"type":"social_profile","name":"twitter","url":"https://twitter.example/zoe"}]},
        "has_hard_bounced":false,"marked_email_as_spam":false,"unsubscribed_from_emails":true,
        "created_at":"2026-01-01T00:00:00.000+00:00","updated_at":updated,
        "signed_up_at":1767225600,"last_seen_at":"2026-01-02T10:00:00.000Z",
        "browser":"Firefox","os":"Linux",
        "location":{"type":"location","country":"Germany","region":"Berlin","city":"Berlin"},
        "custom_attributes":{"plan":"platinum-tier","birthday_at":631152000},
        "tags":{"type":"list","data":[{"type":"tag","id":"t1"}],"has_more":false},
        "companies":{"type":"list","data":[{"type":"company","id":"co9"}],"has_more":false},
        "notes":{"type":"list","data":[],"has_more":false},
        "utm_campaign":"spring-sale","referrer":"https://www.example.org/pricing",
        "sms_consent":false,"unsubscribed_from_sms":false
    })
}

fn conversation_item(id: &str, updated: i64, state: &str) -> Value {
    json!({
        "type":"conversation","id":id,"title":"","created_at":1767226000,"updated_at":updated,
        "waiting_since":1767226300,"snoozed_until":null,"open":state == "open","state":state,"read":false,"priority":"priority",
        "admin_assignee_id":4242,"team_assignee_id":5017691,
        "source":{"type":"email","id":"3381000001","delivered_as":"customer_initiated","subject":"Secret subject line",
          "body":"<p>Hi, please delete my account</p>",
          "author":{"type":"user","id":"65f0c0ffee0000000000a001","name":"Zoë Example","email":"zoe.example@example.org"},
          "attachments":[],"url":"https://app.example.org/settings","redacted":false},
        "contacts":{"type":"contact.list","contacts":[{"type":"contact","id":"65f0c0ffee0000000000a001","external_id":"cust-1042"}]},
        "teammates":{"type":"admin.list","admins":[{"type":"admin","id":"4242"}]},
        "tags":{"type":"tag.list","tags":[{"type":"tag","id":"77","name":"refund"}]},
        "conversation_rating":{"rating":4,"remark":"Zoë says thanks"},
        "statistics":{"type":"conversation_statistics","count_conversation_parts":6,"first_contact_reply_at":"2026-01-01T00:06:40.000Z"},
        "conversation_parts":{"type":"conversation_part.list","total_count":2,"conversation_parts":[
          {"type":"conversation_part","id":"1","part_type":"comment","body":"<p>My email is zoe.example@example.org – 日本語 ok?</p>","created_at":1767226290,
           "author":{"id":"65f0c0ffee0000000000a001","type":"user","name":"Zoë Example","email":"zoe.example@example.org"},
           "attachments":[{"type":"upload","name":"id-card.png","url":"https://downloads.example.invalid/x.png"}]},
          {"type":"conversation_part","id":"2","part_type":"comment","body":"<p>Also my phone: +1 555 0100</p>","created_at":1767226300}]}
    })
}

fn without_cache_time(mut v: Value) -> Value {
    v.as_object_mut().unwrap().remove("cached_at_ms");
    v
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn contact_record_keeps_only_the_minimum() {
    let dir = tempfile::tempdir().unwrap();
    let app = spawn_app_with(
        dir.path(),
        "[cache.contacts]\ncustom_attributes = [\"plan\"]\n",
        test_env(),
    )
    .await;
    let id = "65f0c0ffee0000000000a001";
    let body = notification(
        "notif_c1",
        "contact.user.created",
        contact_item(id, "2026-01-01T00:00:00.000Z"),
        1767225600,
    );
    assert_eq!(app.post_signed(&body).await.status(), 200);
    assert_eq!(app.wait_final("notif_c1").await["status"], "processed");
    let c = app.admin_json(&format!("/admin/contacts/{id}")).await;
    assert_eq!(c["id"], id);
    assert_eq!(c["external_id"], "cust-1042");
    assert_eq!(c["role"], "user");
    assert_eq!(c["app_id"], "abc12xyz");
    assert_eq!(c["created_at"], 1767225600);
    assert_eq!(c["updated_at"], 1767225600);
    assert_eq!(c["signed_up_at"], 1767225600);
    assert_eq!(c["last_seen_at"], 1767348000);
    assert_eq!(c["tag_ids"], json!(["t1"]));
    assert_eq!(c["company_ids"], json!(["co9"]));
    assert_eq!(c["unsubscribed_from_emails"], true);
    assert_eq!(c["unsubscribed_from_sms"], false);
    assert_eq!(c["archived"], false);
    assert_eq!(
        c["custom_attributes"],
        json!({"plan": "platinum-tier"}),
        "only allow-listed attributes"
    );
    let hash = c["email_hash"].as_str().unwrap();
    assert_eq!(hash.len(), 64, "a keyed SHA-256 of the normalised email");
    let text = c.to_string();
    for pii in [
        "zoe.example",
        "Zoë",
        "+15550100",
        "Berlin",
        "Firefox",
        "spring-sale",
        "pricing",
        "twitter",
    ] {
        assert!(!text.to_lowercase().contains(&pii.to_lowercase()), "{pii} in {text}");
    }
    app.stop().await;
    assert_absent_from_files(
        &dir.path().join("data"),
        &[
            "platinum-tier",
            "zoe.example@example.org",
            "Zoe.Example",
            "Zo\u{eb} Example",
            "+15550100",
        ],
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn conversation_record_keeps_only_the_minimum() {
    let dir = tempfile::tempdir().unwrap();
    let app = spawn_app(dir.path()).await;
    let body = notification(
        "notif_v1",
        "conversation.user.replied",
        conversation_item("215470000000001", 1767226300, "open"),
        1767226300,
    );
    assert_eq!(app.post_signed(&body).await.status(), 200);
    app.wait_final("notif_v1").await;
    let v = app.admin_json("/admin/conversations/215470000000001").await;
    assert_eq!(v["state"], "open");
    assert_eq!(v["open"], true);
    assert_eq!(v["read"], false);
    assert_eq!(v["priority"], "priority");
    assert_eq!(v["created_at"], 1767226000);
    assert_eq!(v["updated_at"], 1767226300);
    assert_eq!(v["waiting_since"], 1767226300);
    assert_eq!(v["snoozed_until"], Value::Null);
    assert_eq!(v["admin_assignee_id"], "4242");
    assert_eq!(v["team_assignee_id"], "5017691");
    assert_eq!(v["contact_ids"], json!(["65f0c0ffee0000000000a001"]));
    assert_eq!(v["tag_ids"], json!(["77"]));
    assert_eq!(v["part_count"], 6);
    assert_eq!(v["last_part_at"], 1767226300);
    assert_eq!(v["rating"], 4);
    assert_eq!(v["source_type"], "email");
    assert_eq!(v["delivered_as"], "customer_initiated");
    let text = v.to_string();
    for pii in [
        "Secret subject",
        "delete my account",
        "zoe.example",
        "thanks",
        "id-card",
        "settings",
        "refund",
    ] {
        assert!(!text.contains(pii), "{pii} in {text}");
    }
    app.stop().await;
    assert_absent_from_files(
        &dir.path().join("data"),
        &[
            "Secret subject line",
            "delete my account",
            "Zo\u{eb} says thanks",
            "id-card.png",
        ],
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stale_duplicate_and_deleted_events_do_not_corrupt_the_cache() {
    let dir = tempfile::tempdir().unwrap();
    let app = spawn_app(dir.path()).await;
    let id = "65f0c0ffee0000000000a002";
    // Newer first, then an older update arrives late.
    let mut newer = contact_item(id, "2026-03-01T00:00:00.000Z");
    newer["role"] = json!("user");
    let mut older = contact_item(id, "2026-02-01T00:00:00.000Z");
    older["role"] = json!("lead");
    older["unsubscribed_from_emails"] = json!(false);
    app.post_signed(&notification("notif_new", "contact.user.updated", newer, 1772323200))
        .await;
    app.wait_final("notif_new").await;
    app.post_signed(&notification("notif_old", "contact.lead.updated", older, 1769904000))
        .await;
    let ev = app.wait_final("notif_old").await;
    assert_eq!(ev["status"], "processed");
    assert_eq!(ev["history"][0]["outcome"], "processed:stale");
    let c = app.admin_json(&format!("/admin/contacts/{id}")).await;
    assert_eq!(c["role"], "user");
    assert_eq!(c["updated_at"], 1772323200);
    assert_eq!(c["unsubscribed_from_emails"], true);

    // A duplicate delivery changes nothing and is counted.
    let dup = notification(
        "notif_new",
        "contact.user.updated",
        contact_item(id, "2026-03-01T00:00:00.000Z"),
        1772323200,
    );
    assert_eq!(app.post_signed(&dup).await.status(), 200);
    let ev = app
        .admin_until("/admin/events/notif_new", |v| v["deliveries"] == 2)
        .await;
    assert_eq!(ev["history"].as_array().unwrap().len(), 1, "not processed again");

    // Deleted, then a later update: the contact stays gone.
    let deleted = notification(
        "notif_del",
        "contact.deleted",
        json!({"type":"contact","id":id,"external_id":"cust-1042","deleted":true}),
        1772409600,
    );
    app.post_signed(&deleted).await;
    // The deletion notification names them too: erased once processed.
    app.wait_gone("notif_del").await;
    assert_eq!(app.admin_get(&format!("/admin/contacts/{id}")).await.status(), 404);
    let late = notification(
        "notif_late",
        "contact.user.updated",
        contact_item(id, "2026-04-01T00:00:00.000Z"),
        1775001600,
    );
    app.post_signed(&late).await;
    // Their erasure covers it: erased rather than processed, never served.
    app.wait_gone("notif_late").await;
    assert_eq!(app.admin_get(&format!("/admin/contacts/{id}")).await.status(), 404);

    // Conversations: delete by conversation_id, then a stale reply cannot revive it.
    app.post_signed(&notification(
        "notif_cv",
        "conversation.admin.replied",
        conversation_item("900", 1767226300, "open"),
        1767226300,
    ))
    .await;
    app.wait_final("notif_cv").await;
    app.post_signed(&notification(
        "notif_cvd",
        "conversation.deleted",
        json!({"type":"conversation","conversation_id":"900"}),
        1767230000,
    ))
    .await;
    app.wait_final("notif_cvd").await;
    app.post_signed(&notification(
        "notif_cvl",
        "conversation.user.replied",
        conversation_item("900", 1767239999, "open"),
        1767239999,
    ))
    .await;
    app.wait_final("notif_cvl").await;
    assert_eq!(app.admin_get("/admin/conversations/900").await.status(), 404);
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tags_archive_and_merge() {
    let dir = tempfile::tempdir().unwrap();
    let app = spawn_app(dir.path()).await;
    let id = "65f0c0ffee0000000000a003";
    app.post_signed(&notification(
        "notif_t0",
        "contact.user.created",
        contact_item(id, "2026-01-01T00:00:00.000Z"),
        1767225600,
    ))
    .await;
    app.wait_final("notif_t0").await;
    // Tag removed at t=200, then a late "added" from t=100: stays removed.
    let tag = |topic: &str, nid: &str, at: i64| {
        notification(
            nid,
            topic,
            json!({"type":"contact_tag","tag":{"type":"tag","id":"t9","name":"vip"},"contact":contact_item(id, "2026-01-01T00:00:00.000Z")}),
            at,
        )
    };
    app.post_signed(&tag("contact.user.tag.created", "notif_t1", 1767225700))
        .await;
    app.wait_final("notif_t1").await;
    assert_eq!(
        app.admin_json(&format!("/admin/contacts/{id}")).await["tag_ids"],
        json!(["t1", "t9"])
    );
    app.post_signed(&tag("contact.user.tag.deleted", "notif_t2", 1767225900))
        .await;
    app.wait_final("notif_t2").await;
    app.post_signed(&tag("contact.user.tag.created", "notif_t3", 1767225800))
        .await;
    app.wait_final("notif_t3").await;
    assert_eq!(
        app.admin_json(&format!("/admin/contacts/{id}")).await["tag_ids"],
        json!(["t1"])
    );

    // Archived keeps the record, marked; unarchived clears the mark.
    app.post_signed(&notification(
        "notif_a1",
        "contact.archived",
        json!({"type":"contact","id":id,"external_id":null,"archived":true}),
        1767226000,
    ))
    .await;
    app.wait_final("notif_a1").await;
    assert_eq!(app.admin_json(&format!("/admin/contacts/{id}")).await["archived"], true);
    app.post_signed(&notification(
        "notif_a2",
        "contact.unarchived",
        contact_item(id, "2026-01-01T00:10:00.000Z"),
        1767226600,
    ))
    .await;
    app.wait_final("notif_a2").await;
    assert_eq!(
        app.admin_json(&format!("/admin/contacts/{id}")).await["archived"],
        false
    );

    // Merge: the survivor is updated, the merged-away id is gone for good.
    let lead = "65f0c0ffee0000000000b004";
    app.post_signed(&notification(
        "notif_m0",
        "contact.lead.created",
        contact_item(lead, "2026-01-01T00:00:00.000Z"),
        1767225600,
    ))
    .await;
    app.wait_final("notif_m0").await;
    let mut survivor = contact_item(id, "2026-01-01T00:20:00.000Z");
    survivor["merged_from"] = json!({"type":"contact","id":lead});
    app.post_signed(&notification("notif_m1", "contact.merged", survivor, 1767227200))
        .await;
    app.wait_final("notif_m1").await;
    assert_eq!(app.admin_get(&format!("/admin/contacts/{lead}")).await.status(), 404);
    assert_eq!(
        app.admin_json(&format!("/admin/contacts/{id}")).await["updated_at"],
        1767226800
    );
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replaying_twice_leaves_the_same_cache() {
    let dir = tempfile::tempdir().unwrap();
    let app = spawn_app(dir.path()).await;
    let id = "65f0c0ffee0000000000a005";
    app.post_signed(&notification(
        "notif_r1",
        "contact.user.created",
        contact_item(id, "2026-01-01T00:00:00.000Z"),
        1767225600,
    ))
    .await;
    app.post_signed(&notification(
        "notif_r2",
        "conversation.user.created",
        conversation_item("901", 1767226300, "open"),
        1767226300,
    ))
    .await;
    app.wait_final("notif_r1").await;
    app.wait_final("notif_r2").await;
    app.wait_idle().await;
    let before_c = without_cache_time(app.admin_json(&format!("/admin/contacts/{id}")).await);
    let before_v = without_cache_time(app.admin_json("/admin/conversations/901").await);
    for round in 0..2 {
        let r: Value = app
            .admin_post("/admin/replay", json!({"all": true}))
            .await
            .json()
            .await
            .unwrap();
        assert_eq!(r["matched"], 2, "round {round}: {r}");
        assert_eq!(r["replayed"], 2);
        app.wait_idle().await;
        assert_eq!(
            without_cache_time(app.admin_json(&format!("/admin/contacts/{id}")).await),
            before_c
        );
        assert_eq!(
            without_cache_time(app.admin_json("/admin/conversations/901").await),
            before_v
        );
    }
    let ev = app.admin_json("/admin/events/notif_r1").await;
    let outcomes: Vec<&str> = ev["history"]
        .as_array()
        .unwrap()
        .iter()
        .map(|h| h["outcome"].as_str().unwrap())
        .collect();
    assert_eq!(
        outcomes,
        ["processed", "replayed", "processed", "replayed", "processed"]
    );
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failing_handlers_retry_then_fail_without_personal_data() {
    let dir = tempfile::tempdir().unwrap();
    let app = spawn_app_with(
        dir.path(),
        "[worker]\nmax_attempts = 3\nbackoff_base = \"10ms\"\nbackoff_max = \"50ms\"\n",
        test_env(),
    )
    .await;
    // A contact topic whose item has no id cannot be handled.
    let bad = notification(
        "notif_bad",
        "contact.user.updated",
        json!({"type":"contact","email":"zoe.example@example.org"}),
        1767225600,
    );
    let good = notification(
        "notif_good",
        "contact.user.created",
        contact_item("65f0c0ffee0000000000a006", "2026-01-01T00:00:00.000Z"),
        1767225600,
    );
    app.post_signed(&bad).await;
    app.post_signed(&good).await;
    assert_eq!(
        app.wait_final("notif_good").await["status"],
        "processed",
        "one failing event does not block others"
    );
    let ev = app.wait_final("notif_bad").await;
    assert_eq!(ev["status"], "failed");
    assert_eq!(ev["attempts"], 3);
    let outcomes: Vec<&str> = ev["history"]
        .as_array()
        .unwrap()
        .iter()
        .map(|h| h["outcome"].as_str().unwrap())
        .collect();
    assert_eq!(outcomes, ["retrying", "retrying", "failed"]);
    assert_eq!(ev["last_error"], "contact item has no id");
    assert!(
        !ev.to_string().contains("zoe.example@"),
        "no personal data in the event view"
    );
    // Failed events can be replayed.
    let r: Value = app
        .admin_post("/admin/replay", json!({"status": "failed", "dry_run": true}))
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(r["matched"], 1);
    assert_eq!(r["ids"], json!(["notif_bad"]));
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_captured_payload_is_accepted_and_no_personal_data_reaches_disk() {
    let dir = tempfile::tempdir().unwrap();
    let app = spawn_app(dir.path()).await;
    let files = captures();
    assert_eq!(files.len(), 83, "all captures present");
    let mut ids = Vec::new();
    let mut pii = Vec::new();
    for (name, bytes, v) in &files {
        let r = app.post_signed(bytes).await;
        assert_eq!(r.status(), 200, "{name} was not accepted");
        personal_strings(v, false, &mut pii);
        if let Some(id) = v["id"].as_str() {
            ids.push((name.clone(), id.to_string()));
        }
    }
    app.wait_idle().await;
    let mut by_status = std::collections::HashMap::new();
    for (path, id) in &ids {
        // A captured contact.deleted erases the stored events of its
        // contact, itself among them: what is kept of each is visible.
        let ev = app.wait_final(id).await;
        let st = ev["status"].as_str().unwrap().to_string();
        assert!(
            st == "processed" || st == "skipped" || (st == "erased" && app.erased(id).await),
            "{path} ended {st}: {}",
            ev["last_error"]
        );
        *by_status.entry(st).or_insert(0) += 1;
    }
    assert!(by_status["processed"] >= 30, "{by_status:?}");
    let erased = by_status.get("erased").copied().unwrap_or(0);
    // A deletion reaches every notification of the person: through their
    // contact id, and the email and external id that the deleted contact
    // shares with them (the captures reuse a few of each).
    assert!(
        (1..=30).contains(&erased),
        "the captured deletions erase their contacts' events: {by_status:?}"
    );
    assert!(by_status["skipped"] >= 20, "{by_status:?}");
    // The deletions themselves arrived and were handled: on-call sees them.
    for deletion in ["contact_deleted.json", "user_deleted.json"] {
        let (_, id) = ids.iter().find(|(p, _)| p.ends_with(deletion)).unwrap();
        assert!(app.erased(id).await, "{deletion} is visible as erased");
        let list = app.admin_json("/admin/events?status=erased&limit=100").await;
        assert!(
            list["events"]
                .as_array()
                .unwrap()
                .iter()
                .any(|e| e["id"] == id.as_str()),
            "{deletion} is listed: {list}"
        );
    }
    let stats = app.admin_json("/admin/stats").await;
    assert_eq!(stats["events_by_status"]["erased"], erased, "{stats}");
    app.stop().await;
    pii.sort();
    pii.dedup();
    assert!(
        pii.len() > 50,
        "the captures carry personal data to look for: {}",
        pii.len()
    );
    let needles: Vec<&str> = pii.iter().map(String::as_str).collect();
    assert_absent_from_files(&dir.path().join("data"), &needles);
}

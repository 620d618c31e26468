//! The real binary: operator commands against a stopped store and against a
//! running server (through its admin API), exit codes, config check,
//! simulate, shutdown on SIGTERM, and logs free of personal data.

mod common;

use common::*;
use serde_json::{json, Value};

/// Posts a signed body over a fresh connection; returns the status code.
fn post(addr: std::net::SocketAddr, body: &[u8]) -> u16 {
    use std::io::{Read, Write};
    let sig = intercom_webhooks::verify::sign(SECRET, body);
    let mut s = std::net::TcpStream::connect(addr).unwrap();
    let head = format!(
        "POST /webhooks/intercom HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nX-Hub-Signature: {sig}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        body.len()
    );
    s.write_all(head.as_bytes()).unwrap();
    s.write_all(body).unwrap();
    let mut out = String::new();
    s.read_to_string(&mut out).unwrap();
    out[9..12].parse().unwrap()
}

fn json_of(out: &str) -> Value {
    serde_json::from_str(out).unwrap_or_else(|e| panic!("not JSON ({e}): {out}"))
}

/// A contact of its own: each id gets its own email (a shared email would
/// make them one person, whom one erasure removes whole).
fn contact(id: &str, nid: &str) -> Vec<u8> {
    notification(
        nid,
        "contact.user.created",
        json!({"type":"contact","id":id,"email":format!("zoe.example+{}@example.org", &id[id.len() - 4..]),"name":"Zoë Example","phone":"+15550100","updated_at":1767225600,
               "tags":{"type":"list","data":[{"id":"t1"}]}}),
        1767225600,
    )
}

/// Polls a CLI command until its JSON output satisfies `ok`.
fn until(bin: &Binary, args: &[&str], ok: impl Fn(&Value) -> bool) -> Value {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    loop {
        let (code, out, err) = bin.run(args);
        if code == 0 {
            let v = json_of(&out);
            if ok(&v) {
                return v;
            }
        }
        assert!(std::time::Instant::now() < deadline, "{args:?}: {code} {out} {err}");
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
}

#[test]
fn serve_without_a_secret_names_the_variable() {
    let dir = tempfile::tempdir().unwrap();
    let mut bin = Binary::new(dir.path());
    bin.env.retain(|(k, _)| k != "INTERCOM_CLIENT_SECRET");
    let (code, _, err) = bin.run(&["serve"]);
    assert_eq!(code, 2);
    assert!(
        err.contains("INTERCOM_CLIENT_SECRET") && err.contains("Developer Hub"),
        "{err}"
    );
    assert_eq!(err.trim().lines().count(), 1, "one line: {err}");
}

#[test]
fn config_check_hides_secrets_and_bad_config_exits_2() {
    let dir = tempfile::tempdir().unwrap();
    let bin = Binary::new(dir.path());
    let (code, out, _) = bin.run(&["config", "check", "--json"]);
    assert_eq!(code, 0);
    assert!(
        !out.contains(SECRET) && !out.contains(ADMIN_TOKEN) && !out.contains(DATA_KEY),
        "{out}"
    );
    let v = json_of(&out);
    assert_eq!(v["secrets"]["INTERCOM_CLIENT_SECRET"], "set (1 value)");
    assert_eq!(v["retention"]["events"], "30days");
    std::fs::write(dir.path().join("bad.toml"), "[retention]\nevents = \"whenever\"\n").unwrap();
    let (code, _, err) = bin.run(&["--config", "bad.toml", "config", "check"]);
    assert_eq!(code, 2);
    assert!(err.contains("bad.toml") && err.contains("retention.events"), "{err}");
    // The example config in deploy/ loads.
    let example = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("deploy/config.example.toml");
    let (code, out, err) = bin.run(&["--config", example.to_str().unwrap(), "config", "check", "--json"]);
    assert_eq!(code, 0, "{err}");
    assert_eq!(json_of(&out)["retention"]["audit"], "7years");
}

/// Inputs the fuzz targets found (`fuzz/`), kept as regressions: each
/// config error names the file and the key the bad value came from.
#[test]
fn fuzzed_config_files_fail_naming_the_file_and_key() {
    let dir = tempfile::tempdir().unwrap();
    let bin = Binary::new(dir.path());
    let fixtures = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/fuzz");
    let cases: &[(&str, &str)] = &[("config_file-bad-admin-listen.toml", "server.admin_listen")];
    for (file, key) in cases {
        let path = fixtures.join(file);
        let (code, _, err) = bin.run(&["--config", path.to_str().unwrap(), "config", "check"]);
        assert_eq!(code, 2, "{file}: {err}");
        assert!(
            err.contains(path.to_str().unwrap()) && err.contains(key),
            "{file}: {err}"
        );
    }
}

/// The access token never crosses a network in clear: an `http://` API base
/// URL is refused at start (exit 2, naming the variable) unless it is a
/// loopback address (a local stand-in).
#[test]
fn a_plaintext_api_url_is_refused_unless_loopback() {
    let dir = tempfile::tempdir().unwrap();
    for (url, ok) in [
        ("http://api.example.org", false),
        ("http://10.0.0.5:8080", false),
        ("ftp://api.intercom.io", false),
        ("https://api.eu.intercom.io", true),
        ("http://127.0.0.1:9999", true),
        ("http://[::1]:9999", true),
        ("http://localhost:9999/", true),
    ] {
        let mut bin = Binary::new(dir.path());
        bin.env.push(("INTERCOM_API_BASE_URL".into(), url.into()));
        let (code, _, err) = bin.run(&["config", "check"]);
        if ok {
            assert_eq!(code, 0, "{url}: {err}");
        } else {
            assert_eq!(code, 2, "{url}");
            assert!(err.contains("INTERCOM_API_BASE_URL"), "{url}: {err}");
        }
    }
}

#[test]
fn commands_on_a_running_server_and_on_a_stopped_store() {
    let dir = tempfile::tempdir().unwrap();
    let bin = Binary::new(dir.path());
    let (child, public, admin) = bin.serve(&[]);
    let bin = bin.with_admin(admin);

    // simulate signs and posts a sample.
    let url = format!("http://{public}/webhooks/intercom");
    let (code, out, err) = bin.run(&["simulate", "--topic", "conversation.user.created", "--url", &url]);
    assert_eq!(code, 0, "{out} {err}");
    assert!(out.contains("-> 200"), "{out}");
    let (code, out, _) = bin.run(&["simulate", "--list"]);
    assert_eq!(code, 0);
    assert!(out.lines().any(|l| l == "contact.user.created"));
    assert_eq!(bin.run(&["simulate", "--topic", "no.such.topic", "--url", &url]).0, 2);

    assert_eq!(post(public, &contact("65f0c0ffee0000000000c001", "notif_cli1")), 200);
    assert_eq!(post(public, &contact("65f0c0ffee0000000000c002", "notif_cli2")), 200);

    // Through the admin API (the server holds the store).
    let list = until(&bin, &["events", "list", "--json", "--topic", "contact.*"], |v| {
        v["events"].as_array().unwrap().len() == 2
    });
    assert_eq!(list["events"][0]["id"], "notif_cli2", "newest first");
    let (code, out, _) = bin.run(&["events", "list"]);
    assert_eq!(code, 0);
    assert!(out.starts_with("RECEIVED") && out.contains("notif_cli1"), "{out}");
    let shown = until(&bin, &["events", "show", "notif_cli1", "--json"], |v| {
        v["status"] == "processed"
    });
    assert_eq!(shown["payload"]["data"]["item"]["email"], "[redacted]");
    assert!(!shown.to_string().contains("Zo\u{eb}"));
    assert_eq!(bin.run(&["events", "show", "notif_nope"]).0, 3, "unknown id");
    let stats = until(&bin, &["stats", "--json"], |v| v["events_by_status"]["processed"] == 3);
    assert!(stats["webhook_health"]["consecutive_errors"].is_number());
    let (code, out, _) = bin.run(&["cache", "show", "contact", "65f0c0ffee0000000000c001", "--json"]);
    assert_eq!(code, 0);
    let before = json_of(&out);
    assert_eq!(before["tag_ids"], json!(["t1"]));
    assert_eq!(bin.run(&["cache", "show", "contact", "nobody"]).0, 3);
    let (code, out, _) = bin.run(&["purge", "--dry-run", "--json"]);
    assert_eq!(code, 0);
    assert_eq!(json_of(&out)["removed"]["events"], 0);
    let (code, _, err) = bin.run(&["cache", "clear"]);
    assert_eq!(code, 2, "destructive commands need --yes");
    assert!(err.contains("--yes"));
    let (code, out, _) = bin.run(&["replay", "--id", "notif_cli1", "--dry-run", "--json"]);
    assert_eq!(code, 0);
    assert_eq!(json_of(&out)["matched"], 1);

    // SIGTERM: stops cleanly with exit 0.
    assert_eq!(child.terminate(), Some(0));

    // The same commands on the stopped store, directly.
    let list = json_of(&bin.run(&["events", "list", "--json"]).1);
    assert_eq!(list["events"].as_array().unwrap().len(), 3);
    // cache clear + replay --all rebuilds exactly the cache there was.
    let (code, out, err) = bin.run(&["cache", "clear", "--yes"]);
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("removed 3"), "{out}");
    assert_eq!(bin.run(&["cache", "show", "contact", "65f0c0ffee0000000000c001"]).0, 3);
    let (code, out, err) = bin.run(&["replay", "--all", "--json"]);
    assert_eq!(code, 0, "{err}");
    assert_eq!(json_of(&out)["replayed"], 3);
    let mut after = json_of(
        &bin.run(&["cache", "show", "contact", "65f0c0ffee0000000000c001", "--json"])
            .1,
    );
    let mut before = before;
    before.as_object_mut().unwrap().remove("cached_at_ms");
    after.as_object_mut().unwrap().remove("cached_at_ms");
    assert_eq!(before, after);
    let audit = json_of(&bin.run(&["audit", "list", "--json"]).1);
    assert_eq!(audit["entries"][0]["action"], "cache_clear");
    let (code, out, _) = bin.run(&["audit", "verify"]);
    assert_eq!(code, 0);
    assert!(out.contains("intact"), "{out}");
    assert_eq!(bin.run(&["stats"]).0, 0);

    // Store held by a server, admin API unreachable: one line, non-zero.
    let (mut child, _, _) = bin.serve(&[]);
    let mut bad = Binary::new(dir.path());
    bad.env
        .push(("INTERCOM_WEBHOOKS_ADMIN_URL".into(), format!("http://{}", free_port())));
    let (code, _, err) = bad.run(&["stats"]);
    assert_eq!(code, 1);
    assert!(err.contains("admin API") && err.trim().lines().count() == 1, "{err}");
    child.kill().unwrap();
    child.wait().unwrap();
}

#[test]
fn trace_logs_carry_no_personal_data() {
    let dir = tempfile::tempdir().unwrap();
    let bin = Binary::new(dir.path());
    let (child, public, _admin) = bin.serve(&[("RUST_LOG", "trace"), ("INTERCOM_WEBHOOKS_LOG_FORMAT", "json")]);
    assert_eq!(post(public, &contact("65f0c0ffee0000000000d001", "notif_log1")), 200);
    let conv = notification(
        "notif_log2",
        "conversation.user.replied",
        json!({"type":"conversation","id":"5001","updated_at":1767226300,
               "source":{"body":"<p>call me on +1 555 0100, card 4111 1111 1111 1111</p>","author":{"email":"zoe.example@example.org","name":"Zoë Example"}}}),
        1767226300,
    );
    assert_eq!(post(public, &conv), 200);
    // A handler failure whose payload carries personal data.
    let bad = notification(
        "notif_log3",
        "contact.user.updated",
        json!({"type":"contact","email":"zoe.example@example.org"}),
        1767225600,
    );
    assert_eq!(post(public, &bad), 200);
    std::thread::sleep(std::time::Duration::from_millis(1500));
    child.terminate();
    let log = std::fs::read_to_string(dir.path().join("serve.log")).unwrap();
    assert!(
        log.contains("notif_log1"),
        "the log has ids: {}",
        &log[..log.len().min(2000)]
    );
    for pii in [
        "zoe.example",
        "Zo\u{eb}",
        "+15550100",
        "555 0100",
        "4111 1111 1111",
        SECRET,
        ADMIN_TOKEN,
        DATA_KEY,
    ] {
        assert!(!log.contains(pii), "log contains {pii}");
    }
}

#[test]
fn backup_and_restore_round_trip_running_and_stopped() {
    // The usual umask, so that the children's files are owner-only only if
    // the binary makes them so (checked at the end). Process-wide, and
    // harmless to the other tests here.
    rustix::process::umask(rustix::fs::Mode::from_raw_mode(0o022));
    let dir = tempfile::tempdir().unwrap();
    let bin = Binary::new(dir.path());
    let (child, public, admin) = bin.serve(&[]);
    let bin = bin.with_admin(admin);
    for i in 0..5 {
        assert_eq!(
            post(
                public,
                &contact(&format!("65f0c0ffee00000000000b0{i}"), &format!("notif_bk{i}"))
            ),
            200
        );
    }
    until(&bin, &["stats", "--json"], |v| v["events_by_status"]["processed"] == 5);
    // An audit entry to carry over.
    let (code, _, err) = bin.run(&[
        "erase",
        "--contact-id",
        "65f0c0ffee00000000000b04",
        "--local-only",
        "--yes",
    ]);
    assert_eq!(code, 0, "{err}");
    let running = dir.path().join("running.bak");
    let (code, out, err) = bin.run(&["backup", "--out", running.to_str().unwrap()]);
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("backup written"), "{out}");
    child.terminate();
    let stopped = dir.path().join("stopped.bak");
    assert_eq!(bin.run(&["backup", "--out", stopped.to_str().unwrap()]).0, 0);

    let original_events = json_of(&bin.run(&["events", "list", "--json"]).1);
    let original_contact = json_of(
        &bin.run(&["cache", "show", "contact", "65f0c0ffee00000000000b01", "--json"])
            .1,
    );
    let original_audit = json_of(&bin.run(&["audit", "list", "--json"]).1);
    let listed = original_events["events"].as_array().unwrap();
    assert_eq!(listed.len(), 5, "4 events and the erased one's record");
    assert_eq!(listed.iter().filter(|e| e["status"] == "erased").count(), 1);

    for (name, file) in [("from-running", &running), ("from-stopped", &stopped)] {
        let target = dir.path().join(name);
        let restored = Binary {
            dir: dir.path().to_path_buf(),
            env: bin
                .env
                .iter()
                .filter(|(k, _)| k != "INTERCOM_WEBHOOKS_DATA_DIR")
                .cloned()
                .chain([(
                    "INTERCOM_WEBHOOKS_DATA_DIR".to_string(),
                    target.to_str().unwrap().to_string(),
                )])
                .collect(),
        };
        let ledger = dir.path().join("data").join("erasures.ledger");
        let (code, _, err) = restored.run(&["restore", "--from", file.to_str().unwrap()]);
        assert_eq!(
            code, 2,
            "{name}: without the current ledger a restore is refused: {err}"
        );
        assert!(err.contains("--ledger"), "{err}");
        let (code, out, err) = restored.run(&[
            "restore",
            "--from",
            file.to_str().unwrap(),
            "--ledger",
            ledger.to_str().unwrap(),
        ]);
        assert_eq!(code, 0, "{name}: {err}");
        assert!(out.contains("restored"), "{out}");
        assert_eq!(
            json_of(&restored.run(&["events", "list", "--json"]).1)["events"],
            original_events["events"],
            "{name}"
        );
        assert_eq!(
            json_of(
                &restored
                    .run(&["cache", "show", "contact", "65f0c0ffee00000000000b01", "--json"])
                    .1
            ),
            original_contact,
            "{name}"
        );
        assert_eq!(
            json_of(&restored.run(&["audit", "list", "--json"]).1),
            original_audit,
            "{name}"
        );
        assert!(restored.run(&["audit", "verify"]).1.contains("intact"));
        let shown = json_of(&restored.run(&["events", "show", "notif_bk1", "--json"]).1);
        assert_eq!(shown["payload_stored"], true, "payloads restored: {shown}");
        // Restoring over an existing store is refused.
        assert_eq!(restored.run(&["restore", "--from", file.to_str().unwrap()]).0, 1);
        // Personal data stays encrypted in the backup.
        let bytes = std::fs::read(file).unwrap();
        for pii in ["zoe.example+0b01@example.org", "Zo\u{eb} Example", "+15550100"] {
            assert!(
                !bytes.windows(pii.len()).any(|w| w == pii.as_bytes()),
                "{name} holds {pii}"
            );
        }
        assert_owner_only(&target);
    }
    // Everything the binary wrote is its owner's only: the data dir's log
    // segments, sled's files and keys, and the backups.
    for path in [dir.path().join("data"), running, stopped] {
        assert_owner_only(&path);
    }
}

#[test]
fn rotating_the_data_key() {
    let dir = tempfile::tempdir().unwrap();
    let bin = Binary::new(dir.path());
    let (child, public, _) = bin.serve(&[]);
    assert_eq!(post(public, &contact("65f0c0ffee00000000000a77", "notif_rot1")), 200);
    let with_ext = notification(
        "notif_rot1x",
        "contact.user.created",
        json!({"type":"contact","id":"65f0c0ffee00000000000a78","external_id":"ext-rotated-1","updated_at":1767225600}),
        1767225600,
    );
    assert_eq!(post(public, &with_ext), 200);
    std::thread::sleep(std::time::Duration::from_millis(300));
    let data = dir.path().join("data");
    let new_key = "6b".repeat(32);
    let mut rotate = Binary::new(dir.path());
    rotate
        .env
        .push(("INTERCOM_WEBHOOKS_NEW_DATA_KEY".into(), new_key.clone()));
    let (code, _, err) = rotate.run(&["rotate-data-key"]);
    assert_eq!(code, 1, "refused while the server runs");
    assert!(err.contains("stop the server"), "{err}");
    child.terminate();
    let old_root = std::fs::read(data.join("root.key")).unwrap();
    let old_keyring = std::fs::read(data.join("keyring.bin")).unwrap();
    let (code, out, err) = rotate.run(&["rotate-data-key"]);
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("INTERCOM_WEBHOOKS_DATA_KEY"), "{out}");
    // The old key no longer opens the store; the new one reads everything.
    let (code, _, err) = bin.run(&["events", "show", "notif_rot1"]);
    assert_eq!(code, 1);
    assert!(err.contains("data key"), "{err}");
    let mut with_new = Binary::new(dir.path());
    with_new.env.retain(|(k, _)| k != "INTERCOM_WEBHOOKS_DATA_KEY");
    with_new.env.push(("INTERCOM_WEBHOOKS_DATA_KEY".into(), new_key));
    let shown = json_of(&with_new.run(&["events", "show", "notif_rot1", "--json"]).1);
    assert_eq!(shown["payload"]["topic"], "contact.user.created");
    let c = json_of(
        &with_new
            .run(&["cache", "show", "contact", "65f0c0ffee00000000000a77", "--json"])
            .1,
    );
    assert_eq!(c["tag_ids"], json!(["t1"]));
    let c = json_of(
        &with_new
            .run(&["cache", "show", "contact", "65f0c0ffee00000000000a78", "--json"])
            .1,
    );
    assert_eq!(c["external_id"], "ext-rotated-1", "sealed values re-sealed: {c}");
    assert!(
        !data.join("data.key").exists(),
        "the new key is not written into the data dir"
    );
    assert!(with_new.run(&["audit", "verify"]).1.contains("intact"));

    // Revocation: write after the rotation, then try the old data key with
    // the old root.key (as every older backup holds): nothing opens.
    let (child, public, _) = with_new.serve(&[]);
    assert_eq!(post(public, &contact("65f0c0ffee00000000000a79", "notif_rot2")), 200);
    std::thread::sleep(std::time::Duration::from_millis(300));
    child.terminate();
    let stolen = dir.path().join("stolen");
    copy_dir(&data, &stolen);
    std::fs::write(stolen.join("root.key"), &old_root).unwrap();
    let mut thief = Binary::new(dir.path());
    thief.env.retain(|(k, _)| k != "INTERCOM_WEBHOOKS_DATA_DIR");
    thief
        .env
        .push(("INTERCOM_WEBHOOKS_DATA_DIR".into(), stolen.to_str().unwrap().into()));
    for id in ["notif_rot2", "notif_rot1"] {
        let (code, out, _) = thief.run(&["events", "show", id, "--json"]);
        assert_ne!(code, 0, "the old key opened {id}: {out}");
        assert!(!out.contains("contact.user.created"), "{out}");
    }
    // The old keyring (a backup's) never had the new segments' keys.
    std::fs::write(stolen.join("keyring.bin"), &old_keyring).unwrap();
    let (code, out, _) = thief.run(&["events", "show", "notif_rot2", "--json"]);
    assert!(code != 0 || json_of(&out)["payload"].is_null(), "{out}");
}

fn copy_dir(from: &std::path::Path, to: &std::path::Path) {
    std::fs::create_dir_all(to).unwrap();
    for e in std::fs::read_dir(from).unwrap().flatten() {
        let p = e.path();
        if p.is_dir() {
            copy_dir(&p, &to.join(e.file_name()));
        } else {
            std::fs::copy(&p, to.join(e.file_name())).unwrap();
        }
    }
}

#[test]
fn admin_auth_cannot_be_turned_off_by_accident() {
    let dir = tempfile::tempdir().unwrap();
    for (value, why) in [(" ", "blank"), ("\n", "blank"), ("short-token", "at least 16")] {
        let mut bin = Binary::new(dir.path());
        bin.env.retain(|(k, _)| k != "INTERCOM_WEBHOOKS_ADMIN_TOKEN");
        bin.env.push(("INTERCOM_WEBHOOKS_ADMIN_TOKEN".into(), value.into()));
        let (code, _, err) = bin.run(&["serve", "--listen", "127.0.0.1:0", "--admin-listen", "127.0.0.1:0"]);
        assert_eq!(code, 2, "{value:?}: {err}");
        assert!(
            err.contains("INTERCOM_WEBHOOKS_ADMIN_TOKEN") && err.contains(why),
            "{value:?}: {err}"
        );
    }

    // Failed attempts are limited per source; the right token never is.
    use std::io::{Read, Write};
    let bin = Binary::new(dir.path());
    let (child, _, admin) = bin.serve(&[]);
    let get = |token: &str| -> u16 {
        let mut s = std::net::TcpStream::connect(admin).unwrap();
        write!(
            s,
            "GET /admin/stats HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {token}\r\nConnection: close\r\n\r\n"
        )
        .unwrap();
        let mut out = String::new();
        s.read_to_string(&mut out).unwrap();
        out[9..12].parse().unwrap()
    };
    let mut limited = 0;
    for _ in 0..40 {
        match get("wrong-token-wrong-token") {
            429 => limited += 1,
            401 => {}
            other => panic!("a wrong token got {other}"),
        }
        assert_eq!(get(ADMIN_TOKEN), 200, "the operator is never locked out");
    }
    assert!(limited >= 25, "failed attempts are limited: {limited} of 40");
    child.terminate();
}

#[test]
fn outputs_refuse_existing_files_and_links_and_impossible_sizes_refuse_to_start() {
    let dir = tempfile::tempdir().unwrap();
    let bin = Binary::new(dir.path());
    // A store to back up.
    let (child, public, _) = bin.serve(&[]);
    assert_eq!(post(public, &contact("65f0c0ffee00000000000c01", "notif_out1")), 200);
    std::thread::sleep(std::time::Duration::from_millis(300));
    child.terminate();

    let existing = dir.path().join("existing.bak");
    std::fs::write(&existing, b"keep me").unwrap();
    std::fs::set_permissions(&existing, std::os::unix::fs::PermissionsExt::from_mode(0o644)).unwrap();
    let (code, _, err) = bin.run(&["backup", "--out", existing.to_str().unwrap()]);
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("--force"), "{err}");
    assert_eq!(std::fs::read(&existing).unwrap(), b"keep me");

    let target = dir.path().join("elsewhere.txt");
    std::fs::write(&target, b"not yours").unwrap();
    let link = dir.path().join("link.bak");
    std::os::unix::fs::symlink(&target, &link).unwrap();
    assert_eq!(bin.run(&["backup", "--out", link.to_str().unwrap()]).0, 2);
    let (code, _, err) = bin.run(&["backup", "--out", link.to_str().unwrap(), "--force"]);
    assert_eq!(code, 0, "{err}");
    assert_eq!(
        std::fs::read(&target).unwrap(),
        b"not yours",
        "never written through a link"
    );
    assert!(!std::fs::symlink_metadata(&link).unwrap().file_type().is_symlink());

    let (code, _, err) = bin.run(&["backup", "--out", existing.to_str().unwrap(), "--force"]);
    assert_eq!(code, 0, "{err}");
    use std::os::unix::fs::PermissionsExt;
    assert_eq!(
        std::fs::metadata(&existing).unwrap().permissions().mode() & 0o777,
        0o600
    );
    assert!(std::fs::read(&existing).unwrap().starts_with(b"IWBACKUP1"));
    let leftovers: Vec<_> = std::fs::read_dir(dir.path())
        .unwrap()
        .flatten()
        .filter(|e| e.file_name().to_string_lossy().ends_with(".partial"))
        .collect();
    assert!(leftovers.is_empty(), "no partial outputs left");

    // A body limit no intake log record can hold is refused at start.
    let cfg = dir.path().join("big.toml");
    std::fs::write(&cfg, "[server]\nbody_limit_bytes = 100000000\n").unwrap();
    let (code, _, err) = bin.run(&["--config", cfg.to_str().unwrap(), "config", "check"]);
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("body_limit_bytes"), "{err}");
}

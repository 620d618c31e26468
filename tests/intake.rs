//! The receiver over real HTTP: signatures, dedup, limits, health, restart.

mod common;

use std::time::Duration;

use common::*;
use intercom_webhooks::verify::sign;
use serde_json::json;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

// facts.md §7.3, exact bytes, and their published signatures.
const DELETED: &str = r#"{"type":"notification_event","app_id":"abc12xyz","data":{"type":"notification_event_data","item":{"type":"contact","id":"65f0c0ffee0000000000beef","external_id":"cust-1042","deleted":true}},"links":{},"id":"notif_0b6a3c1e-7d2f-4e59-9a61-3f2d8c4b5e70","topic":"contact.deleted","delivery_status":"pending","delivery_attempts":1,"delivered_at":0,"first_sent_at":1767229201,"created_at":1767229200,"self":null}"#;
const PING: &str = r#"{"type":"notification_event","app_id":"abc12xyz","data":{"type":"notification_event_data","item":{"type":"ping","message":"something something interzen"}},"links":{},"id":null,"topic":"ping","delivery_status":null,"delivery_attempts":1,"delivered_at":0,"first_sent_at":1767225600,"created_at":1767225600,"self":null}"#;

fn contact_body(id: &str) -> Vec<u8> {
    notification(
        id,
        "contact.user.created",
        json!({"type":"contact","id":"65f0c0ffee0000000000a001","email":"zoe.example@example.org","name":"Zoë Example","phone":"+15550100","updated_at":"2026-01-01T00:00:00.000Z"}),
        1767225600,
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn published_vectors_and_reserialised_json() {
    let dir = tempfile::tempdir().unwrap();
    let app = spawn_app(dir.path()).await;
    let r = app
        .post_with(
            DELETED.as_bytes(),
            Some("sha1=4a6af54a377a7e45719b1b4948f1421a9af54275"),
        )
        .await;
    assert_eq!(r.status(), 200);
    // The same JSON re-serialised by Python: its HMAC is not the raw body's.
    let r = app
        .post_with(
            DELETED.as_bytes(),
            Some("sha1=75aa54668698083fbb96fbbbdf88153248fd504d"),
        )
        .await;
    assert_eq!(r.status(), 401);
    let r = app
        .post_with(PING.as_bytes(), Some("sha1=d8ae74615cdd65f7016505f81e61ade359d7df49"))
        .await;
    assert_eq!(r.status(), 200);
    // The deletion was stored, processed (an erasure in the audit log), and
    // then erased itself: it names the person (id, external id).
    app.wait_idle().await;
    let audit = app
        .admin_until("/admin/audit", |a| {
            a["entries"].as_array().is_some_and(|e| !e.is_empty())
        })
        .await;
    assert_eq!(audit["entries"][0]["details"]["trigger"], "contact.deleted webhook");
    app.wait_gone("notif_0b6a3c1e-7d2f-4e59-9a61-3f2d8c4b5e70").await;
    let r = app
        .post_with(
            DELETED.as_bytes(),
            Some("sha1=4a6af54a377a7e45719b1b4948f1421a9af54275"),
        )
        .await;
    assert_eq!(r.status(), 200, "a redelivery is a duplicate");
    let stats = app.admin_json("/admin/stats").await;
    let total: u64 = stats["events_by_status"]
        .as_object()
        .unwrap()
        .values()
        .map(|v| v.as_u64().unwrap())
        .sum();
    assert_eq!(
        (total, stats["events_by_status"]["erased"].as_u64()),
        (1, Some(1)),
        "the ping is not stored, the deletion erased: {stats}"
    );
    let (_, kept) = app.event("notif_0b6a3c1e-7d2f-4e59-9a61-3f2d8c4b5e70").await;
    assert_eq!(
        kept["deliveries"], 2,
        "the redelivery is counted on what is kept: {kept}"
    );
    assert!(app.erased("notif_0b6a3c1e-7d2f-4e59-9a61-3f2d8c4b5e70").await);
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_malformed_signature_is_401_and_stores_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let app = spawn_app(dir.path()).await;
    let body = contact_body("notif_bad-sigs");
    let good = sign(SECRET, &body);
    let hexpart = good.trim_start_matches("sha1=");
    let cases: Vec<Option<String>> = vec![
        None,
        Some(String::new()),
        Some(hexpart.to_string()),                 // no prefix
        Some(format!("sha256={hexpart}")),         // wrong prefix
        Some(format!("sha1={}", &hexpart[..39])),  // too short
        Some(format!("sha1={hexpart}0")),          // too long
        Some(format!("sha1={}g", &hexpart[..39])), // not hex
        Some(sign("another-secret", &body)),       // wrong secret
    ];
    for sig in &cases {
        let r = app.post_with(&body, sig.as_deref()).await;
        assert_eq!(r.status(), 401, "{sig:?}");
        let text = r.text().await.unwrap();
        assert_eq!(text.trim(), "unauthorized", "the answer says nothing more");
    }
    // One flipped byte in the body.
    let mut flipped = body.clone();
    let i = flipped.len() / 2;
    flipped[i] ^= 0x01;
    assert_eq!(app.post_with(&flipped, Some(&good)).await.status(), 401);
    // A valid copy afterwards is stored: proof the 404 below is not a race.
    assert_eq!(app.post_signed(&contact_body("notif_control")).await.status(), 200);
    app.wait_final("notif_control").await;
    let r = app.admin_get("/admin/events/notif_bad-sigs").await;
    assert_eq!(r.status(), 404, "nothing was stored");
    let metrics = app.metrics().await;
    let failures: f64 = metrics
        .lines()
        .filter(|l| l.starts_with("intercom_webhooks_signature_failures_total"))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum();
    assert_eq!(failures, (cases.len() + 1) as f64, "{metrics}");
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rotation_accepts_both_secrets() {
    let dir = tempfile::tempdir().unwrap();
    let mut env = test_env();
    env.0.insert("INTERCOM_CLIENT_SECRET", format!("old-secret,{SECRET}"));
    let app = spawn_app_with(dir.path(), "", env).await;
    let a = contact_body("notif_rot-a");
    let b = contact_body("notif_rot-b");
    assert_eq!(app.post_with(&a, Some(&sign("old-secret", &a))).await.status(), 200);
    assert_eq!(app.post_with(&b, Some(&sign(SECRET, &b))).await.status(), 200);
    assert_eq!(app.post_with(&b, Some(&sign("neither", &b))).await.status(), 401);
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_copies_of_one_id_are_stored_once() {
    let dir = tempfile::tempdir().unwrap();
    let app = std::sync::Arc::new(spawn_app(dir.path()).await);
    let body = contact_body("notif_concurrent");
    let mut tasks = Vec::new();
    for _ in 0..10 {
        let (app, body) = (app.clone(), body.clone());
        tasks.push(tokio::spawn(async move { app.post_signed(&body).await.status() }));
    }
    for t in tasks {
        assert_eq!(t.await.unwrap(), 200);
    }
    let ev = app.wait_final("notif_concurrent").await;
    assert_eq!(ev["deliveries"], 10);
    let list = app.admin_json("/admin/events?limit=100").await;
    assert_eq!(list["events"].as_array().unwrap().len(), 1);
    let stats = app.admin_json("/admin/stats").await;
    assert_eq!(stats["duplicates_seen"], 9);
    let app = std::sync::Arc::try_unwrap(app).ok().unwrap();
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn oversize_non_json_ping_head_get_and_health() {
    let dir = tempfile::tempdir().unwrap();
    let app = spawn_app_with(dir.path(), "[server]\nbody_limit_bytes = 4096\n", test_env()).await;
    let big = vec![b'x'; 5000];
    assert_eq!(app.post_signed(&big).await.status(), 413);

    // Signed, but not a notification: kept as invalid, answered 202.
    let r = app.post_signed(b"this is not json").await;
    assert_eq!(r.status(), 202);
    let list = app
        .admin_until("/admin/events?status=invalid", |v| {
            !v["events"].as_array().unwrap().is_empty()
        })
        .await;
    assert_eq!(list["events"].as_array().unwrap().len(), 1);
    // Valid JSON without a topic is not a notification either.
    assert_eq!(app.post_signed(br#"{"hello":"world"}"#).await.status(), 202);

    let ping = br#"{"type":"notification_event","data":{"item":{"type":"ping"}},"id":null,"topic":"ping"}"#;
    assert_eq!(app.post_signed(ping).await.status(), 200);

    assert_eq!(app.client.head(app.url()).send().await.unwrap().status(), 200);
    assert_eq!(app.client.get(app.url()).send().await.unwrap().status(), 200);
    let base = format!("http://{}", app.addr);
    assert_eq!(
        app.client.get(format!("{base}/healthz")).send().await.unwrap().status(),
        200
    );
    assert_eq!(
        app.client.get(format!("{base}/readyz")).send().await.unwrap().status(),
        200
    );
    // Admin routes are absent from the public listener.
    assert_eq!(
        app.client
            .get(format!("{base}/admin/stats"))
            .send()
            .await
            .unwrap()
            .status(),
        404
    );
    assert_eq!(
        app.client.get(format!("{base}/metrics")).send().await.unwrap().status(),
        404
    );
    app.stop().await;
}

/// How many events the admin API lists.
async fn event_count(app: &TestApp) -> usize {
    app.admin_json("/admin/events").await["events"]
        .as_array()
        .unwrap()
        .len()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn restart_keeps_events_and_their_dedup() {
    let dir = tempfile::tempdir().unwrap();
    let app = spawn_app(dir.path()).await;
    let body = contact_body("notif_restart");
    assert_eq!(app.post_signed(&body).await.status(), 200);
    app.wait_final("notif_restart").await;
    app.stop().await;

    let app = spawn_app(dir.path()).await;
    assert_eq!(app.post_signed(&body).await.status(), 200);
    let ev = app.wait_final("notif_restart").await;
    assert_eq!(ev["deliveries"], 2, "recognised as a duplicate after restart");
    assert_eq!(event_count(&app).await, 1);
    app.stop().await;
}

/// The README's recovery for an index that will not open: move it aside,
/// and the intake log rebuilds it, every event processed again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_index_moved_aside_is_rebuilt_from_the_log() {
    let dir = tempfile::tempdir().unwrap();
    let app = spawn_app(dir.path()).await;
    let contacts = [
        "65f0c0ffee0000000000c001",
        "65f0c0ffee0000000000c002",
        "65f0c0ffee0000000000c003",
    ];
    for (i, c) in contacts.iter().enumerate() {
        let body = notification(
            &format!("notif_rebuild-{i}"),
            "contact.user.created",
            json!({"type":"contact","id":c,"role":"user","updated_at":1767225600}),
            1767225600,
        );
        assert_eq!(app.post_signed(&body).await.status(), 200);
        app.wait_final(&format!("notif_rebuild-{i}")).await;
    }
    app.stop().await;
    std::fs::rename(dir.path().join("data/index"), dir.path().join("index.damaged")).unwrap();

    let app = spawn_app(dir.path()).await;
    for (i, c) in contacts.iter().enumerate() {
        let ev = app.wait_final(&format!("notif_rebuild-{i}")).await;
        assert_eq!(ev["status"], "processed", "{ev}");
        let cached = app.admin_json(&format!("/admin/contacts/{c}")).await;
        assert_eq!(cached["id"], *c, "{cached}");
    }
    assert_eq!(event_count(&app).await, 3);
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn payloads_are_encrypted_at_rest() {
    let dir = tempfile::tempdir().unwrap();
    let app = spawn_app(dir.path()).await;
    let body = contact_body("notif_at-rest");
    assert_eq!(app.post_signed(&body).await.status(), 200);
    app.wait_final("notif_at-rest").await;
    // The payload is readable through the store (redacted for display)...
    let ev = app.admin_json("/admin/events/notif_at-rest").await;
    assert_eq!(ev["payload"]["data"]["item"]["email"], "[redacted]");
    assert_eq!(ev["payload"]["topic"], "contact.user.created");
    app.stop().await;
    // ...but no file in the data dir holds it in plaintext.
    assert_absent_from_files(
        &dir.path().join("data"),
        &["zoe.example@example.org", "Zo\u{eb} Example", "+15550100"],
    );
    // Nor can anyone else on the machine list or read it, whatever the umask.
    use std::os::unix::fs::PermissionsExt;
    for sub in ["", "log", "index"] {
        let path = dir.path().join("data").join(sub);
        let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o700, "{}", path.display());
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn flood_of_bad_signatures_gets_429_but_valid_requests_pass() {
    let dir = tempfile::tempdir().unwrap();
    let app = spawn_app_with(dir.path(), "[server]\nbad_signatures_per_minute = 5\n", test_env()).await;
    let body = contact_body("notif_flood");
    let mut codes = Vec::new();
    for _ in 0..20 {
        codes.push(
            app.post_with(&body, Some(&sign("forged", &body)))
                .await
                .status()
                .as_u16(),
        );
    }
    assert!(codes.iter().take(5).all(|&c| c == 401), "{codes:?}");
    assert!(codes.iter().skip(5).all(|&c| c == 429), "{codes:?}");
    // The same source, correctly signed, is never limited.
    for i in 0..5 {
        let b = contact_body(&format!("notif_flood-ok-{i}"));
        assert_eq!(app.post_signed(&b).await.status(), 200);
    }
    app.stop().await;
}

/// `X-Forwarded-For` is believed only from a configured proxy: from it,
/// forged requests are counted per forwarded client (two clients, two
/// budgets); from anyone else the header is ignored (a forger cannot pick
/// a fresh key per request). `trust_forwarded_for` without proxies listed
/// is refused at start.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forwarded_for_counts_only_behind_a_trusted_proxy() {
    let body = contact_body("notif_xff");
    let forged = sign("forged", &body);
    async fn codes(app: &TestApp, body: &[u8], sig: &str, xff: &[&str]) -> Vec<u16> {
        let mut out = Vec::new();
        for x in xff {
            let r = app
                .client
                .post(app.url())
                .header("content-type", "application/json")
                .header("x-hub-signature", sig)
                .header("x-forwarded-for", *x)
                .body(body.to_vec())
                .send()
                .await
                .unwrap();
            out.push(r.status().as_u16());
        }
        out
    }
    let many: Vec<String> = (0..6).map(|i| format!("198.51.100.{i}")).collect();
    let many: Vec<&str> = many.iter().map(String::as_str).collect();

    let dir = tempfile::tempdir().unwrap();
    let cfg = "[server]\nbad_signatures_per_minute = 2\ntrusted_proxies = [\"127.0.0.1\"]\n";
    let app = spawn_app_with(dir.path(), cfg, test_env()).await;
    assert_eq!(
        codes(&app, &body, &forged, &many).await,
        vec![401; 6],
        "one budget per forwarded client"
    );
    let same = codes(&app, &body, &forged, &["203.0.113.5"; 4]).await;
    assert_eq!(same, vec![401, 401, 429, 429], "one client's budget");
    app.stop().await;

    let dir = tempfile::tempdir().unwrap();
    let app = spawn_app_with(dir.path(), "[server]\nbad_signatures_per_minute = 2\n", test_env()).await;
    let ignored = codes(&app, &body, &forged, &many).await;
    assert_eq!(
        ignored,
        vec![401, 401, 429, 429, 429, 429],
        "the header is ignored: {ignored:?}"
    );
    app.stop().await;

    let dir = tempfile::tempdir().unwrap();
    let mut bin = Binary::new(dir.path());
    std::fs::write(dir.path().join("xff.toml"), "[server]\ntrust_forwarded_for = true\n").unwrap();
    bin.env.push(("RUST_LOG".into(), "warn".into()));
    let (code, _, err) = bin.run(&[
        "--config",
        dir.path().join("xff.toml").to_str().unwrap(),
        "config",
        "check",
    ]);
    assert_eq!(code, 2);
    assert!(err.contains("trusted_proxies"), "{err}");
}

/// Past `max_connections` a new connection waits `busy_wait` for a slot,
/// then gets `503` (so Intercom retries) and is closed; slots freed are
/// used at once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connections_past_the_cap_get_503() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = "[server]\nmax_connections = 8\nbusy_wait = \"200ms\"\n";
    let app = spawn_app_with(dir.path(), cfg, test_env()).await;
    let mut idle = Vec::new();
    for _ in 0..8 {
        idle.push(tokio::net::TcpStream::connect(app.addr).await.unwrap());
    }
    tokio::time::sleep(Duration::from_millis(100)).await;
    let body = contact_body("notif_cap");
    let request = |body: &[u8]| {
        let mut r = format!(
            "POST /webhooks/intercom HTTP/1.1\r\nhost: x\r\nconnection: close\r\ncontent-type: application/json\r\ncontent-length: {}\r\nx-hub-signature: {}\r\n\r\n",
            body.len(),
            sign(SECRET, body)
        )
        .into_bytes();
        r.extend_from_slice(body);
        r
    };
    let exchange = |addr, req: Vec<u8>| async move {
        let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
        s.write_all(&req).await.unwrap();
        let mut answer = Vec::new();
        let _ = tokio::time::timeout(Duration::from_secs(5), s.read_to_end(&mut answer)).await;
        String::from_utf8_lossy(&answer).into_owned()
    };
    let started = std::time::Instant::now();
    let answer = exchange(app.addr, request(&body)).await;
    assert!(answer.starts_with("HTTP/1.1 503"), "{answer}");
    assert!(
        started.elapsed() >= Duration::from_millis(200),
        "it waited busy_wait first"
    );
    // (The harness's own pooled connection may hold a slot too, so all
    // eight go.)
    drop(idle);
    let answer = exchange(app.addr, request(&body)).await;
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stalled_clients_are_cut_off() {
    let dir = tempfile::tempdir().unwrap();
    let app = spawn_app_with(
        dir.path(),
        "[server]\nheader_timeout = \"1s\"\nbody_timeout = \"1s\"\n",
        test_env(),
    )
    .await;
    // Headers never finished: the connection is closed.
    let mut s = tokio::net::TcpStream::connect(app.addr).await.unwrap();
    s.write_all(b"POST /webhooks/intercom HTTP/1.1\r\nHost: x\r\n")
        .await
        .unwrap();
    let mut buf = Vec::new();
    let read = tokio::time::timeout(Duration::from_secs(5), s.read_to_end(&mut buf)).await;
    assert!(read.is_ok(), "the server closed the stalled connection");
    // Body promised but never sent: 408.
    let mut s = tokio::net::TcpStream::connect(app.addr).await.unwrap();
    s.write_all(
        b"POST /webhooks/intercom HTTP/1.1\r\nHost: x\r\nContent-Length: 100\r\nX-Hub-Signature: sha1=00\r\n\r\n{",
    )
    .await
    .unwrap();
    let mut buf = vec![0u8; 64];
    let n = tokio::time::timeout(Duration::from_secs(5), s.read(&mut buf))
        .await
        .unwrap()
        .unwrap();
    assert!(
        String::from_utf8_lossy(&buf[..n]).starts_with("HTTP/1.1 408"),
        "{}",
        String::from_utf8_lossy(&buf[..n])
    );
    // Meanwhile valid requests are served.
    assert_eq!(app.post_signed(&contact_body("notif_after-stall")).await.status(), 200);
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn admin_api_needs_the_token() {
    let dir = tempfile::tempdir().unwrap();
    let app = spawn_app(dir.path()).await;
    let base = format!("http://{}", app.admin);
    let r = app.client.get(format!("{base}/admin/stats")).send().await.unwrap();
    assert_eq!(r.status(), 401);
    let r = app
        .client
        .get(format!("{base}/admin/stats"))
        .bearer_auth("wrong")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 401);
    assert_eq!(app.admin_get("/admin/stats").await.status(), 200);
    assert_eq!(
        app.client.get(format!("{base}/metrics")).send().await.unwrap().status(),
        200
    );
    app.stop().await;

    // No admin token configured: every admin request is refused.
    let dir = tempfile::tempdir().unwrap();
    let mut env = test_env();
    env.0.remove("INTERCOM_WEBHOOKS_ADMIN_TOKEN");
    let app = spawn_app_with(dir.path(), "", env).await;
    let r = app
        .client
        .get(format!("http://{}/admin/stats", app.admin))
        .bearer_auth("")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 401);
    app.stop().await;
}

async fn yielded_seconds(app: &TestApp) -> f64 {
    app.metrics()
        .await
        .lines()
        .find_map(|l| l.strip_prefix("intercom_webhooks_worker_yielded_seconds_total "))
        .expect("the pause is in the metrics")
        .parse()
        .unwrap()
}

/// Sends `n` distinct signed notifications, `concurrency` at a time; all
/// must be acknowledged.
async fn burst(app: &TestApp, prefix: &str, n: usize, concurrency: usize) {
    let mut tasks = tokio::task::JoinSet::new();
    for t in 0..concurrency {
        let (client, url, prefix) = (app.client.clone(), app.url(), prefix.to_string());
        tasks.spawn(async move {
            for i in (t..n).step_by(concurrency) {
                let body = contact_body(&format!("{prefix}-{i}"));
                let r = client
                    .post(&url)
                    .header("x-hub-signature", sign(SECRET, &body))
                    .body(body)
                    .send()
                    .await
                    .unwrap();
                assert_eq!(r.status(), 200);
            }
        });
    }
    while let Some(done) = tasks.join_next().await {
        done.unwrap();
    }
}

/// Intake first: while many webhooks are being stored at once, handlers
/// pause so that intake gets the CPU, then work off the queue; with
/// `yield_to_intake = "0s"` they never pause. (The timing rules are unit
/// tested in `worker`.) Stalling clients do not count as load.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn handlers_yield_to_a_saturated_receiver() {
    let dir = tempfile::tempdir().unwrap();
    let app = spawn_app_with(
        dir.path(),
        "[server]\nbody_timeout = \"30s\"\n[worker]\nyield_to_intake = \"60s\"\n",
        test_env(),
    )
    .await;
    // Clients stalled in their bodies are not load: an event is handled at once.
    let mut stalled = Vec::new();
    for _ in 0..12 {
        let mut s = tokio::net::TcpStream::connect(app.addr).await.unwrap();
        s.write_all(b"POST /webhooks/intercom HTTP/1.1\r\nHost: x\r\nContent-Length: 100\r\n\r\n{")
            .await
            .unwrap();
        stalled.push(s);
    }
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert!(app.metrics().await.contains("intercom_webhooks_intake_in_flight 0"));
    assert_eq!(app.post_signed(&contact_body("notif_yield-alone")).await.status(), 200);
    assert_eq!(app.wait_final("notif_yield-alone").await["status"], "processed");
    assert_eq!(yielded_seconds(&app).await, 0.0);
    drop(stalled);
    // A burst of 64 at a time: the handlers yield, and catch up afterwards.
    burst(&app, "notif_yield", 3000, 64).await;
    app.wait_idle().await;
    assert!(yielded_seconds(&app).await > 0.0);
    assert_eq!(app.wait_final("notif_yield-2999").await["status"], "processed");
    app.stop().await;

    let dir = tempfile::tempdir().unwrap();
    let app = spawn_app_with(dir.path(), "[worker]\nyield_to_intake = \"0s\"\n", test_env()).await;
    burst(&app, "notif_no-yield", 3000, 64).await;
    app.wait_idle().await;
    assert_eq!(yielded_seconds(&app).await, 0.0);
    app.stop().await;
}

/// Any JSON value: scalars, and arrays and objects of them, nested, with
/// keys that Intercom's items use as often as made-up ones.
fn arb_json() -> impl proptest::strategy::Strategy<Value = serde_json::Value> {
    use proptest::prelude::*;
    use serde_json::Value;
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::Bool),
        any::<i64>().prop_map(|n| json!(n)),
        any::<f64>()
            .prop_filter("finite", |f| f.is_finite())
            .prop_map(|f| json!(f)),
        "\\PC{0,16}".prop_map(Value::String),
    ];
    let key = prop_oneof![
        Just("id".to_string()),
        Just("type".to_string()),
        Just("email".to_string()),
        Just("contacts".to_string()),
        Just("contact".to_string()),
        Just("conversation_id".to_string()),
        Just("ticket".to_string()),
        Just("author".to_string()),
        Just("source".to_string()),
        Just("conversation_parts".to_string()),
        "[a-z_]{1,10}",
    ];
    leaf.prop_recursive(4, 64, 8, move |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..6).prop_map(Value::Array),
            prop::collection::btree_map(key.clone(), inner, 0..8).prop_map(|m| Value::Object(m.into_iter().collect())),
        ]
    })
    // `"item": null` is no item (kept as `invalid`, tested below).
    .prop_filter("an item", |v| !v.is_null())
}

/// Property: a correctly signed body with an id, a topic and `data.item`
/// is a notification whatever `data.item` holds (any shape, at any depth,
/// under real topics too, so the handlers meet them): `200`, never `202`
/// or `5xx`, stored once (the same body again is a duplicate), never kept
/// as `invalid`; and the receiver stays ready.
#[test]
fn any_item_under_a_signed_envelope_is_a_notification() {
    use proptest::test_runner::{Config, TestRunner};
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let app = rt.block_on(spawn_app(dir.path()));
    let topics = proptest::prop_oneof![
        proptest::strategy::Just("contact.user.created".to_string()),
        proptest::strategy::Just("contact.deleted".to_string()),
        proptest::strategy::Just("contact.merged".to_string()),
        proptest::strategy::Just("conversation.user.replied".to_string()),
        proptest::strategy::Just("conversation.deleted".to_string()),
        proptest::strategy::Just("event.created".to_string()),
        "[a-z]{1,10}\\.[a-z]{1,10}",
    ];
    let bodies = std::cell::RefCell::new(Vec::new());
    let mut runner = TestRunner::new(Config {
        cases: 300,
        failure_persistence: None,
        ..Config::default()
    });
    runner
        .run(&(arb_json(), topics), |(item, topic)| {
            let n = bodies.borrow().len();
            let body = notification(&format!("notif_prop_{n}"), &topic, item, 1767225600);
            let status = rt.block_on(app.post_signed(&body)).status().as_u16();
            proptest::prop_assert_eq!(status, 200, "{}", String::from_utf8_lossy(&body));
            bodies.borrow_mut().push(body);
            Ok(())
        })
        .unwrap();
    let bodies = bodies.into_inner();
    for body in &bodies {
        assert_eq!(rt.block_on(app.post_signed(body)).status(), 200, "a duplicate");
    }
    let stats = rt.block_on(app.admin_json("/admin/stats"));
    let by_status = stats["events_by_status"].as_object().unwrap();
    let stored: u64 = by_status.values().map(|v| v.as_u64().unwrap()).sum();
    assert_eq!(by_status["invalid"], 0, "{stats}");
    // Erased events (a random `contact.deleted` erases whom it names) are
    // neither listed nor counted; every other one is stored once and its
    // second copy counted as a duplicate.
    assert!(
        stored <= bodies.len() as u64 && stats["duplicates_seen"].as_u64().unwrap() >= stored,
        "each stored once, the second copy a duplicate: {stats}"
    );
    assert_eq!(rt.block_on(app.readyz()), 200);
    rt.block_on(app.stop());
}

/// The shapes the issue named, and the real problem named when there is
/// one: a bare array of contacts, nulls and numbers where objects or
/// strings were expected are notifications; a body that is JSON but not an
/// object, or has no `data.item`, is `invalid` with a reason that says so.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_envelope_decides_what_a_notification_is() {
    let dir = tempfile::tempdir().unwrap();
    let app = spawn_app(dir.path()).await;
    let odd = [
        json!({"type":"conversation","id":"c1","contacts":[{"type":"contact","id":"u1"}],"source":null}),
        json!({"type":"conversation","id":7,"conversation_parts":5,"contacts":"none"}),
        json!(["an", "array", "item"]),
        json!("a string item"),
        json!(12),
    ];
    for (i, item) in odd.iter().enumerate() {
        let id = format!("notif_odd_{i}");
        let body = notification(&id, "conversation.user.replied", item.clone(), 1767225600);
        assert_eq!(app.post_signed(&body).await.status(), 200, "{item}");
        // A `200` waits for the log; the index follows within moments.
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        let shown = loop {
            let r = app.admin_get(&format!("/admin/events/{id}")).await;
            if r.status() == 200 {
                break r.json::<serde_json::Value>().await.unwrap();
            }
            assert!(std::time::Instant::now() < deadline, "{id} never indexed");
            tokio::time::sleep(Duration::from_millis(10)).await;
        };
        assert_ne!(shown["status"], "invalid", "{shown}");
    }
    for (body, reason) in [
        (b"[1,2,3]".to_vec(), "not a JSON object"),
        (
            br#"{"id":"notif_x","topic":"contact.user.created","data":{"item":null}}"#.to_vec(),
            "no data.item",
        ),
        (
            br#"{"id":"notif_y","topic":"contact.user.created","data":[]}"#.to_vec(),
            "no data.item",
        ),
    ] {
        assert_eq!(
            app.post_signed(&body).await.status(),
            202,
            "{}",
            String::from_utf8_lossy(&body)
        );
        // Indexed a moment after its answer: listed within the poll's limit.
        app.admin_until("/admin/events?status=invalid&limit=100", |listed| {
            listed["events"].as_array().is_some_and(|events| {
                events
                    .iter()
                    .any(|e| e["last_error"].as_str().is_some_and(|m| m.contains(reason)))
            })
        })
        .await;
    }
    app.stop().await;
}

/// Resident memory of a process now and at its peak, in bytes.
fn rss_of(pid: u32) -> (u64, u64) {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    let field = |name: &str| {
        status
            .lines()
            .find(|l| l.starts_with(name))
            .and_then(|l| l.split_whitespace().nth(1))
            .and_then(|v| v.parse::<u64>().ok())
            .unwrap_or(0)
            * 1024
    };
    (field("VmRSS:"), field("VmHWM:"))
}

/// 600 clients each declare a 2 MiB body (the largest accepted), send half
/// of it and stall. With the default caps (128 MiB of unverified bodies, a
/// quarter kept for small ones) the server's peak resident memory stays
/// within 256 MiB of what it was before, the excess get `503` instead of
/// being buffered, and a correctly signed notification sent every 50 ms
/// meanwhile gets `200` every time. Without the cap the stalled halves
/// alone are 600 MiB.
#[test]
fn slow_large_bodies_cannot_exhaust_memory_or_crowd_out_intercom() {
    use std::io::Write;
    let dir = tempfile::tempdir().unwrap();
    let bin = Binary::new(dir.path());
    let (server, public, admin) = bin.serve(&[]);
    let pid = server.0.id();
    let (before, _) = rss_of(pid);

    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let half = vec![b'x'; 1 << 20];
    let attackers: Vec<_> = (0..600)
        .map(|_| {
            let (half, stop) = (half.clone(), stop.clone());
            std::thread::Builder::new()
                .stack_size(64 * 1024)
                .spawn(move || {
                    let Ok(mut s) = std::net::TcpStream::connect(public) else { return };
                    let head = format!(
                        "POST /webhooks/intercom HTTP/1.1\r\nhost: x\r\ncontent-type: application/json\r\ncontent-length: {}\r\nx-hub-signature: sha1=00\r\n\r\n",
                        2 << 20
                    );
                    let _ = s.write_all(head.as_bytes());
                    let _ = s.write_all(&half);
                    while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                        std::thread::sleep(Duration::from_millis(50));
                    }
                })
                .unwrap()
        })
        .collect();

    // A plain HTTP/1.1 exchange: status code of the answer.
    let exchange = |addr: std::net::SocketAddr, request: &[u8]| -> String {
        use std::io::Read;
        let mut s = std::net::TcpStream::connect(addr).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        s.write_all(request).unwrap();
        let mut answer = Vec::new();
        let _ = s.read_to_end(&mut answer);
        String::from_utf8_lossy(&answer).into_owned()
    };
    let mut peak = before;
    for i in 0..100 {
        let body = notification(
            &format!("notif_busy_{i}"),
            "contact.user.created",
            json!({"type":"contact","id":format!("c{i}")}),
            1767225600,
        );
        let mut request = format!(
            "POST /webhooks/intercom HTTP/1.1\r\nhost: x\r\nconnection: close\r\ncontent-type: application/json\r\ncontent-length: {}\r\nx-hub-signature: {}\r\n\r\n",
            body.len(),
            sign(SECRET, &body)
        )
        .into_bytes();
        request.extend_from_slice(&body);
        let answer = exchange(public, &request);
        assert!(
            answer.starts_with("HTTP/1.1 200"),
            "signed notification {i} while the server is flooded: {}",
            answer.lines().next().unwrap_or("")
        );
        peak = peak.max(rss_of(pid).0);
        std::thread::sleep(Duration::from_millis(50));
    }
    let (_, hwm) = rss_of(pid);
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    for a in attackers {
        let _ = a.join();
    }
    let metrics = exchange(admin, b"GET /metrics HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n");
    let busy: f64 = metrics
        .lines()
        .find(|l| l.starts_with("intercom_webhooks_intake_busy_total"))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|v| v.parse().ok())
        .unwrap_or(0.0);
    let grew = hwm.max(peak).saturating_sub(before);
    eprintln!(
        "RSS before {} MiB, peak {} MiB; {busy} answered 503",
        before >> 20,
        hwm.max(peak) >> 20
    );
    assert!(
        grew < 256 << 20,
        "peak RSS grew by {} MiB (from {} MiB)",
        grew >> 20,
        before >> 20
    );
    assert!(busy >= 100.0, "the excess was turned away with 503 ({busy})");
    drop(server);
}

//! Hostile input (issue #29): what an outsider can write into a
//! notification, or a careless client can send to the admin listener,
//! fails only itself, with a clear answer, on both backends.

mod common;

use std::time::Duration;

use common::pg::TestDb;
use common::*;
use serde_json::json;

/// Handlers that cannot handle a notification give up after two quick
/// attempts.
const WORKER: &str = "[worker]\nmax_attempts = 2\nbackoff_base = \"10ms\"\nbackoff_max = \"50ms\"\n";
const PG_STORE: &str = "[store]\nbackend = \"postgres\"\nclaim_lease = \"3s\"\ncommit_timeout = \"2s\"\n";

/// An app on the embedded store, or on a database of its own.
struct Place {
    app: TestApp,
    db: Option<TestDb>,
    _dir: tempfile::TempDir,
}

fn place_env(db: Option<&TestDb>) -> MapEnv {
    let mut env = test_env();
    if let Some(db) = db {
        env.0.insert("INTERCOM_WEBHOOKS_DATABASE_URL", db.url());
    }
    env
}

impl Place {
    async fn new(postgres: bool) -> Place {
        let dir = tempfile::tempdir().unwrap();
        let db = if postgres { Some(TestDb::new().await) } else { None };
        let app = spawn_app_with(dir.path(), &Place::toml(db.is_some()), place_env(db.as_ref())).await;
        Place { app, db, _dir: dir }
    }

    fn toml(postgres: bool) -> String {
        if postgres {
            format!("{WORKER}{PG_STORE}")
        } else {
            WORKER.to_string()
        }
    }

    /// Stops the app, then opens its store as the CLI does.
    async fn reopen(self) -> (intercom_webhooks::store::Store, Option<TestDb>, tempfile::TempDir) {
        let Place { app, db, _dir } = self;
        let s = settings(&app.dir, &Place::toml(db.is_some()), &place_env(db.as_ref()));
        app.stop().await;
        let store = tokio::task::spawn_blocking(move || intercom_webhooks::ops::open_store(&s).unwrap())
            .await
            .unwrap();
        (store, db, _dir)
    }

    async fn end(self) {
        self.app.stop().await;
        if let Some(db) = self.db {
            db.drop_now().await;
        }
    }
}

fn ordinary(i: usize) -> Vec<u8> {
    notification(
        &format!("notif_ordinary_{i}"),
        "contact.user.updated",
        json!({"type": "contact", "id": format!("c_ordinary_{i}"), "role": "user",
               "updated_at": "2026-01-01T00:00:00.000Z"}),
        1767225600,
    )
}

/// Values PostgreSQL's `text` cannot hold (NUL) or that no identifier has
/// (control characters, 10 KB), each where an outsider can put it: a
/// message's subject embedding a JSON document, a custom attribute, the
/// topic, the item's id.
fn poisoned() -> Vec<(&'static str, Vec<u8>, &'static str)> {
    let long = "c".repeat(10_000);
    vec![
        (
            "a subject holding a contact whose id is NUL",
            notification(
                "notif_poison_subject",
                "conversation.user.created",
                json!({"type": "conversation", "id": "9001",
                       "source": {"type": "conversation", "subject": "{\"type\":\"user\",\"id\":\"\\u0000\"}"}}),
                1767225600,
            ),
            "processed",
        ),
        (
            "a custom attribute holding a person with control characters",
            notification(
                "notif_poison_attribute",
                "contact.user.updated",
                json!({"type": "contact", "id": "c_poison_attr", "role": "user",
                       "custom_attributes": {"note": {"type": "lead", "id": "a\u{1}b", "external_id": "x\u{0}y"}},
                       "updated_at": "2026-01-01T00:00:00.000Z"}),
                1767225600,
            ),
            "processed",
        ),
        (
            "an item whose id is NUL",
            notification(
                "notif_poison_item",
                "contact.user.updated",
                json!({"type": "contact", "id": "\u{0}", "role": "user", "updated_at": "2026-01-01T00:00:00.000Z"}),
                1767225600,
            ),
            "failed",
        ),
        (
            "an item whose id is 10 KB",
            notification(
                "notif_poison_long",
                "contact.user.updated",
                json!({"type": "contact", "id": long, "role": "user", "updated_at": "2026-01-01T00:00:00.000Z"}),
                1767225600,
            ),
            "failed",
        ),
        (
            "a topic with NUL in it",
            notification(
                "notif_poison_topic",
                "contact.user.updated\u{0}",
                json!({"type": "contact", "id": "c_poison_topic", "role": "user"}),
                1767225600,
            ),
            "invalid",
        ),
    ]
}

async fn one_bad_notification_fails_only_itself(postgres: bool) {
    let place = Place::new(postgres).await;
    let app = &place.app;
    let poisoned = poisoned();
    for (what, body, _) in &poisoned {
        // The bad one among 30 ordinary ones, all at once, so that they
        // share batches.
        let mut requests = Vec::new();
        for i in 0..30 {
            let body = ordinary(i);
            requests.push(tokio::spawn({
                let (client, url) = (app.client.clone(), app.url());
                async move { post(&client, &url, &body).await }
            }));
        }
        let bad = tokio::spawn({
            let (client, url, body) = (app.client.clone(), app.url(), body.clone());
            async move { post(&client, &url, &body).await }
        });
        for (i, r) in requests.into_iter().enumerate() {
            assert_eq!(
                r.await.unwrap(),
                200,
                "{what}: ordinary notification {i} was not stored"
            );
        }
        // The bad one is signed: it is stored (as a notification or as
        // `invalid`), never refused for what an outsider wrote in it.
        let code = bad.await.unwrap();
        assert!(code == 200 || code == 202, "{what}: answered {code}");
        assert_eq!(app.readyz().await, 200, "{what}: not ready after it");
    }
    // Each ends with an outcome of its own; the ordinary ones are handled.
    app.wait_idle().await;
    for i in 0..30 {
        let ev = app.wait_final(&format!("notif_ordinary_{i}")).await;
        assert_eq!(ev["status"], "processed", "{ev}");
    }
    for (what, body, status) in &poisoned {
        let v: serde_json::Value = serde_json::from_slice(body).unwrap();
        if *status == "invalid" {
            continue;
        }
        let ev = app.wait_final(v["id"].as_str().unwrap()).await;
        assert_eq!(ev["status"], *status, "{what}: {ev}");
    }
    let stats = app.admin_json("/admin/stats").await;
    assert_eq!(
        stats["events_by_status"]["invalid"], 1,
        "the topic with NUL is kept as invalid: {stats}"
    );
    assert_eq!(stats["events_by_status"]["retrying"], 0, "{stats}");
    place.end().await;
}

async fn post(client: &reqwest::Client, url: &str, body: &[u8]) -> u16 {
    client
        .post(url)
        .header("x-hub-signature", intercom_webhooks::verify::sign(SECRET, body))
        .header("Content-Type", "application/json")
        .body(body.to_vec())
        .timeout(Duration::from_secs(30))
        .send()
        .await
        .map(|r| r.status().as_u16())
        .unwrap_or(0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn one_bad_notification_fails_only_itself_embedded() {
    one_bad_notification_fails_only_itself(false).await;
}

#[cfg_attr(not(has_postgres), ignore = "needs PostgreSQL on 127.0.0.1:5432 (CI starts it)")]
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn one_bad_notification_fails_only_itself_on_postgres() {
    one_bad_notification_fails_only_itself(true).await;
}

/// Hostile values for every admin and console route: each is answered
/// `400` or `404` with a plain message that does not echo it, never `500`,
/// on both backends.
async fn no_request_gets_a_500(postgres: bool) {
    let place = Place::new(postgres).await;
    let app = &place.app;
    // Something to list, so that cursors and filters have rows to pass.
    for i in 0..3 {
        assert_eq!(app.post_signed(&ordinary(i)).await.status(), 200);
    }
    app.wait_idle().await;
    let long = "c".repeat(10_000);
    let gets: Vec<(String, u16)> = vec![
        ("/admin/events?after=zz".into(), 400),
        ("/admin/events?after=%00".into(), 400),
        ("/admin/events?after=00ff".into(), 400),
        (format!("/admin/events?after={long}"), 400),
        ("/admin/events?topic=%00".into(), 400),
        (format!("/admin/events?topic={long}"), 400),
        ("/admin/events?status=bogus".into(), 400),
        ("/admin/events?since=notadate".into(), 400),
        ("/admin/events?until=2026-13-45T99:00:00Z".into(), 400),
        ("/admin/events?limit=-1".into(), 400),
        ("/admin/events/%00".into(), 404),
        (format!("/admin/events/{long}"), 404),
        ("/admin/events/%FF%FE".into(), 400),
        ("/admin/contacts/%00".into(), 404),
        (format!("/admin/conversations/{long}"), 404),
        ("/admin/contacts/%FF".into(), 400),
        ("/admin/audit/verify?expect_head=%00".into(), 400),
        ("/admin/audit/verify?expect_head=zz".into(), 400),
    ];
    for (path, want) in &gets {
        let r = app.admin_get(path).await;
        let code = r.status().as_u16();
        let text = r.text().await.unwrap();
        assert_eq!(code, *want, "GET {}: {text}", shown(path));
        plain(&text, path);
    }
    let posts: Vec<(&str, serde_json::Value, u16)> = vec![
        ("/admin/replay", json!({"ids": ["\u{0}"], "dry_run": true}), 404),
        ("/admin/replay", json!({"ids": [long], "dry_run": true}), 404),
        ("/admin/replay", json!({"topic": "\u{0}", "dry_run": true}), 400),
        ("/admin/replay", json!({"since": "bad", "dry_run": true}), 400),
        ("/admin/replay", json!({"status": "bogus", "dry_run": true}), 400),
        (
            "/admin/erase",
            json!({"contact_id": "\u{0}", "local_only": true, "dry_run": true}),
            400,
        ),
        ("/admin/erase", json!({"email": long, "local_only": true}), 400),
        (
            "/admin/erase",
            json!({"external_id": "a\u{1}b", "local_only": true}),
            400,
        ),
        ("/admin/export", json!({"contact_id": "\u{0}", "local_only": true}), 400),
        ("/admin/reconcile", json!({"since": "bad"}), 400),
        (
            "/admin/audit/message-export",
            json!({"job": "\u{0}", "status": "completed", "bytes": 1}),
            400,
        ),
    ];
    for (path, body, want) in &posts {
        let r = app.admin_post(path, body.clone()).await;
        let code = r.status().as_u16();
        let text = r.text().await.unwrap();
        assert_eq!(code, *want, "POST {path} {}: {text}", shown(&body.to_string()));
        plain(&text, path);
    }
    // The console, signed in.
    let client = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap();
    let base = format!("http://{}", app.admin);
    let login = client
        .post(format!("{base}/console/login"))
        .form(&[("token", ADMIN_TOKEN)])
        .send()
        .await
        .unwrap();
    let cookie = login.headers()["set-cookie"]
        .to_str()
        .unwrap()
        .split(';')
        .next()
        .unwrap()
        .to_string();
    let pages: Vec<(String, u16)> = vec![
        ("/console/events?after=zz".into(), 400),
        ("/console/events?after=%00".into(), 400),
        ("/console/events?topic=%00".into(), 400),
        ("/console/events?status=bogus".into(), 400),
        ("/console/events?since=notadate".into(), 400),
        ("/console/events/%00".into(), 404),
        (format!("/console/events/{long}"), 404),
        ("/console/cache?kind=contact&id=%00".into(), 404),
        (format!("/console/cache?kind=conversation&id={long}"), 404),
        ("/console/cache?kind=%00&id=1".into(), 400),
        ("/console/replay?id=%00".into(), 404),
        ("/console/audit?verify=1&expect_head=%00".into(), 400),
    ];
    for (path, want) in &pages {
        let r = client
            .get(format!("{base}{path}"))
            .header("cookie", &cookie)
            .send()
            .await
            .unwrap();
        let code = r.status().as_u16();
        let text = r.text().await.unwrap();
        assert_eq!(code, *want, "GET {}: {}", shown(path), shown(&text));
        plain(&text, path);
    }
    assert_eq!(app.readyz().await, 200);
    place.end().await;
}

/// At most 200 characters of `s`, for a failure's message.
fn shown(s: &str) -> String {
    s.chars().take(200).collect()
}

/// The answer is a message, and does not hand the hostile value back.
fn plain(text: &str, path: &str) {
    assert!(!text.trim().is_empty(), "{}: an empty answer", shown(path));
    assert!(
        !text.contains('\u{0}') && !text.contains("\\u0000"),
        "{}: echoes NUL: {}",
        shown(path),
        shown(text)
    );
    assert!(
        !text.contains(&"c".repeat(1000)),
        "{}: echoes the 10 KB value",
        shown(path)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn no_request_gets_a_500_embedded() {
    no_request_gets_a_500(false).await;
}

#[cfg_attr(not(has_postgres), ignore = "needs PostgreSQL on 127.0.0.1:5432 (CI starts it)")]
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn no_request_gets_a_500_on_postgres() {
    no_request_gets_a_500(true).await;
}

/// The server's resident memory, from `/proc`.
fn rss_mib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let kb: u64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap();
    kb / 1024
}

/// Opens `n` connections to `addr` and writes `head` (and nothing more)
/// on each; returns them, still open.
async fn stalled(addr: std::net::SocketAddr, n: usize, head: &[u8]) -> Vec<tokio::net::TcpStream> {
    use tokio::io::AsyncWriteExt;
    let mut out = Vec::new();
    for _ in 0..n {
        let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
        if !head.is_empty() {
            s.write_all(head).await.unwrap();
        }
        out.push(s);
    }
    out
}

/// The status line's code of what the server wrote on `s`, or 0 if it
/// closed without an answer, within `within`.
async fn answer(s: &mut tokio::net::TcpStream, within: Duration) -> u16 {
    use tokio::io::AsyncReadExt;
    let mut buf = vec![0u8; 512];
    match tokio::time::timeout(within, s.read(&mut buf)).await {
        Ok(Ok(n)) if n >= 12 => std::str::from_utf8(&buf[9..12])
            .ok()
            .and_then(|c| c.parse().ok())
            .unwrap_or(0),
        _ => 0,
    }
}

/// 600 unauthenticated sign-ins that declare 2 MB bodies and stall keep the
/// server's memory small (each is refused before its body is read), while
/// webhooks are stored and the right token signs in; a body near the
/// console's limit that stalls is cut off after `body_timeout`; and
/// connections beyond `[admin] max_connections` get `503`.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_admin_listener_is_bounded() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("bounded.toml");
    std::fs::write(
        &config,
        "[server]\nbody_timeout = \"2s\"\nbusy_wait = \"200ms\"\n[admin]\nmax_connections = 700\n",
    )
    .unwrap();
    let mut bin = Binary::new(dir.path());
    bin.env
        .push(("INTERCOM_WEBHOOKS_CONFIG".into(), config.display().to_string()));
    let (server, public, admin) = bin.serve(&[]);
    let pid = server.0.id();
    let before = rss_mib(pid);

    let mut head = b"POST /console/login HTTP/1.1\r\nHost: x\r\nContent-Type: application/x-www-form-urlencoded\r\nContent-Length: 2000000\r\n\r\ntoken=".to_vec();
    head.extend(std::iter::repeat_n(b'a', 60_000));
    let big = stalled(admin, 600, &head).await;
    tokio::time::sleep(Duration::from_secs(1)).await;
    let during = rss_mib(pid);
    eprintln!("admin listener: RSS {before} MiB before, {during} MiB with 600 stalled 2 MB sign-ins");
    assert!(during < 512, "RSS {during} MiB with 600 stalled sign-ins");

    // Webhooks are stored meanwhile, and the operator signs in.
    let client = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .timeout(Duration::from_secs(10))
        .build()
        .unwrap();
    for i in 0..20 {
        let code = post(&client, &format!("http://{public}/webhooks/intercom"), &ordinary(i)).await;
        assert_eq!(code, 200, "webhook {i} during the flood");
    }
    let login = client
        .post(format!("http://{admin}/console/login"))
        .form(&[("token", ADMIN_TOKEN)])
        .send()
        .await
        .unwrap();
    assert_eq!(login.status(), 303, "the right token signs in");
    assert!(login.headers().contains_key("set-cookie"));
    let answers: Vec<_> = big
        .into_iter()
        .map(|mut s| tokio::spawn(async move { answer(&mut s, Duration::from_secs(5)).await }))
        .collect();
    let mut refused = 0;
    for a in answers {
        refused += usize::from(a.await.unwrap() == 413);
    }
    assert_eq!(
        refused, 600,
        "each declared body over the console's limit is refused before it is read"
    );

    // A body within the limit that stalls is cut off.
    let head = b"POST /console/login HTTP/1.1\r\nHost: x\r\nContent-Type: application/x-www-form-urlencoded\r\nContent-Length: 16000\r\n\r\ntoken=abc";
    let mut slow = stalled(admin, 50, head).await;
    let started = std::time::Instant::now();
    for s in &mut slow {
        assert_eq!(
            answer(s, Duration::from_secs(10)).await,
            408,
            "a stalled body times out"
        );
    }
    assert!(
        started.elapsed() < Duration::from_secs(8),
        "cut off after body_timeout (2 s)"
    );
    drop(slow);

    // Beyond the connection cap: `503` after `busy_wait`. Which of the
    // 720 connections are the 20 turned away depends on the order the
    // server's tasks run in, so every one of them asks, and the answers are
    // counted: exactly the connections beyond the cap get `503`, the rest
    // are served. (A connection of the earlier steps may still be closing:
    // a slot or two.)
    drop(client);
    tokio::time::sleep(Duration::from_millis(500)).await;
    let mut all = stalled(admin, 700, b"").await;
    all.extend(stalled(admin, 20, b"").await);
    tokio::time::sleep(Duration::from_millis(500)).await;
    let asked: Vec<_> = all
        .into_iter()
        .map(|mut s| {
            tokio::spawn(async move {
                use tokio::io::AsyncWriteExt;
                let _ = s.write_all(b"GET /console/login HTTP/1.1\r\nHost: x\r\n\r\n").await;
                answer(&mut s, Duration::from_secs(8)).await
            })
        })
        .collect();
    let (mut busy, mut served, mut other) = (0, 0, 0);
    for a in asked {
        match a.await.unwrap() {
            503 => busy += 1,
            200 => served += 1,
            _ => other += 1,
        }
    }
    eprintln!("admin listener: of 720 connections, {busy} answered 503 and {served} served");
    assert!(
        (20..=23).contains(&busy) && busy + served == 720 && other == 0,
        "of 720 connections with room for 700: {busy} answered 503, {served} served, {other} neither"
    );
    assert_eq!(server.terminate(), Some(0));
}

/// A signed body of any shape is found by its person's email, and its key
/// (kept after an erasure) is keyed: not the unkeyed hash of the body
/// (issue #29, item 4).
async fn signed_bodies_of_any_shape_are_found(postgres: bool) {
    let place = Place::new(postgres).await;
    let app = &place.app;
    let bodies: [&[u8]; 3] = [
        br#"["alice.shape@example.org"]"#,
        br#"{"note": "write to alice.shape@example.org"}"#,
        b"alice.shape@example.org, not JSON",
    ];
    for body in bodies {
        assert_eq!(app.post_signed(body).await.status(), 202);
    }
    // Answered once durable; indexed (and so searchable) a moment later.
    app.admin_until("/admin/stats", |v| v["events_by_status"]["invalid"] == 3)
        .await;
    let dry = app
        .admin_post(
            "/admin/erase",
            json!({"email": "alice.shape@example.org", "local_only": true, "dry_run": true}),
        )
        .await;
    let dry: serde_json::Value = dry.json().await.unwrap();
    let events = dry["would_erase"]["local"]["events"]
        .as_array()
        .cloned()
        .unwrap_or_default();
    assert_eq!(events.len(), 3, "{dry}");
    let unkeyed = |body: &[u8]| {
        use sha2::Digest;
        let mut h = sha2::Sha256::new();
        h.update((body.len() as u64).to_le_bytes());
        h.update(body);
        format!("inv_{}", hex::encode(&h.finalize()[..16]))
    };
    for e in &events {
        let id = e.as_str().unwrap_or_default();
        assert!(id.starts_with("inv_"), "{e}");
        assert!(
            bodies.iter().all(|b| unkeyed(b) != id),
            "{id} is the unkeyed hash of a body"
        );
    }
    let done = app
        .admin_post(
            "/admin/erase",
            json!({"email": "alice.shape@example.org", "local_only": true}),
        )
        .await;
    assert_eq!(done.status(), 200);
    app.wait_idle().await;
    let stats = app.admin_json("/admin/stats").await;
    assert_eq!(stats["events_by_status"]["invalid"], 0, "{stats}");
    place.end().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn signed_bodies_of_any_shape_are_found_embedded() {
    signed_bodies_of_any_shape_are_found(false).await;
}

#[cfg_attr(not(has_postgres), ignore = "needs PostgreSQL on 127.0.0.1:5432 (CI starts it)")]
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn signed_bodies_of_any_shape_are_found_on_postgres() {
    signed_bodies_of_any_shape_are_found(true).await;
}

/// A backup of a database killed while its copy is staged in the data dir
/// leaves nothing that opens: the stage has no root key and its segment
/// keys are wrapped by a key the dead process held; the next start removes
/// it, and a backup then restores (issue #29, item 6).
#[cfg_attr(not(has_postgres), ignore = "needs PostgreSQL on 127.0.0.1:5432 (CI starts it)")]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_crashed_backup_leaves_nothing_readable() {
    let db = TestDb::new().await;
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("pg.toml");
    std::fs::write(&config, PG_STORE).unwrap();
    let home = dir.path().join("server");
    std::fs::create_dir_all(&home).unwrap();
    let mut bin = Binary::new(&home);
    bin.env
        .push(("INTERCOM_WEBHOOKS_CONFIG".into(), config.display().to_string()));
    bin.env.push(("INTERCOM_WEBHOOKS_DATABASE_URL".into(), db.url()));
    let (server, public, admin) = bin.serve(&[("INTERCOM_WEBHOOKS_TEST_CRASH_AT", "backup:staged")]);
    let client = reqwest::Client::new();
    let body = notification(
        "notif_stage_1",
        "contact.user.created",
        json!({"type": "contact", "id": "c_stage_1", "role": "user", "email": "stage.person@example.org",
               "name": "Stage Person", "updated_at": "2026-01-01T00:00:00.000Z"}),
        1767225600,
    );
    assert_eq!(
        post(&client, &format!("http://{public}/webhooks/intercom"), &body).await,
        200
    );
    let answered = client
        .get(format!("http://{admin}/admin/backup"))
        .bearer_auth(ADMIN_TOKEN)
        .timeout(Duration::from_secs(60))
        .send()
        .await;
    assert!(answered.is_err(), "the server died at backup:staged");
    let mut server = server;
    assert!(server.0.wait().unwrap().code() != Some(0));

    let data = home.join("data");
    let stages: Vec<_> = std::fs::read_dir(&data)
        .unwrap()
        .flatten()
        .filter(|e| e.file_name().to_string_lossy().starts_with(".backup-stage-"))
        .map(|e| e.path())
        .collect();
    assert_eq!(stages.len(), 1, "the crash left its stage");
    assert!(stages[0].join("keyring.bin").exists(), "the stage holds segment keys");
    assert!(!stages[0].join("root.key").exists(), "but no root key");
    assert_absent_from_files(&stages[0], &["stage.person@example.org", "Stage Person"]);

    // The next start removes it; a backup then is whole.
    let (server, _, admin) = bin.serve(&[]);
    assert!(!stages[0].exists(), "the stage is removed at start");
    let r = client
        .get(format!("http://{admin}/admin/backup"))
        .bearer_auth(ADMIN_TOKEN)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let file = dir.path().join("after.backup");
    std::fs::write(&file, r.bytes().await.unwrap()).unwrap();
    assert_eq!(server.terminate(), Some(0));
    let restored = Binary::new(&dir.path().join("restored"));
    std::fs::create_dir_all(&restored.dir).unwrap();
    let (code, _, err) = restored.run(&["restore", "--from", file.to_str().unwrap(), "--without-ledger"]);
    assert_eq!(code, 0, "{err}");
    let (code, out, err) = restored.run(&["--json", "events", "show", "notif_stage_1", "--raw"]);
    assert_eq!(code, 0, "{err}");
    assert!(
        out.contains("stage.person@example.org"),
        "the payload opens in the restored copy: {out}"
    );
    db.drop_now().await;
}

/// Old audit entries expire only through an entry that says so: removing
/// the oldest entries and moving the anchor forward without the key fails
/// `audit verify`, while a purge's own expiry verifies (issue #29, item 5).
async fn the_audit_log_cannot_be_shortened_without_the_key(postgres: bool) {
    let place = Place::new(postgres).await;
    let (store, db, _dir) = place.reopen().await;
    // Eight entries, as operators' actions leave them.
    tokio::task::block_in_place(|| {
        for i in 0..8 {
            intercom_webhooks::audit::append(&store, "replay", json!({"events": i})).unwrap();
        }
    });
    let verify = |store: &intercom_webhooks::store::Store| intercom_webhooks::audit::verify(store, None).unwrap();
    let (entries, ok) = tokio::task::block_in_place(|| {
        let v = verify(&store);
        (v["entries"].as_u64(), v["ok"].as_bool())
    });
    assert_eq!((entries, ok), (Some(8), Some(true)));

    // Retention removes the three oldest, through the key.
    tokio::task::block_in_place(|| {
        let now = intercom_webhooks::timefmt::now_ms() + 1_000;
        assert_eq!(intercom_webhooks::audit::expire(&store, now, 3).unwrap(), 3);
        let v = verify(&store);
        assert_eq!(v["ok"], true, "a purge's expiry verifies: {v}");
        assert_eq!(v["start_checked"], true, "{v}");
        assert_eq!(v["entries"], 6, "five left and the entry that expired three: {v}");

        // An attacker who can write the store drops the next three and
        // moves the anchor to the last of them, as an expiry would.
        assert_eq!(store.audit_remove_expired(|_| true, 3).unwrap(), 3);
        let v = verify(&store);
        assert_eq!(v["ok"], false, "a start moved without the key is caught: {v}");
        assert!(v["reason"].as_str().unwrap().contains("removed without the key"), "{v}");
        assert_eq!(v["first_bad_seq"], 4, "{v}");

        // Appending after the cut does not make it good.
        intercom_webhooks::audit::append(&store, "replay", json!({"events": 0})).unwrap();
        assert_eq!(verify(&store)["ok"], false);
        store.close().unwrap();
    });
    drop(store);
    if let Some(db) = db {
        db.drop_now().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_audit_log_cannot_be_shortened_without_the_key_embedded() {
    the_audit_log_cannot_be_shortened_without_the_key(false).await;
}

#[cfg_attr(not(has_postgres), ignore = "needs PostgreSQL on 127.0.0.1:5432 (CI starts it)")]
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_audit_log_cannot_be_shortened_without_the_key_on_postgres() {
    the_audit_log_cannot_be_shortened_without_the_key(true).await;
}

//! Erasure as a durable job, tried by racing it and by killing it:
//! - a notification about the person that arrives while the erasure runs
//!   (held at Intercom's `DELETE`) is erased too: the door closes first;
//! - the real binary SIGKILLed at each step of an operator's erasure, of a
//!   `contact.deleted`'s erasure and of a late notification's erasure is
//!   restarted, and then nothing of the person is readable, the job is
//!   done and the audit chain whole; on the embedded store and on
//!   PostgreSQL (each test in a database of its own).

mod common;

use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::extract::{Path, State};
use axum::response::{IntoResponse, Response};
use axum::routing::delete;
use axum::{Json, Router};
use common::pg::TestDb;
use common::*;
use serde_json::{json, Value};

const C: &str = "65f0c0ffee0000000000a001";
const OTHER: &str = "65f0c0ffee0000000000b002";
const EMAIL: &str = "door.person@example.org";
const OTHER_EMAIL: &str = "someone.else@example.org";

/// Intercom's `DELETE /contacts/{id}`, as its OpenAPI description answers
/// it (`contact` with `deleted: true`), held `hold_ms` first; counts calls.
#[derive(Default)]
struct Stand {
    deletes: AtomicU32,
    hold_ms: u64,
}

async fn delete_contact(State(s): State<Arc<Stand>>, Path(id): Path<String>) -> Response {
    s.deletes.fetch_add(1, Ordering::SeqCst);
    tokio::time::sleep(Duration::from_millis(s.hold_ms)).await;
    Json(json!({"type":"contact","id":id,"external_id":null,"deleted":true})).into_response()
}

async fn spawn_stand(hold_ms: u64) -> (String, Arc<Stand>) {
    let stand = Arc::new(Stand {
        hold_ms,
        ..Stand::default()
    });
    let app = Router::new()
        .route("/contacts/{id}", delete(delete_contact))
        .with_state(stand.clone());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    (format!("http://{addr}"), stand)
}

fn contact(id: &str, email: &str, name: &str, updated_at: i64) -> Value {
    json!({"type":"contact","id":id,"role":"user","email":email,"name":name,"created_at":1767225600,"updated_at":updated_at})
}

fn conversation(id: &str, contact_id: &str, updated_at: i64) -> Value {
    json!({"type":"conversation","id":id,"state":"open","open":true,"created_at":1767225600,"updated_at":updated_at,
        "source":{"type":"conversation","body":"<p>hello</p>","author":{"type":"user","id":contact_id}},
        "contacts":{"type":"contact.list","contacts":[{"type":"contact","id":contact_id}]}})
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_notification_that_arrives_while_an_erasure_runs_is_erased_too() {
    let (base, stand) = spawn_stand(1500).await;
    let dir = tempfile::tempdir().unwrap();
    let cfg = format!("[intercom]\napi_base_url = \"{base}\"\n");
    let mut env = test_env();
    env.0.insert("INTERCOM_ACCESS_TOKEN", "fake-token".into());
    let app = Arc::new(spawn_app_with(dir.path(), &cfg, env).await);
    let first = notification(
        "notif_door_1",
        "contact.user.created",
        contact(C, EMAIL, "Door Person", 1767225600),
        1767225600,
    );
    assert_eq!(app.post_signed(&first).await.status(), 200);
    app.wait_final("notif_door_1").await;

    // The erasure runs; while Intercom holds its DELETE, a notification
    // about the person arrives and is acknowledged.
    let eraser = {
        let app = app.clone();
        tokio::spawn(async move { app.admin_post("/admin/erase", json!({"contact_id": C})).await.status() })
    };
    let deadline = Instant::now() + Duration::from_secs(20);
    while stand.deletes.load(Ordering::SeqCst) == 0 {
        assert!(Instant::now() < deadline, "the erasure never called Intercom");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let late = notification(
        "notif_door_late",
        "contact.user.updated",
        contact(C, EMAIL, "Door Person", 1767229999),
        1767229999,
    );
    assert_eq!(app.post_signed(&late).await.status(), 200);
    assert_eq!(eraser.await.unwrap(), 200);

    // Both are gone, the contact is not cached, a second look finds nothing.
    app.wait_gone("notif_door_late").await;
    app.wait_gone("notif_door_1").await;
    assert_eq!(app.admin_get(&format!("/admin/contacts/{C}")).await.status(), 404);
    let again: Value = app
        .admin_post(
            "/admin/erase",
            json!({"contact_id": C, "local_only": true, "dry_run": true}),
        )
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(again["would_erase"]["local"]["events"], json!([]), "{again}");
    let jobs = app.admin_json("/admin/erasures").await;
    assert_eq!(jobs["jobs"][0]["state"], "done", "{jobs}");
    Arc::try_unwrap(app).ok().unwrap().stop().await;
    assert_absent_from_files(&dir.path().join("data"), &[EMAIL, "Door Person"]);
}

/// Posts a signed body to a server of the real binary; its status.
async fn post(public: std::net::SocketAddr, body: &[u8]) -> u16 {
    reqwest::Client::new()
        .post(format!("http://{public}/webhooks/intercom"))
        .header("x-hub-signature", intercom_webhooks::verify::sign(SECRET, body))
        .body(body.to_vec())
        .send()
        .await
        .unwrap()
        .status()
        .as_u16()
}

async fn admin(addr: std::net::SocketAddr, path: &str) -> (u16, Value) {
    let r = reqwest::Client::new()
        .get(format!("http://{addr}{path}"))
        .bearer_auth(ADMIN_TOKEN)
        .send()
        .await
        .unwrap();
    let code = r.status().as_u16();
    (code, r.json().await.unwrap_or(Value::Null))
}

/// Polls an admin GET until `ok` holds, for at most 30 s.
async fn until(addr: std::net::SocketAddr, path: &str, ok: impl Fn(u16, &Value) -> bool) -> Value {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let (code, v) = admin(addr, path).await;
        if ok(code, &v) {
            return v;
        }
        assert!(
            Instant::now() < deadline,
            "{path} never satisfied the condition: {code} {v}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Stores what we hold of the person and of somebody else, processed.
async fn seed(public: std::net::SocketAddr, admin_addr: std::net::SocketAddr) {
    let bodies = [
        (
            "notif_k_c1",
            "contact.user.created",
            contact(C, EMAIL, "Killed Person", 1767225600),
        ),
        (
            "notif_k_c2",
            "conversation.user.created",
            conversation("8001", C, 1767225601),
        ),
        (
            "notif_k_o1",
            "contact.user.created",
            contact(OTHER, OTHER_EMAIL, "Other Person", 1767225600),
        ),
    ];
    for (id, topic, item) in bodies {
        assert_eq!(post(public, &notification(id, topic, item, 1767225600)).await, 200);
    }
    for id in ["notif_k_c1", "notif_k_c2", "notif_k_o1"] {
        until(admin_addr, &format!("/admin/events/{id}"), |c, v| {
            c == 200 && v["status"] == "processed"
        })
        .await;
    }
}

/// After the restart: nothing of the person is served (of their events,
/// only the erased records), the other person
/// is, and the audit chain verifies.
async fn check_erased(admin_addr: std::net::SocketAddr, gone: &[&str]) {
    for id in gone {
        until(admin_addr, &format!("/admin/events/{id}"), is_erased_record).await;
    }
    until(admin_addr, &format!("/admin/contacts/{C}"), |c, _| c == 404).await;
    until(admin_addr, "/admin/conversations/8001", |c, _| c == 404).await;
    let (code, _) = admin(admin_addr, &format!("/admin/contacts/{OTHER}")).await;
    assert_eq!(code, 200, "somebody else's contact stays");
    let (_, v) = admin(admin_addr, "/admin/audit/verify").await;
    assert_eq!(v["ok"], true, "{v}");
}

fn crash_env(point: &str) -> [(&'static str, String); 1] {
    [("INTERCOM_WEBHOOKS_TEST_CRASH_AT", point.to_string())]
}

fn wait_exit(child: &mut Server) {
    let deadline = Instant::now() + Duration::from_secs(30);
    while child.0.try_wait().unwrap().is_none() {
        assert!(Instant::now() < deadline, "the server did not reach its crash point");
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Where a test's store lives: the embedded store in the test's data dir,
/// or a PostgreSQL database of its own.
enum Backend {
    Embedded,
    Postgres,
}

/// One run of the real binary on `backend`: its binary, its temp dir, its
/// database (PostgreSQL).
struct Place {
    bin: Binary,
    dir: tempfile::TempDir,
    db: Option<TestDb>,
}

impl Place {
    async fn new(backend: &Backend) -> Place {
        let dir = tempfile::tempdir().unwrap();
        let mut bin = Binary::new(dir.path());
        let db = match backend {
            Backend::Embedded => None,
            Backend::Postgres => {
                let db = TestDb::new().await;
                let config = dir.path().join("pg.toml");
                std::fs::write(&config, "[store]\nbackend = \"postgres\"\n").unwrap();
                bin.env.push(("INTERCOM_WEBHOOKS_DATABASE_URL".into(), db.url()));
                bin.env
                    .push(("INTERCOM_WEBHOOKS_CONFIG".into(), config.display().to_string()));
                Some(db)
            }
        };
        Place { bin, dir, db }
    }

    /// No plaintext of the person in the data dir, nor in a dump of the
    /// database; then the database goes.
    async fn assert_absent(self, needles: &[&str]) {
        if let Some(db) = self.db {
            let dump = self.dir.path().join("dump.sql");
            db.dump_to(&dump);
            assert_absent_from_files(&dump, needles);
            std::fs::remove_file(&dump).unwrap();
            db.drop_now().await;
        }
        let data = self.dir.path().join("data");
        if data.exists() {
            assert_absent_from_files(&data, needles);
        }
    }
}

/// An operator's erasure killed after each of its steps is finished by the
/// restarted server, whole: both audit entries, Intercom called, nothing
/// of the person left, in the data dir (or the database) either.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_erasure_killed_at_any_step_is_finished_after_a_restart() {
    operator_erasure_killed_at_each_step(Backend::Embedded).await;
}

#[cfg_attr(not(has_postgres), ignore = "needs PostgreSQL on 127.0.0.1:5432 (CI starts it)")]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_erasure_killed_at_any_step_is_finished_after_a_restart_on_postgres() {
    operator_erasure_killed_at_each_step(Backend::Postgres).await;
}

async fn operator_erasure_killed_at_each_step(backend: Backend) {
    let (base, stand) = spawn_stand(0).await;
    for point in [
        "erase:after-door",
        "erase:after-events",
        "erase:after-sweep",
        "erase:after-intercom",
    ] {
        let place = Place::new(&backend).await;
        let mut bin = Binary {
            dir: place.bin.dir.clone(),
            env: place.bin.env.clone(),
        };
        bin.env.push(("INTERCOM_ACCESS_TOKEN".into(), "fake-token".into()));
        bin.env.push(("INTERCOM_API_BASE_URL".into(), base.clone()));
        let env = crash_env(point);
        let (mut child, public, admin_addr) = bin.serve(&[(env[0].0, env[0].1.as_str())]);
        seed(public, admin_addr).await;
        let deletes_before = stand.deletes.load(Ordering::SeqCst);
        let answer = reqwest::Client::new()
            .post(format!("http://{admin_addr}/admin/erase"))
            .bearer_auth(ADMIN_TOKEN)
            .json(&json!({"contact_id": C}))
            .send()
            .await;
        assert!(answer.is_err(), "{point}: the server died mid-erasure, so no answer");
        wait_exit(&mut child);

        let (child, _public, admin_addr) = bin.serve(&[]);
        let jobs = until(admin_addr, "/admin/erasures", |_, v| v["jobs"][0]["state"] == "done").await;
        assert_eq!(jobs["jobs"].as_array().unwrap().len(), 1, "{point}: {jobs}");
        check_erased(admin_addr, &["notif_k_c1", "notif_k_c2"]).await;
        assert!(
            stand.deletes.load(Ordering::SeqCst) > deletes_before,
            "{point}: Intercom was asked to delete the contact"
        );
        let (_, audit) = admin(admin_addr, "/admin/audit").await;
        let actions: Vec<&str> = audit["entries"]
            .as_array()
            .unwrap()
            .iter()
            .map(|e| e["action"].as_str().unwrap())
            .collect();
        assert_eq!(actions.first(), Some(&"erase.start"), "{point}: {audit}");
        assert!(actions.contains(&"erase"), "{point}: the end is audited: {audit}");
        let cli = Binary {
            dir: bin.dir.clone(),
            env: bin.env.clone(),
        }
        .with_admin(admin_addr);
        let (code, out, _) = cli.run(&["erase", "--status", "--json"]);
        assert_eq!(code, 0);
        assert!(out.contains("\"done\""), "{out}");
        child.terminate();
        place.assert_absent(&[EMAIL, "Killed Person"]).await;
    }
}

/// A `contact.deleted` notification, and a notification about somebody
/// already erased, each killed between the steps of their erasure: after
/// the restart nothing of the person is served.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_webhook_erasure_killed_mid_way_is_finished_after_a_restart() {
    webhook_erasure_killed_at_each_step(Backend::Embedded).await;
}

#[cfg_attr(not(has_postgres), ignore = "needs PostgreSQL on 127.0.0.1:5432 (CI starts it)")]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_webhook_erasure_killed_mid_way_is_finished_after_a_restart_on_postgres() {
    webhook_erasure_killed_at_each_step(Backend::Postgres).await;
}

async fn webhook_erasure_killed_at_each_step(backend: Backend) {
    for point in ["erase:after-door", "erase:after-events", "worker:deletion-before-erase"] {
        eprintln!("crash point {point}");
        let place = Place::new(&backend).await;
        let bin = &place.bin;
        let env = crash_env(point);
        let (mut child, public, admin_addr) = bin.serve(&[(env[0].0, env[0].1.as_str())]);
        seed(public, admin_addr).await;
        let deletion = notification(
            "notif_k_del",
            "contact.deleted",
            json!({"type":"contact","id":C,"deleted":true}),
            1767229000,
        );
        // The worker may reach the crash point before the answer is sent
        // (it runs only what is stored): a 200 or a dropped connection.
        let answer = reqwest::Client::new()
            .post(format!("http://{public}/webhooks/intercom"))
            .header("x-hub-signature", intercom_webhooks::verify::sign(SECRET, &deletion))
            .body(deletion.clone())
            .send()
            .await;
        if let Ok(r) = answer {
            assert_eq!(r.status(), 200, "{point}");
        }
        wait_exit(&mut child);
        let (child, _public, admin_addr) = bin.serve(&[]);
        check_erased(admin_addr, &["notif_k_c1", "notif_k_c2", "notif_k_del"]).await;
        child.terminate();
        place.assert_absent(&[EMAIL, "Killed Person"]).await;
    }

    // A late notification about someone erased, killed before it is erased.
    let place = Place::new(&backend).await;
    let bin = &place.bin;
    let (child, public, admin_addr) = bin.serve(&[]);
    seed(public, admin_addr).await;
    let r = reqwest::Client::new()
        .post(format!("http://{admin_addr}/admin/erase"))
        .bearer_auth(ADMIN_TOKEN)
        .json(&json!({"contact_id": C, "local_only": true}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    child.terminate();
    let env = crash_env("worker:before-erasing-erased");
    let (mut child, public, _) = bin.serve(&[(env[0].0, env[0].1.as_str())]);
    let late = notification(
        "notif_k_late",
        "contact.user.updated",
        contact(C, EMAIL, "Killed Person", 1767239999),
        1767239999,
    );
    // As above: a 200, or the crash point reached before the answer.
    if let Ok(r) = reqwest::Client::new()
        .post(format!("http://{public}/webhooks/intercom"))
        .header("x-hub-signature", intercom_webhooks::verify::sign(SECRET, &late))
        .body(late.clone())
        .send()
        .await
    {
        assert_eq!(r.status(), 200);
    }
    wait_exit(&mut child);
    let (child, _public, admin_addr) = bin.serve(&[]);
    check_erased(admin_addr, &["notif_k_late"]).await;
    child.terminate();
    place.assert_absent(&[EMAIL, "Killed Person"]).await;
}

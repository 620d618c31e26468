//! The PostgreSQL backend against a real PostgreSQL: the local server on
//! 127.0.0.1:5432 (each test in a database of its own), and clusters of
//! the tests' own (`initdb` as user `postgres`, on free ports) where one
//! is stopped and started. Without a server the tests are reported as
//! ignored (see `build.rs`); under `CI=true` they run (`.ci/run` starts
//! the local server if it is stopped).

mod common;

use std::collections::{BTreeSet, HashSet};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::pg::{connect, TestDb};
use common::*;
use serde_json::{json, Value};

/// A short claim lease, so the tests see lapsed claims taken over.
const PG_CONFIG: &str = "[store]\nbackend = \"postgres\"\nclaim_lease = \"3s\"\ncommit_timeout = \"2s\"\n";

fn pg_env(url: &str) -> MapEnv {
    let mut env = test_env();
    env.0.insert("INTERCOM_WEBHOOKS_DATABASE_URL", url.to_string());
    env
}

fn contact_note(id: &str, contact: &str) -> Vec<u8> {
    notification(
        id,
        "contact.user.created",
        json!({"type": "contact", "id": contact, "role": "user", "email": format!("{contact}@example.org"),
               "updated_at": "2026-01-01T00:00:00.000Z"}),
        1767225600,
    )
}

fn outcomes(ev: &Value) -> Vec<String> {
    ev["history"]
        .as_array()
        .map(|h| {
            h.iter()
                .map(|a| a["outcome"].as_str().unwrap_or("").to_string())
                .collect()
        })
        .unwrap_or_default()
}

/// Waits until the replicas' shared queue is empty (every stored event has
/// an outcome).
async fn wait_drained(db: &TestDb, within: Duration) {
    let client = db.client().await;
    let deadline = Instant::now() + within;
    loop {
        let n: i64 = client
            .query_one("SELECT count(*) FROM iw_events WHERE status IN (0, 3)", &[])
            .await
            .unwrap()
            .get(0);
        if n == 0 {
            return;
        }
        assert!(Instant::now() < deadline, "{n} events still queued");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[cfg_attr(not(has_postgres), ignore = "needs PostgreSQL on 127.0.0.1:5432 (CI starts it)")]
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn two_replicas_store_once_process_once_and_see_an_erasure_at_once() {
    let db = TestDb::new().await;
    let (da, dbb) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let a = spawn_app_with(da.path(), PG_CONFIG, pg_env(&db.url())).await;
    let b = spawn_app_with(dbb.path(), PG_CONFIG, pg_env(&db.url())).await;

    // The same id to both replicas at the same moment: stored once.
    for i in 0..20 {
        let body = contact_note(&format!("notif_twin_{i}"), &format!("c_twin_{i}"));
        let (ra, rb) = tokio::join!(a.post_signed(&body), b.post_signed(&body));
        assert_eq!((ra.status().as_u16(), rb.status().as_u16()), (200, 200));
    }
    // Many ids, spread over both.
    for i in 0..100 {
        let body = contact_note(&format!("notif_spread_{i}"), &format!("c_spread_{i}"));
        let app = if i % 2 == 0 { &a } else { &b };
        assert_eq!(app.post_signed(&body).await.status(), 200);
    }
    wait_drained(&db, Duration::from_secs(30)).await;
    for i in 0..20 {
        let ev = a.wait_final(&format!("notif_twin_{i}")).await;
        assert_eq!(ev["deliveries"], 2, "{ev}");
        assert_eq!(outcomes(&ev), ["processed"], "processed once: {ev}");
    }
    for i in 0..100 {
        let ev = b.wait_final(&format!("notif_spread_{i}")).await;
        assert_eq!(outcomes(&ev), ["processed"], "processed once: {ev}");
    }
    let client = db.client().await;
    let stored: i64 = client
        .query_one("SELECT count(*) FROM iw_events", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(stored, 120);

    // Erased through B: gone for A at once, the marker stays, the payload
    // re-encrypted away.
    let r = b
        .admin_post(
            "/admin/erase",
            json!({"contact_id": "c_spread_3", "local_only": true, "yes": true}),
        )
        .await;
    assert!(r.status().is_success(), "{}", r.text().await.unwrap());
    assert!(a.erased("notif_spread_3").await);
    assert_eq!(a.admin_get("/admin/contacts/c_spread_3").await.status(), 404);
    let body = contact_note("notif_spread_3", "c_spread_3");
    assert_eq!(a.post_signed(&body).await.status(), 200, "a redelivery is acknowledged");
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(a.erased("notif_spread_3").await, "and not stored again");
    let row = client
        .query_one(
            "SELECT status, body IS NULL, (SELECT count(*) FROM iw_subjects WHERE key = 'notif_spread_3') \
             FROM iw_events WHERE key = 'notif_spread_3'",
            &[],
        )
        .await
        .unwrap();
    assert_eq!(
        (row.get::<_, i16>(0), row.get::<_, bool>(1), row.get::<_, i64>(2)),
        (6, true, 0),
        "its row is the erased record: no payload, under no subject"
    );
    let versions: i64 = client
        .query_one("SELECT max(version) FROM iw_part_keys", &[])
        .await
        .unwrap()
        .get(0);
    assert!(versions >= 2, "the partition was re-encrypted under a new key");
    let shred: i64 = client
        .query_one("SELECT count(*) FROM iw_shred", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(shred, 0);
    // Nothing of the person in the database in clear.
    let dump = std::process::Command::new("pg_dump")
        .args(["-h", "127.0.0.1", "-U", "postgres", "--data-only", &db.name])
        .output()
        .unwrap();
    assert!(dump.status.success());
    let dump = String::from_utf8_lossy(&dump.stdout);
    assert!(dump.contains("notif_spread_4"), "the dump holds the ids");
    for needle in ["c_spread_3@example.org", "c_spread_4@example.org", "example.org"] {
        assert!(!dump.contains(needle), "{needle} in clear in the database");
    }
    a.stop().await;
    b.stop().await;
    db.drop_now().await;
}

#[cfg_attr(not(has_postgres), ignore = "needs PostgreSQL on 127.0.0.1:5432 (CI starts it)")]
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn deliveries_of_one_id_at_once_and_after_are_each_counted_on_the_one_stored_event() {
    let db = TestDb::new().await;
    let dir = tempfile::tempdir().unwrap();
    let app = spawn_app_with(dir.path(), PG_CONFIG, pg_env(&db.url())).await;
    let body = contact_note("notif_burst", "c_burst");
    // Eight at once: those that share the first one's batch are its
    // duplicates within one transaction, the rest find it stored.
    let answers = futures_util::future::join_all((0..8).map(|_| app.post_signed(&body))).await;
    assert!(answers.iter().all(|r| r.status() == 200));
    for _ in 0..2 {
        assert_eq!(app.post_signed(&body).await.status(), 200);
    }
    wait_drained(&db, Duration::from_secs(30)).await;
    let ev = app.wait_final("notif_burst").await;
    assert_eq!(ev["deliveries"], 10, "{ev}");
    assert_eq!(outcomes(&ev), ["processed"], "processed once: {ev}");
    let row = db
        .client()
        .await
        .query_one(
            "SELECT count(*), sum(deliveries)::int8 FROM iw_events WHERE key = 'notif_burst'",
            &[],
        )
        .await
        .unwrap();
    assert_eq!((row.get::<_, i64>(0), row.get::<_, i64>(1)), (1, 10));
    app.stop().await;
    db.drop_now().await;
}

#[cfg_attr(not(has_postgres), ignore = "needs PostgreSQL on 127.0.0.1:5432 (CI starts it)")]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn work_queued_again_when_its_claim_lapsed_runs_once() {
    let db = TestDb::new().await;
    let dir = tempfile::tempdir().unwrap();
    let config = "[store]\nbackend = \"postgres\"\nclaim_lease = \"1s\"\n[worker]\nconcurrency = 1\n";
    let app = spawn_app_with(dir.path(), config, pg_env(&db.url())).await;
    // The cache locked: the one handler thread waits on its first event,
    // while the others' claims lapse and the replica claims and queues
    // them again, behind the copies it queued from intake.
    let mut locker = db.client().await;
    let lock = locker.transaction().await.unwrap();
    lock.batch_execute("LOCK TABLE iw_cache IN EXCLUSIVE MODE")
        .await
        .unwrap();
    for i in 0..6 {
        let body = contact_note(&format!("notif_twice_{i}"), &format!("c_twice_{i}"));
        assert_eq!(app.post_signed(&body).await.status(), 200);
    }
    tokio::time::sleep(Duration::from_secs(4)).await;
    lock.commit().await.unwrap();
    wait_drained(&db, Duration::from_secs(30)).await;
    for i in 0..6 {
        let ev = app.wait_final(&format!("notif_twice_{i}")).await;
        assert_eq!(outcomes(&ev), ["processed"], "run once: {ev}");
    }
    app.stop().await;
    db.drop_now().await;
}

#[cfg_attr(not(has_postgres), ignore = "needs PostgreSQL on 127.0.0.1:5432 (CI starts it)")]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_redelivery_after_its_partition_was_purged_is_a_duplicate() {
    let db = TestDb::new().await;
    let dir = tempfile::tempdir().unwrap();
    let config = format!(
        "{PG_CONFIG}partition = \"1s\"\n[retention]\nevents = \"1s\"\nmarkers = \"1h\"\n[purge]\ninterval = \"1h\"\n"
    );
    let app = spawn_app_with(dir.path(), &config, pg_env(&db.url())).await;
    let body = contact_note("notif_purged_once", "c_purged");
    assert_eq!(app.post_signed(&body).await.status(), 200);
    assert_eq!(app.wait_final("notif_purged_once").await["status"], "processed");
    tokio::time::sleep(Duration::from_millis(2500)).await;
    let r: Value = app.admin_post("/admin/purge", json!({})).await.json().await.unwrap();
    assert!(r["removed"]["events"].as_u64().unwrap_or(0) >= 1, "{r}");
    assert_eq!(app.admin_get("/admin/events/notif_purged_once").await.status(), 404);
    let client = db.client().await;
    let tables: i64 = client
        .query_one(
            "SELECT count(*) FROM pg_inherits WHERE inhparent = 'iw_events'::regclass",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(tables, 0, "the partition was dropped");
    let keys: i64 = client
        .query_one("SELECT count(*) FROM iw_part_keys", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(keys, 0, "with its key");
    // Redelivered: acknowledged as a duplicate, not stored or processed.
    assert_eq!(app.post_signed(&body).await.status(), 200);
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(app.admin_get("/admin/events/notif_purged_once").await.status(), 404);
    let events: i64 = client
        .query_one("SELECT count(*) FROM iw_events", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(events, 0);
    app.stop().await;
    db.drop_now().await;
}

#[cfg_attr(not(has_postgres), ignore = "needs PostgreSQL on 127.0.0.1:5432 (CI starts it)")]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn migrations_are_versioned_and_a_newer_database_is_refused() {
    let db = TestDb::new().await;
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("pg.toml"), PG_CONFIG).unwrap();
    let mut bin = Binary::new(dir.path());
    bin.env.push(("INTERCOM_WEBHOOKS_DATABASE_URL".into(), db.url()));
    let config = dir.path().join("pg.toml");
    let config = config.to_str().unwrap();
    // A database at version 1, with a row, as an older binary left it.
    let client = db.client().await;
    client
        .batch_execute(intercom_webhooks::store::postgres::schema::MIGRATIONS[0])
        .await
        .unwrap();
    client
        .batch_execute(
            "CREATE TABLE iw_schema (version int NOT NULL); INSERT INTO iw_schema VALUES (1); \
             INSERT INTO iw_dedup (key, part, received_ms, last_seen_ms) VALUES ('notif_old', 1, 2, 2)",
        )
        .await
        .unwrap();
    let latest = intercom_webhooks::store::postgres::schema::latest() as i64;
    assert!(latest >= 2);
    let (code, out, err) = bin.run(&["--config", config, "--json", "migrate"]);
    assert_eq!(code, 0, "{err}");
    let done: Value = serde_json::from_str(&out).unwrap();
    assert_eq!(
        (done["from_version"].as_i64(), done["to_version"].as_i64()),
        (Some(1), Some(latest))
    );
    // Version 2: keys compared byte by byte; the row kept.
    let collation: Option<String> = client
        .query_one(
            "SELECT collation_name::text FROM information_schema.columns \
             WHERE table_name = 'iw_dedup' AND column_name = 'key'",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(collation.as_deref(), Some("C"));
    let kept: i64 = client
        .query_one("SELECT count(*) FROM iw_dedup WHERE key = 'notif_old'", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(kept, 1);
    let (code, out, _) = bin.run(&["--config", config, "--json", "migrate"]);
    assert_eq!(code, 0);
    assert_eq!(
        serde_json::from_str::<Value>(&out).unwrap()["from_version"],
        latest,
        "applied once"
    );
    db.client()
        .await
        .batch_execute("UPDATE iw_schema SET version = 99")
        .await
        .unwrap();
    let (code, _, err) = bin.run(&["--config", config, "migrate"]);
    assert_ne!(code, 0);
    assert!(err.contains("newer than this binary"), "{err}");
    let (code, _, err) = bin.run(&["--config", config, "stats"]);
    assert_ne!(code, 0);
    assert!(err.contains("newer than this binary"), "{err}");
    // Without the URL, a clear error naming the variable.
    let bare = Binary::new(dir.path());
    let (code, _, err) = bare.run(&["--config", config, "stats"]);
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("INTERCOM_WEBHOOKS_DATABASE_URL"), "{err}");
    db.drop_now().await;
}

/// Posts notifications round-robin to `targets` until told to stop;
/// returns every (id, code, sent at, answered at).
type Sent = (String, u16, Instant, Instant);

fn send_until(
    stop: Arc<std::sync::atomic::AtomicBool>,
    targets: Arc<Mutex<Vec<std::net::SocketAddr>>>,
    prefix: String,
) -> std::thread::JoinHandle<Vec<Sent>> {
    std::thread::spawn(move || {
        let client = reqwest::blocking::Client::builder()
            .timeout(Duration::from_secs(5))
            .build()
            .unwrap();
        let mut sent = Vec::new();
        let mut i = 0usize;
        while !stop.load(std::sync::atomic::Ordering::SeqCst) {
            let addrs = targets.lock().unwrap().clone();
            let addr = addrs[i % addrs.len()];
            let id = format!("{prefix}_{i}");
            let body = contact_note(&id, &format!("c_{prefix}_{}", i % 50));
            let at = Instant::now();
            let code = client
                .post(format!("http://{addr}/webhooks/intercom"))
                .header("content-type", "application/json")
                .header("x-hub-signature", intercom_webhooks::verify::sign(SECRET, &body))
                .body(body)
                .send()
                .map(|r| r.status().as_u16())
                .unwrap_or(0);
            sent.push((id, code, at, Instant::now()));
            i += 1;
            std::thread::sleep(Duration::from_millis(5));
        }
        sent
    })
}

/// Every id answered `200` is stored, and has exactly one `processed`.
async fn assert_each_acknowledged_once(db: &TestDb, acked: &[String]) {
    let client = db.client().await;
    let rows = client
        .query("SELECT key, status FROM iw_events WHERE key = ANY($1)", &[&acked])
        .await
        .unwrap();
    let found: HashSet<String> = rows.iter().map(|r| r.get::<_, String>(0)).collect();
    let lost: Vec<&String> = acked.iter().filter(|k| !found.contains(*k)).collect();
    assert!(lost.is_empty(), "acknowledged but not stored: {lost:?}");
    assert!(rows.iter().all(|r| r.get::<_, i16>(1) == 1), "every one processed");
}

#[cfg_attr(not(has_postgres), ignore = "needs PostgreSQL on 127.0.0.1:5432 (CI starts it)")]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replica_killed_under_load_loses_nothing_acknowledged_and_processes_nothing_twice() {
    let db = TestDb::new().await;
    let (da, dbb) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let config_of = |dir: &Path| {
        let p = dir.join("pg.toml");
        std::fs::write(&p, PG_CONFIG).unwrap();
        p
    };
    let (ca, cb) = (config_of(da.path()), config_of(dbb.path()));
    let replica = |dir: &Path, config: &PathBuf| {
        let mut bin = Binary::new(dir);
        bin.env.push(("INTERCOM_WEBHOOKS_DATABASE_URL".into(), db.url()));
        bin.env
            .push(("INTERCOM_WEBHOOKS_CONFIG".into(), config.to_str().unwrap().to_string()));
        bin
    };
    let (bin_a, bin_b) = (replica(da.path(), &ca), replica(dbb.path(), &cb));
    let mut all_acked = Vec::new();
    for round in 0..3 {
        let (mut sa, pa, _) = bin_a.serve(&[]);
        let (mut sb, pb, _) = bin_b.serve(&[]);
        let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let targets = Arc::new(Mutex::new(vec![pa, pb]));
        let sender = send_until(stop.clone(), targets.clone(), format!("notif_kill{round}"));
        tokio::time::sleep(Duration::from_millis(400 + rand::random::<u64>() % 1200)).await;
        // SIGKILL one of them mid-load; the other takes everything after.
        let (victim, survivor) = if round % 2 == 0 { (&mut sa, pb) } else { (&mut sb, pa) };
        victim.kill().unwrap();
        victim.wait().unwrap();
        *targets.lock().unwrap() = vec![survivor];
        tokio::time::sleep(Duration::from_millis(800)).await;
        stop.store(true, std::sync::atomic::Ordering::SeqCst);
        let sent = sender.join().unwrap();
        let acked: Vec<String> = sent.iter().filter(|s| s.1 == 200).map(|s| s.0.clone()).collect();
        assert!(acked.len() > 50, "round {round}: only {} acknowledged", acked.len());
        // The killed replica's claims lapse; the survivor takes them.
        wait_drained(&db, Duration::from_secs(30)).await;
        assert_each_acknowledged_once(&db, &acked).await;
        all_acked.extend(acked);
        drop(sa);
        drop(sb);
    }
    // Processed exactly once: one `processed` in each event's history.
    let (mut s, p, admin) = bin_a.serve(&[]);
    let _ = p;
    let client = reqwest::Client::new();
    for id in all_acked.iter().step_by(7) {
        let ev: Value = client
            .get(format!("http://{admin}/admin/events/{id}"))
            .bearer_auth(ADMIN_TOKEN)
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        let processed = outcomes(&ev).iter().filter(|o| o.starts_with("processed")).count();
        assert_eq!(processed, 1, "{ev}");
    }
    s.kill().unwrap();
    let _ = s.wait();
    db.drop_now().await;
}

/// A PostgreSQL cluster of the test's own, run as user `postgres` on a
/// free port, its socket in its own directory.
struct Cluster {
    dir: tempfile::TempDir,
    port: u16,
}

fn pg_bin(name: &str) -> PathBuf {
    let base = std::fs::read_dir("/usr/lib/postgresql")
        .expect("PostgreSQL's binaries in /usr/lib/postgresql")
        .filter_map(|e| e.ok())
        .map(|e| e.path())
        .max()
        .unwrap();
    base.join("bin").join(name)
}

fn as_postgres(args: &[&str]) -> std::process::Output {
    let out = std::process::Command::new("runuser")
        .args(["-u", "postgres", "--"])
        .args(args)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{args:?}: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

impl Cluster {
    fn new() -> Cluster {
        Self::primary("")
    }

    fn empty_dir() -> (tempfile::TempDir, u16) {
        let dir = tempfile::Builder::new().prefix("iw-pg-").tempdir().unwrap();
        std::process::Command::new("chown")
            .args(["postgres:postgres", dir.path().to_str().unwrap()])
            .status()
            .unwrap();
        (dir, free_port().port())
    }

    fn configure(dir: &Path, port: u16, extra: &str) {
        let conf = format!(
            "port = {port}\nlisten_addresses = '127.0.0.1'\nunix_socket_directories = '{}'\nfsync = on\n{extra}\n",
            dir.display()
        );
        let mut f = std::fs::OpenOptions::new()
            .append(true)
            .open(dir.join("data").join("postgresql.conf"))
            .unwrap();
        std::io::Write::write_all(&mut f, conf.as_bytes()).unwrap();
    }

    /// A new cluster with `extra` lines of configuration, started.
    fn primary(extra: &str) -> Cluster {
        let (dir, port) = Self::empty_dir();
        let data = dir.path().join("data");
        as_postgres(&[
            pg_bin("initdb").to_str().unwrap(),
            "-D",
            data.to_str().unwrap(),
            "-A",
            "trust",
            "-U",
            "postgres",
        ]);
        Self::configure(dir.path(), port, extra);
        let c = Cluster { dir, port };
        c.start();
        c
    }

    /// A streaming standby of `primary` (a base backup), started.
    fn standby_of(primary: &Cluster) -> Cluster {
        let (dir, port) = Self::empty_dir();
        let data = dir.path().join("data");
        as_postgres(&[
            pg_bin("pg_basebackup").to_str().unwrap(),
            "-h",
            "127.0.0.1",
            "-p",
            &primary.port.to_string(),
            "-U",
            "postgres",
            "-D",
            data.to_str().unwrap(),
            "-R",
            "-X",
            "stream",
        ]);
        // The primary's settings came with the backup; this one's port and
        // socket go after them.
        Self::configure(dir.path(), port, "");
        let c = Cluster { dir, port };
        c.start();
        c
    }

    fn promote(&self) {
        self.pg_ctl(&["promote", "-w"]);
    }

    fn pg_ctl(&self, args: &[&str]) {
        let data = self.dir.path().join("data");
        let log = self.dir.path().join("log");
        let mut all = vec![
            pg_bin("pg_ctl").to_str().unwrap().to_string(),
            "-D".into(),
            data.to_str().unwrap().into(),
        ];
        all.extend(args.iter().map(|s| s.to_string()));
        all.extend(["-l".to_string(), log.to_str().unwrap().to_string()]);
        let refs: Vec<&str> = all.iter().map(String::as_str).collect();
        as_postgres(&refs);
    }

    fn start(&self) {
        self.pg_ctl(&["start", "-w"]);
    }

    /// `-m immediate`: as a crash would.
    fn stop(&self) {
        self.pg_ctl(&["stop", "-w", "-m", "immediate"]);
    }

    fn url(&self) -> String {
        format!("postgres://postgres@127.0.0.1:{}/postgres", self.port)
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        let data = self.dir.path().join("data");
        let _ = std::process::Command::new("runuser")
            .args([
                "-u",
                "postgres",
                "--",
                pg_bin("pg_ctl").to_str().unwrap(),
                "-D",
                data.to_str().unwrap(),
                "stop",
                "-m",
                "immediate",
            ])
            .output();
    }
}

#[cfg_attr(
    not(has_postgres),
    ignore = "needs PostgreSQL's initdb and pg_ctl, run as user postgres (CI has them)"
)]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_database_stopped_under_load_gets_503_never_200_and_intake_resumes_by_itself() {
    let cluster = Cluster::new();
    let dir = tempfile::tempdir().unwrap();
    let app = spawn_app_with(dir.path(), PG_CONFIG, pg_env(&cluster.url())).await;
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let targets = Arc::new(Mutex::new(vec![app.addr]));
    let sender = send_until(stop.clone(), targets, "notif_down".into());
    tokio::time::sleep(Duration::from_millis(700)).await;
    cluster.stop();
    let down_at = Instant::now();
    tokio::time::sleep(Duration::from_millis(2500)).await;
    assert_eq!(app.readyz().await, 503, "/readyz tells while the database is down");
    let starting_at = Instant::now();
    cluster.start();
    // Resumes by itself.
    let deadline = Instant::now() + Duration::from_secs(20);
    while app.readyz().await != 200 {
        assert!(Instant::now() < deadline, "never ready again");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let ready_at = Instant::now();
    tokio::time::sleep(Duration::from_millis(1500)).await;
    stop.store(true, std::sync::atomic::Ordering::SeqCst);
    let sent = sender.join().unwrap();
    let while_down: Vec<_> = sent
        .iter()
        .filter(|s| s.2 > down_at + Duration::from_millis(100) && s.2 < starting_at)
        .collect();
    assert!(!while_down.is_empty());
    assert!(
        while_down.iter().all(|s| s.1 == 503),
        "while down: {:?}",
        while_down
            .iter()
            .map(|s| (s.0.clone(), s.1, s.2.duration_since(down_at).as_millis()))
            .collect::<Vec<_>>()
    );
    let after: Vec<_> = sent.iter().filter(|s| s.2 > ready_at).collect();
    assert!(!after.is_empty() && after.iter().all(|s| s.1 == 200), "intake resumed");
    let acked: Vec<String> = sent.iter().filter(|s| s.1 == 200).map(|s| s.0.clone()).collect();
    let client = connect(&format!(
        "host=127.0.0.1 port={} user=postgres dbname=postgres",
        cluster.port
    ))
    .await;
    let rows = client
        .query("SELECT key FROM iw_dedup WHERE key = ANY($1)", &[&acked])
        .await
        .unwrap();
    assert_eq!(rows.len(), acked.len(), "every acknowledged notification is stored");
    app.stop().await;
}

/// A primary that commits only once its synchronous standby has the WAL.
fn primary_with_sync_standby() -> (Cluster, Cluster) {
    let primary = Cluster::primary("synchronous_standby_names = '*'\nsynchronous_commit = on\n");
    let standby = Cluster::standby_of(&primary);
    (primary, standby)
}

#[cfg_attr(
    not(has_postgres),
    ignore = "needs PostgreSQL's initdb, pg_ctl and pg_basebackup, run as user postgres (CI has them)"
)]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failover_to_the_synchronous_standby_keeps_every_acknowledged_notification() {
    let (primary, standby) = primary_with_sync_standby();
    // Both hosts in the URL; only a read-write one is used.
    let url = format!(
        "postgres://postgres@127.0.0.1:{},127.0.0.1:{}/postgres?target_session_attrs=read-write&connect_timeout=2",
        primary.port, standby.port
    );
    let dir = tempfile::tempdir().unwrap();
    let app = spawn_app_with(dir.path(), PG_CONFIG, pg_env(&url)).await;
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let sender = send_until(
        stop.clone(),
        Arc::new(Mutex::new(vec![app.addr])),
        "notif_failover".into(),
    );
    tokio::time::sleep(Duration::from_millis(1500)).await;
    primary.stop();
    let failed_at = Instant::now();
    standby.promote();
    // The promoted node inherited `synchronous_standby_names` and has no
    // standby of its own: as an HA manager (Patroni, say) does, it stops
    // waiting for one.
    let promoted = connect(&format!(
        "host=127.0.0.1 port={} user=postgres dbname=postgres",
        standby.port
    ))
    .await;
    promoted
        .batch_execute("ALTER SYSTEM SET synchronous_standby_names = ''")
        .await
        .unwrap();
    promoted.batch_execute("SELECT pg_reload_conf()").await.unwrap();
    let deadline = Instant::now() + Duration::from_secs(30);
    while app.readyz().await != 200 {
        assert!(Instant::now() < deadline, "never ready on the promoted standby");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    tokio::time::sleep(Duration::from_millis(1500)).await;
    stop.store(true, std::sync::atomic::Ordering::SeqCst);
    let sent = sender.join().unwrap();
    let acked: Vec<String> = sent.iter().filter(|s| s.1 == 200).map(|s| s.0.clone()).collect();
    let last_before = sent
        .iter()
        .filter(|s| s.1 == 200 && s.3 < failed_at)
        .map(|s| s.3)
        .max()
        .unwrap();
    let first_after = sent
        .iter()
        .filter(|s| s.1 == 200 && s.2 > failed_at)
        .map(|s| s.3)
        .min()
        .expect("intake resumed");
    println!(
        "failover: no 2xx answered for {:.2} s ({} acknowledged, {} refused)",
        first_after.duration_since(last_before).as_secs_f64(),
        acked.len(),
        sent.iter().filter(|s| s.1 != 200).count()
    );
    assert!(
        sent.iter().all(|s| s.1 == 200 || s.1 == 503 || s.1 == 0),
        "only 200 or 503"
    );
    let rows = promoted
        .query("SELECT key FROM iw_dedup WHERE key = ANY($1)", &[&acked])
        .await
        .unwrap();
    let found: HashSet<String> = rows.iter().map(|r| r.get(0)).collect();
    let lost: Vec<&String> = acked.iter().filter(|k| !found.contains(*k)).collect();
    assert!(lost.is_empty(), "acknowledged, not on the promoted standby: {lost:?}");
    app.stop().await;
}

#[cfg_attr(
    not(has_postgres),
    ignore = "needs PostgreSQL's initdb, pg_ctl and pg_basebackup, run as user postgres (CI has them)"
)]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_the_synchronous_standby_down_every_answer_is_503_redeliveries_too() {
    let (primary, standby) = primary_with_sync_standby();
    let dir = tempfile::tempdir().unwrap();
    let app = spawn_app_with(dir.path(), PG_CONFIG, pg_env(&primary.url())).await;
    let first = contact_note("notif_sync_before", "c_sync");
    assert_eq!(app.post_signed(&first).await.status(), 200);
    standby.stop();
    let body = contact_note("notif_sync_down", "c_sync");
    let started = Instant::now();
    let r = app.post_signed(&body).await;
    let took = started.elapsed();
    assert_eq!(r.status(), 503, "not on two machines: not acknowledged");
    assert!(
        took < Duration::from_secs(5),
        "503 within the commit timeout (2 s): took {took:?}"
    );
    // The row may be committed on the primary alone: a redelivery is not
    // acknowledged on the strength of it.
    assert_eq!(app.post_signed(&body).await.status(), 503);
    assert_eq!(
        app.post_signed(&first).await.status(),
        503,
        "a duplicate waits for a commit too"
    );
    tokio::time::sleep(Duration::from_millis(2500)).await;
    assert_eq!(app.readyz().await, 503, "/readyz tells");
    standby.start();
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let code = app.post_signed(&body).await.status();
        if code == 200 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "never acknowledged after the standby came back"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let ev = app.wait_final("notif_sync_down").await;
    assert_eq!(ev["status"], "processed", "{ev}");
    app.stop().await;
}

/// Five contacts' notifications (`notif_{tag}_1..5` about `c_{tag}_1..5`),
/// processed; `c_{tag}_2` erased; the first's payload viewed (an audit
/// entry). Returns the first event as the admin API shows it.
async fn five_contacts_one_erased(app: &TestApp, tag: &str) -> Value {
    for i in 1..=5 {
        let body = contact_note(&format!("notif_{tag}_{i}"), &format!("c_{tag}_{i}"));
        assert_eq!(app.post_signed(&body).await.status(), 200);
    }
    for i in 1..=5 {
        assert_eq!(app.wait_final(&format!("notif_{tag}_{i}")).await["status"], "processed");
    }
    let r = app
        .admin_post(
            "/admin/erase",
            json!({"contact_id": format!("c_{tag}_2"), "local_only": true}),
        )
        .await;
    assert!(r.status().is_success());
    assert_eq!(
        app.admin_get(&format!("/admin/events/notif_{tag}_1?raw=true"))
            .await
            .status(),
        200
    );
    app.admin_json(&format!("/admin/events/notif_{tag}_1")).await
}

/// What [`five_contacts_one_erased`] left, served by `app` (another
/// store now): the first event as `before`, the kept contact cached, the
/// erased person's event and record gone, and a new notification about
/// them erased on arrival (its outcome `skipped`, then the event itself).
async fn served_as_before(app: &TestApp, tag: &str, before: &Value) {
    let after: Value = app.admin_json(&format!("/admin/events/notif_{tag}_1")).await;
    for field in ["status", "received_at", "history", "deliveries", "payload"] {
        assert_eq!(after[field], before[field], "{field}");
    }
    assert_eq!(app.admin_get(&format!("/admin/contacts/c_{tag}_1")).await.status(), 200);
    assert_eq!(
        app.admin_get(&format!("/admin/events/notif_{tag}_2")).await.status(),
        404
    );
    assert_eq!(app.admin_get(&format!("/admin/contacts/c_{tag}_2")).await.status(), 404);
    let again = contact_note(&format!("notif_{tag}_2b"), &format!("c_{tag}_2"));
    assert_eq!(app.post_signed(&again).await.status(), 200);
    app.wait_gone(&format!("notif_{tag}_2b")).await;
    assert_eq!(app.admin_get(&format!("/admin/contacts/c_{tag}_2")).await.status(), 404);
}

#[cfg_attr(not(has_postgres), ignore = "needs PostgreSQL on 127.0.0.1:5432 (CI starts it)")]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_embedded_store_moves_into_postgres_and_nobody_erased_comes_back() {
    // An embedded store with events, a cache, an erasure and audit entries.
    let dir = tempfile::tempdir().unwrap();
    let app = spawn_app(dir.path()).await;
    let before = five_contacts_one_erased(&app, "move").await;
    app.stop().await;

    // Moved.
    let db = TestDb::new().await;
    let config = dir.path().join("pg.toml");
    std::fs::write(&config, PG_CONFIG).unwrap();
    let mut bin = Binary::new(dir.path());
    bin.env.push(("INTERCOM_WEBHOOKS_DATABASE_URL".into(), db.url()));
    let (code, out, err) = bin.run(&["--config", config.to_str().unwrap(), "--json", "migrate-store"]);
    assert_eq!(code, 0, "{err}");
    let report: Value = serde_json::from_str(&out).unwrap();
    assert_eq!(report["events"], 4, "{report}");
    // An erasure's ledger lines: its door, the door of the email it
    // found, and the line naming everything it erased.
    assert_eq!(report["erasures"], 3, "{report}");
    assert!(report["cached_records"].as_u64().unwrap() >= 4, "{report}");
    // A second move into the same database is refused.
    let (code, _, err) = bin.run(&["--config", config.to_str().unwrap(), "migrate-store"]);
    assert_ne!(code, 0);
    assert!(err.contains("already holds"), "{err}");

    // Served from the database by a replica with a data dir of its own.
    let other = tempfile::tempdir().unwrap();
    let pg = spawn_app_with(other.path(), PG_CONFIG, pg_env(&db.url())).await;
    served_as_before(&pg, "move", &before).await;
    // A moved notification delivered again is a duplicate.
    let dup = contact_note("notif_move_1", "c_move_1");
    assert_eq!(pg.post_signed(&dup).await.status(), 200);
    let ev = pg.admin_json("/admin/events/notif_move_1").await;
    assert_eq!(outcomes(&ev), outcomes(&before), "not processed again");
    // The audit chain moved whole, and says so.
    let check = pg.admin_json("/admin/audit/verify").await;
    assert_eq!(check["ok"], true, "{check}");
    let audit = pg.admin_json("/admin/audit").await.to_string();
    assert!(
        audit.contains("store_moved") && audit.contains("payload_viewed"),
        "{audit}"
    );
    pg.stop().await;
    db.drop_now().await;
}

/// `backup` of a database (through the CLI and the admin API) is a backup
/// in the embedded store's format: nothing personal in it in plaintext,
/// and nobody erased before it. Restored into an empty data dir and moved
/// into another database, it serves what there was, and keeps the erased
/// person erased.
#[cfg_attr(not(has_postgres), ignore = "needs PostgreSQL on 127.0.0.1:5432 (CI starts it)")]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_database_backup_restores_and_moves_back_with_nobody_erased_in_it() {
    let db = TestDb::new().await;
    let dir = tempfile::tempdir().unwrap();
    let pg = spawn_app_with(dir.path(), PG_CONFIG, pg_env(&db.url())).await;
    let before = five_contacts_one_erased(&pg, "bk").await;

    // Through the CLI, on another machine's data dir, while serve runs.
    let work = tempfile::tempdir().unwrap();
    let config = work.path().join("pg.toml");
    std::fs::write(&config, PG_CONFIG).unwrap();
    let mut cli = Binary::new(&work.path().join("cli"));
    std::fs::create_dir_all(&cli.dir).unwrap();
    cli.env.push(("INTERCOM_WEBHOOKS_DATABASE_URL".into(), db.url()));
    let file = work.path().join("db.backup");
    let (code, out, err) = cli.run(&[
        "--config",
        config.to_str().unwrap(),
        "--json",
        "backup",
        "--out",
        file.to_str().unwrap(),
    ]);
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("index_entries"), "{out}");
    // And through the admin API.
    let r = pg.admin_get("/admin/backup").await;
    let status = r.status();
    let streamed = r.bytes().await.unwrap();
    assert_eq!(status, 200, "{}", String::from_utf8_lossy(&streamed));
    for bytes in [std::fs::read(&file).unwrap(), streamed.to_vec()] {
        assert!(bytes.len() > 1000);
        for needle in ["@example.org", "c_bk_1@", "c_bk_2@"] {
            assert!(
                !bytes.windows(needle.len()).any(|w| w == needle.as_bytes()),
                "{needle} in plaintext in a backup"
            );
        }
    }
    // The staging copies are gone.
    for d in [cli.dir.join("data"), dir.path().to_path_buf()] {
        let left: Vec<_> = std::fs::read_dir(&d)
            .map(|r| r.flatten().map(|e| e.file_name()).collect())
            .unwrap_or_default();
        assert!(
            !left.iter().any(|n| n.to_string_lossy().starts_with(".backup-stage")),
            "{left:?}"
        );
    }
    pg.stop().await;

    // Restored into an empty data dir, then moved into another database.
    let restored = Binary::new(&work.path().join("restored"));
    std::fs::create_dir_all(&restored.dir).unwrap();
    let (code, _, err) = restored.run(&["restore", "--from", file.to_str().unwrap(), "--without-ledger"]);
    assert_eq!(code, 0, "{err}");
    let db2 = TestDb::new().await;
    let mut mover = Binary::new(&restored.dir);
    mover.env.push(("INTERCOM_WEBHOOKS_DATABASE_URL".into(), db2.url()));
    let (code, out, err) = mover.run(&["--config", config.to_str().unwrap(), "--json", "migrate-store"]);
    assert_eq!(code, 0, "{err}");
    let report: Value = serde_json::from_str(&out).unwrap();
    assert_eq!(report["events"], 4, "{report}");
    // An erasure's ledger lines: its door, the door of the email it
    // found, and the line naming everything it erased.
    assert_eq!(report["erasures"], 3, "{report}");

    let other = tempfile::tempdir().unwrap();
    let back = spawn_app_with(other.path(), PG_CONFIG, pg_env(&db2.url())).await;
    served_as_before(&back, "bk", &before).await;
    let check = back.admin_json("/admin/audit/verify").await;
    assert_eq!(check["ok"], true, "{check}");
    back.stop().await;
    db.drop_now().await;
    db2.drop_now().await;
}

/// The exhaustive erasure test of the embedded store (every identifier of
/// every capture), against a cluster of the test's own, then every byte of
/// the cluster's files (tables, indexes, WAL) and of a `pg_dump` searched:
/// payloads are sealed before they reach the database, so not even the WAL
/// holds a personal string of an erased notification.
#[cfg_attr(
    not(has_postgres),
    ignore = "needs PostgreSQL's initdb and pg_ctl, run as user postgres (CI has them)"
)]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn erasing_by_every_identifier_leaves_no_byte_of_the_person_in_the_database_files() {
    let cluster = Cluster::new();
    let dir = tempfile::tempdir().unwrap();
    // PostgreSQL's own files hold words of their own ("Canada" in a
    // catalog's comments): what a fresh cluster already has is not ours.
    let fresh = dir.path().join("fresh-cluster");
    let copied = std::process::Command::new("cp")
        .arg("-a")
        .arg(cluster.dir.path().join("data"))
        .arg(&fresh)
        .status()
        .unwrap();
    assert!(copied.success());
    let app = spawn_app_with(dir.path(), PG_CONFIG, pg_env(&cluster.url())).await;
    let needles = erase_every_identifier_of_every_capture(&app).await;
    app.stop().await;
    let client = connect(&format!(
        "host=127.0.0.1 port={} user=postgres dbname=postgres",
        cluster.port
    ))
    .await;
    client.batch_execute("CHECKPOINT").await.unwrap();
    let dump = std::process::Command::new("pg_dump")
        .args([
            "-h",
            "127.0.0.1",
            "-p",
            &cluster.port.to_string(),
            "-U",
            "postgres",
            "postgres",
        ])
        .output()
        .unwrap();
    assert!(dump.status.success());
    let dump_file = dir.path().join("dump.sql");
    std::fs::write(&dump_file, &dump.stdout).unwrap();
    // The cluster's files are tens of MB: searched by grep (fixed strings,
    // all at once); needles spanning lines are searched line by line.
    let lines: BTreeSet<&str> = needles
        .iter()
        .flat_map(|n| n.lines())
        .map(str::trim)
        .filter(|l| l.len() >= 6)
        .collect();
    assert!(lines.len() > 50);
    let patterns = dir.path().join("needles.txt");
    std::fs::write(&patterns, lines.iter().copied().collect::<Vec<_>>().join("\n")).unwrap();
    let matches = |place: &Path| -> BTreeSet<String> {
        let found = std::process::Command::new("grep")
            .args(["-r", "-a", "-o", "-h", "-F", "-f"])
            .arg(&patterns)
            .arg(place)
            .output()
            .unwrap();
        assert!(
            found.status.code() != Some(2),
            "grep failed: {}",
            String::from_utf8_lossy(&found.stderr)
        );
        String::from_utf8_lossy(&found.stdout)
            .lines()
            .map(str::to_string)
            .collect()
    };
    let native = matches(&fresh);
    // (The replica's own data dir, if it made one, holds nothing either.)
    for place in [dump_file, cluster.dir.path().join("data"), dir.path().join("data")]
        .into_iter()
        .filter(|p| p.exists())
    {
        let ours: Vec<String> = matches(&place).difference(&native).cloned().collect();
        assert!(ours.is_empty(), "personal strings in {}: {ours:?}", place.display());
    }
}

/// The notifications of `handler_runs_batched_together_leave_what_one_by_one_runs_leave`:
/// contacts created, tagged, attached, updated out of order, archived and
/// merged away (then updated late); conversations created, attached,
/// updated, deleted (then replied to late); then every capture.
fn batch_script() -> Vec<(String, Vec<u8>)> {
    let contact = |id: &str, email: &str, updated: i64| {
        json!({"type": "contact", "id": id, "role": "user", "email": email, "updated_at": updated,
               "tags": {"type": "list", "data": [], "has_more": false}})
    };
    let mut out: Vec<(String, Vec<u8>)> = Vec::new();
    let mut add = |id: String, topic: &str, item: Value, at: i64| {
        let body = notification(&id, topic, item, at);
        out.push((id, body));
    };
    let t0 = 1_767_225_600;
    for c in 0..12 {
        let id = format!("c_batch_{c}");
        let n = |step: &str| format!("notif_b_{c}_{step}");
        add(
            n("created"),
            "contact.user.created",
            contact(&id, &format!("{id}@example.org"), t0 + c),
            t0,
        );
        for (step, topic, tag) in [
            ("tag1", "contact.user.tag.created", "t1"),
            ("tag2", "contact.user.tag.created", "t2"),
            ("untag1", "contact.user.tag.deleted", "t1"),
        ] {
            add(
                n(step),
                topic,
                json!({"type": "contact_tag", "contact": contact(&id, &format!("{id}@example.org"), t0 + c),
                                        "tag": {"type": "tag", "id": tag}}),
                t0 + 10,
            );
        }
        add(
            n("company"),
            "company.contact.attached",
            json!({"type": "contact_company", "contact": contact(&id, &format!("{id}@example.org"), t0 + c),
                                                             "company": {"type": "company", "id": "co1"}}),
            t0 + 11,
        );
        add(
            n("newer"),
            "contact.user.updated",
            contact(&id, &format!("new.{id}@example.org"), t0 + 100 + c),
            t0 + 12,
        );
        add(
            n("stale"),
            "contact.user.updated",
            contact(&id, &format!("old.{id}@example.org"), t0 + 50),
            t0 + 13,
        );
        if c % 4 == 0 {
            add(
                n("archived"),
                "contact.archived",
                json!({"type": "contact", "id": id}),
                t0 + 14,
            );
        }
    }
    add(
        "notif_b_merge".into(),
        "contact.merged",
        json!({"type": "contact", "id": "c_batch_1", "role": "user", "email": "c_batch_1@example.org", "updated_at": t0 + 300,
               "merged_from": {"type": "contact", "id": "c_batch_2"}}),
        t0 + 20,
    );
    add(
        "notif_b_late".into(),
        "contact.user.updated",
        contact("c_batch_2", "late@example.org", t0 + 400),
        t0 + 21,
    );
    for k in 0..6 {
        let id = format!("cv_batch_{k}");
        let n = |step: &str| format!("notif_bc_{k}_{step}");
        let conv = |updated: i64, state: &str| {
            json!({"type": "conversation", "id": id, "created_at": t0, "updated_at": updated, "state": state, "open": state == "open",
                   "contacts": {"type": "contact.list", "contacts": [{"type": "contact", "id": format!("c_batch_{k}")}]}})
        };
        add(
            n("created"),
            "conversation.user.created",
            conv(t0 + 30, "open"),
            t0 + 30,
        );
        add(
            n("attached"),
            "conversation.contact.attached",
            json!({"type": "conversation_contact", "conversation": {"type": "conversation", "id": id},
                   "contact": {"type": "contact", "id": format!("c_batch_{}", k + 6)}}),
            t0 + 31,
        );
        add(
            n("closed"),
            "conversation.admin.closed",
            conv(t0 + 40, "closed"),
            t0 + 40,
        );
        if k % 3 == 0 {
            add(
                n("deleted"),
                "conversation.deleted",
                json!({"type": "conversation", "id": id}),
                t0 + 50,
            );
            add(n("late"), "conversation.admin.replied", conv(t0 + 60, "open"), t0 + 60);
        }
    }
    // (The few without a notification id are keyed by their bytes.)
    for (_, bytes, v) in captures() {
        if let Some(id) = v["id"].as_str() {
            out.push((id.to_string(), bytes));
        }
    }
    out
}

/// Every string under an `id` key (and `conversation_id`) in `v`.
fn ids_in(v: &Value, out: &mut BTreeSet<String>) {
    match v {
        Value::Object(m) => {
            for (k, x) in m {
                if let (true, Some(s)) = (k == "id" || k == "conversation_id", x.as_str()) {
                    out.insert(s.to_string());
                }
                ids_in(x, out);
            }
        }
        Value::Array(a) => a.iter().for_each(|x| ids_in(x, out)),
        _ => {}
    }
}

fn counter(metrics: &str, name: &str) -> u64 {
    metrics
        .lines()
        .find_map(|l| l.strip_prefix(name).and_then(|r| r.strip_prefix(' ')))
        .and_then(|v| v.trim().parse::<f64>().ok())
        .unwrap_or(0.0) as u64
}

#[cfg_attr(not(has_postgres), ignore = "needs PostgreSQL on 127.0.0.1:5432 (CI starts it)")]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn handler_runs_batched_together_leave_what_one_by_one_runs_leave() {
    // One worker each, so both take the events in the order they came.
    let worker = "[worker]\nconcurrency = 1\nmax_attempts = 1\n";
    let script = batch_script();
    let db = TestDb::new().await;
    let (de, dp) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let embedded = spawn_app_with(de.path(), worker, test_env()).await;
    let pg = spawn_app_with(dp.path(), &format!("{PG_CONFIG}{worker}"), pg_env(&db.url())).await;

    // A contact whose cached record is unreadable: its next event fails
    // in the middle of a batch.
    let bad = contact_note("notif_bad_1", "c_bad");
    assert_eq!(pg.post_signed(&bad).await.status(), 200);
    assert_eq!(pg.wait_final("notif_bad_1").await["status"], "processed");
    let client = db.client().await;
    client
        .execute("UPDATE iw_cache SET value = '\\x00' WHERE id = 'c_bad'", &[])
        .await
        .unwrap();

    // The cache table locked: the worker waits on its first run while
    // every notification is stored, then takes them in batches.
    let mut locker = db.client().await;
    let lock = locker.transaction().await.unwrap();
    lock.batch_execute("LOCK TABLE iw_cache IN EXCLUSIVE MODE")
        .await
        .unwrap();
    for (i, (id, body)) in script.iter().enumerate() {
        assert_eq!(pg.post_signed(body).await.status(), 200, "{id}");
        if i == script.len() - 20 {
            assert_eq!(
                pg.post_signed(&contact_note("notif_bad_2", "c_bad")).await.status(),
                200
            );
        }
    }
    lock.commit().await.unwrap();
    for (id, body) in &script {
        assert_eq!(embedded.post_signed(body).await.status(), 200, "{id}");
    }
    wait_drained(&db, Duration::from_secs(60)).await;
    embedded.wait_idle().await;

    let metrics = pg.metrics().await;
    let runs = counter(&metrics, "intercom_webhooks_handler_batched_runs_total");
    let batches = counter(&metrics, "intercom_webhooks_handler_run_batches_total");
    assert!(batches >= 2 && runs >= 100, "{batches} batches, {runs} runs batched");
    // The unreadable record failed its own event only.
    let failed = pg.wait_final("notif_bad_2").await;
    assert_eq!(failed["status"], "failed", "{failed}");
    assert!(failed.to_string().contains("unreadable"), "{failed}");

    // Every event ended the same way, every record is the same.
    let mut ids = BTreeSet::new();
    for (id, body) in &script {
        let (a, b) = (
            embedded.admin_get(&format!("/admin/events/{id}")).await,
            pg.admin_get(&format!("/admin/events/{id}")).await,
        );
        assert_eq!(a.status(), b.status(), "{id}");
        if a.status() == 200 {
            let (a, b): (Value, Value) = (a.json().await.unwrap(), b.json().await.unwrap());
            assert_eq!((&a["status"], outcomes(&a)), (&b["status"], outcomes(&b)), "{id}");
        }
        ids_in(&serde_json::from_slice(body).unwrap(), &mut ids);
    }
    let mut compared = 0;
    for id in &ids {
        for kind in ["contacts", "conversations"] {
            let path = format!("/admin/{kind}/{id}");
            let (a, b) = (embedded.admin_get(&path).await, pg.admin_get(&path).await);
            assert_eq!(a.status(), b.status(), "{path}");
            if a.status() == 200 {
                // Email hashes are keyed by each store's own keys: only
                // whether there is one can match.
                let strip = |mut v: Value| {
                    let m = v.as_object_mut().unwrap();
                    m.remove("cached_at_ms");
                    if let Some(h) = m.get_mut("email_hash") {
                        *h = Value::Bool(h.is_string());
                    }
                    v
                };
                let (a, b): (Value, Value) = (a.json().await.unwrap(), b.json().await.unwrap());
                assert_eq!(strip(a), strip(b), "{path}");
                compared += 1;
            }
        }
    }
    assert!(compared >= 20, "only {compared} records compared");

    // Each record and tombstone filed for expiry once, nothing else filed.
    let unfiled: i64 = client
        .query_one(
            "SELECT (SELECT count(*) FROM iw_cache c WHERE (SELECT count(*) FROM iw_expiry e \
                     WHERE e.class = c.kind AND e.id = c.id) <> 1) \
                  + (SELECT count(*) FROM iw_tombstones t WHERE (SELECT count(*) FROM iw_expiry e \
                     WHERE e.class = t.kind + 2 AND e.id = t.id) <> 1) \
                  + (SELECT count(*) FROM iw_expiry e WHERE NOT EXISTS (SELECT 1 FROM iw_cache c WHERE e.class = c.kind AND e.id = c.id) \
                     AND NOT EXISTS (SELECT 1 FROM iw_tombstones t WHERE e.class = t.kind + 2 AND e.id = t.id))",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(unfiled, 0, "records, tombstones and the expiry index disagree");
    embedded.stop().await;
    pg.stop().await;
    db.drop_now().await;
}

#[cfg_attr(not(has_postgres), ignore = "needs PostgreSQL on 127.0.0.1:5432 (CI starts it)")]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dead_replicas_backlog_is_claimed_and_run_in_batches() {
    let db = TestDb::new().await;
    let (da, dbb) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let config = da.path().join("pg.toml");
    std::fs::write(&config, PG_CONFIG).unwrap();
    let mut bin = Binary::new(da.path());
    bin.env.push(("INTERCOM_WEBHOOKS_DATABASE_URL".into(), db.url()));
    bin.env
        .push(("INTERCOM_WEBHOOKS_CONFIG".into(), config.to_str().unwrap().to_string()));
    // Replica A stores 150 events but cannot run them (the cache table is
    // locked), and is killed: its claims lapse after the lease.
    let (mut a, public, _) = bin.serve(&[]);
    let mut locker = db.client().await;
    let lock = locker.transaction().await.unwrap();
    lock.batch_execute("LOCK TABLE iw_cache IN EXCLUSIVE MODE")
        .await
        .unwrap();
    let client = reqwest::Client::new();
    for i in 0..150 {
        let body = contact_note(&format!("notif_backlog_{i}"), &format!("c_backlog_{i}"));
        let r = client
            .post(format!("http://{public}/webhooks/intercom"))
            .header("x-hub-signature", intercom_webhooks::verify::sign(SECRET, &body))
            .header("Content-Type", "application/json")
            .body(body)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200);
    }
    a.kill().unwrap();
    a.wait().unwrap();
    lock.rollback().await.unwrap();

    // Replica B takes them over, with their payloads, in batches.
    let b = spawn_app_with(dbb.path(), PG_CONFIG, pg_env(&db.url())).await;
    wait_drained(&db, Duration::from_secs(30)).await;
    let metrics = b.metrics().await;
    let runs = counter(&metrics, "intercom_webhooks_handler_batched_runs_total");
    assert!(runs >= 100, "only {runs} of 150 runs batched:\n{metrics}");
    for i in (0..150).step_by(10) {
        let ev = b.wait_final(&format!("notif_backlog_{i}")).await;
        assert_eq!(outcomes(&ev), ["processed"], "{ev}");
        assert_eq!(
            b.admin_get(&format!("/admin/contacts/c_backlog_{i}")).await.status(),
            200
        );
    }
    b.stop().await;
    db.drop_now().await;
}

/// Sessions of this test's database waiting for a lock, and on what.
async fn waiting_on_locks(client: &tokio_postgres::Client) -> Vec<String> {
    client
        .query(
            "SELECT left(query, 60) FROM pg_stat_activity \
             WHERE datname = current_database() AND wait_event_type = 'Lock'",
            &[],
        )
        .await
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect()
}

#[cfg_attr(not(has_postgres), ignore = "needs PostgreSQL on 127.0.0.1:5432 (CI starts it)")]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_erasure_waits_for_a_handler_run_under_way_and_then_forgets_what_it_cached() {
    let db = TestDb::new().await;
    let dir = tempfile::tempdir().unwrap();
    let app = spawn_app_with(dir.path(), PG_CONFIG, pg_env(&db.url())).await;
    let client = db.client().await;
    let wait_for = |n: usize| {
        let client = &client;
        async move {
            let deadline = Instant::now() + Duration::from_secs(15);
            loop {
                let waiting = waiting_on_locks(client).await;
                if waiting.len() >= n {
                    return waiting;
                }
                assert!(Instant::now() < deadline, "only {waiting:?} waiting");
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        }
    };
    // A handler run under way: its event locked, its cache read held up.
    let mut locker = db.client().await;
    let lock = locker.transaction().await.unwrap();
    lock.batch_execute("LOCK TABLE iw_cache IN EXCLUSIVE MODE")
        .await
        .unwrap();
    assert_eq!(
        app.post_signed(&contact_note("notif_race", "c_race")).await.status(),
        200
    );
    wait_for(1).await;
    // The person erased meanwhile: the erasure waits too.
    let erasure = {
        let app = &app;
        async move {
            app.admin_post(
                "/admin/erase",
                json!({"contact_id": "c_race", "local_only": true, "yes": true}),
            )
            .await
        }
    };
    // The erasure closes its door, then waits for the run under way (at
    // this process's handler gate; another replica's run it would wait for
    // at the event's row lock): it cannot finish while the run is held.
    let (r, _) = tokio::join!(erasure, async {
        tokio::time::sleep(Duration::from_millis(800)).await;
        assert_eq!(wait_for(1).await.len(), 1, "only the run waits on the database");
        lock.commit().await.unwrap();
    });
    assert!(r.status().is_success(), "{}", r.text().await.unwrap());
    // Whatever the run cached went with the person.
    wait_drained(&db, Duration::from_secs(15)).await;
    assert_eq!(app.admin_get("/admin/contacts/c_race").await.status(), 404);
    assert!(app.erased("notif_race").await);
    let cached: i64 = client
        .query_one("SELECT count(*) FROM iw_cache WHERE id = 'c_race'", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(cached, 0, "the run's record outlived the erasure");
    app.stop().await;
    db.drop_now().await;
}

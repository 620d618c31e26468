//! Test helpers: the real server in-process on random ports with its own
//! store in a temp dir (`spawn_app`), the real binary as a child process
//! (`Binary`), and signing.

#![allow(dead_code)]

pub mod pg;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use clap::Parser;
use intercom_webhooks::app::{self, Listeners};
use intercom_webhooks::cli::Cli;
use intercom_webhooks::config::{Env, ServeFlags, Settings};
use intercom_webhooks::verify::sign;
use serde_json::Value;
use tokio_util::sync::CancellationToken;

pub const SECRET: &str = "test-client-secret";
pub const ADMIN_TOKEN: &str = "test-admin-token";
pub const DATA_KEY: &str = "5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a";

pub struct MapEnv(pub HashMap<&'static str, String>);

impl Env for MapEnv {
    fn var(&self, name: &str) -> Option<String> {
        self.0.get(name).cloned()
    }
}

pub fn test_env() -> MapEnv {
    MapEnv(HashMap::from([
        ("INTERCOM_CLIENT_SECRET", SECRET.to_string()),
        ("INTERCOM_WEBHOOKS_ADMIN_TOKEN", ADMIN_TOKEN.to_string()),
        ("INTERCOM_WEBHOOKS_DATA_KEY", DATA_KEY.to_string()),
    ]))
}

/// Settings for a data dir, with extra TOML config.
pub fn settings(dir: &Path, toml: &str, env: &MapEnv) -> Settings {
    let cfg = dir.join("test-config.toml");
    std::fs::write(&cfg, toml).unwrap();
    let data = dir.join("data");
    let cli = Cli::try_parse_from([
        "intercom-webhooks",
        "--config",
        cfg.to_str().unwrap(),
        "--data-dir",
        data.to_str().unwrap(),
        "serve",
    ])
    .unwrap();
    Settings::load(&cli, &ServeFlags::default(), env).unwrap()
}

pub struct TestApp {
    pub addr: SocketAddr,
    pub admin: SocketAddr,
    pub dir: PathBuf,
    pub client: reqwest::Client,
    shutdown: CancellationToken,
    handle: tokio::task::JoinHandle<anyhow::Result<()>>,
}

pub async fn spawn_app(dir: &Path) -> TestApp {
    spawn_app_with(dir, "", test_env()).await
}

pub async fn spawn_app_with(dir: &Path, toml: &str, env: MapEnv) -> TestApp {
    let s = settings(dir, toml, &env);
    let public = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let admin = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let (addr, admin_addr) = (public.local_addr().unwrap(), admin.local_addr().unwrap());
    let shutdown = CancellationToken::new();
    let handle = tokio::spawn(app::run(s, Listeners { public, admin }, shutdown.clone()));
    let app = TestApp {
        addr,
        admin: admin_addr,
        dir: dir.to_path_buf(),
        client: reqwest::Client::new(),
        shutdown,
        handle,
    };
    app.wait_ready().await;
    app
}

impl TestApp {
    pub fn url(&self) -> String {
        format!("http://{}/webhooks/intercom", self.addr)
    }

    pub fn data_dir(&self) -> PathBuf {
        self.dir.join("data")
    }

    /// `/readyz`'s status code (0 if the request failed).
    pub async fn readyz(&self) -> u16 {
        match self.client.get(format!("http://{}/readyz", self.addr)).send().await {
            Ok(r) => r.status().as_u16(),
            Err(_) => 0,
        }
    }

    pub async fn wait_ready(&self) {
        let deadline = Instant::now() + Duration::from_secs(30);
        while Instant::now() < deadline {
            if self.readyz().await == 200 {
                return;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let why = match self.client.get(format!("http://{}/readyz", self.addr)).send().await {
            Ok(r) => r.text().await.unwrap_or_default(),
            Err(e) => e.to_string(),
        };
        panic!("server not ready: {why}");
    }

    pub async fn post_signed(&self, body: &[u8]) -> reqwest::Response {
        self.post_with(body, Some(&sign(SECRET, body))).await
    }

    pub async fn post_with(&self, body: &[u8], signature: Option<&str>) -> reqwest::Response {
        let mut req = self
            .client
            .post(self.url())
            .header("content-type", "application/json")
            .body(body.to_vec());
        if let Some(s) = signature {
            req = req.header("x-hub-signature", s);
        }
        req.send().await.unwrap()
    }

    pub async fn admin_get(&self, path: &str) -> reqwest::Response {
        self.client
            .get(format!("http://{}{path}", self.admin))
            .bearer_auth(ADMIN_TOKEN)
            .send()
            .await
            .unwrap()
    }

    pub async fn admin_json(&self, path: &str) -> Value {
        let r = self.admin_get(path).await;
        assert!(r.status().is_success(), "{path}: {}", r.status());
        r.json().await.unwrap()
    }

    /// The Prometheus text of the admin listener's `/metrics`.
    pub async fn metrics(&self) -> String {
        self.client
            .get(format!("http://{}/metrics", self.admin))
            .send()
            .await
            .unwrap()
            .text()
            .await
            .unwrap()
    }

    pub async fn admin_post(&self, path: &str, body: Value) -> reqwest::Response {
        self.client
            .post(format!("http://{}{path}", self.admin))
            .bearer_auth(ADMIN_TOKEN)
            .json(&body)
            .send()
            .await
            .unwrap()
    }

    /// Waits until the event reaches a final status; returns it.
    pub async fn wait_final(&self, id: &str) -> Value {
        let deadline = Instant::now() + Duration::from_secs(15);
        loop {
            let r = self.admin_get(&format!("/admin/events/{id}")).await;
            let code = r.status();
            let mut last = Value::Null;
            if code == 200 {
                let v: Value = r.json().await.unwrap();
                let st = v["status"].as_str().unwrap_or("").to_string();
                if st != "pending" && st != "retrying" {
                    return v;
                }
                last = v;
            }
            assert!(Instant::now() < deadline, "event {id} never finished: {code} {last}");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Waits until an event has been processed and erased: only its erased
    /// record is served ([`is_erased_record`]), at most 15 s after the
    /// queue is idle. (An event is indexed a moment after its `200`.)
    pub async fn wait_gone(&self, id: &str) {
        self.wait_idle().await;
        let deadline = Instant::now() + Duration::from_secs(15);
        loop {
            let (code, v) = self.event(id).await;
            if is_erased_record(code, &v) {
                return;
            }
            assert!(Instant::now() < deadline, "event {id} is still served: {code} {v}");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// `GET /admin/events/{id}`: the status code and the JSON (`null` if
    /// none).
    pub async fn event(&self, id: &str) -> (u16, Value) {
        let r = self.admin_get(&format!("/admin/events/{id}")).await;
        let code = r.status().as_u16();
        (code, r.json().await.unwrap_or(Value::Null))
    }

    /// Whether only the erased record of event `id` is served.
    pub async fn erased(&self, id: &str) -> bool {
        let (code, v) = self.event(id).await;
        is_erased_record(code, &v)
    }

    /// Polls an admin GET until `ok` holds for its JSON (events are indexed
    /// a moment after their `200`).
    pub async fn admin_until(&self, path: &str, ok: impl Fn(&Value) -> bool) -> Value {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let v = self.admin_json(path).await;
            if ok(&v) {
                return v;
            }
            assert!(Instant::now() < deadline, "{path} never satisfied the condition: {v}");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Waits until no event is queued.
    pub async fn wait_idle(&self) {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let s = self.admin_json("/admin/stats").await;
            if s["pending_depth"] == 0 {
                return;
            }
            assert!(Instant::now() < deadline, "queue never drained: {s}");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    pub async fn stop(self) {
        self.shutdown.cancel();
        self.handle.await.unwrap().unwrap();
    }
}

/// A notification envelope with the given id, topic and item.
pub fn notification(id: &str, topic: &str, item: Value, created_at: i64) -> Vec<u8> {
    serde_json::to_vec(&serde_json::json!({
        "type": "notification_event", "app_id": "abc12xyz",
        "data": {"type": "notification_event_data", "item": item},
        "links": {}, "id": id, "topic": topic, "delivery_status": "pending",
        "delivery_attempts": 1, "delivered_at": 0, "first_sent_at": created_at,
        "created_at": created_at, "self": null
    }))
    .unwrap()
}

/// Every file under `dir`, read as bytes.
/// The intake log segments of a data dir that hold records, sorted (not
/// the one prepared ahead, which is only zeros).
pub fn written_segments(data_dir: &Path) -> Vec<String> {
    let log = data_dir.join("log");
    let mut v: Vec<String> = std::fs::read_dir(&log)
        .unwrap()
        .flatten()
        // A segment deleted between the listing and the look (a purge or a
        // shred running meanwhile) is not there any more.
        .filter(
            |e| match intercom_webhooks::store::embedded::log::is_unused(&e.path()) {
                Ok(unused) => !unused,
                Err(err) if err.kind() == std::io::ErrorKind::NotFound => false,
                Err(err) => panic!("{}: {err}", e.path().display()),
            },
        )
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect();
    v.sort();
    v
}

pub fn all_files(dir: &Path) -> Vec<(PathBuf, Vec<u8>)> {
    let mut out = Vec::new();
    if dir.is_file() {
        return vec![(dir.to_path_buf(), std::fs::read(dir).unwrap())];
    }
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).unwrap().flatten() {
            let p = e.path();
            if p.is_dir() {
                stack.push(p);
            } else if let Ok(b) = std::fs::read(&p) {
                out.push((p, b));
            }
        }
    }
    out
}

/// Panics if `path`, or anything under it, is open to group or others.
pub fn assert_owner_only(path: &Path) {
    use std::os::unix::fs::PermissionsExt;
    let mode = std::fs::symlink_metadata(path).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode & 0o077, 0, "{} is mode {mode:o}", path.display());
    if path.is_dir() {
        for e in std::fs::read_dir(path).unwrap().flatten() {
            assert_owner_only(&e.path());
        }
    }
}

/// Panics if any file under `dir` contains any of `needles` (as bytes).
pub fn assert_absent_from_files(dir: &Path, needles: &[&str]) {
    for (path, bytes) in all_files(dir) {
        for n in needles {
            assert!(
                !bytes.windows(n.len()).any(|w| w == n.as_bytes()),
                "{} contains {n:?}",
                path.display()
            );
        }
    }
}

pub fn captures_dir() -> PathBuf {
    // Zulip's fixtures (Apache-2.0, see the README and ZULIP-LICENSE there),
    // copied into the repository so the suite needs nothing beside it.
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/intercom/captures")
}

/// The real binary, run as a child process.
pub struct Binary {
    pub dir: PathBuf,
    pub env: Vec<(String, String)>,
}

impl Binary {
    pub fn new(dir: &Path) -> Self {
        Binary {
            dir: dir.to_path_buf(),
            env: vec![
                ("INTERCOM_CLIENT_SECRET".into(), SECRET.into()),
                ("INTERCOM_WEBHOOKS_ADMIN_TOKEN".into(), ADMIN_TOKEN.into()),
                ("INTERCOM_WEBHOOKS_DATA_KEY".into(), DATA_KEY.into()),
                (
                    "INTERCOM_WEBHOOKS_DATA_DIR".into(),
                    dir.join("data").to_str().unwrap().into(),
                ),
            ],
        }
    }

    /// The same binary, pointed at a running server's admin API.
    pub fn with_admin(mut self, admin: SocketAddr) -> Self {
        self.env
            .push(("INTERCOM_WEBHOOKS_ADMIN_URL".into(), format!("http://{admin}")));
        self
    }

    pub fn command(&self) -> Command {
        let mut c = Command::new(env!("CARGO_BIN_EXE_intercom-webhooks"));
        c.env_clear();
        c.env("PATH", std::env::var("PATH").unwrap_or_default());
        for (k, v) in &self.env {
            c.env(k, v);
        }
        c.current_dir(&self.dir);
        c
    }

    /// Runs a command to completion: (exit code, stdout, stderr).
    pub fn run(&self, args: &[&str]) -> (i32, String, String) {
        let out = self.command().args(args).stdin(Stdio::null()).output().unwrap();
        (
            out.status.code().unwrap_or(-1),
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    }

    /// Starts `serve` on ports the child picks itself (port 0, so no other
    /// process can take them between choosing and binding, as happened with
    /// ports chosen here first); returns the child and the two addresses it
    /// logged once bound.
    pub fn serve(&self, extra_env: &[(&str, &str)]) -> (Server, SocketAddr, SocketAddr) {
        let log_path = self.dir.join("serve.log");
        // The log is appended to across restarts: read only this run's lines.
        let log_start = std::fs::metadata(&log_path).map_or(0, |m| m.len());
        let mut cmd = self.command();
        cmd.args(["serve", "--listen", "127.0.0.1:0", "--admin-listen", "127.0.0.1:0"])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(
                std::fs::OpenOptions::new()
                    .create(true)
                    .append(true)
                    .open(&log_path)
                    .unwrap(),
            );
        for (k, v) in extra_env {
            cmd.env(k, v);
        }
        let mut child = Server(cmd.spawn().unwrap());
        let (public, admin) = wait_bound(&mut child, &log_path, log_start);
        let deadline = Instant::now() + Duration::from_secs(60);
        while !is_ready(public) {
            if let Ok(Some(status)) = child.0.try_wait() {
                panic!("serve exited ({status}) before it was ready");
            }
            assert!(Instant::now() < deadline, "binary never became ready on {public}");
            std::thread::sleep(Duration::from_millis(25));
        }
        (child, public, admin)
    }
}

/// Waits for the `serve` child to log the addresses it bound (text or JSON
/// log format); panics with its log if it exits first or takes too long.
fn wait_bound(child: &mut Server, log_path: &Path, log_start: u64) -> (SocketAddr, SocketAddr) {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let log = std::fs::read(log_path).unwrap_or_default();
        let log = String::from_utf8_lossy(log.get(log_start as usize..).unwrap_or_default());
        if let Some(line) = log.lines().find(|l| l.contains("Receiving Intercom webhooks")) {
            if let (Some(public), Some(admin)) = (logged_addr(line, "listen"), logged_addr(line, "admin_listen")) {
                return (public, admin);
            }
        }
        if let Ok(Some(status)) = child.0.try_wait() {
            panic!("serve exited ({status}) before it was listening; its log:\n{log}");
        }
        if Instant::now() > deadline {
            panic!("serve did not say where it listens within 60 s; its log:\n{log}");
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// The address logged as field `name`: `name=ADDR` (text) or
/// `"name":"ADDR"` (JSON), not matching a longer field name ending in it.
fn logged_addr(line: &str, name: &str) -> Option<SocketAddr> {
    for (at, _) in line.match_indices(name) {
        let before = line[..at].chars().next_back();
        if before.is_some_and(|c| c.is_alphanumeric() || c == '_') {
            continue;
        }
        let rest = &line[at + name.len()..];
        let rest = rest.strip_prefix('=').or_else(|| rest.strip_prefix("\":\""));
        if let Some(rest) = rest {
            let end = rest
                .find(|c: char| !(c.is_ascii_digit() || c == '.' || c == ':'))
                .unwrap_or(rest.len());
            if let Ok(addr) = rest[..end].parse() {
                return Some(addr);
            }
        }
    }
    None
}

/// A `serve` child process that is killed if a failing test drops it.
pub struct Server(pub Child);

impl Server {
    /// Sends SIGTERM and waits; returns the exit code.
    pub fn terminate(mut self) -> Option<i32> {
        let status = std::process::Command::new("kill")
            .args(["-TERM", &self.0.id().to_string()])
            .status()
            .unwrap();
        assert!(status.success());
        self.0.wait().unwrap().code()
    }
}

impl std::ops::Deref for Server {
    type Target = Child;
    fn deref(&self) -> &Child {
        &self.0
    }
}

impl std::ops::DerefMut for Server {
    fn deref_mut(&mut self) -> &mut Child {
        &mut self.0
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        if let Ok(None) = self.0.try_wait() {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }
}

pub fn free_port() -> SocketAddr {
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    l.local_addr().unwrap()
}

pub fn wait_ready_blocking(addr: SocketAddr) {
    let deadline = Instant::now() + Duration::from_secs(60);
    while Instant::now() < deadline {
        if is_ready(addr) {
            return;
        }
        std::thread::sleep(Duration::from_millis(25));
    }
    panic!("binary never became ready on {addr}");
}

/// Whether `/readyz` answers `200` on `addr` now.
pub fn is_ready(addr: SocketAddr) -> bool {
    let Ok(mut s) = std::net::TcpStream::connect(addr) else {
        return false;
    };
    use std::io::{Read, Write};
    let _ = s.write_all(b"GET /readyz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n");
    let mut buf = String::new();
    let _ = s.read_to_string(&mut buf);
    buf.starts_with("HTTP/1.1 200")
}

/// Every string value of at least six characters under a key that
/// `facts.md` §3 marks as personal (contact, conversation and ticket
/// fields: identity, contact details, device, location, message content,
/// attachments, page URLs, free-text attributes), anywhere in a document.
pub fn personal_strings(v: &Value, under_personal: bool, out: &mut Vec<String>) {
    const KEYS: &[&str] = &[
        "email",
        "name",
        "phone",
        "external_id",
        "user_id",
        "pseudonym",
        "image_url",
        "avatar",
        "social_profiles",
        "body",
        "subject",
        "title",
        "description",
        "remark",
        "url",
        "attachments",
        "custom_attributes",
        "ticket_attributes",
        "location",
        "location_data",
        "city",
        "city_name",
        "region",
        "region_name",
        "country",
        "country_name",
        "postal_code",
        "formatted_phone",
        "browser",
        "browser_version",
        "browser_language",
        "os",
        "referrer",
        "utm_campaign",
        "utm_content",
        "utm_medium",
        "utm_source",
        "utm_term",
        "last_seen_ip",
        "ip_address",
        "user_agent_data",
    ];
    match v {
        Value::Object(m) => {
            for (k, val) in m {
                let personal = (under_personal && k != "type") || KEYS.contains(&k.as_str());
                personal_strings(val, personal, out);
            }
        }
        Value::Array(a) => a.iter().for_each(|x| personal_strings(x, under_personal, out)),
        // Intercom's own object ids (24 hex digits) are kept as ids, even
        // where a field such as `user_id` holds one.
        Value::String(s) if s.len() == 24 && s.bytes().all(|b| b.is_ascii_hexdigit()) => {}
        Value::String(s) if under_personal && s.chars().count() >= 6 => out.push(s.clone()),
        _ => {}
    }
}

/// The captured notifications: (file name, bytes, parsed).
pub fn captures() -> Vec<(String, Vec<u8>, Value)> {
    let mut files: Vec<_> = std::fs::read_dir(captures_dir())
        .unwrap()
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.extension().is_some_and(|e| e == "json"))
        .collect();
    files.sort();
    files
        .into_iter()
        .map(|p| {
            let bytes = std::fs::read(&p).unwrap();
            let v: Value = serde_json::from_slice(&bytes).unwrap();
            (p.file_name().unwrap().to_string_lossy().into_owned(), bytes, v)
        })
        .collect()
}

/// Stores every capture (deletions aside), then erases by every identifier
/// each carries, one by one, checking after each that every notification
/// carrying it is gone and nothing is left under it; what carries nobody
/// stays. Returns the personal strings of the erased notifications (those
/// also in a kept one excepted) plus the emails and external ids erased:
/// what no byte of the store may hold afterwards.
pub async fn erase_every_identifier_of_every_capture(app: &TestApp) -> Vec<String> {
    use serde_json::json;
    use std::collections::BTreeSet;
    let erase = |body: Value| async move {
        let r = app.admin_post("/admin/erase", body.clone()).await;
        assert_eq!(r.status(), 200, "{body}");
        r.json::<Value>().await.unwrap()
    };
    // `true`: only the event's erased record is served.
    let erased = |id: String| async move { app.erased(&id).await };
    // Deletions are left out: they would erase on their own before the loop.
    let captures: Vec<_> = captures()
        .into_iter()
        .filter(|(_, _, v)| v["id"].is_string() && !v["topic"].as_str().unwrap_or("").ends_with(".deleted"))
        .collect();
    // Two captures share a notification id: the second is a duplicate, so
    // only the first is stored (and looked at here).
    let mut seen = BTreeSet::new();
    let captures: Vec<_> = captures
        .into_iter()
        .filter(|(_, _, v)| seen.insert(v["id"].to_string()))
        .collect();
    for (name, bytes, _) in &captures {
        assert_eq!(app.post_signed(bytes).await.status(), 200, "{name}");
    }
    app.wait_idle().await;
    for (_, _, v) in &captures {
        app.wait_final(v["id"].as_str().unwrap()).await;
    }

    // The identifiers each capture carries, by kind, as the product reads
    // them; which captures carry each value is then checked one by one.
    let mut carried: Vec<(String, BTreeSet<(String, String)>)> = Vec::new();
    for (_, bytes, v) in &captures {
        let ids = intercom_webhooks::identifiers::identifiers(bytes);
        let mut set = BTreeSet::new();
        for p in &ids.persons {
            set.extend(p.contact_id.iter().map(|c| ("contact_id".to_string(), c.clone())));
            set.extend(p.emails.iter().map(|e| ("email".to_string(), e.clone())));
            set.extend(p.external_ids.iter().map(|x| ("external_id".to_string(), x.clone())));
        }
        set.extend(ids.other_emails.iter().map(|e| ("email".to_string(), e.clone())));
        carried.push((v["id"].as_str().unwrap().to_string(), set));
    }
    let total: usize = carried.iter().map(|(_, s)| s.len()).sum();
    assert!(total > 100, "the captures carry identifiers to try: {total}");

    let mut tried = 0;
    for i in 0..carried.len() {
        for (kind, value) in carried[i].1.clone() {
            let done = erase(json!({kind.as_str(): value, "local_only": true})).await;
            assert_eq!(done["dry_run"], false);
            tried += 1;
            for (id, set) in &carried {
                if set.iter().any(|(k, v)| k == &kind && v.eq_ignore_ascii_case(&value)) {
                    assert!(
                        erased(id.clone()).await,
                        "{id} carries the {kind} just erased and is still served"
                    );
                }
            }
            let again = erase(json!({kind.as_str(): value, "local_only": true, "dry_run": true})).await;
            assert_eq!(
                again["would_erase"]["local"]["events"],
                json!([]),
                "nothing left under {kind}: {again}"
            );
        }
    }
    assert_eq!(tried, total);
    // Everything that carried anybody is gone; what carried nobody stays.
    let mut kept = Vec::new();
    for (id, set) in &carried {
        let gone = erased(id.clone()).await;
        if set.is_empty() {
            assert!(!gone, "{id} names nobody and was kept");
            assert_eq!(app.event(id).await.0, 200, "{id} names nobody and was kept");
            kept.push(id.clone());
        } else {
            assert!(gone, "{id}");
        }
    }
    assert!(
        !kept.is_empty(),
        "some captures name nobody (articles, admins, companies)"
    );
    let mut kept_strings = BTreeSet::new();
    let mut erased_strings = BTreeSet::new();
    for (_, _, v) in &captures {
        let mut out = Vec::new();
        personal_strings(v, false, &mut out);
        if kept.iter().any(|k| v["id"] == k.as_str()) {
            kept_strings.extend(out);
        } else {
            erased_strings.extend(out);
        }
    }
    // Plus the identifiers themselves (emails and external ids; contact ids
    // stay in tombstones and the ledger, by design).
    for (_, set) in &carried {
        erased_strings.extend(
            set.iter()
                .filter(|(k, v)| k != "contact_id" && v.len() >= 6)
                .map(|(_, v)| v.clone()),
        );
    }
    let needles: Vec<String> = erased_strings
        .into_iter()
        .filter(|s| !kept_strings.contains(s))
        .collect();
    assert!(needles.len() > 50, "{}", needles.len());
    needles
}

/// What `GET /admin/events/{id}` serves of an erased event: its record,
/// status `erased`, with nothing of the person (no item id, no payload, no
/// history but the erasure, no error).
pub fn is_erased_record(code: u16, v: &Value) -> bool {
    code == 200
        && v["status"] == "erased"
        && v["erased_at"].is_string()
        && v["payload"].is_null()
        && v["payload_stored"] == false
        && v["item_id"].is_null()
        && v["last_error"].is_null()
        && v["body_bytes"] == 0
        && v["history"]
            .as_array()
            .is_some_and(|h| h.len() == 1 && h[0]["outcome"] == "erased")
}

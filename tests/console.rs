//! The on-call console (`/console` on the admin listener), on the real
//! server with a real store: sign-in, sessions, CSRF, escaping, masking and
//! paging over HTTP, then the same pages driven in headless Chromium.

mod common;

use std::time::Duration;

use common::*;
use reqwest::header::{HeaderMap, CONTENT_SECURITY_POLICY, LOCATION, SET_COOKIE};
use reqwest::StatusCode;
use serde_json::{json, Value};

/// A handler that fails stays failed at once (no retries to wait for).
const ONE_ATTEMPT: &str = "[worker]\nmax_attempts = 1\n";

const EMAIL: &str = "ada.console@example.org";
const NAME: &str = "Ada Lovelace-Console";

/// One failed event (a contact update without an id) and one processed
/// event; both carry the person's email and name. Returns their ids.
async fn seed(app: &TestApp) -> (&'static str, &'static str) {
    let bad = notification(
        "notif_console_bad",
        "contact.user.updated",
        json!({"type": "contact", "email": EMAIL, "name": NAME}),
        1767225600,
    );
    let good = notification(
        "notif_console_good",
        "contact.user.created",
        json!({"type": "contact", "id": "65f0c0ffee00000000000c01", "role": "user", "email": EMAIL, "name": NAME,
               "updated_at": "2026-01-01T00:00:00.000Z"}),
        1767225600,
    );
    assert_eq!(app.post_signed(&bad).await.status(), 200);
    assert_eq!(app.post_signed(&good).await.status(), 200);
    assert_eq!(app.wait_final("notif_console_bad").await["status"], "failed");
    assert_eq!(app.wait_final("notif_console_good").await["status"], "processed");
    ("notif_console_bad", "notif_console_good")
}

/// A browser without a browser: follows no redirect, keeps the session
/// cookie it is given.
struct Browserless {
    client: reqwest::Client,
    base: String,
    cookie: Option<String>,
}

impl Browserless {
    fn new(app: &TestApp) -> Self {
        Browserless {
            client: reqwest::Client::builder()
                .redirect(reqwest::redirect::Policy::none())
                .build()
                .unwrap(),
            base: format!("http://{}", app.admin),
            cookie: None,
        }
    }

    fn with_cookie(&self, req: reqwest::RequestBuilder) -> reqwest::RequestBuilder {
        match &self.cookie {
            Some(c) => req.header("cookie", format!("iw_console={c}")),
            None => req,
        }
    }

    async fn get(&self, path: &str) -> (StatusCode, HeaderMap, String) {
        let r = self
            .with_cookie(self.client.get(format!("{}{path}", self.base)))
            .send()
            .await
            .unwrap();
        (r.status(), r.headers().clone(), r.text().await.unwrap())
    }

    async fn post(&self, path: &str, form: &[(&str, &str)]) -> (StatusCode, HeaderMap, String) {
        let r = self
            .with_cookie(self.client.post(format!("{}{path}", self.base)).form(form))
            .send()
            .await
            .unwrap();
        (r.status(), r.headers().clone(), r.text().await.unwrap())
    }

    /// Signs in; keeps the cookie. Returns the answer's status.
    async fn sign_in(&mut self, token: &str) -> StatusCode {
        let (status, headers, _) = self.post("/console/login", &[("token", token)]).await;
        if let Some(c) = headers.get(SET_COOKIE) {
            let c = c.to_str().unwrap();
            self.cookie = Some(
                c.split(';')
                    .next()
                    .unwrap()
                    .trim_start_matches("iw_console=")
                    .to_string(),
            );
        }
        status
    }

    /// The CSRF token of the forms on a signed-in page.
    async fn csrf(&self) -> String {
        let (status, _, html) = self.get("/console").await;
        assert_eq!(status, 200);
        csrf_in(&html)
    }
}

fn csrf_in(html: &str) -> String {
    let at = html.find("name=\"csrf\" value=\"").expect("a CSRF field") + "name=\"csrf\" value=\"".len();
    html[at..at + 64].to_string()
}

fn location(h: &HeaderMap) -> &str {
    h.get(LOCATION).map(|v| v.to_str().unwrap()).unwrap_or("")
}

async fn event(app: &TestApp, id: &str) -> Value {
    app.admin_json(&format!("/admin/events/{id}")).await
}

fn outcomes(ev: &Value) -> Vec<String> {
    ev["history"]
        .as_array()
        .unwrap()
        .iter()
        .map(|h| h["outcome"].as_str().unwrap().to_string())
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_console_needs_a_session_whose_cookie_is_http_only_and_strict() {
    let dir = tempfile::tempdir().unwrap();
    let app = spawn_app_with(dir.path(), ONE_ATTEMPT, test_env()).await;
    let mut b = Browserless::new(&app);

    for page in [
        "/console",
        "/console/events",
        "/console/events/x",
        "/console/audit",
        "/console/cache",
    ] {
        let (status, h, _) = b.get(page).await;
        assert_eq!(status, StatusCode::SEE_OTHER, "{page}");
        assert_eq!(location(&h), "/console/login", "{page}");
    }
    let (status, h, html) = b.get("/console/login").await;
    assert_eq!(status, 200);
    assert!(html.contains("type=\"password\""));
    assert_eq!(
        h.get(CONTENT_SECURITY_POLICY).unwrap(),
        "default-src 'none'; style-src 'self'; img-src 'self'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'"
    );
    assert_eq!(h.get("x-frame-options").unwrap(), "DENY");
    assert_eq!(h.get("cache-control").unwrap(), "no-store");

    // A wrong token: no session.
    assert_eq!(b.sign_in("not-the-token").await, StatusCode::UNAUTHORIZED);
    assert!(b.cookie.is_none());
    let (_, h, _) = b.post("/console/login", &[("token", ADMIN_TOKEN)]).await;
    let cookie = h.get(SET_COOKIE).unwrap().to_str().unwrap().to_string();
    for attr in ["HttpOnly", "SameSite=Strict", "Path=/console", "Max-Age=43200"] {
        assert!(cookie.contains(attr), "{attr} in {cookie}");
    }
    assert_eq!(b.sign_in(ADMIN_TOKEN).await, StatusCode::SEE_OTHER);
    let (status, h, html) = b.get("/console").await;
    assert_eq!(status, 200, "{html}");
    assert!(html.contains("<h1>Overview</h1>"));
    assert!(h.get(CONTENT_SECURITY_POLICY).is_some());
    // Nothing from elsewhere, no script.
    assert!(!html.contains("<script"), "{html}");
    assert!(!html.contains("src=\"http") && !html.contains("href=\"http"), "{html}");
    let (status, h, css) = b.get("/console/static/console.css").await;
    assert_eq!(status, 200);
    assert!(h.get("content-type").unwrap().to_str().unwrap().starts_with("text/css"));
    assert!(css.contains("body"));
    // A made-up cookie is no session.
    b.cookie = Some("0".repeat(64));
    assert_eq!(b.get("/console").await.0, StatusCode::SEE_OTHER);
    // The admin API is not opened by a console cookie.
    assert_eq!(b.get("/admin/stats").await.0, StatusCode::UNAUTHORIZED);
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forms_that_change_something_need_the_sessions_csrf_token() {
    let dir = tempfile::tempdir().unwrap();
    let app = spawn_app_with(dir.path(), ONE_ATTEMPT, test_env()).await;
    let (bad, _) = seed(&app).await;
    let mut b = Browserless::new(&app);
    b.sign_in(ADMIN_TOKEN).await;
    let csrf = b.csrf().await;
    let before = outcomes(&event(&app, bad).await);

    // No token, a wrong one, and the right one without a session: refused.
    let (status, _, html) = b.post("/console/replay", &[("id", bad)]).await;
    assert_eq!(status, StatusCode::FORBIDDEN, "{html}");
    assert!(html.contains("nothing was done"));
    let wrong = "f".repeat(64);
    assert_eq!(
        b.post("/console/replay", &[("id", bad), ("csrf", &wrong)]).await.0,
        StatusCode::FORBIDDEN
    );
    let anonymous = Browserless::new(&app);
    let (status, h, _) = anonymous.post("/console/replay", &[("id", bad), ("csrf", &csrf)]).await;
    assert_eq!((status, location(&h)), (StatusCode::SEE_OTHER, "/console/login"));
    // Another session's token does not do either.
    let mut other = Browserless::new(&app);
    other.sign_in(ADMIN_TOKEN).await;
    assert_ne!(other.csrf().await, csrf);
    assert_eq!(
        other.post("/console/replay", &[("id", bad), ("csrf", &csrf)]).await.0,
        StatusCode::FORBIDDEN
    );
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(outcomes(&event(&app, bad).await), before, "nothing was replayed");

    // The confirmation page, then the replay.
    let (status, _, html) = b.get(&format!("/console/replay?id={bad}")).await;
    assert_eq!(status, 200);
    assert!(html.contains("id=\"matched\">1<"), "{html}");
    assert_eq!(csrf_in(&html), csrf);
    let (status, _, html) = b.post("/console/replay", &[("id", bad), ("csrf", &csrf)]).await;
    assert_eq!(status, 200, "{html}");
    assert!(html.contains("1 of 1 matching event(s) were queued"), "{html}");
    let ev = app.wait_final(bad).await;
    assert!(outcomes(&ev).contains(&"replayed".to_string()), "{ev}");

    // Sign-out needs the token too, and ends the session.
    assert_eq!(b.post("/console/logout", &[]).await.0, StatusCode::FORBIDDEN);
    assert_eq!(b.get("/console").await.0, 200);
    let (status, h, _) = b.post("/console/logout", &[("csrf", &csrf)]).await;
    assert_eq!((status, location(&h)), (StatusCode::SEE_OTHER, "/console/login"));
    assert!(h.get(SET_COOKIE).unwrap().to_str().unwrap().contains("Max-Age=0"));
    assert_eq!(b.get("/console").await.0, StatusCode::SEE_OTHER);
    assert_eq!(other.get("/console").await.0, 200, "other sessions go on");
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sessions_expire_when_idle_and_at_their_maximum_age() {
    let dir = tempfile::tempdir().unwrap();
    let app = spawn_app_with(
        dir.path(),
        "[admin]\nsession_idle = \"1s\"\nsession_max = \"3s\"\n",
        test_env(),
    )
    .await;
    let mut b = Browserless::new(&app);
    b.sign_in(ADMIN_TOKEN).await;
    assert_eq!(b.get("/console").await.0, 200);
    tokio::time::sleep(Duration::from_millis(1300)).await;
    let (status, h, _) = b.get("/console").await;
    assert_eq!(
        (status, location(&h)),
        (StatusCode::SEE_OTHER, "/console/login"),
        "idle"
    );

    // Kept busy, a session still ends at its maximum age.
    b.sign_in(ADMIN_TOKEN).await;
    let started = std::time::Instant::now();
    while started.elapsed() < Duration::from_millis(2500) {
        assert_eq!(b.get("/console").await.0, 200);
        tokio::time::sleep(Duration::from_millis(400)).await;
    }
    tokio::time::sleep(Duration::from_millis(700)).await;
    assert_eq!(b.get("/console").await.0, StatusCode::SEE_OTHER, "past session_max");
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failed_sign_ins_are_limited_per_address_and_a_right_token_is_not() {
    let dir = tempfile::tempdir().unwrap();
    let app = spawn_app_with(dir.path(), "[admin]\nfailed_auth_per_minute = 2\n", test_env()).await;
    let mut b = Browserless::new(&app);
    let codes = [
        b.sign_in("wrong-1").await,
        b.sign_in("wrong-2").await,
        b.sign_in("wrong-3").await,
    ];
    assert_eq!(
        codes,
        [
            StatusCode::UNAUTHORIZED,
            StatusCode::UNAUTHORIZED,
            StatusCode::TOO_MANY_REQUESTS
        ]
    );
    assert!(b.cookie.is_none());
    assert_eq!(b.sign_in(ADMIN_TOKEN).await, StatusCode::SEE_OTHER);
    assert_eq!(b.get("/console").await.0, 200);

    // Without an admin token configured there is no console.
    let dir = tempfile::tempdir().unwrap();
    let mut env = test_env();
    env.0.remove("INTERCOM_WEBHOOKS_ADMIN_TOKEN");
    let bare = spawn_app_with(dir.path(), "", env).await;
    let mut b = Browserless::new(&bare);
    assert_eq!(b.sign_in("").await, StatusCode::UNAUTHORIZED);
    assert_eq!(b.sign_in(ADMIN_TOKEN).await, StatusCode::UNAUTHORIZED);
    assert!(b.cookie.is_none());
    bare.stop().await;
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pages_escape_what_came_over_the_wire_and_mask_personal_data() {
    let dir = tempfile::tempdir().unwrap();
    let app = spawn_app_with(dir.path(), ONE_ATTEMPT, test_env()).await;
    let (bad, good) = seed(&app).await;
    // A topic no handler knows, chosen to be markup.
    let hostile = notification(
        "notif_console_<b>bold</b>",
        "<script>alert(1)</script>",
        json!({"type": "contact", "id": "c1", "email": EMAIL}),
        1767225600,
    );
    assert_eq!(app.post_signed(&hostile).await.status(), 200);
    app.wait_idle().await;
    let mut b = Browserless::new(&app);
    b.sign_in(ADMIN_TOKEN).await;

    // Listed a moment after its answer (the index is written just after
    // the log; it flaked once in CI).
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    let list = loop {
        let (status, _, list) = b.get("/console/events").await;
        assert_eq!(status, 200);
        if list.contains("alert(1)") || std::time::Instant::now() > deadline {
            break list;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert!(list.contains(bad) && list.contains(good), "{list}");
    assert!(!list.contains("<script>alert") && !list.contains("<b>bold"), "{list}");
    assert!(
        list.contains("&#60;script&#62;") || list.contains("&lt;script&gt;"),
        "{list}"
    );

    for id in [bad, good] {
        let (status, _, html) = b.get(&format!("/console/events/{id}")).await;
        assert_eq!(status, 200, "{html}");
        assert!(html.contains(id));
        for personal in [EMAIL, NAME, "ada.console"] {
            assert!(!html.contains(personal), "{personal} on the page of {id}");
        }
    }
    let (_, _, html) = b.get(&format!("/console/events/{bad}")).await;
    assert!(html.contains("contact item has no id"), "the error is shown");
    assert!(html.contains("id=\"replay-one\""), "a failed event can be replayed");
    // The cached contact: hashes, not the email.
    let (status, _, html) = b.get("/console/cache?kind=contact&id=65f0c0ffee00000000000c01").await;
    assert_eq!(status, 200, "{html}");
    assert!(
        html.contains("65f0c0ffee00000000000c01") && !html.contains(EMAIL),
        "{html}"
    );
    let (status, _, html) = b.get("/console/cache?kind=contact&id=nobody").await;
    assert_eq!(status, 404);
    assert!(html.contains("id=\"error\""));
    assert_eq!(b.get("/console/cache?kind=teammate&id=1").await.0, 400);
    assert_eq!(b.get("/console/events/notif_nobody").await.0, 404);
    // A bad filter is said, not a 500.
    let (status, _, html) = b.get("/console/events?status=lost").await;
    assert_eq!(status, 400);
    assert!(html.contains("unknown status"), "{html}");
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn event_pages_filter_and_page_by_cursor() {
    let dir = tempfile::tempdir().unwrap();
    let app = spawn_app_with(dir.path(), ONE_ATTEMPT, test_env()).await;
    let (bad, _) = seed(&app).await;
    for i in 0..60 {
        let body = notification(
            &format!("notif_console_page_{i:02}"),
            "conversation.admin.closed",
            json!({"type": "conversation", "id": format!("{}", 900 + i), "state": "closed", "updated_at": 1767225600 + i}),
            1767225600 + i,
        );
        assert_eq!(app.post_signed(&body).await.status(), 200);
    }
    app.wait_idle().await;
    let mut b = Browserless::new(&app);
    b.sign_in(ADMIN_TOKEN).await;

    let rows = |html: &str| html.matches("<tr class=\"status-").count();
    let (_, _, first) = b.get("/console/events?topic=conversation.*").await;
    assert_eq!(rows(&first), 50, "{first}");
    let before = &first[..first.find("\" id=\"older\"").expect("an older link")];
    let link = before[before.rfind("href=\"").unwrap() + 6..]
        .replace("&#38;", "&")
        .replace("&amp;", "&");
    assert!(
        link.contains("topic=conversation.%2A") || link.contains("topic=conversation.*"),
        "{link}"
    );
    let (_, _, second) = b.get(&link).await;
    assert_eq!(rows(&second), 10, "{second}");
    assert!(!second.contains("id=\"older\""));

    // Failed events through their index, with the set's replay.
    let (_, _, failed) = b.get("/console/events?status=failed").await;
    assert_eq!(rows(&failed), 1, "{failed}");
    assert!(failed.contains(bad) && failed.contains("id=\"replay-matching\""));
    let (status, _, confirm) = b.get("/console/replay?status=failed&topic=contact.*").await;
    assert_eq!(status, 200);
    assert!(confirm.contains("id=\"matched\">1<"), "{confirm}");
    let (_, _, none) = b.get("/console/replay?status=failed&topic=ticket.*").await;
    assert!(none.contains("id=\"nothing\""), "{none}");
    // Only failed events go in sets.
    assert_eq!(b.get("/console/replay?status=processed").await.0, 400);
    app.stop().await;
}

/// A page reads a bounded number of events however rarely its filter
/// matches, and says how far back it searched; the cursor goes on.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_listing_page_reads_at_most_its_scan_budget() {
    let dir = tempfile::tempdir().unwrap();
    let app = spawn_app(dir.path()).await;
    // Signed but not a notification: kept as `invalid` (and answered 202).
    assert!(app
        .post_signed(b"{\"not\": \"a notification\"}")
        .await
        .status()
        .is_success());
    for i in 0..20 {
        let body = notification(
            &format!("notif_scan_{i:02}"),
            "conversation.admin.closed",
            json!({"type": "conversation", "id": format!("{}", 700 + i)}),
            1767225600,
        );
        app.post_signed(&body).await;
    }
    app.wait_idle().await;
    let mut found = 0;
    let mut pages = 0;
    let mut after = String::new();
    loop {
        let page = app
            .admin_json(&format!("/admin/events?status=invalid&scan=6{after}"))
            .await;
        pages += 1;
        found += page["events"].as_array().unwrap().len();
        match page["next_cursor"].as_str() {
            Some(c) => {
                assert!(page["searched_to"].is_string(), "{page}");
                after = format!("&after={c}");
            }
            None => break,
        }
        assert!(pages < 10, "the cursor moves on");
    }
    assert_eq!(found, 1);
    assert_eq!(pages, 4, "21 events, 6 read per page");

    // A time limit already spent stops a page at its first check (every
    // 64 events read): 81 events take two pages.
    for i in 20..80 {
        let body = notification(
            &format!("notif_scan_{i:02}"),
            "conversation.admin.closed",
            json!({"type": "conversation", "id": format!("{}", 700 + i)}),
            1767225600,
        );
        app.post_signed(&body).await;
    }
    app.wait_idle().await;
    let first = app.admin_json("/admin/events?status=invalid&scan_ms=0").await;
    assert_eq!(first["events"], json!([]), "the invalid event is the oldest");
    let cursor = first["next_cursor"].as_str().expect("cut short by time, with a cursor");
    let second = app
        .admin_json(&format!("/admin/events?status=invalid&scan_ms=0&after={cursor}"))
        .await;
    assert_eq!(second["events"].as_array().unwrap().len(), 1, "{second}");
    assert!(second["next_cursor"].is_null(), "{second}");
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_overview_warns_prominently_before_intercom_pauses_delivery() {
    let dir = tempfile::tempdir().unwrap();
    let app = spawn_app_with(dir.path(), "[server]\nbad_signatures_per_minute = 1000\n", test_env()).await;
    let mut b = Browserless::new(&app);
    b.sign_in(ADMIN_TOKEN).await;
    let (_, _, html) = b.get("/console").await;
    assert!(!html.contains("id=\"pause-warning\""));
    for _ in 0..100 {
        app.post_with(b"{}", Some("sha1=0000000000000000000000000000000000000000"))
            .await;
    }
    let (_, _, html) = b.get("/console").await;
    assert!(html.contains("id=\"pause-warning\""), "{html}");
    assert!(html.contains("id=\"consecutive-errors\">100<"), "{html}");
    // One success clears it.
    let ok = notification(
        "notif_console_ok",
        "contact.user.created",
        json!({"type": "contact", "id": "c9"}),
        1767225600,
    );
    app.post_signed(&ok).await;
    let (_, _, html) = b.get("/console").await;
    assert!(!html.contains("id=\"pause-warning\""));
    let overview = app.admin_json("/admin/overview").await;
    assert_eq!(overview["webhook_health"]["consecutive_errors"], 0);
    app.stop().await;
}

/// `chromedriver` on a free port, stopped when dropped.
struct Driver {
    child: std::process::Child,
    url: String,
}

impl Driver {
    fn start() -> Self {
        let port = free_port().port();
        let child = std::process::Command::new("/usr/bin/chromedriver")
            .arg(format!("--port={port}"))
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .expect("chromedriver starts");
        let deadline = std::time::Instant::now() + Duration::from_secs(30);
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(std::time::Instant::now() < deadline, "chromedriver never listened");
            std::thread::sleep(Duration::from_millis(50));
        }
        Driver {
            child,
            url: format!("http://127.0.0.1:{port}"),
        }
    }
}

impl Drop for Driver {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Screenshots go outside the repository, to be looked at by hand.
async fn screenshot(browser: &fantoccini::Client, name: &str) {
    let dir = std::env::temp_dir().join("intercom-webhooks-console-screenshots");
    std::fs::create_dir_all(&dir).unwrap();
    let png = browser.screenshot().await.unwrap();
    assert!(png.starts_with(b"\x89PNG"), "a PNG screenshot");
    std::fs::write(dir.join(format!("{name}.png")), png).unwrap();
}

async fn click(browser: &fantoccini::Client, id: &str) {
    let el = browser.find(fantoccini::Locator::Id(id)).await.unwrap();
    el.click().await.unwrap();
}

async fn type_into(browser: &fantoccini::Client, id: &str, text: &str) {
    let el = browser.find(fantoccini::Locator::Id(id)).await.unwrap();
    el.send_keys(text).await.unwrap();
}

async fn wait_for(browser: &fantoccini::Client, id: &str) {
    browser.wait().for_element(fantoccini::Locator::Id(id)).await.unwrap();
}

/// In headless Chromium: sign in, the overview, filtering the events to
/// the failed ones, an event's page, and replaying it after confirming;
/// then the cache and audit pages. The session cookie is not readable by
/// the page (HttpOnly) and nothing personal is on any page.
#[cfg_attr(
    not(has_chromium),
    ignore = "needs Debian's chromium and chromium-driver (apt-get install chromium chromium-driver; .ci/run installs them)"
)]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn in_a_real_browser_on_call_signs_in_filters_and_replays_a_failed_event() {
    use fantoccini::Locator;

    let dir = tempfile::tempdir().unwrap();
    let app = spawn_app_with(dir.path(), ONE_ATTEMPT, test_env()).await;
    let (bad, good) = seed(&app).await;
    let driver = Driver::start();
    let mut caps = serde_json::Map::new();
    caps.insert(
        "goog:chromeOptions".into(),
        json!({
            "binary": "/usr/bin/chromium",
            "args": ["--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--window-size=1280,900"]
        }),
    );
    let browser = fantoccini::ClientBuilder::new(hyper_util::client::legacy::connect::HttpConnector::new())
        .capabilities(caps)
        .connect(&driver.url)
        .await
        .expect("a chromium session");
    let base = format!("http://{}", app.admin);
    let text = |sel: &'static str| {
        let browser = browser.clone();
        async move { browser.find(Locator::Css(sel)).await.unwrap().text().await.unwrap() }
    };

    // Signing in: a wrong token first.
    browser.goto(&format!("{base}/console")).await.unwrap();
    assert_eq!(browser.current_url().await.unwrap().path(), "/console/login");
    screenshot(&browser, "1-sign-in").await;
    type_into(&browser, "token", "wrong").await;
    click(&browser, "sign-in").await;
    // The answer is a new page: wait for it, as after every other click.
    wait_for(&browser, "error").await;
    assert!(text("#error").await.contains("not the admin token"));
    type_into(&browser, "token", ADMIN_TOKEN).await;
    click(&browser, "sign-in").await;
    wait_for(&browser, "backlog").await;
    assert_eq!(browser.current_url().await.unwrap().path(), "/console");
    assert_eq!(text("#failed").await, "1");
    screenshot(&browser, "2-overview").await;
    // The cookie is there, but not for scripts.
    let cookie = browser.get_named_cookie("iw_console").await.unwrap();
    assert_eq!(cookie.http_only(), Some(true));
    let script = browser.execute("return document.cookie", vec![]).await;
    assert!(
        script.is_err() || !script.unwrap().to_string().contains("iw_console"),
        "HttpOnly (or scripts refused by the CSP)"
    );

    // Events, filtered to the failed ones.
    browser
        .find(Locator::LinkText("Events"))
        .await
        .unwrap()
        .click()
        .await
        .unwrap();
    wait_for(&browser, "filters").await;
    let all = text("#events").await;
    assert!(all.contains(bad) && all.contains(good), "{all}");
    browser
        .find(Locator::Id("status"))
        .await
        .unwrap()
        .select_by_value("failed")
        .await
        .unwrap();
    type_into(&browser, "topic", "contact.*").await;
    click(&browser, "apply").await;
    wait_for(&browser, "replay-matching").await;
    let failed = text("#events").await;
    assert!(failed.contains(bad) && !failed.contains(good), "{failed}");
    screenshot(&browser, "3-failed-events").await;

    // The event's page.
    browser
        .find(Locator::LinkText(bad))
        .await
        .unwrap()
        .click()
        .await
        .unwrap();
    wait_for(&browser, "metadata").await;
    let meta = text("#metadata").await;
    assert!(
        meta.contains("failed") && meta.contains("contact item has no id"),
        "{meta}"
    );
    let page = browser.source().await.unwrap();
    assert!(!page.contains(EMAIL) && !page.contains(NAME), "masked");
    assert!(text("#history").await.contains("failed"));
    screenshot(&browser, "4-event").await;

    // Replay, after confirming.
    click(&browser, "replay-one").await;
    wait_for(&browser, "confirm").await;
    assert_eq!(text("#matched").await, "1");
    screenshot(&browser, "5-replay-confirm").await;
    click(&browser, "confirm").await;
    wait_for(&browser, "result").await;
    assert!(text("#result").await.contains("1 of 1"));
    screenshot(&browser, "6-replayed").await;
    let ev = app.wait_final(bad).await;
    assert!(outcomes(&ev).contains(&"replayed".to_string()), "{ev}");

    // The cache and the audit log.
    browser
        .goto(&format!(
            "{base}/console/cache?kind=contact&id=65f0c0ffee00000000000c01"
        ))
        .await
        .unwrap();
    let record = text("#record").await;
    assert!(
        record.contains("65f0c0ffee00000000000c01") && !record.contains(EMAIL),
        "{record}"
    );
    screenshot(&browser, "7-cache").await;
    // An audited action (the raw payload, through the admin API), then
    // its entry and a check against the head recorded elsewhere.
    assert_eq!(
        app.admin_get(&format!("/admin/events/{good}?raw=true")).await.status(),
        200
    );
    let head = app.admin_json("/admin/audit/verify").await["head"].clone();
    let head = format!("{}:{}", head["seq"], head["hash"].as_str().unwrap());
    browser.goto(&format!("{base}/console/audit")).await.unwrap();
    assert!(text("#entries").await.contains("payload_viewed"));
    type_into(&browser, "expect-head", &head).await;
    click(&browser, "verify-now").await;
    wait_for(&browser, "verify").await;
    let verify = text("#verify").await;
    assert!(
        verify.contains("verifies") && verify.contains("present, unchanged"),
        "{verify}"
    );
    screenshot(&browser, "8-audit").await;

    // Signing out ends the session.
    click(&browser, "sign-out").await;
    wait_for(&browser, "token").await;
    browser.goto(&format!("{base}/console")).await.unwrap();
    assert_eq!(browser.current_url().await.unwrap().path(), "/console/login");
    browser.close().await.unwrap();
    drop(driver);
    app.stop().await;
}

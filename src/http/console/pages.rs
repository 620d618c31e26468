//! The console's handlers: each runs `ops` actions and fills a view.

use askama::Template;
use axum::extract::{ConnectInfo, FromRequestParts, Path, Query, State};
use axum::http::request::Parts;
use axum::http::{header, StatusCode};
use axum::response::{Html, IntoResponse, Redirect, Response};
use axum::Form;
use serde::Deserialize;
use serde_json::Value;

use super::session::{Live, COOKIE};
use super::views::{self, AuditRow, EventRow, HistoryRow, StatusOption};
use crate::client::path_segment;
use crate::http::AppState;
use crate::ops::{
    Action, AuditList, AuditVerify, CacheShow, FilterQuery, ListEvents, OpsError, Overview, Replay, ReplayRequest,
    ShowEvent,
};
use crate::secret::constant_time_eq;
use crate::store::CacheKind;

/// Events shown on one page.
const PAGE: usize = 50;
/// Events one page reads at most, matching or not, and for how long (see
/// `EventFilter::scan_limit`): what keeps a page fast on any store, with a
/// cold cache too.
pub const SCAN_PER_PAGE: usize = 10_000;
const SCAN_MS_PER_PAGE: u64 = 40;
/// Audit entries shown, newest first.
const AUDIT_SHOWN: usize = 200;
/// Consecutive error answers from which the overview warns of a pause
/// (Intercom pauses at 1,000 within 15 minutes).
const PAUSE_WARNING_FROM: u64 = 100;

/// A request from a signed-in browser. Without a live session a page
/// answers with a redirect to the sign-in page, and nothing is done.
pub struct Signed {
    token: String,
    live: Live,
}

impl FromRequestParts<AppState> for Signed {
    type Rejection = Response;

    async fn from_request_parts(parts: &mut Parts, app: &AppState) -> Result<Self, Response> {
        super::cookie(&parts.headers, COOKIE)
            .and_then(|token| app.console.touch(&token).map(|live| Signed { token, live }))
            .ok_or_else(|| Redirect::to("/console/login").into_response())
    }
}

impl Signed {
    fn nav(&self) -> Option<String> {
        Some(self.live.csrf.clone())
    }

    /// A form that changes something must carry the session's CSRF token:
    /// the refusal when it does not.
    fn refuse_bad_csrf(&self, given: &str) -> Option<Response> {
        (!self.live.csrf_matches(given)).then(|| {
            error_page(
                self.nav(),
                StatusCode::FORBIDDEN,
                "This form's CSRF token is missing or is not this session's: nothing was done. Reload the page and try again.",
            )
        })
    }
}

fn render(status: StatusCode, page: impl Template) -> Response {
    match page.render() {
        Ok(html) => (status, Html(html)).into_response(),
        Err(e) => {
            tracing::error!(error = %e, "A console page failed to render.");
            (StatusCode::INTERNAL_SERVER_ERROR, "the page failed to render\n").into_response()
        }
    }
}

fn error_page(csrf: Option<String>, status: StatusCode, message: &str) -> Response {
    render(
        status,
        views::ErrorPage {
            csrf,
            status: status.as_u16(),
            message: message.to_string(),
        },
    )
}

/// An `ops` failure as a page (the same statuses as the admin API).
fn ops_error(signed: &Signed, e: OpsError) -> Response {
    let status = crate::http::admin::status_of(&e);
    let mut r = error_page(signed.nav(), status, &e.to_string());
    crate::http::admin::retry_later(status, &mut r);
    r
}

/// `key=value&…`, values percent-encoded; empty values left out.
fn query(pairs: &[(&str, &str)]) -> String {
    pairs
        .iter()
        .filter(|(_, v)| !v.is_empty())
        .map(|(k, v)| format!("{k}={}", path_segment(v)))
        .collect::<Vec<_>>()
        .join("&")
}

/// A value as shown back in a form: without control characters, and
/// bounded (a value that long is refused, and not echoed whole).
fn form_value(v: &str) -> String {
    v.chars().filter(|c| !c.is_control()).take(512).collect()
}

fn nonempty(s: &Option<String>) -> Option<String> {
    s.as_deref()
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(str::to_string)
}

// ---- sign-in ---------------------------------------------------------------

fn login_view(app: &AppState, error: Option<String>) -> views::Login {
    views::Login {
        csrf: None,
        error,
        idle: humantime::format_duration(app.settings.admin.session_idle).to_string(),
        max: humantime::format_duration(app.settings.admin.session_max).to_string(),
    }
}

pub async fn login_form(State(app): State<AppState>) -> Response {
    render(StatusCode::OK, login_view(&app, None))
}

#[derive(Deserialize)]
pub struct LoginForm {
    #[serde(default)]
    token: String,
}

/// A correct token starts a session; wrong ones are limited per source
/// address, like the admin API's.
pub async fn login(
    State(app): State<AppState>,
    ConnectInfo(peer): ConnectInfo<std::net::SocketAddr>,
    Form(form): Form<LoginForm>,
) -> Response {
    let Some(expected) = &app.settings.admin_token else {
        let message = "The console is disabled: set INTERCOM_WEBHOOKS_ADMIN_TOKEN to enable it.";
        return render(StatusCode::UNAUTHORIZED, login_view(&app, Some(message.into())));
    };
    if !constant_time_eq(form.token.as_bytes(), expected.expose().as_bytes()) {
        let limited = app
            .admin_failures
            .check_key(&crate::netaddr::source_key(peer.ip()))
            .is_err();
        let (status, message) = if limited {
            (
                StatusCode::TOO_MANY_REQUESTS,
                "Too many failed sign-ins from this address: wait a minute.",
            )
        } else {
            (StatusCode::UNAUTHORIZED, "That is not the admin token.")
        };
        tracing::warn!(status = status.as_u16(), "Console sign-in refused.");
        return render(status, login_view(&app, Some(message.into())));
    }
    let token = app.console.start();
    tracing::info!("Console session started.");
    let cookie = format!(
        "{COOKIE}={token}; Path=/console; HttpOnly; SameSite=Strict; Max-Age={}",
        app.settings.admin.session_max.as_secs()
    );
    ([(header::SET_COOKIE, cookie)], Redirect::to("/console")).into_response()
}

#[derive(Deserialize)]
pub struct CsrfForm {
    #[serde(default)]
    csrf: String,
}

pub async fn logout(State(app): State<AppState>, signed: Signed, Form(form): Form<CsrfForm>) -> Response {
    if let Some(refused) = signed.refuse_bad_csrf(&form.csrf) {
        return refused;
    }
    app.console.end(&signed.token);
    let cookie = format!("{COOKIE}=; Path=/console; HttpOnly; SameSite=Strict; Max-Age=0");
    ([(header::SET_COOKIE, cookie)], Redirect::to("/console/login")).into_response()
}

// ---- overview --------------------------------------------------------------

fn bytes(n: u64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut v = n as f64;
    let mut unit = 0;
    while v >= 1024.0 && unit + 1 < UNITS.len() {
        v /= 1024.0;
        unit += 1;
    }
    if unit == 0 {
        format!("{n} B")
    } else {
        format!("{v:.1} {}", UNITS[unit])
    }
}

fn age(secs: i64) -> String {
    humantime::format_duration(std::time::Duration::from_secs(secs.max(0) as u64)).to_string()
}

pub async fn overview(State(app): State<AppState>, signed: Signed) -> Response {
    let r = match Overview.run(app.ops.clone()).await {
        Ok(r) => r,
        Err(e) => return ops_error(&signed, e),
    };
    let rate = |v: Option<f64>| v.map_or("—".to_string(), |v| format!("{v:.1}/s"));
    let health = r.webhook_health.as_ref();
    let errors = health.map_or(0, |h| h.consecutive_errors);
    let pause_warning = (errors >= PAUSE_WARNING_FROM).then(|| {
        format!(
            "{errors} webhook deliveries in a row were answered with an error. Intercom pauses the subscription after 1,000 consecutive errors within 15 minutes and drops what it would have sent meanwhile."
        )
    });
    let page = views::Overview {
        csrf: signed.nav(),
        pause_warning,
        store_ready: r.store_ready,
        intake_rate: rate(r.intake_per_second),
        processed_rate: rate(r.processed_per_second),
        rate_window: r.rate_window_seconds.map_or(String::new(), |w| format!(", last {w} s")),
        pending_depth: r.pending_depth,
        oldest_pending: r.oldest_pending_age_secs.map_or("—".into(), age),
        failed: r.failed,
        consecutive_errors: errors,
        last_2xx: health.map_or("—".into(), |h| match &h.last_2xx_at {
            Some(at) => format!("{at} ({} ago)", age(h.seconds_since_last_2xx)),
            None => format!("none since the server started ({} ago)", age(h.seconds_since_last_2xx)),
        }),
        last_received: r.last_received_at.clone().unwrap_or_else(|| "—".into()),
        health_note: health.map_or(String::new(), |h| format!("{}.", h.note)),
        store_size: bytes(r.store_size_bytes),
        store_free: r.store_free_bytes.map_or("unknown".into(), bytes),
        erasures: r.erasure.erasures_in_ledger,
        to_shred: r.erasure.segments_to_shred,
    };
    render(StatusCode::OK, page)
}

// ---- events ----------------------------------------------------------------

#[derive(Debug, Default, Deserialize)]
pub struct EventsQuery {
    status: Option<String>,
    topic: Option<String>,
    since: Option<String>,
    until: Option<String>,
    after: Option<String>,
}

const STATUSES: [(&str, &str); 7] = [
    ("", "any"),
    ("pending", "pending"),
    ("processed", "processed"),
    ("skipped", "skipped"),
    ("retrying", "retrying"),
    ("failed", "failed"),
    ("invalid", "invalid"),
];

pub async fn events(State(app): State<AppState>, signed: Signed, Query(q): Query<EventsQuery>) -> Response {
    let (status, topic, since, until) = (
        nonempty(&q.status),
        nonempty(&q.topic),
        nonempty(&q.since),
        nonempty(&q.until),
    );
    let filter = FilterQuery {
        status: status.clone(),
        topic: topic.clone(),
        since: since.clone(),
        until: until.clone(),
        limit: Some(PAGE),
        after: nonempty(&q.after),
        scan: Some(SCAN_PER_PAGE),
        scan_ms: Some(SCAN_MS_PER_PAGE),
    };
    let s = |v: &Option<String>| form_value(v.as_deref().unwrap_or_default());
    let mut page = views::Events {
        csrf: signed.nav(),
        statuses: STATUSES
            .iter()
            .map(|&(value, label)| StatusOption {
                value,
                label,
                selected: value == s(&status),
            })
            .collect(),
        status: s(&status),
        topic: s(&topic),
        since: s(&since),
        until: s(&until),
        error: None,
        rows: Vec::new(),
        next_link: None,
        searched_to: None,
        replay_link: None,
    };
    let filters = [
        ("status", page.status.as_str()),
        ("topic", page.topic.as_str()),
        ("since", page.since.as_str()),
        ("until", page.until.as_str()),
    ];
    let list = match ListEvents(filter).run(app.ops.clone()).await {
        Ok(list) => list,
        Err(OpsError::BadRequest(m)) => {
            page.error = Some(m);
            return render(StatusCode::BAD_REQUEST, page);
        }
        Err(e) => return ops_error(&signed, e),
    };
    page.rows = list
        .events
        .into_iter()
        .map(|e| EventRow {
            link: path_segment(&e.id),
            id: e.id,
            topic: if e.topic.is_empty() {
                "(invalid)".into()
            } else {
                e.topic
            },
            status: e.status,
            received_at: e.received_at,
            item_type: e.item_type.unwrap_or_default(),
            attempts: e.attempts,
            deliveries: e.deliveries,
        })
        .collect();
    page.next_link = list.next_cursor.map(|c| {
        let mut pairs = filters.to_vec();
        pairs.push(("after", c.as_str()));
        format!("/console/events?{}", query(&pairs))
    });
    page.searched_to = list.searched_to.filter(|_| page.next_link.is_some());
    if page.status == "failed" && !page.rows.is_empty() {
        page.replay_link = Some(format!("/console/replay?{}", query(&filters)));
    }
    render(StatusCode::OK, page)
}

pub async fn event(State(app): State<AppState>, signed: Signed, Path(id): Path<String>) -> Response {
    let d = match (ShowEvent { id, raw: false }).run(app.ops.clone()).await {
        Ok(d) => d,
        Err(e) => return ops_error(&signed, e),
    };
    let e = &d.summary;
    let opt = |v: &Option<String>| v.clone().unwrap_or_else(|| "—".into());
    let fields = vec![
        ("Notification id", opt(&e.notification_id)),
        ("Topic", e.topic.clone()),
        ("Status", e.status.clone()),
        ("Received", e.received_at.clone()),
        ("Created in Intercom", opt(&e.created_at)),
        ("Last delivery", d.last_delivery_at.clone()),
        ("Deliveries", e.deliveries.to_string()),
        ("Handler attempts", e.attempts.to_string()),
        ("Next retry", opt(&d.retry_at)),
        ("Item", format!("{} {}", opt(&e.item_type), opt(&e.item_id))),
        ("Last error", opt(&e.last_error)),
        ("App id", opt(&d.app_id)),
        ("Body bytes", d.body_bytes.to_string()),
        (
            "Payload stored",
            match (&d.erased_at, d.payload_stored) {
                (Some(at), _) => format!("no (erased with its person at {at})"),
                (None, true) => "yes".into(),
                (None, false) => "no (purged)".into(),
            },
        ),
    ];
    let page = views::Event {
        csrf: signed.nav(),
        replay_link: (e.status != "invalid" && d.payload_stored)
            .then(|| format!("/console/replay?{}", query(&[("id", e.id.as_str())]))),
        id: e.id.clone(),
        fields,
        history: d
            .history
            .iter()
            .map(|h| HistoryRow {
                at: h.at.clone(),
                outcome: h.outcome.clone(),
                took: h
                    .duration_us
                    .map_or(String::new(), |us| format!("{:.1} ms", us as f64 / 1000.0)),
                error: h.error.clone().unwrap_or_default(),
            })
            .collect(),
        payload: serde_json::to_string_pretty(&d.payload).unwrap_or_default(),
    };
    render(StatusCode::OK, page)
}

// ---- replay ----------------------------------------------------------------

/// One event by id, or failed events by filter: the console replays
/// failed events only, in sets (any event, one at a time).
#[derive(Debug, Default, Deserialize)]
pub struct ReplaySelection {
    #[serde(default)]
    csrf: String,
    id: Option<String>,
    status: Option<String>,
    topic: Option<String>,
    since: Option<String>,
    until: Option<String>,
}

impl ReplaySelection {
    fn request(&self, dry_run: bool) -> Result<ReplayRequest, OpsError> {
        if let Some(id) = nonempty(&self.id) {
            return Ok(ReplayRequest {
                ids: vec![id],
                dry_run,
                ..ReplayRequest::default()
            });
        }
        if nonempty(&self.status).as_deref() != Some("failed") {
            return Err(OpsError::BadRequest(
                "the console replays one event, or failed events by filter (status=failed)".into(),
            ));
        }
        Ok(ReplayRequest {
            status: Some("failed".into()),
            topic: nonempty(&self.topic),
            since: nonempty(&self.since),
            until: nonempty(&self.until),
            dry_run,
            ..ReplayRequest::default()
        })
    }

    fn hidden(&self) -> Vec<(&'static str, String)> {
        [
            ("id", &self.id),
            ("status", &self.status),
            ("topic", &self.topic),
            ("since", &self.since),
            ("until", &self.until),
        ]
        .into_iter()
        .filter_map(|(k, v)| nonempty(v).map(|v| (k, v)))
        .collect()
    }

    fn describe(&self) -> String {
        match nonempty(&self.id) {
            Some(id) => format!("Event {id}."),
            None => {
                let mut parts = vec!["Failed events".to_string()];
                if let Some(t) = nonempty(&self.topic) {
                    parts.push(format!("with a topic matching {t}"));
                }
                if let Some(s) = nonempty(&self.since) {
                    parts.push(format!("received since {s}"));
                }
                if let Some(u) = nonempty(&self.until) {
                    parts.push(format!("received until {u}"));
                }
                format!("{}.", parts.join(", "))
            }
        }
    }

    fn back(&self) -> String {
        match nonempty(&self.id) {
            Some(id) => format!("/console/events/{}", path_segment(&id)),
            None => {
                let h = self.hidden();
                let pairs: Vec<(&str, &str)> = h.iter().map(|(k, v)| (*k, v.as_str())).collect();
                format!("/console/events?{}", query(&pairs))
            }
        }
    }
}

/// The confirmation: what would be replayed (a dry run), and the form.
pub async fn replay_confirm(
    State(app): State<AppState>,
    signed: Signed,
    Query(sel): Query<ReplaySelection>,
) -> Response {
    let result = match sel.request(true) {
        Ok(req) => Replay(req).run(app.ops.clone()).await,
        Err(e) => Err(e),
    };
    let matched = match result {
        Ok(r) => r.matched,
        Err(e) => return ops_error(&signed, e),
    };
    let page = views::ReplayConfirm {
        csrf: signed.nav(),
        csrf_value: signed.live.csrf.clone(),
        selection: sel.describe(),
        matched,
        hidden: sel.hidden(),
        back: sel.back(),
    };
    render(StatusCode::OK, page)
}

pub async fn replay(State(app): State<AppState>, signed: Signed, Form(sel): Form<ReplaySelection>) -> Response {
    if let Some(refused) = signed.refuse_bad_csrf(&sel.csrf) {
        return refused;
    }
    let result = match sel.request(false) {
        Ok(req) => Replay(req).run(app.ops.clone()).await,
        Err(e) => Err(e),
    };
    match result {
        Ok(r) => {
            tracing::info!(matched = r.matched, replayed = r.replayed, "Replay from the console.");
            let page = views::ReplayDone {
                csrf: signed.nav(),
                matched: r.matched,
                replayed: r.replayed,
                back: sel.back(),
            };
            render(StatusCode::OK, page)
        }
        Err(e) => ops_error(&signed, e),
    }
}

// ---- cache and audit -------------------------------------------------------

#[derive(Debug, Default, Deserialize)]
pub struct CacheQuery {
    kind: Option<String>,
    id: Option<String>,
}

pub async fn cache(State(app): State<AppState>, signed: Signed, Query(q): Query<CacheQuery>) -> Response {
    let kind_name = nonempty(&q.kind).unwrap_or_else(|| "contact".into());
    let id = nonempty(&q.id).unwrap_or_default();
    let mut page = views::Cache {
        csrf: signed.nav(),
        kind: form_value(&kind_name),
        id: form_value(&id),
        error: None,
        record: None,
    };
    let kind = match kind_name.as_str() {
        "contact" => CacheKind::Contact,
        "conversation" => CacheKind::Conversation,
        _ => {
            page.error = Some("kind is contact or conversation".into());
            return render(StatusCode::BAD_REQUEST, page);
        }
    };
    if id.is_empty() {
        return render(StatusCode::OK, page);
    }
    match (CacheShow { kind, id }).run(app.ops.clone()).await {
        Ok(r) => {
            page.record = Some(serde_json::to_string_pretty(&r.0).unwrap_or_default());
            render(StatusCode::OK, page)
        }
        Err(OpsError::NotFound(m)) => {
            page.error = Some(m);
            render(StatusCode::NOT_FOUND, page)
        }
        Err(e) => ops_error(&signed, e),
    }
}

#[derive(Debug, Default, Deserialize)]
pub struct AuditQuery {
    verify: Option<String>,
    expect_head: Option<String>,
}

fn text(v: &Value) -> String {
    match v {
        Value::String(s) => s.clone(),
        Value::Null => String::new(),
        other => other.to_string(),
    }
}

pub async fn audit(State(app): State<AppState>, signed: Signed, Query(q): Query<AuditQuery>) -> Response {
    let listing = match AuditList.run(app.ops.clone()).await {
        Ok(l) => l,
        Err(e) => return ops_error(&signed, e),
    };
    let total = listing.entries.len();
    let entries: Vec<AuditRow> = listing
        .entries
        .iter()
        .rev()
        .take(AUDIT_SHOWN)
        .map(|e| AuditRow {
            seq: text(&e["seq"]),
            at: text(&e["at"]),
            action: if e["unreadable"] == true {
                "(unreadable)".into()
            } else {
                text(&e["action"])
            },
            details: text(&e["details"]),
        })
        .collect();
    let m = &app.metrics;
    let last = m.audit_last_verified.get();
    let periodic = if last == 0 {
        "Not checked yet since the server started (it checks the chain every hour).".to_string()
    } else {
        format!(
            "Checked every hour; last at {}: {}.",
            crate::timefmt::format_secs(last),
            if m.audit_chain_ok.get() == 1 {
                "the chain verifies"
            } else {
                "THE CHAIN DOES NOT VERIFY"
            }
        )
    };
    let expect_head = nonempty(&q.expect_head);
    let verify = if q.verify.is_some() {
        let check = match (AuditVerify {
            expect_head: expect_head.clone(),
        })
        .run(app.ops.clone())
        .await
        {
            Ok(c) => c,
            Err(e) => return ops_error(&signed, e),
        };
        let mut rows = vec![
            (
                "Result",
                if check.ok {
                    "verifies".to_string()
                } else {
                    "DOES NOT VERIFY".to_string()
                },
            ),
            ("Entries", check.entries.to_string()),
        ];
        if let Some(h) = &check.head {
            rows.push((
                "Head",
                match &h.hash {
                    Some(hash) => format!("{}:{hash}", h.seq),
                    None => "none (the log is empty)".into(),
                },
            ));
        }
        if let Some(seq) = check.first_bad_seq {
            rows.push(("First bad entry", seq.to_string()));
        }
        if let Some(reason) = &check.reason {
            rows.push(("Reason", reason.clone()));
        }
        // Set only when a head was given and found unchanged (a missing or
        // changed one makes the check fail, with its reason above).
        if check.expected_head_checked == Some(true) {
            rows.push(("Expected head", "present, unchanged".into()));
        }
        Some(rows)
    } else {
        None
    };
    let page = views::Audit {
        csrf: signed.nav(),
        periodic,
        verify,
        expect_head: expect_head.unwrap_or_default(),
        shown_note: format!("The newest {} of {total} entries, newest first.", entries.len()),
        entries,
    };
    render(StatusCode::OK, page)
}

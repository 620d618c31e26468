//! The console's pages as askama templates (in `templates/`, compiled into
//! the binary, every value HTML-escaped). Each struct is what one page
//! shows, already formatted: the templates only lay it out.

use askama::Template;

/// Every page but sign-in has the signed-in navigation, whose sign-out form
/// carries the session's CSRF token (`csrf`).
#[derive(Template)]
#[template(path = "login.html", config = "src/http/console/askama.toml")]
pub struct Login {
    pub csrf: Option<String>,
    pub error: Option<String>,
    pub idle: String,
    pub max: String,
}

#[derive(Template)]
#[template(path = "error.html", config = "src/http/console/askama.toml")]
pub struct ErrorPage {
    pub csrf: Option<String>,
    pub status: u16,
    pub message: String,
}

#[derive(Template)]
#[template(path = "overview.html", config = "src/http/console/askama.toml")]
pub struct Overview {
    pub csrf: Option<String>,
    pub pause_warning: Option<String>,
    pub store_ready: bool,
    pub intake_rate: String,
    pub processed_rate: String,
    pub rate_window: String,
    pub pending_depth: usize,
    pub oldest_pending: String,
    pub failed: usize,
    pub consecutive_errors: u64,
    pub last_2xx: String,
    pub last_received: String,
    pub health_note: String,
    pub store_size: String,
    pub store_free: String,
    pub erasures: usize,
    pub to_shred: usize,
}

pub struct StatusOption {
    pub value: &'static str,
    pub label: &'static str,
    pub selected: bool,
}

pub struct EventRow {
    pub id: String,
    /// `id`, encoded for a URL path.
    pub link: String,
    pub topic: String,
    pub status: String,
    pub received_at: String,
    pub item_type: String,
    pub attempts: u32,
    pub deliveries: u32,
}

#[derive(Template)]
#[template(path = "events.html", config = "src/http/console/askama.toml")]
pub struct Events {
    pub csrf: Option<String>,
    pub statuses: Vec<StatusOption>,
    pub status: String,
    pub topic: String,
    pub since: String,
    pub until: String,
    pub error: Option<String>,
    pub rows: Vec<EventRow>,
    pub next_link: Option<String>,
    pub searched_to: Option<String>,
    pub replay_link: Option<String>,
}

pub struct HistoryRow {
    pub at: String,
    pub outcome: String,
    pub took: String,
    pub error: String,
}

#[derive(Template)]
#[template(path = "event.html", config = "src/http/console/askama.toml")]
pub struct Event {
    pub csrf: Option<String>,
    pub id: String,
    pub fields: Vec<(&'static str, String)>,
    pub history: Vec<HistoryRow>,
    pub payload: String,
    pub replay_link: Option<String>,
}

#[derive(Template)]
#[template(path = "replay_confirm.html", config = "src/http/console/askama.toml")]
pub struct ReplayConfirm {
    pub csrf: Option<String>,
    pub csrf_value: String,
    pub selection: String,
    pub matched: usize,
    /// The selection again, as the confirming form's hidden fields.
    pub hidden: Vec<(&'static str, String)>,
    pub back: String,
}

#[derive(Template)]
#[template(path = "replay_done.html", config = "src/http/console/askama.toml")]
pub struct ReplayDone {
    pub csrf: Option<String>,
    pub matched: usize,
    pub replayed: u64,
    pub back: String,
}

#[derive(Template)]
#[template(path = "cache.html", config = "src/http/console/askama.toml")]
pub struct Cache {
    pub csrf: Option<String>,
    pub kind: String,
    pub id: String,
    pub error: Option<String>,
    pub record: Option<String>,
}

pub struct AuditRow {
    pub seq: String,
    pub at: String,
    pub action: String,
    pub details: String,
}

#[derive(Template)]
#[template(path = "audit.html", config = "src/http/console/askama.toml")]
pub struct Audit {
    pub csrf: Option<String>,
    pub periodic: String,
    pub verify: Option<Vec<(&'static str, String)>>,
    pub expect_head: String,
    pub shown_note: String,
    pub entries: Vec<AuditRow>,
}

//! How the CLI prints results as text (`--json` prints them as they are).

use serde::Serialize;
use serde_json::Value;

/// Prints a result as JSON (`--json`) or as the text `text` makes of it.
pub fn print_doc(result: &impl Serialize, json_out: bool, text: impl Fn(&Value) -> String) {
    let doc = serde_json::to_value(result).unwrap_or_default();
    let doc = &doc;
    if json_out {
        println!("{}", serde_json::to_string_pretty(doc).unwrap_or_default());
    } else {
        println!("{}", text(doc));
    }
}

fn s(v: &Value) -> String {
    match v {
        Value::Null => "-".into(),
        Value::String(s) => s.clone(),
        other => other.to_string(),
    }
}

pub fn render_events(d: &Value) -> String {
    let mut out = format!(
        "{:<25} {:<10} {:<36} {:>4}  {}\n",
        "RECEIVED", "STATUS", "TOPIC", "DLV", "ID"
    );
    for e in d["events"].as_array().into_iter().flatten() {
        out.push_str(&format!(
            "{:<25} {:<10} {:<36} {:>4}  {}\n",
            s(&e["received_at"]),
            s(&e["status"]),
            s(&e["topic"]),
            s(&e["deliveries"]),
            s(&e["id"])
        ));
    }
    if let Some(c) = d["next_cursor"].as_str() {
        out.push_str(&format!("(more: --after {c})\n"));
    }
    out.trim_end().to_string()
}

pub fn render_stats(d: &Value) -> String {
    let mut out = String::from("events by status:\n");
    for (k, v) in d["events_by_status"].as_object().into_iter().flatten() {
        out.push_str(&format!("  {k:<10} {v}\n"));
    }
    out.push_str("events by topic:\n");
    for (k, v) in d["events_by_topic"].as_object().into_iter().flatten() {
        out.push_str(&format!("  {k:<40} {v}\n"));
    }
    for key in [
        "pending_depth",
        "oldest_pending_age_secs",
        "last_received_at",
        "duplicates_seen",
        "signature_failures_since_start",
        "store_size_bytes",
    ] {
        if d.get(key).is_some() {
            out.push_str(&format!("{key}: {}\n", s(&d[key])));
        }
    }
    if let Some(h) = d.get("webhook_health") {
        out.push_str(&format!(
            "webhook health: {} consecutive errors, last 2xx {} ({}s ago)\n",
            s(&h["consecutive_errors"]),
            s(&h["last_2xx_at"]),
            s(&h["seconds_since_last_2xx"])
        ));
    }
    out.trim_end().to_string()
}

pub fn render_purge(d: &Value) -> String {
    let mut out = String::from(if d["dry_run"].as_bool() == Some(true) {
        "would remove:\n"
    } else {
        "removed:\n"
    });
    for (k, v) in d["removed"].as_object().into_iter().flatten() {
        out.push_str(&format!("  {k:<14} {v}\n"));
    }
    out.trim_end().to_string()
}

pub fn render_audit(d: &Value) -> String {
    let mut out = String::new();
    for e in d["entries"].as_array().into_iter().flatten() {
        out.push_str(&format!(
            "{:>6} {:<25} {:<12} {}\n",
            s(&e["seq"]),
            s(&e["at"]),
            s(&e["action"]),
            e["details"]
        ));
    }
    if out.is_empty() {
        out.push_str("(no audit entries)");
    }
    out.trim_end().to_string()
}

pub fn render_replay(d: &Value) -> String {
    let mut s = format!("matched {}, replayed {}", d["matched"], d["replayed"]);
    if let Some(ids) = d["ids"].as_array() {
        for id in ids {
            s.push_str(&format!("\n  {}", id.as_str().unwrap_or("")));
        }
    }
    s
}

pub fn render_verify(d: &Value) -> String {
    match d["ok"].as_bool() {
        Some(true) => format!(
            "audit log intact: {} entries, head {}:{}",
            d["entries"],
            d["head"]["seq"],
            d["head"]["hash"].as_str().unwrap_or("-")
        ),
        _ if d["first_bad_seq"].is_null() => format!("audit log BROKEN: {}", d["reason"].as_str().unwrap_or("")),
        _ => format!(
            "audit log BROKEN at entry {}: {}",
            d["first_bad_seq"],
            d["reason"].as_str().unwrap_or("")
        ),
    }
}

pub fn pretty(d: &Value) -> String {
    serde_json::to_string_pretty(d).unwrap_or_default()
}

pub fn render_discovery(d: &Value) -> String {
    let mut out = format!(
        "{:<13} {:<32} {:<8} {:<7} {:<9} {}\n",
        "MODEL", "NAME", "TYPE", "CUSTOM", "PERSONAL", "WHY"
    );
    for a in d["attributes"].as_array().into_iter().flatten() {
        out.push_str(&format!(
            "{:<13} {:<32} {:<8} {:<7} {:<9} {}\n",
            s(&a["model"]),
            s(&a["name"]),
            s(&a["data_type"]),
            if a["custom"] == true { "yes" } else { "no" },
            s(&a["verdict"]),
            s(&a["reason"])
        ));
    }
    out.push_str("\nSuggested allow-list (review it; nothing is kept until you configure it):\n\n[cache.contacts]\ncustom_attributes = [");
    let names: Vec<String> = d["suggested_allow_list"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|n| format!("{n}"))
        .collect();
    out.push_str(&names.join(", "));
    out.push(']');
    out
}

/// `erase --status`: a line a job, newest first.
pub fn render_erasure_jobs(d: &Value) -> String {
    let mut out = String::new();
    for j in d["jobs"].as_array().into_iter().flatten() {
        out.push_str(&format!(
            "{:<26} {:<10} {:<9} started {:<25} finished {:<25} events {:<5} {}\n",
            s(&j["id"]),
            s(&j["state"]),
            s(&j["trigger"]),
            s(&j["started_at"]),
            s(&j["finished_at"]),
            s(&j["local"]["events"]),
            j["error"].as_str().map(|e| format!("error: {e}")).unwrap_or_default(),
        ));
    }
    if out.is_empty() {
        out.push_str("(no erasure jobs)");
    }
    out.trim_end().to_string()
}

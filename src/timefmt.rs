//! Time helpers: Intercom sends timestamps as unix seconds or RFC 3339
//! strings (facts.md §6.5); operators type RFC 3339 times or durations.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde_json::Value;
use time::format_description::well_known::Rfc3339;
use time::OffsetDateTime;

/// Milliseconds since the unix epoch, now.
pub fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

/// A timestamp from a webhook payload, in unix seconds: an integer (seconds,
/// or milliseconds when it is too large to be seconds), a float, a numeric
/// string or an RFC 3339 string. `null`, empty or unparsable values give `None`.
pub fn parse_timestamp(value: &Value) -> Option<i64> {
    match value {
        Value::Number(n) => {
            let secs = n.as_i64().or_else(|| n.as_f64().map(|f| f as i64))?;
            // 10^11 s is the year 5138: anything larger is milliseconds.
            Some(if secs > 100_000_000_000 { secs / 1000 } else { secs })
        }
        Value::String(s) => parse_timestamp_str(s),
        _ => None,
    }
}

fn parse_timestamp_str(s: &str) -> Option<i64> {
    let s = s.trim();
    if s.is_empty() {
        return None;
    }
    if let Ok(n) = s.parse::<i64>() {
        return parse_timestamp(&Value::from(n));
    }
    OffsetDateTime::parse(s, &Rfc3339).ok().map(|t| t.unix_timestamp())
}

/// RFC 3339 text for unix milliseconds (UTC).
pub fn format_ms(ms: i64) -> String {
    OffsetDateTime::from_unix_timestamp_nanos(i128::from(ms) * 1_000_000)
        .ok()
        .and_then(|t| t.format(&Rfc3339).ok())
        .unwrap_or_else(|| ms.to_string())
}

/// RFC 3339 text for unix seconds (UTC).
pub fn format_secs(secs: i64) -> String {
    format_ms(secs.saturating_mul(1000))
}

/// An operator's time bound: an RFC 3339 time, or a duration ago (`2h`, `30m`).
/// Returns unix milliseconds.
pub fn parse_time_bound(s: &str, now_ms: i64) -> Result<i64, String> {
    if let Ok(t) = OffsetDateTime::parse(s.trim(), &Rfc3339) {
        return Ok((t.unix_timestamp_nanos() / 1_000_000) as i64);
    }
    match humantime::parse_duration(s.trim()) {
        Ok(d) => Ok(now_ms - d.as_millis() as i64),
        Err(_) => Err(format!("'{s}' is neither an RFC 3339 time nor a duration such as 2h")),
    }
}

/// A humantime duration from config (`90s`, `30d`, `7y`).
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    humantime::parse_duration(s.trim()).map_err(|e| format!("'{s}': {e}"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn parses_every_form_intercom_uses() {
        assert_eq!(parse_timestamp(&json!(1767225600)), Some(1767225600));
        assert_eq!(parse_timestamp(&json!(1767225600123i64)), Some(1767225600));
        assert_eq!(
            parse_timestamp(&json!("2026-01-01T00:00:00.000+00:00")),
            Some(1767225600)
        );
        assert_eq!(parse_timestamp(&json!("2026-01-01T00:00:00.000Z")), Some(1767225600));
        assert_eq!(parse_timestamp(&json!("1767225600")), Some(1767225600));
        assert_eq!(parse_timestamp(&json!(null)), None);
        assert_eq!(parse_timestamp(&json!("")), None);
        assert_eq!(parse_timestamp(&json!("yesterday")), None);
    }

    #[test]
    fn time_bounds_take_rfc3339_or_durations() {
        assert_eq!(parse_time_bound("2026-01-01T00:00:00Z", 0).unwrap(), 1_767_225_600_000);
        assert_eq!(parse_time_bound("2h", 10_000_000).unwrap(), 2_800_000);
        assert!(parse_time_bound("soon", 0).is_err());
    }
}

/// `#[serde(with = "humantime_serde_compat")]`: a duration written as
/// people type it in the config file ("30s", "1h 30m").
pub mod humantime_serde_compat {
    use std::time::Duration;

    pub fn serialize<S: serde::Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&humantime::format_duration(*d).to_string())
    }
}

//! Times on the wire as dionysus-rb writes them: ISO-8601 with milliseconds
//! (`2022-08-12T13:24:24.000Z`), whatever precision chrono would use.

use serde_json::Value;

/// Rewrites every string that is an RFC 3339 timestamp with the millisecond precision
/// dionysus-rb uses (`2022-08-12T13:24:24.000Z`); other values are unchanged. chrono writes
/// `2022-08-12T13:24:24Z` or nanoseconds; the instant is the same either way.
pub fn normalize_timestamps(value: Value) -> Value {
    match value {
        Value::String(text) => Value::String(normalize_timestamp_text(text)),
        Value::Array(items) => Value::Array(items.into_iter().map(normalize_timestamps).collect()),
        Value::Object(map) => Value::Object(map.into_iter().map(|(k, v)| (k, normalize_timestamps(v))).collect()),
        other => other,
    }
}

fn normalize_timestamp_text(text: String) -> String {
    let bytes = text.as_bytes();
    let looks_like = bytes.len() >= 20
        && bytes.len() <= 40
        && bytes[4] == b'-'
        && bytes[7] == b'-'
        && bytes[10] == b'T'
        && bytes[13] == b':'
        && bytes[16] == b':';
    if !looks_like {
        return text;
    }
    match chrono::DateTime::parse_from_rfc3339(&text) {
        Ok(time) if text.ends_with('Z') => super::envelope::format_timestamp(&time.with_timezone(&chrono::Utc)),
        Ok(time) => time.to_rfc3339_opts(chrono::SecondsFormat::Millis, true),
        Err(_) => text,
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    #[test]
    fn timestamps_are_normalised_to_milliseconds() {
        let value = json!({"a": "2022-08-12T13:24:24Z", "b": ["2022-08-12T13:24:24.123456789Z"], "c": "2022-08-12 not a time", "d": 5});
        assert_eq!(
            normalize_timestamps(value),
            json!({"a": "2022-08-12T13:24:24.000Z", "b": ["2022-08-12T13:24:24.123Z"], "c": "2022-08-12 not a time", "d": 5})
        );
        assert_eq!(normalize_timestamps(json!("2022-08-12T15:24:24+02:00")), json!("2022-08-12T15:24:24.000+02:00"));
    }
}

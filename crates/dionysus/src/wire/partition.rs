//! The partition key rules of the wire (W-5, P-26): how an attribute value becomes a partition
//! key (dionysus-rb's Ruby `to_i`), and how a partition key picks a partition (librdkafka's
//! default partitioner: CRC-32 of its bytes modulo the partition count), so messages of one
//! key land where a Ruby producer puts them.
//!
//! Which attribute (or resolver) gives a record's partition key is the producer's business.

use serde_json::Value;

/// A partition key from an attribute value, rendered as dionysus-rb renders it (Ruby's
/// `value.to_i.to_s`, P-26): integers as decimal strings, `null` as `"0"`, strings by their
/// leading integer (`"12abc"` → `"12"`, `"abc"` → `"0"`), floats truncated.
pub fn partition_key_from_value(value: &Value) -> String {
    match value {
        Value::Null => "0".to_owned(),
        Value::Bool(flag) => u8::from(*flag).to_string(),
        Value::Number(number) => match (number.as_i64(), number.as_u64(), number.as_f64()) {
            (Some(int), _, _) => int.to_string(),
            (None, Some(uint), _) => uint.to_string(),
            (None, None, Some(float)) if float.is_finite() => format!("{}", float.trunc() as i128),
            _ => "0".to_owned(),
        },
        Value::String(text) => leading_integer(text),
        Value::Array(_) | Value::Object(_) => "0".to_owned(),
    }
}

/// Ruby's `String#to_i`: optional leading whitespace, an optional sign, then digits
/// (underscores between digits allowed); anything else gives 0.
fn leading_integer(text: &str) -> String {
    let trimmed = text.trim_start();
    let (negative, rest) = match trimmed.as_bytes().first() {
        Some(b'-') => (true, &trimmed[1..]),
        Some(b'+') => (false, &trimmed[1..]),
        _ => (false, trimmed),
    };
    let mut digits = String::new();
    let mut previous_digit = false;
    for c in rest.chars() {
        if c.is_ascii_digit() {
            digits.push(c);
            previous_digit = true;
        } else if c == '_' && previous_digit {
            previous_digit = false;
        } else {
            break;
        }
    }
    let digits = digits.trim_start_matches('0');
    match (digits.is_empty(), negative) {
        (true, _) => "0".to_owned(),
        (false, true) => format!("-{digits}"),
        (false, false) => digits.to_owned(),
    }
}

/// The partition dionysus-rb's producer (librdkafka's default `consistent_random`
/// partitioner) picks for a non-empty partition key: CRC-32 of its bytes modulo the partition
/// count. Messages of one partition key land where the Ruby producer puts them.
pub fn partition_for(partition_key: &[u8], partition_count: i32) -> i32 {
    let count = u32::try_from(partition_count.max(1)).unwrap_or(1);
    let partition = crc32fast::hash(partition_key) % count;
    // `partition < count <= i32::MAX`, so the conversion cannot fail.
    i32::try_from(partition).unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    #[test]
    fn partition_keys_render_like_ruby_to_i() {
        // Vector p16: attribute keys go through to_i.to_s.
        let cases = [
            (json!(1), "1"),
            (json!(2), "2"),
            (Value::Null, "0"),
            (json!("12abc"), "12"),
            (json!("abc"), "0"),
            (json!("  -7x"), "-7"),
            (json!("1_000"), "1000"),
            (json!("007"), "7"),
            (json!(3.9), "3"),
            (json!("550e8400-e29b-41d4-a716-446655440000"), "550"),
        ];
        for (value, expected) in cases {
            assert_eq!(partition_key_from_value(&value), expected, "{value}");
        }
    }

    #[test]
    fn partition_is_crc32_of_the_partition_key() {
        // CRC-32 (IEEE) of "2" is 0x1ad5be0d.
        assert_eq!(crc32fast::hash(b"2"), 0x1ad5_be0d);
        assert_eq!(partition_for(b"2", 12), (0x1ad5_be0d_u32 % 12) as i32);
        assert_eq!(partition_for(b"anything", 1), 0);
        assert_eq!(partition_for(b"x", 0), 0);
    }
}

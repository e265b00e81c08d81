//! Whether one path segment looks like a value (an id) rather than a name.

/// Longest segment kept as a literal of a learned template: anything longer is a value. Names
/// in real APIs are short; a long segment is data (or a client growing the template tree).
pub const MAX_LITERAL_SEGMENT_BYTES: usize = 128;

/// True for numbers, UUIDs, long hex strings, e-mail-like strings, long token-like strings,
/// card and social security numbers, and anything longer than [`MAX_LITERAL_SEGMENT_BYTES`].
pub fn looks_variable(segment: &str) -> bool {
    let bytes = segment.as_bytes();
    if bytes.is_empty() {
        return false;
    }
    if bytes.len() > MAX_LITERAL_SEGMENT_BYTES {
        return true;
    }
    // A card or social security number must never become part of an operation's name.
    if crate::model::disclosure::is_secret_value(segment) {
        return true;
    }
    if bytes.iter().all(u8::is_ascii_digit) {
        return true;
    }
    if is_uuid(bytes) {
        return true;
    }
    let has_digit = bytes.iter().any(u8::is_ascii_digit);
    if bytes.len() >= 8 && has_digit && bytes.iter().all(u8::is_ascii_hexdigit) {
        return true;
    }
    if let Some(at) = segment.find('@')
        && at > 0
        && segment[at + 1..].contains('.')
    {
        return true;
    }
    // Opaque tokens: long, base64/url-safe alphabet, letters mixed with digits.
    bytes.len() >= 20
        && has_digit
        && bytes.iter().any(u8::is_ascii_alphabetic)
        && bytes.iter().all(|b| {
            b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'=' | b'.' | b'~' | b'+')
        })
}

fn is_uuid(b: &[u8]) -> bool {
    b.len() == 36
        && b.iter().enumerate().all(|(i, c)| match i {
            8 | 13 | 18 | 23 => *c == b'-',
            _ => c.is_ascii_hexdigit(),
        })
}

#[cfg(test)]
mod tests {
    use super::{MAX_LITERAL_SEGMENT_BYTES, looks_variable};

    #[test]
    fn classifies_ids_and_names() {
        for v in [
            "42",
            "0",
            "6f1c2a3e-1d2b-4c5d-9e8f-0a1b2c3d4e5f",
            "deadbeef01",
            "a@b.io",
            "eyJhbGciOiJIUzI1NiJ9abc123",
            &"a".repeat(MAX_LITERAL_SEGMENT_BYTES + 1),
            "078-05-1120",
            "4111-1111-1111-1111",
        ] {
            assert!(looks_variable(v), "{v}");
        }
        for v in [
            "api",
            "v1",
            "accounts",
            "balance",
            "transferFunds",
            "deadbeef",
            "me",
        ] {
            assert!(!looks_variable(v), "{v}");
        }
    }
}

//! What a single parameter value looks like: its kind (JSON type or string class), the classes
//! of characters it contains, and suspicious constructs (traversal, template expressions, SQL
//! and script fragments). The learned profile stores counts of these; a detector compares a new
//! value against them.

use std::borrow::Cow;
use std::sync::LazyLock;

use aho_corasick::AhoCorasick;

use serde::{Deserialize, Serialize};

use super::format::{FormatSet, formats_of};

/// Kind of one value: the JSON type, and for strings a class.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub enum ValueKind {
    Null,
    Boolean,
    Integer,
    Number,
    Object,
    Array,
    EmptyString,
    Uuid,
    Email,
    Phone,
    NumericString,
    Hex,
    Token,
    FreeText,
}

/// Coarse type family used for type-confusion checks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TypeFamily {
    Null,
    Boolean,
    Number,
    String,
    Object,
    Array,
}

impl ValueKind {
    pub fn family(self) -> TypeFamily {
        match self {
            Self::Null => TypeFamily::Null,
            Self::Boolean => TypeFamily::Boolean,
            Self::Integer | Self::Number => TypeFamily::Number,
            Self::Object => TypeFamily::Object,
            Self::Array => TypeFamily::Array,
            _ => TypeFamily::String,
        }
    }

    /// Kinds whose values name an object (an account, a user, a phone number) rather than
    /// describe something: distinct values of these are what enumeration counts.
    pub fn is_identifier_like(self) -> bool {
        matches!(
            self,
            Self::Uuid
                | Self::Email
                | Self::Phone
                | Self::Hex
                | Self::NumericString
                | Self::Integer
                | Self::Token
        )
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Self::Null => "null",
            Self::Boolean => "boolean",
            Self::Integer => "integer",
            Self::Number => "number",
            Self::Object => "object",
            Self::Array => "array",
            Self::EmptyString => "empty string",
            Self::Uuid => "UUID",
            Self::Email => "e-mail address",
            Self::Phone => "phone number",
            Self::NumericString => "numeric string",
            Self::Hex => "hex string",
            Self::Token => "token",
            Self::FreeText => "free text",
        }
    }
}

/// Character classes, one bit each (see [`CHAR_CLASS_NAMES`]).
pub const CHAR_CLASS_NAMES: [&str; 30] = [
    "digit",
    "lower-case letter",
    "upper-case letter",
    "space",
    "'-'",
    "'_'",
    "'.'",
    "'@'",
    "'+'",
    "'/'",
    "':'",
    "','",
    "'='",
    "'&'",
    "'?'",
    "'#'",
    "'%'",
    "quote",
    "angle bracket",
    "parenthesis",
    "brace or bracket",
    "'$'",
    "';'",
    "'|'",
    "backslash",
    "'!'",
    "'*'",
    "'~' or '^'",
    "control character",
    "non-ASCII character",
];

/// Classes that carry syntax in SQL, shells, templates or markup; new ones in a field are
/// suspicious even at medium sensitivity.
pub const RISKY_CHAR_CLASSES: u32 = (1 << 17)
    | (1 << 18)
    | (1 << 19)
    | (1 << 20)
    | (1 << 21)
    | (1 << 22)
    | (1 << 23)
    | (1 << 24)
    | (1 << 28);

/// Suspicious constructs, one bit each.
pub const MARKER_NAMES: [&str; 9] = [
    "path traversal sequence",
    "template expression",
    "JNDI lookup",
    "SQL fragment",
    "script or markup",
    "shell command syntax",
    "line break",
    "NUL byte",
    "interpreter introspection",
];

/// Everything the model keeps about one value.
#[derive(Debug, Clone, PartialEq)]
pub struct ValueFacts {
    pub kind: ValueKind,
    pub chars: u32,
    pub markers: u16,
    pub length: usize,
    /// Numeric value for JSON numbers.
    pub number: Option<f64>,
    /// The formats a text value follows (empty for other values).
    pub formats: FormatSet,
}

fn char_class(c: char) -> u32 {
    let bit = match c {
        '0'..='9' => 0,
        'a'..='z' => 1,
        'A'..='Z' => 2,
        ' ' => 3,
        '-' => 4,
        '_' => 5,
        '.' => 6,
        '@' => 7,
        '+' => 8,
        '/' => 9,
        ':' => 10,
        ',' => 11,
        '=' => 12,
        '&' => 13,
        '?' => 14,
        '#' => 15,
        '%' => 16,
        '\'' | '"' | '`' => 17,
        '<' | '>' => 18,
        '(' | ')' => 19,
        '{' | '}' | '[' | ']' => 20,
        '$' => 21,
        ';' => 22,
        '|' => 23,
        '\\' => 24,
        '!' => 25,
        '*' => 26,
        '~' | '^' => 27,
        c if c.is_control() => 28,
        c if !c.is_ascii() => 29,
        _ => return 0,
    };
    1 << bit
}

/// Constructs searched in lower-cased text, with their marker bit.
const MARKER_PATTERNS: [(&str, u16); 32] = [
    ("../", 0),
    ("..\\", 0),
    ("/..", 0),
    ("${", 1),
    ("{{", 1),
    ("#{", 1),
    ("<%", 1),
    ("jndi:", 2),
    ("' or ", 3),
    ("\" or ", 3),
    (" or 1=1", 3),
    ("union select", 3),
    ("union all select", 3),
    ("select ", 3),
    ("--", 3),
    ("/*", 3),
    ("sleep(", 3),
    ("drop table", 3),
    ("<script", 4),
    ("javascript:", 4),
    ("onerror=", 4),
    ("onload=", 4),
    ("<img", 4),
    ("<svg", 4),
    ("<iframe", 4),
    ("$(", 5),
    ("&&", 5),
    ("|| ", 5),
    ("; ", 5),
    ("__globals__", 8),
    ("__import__", 8),
    ("__class__", 8),
];

/// Bytes after which a marker can start; values without any of them skip the pattern search.
fn may_hold_marker(text: &str) -> bool {
    text.bytes().any(|b| {
        matches!(
            b,
            b'.' | b'$'
                | b'{'
                | b'#'
                | b'<'
                | b'j'
                | b'J'
                | b'\''
                | b'"'
                | b' '
                | b'-'
                | b'/'
                | b's'
                | b'S'
                | b'd'
                | b'D'
                | b'o'
                | b'&'
                | b'|'
                | b';'
                | b'_'
                | b'\\'
        )
    })
}

/// One automaton over every marker pattern: a single pass over the value instead of one
/// substring search per pattern (this scan runs for every parameter of every request).
static MARKER_AUTOMATON: LazyLock<Option<AhoCorasick>> =
    LazyLock::new(|| AhoCorasick::new(MARKER_PATTERNS.iter().map(|(p, _)| *p)).ok());

/// The marker bits of every pattern `lower` contains.
fn pattern_markers(lower: &str) -> u16 {
    let mut markers = 0u16;
    match MARKER_AUTOMATON.as_ref() {
        Some(automaton) => {
            for found in automaton.find_overlapping_iter(lower) {
                if let Some((_, bit)) = MARKER_PATTERNS.get(found.pattern().as_usize()) {
                    markers |= 1 << bit;
                }
            }
        }
        None => {
            for (pattern, bit) in MARKER_PATTERNS {
                if markers & (1 << bit) == 0 && lower.contains(pattern) {
                    markers |= 1 << bit;
                }
            }
        }
    }
    markers
}

fn markers_of(text: &str) -> u16 {
    let mut markers = 0u16;
    if text.contains('\n') || text.contains('\r') {
        markers |= 1 << 6;
    }
    if text.contains('\0') {
        markers |= 1 << 7;
    }
    if !may_hold_marker(text) {
        return markers;
    }
    let lower: Cow<'_, str> = if text.bytes().any(|b| b.is_ascii_uppercase()) {
        Cow::Owned(text.to_ascii_lowercase())
    } else {
        Cow::Borrowed(text)
    };
    markers |= pattern_markers(&lower);
    // "select " and "--" are common in prose; count them as SQL only next to a quote or ';'.
    if markers & (1 << 3) != 0
        && !(lower.contains('\'')
            || lower.contains('"')
            || lower.contains(';')
            || lower.contains(" or ")
            || lower.contains("union"))
    {
        markers &= !(1 << 3);
    }
    markers
}

/// Percent-decodes when the text holds escapes, so that `%2e%2e%2f` is seen as `../`.
fn decoded(text: &str) -> Cow<'_, str> {
    if text.contains('%') {
        let decoded = percent_encoding::percent_decode_str(text).decode_utf8_lossy();
        if decoded != text {
            return Cow::Owned(decoded.into_owned());
        }
    }
    Cow::Borrowed(text)
}

fn is_hex(text: &str) -> bool {
    text.bytes().all(|b| b.is_ascii_hexdigit())
}

pub(crate) fn is_uuid(text: &str) -> bool {
    let bytes = text.as_bytes();
    bytes.len() == 36
        && bytes.iter().enumerate().all(|(i, b)| {
            if matches!(i, 8 | 13 | 18 | 23) {
                *b == b'-'
            } else {
                b.is_ascii_hexdigit()
            }
        })
}

pub(crate) fn is_email(text: &str) -> bool {
    let Some((local, domain)) = text.split_once('@') else {
        return false;
    };
    !local.is_empty()
        && domain.contains('.')
        && !domain.starts_with('.')
        && !domain.ends_with('.')
        && !text.contains(char::is_whitespace)
        && !domain.contains('@')
        && text.len() <= 254
}

pub(crate) fn is_phone(text: &str) -> bool {
    let digits = text.bytes().filter(u8::is_ascii_digit).count();
    (7..=15).contains(&digits)
        && text
            .bytes()
            .all(|b| b.is_ascii_digit() || matches!(b, b'+' | b' ' | b'-' | b'(' | b')' | b'.'))
        && (text.starts_with('+') || text.bytes().any(|b| !b.is_ascii_digit()))
        && !text.contains("..")
}

pub(crate) fn is_numeric(text: &str) -> bool {
    let body = text.strip_prefix('-').unwrap_or(text);
    !body.is_empty()
        && body.bytes().all(|b| b.is_ascii_digit() || b == b'.')
        && body.bytes().filter(|b| *b == b'.').count() <= 1
        && body.bytes().any(|b| b.is_ascii_digit())
}

fn is_token(text: &str) -> bool {
    text.len() >= 16
        && text.bytes().all(|b| {
            b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b'=' | b'+' | b'/')
        })
        && text.bytes().any(|b| b.is_ascii_digit())
        && text.bytes().any(|b| b.is_ascii_alphabetic())
}

/// String class of a text value.
pub fn string_kind(text: &str) -> ValueKind {
    if text.is_empty() {
        ValueKind::EmptyString
    } else if is_uuid(text) {
        ValueKind::Uuid
    } else if is_numeric(text) {
        ValueKind::NumericString
    } else if is_email(text) {
        ValueKind::Email
    } else if is_phone(text) {
        ValueKind::Phone
    } else if text.len() >= 8 && is_hex(text) && text.bytes().any(|b| b.is_ascii_digit()) {
        ValueKind::Hex
    } else if is_token(text) {
        ValueKind::Token
    } else {
        ValueKind::FreeText
    }
}

/// Facts about a text value (path segment, query value, header, cookie, JSON string).
pub fn text_facts(raw: &str) -> ValueFacts {
    let text = decoded(raw);
    let chars = text.chars().fold(0u32, |acc, c| acc | char_class(c));
    ValueFacts {
        kind: string_kind(&text),
        chars,
        markers: markers_of(&text),
        length: text.chars().count(),
        number: None,
        formats: formats_of(&text),
    }
}

/// Facts about a JSON scalar or container (containers are described by their kind only).
pub fn json_facts(value: &serde_json::Value) -> ValueFacts {
    use serde_json::Value;
    match value {
        Value::String(text) => text_facts(text),
        Value::Number(n) => {
            let kind = if n.is_i64() || n.is_u64() {
                ValueKind::Integer
            } else {
                ValueKind::Number
            };
            let repr = n.to_string();
            let chars = repr.chars().fold(0u32, |acc, c| acc | char_class(c));
            ValueFacts {
                kind,
                chars,
                markers: 0,
                length: repr.len(),
                number: n.as_f64(),
                formats: FormatSet::NONE,
            }
        }
        Value::Bool(_) => ValueFacts {
            kind: ValueKind::Boolean,
            chars: 0,
            markers: 0,
            length: 0,
            number: None,
            formats: FormatSet::NONE,
        },
        Value::Null => ValueFacts {
            kind: ValueKind::Null,
            chars: 0,
            markers: 0,
            length: 0,
            number: None,
            formats: FormatSet::NONE,
        },
        Value::Array(items) => ValueFacts {
            kind: ValueKind::Array,
            chars: 0,
            markers: 0,
            length: items.len(),
            number: None,
            formats: FormatSet::NONE,
        },
        Value::Object(fields) => ValueFacts {
            kind: ValueKind::Object,
            chars: 0,
            markers: 0,
            length: fields.len(),
            number: None,
            formats: FormatSet::NONE,
        },
    }
}

/// Names of the bits set in `mask`, from `names`.
pub fn bit_names(mask: u32, names: &[&'static str]) -> Vec<&'static str> {
    names
        .iter()
        .enumerate()
        .filter(|(bit, _)| mask & (1 << bit) != 0)
        .map(|(_, name)| *name)
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn string_classes() {
        assert_eq!(
            string_kind("3f2504e0-4f89-11d3-9a0c-0305e82c3301"),
            ValueKind::Uuid
        );
        assert_eq!(string_kind("alice@example.com"), ValueKind::Email);
        assert_eq!(string_kind("+49 151 1234567"), ValueKind::Phone);
        assert_eq!(string_kind("+4915112345678"), ValueKind::Phone);
        assert_eq!(string_kind("4412"), ValueKind::NumericString);
        assert_eq!(string_kind("-12.50"), ValueKind::NumericString);
        assert_eq!(string_kind("deadbeef01"), ValueKind::Hex);
        assert_eq!(
            string_kind("eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiIxIn0"),
            ValueKind::Token
        );
        assert_eq!(string_kind("rent for may"), ValueKind::FreeText);
        assert_eq!(string_kind(""), ValueKind::EmptyString);
    }

    #[test]
    fn markers_find_attack_constructs() {
        assert_ne!(text_facts("../../etc/passwd").markers & 1, 0);
        assert_ne!(text_facts("..%2f..%2fetc%2fpasswd").markers & 1, 0);
        assert_ne!(
            text_facts("document${jndi:ldap://x/a}").markers & (1 << 2),
            0
        );
        assert_ne!(text_facts("';SELECT * FROM users--").markers & (1 << 3), 0);
        assert_ne!(
            text_facts("<script>alert(1)</script>").markers & (1 << 4),
            0
        );
        assert_ne!(text_facts("9306\nSUSPECTED: user").markers & (1 << 6), 0);
        assert_ne!(
            text_facts("{{get_flashed_messages.__globals__}}").markers & (1 << 8),
            0
        );
        assert_eq!(text_facts("rent for may").markers, 0);
        assert_eq!(
            text_facts("Mozilla/5.0 (X11; Linux x86_64; rv:28.0) Gecko/20100101").markers
                & (1 << 3),
            0
        );
    }

    #[test]
    fn json_numbers() {
        let facts = json_facts(&serde_json::json!(-250.5));
        assert_eq!(facts.kind, ValueKind::Number);
        assert_eq!(facts.number, Some(-250.5));
        assert_ne!(facts.chars & (1 << 4), 0);
        assert_eq!(json_facts(&serde_json::json!(12)).kind, ValueKind::Integer);
    }
}

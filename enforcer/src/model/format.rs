//! Value formats: which well-known formats a text value follows (e-mail address, phone number,
//! UUID, date, date and time, numeric string, hex string, token, URL, slug, words, free text).
//!
//! A value usually follows several formats at once — `4412` is a numeric string, a slug and a
//! few words; `2024-05-01` a date, a date-time prefix and a slug — so a value is described by
//! the *set* of formats it follows ([`FormatSet`]), and a parameter's profile counts, per
//! format, the learned values that followed it (`ParamProfile::formats`, plain counts that
//! merge by addition). The parameter's format is then the most specific one that nearly every
//! learned value followed (see `detect::shape`): a username position is a slug, an `email`
//! field an e-mail address. Judging a value by that format rather than by its character
//! classes lets what varies freely inside the format vary (a digit in an e-mail's local part,
//! a dot in a slug), and flags what breaks it (an e-mail address without `@`, a phone number
//! in words).

use serde::{Deserialize, Serialize};

/// One value format, from the most specific to the least ([`ValueFormat::ALL`] is in that
/// order).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub enum ValueFormat {
    Uuid,
    Email,
    Date,
    DateTime,
    Phone,
    Numeric,
    Hex,
    Url,
    Token,
    Slug,
    Words,
    /// Any text (every string value follows it).
    Text,
}

impl ValueFormat {
    /// Every format, most specific first.
    pub const ALL: [Self; 12] = [
        Self::Uuid,
        Self::Email,
        Self::Date,
        Self::DateTime,
        Self::Phone,
        Self::Numeric,
        Self::Hex,
        Self::Url,
        Self::Token,
        Self::Slug,
        Self::Words,
        Self::Text,
    ];

    fn bit(self) -> u16 {
        1 << (self as u16)
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Self::Uuid => "UUID",
            Self::Email => "e-mail address",
            Self::Date => "date",
            Self::DateTime => "date and time",
            Self::Phone => "phone number",
            Self::Numeric => "numeric string",
            Self::Hex => "hex string",
            Self::Url => "URL",
            Self::Token => "token",
            Self::Slug => "slug",
            Self::Words => "words",
            Self::Text => "free text",
        }
    }

    /// Character classes (bits of `value::CHAR_CLASS_NAMES`) that vary freely inside the
    /// format: a new one of these in a value that follows the format is ordinary variation, not
    /// a deviation. Classes that carry syntax elsewhere (quotes, brackets, `;`, `$`) are left
    /// out, except where the format's own grammar has them (a phone number's parentheses).
    pub fn alphabet(self) -> u32 {
        const DIGIT: u32 = 1;
        const LOWER: u32 = 1 << 1;
        const UPPER: u32 = 1 << 2;
        const SPACE: u32 = 1 << 3;
        const DASH: u32 = 1 << 4;
        const UNDERSCORE: u32 = 1 << 5;
        const DOT: u32 = 1 << 6;
        const AT: u32 = 1 << 7;
        const PLUS: u32 = 1 << 8;
        const SLASH: u32 = 1 << 9;
        const COLON: u32 = 1 << 10;
        const COMMA: u32 = 1 << 11;
        const EQUALS: u32 = 1 << 12;
        const AMPERSAND: u32 = 1 << 13;
        const QUESTION: u32 = 1 << 14;
        const HASH: u32 = 1 << 15;
        const PERCENT: u32 = 1 << 16;
        const PARENS: u32 = 1 << 19;
        const BANG: u32 = 1 << 25;
        const TILDE: u32 = 1 << 27;
        const NON_ASCII: u32 = 1 << 29;
        const ALNUM: u32 = DIGIT | LOWER | UPPER;
        match self {
            Self::Uuid | Self::Hex => ALNUM,
            Self::Email => ALNUM | DOT | DASH | UNDERSCORE | PLUS | AT,
            Self::Date => DIGIT | DASH | SLASH | DOT,
            Self::DateTime => ALNUM | DASH | SLASH | DOT | COLON | PLUS | SPACE,
            Self::Phone => DIGIT | PLUS | SPACE | DASH | DOT | PARENS,
            Self::Numeric => DIGIT | DOT | DASH,
            Self::Url => {
                ALNUM
                    | DOT
                    | DASH
                    | UNDERSCORE
                    | SLASH
                    | COLON
                    | QUESTION
                    | EQUALS
                    | AMPERSAND
                    | PERCENT
                    | HASH
                    | PLUS
                    | TILDE
                    | COMMA
            }
            Self::Token => ALNUM | DASH | UNDERSCORE | DOT | EQUALS | PLUS | SLASH,
            Self::Slug => ALNUM | DASH | UNDERSCORE | DOT,
            Self::Words => ALNUM | SPACE | DOT | COMMA | DASH | UNDERSCORE | BANG | NON_ASCII,
            Self::Text => 0,
        }
    }
}

/// The formats one value follows (one bit per [`ValueFormat`]); empty for values that are not
/// text (numbers, booleans, null, containers).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct FormatSet(u16);

impl FormatSet {
    pub const NONE: Self = Self(0);

    pub fn contains(self, format: ValueFormat) -> bool {
        self.0 & format.bit() != 0
    }

    pub fn is_empty(self) -> bool {
        self.0 == 0
    }

    fn insert(&mut self, format: ValueFormat) {
        self.0 |= format.bit();
    }

    /// The formats both sets hold.
    pub fn intersection(self, other: Self) -> Self {
        Self(self.0 & other.0)
    }

    /// Whether every format of `other` is in this set.
    pub fn contains_all(self, other: Self) -> bool {
        self.0 & other.0 == other.0
    }

    /// The formats in the set, most specific first.
    pub fn iter(self) -> impl Iterator<Item = ValueFormat> {
        ValueFormat::ALL
            .into_iter()
            .filter(move |f| self.contains(*f))
    }

    /// The most specific format of the set.
    pub fn most_specific(self) -> Option<ValueFormat> {
        self.iter().next()
    }
}

/// The formats `text` (already percent-decoded) follows.
pub fn formats_of(text: &str) -> FormatSet {
    let mut set = FormatSet::NONE;
    set.insert(ValueFormat::Text);
    if text.is_empty() {
        return set;
    }
    let bytes = text.as_bytes();
    if super::value::is_uuid(text) {
        set.insert(ValueFormat::Uuid);
    }
    if super::value::is_email(text) {
        set.insert(ValueFormat::Email);
    }
    if is_date(bytes) {
        set.insert(ValueFormat::Date);
        set.insert(ValueFormat::DateTime);
    } else if is_date_time(bytes) {
        set.insert(ValueFormat::DateTime);
    }
    if super::value::is_phone(text) {
        set.insert(ValueFormat::Phone);
    }
    if super::value::is_numeric(text) {
        set.insert(ValueFormat::Numeric);
    }
    if bytes.iter().all(u8::is_ascii_hexdigit) {
        set.insert(ValueFormat::Hex);
    }
    if is_url(text) {
        set.insert(ValueFormat::Url);
    }
    if is_token(bytes) {
        set.insert(ValueFormat::Token);
    }
    if is_slug(bytes) {
        set.insert(ValueFormat::Slug);
    }
    if is_words(text) {
        set.insert(ValueFormat::Words);
    }
    set
}

fn all_digits(bytes: &[u8]) -> bool {
    !bytes.is_empty() && bytes.iter().all(u8::is_ascii_digit)
}

/// `2024-05-01`, `2024/05/01`, `01.05.2024`, `05/01/2024`.
fn is_date(b: &[u8]) -> bool {
    let digits = |r: std::ops::Range<usize>| b.get(r).is_some_and(all_digits);
    match b.len() {
        10 if digits(0..4) && digits(5..7) && digits(8..10) => {
            b[4] == b[7] && matches!(b[4], b'-' | b'/')
        }
        10 if digits(0..2) && digits(3..5) && digits(6..10) => {
            b[2] == b[5] && matches!(b[2], b'.' | b'/' | b'-')
        }
        _ => false,
    }
}

/// A date followed by a time (`2024-05-01T12:30:00Z`, `2024-05-01 12:30`, fractions and
/// offsets), or a time of day alone (`12:30`, `12:30:45`).
fn is_date_time(b: &[u8]) -> bool {
    let time = |t: &[u8]| -> bool {
        // hh:mm[:ss[.fff]][Z|±hh[:]mm]
        let digits = |r: std::ops::Range<usize>| t.get(r).is_some_and(all_digits);
        if !(t.len() >= 5 && digits(0..2) && t[2] == b':' && digits(3..5)) {
            return false;
        }
        let mut rest = &t[5..];
        if rest.first() == Some(&b':') {
            if !rest.get(1..3).is_some_and(all_digits) {
                return false;
            }
            rest = &rest[3..];
            if rest.first() == Some(&b'.') {
                let n = rest[1..].iter().take_while(|c| c.is_ascii_digit()).count();
                if n == 0 || n > 9 {
                    return false;
                }
                rest = &rest[1 + n..];
            }
        }
        match rest {
            [] | [b'Z'] => true,
            [b'+' | b'-', zone @ ..] => {
                matches!(zone.len(), 2 | 4 | 5)
                    && zone
                        .iter()
                        .enumerate()
                        .all(|(i, c)| c.is_ascii_digit() || (i == 2 && *c == b':'))
            }
            _ => false,
        }
    };
    if b.len() > 40 {
        return false;
    }
    if b.len() > 11 && is_date(&b[..10]) && matches!(b[10], b'T' | b't' | b' ') {
        return time(&b[11..]);
    }
    time(b)
}

fn is_url(text: &str) -> bool {
    let Some((scheme, rest)) = text.split_once("://") else {
        return false;
    };
    !scheme.is_empty()
        && scheme.len() <= 16
        && scheme.bytes().all(|c| c.is_ascii_alphabetic())
        && !rest.is_empty()
        && !rest.starts_with('/')
        && !text.contains(char::is_whitespace)
        && !text.contains(['<', '>', '"', '\'', '`', '{', '}', '|', '\\', '^'])
}

/// Base64, base64url, JWT-like: at least 16 characters of the token alphabet with letters and
/// digits.
fn is_token(b: &[u8]) -> bool {
    b.len() >= 16
        && b.iter().all(|c| {
            c.is_ascii_alphanumeric() || matches!(*c, b'-' | b'_' | b'.' | b'=' | b'+' | b'/')
        })
        && b.iter().any(u8::is_ascii_digit)
        && b.iter().any(u8::is_ascii_alphabetic)
}

/// Letters and digits in runs joined by single `-`, `_` or `.` (`silent-harbour`,
/// `maria.keller2`, `SKU-10693`, `en_GB`): no separator first, last or doubled.
fn is_slug(b: &[u8]) -> bool {
    let separator = |c: &u8| matches!(*c, b'-' | b'_' | b'.');
    !b.is_empty()
        && b.iter().all(|c| c.is_ascii_alphanumeric() || separator(c))
        && !separator(&b[0])
        && !separator(&b[b.len() - 1])
        && !b.windows(2).any(|w| separator(&w[0]) && separator(&w[1]))
}

/// Words: letters (any script) and digits separated by single spaces, with the punctuation of
/// ordinary prose and names (`.`, `,`, `-`, `_`, `!`), no leading, trailing or doubled space.
fn is_words(text: &str) -> bool {
    !text.starts_with(' ')
        && !text.ends_with(' ')
        && !text.contains("  ")
        && text.chars().any(char::is_alphanumeric)
        && text
            .chars()
            .all(|c| c.is_alphanumeric() || matches!(c, ' ' | '.' | ',' | '-' | '_' | '!'))
}

#[cfg(test)]
mod tests {
    use super::*;
    use ValueFormat::*;

    fn set(text: &str) -> Vec<ValueFormat> {
        formats_of(text).iter().collect()
    }

    #[test]
    fn each_format_class() {
        assert_eq!(
            set("3f2504e0-4f89-11d3-9a0c-0305e82c3301"),
            [Uuid, Token, Slug, Words, Text]
        );
        assert_eq!(set("maria.keller2@mail.example.org"), [Email, Text]);
        assert_eq!(
            set("2024-05-01"),
            [Date, DateTime, Phone, Slug, Words, Text]
        );
        assert_eq!(
            set("01.05.2024"),
            [Date, DateTime, Phone, Slug, Words, Text]
        );
        assert_eq!(set("2024-05-01T12:30:00.123+02:00"), [DateTime, Text]);
        assert_eq!(set("2024-05-01 12:30"), [DateTime, Text]);
        assert_eq!(set("12:30:45Z"), [DateTime, Text]);
        assert_eq!(set("+31 6 12345678"), [Phone, Text]);
        assert_eq!(set("+31612345678"), [Phone, Text]);
        assert_eq!(set("0612345678"), [Numeric, Hex, Slug, Words, Text]);
        assert_eq!(set("4412"), [Numeric, Hex, Slug, Words, Text]);
        assert_eq!(set("-12.50"), [Numeric, Words, Text]);
        assert_eq!(set("deadbeef01"), [Hex, Slug, Words, Text]);
        assert_eq!(set("https://example.org/a?b=c"), [Url, Text]);
        assert_eq!(
            set("eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiIxIn0"),
            [Token, Slug, Words, Text]
        );
        assert_eq!(set("silent-harbour"), [Slug, Words, Text]);
        assert_eq!(set("SKU-10693"), [Slug, Words, Text]);
        assert_eq!(set("Shopper 12 B."), [Words, Text]);
        assert_eq!(set("Zoë Müller"), [Words, Text]);
        assert_eq!(set("first edition, signed"), [Words, Text]);
        assert_eq!(set("it's <b>bold</b>"), [Text]);
        assert_eq!(set(""), [Text]);
    }

    #[test]
    fn broken_values_leave_their_format() {
        // An e-mail address without '@', a phone number in words, a slug with a space.
        assert!(!formats_of("maria.keller.mail.example.org").contains(Email));
        assert!(!formats_of("call me maybe, any time after six").contains(Phone));
        assert!(!formats_of("silent harbour").contains(Slug));
        assert!(!formats_of("silent--harbour").contains(Slug));
        assert!(!formats_of("2024-13-01x").contains(Date));
        assert!(!formats_of("x@y.example'; DROP TABLE users; --").contains(Email));
        assert!(!formats_of("javascript:alert(1)").contains(Url));
    }

    #[test]
    fn free_variation_inside_a_format_is_in_its_alphabet() {
        let digit = 1;
        assert_ne!(Email.alphabet() & digit, 0);
        assert_ne!(Slug.alphabet() & (1 << 6), 0, "a dot in a slug");
        // Quotes, angle brackets, braces, '$', ';' are in no format's alphabet.
        for f in ValueFormat::ALL {
            assert_eq!(
                f.alphabet() & super::super::value::RISKY_CHAR_CLASSES & !(1 << 19),
                0,
                "{f:?}"
            );
        }
    }
}

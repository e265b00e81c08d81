//! The written form of an operation in rules, limits and OpenAPI: `METHOD /path/{name}`.

use std::fmt::Write as _;

use super::canonical::canonical_literal;

/// Methods an operation may name.
pub const METHODS: [&str; 7] = ["GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"];

/// One path segment of a pattern.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum PatternSegment {
    Literal(String),
    /// `{name}`: any single segment. The name is for display only.
    Param(String),
}

/// A parsed operation such as `GET /api/v1/accounts/{account_id}/balance`.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct OperationPattern {
    pub method: http::Method,
    pub segments: Vec<PatternSegment>,
}

impl OperationPattern {
    /// Parses `METHOD /path`; the reason is a sentence fragment for validation errors.
    pub fn parse(text: &str) -> Result<Self, String> {
        let (method, path) = text.split_once(' ').ok_or_else(|| {
            "expected \"METHOD /path\", e.g. \"GET /api/v1/accounts/{id}\"".to_owned()
        })?;
        if !METHODS.contains(&method) {
            return Err(format!(
                "method {method:?} is not one of {}",
                METHODS.join(", ")
            ));
        }
        let method = http::Method::from_bytes(method.as_bytes()).map_err(|e| e.to_string())?;
        if !path.starts_with('/') {
            return Err("the path must start with \"/\"".to_owned());
        }
        if let Some(bad) = path
            .chars()
            .find(|c| c.is_whitespace() || c.is_control() || matches!(c, '?' | '#'))
        {
            return Err(format!("the path must not contain {bad:?}"));
        }
        let mut segments = Vec::new();
        for raw in split_path(path) {
            if let Some(inner) = raw.strip_prefix('{') {
                let name = inner
                    .strip_suffix('}')
                    .ok_or_else(|| format!("unclosed parameter in segment {raw:?}"))?;
                if name.is_empty() || name.contains(['{', '}']) {
                    return Err(format!("invalid parameter segment {raw:?}"));
                }
                segments.push(PatternSegment::Param(name.to_owned()));
            } else if raw.contains(['{', '}']) {
                return Err(format!("a parameter must be a whole segment, got {raw:?}"));
            } else if matches!(raw, "." | "..") {
                return Err(format!(
                    "dot segment {raw:?} (requests are matched without them)"
                ));
            } else {
                // Requests are matched in canonical form: so are the declared literals.
                let literal = canonical_literal(raw)
                    .map_err(|e| format!("segment {raw:?} has no canonical form: {e}"))?;
                segments.push(PatternSegment::Literal(literal));
            }
        }
        Ok(Self { method, segments })
    }

    /// The key under which templates are compared: parameters lose their names, so that
    /// `{account_id}` matches a learned `{var1}`.
    pub fn normalized_key(&self) -> String {
        let mut key = String::with_capacity(32);
        key.push_str(self.method.as_str());
        key.push(' ');
        if self.segments.is_empty() {
            key.push('/');
        }
        for seg in &self.segments {
            key.push('/');
            match seg {
                PatternSegment::Literal(l) => key.push_str(l),
                PatternSegment::Param(_) => key.push_str("{}"),
            }
        }
        key
    }

    /// The display form, parameters named as written.
    pub fn display(&self) -> String {
        let mut out = String::with_capacity(32);
        out.push_str(self.method.as_str());
        out.push(' ');
        if self.segments.is_empty() {
            out.push('/');
        }
        for seg in &self.segments {
            match seg {
                PatternSegment::Literal(l) => {
                    let _ = write!(out, "/{l}");
                }
                PatternSegment::Param(p) => {
                    let _ = write!(out, "/{{{p}}}");
                }
            }
        }
        out
    }

    /// Number of literal segments (more literals = more specific).
    pub fn literal_count(&self) -> usize {
        self.segments
            .iter()
            .filter(|s| matches!(s, PatternSegment::Literal(_)))
            .count()
    }
}

/// Normalizes a written operation (`GET /a/{id}` → `GET /a/{}`), or `None` when invalid.
pub fn normalize_operation(text: &str) -> Option<String> {
    OperationPattern::parse(text)
        .ok()
        .map(|p| p.normalized_key())
}

/// Splits a path into its non-empty segments (`/a//b/` → `a`, `b`).
pub fn split_path(path: &str) -> impl Iterator<Item = &str> {
    path.split('/').filter(|s| !s.is_empty())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parameter_names_do_not_matter() {
        let a = OperationPattern::parse("GET /api/v1/accounts/{account_id}/balance").unwrap();
        let b = OperationPattern::parse("GET /api/v1/accounts/{var1}/balance").unwrap();
        assert_eq!(a.normalized_key(), b.normalized_key());
        assert_eq!(a.normalized_key(), "GET /api/v1/accounts/{}/balance");
        assert_eq!(a.display(), "GET /api/v1/accounts/{account_id}/balance");
    }

    #[test]
    fn rejects_bad_syntax() {
        assert!(
            OperationPattern::parse("GET accounts")
                .unwrap_err()
                .contains("must start with")
        );
        assert!(
            OperationPattern::parse("FETCH /a")
                .unwrap_err()
                .contains("method")
        );
        assert!(OperationPattern::parse("GET /a/{id").is_err());
        assert!(OperationPattern::parse("GET /a/x{id}").is_err());
        assert!(OperationPattern::parse("GET /a?b=1").is_err());
        assert!(OperationPattern::parse("GET").is_err());
        assert_eq!(
            OperationPattern::parse("GET /").unwrap().normalized_key(),
            "GET /"
        );
        assert!(OperationPattern::parse("GET /a/../b").is_err());
        assert!(OperationPattern::parse("GET /a%2Fb").is_err());
        assert!(OperationPattern::parse("GET /a;x").is_err());
    }

    #[test]
    fn literals_are_canonical() {
        let p = OperationPattern::parse("POST /api/v1/%74ransfer%46unds/café").unwrap();
        assert_eq!(p.display(), "POST /api/v1/transferFunds/caf%C3%A9");
    }
}

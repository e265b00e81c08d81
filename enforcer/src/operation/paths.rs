//! How request paths are brought to their one canonical form before any check; see
//! `docs/enforcer-config.md` (`paths`) for what is refused and what is rewritten.

use serde::{Deserialize, Serialize};

/// An encoded slash (`%2F`) inside a segment.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
pub enum EncodedSlash {
    /// 400: servers disagree on whether `%2F` separates segments.
    #[default]
    Reject,
    /// A character of its segment, forwarded as `%2F`.
    Keep,
}

/// A `;` path parameter (`/export;jsessionid=1`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
pub enum PathParameters {
    /// 400: some servers route `/export;x` to `/export`, others treat `;` as data.
    #[default]
    Reject,
    /// Removed from each segment (as Servlet containers do) before matching and forwarding.
    Strip,
    /// An ordinary character of its segment, for upstreams that treat it so.
    Keep,
}

/// A slash that ends the path (`/export/`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
pub enum TrailingSlash {
    /// Forwarded as sent; matching ignores it either way.
    #[default]
    Keep,
    /// Removed from the forwarded path too.
    Strip,
}

/// Empty segments (`/api//export`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
pub enum RepeatedSlashes {
    /// Merged into one slash, in matching and in the forwarded path.
    #[default]
    Merge,
    /// 400.
    Reject,
}

/// An encoded percent sign followed by two hex digits (`%252e`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
pub enum DoubleEncoding {
    /// 400: an upstream (or a proxy behind the enforcer) that decodes twice would see
    /// another path than the one checked.
    #[default]
    Reject,
    /// Literal text: `%252e` stays `%252E`, which is not `.`.
    Literal,
}

/// A backslash, raw or encoded (`%5C`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
pub enum Backslash {
    /// 400: some servers treat `\` as `/`.
    #[default]
    Reject,
    /// A character of its segment, forwarded as `%5C`.
    Keep,
}

/// The `paths` section: the policy of the path canonicalisation.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields, default)]
pub struct PathsConfig {
    pub encoded_slash: EncodedSlash,
    pub path_parameters: PathParameters,
    /// `false`: operations are matched without regard to ASCII case (for upstreams that
    /// route case-insensitively); the forwarded path keeps the client's case.
    pub case_sensitive: bool,
    pub trailing_slash: TrailingSlash,
    pub repeated_slashes: RepeatedSlashes,
    pub double_encoding: DoubleEncoding,
    pub backslash: Backslash,
}

impl Default for PathsConfig {
    fn default() -> Self {
        Self {
            encoded_slash: EncodedSlash::default(),
            path_parameters: PathParameters::default(),
            case_sensitive: true,
            trailing_slash: TrailingSlash::default(),
            repeated_slashes: RepeatedSlashes::default(),
            double_encoding: DoubleEncoding::default(),
            backslash: Backslash::default(),
        }
    }
}

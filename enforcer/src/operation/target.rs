//! The request target as every check sees it and as the upstream receives it: the one entry
//! point where method, path and query are brought to their canonical form.

use std::borrow::Cow;

use http::{Method, Uri, Version};

use super::canonical::{TargetError, canonical_path};
use super::paths::PathsConfig;
use super::query::{QueryPairs, parse_request_query};

/// Methods whose spelling in another case is refused rather than forwarded: RFC 9110 methods
/// are case-sensitive, so `get` is not `GET`, yet some upstream frameworks upper-case the
/// method before routing and would run the `GET` handler for a request checked as another
/// operation.
const STANDARD_METHODS: [&str; 9] = [
    "GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS", "TRACE", "CONNECT",
];

/// A request target in canonical form.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CanonicalTarget<'u> {
    /// The canonical path, forwarded to the upstream (borrowed when the request's path was
    /// canonical already).
    pub path: Cow<'u, str>,
    /// The ASCII-lower-cased path when matching is case-insensitive.
    folded: Option<String>,
    /// The query as received (forwarded unchanged).
    pub query: Option<&'u str>,
}

impl CanonicalTarget<'_> {
    /// The path operations are matched on.
    pub fn match_path(&self) -> &str {
        self.folded.as_deref().unwrap_or(&self.path)
    }

    /// The origin-form target written on the upstream request line.
    pub fn forward_target(&self) -> Cow<'_, str> {
        match self.query {
            Some(q) => Cow::Owned(format!("{}?{q}", self.path)),
            None => Cow::Borrowed(&self.path),
        }
    }
}

/// Refuses `CONNECT` and other-case spellings of the standard methods.
pub fn check_method(method: &Method) -> Result<(), TargetError> {
    if *method == Method::CONNECT {
        return Err(TargetError::NotOriginForm);
    }
    let name = method.as_str();
    let standard_in_other_case = STANDARD_METHODS
        .iter()
        .any(|m| m.eq_ignore_ascii_case(name) && *m != name);
    if standard_in_other_case {
        return Err(TargetError::MethodCase);
    }
    Ok(())
}

/// Canonicalises a request's method, path and query (`max_query` pairs at most), and returns
/// the target with the decoded query pairs the checks see. HTTP/1
/// requests must be in origin form: an absolute-form target (`GET http://host/x`) is
/// refused, since the upstream would see another host than the `Host` the checks saw.
/// HTTP/2 always carries scheme and authority as pseudo-headers.
pub fn canonical_target<'u>(
    method: &Method,
    version: Version,
    uri: &'u Uri,
    policy: &PathsConfig,
    max_query: usize,
) -> Result<(CanonicalTarget<'u>, QueryPairs<'u>), TargetError> {
    check_method(method)?;
    if version < Version::HTTP_2 && (uri.scheme().is_some() || uri.authority().is_some()) {
        return Err(TargetError::NotOriginForm);
    }
    let path = canonical_path(uri.path(), policy)?;
    let folded = (!policy.case_sensitive).then(|| path.to_ascii_lowercase());
    let query = uri.query();
    let query_pairs = match query {
        Some(q) => parse_request_query(q, max_query, policy)?,
        None => Vec::new(),
    };
    let target = CanonicalTarget {
        path,
        folded,
        query,
    };
    Ok((target, query_pairs))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn target(method: &str, version: Version, uri: &str) -> Result<String, TargetError> {
        let uri: Uri = uri.parse().unwrap();
        let method = Method::from_bytes(method.as_bytes()).unwrap();
        canonical_target(&method, version, &uri, &PathsConfig::default(), 128)
            .map(|(t, _)| t.forward_target().into_owned())
    }

    #[test]
    fn methods_of_another_case_and_connect_are_refused() {
        let h1 = Version::HTTP_11;
        assert_eq!(target("get", h1, "/x"), Err(TargetError::MethodCase));
        assert_eq!(target("Post", h1, "/x"), Err(TargetError::MethodCase));
        assert_eq!(target("CONNECT", h1, "/x"), Err(TargetError::NotOriginForm));
        assert_eq!(target("PROPFIND", h1, "/x").as_deref(), Ok("/x"));
        assert_eq!(target("purge", h1, "/x").as_deref(), Ok("/x"));
    }

    #[test]
    fn origin_form_only_over_http1() {
        assert_eq!(
            target("GET", Version::HTTP_11, "http://evil.example/api/v1/export"),
            Err(TargetError::NotOriginForm)
        );
        assert_eq!(
            target(
                "GET",
                Version::HTTP_2,
                "http://api.example/api/v1/%65xport?a=1"
            )
            .as_deref(),
            Ok("/api/v1/export?a=1")
        );
        assert_eq!(
            target("GET", Version::HTTP_11, "/api/v1/./export?a=%41").as_deref(),
            Ok("/api/v1/export?a=%41")
        );
        assert_eq!(
            target("OPTIONS", Version::HTTP_11, "*"),
            Err(TargetError::NotOriginForm)
        );
    }

    #[test]
    fn case_insensitive_matching_keeps_the_forwarded_case() {
        let uri: Uri = "/API/v1/Export".parse().unwrap();
        let policy = PathsConfig {
            case_sensitive: false,
            ..PathsConfig::default()
        };
        let (t, _) = canonical_target(&Method::GET, Version::HTTP_11, &uri, &policy, 8).unwrap();
        assert_eq!(
            (&*t.path, t.match_path()),
            ("/API/v1/Export", "/api/v1/export")
        );
    }
}

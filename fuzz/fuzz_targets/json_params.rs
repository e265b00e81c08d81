//! The parameter extractor (`detect::params`): a JSON body parsed as the proxy parses it, a
//! query string and a `Cookie` field, turned into the observations the model learns from.
//! Never a panic; at most `MAX_PARAMS_PER_REQUEST` observations, the rest counted; names and
//! values bounded; a secret (cookie values, credential fields) never keeps its value; the same
//! request always gives the same observations.
//!
//! Input: `QUERY \n COOKIE \n BODY` (the body as bytes, parsed with `serde_json::from_slice`
//! like `proxy::handler` does).

#![no_main]

use std::borrow::Cow;
use std::net::{IpAddr, Ipv4Addr};
use std::sync::Arc;

use libfuzzer_sys::fuzz_target;
use ordo_enforcer::detect::params::{
    MAX_JSON_DEPTH, MAX_NAME_LEN, MAX_PARAMS_PER_REQUEST, MAX_VALUE_TEXT, RequestParams,
};
use ordo_enforcer::detect::{RequestContext, RequestScratch};
use ordo_enforcer::model::Location;
use ordo_enforcer::operation::{Operation, OperationOrigin, parse_query};
use ordo_enforcer::session::SessionSource;

/// Longest name the extractor can build: `body` and, per nesting level, `.` + a bounded key
/// (or `[]` for an array element).
const MAX_NAME_CHARS: usize = "header".len() + MAX_JSON_DEPTH * (1 + MAX_NAME_LEN + 2);

fn observations(p: &RequestParams) -> Vec<(String, Location, String, bool)> {
    p.params
        .iter()
        .chain(&p.headers)
        .map(|o| (o.name.clone(), o.location, o.value.clone(), o.secret))
        .collect()
}

fn last_segment(name: &str) -> String {
    let last = name.rsplit(['.', '[']).next().unwrap_or(name);
    last.chars()
        .filter(char::is_ascii_alphanumeric)
        .collect::<String>()
        .to_ascii_lowercase()
}

fuzz_target!(|data: &[u8]| {
    let mut parts = data.splitn(3, |&b| b == b'\n');
    let query = String::from_utf8_lossy(parts.next().unwrap_or_default());
    let cookie = parts.next().unwrap_or_default();
    let body_bytes = parts.next().unwrap_or_default();
    let body: Option<serde_json::Value> = serde_json::from_slice(body_bytes).ok();

    let pairs: Vec<(Cow<'_, str>, Cow<'_, str>)> = parse_query(&query).into_iter().collect();
    let mut headers = http::HeaderMap::new();
    headers.insert("user-agent", http::HeaderValue::from_static("fuzz/1"));
    if let Ok(value) = http::HeaderValue::from_bytes(cookie) {
        headers.insert(http::header::COOKIE, value);
    }
    let operation = Operation {
        id: 1,
        template: Arc::from("POST /api/v1/{var1}"),
        origin: OperationOrigin::Learned,
    };
    let path_params = [("var1", "4411")];
    let scratch = RequestScratch::default();
    let ctx = RequestContext {
        now_ms: 1_700_000_000_000,
        session: "jwt:sub=fuzz",
        session_source: SessionSource::Jwt,
        client: IpAddr::V4(Ipv4Addr::LOCALHOST),
        method: &http::Method::POST,
        operation: &operation,
        path_params: &path_params,
        query: &pairs,
        headers: &headers,
        body: body.as_ref(),
        recent: &[],
        scratch: &scratch,
    };
    let mut params = RequestParams::from_request(&ctx);
    let again = RequestParams::from_request(&ctx);
    assert_eq!(
        observations(&params),
        observations(&again),
        "not deterministic"
    );
    assert_eq!(params.object_ids, again.object_ids);
    assert_eq!(params.identity, again.identity);

    let kept = params.params.len() + params.headers.len();
    assert!(kept <= MAX_PARAMS_PER_REQUEST, "{kept} observations");
    if params.truncated > 0 {
        assert_eq!(kept, MAX_PARAMS_PER_REQUEST);
    }
    for o in params.params.iter().chain(&params.headers) {
        assert!(o.name.chars().count() <= MAX_NAME_CHARS, "{:?}", o.name);
        assert!(o.value.len() <= MAX_VALUE_TEXT.max(32), "{:?}", o.name);
        if o.secret {
            assert!(o.value.is_empty(), "secret {} kept its value", o.name);
        }
        if o.location == Location::Cookie {
            assert!(
                o.secret && o.value.is_empty(),
                "cookie {} kept its value",
                o.name
            );
        }
        if matches!(
            last_segment(&o.name).as_str(),
            "password" | "passwd" | "secret" | "passphrase" | "otp" | "pin"
        ) && matches!(o.location, Location::Body | Location::Query)
        {
            assert!(o.value.is_empty(), "credential {} kept its value", o.name);
        }
        // A nested name never goes deeper than the walk does.
        assert!(o.name.matches("[]").count() <= MAX_JSON_DEPTH);
    }
    params.hide_session_identifiers(&["sid".to_owned(), "x-api-key".to_owned()]);
    for o in params.params.iter().chain(&params.headers) {
        if o.secret {
            assert!(o.value.is_empty(), "{}", o.name);
        }
    }
});

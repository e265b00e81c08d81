//! Differential check of the enforcer's upstream HTTP/1.1 response codec against hyper's
//! client: the same bytes, sent by an upstream that then closes the connection, go to both;
//! both must accept them with the same status, fields and body, or both refuse them.
//!
//! Shared by the `upstream_diff` fuzz target and the ordinary test
//! `enforcer/tests/upstream_codec_differential.rs`, which replays the committed corpus
//! (`fuzz/seeds/upstream_diff/`); hence no dependency beyond what the enforcer has.
//!
//! Intended differences, normalised away before comparing (each is a place where the enforcer
//! is stricter or says less than hyper, never more lenient):
//! - A response with both `Transfer-Encoding` and `Content-Length`: the enforcer drops the
//!   `Content-Length` field (it forwards the body without it and closes the connection), hyper
//!   keeps it. Compared without `Content-Length` in that case.
//! - `Transfer-Encoding` in an HTTP/1.0 response: hyper refuses it; the enforcer applies it
//!   (chunked when chunked is the last coding, else until close) and never reuses the
//!   connection. Such inputs are compared on nothing (see [`intended_difference`]).
//! - A `Transfer-Encoding` value with a byte outside ASCII: hyper does not read it as a text
//!   value, so a `chunked` at its end does not count and it reads until close; the enforcer
//!   reads the codings from the bytes and decodes chunked. Not compared. (Open question for
//!   the codec: refusing such a response would be stricter than both.)
//! - A chunk-size line the enforcer finds malformed (a control character in an extension, a
//!   bare LF, a line over 4096 bytes) where hyper is more lenient: the enforcer refuses, as
//!   `proxy/upstream/chunked.rs` says it must where parsers could disagree. Allowed.
//! - An invalid `Content-Length` where the framing does not use it (a response to HEAD, a 204
//!   or 304, a response with `Transfer-Encoding`): the enforcer refuses the response, hyper
//!   ignores the field. Allowed: the enforcer is the stricter.
//! - A `Transfer-Encoding` list ending in an empty element (`gzip, chunked,`): the enforcer
//!   ignores empty elements (RFC 9110 §5.6.1) and decodes chunked; hyper takes the empty last
//!   element as the coding and reads until close. Not compared.
//! - `101 Switching Protocols`: the enforcer does not proxy upgrades and refuses the response;
//!   hyper hands it to the caller (which would then take over the connection). Not compared.
//! - The enforcer refuses a chunk-size line or trailer line longer than 4096 bytes and bare LF
//!   line ends in chunked framing (it is strict where two parsers could disagree about where a
//!   message ends); hyper accepts some of them. A refusal by the enforcer where hyper accepts
//!   is allowed for chunked bodies only; the converse (the enforcer accepts what hyper
//!   refuses) is always a failure.
//! - Fields are compared by name (the values of one name in order), not across names.
//! - Trailer fields: both drop them from the body; only the data is compared.

use std::sync::OnceLock;
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use http::Method;
use http_body_util::{BodyExt, Empty};
use hyper_util::rt::TokioIo;
use ordo_enforcer::proxy::fuzzing::{
    ChunkedDecoder, Decoded, Parsed, ProtocolError, ResponseFraming, parse_response_head,
};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// What a parser made of the bytes an upstream sent before closing.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    Accepted {
        status: u16,
        /// Field names (lower case) and values, in order.
        fields: Vec<(String, Vec<u8>)>,
        body: Vec<u8>,
        /// The body was chunked (a refusal by the enforcer is then allowed, see the module doc).
        chunked: bool,
    },
    Refused(String),
}

/// The enforcer's codec: heads (skipping interim responses), then the body by its framing,
/// the input ending where the upstream closed.
pub fn enforcer(input: &[u8], method: &Method) -> Outcome {
    let mut rest = input;
    let (head, len) = loop {
        match parse_response_head(rest, method) {
            Ok(Parsed::Complete { head, len }) => break (head, len),
            Ok(Parsed::Informational { len }) => {
                rest = rest.get(len..).unwrap_or_default();
            }
            Ok(Parsed::Partial) => return Outcome::Refused("incomplete head".into()),
            Err(e) => return Outcome::Refused(e.to_string()),
        }
    };
    let after = rest.get(len..).unwrap_or_default();
    let mut chunked = false;
    let body = match head.framing {
        ResponseFraming::Empty => Vec::new(),
        ResponseFraming::Length(n) => match usize::try_from(n) {
            Ok(n) if n <= after.len() => after.get(..n).unwrap_or_default().to_vec(),
            _ => return Outcome::Refused("body shorter than Content-Length".into()),
        },
        ResponseFraming::UntilClose => after.to_vec(),
        ResponseFraming::Chunked => {
            chunked = true;
            let mut decoder = ChunkedDecoder::default();
            let mut buf = BytesMut::from(after);
            let mut data = Vec::new();
            loop {
                match decoder.decode(&mut buf) {
                    Ok(Decoded::Data(d)) => data.extend_from_slice(&d),
                    Ok(Decoded::Done) => break,
                    Ok(Decoded::NeedMore) => {
                        return Outcome::Refused("incomplete chunked body".into());
                    }
                    Err(e) => return Outcome::Refused(e.to_string()),
                }
            }
            data
        }
    };
    Outcome::Accepted {
        status: head.status.as_u16(),
        fields: head
            .headers
            .iter()
            .map(|(n, v)| (n.as_str().to_owned(), v.as_bytes().to_vec()))
            .collect(),
        body,
        chunked,
    }
}

fn runtime() -> &'static tokio::runtime::Runtime {
    static RUNTIME: OnceLock<tokio::runtime::Runtime> = OnceLock::new();
    RUNTIME.get_or_init(|| {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap_or_else(|e| panic!("tokio runtime: {e}"))
    })
}

/// hyper's client (HTTP/1.1, default settings) reading `input` from an upstream that waits
/// for the request, writes `input` and closes.
pub fn hyper(input: &[u8], method: &Method) -> Outcome {
    runtime().block_on(async {
        match tokio::time::timeout(Duration::from_secs(5), hyper_exchange(input, method)).await {
            Ok(outcome) => outcome,
            Err(_) => Outcome::Refused("hyper timed out".into()),
        }
    })
}

async fn hyper_exchange(input: &[u8], method: &Method) -> Outcome {
    let (client, mut upstream) = tokio::io::duplex(64 * 1024);
    let upstream = async move {
        let mut seen = Vec::new();
        let mut buf = [0u8; 1024];
        while !seen.windows(4).any(|w| w == b"\r\n\r\n") {
            match upstream.read(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(n) => seen.extend_from_slice(buf.get(..n).unwrap_or_default()),
            }
        }
        let _ = upstream.write_all(input).await;
        let _ = upstream.shutdown().await;
        // Dropping `upstream` closes both directions.
    };
    let handshake = hyper::client::conn::http1::handshake::<_, Empty<Bytes>>(TokioIo::new(client));
    let (mut sender, connection) = match handshake.await {
        Ok(pair) => pair,
        Err(e) => return Outcome::Refused(format!("handshake: {e}")),
    };
    let request = match http::Request::builder()
        .method(method.clone())
        .uri("/")
        .header(http::header::HOST, "upstream")
        .body(Empty::<Bytes>::new())
    {
        Ok(r) => r,
        Err(e) => return Outcome::Refused(format!("request: {e}")),
    };
    let exchange = async move {
        let response = sender
            .send_request(request)
            .await
            .map_err(|e| format!("response: {e}"))?;
        let status = response.status().as_u16();
        let fields = response
            .headers()
            .iter()
            .map(|(n, v)| (n.as_str().to_owned(), v.as_bytes().to_vec()))
            .collect();
        let chunked = response
            .headers()
            .get_all(http::header::TRANSFER_ENCODING)
            .iter()
            .next_back()
            .is_some_and(|v| {
                v.as_bytes()
                    .split(|&b| b == b',')
                    .map(<[u8]>::trim_ascii)
                    .next_back()
                    .is_some_and(|t| t.eq_ignore_ascii_case(b"chunked"))
            });
        let body = response
            .into_body()
            .collect()
            .await
            .map_err(|e| format!("body: {e}"))?
            .to_bytes()
            .to_vec();
        Ok::<_, String>(Outcome::Accepted {
            status,
            fields,
            body,
            chunked,
        })
    };
    let (_, _, outcome) = tokio::join!(upstream, connection, exchange);
    outcome.unwrap_or_else(Outcome::Refused)
}

/// Inputs where a difference is intended and documented (see the module doc): an HTTP/1.0
/// final response with `Transfer-Encoding`, a `Transfer-Encoding` value that is not ASCII, a
/// `101` response.
pub fn intended_difference(input: &[u8], method: &Method) -> bool {
    let mut rest = input;
    loop {
        match parse_response_head(rest, method) {
            Ok(Parsed::Informational { len }) => rest = rest.get(len..).unwrap_or_default(),
            Ok(Parsed::Complete { head, .. }) => {
                let codings = head.headers.get_all(http::header::TRANSFER_ENCODING);
                return (rest.starts_with(b"HTTP/1.0") && codings.iter().next().is_some())
                    || codings.iter().any(|v| !v.as_bytes().is_ascii())
                    || codings
                        .iter()
                        .next_back()
                        .is_some_and(|v| v.as_bytes().trim_ascii().ends_with(b","));
            }
            Err(ProtocolError::Upgrade) => return true,
            _ => return false,
        }
    }
}

/// Compares both parsers on `input`; `Err` says how they disagree.
pub fn compare(input: &[u8], method: &Method) -> Result<(), String> {
    if intended_difference(input, method) {
        return Ok(());
    }
    let ours = enforcer(input, method);
    let theirs = hyper(input, method);
    match (&ours, &theirs) {
        (Outcome::Refused(_), Outcome::Refused(_)) => Ok(()),
        (
            Outcome::Accepted {
                status,
                fields,
                body,
                ..
            },
            Outcome::Accepted {
                status: h_status,
                fields: h_fields,
                body: h_body,
                ..
            },
        ) => {
            // The enforcer drops Content-Length next to Transfer-Encoding only where there is
            // a body (not on HEAD, 204, 304).
            let has_te = h_fields.iter().any(|(n, _)| n == "transfer-encoding")
                && !fields.iter().any(|(n, _)| n == "content-length");
            let mut h_fields: Vec<_> = h_fields
                .iter()
                .filter(|(n, _)| !(has_te && n == "content-length"))
                .cloned()
                .collect();
            // Fields are compared by name, values of one name in order: removing a field
            // from a `HeaderMap` moves another in its place, and the order of different
            // names carries no meaning.
            let mut fields = fields.clone();
            fields.sort_by(|a, b| a.0.cmp(&b.0));
            h_fields.sort_by(|a, b| a.0.cmp(&b.0));
            if status == h_status && fields == h_fields && body == h_body {
                Ok(())
            } else {
                Err(format!(
                    "both accept, differently:\n  enforcer {ours:?}\n  hyper    {theirs:?}"
                ))
            }
        }
        (Outcome::Refused(reason), Outcome::Accepted { status, fields, .. })
            if reason.contains("Content-Length")
                && (*method == Method::HEAD
                    || *status == 204
                    || *status == 304
                    || fields.iter().any(|(n, _)| n == "transfer-encoding")) =>
        {
            Ok(())
        }
        (Outcome::Refused(reason), Outcome::Accepted { chunked: true, .. })
            if reason.contains("chunk size line")
                || reason.contains("not terminated by CRLF")
                || reason.contains("chunk line longer") =>
        {
            Ok(())
        }
        _ => Err(format!("enforcer {ours:?}\n  hyper    {theirs:?}")),
    }
}

//! HTTP/1.1 message heads on the upstream connection: the request head written from the
//! request the proxy decided to forward, and the response head parsed (with `httparse`) into
//! the status, headers and body framing of RFC 9112 §6.3.

use std::io::Write as _;

use http::header::{CONNECTION, CONTENT_LENGTH, TRANSFER_ENCODING};
use http::{HeaderMap, HeaderName, HeaderValue, Method, StatusCode};

/// Most header fields accepted in a response head (hyper's default too).
pub const MAX_HEADERS: usize = 100;
/// Longest response head accepted, bytes.
pub const MAX_HEAD: usize = 64 * 1024;

/// Why a response head cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum ProtocolError {
    #[error("response head: {0}")]
    Malformed(#[from] httparse::Error),
    #[error("response head longer than {MAX_HEAD} bytes")]
    HeadTooLarge,
    #[error("invalid header field {0:?}")]
    InvalidHeader(String),
    #[error("invalid or conflicting Content-Length")]
    BadContentLength,
    #[error("protocol upgrade (101) is not proxied")]
    Upgrade,
    #[error("chunked body: {0}")]
    Chunked(#[from] super::chunked::ChunkError),
}

/// How the request body is delimited on the upstream connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RequestFraming {
    /// No body and no framing header (a GET without a body).
    None,
    Length(u64),
    Chunked,
}

impl RequestFraming {
    /// Framing for a body of `exact` bytes when known (`None`: a stream of unknown length).
    pub fn of(method: &Method, exact: Option<u64>) -> Self {
        match exact {
            None => Self::Chunked,
            Some(0) if !expects_body(method) => Self::None,
            Some(n) => Self::Length(n),
        }
    }
}

/// Methods whose requests normally carry a body: an empty one is sent as `Content-Length: 0`,
/// as clients do, so that the upstream does not wait for one.
fn expects_body(method: &Method) -> bool {
    matches!(*method, Method::POST | Method::PUT | Method::PATCH)
}

/// Methods a request may be sent again with (RFC 9110 §9.2.2), when a reused connection turns
/// out to have been closed by the upstream before it answered.
pub fn is_idempotent(method: &Method) -> bool {
    matches!(
        *method,
        Method::GET | Method::HEAD | Method::OPTIONS | Method::TRACE | Method::PUT | Method::DELETE
    )
}

/// Appends the request line `METHOD target HTTP/1.1`.
pub fn encode_request_line(method: &Method, target: &str, out: &mut Vec<u8>) {
    out.extend_from_slice(method.as_str().as_bytes());
    out.push(b' ');
    out.extend_from_slice(target.as_bytes());
    out.extend_from_slice(b" HTTP/1.1\r\n");
}

/// Appends `headers` as field lines, without the framing ones (the head's end writes its own).
/// Names and values come validated from `http` (no CR or LF can be in them). For tests: the
/// proxy writes its field lines with `headers::write_forwarded`.
#[cfg(test)]
pub fn encode_fields(headers: &HeaderMap, out: &mut Vec<u8>) {
    for (name, value) in headers {
        if name == CONTENT_LENGTH || name == TRANSFER_ENCODING {
            continue;
        }
        out.extend_from_slice(name.as_str().as_bytes());
        out.extend_from_slice(b": ");
        out.extend_from_slice(value.as_bytes());
        out.extend_from_slice(b"\r\n");
    }
}

/// Appends the framing header of `framing` and the blank line that ends the head.
pub fn finish_head(framing: RequestFraming, out: &mut Vec<u8>) {
    match framing {
        RequestFraming::None => {}
        RequestFraming::Length(n) => {
            let _ = write!(out, "content-length: {n}\r\n");
        }
        RequestFraming::Chunked => out.extend_from_slice(b"transfer-encoding: chunked\r\n"),
    }
    out.extend_from_slice(b"\r\n");
}

/// How the response body is delimited.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ResponseFraming {
    /// No body (HEAD, 204, 304, or `Content-Length: 0`).
    Empty,
    Length(u64),
    Chunked,
    /// Until the upstream closes the connection (no length, or a coding other than chunked).
    UntilClose,
}

/// A parsed final response head.
#[derive(Debug)]
pub struct ResponseHead {
    pub status: StatusCode,
    pub headers: HeaderMap,
    pub framing: ResponseFraming,
    /// Whether the connection may carry another request after this response.
    pub keep_alive: bool,
}

/// What the bytes read so far hold.
#[derive(Debug)]
pub enum Parsed {
    /// A final response head of `len` bytes.
    Complete { head: ResponseHead, len: usize },
    /// An interim (1xx) response of `len` bytes, to skip.
    Informational { len: usize },
    /// Not a complete head yet: read more.
    Partial,
}

/// Parses the response head at the start of `buf`, for a request made with `method`.
pub fn parse_response_head(buf: &[u8], method: &Method) -> Result<Parsed, ProtocolError> {
    let mut fields = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let mut response = httparse::Response::new(&mut fields);
    let len = match response.parse(buf)? {
        httparse::Status::Complete(len) => len,
        httparse::Status::Partial if buf.len() > MAX_HEAD => {
            return Err(ProtocolError::HeadTooLarge);
        }
        httparse::Status::Partial => return Ok(Parsed::Partial),
    };
    let code = response.code.unwrap_or(0);
    if code == 101 {
        return Err(ProtocolError::Upgrade);
    }
    if (100..200).contains(&code) {
        return Ok(Parsed::Informational { len });
    }
    let status = StatusCode::from_u16(code)
        .map_err(|_| ProtocolError::Malformed(httparse::Error::Status))?;
    let http10 = response.version == Some(0);

    let mut headers = HeaderMap::with_capacity(response.headers.len());
    let mut content_length: Option<u64> = None;
    let mut transfer_encoding = false;
    let mut chunked = false;
    // HTTP/1.0 closes unless it says keep-alive; HTTP/1.1 keeps alive unless it says close.
    let mut close = http10;
    for field in response.headers.iter() {
        let name = HeaderName::from_bytes(field.name.as_bytes())
            .map_err(|_| ProtocolError::InvalidHeader(field.name.to_owned()))?;
        let value = HeaderValue::from_bytes(field.value)
            .map_err(|_| ProtocolError::InvalidHeader(field.name.to_owned()))?;
        if name == CONTENT_LENGTH {
            content_length = Some(merge_content_length(content_length, field.value)?);
        } else if name == TRANSFER_ENCODING {
            transfer_encoding = true;
            // Chunked counts only as the last coding of the last field line.
            chunked = tokens(field.value)
                .last()
                .is_some_and(|t| t.eq_ignore_ascii_case(b"chunked"));
        } else if name == CONNECTION {
            for token in tokens(field.value) {
                if token.eq_ignore_ascii_case(b"close") {
                    close = true;
                } else if token.eq_ignore_ascii_case(b"keep-alive") && http10 {
                    close = false;
                }
            }
        }
        headers.append(name, value);
    }

    let bodiless = *method == Method::HEAD
        || status == StatusCode::NO_CONTENT
        || status == StatusCode::NOT_MODIFIED;
    let framing = if bodiless {
        ResponseFraming::Empty
    } else if transfer_encoding {
        // Transfer-Encoding overrides Content-Length; a message with both is a smuggling
        // attempt or a broken server: forward it without the length, never reuse the connection.
        if content_length.is_some() {
            headers.remove(CONTENT_LENGTH);
            close = true;
        }
        if chunked {
            ResponseFraming::Chunked
        } else {
            ResponseFraming::UntilClose
        }
    } else {
        match content_length {
            Some(0) => ResponseFraming::Empty,
            Some(n) => ResponseFraming::Length(n),
            None => ResponseFraming::UntilClose,
        }
    };
    if framing == ResponseFraming::UntilClose {
        close = true;
    }
    Ok(Parsed::Complete {
        head: ResponseHead {
            status,
            headers,
            framing,
            keep_alive: !close,
        },
        len,
    })
}

/// The comma-separated tokens of a field value, trimmed.
fn tokens(value: &[u8]) -> impl Iterator<Item = &[u8]> {
    value
        .split(|&b| b == b',')
        .map(<[u8]>::trim_ascii)
        .filter(|t| !t.is_empty())
}

/// Adds one `Content-Length` field line to what earlier ones said: every value (a line may be
/// a list) must be the same decimal number (RFC 9112 §6.3 item 5).
fn merge_content_length(seen: Option<u64>, value: &[u8]) -> Result<u64, ProtocolError> {
    let mut merged = seen;
    let mut any = false;
    for token in value.split(|&b| b == b',').map(<[u8]>::trim_ascii) {
        any = true;
        if token.is_empty() || token.len() > 19 || !token.iter().all(u8::is_ascii_digit) {
            return Err(ProtocolError::BadContentLength);
        }
        let n = token
            .iter()
            .fold(0u64, |acc, &d| acc * 10 + u64::from(d - b'0'));
        if merged.is_some_and(|m| m != n) {
            return Err(ProtocolError::BadContentLength);
        }
        merged = Some(n);
    }
    merged
        .filter(|_| any)
        .ok_or(ProtocolError::BadContentLength)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(raw: &str, method: &Method) -> Result<Parsed, ProtocolError> {
        parse_response_head(raw.as_bytes(), method)
    }

    fn head(raw: &str) -> ResponseHead {
        match parse(raw, &Method::GET).unwrap() {
            Parsed::Complete { head, len } => {
                assert_eq!(len, raw.find("\r\n\r\n").unwrap() + 4);
                head
            }
            other => panic!("not complete: {other:?}"),
        }
    }

    #[test]
    fn request_head_carries_the_headers_and_our_framing() {
        let mut headers = HeaderMap::new();
        headers.insert("host", HeaderValue::from_static("api.example"));
        headers.append("accept", HeaderValue::from_static("a/b"));
        headers.append("accept", HeaderValue::from_static("c/d"));
        headers.insert("content-length", HeaderValue::from_static("999"));
        let mut out = Vec::new();
        encode_request_line(&Method::POST, "/x?y=1", &mut out);
        encode_fields(&headers, &mut out);
        finish_head(RequestFraming::Length(5), &mut out);
        assert_eq!(
            String::from_utf8(out).unwrap(),
            "POST /x?y=1 HTTP/1.1\r\nhost: api.example\r\naccept: a/b\r\naccept: c/d\r\ncontent-length: 5\r\n\r\n"
        );
        let mut out = Vec::new();
        encode_request_line(&Method::PUT, "/", &mut out);
        finish_head(RequestFraming::Chunked, &mut out);
        assert_eq!(out, b"PUT / HTTP/1.1\r\ntransfer-encoding: chunked\r\n\r\n");
    }

    #[test]
    fn request_framing_follows_the_method_and_the_body() {
        assert_eq!(
            RequestFraming::of(&Method::GET, Some(0)),
            RequestFraming::None
        );
        assert_eq!(
            RequestFraming::of(&Method::POST, Some(0)),
            RequestFraming::Length(0)
        );
        assert_eq!(
            RequestFraming::of(&Method::GET, Some(3)),
            RequestFraming::Length(3)
        );
        assert_eq!(
            RequestFraming::of(&Method::POST, None),
            RequestFraming::Chunked
        );
    }

    #[test]
    fn framing_of_responses() {
        let h = head("HTTP/1.1 200 OK\r\nContent-Length: 12\r\nX-A: 1\r\n\r\n");
        assert_eq!(
            (h.status.as_u16(), h.framing, h.keep_alive),
            (200, ResponseFraming::Length(12), true)
        );
        assert_eq!(h.headers["x-a"], "1");
        let h = head("HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip, chunked\r\n\r\n");
        assert_eq!((h.framing, h.keep_alive), (ResponseFraming::Chunked, true));
        let h = head("HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked, gzip\r\n\r\n");
        assert_eq!(
            (h.framing, h.keep_alive),
            (ResponseFraming::UntilClose, false)
        );
        let h = head("HTTP/1.1 200 OK\r\nX: y\r\n\r\n");
        assert_eq!(
            (h.framing, h.keep_alive),
            (ResponseFraming::UntilClose, false)
        );
        let h = head("HTTP/1.1 204 No Content\r\nContent-Length: 7\r\n\r\n");
        assert_eq!((h.framing, h.keep_alive), (ResponseFraming::Empty, true));
        let h = head("HTTP/1.1 200 OK\r\nContent-Length: 0\r\nConnection: close\r\n\r\n");
        assert_eq!((h.framing, h.keep_alive), (ResponseFraming::Empty, false));
        // HEAD: the length describes the resource, no body follows.
        let raw = "HTTP/1.1 200 OK\r\nContent-Length: 50\r\n\r\n";
        match parse(raw, &Method::HEAD).unwrap() {
            Parsed::Complete { head, .. } => assert_eq!(head.framing, ResponseFraming::Empty),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn http10_keeps_alive_only_when_it_says_so() {
        let h = head("HTTP/1.0 200 OK\r\nContent-Length: 1\r\n\r\n");
        assert!(!h.keep_alive);
        let h = head("HTTP/1.0 200 OK\r\nContent-Length: 1\r\nConnection: Keep-Alive\r\n\r\n");
        assert!(h.keep_alive);
    }

    #[test]
    fn length_and_chunked_together_drop_the_length_and_the_connection() {
        let h = head("HTTP/1.1 200 OK\r\nContent-Length: 3\r\nTransfer-Encoding: chunked\r\n\r\n");
        assert_eq!((h.framing, h.keep_alive), (ResponseFraming::Chunked, false));
        assert!(!h.headers.contains_key(CONTENT_LENGTH));
    }

    #[test]
    fn content_length_must_be_one_number() {
        let h = head("HTTP/1.1 200 OK\r\nContent-Length: 4, 4\r\nContent-Length: 4\r\n\r\n");
        assert_eq!(h.framing, ResponseFraming::Length(4));
        for bad in [
            "4, 5",
            "-1",
            "+4",
            "4 4",
            "",
            "0x10",
            "99999999999999999999",
        ] {
            let raw = format!("HTTP/1.1 200 OK\r\nContent-Length: {bad}\r\n\r\n");
            assert!(
                matches!(
                    parse(&raw, &Method::GET),
                    Err(ProtocolError::BadContentLength)
                ),
                "{bad:?}"
            );
        }
    }

    #[test]
    fn interim_partial_and_refused_heads() {
        assert!(matches!(
            parse(
                "HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 200 OK\r\n",
                &Method::POST
            ),
            Ok(Parsed::Informational { len: 25 })
        ));
        assert!(matches!(
            parse("HTTP/1.1 200 OK\r\nContent-", &Method::GET),
            Ok(Parsed::Partial)
        ));
        assert!(matches!(
            parse("HTTP/1.1 101 Switching Protocols\r\n\r\n", &Method::GET),
            Err(ProtocolError::Upgrade)
        ));
        assert!(matches!(
            parse("HTTP/1.1 2000 OK\r\n\r\n", &Method::GET),
            Err(ProtocolError::Malformed(_))
        ));
        assert!(matches!(
            parse("SSH-2.0-OpenSSH\r\n\r\n", &Method::GET),
            Err(ProtocolError::Malformed(_))
        ));
        let huge = format!("HTTP/1.1 200 OK\r\nX: {}", "a".repeat(MAX_HEAD));
        assert!(matches!(
            parse(&huge, &Method::GET),
            Err(ProtocolError::HeadTooLarge)
        ));
        let many: String = (0..=MAX_HEADERS).map(|i| format!("X-{i}: 1\r\n")).collect();
        let raw = format!("HTTP/1.1 200 OK\r\n{many}\r\n");
        assert!(matches!(
            parse(&raw, &Method::GET),
            Err(ProtocolError::Malformed(_))
        ));
    }
}

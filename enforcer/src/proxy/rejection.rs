//! Every answer the proxy gives instead of the upstream's, and the one place that turns it
//! into HTTP: status, title, detail, extra fields, headers and the metric it counts in.

use std::borrow::Cow;

use http::{HeaderValue, Response, StatusCode, header};

use super::body::ProxyBody;
use super::problem::problem;
use crate::config::Duration;
use crate::metrics::Metrics;
use crate::operation::TargetError;

/// Why a request was answered by the proxy.
#[derive(Debug)]
pub enum Rejection {
    /// `limits.maxConcurrentRequests` requests are in flight.
    Overloaded,
    /// The client address has `limits.maxConcurrentRequestsPerClient` requests in flight.
    ClientBusy,
    /// The method or target has no unambiguous canonical form (`CONNECT`, an absolute-form
    /// target, `get` for `GET`, an encoded slash under the `reject` policy, …).
    BadTarget(TargetError),
    BadContentLength,
    /// The body is over `limits.maxBodyBytes`; `declared` when `Content-Length` said so.
    BodyTooLarge {
        limit: u64,
        declared: Option<u64>,
    },
    BodyUnreadable,
    BodyTimeout,
    /// The body arrived slower than `limits.minBodyRate` bytes per second.
    BodyTooSlow {
        min_rate: u64,
    },
    /// The session token failed verification (`onInvalidToken: Reject`).
    InvalidToken,
    /// A credential header came more than once: the enforcer and the app could each read a
    /// different one.
    RepeatedCredentialHeader(String),
    /// A check failed internally and the failure policy is `Closed`.
    CheckFailed,
    /// A finding blocked the request (`Enforce` mode).
    Blocked(Box<Block>),
    /// The upstream gave no answer.
    Upstream(UpstreamFailure),
}

/// The deciding finding of a blocked request, as the client sees it.
#[derive(Debug)]
pub struct Block {
    /// The finding's block status: 403, or 429 for volume and rate findings, 400 for schema.
    pub status: StatusCode,
    pub detail: String,
    /// `incidentId`, `kind`, and `rule` / `errors` when the finding has them.
    pub extra: Option<serde_json::Value>,
    pub retry_after_s: Option<u64>,
}

/// Why forwarding failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum UpstreamFailure {
    Refused,
    /// The connection closed before an answer.
    Reset,
    /// The upstream did not accept the connection in time.
    ConnectTimeout,
    /// No answer within `upstream.timeout`.
    Timeout {
        after: Duration,
    },
    Other,
    /// The client's body went over the limit while it was streamed to the upstream.
    BodyTooLarge {
        limit: u64,
    },
}

impl UpstreamFailure {
    /// Classifies a failed send; `body_limit` is `limits.maxBodyBytes`.
    pub fn classify(err: &(dyn std::error::Error + 'static), body_limit: u64) -> Self {
        if find_source::<http_body_util::LengthLimitError>(err).is_some() {
            return Self::BodyTooLarge { limit: body_limit };
        }
        if let Some(io) = find_source::<std::io::Error>(err) {
            return match io.kind() {
                std::io::ErrorKind::ConnectionRefused => Self::Refused,
                std::io::ErrorKind::TimedOut => Self::ConnectTimeout,
                _ => Self::Reset,
            };
        }
        if let Some(h) = find_source::<hyper::Error>(err)
            && (h.is_incomplete_message() || h.is_closed() || h.is_canceled())
        {
            return Self::Reset;
        }
        Self::Other
    }

    /// The `kind` label of the upstream error counter (none for a client body over the limit).
    pub fn metric_label(self) -> Option<&'static str> {
        match self {
            Self::Refused => Some("refused"),
            Self::Reset => Some("reset"),
            Self::ConnectTimeout | Self::Timeout { .. } => Some("timeout"),
            Self::Other => Some("other"),
            Self::BodyTooLarge { .. } => None,
        }
    }

    fn status(self) -> StatusCode {
        match self {
            Self::ConnectTimeout | Self::Timeout { .. } => StatusCode::GATEWAY_TIMEOUT,
            Self::BodyTooLarge { .. } => StatusCode::PAYLOAD_TOO_LARGE,
            Self::Refused | Self::Reset | Self::Other => StatusCode::BAD_GATEWAY,
        }
    }

    fn detail(self) -> Cow<'static, str> {
        match self {
            Self::Refused => "the upstream refused the connection".into(),
            Self::Reset => "the upstream closed the connection before answering".into(),
            Self::ConnectTimeout => "the upstream did not accept the connection in time".into(),
            Self::Timeout { after } => format!("the upstream did not answer within {after}").into(),
            Self::Other => "the upstream request failed".into(),
            Self::BodyTooLarge { limit } => format!("the limit is {limit} bytes").into(),
        }
    }
}

/// Walks an error's sources looking for a specific type.
pub fn find_source<'a, T: std::error::Error + 'static>(
    err: &'a (dyn std::error::Error + 'static),
) -> Option<&'a T> {
    let mut cur: Option<&(dyn std::error::Error + 'static)> = Some(err);
    while let Some(e) = cur {
        if let Some(t) = e.downcast_ref::<T>() {
            return Some(t);
        }
        cur = e.source();
    }
    None
}

impl Rejection {
    pub fn status(&self) -> StatusCode {
        match self {
            Self::Overloaded | Self::CheckFailed => StatusCode::SERVICE_UNAVAILABLE,
            Self::BadTarget(_)
            | Self::BadContentLength
            | Self::BodyUnreadable
            | Self::RepeatedCredentialHeader(_) => StatusCode::BAD_REQUEST,
            Self::BodyTooLarge { .. } => StatusCode::PAYLOAD_TOO_LARGE,
            Self::BodyTimeout | Self::BodyTooSlow { .. } => StatusCode::REQUEST_TIMEOUT,
            Self::ClientBusy => StatusCode::TOO_MANY_REQUESTS,
            Self::InvalidToken => StatusCode::UNAUTHORIZED,
            Self::Blocked(block) => block.status,
            Self::Upstream(failure) => failure.status(),
        }
    }

    pub fn title(&self) -> &'static str {
        match self {
            Self::Overloaded => "Overloaded",
            Self::BadTarget(_)
            | Self::BadContentLength
            | Self::BodyUnreadable
            | Self::RepeatedCredentialHeader(_) => "Bad request",
            Self::BodyTooLarge { .. } | Self::Upstream(UpstreamFailure::BodyTooLarge { .. }) => {
                "Request body too large"
            }
            Self::BodyTimeout | Self::BodyTooSlow { .. } => "Request timeout",
            Self::ClientBusy => "Too many requests",
            Self::InvalidToken => "Invalid session token",
            Self::CheckFailed => "Unavailable",
            Self::Blocked(block) => match block.status {
                StatusCode::TOO_MANY_REQUESTS => "Too many requests",
                StatusCode::BAD_REQUEST => "Request does not match the API schema",
                _ => "Request blocked",
            },
            Self::Upstream(failure) => match failure.status() {
                StatusCode::GATEWAY_TIMEOUT => "Gateway timeout",
                _ => "Bad gateway",
            },
        }
    }

    fn detail(&self) -> Cow<'_, str> {
        match self {
            Self::Overloaded => "too many requests in flight; retry later".into(),
            Self::BadTarget(reason) => reason.to_string().into(),
            Self::BadContentLength => "invalid Content-Length".into(),
            Self::BodyTooLarge {
                limit,
                declared: Some(len),
            } => format!("the body has {len} bytes; the limit is {limit}").into(),
            Self::BodyTooLarge {
                limit,
                declared: None,
            } => format!("the limit is {limit} bytes").into(),
            Self::BodyUnreadable => "the request body could not be read".into(),
            Self::BodyTimeout => "the request body was not received in time".into(),
            Self::BodyTooSlow { min_rate } => {
                format!("the request body arrived slower than {min_rate} bytes per second").into()
            }
            Self::ClientBusy => {
                "too many requests of this client address in flight; retry later".into()
            }
            Self::InvalidToken => "the bearer token could not be verified".into(),
            Self::RepeatedCredentialHeader(name) => {
                format!("the {name} header may appear only once").into()
            }
            Self::CheckFailed => "the request could not be checked".into(),
            Self::Blocked(block) => Cow::Borrowed(&block.detail),
            Self::Upstream(failure) => failure.detail(),
        }
    }

    /// The `decision` label this rejection counts under in the request counter. None for the
    /// ones counted elsewhere: shed requests (their own counter), blocks (counted with the
    /// decision) and upstream failures (counted as allowed or flagged before forwarding).
    pub fn metric_label(&self) -> Option<&'static str> {
        match self {
            Self::Overloaded | Self::Blocked(_) | Self::Upstream(_) => None,
            Self::BadTarget(_)
            | Self::BadContentLength
            | Self::BodyTooLarge { .. }
            | Self::BodyUnreadable
            | Self::BodyTimeout
            | Self::BodyTooSlow { .. }
            | Self::ClientBusy
            | Self::InvalidToken
            | Self::RepeatedCredentialHeader(_)
            | Self::CheckFailed => Some("reject"),
        }
    }

    /// The problem response, counted: in the request counter under `operation` (the
    /// operation's metric label, `none` before it is known), or in the shed / upstream error
    /// counter.
    pub fn into_response(
        self,
        metrics: &Metrics,
        request_id: &str,
        operation: &str,
    ) -> Response<ProxyBody> {
        if let Some(decision) = self.metric_label() {
            metrics
                .requests
                .with_label_values(&[operation, decision])
                .inc();
        }
        match &self {
            Self::Overloaded => metrics.shed.inc(),
            Self::ClientBusy => metrics
                .client_limit_refusals
                .with_label_values(&["client_requests"])
                .inc(),
            Self::BodyTooSlow { .. } => metrics
                .client_limit_refusals
                .with_label_values(&["body_rate"])
                .inc(),
            Self::Upstream(failure) => {
                if let Some(kind) = failure.metric_label() {
                    metrics.upstream_errors.with_label_values(&[kind]).inc();
                }
            }
            _ => {}
        }
        let (extra, retry_after_s) = match &self {
            Self::Blocked(block) => (block.extra.clone(), block.retry_after_s),
            Self::ClientBusy => (None, Some(1)),
            _ => (None, None),
        };
        let mut resp = problem(
            self.status(),
            self.title(),
            &self.detail(),
            request_id,
            extra,
        );
        if matches!(self, Self::InvalidToken) {
            resp.headers_mut().insert(
                header::WWW_AUTHENTICATE,
                HeaderValue::from_static("Bearer error=\"invalid_token\""),
            );
        }
        if let Some(retry) = retry_after_s
            && let Ok(v) = HeaderValue::from_str(&retry.to_string())
        {
            resp.headers_mut().insert(header::RETRY_AFTER, v);
        }
        resp
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn statuses_and_titles() {
        let cases = [
            (Rejection::Overloaded, 503, "Overloaded"),
            (
                Rejection::BadTarget(TargetError::NotOriginForm),
                400,
                "Bad request",
            ),
            (
                Rejection::BodyTooLarge {
                    limit: 10,
                    declared: Some(11),
                },
                413,
                "Request body too large",
            ),
            (Rejection::BodyTimeout, 408, "Request timeout"),
            (
                Rejection::BodyTooSlow { min_rate: 1024 },
                408,
                "Request timeout",
            ),
            (Rejection::ClientBusy, 429, "Too many requests"),
            (Rejection::InvalidToken, 401, "Invalid session token"),
            (
                Rejection::RepeatedCredentialHeader("authorization".into()),
                400,
                "Bad request",
            ),
            (Rejection::CheckFailed, 503, "Unavailable"),
            (
                Rejection::Upstream(UpstreamFailure::ConnectTimeout),
                504,
                "Gateway timeout",
            ),
            (
                Rejection::Upstream(UpstreamFailure::Reset),
                502,
                "Bad gateway",
            ),
            (
                Rejection::Upstream(UpstreamFailure::BodyTooLarge { limit: 10 }),
                413,
                "Request body too large",
            ),
        ];
        for (rejection, status, title) in cases {
            assert_eq!(rejection.status().as_u16(), status, "{rejection:?}");
            assert_eq!(rejection.title(), title, "{rejection:?}");
        }
    }

    #[test]
    fn upstream_failures_are_classified_from_the_error_chain() {
        let refused = std::io::Error::from(std::io::ErrorKind::ConnectionRefused);
        assert_eq!(
            UpstreamFailure::classify(&refused, 1),
            UpstreamFailure::Refused
        );
        let timed_out = std::io::Error::from(std::io::ErrorKind::TimedOut);
        assert_eq!(
            UpstreamFailure::classify(&timed_out, 1),
            UpstreamFailure::ConnectTimeout
        );
        assert_eq!(
            UpstreamFailure::ConnectTimeout.metric_label(),
            Some("timeout")
        );
        assert_eq!(
            UpstreamFailure::BodyTooLarge { limit: 7 }.metric_label(),
            None
        );
    }
}

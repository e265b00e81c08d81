//! Body types: one boxed body for both directions, and a wrapper that keeps the
//! concurrency permit until the response body is fully sent.

use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};
use http_body_util::combinators::UnsyncBoxBody;
use tokio::sync::OwnedSemaphorePermit;

use super::clients::RequestGuard;

pub type BoxError = Box<dyn std::error::Error + Send + Sync>;
/// The body of every request forwarded and every response returned.
pub type ProxyBody = UnsyncBoxBody<Bytes, BoxError>;

/// Holds a permit (and counts the request as in flight) until the body ends or is dropped.
pub struct PermitBody<B> {
    inner: B,
    _permit: Option<OwnedSemaphorePermit>,
    /// The client's place among its requests in flight (`maxConcurrentRequestsPerClient`).
    _client: Option<RequestGuard>,
    in_flight: Option<prometheus::IntGauge>,
}

impl<B> PermitBody<B> {
    pub fn new(
        inner: B,
        permit: Option<OwnedSemaphorePermit>,
        client: Option<RequestGuard>,
        in_flight: prometheus::IntGauge,
    ) -> Self {
        Self {
            inner,
            _permit: permit,
            _client: client,
            in_flight: Some(in_flight),
        }
    }
}

impl<B> Drop for PermitBody<B> {
    fn drop(&mut self) {
        if let Some(g) = self.in_flight.take() {
            g.dec();
        }
    }
}

impl<B> Body for PermitBody<B>
where
    B: Body<Data = Bytes> + Unpin,
    B::Error: Into<BoxError>,
{
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        Pin::new(&mut self.inner).poll_frame(cx).map_err(Into::into)
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

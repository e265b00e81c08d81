//! Reading an answer for what it exposes (see `detect::exposure`) without changing what the
//! client receives: a body already in memory is scanned as it is; a body that streams is held
//! back — only while the exposure detector blocks in `Enforce` — up to
//! [`MAX_SCAN_BYTES`](crate::detect::exposure::MAX_SCAN_BYTES) or its end, whichever comes
//! first, within the upstream timeout, and then relayed: the held prefix first, the rest as it
//! streams. The cost is bounded: at most that many bytes per answer in flight (the concurrency
//! limit bounds answers in flight), and the time the upstream takes to send them.
//!
//! Whatever streams on unjudged — every streamed answer when the detector only logs or the
//! mode is `Monitor`, the rest of a held answer beyond its prefix — is scanned as it passes
//! ([`Scanning`]): each chunk is fed to a [`Scanner`] (bounded state, nothing held back or
//! copied) and relayed at once; when the answer ends, [`StreamEnd`] judges and learns what it
//! held. A finding then can only be reported, not withheld: the data already went out.

use std::collections::VecDeque;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};
use http_body_util::BodyExt;

use super::body::{BoxError, ProxyBody};
use super::upstream::UpstreamBody;
use crate::detect::exposure::{MAX_SCAN_BYTES, MAX_STREAM_SCAN_BYTES, Scan, Scanner};

/// An answer's body after holding: the held frames, then the rest of the upstream body.
pub struct Held {
    frames: VecDeque<Bytes>,
    rest: Option<UpstreamBody>,
    error: Option<BoxError>,
}

impl Body for Held {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        if let Some(bytes) = self.frames.pop_front() {
            return Poll::Ready(Some(Ok(Frame::data(bytes))));
        }
        if let Some(error) = self.error.take() {
            return Poll::Ready(Some(Err(error)));
        }
        match self.rest.as_mut() {
            Some(rest) => Pin::new(rest)
                .poll_frame(cx)
                .map_err(|e| -> BoxError { Box::new(e) }),
            None => Poll::Ready(None),
        }
    }

    fn is_end_stream(&self) -> bool {
        self.frames.is_empty()
            && self.error.is_none()
            && self.rest.as_ref().is_none_or(Body::is_end_stream)
    }

    fn size_hint(&self) -> SizeHint {
        let held: u64 = self.frames.iter().map(|b| b.len() as u64).sum();
        let rest = self.rest.as_ref().map(Body::size_hint).unwrap_or_default();
        let mut hint = SizeHint::new();
        hint.set_lower(held.saturating_add(rest.lower()));
        if let Some(upper) = rest.upper() {
            hint.set_upper(held.saturating_add(upper));
        }
        hint
    }
}

/// A held answer: the scan of what was held, the body to relay (held prefix, then the rest)
/// and, when the answer did not end within the hold, the scanner to go on with over the rest.
pub struct HeldAnswer {
    pub scan: Scan,
    pub body: ProxyBody,
    pub rest: Option<Scanner>,
    /// The whole answer, when it ended within what was held and is at most
    /// `outcome::MAX_READ_BYTES`: in memory like an answer that arrived with its head, so the
    /// analyzer reads it the same way (outcome, values for lineage). Without it a session
    /// whose answer happened to arrive in two reads lost its values (`detect::lineage`).
    pub whole: Option<Bytes>,
}

/// Holds back a streaming body up to [`MAX_SCAN_BYTES`] (or its end, or `timeout`) and scans
/// what it held.
pub async fn hold(mut body: UpstreamBody, timeout: Duration) -> HeldAnswer {
    let mut frames = VecDeque::new();
    let mut scanner = Scanner::new(MAX_STREAM_SCAN_BYTES);
    let mut error = None;
    let mut ended = false;
    let read = async {
        while scanner.read() < MAX_SCAN_BYTES {
            match body.frame().await {
                Some(Ok(frame)) => {
                    if let Ok(data) = frame.into_data() {
                        scanner.feed(&data);
                        frames.push_back(data);
                    }
                }
                Some(Err(e)) => {
                    error = Some(Box::new(e) as BoxError);
                    break;
                }
                None => {
                    ended = true;
                    break;
                }
            }
        }
    };
    // Past the timeout the answer goes on unjudged beyond what was held (fail open).
    let _ = tokio::time::timeout(timeout, read).await;
    let scan = scanner.clone().finish(ended);
    let goes_on = !ended && error.is_none();
    let whole = whole_answer(&frames, ended && error.is_none());
    let held = Held {
        frames,
        rest: goes_on.then_some(body),
        error,
    };
    HeldAnswer {
        scan,
        body: held.boxed_unsync(),
        rest: goes_on.then_some(scanner),
        whole,
    }
}

/// The held frames as one buffer, when they are the whole answer (`complete`: it ended,
/// without an error) and at most `outcome::MAX_READ_BYTES` long, the most the analyzer reads.
fn whole_answer(frames: &VecDeque<Bytes>, complete: bool) -> Option<Bytes> {
    let len: usize = frames.iter().map(Bytes::len).sum();
    if !complete || len > crate::detect::outcome::MAX_READ_BYTES {
        return None;
    }
    if frames.len() == 1 {
        return frames.front().cloned();
    }
    let mut all = Vec::with_capacity(len);
    for f in frames {
        all.extend_from_slice(f);
    }
    Some(Bytes::from(all))
}

/// What happens with the scan of a streamed answer once it ended (or was cut): judged and
/// learned from, see `proxy::handler::StreamedAnswer`.
pub trait StreamEnd: Send + 'static {
    fn ended(self: Box<Self>, scan: Scan);
}

/// A streamed answer relayed chunk by chunk while each chunk is scanned; at its end (its last
/// frame, an error, or the client going away), the scan goes to `end`.
pub struct Scanning {
    inner: ProxyBody,
    scanner: Option<Scanner>,
    end: Option<Box<dyn StreamEnd>>,
}

impl Scanning {
    pub fn new(inner: ProxyBody, scanner: Scanner, end: Box<dyn StreamEnd>) -> Self {
        Self {
            inner,
            scanner: Some(scanner),
            end: Some(end),
        }
    }

    /// Hands the scan over, once. `complete`: the answer reached its end.
    fn finish(&mut self, complete: bool) {
        if let (Some(scanner), Some(end)) = (self.scanner.take(), self.end.take()) {
            end.ended(scanner.finish(complete));
        }
    }
}

impl Drop for Scanning {
    fn drop(&mut self) {
        // Dropped before its end: the client went away or the relay failed. What was scanned
        // is still reported (a lower bound), and never learned (see `StreamedAnswer`).
        self.finish(false);
    }
}

impl Body for Scanning {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let polled = Pin::new(&mut self.inner).poll_frame(cx);
        match &polled {
            Poll::Ready(Some(Ok(frame))) => {
                if let (Some(data), Some(scanner)) = (frame.data_ref(), self.scanner.as_mut()) {
                    scanner.feed(data);
                }
                // hyper may not poll again once the body says it ended.
                if self.inner.is_end_stream() {
                    self.finish(true);
                }
            }
            Poll::Ready(Some(Err(_))) => self.finish(false),
            Poll::Ready(None) => self.finish(true),
            Poll::Pending => {}
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn held_body_relays_every_byte_in_order() {
        let frames = VecDeque::from([Bytes::from_static(b"[1,"), Bytes::from_static(b"2]")]);
        let held = Held {
            frames,
            rest: None,
            error: None,
        };
        let collected = held
            .collect()
            .await
            .map(|c| c.to_bytes())
            .unwrap_or_default();
        assert_eq!(&collected[..], b"[1,2]");
    }

    #[test]
    fn a_held_answer_is_whole_only_when_it_ended_within_the_read_limit() {
        let parts = |p: &[&'static [u8]]| -> VecDeque<Bytes> {
            p.iter().copied().map(Bytes::from_static).collect()
        };
        let two = parts(&[b"{\"books\":[", b"\"a\"]}"]);
        assert_eq!(
            whole_answer(&two, true).as_deref(),
            Some(&b"{\"books\":[\"a\"]}"[..])
        );
        assert_eq!(
            whole_answer(&parts(&[b"[1]"]), true).as_deref(),
            Some(&b"[1]"[..])
        );
        // Cut (timeout, error) or still streaming: not the whole answer.
        assert_eq!(whole_answer(&two, false), None);
        // Longer than the analyzer reads.
        let big = VecDeque::from([Bytes::from(vec![
            b' ';
            crate::detect::outcome::MAX_READ_BYTES + 1
        ])]);
        assert_eq!(whole_answer(&big, true), None);
    }

    struct Keep(std::sync::Arc<parking_lot::Mutex<Vec<Scan>>>);

    impl StreamEnd for Keep {
        fn ended(self: Box<Self>, scan: Scan) {
            self.0.lock().push(scan);
        }
    }

    fn frames(parts: &[&'static [u8]]) -> ProxyBody {
        let held = Held {
            frames: parts.iter().copied().map(Bytes::from_static).collect(),
            rest: None,
            error: None,
        };
        held.boxed_unsync()
    }

    #[tokio::test]
    async fn a_scanned_stream_relays_every_byte_and_reports_its_scan_once() {
        let seen = std::sync::Arc::new(parking_lot::Mutex::new(Vec::new()));
        let body = Scanning::new(
            frames(&[b"[{\"mail\":\"ann@exa", b"mple.net\"},", b"{},{}]"]),
            Scanner::new(MAX_STREAM_SCAN_BYTES),
            Box::new(Keep(seen.clone())),
        );
        let collected = body
            .collect()
            .await
            .map(|c| c.to_bytes())
            .unwrap_or_default();
        assert_eq!(&collected[..], b"[{\"mail\":\"ann@example.net\"},{},{}]");
        let seen = seen.lock();
        assert_eq!(seen.len(), 1, "reported once");
        let scan = seen.first().cloned().unwrap_or_default();
        assert!(scan.complete && scan.records == 3);
        assert!(
            scan.classes
                .contains(crate::model::exposure::SensitiveClass::Email)
        );
    }

    #[test]
    fn a_stream_dropped_before_its_end_reports_an_incomplete_scan() {
        let seen = std::sync::Arc::new(parking_lot::Mutex::new(Vec::new()));
        let mut scanner = Scanner::new(MAX_STREAM_SCAN_BYTES);
        scanner.feed(b"[1,2,");
        drop(Scanning::new(
            frames(&[b"3]"]),
            scanner,
            Box::new(Keep(seen.clone())),
        ));
        let seen = seen.lock();
        assert_eq!(seen.len(), 1);
        let scan = seen.first().cloned().unwrap_or_default();
        assert!(!scan.complete && scan.records == 2);
    }
}

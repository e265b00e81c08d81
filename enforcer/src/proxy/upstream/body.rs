//! The body of an upstream response as the client receives it: in memory when the whole of it
//! arrived with the head (the common case for API responses), otherwise read from the
//! connection as the client takes it. Either way the connection goes back to the pool as soon
//! as the body's last byte has been read, when the response allows it.

use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll, ready};

use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};

use super::chunked::{ChunkedDecoder, Decoded};
use super::{Connection, PoolInner, UpstreamError};

/// Where a finished connection goes: back to its worker's shard of the pool.
pub(super) struct Giveback {
    pub pool: Arc<PoolInner>,
    pub shard: usize,
}

impl Giveback {
    /// Returns `conn` to the pool when nothing beyond the message was read from it.
    pub fn give(self, conn: Connection) {
        if conn.read_buf.is_empty() {
            self.pool.put_idle(self.shard, conn);
        }
    }
}

/// How the rest of a streamed body is delimited.
pub(super) enum Decoder {
    /// This many bytes remain.
    Length(u64),
    Chunked(ChunkedDecoder),
    UntilClose,
}

/// A response body being read from its connection.
pub(super) struct Streaming {
    /// `None` once the body has ended (the connection was given back or dropped).
    pub conn: Option<Connection>,
    pub decoder: Decoder,
    /// Set when the response allows the connection to be reused.
    pub giveback: Option<Giveback>,
}

enum Kind {
    /// The whole body (`None`: sent, or there was none).
    Full(Option<Bytes>),
    Streaming(Box<Streaming>),
}

/// An upstream response body.
pub struct UpstreamBody {
    kind: Kind,
}

impl UpstreamBody {
    pub(super) fn full(bytes: Bytes) -> Self {
        let bytes = (!bytes.is_empty()).then_some(bytes);
        Self {
            kind: Kind::Full(bytes),
        }
    }

    pub(super) fn streaming(streaming: Streaming) -> Self {
        Self {
            kind: Kind::Streaming(Box::new(streaming)),
        }
    }
}

impl UpstreamBody {
    /// The whole body when it arrived with the head (empty when there is none); `None` while
    /// it is still to be read from the connection (reading it would delay the response).
    pub fn in_memory(&self) -> Option<&[u8]> {
        match &self.kind {
            Kind::Full(bytes) => Some(bytes.as_deref().unwrap_or_default()),
            Kind::Streaming(_) => None,
        }
    }
}

impl Body for UpstreamBody {
    type Data = Bytes;
    type Error = UpstreamError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, UpstreamError>>> {
        match &mut self.get_mut().kind {
            Kind::Full(bytes) => Poll::Ready(bytes.take().map(|b| Ok(Frame::data(b)))),
            Kind::Streaming(s) => s.poll_data(cx),
        }
    }

    fn is_end_stream(&self) -> bool {
        match &self.kind {
            Kind::Full(bytes) => bytes.is_none(),
            Kind::Streaming(s) => s.conn.is_none(),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match &self.kind {
            Kind::Full(bytes) => SizeHint::with_exact(bytes.as_ref().map_or(0, |b| b.len() as u64)),
            Kind::Streaming(s) => match (&s.conn, &s.decoder) {
                (None, _) => SizeHint::with_exact(0),
                (Some(_), Decoder::Length(n)) => SizeHint::with_exact(*n),
                (Some(_), _) => SizeHint::default(),
            },
        }
    }
}

impl Streaming {
    fn poll_data(
        &mut self,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, UpstreamError>>> {
        loop {
            let Some(conn) = self.conn.as_mut() else {
                return Poll::Ready(None);
            };
            // First what the buffer already holds.
            let buffered = &mut conn.read_buf;
            match &mut self.decoder {
                Decoder::Length(remaining) if !buffered.is_empty() => {
                    let n = usize::try_from(*remaining)
                        .unwrap_or(usize::MAX)
                        .min(buffered.len());
                    *remaining -= n as u64;
                    let data = buffered.split_to(n).freeze();
                    if *remaining == 0 {
                        self.finish();
                    }
                    return Poll::Ready(Some(Ok(Frame::data(data))));
                }
                Decoder::Length(_) => {}
                Decoder::Chunked(decoder) => match decoder.decode(buffered) {
                    Ok(Decoded::Data(data)) => return Poll::Ready(Some(Ok(Frame::data(data)))),
                    Ok(Decoded::Done) => {
                        self.finish();
                        return Poll::Ready(None);
                    }
                    Ok(Decoded::NeedMore) => {}
                    Err(e) => return self.fail(UpstreamError::Protocol(e.into())),
                },
                Decoder::UntilClose if !buffered.is_empty() => {
                    return Poll::Ready(Some(Ok(Frame::data(buffered.split().freeze()))));
                }
                Decoder::UntilClose => {}
            }
            // Then more from the connection.
            conn.reserve_read_space();
            let read = ready!(tokio_util::io::poll_read_buf(
                Pin::new(&mut conn.stream),
                cx,
                &mut conn.read_buf
            ));
            match read {
                Ok(0) if matches!(self.decoder, Decoder::UntilClose) => {
                    // The end of a close-delimited body; the connection is done for.
                    self.conn = None;
                    return Poll::Ready(None);
                }
                Ok(0) => {
                    return self.fail(UpstreamError::Io(io::Error::new(
                        io::ErrorKind::UnexpectedEof,
                        "the upstream closed the connection in the middle of the response body",
                    )));
                }
                Ok(_) => {}
                Err(e) => return self.fail(UpstreamError::Io(e)),
            }
        }
    }

    /// The body has ended: the connection goes back to the pool if the response allows it.
    fn finish(&mut self) {
        if let (Some(conn), Some(giveback)) = (self.conn.take(), self.giveback.take()) {
            giveback.give(conn);
        }
    }

    fn fail(&mut self, error: UpstreamError) -> Poll<Option<Result<Frame<Bytes>, UpstreamError>>> {
        self.conn = None;
        self.giveback = None;
        Poll::Ready(Some(Err(error)))
    }
}

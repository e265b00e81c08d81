//! The upstream HTTP/1.1 codec: response heads and the chunked decoder. Never a panic; a head
//! is never longer than its input; a body framed until close never keeps the connection; the
//! chunked decoder gives the same result however the bytes are split into reads.

#![no_main]

use bytes::BytesMut;
use libfuzzer_sys::fuzz_target;
use ordo_enforcer::proxy::fuzzing::{
    ChunkError, ChunkedDecoder, Decoded, Parsed, ResponseFraming, parse_response_head,
};

/// Decodes `body` fed `step` bytes at a time: the data, and whether the message ended.
fn decode_chunked(body: &[u8], step: usize) -> Result<(Vec<u8>, bool), ChunkError> {
    let mut decoder = ChunkedDecoder::default();
    let mut buf = BytesMut::new();
    let mut data = Vec::new();
    for piece in body.chunks(step.max(1)) {
        buf.extend_from_slice(piece);
        loop {
            match decoder.decode(&mut buf)? {
                Decoded::Data(d) => {
                    assert!(!d.is_empty());
                    data.extend_from_slice(&d);
                }
                Decoded::NeedMore => break,
                Decoded::Done => return Ok((data, true)),
            }
        }
    }
    Ok((data, false))
}

fn check_chunked(body: &[u8], step: usize) {
    let whole = decode_chunked(body, body.len());
    let pieces = decode_chunked(body, step);
    assert_eq!(whole, pieces, "split into {step}-byte reads");
    if let Ok((data, _)) = whole {
        assert!(data.len() <= body.len());
    }
}

fuzz_target!(|data: &[u8]| {
    let Some((&selector, rest)) = data.split_first() else {
        return;
    };
    let method = if selector & 1 == 0 {
        http::Method::GET
    } else {
        http::Method::HEAD
    };
    let step = usize::from(selector >> 1);
    match parse_response_head(rest, &method) {
        Ok(Parsed::Complete { head, len }) => {
            assert!(len <= rest.len());
            if method == http::Method::HEAD {
                assert_eq!(head.framing, ResponseFraming::Empty);
            }
            if head.framing == ResponseFraming::UntilClose {
                assert!(!head.keep_alive);
            }
            if head.framing == ResponseFraming::Chunked {
                check_chunked(rest.get(len..).unwrap_or_default(), step);
            }
        }
        Ok(Parsed::Informational { len }) => assert!(len <= rest.len()),
        Ok(Parsed::Partial) | Err(_) => {}
    }
    check_chunked(rest, step);
});

//! The chunked transfer coding (RFC 9112 §7.1) of upstream responses, decoded as the bytes
//! arrive.
//!
//! Strict where leniency lets two parsers disagree about where a message ends (request
//! smuggling's ground): every line ends in CRLF, a chunk size is hexadecimal digits only (at
//! most 16), chunk data is followed by exactly CRLF. Extensions are skipped, trailer fields
//! are read and dropped (the response head has already been forwarded).

use bytes::{Buf, Bytes, BytesMut};

/// Longest chunk-size line or trailer line accepted (extensions included).
const MAX_LINE: usize = 4096;
/// Most trailer bytes accepted in one message: hyper's limit (16 KiB), so that no trailer
/// section one of the two takes is refused by the other (found by the upstream_diff fuzz
/// target, `fuzz/src/upstream_diff.rs`).
const MAX_TRAILERS: usize = 16 * 1024;
/// Most trailer fields accepted in one message: as many as a response head may have
/// ([`super::codec::MAX_HEADERS`], hyper's default too).
const MAX_TRAILER_FIELDS: usize = super::codec::MAX_HEADERS;

/// Why a chunked body is malformed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum ChunkError {
    #[error("chunk size line is not hexadecimal digits followed by CRLF")]
    BadSize,
    #[error("chunk size does not fit in 64 bits")]
    SizeOverflow,
    #[error("chunk data is not followed by CRLF")]
    BadDataEnd,
    #[error("chunk line longer than {MAX_LINE} bytes")]
    LineTooLong,
    #[error("trailer section longer than {MAX_TRAILERS} bytes")]
    TrailersTooLong,
    #[error("more than {MAX_TRAILER_FIELDS} trailer fields")]
    TooManyTrailers,
    #[error("line not terminated by CRLF")]
    BareLf,
    #[error("trailer line is not a field (name \":\" value)")]
    BadTrailer,
}

/// What one decoding step produced.
#[derive(Debug, PartialEq, Eq)]
pub enum Decoded {
    /// Body bytes.
    Data(Bytes),
    /// The buffer holds no complete next element: read more.
    NeedMore,
    /// The last chunk and the trailer section were read: the message is complete.
    Done,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    Size,
    Data(u64),
    DataEnd,
    /// Trailer bytes and fields read so far.
    Trailers {
        bytes: usize,
        fields: usize,
    },
    Done,
}

/// A chunked-body decoder; feed it the connection's read buffer.
#[derive(Debug)]
pub struct ChunkedDecoder {
    state: State,
}

impl Default for ChunkedDecoder {
    fn default() -> Self {
        Self { state: State::Size }
    }
}

impl ChunkedDecoder {
    /// Consumes what it can of `buf` and returns the next piece of the body.
    pub fn decode(&mut self, buf: &mut BytesMut) -> Result<Decoded, ChunkError> {
        loop {
            match self.state {
                State::Size => {
                    let Some(line) = take_line(buf)? else {
                        return Ok(Decoded::NeedMore);
                    };
                    let size = parse_size(&line)?;
                    self.state = if size == 0 {
                        State::Trailers {
                            bytes: 0,
                            fields: 0,
                        }
                    } else {
                        State::Data(size)
                    };
                }
                State::Data(remaining) => {
                    if buf.is_empty() {
                        return Ok(Decoded::NeedMore);
                    }
                    let n = usize::try_from(remaining)
                        .unwrap_or(usize::MAX)
                        .min(buf.len());
                    let left = remaining - n as u64;
                    self.state = if left == 0 {
                        State::DataEnd
                    } else {
                        State::Data(left)
                    };
                    return Ok(Decoded::Data(buf.split_to(n).freeze()));
                }
                State::DataEnd => {
                    if buf.len() < 2 {
                        return Ok(Decoded::NeedMore);
                    }
                    if &buf[..2] != b"\r\n" {
                        return Err(ChunkError::BadDataEnd);
                    }
                    buf.advance(2);
                    self.state = State::Size;
                }
                State::Trailers { bytes, fields } => {
                    let Some(line) = take_line(buf)? else {
                        return Ok(Decoded::NeedMore);
                    };
                    if line.len() == 2 {
                        self.state = State::Done;
                        return Ok(Decoded::Done);
                    }
                    if !is_field_line(&line[..line.len() - 2]) {
                        return Err(ChunkError::BadTrailer);
                    }
                    let (bytes, fields) = (bytes + line.len(), fields + 1);
                    if bytes > MAX_TRAILERS {
                        return Err(ChunkError::TrailersTooLong);
                    }
                    if fields > MAX_TRAILER_FIELDS {
                        return Err(ChunkError::TooManyTrailers);
                    }
                    self.state = State::Trailers { bytes, fields };
                }
                State::Done => return Ok(Decoded::Done),
            }
        }
    }
}

/// Splits one CRLF-terminated line (terminator included) off the front of `buf`.
fn take_line(buf: &mut BytesMut) -> Result<Option<BytesMut>, ChunkError> {
    let window = &buf[..buf.len().min(MAX_LINE)];
    match window.iter().position(|&b| b == b'\n') {
        Some(lf) if lf == 0 || window[lf - 1] != b'\r' => Err(ChunkError::BareLf),
        Some(lf) => Ok(Some(buf.split_to(lf + 1))),
        None if buf.len() >= MAX_LINE => Err(ChunkError::LineTooLong),
        None => Ok(None),
    }
}

/// Whether a trailer line (without its CRLF) is `field-name ":" field-value` (RFC 9110 §5):
/// a line that is not a field (no colon, a folded line, a control character) ends the message
/// for one parser and not for another, so it is refused rather than skipped.
fn is_field_line(line: &[u8]) -> bool {
    let Some(colon) = line.iter().position(|&b| b == b':') else {
        return false;
    };
    let (name, value) = line.split_at(colon);
    let tchar = |b: &u8| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(b);
    !name.is_empty()
        && name.iter().all(tchar)
        && value[1..]
            .iter()
            .all(|&b| b == b'\t' || (b >= 0x20 && b != 0x7f))
}

/// The size of a `chunk-size [ chunk-ext ] CRLF` line.
fn parse_size(line: &[u8]) -> Result<u64, ChunkError> {
    let content = &line[..line.len() - 2];
    let digits_end = content
        .iter()
        .position(|b| !b.is_ascii_hexdigit())
        .unwrap_or(content.len());
    if digits_end == 0 {
        return Err(ChunkError::BadSize);
    }
    // After the digits: nothing but spaces and tabs (RFC 9112's BWS), or those then a `;`
    // extension (skipped). Only SP and HTAB: a stray CR here is a line end for some parsers
    // and not for others (`trim_ascii_start` would also skip CR, LF and form feed).
    let ws_end = content[digits_end..]
        .iter()
        .position(|&b| b != b' ' && b != b'\t')
        .map_or(content.len(), |i| digits_end + i);
    let after_ws = &content[ws_end..];
    if !(after_ws.is_empty() || after_ws.first() == Some(&b';')) {
        return Err(ChunkError::BadSize);
    }
    if after_ws.iter().any(|&b| b == b'\r' || b == 0) {
        return Err(ChunkError::BadSize);
    }
    let digits = &content[..digits_end];
    let significant = digits
        .iter()
        .position(|&b| b != b'0')
        .map_or(&[][..], |i| &digits[i..]);
    if significant.len() > 16 {
        return Err(ChunkError::SizeOverflow);
    }
    Ok(significant.iter().fold(0u64, |acc, &b| {
        let d = char::from(b).to_digit(16).map_or(0, u64::from);
        (acc << 4) | d
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Decodes `input` fed in pieces of `step` bytes; returns the body or the first error.
    fn decode_in_steps(input: &[u8], step: usize) -> Result<(Vec<u8>, bool), ChunkError> {
        let mut decoder = ChunkedDecoder::default();
        let mut buf = BytesMut::new();
        let mut body = Vec::new();
        let mut fed = 0;
        loop {
            match decoder.decode(&mut buf)? {
                Decoded::Data(b) => body.extend_from_slice(&b),
                Decoded::Done => return Ok((body, true)),
                Decoded::NeedMore if fed >= input.len() => return Ok((body, false)),
                Decoded::NeedMore => {
                    let end = (fed + step).min(input.len());
                    buf.extend_from_slice(&input[fed..end]);
                    fed = end;
                }
            }
        }
    }

    #[test]
    fn decodes_whatever_the_pieces_the_bytes_arrive_in() {
        let input = b"5\r\nhello\r\n1A;name=value\r\nabcdefghijklmnopqrstuvwxyz\r\n0\r\nx-trailer: 1\r\n\r\n";
        for step in [1, 2, 3, 7, 64, 1024] {
            let (body, done) = decode_in_steps(input, step).unwrap();
            assert_eq!(body, b"helloabcdefghijklmnopqrstuvwxyz", "step {step}");
            assert!(done, "step {step}");
        }
    }

    #[test]
    fn stops_at_the_end_of_the_message_and_leaves_what_follows() {
        let mut buf = BytesMut::from(&b"3\r\nabc\r\n0\r\n\r\nHTTP/1.1 200 OK"[..]);
        let mut decoder = ChunkedDecoder::default();
        assert_eq!(
            decoder.decode(&mut buf),
            Ok(Decoded::Data(Bytes::from_static(b"abc")))
        );
        assert_eq!(decoder.decode(&mut buf), Ok(Decoded::Done));
        assert_eq!(&buf[..], b"HTTP/1.1 200 OK");
    }

    #[test]
    fn an_unfinished_body_asks_for_more() {
        assert_eq!(
            decode_in_steps(b"5\r\nhel", 100).unwrap(),
            (b"hel".to_vec(), false)
        );
        assert_eq!(
            decode_in_steps(b"5\r\nhello\r\n0\r\n", 100).unwrap(),
            (b"hello".to_vec(), false)
        );
    }

    #[test]
    fn rejects_what_two_parsers_could_read_differently() {
        let cases: [(&[u8], ChunkError); 14] = [
            (b"5\nhello\r\n0\r\n\r\n", ChunkError::BareLf),
            (b"\r\n", ChunkError::BadSize),
            (b"-5\r\nhello\r\n", ChunkError::BadSize),
            (b"0x5\r\nhello\r\n", ChunkError::BadSize),
            (b"5 5\r\nhello\r\n", ChunkError::BadSize),
            (b"1\r\r\na\r\n0\r\n\r\n", ChunkError::BadSize),
            (b"1\x0c\r\na\r\n0\r\n\r\n", ChunkError::BadSize),
            (b"5\r\nhelloXX0\r\n\r\n", ChunkError::BadDataEnd),
            (b"10000000000000000\r\n", ChunkError::SizeOverflow),
            (b"5\r\nhello\r\n0\r\nx: 1\n\r\n", ChunkError::BareLf),
            // Trailer lines that are not fields (found by the upstream_diff fuzz target:
            // hyper refuses them, the decoder skipped them).
            (b"0\r\na\r\n0\r\n\r\n", ChunkError::BadTrailer),
            (b"0\r\nx: 1\r\n folded\r\n\r\n", ChunkError::BadTrailer),
            (b"0\r\n: no name\r\n\r\n", ChunkError::BadTrailer),
            (b"0\r\nx: a\x01b\r\n\r\n", ChunkError::BadTrailer),
        ];
        for (input, expected) in cases {
            assert_eq!(
                decode_in_steps(input, 4).map(|_| ()),
                Err(expected),
                "{}",
                String::from_utf8_lossy(input)
            );
        }
    }

    #[test]
    fn accepts_leading_zeros_and_whitespace_before_an_extension() {
        let (body, done) = decode_in_steps(b"0003 ;ext\r\nabc\r\n00\r\n\r\n", 5).unwrap();
        assert_eq!((body.as_slice(), done), (&b"abc"[..], true));
        assert_eq!(parse_size(b"ffffffffffffffff\r\n"), Ok(u64::MAX));
    }

    #[test]
    fn bounds_lines_and_trailers() {
        let long = [b"1;".as_slice(), &[b'x'; MAX_LINE]].concat();
        assert_eq!(
            decode_in_steps(&long, 512).map(|_| ()),
            Err(ChunkError::LineTooLong)
        );
        // Fewer fields than the count bound, more bytes than the byte bound.
        let mut trailers = b"0\r\n".to_vec();
        let filler = format!("x-filler: {}\r\n", "1".repeat(1000));
        for _ in 0..(MAX_TRAILERS / filler.len() + 1) {
            trailers.extend_from_slice(filler.as_bytes());
        }
        assert_eq!(
            decode_in_steps(&trailers, 4096).map(|_| ()),
            Err(ChunkError::TrailersTooLong)
        );
        // As many short fields as a head may have pass; one more is refused (hyper refuses
        // it too: the upstream_diff fuzz target found the difference).
        let section = |n: usize| {
            let mut t = b"0\r\n".to_vec();
            for i in 0..n {
                t.extend_from_slice(format!("x{i}: 1\r\n").as_bytes());
            }
            t.extend_from_slice(b"\r\n");
            t
        };
        assert!(decode_in_steps(&section(MAX_TRAILER_FIELDS), 512).is_ok());
        assert_eq!(
            decode_in_steps(&section(MAX_TRAILER_FIELDS + 1), 512).map(|_| ()),
            Err(ChunkError::TooManyTrailers)
        );
    }
}

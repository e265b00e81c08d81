//! What the enforcer reads of an upstream's answer: the exposure scan (`detect::exposure`,
//! fed as it streams) and the values lineage follows (`detect::lineage::response_values`).
//! An answer can carry whatever a client stored or sent, so: never a panic; the scan of an
//! answer cut into two chunks anywhere is the scan of the whole (the scanner's state carried
//! across chunks is exact); its field names are bounded in count and length; the values
//! lineage keeps are bounded in count and path length, and none come from what is not one
//! JSON document.
//!
//! Input: two bytes choosing where to cut, then the answer.

#![no_main]

use libfuzzer_sys::fuzz_target;
use ordo_enforcer::detect::exposure::{MAX_STREAM_SCAN_BYTES, Scanner, scan};
use ordo_enforcer::detect::lineage::{MAX_RESPONSE_DEPTH, MAX_RESPONSE_VALUES, response_values};
use ordo_enforcer::model::exposure::{MAX_FIELD_LEN, MAX_FIELDS};

fuzz_target!(|data: &[u8]| {
    let Some((cut, body)) = data.split_first_chunk::<2>() else {
        return;
    };
    let at = usize::from(u16::from_le_bytes(*cut)) % (body.len() + 1);

    let whole = scan(body, true);
    let (first, second) = body.split_at(at);
    let mut streamed = Scanner::new(MAX_STREAM_SCAN_BYTES);
    streamed.feed(first);
    streamed.feed(second);
    assert_eq!(streamed.finish(true), whole, "cut at {at}");
    assert!(whole.fields.len() <= MAX_FIELDS);
    assert!(whole.fields.iter().all(|f| f.len() <= MAX_FIELD_LEN));
    assert!(whole.records <= body.len() as u64);

    let values = response_values(body);
    assert!(values.len() <= MAX_RESPONSE_VALUES);
    // A path is at most MAX_RESPONSE_DEPTH names of 32 bytes with a `.` or `[]` each (a
    // name cut at a character boundary is shorter).
    let longest = MAX_RESPONSE_DEPTH * (32 + 3);
    assert!(values.iter().all(|(path, _)| path.len() <= longest), "{values:?}");
    if serde_json::from_slice::<serde_json::Value>(body).is_err() {
        assert!(values.is_empty(), "values from a body that is not JSON: {values:?}");
    }
});

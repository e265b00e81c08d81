//! Differential fuzzing of the upstream HTTP/1.1 response codec against hyper's client (see
//! `fuzz/src/upstream_diff.rs` for what is compared and the intended differences). The
//! committed corpus is replayed by `enforcer/tests/upstream_codec_differential.rs`.
//!
//! Input: one selector byte (odd: the request was HEAD), then the upstream's bytes.

#![no_main]

use libfuzzer_sys::fuzz_target;
use ordo_fuzz::upstream_diff::compare;

fuzz_target!(|data: &[u8]| {
    let Some((&selector, rest)) = data.split_first() else {
        return;
    };
    let method = if selector & 1 == 0 {
        http::Method::GET
    } else {
        http::Method::HEAD
    };
    if let Err(difference) = compare(rest, &method) {
        panic!("{difference}");
    }
});

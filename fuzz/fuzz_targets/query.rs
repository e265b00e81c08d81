//! The query parser: never a panic; the checked parse sees every pair the lenient one does,
//! with the same decoding, up to the cap; refused names are the only difference.

#![no_main]

use libfuzzer_sys::fuzz_target;
use ordo_enforcer::config::PathsConfig;
use ordo_enforcer::operation::{TargetError, parse_query, parse_request_query};

const MAX: usize = 32;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let lenient = parse_query(text);
    match parse_request_query(text, MAX, &PathsConfig::default()) {
        Ok(pairs) => {
            assert!(pairs.len() <= MAX);
            assert_eq!(pairs, lenient);
            for (name, _) in &pairs {
                assert!(!name.chars().any(char::is_control), "{name:?}");
            }
        }
        Err(TargetError::TooManyQueryParameters(max)) => {
            assert_eq!(max, MAX);
            assert!(lenient.len() > MAX);
        }
        Err(TargetError::InvalidQueryName) => {}
        Err(other) => panic!("unexpected error {other:?}"),
    }
});

//! The config loaders: the enforcer's YAML config (`config::parse_yaml`, which is also what
//! the operator renders from an `ApiProtection` and its rules) and the OpenAPI document
//! (`operation::parse_openapi`). Never a panic; an accepted config serialises back to YAML
//! that loads to the same config (round trip) and compiles into a policy without a panic; an
//! accepted OpenAPI document declares operations that parse again from their display form.
//!
//! Input: one selector byte (even: enforcer config, odd: OpenAPI document), then the text.

#![no_main]

use libfuzzer_sys::fuzz_target;
use ordo_enforcer::config::{EnforcerConfig, OperationsConfig, parse_yaml};
use ordo_enforcer::operation::{OperationPattern, OperationResolver, parse_openapi};
use ordo_enforcer::policy::{CounterRegistry, compile};

/// Whether compiling would read a file (the OpenAPI document, a token or key file): the
/// target stays off the filesystem.
fn reads_files(config: &EnforcerConfig) -> bool {
    config.open_api.is_some()
        || config.admin.token_file.is_some()
        || config
            .session
            .jwt_verification
            .as_ref()
            .is_some_and(|j| j.keys.iter().any(|k| k.file.is_some()))
}

fuzz_target!(|data: &[u8]| {
    let Some((&selector, rest)) = data.split_first() else {
        return;
    };
    let Ok(text) = std::str::from_utf8(rest) else {
        return;
    };
    if selector % 2 == 0 {
        let Ok(config) = parse_yaml(text) else {
            return;
        };
        let yaml = serde_yaml_ng::to_string(&config)
            .unwrap_or_else(|e| panic!("an accepted config does not serialise: {e}"));
        match parse_yaml(&yaml) {
            Ok(again) => assert_eq!(again, config, "round trip changed the config:\n{yaml}"),
            Err(e) => panic!("an accepted config serialises to one refused: {e}\n{yaml}"),
        }
        if !reads_files(&config) {
            let resolver = OperationResolver::new(&OperationsConfig::default());
            let _ = compile(config, &resolver, &CounterRegistry::default());
        }
    } else {
        let Ok(doc) = parse_openapi(text, "fuzz.yaml") else {
            return;
        };
        for (pattern, schema) in &doc.operations {
            let shown = pattern.display();
            let again = OperationPattern::parse(&shown)
                .unwrap_or_else(|e| panic!("declared operation {shown:?} does not parse: {e}"));
            assert_eq!(again.display(), shown);
            assert_eq!(again.normalized_key(), pattern.normalized_key());
            let mut out = Vec::new();
            schema.validate_body(Some(&serde_json::json!({"a": 1})), true, &mut out);
            schema.validate_params(&[("id", "1")], &[], &mut out);
        }
    }
});

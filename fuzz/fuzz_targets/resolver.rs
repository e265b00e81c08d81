//! The operation resolver with a learned template tree: never a panic; a path resolves to the
//! same operation when asked again; the caps on templates and tree nodes hold.

#![no_main]

use libfuzzer_sys::fuzz_target;
use ordo_enforcer::config::{OperationsConfig, PathsConfig};
use ordo_enforcer::operation::{OperationPattern, OperationResolver, canonical_path};

const DECLARED: [&str; 4] = [
    "GET /api/v1/accounts/{id}/balance",
    "POST /api/v1/transferFunds",
    "GET /api/v1/export",
    "GET /api/v1/accounts/me/balance",
];
const METHODS: [&str; 8] = [
    "GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS", "PROPFIND",
];

fuzz_target!(|data: &[u8]| {
    let config = OperationsConfig {
        learn: true,
        max_templates: 32,
        max_values_per_position: 4,
        max_segments: 8,
    };
    let resolver = OperationResolver::new(&config);
    let declared = DECLARED
        .iter()
        .filter_map(|d| OperationPattern::parse(d).ok())
        .map(|p| (p, None))
        .collect();
    resolver.set_declared(declared);
    let policy = PathsConfig::default();
    for line in data.split(|&b| b == b'\n') {
        let Some((&m, rest)) = line.split_first() else {
            continue;
        };
        let Ok(rest) = std::str::from_utf8(rest) else {
            continue;
        };
        let raw = format!("/{rest}");
        let Ok(path) = canonical_path(&raw, &policy) else {
            continue;
        };
        let mut segments = Vec::new();
        let name = METHODS[usize::from(m) % METHODS.len()];
        let Ok(method) = http::Method::from_bytes(name.as_bytes()) else {
            continue;
        };
        let first = resolver.resolve(&method, &path, &mut segments).template;
        for (pos, _) in first.params.iter() {
            assert!(usize::from(*pos) < segments.len());
        }
        let again = resolver.resolve(&method, &path, &mut segments).template;
        assert_eq!(first.op.id, again.op.id, "{name} {path}");
        let stats = resolver.stats();
        assert!(stats.learned_templates <= stats.max_templates);
        assert!(stats.tree_nodes <= stats.max_nodes);
    }
});

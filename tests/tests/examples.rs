//! The manifests under `examples/` are valid: they read into the CRD types without unknown
//! fields, and the operator's own conversion and validation (the same the webhook and the
//! enforcer run) accept them. `e2e_examples.rs` checks that the API server accepts them too.

// Helpers of a test binary may unwrap too: a panic is the failure report.
#![allow(clippy::unwrap_used)]

use ordo_tests::cluster::workspace_root;
use ordo_tests::demo::examples::{self, Resource};

fn load(dir: &str) -> Vec<examples::Manifest> {
    examples::load_dir(&workspace_root().join(dir)).unwrap()
}

#[test]
fn bank_api_example_is_one_monitor_protection_with_two_rules() {
    let manifests = load("examples/bank-api");
    let protections: Vec<_> = manifests
        .iter()
        .filter_map(|m| match &m.resource {
            Resource::ApiProtection(p) => Some(p),
            Resource::SequenceRule(_) => None,
        })
        .collect();
    let rules: Vec<_> = manifests
        .iter()
        .filter_map(|m| match &m.resource {
            Resource::SequenceRule(r) => Some(r),
            Resource::ApiProtection(_) => None,
        })
        .collect();
    assert_eq!(protections.len(), 1);
    let protection = protections[0];
    assert_eq!(protection.metadata.name.as_deref(), Some("bank-api"));
    assert_eq!(
        protection.spec.mode,
        ordo_operator::crd::ProtectionMode::Monitor
    );
    assert_eq!(protection.spec.target.service, "bank-api");
    assert!(
        protection.metadata.namespace.is_none(),
        "examples must not pin a namespace"
    );

    let mut names: Vec<_> = rules
        .iter()
        .map(|r| r.metadata.name.clone().unwrap_or_default())
        .collect();
    names.sort();
    assert_eq!(names, ["balance-before-transfer", "no-repeated-transfer"]);
    for rule in &rules {
        assert_eq!(rule.spec.protection_ref.name, "bank-api");
        assert!(
            rule.spec.kind().is_some(),
            "{names:?}: exactly one rule kind"
        );
    }
    let balance = rules
        .iter()
        .find(|r| r.metadata.name.as_deref() == Some("balance-before-transfer"))
        .unwrap();
    let requires = balance
        .spec
        .requires
        .as_ref()
        .expect("balance-before-transfer is a requires rule");
    assert_eq!(requires.operation, "POST /api/v1/transfers");
    assert_eq!(
        requires.after,
        ["GET /api/v1/accounts/{account_id}/balance"]
    );
    let repeat = rules
        .iter()
        .find(|r| r.metadata.name.as_deref() == Some("no-repeated-transfer"))
        .unwrap();
    assert!(repeat.spec.max_repeat.is_some() || repeat.spec.min_interval.is_some());
}

#[test]
fn examples_pass_the_operators_validation() {
    for dir in ["examples/bank-api", "examples/cookbook", "examples/jwks"] {
        let mut manifests = load(dir);
        if dir == "examples/cookbook" {
            // Cookbook rules attach to the bank-api protection.
            manifests.extend(
                load("examples/bank-api")
                    .into_iter()
                    .filter(|m| matches!(m.resource, Resource::ApiProtection(_))),
            );
        }
        let problems = examples::validate(&manifests);
        assert!(problems.is_empty(), "{dir}: {problems:#?}");
    }
}

#[test]
fn cookbook_covers_every_rule_kind_but_max_repeat() {
    use ordo_operator::crd::RuleKind;
    let kinds: Vec<RuleKind> = load("examples/cookbook")
        .iter()
        .filter_map(|m| match &m.resource {
            Resource::SequenceRule(r) => r.spec.kind(),
            Resource::ApiProtection(_) => None,
        })
        .collect();
    for kind in [RuleKind::Requires, RuleKind::Forbids, RuleKind::MinInterval] {
        assert!(
            kinds.contains(&kind),
            "no cookbook example of {kind:?}: {kinds:?}"
        );
    }
}

#[test]
fn a_typo_in_a_manifest_is_reported_with_its_path() {
    let dir = tempfile::tempdir().unwrap();
    let text = std::fs::read_to_string(
        workspace_root().join("examples/bank-api/sequencerule-no-repeated-transfer.yaml"),
    )
    .unwrap()
    .replace("count: 1", "count: 1\n    counts: 2");
    std::fs::write(dir.path().join("rule.yaml"), text).unwrap();
    let err = examples::load_dir(dir.path()).unwrap_err().to_string();
    assert!(err.contains("spec.maxRepeat.counts"), "{err}");
}

#[test]
fn an_invalid_rule_is_refused_with_the_field() {
    let dir = tempfile::tempdir().unwrap();
    let text = std::fs::read_to_string(
        workspace_root().join("examples/bank-api/sequencerule-balance-before-transfer.yaml"),
    )
    .unwrap()
    .replace(
        "- GET /api/v1/accounts/{account_id}/balance",
        "- GET accounts",
    );
    std::fs::write(dir.path().join("rule.yaml"), text).unwrap();
    let manifests = examples::load_dir(dir.path()).unwrap();
    let problems = examples::validate(&manifests);
    assert!(
        problems
            .iter()
            .any(|p| p.contains("spec.requires.after[0]")),
        "{problems:#?}"
    );
}

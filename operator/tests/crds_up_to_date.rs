//! Fails when `crds/` differs from what the Rust types generate, so that the manifests users
//! install can never drift from the code. Fix with
//! `cargo run -p ordo-operator --bin crdgen -- --out crds`.

use std::path::Path;

use ordo_operator::crd::generate::{self, Drift};

#[test]
fn crds_directory_matches_the_types() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../crds");
    let drift = generate::check(&dir).unwrap();
    assert!(
        drift.is_empty(),
        "crds/ is stale ({}); run `cargo run -p ordo-operator --bin crdgen -- --out crds`",
        drift
            .iter()
            .map(Drift::to_string)
            .collect::<Vec<_>>()
            .join("; ")
    );
    let expected: Vec<String> = generate::manifests()
        .unwrap()
        .into_iter()
        .map(|m| m.file_name)
        .collect();
    assert_eq!(
        expected,
        [
            "apiprotections.ordo.dev.yaml",
            "sequencerules.ordo.dev.yaml"
        ]
    );
}

#[test]
fn check_reports_every_kind_of_drift() {
    let dir = tempfile::tempdir().unwrap();
    let missing = generate::check(dir.path()).unwrap();
    assert_eq!(
        missing,
        [
            Drift::Missing("apiprotections.ordo.dev.yaml".into()),
            Drift::Missing("sequencerules.ordo.dev.yaml".into())
        ]
    );

    generate::write(dir.path()).unwrap();
    assert_eq!(generate::check(dir.path()).unwrap(), []);

    std::fs::write(
        dir.path().join("sequencerules.ordo.dev.yaml"),
        "# edited by hand\n",
    )
    .unwrap();
    std::fs::write(
        dir.path().join("oldkinds.ordo.dev.yaml"),
        "# a removed CRD\n",
    )
    .unwrap();
    assert_eq!(
        generate::check(dir.path()).unwrap(),
        [
            Drift::Changed("sequencerules.ordo.dev.yaml".into()),
            Drift::Unexpected("oldkinds.ordo.dev.yaml".into())
        ]
    );

    // Writing again repairs the edit and removes the file no type generates.
    generate::write(dir.path()).unwrap();
    assert_eq!(generate::check(dir.path()).unwrap(), []);
    assert!(!dir.path().join("oldkinds.ordo.dev.yaml").exists());
}

//! The manifests under `examples/` are accepted by a real API server with Ordo's CRDs
//! installed (schema, CEL rules, defaults), and what it stores is what the files say.

// Helpers of a test binary may unwrap too: a panic is the failure report.
#![allow(clippy::unwrap_used)]

use ordo_operator::crd::{ApiProtection, SequenceRule};
use ordo_tests::cluster::workspace_root;
use ordo_tests::demo::examples::{self, Resource};
use ordo_tests::e2e::{self, Diagnostics};

async fn apply_and_compare(dir: &str, extra_protection_from: Option<&str>) {
    let (cluster, client, namespace) = e2e::setup("examples").await.unwrap();
    let diagnostics = Diagnostics::new(cluster, &namespace);

    let mut manifests = examples::load_dir(&workspace_root().join(dir)).unwrap();
    if let Some(other) = extra_protection_from {
        manifests.extend(
            examples::load_dir(&workspace_root().join(other))
                .unwrap()
                .into_iter()
                .filter(|m| matches!(m.resource, Resource::ApiProtection(_))),
        );
    }
    let stored = examples::apply(&client, &namespace, &manifests)
        .await
        .unwrap();
    assert_eq!(stored.len(), manifests.len());

    // What the API server stored (after its defaulting) equals what the types read from the
    // file (after serde's defaults): the schema's defaults and the types' agree, and no field
    // of the example was pruned.
    for stored in &stored {
        let original = manifests
            .iter()
            .find(|m| m.resource.describe() == stored.describe())
            .unwrap_or_else(|| panic!("{} was not in {dir}", stored.describe()));
        match (&original.resource, stored) {
            (Resource::ApiProtection(file), Resource::ApiProtection(server)) => {
                assert_eq!(file.spec, server.spec, "{}", stored.describe());
            }
            (Resource::SequenceRule(file), Resource::SequenceRule(server)) => {
                assert_eq!(file.spec, server.spec, "{}", stored.describe());
            }
            _ => panic!("kind changed for {}", stored.describe()),
        }
        let raw_stored = stored.to_value().unwrap();
        let pruned = examples::unknown_fields(&original.raw["spec"], &raw_stored["spec"]);
        assert!(
            pruned.is_empty(),
            "{}: the API server dropped {pruned:?}",
            stored.describe()
        );
    }

    // Re-applying the same files is a no-op (GitOps tools apply over and over).
    let again = examples::apply(&client, &namespace, &manifests)
        .await
        .unwrap();
    for (first, second) in stored.iter().zip(&again) {
        let generation = |r: &Resource| match r {
            Resource::ApiProtection(p) => p.metadata.generation,
            Resource::SequenceRule(r) => r.metadata.generation,
        };
        assert_eq!(
            generation(first),
            generation(second),
            "{} changed on re-apply",
            first.describe()
        );
    }

    let protections: kube::Api<ApiProtection> = kube::Api::namespaced(client.clone(), &namespace);
    let rules: kube::Api<SequenceRule> = kube::Api::namespaced(client, &namespace);
    assert!(protections.get_opt("bank-api").await.unwrap().is_some());
    assert!(
        !rules
            .list(&Default::default())
            .await
            .unwrap()
            .items
            .is_empty()
    );
    diagnostics.passed();
}

#[tokio::test]
async fn bank_api_example_is_accepted_by_the_api_server() {
    apply_and_compare("examples/bank-api", None).await;
}

#[tokio::test]
async fn cookbook_rules_are_accepted_by_the_api_server() {
    apply_and_compare("examples/cookbook", Some("examples/bank-api")).await;
}

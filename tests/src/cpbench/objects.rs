//! The objects of the benchmark: per protection a target Service, an ApiProtection and the
//! SequenceRule that names it (a rule applies to exactly one ApiProtection, through
//! `spec.protectionRef`; see operator/src/crd/sequence_rule.rs).

use k8s_openapi::api::core::v1::{ConfigMap, Service};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition;
use ordo_operator::crd::{ApiProtection, SequenceRule};
use serde_json::json;

/// Label on every object the benchmark creates.
pub const BENCH_LABEL: (&str, &str) = ("ordo.dev/bench", "controlplane");

/// The operation the benchmark's rules guard before the rule change, and after it. The
/// second appears in a rendered config only once the change reached it.
pub const GUARDED_BEFORE: &str = "POST /api/v1/transfer";
pub const GUARDED_AFTER: &str = "POST /api/v2/transfer";

/// Where protection `index` lives: `(namespace, name)`. Protections are spread round-robin
/// over `namespaces` namespaces, as tenants would be.
pub fn placement(index: usize, namespaces: usize) -> (String, String) {
    (
        namespace_name(index % namespaces.max(1)),
        format!("api-{index:04}"),
    )
}

pub fn namespace_name(index: usize) -> String {
    format!("cpbench-{index:02}")
}

pub fn namespace(name: &str) -> anyhow::Result<k8s_openapi::api::core::v1::Namespace> {
    Ok(serde_json::from_value(json!({
        "metadata": { "name": name, "labels": { BENCH_LABEL.0: BENCH_LABEL.1 } }
    }))?)
}

/// The application Service a protection targets (Alongside routing needs only the Service
/// and its port; the operator creates the enforcers' Deployment, whose Pods kwok runs).
pub fn target_service(name: &str) -> anyhow::Result<Service> {
    Ok(serde_json::from_value(json!({
        "metadata": { "name": name, "labels": { "app": name, BENCH_LABEL.0: BENCH_LABEL.1 } },
        "spec": {
            "selector": { "app": name },
            "ports": [{ "name": "http", "port": 80, "targetPort": 8080, "protocol": "TCP" }]
        }
    }))?)
}

pub fn protection(name: &str) -> anyhow::Result<ApiProtection> {
    Ok(serde_json::from_value(json!({
        "apiVersion": "ordo.dev/v1alpha1",
        "kind": "ApiProtection",
        "metadata": { "name": name, "labels": { BENCH_LABEL.0: BENCH_LABEL.1 } },
        "spec": {
            "target": { "service": name, "port": 80 },
            "mode": "Monitor",
            "routing": "Alongside",
            "enforcer": { "replicas": 1 }
        }
    }))?)
}

pub fn rule_name(protection: &str) -> String {
    format!("{protection}-order")
}

pub fn rule(protection: &str) -> anyhow::Result<SequenceRule> {
    Ok(serde_json::from_value(json!({
        "apiVersion": "ordo.dev/v1alpha1",
        "kind": "SequenceRule",
        "metadata": { "name": rule_name(protection), "labels": { BENCH_LABEL.0: BENCH_LABEL.1 } },
        "spec": {
            "protectionRef": { "name": protection },
            "priority": 10,
            "action": "Block",
            "requires": {
                "operation": GUARDED_BEFORE,
                "after": ["GET /api/v1/accounts/{account_id}/balance"],
                "within": { "requests": 10, "duration": "10m" }
            }
        }
    }))?)
}

/// The merge patch of the rule change.
pub fn rule_change() -> serde_json::Value {
    json!({ "spec": { "requires": { "operation": GUARDED_AFTER } } })
}

/// The ApiProtection has `Ready=True`.
pub fn is_ready(protection: &ApiProtection) -> bool {
    protection
        .status
        .as_ref()
        .is_some_and(|s| has_true_condition(&s.conditions, "Ready"))
}

fn has_true_condition(conditions: &[Condition], type_: &str) -> bool {
    conditions
        .iter()
        .any(|c| c.type_ == type_ && c.status == "True")
}

/// The rendered enforcer ConfigMap carries the changed rule.
pub fn carries_changed_rule(config_map: &ConfigMap) -> bool {
    config_map
        .data
        .as_ref()
        .and_then(|d| d.get("enforcer.yaml"))
        .is_some_and(|yaml| {
            rendered_rule_operations(yaml)
                .iter()
                .any(|op| op == GUARDED_AFTER)
        })
}

/// The guarded operations of the rules in a rendered enforcer config (empty when it does not
/// load).
fn rendered_rule_operations(yaml: &str) -> Vec<String> {
    let Ok(config) = ordo_enforcer::config::parse_yaml(yaml) else {
        return Vec::new();
    };
    config
        .rules
        .iter()
        .filter_map(|rule| rule.requires.as_ref().map(|r| r.operation.clone()))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn protections_are_spread_over_the_namespaces() {
        assert_eq!(placement(0, 10), ("cpbench-00".into(), "api-0000".into()));
        assert_eq!(placement(13, 10), ("cpbench-03".into(), "api-0013".into()));
        assert_eq!(placement(7, 0), ("cpbench-00".into(), "api-0007".into()));
    }

    #[test]
    fn the_objects_are_valid_for_their_types() {
        assert_eq!(
            protection("api-0001").unwrap().spec.target.service,
            "api-0001"
        );
        let rule = rule("api-0001").unwrap();
        assert_eq!(rule.spec.protection_ref.name, "api-0001");
        assert!(rule.spec.requires.is_some());
        target_service("api-0001").unwrap();
        namespace("cpbench-00").unwrap();
    }
}

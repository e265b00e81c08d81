//! Unit tests of the CRD types: serde round trips, defaults, the CEL rules (evaluated
//! client-side with kube's CEL interpreter) and the shape of the generated schemas. The same
//! rules are exercised against a real API server in `tests/tests/e2e_crds.rs`.

use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::{
    CustomResourceDefinition, JSONSchemaProps, JSONSchemaPropsOrArray,
};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use serde::Deserialize;
use serde_json::Value;

use super::examples::{
    FULL_API_PROTECTION, FULL_SEQUENCE_RULES, JWKS_API_PROTECTIONS, MINIMAL_API_PROTECTION,
};
use super::generate::crds;
use super::*;

fn full_protection() -> ApiProtection {
    serde_yaml_ng::from_str(FULL_API_PROTECTION).unwrap()
}

fn full_rules() -> Vec<SequenceRule> {
    serde_yaml_ng::Deserializer::from_str(FULL_SEQUENCE_RULES)
        .map(|doc| SequenceRule::deserialize(doc).unwrap())
        .collect()
}

fn raw_documents(yaml: &str) -> Vec<Value> {
    serde_yaml_ng::Deserializer::from_str(yaml)
        .map(|doc| Value::deserialize(doc).unwrap())
        .collect()
}

/// The CEL failure messages for an object, or an empty list when every rule passes.
///
/// kube's client-side interpreter lacks CEL's `type()`, which only the `target.port` rule uses
/// (to tell a port number from a port name); that rule is checked against the real API server
/// in `tests/tests/e2e_crds.rs`, and its "cannot be evaluated" report is dropped here.
fn protection_errors(p: &ApiProtection) -> Vec<String> {
    match p.validate_cel() {
        Ok(()) => Vec::new(),
        Err(errors) => errors
            .into_vec()
            .into_iter()
            .filter(|e| {
                !(e.rule.starts_with("type(self) == int") && e.message.contains("does not support"))
            })
            .map(|e| e.message)
            .collect(),
    }
}

fn rule_errors(r: &SequenceRule) -> Vec<String> {
    match r.validate_cel() {
        Ok(()) => Vec::new(),
        Err(errors) => errors.into_vec().into_iter().map(|e| e.message).collect(),
    }
}

fn assert_single_error(errors: &[String], expected: &str) {
    assert!(
        errors.len() == 1 && errors[0].contains(expected),
        "expected exactly one error containing {expected:?}, got {errors:?}"
    );
}

#[test]
fn full_examples_serialize_back_to_exactly_what_they_say() {
    // Nothing in the examples is unknown to the types (it would be dropped) and nothing the
    // types serialize is missing from the examples (a default would sneak in).
    let raw = raw_documents(FULL_API_PROTECTION).remove(0);
    let typed = serde_json::to_value(full_protection()).unwrap();
    assert_eq!(typed["spec"], raw["spec"]);
    assert_eq!(typed["status"], raw["status"]);

    for (raw, typed) in raw_documents(FULL_SEQUENCE_RULES).iter().zip(full_rules()) {
        let typed = serde_json::to_value(typed).unwrap();
        assert_eq!(typed["spec"], raw["spec"]);
        assert_eq!(typed["status"], raw["status"]);
    }
}

#[test]
fn full_examples_round_trip_through_yaml() {
    let p = full_protection();
    let again: ApiProtection =
        serde_yaml_ng::from_str(&serde_yaml_ng::to_string(&p).unwrap()).unwrap();
    assert_eq!(again, p);
    for rule in full_rules() {
        let again: SequenceRule =
            serde_yaml_ng::from_str(&serde_yaml_ng::to_string(&rule).unwrap()).unwrap();
        assert_eq!(again, rule);
    }
}

/// Every property path of a schema, skipping subtrees owned by Kubernetes types.
fn schema_paths(schema: &JSONSchemaProps, path: &str, skip: &[&str], out: &mut Vec<String>) {
    if skip.contains(&path) {
        return;
    }
    for (name, child) in schema.properties.iter().flatten() {
        let child_path = format!("{path}.{name}");
        out.push(child_path.clone());
        schema_paths(child, &child_path, skip, out);
    }
    if let Some(JSONSchemaPropsOrArray::Schema(items)) = &schema.items {
        schema_paths(items, &format!("{path}[]"), skip, out);
    }
}

/// Whether a JSON value has something at `path` (`[]` = in at least one element).
fn has_path(value: &Value, path: &str) -> bool {
    fn walk(value: &Value, parts: &[&str]) -> bool {
        let Some((first, rest)) = parts.split_first() else {
            return true;
        };
        let (field, into_items) = match first.strip_suffix("[]") {
            Some(field) => (field, true),
            None => (*first, false),
        };
        let Some(child) = value.get(field) else {
            return false;
        };
        if into_items {
            child
                .as_array()
                .is_some_and(|items| items.iter().any(|item| walk(item, rest)))
        } else {
            walk(child, rest)
        }
    }
    let parts: Vec<&str> = path.trim_start_matches('.').split('.').collect();
    walk(value, &parts)
}

fn root_schema(crd: &CustomResourceDefinition) -> &JSONSchemaProps {
    crd.spec.versions[0]
        .schema
        .as_ref()
        .and_then(|s| s.open_api_v3_schema.as_ref())
        .unwrap()
}

#[test]
fn full_examples_set_every_field_of_the_schema() {
    let crds = crds();
    let skip = [".spec.enforcer.resources", ".status.conditions[]"];

    let mut paths = Vec::new();
    schema_paths(root_schema(&crds[0]), "", &skip, &mut paths);
    // The full example, and the JWKS examples for what excludes its `secretRef`.
    let mut examples = raw_documents(FULL_API_PROTECTION);
    examples.extend(raw_documents(JWKS_API_PROTECTIONS));
    let missing: Vec<_> = paths
        .iter()
        .filter(|p| !examples.iter().any(|e| has_path(e, p)))
        .collect();
    assert!(
        missing.is_empty(),
        "ApiProtection example lacks {missing:?}"
    );

    let mut paths = Vec::new();
    schema_paths(root_schema(&crds[1]), "", &skip, &mut paths);
    let examples = raw_documents(FULL_SEQUENCE_RULES);
    let missing: Vec<_> = paths
        .iter()
        .filter(|p| !examples.iter().any(|e| has_path(e, p)))
        .collect();
    assert!(missing.is_empty(), "SequenceRule examples lack {missing:?}");
}

#[test]
fn minimal_protection_gets_documented_defaults() {
    let p: ApiProtection = serde_yaml_ng::from_str(MINIMAL_API_PROTECTION).unwrap();
    let spec = &p.spec;
    assert_eq!(spec.target.port, IntOrString::Int(8080));
    assert_eq!(spec.mode, ProtectionMode::Monitor);
    assert_eq!(spec.routing, Routing::Takeover);
    assert_eq!(spec.session.idle_timeout, "30m");
    assert_eq!(spec.session.identifiers.len(), 2);
    let jwt = spec.session.identifiers[0].jwt_claim.as_ref().unwrap();
    assert_eq!(
        (jwt.header.as_str(), jwt.claim.as_str()),
        ("Authorization", "sub")
    );
    assert_eq!(
        spec.session.identifiers[1].client_ip,
        Some(ClientIpSource {})
    );
    assert_eq!(spec.session.jwt_verification, None);
    assert_eq!(spec.client_address.source, ClientAddressSource::Socket);
    assert_eq!(spec.client_address.trusted_hops, 0);
    assert_eq!(spec.learning.min_requests, 1000);
    assert_eq!(spec.learning.min_sessions, 50);
    assert_eq!(spec.learning.window, "24h");
    assert_eq!(spec.learning.sequence_order, 8);
    assert_eq!(spec.learning.journey_gap, "5m");
    for detector in [
        &spec.detectors.shadow_endpoint,
        &spec.detectors.request_shape,
        &spec.detectors.unlikely_sequence,
        &spec.detectors.volume,
        &spec.detectors.enumeration,
        &spec.detectors.credential_stuffing,
        &spec.detectors.exposure,
        &spec.detectors.identity_lineage,
    ] {
        assert_eq!(
            detector,
            &DetectorSpec {
                enabled: true,
                action: Action::Log,
                sensitivity: Sensitivity::Medium,
                quarantine: None,
            }
        );
    }
    assert_eq!(spec.open_api, None);
    assert_eq!(spec.enforcer.replicas, 2);
    assert_eq!(spec.enforcer.failure_policy, FailurePolicy::Open);
    assert_eq!(spec.enforcer.max_body_bytes, 1_048_576);
    assert_eq!(spec.enforcer.image, None);
    assert!(spec.rate_limits.is_empty());
    assert_eq!(p.status, None);
    assert!(protection_errors(&p).is_empty());
}

#[test]
fn schema_defaults_match_serde_defaults() {
    // The API server fills defaults from the schema and the operator from serde; they must agree.
    let crd = &crds()[0];
    let spec = &root_schema(crd).properties.as_ref().unwrap()["spec"];
    let props = spec.properties.as_ref().unwrap();
    let default_of = |name: &str| props[name].default.as_ref().map(|d| d.0.clone());
    assert_eq!(
        default_of("session"),
        Some(serde_json::to_value(SessionSpec::default()).unwrap())
    );
    assert_eq!(
        default_of("detectors"),
        Some(serde_json::to_value(DetectorsSpec::default()).unwrap())
    );
    assert_eq!(
        default_of("enforcer"),
        Some(serde_json::to_value(EnforcerSpec::default()).unwrap())
    );
    assert_eq!(default_of("mode"), Some(Value::from("Monitor")));
    assert_eq!(default_of("routing"), Some(Value::from("Takeover")));
}

#[test]
fn sequence_rule_defaults_and_kind() {
    let rule: SequenceRule = serde_yaml_ng::from_str(
        "apiVersion: ordo.dev/v1alpha1\nkind: SequenceRule\nmetadata: {name: r}\nspec:\n  \
         protectionRef: {name: bank-api}\n  requires:\n    operation: POST /transfer\n    \
         after: [GET /balance]\n",
    )
    .unwrap();
    assert_eq!(rule.spec.priority, 0);
    assert_eq!(rule.spec.action, Action::Log);
    assert!(!rule.spec.dry_run);
    let requires = rule.spec.requires.as_ref().unwrap();
    assert_eq!(
        requires.within,
        Window {
            requests: 10,
            duration: "10m".into()
        }
    );
    assert_eq!(rule.spec.kind(), Some(RuleKind::Requires));
    assert!(rule_errors(&rule).is_empty());

    let kinds: Vec<_> = full_rules().iter().map(|r| r.spec.kind()).collect();
    assert_eq!(
        kinds,
        [
            Some(RuleKind::Requires),
            Some(RuleKind::Forbids),
            Some(RuleKind::MaxRepeat),
            Some(RuleKind::MinInterval)
        ]
    );
    let mut two = full_rules().remove(0);
    two.spec.forbids = full_rules().remove(1).spec.forbids;
    assert_eq!(two.spec.kind(), None);
}

#[test]
fn valid_examples_pass_every_cel_rule() {
    assert_eq!(protection_errors(&full_protection()), Vec::<String>::new());
    for doc in serde_yaml_ng::Deserializer::from_str(JWKS_API_PROTECTIONS) {
        let p = ApiProtection::deserialize(doc).unwrap();
        assert_eq!(protection_errors(&p), Vec::<String>::new());
        let errors = crate::serve::webhook::validate_protection(&p, "shop", "shop-api");
        assert!(errors.is_empty(), "{errors:?}");
    }
    for rule in full_rules() {
        assert_eq!(
            rule_errors(&rule),
            Vec::<String>::new(),
            "{}",
            rule.spec.description.unwrap()
        );
    }
}

#[test]
fn sequence_rule_needs_exactly_one_kind() {
    let rules = full_rules();
    let mut two = rules[0].clone();
    two.spec.max_repeat = rules[2].spec.max_repeat.clone();
    assert_single_error(
        &rule_errors(&two),
        "exactly one of requires, forbids, maxRepeat or minInterval",
    );

    let mut none = rules[0].clone();
    none.spec.requires = None;
    assert_single_error(
        &rule_errors(&none),
        "exactly one of requires, forbids, maxRepeat or minInterval",
    );
}

#[test]
fn sequence_rule_ranges() {
    let rules = full_rules();
    for bad in [-1, 1001] {
        let mut r = rules[0].clone();
        r.spec.priority = bad;
        assert_single_error(&rule_errors(&r), "priority must be between 0 and 1000");
    }
    for bad in [0, 65] {
        let mut r = rules[1].clone();
        r.spec.forbids.as_mut().unwrap().within.requests = bad;
        let errors = rule_errors(&r);
        assert!(
            errors
                .iter()
                .any(|e| e.contains("within.requests must be between 1 and 64")),
            "{errors:?}"
        );
    }
    let mut r = rules[2].clone();
    r.spec.max_repeat.as_mut().unwrap().count = 0;
    assert_single_error(&rule_errors(&r), "maxRepeat.count must be between 1 and 64");

    let mut r = rules[3].clone();
    r.spec.min_interval.as_mut().unwrap().duration = "2h".into();
    assert_single_error(
        &rule_errors(&r),
        "minInterval.duration must be more than 0s and at most 1h",
    );
}

#[test]
fn sequence_rule_windows_must_be_satisfiable() {
    let rules = full_rules();
    let mut r = rules[0].clone();
    // two operations in `after` plus the guarded one do not fit in two requests
    r.spec.requires.as_mut().unwrap().within.requests = 2;
    assert_single_error(
        &rule_errors(&r),
        "requires.within.requests must be greater than",
    );

    let mut r = rules[1].clone();
    r.spec.forbids.as_mut().unwrap().within.requests = 2;
    assert_single_error(&rule_errors(&r), "forbids.within.requests must be at least");
}

#[test]
fn session_identifier_needs_exactly_one_source() {
    let mut p = full_protection();
    p.spec.session.identifiers[1].cookie = Some(CookieSource { name: "sid".into() });
    assert_single_error(
        &protection_errors(&p),
        "set exactly one of jwtClaim, header, cookie, queryParam or clientIp",
    );

    let mut p = full_protection();
    p.spec.session.identifiers[1].header = None;
    assert_single_error(
        &protection_errors(&p),
        "set exactly one of jwtClaim, header, cookie, queryParam or clientIp",
    );
}

#[test]
fn client_ip_identifier_must_come_last() {
    let mut p = full_protection();
    p.spec.session.identifiers.swap(3, 4);
    assert_single_error(
        &protection_errors(&p),
        "clientIp may appear once and only as the last entry",
    );
}

#[test]
fn jwt_verification_rules() {
    let mut p = full_protection();
    p.spec.session.jwt_verification.as_mut().unwrap().algorithms =
        vec![JwtAlgorithm::Hs256, JwtAlgorithm::Rs256];
    assert_single_error(
        &protection_errors(&p),
        "HS256 (a shared secret) cannot be combined",
    );

    let mut p = full_protection();
    p.spec.session.identifiers.remove(0);
    assert_single_error(
        &protection_errors(&p),
        "session.jwtVerification requires at least one jwtClaim entry",
    );
}

#[test]
fn jwks_rules_name_the_field() {
    let with = |jwt: serde_json::Value| {
        let mut p = full_protection();
        p.spec.session.jwt_verification = Some(serde_json::from_value(jwt).unwrap());
        protection_errors(&p)
    };
    assert_eq!(
        with(
            serde_json::json!({"jwks": {"uri": "https://idp.example/certs", "refreshInterval": "10m"}})
        ),
        Vec::<String>::new()
    );
    assert_eq!(
        with(serde_json::json!({"jwks": {"configMapKeyRef": {"name": "idp", "key": "jwks.json"}}})),
        Vec::<String>::new()
    );
    assert_single_error(
        &with(
            serde_json::json!({"secretRef": {"name": "k", "key": "k"}, "algorithms": ["RS256"],
            "jwks": {"uri": "https://idp.example/certs"}}),
        ),
        "session.jwtVerification: set exactly one of secretRef (fixed keys) or jwks",
    );
    assert_single_error(
        &with(serde_json::json!({"onInvalid": "Reject"})),
        "session.jwtVerification: set exactly one of secretRef (fixed keys) or jwks",
    );
    assert_single_error(
        &with(serde_json::json!({"secretRef": {"name": "k", "key": "k"}})),
        "session.jwtVerification.algorithms: list the algorithms",
    );
    assert_single_error(
        &with(
            serde_json::json!({"jwks": {"uri": "https://idp.example/certs"}, "algorithms": ["RS256"]}),
        ),
        "session.jwtVerification.algorithms: applies to secretRef only",
    );
    assert_single_error(
        &with(
            serde_json::json!({"jwks": {"uri": "https://idp.example/certs",
            "secretKeyRef": {"name": "k", "key": "k"}}}),
        ),
        "session.jwtVerification.jwks: set exactly one of configMapKeyRef, secretKeyRef or uri",
    );
    assert_single_error(
        &with(serde_json::json!({"jwks": {}})),
        "session.jwtVerification.jwks: set exactly one of configMapKeyRef, secretKeyRef or uri",
    );
    assert_single_error(
        &with(serde_json::json!({"jwks": {"uri": "http://idp.example/certs"}})),
        "session.jwtVerification.jwks.uri must be an https:// URL",
    );
    assert_single_error(
        &with(
            serde_json::json!({"jwks": {"secretKeyRef": {"name": "k", "key": "k"},
            "caConfigMapKeyRef": {"name": "ca", "key": "ca.crt"}}}),
        ),
        "session.jwtVerification.jwks.caConfigMapKeyRef applies only to uri",
    );
    assert_single_error(
        &with(
            serde_json::json!({"jwks": {"uri": "https://idp.example/certs", "refreshInterval": "25h"}}),
        ),
        "session.jwtVerification.jwks.refreshInterval must be between 1s and 24h",
    );
}

#[test]
fn client_address_hops_follow_the_source() {
    let mut p = full_protection();
    p.spec.client_address.trusted_hops = 0;
    assert_single_error(&protection_errors(&p), "trustedHops must be at least 1");

    let mut p = full_protection();
    p.spec.client_address.source = ClientAddressSource::Socket;
    assert_single_error(
        &protection_errors(&p),
        "trustedHops applies only when source is XForwardedFor",
    );
}

#[test]
fn durations_are_range_checked() {
    let mut p = full_protection();
    p.spec.session.idle_timeout = "25h".into();
    assert_single_error(
        &protection_errors(&p),
        "session.idleTimeout must be between 1s and 24h",
    );

    let mut p = full_protection();
    p.spec.learning.window = "30s".into();
    assert_single_error(
        &protection_errors(&p),
        "learning.window must be between 1m and 720h",
    );

    let mut p = full_protection();
    p.spec.learning.journey_gap = "500ms".into();
    assert_single_error(
        &protection_errors(&p),
        "learning.journeyGap must be between 1s and 24h",
    );

    let mut p = full_protection();
    p.spec.detectors.enumeration.quarantine = Some("48h".into());
    assert_single_error(
        &protection_errors(&p),
        "detectors.*.quarantine must be at most 24h",
    );

    let mut p = full_protection();
    p.spec.rate_limits[0].per = "500ms".into();
    assert_single_error(
        &protection_errors(&p),
        "rateLimits[].per must be between 1s and 24h",
    );
}

/// Walks a schema and reports strings without `maxLength` and lists without `maxItems`: the
/// API server estimates CEL cost from these bounds.
fn unbounded(schema: &JSONSchemaProps, path: &str, skip: &[&str], out: &mut Vec<String>) {
    if skip.contains(&path) {
        return;
    }
    match schema.type_.as_deref() {
        Some("string")
            if schema.max_length.is_none()
                && schema.enum_.is_none()
                && schema.format.as_deref() != Some("date-time") =>
        {
            out.push(path.to_owned());
        }
        Some("array") if schema.max_items.is_none() => out.push(path.to_owned()),
        _ => {}
    }
    for (name, child) in schema.properties.iter().flatten() {
        unbounded(child, &format!("{path}.{name}"), skip, out);
    }
    if let Some(JSONSchemaPropsOrArray::Schema(items)) = &schema.items {
        unbounded(items, &format!("{path}[]"), skip, out);
    }
}

#[test]
fn every_string_and_list_is_bounded() {
    // Kubernetes-owned types keep their own schemas; no CEL rule reads them.
    let skip = [
        ".spec.enforcer.resources",
        ".status.conditions[]",
        ".metadata",
        ".apiVersion",
        ".kind",
    ];
    for crd in crds() {
        let mut out = Vec::new();
        unbounded(root_schema(&crd), "", &skip, &mut out);
        assert!(out.is_empty(), "{}: unbounded {out:?}", crd.spec.names.kind);
    }
}

#[test]
fn crd_metadata() {
    let crds = crds();
    let (protection, rule) = (&crds[0], &crds[1]);
    assert_eq!(
        protection.metadata.name.as_deref(),
        Some("apiprotections.ordo.dev")
    );
    assert_eq!(
        rule.metadata.name.as_deref(),
        Some("sequencerules.ordo.dev")
    );
    for crd in &crds {
        assert_eq!(crd.spec.group, GROUP);
        assert_eq!(crd.spec.scope, "Namespaced");
        let version = &crd.spec.versions[0];
        assert_eq!(version.name, VERSION);
        assert!(version.served && version.storage);
        assert!(version.subresources.as_ref().unwrap().status.is_some());
        assert_eq!(
            crd.spec.names.categories.as_deref(),
            Some(&["ordo".to_owned()][..])
        );
        let status = &root_schema(crd).properties.as_ref().unwrap()["status"];
        let conditions = &status.properties.as_ref().unwrap()["conditions"];
        assert_eq!(conditions.x_kubernetes_list_type.as_deref(), Some("map"));
        assert_eq!(
            conditions.x_kubernetes_list_map_keys.as_deref(),
            Some(&["type".to_owned()][..])
        );
    }
    assert_eq!(
        protection.spec.names.short_names.as_deref(),
        Some(&["apip".to_owned()][..])
    );

    let columns = |crd: &CustomResourceDefinition| -> Vec<String> {
        crd.spec.versions[0]
            .additional_printer_columns
            .iter()
            .flatten()
            .filter(|c| c.priority.unwrap_or(0) == 0)
            .map(|c| c.name.clone())
            .collect()
    };
    assert_eq!(
        columns(protection),
        ["Target", "Mode", "Phase", "Endpoints", "Incidents", "Age"]
    );
    assert_eq!(
        columns(rule),
        ["Protection", "Kind", "Action", "Accepted", "Matches", "Age"]
    );
    let selectable = rule.spec.versions[0].selectable_fields.as_ref().unwrap();
    assert_eq!(selectable[0].json_path, ".spec.protectionRef.name");
}

#[test]
fn descriptions_are_reflowed_and_present() {
    fn check(schema: &JSONSchemaProps, path: &str, out: &mut Vec<String>) {
        match schema.description.as_deref() {
            None | Some("") => out.push(format!("{path}: no description")),
            Some(d) if d.contains('\n') && !d.contains("\n\n") => {
                out.push(format!("{path}: hard-wrapped"));
            }
            _ => {}
        }
        if path.ends_with(".resources") || path.ends_with(".conditions") {
            return;
        }
        for (name, child) in schema.properties.iter().flatten() {
            check(child, &format!("{path}.{name}"), out);
        }
    }
    for crd in crds() {
        let root = root_schema(&crd);
        let mut out = Vec::new();
        for name in ["spec", "status"] {
            check(
                &root.properties.as_ref().unwrap()[name],
                &format!(".{name}"),
                &mut out,
            );
        }
        assert!(out.is_empty(), "{}: {out:?}", crd.spec.names.kind);
    }
}

//! The operator's rendering: an `ApiProtection` spec and `SequenceRule` specs as a user (or
//! a hostile tenant) could write them, deserialised from the fuzzer's bytes, go through the
//! webhook's validation (`validate_rule`, `validate_protection`), the rendering of the
//! enforcer config (`render`) and the objects the operator applies (ConfigMap, ServiceAccount,
//! Deployment, Services). The CRD schema's patterns, lengths and CEL rules are not applied
//! first, so the Rust code must hold without them. Never a panic; a rendered config loads in
//! the enforcer as the same config (admission and runtime never disagree), and rendering is
//! deterministic (the same spec, the same ConfigMap hash).
//!
//! Input: a JSON document `{"spec": ApiProtectionSpec, "rules": [SequenceRuleSpec...],
//! "openapi": "..."?}` (`fuzz/operator/seeds/operator_render/` holds the examples' resources).

#![no_main]

use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use libfuzzer_sys::fuzz_target;
use ordo_enforcer::config::parse_yaml;
use ordo_operator::crd::{ApiProtection, ApiProtectionSpec, SequenceRule, SequenceRuleSpec};
use ordo_operator::desired::names::{CONFIG_KEY, Names};
use ordo_operator::desired::render::{self, RenderInput, ReportTarget};
use ordo_operator::desired::resources::{self, DeploymentInput, EnforcerPorts};
use ordo_operator::serve::webhook::{validate_protection, validate_rule};

#[derive(serde::Deserialize)]
struct Input {
    spec: ApiProtectionSpec,
    #[serde(default)]
    rules: Vec<SequenceRuleSpec>,
    #[serde(default)]
    openapi: Option<String>,
    /// Renders the report section too (the operator's `--report-url` flags).
    #[serde(default)]
    report: bool,
}

fn render_input<'a>(
    input: &'a Input,
    rules: Vec<ordo_enforcer::config::SequenceRuleConfig>,
    ports: &EnforcerPorts,
) -> RenderInput<'a> {
    RenderInput {
        namespace: "fuzz",
        name: "protection",
        spec: &input.spec,
        // As the controller and the webhook build it: from the target Service's name.
        upstream_url: format!("http://{}.fuzz.svc:80", input.spec.target.service),
        listen_port: ports.proxy,
        admin_port: ports.admin,
        rules,
        openapi: input.openapi.clone(),
        report: input.report.then(|| ReportTarget {
            base_url: "https://ordo-operator.ordo-system.svc:8443".into(),
            ca_pem: Some("-----BEGIN CERTIFICATE-----\nMA==\n-----END CERTIFICATE-----\n".into()),
            interval_seconds: 10,
        }),
    }
}

fuzz_target!(|data: &[u8]| {
    let Ok(input) = serde_json::from_slice::<Input>(data) else {
        return;
    };
    // The webhook's checks of each rule, then the rules the operator would accept.
    let mut accepted = Vec::new();
    for (i, spec) in input.rules.iter().enumerate() {
        let name = format!("rule-{i}");
        let rule = SequenceRule::new(&name, spec.clone());
        let admitted = validate_rule(&name, &rule).is_ok();
        let rendered = render::rule_config(&name, spec);
        assert_eq!(
            admitted,
            rendered.is_ok(),
            "the webhook and the renderer disagree on rule {i}"
        );
        if let Ok(config) = rendered
            && render::rule_fits_history(&config, &input.spec.session).is_ok()
        {
            accepted.push(config);
        }
    }
    let protection = ApiProtection::new("protection", input.spec.clone());
    let admission_errors = validate_protection(&protection, "fuzz", "protection");

    let ports = EnforcerPorts::for_target_port(&input.spec.target.port);
    let first = render::render(render_input(&input, accepted.clone(), &ports));
    let again = render::render(render_input(&input, accepted, &ports));
    let rendered = match (first, again) {
        (Ok(a), Ok(b)) => {
            assert_eq!(a.hash, b.hash, "rendering is not deterministic");
            a
        }
        (Err(_), Err(_)) => return,
        _ => panic!("the same spec rendered once and failed once"),
    };
    // Rules and the OpenAPI document aside, the webhook saw the same spec.
    if input.rules.is_empty() && input.openapi.is_none() {
        assert!(
            admission_errors.is_empty(),
            "rendered but refused at admission: {admission_errors:?}"
        );
    }
    let yaml = rendered
        .data
        .get(CONFIG_KEY)
        .unwrap_or_else(|| panic!("no {CONFIG_KEY} in the rendered ConfigMap"));
    match parse_yaml(yaml) {
        Ok(loaded) => assert_eq!(
            loaded, rendered.config,
            "the enforcer loads another config:\n{yaml}"
        ),
        Err(e) => panic!("the enforcer refuses the rendered config: {e}\n{yaml}"),
    }

    let names = Names::new("fuzz", "protection", &input.spec.target.service);
    let owner = resources::owner_reference("protection", "00000000-0000-0000-0000-000000000000");
    let objects = [
        serde_json::to_value(resources::config_map(&names, &owner, rendered.data.clone())),
        serde_json::to_value(resources::service_account(&names, &owner)),
        serde_json::to_value(resources::deployment(
            &names,
            &owner,
            &DeploymentInput {
                spec: &input.spec,
                ports: &ports,
                config_hash: &rendered.hash,
                default_image: "ordo-enforcer:fuzz",
            },
        )),
        serde_json::to_value(resources::peers_service(&names, &owner, &ports)),
    ];
    for object in objects {
        object.unwrap_or_else(|e| panic!("a rendered object does not serialise: {e}"));
    }
    let port = match &input.spec.target.port {
        IntOrString::Int(n) => IntOrString::Int(*n),
        IntOrString::String(s) => IntOrString::String(s.clone()),
    };
    let service_ports = [k8s_openapi::api::core::v1::ServicePort {
        port: 80,
        target_port: Some(port),
        ..Default::default()
    }];
    let _ = serde_json::to_value(resources::protected_service(&names, &owner, &service_ports));
});

//! The validating admission webhook for both kinds: the semantic checks CEL cannot do,
//! made by the same conversion and validation the enforcer runs when it compiles its config
//! (so admission and runtime never disagree). Errors name the field.
//!
//! - `SequenceRule`: operation syntax, rule windows and counts (`validate_rule`).
//!   A `protectionRef` to an ApiProtection that does not exist is allowed (rules may be
//!   applied before their protection); the rule's status reports it.
//! - `ApiProtection`: the rendered config passes `validate_config`; no other ApiProtection
//!   in the namespace targets the same Service.

use std::sync::Arc;

use kube::ResourceExt as _;
use kube::api::{Api, ListParams};
use kube::core::DeserializeGuard;
use kube::core::admission::{AdmissionRequest, AdmissionResponse, AdmissionReview, Operation};

use crate::crd::{ApiProtection, SequenceRule};
use crate::desired::render::{self, FieldError, RenderInput};
use crate::metrics::Metrics;

/// Path of the ApiProtection webhook.
pub const APIPROTECTION_PATH: &str = "/validate/apiprotections";
/// Path of the SequenceRule webhook.
pub const SEQUENCERULE_PATH: &str = "/validate/sequencerules";

/// What the webhook needs.
pub struct Webhook {
    pub client: kube::Client,
    pub metrics: Arc<Metrics>,
}

impl Webhook {
    /// Handles one AdmissionReview body for `path`; returns the response review as JSON.
    pub async fn review(&self, path: &str, body: &[u8]) -> serde_json::Value {
        let (kind, response) = match path {
            APIPROTECTION_PATH => ("ApiProtection", self.review_protection(body).await),
            SEQUENCERULE_PATH => ("SequenceRule", review_rule(body)),
            _ => (
                "unknown",
                AdmissionResponse::invalid(format!("no webhook at {path}")),
            ),
        };
        let decision = if response.allowed {
            "allowed"
        } else {
            "denied"
        };
        self.metrics
            .webhook_decisions
            .with_label_values(&[kind, decision])
            .inc();
        if !response.allowed {
            tracing::info!(kind, reason = %response.result.message, "admission denied");
        }
        serde_json::to_value(response.into_review())
            .unwrap_or_else(|err| serde_json::json!({ "error": err.to_string() }))
    }

    async fn review_protection(&self, body: &[u8]) -> AdmissionResponse {
        let request = match parse::<ApiProtection>(body) {
            Ok(request) => request,
            Err(response) => return *response,
        };
        let response = AdmissionResponse::from(&request);
        if !matches!(request.operation, Operation::Create | Operation::Update) {
            return response;
        }
        let Some(protection) = &request.object else {
            return response;
        };
        let namespace = request
            .namespace
            .clone()
            .or_else(|| protection.namespace())
            .unwrap_or_default();
        let name = if request.name.is_empty() {
            protection.name_any()
        } else {
            request.name.clone()
        };
        let mut errors = validate_protection(protection, &namespace, &name);
        match self.other_protection_of(&namespace, &name, &protection.spec.target.service).await {
            Ok(Some(other)) => errors.push(FieldError {
                field: "spec.target.service".into(),
                message: format!(
                    "Service {} is already protected by ApiProtection {other}; one Service can have one ApiProtection",
                    protection.spec.target.service
                ),
            }),
            Ok(None) => {}
            Err(err) => {
                return response.deny(format!("could not check other ApiProtections on the same Service: {err}"));
            }
        }
        if errors.is_empty() {
            response
        } else {
            response.deny(render::join_errors(&errors))
        }
    }

    /// Another ApiProtection in `namespace` whose target is `service`, if any.
    async fn other_protection_of(
        &self,
        namespace: &str,
        name: &str,
        service: &str,
    ) -> Result<Option<String>, kube::Error> {
        let api: Api<DeserializeGuard<ApiProtection>> =
            Api::namespaced(self.client.clone(), namespace);
        let list = api.list(&ListParams::default()).await?;
        Ok(list.items.into_iter().find_map(|guard| match guard.0 {
            Ok(other) if other.name_any() != name && other.spec.target.service == service => {
                Some(other.name_any())
            }
            _ => None,
        }))
    }
}

fn parse<K>(body: &[u8]) -> Result<AdmissionRequest<K>, Box<AdmissionResponse>>
where
    K: kube::Resource + serde::de::DeserializeOwned,
{
    let review: AdmissionReview<K> = serde_json::from_slice(body).map_err(|err| {
        Box::new(AdmissionResponse::invalid(format!(
            "not an AdmissionReview: {err}"
        )))
    })?;
    review
        .try_into()
        .map_err(|err: kube::core::admission::ConvertAdmissionReviewError| {
            Box::new(AdmissionResponse::invalid(err.to_string()))
        })
}

fn review_rule(body: &[u8]) -> AdmissionResponse {
    let request = match parse::<SequenceRule>(body) {
        Ok(request) => request,
        Err(response) => return *response,
    };
    let response = AdmissionResponse::from(&request);
    if !matches!(request.operation, Operation::Create | Operation::Update) {
        return response;
    }
    let Some(rule) = &request.object else {
        return response;
    };
    let mut name = if request.name.is_empty() {
        rule.name_any()
    } else {
        request.name.clone()
    };
    if name.is_empty() {
        // generateName: the final name is not known yet; any valid one checks the rest.
        name = rule.metadata.generate_name.clone().unwrap_or_default() + "x";
    }
    match validate_rule(&name, rule) {
        Ok(()) => response,
        Err(errors) => response.deny(render::join_errors(&errors)),
    }
}

/// The checks of one SequenceRule (used by the webhook and by tests).
pub fn validate_rule(name: &str, rule: &SequenceRule) -> Result<(), Vec<FieldError>> {
    render::rule_config(name, &rule.spec).map(|_| ())
}

/// The config checks of one ApiProtection, without cluster lookups (used by the webhook and
/// by tests). The OpenAPI document is not read here: a missing ConfigMap is reported in
/// status, since it may be created after the protection.
pub fn validate_protection(
    protection: &ApiProtection,
    namespace: &str,
    name: &str,
) -> Vec<FieldError> {
    let name = if name.is_empty() { "protection" } else { name };
    let input = RenderInput {
        namespace,
        name,
        spec: &protection.spec,
        upstream_url: format!(
            "http://{}.{namespace}.svc:80",
            protection.spec.target.service
        ),
        listen_port: 8080,
        admin_port: 9090,
        rules: Vec::new(),
        openapi: None,
        report: None,
    };
    match render::render(input) {
        Ok(_) => Vec::new(),
        Err(errors) => errors,
    }
}

//! The custom resources Ordo is configured with (group `ordo.dev`, version `v1alpha1`):
//! [`ApiProtection`] says which Service to protect and how; [`SequenceRule`] declares one rule
//! about the order of operations, attached to an ApiProtection by name.
//!
//! The types are the single source of the CRD manifests in `crds/`: [`generate`] renders them,
//! the `crdgen` binary writes them, and a test fails when the files are stale. Simple field
//! rules are CEL (`x-kubernetes-validations`) and OpenAPI constraints in the schema, so the API
//! server rejects them with a message naming the field; checks that need code live in the
//! validating webhook.

pub mod api_protection;
pub mod common;
pub mod examples;
pub mod generate;
pub mod learning;
pub mod limits;
pub mod protection_status;
pub mod sequence_rule;
pub mod session;

pub use api_protection::{
    ApiProtection, ApiProtectionSpec, ClientLimitsSpec, EnforcerSpec, FailurePolicy,
    ImagePullPolicy, OpenApiSpec, ProtectionMode, RateLimitSpec, Routing, ScaleOutSpec, TargetSpec,
};
pub use common::{Action, ConfigMapKeyRef, SecretKeyRef};
pub use learning::{DetectorSpec, DetectorsSpec, LearningSpec, Sensitivity};
pub use protection_status::{
    ApiProtectionStatus, Confidence, EndpointStatus, EnforcerCounts, IncidentStatus, ModelSummary,
    PostureStatus, ProtectionPhase, SequenceStatus, Severity, SuggestedRule, Totals,
};
pub use sequence_rule::{
    ForbidsRule, MaxRepeatRule, MinIntervalRule, ProtectionRef, RequiresRule, RuleKind,
    SequenceRule, SequenceRuleSpec, SequenceRuleStatus, Window,
};
pub use session::{
    ClientAddressSource, ClientAddressSpec, ClientIpSource, CookieSource, HeaderSource,
    InvalidTokenPolicy, JwksSpec, JwtAlgorithm, JwtClaimSource, JwtVerificationSpec,
    QueryParamSource, SessionHistorySpec, SessionIdentifier, SessionSpec,
};

/// API group of every Ordo resource.
pub const GROUP: &str = "ordo.dev";
/// The one served and stored version.
pub const VERSION: &str = "v1alpha1";

#[cfg(test)]
mod tests;

//! The `ApiProtection` resource: which Service to protect and how.

use k8s_openapi::api::core::v1::ResourceRequirements;
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use kube::{CustomResource, KubeSchema};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use super::common::{Action, ConfigMapKeyRef, SecretKeyRef};
use super::learning::{DetectorsSpec, LearningSpec};
use super::limits::{
    DURATION_MAX_LENGTH, DURATION_PATTERN, IMAGE_MAX_LENGTH, MAX_RATE_LIMITS, OPERATION_MAX_LENGTH,
    OPERATION_PATTERN, SERVICE_NAME_MAX_LENGTH, SERVICE_NAME_PATTERN,
};
use super::protection_status::ApiProtectionStatus;
use super::session::{ClientAddressSpec, SessionSpec};

/// Desired protection of one Service: the operator runs enforcer proxies in front of it that
/// learn how the API is used, detect abuse, and block it in `Enforce` mode.
// Clippy reads the repeated `type_ = "string"` of separate printer columns as duplicated
// attributes.
#[allow(clippy::duplicated_attributes)]
#[derive(CustomResource, Serialize, Deserialize, JsonSchema, Clone, Debug, PartialEq)]
#[kube(
    group = "ordo.dev",
    version = "v1alpha1",
    kind = "ApiProtection",
    plural = "apiprotections",
    singular = "apiprotection",
    shortname = "apip",
    category = "ordo",
    namespaced,
    cel,
    status = "ApiProtectionStatus",
    derive = "PartialEq",
    doc = "ApiProtection protects the HTTP API behind one Service against functional abuse: the operator runs enforcer proxies in front of the Service that learn each operation's normal use per session, detect deviations, group them into incidents, and block them in Enforce mode.",
    printcolumn(
        name = "Target",
        type_ = "string",
        json_path = ".spec.target.service",
        description = "Protected Service"
    ),
    printcolumn(
        name = "Mode",
        type_ = "string",
        json_path = ".spec.mode",
        description = "Learn, Monitor or Enforce"
    ),
    printcolumn(
        name = "Phase",
        type_ = "string",
        json_path = ".status.phase",
        description = "Lifecycle phase"
    ),
    printcolumn(
        name = "Endpoints",
        type_ = "integer",
        json_path = ".status.model.endpoints",
        description = "Operations the model knows"
    ),
    printcolumn(
        name = "Incidents",
        type_ = "integer",
        json_path = ".status.totals.openIncidents",
        description = "Open incidents"
    ),
    printcolumn(
        name = "Routing",
        type_ = "string",
        json_path = ".spec.routing",
        description = "Takeover or Alongside",
        priority = 1
    ),
    printcolumn(
        name = "Age",
        type_ = "date",
        json_path = ".metadata.creationTimestamp"
    )
)]
#[serde(rename_all = "camelCase")]
pub struct ApiProtectionSpec {
    /// The Service to protect, in the same namespace.
    pub target: TargetSpec,
    /// What the enforcers do with what they detect: `Learn` observes and learns, never flags;
    /// `Monitor` also detects and reports incidents, never blocks; `Enforce` also blocks where a
    /// rule's or detector's action is `Block`. Default `Monitor`; switch to `Enforce` once the
    /// reported incidents are the ones to stop.
    #[serde(default)]
    pub mode: ProtectionMode,
    /// How traffic reaches the enforcers. `Takeover` (default): the target Service keeps its
    /// name and selects the enforcer pods, its original selector moves to a generated
    /// `<service>-origin` Service and is restored when the ApiProtection is deleted; clients
    /// change nothing. `Alongside`: a new `<service>-protected` Service fronts the enforcers and
    /// the target Service is untouched (for GitOps-owned Services); clients must call the new
    /// Service.
    #[serde(default)]
    pub routing: Routing,
    /// How requests are grouped into sessions.
    #[serde(default)]
    pub session: SessionSpec,
    /// How the client address is found.
    #[serde(default)]
    pub client_address: ClientAddressSpec,
    /// When the learned model is mature enough for its detectors to act.
    #[serde(default)]
    pub learning: LearningSpec,
    /// Action and sensitivity of each learned detector.
    #[serde(default)]
    pub detectors: DetectorsSpec,
    /// An OpenAPI 3 document declaring the API: its operations and their parameter and body
    /// schemas take precedence over the learned ones for the endpoints it covers.
    #[serde(default, rename = "openAPI", skip_serializing_if = "Option::is_none")]
    pub open_api: Option<OpenApiSpec>,
    /// The enforcer pods the operator runs.
    #[serde(default)]
    pub enforcer: EnforcerSpec,
    /// Declared per-session rate limits for operations (429 with `Retry-After` when blocking),
    /// in addition to the learned volume detector.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = MAX_RATE_LIMITS))]
    pub rate_limits: Vec<RateLimitSpec>,
}

/// The protected Service and port.
#[derive(Serialize, Deserialize, KubeSchema, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
#[x_kube(cel)]
pub struct TargetSpec {
    /// Name of the Service, in the namespace of this ApiProtection.
    #[schemars(length(min = 1, max = SERVICE_NAME_MAX_LENGTH), regex(pattern = SERVICE_NAME_PATTERN))]
    pub service: String,
    /// The Service port that carries the API: its number or its name.
    #[x_kube(validation = Rule::new("type(self) == int ? (self >= 1 && self <= 65535) : (size(self) >= 1 && size(self) <= 15 && self.matches('^[a-z0-9]([-a-z0-9]*[a-z0-9])?$'))")
        .message("target.port must be a port number from 1 to 65535 or a port name of at most 15 lowercase letters, digits and '-'"))]
    pub port: IntOrString,
}

/// What the enforcers do with detections.
#[derive(Serialize, Deserialize, JsonSchema, Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub enum ProtectionMode {
    /// Observe and learn; never flag or block.
    Learn,
    /// Learn, detect and report incidents; never block.
    #[default]
    Monitor,
    /// Learn, detect, report, and block where a rule's or detector's action is `Block`.
    Enforce,
}

/// How client traffic is routed through the enforcers.
#[derive(Serialize, Deserialize, JsonSchema, Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub enum Routing {
    /// The target Service keeps its name and now selects the enforcer pods; its original
    /// selector moves to a generated `<service>-origin` Service that the enforcers forward to,
    /// and is restored when the ApiProtection is deleted. Clients change nothing.
    #[default]
    Takeover,
    /// A new `<service>-protected` Service fronts the enforcers and the target Service is left
    /// untouched, for teams whose GitOps tool owns it; clients must call the new Service.
    Alongside,
}

/// Where the OpenAPI document is.
#[derive(Serialize, Deserialize, JsonSchema, Clone, Debug, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct OpenApiSpec {
    /// ConfigMap key holding the OpenAPI 3 document (JSON or YAML).
    pub config_map_ref: ConfigMapKeyRef,
}

/// The enforcer Deployment.
#[derive(Serialize, Deserialize, JsonSchema, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct EnforcerSpec {
    /// Number of enforcer pods. Sessions stick to one pod by client-IP affinity, or are routed
    /// to one owner pod with `scaleOut`. Default 2.
    #[serde(default = "default_replicas")]
    #[schemars(range(min = 1, max = 100))]
    pub replicas: i32,
    /// Enforcer container image. Default: the image the operator was configured with.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = IMAGE_MAX_LENGTH))]
    pub image: Option<String>,
    /// Image pull policy of the enforcer container. Default: Kubernetes' own default.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub image_pull_policy: Option<ImagePullPolicy>,
    /// CPU and memory requests and limits of the enforcer container.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resources: Option<ResourceRequirements>,
    /// What an enforcer does when it cannot decide a request (an internal error): `Open`
    /// forwards it (availability first), `Closed` refuses it with 503 (protection first).
    /// Counted in metrics either way. Default `Open`.
    #[serde(default)]
    pub failure_policy: FailurePolicy,
    /// Largest request body the enforcer buffers to inspect (JSON shape, OpenAPI validation);
    /// larger bodies are refused with 413 when a check needs them. Default 1048576 (1 MiB).
    #[serde(default = "default_max_body_bytes")]
    #[schemars(range(min = 0, max = 67_108_864))]
    pub max_body_bytes: i64,
    /// Spreads sessions over the replicas so that every request of a session is decided by
    /// one replica, whatever replica it reaches (behind an ingress or gateway that balances
    /// each request): a replica forwards a request to the session's owner over the pod
    /// network. Absent: sessions stay on a replica by client-IP affinity only.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub scale_out: Option<ScaleOutSpec>,
    /// Limits that keep slow or greedy clients from holding the enforcer's connections,
    /// request slots and file descriptors (docs/enforcer-config.md, `limits`).
    #[serde(default)]
    pub client_limits: ClientLimitsSpec,
}

/// Slow-client limits of the enforcer's proxy port.
#[derive(Serialize, Deserialize, JsonSchema, Clone, Debug, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct ClientLimitsSpec {
    /// Client connections one enforcer serves at once; more are answered 503 and closed.
    /// Default: derived from the pod's file-descriptor limit (half of what is left once the
    /// admin port has its own), and lowered to that bound when set.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = 1_048_576))]
    pub max_connections: Option<i64>,
    /// Connections one client address (IPv6: one /64) may hold open; more are answered 503
    /// and closed. Applies with `clientAddress.source: Socket` only (behind a trusted proxy
    /// every connection comes from the proxy). 0: no cap. Default 256.
    #[serde(default = "default_per_client")]
    #[schemars(range(min = 0, max = 1_048_576))]
    pub max_connections_per_client: i64,
    /// Requests of one client address in flight at once; more answer 429. 0: no cap.
    /// Default 256.
    #[serde(default = "default_per_client")]
    #[schemars(range(min = 0, max = 1_048_576))]
    pub max_concurrent_requests_per_client: i64,
    /// Minimum average rate of a request body in bytes per second once `bodyRateGrace` has
    /// passed; a slower body is cut with 408. 0: no minimum. Default 1024.
    #[serde(default = "default_min_body_rate")]
    #[schemars(range(min = 0, max = 1_073_741_824))]
    pub min_body_rate: i64,
    /// Time a request body may take before `minBodyRate` applies, such as `5s` (the default).
    #[serde(default = "default_body_rate_grace")]
    #[schemars(length(min = 2, max = DURATION_MAX_LENGTH), regex(pattern = DURATION_PATTERN))]
    pub body_rate_grace: String,
}

impl Default for ClientLimitsSpec {
    fn default() -> Self {
        Self {
            max_connections: None,
            max_connections_per_client: default_per_client(),
            max_concurrent_requests_per_client: default_per_client(),
            min_body_rate: default_min_body_rate(),
            body_rate_grace: default_body_rate_grace(),
        }
    }
}

fn default_per_client() -> i64 {
    256
}

fn default_min_body_rate() -> i64 {
    1024
}

fn default_body_rate_grace() -> String {
    "5s".into()
}

/// Session routing between enforcer replicas (docs/scale-out.md).
#[derive(Serialize, Deserialize, JsonSchema, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct ScaleOutSpec {
    /// Secret key holding the key the replicas authenticate forwarded requests with (at
    /// least 16 bytes, e.g. 32 random bytes). The kubelet mounts it into the enforcer pods;
    /// the operator never reads it.
    pub secret_ref: SecretKeyRef,
}

impl Default for EnforcerSpec {
    fn default() -> Self {
        Self {
            replicas: default_replicas(),
            image: None,
            image_pull_policy: None,
            resources: None,
            failure_policy: FailurePolicy::Open,
            max_body_bytes: default_max_body_bytes(),
            scale_out: None,
            client_limits: ClientLimitsSpec::default(),
        }
    }
}

fn default_replicas() -> i32 {
    2
}

fn default_max_body_bytes() -> i64 {
    1_048_576
}

/// Image pull policy of the enforcer container (`Always`, `IfNotPresent` or `Never`);
/// Kubernetes' default when unset.
#[derive(Serialize, Deserialize, JsonSchema, Clone, Copy, Debug, PartialEq, Eq)]
pub enum ImagePullPolicy {
    /// Pull on every pod start.
    Always,
    /// Pull only when the node lacks the image.
    IfNotPresent,
    /// Never pull; the image must be on the node.
    Never,
}

/// Behaviour on internal errors.
#[derive(Serialize, Deserialize, JsonSchema, Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum FailurePolicy {
    /// Forward the request: availability over protection.
    #[default]
    Open,
    /// Refuse the request with 503: protection over availability.
    Closed,
}

/// A declared limit of requests per session to one operation.
#[derive(Serialize, Deserialize, KubeSchema, Clone, Debug, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
#[x_kube(cel)]
pub struct RateLimitSpec {
    /// The limited operation: method and templated path, for example
    /// `GET /api/v1/accounts/{account_id}/transactions`. Path parameter names need not match
    /// the learned ones.
    #[schemars(length(min = 3, max = OPERATION_MAX_LENGTH), regex(pattern = OPERATION_PATTERN))]
    pub operation: String,
    /// Requests a session may send to the operation per `per`.
    #[schemars(range(min = 1, max = 1_000_000))]
    pub requests: i64,
    /// The window the limit counts over, as a sliding window: a duration such as `1m` (1s to
    /// 24h).
    #[schemars(length(min = 2, max = DURATION_MAX_LENGTH), regex(pattern = DURATION_PATTERN))]
    #[x_kube(validation = Rule::new("duration(self) >= duration('1s') && duration(self) <= duration('24h')")
        .message("rateLimits[].per must be between 1s and 24h"))]
    pub per: String,
    /// What exceeding the limit does. Default `Block` (429 with `Retry-After` in `Enforce`
    /// mode): a declared limit is a decision already made, unlike a learned threshold.
    #[serde(default = "default_rate_limit_action")]
    pub action: Action,
}

fn default_rate_limit_action() -> Action {
    Action::Block
}

//! Syntax patterns and size limits shared by the CRD schemas.
//!
//! Every string in the schemas carries a `maxLength` and every list a `maxItems`: the API server
//! estimates the worst-case cost of each CEL rule from these bounds and refuses a CRD whose rules
//! could exceed its budget. The constants are public so that the validating webhook and tests
//! can quote the same limits the schema enforces.

/// A duration as Go and CEL write it, restricted to the units that make sense for request
/// windows: one or more `<integer><unit>` groups with unit `ms`, `s`, `m` or `h` (`500ms`,
/// `30s`, `10m`, `1h30m`).
pub const DURATION_PATTERN: &str = r"^([0-9]+(ms|s|m|h))+$";
/// Longest accepted duration string.
pub const DURATION_MAX_LENGTH: u32 = 32;

/// An operation: an upper-case HTTP method, one space, and a templated path starting with `/`
/// (`POST /api/v1/transferFunds`, `GET /api/v1/accounts/{account_id}/balance`).
pub const OPERATION_PATTERN: &str = r"^(GET|HEAD|POST|PUT|PATCH|DELETE|OPTIONS) /\S*$";
/// Longest accepted operation string (method, space and path).
pub const OPERATION_MAX_LENGTH: u32 = 512;

/// A Service name: an RFC 1035 label, as Kubernetes requires for Services.
pub const SERVICE_NAME_PATTERN: &str = r"^[a-z]([-a-z0-9]*[a-z0-9])?$";
/// Longest Service name Kubernetes accepts.
pub const SERVICE_NAME_MAX_LENGTH: u32 = 63;

/// A name of a namespaced object (ConfigMap, Secret, ApiProtection): an RFC 1123 subdomain.
pub const OBJECT_NAME_PATTERN: &str =
    r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$";
/// Longest object name Kubernetes accepts.
pub const OBJECT_NAME_MAX_LENGTH: u32 = 253;

/// A key inside a ConfigMap or Secret, as Kubernetes accepts it.
pub const DATA_KEY_PATTERN: &str = r"^[-._a-zA-Z0-9]+$";
/// Longest ConfigMap or Secret key Kubernetes accepts.
pub const DATA_KEY_MAX_LENGTH: u32 = 253;

/// An HTTP header or cookie name: an RFC 9110 `token`.
pub const TOKEN_PATTERN: &str = r"^[!#$%&'*+.^_`|~0-9A-Za-z-]+$";
/// A query parameter name: anything a query string can carry as a key without escaping.
pub const QUERY_PARAM_PATTERN: &str = r"^[^&=#?\s]+$";
/// A JWT claim name; dots select a nested claim (`user.id`).
pub const CLAIM_PATTERN: &str = r"^[A-Za-z0-9_:/-]+(\.[A-Za-z0-9_:/-]+)*$";
/// Longest header, cookie, query parameter or claim name.
pub const NAME_MAX_LENGTH: u32 = 128;

/// Longest free-text description or summary a user writes.
pub const DESCRIPTION_MAX_LENGTH: u32 = 1024;
/// Longest container image reference.
pub const IMAGE_MAX_LENGTH: u32 = 512;

/// Highest `SequenceRule` priority (rules with a higher priority are evaluated first).
pub const MAX_PRIORITY: i32 = 1000;
/// Largest `within.requests` window: the enforcer keeps at most this many recent operations per
/// session.
pub const MAX_WINDOW_REQUESTS: i32 = 64;
/// Most operations `requires.after` may list (with the required operation itself: 10, the
/// longest sequence the enforcer tracks by default).
pub const MAX_REQUIRED_PREDECESSORS: u32 = 9;
/// Most operations a `forbids.sequence` may list.
pub const MAX_FORBIDDEN_SEQUENCE: u32 = 10;
/// Most session identifiers an `ApiProtection` may list.
pub const MAX_SESSION_IDENTIFIERS: u32 = 8;
/// Most declared rate limits an `ApiProtection` may list.
pub const MAX_RATE_LIMITS: u32 = 64;
/// Most conditions on a status (one per condition type).
pub const MAX_CONDITIONS: u32 = 16;
/// Most endpoints reported in an `ApiProtection` status.
pub const MAX_STATUS_ENDPOINTS: u32 = 100;
/// Most sequences reported in an `ApiProtection` status (REFERENCE: the top 20).
pub const MAX_STATUS_SEQUENCES: u32 = 20;
/// Most operations in `status.posture`.
pub const MAX_STATUS_POSTURE: u32 = 50;
/// Most suggested rules reported in an `ApiProtection` status.
pub const MAX_STATUS_SUGGESTED_RULES: u32 = 20;
/// Most incidents reported in an `ApiProtection` status.
pub const MAX_STATUS_INCIDENTS: u32 = 20;
/// Longest plain-language incident summary or suggested-rule YAML kept in status.
pub const SUMMARY_MAX_LENGTH: u32 = 4096;

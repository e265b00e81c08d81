//! Small types that both custom resources use.

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use super::limits::{
    DATA_KEY_MAX_LENGTH, DATA_KEY_PATTERN, OBJECT_NAME_MAX_LENGTH, OBJECT_NAME_PATTERN,
};

/// What happens when a rule or detector matches a request.
///
/// The protection's mode still decides whether anything is blocked: in `Learn` nothing is
/// flagged, in `Monitor` a `Block` action is only reported, and only in `Enforce` is the request
/// refused.
#[derive(Serialize, Deserialize, JsonSchema, Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub enum Action {
    /// Record the match (in incidents, counters and status) and let the request through.
    #[default]
    Log,
    /// Refuse the request (403, or 429 for volume limits) when the protection is in `Enforce`
    /// mode; record it like `Log` otherwise.
    Block,
}

/// A key of a ConfigMap in the same namespace.
#[derive(Serialize, Deserialize, JsonSchema, Clone, Debug, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct ConfigMapKeyRef {
    /// Name of the ConfigMap, in the namespace of this resource.
    #[schemars(length(min = 1, max = OBJECT_NAME_MAX_LENGTH), regex(pattern = OBJECT_NAME_PATTERN))]
    pub name: String,
    /// Key inside the ConfigMap's `data` whose value is used.
    #[schemars(length(min = 1, max = DATA_KEY_MAX_LENGTH), regex(pattern = DATA_KEY_PATTERN))]
    pub key: String,
}

/// A key of a Secret in the same namespace.
#[derive(Serialize, Deserialize, JsonSchema, Clone, Debug, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct SecretKeyRef {
    /// Name of the Secret, in the namespace of this resource.
    #[schemars(length(min = 1, max = OBJECT_NAME_MAX_LENGTH), regex(pattern = OBJECT_NAME_PATTERN))]
    pub name: String,
    /// Key inside the Secret's `data` whose value is used.
    #[schemars(length(min = 1, max = DATA_KEY_MAX_LENGTH), regex(pattern = DATA_KEY_PATTERN))]
    pub key: String,
}

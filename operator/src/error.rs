//! The operator's error type (one `thiserror` enum for the crate).
//!
//! Variants that wrap another error keep it as their `source`; their message repeats it, like
//! kube's own errors do, so a log line that prints only the top error still says what failed.

use ordo_enforcer::model::ModelError;

/// Everything that can go wrong in the operator's library code.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("Kubernetes API: {0}")]
    Kube(#[from] kube::Error),
    #[error("finalizer: {0}")]
    Finalizer(#[source] Box<kube::runtime::finalizer::Error<Error>>),
    #[error("target: {0}")]
    Target(String),
    /// A taken-over Service cannot be given back.
    #[error("routing: {0}")]
    Routing(String),
    /// The annotation that records a taken-over Service's selector is not what the operator
    /// wrote.
    #[error("routing: annotation {annotation} is not a JSON object of strings: {source}")]
    RoutingAnnotation {
        annotation: &'static str,
        source: serde_json::Error,
    },
    #[error("model: {0}")]
    Model(#[from] ModelProblem),
    #[error("serialization: {0}")]
    Serde(#[from] serde_json::Error),
    #[error("object without {0}")]
    MissingField(&'static str),
    #[error("invalid object: {0}")]
    InvalidObject(String),
    /// A reconcile took longer than it may (an API request that got no answer); the next
    /// one starts over, every step being idempotent.
    #[error("reconcile did not finish within {0:?}")]
    Timeout(std::time::Duration),
    /// The watches a reconcile reads from were stopped (the controller is shutting down).
    #[error("the watch caches were stopped")]
    CachesStopped,
}

/// Why a learned model cannot be merged or persisted.
#[derive(Debug, thiserror::Error)]
pub enum ModelProblem {
    /// A reported delta or the persisted model does not decode.
    #[error(transparent)]
    Decode(#[from] ModelError),
    /// The merged model and state outgrew what one ConfigMap holds.
    #[error("merged model and state take {size} bytes, more than the {limit} a ConfigMap can hold")]
    TooLarge { size: usize, limit: usize },
}

impl Error {
    /// Bounded label value for the error metric.
    /// Every value `metric_kind` returns (keep the two together), so that
    /// `ordo_operator_reconcile_errors_total` shows each at zero before its first error.
    pub const METRIC_KINDS: [&'static str; 10] = [
        "conflict",
        "kube",
        "finalizer",
        "target",
        "routing",
        "model",
        "serialization",
        "missing_field",
        "invalid_object",
        "timeout",
    ];

    pub fn metric_kind(&self) -> &'static str {
        match self {
            Self::Kube(kube::Error::Api(status)) if status.code == 409 => "conflict",
            Self::Kube(_) => "kube",
            Self::Finalizer(_) => "finalizer",
            Self::Target(_) => "target",
            Self::Routing(_) | Self::RoutingAnnotation { .. } => "routing",
            Self::Model(_) => "model",
            Self::Serde(_) => "serialization",
            Self::MissingField(_) => "missing_field",
            Self::InvalidObject(_) => "invalid_object",
            Self::Timeout(_) => "timeout",
            Self::CachesStopped => "stopped",
        }
    }

    /// Whether the API server refused a write because the object changed meanwhile (409).
    pub fn is_conflict(&self) -> bool {
        matches!(self, Self::Kube(kube::Error::Api(status)) if status.code == 409)
    }
}

/// Result with the operator's error.
pub type Result<T, E = Error> = std::result::Result<T, E>;

#[cfg(test)]
mod tests {
    use std::error::Error as _;

    use super::*;

    #[test]
    fn wrapped_errors_keep_their_source() {
        let failed = kube::runtime::finalizer::Error::ApplyFailed(Error::MissingField("x"));
        let finalizer = Error::Finalizer(Box::new(failed));
        let inner = finalizer.source().and_then(|s| s.source());
        assert_eq!(
            inner.map(ToString::to_string).as_deref(),
            Some("object without x")
        );

        let json = serde_json::from_str::<u8>("x").unwrap_err();
        let routing = Error::RoutingAnnotation {
            annotation: "ordo.dev/original-selector",
            source: json,
        };
        assert!(
            routing
                .source()
                .is_some_and(|s| s.is::<serde_json::Error>())
        );

        let model = Error::from(ModelProblem::TooLarge { size: 2, limit: 1 });
        assert_eq!(
            model.to_string(),
            "model: merged model and state take 2 bytes, more than the 1 a ConfigMap can hold"
        );
        assert!(model.source().is_some_and(|s| s.is::<ModelProblem>()));
    }
}

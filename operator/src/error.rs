//! The operator's error type (one `thiserror` enum for the crate).

/// Everything that can go wrong in the operator's library code.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("Kubernetes API: {0}")]
    Kube(#[from] kube::Error),
    #[error("finalizer: {0}")]
    Finalizer(String),
    #[error("target: {0}")]
    Target(String),
    #[error("conflict: {0}")]
    Conflict(String),
    #[error("routing: {0}")]
    Routing(String),
    #[error("config: {0}")]
    Render(String),
    #[error("model: {0}")]
    Model(String),
    #[error("serialization: {0}")]
    Serde(#[from] serde_json::Error),
    #[error("object without {0}")]
    MissingField(&'static str),
    #[error("invalid object: {0}")]
    InvalidObject(String),
}

impl Error {
    /// Bounded label value for the error metric.
    pub fn metric_kind(&self) -> &'static str {
        match self {
            Self::Kube(kube::Error::Api(status)) if status.code == 409 => "conflict",
            Self::Kube(_) => "kube",
            Self::Finalizer(_) => "finalizer",
            Self::Target(_) => "target",
            Self::Conflict(_) => "conflict",
            Self::Routing(_) => "routing",
            Self::Render(_) => "render",
            Self::Model(_) => "model",
            Self::Serde(_) => "serialization",
            Self::MissingField(_) => "missing_field",
            Self::InvalidObject(_) => "invalid_object",
        }
    }
}

/// Result with the operator's error.
pub type Result<T, E = Error> = std::result::Result<T, E>;

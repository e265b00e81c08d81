//! Learned anomaly detectors (docs/detection.md): each compares one request with the learned model and
//! may emit a [`Finding`](crate::finding::Finding) with evidence and a deterministic
//! plain-language explanation. [`LearnedAnalyzer`] runs them and feeds the model.

pub mod analyzer;
pub mod auth_activity;
pub mod baselines;
pub mod clients;
pub mod context;
pub mod distributed;
pub mod enumeration;
pub mod exposure;
pub mod journey;
pub mod kindred;
pub mod lesson;
pub mod lineage;
pub mod outcome;
pub mod params;
pub mod quarantine;
pub mod replay;
pub mod request;
pub mod sequence;
pub mod session_state;
pub mod shadow;
pub mod shape;
pub mod shown;
pub mod stuffing;
pub mod templates;
pub mod thresholds;
pub mod view;
pub mod volume;

pub use analyzer::LearnedAnalyzer;
pub use request::{
    AddressFacts, AddressQuarantine, Analyzer, AuthAttempt, AuthFailure, LateFinding,
    ModelMaturity, NoopAnalyzer, RequestContext, RequestScratch, ResponseSummary,
};
pub use view::{ModelView, model_view, suggested_rules, suggested_rules_in};
#[cfg(test)]
mod tests;

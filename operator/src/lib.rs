//! Ordo's control plane: the kube-rs operator that reconciles `ApiProtection` and
//! `SequenceRule` into running enforcers, aggregates their reports into status, and
//! validates both kinds in an admission webhook.
//!
//! Layout: pure logic (`names`, `render`, `resources`, `conditions`) is separate from the
//! runtime (`controller`, `routing`, `reports`, `webhook`, `leader`, `server`, `tls`).

pub mod auth;
pub mod conditions;
pub mod controller;
pub mod crd;
pub mod endpoint;
pub mod error;
pub mod leader;
pub mod leader_endpoint;
pub mod metrics;
pub mod names;
pub mod propagation;
pub mod render;
pub mod reports;
pub mod resources;
pub mod routing;
pub mod rule_status;
pub mod server;
pub mod summary;
pub mod tls;
pub mod webhook;

pub use error::{Error, Result};

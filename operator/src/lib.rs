//! Ordo's control plane: the kube-rs operator that reconciles `ApiProtection` and
//! `SequenceRule` into running enforcers, aggregates their reports into status, and
//! validates both kinds in an admission webhook.
//!
//! Layout: the folders show the split between pure logic and the runtime.
//!
//! - [`crd`]: the resource types, one file per kind.
//! - [`desired`]: pure — names, the rendered enforcer config, the owned objects, conditions
//!   and status, computed from the spec and the reports.
//! - [`controller`]: the runtime that reads the cluster, asks [`desired`] and writes.
//! - [`reports`]: enforcer reports — routes, authentication, the merged state and the hub
//!   that persists it.
//! - [`serve`]: the HTTP(S) server loop, TLS, the admission webhook.
//! - [`leader`], [`metrics`], [`error`]: leader election, Prometheus metrics, the error type.

pub mod controller;
pub mod crd;
pub mod desired;
pub mod error;
pub mod leader;
pub mod metrics;
pub mod reports;
pub mod serve;

pub use error::{Error, Result};

//! Ordo's data plane library: everything about one request's decision and about the
//! learned model. It does not depend on kube; the operator links it for the config it
//! renders, for rule validation and for merging models.

pub mod admin;
pub mod analysis;
pub mod config;
pub mod detect;
pub mod incident;
pub mod metrics;
pub mod model;
pub mod operation;
pub mod policy;
pub mod proxy;
pub mod report;
pub mod session;

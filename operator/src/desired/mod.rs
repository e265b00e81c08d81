//! The pure half of the operator: what every object and status should be, computed from an
//! ApiProtection, its SequenceRules and what the enforcers reported. No I/O here, so all of
//! it is unit-tested; the [`crate::controller`] reads the cluster and writes the results.
//!
//! - [`names`]: names, labels and annotations of everything the operator creates.
//! - [`render`]: the enforcer config rendered from the spec and the rules.
//! - [`resources`]: the owned objects (ConfigMap, ServiceAccount, Deployment, Services).
//! - [`conditions`]: status conditions and their transitions.
//! - [`summary`]: the report-derived part of the status.
//! - [`incidents`]: one session's incidents from several enforcer replicas, merged into one.
//! - [`status`]: the desired status of an ApiProtection, from what a reconcile observed.
//! - [`rule_status`]: the desired status of a SequenceRule.

pub mod conditions;
pub mod incidents;
pub mod names;
pub mod render;
pub mod resources;
pub mod rule_status;
pub mod status;
pub mod summary;

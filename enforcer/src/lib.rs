//! Ordo's data plane library: everything about one request's decision and about the
//! learned model. It does not depend on kube; the operator links it for the config it
//! renders, for rule validation and for merging models.
//!
//! The top-level modules form layers; each imports only modules below it (the test
//! `tests/layering.rs` fails on a cycle). Read bottom-up:
//!
//! 1. [`model`] (the learned model and its sketches), [`metrics`], [`time`]: no imports
//!    from this crate.
//! 2. [`operation`]: method + templated path, the resolver and the OpenAPI import.
//! 3. [`config`]: the YAML document and its validation (uses `operation`'s pattern syntax).
//! 4. [`session`]: who a request belongs to and the per-session table, generic over the
//!    detectors' state; [`report`]: the report channel's wire types and client.
//! 5. [`finding`]: the vocabulary of every check (`Finding`, `FindingKind`, `Severity`).
//! 6. [`policy`] (declared rules and limits) and [`detect`] (the learned detectors and the
//!    `Analyzer` extension point).
//! 7. [`incident`]: findings grouped per session, with their summaries.
//! 8. [`proxy`] (the request path) and [`admin`] (the admin API, reading through its
//!    `AdminSource` trait).
//! 9. [`runtime`]: the composition root; starts workers, admin and housekeeping, applies
//!    reloads, feeds reports. The binary (`main.rs`) calls it.

pub mod admin;
pub mod config;
pub mod detect;
pub mod finding;
pub mod incident;
pub mod metrics;
pub mod model;
pub mod operation;
pub mod policy;
pub mod proxy;
pub mod report;
pub mod runtime;
pub mod session;
pub mod time;

//! Ordo's control plane.
pub mod crd;

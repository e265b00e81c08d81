//! Test support for Ordo's integration and end-to-end suites.

pub mod cluster;
pub mod demo;
pub mod e2e;
pub mod sim;

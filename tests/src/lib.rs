//! Test support for Ordo's integration and end-to-end suites.

pub mod cluster;
pub mod cpbench;
pub mod demo;
pub mod e2e;
pub mod helm;
pub mod monitoring;
pub mod sim;

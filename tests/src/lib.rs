//! Test support for Ordo's integration and end-to-end suites.

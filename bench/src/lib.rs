//! Benchmark support for Ordo.

//! The traffic simulator: a sample banking API, seeded benign and attack journeys, a driver
//! that sends them over real HTTP, the detection evaluation through a real enforcer, and the
//! ATRDF replay benchmark.

pub mod atrdf;
pub mod attacks;
pub mod bank;
pub mod driver;
pub mod evaluate;
pub mod journeys;

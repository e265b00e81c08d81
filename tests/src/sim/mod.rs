//! The traffic simulator: a sample banking API and two APIs of other styles (a library keyed
//! by readable names, a shop with cookie sessions), seeded benign and attack journeys, a driver
//! that sends them over real HTTP, the detection evaluation through a real enforcer, and the
//! ATRDF replay benchmark.

pub mod app;
pub mod atrdf;
pub mod attacks;
pub mod bank;
pub mod driver;
pub mod evaluate;
pub mod journeys;
pub mod library;
pub mod scaleout;
pub mod shop;
pub mod styles;

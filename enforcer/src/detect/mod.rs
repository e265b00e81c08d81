//! Learned anomaly detectors (issue 4).

pub mod session_state;

//! Per-session detector state, stored by the proxy's session table next to the rule history.
//! Placeholder until the learned detectors fill it; it must stay small (it counts toward the
//! ~300 bytes budget of an idle session).

/// Detector state of one session.
#[derive(Default, Debug)]
pub struct SessionState {}

//! Sessions: who a request belongs to, and the bounded per-session state kept for rules,
//! limits and detectors.

use serde::Serialize;

/// Which identifier named the session.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
pub enum SessionSource {
    Jwt,
    Header,
    Cookie,
    Query,
    ClientIp,
}

/// One operation of a session's recent history.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RecentOp {
    /// `Operation::id`.
    pub op: u32,
    /// Unix milliseconds.
    pub at_ms: u64,
}

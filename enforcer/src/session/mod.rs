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

mod client;
mod history;
mod identify;
pub mod jwks;
pub mod jwt;
mod label;
mod table;
pub mod token_cache;

pub use client::client_address;
pub use history::{History, LOST_HISTORY, MAX_HISTORY};
pub use identify::{Identified, Refusal, SessionIdentifiers};
pub use jwt::JwtConfigError;
pub use label::{session_label, share_pseudonym_key};
pub use table::{LimitSlot, LimitSlots, SessionEntry, SessionTable, TableStats};

//! The in-line reverse proxy (hyper 1): HTTP/1.1 keep-alive and HTTP/2 (h2c) from clients,
//! a pooled HTTP/1.1 client to the upstream, streaming bodies, and the per-request decision.

mod body;
mod decision;
mod handler;
mod header_policy;
mod headers;
mod problem;
mod server;
mod state;
mod upstream;

pub use body::{BoxError, ProxyBody};
pub use decision::{Verdict, decide};
pub use headers::{Forwarding, strip_hop_by_hop, write_forwarded};
pub use server::{
    ReloadHook, RunningEnforcer, StartError, StartOptions, refresh_gauges, start,
    start_with_options,
};
pub use state::Shared;
pub use upstream::{RequestBody, UpstreamBody, UpstreamError, UpstreamPool, UpstreamRequest};

//! The in-line reverse proxy's request path (hyper 1): HTTP/1.1 keep-alive and HTTP/2 (h2c)
//! from clients, a pooled HTTP/1.1 client to the upstream, streaming bodies, and the
//! per-request decision. Starting it (listeners, workers, admin, reloads) is `crate::runtime`.

mod body;
mod clients;
mod decision;
mod exposure;
mod handler;
mod header_policy;
mod headers;
mod problem;
mod rejection;
mod route;
mod server;
mod state;
mod upstream;

pub use body::{BoxError, ProxyBody};
pub use clients::{BodyTooSlow, ClientBodyError, ClientLimits, ConnectionRefusal, MinRateBody};
pub use decision::{Verdict, decide};
pub use headers::{Forwarding, strip_hop_by_hop, write_forwarded};
pub use route::{Router, RouterError, serve_peers};
pub use server::accept_loop;
pub use state::{Sessions, Shared};
pub use upstream::{
    PoolSettings, RequestBody, UpstreamBody, UpstreamError, UpstreamPool, UpstreamRequest,
    set_worker_index,
};

/// The upstream codec and chunked decoder, for the fuzz targets in `fuzz/`: not a stable API.
#[doc(hidden)]
pub mod fuzzing {
    pub use super::upstream::chunked::{ChunkError, ChunkedDecoder, Decoded};
    pub use super::upstream::codec::{
        Parsed, ProtocolError, ResponseFraming, ResponseHead, parse_response_head,
    };
}

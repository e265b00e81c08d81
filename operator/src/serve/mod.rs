//! The operator's HTTP(S) serving: the shared server loop, TLS with certificate reload, and
//! the validating admission webhook. The report routes are in [`crate::reports::routes`].

pub mod server;
pub mod tls;
pub mod webhook;

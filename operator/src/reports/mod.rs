//! Enforcer reports, from the wire to the merged state: the HTTPS routes
//! ([`routes`]), who may report ([`auth`]), the merged state per ApiProtection ([`state`],
//! pure) and the hub that loads, merges and persists it ([`hub`]). Only the leader accepts
//! reports, and [`leader_slice`] points the report Service at it.

pub mod auth;
pub mod hub;
pub mod leader_slice;
pub mod propagation;
pub mod routes;
pub mod state;

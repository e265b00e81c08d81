//! The composition root: starts the proxy workers, the admin server and housekeeping around
//! one shared state, applies config reloads, and reads what reports carry. The only module
//! that knows both the proxy and the admin API.

mod admin_source;
mod housekeeping;
mod report_source;
mod start;

pub use report_source::{EnforcerSource, incident_report};
pub use start::{ReloadHook, RunningEnforcer, StartError, StartOptions, start, start_with_options};

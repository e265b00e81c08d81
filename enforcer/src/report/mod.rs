//! The report channel from the enforcer to the operator: wire types shared with the
//! operator ([`protocol`]) and the enforcer's periodic client ([`client`]). What a report
//! carries is read from the running enforcer by `crate::runtime`.

pub mod client;
pub mod protocol;

/// The channel's config section, defined with the rest of the config.
pub use crate::config::ReportConfig;
pub use client::{ReportClient, ReportError, ReportSource};
pub use protocol::{
    IncidentReport, REPORT_AUDIENCE, REPORT_PATH_PREFIX, Report, ReportAnswer, RuleCounters,
    RunningConfig, TrafficCounters,
};

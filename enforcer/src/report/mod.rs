//! The report channel from the enforcer to the operator: wire types shared with the
//! operator ([`protocol`]) and the enforcer's periodic client ([`client`]).

pub mod client;
pub mod protocol;
pub mod source;

pub use client::{ReportClient, ReportConfig, ReportError, ReportSource};
pub use protocol::{
    IncidentReport, REPORT_AUDIENCE, REPORT_PATH_PREFIX, Report, ReportAnswer, RuleCounters,
    RunningConfig, TrafficCounters,
};
pub use source::EnforcerSource;

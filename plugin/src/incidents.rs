//! `kubectl ordo incidents`: the incidents an ApiProtection's status lists, with their
//! plain-language summaries, filtered by severity, age and state.

use k8s_openapi::jiff::Timestamp;
use kube::ResourceExt as _;
use ordo_operator::crd::{ApiProtection, IncidentStatus, Severity};
use serde::Serialize;

use crate::cli::{IncidentsArgs, Output, SeverityArg};
use crate::cluster::Session;
use crate::status::{incident_order, last_seen_age, severity_name};
use crate::text::table;

/// One incident with the ApiProtection it belongs to (the `-o json|yaml` item).
#[derive(Serialize, Debug, Clone)]
#[serde(rename_all = "camelCase")]
pub struct Row {
    pub namespace: String,
    pub protection: String,
    #[serde(flatten)]
    pub incident: IncidentStatus,
}

/// What to keep.
#[derive(Debug, Clone, Copy, Default)]
pub struct Filter {
    pub min_severity: Option<Severity>,
    pub since_seconds: Option<i64>,
    pub open_only: bool,
}

impl Filter {
    pub fn keeps(&self, incident: &IncidentStatus, now: Timestamp) -> bool {
        self.min_severity.is_none_or(|s| incident.severity >= s)
            && self
                .since_seconds
                .is_none_or(|s| crate::status::within(incident, now, s))
            && (!self.open_only || incident.open)
    }
}

pub fn severity(arg: SeverityArg) -> Severity {
    match arg {
        SeverityArg::Low => Severity::Low,
        SeverityArg::Medium => Severity::Medium,
        SeverityArg::High => Severity::High,
        SeverityArg::Critical => Severity::Critical,
    }
}

/// The incidents of `protections` that `filter` keeps, most severe and most recent first.
pub fn rows(protections: &[ApiProtection], filter: Filter, now: Timestamp) -> Vec<Row> {
    let mut rows: Vec<Row> = protections
        .iter()
        .flat_map(|p| {
            let namespace = p.namespace().unwrap_or_default();
            let protection = p.name_any();
            p.status
                .iter()
                .flat_map(|s| s.incidents.iter())
                .filter(|i| filter.keeps(i, now))
                .map(move |i| Row {
                    namespace: namespace.clone(),
                    protection: protection.clone(),
                    incident: i.clone(),
                })
        })
        .collect();
    rows.sort_by(|a, b| incident_order(&a.incident, &b.incident));
    rows
}

pub async fn run(
    session: &Session,
    args: &IncidentsArgs,
    now: Timestamp,
) -> anyhow::Result<String> {
    let protections = match &args.name {
        Some(name) => vec![session.protection(name).await?],
        None => session.protections(args.all_namespaces).await?,
    };
    let filter = Filter {
        min_severity: args.severity.map(severity),
        since_seconds: args
            .since
            .map(|d| i64::try_from(d.as_secs()).unwrap_or(i64::MAX)),
        open_only: args.open,
    };
    let rows = rows(&protections, filter, now);
    match args.output {
        Output::Json => Ok(serde_json::to_string_pretty(&rows)? + "\n"),
        Output::Yaml => Ok(serde_yaml_ng::to_string(&rows)?),
        Output::Table => {
            if rows.is_empty() {
                let scope = match &args.name {
                    Some(name) => format!(
                        "ApiProtection \"{name}\" in namespace \"{}\"",
                        session.namespace
                    ),
                    None if args.all_namespaces => "any namespace".to_owned(),
                    None => format!("namespace \"{}\"", session.namespace),
                };
                eprintln!("No incidents found for {scope}.");
                return Ok(String::new());
            }
            Ok(render(&rows, args.name.is_none(), args.all_namespaces, now))
        }
    }
}

pub fn render(rows: &[Row], with_protection: bool, with_namespace: bool, now: Timestamp) -> String {
    let mut header = vec![];
    if with_namespace {
        header.push("NAMESPACE");
    }
    if with_protection {
        header.push("PROTECTION");
    }
    header.extend([
        "ID",
        "SEVERITY",
        "STATE",
        "SESSION",
        "CLIENT",
        "KINDS",
        "REQUESTS",
        "BLOCKED",
        "LAST SEEN",
        "SUMMARY",
    ]);
    let cells: Vec<Vec<String>> = rows
        .iter()
        .map(|row| {
            let i = &row.incident;
            let mut cells = vec![];
            if with_namespace {
                cells.push(row.namespace.clone());
            }
            if with_protection {
                cells.push(row.protection.clone());
            }
            cells.extend([
                i.id.clone(),
                severity_name(i.severity).to_owned(),
                if i.open { "open" } else { "closed" }.to_owned(),
                i.session.clone(),
                i.client.clone(),
                i.kinds.join(","),
                i.requests.to_string(),
                i.blocked.to_string(),
                last_seen_age(i, now),
                i.summary.replace('\n', " "),
            ]);
            cells
        })
        .collect();
    table(&header, &cells)
}

//! What the monitoring tests share: where the Go-built tools are, which metrics the chart's
//! alert rules (charts/ordo/monitoring/alerts.yaml) and Grafana dashboard
//! (charts/ordo/monitoring/dashboard.json) query, and which metrics a `/metrics` page has.
//! The metric check runs twice: against the registries in `tests/tests/monitoring.rs`, and
//! against the live operator and enforcer in `tests/tests/e2e_propagation.rs`.

use std::collections::BTreeSet;
use std::path::PathBuf;

use anyhow::{Context as _, bail};

use crate::cluster::binaries::go_tool;
use crate::cluster::workspace_root;

/// promtool, built by tests/cluster/build-promtool.sh.
pub fn promtool() -> anyhow::Result<PathBuf> {
    go_tool(
        "promtool",
        "github.com/prometheus/prometheus",
        "ORDO_PROMTOOL",
    )
}

/// The chart's alert rules file.
pub fn alerts_path() -> PathBuf {
    workspace_root().join("charts/ordo/monitoring/alerts.yaml")
}

/// The chart's Grafana dashboard.
pub fn dashboard_path() -> PathBuf {
    workspace_root().join("charts/ordo/monitoring/dashboard.json")
}

/// One alert rule: its name and expression.
#[derive(Debug, Clone)]
pub struct AlertRule {
    pub name: String,
    pub expr: String,
}

/// Every alert of the chart's rules file.
pub fn alert_rules() -> anyhow::Result<Vec<AlertRule>> {
    let text = std::fs::read_to_string(alerts_path())?;
    let doc: serde_json::Value = serde_yaml_ng::from_str(&text).context("parsing alerts.yaml")?;
    let mut rules = Vec::new();
    for group in doc["groups"]
        .as_array()
        .context("alerts.yaml has no groups")?
    {
        for rule in group["rules"].as_array().context("a group without rules")? {
            let name = rule["alert"].as_str().context("a rule without `alert`")?;
            let expr = rule["expr"].as_str().context("a rule without `expr`")?;
            rules.push(AlertRule {
                name: name.to_owned(),
                expr: expr.to_owned(),
            });
        }
    }
    Ok(rules)
}

/// Every query of the dashboard's panels, with Grafana's variables replaced by values
/// Prometheus accepts, so that the result is plain PromQL.
pub fn dashboard_queries() -> anyhow::Result<Vec<(String, String)>> {
    let text = std::fs::read_to_string(dashboard_path())?;
    let dashboard: serde_json::Value =
        serde_json::from_str(&text).context("dashboard.json is not JSON")?;
    let mut queries = Vec::new();
    for panel in dashboard["panels"]
        .as_array()
        .context("the dashboard has no panels")?
    {
        if panel["type"] == "row" {
            continue;
        }
        let title = panel["title"].as_str().unwrap_or("(untitled)").to_owned();
        let targets = panel["targets"]
            .as_array()
            .map(Vec::as_slice)
            .unwrap_or(&[]);
        if targets.is_empty() {
            bail!("panel {title:?} has no query");
        }
        for target in targets {
            let expr = target["expr"]
                .as_str()
                .with_context(|| format!("a query of panel {title:?} has no expr"))?;
            let plain = expr
                .replace("$__rate_interval", "5m")
                .replace("$__range", "1h")
                .replace("$namespace", ".*");
            queries.push((title.clone(), plain));
        }
    }
    Ok(queries)
}

/// The `ordo_…` metric names an expression reads (histogram series keep their `_bucket`,
/// `_sum` or `_count` suffix, as on a `/metrics` page).
pub fn metric_names(expr: &str) -> BTreeSet<String> {
    let mut names = BTreeSet::new();
    let mut rest = expr;
    while let Some(start) = rest.find("ordo_") {
        let preceded_by_word = rest[..start]
            .chars()
            .next_back()
            .is_some_and(|c| c.is_ascii_alphanumeric() || c == '_');
        let tail = &rest[start..];
        let end = tail
            .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_' || c == ':'))
            .unwrap_or(tail.len());
        if !preceded_by_word {
            names.insert(tail[..end].to_owned());
        }
        rest = &tail[end..];
    }
    names
}

/// Every metric name the alert rules and the dashboard read.
pub fn queried_metric_names() -> anyhow::Result<BTreeSet<String>> {
    let mut names = BTreeSet::new();
    for rule in alert_rules()? {
        names.extend(metric_names(&rule.expr));
    }
    for (_, query) in dashboard_queries()? {
        names.extend(metric_names(&query));
    }
    Ok(names)
}

/// The sample names of a Prometheus text exposition.
pub fn sample_names(exposition: &str) -> BTreeSet<String> {
    exposition
        .lines()
        .filter(|line| !line.starts_with('#') && !line.trim().is_empty())
        .filter_map(|line| line.split(['{', ' ']).next())
        .map(str::to_owned)
        .collect()
}

/// The queried metric names that none of the expositions has.
pub fn missing_metrics(expositions: &[&str]) -> anyhow::Result<Vec<String>> {
    let present: BTreeSet<String> = expositions.iter().flat_map(|e| sample_names(e)).collect();
    Ok(queried_metric_names()?
        .into_iter()
        .filter(|name| !present.contains(name))
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn metric_names_are_read_from_promql() {
        let names = metric_names(
            r#"histogram_quantile(0.99, sum by (le) (rate(ordo_added_latency_seconds_bucket{namespace=~".*"}[5m]))) / xordo_not"#,
        );
        assert_eq!(
            names,
            BTreeSet::from(["ordo_added_latency_seconds_bucket".to_owned()])
        );
    }

    #[test]
    fn sample_names_skip_comments_and_labels() {
        let text = "# HELP ordo_a x\n# TYPE ordo_a counter\nordo_a{k=\"v\"} 1\nordo_b 2\n";
        assert_eq!(
            sample_names(text),
            BTreeSet::from(["ordo_a".to_owned(), "ordo_b".to_owned()])
        );
    }
}

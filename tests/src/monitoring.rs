//! What the monitoring tests share: where the Go-built tools are, which metrics the chart's
//! alert rules (charts/ordo/monitoring/alerts.yaml) and Grafana dashboard
//! (charts/ordo/monitoring/dashboard.json) query, which of them come from the kube-apiserver,
//! and which metrics a `/metrics` page has.
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

/// Metrics the alert rules read that Ordo does not export: the kube-apiserver's own counters
/// of calls to Ordo's admission webhooks (OrdoWebhookUnreachable in alerts.yaml), which see
/// the calls that never reach the operator. Their names and labels are those of Kubernetes
/// 1.36 (the control plane tests/cluster builds). Every other metric must be on an Ordo
/// `/metrics` page.
pub const KUBE_APISERVER_METRICS: &[&str] = &[
    "apiserver_admission_webhook_rejection_count",
    "apiserver_admission_webhook_fail_open_count",
];

/// PromQL words that are not metric names where a metric name could stand: the aggregation
/// operators (`sum by (…) (…)` puts a clause between them and their parenthesis), binary
/// operators, modifiers and the special float values.
const PROMQL_KEYWORDS: &[&str] = &[
    "sum",
    "min",
    "max",
    "avg",
    "group",
    "stddev",
    "stdvar",
    "count",
    "count_values",
    "bottomk",
    "topk",
    "quantile",
    "limitk",
    "limit_ratio",
    "and",
    "or",
    "unless",
    "by",
    "without",
    "on",
    "ignoring",
    "group_left",
    "group_right",
    "bool",
    "offset",
    "inf",
    "nan",
];

/// The modifiers followed by a parenthesized list of label names.
const LABEL_LIST_KEYWORDS: &[&str] = &[
    "by",
    "without",
    "on",
    "ignoring",
    "group_left",
    "group_right",
];

/// The metric names an expression reads, whoever exports them (histogram series keep their
/// `_bucket`, `_sum` or `_count` suffix, as on a `/metrics` page): every identifier that is
/// not a function or aggregation (followed by `(`), a keyword, a label name (in `{…}` or in
/// the list of `by`, `on`, …), inside a string, a duration or a number.
pub fn metric_names(expr: &str) -> BTreeSet<String> {
    let bytes = expr.as_bytes();
    let mut names = BTreeSet::new();
    let mut i = 0;
    // Skips from an opening delimiter at `i` to just after its match, over strings.
    let skip_group = |mut i: usize, open: u8, close: u8| -> usize {
        let mut depth = 0usize;
        while i < bytes.len() {
            match bytes[i] {
                b'"' | b'\'' | b'`' => i = skip_string(bytes, i) - 1,
                c if c == open => depth += 1,
                c if c == close => {
                    depth -= 1;
                    if depth == 0 {
                        return i + 1;
                    }
                }
                _ => {}
            }
            i += 1;
        }
        i
    };
    while i < bytes.len() {
        let c = bytes[i];
        if c == b'"' || c == b'\'' || c == b'`' {
            i = skip_string(bytes, i);
        } else if c == b'{' {
            i = skip_group(i, b'{', b'}');
        } else if c == b'[' {
            i = skip_group(i, b'[', b']');
        } else if c.is_ascii_digit()
            || (c == b'.' && bytes.get(i + 1).is_some_and(u8::is_ascii_digit))
        {
            // A number or a duration (`1h`, `1e3`, `0x1f`): digits and the letters in it.
            while i < bytes.len() && (bytes[i].is_ascii_alphanumeric() || bytes[i] == b'.') {
                i += 1;
            }
        } else if c.is_ascii_alphabetic() || c == b'_' || c == b':' {
            let start = i;
            while i < bytes.len()
                && (bytes[i].is_ascii_alphanumeric() || bytes[i] == b'_' || bytes[i] == b':')
            {
                i += 1;
            }
            let word = &expr[start..i];
            let mut next = i;
            while next < bytes.len() && bytes[next].is_ascii_whitespace() {
                next += 1;
            }
            let called = bytes.get(next) == Some(&b'(');
            let lower = word.to_ascii_lowercase();
            if LABEL_LIST_KEYWORDS.contains(&lower.as_str()) {
                if called {
                    i = skip_group(next, b'(', b')');
                }
            } else if !called && !PROMQL_KEYWORDS.contains(&lower.as_str()) {
                names.insert(word.to_owned());
            }
        } else {
            i += 1;
        }
    }
    names
}

/// The index just after the string literal starting at `start` (its quote).
fn skip_string(bytes: &[u8], start: usize) -> usize {
    let quote = bytes[start];
    let mut i = start + 1;
    while i < bytes.len() {
        if bytes[i] == b'\\' && quote != b'`' {
            i += 2;
            continue;
        }
        if bytes[i] == quote {
            return i + 1;
        }
        i += 1;
    }
    i
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

/// The queried metric names that none of the expositions has and that are not one of the
/// [`KUBE_APISERVER_METRICS`].
pub fn missing_metrics(expositions: &[&str]) -> anyhow::Result<Vec<String>> {
    let present: BTreeSet<String> = expositions.iter().flat_map(|e| sample_names(e)).collect();
    Ok(queried_metric_names()?
        .into_iter()
        .filter(|name| !present.contains(name) && !KUBE_APISERVER_METRICS.contains(&name.as_str()))
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
            BTreeSet::from([
                "ordo_added_latency_seconds_bucket".to_owned(),
                "xordo_not".to_owned()
            ])
        );
        // Every metric, Ordo's or not; no label, keyword, function, string or duration.
        let names = metric_names(
            r#"(sum by (namespace, kind) (rate(ordo_blocked_total[5m])) > bool 1)
                 unless on (namespace) group_left (pod) (up{job="a b", le="+Inf"} offset 1h)
               or absent(apiserver_admission_webhook_fail_open_count{name=~"x\\.y"})
               and time() - ordo_report_last_success_timestamp_seconds > 14 * 86400 + 1e3
               or label_replace(kube_pod_info, "dst", "$1 by (x)", "src", "(.*)") > Inf
               or max without (pod) (ordo_connections)"#,
        );
        assert_eq!(
            names,
            BTreeSet::from([
                "ordo_blocked_total".to_owned(),
                "up".to_owned(),
                "apiserver_admission_webhook_fail_open_count".to_owned(),
                "ordo_report_last_success_timestamp_seconds".to_owned(),
                "kube_pod_info".to_owned(),
                "ordo_connections".to_owned(),
            ])
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

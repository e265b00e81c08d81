//! `kubectl ordo report`: one self-contained HTML page for an incident review or a change
//! ticket: the status summary, the incidents, the endpoints with their volume percentiles,
//! the flow graph (inline SVG) and the suggested rules. No scripts and no external resources,
//! so it opens from a file or an attachment without network access.

use std::fmt::Write as _;

use k8s_openapi::jiff::Timestamp;
use kube::ResourceExt as _;
use ordo_operator::crd::{ApiProtection, Confidence, SequenceRule};

use crate::cli::ReportArgs;
use crate::cluster::Session;
use crate::graph;
use crate::incidents::{self, Filter};
use crate::status::{self, by_severity, severity_name};
use crate::suggest;
use crate::text::{age, escape, thousands, time};

pub async fn run(session: &Session, args: &ReportArgs, now: Timestamp) -> anyhow::Result<String> {
    let protection = session.protection(&args.name).await?;
    let (rules, unreadable) = match session.rules_for(&protection).await {
        Ok(rules) => (rules, None),
        Err(error) => {
            eprintln!("warning: declared SequenceRules left out: {error:#}");
            (Vec::new(), Some(format!("{error:#}")))
        }
    };
    Ok(render(&protection, &rules, unreadable, now))
}

const STYLE: &str = r#"
body { font-family: "DejaVu Sans", Helvetica, Arial, sans-serif; margin: 24px auto; max-width: 1200px; color: #0f172a; padding: 0 16px; }
h1 { font-size: 22px; margin-bottom: 4px; }
h2 { font-size: 18px; margin-top: 32px; border-bottom: 1px solid #cbd5e1; padding-bottom: 4px; }
.meta { color: #475569; font-size: 13px; }
table { border-collapse: collapse; width: 100%; font-size: 13px; }
th, td { text-align: left; padding: 5px 8px; border-bottom: 1px solid #e2e8f0; vertical-align: top; }
th { background: #f1f5f9; }
td.num, th.num { text-align: right; font-variant-numeric: tabular-nums; }
dl.summary { display: grid; grid-template-columns: 160px 1fr; gap: 4px 12px; font-size: 14px; }
dl.summary dt { font-weight: bold; }
dl.summary dd { margin: 0; }
.sev { display: inline-block; padding: 1px 8px; border-radius: 10px; font-size: 12px; font-weight: bold; }
.sev-Critical { background: #7f1d1d; color: #ffffff; }
.sev-High { background: #dc2626; color: #ffffff; }
.sev-Medium { background: #f59e0b; color: #1f2937; }
.sev-Low { background: #e2e8f0; color: #1f2937; }
.summary-text { color: #1e293b; padding-bottom: 10px; }
tr.incident td { border-bottom: none; }
.bar { background: #93c5fd; height: 10px; display: inline-block; vertical-align: middle; }
.graph { overflow-x: auto; border: 1px solid #e2e8f0; padding: 8px; }
pre { background: #f8fafc; border: 1px solid #e2e8f0; padding: 10px; overflow-x: auto; font-size: 12px; }
.note { color: #475569; font-size: 12px; }
code { font-family: "DejaVu Sans Mono", Menlo, Consolas, monospace; }
"#;

pub fn render(
    protection: &ApiProtection,
    rules: &[SequenceRule],
    unreadable: Option<String>,
    now: Timestamp,
) -> String {
    let summary = status::summarize(protection, rules, unreadable, now);
    let status = protection.status.clone().unwrap_or_default();
    let title = format!("Ordo report: {}/{}", summary.namespace, summary.name);
    let mut out = String::new();
    let _ = write!(
        out,
        "<!DOCTYPE html>\n<html lang=\"en\">\n<head>\n<meta charset=\"utf-8\">\n<title>{}</title>\n<style>{STYLE}</style>\n</head>\n<body>\n",
        escape(&title)
    );
    let _ = writeln!(out, "<h1>{}</h1>", escape(&title));
    let _ = writeln!(
        out,
        "<p class=\"meta\">ApiProtection <code>{}</code> in namespace <code>{}</code>, generated {} by <code>kubectl ordo report</code> from the resource's status.</p>",
        escape(&summary.name),
        escape(&summary.namespace),
        escape(&time(now))
    );

    // Status.
    out.push_str("<h2 id=\"status\">Status</h2>\n<dl class=\"summary\">\n");
    let mut item = |label: &str, value: String| {
        let _ = writeln!(out, "<dt>{}</dt><dd>{}</dd>", escape(label), escape(&value));
    };
    item("Target", summary.target.clone());
    item("Mode", summary.mode.clone());
    item(
        "Phase",
        match &summary.ready {
            Some(c) if c.status == "True" => format!("{} (Ready)", summary.phase),
            Some(c) => format!("{} (not ready: {} {})", summary.phase, c.reason, c.message),
            None => summary.phase.clone(),
        },
    );
    item(
        "Model",
        format!(
            "{}: {} requests, {} sessions, {} operations{}",
            if summary.model.mature {
                "mature"
            } else {
                "learning"
            },
            thousands(summary.model.requests),
            thousands(summary.model.sessions),
            summary.model.operations,
            if summary.model.mature {
                String::new()
            } else {
                format!(" ({})", summary.model.maturity)
            }
        ),
    );
    item("Posture", status::posture_headline(&summary.posture));
    item(
        "Enforcers",
        format!(
            "{}/{} ready, {} reporting",
            summary.enforcers.ready, summary.enforcers.desired, summary.enforcers.reporting
        ),
    );
    item(
        "Incidents",
        format!(
            "{} open ({}), {} since creation",
            summary.incidents.open,
            by_severity(&summary.incidents.open_by_severity),
            summary.incidents.total
        ),
    );
    item(
        "Blocked",
        format!(
            "~{} in the last hour (from the listed incidents); {} of {} requests since creation, {} flagged",
            thousands(summary.blocked.last_hour),
            thousands(summary.blocked.total),
            thousands(summary.blocked.requests),
            thousands(summary.blocked.flagged)
        ),
    );
    item(
        "Rules",
        match &summary.rules.unreadable {
            Some(error) => format!("declared rules not readable: {error}"),
            None => format!(
                "{} declared ({} accepted), {} suggested",
                summary.rules.declared, summary.rules.accepted, summary.rules.suggested
            ),
        },
    );
    out.push_str("</dl>\n");
    if !summary.conditions.is_empty() {
        out.push_str("<table class=\"conditions\"><tr><th>Condition</th><th>Status</th><th>Reason</th><th>Message</th></tr>\n");
        for c in &summary.conditions {
            let _ = writeln!(
                out,
                "<tr><td>{}</td><td>{}</td><td>{}</td><td>{}</td></tr>",
                escape(&c.type_),
                escape(&c.status),
                escape(&c.reason),
                escape(&c.message)
            );
        }
        out.push_str("</table>\n");
    }

    // Incidents.
    let rows = incidents::rows(std::slice::from_ref(protection), Filter::default(), now);
    let _ = writeln!(out, "<h2 id=\"incidents\">Incidents ({})</h2>", rows.len());
    if rows.is_empty() {
        out.push_str("<p>No incidents.</p>\n");
    } else {
        out.push_str("<table class=\"incidents\"><tr><th>Severity</th><th>Incident</th><th>State</th><th>Session / client</th><th>Kinds</th><th class=\"num\">Requests</th><th class=\"num\">Flagged</th><th class=\"num\">Blocked</th><th>First / last seen</th></tr>\n");
        for row in &rows {
            let i = &row.incident;
            let severity = severity_name(i.severity);
            let _ = writeln!(
                out,
                "<tr class=\"incident\" data-id=\"{}\"><td><span class=\"sev sev-{severity}\">{severity}</span></td><td><code>{}</code></td><td>{}</td><td><code>{}</code><br><code>{}</code></td><td>{}</td><td class=\"num\">{}</td><td class=\"num\">{}</td><td class=\"num\">{}</td><td>{}<br>{} ({} ago)</td></tr>\n<tr class=\"incident-summary\"><td></td><td colspan=\"8\" class=\"summary-text\">{}<br><span class=\"note\">operations: {}</span></td></tr>",
                escape(&i.id),
                escape(&i.id),
                if i.open { "open" } else { "closed" },
                escape(&i.session),
                escape(&i.client),
                escape(&i.kinds.join(", ")),
                thousands(i.requests),
                thousands(i.flagged),
                thousands(i.blocked),
                escape(&time(i.first_seen.0)),
                escape(&time(i.last_seen.0)),
                age(Some(i.last_seen.0), now),
                escape(&i.summary),
                escape(&i.operations.join(", "))
            );
        }
        out.push_str("</table>\n");
    }
    if summary.incidents.total > rows.len() as i64 {
        let _ = writeln!(
            out,
            "<p class=\"note\">The status lists the {} most recent and most severe of {} incidents; the enforcers' admin API and logs have the others.</p>",
            rows.len(),
            summary.incidents.total
        );
    }

    // Endpoints.
    let _ = writeln!(
        out,
        "<h2 id=\"endpoints\">Endpoints ({})</h2>",
        status.endpoints.len()
    );
    if status.endpoints.is_empty() {
        out.push_str("<p>No endpoints learned yet.</p>\n");
    } else {
        let widest = status
            .endpoints
            .iter()
            .map(|e| e.p99)
            .max()
            .unwrap_or(1)
            .max(1);
        out.push_str("<p class=\"note\">Requests per session in a 10-minute window: median, 90th and 99th percentiles across sessions; the bar shows the 99th percentile.</p>\n");
        out.push_str("<table class=\"endpoints\"><tr><th>Operation</th><th class=\"num\">Requests</th><th class=\"num\">p50</th><th class=\"num\">p90</th><th class=\"num\">p99</th><th></th><th class=\"num\">Suggested limit</th><th>Confidence</th></tr>\n");
        for e in &status.endpoints {
            let bar = (e.p99.max(0) as f64 / widest as f64 * 120.0).round();
            let _ = writeln!(
                out,
                "<tr class=\"endpoint\"><td><code>{}</code></td><td class=\"num\">{}</td><td class=\"num\">{}</td><td class=\"num\">{}</td><td class=\"num\">{}</td><td><span class=\"bar\" style=\"width:{bar}px\"></span></td><td class=\"num\">{}</td><td>{}</td></tr>",
                escape(&e.operation),
                thousands(e.requests),
                e.p50,
                e.p90,
                e.p99,
                e.suggested_limit
                    .map(thousands)
                    .unwrap_or_else(|| "–".to_owned()),
                match e.confidence {
                    Confidence::Low => "Low",
                    Confidence::Medium => "Medium",
                    Confidence::High => "High",
                }
            );
        }
        out.push_str("</table>\n");
    }

    // Authentication and data posture.
    let _ = writeln!(
        out,
        "<h2 id=\"posture\">Authentication and data posture ({})</h2>",
        summary.posture.len()
    );
    let _ = writeln!(
        out,
        "<p class=\"note\">{}. Learned from the 2xx answers: an answer to a request without a token, session cookie or session header counts as without credentials; sensitive values are classes found in answers (no value is kept).</p>",
        escape(&status::posture_headline(&summary.posture))
    );
    if !summary.posture.is_empty() {
        out.push_str("<table class=\"posture\"><tr><th>Operation</th><th class=\"num\">Answers</th><th class=\"num\">Without credentials</th><th>Sensitive values</th></tr>\n");
        for p in &summary.posture {
            let _ = writeln!(
                out,
                "<tr class=\"posture-row\"><td><code>{}</code></td><td class=\"num\">{}</td><td class=\"num\">{}</td><td>{}</td></tr>",
                escape(&p.operation),
                thousands(p.answers),
                thousands(p.unauthenticated_answers),
                escape(&p.classes())
            );
        }
        out.push_str("</table>\n");
    }

    // Flow graph.
    let flow = graph::build(protection, rules, 0.9);
    out.push_str("<h2 id=\"flow\">Learned flow</h2>\n");
    out.push_str("<p class=\"note\">Operations and the transitions between them in the most important learned sequences (edge width: times taken; label: count · precedence score; orange: precedence ≥ 0.9), with the declared SequenceRules drawn dashed.</p>\n");
    out.push_str("<div class=\"graph\">\n");
    out.push_str(&graph::svg(&flow));
    out.push_str("</div>\n");

    // Declared rules.
    let _ = writeln!(
        out,
        "<h2 id=\"rules\">Declared SequenceRules ({})</h2>",
        rules.len()
    );
    if rules.is_empty() {
        out.push_str("<p>None.</p>\n");
    } else {
        out.push_str("<table class=\"rules\"><tr><th>Name</th><th>Kind</th><th>Action</th><th>Accepted</th><th class=\"num\">Matches</th><th class=\"num\">Blocked</th><th>Description</th></tr>\n");
        for rule in rules {
            let s = rule.status.clone().unwrap_or_default();
            let accepted = s
                .conditions
                .iter()
                .find(|c| c.type_ == "Accepted")
                .map(|c| format!("{} {}", c.status, c.reason))
                .unwrap_or_else(|| "–".to_owned());
            let _ = writeln!(
                out,
                "<tr><td><code>{}</code></td><td>{}</td><td>{:?}{}</td><td>{}</td><td class=\"num\">{}</td><td class=\"num\">{}</td><td>{}</td></tr>",
                escape(&rule.name_any()),
                rule.spec
                    .kind()
                    .map(|k| format!("{k:?}"))
                    .unwrap_or_default(),
                rule.spec.action,
                if rule.spec.dry_run { " (dry run)" } else { "" },
                escape(&accepted),
                thousands(s.matches),
                thousands(s.blocked),
                escape(rule.spec.description.as_deref().unwrap_or(""))
            );
        }
        out.push_str("</table>\n");
    }

    // Suggested rules.
    let (suggestions, _) = suggest::suggestions(protection, rules);
    let _ = writeln!(
        out,
        "<h2 id=\"suggested\">Suggested rules ({})</h2>",
        suggestions.len()
    );
    if suggestions.is_empty() {
        out.push_str("<p>None.</p>\n");
    } else {
        let _ = writeln!(
            out,
            "<p class=\"note\">Ready to commit, or to check with <code>kubectl ordo suggest {} --apply-dry-run</code>.</p>",
            escape(&summary.name)
        );
        for s in &suggestions {
            let yaml = suggest::to_yaml(std::slice::from_ref(s)).unwrap_or_default();
            let _ = writeln!(
                out,
                "<h3><code>{}</code></h3>\n<p>{}</p>\n<pre class=\"suggested-rule\">{}</pre>",
                escape(&s.name),
                escape(&s.reason),
                escape(&yaml)
            );
        }
    }
    out.push_str("<p class=\"note\">Approximations: open incidents by severity and the blocked requests of the last hour are computed from the incidents the status lists (at most 20); the totals are exact.</p>\n");
    out.push_str("</body>\n</html>\n");
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use ordo_operator::crd::ApiProtectionSpec;

    #[test]
    fn the_report_lists_the_posture() {
        let spec: ApiProtectionSpec = serde_json::from_value(serde_json::json!({
            "target": { "service": "shop", "port": 80 }
        }))
        .unwrap_or_else(|e| panic!("{e}"));
        let mut p = ApiProtection::new("shop", spec);
        p.metadata.namespace = Some("team".into());
        p.status = serde_json::from_value(serde_json::json!({
            "posture": [
                { "operation": "GET /users/<debug>", "answers": 1200, "unauthenticatedAnswers": 1200,
                  "sensitiveClasses": ["password"] },
                { "operation": "GET /profile", "answers": 900, "unauthenticatedAnswers": 0,
                  "sensitiveClasses": ["email"] },
            ],
        }))
        .unwrap_or_else(|e| panic!("{e}"));
        let now = Timestamp::from_second(2_000_000_000).unwrap_or_else(|e| panic!("{e}"));
        let html = render(&p, &[], None, now);
        assert!(
            html.contains("<h2 id=\"posture\">Authentication and data posture (2)</h2>"),
            "{html}"
        );
        assert!(html.contains("<tr class=\"posture-row\"><td><code>GET /users/&lt;debug&gt;</code></td><td class=\"num\">1,200</td><td class=\"num\">1,200</td><td>password</td></tr>"), "{html}");
        assert!(
            html.contains("<td class=\"num\">0</td><td>email</td>"),
            "{html}"
        );
        assert!(html.contains(
            "<dt>Posture</dt><dd>1 operation answers without credentials, 2 return sensitive values (1 both)</dd>"
        ), "{html}");
    }
}

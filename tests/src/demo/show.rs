//! What a user of Ordo sees, printed the way they would see it: `kubectl` output for the
//! resources and Events, and the interesting parts of the ApiProtection's status (incidents
//! with their summaries, top sequences, suggested rules, learned endpoints).

use std::process::Command;

use anyhow::Context;
use ordo_operator::crd::{ApiProtectionStatus, IncidentStatus};

/// Prints a section title.
pub fn heading(title: &str) {
    println!();
    println!(
        "━━ {title} {}",
        "━".repeat(72usize.saturating_sub(title.chars().count() + 4))
    );
}

/// Runs `kubectl` with `args`, echoing the command line first, prints its output and
/// returns its stdout.
pub fn kubectl(mut command: Command, args: &[&str]) -> anyhow::Result<String> {
    println!("$ kubectl {}", args.join(" "));
    let output = command.args(args).output().context("running kubectl")?;
    let stdout = String::from_utf8_lossy(&output.stdout).into_owned();
    print!("{stdout}");
    if !output.status.success() {
        print!("{}", String::from_utf8_lossy(&output.stderr));
    }
    Ok(stdout)
}

fn time(t: &k8s_openapi::apimachinery::pkg::apis::meta::v1::Time) -> String {
    t.0.strftime("%H:%M:%S").to_string()
}

/// Incidents, most recent first, with their plain-language summaries.
pub fn incidents(incidents: &[IncidentStatus], limit: usize) {
    if incidents.is_empty() {
        println!("(no incident in status yet)");
        return;
    }
    for incident in incidents.iter().take(limit) {
        println!(
            "{} [{:?}] {}  {}..{}  requests {}  flagged {}  blocked {}  {}",
            incident.id,
            incident.severity,
            incident.kinds.join(","),
            time(&incident.first_seen),
            time(&incident.last_seen),
            incident.requests,
            incident.flagged,
            incident.blocked,
            if incident.open { "open" } else { "closed" }
        );
        println!("    {}", incident.summary);
    }
    if incidents.len() > limit {
        println!(
            "… and {} more (kubectl get apip -o yaml)",
            incidents.len() - limit
        );
    }
}

/// Learned endpoints, top sequences and suggested rules.
pub fn learned(status: &ApiProtectionStatus) {
    if let Some(model) = &status.model {
        println!(
            "model: {} requests from {} sessions, {} endpoints, mature: {}",
            model.requests, model.sessions, model.endpoints, model.mature
        );
    }
    if !status.endpoints.is_empty() {
        println!();
        println!(
            "{:<58} {:>8} {:>5} {:>5} {:>5} {:>9}  confidence",
            "endpoint (per session per 10 min)", "requests", "p50", "p90", "p99", "suggested"
        );
        for e in status.endpoints.iter().take(10) {
            println!(
                "{:<58} {:>8} {:>5} {:>5} {:>5} {:>9}  {:?}",
                e.operation,
                e.requests,
                e.p50,
                e.p90,
                e.p99,
                e.suggested_limit
                    .map_or_else(|| "-".to_owned(), |l| l.to_string()),
                e.confidence
            );
        }
    }
    if !status.top_sequences.is_empty() {
        println!();
        println!("top sequences (precedence = how often the last step comes after the others):");
        for s in status.top_sequences.iter().take(8) {
            println!(
                "  {:.2}  {:>6}×  {}",
                s.precedence,
                s.count,
                s.operations.join("  →  ")
            );
        }
    }
    if !status.suggested_rules.is_empty() {
        println!();
        println!("suggested rules:");
        for r in status.suggested_rules.iter().take(5) {
            println!("  {} — {}", r.name, r.reason);
        }
        if let Some(first) = status.suggested_rules.first() {
            println!();
            println!("  the first one, ready to review and commit:");
            for line in first.yaml.lines() {
                println!("    {line}");
            }
        }
    }
}

//! The command line: kubectl's connection flags and one subcommand per view.

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand, ValueEnum};

/// Ordo's view of an API: status, incidents, suggested rules, the learned flow and a report.
#[derive(Parser, Debug)]
#[command(
    name = "kubectl-ordo",
    bin_name = "kubectl ordo",
    version,
    about = "Show what Ordo learned and saw for an ApiProtection",
    long_about = "Show what Ordo learned and saw for an ApiProtection: a status summary, the incidents, \
                  the suggested SequenceRules, the learned flow as a graph, and a self-contained HTML report. \
                  Reads the resources through the API server with your kubeconfig and RBAC (get and list on \
                  apiprotections.ordo.dev and sequencerules.ordo.dev; create for `suggest --apply-dry-run`)."
)]
pub struct Cli {
    #[command(flatten)]
    pub global: Global,
    #[command(subcommand)]
    pub command: Command,
}

/// Connection flags, named as kubectl names them.
#[derive(Args, Debug, Clone, Default)]
pub struct Global {
    /// Path to the kubeconfig file (default: $KUBECONFIG, then ~/.kube/config, then the
    /// in-cluster service account).
    #[arg(long, global = true, value_name = "PATH")]
    pub kubeconfig: Option<PathBuf>,
    /// The kubeconfig context to use.
    #[arg(long, global = true, value_name = "NAME")]
    pub context: Option<String>,
    /// The kubeconfig cluster to use.
    #[arg(long, global = true, value_name = "NAME")]
    pub cluster: Option<String>,
    /// The kubeconfig user to use.
    #[arg(long, global = true, value_name = "NAME")]
    pub user: Option<String>,
    /// Namespace (default: the context's namespace, else `default`).
    #[arg(short = 'n', long, global = true, value_name = "NAMESPACE")]
    pub namespace: Option<String>,
}

#[derive(Subcommand, Debug)]
pub enum Command {
    /// One-screen summary of an ApiProtection, or a table of all of them in the namespace.
    Status(StatusArgs),
    /// Incidents with their plain-language summaries, most severe and most recent first.
    Incidents(IncidentsArgs),
    /// The suggested SequenceRules as ready-to-commit YAML, one document per rule.
    Suggest(SuggestArgs),
    /// The learned flow of the API as a graph: operations, transitions, declared rules.
    Graph(GraphArgs),
    /// One self-contained HTML page: status, incidents, endpoints, flow graph, suggested rules.
    Report(ReportArgs),
}

#[derive(Args, Debug)]
pub struct StatusArgs {
    /// The ApiProtection; without it, every ApiProtection of the namespace.
    pub name: Option<String>,
    /// List the ApiProtections of every namespace.
    #[arg(short = 'A', long, conflicts_with = "name")]
    pub all_namespaces: bool,
    /// Output format.
    #[arg(short = 'o', long, value_enum, default_value_t = Output::Table)]
    pub output: Output,
}

#[derive(Args, Debug)]
pub struct IncidentsArgs {
    /// The ApiProtection; without it, every ApiProtection of the namespace.
    pub name: Option<String>,
    /// Incidents of every namespace.
    #[arg(short = 'A', long, conflicts_with = "name")]
    pub all_namespaces: bool,
    /// Only incidents of this severity or a higher one.
    #[arg(long, value_enum, value_name = "SEVERITY")]
    pub severity: Option<SeverityArg>,
    /// Only incidents whose last request is at most this old, for example `30m`, `2h`, `1d`.
    #[arg(long, value_name = "DURATION", value_parser = parse_duration)]
    pub since: Option<std::time::Duration>,
    /// Only incidents whose session is still active.
    #[arg(long)]
    pub open: bool,
    /// Output format.
    #[arg(short = 'o', long, value_enum, default_value_t = Output::Table)]
    pub output: Output,
}

#[derive(Args, Debug)]
pub struct SuggestArgs {
    /// The ApiProtection.
    pub name: String,
    /// Instead of printing the rules, create them with a server-side dry run, so that the
    /// CRD schema and Ordo's validating webhook check them without storing anything.
    #[arg(long)]
    pub apply_dry_run: bool,
    /// Output format of the rules.
    #[arg(short = 'o', long, value_enum, default_value_t = ManifestOutput::Yaml)]
    pub output: ManifestOutput,
}

#[derive(Args, Debug)]
pub struct GraphArgs {
    /// The ApiProtection.
    pub name: String,
    /// Output format: a standalone SVG picture, or Graphviz DOT.
    #[arg(short = 'o', long, value_enum, default_value_t = GraphOutput::Svg)]
    pub output: GraphOutput,
    /// Learned sequences with at least this precedence score are highlighted.
    #[arg(long, default_value_t = 0.9, value_name = "SCORE", value_parser = parse_score)]
    pub highlight: f64,
}

#[derive(Args, Debug)]
pub struct ReportArgs {
    /// The ApiProtection.
    pub name: String,
}

#[derive(ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub enum Output {
    Table,
    Json,
    Yaml,
}

#[derive(ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub enum ManifestOutput {
    Yaml,
    Json,
}

#[derive(ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub enum GraphOutput {
    Svg,
    Dot,
}

#[derive(ValueEnum, Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum SeverityArg {
    Low,
    Medium,
    High,
    Critical,
}

fn parse_duration(text: &str) -> Result<std::time::Duration, String> {
    humantime::parse_duration(text)
        .map_err(|e| format!("{e} (expected a duration such as 30m, 2h or 1d)"))
}

fn parse_score(text: &str) -> Result<f64, String> {
    match text.parse::<f64>() {
        Ok(score) if (0.0..=1.0).contains(&score) => Ok(score),
        _ => Err("expected a number between 0 and 1".to_owned()),
    }
}

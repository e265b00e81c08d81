//! Replay benchmark on ATRDF dataset 1 (labelled request/response pairs; docs/detection.md
//! says where it comes from). The dataset has no multi-request sessions, so only the
//! per-request detectors take part (unknown endpoint and request shape); sequence, volume,
//! enumeration and stuffing are switched off. The model learns from a seeded split of the
//! benign records (every training record counts as a successful exchange: the response, which
//! leaks the label for some classes, is never used), then every held-out benign record and
//! every attack is judged from the request alone.

use std::borrow::Cow;
use std::collections::BTreeMap;
use std::fmt;
use std::io::Read as _;
use std::net::{IpAddr, Ipv4Addr};
use std::path::Path;

use anyhow::Context as _;
use flate2::read::GzDecoder;
use ordo_enforcer::config::{DetectorConfig, DetectorsConfig, LearningConfig, OperationsConfig};
use ordo_enforcer::detect::LearnedAnalyzer;
use ordo_enforcer::detect::session_state::SessionState;
use ordo_enforcer::detect::{Analyzer, RequestContext, ResponseSummary};
use ordo_enforcer::operation::{OperationResolver, parse_query};
use ordo_enforcer::session::SessionSource;
use rand::SeedableRng;
use rand::seq::SliceRandom;
use rand_chacha::ChaCha8Rng;
use serde::Deserialize;

/// One labelled request.
#[derive(Debug, Clone)]
pub struct Record {
    pub label: String,
    pub method: http::Method,
    /// Path and query as sent.
    pub target: String,
    pub headers: http::HeaderMap,
    pub body: Option<serde_json::Value>,
}

#[derive(Deserialize)]
struct RawRecord {
    request: RawRequest,
}

#[derive(Deserialize)]
struct RawRequest {
    method: String,
    url: String,
    #[serde(default)]
    headers: BTreeMap<String, serde_json::Value>,
    #[serde(default)]
    body: String,
    #[serde(rename = "Attack_Tag")]
    attack_tag: Option<String>,
}

/// Label of the benign records.
pub const BENIGN: &str = "Benign";

/// Reads the gzip'd JSON array.
pub fn load(path: &Path) -> anyhow::Result<Vec<Record>> {
    let file = std::fs::File::open(path).with_context(|| format!("opening {}", path.display()))?;
    let mut json = Vec::new();
    GzDecoder::new(file)
        .read_to_end(&mut json)
        .with_context(|| format!("decompressing {}", path.display()))?;
    let raw: Vec<RawRecord> =
        serde_json::from_slice(&json).with_context(|| format!("parsing {}", path.display()))?;
    let mut records = Vec::with_capacity(raw.len());
    for r in raw {
        let q = r.request;
        let method: http::Method = q
            .method
            .parse()
            .with_context(|| format!("method {:?}", q.method))?;
        // Absolute URL → path and query (the host is the dataset's test server).
        let after_scheme = q
            .url
            .split_once("://")
            .map_or(q.url.as_str(), |(_, rest)| rest);
        let target = after_scheme
            .find('/')
            .map_or("/", |i| &after_scheme[i..])
            .to_owned();
        let mut headers = http::HeaderMap::new();
        for (name, value) in &q.headers {
            let text = match value {
                serde_json::Value::String(s) => s.clone(),
                other => other.to_string(),
            };
            if let (Ok(name), Ok(value)) = (
                http::HeaderName::from_bytes(name.as_bytes()),
                http::HeaderValue::from_str(&text),
            ) {
                headers.append(name, value);
            }
        }
        let body = if q.body.is_empty() {
            None
        } else {
            serde_json::from_str(&q.body).ok()
        };
        records.push(Record {
            label: q.attack_tag.unwrap_or_else(|| BENIGN.to_owned()),
            method,
            target,
            headers,
            body,
        });
    }
    Ok(records)
}

/// Precision, recall and F1 of one class against the held-out benign records.
#[derive(Debug, Clone, PartialEq)]
pub struct ClassScore {
    pub class: String,
    pub records: usize,
    pub detected: usize,
    pub precision: f64,
    pub recall: f64,
    pub f1: f64,
}

#[derive(Debug, Clone)]
pub struct ReplayReport {
    pub seed: u64,
    pub train_fraction: f64,
    pub train_benign: usize,
    pub test_benign: usize,
    pub benign_flagged: usize,
    pub classes: Vec<ClassScore>,
    pub overall: ClassScore,
    /// Finding kinds over all flagged records.
    pub finding_kinds: BTreeMap<String, usize>,
}

fn score(class: &str, records: usize, detected: usize, false_positives: usize) -> ClassScore {
    let precision = if detected + false_positives == 0 {
        0.0
    } else {
        detected as f64 / (detected + false_positives) as f64
    };
    let recall = if records == 0 {
        0.0
    } else {
        detected as f64 / records as f64
    };
    let f1 = if precision + recall == 0.0 {
        0.0
    } else {
        2.0 * precision * recall / (precision + recall)
    };
    ClassScore {
        class: class.to_owned(),
        records,
        detected,
        precision,
        recall,
        f1,
    }
}

struct Replayer {
    analyzer: LearnedAnalyzer,
    resolver: OperationResolver,
}

impl Replayer {
    /// Feeds one record; learns from it (as a success) or judges it. Returns the finding kinds.
    fn feed(&self, index: usize, record: &Record, learn: bool) -> Vec<String> {
        let (path, query_text) = record
            .target
            .split_once('?')
            .unwrap_or((record.target.as_str(), ""));
        let mut segments = Vec::new();
        let resolved = self.resolver.resolve(&record.method, path, &mut segments);
        let op = resolved.template.op.clone();
        let path_params = resolved.template.path_params(&segments);
        let query: Vec<(Cow<'_, str>, Cow<'_, str>)> = parse_query(query_text);
        let session = format!("record:{index}");
        let raw = u32::try_from(index).unwrap_or(0);
        let ctx = RequestContext {
            now_ms: 1_669_054_336_000 + u64::from(raw) * 50,
            session: &session,
            session_source: SessionSource::Cookie,
            client: IpAddr::V4(Ipv4Addr::from(0x0A00_0000 | raw)),
            method: &record.method,
            operation: &op,
            path_params: &path_params,
            query: &query,
            headers: &record.headers,
            body: record.body.as_ref(),
            recent: &[],
            scratch: &Default::default(),
        };
        let mut state = SessionState::default();
        let mut findings = Vec::new();
        if learn {
            self.analyzer.observe(
                &ctx,
                &mut state,
                &ResponseSummary {
                    status: 200,
                    duration_us: 0,
                    ..ResponseSummary::default()
                },
                false,
            );
        } else {
            self.analyzer.inspect(&ctx, &mut state, &mut findings);
        }
        findings
            .iter()
            .map(|f| f.kind.as_str().to_owned())
            .collect()
    }
}

/// Learns from `train_fraction` of the benign records (shuffled with `seed`), then judges the
/// rest of them and every attack.
pub fn replay(records: &[Record], seed: u64, train_fraction: f64) -> ReplayReport {
    let mut benign: Vec<usize> = records
        .iter()
        .enumerate()
        .filter(|(_, r)| r.label == BENIGN)
        .map(|(i, _)| i)
        .collect();
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    benign.shuffle(&mut rng);
    let train_count = ((benign.len() as f64) * train_fraction).round() as usize;
    let (train, test_benign) = benign.split_at(train_count.min(benign.len()));
    let off = DetectorConfig {
        enabled: false,
        ..DetectorConfig::default()
    };
    let detectors = DetectorsConfig {
        unlikely_sequence: off.clone(),
        volume: off.clone(),
        enumeration: off.clone(),
        credential_stuffing: off.clone(),
        identity_lineage: off.clone(),
        exposure: off,
        ..DetectorsConfig::default()
    };
    // Every record is its own session: the session gate counts records.
    let learning = LearningConfig {
        min_requests: 500,
        min_sessions: 100,
        ..LearningConfig::default()
    };
    let replayer = Replayer {
        analyzer: LearnedAnalyzer::new(&learning, &detectors, None),
        resolver: OperationResolver::new(&OperationsConfig::default()),
    };
    for &i in train {
        replayer.feed(i, &records[i], true);
    }
    let mut finding_kinds = BTreeMap::new();
    let mut benign_flagged = 0;
    for &i in test_benign {
        let kinds = replayer.feed(i, &records[i], false);
        if !kinds.is_empty() {
            benign_flagged += 1;
        }
        for k in kinds {
            *finding_kinds.entry(k).or_insert(0) += 1;
        }
    }
    let mut per_class: BTreeMap<String, (usize, usize)> = BTreeMap::new();
    for (i, record) in records
        .iter()
        .enumerate()
        .filter(|(_, r)| r.label != BENIGN)
    {
        let kinds = replayer.feed(i, record, false);
        let entry = per_class.entry(record.label.clone()).or_insert((0, 0));
        entry.0 += 1;
        if !kinds.is_empty() {
            entry.1 += 1;
        }
        for k in kinds {
            *finding_kinds.entry(k).or_insert(0) += 1;
        }
    }
    let classes: Vec<ClassScore> = per_class
        .iter()
        .map(|(class, (n, d))| score(class, *n, *d, benign_flagged))
        .collect();
    let total: usize = per_class.values().map(|(n, _)| n).sum();
    let detected: usize = per_class.values().map(|(_, d)| d).sum();
    ReplayReport {
        seed,
        train_fraction,
        train_benign: train.len(),
        test_benign: test_benign.len(),
        benign_flagged,
        classes,
        overall: score("all attacks", total, detected, benign_flagged),
        finding_kinds,
    }
}

impl fmt::Display for ReplayReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(
            f,
            "ATRDF dataset 1, seed {}, learned from {} benign records ({:.0}%), judged {} held-out benign records and every attack; {} benign flagged ({:.1}%)",
            self.seed,
            self.train_benign,
            self.train_fraction * 100.0,
            self.test_benign,
            self.benign_flagged,
            if self.test_benign == 0 {
                0.0
            } else {
                self.benign_flagged as f64 * 100.0 / self.test_benign as f64
            }
        )?;
        writeln!(f)?;
        writeln!(
            f,
            "| attack class | records | detected | precision | recall | F1 |"
        )?;
        writeln!(f, "|---|---:|---:|---:|---:|---:|")?;
        for c in self.classes.iter().chain(std::iter::once(&self.overall)) {
            writeln!(
                f,
                "| {} | {} | {} | {:.3} | {:.3} | {:.3} |",
                c.class, c.records, c.detected, c.precision, c.recall, c.f1
            )?;
        }
        writeln!(f)?;
        let kinds: Vec<String> = self
            .finding_kinds
            .iter()
            .map(|(k, n)| format!("{k}: {n}"))
            .collect();
        writeln!(f, "findings by detector: {}", kinds.join(", "))
    }
}

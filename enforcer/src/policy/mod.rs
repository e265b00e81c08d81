//! The compiled policy: everything the per-request path reads, built once per config load
//! and swapped atomically (`ArcSwap`) so that a request always sees one consistent version.

mod admin_token;
mod ratelimit;
mod rules;

use std::collections::HashMap;
use std::sync::Arc;

use parking_lot::Mutex;

use crate::config::{Action, EnforcerConfig, OpenApiConfig};
use crate::operation::{OperationPattern, OperationResolver, OperationSchema, load_openapi};
use crate::session::{JwtConfigError, SessionIdentifiers};

pub use admin_token::AdminToken;
pub use ratelimit::CompiledLimit;
pub use rules::{CompiledRule, RuleCounters, RuleCountersView, RuleKind};

/// Why a config could not be compiled (after it validated).
#[derive(Debug, thiserror::Error)]
pub enum CompileError {
    #[error(transparent)]
    Jwt(#[from] JwtConfigError),
    #[error("openAPI.path: {0}")]
    OpenApi(#[from] crate::operation::OpenApiError),
    #[error("admin.tokenFile: cannot read {path}: {source}")]
    AdminToken {
        path: String,
        source: std::io::Error,
    },
    #[error("admin: the token is empty")]
    EmptyAdminToken,
    #[error("{path}: {message}")]
    Operation { path: String, message: String },
}

/// Rule counters that survive reloads, by rule name.
#[derive(Debug, Default)]
pub struct CounterRegistry {
    by_name: Mutex<HashMap<String, Arc<RuleCounters>>>,
}

impl CounterRegistry {
    pub fn get(&self, name: &str) -> Arc<RuleCounters> {
        Arc::clone(self.by_name.lock().entry(name.to_owned()).or_default())
    }
}

/// The policy as the request path uses it.
#[derive(Debug)]
pub struct CompiledPolicy {
    pub config: EnforcerConfig,
    pub identifiers: SessionIdentifiers,
    /// Sorted by priority, higher first (ties: config order).
    pub rules: Vec<CompiledRule>,
    /// Trigger operation id → indexes into `rules` (in priority order).
    rules_by_op: HashMap<u32, Vec<usize>>,
    pub limits: Vec<CompiledLimit>,
    limits_by_op: HashMap<u32, Vec<usize>>,
    pub history_capacity: usize,
    pub history_ms: u64,
    pub schema_action: Option<Action>,
    pub admin_token: Option<AdminToken>,
    /// Unix milliseconds when this policy was compiled, i.e. since when it runs.
    pub compiled_at_ms: u64,
}

impl CompiledPolicy {
    /// Rules triggered by this operation, highest priority first.
    pub fn rules_for(&self, op: u32) -> impl Iterator<Item = &CompiledRule> {
        self.rules_by_op
            .get(&op)
            .into_iter()
            .flatten()
            .filter_map(|i| self.rules.get(*i))
    }

    pub fn limits_for(&self, op: u32) -> impl Iterator<Item = &CompiledLimit> {
        self.limits_by_op
            .get(&op)
            .into_iter()
            .flatten()
            .filter_map(|i| self.limits.get(*i))
    }

    pub fn rule(&self, name: &str) -> Option<&CompiledRule> {
        self.rules.iter().find(|r| &*r.name == name)
    }

    /// Whether any declared check needs an operation at all (fast path for empty policies).
    pub fn has_rules_or_limits(&self) -> bool {
        !self.rules.is_empty() || !self.limits.is_empty()
    }
}

fn parse_op(text: &str, path: &str) -> Result<OperationPattern, CompileError> {
    OperationPattern::parse(text).map_err(|message| CompileError::Operation {
        path: path.to_owned(),
        message,
    })
}

/// Declared operations with their schema, when the OpenAPI document gives one.
type Declared = Vec<(OperationPattern, Option<Arc<OperationSchema>>)>;

fn load_schemas(cfg: &Option<OpenApiConfig>) -> Result<Declared, CompileError> {
    let Some(cfg) = cfg else {
        return Ok(Vec::new());
    };
    let doc = load_openapi(&cfg.path)?;
    Ok(doc
        .operations
        .into_iter()
        .map(|(pattern, schema)| (pattern, cfg.validate.then(|| Arc::new(schema))))
        .collect())
}

/// Compiles a validated config. Declared operations (OpenAPI first, then rules and limits)
/// are installed in `resolver` only once everything else compiled.
pub fn compile(
    config: EnforcerConfig,
    resolver: &OperationResolver,
    counters: &CounterRegistry,
) -> Result<CompiledPolicy, CompileError> {
    let identifiers = SessionIdentifiers::new(&config.session)?;
    let admin_token = match (&config.admin.token, &config.admin.token_file) {
        (Some(t), _) => Some(t.trim().to_owned()),
        (None, Some(path)) => Some(
            std::fs::read_to_string(path)
                .map_err(|source| CompileError::AdminToken {
                    path: path.display().to_string(),
                    source,
                })?
                .trim()
                .to_owned(),
        ),
        (None, None) => None,
    };
    if admin_token.as_deref() == Some("") {
        return Err(CompileError::EmptyAdminToken);
    }
    let admin_token = admin_token.as_deref().map(AdminToken::new);
    let mut declared = load_schemas(&config.open_api)?;
    // Parse every operation the rules and limits name.
    let mut rule_patterns: Vec<Vec<OperationPattern>> = Vec::with_capacity(config.rules.len());
    for (i, rule) in config.rules.iter().enumerate() {
        let mut written: Vec<(String, String)> = Vec::new();
        if let Some(r) = &rule.requires {
            written.push((
                r.operation.clone(),
                format!("rules[{i}].requires.operation"),
            ));
            written.extend(
                r.after
                    .iter()
                    .enumerate()
                    .map(|(j, o)| (o.clone(), format!("rules[{i}].requires.after[{j}]"))),
            );
        }
        if let Some(r) = &rule.forbids {
            written.extend(
                r.sequence
                    .iter()
                    .enumerate()
                    .map(|(j, o)| (o.clone(), format!("rules[{i}].forbids.sequence[{j}]"))),
            );
        }
        if let Some(r) = &rule.max_repeat {
            written.push((
                r.operation.clone(),
                format!("rules[{i}].maxRepeat.operation"),
            ));
        }
        if let Some(r) = &rule.min_interval {
            written.push((r.from.clone(), format!("rules[{i}].minInterval.from")));
            written.push((r.to.clone(), format!("rules[{i}].minInterval.to")));
        }
        let patterns = written
            .iter()
            .map(|(t, p)| parse_op(t, p))
            .collect::<Result<Vec<_>, _>>()?;
        declared.extend(patterns.iter().map(|p| (p.clone(), None)));
        rule_patterns.push(patterns);
    }
    let mut limit_patterns = Vec::with_capacity(config.rate_limits.len());
    for (i, limit) in config.rate_limits.iter().enumerate() {
        let p = parse_op(&limit.operation, &format!("rateLimits[{i}].operation"))?;
        declared.push((p.clone(), None));
        limit_patterns.push(p);
    }
    resolver.set_case_sensitive(config.paths.case_sensitive);
    resolver.set_declared(declared);
    let set = resolver.declared();
    let id_of = |p: &OperationPattern| {
        set.get(&p.normalized_key())
            .map(|t| t.op.id)
            .unwrap_or(u32::MAX)
    };

    let mut rules = Vec::with_capacity(config.rules.len());
    for (rule, patterns) in config.rules.iter().zip(&rule_patterns) {
        let ids: Vec<u32> = patterns.iter().map(id_of).collect();
        let written: Vec<String> = patterns.iter().map(OperationPattern::display).collect();
        let (kind, window, min_interval) = if let Some(r) = &rule.requires {
            let kind = RuleKind::Requires {
                operation: ids.first().copied().unwrap_or(u32::MAX),
                after: ids.get(1..).unwrap_or_default().to_vec(),
                requests: r.within.requests as usize,
                within_ms: r.within.duration.as_millis_u64(),
            };
            (kind, Some((r.within.requests, r.within.duration)), None)
        } else if let Some(r) = &rule.forbids {
            let kind = RuleKind::Forbids {
                sequence: ids.clone(),
                requests: r.within.requests as usize,
                within_ms: r.within.duration.as_millis_u64(),
            };
            (kind, Some((r.within.requests, r.within.duration)), None)
        } else if let Some(r) = &rule.max_repeat {
            (
                RuleKind::MaxRepeat {
                    operation: ids.first().copied().unwrap_or(u32::MAX),
                    count: r.count,
                },
                None,
                None,
            )
        } else if let Some(r) = &rule.min_interval {
            let kind = RuleKind::MinInterval {
                from: ids.first().copied().unwrap_or(u32::MAX),
                to: ids.get(1).copied().unwrap_or(u32::MAX),
                min_ms: r.duration.as_millis_u64(),
            };
            (kind, None, Some(r.duration))
        } else {
            continue;
        };
        rules.push(CompiledRule {
            name: rule.name.as_str().into(),
            priority: rule.priority,
            action: rule.action,
            dry_run: rule.dry_run,
            kind,
            written,
            window,
            min_interval,
            counters: counters.get(&rule.name),
            source: rule.clone(),
        });
    }
    rules.sort_by_key(|r| std::cmp::Reverse(r.priority));
    let mut rules_by_op: HashMap<u32, Vec<usize>> = HashMap::new();
    for (i, r) in rules.iter().enumerate() {
        if let Some(op) = r.kind.trigger() {
            rules_by_op.entry(op).or_default().push(i);
        }
    }
    let mut limits = Vec::with_capacity(config.rate_limits.len());
    let mut limits_by_op: HashMap<u32, Vec<usize>> = HashMap::new();
    for (i, (limit, pattern)) in config.rate_limits.iter().zip(&limit_patterns).enumerate() {
        let index = u16::try_from(i).unwrap_or(u16::MAX);
        let name: Arc<str> = limit
            .name
            .clone()
            .unwrap_or_else(|| format!("rateLimits[{i}]"))
            .into();
        let op = id_of(pattern);
        limits.push(CompiledLimit::new(
            index,
            name,
            op,
            pattern.display(),
            limit.requests,
            limit.per,
            limit.action,
        ));
        limits_by_op.entry(op).or_default().push(i);
    }
    Ok(CompiledPolicy {
        history_capacity: config.session.history.requests as usize,
        history_ms: config.session.history.duration.as_millis_u64(),
        schema_action: config
            .open_api
            .as_ref()
            .filter(|o| o.validate)
            .map(|o| o.action),
        identifiers,
        rules,
        rules_by_op,
        limits,
        limits_by_op,
        admin_token,
        compiled_at_ms: crate::time::now_ms(),
        config,
    })
}

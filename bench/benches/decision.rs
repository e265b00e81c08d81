//! The per-request decision cost of the enforcer, step by step, with criterion: session
//! identification (verified HS256 bearer token), the session table, operation resolution
//! against the declared OpenAPI operations, sequence-rule evaluation, OpenAPI validation of a
//! JSON body, and the learned model (detectors' `inspect`, learning's `observe`), then all of
//! them together for one request. Same policy and mix as the end-to-end benchmark
//! (`ordo_bench::scenario`, `ordo_bench::mix`); the model is first trained on 2,000 sessions.
//!
//! Run: `scripts/bench micro` (or `cargo bench -p ordo-bench --bench decision`).

use std::hint::black_box;
use std::net::IpAddr;

use criterion::{Criterion, criterion_group, criterion_main};
use http::{HeaderMap, HeaderValue, Method};
use ordo_bench::mix::{CYCLE, SessionVars, request};
use ordo_bench::scenario::{self, EnforcerMode, EnforcerParams, JWT_SECRET, OPENAPI_YAML};
use ordo_enforcer::config::{EnforcerConfig, parse_yaml};
use ordo_enforcer::detect::LearnedAnalyzer;
use ordo_enforcer::detect::session_state::SessionState;
use ordo_enforcer::detect::{Analyzer, RequestContext, RequestScratch, ResponseSummary};
use ordo_enforcer::operation::{OperationResolver, parse_query};
use ordo_enforcer::policy::{CompiledPolicy, CounterRegistry, compile};
use ordo_enforcer::session::jwt::JwtVerifier;
use ordo_enforcer::session::{History, MAX_HISTORY, RecentOp, SessionSource, SessionTable};

/// The policy of the end-to-end benchmark, compiled.
struct Fixture {
    _dir: tempfile::TempDir,
    config: EnforcerConfig,
    resolver: OperationResolver,
    policy: CompiledPolicy,
}

fn fixture() -> Fixture {
    let dir = tempfile::tempdir().expect("tempdir");
    let openapi = dir.path().join("openapi.yaml");
    std::fs::write(&openapi, OPENAPI_YAML).expect("write openapi");
    let yaml = scenario::enforcer_config_yaml(&EnforcerParams {
        listen: "127.0.0.1:1".parse().expect("addr"),
        admin: "127.0.0.1:2".parse().expect("addr"),
        upstream: "127.0.0.1:3".parse().expect("addr"),
        mode: EnforcerMode::Enforce,
        openapi_path: Some(&openapi),
        max_sessions: 250_000,
        session_header: None,
        model_file: None,
        bare: false,
    });
    let config = parse_yaml(&yaml).expect("config");
    let resolver = OperationResolver::new(&config.operations);
    let counters = CounterRegistry::default();
    let policy = compile(config.clone(), &resolver, &counters).expect("compile");
    Fixture {
        _dir: dir,
        config,
        resolver,
        policy,
    }
}

fn bearer_headers(index: u64) -> HeaderMap {
    let vars = SessionVars::for_index(index);
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("clock")
        .as_secs();
    let token = ordo_bench::sessions::token(&vars, JWT_SECRET, now).expect("token");
    let mut h = HeaderMap::new();
    h.insert(
        http::header::AUTHORIZATION,
        HeaderValue::from_str(&format!("Bearer {token}")).expect("header"),
    );
    h.insert(
        http::header::HOST,
        HeaderValue::from_static("api.bank.example"),
    );
    h.insert(
        http::header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    h
}

fn now_ms() -> u64 {
    u64::try_from(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .expect("clock")
            .as_millis(),
    )
    .unwrap_or(0)
}

/// One request of the mix, prepared the way the proxy sees it.
struct Prepared {
    method: Method,
    path: String,
    query: String,
    body: Option<serde_json::Value>,
    body_text: Option<String>,
}

fn prepared(vars: &SessionVars, step: usize) -> Prepared {
    let r = request(vars, step);
    let (path, query) = match r.path.split_once('?') {
        Some((p, q)) => (p.to_owned(), q.to_owned()),
        None => (r.path.clone(), String::new()),
    };
    Prepared {
        method: Method::from_bytes(r.method.as_bytes()).expect("method"),
        path,
        query,
        body: r
            .body
            .as_deref()
            .map(|b| serde_json::from_str(b).expect("json")),
        body_text: r.body,
    }
}

/// Trains `analyzer` on `sessions` sessions walking the whole cycle, as the learning phase does.
fn train(f: &Fixture, analyzer: &LearnedAnalyzer, sessions: u64) {
    let client: IpAddr = "127.0.0.1".parse().expect("ip");
    let headers = bearer_headers(0);
    let start = now_ms() - 3_600_000;
    for s in 0..sessions {
        let vars = SessionVars::for_index(1_000_000 + s);
        let session = format!("jwt:sub={}", vars.sub);
        let mut state = SessionState::default();
        let mut recent: Vec<RecentOp> = Vec::new();
        for step in 0..CYCLE.len() {
            let p = prepared(&vars, step);
            let mut segments = Vec::new();
            let resolved = f.resolver.resolve(&p.method, &p.path, &mut segments);
            let params = resolved.template.path_params(&segments);
            let query = parse_query(&p.query);
            let at = start + s * 1000 + step as u64 * 700;
            let scratch = RequestScratch::default();
            let ctx = RequestContext {
                now_ms: at,
                session: &session,
                session_source: SessionSource::Jwt,
                client,
                method: &p.method,
                operation: &resolved.template.op,
                path_params: &params,
                query: &query,
                headers: &headers,
                body: p.body.as_ref(),
                recent: &recent,
                scratch: &scratch,
            };
            analyzer.observe(
                &ctx,
                &mut state,
                &ResponseSummary {
                    status: 200,
                    duration_us: 300,
                    ..ResponseSummary::default()
                },
                false,
            );
            recent.push(RecentOp {
                op: resolved.template.op.id,
                at_ms: at,
            });
            if recent.len() > 10 {
                recent.remove(0);
            }
        }
    }
}

fn benches(c: &mut Criterion) {
    let f = fixture();
    let client: IpAddr = "127.0.0.1".parse().expect("ip");

    // 1. Session identification: verify the HS256 token and read `sub`. A token seen before
    // is found in the bounded cache of verified tokens; a token seen for the first time is
    // verified (measured alone below) and remembered.
    let headers = bearer_headers(42);
    let mut key = String::with_capacity(64);
    c.bench_function("identify/jwt_hs256_repeated_token", |b| {
        b.iter(|| {
            let source = f
                .policy
                .identifiers
                .identify(black_box(&headers), &[], client, &mut key);
            black_box((source.is_ok(), key.len()))
        })
    });
    // The verification itself, as on a token's first request (or when the cache has no room).
    let verifier = JwtVerifier::new(
        f.config
            .session
            .jwt_verification
            .as_ref()
            .expect("the scenario verifies tokens"),
    )
    .expect("verifier");
    let token = headers[http::header::AUTHORIZATION]
        .to_str()
        .expect("ascii")
        .trim_start_matches("Bearer ")
        .to_owned();
    c.bench_function("identify/jwt_hs256_verify_uncached", |b| {
        b.iter(|| black_box(verifier.verify(black_box(&token)).is_ok()))
    });

    // 2. Session table: find one of 100,000 live sessions (sharded map, hashed key).
    let table = SessionTable::<SessionState>::new(250_000, std::time::Duration::from_secs(1800));
    let keys: Vec<String> = (0..100_000u64)
        .map(|i| format!("jwt:sub=cust-{i:07}"))
        .collect();
    for k in &keys {
        table.with_entry(table.key_hash(k), 1, |_, _| ());
    }
    let mut i = 0usize;
    c.bench_function("session_table/hash_and_lookup_of_100k", |b| {
        b.iter(|| {
            i = (i + 7919) % keys.len();
            let h = table.key_hash(black_box(&keys[i]));
            black_box(table.with_entry(h, 2, |e, fresh| (e.history.len(), fresh)))
        })
    });
    assert_eq!(table.count(), 100_000, "lookups must not create sessions");

    // 3. Operation resolution over the 24 declared operations (the mix's paths in turn).
    let vars = SessionVars::for_index(42);
    let requests: Vec<Prepared> = (0..CYCLE.len()).map(|s| prepared(&vars, s)).collect();
    let mut segments = Vec::with_capacity(16);
    let mut k = 0usize;
    c.bench_function("operation/resolve_declared", |b| {
        b.iter(|| {
            k = (k + 1) % requests.len();
            let r = &requests[k];
            let resolved = f
                .resolver
                .resolve(&r.method, black_box(&r.path), &mut segments);
            black_box(resolved.template.op.id)
        })
    });

    // 4. Sequence rules triggered by POST /api/v1/transfers against a full 10-op history.
    let transfer = &requests[20];
    assert_eq!(transfer.path, "/api/v1/transfers");
    let transfer_op = f
        .resolver
        .resolve(&transfer.method, &transfer.path, &mut segments)
        .template
        .op
        .id;
    let mut history = History::default();
    let t0 = now_ms() - 20_000;
    for (n, r) in requests[10..20].iter().enumerate() {
        let op = f
            .resolver
            .resolve(&r.method, &r.path, &mut segments)
            .template
            .op
            .id;
        history.push(op, t0 + n as u64 * 1500, 10);
    }
    let now = now_ms();
    let mut recent_buf = [RecentOp { op: 0, at_ms: 0 }; MAX_HISTORY];
    let rules_count = f.policy.rules_for(transfer_op).count();
    c.bench_function(
        &format!("rules/evaluate_{rules_count}_rules_on_transfer"),
        |b| {
            b.iter(|| {
                let n = history.fill(&mut recent_buf, now, 600_000);
                let mut matched = 0;
                for rule in f.policy.rules_for(black_box(transfer_op)) {
                    if rule.check(transfer_op, &recent_buf[..n], now).is_some() {
                        matched += 1;
                    }
                }
                black_box(matched)
            })
        },
    );

    // 5. OpenAPI: parse and validate the transfer's JSON body.
    let schema = f
        .resolver
        .resolve(&transfer.method, &transfer.path, &mut segments)
        .template
        .schema
        .clone()
        .expect("transfer has a declared schema");
    let body_text = transfer.body_text.clone().expect("transfer body");
    let mut violations = Vec::new();
    c.bench_function("openapi/parse_and_validate_transfer_body", |b| {
        b.iter(|| {
            violations.clear();
            let body: serde_json::Value =
                serde_json::from_str(black_box(&body_text)).expect("json");
            schema.validate_body(Some(&body), true, &mut violations);
            black_box(violations.len())
        })
    });

    // 6. The learned model: detectors (inspect) and learning (observe), mature model.
    let analyzer = LearnedAnalyzer::new(&f.config.learning, &f.config.detectors, None);
    train(&f, &analyzer, 2_000);
    let session = "jwt:sub=cust-0000042".to_owned();
    let mut state = SessionState::default();
    let mut findings = Vec::new();
    let filled = history.fill(&mut recent_buf, now, 600_000);
    let recent: Vec<RecentOp> = recent_buf[..filled].to_vec();
    let query = parse_query(&transfer.query);
    let resolved = f
        .resolver
        .resolve(&transfer.method, &transfer.path, &mut segments);
    let params = resolved.template.path_params(&segments);
    // Each call gets a fresh per-request scratch, as in the proxy: `inspect` and `observe`
    // alone each derive the request's parameters; together (one request) they derive them once.
    macro_rules! context {
        ($scratch:expr) => {
            RequestContext {
                now_ms: now,
                session: &session,
                session_source: SessionSource::Jwt,
                client,
                method: &transfer.method,
                operation: &resolved.template.op,
                path_params: &params,
                query: &query,
                headers: &headers,
                body: transfer.body.as_ref(),
                recent: &recent,
                scratch: $scratch,
            }
        };
    }
    c.bench_function("model/inspect_transfer", |b| {
        b.iter(|| {
            let scratch = RequestScratch::default();
            let ctx = context!(&scratch);
            findings.clear();
            analyzer.inspect(black_box(&ctx), &mut state, &mut findings);
            black_box(findings.len())
        })
    });
    let response = ResponseSummary {
        status: 200,
        duration_us: 250,
        ..ResponseSummary::default()
    };
    c.bench_function("model/observe_transfer", |b| {
        b.iter(|| {
            let scratch = RequestScratch::default();
            let ctx = context!(&scratch);
            analyzer.observe(black_box(&ctx), &mut state, &response, false)
        })
    });
    c.bench_function("model/inspect_and_observe_transfer", |b| {
        b.iter(|| {
            let scratch = RequestScratch::default();
            let ctx = context!(&scratch);
            findings.clear();
            analyzer.inspect(black_box(&ctx), &mut state, &mut findings);
            analyzer.observe(black_box(&ctx), &mut state, &response, false);
            black_box(findings.len())
        })
    });

    // 7. Everything for one request of the mix (a GET with a path parameter and the transfer).
    let balance = &requests[18];
    for (name, r) in [("balance_get", balance), ("transfer_post", transfer)] {
        let mut history = History::default();
        let mut state = SessionState::default();
        let mut findings = Vec::new();
        let mut violations = Vec::new();
        c.bench_function(&format!("decision/all_steps_{name}"), |b| {
            b.iter(|| {
                let now = now_ms();
                let scratch = RequestScratch::default();
                let query = parse_query(&r.query);
                let source = f
                    .policy
                    .identifiers
                    .identify(&headers, &query, client, &mut key);
                let hash = table.key_hash(&key);
                let resolved = f.resolver.resolve(&r.method, &r.path, &mut segments);
                let op = resolved.template.op.id;
                let n = history.fill(&mut recent_buf, now, 600_000);
                let mut blocked = false;
                for rule in f.policy.rules_for(op) {
                    blocked |= rule.check(op, &recent_buf[..n], now).is_some();
                }
                let body: Option<serde_json::Value> = r
                    .body_text
                    .as_deref()
                    .and_then(|t| serde_json::from_str(t).ok());
                let params = resolved.template.path_params(&segments);
                if let Some(schema) = &resolved.template.schema {
                    violations.clear();
                    schema.validate_params(&params, &query, &mut violations);
                    schema.validate_body(body.as_ref(), body.is_some(), &mut violations);
                }
                let ctx = RequestContext {
                    now_ms: now,
                    session: &key,
                    session_source: source.map_or(SessionSource::ClientIp, |i| i.source),
                    client,
                    method: &r.method,
                    operation: &resolved.template.op,
                    path_params: &params,
                    query: &query,
                    headers: &headers,
                    body: body.as_ref(),
                    recent: &recent_buf[..n],
                    scratch: &scratch,
                };
                findings.clear();
                table.with_entry(hash, 3, |_, _| ());
                analyzer.inspect(&ctx, &mut state, &mut findings);
                analyzer.observe(&ctx, &mut state, &response, false);
                history.push(op, now, 10);
                black_box((blocked, findings.len(), violations.len()))
            })
        });
    }
}

criterion_group!(decision, benches);
criterion_main!(decision);

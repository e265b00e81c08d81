//! Analyzer tests on synthetic traffic with a synthetic clock: what is learned, what is
//! caught, what is not flagged, and that flagged traffic does not move the model.

use std::borrow::Cow;
use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::Arc;

use super::request::{
    AddressFacts, Analyzer, AuthAttempt, RequestContext, RequestScratch, ResponseSummary,
};
use crate::config::{Action, DetectorsConfig, LearningConfig};
use crate::detect::LearnedAnalyzer;
use crate::detect::session_state::SessionState;
use crate::finding::{Finding, FindingKind};
use crate::model::LearnedModel;
use crate::operation::{Operation, OperationOrigin};
use crate::session::{LOST_HISTORY, RecentOp, SessionSource};

const MIN: u64 = 60_000;

struct Harness {
    analyzer: LearnedAnalyzer,
    ops: HashMap<String, Operation>,
    sessions: HashMap<String, (SessionState, Vec<RecentOp>)>,
    now: u64,
    /// The login answers with 200 and a token, or 200 and an error body (one user in 25
    /// mistypes first), instead of a bare status.
    login_bodies: bool,
    /// Whether facts about client addresses are collected for other replicas, into `facts`.
    exporting: bool,
    facts: Vec<AddressFacts>,
}

struct Req<'a> {
    session: &'a str,
    client: [u8; 4],
    template: &'a str,
    path: Vec<(&'a str, String)>,
    query: Vec<(&'a str, String)>,
    body: Option<serde_json::Value>,
    status: u16,
    /// The response body handed to the analyzer (as the proxy does for the operations whose
    /// outcome it reads).
    answer: Option<String>,
}

fn req<'a>(session: &'a str, template: &'a str) -> Req<'a> {
    Req {
        session,
        client: [10, 0, 0, 1],
        template,
        path: Vec::new(),
        query: Vec::new(),
        body: None,
        status: 200,
        answer: None,
    }
}

impl Harness {
    fn new(learning: LearningConfig) -> Self {
        Self::with_detectors(learning, &DetectorsConfig::all(Action::Block))
    }

    /// Every detector blocks, none quarantines (each attack judged on its own).
    fn without_quarantine(learning: LearningConfig) -> Self {
        let mut detectors = DetectorsConfig::all(Action::Block);
        for d in [
            &mut detectors.shadow_endpoint,
            &mut detectors.request_shape,
            &mut detectors.unlikely_sequence,
            &mut detectors.volume,
            &mut detectors.enumeration,
            &mut detectors.credential_stuffing,
        ] {
            d.quarantine = Some(crate::config::Duration::from_secs(0));
        }
        Self::with_detectors(learning, &detectors)
    }

    fn with_detectors(learning: LearningConfig, detectors: &DetectorsConfig) -> Self {
        let analyzer = LearnedAnalyzer::new(&learning, detectors, None);
        Self {
            analyzer,
            ops: HashMap::new(),
            sessions: HashMap::new(),
            now: 1_700_000_000_000,
            login_bodies: false,
            exporting: false,
            facts: Vec::new(),
        }
    }

    fn op(&mut self, template: &str) -> Operation {
        let next = u32::try_from(self.ops.len()).unwrap();
        self.ops
            .entry(template.to_owned())
            .or_insert_with(|| Operation {
                id: next,
                template: Arc::from(template),
                origin: OperationOrigin::Learned,
            })
            .clone()
    }

    fn send(&mut self, r: Req<'_>) -> Vec<Finding> {
        let op = self.op(r.template);
        let method: http::Method = r.template.split(' ').next().unwrap().parse().unwrap();
        let mut headers = http::HeaderMap::new();
        headers.insert("user-agent", "bank-app/1.2".parse().unwrap());
        headers.insert("accept", "application/json".parse().unwrap());
        let path_params: Vec<(&str, &str)> = r.path.iter().map(|(k, v)| (*k, v.as_str())).collect();
        let query: Vec<(Cow<'_, str>, Cow<'_, str>)> = r
            .query
            .iter()
            .map(|(k, v)| (Cow::Borrowed(*k), Cow::Borrowed(v.as_str())))
            .collect();
        let (state, recent) = self.sessions.entry(r.session.to_owned()).or_default();
        let recent_copy = recent.clone();
        let scratch = RequestScratch::exporting(self.exporting);
        let ctx = RequestContext {
            now_ms: self.now,
            session: r.session,
            // As `session::identify` names them.
            session_source: if r.session.starts_with("ip:") {
                SessionSource::ClientIp
            } else if r.session.starts_with("cookie:") {
                SessionSource::Cookie
            } else {
                SessionSource::Jwt
            },
            client: IpAddr::from(r.client),
            method: &method,
            operation: &op,
            path_params: &path_params,
            query: &query,
            headers: &headers,
            body: r.body.as_ref(),
            recent: &recent_copy,
            scratch: &scratch,
        };
        let mut findings = Vec::new();
        self.analyzer.inspect(&ctx, state, &mut findings);
        self.analyzer.observe(
            &ctx,
            state,
            &ResponseSummary {
                status: r.status,
                duration_us: 100,
                body: r.answer.as_deref().map(str::as_bytes),
                ..ResponseSummary::default()
            },
            !findings.is_empty(),
        );
        self.facts.extend(scratch.take_facts());
        recent.push(RecentOp {
            op: op.id,
            at_ms: self.now,
        });
        if recent.len() > 10 {
            recent.remove(0);
        }
        self.now += 1000;
        findings
    }

    /// One benign banking journey; returns every finding it produced.
    fn benign(&mut self, user: u32, variant: u32) -> Vec<Finding> {
        let s = format!("jwt:sub={user}");
        let mut all = Vec::new();
        let login_session = format!("ip:{user}");
        let client = [10, 1, (user / 250) as u8, (user % 250) as u8];
        let login = |password: &str| {
            let mut login = req(&login_session, "POST /login").with_body(
                serde_json::json!({"username": format!("user{user}"), "password": password}),
            );
            login.client = client;
            login
        };
        if self.login_bodies {
            if user.is_multiple_of(25) {
                all.extend(self.send(login("typo").answer(LOGIN_FAILED)));
            }
            let token = format!(r#"{{"status":"success","token":"eyJhbGciOi.{user:0>24}.sig"}}"#);
            all.extend(self.send(login("pw").answer(&token)));
        } else {
            all.extend(self.send(login("pw")));
        }
        all.extend(self.send(req(&s, "GET /accounts")));
        let accounts = [
            format!("{}", 1000 + user * 2),
            format!("{}", 1001 + user * 2),
        ];
        let balance = req(&s, "GET /accounts/{id}/balance").with_path("id", &accounts[0]);
        let balance = if self.login_bodies {
            balance.answer(r#"{"accountId":"1000","balance":120.5,"currency":"EUR"}"#)
        } else {
            balance
        };
        all.extend(self.send(balance));
        if self.login_bodies && user.is_multiple_of(10) {
            // A stale bookmark: an account that no longer exists, answered 200 and an error.
            let gone = req(&s, "GET /accounts/{id}/balance")
                .with_path("id", &format!("{}", 90_000 + user))
                .answer(r#"{"error":{"code":"ACCOUNT_NOT_FOUND","message":"no such account"}}"#);
            all.extend(self.send(gone));
        }
        if variant.is_multiple_of(3) {
            all.extend(
                self.send(req(&s, "GET /accounts/{id}/balance").with_path("id", &accounts[1])),
            );
        }
        if variant.is_multiple_of(2) {
            let body = serde_json::json!({
                "fromAccount": accounts[0], "toAccount": format!("{}", 5000 + variant % 40),
                "amount": 10 + (variant * 37) % 900, "currency": if variant.is_multiple_of(5) { "USD" } else { "EUR" },
                "memo": format!("invoice {variant}"),
            });
            all.extend(self.send(req(&s, "POST /transfers").with_body(body)));
        } else {
            for page in 1..=(1 + variant % 3) {
                all.extend(
                    self.send(req(&s, "GET /transactions").with_query("page", &page.to_string())),
                );
            }
        }
        self.now += 5 * MIN;
        all
    }

    fn train(&mut self, sessions: u32) {
        for user in 0..sessions {
            let findings = self.benign(user, user);
            assert!(
                findings.is_empty(),
                "learning phase flagged nothing yet: {findings:?}"
            );
        }
    }

    fn model(&self) -> LearnedModel {
        self.analyzer.snapshot()
    }
}

impl<'a> Req<'a> {
    fn with_body(mut self, body: serde_json::Value) -> Self {
        self.body = Some(body);
        self
    }
    fn with_path(mut self, name: &'a str, value: &str) -> Self {
        self.path.push((name, value.to_owned()));
        self
    }
    fn with_query(mut self, name: &'a str, value: &str) -> Self {
        self.query.push((name, value.to_owned()));
        self
    }
    fn status(mut self, status: u16) -> Self {
        self.status = status;
        self
    }
    fn answer(mut self, body: &str) -> Self {
        self.answer = Some(body.to_owned());
        self
    }
}

/// A failed login as many APIs answer it: 200 with an error body.
const LOGIN_FAILED: &str =
    r#"{"status":"fail","message":"Password is not correct for the given username."}"#;

fn small_api() -> LearningConfig {
    LearningConfig {
        min_requests: 500,
        min_sessions: 50,
        ..LearningConfig::default()
    }
}

fn kinds(findings: &[Finding]) -> Vec<FindingKind> {
    findings.iter().map(|f| f.kind).collect()
}

#[test]
fn immature_model_flags_nothing_and_says_what_it_waits_for() {
    let mut h = Harness::new(small_api());
    h.train(20);
    let findings = h.send(
        req("jwt:sub=attacker", "POST /transfers")
            .with_body(serde_json::json!({"fromAccount": "1", "role": "admin"})),
    );
    assert!(findings.is_empty());
    let view = h.analyzer.view();
    assert!(!view.mature);
    let shadow = view
        .detectors
        .iter()
        .find(|d| d.name == "shadowEndpoint")
        .unwrap();
    assert!(!shadow.active);
    // 20 journeys = 40 sessions (the login's address session and the token session).
    let model = h.model();
    let expected = format!(
        "needs {} more requests and {} more sessions",
        500 - model.requests,
        50 - model.sessions
    );
    assert_eq!(
        model.sessions, 41,
        "20 journeys with two sessions each, and the attacker's"
    );
    assert_eq!(shadow.waiting_for.as_deref(), Some(expected.as_str()));
}

/// The `ordo_model_*` gauges read `maturity()`: it agrees with the view's gate while the
/// model learns and once it passed it, and the metrics show the same.
#[test]
fn maturity_for_the_metrics_follows_the_gate() {
    let mut h = Harness::new(small_api());
    h.train(20);
    let view = h.analyzer.view();
    let young = h.analyzer.maturity().unwrap();
    assert_eq!(young.mature(), view.mature);
    assert!(!young.mature());
    assert_eq!(
        (young.requests, young.sessions),
        (view.requests, view.sessions)
    );
    assert_eq!((young.min_requests, young.min_sessions), (500, 50));
    let expected = (view.requests as f64 / 500.0).min(view.sessions as f64 / 50.0);
    assert!((young.progress() - expected).abs() < 1e-9, "{young:?}");
    assert!(
        young.progress() > 0.0 && young.progress() < 1.0,
        "{young:?}"
    );
    assert!(young.operations > 0);
    assert!(young.operations_mature <= young.operations);
    let metrics = crate::metrics::Metrics::new().unwrap();
    young.export(&metrics);
    assert_eq!(metrics.model_mature.get(), 0);

    h.train(400);
    let view = h.analyzer.view();
    let grown = h.analyzer.maturity().unwrap();
    assert!(view.mature && grown.mature(), "{grown:?}");
    assert!((grown.progress() - 1.0).abs() < f64::EPSILON);
    assert!(grown.operations_mature > 0, "{grown:?}");
    grown.export(&metrics);
    let text = String::from_utf8(metrics.encode()).unwrap();
    assert!(text.contains("\nordo_model_mature 1\n"), "{text}");
    assert!(text.contains("\nordo_model_maturity_ratio 1\n"), "{text}");
    assert!(
        text.contains(&format!("\nordo_model_operations {}\n", grown.operations)),
        "{text}"
    );
    assert_eq!(
        crate::detect::NoopAnalyzer.maturity(),
        None,
        "an analyzer that learns nothing has no maturity"
    );
}

#[test]
fn benign_journeys_are_not_flagged_after_learning() {
    let mut h = Harness::new(small_api());
    h.train(400);
    let view = h.analyzer.view();
    assert!(view.mature, "{view:?}");
    let mut flagged = Vec::new();
    for user in 10_000..10_100 {
        let f = h.benign(user, user);
        if !f.is_empty() {
            flagged.push(f);
        }
    }
    assert!(flagged.is_empty(), "benign sessions flagged: {flagged:?}");
}

#[test]
fn catches_each_attack_kind() {
    let mut h = Harness::without_quarantine(small_api());
    h.train(400);

    // Skipped steps: a transfer as the first request of a session.
    let f = h.send(req("jwt:sub=skip", "POST /transfers").with_body(serde_json::json!({
        "fromAccount": "1000", "toAccount": "5001", "amount": 100, "currency": "EUR", "memo": "x"})));
    assert_eq!(kinds(&f), vec![FindingKind::UnlikelySequence], "{f:?}");
    assert!(
        f[0].explanation
            .contains("as the first request of the session"),
        "{}",
        f[0].explanation
    );
    // Its immediate replay is flagged too.
    let f = h.send(req("jwt:sub=skip", "POST /transfers").with_body(serde_json::json!({
        "fromAccount": "1000", "toAccount": "5001", "amount": 100, "currency": "EUR", "memo": "x"})));
    assert!(kinds(&f).contains(&FindingKind::UnlikelySequence), "{f:?}");

    // Mass assignment and tampered amount.
    h.send(req("jwt:sub=mass", "GET /accounts"));
    h.send(req("jwt:sub=mass", "GET /accounts/{id}/balance").with_path("id", "1000"));
    let f = h.send(req("jwt:sub=mass", "POST /transfers").with_body(serde_json::json!({
        "fromAccount": "1000", "toAccount": "5001", "amount": 100, "currency": "EUR", "memo": "x", "approved": true})));
    assert_eq!(kinds(&f), vec![FindingKind::ShapeDeviation], "{f:?}");
    assert!(
        f[0].explanation.contains("approved"),
        "{}",
        f[0].explanation
    );
    let f = h.send(req("jwt:sub=mass", "POST /transfers").with_body(serde_json::json!({
        "fromAccount": "1000", "toAccount": "5001", "amount": -25000000, "currency": "EUR", "memo": "x"})));
    assert!(kinds(&f).contains(&FindingKind::ShapeDeviation), "{f:?}");

    // Injection in a query value.
    h.send(req("jwt:sub=inj", "GET /accounts"));
    let f = h.send(req("jwt:sub=inj", "GET /transactions").with_query("page", "1' OR 1=1--"));
    assert!(kinds(&f).contains(&FindingKind::ShapeDeviation), "{f:?}");

    // Enumeration of account ids.
    h.send(req("jwt:sub=bola", "GET /accounts"));
    let mut first = None;
    for i in 0..40 {
        let f = h.send(
            req("jwt:sub=bola", "GET /accounts/{id}/balance")
                .with_path("id", &format!("{}", 3000 + i)),
        );
        if first.is_none() && kinds(&f).contains(&FindingKind::Enumeration) {
            first = Some(i + 1);
        }
    }
    let first = first.expect("enumeration detected");
    // Floor 6 distinct objects at Medium (peers touch one): flagged at the 7th.
    assert!((7..=9).contains(&first), "detected after {first} ids");

    // Volume: scraping transactions pages.
    h.send(req("jwt:sub=scrape", "GET /accounts"));
    let mut volume = None;
    for page in 1..=60 {
        let f = h
            .send(req("jwt:sub=scrape", "GET /transactions").with_query("page", &page.to_string()));
        if let Some(v) = f.iter().find(|f| f.kind == FindingKind::Volume) {
            assert_eq!(v.block_status, 429);
            assert!(v.retry_after_s.is_some());
            volume.get_or_insert(page);
        }
    }
    assert_eq!(
        volume,
        Some(21),
        "volume threshold is the floor of 20 for this narrow baseline"
    );

    // Credential stuffing from one client.
    let mut stuffing = None;
    for i in 0..30 {
        let mut r = req("ip:stuffer", "POST /login")
            .with_body(serde_json::json!({"username": format!("victim{i}"), "password": "123456"}))
            .status(401);
        r.client = [203, 0, 113, 9];
        let f = h.send(r);
        if stuffing.is_none() && kinds(&f).contains(&FindingKind::CredentialStuffing) {
            stuffing = Some(i + 1);
        }
    }
    // Four distinct failing identities reach the identity threshold; the 128-bit linear
    // counting may merge two of them (a fixed hash, so the outcome is deterministic).
    assert!(matches!(stuffing, Some(5..=6)), "{stuffing:?}");

    // Shadow endpoint.
    h.send(req("jwt:sub=probe", "GET /accounts"));
    let f = h.send(req("jwt:sub=probe", "GET /admin/users").status(404));
    assert!(kinds(&f).contains(&FindingKind::ShadowEndpoint), "{f:?}");
}

#[test]
fn the_sequence_model_is_silent_while_a_history_is_marked_lost() {
    let mut h = Harness::new(small_api());
    h.train(400);
    let transfer = serde_json::json!({
        "fromAccount": "1000", "toAccount": "5001", "amount": 100, "currency": "EUR", "memo": "x"});
    // A transfer right after the account list, without the balance lookup, is unlikely...
    h.send(req("jwt:sub=fresh", "GET /accounts"));
    let f = h.send(req("jwt:sub=fresh", "POST /transfers").with_body(transfer.clone()));
    assert_eq!(kinds(&f), vec![FindingKind::UnlikelySequence], "{f:?}");
    // ... but not of one whose earlier requests are unknown (evicted, or served by another
    // replica before it moved here): its journey may well have had the steps before.
    let now = h.now;
    h.sessions
        .entry("jwt:sub=moved".to_owned())
        .or_default()
        .1
        .push(RecentOp {
            op: LOST_HISTORY,
            at_ms: now,
        });
    let f = h.send(req("jwt:sub=moved", "GET /accounts"));
    assert!(f.is_empty(), "{f:?}");
    let f = h.send(req("jwt:sub=moved", "POST /transfers").with_body(transfer));
    assert!(!kinds(&f).contains(&FindingKind::UnlikelySequence), "{f:?}");
}

#[test]
fn flagged_session_does_not_move_the_model() {
    let mut h = Harness::new(small_api());
    h.train(300);
    let before = h.model();
    // First request is flagged (unknown endpoint); everything after is ignored for learning.
    let f = h.send(req("jwt:sub=poison", "GET /internal/debug"));
    assert!(!f.is_empty());
    for _ in 0..50 {
        h.send(
            req("jwt:sub=poison", "POST /transfers")
                .with_body(serde_json::json!({"fromAccount": "1", "evil": "x"})),
        );
        h.send(req("jwt:sub=poison", "GET /accounts"));
    }
    let after = h.model();
    assert_eq!(before, after, "a flagged session must not move the model");
    // An unflagged session does move it.
    h.benign(99_999, 2);
    assert_ne!(before, h.model());
}

#[test]
fn delta_merge_and_adoption_are_exact() {
    let mut a = Harness::new(small_api());
    let mut b = Harness::new(small_api());
    a.train(60);
    let delta_a = a.analyzer.take_delta();
    b.train(40);
    let delta_b = b.analyzer.take_delta();
    // The operator merges both deltas.
    let mut merged = LearnedModel::default();
    merged.merge(&delta_a);
    merged.merge(&delta_b);
    assert_eq!(merged.requests, delta_a.requests + delta_b.requests);
    assert_eq!(
        merged.sessions, 200,
        "each journey has a login session and a token session"
    );
    // A learns more, then adopts the merged model: its pending learning stays on top.
    let pending_before = a.model().requests;
    a.benign(5000, 1);
    let pending = a.model().requests - pending_before;
    a.analyzer.replace_model(merged.clone());
    assert_eq!(a.model().requests, merged.requests + pending);
    // The next delta is exactly the pending learning.
    let next = a.analyzer.take_delta();
    assert_eq!(next.requests, pending);
    assert_eq!(next.sessions, 2);
    let mut operator = merged.clone();
    operator.merge(&next);
    assert_eq!(operator.requests, a.model().requests);
    // Nothing new: no delta.
    assert!(a.analyzer.take_delta_bytes().is_none());
}

#[test]
fn model_round_trips_through_bytes_and_files() {
    let mut h = Harness::new(small_api());
    h.train(120);
    let model = h.model();
    let bytes = model.to_bytes();
    let back = LearnedModel::from_bytes(&bytes).unwrap();
    assert_eq!(back, model);
    let json_len = serde_json::to_vec(&model).unwrap().len();
    assert!(
        bytes.len() * 3 < json_len,
        "compressed {} vs json {json_len}",
        bytes.len()
    );
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("model.bin");
    h.analyzer.persist(&path).unwrap();
    let loaded = LearnedAnalyzer::load(&path, &small_api()).unwrap();
    assert_eq!(loaded, model);
    assert!(LearnedModel::from_bytes(b"not gzip").is_err());
}

#[test]
fn caps_bound_operations_and_contexts() {
    let learning = LearningConfig {
        max_operations: 64,
        max_contexts: 500,
        ..small_api()
    };
    let mut h = Harness::new(learning);
    for i in 0..3000u32 {
        let template = format!("GET /fuzz/{i}");
        let s = format!("jwt:sub=f{}", i % 50);
        h.send(req(&s, &template));
    }
    let model = h.model();
    assert_eq!(model.operations.len(), 64);
    assert!(model.dropped_operations > 0);
    assert!(model.sequences.len() <= 500, "{}", model.sequences.len());
    let view = h.analyzer.view();
    assert_eq!(view.usage.operations, 64);
}

#[test]
fn model_view_lists_sequences_and_suggests_rules() {
    let mut h = Harness::new(small_api());
    h.train(300);
    let view = h.analyzer.view();
    // The harness's answers carry no body: the exposure detector says what it waits for.
    assert!(
        view.detectors
            .iter()
            .all(|d| d.active || d.name == "exposure"),
        "{:?}",
        view.detectors
    );
    let exposure = view.detectors.iter().find(|d| d.name == "exposure");
    assert!(
        exposure.is_some_and(|d| !d.active
            && d.waiting_for
                .as_deref()
                .is_some_and(|w| w.contains("more scanned answers"))),
        "{exposure:?}"
    );
    assert!(!view.top_sequences.is_empty());
    assert!(view.top_sequences.len() <= 20);
    let transfer = view
        .endpoints
        .iter()
        .find(|e| e.operation == "POST /transfers")
        .unwrap();
    assert_eq!(transfer.volume.p99, 1);
    let rule = view
        .suggested_rules
        .iter()
        .find(|r| {
            r.operation == "GET /accounts/{id}/balance"
                && r.after == vec!["GET /accounts".to_owned()]
        })
        .expect("balance requires accounts");
    assert!(rule.yaml.contains("kind: SequenceRule"), "{}", rule.yaml);
    let parsed: serde_json::Value = serde_yaml_ng::from_str(&rule.yaml).unwrap();
    assert_eq!(parsed["spec"]["requires"]["after"][0], "GET /accounts");
}

/// Sessions that hold several tasks (the same customer, one `sub`): the step that starts the
/// next task is common after the previous step but unseen after the long context spanning both
/// tasks; back-off agreement does not flag it. A pause of `journeyGap` starts a new journey: a
/// skipped step right after it is still flagged, a task resumed after it is not.
#[test]
fn multi_task_sessions_are_judged_with_back_off_and_journey_gaps() {
    // No ageing during the simulated days of traffic.
    let mut h = Harness::new(LearningConfig {
        window_seconds: 30 * 24 * 3600,
        ..small_api()
    });
    // Learning: every customer does two tasks in one session, 20 s apart or (every other
    // customer) 7 minutes apart.
    for user in 0..400 {
        let f = h.benign(user, user);
        assert!(f.is_empty(), "{f:?}");
        if user % 2 == 0 {
            h.now -= 5 * MIN - 20_000;
        } else {
            h.now += 2 * MIN;
        }
        let f = h.benign(user, user + 1);
        assert!(f.is_empty(), "{f:?}");
    }
    assert!(h.analyzer.view().mature);
    // New customers do three to five tasks in one session, 20 s apart, or after idle gaps.
    let mut flagged = Vec::new();
    for user in 20_000..20_060 {
        for task in 0..(3 + user % 3) {
            let f = h.benign(user, user * 7 + task);
            if !f.is_empty() {
                flagged.push(f);
            }
            if user % 2 == 0 {
                h.now -= 5 * MIN - 20_000;
            } else {
                h.now += 2 * MIN;
            }
        }
    }
    assert!(
        flagged.is_empty(),
        "multi-task sessions flagged: {flagged:?}"
    );

    // A session that read its transactions, went idle for 7 minutes and then sends a transfer
    // with no lookup: unlikely as the first step of a journey and after the history across
    // the gap.
    let f = h.benign(30_001, 1);
    assert!(f.is_empty(), "{f:?}");
    h.now += 2 * MIN;
    let f = h.send(
        req("jwt:sub=30001", "POST /transfers").with_body(serde_json::json!({
            "fromAccount": "1000", "toAccount": "5001", "amount": 100, "currency": "EUR", "memo": "x"})),
    );
    // The account is none the session used before, so identity lineage (`detect::lineage`)
    // flags it too; the sequence finding is the one this test is about.
    assert_eq!(
        kinds(&f),
        vec![FindingKind::UnlikelySequence, FindingKind::IdentityLineage],
        "{f:?}"
    );
    assert!(
        f[0].explanation
            .contains("as the first request after the session was idle for 7 minutes"),
        "{}",
        f[0].explanation
    );

    // A customer looks at the balance, leaves for 7 minutes and comes back to the transfer
    // (resuming the task): not flagged.
    let transfer = || {
        req("jwt:sub=resume", "POST /transfers").with_body(serde_json::json!({
            "fromAccount": "1000", "toAccount": "5001", "amount": 100, "currency": "EUR", "memo": "x"}))
    };
    h.send(req("jwt:sub=resume", "GET /accounts"));
    h.send(req("jwt:sub=resume", "GET /accounts/{id}/balance").with_path("id", "1000"));
    h.now += 7 * MIN;
    let f = h.send(transfer());
    assert!(f.is_empty(), "{f:?}");
}

/// Pre-maturity poisoning: an enumerator active while the model was young is learned (nothing
/// is flagged before maturity), yet it cannot define the tail of the object distribution, so a
/// later identical enumeration right after maturity is still caught at the honest threshold.
#[test]
fn an_early_enumerator_does_not_hide_a_later_one() {
    let mut h = Harness::new(LearningConfig {
        min_requests: 300,
        min_sessions: 50,
        // No ageing during the test: the early session must still be in the model.
        window_seconds: 30 * 24 * 3600,
        ..LearningConfig::default()
    });
    let enumerate = |h: &mut Harness, session: &str| -> Option<usize> {
        h.send(req(session, "GET /accounts"));
        let mut first = None;
        for i in 0..40 {
            let f = h.send(
                req(session, "GET /accounts/{id}/balance")
                    .with_path("id", &format!("{}", 3000 + i)),
            );
            if first.is_none() && kinds(&f).contains(&FindingKind::Enumeration) {
                first = Some(i + 1);
            }
        }
        first
    };
    for user in 0..5 {
        assert!(h.benign(user, user).is_empty());
    }
    assert_eq!(
        enumerate(&mut h, "jwt:sub=early"),
        None,
        "nothing is mature yet"
    );
    let model = h.model();
    let balance = model.op_index("GET /accounts/{id}/balance").unwrap();
    // It was learned: one window reached about 40 distinct objects (at least bucket 32).
    assert!(model.operation(balance).unwrap().objects.reach.len() >= 20);
    for user in 5..60 {
        assert!(h.benign(user, user).is_empty());
    }
    let first = enumerate(&mut h, "jwt:sub=later").expect("the later enumeration is caught");
    assert!((7..=9).contains(&first), "detected after {first} ids");
}

/// The long tail: after maturity, a rare operation that fits the learned structure is not
/// flagged for a clean session and is discovered (learned, listed); an unknown prefix is
/// flagged at once; a session that got a 404 on an unknown path is flagged on the next one and
/// teaches nothing; the sequence detector does not judge an operation learned from too few
/// requests, and the view says so.
#[test]
fn rare_operations_are_discovered_and_probes_still_flagged() {
    let mut h = Harness::new(small_api());
    // A rare operation seen twice while learning.
    h.send(req("jwt:sub=early-1", "GET /accounts"));
    h.send(req("jwt:sub=early-1", "PUT /accounts/{id}/nickname").with_path("id", "1000"));
    h.send(req("jwt:sub=early-2", "GET /accounts"));
    h.send(req("jwt:sub=early-2", "PUT /accounts/{id}/nickname").with_path("id", "1002"));
    h.train(200);
    let rare = "PUT /accounts/{id}/nickname";
    for user in 0..3u32 {
        let s = format!("jwt:sub=tail-{user}");
        h.send(req(&s, "GET /accounts"));
        let account = format!("{}", 1000 + user * 2);
        let f = h.send(req(&s, rare).with_path("id", &account));
        assert!(f.is_empty(), "rare operation under a known resource: {f:?}");
    }
    // A brand-new operation of a known resource, from a clean session.
    let s = "jwt:sub=release";
    h.send(req(s, "GET /accounts"));
    let f = h.send(req(s, "GET /accounts/{id}/statements").with_path("id", "1000"));
    assert!(f.is_empty(), "new endpoint of a new release: {f:?}");
    let model = h.model();
    let stats = model.operation(model.op_index(rare).unwrap()).unwrap();
    assert_eq!(stats.requests, 5, "learned from after maturity");
    assert!(stats.discovered_ms > 0);
    let view = h.analyzer.view();
    assert!(
        view.discovered
            .iter()
            .any(|d| d.operation == "GET /accounts/{id}/statements" && d.requests == 1),
        "{:?}",
        view.discovered
    );
    let not_judged = view
        .not_yet_judged
        .iter()
        .find(|n| n.operation == rare)
        .unwrap();
    assert!(
        not_judged
            .reasons
            .iter()
            .any(|r| r.starts_with("unlikelySequence")),
        "{not_judged:?}"
    );

    // Unknown prefix: flagged at once.
    let f = h.send(req("jwt:sub=probe-a", "GET /admin/users").status(404));
    assert!(kinds(&f).contains(&FindingKind::ShadowEndpoint), "{f:?}");
    // Fits the structure, answered 404: not flagged, but the next unknown path is.
    let s = "jwt:sub=probe-b";
    h.send(req(s, "GET /accounts"));
    let f = h.send(
        req(s, "GET /accounts/{id}/keys")
            .with_path("id", "1000")
            .status(404),
    );
    assert!(f.is_empty(), "{f:?}");
    let before = h.model();
    let f = h.send(req(s, "GET /accounts/{id}/secrets").with_path("id", "1000"));
    assert!(kinds(&f).contains(&FindingKind::ShadowEndpoint), "{f:?}");
    assert!(f[0].explanation.contains("404/405"), "{}", f[0].explanation);
    // The probing session teaches nothing, even a success.
    h.send(req(s, "GET /accounts"));
    assert_eq!(h.model().requests, before.requests);
}

#[test]
fn failed_logins_answered_with_200_are_read_from_the_body() {
    let mut h = Harness::new(small_api());
    h.login_bodies = true;
    h.train(400);
    // What a login answer looks like was learned, and failed logins were not learned from.
    let model = h.model();
    let login = model
        .operations
        .iter()
        .find(|o| o.template == "POST /login")
        .unwrap();
    // (The counts were halved by ageing, so they are compared with each other.)
    let o = login.outcomes;
    assert_eq!(o.read, o.credential_answers + o.error_answers, "{o:?}");
    assert!(
        o.error_answers > 0 && o.error_answers * 20 < o.read,
        "{o:?}"
    );
    assert!(
        login.requests.abs_diff(o.credential_answers) <= 1,
        "failed logins are no successful traffic: {} learned, {o:?}",
        login.requests
    );
    assert!(login.is_auth_like());
    assert_eq!(login.failures(), o.error_answers);
    // Lookups of objects that do not exist, answered 200 with an error body, count as
    // not-found answers (one session window in ten got one) and are not learned from.
    assert!(model.not_found.windows() >= 20, "{:?}", model.not_found);
    let balance = model
        .operations
        .iter()
        .find(|o| o.template == "GET /accounts/{id}/balance")
        .unwrap();
    assert!(balance.outcomes.error_answers > 0 && !balance.outcomes.grants_credentials());
    assert!(!login.outcomes.is_zero() && balance.object_lookups > 0);
    // Honest users, mistypes included, are not flagged.
    for user in 10_000..10_050 {
        let f = h.benign(user, user);
        assert!(f.is_empty(), "{f:?}");
    }
    // Stuffing from one client, every failure answered 200: caught like the 401 case.
    let mut stuffing = None;
    for i in 0..30 {
        let mut r = req("ip:stuffer", "POST /login")
            .with_body(serde_json::json!({"username": format!("victim{i}"), "password": "123456"}))
            .answer(LOGIN_FAILED);
        r.client = [203, 0, 113, 9];
        let f = h.send(r);
        if stuffing.is_none() && kinds(&f).contains(&FindingKind::CredentialStuffing) {
            stuffing = Some(i + 1);
        }
    }
    assert!(matches!(stuffing, Some(5..=6)), "{stuffing:?}");
}

#[test]
fn a_blocked_high_finding_quarantines_the_session_and_a_stuffer_its_address() {
    // Request shape quarantines only when configured to; stuffing by default.
    let mut detectors = DetectorsConfig::all(Action::Block);
    detectors.request_shape.quarantine = Some(crate::config::Duration::from_secs(15 * 60));
    let mut h = Harness::with_detectors(small_api(), &detectors);
    h.train(400);
    // Mass assignment (high severity, blocks): the session is refused from then on, whatever
    // it asks next, and a fresh session of another user is not.
    h.send(req("jwt:sub=mass", "GET /accounts"));
    h.send(req("jwt:sub=mass", "GET /accounts/{id}/balance").with_path("id", "1000"));
    let f = h.send(req("jwt:sub=mass", "POST /transfers").with_body(serde_json::json!({
        "fromAccount": "1000", "toAccount": "5001", "amount": 100, "currency": "EUR", "memo": "x", "approved": true})));
    assert_eq!(kinds(&f), vec![FindingKind::ShapeDeviation], "{f:?}");
    let f = h.send(req("jwt:sub=mass", "GET /accounts"));
    assert_eq!(kinds(&f), vec![FindingKind::Quarantined], "{f:?}");
    assert!(
        f[0].explanation
            .contains("after a blocked ShapeDeviation finding"),
        "{}",
        f[0].explanation
    );
    assert!(h.benign(20_000, 1).is_empty());
    // Fifteen minutes later, the session may come back.
    h.now += 15 * MIN;
    let f = h.send(req("jwt:sub=mass", "GET /accounts"));
    assert!(!kinds(&f).contains(&FindingKind::Quarantined), "{f:?}");
    // A stuffer caught once is refused from any new session of its address.
    let mut caught = false;
    for i in 0..10 {
        let session = format!("ip:stuffer-{i}");
        let mut r = req(&session, "POST /login")
            .with_body(serde_json::json!({"username": format!("victim{i}"), "password": "123456"}))
            .status(401);
        r.client = [203, 0, 113, 9];
        let f = h.send(r);
        if caught {
            assert_eq!(kinds(&f), vec![FindingKind::Quarantined], "{f:?}");
            assert!(
                f[0].explanation.contains("client address 203.0.113.9"),
                "{}",
                f[0].explanation
            );
        }
        caught |= kinds(&f).contains(&FindingKind::CredentialStuffing);
    }
    assert!(caught);
    let mut other = req("jwt:sub=other", "GET /accounts");
    other.client = [203, 0, 113, 9];
    assert_eq!(kinds(&h.send(other)), vec![FindingKind::Quarantined]);
}

#[test]
fn crossing_a_window_boundary_does_not_double_the_volume_allowance() {
    let mut h = Harness::without_quarantine(small_api());
    h.train(400);
    let window = LearningConfig::default().volume_window.as_millis_u64();
    // 19 requests end one second before a window boundary (the threshold is 20).
    let boundary = (h.now / window + 2) * window;
    h.now = boundary - 19_000;
    h.send(req("jwt:sub=edge", "GET /accounts"));
    for page in 1..=18 {
        let f =
            h.send(req("jwt:sub=edge", "GET /transactions").with_query("page", &page.to_string()));
        assert!(
            !kinds(&f).contains(&FindingKind::Volume),
            "page {page}: {f:?}"
        );
    }
    assert!(h.now >= boundary, "the next request is in the next window");
    // In the next window the previous one still counts almost fully: flagged at once, not
    // after another 20 requests.
    let mut flagged = None;
    for page in 19..=40 {
        let f =
            h.send(req("jwt:sub=edge", "GET /transactions").with_query("page", &page.to_string()));
        if let Some(v) = f.iter().find(|f| f.kind == FindingKind::Volume) {
            flagged = Some((page, v.explanation.clone()));
            break;
        }
    }
    let (page, explanation) = flagged.expect("volume flagged after the boundary");
    // 3–4 requests into the new window (the carried 18 are weighted down a little, and
    // rounded down); a fixed window would have allowed 20 more.
    assert!(page <= 23, "flagged at page {page}");
    assert!(explanation.contains("of the 18 before it"), "{explanation}");
}

/// A transfer body of the kind the benign journeys send.
fn transfer_body(from: &str, amount: u32) -> serde_json::Value {
    serde_json::json!({
        "fromAccount": from, "toAccount": "5010", "amount": amount, "currency": "EUR",
        "memo": "invoice 10"})
}

/// Every detector blocks but lineage (which judges re-sent values on its own), none
/// quarantines.
fn replay_harness() -> Harness {
    let mut detectors = DetectorsConfig::all(Action::Block);
    for d in [
        &mut detectors.shadow_endpoint,
        &mut detectors.request_shape,
        &mut detectors.unlikely_sequence,
        &mut detectors.volume,
        &mut detectors.enumeration,
        &mut detectors.credential_stuffing,
    ] {
        d.quarantine = Some(crate::config::Duration::from_secs(0));
    }
    detectors.identity_lineage.enabled = false;
    Harness::with_detectors(small_api(), &detectors)
}

#[test]
fn an_identical_repeat_of_a_successful_transfer_is_a_replay() {
    let mut h = replay_harness();
    h.train(800);
    let model = h.model();
    let transfers = model
        .operations
        .iter()
        .find(|o| o.template == "POST /transfers")
        .unwrap();
    // Every learned transfer was counted, none repeated its session's previous one.
    assert_eq!(transfers.repeats.identical, 0);
    assert_eq!(transfers.repeats.requests, transfers.requests);

    let s = "jwt:sub=10004";
    let from = "21008";
    assert!(h.send(req(s, "GET /accounts")).is_empty());
    assert!(
        h.send(req(s, "GET /accounts/{id}/balance").with_path("id", from))
            .is_empty()
    );
    // A transfer the application failed, retried as it was: a retry, not a replay.
    let failed = h.send(
        req(s, "POST /transfers")
            .with_body(transfer_body(from, 120))
            .status(500),
    );
    assert!(failed.is_empty(), "{failed:?}");
    let retried = h.send(req(s, "POST /transfers").with_body(transfer_body(from, 120)));
    assert!(retried.is_empty(), "{retried:?}");
    // The same transfer again after it succeeded: once is what a client that lost the answer
    // does, never judged (`replay::JUDGED_FROM_REPEAT`).
    let again = h.send(req(s, "POST /transfers").with_body(transfer_body(from, 120)));
    assert!(again.is_empty(), "{again:?}");
    // A third copy is a replay: no learned transfer repeated its session's previous one.
    let replayed = h.send(req(s, "POST /transfers").with_body(transfer_body(from, 120)));
    assert_eq!(
        kinds(&replayed),
        vec![FindingKind::UnlikelySequence],
        "{replayed:?}"
    );
    assert_eq!(replayed[0].evidence["replay"], true);
    assert_eq!(replayed[0].evidence["identicalRepeat"], 2);
    assert!(
        replayed[0].explanation.contains("for the 3rd time")
            && replayed[0].explanation.contains("(a replay)")
            && replayed[0].explanation.contains("0 repeated"),
        "{}",
        replayed[0].explanation
    );
    // And so is the next one, which the application refused as a duplicate, and the one
    // after it (a refused copy does not reset the count).
    let replayed = h.send(
        req(s, "POST /transfers")
            .with_body(transfer_body(from, 120))
            .status(409),
    );
    assert_eq!(
        kinds(&replayed),
        vec![FindingKind::UnlikelySequence],
        "{replayed:?}"
    );
    let replayed = h.send(req(s, "POST /transfers").with_body(transfer_body(from, 120)));
    assert_eq!(replayed[0].evidence["identicalRepeat"], 4, "{replayed:?}");
    // A different transfer right after is an ordinary step.
    let other = h.send(req(s, "POST /transfers").with_body(transfer_body(from, 121)));
    assert!(other.is_empty(), "{other:?}");
    // The session was caught before it went on: its unflagged identical repeat taught nothing
    // either (a replayer would otherwise teach the model that replays are normal).
    let after = h.model();
    let transfers = after
        .operations
        .iter()
        .find(|o| o.template == "POST /transfers")
        .unwrap();
    assert_eq!(transfers.repeats.identical, 0);
}

/// An API whose only non-idempotent operation is too thin to bound the probability of an
/// identical repeat alone (120 transfers) but whose changes (`PUT`, learned as evidence) make
/// the pool enough: a replayed transfer is judged. `PUT` copies themselves are never judged.
#[test]
fn the_apis_put_requests_are_evidence_for_its_replays() {
    let mut h = replay_harness();
    for user in 0..240 {
        assert!(h.benign(user, user).is_empty());
        let s = format!("jwt:sub={user}");
        let email = serde_json::json!({ "email": format!("user{user}.{}@example.net", user % 7) });
        assert!(h.send(req(&s, "PUT /profile").with_body(email)).is_empty());
    }
    let model = h.model();
    let repeats = |template: &str| {
        model
            .operations
            .iter()
            .find(|o| o.template == template)
            .map(|o| o.repeats)
            .unwrap()
    };
    // The transfers alone cannot settle it (about 200 would be needed at Medium).
    assert!((100..180).contains(&repeats("POST /transfers").requests));
    assert!(repeats("PUT /profile").requests >= 200);

    let s = "jwt:sub=10004";
    assert!(h.send(req(s, "GET /accounts")).is_empty());
    let balance = req(s, "GET /accounts/{id}/balance").with_path("id", "21008");
    assert!(h.send(balance).is_empty());
    let body = transfer_body("21008", 120);
    for copy in 1..=2 {
        let found = h.send(req(s, "POST /transfers").with_body(body.clone()));
        assert!(found.is_empty(), "copy {copy}: {found:?}");
    }
    let found = h.send(req(s, "POST /transfers").with_body(body));
    assert_eq!(
        kinds(&found),
        vec![FindingKind::UnlikelySequence],
        "{found:?}"
    );
    assert_eq!(found[0].evidence["scope"], "api", "{found:?}");
    // The same e-mail saved four times: a PUT changes nothing the second time.
    let email = serde_json::json!({ "email": "same@example.net" });
    for _ in 0..4 {
        let found = h.send(req(s, "PUT /profile").with_body(email.clone()));
        assert!(found.is_empty(), "{found:?}");
    }
}

#[test]
fn an_honest_identical_repeat_is_learned_once_the_session_goes_on() {
    let mut h = replay_harness();
    h.train(400);
    let s = "jwt:sub=10006";
    let from = "21012";
    h.send(req(s, "GET /accounts"));
    h.send(req(s, "GET /accounts/{id}/balance").with_path("id", from));
    h.send(req(s, "POST /transfers").with_body(transfer_body(from, 130)));
    h.send(req(s, "POST /transfers").with_body(transfer_body(from, 130)));
    let identical = |h: &Harness| {
        h.model()
            .operations
            .iter()
            .find(|o| o.template == "POST /transfers")
            .map(|o| o.repeats.identical)
    };
    assert_eq!(identical(&h), Some(0), "not before the session went on");
    assert!(h.send(req(s, "GET /accounts")).is_empty());
    assert_eq!(identical(&h), Some(1));
}

/// A catalogue read without credentials (a session the client address names), then its books
/// opened with a token from the same address: the books were shown to the client
/// (`detect::shown`), so a reader who opens many of them is navigating. Titles nobody listed,
/// or that were listed to another address, still count as guessed.
#[test]
fn books_an_anonymous_listing_showed_the_address_are_not_counted_as_guessed() {
    let mut h = Harness::without_quarantine(small_api());
    // One anonymous catalogue page of 20 titles from `first`, answered to `client`.
    let page = |h: &mut Harness, client: [u8; 4], first: u32| -> Vec<String> {
        let titles: Vec<String> = (first..first + 20).map(|i| format!("title-{i}")).collect();
        let books: Vec<serde_json::Value> = titles
            .iter()
            .map(|t| serde_json::json!({ "title": t, "rating": 4.5 }))
            .collect();
        let body = serde_json::json!({ "books": books }).to_string();
        let session = format!("ip:{}", IpAddr::from(client));
        let listing = Req {
            client,
            ..req(&session, "GET /books")
        };
        h.send(
            listing
                .with_query("page", &(first / 20).to_string())
                .answer(&body),
        );
        titles
    };
    let open = |h: &mut Harness, client: [u8; 4], session: &str, title: &str| {
        let book = Req {
            client,
            ..req(session, "GET /books/{title}")
        };
        h.send(book.with_path("title", title))
    };
    // Readers: a page or two, then two to five of the books it listed.
    for user in 0..200u32 {
        let client = [
            10,
            1,
            u8::try_from(user / 100).unwrap(),
            u8::try_from(user % 100).unwrap(),
        ];
        let session = format!("jwt:sub=reader{user}");
        let titles = page(&mut h, client, (user * 20) % 400);
        for title in titles.iter().take(2 + (user % 4) as usize) {
            open(&mut h, client, &session, title);
        }
        h.now += 2 * MIN;
    }

    // The learned titles came from a listing answered to the reader's address (all but the
    // first reader's: the first answer of an operation is not read yet).
    let model = h.model();
    assert!(model.requests >= 500, "mature: {} requests", model.requests);
    let book = model.op_index("GET /books/{title}").unwrap();
    let origins = &model.operation(book).unwrap().lineage.params["path.title"];
    assert!(origins.response * 100 >= origins.seen * 99, "{origins:?}");
    // An honest reader opens twelve books the catalogue listed: nothing to flag.
    let reader = [10, 2, 0, 1];
    let mut listed = page(&mut h, reader, 0);
    listed.extend(page(&mut h, reader, 20));
    for title in listed.iter().take(12) {
        let findings = open(&mut h, reader, "jwt:sub=returning", title);
        assert!(findings.is_empty(), "{title}: {:?}", kinds(&findings));
    }

    // The same twelve titles from an address the catalogue never answered, and twelve
    // titles nobody listed from the reader's own address: guessed (whichever of the two
    // detectors that judge guessed objects sees it first).
    let enumerated = |h: &mut Harness, client: [u8; 4], session: &str, titles: &[String]| {
        titles.iter().any(|t| {
            kinds(&open(h, client, session, t))
                .iter()
                .any(|k| matches!(k, FindingKind::Enumeration | FindingKind::IdentityLineage))
        })
    };
    assert!(enumerated(
        &mut h,
        [10, 3, 0, 1],
        "jwt:sub=elsewhere",
        &listed[..12]
    ));
    let unlisted: Vec<String> = (0..12).map(|i| format!("title-{}", 5_000 + i)).collect();
    assert!(enumerated(&mut h, reader, "jwt:sub=guesser", &unlisted));
}

/// The peer baselines stay frozen for the counting window when the replica adopts the model
/// merged from every replica (docs/scale-out.md): the merged model may hold what concurrent
/// enumerators taught while they climbed (on other replicas, or here before a report carried
/// it away from the take-back), and a threshold recomputed from it at every adoption would
/// creep ahead of them, as one replica's frozen baselines do not (`detect::baselines`).
#[test]
fn adopting_the_merged_model_keeps_the_window_s_frozen_baselines() {
    let mut h = Harness::without_quarantine(small_api());
    h.train(400);
    // The baselines of this window are frozen by the next exchange.
    h.send(req("jwt:sub=warm", "GET /accounts"));
    // This replica's report, merged (alone here) with what the others taught.
    let mut merged = h.analyzer.take_delta();
    let op = merged.op_index("GET /accounts/{id}/balance").unwrap();
    let stats = merged.operation_mut(op).unwrap();
    // Windows that climbed to 40 distinct objects, 5 % of those that used the operation: no
    // more windows (the baseline did not grow), only a tail far above the frozen p99.
    let climbers = stats.volume.windows() / 20 + 1;
    for _ in 0..climbers {
        for count in 1..=40 {
            stats.objects.record_reached(count);
        }
    }
    h.analyzer.replace_model(merged);
    h.send(req("jwt:sub=bola", "GET /accounts"));
    let mut first = None;
    for i in 0..40 {
        let f = h.send(
            req("jwt:sub=bola", "GET /accounts/{id}/balance")
                .with_path("id", &format!("{}", 3000 + i)),
        );
        if first.is_none() && kinds(&f).contains(&FindingKind::Enumeration) {
            first = Some(i + 1);
        }
    }
    let first = first.expect("enumeration detected with the window's frozen threshold");
    assert!((7..=9).contains(&first), "detected after {first} ids");
}

/// A replica that takes the authentication attempts another one decided (the facts it
/// pushes, `proxy::route::facts`) judges the API-wide activity as the deciding one does: a
/// campaign of one failure per address that another replica saw is a surge here too; with
/// the failures per address alone (the facts shared before), it is not.
#[test]
fn authentication_attempts_another_replica_decided_count_as_decided_here() {
    let mut deciding = Harness::new(small_api());
    let mut told = Harness::new(small_api());
    let mut failures_only = Harness::new(small_api());
    for h in [&mut deciding, &mut told, &mut failures_only] {
        h.train(400);
    }
    deciding.exporting = true;
    let member = |i: u32| [203, 0, 113, u8::try_from(i + 1).unwrap()];
    for i in 0..30u32 {
        let session = format!("ip:campaign-{i}");
        let mut r = req(&session, "POST /login")
            .with_body(serde_json::json!({"username": format!("victim{i}"), "password": "123456"}))
            .status(401);
        r.client = member(i);
        assert!(deciding.send(r).is_empty(), "one failure per address");
        for facts in deciding.facts.drain(..) {
            let attempt = facts.attempt.clone().unwrap();
            assert_eq!(attempt.operation, "POST /login");
            assert!(attempt.failed && attempt.identity.is_some(), "{attempt:?}");
            assert!(facts.failure.is_some(), "{facts:?}");
            let json = serde_json::to_string(&facts).unwrap();
            assert!(
                !json.contains("victim") && !json.contains("123456"),
                "{json}"
            );
            assert_eq!(
                told.analyzer.remember_address_facts(&facts, deciding.now),
                0
            );
            let without = AddressFacts {
                attempt: None,
                ..facts
            };
            failures_only
                .analyzer
                .remember_address_facts(&without, deciding.now);
        }
    }
    // An address of the campaign tries another identity: the surge, as where it was decided.
    let again = || {
        let mut r = req("ip:campaign-again", "POST /login")
            .with_body(serde_json::json!({"username": "victim-next", "password": "123456"}))
            .status(401);
        r.client = member(0);
        r
    };
    told.now = deciding.now;
    failures_only.now = deciding.now;
    assert_eq!(
        kinds(&told.send(again())),
        vec![FindingKind::CredentialStuffing]
    );
    assert_eq!(
        kinds(&deciding.send(again())),
        vec![FindingKind::CredentialStuffing]
    );
    assert!(failures_only.send(again()).is_empty());

    // Skipped, not recorded: an operation not learned here, a time beyond the clock skew or
    // older than the counting window.
    let now = told.now;
    let attempt = |operation: &str, at_ms: u64| AddressFacts {
        address: Some(IpAddr::from([198, 51, 100, 1])),
        attempt: Some(AuthAttempt {
            operation: operation.to_owned(),
            at_ms,
            identity: Some(7),
            failed: true,
        }),
        ..AddressFacts::default()
    };
    let a = &told.analyzer;
    assert_eq!(
        a.remember_address_facts(&attempt("POST /nowhere", now), now),
        1
    );
    assert_eq!(
        a.remember_address_facts(&attempt("POST /login", now + 10 * MIN), now),
        1
    );
    assert_eq!(
        a.remember_address_facts(&attempt("POST /login", now - 30 * MIN), now),
        1
    );
    assert_eq!(
        a.remember_address_facts(&attempt("POST /login", now - 1000), now),
        0
    );
}

/// One report of `h` to an operator that holds `merged` (the delta over the wire, merged),
/// and the adoption of the operator's answer, as `report::client` does.
fn report(h: &Harness, merged: &mut LearnedModel) {
    if let Some(bytes) = h.analyzer.take_delta_bytes() {
        merged.merge(&LearnedModel::from_bytes(&bytes).unwrap());
    }
    h.analyzer.adopt_model_bytes(&merged.to_bytes()).unwrap();
}

/// A session reading the transactions again and again (the pages honest sessions read) until
/// the volume detector flags it, nothing else before (at most 60 requests); `before` runs
/// before each request. Returns the request flagged and the finding's evidence.
fn scrape(
    h: &mut Harness,
    session: &str,
    mut before: impl FnMut(&mut Harness, u32),
) -> Option<(u32, serde_json::Value)> {
    assert!(h.send(req(session, "GET /accounts")).is_empty());
    let balance = req(session, "GET /accounts/{id}/balance").with_path("id", "1000");
    assert!(h.send(balance).is_empty());
    for n in 1..=60u32 {
        before(h, n);
        let page = (n - 1) % 3 + 1;
        let f = h.send(req(session, "GET /transactions").with_query("page", &page.to_string()));
        if let Some(v) = f.iter().find(|f| f.kind == FindingKind::Volume) {
            return Some((n, v.evidence.clone()));
        }
        assert!(f.is_empty(), "request {n}: {:?}", kinds(&f));
    }
    None
}

/// An enumerator of balances until the enumeration detector flags it, nothing else before
/// (at most 40 ids); `before` runs before each id. Returns how many ids it sent.
fn enumerate(h: &mut Harness, session: &str, mut before: impl FnMut(&mut Harness, u32)) -> u32 {
    assert!(h.send(req(session, "GET /accounts")).is_empty());
    for i in 1..=40u32 {
        before(h, i);
        let f = h.send(
            req(session, "GET /accounts/{id}/balance").with_path("id", &format!("{}", 3000 + i)),
        );
        if kinds(&f).contains(&FindingKind::Enumeration) {
            return i;
        }
        assert!(f.is_empty(), "id {i}: {:?}", kinds(&f));
    }
    40
}

/// A histogram's counts without trailing zeros (how a take-back leaves them does not matter).
fn reach(h: &crate::model::ReachHistogram) -> Vec<u64> {
    let mut reach = h.reach.clone();
    while reach.last() == Some(&0) {
        reach.pop();
    }
    reach
}

/// A session flagged after a report carried away what it taught its counting window: the
/// take-back lowers the replica's model below what it reported, and the next delta carries
/// that (`model::taken_back`), so the operator's merged model, and the replica's after it
/// adopted it, hold exactly what one replica without reports learns from the same traffic:
/// the scraper's request counts, the enumerator's object counts and its value without an
/// origin (`detect::lineage`) all taken back.
#[test]
fn a_take_back_after_a_report_is_taken_back_from_the_merged_model() {
    let mut single = Harness::without_quarantine(small_api());
    let mut replica = Harness::without_quarantine(small_api());
    let mut operator = LearnedModel::default();
    single.train(400);
    replica.train(400);
    report(&replica, &mut operator);
    let before = single.model();
    // A report falls after the scraper's 10th page and after the enumerator's 4th id.
    let flagged = scrape(&mut single, "jwt:sub=scraper", |_, _| {});
    let reported = scrape(&mut replica, "jwt:sub=scraper", |h, page| {
        if page == 11 {
            report(h, &mut operator);
        }
    });
    assert_eq!(
        flagged.as_ref().map(|f| f.0),
        reported.as_ref().map(|f| f.0)
    );
    assert!(
        flagged.is_some_and(|(page, _)| page > 10),
        "flagged after the report"
    );
    let ids = enumerate(&mut single, "jwt:sub=enumerator", |_, _| {});
    let reported_ids = enumerate(&mut replica, "jwt:sub=enumerator", |h, i| {
        if i == 5 {
            report(h, &mut operator);
        }
    });
    assert_eq!(ids, reported_ids);
    assert!((5..40).contains(&ids), "flagged after the report: {ids}");

    // One replica without reports took it all back.
    let after = single.model();
    let taught = |model: &LearnedModel, template: &str| {
        let stats = model.operation(model.op_index(template).unwrap()).unwrap();
        (
            reach(&stats.volume),
            reach(&stats.objects),
            stats.lineage.params.clone(),
        )
    };
    for template in ["GET /transactions", "GET /accounts/{id}/balance"] {
        assert_eq!(
            taught(&before, template),
            taught(&after, template),
            "{template}"
        );
    }
    // The replica reports what it took back, and the merged model loses it too.
    report(&replica, &mut operator);
    for template in ["GET /transactions", "GET /accounts/{id}/balance"] {
        assert_eq!(
            taught(&operator, template),
            taught(&after, template),
            "{template}"
        );
    }
    assert_eq!(operator, after, "the merged model is the single replica's");
    assert_eq!(
        replica.model(),
        after,
        "and so is the replica's after adopting it"
    );
}

/// Scrapers flagged after a report carried their first pages away do not raise the volume
/// threshold of the next counting window. Before, the merged model kept those pages, and the
/// replica got them back with every adoption (its own take-back only lowered its counts below
/// the reported ones, and the next delta saturated at 0): each scraper left one more window
/// far above its peers, and the threshold rose with them.
#[test]
fn a_threshold_does_not_rise_for_attackers_flagged_after_a_report() {
    let window = LearningConfig::default().volume_window.as_millis_u64();
    let mut single = Harness::without_quarantine(small_api());
    let mut replica = Harness::without_quarantine(small_api());
    let mut operator = LearnedModel::default();
    for h in [&mut single, &mut replica] {
        h.train(400);
        // The scrapers below fit in one counting window.
        h.now = (h.now / window + 1) * window;
    }
    report(&replica, &mut operator);
    for s in 0..8 {
        let session = format!("jwt:sub=scraper{s}");
        let alone = scrape(&mut single, &session, |_, _| {});
        let with_report = scrape(&mut replica, &session, |h, page| {
            if page == 16 {
                report(h, &mut operator);
            }
        });
        assert!(
            alone.is_some() && with_report.is_some(),
            "scraper {s} flagged"
        );
        assert_eq!(alone.map(|f| f.0), with_report.map(|f| f.0), "scraper {s}");
        // And the next report, before the next scraper.
        report(&replica, &mut operator);
    }
    assert!(single.now < (single.now / window) * window + window);
    // The next counting window: the baselines are recomputed from the model.
    for h in [&mut single, &mut replica] {
        h.now = (h.now / window + 1) * window;
    }
    let (page, alone) = scrape(&mut single, "jwt:sub=next", |_, _| {}).unwrap();
    let (reported_page, with_report) = scrape(&mut replica, "jwt:sub=next", |_, _| {}).unwrap();
    assert_eq!(
        (
            reported_page,
            &with_report["threshold"],
            &with_report["p99"]
        ),
        (page, &alone["threshold"], &alone["p99"]),
        "the threshold did not rise: {with_report} vs {alone}"
    );
}

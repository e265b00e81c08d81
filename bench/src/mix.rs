//! The request mix every target receives: benign banking journeys, each request carrying the
//! session's bearer token and, for writes, a JSON body.
//!
//! One session walks a fixed cycle of journeys (30 requests, 24 distinct operations). The cycle
//! is ordered so that an honest session never breaks the benchmark's sequence rules
//! ([`crate::policy`]): a transfer always follows a balance lookup, a new payee always follows
//! the payee list, and a profile change is never followed by a new payee within 10 requests.
//! The same definition feeds the wrk Lua script (through a generated data file) and the Rust
//! fixed-rate generator, so every target and every tool sends byte-for-byte the same mix.

use std::fmt::Write as _;

use serde::Serialize;

/// One step of the cycle: method, path template and optional JSON body template.
///
/// Templates use `{{name}}` placeholders filled from [`SessionVars`].
#[derive(Debug, Clone, Copy, Serialize)]
pub struct Step {
    pub method: &'static str,
    pub path: &'static str,
    pub body: Option<&'static str>,
}

const fn get(path: &'static str) -> Step {
    Step {
        method: "GET",
        path,
        body: None,
    }
}

const fn with_body(method: &'static str, path: &'static str, body: &'static str) -> Step {
    Step {
        method,
        path,
        body: Some(body),
    }
}

/// The cycle one session repeats. Journeys: refresh, account overview, profile, cards,
/// information pages, transfer, lookup by phone, new payee with a transfer.
pub const CYCLE: &[Step] = &[
    // refresh
    with_body(
        "POST",
        "/api/v1/auth/refresh",
        r#"{"refreshToken":"{{refresh}}","deviceId":"{{device}}"}"#,
    ),
    // account overview
    get("/api/v1/accounts"),
    get("/api/v1/accounts/{{acct}}"),
    get("/api/v1/accounts/{{acct}}/balance"),
    get("/api/v1/accounts/{{acct}}/transactions?page=1&pageSize=20"),
    get("/api/v1/accounts/{{acct}}/transactions/{{tx}}"),
    // profile
    get("/api/v1/profile"),
    with_body(
        "PATCH",
        "/api/v1/profile",
        r#"{"email":"{{email}}","phone":"{{phone}}","address":{"city":"London","postcode":"EC1A 1BB"}}"#,
    ),
    get("/api/v1/settings"),
    with_body(
        "PUT",
        "/api/v1/settings",
        r#"{"language":"en-GB","marketingOptIn":false,"notifications":{"push":true,"email":false}}"#,
    ),
    // cards
    get("/api/v1/cards"),
    get("/api/v1/cards/{{card}}"),
    with_body(
        "POST",
        "/api/v1/cards/{{card}}/freeze",
        r#"{"reason":"misplaced","temporary":true}"#,
    ),
    // information pages
    get("/api/v1/fx/rates?base=EUR"),
    get("/api/v1/branches?city=London"),
    get("/api/v1/accounts/{{acct}}/statements"),
    get("/api/v1/notifications"),
    get("/api/v1/limits"),
    // transfer to a known payee
    get("/api/v1/accounts/{{acct}}/balance"),
    get("/api/v1/payees"),
    with_body(
        "POST",
        "/api/v1/transfers",
        r#"{"fromAccount":"{{acct}}","toPayee":"{{payee}}","amount":{{amount}},"currency":"EUR","reference":"Invoice {{tx}}"}"#,
    ),
    get("/api/v1/transfers/{{transfer}}"),
    // lookup by phone
    get("/api/v1/users/lookup?phone={{phoneq}}"),
    get("/api/v1/accounts/{{acct}}/transactions?page=2&pageSize=20"),
    // new payee, then a transfer to it, then remove an old payee
    get("/api/v1/payees"),
    with_body(
        "POST",
        "/api/v1/payees",
        r#"{"name":"Alex Doe","iban":"GB33BUKB2020155555{{payee4}}","reference":"rent"}"#,
    ),
    get("/api/v1/accounts/{{acct}}/balance"),
    with_body(
        "POST",
        "/api/v1/transfers",
        r#"{"fromAccount":"{{acct}}","toPayee":"{{payee2}}","amount":{{amount}},"currency":"EUR","reference":"Rent"}"#,
    ),
    get("/api/v1/transfers/{{transfer}}"),
    Step {
        method: "DELETE",
        path: "/api/v1/payees/{{payee}}",
        body: None,
    },
];

/// The distinct operations of the mix as `METHOD /templated/path` (24).
pub const OPERATIONS: &[&str] = &[
    "POST /api/v1/auth/refresh",
    "GET /api/v1/accounts",
    "GET /api/v1/accounts/{accountId}",
    "GET /api/v1/accounts/{accountId}/balance",
    "GET /api/v1/accounts/{accountId}/transactions",
    "GET /api/v1/accounts/{accountId}/transactions/{transactionId}",
    "GET /api/v1/profile",
    "PATCH /api/v1/profile",
    "GET /api/v1/settings",
    "PUT /api/v1/settings",
    "GET /api/v1/cards",
    "GET /api/v1/cards/{cardId}",
    "POST /api/v1/cards/{cardId}/freeze",
    "GET /api/v1/fx/rates",
    "GET /api/v1/branches",
    "GET /api/v1/accounts/{accountId}/statements",
    "GET /api/v1/notifications",
    "GET /api/v1/limits",
    "GET /api/v1/payees",
    "POST /api/v1/transfers",
    "GET /api/v1/transfers/{transferId}",
    "GET /api/v1/users/lookup",
    "POST /api/v1/payees",
    "DELETE /api/v1/payees/{payeeId}",
];

/// The per-session values substituted into the templates. Derived from the session index
/// only, so the generated data file and the Rust generator agree.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SessionVars {
    pub sub: String,
    pub acct: String,
    pub tx: String,
    pub card: String,
    pub payee: String,
    pub payee2: String,
    pub payee4: String,
    pub transfer: String,
    pub phone: String,
    pub phoneq: String,
    pub email: String,
    pub refresh: String,
    pub device: String,
    pub amount: String,
}

/// A fixed, well-mixed 64-bit function of the index (SplitMix64's finaliser), used to give
/// sessions varied but reproducible identifiers.
pub fn mix64(index: u64) -> u64 {
    let mut z = index.wrapping_add(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

impl SessionVars {
    /// The values of session `index`.
    pub fn for_index(index: u64) -> Self {
        let h = mix64(index);
        let h2 = mix64(h);
        Self {
            sub: format!("cust-{index:07}"),
            acct: format!("{}", 40_000_000 + index * 2),
            tx: format!("{}", 900_000_000 + (h % 99_000_000)),
            card: format!("{:016x}", h2),
            payee: format!("{}", 7_000_000 + index),
            payee2: format!("{}", 8_000_000 + index),
            payee4: format!("{:04}", index % 10_000),
            transfer: format!(
                "{:08x}-{:04x}-4{:03x}-a{:03x}-{:012x}",
                (h >> 32) as u32,
                (h >> 16) as u16,
                (h as u16) & 0x0fff,
                (h2 >> 52) as u16 & 0x0fff,
                h2 & 0xffff_ffff_ffff
            ),
            phone: format!("+4477009{:05}", index % 100_000),
            phoneq: format!("%2B4477009{:05}", index % 100_000),
            email: format!("cust{index}@example.org"),
            refresh: format!("rt-{:016x}{:016x}", h, h2),
            device: format!("dev-{:08x}", (h2 >> 16) as u32),
            amount: format!("{}.{:02}", 5 + h % 900, h2 % 100),
        }
    }

    fn get(&self, name: &str) -> Option<&str> {
        Some(match name {
            "sub" => &self.sub,
            "acct" => &self.acct,
            "tx" => &self.tx,
            "card" => &self.card,
            "payee" => &self.payee,
            "payee2" => &self.payee2,
            "payee4" => &self.payee4,
            "transfer" => &self.transfer,
            "phone" => &self.phone,
            "phoneq" => &self.phoneq,
            "email" => &self.email,
            "refresh" => &self.refresh,
            "device" => &self.device,
            "amount" => &self.amount,
            _ => return None,
        })
    }

    /// The names of the placeholders, in the column order of the data file.
    pub const COLUMNS: [&'static str; 14] = [
        "sub", "acct", "tx", "card", "payee", "payee2", "payee4", "transfer", "phone", "phoneq",
        "email", "refresh", "device", "amount",
    ];

    /// Fills `{{name}}` placeholders of `template` into `out`.
    pub fn fill(&self, template: &str, out: &mut String) {
        let mut rest = template;
        while let Some(start) = rest.find("{{") {
            out.push_str(&rest[..start]);
            let after = &rest[start + 2..];
            match after.find("}}") {
                Some(end) => {
                    let name = &after[..end];
                    match self.get(name) {
                        Some(value) => out.push_str(value),
                        None => {
                            out.push_str("{{");
                            out.push_str(name);
                            out.push_str("}}");
                        }
                    }
                    rest = &after[end + 2..];
                }
                None => {
                    out.push_str(&rest[start..]);
                    rest = "";
                }
            }
        }
        out.push_str(rest);
    }
}

/// A concrete request of the mix.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConcreteRequest {
    pub method: &'static str,
    pub path: String,
    pub body: Option<String>,
}

/// Builds step `step` (modulo the cycle) for a session.
pub fn request(vars: &SessionVars, step: usize) -> ConcreteRequest {
    let s = CYCLE[step % CYCLE.len()];
    let mut path = String::with_capacity(s.path.len() + 32);
    vars.fill(s.path, &mut path);
    let body = s.body.map(|b| {
        let mut out = String::with_capacity(b.len() + 64);
        vars.fill(b, &mut out);
        out
    });
    ConcreteRequest {
        method: s.method,
        path,
        body,
    }
}

/// Writes the data file the wrk Lua script loads: a Lua chunk returning the cycle; the
/// sessions (one line each, tab-separated: token then [`SessionVars::COLUMNS`]) go to a second file.
pub fn lua_cycle() -> String {
    let mut out =
        String::from("-- generated by ordo-bench: the request cycle of one session\nreturn {\n");
    for s in CYCLE {
        let _ = write!(out, "  {{ method = {:?}, path = {:?}", s.method, s.path);
        if let Some(b) = s.body {
            let _ = write!(out, ", body = {}", lua_long_string(b));
        }
        out.push_str(" },\n");
    }
    out.push_str("}\n");
    out
}

fn lua_long_string(s: &str) -> String {
    let mut level = 0;
    loop {
        let eq = "=".repeat(level);
        if !s.contains(&format!("]{eq}]")) {
            return format!("[{eq}[{s}]{eq}]");
        }
        level += 1;
    }
}

/// One line of the sessions file: the bearer token and the session's values, tab-separated.
pub fn session_line(token: &str, vars: &SessionVars) -> String {
    let mut line = String::with_capacity(512);
    line.push_str(token);
    for c in SessionVars::COLUMNS {
        line.push('\t');
        line.push_str(vars.get(c).unwrap_or_default());
    }
    line
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cycle_has_the_declared_operations() {
        assert_eq!(CYCLE.len(), 30);
        assert_eq!(OPERATIONS.len(), 24);
        let distinct: std::collections::BTreeSet<(&str, String)> = CYCLE
            .iter()
            .map(|s| {
                let path = s.path.split('?').next().unwrap_or(s.path);
                (
                    s.method,
                    path.replace("{{acct}}", "A")
                        .replace("{{tx}}", "T")
                        .replace("{{card}}", "C"),
                )
            })
            .collect();
        assert_eq!(distinct.len(), 24, "{distinct:?}");
    }

    #[test]
    fn templates_are_fully_filled() {
        let vars = SessionVars::for_index(42);
        for step in 0..CYCLE.len() {
            let r = request(&vars, step);
            assert!(!r.path.contains("{{"), "{}", r.path);
            if let Some(body) = &r.body {
                assert!(!body.contains("{{"), "{body}");
                let v: serde_json::Value = serde_json::from_str(body).unwrap();
                assert!(v.is_object());
            }
        }
    }

    #[test]
    fn sessions_are_distinct_and_reproducible() {
        assert_eq!(SessionVars::for_index(7), SessionVars::for_index(7));
        assert_ne!(
            SessionVars::for_index(7).card,
            SessionVars::for_index(8).card
        );
        let line = session_line("tok", &SessionVars::for_index(3));
        assert_eq!(line.split('\t').count(), 1 + SessionVars::COLUMNS.len());
    }

    #[test]
    fn lua_chunk_quotes_bodies() {
        let lua = lua_cycle();
        assert!(lua.contains(r#"method = "POST""#));
        assert!(lua.contains("[[{\"fromAccount\""));
    }
}

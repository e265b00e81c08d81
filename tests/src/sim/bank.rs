//! A sample banking API for the simulator, the evaluation and the demo: login with
//! JWT-like bearer tokens (HS256, `sub` claim), accounts, balances, paged transactions,
//! transfers, profile read/update, lookup by phone number, payees; and the long tail honest
//! customers use rarely (a yearly statement, an e-mail change) plus the card view a release
//! adds once the enforcer's model is mature ([`RunningBank::release`]).
//!
//! Like many real applications it trusts that the client follows the intended journey: there
//! is no ownership check on account ids (object-level authorization is missing, so BOLA
//! works), the profile update applies any field it receives (mass assignment), and transfers
//! are executed as sent. It records every request that reached it, so that an evaluation can
//! count the harm that got past the enforcer.

use std::collections::HashMap;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use bytes::Bytes;
use http_body_util::{BodyExt as _, Full};
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use jsonwebtoken::{DecodingKey, EncodingKey, Header, Validation};
use parking_lot::Mutex;
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use tokio::net::TcpListener;
use tokio::sync::watch;

/// HS256 secret the bank signs its tokens with (the enforcer may be configured to verify them).
pub const TOKEN_SECRET: &str = "ordo-simulator-bank-secret";

/// One customer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Customer {
    /// `sub` claim, e.g. `c1042`.
    pub id: String,
    pub username: String,
    pub password: String,
    pub name: String,
    pub email: String,
    pub phone: String,
    pub accounts: Vec<u64>,
}

/// The bank's customers, generated deterministically.
#[derive(Debug, Clone)]
pub struct Directory {
    pub customers: Vec<Customer>,
}

impl Directory {
    /// `count` customers with one to three accounts each.
    pub fn generate(count: usize) -> Self {
        let customers = (0..count)
            .map(|i| {
                let n = 1000 + i as u64;
                let accounts = (0..(1 + i % 3) as u64)
                    .map(|k| 40_000_000 + n * 10 + k)
                    .collect();
                Customer {
                    id: format!("c{n}"),
                    username: format!("customer{n}"),
                    password: format!("pw-{n}-secret"),
                    name: format!("Customer {n}"),
                    email: format!("customer{n}@example.com"),
                    phone: format!("+4915{:08}", 20_000_000 + n * 7),
                    accounts,
                }
            })
            .collect();
        Self { customers }
    }
}

/// One request that reached the bank.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Hit {
    /// The original client address (first `X-Forwarded-For` entry), or the peer.
    pub client: String,
    pub method: String,
    pub path: String,
    pub status: u16,
}

#[derive(Debug, Serialize, Deserialize)]
struct Claims {
    sub: String,
    exp: u64,
}

struct State {
    by_username: HashMap<String, Customer>,
    by_id: HashMap<String, Customer>,
    by_phone: HashMap<String, String>,
    account_owner: HashMap<u64, String>,
    profiles: Mutex<HashMap<String, Value>>,
    payees: Mutex<HashMap<String, Vec<Value>>>,
    hits: Mutex<Vec<Hit>>,
    transfers: Mutex<u64>,
    /// The release that adds `GET /api/v1/accounts/{id}/cards` is out.
    released: AtomicBool,
    encoding: EncodingKey,
    decoding: DecodingKey,
}

/// A running bank; stops when dropped or on [`RunningBank::shutdown`].
pub struct RunningBank {
    pub addr: SocketAddr,
    state: Arc<State>,
    stop: watch::Sender<bool>,
}

impl RunningBank {
    /// Starts the bank on `127.0.0.1:0` (or `listen`).
    pub async fn start(directory: &Directory, listen: Option<SocketAddr>) -> std::io::Result<Self> {
        let listener =
            TcpListener::bind(listen.unwrap_or_else(|| SocketAddr::from(([127, 0, 0, 1], 0))))
                .await?;
        let addr = listener.local_addr()?;
        let mut account_owner = HashMap::new();
        let mut profiles = HashMap::new();
        for c in &directory.customers {
            for a in &c.accounts {
                account_owner.insert(*a, c.id.clone());
            }
            profiles.insert(
                c.id.clone(),
                json!({ "name": c.name, "email": c.email, "phone": c.phone, "role": "customer" }),
            );
        }
        let state = Arc::new(State {
            by_username: directory
                .customers
                .iter()
                .map(|c| (c.username.clone(), c.clone()))
                .collect(),
            by_id: directory
                .customers
                .iter()
                .map(|c| (c.id.clone(), c.clone()))
                .collect(),
            by_phone: directory
                .customers
                .iter()
                .map(|c| (c.phone.clone(), c.id.clone()))
                .collect(),
            account_owner,
            profiles: Mutex::new(profiles),
            payees: Mutex::new(HashMap::new()),
            hits: Mutex::new(Vec::new()),
            transfers: Mutex::new(0),
            released: AtomicBool::new(false),
            encoding: EncodingKey::from_secret(TOKEN_SECRET.as_bytes()),
            decoding: DecodingKey::from_secret(TOKEN_SECRET.as_bytes()),
        });
        let (stop, mut stopped) = watch::channel(false);
        let serving = Arc::clone(&state);
        tokio::spawn(async move {
            loop {
                let accepted = tokio::select! {
                    accepted = listener.accept() => accepted,
                    _ = stopped.changed() => break,
                };
                let Ok((stream, peer)) = accepted else {
                    continue;
                };
                let state = Arc::clone(&serving);
                let mut conn_stopped = stopped.clone();
                tokio::spawn(async move {
                    let service = service_fn(move |req| {
                        let state = Arc::clone(&state);
                        async move { Ok::<_, Infallible>(handle(&state, peer, req).await) }
                    });
                    let conn = http1::Builder::new()
                        .keep_alive(true)
                        .serve_connection(TokioIo::new(stream), service);
                    tokio::select! {
                        _ = conn => {}
                        _ = conn_stopped.changed() => {}
                    }
                });
            }
        });
        Ok(Self { addr, state, stop })
    }

    /// Everything that reached the bank so far.
    pub fn hits(&self) -> Vec<Hit> {
        self.state.hits.lock().clone()
    }

    /// Transfers executed so far.
    pub fn transfers(&self) -> u64 {
        *self.state.transfers.lock()
    }

    /// The profile of a customer as stored (to see whether a mass assignment took effect).
    pub fn profile(&self, id: &str) -> Option<Value> {
        self.state.profiles.lock().get(id).cloned()
    }

    /// A new release of the bank: from now on it serves the card view
    /// (`GET /api/v1/accounts/{id}/cards`), an operation the enforcer never saw while learning.
    pub fn release(&self) {
        self.state.released.store(true, Ordering::Relaxed);
    }

    pub fn shutdown(&self) {
        let _ = self.stop.send(true);
    }
}

impl Drop for RunningBank {
    fn drop(&mut self) {
        self.shutdown();
    }
}

fn reply(status: StatusCode, body: Value) -> Response<Full<Bytes>> {
    let mut response = Response::new(Full::new(Bytes::from(body.to_string())));
    *response.status_mut() = status;
    response.headers_mut().insert(
        http::header::CONTENT_TYPE,
        http::HeaderValue::from_static("application/json"),
    );
    response
}

fn now_secs() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

pub(crate) fn query_value(query: &str, key: &str) -> Option<String> {
    query
        .split('&')
        .filter_map(|pair| pair.split_once('='))
        .find(|(k, _)| *k == key)
        .map(|(_, v)| percent_decode(v))
}

pub(crate) fn percent_decode(text: &str) -> String {
    fn hex(b: u8) -> Option<u8> {
        (b as char).to_digit(16).and_then(|d| u8::try_from(d).ok())
    }
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'%' if i + 2 < bytes.len() => match (hex(bytes[i + 1]), hex(bytes[i + 2])) {
                (Some(h), Some(l)) => {
                    out.push(h * 16 + l);
                    i += 3;
                }
                _ => {
                    out.push(b'%');
                    i += 1;
                }
            },
            b'+' => {
                out.push(b' ');
                i += 1;
            }
            b => {
                out.push(b);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

async fn handle(state: &State, peer: SocketAddr, req: Request<Incoming>) -> Response<Full<Bytes>> {
    let method = req.method().clone();
    let path = req.uri().path().to_owned();
    let query = req.uri().query().unwrap_or("").to_owned();
    let client = req
        .headers()
        .get("x-forwarded-for")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.split(',').next())
        .map_or_else(|| peer.ip().to_string(), |v| v.trim().to_owned());
    let bearer = req
        .headers()
        .get(http::header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .map(str::to_owned);
    let body = match req.into_body().collect().await {
        Ok(collected) => collected.to_bytes(),
        Err(_) => Bytes::new(),
    };
    let response = route(state, &method, &path, &query, bearer.as_deref(), &body);
    state.hits.lock().push(Hit {
        client,
        method: method.to_string(),
        path,
        status: response.status().as_u16(),
    });
    response
}

fn subject(state: &State, bearer: Option<&str>) -> Option<String> {
    let token = bearer?;
    let data = jsonwebtoken::decode::<Claims>(
        token,
        &state.decoding,
        &Validation::new(jsonwebtoken::Algorithm::HS256),
    )
    .ok()?;
    Some(data.claims.sub)
}

fn route(
    state: &State,
    method: &http::Method,
    path: &str,
    query: &str,
    bearer: Option<&str>,
    body: &[u8],
) -> Response<Full<Bytes>> {
    let segments: Vec<&str> = path.trim_start_matches('/').split('/').collect();
    let json_body: Option<Value> = serde_json::from_slice(body).ok();
    if let (&http::Method::POST, ["api", "v1", "login"]) = (method, segments.as_slice()) {
        let username = json_body
            .as_ref()
            .and_then(|b| b["username"].as_str())
            .unwrap_or("");
        let password = json_body
            .as_ref()
            .and_then(|b| b["password"].as_str())
            .unwrap_or("");
        return match state.by_username.get(username) {
            Some(c) if c.password == password => {
                let claims = Claims {
                    sub: c.id.clone(),
                    exp: now_secs() + 3600,
                };
                match jsonwebtoken::encode(&Header::default(), &claims, &state.encoding) {
                    Ok(token) => {
                        reply(StatusCode::OK, json!({ "token": token, "expiresIn": 3600 }))
                    }
                    Err(_) => reply(
                        StatusCode::INTERNAL_SERVER_ERROR,
                        json!({ "error": "token" }),
                    ),
                }
            }
            _ => reply(
                StatusCode::UNAUTHORIZED,
                json!({ "error": "invalid credentials" }),
            ),
        };
    }
    let Some(sub) = subject(state, bearer) else {
        return reply(
            StatusCode::UNAUTHORIZED,
            json!({ "error": "missing or invalid token" }),
        );
    };
    let Some(customer) = state.by_id.get(&sub) else {
        return reply(
            StatusCode::UNAUTHORIZED,
            json!({ "error": "unknown customer" }),
        );
    };
    match (method, segments.as_slice()) {
        (&http::Method::GET, ["api", "v1", "accounts"]) => {
            let accounts: Vec<Value> = customer
                .accounts
                .iter()
                .enumerate()
                .map(|(i, a)| json!({ "id": a, "type": if i == 0 { "checking" } else { "savings" }, "currency": "EUR" }))
                .collect();
            reply(StatusCode::OK, json!({ "accounts": accounts }))
        }
        // No ownership check: any existing account answers (BOLA).
        (&http::Method::GET, ["api", "v1", "accounts", id, "balance"]) => match id
            .parse::<u64>()
            .ok()
            .filter(|a| state.account_owner.contains_key(a))
        {
            Some(account) => reply(
                StatusCode::OK,
                json!({ "accountId": account, "balance": 1000 + account % 9000, "currency": "EUR" }),
            ),
            None => reply(StatusCode::NOT_FOUND, json!({ "error": "no such account" })),
        },
        (&http::Method::GET, ["api", "v1", "accounts", id, "transactions"]) => match id
            .parse::<u64>()
            .ok()
            .filter(|a| state.account_owner.contains_key(a))
        {
            Some(account) => {
                let page: u64 = query_value(query, "page")
                    .and_then(|p| p.parse().ok())
                    .unwrap_or(1)
                    .max(1);
                let items: Vec<Value> = (0..10)
                    .map(|k| json!({ "id": format!("t{account}-{page}-{k}"), "amount": -((page * 10 + k) as i64 % 200), "currency": "EUR" }))
                    .collect();
                reply(
                    StatusCode::OK,
                    json!({ "items": items, "page": page, "next": page + 1 }),
                )
            }
            None => reply(StatusCode::NOT_FOUND, json!({ "error": "no such account" })),
        },
        // A yearly statement (rare: once a year per account).
        (&http::Method::GET, ["api", "v1", "accounts", id, "statement"]) => match id
            .parse::<u64>()
            .ok()
            .filter(|a| state.account_owner.contains_key(a))
        {
            Some(account) => {
                let year: u64 = query_value(query, "year")
                    .and_then(|y| y.parse().ok())
                    .unwrap_or(2025);
                reply(
                    StatusCode::OK,
                    json!({ "accountId": account, "year": year, "opening": 1000 + account % 700, "closing": 1000 + account % 9000, "currency": "EUR", "format": "json" }),
                )
            }
            None => reply(StatusCode::NOT_FOUND, json!({ "error": "no such account" })),
        },
        // The card view, served only once the release is out.
        (&http::Method::GET, ["api", "v1", "accounts", id, "cards"])
            if state.released.load(Ordering::Relaxed) =>
        {
            match id
                .parse::<u64>()
                .ok()
                .filter(|a| state.account_owner.contains_key(a))
            {
                Some(account) => reply(
                    StatusCode::OK,
                    json!({ "accountId": account, "cards": [ { "last4": format!("{:04}", account % 10_000), "status": "active" } ] }),
                ),
                None => reply(StatusCode::NOT_FOUND, json!({ "error": "no such account" })),
            }
        }
        (&http::Method::POST, ["api", "v1", "transfers"]) => {
            let valid = json_body.as_ref().is_some_and(|b| {
                b["amount"].is_number()
                    && b["fromAccount"].is_string()
                    && b["toAccount"].is_string()
            });
            if !valid {
                return reply(
                    StatusCode::BAD_REQUEST,
                    json!({ "error": "fromAccount, toAccount and amount are required" }),
                );
            }
            let mut count = state.transfers.lock();
            *count += 1;
            reply(
                StatusCode::CREATED,
                json!({ "transferId": format!("tr-{}", *count), "status": "executed" }),
            )
        }
        (&http::Method::GET, ["api", "v1", "profile"]) => {
            let profiles = state.profiles.lock();
            reply(
                StatusCode::OK,
                profiles.get(&sub).cloned().unwrap_or(Value::Null),
            )
        }
        // Applies every field it receives (mass assignment).
        (&http::Method::PUT, ["api", "v1", "profile"]) => match json_body {
            Some(Value::Object(fields)) => {
                let mut profiles = state.profiles.lock();
                let profile = profiles.entry(sub.clone()).or_insert_with(|| json!({}));
                for (k, v) in fields {
                    profile[k] = v;
                }
                reply(StatusCode::OK, profile.clone())
            }
            _ => reply(
                StatusCode::BAD_REQUEST,
                json!({ "error": "a JSON object is required" }),
            ),
        },
        // An e-mail change (rare).
        (&http::Method::PUT, ["api", "v1", "profile", "email"]) => {
            match json_body.as_ref().and_then(|b| b["email"].as_str()) {
                Some(email) if email.contains('@') => {
                    let mut profiles = state.profiles.lock();
                    let profile = profiles.entry(sub.clone()).or_insert_with(|| json!({}));
                    profile["email"] = json!(email);
                    reply(StatusCode::OK, json!({ "email": email, "verified": false }))
                }
                _ => reply(
                    StatusCode::BAD_REQUEST,
                    json!({ "error": "an e-mail address is required" }),
                ),
            }
        }
        (&http::Method::GET, ["api", "v1", "users", "lookup"]) => {
            let phone = query_value(query, "phone").unwrap_or_default();
            match state
                .by_phone
                .get(&phone)
                .and_then(|id| state.by_id.get(id))
            {
                Some(found) => reply(
                    StatusCode::OK,
                    json!({ "customerId": found.id, "name": found.name, "account": found.accounts[0] }),
                ),
                None => reply(
                    StatusCode::NOT_FOUND,
                    json!({ "error": "no customer with that phone number" }),
                ),
            }
        }
        (&http::Method::GET, ["api", "v1", "payees"]) => {
            let payees = state.payees.lock();
            reply(
                StatusCode::OK,
                json!({ "payees": payees.get(&sub).cloned().unwrap_or_default() }),
            )
        }
        (&http::Method::POST, ["api", "v1", "payees"]) => match json_body {
            Some(payee @ Value::Object(_)) => {
                let mut payees = state.payees.lock();
                let list = payees.entry(sub.clone()).or_default();
                if list.len() < 50 {
                    list.push(payee.clone());
                }
                reply(StatusCode::CREATED, payee)
            }
            _ => reply(
                StatusCode::BAD_REQUEST,
                json!({ "error": "a JSON object is required" }),
            ),
        },
        _ => reply(StatusCode::NOT_FOUND, json!({ "error": "not found" })),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn decodes_percent_escapes() {
        assert_eq!(percent_decode("%2B4915"), "+4915");
        assert_eq!(percent_decode("a+b%20c"), "a b c");
        assert_eq!(percent_decode("100%"), "100%");
    }
}

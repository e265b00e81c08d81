//! Runs journeys over real HTTP against an address (the enforcer in front of a simulated app),
//! several journeys at a time, each one's steps in order. A journey keeps what a client keeps:
//! the bearer token of its last successful login (a `token` or `auth_token` field) and the
//! cookies the app set, sent on every authenticated step.

use std::net::{Ipv4Addr, SocketAddr};
use std::time::Duration;

use anyhow::Context as _;
use bytes::Bytes;
use futures::StreamExt as _;
use http_body_util::{BodyExt as _, Full};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;

use super::journeys::{Journey, Step, Tail};

/// What one step got back.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StepOutcome {
    pub status: u16,
    /// Refused by the enforcer (400/403/429 with a problem body, which the simulated apps never
    /// send), so it never reached the app. A 400 is the enforcer refusing an ambiguous target
    /// (an encoded slash, a double encoding: `operation::paths`) before any detector.
    pub blocked: bool,
    pub harmful: bool,
    pub tail: Tail,
    /// The problem body of a refusal (what fired and why), at most 512 bytes; none otherwise.
    pub refusal: Option<String>,
}

/// What one journey got back, step by step.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct JourneyOutcome {
    pub index: usize,
    pub client: Ipv4Addr,
    pub steps: Vec<StepOutcome>,
}

impl JourneyOutcome {
    /// 1-based number of the first blocked request.
    pub fn first_blocked(&self) -> Option<usize> {
        self.steps.iter().position(|s| s.blocked).map(|i| i + 1)
    }

    pub fn blocked(&self) -> usize {
        self.steps.iter().filter(|s| s.blocked).count()
    }

    /// Harmful steps that reached the application.
    pub fn harm_reached(&self) -> usize {
        self.steps
            .iter()
            .filter(|s| s.harmful && !s.blocked)
            .count()
    }

    pub fn harmful(&self) -> usize {
        self.steps.iter().filter(|s| s.harmful).count()
    }
}

type HttpClient = Client<HttpConnector, Full<Bytes>>;

fn client() -> HttpClient {
    Client::builder(TokioExecutor::new())
        .pool_max_idle_per_host(64)
        .build_http()
}

async fn send(
    client: &HttpClient,
    target: SocketAddr,
    journey: &Journey,
    step: &Step,
    token: Option<&str>,
    cookies: &[(String, String)],
) -> anyhow::Result<(u16, bool, Vec<(String, String)>, Bytes)> {
    let uri = format!("http://{target}{}", step.path_and_query);
    let mut request = http::Request::builder()
        .method(step.method.clone())
        .uri(&uri)
        .header(http::header::USER_AGENT, journey.user_agent)
        .header(http::header::ACCEPT, "application/json")
        .header("x-forwarded-for", journey.client.to_string());
    if step.authenticated
        && let Some(token) = token
    {
        request = request.header(http::header::AUTHORIZATION, format!("Bearer {token}"));
    }
    if step.authenticated && !cookies.is_empty() {
        let jar: Vec<String> = cookies.iter().map(|(k, v)| format!("{k}={v}")).collect();
        request = request.header(http::header::COOKIE, jar.join("; "));
    }
    let body = match &step.body {
        Some(value) => {
            request = request.header(http::header::CONTENT_TYPE, "application/json");
            Bytes::from(value.to_string())
        }
        None => Bytes::new(),
    };
    let request = request
        .body(Full::new(body))
        .with_context(|| format!("building {} {uri}", step.method))?;
    let response = tokio::time::timeout(Duration::from_secs(20), client.request(request))
        .await
        .with_context(|| format!("{} {uri} timed out", step.method))?
        .with_context(|| format!("{} {uri}", step.method))?;
    let status = response.status().as_u16();
    let problem = response
        .headers()
        .get(http::header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with("application/problem+json"));
    let set_cookies: Vec<(String, String)> = response
        .headers()
        .get_all(http::header::SET_COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .filter_map(|v| v.split(';').next())
        .filter_map(|pair| pair.split_once('='))
        .map(|(k, v)| (k.trim().to_owned(), v.trim().to_owned()))
        .collect();
    let bytes = response
        .into_body()
        .collect()
        .await
        .with_context(|| format!("reading {uri}"))?
        .to_bytes();
    Ok((
        status,
        problem && matches!(status, 400 | 403 | 429),
        set_cookies,
        bytes,
    ))
}

async fn run_one(
    client: HttpClient,
    target: SocketAddr,
    index: usize,
    journey: Journey,
) -> anyhow::Result<JourneyOutcome> {
    let mut token: Option<String> = None;
    let mut cookies: Vec<(String, String)> = Vec::new();
    let mut steps = Vec::with_capacity(journey.steps.len());
    for step in &journey.steps {
        if step.think_ms > 0 {
            tokio::time::sleep(Duration::from_millis(step.think_ms)).await;
        }
        let (status, blocked, set_cookies, body) =
            send(&client, target, &journey, step, token.as_deref(), &cookies).await?;
        if !step.authenticated
            && status == 200
            && let Ok(value) = serde_json::from_slice::<serde_json::Value>(&body)
            && let Some(t) = value["token"].as_str().or(value["auth_token"].as_str())
        {
            token = Some(t.to_owned());
        }
        for (name, value) in set_cookies {
            cookies.retain(|(k, _)| *k != name);
            cookies.push((name, value));
        }
        let refusal = blocked.then(|| {
            let text = String::from_utf8_lossy(&body[..body.len().min(512)]);
            text.into_owned()
        });
        steps.push(StepOutcome {
            status,
            blocked,
            harmful: step.harmful,
            tail: step.tail,
            refusal,
        });
    }
    Ok(JourneyOutcome {
        index,
        client: journey.client,
        steps,
    })
}

/// Runs `journeys` against `target`, `concurrency` at a time; outcomes in journey order.
pub async fn run(
    target: SocketAddr,
    journeys: &[Journey],
    concurrency: usize,
) -> anyhow::Result<Vec<JourneyOutcome>> {
    let client = client();
    // Each journey is cloned into its own future so the stream does not borrow `journeys`
    // (callers spawn this on the runtime).
    let owned: Vec<(usize, Journey)> = journeys.iter().cloned().enumerate().collect();
    let mut outcomes: Vec<JourneyOutcome> = futures::stream::iter(owned)
        .map(move |(index, journey)| run_one(client.clone(), target, index, journey))
        .buffer_unordered(concurrency.max(1))
        .collect::<Vec<_>>()
        .await
        .into_iter()
        .collect::<anyhow::Result<_>>()?;
    outcomes.sort_by_key(|o| o.index);
    Ok(outcomes)
}

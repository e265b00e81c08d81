//! Attacks spread over many client addresses, which the per-journey attack kinds of
//! [`super::journeys`] cannot express (each of those is one client): distributed credential
//! stuffing (a list of identities tried from a botnet, one to three tries per address) and
//! password spraying on one identity from many addresses.

use std::net::Ipv4Addr;

use rand::RngExt as _;
use rand_chacha::ChaCha8Rng;
use serde_json::json;

use super::bank::Directory;
use super::journeys::{AttackKind, Journey, JourneyKind, Step};

/// Passwords a stuffing list pairs with the identities it tries (none is a customer's).
const LEAKED_PASSWORDS: [&str; 4] = ["Summer2024!", "Password1", "Qwerty123!", "Welcome2025"];

/// First address of distributed stuffing journeys (TEST-NET-3, 203.0.113.0/24 and beyond).
pub const STUFFING_BASE: Ipv4Addr = Ipv4Addr::new(203, 0, 113, 0);
/// First address of password-spraying journeys (TEST-NET-1, 192.0.2.0/24 and beyond).
pub const SPRAYING_BASE: Ipv4Addr = Ipv4Addr::new(192, 0, 2, 0);

fn failed_login(username: &str, rng: &mut ChaCha8Rng) -> Step {
    let password = LEAKED_PASSWORDS[rng.random_range(0..LEAKED_PASSWORDS.len())];
    Step {
        method: http::Method::POST,
        path_and_query: "/api/v1/login".into(),
        body: Some(json!({ "username": username, "password": password })),
        authenticated: false,
        harmful: true,
        think_ms: rng.random_range(5..30),
        tail: super::journeys::Tail::No,
    }
}

fn address(base: Ipv4Addr, i: usize) -> Ipv4Addr {
    Ipv4Addr::from(u32::from(base).wrapping_add(u32::try_from(i).unwrap_or(u32::MAX)))
}

/// Distributed credential stuffing: `addresses` journeys, each from its own address, each
/// trying 1–3 identities of the directory (customers `first_victim..`, every identity once)
/// with leaked passwords. Journey ids start at `first_id`.
pub fn distributed_stuffing(
    rng: &mut ChaCha8Rng,
    directory: &Directory,
    first_victim: usize,
    addresses: usize,
    first_id: usize,
) -> Vec<Journey> {
    let mut victim = first_victim;
    (0..addresses)
        .map(|i| {
            let tries = rng.random_range(1..=3);
            let steps = (0..tries)
                .map(|_| {
                    let c = &directory.customers[victim % directory.customers.len()];
                    victim += 1;
                    failed_login(&c.username, rng)
                })
                .collect();
            Journey {
                id: first_id + i,
                kind: JourneyKind::Attack(AttackKind::CredentialStuffing),
                client: address(STUFFING_BASE, i),
                user_agent: "python-requests/2.32.3",
                steps,
            }
        })
        .collect()
}

/// Password spraying on one identity: `addresses` journeys, each from its own address, each
/// trying 1–2 leaked passwords for customer `victim`. Journey ids start at `first_id`.
pub fn identity_spraying(
    rng: &mut ChaCha8Rng,
    directory: &Directory,
    victim: usize,
    addresses: usize,
    first_id: usize,
) -> Vec<Journey> {
    let c = &directory.customers[victim % directory.customers.len()];
    (0..addresses)
        .map(|i| {
            let tries = rng.random_range(1..=2);
            Journey {
                id: first_id + i,
                kind: JourneyKind::Attack(AttackKind::CredentialStuffing),
                client: address(SPRAYING_BASE, i),
                user_agent: "Go-http-client/1.1",
                steps: (0..tries).map(|_| failed_login(&c.username, rng)).collect(),
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::SeedableRng as _;

    #[test]
    fn every_address_and_identity_is_distinct() {
        let directory = Directory::generate(300);
        let mut rng = ChaCha8Rng::seed_from_u64(3);
        let journeys = distributed_stuffing(&mut rng, &directory, 100, 40, 0);
        assert_eq!(journeys.len(), 40);
        let clients: std::collections::HashSet<_> = journeys.iter().map(|j| j.client).collect();
        assert_eq!(clients.len(), 40);
        let tries: usize = journeys.iter().map(|j| j.steps.len()).sum();
        assert!((40..=120).contains(&tries));
        let users: std::collections::HashSet<String> = journeys
            .iter()
            .flat_map(|j| j.steps.iter())
            .map(|s| s.body.as_ref().unwrap()["username"].to_string())
            .collect();
        assert_eq!(users.len(), tries);
        let spray = identity_spraying(&mut rng, &directory, 5, 10, 40);
        let users: std::collections::HashSet<String> = spray
            .iter()
            .flat_map(|j| j.steps.iter())
            .map(|s| s.body.as_ref().unwrap()["username"].to_string())
            .collect();
        assert_eq!(users.len(), 1);
        assert_eq!(spray[0].id, 40);
    }
}

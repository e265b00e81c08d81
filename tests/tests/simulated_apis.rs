//! The harness of the evaluation on the library and shop APIs (`tests/src/sim/styles.rs`),
//! small and in `Monitor` mode: journeys complete, honest journeys really work at the app (every
//! request succeeds but a mistyped login), attacks reach the app and their vulnerabilities
//! work, and the honest groups, rare operations and the release hold the counts the plan
//! promises. Detector outcomes are judged by `ordo-evaluate`, not here.

use std::collections::HashMap;
use std::net::Ipv4Addr;

use ordo_tests::sim::app::Hit;
use ordo_tests::sim::journeys::{AttackKind, Journey, JourneyKind};
use ordo_tests::sim::styles::{self, Api, Sizes, StyleOptions, StyleReport};

const LEARNING: usize = 80;
const BENIGN: usize = 40;

async fn evaluate(api: Api) -> StyleReport {
    let options = StyleOptions {
        seed: 5,
        sizes: Sizes {
            learning: LEARNING,
            benign: BENIGN,
            attacks_per_kind: 1,
        },
        concurrency: 8,
        mode: "Monitor",
    };
    let report = styles::run(api, options).await.expect("evaluation runs");
    println!("{report}");
    report
}

fn hits_by_client(hits: &[Hit]) -> HashMap<Ipv4Addr, Vec<&Hit>> {
    let mut by: HashMap<Ipv4Addr, Vec<&Hit>> = HashMap::new();
    for h in hits {
        by.entry(h.client.parse().expect("an IPv4 client"))
            .or_default()
            .push(h);
    }
    by
}

fn mistyped_logins(j: &Journey) -> usize {
    j.steps
        .iter()
        .filter(|s| {
            s.body
                .as_ref()
                .is_some_and(|b| b["password"] == "wrong-password")
        })
        .count()
}

/// What every API's run must show.
fn check_common(report: &StyleReport) -> HashMap<Ipv4Addr, Vec<&Hit>> {
    let api = report.api.name();
    let by_client = hits_by_client(&report.hits);
    let journeys = report.learning.iter().chain(&report.mixed);

    // Every journey ran to its end. In Monitor every honest request reached the app, and
    // every attack session reached it with a harmful request (a few payloads, such as some in
    // a path, are refused by the enforcer's request checks before any detector).
    for (j, o) in journeys.clone() {
        assert_eq!(o.steps.len(), j.steps.len(), "{api}: {j:?}");
        let reached = by_client.get(&j.client).map_or(0, Vec::len);
        if j.kind == JourneyKind::Benign {
            assert_eq!(reached, j.steps.len(), "{api}: {}", j.client);
        } else {
            // In Monitor the only refusal is the request checks' 400 with a problem body
            // (`driver` counts it as refused): a payload such as an encoded slash in a path.
            let refused_by_checks = o
                .steps
                .iter()
                .any(|s| s.harmful && s.blocked && s.status == 400);
            assert!(
                o.harm_reached() >= 1 || refused_by_checks,
                "{api}: {:?} {} {o:?}",
                j.kind,
                j.client
            );
            assert!(
                reached >= o.harm_reached(),
                "{api}: {:?} {}",
                j.kind,
                j.client
            );
        }
    }

    // Honest journeys work at the app: every request succeeds but a mistyped login.
    for (j, _) in journeys
        .clone()
        .filter(|(j, _)| j.kind == JourneyKind::Benign)
    {
        let failed: Vec<&&Hit> = by_client[&j.client].iter().filter(|h| !h.ok).collect();
        assert_eq!(
            failed.len(),
            mistyped_logins(j),
            "{api}: {} {failed:?}",
            j.client
        );
    }

    // The groups: every learning session, the mixed ones split into returning and new users.
    assert_eq!(report.learning_group.sessions, LEARNING, "{api}");
    assert_eq!(report.returning_group.sessions, BENIGN / 2, "{api}");
    assert_eq!(
        report.new_group.sessions + report.returning_group.sessions,
        BENIGN,
        "{api}"
    );
    // Fewer rare requests while learning than the inventory threshold (3).
    assert_eq!(report.rare_learning, 2, "{api}");

    // Every attack kind ran, the campaign from several addresses with one or two tries each.
    for (kind, r) in &report.attacks {
        assert!(r.sessions >= 1 && r.harmful >= 1, "{api} {kind}: {r:?}");
    }
    let campaign: Vec<&Journey> = report
        .mixed
        .iter()
        .map(|(j, _)| j)
        .filter(|j| j.kind == JourneyKind::Attack(AttackKind::StuffingCampaign))
        .collect();
    assert!(campaign.len() >= 4, "{api}: {campaign:?}");
    assert!(campaign.iter().all(|j| (1..=2).contains(&j.steps.len())));
    by_client
}

/// The harmful requests of one attack kind as the app answered them.
fn harmful_hits<'a>(
    report: &'a StyleReport,
    by_client: &'a HashMap<Ipv4Addr, Vec<&'a Hit>>,
    kind: AttackKind,
) -> Vec<&'a Hit> {
    let mut out = Vec::new();
    for (j, _) in &report.mixed {
        if j.kind != JourneyKind::Attack(kind) {
            continue;
        }
        let harmful: Vec<String> = j
            .steps
            .iter()
            .filter(|s| s.harmful)
            .map(|s| {
                let path = s.path_and_query.split('?').next().unwrap_or("");
                format!("{} {path}", s.method)
            })
            .collect();
        for h in by_client.get(&j.client).into_iter().flatten() {
            if harmful.contains(&format!("{} {}", h.method, h.path)) {
                out.push(*h);
            }
        }
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn library_harness_runs_every_journey() {
    let report = evaluate(Api::Library).await;
    let by_client = check_common(&report);
    assert_eq!(report.attacks.len(), Api::Library.attacks().len());
    // The vulnerabilities work: another user's password is changed, the debug dump lists
    // every user, an admin signs up, failed logins are answered 200 with an error body.
    for h in harmful_hits(&report, &by_client, AttackKind::ForeignIdentity) {
        assert!(h.ok && h.path.ends_with("/password"), "{h:?}");
    }
    for h in harmful_hits(&report, &by_client, AttackKind::DebugEndpoint) {
        assert!(h.ok && h.records > LEARNING, "{h:?}");
    }
    for h in harmful_hits(&report, &by_client, AttackKind::MassAssignment) {
        assert!(h.ok, "{h:?}");
    }
    let stuffing = harmful_hits(&report, &by_client, AttackKind::CredentialStuffing);
    assert!(
        stuffing.iter().all(|h| h.status == 200 && !h.ok),
        "{stuffing:?}"
    );
    // Readable names keyed the paths: many distinct titles and users were requested.
    let titles: std::collections::HashSet<&str> = report
        .hits
        .iter()
        .filter(|h| h.path.starts_with("/books/v1/"))
        .map(|h| h.path.as_str())
        .collect();
    assert!(titles.len() > 40, "{}", titles.len());
    // The release: reviews are asked for only after it, and work (honest requests all
    // succeed, `check_common`).
    assert!(report.released.requests > 0, "{report}");
    let learning_reviews = report
        .learning
        .iter()
        .flat_map(|(j, _)| &j.steps)
        .filter(|s| s.path_and_query.ends_with("/reviews"))
        .count();
    assert_eq!(learning_reviews, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shop_harness_runs_every_journey() {
    let report = evaluate(Api::Shop).await;
    let by_client = check_common(&report);
    assert_eq!(report.attacks.len(), Api::Shop.attacks().len());
    // The release: tracking is used only after it, and works.
    assert!(report.released.requests > 0, "{report}");
    let learning_tracking = report
        .learning
        .iter()
        .flat_map(|(j, _)| &j.steps)
        .filter(|s| s.path_and_query.ends_with("/tracking"))
        .count();
    assert_eq!(learning_tracking, 0);
    // Sessions are cookies: honest logins set one and later requests succeed with it (checked
    // above: every honest request but a mistyped login succeeds, and they need the cookie).
    let mass = harmful_hits(&report, &by_client, AttackKind::MassExport);
    assert!(!mass.is_empty());
    for h in mass {
        assert!(h.ok && h.records > 500, "{h:?}");
    }
    for h in harmful_hits(&report, &by_client, AttackKind::ForeignIdentity) {
        assert!(h.ok && h.path.starts_with("/orders/"), "{h:?}");
    }
    let honest_exports: Vec<&Hit> = report
        .hits
        .iter()
        .filter(|h| h.path == "/orders/export" && h.records < 100)
        .collect();
    assert!(honest_exports.iter().all(|h| h.ok && h.records >= 3));
    assert!(honest_exports.len() >= 2);
}

//! The incident store and its plain-language summary (`incident::IncidentStore`): operations
//! and explanations come partly from client input. Never a panic; every field bounded in bytes
//! whatever the input (operation names, the session label, the summary, the report form);
//! counts consistent; the incident count capped; a credential session value (cookie, header,
//! query) never shown verbatim; `truncate_marked` keeps a prefix and says what it cut.
//!
//! Input: lines of `SESSION KIND DELAY` (three bytes) then `OPERATION \t EXPLANATION`.

#![no_main]

use std::net::{IpAddr, Ipv4Addr};

use libfuzzer_sys::fuzz_target;
use ordo_enforcer::config::{Action, Duration, IncidentsConfig};
use ordo_enforcer::finding::{Finding, FindingKind, Severity};
use ordo_enforcer::incident::{
    IncidentStore, MAX_EXPLANATION_BYTES, MAX_OPERATION_BYTES, truncate_marked,
};

const KINDS: [FindingKind; 9] = [
    FindingKind::SequenceRule,
    FindingKind::RateLimit,
    FindingKind::SchemaViolation,
    FindingKind::ShadowEndpoint,
    FindingKind::ShapeDeviation,
    FindingKind::UnlikelySequence,
    FindingKind::Volume,
    FindingKind::Enumeration,
    FindingKind::CredentialStuffing,
];
const SEVERITIES: [Severity; 4] = [
    Severity::Low,
    Severity::Medium,
    Severity::High,
    Severity::Critical,
];
const RULES: [&str; 3] = ["transfer-needs-otp", "export-limit", "no-replay"];
const MAX_INCIDENTS: usize = 4;
/// The `…(+N bytes)` marker: the ellipsis, digits of a usize, the words.
const MARKER: usize = "…(+ bytes)".len() + 20;
/// Groups per incident (`incident::MAX_GROUPS`) and operations listed.
const MAX_GROUPS: usize = 16;
const MAX_OPERATIONS: usize = 32;
/// One group's clause in the summary beyond its operation and explanation: "; it also sent
/// … 18446744073709551615 times in 5124095576030431 h …".
const CLAUSE: usize = 96;
const MAX_SUMMARY: usize = 128
    + (MAX_OPERATION_BYTES + MARKER + 2)
    + MAX_GROUPS * (CLAUSE + MAX_OPERATION_BYTES + MAX_EXPLANATION_BYTES + 2 * MARKER);

fn check_truncate(text: &str, max: usize) {
    let cut = truncate_marked(text, max);
    if text.len() <= max {
        assert_eq!(cut, text);
    } else {
        let (kept, marker) = cut.rsplit_once('…').unwrap_or_default();
        assert!(kept.len() <= max && text.starts_with(kept), "{cut:?}");
        assert_eq!(marker, format!("(+{} bytes)", text.len() - kept.len()));
    }
}

fuzz_target!(|data: &[u8]| {
    let config = IncidentsConfig {
        inactivity_window: Duration::from_secs(60),
        max_incidents: MAX_INCIDENTS,
    };
    let store = IncidentStore::new(&config, false);
    let client = IpAddr::V4(Ipv4Addr::new(198, 51, 100, 9));
    let mut now_ms = 1_700_000_000_000u64;
    let mut recorded = 0usize;
    let mut created = 0u64;
    for line in data.split(|&b| b == b'\n') {
        let [s, k, delay, rest @ ..] = line else {
            continue;
        };
        let text = String::from_utf8_lossy(rest);
        let (op, explanation) = text.split_once('\t').unwrap_or((&text, ""));
        check_truncate(op, usize::from(*delay));
        now_ms += u64::from(*delay) * 1000;
        let session = match s % 5 {
            0 => "jwt:sub=4411".to_owned(),
            1 => "ip:198.51.100.9".to_owned(),
            // A credential value chosen by the client (the explanation stands in for it).
            2 => format!("cookie:SESSIONID={explanation}"),
            3 => format!("header:x-api-key={explanation}"),
            _ => format!("query:sid={explanation}"),
        };
        let count = usize::from(k >> 4) % 3 + 1;
        let findings: Vec<Finding> = (0..count)
            .map(|i| {
                let n = usize::from(*k).wrapping_add(i * 7);
                Finding {
                    kind: KINDS[n % KINDS.len()],
                    severity: SEVERITIES[(n / 9) % SEVERITIES.len()],
                    action: Action::Log,
                    block_status: 403,
                    rule: (n % 2 == 0).then(|| RULES[n % RULES.len()].to_owned()),
                    explanation: explanation.to_owned(),
                    evidence: serde_json::Value::Null,
                    retry_after_s: None,
                }
            })
            .collect();
        let blocked = s & 0x80 != 0;
        let r = store.record(&session, client, op, &findings, blocked, now_ms);
        if let Some(r) = &r {
            recorded += 1;
            created += u64::from(r.created);
            assert!(r.session.len() <= MAX_OPERATION_BYTES + MARKER);
        }
        if s & 0x40 != 0
            && let Some(seq) = r.as_ref().map(|r| r.seq)
        {
            store.note_request(seq, now_ms + 1);
        }
    }

    let incidents = store.list();
    assert!(incidents.len() <= MAX_INCIDENTS);
    // Every incident created is either kept or counted as evicted.
    assert_eq!(incidents.len() as u64 + store.evicted(), created);
    assert!(recorded == 0 || !incidents.is_empty());
    for incident in &incidents {
        assert!(
            incident.session.len() <= MAX_OPERATION_BYTES + MARKER,
            "session"
        );
        assert!(incident.operations.len() <= MAX_OPERATIONS);
        for op in &incident.operations {
            assert!(
                op.len() <= MAX_OPERATION_BYTES + MARKER,
                "operation of {} bytes",
                op.len()
            );
        }
        assert!(incident.rules.len() <= RULES.len());
        assert!(
            incident.summary.len() <= MAX_SUMMARY,
            "summary of {} bytes",
            incident.summary.len()
        );
        assert!(incident.blocked <= incident.flagged && incident.flagged <= incident.requests);
        assert!(incident.first_seen_ms <= incident.last_seen_ms);
        // A credential value is shown only as its keyed hash: `cookie:SESSIONID=#` and 16
        // hexadecimal digits.
        if let Some(kind) = ["cookie:", "header:", "query:"]
            .into_iter()
            .find(|k| incident.session.starts_with(k))
        {
            let (_, value) = incident.session.split_once('=').unwrap_or_default();
            let hex = value.strip_prefix('#').unwrap_or_default();
            assert!(
                hex.len() == 16 && hex.bytes().all(|b| b.is_ascii_hexdigit()),
                "{kind} value shown verbatim: {:?}",
                incident.session
            );
        }
        let json = serde_json::to_string(incident).unwrap_or_default();
        // JSON escapes at most multiply a byte by six (`\u00XX`).
        assert!(
            json.len()
                <= 6 * (MAX_SUMMARY + MAX_OPERATIONS * (MAX_OPERATION_BYTES + MARKER + 4)) + 1024
        );
    }
});

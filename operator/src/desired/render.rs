//! Renders an ApiProtection and its SequenceRules into the enforcer's own config type
//! (`ordo_enforcer::config::EnforcerConfig`), serialized to YAML into a ConfigMap. The same
//! conversion and the same validation (`validate_rule`, `validate_config`) run in the
//! validating webhook, so admission and runtime never disagree.

use std::collections::BTreeMap;

use ordo_enforcer::config::{
    self as cfg, DetectorConfig, DetectorsConfig, EnforcerConfig, LearningConfig,
    SequenceRuleConfig, ValidationErrors,
};
use ordo_enforcer::report::ReportConfig;
use sha2::{Digest as _, Sha256};

use super::names::{self, CONFIG_KEY, OPENAPI_KEY, REPORT_CA_KEY};
use crate::crd::{self, ApiProtectionSpec, SequenceRule, SequenceRuleSpec};

/// A problem in a resource, with the path of the field (as the user wrote it, e.g.
/// `spec.requires.within.duration`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FieldError {
    pub field: String,
    pub message: String,
}

impl std::fmt::Display for FieldError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}: {}", self.field, self.message)
    }
}

/// Joins field errors into one message.
pub fn join_errors(errors: &[FieldError]) -> String {
    errors
        .iter()
        .map(ToString::to_string)
        .collect::<Vec<_>>()
        .join("; ")
}

fn from_validation(prefix: &str, errors: ValidationErrors) -> Vec<FieldError> {
    errors
        .0
        .into_iter()
        .map(|e| FieldError {
            field: match (prefix.is_empty(), e.path.is_empty()) {
                (_, true) => prefix.to_owned(),
                (true, false) => e.path,
                (false, false) => format!("{prefix}.{}", e.path),
            },
            message: e.message,
        })
        .collect()
}

fn duration(field: &str, text: &str, errors: &mut Vec<FieldError>) -> cfg::Duration {
    match cfg::Duration::parse(text) {
        Ok(d) => d,
        Err(message) => {
            errors.push(FieldError {
                field: field.to_owned(),
                message,
            });
            cfg::Duration::default()
        }
    }
}

fn count(field: &str, value: i64, errors: &mut Vec<FieldError>) -> u32 {
    match u32::try_from(value) {
        Ok(v) => v,
        Err(_) => {
            errors.push(FieldError {
                field: field.to_owned(),
                message: format!("must be between 0 and {}, got {value}", u32::MAX),
            });
            0
        }
    }
}

fn action(action: crd::Action) -> cfg::Action {
    match action {
        crd::Action::Log => cfg::Action::Log,
        crd::Action::Block => cfg::Action::Block,
    }
}

/// Converts one SequenceRule into the enforcer's rule config and validates it with the
/// enforcer's own `validate_rule`. Errors name `spec.…` fields.
pub fn rule_config(
    name: &str,
    spec: &SequenceRuleSpec,
) -> Result<SequenceRuleConfig, Vec<FieldError>> {
    let mut errors = Vec::new();
    let within = |path: &str, w: &crd::Window, errors: &mut Vec<FieldError>| cfg::Within {
        requests: count(&format!("{path}.requests"), i64::from(w.requests), errors),
        duration: duration(&format!("{path}.duration"), &w.duration, errors),
    };
    let requires = spec.requires.as_ref().map(|r| cfg::RequiresRule {
        operation: r.operation.clone(),
        after: r.after.clone(),
        within: within("spec.requires.within", &r.within, &mut errors),
    });
    let forbids = spec.forbids.as_ref().map(|r| cfg::ForbidsRule {
        sequence: r.sequence.clone(),
        within: within("spec.forbids.within", &r.within, &mut errors),
    });
    let max_repeat = spec.max_repeat.as_ref().map(|r| cfg::MaxRepeatRule {
        operation: r.operation.clone(),
        count: count("spec.maxRepeat.count", i64::from(r.count), &mut errors),
    });
    let min_interval = spec.min_interval.as_ref().map(|r| cfg::MinIntervalRule {
        from: r.from.clone(),
        to: r.to.clone(),
        duration: duration("spec.minInterval.duration", &r.duration, &mut errors),
    });
    let rule = SequenceRuleConfig {
        name: name.to_owned(),
        description: spec.description.clone(),
        priority: spec.priority,
        action: action(spec.action),
        dry_run: spec.dry_run,
        requires,
        forbids,
        max_repeat,
        min_interval,
    };
    if let Err(validation) = cfg::validate_rule(&rule) {
        for error in from_validation("spec", validation) {
            // The rule's name comes from metadata.name.
            let field = if error.field == "spec.name" {
                "metadata.name".to_owned()
            } else {
                error.field
            };
            errors.push(FieldError {
                field,
                message: error.message,
            });
        }
    }
    if errors.is_empty() {
        Ok(rule)
    } else {
        Err(errors)
    }
}

/// Where the enforcers report to; from the operator's flags.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReportTarget {
    /// Base URL of the operator's HTTPS server, e.g. `https://ordo-operator.ordo-system.svc:8443`.
    pub base_url: String,
    /// PEM bundle the enforcers trust for that server.
    pub ca_pem: Option<String>,
    /// Seconds between reports.
    pub interval_seconds: u64,
}

/// Everything the rendered config depends on besides the ApiProtection spec.
#[derive(Debug, Clone)]
pub struct RenderInput<'a> {
    pub namespace: &'a str,
    pub name: &'a str,
    pub spec: &'a ApiProtectionSpec,
    /// `http://host:port` the enforcers forward to.
    pub upstream_url: String,
    /// Port the proxy listens on (the target Service's targetPort when numeric).
    pub listen_port: u16,
    /// Port of the admin server (probes, metrics).
    pub admin_port: u16,
    /// Accepted rules of this protection (any order; rendered by priority).
    pub rules: Vec<SequenceRuleConfig>,
    /// The OpenAPI document copied from the referenced ConfigMap, if any.
    pub openapi: Option<String>,
    pub report: Option<ReportTarget>,
}

/// The rendered ConfigMap content.
#[derive(Debug, Clone, PartialEq)]
pub struct Rendered {
    pub config: EnforcerConfig,
    /// ConfigMap `data`: the YAML config and the files it references.
    pub data: BTreeMap<String, String>,
    /// SHA-256 over `data`, the pod template annotation.
    pub hash: String,
}

/// Renders the config; errors name `spec.…` fields.
pub fn render(input: RenderInput<'_>) -> Result<Rendered, Vec<FieldError>> {
    let spec = input.spec;
    let mut errors = Vec::new();
    let session = session_config(&spec.session, &mut errors);
    let mut rules = input.rules;
    rules.sort_by(|a, b| {
        b.priority
            .cmp(&a.priority)
            .then_with(|| a.name.cmp(&b.name))
    });
    let rate_limits = spec
        .rate_limits
        .iter()
        .enumerate()
        .map(|(i, limit)| cfg::RateLimitConfig {
            name: None,
            operation: limit.operation.clone(),
            requests: count(
                &format!("spec.rateLimits[{i}].requests"),
                limit.requests,
                &mut errors,
            ),
            per: duration(
                &format!("spec.rateLimits[{i}].per"),
                &limit.per,
                &mut errors,
            ),
            action: action(limit.action),
        })
        .collect();
    let window = duration("spec.learning.window", &spec.learning.window, &mut errors);
    let journey_gap = duration(
        "spec.learning.journeyGap",
        &spec.learning.journey_gap,
        &mut errors,
    );
    let learning = LearningConfig {
        min_requests: u64::try_from(spec.learning.min_requests).unwrap_or(0),
        min_sessions: u64::try_from(spec.learning.min_sessions).unwrap_or(0),
        window_seconds: window.std().as_secs().max(1),
        sequence_order: usize::try_from(spec.learning.sequence_order).unwrap_or(1),
        journey_gap,
        ..LearningConfig::default()
    };
    let mut detector = |name: &str, d: &crd::DetectorSpec| DetectorConfig {
        enabled: d.enabled,
        action: action(d.action),
        sensitivity: match d.sensitivity {
            crd::Sensitivity::Low => cfg::Sensitivity::Low,
            crd::Sensitivity::Medium => cfg::Sensitivity::Medium,
            crd::Sensitivity::High => cfg::Sensitivity::High,
        },
        quarantine: d.quarantine.as_deref().map(|text| {
            duration(
                &format!("spec.detectors.{name}.quarantine"),
                text,
                &mut errors,
            )
        }),
    };
    let detectors = DetectorsConfig {
        shadow_endpoint: detector("shadowEndpoint", &spec.detectors.shadow_endpoint),
        request_shape: detector("requestShape", &spec.detectors.request_shape),
        unlikely_sequence: detector("unlikelySequence", &spec.detectors.unlikely_sequence),
        volume: detector("volume", &spec.detectors.volume),
        enumeration: detector("enumeration", &spec.detectors.enumeration),
        credential_stuffing: detector("credentialStuffing", &spec.detectors.credential_stuffing),
        exposure: detector("exposure", &spec.detectors.exposure),
        identity_lineage: detector("identityLineage", &spec.detectors.identity_lineage),
    };
    let mut data = BTreeMap::new();
    let open_api = input.openapi.map(|doc| {
        data.insert(OPENAPI_KEY.to_owned(), doc);
        cfg::OpenApiConfig {
            path: format!("{}/{OPENAPI_KEY}", names::CONFIG_MOUNT).into(),
            validate: true,
            action: cfg::Action::Block,
        }
    });
    let report = input.report.map(|target| {
        let ca_file = target.ca_pem.map(|pem| {
            data.insert(REPORT_CA_KEY.to_owned(), pem);
            format!("{}/{REPORT_CA_KEY}", names::CONFIG_MOUNT).into()
        });
        ReportConfig {
            url: format!(
                "{}{}/{}/{}",
                target.base_url.trim_end_matches('/'),
                ordo_enforcer::report::REPORT_PATH_PREFIX,
                input.namespace,
                input.name
            ),
            token_file: format!("{}/{}", names::TOKEN_MOUNT, names::TOKEN_FILE).into(),
            ca_file,
            interval_seconds: target.interval_seconds,
            timeout_seconds: 10,
            replica: None,
        }
    });
    let client_limits = &spec.enforcer.client_limits;
    let body_rate_grace = duration(
        "spec.enforcer.clientLimits.bodyRateGrace",
        &client_limits.body_rate_grace,
        &mut errors,
    );
    let mut config = EnforcerConfig {
        revision: None,
        listen: std::net::SocketAddr::from(([0, 0, 0, 0], input.listen_port)),
        admin: cfg::AdminConfig {
            listen: std::net::SocketAddr::from(([0, 0, 0, 0], input.admin_port)),
            ..cfg::AdminConfig::default()
        },
        upstream: cfg::UpstreamConfig::new(input.upstream_url),
        mode: match spec.mode {
            crd::ProtectionMode::Learn => cfg::Mode::Learn,
            crd::ProtectionMode::Monitor => cfg::Mode::Monitor,
            crd::ProtectionMode::Enforce => cfg::Mode::Enforce,
        },
        failure_policy: match spec.enforcer.failure_policy {
            crd::FailurePolicy::Open => cfg::FailurePolicy::Open,
            crd::FailurePolicy::Closed => cfg::FailurePolicy::Closed,
        },
        client_address: cfg::ClientAddressConfig {
            source: match spec.client_address.source {
                crd::ClientAddressSource::Socket => cfg::ClientAddressSource::Socket,
                crd::ClientAddressSource::XForwardedFor => cfg::ClientAddressSource::XForwardedFor,
            },
            trusted_hops: u8::try_from(spec.client_address.trusted_hops).unwrap_or(u8::MAX),
        },
        session,
        operations: cfg::OperationsConfig::default(),
        paths: cfg::PathsConfig::default(),
        open_api,
        learning,
        detectors,
        rules,
        rate_limits,
        limits: cfg::LimitsConfig {
            max_body_bytes: u64::try_from(spec.enforcer.max_body_bytes).unwrap_or(0),
            max_connections: client_limits
                .max_connections
                .map(|n| usize::try_from(n).unwrap_or(0)),
            max_connections_per_client: usize::try_from(client_limits.max_connections_per_client)
                .unwrap_or(0),
            max_concurrent_requests_per_client: usize::try_from(
                client_limits.max_concurrent_requests_per_client,
            )
            .unwrap_or(0),
            min_body_rate: u64::try_from(client_limits.min_body_rate).unwrap_or(0),
            body_rate_grace,
            ..cfg::LimitsConfig::default()
        },
        incidents: cfg::IncidentsConfig::default(),
        report,
        peers: spec.enforcer.scale_out.as_ref().map(|scale_out| {
            let port = names::peers_port(input.listen_port, input.admin_port);
            cfg::PeersConfig {
                listen: std::net::SocketAddr::from(([0, 0, 0, 0], port)),
                advertise: format!("${{POD_IP}}:{port}"),
                r#static: Vec::new(),
                dns: Some(cfg::PeerDnsConfig {
                    name: format!(
                        "{}.{}.svc",
                        names::peers_service_name(input.name),
                        input.namespace
                    ),
                    port,
                    refresh_interval: cfg::Duration::from_secs(2),
                }),
                secret: None,
                secret_file: Some(
                    format!("{}/{}", names::PEERS_MOUNT, scale_out.secret_ref.key).into(),
                ),
                connect_timeout: cfg::Duration::from_millis(200),
                suspect_for: cfg::Duration::from_secs(5),
            }
        }),
    };
    if config.client_address.source == cfg::ClientAddressSource::Socket {
        config.client_address.trusted_hops = cfg::ClientAddressConfig::default().trusted_hops;
    }
    if let Err(validation) = cfg::validate_config(&config) {
        errors.extend(
            from_validation("", validation)
                .into_iter()
                .map(config_path_to_spec),
        );
    }
    if !errors.is_empty() {
        return Err(errors);
    }
    // The revision is a hash of everything else, so an unchanged spec renders the same
    // revision (and the same ConfigMap) every time.
    data.insert(CONFIG_KEY.to_owned(), config_yaml(&config)?);
    config.revision = Some(hash_data(&data)[..REVISION_HEX_DIGITS].to_owned());
    data.insert(CONFIG_KEY.to_owned(), config_yaml(&config)?);
    let hash = hash_data(&data);
    Ok(Rendered { config, data, hash })
}

/// Hex digits of the config revision (64 bits: unique among one protection's configs).
const REVISION_HEX_DIGITS: usize = 16;

fn config_yaml(config: &EnforcerConfig) -> Result<String, Vec<FieldError>> {
    serde_yaml_ng::to_string(config).map_err(|err| {
        vec![FieldError {
            field: "spec".into(),
            message: format!("rendering the config failed: {err}"),
        }]
    })
}

/// The upstream of the config [`rule_fits_history`] validates (a config needs one; that one
/// is never run).
const PLACEHOLDER_UPSTREAM: &str = "http://127.0.0.1:1";

/// Whether `rule` fits the session history that `session` configures (`spec.session.history`),
/// checked by the enforcer's own `validate_config` on a config holding only that rule, so a
/// rule with a longer window is refused on its own instead of failing the whole config.
/// Errors name the rule's `spec.…` fields.
pub fn rule_fits_history(
    rule: &SequenceRuleConfig,
    session: &crd::SessionSpec,
) -> Result<(), Vec<FieldError>> {
    let mut session_errors = Vec::new();
    let session = session_config(session, &mut session_errors);
    // A broken session spec is reported on the ApiProtection itself.
    if !session_errors.is_empty() {
        return Ok(());
    }
    let mut config = EnforcerConfig::new(cfg::UpstreamConfig::new(PLACEHOLDER_UPSTREAM));
    config.session.history = session.history;
    config.rules = vec![rule.clone()];
    let Err(validation) = cfg::validate_config(&config) else {
        return Ok(());
    };
    let errors: Vec<FieldError> = from_validation("", validation)
        .into_iter()
        .filter_map(|e| {
            e.field.strip_prefix("rules[0].").map(|rest| FieldError {
                field: format!("spec.{rest}"),
                message: e.message.clone(),
            })
        })
        .collect();
    if errors.is_empty() {
        Ok(())
    } else {
        Err(errors)
    }
}

/// Maps a path of the rendered config back to the ApiProtection field it came from.
fn config_path_to_spec(error: FieldError) -> FieldError {
    let field = &error.field;
    let mapped = if let Some(rest) = field.strip_prefix("rules") {
        format!("sequenceRules{rest}")
    } else if let Some(rest) = field.strip_prefix("limits.maxBodyBytes") {
        format!("spec.enforcer.maxBodyBytes{rest}")
    } else if let Some(rest) = field.strip_prefix("limits.") {
        format!("spec.enforcer.clientLimits.{rest}")
    } else if field.starts_with("session")
        || field.starts_with("clientAddress")
        || field.starts_with("learning")
        || field.starts_with("detectors")
        || field.starts_with("rateLimits")
        || field.starts_with("openAPI")
        || field.starts_with("mode")
    {
        format!("spec.{field}")
    } else {
        field.clone()
    };
    FieldError {
        field: mapped,
        message: error.message,
    }
}

/// The enforcer's `jwks` section: a mounted key is read from its file under
/// [`names::JWKS_MOUNT`] (resources.rs mounts it), a `uri` is fetched by the enforcer.
fn jwks_config(spec: &crd::JwksSpec, errors: &mut Vec<FieldError>) -> cfg::JwksConfig {
    let key = spec
        .config_map_key_ref
        .as_ref()
        .map(|r| &r.key)
        .or(spec.secret_key_ref.as_ref().map(|r| &r.key));
    let sources = usize::from(spec.config_map_key_ref.is_some())
        + usize::from(spec.secret_key_ref.is_some())
        + usize::from(spec.uri.is_some());
    if sources != 1 {
        errors.push(FieldError {
            field: "spec.session.jwtVerification.jwks".into(),
            message: "set exactly one of configMapKeyRef, secretKeyRef or uri".into(),
        });
    }
    if spec.ca_config_map_key_ref.is_some() && spec.uri.is_none() {
        errors.push(FieldError {
            field: "spec.session.jwtVerification.jwks.caConfigMapKeyRef".into(),
            message: "applies only to uri".into(),
        });
    }
    cfg::JwksConfig {
        file: match (&spec.uri, key) {
            (None, Some(key)) => Some(format!("{}/{key}", names::JWKS_MOUNT).into()),
            _ => None,
        },
        uri: spec.uri.clone(),
        ca_file: spec
            .ca_config_map_key_ref
            .as_ref()
            .map(|r| format!("{}/{}", names::JWKS_CA_MOUNT, r.key).into()),
        refresh_interval: spec.refresh_interval.as_deref().map(|text| {
            duration(
                "spec.session.jwtVerification.jwks.refreshInterval",
                text,
                errors,
            )
        }),
    }
}

fn session_config(spec: &crd::SessionSpec, errors: &mut Vec<FieldError>) -> cfg::SessionConfig {
    let identifiers = spec
        .identifiers
        .iter()
        .map(|id| cfg::SessionIdentifier {
            jwt_claim: id.jwt_claim.as_ref().map(|j| cfg::JwtClaimIdentifier {
                header: j.header.clone(),
                claim: j.claim.clone(),
            }),
            header: id.header.as_ref().map(|h| cfg::NamedIdentifier {
                name: h.name.clone(),
            }),
            cookie: id.cookie.as_ref().map(|c| cfg::NamedIdentifier {
                name: c.name.clone(),
            }),
            query_param: id.query_param.as_ref().map(|q| cfg::NamedIdentifier {
                name: q.name.clone(),
            }),
            client_ip: id.client_ip.as_ref().map(|_| cfg::ClientIpIdentifier {}),
        })
        .collect();
    let jwt_verification = spec.jwt_verification.as_ref().map(|jwt| {
        if jwt.secret_ref.is_some() == jwt.jwks.is_some() {
            errors.push(FieldError {
                field: "spec.session.jwtVerification.jwks".into(),
                message: "set exactly one of secretRef (fixed keys) or jwks (a published key set)"
                    .into(),
            });
        }
        let keys = match &jwt.secret_ref {
            Some(secret) => {
                if jwt.algorithms.is_empty() {
                    errors.push(FieldError {
                        field: "spec.session.jwtVerification.algorithms".into(),
                        message: "list the algorithms of the keys in secretRef".into(),
                    });
                }
                jwt.algorithms
                    .iter()
                    .map(|alg| cfg::JwtKeyConfig {
                        algorithm: match alg {
                            crd::JwtAlgorithm::Hs256 => cfg::JwtAlgorithm::HS256,
                            crd::JwtAlgorithm::Rs256 => cfg::JwtAlgorithm::RS256,
                            crd::JwtAlgorithm::Es256 => cfg::JwtAlgorithm::ES256,
                        },
                        kid: None,
                        secret: None,
                        public_key_pem: None,
                        file: Some(format!("{}/{}", names::JWT_MOUNT, secret.key).into()),
                    })
                    .collect()
            }
            None => Vec::new(),
        };
        if jwt.jwks.is_some() && jwt.secret_ref.is_none() && !jwt.algorithms.is_empty() {
            errors.push(FieldError {
                field: "spec.session.jwtVerification.algorithms".into(),
                message: "applies to secretRef only; with jwks each key's alg, kty and crv give its algorithm".into(),
            });
        }
        let jwks = jwt.jwks.as_ref().map(|j| jwks_config(j, errors));
        cfg::JwtVerificationConfig {
            jwks,
            on_invalid: match jwt.on_invalid {
                crd::InvalidTokenPolicy::Reject => cfg::OnInvalidToken::Reject,
                crd::InvalidTokenPolicy::FallThrough => cfg::OnInvalidToken::FallThrough,
            },
            require_exp: jwt.require_exp,
            issuer: jwt.issuer.clone(),
            audience: jwt.audience.clone(),
            ..cfg::JwtVerificationConfig::new(keys)
        }
    });
    cfg::SessionConfig {
        identifiers,
        idle_timeout: duration("spec.session.idleTimeout", &spec.idle_timeout, errors),
        jwt_verification,
        history: cfg::HistoryConfig {
            requests: count(
                "spec.session.history.requests",
                i64::from(spec.history.requests),
                errors,
            ),
            duration: duration(
                "spec.session.history.duration",
                &spec.history.duration,
                errors,
            ),
        },
        ..cfg::SessionConfig::default()
    }
}

/// SHA-256 over the ConfigMap data (keys sorted), hex.
pub fn hash_data(data: &BTreeMap<String, String>) -> String {
    let mut hasher = Sha256::new();
    for (key, value) in data {
        hasher.update((key.len() as u64).to_le_bytes());
        hasher.update(key.as_bytes());
        hasher.update((value.len() as u64).to_le_bytes());
        hasher.update(value.as_bytes());
    }
    hasher
        .finalize()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// Whether a SequenceRule belongs to the named protection.
pub fn rule_targets(rule: &SequenceRule, protection: &str) -> bool {
    rule.spec.protection_ref.name == protection
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The renderer builds on the enforcer's constructors; they must be the defaults the
    /// enforcer applies when it loads a document.
    #[test]
    fn the_enforcer_constructors_are_its_loaded_defaults() {
        let loaded = cfg::parse_yaml(&format!("upstream:\n  url: {PLACEHOLDER_UPSTREAM}\n"));
        let built = EnforcerConfig::new(cfg::UpstreamConfig::new(PLACEHOLDER_UPSTREAM));
        assert_eq!(loaded.unwrap(), built);
        let jwt: cfg::JwtVerificationConfig = serde_yaml_ng::from_str("keys: []").unwrap();
        assert_eq!(jwt, cfg::JwtVerificationConfig::new(Vec::new()));
    }

    fn spec(value: serde_json::Value) -> ApiProtectionSpec {
        serde_json::from_value(value).unwrap()
    }

    fn rule(value: serde_json::Value) -> SequenceRuleSpec {
        serde_json::from_value(value).unwrap()
    }

    fn input<'a>(spec: &'a ApiProtectionSpec, rules: Vec<SequenceRuleConfig>) -> RenderInput<'a> {
        RenderInput {
            namespace: "bank",
            name: "bank-api",
            spec,
            upstream_url: "http://bank-api-origin.bank.svc:80".into(),
            listen_port: 8080,
            admin_port: 9090,
            rules,
            openapi: Some("openapi: 3.0.3\ninfo: {title: t, version: '1'}\npaths: {}\n".into()),
            report: Some(ReportTarget {
                base_url: "https://ordo-operator.ordo-system.svc:8443/".into(),
                ca_pem: Some("-----BEGIN CERTIFICATE-----\n".into()),
                interval_seconds: 30,
            }),
        }
    }

    fn jwt_spec(jwt: serde_json::Value) -> ApiProtectionSpec {
        spec(serde_json::json!({
            "target": {"service": "bank-api", "port": 80},
            "session": {"identifiers": [{"jwtClaim": {"claim": "sub"}}], "jwtVerification": jwt},
        }))
    }

    #[test]
    fn client_limits_render_into_the_enforcer_limits() {
        let plain = spec(serde_json::json!({"target": {"service": "bank-api", "port": 80}}));
        let rendered = render(input(&plain, Vec::new())).unwrap();
        let limits = cfg::parse_yaml(&rendered.data[CONFIG_KEY]).unwrap().limits;
        // The CRD's defaults are the enforcer's.
        let defaults = cfg::LimitsConfig::default();
        assert_eq!(
            limits,
            cfg::LimitsConfig {
                max_body_bytes: 1_048_576,
                ..defaults
            }
        );

        let set = spec(serde_json::json!({
            "target": {"service": "bank-api", "port": 80},
            "enforcer": {"clientLimits": {"maxConnections": 900, "maxConnectionsPerClient": 0,
                "maxConcurrentRequestsPerClient": 12, "minBodyRate": 4096, "bodyRateGrace": "2s"}},
        }));
        let rendered = render(input(&set, Vec::new())).unwrap();
        let limits = cfg::parse_yaml(&rendered.data[CONFIG_KEY]).unwrap().limits;
        assert_eq!(limits.max_connections, Some(900));
        assert_eq!(limits.max_connections_per_client, 0);
        assert_eq!(limits.max_concurrent_requests_per_client, 12);
        assert_eq!(limits.min_body_rate, 4096);
        assert_eq!(limits.body_rate_grace, cfg::Duration::from_secs(2));

        let bad = spec(serde_json::json!({
            "target": {"service": "bank-api", "port": 80},
            "enforcer": {"clientLimits": {"maxConnections": 0, "bodyRateGrace": "soon"}},
        }));
        let errors = render(input(&bad, Vec::new())).unwrap_err();
        let fields: Vec<&str> = errors.iter().map(|e| e.field.as_str()).collect();
        assert!(
            fields.contains(&"spec.enforcer.clientLimits.bodyRateGrace")
                && fields.contains(&"spec.enforcer.clientLimits.maxConnections"),
            "{errors:?}"
        );
    }

    #[test]
    fn scale_out_renders_peers_found_by_the_headless_service() {
        let plain = spec(serde_json::json!({"target": {"service": "bank-api", "port": 80}}));
        let rendered = render(input(&plain, Vec::new())).unwrap();
        assert_eq!(
            cfg::parse_yaml(&rendered.data[CONFIG_KEY]).unwrap().peers,
            None
        );

        let spread = spec(serde_json::json!({
            "target": {"service": "bank-api", "port": 80},
            "enforcer": {"scaleOut": {"secretRef": {"name": "bank-peers", "key": "key"}}},
        }));
        let rendered = render(input(&spread, Vec::new())).unwrap();
        let peers = cfg::parse_yaml(&rendered.data[CONFIG_KEY])
            .unwrap()
            .peers
            .unwrap();
        assert_eq!(peers.listen.to_string(), "0.0.0.0:8444");
        assert_eq!(peers.advertise, "${POD_IP}:8444");
        let dns = peers.dns.unwrap();
        assert_eq!(
            (dns.name.as_str(), dns.port),
            ("bank-api-enforcer-peers.bank.svc", 8444)
        );
        assert_eq!(
            peers.secret_file.as_deref(),
            Some(std::path::Path::new("/etc/ordo/peers/key"))
        );
        assert!(peers.r#static.is_empty() && peers.secret.is_none());
    }

    #[test]
    fn jwks_renders_a_mounted_file_or_a_uri_with_issuer_and_audience() {
        let mounted = jwt_spec(serde_json::json!({
            "jwks": {"configMapKeyRef": {"name": "idp-keys", "key": "jwks.json"}},
            "issuer": "https://idp.example/realms/shop", "audience": "shop-api",
        }));
        let rendered = render(input(&mounted, Vec::new())).unwrap();
        let loaded = cfg::parse_yaml(&rendered.data[CONFIG_KEY]).unwrap();
        let jwt = loaded.session.jwt_verification.unwrap();
        assert!(jwt.keys.is_empty());
        let jwks = jwt.jwks.unwrap();
        assert_eq!(
            jwks.file.as_deref(),
            Some(std::path::Path::new("/etc/ordo/jwks/jwks.json"))
        );
        assert_eq!((jwks.uri, jwks.ca_file), (None, None));
        assert_eq!(
            jwt.issuer.as_deref(),
            Some("https://idp.example/realms/shop")
        );
        assert_eq!(jwt.audience.as_deref(), Some("shop-api"));

        let fetched = jwt_spec(serde_json::json!({"jwks": {
            "uri": "https://keycloak.example/realms/shop/protocol/openid-connect/certs",
            "refreshInterval": "10m",
            "caConfigMapKeyRef": {"name": "idp-ca", "key": "ca.crt"},
        }}));
        let rendered = render(input(&fetched, Vec::new())).unwrap();
        let loaded = cfg::parse_yaml(&rendered.data[CONFIG_KEY]).unwrap();
        let jwks = loaded.session.jwt_verification.unwrap().jwks.unwrap();
        assert_eq!(jwks.file, None);
        assert_eq!(
            jwks.uri.as_deref(),
            Some("https://keycloak.example/realms/shop/protocol/openid-connect/certs")
        );
        assert_eq!(jwks.refresh_interval, Some(cfg::Duration::from_secs(600)));
        assert_eq!(
            jwks.ca_file.as_deref(),
            Some(std::path::Path::new("/etc/ordo/jwks-ca/ca.crt"))
        );
    }

    #[test]
    fn invalid_jwks_specs_are_refused_naming_the_field() {
        let cases = [
            (
                serde_json::json!({"secretRef": {"name": "k", "key": "k"}, "algorithms": ["RS256"],
                    "jwks": {"uri": "https://idp.example/certs"}}),
                "spec.session.jwtVerification.jwks",
                "exactly one of secretRef",
            ),
            (
                serde_json::json!({"onInvalid": "Reject"}),
                "spec.session.jwtVerification.jwks",
                "exactly one of secretRef",
            ),
            (
                serde_json::json!({"jwks": {"uri": "https://idp.example/certs",
                    "secretKeyRef": {"name": "k", "key": "k"}}}),
                "spec.session.jwtVerification.jwks",
                "exactly one of configMapKeyRef, secretKeyRef or uri",
            ),
            (
                serde_json::json!({"jwks": {"uri": "http://idp.example/certs"}}),
                "spec.session.jwtVerification.jwks.uri",
                "https://",
            ),
            // Passes the CRD's pattern: only the webhook (this check) refuses it.
            (
                serde_json::json!({"jwks": {"uri": "https://idp.example:99999/certs"}}),
                "spec.session.jwtVerification.jwks.uri",
                "invalid URL",
            ),
            (
                serde_json::json!({"jwks": {"secretKeyRef": {"name": "k", "key": "k"},
                    "caConfigMapKeyRef": {"name": "ca", "key": "ca.crt"}}}),
                "spec.session.jwtVerification.jwks.caConfigMapKeyRef",
                "only to uri",
            ),
            (
                serde_json::json!({"jwks": {"uri": "https://idp.example/certs"}, "algorithms": ["RS256"]}),
                "spec.session.jwtVerification.algorithms",
                "applies to secretRef only",
            ),
            (
                serde_json::json!({"jwks": {"uri": "https://idp.example/certs", "refreshInterval": "0s"}}),
                "spec.session.jwtVerification.jwks.refreshInterval",
                "between 1s and 24h",
            ),
        ];
        for (jwt, field, message) in cases {
            let errors = render(input(&jwt_spec(jwt.clone()), Vec::new())).unwrap_err();
            assert!(
                errors
                    .iter()
                    .any(|e| e.field == field && e.message.contains(message)),
                "{jwt}: {errors:?}"
            );
        }
    }

    #[test]
    fn rendered_yaml_is_the_enforcers_own_config_with_rules_by_priority() {
        let spec = spec(serde_json::json!({
            "target": {"service": "bank-api", "port": 80},
            "mode": "Enforce",
            "learning": {"journeyGap": "2m"},
            "rateLimits": [{"operation": "POST /api/v1/transfer", "requests": 5, "per": "1m"}]
        }));
        let low = rule_config(
            "low",
            &rule(
                serde_json::json!({"protectionRef": {"name": "bank-api"}, "priority": 1,
            "maxRepeat": {"operation": "POST /api/v1/transfer", "count": 3}}),
            ),
        )
        .unwrap();
        let high = rule_config("high", &rule(serde_json::json!({"protectionRef": {"name": "bank-api"}, "priority": 900, "action": "Block",
            "requires": {"operation": "POST /api/v1/transfer", "after": ["GET /api/v1/accounts/{id}/balance"], "within": {"requests": 5, "duration": "2m"}}}))).unwrap();
        let rendered = render(input(&spec, vec![low, high])).unwrap();
        let yaml = &rendered.data[CONFIG_KEY];
        let loaded = cfg::parse_yaml(yaml).unwrap();
        assert_eq!(loaded, rendered.config);
        assert_eq!(
            loaded
                .rules
                .iter()
                .map(|r| r.name.as_str())
                .collect::<Vec<_>>(),
            vec!["high", "low"]
        );
        assert_eq!(loaded.mode, cfg::Mode::Enforce);
        assert_eq!(loaded.rate_limits[0].per, cfg::Duration::from_secs(60));
        assert_eq!(loaded.learning.journey_gap, cfg::Duration::from_secs(120));
        assert_eq!(
            loaded.rules[0].requires.as_ref().unwrap().within.duration,
            cfg::Duration::from_secs(120)
        );
        let report = loaded.report.unwrap();
        assert_eq!(
            report.url,
            "https://ordo-operator.ordo-system.svc:8443/v1/reports/bank/bank-api"
        );
        assert_eq!(
            report.ca_file,
            Some(format!("{}/{REPORT_CA_KEY}", names::CONFIG_MOUNT).into())
        );
        assert!(rendered.data.contains_key(OPENAPI_KEY));
        assert_eq!(
            loaded.open_api.unwrap().path,
            std::path::PathBuf::from(format!("{}/{OPENAPI_KEY}", names::CONFIG_MOUNT))
        );
        assert_eq!(rendered.hash, hash_data(&rendered.data));
        assert_eq!(rendered.hash.len(), 64);
    }

    #[test]
    fn detector_quarantine_renders_with_its_default_and_is_validated() {
        let quarantined = spec(
            serde_json::json!({"target": {"service": "bank-api", "port": 80},
            "detectors": {"enumeration": {"action": "Block", "quarantine": "1h"},
                          "volume": {"quarantine": "0s"}}}),
        );
        let config = render(input(&quarantined, vec![])).unwrap().config;
        let d = &config.detectors;
        assert_eq!(
            d.enumeration.quarantine,
            Some(cfg::Duration::from_secs(3600))
        );
        assert_eq!(d.volume.quarantine, Some(cfg::Duration::from_secs(0)));
        assert_eq!(
            d.credential_stuffing.quarantine, None,
            "the detector's default"
        );
        let bad = spec(
            serde_json::json!({"target": {"service": "bank-api", "port": 80},
            "detectors": {"enumeration": {"quarantine": "soon"}}}),
        );
        let errors = render(input(&bad, vec![])).unwrap_err();
        assert!(
            errors
                .iter()
                .any(|e| e.field == "spec.detectors.enumeration.quarantine"),
            "{errors:?}"
        );
    }

    #[test]
    fn session_history_comes_from_the_spec_and_bounds_rule_windows() {
        let long_rule = || {
            rule_config("long", &rule(serde_json::json!({"protectionRef": {"name": "bank-api"},
                "requires": {"operation": "POST /api/v1/transfer", "after": ["GET /api/v1/accounts"], "within": {"requests": 30, "duration": "30m"}}}))).unwrap()
        };
        let default = spec(serde_json::json!({"target": {"service": "bank-api", "port": 80}}));
        let errors = render(input(&default, vec![long_rule()])).unwrap_err();
        assert!(
            errors
                .iter()
                .any(|e| e.field.starts_with("sequenceRules[0]")
                    && e.message.contains("session.history")),
            "{errors:?}"
        );
        let longer = spec(
            serde_json::json!({"target": {"service": "bank-api", "port": 80},
            "session": {"history": {"requests": 32, "duration": "1h"}}}),
        );
        let rendered = render(input(&longer, vec![long_rule()])).unwrap();
        let loaded = cfg::parse_yaml(&rendered.data[CONFIG_KEY]).unwrap();
        assert_eq!(loaded.session.history.requests, 32);
        assert_eq!(
            loaded.session.history.duration,
            cfg::Duration::from_secs(3600)
        );
        assert_eq!(loaded.rules.len(), 1);
        // The operator refuses such a rule on its own, naming its field.
        let errors = rule_fits_history(&long_rule(), &default.session).unwrap_err();
        assert_eq!(
            errors[0].field, "spec.requires.within.requests",
            "{errors:?}"
        );
        assert!(
            errors[0].message.contains("session.history.requests"),
            "{errors:?}"
        );
        assert_eq!(
            errors[1].field, "spec.requires.within.duration",
            "{errors:?}"
        );
        assert_eq!(rule_fits_history(&long_rule(), &longer.session), Ok(()));
    }

    #[test]
    fn hash_changes_with_any_key_or_value() {
        let a = BTreeMap::from([("a".to_owned(), "1".to_owned())]);
        let b = BTreeMap::from([("a".to_owned(), "2".to_owned())]);
        let c = BTreeMap::from([("a1".to_owned(), String::new())]);
        assert_ne!(hash_data(&a), hash_data(&b));
        assert_ne!(hash_data(&a), hash_data(&c));
        assert_eq!(hash_data(&a), hash_data(&a.clone()));
    }

    #[test]
    fn rule_errors_name_the_spec_field() {
        let errors = rule_config("r", &rule(serde_json::json!({"protectionRef": {"name": "p"},
            "requires": {"operation": "POST /api/v1/transfer/{id", "after": ["GET /a", "GET /b?x"]}}))).unwrap_err();
        let fields: Vec<&str> = errors.iter().map(|e| e.field.as_str()).collect();
        assert!(fields.contains(&"spec.requires.operation"), "{errors:?}");
        assert!(fields.contains(&"spec.requires.after[1]"), "{errors:?}");
        let errors = rule_config(
            "r",
            &rule(serde_json::json!({"protectionRef": {"name": "p"},
            "minInterval": {"from": "GET /a", "to": "GET /b", "duration": "soon"}})),
        )
        .unwrap_err();
        assert_eq!(errors[0].field, "spec.minInterval.duration");
        let errors = rule_config(
            "Not Valid!",
            &rule(serde_json::json!({"protectionRef": {"name": "p"},
            "maxRepeat": {"operation": "GET /a", "count": 2}})),
        )
        .unwrap_err();
        assert_eq!(errors[0].field, "metadata.name");
    }

    #[test]
    fn invalid_protection_fields_are_named() {
        let spec = spec(serde_json::json!({
            "target": {"service": "bank-api", "port": 80},
            "session": {"idleTimeout": "forever"},
            "rateLimits": [{"operation": "GET /a/{x", "requests": 5, "per": "1m"}]
        }));
        let errors = render(input(&spec, Vec::new())).unwrap_err();
        let text = join_errors(&errors);
        assert!(text.contains("spec.session.idleTimeout"), "{text}");
        assert!(text.contains("spec.rateLimits[0]"), "{text}");
    }
}

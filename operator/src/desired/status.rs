//! The desired status of an ApiProtection, decided from what one reconcile observed: whether
//! the target resolved, whether the config rendered, whether enforcers are available, where
//! routing stands, which rules were accepted and what the enforcers reported. Pure: the
//! controller reads and writes, this decides the conditions and the phase.

use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;

use super::conditions::{self, Desired};
use super::summary::ReportPart;
use crate::crd::{ProtectionMode, ProtectionPhase};

/// Why `spec.target` cannot be used (`TargetResolved=False`; nothing is created).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TargetProblem {
    /// The Service does not exist in the namespace.
    ServiceNotFound { service: String, namespace: String },
    /// The Service has no such port; `known` lists its ports as `name(number)`.
    PortNotFound {
        service: String,
        port: IntOrString,
        known: Vec<String>,
    },
    /// The port is not TCP.
    UnsupportedPort { port: IntOrString },
    /// Takeover of a Service with more than one port (the enforcers serve one).
    MultiPortService { service: String, ports: usize },
    /// Takeover of an ExternalName Service.
    UnsupportedService,
    /// Takeover of a Service without a selector.
    NoSelector { service: String },
}

impl TargetProblem {
    /// The condition reason.
    pub fn reason(&self) -> &'static str {
        match self {
            Self::ServiceNotFound { .. } => "ServiceNotFound",
            Self::PortNotFound { .. } => "PortNotFound",
            Self::UnsupportedPort { .. } => "UnsupportedPort",
            Self::MultiPortService { .. } => "MultiPortService",
            Self::UnsupportedService => "UnsupportedService",
            Self::NoSelector { .. } => "NoSelector",
        }
    }

    /// The condition message: what is wrong and, where there is one, the way out.
    pub fn message(&self) -> String {
        match self {
            Self::ServiceNotFound { service, namespace } => {
                format!("Service {service} does not exist in namespace {namespace}")
            }
            Self::PortNotFound {
                service,
                port,
                known,
            } => format!(
                "Service {service} has no port {port:?}; it has {}",
                known.join(", ")
            ),
            Self::UnsupportedPort { port } => format!("port {port:?} is not TCP"),
            Self::MultiPortService { service, ports } => format!(
                "Takeover re-points the whole Service {service} and it has {ports} ports; the enforcers serve one. Use routing: Alongside"
            ),
            Self::UnsupportedService => "an ExternalName Service cannot be taken over".into(),
            Self::NoSelector { service } => {
                format!("Service {service} has no selector to take over; use routing: Alongside")
            }
        }
    }
}

/// Why the enforcer config could not be rendered (the previous config keeps running).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ConfigProblem {
    /// `spec.openAPI.configMapRef` names a ConfigMap or key that does not exist.
    OpenApiDocumentMissing(String),
    /// The rendered config does not validate.
    InvalidConfig(String),
}

impl ConfigProblem {
    /// The condition reason.
    pub fn reason(&self) -> &'static str {
        match self {
            Self::OpenApiDocumentMissing(_) => "OpenAPIDocumentMissing",
            Self::InvalidConfig(_) => "InvalidConfig",
        }
    }

    /// The condition message.
    pub fn message(&self) -> &str {
        match self {
            Self::OpenApiDocumentMissing(message) | Self::InvalidConfig(message) => message,
        }
    }
}

/// Where routing of client traffic stands after one reconcile.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RoutingOutcome {
    /// Takeover done: `service` selects the enforcers, `origin` the app.
    TakenOver { service: String, origin: String },
    /// `protected` selects the enforcers; `service` is untouched.
    Alongside { protected: String, service: String },
    /// Takeover waits: `service` keeps its selector until an enforcer is available.
    WaitingForEnforcers { service: String },
    /// Another ApiProtection already took the Service over.
    Conflict(String),
}

/// Replicas of the enforcer Deployment.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Availability {
    pub available: i32,
    pub ready: i32,
}

/// How far one reconcile got with the enforcers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Rollout {
    /// The target cannot be used: nothing was created or changed.
    NoTarget(TargetProblem),
    /// The target resolved to `port`, the config could not be rendered: nothing was applied.
    ConfigFailed { port: i32, problem: ConfigProblem },
    /// The config and the enforcers were applied and routing was reconciled.
    Applied {
        port: i32,
        enforcers: Availability,
        routing: RoutingOutcome,
    },
}

/// The verdicts on the SequenceRules that name the protection.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RuleVerdicts {
    /// Rules rendered into the config.
    pub accepted: usize,
    /// `name: why` of each rejected rule.
    pub rejected: Vec<String>,
}

/// What one reconcile read and did, the input of [`desired_status`].
#[derive(Debug, Clone)]
pub struct Observed<'a> {
    /// The target Service's name.
    pub service: &'a str,
    pub mode: ProtectionMode,
    /// `spec.enforcer.replicas`.
    pub replicas: i32,
    pub rules: RuleVerdicts,
    /// The report-derived part of the status (none: the report state is unavailable).
    pub report: Option<&'a ReportPart>,
    pub rollout: Rollout,
}

/// The conditions (in the order they are written) and the phase.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DesiredStatus {
    pub conditions: Vec<Desired>,
    pub phase: ProtectionPhase,
}

/// The conditions and phase for what a reconcile observed.
pub fn desired_status(observed: &Observed<'_>) -> DesiredStatus {
    let (target, enforcers, ready, phase) = match &observed.rollout {
        Rollout::NoTarget(problem) => (
            Desired::new(
                conditions::TARGET_RESOLVED,
                false,
                problem.reason(),
                problem.message(),
            ),
            Desired::new(
                conditions::ENFORCER_AVAILABLE,
                false,
                "TargetNotResolved",
                "no enforcers without a target",
            ),
            Desired::new(
                conditions::READY,
                false,
                problem.reason(),
                problem.message(),
            ),
            ProtectionPhase::Pending,
        ),
        Rollout::ConfigFailed { port, problem } => (
            target_resolved(observed.service, *port),
            Desired::new(
                conditions::ENFORCER_AVAILABLE,
                false,
                problem.reason(),
                "the enforcer config could not be rendered; the previous one stays",
            ),
            Desired::new(
                conditions::READY,
                false,
                problem.reason(),
                problem.message(),
            ),
            ProtectionPhase::Failed,
        ),
        Rollout::Applied {
            port,
            enforcers,
            routing,
        } => {
            let (ready, phase) = readiness(observed, *enforcers, routing);
            (
                target_resolved(observed.service, *port),
                enforcer_available(*enforcers, observed.replicas),
                ready,
                phase,
            )
        }
    };
    DesiredStatus {
        conditions: vec![
            target,
            enforcers,
            rules_accepted(&observed.rules),
            model_mature(observed.report),
            ready,
        ],
        phase,
    }
}

fn target_resolved(service: &str, port: i32) -> Desired {
    Desired::new(
        conditions::TARGET_RESOLVED,
        true,
        "Resolved",
        format!("Service {service} port {port}"),
    )
}

fn enforcer_available(enforcers: Availability, replicas: i32) -> Desired {
    if enforcers.available > 0 {
        Desired::new(
            conditions::ENFORCER_AVAILABLE,
            true,
            "Available",
            format!(
                "{} of {replicas} enforcer(s) available",
                enforcers.available
            ),
        )
    } else {
        Desired::new(
            conditions::ENFORCER_AVAILABLE,
            false,
            "NoneAvailable",
            "waiting for an enforcer pod to become available",
        )
    }
}

/// `Ready` and the phase once the enforcers were applied.
fn readiness(
    observed: &Observed<'_>,
    enforcers: Availability,
    routing: &RoutingOutcome,
) -> (Desired, ProtectionPhase) {
    let routed = match routing {
        RoutingOutcome::TakenOver { service, origin } => {
            format!("Service {service} selects the enforcers; {origin} selects the app")
        }
        RoutingOutcome::Alongside { protected, service } => {
            format!("Service {protected} selects the enforcers; {service} is untouched")
        }
        RoutingOutcome::WaitingForEnforcers { service } => {
            return (
                waiting_for_enforcers(format!(
                    "Service {service} keeps its selector until an enforcer is available"
                )),
                ProtectionPhase::Pending,
            );
        }
        RoutingOutcome::Conflict(message) => {
            return (
                Desired::new(conditions::READY, false, "Conflict", message.clone()),
                ProtectionPhase::Failed,
            );
        }
    };
    if enforcers.available == 0 {
        return (
            waiting_for_enforcers("no enforcer is available yet".into()),
            ProtectionPhase::Pending,
        );
    }
    let mature = observed.report.is_some_and(|r| r.mature);
    let phase = if observed.mode == ProtectionMode::Learn || !mature {
        ProtectionPhase::Learning
    } else if enforcers.ready < observed.replicas {
        ProtectionPhase::Degraded
    } else {
        ProtectionPhase::Protecting
    };
    (
        Desired::new(conditions::READY, true, "Protecting", routed),
        phase,
    )
}

fn waiting_for_enforcers(message: String) -> Desired {
    Desired::new(conditions::READY, false, "WaitingForEnforcers", message)
}

fn rules_accepted(rules: &RuleVerdicts) -> Desired {
    if rules.rejected.is_empty() {
        Desired::new(
            conditions::RULES_ACCEPTED,
            true,
            "AllAccepted",
            format!("{} rule(s) accepted", rules.accepted),
        )
    } else {
        Desired::new(
            conditions::RULES_ACCEPTED,
            false,
            "RulesRejected",
            format!("rejected: {}", rules.rejected.join("; ")),
        )
    }
}

fn model_mature(report: Option<&ReportPart>) -> Desired {
    match report.and_then(|r| r.model.as_ref()) {
        Some(model) if model.mature => Desired::new(
            conditions::MODEL_MATURE,
            true,
            "Mature",
            format!(
                "learned from {} requests in {} sessions",
                model.requests, model.sessions
            ),
        ),
        Some(model) => Desired::new(
            conditions::MODEL_MATURE,
            false,
            "Learning",
            format!(
                "learned from {} requests in {} sessions so far",
                model.requests, model.sessions
            ),
        ),
        None => Desired::new(
            conditions::MODEL_MATURE,
            false,
            "NoReports",
            "no enforcer has reported yet",
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::crd::ModelSummary;

    fn observed(rollout: Rollout) -> Observed<'static> {
        Observed {
            service: "bank-api",
            mode: ProtectionMode::Monitor,
            replicas: 2,
            rules: RuleVerdicts {
                accepted: 1,
                rejected: Vec::new(),
            },
            report: None,
            rollout,
        }
    }

    fn applied(available: i32, ready: i32, routing: RoutingOutcome) -> Rollout {
        Rollout::Applied {
            port: 8080,
            enforcers: Availability { available, ready },
            routing,
        }
    }

    fn taken_over() -> RoutingOutcome {
        RoutingOutcome::TakenOver {
            service: "bank-api".into(),
            origin: "bank-api-origin".into(),
        }
    }

    fn mature_report() -> ReportPart {
        ReportPart {
            model: Some(ModelSummary {
                requests: 5000,
                sessions: 60,
                mature: true,
                ..ModelSummary::default()
            }),
            mature: true,
            ..ReportPart::default()
        }
    }

    /// `(type, status, reason)` of each condition, in order.
    fn summary(status: &DesiredStatus) -> Vec<(&'static str, bool, &str)> {
        status
            .conditions
            .iter()
            .map(|c| (c.type_, c.ok, c.reason.as_str()))
            .collect()
    }

    fn condition<'a>(status: &'a DesiredStatus, type_: &str) -> &'a Desired {
        let found = status.conditions.iter().find(|c| c.type_ == type_);
        found.unwrap_or_else(|| panic!("no condition {type_} in {status:?}"))
    }

    #[test]
    fn a_missing_target_service_creates_nothing_and_says_why() {
        let status = desired_status(&observed(Rollout::NoTarget(
            TargetProblem::ServiceNotFound {
                service: "bank-api".into(),
                namespace: "bank".into(),
            },
        )));
        assert_eq!(
            summary(&status),
            [
                (conditions::TARGET_RESOLVED, false, "ServiceNotFound"),
                (conditions::ENFORCER_AVAILABLE, false, "TargetNotResolved"),
                (conditions::RULES_ACCEPTED, true, "AllAccepted"),
                (conditions::MODEL_MATURE, false, "NoReports"),
                (conditions::READY, false, "ServiceNotFound"),
            ]
        );
        assert_eq!(status.phase, ProtectionPhase::Pending);
        assert_eq!(
            condition(&status, conditions::READY).message,
            "Service bank-api does not exist in namespace bank"
        );
    }

    #[test]
    fn every_target_problem_has_its_own_reason_and_message() {
        let port = IntOrString::String("http".into());
        let problems = [
            (
                TargetProblem::PortNotFound {
                    service: "s".into(),
                    port: port.clone(),
                    known: vec!["grpc(9090)".into(), "(80)".into()],
                },
                "PortNotFound",
                "Service s has no port String(\"http\"); it has grpc(9090), (80)",
            ),
            (
                TargetProblem::UnsupportedPort { port },
                "UnsupportedPort",
                "port String(\"http\") is not TCP",
            ),
            (
                TargetProblem::MultiPortService {
                    service: "s".into(),
                    ports: 2,
                },
                "MultiPortService",
                "Takeover re-points the whole Service s and it has 2 ports; the enforcers serve one. Use routing: Alongside",
            ),
            (
                TargetProblem::UnsupportedService,
                "UnsupportedService",
                "an ExternalName Service cannot be taken over",
            ),
            (
                TargetProblem::NoSelector {
                    service: "s".into(),
                },
                "NoSelector",
                "Service s has no selector to take over; use routing: Alongside",
            ),
        ];
        for (problem, reason, message) in problems {
            assert_eq!(
                (problem.reason(), problem.message().as_str()),
                (reason, message)
            );
        }
    }

    #[test]
    fn an_invalid_config_fails_and_keeps_the_previous_enforcers() {
        for problem in [
            ConfigProblem::InvalidConfig("spec.session.header: empty".into()),
            ConfigProblem::OpenApiDocumentMissing("ConfigMap api-doc does not exist".into()),
        ] {
            let reason = problem.reason();
            let status = desired_status(&observed(Rollout::ConfigFailed {
                port: 8080,
                problem: problem.clone(),
            }));
            assert_eq!(
                summary(&status),
                [
                    (conditions::TARGET_RESOLVED, true, "Resolved"),
                    (conditions::ENFORCER_AVAILABLE, false, reason),
                    (conditions::RULES_ACCEPTED, true, "AllAccepted"),
                    (conditions::MODEL_MATURE, false, "NoReports"),
                    (conditions::READY, false, reason),
                ]
            );
            assert_eq!(status.phase, ProtectionPhase::Failed);
            assert_eq!(
                condition(&status, conditions::READY).message,
                problem.message()
            );
            assert_eq!(
                condition(&status, conditions::TARGET_RESOLVED).message,
                "Service bank-api port 8080"
            );
        }
        assert_eq!(
            ConfigProblem::OpenApiDocumentMissing(String::new()).reason(),
            "OpenAPIDocumentMissing"
        );
    }

    #[test]
    fn rejected_rules_are_named_but_do_not_stop_protection() {
        let report = mature_report();
        let mut input = observed(applied(2, 2, taken_over()));
        input.rules = RuleVerdicts {
            accepted: 1,
            rejected: vec!["a: bad window".into(), "b: unknown operation".into()],
        };
        input.report = Some(&report);
        let status = desired_status(&input);
        let rules = condition(&status, conditions::RULES_ACCEPTED);
        assert_eq!((rules.ok, rules.reason.as_str()), (false, "RulesRejected"));
        assert_eq!(
            rules.message,
            "rejected: a: bad window; b: unknown operation"
        );
        assert!(condition(&status, conditions::READY).ok);
        assert_eq!(status.phase, ProtectionPhase::Protecting);
    }

    #[test]
    fn no_available_enforcer_keeps_the_protection_pending() {
        let waiting = RoutingOutcome::WaitingForEnforcers {
            service: "bank-api".into(),
        };
        let alongside = RoutingOutcome::Alongside {
            protected: "bank-api-protected".into(),
            service: "bank-api".into(),
        };
        for (routing, message) in [
            (
                waiting,
                "Service bank-api keeps its selector until an enforcer is available",
            ),
            (alongside, "no enforcer is available yet"),
        ] {
            let status = desired_status(&observed(applied(0, 0, routing)));
            let enforcers = condition(&status, conditions::ENFORCER_AVAILABLE);
            assert_eq!(
                (enforcers.ok, enforcers.reason.as_str()),
                (false, "NoneAvailable")
            );
            let ready = condition(&status, conditions::READY);
            assert_eq!(
                (ready.ok, ready.reason.as_str(), ready.message.as_str()),
                (false, "WaitingForEnforcers", message)
            );
            assert_eq!(status.phase, ProtectionPhase::Pending);
        }
    }

    #[test]
    fn a_service_taken_over_by_another_protection_fails() {
        let conflict = RoutingOutcome::Conflict(
            "Service bank-api is already taken over by ApiProtection other".into(),
        );
        let status = desired_status(&observed(applied(2, 2, conflict)));
        let ready = condition(&status, conditions::READY);
        assert_eq!((ready.ok, ready.reason.as_str()), (false, "Conflict"));
        assert!(
            ready.message.contains("ApiProtection other"),
            "{}",
            ready.message
        );
        assert!(condition(&status, conditions::ENFORCER_AVAILABLE).ok);
        assert_eq!(status.phase, ProtectionPhase::Failed);
    }

    #[test]
    fn all_good_protects_once_the_model_is_mature_and_every_replica_is_ready() {
        let report = mature_report();
        let mut input = observed(applied(2, 2, taken_over()));
        input.report = Some(&report);
        let status = desired_status(&input);
        assert_eq!(
            summary(&status),
            [
                (conditions::TARGET_RESOLVED, true, "Resolved"),
                (conditions::ENFORCER_AVAILABLE, true, "Available"),
                (conditions::RULES_ACCEPTED, true, "AllAccepted"),
                (conditions::MODEL_MATURE, true, "Mature"),
                (conditions::READY, true, "Protecting"),
            ]
        );
        assert_eq!(status.phase, ProtectionPhase::Protecting);
        assert_eq!(
            condition(&status, conditions::READY).message,
            "Service bank-api selects the enforcers; bank-api-origin selects the app"
        );
        assert_eq!(
            condition(&status, conditions::ENFORCER_AVAILABLE).message,
            "2 of 2 enforcer(s) available"
        );

        input.rollout = applied(1, 1, taken_over());
        assert_eq!(desired_status(&input).phase, ProtectionPhase::Degraded);
        input.mode = ProtectionMode::Learn;
        assert_eq!(desired_status(&input).phase, ProtectionPhase::Learning);
        input.mode = ProtectionMode::Enforce;
        input.report = None;
        assert_eq!(desired_status(&input).phase, ProtectionPhase::Learning);
    }
}

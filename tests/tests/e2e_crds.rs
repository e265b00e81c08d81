//! The CRDs on a real API server (the local control plane of `ordo_tests::cluster`): they
//! install and become Established; resources with every field set round-trip unchanged (spec
//! and status); invalid resources are rejected with a message that names the offending field;
//! server-side defaults, printer columns, the field selector and `kubectl explain` work.

use anyhow::{Context, Result, anyhow, bail};
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::api::{Api, ApiResource, DynamicObject, ListParams, Patch, PatchParams, PostParams};
use kube::{Client, CustomResourceExt, Resource};
use ordo_operator::crd::examples::{
    FULL_API_PROTECTION, FULL_SEQUENCE_RULES, JWKS_API_PROTECTIONS, MINIMAL_API_PROTECTION,
};
use ordo_operator::crd::{ApiProtection, ApiProtectionSpec, SequenceRule};
use ordo_tests::e2e::{self, Diagnostics, yaml_documents};
use serde_json::{Value, json};

fn dynamic<K: Resource<DynamicType = ()>>(client: &Client, namespace: &str) -> Api<DynamicObject> {
    Api::namespaced_with(client.clone(), namespace, &ApiResource::erase::<K>(&()))
}

/// Creates `manifest` (without its status) and then applies its status through the status
/// subresource, as the operator does; returns the object as the server stores it.
async fn create_with_status(api: &Api<DynamicObject>, manifest: &Value) -> Result<Value> {
    let name = manifest["metadata"]["name"]
        .as_str()
        .context("manifest without a name")?;
    let mut without_status = manifest.clone();
    if let Some(object) = without_status.as_object_mut() {
        object.remove("status");
    }
    let object: DynamicObject = serde_json::from_value(without_status)?;
    api.create(&PostParams::default(), &object)
        .await
        .with_context(|| format!("creating {name}"))?;
    let status = json!({
        "apiVersion": manifest["apiVersion"],
        "kind": manifest["kind"],
        "status": manifest["status"],
    });
    api.patch_status(
        name,
        &PatchParams::apply("ordo-e2e").force(),
        &Patch::Apply(status),
    )
    .await
    .with_context(|| format!("applying the status of {name}"))?;
    let stored = api.get(name).await?;
    Ok(serde_json::to_value(stored.data)?)
}

#[tokio::test]
async fn crds_install_and_become_established() -> Result<()> {
    let (cluster, client, namespace) = e2e::setup("crds-established").await?;
    let diagnostics = Diagnostics::new(cluster, &namespace);
    let crds: Api<CustomResourceDefinition> = Api::all(client.clone());
    for name in [ApiProtection::crd_name(), SequenceRule::crd_name()] {
        let crd = crds.get(name).await?;
        let conditions = crd
            .status
            .and_then(|s| s.conditions)
            .ok_or_else(|| anyhow!("{name} has no conditions"))?;
        for wanted in ["Established", "NamesAccepted"] {
            let condition = conditions
                .iter()
                .find(|c| c.type_ == wanted)
                .ok_or_else(|| anyhow!("{name} lacks condition {wanted}"))?;
            assert_eq!(
                condition.status, "True",
                "{name} {wanted}: {:?}",
                condition.message
            );
        }
        // Nothing in the schema made the API server complain (non-structural schema, CEL cost).
        assert!(
            !conditions.iter().any(|c| c.type_ == "NonStructuralSchema"),
            "{name}: {conditions:?}"
        );
    }
    // The kinds are served.
    let protections: Api<ApiProtection> = Api::namespaced(client.clone(), &namespace);
    assert!(
        protections
            .list(&ListParams::default())
            .await?
            .items
            .is_empty()
    );
    let rules: Api<SequenceRule> = Api::namespaced(client, &namespace);
    assert!(rules.list(&ListParams::default()).await?.items.is_empty());
    diagnostics.passed();
    Ok(())
}

#[tokio::test]
async fn api_protection_with_every_field_round_trips_unchanged() -> Result<()> {
    let (cluster, client, namespace) = e2e::setup("crds-apip-roundtrip").await?;
    let diagnostics = Diagnostics::new(cluster, &namespace);
    let manifest = yaml_documents(FULL_API_PROTECTION)?.remove(0);
    let api = dynamic::<ApiProtection>(&client, &namespace);
    let stored = create_with_status(&api, &manifest).await?;
    assert_eq!(
        stored["spec"], manifest["spec"],
        "spec changed on the way through the API server"
    );
    assert_eq!(
        stored["status"], manifest["status"],
        "status changed on the way through the API server"
    );

    // And the typed view agrees with the example.
    let typed: Api<ApiProtection> = Api::namespaced(client, &namespace);
    let read = typed.get("bank-api").await?;
    let expected: ApiProtection = serde_yaml_ng::from_str(FULL_API_PROTECTION)?;
    assert_eq!(read.spec, expected.spec);
    assert_eq!(read.status, expected.status);
    diagnostics.passed();
    Ok(())
}

#[tokio::test]
async fn sequence_rules_of_every_kind_round_trip_unchanged() -> Result<()> {
    let (cluster, client, namespace) = e2e::setup("crds-rules-roundtrip").await?;
    let diagnostics = Diagnostics::new(cluster, &namespace);
    let api = dynamic::<SequenceRule>(&client, &namespace);
    let manifests = yaml_documents(FULL_SEQUENCE_RULES)?;
    assert_eq!(manifests.len(), 4);
    for manifest in &manifests {
        let stored = create_with_status(&api, manifest).await?;
        let name = &manifest["metadata"]["name"];
        assert_eq!(stored["spec"], manifest["spec"], "{name}: spec changed");
        assert_eq!(
            stored["status"], manifest["status"],
            "{name}: status changed"
        );
    }

    // The selectable field lets the operator (and users) list the rules of one protection.
    let rules: Api<SequenceRule> = Api::namespaced(client, &namespace);
    let of_bank = rules
        .list(&ListParams::default().fields("spec.protectionRef.name=bank-api"))
        .await?;
    assert_eq!(of_bank.items.len(), 4);
    let of_other = rules
        .list(&ListParams::default().fields("spec.protectionRef.name=other-api"))
        .await?;
    assert!(of_other.items.is_empty());
    diagnostics.passed();
    Ok(())
}

#[tokio::test]
async fn minimal_api_protection_is_defaulted_by_the_api_server() -> Result<()> {
    let (cluster, client, namespace) = e2e::setup("crds-defaults").await?;
    let diagnostics = Diagnostics::new(cluster, &namespace);
    let manifest = yaml_documents(MINIMAL_API_PROTECTION)?.remove(0);
    let api = dynamic::<ApiProtection>(&client, &namespace);
    let object: DynamicObject = serde_json::from_value(manifest.clone())?;
    let created = api.create(&PostParams::default(), &object).await?;

    // The server fills in exactly the defaults the Rust types have, so what kubectl shows is
    // what the operator renders.
    let spec: ApiProtectionSpec = serde_json::from_value(manifest["spec"].clone())?;
    let expected = serde_json::to_value(&spec)?;
    assert_eq!(created.data["spec"], expected);
    assert_eq!(created.data["spec"]["mode"], "Monitor");
    assert_eq!(
        created.data["spec"]["session"]["identifiers"][0]["jwtClaim"]["claim"],
        "sub"
    );
    diagnostics.passed();
    Ok(())
}

/// An invalid manifest and what the API server's message must say about it.
struct Invalid {
    what: &'static str,
    manifest: Value,
    /// Substrings of the rejection message: the field path and the reason.
    expect: &'static [&'static str],
}

fn rule_manifest(spec: Value) -> Value {
    json!({
        "apiVersion": "ordo.dev/v1alpha1",
        "kind": "SequenceRule",
        "metadata": {"name": "invalid-rule"},
        "spec": spec,
    })
}

fn protection_manifest(spec: Value) -> Value {
    json!({
        "apiVersion": "ordo.dev/v1alpha1",
        "kind": "ApiProtection",
        "metadata": {"name": "invalid-protection"},
        "spec": spec,
    })
}

fn invalid_resources() -> Vec<Invalid> {
    let requires =
        json!({"operation": "POST /api/v1/transferFunds", "after": ["GET /api/v1/accounts"]});
    let target = json!({"service": "bank-api", "port": 8080});
    vec![
        Invalid {
            what: "two rule kinds at once",
            manifest: rule_manifest(json!({
                "protectionRef": {"name": "bank-api"},
                "requires": requires,
                "maxRepeat": {"operation": "GET /api/v1/users/lookup", "count": 3},
            })),
            expect: &[
                "spec: Invalid value",
                "exactly one of requires, forbids, maxRepeat or minInterval",
            ],
        },
        Invalid {
            what: "no rule kind",
            manifest: rule_manifest(json!({"protectionRef": {"name": "bank-api"}})),
            expect: &[
                "spec: Invalid value",
                "exactly one of requires, forbids, maxRepeat or minInterval",
            ],
        },
        Invalid {
            what: "within.requests 0",
            manifest: rule_manifest(json!({
                "protectionRef": {"name": "bank-api"},
                "requires": {"operation": "POST /t", "after": ["GET /a"], "within": {"requests": 0, "duration": "1m"}},
            })),
            expect: &[
                "spec.requires.within.requests",
                "within.requests must be between 1 and 64",
            ],
        },
        Invalid {
            what: "within.requests 65",
            manifest: rule_manifest(json!({
                "protectionRef": {"name": "bank-api"},
                "forbids": {"sequence": ["GET /a", "POST /b"], "within": {"requests": 65, "duration": "1m"}},
            })),
            expect: &[
                "spec.forbids.within.requests",
                "within.requests must be between 1 and 64",
            ],
        },
        Invalid {
            what: "operation syntax",
            manifest: rule_manifest(json!({
                "protectionRef": {"name": "bank-api"},
                "requires": {"operation": "transferFunds", "after": ["GET /api/v1/accounts"]},
            })),
            expect: &["spec.requires.operation", "should match"],
        },
        Invalid {
            what: "operation syntax in a list",
            manifest: rule_manifest(json!({
                "protectionRef": {"name": "bank-api"},
                "forbids": {"sequence": ["GET /a", "FETCH /b"]},
            })),
            expect: &["spec.forbids.sequence[1]", "should match"],
        },
        Invalid {
            what: "priority out of range",
            manifest: rule_manifest(json!({
                "protectionRef": {"name": "bank-api"},
                "priority": 1001,
                "requires": requires,
            })),
            expect: &["spec.priority", "priority must be between 0 and 1000"],
        },
        Invalid {
            what: "forbidden sequence of one operation",
            manifest: rule_manifest(json!({
                "protectionRef": {"name": "bank-api"},
                "forbids": {"sequence": ["GET /a"]},
            })),
            expect: &["spec.forbids.sequence", "at least 2 items"],
        },
        Invalid {
            what: "unsatisfiable requires window",
            manifest: rule_manifest(json!({
                "protectionRef": {"name": "bank-api"},
                "requires": {"operation": "POST /t", "after": ["GET /a", "GET /b"], "within": {"requests": 2, "duration": "1m"}},
            })),
            expect: &[
                "spec.requires.within.requests",
                "greater than the number of operations in requires.after",
            ],
        },
        Invalid {
            what: "unknown mode",
            manifest: protection_manifest(json!({"target": target, "mode": "Sometimes"})),
            expect: &["spec.mode", "Unsupported value: \"Sometimes\""],
        },
        Invalid {
            what: "session identifier with two kinds",
            manifest: protection_manifest(json!({
                "target": target,
                "session": {"identifiers": [{"header": {"name": "X-Api-Key"}, "cookie": {"name": "sid"}}]},
            })),
            expect: &[
                "spec.session.identifiers[0]",
                "set exactly one of jwtClaim, header, cookie, queryParam or clientIp",
            ],
        },
        Invalid {
            what: "clientIp before another identifier",
            manifest: protection_manifest(json!({
                "target": target,
                "session": {"identifiers": [{"clientIp": {}}, {"header": {"name": "X-Api-Key"}}]},
            })),
            expect: &[
                "spec.session.identifiers",
                "clientIp may appear once and only as the last entry",
            ],
        },
        Invalid {
            what: "port 0",
            manifest: protection_manifest(json!({"target": {"service": "bank-api", "port": 0}})),
            expect: &["spec.target.port", "port number from 1 to 65535"],
        },
        Invalid {
            what: "port name with capitals",
            manifest: protection_manifest(
                json!({"target": {"service": "bank-api", "port": "Http_Port"}}),
            ),
            expect: &[
                "spec.target.port",
                "port number from 1 to 65535 or a port name",
            ],
        },
        Invalid {
            what: "duration in words",
            manifest: protection_manifest(json!({
                "target": target,
                "session": {"idleTimeout": "ten minutes"},
            })),
            expect: &["spec.session.idleTimeout", "should match"],
        },
        Invalid {
            what: "HS256 mixed with RS256",
            manifest: protection_manifest(json!({
                "target": target,
                "session": {"jwtVerification": {"secretRef": {"name": "keys", "key": "k"}, "algorithms": ["HS256", "RS256"]}},
            })),
            expect: &[
                "spec.session.jwtVerification.algorithms",
                "HS256 (a shared secret) cannot be combined",
            ],
        },
        Invalid {
            what: "fixed keys and a JWKS at once",
            manifest: protection_manifest(json!({
                "target": target,
                "session": {"jwtVerification": {"secretRef": {"name": "keys", "key": "k"}, "algorithms": ["RS256"], "jwks": {"uri": "https://idp.example/certs"}}},
            })),
            expect: &[
                "spec.session.jwtVerification.jwks",
                "set exactly one of secretRef (fixed keys) or jwks",
            ],
        },
        Invalid {
            what: "a JWKS with two sources",
            manifest: protection_manifest(json!({
                "target": target,
                "session": {"jwtVerification": {"jwks": {"uri": "https://idp.example/certs", "configMapKeyRef": {"name": "idp", "key": "jwks.json"}}}},
            })),
            expect: &[
                "spec.session.jwtVerification.jwks",
                "set exactly one of configMapKeyRef, secretKeyRef or uri",
            ],
        },
        Invalid {
            what: "a JWKS over plain HTTP",
            manifest: protection_manifest(json!({
                "target": target,
                "session": {"jwtVerification": {"jwks": {"uri": "http://idp.example/certs"}}},
            })),
            expect: &[
                "spec.session.jwtVerification.jwks.uri",
                "must be an https:// URL",
            ],
        },
        Invalid {
            what: "X-Forwarded-For without trusted hops",
            manifest: protection_manifest(json!({
                "target": target,
                "clientAddress": {"source": "XForwardedFor"},
            })),
            expect: &[
                "spec.clientAddress.trustedHops",
                "must be at least 1 when source is XForwardedFor",
            ],
        },
        Invalid {
            what: "rate limit of zero requests",
            manifest: protection_manifest(json!({
                "target": target,
                "rateLimits": [{"operation": "GET /a", "requests": 0, "per": "1m"}],
            })),
            expect: &[
                "spec.rateLimits[0].requests",
                "should be greater than or equal to 1",
            ],
        },
    ]
}

/// The JWKS examples (one per source) pass the server's schema and CEL rules as they are.
#[tokio::test]
async fn jwks_examples_are_accepted() -> Result<()> {
    let (cluster, client, namespace) = e2e::setup("crds-jwks").await?;
    let diagnostics = Diagnostics::new(cluster, &namespace);
    let protections = dynamic::<ApiProtection>(&client, &namespace);
    for (i, mut manifest) in yaml_documents(JWKS_API_PROTECTIONS)?
        .into_iter()
        .enumerate()
    {
        manifest["metadata"]["name"] = json!(format!("jwks-{i}"));
        manifest["metadata"]["namespace"] = json!(namespace);
        let object: DynamicObject = serde_json::from_value(manifest.clone())?;
        let created = protections
            .create(&PostParams::default(), &object)
            .await
            .with_context(|| format!("creating JWKS example {i}"))?;
        // Stored as written (the server adds only the defaults `onInvalid` and `requireExp`).
        let stored = serde_json::to_value(&created)?;
        let written = &manifest["spec"]["session"]["jwtVerification"];
        let stored = &stored["spec"]["session"]["jwtVerification"];
        for field in ["jwks", "issuer", "audience"] {
            if stored[field] != written[field] {
                bail!("JWKS example {i}: {field} changed on the server: {stored}");
            }
        }
    }
    diagnostics.passed();
    Ok(())
}

#[tokio::test]
async fn invalid_resources_are_rejected_naming_the_field() -> Result<()> {
    let (cluster, client, namespace) = e2e::setup("crds-invalid").await?;
    let diagnostics = Diagnostics::new(cluster, &namespace);
    let protections = dynamic::<ApiProtection>(&client, &namespace);
    let rules = dynamic::<SequenceRule>(&client, &namespace);
    let mut failures = Vec::new();
    for case in invalid_resources() {
        let api = match case.manifest["kind"].as_str() {
            Some("SequenceRule") => &rules,
            _ => &protections,
        };
        let object: DynamicObject = serde_json::from_value(case.manifest.clone())?;
        match api.create(&PostParams::default(), &object).await {
            Ok(_) => {
                failures.push(format!("{}: accepted", case.what));
                let name = object.metadata.name.as_deref().unwrap_or_default();
                api.delete(name, &Default::default()).await?;
            }
            Err(kube::Error::Api(status)) => {
                let missing: Vec<_> = case
                    .expect
                    .iter()
                    .filter(|e| !status.message.contains(**e))
                    .collect();
                if status.code != 422 || !missing.is_empty() {
                    failures.push(format!(
                        "{}: code {} message {:?} lacks {missing:?}",
                        case.what, status.code, status.message
                    ));
                }
            }
            Err(other) => bail!("{}: {other}", case.what),
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
    // Nothing invalid was stored.
    assert!(
        protections
            .list(&ListParams::default())
            .await?
            .items
            .is_empty()
    );
    assert!(rules.list(&ListParams::default()).await?.items.is_empty());
    diagnostics.passed();
    Ok(())
}

fn run(mut command: std::process::Command) -> Result<String> {
    let output = command.output().context("running kubectl")?;
    if !output.status.success() {
        bail!(
            "{command:?} failed: {}",
            String::from_utf8_lossy(&output.stderr)
        );
    }
    Ok(String::from_utf8(output.stdout)?)
}

/// Whitespace collapsed, so that assertions do not depend on kubectl's line wrapping.
fn words(text: &str) -> String {
    text.split_whitespace().collect::<Vec<_>>().join(" ")
}

#[tokio::test]
async fn kubectl_shows_printer_columns_and_explains_fields() -> Result<()> {
    let (cluster, client, namespace) = e2e::setup("crds-kubectl").await?;
    let diagnostics = Diagnostics::new(cluster, &namespace);
    create_with_status(
        &dynamic::<ApiProtection>(&client, &namespace),
        &yaml_documents(FULL_API_PROTECTION)?[0],
    )
    .await?;
    create_with_status(
        &dynamic::<SequenceRule>(&client, &namespace),
        &yaml_documents(FULL_SEQUENCE_RULES)?[0],
    )
    .await?;

    let mut get = cluster.kubectl();
    get.args(["get", "apip", "-n", &namespace]);
    let table = words(&run(get)?);
    assert!(
        table.starts_with("NAME TARGET MODE PHASE ENDPOINTS INCIDENTS AGE bank-api bank-api Enforce Protecting 9 1 "),
        "{table}"
    );

    let mut get = cluster.kubectl();
    get.args(["get", "seqrule", "-n", &namespace]);
    let table = words(&run(get)?);
    assert!(
        table.starts_with(
            "NAME PROTECTION KIND ACTION ACCEPTED MATCHES AGE balance-before-transfer bank-api Requires Block True 12 "
        ),
        "{table}"
    );

    // The category lists both kinds.
    let mut get = cluster.kubectl();
    get.args(["get", "ordo", "-n", &namespace, "-o", "name"]);
    let names = words(&run(get)?);
    assert_eq!(
        names,
        "apiprotection.ordo.dev/bank-api sequencerule.ordo.dev/balance-before-transfer"
    );

    let mut explain = cluster.kubectl();
    explain.args(["explain", "apiprotection.spec.session"]);
    let text = words(&run(explain)?);
    for expected in [
        "How requests are grouped into sessions",
        "identifiers",
        "Ordered ways to find the session of a request",
        "idleTimeout",
        "jwtVerification",
    ] {
        assert!(
            text.contains(expected),
            "kubectl explain lacks {expected:?}: {text}"
        );
    }
    diagnostics.passed();
    Ok(())
}

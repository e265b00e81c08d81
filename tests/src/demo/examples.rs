//! The manifests under `examples/`: read into the CRD types of `ordo_operator::crd`, checked
//! the way the operator would check them, and applied to a cluster.
//!
//! The CRD types ignore unknown fields (as the API server prunes them), so a typo such as
//! `maxRepeats:` would silently vanish. [`unknown_fields`] catches that by comparing what the
//! file says with what survives a round trip through the types.

use std::path::{Path, PathBuf};

use anyhow::{Context, anyhow, bail};
use kube::api::{Api, Patch, PatchParams};
use ordo_operator::crd::{ApiProtection, SequenceRule};
use ordo_operator::desired::render::{self, FieldError, RenderInput};
use serde::Deserialize;
use serde_json::Value;

/// Field manager of everything the demo and the example tests apply.
pub const FIELD_MANAGER: &str = "ordo-demo";

/// One resource of an example file.
#[derive(Debug, Clone)]
pub enum Resource {
    ApiProtection(Box<ApiProtection>),
    SequenceRule(Box<SequenceRule>),
}

impl Resource {
    /// `Kind/name`, for messages.
    pub fn describe(&self) -> String {
        match self {
            Self::ApiProtection(p) => format!(
                "ApiProtection/{}",
                p.metadata.name.as_deref().unwrap_or("?")
            ),
            Self::SequenceRule(r) => {
                format!("SequenceRule/{}", r.metadata.name.as_deref().unwrap_or("?"))
            }
        }
    }

    /// The resource as JSON, as the types serialize it.
    pub fn to_value(&self) -> anyhow::Result<Value> {
        Ok(match self {
            Self::ApiProtection(p) => serde_json::to_value(p)?,
            Self::SequenceRule(r) => serde_json::to_value(r)?,
        })
    }
}

/// A resource with the file it came from and the document as written.
#[derive(Debug, Clone)]
pub struct Manifest {
    pub file: PathBuf,
    pub resource: Resource,
    /// The YAML document, as JSON, before it went through the types.
    pub raw: Value,
}

/// Reads every YAML document of the `*.yaml` files in `dir` (file-name order) into the CRD
/// types. Fails on a kind other than ApiProtection or SequenceRule, on a document the types
/// reject, and on fields the types do not know (see [`unknown_fields`]).
pub fn load_dir(dir: &Path) -> anyhow::Result<Vec<Manifest>> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(dir)
        .with_context(|| format!("reading {}", dir.display()))?
        .filter_map(|entry| entry.ok().map(|e| e.path()))
        .filter(|p| matches!(p.extension().and_then(|e| e.to_str()), Some("yaml" | "yml")))
        .collect();
    files.sort();
    let mut manifests = Vec::new();
    for file in files {
        let text = std::fs::read_to_string(&file)
            .with_context(|| format!("reading {}", file.display()))?;
        for document in serde_yaml_ng::Deserializer::from_str(&text) {
            let raw = Value::deserialize(document)
                .with_context(|| format!("parsing {}", file.display()))?;
            if raw.is_null() {
                continue;
            }
            let resource = parse(&raw).with_context(|| format!("in {}", file.display()))?;
            let unknown = unknown_fields(&raw, &resource.to_value()?);
            if !unknown.is_empty() {
                bail!(
                    "{}: {} has fields the CRD does not know (typo?): {}",
                    file.display(),
                    resource.describe(),
                    unknown.join(", ")
                );
            }
            manifests.push(Manifest {
                file: file.clone(),
                resource,
                raw,
            });
        }
    }
    if manifests.is_empty() {
        bail!("no manifest in {}", dir.display());
    }
    Ok(manifests)
}

fn parse(raw: &Value) -> anyhow::Result<Resource> {
    let api_version = raw
        .get("apiVersion")
        .and_then(Value::as_str)
        .unwrap_or_default();
    if api_version != "ordo.dev/v1alpha1" {
        bail!("apiVersion must be ordo.dev/v1alpha1, got {api_version:?}");
    }
    match raw.get("kind").and_then(Value::as_str) {
        Some("ApiProtection") => Ok(Resource::ApiProtection(Box::new(
            serde_path_to(raw).context("not a valid ApiProtection")?,
        ))),
        Some("SequenceRule") => Ok(Resource::SequenceRule(Box::new(
            serde_path_to(raw).context("not a valid SequenceRule")?,
        ))),
        other => bail!("unexpected kind {other:?}"),
    }
}

fn serde_path_to<T: serde::de::DeserializeOwned>(raw: &Value) -> anyhow::Result<T> {
    serde_json::from_value(raw.clone()).map_err(|err| anyhow!("{err}"))
}

/// Paths (`spec.requires.within.requestz`) present in `raw` but absent from `typed`, the same
/// document after a round trip through the CRD types.
pub fn unknown_fields(raw: &Value, typed: &Value) -> Vec<String> {
    let mut out = Vec::new();
    walk(raw, typed, String::new(), &mut out);
    out
}

fn walk(raw: &Value, typed: &Value, path: String, out: &mut Vec<String>) {
    match (raw, typed) {
        (Value::Object(raw), Value::Object(typed)) => {
            for (key, value) in raw {
                let child = if path.is_empty() {
                    key.clone()
                } else {
                    format!("{path}.{key}")
                };
                match typed.get(key) {
                    Some(typed_value) => walk(value, typed_value, child, out),
                    // An explicit empty value (`{}`, `[]`, `null`) may legitimately be elided.
                    None if is_empty(value) => {}
                    None => out.push(child),
                }
            }
        }
        (Value::Array(raw), Value::Array(typed)) => {
            for (i, (r, t)) in raw.iter().zip(typed).enumerate() {
                walk(r, t, format!("{path}[{i}]"), out);
            }
        }
        _ => {}
    }
}

fn is_empty(value: &Value) -> bool {
    match value {
        Value::Null => true,
        Value::Object(map) => map.is_empty(),
        Value::Array(items) => items.is_empty(),
        _ => false,
    }
}

/// Checks the manifests as the operator and the webhook would: every SequenceRule through
/// `render::rule_config` (the enforcer's own `validate_rule`), every ApiProtection rendered
/// with the rules that point at it into a complete enforcer config (the enforcer's
/// `validate_config`). Returns the problems, each naming the resource and the field.
pub fn validate(manifests: &[Manifest]) -> Vec<String> {
    let mut problems = Vec::new();
    let mut rules = Vec::new();
    for manifest in manifests {
        if let Resource::SequenceRule(rule) = &manifest.resource {
            let name = rule.metadata.name.as_deref().unwrap_or_default();
            match render::rule_config(name, &rule.spec) {
                Ok(config) => rules.push((rule.spec.protection_ref.name.clone(), config)),
                Err(errors) => problems.extend(describe_errors(&manifest.resource, &errors)),
            }
        }
    }
    for manifest in manifests {
        if let Resource::ApiProtection(protection) = &manifest.resource {
            let name = protection.metadata.name.as_deref().unwrap_or_default();
            let own_rules = rules
                .iter()
                .filter(|(target, _)| target == name)
                .map(|(_, r)| r.clone())
                .collect();
            let input = RenderInput {
                namespace: "validation",
                name,
                spec: &protection.spec,
                upstream_url: format!(
                    "http://{}-origin.validation.svc:80",
                    protection.spec.target.service
                ),
                listen_port: 8080,
                admin_port: 9901,
                rules: own_rules,
                openapi: None,
                report: None,
            };
            if let Err(errors) = render::render(input) {
                problems.extend(describe_errors(&manifest.resource, &errors));
            }
        }
    }
    problems
}

fn describe_errors(resource: &Resource, errors: &[FieldError]) -> Vec<String> {
    errors
        .iter()
        .map(|e| format!("{}: {e}", resource.describe()))
        .collect()
}

/// Server-side applies the manifests into `namespace` (ApiProtections first, so that rules
/// never point at nothing) and returns what the API server stored.
pub async fn apply(
    client: &kube::Client,
    namespace: &str,
    manifests: &[Manifest],
) -> anyhow::Result<Vec<Resource>> {
    let params = PatchParams::apply(FIELD_MANAGER).force();
    let protections: Api<ApiProtection> = Api::namespaced(client.clone(), namespace);
    let rules: Api<SequenceRule> = Api::namespaced(client.clone(), namespace);
    let mut ordered: Vec<&Manifest> = manifests.iter().collect();
    ordered.sort_by_key(|m| matches!(m.resource, Resource::SequenceRule(_)));
    let mut stored = Vec::new();
    for manifest in ordered {
        let mut body = manifest.raw.clone();
        if let Some(metadata) = body.get_mut("metadata").and_then(Value::as_object_mut) {
            metadata.insert("namespace".into(), Value::String(namespace.to_owned()));
        }
        let what = manifest.resource.describe();
        let name = what
            .split_once('/')
            .map(|(_, n)| n.to_owned())
            .unwrap_or_default();
        let result = match manifest.resource {
            Resource::ApiProtection(_) => protections
                .patch(&name, &params, &Patch::Apply(&body))
                .await
                .map(|p| Resource::ApiProtection(Box::new(p))),
            Resource::SequenceRule(_) => rules
                .patch(&name, &params, &Patch::Apply(&body))
                .await
                .map(|r| Resource::SequenceRule(Box::new(r))),
        };
        stored.push(
            result.with_context(|| format!("applying {what} from {}", manifest.file.display()))?,
        );
    }
    Ok(stored)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn unknown_fields_names_typos_and_tolerates_empty_values() {
        let raw = json!({"spec": {"maxRepeats": {"count": 2}, "requires": {"after": [{"x": 1}]}, "empty": {}}});
        let typed = json!({"spec": {"requires": {"after": [{}]}}});
        assert_eq!(
            unknown_fields(&raw, &typed),
            vec!["spec.maxRepeats", "spec.requires.after[0].x"]
        );
    }
}

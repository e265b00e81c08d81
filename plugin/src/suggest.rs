//! `kubectl ordo suggest`: the SequenceRules the operator suggests from the learned model, as
//! manifests ready to commit to a GitOps repository, or checked by the API server with a
//! server-side dry run (the CRD schema, its CEL rules and Ordo's validating webhook).

use anyhow::{Context as _, bail};
use kube::ResourceExt as _;
use kube::api::{Api, PostParams};
use ordo_operator::crd::{ApiProtection, SequenceRule};
use serde_json::Value;

use crate::cli::{ManifestOutput, SuggestArgs};
use crate::cluster::Session;

/// One suggested rule: why, and the manifest (with namespace and protectionRef filled in).
#[derive(Debug, Clone)]
pub struct Suggestion {
    pub name: String,
    pub reason: String,
    pub manifest: Value,
}

/// The suggestions of the status, as manifests that apply as they are, and notes about those
/// left out: suggestions whose manifest does not parse as a SequenceRule, and those a
/// declared rule already covers (same name, or the same `requires`).
pub fn suggestions(
    protection: &ApiProtection,
    declared: &[SequenceRule],
) -> (Vec<Suggestion>, Vec<String>) {
    let namespace = protection.namespace().unwrap_or_default();
    let mut out = Vec::new();
    let mut notes = Vec::new();
    for suggested in protection
        .status
        .iter()
        .flat_map(|s| s.suggested_rules.iter())
    {
        let mut manifest: Value = match serde_yaml_ng::from_str(&suggested.yaml) {
            Ok(value) => value,
            Err(error) => {
                notes.push(format!(
                    "warning: suggested rule {} is not valid YAML, left out: {error}",
                    suggested.name
                ));
                continue;
            }
        };
        if let Some(metadata) = manifest.get_mut("metadata").and_then(Value::as_object_mut) {
            metadata
                .entry("namespace")
                .or_insert_with(|| Value::String(namespace.clone()));
        }
        if let Some(spec) = manifest.get_mut("spec").and_then(Value::as_object_mut) {
            spec.entry("protectionRef")
                .or_insert_with(|| serde_json::json!({ "name": protection.name_any() }));
        }
        let rule: SequenceRule = match serde_json::from_value(manifest.clone()) {
            Ok(rule) => rule,
            Err(error) => {
                notes.push(format!(
                    "warning: suggested rule {} is not a SequenceRule, left out: {error}",
                    suggested.name
                ));
                continue;
            }
        };
        let covered = declared.iter().any(|d| {
            d.name_any() == rule.name_any()
                || (d.spec.requires.is_some() && d.spec.requires == rule.spec.requires)
        });
        if covered {
            notes.push(format!(
                "note: suggested rule {} is already declared, left out",
                suggested.name
            ));
            continue;
        }
        out.push(Suggestion {
            name: rule.name_any(),
            reason: suggested.reason.clone(),
            manifest,
        });
    }
    (out, notes)
}

/// The manifests as YAML documents separated by `---`, each headed by its reason.
pub fn to_yaml(suggestions: &[Suggestion]) -> anyhow::Result<String> {
    let mut out = String::new();
    for s in suggestions {
        out.push_str("---\n");
        for line in s.reason.lines() {
            out.push_str(&format!("# {line}\n"));
        }
        out.push_str(&serde_yaml_ng::to_string(&s.manifest)?);
    }
    Ok(out)
}

pub async fn run(session: &Session, args: &SuggestArgs) -> anyhow::Result<String> {
    let protection = session.protection(&args.name).await?;
    let declared = session.rules_or_warn(&protection).await;
    let (suggestions, notes) = suggestions(&protection, &declared);
    for note in notes {
        eprintln!("{note}");
    }
    if suggestions.is_empty() {
        eprintln!(
            "No suggested rules for apiprotections.ordo.dev \"{}\" in namespace \"{}\" (the model suggests rules once a transition is taken by nearly every session; see kubectl ordo status {}).",
            args.name, session.namespace, args.name
        );
        return Ok(String::new());
    }
    if args.apply_dry_run {
        return dry_run(session, &suggestions).await;
    }
    match args.output {
        ManifestOutput::Yaml => to_yaml(&suggestions),
        ManifestOutput::Json => {
            let list = serde_json::json!({
                "apiVersion": "v1",
                "kind": "List",
                "items": suggestions.iter().map(|s| s.manifest.clone()).collect::<Vec<_>>(),
            });
            Ok(serde_json::to_string_pretty(&list)? + "\n")
        }
    }
}

/// Creates every suggestion with `dryRun=All`: nothing is stored, and the answer is what a
/// real `kubectl apply` would get. Prints one line per rule as `kubectl apply
/// --dry-run=server` does, and fails when any rule was refused.
async fn dry_run(session: &Session, suggestions: &[Suggestion]) -> anyhow::Result<String> {
    let params = PostParams {
        dry_run: true,
        field_manager: Some("kubectl-ordo".to_owned()),
    };
    let mut out = String::new();
    let mut refused = Vec::new();
    for s in suggestions {
        let rule: SequenceRule = serde_json::from_value(s.manifest.clone())
            .with_context(|| format!("suggested rule {}", s.name))?;
        let namespace = rule
            .namespace()
            .unwrap_or_else(|| session.namespace.clone());
        let api: Api<SequenceRule> = Api::namespaced(session.client.clone(), &namespace);
        match api.create(&params, &rule).await {
            Ok(_) => out.push_str(&format!("sequencerule.ordo.dev/{} created (server dry run)\n", s.name)),
            Err(kube::Error::Api(status)) if status.code == 409 => out.push_str(&format!(
                "sequencerule.ordo.dev/{} already exists in namespace \"{namespace}\" (server dry run)\n",
                s.name
            )),
            Err(error) => {
                let error = crate::cluster::explain(
                    error,
                    &format!("sequencerules.ordo.dev \"{}\"", s.name),
                    &namespace,
                );
                out.push_str(&format!("sequencerule.ordo.dev/{} refused: {error:#}\n", s.name));
                refused.push(s.name.clone());
            }
        }
    }
    if !refused.is_empty() {
        // The accepted ones were printed; the refused ones are the error.
        print!("{out}");
        bail!(
            "the API server refused {} of {} suggested rules: {}",
            refused.len(),
            suggestions.len(),
            refused.join(", ")
        );
    }
    Ok(out)
}

//! Access to the API server with the user's kubeconfig: the client, the namespace, and reads
//! of ApiProtections and SequenceRules with errors that say what was missing and where.

use anyhow::{Context as _, anyhow};
use kube::api::{Api, ListParams};
use kube::config::{KubeConfigOptions, Kubeconfig};
use kube::{Client, Config, ResourceExt as _};
use ordo_operator::crd::{ApiProtection, SequenceRule};

use crate::cli::Global;

/// A client and the namespace the command works in.
pub struct Session {
    pub client: Client,
    pub namespace: String,
}

impl Session {
    /// Loads the kubeconfig as kubectl does: `--kubeconfig`, else `$KUBECONFIG`, else
    /// `~/.kube/config`, else the in-cluster service account; `--context`, `--cluster` and
    /// `--user` pick entries of it; `--namespace` overrides the context's namespace.
    pub async fn connect(global: &Global) -> anyhow::Result<Self> {
        let options = KubeConfigOptions {
            context: global.context.clone(),
            cluster: global.cluster.clone(),
            user: global.user.clone(),
        };
        let config = match &global.kubeconfig {
            Some(path) => {
                let kubeconfig = Kubeconfig::read_from(path)
                    .with_context(|| format!("reading the kubeconfig {}", path.display()))?;
                Config::from_custom_kubeconfig(kubeconfig, &options)
                    .await
                    .with_context(|| format!("loading the kubeconfig {}", path.display()))?
            }
            None if options.context.is_none()
                && options.cluster.is_none()
                && options.user.is_none() =>
            {
                Config::infer()
                    .await
                    .context("no usable kubeconfig ($KUBECONFIG, ~/.kube/config) and not running in a cluster")?
            }
            None => Config::from_kubeconfig(&options)
                .await
                .context("loading the kubeconfig")?,
        };
        let namespace = global
            .namespace
            .clone()
            .unwrap_or_else(|| config.default_namespace.clone());
        let client = Client::try_from(config).context("building the Kubernetes client")?;
        Ok(Self { client, namespace })
    }

    /// The ApiProtection `name` of the session's namespace.
    pub async fn protection(&self, name: &str) -> anyhow::Result<ApiProtection> {
        let api: Api<ApiProtection> = Api::namespaced(self.client.clone(), &self.namespace);
        api.get(name).await.map_err(|error| {
            explain(
                error,
                &format!("apiprotections.ordo.dev \"{name}\""),
                &self.namespace,
            )
        })
    }

    /// Every ApiProtection of the namespace, or of every namespace.
    pub async fn protections(&self, all_namespaces: bool) -> anyhow::Result<Vec<ApiProtection>> {
        let api: Api<ApiProtection> = if all_namespaces {
            Api::all(self.client.clone())
        } else {
            Api::namespaced(self.client.clone(), &self.namespace)
        };
        let where_ = if all_namespaces { "" } else { &self.namespace };
        let mut list = api
            .list(&ListParams::default())
            .await
            .map_err(|error| explain(error, "apiprotections.ordo.dev", where_))?
            .items;
        list.sort_by_key(|a| (a.namespace(), a.name_any()));
        Ok(list)
    }

    /// The SequenceRules attached to `protection` (same namespace, `spec.protectionRef`).
    /// Filtered here rather than with the field selector so that API servers older than
    /// selectable CRD fields (Kubernetes 1.31) work too.
    pub async fn rules_for(&self, protection: &ApiProtection) -> anyhow::Result<Vec<SequenceRule>> {
        let namespace = protection
            .namespace()
            .unwrap_or_else(|| self.namespace.clone());
        let api: Api<SequenceRule> = Api::namespaced(self.client.clone(), &namespace);
        let name = protection.name_any();
        let mut rules: Vec<SequenceRule> = api
            .list(&ListParams::default())
            .await
            .map_err(|error| explain(error, "sequencerules.ordo.dev", &namespace))?
            .items
            .into_iter()
            .filter(|rule| rule.spec.protection_ref.name == name)
            .collect();
        rules.sort_by_key(|rule| rule.name_any());
        Ok(rules)
    }

    /// [`Session::rules_for`], or none with a warning on stderr when they cannot be read
    /// (RBAC may grant ApiProtections and not SequenceRules): the views that only draw or
    /// list the declared rules still work.
    pub async fn rules_or_warn(&self, protection: &ApiProtection) -> Vec<SequenceRule> {
        match self.rules_for(protection).await {
            Ok(rules) => rules,
            Err(error) => {
                eprintln!("warning: declared SequenceRules left out: {error:#}");
                Vec::new()
            }
        }
    }
}

/// Turns an API error into a message that names the resource and the namespace, as kubectl's
/// `Error from server (NotFound): ...` does.
pub fn explain(error: kube::Error, what: &str, namespace: &str) -> anyhow::Error {
    let in_namespace = if namespace.is_empty() {
        String::new()
    } else {
        format!(" in namespace \"{namespace}\"")
    };
    match error {
        kube::Error::Api(status) if status.code == 404 && status.reason == "NotFound" => {
            if status.details.is_none()
                || status
                    .message
                    .contains("could not find the requested resource")
            {
                anyhow!(
                    "the server does not serve {what}{in_namespace}: are Ordo's CRDs installed (crds/ or the Helm chart)? ({})",
                    status.message
                )
            } else {
                anyhow!("{what} not found{in_namespace}")
            }
        }
        kube::Error::Api(status) if status.code == 403 => anyhow!(
            "forbidden: {} (kubectl ordo reads with your own RBAC: ask for get/list on apiprotections.ordo.dev and sequencerules.ordo.dev)",
            status.message
        ),
        kube::Error::Api(status) => anyhow!(
            "error from server ({}): {} ({what}{in_namespace})",
            if status.reason.is_empty() {
                status.code.to_string()
            } else {
                status.reason.clone()
            },
            status.message
        ),
        other => anyhow!(other).context(format!("reading {what}{in_namespace}")),
    }
}

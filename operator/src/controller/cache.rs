//! What the controller knows of the cluster without asking the API server: the objects it
//! watches, kept in stores, and what it applied last, so that a reconcile that would change
//! nothing writes nothing.
//!
//! A reconcile runs after every change of an ApiProtection, of the objects it owns, of its
//! rules and target Service, after every status refresh the reports ask for, and every resync.
//! Most of them find everything as it should be. Reading from the watch stores instead of
//! GET and LIST, and skipping a server-side apply whose content and object are as they were
//! after the last one, takes a steady-state reconcile from about ten API requests to none
//! (docs/benchmarks.md, "The control plane at scale").
//!
//! A write is skipped only when all of these hold: the same content was applied before by
//! this process, less than [`REAPPLY_AFTER`] ago, and the store shows the object at the
//! version that apply returned (a `resourceVersion`, or for a Deployment its `generation`, as
//! its status moves without anyone changing it). Anything else, including an edit by hand, a
//! deletion or a store that lags behind, applies again.

use std::collections::HashMap;
use std::hash::{DefaultHasher, Hash, Hasher};
use std::time::{Duration, Instant};

use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::{ConfigMap, Service, ServiceAccount};
use kube::api::{Api, Patch, PatchParams};
use kube::core::{DeserializeGuard, PartialObjectMeta};
use kube::runtime::reflector::{self, ObjectRef, Store};
use parking_lot::Mutex;
use serde::Serialize;
use serde::de::DeserializeOwned;

use crate::crd::SequenceRule;
use crate::desired::names::FIELD_MANAGER;
use crate::error::Result;

/// After this long an object is applied again even when nothing seems to have changed: a
/// bound on how long a change that never reached the watch can go uncorrected.
pub const REAPPLY_AFTER: Duration = Duration::from_secs(600);

/// The watch stores a reconcile reads, and the record of its last applies.
pub struct Caches {
    /// Every SequenceRule in scope.
    pub rules: Store<DeserializeGuard<SequenceRule>>,
    /// Every Service in scope (targets, and the Services the operator owns).
    pub services: Store<Service>,
    /// The operator's ConfigMaps (metadata only: the model ConfigMaps are large).
    pub config_maps: Store<PartialObjectMeta<ConfigMap>>,
    /// The operator's ServiceAccounts (metadata only).
    pub accounts: Store<PartialObjectMeta<ServiceAccount>>,
    /// The operator's Deployments.
    pub deployments: Store<Deployment>,
    applied: Mutex<HashMap<AppliedKey, Applied>>,
}

/// The writing halves of [`Caches`]' stores, for the watches of `controller::run`.
pub struct Writers {
    pub rules: reflector::store::Writer<DeserializeGuard<SequenceRule>>,
    pub services: reflector::store::Writer<Service>,
    pub config_maps: reflector::store::Writer<PartialObjectMeta<ConfigMap>>,
    pub accounts: reflector::store::Writer<PartialObjectMeta<ServiceAccount>>,
    pub deployments: reflector::store::Writer<Deployment>,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash)]
struct AppliedKey {
    kind: &'static str,
    namespace: String,
    name: String,
}

#[derive(Debug, Clone)]
struct Applied {
    content: u64,
    version: String,
    /// The `resourceVersion` the apply returned: a watch event of exactly this version is
    /// the echo of the apply, no news for a reconcile.
    resource_version: Option<String>,
    at: Instant,
}

/// Which version of an object shows that nobody changed it since an apply.
pub trait AppliedVersion {
    /// The version to compare: `resourceVersion`, or `generation` where the status moves by
    /// itself.
    fn applied_version(&self) -> Option<String>;
}

impl AppliedVersion for Deployment {
    fn applied_version(&self) -> Option<String> {
        self.metadata.generation.map(|g| g.to_string())
    }
}

macro_rules! by_resource_version {
    ($($kind:ty),*) => {$(
        impl AppliedVersion for $kind {
            fn applied_version(&self) -> Option<String> {
                self.metadata.resource_version.clone()
            }
        }
    )*};
}
by_resource_version!(
    ConfigMap,
    ServiceAccount,
    Service,
    PartialObjectMeta<ConfigMap>,
    PartialObjectMeta<ServiceAccount>
);

/// What an apply did.
pub enum Outcome<K> {
    /// The server answered with the object as it now is.
    Written(K),
    /// Nothing to write: the object is as the last apply left it.
    Unchanged,
}

impl Caches {
    /// Empty stores and their writers.
    pub fn new() -> (Self, Writers) {
        let (rules, rules_writer) = reflector::store();
        let (services, services_writer) = reflector::store();
        let (config_maps, config_maps_writer) = reflector::store();
        let (accounts, accounts_writer) = reflector::store();
        let (deployments, deployments_writer) = reflector::store();
        let caches = Self {
            rules,
            services,
            config_maps,
            accounts,
            deployments,
            applied: Mutex::new(HashMap::new()),
        };
        let writers = Writers {
            rules: rules_writer,
            services: services_writer,
            config_maps: config_maps_writer,
            accounts: accounts_writer,
            deployments: deployments_writer,
        };
        (caches, writers)
    }

    /// Waits until every store holds its first complete list, so that a reconcile never reads
    /// a partial view (a missing rule would be left out of the config).
    pub async fn ready(&self) -> Result<()> {
        let waits = [
            self.rules.wait_until_ready().await,
            self.services.wait_until_ready().await,
            self.config_maps.wait_until_ready().await,
            self.accounts.wait_until_ready().await,
            self.deployments.wait_until_ready().await,
        ];
        for wait in waits {
            wait.map_err(|_| crate::error::Error::CachesStopped)?;
        }
        Ok(())
    }

    /// The stored Service `name` of `namespace`.
    pub fn service(&self, namespace: &str, name: &str) -> Option<std::sync::Arc<Service>> {
        self.services.get(&ObjectRef::new(name).within(namespace))
    }

    /// The stored Deployment `name` of `namespace`.
    pub fn deployment(&self, namespace: &str, name: &str) -> Option<std::sync::Arc<Deployment>> {
        self.deployments
            .get(&ObjectRef::new(name).within(namespace))
    }

    /// The stored version of the operator's ConfigMap `name`.
    pub fn config_map_version(&self, namespace: &str, name: &str) -> Option<String> {
        self.config_maps
            .get(&ObjectRef::new(name).within(namespace))
            .and_then(|cm| cm.applied_version())
    }

    /// The stored version of the operator's ServiceAccount `name`.
    pub fn account_version(&self, namespace: &str, name: &str) -> Option<String> {
        self.accounts
            .get(&ObjectRef::new(name).within(namespace))
            .and_then(|account| account.applied_version())
    }

    /// Server-side applies `desired` as `name`, unless the same content was applied before
    /// and `live_version` (from a store) shows the object as that apply left it.
    pub async fn apply<K>(
        &self,
        api: &Api<K>,
        name: &str,
        desired: &K,
        live_version: Option<String>,
    ) -> Result<Outcome<K>>
    where
        K: kube::Resource + Clone + Serialize + DeserializeOwned + std::fmt::Debug + AppliedVersion,
    {
        let key = AppliedKey {
            kind: std::any::type_name::<K>(),
            namespace: api.namespace().unwrap_or_default().to_owned(),
            name: name.to_owned(),
        };
        let content = fingerprint(desired)?;
        if self.unchanged(&key, content, live_version.as_deref()) {
            return Ok(Outcome::Unchanged);
        }
        let written = api
            .patch(
                name,
                &PatchParams::apply(FIELD_MANAGER).force(),
                &Patch::Apply(desired),
            )
            .await?;
        match written.applied_version() {
            Some(version) => {
                self.applied.lock().insert(
                    key,
                    Applied {
                        content,
                        version,
                        resource_version: kube::Resource::meta(&written).resource_version.clone(),
                        at: Instant::now(),
                    },
                );
            }
            None => {
                self.applied.lock().remove(&key);
            }
        }
        Ok(Outcome::Written(written))
    }

    fn unchanged(&self, key: &AppliedKey, content: u64, live_version: Option<&str>) -> bool {
        let applied = self.applied.lock();
        applied.get(key).is_some_and(|last| {
            last.content == content
                && live_version == Some(last.version.as_str())
                && last.at.elapsed() < REAPPLY_AFTER
        })
    }

    /// Whether `object` (of kind `K`, seen by a watch) is exactly what this process's last
    /// apply of it wrote: the echo of the controller's own write, which needs no reconcile.
    pub fn is_own_write<K>(&self, object: &impl kube::Resource) -> bool {
        let meta = object.meta();
        let (Some(namespace), Some(name), Some(version)) =
            (&meta.namespace, &meta.name, &meta.resource_version)
        else {
            return false;
        };
        let key = AppliedKey {
            kind: std::any::type_name::<K>(),
            namespace: namespace.clone(),
            name: name.clone(),
        };
        self.applied
            .lock()
            .get(&key)
            .is_some_and(|last| last.resource_version.as_ref() == Some(version))
    }

    /// Forgets what was applied in `namespace` under these names (the protection is gone).
    pub fn forget(&self, namespace: &str, names: &[String]) {
        self.applied
            .lock()
            .retain(|key, _| key.namespace != namespace || !names.contains(&key.name));
    }
}

fn fingerprint(object: &impl Serialize) -> Result<u64> {
    let bytes = serde_json::to_vec(object)?;
    let mut hasher = DefaultHasher::new();
    bytes.hash(&mut hasher);
    Ok(hasher.finish())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(name: &str) -> AppliedKey {
        AppliedKey {
            kind: "ConfigMap",
            namespace: "ns".into(),
            name: name.into(),
        }
    }

    fn caches_with(name: &str, content: u64, version: &str, age: Duration) -> Caches {
        let (caches, _writers) = Caches::new();
        caches.applied.lock().insert(
            key(name),
            Applied {
                content,
                version: version.into(),
                resource_version: Some(format!("rv-{version}")),
                at: Instant::now() - age,
            },
        );
        caches
    }

    #[test]
    fn a_write_is_skipped_only_for_the_same_content_at_the_applied_version() {
        let caches = caches_with("a", 7, "100", Duration::ZERO);
        assert!(caches.unchanged(&key("a"), 7, Some("100")));
        // new content
        assert!(!caches.unchanged(&key("a"), 8, Some("100")));
        // someone else wrote the object, or the store has not seen it yet
        assert!(!caches.unchanged(&key("a"), 7, Some("101")));
        assert!(!caches.unchanged(&key("a"), 7, Some("99")));
        // deleted
        assert!(!caches.unchanged(&key("a"), 7, None));
        // never applied by this process
        assert!(!caches.unchanged(&key("b"), 7, Some("100")));
    }

    #[test]
    fn an_old_apply_is_not_trusted() {
        let caches = caches_with("a", 7, "100", REAPPLY_AFTER + Duration::from_secs(1));
        assert!(!caches.unchanged(&key("a"), 7, Some("100")));
    }

    #[test]
    fn forgetting_a_protection_drops_its_objects_only() {
        let caches = caches_with("api-enforcer", 7, "100", Duration::ZERO);
        caches.applied.lock().insert(
            AppliedKey {
                kind: "ConfigMap",
                namespace: "other".into(),
                name: "api-enforcer".into(),
            },
            Applied {
                content: 7,
                version: "1".into(),
                resource_version: None,
                at: Instant::now(),
            },
        );
        caches.forget("ns", &["api-enforcer".to_owned()]);
        assert!(!caches.unchanged(&key("api-enforcer"), 7, Some("100")));
        assert_eq!(caches.applied.lock().len(), 1);
    }

    #[test]
    fn only_the_version_an_apply_returned_is_its_echo() {
        let (caches, _writers) = Caches::new();
        caches.applied.lock().insert(
            AppliedKey {
                kind: std::any::type_name::<ConfigMap>(),
                namespace: "ns".into(),
                name: "a".into(),
            },
            Applied {
                content: 7,
                version: "5".into(),
                resource_version: Some("5".into()),
                at: Instant::now(),
            },
        );
        let seen = |name: &str, version: &str| ConfigMap {
            metadata: kube::api::ObjectMeta {
                name: Some(name.into()),
                namespace: Some("ns".into()),
                resource_version: Some(version.into()),
                ..Default::default()
            },
            ..ConfigMap::default()
        };
        assert!(caches.is_own_write::<ConfigMap>(&seen("a", "5")));
        // a later write by someone else, another object, another kind
        assert!(!caches.is_own_write::<ConfigMap>(&seen("a", "6")));
        assert!(!caches.is_own_write::<ConfigMap>(&seen("b", "5")));
        assert!(!caches.is_own_write::<Deployment>(&seen("a", "5")));
    }

    #[test]
    fn the_fingerprint_follows_the_content() {
        let a = fingerprint(&serde_json::json!({"data": {"k": "v"}})).unwrap();
        let b = fingerprint(&serde_json::json!({"data": {"k": "w"}})).unwrap();
        assert_ne!(a, b);
        assert_eq!(
            a,
            fingerprint(&serde_json::json!({"data": {"k": "v"}})).unwrap()
        );
    }
}

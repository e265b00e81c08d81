//! Which watch events wake the controllers.
//!
//! Every event a controller reacts to costs a reconcile, and a reconcile costs API requests.
//! At 1,000 protections the events nobody needed kept the operator from catching up
//! (docs/benchmarks.md, "The control plane at scale"), so each watched kind passes only the
//! changes that can alter what a reconcile does:
//!
//! - SequenceRules ([`spec_changes`]): an ApiProtection's reconcile writes the status of every
//!   rule that names it (operator/src/controller/rules.rs `write_rule_statuses`). What a
//!   protection renders depends only on a rule's spec, its existence and its name, so only
//!   creations, spec changes (a new `metadata.generation`) and deletions count.
//! - ApiProtections ([`protection_changes`]): the controller writes their status itself; a
//!   reconcile depends on the spec, the finalizers and the deletion mark.
//! - enforcer Deployments ([`deployment_changes`]): their status moves with every Pod; a
//!   reconcile reads only how many replicas are available and ready, and re-applies the
//!   spec when someone else changed it.
//! - ConfigMaps ([`without_model_config_maps`]): the report hub rewrites each protection's
//!   `<name>-model` ConfigMap with every report it merges (operator/src/reports/hub.rs); no
//!   reconcile reads it.
//!
//! Deletions always pass, so that an object removed by hand is re-created.

use std::collections::{HashMap, HashSet};
use std::hash::{DefaultHasher, Hash, Hasher};

use futures::{Stream, TryStreamExt as _};
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::ConfigMap;
use kube::Resource;
use kube::core::PartialObjectMeta;
use kube::runtime::WatchStreamExt as _;
use kube::runtime::watcher::{self, Event};

use crate::desired::names;

/// The objects of `events` whose `key` differs from the last one seen of the same object,
/// and every deleted object. Remembers one `u64` per live object; a re-list forgets the
/// objects it no longer lists.
pub fn changed<K, S, F>(events: S, key: F) -> impl Stream<Item = Result<K, watcher::Error>> + Send
where
    K: Resource + Send + 'static,
    S: Stream<Item = Result<Event<K>, watcher::Error>> + Send,
    F: Fn(&K) -> u64 + Send + 'static,
{
    let mut seen: HashMap<String, u64> = HashMap::new();
    let mut relisted: Option<HashSet<String>> = None;
    events.try_filter_map(move |event| {
        let passed = match event {
            Event::Init => {
                relisted = Some(HashSet::new());
                None
            }
            Event::InitDone => {
                if let Some(listed) = relisted.take() {
                    seen.retain(|id, _| listed.contains(id));
                }
                None
            }
            Event::InitApply(object) | Event::Apply(object) => {
                let id = identity(&object);
                if let Some(listed) = relisted.as_mut() {
                    listed.insert(id.clone());
                }
                let key = key(&object);
                (seen.insert(id, key) != Some(key)).then_some(object)
            }
            Event::Delete(object) => {
                seen.remove(&identity(&object));
                Some(object)
            }
        };
        futures::future::ready(Ok(passed))
    })
}

fn identity<K: Resource>(object: &K) -> String {
    let meta = object.meta();
    match &meta.uid {
        Some(uid) => uid.clone(),
        None => format!(
            "{}/{}",
            meta.namespace.as_deref().unwrap_or_default(),
            meta.name.as_deref().unwrap_or_default()
        ),
    }
}

fn hash_of(value: &impl Hash) -> u64 {
    let mut hasher = DefaultHasher::new();
    value.hash(&mut hasher);
    hasher.finish()
}

/// The objects of `events` that were created, deleted or had their spec changed; status-only
/// and metadata-only updates are dropped.
pub fn spec_changes<K, S>(events: S) -> impl Stream<Item = Result<K, watcher::Error>> + Send
where
    K: Resource + Send + 'static,
    S: Stream<Item = Result<Event<K>, watcher::Error>> + Send,
{
    changed(events, |object| hash_of(&object.meta().generation))
}

/// ApiProtections created, deleted, with a new spec, finalizers or deletion mark; not the
/// status the controller writes.
pub fn protection_changes<K, S>(events: S) -> impl Stream<Item = Result<K, watcher::Error>> + Send
where
    K: Resource + Send + 'static,
    S: Stream<Item = Result<Event<K>, watcher::Error>> + Send,
{
    changed(events, |object| {
        let meta = object.meta();
        hash_of(&(
            meta.generation,
            &meta.finalizers,
            meta.deletion_timestamp.is_some(),
        ))
    })
}

/// Enforcer Deployments whose spec or count of available or ready replicas changed.
pub fn deployment_changes<S>(
    events: S,
) -> impl Stream<Item = Result<Deployment, watcher::Error>> + Send
where
    S: Stream<Item = Result<Event<Deployment>, watcher::Error>> + Send,
{
    changed(events, |deployment| {
        let status = deployment.status.as_ref();
        hash_of(&(
            deployment.metadata.generation,
            status.and_then(|s| s.available_replicas),
            status.and_then(|s| s.ready_replicas),
        ))
    })
}

/// Every change of the ConfigMaps of `events` but the report hub's `<name>-model` ones.
pub fn without_model_config_maps<S>(
    events: S,
) -> impl Stream<Item = Result<PartialObjectMeta<ConfigMap>, watcher::Error>> + Send
where
    S: Stream<Item = Result<Event<PartialObjectMeta<ConfigMap>>, watcher::Error>> + Send,
{
    events
        .touched_objects()
        .try_filter(|config_map| futures::future::ready(!is_model_config_map(config_map)))
}

/// Whether this is the ConfigMap in which the report hub keeps a protection's merged model.
fn is_model_config_map(config_map: &PartialObjectMeta<ConfigMap>) -> bool {
    let meta = &config_map.metadata;
    let protection = meta
        .labels
        .as_ref()
        .and_then(|labels| labels.get(names::PROTECTION_LABEL));
    match (protection, &meta.name) {
        (Some(protection), Some(name)) => *name == names::model_config_map(protection),
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use futures::StreamExt as _;
    use k8s_openapi::api::core::v1::ConfigMap;
    use kube::api::ObjectMeta;

    fn object(name: &str, generation: i64, resource_version: &str) -> ConfigMap {
        ConfigMap {
            metadata: ObjectMeta {
                name: Some(name.into()),
                namespace: Some("ns".into()),
                uid: Some(format!("uid-{name}")),
                generation: Some(generation),
                resource_version: Some(resource_version.into()),
                ..ObjectMeta::default()
            },
            ..ConfigMap::default()
        }
    }

    /// (name, resourceVersion) of what `spec_changes` lets through `events`.
    async fn passed(events: Vec<Event<ConfigMap>>) -> Vec<(String, String)> {
        spec_changes(futures::stream::iter(events.into_iter().map(Ok)))
            .map(|object| {
                let object = object.expect("no watch errors in the input");
                (
                    object.metadata.name.unwrap_or_default(),
                    object.metadata.resource_version.unwrap_or_default(),
                )
            })
            .collect()
            .await
    }

    fn pair(name: &str, resource_version: &str) -> (String, String) {
        (name.into(), resource_version.into())
    }

    #[tokio::test]
    async fn status_writes_do_not_trigger_but_creation_spec_change_and_deletion_do() {
        let events = vec![
            Event::Init,
            Event::InitApply(object("a", 1, "10")),
            Event::InitDone,
            Event::Apply(object("b", 1, "11")),
            // status writes: resourceVersion moves, generation does not
            Event::Apply(object("a", 1, "12")),
            Event::Apply(object("a", 1, "13")),
            Event::Apply(object("b", 1, "14")),
            // spec change
            Event::Apply(object("a", 2, "15")),
            Event::Apply(object("a", 2, "16")),
            // deletion with an unchanged generation
            Event::Delete(object("b", 1, "17")),
        ];
        assert_eq!(
            passed(events).await,
            vec![
                pair("a", "10"),
                pair("b", "11"),
                pair("a", "15"),
                pair("b", "17")
            ]
        );
    }

    fn deployment(generation: i64, available: i32, resource_version: &str) -> Deployment {
        use k8s_openapi::api::apps::v1::DeploymentStatus;
        Deployment {
            metadata: ObjectMeta {
                name: Some("api-enforcer".into()),
                namespace: Some("ns".into()),
                uid: Some("uid-d".into()),
                generation: Some(generation),
                resource_version: Some(resource_version.into()),
                ..ObjectMeta::default()
            },
            status: Some(DeploymentStatus {
                available_replicas: Some(available),
                ready_replicas: Some(available),
                updated_replicas: Some(1),
                ..DeploymentStatus::default()
            }),
            ..Deployment::default()
        }
    }

    #[tokio::test]
    async fn a_deployment_wakes_the_controller_only_when_availability_or_spec_changes() {
        let events = vec![
            Event::Apply(deployment(1, 0, "1")),
            // the ReplicaSet and Pod come up: status moves, nothing the reconcile reads
            Event::Apply(deployment(1, 0, "2")),
            Event::Apply(deployment(1, 1, "3")),
            Event::Apply(deployment(1, 1, "4")),
            // someone edits the spec
            Event::Apply(deployment(2, 1, "5")),
            Event::Delete(deployment(2, 1, "6")),
        ];
        let passed: Vec<String> =
            deployment_changes(futures::stream::iter(events.into_iter().map(Ok)))
                .map(|d| d.unwrap().metadata.resource_version.unwrap())
                .collect()
                .await;
        assert_eq!(passed, vec!["1", "3", "5", "6"]);
    }

    #[tokio::test]
    async fn a_relist_forgets_what_it_no_longer_lists_and_passes_it_when_it_returns() {
        let events = vec![
            Event::Apply(object("a", 1, "1")),
            Event::Apply(object("b", 1, "2")),
            // the watch restarts; "b" was deleted meanwhile and its deletion never seen
            Event::Init,
            Event::InitApply(object("a", 1, "3")),
            Event::InitDone,
            // "b" comes back with the same uid (as a test object may): it must pass again
            Event::Apply(object("b", 1, "4")),
        ];
        assert_eq!(
            passed(events).await,
            vec![pair("a", "1"), pair("b", "2"), pair("b", "4")]
        );
    }

    #[tokio::test]
    async fn protections_pass_on_finalizers_and_deletion_mark_but_not_on_status() {
        let mut with_finalizer = object("p", 1, "2");
        with_finalizer.metadata.finalizers = Some(vec!["ordo.dev/cleanup".into()]);
        let mut marked = with_finalizer.clone();
        marked.metadata.resource_version = Some("4".into());
        marked.metadata.deletion_timestamp =
            Some(k8s_openapi::apimachinery::pkg::apis::meta::v1::Time(
                k8s_openapi::jiff::Timestamp::UNIX_EPOCH,
            ));
        let mut status_write = with_finalizer.clone();
        status_write.metadata.resource_version = Some("3".into());
        let events = vec![
            Event::Apply(object("p", 1, "1")),
            Event::Apply(with_finalizer),
            Event::Apply(status_write),
            Event::Apply(marked),
        ];
        let passed: Vec<String> =
            protection_changes(futures::stream::iter(events.into_iter().map(Ok)))
                .map(|o: Result<ConfigMap, _>| o.unwrap().metadata.resource_version.unwrap())
                .collect()
                .await;
        assert_eq!(passed, vec!["1", "2", "4"]);
    }

    #[tokio::test]
    async fn the_model_config_map_never_wakes_the_controller() {
        let meta = |name: &str| PartialObjectMeta::<ConfigMap> {
            metadata: ObjectMeta {
                name: Some(name.into()),
                namespace: Some("ns".into()),
                labels: Some([(names::PROTECTION_LABEL.to_owned(), "api".to_owned())].into()),
                ..ObjectMeta::default()
            },
            ..PartialObjectMeta::default()
        };
        let events = vec![
            Event::Apply(meta(&names::model_config_map("api"))),
            Event::Apply(meta("api-enforcer")),
            Event::Delete(meta(&names::model_config_map("api"))),
        ];
        let passed: Vec<String> =
            without_model_config_maps(futures::stream::iter(events.into_iter().map(Ok)))
                .map(|o| o.unwrap().metadata.name.unwrap())
                .collect()
                .await;
        assert_eq!(passed, vec!["api-enforcer"]);
    }
}

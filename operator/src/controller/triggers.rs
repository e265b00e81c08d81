//! Which SequenceRule events wake the controllers.
//!
//! An ApiProtection's reconcile writes the status of every rule that names it (acceptance and
//! the match counters its enforcers report, operator/src/controller/rules.rs
//! `write_rule_statuses`). Were every rule event a trigger, each of those status writes would
//! wake the protection again and the orphan-rule controller too: at 1,000 protections that
//! storm kept the operator from catching up (docs/benchmarks.md, "The control plane at
//! scale"). What a protection renders depends only on a rule's spec, its existence and its
//! name, so only creations, spec changes (a new `metadata.generation`) and deletions count.

use futures::{Stream, TryStreamExt as _};
use kube::Resource;
use kube::runtime::WatchStreamExt as _;
use kube::runtime::predicates;
use kube::runtime::watcher::{self, Event};

/// The objects of `events` that were created, deleted or had their spec changed; status-only
/// and metadata-only updates are dropped.
pub fn spec_changes<K, S>(events: S) -> impl Stream<Item = Result<K, watcher::Error>> + Send
where
    K: Resource + Clone + Send + 'static,
    S: Stream<Item = Result<Event<K>, watcher::Error>> + Send,
{
    events
        .map_ok(|event| match event {
            // A deletion carries the object's last generation, which the generation filter
            // has already seen and would drop; without a generation the filter lets it pass.
            Event::Delete(mut object) => {
                object.meta_mut().generation = None;
                Event::Delete(object)
            }
            other => other,
        })
        .touched_objects()
        .predicate_filter(predicates::generation, Default::default())
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
}

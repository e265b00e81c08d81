//! How long a change to an ApiProtection or its SequenceRules takes to reach the running
//! enforcers: from the write the API server recorded to the moment a replica started running
//! the config rendered from it (`ordo_operator_config_propagation_seconds`).
//!
//! The operator renders a `revision` into each config (a hash of the rest); enforcers report
//! the revision they run and since when. A replica that switches from another revision to the
//! current one (a reload in place) yields one observation, and so does a new replica that
//! started with it soon after the change (a pod of the rollout that the config hash on the pod
//! template starts). A replica that starts long after the change (a scale-up, a rescheduled
//! pod) yields none: its delay is not the change's.
//!
//! When the change happened comes from the objects' `managedFields`, which the API server
//! stamps with one-second resolution on every write that touches `spec`. A change without a
//! newer stamp (a deleted SequenceRule leaves none) counts from the moment the operator first
//! rendered it, which leaves out the operator's own delay for that one kind of change.

use std::collections::HashMap;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use ordo_enforcer::report::RunningConfig;

/// A new replica that starts this long after the change did not start for it.
const NEW_INSTANCE_HORIZON_MS: u64 = 10 * 60 * 1000;
/// Most enforcer instances remembered per protection; past it the memory starts afresh (the
/// next switch of each instance is then not observed, nothing else is lost).
const MAX_INSTANCES: usize = 256;

/// The latest config the operator rendered for one protection.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Current {
    revision: String,
    changed_at_ms: u64,
    rendered_at_ms: u64,
}

/// Per protection: the current revision and the revision each instance last reported.
#[derive(Debug, Default)]
pub struct Propagation {
    current: Option<Current>,
    instances: HashMap<String, String>,
}

impl Propagation {
    /// The operator rendered `revision` at `now_ms`; `last_spec_write_ms` is the newest
    /// `spec` write of the protection and its rules (see [`last_spec_write_ms`]).
    pub fn rendered(&mut self, revision: &str, last_spec_write_ms: Option<u64>, now_ms: u64) {
        if self
            .current
            .as_ref()
            .is_some_and(|c| c.revision == revision)
        {
            return;
        }
        let previous_render = self.current.as_ref().map_or(0, |c| c.rendered_at_ms);
        // A stamp from before the previous render belongs to an earlier change. (A write in
        // the same second as the previous render can look older than it: then the change
        // counts from this render, which leaves out only the operator's own delay.)
        let changed_at_ms = last_spec_write_ms
            .filter(|&t| t > previous_render && t <= now_ms)
            .unwrap_or(now_ms);
        self.current = Some(Current {
            revision: revision.to_owned(),
            changed_at_ms,
            rendered_at_ms: now_ms,
        });
    }

    /// An instance reported what it runs; returns the change's propagation delay in seconds
    /// when this report shows the instance switching to the current revision.
    pub fn reported(&mut self, instance: &str, running: &RunningConfig) -> Option<f64> {
        if self.instances.len() >= MAX_INSTANCES && !self.instances.contains_key(instance) {
            self.instances.clear();
        }
        let previous = self
            .instances
            .insert(instance.to_owned(), running.revision.clone());
        let current = self.current.as_ref()?;
        if running.revision != current.revision || previous.as_ref() == Some(&running.revision) {
            return None;
        }
        // Running it since before the change means an earlier render of the same config.
        let delay_ms = running.since_ms.checked_sub(current.changed_at_ms)?;
        if previous.is_none() && delay_ms > NEW_INSTANCE_HORIZON_MS {
            return None;
        }
        Some(delay_ms as f64 / 1000.0)
    }
}

/// Unix milliseconds of the newest write to `spec` recorded in these objects' `managedFields`
/// (status writes excluded).
pub fn last_spec_write_ms<'a>(objects: impl IntoIterator<Item = &'a ObjectMeta>) -> Option<u64> {
    objects
        .into_iter()
        .flat_map(|meta| meta.managed_fields.iter().flatten())
        .filter(|entry| entry.subresource.as_deref().unwrap_or_default().is_empty())
        .filter(|entry| {
            entry
                .fields_v1
                .as_ref()
                .is_some_and(|fields| fields.0.get("f:spec").is_some())
        })
        .filter_map(|entry| entry.time.as_ref())
        .filter_map(|time| u64::try_from(time.0.as_millisecond()).ok())
        .max()
}

#[cfg(test)]
mod tests {
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::{FieldsV1, ManagedFieldsEntry, Time};

    use super::*;

    fn running(revision: &str, since_ms: u64) -> RunningConfig {
        RunningConfig {
            revision: revision.into(),
            since_ms,
        }
    }

    #[test]
    fn a_switch_to_the_current_revision_counts_from_the_spec_write() {
        let mut p = Propagation::default();
        p.rendered("a", None, 1_000);
        assert_eq!(
            p.reported("pod-1", &running("a", 500)),
            None,
            "ran it before"
        );
        p.rendered("b", Some(10_000), 10_300);
        assert_eq!(
            p.reported("pod-1", &running("a", 500)),
            None,
            "not yet switched"
        );
        assert_eq!(p.reported("pod-1", &running("b", 11_250)), Some(1.25));
        assert_eq!(
            p.reported("pod-1", &running("b", 11_250)),
            None,
            "counted once"
        );
    }

    #[test]
    fn a_pod_of_the_rollout_counts_and_a_late_new_pod_does_not() {
        let mut p = Propagation::default();
        p.rendered("a", Some(1_000), 1_100);
        assert_eq!(p.reported("rolled", &running("a", 9_000)), Some(8.0));
        assert_eq!(p.reported("rolled", &running("a", 9_000)), None);
        let an_hour = 3_600_000;
        assert_eq!(p.reported("scaled-up", &running("a", an_hour)), None);
    }

    #[test]
    fn a_change_without_a_newer_stamp_counts_from_its_render() {
        let mut p = Propagation::default();
        p.rendered("a", Some(5_000), 5_100);
        p.reported("pod-1", &running("a", 5_500));
        // A rule was deleted at about 20 s: the newest stamp is still the old one.
        p.rendered("b", Some(5_000), 20_000);
        assert_eq!(p.reported("pod-1", &running("b", 21_000)), Some(1.0));
    }

    #[test]
    fn the_same_revision_rendered_again_keeps_its_change_time() {
        let mut p = Propagation::default();
        p.rendered("a", None, 0);
        p.reported("pod-1", &running("a", 10));
        p.rendered("b", Some(2_000), 2_100);
        p.rendered("b", Some(2_000), 9_000);
        assert_eq!(p.reported("pod-1", &running("b", 3_000)), Some(1.0));
    }

    #[test]
    fn the_newest_spec_write_wins_and_status_writes_do_not_count() {
        let entry = |seconds: i64, subresource: Option<&str>, field: &str| ManagedFieldsEntry {
            fields_v1: Some(FieldsV1(serde_json::json!({ field: {} }))),
            subresource: subresource.map(str::to_owned),
            time: Some(Time(
                k8s_openapi::jiff::Timestamp::from_second(seconds).unwrap(),
            )),
            ..ManagedFieldsEntry::default()
        };
        let protection = ObjectMeta {
            managed_fields: Some(vec![
                entry(100, None, "f:spec"),
                entry(300, Some("status"), "f:status"),
                entry(250, None, "f:metadata"),
            ]),
            ..ObjectMeta::default()
        };
        let rule = ObjectMeta {
            managed_fields: Some(vec![entry(200, Some(""), "f:spec")]),
            ..ObjectMeta::default()
        };
        assert_eq!(last_spec_write_ms([&protection, &rule]), Some(200_000));
        assert_eq!(last_spec_write_ms([&ObjectMeta::default()]), None);
    }
}

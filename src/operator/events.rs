//! Kubernetes Events about workloads (`events.k8s.io/v1`), as kube-runtime's
//! `Recorder` writes them — a repeat of the same event within six minutes
//! patches the first one's `series` instead of creating another — with its
//! cache pruned at most every [`PRUNE_EVERY`] instead of on every event:
//! the `Recorder` walks its whole cache per event, which at thousands of
//! workloads made events the controller's largest cost
//! (`cargo bench --bench operator`).

use std::collections::HashMap;
use std::sync::Mutex;

use k8s_openapi::api::core::v1::ObjectReference;
use k8s_openapi::api::events::v1::{Event, EventSeries};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{MicroTime, ObjectMeta};
use kube::api::{Api, Patch, PatchParams};
use kube::Client;

pub use kube::runtime::events::EventType;

/// How long a published event is repeated into its series.
const SERIES_TTL_S: i64 = 6 * 60;
/// How often the cache drops events past [`SERIES_TTL_S`].
const PRUNE_EVERY_S: i64 = 30;

/// What makes two events the same: who reports, about what, and why.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
struct Key {
    regarding: (
        Option<String>,
        Option<String>,
        Option<String>,
        Option<String>,
    ),
    type_: &'static str,
    action: String,
    reason: String,
}

/// An event published lately: its name, namespace, series count and when it
/// was last seen (unix seconds).
struct Published {
    name: String,
    namespace: String,
    count: i32,
    last_s: i64,
}

#[derive(Default)]
struct Cache {
    by_key: HashMap<Key, Published>,
    pruned_s: i64,
}

impl Cache {
    /// Drops what is past its series TTL, at most every [`PRUNE_EVERY_S`].
    fn prune(&mut self, now_s: i64) {
        if now_s - self.pruned_s < PRUNE_EVERY_S {
            return;
        }
        self.pruned_s = now_s;
        self.by_key.retain(|_, p| p.last_s + SERIES_TTL_S > now_s);
    }

    /// The series to continue (name, namespace, next count), if `key` was
    /// published within the TTL; counts it.
    fn repeat(&mut self, key: &Key, now_s: i64) -> Option<(String, String, i32)> {
        let p = self.by_key.get_mut(key)?;
        if p.last_s + SERIES_TTL_S <= now_s {
            return None;
        }
        p.count += 1;
        p.last_s = now_s;
        Some((p.name.clone(), p.namespace.clone(), p.count))
    }
}

/// Publishes events for one controller instance.
pub struct EventRecorder {
    client: Client,
    controller: String,
    instance: String,
    cache: Mutex<Cache>,
}

impl EventRecorder {
    pub fn new(client: Client, controller: &str, instance: &str) -> Self {
        EventRecorder {
            client,
            controller: controller.to_string(),
            instance: instance.to_string(),
            cache: Mutex::default(),
        }
    }

    /// Publishes an event about `regarding` (a repeat patches its series).
    pub async fn publish(
        &self,
        regarding: &ObjectReference,
        type_: EventType,
        action: &str,
        reason: &str,
        note: String,
    ) -> Result<(), kube::Error> {
        let now = k8s_openapi::jiff::Timestamp::now();
        let now_s = now.as_second();
        let type_ = match type_ {
            EventType::Normal => "Normal",
            EventType::Warning => "Warning",
        };
        let key = Key {
            regarding: (
                regarding.uid.clone(),
                regarding.kind.clone(),
                regarding.namespace.clone(),
                regarding.name.clone(),
            ),
            type_,
            action: action.to_string(),
            reason: reason.to_string(),
        };
        let repeat = {
            let mut cache = self.cache.lock().unwrap_or_else(|p| p.into_inner());
            cache.prune(now_s);
            cache.repeat(&key, now_s)
        };
        let namespace = regarding
            .namespace
            .clone()
            .unwrap_or_else(|| "default".into());
        if let Some((name, namespace, count)) = repeat {
            let events: Api<Event> = Api::namespaced(self.client.clone(), &namespace);
            let patch = Event {
                series: Some(EventSeries {
                    count,
                    last_observed_time: MicroTime(now),
                }),
                note: Some(note),
                ..Default::default()
            };
            events
                .patch(&name, &PatchParams::default(), &Patch::Merge(&patch))
                .await?;
            return Ok(());
        }
        let name = format!(
            "{}.{:x}",
            regarding.name.as_deref().unwrap_or(&self.controller),
            now.as_nanosecond()
        );
        let event = Event {
            action: Some(action.to_string()),
            reason: Some(reason.to_string()),
            event_time: Some(MicroTime(now)),
            regarding: Some(regarding.clone()),
            note: Some(note),
            metadata: ObjectMeta {
                namespace: Some(namespace.clone()),
                name: Some(name.clone()),
                ..Default::default()
            },
            reporting_controller: Some(self.controller.clone()),
            reporting_instance: Some(self.instance.clone()),
            type_: Some(type_.to_string()),
            ..Default::default()
        };
        let events: Api<Event> = Api::namespaced(self.client.clone(), &namespace);
        let _: serde::de::IgnoredAny = super::echo::create(&events, &event).await?;
        let mut cache = self.cache.lock().unwrap_or_else(|p| p.into_inner());
        cache.by_key.insert(
            key,
            Published {
                name,
                namespace,
                count: 1,
                last_s: now_s,
            },
        );
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(reason: &str) -> Key {
        Key {
            regarding: (
                Some("u1".into()),
                Some("TrainingJob".into()),
                Some("ml".into()),
                Some("j".into()),
            ),
            type_: "Normal",
            action: "Scheduling".into(),
            reason: reason.into(),
        }
    }

    fn published(last_s: i64) -> Published {
        Published {
            name: "j.1".into(),
            namespace: "ml".into(),
            count: 1,
            last_s,
        }
    }

    #[test]
    fn a_repeat_within_the_ttl_continues_the_series_and_a_late_one_starts_anew() {
        let mut c = Cache::default();
        c.by_key.insert(key("Scheduled"), published(1000));
        assert_eq!(
            c.repeat(&key("Scheduled"), 1010),
            Some(("j.1".into(), "ml".into(), 2))
        );
        assert_eq!(c.repeat(&key("Scheduled"), 1020).map(|r| r.2), Some(3));
        assert_eq!(c.repeat(&key("Pending"), 1020), None);
        assert_eq!(c.repeat(&key("Scheduled"), 1020 + SERIES_TTL_S), None);
    }

    #[test]
    fn the_cache_is_pruned_at_most_every_thirty_seconds() {
        let mut c = Cache::default();
        c.by_key.insert(key("Old"), published(0));
        c.prune(SERIES_TTL_S + 1);
        assert!(c.by_key.is_empty(), "an event past its TTL is dropped");
        c.by_key.insert(key("Old"), published(0));
        c.prune(SERIES_TTL_S + 2);
        assert_eq!(c.by_key.len(), 1, "not pruned again within 30 s");
        c.prune(SERIES_TTL_S + 1 + PRUNE_EVERY_S);
        assert!(c.by_key.is_empty());
    }
}

//! What wakes the workload reconcilers when a pod changes: the scheduling
//! loop's own pod reflectors (home and member clusters) name the owning
//! workload after the change is in their cache. The reconcilers read pods
//! from those caches, so a reconcile woken this way sees the change (a
//! second pod watch of their own could run ahead of the cache, which then
//! had to be looked at again on a timer).

use futures::channel::mpsc::{unbounded, UnboundedReceiver, UnboundedSender};
use k8s_openapi::api::core::v1::Pod;
use kube::api::DynamicObject;
use kube::runtime::reflector::ObjectRef;
use kube::runtime::watcher;

use super::reconcile::workload_resource;
use super::snapshot::{self, Kind};

/// The senders to both kinds' reconcilers; cloned into every pod reflector.
/// `Default`: connected to nothing (a pod change wakes no one).
#[derive(Clone, Default)]
pub(super) struct PodTriggers {
    training: Option<UnboundedSender<ObjectRef<DynamicObject>>>,
    inference: Option<UnboundedSender<ObjectRef<DynamicObject>>>,
}

/// The receiving ends, one per kind (to `reconcile::spawn`).
pub(super) struct PodTriggerStreams {
    pub(super) training: UnboundedReceiver<ObjectRef<DynamicObject>>,
    pub(super) inference: UnboundedReceiver<ObjectRef<DynamicObject>>,
}

impl PodTriggers {
    pub(super) fn connected() -> (PodTriggers, PodTriggerStreams) {
        let (training, training_rx) = unbounded();
        let (inference, inference_rx) = unbounded();
        let triggers = PodTriggers {
            training: Some(training),
            inference: Some(inference),
        };
        let streams = PodTriggerStreams {
            training: training_rx,
            inference: inference_rx,
        };
        (triggers, streams)
    }

    /// Called by a pod reflector for each event, after its cache took it.
    pub(super) fn on_event(&self, event: &watcher::Event<Pod>) {
        match event {
            watcher::Event::Apply(pod)
            | watcher::Event::Delete(pod)
            | watcher::Event::InitApply(pod) => self.pod_changed(pod),
            watcher::Event::Init | watcher::Event::InitDone => {}
        }
    }

    /// Wakes the reconciler of the pod's owning workload, if it has one.
    pub(super) fn pod_changed(&self, pod: &Pod) {
        let Some(owner) = snapshot::pod_owner(pod) else {
            return;
        };
        let to = match owner.kind {
            Kind::Training => &self.training,
            Kind::Inference => &self.inference,
        };
        if let Some(to) = to {
            let at = ObjectRef::new_with(&owner.name, workload_resource(owner.kind))
                .within(&owner.namespace);
            // Err: the reconciler is gone (shutting down); nothing to wake.
            let _ = to.unbounded_send(at);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use futures::StreamExt;
    use kube::api::ObjectMeta;

    fn pod(labels: &[(&str, &str)]) -> Pod {
        Pod {
            metadata: ObjectMeta {
                name: Some("p-0".into()),
                namespace: Some("team".into()),
                labels: Some(
                    labels
                        .iter()
                        .map(|(k, v)| (k.to_string(), v.to_string()))
                        .collect(),
                ),
                ..Default::default()
            },
            ..Default::default()
        }
    }

    #[tokio::test]
    async fn a_pod_change_wakes_its_owners_reconciler_only() {
        let (triggers, mut streams) = PodTriggers::connected();
        let owned = pod(&[
            (snapshot::keys::WORKLOAD_KIND, Kind::Inference.label()),
            (snapshot::keys::WORKLOAD_NAME, "svc"),
        ]);
        triggers.on_event(&watcher::Event::Delete(owned));
        triggers.on_event(&watcher::Event::Apply(pod(&[("app", "other")])));
        triggers.on_event(&watcher::Event::InitDone);
        drop(triggers);
        let woken: Vec<_> = streams.inference.by_ref().collect().await;
        assert_eq!(woken.len(), 1);
        assert_eq!(woken[0].name, "svc");
        assert_eq!(woken[0].namespace.as_deref(), Some("team"));
        assert_eq!(woken[0].dyntype.kind, "InferenceService");
        assert!(streams.training.collect::<Vec<_>>().await.is_empty());
    }

    #[test]
    fn unconnected_triggers_wake_no_one() {
        PodTriggers::default().pod_changed(&pod(&[
            (snapshot::keys::WORKLOAD_KIND, Kind::Training.label()),
            (snapshot::keys::WORKLOAD_NAME, "job"),
        ]));
    }
}

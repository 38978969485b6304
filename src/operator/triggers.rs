//! What wakes the workload reconcilers: the scheduling loop's own
//! reflectors, once their caches hold a change. A workload's change wakes
//! its reconciler; a pod's change (home and member clusters) wakes the
//! reconciler of the workload its labels name. The reconcilers read
//! workloads and pods from those same caches, so a reconcile woken this way
//! sees the change. (Watches of their own decoded every change a second
//! time — a sixth of the controller's CPU while binding — and could run
//! ahead of the caches, which then had to be looked at again on a timer.)

use futures::channel::mpsc::{unbounded, UnboundedReceiver, UnboundedSender};
use k8s_openapi::api::core::v1::Pod;
use kube::api::DynamicObject;
use kube::runtime::reflector::ObjectRef;
use kube::runtime::watcher;
use kube::ResourceExt;

use super::reconcile::workload_resource;
use super::snapshot::{self, Kind, WorkloadKey};

/// The senders to both kinds' reconcilers; cloned into the reflectors.
/// `Default`: connected to nothing (a change wakes no one).
#[derive(Clone, Default)]
pub(super) struct Triggers {
    training: Option<UnboundedSender<ObjectRef<DynamicObject>>>,
    inference: Option<UnboundedSender<ObjectRef<DynamicObject>>>,
}

/// The receiving ends, one per kind (to `reconcile::spawn`).
pub(super) struct TriggerStreams {
    pub(super) training: UnboundedReceiver<ObjectRef<DynamicObject>>,
    pub(super) inference: UnboundedReceiver<ObjectRef<DynamicObject>>,
}

/// One reflector's side of the triggers: `woken` names the workload an
/// object's change concerns (a workload itself, or a pod's owner). A
/// relist's objects reach the cache all at once when the relist is done,
/// so their workloads are woken then.
struct ReflectorTriggers<K> {
    triggers: Triggers,
    woken: fn(&K) -> Option<WorkloadKey>,
    relisted: Vec<WorkloadKey>,
}

impl<K> ReflectorTriggers<K> {
    /// Called by the reflector for each event, after its cache took it.
    fn on_event(&mut self, event: &watcher::Event<K>) {
        match event {
            watcher::Event::Apply(o) | watcher::Event::Delete(o) => {
                if let Some(key) = (self.woken)(o) {
                    self.triggers.wake(&key);
                }
            }
            watcher::Event::Init => self.relisted.clear(),
            watcher::Event::InitApply(o) => self.relisted.extend((self.woken)(o)),
            watcher::Event::InitDone => {
                for key in self.relisted.drain(..) {
                    self.triggers.wake(&key);
                }
            }
        }
    }
}

fn training(obj: &DynamicObject) -> Option<WorkloadKey> {
    Some(workload(Kind::Training, obj))
}

fn inference(obj: &DynamicObject) -> Option<WorkloadKey> {
    Some(workload(Kind::Inference, obj))
}

fn workload(kind: Kind, obj: &DynamicObject) -> WorkloadKey {
    WorkloadKey {
        kind,
        namespace: obj.namespace().unwrap_or_default(),
        name: obj.name_any(),
    }
}

impl Triggers {
    pub(super) fn connected() -> (Triggers, TriggerStreams) {
        let (training, training_rx) = unbounded();
        let (inference, inference_rx) = unbounded();
        let triggers = Triggers {
            training: Some(training),
            inference: Some(inference),
        };
        let streams = TriggerStreams {
            training: training_rx,
            inference: inference_rx,
        };
        (triggers, streams)
    }

    /// The `on_event` of a pod reflector (`spawn_reflector`): a pod's change
    /// wakes the workload it names.
    pub(super) fn for_pods(&self) -> impl FnMut(&watcher::Event<Pod>) + Send + 'static {
        self.reflector(snapshot::pod_owner)
    }

    /// The `on_event` of one workload kind's reflector: a workload's change
    /// wakes it.
    pub(super) fn for_workloads(
        &self,
        kind: Kind,
    ) -> impl FnMut(&watcher::Event<DynamicObject>) + Send + 'static {
        self.reflector(match kind {
            Kind::Training => training,
            Kind::Inference => inference,
        })
    }

    fn reflector<K: 'static>(
        &self,
        woken: fn(&K) -> Option<WorkloadKey>,
    ) -> impl FnMut(&watcher::Event<K>) + Send + 'static {
        let mut reflector = ReflectorTriggers {
            triggers: self.clone(),
            woken,
            relisted: Vec::new(),
        };
        move |event| reflector.on_event(event)
    }

    /// Wakes the reconciler of one workload.
    fn wake(&self, key: &WorkloadKey) {
        let to = match key.kind {
            Kind::Training => &self.training,
            Kind::Inference => &self.inference,
        };
        if let Some(to) = to {
            let at =
                ObjectRef::new_with(&key.name, workload_resource(key.kind)).within(&key.namespace);
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
        let (triggers, mut streams) = Triggers::connected();
        let mut pods = triggers.for_pods();
        let owned = pod(&[
            (snapshot::keys::WORKLOAD_KIND, Kind::Inference.label()),
            (snapshot::keys::WORKLOAD_NAME, "svc"),
        ]);
        pods(&watcher::Event::Delete(owned));
        pods(&watcher::Event::Apply(pod(&[("app", "other")])));
        drop((triggers, pods));
        let woken: Vec<_> = streams.inference.by_ref().collect().await;
        assert_eq!(woken.len(), 1);
        assert_eq!(woken[0].name, "svc");
        assert_eq!(woken[0].namespace.as_deref(), Some("team"));
        assert_eq!(woken[0].dyntype.kind, "InferenceService");
        assert!(streams.training.collect::<Vec<_>>().await.is_empty());
    }

    /// A relisted pod wakes its workload only when the relist is done: the
    /// cache takes the relist's objects all at once then, and a reconcile
    /// woken earlier would not find the pod (and could take it for gone).
    #[tokio::test]
    async fn a_relist_wakes_its_workloads_once_the_cache_holds_them() {
        let (triggers, mut streams) = Triggers::connected();
        let mut pods = triggers.for_pods();
        let owned = pod(&[
            (snapshot::keys::WORKLOAD_KIND, Kind::Training.label()),
            (snapshot::keys::WORKLOAD_NAME, "job"),
        ]);
        pods(&watcher::Event::Init);
        pods(&watcher::Event::InitApply(owned.clone()));
        assert!(
            streams.training.try_recv().is_err(),
            "woken before the relist is done"
        );
        pods(&watcher::Event::InitDone);
        pods(&watcher::Event::Apply(owned));
        drop((triggers, pods));
        let woken: Vec<_> = streams.training.collect().await;
        assert_eq!(woken.len(), 2);
        assert_eq!(woken[0].name, "job");
        assert_eq!(woken[0].namespace.as_deref(), Some("team"));
        assert_eq!(woken[0].dyntype.kind, "TrainingJob");
        assert!(streams.inference.collect::<Vec<_>>().await.is_empty());
    }

    #[tokio::test]
    async fn a_workload_change_wakes_that_workload_in_its_kinds_reconciler() {
        let (triggers, mut streams) = Triggers::connected();
        let mut jobs = triggers.for_workloads(Kind::Training);
        let job: DynamicObject = serde_json::from_value(serde_json::json!({
            "apiVersion": "zhisuan.io/v1alpha1", "kind": "TrainingJob",
            "metadata": {"name": "job", "namespace": "team"}
        }))
        .unwrap();
        jobs(&watcher::Event::Init);
        jobs(&watcher::Event::InitApply(job.clone()));
        assert!(
            streams.training.try_recv().is_err(),
            "woken before the relist is done"
        );
        jobs(&watcher::Event::InitDone);
        jobs(&watcher::Event::Apply(job));
        drop((triggers, jobs));
        let woken: Vec<_> = streams.training.collect().await;
        assert_eq!(woken.len(), 2);
        assert!(woken.iter().all(|w| w.name == "job"
            && w.namespace.as_deref() == Some("team")
            && w.dyntype.kind == "TrainingJob"));
        assert!(streams.inference.collect::<Vec<_>>().await.is_empty());
    }
}

//! What wakes the workload reconcilers: the scheduling loop's own
//! reflectors, once their caches hold a change. A workload's change wakes
//! its reconciler; a pod's change (home and member clusters) wakes the
//! reconciler of the workload its labels name. The reconcilers read
//! workloads and pods from those same caches, so a reconcile woken this way
//! sees the change. (Watches of their own decoded every change a second
//! time — a sixth of the controller's CPU while binding — and could run
//! ahead of the caches, which then had to be looked at again on a timer.)
//!
//! A wake is sent only for a workload the cache shows with work for its
//! reconciler ([`reconcile::has_work`]): most changes are the scheduling
//! loop's own status writes to Pending and Admitted workloads, and their
//! pods' creation and binding, which no reconcile acts on. A workload that
//! becomes Running is woken by that change, and then reads its pods.

use futures::channel::mpsc::{unbounded, UnboundedReceiver, UnboundedSender};
use k8s_openapi::api::core::v1::Pod;
use kube::api::DynamicObject;
use kube::runtime::reflector::{ObjectRef, Store};
use kube::runtime::watcher;

use super::reconcile::{self, workload_resource};
use super::shared::Shared;
use super::snapshot::{self, Kind, WorkloadKey};

/// The reconcilers of both kinds; cloned into the reflectors.
/// `Default`: connected to nothing (a change wakes no one).
#[derive(Clone, Default)]
pub(super) struct Triggers {
    training: Option<Reconciler>,
    inference: Option<Reconciler>,
}

/// One kind's reconciler: where its wakes go, and the cache it reads the
/// workloads from.
#[derive(Clone)]
struct Reconciler {
    to: UnboundedSender<ObjectRef<Shared<DynamicObject>>>,
    workloads: Store<Shared<DynamicObject>>,
}

/// The receiving ends, one per kind (to `reconcile::spawn`).
pub(super) struct TriggerStreams {
    pub(super) training: UnboundedReceiver<ObjectRef<Shared<DynamicObject>>>,
    pub(super) inference: UnboundedReceiver<ObjectRef<Shared<DynamicObject>>>,
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

fn training(obj: &Shared<DynamicObject>) -> Option<WorkloadKey> {
    Some(snapshot::workload_key(Kind::Training, obj))
}

fn inference(obj: &Shared<DynamicObject>) -> Option<WorkloadKey> {
    Some(snapshot::workload_key(Kind::Inference, obj))
}

impl Triggers {
    /// Triggers for the reconcilers reading `training` and `inference`
    /// (the scheduling loop's workload caches), and the reconcilers' ends.
    pub(super) fn connected(
        training: Store<Shared<DynamicObject>>,
        inference: Store<Shared<DynamicObject>>,
    ) -> (Triggers, TriggerStreams) {
        let (training_tx, training_rx) = unbounded();
        let (inference_tx, inference_rx) = unbounded();
        let triggers = Triggers {
            training: Some(Reconciler {
                to: training_tx,
                workloads: training,
            }),
            inference: Some(Reconciler {
                to: inference_tx,
                workloads: inference,
            }),
        };
        let streams = TriggerStreams {
            training: training_rx,
            inference: inference_rx,
        };
        (triggers, streams)
    }

    /// The `on_event` of a pod reflector (`caches::spawn_reflector`): a pod's change
    /// wakes the workload it names.
    pub(super) fn for_pods(&self) -> impl FnMut(&watcher::Event<Shared<Pod>>) + Send + 'static {
        self.reflector(|pod: &Shared<Pod>| snapshot::pod_owner(pod))
    }

    /// The `on_event` of one workload kind's reflector: a workload's change
    /// wakes it.
    pub(super) fn for_workloads(
        &self,
        kind: Kind,
    ) -> impl FnMut(&watcher::Event<Shared<DynamicObject>>) + Send + 'static {
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

    /// Wakes the reconciler of one workload, if its cache shows work for it.
    fn wake(&self, key: &WorkloadKey) {
        let to = match key.kind {
            Kind::Training => &self.training,
            Kind::Inference => &self.inference,
        };
        if let Some(r) = to {
            let at =
                ObjectRef::new_with(&key.name, workload_resource(key.kind)).within(&key.namespace);
            if r.workloads
                .get(&at)
                .is_some_and(|w| reconcile::has_work(&w))
            {
                // Err: the reconciler is gone (shutting down); nothing to wake.
                let _ = r.to.unbounded_send(at);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use futures::StreamExt;
    use kube::api::ObjectMeta;
    use kube::runtime::reflector::store::Writer;
    use kube::ResourceExt;

    fn pod(labels: &[(&str, &str)]) -> Shared<Pod> {
        Shared(std::sync::Arc::new(Pod {
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
        }))
    }

    fn owned_by(kind: Kind, name: &str) -> Shared<Pod> {
        pod(&[
            (snapshot::keys::WORKLOAD_KIND, kind.label()),
            (snapshot::keys::WORKLOAD_NAME, name),
        ])
    }

    /// A workload in namespace `team`: `phase` in its status, with the
    /// reconciler's finalizer or without, being deleted or not.
    fn workload(
        kind: Kind,
        name: &str,
        phase: &str,
        finalizer: bool,
        deleting: bool,
    ) -> Shared<DynamicObject> {
        let mut meta = serde_json::json!({"name": name, "namespace": "team"});
        if finalizer {
            meta["finalizers"] = serde_json::json!([crate::operator::crd::FINALIZER]);
        }
        if deleting {
            meta["deletionTimestamp"] = serde_json::json!("2026-12-06T00:00:00Z");
        }
        serde_json::from_value(serde_json::json!({
            "apiVersion": "zhisuan.io/v1alpha1", "kind": kind.kind_name(),
            "metadata": meta, "status": {"phase": phase}
        }))
        .unwrap()
    }

    /// Triggers over two workload caches holding `objects`.
    fn connected(objects: &[(Kind, Shared<DynamicObject>)]) -> (Triggers, TriggerStreams) {
        let mut caches = [Kind::Training, Kind::Inference].map(|k| {
            let mut w = Writer::<Shared<DynamicObject>>::new(workload_resource(k));
            w.apply_watcher_event(&watcher::Event::Init);
            w
        });
        for (kind, obj) in objects {
            let at = match kind {
                Kind::Training => 0,
                Kind::Inference => 1,
            };
            caches[at].apply_watcher_event(&watcher::Event::InitApply(obj.clone()));
        }
        for cache in &mut caches {
            cache.apply_watcher_event(&watcher::Event::InitDone);
        }
        let [training, inference] = caches.map(|w| w.as_reader());
        Triggers::connected(training, inference)
    }

    #[tokio::test]
    async fn a_pod_change_wakes_its_owners_reconciler_only() {
        let running = workload(Kind::Inference, "svc", "Running", true, false);
        let (triggers, mut streams) = connected(&[(Kind::Inference, running)]);
        let mut pods = triggers.for_pods();
        pods(&watcher::Event::Delete(owned_by(Kind::Inference, "svc")));
        pods(&watcher::Event::Apply(pod(&[("app", "other")])));
        drop((triggers, pods));
        let woken: Vec<_> = streams.inference.by_ref().collect().await;
        assert_eq!(woken.len(), 1);
        assert_eq!(woken[0].name, "svc");
        assert_eq!(woken[0].namespace.as_deref(), Some("team"));
        assert_eq!(woken[0].dyntype.kind, "InferenceService");
        assert!(streams.training.collect::<Vec<_>>().await.is_empty());
    }

    /// Feeds `obj` to a reflector's triggers as a relist and then as a
    /// change; nothing may be woken before the relist is done. Returns the
    /// TrainingJob reconciler's wakes (the InferenceService one must get
    /// none).
    async fn relisted_then_changed<K: Clone>(
        triggers: Triggers,
        mut streams: TriggerStreams,
        mut on_event: impl FnMut(&watcher::Event<K>),
        obj: K,
    ) -> Vec<ObjectRef<Shared<DynamicObject>>> {
        on_event(&watcher::Event::Init);
        on_event(&watcher::Event::InitApply(obj.clone()));
        assert!(
            streams.training.try_recv().is_err(),
            "woken before the relist is done"
        );
        on_event(&watcher::Event::InitDone);
        on_event(&watcher::Event::Apply(obj));
        drop((triggers, on_event));
        assert!(streams.inference.collect::<Vec<_>>().await.is_empty());
        streams.training.collect().await
    }

    fn is_the_job(w: &ObjectRef<Shared<DynamicObject>>) -> bool {
        w.name == "job" && w.namespace.as_deref() == Some("team") && w.dyntype.kind == "TrainingJob"
    }

    /// A relisted pod wakes its workload only when the relist is done: the
    /// cache takes the relist's objects all at once then, and a reconcile
    /// woken earlier would not find the pod (and could take it for gone).
    #[tokio::test]
    async fn a_relist_wakes_its_workloads_once_the_cache_holds_them() {
        let running = workload(Kind::Training, "job", "Running", true, false);
        let (triggers, streams) = connected(&[(Kind::Training, running)]);
        let pods = triggers.for_pods();
        let owned = owned_by(Kind::Training, "job");
        let woken = relisted_then_changed(triggers, streams, pods, owned).await;
        assert_eq!(woken.len(), 2);
        assert!(woken.iter().all(is_the_job));
    }

    #[tokio::test]
    async fn a_workload_change_wakes_that_workload_in_its_kinds_reconciler() {
        let new = workload(Kind::Training, "job", "Pending", false, false);
        let (triggers, streams) = connected(&[(Kind::Training, new.clone())]);
        let jobs = triggers.for_workloads(Kind::Training);
        let woken = relisted_then_changed(triggers, streams, jobs, new).await;
        assert_eq!(woken.len(), 2);
        assert!(woken.iter().all(is_the_job));
    }

    /// Wakes go only to workloads the cache shows with work for the
    /// reconciler: no finalizer yet, being deleted, or Running. The
    /// scheduling loop's own writes to Pending and Admitted workloads, and
    /// their pods' changes, wake no one; nor does a workload the cache no
    /// longer holds.
    #[tokio::test]
    async fn only_workloads_with_work_for_their_reconciler_are_woken() {
        let t = Kind::Training;
        let objects = [
            (t, workload(t, "new", "Pending", false, false)),
            (t, workload(t, "waiting", "Pending", true, false)),
            (t, workload(t, "admitted", "Admitted", true, false)),
            (t, workload(t, "running", "Running", true, false)),
            (t, workload(t, "deleted", "Pending", true, true)),
            (t, workload(t, "done", "Succeeded", true, false)),
        ];
        let (triggers, streams) = connected(&objects);
        let mut jobs = triggers.for_workloads(t);
        let mut pods = triggers.for_pods();
        for (_, obj) in &objects {
            jobs(&watcher::Event::Apply(obj.clone()));
            pods(&watcher::Event::Apply(owned_by(t, &obj.name_any())));
        }
        pods(&watcher::Event::Apply(owned_by(t, "gone")));
        drop((triggers, jobs, pods));
        let mut woken: Vec<String> = streams.training.map(|w| w.name).collect().await;
        woken.sort();
        woken.dedup_by(|a, b| a == b);
        assert_eq!(woken, ["deleted", "new", "running"]);
    }
}

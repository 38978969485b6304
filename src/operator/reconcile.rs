//! Per-object lifecycle of TrainingJobs and InferenceServices: one kube-rs
//! `Controller` per kind (watching the workloads and the pods they own).
//!
//! - finalizer `zhisuan.io/cleanup` through `kube::runtime::finalizer`: put
//!   on before anything else (the scheduling loop launches only workloads
//!   that carry it), and on deletion the owned pods are deleted before it
//!   is removed;
//! - phase from the owned pods ([`crate::schedule::pod_lifecycle`], pure): Succeeded,
//!   Failed (a pod failed, `maxRuntimeSeconds`), or rolled back when pods
//!   vanished; written by server-side apply of `status`.
//!
//! Admission, placement, binding and preemption stay in the scheduling loop
//! (`controller.rs`): they need the whole snapshot. Only the Lease holder
//! writes; a standby requeues each object until it leads.

use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use k8s_openapi::api::core::v1::Pod;
use kube::api::{ApiResource, DynamicObject};
use kube::runtime::controller::{Action as Requeue, Controller as KubeController};
use kube::runtime::finalizer::{finalizer, Error as FinalizerError, Event};
use kube::runtime::reflector::{ObjectRef, Store};
use kube::runtime::watcher;
use kube::ResourceExt;

use super::act::Actuator;
use super::crd::{InferenceService, TrainingJob, FINALIZER};
use super::leader::Leadership;
use super::members::PodsIn;
use super::shared::{self, Shared};
use super::snapshot::{self, keys, Kind, PodView, WorkloadKey};
use crate::schedule as plan;

/// What the reconcilers need of the controller replica: acting, the term,
/// and a few settings — not the controller itself.
pub(super) struct Context {
    pub(super) act: Arc<Actuator>,
    pub(super) leadership: Leadership,
    /// How often a standby retries.
    pub(super) retry: Duration,
    /// The scheduling loop's resync period.
    pub(super) resync: Duration,
    pub(super) plan: plan::PlanConfig,
}

/// What one kind's reconciler works with.
pub(super) struct Reconciler {
    ctx: Context,
    kind: Kind,
    /// The scheduling loop's pod cache (the owned pods are read from it).
    pods: Store<Shared<Pod>>,
}

type ReconcileError = FinalizerError<kube::Error>;

/// How often a Running workload whose pods did not change is looked at
/// again anyway (its pods' changes wake it at once).
const RELOOK: Duration = Duration::from_secs(300);

/// The API resource of a workload kind.
pub(super) fn workload_resource(kind: Kind) -> ApiResource {
    match kind {
        Kind::Training => ApiResource::erase::<TrainingJob>(&()),
        Kind::Inference => ApiResource::erase::<InferenceService>(&()),
    }
}

/// Runs the reconciler of one workload kind until the task is aborted.
/// Workloads are read as `DynamicObject`s, so one that does not parse never
/// stalls the watch (the scheduling loop reports it). It has no watch of its
/// own: it reads the scheduling loop's caches (`workloads`, `pods`), and
/// `woken` names the workloads to look at, sent by those caches' reflectors
/// once they hold a change of the workload or of a pod it owns
/// ([`super::triggers`]).
///
/// Start it only once `workloads` is ready: kube-runtime's store readiness
/// wakes only the last task that waited for it, so a reconciler waiting
/// beside the scheduling loop could leave the loop waiting for ever
/// (`store_readiness_wakes_only_its_last_waiter` below).
pub(super) fn spawn(
    ctx: Context,
    kind: Kind,
    workloads: Store<Shared<DynamicObject>>,
    pods: Store<Shared<Pod>>,
    woken: impl futures::Stream<Item = ObjectRef<Shared<DynamicObject>>> + Send + 'static,
) -> tokio::task::JoinHandle<()> {
    let ar = workload_resource(kind);
    let context = Arc::new(Reconciler { ctx, kind, pods });
    tokio::spawn(async move {
        // Every trigger comes through `woken`; the object stream is empty.
        let objects = futures::stream::pending::<Result<Shared<DynamicObject>, watcher::Error>>();
        KubeController::for_stream_with(objects, workloads, ar)
            .reconcile_on(woken)
            .run(reconcile, error_policy, context)
            .for_each(|result| async move {
                if let Err(e) = result {
                    tracing::debug!(error = %e, "reconcile");
                }
            })
            .await
    })
}

async fn reconcile(
    obj: Arc<Shared<DynamicObject>>,
    ctx: Arc<Reconciler>,
) -> Result<Requeue, ReconcileError> {
    if !ctx.ctx.leadership.is_leader() {
        return Ok(Requeue::requeue(ctx.ctx.retry));
    }
    let key = WorkloadKey {
        kind: ctx.kind,
        namespace: obj.namespace().unwrap_or_default(),
        name: obj.name_any(),
    };
    let api = ctx.ctx.act.workload_api::<Shared<DynamicObject>>(&key);
    finalizer(&api, FINALIZER, obj, |event| async {
        match event {
            Event::Apply(obj) => ctx.lifecycle(&key, &obj).await,
            Event::Cleanup(obj) => ctx.cleanup(&key, &obj).await,
        }
    })
    .await
}

fn error_policy(
    obj: Arc<Shared<DynamicObject>>,
    error: &ReconcileError,
    ctx: Arc<Reconciler>,
) -> Requeue {
    tracing::warn!(object = %obj.name_any(), %error, "reconcile failed; retrying");
    Requeue::requeue(ctx.ctx.retry.min(Duration::from_secs(1)))
}

/// Whether reconciling `obj` can do anything: put the finalizer on, clean
/// up a deletion, or follow a Running workload's pods. The triggers wake
/// the reconciler for no other workload.
pub(super) fn has_work(obj: &DynamicObject) -> bool {
    obj.metadata.deletion_timestamp.is_some()
        || !obj.finalizers().iter().any(|f| f == FINALIZER)
        || is_running(obj)
}

fn is_running(obj: &DynamicObject) -> bool {
    obj.data.pointer("/status/phase").and_then(|p| p.as_str()) == Some("Running")
}

/// Whether the pod's labels name this workload (and kind) as its owner.
fn is_owned_by(pod: &Pod, key: &WorkloadKey) -> bool {
    let labels = pod.labels();
    labels.get(keys::WORKLOAD_NAME) == Some(&key.name)
        && labels.get(keys::WORKLOAD_KIND).map(String::as_str) == Some(key.kind.label())
}

impl Reconciler {
    /// The pods this workload owns, each with its cluster, from the pod
    /// caches (a scan: deletions only).
    fn owned_pods(&self, key: &WorkloadKey) -> Vec<(PodsIn, PodView)> {
        let owned = |p: &Pod| {
            p.namespace().as_deref() == Some(key.namespace.as_str()) && is_owned_by(p, key)
        };
        let home = shared::state_filter(&self.pods, owned)
            .into_iter()
            .map(|p| (PodsIn::Home, p));
        let members = self
            .ctx
            .act
            .members()
            .cached_pods(owned)
            .into_iter()
            .map(|(region, p)| (PodsIn::Member(region), p));
        home.chain(members)
            .map(|(at, p)| (at, snapshot::pod_view(&p)))
            .collect()
    }

    /// A pod of the placement, from the cache of its cluster `at`. Err: that
    /// cluster's cache cannot tell (a member not listed yet).
    fn placed_pod(
        &self,
        at: &PodsIn,
        namespace: &str,
        name: &str,
    ) -> Result<Option<Arc<Pod>>, String> {
        let home = || shared::get(&self.pods, &ObjectRef::new(name).within(namespace));
        let members = self.ctx.act.members();
        match at {
            PodsIn::Home => Ok(home()),
            PodsIn::Member(region) => members.cached_pod(region, namespace, name),
            PodsIn::Everywhere => {
                Ok(home().or_else(|| members.cached_pod_anywhere(namespace, name)))
            }
        }
    }

    /// Phase from the owned pods; looks again when a time limit is due.
    async fn lifecycle(
        &self,
        key: &WorkloadKey,
        obj: &DynamicObject,
    ) -> Result<Requeue, kube::Error> {
        // Only Running workloads have a phase to follow (skipped before any
        // parsing; the triggers send few others).
        if !is_running(obj) {
            return Ok(Requeue::await_change());
        }
        // Validation against known models is the scheduling loop's; only the
        // status, runtime limit and generation matter here.
        let view = snapshot::workload_view(key.kind, obj, &snapshot::ValidationRules::default());
        // A cluster whose pods cannot be read yet is asked again after a
        // resync period (at least 1 s).
        let lag = self.ctx.resync.max(Duration::from_secs(1));
        // The pods the placement names, looked up by name (O(1) each) in the
        // cluster of its region only: a pod of the same name elsewhere is
        // not this gang's.
        let region = view
            .status
            .placement
            .as_ref()
            .and_then(|p| p.region.as_deref());
        let looked_up: Result<Vec<PodView>, String> =
            self.ctx.act.members().cluster_of(region).and_then(|at| {
                let mut pods = Vec::new();
                for r in view.status.placement.iter().flat_map(|p| p.replicas.iter()) {
                    if let Some(p) = self.placed_pod(&at, &key.namespace, &r.pod)? {
                        pods.push(p);
                    }
                }
                Ok(pods
                    .iter()
                    .filter(|p| is_owned_by(p, key))
                    .map(|p| snapshot::pod_view(p))
                    .collect())
            });
        let pods = match looked_up {
            Ok(pods) => pods,
            Err(why) => {
                // Missing pods are not judged while their cluster is unknown.
                tracing::debug!(workload = %key, %why, "pods not readable yet");
                return Ok(Requeue::requeue(lag));
            }
        };
        let refs: Vec<&PodView> = pods.iter().collect();
        let now = chrono::Utc::now().timestamp();
        let (action, recheck) = plan::pod_lifecycle(&view, &refs, now, &self.ctx.plan);
        if let Some(action) = action {
            if !self.ctx.leadership.is_leader() {
                return Ok(Requeue::requeue(self.ctx.retry));
            }
            self.ctx.act.act(action, obj).await?;
            return Ok(Requeue::await_change());
        }
        // Pod changes wake this reconciler once the pod cache holds them
        // (`triggers`): look again when a time limit is due, else only
        // every `RELOOK`, in case.
        Ok(Requeue::requeue(match recheck {
            Some(at) => RELOOK.min(Duration::from_secs((at - now).max(1) as u64)),
            None => RELOOK,
        }))
    }

    /// A deleted workload: its pods go, each in its own cluster (those seen,
    /// and those its placement names, which the cache may not show yet, in
    /// the placement region's cluster); then the finalizer is removed.
    async fn cleanup(
        &self,
        key: &WorkloadKey,
        obj: &DynamicObject,
    ) -> Result<Requeue, kube::Error> {
        let mut by_cluster: Vec<(PodsIn, BTreeSet<String>)> = Vec::new();
        let mut add = |at: PodsIn, name: String| match by_cluster.iter_mut().find(|(c, _)| *c == at)
        {
            Some((_, names)) => {
                names.insert(name);
            }
            None => by_cluster.push((at, BTreeSet::from([name]))),
        };
        for (at, p) in self.owned_pods(key) {
            if !p.deleting {
                add(at, p.name);
            }
        }
        let view = snapshot::workload_view(key.kind, obj, &snapshot::ValidationRules::default());
        if let Some(p) = &view.status.placement {
            let at = self.ctx.act.cluster_of(p.region.as_deref())?;
            for r in &p.replicas {
                add(at.clone(), r.pod.clone());
            }
        }
        for (at, names) in by_cluster {
            let names: Vec<String> = names.into_iter().collect();
            self.ctx.act.delete_pods(key, &at, &names).await?;
        }
        Ok(Requeue::await_change())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use kube::runtime::reflector::store::Writer;
    use std::future::Future;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::task::{Context as TaskContext, Wake, Waker};

    struct Wakes(AtomicUsize);

    impl Wake for Wakes {
        fn wake(self: Arc<Self>) {
            self.0.fetch_add(1, Ordering::SeqCst);
        }
    }

    /// Why the reconcilers start only once the scheduling loop's caches are
    /// ready (`Controller::run`): of two tasks waiting for one store to be
    /// ready, kube-runtime wakes only the one that waited last (its
    /// readiness is a oneshot receiver, which keeps one waker). The first
    /// would wait for ever. If kube-runtime starts waking every waiter, this
    /// fails, and the reconcilers may start beside the loop.
    #[test]
    fn store_readiness_wakes_only_its_last_waiter() {
        let mut writer = Writer::<DynamicObject>::new(workload_resource(Kind::Training));
        let store = writer.as_reader();
        let (first, last) = (
            Arc::new(Wakes(AtomicUsize::new(0))),
            Arc::new(Wakes(AtomicUsize::new(0))),
        );
        let mut a = std::pin::pin!(store.wait_until_ready());
        let mut b = std::pin::pin!(store.wait_until_ready());
        let waker = |w: &Arc<Wakes>| Waker::from(w.clone());
        assert!(a
            .as_mut()
            .poll(&mut TaskContext::from_waker(&waker(&first)))
            .is_pending());
        assert!(b
            .as_mut()
            .poll(&mut TaskContext::from_waker(&waker(&last)))
            .is_pending());
        writer.apply_watcher_event(&watcher::Event::Init);
        writer.apply_watcher_event(&watcher::Event::InitDone);
        assert_eq!(last.0.load(Ordering::SeqCst), 1);
        assert_eq!(
            first.0.load(Ordering::SeqCst),
            0,
            "kube-runtime now wakes every waiter of a store's readiness"
        );
    }
}

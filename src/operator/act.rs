//! The actuator: what the controller does to the cluster for a plan's
//! actions — launch (pods created on their nodes, placement committed in the
//! status first), stop, statuses, events, pod building — shared by the
//! scheduling loop and the workload reconcilers, which need nothing else of
//! the controller. Every write path checks the Lease term.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, OnceLock};

use super::events::{EventRecorder, EventType};
use futures::StreamExt;
use k8s_openapi::api::core::v1::Pod;
use kube::api::{Api, ApiResource, DeleteParams, DynamicObject, Patch, PatchParams, PostParams};
use kube::core::DynamicResourceScope;
use kube::{Client, Resource, ResourceExt};
use serde_json::{json, Value};
use tokio::sync::Notify;

use super::controller::FIELD_MANAGER;
use super::crd::{ComputeRegion, ReplicaPlacement, TenantQuota, TrainingJob, WorkloadStatus};
use super::echo;
use super::leader::Leadership;
use super::members::{Members, PodsIn};
use super::metrics::OperatorMetrics;
use super::pods::{self, DeviceResources};
use super::reconcile;
use super::snapshot::{self, keys, WorkloadKey, WorkloadView};
use crate::jobs::{rfc3339, set_condition};
use crate::schedule::Action;

/// A status this replica wrote that its reflector may not show yet.
pub(super) struct Written {
    /// resourceVersion the API server gave the write.
    pub(super) written_rv: String,
    pub(super) status: WorkloadStatus,
    pub(super) at: std::time::Instant,
}

/// Whether a store showing `store_rv` already reflects a write that got
/// `written_rv`. resourceVersions are opaque, but etcd's (and the stand-in's)
/// are increasing integers; otherwise only equality is trusted.
fn caught_up(store_rv: &str, written_rv: &str) -> bool {
    match (store_rv.parse::<u64>(), written_rv.parse::<u64>()) {
        (Ok(a), Ok(b)) => a >= b,
        _ => store_rv == written_rv,
    }
}

/// What acting needs: the client, the event recorder, the statuses written
/// but maybe not yet seen, the member clusters, counters and the term.
pub(super) struct Actuator {
    pub(super) client: Client,
    recorder: EventRecorder,
    /// Statuses written but maybe not yet in the reflector, by workload uid.
    pub(super) written: Mutex<HashMap<String, Written>>,
    /// Member clusters of ComputeRegions with a kubeconfig Secret.
    members: OnceLock<Arc<Members>>,
    metrics: OperatorMetrics,
    leadership: Leadership,
    /// Concurrent API calls while launching a gang.
    parallelism: usize,
    /// How replica pods ask for their devices.
    devices: DeviceResources,
}

impl Actuator {
    pub(super) fn new(
        client: Client,
        recorder: EventRecorder,
        metrics: OperatorMetrics,
        leadership: Leadership,
        parallelism: usize,
        devices: DeviceResources,
    ) -> Self {
        Actuator {
            client,
            recorder,
            written: Mutex::default(),
            members: OnceLock::new(),
            metrics,
            leadership,
            parallelism,
            devices,
        }
    }

    /// Shows this replica's own status writes the reflector has not caught
    /// up with yet (for a minute at most) in the workloads' views, so a
    /// pass never plans from a status older than what it wrote;
    /// `objects` are the workloads' objects in the same order. Returns the
    /// indices of the views it changed.
    pub(super) fn overlay_written<'o>(
        &self,
        views: &mut [WorkloadView],
        objects: impl Iterator<Item = &'o Arc<DynamicObject>>,
    ) -> Vec<usize> {
        let mut written = self.written.lock().unwrap();
        let mut changed = Vec::new();
        if written.is_empty() {
            return changed;
        }
        for (i, (view, obj)) in views.iter_mut().zip(objects).enumerate() {
            let rv = || obj.metadata.resource_version.as_deref().unwrap_or_default();
            match written.get(&view.uid) {
                Some(w)
                    if !caught_up(rv(), &w.written_rv)
                        && w.at.elapsed() < std::time::Duration::from_secs(60) =>
                {
                    view.status = w.status.clone();
                    changed.push(i);
                }
                Some(_) => {
                    written.remove(&view.uid);
                }
                None => {}
            }
        }
        changed
    }

    /// The API of a workload, read as `K` (`DynamicObject`, or the
    /// reconcilers' `Shared` one).
    pub(super) fn workload_api<K>(&self, key: &WorkloadKey) -> Api<K>
    where
        K: Resource<DynamicType = ApiResource, Scope = DynamicResourceScope>,
    {
        let ar = reconcile::workload_resource(key.kind);
        Api::namespaced_with(self.client.clone(), &key.namespace, &ar)
    }

    async fn apply_status(
        &self,
        key: &WorkloadKey,
        obj: &DynamicObject,
        status: &WorkloadStatus,
    ) -> Result<(), kube::Error> {
        self.fenced()?;
        let api: Api<DynamicObject> = self.workload_api(key);
        let body = json!({
            "apiVersion": obj.types.as_ref().map(|t| t.api_version.clone()).unwrap_or_default(),
            "kind": key.kind.kind_name(),
            "status": status,
        });
        let pp = PatchParams::apply(FIELD_MANAGER).force();
        let after: echo::Written =
            echo::patch_status(&api, &key.name, &pp, &Patch::Apply(&body)).await?;
        self.written.lock().unwrap().insert(
            obj.uid().unwrap_or_default(),
            Written {
                written_rv: after.metadata.resource_version.unwrap_or_default(),
                status: status.clone(),
                at: std::time::Instant::now(),
            },
        );
        Ok(())
    }

    async fn event(
        &self,
        obj: &DynamicObject,
        key: &WorkloadKey,
        type_: EventType,
        reason: &str,
        note: &str,
    ) {
        let mut reference = obj.object_ref(&ApiResource::erase::<TrainingJob>(&()));
        reference.kind = Some(key.kind.kind_name().into());
        let note: String = note.chars().take(1000).collect();
        if let Err(e) = self
            .recorder
            .publish(&reference, type_, "Scheduling", reason, note)
            .await
        {
            tracing::debug!(error = %e, "event not recorded");
        }
    }

    /// The cluster holding the pods of a placement in `region`.
    pub(super) fn cluster_of(&self, region: Option<&str>) -> Result<PodsIn, kube::Error> {
        self.members().cluster_of(region).map_err(unavailable)
    }

    /// The member clusters, watched with the scheduling loop's `Notify`
    /// (set once by `Controller::run`; until then, a fresh set).
    pub(super) fn set_members(&self, members: Members) {
        let _ = self.members.set(Arc::new(members));
    }

    pub(super) fn members(&self) -> Arc<Members> {
        self.members
            .get_or_init(|| {
                // Until `Controller::run` sets the watched set: no member
                // (no namespace to read Secrets in).
                let none = String::new();
                Arc::new(Members::new(
                    self.client.clone(),
                    none,
                    Arc::new(Notify::new()),
                ))
            })
            .clone()
    }

    /// Fails (retried later) once this replica no longer holds the Lease:
    /// every write checks it right before it is sent.
    fn fenced(&self) -> Result<(), kube::Error> {
        if self.leadership.is_leader() {
            Ok(())
        } else {
            Err(unavailable("lost leadership: not writing".into()))
        }
    }

    /// Deletes the named pods of workload `owner` in the cluster `at`
    /// (absent ones are fine). A pod of that name that is not this
    /// workload's (its kind and name labels) is left alone, and the delete
    /// is conditional on the uid read, so a pod recreated meanwhile is never
    /// removed. A member cluster that cannot be reached now is an error
    /// (retried later): other clusters' pods of the same name are never
    /// touched.
    pub(super) async fn delete_pods(
        &self,
        owner: &WorkloadKey,
        at: &PodsIn,
        pods: &[String],
    ) -> Result<(), kube::Error> {
        if pods.is_empty() {
            return Ok(());
        }
        let apis = self
            .members()
            .pod_apis(at, &owner.namespace)
            .map_err(unavailable)?;
        let targets: Vec<(Api<Pod>, String)> = apis
            .iter()
            .flat_map(|api| pods.iter().map(move |p| (api.clone(), p.clone())))
            .collect();
        let results: Vec<Result<(), kube::Error>> = futures::stream::iter(targets)
            .map(|(api, name)| async move { self.delete_owned(&api, owner, &name).await })
            .buffer_unordered(self.parallelism)
            .collect()
            .await;
        results.into_iter().collect()
    }

    async fn delete_owned(
        &self,
        api: &Api<Pod>,
        owner: &WorkloadKey,
        name: &str,
    ) -> Result<(), kube::Error> {
        let Some(pod) = api.get_opt(name).await? else {
            return Ok(());
        };
        let labels = pod.labels();
        let ours = labels.get(keys::WORKLOAD_KIND).map(String::as_str) == Some(owner.kind.label())
            && labels.get(keys::WORKLOAD_NAME) == Some(&owner.name);
        if !ours {
            tracing::warn!(pod = name, workload = %owner, "not deleting a pod that is not this workload's");
            return Ok(());
        }
        self.fenced()?;
        let params = DeleteParams {
            preconditions: Some(kube::api::Preconditions {
                uid: pod.uid(),
                resource_version: None,
            }),
            ..DeleteParams::default()
        };
        match api.delete(name, &params).await {
            Ok(_) => Ok(()),
            // Gone, or another pod of that name by now: not ours to delete.
            Err(kube::Error::Api(s)) if s.code == 404 || s.code == 409 => Ok(()),
            Err(e) => Err(e),
        }
    }

    pub(super) async fn act(&self, action: Action, obj: &DynamicObject) -> Result<(), kube::Error> {
        match action {
            Action::SetStatus { key, status } => self.set_status(&key, obj, &status).await,
            Action::Stop {
                key,
                pods,
                region,
                status,
            } => {
                self.stop(&key, obj, &pods, region.as_deref(), &status)
                    .await
            }
            Action::QuotaStatus { name, status } => {
                self.apply_cluster_status::<TenantQuota>(&name, json!(status))
                    .await
            }
            Action::RegionStatus { name, status } => {
                self.apply_cluster_status::<ComputeRegion>(&name, json!(status))
                    .await
            }
            Action::Launch {
                key,
                tenant,
                status,
                write_status,
            } => {
                if write_status {
                    self.apply_status(&key, obj, &status).await?;
                }
                match self.launch(&key, &tenant, obj, &status).await {
                    Ok(bound) => self.launched(&key, obj, &status, bound).await,
                    Err(e) => self.roll_back(&key, obj, &status, &e).await,
                }
            }
        }
    }

    /// Writes a workload's status, with an event when its reason changed.
    async fn set_status(
        &self,
        key: &WorkloadKey,
        obj: &DynamicObject,
        status: &WorkloadStatus,
    ) -> Result<(), kube::Error> {
        let old_reason = obj.data.pointer("/status/reason").and_then(Value::as_str);
        self.apply_status(key, obj, status).await?;
        if status.reason.as_deref() != old_reason {
            let reason = status.reason.clone().unwrap_or_default();
            let type_ = if matches!(reason.as_ref(), "Completed") {
                EventType::Normal
            } else {
                EventType::Warning
            };
            let message = scheduled_message(status).unwrap_or_default();
            self.event(obj, key, type_, &reason, message).await;
        }
        Ok(())
    }

    /// Stops a workload (preempted, evicted, or ended): deletes its pods in
    /// `region`'s cluster, then writes its status and an event.
    async fn stop(
        &self,
        key: &WorkloadKey,
        obj: &DynamicObject,
        pods: &[String],
        region: Option<&str>,
        status: &WorkloadStatus,
    ) -> Result<(), kube::Error> {
        let at = self.cluster_of(region)?;
        self.delete_pods(key, &at, pods).await?;
        self.apply_status(key, obj, status).await?;
        if status.phase.as_deref() == Some("Preempted") {
            self.metrics.preemptions.inc();
        }
        self.event(
            obj,
            key,
            EventType::Warning,
            status.reason.as_deref().unwrap_or("Stopped"),
            scheduled_message(status).unwrap_or_default(),
        )
        .await;
        Ok(())
    }

    /// Every pod of the workload is bound: it is Running.
    async fn launched(
        &self,
        key: &WorkloadKey,
        obj: &DynamicObject,
        status: &WorkloadStatus,
        bound: u64,
    ) -> Result<(), kube::Error> {
        let mut running = status.clone();
        running.phase = Some("Running".into());
        running.reason = Some("Bound".into());
        running.started_at = Some(rfc3339(chrono::Utc::now().timestamp()));
        self.metrics.placement_decisions.inc_by(bound);
        self.apply_status(key, obj, &running).await?;
        let message = scheduled_message(&running).unwrap_or_default();
        self.event(obj, key, EventType::Normal, "Scheduled", message)
            .await;
        Ok(())
    }

    /// A launch failed. All or nothing: removes every pod of the gang and
    /// requeues the workload (Pending, BindFailed).
    async fn roll_back(
        &self,
        key: &WorkloadKey,
        obj: &DynamicObject,
        status: &WorkloadStatus,
        e: &str,
    ) -> Result<(), kube::Error> {
        self.metrics.bind_errors.inc();
        let pods: Vec<String> = status
            .placement
            .iter()
            .flat_map(|p| p.replicas.iter().map(|r| r.pod.clone()))
            .collect();
        let region = status.placement.as_ref().and_then(|p| p.region.as_deref());
        let at = self.cluster_of(region)?;
        self.delete_pods(key, &at, &pods).await?;
        let mut pending = status.clone();
        pending.phase = Some("Pending".into());
        pending.reason = Some("BindFailed".into());
        pending.placement = None;
        let now = chrono::Utc::now().timestamp();
        let message = format!("launch failed and was rolled back: {e}");
        let generation = obj.metadata.generation.unwrap_or(0);
        set_condition(
            &mut pending,
            "Scheduled",
            false,
            "BindFailed",
            message.clone(),
            now,
            generation,
        );
        self.apply_status(key, obj, &pending).await?;
        self.event(obj, key, EventType::Warning, "BindFailed", &message)
            .await;
        Ok(())
    }

    /// Server-side applies the status of a cluster-scoped zhisuan object.
    async fn apply_cluster_status<K>(&self, name: &str, status: Value) -> Result<(), kube::Error>
    where
        K: Resource<DynamicType = ()>,
    {
        let api: Api<DynamicObject> =
            Api::all_with(self.client.clone(), &ApiResource::erase::<K>(&()));
        let body = json!({
            "apiVersion": K::api_version(&()), "kind": K::kind(&()), "status": status,
        });
        let pp = PatchParams::apply(FIELD_MANAGER).force();
        let _: serde::de::IgnoredAny =
            echo::patch_status(&api, name, &pp, &Patch::Apply(&body)).await?;
        Ok(())
    }

    /// Creates the gang's missing pods and binds the unbound ones, in parallel.
    /// Returns how many bindings this call made.
    async fn launch(
        &self,
        key: &WorkloadKey,
        tenant: &str,
        obj: &DynamicObject,
        status: &WorkloadStatus,
    ) -> Result<u64, String> {
        let placement = status.placement.clone().ok_or("no placement")?;
        let template = obj
            .data
            .pointer("/spec/template")
            .cloned()
            .unwrap_or_else(|| json!({}));
        let members = self.members();
        let region = placement.region.clone().unwrap_or_default();
        // In a member cluster the pods carry the owner labels but no owner
        // reference (the workload is not in that cluster).
        let (pods, owner) = if members.is_member(&region) {
            let api = members
                .pod_api(&region, &key.namespace)
                .ok_or_else(|| format!("member cluster of region {region} is not connected"))?;
            (api, None)
        } else {
            (
                Api::namespaced(self.client.clone(), &key.namespace),
                obj.controller_owner_ref(&ApiResource::erase::<TrainingJob>(&())),
            )
        };
        let mut jobs = Vec::with_capacity(placement.replicas.len());
        for (i, r) in placement.replicas.iter().enumerate() {
            let mut owner = owner.clone();
            if let Some(o) = owner.as_mut() {
                o.kind = key.kind.kind_name().into();
            }
            jobs.push(launch_replica(
                pods.clone(),
                key.clone(),
                tenant.to_string(),
                i as u32,
                r.clone(),
                template.clone(),
                owner,
                self.leadership.clone(),
                self.devices,
            ));
        }
        let results: Vec<Result<bool, String>> = futures::stream::iter(jobs)
            .buffer_unordered(self.parallelism)
            .collect()
            .await;
        let mut bound = 0;
        for r in results {
            if r? {
                bound += 1;
            }
        }
        Ok(bound)
    }
}

/// An error for a cluster that cannot be reached now (the action is retried).
fn unavailable(message: String) -> kube::Error {
    kube::Error::Api(
        kube::core::Status::failure(&message, "ServiceUnavailable")
            .with_code(503)
            .boxed(),
    )
}

/// Creates (if missing) one replica's pod on its placed node, or binds it
/// there if it exists unbound (made by an older controller). Ok(true) =
/// bound now, Ok(false) = already bound where the placement says.
#[allow(clippy::too_many_arguments)]
async fn launch_replica(
    pods: Api<Pod>,
    key: WorkloadKey,
    tenant: String,
    replica: u32,
    r: ReplicaPlacement,
    template: Value,
    owner: Option<k8s_openapi::apimachinery::pkg::apis::meta::v1::OwnerReference>,
    leadership: Leadership,
    devices: DeviceResources,
) -> Result<bool, String> {
    let (key, tenant, r, i) = (&key, tenant.as_str(), &r, replica);
    let annotations = pods::replica_annotations(key, tenant, r);
    let pod = pods::replica_pod(key, i, r, &template, &annotations, owner, devices)?;
    if !leadership.is_leader() {
        return Err("lost leadership".to_string());
    }
    let created: Result<serde::de::IgnoredAny, _> = echo::create(&pods, &pod).await;
    let existing = match created {
        Ok(_) => return Ok(true),
        Err(kube::Error::Api(s)) if s.code == 409 => {
            pods.get(&r.pod).await.map_err(|e| e.to_string())?
        }
        Err(e) => return Err(format!("creating pod {}: {e}", r.pod)),
    };
    let owned = existing.labels().get(keys::WORKLOAD_NAME) == Some(&key.name);
    if !owned {
        return Err(format!("pod {} exists and is not this workload's", r.pod));
    }
    // The placement names a member cluster's node `<region>/<node>`; the pod
    // is in that cluster, bound by the node's own name.
    let node = snapshot::name_in_cluster(&r.node);
    match existing.spec.as_ref().and_then(|s| s.node_name.as_deref()) {
        Some(n) if n == node => return Ok(false),
        Some(n) if !n.is_empty() => {
            return Err(format!("pod {} is bound to {n}, not {node}", r.pod))
        }
        _ => {}
    }
    if !leadership.is_leader() {
        return Err("lost leadership".to_string());
    }
    let binding = json!({
        "apiVersion": "v1", "kind": "Binding",
        "metadata": {"name": r.pod, "annotations": annotations},
        "target": {"apiVersion": "v1", "kind": "Node", "name": node},
    });
    let res: Result<serde::de::IgnoredAny, kube::Error> = pods
        .create_subresource("binding", &r.pod, &PostParams::default(), &binding)
        .await;
    match res {
        Ok(_) => Ok(true),
        Err(kube::Error::Api(s)) if s.code == 409 => {
            let now = pods.get(&r.pod).await.map_err(|e| e.to_string())?;
            match now.spec.and_then(|s| s.node_name) {
                Some(n) if n == node => Ok(false),
                other => Err(format!("pod {} bound elsewhere: {other:?}", r.pod)),
            }
        }
        // The stand-in and real API servers answer 201 with a Status body.
        Err(kube::Error::SerdeError(_)) => Ok(true),
        Err(e) => Err(format!("binding pod {} to {node}: {e}", r.pod)),
    }
}

/// The message of a status's Scheduled condition.
fn scheduled_message(status: &WorkloadStatus) -> Option<&str> {
    status
        .conditions
        .iter()
        .find(|c| c.type_ == "Scheduled")
        .map(|c| &*c.message)
}

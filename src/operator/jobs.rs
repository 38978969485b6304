//! [`KubeJobs`]: the quota API's [`JobBackend`] on a real cluster. A
//! submission becomes a `TrainingJob` or `InferenceService` in one namespace,
//! labelled with its tenant; the controller does the rest. Every read checks
//! the tenant label, so one tenant's id is "not found" for another.

use std::collections::BTreeMap;

use crate::jobs::Phase;
use crate::ledger::Tier;
use futures::future::BoxFuture;
use futures::FutureExt;
use kube::api::{Api, ApiResource, DynamicObject, ListParams, Patch, PatchParams, PostParams};
use kube::{Client, ResourceExt};
use serde_json::{json, Value};

use crate::api::jobs::{
    BackendError, BackendResult, Explanation, GpuUse, JobBackend, JobKind, JobPage, JobSpec,
    JobView, RegionView, ReplicaPlacement,
};

use super::crd::{ComputeRegion, InferenceService, TenantQuota, TrainingJob, WorkloadStatus};
use super::snapshot::keys;
use crate::ledger::Quota;

/// Label holding the API's job name (object names are prefixed by tenant).
const JOB_NAME_LABEL: &str = "zhisuan.io/job-name";

/// Label on the TenantQuotas the API writes: they project the ledger's quota.
pub const QUOTA_SOURCE_LABEL: &str = "zhisuan.io/quota-source";

/// Jobs as custom resources in `namespace`.
#[derive(Clone)]
pub struct KubeJobs {
    client: Client,
    namespace: String,
    /// Objects asked for per list call (`limit`, then `continue`): neither
    /// the API server nor the API process holds every job at once.
    list_chunk: u32,
}

/// Default of the objects read per list call.
pub const LIST_CHUNK: u32 = 500;

fn kube_error(e: kube::Error) -> BackendError {
    match e {
        kube::Error::Api(s) if s.code == 409 => BackendError::Conflict(s.message),
        kube::Error::Api(s) if s.code == 404 => BackendError::NotFound(s.message),
        kube::Error::Api(s) if s.code == 422 || s.code == 400 => BackendError::Invalid {
            field: "spec".into(),
            message: s.message,
        },
        other => BackendError::Internal(other.to_string()),
    }
}

/// `tenant-name` as a DNS label (lowercase alphanumerics and '-', ≤ 63).
fn object_name(tenant: &str, name: &str) -> String {
    let raw = format!("{tenant}-{name}").to_lowercase();
    let mut s: String = raw
        .chars()
        .map(|c| if c.is_ascii_alphanumeric() { c } else { '-' })
        .collect();
    s.truncate(63);
    s.trim_matches('-').to_string()
}

fn tier_name(t: Tier) -> &'static str {
    match t {
        Tier::Basic => "basic",
        Tier::Industry => "industry",
        Tier::HighValue => "high-value",
    }
}

impl KubeJobs {
    pub fn new(client: Client, namespace: &str) -> Self {
        KubeJobs {
            client,
            namespace: namespace.into(),
            list_chunk: LIST_CHUNK,
        }
    }

    /// Reads `n` objects per list call instead of [`LIST_CHUNK`].
    pub fn with_list_chunk(mut self, n: u32) -> Self {
        self.list_chunk = n.max(1);
        self
    }

    fn api(&self, kind: JobKind) -> Api<DynamicObject> {
        let ar = match kind {
            JobKind::Training => ApiResource::erase::<TrainingJob>(&()),
            JobKind::Inference => ApiResource::erase::<InferenceService>(&()),
        };
        Api::namespaced_with(self.client.clone(), &self.namespace, &ar)
    }

    /// The object for a submission.
    pub fn object(spec: &JobSpec) -> Value {
        let name = object_name(&spec.tenant, &spec.name);
        let mut s = json!({
            "tenant": spec.tenant,
            "replicas": spec.replicas,
            "gpuModels": spec.gpu_models,
            "template": {"spec": {"containers": [{"name": "main", "image": spec.image}]}},
        });
        if spec.milli_per_replica.is_multiple_of(1000) {
            s["gpusPerReplica"] = json!(spec.milli_per_replica / 1000);
        } else {
            s["gpuMilli"] = json!(spec.milli_per_replica);
        }
        if let Some(r) = &spec.region {
            s["regions"] = json!({"residency": [r]});
        }
        if let Some(v) = &spec.vendor {
            s["acceleratorVendor"] = json!(v);
        }
        if spec.mixed_models {
            s["mixedModels"] = json!(true);
        }
        if let Some(t) = &spec.topology {
            s["topology"] = json!(t);
        }
        let kind = match spec.kind {
            JobKind::Training => {
                if let Some(m) = spec.max_runtime_s {
                    s["maxRuntimeSeconds"] = json!(m);
                }
                if let Some(d) = spec.max_delay_s {
                    s["maxDelaySeconds"] = json!(d);
                }
                "TrainingJob"
            }
            JobKind::Inference => {
                s["modelName"] = json!(spec.name);
                s["tokenTier"] = json!(tier_name(spec.token_tier.unwrap_or(Tier::Basic)));
                if let Some(l) = spec.latency_slo_ms {
                    s["latencySloMs"] = json!(l);
                }
                if let Some(u) = &spec.user_region {
                    s["userRegion"] = json!(u);
                }
                "InferenceService"
            }
        };
        json!({
            "apiVersion": "zhisuan.io/v1alpha1",
            "kind": kind,
            "metadata": {"name": name, "labels": {keys::TENANT: spec.tenant, JOB_NAME_LABEL: spec.name}},
            "spec": s,
        })
    }

    /// A custom resource as the API shows it.
    pub fn view(kind: JobKind, obj: &DynamicObject) -> JobView {
        let spec = obj.data.get("spec").cloned().unwrap_or_default();
        let status: WorkloadStatus = obj
            .data
            .get("status")
            .and_then(|s| serde::Deserialize::deserialize(s).ok())
            .unwrap_or_default();
        let milli = spec["gpuMilli"]
            .as_u64()
            .unwrap_or_else(|| spec["gpusPerReplica"].as_u64().unwrap_or(0) * 1000);
        let phase = Phase::of_status(
            status.phase.as_deref(),
            obj.metadata.deletion_timestamp.is_some(),
        );
        let region = status.placement.as_ref().and_then(|p| p.region.clone());
        let placement = status
            .placement
            .iter()
            .flat_map(|p| p.replicas.iter().enumerate())
            .map(|(i, r)| ReplicaPlacement {
                replica: i as u32,
                region: region.clone().unwrap_or_default(),
                node: r.node.clone(),
                gpu_model: None,
                devices: r.devices.clone(),
                gpu_milli: r.gpu_milli.unwrap_or(1000),
            })
            .collect();
        let summary = status
            .conditions
            .iter()
            .find(|c| c.type_ == "Scheduled")
            .map(|c| c.message.clone())
            .unwrap_or_else(|| "waiting for the controller".into());
        JobView {
            id: obj.name_any(),
            name: obj
                .labels()
                .get(JOB_NAME_LABEL)
                .cloned()
                .unwrap_or_else(|| obj.name_any()),
            kind,
            phase,
            replicas: spec["replicas"].as_u64().unwrap_or(0) as u32,
            gpu_milli_per_replica: milli as u32,
            gpu_models: serde_json::from_value(spec["gpuModels"].clone()).unwrap_or_default(),
            image: spec
                .pointer("/template/spec/containers/0/image")
                .and_then(Value::as_str)
                .map(str::to_string),
            region,
            placement,
            explanation: Explanation {
                summary: summary.to_string(),
                detail: serde_json::to_value(&status.conditions).unwrap_or_default(),
            },
            submitted_at: obj
                .metadata
                .creation_timestamp
                .as_ref()
                .map(|t| t.0.to_string())
                .unwrap_or_default(),
        }
    }

    /// Visits the tenant's jobs of each kind in name (= id) order, a chunk
    /// of objects per list call; `visit` answers `false` to skip the rest
    /// of that kind.
    async fn each_job(
        &self,
        tenant: Option<&str>,
        mut visit: impl FnMut(&str, JobView) -> bool,
    ) -> BackendResult<()> {
        // One tenant's objects, or every object the API made (all carry the label).
        let selector = match tenant {
            Some(t) => format!("{}={t}", keys::TENANT),
            None => keys::TENANT.to_string(),
        };
        for kind in [JobKind::Training, JobKind::Inference] {
            let mut token: Option<String> = None;
            'kind: loop {
                let mut lp = ListParams::default()
                    .labels(&selector)
                    .limit(self.list_chunk);
                if let Some(t) = &token {
                    lp = lp.continue_token(t);
                }
                let list = self.api(kind).list(&lp).await.map_err(kube_error)?;
                for obj in &list.items {
                    let owner = obj.labels().get(keys::TENANT).map_or("", String::as_str);
                    if !visit(owner, Self::view(kind, obj)) {
                        break 'kind;
                    }
                }
                token = list.metadata.continue_.filter(|c| !c.is_empty());
                if token.is_none() {
                    break;
                }
            }
        }
        Ok(())
    }

    /// The tenant's object with this id, whichever kind it is.
    async fn find(&self, tenant: &str, id: &str) -> BackendResult<(JobKind, DynamicObject)> {
        for kind in [JobKind::Training, JobKind::Inference] {
            if let Some(obj) = self.api(kind).get_opt(id).await.map_err(kube_error)? {
                if obj.labels().get(keys::TENANT).map(String::as_str) == Some(tenant) {
                    return Ok((kind, obj));
                }
            }
        }
        Err(BackendError::NotFound(id.into()))
    }
}

/// Field manager of the API's writes of TenantQuotas.
pub const QUOTA_FIELD_MANAGER: &str = "zhisuan-api";

/// The TenantQuota spec that enforces a ledger quota on a cluster: the same
/// limits, field by field (the one quota type, camelCase).
pub fn tenant_quota_spec(tenant: &str, parent: Option<&str>, q: &Quota) -> Value {
    let mut spec = json!({
        "tenant": tenant,
        "gpus": q.gpus,
        "borrowable": q.borrowable,
        "guaranteedGpus": q.guaranteed_gpus,
    });
    if let Some(p) = parent {
        spec["parent"] = json!(p);
    }
    if !q.gpu_hours_per_month.is_empty() {
        spec["gpuHoursPerMonth"] = json!(q.gpu_hours_per_month);
    }
    if !q.tokens_per_month.is_empty() {
        spec["tokensPerMonth"] = json!(q.tokens_per_month);
    }
    spec
}

impl JobBackend for KubeJobs {
    fn project_quota<'a>(
        &'a self,
        tenant: &'a str,
        parent: Option<&'a str>,
        quota: &'a Quota,
    ) -> BoxFuture<'a, BackendResult<()>> {
        async move {
            let api: Api<DynamicObject> = Api::all_with(
                self.client.clone(),
                &ApiResource::erase::<TenantQuota>(&()),
            );
            // Named after the tenant: one TenantQuota per tenant, rewritten in place.
            let name = object_name(tenant, "");
            let obj = json!({
                "apiVersion": "zhisuan.io/v1alpha1",
                "kind": "TenantQuota",
                "metadata": {"name": name, "labels": {keys::TENANT: tenant, QUOTA_SOURCE_LABEL: "ledger"}},
                "spec": tenant_quota_spec(tenant, parent, quota),
            });
            api.patch(
                &name,
                &PatchParams::apply(QUOTA_FIELD_MANAGER).force(),
                &Patch::Apply(&obj),
            )
            .await
            .map_err(kube_error)?;
            Ok(())
        }
        .boxed()
    }

    fn submit(&self, spec: JobSpec) -> BoxFuture<'_, BackendResult<JobView>> {
        async move {
            let obj: DynamicObject = serde_json::from_value(Self::object(&spec))
                .map_err(|e| BackendError::Internal(e.to_string()))?;
            let created = self
                .api(spec.kind)
                .create(&PostParams::default(), &obj)
                .await
                .map_err(|e| match kube_error(e) {
                    BackendError::Conflict(_) => BackendError::Conflict(format!(
                        "a job named {:?} already exists",
                        spec.name
                    )),
                    other => other,
                })?;
            Ok(Self::view(spec.kind, &created))
        }
        .boxed()
    }

    fn list(
        &self,
        tenant: &str,
        after: Option<&str>,
        limit: usize,
    ) -> BoxFuture<'_, BackendResult<JobPage>> {
        let (tenant, after) = (tenant.to_string(), after.map(str::to_string));
        async move {
            // Ids are object names, listed in name order per kind: keep the
            // first `limit + 1` after the cursor of both kinds, reading a
            // chunk at a time (memory: a chunk plus the page).
            let keep = limit + 1;
            let mut first: BTreeMap<String, JobView> = BTreeMap::new();
            self.each_job(Some(&tenant), |_, job| {
                if after.as_ref().is_some_and(|a| job.id <= *a) {
                    return true;
                }
                if first.len() == keep && first.last_key_value().is_some_and(|(k, _)| *k < job.id) {
                    return false; // the rest of this kind comes later still
                }
                first.insert(job.id.clone(), job);
                if first.len() > keep {
                    first.pop_last();
                }
                true
            })
            .await?;
            Ok(JobPage::of(first.into_values().collect(), limit))
        }
        .boxed()
    }

    fn get(&self, tenant: &str, id: &str) -> BoxFuture<'_, BackendResult<JobView>> {
        let (tenant, id) = (tenant.to_string(), id.to_string());
        async move {
            let (kind, obj) = self.find(&tenant, &id).await?;
            Ok(Self::view(kind, &obj))
        }
        .boxed()
    }

    fn cancel(&self, tenant: &str, id: &str) -> BoxFuture<'_, BackendResult<JobView>> {
        let (tenant, id) = (tenant.to_string(), id.to_string());
        async move {
            let (kind, obj) = self.find(&tenant, &id).await?;
            self.api(kind)
                .delete(&id, &Default::default())
                .await
                .map_err(kube_error)?;
            let mut view = Self::view(kind, &obj);
            view.phase = Phase::Cancelled;
            Ok(view)
        }
        .boxed()
    }

    fn gpu_use(&self, tenant: &str) -> BoxFuture<'_, BackendResult<GpuUse>> {
        let tenant = tenant.to_string();
        async move {
            let mut out = GpuUse::default();
            self.each_job(Some(&tenant), |_, job| {
                if job.phase.is_active() {
                    let milli = job.replicas as u64 * job.gpu_milli_per_replica as u64;
                    out.total_milli += milli;
                    out.pending_jobs += u64::from(job.phase == Phase::Pending);
                    for m in &job.gpu_models {
                        *out.by_model_milli.entry(m.clone()).or_default() += milli;
                    }
                }
                true
            })
            .await?;
            Ok(out)
        }
        .boxed()
    }

    fn waiting(&self, limit: usize) -> BoxFuture<'_, BackendResult<Vec<(String, JobView)>>> {
        async move {
            let mut out = Vec::new();
            self.each_job(None, |tenant, job| {
                if job.phase == Phase::Pending {
                    out.push((tenant.to_string(), job));
                    // Keep memory bounded: the oldest `limit` so far.
                    if out.len() >= 2 * limit.max(1) {
                        out = crate::api::jobs::oldest_first(std::mem::take(&mut out), limit);
                    }
                }
                true
            })
            .await?;
            Ok(crate::api::jobs::oldest_first(out, limit))
        }
        .boxed()
    }

    fn regions(&self) -> BoxFuture<'_, BackendResult<Vec<RegionView>>> {
        async move {
            let api: Api<DynamicObject> = Api::all_with(
                self.client.clone(),
                &ApiResource::erase::<ComputeRegion>(&()),
            );
            let list = api.list(&ListParams::default()).await.map_err(kube_error)?;
            Ok(list
                .items
                .iter()
                .map(|r| {
                    let spec = r.data.get("spec").cloned().unwrap_or_default();
                    let status = r.data.get("status").cloned().unwrap_or_default();
                    let gpus = status["gpus"].as_u64().unwrap_or(0);
                    let allocated = status["gpusAllocated"].as_f64().unwrap_or(0.0);
                    RegionView {
                        name: r.name_any(),
                        latency_ms: Default::default(),
                        green_share: spec["greenShare"].as_f64().unwrap_or(0.0),
                        pue: spec["pue"].as_f64().unwrap_or(0.0),
                        price_milli_fen_per_kwh: spec["electricityFenPerKwh"].as_i64().unwrap_or(0)
                            * 1000,
                        gpus,
                        gpus_free: (gpus as f64 - allocated).max(0.0),
                        detail: spec,
                    }
                })
                .collect())
        }
        .boxed()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn submissions_map_onto_the_crds() {
        let spec = JobSpec {
            tenant: "Acme".into(),
            kind: JobKind::Inference,
            name: "chat_v2".into(),
            replicas: 2,
            milli_per_replica: 500,
            gpu_models: vec!["H100".into()],
            vendor: Some("nvidia".into()),
            mixed_models: true,
            topology: Some(crate::placement::TopologySpec {
                required: None,
                preferred: Some(crate::placement::Level::Rack),
            }),
            image: "vllm:1".into(),
            region: Some("ningxia".into()),
            latency_slo_ms: Some(50),
            user_region: Some("beijing".into()),
            token_tier: Some(Tier::HighValue),
            max_runtime_s: None,
            max_delay_s: None,
        };
        let obj = KubeJobs::object(&spec);
        assert_eq!(obj["metadata"]["name"], "acme-chat-v2");
        assert_eq!(obj["kind"], "InferenceService");
        assert_eq!(obj["spec"]["gpuMilli"], 500);
        assert_eq!(obj["spec"]["tokenTier"], "high-value");
        assert_eq!(obj["spec"]["regions"]["residency"][0], "ningxia");
        assert_eq!(obj["spec"]["acceleratorVendor"], "nvidia");
        assert_eq!(obj["spec"]["mixedModels"], true);
        assert_eq!(obj["spec"]["topology"], json!({"preferred": "rack"}));
        // What the controller will parse is a valid InferenceService spec.
        let parsed: crate::operator::crd::InferenceServiceSpec =
            serde_json::from_value(obj["spec"].clone()).unwrap();
        let known = ["H100".to_string()].into_iter().collect();
        assert!(crate::operator::validate::validate_inference(&parsed, &known).is_empty());
        let whole = JobSpec {
            kind: JobKind::Training,
            milli_per_replica: 8000,
            ..spec
        };
        assert_eq!(KubeJobs::object(&whole)["spec"]["gpusPerReplica"], 8);
        // A training job's start delay becomes the TrainingJob's, which the
        // controller reads as its time-shifting window.
        let patient = JobSpec {
            max_delay_s: Some(7200),
            ..whole
        };
        let obj = KubeJobs::object(&patient);
        assert_eq!(obj["spec"]["maxDelaySeconds"], 7200);
        let parsed: crate::operator::crd::TrainingJobSpec =
            serde_json::from_value(obj["spec"].clone()).unwrap();
        assert_eq!(parsed.max_delay_seconds, Some(7200));
    }
}

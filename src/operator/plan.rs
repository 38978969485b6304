//! Plan: one pure function from a [`Snapshot`] to the actions a leader takes.
//!
//! No kube, no I/O, no clock (time is `snapshot.now`). Order of work:
//! 1. capacity: a placement [`Cluster`] of every node, unhealthy devices
//!    marked, every admitted/running workload's recorded placement and every
//!    other live pod's devices allocated;
//! 2. lifecycle of admitted/running workloads (resume a half-launched gang,
//!    roll back one whose nodes went away, finish, fail, max runtime);
//! 3. admission of pending workloads in fair-share order: priority first,
//!    then the tenant with the smallest share of its guarantee, then age;
//!    hierarchical quota (tenant and every ancestor) decides which GPU models
//!    the job may still use; placement (`zhisuan::placement`) places the whole
//!    gang inside ONE region or nothing;
//! 4. bounded preemption: a job that fits nowhere may evict workloads of
//!    strictly lower priority (at most `max_victims`, one preemptor per pass).
//!    Strict priority order means preemption can never loop.

use std::borrow::Cow;
use std::collections::{BTreeMap, BTreeSet, VecDeque};

use crate::placement::{
    Cluster, Decision, DeviceMask, Engine, ModelSet, NodeSpec, Policy, Request,
};

use crate::regions::catalog::ScoreWeights;
use crate::regions::plan::{order_band_by_fit, Explanation, RegionChooser, RegionPolicy, Verdict};

use super::crd::{
    ComputeRegionStatus, Condition, Placement, ReplicaPlacement, TenantQuotaStatus, WorkloadStatus,
};
use super::regions::{job_spec, region_catalog, region_status};
use super::snapshot::{
    pods_by_owner, MonthToDate, NodeView, PodView, QuotaView, Snapshot, WorkloadKey, WorkloadView,
    MILLI_GPU_S_PER_GPU_HOUR,
};
use super::validate::{self, describe};

/// Tunables of the planner.
#[derive(Clone, Debug)]
pub struct PlanConfig {
    pub policy: Policy,
    /// How ComputeRegions are ranked (when the cluster has any).
    pub region_policy: RegionPolicy,
    /// Score weights and packing band of region choice (`--pack-band`).
    pub region_scoring: ScoreWeights,
    pub seed: u64,
    /// Most workloads one preemption may evict.
    pub max_victims: usize,
    /// A running gang missing pods this long after start is rolled back.
    pub gang_grace_s: i64,
}

impl Default for PlanConfig {
    fn default() -> Self {
        PlanConfig {
            policy: Policy::default(),
            region_policy: RegionPolicy::default(),
            region_scoring: ScoreWeights::default(),
            seed: 1,
            max_victims: 8,
            gang_grace_s: 60,
        }
    }
}

/// Something the leader must do.
#[derive(Clone, Debug, PartialEq)]
pub enum Action {
    /// Write a status (only emitted when it differs from the current one).
    SetStatus {
        key: WorkloadKey,
        status: WorkloadStatus,
    },
    /// Create and bind the gang's missing pods as recorded in `status`
    /// (written first when `write_status`: the commit point a new leader
    /// resumes from), then mark it Running.
    Launch {
        key: WorkloadKey,
        tenant: String,
        status: WorkloadStatus,
        write_status: bool,
    },
    /// Delete a workload's pods and write `status` (preempted, failed, rolled back).
    Stop {
        key: WorkloadKey,
        pods: Vec<String>,
        /// The region of the placement being stopped: its pods are in that
        /// region's cluster (`None`: a placement that recorded no region).
        region: Option<String>,
        status: WorkloadStatus,
    },
    /// Write a TenantQuota's status.
    QuotaStatus {
        name: String,
        status: TenantQuotaStatus,
    },
    /// Write a ComputeRegion's status.
    RegionStatus {
        name: String,
        status: ComputeRegionStatus,
    },
}

/// Output of one pass.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Plan {
    pub actions: Vec<Action>,
    /// Pending workloads by reason (for `zhisuan_pending_jobs{reason}`).
    pub pending: BTreeMap<String, u64>,
    /// Pods placed this pass.
    pub decisions: u64,
    /// Workloads evicted this pass.
    pub preemptions: u64,
    /// Admitted this pass, with seconds waited since creation.
    pub admitted: Vec<(WorkloadKey, i64)>,
    /// (region, node, milli-GPU allocated).
    pub nodes: Vec<(String, String, u64)>,
    /// (region, GPUs installed, milli-GPU allocated).
    pub regions: Vec<(String, u64, u64)>,
}

/// RFC 3339 of unix seconds.
pub fn rfc3339(unix_s: i64) -> String {
    chrono::DateTime::from_timestamp(unix_s, 0)
        .unwrap_or_default()
        .to_rfc3339_opts(chrono::SecondsFormat::Secs, true)
}

fn parse_rfc3339(s: &str) -> Option<i64> {
    chrono::DateTime::parse_from_rfc3339(s)
        .ok()
        .map(|t| t.timestamp())
}

/// Sets a condition, keeping its transition time when the status is unchanged.
pub fn set_condition(
    status: &mut WorkloadStatus,
    type_: &str,
    value: bool,
    reason: &str,
    message: String,
    now: i64,
    generation: i64,
) {
    let value = if value { "True" } else { "False" };
    let old = status.conditions.iter().position(|c| c.type_ == type_);
    let since = match old {
        Some(i) if status.conditions[i].status == value => {
            status.conditions[i].last_transition_time.clone()
        }
        _ => Some(rfc3339(now)),
    };
    let c = Condition {
        type_: type_.into(),
        status: value.into(),
        reason: reason.into(),
        message,
        last_transition_time: since,
        observed_generation: Some(generation),
    };
    match old {
        Some(i) => status.conditions[i] = c,
        None => status.conditions.push(c),
    }
}

/// A pending status with a reason and the "why pending" explanation.
fn pending_status(
    w: &WorkloadView,
    phase: &str,
    reason: &str,
    message: String,
    now: i64,
) -> WorkloadStatus {
    let mut s = w.status.clone();
    s.phase = Some(phase.into());
    s.reason = Some(reason.into());
    s.placement = None;
    s.started_at = None;
    s.observed_generation = Some(w.generation);
    let valid = reason != "InvalidSpec";
    set_condition(
        &mut s,
        "Valid",
        valid,
        if valid { "Valid" } else { "InvalidSpec" },
        if valid {
            "spec is valid".into()
        } else {
            message.clone()
        },
        now,
        w.generation,
    );
    set_condition(
        &mut s,
        "Scheduled",
        false,
        reason,
        message,
        now,
        w.generation,
    );
    s
}

/// Capacity bookkeeping over the placement engine.
struct Capacity {
    engine: Engine,
    nodes: Vec<NodeView>,
    index: BTreeMap<String, u32>,
}

impl Capacity {
    fn new(snapshot: &Snapshot, config: &PlanConfig) -> (Capacity, Vec<String>) {
        let mut warnings = Vec::new();
        let mut cluster = Cluster::new();
        let mut nodes = Vec::new();
        let mut index = BTreeMap::new();
        for n in &snapshot.nodes {
            let spec = NodeSpec {
                name: n.name.clone(),
                cpu_milli: n.cpu_milli,
                memory_mib: n.memory_mib,
                gpus: n.gpus,
                model: if n.model.is_empty() {
                    "unknown".into()
                } else {
                    n.model.clone()
                },
                labels: n.labels.clone(),
            };
            match cluster.add_node(&spec) {
                Ok(i) => {
                    index.insert(n.name.clone(), i);
                    nodes.push(n.clone());
                }
                Err(e) => warnings.push(format!("node {} left out of placement: {e}", n.name)),
            }
        }
        let engine = Engine::new(cluster, config.policy, config.seed);
        (
            Capacity {
                engine,
                nodes,
                index,
            },
            warnings,
        )
    }

    fn decision(
        &self,
        node: &str,
        devices: &[u8],
        milli: Option<u16>,
        cpu: u32,
        mem: u64,
    ) -> Option<Decision> {
        let node = *self.index.get(node)?;
        let mut mask = 0u64;
        for &d in devices {
            if (d as usize) < 64 {
                mask |= 1 << d;
            }
        }
        Some(Decision {
            node,
            devices: DeviceMask(mask),
            milli_per_device: milli.unwrap_or(1000),
            cpu_milli: cpu,
            memory_mib: mem,
        })
    }

    /// Decisions of a workload's recorded placement.
    fn decisions_of(&self, w: &WorkloadView) -> Vec<Decision> {
        let Some(p) = &w.status.placement else {
            return Vec::new();
        };
        p.replicas
            .iter()
            .filter_map(|r| {
                let devices: Vec<u8> = r.devices.iter().map(|&d| d as u8).collect();
                self.decision(
                    &r.node,
                    &devices,
                    r.gpu_milli.map(|m| m as u16),
                    w.cpu_milli,
                    w.memory_mib,
                )
            })
            .collect()
    }
}

/// Tenant → quota, with validity decided over the whole tree.
struct Quotas<'a> {
    by_tenant: BTreeMap<&'a str, &'a QuotaView>,
    /// Tenant → why its quota (or an ancestor's) is unusable.
    invalid: BTreeMap<String, String>,
}

impl<'a> Quotas<'a> {
    fn new(quotas: &'a [QuotaView]) -> Quotas<'a> {
        let mut by_tenant = BTreeMap::new();
        let mut invalid = BTreeMap::new();
        for q in quotas {
            if !q.errors.is_empty() {
                invalid.insert(
                    q.spec.tenant.clone(),
                    format!("TenantQuota {}: {}", q.name, describe(&q.errors)),
                );
            }
            if let Some(first) = by_tenant.insert(q.spec.tenant.as_str(), q) {
                invalid.insert(
                    q.spec.tenant.clone(),
                    format!(
                        "TenantQuotas {} and {} both claim tenant {:?}: spec.tenant must be unique",
                        first.name, q.name, q.spec.tenant
                    ),
                );
            }
        }
        let parents: BTreeMap<String, Option<String>> = by_tenant
            .iter()
            .map(|(t, q)| (t.to_string(), q.spec.parent.clone()))
            .collect();
        for t in validate::quota_cycles(&parents) {
            let q = by_tenant[t.as_str()];
            invalid.insert(
                t.clone(),
                format!("TenantQuota {}: spec.parent forms a cycle through tenant {t:?}; point spec.parent at a tenant outside the loop", q.name),
            );
        }
        for (t, q) in &by_tenant {
            if let Some(p) = &q.spec.parent {
                if !by_tenant.contains_key(p.as_str()) {
                    invalid.entry(t.to_string()).or_insert(format!(
                        "TenantQuota {}: spec.parent {p:?} has no TenantQuota; create it or clear spec.parent",
                        q.name
                    ));
                }
            }
        }
        Quotas { by_tenant, invalid }
    }

    /// The tenant and its ancestors, nearest first; Err names the problem.
    fn chain(&self, tenant: &str) -> Result<Vec<&'a QuotaView>, (String, String)> {
        let Some(mut q) = self.by_tenant.get(tenant).copied() else {
            return Err((
                "NoQuota".into(),
                format!("tenant {tenant:?} has no TenantQuota: an administrator must create one"),
            ));
        };
        let mut out = Vec::new();
        loop {
            if let Some(why) = self.invalid.get(&q.spec.tenant) {
                return Err(("QuotaInvalid".into(), why.clone()));
            }
            out.push(q);
            match q.spec.parent.as_deref().and_then(|p| self.by_tenant.get(p)) {
                Some(p) if out.len() <= self.by_tenant.len() => q = p,
                _ => return Ok(out),
            }
        }
    }
}

/// Milli-GPU in use per tenant, per model and in total (own workloads only).
#[derive(Default, Clone)]
struct Usage {
    by_model: BTreeMap<(String, String), u64>,
    total: BTreeMap<String, u64>,
}

impl Usage {
    fn add(&mut self, tenant: &str, model: &str, milli: u64) {
        *self
            .by_model
            .entry((tenant.into(), model.into()))
            .or_default() += milli;
        *self.total.entry(tenant.into()).or_default() += milli;
    }
    fn model(&self, tenant: &str, model: &str) -> u64 {
        self.by_model
            .get(&(tenant.into(), model.into()))
            .copied()
            .unwrap_or(0)
    }
    fn total(&self, tenant: &str) -> u64 {
        self.total.get(tenant).copied().unwrap_or(0)
    }
}

/// Whether `ancestor` is `tenant` or on its parent chain.
fn in_subtree(quotas: &Quotas, tenant: &str, ancestor: &str) -> bool {
    let mut cur = Some(tenant);
    let mut steps = 0;
    while let Some(c) = cur {
        if c == ancestor {
            return true;
        }
        steps += 1;
        if steps > quotas.by_tenant.len() + 1 {
            return false;
        }
        cur = quotas
            .by_tenant
            .get(c)
            .and_then(|q| q.spec.parent.as_deref());
    }
    false
}

/// Sum of `usage` over a tenant and its descendants.
fn subtree(quotas: &Quotas, usage: &Usage, tenant: &str, model: Option<&str>) -> u64 {
    usage
        .total
        .keys()
        .filter(|t| in_subtree(quotas, t, tenant))
        .map(|t| match model {
            Some(m) => usage.model(t, m),
            None => usage.total(t),
        })
        .sum()
}

/// Month-to-date use of each tenant's whole subtree (itself and its
/// descendants), summed once per pass: the ledger's figures do not change
/// while a pass admits.
fn month_subtrees(
    quotas: &Quotas,
    month: &BTreeMap<String, MonthToDate>,
) -> BTreeMap<String, MonthToDate> {
    let mut out: BTreeMap<String, MonthToDate> = BTreeMap::new();
    for (tenant, used) in month {
        // Up the parents, as `in_subtree` walks: each ancestor counts it once.
        let mut seen: Vec<&str> = Vec::new();
        let mut cur = Some(tenant.as_str());
        while let Some(c) = cur {
            if seen.contains(&c) {
                break; // a cyclic tree (refused by validation) ends here
            }
            seen.push(c);
            let total = out.entry(c.to_string()).or_default();
            for (model, v) in &used.milli_gpu_s {
                *total.milli_gpu_s.entry(model.clone()).or_default() += v;
            }
            for (tier, v) in &used.tokens {
                *total.tokens.entry(tier.clone()).or_default() += v;
            }
            cur = quotas
                .by_tenant
                .get(c)
                .and_then(|q| q.spec.parent.as_deref());
        }
    }
    out
}

/// A subtree's month-to-date figure for `key`, or summed over all keys for `*`.
fn month_used(
    subtrees: &BTreeMap<String, MonthToDate>,
    tenant: &str,
    pick: impl Fn(&MonthToDate) -> &BTreeMap<String, i64>,
    key: &str,
) -> i64 {
    subtrees.get(tenant).map_or(0, |u| {
        let by_key = pick(u);
        if key == "*" {
            by_key.values().sum()
        } else {
            by_key.get(key).copied().unwrap_or(0)
        }
    })
}

/// `(key, limit)` of a monthly map for `key` and for `*` (any).
fn monthly_limits<'a>(
    limits: &'a BTreeMap<String, i64>,
    key: &'a str,
) -> impl Iterator<Item = (&'a str, i64)> + 'a {
    [key, "*"]
        .into_iter()
        .filter_map(move |k| limits.get(k).map(|&l| (k, l)))
}

/// Whether the tenant (or an ancestor) has used up a monthly token limit of
/// the tier: `Err((reason, message))` naming the limit.
fn monthly_tokens(
    quotas: &Quotas,
    month_subtrees: &BTreeMap<String, MonthToDate>,
    tenant: &str,
    tier: &str,
) -> Result<(), (String, String)> {
    for q in quotas.chain(tenant)? {
        for (key, limit) in monthly_limits(&q.spec.tokens_per_month, tier) {
            let used = month_used(month_subtrees, &q.spec.tenant, |u| &u.tokens, key);
            if used >= limit {
                return Err((
                    "MonthlyTokensExceeded".into(),
                    format!(
                        "tenant {:?} used {used} tokens this month, reaching spec.tokensPerMonth[{key}]={limit} of TenantQuota {}; raise the limit or wait for next month",
                        q.spec.tenant, q.name
                    ),
                ));
            }
        }
    }
    Ok(())
}

/// Why the tenant (or an ancestor) may not use `model` any more this month
/// (its GPU-hour limit for the model or for `*` is used up).
fn monthly_gpu_hours(
    month_subtrees: &BTreeMap<String, MonthToDate>,
    chain: &[&QuotaView],
    model: &str,
) -> Option<String> {
    for q in chain {
        for (key, limit) in monthly_limits(&q.spec.gpu_hours_per_month, model) {
            let used = month_used(month_subtrees, &q.spec.tenant, |u| &u.milli_gpu_s, key);
            if used >= limit.saturating_mul(MILLI_GPU_S_PER_GPU_HOUR) {
                return Some(format!(
                    "tenant {:?} used {:.2} GPU-hours{} this month, reaching spec.gpuHoursPerMonth[{key}]={limit} of TenantQuota {}; raise the limit or wait for next month",
                    q.spec.tenant,
                    used as f64 / MILLI_GPU_S_PER_GPU_HOUR as f64,
                    if key == "*" { String::new() } else { format!(" of {key}") },
                    q.name
                ));
            }
        }
    }
    None
}

/// Models the tenant may still take `milli` more of, or why none.
fn quota_models(
    quotas: &Quotas,
    usage: &Usage,
    month_subtrees: &BTreeMap<String, MonthToDate>,
    tenant: &str,
    candidates: &[String],
    milli: u64,
) -> Result<Vec<String>, (String, String)> {
    let chain = quotas.chain(tenant)?;
    let mut first_refusal = None;
    let mut monthly_refusal = None;
    let mut ok = Vec::new();
    'model: for m in candidates {
        if let Some(why) = monthly_gpu_hours(month_subtrees, &chain, m) {
            monthly_refusal.get_or_insert(why);
            continue 'model;
        }
        for (level, q) in chain.iter().enumerate() {
            let s = &q.spec;
            if level == 0 && !s.borrowable && s.guaranteed_gpus > 0 {
                let used = usage.total(tenant);
                if used + milli > s.guaranteed_gpus as u64 * 1000 {
                    first_refusal.get_or_insert(format!(
                        "tenant {tenant:?} may not borrow (spec.borrowable=false): {} + {} milli-GPU exceeds spec.guaranteedGpus {}",
                        used, milli, s.guaranteed_gpus
                    ));
                    continue 'model;
                }
            }
            if s.gpus.is_empty() {
                continue;
            }
            let checks = [
                (s.gpus.get(m.as_str()), Some(m.as_str())),
                (s.gpus.get("*"), None),
            ];
            if checks.iter().all(|(lim, _)| lim.is_none()) {
                first_refusal.get_or_insert(format!(
                    "TenantQuota {} (tenant {:?}) has no limit for model {m} in spec.gpus",
                    q.name, s.tenant
                ));
                continue 'model;
            }
            for (limit, model) in checks {
                let Some(limit) = limit else { continue };
                let used = subtree(quotas, usage, &s.tenant, model);
                let cap = (*limit).max(0) as u64 * 1000;
                if used + milli > cap {
                    first_refusal.get_or_insert(format!(
                        "tenant {:?} would use {} of spec.gpus[{}]={} GPUs ({} milli in use, {} requested)",
                        s.tenant,
                        (used + milli) as f64 / 1000.0,
                        model.unwrap_or("*"),
                        limit,
                        used,
                        milli
                    ));
                    continue 'model;
                }
            }
        }
        ok.push(m.clone());
    }
    if ok.is_empty() {
        Err(match (first_refusal, monthly_refusal) {
            (Some(why), _) => ("QuotaExceeded".into(), why),
            (None, Some(why)) => ("MonthlyGpuHoursExceeded".into(), why),
            (None, None) => (
                "QuotaExceeded".into(),
                "no GPU model is allowed by the job and the cluster".into(),
            ),
        })
    } else {
        Ok(ok)
    }
}

/// The region planner's field names → the workload's.
fn workload_field(field: &str) -> &str {
    match field {
        "residency" => "spec.regions.residency",
        "user_region" => "spec.userRegion",
        "latency_slo_ms" => "spec.latencySloMs",
        "gpu_models" => "spec.gpuModels",
        "replicas" => "spec.replicas",
        "gpus_per_replica" => "spec.gpusPerReplica",
        "gpu_milli" => "spec.gpuMilli",
        "max_runtime_s" => "spec.maxRuntimeSeconds",
        "tenant" => "spec.tenant",
        _ => "spec",
    }
}

/// Records in the explanation which ranked regions were tried: every one
/// before `chosen` was full; `chosen` (if any) is where the gang went.
fn mark_tried(
    expl: &mut Explanation,
    rc: &super::regions::RegionCatalog,
    tried: &[&String],
    chosen: Option<&str>,
    cap: &Capacity,
    region_nodes: &BTreeMap<String, Vec<u32>>,
) {
    let cluster = cap.engine.cluster();
    for name in tried {
        let Some(r) = rc.catalog.region_index(name) else {
            continue;
        };
        let rank = match expl.candidates[r].verdict {
            Verdict::Ranked { rank } => rank,
            _ => continue,
        };
        if chosen == Some(name.as_str()) {
            expl.candidates[r].verdict = Verdict::Chosen { rank };
            expl.chosen = Some(r as u16);
            return;
        }
        let free_milli = region_nodes.get(*name).map_or(0, |nodes| {
            nodes
                .iter()
                .map(|&i| {
                    (cap.nodes[i as usize].gpus as u64 * 1000)
                        .saturating_sub(cluster.node_gpu_milli_allocated(i) as u64)
                })
                .sum()
        });
        expl.candidates[r].verdict = Verdict::Full { rank, free_milli };
    }
}

/// Computes everything the leader should do for this snapshot.
pub fn plan(snapshot: &Snapshot, config: &PlanConfig) -> Plan {
    let now = snapshot.now;
    let mut out = Plan::default();
    let (mut cap, _warnings) = Capacity::new(snapshot, config);
    // With ComputeRegions, a node's region is the one whose members hold it
    // (`region_catalog` gives each node to one region at most).
    let regions_crs = region_catalog(&snapshot.regions, &snapshot.nodes, config.region_scoring);
    if let Some(rc) = &regions_crs {
        for n in cap.nodes.iter_mut() {
            n.region.clear();
        }
        for (r, members) in rc.members.iter().enumerate() {
            for &m in members {
                if let Some(&ci) = cap.index.get(&snapshot.nodes[m].name) {
                    cap.nodes[ci as usize].region = rc.catalog.regions[r].name.clone();
                }
            }
        }
    }
    // Schedulable nodes (engine indices) of each region.
    let mut region_nodes: BTreeMap<String, Vec<u32>> = BTreeMap::new();
    match &regions_crs {
        Some(rc) => {
            for (r, members) in rc.members.iter().enumerate() {
                let list: Vec<u32> = members
                    .iter()
                    .filter_map(|&m| cap.index.get(&snapshot.nodes[m].name).copied())
                    .filter(|&ci| cap.nodes[ci as usize].schedulable)
                    .collect();
                region_nodes.insert(rc.catalog.regions[r].name.clone(), list);
            }
        }
        None => {
            for (i, n) in cap.nodes.iter().enumerate() {
                let list = region_nodes.entry(n.region.clone()).or_default();
                if n.schedulable {
                    list.push(i as u32);
                }
            }
        }
    }
    let pods = pods_by_owner(&snapshot.pods);
    let no_pods = Vec::new();

    // 1. Capacity held by admitted/running workloads and by other live pods.
    let is_active = |w: &WorkloadView| {
        matches!(w.phase(), "Admitted" | "Running") && w.status.placement.is_some()
    };
    let mut active_decisions: BTreeMap<&WorkloadKey, Vec<Decision>> = BTreeMap::new();
    for w in snapshot.workloads.iter().filter(|w| is_active(w)) {
        let ds = cap.decisions_of(w);
        for d in &ds {
            let _ = cap.engine.allocate(d);
        }
        active_decisions.insert(&w.key, ds);
    }
    let active_keys: BTreeSet<&WorkloadKey> = active_decisions.keys().copied().collect();
    for p in &snapshot.pods {
        let owned_by_active = p.owner.as_ref().is_some_and(|o| active_keys.contains(o));
        if owned_by_active || p.terminal() {
            continue;
        }
        if let Some(node) = &p.node {
            if let Some(d) = cap.decision(node, &p.devices, p.milli, p.cpu_milli, p.memory_mib) {
                let _ = cap.engine.allocate(&d);
            }
        }
    }
    for (i, n) in cap.nodes.iter().enumerate() {
        for &dev in &n.unhealthy {
            let _ = cap.engine.set_device_health(i as u32, dev as usize, false);
        }
    }

    // Usage per tenant and model, from active workloads.
    let mut usage = Usage::default();
    let node_model: BTreeMap<&str, &str> = snapshot
        .nodes
        .iter()
        .map(|n| (n.name.as_str(), n.model.as_str()))
        .collect();
    let model_of_node = |name: &str| node_model.get(name).copied().unwrap_or_default();
    for w in snapshot.workloads.iter().filter(|w| is_active(w)) {
        for r in &w.status.placement.as_ref().unwrap().replicas {
            usage.add(&w.tenant, model_of_node(&r.node), w.milli_per_replica());
        }
    }

    // 2. Lifecycle.
    let mut queue: Vec<&WorkloadView> = Vec::new();
    for w in &snapshot.workloads {
        let own_pods = pods.get(&w.key).unwrap_or(&no_pods);
        // Pods seen plus the placement's names: the pod store may lag a launch.
        let mut live_pods: BTreeSet<String> = own_pods
            .iter()
            .filter(|p| !p.deleting)
            .map(|p| p.name.clone())
            .collect();
        if let Some(p) = &w.status.placement {
            live_pods.extend(p.replicas.iter().map(|r| r.pod.clone()));
        }
        let live_pods: Vec<String> = live_pods.into_iter().collect();
        // The workload reconciler (`reconcile.rs`) puts the finalizer on and
        // cleans up deleted workloads; pods are only ever created for a
        // workload whose deletion will wait for their cleanup.
        if w.deleting || !w.has_finalizer {
            continue;
        }
        if !w.errors.is_empty() {
            let status = pending_status(w, "Pending", "InvalidSpec", describe(&w.errors), now);
            *out.pending.entry("InvalidSpec".into()).or_default() += 1;
            if status != w.status {
                out.actions.push(Action::SetStatus {
                    key: w.key.clone(),
                    status,
                });
            }
            continue;
        }
        match w.phase() {
            "Succeeded" | "Failed" => continue,
            "Pending" | "Preempted" => queue.push(w),
            "Admitted" | "Running" if w.status.placement.is_none() => queue.push(w),
            phase => {
                // What follows from the pods alone (completion, failure,
                // runtime, a broken gang) is the reconciler's
                // ([`pod_lifecycle`]); what needs the cluster is here.
                let placement = w.status.placement.as_ref().unwrap();
                let nodes_ok = placement
                    .replicas
                    .iter()
                    .all(|r| node_model.contains_key(r.node.as_str()));
                if !nodes_ok {
                    let message =
                        "a node of the placement is gone; the gang was rolled back and requeued";
                    out.actions.push(Action::Stop {
                        key: w.key.clone(),
                        pods: live_pods,
                        region: placement.region.clone(),
                        status: pending_status(w, "Pending", "NodeLost", message.into(), now),
                    });
                } else if phase == "Admitted" {
                    // A launch that a (previous) leader did not finish: resume it.
                    out.actions.push(Action::Launch {
                        key: w.key.clone(),
                        tenant: w.tenant.clone(),
                        status: w.status.clone(),
                        write_status: false,
                    });
                }
            }
        }
    }

    // 3. Admission in fair-share order.
    let quotas = Quotas::new(&snapshot.quotas);
    let month_use = month_subtrees(&quotas, &snapshot.month_use);
    let known: Vec<String> = snapshot.known_models().into_iter().collect();
    let guarantee = |t: &str| {
        quotas
            .by_tenant
            .get(t)
            .map(|q| q.spec.guaranteed_gpus.max(1) as u64 * 1000)
            .unwrap_or(1000)
    };
    let regions: Vec<String> = region_nodes.keys().cloned().collect();
    let cap_vendors: Vec<String> = cap.nodes.iter().map(|n| n.vendor.clone()).collect();
    let mut chooser = RegionChooser::new(config.region_policy);
    let mut region_expl = Explanation::default();
    let mut order: Vec<u16> = Vec::new();
    let mut preempted_this_pass = false;
    let mut reserved_for: BTreeSet<&WorkloadKey> = BTreeSet::new();
    // Order: highest priority, then the tenant with the smallest share of its
    // guarantee, then oldest. A tenant's jobs of one priority keep age order,
    // so only the heads of the per-(priority, tenant) lanes compete: a pick
    // costs O(tenants), not O(queue).
    let mut lanes: BTreeMap<std::cmp::Reverse<i32>, BTreeMap<&str, VecDeque<&WorkloadView>>> =
        BTreeMap::new();
    queue.sort_by(|x, y| x.created.cmp(&y.created).then_with(|| x.key.cmp(&y.key)));
    for w in queue {
        lanes
            .entry(std::cmp::Reverse(w.priority))
            .or_default()
            .entry(w.tenant.as_str())
            .or_default()
            .push_back(w);
    }
    while let Some(mut top) = lanes.first_entry() {
        let tenants = top.get_mut();
        let tenant = *tenants
            .iter()
            .min_by(|(tx, qx), (ty, qy)| {
                let sx = usage.total(tx) as u128 * guarantee(ty) as u128;
                let sy = usage.total(ty) as u128 * guarantee(tx) as u128;
                let (x, y) = (qx[0], qy[0]);
                sx.cmp(&sy)
                    .then(x.created.cmp(&y.created))
                    .then_with(|| x.key.cmp(&y.key))
            })
            .map(|(t, _)| t)
            .expect("lanes are never empty");
        let lane = tenants.get_mut(tenant).expect("picked from the map");
        let w = lane.pop_front().expect("lanes are never empty");
        if lane.is_empty() {
            tenants.remove(tenant);
        }
        if tenants.is_empty() {
            top.remove();
        }
        let pend = |reason: &str, message: String, out: &mut Plan| {
            *out.pending.entry(reason.to_string()).or_default() += 1;
            let phase = if w.phase() == "Preempted" {
                "Preempted"
            } else {
                "Pending"
            };
            let status = pending_status(w, phase, reason, message, now);
            if status != w.status {
                out.actions.push(Action::SetStatus {
                    key: w.key.clone(),
                    status,
                });
            }
        };
        let candidates: Vec<String> = known
            .iter()
            .filter(|m| w.models.is_empty() || w.models.contains(m))
            .filter(|m| {
                w.vendor.as_ref().is_none_or(|v| {
                    snapshot
                        .nodes
                        .iter()
                        .any(|n| &n.model == *m && &n.vendor == v)
                })
            })
            .cloned()
            .collect();
        if let Some(tier) = &w.token_tier {
            if let Err((reason, message)) = monthly_tokens(&quotas, &month_use, &w.tenant, tier) {
                pend(&reason, message, &mut out);
                continue;
            }
        }
        let models = match quota_models(
            &quotas,
            &usage,
            &month_use,
            &w.tenant,
            &candidates,
            w.total_milli(),
        ) {
            Ok(m) => m,
            Err((reason, message)) => {
                pend(&reason, message, &mut out);
                continue;
            }
        };
        let mut set = ModelSet::NONE;
        for m in &models {
            if let Some(id) = cap.engine.cluster().models().id(m) {
                set = set.with(id);
            }
        }
        let one = match w.gpu_milli {
            Some(m) => Request::shared(w.cpu_milli, w.memory_mib, m),
            None => Request::whole(w.cpu_milli, w.memory_mib, w.gpus_per_replica),
        }
        .with_models(set);
        let members = vec![one; w.replicas as usize];
        // A region's candidate nodes: borrowed unless the job names a vendor
        // (region order by fit and placement both ask, for every queued job).
        let nodes_in = |region: &str| -> Cow<'_, [u32]> {
            let all = region_nodes.get(region).map_or(&[][..], Vec::as_slice);
            match &w.vendor {
                None => Cow::Borrowed(all),
                Some(v) => Cow::Owned(
                    all.iter()
                        .copied()
                        .filter(|&i| &cap_vendors[i as usize] == v)
                        .collect(),
                ),
            }
        };
        // Candidate regions in the order to try: the region planner's ranking
        // (ComputeRegions) or the sorted region labels; preferred ones first.
        let ranked: Vec<&String> = match &regions_crs {
            None => regions
                .iter()
                .filter(|x| w.residency.is_empty() || w.residency.contains(x))
                .collect(),
            Some(rc) => {
                let in_catalog: Vec<String> = models
                    .iter()
                    .filter(|m| rc.catalog.accelerators.iter().any(|a| &a.model == *m))
                    .cloned()
                    .collect();
                if in_catalog.is_empty() {
                    pend(
                        "Unschedulable",
                        format!(
                            "no usable ComputeRegion has nodes of the GPU models this job may use ({})",
                            models.join(", ")
                        ),
                        &mut out,
                    );
                    continue;
                }
                // Name models only when the job or its quota restricts them.
                let restrict = if in_catalog.len() == rc.catalog.accelerators.len() {
                    Vec::new()
                } else {
                    in_catalog
                };
                let job = match job_spec(w, &restrict).resolve(&rc.catalog) {
                    Ok(job) => job,
                    Err(e) => {
                        pend(
                            "Unschedulable",
                            format!(
                                "{}: {} (regions are the ComputeRegions: {})",
                                workload_field(e.field),
                                e.message,
                                regions.join(", ")
                            ),
                            &mut out,
                        );
                        continue;
                    }
                };
                chooser.rank(
                    &rc.catalog,
                    &rc.inventory,
                    &w.tenant,
                    &job,
                    now,
                    &crate::regions::plan::NoQuota,
                    &mut region_expl,
                    &mut order,
                );
                // Regions equally good on score are tried best fit first.
                order_band_by_fit(&mut region_expl, &mut order, |r| {
                    let nodes = nodes_in(&rc.catalog.regions[r as usize].name);
                    cap.engine.best(&members[0], Some(&nodes)).map(|(s, _)| s)
                });
                order
                    .iter()
                    .map(|&r| &rc.catalog.regions[r as usize].name)
                    .collect()
            }
        };
        let allowed: Vec<&String> = {
            let mut r: Vec<&String> = w
                .preferred
                .iter()
                .filter_map(|p| ranked.iter().find(|x| **x == p).copied())
                .collect();
            r.extend(ranked.iter().filter(|x| !w.preferred.contains(x)));
            r
        };
        let why_region = |out_of: &Explanation| match &regions_crs {
            Some(rc) => format!(" Region choice: {}", out_of.summary(&rc.catalog)),
            None => String::new(),
        };
        if allowed.is_empty() {
            let message = match &regions_crs {
                Some(rc) => region_expl.summary(&rc.catalog),
                None => format!(
                    "no region satisfies spec.regions.residency {:?}",
                    w.residency
                ),
            };
            pend("Unschedulable", message, &mut out);
            continue;
        }
        let try_place = |cap: &mut Capacity| -> Result<(String, Vec<Decision>), Vec<String>> {
            let mut why = Vec::new();
            for region in &allowed {
                let nodes = nodes_in(region);
                match cap.engine.place_gang(&members, Some(&nodes)) {
                    Ok(ds) => return Ok((region.to_string(), ds)),
                    Err(e) => why.push(format!("region {:?}: {e}", region.as_str())),
                }
            }
            Err(why)
        };
        let placed = try_place(&mut cap);
        if let Some(rc) = &regions_crs {
            let chosen = placed.as_ref().ok().map(|(r, _)| r.as_str());
            mark_tried(&mut region_expl, rc, &allowed, chosen, &cap, &region_nodes);
        }
        let why_here = why_region(&region_expl);
        match placed {
            Ok((region, ds)) => {
                let replicas = ds
                    .iter()
                    .enumerate()
                    .map(|(i, d)| ReplicaPlacement {
                        pod: w.key.pod_name(i as u32),
                        node: cap.engine.cluster().name(d.node).to_string(),
                        devices: d.devices.iter().map(|x| x as u32).collect(),
                        gpu_milli: w.gpu_milli.map(u32::from),
                    })
                    .collect::<Vec<_>>();
                for r in &replicas {
                    usage.add(&w.tenant, model_of_node(&r.node), w.milli_per_replica());
                }
                let mut s = w.status.clone();
                s.phase = Some("Admitted".into());
                s.reason = Some("Scheduled".into());
                s.started_at = None;
                s.observed_generation = Some(w.generation);
                let nodes: BTreeSet<&str> = replicas.iter().map(|r| r.node.as_str()).collect();
                let message = format!(
                    "{} replicas placed in region {region:?} on {} node(s): {}.{why_here}",
                    replicas.len(),
                    nodes.len(),
                    nodes.into_iter().collect::<Vec<_>>().join(", ")
                );
                s.placement = Some(Placement {
                    region: Some(region),
                    replicas,
                });
                set_condition(
                    &mut s,
                    "Valid",
                    true,
                    "Valid",
                    "spec is valid".into(),
                    now,
                    w.generation,
                );
                set_condition(
                    &mut s,
                    "Scheduled",
                    true,
                    "Scheduled",
                    message,
                    now,
                    w.generation,
                );
                out.decisions += w.replicas as u64;
                out.admitted.push((w.key.clone(), (now - w.created).max(0)));
                out.actions.push(Action::Launch {
                    key: w.key.clone(),
                    tenant: w.tenant.clone(),
                    status: s,
                    write_status: true,
                });
            }
            Err(why) => {
                let explanation = format!(
                    "the gang of {} fits in no allowed region: {}.{why_here}",
                    w.replicas,
                    why.join("; ")
                );
                if preempted_this_pass {
                    pend("Unschedulable", explanation, &mut out);
                    continue;
                }
                // Bounded preemption: strictly lower priority only, lowest and newest first.
                let mut victims: Vec<&WorkloadView> = snapshot
                    .workloads
                    .iter()
                    .filter(|v| active_decisions.contains_key(&v.key) && v.priority < w.priority)
                    .filter(|v| !reserved_for.contains(&v.key))
                    .collect();
                victims.sort_by(|a, b| a.priority.cmp(&b.priority).then(b.created.cmp(&a.created)));
                victims.truncate(config.max_victims);
                let mut taken = Vec::new();
                let mut placed = None;
                for v in victims {
                    for d in &active_decisions[&v.key] {
                        let _ = cap.engine.release(d);
                    }
                    taken.push(v);
                    if let Ok(p) = try_place(&mut cap) {
                        placed = Some(p);
                        break;
                    }
                }
                match placed {
                    Some(_) => {
                        // The freed capacity stays reserved (allocated) for this
                        // job; it launches next pass once the victims' pods are gone.
                        preempted_this_pass = true;
                        let names: Vec<String> = taken.iter().map(|v| v.key.to_string()).collect();
                        for v in &taken {
                            reserved_for.insert(&v.key);
                            let msg = format!(
                                "preempted by {} (priority {} > {})",
                                w.key, w.priority, v.priority
                            );
                            let mut s = pending_status(v, "Preempted", "Preempted", msg, now);
                            s.phase = Some("Preempted".into());
                            let mut pods: BTreeSet<String> = pods
                                .get(&v.key)
                                .unwrap_or(&no_pods)
                                .iter()
                                .map(|p| p.name.clone())
                                .collect();
                            if let Some(p) = &v.status.placement {
                                pods.extend(p.replicas.iter().map(|r| r.pod.clone()));
                            }
                            let pods = pods.into_iter().collect();
                            out.actions.push(Action::Stop {
                                key: v.key.clone(),
                                pods,
                                region: v.status.placement.as_ref().and_then(|p| p.region.clone()),
                                status: s,
                            });
                            out.preemptions += 1;
                        }
                        pend(
                            "Preempting",
                            format!(
                                "evicting lower-priority {}: {explanation}",
                                names.join(", ")
                            ),
                            &mut out,
                        );
                    }
                    None => {
                        for v in &taken {
                            for d in &active_decisions[&v.key] {
                                let _ = cap.engine.allocate(d);
                            }
                        }
                        pend("Unschedulable", explanation, &mut out);
                    }
                }
            }
        }
    }

    // 4. Quota status and capacity figures.
    for q in &snapshot.quotas {
        let mut s = TenantQuotaStatus {
            used_milli_gpus: subtree(&quotas, &usage, &q.spec.tenant, None) as i64,
            admitted_workloads: snapshot
                .workloads
                .iter()
                .filter(|w| w.tenant == q.spec.tenant && is_active(w))
                .count() as i64,
            conditions: Vec::new(),
        };
        let why = quotas.invalid.get(&q.spec.tenant);
        s.conditions.push(Condition {
            type_: "Valid".into(),
            status: if why.is_some() { "False" } else { "True" }.into(),
            reason: if why.is_some() {
                "InvalidQuota"
            } else {
                "Valid"
            }
            .into(),
            message: why.cloned().unwrap_or_else(|| "quota is valid".into()),
            last_transition_time: None,
            observed_generation: None,
        });
        if s != q.status {
            out.actions.push(Action::QuotaStatus {
                name: q.name.clone(),
                status: s,
            });
        }
    }
    // One walk over the nodes: per-node allocation, and per region its
    // (nodes, GPUs, allocated milli-GPU) for both the metrics and the status.
    let cluster = cap.engine.cluster();
    let mut regions_fig: BTreeMap<String, (i64, u64, u64)> = BTreeMap::new();
    for (i, n) in cap.nodes.iter().enumerate() {
        let milli = cluster.node_gpu_milli_allocated(i as u32) as u64;
        out.nodes.push((n.region.clone(), n.name.clone(), milli));
        let e = regions_fig.entry(n.region.clone()).or_default();
        e.0 += 1;
        e.1 += n.gpus as u64;
        e.2 += milli;
    }
    if let Some(rc) = &regions_crs {
        for rv in &snapshot.regions {
            let excluded = rc.excluded.get(&rv.name);
            let (nodes, gpus, milli) = match excluded {
                Some(_) => (0, 0, 0),
                None => regions_fig.get(&rv.name).copied().unwrap_or_default(),
            };
            let status = region_status(&rv.status, now, nodes, gpus as i64, milli, excluded);
            if status != rv.status {
                out.actions.push(Action::RegionStatus {
                    name: rv.name.clone(),
                    status,
                });
            }
        }
    }
    out.regions = regions_fig
        .into_iter()
        .map(|(r, (_, g, m))| (r, g, m))
        .collect();
    out
}

/// What a Running workload's own pods imply (the workload reconciler's
/// part of the lifecycle; pure): every pod Succeeded → Succeeded; a pod
/// Failed → stop, Failed; past `maxRuntimeSeconds` → stop, Failed; pods
/// missing `gang_grace_s` after the start → stop, requeued (Pending).
/// Also returns when to look again (unix seconds) if nothing changes: the
/// runtime limit or the end of the grace period.
pub fn pod_lifecycle(
    w: &WorkloadView,
    own_pods: &[&PodView],
    now: i64,
    config: &PlanConfig,
) -> (Option<Action>, Option<i64>) {
    let Some(placement) = w
        .status
        .placement
        .as_ref()
        .filter(|_| w.phase() == "Running")
    else {
        return (None, None);
    };
    let started = w.status.started_at.as_deref().and_then(parse_rfc3339);
    let by_name: BTreeMap<&str, &PodView> =
        own_pods.iter().map(|p| (p.name.as_str(), *p)).collect();
    let expected: Vec<&str> = placement.replicas.iter().map(|r| r.pod.as_str()).collect();
    let failed = expected
        .iter()
        .any(|p| by_name.get(p).is_some_and(|p| p.phase == "Failed"));
    let succeeded = !expected.is_empty()
        && expected
            .iter()
            .all(|p| by_name.get(p).is_some_and(|p| p.phase == "Succeeded"));
    let missing = expected
        .iter()
        .filter(|p| !by_name.contains_key(**p))
        .count();
    let mut live: BTreeSet<String> = own_pods
        .iter()
        .filter(|p| !p.deleting)
        .map(|p| p.name.clone())
        .collect();
    live.extend(expected.iter().map(|p| p.to_string()));
    let stop = |phase: &str, reason: &str, message: String| {
        let mut s = pending_status(w, phase, reason, message.clone(), now);
        if phase == "Failed" {
            set_condition(
                &mut s,
                "Scheduled",
                true,
                reason,
                message,
                now,
                w.generation,
            );
        }
        Action::Stop {
            key: w.key.clone(),
            pods: live.iter().cloned().collect(),
            region: placement.region.clone(),
            status: s,
        }
    };
    if succeeded {
        let mut s = w.status.clone();
        s.phase = Some("Succeeded".into());
        s.reason = Some("Completed".into());
        let action = Action::SetStatus {
            key: w.key.clone(),
            status: s,
        };
        return (Some(action), None);
    }
    if failed {
        let message = "a replica's pod failed; the gang is stopped".into();
        return (Some(stop("Failed", "PodFailed", message)), None);
    }
    let deadline = w.max_runtime_s.zip(started).map(|(max, t0)| t0 + max);
    if let (Some(max), Some(t0), Some(end)) = (w.max_runtime_s, started, deadline) {
        if now >= end {
            let message = format!("ran {}s, spec.maxRuntimeSeconds is {max}", now - t0);
            return (Some(stop("Failed", "MaxRuntimeExceeded", message)), None);
        }
    }
    let mut recheck = deadline;
    if missing > 0 {
        let grace_end = started.map(|t0| t0 + config.gang_grace_s);
        if grace_end.is_some_and(|g| now >= g) {
            let message = format!(
                "{missing} of {} pods disappeared; the gang was rolled back and requeued",
                expected.len()
            );
            return (Some(stop("Pending", "GangBroken", message)), None);
        }
        recheck = match (recheck, grace_end) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        };
    }
    (None, recheck)
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::operator::crd::TenantQuotaSpec;
    use crate::operator::snapshot::Kind;

    fn node(name: &str, region: &str, gpus: u8) -> NodeView {
        NodeView {
            name: name.into(),
            region: region.into(),
            model: "H100".into(),
            vendor: "nvidia".into(),
            gpus,
            unhealthy: Vec::new(),
            cpu_milli: 64_000,
            memory_mib: 512 * 1024,
            labels: Vec::new(),
            schedulable: true,
        }
    }

    pub(crate) fn workload(
        name: &str,
        tenant: &str,
        replicas: u32,
        gpus: u8,
        priority: i32,
        created: i64,
    ) -> WorkloadView {
        WorkloadView {
            key: WorkloadKey {
                kind: Kind::Training,
                namespace: "ml".into(),
                name: name.into(),
            },
            uid: format!("uid-{name}"),
            generation: 1,
            created,
            tenant: tenant.into(),
            replicas,
            gpus_per_replica: gpus,
            gpu_milli: None,
            models: Vec::new(),
            vendor: None,
            priority,
            residency: Vec::new(),
            preferred: Vec::new(),
            max_runtime_s: None,
            latency_slo_ms: None,
            user_region: None,
            token_tier: None,
            cpu_milli: 1000,
            memory_mib: 1024,
            status: WorkloadStatus::default(),
            deleting: false,
            has_finalizer: true,
            errors: Vec::new(),
        }
    }

    fn quota(
        tenant: &str,
        parent: Option<&str>,
        gpus: &[(&str, i64)],
        guaranteed: i64,
    ) -> QuotaView {
        QuotaView {
            name: tenant.into(),
            spec: TenantQuotaSpec {
                tenant: tenant.into(),
                parent: parent.map(str::to_string),
                gpus: gpus.iter().map(|(k, v)| (k.to_string(), *v)).collect(),
                guaranteed_gpus: guaranteed,
                borrowable: true,
                ..Default::default()
            },
            status: Default::default(),
            errors: Vec::new(),
        }
    }

    fn launches(p: &Plan) -> Vec<(&str, &WorkloadStatus)> {
        p.actions
            .iter()
            .filter_map(|a| match a {
                Action::Launch { key, status, .. } => Some((key.name.as_str(), status)),
                _ => None,
            })
            .collect()
    }

    /// Marks a planned launch as running (what the controller would write).
    fn run_it(w: &mut WorkloadView, status: &WorkloadStatus) {
        w.status = status.clone();
        w.status.phase = Some("Running".into());
        w.status.started_at = Some(rfc3339(0));
    }

    #[test]
    fn a_gang_is_placed_whole_inside_one_region_or_not_at_all() {
        let snap = Snapshot {
            now: 100,
            nodes: vec![
                node("e1", "east", 8),
                node("w1", "west", 8),
                node("w2", "west", 8),
            ],
            workloads: vec![
                workload("g", "t", 3, 8, 0, 1),
                workload("h", "t", 2, 8, 0, 2),
            ],
            quotas: vec![quota("t", None, &[], 0)],
            ..Default::default()
        };
        let p = plan(&snap, &PlanConfig::default());
        let l = launches(&p);
        // "g" needs 3 whole nodes: no region has 3, so it waits; "h" takes the west.
        assert_eq!(l.len(), 1);
        assert_eq!(l[0].0, "h");
        let placement = l[0].1.placement.as_ref().unwrap();
        assert_eq!(placement.region.as_deref(), Some("west"));
        let nodes: BTreeSet<&str> = placement.replicas.iter().map(|r| r.node.as_str()).collect();
        assert_eq!(nodes, BTreeSet::from(["w1", "w2"]));
        assert_eq!(p.pending.get("Unschedulable"), Some(&1));
        assert_eq!(p.decisions, 2);
    }

    #[test]
    fn unhealthy_devices_are_never_given_out() {
        let mut n = node("n", "r", 4);
        n.unhealthy = vec![0, 2];
        let snap = Snapshot {
            nodes: vec![n],
            workloads: vec![
                workload("a", "t", 1, 2, 0, 1),
                workload("b", "t", 1, 1, 0, 2),
            ],
            quotas: vec![quota("t", None, &[], 0)],
            ..Default::default()
        };
        let p = plan(&snap, &PlanConfig::default());
        let l = launches(&p);
        assert_eq!(l.len(), 1, "only two healthy devices exist");
        assert_eq!(
            l[0].1.placement.as_ref().unwrap().replicas[0].devices,
            vec![1, 3]
        );
    }

    #[test]
    fn running_placements_hold_their_devices_and_a_half_launch_resumes() {
        let mut snap = Snapshot {
            nodes: vec![node("n", "r", 8)],
            workloads: vec![workload("a", "t", 1, 6, 0, 1)],
            quotas: vec![quota("t", None, &[], 0)],
            ..Default::default()
        };
        let p = plan(&snap, &PlanConfig::default());
        let status = launches(&p)[0].1.clone();
        // A leader died after writing Admitted: the next pass resumes, not replans.
        snap.workloads[0].status = status.clone();
        snap.workloads.push(workload("b", "t", 1, 4, 0, 2));
        let p = plan(&snap, &PlanConfig::default());
        assert!(p.actions.iter().any(
            |a| matches!(a, Action::Launch { key, write_status: false, .. } if key.name == "a")
        ));
        assert!(
            launches(&p).iter().all(|(n, _)| *n != "b"),
            "b would overlap a's devices"
        );
        assert_eq!(p.pending.get("Unschedulable"), Some(&1));
    }

    #[test]
    fn hierarchical_quota_binds_at_the_parent() {
        let mut snap = Snapshot {
            nodes: vec![node("n1", "r", 8), node("n2", "r", 8)],
            workloads: vec![
                workload("a", "dept", 1, 8, 0, 1),
                workload("b", "dept", 1, 8, 0, 2),
            ],
            quotas: vec![
                quota("city", None, &[("*", 12)], 0),
                quota("dept", Some("city"), &[("H100", 16)], 0),
            ],
            ..Default::default()
        };
        let p = plan(&snap, &PlanConfig::default());
        let l = launches(&p);
        assert_eq!(l.len(), 1);
        let status = l[0].1.clone();
        let name = l[0].0.to_string();
        let refused = p.actions.iter().find_map(|a| match a {
            Action::SetStatus { status, .. } => Some(status.clone()),
            _ => None,
        });
        let refused = refused.unwrap();
        assert_eq!(refused.reason.as_deref(), Some("QuotaExceeded"));
        assert!(refused
            .conditions
            .iter()
            .any(|c| c.message.contains("spec.gpus[*]=12")));
        // Usage is counted up the tree.
        let idx = snap
            .workloads
            .iter()
            .position(|w| w.key.name == name)
            .unwrap();
        run_it(&mut snap.workloads[idx], &status);
        let p = plan(&snap, &PlanConfig::default());
        let city = p.actions.iter().find_map(|a| match a {
            Action::QuotaStatus { name, status } if name == "city" => Some(status.used_milli_gpus),
            _ => None,
        });
        assert_eq!(city, Some(8000));
    }

    #[test]
    fn quota_cycles_and_missing_quotas_block_with_reasons() {
        let snap = Snapshot {
            nodes: vec![node("n", "r", 8)],
            workloads: vec![
                workload("a", "x", 1, 1, 0, 1),
                workload("b", "nobody", 1, 1, 0, 2),
            ],
            quotas: vec![quota("x", Some("y"), &[], 0), quota("y", Some("x"), &[], 0)],
            ..Default::default()
        };
        let p = plan(&snap, &PlanConfig::default());
        assert!(launches(&p).is_empty());
        assert_eq!(p.pending.get("QuotaInvalid"), Some(&1));
        assert_eq!(p.pending.get("NoQuota"), Some(&1));
    }

    #[test]
    fn fair_share_prefers_the_tenant_furthest_below_its_guarantee() {
        let mut snap = Snapshot {
            nodes: vec![node("n1", "r", 8), node("n2", "r", 4)],
            workloads: vec![workload("big-user", "a", 1, 8, 0, 1)],
            quotas: vec![quota("a", None, &[], 4), quota("b", None, &[], 4)],
            ..Default::default()
        };
        let p = plan(&snap, &PlanConfig::default());
        let status = launches(&p)[0].1.clone();
        run_it(&mut snap.workloads[0], &status);
        // Tenant a already holds 8 GPUs; both want the last 4: b (using 0) goes first.
        snap.workloads.push(workload("a-more", "a", 1, 4, 0, 2));
        snap.workloads.push(workload("b-first", "b", 1, 4, 0, 3));
        let p = plan(&snap, &PlanConfig::default());
        let names: Vec<&str> = launches(&p).iter().map(|(n, _)| *n).collect();
        assert_eq!(names, ["b-first"]);
    }

    #[test]
    fn preemption_evicts_only_lower_priority_and_is_bounded() {
        let mut snap = Snapshot {
            nodes: vec![node("n", "r", 8)],
            workloads: vec![workload("low", "t", 1, 8, 0, 1)],
            quotas: vec![quota("t", None, &[], 0)],
            ..Default::default()
        };
        let p = plan(&snap, &PlanConfig::default());
        let status = launches(&p)[0].1.clone();
        run_it(&mut snap.workloads[0], &status);
        // Same priority: no preemption, it waits.
        snap.workloads.push(workload("peer", "t", 1, 8, 0, 2));
        let p = plan(&snap, &PlanConfig::default());
        assert_eq!(p.preemptions, 0);
        assert!(launches(&p).is_empty());
        // Higher priority: "low" is stopped as Preempted, nothing launches this pass.
        snap.workloads.push(workload("urgent", "t", 1, 8, 10, 3));
        let p = plan(&snap, &PlanConfig::default());
        assert_eq!(p.preemptions, 1);
        assert!(launches(&p).is_empty());
        let stopped: Vec<&str> = p
            .actions
            .iter()
            .filter_map(|a| match a {
                Action::Stop {
                    key,
                    status,
                    pods,
                    region,
                } => {
                    assert_eq!(status.phase.as_deref(), Some("Preempted"));
                    assert_eq!(pods, &vec!["low-0".to_string()]);
                    // Its pods are deleted in the cluster of its region only.
                    assert_eq!(region.as_deref(), Some("r"));
                    Some(key.name.as_str())
                }
                _ => None,
            })
            .collect();
        assert_eq!(stopped, ["low"]);
        assert_eq!(p.pending.get("Preempting"), Some(&1));
        // Next pass: low is requeued (Preempted), urgent lands; low cannot evict urgent back.
        snap.workloads[0].status.phase = Some("Preempted".into());
        snap.workloads[0].status.placement = None;
        let p = plan(&snap, &PlanConfig::default());
        assert_eq!(
            launches(&p).iter().map(|(n, _)| *n).collect::<Vec<_>>(),
            ["urgent"]
        );
        let status = launches(&p)[0].1.clone();
        let i = snap
            .workloads
            .iter()
            .position(|w| w.key.name == "urgent")
            .unwrap();
        run_it(&mut snap.workloads[i], &status);
        let p = plan(&snap, &PlanConfig::default());
        assert_eq!(p.preemptions, 0, "a lower priority never preempts back");
    }

    #[test]
    fn residency_is_a_hard_filter_and_preferred_comes_first() {
        let mut w = workload("a", "t", 1, 1, 0, 1);
        w.residency = vec!["west".into(), "north".into()];
        w.preferred = vec!["north".into()];
        let mut v = workload("b", "t", 1, 1, 0, 2);
        v.residency = vec!["south".into()];
        let snap = Snapshot {
            nodes: vec![
                node("e", "east", 8),
                node("w", "west", 8),
                node("n", "north", 8),
            ],
            workloads: vec![w, v],
            quotas: vec![quota("t", None, &[], 0)],
            ..Default::default()
        };
        let p = plan(&snap, &PlanConfig::default());
        let l = launches(&p);
        assert_eq!(l.len(), 1);
        assert_eq!(
            l[0].1.placement.as_ref().unwrap().region.as_deref(),
            Some("north")
        );
        assert_eq!(p.pending.get("Unschedulable"), Some(&1));
    }

    fn used(gpu: &[(&str, i64)], tokens: &[(&str, i64)]) -> MonthToDate {
        MonthToDate {
            milli_gpu_s: gpu.iter().map(|(k, v)| (k.to_string(), *v)).collect(),
            tokens: tokens.iter().map(|(k, v)| (k.to_string(), *v)).collect(),
        }
    }

    /// Asserts that `name` did not launch and waits for `reason`, its
    /// Scheduled condition saying every one of `says`.
    fn assert_waits(p: &Plan, name: &str, reason: &str, says: &[&str]) {
        assert!(launches(p).iter().all(|l| l.0 != name));
        let status = p
            .actions
            .iter()
            .find_map(|a| match a {
                Action::SetStatus { key, status } if key.name == name => Some(status),
                _ => None,
            })
            .unwrap_or_else(|| panic!("{name} got no status"));
        assert_eq!(status.reason.as_deref(), Some(reason));
        let message = &status
            .conditions
            .iter()
            .find(|c| c.type_ == "Scheduled")
            .unwrap()
            .message;
        for s in says {
            assert!(message.contains(s), "{message:?} lacks {s:?}");
        }
    }

    #[test]
    fn a_parents_monthly_gpu_hours_count_the_whole_subtree() {
        // city may use 100 H100-hours a month; dept used 60 h, lab 40 h.
        let mut city = quota("city", None, &[], 0);
        city.spec.gpu_hours_per_month = [("H100".to_string(), 100)].into();
        let snap = |lab_milli_s: i64| Snapshot {
            nodes: vec![node("n", "r", 8)],
            workloads: vec![workload("j", "dept", 1, 1, 0, 1)],
            quotas: vec![
                city.clone(),
                quota("dept", Some("city"), &[], 0),
                quota("lab", Some("city"), &[], 0),
            ],
            month_use: [
                // 60 GPU-hours = 60 × 3,600,000 milli-GPU-seconds.
                ("dept".to_string(), used(&[("H100", 216_000_000)], &[])),
                ("lab".to_string(), used(&[("H100", lab_milli_s)], &[])),
            ]
            .into(),
            ..Default::default()
        };
        // 60 h + 40 h = 100 h: the limit is reached, the job waits.
        let p = plan(&snap(144_000_000), &PlanConfig::default());
        assert_waits(
            &p,
            "j",
            "MonthlyGpuHoursExceeded",
            &[
                "tenant \"city\" used 100.00 GPU-hours of H100",
                "spec.gpuHoursPerMonth[H100]=100",
            ],
        );
        // 60 h + 39.99 h = 99.99 h: still under, the job runs.
        let p = plan(&snap(143_964_000), &PlanConfig::default());
        assert_eq!(launches(&p).len(), 1);
    }

    #[test]
    fn a_used_up_model_leaves_the_others_and_star_limits_all() {
        let mut a100 = node("a", "r", 8);
        a100.model = "A100".into();
        let mut t = quota("t", None, &[], 0);
        t.spec.gpu_hours_per_month = [("H100".to_string(), 10)].into();
        let mut snap = Snapshot {
            nodes: vec![node("h", "r", 8), a100],
            workloads: vec![workload("j", "t", 1, 8, 0, 1)],
            quotas: vec![t],
            // 10 H100-hours used: H100 is closed for the month, A100 is not.
            month_use: [("t".to_string(), used(&[("H100", 36_000_000)], &[]))].into(),
            ..Default::default()
        };
        let p = plan(&snap, &PlanConfig::default());
        let l = launches(&p);
        assert_eq!(l.len(), 1);
        assert_eq!(l[0].1.placement.as_ref().unwrap().replicas[0].node, "a");
        // A `*` limit of 12 h counts every model: 10 h H100 + 2 h A100 = 12 h.
        snap.quotas[0].spec.gpu_hours_per_month = [("*".to_string(), 12)].into();
        snap.month_use = [(
            "t".to_string(),
            used(&[("H100", 36_000_000), ("A100", 7_200_000)], &[]),
        )]
        .into();
        let p = plan(&snap, &PlanConfig::default());
        assert_waits(
            &p,
            "j",
            "MonthlyGpuHoursExceeded",
            &[
                "used 12.00 GPU-hours this month",
                "spec.gpuHoursPerMonth[*]=12",
            ],
        );
    }

    #[test]
    fn monthly_tokens_block_new_services_of_the_tier() {
        let mut parent = quota("prov", None, &[], 0);
        parent.spec.tokens_per_month = [("basic".to_string(), 1_000_000)].into();
        let mut svc = workload("svc", "city", 1, 1, 0, 1);
        svc.key.kind = Kind::Inference;
        svc.token_tier = Some("basic".into());
        let snap = |basic: i64| Snapshot {
            nodes: vec![node("n", "r", 8)],
            workloads: vec![svc.clone(), workload("train", "city", 1, 1, 0, 2)],
            quotas: vec![parent.clone(), quota("city", Some("prov"), &[], 0)],
            // Industry tokens do not count against the basic limit.
            month_use: [(
                "city".to_string(),
                used(&[], &[("basic", basic), ("industry", 5_000_000)]),
            )]
            .into(),
            ..Default::default()
        };
        let p = plan(&snap(1_000_000), &PlanConfig::default());
        assert_waits(
            &p,
            "svc",
            "MonthlyTokensExceeded",
            &["used 1000000 tokens", "spec.tokensPerMonth[basic]=1000000"],
        );
        // The training job of the same tenant is not held back by tokens.
        assert_eq!(
            launches(&p).iter().map(|l| l.0).collect::<Vec<_>>(),
            ["train"]
        );
        let p = plan(&snap(999_999), &PlanConfig::default());
        assert_eq!(launches(&p).len(), 2);
    }

    /// A running gang of two started at t=1000, with its pods in `phases`
    /// (`None` = pod gone).
    fn running_pair(phases: [Option<&str>; 2]) -> (WorkloadView, Vec<PodView>) {
        let mut w = workload("pair", "acme", 2, 1, 0, 0);
        w.max_runtime_s = Some(500);
        w.status = WorkloadStatus {
            phase: Some("Running".into()),
            started_at: Some(rfc3339(1000)),
            placement: Some(Placement {
                region: Some("east".into()),
                replicas: (0..2)
                    .map(|i| ReplicaPlacement {
                        pod: format!("pair-{i}"),
                        node: "e1".into(),
                        devices: vec![i],
                        gpu_milli: None,
                    })
                    .collect(),
            }),
            ..Default::default()
        };
        let pods = phases
            .iter()
            .enumerate()
            .filter_map(|(i, ph)| {
                ph.map(|ph| PodView {
                    namespace: "ml".into(),
                    name: format!("pair-{i}"),
                    owner: Some(w.key.clone()),
                    node: Some("e1".into()),
                    devices: vec![i as u8],
                    milli: None,
                    cpu_milli: 1000,
                    memory_mib: 1024,
                    phase: ph.into(),
                    deleting: false,
                })
            })
            .collect();
        (w, pods)
    }

    fn lifecycle_at(
        phases: [Option<&str>; 2],
        now: i64,
    ) -> (Option<(String, String)>, Option<i64>) {
        let (w, pods) = running_pair(phases);
        let refs: Vec<&PodView> = pods.iter().collect();
        let (action, recheck) = pod_lifecycle(&w, &refs, now, &PlanConfig::default());
        let summary = action.map(|a| match a {
            Action::SetStatus { status, .. } => (
                format!("set {}", status.phase.unwrap_or_default()),
                status.reason.unwrap_or_default(),
            ),
            Action::Stop { status, pods, .. } => (
                format!(
                    "stop {} {}",
                    status.phase.unwrap_or_default(),
                    pods.join(",")
                ),
                status.reason.unwrap_or_default(),
            ),
            other => panic!("unexpected {other:?}"),
        });
        (summary, recheck)
    }

    #[test]
    fn the_pods_of_a_running_gang_decide_its_phase() {
        let s = |a: &str, b: &str| Some((a.to_string(), b.to_string()));
        // Both running: nothing to do; look again at the runtime limit.
        assert_eq!(
            lifecycle_at([Some("Running"), Some("Running")], 1100),
            (None, Some(1500))
        );
        assert_eq!(
            lifecycle_at([Some("Succeeded"), Some("Succeeded")], 1100),
            (s("set Succeeded", "Completed"), None)
        );
        // One done, one still running: not finished.
        assert_eq!(
            lifecycle_at([Some("Succeeded"), Some("Running")], 1100).0,
            None
        );
        assert_eq!(
            lifecycle_at([Some("Failed"), Some("Running")], 1100),
            (s("stop Failed pair-0,pair-1", "PodFailed"), None)
        );
        assert_eq!(
            lifecycle_at([Some("Running"), Some("Running")], 1500),
            (s("stop Failed pair-0,pair-1", "MaxRuntimeExceeded"), None)
        );
        // A vanished pod: wait out the grace (60 s after the start), then requeue.
        assert_eq!(
            lifecycle_at([Some("Running"), None], 1030),
            (None, Some(1060))
        );
        assert_eq!(
            lifecycle_at([Some("Running"), None], 1060),
            (s("stop Pending pair-0,pair-1", "GangBroken"), None)
        );
        // Only Running workloads: an Admitted one is the scheduling loop's to resume.
        let (mut w, pods) = running_pair([Some("Failed"), Some("Failed")]);
        w.status.phase = Some("Admitted".into());
        let refs: Vec<&PodView> = pods.iter().collect();
        assert_eq!(
            pod_lifecycle(&w, &refs, 1100, &PlanConfig::default()),
            (None, None)
        );
    }
}

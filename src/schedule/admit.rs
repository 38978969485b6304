//! Step 3: admission. Pending workloads are taken in fair-share order; each
//! one's quota decides the GPU models it may still use, region choice ranks
//! the regions, and the placement engine puts the whole gang into the first
//! region (in that order) that holds it. A gang that fits nowhere may preempt
//! ([`super::preempt`]).

use std::borrow::Cow;
use std::cmp::Reverse;
use std::collections::{BTreeMap, BTreeSet, VecDeque};

use super::held::Inputs;
use crate::jobs::{
    set_condition, MonthToDate, NodeView, Placement, ReplicaPlacement, Text, TopologyPlacement,
    WorkloadKey, WorkloadView,
};
use crate::placement::{Decision, DomainPlaced, Level, ModelSet, Request, TopologyAsk};
use crate::regions::explain::{Explanation, Verdict};
use crate::regions::plan::{order_band_by_fit, RegionChooser, RegionPolicy};
use crate::regions::shift::{GreenMemo, Hours, Window};

use super::infeasible::{AskKey, Infeasible, Refusal, ShapeKey};
use super::lifecycle::{already_pending, pending_status};
use super::quota::{month_subtrees, monthly_tokens, quota_models, Quotas};
use super::regions::{job_spec, RegionCatalog};
use super::spare;
use super::zones::Zones;
use super::{Action, Pass};

/// Where a gang went: its region, its replicas' decisions and, for a
/// topology-aware gang, the network domain that holds it.
pub(super) struct Placed {
    region: String,
    decisions: Vec<Decision>,
    domain: Option<DomainPlaced>,
}

/// The status words for the domain of a gang that asked for `asked`:
/// ` within rack "b1/r2"`, or why it spans more than it preferred.
fn within(asked: Level, d: &DomainPlaced) -> String {
    match d.level {
        Some(level) if level == asked => format!(" within {level} {:?}", d.domain),
        Some(level) => format!(
            " within {level} {:?} (no {asked} had room for the whole gang)",
            d.domain
        ),
        None => {
            format!(" across {asked}s (no {asked} or coarser domain had room for the whole gang)")
        }
    }
}

/// What admission keeps across the workloads of one pass.
pub(super) struct Admission<'a> {
    pub(super) quotas: Quotas<'a>,
    month_use: BTreeMap<String, MonthToDate>,
    /// Indices into the known models that each asked-for vendor may use
    /// (filled as vendors come up).
    vendor_models: Vec<(Option<String>, Vec<usize>)>,
    /// Region names (sorted).
    regions: Vec<String>,
    chooser: RegionChooser,
    expl: Explanation,
    order: Vec<u16>,
    /// The expected runtime of the job last ranked (region choice's).
    runtime_s: i64,
    /// Mean green shares time shifting looked up this pass.
    greens: GreenMemo,
    /// One preemptor per pass.
    pub(super) preempted: bool,
    /// Workloads already evicted for a preemptor this pass.
    pub(super) reserved_for: BTreeSet<&'a WorkloadKey>,
    /// Gang shapes that fitted nowhere this pass, and the regions' free GPUs.
    pub(super) infeasible: Infeasible,
    /// The lowest priority of any workload (none below it can be evicted).
    pub(super) lowest_priority: i32,
}

/// The accelerator vendor of a job that names none: a CUDA image on an NPU
/// would fail, so such a job goes to NVIDIA only.
pub const DEFAULT_VENDOR: &str = "nvidia";

/// Whether a node's accelerators suit a job's vendor: the one it names, or
/// for a job naming none [`DEFAULT_VENDOR`] (a node without a vendor label
/// counts as that).
pub fn vendor_fits(job: Option<&str>, node: &str) -> bool {
    match job {
        Some(v) => node == v,
        None => node == DEFAULT_VENDOR || node.is_empty(),
    }
}

/// The vendor a workload runs on: the one it names; else, when every model
/// it names is one vendor's (`gpuModels: [Ascend910B]`), that vendor; else
/// its tenant's default; else none, which [`vendor_fits`] reads as
/// [`DEFAULT_VENDOR`].
pub fn job_vendor<'a>(
    w: &'a WorkloadView,
    model_vendors: &'a BTreeSet<(String, String)>,
) -> Option<&'a str> {
    vendor_of(
        w.vendor.as_deref(),
        &w.models,
        w.default_vendor.as_deref(),
        model_vendors,
    )
}

/// [`job_vendor`] of a job's fields: the vendor it names, its models', its
/// tenant's default.
pub fn vendor_of<'a>(
    named: Option<&'a str>,
    models: &[String],
    default: Option<&'a str>,
    model_vendors: &'a BTreeSet<(String, String)>,
) -> Option<&'a str> {
    if let Some(v) = named {
        return Some(v);
    }
    let mut of_models = model_vendors
        .iter()
        .filter(|(m, _)| models.iter().any(|x| x == m))
        .map(|(_, v)| v.as_str());
    match of_models.next() {
        Some(first) => of_models.all(|v| v == first).then_some(first),
        None => default,
    }
}

/// Pending workloads by priority (highest first), then tenant, in age order.
type Lanes<'a> = BTreeMap<Reverse<i32>, BTreeMap<&'a str, Lane<'a>>>;

/// One tenant's waiting workloads of one priority, oldest first, with the
/// tenant's guaranteed milli-GPU (the fair share's denominator, looked up
/// once a pass, not at every pick).
struct Lane<'a> {
    guarantee: u64,
    queue: VecDeque<&'a WorkloadView>,
}

/// Who asks for nodes: a job's vendor, and its tenant's access class
/// ([`Zones`]).
#[derive(Clone, Copy)]
struct Asker<'v> {
    vendor: Option<&'v str>,
    class: u32,
}

/// A region's candidate nodes (engine indices into `nodes`) for a job: those
/// of its vendor that its tenant may use.
fn nodes_in<'n>(
    region_nodes: &'n BTreeMap<String, Vec<u32>>,
    one_vendor: &BTreeMap<String, String>,
    nodes: &[NodeView],
    zones: &Zones,
    region: &str,
    asker: Asker,
) -> Cow<'n, [u32]> {
    let all = region_nodes.get(region).map_or(&[][..], Vec::as_slice);
    let everywhere = zones.everywhere(asker.class);
    // A region of one vendor is taken or left whole, without a look at
    // each node.
    if let (true, Some(v)) = (everywhere, one_vendor.get(region)) {
        return match vendor_fits(asker.vendor, v) {
            true => Cow::Borrowed(all),
            false => Cow::Borrowed(&[]),
        };
    }
    let fits = |i: &u32| {
        vendor_fits(asker.vendor, &nodes[*i as usize].vendor)
            && (everywhere || zones.open(asker.class, *i))
    };
    if all.iter().all(fits) {
        Cow::Borrowed(all)
    } else {
        Cow::Owned(all.iter().copied().filter(fits).collect())
    }
}

/// The ways to place a gang in one region, in the order to try them: the
/// gangs (one per allowed model, or one) best fit first (`order`), each
/// first without the models waiting jobs are limited to (`rest[k]`, from
/// [`spare::elsewhere`]; empty when nothing is spared), then those that
/// may use them as asked.
fn tries<'g>(
    gangs: &'g [Vec<Request>],
    rest: &'g [Option<Vec<Request>>],
    order: &[(crate::placement::Score, usize)],
    spared: ModelSet,
) -> Vec<&'g [Request]> {
    let mut tries = Vec::with_capacity(order.len());
    for &(_, k) in order {
        match rest.get(k).and_then(Option::as_deref) {
            Some(rest) => tries.push(rest),
            None if !spare::touches(&gangs[k], spared) => tries.push(&gangs[k][..]),
            None => {}
        }
    }
    for &(_, k) in order {
        if spare::touches(&gangs[k], spared) {
            tries.push(&gangs[k][..]);
        }
    }
    tries
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

impl<'a> Pass<'a> {
    /// Step 3: admits the queue in fair-share order.
    pub(super) fn admit(&mut self, mut queue: Vec<&'a WorkloadView>) {
        // Each waiting workload may need a status: room for them once, not
        // grown (and copied) a doubling at a time.
        self.out.actions.reserve(queue.len());
        let snapshot = self.snapshot;
        let quotas = Quotas::new(&snapshot.quotas);
        let month_use = month_subtrees(&quotas, &snapshot.month_use);
        // Accelerator models the cluster has.
        let known = self.cap.known.clone();
        let mut adm = Admission {
            quotas,
            month_use,
            vendor_models: Vec::new(),
            regions: self.region_nodes.keys().cloned().collect(),
            chooser: RegionChooser::new(self.config.region_policy),
            expl: Explanation::default(),
            order: Vec::new(),
            runtime_s: 0,
            greens: GreenMemo::default(),
            preempted: false,
            reserved_for: BTreeSet::new(),
            infeasible: Infeasible::default(),
            lowest_priority: snapshot
                .workloads
                .iter()
                .map(|w| w.priority)
                .min()
                .unwrap_or(0),
        };
        // A tenant's jobs of one priority keep age order, so only the heads
        // of the per-(priority, tenant) lanes compete: a pick costs
        // O(tenants), not O(queue).
        let mut lanes: Lanes = BTreeMap::new();
        super::age::sort_by_age(&mut queue);
        let guarantee = |t: &str| {
            adm.quotas
                .by_tenant
                .get(t)
                .map(|q| crate::jobs::gpus_to_milli(q.spec.quota.guaranteed_gpus.max(1)))
                .unwrap_or(1000)
        };
        for w in queue {
            lanes
                .entry(Reverse(w.priority))
                .or_default()
                .entry(w.tenant.as_str())
                .or_insert_with(|| Lane {
                    guarantee: guarantee(&w.tenant),
                    queue: VecDeque::new(),
                })
                .queue
                .push_back(w);
        }
        while let Some(w) = self.next_fair(&mut lanes) {
            self.admit_one(w, &known, &mut adm);
        }
    }

    /// The next workload: highest priority, then the tenant with the
    /// smallest share of its guarantee, then oldest.
    fn next_fair(&self, lanes: &mut Lanes<'a>) -> Option<&'a WorkloadView> {
        let mut top = lanes.first_entry()?;
        let tenants = top.get_mut();
        let tenant = tenants
            .iter()
            .map(|(t, lane)| (*t, self.usage.total(t), lane))
            .min_by(|(_, ux, lx), (_, uy, ly)| {
                let sx = *ux as u128 * ly.guarantee as u128;
                let sy = *uy as u128 * lx.guarantee as u128;
                let (x, y) = (lx.queue[0], ly.queue[0]);
                sx.cmp(&sy)
                    .then(x.created.cmp(&y.created))
                    .then_with(|| x.key.cmp(&y.key))
            })
            .map(|(t, _, _)| t)
            .expect("lanes are never empty");
        let lane = &mut tenants.get_mut(tenant).expect("picked from the map").queue;
        let w = lane.pop_front().expect("lanes are never empty");
        if lane.is_empty() {
            tenants.remove(tenant);
        }
        if tenants.is_empty() {
            top.remove();
        }
        Some(w)
    }

    /// Hands a workload's region choice back in the plan, when asked to.
    fn keep_explanation(&mut self, w: &WorkloadView, expl: &Explanation) {
        if self.config.keep_explanations {
            self.out.explanations.push((w.key.clone(), expl.clone()));
        }
    }

    /// Leaves a workload pending (or preempted) with a reason and message.
    pub(super) fn pend(
        &mut self,
        w: &WorkloadView,
        reason: &'static str,
        message: impl Into<Text>,
    ) {
        self.pend_as(w, reason, &message.into());
    }

    /// [`Self::pend`] with a message that may be shared: nothing is
    /// allocated for a workload whose status already says it, and the jobs
    /// told the same refusal share its words.
    fn pend_as(&mut self, w: &WorkloadView, reason: &'static str, message: &Text) {
        match self.out.pending.get_mut(reason) {
            Some(n) => *n += 1,
            None => {
                self.out.pending.insert(reason.to_string(), 1);
            }
        }
        let phase = if w.phase() == "Preempted" {
            "Preempted"
        } else {
            "Pending"
        };
        if already_pending(w, phase, reason, message) {
            return;
        }
        let status = pending_status(w, phase, reason, message.clone(), self.now);
        if status != w.status {
            self.out.actions.push(Action::SetStatus {
                key: w.key.clone(),
                status,
            });
        }
    }

    /// Quota, region choice and placement of one workload. A gang shape
    /// that fitted nowhere earlier in the pass is not tried again
    /// ([`Infeasible`]).
    fn admit_one(&mut self, w: &'a WorkloadView, known: &[String], adm: &mut Admission<'a>) {
        let Some(models) = self.allowed_models(w, known, adm) else {
            return;
        };
        let class = self.zones.class_of(&w.tenant, &adm.quotas);
        // Round-robin region choice moves on with every job it ranks, so
        // its jobs are each ranked.
        let vendor = job_vendor(w, &self.cap.model_vendors).map(str::to_string);
        let vendor = vendor.as_deref();
        let asker = Asker { vendor, class };
        let ask = (self.config.region_policy != RegionPolicy::RoundRobin)
            .then(|| AskKey::new(w, &models, asker.vendor, class));
        if let Some(refusal) = ask.as_ref().and_then(|a| adm.infeasible.refusal(a)) {
            if let Some(expl) = &refusal.explanation {
                self.keep_explanation(w, expl);
            }
            self.pend_as(w, "Unschedulable", &refusal.message);
            return;
        }
        let held = self.held_inputs(w, &models, class);
        let kept = held.and_then(|h| self.held.get(&w.key, h, self.now));
        if let Some((win, 0)) = kept {
            self.hold(w, &win, None);
            return;
        }
        let set = self
            .cap
            .engine
            .cluster()
            .models()
            .set_of(models.iter().copied());
        let one = w.replica_request(set);
        let gangs = self.gangs(w, &models, &one);
        let Some((mut allowed, mut shape)) =
            self.candidate_regions(w, &models, asker, &one, &gangs, adm)
        else {
            return;
        };
        let win = match (kept, held) {
            (Some(verdict), _) => Some(self.kept_window(verdict, &mut allowed)),
            (None, Some(inputs)) => self.time_window(w, &mut allowed, adm, inputs),
            (None, None) => None,
        };
        if let Some(win) = &win {
            if allowed.is_empty() {
                self.hold(w, win, None);
                return;
            }
            shape = ShapeKey::new(vendor, &gangs, &allowed, class).within(w.topology);
        }
        let placed = match adm.infeasible.refused(&shape) {
            Some(why) => Err(why.to_vec()),
            None => {
                let placed = self.try_place(w, class, &allowed, &gangs, Some(&mut adm.infeasible));
                match &placed {
                    Ok(p) => adm.infeasible.taken(&p.region),
                    Err(why) => adm.infeasible.refuse(shape, why.clone()),
                }
                placed
            }
        };
        let snapshot = self.snapshot;
        if let Some(rc) = &snapshot.regions {
            let chosen = placed.as_ref().ok().map(|p| p.region.as_str());
            self.mark_tried(adm, rc, &allowed, chosen);
            self.keep_explanation(w, &adm.expl);
        }
        let why_here = match &snapshot.regions {
            Some(rc) => format!(" Region choice: {}", adm.expl.summary(&rc.catalog)),
            None => String::new(),
        };
        match (placed, &win) {
            (Ok(p), _) => self.launch(w, p, &why_here),
            // Not preempting for a job that may wait.
            (Err(why), Some(win)) => self.hold(w, win, Some(why)),
            (Err(why), None) => {
                self.note_waiting(&adm.expl, &allowed);
                let explanation: Text = format!(
                    "the gang of {} fits in no allowed region: {}.{why_here}{}",
                    w.replicas,
                    why.join("; "),
                    self.zones.note(class, &allowed),
                )
                .into();
                // Left pending without a try at preemption: a job asking
                // the same is refused the same way.
                if adm.preempted || w.priority <= adm.lowest_priority {
                    if let Some(ask) = ask {
                        let keep = self.config.keep_explanations && snapshot.regions.is_some();
                        let refusal = Refusal {
                            message: explanation.clone(),
                            explanation: keep.then(|| adm.expl.clone()),
                        };
                        adm.infeasible.remember(ask, refusal);
                    }
                }
                self.preempt(w, class, explanation, &allowed, &gangs, adm);
            }
        }
    }

    /// Time shifting: a job that may start late (one [`Self::held_inputs`]
    /// admits; its latest start not yet near) takes only the allowed
    /// regions whose score now is near the best it could reach by waiting
    /// (`regions::shift`); `None`: it takes any. The verdict is kept for the
    /// rest of the hour (`held`: what it was worked out from; see
    /// [`super::held`]).
    fn time_window(
        &mut self,
        w: &WorkloadView,
        allowed: &mut Vec<String>,
        adm: &mut Admission,
        held: Inputs,
    ) -> Option<Window> {
        let (delay, rc) = (w.max_delay_s?, self.snapshot.regions.as_ref()?);
        let latest = w.created.saturating_add(delay);
        let mut hours = Hours {
            catalog: &rc.catalog,
            expl: &adm.expl,
            runtime_s: adm.runtime_s,
            memo: &mut adm.greens,
        };
        let win = hours.window(&adm.order, self.now, latest)?;
        let takers = adm
            .order
            .iter()
            .filter(|&&r| win.takes(&mut hours, r as usize))
            .fold(0u64, |m, &r| m | 1 << r);
        self.held.put(&w.key, held, (win, takers));
        Some(self.kept_window((win, takers), allowed))
    }

    /// Keeps of `allowed` the regions that take the job this hour.
    fn kept_window(
        &self,
        (win, takers): super::held::Verdict,
        allowed: &mut Vec<String>,
    ) -> Window {
        if let Some(rc) = &self.snapshot.regions {
            allowed.retain(|name| {
                rc.catalog
                    .region_index(name)
                    .is_some_and(|r| takers & (1 << r) != 0)
            });
        }
        win
    }

    /// What a time-shifted verdict of `w` would be worked out from (see
    /// [`super::held`]); `None` where no window applies: the job may not
    /// start late, there is no region catalog, or the policy is not green.
    fn held_inputs(&mut self, w: &WorkloadView, models: &[&str], class: u32) -> Option<Inputs> {
        let rc = self.snapshot.regions.as_ref()?;
        w.max_delay_s?;
        if self.config.region_policy != RegionPolicy::Green {
            return None;
        }
        let catalog = *self
            .catalog_digest
            .get_or_insert_with(|| super::held::catalog_digest(rc));
        let open = self.zones.region_mask(class, rc, &self.cap.nodes);
        Some(Inputs::new(self.now, w, models, open, catalog))
    }

    /// Holds a time-tolerant job (pending, `TimeShifted`) and asks for a
    /// pass when a region turns green enough or the window closes. `full`:
    /// why the green-enough regions had no room now.
    fn hold(&mut self, w: &WorkloadView, win: &Window, full: Option<Vec<String>>) {
        let Some(rc) = &self.snapshot.regions else {
            return;
        };
        let until = crate::jobs::rfc3339(win.release_s);
        let message = match full {
            None => format!(
                "waiting for greener or cheaper power: from {} region {:?} is expected to emit {:.1} kg CO2 for {:.2} CNY of energy (the best within the job's window); it takes any region from {until}",
                crate::jobs::rfc3339(win.next_s),
                rc.catalog.regions[win.region].name,
                win.best_kg,
                win.best_cost_milli_fen / 100_000.0,
            ),
            Some(why) => format!(
                "waiting for room in the regions green enough now ({}); it takes any region from {until}",
                why.join("; ")
            ),
        };
        self.pend(w, "TimeShifted", message);
        let wake = if win.next_s > self.now {
            win.next_s.min(win.release_s)
        } else {
            win.release_s
        };
        self.out.wake_at = Some(self.out.wake_at.map_or(wake, |t| t.min(wake)));
    }

    /// The GPU models the workload may use: those it names (and of its
    /// vendor) that its quota and monthly limits still allow. `None`: it
    /// was left pending with the reason.
    fn allowed_models<'k>(
        &mut self,
        w: &WorkloadView,
        known: &'k [String],
        adm: &mut Admission,
    ) -> Option<Vec<&'k str>> {
        let vendor_models = &self.cap.model_vendors;
        let vendor = job_vendor(w, vendor_models);
        // A few vendors at most: found by a look down the list.
        let at = adm
            .vendor_models
            .iter()
            .position(|(v, _)| v.as_deref() == vendor);
        let at = at.unwrap_or_else(|| {
            let of_vendor = (0..known.len())
                .filter(|&i| {
                    vendor_models
                        .iter()
                        .any(|(model, v)| *model == known[i] && vendor_fits(vendor, v))
                })
                .collect();
            adm.vendor_models
                .push((vendor.map(String::from), of_vendor));
            adm.vendor_models.len() - 1
        });
        let of_vendor = &adm.vendor_models[at].1;
        let candidates: Vec<&str> = of_vendor
            .iter()
            .map(|&i| known[i].as_str())
            .filter(|m| w.models.is_empty() || w.models.iter().any(|x| x == m))
            .collect();
        if let Some(tier) = w.token_tier {
            if let Err((reason, message)) =
                monthly_tokens(&adm.quotas, &adm.month_use, &w.tenant, tier.as_str())
            {
                self.pend(w, reason, message);
                return None;
            }
        }
        match quota_models(
            &adm.quotas,
            &self.usage,
            &adm.month_use,
            &w.tenant,
            &candidates,
            w.total_milli(),
        ) {
            Ok(m) => Some(m),
            Err((reason, message)) => {
                self.pend(w, reason, message);
                None
            }
        }
    }

    /// Regions to try, in order: the region planner's ranking (with a
    /// region catalog) or the sorted region labels; preferred ones first;
    /// with the gang's [`ShapeKey`]. Regions equally good on score are tried
    /// best fit first, unless the shape already fitted nowhere this pass.
    /// `None`: none is allowed, and the workload was left pending.
    fn candidate_regions(
        &mut self,
        w: &WorkloadView,
        models: &[&str],
        asker: Asker,
        one: &Request,
        gangs: &[Vec<Request>],
        adm: &mut Admission,
    ) -> Option<(Vec<String>, ShapeKey)> {
        let (vendor, class) = (asker.vendor, asker.class);
        let snapshot = self.snapshot;
        let (ranked, shape) = match &snapshot.regions {
            None => {
                let ranked: Vec<String> = adm
                    .regions
                    .iter()
                    .filter(|x| w.residency.is_empty() || w.residency.contains(x))
                    .cloned()
                    .collect();
                let shape = ShapeKey::new(vendor, gangs, &ranked, class).within(w.topology);
                (ranked, shape)
            }
            Some(rc) => {
                self.rank_regions(w, rc, models, class, adm)?;
                let name = |r: &u16| rc.catalog.regions[*r as usize].name.clone();
                let unordered: Vec<String> = adm.order.iter().map(name).collect();
                let shape = ShapeKey::new(vendor, gangs, &unordered, class).within(w.topology);
                if adm.infeasible.refused(&shape).is_none() {
                    self.order_by_fit(rc, asker, (one, gangs, w.topology), adm);
                }
                let bound = if w.residency.is_empty() {
                    self.bound_regions
                } else {
                    0
                };
                spare::leave_band_regions(
                    &mut adm.expl,
                    &mut adm.order,
                    self.spared_regions,
                    bound,
                );
                (adm.order.iter().map(name).collect(), shape)
            }
        };
        let mut allowed: Vec<String> = w
            .preferred
            .iter()
            .filter(|p| ranked.contains(p))
            .cloned()
            .collect();
        allowed.extend(ranked.iter().filter(|x| !w.preferred.contains(x)).cloned());
        if allowed.is_empty() {
            let message = match &snapshot.regions {
                Some(rc) => {
                    self.keep_explanation(w, &adm.expl);
                    adm.expl.summary(&rc.catalog)
                }
                None => format!(
                    "no region satisfies spec.regions.residency {:?}",
                    w.residency
                ),
            };
            let note = self.zones.note(class, &adm.regions);
            self.pend(w, "Unschedulable", message + &note);
            return None;
        }
        Some((allowed, shape))
    }

    /// The region planner's ranking, into `adm.order`. `None`: the job
    /// cannot be ranked, and was left pending.
    fn rank_regions(
        &mut self,
        w: &WorkloadView,
        rc: &RegionCatalog,
        models: &[&str],
        class: u32,
        adm: &mut Admission,
    ) -> Option<()> {
        let in_catalog: Vec<String> = models
            .iter()
            .filter(|m| rc.catalog.accelerators.iter().any(|a| a.model == **m))
            .map(|m| m.to_string())
            .collect();
        if in_catalog.is_empty() {
            let message = format!(
                "no usable region has nodes of the GPU models this job may use ({})",
                models.join(", ")
            );
            self.pend(w, "Unschedulable", message);
            return None;
        }
        // Name models only when the job or its quota restricts them.
        let restrict = if in_catalog.len() == rc.catalog.accelerators.len() {
            Vec::new()
        } else {
            in_catalog
        };
        let mut job = match job_spec(w, &restrict).resolve(&rc.catalog) {
            Ok(job) => job,
            Err(e) => {
                let message = format!(
                    "{}: {} (regions are: {})",
                    workload_field(e.field),
                    e.message,
                    adm.regions.join(", ")
                );
                self.pend(w, "Unschedulable", message);
                return None;
            }
        };
        job.open_mask = self.zones.region_mask(class, rc, &self.cap.nodes);
        adm.chooser.rank(
            &rc.catalog,
            &rc.inventory,
            &job,
            self.now,
            &mut adm.expl,
            &mut adm.order,
        );
        adm.runtime_s = job.expected_runtime_s;
        Some(())
    }

    /// Regions equally good on score are tried best fit first (for one
    /// replica); a region that refused the gang earlier in the pass fits
    /// worst, without a look at its nodes.
    fn order_by_fit(
        &mut self,
        rc: &RegionCatalog,
        asker: Asker,
        (one, gangs, topology): (&Request, &[Vec<Request>], Option<TopologyAsk>),
        adm: &mut Admission,
    ) {
        let cap = &mut self.cap;
        let infeasible = &adm.infeasible;
        order_band_by_fit(&mut adm.expl, &mut adm.order, |r| {
            let region = &rc.catalog.regions[r as usize].name;
            let here = ShapeKey::in_region(asker.vendor, gangs, region, asker.class, topology);
            if infeasible.refused(&here).is_some() {
                return None;
            }
            let nodes = nodes_in(
                &self.region_nodes,
                &self.one_vendor,
                &cap.nodes,
                &self.zones,
                &rc.catalog.regions[r as usize].name,
                asker,
            );
            cap.engine.best(one, Some(&nodes)).map(|(s, _)| s)
        });
    }

    /// The ways to place the gang: one replica alone (or a gang that says
    /// `mixedModels`) may use any allowed model; the replicas of a gang all
    /// get one model (a gang spread over V100s and T4s runs at the slowest
    /// one's pace), so it is one gang per allowed model.
    fn gangs(&self, w: &WorkloadView, models: &[&str], one: &Request) -> Vec<Vec<Request>> {
        if w.replicas <= 1 || models.len() <= 1 || w.mixed_models {
            return vec![vec![one.clone(); w.replicas as usize]];
        }
        let table = self.cap.engine.cluster().models();
        models
            .iter()
            .filter_map(|m| table.id(m))
            .map(|id| vec![w.replica_request(ModelSet::NONE.with(id)); w.replicas as usize])
            .collect()
    }

    /// Places the gang in the first allowed region that holds it (allocated
    /// on success), trying its models there best fit first, spared models
    /// last ([`tries`]); `Err` says why
    /// each region refused. With `refused` (admission, where capacity only
    /// shrinks), a region that refused the same gang shape earlier in the
    /// pass is not tried again: it is refused in the same words.
    pub(super) fn try_place(
        &mut self,
        w: &WorkloadView,
        class: u32,
        allowed: &[String],
        gangs: &[Vec<Request>],
        mut refused: Option<&mut Infeasible>,
    ) -> Result<Placed, Vec<String>> {
        let mut why = Vec::new();
        let vendor = job_vendor(w, &self.cap.model_vendors);
        let asker = Asker { vendor, class };
        // The gangs without the spared models: the same in every region.
        let rest: Vec<Option<Vec<Request>>> = match self.spared {
            ModelSet::NONE => Vec::new(),
            spared => gangs.iter().map(|g| spare::elsewhere(g, spared)).collect(),
        };
        for region in allowed {
            let here = refused
                .as_ref()
                .map(|_| ShapeKey::in_region(vendor, gangs, region, class, w.topology));
            if let (Some(inf), Some(key)) = (refused.as_deref(), &here) {
                if let Some(said) = inf.refused(key) {
                    why.extend_from_slice(said);
                    continue;
                }
            }
            let nodes = nodes_in(
                &self.region_nodes,
                &self.one_vendor,
                &self.cap.nodes,
                &self.zones,
                region,
                asker,
            );
            let mut order: Vec<(crate::placement::Score, usize)> = Vec::new();
            if gangs.len() == 1 {
                order.push(((0, 0), 0));
            } else {
                for (k, g) in gangs.iter().enumerate() {
                    if let Some((score, _)) = self.cap.engine.best(&g[0], Some(&nodes)) {
                        order.push((score, k));
                    }
                }
                // Higher scores fit better; ties keep the models' order.
                order.sort_by(|a, b| b.0.cmp(&a.0).then(a.1.cmp(&b.1)));
            }
            let mut last = None;
            for gang in tries(gangs, &rest, &order, self.spared) {
                let engine = &mut self.cap.engine;
                let tried = match w.topology {
                    None => engine
                        .place_gang(gang, Some(&nodes))
                        .map(|ds| (ds, None))
                        .map_err(|e| e.to_string()),
                    Some(ask) => engine
                        .place_gang_within(gang, &nodes, ask)
                        .map(|(ds, d)| (ds, Some(d)))
                        .map_err(|e| e.to_string()),
                };
                match tried {
                    Ok((decisions, domain)) => {
                        self.cap.record(&w.uid, &decisions);
                        return Ok(Placed {
                            region: region.clone(),
                            decisions,
                            domain,
                        });
                    }
                    Err(e) => last = Some(e),
                }
            }
            let e = last.unwrap_or_else(|| "no node has room for one replica".into());
            let said = format!("region {:?}: {e}", region.as_str());
            if let (Some(inf), Some(key)) = (refused.as_deref_mut(), here) {
                inf.refuse(key, vec![said.clone()]);
            }
            why.push(said);
        }
        Err(why)
    }

    /// Records in the explanation which ranked regions were tried: every one
    /// before `chosen` was full; `chosen` (if any) is where the gang went.
    fn mark_tried(
        &self,
        adm: &mut Admission,
        rc: &RegionCatalog,
        tried: &[String],
        chosen: Option<&str>,
    ) {
        let cluster = self.cap.engine.cluster();
        let expl = &mut adm.expl;
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
            let free_milli = adm.infeasible.free_milli(name, || {
                self.region_nodes.get(name).map_or(0, |nodes| {
                    nodes
                        .iter()
                        .map(|&i| {
                            (self.cap.nodes[i as usize].gpus as u64 * 1000)
                                .saturating_sub(cluster.node_gpu_milli_allocated(i) as u64)
                        })
                        .sum()
                })
            });
            expl.candidates[r].verdict = Verdict::Full { rank, free_milli };
        }
    }

    /// Records the placement: usage, the Admitted status, a Launch action.
    fn launch(&mut self, w: &WorkloadView, placed: Placed, why_here: &str) {
        let now = self.now;
        let Placed {
            region,
            decisions: ds,
            domain,
        } = placed;
        let replicas = ds
            .iter()
            .enumerate()
            .map(|(i, d)| ReplicaPlacement {
                pod: w.key.pod_name(i as u32),
                node: self.cap.engine.cluster().name(d.node).to_string(),
                devices: d.devices.iter().map(|x| x as u32).collect(),
                gpu_milli: w.gpu_milli.map(u32::from),
            })
            .collect::<Vec<_>>();
        for r in &replicas {
            let model = self.model_of_node(&r.node);
            self.usage.add(&w.tenant, model, w.milli_per_replica());
        }
        let mut s = w.status.clone();
        s.phase = Some("Admitted".into());
        s.reason = Some("Scheduled".into());
        s.started_at = None;
        s.observed_generation = Some(w.generation);
        let nodes: BTreeSet<&str> = replicas.iter().map(|r| r.node.as_str()).collect();
        let within = match (&domain, w.topology) {
            (Some(d), Some(ask)) => within(ask.level, d),
            _ => String::new(),
        };
        let message = format!(
            "{} replicas placed in region {region:?}{within} on {} node(s): {}.{why_here}",
            replicas.len(),
            nodes.len(),
            nodes.into_iter().collect::<Vec<_>>().join(", ")
        );
        s.placement = Some(Placement {
            region: Some(region),
            replicas,
            topology: domain.map(|d| TopologyPlacement {
                level: d.level.map_or("region", Level::name).to_string(),
                domain: d.domain,
            }),
        });
        let g = w.generation;
        set_condition(&mut s, "Valid", true, "Valid", "spec is valid", now, g);
        set_condition(&mut s, "Scheduled", true, "Scheduled", message, now, g);
        self.out.decisions += w.replicas as u64;
        self.out
            .admitted
            .push((w.key.clone(), (now - w.created).max(0)));
        self.out.actions.push(Action::Launch {
            key: w.key.clone(),
            tenant: w.tenant.clone(),
            status: s,
            write_status: true,
        });
    }
}

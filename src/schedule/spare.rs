//! Scarce models are spared for the jobs limited to them.
//!
//! A job that names some of its vendor's models (`gpuModels: [H100]`) can
//! run only there; a job that names none runs on any. The accelerators such
//! a limited job needs are worth more to it than to a flexible job, which
//! fits elsewhere as well: so while limited jobs wait, or have arrived
//! among the scheduler's recent arrivals (its shape window), a flexible job
//! tries the other models of its vendor first and takes the spared ones
//! only when nothing else holds it. Regions likewise, under green: among
//! the regions of a job's packing band (as good on carbon, cost and
//! latency as its best), those that limited jobs wait for, or that
//! unfinished residency-bound jobs may use, are tried last
//! ([`leave_band_regions`]). Placement stays work-conserving: nothing is
//! left idle for a job that may never come.

use std::collections::{BTreeMap, BTreeSet};

use super::admit::{vendor_fits, vendor_of};
use crate::jobs::Phase;
use crate::jobs::WorkloadView;
use crate::placement::{ModelSet, ModelTable, Request};
use crate::regions::explain::{Explanation, Filter, LeftFor, Verdict};

use super::{Pass, Snapshot};

/// What a job asks of accelerators: the vendor it names, the models it
/// names and its tenant's default vendor (see [`vendor_of`]).
#[derive(Clone, Copy)]
pub(super) struct Asked<'a> {
    vendor: Option<&'a str>,
    models: &'a [String],
    default_vendor: Option<&'a str>,
}

impl<'a> Asked<'a> {
    /// A workload's ask, when it names models (`None`: it runs on any).
    pub(super) fn of(w: &'a WorkloadView) -> Option<Self> {
        (!w.models.is_empty()).then_some(Asked {
            vendor: w.vendor.as_deref(),
            models: &w.models,
            default_vendor: w.default_vendor.as_deref(),
        })
    }
}

/// An [`Asked`] kept beyond its snapshot (the arrivals the scheduler
/// remembers).
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub(super) struct Limited {
    vendor: Option<String>,
    models: Vec<String>,
    default_vendor: Option<String>,
}

impl Limited {
    pub(super) fn of(w: &WorkloadView) -> Option<Self> {
        Asked::of(w).map(|a| Limited {
            vendor: a.vendor.map(String::from),
            models: a.models.to_vec(),
            default_vendor: a.default_vendor.map(String::from),
        })
    }

    /// The models it names.
    pub(super) fn models(&self) -> &[String] {
        &self.models
    }

    pub(super) fn asked(&self) -> Asked<'_> {
        Asked {
            vendor: self.vendor.as_deref(),
            models: &self.models,
            default_vendor: self.default_vendor.as_deref(),
        }
    }
}

/// The models jobs limited to a few are spared for: for each ask, the
/// models it names, when they are fewer than all of its vendor's models
/// the cluster has (a job naming all of them is flexible).
/// `model_vendors` are the cluster's (model, vendor) pairs.
pub(super) fn spared_models<'a>(
    asks: impl IntoIterator<Item = Asked<'a>>,
    models: &ModelTable,
    model_vendors: &BTreeSet<(String, String)>,
) -> ModelSet {
    let mut of_vendor: BTreeMap<Option<&str>, ModelSet> = BTreeMap::new();
    let mut spared = ModelSet::NONE;
    for a in asks {
        let vendor = vendor_of(a.vendor, a.models, a.default_vendor, model_vendors);
        let all = *of_vendor.entry(vendor).or_insert_with(|| {
            let of_vendor = model_vendors.iter().filter(|(_, v)| vendor_fits(vendor, v));
            models.set_of(of_vendor.map(|(m, _)| m.as_str()))
        });
        let named = models.set_of(a.models.iter().map(String::as_str));
        let limited = ModelSet(named.0 & all.0);
        if limited.0 != all.0 {
            spared = ModelSet(spared.0 | limited.0);
        }
    }
    spared
}

/// The gang restricted to the models not spared, when it may use some
/// spared ones and some others; `None` when it may use only spared models
/// (it has nowhere else to go) or none (it [`touches`] none).
pub(super) fn elsewhere(gang: &[Request], spared: ModelSet) -> Option<Vec<Request>> {
    let models = gang.first()?.models;
    let rest = ModelSet(models.0 & !spared.0);
    if rest.0 == models.0 || rest.0 == 0 {
        return None;
    }
    Some(
        gang.iter()
            .map(|r| Request {
                models: rest,
                ..r.clone()
            })
            .collect(),
    )
}

/// Whether the gang may use some spared model.
pub(super) fn touches(gang: &[Request], spared: ModelSet) -> bool {
    gang.first().is_some_and(|r| r.models.0 & spared.0 != 0)
}

/// Whether region choice left out, for this job's own limits (residency,
/// latency SLO, budget, dedicated zones), some region that has room for
/// its shape: a job that can run in fewer regions than a flexible one of
/// its size. (Regions too small for it, or without its models, do not
/// count: sparing every large region for the large gangs that wait would
/// send flexible work away from the greenest ones — tried, carbon rose on
/// the generated pairs.)
pub(super) fn region_limited(expl: &Explanation) -> bool {
    expl.candidates.iter().any(
        |c| matches!(c.verdict, Verdict::Removed { filter, .. } if filter != Filter::Inventory),
    )
}

/// The bit of a catalog region in a region mask (`None` past 64 regions:
/// such a region is never spared).
fn bit(index: Option<usize>) -> u64 {
    index.filter(|&i| i < 64).map_or(0, |i| 1 << i)
}

/// Within the packing band — the regions as good on carbon, cost and
/// latency as the best one for this job — the regions other jobs need more
/// are tried last: those that unfinished jobs are bound to by residency
/// (`bound`) after the rest, and those that limited jobs wait for
/// (`waited`) after those; each group keeps its order (best fit first).
/// Regions outside the band keep their rank: a job is never sent to a
/// worse region to spare one (which sent flexible work to the dearest,
/// dirtiest region of a saturated catalog). The band's regions left for
/// others say so in the explanation.
pub(super) fn leave_band_regions(
    expl: &mut Explanation,
    order: &mut [u16],
    waited: u64,
    bound: u64,
) {
    let band = (expl.band as usize).min(order.len());
    if band < 2 || waited | bound == 0 {
        return;
    }
    let cands = &mut expl.candidates;
    for &r in &order[..band] {
        let b = bit(Some(r as usize));
        cands[r as usize].left_for = match (b & waited != 0, b & bound != 0) {
            (true, _) => Some(LeftFor::Waiting),
            (false, true) => Some(LeftFor::Bound),
            (false, false) => None,
        };
    }
    // Stable, in `LeftFor`'s order: the rest, then bound, then waited for.
    order[..band].sort_by_key(|&r| cands[r as usize].left_for);
}

/// The catalog regions that unfinished jobs with residency may run in
/// (waiting or running: a running one may be preempted or restarted).
pub(super) fn bound_regions(snapshot: &Snapshot) -> u64 {
    let Some(rc) = &snapshot.regions else {
        return 0;
    };
    snapshot
        .workloads
        .iter()
        .filter(|w| {
            !w.residency.is_empty()
                && Phase::of_status(w.status.phase.as_deref(), w.deleting).is_active()
        })
        .flat_map(|w| &w.residency)
        .fold(0, |m, r| m | bit(rc.catalog.region_index(r)))
}

impl Pass<'_> {
    /// A job that found no room: when it is [`region_limited`], the
    /// regions it may use are spared from now on and in the next pass.
    pub(super) fn note_waiting(&mut self, expl: &Explanation, allowed: &[String]) {
        let Some(rc) = &self.snapshot.regions else {
            return;
        };
        if region_limited(expl) {
            let waited = allowed
                .iter()
                .fold(0, |m, r| m | bit(rc.catalog.region_index(r)));
            self.waited_regions |= waited;
            self.spared_regions |= waited;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::placement::GpuDemand;

    fn table() -> (ModelTable, BTreeSet<(String, String)>) {
        let mut t = ModelTable::new();
        let mut mv = BTreeSet::new();
        for (m, v) in [
            ("A100", "nvidia"),
            ("H100", "nvidia"),
            ("Ascend910B", "huawei"),
        ] {
            t.intern(m).unwrap();
            mv.insert((m.to_string(), v.to_string()));
        }
        (t, mv)
    }

    fn job(models: &[&str]) -> WorkloadView {
        WorkloadView {
            models: models.iter().map(|m| m.to_string()).collect(),
            ..crate::schedule::tests::workload("j", "acme", 1, 2, 0, 0)
        }
    }

    #[test]
    fn a_job_limited_to_some_of_its_vendors_models_spares_them() {
        let (t, mv) = table();
        let h100 = job(&["H100"]);
        let both = job(&["A100", "H100"]);
        let npu = job(&["Ascend910B"]);
        let any = job(&[]);
        let h = ModelSet::only(t.id("H100").unwrap());
        let spared = |jobs: &[&WorkloadView]| {
            spared_models(jobs.iter().filter_map(|w| Asked::of(w)), &t, &mv)
        };
        assert_eq!(spared(&[&h100, &any]), h);
        // Naming every NVIDIA model is being flexible.
        assert_eq!(spared(&[&both]), ModelSet::NONE);
        // The only Ascend model: nothing else of its vendor to prefer.
        assert_eq!(spared(&[&npu]), ModelSet::NONE);
        assert_eq!(spared(&[]), ModelSet::NONE);
        // A kept ask spares the same.
        let kept = Limited::of(&h100).unwrap();
        assert_eq!(spared_models([kept.asked()], &t, &mv), h);
    }

    /// Six ranked regions, the first four in the packing band.
    fn band_of_four() -> Explanation {
        use crate::regions::explain::Candidate;
        let candidates = (0..6u16)
            .map(|r| Candidate {
                region: r,
                verdict: Verdict::Ranked { rank: r as u32 },
                terms: None,
                fit: None,
                left_for: None,
            })
            .collect();
        Explanation {
            band: 4,
            candidates,
            ..Default::default()
        }
    }

    #[test]
    fn the_band_tries_regions_others_need_last_and_the_rest_keeps_its_rank() {
        let mut expl = band_of_four();
        let mut order = [0u16, 1, 2, 3, 4, 5];
        // Jobs limited to 0 and to 4 wait; a bound job may use 1.
        leave_band_regions(&mut expl, &mut order, 0b1_0001, 0b10);
        // 4 lies outside the band: a worse region is not tried before it.
        assert_eq!(order, [2, 3, 1, 0, 4, 5]);
        let left: Vec<_> = expl.candidates.iter().map(|c| c.left_for).collect();
        use LeftFor::{Bound, Waiting};
        assert_eq!(left, [Some(Waiting), Some(Bound), None, None, None, None]);
        // Nothing needed elsewhere: the order stands.
        let mut expl = band_of_four();
        let mut order = [3u16, 0, 1, 2, 4, 5];
        leave_band_regions(&mut expl, &mut order, 0, 0);
        assert_eq!(order, [3, 0, 1, 2, 4, 5]);
        assert!(expl.candidates.iter().all(|c| c.left_for.is_none()));
    }

    #[test]
    fn a_flexible_gang_is_first_offered_the_models_not_spared() {
        let (t, _) = table();
        let (a, h) = (t.id("A100").unwrap(), t.id("H100").unwrap());
        let req = |models| Request {
            models,
            ..Request::new(1000, 0, GpuDemand::Whole { count: 2 })
        };
        let flexible = vec![req(ModelSet::only(a).with(h)); 2];
        let spared = ModelSet::only(h);
        let first = elsewhere(&flexible, spared).unwrap();
        assert!(first.iter().all(|r| r.models == ModelSet::only(a)));
        assert!(touches(&flexible, spared));
        // A job limited to H100 is not restricted further.
        let limited = vec![req(ModelSet::only(h))];
        assert!(elsewhere(&limited, spared).is_none());
        assert!(touches(&limited, spared));
        let elsewhere_only = vec![req(ModelSet::only(a))];
        assert!(elsewhere(&elsewhere_only, spared).is_none());
        assert!(!touches(&elsewhere_only, spared));
        // Nothing spared: nothing to restrict.
        assert!(elsewhere(&flexible, ModelSet::NONE).is_none());
    }
}

#[cfg(test)]
mod pass_tests {
    use crate::schedule::tests::{act_on, launches, node_of, quota, workload};
    use crate::schedule::{plan, PlanConfig, Scheduler, Snapshot};

    /// Where each launched workload of a pass went (first replica's node).
    fn placed(p: &crate::schedule::Plan) -> Vec<(String, String)> {
        launches(p)
            .iter()
            .map(|(name, s)| {
                let node = &s.placement.as_ref().unwrap().replicas[0].node;
                (name.to_string(), node.clone())
            })
            .collect()
    }

    /// Best fit: the tighter node wins, so where sparing is missing shows.
    fn bestfit() -> PlanConfig {
        PlanConfig {
            policy: "bestfit".parse().unwrap(),
            ..PlanConfig::default()
        }
    }

    /// An 8-A100 node, an 8-H100 node and one workload.
    fn a100_and_h100(w: crate::jobs::WorkloadView) -> Snapshot {
        Snapshot {
            now: 10,
            nodes: vec![
                node_of("a100", "A100", "nvidia", 8),
                node_of("h100", "H100", "nvidia", 8),
            ],
            workloads: vec![w],
            quotas: vec![quota("t", None, &[], 0)],
            ..Default::default()
        }
    }

    fn h100_only(name: &str, gpus: u8, created: i64) -> crate::jobs::WorkloadView {
        crate::jobs::WorkloadView {
            models: vec!["H100".into()],
            ..workload(name, "t", 1, gpus, 0, created)
        }
    }

    /// Best fit would put a flexible 2-GPU job on the H100 node (6 free,
    /// the tighter fit) while an 8-GPU job limited to H100 waits for it:
    /// the flexible job takes the A100 node instead.
    #[test]
    fn a_flexible_job_leaves_the_model_a_waiting_job_is_limited_to() {
        let config = bestfit();
        let mut snap = a100_and_h100(h100_only("small", 2, 1));
        let p = plan(&snap, &config);
        assert_eq!(placed(&p), [("small".into(), "h100".into())]);
        act_on(&mut snap, &p);
        snap.workloads.push(h100_only("big", 8, 2));
        snap.workloads.push(workload("flex", "t", 1, 2, 0, 3));
        snap.now = 20;
        let p = plan(&snap, &config);
        assert_eq!(placed(&p), [("flex".into(), "a100".into())]);
        // With the A100 node full, it takes the H100 node all the same.
        snap.nodes[0].unhealthy = (0..8).collect();
        let p = plan(&snap, &config);
        assert_eq!(placed(&p), [("flex".into(), "h100".into())]);
    }

    /// A waiting job limited to H100 spares it even when it is no longer
    /// among the shape window's arrivals (a burst of 4,096 later ones
    /// pushed it out): the waiting queue is the other source.
    #[test]
    fn a_waiting_job_spares_its_model_after_leaving_the_window() {
        let config = bestfit();
        let mut snap = a100_and_h100(h100_only("small", 2, 1));
        let p = plan(&snap, &config);
        act_on(&mut snap, &p);
        snap.workloads.push(h100_only("big", 8, 2));
        // Fits no node (16 GPUs): refused once, then by its shape.
        let burst = super::super::shapes::SHAPE_WINDOW;
        snap.workloads
            .extend((0..burst).map(|i| workload(&format!("huge{i}"), "t", 1, 16, 0, 3)));
        snap.workloads.push(workload("flex", "t", 1, 2, 0, 4));
        snap.now = 20;
        let p = plan(&snap, &config);
        assert_eq!(placed(&p), [("flex".into(), "a100".into())]);
    }

    /// A job limited to H100 that came and went still spares the model
    /// for the scheduler that saw it: a flexible job goes to the A100 node,
    /// where a scheduler that never saw one packs it onto the H100 node
    /// (the tighter fit: another pod holds two of its devices).
    #[test]
    fn a_limited_job_seen_recently_spares_its_model() {
        let config = bestfit();
        let mut kept = Scheduler::new(config.clone());
        let mut snap = a100_and_h100(h100_only("gone", 2, 1));
        let p = kept.plan(&snap);
        assert_eq!(placed(&p), [("gone".into(), "h100".into())]);
        snap.workloads.clear();
        snap.pods.push(crate::jobs::PodView {
            namespace: "other".into(),
            name: "foreign".into(),
            owner: None,
            node: Some("h100".into()),
            devices: vec![0, 1],
            milli: None,
            cpu_milli: 100,
            memory_mib: 100,
            phase: "Running".into(),
            deleting: false,
        });
        snap.workloads.push(workload("flex", "t", 1, 2, 0, 3));
        snap.now = 20;
        assert_eq!(placed(&kept.plan(&snap)), [("flex".into(), "a100".into())]);
        assert_eq!(
            placed(&plan(&snap, &config)),
            [("flex".into(), "h100".into())]
        );
    }
}

//! What admission learns within one pass about gangs that fit nowhere.
//!
//! Placements only take capacity, so a gang shape that fitted in none of a
//! set of regions fits in none of them for the rest of the pass, until
//! something frees capacity (a preemption). With thousands of waiting jobs
//! of a few shapes, each shape is tried once per pass instead of once per
//! job: the equivalence classes kube-scheduler and Kueue keep for the same
//! reason. Every later job of the shape is told the first refusal's words
//! (the capacity it describes has only shrunk since). The free GPUs of each region, which every refusal reports, are
//! summed once until a placement in that region changes them; and a job asking exactly
//! what an earlier refused one asked (every field region choice and
//! placement read, the models its quota left it, its priority) is refused
//! with the same words until a placement or a preemption changes capacity.

use std::collections::HashMap;

use crate::jobs::{Kind, Text, WorkloadView};
use crate::placement::{FxBuild, Request, TopologyAsk};
use crate::regions::explain::Explanation;

/// A gang shape and where it may go: the job's vendor, each way to place
/// the gang (its replicas' one request and their number), the regions it
/// may use (sorted) and its tenant's access class (the nodes of dedicated
/// zones it may use, `super::zones`).
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub(super) struct ShapeKey {
    vendor: Option<String>,
    gangs: Vec<(Request, usize)>,
    regions: Vec<String>,
    topology: Option<TopologyAsk>,
    class: u32,
}

impl ShapeKey {
    pub(super) fn new(
        vendor: Option<&str>,
        gangs: &[Vec<Request>],
        regions: &[String],
        class: u32,
    ) -> Self {
        let mut regions = regions.to_vec();
        regions.sort_unstable();
        ShapeKey {
            class,
            vendor: vendor.map(str::to_string),
            gangs: gangs
                .iter()
                .filter_map(|g| Some((g.first()?.clone(), g.len())))
                .collect(),
            regions,
            topology: None,
        }
    }

    /// The shape in one region: what a region refused in the pass (placement
    /// records it, the packing band's order reads it).
    pub(super) fn in_region(
        vendor: Option<&str>,
        gangs: &[Vec<Request>],
        region: &String,
        class: u32,
        topology: Option<TopologyAsk>,
    ) -> Self {
        ShapeKey::new(vendor, gangs, std::slice::from_ref(region), class).within(topology)
    }

    /// The same shape asking to fit in one network domain.
    pub(super) fn within(mut self, topology: Option<TopologyAsk>) -> Self {
        self.topology = topology;
        self
    }
}

/// Everything of a job that its refusal's reason and message follow from
/// (all but its tenant and name), with the models its quota left it and
/// its tenant's access class.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub(super) struct AskKey {
    kind: Kind,
    batch: bool,
    replicas: u32,
    gpus_per_replica: u8,
    gpu_milli: Option<u16>,
    cpu_milli: u32,
    memory_mib: u64,
    models: Vec<String>,
    vendor: Option<String>,
    mixed_models: bool,
    topology: Option<TopologyAsk>,
    priority: i32,
    residency: Vec<String>,
    preferred: Vec<String>,
    max_runtime_s: Option<i64>,
    max_delay_s: Option<i64>,
    latency_slo_bits: Option<u64>,
    user_region: Option<String>,
    class: u32,
}

impl AskKey {
    pub(super) fn new(w: &WorkloadView, models: &[&str], vendor: Option<&str>, class: u32) -> Self {
        AskKey {
            class,
            kind: w.key.kind,
            batch: w.batch,
            replicas: w.replicas,
            gpus_per_replica: w.gpus_per_replica,
            gpu_milli: w.gpu_milli,
            cpu_milli: w.cpu_milli,
            memory_mib: w.memory_mib,
            models: models.iter().map(|m| m.to_string()).collect(),
            vendor: vendor.map(str::to_string),
            mixed_models: w.mixed_models,
            topology: w.topology,
            priority: w.priority,
            residency: w.residency.clone(),
            preferred: w.preferred.clone(),
            max_runtime_s: w.max_runtime_s,
            max_delay_s: w.max_delay_s,
            latency_slo_bits: w.latency_slo_ms.map(f64::to_bits),
            user_region: w.user_region.clone(),
        }
    }
}

/// A refusal to repeat: its message, and the region choice behind it
/// (kept only when the plan hands explanations back).
pub(super) struct Refusal {
    pub message: Text,
    pub explanation: Option<Explanation>,
}

/// The pass's refusals by shape and by ask, and its regions' free milli-GPU.
#[derive(Default)]
pub(super) struct Infeasible {
    refused: HashMap<ShapeKey, Vec<String>, FxBuild>,
    free_milli: HashMap<String, u64, FxBuild>,
    asks: HashMap<AskKey, Refusal, FxBuild>,
}

impl Infeasible {
    /// Why this shape fitted nowhere earlier in the pass (per region), if it
    /// did not.
    pub(super) fn refused(&self, key: &ShapeKey) -> Option<&[String]> {
        self.refused.get(key).map(Vec::as_slice)
    }

    /// Remembers that the shape fits in none of its regions.
    pub(super) fn refuse(&mut self, key: ShapeKey, why: Vec<String>) {
        self.refused.insert(key, why);
    }

    /// A region's free milli-GPU, summed by `sum` at most once between
    /// placements.
    pub(super) fn free_milli(&mut self, region: &str, sum: impl FnOnce() -> u64) -> u64 {
        if let Some(&free) = self.free_milli.get(region) {
            return free;
        }
        let free = sum();
        self.free_milli.insert(region.to_string(), free);
        free
    }

    /// How an earlier job asking the same was refused, if one was.
    pub(super) fn refusal(&self, ask: &AskKey) -> Option<&Refusal> {
        self.asks.get(ask)
    }

    /// Remembers how a job was refused (left pending, nothing evicted).
    pub(super) fn remember(&mut self, ask: AskKey, refusal: Refusal) {
        self.asks.insert(ask, refusal);
    }

    /// A placement took capacity in `region` (a gang is placed within
    /// one): shapes that fitted nowhere still fit nowhere, but that
    /// region's free figure and the words of refusals change. The other
    /// regions' sums stay.
    pub(super) fn taken(&mut self, region: &str) {
        self.free_milli.remove(region);
        self.asks.clear();
    }

    /// Capacity was freed (a preemption): nothing learnt holds any more.
    pub(super) fn freed(&mut self) {
        self.refused.clear();
        self.free_milli.clear();
        self.asks.clear();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::placement::GpuDemand;

    fn gang(gpus: u8, n: usize) -> Vec<Request> {
        vec![Request::new(1000, 1024, GpuDemand::Whole { count: gpus }); n]
    }

    #[test]
    fn a_shape_is_its_request_its_size_its_vendor_and_its_regions_as_a_set() {
        let regions = |r: &[&str]| r.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        let a = ShapeKey::new(None, &[gang(8, 4)], &regions(&["west", "east"]), 0);
        assert_eq!(
            a,
            ShapeKey::new(None, &[gang(8, 4)], &regions(&["east", "west"]), 0)
        );
        assert_ne!(
            a,
            ShapeKey::new(None, &[gang(8, 5)], &regions(&["east", "west"]), 0)
        );
        assert_ne!(
            a,
            ShapeKey::new(None, &[gang(4, 4)], &regions(&["east", "west"]), 0)
        );
        assert_ne!(
            a,
            ShapeKey::new(
                Some("huawei"),
                &[gang(8, 4)],
                &regions(&["east", "west"]),
                0
            )
        );
        assert_ne!(
            a,
            ShapeKey::new(None, &[gang(8, 4)], &regions(&["east"]), 0)
        );
        // Another access class (dedicated zones) is another shape.
        assert_ne!(
            a,
            ShapeKey::new(None, &[gang(8, 4)], &regions(&["east", "west"]), 1)
        );
    }

    #[test]
    fn refusals_last_until_capacity_is_freed_and_free_figures_until_it_is_taken() {
        let key = ShapeKey::new(None, &[gang(8, 2)], &["east".to_string()], 0);
        let mut inf = Infeasible::default();
        assert!(inf.refused(&key).is_none());
        inf.refuse(key.clone(), vec!["region \"east\": full".into()]);
        assert_eq!(inf.free_milli("east", || 3000), 3000);
        assert_eq!(inf.free_milli("east", || unreachable!()), 3000);
        assert_eq!(inf.free_milli("west", || 8000), 8000);
        inf.taken("east");
        assert!(inf.refused(&key).is_some());
        assert_eq!(inf.free_milli("east", || 1000), 1000);
        assert_eq!(inf.free_milli("west", || unreachable!()), 8000);
        inf.freed();
        assert!(inf.refused(&key).is_none());
        assert_eq!(inf.free_milli("east", || 0), 0);
    }
}

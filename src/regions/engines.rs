//! The second level of two-level placement: one placement engine per region.
//!
//! Given the regions in the order region choice ranked them, try each
//! region's engine for the whole gang (all replicas, all-or-nothing, inside
//! that one region — gangs never span regions) and fall back to the next
//! region when it is full, unless the job waits for its best region.

use super::catalog::Catalog;
use super::plan::{order_band_by_fit, Explanation, ResolvedJob, Verdict};
use crate::error::InputError;
use crate::placement::{Cluster, Decision, Engine, ModelSet, NodeSpec, Policy, Request};
use std::collections::VecDeque;

/// Node label carrying the region (same key as the operator's node label).
pub const REGION_LABEL: &str = "zhisuan.io/region";

/// A placed gang: its region and one decision per replica.
#[derive(Debug, Clone, PartialEq)]
pub struct RegionPlacement {
    pub region: u16,
    pub decisions: Vec<Decision>,
}

/// Per-replica resources of a job, as placement requests.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct ReplicaShape {
    pub cpu_milli: u32,
    pub memory_mib: u64,
}

/// Arrivals the typical shapes are learned from (the most recent ones).
pub const SHAPE_WINDOW: usize = 4096;
/// Shapes are relearned at 1, 2, 4, … arrivals up to [`SHAPE_WINDOW`], then every this many.
const SHAPE_RELEARN_EVERY: u64 = 1024;

/// One arrival as the shape estimate sees it: a replica request (any model),
/// the job's allowed catalog models (empty = any) and its replica count.
struct Arrival {
    replica: Request,
    models: Vec<usize>,
    replicas: u32,
}

/// One placement engine per region of a catalog.
///
/// The engines' typical shapes (FGD's fragmentation measure) come from the
/// arrivals of ALL regions, each job counted once ([`RegionEngines::observe_arrival`]):
/// an engine left to learn on its own would count only the requests routed
/// to its region, and count a queued job again at every retry, so the jobs
/// that wait longest (large gangs) would dominate its shapes.
pub struct RegionEngines {
    engines: Vec<Engine>,
    /// Scratch for the gang's member requests (reused across decisions).
    members: Vec<Request>,
    /// Per region, a single replica's decision found while ordering the
    /// packing band (reused across decisions).
    band_picks: Vec<Option<Decision>>,
    /// The last [`SHAPE_WINDOW`] arrivals.
    arrivals: VecDeque<Arrival>,
    arrived: u64,
    next_relearn: u64,
}

impl RegionEngines {
    /// Builds every region's nodes from the catalog's inventory ([`node_specs`]).
    pub fn from_catalog(
        catalog: &Catalog,
        policy: Policy,
        seed: u64,
    ) -> Result<RegionEngines, InputError> {
        let mut engines = Vec::with_capacity(catalog.regions.len());
        for r in 0..catalog.regions.len() {
            let cluster = Cluster::from_specs(&node_specs(catalog, r)?)
                .map_err(|e| InputError::new(format!("region {}: {e}", catalog.regions[r].name)))?;
            let seed = seed.wrapping_add(r as u64);
            let order = energy_tie_order(catalog, &cluster, seed);
            let mut engine = Engine::new(cluster, policy, seed);
            engine
                .set_tie_order(&order)
                .expect("a permutation of the region's nodes");
            engines.push(engine);
        }
        Ok(RegionEngines {
            engines,
            members: Vec::new(),
            band_picks: Vec::new(),
            arrivals: VecDeque::with_capacity(SHAPE_WINDOW),
            arrived: 0,
            next_relearn: 1,
        })
    }

    /// Counts a job once, when it arrives (not at each placement try), for
    /// the typical shapes every region's engine scores fragmentation with.
    /// Relearns them at 1, 2, 4, … arrivals, then every 1,024, over the last
    /// [`SHAPE_WINDOW`] arrivals.
    pub fn observe_arrival(&mut self, catalog: &Catalog, job: &ResolvedJob, shape: ReplicaShape) {
        if !self
            .engines
            .first()
            .is_some_and(|e| e.policy().uses_shapes())
        {
            return;
        }
        if self.arrivals.len() == SHAPE_WINDOW {
            self.arrivals.pop_front();
        }
        self.arrivals.push_back(Arrival {
            replica: replica_request(job, shape),
            models: job.models.clone(),
            replicas: job.replicas,
        });
        self.arrived += 1;
        if self.arrived < self.next_relearn {
            return;
        }
        self.next_relearn = if self.next_relearn < SHAPE_WINDOW as u64 {
            self.next_relearn * 2
        } else {
            self.next_relearn + SHAPE_RELEARN_EVERY
        };
        let mut requests = Vec::new();
        for engine in &mut self.engines {
            requests.clear();
            for a in &self.arrivals {
                let models = region_models(catalog, engine, &a.models);
                if models == ModelSet::NONE {
                    continue; // cannot land in this region
                }
                let r = a.replica.clone().with_models(models);
                requests.extend(std::iter::repeat_n(r, a.replicas as usize));
            }
            engine.set_workload(requests.iter());
        }
    }

    pub fn engine(&self, region: usize) -> &Engine {
        &self.engines[region]
    }

    pub fn len(&self) -> usize {
        self.engines.len()
    }

    pub fn is_empty(&self) -> bool {
        self.engines.is_empty()
    }

    /// Free milli-GPU in a region (healthy or not).
    pub fn free_milli(&self, region: usize) -> u64 {
        let c = self.engines[region].cluster();
        c.total_gpus() as u64 * 1000 - c.gpu_milli_allocated()
    }

    /// Tries the ranked regions in `order` (the packing band first reordered
    /// by fit, [`order_band_by_fit`]); records each try in `expl`
    /// (`Full` / `NotTried` / `Chosen`, with the region's rank by score).
    /// Allocates on success.
    pub fn place(
        &mut self,
        catalog: &Catalog,
        job: &ResolvedJob,
        shape: ReplicaShape,
        order: &mut [u16],
        expl: &mut Explanation,
    ) -> Option<RegionPlacement> {
        // A single replica's decision found while ordering the band is
        // allocated as is (nothing changes in between).
        let single = job.replicas == 1;
        self.band_picks.clear();
        self.band_picks.resize(self.engines.len(), None);
        order_band_by_fit(expl, order, |r| {
            let ri = r as usize;
            if self.free_milli(ri) < job.total_milli() {
                return None;
            }
            let engine = &mut self.engines[ri];
            let models = region_models(catalog, engine, &job.models);
            if models == ModelSet::NONE {
                return None;
            }
            let (score, d) = engine.best(&replica_request(job, shape).with_models(models), None)?;
            if single {
                self.band_picks[ri] = Some(d);
            }
            Some(score)
        });
        for (pos, &r) in order.iter().enumerate() {
            let ri = r as usize;
            let rank = match expl.candidates[ri].verdict {
                Verdict::Ranked { rank } => rank as usize,
                _ => pos,
            };
            if rank > 0 && job.wait_for_best {
                expl.candidates[ri].verdict = Verdict::NotTried { rank: rank as u32 };
                continue;
            }
            let free = self.free_milli(ri);
            // Cheap pre-check before asking the engine.
            if free >= job.total_milli() {
                let picked = self.band_picks[ri].take().map(|d| {
                    self.engines[ri]
                        .allocate(&d)
                        .expect("a decision made just now fits");
                    vec![d]
                });
                if let Some(decisions) = picked.or_else(|| self.try_gang(catalog, ri, job, shape)) {
                    expl.candidates[ri].verdict = Verdict::Chosen { rank: rank as u32 };
                    expl.chosen = Some(r);
                    return Some(RegionPlacement {
                        region: r,
                        decisions,
                    });
                }
            }
            expl.candidates[ri].verdict = Verdict::Full {
                rank: rank as u32,
                free_milli: free,
            };
        }
        None
    }

    fn try_gang(
        &mut self,
        catalog: &Catalog,
        region: usize,
        job: &ResolvedJob,
        shape: ReplicaShape,
    ) -> Option<Vec<Decision>> {
        let engine = &mut self.engines[region];
        let models = region_models(catalog, engine, &job.models);
        if models == ModelSet::NONE {
            return None;
        }
        let one = replica_request(job, shape).with_models(models);
        self.members.clear();
        self.members.resize(job.replicas as usize, one);
        engine.place_gang(&self.members, None).ok()
    }

    /// Gives a placed gang's resources back.
    pub fn release(&mut self, placement: &RegionPlacement) -> Result<(), String> {
        let engine = &mut self.engines[placement.region as usize];
        for d in &placement.decisions {
            engine.release(d)?;
        }
        Ok(())
    }
}

/// The engines' tie-break order: nodes whose GPUs draw the least power
/// first, seeded order within equal power. Node scores tie often (an empty
/// cluster: every node), and a tie then decides which GPU model a
/// model-agnostic job lands on (70 W … 400 W in the default catalog); with a
/// purely random order the energy, cost and carbon of the same region choice
/// changed by up to a quarter from seed to seed.
pub fn energy_tie_order(catalog: &Catalog, cluster: &Cluster, seed: u64) -> Vec<u32> {
    let power = |n: u32| {
        catalog
            .power_w(cluster.models().name(cluster.model(n)))
            .unwrap_or(f64::INFINITY)
    };
    let mix = |n: u32| {
        // splitmix64 of (seed, node): a seeded order within equal power.
        let mut z = seed ^ (n as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15);
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    };
    let mut order: Vec<u32> = (0..cluster.len() as u32).collect();
    order.sort_by(|&a, &b| power(a).total_cmp(&power(b)).then(mix(a).cmp(&mix(b))));
    order
}

/// A job's allowed catalog models (empty = any) in an engine's model ids.
fn region_models(catalog: &Catalog, engine: &Engine, models: &[usize]) -> ModelSet {
    if models.is_empty() {
        return ModelSet::ANY;
    }
    let table = engine.cluster().models();
    models
        .iter()
        .filter_map(|&m| table.id(&catalog.accelerators[m].model))
        .fold(ModelSet::NONE, |s, id| s.with(id))
}

/// The nodes of a region, from its inventory: named `<region>-<model>-<n>`,
/// labelled with the region.
pub fn node_specs(catalog: &Catalog, region: usize) -> Result<Vec<NodeSpec>, InputError> {
    let reg = &catalog.regions[region];
    let mut specs = Vec::new();
    for inv in &reg.inventory {
        let cpu_milli = u32::try_from(inv.cpu_milli).map_err(|_| {
            InputError::new(format!(
                "region {}: inventory cpu_milli {} is too large",
                reg.name, inv.cpu_milli
            ))
        })?;
        for _ in 0..inv.nodes {
            specs.push(NodeSpec {
                name: format!(
                    "{}-{}-{:03}",
                    reg.name,
                    inv.model.to_ascii_lowercase(),
                    specs.len()
                ),
                cpu_milli,
                memory_mib: inv.memory_mib,
                gpus: inv.gpus_per_node as u8,
                model: inv.model.clone(),
                labels: vec![(REGION_LABEL.to_string(), reg.name.clone())],
            });
        }
    }
    Ok(specs)
}

/// One replica of a job as a placement request (any model; restrict with
/// `with_models`).
pub fn replica_request(job: &ResolvedJob, shape: ReplicaShape) -> Request {
    if job.gpus_per_replica == 0 {
        Request::shared(
            shape.cpu_milli,
            shape.memory_mib,
            job.milli_per_replica as u16,
        )
    } else {
        Request::whole(
            shape.cpu_milli,
            shape.memory_mib,
            job.gpus_per_replica as u8,
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::regions::plan::JobSpec;

    /// One region with 70 W and 400 W GPUs.
    const CATALOG: &str = r#"
accelerators: [{model: A100, vendor: nvidia, power_w: 400}, {model: T4, vendor: nvidia, power_w: 70}]
regions:
  - {name: west, hub: w, side: west, pue: 1.1, green_share: 0.6, price_cny_per_kwh: 0.3,
     grid_factor_kg_per_kwh: 0.6, inventory: [
       {model: A100, nodes: 6, gpus_per_node: 8, cpu_milli: 96000, memory_mib: 393216},
       {model: T4, nodes: 6, gpus_per_node: 8, cpu_milli: 96000, memory_mib: 393216}]}
user_regions: []
links: []
"#;

    #[test]
    fn ties_go_to_the_least_power_gpus_whatever_the_seed() {
        let catalog = Catalog::from_yaml(CATALOG, "test.yaml").unwrap();
        let job: JobSpec = serde_json::from_value(serde_json::json!({
            "tenant": "t", "name": "j", "kind": "training", "gpus_per_replica": 1,
            "cpu_milli_per_replica": 8000, "memory_mib_per_replica": 16384
        }))
        .unwrap();
        let job = job.resolve(&catalog).unwrap();
        let shape = ReplicaShape {
            cpu_milli: 8000,
            memory_mib: 16384,
        };
        for policy in [Policy::default(), Policy::Fgd, Policy::BestFit] {
            for seed in 0..16 {
                let mut engines = RegionEngines::from_catalog(&catalog, policy, seed).unwrap();
                engines.observe_arrival(&catalog, &job, shape);
                let mut expl = Explanation::default();
                expl.candidates.push(crate::regions::plan::Candidate {
                    region: 0,
                    verdict: Verdict::Ranked { rank: 0 },
                    terms: None,
                    fit: None,
                });
                let p = engines
                    .place(&catalog, &job, shape, &mut [0], &mut expl)
                    .unwrap();
                let c = engines.engine(0).cluster();
                assert_eq!(
                    c.models().name(c.model(p.decisions[0].node)),
                    "T4",
                    "{policy} seed {seed}: an empty region's tie goes to the 70 W GPUs"
                );
            }
        }
    }
}

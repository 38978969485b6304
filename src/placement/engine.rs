//! The placement engine: a cluster, a policy and the caches that make scoring cheap.

use std::collections::HashMap;
use std::fmt;

use rand::seq::SliceRandom;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

use super::cluster::{Cluster, MAX_DEVICES_PER_NODE};
use super::fgd::{sigmoid_score, FragMemo, FxBuild, ShapeCounter, Shapes};
use super::model::MAX_MODELS;
use super::policy::Policy;
use super::recall::{Best, Fit, Lookup, Recall, Top, LOG};
use super::request::{Decision, DeviceMask, GpuDemand, Request, MILLI_PER_GPU};
use std::cell::RefCell;

/// Node score, higher is better, compared lexicographically.
pub type Score = (i64, i64);

/// Share of the workload FGD's typical shapes cover.
const SHAPE_COVERAGE: f64 = 0.95;

/// Online shape estimates are redone at 1, 2, 4, … arrivals up to this, then every this many.
const RELEARN_EVERY: u64 = 4096;

/// Cached scores kept at most (entries, over all request classes).
const CACHE_ENTRIES_MAX: usize = 2_000_000;

/// Request class: requests with equal keys score equally on equal nodes.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub(super) struct ClassKey {
    pub(super) cpu_milli: u32,
    pub(super) memory_mib: u64,
    pub(super) gpu: GpuDemand,
    pub(super) models: u64,
}

/// One node's cached score for one request class.
#[derive(Clone, Copy)]
struct Entry {
    epoch: u32,
    generation: u32,
    score: Score,
    devices: u64,
}

const INFEASIBLE: Score = (i64::MIN, i64::MIN);

const STALE: Entry = Entry {
    epoch: 0,
    generation: u32::MAX,
    score: INFEASIBLE,
    devices: 0,
};

/// Why a request fits no node: how many candidate nodes failed each check
/// (each node counted once, at the first check it fails).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct FitReport {
    pub considered: usize,
    pub wrong_model: usize,
    pub label_mismatch: usize,
    pub insufficient_cpu: usize,
    pub insufficient_memory: usize,
    pub insufficient_gpu: usize,
    pub fits: usize,
}

impl fmt::Display for FitReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{} nodes fit", self.fits, self.considered)?;
        let parts = [
            (self.wrong_model, "have no allowed GPU model"),
            (self.label_mismatch, "lack the required labels"),
            (self.insufficient_cpu, "lack CPU"),
            (self.insufficient_memory, "lack memory"),
            (self.insufficient_gpu, "lack free healthy GPU share"),
        ];
        for (n, why) in parts {
            if n > 0 {
                write!(f, "; {n} {why}")?;
            }
        }
        Ok(())
    }
}

/// A gang could not be placed all together; nothing of it stays allocated.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct GangError {
    /// Index of the first member that found no node.
    pub member: usize,
    pub report: FitReport,
}

impl fmt::Display for GangError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "gang member {} fits nowhere once the earlier members are placed: {}",
            self.member, self.report
        )
    }
}

impl std::error::Error for GangError {}

/// Owns a [`Cluster`] and decides where requests go under one [`Policy`].
///
/// Pure: no I/O, no clock. Randomness (the `random` policy and the tie-break
/// order of nodes) comes from the seed given to [`Engine::new`]. Scores are
/// cached per request class and node, and recomputed only for nodes whose
/// epoch changed, so a decision costs one pass over dense arrays.
pub struct Engine {
    cluster: Cluster,
    policy: Policy,
    /// Tie-break rank of each node (lower wins).
    pub(super) rank: Vec<u32>,
    rng: ChaCha8Rng,
    shapes: Shapes,
    memo: RefCell<FragMemo>,
    /// Shapes given up front (`set_workload`) are kept; otherwise learned online.
    shapes_fixed: bool,
    seen: ShapeCounter,
    next_relearn: u64,
    /// Bumped when scores of every node may change (new shapes).
    generation: u32,
    caches: HashMap<ClassKey, Vec<Entry>, FxBuild>,
    /// The last few best-node answers (`super::recall`).
    recall: Recall,
    /// GPU-demand tags placed on each node, with counts (for `gpuclustering`).
    affinity: Vec<Vec<(u32, u32)>>,
    /// zhisuan counts CPU-stranded GPU share as fragment (see `set_shapes`).
    count_stranding: bool,
}

impl Engine {
    /// An engine over `cluster`. `seed` draws the tie-break permutation of the
    /// nodes and drives the `random` policy.
    pub fn new(cluster: Cluster, policy: Policy, seed: u64) -> Self {
        let mut rng = ChaCha8Rng::seed_from_u64(seed);
        let mut order: Vec<u32> = (0..cluster.len() as u32).collect();
        order.shuffle(&mut rng);
        let mut rank = vec![0u32; cluster.len()];
        for (pos, &node) in order.iter().enumerate() {
            rank[node as usize] = pos as u32;
        }
        let n = cluster.len();
        Engine {
            cluster,
            policy,
            rank,
            rng,
            shapes: Shapes::default(),
            memo: RefCell::new(FragMemo::default()),
            shapes_fixed: false,
            seen: ShapeCounter::default(),
            next_relearn: 1,
            generation: 0,
            caches: HashMap::default(),
            recall: Recall::default(),
            affinity: vec![Vec::new(); n],
            count_stranding: false,
        }
    }

    /// Replaces the tie-break order: `order[i]` is the node ranked i-th.
    pub fn set_tie_order(&mut self, order: &[u32]) -> Result<(), String> {
        if order.len() != self.cluster.len() {
            return Err(format!(
                "tie order has {} nodes, cluster has {}",
                order.len(),
                self.cluster.len()
            ));
        }
        let mut seen = vec![false; order.len()];
        for (pos, &node) in order.iter().enumerate() {
            if node as usize >= order.len() || std::mem::replace(&mut seen[node as usize], true) {
                return Err(format!("tie order is not a permutation (node {node})"));
            }
            self.rank[node as usize] = pos as u32;
        }
        self.caches.clear();
        self.recall.forget();
        Ok(())
    }

    /// Fixes the typical shapes to those of a known workload (FGD's setting:
    /// the whole trace). Without it, shapes are learned from the requests seen.
    pub fn set_workload<'a>(&mut self, requests: impl IntoIterator<Item = &'a Request>) {
        self.set_shapes(Shapes::from_requests(requests, SHAPE_COVERAGE));
        self.shapes_fixed = true;
    }

    /// New typical shapes: every cached score is stale. zhisuan weighs
    /// shapes by reach (`Shapes::weigh_by_reach`), and counts GPU share
    /// stranded by exhausted CPU only while the workload asks less CPU per
    /// GPU than the cluster has; when it asks more, CPU runs out first
    /// everywhere, stranded GPUs are unavoidable and FGD's score is kept.
    fn set_shapes(&mut self, mut shapes: Shapes) {
        let c = &self.cluster;
        if self.policy == Policy::Zhisuan {
            let mut gpus_by_model = vec![0u64; MAX_MODELS];
            for n in (0..c.len() as u32).filter(|&n| c.gpu_count(n) > 0) {
                gpus_by_model[c.model(n) as usize] += c.gpu_count(n) as u64;
            }
            shapes.weigh_by_reach(&gpus_by_model);
        }
        let cluster_cpu: f64 = (0..c.len() as u32).map(|n| c.cpu_capacity(n) as f64).sum();
        let cluster_gpu = c.total_gpus() as f64 * MILLI_PER_GPU as f64;
        self.count_stranding = self.policy == Policy::Zhisuan
            && shapes.workload_gpu_per_cpu() * cluster_cpu >= cluster_gpu;
        self.memo = RefCell::new(FragMemo::new(&shapes));
        self.shapes = shapes;
        self.bump_generation();
    }

    pub fn policy(&self) -> Policy {
        self.policy
    }
    pub fn cluster(&self) -> &Cluster {
        &self.cluster
    }
    /// The typical shapes in use.
    pub fn shapes(&self) -> &Shapes {
        &self.shapes
    }

    /// Chooses a node and devices for `req` without allocating. Counts the
    /// request as an arrival for the online shape estimate.
    pub fn place(&mut self, req: &Request) -> Option<Decision> {
        self.observe(req);
        self.choose(req, None)
    }

    /// Like [`Engine::place`], restricted to `nodes` (e.g. one region's nodes).
    pub fn place_among(&mut self, req: &Request, nodes: &[u32]) -> Option<Decision> {
        self.observe(req);
        self.choose(req, Some(nodes))
    }

    /// Places and allocates; `None` if it fits nowhere.
    pub fn schedule(&mut self, req: &Request) -> Option<Decision> {
        let d = self.place(req)?;
        self.allocate(&d).expect("a fresh decision fits");
        Some(d)
    }

    /// Takes a decision's resources (it must still fit).
    pub fn allocate(&mut self, d: &Decision) -> Result<(), String> {
        self.cluster.allocate(d)?;
        self.recall.changed(d.node);
        if let Some(tag) = gpu_tag(d) {
            let tags = &mut self.affinity[d.node as usize];
            match tags.iter_mut().find(|(t, _)| *t == tag) {
                Some((_, n)) => *n += 1,
                None => tags.push((tag, 1)),
            }
        }
        Ok(())
    }

    /// Gives a decision's resources back.
    pub fn release(&mut self, d: &Decision) -> Result<(), String> {
        self.cluster.release(d)?;
        self.recall.changed(d.node);
        if let Some(tag) = gpu_tag(d) {
            let tags = &mut self.affinity[d.node as usize];
            if let Some(i) = tags.iter().position(|(t, _)| *t == tag) {
                tags[i].1 -= 1;
                if tags[i].1 == 0 {
                    tags.swap_remove(i);
                }
            }
        }
        Ok(())
    }

    /// Places and allocates every member, or none: on the first member that
    /// fits nowhere, everything placed so far is released.
    pub fn place_gang(
        &mut self,
        members: &[Request],
        nodes: Option<&[u32]>,
    ) -> Result<Vec<Decision>, GangError> {
        let mut placed = Vec::with_capacity(members.len());
        for (i, req) in members.iter().enumerate() {
            self.observe(req);
            match self.choose(req, nodes) {
                Some(d) => {
                    self.allocate(&d).expect("a fresh decision fits");
                    placed.push(d);
                }
                None => {
                    let report = self.explain(req, nodes);
                    for d in placed.iter().rev() {
                        self.release(d).expect("rollback of a gang member");
                    }
                    return Err(GangError { member: i, report });
                }
            }
        }
        Ok(placed)
    }

    /// Marks a device (un)healthy; unhealthy devices take no new work.
    pub fn set_device_health(
        &mut self,
        node: u32,
        device: usize,
        healthy: bool,
    ) -> Result<(), String> {
        self.cluster.set_device_health(node, device, healthy)?;
        self.recall.changed(node);
        Ok(())
    }

    /// Why `req` fits none of `nodes` (all nodes when `None`).
    pub fn explain(&self, req: &Request, nodes: Option<&[u32]>) -> FitReport {
        let c = &self.cluster;
        let mut r = FitReport::default();
        // The request without its label selector (made once, not per node).
        let any_labels = Request {
            selector: Vec::new(),
            ..req.clone()
        };
        let mut one = |n: u32| {
            r.considered += 1;
            if req.gpu != GpuDemand::None && !c.admits(n, &any_labels) {
                r.wrong_model += 1;
            } else if !c.admits(n, req) {
                r.label_mismatch += 1;
            } else if c.cpu_free(n) < req.cpu_milli {
                r.insufficient_cpu += 1;
            } else if c.memory_free(n) < req.memory_mib {
                r.insufficient_memory += 1;
            } else if !c.fits(n, req) {
                r.insufficient_gpu += 1;
            } else {
                r.fits += 1;
            }
        };
        match nodes {
            Some(list) => list.iter().for_each(|&n| one(n)),
            None => (0..c.len() as u32).for_each(&mut one),
        }
        r
    }

    fn bump_generation(&mut self) {
        self.generation = self.generation.wrapping_add(1);
        if self.generation == u32::MAX {
            self.generation = 0;
            self.caches.clear();
        }
    }

    /// Online shape learning (see [`RELEARN_EVERY`]).
    fn observe(&mut self, req: &Request) {
        if self.shapes_fixed || !self.policy.uses_shapes() {
            return;
        }
        self.seen.add(req);
        if self.seen.total() >= self.next_relearn {
            self.set_shapes(Shapes::typical(&self.seen, SHAPE_COVERAGE));
            self.next_relearn = if self.next_relearn < RELEARN_EVERY {
                self.next_relearn * 2
            } else {
                self.next_relearn + RELEARN_EVERY
            };
        }
    }

    fn choose(&mut self, req: &Request, nodes: Option<&[u32]>) -> Option<Decision> {
        if self.policy == Policy::Random {
            return self.choose_random(req, nodes);
        }
        self.choose_scored(req, nodes).map(|(_, d)| d)
    }

    /// The node and devices `req` would get, with their score under this
    /// engine's policy (higher is better; for FGD and zhisuan, the less
    /// fragmentation it adds, the higher). `None` if it fits nowhere or the
    /// policy has no scores (`random`). Allocates nothing and does not count
    /// the request for the shapes. Scores of two engines with the same policy
    /// and typical shapes are comparable: the second level of region
    /// placement compares regions with it (`regions::plan::order_band_by_fit`).
    pub fn best(&mut self, req: &Request, nodes: Option<&[u32]>) -> Option<(Score, Decision)> {
        if self.policy == Policy::Random {
            return None;
        }
        self.choose_scored(req, nodes)
    }

    /// The best node's score and decision (scored policies only).
    fn choose_scored(&mut self, req: &Request, nodes: Option<&[u32]>) -> Option<(Score, Decision)> {
        let cacheable = req.selector.is_empty();
        let key = ClassKey {
            cpu_milli: req.cpu_milli,
            memory_mib: req.memory_mib,
            gpu: req.gpu,
            models: req.models.0,
        };
        if !cacheable {
            // Scored afresh each time (a label selector): the best node.
            let best = nodes
                .map_or(Nodes::All(0..self.cluster.len() as u32), Nodes::List)
                .filter_map(|node| {
                    let (score, devices) = self.evaluate(node, req)?;
                    Some(self.fit(node, score, devices))
                })
                .reduce(|best, fit| if fit.above(&best) { fit } else { best });
            return self.answer(req, best.map(|b| (b.score, b.node, b.devices)));
        }
        let (mut cache, known) = match self.recall.recall(key, self.generation, nodes) {
            Lookup::Hit(best) => return self.answer(req, best),
            Lookup::Changed { slot, nodes } => {
                let mut cache = self.take_cache(key);
                let mut fits = [None; LOG as usize];
                for (fit, node) in fits.iter_mut().zip(nodes.iter()) {
                    *fit = self.cached(&mut cache, node, req);
                }
                let known = self
                    .recall
                    .refresh(slot, &nodes, fits.into_iter().flatten());
                (cache, known)
            }
            Lookup::Miss => (self.take_cache(key), None),
        };
        let best = match known {
            Some(best) => best,
            None => {
                let mut top = Top::with_capacity();
                for node in nodes.map_or(Nodes::All(0..self.cluster.len() as u32), Nodes::List) {
                    if let Some(fit) = self.cached(&mut cache, node, req) {
                        top.offer(fit);
                    }
                }
                let best = top.best().expect("a full scan knows its best");
                self.recall.keep(key, self.generation, nodes, top);
                best
            }
        };
        self.caches.insert(key, cache);
        self.answer(req, best)
    }

    /// The score cache of a request class (made when new; every cache is
    /// dropped when they would grow past [`CACHE_ENTRIES_MAX`]).
    fn take_cache(&mut self, key: ClassKey) -> Vec<Entry> {
        let n = self.cluster.len();
        if !self.caches.contains_key(&key) && (self.caches.len() + 1) * n > CACHE_ENTRIES_MAX {
            self.caches.clear();
        }
        self.caches.remove(&key).unwrap_or_else(|| vec![STALE; n])
    }

    /// A node's standing for `req` from the score cache (worked out again
    /// when the node or the shapes changed); `None`: it does not fit.
    fn cached(&self, cache: &mut [Entry], node: u32, req: &Request) -> Option<Fit> {
        let e = &mut cache[node as usize];
        let epoch = self.cluster.epoch(node);
        if e.generation != self.generation || e.epoch != epoch {
            let (score, devices) = self.evaluate(node, req).unwrap_or((INFEASIBLE, 0));
            *e = Entry {
                epoch,
                generation: self.generation,
                score,
                devices,
            };
        }
        (e.score != INFEASIBLE).then(|| self.fit(node, e.score, e.devices))
    }

    fn fit(&self, node: u32, score: Score, devices: u64) -> Fit {
        Fit {
            score,
            rank: self.rank[node as usize],
            node,
            devices,
        }
    }

    fn answer(&self, req: &Request, best: Best) -> Option<(Score, Decision)> {
        let (score, node, devices) = best?;
        Some((score, self.decision(node, req, DeviceMask(devices))))
    }

    fn decision(&self, node: u32, req: &Request, devices: DeviceMask) -> Decision {
        let milli_per_device = match req.gpu {
            GpuDemand::None => 0,
            GpuDemand::Shared { milli } => milli,
            GpuDemand::Whole { .. } => MILLI_PER_GPU,
        };
        Decision {
            node,
            devices,
            milli_per_device,
            cpu_milli: req.cpu_milli,
            memory_mib: req.memory_mib,
        }
    }

    fn choose_random(&mut self, req: &Request, nodes: Option<&[u32]>) -> Option<Decision> {
        let mut chosen = None;
        let mut feasible = 0u32;
        let all: Vec<u32>;
        let list = match nodes {
            Some(l) => l,
            None => {
                all = (0..self.cluster.len() as u32).collect();
                &all
            }
        };
        for &node in list {
            if self.cluster.fits(node, req) {
                feasible += 1;
                if self.rng.random_range(0..feasible) == 0 {
                    chosen = Some(node);
                }
            }
        }
        let node = chosen?;
        let devices = match req.gpu {
            GpuDemand::None => DeviceMask(0),
            GpuDemand::Shared { milli } => {
                let fitting: Vec<usize> = (0..self.cluster.gpu_count(node))
                    .filter(|&d| self.cluster.usable_free(node, d) >= milli)
                    .collect();
                DeviceMask::single(fitting[self.rng.random_range(0..fitting.len())])
            }
            GpuDemand::Whole { count } => self.cluster.free_whole_devices(node, count as usize)?,
        };
        Some(self.decision(node, req, devices))
    }

    /// Score of placing `req` on `node` and the devices it would use; `None` if it does not fit.
    fn evaluate(&self, node: u32, req: &Request) -> Option<(Score, u64)> {
        let c = &self.cluster;
        if !c.host_fits(node, req) || !c.admits(node, req) {
            return None;
        }
        let g = c.gpu_count(node);
        let mut free = [0u16; MAX_DEVICES_PER_NODE];
        for (d, f) in free.iter_mut().enumerate().take(g) {
            *f = c.usable_free(node, d);
        }
        let free = &mut free[..g];
        // Devices the request would take, by the least-free-that-fits rule.
        let devices = match req.gpu {
            GpuDemand::None => 0,
            GpuDemand::Shared { milli } => {
                let d = (0..g)
                    .filter(|&d| free[d] >= milli)
                    .min_by_key(|&d| free[d])?;
                1u64 << d
            }
            GpuDemand::Whole { count } => c.free_whole_devices(node, count as usize)?.0,
        };
        let cpu_left = c.cpu_free(node) - req.cpu_milli;
        let gpu_left = free.iter().map(|&f| f as i64).sum::<i64>() - req.gpu.total_milli() as i64;
        match self.policy {
            Policy::Random => unreachable!("random is chosen without scores"),
            Policy::BestFit => {
                let s = 0.5 * cpu_left as f64 / 128_000.0 + 0.5 * gpu_left as f64 / 8000.0;
                Some(((((1.0 - s) * 100.0) as i64, 0), devices))
            }
            Policy::DotProd => Some(self.dot_product(node, req, free)),
            Policy::GpuPacking => Some(((packing_score(free, req), 0), devices)),
            Policy::GpuClustering => {
                let total_left = free.iter().map(|&f| f as i64).sum::<i64>();
                let base = 25 * (8000 - total_left.min(8000)) / 8000;
                let tags = &self.affinity[node as usize];
                let band = match gpu_tag_of(req.gpu) {
                    None => return Some(((0, 0), devices)),
                    Some(tag) if tags.iter().any(|(t, _)| *t == tag) => {
                        if tags.len() == 1 {
                            75
                        } else {
                            50
                        }
                    }
                    Some(_) => {
                        if tags.is_empty() {
                            25
                        } else {
                            0
                        }
                    }
                };
                Some(((base + band, 0), devices))
            }
            Policy::Fgd | Policy::Zhisuan => {
                Some(self.fragmentation_score(node, req, free, cpu_left, devices))
            }
        }
    }

    fn fragmentation_score(
        &self,
        node: u32,
        req: &Request,
        free: &mut [u16],
        cpu_left: u32,
        devices: u64,
    ) -> (Score, u64) {
        let c = &self.cluster;
        let model = c.model(node);
        let cpu_free = c.cpu_free(node);
        let mut memo = self.memo.borrow_mut();
        let zhisuan = self.policy == Policy::Zhisuan;
        // zhisuan also counts the GPU share the node's CPU could no longer
        // feed as fragment (see `Shapes::cpu_stranded`); it depends on the
        // node's totals only, so it is the same for every device choice.
        let (stranded_before, stranded_after) = if self.count_stranding {
            let gpu_free: u32 = free.iter().map(|&f| f as u32).sum();
            let gpu_left = gpu_free - req.gpu.total_milli();
            (
                self.shapes.cpu_stranded(model, cpu_free, gpu_free),
                self.shapes.cpu_stranded(model, cpu_left, gpu_left),
            )
        } else {
            (0.0, 0.0)
        };
        let before = memo.fragmentation(&self.shapes, model, cpu_free, free) + stranded_before;
        // zhisuan refines FGD's choice of device within a node: equal
        // score, then least fragmentation, then the fullest device (best fit).
        let refine_device = zhisuan;
        match req.gpu {
            GpuDemand::Shared { milli } => {
                let mut best: Option<(Score, u64)> = None;
                let mut tried = [u16::MAX; MAX_DEVICES_PER_NODE];
                for d in 0..free.len() {
                    let f = free[d];
                    if f < milli || tried[..d].contains(&f) {
                        continue;
                    }
                    tried[d] = f;
                    free[d] -= milli;
                    let after =
                        memo.fragmentation(&self.shapes, model, cpu_left, free) + stranded_after;
                    free[d] += milli;
                    let q = sigmoid_score(before, after);
                    let s = if refine_device {
                        (q, -(((after - before) * 16.0) as i64) * 2000 - f as i64)
                    } else {
                        (q, 0)
                    };
                    if best.is_none_or(|(bs, _)| s > bs) {
                        best = Some((s, 1u64 << d));
                    }
                }
                let ((q, _), d) = best.expect("a device fits: checked by evaluate");
                // Nodes compete on FGD's score alone; the seeded node order
                // breaks ties, which packs (see docs/benchmarks.md, "Protocol").
                ((q, 0), d)
            }
            _ => {
                for d in DeviceMask(devices).iter() {
                    free[d] = 0;
                }
                let after =
                    memo.fragmentation(&self.shapes, model, cpu_left, free) + stranded_after;
                ((sigmoid_score(before, after), 0), devices)
            }
        }
    }

    fn dot_product(&self, node: u32, req: &Request, free: &[u16]) -> (Score, u64) {
        let c = &self.cluster;
        let cpu_cap = c.cpu_capacity(node).max(1) as f64;
        let cpu_term = (c.cpu_free(node) as f64 / cpu_cap) * (req.cpu_milli as f64 / cpu_cap);
        let to_score = |gpu_term: f64| (((1.0 - (cpu_term + gpu_term) / 2.0) * 100.0) as i64, 0);
        match req.gpu {
            GpuDemand::Shared { milli } => {
                let mut best: Option<(Score, u64)> = None;
                for (d, &f) in free.iter().enumerate() {
                    if f >= milli {
                        let s = to_score((f as f64 / 1000.0) * (milli as f64 / 1000.0));
                        if best.is_none_or(|(bs, _)| s > bs) {
                            best = Some((s, 1u64 << d));
                        }
                    }
                }
                best.expect("a device fits")
            }
            GpuDemand::None => (to_score(0.0), 0),
            GpuDemand::Whole { count } => {
                let cap = (free.len().max(1) * 1000) as f64;
                let total: f64 = free.iter().map(|&f| f as f64).sum();
                let devices = c
                    .free_whole_devices(node, count as usize)
                    .map_or(0, |m| m.0);
                (
                    to_score((total / cap) * (count as f64 * 1000.0 / cap)),
                    devices,
                )
            }
        }
    }
}

/// GPU-demand tag of a request (`gpuclustering` groups equal tags).
fn gpu_tag_of(g: GpuDemand) -> Option<u32> {
    match g {
        GpuDemand::None => None,
        GpuDemand::Shared { milli } => Some(milli as u32),
        GpuDemand::Whole { count } => Some(count as u32 * 1000),
    }
}

fn gpu_tag(d: &Decision) -> Option<u32> {
    if d.devices.is_empty() {
        None
    } else if d.milli_per_device < MILLI_PER_GPU {
        Some(d.milli_per_device as u32)
    } else {
        Some(d.devices.len() as u32 * 1000)
    }
}

/// The GpuPacking score: partly used GPUs first, then free GPUs on used nodes, then idle nodes.
fn packing_score(free: &[u16], req: &Request) -> i64 {
    let (milli, mut need) = match req.gpu {
        GpuDemand::None => return 0,
        GpuDemand::Shared { milli } => (milli, 1usize),
        GpuDemand::Whole { count } => (MILLI_PER_GPU, count as usize),
    };
    let fully_free = free.iter().filter(|&&f| f == MILLI_PER_GPU).count() as i64;
    if fully_free == free.len() as i64 {
        return (33 - fully_free).max(fully_free);
    }
    let mut order: Vec<usize> = (0..free.len()).collect();
    order.sort_by_key(|&d| free[d]);
    let mut fully_used = 0i64;
    let mut ratio = 0i64;
    for d in order {
        if need == 0 {
            break;
        }
        if free[d] >= milli {
            need -= 1;
            ratio += free[d] as i64 * 100 / 1000;
            if free[d] == MILLI_PER_GPU {
                fully_used += 1;
            }
        }
    }
    if fully_used > 0 {
        (50 - fully_used).max(33)
    } else {
        (100 - ratio / 10).max(50)
    }
}

/// The nodes a scan visits: a list, or every node.
enum Nodes<'a> {
    List(&'a [u32]),
    All(std::ops::Range<u32>),
}

impl Iterator for Nodes<'_> {
    type Item = u32;
    fn next(&mut self) -> Option<u32> {
        match self {
            Nodes::List(list) => {
                let (&first, rest) = list.split_first()?;
                *list = rest;
                Some(first)
            }
            Nodes::All(range) => range.next(),
        }
    }
}

//! Step 1: capacity. A placement engine over every node, with unhealthy
//! devices marked and everything already running allocated; each region's
//! schedulable nodes; GPUs held per tenant and model.

use std::collections::{BTreeMap, BTreeSet, HashMap};

use crate::jobs::{NodeView, WorkloadKey, WorkloadView};
use crate::placement::{Cluster, Decision, DeviceMask, Engine, FxBuild, NodeSpec};
use crate::regions::nodes::energy_tie_order;

use super::{is_active, Pass, Plan, PlanConfig, Snapshot};

/// An allocation in the engine and the pass that last confirmed it.
struct Held {
    ds: Vec<Decision>,
    epoch: u64,
}

type Holdings = HashMap<String, Held, FxBuild>;

/// Makes `key` hold `ds` (confirmed in `epoch`): kept when it already
/// does, reallocated when it holds something else (the decisions that do
/// not fit are left out). False when some did not fit.
fn hold(engine: &mut Engine, map: &mut Holdings, key: &str, ds: Vec<Decision>, epoch: u64) -> bool {
    if let Some(h) = map.get_mut(key) {
        if h.ds == ds {
            h.epoch = epoch;
            return true;
        }
        for d in &h.ds {
            let _ = engine.release(d);
        }
        map.remove(key);
    }
    let asked = ds.len();
    let ok: Vec<Decision> = ds
        .into_iter()
        .filter(|d| engine.allocate(d).is_ok())
        .collect();
    let all = ok.len() == asked;
    map.insert(key.to_string(), Held { ds: ok, epoch });
    all
}

/// Releases every holding of a map.
fn release_all(engine: &mut Engine, map: &mut Holdings) {
    for h in map.values() {
        for d in &h.ds {
            let _ = engine.release(d);
        }
    }
    map.clear();
}

/// Releases every holding not confirmed in `epoch`.
fn drop_stale(engine: &mut Engine, map: &mut Holdings, epoch: u64) {
    map.retain(|_, h| {
        if h.epoch == epoch {
            return true;
        }
        for d in &h.ds {
            let _ = engine.release(d);
        }
        false
    });
}

/// The node fields the placement engine is built from.
#[derive(Clone, Debug, PartialEq)]
struct NodeShape {
    name: String,
    cpu_milli: u32,
    memory_mib: u64,
    gpus: u8,
    model: String,
    vendor: String,
    labels: Vec<(String, String)>,
}

impl NodeShape {
    /// Whether a node view has this shape (no allocation).
    fn matches(&self, n: &NodeView) -> bool {
        let model = if n.model.is_empty() {
            "unknown"
        } else {
            n.model.as_str()
        };
        self.name == n.name
            && self.cpu_milli == n.cpu_milli
            && self.memory_mib == n.memory_mib
            && self.gpus == n.gpus
            && self.model == model
            && self.vendor == n.vendor
            && self.labels == n.labels
    }

    fn of(n: &NodeView) -> NodeShape {
        NodeShape {
            name: n.name.clone(),
            cpu_milli: n.cpu_milli,
            memory_mib: n.memory_mib,
            gpus: n.gpus,
            model: if n.model.is_empty() {
                "unknown".into()
            } else {
                n.model.clone()
            },
            vendor: n.vendor.clone(),
            labels: n.labels.clone(),
        }
    }
}

/// Board power per accelerator model of the region catalog (the tie order).
fn power_table(snapshot: &Snapshot) -> Option<Vec<(String, f64)>> {
    snapshot.regions.as_ref().map(|rc| {
        rc.catalog
            .accelerators
            .iter()
            .map(|a| (a.model.clone(), a.power_w))
            .collect()
    })
}

/// Capacity bookkeeping over the placement engine, kept between passes by
/// the [`super::Scheduler`]: each pass brings the allocations in step with
/// the snapshot ([`Capacity::sync`]) instead of rebuilding the engine, so
/// its score caches survive; a changed node set rebuilds it.
pub(super) struct Capacity {
    pub(super) engine: Engine,
    /// The engine's nodes, by engine index (refreshed every pass).
    pub(super) nodes: Vec<NodeView>,
    /// Node name → engine index.
    pub(super) index: HashMap<String, u32, FxBuild>,
    /// Engine index of each snapshot node (in the snapshot's order).
    pub(super) slot: Vec<Option<u32>>,
    /// Accelerator models the nodes have (sorted).
    pub(super) known: Vec<String>,
    /// (model, vendor) of the nodes.
    pub(super) model_vendors: BTreeSet<(String, String)>,
    /// What the engine was built from: the snapshot's nodes and power table.
    built_from: (Vec<NodeShape>, Option<Vec<(String, f64)>>),
    /// Allocations of workloads (by uid): admitted or running ones'
    /// recorded placements, and placements made this pass.
    workloads: Holdings,
    /// Allocations of live pods no active workload owns (`namespace/name`).
    pods: Holdings,
    /// Passes synced so far.
    epoch: u64,
    /// Devices marked unhealthy in the engine, per engine node.
    unhealthy: Vec<Vec<u8>>,
}

impl Capacity {
    /// A fresh engine over the snapshot's nodes, nothing allocated.
    pub(super) fn build(snapshot: &Snapshot, config: &PlanConfig) -> Capacity {
        let mut cluster = Cluster::new();
        let mut nodes = Vec::new();
        let mut index = HashMap::default();
        let mut slot = Vec::with_capacity(snapshot.nodes.len());
        let shapes: Vec<NodeShape> = snapshot.nodes.iter().map(NodeShape::of).collect();
        for (n, shape) in snapshot.nodes.iter().zip(&shapes) {
            let spec = NodeSpec {
                name: shape.name.clone(),
                cpu_milli: shape.cpu_milli,
                memory_mib: shape.memory_mib,
                gpus: shape.gpus,
                model: shape.model.clone(),
                labels: shape.labels.clone(),
            };
            // A node the engine cannot take (too many devices) is left out
            // of placement; pods on it are not counted.
            let i = cluster.add_node(&spec).ok();
            if let Some(i) = i {
                index.insert(n.name.clone(), i);
                nodes.push(n.clone());
            }
            slot.push(i);
        }
        let mut engine = Engine::new(cluster, config.policy, config.seed);
        if let Some(rc) = &snapshot.regions {
            // Ties go to the nodes whose GPUs draw the least power.
            let order = energy_tie_order(&rc.catalog, engine.cluster(), config.seed);
            engine
                .set_tie_order(&order)
                .expect("a permutation of the cluster's nodes");
        }
        engine.keep_domains_together();
        let unhealthy = vec![Vec::new(); nodes.len()];
        Capacity {
            engine,
            nodes,
            index,
            built_from: (shapes, power_table(snapshot)),
            slot,
            known: super::known_models(&snapshot.nodes).into_iter().collect(),
            model_vendors: snapshot
                .nodes
                .iter()
                .map(|n| (n.model.clone(), n.vendor.clone()))
                .collect(),
            workloads: Holdings::default(),
            pods: Holdings::default(),
            epoch: 0,
            unhealthy,
        }
    }

    /// Whether the engine was built from this snapshot's nodes.
    pub(super) fn fits(&self, snapshot: &Snapshot) -> bool {
        let (shapes, power) = &self.built_from;
        shapes.len() == snapshot.nodes.len()
            && shapes
                .iter()
                .zip(&snapshot.nodes)
                .all(|(s, n)| s.matches(n))
            && *power == power_table(snapshot)
    }

    /// Brings the engine in step with the snapshot: node views refreshed,
    /// device health as reported, and exactly the active workloads'
    /// recorded placements and the other live pods' devices held (the
    /// others released, the missing allocated).
    fn sync(&mut self, snapshot: &Snapshot, active: &[&WorkloadView]) {
        // `fits` held: the snapshot's nodes are the engine's, in order, and
        // only what placement does not build from may have changed.
        for (n, slot) in snapshot.nodes.iter().zip(&self.slot) {
            let Some(i) = *slot else { continue };
            let mine = &mut self.nodes[i as usize];
            if mine.schedulable != n.schedulable
                || mine.unhealthy != n.unhealthy
                || mine.region != n.region
            {
                *mine = n.clone();
            }
        }
        // Allocations are brought in step over healthy devices, as over a
        // fresh engine (where health is marked after them).
        for (i, devs) in self.unhealthy.iter().enumerate() {
            for &dev in devs {
                let _ = self.engine.set_device_health(i as u32, dev as usize, true);
            }
        }
        self.epoch += 1;
        // Whatever did not fit is held again in a fresh engine's order:
        // the workloads in the snapshot's, then the other pods.
        let rebuilt = !self.hold_workloads(active);
        if rebuilt {
            // A record that claims devices another holds (or held until
            // now): both layers again over an empty engine.
            release_all(&mut self.engine, &mut self.workloads);
            release_all(&mut self.engine, &mut self.pods);
            self.hold_workloads(active);
        }
        if !self.hold_pods(snapshot, active) && !rebuilt {
            // A pod that did not fit (say, a preempted workload's pod, still
            // terminating on devices its preemptor now holds): the pods
            // again over the workloads, not every placement.
            release_all(&mut self.engine, &mut self.pods);
            self.hold_pods(snapshot, active);
        }
        // Health last, as over a fresh engine: allocations on a device that
        // failed stay (its pods run until stopped); it is given out no more.
        for i in 0..self.nodes.len() {
            for &dev in &self.nodes[i].unhealthy {
                let _ = self.engine.set_device_health(i as u32, dev as usize, false);
            }
            self.unhealthy[i].clone_from(&self.nodes[i].unhealthy);
        }
    }

    /// Holds exactly the active workloads' recorded placements (those
    /// confirmed in place kept, the departed released, the changed
    /// reallocated); false when some decision did not fit.
    fn hold_workloads(&mut self, active: &[&WorkloadView]) -> bool {
        let epoch = self.epoch;
        let mut all = true;
        // Most hold what they held last pass: confirmed in place. The
        // others' old holdings and those of the departed are released
        // before the changed ones are allocated (they may take the same
        // devices, as over a fresh engine).
        let mut changed = Vec::new();
        for w in active {
            match self.workloads.get_mut(w.uid.as_str()) {
                Some(h) if placed_as(self.engine.cluster(), w, &h.ds) => h.epoch = epoch,
                _ => changed.push(*w),
            }
        }
        drop_stale(&mut self.engine, &mut self.workloads, epoch);
        for w in changed {
            let ds = self.decisions_of(w);
            all &= hold(&mut self.engine, &mut self.workloads, &w.uid, ds, epoch);
        }
        all
    }

    /// Holds exactly the devices of the live pods no active workload owns;
    /// false when some did not fit.
    fn hold_pods(&mut self, snapshot: &Snapshot, active: &[&WorkloadView]) -> bool {
        let epoch = self.epoch;
        let mut all = true;
        if !snapshot.pods.is_empty() {
            let mut owners: std::collections::HashSet<&WorkloadKey, FxBuild> =
                std::collections::HashSet::with_capacity_and_hasher(
                    active.len(),
                    FxBuild::default(),
                );
            owners.extend(active.iter().map(|w| &w.key));
            let mut on_nodes: BTreeMap<String, Vec<Decision>> = BTreeMap::new();
            for p in &snapshot.pods {
                if p.terminal() || p.owner.as_ref().is_some_and(|o| owners.contains(o)) {
                    continue;
                }
                let Some(node) = &p.node else { continue };
                let devices = p.devices.iter().map(|&d| u32::from(d));
                let d = self.decision(node, devices, p.milli, p.cpu_milli, p.memory_mib);
                if let Some(d) = d {
                    let key = format!("{}/{}", p.namespace, p.name);
                    on_nodes.entry(key).or_default().push(d);
                }
            }
            for (key, ds) in on_nodes {
                all &= hold(&mut self.engine, &mut self.pods, &key, ds, epoch);
            }
        }
        drop_stale(&mut self.engine, &mut self.pods, epoch);
        all
    }

    /// Allocates decisions for a workload (those that fit are kept).
    pub(super) fn allocate(&mut self, uid: &str, ds: Vec<Decision>) {
        hold(&mut self.engine, &mut self.workloads, uid, ds, self.epoch);
    }

    /// Records decisions the engine allocated just now (a placement).
    pub(super) fn record(&mut self, uid: &str, ds: &[Decision]) {
        let held = Held {
            ds: ds.to_vec(),
            epoch: self.epoch,
        };
        self.workloads.insert(uid.to_string(), held);
    }

    /// Releases what a workload holds; returns it.
    pub(super) fn release(&mut self, uid: &str) -> Vec<Decision> {
        let ds = self.workloads.remove(uid).map(|h| h.ds).unwrap_or_default();
        for d in &ds {
            let _ = self.engine.release(d);
        }
        ds
    }

    /// Whether a workload holds capacity now.
    pub(super) fn holds(&self, uid: &str) -> bool {
        self.workloads.contains_key(uid)
    }

    /// The engine nodes a workload holds capacity on.
    pub(super) fn held_nodes(&self, uid: &str) -> impl Iterator<Item = u32> + '_ {
        self.workloads
            .get(uid)
            .into_iter()
            .flat_map(|h| h.ds.iter().map(|d| d.node))
    }

    pub(super) fn decision(
        &self,
        node: &str,
        devices: impl IntoIterator<Item = u32>,
        milli: Option<u16>,
        cpu: u32,
        mem: u64,
    ) -> Option<Decision> {
        let node = *self.index.get(node)?;
        Some(Decision {
            node,
            devices: device_mask(devices),
            milli_per_device: milli.unwrap_or(1000),
            cpu_milli: cpu,
            memory_mib: mem,
        })
    }

    /// Decisions of a workload's recorded placement.
    pub(super) fn decisions_of(&self, w: &WorkloadView) -> Vec<Decision> {
        let Some(p) = &w.status.placement else {
            return Vec::new();
        };
        p.replicas
            .iter()
            .filter_map(|r| {
                self.decision(
                    &r.node,
                    r.devices.iter().copied(),
                    r.gpu_milli.map(|m| m as u16),
                    w.cpu_milli,
                    w.memory_mib,
                )
            })
            .collect()
    }
}

impl<'a> Pass<'a> {
    /// Step 1: capacity held by admitted/running workloads and by other live
    /// pods; each region's schedulable nodes; usage per tenant and model.
    pub(super) fn new(
        snapshot: &'a Snapshot,
        config: &'a PlanConfig,
        mut cap: Capacity,
    ) -> Pass<'a> {
        let active: Vec<&WorkloadView> =
            snapshot.workloads.iter().filter(|w| is_active(w)).collect();
        cap.sync(snapshot, &active);
        // With a region catalog, a node's region is the one whose members
        // hold it (each node belongs to one region at most).
        // (Names are written only where they changed: no string per node
        // per pass.)
        if let Some(rc) = &snapshot.regions {
            let mut region_of: Vec<Option<usize>> = vec![None; cap.nodes.len()];
            for (r, members) in rc.members.iter().enumerate() {
                for &m in members {
                    if let Some(ci) = cap.slot[m] {
                        region_of[ci as usize] = Some(r);
                    }
                }
            }
            for (n, r) in cap.nodes.iter_mut().zip(region_of) {
                let name = r.map_or("", |r| rc.catalog.regions[r].name.as_str());
                if n.region != name {
                    n.region = name.to_string();
                }
            }
        }
        let region_nodes = region_nodes(snapshot, &cap);
        let one_vendor = one_vendor(&region_nodes, &cap.nodes);
        let zones = super::zones::Zones::new(snapshot, &cap.slot, &cap.nodes);
        let node_model = snapshot
            .nodes
            .iter()
            .map(|n| (n.name.as_str(), n.model.as_str()))
            .collect();
        let mut pass = Pass {
            snapshot,
            config,
            now: snapshot.now,
            cap,
            region_nodes,
            one_vendor,
            node_model,
            pods: Default::default(),
            usage: Default::default(),
            admitted: Default::default(),
            held: Default::default(),
            catalog_digest: None,
            zones,
            spared: crate::placement::ModelSet::NONE,
            spared_regions: 0,
            waited_regions: 0,
            bound_regions: 0,
            out: Plan::default(),
        };
        // Summed per (tenant, model) first: the usage maps are written once
        // a pair, not once a replica.
        let mut held: HashMap<(&str, &str), u64, FxBuild> = HashMap::default();
        for w in &active {
            *pass.admitted.entry(w.tenant.as_str()).or_default() += 1;
            let milli = w.milli_per_replica();
            for r in &w.status.placement.as_ref().unwrap().replicas {
                let model = pass.model_of_node(&r.node);
                *held.entry((w.tenant.as_str(), model)).or_default() += milli;
            }
        }
        for ((tenant, model), milli) in held {
            pass.usage.add(tenant, model, milli);
        }
        pass
    }
}

/// The vendor of each region whose schedulable nodes are all of one.
fn one_vendor(
    region_nodes: &BTreeMap<String, Vec<u32>>,
    nodes: &[NodeView],
) -> BTreeMap<String, String> {
    region_nodes
        .iter()
        .filter_map(|(region, list)| {
            let first = &nodes[*list.first()? as usize].vendor;
            list.iter()
                .all(|&i| nodes[i as usize].vendor == *first)
                .then(|| (region.clone(), first.clone()))
        })
        .collect()
}

/// Schedulable nodes (engine indices) of each region.
fn region_nodes(snapshot: &Snapshot, cap: &Capacity) -> BTreeMap<String, Vec<u32>> {
    let mut out: BTreeMap<String, Vec<u32>> = BTreeMap::new();
    match &snapshot.regions {
        Some(rc) => {
            for (r, members) in rc.members.iter().enumerate() {
                let list: Vec<u32> = members
                    .iter()
                    .filter_map(|&m| cap.slot[m])
                    .filter(|&ci| cap.nodes[ci as usize].schedulable)
                    .collect();
                out.insert(rc.catalog.regions[r].name.clone(), list);
            }
        }
        None => {
            for (i, n) in cap.nodes.iter().enumerate() {
                let list = out.entry(n.region.clone()).or_default();
                if n.schedulable {
                    list.push(i as u32);
                }
            }
        }
    }
    out
}

/// A device list as a mask (devices past 63 left out).
fn device_mask(devices: impl IntoIterator<Item = u32>) -> DeviceMask {
    DeviceMask(
        devices
            .into_iter()
            .filter(|&d| d < 64)
            .fold(0u64, |mask, d| mask | 1 << d),
    )
}

/// Whether `held` is exactly what [`Capacity::decisions_of`] makes of
/// the workload's recorded placement, every replica on a known node
/// (compared in place: nothing is built).
fn placed_as(cluster: &Cluster, w: &WorkloadView, held: &[Decision]) -> bool {
    let Some(p) = &w.status.placement else {
        return false;
    };
    held.len() == p.replicas.len()
        && p.replicas.iter().zip(held).all(|(r, d)| {
            cluster.name(d.node) == r.node
                && d.devices == device_mask(r.devices.iter().copied())
                && d.milli_per_device == r.gpu_milli.map_or(1000, |m| m as u16)
                && d.cpu_milli == w.cpu_milli
                && d.memory_mib == w.memory_mib
        })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::jobs::{Placement, ReplicaPlacement};
    use crate::schedule::tests::{node, workload};

    /// A held allocation is confirmed in place only when it is exactly
    /// what the recorded placement makes: another node, other devices or
    /// another share is a change.
    #[test]
    fn a_holding_is_confirmed_only_when_the_record_is_unchanged() {
        let snap = Snapshot {
            nodes: vec![node("n1", "r", 4), node("n2", "r", 4)],
            ..Default::default()
        };
        let cap = Capacity::build(&snap, &PlanConfig::default());
        let mut w = workload("w", "t", 1, 2, 0, 1);
        let record = |node: &str, devices: Vec<u32>, milli: Option<u32>| Placement {
            replicas: vec![ReplicaPlacement {
                pod: "w-0".into(),
                node: node.into(),
                devices,
                gpu_milli: milli,
            }],
            ..Default::default()
        };
        w.status.placement = Some(record("n1", vec![0, 1], None));
        let held = cap.decisions_of(&w);
        let cluster = cap.engine.cluster();
        assert!(placed_as(cluster, &w, &held));
        for changed in [
            record("n2", vec![0, 1], None),
            record("n1", vec![1, 2], None),
            record("n1", vec![0, 1], Some(500)),
        ] {
            w.status.placement = Some(changed);
            assert!(!placed_as(cluster, &w, &held));
        }
        w.status.placement = None;
        assert!(!placed_as(cluster, &w, &held));
    }
}

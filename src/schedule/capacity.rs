//! Step 1: capacity. A placement engine over every node, with unhealthy
//! devices marked and everything already running allocated; each region's
//! schedulable nodes; GPUs held per tenant and model.

use std::collections::BTreeMap;

use crate::jobs::{pods_by_owner, NodeView, WorkloadKey, WorkloadView};
use crate::placement::{Cluster, Decision, DeviceMask, Engine, NodeSpec};

use super::{is_active, Pass, Plan, PlanConfig, Snapshot};

/// Capacity bookkeeping over the placement engine.
pub(super) struct Capacity {
    pub(super) engine: Engine,
    /// The engine's nodes, by engine index.
    pub(super) nodes: Vec<NodeView>,
    /// Node name → engine index.
    pub(super) index: BTreeMap<String, u32>,
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

    pub(super) fn decision(
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
    pub(super) fn decisions_of(&self, w: &WorkloadView) -> Vec<Decision> {
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

impl<'a> Pass<'a> {
    /// Step 1: capacity held by admitted/running workloads and by other live
    /// pods; each region's schedulable nodes; usage per tenant and model.
    pub(super) fn new(snapshot: &'a Snapshot, config: &'a PlanConfig) -> Pass<'a> {
        let (mut cap, _warnings) = Capacity::new(snapshot, config);
        // With a region catalog, a node's region is the one whose members
        // hold it (each node belongs to one region at most).
        if let Some(rc) = &snapshot.regions {
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
        let region_nodes = region_nodes(snapshot, &cap);
        let mut active: BTreeMap<&WorkloadKey, Vec<Decision>> = BTreeMap::new();
        for w in snapshot.workloads.iter().filter(|w| is_active(w)) {
            let ds = cap.decisions_of(w);
            for d in &ds {
                let _ = cap.engine.allocate(d);
            }
            active.insert(&w.key, ds);
        }
        for p in &snapshot.pods {
            let owned_by_active = p.owner.as_ref().is_some_and(|o| active.contains_key(o));
            if owned_by_active || p.terminal() {
                continue;
            }
            if let Some(node) = &p.node {
                if let Some(d) = cap.decision(node, &p.devices, p.milli, p.cpu_milli, p.memory_mib)
                {
                    let _ = cap.engine.allocate(&d);
                }
            }
        }
        for (i, n) in cap.nodes.iter().enumerate() {
            for &dev in &n.unhealthy {
                let _ = cap.engine.set_device_health(i as u32, dev as usize, false);
            }
        }
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
            node_model,
            pods: pods_by_owner(&snapshot.pods),
            active,
            usage: Default::default(),
            out: Plan::default(),
        };
        for w in snapshot.workloads.iter().filter(|w| is_active(w)) {
            for r in &w.status.placement.as_ref().unwrap().replicas {
                let model = pass.model_of_node(&r.node).to_string();
                pass.usage.add(&w.tenant, &model, w.milli_per_replica());
            }
        }
        pass
    }
}

/// Schedulable nodes (engine indices) of each region.
fn region_nodes(snapshot: &Snapshot, cap: &Capacity) -> BTreeMap<String, Vec<u32>> {
    let mut out: BTreeMap<String, Vec<u32>> = BTreeMap::new();
    match &snapshot.regions {
        Some(rc) => {
            for (r, members) in rc.members.iter().enumerate() {
                let list: Vec<u32> = members
                    .iter()
                    .filter_map(|&m| cap.index.get(&snapshot.nodes[m].name).copied())
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

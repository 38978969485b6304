//! Sim telemetry for the demo: a node agent with the sim backend on a few
//! nodes of each region, driven by what the world placed there (a device's
//! utilisation follows its allocated share; the pods on it are the jobs'
//! replicas), so the agent's DCGM-compatible series and per-pod energy show
//! up on `/metrics` beside the rest.
//!
//! Each agent registers its metrics on its own registry (the agent's metrics
//! are one set per node); [`AgentsCollector`] puts them on the demo's registry.

use super::tracker::JobTracker;
use crate::jobs::NodeView;
use crate::sim::world::{Phase, World};
use crate::telemetry::agent::{Agent, AgentConfig};
use crate::telemetry::attribution::{PodDevices, PodRef};
use crate::telemetry::health::HealthPolicy;
use crate::telemetry::metrics::AgentMetrics;
use crate::telemetry::sim::{SimConfig, SimNode};
use prometheus::proto::MetricFamily;
use prometheus::Registry;
use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};

struct NodeAgent {
    node: String,
    gpus: u32,
    agent: Agent<SimNode>,
    registry: Registry,
}

pub struct SimAgents {
    agents: Vec<NodeAgent>,
}

/// Board power of the simulated devices by model, milliwatts (idle, max).
/// Assumed from public datasheets; unknown models get a V100-like board.
fn power_mw(model: &str) -> (u64, u64) {
    match model {
        "H100" | "H800" => (70_000, 700_000),
        "A100" | "A800" | "G3" => (50_000, 400_000),
        "T4" => (10_000, 70_000),
        _ => (40_000, 300_000),
    }
}

impl SimAgents {
    /// Agents on the `per_region` largest nodes of every region.
    pub fn new(world: &World, per_region: usize) -> anyhow::Result<SimAgents> {
        let mut agents = Vec::new();
        for (region, r) in world.catalog().regions.iter().enumerate() {
            let mut nodes: Vec<(usize, &NodeView)> = world
                .nodes()
                .iter()
                .enumerate()
                .filter(|(_, n)| n.region == r.name && n.gpus > 0)
                .collect();
            nodes.sort_by_key(|(_, n)| std::cmp::Reverse(n.gpus));
            for (k, node) in nodes.into_iter().take(per_region) {
                let (idle_mw, max_mw) = power_mw(&node.model);
                let sim = SimNode::new(SimConfig {
                    devices: u32::from(node.gpus),
                    model: node.model.clone(),
                    idle_mw,
                    max_mw,
                    seed: k as u64 * 131 + region as u64,
                    ..SimConfig::default()
                });
                let registry = Registry::new();
                let metrics = AgentMetrics::new(&registry)?;
                let cfg = AgentConfig {
                    node: node.name.clone(),
                    region: Some(r.name.clone()),
                    health: HealthPolicy::default(),
                    proc_root: "/nonexistent-demo-proc".into(),
                };
                agents.push(NodeAgent {
                    node: node.name.clone(),
                    gpus: u32::from(node.gpus),
                    agent: Agent::new(sim, cfg, Some(metrics)),
                    registry,
                });
            }
        }
        Ok(SimAgents { agents })
    }

    /// One sampling step after `dt_ms` of wall time.
    pub fn step(&mut self, world: &World, tracker: &JobTracker, dt_ms: u64) {
        let mut pods = pods_by_node(world, tracker, &self.agents);
        let used = world.device_use();
        for (k, a) in self.agents.iter_mut().enumerate() {
            let sim = a.agent.backend_mut();
            let on_devices = used.get(a.node.as_str()).map(Vec::as_slice).unwrap_or(&[]);
            for device in 0..a.gpus {
                // A device works in proportion to the share allocated on it.
                let milli = on_devices
                    .get(device as usize)
                    .copied()
                    .unwrap_or(0)
                    .min(1000);
                sim.set_utilisation(device, Some(milli / 10));
            }
            sim.advance(dt_ms);
            let on_node = pods.remove(&k).unwrap_or_default();
            // A failed sample is counted by the agent's own metrics; the demo goes on.
            let _ = a.agent.step(&on_node);
        }
    }

    /// The agents' metric families, merged by name.
    pub fn gather(&self) -> Vec<MetricFamily> {
        let mut merged: BTreeMap<String, MetricFamily> = BTreeMap::new();
        for a in &self.agents {
            for mut family in a.registry.gather() {
                match merged.get_mut(family.name()) {
                    Some(into) => {
                        let metrics = family.take_metric();
                        into.mut_metric().extend(metrics);
                    }
                    None => {
                        merged.insert(family.name().to_string(), family);
                    }
                }
            }
        }
        merged.into_values().collect()
    }
}

/// Exposes the agents' families through a shared registry: registered with
/// no descriptors of its own, its families are merged by name at gather time.
pub struct AgentsCollector(pub Arc<Mutex<SimAgents>>);

impl prometheus::core::Collector for AgentsCollector {
    fn desc(&self) -> Vec<&prometheus::core::Desc> {
        Vec::new()
    }

    fn collect(&self) -> Vec<MetricFamily> {
        self.0.lock().unwrap_or_else(|p| p.into_inner()).gather()
    }
}

/// The running replicas on the agents' nodes (agent index → pods), from one
/// pass over the live jobs.
fn pods_by_node(
    world: &World,
    tracker: &JobTracker,
    agents: &[NodeAgent],
) -> HashMap<usize, Vec<PodDevices>> {
    let agent_of: HashMap<&str, usize> = agents
        .iter()
        .enumerate()
        .map(|(k, a)| (a.node.as_str(), k))
        .collect();
    let mut pods: HashMap<usize, Vec<PodDevices>> = HashMap::new();
    for job in tracker.live().filter_map(|id| world.job(id)) {
        if job.phase != Phase::Running {
            continue;
        }
        let Some(p) = &job.placement else { continue };
        for (replica, d) in p.replicas.iter().enumerate() {
            let Some(&k) = agent_of.get(d.node.as_str()) else {
                continue;
            };
            if d.devices.is_empty() {
                continue;
            }
            pods.entry(k).or_default().push(PodDevices {
                pod: PodRef {
                    namespace: job.spec.tenant.clone(),
                    name: format!("{}-{replica}", job.spec.name),
                    uid: format!("{}/{replica}", job.id),
                },
                container: job.spec.kind.name().to_string(),
                devices: d.devices.iter().map(|&i| i as u32).collect(),
                milli: (d.milli_per_device < 1000).then_some(u32::from(d.milli_per_device)),
            });
        }
    }
    pods
}

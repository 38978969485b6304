//! The cluster model: nodes in dense parallel arrays, devices in one flat array.

use std::collections::HashMap;

use super::model::{ModelId, ModelTable};
use super::request::{Decision, DeviceMask, GpuDemand, Request, MILLI_PER_GPU};

/// Model id stored for a node without accelerators.
pub const NO_MODEL: ModelId = ModelId::MAX;

/// Most devices one node may have (device sets are `u64` bitmasks).
pub const MAX_DEVICES_PER_NODE: usize = 64;

/// Input description of one node.
#[derive(Clone, Debug, Default)]
pub struct NodeSpec {
    pub name: String,
    pub cpu_milli: u32,
    pub memory_mib: u64,
    pub gpus: u8,
    /// Accelerator model name (ignored when `gpus == 0`).
    pub model: String,
    pub labels: Vec<(String, String)>,
}

/// Nodes and devices, with free capacity. Every mutation of a node bumps its
/// epoch, so policies can cache per-node values and recompute only what changed.
#[derive(Clone, Debug, Default)]
pub struct Cluster {
    models: ModelTable,
    names: Vec<String>,
    index: HashMap<String, u32>,
    cpu_cap: Vec<u32>,
    cpu_free: Vec<u32>,
    mem_cap: Vec<u64>,
    mem_free: Vec<u64>,
    model: Vec<ModelId>,
    dev_start: Vec<u32>,
    dev_count: Vec<u8>,
    /// Free milli-share of every device, node after node.
    dev_free: Vec<u16>,
    dev_healthy: Vec<bool>,
    labels: Vec<Vec<(String, String)>>,
    epoch: Vec<u32>,
    gpu_milli_allocated: u64,
}

impl Cluster {
    pub fn new() -> Self {
        Self::default()
    }

    /// Builds a cluster from node specs (errors name the node and field).
    pub fn from_specs(specs: &[NodeSpec]) -> Result<Self, String> {
        let mut c = Cluster::new();
        for s in specs {
            c.add_node(s)?;
        }
        Ok(c)
    }

    /// Adds a node with every device free and healthy; returns its index.
    pub fn add_node(&mut self, spec: &NodeSpec) -> Result<u32, String> {
        if self.index.contains_key(&spec.name) {
            return Err(format!(
                "node {:?} is listed twice: node names must be unique",
                spec.name
            ));
        }
        if spec.gpus as usize > MAX_DEVICES_PER_NODE {
            return Err(format!(
                "node {:?}: gpu count {} exceeds {MAX_DEVICES_PER_NODE}",
                spec.name, spec.gpus
            ));
        }
        let model = if spec.gpus == 0 {
            NO_MODEL
        } else {
            if spec.model.trim().is_empty() {
                return Err(format!(
                    "node {:?}: model is empty but gpu is {}; name the accelerator model",
                    spec.name, spec.gpus
                ));
            }
            self.models.intern(spec.model.trim())?
        };
        let id = self.names.len() as u32;
        self.names.push(spec.name.clone());
        self.index.insert(spec.name.clone(), id);
        self.cpu_cap.push(spec.cpu_milli);
        self.cpu_free.push(spec.cpu_milli);
        self.mem_cap.push(spec.memory_mib);
        self.mem_free.push(spec.memory_mib);
        self.model.push(model);
        self.dev_start.push(self.dev_free.len() as u32);
        self.dev_count.push(spec.gpus);
        for _ in 0..spec.gpus {
            self.dev_free.push(MILLI_PER_GPU);
            self.dev_healthy.push(true);
        }
        self.labels.push(spec.labels.clone());
        self.epoch.push(0);
        Ok(id)
    }

    /// The model table (names of the nodes' accelerator models).
    pub fn models(&self) -> &ModelTable {
        &self.models
    }
    /// Mutable model table, to intern models that no node has yet.
    pub fn models_mut(&mut self) -> &mut ModelTable {
        &mut self.models
    }
    pub fn len(&self) -> usize {
        self.names.len()
    }
    pub fn is_empty(&self) -> bool {
        self.names.is_empty()
    }
    pub fn node_index(&self, name: &str) -> Option<u32> {
        self.index.get(name).copied()
    }
    pub fn name(&self, node: u32) -> &str {
        &self.names[node as usize]
    }
    pub fn cpu_capacity(&self, node: u32) -> u32 {
        self.cpu_cap[node as usize]
    }
    pub fn cpu_free(&self, node: u32) -> u32 {
        self.cpu_free[node as usize]
    }
    pub fn memory_capacity(&self, node: u32) -> u64 {
        self.mem_cap[node as usize]
    }
    pub fn memory_free(&self, node: u32) -> u64 {
        self.mem_free[node as usize]
    }
    /// The node's accelerator model ([`NO_MODEL`] without devices).
    pub fn model(&self, node: u32) -> ModelId {
        self.model[node as usize]
    }
    pub fn gpu_count(&self, node: u32) -> usize {
        self.dev_count[node as usize] as usize
    }
    /// Free milli-share per device (including unhealthy devices).
    pub fn device_free(&self, node: u32) -> &[u16] {
        let s = self.dev_start[node as usize] as usize;
        &self.dev_free[s..s + self.dev_count[node as usize] as usize]
    }
    /// Health flag per device.
    pub fn device_healthy(&self, node: u32) -> &[bool] {
        let s = self.dev_start[node as usize] as usize;
        &self.dev_healthy[s..s + self.dev_count[node as usize] as usize]
    }
    /// Free milli-share of a device that placement may use (0 when unhealthy).
    #[inline]
    pub fn usable_free(&self, node: u32, device: usize) -> u16 {
        let i = self.dev_start[node as usize] as usize + device;
        if self.dev_healthy[i] {
            self.dev_free[i]
        } else {
            0
        }
    }
    pub fn labels(&self, node: u32) -> &[(String, String)] {
        &self.labels[node as usize]
    }
    /// Bumped on every change to the node (allocation, release, health).
    pub fn epoch(&self, node: u32) -> u32 {
        self.epoch[node as usize]
    }
    /// Devices in the cluster.
    pub fn total_gpus(&self) -> usize {
        self.dev_free.len()
    }
    /// Milli-GPU held by allocations.
    pub fn gpu_milli_allocated(&self) -> u64 {
        self.gpu_milli_allocated
    }
    /// Milli-GPU allocated on one node.
    pub fn node_gpu_milli_allocated(&self, node: u32) -> u32 {
        self.device_free(node)
            .iter()
            .map(|&f| (MILLI_PER_GPU - f) as u32)
            .sum()
    }
    /// Sum of usable free milli-share on a node.
    pub fn usable_free_total(&self, node: u32) -> u32 {
        (0..self.gpu_count(node))
            .map(|d| self.usable_free(node, d) as u32)
            .sum()
    }

    /// Whether the node's static properties (model, labels) admit the request.
    pub fn admits(&self, node: u32, req: &Request) -> bool {
        if req.gpu != GpuDemand::None {
            let m = self.model[node as usize];
            if m == NO_MODEL || !req.models.contains(m) {
                return false;
            }
        }
        req.selector.is_empty() || {
            let labels = &self.labels[node as usize];
            req.selector
                .iter()
                .all(|(k, v)| labels.iter().any(|(lk, lv)| lk == k && lv == v))
        }
    }

    /// Whether CPU and memory fit right now.
    #[inline]
    pub fn host_fits(&self, node: u32, req: &Request) -> bool {
        self.cpu_free[node as usize] >= req.cpu_milli
            && self.mem_free[node as usize] >= req.memory_mib
    }

    /// Whether the request fits the node now (resources, model, labels, healthy devices).
    pub fn fits(&self, node: u32, req: &Request) -> bool {
        if !self.host_fits(node, req) || !self.admits(node, req) {
            return false;
        }
        let n = self.gpu_count(node);
        match req.gpu {
            GpuDemand::None => true,
            GpuDemand::Shared { milli } => (0..n).any(|d| self.usable_free(node, d) >= milli),
            GpuDemand::Whole { count } => {
                (0..n)
                    .filter(|&d| self.usable_free(node, d) == MILLI_PER_GPU)
                    .count()
                    >= count as usize
            }
        }
    }

    /// Checks that `decision` can be applied now: CPU, memory, devices exist,
    /// are healthy and have the share free.
    pub fn check(&self, d: &Decision) -> Result<(), String> {
        let node = d.node;
        if node as usize >= self.len() {
            return Err(format!(
                "decision names node {node}, but the cluster has {} nodes",
                self.len()
            ));
        }
        let name = self.name(node);
        if self.cpu_free(node) < d.cpu_milli || self.memory_free(node) < d.memory_mib {
            return Err(format!("node {name}: not enough CPU or memory free"));
        }
        let n = self.gpu_count(node);
        for dev in d.devices.iter() {
            if dev >= n {
                return Err(format!(
                    "node {name}: device {dev} does not exist ({n} devices)"
                ));
            }
            if self.usable_free(node, dev) < d.milli_per_device {
                return Err(format!(
                    "node {name}: device {dev} lacks {} milli free or is unhealthy",
                    d.milli_per_device
                ));
            }
        }
        Ok(())
    }

    /// Takes the decision's resources. Nothing changes if it does not fit.
    pub fn allocate(&mut self, d: &Decision) -> Result<(), String> {
        self.check(d)?;
        let i = d.node as usize;
        self.cpu_free[i] -= d.cpu_milli;
        self.mem_free[i] -= d.memory_mib;
        let s = self.dev_start[i] as usize;
        for dev in d.devices.iter() {
            self.dev_free[s + dev] -= d.milli_per_device;
        }
        self.gpu_milli_allocated += d.gpu_milli() as u64;
        self.epoch[i] = self.epoch[i].wrapping_add(1);
        Ok(())
    }

    /// Gives back what [`Cluster::allocate`] took for the same decision.
    /// Errors (changing nothing) if that would exceed the node's capacity.
    pub fn release(&mut self, d: &Decision) -> Result<(), String> {
        let i = d.node as usize;
        if i >= self.len() {
            return Err(format!(
                "release names node {i}, but the cluster has {} nodes",
                self.len()
            ));
        }
        let s = self.dev_start[i] as usize;
        let n = self.dev_count[i] as usize;
        let over = self.cpu_free[i] as u64 + d.cpu_milli as u64 > self.cpu_cap[i] as u64
            || self.mem_free[i] + d.memory_mib > self.mem_cap[i]
            || d.devices.iter().any(|dev| {
                dev >= n
                    || self.dev_free[s + dev] as u32 + d.milli_per_device as u32
                        > MILLI_PER_GPU as u32
            });
        if over {
            return Err(format!(
                "release on node {} gives back more than was allocated",
                self.names[i]
            ));
        }
        self.cpu_free[i] += d.cpu_milli;
        self.mem_free[i] += d.memory_mib;
        for dev in d.devices.iter() {
            self.dev_free[s + dev] += d.milli_per_device;
        }
        self.gpu_milli_allocated -= d.gpu_milli() as u64;
        self.epoch[i] = self.epoch[i].wrapping_add(1);
        Ok(())
    }

    /// Marks a device healthy or not. Unhealthy devices take no new work; what
    /// runs there keeps its share until released.
    pub fn set_device_health(
        &mut self,
        node: u32,
        device: usize,
        healthy: bool,
    ) -> Result<(), String> {
        let i = node as usize;
        if i >= self.len() || device >= self.dev_count[i] as usize {
            return Err(format!("no device {device} on node index {node}"));
        }
        let s = self.dev_start[i] as usize;
        if self.dev_healthy[s + device] != healthy {
            self.dev_healthy[s + device] = healthy;
            self.epoch[i] = self.epoch[i].wrapping_add(1);
        }
        Ok(())
    }

    /// Devices of `node` with the full share free and healthy, lowest first, up to `count`.
    pub fn free_whole_devices(&self, node: u32, count: usize) -> Option<DeviceMask> {
        let mut mask = 0u64;
        let mut got = 0;
        for d in 0..self.gpu_count(node) {
            if got == count {
                break;
            }
            if self.usable_free(node, d) == MILLI_PER_GPU {
                mask |= 1u64 << d;
                got += 1;
            }
        }
        (got == count).then_some(DeviceMask(mask))
    }
}

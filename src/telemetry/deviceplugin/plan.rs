//! The device plugin's decisions, pure: which device ids the kubelet sees,
//! which pod an allocation is for, and what its container gets.
//!
//! Device ids carry the devices: a whole device's id is its UUID, a share
//! slot's id is `<uuid>::<slot>` (one slot = [`SLOT_MILLI`] milli of one
//! device). The kubelet never hands an id to two containers, so whatever it
//! allocates is exclusive; [`prefer`] steers its choice to the devices zhisuan
//! placed the pod on, and [`allocate`] answers only when the ids it chose are
//! exactly the devices a waiting pod's `zhisuan.io/gpu-devices` names.

use crate::telemetry::{DeviceInfo, Vendor};
use std::collections::BTreeMap;

/// Whole devices: one unit per device.
pub const RESOURCE_GPU: &str = "zhisuan.io/gpu";
/// Device resources the vendors' own plugins serve (replaced in zhisuan's pods).
pub const VENDOR_RESOURCES: [&str; 2] = ["nvidia.com/gpu", "huawei.com/npu"];
/// Shares of one device: one unit per [`SLOT_MILLI`] milli.
pub const RESOURCE_SHARE: &str = "zhisuan.io/gpu-share";
/// Milli-devices per share slot (1% of a device).
pub const SLOT_MILLI: u32 = 10;
/// Share slots per device.
pub const SLOTS_PER_DEVICE: u32 = 1000 / SLOT_MILLI;

/// Which of the two resources a request is for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Resource {
    Whole,
    Share,
}

impl Resource {
    pub fn name(self) -> &'static str {
        match self {
            Resource::Whole => RESOURCE_GPU,
            Resource::Share => RESOURCE_SHARE,
        }
    }
}

/// Share slots a pod of `milli` asks for (rounded up to whole slots).
pub fn share_slots(milli: u32) -> u32 {
    milli.div_ceil(SLOT_MILLI)
}

/// The node's devices as the plugin advertises them.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NodeDevices {
    pub node: String,
    pub vendor: Vendor,
    pub devices: Vec<DeviceInfo>,
    /// Indices of devices out of placement (the agent's health verdicts).
    pub unhealthy: Vec<u32>,
}

impl NodeDevices {
    fn device(&self, index: u32) -> Option<&DeviceInfo> {
        self.devices.iter().find(|d| d.index == index)
    }

    fn healthy(&self, index: u32) -> bool {
        !self.unhealthy.contains(&index)
    }

    /// The whole-device id of a device.
    pub fn id(&self, d: &DeviceInfo) -> String {
        if d.uuid.is_empty() {
            format!("{}-{}", self.vendor.as_str(), d.index)
        } else {
            d.uuid.clone()
        }
    }

    /// `(id, healthy)` of every unit of `resource`, in device then slot order.
    pub fn advertised(&self, resource: Resource) -> Vec<(String, bool)> {
        let mut out = Vec::new();
        for d in &self.devices {
            let id = self.id(d);
            let healthy = self.healthy(d.index);
            match resource {
                Resource::Whole => out.push((id, healthy)),
                Resource::Share => {
                    out.extend((0..SLOTS_PER_DEVICE).map(|s| (format!("{id}::{s}"), healthy)))
                }
            }
        }
        out
    }

    /// The device index an id names (a share slot names its device).
    pub fn index_of(&self, id: &str, resource: Resource) -> Option<u32> {
        let whole = match resource {
            Resource::Whole => id,
            Resource::Share => {
                let (dev, slot) = id.rsplit_once("::")?;
                slot.parse::<u32>().ok().filter(|s| *s < SLOTS_PER_DEVICE)?;
                dev
            }
        };
        self.devices
            .iter()
            .find(|d| self.id(d) == whole)
            .map(|d| d.index)
    }
}

/// A pod bound to this node, as the plugin needs it (plain data from the
/// pod's spec and annotations).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct PodClaim {
    pub namespace: String,
    pub name: String,
    /// Creation time, unix seconds (the kubelet admits older pods first).
    pub created: i64,
    /// `zhisuan.io/gpu-devices`; empty when the pod has none.
    pub devices: Vec<u32>,
    /// `zhisuan.io/gpu-milli` (a share).
    pub milli: Option<u32>,
    /// Its containers' limits of [`RESOURCE_GPU`] and [`RESOURCE_SHARE`].
    pub whole: u32,
    pub slots: u32,
    /// Still waiting to start (phase Pending).
    pub waiting: bool,
    /// A malformed device annotation, as the message to report.
    pub annotation_error: Option<String>,
}

impl PodClaim {
    /// A waiting pod whose limits ask for exactly its annotated placement, as
    /// the controller builds it: `devices` whole, or one share of `milli`.
    pub fn placed(
        namespace: &str,
        name: &str,
        created: i64,
        devices: &[u32],
        milli: Option<u32>,
    ) -> PodClaim {
        PodClaim {
            namespace: namespace.into(),
            name: name.into(),
            created,
            devices: devices.to_vec(),
            milli,
            whole: if milli.is_none() {
                devices.len() as u32
            } else {
                0
            },
            slots: milli.map(share_slots).unwrap_or(0),
            waiting: true,
            annotation_error: None,
        }
    }

    fn asks(&self, resource: Resource) -> u32 {
        match resource {
            Resource::Whole => self.whole,
            Resource::Share => self.slots,
        }
    }

    fn label(&self) -> String {
        format!("{}/{}", self.namespace, self.name)
    }
}

/// A pod that already holds devices of a resource (kubelet pod-resources).
pub type Held = (String, String);

/// The pods that may be the one being admitted for `size` units of
/// `resource`: waiting, asking for exactly that many, not yet allocated;
/// oldest first (the kubelet's admission order).
fn candidates<'a>(
    pods: &'a [PodClaim],
    held: &[Held],
    resource: Resource,
    size: usize,
) -> Vec<&'a PodClaim> {
    let mut c: Vec<&PodClaim> = pods
        .iter()
        .filter(|p| p.waiting && p.asks(resource) as usize == size && size > 0)
        .filter(|p| {
            !held
                .iter()
                .any(|(ns, n)| *ns == p.namespace && *n == p.name)
        })
        .collect();
    c.sort_by(|a, b| (a.created, &a.namespace, &a.name).cmp(&(b.created, &b.namespace, &b.name)));
    c
}

/// The ids a pod's placement comes to, given what is still free: its
/// devices for whole devices; for a share, the first free slots of its one
/// device. None when its placement cannot be met from `available`.
fn ids_for(
    node: &NodeDevices,
    pod: &PodClaim,
    resource: Resource,
    available: &[String],
    size: usize,
) -> Option<Vec<String>> {
    if pod.annotation_error.is_some() {
        return None;
    }
    match resource {
        Resource::Whole => {
            let ids: Vec<String> = pod
                .devices
                .iter()
                .map(|i| node.device(*i).map(|d| node.id(d)))
                .collect::<Option<_>>()?;
            (ids.len() == size && ids.iter().all(|id| available.contains(id))).then_some(ids)
        }
        Resource::Share => {
            let [dev] = pod.devices[..] else { return None };
            let prefix = format!("{}::", node.id(node.device(dev)?));
            let ids: Vec<String> = available
                .iter()
                .filter(|id| id.starts_with(&prefix))
                .take(size)
                .cloned()
                .collect();
            (ids.len() == size).then_some(ids)
        }
    }
}

/// GetPreferredAllocation: the ids of the oldest waiting pod whose placement
/// fits `available` and keeps `must_include`; empty (the kubelet then picks,
/// and [`allocate`] judges its pick) when none does.
pub fn prefer(
    node: &NodeDevices,
    pods: &[PodClaim],
    held: &[Held],
    resource: Resource,
    available: &[String],
    must_include: &[String],
    size: usize,
) -> Vec<String> {
    candidates(pods, held, resource, size)
        .into_iter()
        .filter_map(|p| ids_for(node, p, resource, available, size))
        .find(|ids| must_include.iter().all(|m| ids.contains(m)))
        .unwrap_or_default()
}

/// A device node to expose in the container.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DeviceNode {
    pub container_path: String,
    pub host_path: String,
    pub permissions: String,
}

/// What one container gets: environment, device nodes, annotations.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Answer {
    /// The pod the allocation was matched to (`namespace/name`).
    pub pod: String,
    pub envs: BTreeMap<String, String>,
    pub device_nodes: Vec<DeviceNode>,
    pub annotations: BTreeMap<String, String>,
}

/// Allocate for one container: the devices `ids` name, if they are exactly a
/// waiting pod's placement; otherwise an error naming the pod(s) and devices.
pub fn allocate(
    node: &NodeDevices,
    pods: &[PodClaim],
    held: &[Held],
    resource: Resource,
    ids: &[String],
) -> Result<Answer, String> {
    let devices = devices_of(node, resource, ids)?;
    for d in &devices {
        if !node.healthy(*d) {
            return Err(format!(
                "device {d} of node {} is unhealthy; the kubelet offered it for {} (ids {})",
                node.node,
                resource.name(),
                ids.join(",")
            ));
        }
    }
    let waiting = candidates(pods, held, resource, ids.len());
    let matched = waiting.iter().find(|p| {
        let mut placed = p.devices.clone();
        placed.sort_unstable();
        p.annotation_error.is_none() && placed == devices
    });
    match matched {
        Some(p) => Ok(answer(node, p, resource, &devices, ids.len() as u32)),
        None => Err(no_match(node, &waiting, resource, &devices, ids.len())),
    }
}

/// The sorted, distinct device indices of `ids`; a share's ids must all be
/// slots of one device.
fn devices_of(node: &NodeDevices, resource: Resource, ids: &[String]) -> Result<Vec<u32>, String> {
    if ids.is_empty() {
        return Err(format!("an allocation of no {} ids", resource.name()));
    }
    let mut devices = Vec::with_capacity(ids.len());
    for id in ids {
        let i = node.index_of(id, resource).ok_or_else(|| {
            format!(
                "{} id {id:?} is not a device of node {}",
                resource.name(),
                node.node
            )
        })?;
        devices.push(i);
    }
    devices.sort_unstable();
    devices.dedup();
    if resource == Resource::Share && devices.len() > 1 {
        return Err(format!(
            "the kubelet offered {} slots of devices {devices:?} of node {}: a share must be on one device",
            resource.name(),
            node.node
        ));
    }
    if resource == Resource::Whole && devices.len() != ids.len() {
        return Err(format!(
            "repeated {} ids {}",
            resource.name(),
            ids.join(",")
        ));
    }
    Ok(devices)
}

fn no_match(
    node: &NodeDevices,
    waiting: &[&PodClaim],
    resource: Resource,
    devices: &[u32],
    size: usize,
) -> String {
    let offered = format!(
        "the kubelet offered device(s) {} of node {} for {size} {}",
        join(devices),
        node.node,
        resource.name()
    );
    if waiting.is_empty() {
        return format!(
            "{offered}, but no pod zhisuan placed on this node waits for that many: \
             pods asking for {} must be placed by the zhisuan controller (schedulerName: zhisuan)",
            resource.name()
        );
    }
    let why: Vec<String> = waiting
        .iter()
        .map(|p| {
            if let Some(e) = &p.annotation_error {
                return format!("pod {}: {e}", p.label());
            }
            if let Some(d) = p.devices.iter().find(|d| node.device(**d).is_none()) {
                return format!(
                    "pod {}'s zhisuan.io/gpu-devices names device {d}, which node {} does not have",
                    p.label(),
                    node.node
                );
            }
            if let Some(d) = p.devices.iter().find(|d| !node.healthy(**d)) {
                return format!(
                    "pod {} is placed on device {d}, which is unhealthy",
                    p.label()
                );
            }
            format!(
                "pod {} is placed on device(s) {}",
                p.label(),
                join(&p.devices)
            )
        })
        .collect();
    format!(
        "{offered}; no waiting pod is placed there: {}",
        why.join("; ")
    )
}

fn join(devices: &[u32]) -> String {
    if devices.is_empty() {
        return "none".into();
    }
    devices
        .iter()
        .map(|d| d.to_string())
        .collect::<Vec<_>>()
        .join(",")
}

/// The container's view of its devices, per vendor.
fn answer(
    node: &NodeDevices,
    pod: &PodClaim,
    resource: Resource,
    devices: &[u32],
    units: u32,
) -> Answer {
    let infos: Vec<&DeviceInfo> = devices.iter().filter_map(|i| node.device(*i)).collect();
    let mut envs = BTreeMap::new();
    let mut nodes = Vec::new();
    let rw = |path: String| DeviceNode {
        container_path: path.clone(),
        host_path: path,
        permissions: "rw".into(),
    };
    let minor = |d: &DeviceInfo| d.minor.unwrap_or(d.index);
    match node.vendor {
        Vendor::Nvidia => {
            let uuids: Vec<&str> = infos.iter().map(|d| d.uuid.as_str()).collect();
            envs.insert("NVIDIA_VISIBLE_DEVICES".into(), uuids.join(","));
            nodes.extend(infos.iter().map(|d| rw(format!("/dev/nvidia{}", minor(d)))));
            for ctl in ["/dev/nvidiactl", "/dev/nvidia-uvm", "/dev/nvidia-uvm-tools"] {
                nodes.push(rw(ctl.into()));
            }
        }
        Vendor::Huawei => {
            let ids: Vec<String> = infos.iter().map(|d| d.index.to_string()).collect();
            envs.insert("ASCEND_VISIBLE_DEVICES".into(), ids.join(","));
            nodes.extend(
                infos
                    .iter()
                    .map(|d| rw(format!("/dev/davinci{}", minor(d)))),
            );
            for ctl in ["/dev/davinci_manager", "/dev/devmm_svm", "/dev/hisi_hdc"] {
                nodes.push(rw(ctl.into()));
            }
        }
    }
    envs.insert("ZHISUAN_GPU_DEVICES".into(), join(devices));
    if resource == Resource::Share {
        let percent = (units * SLOT_MILLI / 10).clamp(1, 100);
        let milli = pod.milli.unwrap_or(units * SLOT_MILLI);
        envs.insert("ZHISUAN_GPU_MILLI".into(), milli.to_string());
        if node.vendor == Vendor::Nvidia {
            let memory = infos.first().map(|d| d.memory_mib).unwrap_or(0);
            let limit = memory.saturating_mul(u64::from(units * SLOT_MILLI)) / 1000;
            envs.insert(
                "CUDA_MPS_ACTIVE_THREAD_PERCENTAGE".into(),
                percent.to_string(),
            );
            // The one visible device is device 0 inside the container.
            envs.insert(
                "CUDA_MPS_PINNED_DEVICE_MEM_LIMIT".into(),
                format!("0={limit}M"),
            );
        }
    }
    let mut annotations = BTreeMap::new();
    annotations.insert("zhisuan.io/allocated-devices".into(), join(devices));
    Answer {
        pod: pod.label(),
        envs,
        device_nodes: nodes,
        annotations,
    }
}

/// PreStartContainer: the pod the kubelet gave `ids` to must be placed on
/// exactly those devices. `owner` is that pod per the kubelet's pod-resources
/// API (None when it could not be asked).
pub fn check_start(
    node: &NodeDevices,
    pods: &[PodClaim],
    resource: Resource,
    ids: &[String],
    owner: Option<&Held>,
) -> Result<(), String> {
    let devices = devices_of(node, resource, ids)?;
    let Some((ns, name)) = owner else {
        return Ok(());
    };
    let Some(pod) = pods.iter().find(|p| p.namespace == *ns && p.name == *name) else {
        return Err(format!(
            "pod {ns}/{name} holds device(s) {} of node {} but is not a pod zhisuan placed here",
            join(&devices),
            node.node
        ));
    };
    let mut placed = pod.devices.clone();
    placed.sort_unstable();
    if placed != devices {
        return Err(format!(
            "pod {ns}/{name} was given device(s) {} of node {} but zhisuan placed it on {}",
            join(&devices),
            node.node,
            join(&pod.devices)
        ));
    }
    Ok(())
}

//! What a pod asks for, and where the engine put it.

use super::model::ModelSet;

/// Full share of one device, in thousandths.
pub const MILLI_PER_GPU: u16 = 1000;

/// The accelerator part of a request.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum GpuDemand {
    /// CPU-only pod.
    None,
    /// `milli` thousandths (1..=999) of ONE device, shared with other pods.
    Shared { milli: u16 },
    /// `count` whole devices (≥ 1), all on one node.
    Whole { count: u8 },
}

impl GpuDemand {
    /// Total milli-GPU requested (`count × 1000` for whole devices).
    pub fn total_milli(self) -> u32 {
        match self {
            GpuDemand::None => 0,
            GpuDemand::Shared { milli } => milli as u32,
            GpuDemand::Whole { count } => count as u32 * MILLI_PER_GPU as u32,
        }
    }

    /// From the trace's `(num_gpu, gpu_milli)` pair: `num_gpu == 1` with
    /// `gpu_milli < 1000` is shared; `num_gpu ≥ 1` otherwise is whole devices.
    pub fn from_trace(num_gpu: u32, gpu_milli: u32) -> Result<Self, String> {
        match (num_gpu, gpu_milli) {
            (0, _) => Ok(GpuDemand::None),
            (1, 0) => Err("gpu_milli must be 1..=1000 when num_gpu is 1".into()),
            (1, m) if m < 1000 => Ok(GpuDemand::Shared { milli: m as u16 }),
            (n, m) if n > 64 => Err(format!(
                "num_gpu {n} is more than 64 devices on one node (gpu_milli {m})"
            )),
            (n, 1000) => Ok(GpuDemand::Whole { count: n as u8 }),
            (n, m) => Err(format!(
                "gpu_milli {m} is invalid for num_gpu {n}: a multi-GPU pod takes whole devices (1000)"
            )),
        }
    }
}

/// One pod's request. Build with [`Request::cpu`], [`Request::shared`] or
/// [`Request::whole`] and refine with the `with_*` methods.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Request {
    pub cpu_milli: u32,
    pub memory_mib: u64,
    pub gpu: GpuDemand,
    /// Allowed accelerator models ([`ModelSet::ANY`] = any).
    pub models: ModelSet,
    /// Node labels that must all be present with these values.
    pub selector: Vec<(String, String)>,
}

impl Request {
    pub fn new(cpu_milli: u32, memory_mib: u64, gpu: GpuDemand) -> Self {
        Request {
            cpu_milli,
            memory_mib,
            gpu,
            models: ModelSet::ANY,
            selector: Vec::new(),
        }
    }

    /// A CPU-only pod.
    pub fn cpu(cpu_milli: u32, memory_mib: u64) -> Self {
        Self::new(cpu_milli, memory_mib, GpuDemand::None)
    }

    /// A pod sharing `milli` thousandths of one device (1000 means one whole device).
    pub fn shared(cpu_milli: u32, memory_mib: u64, milli: u16) -> Self {
        let gpu = if milli >= MILLI_PER_GPU {
            GpuDemand::Whole { count: 1 }
        } else {
            GpuDemand::Shared { milli }
        };
        Self::new(cpu_milli, memory_mib, gpu)
    }

    /// A pod taking `count` whole devices on one node.
    pub fn whole(cpu_milli: u32, memory_mib: u64, count: u8) -> Self {
        let gpu = if count == 0 {
            GpuDemand::None
        } else {
            GpuDemand::Whole { count }
        };
        Self::new(cpu_milli, memory_mib, gpu)
    }

    /// Restricts the accelerator models the pod may run on.
    pub fn with_models(mut self, models: ModelSet) -> Self {
        self.models = models;
        self
    }

    /// Requires a node label `key=value`.
    pub fn with_label(mut self, key: &str, value: &str) -> Self {
        self.selector.push((key.to_string(), value.to_string()));
        self
    }
}

/// Device indices on one node, as a bitmask (bit `i` = device `i`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct DeviceMask(pub u64);

impl DeviceMask {
    pub fn single(index: usize) -> Self {
        DeviceMask(1u64 << index)
    }
    pub fn len(self) -> usize {
        self.0.count_ones() as usize
    }
    pub fn is_empty(self) -> bool {
        self.0 == 0
    }
    pub fn contains(self, index: usize) -> bool {
        index < 64 && self.0 & (1u64 << index) != 0
    }
    /// The device indices, ascending.
    pub fn iter(self) -> impl Iterator<Item = usize> {
        let mut bits = self.0;
        std::iter::from_fn(move || {
            if bits == 0 {
                return None;
            }
            let i = bits.trailing_zeros() as usize;
            bits &= bits - 1;
            Some(i)
        })
    }
    /// `"0,1"` — the form of the `zhisuan.io/gpu-devices` annotation.
    pub fn to_annotation(self) -> String {
        self.iter()
            .map(|i| i.to_string())
            .collect::<Vec<_>>()
            .join(",")
    }
}

/// Where a request goes: node index and device indices, plus the amounts taken,
/// so that [`super::Cluster::release`] needs nothing else.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Decision {
    /// Index of the node in the [`super::Cluster`].
    pub node: u32,
    /// Devices used (empty for a CPU-only pod; one device for a shared pod).
    pub devices: DeviceMask,
    /// Milli-share taken on EACH device in `devices` (1000 for whole devices).
    pub milli_per_device: u16,
    pub cpu_milli: u32,
    pub memory_mib: u64,
}

impl Decision {
    /// Total milli-GPU this decision holds.
    pub fn gpu_milli(&self) -> u32 {
        self.devices.len() as u32 * self.milli_per_device as u32
    }
}

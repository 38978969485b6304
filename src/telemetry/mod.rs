//! Accelerator telemetry and the node agent (issue #5).
//!
//! Observe → plan → act, as everywhere in zhisuan:
//! - observe: one [`Accelerator`] interface with three backends — [`nvml`]
//!   (NVIDIA, libnvidia-ml loaded at run time), [`sim`] (a deterministic
//!   simulated node with injectable faults) and [`npu`] (a domestic NPU read
//!   through its vendor exporter's Prometheus endpoint, parsed by [`promtext`]);
//! - plan (pure, no I/O, no clock): [`attribution`] splits each device's
//!   energy-counter delta among pods, [`health`] decides which devices are
//!   unhealthy, [`publish`] builds the node labels and annotations;
//! - act: [`agent`] runs the sampling loop, serves `/metrics` ([`metrics`])
//!   and patches the Node through kube ([`kube_act`]).

pub mod agent;
pub mod attribution;
pub mod cli;
pub mod deviceplugin;
pub mod health;
pub mod kube_act;
pub mod metrics;
pub mod npu;
pub mod nvml;
pub mod promtext;
pub mod publish;
pub mod serve;
pub mod sim;
pub mod tokens;

use serde::{Deserialize, Serialize};

/// Who made the accelerator: decides the `zhisuan.io/accelerator-vendor` node
/// label and what the device plugin hands a container.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Vendor {
    Nvidia,
    Huawei,
}

impl Vendor {
    pub fn as_str(self) -> &'static str {
        match self {
            Vendor::Nvidia => "nvidia",
            Vendor::Huawei => "huawei",
        }
    }
}

/// One device in the node inventory. Serialised as the
/// `zhisuan.io/gpu-inventory` node annotation (HELPERS.md contract).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct DeviceInfo {
    /// Device index on the node, as the controller's `zhisuan.io/gpu-devices` uses it.
    pub index: u32,
    /// Short model name used by placement (`H100`, `A100`, `Ascend910B`).
    pub model: String,
    pub memory_mib: u64,
    pub uuid: String,
    /// The vendor's full product name (`NVIDIA H100 80GB HBM3`), the DCGM `modelName` label.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub product_name: String,
    /// The device node's minor number (`/dev/nvidia<minor>`, `/dev/davinci<minor>`)
    /// where the vendor reports one; the device plugin falls back to the index.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub minor: Option<u32>,
}

/// Clock throttling currently active on a device (NVML's clocks-event reasons).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Throttle {
    /// Software or hardware thermal slowdown.
    pub thermal: bool,
    /// Hardware slowdown (power brake, external signal): the board is protecting itself.
    pub hw_slowdown: bool,
    /// Software power cap: normal under load, never a health problem on its own.
    pub power_cap: bool,
}

/// One reading of one device. Counters (`energy_mj`, `ecc_*`, `xid_count`)
/// are cumulative; the plan layer takes deltas.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct DeviceReading {
    pub index: u32,
    /// The device stopped answering (NVML `GPU_IS_LOST`, exporter series vanished).
    pub lost: bool,
    /// Percent of the last sample period a kernel ran (0..=100).
    pub utilisation_pct: u32,
    pub memory_used_mib: u64,
    pub memory_total_mib: u64,
    pub power_mw: u64,
    /// Cumulative energy counter in millijoules (resets only when the driver reloads).
    pub energy_mj: u64,
    pub temperature_c: u32,
    pub sm_clock_mhz: u32,
    pub mem_clock_mhz: u32,
    pub throttle: Throttle,
    /// Volatile uncorrected ECC errors since the driver loaded.
    pub ecc_uncorrected: u64,
    pub ecc_corrected: u64,
    /// Critical XID events seen since the backend started.
    pub xid_count: u64,
    /// The last XID code (0 = none), DCGM's `DCGM_FI_DEV_XID_ERRORS`.
    pub last_xid: u32,
    /// Retired/remapped memory pending a device reset.
    pub memory_repair_pending: bool,
    /// The vendor's own health verdict where it gives one (NPU `health_status`).
    pub vendor_healthy: Option<bool>,
}

/// A process holding a device, as the driver reports it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct GpuProcess {
    pub pid: u32,
    pub device: u32,
    pub used_memory_mib: u64,
}

/// Errors from a backend. Messages name what is missing and the fix.
#[derive(Debug, thiserror::Error)]
pub enum TelemetryError {
    #[error("NVML not found: install the NVIDIA driver or use --backend sim ({0})")]
    NvmlNotFound(String),
    #[error("NVML call {call} failed on device {device}: {message}")]
    Nvml {
        call: &'static str,
        device: u32,
        message: String,
    },
    #[error("NVML: {0}")]
    NvmlInit(String),
    #[error("NPU exporter at {url}: {message}")]
    Exporter { url: String, message: String },
}

/// One interface over every accelerator vendor: inventory, readings
/// (utilisation, memory, power, energy counter, temperature, clocks,
/// throttle, ECC/XID health) and the processes holding each device.
pub trait Accelerator: Send {
    fn vendor(&self) -> Vendor;
    /// Short name of the backend (`nvml`, `sim`, `npu-exporter`).
    fn backend(&self) -> &'static str;
    /// The devices found when the backend started.
    fn inventory(&self) -> &[DeviceInfo];
    /// Reads every device into `out` (cleared first), one entry per inventory
    /// device in index order. A lost device is a reading with `lost = true`,
    /// not an error: only a backend that cannot be reached at all errs.
    fn sample(&mut self, out: &mut Vec<DeviceReading>) -> Result<(), TelemetryError>;
    /// Processes using each device (empty where the vendor does not report them).
    fn processes(&mut self, out: &mut Vec<GpuProcess>) -> Result<(), TelemetryError>;
}

impl<T: Accelerator + ?Sized> Accelerator for Box<T> {
    fn vendor(&self) -> Vendor {
        (**self).vendor()
    }
    fn backend(&self) -> &'static str {
        (**self).backend()
    }
    fn inventory(&self) -> &[DeviceInfo] {
        (**self).inventory()
    }
    fn sample(&mut self, out: &mut Vec<DeviceReading>) -> Result<(), TelemetryError> {
        (**self).sample(out)
    }
    fn processes(&mut self, out: &mut Vec<GpuProcess>) -> Result<(), TelemetryError> {
        (**self).processes(out)
    }
}

/// Placement's short model name from a vendor product name:
/// `NVIDIA H100 80GB HBM3` → `H100`, `Tesla V100-SXM2-16GB` → `V100`,
/// `NVIDIA A100-SXM4-80GB` → `A100`.
pub fn short_model(product_name: &str) -> String {
    let mut rest = product_name.trim();
    for prefix in ["NVIDIA ", "Tesla ", "GeForce ", "Quadro "] {
        if let Some(r) = rest.strip_prefix(prefix) {
            rest = r.trim_start();
        }
    }
    let first = rest.split([' ', '-']).next().unwrap_or("");
    if first.is_empty() {
        "unknown".to_string()
    } else {
        first.to_string()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn short_model_strips_vendor_and_variant() {
        assert_eq!(short_model("NVIDIA H100 80GB HBM3"), "H100");
        assert_eq!(short_model("Tesla V100-SXM2-16GB"), "V100");
        assert_eq!(short_model("NVIDIA A100-SXM4-80GB"), "A100");
        assert_eq!(short_model("Ascend910B"), "Ascend910B");
        assert_eq!(short_model("  "), "unknown");
    }
}

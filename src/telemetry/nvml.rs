//! NVIDIA backend through NVML (`nvml-wrapper`, libnvidia-ml loaded at run
//! time). A machine without the driver gets [`TelemetryError::NvmlNotFound`],
//! never a panic. Critical XID events arrive on an NVML event set watched by a
//! background thread that keeps per-device counts.

use super::{
    short_model, Accelerator, DeviceInfo, DeviceReading, GpuProcess, TelemetryError, Throttle,
    Vendor,
};
use nvml_wrapper::bitmasks::device::ThrottleReasons;
use nvml_wrapper::bitmasks::event::EventTypes;
use nvml_wrapper::enum_wrappers::device::{Clock, EccCounter, MemoryError, TemperatureSensor};
use nvml_wrapper::enums::device::UsedGpuMemory;
use nvml_wrapper::enums::event::XidError;
use nvml_wrapper::error::NvmlError;
use nvml_wrapper::{Device, Nvml};
use std::cell::Cell;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;

const MIB: u64 = 1024 * 1024;

/// Maps an NVML initialisation failure to the error a user can act on.
pub fn init_error(e: NvmlError) -> TelemetryError {
    match e {
        NvmlError::LibloadingError(_)
        | NvmlError::LibraryNotFound
        | NvmlError::DriverNotLoaded
        | NvmlError::FailedToLoadSymbol(_) => TelemetryError::NvmlNotFound(e.to_string()),
        other => TelemetryError::NvmlInit(other.to_string()),
    }
}

#[derive(Default)]
struct XidCounter {
    count: AtomicU64,
    last: AtomicU32,
}

/// Watches critical XID events until dropped.
struct XidWatcher {
    stop: Arc<AtomicBool>,
    handle: Option<JoinHandle<()>>,
}

impl Drop for XidWatcher {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(h) = self.handle.take() {
            let _ = h.join();
        }
    }
}

pub struct NvmlBackend {
    nvml: Nvml,
    inventory: Vec<DeviceInfo>,
    xids: Arc<Vec<XidCounter>>,
    /// Per device: queries the board answered NotSupported (bits above).
    unsupported: Vec<Cell<u32>>,
    /// Why XID events are not watched, if they are not (e.g. not supported).
    pub xid_unavailable: Option<String>,
    _watcher: Option<XidWatcher>,
    /// Slow fields (ECC counters, retired pages / remapped rows, process
    /// list) are read every `slow_every` samples and reused in between.
    slow_every: u64,
    samples: u64,
    slow: Vec<SlowFields>,
    processes: Vec<GpuProcess>,
    processes_stale: bool,
}

/// The expensive, slowly changing part of a reading. The failures they show
/// also raise XID events (48, 63, 64, 94, 95), which are watched continuously,
/// so reading them less often does not delay a health verdict.
#[derive(Clone, Copy, Debug, Default)]
struct SlowFields {
    ecc_uncorrected: u64,
    ecc_corrected: u64,
    memory_repair_pending: bool,
}

/// Default cadence of the slow fields, in samples: every sample. Measured on
/// an H100 they cost microseconds; the energy counter read (~4 ms of CPU,
/// needed every window) dominates — see docs/agent.md.
pub const DEFAULT_SLOW_EVERY: u64 = 1;

impl NvmlBackend {
    /// Loads libnvidia-ml from the default library path.
    pub fn init() -> Result<Self, TelemetryError> {
        Self::from_nvml(Nvml::init().map_err(init_error)?, None)
    }

    /// Loads libnvidia-ml from an explicit path (tests; unusual installs).
    pub fn init_from(lib_path: &std::ffi::OsStr) -> Result<Self, TelemetryError> {
        let nvml = Nvml::builder()
            .lib_path(lib_path)
            .init()
            .map_err(init_error)?;
        Self::from_nvml(nvml, Some(lib_path.to_owned()))
    }

    fn from_nvml(nvml: Nvml, lib_path: Option<std::ffi::OsString>) -> Result<Self, TelemetryError> {
        let count = nvml
            .device_count()
            .map_err(|e| TelemetryError::NvmlInit(format!("device count: {e}")))?;
        let mut inventory = Vec::with_capacity(count as usize);
        for i in 0..count {
            let dev = nvml
                .device_by_index(i)
                .map_err(|e| nvml_err("device_by_index", i, e))?;
            let product_name = dev.name().map_err(|e| nvml_err("name", i, e))?;
            let uuid = dev.uuid().map_err(|e| nvml_err("uuid", i, e))?;
            let memory_mib = dev
                .memory_info()
                .map(|m| m.total / MIB)
                .map_err(|e| nvml_err("memory_info", i, e))?;
            inventory.push(DeviceInfo {
                index: i,
                model: short_model(&product_name),
                memory_mib,
                uuid,
                product_name,
                minor: dev.minor_number().ok(),
            });
        }
        let xids: Arc<Vec<XidCounter>> =
            Arc::new((0..count).map(|_| XidCounter::default()).collect());
        let (watcher, xid_unavailable) = match start_xid_watcher(lib_path, count, xids.clone()) {
            Ok(w) => (Some(w), None),
            Err(why) => (None, Some(why)),
        };
        Ok(NvmlBackend {
            nvml,
            inventory,
            xids,
            unsupported: (0..count).map(|_| Cell::new(0)).collect(),
            slow_every: DEFAULT_SLOW_EVERY,
            samples: 0,
            slow: vec![SlowFields::default(); count as usize],
            processes: Vec::new(),
            processes_stale: true,
            xid_unavailable,
            _watcher: watcher,
        })
    }

    /// Reads the slow fields every `n` samples (1 = every sample).
    pub fn with_slow_every(mut self, n: u64) -> Self {
        self.slow_every = n.max(1);
        self
    }

    pub fn driver_version(&self) -> Option<String> {
        self.nvml.sys_driver_version().ok()
    }

    fn read_device(
        &self,
        index: u32,
        dev: &Device<'_>,
        slow: &mut SlowFields,
        refresh_slow: bool,
    ) -> Result<DeviceReading, NvmlError> {
        let skip = &self.unsupported[index as usize];
        let slow = match refresh_slow {
            true => {
                *slow = SlowFields {
                    ecc_uncorrected: opt(skip, ECC_UNCORRECTED, || {
                        dev.total_ecc_errors(MemoryError::Uncorrected, EccCounter::Volatile)
                    })?,
                    ecc_corrected: opt(skip, ECC_CORRECTED, || {
                        dev.total_ecc_errors(MemoryError::Corrected, EccCounter::Volatile)
                    })?,
                    // Pre-Ampere boards retire pages; Ampere and later remap rows.
                    memory_repair_pending: opt(skip, RETIRED_PAGES, || {
                        dev.are_pages_pending_retired()
                    })? || opt(skip, REMAPPED_ROWS, || {
                        row_remap_pending(&self.nvml, dev)
                    })?,
                };
                *slow
            }
            false => *slow,
        };
        let util = opt(skip, UTIL, || dev.utilization_rates().map(|u| u.gpu))?;
        let (used, total) = opt(skip, MEMORY, || {
            dev.memory_info().map(|m| (m.used / MIB, m.total / MIB))
        })?;
        let reasons = opt(skip, THROTTLE, || {
            dev.current_throttle_reasons().map(|r| r.bits())
        })?;
        let reasons = ThrottleReasons::from_bits_truncate(reasons);
        let x = &self.xids[index as usize];
        Ok(DeviceReading {
            index,
            lost: false,
            utilisation_pct: util,
            memory_used_mib: used,
            memory_total_mib: total,
            power_mw: opt(skip, POWER, || dev.power_usage())? as u64,
            energy_mj: opt(skip, ENERGY, || dev.total_energy_consumption())?,
            temperature_c: opt(skip, TEMPERATURE, || {
                dev.temperature(TemperatureSensor::Gpu)
            })?,
            sm_clock_mhz: opt(skip, SM_CLOCK, || dev.clock_info(Clock::SM))?,
            mem_clock_mhz: opt(skip, MEM_CLOCK, || dev.clock_info(Clock::Memory))?,
            throttle: Throttle {
                thermal: reasons.intersects(
                    ThrottleReasons::SW_THERMAL_SLOWDOWN | ThrottleReasons::HW_THERMAL_SLOWDOWN,
                ),
                hw_slowdown: reasons.intersects(
                    ThrottleReasons::HW_SLOWDOWN | ThrottleReasons::HW_POWER_BRAKE_SLOWDOWN,
                ),
                power_cap: reasons.contains(ThrottleReasons::SW_POWER_CAP),
            },
            ecc_uncorrected: slow.ecc_uncorrected,
            ecc_corrected: slow.ecc_corrected,
            xid_count: x.count.load(Ordering::Relaxed),
            last_xid: x.last.load(Ordering::Relaxed),
            memory_repair_pending: slow.memory_repair_pending,
            vendor_healthy: None,
        })
    }
}

/// True when the device has a row remapping pending a reset or a remapping
/// failure (`nvmlDeviceGetRemappedRows`, Ampere and later; the wrapper has no
/// safe binding for it). False where the driver lacks the call or the board
/// does not support it.
fn row_remap_pending(nvml: &Nvml, dev: &Device<'_>) -> Result<bool, NvmlError> {
    let Ok(get) = nvml.lib().nvmlDeviceGetRemappedRows.as_ref() else {
        return Err(NvmlError::NotSupported);
    };
    let (mut corrected, mut uncorrected, mut pending, mut failure): (
        std::os::raw::c_uint,
        std::os::raw::c_uint,
        std::os::raw::c_uint,
        std::os::raw::c_uint,
    ) = (0, 0, 0, 0);
    // SAFETY: the handle comes from this NVML instance and outlives the call;
    // the four out-pointers are valid locals.
    let rc = unsafe {
        get(
            dev.handle(),
            &mut corrected,
            &mut uncorrected,
            &mut pending,
            &mut failure,
        )
    };
    match rc {
        0 => Ok(pending != 0 || failure != 0),
        NVML_ERROR_NOT_SUPPORTED => Err(NvmlError::NotSupported),
        NVML_ERROR_GPU_IS_LOST => Err(NvmlError::GpuLost),
        _ => Err(NvmlError::Unknown),
    }
}

const NVML_ERROR_NOT_SUPPORTED: u32 = 3;
const NVML_ERROR_GPU_IS_LOST: u32 = 15;

// Bits of a device's "unsupported" mask: a query the board answered
// NotSupported once is not asked again (each NVML call is a driver round trip).
const UTIL: u32 = 1;
const MEMORY: u32 = 1 << 1;
const THROTTLE: u32 = 1 << 2;
const POWER: u32 = 1 << 3;
const ENERGY: u32 = 1 << 4;
const TEMPERATURE: u32 = 1 << 5;
const SM_CLOCK: u32 = 1 << 6;
const MEM_CLOCK: u32 = 1 << 7;
const ECC_UNCORRECTED: u32 = 1 << 8;
const ECC_CORRECTED: u32 = 1 << 9;
const RETIRED_PAGES: u32 = 1 << 10;
const REMAPPED_ROWS: u32 = 1 << 11;
const COMPUTE_PROCESSES: u32 = 1 << 12;
const GRAPHICS_PROCESSES: u32 = 1 << 13;

/// Reads an optional field: zero when the board does not support it (and
/// never asked again) or on a transient error; `GpuLost` propagates and
/// marks the device lost.
fn opt<T: Default>(
    skip: &Cell<u32>,
    bit: u32,
    read: impl FnOnce() -> Result<T, NvmlError>,
) -> Result<T, NvmlError> {
    if skip.get() & bit != 0 {
        return Ok(T::default());
    }
    match read() {
        Ok(v) => Ok(v),
        Err(NvmlError::GpuLost) => Err(NvmlError::GpuLost),
        Err(NvmlError::NotSupported) => {
            skip.set(skip.get() | bit);
            Ok(T::default())
        }
        Err(_) => Ok(T::default()),
    }
}

fn nvml_err(call: &'static str, device: u32, e: NvmlError) -> TelemetryError {
    TelemetryError::Nvml {
        call,
        device,
        message: e.to_string(),
    }
}

/// Starts a thread with its own NVML handle (NVML is reference counted) that
/// waits on critical-XID events and counts them per device.
fn start_xid_watcher(
    lib_path: Option<std::ffi::OsString>,
    count: u32,
    xids: Arc<Vec<XidCounter>>,
) -> Result<XidWatcher, String> {
    let stop = Arc::new(AtomicBool::new(false));
    let (ready_tx, ready_rx) = std::sync::mpsc::channel::<Result<(), String>>();
    let stop_flag = stop.clone();
    let handle = std::thread::Builder::new()
        .name("nvml-xid".into())
        .spawn(move || {
            let nvml = match &lib_path {
                Some(p) => Nvml::builder().lib_path(p).init(),
                None => Nvml::init(),
            };
            let nvml = match nvml {
                Ok(n) => n,
                Err(e) => {
                    let _ = ready_tx.send(Err(format!("NVML init for XID events: {e}")));
                    return;
                }
            };
            let mut set = match nvml.create_event_set() {
                Ok(s) => s,
                Err(e) => {
                    let _ = ready_tx.send(Err(format!("event set: {e}")));
                    return;
                }
            };
            for i in 0..count {
                let dev = match nvml.device_by_index(i) {
                    Ok(d) => d,
                    Err(e) => {
                        let _ = ready_tx.send(Err(format!("device {i}: {e}")));
                        return;
                    }
                };
                set = match dev.register_events(EventTypes::CRITICAL_XID_ERROR, set) {
                    Ok(s) => s,
                    Err(e) => {
                        let _ =
                            ready_tx.send(Err(format!("register XID events on device {i}: {e}")));
                        return;
                    }
                };
            }
            let _ = ready_tx.send(Ok(()));
            while !stop_flag.load(Ordering::Relaxed) {
                match set.wait(500) {
                    Ok(ev) => {
                        let Ok(i) = ev.device.index() else { continue };
                        let Some(c) = xids.get(i as usize) else {
                            continue;
                        };
                        let code = match ev.event_data {
                            Some(XidError::Value(v)) => v as u32,
                            _ => 0,
                        };
                        c.last.store(code, Ordering::Relaxed);
                        c.count.fetch_add(1, Ordering::Relaxed);
                    }
                    Err(NvmlError::Timeout) => {}
                    Err(_) => std::thread::sleep(std::time::Duration::from_millis(500)),
                }
            }
        })
        .map_err(|e| format!("spawn XID thread: {e}"))?;
    match ready_rx.recv() {
        Ok(Ok(())) => Ok(XidWatcher {
            stop,
            handle: Some(handle),
        }),
        Ok(Err(why)) => {
            let _ = handle.join();
            Err(why)
        }
        Err(_) => Err("XID thread ended before it was ready".into()),
    }
}

impl Accelerator for NvmlBackend {
    fn vendor(&self) -> Vendor {
        Vendor::Nvidia
    }

    fn backend(&self) -> &'static str {
        "nvml"
    }

    fn inventory(&self) -> &[DeviceInfo] {
        &self.inventory
    }

    fn sample(&mut self, out: &mut Vec<DeviceReading>) -> Result<(), TelemetryError> {
        out.clear();
        let slow_now = self.samples.is_multiple_of(self.slow_every);
        self.samples += 1;
        self.processes_stale |= slow_now;
        let mut slow = std::mem::take(&mut self.slow);
        for info in &self.inventory {
            let i = info.index;
            let reading = match self.nvml.device_by_index(i) {
                Ok(dev) => self.read_device(i, &dev, &mut slow[i as usize], slow_now),
                Err(e) => Err(e),
            };
            out.push(match reading {
                Ok(r) => r,
                // Lost, or gone from the bus since start: out of placement.
                Err(_) => DeviceReading {
                    index: i,
                    lost: true,
                    ..DeviceReading::default()
                },
            });
        }
        self.slow = slow;
        Ok(())
    }

    /// The process list, refreshed on the samples that read the slow fields.
    fn processes(&mut self, out: &mut Vec<GpuProcess>) -> Result<(), TelemetryError> {
        if self.processes_stale {
            self.processes_stale = false;
            let mut fresh = std::mem::take(&mut self.processes);
            self.read_processes(&mut fresh);
            self.processes = fresh;
        }
        out.clear();
        out.extend_from_slice(&self.processes);
        Ok(())
    }
}

impl NvmlBackend {
    fn read_processes(&self, out: &mut Vec<GpuProcess>) {
        out.clear();
        for info in &self.inventory {
            let Ok(dev) = self.nvml.device_by_index(info.index) else {
                continue;
            };
            let skip = &self.unsupported[info.index as usize];
            let mut procs = opt(skip, COMPUTE_PROCESSES, || dev.running_compute_processes())
                .unwrap_or_default();
            procs.extend(
                opt(skip, GRAPHICS_PROCESSES, || {
                    dev.running_graphics_processes()
                })
                .unwrap_or_default(),
            );
            for p in procs {
                if out.iter().any(|o| o.pid == p.pid && o.device == info.index) {
                    continue;
                }
                out.push(GpuProcess {
                    pid: p.pid,
                    device: info.index,
                    used_memory_mib: match p.used_gpu_memory {
                        UsedGpuMemory::Used(b) => b / MIB,
                        UsedGpuMemory::Unavailable => 0,
                    },
                });
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn missing_library_is_a_clear_error_not_a_panic() {
        let err = match NvmlBackend::init_from(std::ffi::OsStr::new(
            "/nonexistent/zhisuan-test/libnvidia-ml.so.1",
        )) {
            Ok(_) => panic!("a library that does not exist loaded"),
            Err(e) => e,
        };
        assert!(matches!(err, TelemetryError::NvmlNotFound(_)), "{err:?}");
        let msg = err.to_string();
        assert!(
            msg.starts_with("NVML not found: install the NVIDIA driver or use --backend sim"),
            "{msg}"
        );
    }
}

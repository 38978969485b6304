//! A deterministic simulated node: utilisation from a seeded load profile (or
//! set explicitly), power from a linear model driven by utilisation, a
//! monotone energy counter integrated exactly in microjoules, and injectable
//! faults (XID, uncorrected ECC, thermal throttle, device lost). Used by tests,
//! the embedded demo and machines without accelerators.

use super::{Accelerator, DeviceInfo, DeviceReading, GpuProcess, TelemetryError, Throttle, Vendor};
use std::sync::{Arc, Mutex};
use std::time::Instant;

/// Shape of the simulated node.
#[derive(Clone, Debug)]
pub struct SimConfig {
    pub devices: u32,
    /// Short model name reported in the inventory.
    pub model: String,
    pub memory_mib: u64,
    /// Board power at 0% utilisation, milliwatts.
    pub idle_mw: u64,
    /// Board power at 100% utilisation, milliwatts.
    pub max_mw: u64,
    /// Seeds the load profile and the UUIDs.
    pub seed: u64,
    /// Length of one load-profile segment in milliseconds.
    pub segment_ms: u64,
}

impl Default for SimConfig {
    /// An 8 × H100 SXM node (70 W idle, 700 W TDP).
    fn default() -> Self {
        SimConfig {
            devices: 8,
            model: "H100".to_string(),
            memory_mib: 81_559,
            idle_mw: 70_000,
            max_mw: 700_000,
            seed: 1,
            segment_ms: 10_000,
        }
    }
}

/// A fault injected into one simulated device.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Fault {
    /// A critical XID event with this code (counts once per injection).
    Xid(u32),
    /// One more uncorrected (double-bit) ECC error.
    EccUncorrected,
    /// Hardware thermal slowdown until cleared.
    ThermalThrottle,
    /// The device falls off the bus until cleared.
    DeviceLost,
}

#[derive(Clone, Debug, Default)]
struct SimDevice {
    energy_uj: u128,
    utilisation_override: Option<u32>,
    xid_count: u64,
    last_xid: u32,
    ecc_uncorrected: u64,
    thermal: bool,
    lost: bool,
}

enum Clock {
    Manual { now_ms: u64 },
    Wall { start: Instant },
}

/// The simulated node. With [`SimNode::new`] time moves only through
/// [`SimNode::advance`] (tests); with [`SimNode::wall_clock`] each sample
/// advances by the real time elapsed (the agent's `--backend sim`).
pub struct SimNode {
    cfg: SimConfig,
    inventory: Vec<DeviceInfo>,
    devices: Vec<SimDevice>,
    processes: Vec<GpuProcess>,
    clock: Clock,
    last_ms: u64,
}

/// Energy every device has already counted when the simulation starts: one
/// day at idle, so the counter looks like a driver loaded a day ago.
const UPTIME_MS: u64 = 86_400_000;

impl SimNode {
    pub fn new(cfg: SimConfig) -> Self {
        let inventory = (0..cfg.devices)
            .map(|i| DeviceInfo {
                index: i,
                model: cfg.model.clone(),
                memory_mib: cfg.memory_mib,
                uuid: sim_uuid(cfg.seed, i),
                product_name: format!("zhisuan sim {}", cfg.model),
                minor: Some(i),
            })
            .collect();
        let devices = (0..cfg.devices)
            .map(|_| SimDevice {
                energy_uj: cfg.idle_mw as u128 * UPTIME_MS as u128,
                ..SimDevice::default()
            })
            .collect();
        SimNode {
            cfg,
            inventory,
            devices,
            processes: Vec::new(),
            clock: Clock::Manual { now_ms: 0 },
            last_ms: 0,
        }
    }

    /// A node whose time is the wall clock since this call.
    pub fn wall_clock(cfg: SimConfig) -> Self {
        let mut node = SimNode::new(cfg);
        node.clock = Clock::Wall {
            start: Instant::now(),
        };
        node
    }

    pub fn config(&self) -> &SimConfig {
        &self.cfg
    }

    /// Simulated milliseconds since start.
    pub fn now_ms(&self) -> u64 {
        match &self.clock {
            Clock::Manual { now_ms } => *now_ms,
            Clock::Wall { start } => start.elapsed().as_millis() as u64,
        }
    }

    /// Moves a manual clock forward (no effect on a wall-clock node beyond
    /// integrating up to the present).
    pub fn advance(&mut self, dt_ms: u64) {
        if let Clock::Manual { now_ms } = &mut self.clock {
            *now_ms += dt_ms;
        }
        self.integrate();
    }

    /// Integrates energy from the last integration up to now, one load-profile
    /// segment at a time so utilisation changes land at the right instant.
    fn integrate(&mut self) {
        let now = self.now_ms();
        while self.last_ms < now {
            let seg_end = (self.last_ms / self.cfg.segment_ms + 1) * self.cfg.segment_ms;
            let until = seg_end.min(now);
            let dt = (until - self.last_ms) as u128;
            for i in 0..self.devices.len() {
                if self.devices[i].lost {
                    continue;
                }
                let p = self.power_mw_at(i as u32, self.last_ms) as u128;
                // mW × ms = µJ.
                self.devices[i].energy_uj += p * dt;
            }
            self.last_ms = until;
        }
    }

    /// Pins a device's utilisation (percent) instead of the seeded profile.
    pub fn set_utilisation(&mut self, device: u32, pct: Option<u32>) {
        self.integrate();
        self.devices[device as usize].utilisation_override = pct.map(|p| p.min(100));
    }

    pub fn inject(&mut self, device: u32, fault: Fault) {
        self.integrate();
        let d = &mut self.devices[device as usize];
        match fault {
            Fault::Xid(code) => {
                d.xid_count += 1;
                d.last_xid = code;
            }
            Fault::EccUncorrected => d.ecc_uncorrected += 1,
            Fault::ThermalThrottle => d.thermal = true,
            Fault::DeviceLost => d.lost = true,
        }
    }

    /// Ends a lasting fault (thermal throttle, device lost). Counted events
    /// (XID, ECC) stay counted, as on real hardware.
    pub fn clear(&mut self, device: u32, fault: Fault) {
        self.integrate();
        let d = &mut self.devices[device as usize];
        match fault {
            Fault::ThermalThrottle => d.thermal = false,
            Fault::DeviceLost => d.lost = false,
            Fault::Xid(_) | Fault::EccUncorrected => {}
        }
    }

    /// Adds a process on a device (what the driver would list).
    pub fn attach_process(&mut self, pid: u32, device: u32, used_memory_mib: u64) {
        self.processes.push(GpuProcess {
            pid,
            device,
            used_memory_mib,
        });
    }

    pub fn detach_process(&mut self, pid: u32) {
        self.processes.retain(|p| p.pid != pid);
    }

    /// Utilisation of a device at simulated time `t_ms`.
    pub fn utilisation_at(&self, device: u32, t_ms: u64) -> u32 {
        let d = &self.devices[device as usize];
        if let Some(u) = d.utilisation_override {
            return u;
        }
        // Seeded profile: each segment a device is idle (0%) a third of the
        // time, otherwise busy at 30..=100%.
        let h = mix(self.cfg.seed, device as u64, t_ms / self.cfg.segment_ms);
        if h.is_multiple_of(3) {
            0
        } else {
            30 + (h >> 8) as u32 % 71
        }
    }

    /// Board power at simulated time `t_ms`: idle + (max − idle) × utilisation;
    /// a thermally throttled board is held to its idle-to-half range.
    pub fn power_mw_at(&self, device: u32, t_ms: u64) -> u64 {
        let mut u = self.utilisation_at(device, t_ms) as u64;
        if self.devices[device as usize].thermal {
            u = u.min(50);
        }
        self.cfg.idle_mw + (self.cfg.max_mw - self.cfg.idle_mw) * u / 100
    }

    /// Exact energy counter of a device in microjoules.
    pub fn energy_uj(&self, device: u32) -> u128 {
        self.devices[device as usize].energy_uj
    }
}

impl Accelerator for SimNode {
    fn vendor(&self) -> Vendor {
        Vendor::Nvidia
    }

    fn backend(&self) -> &'static str {
        "sim"
    }

    fn inventory(&self) -> &[DeviceInfo] {
        &self.inventory
    }

    fn sample(&mut self, out: &mut Vec<DeviceReading>) -> Result<(), TelemetryError> {
        self.integrate();
        out.clear();
        let now = self.last_ms;
        for (i, d) in self.devices.iter().enumerate() {
            let index = i as u32;
            if d.lost {
                out.push(DeviceReading {
                    index,
                    lost: true,
                    ..DeviceReading::default()
                });
                continue;
            }
            let util = self.utilisation_at(index, now);
            let used: u64 = self
                .processes
                .iter()
                .filter(|p| p.device == index)
                .map(|p| p.used_memory_mib)
                .sum::<u64>()
                .min(self.cfg.memory_mib);
            out.push(DeviceReading {
                index,
                lost: false,
                utilisation_pct: util,
                memory_used_mib: used,
                memory_total_mib: self.cfg.memory_mib,
                power_mw: self.power_mw_at(index, now),
                energy_mj: (d.energy_uj / 1000) as u64,
                temperature_c: if d.thermal { 92 } else { 32 + util / 2 },
                sm_clock_mhz: if d.thermal { 1_000 } else { 1_980 },
                mem_clock_mhz: 2_619,
                throttle: Throttle {
                    thermal: d.thermal,
                    hw_slowdown: d.thermal,
                    power_cap: util >= 95,
                },
                ecc_uncorrected: d.ecc_uncorrected,
                ecc_corrected: 0,
                xid_count: d.xid_count,
                last_xid: d.last_xid,
                memory_repair_pending: d.ecc_uncorrected > 0,
                vendor_healthy: None,
            });
        }
        Ok(())
    }

    fn processes(&mut self, out: &mut Vec<GpuProcess>) -> Result<(), TelemetryError> {
        out.clear();
        out.extend(
            self.processes
                .iter()
                .filter(|p| !self.devices[p.device as usize].lost)
                .cloned(),
        );
        Ok(())
    }
}

/// A simulated node shared between the agent's sampler thread and whoever
/// drives it (fault-injection tests, the embedded demo).
#[derive(Clone)]
pub struct SharedSimNode {
    node: Arc<Mutex<SimNode>>,
    inventory: Arc<Vec<DeviceInfo>>,
}

impl SharedSimNode {
    pub fn new(node: SimNode) -> Self {
        SharedSimNode {
            inventory: Arc::new(node.inventory.clone()),
            node: Arc::new(Mutex::new(node)),
        }
    }

    /// Runs `f` on the node (inject faults, set utilisation, attach processes).
    pub fn with<R>(&self, f: impl FnOnce(&mut SimNode) -> R) -> R {
        let mut node = self.node.lock().unwrap_or_else(|e| e.into_inner());
        f(&mut node)
    }
}

impl Accelerator for SharedSimNode {
    fn vendor(&self) -> Vendor {
        Vendor::Nvidia
    }

    fn backend(&self) -> &'static str {
        "sim"
    }

    fn inventory(&self) -> &[DeviceInfo] {
        &self.inventory
    }

    fn sample(&mut self, out: &mut Vec<DeviceReading>) -> Result<(), TelemetryError> {
        self.with(|n| n.sample(out))
    }

    fn processes(&mut self, out: &mut Vec<GpuProcess>) -> Result<(), TelemetryError> {
        self.with(|n| n.processes(out))
    }
}

/// SplitMix64-style mixing: a stable hash of (seed, device, segment).
fn mix(seed: u64, a: u64, b: u64) -> u64 {
    let mut z = seed
        .wrapping_mul(0x9E37_79B9_7F4A_7C15)
        .wrapping_add(a.wrapping_mul(0xBF58_476D_1CE4_E5B9))
        .wrapping_add(b.wrapping_mul(0x94D0_49BB_1331_11EB))
        .wrapping_add(0x2545_F491_4F6C_DD1D);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

fn sim_uuid(seed: u64, device: u32) -> String {
    let a = mix(seed, device as u64, 0xA);
    let b = mix(seed, device as u64, 0xB);
    format!(
        "GPU-{:08x}-{:04x}-{:04x}-{:04x}-{:012x}",
        a >> 32,
        (a >> 16) & 0xffff,
        a & 0xffff,
        b >> 48,
        b & 0xffff_ffff_ffff
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn read(node: &mut SimNode) -> Vec<DeviceReading> {
        let mut out = Vec::new();
        node.sample(&mut out).unwrap();
        out
    }

    #[test]
    fn same_seed_same_readings_other_seed_differs() {
        let mut a = SimNode::new(SimConfig::default());
        let mut b = SimNode::new(SimConfig::default());
        let mut c = SimNode::new(SimConfig {
            seed: 2,
            ..SimConfig::default()
        });
        for n in [&mut a, &mut b, &mut c] {
            n.advance(95_000);
        }
        assert_eq!(read(&mut a), read(&mut b));
        assert_ne!(read(&mut a), read(&mut c));
        assert_eq!(a.inventory(), b.inventory());
        assert_ne!(a.inventory()[0].uuid, c.inventory()[0].uuid);
    }

    #[test]
    fn energy_integrates_the_power_model_exactly() {
        let mut n = SimNode::new(SimConfig {
            devices: 1,
            ..SimConfig::default()
        });
        let e0 = read(&mut n)[0].energy_mj;
        assert_eq!(e0, 70_000 * UPTIME_MS / 1000, "one day at 70 W");
        n.set_utilisation(0, Some(50));
        n.advance(2_000);
        let r = read(&mut n);
        // 70 W + 630 W × 50% = 385 W for 2 s = 770 J.
        assert_eq!(r[0].power_mw, 385_000);
        assert_eq!(r[0].energy_mj - e0, 770_000);
        n.set_utilisation(0, Some(0));
        n.advance(1_000);
        assert_eq!(read(&mut n)[0].energy_mj - e0, 840_000);
    }

    #[test]
    fn energy_counter_is_monotone_over_the_seeded_profile() {
        let mut n = SimNode::new(SimConfig::default());
        let mut last = read(&mut n);
        let mut seen_idle = false;
        let mut seen_busy = false;
        for _ in 0..200 {
            n.advance(1_337);
            let now = read(&mut n);
            for (a, b) in last.iter().zip(&now) {
                assert!(b.energy_mj >= a.energy_mj + 70 * 1_337 / 1000 - 1);
                assert!(b.utilisation_pct <= 100);
                seen_idle |= b.utilisation_pct == 0;
                seen_busy |= b.utilisation_pct >= 30;
            }
            last = now;
        }
        // The profile is not flat: devices are idle and busy at times.
        assert!(seen_idle && seen_busy);
    }

    #[test]
    fn power_follows_utilisation_across_a_segment_boundary() {
        let mut n = SimNode::new(SimConfig {
            devices: 1,
            segment_ms: 1_000,
            ..SimConfig::default()
        });
        let e0 = n.energy_uj(0);
        n.advance(2_500);
        let expected: u128 = (0..3u64)
            .map(|seg| {
                let dt = if seg == 2 { 500 } else { 1_000 };
                n.power_mw_at(0, seg * 1_000) as u128 * dt
            })
            .sum();
        assert_eq!(n.energy_uj(0) - e0, expected);
    }

    #[test]
    fn faults_show_in_readings_and_lost_devices_stop_counting() {
        let mut n = SimNode::new(SimConfig::default());
        n.inject(1, Fault::Xid(79));
        n.inject(2, Fault::EccUncorrected);
        n.inject(3, Fault::ThermalThrottle);
        n.inject(4, Fault::DeviceLost);
        n.set_utilisation(3, Some(100));
        let before = n.energy_uj(4);
        n.advance(5_000);
        let r = read(&mut n);
        assert_eq!((r[1].xid_count, r[1].last_xid), (1, 79));
        assert_eq!(r[2].ecc_uncorrected, 1);
        assert!(r[3].throttle.thermal && r[3].temperature_c > 90);
        assert_eq!(r[3].power_mw, 70_000 + 630_000 / 2, "throttle caps power");
        assert!(r[4].lost);
        assert_eq!(n.energy_uj(4), before);
        assert!(!r[0].lost && r[0].last_xid == 0 && !r[0].throttle.thermal);

        n.clear(3, Fault::ThermalThrottle);
        n.clear(4, Fault::DeviceLost);
        let r = read(&mut n);
        assert!(!r[3].throttle.thermal && !r[4].lost);
        assert_eq!(r[1].xid_count, 1, "events stay counted");
    }

    #[test]
    fn processes_report_memory_and_vanish_with_a_lost_device() {
        let mut n = SimNode::new(SimConfig::default());
        n.attach_process(100, 0, 1_000);
        n.attach_process(101, 0, 500);
        n.attach_process(200, 5, 7);
        let r = read(&mut n);
        assert_eq!(r[0].memory_used_mib, 1_500);
        assert_eq!(r[5].memory_used_mib, 7);
        n.inject(5, Fault::DeviceLost);
        let mut procs = Vec::new();
        n.processes(&mut procs).unwrap();
        assert_eq!(procs.iter().map(|p| p.pid).collect::<Vec<_>>(), [100, 101]);
        n.detach_process(100);
        n.processes(&mut procs).unwrap();
        assert_eq!(procs.len(), 1);
    }
}

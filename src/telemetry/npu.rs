//! Domestic NPUs through their vendor exporter: scrape Huawei's npu-exporter
//! (`npu_chip_info_*` series, one per chip, label `id`) and map it onto the
//! same [`Accelerator`] interface, so one cloud holds many chips.
//!
//! Mapping (npu-exporter → reading): `npu_chip_info_utilization` (%) →
//! utilisation; `npu_chip_info_power` (W) → power; `npu_chip_info_temperature`
//! (°C); `npu_chip_info_hbm_used_memory` / `_hbm_total_memory` (MB, falling
//! back to `npu_chip_info_used_memory` / `_total_memory`);
//! `npu_chip_info_health_status` (1 healthy, 0 not) → the vendor verdict;
//! `npu_chip_info_aicore_current_freq` (MHz) → clock, where exported. The
//! exporter has no energy counter, so energy is the measured board power
//! integrated over the scrape interval (trapezoid, integer microjoules): still
//! measured power, never utilisation × TDP. A chip missing from a scrape is lost.

use super::promtext::{self, Exposition};
use super::{Accelerator, DeviceInfo, DeviceReading, GpuProcess, TelemetryError, Vendor};
use std::collections::BTreeMap;
use std::time::{Duration, Instant};

pub const UTILIZATION: &str = "npu_chip_info_utilization";
pub const POWER: &str = "npu_chip_info_power";
pub const TEMPERATURE: &str = "npu_chip_info_temperature";
pub const HBM_USED: &str = "npu_chip_info_hbm_used_memory";
pub const HBM_TOTAL: &str = "npu_chip_info_hbm_total_memory";
pub const USED: &str = "npu_chip_info_used_memory";
pub const TOTAL: &str = "npu_chip_info_total_memory";
pub const HEALTH: &str = "npu_chip_info_health_status";
pub const AICORE_FREQ: &str = "npu_chip_info_aicore_current_freq";

/// Per-chip values from one scrape, keyed by chip id.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct ChipValues {
    pub id: u32,
    pub model: Option<String>,
    pub uuid: Option<String>,
    pub utilisation_pct: f64,
    pub power_w: f64,
    pub temperature_c: f64,
    pub memory_used_mib: f64,
    pub memory_total_mib: f64,
    pub healthy: Option<bool>,
    pub aicore_mhz: f64,
}

/// Groups an exposition's `npu_chip_info_*` samples by chip id (pure).
pub fn chips(e: &Exposition) -> BTreeMap<u32, ChipValues> {
    let mut out: BTreeMap<u32, ChipValues> = BTreeMap::new();
    for s in &e.samples {
        if !s.name.starts_with("npu_chip_info_") {
            continue;
        }
        let Some(id) = s.label("id").and_then(|v| v.trim().parse::<u32>().ok()) else {
            continue;
        };
        let c = out.entry(id).or_insert_with(|| ChipValues {
            id,
            ..ChipValues::default()
        });
        if c.model.is_none() {
            c.model = s
                .label("model_name")
                .filter(|m| !m.is_empty())
                .map(str::to_string);
        }
        if c.uuid.is_none() {
            c.uuid = s
                .label("vdie_id")
                .filter(|m| !m.is_empty())
                .map(str::to_string);
        }
        let v = if s.value.is_finite() { s.value } else { 0.0 };
        match s.name.as_str() {
            UTILIZATION => c.utilisation_pct = v,
            POWER => c.power_w = v,
            TEMPERATURE => c.temperature_c = v,
            HBM_USED if v > 0.0 || c.memory_used_mib == 0.0 => c.memory_used_mib = v,
            HBM_TOTAL if v > 0.0 => c.memory_total_mib = v,
            USED if c.memory_used_mib == 0.0 => c.memory_used_mib = v,
            TOTAL if c.memory_total_mib == 0.0 => c.memory_total_mib = v,
            HEALTH => c.healthy = Some(v == 1.0),
            AICORE_FREQ => c.aicore_mhz = v,
            _ => {}
        }
    }
    out
}

/// The inventory a scrape describes (pure). `default_model` names chips whose
/// exporter gives no `model_name` label.
pub fn inventory_from(e: &Exposition, default_model: &str) -> Vec<DeviceInfo> {
    chips(e)
        .into_values()
        .map(|c| {
            let model = c.model.unwrap_or_else(|| default_model.to_string());
            DeviceInfo {
                index: c.id,
                model: model.clone(),
                memory_mib: c.memory_total_mib.max(0.0).round() as u64,
                uuid: c.uuid.unwrap_or_else(|| format!("NPU-{}", c.id)),
                product_name: model,
                minor: Some(c.id),
            }
        })
        .collect()
}

/// Integrates measured power into a monotone energy counter per chip.
#[derive(Clone, Debug, Default)]
pub struct PowerIntegrator {
    energy_uj: BTreeMap<u32, u128>,
    last_mw: BTreeMap<u32, u64>,
}

impl PowerIntegrator {
    /// Adds `elapsed_ms` at the mean of the previous and current power
    /// (trapezoid rule) and returns the counter in millijoules.
    pub fn step(&mut self, chip: u32, power_mw: u64, elapsed_ms: u64) -> u64 {
        let prev = self.last_mw.insert(chip, power_mw).unwrap_or(power_mw);
        let e = self.energy_uj.entry(chip).or_insert(0);
        // (mW + mW) / 2 × ms = µJ.
        *e += (prev as u128 + power_mw as u128) * elapsed_ms as u128 / 2;
        (*e / 1000) as u64
    }
}

/// Readings for every inventory chip from one scrape (pure, given elapsed time).
pub fn readings_from(
    e: &Exposition,
    inventory: &[DeviceInfo],
    integrator: &mut PowerIntegrator,
    elapsed_ms: u64,
    out: &mut Vec<DeviceReading>,
) {
    let chips = chips(e);
    out.clear();
    for d in inventory {
        let Some(c) = chips.get(&d.index) else {
            out.push(DeviceReading {
                index: d.index,
                lost: true,
                ..DeviceReading::default()
            });
            continue;
        };
        let power_mw = (c.power_w.max(0.0) * 1000.0).round() as u64;
        out.push(DeviceReading {
            index: d.index,
            lost: false,
            utilisation_pct: c.utilisation_pct.clamp(0.0, 100.0).round() as u32,
            memory_used_mib: c.memory_used_mib.max(0.0).round() as u64,
            memory_total_mib: c.memory_total_mib.max(0.0).round() as u64,
            power_mw,
            energy_mj: integrator.step(d.index, power_mw, elapsed_ms),
            temperature_c: c.temperature_c.max(0.0).round() as u32,
            sm_clock_mhz: c.aicore_mhz.max(0.0).round() as u32,
            vendor_healthy: c.healthy,
            ..DeviceReading::default()
        });
    }
}

pub struct NpuExporterBackend {
    url: String,
    client: reqwest::blocking::Client,
    inventory: Vec<DeviceInfo>,
    integrator: PowerIntegrator,
    last_scrape: Option<Instant>,
}

impl NpuExporterBackend {
    /// Scrapes `url` once to learn the chips. Fails when the exporter is
    /// unreachable or reports no `npu_chip_info_*` series.
    pub fn connect(
        url: &str,
        default_model: &str,
        timeout: Duration,
    ) -> Result<Self, TelemetryError> {
        let client = reqwest::blocking::Client::builder()
            .timeout(timeout)
            .build()
            .map_err(|e| exporter_err(url, e))?;
        let e = promtext::scrape_blocking_with(&client, url).map_err(|e| exporter_err(url, e))?;
        let inventory = inventory_from(&e, default_model);
        if inventory.is_empty() {
            return Err(TelemetryError::Exporter {
                url: url.to_string(),
                message: "no npu_chip_info_* series with an `id` label: is this a Huawei npu-exporter endpoint?".into(),
            });
        }
        Ok(NpuExporterBackend {
            url: url.to_string(),
            client,
            inventory,
            integrator: PowerIntegrator::default(),
            last_scrape: None,
        })
    }
}

fn exporter_err(url: &str, e: impl std::fmt::Display) -> TelemetryError {
    TelemetryError::Exporter {
        url: url.to_string(),
        message: e.to_string(),
    }
}

impl Accelerator for NpuExporterBackend {
    fn vendor(&self) -> Vendor {
        Vendor::Huawei
    }

    fn backend(&self) -> &'static str {
        "npu-exporter"
    }

    fn inventory(&self) -> &[DeviceInfo] {
        &self.inventory
    }

    fn sample(&mut self, out: &mut Vec<DeviceReading>) -> Result<(), TelemetryError> {
        let e = promtext::scrape_blocking_with(&self.client, &self.url)
            .map_err(|e| exporter_err(&self.url, e))?;
        let now = Instant::now();
        let elapsed_ms = self
            .last_scrape
            .map(|t| now.duration_since(t).as_millis() as u64)
            .unwrap_or(0);
        self.last_scrape = Some(now);
        readings_from(&e, &self.inventory, &mut self.integrator, elapsed_ms, out);
        Ok(())
    }

    fn processes(&mut self, out: &mut Vec<GpuProcess>) -> Result<(), TelemetryError> {
        // npu-exporter reports containers, not processes; pods holding NPUs
        // are known from the controller's annotations.
        out.clear();
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Shape of a Huawei npu-exporter scrape (two Ascend 910B chips).
    pub(crate) const SCRAPE: &str = r#"# HELP npu_chip_info_utilization the ai core utilization
# TYPE npu_chip_info_utilization gauge
npu_chip_info_utilization{id="0",model_name="Ascend910B",vdie_id="aa-0"} 75
npu_chip_info_utilization{id="1",model_name="Ascend910B",vdie_id="aa-1"} 0
# TYPE npu_chip_info_power gauge
npu_chip_info_power{id="0"} 310.5
npu_chip_info_power{id="1"} 92
npu_chip_info_temperature{id="0"} 61
npu_chip_info_temperature{id="1"} 40
npu_chip_info_hbm_used_memory{id="0"} 40960
npu_chip_info_hbm_total_memory{id="0"} 65536
npu_chip_info_hbm_used_memory{id="1"} 0
npu_chip_info_hbm_total_memory{id="1"} 65536
npu_chip_info_health_status{id="0"} 1
npu_chip_info_health_status{id="1"} 0
machine_npu_nums 2
"#;

    #[test]
    fn inventory_and_readings_map_the_exporter_names() {
        let e = promtext::parse(SCRAPE).unwrap();
        let inv = inventory_from(&e, "Ascend");
        assert_eq!(inv.len(), 2);
        assert_eq!(inv[0].model, "Ascend910B");
        assert_eq!(inv[0].uuid, "aa-0");
        assert_eq!(inv[1].memory_mib, 65_536);

        let mut integ = PowerIntegrator::default();
        let mut r = Vec::new();
        readings_from(&e, &inv, &mut integ, 0, &mut r);
        assert_eq!(r[0].utilisation_pct, 75);
        assert_eq!(r[0].power_mw, 310_500);
        assert_eq!(r[0].memory_used_mib, 40_960);
        assert_eq!(r[0].temperature_c, 61);
        assert_eq!(r[0].vendor_healthy, Some(true));
        assert_eq!(r[1].vendor_healthy, Some(false));
        assert_eq!(r[0].energy_mj, 0);
        // 2 s at a constant 310.5 W = 621 J.
        readings_from(&e, &inv, &mut integ, 2_000, &mut r);
        assert_eq!(r[0].energy_mj, 621_000);
        assert_eq!(r[1].energy_mj, 184_000);
    }

    #[test]
    fn power_integration_is_trapezoidal_and_monotone() {
        let mut p = PowerIntegrator::default();
        assert_eq!(p.step(0, 100_000, 0), 0);
        // 100 W → 300 W over 1 s: mean 200 W = 200 J.
        assert_eq!(p.step(0, 300_000, 1_000), 200_000);
        assert_eq!(p.step(0, 300_000, 500), 350_000);
        assert_eq!(p.step(0, 0, 0), 350_000);
    }

    #[test]
    fn a_chip_missing_from_the_scrape_is_lost() {
        let e = promtext::parse(SCRAPE).unwrap();
        let mut inv = inventory_from(&e, "Ascend");
        inv.push(DeviceInfo {
            index: 7,
            model: "Ascend910B".into(),
            memory_mib: 1,
            uuid: "x".into(),
            product_name: String::new(),
            minor: None,
        });
        let mut r = Vec::new();
        readings_from(&e, &inv, &mut PowerIntegrator::default(), 1_000, &mut r);
        assert!(r[2].lost && !r[0].lost);
    }

    #[test]
    fn connect_scrapes_a_real_endpoint_and_rejects_a_non_npu_one() {
        fn serve(body: &'static str, times: usize) -> (String, std::thread::JoinHandle<()>) {
            use std::io::{Read, Write};
            let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
            let url = format!("http://{}/metrics", l.local_addr().unwrap());
            let h = std::thread::spawn(move || {
                for _ in 0..times {
                    let (mut c, _) = l.accept().unwrap();
                    let mut buf = [0u8; 2048];
                    let _ = c.read(&mut buf);
                    let _ = write!(
                        c,
                        "HTTP/1.1 200 OK\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{}",
                        body.len(),
                        body
                    );
                }
            });
            (url, h)
        }
        let (url, h) = serve(SCRAPE, 2);
        let mut b = NpuExporterBackend::connect(&url, "Ascend", Duration::from_secs(5)).unwrap();
        assert_eq!(b.inventory().len(), 2);
        assert_eq!(b.vendor(), Vendor::Huawei);
        let mut r = Vec::new();
        b.sample(&mut r).unwrap();
        assert_eq!(r[0].power_mw, 310_500);
        h.join().unwrap();

        let (url, h) = serve("up 1\n", 1);
        let err = match NpuExporterBackend::connect(&url, "Ascend", Duration::from_secs(5)) {
            Ok(_) => panic!("accepted an endpoint without NPU series"),
            Err(e) => e.to_string(),
        };
        assert!(
            err.contains("npu_chip_info_") && err.contains(&url),
            "{err}"
        );
        h.join().unwrap();
    }
}

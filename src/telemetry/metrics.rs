//! The agent's Prometheus series: DCGM-exporter-compatible device metrics
//! (labels `gpu`, `UUID`, `modelName`, `Hostname`) so existing dashboards keep
//! working, plus zhisuan's health and per-pod energy series.

use super::attribution::PodRef;
use super::health::Verdict;
use super::{DeviceInfo, DeviceReading};
use prometheus::{CounterVec, GaugeVec, HistogramOpts, HistogramVec, IntCounter, Opts, Registry};
use std::collections::BTreeMap;

const DCGM_LABELS: [&str; 4] = ["gpu", "UUID", "modelName", "Hostname"];

pub struct AgentMetrics {
    gpu_util: GaugeVec,
    power_usage: GaugeVec,
    total_energy: CounterVec,
    fb_used: GaugeVec,
    fb_free: GaugeVec,
    gpu_temp: GaugeVec,
    sm_clock: GaugeVec,
    mem_clock: GaugeVec,
    xid_errors: GaugeVec,
    ecc_dbe: GaugeVec,
    device_healthy: GaugeVec,
    pod_energy: CounterVec,
    idle_energy: CounterVec,
    samples: IntCounter,
    sample_errors: IntCounter,
    publish_errors: IntCounter,
    sample_seconds: HistogramVec,
    /// Pods with a live `zhisuan_pod_energy_joules_total` series and the
    /// windows since each last got energy: a pod's series is dropped
    /// [`GONE_POD_WINDOWS`] windows after it left (bounded cardinality, yet
    /// scrapers still see its final increments).
    live_pods: BTreeMap<(String, String, String), u32>,
}

/// Energy windows a pod's series outlives the pod (at the default 5 s
/// sampling, 10 minutes: several scrape intervals).
pub const GONE_POD_WINDOWS: u32 = 120;

fn gauge(r: &Registry, name: &str, help: &str, labels: &[&str]) -> prometheus::Result<GaugeVec> {
    let g = GaugeVec::new(Opts::new(name, help), labels)?;
    r.register(Box::new(g.clone()))?;
    Ok(g)
}

fn counter(
    r: &Registry,
    name: &str,
    help: &str,
    labels: &[&str],
) -> prometheus::Result<CounterVec> {
    let c = CounterVec::new(Opts::new(name, help), labels)?;
    r.register(Box::new(c.clone()))?;
    Ok(c)
}

fn int_counter(r: &Registry, name: &str, help: &str) -> prometheus::Result<IntCounter> {
    let c = IntCounter::new(name, help)?;
    r.register(Box::new(c.clone()))?;
    Ok(c)
}

impl AgentMetrics {
    pub fn new(registry: &Registry) -> prometheus::Result<Self> {
        let r = registry;
        Ok(AgentMetrics {
            gpu_util: gauge(
                r,
                "DCGM_FI_DEV_GPU_UTIL",
                "GPU utilization (in %).",
                &DCGM_LABELS,
            )?,
            power_usage: gauge(
                r,
                "DCGM_FI_DEV_POWER_USAGE",
                "Power draw (in W).",
                &DCGM_LABELS,
            )?,
            total_energy: counter(
                r,
                "DCGM_FI_DEV_TOTAL_ENERGY_CONSUMPTION",
                "Total energy consumption since boot (in mJ).",
                &DCGM_LABELS,
            )?,
            fb_used: gauge(
                r,
                "DCGM_FI_DEV_FB_USED",
                "Framebuffer memory used (in MiB).",
                &DCGM_LABELS,
            )?,
            fb_free: gauge(
                r,
                "DCGM_FI_DEV_FB_FREE",
                "Framebuffer memory free (in MiB).",
                &DCGM_LABELS,
            )?,
            gpu_temp: gauge(
                r,
                "DCGM_FI_DEV_GPU_TEMP",
                "GPU temperature (in C).",
                &DCGM_LABELS,
            )?,
            sm_clock: gauge(
                r,
                "DCGM_FI_DEV_SM_CLOCK",
                "SM clock frequency (in MHz).",
                &DCGM_LABELS,
            )?,
            mem_clock: gauge(
                r,
                "DCGM_FI_DEV_MEM_CLOCK",
                "Memory clock frequency (in MHz).",
                &DCGM_LABELS,
            )?,
            xid_errors: gauge(
                r,
                "DCGM_FI_DEV_XID_ERRORS",
                "Value of the last XID error encountered.",
                &DCGM_LABELS,
            )?,
            ecc_dbe: gauge(
                r,
                "DCGM_FI_DEV_ECC_DBE_VOL_TOTAL",
                "Total number of double-bit volatile ECC errors.",
                &DCGM_LABELS,
            )?,
            device_healthy: gauge(
                r,
                "zhisuan_device_healthy",
                "1 when the device is in placement, 0 when the agent took it out.",
                &["node", "gpu"],
            )?,
            pod_energy: counter(
                r,
                "zhisuan_pod_energy_joules_total",
                "Device energy attributed to a pod (from the device energy counter).",
                &["node", "namespace", "pod", "gpu"],
            )?,
            idle_energy: counter(
                r,
                "zhisuan_device_idle_energy_joules_total",
                "Device energy not attributed to any pod.",
                &["node", "gpu"],
            )?,
            samples: int_counter(
                r,
                "zhisuan_agent_samples_total",
                "Samples taken by the agent.",
            )?,
            sample_errors: int_counter(
                r,
                "zhisuan_agent_sample_errors_total",
                "Samples that failed (backend unreachable).",
            )?,
            publish_errors: int_counter(
                r,
                "zhisuan_agent_publish_errors_total",
                "Failed attempts to publish node inventory and health.",
            )?,
            sample_seconds: {
                let h = HistogramVec::new(
                    HistogramOpts::new(
                        "zhisuan_agent_sample_duration_seconds",
                        "Time to read every device once.",
                    )
                    .buckets(vec![0.0005, 0.001, 0.005, 0.01, 0.05, 0.1, 0.5, 1.0]),
                    &["backend"],
                )?;
                r.register(Box::new(h.clone()))?;
                h
            },
            live_pods: BTreeMap::new(),
        })
    }

    /// Device gauges from one sample. `energy_delta_mj[i]` is the energy the
    /// device counted since the previous sample (its whole counter on the first).
    pub fn record_devices(
        &self,
        hostname: &str,
        inventory: &[DeviceInfo],
        readings: &[DeviceReading],
        energy_delta_mj: &[u64],
        verdicts: &[Verdict],
    ) {
        for (i, r) in readings.iter().enumerate() {
            let Some(info) = inventory.iter().find(|d| d.index == r.index) else {
                continue;
            };
            let gpu = r.index.to_string();
            let model = if info.product_name.is_empty() {
                info.model.as_str()
            } else {
                info.product_name.as_str()
            };
            let l = [gpu.as_str(), info.uuid.as_str(), model, hostname];
            let healthy = verdicts
                .iter()
                .find(|v| v.index == r.index)
                .is_none_or(|v| v.healthy);
            self.device_healthy
                .with_label_values(&[hostname, gpu.as_str()])
                .set(if healthy { 1.0 } else { 0.0 });
            if r.lost {
                // A lost device has no readings; keep its last values rather
                // than report zeros that look like an idle GPU.
                continue;
            }
            self.gpu_util
                .with_label_values(&l)
                .set(r.utilisation_pct as f64);
            self.power_usage
                .with_label_values(&l)
                .set(r.power_mw as f64 / 1000.0);
            if let Some(d) = energy_delta_mj.get(i) {
                self.total_energy.with_label_values(&l).inc_by(*d as f64);
            }
            self.fb_used
                .with_label_values(&l)
                .set(r.memory_used_mib as f64);
            self.fb_free
                .with_label_values(&l)
                .set(r.memory_total_mib.saturating_sub(r.memory_used_mib) as f64);
            self.gpu_temp
                .with_label_values(&l)
                .set(r.temperature_c as f64);
            self.sm_clock
                .with_label_values(&l)
                .set(r.sm_clock_mhz as f64);
            self.mem_clock
                .with_label_values(&l)
                .set(r.mem_clock_mhz as f64);
            self.xid_errors.with_label_values(&l).set(r.last_xid as f64);
            self.ecc_dbe
                .with_label_values(&l)
                .set(r.ecc_uncorrected as f64);
        }
    }

    /// Adds one window's attributed energy. `pods` are this window's holders;
    /// series of pods gone for [`GONE_POD_WINDOWS`] windows are removed.
    pub fn record_energy(
        &mut self,
        hostname: &str,
        pods: &[(&PodRef, u32, u64)],
        idle: &[(u32, u64)],
    ) {
        for age in self.live_pods.values_mut() {
            *age = age.saturating_add(1);
        }
        for (pod, device, mj) in pods {
            let gpu = device.to_string();
            self.pod_energy
                .with_label_values(&[
                    hostname,
                    pod.namespace.as_str(),
                    pod.name.as_str(),
                    gpu.as_str(),
                ])
                .inc_by(*mj as f64 / 1000.0);
            self.live_pods
                .insert((pod.namespace.clone(), pod.name.clone(), gpu), 0);
        }
        let pod_energy = &self.pod_energy;
        self.live_pods.retain(|(namespace, pod, gpu), age| {
            let keep = *age <= GONE_POD_WINDOWS;
            if !keep {
                let _ = pod_energy.remove_label_values(&[hostname, namespace, pod, gpu]);
            }
            keep
        });
        for (device, mj) in idle {
            self.idle_energy
                .with_label_values(&[hostname, device.to_string().as_str()])
                .inc_by(*mj as f64 / 1000.0);
        }
    }

    pub fn sample_taken(&self, backend: &str, seconds: f64) {
        self.samples.inc();
        self.sample_seconds
            .with_label_values(&[backend])
            .observe(seconds);
    }

    pub fn sample_failed(&self) {
        self.sample_errors.inc();
    }

    /// The publish-error counter, for the async publisher (the metrics
    /// themselves live on the sampler thread).
    pub fn publish_error_counter(&self) -> IntCounter {
        self.publish_errors.clone()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::telemetry::promtext;

    #[test]
    fn series_use_the_dcgm_names_and_labels_and_drop_departed_pods() {
        let registry = Registry::new();
        let mut m = AgentMetrics::new(&registry).unwrap();
        let inv = vec![DeviceInfo {
            index: 0,
            model: "H100".into(),
            memory_mib: 80,
            uuid: "GPU-x".into(),
            product_name: "NVIDIA H100 80GB HBM3".into(),
            minor: None,
        }];
        let r = vec![DeviceReading {
            index: 0,
            utilisation_pct: 42,
            memory_used_mib: 30,
            memory_total_mib: 80,
            power_mw: 123_500,
            energy_mj: 9_000,
            last_xid: 79,
            ..DeviceReading::default()
        }];
        let v = vec![Verdict {
            index: 0,
            healthy: false,
            reasons: vec![],
        }];
        m.record_devices("node-a", &inv, &r, &[9_000], &v);
        let pod = PodRef {
            namespace: "t1".into(),
            name: "train-0".into(),
            uid: "u".into(),
        };
        m.record_energy("node-a", &[(&pod, 0, 6_000)], &[(0, 3_000)]);

        let text = prometheus::TextEncoder::new()
            .encode_to_string(&registry.gather())
            .unwrap();
        let e = promtext::parse(&text).unwrap();
        let l = [
            ("gpu", "0"),
            ("UUID", "GPU-x"),
            ("modelName", "NVIDIA H100 80GB HBM3"),
            ("Hostname", "node-a"),
        ];
        assert_eq!(e.value("DCGM_FI_DEV_GPU_UTIL", &l), Some(42.0));
        assert_eq!(e.value("DCGM_FI_DEV_POWER_USAGE", &l), Some(123.5));
        assert_eq!(
            e.value("DCGM_FI_DEV_TOTAL_ENERGY_CONSUMPTION", &l),
            Some(9_000.0)
        );
        assert_eq!(e.value("DCGM_FI_DEV_FB_FREE", &l), Some(50.0));
        assert_eq!(e.value("DCGM_FI_DEV_XID_ERRORS", &l), Some(79.0));
        assert_eq!(
            e.value(
                "zhisuan_device_healthy",
                &[("node", "node-a"), ("gpu", "0")]
            ),
            Some(0.0)
        );
        assert_eq!(
            e.value(
                "zhisuan_pod_energy_joules_total",
                &[("namespace", "t1"), ("pod", "train-0"), ("gpu", "0")]
            ),
            Some(6.0)
        );
        assert_eq!(
            e.value("zhisuan_device_idle_energy_joules_total", &[("gpu", "0")]),
            Some(3.0)
        );
        assert_eq!(
            e.types.get("DCGM_FI_DEV_TOTAL_ENERGY_CONSUMPTION"),
            Some(&promtext::MetricType::Counter)
        );

        // The pod leaves: its series stays for GONE_POD_WINDOWS windows (so
        // scrapers see its last increments), then goes.
        let series = || {
            let text = prometheus::TextEncoder::new()
                .encode_to_string(&registry.gather())
                .unwrap();
            promtext::parse(&text).unwrap()
        };
        m.record_energy("node-a", &[], &[(0, 1_000)]);
        let e = series();
        assert_eq!(
            e.value(
                "zhisuan_pod_energy_joules_total",
                &[("namespace", "t1"), ("pod", "train-0"), ("gpu", "0")]
            ),
            Some(6.0),
            "the final value is still there"
        );
        for _ in 1..GONE_POD_WINDOWS {
            m.record_energy("node-a", &[], &[]);
        }
        assert_eq!(
            series().series("zhisuan_pod_energy_joules_total").count(),
            1
        );
        m.record_energy("node-a", &[], &[]);
        let e = series();
        assert_eq!(e.series("zhisuan_pod_energy_joules_total").count(), 0);
        assert_eq!(
            e.value("zhisuan_device_idle_energy_joules_total", &[("gpu", "0")]),
            Some(4.0)
        );
    }
}

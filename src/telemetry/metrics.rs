//! The agent's Prometheus series: DCGM-exporter-compatible device metrics
//! (labels `gpu`, `UUID`, `modelName`, `Hostname`, and — as dcgm-exporter's
//! Kubernetes mode adds them — `container`, `namespace`, `pod` of the pod
//! holding the device, empty while none does) so existing per-pod dashboards
//! keep working, plus zhisuan's health and per-pod energy series.
//!
//! As in dcgm-exporter, a device shared by several pods has one series per
//! pod, each with the device's values: summing a device metric by pod counts
//! a shared device once per holder (per-pod energy is
//! `zhisuan_pod_energy_joules_total`, which splits it).

use super::attribution::{counter_delta, PodRef};
use super::health::Verdict;
use super::{DeviceInfo, DeviceReading};
use prometheus::{CounterVec, GaugeVec, HistogramOpts, HistogramVec, IntCounter, Opts, Registry};
use std::collections::BTreeMap;

const DCGM_LABELS: [&str; 7] = [
    "gpu",
    "UUID",
    "modelName",
    "Hostname",
    "container",
    "namespace",
    "pod",
];

/// A pod holding a device, as the device series name it.
#[derive(Clone, Debug, Default, PartialEq, Eq, PartialOrd, Ord)]
pub struct Holder {
    pub container: String,
    pub namespace: String,
    pub pod: String,
}

/// The label values of one device series.
type SeriesKey = [String; 7];

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
    ecc_dbe: CounterVec,
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
    /// Each device's current series (one per holder, or one with empty pod
    /// labels), to remove a series when its pod lets go of the device.
    device_series: BTreeMap<u32, Vec<SeriesKey>>,
    /// Each device's last uncorrected-ECC count (for the counter's increments).
    last_ecc: BTreeMap<u32, u64>,
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
            ecc_dbe: counter(
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
            device_series: BTreeMap::new(),
            last_ecc: BTreeMap::new(),
        })
    }

    /// Device series from one sample. `energy_delta_mj[i]` is the energy the
    /// device counted since the previous sample (its whole counter on the
    /// first); `holders` the pods holding each device now.
    pub fn record_devices(
        &mut self,
        hostname: &str,
        inventory: &[DeviceInfo],
        readings: &[DeviceReading],
        energy_delta_mj: &[u64],
        verdicts: &[Verdict],
        holders: &[(u32, Holder)],
    ) {
        for (i, r) in readings.iter().enumerate() {
            let Some(info) = inventory.iter().find(|d| d.index == r.index) else {
                continue;
            };
            let gpu = r.index.to_string();
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
            let model = if info.product_name.is_empty() {
                info.model.as_str()
            } else {
                info.product_name.as_str()
            };
            let wanted = series_keys(&gpu, &info.uuid, model, hostname, r.index, holders);
            let previous = self.device_series.remove(&r.index).unwrap_or_default();
            for old in previous.iter().filter(|k| !wanted.contains(k)) {
                self.remove_device_series(old);
            }
            let ecc_delta = match self.last_ecc.insert(r.index, r.ecc_uncorrected) {
                Some(last) => counter_delta(last, r.ecc_uncorrected),
                None => r.ecc_uncorrected,
            };
            for key in &wanted {
                let l: [&str; 7] = std::array::from_fn(|k| key[k].as_str());
                let fresh = !previous.contains(key);
                self.set_device_values(&l, r);
                // A new series starts at the device's own totals (as
                // dcgm-exporter reports them); an existing one adds the increments.
                let energy = if fresh {
                    r.energy_mj
                } else {
                    energy_delta_mj.get(i).copied().unwrap_or(0)
                };
                self.total_energy
                    .with_label_values(&l)
                    .inc_by(energy as f64);
                let ecc = if fresh { r.ecc_uncorrected } else { ecc_delta };
                self.ecc_dbe.with_label_values(&l).inc_by(ecc as f64);
            }
            self.device_series.insert(r.index, wanted);
        }
    }

    fn set_device_values(&self, l: &[&str; 7], r: &DeviceReading) {
        self.gpu_util
            .with_label_values(l)
            .set(r.utilisation_pct as f64);
        self.power_usage
            .with_label_values(l)
            .set(r.power_mw as f64 / 1000.0);
        self.fb_used
            .with_label_values(l)
            .set(r.memory_used_mib as f64);
        self.fb_free
            .with_label_values(l)
            .set(r.memory_total_mib.saturating_sub(r.memory_used_mib) as f64);
        self.gpu_temp
            .with_label_values(l)
            .set(r.temperature_c as f64);
        self.sm_clock
            .with_label_values(l)
            .set(r.sm_clock_mhz as f64);
        self.mem_clock
            .with_label_values(l)
            .set(r.mem_clock_mhz as f64);
        self.xid_errors.with_label_values(l).set(r.last_xid as f64);
    }

    fn remove_device_series(&self, key: &SeriesKey) {
        let l: [&str; 7] = std::array::from_fn(|k| key[k].as_str());
        for g in [
            &self.gpu_util,
            &self.power_usage,
            &self.fb_used,
            &self.fb_free,
            &self.gpu_temp,
            &self.sm_clock,
            &self.mem_clock,
            &self.xid_errors,
        ] {
            let _ = g.remove_label_values(&l);
        }
        let _ = self.total_energy.remove_label_values(&l);
        let _ = self.ecc_dbe.remove_label_values(&l);
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

/// One series per holder of the device (sorted, no repeats), or one with
/// empty pod labels while nobody holds it.
fn series_keys(
    gpu: &str,
    uuid: &str,
    model: &str,
    hostname: &str,
    device: u32,
    holders: &[(u32, Holder)],
) -> Vec<SeriesKey> {
    let mut mine: Vec<&Holder> = holders
        .iter()
        .filter(|(d, _)| *d == device)
        .map(|(_, h)| h)
        .collect();
    mine.sort();
    mine.dedup();
    let none = Holder::default();
    if mine.is_empty() {
        mine.push(&none);
    }
    mine.into_iter()
        .map(|h| {
            [
                gpu.to_string(),
                uuid.to_string(),
                model.to_string(),
                hostname.to_string(),
                h.container.clone(),
                h.namespace.clone(),
                h.pod.clone(),
            ]
        })
        .collect()
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
        m.record_devices("node-a", &inv, &r, &[9_000], &v, &[]);
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
        for counter in [
            "DCGM_FI_DEV_TOTAL_ENERGY_CONSUMPTION",
            "DCGM_FI_DEV_ECC_DBE_VOL_TOTAL",
        ] {
            assert_eq!(
                e.types.get(counter),
                Some(&promtext::MetricType::Counter),
                "{counter} is a counter, as in dcgm-exporter"
            );
        }

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

    #[test]
    fn device_series_carry_the_holding_pods_labels_and_drop_them_when_it_leaves() {
        let registry = Registry::new();
        let mut m = AgentMetrics::new(&registry).unwrap();
        let inv = vec![DeviceInfo {
            index: 3,
            model: "A100".into(),
            memory_mib: 80,
            uuid: "GPU-a".into(),
            product_name: String::new(),
            minor: None,
        }];
        let reading = |energy_mj: u64, ecc: u64| {
            vec![DeviceReading {
                index: 3,
                utilisation_pct: 70,
                energy_mj,
                ecc_uncorrected: ecc,
                ..DeviceReading::default()
            }]
        };
        let holder = |pod: &str| Holder {
            container: "main".into(),
            namespace: "t1".into(),
            pod: pod.into(),
        };
        let series = || {
            let text = prometheus::TextEncoder::new()
                .encode_to_string(&registry.gather())
                .unwrap();
            promtext::parse(&text).unwrap()
        };
        let pod_labels = |pod: &'static str| {
            [
                ("gpu", "3"),
                ("container", if pod.is_empty() { "" } else { "main" }),
                ("namespace", if pod.is_empty() { "" } else { "t1" }),
                ("pod", pod),
            ]
        };
        // Nobody holds it: one series, empty pod labels.
        m.record_devices("n", &inv, &reading(1_000, 0), &[1_000], &[], &[]);
        let e = series();
        assert_eq!(e.series("DCGM_FI_DEV_GPU_UTIL").count(), 1);
        assert_eq!(e.value("DCGM_FI_DEV_GPU_UTIL", &pod_labels("")), Some(70.0));
        // train-0 takes it: its series starts at the device's totals; the
        // unheld series is gone.
        let held = [(3, holder("train-0"))];
        m.record_devices("n", &inv, &reading(1_500, 2), &[500], &[], &held);
        let e = series();
        assert_eq!(e.series("DCGM_FI_DEV_GPU_UTIL").count(), 1);
        let l = pod_labels("train-0");
        assert_eq!(e.value("DCGM_FI_DEV_GPU_UTIL", &l), Some(70.0));
        assert_eq!(
            e.value("DCGM_FI_DEV_TOTAL_ENERGY_CONSUMPTION", &l),
            Some(1_500.0)
        );
        assert_eq!(e.value("DCGM_FI_DEV_ECC_DBE_VOL_TOTAL", &l), Some(2.0));
        assert_eq!(e.value("DCGM_FI_DEV_GPU_UTIL", &pod_labels("")), None);
        // Next sample: the counters add the increments.
        m.record_devices("n", &inv, &reading(1_800, 3), &[300], &[], &held);
        let e = series();
        assert_eq!(
            e.value("DCGM_FI_DEV_TOTAL_ENERGY_CONSUMPTION", &l),
            Some(1_800.0)
        );
        assert_eq!(e.value("DCGM_FI_DEV_ECC_DBE_VOL_TOTAL", &l), Some(3.0));
        // Shared by two pods: a series each, with the device's values.
        let shared = [(3, holder("infer-b")), (3, holder("infer-a"))];
        m.record_devices("n", &inv, &reading(1_900, 3), &[100], &[], &shared);
        let e = series();
        assert_eq!(e.series("DCGM_FI_DEV_GPU_UTIL").count(), 2);
        assert_eq!(
            e.value("DCGM_FI_DEV_GPU_UTIL", &pod_labels("infer-a")),
            Some(70.0)
        );
        assert_eq!(
            e.value("DCGM_FI_DEV_GPU_UTIL", &pod_labels("train-0")),
            None
        );
        assert_eq!(
            e.value("DCGM_FI_DEV_ECC_DBE_VOL_TOTAL", &pod_labels("train-0")),
            None
        );
    }
}

//! One agent step: sample the backend, resolve processes to pods, judge
//! health, attribute the window's energy, update the metrics and build the
//! node publication. Synchronous (backends block); the CLI runs it on its own
//! thread and does the network work on tokio.

use super::attribution::{
    self, counter_delta, pod_uid_from_cgroup, Attribution, PodDevices, PodRef, ProcessOwner,
};
use super::health::{HealthPolicy, HealthTracker, Verdict};
use super::metrics::{AgentMetrics, Holder};
use super::publish::{node_publication, NodePublication};
use super::{Accelerator, DeviceInfo, DeviceReading, GpuProcess, TelemetryError};
use chrono::{DateTime, Utc};
use serde::Serialize;
use std::collections::HashMap;
use std::path::PathBuf;
use std::time::Instant;

pub struct AgentConfig {
    pub node: String,
    pub region: Option<String>,
    pub health: HealthPolicy,
    /// Where the host's `/proc` is visible (`/host/proc` in a DaemonSet).
    pub proc_root: PathBuf,
}

/// Energy of one window, per pod and idle, for reports.
#[derive(Clone, Debug, Default, Serialize)]
pub struct EnergyWindow {
    pub device_mj: Vec<(u32, u64)>,
    pub pods: Vec<PodWindowEnergy>,
    pub idle_mj: Vec<(u32, u64)>,
}

impl EnergyWindow {
    /// Millijoules per pod uid (summed over its devices).
    pub fn pod_totals(&self) -> Vec<(&str, u64)> {
        let mut out: Vec<(&str, u64)> = Vec::with_capacity(self.pods.len());
        for p in &self.pods {
            match out.iter_mut().find(|(u, _)| *u == p.uid) {
                Some((_, mj)) => *mj += p.energy_mj,
                None => out.push((p.uid.as_str(), p.energy_mj)),
            }
        }
        out
    }
}

#[derive(Clone, Debug, Serialize)]
pub struct PodWindowEnergy {
    pub namespace: String,
    pub pod: String,
    pub uid: String,
    pub device: u32,
    pub energy_mj: u64,
}

pub struct Agent<B: Accelerator> {
    backend: B,
    cfg: AgentConfig,
    tracker: HealthTracker,
    metrics: Option<AgentMetrics>,
    prev_energy: Vec<Option<u64>>,
    readings: Vec<DeviceReading>,
    verdicts: Vec<Verdict>,
    processes: Vec<GpuProcess>,
    pid_pods: HashMap<u32, Option<String>>,
    last_window: EnergyWindow,
}

impl<B: Accelerator> Agent<B> {
    pub fn new(backend: B, cfg: AgentConfig, metrics: Option<AgentMetrics>) -> Self {
        let n = backend
            .inventory()
            .iter()
            .map(|d| d.index + 1)
            .max()
            .unwrap_or(0) as usize;
        Agent {
            tracker: HealthTracker::new(cfg.health.clone()),
            backend,
            cfg,
            metrics,
            prev_energy: vec![None; n],
            readings: Vec::new(),
            verdicts: Vec::new(),
            processes: Vec::new(),
            pid_pods: HashMap::new(),
            last_window: EnergyWindow::default(),
        }
    }

    pub fn inventory(&self) -> &[DeviceInfo] {
        self.backend.inventory()
    }

    pub fn backend_name(&self) -> &'static str {
        self.backend.backend()
    }

    pub fn vendor(&self) -> super::Vendor {
        self.backend.vendor()
    }

    pub fn readings(&self) -> &[DeviceReading] {
        &self.readings
    }

    pub fn verdicts(&self) -> &[Verdict] {
        &self.verdicts
    }

    pub fn last_window(&self) -> &EnergyWindow {
        &self.last_window
    }

    /// Mutable access to the backend (tests and the demo drive the sim through it).
    pub fn backend_mut(&mut self) -> &mut B {
        &mut self.backend
    }

    /// One sampling step. `pods` are the pods bound on this node with their
    /// annotated devices (empty when running without a control plane).
    pub fn step(&mut self, pods: &[PodDevices]) -> Result<(), TelemetryError> {
        let started = Instant::now();
        if let Err(e) = self.backend.sample(&mut self.readings) {
            if let Some(m) = &self.metrics {
                m.sample_failed();
            }
            return Err(e);
        }
        self.backend.processes(&mut self.processes)?;
        self.tracker.observe(&self.readings, &mut self.verdicts);
        let (counter_increments, window) = self.energy_deltas();
        let owners = self.process_owners();
        let all_pods = with_process_pods(pods, &owners);
        let shares = attribution::shares(&all_pods, &owners);
        let Attribution {
            pods: pod_energy,
            idle,
        } = attribution::attribute(&window, &shares);
        if let Some(m) = &mut self.metrics {
            let holders: Vec<(u32, Holder)> = shares
                .iter()
                .map(|s| {
                    let p = &all_pods[s.pod];
                    let holder = Holder {
                        container: p.container.clone(),
                        namespace: p.pod.namespace.clone(),
                        pod: p.pod.name.clone(),
                    };
                    (s.device, holder)
                })
                .collect();
            m.record_devices(
                &self.cfg.node,
                self.backend.inventory(),
                &self.readings,
                &counter_increments,
                &self.verdicts,
                &holders,
            );
            if !window.is_empty() {
                let per_pod: Vec<(&PodRef, u32, u64)> = pod_energy
                    .iter()
                    .map(|p| (&all_pods[p.pod].pod, p.device, p.energy_mj))
                    .collect();
                m.record_energy(&self.cfg.node, &per_pod, &idle);
            }
            m.sample_taken(self.backend.backend(), started.elapsed().as_secs_f64());
        }
        self.last_window = EnergyWindow {
            pods: pod_energy
                .iter()
                .map(|p| PodWindowEnergy {
                    namespace: all_pods[p.pod].pod.namespace.clone(),
                    pod: all_pods[p.pod].pod.name.clone(),
                    uid: all_pods[p.pod].pod.uid.clone(),
                    device: p.device,
                    energy_mj: p.energy_mj,
                })
                .collect(),
            device_mj: window,
            idle_mj: idle,
        };
        Ok(())
    }

    /// Window energy from each device's own counter: the counter's
    /// increment per device (the whole reading the first time, 0 for a
    /// lost device), and (device, mJ) for the devices with a window (read
    /// before as well).
    fn energy_deltas(&mut self) -> (Vec<u64>, Vec<(u32, u64)>) {
        let mut counter_increments = Vec::with_capacity(self.readings.len());
        let mut window = Vec::with_capacity(self.readings.len());
        for r in &self.readings {
            let slot = &mut self.prev_energy[r.index as usize];
            if r.lost {
                counter_increments.push(0);
                continue;
            }
            match *slot {
                Some(prev) => {
                    let d = counter_delta(prev, r.energy_mj);
                    counter_increments.push(d);
                    window.push((r.index, d));
                }
                None => counter_increments.push(r.energy_mj),
            }
            *slot = Some(r.energy_mj);
        }
        (counter_increments, window)
    }

    /// Node labels and annotations for the latest sample.
    pub fn publication(&self, now: DateTime<Utc>) -> NodePublication {
        node_publication(
            self.backend.vendor(),
            self.cfg.region.as_deref(),
            self.backend.inventory(),
            &self.verdicts,
            now,
        )
    }

    /// Maps driver-reported pids to pod uids through `/proc/<pid>/cgroup`,
    /// caching per pid (a pid's cgroup does not change).
    fn process_owners(&mut self) -> Vec<ProcessOwner> {
        let procs = &self.processes;
        self.pid_pods
            .retain(|pid, _| procs.iter().any(|p| p.pid == *pid));
        let mut out = Vec::new();
        for p in procs {
            let uid = self
                .pid_pods
                .entry(p.pid)
                .or_insert_with(|| {
                    let path = self.cfg.proc_root.join(p.pid.to_string()).join("cgroup");
                    std::fs::read_to_string(path)
                        .ok()
                        .and_then(|t| pod_uid_from_cgroup(&t))
                })
                .clone();
            if let Some(pod_uid) = uid {
                out.push(ProcessOwner {
                    device: p.device,
                    pod_uid,
                });
            }
        }
        out
    }
}

/// `pods`, and the pods found only through their processes (no zhisuan
/// annotation, or no control plane to ask), named by uid, so they still
/// get their energy.
fn with_process_pods(pods: &[PodDevices], owners: &[ProcessOwner]) -> Vec<PodDevices> {
    let mut all_pods: Vec<PodDevices> = pods.to_vec();
    for o in owners {
        if !all_pods.iter().any(|p| p.pod.uid == o.pod_uid) {
            all_pods.push(PodDevices {
                pod: PodRef {
                    namespace: String::new(),
                    name: o.pod_uid.clone(),
                    uid: o.pod_uid.clone(),
                },
                container: String::new(),
                devices: Vec::new(),
                milli: None,
            });
        }
    }
    all_pods
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::telemetry::publish::ANNOTATION_UNHEALTHY;
    use crate::telemetry::sim::{Fault, SimConfig, SimNode};

    fn agent_with(proc_root: PathBuf) -> Agent<SimNode> {
        Agent::new(
            SimNode::new(SimConfig::default()),
            AgentConfig {
                node: "n1".into(),
                region: Some("qinghai".into()),
                health: HealthPolicy {
                    hold_samples: 1,
                    max_temperature_c: 0,
                },
                proc_root,
            },
            None,
        )
    }

    fn pod(name: &str, uid: &str, devices: &[u32], milli: Option<u32>) -> PodDevices {
        PodDevices {
            pod: PodRef {
                namespace: "t".into(),
                name: name.into(),
                uid: uid.into(),
            },
            container: "main".into(),
            devices: devices.to_vec(),
            milli,
        }
    }

    #[test]
    fn pods_plus_idle_equal_each_device_counter_delta_over_many_windows() {
        let dir = tempfile::tempdir().unwrap();
        // pid 4242 runs in pod U on device 6 without any annotation.
        let uid = "0b6c1a2e-7d7e-4f3c-9a51-2f3d4e5f6a7b";
        std::fs::create_dir_all(dir.path().join("4242")).unwrap();
        std::fs::write(
            dir.path().join("4242/cgroup"),
            format!("0::/kubepods/besteffort/pod{uid}/ctr\n"),
        )
        .unwrap();
        let mut agent = agent_with(dir.path().to_path_buf());
        agent.backend_mut().attach_process(4242, 6, 100);
        let pods = [
            pod("train", "a", &[0, 1], None),
            pod("infer-1", "b", &[2], Some(500)),
            pod("infer-2", "c", &[2], Some(250)),
        ];
        agent.step(&pods).unwrap();
        assert!(
            agent.last_window().device_mj.is_empty(),
            "first sample has no window"
        );
        let start: Vec<u128> = (0..8).map(|d| agent.backend_mut().energy_uj(d)).collect();
        let mut pod_sum = [0u64; 8];
        let mut idle_sum = [0u64; 8];
        for _ in 0..120 {
            agent.backend_mut().advance(1_000);
            agent.step(&pods).unwrap();
            let w = agent.last_window();
            for &(d, e) in &w.device_mj {
                let pods: u64 = w
                    .pods
                    .iter()
                    .filter(|p| p.device == d)
                    .map(|p| p.energy_mj)
                    .sum();
                let idle: u64 = w
                    .idle_mj
                    .iter()
                    .filter(|(i, _)| *i == d)
                    .map(|(_, e)| *e)
                    .sum();
                assert_eq!(pods + idle, e, "window, device {d}");
                pod_sum[d as usize] += pods;
                idle_sum[d as usize] += idle;
            }
        }
        for d in 0..8u32 {
            let truth_uj = agent.backend_mut().energy_uj(d) - start[d as usize];
            let attributed = (pod_sum[d as usize] + idle_sum[d as usize]) as f64;
            let truth_mj = truth_uj as f64 / 1000.0;
            // Millijoule counter granularity only: far inside 0.5 %.
            assert!(
                (attributed - truth_mj).abs() <= 1.0,
                "device {d}: {attributed} vs {truth_mj}"
            );
        }
        assert_eq!(idle_sum[0], 0);
        assert_eq!(idle_sum[1], 0);
        assert_eq!(
            pod_sum[6] + idle_sum[6],
            pod_sum[6],
            "the cgroup-found pod holds device 6"
        );
        assert!(pod_sum[6] > 0);
        assert!(pod_sum[3] == 0 && idle_sum[3] > 0);
        // Device 2: 500 + 250 of 1000 milli → a quarter idle (± rounding).
        let total2 = (pod_sum[2] + idle_sum[2]) as f64;
        assert!((idle_sum[2] as f64 / total2 - 0.25).abs() < 1e-3);
        let found = agent
            .last_window()
            .pods
            .iter()
            .find(|p| p.device == 6)
            .unwrap();
        assert_eq!(found.pod, uid);
    }

    #[test]
    fn an_unhealthy_device_leaves_the_publication_in_the_same_step_and_returns() {
        let mut agent = agent_with(PathBuf::from("/nonexistent"));
        let t = Utc::now();
        agent.step(&[]).unwrap();
        assert_eq!(agent.publication(t).annotations[ANNOTATION_UNHEALTHY], "");
        agent.backend_mut().inject(3, Fault::Xid(79));
        agent.backend_mut().inject(5, Fault::DeviceLost);
        agent.step(&[]).unwrap();
        let p = agent.publication(t);
        assert_eq!(p.annotations[ANNOTATION_UNHEALTHY], "3,5");
        agent.backend_mut().clear(5, Fault::DeviceLost);
        agent.step(&[]).unwrap();
        let p = agent.publication(t);
        assert_eq!(
            p.annotations[ANNOTATION_UNHEALTHY], "",
            "hold of 1 sample over, device back"
        );
    }
}

//! `zhisuan agent`: the node agent (a DaemonSet on GPU/NPU nodes).
//!
//! A sampler thread reads the backend every `--interval`, attributes energy,
//! judges health and updates the metrics; a single-threaded tokio runtime
//! serves `/metrics` and patches the Node when the publication changes (or
//! every `--heartbeat`), so an unhealthy device leaves placement within one
//! sampling period.

use super::agent::{Agent, AgentConfig};
use super::health::HealthPolicy;
use super::metrics::AgentMetrics;
use super::npu::NpuExporterBackend;
use super::nvml::NvmlBackend;
use super::serve::{serve_agent, DevicePluginSetup, ServeOptions};
use super::sim::{Fault, SimConfig, SimNode};
use super::Accelerator;
use crate::error::InputError;
use anyhow::Context;
use serde_json::json;
use std::path::PathBuf;
use std::time::{Duration, Instant};

#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum BackendKind {
    /// NVIDIA GPUs through NVML (needs the NVIDIA driver).
    Nvml,
    /// A deterministic simulated node (no hardware needed).
    Sim,
    /// Huawei Ascend NPUs through a running npu-exporter.
    NpuExporter,
}

#[derive(clap::Args, Debug, Clone)]
pub struct AgentArgs {
    /// Where readings come from.
    #[arg(long, value_enum, default_value = "nvml")]
    pub backend: BackendKind,
    /// Sampling period in seconds.
    #[arg(long, default_value_t = 5.0)]
    pub interval: f64,
    /// Address for `/metrics` and `/healthz` (port 0 picks a free one; the
    /// address is printed on stderr).
    #[arg(long, default_value = "0.0.0.0:9400")]
    pub listen: String,
    /// This node's name (the Node object to patch); defaults to the hostname.
    #[arg(long, env = "NODE_NAME")]
    pub node: Option<String>,
    /// Region label to publish (`zhisuan.io/region`).
    #[arg(long, env = "ZHISUAN_REGION")]
    pub region: Option<String>,
    /// Run standalone: do not talk to the Kubernetes API.
    #[arg(long)]
    pub no_publish: bool,
    /// Take one sample, print it and exit.
    #[arg(long)]
    pub once: bool,
    /// With --once: print JSON instead of a table.
    #[arg(long)]
    pub json: bool,
    /// Stop after this many samples (measurement runs).
    #[arg(long)]
    pub samples: Option<u64>,
    /// At exit, print the agent's own overhead as JSON (CPU % of one core
    /// and peak RSS, read from /proc/self) — use with --samples.
    #[arg(long)]
    pub report_overhead: bool,
    /// Republish the node heartbeat at least this often, seconds.
    #[arg(long, default_value_t = 30.0)]
    pub heartbeat: f64,
    /// Energy windows (seconds): per-pod energy is published on the Node per
    /// window of this grid, which must be the controller's metering period.
    #[arg(long, default_value_t = 60)]
    pub energy_period: i64,
    /// How many closed energy windows the Node annotation keeps (the
    /// controller's meter must read a window before it drops out).
    #[arg(long, default_value_t = 15)]
    pub energy_windows: usize,
    /// Samples a device stays out of placement after an XID or ECC error.
    #[arg(long, default_value_t = 3)]
    pub hold_samples: u64,
    /// Take devices at or above this temperature out (°C; 0 = no limit).
    #[arg(long, default_value_t = 0)]
    pub max_temperature: u32,
    /// The host's /proc (for mapping GPU processes to pods through cgroups).
    #[arg(long, default_value = "/proc")]
    pub proc_root: PathBuf,
    /// sim: number of devices.
    #[arg(long, default_value_t = 8)]
    pub sim_devices: u32,
    /// sim: model name.
    #[arg(long, default_value = "H100")]
    pub sim_model: String,
    /// sim: seed of the load profile.
    #[arg(long, default_value_t = 1)]
    pub sim_seed: u64,
    /// sim: inject a fault at start, `DEVICE:xid:CODE`, `DEVICE:ecc`,
    /// `DEVICE:thermal` or `DEVICE:lost` (repeatable) — to watch a device
    /// leave placement without real hardware.
    #[arg(long = "sim-fault", value_name = "DEVICE:KIND[:CODE]")]
    pub sim_faults: Vec<String>,
    /// nvml: read the slow fields (ECC counters, retired pages / remapped
    /// rows, process list) every N samples. The failures they show also raise
    /// XID events, which are watched continuously.
    #[arg(long, default_value_t = super::nvml::DEFAULT_SLOW_EVERY)]
    pub nvml_slow_every: u64,
    /// Serve the kubelet device plugin (`zhisuan.io/gpu`, `zhisuan.io/gpu-share`)
    /// so containers get exactly the devices zhisuan placed them on. Off: the
    /// vendor's plugin allocates (the controller must then run with
    /// `--device-resources vendor`).
    #[arg(long)]
    pub device_plugin: bool,
    /// The kubelet's device-plugin directory (its `kubelet.sock` and ours).
    #[arg(long, default_value = "/var/lib/kubelet/device-plugins")]
    pub device_plugin_dir: PathBuf,
    /// The kubelet's pod-resources socket (who holds which device ids).
    #[arg(long, default_value = "/var/lib/kubelet/pod-resources/kubelet.sock")]
    pub pod_resources_socket: PathBuf,
    /// npu-exporter: the exporter's metrics URL.
    #[arg(long, default_value = "http://127.0.0.1:8082/metrics")]
    pub npu_url: String,
    /// npu-exporter: model name for chips without a `model_name` label.
    #[arg(long, default_value = "Ascend910")]
    pub npu_model: String,
}

fn validate(args: &AgentArgs) -> Result<(), InputError> {
    if !(args.interval.is_finite() && args.interval >= 0.05) {
        return Err(InputError::new(format!(
            "--interval {}: must be at least 0.05 seconds (e.g. --interval 1)",
            args.interval
        )));
    }
    if !(args.heartbeat.is_finite() && args.heartbeat > 0.0) {
        return Err(InputError::new(format!(
            "--heartbeat {}: must be a positive number of seconds",
            args.heartbeat
        )));
    }
    if args.backend == BackendKind::Sim && !(1..=1024).contains(&args.sim_devices) {
        return Err(InputError::new(format!(
            "--sim-devices {}: must be between 1 and 1024",
            args.sim_devices
        )));
    }
    if args.nvml_slow_every == 0 {
        return Err(InputError::new(
            "--nvml-slow-every 0: must be at least 1 (1 = every sample)",
        ));
    }
    if args.samples == Some(0) {
        return Err(InputError::new("--samples 0: take at least one sample"));
    }
    energy_windows(args)?;
    Ok(())
}

/// Parses one `--sim-fault` value.
pub fn parse_sim_fault(spec: &str, devices: u32) -> Result<(u32, Fault), InputError> {
    let bad = |why: &str| {
        InputError::new(format!(
            "--sim-fault {spec}: {why} (expected DEVICE:xid:CODE, DEVICE:ecc, DEVICE:thermal or DEVICE:lost)"
        ))
    };
    let parts: Vec<&str> = spec.split(':').collect();
    let device = parts[0]
        .parse::<u32>()
        .map_err(|_| bad("DEVICE is not a device index"))?;
    if device >= devices {
        return Err(bad(&format!(
            "device {device} does not exist on a {devices}-device node"
        )));
    }
    let fault = match (parts.get(1).copied(), parts.get(2)) {
        (Some("xid"), Some(code)) => {
            Fault::Xid(code.parse().map_err(|_| bad("CODE is not a number"))?)
        }
        (Some("ecc"), None) => Fault::EccUncorrected,
        (Some("thermal"), None) => Fault::ThermalThrottle,
        (Some("lost"), None) => Fault::DeviceLost,
        _ => return Err(bad("unknown fault")),
    };
    Ok((device, fault))
}

fn make_backend(args: &AgentArgs) -> anyhow::Result<Box<dyn Accelerator>> {
    Ok(match args.backend {
        BackendKind::Sim => {
            let mut node = SimNode::wall_clock(SimConfig {
                devices: args.sim_devices,
                model: args.sim_model.clone(),
                seed: args.sim_seed,
                ..SimConfig::default()
            });
            for spec in &args.sim_faults {
                let (device, fault) = parse_sim_fault(spec, args.sim_devices)?;
                node.inject(device, fault);
            }
            Box::new(node)
        }
        BackendKind::Nvml => Box::new(NvmlBackend::init()?.with_slow_every(args.nvml_slow_every)),
        BackendKind::NpuExporter => Box::new(NpuExporterBackend::connect(
            &args.npu_url,
            &args.npu_model,
            Duration::from_secs(5),
        )?),
    })
}

fn node_name(args: &AgentArgs) -> String {
    args.node.clone().unwrap_or_else(|| {
        std::fs::read_to_string("/proc/sys/kernel/hostname")
            .map(|h| h.trim().to_string())
            .ok()
            .filter(|h| !h.is_empty())
            .unwrap_or_else(|| "localhost".into())
    })
}

fn agent_config(args: &AgentArgs) -> AgentConfig {
    AgentConfig {
        node: node_name(args),
        region: args.region.clone(),
        health: HealthPolicy {
            hold_samples: args.hold_samples,
            max_temperature_c: args.max_temperature,
        },
        proc_root: args.proc_root.clone(),
    }
}

pub fn run(args: AgentArgs) -> anyhow::Result<()> {
    validate(&args)?;
    if args.once {
        return run_once(&args);
    }
    let registry = prometheus::Registry::new();
    let metrics = AgentMetrics::new(&registry).context("register agent metrics")?;
    let publish_errors = metrics.publish_error_counter();
    let agent = Agent::new(make_backend(&args)?, agent_config(&args), Some(metrics));
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("start tokio runtime")?;
    let report = args
        .report_overhead
        .then(|| (Instant::now(), ProcSelf::read()));
    let interval = args.interval;
    let samples = args.samples;
    rt.block_on(serve(args, agent, registry, publish_errors))?;
    if let Some((started, at_start)) = report {
        let wall_s = started.elapsed().as_secs_f64();
        let now = ProcSelf::read();
        let cpu_s = now.cpu_s - at_start.cpu_s;
        let out = json!({
            "samples": samples,
            "interval_s": interval,
            "wall_s": wall_s,
            "cpu_s": cpu_s,
            "cpu_pct_of_one_core": 100.0 * cpu_s / wall_s,
            "rss_peak_mib": now.rss_peak_kib as f64 / 1024.0,
            "rss_end_mib": now.rss_kib as f64 / 1024.0,
            "threads": now.threads,
        });
        println!("{out}");
    }
    Ok(())
}

/// This process's CPU time and memory from /proc/self (Linux; zeros elsewhere).
#[derive(Clone, Debug, Default)]
pub struct ProcSelf {
    /// User + system CPU seconds (USER_HZ = 100 ticks per second on Linux).
    pub cpu_s: f64,
    pub rss_kib: u64,
    pub rss_peak_kib: u64,
    pub threads: u64,
    /// CPU seconds per thread name (`sampler`, `nvml-xid`, the main thread
    /// `zhisuan` that runs the HTTP server and publisher).
    pub thread_cpu_s: std::collections::BTreeMap<String, f64>,
}

/// `(command name, utime + stime seconds)` from a `/proc/.../stat` line;
/// utime and stime are its 14th and 15th fields, in USER_HZ = 100 ticks/s.
fn stat_cpu_s(stat: &str) -> (String, f64) {
    let name = stat
        .split_once('(')
        .and_then(|(_, r)| r.rsplit_once(')'))
        .map(|(n, _)| n.to_string())
        .unwrap_or_default();
    let rest = stat.rsplit_once(')').map(|(_, r)| r).unwrap_or("");
    let f: Vec<&str> = rest.split_whitespace().collect();
    let ticks = |i: usize| f.get(i).and_then(|v| v.parse::<u64>().ok()).unwrap_or(0);
    (name, (ticks(11) + ticks(12)) as f64 / 100.0)
}

impl ProcSelf {
    pub fn read() -> Self {
        let mut out = ProcSelf::default();
        if let Ok(stat) = std::fs::read_to_string("/proc/self/stat") {
            out.cpu_s = stat_cpu_s(&stat).1;
        }
        if let Ok(tasks) = std::fs::read_dir("/proc/self/task") {
            for t in tasks.flatten() {
                if let Ok(stat) = std::fs::read_to_string(t.path().join("stat")) {
                    let (name, cpu) = stat_cpu_s(&stat);
                    *out.thread_cpu_s.entry(name).or_default() += cpu;
                }
            }
        }
        if let Ok(status) = std::fs::read_to_string("/proc/self/status") {
            for line in status.lines() {
                let kib = || {
                    line.split_whitespace()
                        .nth(1)
                        .and_then(|v| v.parse::<u64>().ok())
                        .unwrap_or(0)
                };
                if line.starts_with("VmRSS:") {
                    out.rss_kib = kib();
                } else if line.starts_with("VmHWM:") {
                    out.rss_peak_kib = kib();
                } else if line.starts_with("Threads:") {
                    out.threads = kib();
                }
            }
        }
        out
    }
}

fn run_once(args: &AgentArgs) -> anyhow::Result<()> {
    let mut agent = Agent::new(make_backend(args)?, agent_config(args), None);
    agent.step(&[])?;
    let now = chrono::Utc::now();
    let publication = agent.publication(now);
    if args.json {
        let out = json!({
            "node": node_name(args),
            "backend": agent.backend_name(),
            "vendor": agent.vendor(),
            "taken_at": now.to_rfc3339(),
            "inventory": agent.inventory(),
            "readings": agent.readings(),
            "health": agent.verdicts(),
            "publication": publication,
        });
        println!("{}", serde_json::to_string_pretty(&out)?);
        return Ok(());
    }
    println!(
        "node {}  backend {}  vendor {}",
        node_name(args),
        agent.backend_name(),
        agent.vendor().as_str()
    );
    println!(
        "{:>3}  {:<12} {:>5} {:>9} {:>14} {:>5} {:>13}  health",
        "gpu", "model", "util%", "power W", "energy J", "°C", "mem MiB"
    );
    for (r, v) in agent.readings().iter().zip(agent.verdicts()) {
        let model = agent
            .inventory()
            .iter()
            .find(|d| d.index == r.index)
            .map(|d| d.model.as_str())
            .unwrap_or("?");
        let health = if v.healthy {
            "ok".to_string()
        } else {
            v.reasons
                .iter()
                .map(|r| r.to_string())
                .collect::<Vec<_>>()
                .join("; ")
        };
        println!(
            "{:>3}  {:<12} {:>5} {:>9.1} {:>14.3} {:>5} {:>6}/{:<6}  {}",
            r.index,
            model,
            r.utilisation_pct,
            r.power_mw as f64 / 1000.0,
            r.energy_mj as f64 / 1000.0,
            r.temperature_c,
            r.memory_used_mib,
            r.memory_total_mib,
            health
        );
    }
    Ok(())
}

impl ServeOptions {
    fn from_args(args: &AgentArgs) -> Result<Self, InputError> {
        Ok(ServeOptions {
            listen: args.listen.clone(),
            node: node_name(args),
            interval: Duration::from_secs_f64(args.interval),
            heartbeat: Duration::from_secs_f64(args.heartbeat),
            samples: args.samples,
            energy: energy_windows(args)?,
            device_plugin: args.device_plugin.then(|| DevicePluginSetup {
                dir: args.device_plugin_dir.clone(),
                pod_resources: args.pod_resources_socket.clone(),
                pods: None,
            }),
        })
    }
}

fn energy_windows(args: &AgentArgs) -> Result<crate::ledger::EnergyWindows, InputError> {
    crate::ledger::EnergyWindows::new(args.energy_period, args.energy_windows).map_err(|e| {
        InputError::new(format!(
            "--energy-period {} / --energy-windows {}: {e} (the period must be the controller's metering period, e.g. 60)",
            args.energy_period, args.energy_windows
        ))
    })
}

async fn serve(
    args: AgentArgs,
    agent: Agent<Box<dyn Accelerator>>,
    registry: prometheus::Registry,
    publish_errors: prometheus::IntCounter,
) -> anyhow::Result<()> {
    let client = if args.no_publish {
        None
    } else {
        Some(kube::Client::try_default().await.map_err(|e| {
            anyhow::anyhow!(
                "no Kubernetes API reachable ({e}): run in-cluster, set KUBECONFIG, or pass --no-publish"
            )
        })?)
    };
    let mut sigterm = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        .context("install SIGTERM handler")?;
    let shutdown = async move {
        tokio::select! {
            _ = tokio::signal::ctrl_c() => {}
            _ = sigterm.recv() => {}
        }
    };
    let opts = ServeOptions::from_args(&args)?;
    serve_agent(
        agent,
        registry,
        publish_errors,
        opts,
        client,
        shutdown,
        |addr| eprintln!("zhisuan agent: serving http://{addr}/metrics"),
    )
    .await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn proc_self_reads_cpu_time_and_memory_of_this_process() {
        let before = ProcSelf::read();
        // Burn CPU until the kernel has charged at least one 10 ms tick
        // (bounded: a CPU counter that never moves fails the test).
        let t = Instant::now();
        let mut x = 0u64;
        let mut after = ProcSelf::read();
        // Other tests' threads that already ended count in the process total
        // but not per thread: wait for this thread's own tick too.
        while (after.cpu_s <= before.cpu_s || after.thread_cpu_s.values().sum::<f64>() <= 0.0)
            && t.elapsed() < Duration::from_secs(20)
        {
            for _ in 0..100_000 {
                x = x.wrapping_mul(6364136223846793005).wrapping_add(1);
            }
            after = ProcSelf::read();
        }
        std::hint::black_box(x);
        assert!(after.cpu_s > before.cpu_s, "{before:?} → {after:?}");
        assert!(after.rss_kib > 0 && after.rss_peak_kib >= after.rss_kib);
        assert!(after.threads >= 1);
        assert!(after.thread_cpu_s.values().sum::<f64>() > 0.0, "{after:?}");
    }

    #[test]
    fn stat_lines_give_name_and_cpu_seconds() {
        let line = "4242 (nvml-xid) S 1 2 3 4 5 6 7 8 9 10 150 25 0 0 20 0 3 0 99 0 0";
        assert_eq!(stat_cpu_s(line), ("nvml-xid".to_string(), 1.75));
        let odd = "7 (a) b) R 1 2 3 4 5 6 7 8 9 10 1 2 0";
        assert_eq!(stat_cpu_s(odd), ("a) b".to_string(), 0.03));
    }

    #[test]
    fn sim_fault_specs_parse_and_bad_ones_name_the_flag() {
        assert_eq!(parse_sim_fault("3:xid:79", 8), Ok((3, Fault::Xid(79))));
        assert_eq!(parse_sim_fault("0:lost", 8), Ok((0, Fault::DeviceLost)));
        assert_eq!(
            parse_sim_fault("7:thermal", 8),
            Ok((7, Fault::ThermalThrottle))
        );
        assert_eq!(parse_sim_fault("1:ecc", 8), Ok((1, Fault::EccUncorrected)));
        for bad in ["8:lost", "x:lost", "1:melt", "1:xid", "1:xid:z", "1:ecc:2"] {
            let e = parse_sim_fault(bad, 8).unwrap_err();
            assert!(e.0.starts_with(&format!("--sim-fault {bad}:")), "{e}");
        }
    }
}

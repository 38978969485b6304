//! `zhisuan agent`: the node agent (a DaemonSet on GPU/NPU nodes).
//!
//! A sampler thread reads the backend every `--interval`, attributes energy,
//! judges health and updates the metrics; a single-threaded tokio runtime
//! serves `/metrics` and patches the Node when the publication changes (or
//! every `--heartbeat`), so an unhealthy device leaves placement within one
//! sampling period.

use super::agent::{Agent, AgentConfig};
use super::deviceplugin::{register, NodeDevices, PluginState, PodSource};
use super::health::unhealthy_indices;
use super::health::HealthPolicy;
use super::kube_act;
use super::metrics::AgentMetrics;
use super::npu::NpuExporterBackend;
use super::nvml::NvmlBackend;
use super::publish::{NodePublication, ANNOTATION_HEARTBEAT};
use super::sim::{Fault, SimConfig, SimNode};
use super::Accelerator;
use crate::error::InputError;
use crate::ledger::ANNOTATION_POD_ENERGY;
use anyhow::Context;
use serde_json::json;
use std::path::PathBuf;
use std::sync::Arc;
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

/// The publication without its heartbeat: what must change to patch early.
fn substance(p: &NodePublication) -> NodePublication {
    let mut p = p.clone();
    p.annotations.remove(ANNOTATION_HEARTBEAT);
    p
}

/// What the serving loop needs besides the agent.
pub struct ServeOptions {
    pub listen: String,
    pub node: String,
    pub interval: Duration,
    pub heartbeat: Duration,
    /// Stop after this many samples.
    pub samples: Option<u64>,
    /// Per-pod energy per window, published on the Node for the GPU meter.
    pub energy: crate::ledger::EnergyWindows,
    /// Serve the kubelet device plugin.
    pub device_plugin: Option<DevicePluginSetup>,
}

/// Where the device plugin talks to the kubelet, and where its pods come from.
pub struct DevicePluginSetup {
    /// The kubelet's device-plugin directory.
    pub dir: PathBuf,
    /// The kubelet's pod-resources socket.
    pub pod_resources: PathBuf,
    /// The pods bound to this node; None = the agent's pod watch.
    pub pods: Option<PodSource>,
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

#[derive(Clone)]
struct AgentHttp {
    registry: Arc<prometheus::Registry>,
    readiness: Readiness,
}

/// `/readyz`: ready while the latest successful sample is recent — within
/// three sampling intervals (at least 10 s) — so a node whose devices cannot
/// be read (driver gone, exporter down) leaves the Service and shows NotReady.
#[derive(Clone)]
pub struct Readiness {
    started: Instant,
    /// Milliseconds after `started` of the last good sample, plus one (0 = none yet).
    last_ok_ms: Arc<std::sync::atomic::AtomicU64>,
    stale_after: Duration,
}

impl Readiness {
    pub fn new(interval: Duration) -> Self {
        Readiness {
            started: Instant::now(),
            last_ok_ms: Arc::new(std::sync::atomic::AtomicU64::new(0)),
            stale_after: (interval * 3).max(Duration::from_secs(10)),
        }
    }

    pub fn sampled(&self) {
        let ms = self.started.elapsed().as_millis() as u64 + 1;
        self.last_ok_ms
            .store(ms, std::sync::atomic::Ordering::Relaxed);
    }

    /// `Err` says why not ready.
    pub fn check(&self) -> Result<(), String> {
        self.check_at(self.started.elapsed())
    }

    fn check_at(&self, now: Duration) -> Result<(), String> {
        let last = self.last_ok_ms.load(std::sync::atomic::Ordering::Relaxed);
        if last == 0 {
            return Err("no successful sample yet".into());
        }
        let age = now.saturating_sub(Duration::from_millis(last - 1));
        if age > self.stale_after {
            return Err(format!(
                "last successful sample {:.0} s ago (ready within {} s); see the agent's log for the sampling error",
                age.as_secs_f64(),
                self.stale_after.as_secs()
            ));
        }
        Ok(())
    }
}

/// Runs an agent until `shutdown` resolves or `opts.samples` are taken:
/// samples on a dedicated thread, serves `/metrics`, `/healthz` and `/readyz` on
/// `opts.listen` (`on_listen` gets the bound address), and, given a client,
/// watches the node's pods and patches the Node whenever the publication
/// changes or the heartbeat is due.
pub async fn serve_agent<B: Accelerator + 'static>(
    agent: Agent<B>,
    registry: prometheus::Registry,
    publish_errors: prometheus::IntCounter,
    opts: ServeOptions,
    client: Option<kube::Client>,
    shutdown: impl std::future::Future<Output = ()>,
    on_listen: impl FnOnce(std::net::SocketAddr),
) -> anyhow::Result<()> {
    let listener = tokio::net::TcpListener::bind(&opts.listen)
        .await
        .map_err(|e| InputError::new(format!("--listen {}: cannot bind: {e}", opts.listen)))?;
    on_listen(listener.local_addr()?);

    let readiness = Readiness::new(opts.interval);
    let http = AgentHttp {
        registry: Arc::new(registry),
        readiness: readiness.clone(),
    };
    let app = axum::Router::new()
        .route(
            "/metrics",
            axum::routing::get(
                |axum::extract::State(h): axum::extract::State<AgentHttp>| async move {
                    let body = prometheus::TextEncoder::new()
                        .encode_to_string(&h.registry.gather())
                        .unwrap_or_default();
                    ([("content-type", "text/plain; version=0.0.4")], body)
                },
            ),
        )
        .route("/healthz", axum::routing::get(|| async { "ok" }))
        .route(
            "/readyz",
            axum::routing::get(
                |axum::extract::State(h): axum::extract::State<AgentHttp>| async move {
                    match h.readiness.check() {
                        Ok(()) => (axum::http::StatusCode::OK, "ready".to_string()),
                        Err(why) => (axum::http::StatusCode::SERVICE_UNAVAILABLE, why),
                    }
                },
            ),
        )
        .with_state(http);
    let (shutdown_tx, shutdown_rx) = tokio::sync::watch::channel(false);
    let mut server_shutdown = shutdown_rx.clone();
    let server = tokio::spawn(async move {
        axum::serve(listener, app)
            .with_graceful_shutdown(async move {
                let _ = server_shutdown.changed().await;
            })
            .await
    });

    let pod_store = client
        .as_ref()
        .map(|c| kube_act::watch_node_pods(c, &opts.node));
    let devices = start_device_plugin(&agent, &opts, pod_store.as_ref(), &shutdown_rx);
    let mut energy = opts.energy;
    if let Some(c) = &client {
        // Closed windows an earlier run published stay until the meter reads them.
        if let Some(earlier) = kube_act::published_energy(c, &opts.node).await {
            energy.resume(earlier);
        }
    }

    // Sampler thread: blocking backend calls stay off the runtime.
    let (pub_tx, mut pub_rx) = tokio::sync::watch::channel::<Option<NodePublication>>(None);
    let (stop_tx, stop_rx) = std::sync::mpsc::channel::<()>();
    let interval = opts.interval;
    let max_samples = opts.samples;
    let sampler = std::thread::Builder::new()
        .name("sampler".into())
        .spawn(move || {
            let mut agent = agent;
            let mut next = Instant::now();
            let mut taken = 0u64;
            loop {
                let pods = pod_store
                    .as_ref()
                    .map(kube_act::pods_from_store)
                    .unwrap_or_default();
                match agent.step(&pods) {
                    Ok(()) => {
                        readiness.sampled();
                        let now = chrono::Utc::now();
                        energy.add(now.timestamp_millis(), &agent.last_window().pod_totals());
                        let mut publication = agent.publication(now);
                        publication.annotations.insert(
                            ANNOTATION_POD_ENERGY.into(),
                            serde_json::to_string(energy.report()).unwrap_or_default(),
                        );
                        pub_tx.send_replace(Some(publication));
                        if let Some(tx) = &devices {
                            let unhealthy = unhealthy_indices(agent.verdicts());
                            tx.send_if_modified(|d| {
                                let changed = d.unhealthy != unhealthy;
                                if changed {
                                    Arc::make_mut(d).unhealthy = unhealthy;
                                }
                                changed
                            });
                        }
                    }
                    Err(e) => tracing::warn!(error = %e, "sample failed"),
                }
                taken += 1;
                if max_samples.is_some_and(|m| taken >= m) {
                    return;
                }
                next += interval;
                let now = Instant::now();
                if next < now {
                    next = now; // overran: do not burst to catch up
                }
                match stop_rx.recv_timeout(next - now) {
                    Err(std::sync::mpsc::RecvTimeoutError::Timeout) => {}
                    _ => return,
                }
            }
        })
        .context("spawn sampler thread")?;

    let mut last_published: Option<(NodePublication, Instant)> = None;
    let mut shutdown = std::pin::pin!(shutdown);
    loop {
        tokio::select! {
            _ = &mut shutdown => break,
            changed = pub_rx.changed() => {
                if changed.is_err() {
                    break; // sampler finished (--samples)
                }
                let Some(p) = pub_rx.borrow_and_update().clone() else { continue };
                let Some(client) = &client else { continue };
                let due = match &last_published {
                    None => true,
                    Some((last, at)) => substance(last) != substance(&p) || at.elapsed() >= opts.heartbeat,
                };
                if due {
                    match kube_act::publish(client, &opts.node, &p).await {
                        Ok(()) => last_published = Some((p, Instant::now())),
                        Err(e) => {
                            publish_errors.inc();
                            tracing::warn!(error = %e, "publish node status");
                        }
                    }
                }
            }
        }
    }
    let _ = stop_tx.send(());
    let _ = shutdown_tx.send(true);
    let joined = tokio::task::spawn_blocking(move || sampler.join())
        .await
        .context("join sampler thread")?;
    if joined.is_err() {
        anyhow::bail!("the sampler thread panicked (see the message above)");
    }
    server
        .await
        .context("metrics server task")?
        .context("metrics server")?;
    Ok(())
}

/// Starts the device plugin when asked: every device starts Unhealthy (no
/// allocation before the first health verdicts); the returned sender takes
/// each sample's verdicts.
fn start_device_plugin<B: Accelerator>(
    agent: &Agent<B>,
    opts: &ServeOptions,
    pod_store: Option<&kube::runtime::reflector::Store<k8s_openapi::api::core::v1::Pod>>,
    stop: &tokio::sync::watch::Receiver<bool>,
) -> Option<tokio::sync::watch::Sender<Arc<NodeDevices>>> {
    let setup = opts.device_plugin.as_ref()?;
    let pods = match (&setup.pods, pod_store) {
        (Some(p), _) => p.clone(),
        (None, Some(store)) => super::deviceplugin::pods::store_source(store.clone()),
        (None, None) => {
            tracing::warn!(
                "device plugin without a pod source (--no-publish): every allocation is refused"
            );
            Arc::new(Vec::new)
        }
    };
    let devices = NodeDevices {
        node: opts.node.clone(),
        vendor: agent.vendor(),
        devices: agent.inventory().to_vec(),
        unhealthy: agent.inventory().iter().map(|d| d.index).collect(),
    };
    let (tx, rx) = tokio::sync::watch::channel(Arc::new(devices));
    let state = Arc::new(PluginState {
        devices: rx,
        pods,
        pod_resources: setup.pod_resources.clone(),
    });
    tokio::spawn(register::run(setup.dir.clone(), state, stop.clone()));
    Some(tx)
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
    fn readiness_needs_a_recent_successful_sample() {
        let r = Readiness::new(Duration::from_secs(5));
        let err = r.check_at(Duration::from_secs(1)).unwrap_err();
        assert!(err.contains("no successful sample"), "{err}");
        r.sampled();
        let at = r.started.elapsed();
        assert_eq!(r.check_at(at + Duration::from_secs(14)), Ok(()));
        let err = r.check_at(at + Duration::from_secs(16)).unwrap_err();
        assert!(err.contains("last successful sample 16 s ago"), "{err}");
        // A quick interval still allows 10 s.
        assert_eq!(
            Readiness::new(Duration::from_millis(100)).stale_after,
            Duration::from_secs(10)
        );
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

    #[test]
    fn substance_ignores_only_the_heartbeat() {
        let mut a = NodePublication {
            labels: Default::default(),
            annotations: [(ANNOTATION_HEARTBEAT.to_string(), "t1".to_string())].into(),
        };
        let mut b = a.clone();
        b.annotations
            .insert(ANNOTATION_HEARTBEAT.into(), "t2".into());
        assert_eq!(substance(&a), substance(&b));
        a.annotations
            .insert("zhisuan.io/unhealthy-gpus".into(), "1".into());
        assert_ne!(substance(&a), substance(&b));
    }
}

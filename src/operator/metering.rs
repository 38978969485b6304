//! Metering real work: the GPU time of every pod the controller placed goes
//! into the ledger, in windows of a fixed grid (`ledger::windows`).
//!
//! - observe: each pass turns the pods it sees (home and member clusters)
//!   into [`PodRun`]s — start and end from the containers' states, the
//!   devices from the controller's own annotations, the tenant and region
//!   from the workload — and hands them to the meter;
//! - plan: [`crate::ledger::meter_windows`] (pure) cuts them into window
//!   records whose ids derive from the pod uid and the window;
//! - act: while this replica leads, every period the meter ingests the
//!   windows between its cursor and now, then advances the cursor in the
//!   ledger. A failed write leaves the cursor where it was, so the same
//!   windows are metered again next tick; a new leader reads the cursor
//!   and meters on from there (nothing lost, and nothing doubled: window
//!   ids are global).
//!
//! GPU pods that zhisuan did not place (a `nvidia.com/gpu` or
//! `huawei.com/npu` limit, no zhisuan device annotation) are metered as
//! unattributed: a counter per node, charged to no tenant.

use std::collections::{BTreeMap, HashMap};
use std::time::Duration;

use k8s_openapi::api::core::v1::Pod;
use kube::ResourceExt;
use tokio::sync::watch;

use super::snapshot::{keys, member_node_key, RegionView, WorkloadView};
use crate::ledger::{meter_windows, window_floor, Ledger, PodRun};

/// Name of the controller's GPU-time meter cursor in the ledger.
pub const GPU_METER: &str = "controller-gpu";

/// Grid emission factor used where a pod's region has no ComputeRegion
/// (China's national average, 2022, kg CO2 per kWh).
pub const DEFAULT_GRID_KG_PER_KWH: f64 = 0.5703;

/// Extended resources of the vendors' own device plugins.
pub const VENDOR_RESOURCES: [&str; 2] = ["nvidia.com/gpu", "huawei.com/npu"];

/// Settings of the GPU meter.
#[derive(Clone, Debug)]
pub struct MeterConfig {
    /// Window length; must divide a day (60 s in production).
    pub period: Duration,
    /// How long after a window ends it is metered, so the kubelet's status
    /// of a pod that finished inside it has arrived.
    pub grace: Duration,
    /// Most windows metered in one tick (catching up after an outage).
    pub max_windows: i64,
}

impl Default for MeterConfig {
    fn default() -> Self {
        MeterConfig {
            period: Duration::from_secs(60),
            grace: Duration::from_secs(10),
            max_windows: 60,
        }
    }
}

/// What the pass hands the meter: the runs it saw, and GPU pods nobody
/// placed (node, GPUs, start, end).
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Observed {
    pub runs: Vec<PodRun>,
    pub unattributed: Vec<Unattributed>,
}

/// A GPU pod not placed by zhisuan.
#[derive(Clone, Debug, PartialEq)]
pub struct Unattributed {
    pub uid: String,
    pub node: String,
    pub gpus: i64,
    pub start_s: i64,
    pub end_s: Option<i64>,
}

fn unix(t: &k8s_openapi::apimachinery::pkg::apis::meta::v1::Time) -> i64 {
    t.0.as_second()
}

/// When a pod's containers started, and when the last one finished (only
/// once the pod is Succeeded or Failed). `None` before any container ran.
pub fn run_times(pod: &Pod) -> Option<(i64, Option<i64>)> {
    let status = pod.status.as_ref()?;
    let phase = status.phase.as_deref().unwrap_or("Pending");
    let (mut start, mut end): (Option<i64>, Option<i64>) = (None, None);
    for c in status.container_statuses.iter().flatten() {
        let Some(state) = &c.state else { continue };
        if let Some(r) = &state.running {
            if let Some(t) = &r.started_at {
                start = Some(start.map_or(unix(t), |s| s.min(unix(t))));
            }
        }
        if let Some(t) = &state.terminated {
            if let Some(s) = &t.started_at {
                start = Some(start.map_or(unix(s), |x| x.min(unix(s))));
            }
            if let Some(f) = &t.finished_at {
                end = Some(end.map_or(unix(f), |x| x.max(unix(f))));
            }
        }
    }
    let start = start.or_else(|| {
        (phase == "Running")
            .then(|| status.start_time.as_ref().map(unix))
            .flatten()
    })?;
    let terminal = phase == "Succeeded" || phase == "Failed";
    Some((start, terminal.then(|| end.unwrap_or(start).max(start))))
}

/// The GPU share a pod holds from its zhisuan annotations: 1000 per device,
/// or its share of one device.
fn held_milli(annotations: &BTreeMap<String, String>) -> Option<i64> {
    let devices = annotations
        .get(keys::GPU_DEVICES)?
        .split(',')
        .filter(|d| !d.trim().is_empty())
        .count() as i64;
    if devices == 0 {
        return None;
    }
    match annotations.get(keys::GPU_MILLI) {
        Some(m) => m.parse::<i64>().ok().filter(|m| (1..=1000).contains(m)),
        None => Some(devices * 1000),
    }
}

/// GPUs a pod asks of the vendors' device plugins (limits, all containers).
fn vendor_gpus(pod: &Pod) -> i64 {
    let Some(spec) = &pod.spec else { return 0 };
    spec.containers
        .iter()
        .filter_map(|c| c.resources.as_ref()?.limits.as_ref())
        .flat_map(|l| VENDOR_RESOURCES.iter().filter_map(|r| l.get(*r)))
        .filter_map(|q| q.0.parse::<i64>().ok())
        .sum()
}

/// What the meter needs of the rest of the snapshot.
pub struct MeterIndex<'a> {
    /// Node name (as the planner keys it) → (region label, model).
    pub nodes: HashMap<&'a str, (&'a str, &'a str)>,
    pub workloads: HashMap<(&'a str, &'a str), &'a WorkloadView>,
    pub regions: HashMap<&'a str, &'a RegionView>,
}

impl<'a> MeterIndex<'a> {
    pub fn new(
        nodes: &'a [super::snapshot::NodeView],
        workloads: &'a [WorkloadView],
        regions: &'a [RegionView],
    ) -> Self {
        MeterIndex {
            nodes: nodes
                .iter()
                .map(|n| (n.name.as_str(), (n.region.as_str(), n.model.as_str())))
                .collect(),
            workloads: workloads
                .iter()
                .map(|w| ((w.key.namespace.as_str(), w.key.name.as_str()), w))
                .collect(),
            regions: regions.iter().map(|r| (r.name.as_str(), r)).collect(),
        }
    }
}

/// One pod as the meter sees it. `member` is the region of the member
/// cluster it runs in (`None` = the controller's own cluster).
pub fn observe_pod(index: &MeterIndex<'_>, member: Option<&str>, pod: &Pod, out: &mut Observed) {
    let Some((start_s, end_s)) = run_times(pod) else {
        return;
    };
    let Some(node) = pod.spec.as_ref().and_then(|s| s.node_name.clone()) else {
        return;
    };
    let uid = match (member, pod.uid()) {
        (_, None) => return,
        (None, Some(u)) => u,
        // Uids are unique per cluster; a member's pod is keyed by region too.
        (Some(region), Some(u)) => format!("{region}/{u}"),
    };
    let node_key = match member {
        Some(region) => member_node_key(region, &node),
        None => node.clone(),
    };
    let annotations = pod.annotations();
    let Some(gpu_milli) = held_milli(annotations) else {
        let gpus = vendor_gpus(pod);
        if gpus > 0 {
            out.unattributed.push(Unattributed {
                uid,
                node: node_key,
                gpus,
                start_s,
                end_s,
            });
        }
        return;
    };
    let tenant = annotations.get(keys::TENANT).cloned().unwrap_or_default();
    let namespace = pod.namespace().unwrap_or_default();
    let workload = pod
        .labels()
        .get(keys::WORKLOAD_NAME)
        .and_then(|w| index.workloads.get(&(namespace.as_str(), w.as_str())));
    let (node_region, model) = index
        .nodes
        .get(node_key.as_str())
        .copied()
        .unwrap_or(("", ""));
    let region = member
        .map(str::to_string)
        .or_else(|| {
            workload
                .and_then(|w| w.status.placement.as_ref())
                .and_then(|p| p.region.clone())
        })
        .filter(|r| !r.is_empty())
        .unwrap_or_else(|| {
            if node_region.is_empty() {
                "default".into()
            } else {
                node_region.into()
            }
        });
    let (pue, green_share, grid) = match index.regions.get(region.as_str()) {
        Some(r) => (r.spec.pue, r.spec.green_share, r.spec.grid_kg_co2_per_kwh),
        None => (1.0, 0.0, DEFAULT_GRID_KG_PER_KWH),
    };
    let job = annotations
        .get(keys::JOB)
        .cloned()
        .or_else(|| workload.map(|w| format!("{}/{}", w.key.namespace, w.key.name)))
        .unwrap_or_else(|| format!("{namespace}/{}", pod.name_any()));
    out.runs.push(PodRun {
        uid,
        tenant,
        job,
        region,
        node: node_key,
        model: if model.is_empty() {
            "unknown".into()
        } else {
            model.into()
        },
        gpu_milli,
        start_s,
        end_s,
        pue: if pue > 0.0 { pue } else { 1.0 },
        green_share: green_share.clamp(0.0, 1.0),
        grid_kg_per_kwh: if grid > 0.0 {
            grid
        } else {
            DEFAULT_GRID_KG_PER_KWH
        },
    });
}

/// Everything the meter observes in one pass, in a stable order.
pub fn observe(
    index: &MeterIndex<'_>,
    home: &[std::sync::Arc<Pod>],
    members: &[(&str, &[std::sync::Arc<Pod>])],
) -> Observed {
    let mut out = Observed::default();
    for pod in home {
        observe_pod(index, None, pod, &mut out);
    }
    for (region, pods) in members {
        for pod in pods.iter() {
            observe_pod(index, Some(region), pod, &mut out);
        }
    }
    out.runs.sort_by(|a, b| a.uid.cmp(&b.uid));
    out.unattributed.sort_by(|a, b| a.uid.cmp(&b.uid));
    out
}

/// Unattributed GPU-seconds of `pods` in `[from, to)`, per node.
pub fn unattributed_seconds(pods: &[Unattributed], from: i64, to: i64) -> BTreeMap<String, i64> {
    let mut out = BTreeMap::new();
    for p in pods {
        let (s, e) = (p.start_s.max(from), p.end_s.unwrap_or(to).min(to));
        if e > s {
            *out.entry(p.node.clone()).or_default() += (e - s) * p.gpus;
        }
    }
    out
}

/// Counters the meter keeps.
#[derive(Clone)]
pub struct MeterMetrics {
    pub windows: prometheus::IntCounter,
    pub records: prometheus::IntCounter,
    pub failures: prometheus::IntCounter,
    pub rejected: prometheus::IntCounter,
    pub unattributed: prometheus::IntCounterVec,
    pub cursor: prometheus::IntGauge,
}

impl MeterMetrics {
    pub fn new(registry: &prometheus::Registry) -> prometheus::Result<Self> {
        let counter = |name: &str, help: &str| -> prometheus::Result<prometheus::IntCounter> {
            let c = prometheus::IntCounter::new(name, help)?;
            registry.register(Box::new(c.clone()))?;
            Ok(c)
        };
        let unattributed = prometheus::IntCounterVec::new(
            prometheus::Opts::new(
                "zhisuan_unattributed_gpu_seconds_total",
                "GPU-seconds of pods zhisuan did not place (vendor device-plugin requests), charged to no tenant.",
            ),
            &["node"],
        )?;
        registry.register(Box::new(unattributed.clone()))?;
        let cursor = prometheus::IntGauge::new(
            "zhisuan_meter_cursor_seconds",
            "Unix time up to which the GPU meter has written usage to the ledger.",
        )?;
        registry.register(Box::new(cursor.clone()))?;
        Ok(MeterMetrics {
            windows: counter(
                "zhisuan_meter_windows_total",
                "Metering windows written to the ledger.",
            )?,
            records: counter(
                "zhisuan_meter_records_total",
                "Usage records the GPU meter handed to the ledger (replays included).",
            )?,
            failures: counter(
                "zhisuan_meter_failures_total",
                "Ledger writes of the GPU meter that failed (retried from the same windows).",
            )?,
            rejected: counter(
                "zhisuan_meter_rejected_total",
                "Pod runs left out of metering because their record is invalid (e.g. no tenant).",
            )?,
            unattributed,
            cursor,
        })
    }
}

/// Where the meter starts when the ledger has no cursor: the window of the
/// earliest run in view; `None` while nothing has run (the cursor is then
/// not set, so a run that starts later is metered from its start).
fn first_cursor(observed: &Observed, now_window: i64, period_s: i64) -> Option<i64> {
    observed
        .runs
        .iter()
        .map(|r| r.start_s)
        .chain(observed.unattributed.iter().map(|u| u.start_s))
        .min()
        .map(|s| window_floor(s, period_s).min(now_window))
}

/// One metering tick: meters `[cursor, to)` (at most `max_windows`) and
/// returns the new cursor. The cursor moves only after the ledger took the
/// records.
pub async fn meter_tick(
    ledger: &Ledger,
    observed: &Observed,
    cursor: i64,
    to: i64,
    config: &MeterConfig,
    metrics: Option<&MeterMetrics>,
) -> anyhow::Result<i64> {
    let period_s = config.period.as_secs() as i64;
    let to = to.min(cursor + config.max_windows.max(1) * period_s);
    if to <= cursor {
        return Ok(cursor);
    }
    let metered = meter_windows(&observed.runs, cursor, to, period_s, &BTreeMap::new())?;
    for (uid, why) in &metered.rejected {
        tracing::warn!(pod = %uid, error = %why, "pod left out of GPU metering");
    }
    let (records, rejected) = (metered.usage.len() as u64, metered.rejected.len() as u64);
    let l = ledger.clone();
    tokio::task::spawn_blocking(move || -> anyhow::Result<i64> {
        l.ingest_metered(metered.usage, Vec::new())
            .map_err(|e| e.into_anyhow())?;
        l.advance_meter_cursor(GPU_METER, to)
            .map_err(|e| e.into_anyhow())
    })
    .await??;
    if let Some(m) = metrics {
        m.windows.inc_by(((to - cursor) / period_s) as u64);
        m.records.inc_by(records);
        m.rejected.inc_by(rejected);
        for (node, s) in unattributed_seconds(&observed.unattributed, cursor, to) {
            m.unattributed.with_label_values(&[&node]).inc_by(s as u64);
        }
        m.cursor.set(to);
    }
    Ok(to)
}

/// Meters while `term_over` has not resolved: reads the cursor from the
/// ledger, then every period meters the windows that ended at least
/// `grace` ago. A failed tick is retried from the same cursor.
pub async fn run_gpu_meter(
    ledger: Ledger,
    observed: watch::Receiver<Observed>,
    config: MeterConfig,
    metrics: Option<MeterMetrics>,
    term_over: impl std::future::Future<Output = ()>,
) -> anyhow::Result<()> {
    let period_s = config.period.as_secs() as i64;
    crate::ledger::windows::check_period(period_s).map_err(|e| e.into_anyhow())?;
    tokio::pin!(term_over);
    let l = ledger.clone();
    let mut cursor = tokio::task::spawn_blocking(move || l.meter_cursor(GPU_METER))
        .await?
        .map_err(|e| e.into_anyhow())?;
    loop {
        let now = chrono::Utc::now();
        let ready = window_floor(now.timestamp() - config.grace.as_secs() as i64, period_s);
        let current = observed.borrow().clone();
        if cursor.is_none() {
            cursor = first_cursor(&current, ready, period_s);
        }
        if let Some(from) = cursor {
            match meter_tick(&ledger, &current, from, ready, &config, metrics.as_ref()).await {
                Ok(next) => cursor = Some(next),
                Err(e) => {
                    if let Some(m) = &metrics {
                        m.failures.inc();
                    }
                    tracing::warn!(error = %e, from, "GPU metering failed; retrying the same windows");
                }
            }
        }
        // Catching up: go on at once; otherwise wait for the next window's end.
        let behind = cursor.is_some_and(|c| c < ready);
        let next_ready = (ready + period_s + config.grace.as_secs() as i64) * 1000;
        let wait_ms = (next_ready - now.timestamp_millis()).max(50) as u64;
        let wait = if behind {
            Duration::from_millis(0)
        } else {
            Duration::from_millis(wait_ms)
        };
        tokio::select! {
            _ = &mut term_over => return Ok(()),
            _ = tokio::time::sleep(wait) => {}
        }
    }
}

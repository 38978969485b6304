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
//! Energy: each node agent publishes the IT energy it attributed to each pod
//! per window of the same grid ([`crate::ledger::EnergyReport`] in the Node
//! annotation `zhisuan.io/pod-energy`). A window's record carries the pod's
//! joules of that window; the meter holds a window back until the agents of
//! the nodes it covers have closed it, for at most `energy_wait` (an agent
//! that is down does not stop billing; its windows are metered without
//! energy and counted in `zhisuan_meter_energy_unreported_total`).
//!
//! GPU pods that zhisuan did not place (a `nvidia.com/gpu` or
//! `huawei.com/npu` limit, no zhisuan device annotation) are metered as
//! unattributed: a counter per node, charged to no tenant.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

use super::pods::VENDOR_RESOURCES;
use std::time::Duration;

use k8s_openapi::api::core::v1::{Node, Pod};
use kube::ResourceExt;
use tokio::sync::watch;

use super::snapshot::{keys, member_node_key, RegionView, WorkloadView};
use crate::ledger::{
    meter_windows, window_floor, EnergyReport, Holder, Ledger, PodRun, ANNOTATION_POD_ENERGY,
};

/// Name of the controller's GPU-time meter cursor in the ledger.
pub const GPU_METER: &str = "controller-gpu";

/// Grid emission factor used where a pod's region has no ComputeRegion
/// (China's national average, 2022, kg CO2 per kWh).
pub const DEFAULT_GRID_KG_PER_KWH: f64 = 0.5703;

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
    /// How long after a window ends the meter waits for the node agents'
    /// energy of it before metering it without.
    pub energy_wait: Duration,
}

impl Default for MeterConfig {
    fn default() -> Self {
        MeterConfig {
            period: Duration::from_secs(60),
            grace: Duration::from_secs(10),
            max_windows: 60,
            energy_wait: Duration::from_secs(120),
        }
    }
}

/// What the pass hands the meter: the runs it saw, and GPU pods nobody
/// placed (node, GPUs, start, end).
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Observed {
    pub runs: Vec<PodRun>,
    pub unattributed: Vec<Unattributed>,
    /// The energy each node's agent reports, by node key.
    pub energy: BTreeMap<String, Arc<EnergyReport>>,
    /// When the pass that saw all this began (Unix seconds); `None` while
    /// this replica has not observed yet. The meter never meters a window
    /// that ended less than `grace` before it: a new leader whose first
    /// pass has not run yet would otherwise meter windows without the pods
    /// that ran in them, and move its cursor past them for good.
    pub as_of_s: Option<i64>,
}

/// The end of the windows the meter may take now: those that ended `grace`
/// before both the clock and the observation; `None` before any.
pub fn ready_through(observed: &Observed, now_s: i64, config: &MeterConfig) -> Option<i64> {
    Some(ready_at(now_s.min(observed.as_of_s?), config))
}

/// The end of the windows that ended `grace` before `t_s`.
fn ready_at(t_s: i64, config: &MeterConfig) -> i64 {
    window_floor(
        t_s - config.grace.as_secs() as i64,
        config.period.as_secs() as i64,
    )
}

/// The energy report a node's agent published (keyed as the planner keys
/// the node); `None` without one. A malformed report is logged and ignored.
pub fn node_energy(member: Option<&str>, node: &Node) -> Option<(String, Arc<EnergyReport>)> {
    let name = node.name_any();
    let text = node.annotations().get(ANNOTATION_POD_ENERGY)?;
    match EnergyReport::parse(text) {
        Ok(r) => Some((
            match member {
                Some(region) => member_node_key(region, &name),
                None => name,
            },
            Arc::new(r),
        )),
        Err(e) => {
            tracing::warn!(node = %name, error = %e, "ignoring the node's energy report");
            None
        }
    }
}

/// The pod uid as its node's agent knows it (a member cluster's run is
/// keyed `region/uid`).
fn agent_uid(run: &PodRun) -> &str {
    let uid = &run.holder.source;
    uid.rsplit('/').next().unwrap_or(uid)
}

/// Runs overlapping `[from, to)`.
fn runs_in(observed: &Observed, from: i64, to: i64) -> impl Iterator<Item = &PodRun> {
    observed
        .runs
        .iter()
        .filter(move |r| r.start_s < to && r.end_s.is_none_or(|e| e > from))
}

/// The end of the windows in `[from, ready)` whose energy every agent that
/// reports for a node with runs in them has closed.
pub fn energy_ready(observed: &Observed, from: i64, ready: i64, period_s: i64) -> i64 {
    let mut until = ready;
    for run in runs_in(observed, from, ready) {
        if let Some(r) = observed.energy.get(&run.holder.node) {
            if r.period == period_s && r.through < until {
                until = window_floor(r.through, period_s).max(from);
            }
        }
    }
    until
}

/// The joules of each run's windows in `[from, to)` as the agents reported
/// them, keyed (uid, window); and how many windows of runs on reporting
/// nodes the reports no longer (or not yet) cover.
pub fn window_energy(
    observed: &Observed,
    from: i64,
    to: i64,
    period_s: i64,
) -> (BTreeMap<(String, i64), i64>, u64) {
    let (mut energy, mut unreported) = (BTreeMap::new(), 0);
    for run in runs_in(observed, from, to) {
        let Some(report) = observed
            .energy
            .get(&run.holder.node)
            .filter(|r| r.period == period_s)
        else {
            continue;
        };
        let end = run.end_s.unwrap_or(to).min(to);
        let mut w = window_floor(run.start_s.max(from), period_s);
        while w < end {
            match report.energy_j(agent_uid(run), w) {
                Some(j) => {
                    energy.insert((run.holder.source.clone(), w), j);
                }
                None => unreported += 1,
            }
            w += period_s;
        }
    }
    (energy, unreported)
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
        holder: Holder {
            source: uid,
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
            pue: if pue > 0.0 { pue } else { 1.0 },
            green_share: green_share.clamp(0.0, 1.0),
            grid_kg_per_kwh: if grid > 0.0 {
                grid
            } else {
                DEFAULT_GRID_KG_PER_KWH
            },
        },
        start_s,
        end_s,
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
    out.runs
        .sort_by(|a, b| a.holder.source.cmp(&b.holder.source));
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
    pub energy_j: prometheus::IntCounter,
    pub energy_unreported: prometheus::IntCounter,
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
            energy_j: counter(
                "zhisuan_meter_energy_joules_total",
                "IT energy the node agents attributed to metered pods, joules (replays included).",
            )?,
            energy_unreported: counter(
                "zhisuan_meter_energy_unreported_total",
                "Pod windows metered without energy because the node agent's report did not cover them (agent down, or the meter behind more than the agent keeps).",
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
    let (energy, unreported) = window_energy(observed, cursor, to, period_s);
    let metered = meter_windows(&observed.runs, cursor, to, period_s, &energy)?;
    let joules: i64 = metered.usage.iter().map(|u| u.it_energy_j).sum();
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
        m.energy_j.inc_by(joules.max(0) as u64);
        m.energy_unreported.inc_by(unreported);
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
    mut observed: watch::Receiver<Observed>,
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
        let current = observed.borrow().clone();
        let Some(ready) = ready_through(&current, now.timestamp(), &config) else {
            // Nothing observed yet: wait for the first pass.
            tokio::select! {
                _ = &mut term_over => return Ok(()),
                seen = observed.changed() => if seen.is_err() { return Ok(()) },
            }
            continue;
        };
        let clock_ready = ready_at(now.timestamp(), &config);
        if cursor.is_none() {
            cursor = first_cursor(&current, ready, period_s);
        }
        let mut failed = false;
        // Windows wait for the agents' energy, but not for ever.
        let patience = window_floor(ready - config.energy_wait.as_secs() as i64, period_s);
        let target = cursor.map_or(ready, |from| {
            energy_ready(&current, from, ready, period_s)
                .max(patience)
                .min(ready)
        });
        if let Some(from) = cursor {
            match meter_tick(&ledger, &current, from, target, &config, metrics.as_ref()).await {
                Ok(next) => cursor = Some(next),
                Err(e) => {
                    failed = true;
                    if let Some(m) = &metrics {
                        m.failures.inc();
                    }
                    tracing::warn!(error = %e, from, "GPU metering failed; retrying the same windows");
                }
            }
        }
        // Catching up: go on at once; after a failure, or waiting on an
        // agent's energy: look again soon; otherwise wait for the next
        // window's end.
        let next_ready = (ready + period_s + config.grace.as_secs() as i64) * 1000;
        let wait_ms = (next_ready - now.timestamp_millis()).max(50) as u64;
        let caught_up = cursor.is_none_or(|c| c >= target);
        let wait = if failed || (target < ready && cursor.is_some_and(|c| c >= target)) {
            Duration::from_millis(wait_ms.min(1_000))
        } else if !caught_up {
            Duration::from_millis(0)
        } else {
            Duration::from_millis(wait_ms)
        };
        // Held back by an observation older than the clock: the next pass
        // moves it on.
        let behind_pass = !failed && caught_up && ready < clock_ready;
        tokio::select! {
            _ = &mut term_over => return Ok(()),
            seen = observed.changed(), if behind_pass => if seen.is_err() { return Ok(()) },
            _ = tokio::time::sleep(wait) => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run(uid: &str, node: &str, start_s: i64, end_s: Option<i64>) -> PodRun {
        PodRun {
            holder: Holder {
                source: uid.into(),
                tenant: "acme".into(),
                job: "ml/train".into(),
                region: "east".into(),
                node: node.into(),
                model: "H100".into(),
                gpu_milli: 1000,
                pue: 1.0,
                green_share: 0.0,
                grid_kg_per_kwh: DEFAULT_GRID_KG_PER_KWH,
            },
            start_s,
            end_s,
        }
    }

    fn report(from: i64, through: i64, windows: &[(i64, &str, i64)]) -> Arc<EnergyReport> {
        let mut r = EnergyReport {
            period: 60,
            from,
            through,
            ..Default::default()
        };
        for (w, uid, j) in windows {
            r.windows.entry(*w).or_default().insert(uid.to_string(), *j);
        }
        Arc::new(r)
    }

    #[test]
    fn windows_wait_for_the_agents_that_report_and_only_for_them() {
        let mut o = Observed {
            runs: vec![
                run("a", "n1", 0, None),
                run("b", "n2", 0, None),
                run("east/c", "east/m1", 0, None),
            ],
            ..Default::default()
        };
        // No reports at all: nothing to wait for.
        assert_eq!(energy_ready(&o, 0, 600, 60), 600);
        o.energy.insert("n1".into(), report(0, 480, &[]));
        o.energy.insert("east/m1".into(), report(0, 540, &[]));
        assert_eq!(energy_ready(&o, 0, 600, 60), 480, "n1's agent closed 480");
        // A run that ended before the open windows does not hold them.
        o.runs[0].end_s = Some(400);
        assert_eq!(energy_ready(&o, 420, 600, 60), 540);
        // Another period: not the meter's grid, never waited for.
        let mut other = (*o.energy["east/m1"]).clone();
        other.period = 300;
        o.energy.insert("east/m1".into(), Arc::new(other));
        assert_eq!(energy_ready(&o, 420, 600, 60), 600);
    }

    #[test]
    fn nothing_is_metered_past_what_the_last_pass_saw() {
        let config = MeterConfig {
            period: Duration::from_secs(60),
            grace: Duration::from_secs(10),
            ..Default::default()
        };
        // A replica that just became leader and has not observed yet meters
        // nothing: with no runs in view it would close windows whose pods
        // it has not seen, and its cursor would pass them for good.
        assert_eq!(ready_through(&Observed::default(), 1_000, &config), None);
        // An observation older than the clock holds the meter to what it
        // saw (less the kubelet's grace), however late the clock is.
        let seen = Observed {
            as_of_s: Some(700),
            ..Default::default()
        };
        assert_eq!(ready_through(&seen, 1_000, &config), Some(660));
        assert_eq!(ready_through(&seen, 100_000, &config), Some(660));
        // A fresh one: the clock's windows, as before.
        assert_eq!(ready_through(&seen, 705, &config), Some(660));
        assert_eq!(ready_through(&seen, 650, &config), Some(600));
    }

    #[test]
    fn each_window_gets_its_pods_joules_and_gaps_are_counted() {
        let o = Observed {
            runs: vec![
                run("a", "n1", 30, Some(200)),
                run("east/c", "east/m1", 0, None),
                run("d", "n3", 0, None),
            ],
            energy: BTreeMap::from([
                (
                    "n1".into(),
                    report(60, 240, &[(60, "a", 11), (120, "a", 13)]),
                ),
                ("east/m1".into(), report(0, 120, &[(0, "c", 7)])),
            ]),
            ..Default::default()
        };
        let (energy, unreported) = window_energy(&o, 0, 240, 60);
        assert_eq!(energy.get(&("a".into(), 60)), Some(&11));
        assert_eq!(energy.get(&("a".into(), 120)), Some(&13));
        assert_eq!(energy.get(&("a".into(), 180)), Some(&0), "covered, none");
        // The member's run is keyed region/uid; its agent knows the bare uid.
        assert_eq!(energy.get(&("east/c".into(), 0)), Some(&7));
        assert_eq!(energy.get(&("east/c".into(), 60)), Some(&0));
        // a's window 0 is before its agent's report, c's 120 and 180 after
        // it; n3 has no agent report: not counted as a gap.
        assert_eq!(unreported, 3);
        assert!(!energy.keys().any(|(u, _)| u == "d"));
    }
}

//! Operations metrics of an in-process [`World`]: per-region GPUs, allocation,
//! PUE, green share, carbon and facility energy; per-node allocation; pending
//! jobs by reason; placement decisions; admission wait. Names follow the
//! metric contract the dashboards read.

use super::tracker::JobTracker;
use crate::sim::world::{JobId, World};
use prometheus::{
    CounterVec, Gauge, GaugeVec, Histogram, HistogramOpts, IntCounter, IntGaugeVec, Opts, Registry,
};

pub use crate::sim::world::PENDING_REASONS;

/// The tracked jobs waiting, by reason (every reason of
/// [`PENDING_REASONS`], zero included).
pub fn pending_by_reason(
    world: &crate::sim::world::World,
    tracker: &super::tracker::JobTracker,
) -> std::collections::BTreeMap<String, u64> {
    crate::sim::world::pending_by_reason(world, tracker.live())
}

pub struct WorldMetrics {
    region_gpus: GaugeVec,
    region_allocated: GaugeVec,
    region_utilisation: GaugeVec,
    region_pue: GaugeVec,
    region_green: GaugeVec,
    region_carbon: CounterVec,
    region_facility_kwh: CounterVec,
    node_allocated: GaugeVec,
    pending: IntGaugeVec,
    running: Gauge,
    decisions: IntCounter,
    admission_wait: Histogram,
    /// Per region: totals already added to the counters (carbon kg, facility kWh).
    counted: Vec<(f64, f64)>,
}

fn reg<T: prometheus::core::Collector + Clone + 'static>(
    registry: &Registry,
    c: T,
) -> prometheus::Result<T> {
    registry.register(Box::new(c.clone()))?;
    Ok(c)
}

impl WorldMetrics {
    pub fn new(registry: &Registry) -> prometheus::Result<Self> {
        let g = |name: &str, help: &str, labels: &[&str]| {
            reg(registry, GaugeVec::new(Opts::new(name, help), labels)?)
        };
        let c = |name: &str, help: &str| {
            reg(
                registry,
                CounterVec::new(Opts::new(name, help), &["region"])?,
            )
        };
        Ok(WorldMetrics {
            region_gpus: g(
                "zhisuan_region_gpus",
                "GPUs installed in the region",
                &["region"],
            )?,
            region_allocated: g(
                "zhisuan_region_gpus_allocated",
                "GPUs allocated in the region (fractional GPUs as milli/1000)",
                &["region"],
            )?,
            region_utilisation: g(
                "zhisuan_region_gpu_utilisation",
                "GPU utilisation of the region, 0..1",
                &["region"],
            )?,
            region_pue: g(
                "zhisuan_region_pue",
                "Power usage effectiveness of the region",
                &["region"],
            )?,
            region_green: g(
                "zhisuan_region_green_share",
                "Share of the region's electricity that is green now, 0..1",
                &["region"],
            )?,
            region_carbon: c(
                "zhisuan_region_carbon_kg_total",
                "kg CO2 emitted for metered usage",
            )?,
            region_facility_kwh: c(
                "zhisuan_region_facility_kwh_total",
                "Facility energy (IT × PUE) of metered usage, kWh",
            )?,
            node_allocated: g(
                "zhisuan_node_gpus_allocated",
                "GPUs allocated on the node (fractional as milli/1000)",
                &["region", "node"],
            )?,
            pending: reg(
                registry,
                IntGaugeVec::new(
                    Opts::new(
                        "zhisuan_pending_jobs",
                        "Jobs waiting, by the reason in their explanation",
                    ),
                    &["reason"],
                )?,
            )?,
            running: reg(
                registry,
                Gauge::new("zhisuan_running_jobs", "Jobs running")?,
            )?,
            decisions: reg(
                registry,
                IntCounter::new(
                    "zhisuan_placement_decisions_total",
                    "Replicas placed by the placement engine",
                )?,
            )?,
            admission_wait: reg(
                registry,
                Histogram::with_opts(
                    HistogramOpts::new(
                        "zhisuan_admission_wait_seconds",
                        "Simulated seconds from submission to start",
                    )
                    .buckets(vec![
                        0.0,
                        60.0,
                        300.0,
                        900.0,
                        3600.0,
                        4.0 * 3600.0,
                        86400.0,
                    ]),
                )?,
            )?,
            counted: Vec::new(),
        })
    }

    /// Refreshes every series from the world's current state; `started` are
    /// the jobs the tracker saw start since the last call.
    pub fn observe(&mut self, world: &World, tracker: &JobTracker, started: &[JobId]) {
        let stats = world.region_stats();
        let used = world.device_use();
        self.counted.resize(stats.len(), (0.0, 0.0));
        for (r, s) in stats.iter().enumerate() {
            let l = [s.name.as_str()];
            self.region_gpus.with_label_values(&l).set(s.gpus as f64);
            self.region_allocated
                .with_label_values(&l)
                .set(s.gpus_allocated);
            self.region_utilisation
                .with_label_values(&l)
                .set(s.utilisation);
            self.region_pue.with_label_values(&l).set(s.pue);
            self.region_green.with_label_values(&l).set(s.green_share);
            let (carbon, kwh) = &mut self.counted[r];
            self.region_carbon
                .with_label_values(&l)
                .inc_by((s.carbon_kg - *carbon).max(0.0));
            self.region_facility_kwh
                .with_label_values(&l)
                .inc_by((s.facility_kwh - *kwh).max(0.0));
            (*carbon, *kwh) = (s.carbon_kg.max(*carbon), s.facility_kwh.max(*kwh));

            for node in world.nodes().iter().filter(|n| n.region == s.name) {
                let milli: u32 = used.get(node.name.as_str()).map_or(0, |d| d.iter().sum());
                self.node_allocated
                    .with_label_values(&[s.name.as_str(), node.name.as_str()])
                    .set(f64::from(milli) / 1000.0);
            }
        }

        let pending = pending_by_reason(world, tracker);
        let now = world.now_s();
        for job in started.iter().filter_map(|&id| world.job(id)) {
            self.decisions.inc_by(u64::from(job.spec.replicas));
            self.admission_wait.observe(job.wait_s(now) as f64);
        }
        for reason in PENDING_REASONS {
            let n = pending.get(*reason).copied().unwrap_or(0);
            self.pending
                .with_label_values(&[reason])
                .set(i64::try_from(n).unwrap_or(i64::MAX));
        }
        self.running.set(tracker.running as f64);
    }
}

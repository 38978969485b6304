//! Prometheus metrics of the controller (names from the metric contract).

use prometheus::{
    GaugeVec, Histogram, HistogramOpts, HistogramVec, IntCounter, IntGauge, IntGaugeVec, Opts,
    Registry,
};

use crate::schedule::Plan;

/// Every series the controller exports; registered on a caller's registry.
#[derive(Clone)]
pub struct OperatorMetrics {
    pub pending_jobs: IntGaugeVec,
    pub placement_decisions: IntCounter,
    pub bind_errors: IntCounter,
    pub preemptions: IntCounter,
    pub admission_wait: Histogram,
    pub node_gpus_allocated: GaugeVec,
    pub region_gpus: GaugeVec,
    pub region_gpus_allocated: GaugeVec,
    pub is_leader: IntGauge,
    pub plan_passes: IntCounter,
    /// Seconds each step of a pass took (`step`: observe, snapshot, plan,
    /// report, act).
    pub pass_seconds: HistogramVec,
}

impl OperatorMetrics {
    pub fn new(registry: &Registry) -> prometheus::Result<Self> {
        let m = OperatorMetrics {
            pending_jobs: IntGaugeVec::new(
                Opts::new("zhisuan_pending_jobs", "Workloads waiting, by reason"),
                &["reason"],
            )?,
            placement_decisions: IntCounter::new(
                "zhisuan_placement_decisions_total",
                "Pods placed by the controller",
            )?,
            bind_errors: IntCounter::new(
                "zhisuan_bind_errors_total",
                "Failed pod creations or bindings (the gang was rolled back)",
            )?,
            preemptions: IntCounter::new(
                "zhisuan_preemptions_total",
                "Workloads evicted for higher-priority ones",
            )?,
            admission_wait: Histogram::with_opts(
                HistogramOpts::new(
                    "zhisuan_admission_wait_seconds",
                    "Seconds from workload creation to admission",
                )
                .buckets(vec![
                    0.1, 0.5, 1.0, 5.0, 15.0, 60.0, 300.0, 1800.0, 3600.0, 14400.0,
                ]),
            )?,
            node_gpus_allocated: GaugeVec::new(
                Opts::new(
                    "zhisuan_node_gpus_allocated",
                    "GPUs allocated on a node (milli/1000)",
                ),
                &["region", "node"],
            )?,
            region_gpus: GaugeVec::new(
                Opts::new("zhisuan_region_gpus", "GPUs installed in a region"),
                &["region"],
            )?,
            region_gpus_allocated: GaugeVec::new(
                Opts::new(
                    "zhisuan_region_gpus_allocated",
                    "GPUs allocated in a region (milli/1000)",
                ),
                &["region"],
            )?,
            is_leader: IntGauge::new(
                "zhisuan_controller_is_leader",
                "1 while this replica holds the Lease",
            )?,
            plan_passes: IntCounter::new(
                "zhisuan_controller_plan_passes_total",
                "Planning passes run",
            )?,
            pass_seconds: HistogramVec::new(
                HistogramOpts::new(
                    "zhisuan_controller_pass_step_seconds",
                    "Seconds one step of a scheduling pass took (observe, snapshot, plan, report, act)",
                )
                .buckets(vec![
                    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0,
                ]),
                &["step"],
            )?,
        };
        registry.register(Box::new(m.pending_jobs.clone()))?;
        registry.register(Box::new(m.placement_decisions.clone()))?;
        registry.register(Box::new(m.bind_errors.clone()))?;
        registry.register(Box::new(m.preemptions.clone()))?;
        registry.register(Box::new(m.admission_wait.clone()))?;
        registry.register(Box::new(m.node_gpus_allocated.clone()))?;
        registry.register(Box::new(m.region_gpus.clone()))?;
        registry.register(Box::new(m.region_gpus_allocated.clone()))?;
        registry.register(Box::new(m.is_leader.clone()))?;
        registry.register(Box::new(m.plan_passes.clone()))?;
        registry.register(Box::new(m.pass_seconds.clone()))?;
        Ok(m)
    }

    /// Publishes the figures of one planning pass.
    pub fn record(&self, plan: &Plan) {
        self.plan_passes.inc();
        self.pending_jobs.reset();
        for (reason, n) in &plan.pending {
            self.pending_jobs
                .with_label_values(&[reason.as_str()])
                .set(*n as i64);
        }
        for (_, wait) in &plan.admitted {
            self.admission_wait.observe(*wait as f64);
        }
        self.node_gpus_allocated.reset();
        for (region, node, milli) in &plan.nodes {
            // The region label tells clusters apart; the node label is the
            // Node's own name (a member's without its `<region>/`).
            self.node_gpus_allocated
                .with_label_values(&[region.as_str(), super::snapshot::name_in_cluster(node)])
                .set(*milli as f64 / 1000.0);
        }
        self.region_gpus.reset();
        self.region_gpus_allocated.reset();
        for r in &plan.regions {
            self.region_gpus
                .with_label_values(&[r.name.as_str()])
                .set(r.gpus as f64);
            self.region_gpus_allocated
                .with_label_values(&[r.name.as_str()])
                .set(r.milli as f64 / 1000.0);
        }
    }
}

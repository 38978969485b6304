//! Prometheus metrics of the controller (names from the metric contract).

use prometheus::{
    GaugeVec, Histogram, HistogramOpts, HistogramVec, IntCounter, IntGauge, IntGaugeVec, Opts,
    Registry,
};

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use crate::schedule::Plan;

/// The (region, node) series of `zhisuan_node_gpus_allocated` exported, each
/// with the pass that last set it.
type NodeSeries = HashMap<String, HashMap<String, u64>>;

/// Every series the controller exports; registered on a caller's registry.
#[derive(Clone)]
pub struct OperatorMetrics {
    pub pending_jobs: IntGaugeVec,
    pub placement_decisions: IntCounter,
    pub bind_errors: IntCounter,
    pub preemptions: IntCounter,
    pub admission_wait: Histogram,
    pub node_gpus_allocated: GaugeVec,
    /// Which node series exist: a pass sets each node's value in place and
    /// removes only the series of nodes gone since (a reset re-made every
    /// series on every pass, thousands of allocations at 5,000 nodes).
    node_series: Arc<Mutex<(u64, NodeSeries)>>,
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
            node_series: Arc::default(),
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
        self.record_nodes(plan);
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

    /// Sets each node's allocated GPUs; removes the series of nodes no
    /// longer in the plan.
    fn record_nodes(&self, plan: &Plan) {
        let mut series = self.node_series.lock().unwrap_or_else(|e| e.into_inner());
        let (pass, exported) = &mut *series;
        *pass += 1;
        for (region, node, milli) in &plan.nodes {
            // The region label tells clusters apart; the node label is the
            // Node's own name (a member's without its `<region>/`).
            let node = super::snapshot::name_in_cluster(node);
            self.node_gpus_allocated
                .with_label_values(&[region.as_str(), node])
                .set(*milli as f64 / 1000.0);
            let in_region = match exported.get_mut(region.as_str()) {
                Some(nodes) => nodes,
                None => exported.entry(region.clone()).or_default(),
            };
            match in_region.get_mut(node) {
                Some(seen) => *seen = *pass,
                None => {
                    in_region.insert(node.to_string(), *pass);
                }
            }
        }
        for (region, nodes) in exported.iter_mut() {
            nodes.retain(|node, seen| {
                let keep = *seen == *pass;
                if !keep {
                    let _ = self
                        .node_gpus_allocated
                        .remove_label_values(&[region.as_str(), node.as_str()]);
                }
                keep
            });
        }
        exported.retain(|_, nodes| !nodes.is_empty());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn node_series(registry: &Registry) -> Vec<(String, f64)> {
        registry
            .gather()
            .iter()
            .filter(|f| f.name() == "zhisuan_node_gpus_allocated")
            .flat_map(|f| f.get_metric().to_vec())
            .map(|m| {
                let label = |name: &str| {
                    m.get_label()
                        .iter()
                        .find(|l| l.name() == name)
                        .map(|l| l.value().to_string())
                        .unwrap_or_default()
                };
                let series = format!("{}/{}", label("region"), label("node"));
                (series, m.get_gauge().value())
            })
            .collect()
    }

    fn plan(nodes: &[(&str, &str, u64)]) -> Plan {
        Plan {
            nodes: nodes
                .iter()
                .map(|(r, n, m)| (r.to_string(), n.to_string(), *m))
                .collect(),
            ..Plan::default()
        }
    }

    #[test]
    fn node_series_follow_the_plan_and_leave_with_their_node() {
        let registry = Registry::new();
        let m = OperatorMetrics::new(&registry).unwrap();
        m.record(&plan(&[
            ("east", "a", 1000),
            ("east", "b", 500),
            ("far", "far/c", 0),
        ]));
        assert_eq!(
            node_series(&registry),
            [
                ("east/a".to_string(), 1.0),
                ("east/b".into(), 0.5),
                ("far/c".into(), 0.0)
            ]
        );
        m.record(&plan(&[("east", "a", 2000)]));
        assert_eq!(node_series(&registry), [("east/a".to_string(), 2.0)]);
        m.record(&plan(&[("east", "b", 8000)]));
        assert_eq!(node_series(&registry), [("east/b".to_string(), 8.0)]);
    }
}

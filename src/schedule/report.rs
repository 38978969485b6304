//! Step 5: what the pass leaves behind besides actions: each quota's status
//! (GPUs held by its subtree, workloads admitted, validity) and the capacity
//! figures per node and per region.

use std::collections::BTreeMap;

use crate::jobs::{Condition, TenantQuotaStatus};

use super::capacity::Capacity;
use super::quota::{subtree, Quotas};
use super::{Action, Pass, Plan, RegionFigures};

impl Pass<'_> {
    /// Step 5: quota statuses and figures; ends the pass, handing back
    /// the capacity for the next one.
    pub(super) fn report(mut self) -> (Plan, Capacity) {
        self.quota_statuses();
        let cluster = self.cap.engine.cluster();
        let mut regions: BTreeMap<String, RegionFigures> = BTreeMap::new();
        for (i, n) in self.cap.nodes.iter().enumerate() {
            let milli = cluster.node_gpu_milli_allocated(i as u32) as u64;
            self.out
                .nodes
                .push((n.region.clone(), n.name.clone(), milli));
            let e = regions
                .entry(n.region.clone())
                .or_insert_with(|| RegionFigures {
                    name: n.region.clone(),
                    ..Default::default()
                });
            e.nodes += 1;
            e.gpus += n.gpus as u64;
            e.milli += milli;
        }
        self.out.regions = regions.into_values().collect();
        (self.out, self.cap)
    }

    fn quota_statuses(&mut self) {
        let snapshot = self.snapshot;
        let quotas = Quotas::new(&snapshot.quotas);
        for q in &snapshot.quotas {
            let why = quotas.invalid.get(&q.spec.tenant);
            let s = TenantQuotaStatus {
                used_milli_gpus: subtree(&quotas, &self.usage, &q.spec.tenant, None) as i64,
                admitted_workloads: self
                    .admitted
                    .get(q.spec.tenant.as_str())
                    .copied()
                    .unwrap_or(0),
                conditions: vec![Condition {
                    type_: "Valid".into(),
                    status: if why.is_some() { "False" } else { "True" }.into(),
                    reason: if why.is_some() {
                        "InvalidQuota"
                    } else {
                        "Valid"
                    }
                    .into(),
                    message: why.map_or("quota is valid".into(), |w| w.clone().into()),
                    last_transition_time: None,
                    observed_generation: None,
                }],
            };
            if s != q.status {
                self.out.actions.push(Action::QuotaStatus {
                    name: q.name.clone(),
                    status: s,
                });
            }
        }
    }
}

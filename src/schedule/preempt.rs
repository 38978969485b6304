//! Step 4: bounded preemption. A gang that fits nowhere may evict running
//! workloads of strictly lower priority (lowest priority and newest first,
//! at most `max_victims`, one preemptor per pass). The freed capacity stays
//! allocated to the preemptor, which launches once the victims' pods are
//! gone. Strict priority order means preemption can never loop.

use std::collections::BTreeSet;

use crate::jobs::{Text, WorkloadView};
use crate::placement::Request;

use super::admit::Admission;
use super::lifecycle::pending_status;
use super::{Action, Pass};

impl<'a> Pass<'a> {
    /// Evicts as few lower-priority workloads as make `w` fit, or leaves it
    /// pending with `explanation` (why it fits nowhere).
    pub(super) fn preempt(
        &mut self,
        w: &'a WorkloadView,
        class: u32,
        explanation: Text,
        allowed: &[String],
        gangs: &[Vec<Request>],
        adm: &mut Admission<'a>,
    ) {
        // One preemptor per pass; only strictly lower priorities are evicted.
        if adm.preempted || w.priority <= adm.lowest_priority {
            self.pend(w, "Unschedulable", explanation);
            return;
        }
        let mut victims: Vec<&'a WorkloadView> = self
            .snapshot
            .workloads
            .iter()
            .filter(|v| v.priority < w.priority && self.cap.holds(&v.uid))
            .filter(|v| !adm.reserved_for.contains(&v.key))
            // Evicting a workload from nodes the preemptor may not use
            // (a dedicated zone) frees nothing for it.
            .filter(|v| {
                self.cap
                    .held_nodes(&v.uid)
                    .any(|n| self.zones.open(class, n))
            })
            .collect();
        victims.sort_by(|a, b| a.priority.cmp(&b.priority).then(b.created.cmp(&a.created)));
        victims.truncate(self.config.max_victims);
        let mut taken = Vec::new();
        let mut placed = false;
        for v in victims {
            let ds = self.cap.release(&v.uid);
            taken.push((v, ds));
            // Capacity was just freed: nothing refused before holds.
            if self.try_place(w, class, allowed, gangs, None).is_ok() {
                placed = true;
                break;
            }
        }
        if !placed {
            for (v, ds) in taken {
                self.cap.allocate(&v.uid, ds);
            }
            self.pend(w, "Unschedulable", explanation);
            return;
        }
        adm.preempted = true;
        // The victims free more than the preemptor may take.
        adm.infeasible.freed();
        let names: Vec<String> = taken.iter().map(|(v, _)| v.key.to_string()).collect();
        for (v, _) in taken {
            adm.reserved_for.insert(&v.key);
            self.evict(v, w);
        }
        let message = format!(
            "evicting lower-priority {}: {explanation}",
            names.join(", ")
        );
        self.pend(w, "Preempting", message);
    }

    /// Stops victim `v` (all its pods, seen or planned) for `by`.
    fn evict(&mut self, v: &WorkloadView, by: &WorkloadView) {
        let msg = format!(
            "preempted by {} (priority {} > {})",
            by.key, by.priority, v.priority
        );
        let mut s = pending_status(v, "Preempted", "Preempted", msg, self.now);
        s.phase = Some("Preempted".into());
        let mut pods: BTreeSet<String> = self
            .pods_of(v)
            .map(|ps| ps.iter().map(|p| p.name.clone()).collect())
            .unwrap_or_default();
        if let Some(p) = &v.status.placement {
            pods.extend(p.replicas.iter().map(|r| r.pod.clone()));
        }
        self.out.actions.push(Action::Stop {
            key: v.key.clone(),
            pods: pods.into_iter().collect(),
            region: v.status.placement.as_ref().and_then(|p| p.region.clone()),
            status: s,
        });
        self.out.preemptions += 1;
    }
}

//! Held verdicts kept between passes (time shifting). A job that may start
//! late gets a window — which regions take it in this hour, and when a
//! better hour comes — that depends only on the job (its uid and
//! generation), the GPU models its quota allows, the regions open to it,
//! the region catalog and the hour ([`crate::regions::shift`] scores starts
//! on the hour grid), not on free capacity. So the verdict is kept until
//! the hour ends (or any of those changes): a job no region takes is held
//! again without ranking the regions or scoring the hours, and one waiting
//! for room is tried without scoring the hours again — and every pass plans
//! exactly what a fresh pass plans.

use std::collections::HashMap;
use std::hash::{Hash, Hasher};

use crate::jobs::{WorkloadKey, WorkloadView};
use crate::placement::FxBuild;
use crate::regions::shift::Window;

/// What a held verdict was worked out from.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) struct Inputs {
    /// The hour (its start, unix s) the window was worked out in.
    pub hour_s: i64,
    /// The job's uid and generation, its allowed models, the regions open
    /// to its tenant (dedicated zones) and the region catalog, hashed.
    pub digest: u64,
}

impl Inputs {
    pub fn new(
        now_s: i64,
        w: &WorkloadView,
        models: &[&str],
        open_mask: u64,
        catalog: u64,
    ) -> Inputs {
        let mut h = std::hash::DefaultHasher::new();
        (&w.uid, w.generation, models, open_mask, catalog).hash(&mut h);
        Inputs {
            hour_s: crate::regions::cost::hour_start(now_s),
            digest: h.finish(),
        }
    }
}

/// A window and the ranked regions that take the job in its hour (a bit
/// per catalog region; none: the job is held).
pub(super) type Verdict = (Window, u64);

/// The verdicts of the last pass, and those of this one.
#[derive(Default)]
pub(super) struct HeldVerdicts {
    last: HashMap<WorkloadKey, (Inputs, Verdict), FxBuild>,
    this: HashMap<WorkloadKey, (Inputs, Verdict), FxBuild>,
    /// Verdicts reused so far.
    pub reused: u64,
}

impl HeldVerdicts {
    /// The verdict `key` got, if it was worked out from `inputs` and its
    /// release has not come (kept for the next pass too). (When no region
    /// takes the job the release is never in this hour: the first start
    /// that suits it, and the release after that, are in a later hour; a
    /// job waiting for room may reach its release within the hour.)
    pub fn get(&mut self, key: &WorkloadKey, inputs: Inputs, now_s: i64) -> Option<Verdict> {
        let (kept, verdict) = self.last.remove(key)?;
        if kept != inputs || now_s >= verdict.0.release_s {
            return None;
        }
        debug_assert!(verdict.1 != 0 || verdict.0.next_s > inputs.hour_s);
        self.this.insert(key.clone(), (kept, verdict));
        self.reused += 1;
        Some(verdict)
    }

    /// Keeps `key`'s verdict, worked out from `inputs`.
    pub fn put(&mut self, key: &WorkloadKey, inputs: Inputs, verdict: Verdict) {
        self.this.insert(key.clone(), (inputs, verdict));
    }

    /// Ends a pass: only the verdicts it used or made are kept.
    pub fn end_pass(&mut self) {
        self.last = std::mem::take(&mut self.this);
    }
}

/// A digest of the region catalog as the window sees it (regions with
/// their profiles, prices and inventory; links; weights).
pub(super) fn catalog_digest(rc: &super::RegionCatalog) -> u64 {
    let c = &rc.catalog;
    let body = serde_json::to_vec(&(&c.regions, &c.links, &c.weights, &c.accelerators))
        .unwrap_or_default();
    let mut h = std::hash::DefaultHasher::new();
    body.hash(&mut h);
    h.finish()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::schedule::tests::workload;

    /// A kept verdict is used only while everything it was worked out from
    /// is the same: the hour, the job's generation, the models its quota
    /// allows, the regions open to it and the catalog.
    #[test]
    fn a_verdict_is_worked_out_again_when_what_it_came_from_changes() {
        let w = workload("a", "t", 1, 1, 0, 0);
        let hour = 1_767_196_800;
        let at = |now: i64, w: &WorkloadView, models: &[&str], open: u64, catalog: u64| {
            Inputs::new(now, w, models, open, catalog)
        };
        let base = at(hour + 10, &w, &["A10"], u64::MAX, 7);
        assert_eq!(base, at(hour + 3599, &w, &["A10"], u64::MAX, 7));
        assert_ne!(base, at(hour + 3600, &w, &["A10"], u64::MAX, 7));
        assert_ne!(base, at(hour + 10, &w, &["A10", "V100"], u64::MAX, 7));
        assert_ne!(base, at(hour + 10, &w, &["A10"], 0b1, 7));
        assert_ne!(base, at(hour + 10, &w, &["A10"], u64::MAX, 8));
        let edited = WorkloadView {
            generation: w.generation + 1,
            ..w.clone()
        };
        assert_ne!(base, at(hour + 10, &edited, &["A10"], u64::MAX, 7));
    }
}

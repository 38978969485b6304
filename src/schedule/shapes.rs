//! The typical shapes fragmentation is scored against (FGD's measure),
//! learned from the workloads as they arrive and kept between passes by the
//! [`super::Scheduler`].

use std::collections::hash_map::Entry;
use std::collections::{HashMap, VecDeque};
use std::hash::BuildHasher;

use crate::placement::{Engine, FxBuild, ModelSet, Request};

use super::spare::{Asked, Limited};
use super::Snapshot;

/// Arrivals the typical shapes are learned from (the most recent ones).
pub const SHAPE_WINDOW: usize = 4096;
/// Shapes are relearned at 1, 2, 4, … arrivals up to [`SHAPE_WINDOW`], then every this many.
const SHAPE_RELEARN_EVERY: u64 = 1024;

/// One arrival: a replica request, the gang size, and the models it
/// names (by name; `None`: any).
struct Arrival {
    replica: Request,
    replicas: u32,
    limited: Option<Limited>,
}

/// The typical shapes fragmentation is scored against (FGD's measure): the
/// replicas of the last [`SHAPE_WINDOW`] workloads to arrive, each counted
/// once when first seen (not at each retry, or the jobs that wait longest,
/// the large gangs, would dominate).
#[derive(Default)]
pub(super) struct ShapeWindow {
    arrivals: VecDeque<Arrival>,
    arrived: u64,
    next_relearn: u64,
    /// The live workloads (by a 64-bit hash of their uid: a collision
    /// would only leave one arrival out of the shape statistics), with the
    /// pass that last saw them.
    live: HashMap<u64, u64, FxBuild>,
    passes: u64,
    /// The asks of the window's arrivals that name models, with counts.
    limited: HashMap<Limited, u32, FxBuild>,
}

impl ShapeWindow {
    /// Counts the workloads first seen in this snapshot; true when the
    /// shapes should be relearned (at 1, 2, 4, … arrivals, then every 1,024).
    pub(super) fn observe(&mut self, snapshot: &Snapshot) -> bool {
        self.passes += 1;
        let pass = self.passes;
        let mut new = Vec::new();
        // A burst of arrivals grows the map once, not by doublings.
        self.live
            .reserve(snapshot.workloads.len().saturating_sub(self.live.len()));
        for w in &snapshot.workloads {
            if w.deleting || !w.errors.is_empty() || matches!(w.phase(), "Succeeded" | "Failed") {
                continue;
            }
            match self.live.entry(FxBuild::default().hash_one(w.uid.as_str())) {
                Entry::Occupied(mut seen) => *seen.get_mut() = pass,
                Entry::Vacant(slot) => {
                    slot.insert(pass);
                    new.push(w);
                }
            }
        }
        self.live.retain(|_, seen| *seen == pass);
        // Only the last window's worth of a burst is kept.
        self.arrived += new.len() as u64;
        let kept = &new[new.len().saturating_sub(SHAPE_WINDOW)..];
        for w in kept {
            if self.arrivals.len() == SHAPE_WINDOW {
                let gone = self.arrivals.pop_front().and_then(|a| a.limited);
                if let Some(l) = gone {
                    if let Some(n) = self.limited.get_mut(&l) {
                        *n -= 1;
                        if *n == 0 {
                            self.limited.remove(&l);
                        }
                    }
                }
            }
            let limited = Limited::of(w);
            if let Some(l) = &limited {
                *self.limited.entry(l.clone()).or_default() += 1;
            }
            self.arrivals.push_back(Arrival {
                replica: w.replica_request(ModelSet::ANY),
                replicas: w.replicas,
                limited,
            });
        }
        if self.next_relearn == 0 {
            self.next_relearn = 1;
        }
        if self.arrived < self.next_relearn {
            return false;
        }
        while self.next_relearn <= self.arrived {
            self.next_relearn = if self.next_relearn < SHAPE_WINDOW as u64 {
                self.next_relearn * 2
            } else {
                self.next_relearn + SHAPE_RELEARN_EVERY
            };
        }
        true
    }

    /// The distinct asks naming models among the window's arrivals
    /// ([`super::spare`]).
    pub(super) fn limited(&self) -> impl Iterator<Item = Asked<'_>> {
        self.limited.keys().map(Limited::asked)
    }

    /// Gives the engine the window's shapes (each request restricted to the
    /// models it names that the cluster has).
    pub(super) fn teach(&self, engine: &mut Engine) {
        let cluster = engine.cluster();
        let mut requests = Vec::new();
        for a in &self.arrivals {
            let models = match &a.limited {
                None => ModelSet::ANY,
                Some(l) => cluster
                    .models()
                    .set_of(l.models().iter().map(String::as_str)),
            };
            if models == ModelSet::NONE {
                continue;
            }
            let r = a.replica.clone().with_models(models);
            requests.extend(std::iter::repeat_n(r, a.replicas as usize));
        }
        if !requests.is_empty() {
            engine.set_workload(requests.iter());
        }
    }
}

//! Follows the world's live jobs (pending or running) without rescanning
//! every job ever submitted: finished jobs never change again, so each tick
//! costs time in proportion to what is live, however long the demo runs.

use crate::sim::world::{JobId, Phase, World};

#[derive(Debug, Default)]
pub struct JobTracker {
    /// Live jobs and whether their start was already seen.
    live: Vec<(JobId, bool)>,
    /// Jobs the world held at the last refresh.
    seen: usize,
    pub placed: u64,
    pub finished: u64,
    pub running: u64,
    pub pending: u64,
}

impl JobTracker {
    /// Catches up with the world; returns the jobs that started since the last call.
    pub fn refresh(&mut self, world: &World, started: &mut Vec<JobId>) {
        started.clear();
        for j in world.jobs_from(self.seen as JobId + 1) {
            self.live.push((j.id, false));
        }
        self.seen = world.submitted() as usize;
        let (mut running, mut pending) = (0, 0);
        let (mut placed, mut finished) = (0, 0);
        self.live.retain_mut(|(id, was_started)| {
            let Some(j) = world.job(*id) else {
                return false;
            };
            if j.started_s.is_some() && !*was_started {
                *was_started = true;
                placed += 1;
                started.push(*id);
            }
            match j.phase {
                Phase::Running => running += 1,
                Phase::Pending => pending += 1,
                Phase::Succeeded | Phase::Failed | Phase::Cancelled => {
                    if *was_started {
                        finished += 1;
                    }
                    return false;
                }
            }
            true
        });
        self.placed += placed;
        self.finished += finished;
        (self.running, self.pending) = (running, pending);
    }

    /// Ids of the jobs pending or running at the last refresh.
    pub fn live(&self) -> impl Iterator<Item = JobId> + '_ {
        self.live.iter().map(|(id, _)| *id)
    }

    pub fn submitted(&self) -> u64 {
        self.seen as u64
    }
}

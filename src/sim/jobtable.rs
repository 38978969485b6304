//! The simulated cluster's jobs by id. Ids are dense (1, 2, …) and index a
//! deque from the oldest job still kept; a finished job is dropped once it
//! has been finished for the world's retention, and the deque's front moves
//! past dropped jobs, so a world that runs for months holds the live jobs,
//! the recently finished ones and one empty slot (8 bytes) for each dropped
//! job still behind a live one.

use super::world::{JobId, JobState};
use std::collections::VecDeque;

#[derive(Debug, Default)]
pub struct JobTable {
    /// Id of `slots[0]`, minus one (ids start at 1).
    base: JobId,
    slots: VecDeque<Option<Box<JobState>>>,
    /// Finished jobs in finishing order (the clock never goes back).
    finished: VecDeque<(i64, JobId)>,
}

impl JobTable {
    /// The id the next job gets.
    pub fn next_id(&self) -> JobId {
        self.base + self.slots.len() as JobId + 1
    }

    /// Adds a job; its id must be [`JobTable::next_id`].
    pub fn push(&mut self, job: JobState) {
        debug_assert_eq!(job.id, self.next_id());
        self.slots.push_back(Some(Box::new(job)));
    }

    fn index(&self, id: JobId) -> Option<usize> {
        id.checked_sub(self.base + 1).map(|i| i as usize)
    }

    pub fn get(&self, id: JobId) -> Option<&JobState> {
        self.slots.get(self.index(id)?)?.as_deref()
    }

    pub fn get_mut(&mut self, id: JobId) -> Option<&mut JobState> {
        let i = self.index(id)?;
        self.slots.get_mut(i)?.as_deref_mut()
    }

    /// Notes that a job finished at `at_s` (for [`JobTable::drop_finished`]).
    pub fn finished(&mut self, id: JobId, at_s: i64) {
        self.finished.push_back((at_s, id));
    }

    /// Drops the jobs that finished before `cutoff_s`.
    pub fn drop_finished(&mut self, cutoff_s: i64) {
        while let Some(&(at, id)) = self.finished.front() {
            if at >= cutoff_s {
                break;
            }
            self.finished.pop_front();
            if let Some(slot) = self.index(id).and_then(|i| self.slots.get_mut(i)) {
                *slot = None;
            }
        }
        while matches!(self.slots.front(), Some(None)) {
            self.slots.pop_front();
            self.base += 1;
        }
    }

    /// The jobs kept, in id order.
    pub fn iter(&self) -> impl DoubleEndedIterator<Item = &JobState> + '_ {
        self.slots.iter().filter_map(|s| s.as_deref())
    }

    /// The jobs kept with an id ≥ `from`, in id order.
    pub fn iter_from(&self, from: JobId) -> impl Iterator<Item = &JobState> + '_ {
        let skip = from
            .saturating_sub(self.base + 1)
            .min(self.slots.len() as JobId) as usize;
        self.slots.range(skip..).filter_map(|s| s.as_deref())
    }

    /// The oldest id that may still be kept (every smaller one is gone).
    pub fn first_id(&self) -> JobId {
        self.base + 1
    }

    /// Jobs kept.
    pub fn kept(&self) -> usize {
        self.slots.iter().filter(|s| s.is_some()).count()
    }
}

impl std::ops::Index<JobId> for JobTable {
    type Output = JobState;
    /// A job the world knows is kept (live jobs always are).
    fn index(&self, id: JobId) -> &JobState {
        self.get(id).expect("a live job is kept")
    }
}

impl std::ops::IndexMut<JobId> for JobTable {
    fn index_mut(&mut self, id: JobId) -> &mut JobState {
        self.get_mut(id).expect("a live job is kept")
    }
}

//! The demo's arrivals: the workload, repeated so a long demo keeps
//! arrivals coming.

use crate::error::InputError;
use crate::regions::job::JobSpec;

/// Longest a demo job runs, simulated seconds.
pub(super) const MAX_JOB_S: i64 = 6 * 3600;

/// The workload, repeated: after the last arrival and [`MAX_JOB_S`] it
/// starts over (names suffixed `.c<cycle>`), so a long demo keeps arrivals coming.
pub(super) struct Workload {
    jobs: Vec<(i64, JobSpec)>,
    cycle_s: i64,
    /// Index into the endless sequence of arrivals.
    next: u64,
}

impl Workload {
    pub(super) fn new(mut jobs: Vec<(i64, JobSpec)>) -> anyhow::Result<Workload> {
        if jobs.is_empty() {
            return Err(InputError::new(
                "workload: no jobs; give a workload CSV with at least one row",
            )
            .into());
        }
        jobs.sort_by_key(|(t, _)| *t);
        // The openb trace's first hours hold a handful of long-running pods;
        // nearly all arrivals come later. Start ten minutes before the first
        // percentile of arrivals, the earlier jobs arriving at the start.
        let skip = (jobs[jobs.len() / 100].0 - 600).max(0);
        for (t, _) in &mut jobs {
            *t = (*t - skip).max(0);
        }
        // Every job leaves within MAX_JOB_S (the trace holds pods that run
        // for months), so each cycle of the workload starts on a drained
        // cluster and a long demo neither piles up nor slows down.
        for (_, spec) in &mut jobs {
            spec.duration_s = Some(spec.duration_s.unwrap_or(MAX_JOB_S).min(MAX_JOB_S));
        }
        let last = jobs.last().map_or(0, |(t, _)| *t);
        let cycle_s = last + MAX_JOB_S;
        Ok(Workload {
            jobs,
            cycle_s,
            next: 0,
        })
    }

    fn peek(&self) -> (i64, u64, &JobSpec) {
        let n = self.jobs.len() as u64;
        let (cycle, i) = (self.next / n, (self.next % n) as usize);
        let (t, spec) = &self.jobs[i];
        (t + cycle as i64 * self.cycle_s, cycle, spec)
    }

    /// The next job arriving at or before `until_s` (offset from the world start).
    pub(super) fn pop_until(&mut self, until_s: i64) -> Option<(i64, JobSpec)> {
        let (t, cycle, spec) = self.peek();
        if t > until_s {
            return None;
        }
        let mut spec = spec.clone();
        if cycle > 0 {
            spec.name = format!("{}.c{cycle}", spec.name);
        }
        self.next += 1;
        Some((t, spec))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::regions::job::JobKind;

    fn spec(name: &str) -> JobSpec {
        JobSpec {
            duration_s: Some(60),
            ..JobSpec::new("acme", name, JobKind::Training)
        }
    }

    #[test]
    fn workload_repeats_with_new_names() {
        let mut w = Workload::new(vec![(100, spec("b")), (0, spec("a"))]).unwrap();
        assert_eq!(w.cycle_s, 100 + MAX_JOB_S);
        let first: Vec<_> = std::iter::from_fn(|| w.pop_until(MAX_JOB_S + 99))
            .map(|(t, s)| (t, s.name))
            .collect();
        assert_eq!(first, vec![(0, "a".to_string()), (100, "b".to_string())]);
        assert!(w.pop_until(MAX_JOB_S + 99).is_none());
        let (t, s) = w.pop_until(MAX_JOB_S + 100).unwrap();
        assert_eq!((t, s.name.as_str()), (MAX_JOB_S + 100, "a.c1"));
        assert_eq!(s.duration_s, Some(60), "short jobs keep their duration");
        let (t, s) = w.pop_until(i64::MAX).unwrap();
        assert_eq!((t, s.name.as_str()), (MAX_JOB_S + 200, "b.c1"));
    }
}

//! Pending workloads over time, for the operator page: the leading
//! controller records how many workloads wait, by reason — each minute's
//! sample the most it saw in that minute (`pending_samples`, keyed by minute
//! and reason; a write never lowers it, so retries, late writes and a second
//! leader in the same minute merge) — and the series gives each hour's or
//! day's peak. Samples are kept [`RETENTION_S`] (a little over a year, for
//! month-on-month views): the first write of each hour drops older ones.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use super::error::Result;
use super::series::{Bucket, Grid};
use super::sql::Val;
use super::store::Ledger;

/// The reason key of a sample's total (every reason together).
const TOTAL: &str = "";

/// Seconds between samples.
pub const SAMPLE_S: i64 = 60;

/// How long samples are kept: 400 days.
pub const RETENTION_S: i64 = 400 * 86_400;

/// One bucket: the most workloads waiting at any sample in it.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct PendingPoint {
    /// Start of the bucket (unix s, UTC).
    pub start_s: i64,
    /// Peak number of workloads waiting (0 where no sample was taken).
    pub jobs: i64,
    /// Samples taken in the bucket (0: nothing recorded, e.g. no leader).
    pub samples: i64,
}

/// Pending workloads over `[from, to)`: the total and each reason's peaks.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct PendingSeries {
    pub total: Vec<PendingPoint>,
    /// By reason (e.g. `QuotaExceeded`, `Unschedulable`), by name.
    pub reasons: Vec<(String, Vec<PendingPoint>)>,
}

impl Ledger {
    /// Records the workloads waiting at `at_s`, by reason, into the
    /// sample of its minute, which keeps the most seen (a sample written
    /// twice, by a retry, a late write or a second leader, never goes down).
    pub fn record_pending(&self, at_s: i64, by_reason: &BTreeMap<String, u64>) -> Result<()> {
        let minute = at_s.div_euclid(SAMPLE_S) * SAMPLE_S;
        let total: u64 = by_reason.values().sum();
        let hour = minute.div_euclid(3600) * 3600;
        self.write(|tx| {
            // The hour's first write (no total of it stored yet, whichever
            // minute it lands on; idempotent): samples past the retention go.
            let first_of_hour = tx.rows(
                "SELECT COUNT(*) FROM pending_samples WHERE reason = $1 AND at_s >= $2 AND at_s < $3",
                &[Val::T(TOTAL), Val::I(hour), Val::I(hour + 3600)],
            )?[0][0]
                .i()
                == 0;
            if first_of_hour {
                tx.exec(
                    "DELETE FROM pending_samples WHERE at_s < $1",
                    &[Val::I(minute.saturating_sub(RETENTION_S))],
                )?;
            }
            let rows = std::iter::once((TOTAL, total))
                .chain(by_reason.iter().map(|(r, n)| (r.as_str(), *n)));
            for (reason, n) in rows {
                tx.exec(
                    "INSERT INTO pending_samples (at_s, reason, jobs) VALUES ($1, $2, $3) \
                     ON CONFLICT (at_s, reason) DO UPDATE SET jobs = \
                     CASE WHEN excluded.jobs > pending_samples.jobs THEN excluded.jobs ELSE pending_samples.jobs END",
                    &[
                        Val::I(minute),
                        Val::T(reason),
                        Val::I(i64::try_from(n).unwrap_or(i64::MAX)),
                    ],
                )?;
            }
            Ok(())
        })
    }

    /// Each bucket's peak of waiting workloads in `[from_s, to_s)` (bounds
    /// rounded down to the bucket grid, as the use series), the total and
    /// by reason.
    pub fn pending_series(&self, from_s: i64, to_s: i64, bucket: Bucket) -> Result<PendingSeries> {
        let grid = Grid::of(from_s, to_s, bucket)?;
        let rows = self.read(|tx| {
            tx.rows(
                "SELECT reason, (at_s / $3) * $3 AS k, MAX(jobs), COUNT(*) FROM pending_samples \
                 WHERE at_s >= $1 AND at_s < $2 GROUP BY reason, k",
                &[Val::I(grid.from), Val::I(grid.end()), Val::I(grid.width)],
            )
        })?;
        let empty = || -> Vec<PendingPoint> {
            grid.starts()
                .map(|start_s| PendingPoint {
                    start_s,
                    ..Default::default()
                })
                .collect()
        };
        let mut by: BTreeMap<String, Vec<PendingPoint>> = BTreeMap::new();
        for r in rows {
            let series = by.entry(r[0].t()).or_insert_with(empty);
            if let Some(p) = series.get_mut(grid.slot(r[1].i())) {
                p.jobs = r[2].i();
                p.samples = r[3].i();
            }
        }
        let total = by.remove(TOTAL).unwrap_or_else(empty);
        Ok(PendingSeries {
            total,
            reasons: by.into_iter().collect(),
        })
    }

    /// The newest sample at or before `at_s`: its minute and the workloads
    /// waiting then by reason (reasons with none left out), or `None` when
    /// nothing was sampled in the [`STALE_S`] before `at_s` (no leader, or
    /// none recently: an old count is not shown as today's).
    pub fn latest_pending(&self, at_s: i64) -> Result<Option<PendingNow>> {
        let rows = self.read(|tx| {
            tx.rows(
                "SELECT at_s, reason, jobs FROM pending_samples WHERE at_s = \
                 (SELECT MAX(at_s) FROM pending_samples WHERE reason = $1 AND at_s <= $2 AND at_s > $3)",
                &[Val::T(TOTAL), Val::I(at_s), Val::I(at_s - STALE_S)],
            )
        })?;
        let Some(first) = rows.first() else {
            return Ok(None);
        };
        let mut now = PendingNow {
            at_s: first[0].i(),
            ..Default::default()
        };
        for r in &rows {
            match r[1].t().as_str() {
                TOTAL => now.total = r[2].i(),
                _ if r[2].i() == 0 => {}
                reason => {
                    now.by_reason.insert(reason.to_string(), r[2].i());
                }
            }
        }
        Ok(Some(now))
    }
}

/// How old the newest sample may be to count as "waiting now": five samples.
pub const STALE_S: i64 = 5 * SAMPLE_S;

/// The workloads waiting at the newest sample.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct PendingNow {
    /// The sample's minute (unix s, UTC).
    pub at_s: i64,
    /// Every reason together.
    pub total: i64,
    /// By reason (`QuotaExceeded`, `Unschedulable`, …), reasons with none left out.
    pub by_reason: BTreeMap<String, i64>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_bucket_keeps_its_peak_and_a_minute_keeps_the_most_seen() {
        let l = Ledger::open(":memory:").unwrap();
        let at = |h: i64, m: i64| 1_796_428_800 + h * 3600 + m * 60;
        let counts = |q: u64, u: u64| {
            BTreeMap::from([
                ("QuotaExceeded".to_string(), q),
                ("Unschedulable".to_string(), u),
            ])
        };
        l.record_pending(at(0, 1), &counts(2, 1)).unwrap();
        l.record_pending(at(0, 2), &counts(5, 0)).unwrap();
        // The same minute again (a late write, a new leader): the most seen stays.
        l.record_pending(at(0, 2) + 30, &counts(4, 3)).unwrap();
        l.record_pending(at(2, 0), &BTreeMap::new()).unwrap();
        let s = l.pending_series(at(0, 0), at(3, 0), Bucket::Hour).unwrap();
        let jobs = |p: &[PendingPoint]| p.iter().map(|p| (p.jobs, p.samples)).collect::<Vec<_>>();
        assert_eq!(jobs(&s.total), [(7, 2), (0, 0), (0, 1)]);
        assert_eq!(s.reasons.len(), 2);
        assert_eq!(s.reasons[0].0, "QuotaExceeded");
        assert_eq!(jobs(&s.reasons[0].1), [(5, 2), (0, 0), (0, 0)]);
        assert_eq!(jobs(&s.reasons[1].1), [(3, 2), (0, 0), (0, 0)]);
        let e = l.pending_series(0, at(3, 0), Bucket::Hour).unwrap_err();
        assert!(e.to_string().contains("at most"), "{e}");
    }

    #[test]
    fn waiting_now_is_the_newest_recent_sample_up_to_the_time_asked() {
        let l = Ledger::open(":memory:").unwrap();
        let at = |m: i64| 1_796_428_800 + m * 60;
        let counts = |q: u64, u: u64| {
            BTreeMap::from([
                ("QuotaExceeded".to_string(), q),
                ("Unschedulable".to_string(), u),
            ])
        };
        assert_eq!(l.latest_pending(at(10)).unwrap(), None);
        l.record_pending(at(1), &counts(2, 1)).unwrap();
        l.record_pending(at(3), &counts(0, 4)).unwrap();
        l.record_pending(at(9), &counts(7, 7)).unwrap(); // after the time asked
        let now = l.latest_pending(at(4) + 30).unwrap().unwrap();
        assert_eq!(now.at_s, at(3));
        assert_eq!(now.total, 4);
        // A reason with none waiting is left out.
        assert_eq!(
            now.by_reason,
            BTreeMap::from([("Unschedulable".to_string(), 4)])
        );
        // Older than five samples: not shown as now.
        assert_eq!(l.latest_pending(at(3) + STALE_S).unwrap(), None);
        assert!(l.latest_pending(at(3) + STALE_S - 1).unwrap().is_some());
    }
}

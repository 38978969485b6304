//! GPU time of running pods, metered in windows of a fixed grid (plan layer:
//! pure, no I/O, no clock).
//!
//! The controller observes each pod it placed as a [`PodRun`] (when its
//! containers started, when they finished, what it holds) and meters the
//! windows `[w, w + period)` between the last metered window and now. A
//! window's record is the overlap of the run with the window, and its id is
//! derived from the pod uid and the window start alone ([`window_id`]), so
//! whichever replica meters a window, however often, the ledger stores it
//! once: failover, retries and replays neither lose nor double anything.

use std::collections::BTreeMap;

use super::types::{record_id, Holder, MeteredUsage};
use super::{LedgerError, Result};

/// One pod's hold on GPUs, as observed: the holder (its `source` is the pod
/// uid, persisted by Kubernetes and unique for ever) and when it held them.
#[derive(Debug, Clone, PartialEq)]
pub struct PodRun {
    pub holder: Holder,
    /// When its containers started (unix s).
    pub start_s: i64,
    /// When its last container finished; `None` while it runs.
    pub end_s: Option<i64>,
}

/// The id of `source`'s record for the window starting at `window_s`.
pub fn window_id(source: &str, window_s: i64, period_s: i64) -> String {
    record_id("usage-window", source, window_s, window_s + period_s)
}

/// A valid metering period divides a day, so windows never cross a UTC
/// month boundary (the ledger keeps such a record whole) and every replica
/// computes the same grid.
pub fn check_period(period_s: i64) -> Result<()> {
    if period_s <= 0 || 86_400 % period_s != 0 {
        return Err(LedgerError::invalid(
            "period",
            format!("{period_s} s does not divide a day; use e.g. 60, 300 or 3600"),
        ));
    }
    Ok(())
}

/// The start of the grid window holding `t_s`.
pub fn window_floor(t_s: i64, period_s: i64) -> i64 {
    t_s.div_euclid(period_s) * period_s
}

/// What metering a span of windows gave.
#[derive(Debug, Default)]
pub struct Metered {
    pub usage: Vec<MeteredUsage>,
    /// Runs whose record is invalid (e.g. no tenant): (pod uid, why). They are
    /// left out of this batch, never the whole batch.
    pub rejected: Vec<(String, String)>,
}

/// Records of every run's overlap with each window in `[from_s, to_s)`
/// (both on the grid). `energy_j` gives the IT energy the node agents
/// attributed to a pod in a window, keyed (uid, window start); absent = 0.
pub fn meter_windows(
    runs: &[PodRun],
    from_s: i64,
    to_s: i64,
    period_s: i64,
    energy_j: &BTreeMap<(String, i64), i64>,
) -> Result<Metered> {
    check_period(period_s)?;
    if from_s % period_s != 0 || to_s % period_s != 0 {
        return Err(LedgerError::invalid(
            "window",
            format!("[{from_s}, {to_s}) is not on the {period_s} s grid"),
        ));
    }
    let mut out = Metered::default();
    for run in runs {
        let end = run.end_s.unwrap_or(to_s).min(to_s);
        let first = window_floor(run.start_s.max(from_s), period_s);
        let mut w = first;
        while w < end {
            let (s, e) = (run.start_s.max(w), end.min(w + period_s));
            if e > s {
                let uid = &run.holder.source;
                let energy = energy_j.get(&(uid.clone(), w)).copied().unwrap_or(0);
                match run.holder.record(s, e, energy).meter() {
                    Ok(mut m) => {
                        m.id = window_id(uid, w, period_s);
                        out.usage.push(m);
                    }
                    Err(err) => {
                        out.rejected.push((uid.clone(), err.to_string()));
                        break;
                    }
                }
            }
            w += period_s;
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run(uid: &str, start: i64, end: Option<i64>, milli: i64) -> PodRun {
        PodRun {
            holder: Holder {
                source: uid.into(),
                tenant: "acme".into(),
                job: "ml/train".into(),
                region: "zhongwei".into(),
                node: "n1".into(),
                model: "H100".into(),
                gpu_milli: milli,
                pue: 1.2,
                green_share: 0.5,
                grid_kg_per_kwh: 0.57,
            },
            start_s: start,
            end_s: end,
        }
    }

    fn gpu_s(m: &Metered) -> i64 {
        m.usage.iter().map(|u| u.milli_gpu_s).sum()
    }

    #[test]
    fn overlaps_are_exact_and_ids_depend_on_pod_and_window_only() {
        let none = BTreeMap::new();
        // Started 30 s into the first window, finished 10 s into the third.
        let r = run("uid-1", 1_030, Some(1_130), 2000);
        let m = meter_windows(std::slice::from_ref(&r), 960, 1_200, 60, &none).unwrap();
        assert_eq!(gpu_s(&m), 2000 * 100);
        let spans: Vec<(i64, i64)> = m.usage.iter().map(|u| (u.start_s, u.end_s)).collect();
        assert_eq!(spans, vec![(1_030, 1_080), (1_080, 1_130)]);
        // The same window seen while the pod still ran (a replica that metered
        // before the pod finished, at a later cursor) gets the same id.
        let running = run("uid-1", 1_030, None, 2000);
        let early = meter_windows(&[running], 1_080, 1_140, 60, &none).unwrap();
        assert_eq!(early.usage[0].id, m.usage[1].id);
        assert_ne!(m.usage[0].id, m.usage[1].id);
    }

    #[test]
    fn split_spans_add_up_to_one_span() {
        let none = BTreeMap::new();
        let r = run("uid-2", 1_000, None, 500);
        let whole = meter_windows(std::slice::from_ref(&r), 960, 4_200, 60, &none).unwrap();
        let mut parts = meter_windows(std::slice::from_ref(&r), 960, 2_040, 60, &none).unwrap();
        parts
            .usage
            .extend(meter_windows(&[r], 2_040, 4_200, 60, &none).unwrap().usage);
        assert_eq!(gpu_s(&whole), 500 * 3_200);
        let ids = |m: &Metered| m.usage.iter().map(|u| u.id.clone()).collect::<Vec<_>>();
        assert_eq!(ids(&whole), ids(&parts));
    }

    #[test]
    fn energy_and_bad_runs() {
        let mut energy = BTreeMap::new();
        energy.insert(("uid-3".to_string(), 60), 7_000);
        let mut bad = run("uid-4", 0, None, 1000);
        bad.holder.tenant.clear();
        let m = meter_windows(&[run("uid-3", 0, None, 1000), bad], 0, 180, 60, &energy).unwrap();
        assert_eq!(m.usage.len(), 3);
        assert_eq!(m.usage[1].it_energy_j, 7_000);
        assert_eq!(m.rejected.len(), 1);
        assert!(m.rejected[0].1.contains("tenant"), "{:?}", m.rejected);
    }

    #[test]
    fn periods_must_divide_a_day_and_spans_sit_on_the_grid() {
        assert!(check_period(60).is_ok() && check_period(3_600).is_ok());
        let e = check_period(7).unwrap_err().to_string();
        assert!(e.contains("period") && e.contains("divide"), "{e}");
        assert!(meter_windows(&[], 10, 120, 60, &BTreeMap::new()).is_err());
        assert_eq!(window_floor(-1, 60), -60);
    }
}

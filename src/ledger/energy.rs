//! Energy per pod per metering window: what the node agent measures and the
//! controller's GPU meter bills (plan layer: pure, no I/O, no clock).
//!
//! The agent attributes each sample's device energy to pods
//! (`telemetry::attribution`) and hands the per-pod millijoules with the
//! sample's time to [`EnergyWindows`], which splits them over the grid
//! windows the sample interval covers (in proportion to time) and closes a
//! window when a sample passes its end. A closed window's joules per pod are
//! the telescoped difference `floor(cum(end) / 1000) − floor(cum(start) / 1000)`
//! of the pod's cumulative millijoules, so the joules of all windows add up
//! to the pod's total exactly (to the joule below, never drifting with the
//! number of windows). The agent publishes the last closed windows as an
//! [`EnergyReport`] in the Node annotation [`ANNOTATION_POD_ENERGY`]; the
//! meter reads the pod's joules for each window it bills.

use std::collections::{BTreeMap, HashMap};

use serde::{Deserialize, Serialize};

use super::{LedgerError, Result};

/// Node annotation carrying the agent's [`EnergyReport`] (JSON).
pub const ANNOTATION_POD_ENERGY: &str = "zhisuan.io/pod-energy";

/// The closed windows an agent reports: IT energy per pod per window.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct EnergyReport {
    /// Window length, seconds (the controller meter's period).
    pub period: i64,
    /// Start of the oldest window reported; earlier windows are not (or no
    /// longer) known.
    pub from: i64,
    /// End of the newest closed window: windows in `[from, through)` are
    /// complete.
    pub through: i64,
    /// Window start → pod uid → joules (pods with no energy left out).
    pub windows: BTreeMap<i64, BTreeMap<String, i64>>,
}

impl EnergyReport {
    /// The joules the agent attributed to pod `uid` in the window starting at
    /// `window_s`: `None` when the report does not cover that window.
    pub fn energy_j(&self, uid: &str, window_s: i64) -> Option<i64> {
        if window_s < self.from || window_s + self.period > self.through {
            return None;
        }
        Some(
            self.windows
                .get(&window_s)
                .and_then(|pods| pods.get(uid))
                .copied()
                .unwrap_or(0),
        )
    }

    /// Parses the annotation; an error names the annotation and what is wrong.
    pub fn parse(text: &str) -> Result<Self> {
        let r: EnergyReport = serde_json::from_str(text).map_err(|e| {
            LedgerError::invalid(ANNOTATION_POD_ENERGY, format!("not an energy report: {e}"))
        })?;
        super::windows::check_period(r.period)?;
        Ok(r)
    }
}

/// A pod's running total on this agent.
#[derive(Clone, Copy, Debug, Default)]
struct PodTotal {
    /// Millijoules attributed since the agent first saw it.
    cum_mj: u128,
    /// Joules already given to closed windows (`floor(cum / 1000)` at the
    /// last window end).
    closed_j: u128,
}

/// The agent's window accounting: feed it every sample, publish its report.
#[derive(Clone, Debug)]
pub struct EnergyWindows {
    period_ms: i64,
    keep: usize,
    last_ms: Option<i64>,
    pods: HashMap<String, PodTotal>,
    report: EnergyReport,
}

impl EnergyWindows {
    /// Windows of `period_s` (must divide a day, as the meter's), keeping the
    /// newest `keep` closed windows in the report.
    pub fn new(period_s: i64, keep: usize) -> Result<Self> {
        super::windows::check_period(period_s)?;
        if keep == 0 {
            return Err(LedgerError::invalid(
                "keep",
                "at least one closed window must be kept (e.g. 15)",
            ));
        }
        Ok(EnergyWindows {
            period_ms: period_s * 1000,
            keep,
            last_ms: None,
            pods: HashMap::new(),
            report: EnergyReport {
                period: period_s,
                ..EnergyReport::default()
            },
        })
    }

    /// Carries on from what an earlier run of the agent published (read back
    /// from the Node), so a restart does not drop closed windows the meter
    /// has not billed yet. A report of another period is ignored.
    pub fn resume(&mut self, earlier: EnergyReport) {
        if earlier.period == self.report.period && self.last_ms.is_none() {
            self.report = earlier;
            self.trim();
        }
    }

    /// The report to publish.
    pub fn report(&self) -> &EnergyReport {
        &self.report
    }

    /// One sample taken at `at_ms` (unix ms): `pods` got these millijoules
    /// since the previous sample. The first sample only starts the clock.
    pub fn add(&mut self, at_ms: i64, pods: &[(&str, u64)]) {
        let Some(prev) = self.last_ms else {
            self.last_ms = Some(at_ms);
            let first = at_ms.div_euclid(self.period_ms) * self.period_ms / 1000;
            if self.report.windows.is_empty() && self.report.through == 0 {
                self.report.from = first;
                self.report.through = first;
            }
            return;
        };
        let at_ms = at_ms.max(prev);
        let span = (at_ms - prev).max(1) as u128;
        for (uid, _) in pods {
            self.pods.entry(uid.to_string()).or_default();
        }
        let sample = |uid: &str| {
            pods.iter()
                .find(|(u, _)| *u == uid)
                .map_or(0, |(_, mj)| *mj as u128)
        };
        let mut boundary = (prev.div_euclid(self.period_ms) + 1) * self.period_ms;
        while boundary <= at_ms {
            // The share of this sample's energy that fell before `boundary`.
            let before = (boundary - prev) as u128;
            let mut closed = BTreeMap::new();
            for (uid, total) in self.pods.iter_mut() {
                let j = (total.cum_mj + sample(uid) * before / span) / 1000;
                if j > total.closed_j {
                    closed.insert(uid.clone(), (j - total.closed_j) as i64);
                    total.closed_j = j;
                }
            }
            let start = (boundary - self.period_ms) / 1000;
            if !closed.is_empty() {
                self.report.windows.insert(start, closed);
            }
            self.report.through = boundary / 1000;
            boundary += self.period_ms;
        }
        for (uid, mj) in pods {
            if let Some(t) = self.pods.get_mut(*uid) {
                t.cum_mj += *mj as u128;
            }
        }
        // A pod gone from the samples with nothing left to close is dropped.
        self.pods
            .retain(|uid, t| t.cum_mj / 1000 > t.closed_j || sample(uid) > 0);
        self.last_ms = Some(at_ms);
        self.trim();
    }

    fn trim(&mut self) {
        let period = self.report.period;
        let oldest_kept = self.report.through - self.keep as i64 * period;
        if self.report.from < oldest_kept {
            self.report.from = oldest_kept;
        }
        while let Some((&w, _)) = self.report.windows.first_key_value() {
            if w >= self.report.from {
                break;
            }
            self.report.windows.pop_first();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn total(r: &EnergyReport, uid: &str) -> i64 {
        r.windows.values().filter_map(|p| p.get(uid)).sum()
    }

    #[test]
    fn windows_add_up_to_the_pods_total_and_split_samples_by_time() {
        let mut w = EnergyWindows::new(60, 1_000).unwrap();
        w.add(1_000, &[]);
        // 7 s samples of 7,777 mJ for 10 minutes: windows cut samples.
        let mut t = 1_000;
        let mut mj_total = 0u64;
        for _ in 0..90 {
            t += 7_000;
            w.add(t, &[("a", 7_777), ("b", 1)]);
            mj_total += 7_777;
        }
        let r = w.report();
        assert_eq!(r.through, t / 60_000 * 60);
        // Everything up to the last window end is closed: the telescoped sum
        // equals floor(cum at that end / 1000).
        let closed_s = r.through * 1000 - 1_000;
        let cum_at_end = 7_777u64 * closed_s as u64 / 7_000;
        assert!((total(r, "a") - (cum_at_end / 1000) as i64).abs() <= 1);
        assert!(mj_total / 1000 >= total(r, "a") as u64);
        // A full window holds 60/7 samples' worth: 66,660 mJ → 66 or 67 J.
        let full = r.windows[&120]["a"];
        assert!((66..=67).contains(&full), "{full}");
        // 90 mJ over 10 minutes never reaches a joule.
        assert_eq!(total(r, "b"), 0);
    }

    #[test]
    fn a_pod_that_leaves_gets_its_last_joules_in_the_next_window() {
        let mut w = EnergyWindows::new(60, 100).unwrap();
        w.add(0, &[]);
        w.add(30_000, &[("a", 1_500)]);
        w.add(59_000, &[("a", 1_400)]);
        // Gone now; the window closes with what it had.
        w.add(61_000, &[]);
        assert_eq!(w.report().windows[&0]["a"], 2);
        assert_eq!(w.report().through, 60);
        w.add(125_000, &[]);
        assert_eq!(total(w.report(), "a"), 2, "2,900 mJ is 2 J, never 3");
        assert!(w.pods.is_empty(), "nothing left to close: forgotten");
    }

    #[test]
    fn only_the_newest_windows_are_kept_and_the_report_says_so() {
        let mut w = EnergyWindows::new(60, 3).unwrap();
        w.add(0, &[]);
        for i in 1..=10 {
            w.add(i * 60_000, &[("a", 60_000)]);
        }
        let r = w.report().clone();
        assert_eq!((r.from, r.through), (420, 600));
        assert_eq!(r.windows.len(), 3);
        assert_eq!(r.energy_j("a", 540), Some(60));
        assert_eq!(r.energy_j("a", 360), None, "evicted");
        assert_eq!(r.energy_j("a", 600), None, "not closed yet");
        assert_eq!(r.energy_j("z", 540), Some(0), "covered, no energy");
        // Round trip through the annotation.
        let text = serde_json::to_string(&r).unwrap();
        assert_eq!(EnergyReport::parse(&text).unwrap(), r);
        assert!(EnergyReport::parse("{\"period\": 7}").is_err());
    }

    #[test]
    fn a_restarted_agent_keeps_the_windows_it_published() {
        let mut w = EnergyWindows::new(60, 10).unwrap();
        w.add(0, &[]);
        w.add(60_000, &[("a", 5_000)]);
        let published = w.report().clone();
        let mut again = EnergyWindows::new(60, 10).unwrap();
        again.resume(published);
        again.add(90_000, &[]);
        again.add(120_000, &[("a", 3_000)]);
        let r = again.report();
        assert_eq!(r.energy_j("a", 0), Some(5));
        assert_eq!(r.energy_j("a", 60), Some(3));
        assert_eq!(r.from, 0);
    }
}

//! Time shifting (issue #18): a job that may start late (`max_delay_s`)
//! waits for greener or cheaper hours of the region profiles (hour-of-day
//! green shares, time-of-use tariffs) when that lowers its score enough,
//! and never past its latest start.
//!
//! Pure: the ranked regions of [`super::plan::RegionChooser::rank`] (their
//! expected facility energy does not depend on the start), each region's
//! hour-of-day green and price profiles, the clock as an argument.

use super::catalog::Catalog;
use super::cost::{hour_start, mean_green_share, mean_price_multiplier, Site, HOUR_S};
use super::explain::Explanation;
use crate::placement::FxBuild;
use std::collections::HashMap;

/// The least share of its carbon a job must save to wait for it.
pub const MIN_SAVING: f64 = 0.05;

/// How far ahead starts are looked at: the profiles repeat daily.
pub const HORIZON_S: i64 = 24 * HOUR_S;

/// A time-tolerant job takes any region from this long before its latest
/// start, so that a full cluster then does not make it start late.
pub const RELEASE_SLACK_S: i64 = 1800;

/// What a job that may start late accepts this pass.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Window {
    /// Expected carbon at the best (region, start) over the ranked regions
    /// and the starts from now (hour boundaries) up to `release_s`, kg.
    pub best_kg: f64,
    /// Expected energy cost there and then, milli-fen.
    pub best_cost_milli_fen: f64,
    /// A region takes the job now only if its score now is at most this:
    /// within [`MIN_SAVING`] of the best score.
    pub threshold: f64,
    /// The worst ranked region's carbon and energy cost in this hour (the
    /// score's normalisers).
    scores: (f64, f64),
    /// The start of the hour the window was worked out in: "now" is scored
    /// as a start then, so the window is the same all hour (the profiles
    /// are hourly) and can be kept until the next hour begins.
    pub hour_s: i64,
    /// The first start (now, or a later hour boundary) at which some ranked
    /// region is within the threshold, and that region.
    pub next_s: i64,
    pub region: usize,
    /// From then on the job takes any region: its latest start less
    /// [`RELEASE_SLACK_S`].
    pub release_s: i64,
}

impl Window {
    /// Whether the ranked region `r` takes the job now (in this hour).
    pub fn takes(&self, at: &mut Hours<'_>, r: usize) -> bool {
        let (max_c, max_k) = self.scores;
        at.score(r, self.hour_s, max_c, max_k) <= self.threshold
    }
}

/// One job's ranked regions over the hours, with the mean green share and
/// price multiplier of each (region, start, runtime) worked out once a
/// pass: thousands of held jobs of a few runtimes ask the same.
pub struct Hours<'a> {
    pub catalog: &'a Catalog,
    pub expl: &'a Explanation,
    pub runtime_s: i64,
    pub memo: &'a mut GreenMemo,
}

/// Mean green shares and price multipliers by (region, start, runtime);
/// cleared each pass.
#[derive(Default)]
pub struct GreenMemo(HashMap<(usize, i64, i64), (f64, f64), FxBuild>);

impl Hours<'_> {
    /// The ranked region `r`'s facility energy (it does not depend on the
    /// start) and its mean green share and price multiplier if the job
    /// started at `start_s`.
    fn at(&mut self, r: usize, start_s: i64) -> (f64, f64, f64, Site<'_>) {
        let est = self.expl.candidates[r]
            .terms
            .as_ref()
            .expect("ranked regions have terms")
            .estimate;
        let site = Site::of(self.catalog, r);
        let runtime = self.runtime_s;
        let (green, price) = *self.memo.0.entry((r, start_s, runtime)).or_insert_with(|| {
            (
                mean_green_share(site, start_s, runtime),
                mean_price_multiplier(site, start_s, runtime),
            )
        });
        (est.facility_kwh, green, price, site)
    }

    /// Expected carbon of the ranked region `r` (its estimate) if the job
    /// started at `start_s`, kg.
    pub fn carbon(&mut self, r: usize, start_s: i64) -> f64 {
        let (kwh, green, _, site) = self.at(r, start_s);
        kwh * (1.0 - green) * site.grid_factor_kg_per_kwh
    }

    /// Expected energy cost of the ranked region `r` if the job started at
    /// `start_s` (its tariff's hours), milli-fen.
    fn cost(&mut self, r: usize, start_s: i64) -> f64 {
        let (kwh, _, price, site) = self.at(r, start_s);
        kwh * site.price_milli_fen_per_kwh as f64 * price
    }

    /// Green's score of the ranked region `r` for a start at `start_s`:
    /// carbon and energy cost (the latter at the catalog's `shift_cost`
    /// share of its weight), each over
    /// the worst ranked region's now.
    fn score(&mut self, r: usize, start_s: i64, max_c: f64, max_k: f64) -> f64 {
        let w = self.catalog.weights;
        let norm = |x: f64, max: f64| if max > 0.0 { x / max } else { 0.0 };
        let carbon = self.carbon(r, start_s);
        let cost = self.cost(r, start_s);
        w.carbon * norm(carbon, max_c) + w.cost * w.shift_cost * norm(cost, max_k)
    }

    /// The window of a job that must start by `latest_start_s`, over the
    /// ranked regions `order` (a set: the window does not depend on their
    /// order); `None` once it is to take any region (its release has
    /// come). Starts are scored on the hour grid — this hour (standing for
    /// now), then the hour boundaries up to the release — so a job is never
    /// held past its latest start, and with no greener or cheaper hour
    /// ahead `next_s` is this hour.
    pub fn window(&mut self, order: &[u16], now_s: i64, latest_start_s: i64) -> Option<Window> {
        let release_s = latest_start_s.saturating_sub(RELEASE_SLACK_S);
        if order.is_empty() || release_s <= now_s {
            return None;
        }
        let hour_s = hour_start(now_s);
        let last = release_s.min(hour_s.saturating_add(HORIZON_S));
        let starts =
            std::iter::once(hour_s).chain((hour_s + HOUR_S..=last).step_by(HOUR_S as usize));
        let (mut max_c, mut max_k) = (0.0f64, 0.0f64);
        for &r in order {
            max_c = max_c.max(self.carbon(r as usize, hour_s));
            max_k = max_k.max(self.cost(r as usize, hour_s));
        }
        // Each start's best region (the lowest score; ties to the lower
        // index, so the order of `order` does not matter).
        let mut by_start = Vec::with_capacity(25);
        for t in starts {
            let mut best = (f64::INFINITY, usize::MAX);
            for &r in order {
                let s = self.score(r as usize, t, max_c, max_k);
                if (s, r as usize) < best {
                    best = (s, r as usize);
                }
            }
            by_start.push((t, best));
        }
        let &(best_s, (best, best_r)) = by_start
            .iter()
            .min_by(|a, b| a.1 .0.total_cmp(&b.1 .0).then(a.0.cmp(&b.0)))
            .expect("at least this hour");
        let threshold = best / (1.0 - MIN_SAVING);
        let &(next_s, (_, region)) = by_start
            .iter()
            .find(|(_, (s, _))| *s <= threshold)
            .expect("the best start is within the threshold");
        Some(Window {
            best_kg: self.carbon(best_r, best_s),
            best_cost_milli_fen: self.cost(best_r, best_s),
            threshold,
            next_s,
            region,
            release_s,
            scores: (max_c, max_k),
            hour_s,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::regions::job::{JobKind, JobSpec};
    use crate::regions::plan::{RegionChooser, RegionPolicy};
    use crate::regions::InventoryIndex;

    /// One region; green 10% at night, 90% from 10:00 to 14:00 CST when
    /// `solar`, else a flat 50%; with `tou`, a time-of-use tariff: 0.4 of
    /// the price from 23:00 to 07:00, 1.6 from 07:00 to 23:00.
    fn catalog_with(solar: bool, tou: bool) -> Catalog {
        let mut profile = if solar {
            let p: Vec<String> = (0..24)
                .map(|h| if (10..14).contains(&h) { "0.9" } else { "0.1" }.to_string())
                .collect();
            format!(", green_profile: [{}]", p.join(", "))
        } else {
            String::new()
        };
        if tou {
            let p: Vec<&str> = (0..24)
                .map(|h| if h == 23 || h < 7 { "0.4" } else { "1.6" })
                .collect();
            profile.push_str(&format!(", price_profile: [{}]", p.join(", ")));
        }
        let yaml = format!(
            r#"
accelerators: [{{model: A100, vendor: nvidia, power_w: 400}}]
regions:
  - {{name: west, hub: w, side: west, pue: 1.1, green_share: 0.5{profile}, price_cny_per_kwh: 0.3,
     grid_factor_kg_per_kwh: 0.6, inventory: [
       {{model: A100, nodes: 2, gpus_per_node: 8, cpu_milli: 96000, memory_mib: 393216}}]}}
user_regions: []
links: []
"#
        );
        Catalog::from_yaml(&yaml, "test.yaml").unwrap()
    }

    /// 00:00 CST on some day, in Unix seconds.
    const MIDNIGHT_CST: i64 = 1_767_196_800;

    fn catalog(solar: bool) -> Catalog {
        catalog_with(solar, false)
    }

    fn win(solar: bool, now: i64, latest: i64) -> Option<Window> {
        win_in(&catalog(solar), now, latest)
    }

    fn win_in(c: &Catalog, now: i64, latest: i64) -> Option<Window> {
        let c = c.clone();
        let job = JobSpec {
            max_runtime_s: Some(HOUR_S),
            ..JobSpec::new("t", "j", JobKind::Training)
        }
        .resolve(&c)
        .unwrap();
        let mut chooser = RegionChooser::new(RegionPolicy::Green);
        let (mut expl, mut order) = (Explanation::default(), Vec::new());
        chooser.rank(
            &c,
            &InventoryIndex::new(&c),
            &job,
            now,
            &mut expl,
            &mut order,
        );
        let mut memo = GreenMemo::default();
        let mut hours = Hours {
            catalog: &c,
            expl: &expl,
            runtime_s: job.expected_runtime_s,
            memo: &mut memo,
        };
        hours.window(&order, now, latest)
    }

    #[test]
    fn night_work_waits_for_the_sunny_hours_it_may_reach() {
        let now = MIDNIGHT_CST + 2 * HOUR_S; // 02:00
        let w = win(true, now, now + 12 * HOUR_S).expect("a window");
        assert_eq!(w.next_s, MIDNIGHT_CST + 10 * HOUR_S);
        assert_eq!(w.release_s, now + 12 * HOUR_S - RELEASE_SLACK_S);
    }

    #[test]
    fn never_past_the_latest_start() {
        let now = MIDNIGHT_CST + 2 * HOUR_S;
        // Latest start 06:00: the sun comes too late, so now is as good.
        assert_eq!(win(true, now, now + 4 * HOUR_S).unwrap().next_s, now);
        // From the release on (latest start less the slack) it is not held.
        assert_eq!(win(true, now, now + RELEASE_SLACK_S), None);
        assert_eq!(win(true, now, now), None);
        // Latest start 10:20: released at 09:50, before the sun: now.
        let w = win(true, now, MIDNIGHT_CST + 10 * HOUR_S + 1200).unwrap();
        assert!(w.next_s <= w.release_s && w.next_s == now, "{w:?}");
    }

    #[test]
    fn no_shift_when_no_later_hour_is_greener() {
        let now = MIDNIGHT_CST + 2 * HOUR_S;
        // A flat profile: every hour is as green as now.
        assert_eq!(win(false, now, now + 20 * HOUR_S).unwrap().next_s, now);
        // In the sunny hours already: nothing greener ahead.
        let noon = MIDNIGHT_CST + 10 * HOUR_S;
        assert_eq!(win(true, noon, noon + 3 * HOUR_S).unwrap().next_s, noon);
    }

    /// Flat green power, a time-of-use tariff: work at the peak waits for
    /// the valley hours it may reach, never past its latest start, and
    /// not at all where the tariff is flat.
    #[test]
    fn peak_hour_work_waits_for_the_valley_tariff_it_may_reach() {
        let tou = catalog_with(false, true);
        let now = MIDNIGHT_CST + 15 * HOUR_S; // 15:00, the dear hours
        let w = win_in(&tou, now, now + 12 * HOUR_S).expect("a window");
        assert_eq!(w.next_s, MIDNIGHT_CST + 23 * HOUR_S, "{w:?}");
        assert!(w.best_cost_milli_fen > 0.0);
        // The valley comes after the release: now is as good as it gets.
        let w = win_in(&tou, now, now + 8 * HOUR_S).unwrap();
        assert_eq!(w.next_s, now);
        // In the valley already: nothing cheaper ahead.
        let night = MIDNIGHT_CST + 2 * HOUR_S;
        assert_eq!(
            win_in(&tou, night, night + 12 * HOUR_S).unwrap().next_s,
            night
        );
        // The same hours with a flat price: no shift.
        assert_eq!(win(false, now, now + 12 * HOUR_S).unwrap().next_s, now);
    }
}

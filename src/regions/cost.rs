//! The cost model: one pure function of plain data. For some GPUs running in a
//! region over an interval, the expected IT and facility energy, the energy
//! cost (exact integer milli-fen), the carbon and the green share.
//!
//! energy (facility) = GPU power × GPUs × hours × PUE
//! carbon            = facility energy × (1 − green share) × grid factor
//! cost              = facility energy × price
//!
//! The planner calls it with a job's expected runtime to score candidates;
//! the world calls it with the actual interval to meter usage. One formula.

use super::catalog::Catalog;
use serde::Serialize;

/// Seconds China Standard Time is ahead of UTC; green profiles are CST hours.
pub const CST_OFFSET_S: i64 = 8 * 3600;
pub const HOUR_S: i64 = 3600;
const DAY_S: i64 = 24 * HOUR_S;

/// The figures of a site that the cost model needs (borrowed from a
/// [`Catalog`] region).
#[derive(Debug, Clone, Copy)]
pub struct Site<'a> {
    pub pue: f64,
    pub green_share: f64,
    pub green_profile: Option<&'a [f64]>,
    /// The profile's mean over a day ([`day_mean_green_share`]), worked out
    /// once when the catalog loads: region choice needs it for every region
    /// of every decision.
    pub green_day_mean: f64,
    /// The flat (or flat-period) price.
    pub price_milli_fen_per_kwh: i64,
    /// Optional time-of-use multipliers of that price by hour of day (CST).
    pub price_profile: Option<&'a [f64]>,
    /// Their mean over a day (1.0 without a profile).
    pub price_day_mean: f64,
    pub grid_factor_kg_per_kwh: f64,
}

impl<'a> Site<'a> {
    pub fn of(catalog: &'a Catalog, region: usize) -> Site<'a> {
        let r = &catalog.regions[region];
        Site {
            pue: r.pue,
            green_share: r.green_share,
            green_profile: r.green_profile.as_deref(),
            green_day_mean: catalog.green_day_mean[region],
            price_milli_fen_per_kwh: catalog.price_milli_fen_per_kwh[region],
            price_profile: r.price_profile.as_deref(),
            price_day_mean: catalog.price_day_mean[region],
            grid_factor_kg_per_kwh: r.grid_factor_kg_per_kwh,
        }
    }
}

/// `x.round() as i64` for the non-negative, well-below-2^52 values the cost
/// model makes (kWh × price), without the libm call `f64::round` is on
/// baseline x86-64 (a tenth of region choice's time in a profile).
fn round_non_negative(x: f64) -> i64 {
    debug_assert!((0.0..4.0e15).contains(&x), "{x}");
    let whole = x as i64; // truncates
    whole + (x - whole as f64 >= 0.5) as i64
}

/// An hour-of-day profile's mean over a day, or `flat` without one.
pub fn day_mean(flat: f64, profile: Option<&[f64]>) -> f64 {
    profile.map_or(flat, |p| p.iter().sum::<f64>() / 24.0)
}

/// What runs: `milli_gpus` thousandths of GPUs drawing `power_w` each (at full
/// share), from `start_s` (Unix seconds) for `duration_s` seconds.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Usage {
    pub milli_gpus: u64,
    pub power_w: f64,
    pub start_s: i64,
    pub duration_s: i64,
}

/// The model's answer.
#[derive(Debug, Clone, Copy, PartialEq, Default, Serialize)]
pub struct CostEstimate {
    pub gpu_seconds: f64,
    pub it_kwh: f64,
    pub facility_kwh: f64,
    /// Energy cost, milli-fen (1 CNY = 100 000), rounded once per estimate.
    pub energy_cost_milli_fen: i64,
    pub carbon_kg: f64,
    /// Mean green share over the interval.
    pub green_share: f64,
}

/// The cost model.
pub fn estimate(usage: Usage, site: Site<'_>) -> CostEstimate {
    let duration_s = usage.duration_s.max(0);
    let gpu_seconds = usage.milli_gpus as f64 / 1000.0 * duration_s as f64;
    let it_kwh = gpu_seconds * usage.power_w / 3_600_000.0;
    let facility_kwh = it_kwh * site.pue;
    let green = mean_green_share(site, usage.start_s, duration_s);
    CostEstimate {
        gpu_seconds,
        it_kwh,
        facility_kwh,
        energy_cost_milli_fen: round_non_negative(
            facility_kwh
                * site.price_milli_fen_per_kwh as f64
                * mean_price_multiplier(site, usage.start_s, duration_s),
        ),
        carbon_kg: facility_kwh * (1.0 - green) * site.grid_factor_kg_per_kwh,
        green_share: green,
    }
}

/// The start of the hour (Unix s) holding `t_s` (UTC and CST hours start
/// together: the offset is whole hours).
pub fn hour_start(t_s: i64) -> i64 {
    t_s - t_s.rem_euclid(HOUR_S)
}

/// Hour of day (0..24) in China Standard Time for a Unix second.
pub fn hour_of_day(t_s: i64) -> usize {
    ((t_s + CST_OFFSET_S).rem_euclid(DAY_S) / HOUR_S) as usize
}

/// Time-weighted mean green share over `[start, start + duration)`.
pub fn mean_green_share(site: Site<'_>, start_s: i64, duration_s: i64) -> f64 {
    match site.green_profile {
        None => site.green_share,
        Some(p) => profile_mean(p, site.green_day_mean, start_s, duration_s),
    }
}

/// Time-weighted mean time-of-use multiplier over `[start, start +
/// duration)` (1.0 with a flat price): energy drawn evenly over the
/// interval costs the flat price times this.
pub fn mean_price_multiplier(site: Site<'_>, start_s: i64, duration_s: i64) -> f64 {
    match site.price_profile {
        None => 1.0,
        Some(p) => profile_mean(p, site.price_day_mean, start_s, duration_s),
    }
}

/// Time-weighted mean of an hour-of-day (CST) profile whose daily mean is
/// `day_mean` over `[start, start + duration)`; its hour's value when the
/// interval is empty.
fn profile_mean(profile: &[f64], day_mean: f64, start_s: i64, duration_s: i64) -> f64 {
    if duration_s <= 0 {
        return profile[hour_of_day(start_s)];
    }
    let whole_days = duration_s / DAY_S;
    let mut weighted = whole_days as f64 * DAY_S as f64 * day_mean;
    // The remainder (< 1 day) hour segment by hour segment.
    let mut t = start_s + whole_days * DAY_S;
    let end = start_s + duration_s;
    while t < end {
        let next_hour = t - (t + CST_OFFSET_S).rem_euclid(HOUR_S) + HOUR_S;
        let seg_end = next_hour.min(end);
        weighted += (seg_end - t) as f64 * profile[hour_of_day(t)];
        t = seg_end;
    }
    weighted / duration_s as f64
}

#[cfg(test)]
mod tests {
    use super::*;

    fn close(a: f64, b: f64) -> bool {
        (a - b).abs() < 1e-9 * b.abs().max(1.0)
    }

    #[test]
    fn eight_gpus_two_hours_in_a_western_site() {
        // 8 GPUs × 300 W × 2 h = 4.8 kWh IT; × PUE 1.2 = 5.76 kWh facility;
        // × 0.36 CNY/kWh = 2.0736 CNY = 207 360 milli-fen;
        // carbon = 5.76 × (1 − 0.6) × 0.6423 = 1.4798592 kg.
        let site = Site {
            pue: 1.2,
            green_share: 0.6,
            green_profile: None,
            green_day_mean: 0.6,
            price_milli_fen_per_kwh: 36_000,
            price_profile: None,
            price_day_mean: 1.0,
            grid_factor_kg_per_kwh: 0.6423,
        };
        let e = estimate(
            Usage {
                milli_gpus: 8000,
                power_w: 300.0,
                start_s: 0,
                duration_s: 7200,
            },
            site,
        );
        assert!(close(e.gpu_seconds, 57_600.0));
        assert!(close(e.it_kwh, 4.8));
        assert!(close(e.facility_kwh, 5.76));
        assert_eq!(e.energy_cost_milli_fen, 207_360);
        assert!(close(e.carbon_kg, 1.4798592), "{}", e.carbon_kg);
    }

    #[test]
    fn a_shared_gpu_pays_its_share() {
        // 0.25 GPU × 70 W × 1 h = 0.0175 kWh; × 1.25 = 0.021875 kWh;
        // × 0.72 CNY = 0.01575 CNY = 1575 milli-fen; carbon × 0.88 × 0.5849.
        let site = Site {
            pue: 1.25,
            green_share: 0.12,
            green_profile: None,
            green_day_mean: 0.12,
            price_milli_fen_per_kwh: 72_000,
            price_profile: None,
            price_day_mean: 1.0,
            grid_factor_kg_per_kwh: 0.5849,
        };
        let e = estimate(
            Usage {
                milli_gpus: 250,
                power_w: 70.0,
                start_s: 0,
                duration_s: 3600,
            },
            site,
        );
        assert!(close(e.facility_kwh, 0.021875));
        assert_eq!(e.energy_cost_milli_fen, 1575);
        assert!(close(e.carbon_kg, 0.021875 * 0.88 * 0.5849));
    }

    #[test]
    fn rounding_is_f64_round_for_every_cost_the_model_makes() {
        let mut x = 0.0f64;
        while x < 2.0e6 {
            assert_eq!(round_non_negative(x), x.round() as i64, "{x}");
            x += 0.125; // exact halves and quarters included
        }
        for x in [
            0.49999999999999994,
            0.5,
            1.5,
            2.5,
            1e12 + 0.5,
            4503599627370495.5 / 2.0,
        ] {
            assert_eq!(round_non_negative(x), x.round() as i64, "{x}");
        }
    }

    #[test]
    fn green_profile_is_time_weighted_in_china_standard_time() {
        let mut profile = vec![0.0; 24];
        profile[12] = 0.5;
        profile[13] = 1.0;
        let site = Site {
            pue: 1.0,
            green_share: 0.0,
            green_profile: Some(&profile),
            green_day_mean: day_mean(0.0, Some(&profile)),
            price_milli_fen_per_kwh: 0,
            price_profile: None,
            price_day_mean: 1.0,
            grid_factor_kg_per_kwh: 1.0,
        };
        // 12:00 CST = 04:00 UTC. 12:00–14:00 CST: mean (0.5 + 1.0) / 2.
        let noon_cst = 4 * 3600;
        assert_eq!(hour_of_day(noon_cst), 12);
        assert!(close(mean_green_share(site, noon_cst, 7200), 0.75));
        // 12:30–13:30: half an hour at 0.5, half at 1.0.
        assert!(close(mean_green_share(site, noon_cst + 1800, 3600), 0.75));
        // A whole day plus 12:00–13:00: (24 h × 1.5/24 + 1 h × 0.5) / 25 h.
        let e = mean_green_share(site, noon_cst, 25 * 3600);
        assert!(close(e, (1.5 + 0.5) / 25.0), "{e}");
        // 1 GPU-hour at 1000 W, PUE 1, grid 1: carbon = 1 kWh × (1 − 0.5).
        let c = estimate(
            Usage {
                milli_gpus: 1000,
                power_w: 1000.0,
                start_s: noon_cst,
                duration_s: 3600,
            },
            site,
        );
        assert!(close(c.carbon_kg, 0.5));
    }

    /// A time-of-use tariff: energy costs the flat price times the
    /// time-weighted multiplier of the hours it is drawn in (CST).
    #[test]
    fn a_time_of_use_tariff_prices_each_hour_at_its_multiplier() {
        // Valley 0.4 from 23:00 to 07:00, peak 1.6 from 09:00 to 12:00 and
        // 18:00 to 21:00, flat 1.0 otherwise (CST).
        let profile: Vec<f64> = (0..24)
            .map(|h| match h {
                23 | 0..=6 => 0.4,
                9..=11 | 18..=20 => 1.6,
                _ => 1.0,
            })
            .collect();
        let site = Site {
            pue: 1.0,
            green_share: 0.0,
            green_profile: None,
            green_day_mean: 0.0,
            price_milli_fen_per_kwh: 50_000,
            price_profile: Some(&profile),
            price_day_mean: day_mean(1.0, Some(&profile)),
            grid_factor_kg_per_kwh: 0.5,
        };
        // 1 kWh an hour: one GPU at 1 kW.
        let cost = |start_cst_h: i64, hours: i64| {
            estimate(
                Usage {
                    milli_gpus: 1000,
                    power_w: 1000.0,
                    start_s: start_cst_h * HOUR_S - CST_OFFSET_S,
                    duration_s: hours * HOUR_S,
                },
                site,
            )
            .energy_cost_milli_fen
        };
        assert_eq!(cost(2, 1), 20_000); // valley
        assert_eq!(cost(10, 1), 80_000); // peak
        assert_eq!(cost(13, 1), 50_000); // flat
                                         // 06:00–08:00: one valley hour, one flat hour.
        assert_eq!(cost(6, 2), 70_000);
        // A whole day: the profile's mean (8 × 0.4 + 6 × 1.6 + 10 × 1.0) / 24.
        let day: f64 = (8.0 * 0.4 + 6.0 * 1.6 + 10.0) / 24.0;
        assert_eq!(cost(5, 24), (24.0 * 50_000.0 * day).round() as i64);
        // Half an hour into the peak and half an hour after it.
        let half = estimate(
            Usage {
                milli_gpus: 1000,
                power_w: 1000.0,
                start_s: 11 * HOUR_S + 1800 - CST_OFFSET_S,
                duration_s: HOUR_S,
            },
            site,
        );
        assert_eq!(half.energy_cost_milli_fen, 65_000);
    }
}

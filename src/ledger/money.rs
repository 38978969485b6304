//! Money is integer fen (1 CNY = 100 fen) in `i64`; never floating point.
//!
//! Rounding rules (explicit, applied once per charge):
//! - a charge = quantity × price / unit is rounded **half up** to the fen
//!   ([`mul_div_half_up`]), computed in `i128` so it cannot overflow;
//! - a voucher's covered share of a charge is rounded **down**
//!   ([`mul_div_floor`]), so a voucher never covers more than its ratio.

/// Money in fen.
pub type Fen = i64;

/// Basis points: 10_000 = 100%.
pub const BP_ONE: i64 = 10_000;

/// `a × b / d` rounded half up (towards +∞ at .5), for non-negative inputs.
/// Saturates at `i64::MAX` rather than wrapping.
pub fn mul_div_half_up(a: i64, b: i64, d: i64) -> i64 {
    debug_assert!(d > 0);
    let n = a as i128 * b as i128;
    let q = (2 * n + d as i128).div_euclid(2 * d as i128);
    q.clamp(i64::MIN as i128, i64::MAX as i128) as i64
}

/// `a × b / d` rounded down (towards −∞).
pub fn mul_div_floor(a: i64, b: i64, d: i64) -> i64 {
    debug_assert!(d > 0);
    let q = (a as i128 * b as i128).div_euclid(d as i128);
    q.clamp(i64::MIN as i128, i64::MAX as i128) as i64
}

/// Converts a ratio in 0..=1 (as the API receives it) to basis points,
/// rounded to the nearest basis point. `None` when outside 0..=1 or NaN.
pub fn ratio_to_bp(ratio: f64) -> Option<i64> {
    if !(0.0..=1.0).contains(&ratio) {
        return None;
    }
    Some((ratio * BP_ONE as f64).round() as i64)
}

/// Formats fen as yuan with two decimals ("12.34"), exactly.
pub fn format_yuan(fen: Fen) -> String {
    let sign = if fen < 0 { "-" } else { "" };
    let abs = fen.unsigned_abs();
    format!("{sign}{}.{:02}", abs / 100, abs % 100)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn half_up_rounds_halves_up_and_rest_to_nearest() {
        assert_eq!(mul_div_half_up(1, 1, 2), 1); // 0.5 -> 1
        assert_eq!(mul_div_half_up(1, 1, 3), 0); // 0.33 -> 0
        assert_eq!(mul_div_half_up(2, 1, 3), 1); // 0.67 -> 1
        assert_eq!(mul_div_half_up(3, 1, 2), 2); // 1.5 -> 2
                                                 // one GPU (1000 milli) for 1800 s at 2500 fen/GPU-hour = 1250 fen
        assert_eq!(mul_div_half_up(1000 * 1800, 2500, 3_600_000), 1250);
    }

    #[test]
    fn floor_never_rounds_up() {
        assert_eq!(mul_div_floor(999, 5_000, BP_ONE), 499);
        assert_eq!(mul_div_floor(1000, 5_000, BP_ONE), 500);
    }

    #[test]
    fn no_overflow_on_large_products() {
        let big = i64::MAX / 2;
        assert_eq!(mul_div_floor(big, 4, 4), big);
    }

    #[test]
    fn ratio_conversion_rejects_out_of_range() {
        assert_eq!(ratio_to_bp(0.7), Some(7_000));
        assert_eq!(ratio_to_bp(1.0), Some(10_000));
        assert_eq!(ratio_to_bp(1.01), None);
        assert_eq!(ratio_to_bp(-0.1), None);
        assert_eq!(ratio_to_bp(f64::NAN), None);
    }

    #[test]
    fn yuan_formatting_is_exact() {
        assert_eq!(format_yuan(12345), "123.45");
        assert_eq!(format_yuan(-5), "-0.05");
        assert_eq!(format_yuan(0), "0.00");
    }
}

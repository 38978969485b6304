//! Voucher redemption (算力券): which vouchers pay how much of a charge. Pure.
//!
//! Rules, applied per charge in ingestion order:
//! 1. only the tenant's vouchers whose validity window contains the whole
//!    charged interval, whose regions and kinds include the charge, and whose
//!    balance is positive are eligible;
//! 2. eligible vouchers are drawn earliest expiry first (ties: earliest issue,
//!    then id);
//! 3. voucher v may bring the covered total of the charge up to
//!    `floor(gross × copay_ratio_bp(v) / 10000)` and never beyond its balance,
//!    so balances never go below zero and gross = covered + net always holds.

use super::money::{mul_div_floor, Fen, BP_ONE};
use super::types::{ChargeKind, Voucher};

/// One draw on one voucher.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Draw {
    pub voucher_id: String,
    pub fen: Fen,
}

/// The tenant's vouchers with running balances, in draw order.
#[derive(Debug, Clone, Default)]
pub struct VoucherBook {
    vouchers: Vec<Voucher>,
}

impl VoucherBook {
    pub fn new(mut vouchers: Vec<Voucher>) -> Self {
        vouchers.sort_by(|a, b| {
            (a.valid_until, a.issued_at, &a.id).cmp(&(b.valid_until, b.issued_at, &b.id))
        });
        VoucherBook { vouchers }
    }

    pub fn vouchers(&self) -> &[Voucher] {
        &self.vouchers
    }

    /// Redeems vouchers against one charge of `gross` fen and updates the
    /// running balances. Returns the draws (possibly none).
    pub fn redeem(
        &mut self,
        tenant: &str,
        kind: ChargeKind,
        region: &str,
        start_s: i64,
        end_s: i64,
        gross: Fen,
    ) -> Vec<Draw> {
        let mut draws = Vec::new();
        if gross <= 0 {
            return draws;
        }
        let mut covered: Fen = 0;
        for v in &mut self.vouchers {
            if covered >= gross {
                break;
            }
            if v.tenant != tenant || v.balance_fen <= 0 || !v.eligible(kind, region, start_s, end_s)
            {
                continue;
            }
            let cap = mul_div_floor(gross, v.copay_ratio_bp.min(BP_ONE), BP_ONE);
            let take = (cap - covered).min(v.balance_fen).min(gross - covered);
            if take <= 0 {
                continue;
            }
            v.balance_fen -= take;
            covered += take;
            draws.push(Draw {
                voucher_id: v.id.clone(),
                fen: take,
            });
        }
        draws
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::{TimeZone, Utc};
    use proptest::prelude::*;

    fn voucher(id: &str, face: Fen, bp: i64, from: i64, until: i64) -> Voucher {
        Voucher {
            id: id.into(),
            tenant: "acme".into(),
            issuer: "hangzhou".into(),
            face_value_fen: face,
            balance_fen: face,
            copay_ratio_bp: bp,
            valid_from: Utc.timestamp_opt(from, 0).unwrap(),
            valid_until: Utc.timestamp_opt(until, 0).unwrap(),
            regions: vec![],
            kinds: vec![],
            issued_at: Utc.timestamp_opt(0, 0).unwrap(),
        }
    }

    #[test]
    fn earliest_expiry_first_and_copay_caps_each_charge() {
        let mut book = VoucherBook::new(vec![
            voucher("late", 10_000, 10_000, 0, 2000),
            voucher("early", 300, 5_000, 0, 1000),
        ]);
        // gross 1000: "early" may cover 50% = 500 but has 300; "late" tops up to 100%.
        let d = book.redeem("acme", ChargeKind::Gpu, "r", 10, 20, 1000);
        assert_eq!(
            d,
            vec![
                Draw {
                    voucher_id: "early".into(),
                    fen: 300
                },
                Draw {
                    voucher_id: "late".into(),
                    fen: 700
                }
            ]
        );
    }

    #[test]
    fn copay_ratio_leaves_the_rest_payable() {
        let mut book = VoucherBook::new(vec![voucher("v", 10_000, 7_000, 0, 2000)]);
        let d = book.redeem("acme", ChargeKind::Gpu, "r", 10, 20, 999);
        assert_eq!(d[0].fen, 699); // floor(999 × 0.7)
    }

    #[test]
    fn never_outside_window_region_kind_or_tenant() {
        let mut v = voucher("v", 10_000, 10_000, 100, 200);
        v.regions = vec!["gansu".into()];
        v.kinds = vec![ChargeKind::Gpu];
        let mut book = VoucherBook::new(vec![v]);
        assert!(book
            .redeem("acme", ChargeKind::Gpu, "gansu", 50, 150, 10)
            .is_empty()); // starts before
        assert!(book
            .redeem("acme", ChargeKind::Gpu, "gansu", 150, 201, 10)
            .is_empty()); // ends after
        assert!(book
            .redeem("acme", ChargeKind::Gpu, "beijing", 150, 160, 10)
            .is_empty());
        assert!(book
            .redeem("acme", ChargeKind::Tokens, "gansu", 150, 160, 10)
            .is_empty());
        assert!(book
            .redeem("other", ChargeKind::Gpu, "gansu", 150, 160, 10)
            .is_empty());
        assert_eq!(
            book.redeem("acme", ChargeKind::Gpu, "gansu", 100, 200, 10)[0].fen,
            10
        );
    }

    proptest! {
        /// gross = covered + net, net ≥ 0, no balance below zero, no draw above
        /// its co-pay cap, and balances only fall by what was drawn.
        #[test]
        fn redemption_invariants(
            vouchers in proptest::collection::vec((1i64..5_000, 1i64..=10_000, 0i64..50, 50i64..100), 0..5),
            charges in proptest::collection::vec((0i64..3_000, 0i64..90, 1i64..20), 1..40),
        ) {
            let vs: Vec<Voucher> = vouchers.iter().enumerate()
                .map(|(i, &(face, bp, from, until))| voucher(&format!("v{i}"), face, bp, from, until))
                .collect();
            let mut book = VoucherBook::new(vs.clone());
            let mut drawn: std::collections::HashMap<String, Fen> = Default::default();
            for &(gross, start, len) in &charges {
                let draws = book.redeem("acme", ChargeKind::Gpu, "r", start, start + len, gross);
                let covered: Fen = draws.iter().map(|d| d.fen).sum();
                prop_assert!(covered >= 0 && covered <= gross);
                for d in &draws {
                    let v = vs.iter().find(|v| v.id == d.voucher_id).unwrap();
                    prop_assert!(d.fen > 0);
                    prop_assert!(d.fen <= mul_div_floor(gross, v.copay_ratio_bp, BP_ONE));
                    prop_assert!(v.eligible(ChargeKind::Gpu, "r", start, start + len));
                    *drawn.entry(d.voucher_id.clone()).or_default() += d.fen;
                }
            }
            for v in book.vouchers() {
                let face = vs.iter().find(|o| o.id == v.id).unwrap().face_value_fen;
                prop_assert!(v.balance_fen >= 0);
                prop_assert_eq!(v.balance_fen, face - drawn.get(&v.id).copied().unwrap_or(0));
            }
        }
    }
}

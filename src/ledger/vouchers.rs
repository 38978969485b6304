//! Voucher redemption (算力券): which vouchers pay how much of a charge. Pure.
//!
//! Rules, applied per charge in ingestion order:
//! 1. only the tenant's vouchers whose validity window contains the whole
//!    charged interval, whose regions and kinds include the charge, and whose
//!    balance is positive are eligible;
//! 2. eligible vouchers are drawn earliest expiry first (ties: earliest issue,
//!    then id);
//! 3. voucher v covers at most its co-pay share of the charge, taken of the
//!    running total of the charges it shared: `floor((S + gross) × bp / 10000)
//!    − floor(S × bp / 10000)` where S (`shared_gross_fen`) is the gross of
//!    the charges it shared before, so its cover over many charges is the
//!    co-pay of their sum (to the fen below) however small each is; never
//!    beyond its balance nor the rest of the charge, so balances never go
//!    below zero and gross = covered + net always holds.

use super::money::{mul_div_floor, Fen, BP_ONE};
use super::types::{ChargeKind, Tier, Voucher};

/// One draw on one voucher.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Draw {
    pub voucher_id: String,
    pub fen: Fen,
}

/// What a charge is for: which of the tenant's vouchers may pay it.
#[derive(Debug, Clone, Copy)]
pub struct Target<'a> {
    pub tenant: &'a str,
    pub kind: ChargeKind,
    pub region: &'a str,
    /// The charged interval (unix s).
    pub span: (i64, i64),
    /// (tier, model) of a token charge.
    pub token: Option<(Tier, &'a str)>,
}

/// The tenant's vouchers with running balances, in draw order.
#[derive(Debug, Clone, Default)]
pub struct VoucherBook {
    vouchers: Vec<Voucher>,
    /// Per voucher: gross of the charges it shared in this book (to add to
    /// its stored `shared_gross_fen`).
    shared: std::collections::BTreeMap<String, Fen>,
}

impl VoucherBook {
    pub fn new(mut vouchers: Vec<Voucher>) -> Self {
        vouchers.sort_by(|a, b| {
            (a.valid_until, a.issued_at, &a.id).cmp(&(b.valid_until, b.issued_at, &b.id))
        });
        VoucherBook {
            vouchers,
            shared: Default::default(),
        }
    }

    pub fn vouchers(&self) -> &[Voucher] {
        &self.vouchers
    }

    /// Per voucher, the gross of the charges it shared since the book was made.
    pub fn shared(&self) -> &std::collections::BTreeMap<String, Fen> {
        &self.shared
    }

    /// Redeems vouchers against one charge of `gross` fen and updates the
    /// running balances. Returns the draws (possibly none).
    pub fn redeem(&mut self, c: &Target<'_>, gross: Fen) -> Vec<Draw> {
        let Target {
            tenant,
            kind,
            region,
            span,
            token,
        } = *c;
        let mut draws = Vec::new();
        if gross <= 0 {
            return draws;
        }
        let mut covered: Fen = 0;
        for v in &mut self.vouchers {
            if covered >= gross {
                break;
            }
            if v.tenant != tenant || v.balance_fen <= 0 || !v.eligible(kind, region, span, token) {
                continue;
            }
            // The co-pay share of this charge: the growth of the share of
            // every charge the voucher has shared, so many small charges
            // are covered as their sum would be (never each rounded to 0).
            let bp = v.copay_ratio_bp.min(BP_ONE);
            let before = v.shared_gross_fen;
            let after = before.saturating_add(gross);
            v.shared_gross_fen = after;
            *self.shared.entry(v.id.clone()).or_default() += gross;
            let cap = mul_div_floor(after, bp, BP_ONE) - mul_div_floor(before, bp, BP_ONE);
            let take = cap.min(v.balance_fen).min(gross - covered);
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

    fn at<'a>(tenant: &'a str, kind: ChargeKind, region: &'a str, span: (i64, i64)) -> Target<'a> {
        Target {
            tenant,
            kind,
            region,
            span,
            token: None,
        }
    }

    #[test]
    fn a_model_voucher_pays_only_token_charges_of_its_tiers_and_models() {
        let mut v = voucher("m", 1_000, 10_000, 0, 1000);
        v.tiers = vec![Tier::Industry];
        v.models = vec!["qwen".into()];
        let mut book = VoucherBook::new(vec![v]);
        let tok = |tier, model| Target {
            token: Some((tier, model)),
            ..at("acme", ChargeKind::Tokens, "r", (10, 20))
        };
        assert!(book
            .redeem(&at("acme", ChargeKind::Gpu, "r", (10, 20)), 10)
            .is_empty());
        assert!(book.redeem(&tok(Tier::Basic, "qwen"), 10).is_empty());
        assert!(book.redeem(&tok(Tier::Industry, "llama"), 10).is_empty());
        assert_eq!(book.redeem(&tok(Tier::Industry, "qwen"), 10)[0].fen, 10);
    }

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
            tiers: vec![],
            models: vec![],
            issued_at: Utc.timestamp_opt(0, 0).unwrap(),
            shared_gross_fen: 0,
        }
    }

    #[test]
    fn earliest_expiry_first_and_copay_caps_each_charge() {
        let mut book = VoucherBook::new(vec![
            voucher("late", 10_000, 10_000, 0, 2000),
            voucher("early", 300, 5_000, 0, 1000),
        ]);
        // gross 1000: "early" may cover 50% = 500 but has 300; "late" tops up to 100%.
        let d = book.redeem(&at("acme", ChargeKind::Gpu, "r", (10, 20)), 1000);
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

    /// A 50% voucher over many 1-fen charges covers half their sum; taking
    /// each charge's own floor would cover none of them.
    #[test]
    fn the_copay_of_many_small_charges_is_the_copay_of_their_sum() {
        let mut book = VoucherBook::new(vec![voucher("v", 10_000, 5_000, 0, 2000)]);
        let covered: Fen = (0..1001)
            .flat_map(|_| book.redeem(&at("acme", ChargeKind::Tokens, "r", (10, 20)), 1))
            .map(|d| d.fen)
            .sum();
        assert_eq!(covered, 500);
        assert_eq!(book.shared()["v"], 1001);
    }

    #[test]
    fn copay_ratio_leaves_the_rest_payable() {
        let mut book = VoucherBook::new(vec![voucher("v", 10_000, 7_000, 0, 2000)]);
        let d = book.redeem(&at("acme", ChargeKind::Gpu, "r", (10, 20)), 999);
        assert_eq!(d[0].fen, 699); // floor(999 × 0.7)
    }

    #[test]
    fn never_outside_window_region_kind_or_tenant() {
        let mut v = voucher("v", 10_000, 10_000, 100, 200);
        v.regions = vec!["gansu".into()];
        v.kinds = vec![ChargeKind::Gpu];
        let mut book = VoucherBook::new(vec![v]);
        assert!(book
            .redeem(&at("acme", ChargeKind::Gpu, "gansu", (50, 150)), 10)
            .is_empty()); // starts before
        assert!(book
            .redeem(&at("acme", ChargeKind::Gpu, "gansu", (150, 201)), 10)
            .is_empty()); // ends after
        assert!(book
            .redeem(&at("acme", ChargeKind::Gpu, "beijing", (150, 160)), 10)
            .is_empty());
        assert!(book
            .redeem(&at("acme", ChargeKind::Tokens, "gansu", (150, 160)), 10)
            .is_empty());
        assert!(book
            .redeem(&at("other", ChargeKind::Gpu, "gansu", (150, 160)), 10)
            .is_empty());
        assert_eq!(
            book.redeem(&at("acme", ChargeKind::Gpu, "gansu", (100, 200)), 10)[0].fen,
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
                let draws = book.redeem(&at("acme", ChargeKind::Gpu, "r", (start, start + len)), gross);
                let covered: Fen = draws.iter().map(|d| d.fen).sum();
                prop_assert!(covered >= 0 && covered <= gross);
                for d in &draws {
                    let v = vs.iter().find(|v| v.id == d.voucher_id).unwrap();
                    prop_assert!(d.fen > 0);
                    // the running share can give one fen more than this
                    // charge's own floor (the fractions carried from before)
                    prop_assert!(d.fen <= mul_div_floor(gross, v.copay_ratio_bp, BP_ONE) + 1);
                    prop_assert!(v.eligible(ChargeKind::Gpu, "r", (start, start + len), None));
                    *drawn.entry(d.voucher_id.clone()).or_default() += d.fen;
                }
            }
            for v in book.vouchers() {
                let face = vs.iter().find(|o| o.id == v.id).unwrap().face_value_fen;
                prop_assert!(v.balance_fen >= 0);
                // over all charges it shared, no more than its co-pay of their sum
                let shared = book.shared().get(&v.id).copied().unwrap_or(0);
                prop_assert!(drawn.get(&v.id).copied().unwrap_or(0) <= mul_div_floor(shared, v.copay_ratio_bp, BP_ONE));
                prop_assert_eq!(v.balance_fen, face - drawn.get(&v.id).copied().unwrap_or(0));
            }
        }
    }
}

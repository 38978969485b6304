//! Batch planning: rate new records, redeem vouchers and build the journal
//! entry, all in memory. Pure: the store only writes what this returns.
//!
//! Double entry (debits positive, every entry sums to zero):
//! - charge:     `tenant:{t}` +gross, `revenue:{kind}` −gross
//! - redemption: `voucher:{id}` +draw, `tenant:{t}` −draw
//! - issue:      `grant:{issuer}` +face, `voucher:{id}` −face
//!
//! so `tenant:{t}` holds the net payable and `−voucher:{id}` the balance.
//! A batch's charges and redemptions are posted as one entry, summed per account.

use super::error::Result;
use super::money::Fen;
use super::rating::{RateBook, TokenCharge};
use super::types::{ChargeKind, MeteredTokens, MeteredUsage, Month, Tier};
use super::vouchers::{Target, VoucherBook};
use sha2::{Digest, Sha256};
use std::collections::BTreeMap;

/// A usage record with its charges.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UsageRow {
    pub usage: MeteredUsage,
    pub rate_version: i64,
    pub gpu_fen: Fen,
    pub gpu_voucher_fen: Fen,
    pub energy_fen: Fen,
    pub energy_voucher_fen: Fen,
}

/// A token record with its charge.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TokenRow {
    pub tokens: MeteredTokens,
    pub rate_version: i64,
    pub fen: Fen,
    pub voucher_fen: Fen,
    /// The record's exact price in micro-fen (`fen` is its share of the
    /// running total's whole fen).
    pub micro_fen: i64,
}

/// One voucher paying part of one charge (kept for regulators, per charge).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Redemption {
    pub record_id: String,
    pub kind: ChargeKind,
    pub voucher_id: String,
    pub tenant: String,
    pub fen: Fen,
    pub at_s: i64,
}

/// A monthly usage rollup row: what a statement reads instead of the raw rows.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct UsageKey {
    pub tenant: String,
    pub month: Month,
    pub model: String,
    pub region: String,
}

/// Sums of the usage rows under one [`UsageKey`].
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct UsageSums {
    pub records: i64,
    pub milli_gpu_s: i64,
    pub gpu_fen: Fen,
    pub gpu_voucher_fen: Fen,
    pub it_energy_j: i64,
    pub facility_j: i64,
    pub carbon_mg: i64,
    pub energy_fen: Fen,
    pub energy_voucher_fen: Fen,
}

/// A monthly token rollup row.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct TokenKey {
    pub tenant: String,
    pub month: Month,
    pub tier: Tier,
}

/// Sums of the token rows under one [`TokenKey`].
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct TokenSums {
    pub records: i64,
    pub prompt_tokens: i64,
    pub completion_tokens: i64,
    pub fen: Fen,
    pub voucher_fen: Fen,
    /// The exact price of the rows in micro-fen; the stored total carries
    /// the fractions of a fen from one record to the next.
    pub micro_fen: i64,
}

/// Micro-fen in a fen.
pub const MICRO_PER_FEN: i64 = 1_000_000;

/// A monthly redemption rollup row: (tenant, month, voucher).
pub type RedemptionKey = (String, Month, String);

/// Everything one ingestion batch writes.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct BatchPlan {
    pub usage: Vec<UsageRow>,
    pub tokens: Vec<TokenRow>,
    pub redemptions: Vec<Redemption>,
    /// Journal entry id (derived from the record ids, so a replay of the same
    /// new records gets the same id).
    pub entry_id: String,
    /// Postings of the entry, per account; they sum to zero.
    pub postings: BTreeMap<String, Fen>,
    /// Per voucher: (fen drawn, charges drawn on), for balances and the audit log.
    pub voucher_draws: BTreeMap<String, (Fen, i64)>,
    /// Monthly rollups of exactly the rows above (a record's month is the
    /// month its interval starts in), added to the stored rollups in the
    /// same transaction.
    pub usage_rollup: BTreeMap<UsageKey, UsageSums>,
    pub token_rollup: BTreeMap<TokenKey, TokenSums>,
    pub redemption_rollup: BTreeMap<RedemptionKey, Fen>,
}

impl BatchPlan {
    pub fn is_empty(&self) -> bool {
        self.usage.is_empty() && self.tokens.is_empty()
    }

    /// Posts one charge and its voucher draws; returns the covered amount.
    fn charge(&mut self, book: &mut VoucherBook, sums: &mut Sums, c: Charge<'_>) -> Fen {
        if c.gross == 0 {
            return 0;
        }
        let (start_s, _) = c.span;
        let draws = book.redeem(
            &Target {
                tenant: c.tenant,
                kind: c.kind,
                region: c.region,
                span: c.span,
                token: c.token,
            },
            c.gross,
        );
        let covered: Fen = draws.iter().map(|d| d.fen).sum();
        add(&mut sums.tenant_net, c.tenant, c.gross - covered);
        sums.revenue[c.kind as usize] -= c.gross;
        for d in draws {
            add(&mut sums.voucher, &d.voucher_id, d.fen);
            let e = self.voucher_draws.entry(d.voucher_id.clone()).or_default();
            e.0 += d.fen;
            e.1 += 1;
            self.redemptions.push(Redemption {
                record_id: c.record_id.to_string(),
                kind: c.kind,
                voucher_id: d.voucher_id,
                tenant: c.tenant.to_string(),
                fen: d.fen,
                at_s: start_s,
            });
        }
        covered
    }
}

/// One charge to post.
struct Charge<'a> {
    record_id: &'a str,
    tenant: &'a str,
    region: &'a str,
    kind: ChargeKind,
    span: (i64, i64),
    /// (tier, model) of a token charge.
    token: Option<(Tier, &'a str)>,
    gross: Fen,
}

/// Running per-account sums of a batch (keys allocated once per account).
#[derive(Default)]
struct Sums {
    tenant_net: BTreeMap<String, Fen>,
    voucher: BTreeMap<String, Fen>,
    revenue: [Fen; 3],
}

fn add(map: &mut BTreeMap<String, Fen>, key: &str, fen: Fen) {
    match map.get_mut(key) {
        Some(v) => *v += fen,
        None => {
            map.insert(key.to_string(), fen);
        }
    }
}

/// The rollup key of a token record.
pub fn token_key(t: &MeteredTokens) -> TokenKey {
    TokenKey {
        tenant: t.tenant.clone(),
        month: Month::of_s(t.start_s),
        tier: t.tier,
    }
}

/// Rates and redeems new records in the given order. `usage` / `tokens` carry
/// each record's index in the caller's batch, used to name a failing field.
///
/// A token record's charge is the growth of `floor(micro-fen / 10^6)` of its
/// (tenant, month, tier) total — `token_micro` holds the stored totals — so
/// the fen charged for a month's token records equal the price of their
/// sum (to the fen below), however finely they were cut.
pub fn plan_batch(
    usage: Vec<(usize, MeteredUsage)>,
    tokens: Vec<(usize, MeteredTokens)>,
    rates: &RateBook,
    vouchers: &mut VoucherBook,
    token_micro: &BTreeMap<TokenKey, i64>,
) -> Result<BatchPlan> {
    let mut micro_total = token_micro.clone();
    let mut plan = BatchPlan::default();
    let mut sums = Sums::default();
    let mut hasher = Sha256::new();
    for (i, u) in usage {
        let c = rates
            .rate_usage(&u)
            .map_err(|e| e.at(&format!("usage[{i}].")))?;
        hasher.update(u.id.as_bytes());
        let span = (u.start_s, u.end_s);
        let gpu_voucher_fen = plan.charge(
            vouchers,
            &mut sums,
            Charge {
                record_id: &u.id,
                tenant: &u.tenant,
                region: &u.region,
                kind: ChargeKind::Gpu,
                span,
                token: None,
                gross: c.gpu_fen,
            },
        );
        let energy_voucher_fen = plan.charge(
            vouchers,
            &mut sums,
            Charge {
                record_id: &u.id,
                tenant: &u.tenant,
                region: &u.region,
                kind: ChargeKind::Energy,
                span,
                token: None,
                gross: c.energy_fen,
            },
        );
        plan.usage.push(UsageRow {
            usage: u,
            rate_version: c.rate_version,
            gpu_fen: c.gpu_fen,
            gpu_voucher_fen,
            energy_fen: c.energy_fen,
            energy_voucher_fen,
        });
    }
    for (i, t) in tokens {
        let (rate_version, micro) = rates
            .token_micro_fen(&t)
            .map_err(|e| e.at(&format!("tokens[{i}].")))?;
        let total = micro_total.entry(token_key(&t)).or_default();
        let before = *total;
        *total = total.saturating_add(micro);
        let c = TokenCharge {
            rate_version,
            fen: total.div_euclid(MICRO_PER_FEN) - before.div_euclid(MICRO_PER_FEN),
        };
        hasher.update(t.id.as_bytes());
        let voucher_fen = plan.charge(
            vouchers,
            &mut sums,
            Charge {
                record_id: &t.id,
                tenant: &t.tenant,
                region: &t.region,
                kind: ChargeKind::Tokens,
                span: (t.start_s, t.end_s),
                token: Some((t.tier, &t.model)),
                gross: c.fen,
            },
        );
        plan.tokens.push(TokenRow {
            tokens: t,
            rate_version: c.rate_version,
            fen: c.fen,
            voucher_fen,
            micro_fen: micro,
        });
    }
    for (tenant, fen) in sums.tenant_net {
        plan.postings.insert(format!("tenant:{tenant}"), fen);
    }
    for (voucher, fen) in sums.voucher {
        plan.postings.insert(format!("voucher:{voucher}"), fen);
    }
    for kind in ChargeKind::ALL {
        plan.postings.insert(
            format!("revenue:{}", kind.as_str()),
            sums.revenue[kind as usize],
        );
    }
    plan.postings.retain(|_, v| *v != 0);
    plan.entry_id = format!("batch-{}", hex::encode(&hasher.finalize()[..16]));
    roll_up(&mut plan);
    Ok(plan)
}

/// Re-keys sums gathered under borrowed keys with owned ones.
fn owned<K, O: Ord, S>(sums: BTreeMap<K, S>, own: impl Fn(K) -> O) -> BTreeMap<O, S> {
    sums.into_iter().map(|(k, s)| (own(k), s)).collect()
}

/// Sums the batch's rows per rollup key. Keys borrow from the rows while
/// summing, so only one owned key is built per distinct key, not per row.
fn roll_up(plan: &mut BatchPlan) {
    let mut usage: BTreeMap<(&str, Month, &str, &str), UsageSums> = BTreeMap::new();
    for r in &plan.usage {
        let u = &r.usage;
        let key = (
            u.tenant.as_str(),
            Month::of_s(u.start_s),
            u.model.as_str(),
            u.region.as_str(),
        );
        let s = usage.entry(key).or_default();
        s.records += 1;
        s.milli_gpu_s += u.milli_gpu_s;
        s.gpu_fen += r.gpu_fen;
        s.gpu_voucher_fen += r.gpu_voucher_fen;
        s.it_energy_j += u.it_energy_j;
        s.facility_j += u.facility_j;
        s.carbon_mg += u.carbon_mg;
        s.energy_fen += r.energy_fen;
        s.energy_voucher_fen += r.energy_voucher_fen;
    }
    let mut tokens: BTreeMap<(&str, Month, Tier), TokenSums> = BTreeMap::new();
    for r in &plan.tokens {
        let t = &r.tokens;
        let s = tokens
            .entry((t.tenant.as_str(), Month::of_s(t.start_s), t.tier))
            .or_default();
        s.records += 1;
        s.prompt_tokens += t.prompt_tokens;
        s.completion_tokens += t.completion_tokens;
        s.fen += r.fen;
        s.voucher_fen += r.voucher_fen;
        s.micro_fen = s.micro_fen.saturating_add(r.micro_fen);
    }
    let mut redeemed: BTreeMap<(&str, Month, &str), Fen> = BTreeMap::new();
    for d in &plan.redemptions {
        *redeemed
            .entry((
                d.tenant.as_str(),
                Month::of_s(d.at_s),
                d.voucher_id.as_str(),
            ))
            .or_default() += d.fen;
    }
    plan.usage_rollup = owned(usage, |(tenant, month, model, region)| UsageKey {
        tenant: tenant.into(),
        month,
        model: model.into(),
        region: region.into(),
    });
    plan.token_rollup = owned(tokens, |(tenant, month, tier)| TokenKey {
        tenant: tenant.into(),
        month,
        tier,
    });
    plan.redemption_rollup = owned(redeemed, |(t, m, v)| (t.into(), m, v.into()));
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ledger::rating::default_rate_card;
    use crate::ledger::types::{Tier, Voucher};
    use chrono::{TimeZone, Utc};
    use proptest::prelude::*;

    fn usage(i: i64, tenant: &str, milli_gpu_s: i64) -> MeteredUsage {
        MeteredUsage {
            id: format!("u{i}"),
            source: "s".into(),
            tenant: tenant.into(),
            job: "j".into(),
            region: "gansu".into(),
            node: "n".into(),
            model: "H100".into(),
            gpu_milli: 1000,
            start_s: 1_700_000_000 + i,
            end_s: 1_700_000_001 + i,
            milli_gpu_s,
            it_energy_j: 0,
            pue_milli: 1000,
            facility_j: 0,
            green_milli: 0,
            grid_mg_per_kwh: 0,
            carbon_mg: 0,
        }
    }

    fn tokens(i: i64, tenant: &str, n: i64) -> MeteredTokens {
        MeteredTokens {
            id: format!("t{i}"),
            source: "s".into(),
            tenant: tenant.into(),
            service: "svc".into(),
            model: "qwen".into(),
            region: "gansu".into(),
            tier: Tier::HighValue,
            start_s: 1_700_000_000 + i,
            end_s: 1_700_000_001 + i,
            prompt_tokens: n,
            completion_tokens: n / 3,
        }
    }

    proptest! {
        /// Every charge: gross = covered + net with 0 ≤ covered ≤ gross; the
        /// entry balances; the tenant account holds exactly Σ net.
        #[test]
        fn batch_balances(
            amounts in proptest::collection::vec((0i64..20_000_000, 0i64..3_000_000, any::<bool>()), 1..60),
            face in 1i64..200_000,
            bp in 1i64..=10_000,
        ) {
            let v = Voucher {
                id: "v1".into(), tenant: "acme".into(), issuer: "gov".into(),
                face_value_fen: face, balance_fen: face, copay_ratio_bp: bp,
                valid_from: Utc.timestamp_opt(0, 0).unwrap(),
                valid_until: Utc.timestamp_opt(1_800_000_000, 0).unwrap(),
                regions: vec![], kinds: vec![], tiers: vec![], models: vec![], issued_at: Utc.timestamp_opt(0, 0).unwrap(), shared_gross_fen: 0,
            };
            let mut book = VoucherBook::new(vec![v]);
            let rates = RateBook::new(vec![default_rate_card()]);
            let mut us = vec![];
            let mut ts = vec![];
            for (i, &(g, n, other)) in amounts.iter().enumerate() {
                let tenant = if other { "beta" } else { "acme" };
                us.push((i, usage(i as i64, tenant, g)));
                ts.push((i, tokens(i as i64, tenant, n)));
            }
            let plan = plan_batch(us, ts, &rates, &mut book, &BTreeMap::new()).unwrap();
            prop_assert_eq!(plan.postings.values().sum::<Fen>(), 0);
            let mut net_acme = 0;
            let mut covered_total = 0;
            for r in &plan.usage {
                prop_assert!(r.gpu_voucher_fen >= 0 && r.gpu_voucher_fen <= r.gpu_fen);
                if r.usage.tenant == "acme" { net_acme += r.gpu_fen - r.gpu_voucher_fen; } else { prop_assert_eq!(r.gpu_voucher_fen, 0); }
                covered_total += r.gpu_voucher_fen;
            }
            for r in &plan.tokens {
                prop_assert!(r.voucher_fen >= 0 && r.voucher_fen <= r.fen);
                if r.tokens.tenant == "acme" { net_acme += r.fen - r.voucher_fen; }
                covered_total += r.voucher_fen;
            }
            prop_assert_eq!(plan.postings.get("tenant:acme").copied().unwrap_or(0), net_acme);
            prop_assert_eq!(plan.redemptions.iter().map(|r| r.fen).sum::<Fen>(), covered_total);
            prop_assert!(covered_total <= face);
            prop_assert_eq!(book.vouchers()[0].balance_fen, face - covered_total);
        }
    }

    /// Many small records (a call each) are charged the price of their sum,
    /// in one batch or spread over many, from any stored total; pricing each
    /// alone rounds every one of them to 0 fen.
    #[test]
    fn small_token_records_add_up_to_the_price_of_their_sum() {
        let rates = RateBook::new(vec![default_rate_card()]);
        let calls: Vec<(usize, MeteredTokens)> = (0..1000)
            .map(|i| (i as usize, tokens(i, "acme", 30)))
            .collect();
        // high_value: 1,600 fen/Mtok prompt, 4,800 completion → 30 + 10 tokens = 0.096 fen each
        assert_eq!(rates.rate_tokens(&calls[0].1).unwrap().fen, 0);
        let exact_micro: i64 = calls
            .iter()
            .map(|(_, t)| rates.token_micro_fen(t).unwrap().1)
            .sum();
        let fen_of = |plan: &BatchPlan| plan.tokens.iter().map(|r| r.fen).sum::<Fen>();
        let one = plan_batch(
            vec![],
            calls.clone(),
            &rates,
            &mut VoucherBook::default(),
            &BTreeMap::new(),
        )
        .unwrap();
        assert_eq!(fen_of(&one), exact_micro / MICRO_PER_FEN);
        assert_eq!(
            one.token_rollup.values().next().unwrap().micro_fen,
            exact_micro
        );
        // one record per batch, carrying the stored total
        let mut stored: BTreeMap<TokenKey, i64> = BTreeMap::new();
        let mut fen = 0;
        for c in calls {
            let p = plan_batch(
                vec![],
                vec![c],
                &rates,
                &mut VoucherBook::default(),
                &stored,
            )
            .unwrap();
            fen += fen_of(&p);
            for (k, s) in p.token_rollup {
                *stored.entry(k).or_default() += s.micro_fen;
            }
        }
        assert_eq!(fen, exact_micro / MICRO_PER_FEN);
    }

    #[test]
    fn entry_id_is_deterministic_and_rating_errors_name_the_record() {
        let rates = RateBook::new(vec![default_rate_card()]);
        let a = plan_batch(
            vec![(0, usage(1, "a", 10))],
            vec![],
            &rates,
            &mut VoucherBook::default(),
            &BTreeMap::new(),
        )
        .unwrap();
        let b = plan_batch(
            vec![(0, usage(1, "a", 10))],
            vec![],
            &rates,
            &mut VoucherBook::default(),
            &BTreeMap::new(),
        )
        .unwrap();
        assert_eq!(a.entry_id, b.entry_id);
        let mut early = usage(2, "a", 10);
        early.start_s = 0;
        let e = plan_batch(
            vec![(7, early)],
            vec![],
            &rates,
            &mut VoucherBook::default(),
            &BTreeMap::new(),
        )
        .unwrap_err();
        assert_eq!(e.field(), Some("usage[7].start"));
    }
}

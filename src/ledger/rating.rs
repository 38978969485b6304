//! Rating: a versioned rate card, effective from a date, turns metered usage
//! into gross charges. Pure: no I/O, no clock.
//!
//! Rules: the card in force at a record's interval start prices the whole
//! record; the most specific GPU price wins (model+region, then model+"*",
//! then "*"+region, then "*"+"*"); charges round half up to the fen.

use super::error::{LedgerError, Result};
use super::money::{mul_div_half_up, Fen};
use super::types::{MeteredTokens, MeteredUsage, Tier, J_PER_KWH};
use chrono::{NaiveDate, TimeZone, Utc};
use serde::{Deserialize, Serialize};

/// Price of one GPU-hour of `model` in `region` ("*" matches any).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GpuPrice {
    pub model: String,
    pub region: String,
    pub fen_per_gpu_hour: Fen,
}

/// Token prices of one tier, in fen per million tokens (= milli-fen per 1k tokens).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TokenPrice {
    pub tier: Tier,
    pub prompt_fen_per_mtok: Fen,
    pub completion_fen_per_mtok: Fen,
}

/// One version of the rate card.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RateCard {
    /// Strictly increasing across versions.
    pub version: i64,
    /// In force from 00:00 UTC of this date until the next version's date.
    pub effective_from: NaiveDate,
    pub gpu: Vec<GpuPrice>,
    /// One entry per tier; every tier must be priced.
    pub tokens: Vec<TokenPrice>,
    /// Price per facility kWh; 0 = energy is not billed separately.
    #[serde(default)]
    pub energy_fen_per_kwh: Fen,
}

/// The gross charges of one usage record.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct UsageCharge {
    pub rate_version: i64,
    pub gpu_fen: Fen,
    pub energy_fen: Fen,
}

/// The gross charge of one token record.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TokenCharge {
    pub rate_version: i64,
    pub fen: Fen,
}

impl RateCard {
    pub fn effective_from_s(&self) -> i64 {
        Utc.from_utc_datetime(&self.effective_from.and_hms_opt(0, 0, 0).expect("midnight"))
            .timestamp()
    }

    /// Checks the card on its own: non-negative prices, every tier priced once,
    /// no duplicate GPU price, at least one GPU price.
    pub fn validate(&self) -> Result<()> {
        if self.version <= 0 {
            return Err(LedgerError::invalid(
                "version",
                "must be a positive integer",
            ));
        }
        if self.gpu.is_empty() {
            return Err(LedgerError::invalid(
                "gpu",
                "a rate card needs at least one GPU price (use model \"*\" and region \"*\" for a default)",
            ));
        }
        for (i, p) in self.gpu.iter().enumerate() {
            if p.model.is_empty() || p.region.is_empty() {
                return Err(LedgerError::invalid(
                    format!("gpu[{i}]"),
                    "model and region must be set (\"*\" for any)",
                ));
            }
            if p.fen_per_gpu_hour < 0 {
                return Err(LedgerError::invalid(
                    format!("gpu[{i}].fen_per_gpu_hour"),
                    "must not be negative",
                ));
            }
            if self.gpu[..i]
                .iter()
                .any(|q| q.model == p.model && q.region == p.region)
            {
                return Err(LedgerError::invalid(
                    format!("gpu[{i}]"),
                    format!(
                        "duplicate price for model {} in region {}",
                        p.model, p.region
                    ),
                ));
            }
        }
        for tier in Tier::ALL {
            let n = self.tokens.iter().filter(|p| p.tier == tier).count();
            if n != 1 {
                return Err(LedgerError::invalid(
                    "tokens",
                    format!(
                        "tier {tier} must be priced exactly once (found {n}); the card has a gap"
                    ),
                ));
            }
        }
        for (i, p) in self.tokens.iter().enumerate() {
            if p.prompt_fen_per_mtok < 0 || p.completion_fen_per_mtok < 0 {
                return Err(LedgerError::invalid(
                    format!("tokens[{i}]"),
                    "prices must not be negative",
                ));
            }
        }
        if self.energy_fen_per_kwh < 0 {
            return Err(LedgerError::invalid(
                "energy_fen_per_kwh",
                "must not be negative",
            ));
        }
        Ok(())
    }

    fn gpu_price(&self, model: &str, region: &str) -> Option<Fen> {
        let find = |m: &str, r: &str| {
            self.gpu
                .iter()
                .find(|p| p.model == m && p.region == r)
                .map(|p| p.fen_per_gpu_hour)
        };
        find(model, region)
            .or_else(|| find(model, "*"))
            .or_else(|| find("*", region))
            .or_else(|| find("*", "*"))
    }

    fn token_price(&self, tier: Tier) -> &TokenPrice {
        self.tokens
            .iter()
            .find(|p| p.tier == tier)
            .expect("validated: every tier priced")
    }

    /// Every (model, region) this card prices, explicitly or by wildcard.
    fn covers(&self, model: &str, region: &str) -> bool {
        self.gpu_price(model, region).is_some()
    }
}

/// All versions of the rate card, ordered by version.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RateBook {
    cards: Vec<RateCard>,
}

impl RateBook {
    /// Builds a book from stored versions (already checked when added).
    pub fn new(mut cards: Vec<RateCard>) -> Self {
        cards.sort_by_key(|c| c.version);
        RateBook { cards }
    }

    pub fn cards(&self) -> &[RateCard] {
        &self.cards
    }

    /// Checks that `card` may follow the current versions: valid on its own,
    /// a higher version, a later effective date, and no gap: every model/region
    /// the previous version priced is still priced.
    pub fn check_next(&self, card: &RateCard) -> Result<()> {
        card.validate()?;
        if let Some(last) = self.cards.last() {
            if card.version <= last.version {
                return Err(LedgerError::invalid(
                    "version",
                    format!(
                        "{} must be greater than the current version {}",
                        card.version, last.version
                    ),
                ));
            }
            if card.effective_from <= last.effective_from {
                return Err(LedgerError::invalid(
                    "effective_from",
                    format!(
                        "{} must be after version {}'s effective_from {} (cards never rewrite the past)",
                        card.effective_from, last.version, last.effective_from
                    ),
                ));
            }
            for p in &last.gpu {
                if !card.covers(&p.model, &p.region) {
                    return Err(LedgerError::invalid(
                        "gpu",
                        format!(
                            "gap: model {} in region {} is priced by version {} but not by version {}; add a price or a \"*\" default",
                            p.model, p.region, last.version, card.version
                        ),
                    ));
                }
            }
        }
        Ok(())
    }

    /// The card in force at `t_s` (unix seconds).
    pub fn at(&self, t_s: i64) -> Result<&RateCard> {
        self.cards
            .iter()
            .rev()
            .find(|c| c.effective_from_s() <= t_s)
            .ok_or_else(|| {
                LedgerError::invalid(
                    "start",
                    match self.cards.first() {
                        Some(c) => format!(
                            "no rate card is in force at {}: the first takes effect {}",
                            Utc.timestamp_opt(t_s, 0)
                                .single()
                                .map(|d| d.to_rfc3339())
                                .unwrap_or_default(),
                            c.effective_from
                        ),
                        None => {
                            "no rate card is defined; add one before ingesting usage".to_string()
                        }
                    },
                )
            })
    }

    /// Gross charges of a usage record.
    pub fn rate_usage(&self, u: &MeteredUsage) -> Result<UsageCharge> {
        let card = self.at(u.start_s)?;
        let price = card.gpu_price(&u.model, &u.region).ok_or_else(|| {
            LedgerError::invalid(
                "model",
                format!(
                    "rate card version {} has no price for model {} in region {}",
                    card.version, u.model, u.region
                ),
            )
        })?;
        Ok(UsageCharge {
            rate_version: card.version,
            // milli-GPU-seconds × fen per GPU-hour / (1000 × 3600)
            gpu_fen: mul_div_half_up(u.milli_gpu_s, price, 3_600_000),
            energy_fen: mul_div_half_up(u.facility_j, card.energy_fen_per_kwh, J_PER_KWH),
        })
    }

    /// Gross charge of a token record (prompt and completion priced separately,
    /// summed exactly, rounded once).
    /// The exact price of a token record in micro-fen (tokens × fen per
    /// million tokens), with the card's version. Ingestion turns these into
    /// fen per (tenant, month, tier) so that small records (one call each)
    /// add up to the price of their sum, never rounding each to nothing.
    pub fn token_micro_fen(&self, t: &MeteredTokens) -> Result<(i64, i64)> {
        let card = self.at(t.start_s)?;
        let p = card.token_price(t.tier);
        let micro = t.prompt_tokens as i128 * p.prompt_fen_per_mtok as i128
            + t.completion_tokens as i128 * p.completion_fen_per_mtok as i128;
        Ok((card.version, micro.min(i64::MAX as i128) as i64))
    }

    /// One token record priced alone (rounded half up to the fen): how
    /// versions before the running carry priced them.
    pub fn rate_tokens(&self, t: &MeteredTokens) -> Result<TokenCharge> {
        let card = self.at(t.start_s)?;
        let p = card.token_price(t.tier);
        let num = t.prompt_tokens as i128 * p.prompt_fen_per_mtok as i128
            + t.completion_tokens as i128 * p.completion_fen_per_mtok as i128;
        let fen = ((2 * num + 1_000_000) / 2_000_000).min(i64::MAX as i128) as i64;
        Ok(TokenCharge {
            rate_version: card.version,
            fen,
        })
    }
}

/// A reasonable default card (version 1, from 2020-01-01), so an embedded
/// demo works out of the box. Operators replace it with their own.
pub fn default_rate_card() -> RateCard {
    let gpu = |model: &str, region: &str, yuan: i64| GpuPrice {
        model: model.into(),
        region: region.into(),
        fen_per_gpu_hour: yuan * 100,
    };
    RateCard {
        version: 1,
        effective_from: NaiveDate::from_ymd_opt(2020, 1, 1).expect("date"),
        gpu: vec![
            gpu("*", "*", 10),
            gpu("H100", "*", 25),
            gpu("H800", "*", 22),
            gpu("A100", "*", 15),
            gpu("A800", "*", 14),
            // The V100's 16 and 32 GB boards are named apart (the openb
            // trace, the shipped catalog): the V100 price applies to both.
            gpu("V100", "*", 6),
            gpu("V100M16", "*", 6),
            gpu("V100M32", "*", 6),
            gpu("T4", "*", 3),
        ],
        tokens: vec![
            TokenPrice {
                tier: Tier::Basic,
                prompt_fen_per_mtok: 80,
                completion_fen_per_mtok: 200,
            },
            TokenPrice {
                tier: Tier::Industry,
                prompt_fen_per_mtok: 400,
                completion_fen_per_mtok: 1_200,
            },
            TokenPrice {
                tier: Tier::HighValue,
                prompt_fen_per_mtok: 1_600,
                completion_fen_per_mtok: 4_800,
            },
        ],
        energy_fen_per_kwh: 0,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn metered(model: &str, region: &str, start_s: i64, milli_gpu_s: i64) -> MeteredUsage {
        MeteredUsage {
            id: "x".into(),
            source: "s".into(),
            tenant: "t".into(),
            job: "j".into(),
            region: region.into(),
            node: "n".into(),
            model: model.into(),
            gpu_milli: 1000,
            start_s,
            end_s: start_s + 1,
            milli_gpu_s,
            it_energy_j: 0,
            pue_milli: 1000,
            facility_j: 7_200_000,
            green_milli: 0,
            grid_mg_per_kwh: 0,
            carbon_mg: 0,
        }
    }

    #[test]
    fn most_specific_price_wins_and_rounds_half_up() {
        let mut card = default_rate_card();
        card.gpu.push(GpuPrice {
            model: "H100".into(),
            region: "gansu".into(),
            fen_per_gpu_hour: 2001,
        });
        card.energy_fen_per_kwh = 50;
        let book = RateBook::new(vec![card]);
        // half a GPU-hour of H100 in gansu: 1000.5 fen -> 1001
        let c = book
            .rate_usage(&metered("H100", "gansu", 1_700_000_000, 1_800_000))
            .unwrap();
        assert_eq!(c.gpu_fen, 1001);
        assert_eq!(c.energy_fen, 100); // 2 kWh × 50
        let c = book
            .rate_usage(&metered("H100", "beijing", 1_700_000_000, 3_600_000))
            .unwrap();
        assert_eq!(c.gpu_fen, 2500);
        let c = book
            .rate_usage(&metered("MI300", "x", 1_700_000_000, 3_600_000))
            .unwrap();
        assert_eq!(c.gpu_fen, 1000);
    }

    #[test]
    fn the_default_v100_price_covers_the_16_and_32_gb_boards() {
        let book = RateBook::new(vec![default_rate_card()]);
        for model in ["V100", "V100M16", "V100M32"] {
            let c = book
                .rate_usage(&metered(model, "x", 1_700_000_000, 3_600_000))
                .unwrap();
            assert_eq!(c.gpu_fen, 600, "{model}: 6 CNY per GPU-hour");
        }
    }

    #[test]
    fn version_in_force_at_start_prices_the_record() {
        let v1 = default_rate_card();
        let mut v2 = default_rate_card();
        v2.version = 2;
        v2.effective_from = NaiveDate::from_ymd_opt(2026, 11, 1).unwrap();
        for p in &mut v2.gpu {
            p.fen_per_gpu_hour *= 2;
        }
        let book = RateBook::new(vec![v2.clone(), v1.clone()]);
        let before = v2.effective_from_s() - 1;
        assert_eq!(
            book.rate_usage(&metered("T4", "r", before, 3_600_000))
                .unwrap()
                .gpu_fen,
            300
        );
        let c = book
            .rate_usage(&metered("T4", "r", before + 1, 3_600_000))
            .unwrap();
        assert_eq!((c.gpu_fen, c.rate_version), (600, 2));
        let early = v1.effective_from_s() - 1;
        assert_eq!(
            book.rate_usage(&metered("T4", "r", early, 1))
                .unwrap_err()
                .field(),
            Some("start")
        );
    }

    #[test]
    fn gaps_and_bad_versions_are_rejected_with_the_field() {
        let book = RateBook::new(vec![default_rate_card()]);
        let mut next = default_rate_card();
        next.version = 2;
        next.effective_from = NaiveDate::from_ymd_opt(2026, 1, 1).unwrap();
        assert!(book.check_next(&next).is_ok());
        let mut gap = next.clone();
        gap.gpu.retain(|p| p.model != "*");
        assert_eq!(book.check_next(&gap).unwrap_err().field(), Some("gpu"));
        let mut tier_gap = next.clone();
        tier_gap.tokens.pop();
        assert_eq!(
            book.check_next(&tier_gap).unwrap_err().field(),
            Some("tokens")
        );
        let mut old = next.clone();
        old.version = 1;
        assert_eq!(book.check_next(&old).unwrap_err().field(), Some("version"));
        let mut past = next.clone();
        past.effective_from = NaiveDate::from_ymd_opt(2019, 1, 1).unwrap();
        assert_eq!(
            book.check_next(&past).unwrap_err().field(),
            Some("effective_from")
        );
        let mut neg = next;
        neg.gpu[0].fen_per_gpu_hour = -1;
        assert_eq!(
            book.check_next(&neg).unwrap_err().field(),
            Some("gpu[0].fen_per_gpu_hour")
        );
    }

    #[test]
    fn tokens_price_prompt_and_completion_separately() {
        let book = RateBook::new(vec![default_rate_card()]);
        let t = MeteredTokens {
            id: "i".into(),
            source: "s".into(),
            tenant: "t".into(),
            service: "svc".into(),
            model: "qwen".into(),
            region: "r".into(),
            tier: Tier::Industry,
            start_s: 1_700_000_000,
            end_s: 1_700_000_060,
            prompt_tokens: 1_000_000,
            completion_tokens: 500_000,
        };
        // 1M × 400 + 0.5M × 1200 = 400 + 600 fen
        assert_eq!(book.rate_tokens(&t).unwrap().fen, 1000);
    }
}

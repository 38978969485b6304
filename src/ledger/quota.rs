//! A tenant's limits: the one quota type. Set through the API and stored in
//! the ledger, projected onto a cluster as a TenantQuota (the same limits,
//! camelCase), enforced by the scheduler (`schedule::quota`: GPUs, monthly
//! GPU-hours and tokens, the guarantee and borrowing) and, for tokens, by
//! the gateway.
//!
//! The stored and accepted JSON is read through [`QuotaBody`], which also
//! takes the shape written before one type existed (`gpu_hours_per_month`
//! and `tokens_per_month` as one number, `tokens_per_month_by_tier`,
//! `guaranteed_share` / `borrowable_share`): ledgers and journals written
//! then read back as the limits they meant.

use std::collections::BTreeMap;
use std::fmt;

use serde::de::{self, Deserializer, MapAccess, Visitor};
use serde::{Deserialize, Serialize};

use super::error::{LedgerError, Result};
use super::types::{text_field, Tier};

/// The key of a limit on every model (or every tier) together.
pub const ANY: &str = "*";

/// A tenant's limits; every absent limit is unlimited.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(try_from = "QuotaBody")]
pub struct Quota {
    /// Most GPUs held at once per accelerator model (`*` = all models
    /// together); shares add up in milli-GPU.
    pub gpus: BTreeMap<String, i64>,
    /// GPU-hours per calendar month (UTC) per accelerator model; `*` = all.
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    pub gpu_hours_per_month: BTreeMap<String, i64>,
    /// Tokens (prompt + completion) per calendar month per price tier
    /// (`basic`, `industry`, `high_value`); `*` = all tiers together.
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    pub tokens_per_month: BTreeMap<String, i64>,
    /// GPUs guaranteed under contention: never preempted, and the tenant's
    /// fair-share weight.
    pub guaranteed_gpus: i64,
    /// May use idle capacity beyond `guaranteed_gpus` (up to `gpus`); what
    /// it borrows may be preempted.
    pub borrowable: bool,
}

impl Default for Quota {
    /// Unlimited, nothing guaranteed, borrowing allowed (same as `{}`).
    fn default() -> Self {
        Quota {
            gpus: BTreeMap::new(),
            gpu_hours_per_month: BTreeMap::new(),
            tokens_per_month: BTreeMap::new(),
            guaranteed_gpus: 0,
            borrowable: true,
        }
    }
}

/// Most GPUs a quota may name for one model (far beyond any cluster).
pub const MAX_QUOTA_GPUS: i64 = 10_000_000;
/// Most GPU-hours a monthly limit may name (a month of `MAX_QUOTA_GPUS`
/// is 7.4e9; this leaves room and keeps milli-GPU-seconds within i64).
pub const MAX_QUOTA_GPU_HOURS: i64 = 1_000_000_000_000;

impl Quota {
    /// The monthly GPU-hour limit on all models together, if any.
    pub fn gpu_hours_any(&self) -> Option<i64> {
        self.gpu_hours_per_month.get(ANY).copied()
    }

    /// The monthly token limit of `tier` alone, if any.
    pub fn tokens_of(&self, tier: Tier) -> Option<i64> {
        self.tokens_per_month.get(tier.as_str()).copied()
    }

    /// The monthly token limit on all tiers together, if any.
    pub fn tokens_any(&self) -> Option<i64> {
        self.tokens_per_month.get(ANY).copied()
    }

    /// Refuses what no scheduler could enforce, naming the field.
    pub fn validate(&self) -> Result<()> {
        for (model, &n) in &self.gpus {
            text_field("gpus", model)?;
            bounded(
                &format!("gpus.{model}"),
                n,
                MAX_QUOTA_GPUS,
                "GPUs; give the limit in whole GPUs",
            )?;
        }
        for (model, &h) in &self.gpu_hours_per_month {
            text_field("gpu_hours_per_month", model)?;
            bounded(
                &format!("gpu_hours_per_month.{model}"),
                h,
                MAX_QUOTA_GPU_HOURS,
                "GPU-hours",
            )?;
        }
        for (tier, &n) in &self.tokens_per_month {
            if tier != ANY && Tier::parse(tier).is_none() {
                return Err(LedgerError::invalid(
                    format!("tokens_per_month.{tier}"),
                    "is not a tier; use basic, industry, high_value or * (all tiers)",
                ));
            }
            bounded(&format!("tokens_per_month.{tier}"), n, i64::MAX, "tokens")?;
        }
        if self.guaranteed_gpus < 0 {
            return Err(LedgerError::invalid(
                "guaranteed_gpus",
                format!("{} must not be negative", self.guaranteed_gpus),
            ));
        }
        if self.guaranteed_gpus > MAX_QUOTA_GPUS {
            return Err(LedgerError::invalid(
                "guaranteed_gpus",
                format!(
                    "{} is more than {MAX_QUOTA_GPUS} GPUs",
                    self.guaranteed_gpus
                ),
            ));
        }
        Ok(())
    }
}

fn bounded(field: &str, n: i64, max: i64, unit: &str) -> Result<()> {
    if n < 0 {
        return Err(LedgerError::invalid(
            field,
            format!("{n} must not be negative"),
        ));
    }
    if n > max {
        return Err(LedgerError::invalid(
            field,
            format!("{n} is more than {max} {unit}, at most {max}; leave it out for no limit"),
        ));
    }
    Ok(())
}

/// The quota as written: the current shape, or the one before it (see the
/// module). Unknown fields are refused.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct QuotaBody {
    #[serde(default)]
    gpus: BTreeMap<String, i64>,
    #[serde(default)]
    gpu_hours_per_month: Option<Limits>,
    #[serde(default)]
    tokens_per_month: Option<Limits>,
    #[serde(default)]
    guaranteed_gpus: Option<i64>,
    #[serde(default)]
    borrowable: Option<bool>,
    /// Before: tokens per tier beside `tokens_per_month`.
    #[serde(default)]
    tokens_per_month_by_tier: BTreeMap<Tier, i64>,
    /// Before: the guaranteed share of `gpus.*`, 0..=1 (absent: 1).
    #[serde(default)]
    guaranteed_share: Option<Share>,
    /// Before: a share of `gpus` that may be borrowed, 0..=1.
    #[serde(default)]
    borrowable_share: Option<Share>,
}

impl TryFrom<QuotaBody> for Quota {
    type Error = String;

    fn try_from(b: QuotaBody) -> std::result::Result<Self, String> {
        let legacy = b.guaranteed_share.is_some() || b.borrowable_share.is_some();
        if legacy && (b.guaranteed_gpus.is_some() || b.borrowable.is_some()) {
            return Err("guaranteed_share: give guaranteed_gpus and borrowable, or the older guaranteed_share and borrowable_share, not both".into());
        }
        let mut tokens_per_month = b.tokens_per_month.map(|l| l.0).unwrap_or_default();
        for (tier, n) in b.tokens_per_month_by_tier {
            if tokens_per_month
                .insert(tier.as_str().to_string(), n)
                .is_some()
            {
                return Err(format!(
                    "tokens_per_month_by_tier: tier {tier} is also in tokens_per_month; give it once, in tokens_per_month"
                ));
            }
        }
        let (guaranteed_gpus, borrowable) = if legacy {
            // As the scheduler read the shares: the guaranteed share of the
            // all-model limit, and borrowing whenever any share may be.
            let g = b.guaranteed_share.map_or(1.0, |s| s.0);
            let b_share = b.borrowable_share.map_or(0.0, |s| s.0);
            let any = b.gpus.get(ANY).copied().unwrap_or(0).max(0);
            ((any as f64 * g).floor() as i64, b_share > 0.0 || g >= 1.0)
        } else {
            (b.guaranteed_gpus.unwrap_or(0), b.borrowable.unwrap_or(true))
        };
        Ok(Quota {
            gpus: b.gpus,
            gpu_hours_per_month: b.gpu_hours_per_month.map(|l| l.0).unwrap_or_default(),
            tokens_per_month,
            guaranteed_gpus,
            borrowable,
        })
    }
}

/// A share in 0..=1 (the older shape's fields).
struct Share(f64);

impl<'de> Deserialize<'de> for Share {
    fn deserialize<D: Deserializer<'de>>(d: D) -> std::result::Result<Self, D::Error> {
        let v = f64::deserialize(d)?;
        if (0.0..=1.0).contains(&v) {
            Ok(Share(v))
        } else {
            Err(de::Error::custom(format!("{v} is outside 0..=1")))
        }
    }
}

/// A monthly limit map; one number is the limit on everything (`*`).
struct Limits(BTreeMap<String, i64>);

impl<'de> Deserialize<'de> for Limits {
    fn deserialize<D: Deserializer<'de>>(d: D) -> std::result::Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = Limits;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a map of model or tier (or \"*\") to a whole number, or one whole number for \"*\"")
            }
            fn visit_i64<E: de::Error>(self, n: i64) -> std::result::Result<Limits, E> {
                Ok(Limits(BTreeMap::from([(ANY.to_string(), n)])))
            }
            fn visit_u64<E: de::Error>(self, n: u64) -> std::result::Result<Limits, E> {
                let n = i64::try_from(n).map_err(|_| E::custom(format!("{n} is too large")))?;
                self.visit_i64(n)
            }
            fn visit_map<A: MapAccess<'de>>(
                self,
                mut m: A,
            ) -> std::result::Result<Limits, A::Error> {
                let mut out = BTreeMap::new();
                while let Some((k, v)) = m.next_entry::<String, i64>()? {
                    out.insert(k, v);
                }
                Ok(Limits(out))
            }
        }
        d.deserialize_any(V)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn read(v: serde_json::Value) -> std::result::Result<Quota, String> {
        serde_json::from_value(v).map_err(|e| e.to_string())
    }

    /// A limit that would wrap around when counted in milli-GPU is refused,
    /// naming the field (once, 18446744073709552 GPUs became 0.384).
    #[test]
    fn a_quota_too_large_to_count_is_refused_naming_the_field() {
        let q = |n: i64| Quota {
            gpus: [(ANY.to_string(), n)].into(),
            ..Quota::default()
        };
        let e = q(18_446_744_073_709_552)
            .validate()
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("gpus.*") && e.contains("at most 10000000"),
            "{e}"
        );
        q(MAX_QUOTA_GPUS).validate().unwrap();
        let hours = Quota {
            gpu_hours_per_month: [(ANY.to_string(), i64::MAX)].into(),
            ..Quota::default()
        };
        let e = hours.validate().unwrap_err().to_string();
        assert!(e.contains("gpu_hours_per_month.*"), "{e}");
        let tier = read(json!({"tokens_per_month": {"premium": 5}})).unwrap();
        let e = tier.validate().unwrap_err().to_string();
        assert!(
            e.contains("tokens_per_month.premium") && e.contains("high_value"),
            "{e}"
        );
    }

    /// What the API wrote before one quota type existed reads back as the
    /// limits the scheduler enforced for it, and is written in the one shape.
    #[test]
    fn the_older_shape_reads_as_the_limits_it_meant() {
        let old = read(json!({
            "gpus": {"*": 10, "H100": 4},
            "gpu_hours_per_month": 100,
            "tokens_per_month": 1000,
            "tokens_per_month_by_tier": {"high_value": 5},
            "guaranteed_share": 0.5,
            "borrowable_share": 0.5
        }))
        .unwrap();
        assert_eq!(old.gpu_hours_per_month, BTreeMap::from([("*".into(), 100)]));
        assert_eq!(
            old.tokens_per_month,
            BTreeMap::from([("*".into(), 1000), ("high_value".into(), 5)])
        );
        assert_eq!((old.guaranteed_gpus, old.borrowable), (5, true));
        // Stored before with the defaults written out: fully guaranteed.
        let full =
            read(json!({"gpus": {"*": 8}, "guaranteed_share": 1.0, "borrowable_share": 0.0}))
                .unwrap();
        assert_eq!((full.guaranteed_gpus, full.borrowable), (8, true));
        let strict =
            read(json!({"gpus": {"*": 8}, "guaranteed_share": 0.25, "borrowable_share": 0.0}))
                .unwrap();
        assert_eq!((strict.guaranteed_gpus, strict.borrowable), (2, false));
        let again = read(serde_json::to_value(&old).unwrap()).unwrap();
        assert_eq!(again, old);
        let written = serde_json::to_value(&old).unwrap();
        assert!(written.get("guaranteed_share").is_none(), "{written}");
    }

    #[test]
    fn bad_bodies_name_their_field() {
        for (body, field) in [
            (json!({"guaranteed_share": 1.5}), "outside 0..=1"),
            (
                json!({"tokens_per_month": "lots"}),
                "a map of model or tier",
            ),
            (
                json!({"guaranteed_gpus": 2, "guaranteed_share": 0.5}),
                "not both",
            ),
            (
                json!({"tokens_per_month": {"basic": 1}, "tokens_per_month_by_tier": {"basic": 2}}),
                "give it once",
            ),
            (json!({"max": 3}), "unknown field `max`"),
        ] {
            let e = read(body.clone()).unwrap_err();
            assert!(e.contains(field), "{body}: {e}");
        }
        assert_eq!(read(json!({})).unwrap(), Quota::default());
    }
}

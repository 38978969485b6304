//! Month-to-date use per tenant, for the monthly limits of TenantQuotas
//! (`gpuHoursPerMonth`, `tokensPerMonth`). The controller reads it through
//! [`UsageSource`] (the ledger in production, fixed numbers in tests) and
//! puts it in the snapshot; admission ([`crate::schedule`]) stays pure.

use std::collections::BTreeMap;

use crate::ledger::{Ledger, LedgerError, Month};

use super::snapshot::MonthToDate;

/// Where month-to-date use comes from.
pub trait UsageSource: Send + Sync {
    /// `tenant`'s own use in the calendar month (UTC) containing `now` (unix s).
    fn month_to_date(&self, tenant: &str, now: i64) -> anyhow::Result<MonthToDate>;
}

/// Fixed numbers (tests, or a cluster without a ledger: none).
#[derive(Clone, Debug, Default)]
pub struct FixedUsage(pub BTreeMap<String, MonthToDate>);

impl UsageSource for FixedUsage {
    fn month_to_date(&self, tenant: &str, _now: i64) -> anyhow::Result<MonthToDate> {
        Ok(self.0.get(tenant).cloned().unwrap_or_default())
    }
}

/// A statement's lines as month-to-date use: GPU time per model (summed over
/// regions), tokens per tier (prompt + completion).
pub fn from_statement(st: &crate::ledger::Statement) -> MonthToDate {
    let mut out = MonthToDate::default();
    for g in &st.gpu {
        *out.milli_gpu_s.entry(g.model.clone()).or_default() += g.milli_gpu_seconds;
    }
    for t in &st.tokens {
        *out.tokens.entry(t.tier.clone()).or_default() += t.prompt_tokens + t.completion_tokens;
    }
    out
}

impl UsageSource for Ledger {
    fn month_to_date(&self, tenant: &str, now: i64) -> anyhow::Result<MonthToDate> {
        let at = chrono::DateTime::from_timestamp(now, 0).unwrap_or_default();
        match self.statement(tenant, Month::of(at)) {
            Ok(st) => Ok(from_statement(&st)),
            // Never metered: nothing used.
            Err(LedgerError::UnknownTenant(_)) => Ok(MonthToDate::default()),
            Err(e) => Err(e.into()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ledger::{Tier, TokenRecord, UsageRecord};
    use chrono::{TimeZone, Utc};

    fn usage(model: &str, gpu_milli: i64, hours: i64) -> UsageRecord {
        let start = Utc.with_ymd_and_hms(2026, 11, 3, 8, 0, 0).unwrap();
        UsageRecord {
            source: format!("pod-{model}"),
            tenant: "acme".into(),
            job: "ml/train".into(),
            region: "zhongwei".into(),
            node: "n1".into(),
            model: model.into(),
            gpu_milli,
            start,
            end: start + chrono::Duration::hours(hours),
            it_energy_j: 1_000_000,
            pue: 1.2,
            green_share: 0.5,
            grid_kg_per_kwh: 0.57,
        }
    }

    #[test]
    fn the_ledger_gives_gpu_time_per_model_and_tokens_per_tier() {
        let ledger = Ledger::open(":memory:").unwrap();
        ledger.ensure_rate_card("test").unwrap();
        ledger.create_tenant("admin", "acme", None).unwrap();
        let start = Utc.with_ymd_and_hms(2026, 11, 3, 8, 0, 0).unwrap();
        let tokens = TokenRecord {
            source: "svc-0".into(),
            tenant: "acme".into(),
            service: "ml/chat".into(),
            model: "qwen".into(),
            region: "zhongwei".into(),
            tier: Tier::Basic,
            start,
            end: start + chrono::Duration::minutes(1),
            prompt_tokens: 1000,
            completion_tokens: 500,
        };
        // 2 H100 for 1 h, and half an A100 for 2 h.
        ledger
            .ingest(&[usage("H100", 2000, 1), usage("A100", 500, 2)], &[tokens])
            .unwrap();
        let now = Utc
            .with_ymd_and_hms(2026, 11, 20, 0, 0, 0)
            .unwrap()
            .timestamp();
        let used = ledger.month_to_date("acme", now).unwrap();
        // 2000 milli × 3600 s and 500 milli × 7200 s.
        assert_eq!(used.milli_gpu_s["H100"], 7_200_000);
        assert_eq!(used.milli_gpu_s["A100"], 3_600_000);
        assert_eq!(used.tokens.values().sum::<i64>(), 1500);
        assert_eq!(used.tokens.len(), 1);
        // Next month starts from nothing.
        let december = Utc
            .with_ymd_and_hms(2026, 12, 1, 0, 0, 0)
            .unwrap()
            .timestamp();
        assert_eq!(
            ledger.month_to_date("acme", december).unwrap(),
            MonthToDate::default()
        );
    }

    #[test]
    fn an_unmetered_tenant_has_used_nothing() {
        let ledger = Ledger::open(":memory:").unwrap();
        let used = ledger.month_to_date("nobody", 1_700_000_000).unwrap();
        assert_eq!(used, MonthToDate::default());
    }
}

//! A month's totals so far, by tenant and by region, from the monthly
//! rollups (kept with every ingest, so exact and cheap at any size): the
//! operator page's current values. Unlike `/metrics`' counters, which count
//! from the process's start, these survive restarts and leader changes and
//! agree with the statements.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use super::error::Result;
use super::money::Fen;
use super::sql::Val;
use super::store::Ledger;
use super::types::Month;

/// One tenant's month so far.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct TenantMonth {
    pub tenant: String,
    /// GPU time, milli-GPU-seconds (3,600,000 = one GPU-hour).
    pub milli_gpu_s: i64,
    /// Charges (GPU, energy, tokens) before vouchers.
    pub gross_fen: Fen,
    /// What vouchers paid of them.
    pub voucher_fen: Fen,
    /// What the tenant owes: gross less vouchers.
    pub net_fen: Fen,
    /// Prompt + completion tokens by price tier.
    pub tokens: BTreeMap<String, i64>,
}

/// One region's month so far (every tenant together).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct RegionMonth {
    pub region: String,
    pub milli_gpu_s: i64,
    /// Facility energy (IT energy × PUE), joules.
    pub facility_j: i64,
    /// Carbon of that energy, milligrams CO₂.
    pub carbon_mg: i64,
}

/// A month's totals: tenants by name, regions by name.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct MonthTotals {
    pub tenants: Vec<TenantMonth>,
    pub regions: Vec<RegionMonth>,
}

impl Ledger {
    /// Every tenant's and region's totals of `month` (records starting in
    /// it), from the rollups; tenants and regions without records left out.
    pub fn month_totals(&self, month: Month) -> Result<MonthTotals> {
        let key = month.to_string();
        let (by_tenant, by_region, tokens) = self.read(|tx| {
            let by_tenant = tx.rows(
                "SELECT tenant, CAST(SUM(milli_gpu_s) AS BIGINT), CAST(SUM(gpu_fen + energy_fen) AS BIGINT), \
                 CAST(SUM(gpu_voucher_fen + energy_voucher_fen) AS BIGINT) \
                 FROM usage_rollup WHERE month = $1 GROUP BY tenant",
                &[Val::T(&key)],
            )?;
            let by_region = tx.rows(
                "SELECT region, CAST(SUM(milli_gpu_s) AS BIGINT), CAST(SUM(facility_j) AS BIGINT), \
                 CAST(SUM(carbon_mg) AS BIGINT) FROM usage_rollup WHERE month = $1 GROUP BY region ORDER BY region",
                &[Val::T(&key)],
            )?;
            let tokens = tx.rows(
                "SELECT tenant, tier, CAST(SUM(prompt_tokens + completion_tokens) AS BIGINT), \
                 CAST(SUM(fen) AS BIGINT), CAST(SUM(voucher_fen) AS BIGINT) \
                 FROM tokens_rollup WHERE month = $1 GROUP BY tenant, tier",
                &[Val::T(&key)],
            )?;
            Ok((by_tenant, by_region, tokens))
        })?;
        let mut tenants: BTreeMap<String, TenantMonth> = BTreeMap::new();
        for r in &by_tenant {
            let t = tenant_of(&mut tenants, r[0].t());
            t.milli_gpu_s += r[1].i();
            t.gross_fen += r[2].i();
            t.voucher_fen += r[3].i();
        }
        for r in &tokens {
            let t = tenant_of(&mut tenants, r[0].t());
            *t.tokens.entry(r[1].t()).or_default() += r[2].i();
            t.gross_fen += r[3].i();
            t.voucher_fen += r[4].i();
        }
        let tenants = tenants
            .into_values()
            .map(|mut t| {
                t.net_fen = t.gross_fen - t.voucher_fen;
                t
            })
            .collect();
        let regions = by_region
            .iter()
            .map(|r| RegionMonth {
                region: r[0].t(),
                milli_gpu_s: r[1].i(),
                facility_j: r[2].i(),
                carbon_mg: r[3].i(),
            })
            .collect();
        Ok(MonthTotals { tenants, regions })
    }
}

/// The tenant's entry, made on first sight.
fn tenant_of(tenants: &mut BTreeMap<String, TenantMonth>, name: String) -> &mut TenantMonth {
    tenants.entry(name).or_insert_with_key(|name| TenantMonth {
        tenant: name.clone(),
        ..TenantMonth::default()
    })
}

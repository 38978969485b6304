//! Monthly statements per tenant: GPU-hours by model and region, energy and
//! carbon by region, tokens by tier, gross / voucher-covered / net, voucher
//! balances. JSON (serde) and CSV.

use super::error::Result;
use super::money::{format_yuan, Fen};
use super::sql::Val;
use super::store::Ledger;
use super::types::{Month, J_PER_KWH};
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

/// GPU time of one accelerator model in one region.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct GpuLine {
    pub model: String,
    pub region: String,
    pub gpu_hours: f64,
    pub milli_gpu_seconds: i64,
    pub gross_fen: Fen,
    pub voucher_fen: Fen,
    pub net_fen: Fen,
}

/// Energy and carbon in one region (energy charges when the card bills energy).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct EnergyLine {
    pub region: String,
    pub it_kwh: f64,
    pub facility_kwh: f64,
    pub carbon_kg: f64,
    pub it_energy_j: i64,
    pub facility_j: i64,
    pub carbon_mg: i64,
    pub gross_fen: Fen,
    pub voucher_fen: Fen,
    pub net_fen: Fen,
}

/// Tokens of one tier.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TokenLine {
    pub tier: String,
    pub prompt_tokens: i64,
    pub completion_tokens: i64,
    pub gross_fen: Fen,
    pub voucher_fen: Fen,
    pub net_fen: Fen,
}

/// One voucher: what it covered this month and what is left now.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct VoucherLine {
    pub id: String,
    pub issuer: String,
    pub face_value_fen: Fen,
    pub copay_ratio_bp: i64,
    pub redeemed_in_month_fen: Fen,
    pub balance_fen: Fen,
    pub valid_from: DateTime<Utc>,
    pub valid_until: DateTime<Utc>,
}

/// Statement totals. `gross = voucher + net`; `payable = net + adjustments`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Totals {
    pub gpu_hours: f64,
    pub tokens: i64,
    pub facility_kwh: f64,
    pub carbon_kg: f64,
    pub gross_fen: Fen,
    pub voucher_fen: Fen,
    pub net_fen: Fen,
    pub adjustments_fen: Fen,
    pub payable_fen: Fen,
}

/// A tenant's statement for one month (intervals starting in the month, UTC).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Statement {
    pub tenant: String,
    pub month: String,
    pub period_start: DateTime<Utc>,
    pub period_end: DateTime<Utc>,
    pub usage_records: i64,
    pub token_records: i64,
    pub gpu: Vec<GpuLine>,
    pub energy: Vec<EnergyLine>,
    pub tokens: Vec<TokenLine>,
    pub vouchers: Vec<VoucherLine>,
    pub totals: Totals,
}

impl Ledger {
    /// Builds `tenant`'s statement for `month`: a few aggregate queries over
    /// the (tenant, start) index.
    pub fn statement(&self, tenant: &str, month: Month) -> Result<Statement> {
        if self.tenant(tenant)?.is_none() {
            return Err(super::error::LedgerError::UnknownTenant(tenant.into()));
        }
        let (from, to) = month.range_s();
        let p = [Val::T(tenant), Val::I(from), Val::I(to)];
        let usage = self.read_rows(
            "SELECT model, region, COUNT(*), CAST(SUM(milli_gpu_s) AS BIGINT), CAST(SUM(gpu_fen) AS BIGINT), \
             CAST(SUM(gpu_voucher_fen) AS BIGINT), CAST(SUM(it_energy_j) AS BIGINT), CAST(SUM(facility_j) AS BIGINT), \
             CAST(SUM(carbon_mg) AS BIGINT), CAST(SUM(energy_fen) AS BIGINT), CAST(SUM(energy_voucher_fen) AS BIGINT) \
             FROM usage WHERE tenant = $1 AND start_s >= $2 AND start_s < $3 GROUP BY model, region ORDER BY model, region",
            &p,
        )?;
        let tokens = self.read_rows(
            "SELECT tier, COUNT(*), CAST(SUM(prompt_tokens) AS BIGINT), CAST(SUM(completion_tokens) AS BIGINT), \
             CAST(SUM(fen) AS BIGINT), CAST(SUM(voucher_fen) AS BIGINT) \
             FROM tokens WHERE tenant = $1 AND start_s >= $2 AND start_s < $3 GROUP BY tier ORDER BY tier",
            &p,
        )?;
        let redeemed = self.read_rows(
            "SELECT voucher_id, CAST(SUM(fen) AS BIGINT) FROM redemptions \
             WHERE tenant = $1 AND at_s >= $2 AND at_s < $3 GROUP BY voucher_id",
            &p,
        )?;
        let adjustments = self.read_rows(
            "SELECT COALESCE(CAST(SUM(fen) AS BIGINT), 0) FROM adjustments WHERE tenant = $1 AND at_s >= $2 AND at_s < $3",
            &p,
        )?;

        let mut st = Statement {
            tenant: tenant.into(),
            month: month.to_string(),
            period_start: month.start(),
            period_end: month.next().start(),
            usage_records: 0,
            token_records: 0,
            gpu: vec![],
            energy: vec![],
            tokens: vec![],
            vouchers: vec![],
            totals: Totals::default(),
        };
        let mut energy: std::collections::BTreeMap<String, EnergyLine> = Default::default();
        for r in &usage {
            st.usage_records += r[2].i();
            let (gross, covered) = (r[4].i(), r[5].i());
            st.gpu.push(GpuLine {
                model: r[0].t(),
                region: r[1].t(),
                gpu_hours: r[3].i() as f64 / 3.6e6,
                milli_gpu_seconds: r[3].i(),
                gross_fen: gross,
                voucher_fen: covered,
                net_fen: gross - covered,
            });
            let e = energy.entry(r[1].t()).or_insert_with(|| EnergyLine {
                region: r[1].t(),
                it_kwh: 0.0,
                facility_kwh: 0.0,
                carbon_kg: 0.0,
                it_energy_j: 0,
                facility_j: 0,
                carbon_mg: 0,
                gross_fen: 0,
                voucher_fen: 0,
                net_fen: 0,
            });
            e.it_energy_j += r[6].i();
            e.facility_j += r[7].i();
            e.carbon_mg += r[8].i();
            e.gross_fen += r[9].i();
            e.voucher_fen += r[10].i();
        }
        for mut e in energy.into_values() {
            e.it_kwh = e.it_energy_j as f64 / J_PER_KWH as f64;
            e.facility_kwh = e.facility_j as f64 / J_PER_KWH as f64;
            e.carbon_kg = e.carbon_mg as f64 / 1e6;
            e.net_fen = e.gross_fen - e.voucher_fen;
            st.energy.push(e);
        }
        for r in &tokens {
            st.token_records += r[1].i();
            let (gross, covered) = (r[4].i(), r[5].i());
            st.tokens.push(TokenLine {
                tier: r[0].t(),
                prompt_tokens: r[2].i(),
                completion_tokens: r[3].i(),
                gross_fen: gross,
                voucher_fen: covered,
                net_fen: gross - covered,
            });
        }
        for v in self.vouchers(Some(tenant))? {
            let in_month = redeemed
                .iter()
                .find(|r| r[0].t() == v.id)
                .map_or(0, |r| r[1].i());
            st.vouchers.push(VoucherLine {
                id: v.id,
                issuer: v.issuer,
                face_value_fen: v.face_value_fen,
                copay_ratio_bp: v.copay_ratio_bp,
                redeemed_in_month_fen: in_month,
                balance_fen: v.balance_fen,
                valid_from: v.valid_from,
                valid_until: v.valid_until,
            });
        }
        let t = &mut st.totals;
        let milli: i64 = st.gpu.iter().map(|g| g.milli_gpu_seconds).sum();
        t.gpu_hours = milli as f64 / 3.6e6;
        t.tokens = st
            .tokens
            .iter()
            .map(|l| l.prompt_tokens + l.completion_tokens)
            .sum();
        t.facility_kwh =
            st.energy.iter().map(|e| e.facility_j).sum::<i64>() as f64 / J_PER_KWH as f64;
        t.carbon_kg = st.energy.iter().map(|e| e.carbon_mg).sum::<i64>() as f64 / 1e6;
        t.gross_fen = st.gpu.iter().map(|g| g.gross_fen).sum::<Fen>()
            + st.energy.iter().map(|e| e.gross_fen).sum::<Fen>()
            + st.tokens.iter().map(|l| l.gross_fen).sum::<Fen>();
        t.voucher_fen = st.gpu.iter().map(|g| g.voucher_fen).sum::<Fen>()
            + st.energy.iter().map(|e| e.voucher_fen).sum::<Fen>()
            + st.tokens.iter().map(|l| l.voucher_fen).sum::<Fen>();
        t.net_fen = t.gross_fen - t.voucher_fen;
        t.adjustments_fen = adjustments[0][0].i();
        t.payable_fen = t.net_fen + t.adjustments_fen;
        Ok(st)
    }
}

impl Statement {
    /// CSV: one row per line item, `section,key,subkey,quantity,unit,gross,voucher,net`
    /// with money in yuan (exact, two decimals), then voucher rows and totals.
    pub fn to_csv(&self) -> String {
        let mut w = csv::Writer::from_writer(Vec::new());
        let mut row = |fields: &[&str]| {
            // Writing to a Vec cannot fail.
            let _ = w.write_record(fields);
        };
        row(&[
            "tenant",
            "month",
            "section",
            "key",
            "subkey",
            "quantity",
            "unit",
            "gross_cny",
            "voucher_cny",
            "net_cny",
        ]);
        let (tn, mo) = (self.tenant.as_str(), self.month.as_str());
        for g in &self.gpu {
            row(&[
                tn,
                mo,
                "gpu",
                &g.model,
                &g.region,
                &format!("{:.6}", g.gpu_hours),
                "gpu_hours",
                &format_yuan(g.gross_fen),
                &format_yuan(g.voucher_fen),
                &format_yuan(g.net_fen),
            ]);
        }
        for e in &self.energy {
            row(&[
                tn,
                mo,
                "energy",
                &e.region,
                "facility",
                &format!("{:.6}", e.facility_kwh),
                "kwh",
                &format_yuan(e.gross_fen),
                &format_yuan(e.voucher_fen),
                &format_yuan(e.net_fen),
            ]);
            row(&[
                tn,
                mo,
                "carbon",
                &e.region,
                "",
                &format!("{:.6}", e.carbon_kg),
                "kg_co2",
                "",
                "",
                "",
            ]);
        }
        for l in &self.tokens {
            row(&[
                tn,
                mo,
                "tokens",
                &l.tier,
                "prompt",
                &l.prompt_tokens.to_string(),
                "tokens",
                "",
                "",
                "",
            ]);
            row(&[
                tn,
                mo,
                "tokens",
                &l.tier,
                "completion",
                &l.completion_tokens.to_string(),
                "tokens",
                &format_yuan(l.gross_fen),
                &format_yuan(l.voucher_fen),
                &format_yuan(l.net_fen),
            ]);
        }
        for v in &self.vouchers {
            row(&[
                tn,
                mo,
                "voucher",
                &v.id,
                &v.issuer,
                &format_yuan(v.balance_fen),
                "balance_cny",
                "",
                &format_yuan(v.redeemed_in_month_fen),
                "",
            ]);
        }
        let t = &self.totals;
        row(&[
            tn,
            mo,
            "total",
            "charges",
            "",
            "",
            "",
            &format_yuan(t.gross_fen),
            &format_yuan(t.voucher_fen),
            &format_yuan(t.net_fen),
        ]);
        row(&[
            tn,
            mo,
            "total",
            "adjustments",
            "",
            "",
            "",
            "",
            "",
            &format_yuan(t.adjustments_fen),
        ]);
        row(&[
            tn,
            mo,
            "total",
            "payable",
            "",
            "",
            "",
            "",
            "",
            &format_yuan(t.payable_fen),
        ]);
        String::from_utf8(w.into_inner().unwrap_or_default()).unwrap_or_default()
    }
}

//! Monthly statements per tenant: GPU-hours by model and region, energy and
//! carbon by region, tokens by tier, gross / voucher-covered / net, voucher
//! balances. JSON (serde) and CSV.

use super::chain::ChainHead;
use super::error::Result;
use super::money::{format_yuan, Fen};
use super::sql::{Cell, Val};
use super::store::Ledger;
use super::types::{Month, Voucher, VoucherStatus, J_PER_KWH};
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

/// One voucher: what it covered this month and what is left now. Its status
/// is taken at the statement's `as_of`, the moment its balance is read: an
/// expired voucher's balance is reported as lapsed, with nothing spendable.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct VoucherLine {
    pub id: String,
    pub issuer: String,
    pub face_value_fen: Fen,
    pub copay_ratio_bp: i64,
    pub redeemed_in_month_fen: Fen,
    pub balance_fen: Fen,
    pub status: VoucherStatus,
    /// Balance that charges could still draw (0 unless active).
    pub spendable_fen: Fen,
    /// Balance left unused at expiry (0 unless expired).
    pub lapsed_fen: Fen,
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
    /// When the statement was made: voucher balances are read, and their
    /// statuses judged, at this moment (also for a past month).
    pub as_of: DateTime<Utc>,
    pub usage_records: i64,
    pub token_records: i64,
    pub gpu: Vec<GpuLine>,
    pub energy: Vec<EnergyLine>,
    pub tokens: Vec<TokenLine>,
    pub vouchers: Vec<VoucherLine>,
    pub totals: Totals,
    /// The ledger's chain head when the statement was made: `zhisuan
    /// ledger verify --head SEQ:HASH` later shows the entries it was
    /// computed from are still the ones stored (`ledger::chain`).
    #[serde(default)]
    pub chain_head: Option<ChainHead>,
}

/// Where a statement's sums come from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Source {
    /// The monthly rollups maintained at ingestion: a few key lookups.
    Rollups,
    /// The raw rows of the month: a scan, kept to reconcile the rollups.
    Records,
}

impl Ledger {
    /// Builds `tenant`'s statement for `month` from the monthly rollups
    /// (cost independent of the number of records).
    pub fn statement(&self, tenant: &str, month: Month) -> Result<Statement> {
        self.statement_as_of(tenant, month, Utc::now())
    }

    /// [`Ledger::statement`] generated at `now` (voucher statuses are taken
    /// at the earlier of `now` and the end of the month).
    pub fn statement_as_of(
        &self,
        tenant: &str,
        month: Month,
        now: DateTime<Utc>,
    ) -> Result<Statement> {
        self.build_statement(tenant, month, Source::Rollups, now)
    }

    /// The same statement recomputed from the month's raw rows (a scan):
    /// for reconciliation and audits; equals [`Ledger::statement_as_of`].
    pub fn statement_from_records(
        &self,
        tenant: &str,
        month: Month,
        now: DateTime<Utc>,
    ) -> Result<Statement> {
        self.build_statement(tenant, month, Source::Records, now)
    }

    fn build_statement(
        &self,
        tenant: &str,
        month: Month,
        source: Source,
        now: DateTime<Utc>,
    ) -> Result<Statement> {
        if self.tenant(tenant)?.is_none() {
            return Err(super::error::LedgerError::UnknownTenant(tenant.into()));
        }
        // First: every entry the statement reads is at or before it.
        let chain_head = self.chain_head()?;
        let sums = self.month_sums(tenant, month, source)?;
        let (gpu, energy) = gpu_and_energy_lines(&sums.usage);
        let mut st = Statement {
            tenant: tenant.into(),
            month: month.to_string(),
            period_start: month.start(),
            period_end: month.next().start(),
            as_of: now,
            usage_records: sums.usage.iter().map(|r| r[2].i()).sum(),
            token_records: sums.tokens.iter().map(|r| r[1].i()).sum(),
            gpu,
            energy,
            tokens: sums.tokens.iter().map(|r| token_line(r)).collect(),
            vouchers: vec![],
            totals: Totals::default(),
            chain_head,
        };
        for v in self.vouchers(Some(tenant))? {
            let in_month = sums
                .redeemed
                .iter()
                .find(|r| r[0].t() == v.id)
                .map_or(0, |r| r[1].i());
            st.vouchers.push(voucher_line(v, in_month, st.as_of));
        }
        st.totals = totals(&st, sums.adjustments_fen);
        Ok(st)
    }

    /// The month's sums for `tenant`: usage by (model, region), tokens by
    /// tier, redemptions by voucher, and the adjustments, from the rollups
    /// or from the raw rows.
    fn month_sums(&self, tenant: &str, month: Month, source: Source) -> Result<MonthSums> {
        let (from, to) = month.range_s();
        let month_key = month.to_string();
        let by_range = [Val::T(tenant), Val::I(from), Val::I(to)];
        let by_key = [Val::T(tenant), Val::T(&month_key)];
        let (usage, tokens, redeemed) = match source {
            Source::Rollups => (
                self.read_rows(
                    "SELECT model, region, records, milli_gpu_s, gpu_fen, gpu_voucher_fen, it_energy_j, facility_j, \
                     carbon_mg, energy_fen, energy_voucher_fen \
                     FROM usage_rollup WHERE tenant = $1 AND month = $2 ORDER BY model, region",
                    &by_key,
                )?,
                self.read_rows(
                    "SELECT tier, records, prompt_tokens, completion_tokens, fen, voucher_fen \
                     FROM tokens_rollup WHERE tenant = $1 AND month = $2 ORDER BY tier",
                    &by_key,
                )?,
                self.read_rows(
                    "SELECT voucher_id, fen FROM redemptions_rollup WHERE tenant = $1 AND month = $2",
                    &by_key,
                )?,
            ),
            Source::Records => (
                self.read_rows(
                    "SELECT model, region, COUNT(*), CAST(SUM(milli_gpu_s) AS BIGINT), CAST(SUM(gpu_fen) AS BIGINT), \
                     CAST(SUM(gpu_voucher_fen) AS BIGINT), CAST(SUM(it_energy_j) AS BIGINT), CAST(SUM(facility_j) AS BIGINT), \
                     CAST(SUM(carbon_mg) AS BIGINT), CAST(SUM(energy_fen) AS BIGINT), CAST(SUM(energy_voucher_fen) AS BIGINT) \
                     FROM usage WHERE tenant = $1 AND start_s >= $2 AND start_s < $3 GROUP BY model, region ORDER BY model, region",
                    &by_range,
                )?,
                self.read_rows(
                    "SELECT tier, COUNT(*), CAST(SUM(prompt_tokens) AS BIGINT), CAST(SUM(completion_tokens) AS BIGINT), \
                     CAST(SUM(fen) AS BIGINT), CAST(SUM(voucher_fen) AS BIGINT) \
                     FROM tokens WHERE tenant = $1 AND start_s >= $2 AND start_s < $3 GROUP BY tier ORDER BY tier",
                    &by_range,
                )?,
                self.read_rows(
                    "SELECT voucher_id, CAST(SUM(fen) AS BIGINT) FROM redemptions \
                     WHERE tenant = $1 AND at_s >= $2 AND at_s < $3 GROUP BY voucher_id",
                    &by_range,
                )?,
            ),
        };
        let adjustments = self.read_rows(
            "SELECT COALESCE(CAST(SUM(fen) AS BIGINT), 0) FROM adjustments WHERE tenant = $1 AND at_s >= $2 AND at_s < $3",
            &by_range,
        )?;
        Ok(MonthSums {
            usage,
            tokens,
            redeemed,
            adjustments_fen: adjustments[0][0].i(),
        })
    }
}

/// A month's sums as read: usage rows (model, region, records,
/// milli-GPU-s, GPU fen, GPU voucher fen, IT J, facility J, carbon mg,
/// energy fen, energy voucher fen), token rows (tier, records, prompt,
/// completion, fen, voucher fen), redemptions (voucher, fen).
struct MonthSums {
    usage: Vec<Vec<Cell>>,
    tokens: Vec<Vec<Cell>>,
    redeemed: Vec<Vec<Cell>>,
    adjustments_fen: Fen,
}

/// A GPU line per (model, region) row, and an energy line per region
/// (its models' rows summed).
fn gpu_and_energy_lines(usage: &[Vec<Cell>]) -> (Vec<GpuLine>, Vec<EnergyLine>) {
    let mut gpu = Vec::with_capacity(usage.len());
    let mut energy: std::collections::BTreeMap<String, EnergyLine> = Default::default();
    for r in usage {
        let (gross, covered) = (r[4].i(), r[5].i());
        gpu.push(GpuLine {
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
    let energy = energy
        .into_values()
        .map(|mut e| {
            e.it_kwh = e.it_energy_j as f64 / J_PER_KWH as f64;
            e.facility_kwh = e.facility_j as f64 / J_PER_KWH as f64;
            e.carbon_kg = e.carbon_mg as f64 / 1e6;
            e.net_fen = e.gross_fen - e.voucher_fen;
            e
        })
        .collect();
    (gpu, energy)
}

/// A token line per tier row.
fn token_line(r: &[Cell]) -> TokenLine {
    let (gross, covered) = (r[4].i(), r[5].i());
    TokenLine {
        tier: r[0].t(),
        prompt_tokens: r[2].i(),
        completion_tokens: r[3].i(),
        gross_fen: gross,
        voucher_fen: covered,
        net_fen: gross - covered,
    }
}

/// A voucher as of the statement: its status, what is spendable and
/// lapsed then, and what it paid in the month.
fn voucher_line(v: Voucher, redeemed_in_month_fen: Fen, as_of: DateTime<Utc>) -> VoucherLine {
    VoucherLine {
        status: v.status_at(as_of),
        spendable_fen: v.spendable_at(as_of),
        lapsed_fen: v.lapsed_at(as_of),
        id: v.id,
        issuer: v.issuer,
        face_value_fen: v.face_value_fen,
        copay_ratio_bp: v.copay_ratio_bp,
        redeemed_in_month_fen,
        balance_fen: v.balance_fen,
        valid_from: v.valid_from,
        valid_until: v.valid_until,
    }
}

/// The statement's totals from its lines and the month's adjustments.
fn totals(st: &Statement, adjustments_fen: Fen) -> Totals {
    let mut t = Totals::default();
    let milli: i64 = st.gpu.iter().map(|g| g.milli_gpu_seconds).sum();
    t.gpu_hours = milli as f64 / 3.6e6;
    t.tokens = st
        .tokens
        .iter()
        .map(|l| l.prompt_tokens + l.completion_tokens)
        .sum();
    t.facility_kwh = st.energy.iter().map(|e| e.facility_j).sum::<i64>() as f64 / J_PER_KWH as f64;
    t.carbon_kg = st.energy.iter().map(|e| e.carbon_mg).sum::<i64>() as f64 / 1e6;
    t.gross_fen = st.gpu.iter().map(|g| g.gross_fen).sum::<Fen>()
        + st.energy.iter().map(|e| e.gross_fen).sum::<Fen>()
        + st.tokens.iter().map(|l| l.gross_fen).sum::<Fen>();
    t.voucher_fen = st.gpu.iter().map(|g| g.voucher_fen).sum::<Fen>()
        + st.energy.iter().map(|e| e.voucher_fen).sum::<Fen>()
        + st.tokens.iter().map(|l| l.voucher_fen).sum::<Fen>();
    t.net_fen = t.gross_fen - t.voucher_fen;
    t.adjustments_fen = adjustments_fen;
    t.payable_fen = t.net_fen + t.adjustments_fen;
    t
}

/// A CSV cell a spreadsheet will not run: text starting with `=`, `+`,
/// `-`, `@`, a tab or a carriage return (a formula, e.g. an issuer named
/// `=HYPERLINK(…)`) gets a leading `'`; numbers stay numbers.
pub fn csv_cell(text: &str) -> std::borrow::Cow<'_, str> {
    let formula = text.starts_with(['=', '+', '-', '@', '\t', '\r']);
    if formula && text.parse::<f64>().is_err() {
        std::borrow::Cow::Owned(format!("'{text}"))
    } else {
        std::borrow::Cow::Borrowed(text)
    }
}

impl Statement {
    /// CSV: one row per line item, `section,key,subkey,quantity,unit,gross,voucher,net`
    /// with money in yuan (exact, two decimals), then voucher rows and totals.
    pub fn to_csv(&self) -> String {
        let mut w = csv::Writer::from_writer(Vec::new());
        let mut row = |fields: &[&str]| {
            // Writing to a Vec cannot fail.
            let _ = w.write_record(fields.iter().map(|f| csv_cell(f).into_owned()));
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
            // An expired voucher's balance is reported as lapsed, not as balance.
            let unit = if v.status == VoucherStatus::Expired {
                "lapsed_cny"
            } else {
                "balance_cny"
            };
            row(&[
                tn,
                mo,
                "voucher",
                &v.id,
                &v.issuer,
                &format_yuan(v.balance_fen),
                unit,
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
        if let Some(h) = &self.chain_head {
            row(&[
                tn,
                mo,
                "chain",
                "head",
                &h.hash,
                &h.seq.to_string(),
                "link",
                "",
                "",
                "",
            ]);
        }
        String::from_utf8(w.into_inner().unwrap_or_default()).unwrap_or_default()
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn csv_cells_never_start_a_formula_but_numbers_stay_numbers() {
        use super::csv_cell;
        assert_eq!(
            csv_cell("=HYPERLINK(\"http://x\",\"y\")"),
            "'=HYPERLINK(\"http://x\",\"y\")"
        );
        for hostile in ["+1+cmd", "-2+3", "@SUM(A1)", "\tx", "\rx"] {
            assert!(csv_cell(hostile).starts_with('\''), "{hostile:?}");
        }
        assert_eq!(csv_cell("-12.50"), "-12.50");
        assert_eq!(csv_cell("hangzhou-bureau"), "hangzhou-bureau");
    }

    use crate::ledger::{Ledger, Month, Tier, TokenRecord, UsageRecord, VoucherSpec};
    use chrono::{Duration, TimeZone, Utc};
    use proptest::prelude::*;

    const TENANTS: [&str; 2] = ["acme", "beta"];
    const MONTHS: [&str; 3] = ["2026-10", "2026-11", "2026-12"];

    use crate::ledger::test_pg as pg;

    fn ledger(url: &str) -> Ledger {
        let l = Ledger::open(url).unwrap();
        l.ensure_rate_card("t").unwrap();
        for t in TENANTS {
            l.create_tenant("t", t, None).unwrap();
        }
        let from = Utc.with_ymd_and_hms(2026, 10, 1, 0, 0, 0).unwrap();
        l.issue_voucher(
            "t",
            &VoucherSpec {
                id: Some("v1".into()),
                tenant: "acme".into(),
                issuer: "gov".into(),
                face_value_fen: 50_000,
                copay_ratio_bp: 6_000,
                valid_from: from,
                valid_until: from + Duration::days(75),
                regions: vec![],
                kinds: vec![],
                tiers: vec![],
                models: vec![],
            },
        )
        .unwrap();
        l
    }

    /// (tenant, source, minute offset in Oct–Dec, seconds, model, region, tokens?, amount)
    type Rec = (usize, u8, i64, i64, usize, usize, bool, i64);

    fn records(recs: &[Rec]) -> (Vec<UsageRecord>, Vec<TokenRecord>) {
        let base = Utc.with_ymd_and_hms(2026, 10, 1, 0, 0, 0).unwrap();
        let mut usage = vec![];
        let mut tokens = vec![];
        for &(tenant, source, minute, secs, model, region, is_tokens, amount) in recs {
            let start = base + Duration::minutes(minute);
            let end = start + Duration::seconds(secs);
            let region = ["gansu", "beijing"][region].to_string();
            if is_tokens {
                tokens.push(TokenRecord {
                    source: format!("pod-{source}"),
                    tenant: TENANTS[tenant].into(),
                    service: "ns/chat".into(),
                    model: "qwen".into(),
                    region,
                    tier: Tier::ALL[model],
                    start,
                    end,
                    prompt_tokens: amount,
                    completion_tokens: amount / 3,
                });
            } else {
                usage.push(UsageRecord {
                    source: format!("pod-{source}"),
                    tenant: TENANTS[tenant].into(),
                    job: "ns/train".into(),
                    region,
                    node: "n1".into(),
                    model: ["H100", "A100", "910B"][model].into(),
                    gpu_milli: 250 * (1 + amount % 8),
                    start,
                    end,
                    it_energy_j: amount * 7,
                    pue: 1.25,
                    green_share: 0.3,
                    grid_kg_per_kwh: 0.5703,
                });
            }
        }
        (usage, tokens)
    }

    /// Random batches: 1–4 batches of 1–24 records (usage or tokens, two
    /// tenants, six sources, Oct–Dec, up to 2 h so some cross a month).
    fn batches() -> impl Strategy<Value = Vec<Vec<Rec>>> {
        proptest::collection::vec(
            proptest::collection::vec(
                (
                    0usize..2,
                    0u8..6,
                    0i64..130_000,
                    1i64..7_200,
                    0usize..3,
                    0usize..2,
                    any::<bool>(),
                    0i64..5_000_000,
                ),
                1..25,
            ),
            1..5,
        )
    }

    /// Statements read from the rollups equal statements recomputed from
    /// the raw rows, for every tenant and month, whatever the batches
    /// (repeats inside a batch and across batches included); replaying
    /// every batch again changes nothing.
    fn rollups_equal_raw_rows(
        l: &Ledger,
        batches: &[Vec<Rec>],
    ) -> std::result::Result<(), TestCaseError> {
        for b in batches {
            let (u, t) = records(b);
            l.ingest(&u, &t).unwrap();
        }
        let snapshot = |l: &Ledger| {
            let mut out = vec![];
            for tenant in TENANTS {
                for m in MONTHS {
                    let m = Month::parse(m).unwrap();
                    let now = Utc.with_ymd_and_hms(2027, 1, 5, 0, 0, 0).unwrap();
                    let fast = l.statement_as_of(tenant, m, now).unwrap();
                    let slow = l.statement_from_records(tenant, m, now).unwrap();
                    assert_eq!(fast, slow, "{tenant} {m}");
                    out.push(fast);
                }
            }
            for tenant in TENANTS {
                // Month-aligned and open bounds read the rollups; they
                // must equal the scan of the raw rows.
                let bounds = [
                    (None, None),
                    (Some(Month::parse("2026-11").unwrap().start()), None),
                    (None, Some(Month::parse("2026-12").unwrap().start())),
                ];
                for (from, to) in bounds {
                    assert_eq!(
                        l.usage_summary(tenant, from, to).unwrap(),
                        l.usage_summary_by(tenant, from, to, false).unwrap()
                    );
                }
            }
            // The month's totals (the operator page's) equal each tenant's
            // scan of the raw rows; regions add up to the same GPU time.
            for m in MONTHS {
                let m = Month::parse(m).unwrap();
                let totals = l.month_totals(m).unwrap();
                for tenant in TENANTS {
                    let raw = l
                        .usage_summary_by(tenant, Some(m.start()), Some(m.next().start()), false)
                        .unwrap();
                    let got = totals.tenants.iter().find(|t| t.tenant == tenant);
                    let got = got.cloned().unwrap_or_default();
                    assert_eq!(
                        (got.gross_fen, got.voucher_fen, got.net_fen, &got.tokens),
                        (raw.gross_fen, raw.voucher_fen, raw.net_fen, &raw.tokens),
                        "{tenant} {m}"
                    );
                    assert_eq!(
                        got.milli_gpu_s as f64 / 3.6e6,
                        raw.gpu_hours,
                        "{tenant} {m}"
                    );
                }
                let gpu = |x: &mut dyn Iterator<Item = i64>| x.sum::<i64>();
                assert_eq!(
                    gpu(&mut totals.regions.iter().map(|r| r.milli_gpu_s)),
                    gpu(&mut totals.tenants.iter().map(|t| t.milli_gpu_s)),
                    "{m}"
                );
            }
            (
                out,
                l.trial_balance().unwrap(),
                l.account_balance("tenant:acme").unwrap(),
            )
        };
        let before = snapshot(l);
        let records_before: i64 = before
            .0
            .iter()
            .map(|s| s.usage_records + s.token_records)
            .sum();
        prop_assert!(records_before > 0);
        for b in batches {
            let (u, t) = records(b);
            let r = l.ingest(&u, &t).unwrap();
            prop_assert_eq!(r.usage_new + r.tokens_new, 0);
        }
        prop_assert_eq!(snapshot(l), before);
        Ok(())
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(24))]
        #[test]
        fn rollups_equal_raw_rows_and_replays_change_nothing(batches in batches()) {
            rollups_equal_raw_rows(&ledger(":memory:"), &batches)?;
        }
    }

    /// The same property on a real PostgreSQL (its rollups are written by
    /// one multi-row upsert per batch), a fresh database per case.
    #[test]
    fn rollups_equal_raw_rows_and_replays_change_nothing_postgres() {
        let Some(server) = pg::PgServer::start() else {
            return;
        };
        let mut runner = proptest::test_runner::TestRunner::new(ProptestConfig::with_cases(8));
        runner
            .run(&batches(), |batches| {
                rollups_equal_raw_rows(&ledger(&server.fresh_db()), &batches)
            })
            .unwrap();
    }
}

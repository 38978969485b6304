//! Per-tenant Prometheus metrics (names fixed in HELPERS.md), registered on a
//! registry the caller passes in. Labels are bounded: tenant, region, model,
//! tier, kind, voucher.

use super::plan::BatchPlan;
use super::types::{Voucher, J_PER_KWH};
use chrono::{DateTime, Utc};
use prometheus::core::{Collector, Desc};
use prometheus::proto::MetricFamily;
use prometheus::{CounterVec, IntGaugeVec, Opts, Registry};
use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

/// `zhisuan_voucher_balance_fen{tenant,voucher}`: what a voucher can still
/// pay, which is what a finance dashboard's "voucher balance" means: the
/// stored balance until the voucher expires, 0 from then on (the remainder
/// has lapsed; statements report it as `lapsed_fen`). A voucher not yet
/// valid shows its balance (it will be spendable). Judged when scraped, so
/// the series drops to 0 at expiry without waiting for a ledger write.
#[derive(Clone)]
pub struct VoucherBalances {
    gauge: IntGaugeVec,
    /// (tenant, voucher) → the stored voucher.
    vouchers: Arc<Mutex<BTreeMap<(String, String), Voucher>>>,
}

impl VoucherBalances {
    fn new() -> prometheus::Result<Self> {
        Ok(VoucherBalances {
            gauge: IntGaugeVec::new(
                Opts::new(
                    "zhisuan_voucher_balance_fen",
                    "Voucher balance still usable, in fen: 0 once the voucher has expired (its remainder lapsed)",
                ),
                &["tenant", "voucher"],
            )?,
            vouchers: Arc::default(),
        })
    }

    /// The value exported for `v` at `now`: its balance unless lapsed.
    pub fn usable_at(v: &Voucher, now: DateTime<Utc>) -> i64 {
        v.balance_fen - v.lapsed_at(now)
    }

    fn set(&self, v: &Voucher) {
        self.vouchers
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert((v.tenant.clone(), v.id.clone()), v.clone());
    }
}

impl Collector for VoucherBalances {
    fn desc(&self) -> Vec<&Desc> {
        self.gauge.desc()
    }

    fn collect(&self) -> Vec<MetricFamily> {
        let now = Utc::now();
        for ((tenant, id), v) in self
            .vouchers
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .iter()
        {
            self.gauge
                .with_label_values(&[tenant, id])
                .set(Self::usable_at(v, now));
        }
        self.gauge.collect()
    }
}

/// The ledger's metrics.
#[derive(Clone)]
pub struct LedgerMetrics {
    pub gpu_seconds: CounterVec,
    pub tokens: CounterVec,
    pub energy_kwh: CounterVec,
    pub carbon_kg: CounterVec,
    pub charge_fen: CounterVec,
    pub voucher_redeemed_fen: CounterVec,
    pub net_fen: CounterVec,
    /// Token charges and their voucher-covered part (model vouchers among
    /// them), by tier.
    pub token_charge_fen: CounterVec,
    pub token_voucher_fen: CounterVec,
    pub voucher_balances: VoucherBalances,
}

impl LedgerMetrics {
    pub fn new(registry: &Registry) -> prometheus::Result<Self> {
        let counter = |name: &str, help: &str, labels: &[&str]| -> prometheus::Result<CounterVec> {
            let c = CounterVec::new(Opts::new(name, help), labels)?;
            registry.register(Box::new(c.clone()))?;
            Ok(c)
        };
        let voucher_balances = VoucherBalances::new()?;
        registry.register(Box::new(voucher_balances.clone()))?;
        Ok(LedgerMetrics {
            gpu_seconds: counter(
                "zhisuan_tenant_gpu_seconds_total",
                "GPU-seconds used (fractional GPUs count their share)",
                &["tenant", "region", "model"],
            )?,
            tokens: counter(
                "zhisuan_tenant_tokens_total",
                "Inference tokens served, by tier and kind (prompt|completion)",
                &["tenant", "tier", "kind"],
            )?,
            energy_kwh: counter(
                "zhisuan_tenant_energy_kwh_total",
                "Facility energy (IT energy x PUE) in kWh",
                &["tenant", "region"],
            )?,
            carbon_kg: counter(
                "zhisuan_tenant_carbon_kg_total",
                "Carbon emitted (non-green share x grid factor) in kg CO2",
                &["tenant", "region"],
            )?,
            charge_fen: counter(
                "zhisuan_tenant_charge_fen_total",
                "Gross charges in fen",
                &["tenant"],
            )?,
            voucher_redeemed_fen: counter(
                "zhisuan_tenant_voucher_redeemed_fen_total",
                "Charges covered by compute vouchers, in fen",
                &["tenant"],
            )?,
            net_fen: counter(
                "zhisuan_tenant_net_fen_total",
                "Net payable (gross minus voucher-covered), in fen",
                &["tenant"],
            )?,
            token_charge_fen: counter(
                "zhisuan_tenant_token_charge_fen_total",
                "Gross token charges in fen, by tier",
                &["tenant", "tier"],
            )?,
            token_voucher_fen: counter(
                "zhisuan_tenant_token_voucher_fen_total",
                "Token charges covered by vouchers (model vouchers, and compute vouchers open to tokens), in fen, by tier",
                &["tenant", "tier"],
            )?,
            voucher_balances,
        })
    }

    /// Counts a committed batch (only its new records, so replays add nothing).
    pub fn observe(&self, plan: &BatchPlan) {
        for r in &plan.usage {
            let u = &r.usage;
            self.add_usage(
                &u.tenant,
                &u.region,
                &u.model,
                u.milli_gpu_s,
                u.facility_j,
                u.carbon_mg,
            );
            self.add_money(
                &u.tenant,
                r.gpu_fen + r.energy_fen,
                r.gpu_voucher_fen + r.energy_voucher_fen,
            );
        }
        for r in &plan.tokens {
            let t = &r.tokens;
            self.add_tokens(
                &t.tenant,
                t.tier.as_str(),
                t.prompt_tokens,
                t.completion_tokens,
            );
            self.add_money(&t.tenant, r.fen, r.voucher_fen);
            let labels = [t.tenant.as_str(), t.tier.as_str()];
            self.token_charge_fen
                .with_label_values(&labels)
                .inc_by(r.fen as f64);
            self.token_voucher_fen
                .with_label_values(&labels)
                .inc_by(r.voucher_fen as f64);
        }
    }

    pub(crate) fn add_usage(
        &self,
        tenant: &str,
        region: &str,
        model: &str,
        milli_gpu_s: i64,
        facility_j: i64,
        carbon_mg: i64,
    ) {
        self.gpu_seconds
            .with_label_values(&[tenant, region, model])
            .inc_by(milli_gpu_s as f64 / 1000.0);
        self.energy_kwh
            .with_label_values(&[tenant, region])
            .inc_by(facility_j as f64 / J_PER_KWH as f64);
        self.carbon_kg
            .with_label_values(&[tenant, region])
            .inc_by(carbon_mg as f64 / 1e6);
    }

    pub(crate) fn add_tokens(&self, tenant: &str, tier: &str, prompt: i64, completion: i64) {
        self.tokens
            .with_label_values(&[tenant, tier, "prompt"])
            .inc_by(prompt as f64);
        self.tokens
            .with_label_values(&[tenant, tier, "completion"])
            .inc_by(completion as f64);
    }

    pub(crate) fn add_money(&self, tenant: &str, gross: i64, covered: i64) {
        self.charge_fen
            .with_label_values(&[tenant])
            .inc_by(gross as f64);
        self.voucher_redeemed_fen
            .with_label_values(&[tenant])
            .inc_by(covered as f64);
        self.net_fen
            .with_label_values(&[tenant])
            .inc_by((gross - covered) as f64);
    }

    /// Records a voucher's stored balance and window (after issue or redemption).
    pub fn set_voucher(&self, v: &Voucher) {
        self.voucher_balances.set(v);
    }
}

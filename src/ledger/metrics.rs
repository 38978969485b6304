//! Per-tenant Prometheus metrics (names fixed in HELPERS.md), registered on a
//! registry the caller passes in. Labels are bounded: tenant, region, model,
//! tier, kind, voucher.

use super::plan::BatchPlan;
use super::types::J_PER_KWH;
use prometheus::{CounterVec, IntGaugeVec, Opts, Registry};

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
    pub voucher_balance_fen: IntGaugeVec,
}

impl LedgerMetrics {
    pub fn new(registry: &Registry) -> prometheus::Result<Self> {
        let counter = |name: &str, help: &str, labels: &[&str]| -> prometheus::Result<CounterVec> {
            let c = CounterVec::new(Opts::new(name, help), labels)?;
            registry.register(Box::new(c.clone()))?;
            Ok(c)
        };
        let voucher_balance_fen = IntGaugeVec::new(
            Opts::new(
                "zhisuan_voucher_balance_fen",
                "Remaining voucher balance in fen",
            ),
            &["tenant", "voucher"],
        )?;
        registry.register(Box::new(voucher_balance_fen.clone()))?;
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
            voucher_balance_fen,
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

    pub fn set_balance(&self, tenant: &str, voucher: &str, fen: i64) {
        self.voucher_balance_fen
            .with_label_values(&[tenant, voucher])
            .set(fen);
    }
}

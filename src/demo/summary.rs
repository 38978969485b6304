//! The demo's end-of-run summary: jobs, per-region allocation, utilisation
//! and carbon, per-tenant charges and voucher use; as a table or JSON.

use crate::ledger::money::format_yuan;
use serde::Serialize;
use std::fmt::Write as _;

#[derive(Debug, Clone, Default, Serialize)]
pub struct JobCounts {
    pub submitted: u64,
    /// Started at some point (placed by the engine).
    pub placed: u64,
    pub running: u64,
    pub finished: u64,
    pub pending: u64,
    /// Rejected at submission (invalid for this catalog).
    pub failed: u64,
}

#[derive(Debug, Clone, Serialize)]
pub struct RegionLine {
    pub name: String,
    pub display: String,
    pub side: String,
    pub gpus: u64,
    pub gpus_allocated: f64,
    pub allocation_pct: f64,
    pub gpu_hours: f64,
    pub facility_kwh: f64,
    pub green_share: f64,
    pub carbon_kg: f64,
}

#[derive(Debug, Clone, Serialize)]
pub struct VoucherLine {
    pub id: String,
    pub issuer: String,
    pub face_value_fen: i64,
    pub balance_fen: i64,
    pub used_fen: i64,
}

#[derive(Debug, Clone, Serialize)]
pub struct TenantLine {
    pub tenant: String,
    pub gpu_hours: f64,
    pub tokens: i64,
    pub kwh: f64,
    pub carbon_kg: f64,
    pub gross_fen: i64,
    pub voucher_fen: i64,
    pub net_fen: i64,
    pub vouchers: Vec<VoucherLine>,
}

/// The demo's memory over simulated time (flat: finished jobs are dropped
/// after a simulated day, their usage is in the ledger).
#[derive(Debug, Clone, Default, Serialize)]
pub struct Memory {
    /// Resident set size (MiB) at the end of each simulated day of the run.
    pub rss_mib_by_sim_day: Vec<f64>,
    pub rss_mib_end: f64,
    pub peak_rss_mib: f64,
    /// The last full day's RSS over the first's (≤ 1.5 is the goal); absent
    /// before two simulated days.
    pub rss_last_day_over_first: Option<f64>,
    /// Jobs the simulated cluster still holds (live and finished in the last day).
    pub jobs_kept: usize,
}

impl Memory {
    pub fn ratio(days: &[f64]) -> Option<f64> {
        match days {
            [first, .., last] if *first > 0.0 => Some(last / first),
            _ => None,
        }
    }
}

#[derive(Debug, Clone, Serialize)]
pub struct Summary {
    pub wall_s: f64,
    pub speed: f64,
    pub sim_start: String,
    pub sim_now: String,
    pub sim_hours: f64,
    pub jobs: JobCounts,
    pub gpus: u64,
    pub gpus_allocated: f64,
    pub allocation_pct: f64,
    pub regions: Vec<RegionLine>,
    pub tenants: Vec<TenantLine>,
    pub gross_fen: i64,
    pub voucher_fen: i64,
    pub net_fen: i64,
    /// Usage records the ledger stored in this run / found already stored.
    pub records_ingested: u64,
    pub records_already_present: u64,
    pub memory: Memory,
}

impl Summary {
    /// Human-readable tables.
    pub fn render(&self) -> String {
        let mut s = String::new();
        let j = &self.jobs;
        let _ = writeln!(
            s,
            "zhisuan demo: {:.0} s wall at {}× = {:.1} simulated hours ({} → {})",
            self.wall_s, self.speed, self.sim_hours, self.sim_start, self.sim_now
        );
        let _ = writeln!(
            s,
            "jobs: {} submitted, {} placed ({} running, {} finished), {} pending, {} failed",
            j.submitted, j.placed, j.running, j.finished, j.pending, j.failed
        );
        let _ = writeln!(
            s,
            "GPUs: {:.1} of {} allocated ({:.1}%)\n",
            self.gpus_allocated, self.gpus, self.allocation_pct
        );
        let _ = writeln!(
            s,
            "{:<14} {:<5} {:>6} {:>9} {:>7} {:>10} {:>11} {:>6} {:>10}",
            "region", "side", "GPUs", "alloc", "alloc%", "GPU-h", "kWh", "green", "carbon kg"
        );
        for r in &self.regions {
            let _ = writeln!(
                s,
                "{:<14} {:<5} {:>6} {:>9.1} {:>6.1}% {:>10.1} {:>11.1} {:>5.0}% {:>10.1}",
                r.name,
                r.side,
                r.gpus,
                r.gpus_allocated,
                r.allocation_pct,
                r.gpu_hours,
                r.facility_kwh,
                r.green_share * 100.0,
                r.carbon_kg
            );
        }
        let _ = writeln!(
            s,
            "\n{:<16} {:>10} {:>13} {:>10} {:>10} {:>14} {:>14} {:>14}",
            "tenant", "GPU-h", "tokens", "kWh", "carbon kg", "gross CNY", "voucher CNY", "net CNY"
        );
        for t in &self.tenants {
            let _ = writeln!(
                s,
                "{:<16} {:>10.1} {:>13} {:>10.1} {:>10.1} {:>14} {:>14} {:>14}",
                t.tenant,
                t.gpu_hours,
                t.tokens,
                t.kwh,
                t.carbon_kg,
                format_yuan(t.gross_fen),
                format_yuan(t.voucher_fen),
                format_yuan(t.net_fen)
            );
        }
        let _ = writeln!(
            s,
            "{:<16} {:>10} {:>13} {:>10} {:>10} {:>14} {:>14} {:>14}",
            "total",
            "",
            "",
            "",
            "",
            format_yuan(self.gross_fen),
            format_yuan(self.voucher_fen),
            format_yuan(self.net_fen)
        );
        let vouchers: Vec<_> = self
            .tenants
            .iter()
            .flat_map(|t| t.vouchers.iter().map(move |v| (t, v)))
            .collect();
        if !vouchers.is_empty() {
            let _ = writeln!(s, "\nvouchers (算力券):");
            for (t, v) in vouchers {
                let _ = writeln!(
                    s,
                    "  {:<16} {:<28} face {:>12}  used {:>12}  left {:>12}  ({})",
                    t.tenant,
                    v.id,
                    format_yuan(v.face_value_fen),
                    format_yuan(v.used_fen),
                    format_yuan(v.balance_fen),
                    v.issuer
                );
            }
        }
        let _ = writeln!(
            s,
            "\nledger: {} usage records stored this run, {} already present (restart without double counting)",
            self.records_ingested, self.records_already_present
        );
        let m = &self.memory;
        let _ = writeln!(
            s,
            "memory: {:.0} MiB resident ({:.0} MiB peak), {} jobs kept{}",
            m.rss_mib_end,
            m.peak_rss_mib,
            m.jobs_kept,
            m.rss_last_day_over_first
                .map(|r| format!(
                    "; after {} simulated days {:.2}× the first day's",
                    m.rss_mib_by_sim_day.len(),
                    r
                ))
                .unwrap_or_default()
        );
        s
    }
}

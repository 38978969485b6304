//! A tenant's use over time: GPU time, spend, voucher cover, carbon and
//! tokens per hour or per day (UTC), from the ledger's records — what the
//! tenant console draws. A record counts in the bucket its interval starts
//! in (metering windows never span a day; they may span an hour when the
//! meter's period is longer than one).

use serde::{Deserialize, Serialize};

use super::error::{LedgerError, Result};
use super::money::Fen;
use super::sql::Val;
use super::store::{require_tenant, Ledger};

/// Most buckets one series may hold.
pub const MAX_POINTS: i64 = 1_000;

/// The width of a series' buckets.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Bucket {
    Hour,
    Day,
}

impl Bucket {
    pub fn seconds(self) -> i64 {
        match self {
            Bucket::Hour => 3_600,
            Bucket::Day => 86_400,
        }
    }
}

/// One bucket of a tenant's use; every quantity exact (integers).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct SeriesPoint {
    /// Start of the bucket (unix s, UTC).
    pub start_s: i64,
    /// GPU time, milli-GPU-seconds (3,600,000 = one GPU-hour).
    pub milli_gpu_s: i64,
    /// Charges of the records starting in the bucket (GPU, energy, tokens).
    pub gross_fen: Fen,
    /// What vouchers paid of them.
    pub voucher_fen: Fen,
    /// Carbon of the facility energy, milligrams CO₂.
    pub carbon_mg: i64,
    /// Prompt + completion tokens.
    pub tokens: i64,
}

impl Ledger {
    /// Every bucket of `bucket` width in `[from_s, to_s)` (bounds rounded
    /// down to the bucket grid), zeros included, oldest first.
    pub fn usage_series(
        &self,
        tenant: &str,
        from_s: i64,
        to_s: i64,
        bucket: Bucket,
    ) -> Result<Vec<SeriesPoint>> {
        let b = bucket.seconds();
        let (from, to) = (from_s.div_euclid(b) * b, to_s.div_euclid(b) * b);
        if to <= from {
            return Err(LedgerError::invalid(
                "to",
                format!("{to_s} must be at least one {bucket:?} after from {from_s}")
                    .to_lowercase(),
            ));
        }
        let points = (to - from) / b;
        if points > MAX_POINTS {
            return Err(LedgerError::invalid(
                "from",
                format!(
                    "{points} buckets asked for; at most {MAX_POINTS}: shorten the range or use a wider bucket"
                ),
            ));
        }
        let params = [Val::T(tenant), Val::I(from), Val::I(to), Val::I(b)];
        let (usage, tokens) = self.read(|tx| {
            require_tenant(tx, tenant)?;
            let u = tx.rows(
                "SELECT (start_s / $4) * $4 AS k, CAST(SUM(milli_gpu_s) AS BIGINT), \
                 CAST(SUM(gpu_fen + energy_fen) AS BIGINT), \
                 CAST(SUM(gpu_voucher_fen + energy_voucher_fen) AS BIGINT), CAST(SUM(carbon_mg) AS BIGINT) \
                 FROM usage WHERE tenant = $1 AND start_s >= $2 AND start_s < $3 GROUP BY k",
                &params,
            )?;
            let t = tx.rows(
                "SELECT (start_s / $4) * $4 AS k, CAST(SUM(prompt_tokens + completion_tokens) AS BIGINT), \
                 CAST(SUM(fen) AS BIGINT), CAST(SUM(voucher_fen) AS BIGINT) \
                 FROM tokens WHERE tenant = $1 AND start_s >= $2 AND start_s < $3 GROUP BY k",
                &params,
            )?;
            Ok((u, t))
        })?;
        let mut out: Vec<SeriesPoint> = (0..points)
            .map(|i| SeriesPoint {
                start_s: from + i * b,
                ..SeriesPoint::default()
            })
            .collect();
        let slot = |k: i64| ((k - from) / b) as usize;
        for r in &usage {
            let p = &mut out[slot(r[0].i())];
            p.milli_gpu_s += r[1].i();
            p.gross_fen += r[2].i();
            p.voucher_fen += r[3].i();
            p.carbon_mg += r[4].i();
        }
        for r in &tokens {
            let p = &mut out[slot(r[0].i())];
            p.tokens += r[1].i();
            p.gross_fen += r[2].i();
            p.voucher_fen += r[3].i();
        }
        Ok(out)
    }
}

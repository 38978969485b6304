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

/// What a grouped series is split by.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Group {
    Tenant,
    Region,
}

impl Group {
    fn column(self) -> &'static str {
        match self {
            Group::Tenant => "tenant",
            Group::Region => "region",
        }
    }
}

/// Most groups one grouped series holds (the largest by gross, then GPU time).
pub const MAX_GROUPS: usize = 50;

/// The buckets of a range: the first one's start, their width, how many.
#[derive(Debug, Clone, Copy)]
pub(super) struct Grid {
    pub from: i64,
    pub width: i64,
    pub points: i64,
}

impl Grid {
    /// The buckets of `[from_s, to_s)` (bounds rounded down to the
    /// bucket grid), or why not.
    pub(super) fn of(from_s: i64, to_s: i64, bucket: Bucket) -> Result<Grid> {
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
        Ok(Grid {
            from,
            width: b,
            points,
        })
    }

    /// Where the last bucket ends.
    pub(super) fn end(self) -> i64 {
        self.from + self.points * self.width
    }

    /// The index of the bucket starting at `start_s`.
    pub(super) fn slot(self, start_s: i64) -> usize {
        ((start_s - self.from) / self.width) as usize
    }

    /// Where each bucket starts, oldest first.
    pub(super) fn starts(self) -> impl Iterator<Item = i64> {
        (0..self.points).map(move |i| self.from + i * self.width)
    }

    /// Every bucket, zero.
    fn empty(self) -> Vec<SeriesPoint> {
        self.starts()
            .map(|start_s| SeriesPoint {
                start_s,
                ..SeriesPoint::default()
            })
            .collect()
    }
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
        let grid = Grid::of(from_s, to_s, bucket)?;
        let mut groups = self.series(Some(tenant), None, grid)?;
        Ok(groups.pop().map_or_else(|| grid.empty(), |(_, p)| p))
    }

    /// Every tenant's use together, split by tenant or region (admin):
    /// the [`MAX_GROUPS`] largest groups, each on the same buckets.
    pub fn grouped_series(
        &self,
        group: Group,
        from_s: i64,
        to_s: i64,
        bucket: Bucket,
    ) -> Result<Vec<(String, Vec<SeriesPoint>)>> {
        let mut groups = self.series(None, Some(group), Grid::of(from_s, to_s, bucket)?)?;
        let size = |p: &[SeriesPoint]| {
            p.iter().fold((0i64, 0i64), |(f, g), x| {
                (f + x.gross_fen, g + x.milli_gpu_s)
            })
        };
        groups.sort_by(|a, b| size(&b.1).cmp(&size(&a.1)).then_with(|| a.0.cmp(&b.0)));
        groups.truncate(MAX_GROUPS);
        groups.sort_by(|a, b| a.0.cmp(&b.0));
        Ok(groups)
    }

    /// The series of one tenant (`tenant`, one group) or of all split by
    /// `group`; only groups with records are returned.
    fn series(
        &self,
        tenant: Option<&str>,
        group: Option<Group>,
        grid: Grid,
    ) -> Result<Vec<(String, Vec<SeriesPoint>)>> {
        // One tenant's series is its one group; tenant names are never empty.
        let g = group.map_or("tenant", Group::column);
        let who = if tenant.is_some() {
            "tenant = $1"
        } else {
            "tenant <> $1"
        };
        let params = [
            Val::T(tenant.unwrap_or("")),
            Val::I(grid.from),
            Val::I(grid.end()),
            Val::I(grid.width),
        ];
        let (usage, tokens) = self.read(|tx| {
            if let Some(t) = tenant {
                require_tenant(tx, t)?;
            }
            let u = tx.rows(
                &format!(
                    "SELECT {g} AS g, (start_s / $4) * $4 AS k, CAST(SUM(milli_gpu_s) AS BIGINT), \
                     CAST(SUM(gpu_fen + energy_fen) AS BIGINT), \
                     CAST(SUM(gpu_voucher_fen + energy_voucher_fen) AS BIGINT), CAST(SUM(carbon_mg) AS BIGINT) \
                     FROM usage WHERE {who} AND start_s >= $2 AND start_s < $3 GROUP BY g, k"
                ),
                &params,
            )?;
            let t = tx.rows(
                &format!(
                    "SELECT {g} AS g, (start_s / $4) * $4 AS k, CAST(SUM(prompt_tokens + completion_tokens) AS BIGINT), \
                     CAST(SUM(fen) AS BIGINT), CAST(SUM(voucher_fen) AS BIGINT) \
                     FROM tokens WHERE {who} AND start_s >= $2 AND start_s < $3 GROUP BY g, k"
                ),
                &params,
            )?;
            Ok((u, t))
        })?;
        let mut out: std::collections::BTreeMap<String, Vec<SeriesPoint>> = Default::default();
        for r in &usage {
            let series = out.entry(r[0].t()).or_insert_with(|| grid.empty());
            let p = &mut series[grid.slot(r[1].i())];
            p.milli_gpu_s += r[2].i();
            p.gross_fen += r[3].i();
            p.voucher_fen += r[4].i();
            p.carbon_mg += r[5].i();
        }
        for r in &tokens {
            let series = out.entry(r[0].t()).or_insert_with(|| grid.empty());
            let p = &mut series[grid.slot(r[1].i())];
            p.tokens += r[2].i();
            p.gross_fen += r[3].i();
            p.voucher_fen += r[4].i();
        }
        Ok(out.into_iter().collect())
    }
}

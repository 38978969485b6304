//! Ingestion: a batch of usage and token records, metered, split at month
//! boundaries, priced, redeemed against vouchers, added to the rollups and
//! posted — one transaction, records already stored skipped (replays never
//! double-charge).

use super::chain::{redemption_hash, Chain, SealedRedemption};
use super::error::Result;
use super::money::Fen;
use super::plan::{plan_batch, token_key, BatchPlan, TokenKey};
use super::sql::{RollupAdd, Rows, Tx, Val};
use super::store::{
    audit_tx, load_rates, post_entry_in, require_tenant, voucher_from_row, IngestReport, Ledger,
    VOUCHER_COLUMNS,
};
use super::types::{
    crosses_month, split_by_month_into, MeteredTokens, MeteredUsage, MonthPieces, TokenRecord,
    UsageRecord,
};
use super::vouchers::VoucherBook;
use std::collections::{BTreeMap, BTreeSet, HashSet};

impl Ledger {
    /// Ingests usage and token records in one transaction. Every record is
    /// validated and rated first: one bad record rejects the whole call
    /// (naming `usage[i].field`) and nothing is written. Records already in
    /// the ledger (same id) are skipped, so replays never double-charge.
    pub fn ingest(&self, usage: &[UsageRecord], tokens: &[TokenRecord]) -> Result<IngestReport> {
        self.ingest_metered(meter_usage(usage)?, meter_tokens(tokens)?)
    }

    /// [`Ledger::ingest`] for records already metered (e.g. built by the simulator).
    /// A record whose interval crosses a UTC month boundary is stored as one
    /// row per month ([`split_by_month_into`]); the report
    /// counts rows. Such a record is a duplicate when its pieces are stored,
    /// and also when the record itself is (stored whole by a version before
    /// the month split), so replays across the upgrade never double-charge.
    pub fn ingest_metered(
        &self,
        usage: Vec<MeteredUsage>,
        tokens: Vec<MeteredTokens>,
    ) -> Result<IngestReport> {
        let batch = Batch::of(usage, tokens);
        let (total_usage, total_tokens) = (batch.usage.len(), batch.tokens.len());
        let plan = self.write(move |tx| ingest_in(tx, batch))?;
        let report = report_of(&plan, total_usage, total_tokens);
        self.observe_plan(&plan)?;
        Ok(report)
    }

    /// Counts a written batch in the per-tenant metrics (when registered).
    pub(super) fn observe_plan(&self, plan: &BatchPlan) -> Result<()> {
        if let Some(m) = self.metrics() {
            m.observe(plan);
            if !plan.voucher_draws.is_empty() {
                for v in self.vouchers(None)? {
                    if plan.voucher_draws.contains_key(&v.id) {
                        m.set_voucher(&v);
                    }
                }
            }
        }
        Ok(())
    }
}

/// The stored micro-fen totals of the token rollups `tokens` fall in.
fn stored_token_micro(
    tx: &mut dyn Tx,
    tokens: &[(usize, MeteredTokens)],
) -> Result<BTreeMap<TokenKey, i64>> {
    let keys: BTreeSet<TokenKey> = tokens.iter().map(|(_, t)| token_key(t)).collect();
    let mut out = BTreeMap::new();
    for k in keys {
        let month = k.month.to_string();
        let rows = tx.rows(
            "SELECT micro_fen FROM tokens_rollup WHERE tenant = $1 AND month = $2 AND tier = $3",
            &[Val::T(&k.tenant), Val::T(&month), Val::T(k.tier.as_str())],
        )?;
        if let Some(r) = rows.first() {
            out.insert(k, r[0].i());
        }
    }
    Ok(out)
}

/// Adds a batch's monthly sums to the stored rollups (same transaction as
/// the rows, so rollups always equal the sums of the stored rows): one call
/// per rollup table.
fn add_rollups(tx: &mut dyn Tx, plan: &BatchPlan) -> Result<()> {
    let usage = RollupAdd {
        table: "usage_rollup",
        key: &["tenant", "month", "model", "region"],
        sums: &[
            "records",
            "milli_gpu_s",
            "gpu_fen",
            "gpu_voucher_fen",
            "it_energy_j",
            "facility_j",
            "carbon_mg",
            "energy_fen",
            "energy_voucher_fen",
        ],
        rows: plan
            .usage_rollup
            .iter()
            .map(|(k, s)| {
                (
                    vec![
                        k.tenant.clone(),
                        k.month.to_string(),
                        k.model.clone(),
                        k.region.clone(),
                    ],
                    vec![
                        s.records,
                        s.milli_gpu_s,
                        s.gpu_fen,
                        s.gpu_voucher_fen,
                        s.it_energy_j,
                        s.facility_j,
                        s.carbon_mg,
                        s.energy_fen,
                        s.energy_voucher_fen,
                    ],
                )
            })
            .collect(),
    };
    let tokens = RollupAdd {
        table: "tokens_rollup",
        key: &["tenant", "month", "tier"],
        sums: &[
            "records",
            "prompt_tokens",
            "completion_tokens",
            "fen",
            "voucher_fen",
            "micro_fen",
        ],
        rows: plan
            .token_rollup
            .iter()
            .map(|(k, s)| {
                (
                    vec![
                        k.tenant.clone(),
                        k.month.to_string(),
                        k.tier.as_str().to_string(),
                    ],
                    vec![
                        s.records,
                        s.prompt_tokens,
                        s.completion_tokens,
                        s.fen,
                        s.voucher_fen,
                        s.micro_fen,
                    ],
                )
            })
            .collect(),
    };
    let redemptions = RollupAdd {
        table: "redemptions_rollup",
        key: &["tenant", "month", "voucher_id"],
        sums: &["fen"],
        rows: plan
            .redemption_rollup
            .iter()
            .map(|((tenant, month, voucher), fen)| {
                (
                    vec![tenant.clone(), month.to_string(), voucher.clone()],
                    vec![*fen],
                )
            })
            .collect(),
    };
    for add in [&usage, &tokens, &redemptions] {
        tx.add_to_rollup(add)?;
    }
    Ok(())
}

/// A record of the caller's batch that crosses a month boundary: its index,
/// and its whole key (start, id). Versions before the month split stored
/// such a record whole, under this key.
struct Whole {
    index: usize,
    start_s: i64,
    id: String,
}

/// Splits a batch at month boundaries ([`split_by_month_into`]), keeping
/// each row's index in the caller's batch (errors name it); also returns the
/// whole key of every record that was split.
fn split_batch<R: MonthPieces>(records: Vec<R>) -> (Vec<(usize, R)>, Vec<Whole>) {
    let mut rows = Vec::with_capacity(records.len());
    let mut wholes = Vec::new();
    let mut pieces = Vec::new();
    for (index, r) in records.into_iter().enumerate() {
        let (start_s, end_s) = r.span();
        if !crosses_month(start_s, end_s) {
            rows.push((index, r)); // the common case: nothing to cut
            continue;
        }
        wholes.push(Whole {
            index,
            start_s,
            id: r.id().to_string(),
        });
        split_by_month_into(r, &mut pieces);
        rows.extend(pieces.drain(..).map(|p| (index, p)));
    }
    (rows, wholes)
}

/// The rows of a split batch that are not stored yet. A row is dropped when
/// its own id is stored (a replay after this version), when the record it
/// was cut from is stored whole under the record's id (a replay of a record
/// that a version before the month split ingested unsplit), or when it
/// repeats an earlier row of the batch (first wins). One existence check
/// for pieces and wholes together, bounded like every check by the latest
/// stored start (a whole key starts where its first piece does).
fn new_rows<R: MonthPieces>(
    tx: &mut dyn Tx,
    table: &'static str,
    rows: Vec<(usize, R)>,
    wholes: &[Whole],
) -> Result<Vec<(usize, R)>> {
    let keys: Vec<(i64, &str)> = rows
        .iter()
        .map(|(_, r)| (r.span().0, r.id()))
        .chain(wholes.iter().map(|w| (w.start_s, w.id.as_str())))
        .collect();
    let stored = tx.existing(table, &keys)?;
    drop(keys);
    let stored_whole: HashSet<usize> = wholes
        .iter()
        .filter(|w| stored.contains(&w.id))
        .map(|w| w.index)
        .collect();
    let mut seen: HashSet<&str> = HashSet::with_capacity(rows.len());
    let keep: Vec<bool> = rows
        .iter()
        .map(|(index, r)| {
            !stored.contains(r.id())
                && (stored_whole.is_empty() || !stored_whole.contains(index))
                && seen.insert(r.id())
        })
        .collect();
    drop(seen);
    Ok(rows
        .into_iter()
        .zip(keep)
        .filter_map(|(r, keep)| keep.then_some(r))
        .collect())
}

fn report_of(plan: &BatchPlan, total_usage: usize, total_tokens: usize) -> IngestReport {
    let gross: Fen = plan
        .usage
        .iter()
        .map(|r| r.gpu_fen + r.energy_fen)
        .sum::<Fen>()
        + plan.tokens.iter().map(|r| r.fen).sum::<Fen>();
    let voucher: Fen = plan.redemptions.iter().map(|r| r.fen).sum();
    IngestReport {
        usage_new: plan.usage.len(),
        usage_duplicate: total_usage - plan.usage.len(),
        tokens_new: plan.tokens.len(),
        tokens_duplicate: total_tokens - plan.tokens.len(),
        gross_fen: gross,
        voucher_fen: voucher,
        net_fen: gross - voucher,
    }
}

/// Usage records validated and metered; an error names `usage[i].field`.
fn meter_usage(usage: &[UsageRecord]) -> Result<Vec<MeteredUsage>> {
    usage
        .iter()
        .enumerate()
        .map(|(i, r)| r.meter().map_err(|e| e.at(&format!("usage[{i}]."))))
        .collect()
}

/// Token records validated and metered; an error names `tokens[i].field`.
pub(super) fn meter_tokens(tokens: &[TokenRecord]) -> Result<Vec<MeteredTokens>> {
    tokens
        .iter()
        .enumerate()
        .map(|(i, r)| r.meter().map_err(|e| e.at(&format!("tokens[{i}]."))))
        .collect()
}

/// Metered records to store, split at month boundaries ([`split_batch`]).
pub(super) struct Batch {
    usage: Vec<(usize, MeteredUsage)>,
    usage_wholes: Vec<Whole>,
    tokens: Vec<(usize, MeteredTokens)>,
    token_wholes: Vec<Whole>,
}

impl Batch {
    pub(super) fn of(usage: Vec<MeteredUsage>, tokens: Vec<MeteredTokens>) -> Batch {
        let (usage, usage_wholes) = split_batch(usage);
        let (tokens, token_wholes) = split_batch(tokens);
        Batch {
            usage,
            usage_wholes,
            tokens,
            token_wholes,
        }
    }
}

/// Stores a batch's new records in `tx`: prices them, redeems vouchers,
/// updates rollups and posts the charges (nothing for records already stored).
pub(super) fn ingest_in(tx: &mut dyn Tx, b: Batch) -> Result<BatchPlan> {
    let tenants: BTreeSet<String> = b
        .usage
        .iter()
        .map(|(_, u)| u.tenant.clone())
        .chain(b.tokens.iter().map(|(_, t)| t.tenant.clone()))
        .collect();
    for t in &tenants {
        require_tenant(tx, t)?;
    }
    let rates = load_rates(tx)?;
    let new_usage = new_rows(tx, "usage", b.usage, &b.usage_wholes)?;
    let new_tokens = new_rows(tx, "tokens", b.tokens, &b.token_wholes)?;
    let mut vouchers = Vec::new();
    for t in &tenants {
        for r in tx.rows(
            &format!(
                "SELECT {VOUCHER_COLUMNS} FROM vouchers WHERE tenant = $1 AND balance_fen > 0"
            ),
            &[Val::T(t)],
        )? {
            vouchers.push(voucher_from_row(&r)?);
        }
    }
    let mut book = VoucherBook::new(vouchers);
    let token_micro = stored_token_micro(tx, &new_tokens)?;
    let plan = plan_batch(new_usage, new_tokens, &rates, &mut book, &token_micro)?;
    if plan.is_empty() {
        return Ok(plan);
    }
    tx.insert(Rows::Usage(&plan.usage, &plan.entry_id))?;
    tx.insert(Rows::Tokens(&plan.tokens, &plan.entry_id))?;
    // The batch's redemptions are sealed by its charges entry, the next link.
    let mut chain = Chain::open(tx)?;
    let seq = chain.next_seq();
    let sealed: Vec<SealedRedemption> = plan
        .redemptions
        .iter()
        .enumerate()
        .map(|(pos, row)| SealedRedemption {
            row,
            seq,
            pos: pos as i64,
        })
        .collect();
    tx.insert(Rows::Redemptions(&sealed))?;
    let seals: Vec<[u8; 32]> = plan.redemptions.iter().map(redemption_hash).collect();
    add_rollups(tx, &plan)?;
    for (voucher, fen) in book.shared() {
        tx.exec(
            "UPDATE vouchers SET shared_gross_fen = shared_gross_fen + $1 WHERE id = $2",
            &[Val::I(*fen), Val::T(voucher)],
        )?;
    }
    for (voucher, (fen, charges)) in &plan.voucher_draws {
        tx.exec(
            "UPDATE vouchers SET balance_fen = balance_fen - $1 WHERE id = $2",
            &[Val::I(*fen), Val::T(voucher)],
        )?;
        audit_tx(
            tx,
            "ledger",
            "voucher.redeem",
            voucher,
            &serde_json::json!({ "fen": fen, "charges": charges, "entry": plan.entry_id }),
        )?;
    }
    let memo = format!(
        "{} usage, {} token records",
        plan.usage.len(),
        plan.tokens.len()
    );
    post_entry_in(
        tx,
        &mut chain,
        &plan.entry_id,
        "charges",
        &memo,
        &plan.postings,
        &seals,
    )?;
    chain.save(tx)?;
    Ok(plan)
}

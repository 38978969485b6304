//! The tamper-evident chain (for regulators reconciling subsidies): every
//! journal entry carries a link — `chain_seq` and `chain_hash` =
//! SHA-256(previous hash ‖ seq ‖ the entry's canonical bytes) — and the
//! canonical bytes of an entry include its postings and the SHA-256 of
//! every voucher redemption it seals (those of its batch, in their stored
//! position). Each redemption carries the link that seals it (`chain_seq`)
//! and its position there (`chain_pos`). The head (last seq and hash) is
//! kept in `chain_head`, written in the same transaction as the rows.
//! Editing, deleting or inserting an entry, a posting or a redemption, or
//! cutting the tail, breaks the chain at a named link
//! ([`Ledger::verify_chain`], `zhisuan ledger verify`); a statement carries
//! the head it was computed at, so a chain recomputed wholesale after the
//! fact no longer holds a head a tenant or regulator kept.
//!
//! Sealing redemptions by batch rather than linking each one keeps the cost
//! on the ingestion path to one hash per redemption and two integer columns
//! (no index, no stored per-row hash): a link per row cost 17% of SQLite
//! ingestion throughput (`cargo bench --bench ledger`, docs/ledger.md).
//! Usage and token records are not sealed one by one: their money reaches
//! the chain through the postings of their batch's charges entry.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use super::error::{LedgerError, Result};
use super::money::Fen;
use super::plan::Redemption;
use super::sql::{Cell, Tx, Val};
use super::store::Ledger;
use super::types::ChargeKind;

/// The last link: what a statement records and `verify --head` checks.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ChainHead {
    pub seq: i64,
    /// Hex SHA-256.
    pub hash: String,
}

impl std::fmt::Display for ChainHead {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}:{}", self.seq, self.hash)
    }
}

impl std::str::FromStr for ChainHead {
    type Err = String;
    fn from_str(s: &str) -> std::result::Result<Self, String> {
        let bad = || {
            format!(
                "chain head {s:?}: expected SEQ:HASH (e.g. 42:9f86d0…, as a statement prints it)"
            )
        };
        let (seq, hash) = s.split_once(':').ok_or_else(bad)?;
        let seq: i64 = seq.parse().map_err(|_| bad())?;
        if seq < 1 || hash.len() != 64 || !hash.bytes().all(|b| b.is_ascii_hexdigit()) {
            return Err(bad());
        }
        Ok(ChainHead {
            seq,
            hash: hash.to_ascii_lowercase(),
        })
    }
}

/// The hash before the first link.
const GENESIS: [u8; 32] = [0; 32];

/// Length-prefixed fields: no two rows share an encoding.
#[derive(Default)]
struct Canon(Vec<u8>);

impl Canon {
    fn text(mut self, s: &str) -> Self {
        self.0.extend_from_slice(&(s.len() as u64).to_le_bytes());
        self.0.extend_from_slice(s.as_bytes());
        self
    }
    fn int(mut self, v: i64) -> Self {
        self.0.extend_from_slice(&v.to_le_bytes());
        self
    }
}

/// A journal entry's canonical bytes: its fields, its postings in account
/// order, then the hashes of the redemptions it seals in their positions.
fn entry_bytes(
    id: &str,
    at_s: i64,
    kind: &str,
    memo: &str,
    postings: &BTreeMap<String, Fen>,
    sealed: &[[u8; 32]],
) -> Vec<u8> {
    let mut c = Canon::default()
        .text("journal")
        .text(id)
        .int(at_s)
        .text(kind)
        .text(memo)
        .int(postings.len() as i64);
    for (account, amount) in postings {
        c = c.text(account).int(*amount);
    }
    c = c.int(sealed.len() as i64);
    for h in sealed {
        c.0.extend_from_slice(h);
    }
    c.0
}

/// A redemption's hash, as its entry seals it.
pub(super) fn redemption_hash(r: &Redemption) -> [u8; 32] {
    let c = Canon::default()
        .text("redemption")
        .text(&r.record_id)
        .text(r.kind.as_str())
        .text(&r.voucher_id)
        .text(&r.tenant)
        .int(r.fen)
        .int(r.at_s);
    Sha256::digest(&c.0).into()
}

fn link_hash(prev: &[u8; 32], seq: i64, row: &[u8]) -> [u8; 32] {
    let mut h = Sha256::new();
    h.update(prev);
    h.update(seq.to_le_bytes());
    h.update(row);
    h.finalize().into()
}

fn unhex(hash: &str) -> Option<[u8; 32]> {
    let mut out = [0u8; 32];
    hex::decode_to_slice(hash, &mut out).ok()?;
    Some(out)
}

/// Appends links within one write transaction: [`Chain::open`] reads the
/// head, each entry takes the next link, [`Chain::save`] writes the head.
pub(super) struct Chain {
    seq: i64,
    hash: [u8; 32],
}

/// One entry's link.
pub(crate) struct Link {
    pub seq: i64,
    pub hash: String,
}

/// A redemption as it is stored: sealed by link `seq` at position `pos`.
pub(crate) struct SealedRedemption<'a> {
    pub row: &'a Redemption,
    pub seq: i64,
    pub pos: i64,
}

impl Chain {
    pub fn open(tx: &mut dyn Tx) -> Result<Chain> {
        Ok(match read_head(tx)? {
            None => Chain {
                seq: 0,
                hash: GENESIS,
            },
            Some(h) => Chain {
                seq: h.seq,
                hash: unhex(&h.hash).ok_or_else(|| {
                    LedgerError::Storage(format!(
                        "chain head {h} is not a SHA-256; run `zhisuan ledger verify`"
                    ))
                })?,
            },
        })
    }

    /// The link the next entry will take (redemptions it seals name it).
    pub fn next_seq(&self) -> i64 {
        self.seq + 1
    }

    /// The next entry's link; `sealed`: the hashes of the redemptions it
    /// seals, by position.
    pub fn entry(
        &mut self,
        id: &str,
        at_s: i64,
        kind: &str,
        memo: &str,
        postings: &BTreeMap<String, Fen>,
        sealed: &[[u8; 32]],
    ) -> Link {
        self.seq += 1;
        let bytes = entry_bytes(id, at_s, kind, memo, postings, sealed);
        self.hash = link_hash(&self.hash, self.seq, &bytes);
        Link {
            seq: self.seq,
            hash: hex::encode(self.hash),
        }
    }

    pub fn save(&self, tx: &mut dyn Tx) -> Result<()> {
        if self.seq == 0 {
            return Ok(());
        }
        let hash = hex::encode(self.hash);
        tx.exec(
            "INSERT INTO chain_head (id, seq, hash) VALUES (1, $1, $2) \
             ON CONFLICT (id) DO UPDATE SET seq = excluded.seq, hash = excluded.hash",
            &[Val::I(self.seq), Val::T(&hash)],
        )?;
        Ok(())
    }
}

pub(super) fn read_head(tx: &mut dyn Tx) -> Result<Option<ChainHead>> {
    let rows = tx.rows("SELECT seq, hash FROM chain_head WHERE id = 1", &[])?;
    Ok(rows.first().map(|r| ChainHead {
        seq: r[0].i(),
        hash: r[1].t(),
    }))
}

/// Links what a ledger held before the chain existed (migration 8): its
/// journal entries in time order, then one `chain.genesis` entry (no
/// postings) sealing the redemptions already stored, in key order.
pub(super) fn link_existing(tx: &mut dyn Tx) -> Result<()> {
    let mut chain = Chain::open(tx)?;
    let entries = tx.rows(
        "SELECT id, at_s, kind, memo FROM journal ORDER BY at_s, id",
        &[],
    )?;
    for e in entries {
        let id = e[0].t();
        let postings = postings_of(tx, &id)?;
        let link = chain.entry(&id, e[1].i(), &e[2].t(), &e[3].t(), &postings, &[]);
        tx.exec(
            "UPDATE journal SET chain_seq = $1, chain_hash = $2 WHERE id = $3",
            &[Val::I(link.seq), Val::T(&link.hash), Val::T(&id)],
        )?;
    }
    let redemptions = tx.rows(
        &format!(
            "SELECT {REDEMPTION_COLUMNS} FROM redemptions ORDER BY at_s, record_id, kind, voucher_id"
        ),
        &[],
    )?;
    if redemptions.is_empty() {
        return chain.save(tx);
    }
    let seq = chain.next_seq();
    let mut sealed = Vec::with_capacity(redemptions.len());
    for (pos, row) in redemptions.iter().enumerate() {
        let r = redemption_of(row)?;
        sealed.push(redemption_hash(&r));
        tx.exec(
            "UPDATE redemptions SET chain_seq = $1, chain_pos = $2 \
             WHERE at_s = $3 AND record_id = $4 AND kind = $5 AND voucher_id = $6",
            &[
                Val::I(seq),
                Val::I(pos as i64),
                Val::I(r.at_s),
                Val::T(&r.record_id),
                Val::T(r.kind.as_str()),
                Val::T(&r.voucher_id),
            ],
        )?;
    }
    let (id, at_s) = ("chain-genesis", super::store::now_s());
    let memo = format!("{} redemptions stored before the chain", sealed.len());
    let link = chain.entry(id, at_s, GENESIS_KIND, &memo, &BTreeMap::new(), &sealed);
    tx.exec(
        "INSERT INTO journal (id, at_s, kind, memo, chain_seq, chain_hash) VALUES ($1, $2, $3, $4, $5, $6)",
        &[
            Val::T(id),
            Val::I(at_s),
            Val::T(GENESIS_KIND),
            Val::T(&memo),
            Val::I(link.seq),
            Val::T(&link.hash),
        ],
    )?;
    chain.save(tx)
}

/// The kind of the entry that seals the redemptions of an older ledger.
const GENESIS_KIND: &str = "chain.genesis";

fn postings_of(tx: &mut dyn Tx, entry: &str) -> Result<BTreeMap<String, Fen>> {
    Ok(tx
        .rows(
            "SELECT account, amount_fen FROM postings WHERE entry_id = $1",
            &[Val::T(entry)],
        )?
        .into_iter()
        .map(|r| (r[0].t(), r[1].i()))
        .collect())
}

const REDEMPTION_COLUMNS: &str = "record_id, kind, voucher_id, tenant, fen, at_s";

fn redemption_of(r: &[Cell]) -> Result<Redemption> {
    let kind = r[1].t();
    Ok(Redemption {
        record_id: r[0].t(),
        kind: ChargeKind::parse(&kind).ok_or_else(|| {
            LedgerError::Storage(format!("redemption of kind {kind:?}: unknown kind"))
        })?,
        voucher_id: r[2].t(),
        tenant: r[3].t(),
        fen: r[4].i(),
        at_s: r[5].i(),
    })
}

/// Where the chain first fails.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ChainBreak {
    /// The link (sequence number) at which it fails; 0: a row outside it.
    pub seq: i64,
    /// The row, in words (e.g. `journal entry batch-…`).
    pub row: String,
    pub why: String,
}

/// What [`Ledger::verify_chain`] found.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ChainReport {
    /// Links (journal entries) recomputed.
    pub links: i64,
    pub journal_entries: i64,
    pub redemptions: i64,
    /// The stored head.
    pub head: Option<ChainHead>,
    /// `None`: every link recomputes, in order, up to the head.
    pub broken: Option<ChainBreak>,
}

/// Rows read per round trip while verifying.
const PAGE: i64 = 5_000;

impl Ledger {
    /// The chain's head now (`None` while nothing is linked).
    pub fn chain_head(&self) -> Result<Option<ChainHead>> {
        self.read(read_head)
    }

    /// Recomputes the chain from the first link to the stored head and
    /// names the first link that fails: an entry, posting or sealed
    /// redemption edited (its link does not recompute), an entry deleted or
    /// renumbered (a link missing), a row inserted behind the ledger's back
    /// (no link, or a redemption its entry does not seal), or the tail cut
    /// (the head names a link that is not there). With `expect`, also checks
    /// that the chain holds that head (one a statement printed).
    pub fn verify_chain(&self, expect: Option<&ChainHead>) -> Result<ChainReport> {
        self.read(|tx| verify_in(tx, expect))
    }
}

fn broken(seq: i64, row: String, why: impl Into<String>) -> Option<ChainBreak> {
    Some(ChainBreak {
        seq,
        row,
        why: why.into(),
    })
}

pub(super) fn verify_in(tx: &mut dyn Tx, expect: Option<&ChainHead>) -> Result<ChainReport> {
    verify_paged(tx, expect, PAGE)
}

fn verify_paged(tx: &mut dyn Tx, expect: Option<&ChainHead>, page_len: i64) -> Result<ChainReport> {
    let head = read_head(tx)?;
    let count = |tx: &mut dyn Tx, sql: &str| -> Result<i64> {
        Ok(tx.rows(sql, &[])?.first().map_or(0, |r| r[0].i()))
    };
    let mut report = ChainReport {
        links: 0,
        journal_entries: count(tx, "SELECT COUNT(*) FROM journal")?,
        redemptions: count(tx, "SELECT COUNT(*) FROM redemptions")?,
        head: head.clone(),
        broken: None,
    };
    report.broken = outside_the_chain(tx)?;
    if report.broken.is_some() {
        return Ok(report);
    }
    let mut sealed = sealed_redemptions(tx, page_len)?;
    let last = head.as_ref().map_or(0, |h| h.seq);
    let max_stored = count(tx, "SELECT MAX(chain_seq) FROM journal")?;
    let end = last.max(max_stored);
    let mut prev = GENESIS;
    let mut from = 0;
    while from < end {
        let to = from + page_len;
        let mut page = read_entries(tx, from, to)?;
        for seq in from + 1..=to.min(end) {
            let Some(mut rows) = page.remove(&seq) else {
                report.broken = broken(
                    seq,
                    "(none)".into(),
                    "the link is missing: its journal entry was deleted or renumbered",
                );
                return Ok(report);
            };
            if rows.len() > 1 {
                let (a, b) = (rows.swap_remove(1), &rows[0]);
                report.broken = broken(
                    seq,
                    a.id,
                    format!("two entries hold link {seq} ({} too)", b.id),
                );
                return Ok(report);
            }
            let e = rows.swap_remove(0);
            let row = format!("journal entry {}", e.id);
            if seq > last {
                report.broken = broken(
                    seq,
                    row,
                    format!("the link is past the stored head ({last}): the head was moved back"),
                );
                return Ok(report);
            }
            let mut seals = sealed.remove(&seq).unwrap_or_default();
            seals.sort_unstable_by_key(|(pos, _)| *pos);
            if seals
                .iter()
                .enumerate()
                .any(|(i, (pos, _))| *pos != i as i64)
            {
                report.broken = broken(
                    seq,
                    row,
                    "the redemptions it seals are not at positions 0, 1, …: one was deleted or added",
                );
                return Ok(report);
            }
            let hashes: Vec<[u8; 32]> = seals.into_iter().map(|(_, h)| h).collect();
            let bytes = entry_bytes(&e.id, e.at_s, &e.kind, &e.memo, &e.postings, &hashes);
            let hash = link_hash(&prev, seq, &bytes);
            if hex::encode(hash) != e.hash {
                report.broken = broken(
                    seq,
                    row,
                    format!(
                        "it does not hash to its stored link: the entry, a posting of it or one of the {} redemptions it seals was changed (or a link before it rewritten)",
                        hashes.len()
                    ),
                );
                return Ok(report);
            }
            prev = hash;
            report.links = seq;
        }
        from = to;
    }
    if let Some((seq, rows)) = sealed.into_iter().next() {
        report.broken = broken(
            seq,
            format!("{} redemptions", rows.len()),
            format!("they name link {seq} to seal them, which no journal entry holds"),
        );
        return Ok(report);
    }
    if let Some(h) = &head {
        if hex::encode(prev) != h.hash {
            report.broken = broken(
                h.seq,
                "chain head".into(),
                "the stored head's hash is not the last link's",
            );
            return Ok(report);
        }
    }
    if let Some(want) = expect {
        let held = tx.rows(
            "SELECT chain_hash FROM journal WHERE chain_seq = $1",
            &[Val::I(want.seq)],
        )?;
        if !held.iter().any(|r| r[0].t() == want.hash) {
            report.broken = broken(
                want.seq,
                format!("expected head {want}"),
                "the chain does not hold this head: entries up to it were rewritten (or it comes from another ledger)",
            );
        }
    }
    Ok(report)
}

/// A row the chain does not cover: an entry or redemption without a link,
/// postings without their entry.
fn outside_the_chain(tx: &mut dyn Tx) -> Result<Option<ChainBreak>> {
    let mut first = |sql: &str| -> Result<Option<Vec<Cell>>> {
        Ok(tx.rows(&format!("{sql} LIMIT 1"), &[])?.into_iter().next())
    };
    if let Some(r) = first("SELECT id FROM journal WHERE chain_seq IS NULL ORDER BY id")? {
        return Ok(broken(
            0,
            format!("journal entry {}", r[0].t()),
            "it has no link",
        ));
    }
    if let Some(r) = first(&format!(
        "SELECT {REDEMPTION_COLUMNS} FROM redemptions WHERE chain_seq IS NULL OR chain_pos IS NULL"
    ))? {
        let r = redemption_of(&r)?;
        return Ok(broken(0, describe_redemption(&r), "no entry seals it"));
    }
    if let Some(r) =
        first("SELECT entry_id FROM postings WHERE entry_id NOT IN (SELECT id FROM journal)")?
    {
        return Ok(broken(
            0,
            format!("postings of {}", r[0].t()),
            "their journal entry does not exist",
        ));
    }
    Ok(None)
}

fn describe_redemption(r: &Redemption) -> String {
    format!(
        "redemption of voucher {} for {} record {} at {}",
        r.voucher_id,
        r.kind.as_str(),
        r.record_id,
        r.at_s
    )
}

/// Redemptions' hashes by the link that seals them, each with its position.
type Seals = BTreeMap<i64, Vec<(i64, [u8; 32])>>;

/// Every redemption's hash by the link that seals it, with its position;
/// read in key order a page at a time (no index but the primary key).
fn sealed_redemptions(tx: &mut dyn Tx, page_len: i64) -> Result<Seals> {
    let mut out = Seals::new();
    let cols = format!("chain_seq, chain_pos, {REDEMPTION_COLUMNS}");
    let order = "ORDER BY at_s, record_id, kind, voucher_id";
    let mut rows = tx.rows(
        &format!("SELECT {cols} FROM redemptions {order} LIMIT {page_len}"),
        &[],
    )?;
    while !rows.is_empty() {
        for row in &rows {
            let r = redemption_of(&row[2..])?;
            out.entry(row[0].i())
                .or_default()
                .push((row[1].i(), redemption_hash(&r)));
        }
        let Some(last) = rows.last() else { break };
        let (record, kind, voucher, at_s) = (last[2].t(), last[3].t(), last[4].t(), last[7].i());
        rows = tx.rows(
            &format!(
                "SELECT {cols} FROM redemptions WHERE (at_s, record_id, kind, voucher_id) > ($1, $2, $3, $4) {order} LIMIT {page_len}"
            ),
            &[Val::I(at_s), Val::T(&record), Val::T(&kind), Val::T(&voucher)],
        )?;
    }
    Ok(out)
}

/// A journal entry as verification reads it.
struct StoredEntry {
    id: String,
    at_s: i64,
    kind: String,
    memo: String,
    postings: BTreeMap<String, Fen>,
    hash: String,
}

/// The entries holding links `(from, to]`, by link (more than one: a forgery).
fn read_entries(tx: &mut dyn Tx, from: i64, to: i64) -> Result<BTreeMap<i64, Vec<StoredEntry>>> {
    let mut out: BTreeMap<i64, Vec<StoredEntry>> = BTreeMap::new();
    let rows = tx.rows(
        "SELECT j.chain_seq, j.chain_hash, j.id, j.at_s, j.kind, j.memo, p.account, p.amount_fen \
         FROM journal j LEFT JOIN postings p ON p.entry_id = j.id \
         WHERE j.chain_seq > $1 AND j.chain_seq <= $2 ORDER BY j.chain_seq, j.id, p.account",
        &[Val::I(from), Val::I(to)],
    )?;
    let mut i = 0;
    while i < rows.len() {
        let e = &rows[i];
        let (seq, id) = (e[0].i(), e[2].t());
        let mut postings = BTreeMap::new();
        while i < rows.len() && rows[i][0].i() == seq && rows[i][2].t() == id {
            if let Cell::T(account) = &rows[i][6] {
                postings.insert(account.clone(), rows[i][7].i());
            }
            i += 1;
        }
        out.entry(seq).or_default().push(StoredEntry {
            at_s: e[3].i(),
            kind: e[4].t(),
            memo: e[5].t(),
            hash: e[1].t(),
            postings,
            id,
        });
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_head_parses_from_what_a_statement_prints() {
        let h = ChainHead {
            seq: 42,
            hash: "ab".repeat(32),
        };
        assert_eq!(h.to_string().parse::<ChainHead>().unwrap(), h);
        for bad in ["42", "x:ab", "0:abab", &format!("3:{}", "zz".repeat(32))] {
            let e = bad.parse::<ChainHead>().unwrap_err();
            assert!(e.contains("SEQ:HASH"), "{e}");
        }
    }

    /// Pages of two: every entry and redemption is read across the page
    /// boundaries, and a change past the first page is still found.
    #[test]
    fn verification_reads_every_page() {
        use crate::ledger::{UsageRecord, VoucherSpec};
        use chrono::{TimeZone, Utc};
        let l = Ledger::open(":memory:").unwrap();
        l.ensure_rate_card("t").unwrap();
        l.create_tenant("t", "acme", None).unwrap();
        let t0 = Utc.with_ymd_and_hms(2026, 11, 2, 0, 0, 0).unwrap();
        l.issue_voucher(
            "t",
            &VoucherSpec {
                id: Some("v".into()),
                tenant: "acme".into(),
                issuer: "gov".into(),
                face_value_fen: 1_000_000,
                copay_ratio_bp: 5000,
                valid_from: t0 - chrono::Duration::days(1),
                valid_until: t0 + chrono::Duration::days(30),
                regions: vec![],
                kinds: vec![],
                tiers: vec![],
                models: vec![],
            },
        )
        .unwrap();
        for b in 0..3 {
            let batch: Vec<UsageRecord> = (0..3)
                .map(|k| UsageRecord {
                    source: format!("p{b}-{k}"),
                    tenant: "acme".into(),
                    job: "ns/j".into(),
                    region: "gansu".into(),
                    node: "n1".into(),
                    model: "H100".into(),
                    gpu_milli: 1000,
                    start: t0 + chrono::Duration::hours(b),
                    end: t0 + chrono::Duration::hours(b + 1),
                    it_energy_j: 0,
                    pue: 1.2,
                    green_share: 0.5,
                    grid_kg_per_kwh: 0.5,
                })
                .collect();
            l.ingest(&batch, &[]).unwrap();
        }
        let r = l.read(|tx| verify_paged(tx, None, 2)).unwrap();
        assert_eq!((r.links, r.redemptions, &r.broken), (4, 9, &None), "{r:?}");
        // The last batch's last redemption: past the first pages.
        l.write(|tx| {
            tx.exec(
                "UPDATE redemptions SET fen = fen + 1 WHERE chain_seq = 4 AND chain_pos = 2",
                &[],
            )
        })
        .unwrap();
        let r = l.read(|tx| verify_paged(tx, None, 2)).unwrap();
        assert_eq!(r.broken.map(|b| b.seq), Some(4));
    }

    #[test]
    fn encodings_do_not_collide_across_field_boundaries() {
        let none = BTreeMap::new();
        assert_ne!(
            entry_bytes("a", 1, "bc", "", &none, &[]),
            entry_bytes("ab", 1, "c", "", &none, &[])
        );
        let one = BTreeMap::from([("x".to_string(), 5)]);
        assert_ne!(
            entry_bytes("a", 1, "k", "m", &one, &[]),
            entry_bytes("a", 1, "k", "m", &none, &[])
        );
    }
}

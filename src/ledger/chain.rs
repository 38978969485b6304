//! The tamper-evident chain (for regulators reconciling subsidies): every
//! journal entry (with its postings) and every voucher redemption carries a
//! link — `chain_seq`, one sequence over both tables, and `chain_hash` =
//! SHA-256(previous hash ‖ seq ‖ the row's canonical bytes). The head (last
//! seq and hash) is kept in `chain_head`, written in the same transaction as
//! the rows. Editing, deleting or inserting a row, or cutting the tail,
//! breaks the chain at a named link ([`Ledger::verify_chain`], `zhisuan
//! ledger verify`); a statement carries the head it was computed at, so a
//! chain recomputed wholesale after the fact no longer holds a head a
//! tenant or regulator kept.
//!
//! Usage and token records are not linked one by one: their money reaches
//! the chain through the charges entry of their batch (postings per account).

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

/// A journal entry's canonical bytes: its fields, then its postings in
/// account order.
fn entry_bytes(
    id: &str,
    at_s: i64,
    kind: &str,
    memo: &str,
    postings: &BTreeMap<String, Fen>,
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
    c.0
}

fn redemption_bytes(r: &Redemption) -> Vec<u8> {
    Canon::default()
        .text("redemption")
        .text(&r.record_id)
        .text(r.kind.as_str())
        .text(&r.voucher_id)
        .text(&r.tenant)
        .int(r.fen)
        .int(r.at_s)
        .0
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
/// head, each row takes the next link, [`Chain::save`] writes the head.
pub(super) struct Chain {
    seq: i64,
    hash: [u8; 32],
}

/// One row's link.
pub(crate) struct Link {
    pub seq: i64,
    pub hash: String,
}

/// A redemption with its link, as it is stored.
pub(crate) struct LinkedRedemption<'a> {
    pub row: &'a Redemption,
    pub link: Link,
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

    fn next(&mut self, row: &[u8]) -> Link {
        self.seq += 1;
        self.hash = link_hash(&self.hash, self.seq, row);
        Link {
            seq: self.seq,
            hash: hex::encode(self.hash),
        }
    }

    pub fn entry(
        &mut self,
        id: &str,
        at_s: i64,
        kind: &str,
        memo: &str,
        postings: &BTreeMap<String, Fen>,
    ) -> Link {
        self.next(&entry_bytes(id, at_s, kind, memo, postings))
    }

    pub fn redemption(&mut self, r: &Redemption) -> Link {
        self.next(&redemption_bytes(r))
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

/// Links the rows a ledger held before the chain existed (migration 8):
/// journal entries, then redemptions, each in key order.
pub(super) fn link_existing(tx: &mut dyn Tx) -> Result<()> {
    let mut chain = Chain::open(tx)?;
    let entries = tx.rows(
        "SELECT id, at_s, kind, memo FROM journal ORDER BY at_s, id",
        &[],
    )?;
    for e in entries {
        let id = e[0].t();
        let postings = postings_of(tx, &id)?;
        let link = chain.entry(&id, e[1].i(), &e[2].t(), &e[3].t(), &postings);
        tx.exec(
            "UPDATE journal SET chain_seq = $1, chain_hash = $2 WHERE id = $3",
            &[Val::I(link.seq), Val::T(&link.hash), Val::T(&id)],
        )?;
    }
    let redemptions = tx.rows(
        &format!("SELECT {REDEMPTION_COLUMNS} FROM redemptions ORDER BY at_s, record_id, kind, voucher_id"),
        &[],
    )?;
    for row in redemptions {
        let r = redemption_of(&row)?;
        let link = chain.redemption(&r);
        tx.exec(
            "UPDATE redemptions SET chain_seq = $1, chain_hash = $2 \
             WHERE at_s = $3 AND record_id = $4 AND kind = $5 AND voucher_id = $6",
            &[
                Val::I(link.seq),
                Val::T(&link.hash),
                Val::I(r.at_s),
                Val::T(&r.record_id),
                Val::T(r.kind.as_str()),
                Val::T(&r.voucher_id),
            ],
        )?;
    }
    chain.save(tx)
}

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
    /// The link (sequence number) at which it fails.
    pub seq: i64,
    /// The row, in words (e.g. `journal entry charges-…`).
    pub row: String,
    pub why: String,
}

/// What [`Ledger::verify_chain`] found.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ChainReport {
    pub links: i64,
    pub journal_entries: i64,
    pub redemptions: i64,
    /// The stored head.
    pub head: Option<ChainHead>,
    /// `None`: every link recomputes, in order, up to the head.
    pub broken: Option<ChainBreak>,
}

/// Links read per round trip while verifying.
const PAGE: i64 = 5_000;

/// A stored row with its link, as verification reads it.
struct Stored {
    row: String,
    bytes: Vec<u8>,
    hash: String,
}

impl Ledger {
    /// The chain's head now (`None` while nothing is linked).
    pub fn chain_head(&self) -> Result<Option<ChainHead>> {
        self.read(read_head)
    }

    /// Recomputes the chain from the first link to the stored head and
    /// names the first link that fails: a row edited (its hash does not
    /// recompute), deleted (a sequence number missing), inserted (a row
    /// without a link, or a link twice), or the tail cut (the head names a
    /// link that is not there). With `expect`, also checks that the chain
    /// holds that head (one a statement printed).
    pub fn verify_chain(&self, expect: Option<&ChainHead>) -> Result<ChainReport> {
        self.read(|tx| verify_in(tx, expect))
    }
}

fn verify_in(tx: &mut dyn Tx, expect: Option<&ChainHead>) -> Result<ChainReport> {
    let head = read_head(tx)?;
    let count = |tx: &mut dyn Tx, sql: &str| -> Result<i64> {
        Ok(tx.rows(sql, &[])?.first().map_or(0, |r| r[0].i()))
    };
    let journal_entries = count(tx, "SELECT COUNT(*) FROM journal")?;
    let redemptions = count(tx, "SELECT COUNT(*) FROM redemptions")?;
    let mut report = ChainReport {
        links: 0,
        journal_entries,
        redemptions,
        head: head.clone(),
        broken: None,
    };
    let broken = |seq: i64, row: String, why: String| Some(ChainBreak { seq, row, why });
    // Rows outside the chain: inserted behind its back.
    if let Some(r) = tx
        .rows(
            "SELECT id FROM journal WHERE chain_seq IS NULL ORDER BY id LIMIT 1",
            &[],
        )?
        .first()
    {
        report.broken = broken(
            0,
            format!("journal entry {}", r[0].t()),
            "it has no link".into(),
        );
        return Ok(report);
    }
    if let Some(r) = tx
        .rows(
            &format!(
                "SELECT {REDEMPTION_COLUMNS} FROM redemptions WHERE chain_seq IS NULL LIMIT 1"
            ),
            &[],
        )?
        .first()
    {
        let r = redemption_of(r)?;
        report.broken = broken(0, describe_redemption(&r), "it has no link".into());
        return Ok(report);
    }
    if let Some(r) = tx
        .rows(
            "SELECT entry_id FROM postings WHERE entry_id NOT IN (SELECT id FROM journal) LIMIT 1",
            &[],
        )?
        .first()
    {
        report.broken = broken(
            0,
            format!("postings of {}", r[0].t()),
            "their journal entry does not exist".into(),
        );
        return Ok(report);
    }
    let last = head.as_ref().map_or(0, |h| h.seq);
    let max_stored = count(
        tx,
        "SELECT MAX(s) FROM (SELECT MAX(chain_seq) AS s FROM journal UNION ALL SELECT MAX(chain_seq) AS s FROM redemptions) m",
    )?;
    let mut prev = GENESIS;
    let mut from = 0;
    while from < last.max(max_stored) {
        let to = from + PAGE;
        let page = read_page(tx, from, to)?;
        for seq in from + 1..=to.min(last.max(max_stored)) {
            let Some(rows) = page.get(&seq) else {
                report.broken = broken(
                    seq,
                    "(none)".into(),
                    "the link is missing: its row was deleted or its sequence number changed"
                        .into(),
                );
                return Ok(report);
            };
            let s = &rows[0];
            if rows.len() > 1 {
                report.broken = broken(
                    seq,
                    rows[1].row.clone(),
                    format!("two rows hold link {seq} ({} too)", s.row),
                );
                return Ok(report);
            }
            if seq > last {
                report.broken = broken(
                    seq,
                    s.row.clone(),
                    format!("the link is past the stored head ({last}): the head was moved back"),
                );
                return Ok(report);
            }
            let hash = link_hash(&prev, seq, &s.bytes);
            if hex::encode(hash) != s.hash {
                report.broken = broken(
                    seq,
                    s.row.clone(),
                    "its contents do not hash to its stored link: the row (or a posting of it) was changed, or a link before it was rewritten".into(),
                );
                return Ok(report);
            }
            prev = hash;
            report.links = seq;
        }
        from = to;
    }
    if let Some(h) = &head {
        if hex::encode(prev) != h.hash {
            report.broken = broken(
                h.seq,
                "chain head".into(),
                "the stored head's hash is not the last link's".into(),
            );
            return Ok(report);
        }
    }
    if let Some(want) = expect {
        let held = tx.rows(
            "SELECT chain_hash FROM journal WHERE chain_seq = $1 UNION ALL SELECT chain_hash FROM redemptions WHERE chain_seq = $1",
            &[Val::I(want.seq)],
        )?;
        if !held.iter().any(|r| r[0].t() == want.hash) {
            report.broken = broken(
                want.seq,
                format!("expected head {want}"),
                "the chain does not hold this head: entries up to it were rewritten (or it comes from another ledger)".into(),
            );
        }
    }
    Ok(report)
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

/// The rows holding links `(from, to]`, by link (more than one: a forgery).
fn read_page(tx: &mut dyn Tx, from: i64, to: i64) -> Result<BTreeMap<i64, Vec<Stored>>> {
    let mut out: BTreeMap<i64, Vec<Stored>> = BTreeMap::new();
    let range = [Val::I(from), Val::I(to)];
    let entries = tx.rows(
        "SELECT j.chain_seq, j.chain_hash, j.id, j.at_s, j.kind, j.memo, p.account, p.amount_fen \
         FROM journal j LEFT JOIN postings p ON p.entry_id = j.id \
         WHERE j.chain_seq > $1 AND j.chain_seq <= $2 ORDER BY j.chain_seq, j.id, p.account",
        &range,
    )?;
    let mut i = 0;
    while i < entries.len() {
        let e = &entries[i];
        let seq = e[0].i();
        let id = e[2].t();
        let mut postings = BTreeMap::new();
        while i < entries.len() && entries[i][0].i() == seq && entries[i][2].t() == id {
            if let Cell::T(account) = &entries[i][6] {
                postings.insert(account.clone(), entries[i][7].i());
            }
            i += 1;
        }
        out.entry(seq).or_default().push(Stored {
            bytes: entry_bytes(&id, e[3].i(), &e[4].t(), &e[5].t(), &postings),
            row: format!("journal entry {id}"),
            hash: e[1].t(),
        });
    }
    for row in tx.rows(
        &format!(
            "SELECT chain_seq, chain_hash, {REDEMPTION_COLUMNS} FROM redemptions \
             WHERE chain_seq > $1 AND chain_seq <= $2 ORDER BY chain_seq"
        ),
        &range,
    )? {
        let r = redemption_of(&row[2..])?;
        out.entry(row[0].i()).or_default().push(Stored {
            bytes: redemption_bytes(&r),
            row: describe_redemption(&r),
            hash: row[1].t(),
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

    #[test]
    fn encodings_do_not_collide_across_field_boundaries() {
        let none = BTreeMap::new();
        assert_ne!(
            entry_bytes("a", 1, "bc", "", &none),
            entry_bytes("ab", 1, "c", "", &none)
        );
        let one = BTreeMap::from([("x".to_string(), 5)]);
        assert_ne!(
            entry_bytes("a", 1, "k", "m", &one),
            entry_bytes("a", 1, "k", "m", &none)
        );
    }
}

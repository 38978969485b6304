//! The two storage backends behind one small SQL interface, so every ledger
//! operation is written once. Queries use `$1…` placeholders (PostgreSQL
//! style); the SQLite side rewrites them to `?1…`. Bulk inserts, the hot path,
//! are per backend: prepared statements in SQLite, `UNNEST` arrays in
//! PostgreSQL (one round trip per batch).

use super::error::{LedgerError, Result};
use super::plan::{Redemption, TokenRow, UsageRow};
use std::collections::HashSet;

/// A query parameter.
#[derive(Debug, Clone, Copy)]
pub(crate) enum Val<'a> {
    I(i64),
    T(&'a str),
    NullT,
}

/// A result cell.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum Cell {
    I(i64),
    T(String),
    Null,
}

impl Cell {
    pub fn i(&self) -> i64 {
        match self {
            Cell::I(v) => *v,
            _ => 0,
        }
    }
    pub fn t(&self) -> String {
        match self {
            Cell::T(s) => s.clone(),
            Cell::I(v) => v.to_string(),
            Cell::Null => String::new(),
        }
    }
    pub fn opt_t(&self) -> Option<String> {
        match self {
            Cell::Null => None,
            c => Some(c.t()),
        }
    }
}

impl Drop for Conn {
    fn drop(&mut self) {
        // Closing the sync PostgreSQL client blocks on its own runtime, which
        // panics on a tokio runtime thread: close it on a plain thread there.
        if let Conn::Postgres(_) = self {
            if tokio::runtime::Handle::try_current().is_ok() {
                let taken = std::mem::replace(self, Conn::Closed);
                let _ = std::thread::spawn(move || drop(taken)).join();
            }
        }
    }
}

/// Which database.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    Sqlite,
    Postgres,
}

/// One open transaction.
pub(crate) trait Tx {
    fn exec(&mut self, sql: &str, p: &[Val]) -> Result<u64>;
    fn rows(&mut self, sql: &str, p: &[Val]) -> Result<Vec<Vec<Cell>>>;
    /// Which of `ids` already exist in `table` (`usage` or `tokens`).
    fn existing(&mut self, table: &'static str, ids: &[&str]) -> Result<HashSet<String>>;
    fn insert_usage(&mut self, rows: &[UsageRow], batch: &str) -> Result<()>;
    fn insert_tokens(&mut self, rows: &[TokenRow], batch: &str) -> Result<()>;
    fn insert_redemptions(&mut self, rows: &[Redemption]) -> Result<()>;
}

/// An open connection.
pub(crate) enum Conn {
    Sqlite(rusqlite::Connection),
    Postgres(postgres::Client),
    /// Only while being dropped.
    Closed,
}

impl Conn {
    pub fn backend(&self) -> Backend {
        match self {
            Conn::Sqlite(_) => Backend::Sqlite,
            Conn::Postgres(_) | Conn::Closed => Backend::Postgres,
        }
    }

    /// Runs `f` in one transaction: committed when it returns `Ok`, rolled
    /// back otherwise (nothing half-written). Writers are serialised
    /// (SQLite `BEGIN IMMEDIATE`; PostgreSQL transaction-scoped advisory lock)
    /// so the check-then-insert of idempotent ingestion cannot race, even
    /// between controller replicas sharing one PostgreSQL.
    pub fn with_tx<T: Send>(
        &mut self,
        write: bool,
        f: impl FnOnce(&mut dyn Tx) -> Result<T> + Send,
    ) -> Result<T> {
        match self {
            Conn::Sqlite(c) => {
                let behavior = if write {
                    rusqlite::TransactionBehavior::Immediate
                } else {
                    rusqlite::TransactionBehavior::Deferred
                };
                let tx = c.transaction_with_behavior(behavior)?;
                let mut w = SqliteTx(tx);
                let out = f(&mut w)?;
                w.0.commit()?;
                Ok(out)
            }
            Conn::Closed => Err(LedgerError::Storage("connection closed".into())),
            Conn::Postgres(c) => {
                // The sync client runs its own runtime and must not be driven
                // from a tokio worker thread: hop to a plain thread there.
                let run = move || -> Result<T> {
                    let mut tx = c.transaction()?;
                    if write {
                        tx.execute("SELECT pg_advisory_xact_lock(7006)", &[])?;
                    }
                    let mut w = PgTx(tx);
                    let out = f(&mut w)?;
                    w.0.commit()?;
                    Ok(out)
                };
                if tokio::runtime::Handle::try_current().is_ok() {
                    std::thread::scope(|s| {
                        s.spawn(run).join().unwrap_or_else(|_| {
                            Err(LedgerError::Storage("postgres worker panicked".into()))
                        })
                    })
                } else {
                    run()
                }
            }
        }
    }
}

/// Rewrites `$N` placeholders to SQLite's `?N`.
fn sqlite_sql(sql: &str) -> std::borrow::Cow<'_, str> {
    if sql.contains('$') {
        std::borrow::Cow::Owned(sql.replace('$', "?"))
    } else {
        std::borrow::Cow::Borrowed(sql)
    }
}

impl rusqlite::ToSql for Val<'_> {
    fn to_sql(&self) -> rusqlite::Result<rusqlite::types::ToSqlOutput<'_>> {
        use rusqlite::types::{ToSqlOutput, Value, ValueRef};
        Ok(match self {
            Val::I(v) => ToSqlOutput::Owned(Value::Integer(*v)),
            Val::T(s) => ToSqlOutput::Borrowed(ValueRef::Text(s.as_bytes())),
            Val::NullT => ToSqlOutput::Owned(Value::Null),
        })
    }
}

struct SqliteTx<'c>(rusqlite::Transaction<'c>);

impl Tx for SqliteTx<'_> {
    fn exec(&mut self, sql: &str, p: &[Val]) -> Result<u64> {
        let mut st = self.0.prepare_cached(&sqlite_sql(sql))?;
        Ok(st.execute(rusqlite::params_from_iter(p.iter()))? as u64)
    }

    fn rows(&mut self, sql: &str, p: &[Val]) -> Result<Vec<Vec<Cell>>> {
        use rusqlite::types::ValueRef;
        let mut st = self.0.prepare_cached(&sqlite_sql(sql))?;
        let n = st.column_count();
        let mut rows = st.query(rusqlite::params_from_iter(p.iter()))?;
        let mut out = Vec::new();
        while let Some(r) = rows.next()? {
            let mut row = Vec::with_capacity(n);
            for i in 0..n {
                row.push(match r.get_ref(i)? {
                    ValueRef::Null => Cell::Null,
                    ValueRef::Integer(v) => Cell::I(v),
                    ValueRef::Real(f) => Cell::I(f as i64),
                    ValueRef::Text(t) | ValueRef::Blob(t) => {
                        Cell::T(String::from_utf8_lossy(t).into_owned())
                    }
                });
            }
            out.push(row);
        }
        Ok(out)
    }

    fn existing(&mut self, table: &'static str, ids: &[&str]) -> Result<HashSet<String>> {
        let mut st = self
            .0
            .prepare_cached(&format!("SELECT 1 FROM {table} WHERE id = ?1"))?;
        let mut out = HashSet::new();
        for id in ids {
            if st.exists([id])? {
                out.insert(id.to_string());
            }
        }
        Ok(out)
    }

    fn insert_usage(&mut self, rows: &[UsageRow], batch: &str) -> Result<()> {
        let mut st = self.0.prepare_cached(USAGE_INSERT_SQLITE)?;
        for r in rows {
            let u = &r.usage;
            st.execute(rusqlite::params![
                u.id,
                u.source,
                u.tenant,
                u.job,
                u.region,
                u.node,
                u.model,
                u.gpu_milli,
                u.start_s,
                u.end_s,
                u.milli_gpu_s,
                u.it_energy_j,
                u.pue_milli,
                u.facility_j,
                u.green_milli,
                u.grid_mg_per_kwh,
                u.carbon_mg,
                r.rate_version,
                r.gpu_fen,
                r.gpu_voucher_fen,
                r.energy_fen,
                r.energy_voucher_fen,
                batch
            ])?;
        }
        Ok(())
    }

    fn insert_tokens(&mut self, rows: &[TokenRow], batch: &str) -> Result<()> {
        let mut st = self.0.prepare_cached(TOKENS_INSERT_SQLITE)?;
        for r in rows {
            let t = &r.tokens;
            st.execute(rusqlite::params![
                t.id,
                t.source,
                t.tenant,
                t.service,
                t.model,
                t.region,
                t.tier.as_str(),
                t.start_s,
                t.end_s,
                t.prompt_tokens,
                t.completion_tokens,
                r.rate_version,
                r.fen,
                r.voucher_fen,
                batch
            ])?;
        }
        Ok(())
    }

    fn insert_redemptions(&mut self, rows: &[Redemption]) -> Result<()> {
        let mut st = self.0.prepare_cached(
            "INSERT INTO redemptions (record_id, kind, voucher_id, tenant, fen, at_s) VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
        )?;
        for r in rows {
            st.execute(rusqlite::params![
                r.record_id,
                r.kind.as_str(),
                r.voucher_id,
                r.tenant,
                r.fen,
                r.at_s
            ])?;
        }
        Ok(())
    }
}

const USAGE_COLUMNS: &str =
    "id, source, tenant, job, region, node, model, gpu_milli, start_s, end_s, \
    milli_gpu_s, it_energy_j, pue_milli, facility_j, green_milli, grid_mg_per_kwh, carbon_mg, \
    rate_version, gpu_fen, gpu_voucher_fen, energy_fen, energy_voucher_fen, batch";

const USAGE_INSERT_SQLITE: &str = "INSERT INTO usage (id, source, tenant, job, region, node, model, gpu_milli, start_s, end_s, \
    milli_gpu_s, it_energy_j, pue_milli, facility_j, green_milli, grid_mg_per_kwh, carbon_mg, \
    rate_version, gpu_fen, gpu_voucher_fen, energy_fen, energy_voucher_fen, batch) \
    VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14, ?15, ?16, ?17, ?18, ?19, ?20, ?21, ?22, ?23)";

const TOKENS_COLUMNS: &str = "id, source, tenant, service, model, region, tier, start_s, end_s, \
    prompt_tokens, completion_tokens, rate_version, fen, voucher_fen, batch";

const TOKENS_INSERT_SQLITE: &str =
    "INSERT INTO tokens (id, source, tenant, service, model, region, tier, start_s, end_s, \
    prompt_tokens, completion_tokens, rate_version, fen, voucher_fen, batch) \
    VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14, ?15)";

static NULL_TEXT: Option<&'static str> = None;

fn pg_params<'a>(p: &'a [Val<'a>]) -> Vec<&'a (dyn postgres::types::ToSql + Sync)> {
    p.iter()
        .map(|v| -> &(dyn postgres::types::ToSql + Sync) {
            match v {
                Val::I(i) => i,
                Val::T(s) => s,
                Val::NullT => &NULL_TEXT,
            }
        })
        .collect()
}

struct PgTx<'c>(postgres::Transaction<'c>);

impl Tx for PgTx<'_> {
    fn exec(&mut self, sql: &str, p: &[Val]) -> Result<u64> {
        Ok(self.0.execute(sql, &pg_params(p))?)
    }

    fn rows(&mut self, sql: &str, p: &[Val]) -> Result<Vec<Vec<Cell>>> {
        use postgres::types::Type;
        let rows = self.0.query(sql, &pg_params(p))?;
        let mut out = Vec::with_capacity(rows.len());
        for r in rows {
            let mut row = Vec::with_capacity(r.len());
            for (i, col) in r.columns().iter().enumerate() {
                let ty = col.type_();
                row.push(if *ty == Type::INT8 {
                    r.try_get::<_, Option<i64>>(i)?.map_or(Cell::Null, Cell::I)
                } else if *ty == Type::INT4 {
                    r.try_get::<_, Option<i32>>(i)?
                        .map_or(Cell::Null, |v| Cell::I(v as i64))
                } else if *ty == Type::BOOL {
                    r.try_get::<_, Option<bool>>(i)?
                        .map_or(Cell::Null, |v| Cell::I(v as i64))
                } else {
                    r.try_get::<_, Option<String>>(i)?
                        .map_or(Cell::Null, Cell::T)
                });
            }
            out.push(row);
        }
        Ok(out)
    }

    fn existing(&mut self, table: &'static str, ids: &[&str]) -> Result<HashSet<String>> {
        let ids: Vec<&str> = ids.to_vec();
        let rows = self.0.query(
            &format!("SELECT id FROM {table} WHERE id = ANY($1)"),
            &[&ids],
        )?;
        Ok(rows.iter().map(|r| r.get::<_, String>(0)).collect())
    }

    fn insert_usage(&mut self, rows: &[UsageRow], batch: &str) -> Result<()> {
        if rows.is_empty() {
            return Ok(());
        }
        macro_rules! col {
            ($f:expr) => {
                rows.iter().map($f).collect::<Vec<_>>()
            };
        }
        let id = col!(|r| r.usage.id.as_str());
        let source = col!(|r| r.usage.source.as_str());
        let tenant = col!(|r| r.usage.tenant.as_str());
        let job = col!(|r| r.usage.job.as_str());
        let region = col!(|r| r.usage.region.as_str());
        let node = col!(|r| r.usage.node.as_str());
        let model = col!(|r| r.usage.model.as_str());
        let gpu_milli = col!(|r| r.usage.gpu_milli);
        let start_s = col!(|r| r.usage.start_s);
        let end_s = col!(|r| r.usage.end_s);
        let milli_gpu_s = col!(|r| r.usage.milli_gpu_s);
        let it_energy_j = col!(|r| r.usage.it_energy_j);
        let pue_milli = col!(|r| r.usage.pue_milli);
        let facility_j = col!(|r| r.usage.facility_j);
        let green_milli = col!(|r| r.usage.green_milli);
        let grid = col!(|r| r.usage.grid_mg_per_kwh);
        let carbon_mg = col!(|r| r.usage.carbon_mg);
        let rate_version = col!(|r| r.rate_version);
        let gpu_fen = col!(|r| r.gpu_fen);
        let gpu_voucher_fen = col!(|r| r.gpu_voucher_fen);
        let energy_fen = col!(|r| r.energy_fen);
        let energy_voucher_fen = col!(|r| r.energy_voucher_fen);
        let sql = format!(
            "INSERT INTO usage ({USAGE_COLUMNS}) SELECT u.*, $23::text FROM UNNEST(\
             $1::text[], $2::text[], $3::text[], $4::text[], $5::text[], $6::text[], $7::text[], \
             $8::int8[], $9::int8[], $10::int8[], $11::int8[], $12::int8[], $13::int8[], $14::int8[], \
             $15::int8[], $16::int8[], $17::int8[], $18::int8[], $19::int8[], $20::int8[], $21::int8[], \
             $22::int8[]) AS u"
        );
        self.0.execute(
            &sql,
            &[
                &id,
                &source,
                &tenant,
                &job,
                &region,
                &node,
                &model,
                &gpu_milli,
                &start_s,
                &end_s,
                &milli_gpu_s,
                &it_energy_j,
                &pue_milli,
                &facility_j,
                &green_milli,
                &grid,
                &carbon_mg,
                &rate_version,
                &gpu_fen,
                &gpu_voucher_fen,
                &energy_fen,
                &energy_voucher_fen,
                &batch,
            ],
        )?;
        Ok(())
    }

    fn insert_tokens(&mut self, rows: &[TokenRow], batch: &str) -> Result<()> {
        if rows.is_empty() {
            return Ok(());
        }
        let id: Vec<&str> = rows.iter().map(|r| r.tokens.id.as_str()).collect();
        let source: Vec<&str> = rows.iter().map(|r| r.tokens.source.as_str()).collect();
        let tenant: Vec<&str> = rows.iter().map(|r| r.tokens.tenant.as_str()).collect();
        let service: Vec<&str> = rows.iter().map(|r| r.tokens.service.as_str()).collect();
        let model: Vec<&str> = rows.iter().map(|r| r.tokens.model.as_str()).collect();
        let region: Vec<&str> = rows.iter().map(|r| r.tokens.region.as_str()).collect();
        let tier: Vec<&str> = rows.iter().map(|r| r.tokens.tier.as_str()).collect();
        let start_s: Vec<i64> = rows.iter().map(|r| r.tokens.start_s).collect();
        let end_s: Vec<i64> = rows.iter().map(|r| r.tokens.end_s).collect();
        let prompt: Vec<i64> = rows.iter().map(|r| r.tokens.prompt_tokens).collect();
        let completion: Vec<i64> = rows.iter().map(|r| r.tokens.completion_tokens).collect();
        let rate_version: Vec<i64> = rows.iter().map(|r| r.rate_version).collect();
        let fen: Vec<i64> = rows.iter().map(|r| r.fen).collect();
        let voucher_fen: Vec<i64> = rows.iter().map(|r| r.voucher_fen).collect();
        let sql = format!(
            "INSERT INTO tokens ({TOKENS_COLUMNS}) SELECT u.*, $15::text FROM UNNEST(\
             $1::text[], $2::text[], $3::text[], $4::text[], $5::text[], $6::text[], $7::text[], \
             $8::int8[], $9::int8[], $10::int8[], $11::int8[], $12::int8[], $13::int8[], $14::int8[]) AS u"
        );
        self.0.execute(
            &sql,
            &[
                &id,
                &source,
                &tenant,
                &service,
                &model,
                &region,
                &tier,
                &start_s,
                &end_s,
                &prompt,
                &completion,
                &rate_version,
                &fen,
                &voucher_fen,
                &batch,
            ],
        )?;
        Ok(())
    }

    fn insert_redemptions(&mut self, rows: &[Redemption]) -> Result<()> {
        if rows.is_empty() {
            return Ok(());
        }
        let record_id: Vec<&str> = rows.iter().map(|r| r.record_id.as_str()).collect();
        let kind: Vec<&str> = rows.iter().map(|r| r.kind.as_str()).collect();
        let voucher_id: Vec<&str> = rows.iter().map(|r| r.voucher_id.as_str()).collect();
        let tenant: Vec<&str> = rows.iter().map(|r| r.tenant.as_str()).collect();
        let fen: Vec<i64> = rows.iter().map(|r| r.fen).collect();
        let at_s: Vec<i64> = rows.iter().map(|r| r.at_s).collect();
        self.0.execute(
            "INSERT INTO redemptions (record_id, kind, voucher_id, tenant, fen, at_s) \
             SELECT * FROM UNNEST($1::text[], $2::text[], $3::text[], $4::text[], $5::int8[], $6::int8[])",
            &[&record_id, &kind, &voucher_id, &tenant, &fen, &at_s],
        )?;
        Ok(())
    }
}

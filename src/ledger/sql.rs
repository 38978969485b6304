//! The two storage backends behind one small SQL interface, so every ledger
//! operation is written once. Queries use `$1…` placeholders (PostgreSQL
//! style); the SQLite side rewrites them to `?1…`. Bulk inserts, the hot path,
//! describe each table once ([`BulkRow`]); each backend has one routine for
//! all of them: a reused prepared statement in SQLite, `COPY … BINARY` in
//! PostgreSQL (one stream per table per batch).

use super::chain::SealedRedemption;
use super::error::{LedgerError, Result};
use super::plan::{TokenRow, UsageRow};
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
    pub fn opt_i(&self) -> Option<i64> {
        match self {
            Cell::Null => None,
            c => Some(c.i()),
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
    /// Which of `keys` — (start_s, id) — already exist in `table` (`usage`
    /// or `tokens`, both keyed by (start_s, id)); returns their ids.
    fn existing(&mut self, table: &'static str, keys: &[(i64, &str)]) -> Result<HashSet<String>>;
    /// Appends rows (ids already known to be new).
    fn insert(&mut self, rows: Rows<'_>) -> Result<()>;
    /// Adds each row's sums to the stored row with the same key (from zero
    /// where there is none). PostgreSQL: one statement per call.
    fn add_to_rollup(&mut self, add: &RollupAdd) -> Result<()>;
}

/// Totals to add to a rollup table: text key columns, integer sum columns,
/// one row per key (keys are unique within a call).
pub(crate) struct RollupAdd {
    pub table: &'static str,
    pub key: &'static [&'static str],
    pub sums: &'static [&'static str],
    pub rows: Vec<(Vec<String>, Vec<i64>)>,
}

impl RollupAdd {
    /// `INSERT INTO table (key…, sums…) {values} ON CONFLICT (key…) DO UPDATE
    /// SET s = table.s + excluded.s, …`: the one upsert shape of every
    /// rollup, on both backends.
    fn upsert_sql(&self, values: &str) -> String {
        let add: Vec<String> = self
            .sums
            .iter()
            .map(|c| format!("{c} = {t}.{c} + excluded.{c}", t = self.table))
            .collect();
        format!(
            "INSERT INTO {} ({}, {}) {values} ON CONFLICT ({}) DO UPDATE SET {}",
            self.table,
            self.key.join(", "),
            self.sums.join(", "),
            self.key.join(", "),
            add.join(", ")
        )
    }

    fn width(&self) -> usize {
        self.key.len() + self.sums.len()
    }
}

/// The keys that could be stored already: those starting at or before the
/// latest stored start (one index lookup). Ingestion mostly appends recent
/// intervals, so most batches need no per-record lookup at all. `None` when
/// no key can exist.
fn not_after_latest<'k>(
    tx: &mut dyn Tx,
    table: &'static str,
    keys: &'k [(i64, &'k str)],
) -> Result<Option<Vec<(i64, &'k str)>>> {
    if keys.is_empty() {
        return Ok(None);
    }
    let latest = tx.rows(&format!("SELECT MAX(start_s) FROM {table}"), &[])?;
    let Some(Cell::I(latest)) = latest.first().and_then(|r| r.first()) else {
        return Ok(None); // empty table
    };
    let candidates: Vec<(i64, &str)> = keys.iter().copied().filter(|k| k.0 <= *latest).collect();
    Ok((!candidates.is_empty()).then_some(candidates))
}

/// The type of a bulk-inserted column.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Ty {
    Text,
    Int,
}

/// A row of a bulk-inserted table, read column by column, so each backend
/// writes every table with one routine.
pub(crate) trait BulkRow {
    const TABLE: &'static str;
    /// Column names and types, in [`BulkRow::col`] order.
    const COLUMNS: &'static [(&'static str, Ty)];
    /// Column `i`; `batch` is the journal entry id (for tables that keep it).
    fn col<'a>(&'a self, i: usize, batch: &'a str) -> Val<'a>;
}

/// The rows one ingestion batch appends, per table.
pub(crate) enum Rows<'a> {
    Usage(&'a [UsageRow], &'a str),
    Tokens(&'a [TokenRow], &'a str),
    Redemptions(&'a [SealedRedemption<'a>]),
}

use Ty::{Int, Text};

impl BulkRow for UsageRow {
    const TABLE: &'static str = "usage";
    const COLUMNS: &'static [(&'static str, Ty)] = &[
        ("id", Text),
        ("source", Text),
        ("tenant", Text),
        ("job", Text),
        ("region", Text),
        ("node", Text),
        ("model", Text),
        ("gpu_milli", Int),
        ("start_s", Int),
        ("end_s", Int),
        ("milli_gpu_s", Int),
        ("it_energy_j", Int),
        ("pue_milli", Int),
        ("facility_j", Int),
        ("green_milli", Int),
        ("grid_mg_per_kwh", Int),
        ("carbon_mg", Int),
        ("rate_version", Int),
        ("gpu_fen", Int),
        ("gpu_voucher_fen", Int),
        ("energy_fen", Int),
        ("energy_voucher_fen", Int),
        ("batch", Text),
    ];
    fn col<'a>(&'a self, i: usize, batch: &'a str) -> Val<'a> {
        let u = &self.usage;
        match i {
            0 => Val::T(&u.id),
            1 => Val::T(&u.source),
            2 => Val::T(&u.tenant),
            3 => Val::T(&u.job),
            4 => Val::T(&u.region),
            5 => Val::T(&u.node),
            6 => Val::T(&u.model),
            7 => Val::I(u.gpu_milli),
            8 => Val::I(u.start_s),
            9 => Val::I(u.end_s),
            10 => Val::I(u.milli_gpu_s),
            11 => Val::I(u.it_energy_j),
            12 => Val::I(u.pue_milli),
            13 => Val::I(u.facility_j),
            14 => Val::I(u.green_milli),
            15 => Val::I(u.grid_mg_per_kwh),
            16 => Val::I(u.carbon_mg),
            17 => Val::I(self.rate_version),
            18 => Val::I(self.gpu_fen),
            19 => Val::I(self.gpu_voucher_fen),
            20 => Val::I(self.energy_fen),
            21 => Val::I(self.energy_voucher_fen),
            _ => Val::T(batch),
        }
    }
}

impl BulkRow for TokenRow {
    const TABLE: &'static str = "tokens";
    const COLUMNS: &'static [(&'static str, Ty)] = &[
        ("id", Text),
        ("source", Text),
        ("tenant", Text),
        ("service", Text),
        ("model", Text),
        ("region", Text),
        ("tier", Text),
        ("start_s", Int),
        ("end_s", Int),
        ("prompt_tokens", Int),
        ("completion_tokens", Int),
        ("rate_version", Int),
        ("fen", Int),
        ("voucher_fen", Int),
        ("batch", Text),
    ];
    fn col<'a>(&'a self, i: usize, batch: &'a str) -> Val<'a> {
        let t = &self.tokens;
        match i {
            0 => Val::T(&t.id),
            1 => Val::T(&t.source),
            2 => Val::T(&t.tenant),
            3 => Val::T(&t.service),
            4 => Val::T(&t.model),
            5 => Val::T(&t.region),
            6 => Val::T(t.tier.as_str()),
            7 => Val::I(t.start_s),
            8 => Val::I(t.end_s),
            9 => Val::I(t.prompt_tokens),
            10 => Val::I(t.completion_tokens),
            11 => Val::I(self.rate_version),
            12 => Val::I(self.fen),
            13 => Val::I(self.voucher_fen),
            _ => Val::T(batch),
        }
    }
}

impl BulkRow for SealedRedemption<'_> {
    const TABLE: &'static str = "redemptions";
    const COLUMNS: &'static [(&'static str, Ty)] = &[
        ("record_id", Text),
        ("kind", Text),
        ("voucher_id", Text),
        ("tenant", Text),
        ("fen", Int),
        ("at_s", Int),
        ("chain_seq", Int),
        ("chain_pos", Int),
    ];
    fn col<'a>(&'a self, i: usize, _batch: &'a str) -> Val<'a> {
        let r = self.row;
        match i {
            0 => Val::T(&r.record_id),
            1 => Val::T(r.kind.as_str()),
            2 => Val::T(&r.voucher_id),
            3 => Val::T(&r.tenant),
            4 => Val::I(r.fen),
            5 => Val::I(r.at_s),
            6 => Val::I(self.seq),
            _ => Val::I(self.pos),
        }
    }
}

fn column_list(columns: &[(&str, Ty)]) -> String {
    columns
        .iter()
        .map(|(name, _)| *name)
        .collect::<Vec<_>>()
        .join(", ")
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

    fn existing(&mut self, table: &'static str, keys: &[(i64, &str)]) -> Result<HashSet<String>> {
        let Some(candidates) = not_after_latest(self, table, keys)? else {
            return Ok(HashSet::new());
        };
        let mut st = self.0.prepare_cached(&format!(
            "SELECT 1 FROM {table} WHERE start_s = ?1 AND id = ?2"
        ))?;
        let mut out = HashSet::new();
        for (start_s, id) in candidates {
            if st.exists(rusqlite::params![start_s, id])? {
                out.insert(id.to_string());
            }
        }
        Ok(out)
    }

    fn insert(&mut self, rows: Rows<'_>) -> Result<()> {
        match rows {
            Rows::Usage(r, batch) => sqlite_insert(&self.0, r, batch),
            Rows::Tokens(r, batch) => sqlite_insert(&self.0, r, batch),
            Rows::Redemptions(r) => sqlite_insert(&self.0, r, ""),
        }
    }

    fn add_to_rollup(&mut self, add: &RollupAdd) -> Result<()> {
        sqlite_add_to_rollup(&self.0, add)
    }
}

/// One prepared statement, bound and stepped once per key (in-process: no
/// round trips to save).
fn sqlite_add_to_rollup(tx: &rusqlite::Transaction<'_>, add: &RollupAdd) -> Result<()> {
    let placeholders: Vec<String> = (1..=add.width()).map(|i| format!("?{i}")).collect();
    let sql = add.upsert_sql(&format!("VALUES ({})", placeholders.join(", ")));
    let mut st = tx.prepare_cached(&sql)?;
    for (key, sums) in &add.rows {
        for (i, k) in key.iter().enumerate() {
            st.raw_bind_parameter(i + 1, k.as_str())?;
        }
        for (i, v) in sums.iter().enumerate() {
            st.raw_bind_parameter(key.len() + i + 1, v)?;
        }
        st.raw_execute()?;
    }
    Ok(())
}

/// One prepared statement, bound and stepped once per row.
fn sqlite_insert<R: BulkRow>(
    tx: &rusqlite::Transaction<'_>,
    rows: &[R],
    batch: &str,
) -> Result<()> {
    let placeholders: Vec<String> = (1..=R::COLUMNS.len()).map(|i| format!("?{i}")).collect();
    let sql = format!(
        "INSERT INTO {} ({}) VALUES ({})",
        R::TABLE,
        column_list(R::COLUMNS),
        placeholders.join(", ")
    );
    let mut st = tx.prepare_cached(&sql)?;
    for r in rows {
        for i in 0..R::COLUMNS.len() {
            st.raw_bind_parameter(i + 1, r.col(i, batch))?;
        }
        st.raw_execute()?;
    }
    Ok(())
}

impl postgres::types::ToSql for Val<'_> {
    fn to_sql(
        &self,
        ty: &postgres::types::Type,
        out: &mut postgres::types::private::BytesMut,
    ) -> std::result::Result<postgres::types::IsNull, Box<dyn std::error::Error + Sync + Send>>
    {
        use postgres::types::IsNull;
        match self {
            Val::I(v) if <i64 as postgres::types::ToSql>::accepts(ty) => v.to_sql(ty, out),
            Val::T(s) if <&str as postgres::types::ToSql>::accepts(ty) => s.to_sql(ty, out),
            Val::NullT => Ok(IsNull::Yes),
            v => Err(format!("{v:?} does not fit a {ty} column").into()),
        }
    }

    fn accepts(ty: &postgres::types::Type) -> bool {
        <i64 as postgres::types::ToSql>::accepts(ty)
            || <&str as postgres::types::ToSql>::accepts(ty)
    }

    postgres::types::to_sql_checked!();
}

fn pg_params<'a>(p: &'a [Val<'a>]) -> Vec<&'a (dyn postgres::types::ToSql + Sync)> {
    p.iter()
        .map(|v| v as &(dyn postgres::types::ToSql + Sync))
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

    fn existing(&mut self, table: &'static str, keys: &[(i64, &str)]) -> Result<HashSet<String>> {
        let Some(candidates) = not_after_latest(self, table, keys)? else {
            return Ok(HashSet::new());
        };
        let starts: Vec<i64> = candidates.iter().map(|k| k.0).collect();
        let ids: Vec<&str> = candidates.iter().map(|k| k.1).collect();
        let rows = self.0.query(
            &format!(
                "SELECT t.id FROM {table} t JOIN UNNEST($1::int8[], $2::text[]) AS k(start_s, id) \
                 ON t.start_s = k.start_s AND t.id = k.id"
            ),
            &[&starts, &ids],
        )?;
        Ok(rows.iter().map(|r| r.get::<_, String>(0)).collect())
    }

    fn insert(&mut self, rows: Rows<'_>) -> Result<()> {
        match rows {
            Rows::Usage(r, batch) => pg_insert(&mut self.0, r, batch),
            Rows::Tokens(r, batch) => pg_insert(&mut self.0, r, batch),
            Rows::Redemptions(r) => pg_insert(&mut self.0, r, ""),
        }
    }

    /// One multi-row upsert: each column is sent as one array parameter and
    /// `UNNEST` turns the arrays back into rows (one statement per batch
    /// instead of one per key).
    fn add_to_rollup(&mut self, add: &RollupAdd) -> Result<()> {
        if add.rows.is_empty() {
            return Ok(());
        }
        let key_columns: Vec<Vec<&str>> = (0..add.key.len())
            .map(|i| add.rows.iter().map(|(k, _)| k[i].as_str()).collect())
            .collect();
        let sum_columns: Vec<Vec<i64>> = (0..add.sums.len())
            .map(|i| add.rows.iter().map(|(_, s)| s[i]).collect())
            .collect();
        let arrays: Vec<String> = (1..=add.width())
            .map(|i| {
                let ty = if i <= add.key.len() { "text" } else { "int8" };
                format!("${i}::{ty}[]")
            })
            .collect();
        let sql = add.upsert_sql(&format!("SELECT * FROM UNNEST({})", arrays.join(", ")));
        let params: Vec<&(dyn postgres::types::ToSql + Sync)> = key_columns
            .iter()
            .map(|c| c as &(dyn postgres::types::ToSql + Sync))
            .chain(
                sum_columns
                    .iter()
                    .map(|c| c as &(dyn postgres::types::ToSql + Sync)),
            )
            .collect();
        self.0.execute(&sql, &params)?;
        Ok(())
    }
}

/// `COPY … FROM STDIN BINARY`: one stream per table per batch, no per-row
/// statement or parameter parsing on the server.
fn pg_insert<R: BulkRow>(
    tx: &mut postgres::Transaction<'_>,
    rows: &[R],
    batch: &str,
) -> Result<()> {
    use postgres::types::Type;
    if rows.is_empty() {
        return Ok(());
    }
    let types: Vec<Type> = R::COLUMNS
        .iter()
        .map(|(_, ty)| match ty {
            Ty::Text => Type::TEXT,
            Ty::Int => Type::INT8,
        })
        .collect();
    let sql = format!(
        "COPY {} ({}) FROM STDIN BINARY",
        R::TABLE,
        column_list(R::COLUMNS)
    );
    let mut w = postgres::binary_copy::BinaryCopyInWriter::new(tx.copy_in(&sql)?, &types);
    for r in rows {
        w.write_raw((0..R::COLUMNS.len()).map(|i| r.col(i, batch)))?;
    }
    w.finish()?;
    Ok(())
}

//! The ledger store: one type over SQLite (embedded default) or PostgreSQL.
//! Every operation is one transaction; every admin action writes its audit
//! row in the same transaction, so neither exists without the other.
//!
//! All methods block. From async code call them inside
//! `tokio::task::spawn_blocking` (the PostgreSQL client is additionally made
//! safe to call from a runtime thread, at the cost of a thread hop).

use super::chain::Chain;
use super::error::{LedgerError, Result};
use super::metrics::LedgerMetrics;
use super::money::Fen;
use super::quota::Quota;
use super::rating::{default_rate_card, RateBook, RateCard};
use super::schema::migrate;
use super::sql::{Backend, Cell, Conn, Tx, Val};
use super::types::{
    validate_tenant_name, AuditEvent, ChargeKind, Month, Tenant, Voucher, VoucherSpec,
};
use chrono::{DateTime, TimeZone, Utc};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use std::collections::BTreeMap;
use std::sync::{Arc, Mutex, OnceLock};

/// What one ingestion call did.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct IngestReport {
    pub usage_new: usize,
    pub usage_duplicate: usize,
    pub tokens_new: usize,
    pub tokens_duplicate: usize,
    pub gross_fen: Fen,
    pub voucher_fen: Fen,
    pub net_fen: Fen,
}

/// GPU-hours and tokens used in one month, for quota enforcement.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize, Deserialize)]
pub struct MonthUse {
    pub milli_gpu_seconds: i64,
    pub gpu_hours: f64,
    pub tokens: i64,
}

/// Usage and money over a period (the API's `/v1/usage` shape).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct UsageSummary {
    pub gpu_hours: f64,
    /// Prompt + completion tokens per tier.
    pub tokens: BTreeMap<String, i64>,
    /// Facility energy (IT × PUE).
    pub kwh: f64,
    pub carbon_kg: f64,
    pub gross_fen: Fen,
    pub voucher_fen: Fen,
    pub net_fen: Fen,
}

/// The ledger. Cheap to clone (shared connection).
#[derive(Clone)]
pub struct Ledger {
    inner: Arc<Inner>,
}

struct Inner {
    conn: Mutex<Conn>,
    metrics: OnceLock<LedgerMetrics>,
    /// The SQLite file, when the ledger is one (for [`Ledger::claim`]).
    file: Option<std::path::PathBuf>,
}

pub(super) fn now_s() -> i64 {
    Utc::now().timestamp()
}

pub(super) fn ts(s: i64) -> DateTime<Utc> {
    Utc.timestamp_opt(s, 0).single().unwrap_or_default()
}

/// SHA-256 of an API key, hex: what the ledger stores instead of the key.
pub fn hash_api_key(key: &str) -> String {
    hex::encode(Sha256::digest(key.as_bytes()))
}

pub(super) fn random_hex(bytes: usize) -> Result<String> {
    let mut buf = vec![0u8; bytes];
    getrandom::fill(&mut buf).map_err(|e| LedgerError::Storage(format!("random: {e}")))?;
    Ok(hex::encode(buf))
}

pub(super) fn audit_tx(
    tx: &mut dyn Tx,
    actor: &str,
    action: &str,
    target: &str,
    detail: &serde_json::Value,
) -> Result<()> {
    tx.exec(
        "INSERT INTO audit (at_ms, actor, action, target, detail) VALUES ($1, $2, $3, $4, $5)",
        &[
            Val::I(Utc::now().timestamp_millis()),
            Val::T(actor),
            Val::T(action),
            Val::T(target),
            Val::T(&detail.to_string()),
        ],
    )?;
    Ok(())
}

/// Posts a balanced journal entry as the chain's next link and saves the
/// chain's head.
fn post_entry(
    tx: &mut dyn Tx,
    id: &str,
    kind: &str,
    memo: &str,
    postings: &BTreeMap<String, Fen>,
) -> Result<()> {
    let mut chain = Chain::open(tx)?;
    post_entry_in(tx, &mut chain, id, kind, memo, postings, &[])?;
    chain.save(tx)
}

/// Posts a balanced journal entry as `chain`'s next link, sealing the
/// redemptions whose hashes are `sealed` (the caller saves the head).
pub(super) fn post_entry_in(
    tx: &mut dyn Tx,
    chain: &mut Chain,
    id: &str,
    kind: &str,
    memo: &str,
    postings: &BTreeMap<String, Fen>,
    sealed: &[[u8; 32]],
) -> Result<()> {
    debug_assert_eq!(postings.values().sum::<Fen>(), 0, "unbalanced entry {id}");
    if postings.values().sum::<Fen>() != 0 {
        return Err(LedgerError::Storage(format!(
            "refusing unbalanced journal entry {id}"
        )));
    }
    let at_s = now_s();
    let link = chain.entry(id, at_s, kind, memo, postings, sealed);
    tx.exec(
        "INSERT INTO journal (id, at_s, kind, memo, chain_seq, chain_hash) VALUES ($1, $2, $3, $4, $5, $6)",
        &[
            Val::T(id),
            Val::I(at_s),
            Val::T(kind),
            Val::T(memo),
            Val::I(link.seq),
            Val::T(&link.hash),
        ],
    )?;
    for (account, amount) in postings {
        tx.exec(
            "INSERT INTO postings (entry_id, account, amount_fen) VALUES ($1, $2, $3)",
            &[Val::T(id), Val::T(account), Val::I(*amount)],
        )?;
    }
    Ok(())
}

/// Inserts a tenant under an existing parent (audited), in `tx`.
pub(super) fn insert_tenant(
    tx: &mut dyn Tx,
    actor: &str,
    name: &str,
    parent: Option<&str>,
    now: i64,
) -> Result<()> {
    if tenant_exists(tx, name)? {
        return Err(LedgerError::Conflict {
            what: "tenant",
            id: name.into(),
        });
    }
    if let Some(p) = parent {
        if !tenant_exists(tx, p)? {
            return Err(LedgerError::invalid(
                "parent",
                format!("parent tenant '{p}' does not exist; create it first"),
            ));
        }
    }
    tx.exec(
        "INSERT INTO tenants (name, parent, created_at) VALUES ($1, $2, $3)",
        &[Val::T(name), parent.map_or(Val::NullT, Val::T), Val::I(now)],
    )?;
    audit_tx(
        tx,
        actor,
        "tenant.create",
        name,
        &serde_json::json!({ "parent": parent }),
    )
}

pub(super) fn tenant_exists(tx: &mut dyn Tx, name: &str) -> Result<bool> {
    Ok(!tx
        .rows("SELECT 1 FROM tenants WHERE name = $1", &[Val::T(name)])?
        .is_empty())
}

pub(super) fn require_tenant(tx: &mut dyn Tx, name: &str) -> Result<()> {
    if tenant_exists(tx, name)? {
        Ok(())
    } else {
        Err(LedgerError::UnknownTenant(name.to_string()))
    }
}

pub(super) fn load_rates(tx: &mut dyn Tx) -> Result<RateBook> {
    let rows = tx.rows("SELECT body FROM rate_cards ORDER BY version", &[])?;
    let cards = rows
        .iter()
        .map(|r| {
            serde_json::from_str::<RateCard>(&r[0].t())
                .map_err(|e| LedgerError::Storage(format!("stored rate card unreadable: {e}")))
        })
        .collect::<Result<Vec<_>>>()?;
    Ok(RateBook::new(cards))
}

pub(super) const VOUCHER_COLUMNS: &str = "id, tenant, issuer, face_value_fen, balance_fen, copay_ratio_bp, valid_from, valid_until, regions, kinds, issued_at, tiers, models, shared_gross_fen";

pub(super) fn voucher_from_row(r: &[Cell]) -> Result<Voucher> {
    let kinds: Vec<ChargeKind> = serde_json::from_str(&r[9].t())
        .map_err(|e| LedgerError::Storage(format!("stored voucher kinds unreadable: {e}")))?;
    let regions: Vec<String> = serde_json::from_str(&r[8].t())
        .map_err(|e| LedgerError::Storage(format!("stored voucher regions unreadable: {e}")))?;
    Ok(Voucher {
        id: r[0].t(),
        tenant: r[1].t(),
        issuer: r[2].t(),
        face_value_fen: r[3].i(),
        balance_fen: r[4].i(),
        copay_ratio_bp: r[5].i(),
        valid_from: ts(r[6].i()),
        valid_until: ts(r[7].i()),
        regions,
        kinds,
        issued_at: ts(r[10].i()),
        shared_gross_fen: r[13].i(),
        tiers: serde_json::from_str(&r[11].t())
            .map_err(|e| LedgerError::Storage(format!("stored voucher tiers unreadable: {e}")))?,
        models: serde_json::from_str(&r[12].t())
            .map_err(|e| LedgerError::Storage(format!("stored voucher models unreadable: {e}")))?,
    })
}

/// Keys of libpq's `key=value` connection strings.
const LIBPQ_KEYS: [&str; 12] = [
    "host",
    "hostaddr",
    "port",
    "dbname",
    "user",
    "password",
    "passfile",
    "sslmode",
    "sslpassword",
    "options",
    "application_name",
    "connect_timeout",
];

/// A ledger location is a `postgres://` / `postgresql://` URL or a SQLite
/// path. Anything else is refused before it is opened — a libpq `key=value`
/// string would otherwise become a SQLite file named after it (password
/// included) — and the error never repeats the text.
pub fn check_location(url: &str) -> Result<()> {
    if url.starts_with("postgres://") || url.starts_with("postgresql://") {
        return Ok(());
    }
    if let Some((scheme, _)) = url.split_once("://") {
        return Err(LedgerError::invalid(
            "db",
            format!("{scheme}:// is not a ledger; give a postgres:// URL (e.g. postgres://user@host:5432/ledger) or a SQLite file path"),
        ));
    }
    let libpq = url.split_whitespace().any(|w| {
        w.split_once('=')
            .is_some_and(|(k, _)| LIBPQ_KEYS.contains(&k.to_ascii_lowercase().as_str()))
    });
    if libpq {
        return Err(LedgerError::invalid(
            "db",
            "this looks like a libpq key=value connection string (not shown: it may hold a password); give a postgres:// URL instead, e.g. postgres://user:PASSWORD@host:5432/ledger (percent-encoded; keep it in a Secret or an environment variable, ZHISUAN_LEDGER_DB)",
        ));
    }
    Ok(())
}

/// SQLite page cache of the API's and controller's ledger (SQLite's default
/// is 2 MiB): sized for ingestion bursts.
pub const SQLITE_CACHE_MIB: u32 = 64;

impl Ledger {
    /// Opens (and migrates) a ledger: `postgres://…` / `postgresql://…` for
    /// PostgreSQL, `:memory:` for a private in-memory SQLite, else a SQLite
    /// file path (created if absent; WAL, durable commits).
    pub fn open(url: &str) -> Result<Ledger> {
        Self::open_with(url, SQLITE_CACHE_MIB)
    }

    /// [`Ledger::open`] with a SQLite page cache of `sqlite_cache_mib` MiB
    /// (the cache fills up to that size as the file grows; PostgreSQL ignores it).
    pub fn open_with(url: &str, sqlite_cache_mib: u32) -> Result<Ledger> {
        check_location(url)?;
        let mut conn = if url.starts_with("postgres://") || url.starts_with("postgresql://") {
            let url = url.to_string();
            let connect = move || postgres::Client::connect(&url, postgres::NoTls);
            let client = if tokio::runtime::Handle::try_current().is_ok() {
                std::thread::spawn(connect)
                    .join()
                    .map_err(|_| LedgerError::Storage("postgres connect panicked".into()))??
            } else {
                connect()?
            };
            Conn::Postgres(client)
        } else {
            if url.is_empty() {
                return Err(LedgerError::invalid(
                    "db",
                    "empty ledger location: give a SQLite file path or a postgres:// URL",
                ));
            }
            let c = rusqlite::Connection::open(url)?;
            c.busy_timeout(std::time::Duration::from_secs(10))?;
            if url != ":memory:" {
                c.pragma_update(None, "journal_mode", "WAL")?;
            }
            // FULL: a committed batch survives power loss, not just a crash.
            c.pragma_update(None, "synchronous", "FULL")?;
            c.pragma_update(None, "foreign_keys", "ON")?;
            // Checkpoint the WAL every ~40 MB instead of every 4 MB: fewer
            // fsyncs per large ingestion batch.
            c.pragma_update(None, "wal_autocheckpoint", 10_000)?;
            // Page cache in KiB (negative): ingestion's index lookups and
            // inserts stay in memory instead of re-reading pages.
            c.pragma_update(None, "cache_size", -(i64::from(sqlite_cache_mib) * 1024))?;
            c.set_prepared_statement_cache_capacity(64);
            Conn::Sqlite(c)
        };
        migrate(&mut conn)?;
        let file = match &conn {
            Conn::Sqlite(_) if url != ":memory:" => Some(std::path::PathBuf::from(url)),
            _ => None,
        };
        Ok(Ledger {
            inner: Arc::new(Inner {
                conn: Mutex::new(conn),
                metrics: OnceLock::new(),
                file,
            }),
        })
    }

    /// The SQLite file behind this ledger (`None`: PostgreSQL or in memory).
    pub(super) fn file(&self) -> Option<&std::path::Path> {
        self.inner.file.as_deref()
    }

    pub fn backend(&self) -> Backend {
        self.lock().backend()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Conn> {
        // A panic while holding the lock left no open transaction behind
        // (rolled back on drop), so the connection is still usable.
        self.inner.conn.lock().unwrap_or_else(|e| e.into_inner())
    }

    pub(super) fn write<T: Send>(
        &self,
        f: impl FnOnce(&mut dyn Tx) -> Result<T> + Send,
    ) -> Result<T> {
        self.lock().with_tx(true, f)
    }

    pub(super) fn read<T: Send>(
        &self,
        f: impl FnOnce(&mut dyn Tx) -> Result<T> + Send,
    ) -> Result<T> {
        self.lock().with_tx(false, f)
    }

    /// Registers the per-tenant metrics on `registry` and sets voucher balance
    /// gauges from the stored balances. Counters then grow with each new record.
    pub fn register_metrics(&self, registry: &prometheus::Registry) -> Result<()> {
        let m = LedgerMetrics::new(registry)
            .map_err(|e| LedgerError::Storage(format!("metrics: {e}")))?;
        for v in self.vouchers(None)? {
            m.set_voucher(&v);
        }
        // Counters start from the stored totals (summed from the monthly
        // rollups), so a restarted process (same database) carries on
        // instead of starting again at zero.
        let (usage, tokens) = self.read(|tx| {
            let u = tx.rows(
                "SELECT tenant, region, model, CAST(SUM(milli_gpu_s) AS BIGINT), CAST(SUM(facility_j) AS BIGINT), \
                 CAST(SUM(carbon_mg) AS BIGINT), CAST(SUM(gpu_fen + energy_fen) AS BIGINT), \
                 CAST(SUM(gpu_voucher_fen + energy_voucher_fen) AS BIGINT) FROM usage_rollup GROUP BY tenant, region, model",
                &[],
            )?;
            let t = tx.rows(
                "SELECT tenant, tier, CAST(SUM(prompt_tokens) AS BIGINT), CAST(SUM(completion_tokens) AS BIGINT), \
                 CAST(SUM(fen) AS BIGINT), CAST(SUM(voucher_fen) AS BIGINT) FROM tokens_rollup GROUP BY tenant, tier",
                &[],
            )?;
            Ok((u, t))
        })?;
        for r in &usage {
            m.add_usage(
                &r[0].t(),
                &r[1].t(),
                &r[2].t(),
                r[3].i(),
                r[4].i(),
                r[5].i(),
            );
            m.add_money(&r[0].t(), r[6].i(), r[7].i());
        }
        for r in &tokens {
            m.add_tokens(&r[0].t(), &r[1].t(), r[2].i(), r[3].i());
            m.add_money(&r[0].t(), r[4].i(), r[5].i());
        }
        if self.inner.metrics.set(m).is_err() {
            return Err(LedgerError::Conflict {
                what: "metrics registration",
                id: "ledger".into(),
            });
        }
        Ok(())
    }

    pub fn metrics(&self) -> Option<&LedgerMetrics> {
        self.inner.metrics.get()
    }

    // ---- tenants -------------------------------------------------------

    /// Creates a tenant under an existing parent (so the tree has no cycles).
    pub fn create_tenant(&self, actor: &str, name: &str, parent: Option<&str>) -> Result<Tenant> {
        validate_tenant_name(name)?;
        if let Some(p) = parent {
            validate_tenant_name(p).map_err(|_| {
                LedgerError::invalid("parent", format!("'{p}' is not a valid tenant name"))
            })?;
        }
        let now = now_s();
        self.write(|tx| insert_tenant(tx, actor, name, parent, now))?;
        Ok(Tenant {
            name: name.into(),
            parent: parent.map(str::to_string),
            created_at: ts(now),
        })
    }

    pub fn tenant(&self, name: &str) -> Result<Option<Tenant>> {
        let rows = self.read(|tx| {
            tx.rows(
                "SELECT name, parent, created_at FROM tenants WHERE name = $1",
                &[Val::T(name)],
            )
        })?;
        Ok(rows.first().map(|r| Tenant {
            name: r[0].t(),
            parent: r[1].opt_t(),
            created_at: ts(r[2].i()),
        }))
    }

    pub fn tenants(&self) -> Result<Vec<Tenant>> {
        self.tenants_after(None, i64::MAX)
    }

    /// At most `limit` tenants named after `after`, in name order.
    pub fn tenants_after(&self, after: Option<&str>, limit: i64) -> Result<Vec<Tenant>> {
        let rows = self.read(|tx| {
            tx.rows(
                "SELECT name, parent, created_at FROM tenants WHERE name > $1 ORDER BY name LIMIT $2",
                &[Val::T(after.unwrap_or("")), Val::I(limit.max(0))],
            )
        })?;
        Ok(rows
            .iter()
            .map(|r| Tenant {
                name: r[0].t(),
                parent: r[1].opt_t(),
                created_at: ts(r[2].i()),
            })
            .collect())
    }

    /// The tenant's ancestors, parent first, root last.
    pub fn ancestors(&self, name: &str) -> Result<Vec<String>> {
        let parents: BTreeMap<String, Option<String>> = self
            .tenants()?
            .into_iter()
            .map(|t| (t.name, t.parent))
            .collect();
        if !parents.contains_key(name) {
            return Err(LedgerError::UnknownTenant(name.into()));
        }
        let mut out = Vec::new();
        let mut cur = parents.get(name).cloned().flatten();
        while let Some(p) = cur {
            if out.contains(&p) || out.len() > parents.len() {
                break; // cannot happen (parents exist before children); never loop
            }
            cur = parents.get(&p).cloned().flatten();
            out.push(p);
        }
        Ok(out)
    }

    // ---- quotas --------------------------------------------------------

    pub fn set_quota(&self, actor: &str, tenant: &str, quota: &Quota) -> Result<()> {
        quota.validate()?;
        let body = serde_json::to_string(quota).map_err(|e| LedgerError::Storage(e.to_string()))?;
        self.write(|tx| {
            require_tenant(tx, tenant)?;
            tx.exec(
                "INSERT INTO quotas (tenant, body, updated_at) VALUES ($1, $2, $3) \
                 ON CONFLICT (tenant) DO UPDATE SET body = excluded.body, updated_at = excluded.updated_at",
                &[Val::T(tenant), Val::T(&body), Val::I(now_s())],
            )?;
            audit_tx(tx, actor, "quota.set", tenant, &serde_json::to_value(quota).unwrap_or_default())
        })
    }

    /// The tenant's quota; `None` when none was set (unlimited).
    pub fn quota(&self, tenant: &str) -> Result<Option<Quota>> {
        let rows = self.read(|tx| {
            require_tenant(tx, tenant)?;
            tx.rows(
                "SELECT body FROM quotas WHERE tenant = $1",
                &[Val::T(tenant)],
            )
        })?;
        rows.first()
            .map(|r| {
                serde_json::from_str(&r[0].t())
                    .map_err(|e| LedgerError::Storage(format!("stored quota unreadable: {e}")))
            })
            .transpose()
    }

    /// GPU time and tokens the tenant used in `month` (intervals starting in
    /// it), from the monthly rollups: a quota check costs two key lookups.
    pub fn month_use(&self, tenant: &str, month: Month) -> Result<MonthUse> {
        let month = month.to_string();
        let (g, t) = self.read(|tx| {
            let g = tx.rows(
                "SELECT COALESCE(CAST(SUM(milli_gpu_s) AS BIGINT), 0) FROM usage_rollup WHERE tenant = $1 AND month = $2",
                &[Val::T(tenant), Val::T(&month)],
            )?;
            let t = tx.rows(
                "SELECT COALESCE(CAST(SUM(prompt_tokens + completion_tokens) AS BIGINT), 0) FROM tokens_rollup WHERE tenant = $1 AND month = $2",
                &[Val::T(tenant), Val::T(&month)],
            )?;
            Ok((g[0][0].i(), t[0][0].i()))
        })?;
        Ok(MonthUse {
            milli_gpu_seconds: g,
            gpu_hours: g as f64 / 3.6e6,
            tokens: t,
        })
    }

    // ---- rate cards ----------------------------------------------------

    /// Adds the next rate card version (checked for gaps against the last).
    pub fn add_rate_card(&self, actor: &str, card: &RateCard) -> Result<()> {
        let body = serde_json::to_string(card).map_err(|e| LedgerError::Storage(e.to_string()))?;
        self.write(|tx| {
            load_rates(tx)?.check_next(card)?;
            tx.exec(
                "INSERT INTO rate_cards (version, effective_from, body, created_at) VALUES ($1, $2, $3, $4)",
                &[Val::I(card.version), Val::T(&card.effective_from.to_string()), Val::T(&body), Val::I(now_s())],
            )?;
            audit_tx(tx, actor, "rate_card.add", &card.version.to_string(), &serde_json::to_value(card).unwrap_or_default())
        })
    }

    /// Installs [`default_rate_card`] when no card exists yet; returns whether it did.
    pub fn ensure_rate_card(&self, actor: &str) -> Result<bool> {
        if !self.rate_cards()?.is_empty() {
            return Ok(false);
        }
        self.add_rate_card(actor, &default_rate_card())?;
        Ok(true)
    }

    pub fn rate_cards(&self) -> Result<Vec<RateCard>> {
        Ok(self.read(load_rates)?.cards().to_vec())
    }

    // ---- vouchers ------------------------------------------------------

    /// Issues a voucher (idempotent when the spec carries an id: re-issuing the
    /// same id with the same spec returns the stored voucher; a different spec
    /// is a conflict).
    pub fn issue_voucher(&self, actor: &str, spec: &VoucherSpec) -> Result<Voucher> {
        spec.validate()?;
        let id = match &spec.id {
            Some(id) => id.clone(),
            None => format!("v-{}", random_hex(8)?),
        };
        let regions = serde_json::to_string(&spec.regions).unwrap_or_else(|_| "[]".into());
        let mut kinds_sorted: Vec<ChargeKind> = spec.kinds.clone();
        kinds_sorted.sort();
        kinds_sorted.dedup();
        let kinds = serde_json::to_string(&kinds_sorted).unwrap_or_else(|_| "[]".into());
        let mut tiers_sorted = spec.tiers.clone();
        tiers_sorted.sort();
        tiers_sorted.dedup();
        let tiers = serde_json::to_string(&tiers_sorted).unwrap_or_else(|_| "[]".into());
        let models = serde_json::to_string(&spec.models).unwrap_or_else(|_| "[]".into());
        let now = now_s();
        let voucher = Voucher {
            id: id.clone(),
            tenant: spec.tenant.clone(),
            issuer: spec.issuer.clone(),
            face_value_fen: spec.face_value_fen,
            balance_fen: spec.face_value_fen,
            copay_ratio_bp: spec.copay_ratio_bp,
            valid_from: ts(spec.valid_from.timestamp()),
            valid_until: ts(spec.valid_until.timestamp()),
            regions: spec.regions.clone(),
            kinds: kinds_sorted,
            tiers: tiers_sorted,
            models: spec.models.clone(),
            issued_at: ts(now),
            shared_gross_fen: 0,
        };
        let stored = self.write(|tx| {
            require_tenant(tx, &spec.tenant)?;
            let existing = tx.rows(
                &format!("SELECT {VOUCHER_COLUMNS} FROM vouchers WHERE id = $1"),
                &[Val::T(&id)],
            )?;
            if let Some(r) = existing.first() {
                let v = voucher_from_row(r)?;
                return if v.issued_as(spec) { Ok(v) } else { Err(LedgerError::Conflict { what: "voucher", id: id.clone() }) };
            }
            tx.exec(
                &format!("INSERT INTO vouchers ({VOUCHER_COLUMNS}) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, 0)"),
                &[
                    Val::T(&id),
                    Val::T(&spec.tenant),
                    Val::T(&spec.issuer),
                    Val::I(spec.face_value_fen),
                    Val::I(spec.face_value_fen),
                    Val::I(spec.copay_ratio_bp),
                    Val::I(voucher.valid_from.timestamp()),
                    Val::I(voucher.valid_until.timestamp()),
                    Val::T(&regions),
                    Val::T(&kinds),
                    Val::I(now),
                    Val::T(&tiers),
                    Val::T(&models),
                ],
            )?;
            let mut postings = BTreeMap::new();
            postings.insert(format!("grant:{}", spec.issuer), spec.face_value_fen);
            postings.insert(format!("voucher:{id}"), -spec.face_value_fen);
            post_entry(tx, &format!("issue-{id}"), "voucher.issue", &spec.issuer, &postings)?;
            audit_tx(tx, actor, "voucher.issue", &id, &serde_json::to_value(&voucher).unwrap_or_default())?;
            Ok(voucher.clone())
        })?;
        if let Some(m) = self.metrics() {
            m.set_voucher(&stored);
        }
        Ok(stored)
    }

    /// Vouchers of one tenant (or all), earliest expiry first.
    pub fn vouchers(&self, tenant: Option<&str>) -> Result<Vec<Voucher>> {
        let rows = self.read(|tx| match tenant {
            Some(t) => tx.rows(
                &format!("SELECT {VOUCHER_COLUMNS} FROM vouchers WHERE tenant = $1 ORDER BY valid_until, id"),
                &[Val::T(t)],
            ),
            None => tx.rows(&format!("SELECT {VOUCHER_COLUMNS} FROM vouchers ORDER BY valid_until, id"), &[]),
        })?;
        rows.iter().map(|r| voucher_from_row(r)).collect()
    }

    // ---- adjustments ---------------------------------------------------

    /// Posts a manual adjustment to a tenant's payable (positive = charge more,
    /// negative = credit), audited. `id` makes it idempotent.
    pub fn adjust(
        &self,
        actor: &str,
        id: &str,
        tenant: &str,
        fen: Fen,
        reason: &str,
        at: DateTime<Utc>,
    ) -> Result<bool> {
        if id.is_empty() {
            return Err(LedgerError::invalid(
                "id",
                "an adjustment needs an id (makes it idempotent)",
            ));
        }
        if fen == 0 {
            return Err(LedgerError::invalid(
                "fen",
                "an adjustment of 0 fen changes nothing",
            ));
        }
        if reason.trim().is_empty() {
            return Err(LedgerError::invalid(
                "reason",
                "say why (kept for auditors)",
            ));
        }
        self.write(|tx| {
            require_tenant(tx, tenant)?;
            if !tx.rows("SELECT 1 FROM adjustments WHERE id = $1", &[Val::T(id)])?.is_empty() {
                return Ok(false);
            }
            tx.exec(
                "INSERT INTO adjustments (id, tenant, fen, reason, at_s, actor) VALUES ($1, $2, $3, $4, $5, $6)",
                &[Val::T(id), Val::T(tenant), Val::I(fen), Val::T(reason), Val::I(at.timestamp()), Val::T(actor)],
            )?;
            let mut postings = BTreeMap::new();
            postings.insert(format!("tenant:{tenant}"), fen);
            postings.insert("adjustments".to_string(), -fen);
            post_entry(tx, &format!("adjust-{id}"), "adjustment", reason, &postings)?;
            audit_tx(tx, actor, "ledger.adjust", tenant, &serde_json::json!({ "id": id, "fen": fen, "reason": reason }))?;
            Ok(true)
        })
    }

    // ---- reports -------------------------------------------------------

    /// Sum of all postings to an account (debits positive): `tenant:{t}` is
    /// the tenant's net payable (plus adjustments), `voucher:{id}` minus the balance.
    pub fn account_balance(&self, account: &str) -> Result<Fen> {
        let rows = self.read(|tx| {
            tx.rows(
                "SELECT COALESCE(CAST(SUM(amount_fen) AS BIGINT), 0) FROM postings WHERE account = $1",
                &[Val::T(account)],
            )
        })?;
        Ok(rows[0][0].i())
    }

    /// Sum of every posting in the ledger: zero when every entry balances.
    pub fn trial_balance(&self) -> Result<Fen> {
        let rows = self.read(|tx| {
            tx.rows(
                "SELECT COALESCE(CAST(SUM(amount_fen) AS BIGINT), 0) FROM postings",
                &[],
            )
        })?;
        Ok(rows[0][0].i())
    }

    /// Usage and money of `tenant` for intervals starting in [from, to) (each
    /// bound optional).
    pub fn usage_summary(
        &self,
        tenant: &str,
        from: Option<DateTime<Utc>>,
        to: Option<DateTime<Utc>>,
    ) -> Result<UsageSummary> {
        let aligned = |t: Option<DateTime<Utc>>| t.is_none_or(|t| Month::of(t).start() == t);
        let from_rollups = aligned(from) && aligned(to);
        self.usage_summary_by(tenant, from, to, from_rollups)
    }

    /// [`Ledger::usage_summary`] from the monthly rollups (bounds must be
    /// month starts or absent) or from the raw rows (any bounds).
    pub(crate) fn usage_summary_by(
        &self,
        tenant: &str,
        from: Option<DateTime<Utc>>,
        to: Option<DateTime<Utc>>,
        from_rollups: bool,
    ) -> Result<UsageSummary> {
        // Month keys `YYYY-MM` order like the months they name.
        let month_key = |t: Option<DateTime<Utc>>, none: &str| {
            t.map_or(none.to_string(), |t| Month::of(t).to_string())
        };
        let (from_key, to_key) = (month_key(from, "0000-00"), month_key(to, "9999-99"));
        let from = from.map_or(i64::MIN, |t| t.timestamp());
        let to = to.map_or(i64::MAX, |t| t.timestamp());
        let (usage, tokens, cond, params) = if from_rollups {
            (
                "usage_rollup",
                "tokens_rollup",
                "month >= $2 AND month < $3",
                [Val::T(tenant), Val::T(&from_key), Val::T(&to_key)],
            )
        } else {
            (
                "usage",
                "tokens",
                "start_s >= $2 AND start_s < $3",
                [Val::T(tenant), Val::I(from), Val::I(to)],
            )
        };
        let (u, t) = self.read(|tx| {
            require_tenant(tx, tenant)?;
            let u = tx.rows(
                &format!(
                    "SELECT COALESCE(CAST(SUM(milli_gpu_s) AS BIGINT), 0), COALESCE(CAST(SUM(facility_j) AS BIGINT), 0), \
                     COALESCE(CAST(SUM(carbon_mg) AS BIGINT), 0), COALESCE(CAST(SUM(gpu_fen + energy_fen) AS BIGINT), 0), \
                     COALESCE(CAST(SUM(gpu_voucher_fen + energy_voucher_fen) AS BIGINT), 0) \
                     FROM {usage} WHERE tenant = $1 AND {cond}"
                ),
                &params,
            )?;
            let t = tx.rows(
                &format!(
                    "SELECT tier, CAST(SUM(prompt_tokens + completion_tokens) AS BIGINT), CAST(SUM(fen) AS BIGINT), \
                     CAST(SUM(voucher_fen) AS BIGINT) FROM {tokens} WHERE tenant = $1 AND {cond} GROUP BY tier ORDER BY tier"
                ),
                &params,
            )?;
            Ok((u, t))
        })?;
        let u = &u[0];
        let mut s = UsageSummary {
            gpu_hours: u[0].i() as f64 / 3.6e6,
            tokens: BTreeMap::new(),
            kwh: u[1].i() as f64 / 3.6e6,
            carbon_kg: u[2].i() as f64 / 1e6,
            gross_fen: u[3].i(),
            voucher_fen: u[4].i(),
            net_fen: 0,
        };
        for r in &t {
            s.tokens.insert(r[0].t(), r[1].i());
            s.gross_fen += r[2].i();
            s.voucher_fen += r[3].i();
        }
        s.net_fen = s.gross_fen - s.voucher_fen;
        Ok(s)
    }

    /// Audit events after sequence number `since` (exclusive), oldest first.
    pub fn audit_since(&self, since: i64, limit: i64) -> Result<Vec<AuditEvent>> {
        let rows = self.read(|tx| {
            tx.rows(
                "SELECT seq, at_ms, actor, action, target, detail FROM audit WHERE seq > $1 ORDER BY seq LIMIT $2",
                &[Val::I(since), Val::I(limit.clamp(1, 10_000))],
            )
        })?;
        Ok(rows.iter().map(|r| audit_from_row(r)).collect())
    }

    /// Audit events at or after `since` (all when `None`), oldest first.
    pub fn audit_from(&self, since: Option<DateTime<Utc>>, limit: i64) -> Result<Vec<AuditEvent>> {
        let since_ms = since.map_or(i64::MIN, |t| t.timestamp_millis());
        let rows = self.read(|tx| {
            tx.rows(
                "SELECT seq, at_ms, actor, action, target, detail FROM audit WHERE at_ms >= $1 ORDER BY seq LIMIT $2",
                &[Val::I(since_ms), Val::I(limit.clamp(1, 10_000))],
            )
        })?;
        Ok(rows.iter().map(|r| audit_from_row(r)).collect())
    }

    /// Records an admin action the caller performed (the API reports its own
    /// actions here). Never pass secrets in `detail`.
    pub fn audit(
        &self,
        actor: &str,
        action: &str,
        target: &str,
        detail: serde_json::Value,
    ) -> Result<()> {
        if action.is_empty() {
            return Err(LedgerError::invalid("action", "must not be empty"));
        }
        self.write(|tx| audit_tx(tx, actor, action, target, &detail))
    }

    /// Runs a read-only query for the statement module.
    pub(crate) fn read_rows(&self, sql: &str, params: &[Val<'_>]) -> Result<Vec<Vec<Cell>>> {
        self.read(|tx| tx.rows(sql, params))
    }
}

fn audit_from_row(r: &[Cell]) -> AuditEvent {
    AuditEvent {
        seq: r[0].i(),
        at: Utc
            .timestamp_millis_opt(r[1].i())
            .single()
            .unwrap_or_default(),
        actor: r[2].t(),
        action: r[3].t(),
        target: r[4].t(),
        detail: serde_json::from_str(&r[5].t()).unwrap_or(serde_json::Value::Null),
    }
}

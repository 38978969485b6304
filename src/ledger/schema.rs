//! One schema for both backends, applied as numbered migrations. Each
//! migration runs in its own transaction and is recorded in
//! `schema_migrations`; `{serial}` is the one dialect difference.

use super::error::Result;
use super::sql::{Backend, Conn, Val};

/// (version, SQL). Append only: never edit a released migration.
pub(crate) const MIGRATIONS: &[(i64, &str)] = &[
    (
        1,
        r#"
CREATE TABLE tenants (
    name TEXT PRIMARY KEY,
    parent TEXT REFERENCES tenants(name),
    created_at BIGINT NOT NULL
);
CREATE TABLE api_keys (
    key_hash TEXT PRIMARY KEY,
    tenant TEXT NOT NULL REFERENCES tenants(name),
    created_at BIGINT NOT NULL,
    revoked_at BIGINT
);
CREATE INDEX api_keys_tenant ON api_keys (tenant);
CREATE TABLE quotas (
    tenant TEXT PRIMARY KEY REFERENCES tenants(name),
    body TEXT NOT NULL,
    updated_at BIGINT NOT NULL
);
CREATE TABLE rate_cards (
    version BIGINT PRIMARY KEY,
    effective_from TEXT NOT NULL UNIQUE,
    body TEXT NOT NULL,
    created_at BIGINT NOT NULL
);
CREATE TABLE vouchers (
    id TEXT PRIMARY KEY,
    tenant TEXT NOT NULL REFERENCES tenants(name),
    issuer TEXT NOT NULL,
    face_value_fen BIGINT NOT NULL CHECK (face_value_fen > 0),
    balance_fen BIGINT NOT NULL CHECK (balance_fen >= 0 AND balance_fen <= face_value_fen),
    copay_ratio_bp BIGINT NOT NULL CHECK (copay_ratio_bp > 0 AND copay_ratio_bp <= 10000),
    valid_from BIGINT NOT NULL,
    valid_until BIGINT NOT NULL,
    regions TEXT NOT NULL,
    kinds TEXT NOT NULL,
    issued_at BIGINT NOT NULL,
    CHECK (valid_until > valid_from)
);
CREATE INDEX vouchers_tenant ON vouchers (tenant);
CREATE TABLE usage (
    id TEXT PRIMARY KEY,
    source TEXT NOT NULL,
    tenant TEXT NOT NULL,
    job TEXT NOT NULL,
    region TEXT NOT NULL,
    node TEXT NOT NULL,
    model TEXT NOT NULL,
    gpu_milli BIGINT NOT NULL,
    start_s BIGINT NOT NULL,
    end_s BIGINT NOT NULL,
    milli_gpu_s BIGINT NOT NULL,
    it_energy_j BIGINT NOT NULL,
    pue_milli BIGINT NOT NULL,
    facility_j BIGINT NOT NULL,
    green_milli BIGINT NOT NULL,
    grid_mg_per_kwh BIGINT NOT NULL,
    carbon_mg BIGINT NOT NULL,
    rate_version BIGINT NOT NULL,
    gpu_fen BIGINT NOT NULL,
    gpu_voucher_fen BIGINT NOT NULL CHECK (gpu_voucher_fen >= 0 AND gpu_voucher_fen <= gpu_fen),
    energy_fen BIGINT NOT NULL,
    energy_voucher_fen BIGINT NOT NULL CHECK (energy_voucher_fen >= 0 AND energy_voucher_fen <= energy_fen),
    batch TEXT NOT NULL
);
CREATE INDEX usage_tenant_start ON usage (tenant, start_s);
CREATE TABLE tokens (
    id TEXT PRIMARY KEY,
    source TEXT NOT NULL,
    tenant TEXT NOT NULL,
    service TEXT NOT NULL,
    model TEXT NOT NULL,
    region TEXT NOT NULL,
    tier TEXT NOT NULL,
    start_s BIGINT NOT NULL,
    end_s BIGINT NOT NULL,
    prompt_tokens BIGINT NOT NULL CHECK (prompt_tokens >= 0),
    completion_tokens BIGINT NOT NULL CHECK (completion_tokens >= 0),
    rate_version BIGINT NOT NULL,
    fen BIGINT NOT NULL,
    voucher_fen BIGINT NOT NULL CHECK (voucher_fen >= 0 AND voucher_fen <= fen),
    batch TEXT NOT NULL
);
CREATE INDEX tokens_tenant_start ON tokens (tenant, start_s);
CREATE TABLE redemptions (
    record_id TEXT NOT NULL,
    kind TEXT NOT NULL,
    voucher_id TEXT NOT NULL REFERENCES vouchers(id),
    tenant TEXT NOT NULL,
    fen BIGINT NOT NULL CHECK (fen > 0),
    at_s BIGINT NOT NULL,
    PRIMARY KEY (record_id, kind, voucher_id)
);
CREATE INDEX redemptions_tenant_at ON redemptions (tenant, at_s);
CREATE TABLE adjustments (
    id TEXT PRIMARY KEY,
    tenant TEXT NOT NULL REFERENCES tenants(name),
    fen BIGINT NOT NULL,
    reason TEXT NOT NULL,
    at_s BIGINT NOT NULL,
    actor TEXT NOT NULL
);
CREATE INDEX adjustments_tenant_at ON adjustments (tenant, at_s);
CREATE TABLE journal (
    id TEXT PRIMARY KEY,
    at_s BIGINT NOT NULL,
    kind TEXT NOT NULL,
    memo TEXT NOT NULL
);
CREATE TABLE postings (
    entry_id TEXT NOT NULL REFERENCES journal(id),
    account TEXT NOT NULL,
    amount_fen BIGINT NOT NULL,
    PRIMARY KEY (entry_id, account)
);
CREATE INDEX postings_account ON postings (account);
CREATE TABLE audit (
    seq {serial},
    at_ms BIGINT NOT NULL,
    actor TEXT NOT NULL,
    action TEXT NOT NULL,
    target TEXT NOT NULL,
    detail TEXT NOT NULL
);
"#,
    ),
    (
        2,
        r#"
-- Record tables keyed by (start, id) instead of the id alone: an id
-- determines its start, so uniqueness is the same, but new records land at
-- the recent end of the key order instead of at random pages (hash ids),
-- which keeps each batch's dirty pages (and WAL) small.
CREATE TABLE usage_v2 (
    id TEXT NOT NULL,
    source TEXT NOT NULL,
    tenant TEXT NOT NULL,
    job TEXT NOT NULL,
    region TEXT NOT NULL,
    node TEXT NOT NULL,
    model TEXT NOT NULL,
    gpu_milli BIGINT NOT NULL,
    start_s BIGINT NOT NULL,
    end_s BIGINT NOT NULL,
    milli_gpu_s BIGINT NOT NULL,
    it_energy_j BIGINT NOT NULL,
    pue_milli BIGINT NOT NULL,
    facility_j BIGINT NOT NULL,
    green_milli BIGINT NOT NULL,
    grid_mg_per_kwh BIGINT NOT NULL,
    carbon_mg BIGINT NOT NULL,
    rate_version BIGINT NOT NULL,
    gpu_fen BIGINT NOT NULL,
    gpu_voucher_fen BIGINT NOT NULL CHECK (gpu_voucher_fen >= 0 AND gpu_voucher_fen <= gpu_fen),
    energy_fen BIGINT NOT NULL,
    energy_voucher_fen BIGINT NOT NULL CHECK (energy_voucher_fen >= 0 AND energy_voucher_fen <= energy_fen),
    batch TEXT NOT NULL,
    PRIMARY KEY (start_s, id)
);
INSERT INTO usage_v2 SELECT * FROM usage;
DROP TABLE usage;
ALTER TABLE usage_v2 RENAME TO usage;
CREATE INDEX usage_tenant_start ON usage (tenant, start_s);
CREATE TABLE tokens_v2 (
    id TEXT NOT NULL,
    source TEXT NOT NULL,
    tenant TEXT NOT NULL,
    service TEXT NOT NULL,
    model TEXT NOT NULL,
    region TEXT NOT NULL,
    tier TEXT NOT NULL,
    start_s BIGINT NOT NULL,
    end_s BIGINT NOT NULL,
    prompt_tokens BIGINT NOT NULL CHECK (prompt_tokens >= 0),
    completion_tokens BIGINT NOT NULL CHECK (completion_tokens >= 0),
    rate_version BIGINT NOT NULL,
    fen BIGINT NOT NULL,
    voucher_fen BIGINT NOT NULL CHECK (voucher_fen >= 0 AND voucher_fen <= fen),
    batch TEXT NOT NULL,
    PRIMARY KEY (start_s, id)
);
INSERT INTO tokens_v2 SELECT * FROM tokens;
DROP TABLE tokens;
ALTER TABLE tokens_v2 RENAME TO tokens;
CREATE INDEX tokens_tenant_start ON tokens (tenant, start_s);
CREATE TABLE redemptions_v2 (
    record_id TEXT NOT NULL,
    kind TEXT NOT NULL,
    voucher_id TEXT NOT NULL REFERENCES vouchers(id),
    tenant TEXT NOT NULL,
    fen BIGINT NOT NULL CHECK (fen > 0),
    at_s BIGINT NOT NULL,
    PRIMARY KEY (at_s, record_id, kind, voucher_id)
);
INSERT INTO redemptions_v2 SELECT * FROM redemptions;
DROP TABLE redemptions;
ALTER TABLE redemptions_v2 RENAME TO redemptions;
CREATE INDEX redemptions_tenant_at ON redemptions (tenant, at_s);
CREATE TABLE usage_rollup (
    tenant TEXT NOT NULL,
    month TEXT NOT NULL,
    model TEXT NOT NULL,
    region TEXT NOT NULL,
    records BIGINT NOT NULL,
    milli_gpu_s BIGINT NOT NULL,
    gpu_fen BIGINT NOT NULL,
    gpu_voucher_fen BIGINT NOT NULL,
    it_energy_j BIGINT NOT NULL,
    facility_j BIGINT NOT NULL,
    carbon_mg BIGINT NOT NULL,
    energy_fen BIGINT NOT NULL,
    energy_voucher_fen BIGINT NOT NULL,
    PRIMARY KEY (tenant, month, model, region)
);
CREATE TABLE tokens_rollup (
    tenant TEXT NOT NULL,
    month TEXT NOT NULL,
    tier TEXT NOT NULL,
    records BIGINT NOT NULL,
    prompt_tokens BIGINT NOT NULL,
    completion_tokens BIGINT NOT NULL,
    fen BIGINT NOT NULL,
    voucher_fen BIGINT NOT NULL,
    PRIMARY KEY (tenant, month, tier)
);
CREATE TABLE redemptions_rollup (
    tenant TEXT NOT NULL,
    month TEXT NOT NULL,
    voucher_id TEXT NOT NULL,
    fen BIGINT NOT NULL,
    PRIMARY KEY (tenant, month, voucher_id)
);
INSERT INTO usage_rollup
SELECT tenant, {month(start_s)}, model, region, COUNT(*), CAST(SUM(milli_gpu_s) AS BIGINT),
       CAST(SUM(gpu_fen) AS BIGINT), CAST(SUM(gpu_voucher_fen) AS BIGINT), CAST(SUM(it_energy_j) AS BIGINT),
       CAST(SUM(facility_j) AS BIGINT), CAST(SUM(carbon_mg) AS BIGINT), CAST(SUM(energy_fen) AS BIGINT),
       CAST(SUM(energy_voucher_fen) AS BIGINT)
FROM usage GROUP BY tenant, {month(start_s)}, model, region;
INSERT INTO tokens_rollup
SELECT tenant, {month(start_s)}, tier, COUNT(*), CAST(SUM(prompt_tokens) AS BIGINT),
       CAST(SUM(completion_tokens) AS BIGINT), CAST(SUM(fen) AS BIGINT), CAST(SUM(voucher_fen) AS BIGINT)
FROM tokens GROUP BY tenant, {month(start_s)}, tier;
INSERT INTO redemptions_rollup
SELECT tenant, {month(at_s)}, voucher_id, CAST(SUM(fen) AS BIGINT)
FROM redemptions GROUP BY tenant, {month(at_s)}, voucher_id
"#,
    ),
    (
        3,
        // Statements read the rollups now; the only reader of redemptions by
        // (tenant, time) is the reconciliation scan, which the (at_s, …) key
        // serves. One index less to maintain per redeemed charge.
        "DROP INDEX redemptions_tenant_at",
    ),
    (
        4,
        // Where each meter (e.g. the controller's GPU-time meter) has metered
        // up to: a new leader resumes from here, so no window is lost.
        "CREATE TABLE meter_cursors (name TEXT PRIMARY KEY, until_s BIGINT NOT NULL, updated_at BIGINT NOT NULL)",
    ),
    (
        5,
        // The simulated cluster's inputs (API submissions, cancellations,
        // quotas), in the order it applied them: a restart replays them
        // and gets the same job ids and usage record ids.
        "CREATE TABLE world_journal (seq {serial}, at_s BIGINT NOT NULL, kind TEXT NOT NULL, body TEXT NOT NULL)",
    ),
    (
        6,
        // Idempotency-Key answers: a retried POST gets the first answer
        // (status 0 = reserved, still running).
        "CREATE TABLE idempotency (scope TEXT NOT NULL, idem_key TEXT NOT NULL, \
         request_sha256 TEXT NOT NULL, status BIGINT NOT NULL, body TEXT NOT NULL, \
         created_at BIGINT NOT NULL, PRIMARY KEY (scope, idem_key))",
    ),
    (
        7,
        // The token gateway: one audit row per call (no prompt or
        // completion text), the models each tenant may call, and model
        // vouchers (模型券) limited to tiers or models; token rollups keep
        // their exact micro-fen total, which prices each record (one call)
        // without rounding it away; a voucher keeps the gross of the charges
        // it shared, of which its co-pay is taken.
        r#"
CREATE TABLE calls (
    request_id TEXT PRIMARY KEY,
    tenant TEXT NOT NULL,
    key_prefix TEXT NOT NULL,
    model TEXT NOT NULL,
    tier TEXT NOT NULL,
    upstream TEXT NOT NULL,
    region TEXT NOT NULL,
    endpoint TEXT NOT NULL,
    status BIGINT NOT NULL,
    prompt_tokens BIGINT NOT NULL CHECK (prompt_tokens >= 0),
    completion_tokens BIGINT NOT NULL CHECK (completion_tokens >= 0),
    estimated BIGINT NOT NULL,
    ttft_ms BIGINT NOT NULL,
    latency_ms BIGINT NOT NULL,
    at_ms BIGINT NOT NULL
);
CREATE INDEX calls_at ON calls (at_ms, request_id);
CREATE INDEX calls_tenant_at ON calls (tenant, at_ms, request_id);
CREATE TABLE model_grants (tenant TEXT PRIMARY KEY REFERENCES tenants(name), models TEXT NOT NULL);
ALTER TABLE vouchers ADD COLUMN tiers TEXT NOT NULL DEFAULT '[]';
ALTER TABLE vouchers ADD COLUMN models TEXT NOT NULL DEFAULT '[]';
ALTER TABLE tokens_rollup ADD COLUMN micro_fen BIGINT NOT NULL DEFAULT 0;
ALTER TABLE vouchers ADD COLUMN shared_gross_fen BIGINT NOT NULL DEFAULT 0
"#,
    ),
    (
        8,
        // The tamper-evident chain (`ledger::chain`): every journal entry
        // carries its link, every redemption the link that seals it and its
        // position there; the head is kept beside. The rows already stored
        // are linked as the migration runs.
        r#"
ALTER TABLE journal ADD COLUMN chain_seq BIGINT;
ALTER TABLE journal ADD COLUMN chain_hash TEXT;
ALTER TABLE redemptions ADD COLUMN chain_seq BIGINT;
ALTER TABLE redemptions ADD COLUMN chain_pos BIGINT;
CREATE UNIQUE INDEX journal_chain ON journal (chain_seq);
CREATE TABLE chain_head (id BIGINT PRIMARY KEY CHECK (id = 1), seq BIGINT NOT NULL, hash TEXT NOT NULL)
"#,
    ),
    (
        9,
        // Workloads waiting, by reason, sampled once a minute by the
        // leading controller (`ledger::pending`); reason '' is the total.
        "CREATE TABLE pending_samples (at_s BIGINT NOT NULL, reason TEXT NOT NULL, jobs BIGINT NOT NULL, PRIMARY KEY (at_s, reason))",
    ),
    (
        10,
        // A tenant's routing default for the token gateway
        // (`ledger::routing`): where its users are and the round trip they
        // accept; a call's headers override it.
        "CREATE TABLE tenant_routing (tenant TEXT PRIMARY KEY REFERENCES tenants(name), user_region TEXT NOT NULL, latency_slo_ms BIGINT)",
    ),
];

/// Work a migration does beyond its SQL, in the same transaction.
fn after_migration(version: i64, tx: &mut dyn super::sql::Tx) -> Result<()> {
    match version {
        8 => super::chain::link_existing(tx),
        _ => Ok(()),
    }
}

fn dialect(sql: &str, backend: Backend) -> String {
    let serial = match backend {
        Backend::Sqlite => "INTEGER PRIMARY KEY AUTOINCREMENT",
        Backend::Postgres => "BIGSERIAL PRIMARY KEY",
    };
    let mut sql = sql.replace("{serial}", serial);
    // `YYYY-MM` (UTC) of a unix-seconds column, as `Month`'s Display writes it.
    for col in ["start_s", "at_s"] {
        let month = match backend {
            Backend::Sqlite => format!("strftime('%Y-%m', {col}, 'unixepoch')"),
            Backend::Postgres => {
                format!("to_char(to_timestamp({col}) AT TIME ZONE 'UTC', 'YYYY-MM')")
            }
        };
        sql = sql.replace(&format!("{{month({col})}}"), &month);
    }
    sql
}

/// Applies the migrations not yet applied. Safe to call concurrently from
/// several replicas (writers are serialised).
pub(crate) fn migrate(conn: &mut Conn) -> Result<()> {
    migrate_up_to(conn, i64::MAX)
}

/// Applies the migrations up to `last` (tests start from an older schema).
fn migrate_up_to(conn: &mut Conn, last: i64) -> Result<()> {
    let backend = conn.backend();
    conn.with_tx(true, |tx| {
        tx.exec(
            "CREATE TABLE IF NOT EXISTS schema_migrations (version BIGINT PRIMARY KEY, applied_at BIGINT NOT NULL)",
            &[],
        )?;
        Ok(())
    })?;
    for &(version, sql) in MIGRATIONS.iter().filter(|m| m.0 <= last) {
        conn.with_tx(true, |tx| {
            let done = tx.rows(
                "SELECT version FROM schema_migrations WHERE version = $1",
                &[Val::I(version)],
            )?;
            if !done.is_empty() {
                return Ok(());
            }
            for stmt in dialect(sql, backend).split(';') {
                if !stmt.trim().is_empty() {
                    tx.exec(stmt, &[])?;
                }
            }
            after_migration(version, tx)?;
            tx.exec(
                "INSERT INTO schema_migrations (version, applied_at) VALUES ($1, $2)",
                &[Val::I(version), Val::I(chrono::Utc::now().timestamp())],
            )?;
            Ok(())
        })?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ledger::sql::Cell;

    /// A ledger written under migration 1 keeps its rows through migration 2,
    /// and the new rollups start equal to the sums of those rows.
    #[test]
    fn migration_2_rekeys_rows_and_backfills_rollups() {
        let mut conn = Conn::Sqlite(rusqlite::Connection::open_in_memory().unwrap());
        migrate_up_to(&mut conn, 1).unwrap();
        conn.with_tx(true, |tx| {
            tx.exec("INSERT INTO tenants (name, created_at) VALUES ('acme', 0)", &[])?;
            tx.exec(
                "INSERT INTO vouchers VALUES ('v', 'acme', 'gov', 100, 90, 5000, 0, 9999999999, '[]', '[]', 0)",
                &[],
            )?;
            // Two usage rows in November 2026, one in December; a token row; a redemption.
            for (id, start) in [("a", 1_793_836_800i64), ("b", 1_793_840_400), ("c", 1_796_428_800)] {
                tx.exec(
                    "INSERT INTO usage VALUES ($1, 's', 'acme', 'j', 'gansu', 'n', 'H100', 1000, $2, $3, \
                     3600000, 10, 1200, 12, 0, 570300, 3, 1, 2500, 10, 0, 0, 'b1')",
                    &[Val::T(id), Val::I(start), Val::I(start + 3600)],
                )?;
            }
            tx.exec(
                "INSERT INTO tokens VALUES ('t', 's', 'acme', 'svc', 'm', 'gansu', 'basic', 1793836800, 1793836860, \
                 1000, 500, 1, 7, 0, 'b1')",
                &[],
            )?;
            tx.exec(
                "INSERT INTO redemptions VALUES ('a', 'gpu', 'v', 'acme', 10, 1793836800)",
                &[],
            )?;
            Ok(())
        })
        .unwrap();
        migrate(&mut conn).unwrap();
        let rows = conn
            .with_tx(false, |tx| {
                tx.rows(
                    "SELECT month, records, milli_gpu_s, gpu_fen, gpu_voucher_fen, carbon_mg FROM usage_rollup ORDER BY month",
                    &[],
                )
            })
            .unwrap();
        assert_eq!(
            rows,
            vec![
                vec![
                    Cell::T("2026-11".into()),
                    Cell::I(2),
                    Cell::I(7_200_000),
                    Cell::I(5000),
                    Cell::I(20),
                    Cell::I(6)
                ],
                vec![
                    Cell::T("2026-12".into()),
                    Cell::I(1),
                    Cell::I(3_600_000),
                    Cell::I(2500),
                    Cell::I(10),
                    Cell::I(3)
                ],
            ]
        );
        let (tokens, redeemed, usage) = conn
            .with_tx(false, |tx| {
                Ok((
                    tx.rows("SELECT month, tier, records, prompt_tokens, completion_tokens, fen FROM tokens_rollup", &[])?,
                    tx.rows("SELECT month, voucher_id, fen FROM redemptions_rollup", &[])?,
                    tx.rows("SELECT COUNT(*) FROM usage", &[])?,
                ))
            })
            .unwrap();
        assert_eq!(
            tokens,
            vec![vec![
                Cell::T("2026-11".into()),
                Cell::T("basic".into()),
                Cell::I(1),
                Cell::I(1000),
                Cell::I(500),
                Cell::I(7)
            ]]
        );
        assert_eq!(
            redeemed,
            vec![vec![
                Cell::T("2026-11".into()),
                Cell::T("v".into()),
                Cell::I(10)
            ]]
        );
        assert_eq!(usage, vec![vec![Cell::I(3)]]);
        // Migration 8 sealed the redemption it held under one genesis entry.
        let chain = conn
            .with_tx(false, |tx| super::super::chain::verify_in(tx, None))
            .unwrap();
        assert_eq!(
            (chain.links, chain.redemptions, &chain.broken),
            (1, 1, &None),
            "{chain:?}"
        );
        conn.with_tx(true, |tx| tx.exec("UPDATE redemptions SET fen = 11", &[]))
            .unwrap();
        let chain = conn
            .with_tx(false, |tx| super::super::chain::verify_in(tx, None))
            .unwrap();
        assert_eq!(
            chain.broken.map(|b| (b.seq, b.row)),
            Some((1, "journal entry chain-genesis".into()))
        );
        // The new key still refuses a second copy of a record.
        let dup = conn.with_tx(true, |tx| {
            tx.exec("INSERT INTO usage SELECT * FROM usage WHERE id = 'a'", &[])
        });
        assert!(dup.is_err());
    }

    /// The upgrade path of the month split: a schema-1 ledger (before the
    /// split) holds a month-crossing usage and token record whole; after
    /// migrating, replaying both through today's ingestion (which splits
    /// them) stores nothing and moves no total.
    fn upgrade_then_replay_changes_nothing(url: &str, mut conn: Conn) {
        use crate::ledger::{default_rate_card, Ledger, Month, RateBook, Tier, TokenRecord};
        use chrono::{Duration, TimeZone, Utc};
        let start = Utc.with_ymd_and_hms(2026, 10, 31, 23, 0, 0).unwrap();
        let mut usage = crate::ledger::types::tests::usage("pod", start.timestamp(), 3 * 3600);
        usage.it_energy_j = 7_560_001;
        let tokens = TokenRecord {
            source: "svc".into(),
            tenant: "acme".into(),
            service: "ns/chat".into(),
            model: "qwen".into(),
            region: "gansu".into(),
            tier: Tier::Industry,
            start: start + Duration::minutes(59),
            end: start + Duration::minutes(62),
            prompt_tokens: 1_000_001,
            completion_tokens: 2,
        };
        let rates = RateBook::new(vec![default_rate_card()]);
        let (u, t) = (usage.meter().unwrap(), tokens.meter().unwrap());
        let (uc, tc) = (
            rates.rate_usage(&u).unwrap(),
            rates.rate_tokens(&t).unwrap(),
        );
        migrate_up_to(&mut conn, 1).unwrap();
        // What the pre-split ingestion wrote: whole rows, one balanced entry.
        conn.with_tx(true, |tx| {
            tx.exec(
                "INSERT INTO tenants (name, created_at) VALUES ('acme', 0)",
                &[],
            )?;
            let p: Vec<String> = (1..=23).map(|i| format!("${i}")).collect();
            tx.exec(
                &format!("INSERT INTO usage VALUES ({})", p.join(", ")),
                &[
                    Val::T(&u.id),
                    Val::T(&u.source),
                    Val::T(&u.tenant),
                    Val::T(&u.job),
                    Val::T(&u.region),
                    Val::T(&u.node),
                    Val::T(&u.model),
                    Val::I(u.gpu_milli),
                    Val::I(u.start_s),
                    Val::I(u.end_s),
                    Val::I(u.milli_gpu_s),
                    Val::I(u.it_energy_j),
                    Val::I(u.pue_milli),
                    Val::I(u.facility_j),
                    Val::I(u.green_milli),
                    Val::I(u.grid_mg_per_kwh),
                    Val::I(u.carbon_mg),
                    Val::I(uc.rate_version),
                    Val::I(uc.gpu_fen),
                    Val::I(0),
                    Val::I(uc.energy_fen),
                    Val::I(0),
                    Val::T("old"),
                ],
            )?;
            tx.exec(
                &format!("INSERT INTO tokens VALUES ({})", p[..15].join(", ")),
                &[
                    Val::T(&t.id),
                    Val::T(&t.source),
                    Val::T(&t.tenant),
                    Val::T(&t.service),
                    Val::T(&t.model),
                    Val::T(&t.region),
                    Val::T(t.tier.as_str()),
                    Val::I(t.start_s),
                    Val::I(t.end_s),
                    Val::I(t.prompt_tokens),
                    Val::I(t.completion_tokens),
                    Val::I(tc.rate_version),
                    Val::I(tc.fen),
                    Val::I(0),
                    Val::T("old"),
                ],
            )?;
            tx.exec(
                "INSERT INTO journal VALUES ('old', 0, 'charges', 'old')",
                &[],
            )?;
            let gross = uc.gpu_fen + uc.energy_fen + tc.fen;
            for (account, fen) in [
                ("tenant:acme", gross),
                ("revenue:gpu", -uc.gpu_fen - uc.energy_fen),
                ("revenue:tokens", -tc.fen),
            ] {
                tx.exec(
                    "INSERT INTO postings VALUES ('old', $1, $2)",
                    &[Val::T(account), Val::I(fen)],
                )?;
            }
            Ok(())
        })
        .unwrap();
        drop(conn);
        let l = Ledger::open(url).unwrap(); // migrations 2 and 3
                                            // Migration 8 linked the entry the old ledger held.
        let chain = l.verify_chain(None).unwrap();
        assert_eq!((chain.links, &chain.broken), (1, &None), "{chain:?}");
        l.ensure_rate_card("t").unwrap();
        let now = Utc.with_ymd_and_hms(2026, 11, 25, 0, 0, 0).unwrap();
        let months = ["2026-10", "2026-11"].map(|m| Month::parse(m).unwrap());
        let snapshot = |l: &Ledger| {
            let st: Vec<_> = months
                .iter()
                .map(|&m| {
                    let fast = l.statement_as_of("acme", m, now).unwrap();
                    assert_eq!(fast, l.statement_from_records("acme", m, now).unwrap());
                    fast
                })
                .collect();
            (
                st,
                l.account_balance("tenant:acme").unwrap(),
                l.trial_balance().unwrap(),
            )
        };
        let before = snapshot(&l);
        assert_eq!(before.0[0].gpu[0].milli_gpu_seconds, u.milli_gpu_s);
        assert_eq!(before.0[0].tokens[0].prompt_tokens, t.prompt_tokens);
        assert_eq!(before.2, 0);
        let r = l.ingest(&[usage], &[tokens]).unwrap();
        assert_eq!((r.usage_new, r.tokens_new, r.gross_fen), (0, 0, 0), "{r:?}");
        assert_eq!(snapshot(&l), before);
    }

    #[test]
    fn upgrade_then_replay_changes_nothing_sqlite() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("old.db");
        let conn = Conn::Sqlite(rusqlite::Connection::open(&path).unwrap());
        upgrade_then_replay_changes_nothing(path.to_str().unwrap(), conn);
    }

    #[test]
    fn upgrade_then_replay_changes_nothing_postgres() {
        let Some(server) = crate::ledger::test_pg::PgServer::start() else {
            return;
        };
        let url = server.fresh_db();
        let conn = Conn::Postgres(postgres::Client::connect(&url, postgres::NoTls).unwrap());
        upgrade_then_replay_changes_nothing(&url, conn);
    }
}

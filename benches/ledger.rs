//! Ledger benchmarks (issue #6 figures):
//! - ingest: usage records per second into SQLite (file, WAL, synchronous=FULL)
//!   and into a real PostgreSQL on loopback (fsync on), batches of 10,000,
//!   each batch one durable transaction, full path (validate, dedupe, rate,
//!   redeem vouchers, journal);
//! - statement: one tenant's month with 1,000,000 usage records, from the
//!   monthly rollups (the product path) and recomputed from the raw rows.
//!
//! `cargo bench --bench ledger` (PostgreSQL parts are skipped when it is not
//! installed). Criterion prints elements/s for ingest and time per statement.

#[path = "../tests/support/pg.rs"]
mod pg;

use chrono::{DateTime, Duration, Utc};
use criterion::{criterion_group, criterion_main, BatchSize, Criterion, Throughput};
use std::sync::atomic::{AtomicUsize, Ordering};
use zhisuan::ledger::{Ledger, Month, UsageRecord, VoucherSpec};

const BATCH: usize = 10_000;

fn nov() -> DateTime<Utc> {
    DateTime::parse_from_rfc3339("2026-11-01T00:00:00Z")
        .unwrap()
        .with_timezone(&Utc)
}

/// `n` distinct one-minute records from index `from` on (ids never repeat).
fn records(tenant: &str, from: usize, n: usize) -> Vec<UsageRecord> {
    (from..from + n)
        .map(|i| {
            // 2,000 pods, one record per pod-minute; stays inside November
            // for up to 2,000 × 43,200 records.
            let start = nov() + Duration::seconds(60 * (i / 2000) as i64);
            UsageRecord {
                source: format!("{tenant}-pod-{}", i % 2000),
                tenant: tenant.to_string(),
                job: format!("team-{}/train-{}", i % 7, i % 100),
                region: ["gansu", "ningxia", "guizhou", "beijing"][i % 4].to_string(),
                node: format!("node-{}", i % 300),
                model: ["H100", "A100", "910B"][i % 3].to_string(),
                gpu_milli: 1000 * (1 + (i % 8) as i64),
                start,
                end: start + Duration::seconds(60),
                it_energy_j: 42_000 + (i % 1000) as i64,
                pue: 1.15,
                green_share: 0.6,
                grid_kg_per_kwh: 0.5703,
            }
        })
        .collect()
}

fn setup(url: &str) -> Ledger {
    let l = Ledger::open(url).unwrap();
    l.ensure_rate_card("bench").unwrap();
    for t in ["acme", "big"] {
        l.create_tenant("bench", t, None).unwrap();
    }
    let until = nov() + Duration::days(30);
    l.issue_voucher(
        "bench",
        &VoucherSpec {
            id: Some("v-acme".into()),
            tenant: "acme".into(),
            issuer: "bench".into(),
            face_value_fen: 1_000_000_000_000,
            copay_ratio_bp: 5_000,
            valid_from: nov(),
            valid_until: until,
            regions: vec![],
            kinds: vec![],
            tiers: vec![],
            models: vec![],
        },
    )
    .unwrap();
    l
}

/// A ledger opened on first use, so a filtered run (`cargo bench --bench
/// ledger -- sqlite_disk`) sets up only what it measures.
type Lazy = std::sync::OnceLock<Ledger>;

fn bench_ingest(c: &mut Criterion, name: &str, url: &str) {
    let ledger = Lazy::new();
    let next = AtomicUsize::new(0);
    let mut g = c.benchmark_group(format!("ledger_ingest_{name}"));
    g.sample_size(10);
    g.warm_up_time(std::time::Duration::from_secs(1));
    g.measurement_time(std::time::Duration::from_secs(15));
    // 10k-record batches, and 50k to show what larger batches buy (the
    // fixed per-commit cost, an fsync, is shared by more records).
    for batch_len in [BATCH, 5 * BATCH] {
        g.throughput(Throughput::Elements(batch_len as u64));
        g.bench_function(format!("usage_batch_{}k", batch_len / 1000), |b| {
            let ledger = ledger.get_or_init(|| setup(url));
            b.iter_batched(
                || {
                    records(
                        "acme",
                        next.fetch_add(batch_len, Ordering::SeqCst),
                        batch_len,
                    )
                },
                |batch| {
                    let r = ledger.ingest(&batch, &[]).unwrap();
                    assert_eq!(r.usage_new, batch_len);
                },
                BatchSize::PerIteration,
            )
        });
    }
    g.finish();
}

fn load_statement_data(name: &str, url: &str) -> Ledger {
    let ledger = setup(url);
    const N: usize = 1_000_000;
    let t0 = std::time::Instant::now();
    for from in (0..N).step_by(100_000) {
        ledger.ingest(&records("big", from, 100_000), &[]).unwrap();
    }
    // Some other tenant's records in the same month, which the statement skips.
    ledger.ingest(&records("acme", 0, 50_000), &[]).unwrap();
    eprintln!(
        "{name}: loaded {N} records in {:.1}s",
        t0.elapsed().as_secs_f64()
    );
    let month = Month::parse("2026-11").unwrap();
    let st = ledger.statement("big", month).unwrap();
    assert_eq!(st.usage_records, N as i64);
    ledger
}

fn bench_statement(c: &mut Criterion, name: &str, url: &str) {
    let ledger = Lazy::new();
    let month = Month::parse("2026-11").unwrap();
    let mut g = c.benchmark_group(format!("ledger_statement_{name}"));
    g.sample_size(10);
    g.bench_function("month_1m_records", |b| {
        let ledger = ledger.get_or_init(|| load_statement_data(name, url));
        b.iter(|| ledger.statement("big", month).unwrap())
    });
    // The same statement recomputed from the raw rows (what the rollups
    // replace; kept for reconciliation), for the ratio.
    let now = chrono::Utc::now();
    g.bench_function("month_1m_records_from_raw_rows", |b| {
        let ledger = ledger.get_or_init(|| load_statement_data(name, url));
        b.iter(|| ledger.statement_from_records("big", month, now).unwrap())
    });
    g.finish();
}

fn ledger_benches(c: &mut Criterion) {
    // SQLite files on the default temp dir (disk: durable commits pay a real
    // fsync) and, to separate CPU cost from disk cost, on /dev/shm (tmpfs,
    // where fsync is free: not a durability figure).
    let disk = tempfile::tempdir().unwrap();
    let shm = tempfile::tempdir_in("/dev/shm").ok();
    let on = |d: &tempfile::TempDir, f: &str| d.path().join(f).to_str().unwrap().to_string();
    bench_ingest(c, "sqlite_disk", &on(&disk, "ingest.db"));
    if let Some(shm) = &shm {
        bench_ingest(c, "sqlite_tmpfs", &on(shm, "ingest.db"));
    }
    let pg = pg::PgServer::start();
    if let Some(server) = &pg {
        bench_ingest(c, "postgres_disk", &server.fresh_db());
    }
    let statement_dir = shm.as_ref().unwrap_or(&disk);
    bench_statement(c, "sqlite", &on(statement_dir, "statement.db"));
    if let Some(server) = &pg {
        bench_statement(c, "postgres", &server.fresh_db());
    }
}

criterion_group!(benches, ledger_benches);
criterion_main!(benches);

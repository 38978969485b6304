//! `zhisuan api`: the quota API as its own server, on the embedded ledger and
//! an in-process multi-region cluster whose clock follows the wall clock.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use chrono::{TimeZone, Utc};

use super::{router, ApiConfig, ApiState, JobBackend, RateLimit, WorldBackend};
use crate::error::InputError;
use crate::ledger::{Ledger, UsageRecord};
use crate::regions::catalog::Catalog;
use crate::sim::world::{UsageInterval, World, WorldConfig};

/// Arguments of `zhisuan api`.
#[derive(clap::Args, Debug)]
pub struct ApiArgs {
    /// Address to serve on.
    #[arg(long, default_value = "127.0.0.1:8080")]
    pub listen: SocketAddr,
    /// File whose first line is the admin key. Without it the key is read
    /// from the ZHISUAN_ADMIN_KEY environment variable. The key is never logged.
    #[arg(long, value_name = "PATH")]
    pub admin_key_file: Option<PathBuf>,
    /// Ledger: a SQLite file path (created if missing) or a postgres:// URL.
    #[arg(long, default_value = "zhisuan-ledger.db")]
    pub db: String,
    /// Region catalog (YAML); default: the shipped catalog.
    #[arg(long, value_name = "FILE")]
    pub regions: Option<PathBuf>,
    /// Requests per second allowed per API key (sustained).
    #[arg(long, default_value_t = 50.0)]
    pub rate_limit_rps: f64,
    /// Requests allowed at once per API key after a quiet period.
    #[arg(long, default_value_t = 100.0)]
    pub rate_limit_burst: f64,
    /// Seconds between ticks of the in-process cluster's clock (metering into the ledger).
    #[arg(long, default_value_t = 1)]
    pub tick_s: u64,
}

/// Name of the environment variable holding the admin key.
pub const ADMIN_KEY_ENV: &str = "ZHISUAN_ADMIN_KEY";

/// The admin key from `--admin-key-file` or [`ADMIN_KEY_ENV`].
pub fn admin_key(file: Option<&Path>) -> anyhow::Result<String> {
    let key = match file {
        Some(path) => {
            let text = std::fs::read_to_string(path).map_err(|e| {
                InputError::new(format!(
                    "--admin-key-file {}: cannot read it ({e}); give a readable file whose first line is the key",
                    path.display()
                ))
            })?;
            text.lines().next().unwrap_or("").trim().to_string()
        }
        None => std::env::var(ADMIN_KEY_ENV)
            .map_err(|_| {
                InputError::new(format!(
                    "admin key: pass --admin-key-file PATH or set {ADMIN_KEY_ENV}"
                ))
            })?
            .trim()
            .to_string(),
    };
    Ok(key)
}

/// An in-process cluster over `catalog` starting at `start_s`, metered every minute.
pub fn world_backend(catalog: Catalog, start_s: i64) -> anyhow::Result<WorldBackend> {
    let world = World::new(
        catalog,
        WorldConfig {
            start_s,
            metering_period_s: Some(60),
            ..WorldConfig::default()
        },
    )?;
    Ok(WorldBackend::new(Arc::new(std::sync::Mutex::new(world))))
}

/// Ledger records for the world's metered intervals (zero-length ones dropped).
/// Energy comes from the world's power model; ids are the world's, so
/// re-ingesting the same intervals changes nothing.
pub fn usage_records(catalog: &Catalog, intervals: &[UsageInterval]) -> Vec<UsageRecord> {
    let at = |s: i64| Utc.timestamp_opt(s, 0).single().unwrap_or_default();
    intervals
        .iter()
        .filter(|u| u.end_s > u.start_s && u.milli_gpu > 0)
        .map(|u| {
            let grid = catalog
                .region_index(&u.region)
                .map_or(0.0, |r| catalog.regions[r].grid_factor_kg_per_kwh);
            UsageRecord {
                source: u.id.clone(),
                tenant: u.tenant.clone(),
                job: format!("{}/{}", u.tenant, u.job_name),
                region: u.region.clone(),
                node: u.node.clone(),
                model: u.model.clone(),
                gpu_milli: i64::from(u.milli_gpu),
                start: at(u.start_s),
                end: at(u.end_s),
                it_energy_j: (u.it_kwh * 3.6e6).round() as i64,
                pue: u.pue,
                green_share: u.green_share,
                grid_kg_per_kwh: grid,
            }
        })
        .collect()
}

/// The API state of a standalone server: the ledger at `db`, the in-process
/// cluster, metrics on `registry`. Returns the backend too, for [`spawn_clock`].
pub fn standalone(
    config: ApiConfig,
    db: &str,
    regions: Option<&Path>,
    registry: &prometheus::Registry,
) -> anyhow::Result<(ApiState, WorldBackend, Ledger)> {
    let ledger = Ledger::open(db).map_err(|e| e.into_anyhow())?;
    ledger
        .register_metrics(registry)
        .map_err(|e| e.into_anyhow())?;
    let catalog = match regions {
        Some(p) => Catalog::load(p)?,
        None => Catalog::default_catalog(),
    };
    let backend = world_backend(catalog, Utc::now().timestamp())?;
    // Admission enforces the quotas already in the ledger from the start.
    for tenant in ledger.tenants().map_err(|e| e.into_anyhow())? {
        if let Some(q) = ledger.quota(&tenant.name).map_err(|e| e.into_anyhow())? {
            backend.set_gpu_limit(&tenant.name, super::handlers::gpu_limit_milli(&q));
        }
    }
    let state = ApiState::new(config, ledger.clone(), Arc::new(backend.clone()), registry)?;
    Ok((state, backend, ledger))
}

/// Advances the cluster to the wall clock every `period` and writes the
/// metered usage to the ledger. Runs until the runtime stops.
pub fn spawn_clock(backend: WorldBackend, ledger: Ledger, period: Duration) {
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(period);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tick.tick().await;
            let intervals = backend.advance_to(Utc::now().timestamp());
            if intervals.is_empty() {
                continue;
            }
            let records = backend.with_world(|w| usage_records(w.catalog(), &intervals));
            let l = ledger.clone();
            match tokio::task::spawn_blocking(move || l.ingest(&records, &[])).await {
                Ok(Ok(_)) => {}
                Ok(Err(e)) => tracing::error!(error = %e, "metering into the ledger failed"),
                Err(e) => tracing::error!(error = %e, "metering task failed"),
            }
        }
    });
}

pub fn run(args: ApiArgs) -> anyhow::Result<()> {
    let _ = tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()),
        )
        .try_init();
    if args.tick_s == 0 {
        return Err(InputError::new("--tick-s: must be at least 1 second").into());
    }
    let config = ApiConfig {
        admin_key: admin_key(args.admin_key_file.as_deref())?,
        rate_limit: RateLimit {
            per_second: args.rate_limit_rps,
            burst: args.rate_limit_burst,
        },
    };
    let registry = prometheus::Registry::new();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("starting the async runtime")?;
    runtime.block_on(async move {
        let (state, backend, ledger) =
            standalone(config, &args.db, args.regions.as_deref(), &registry)?;
        spawn_clock(backend, ledger, Duration::from_secs(args.tick_s));
        let listener = tokio::net::TcpListener::bind(args.listen)
            .await
            .map_err(|e| InputError::new(format!("--listen {}: {e}", args.listen)))?;
        tracing::info!(listen = %args.listen, db = %crate::ledger::cli::redact_url(&args.db), "quota API serving");
        axum::serve(listener, router(state))
            .with_graceful_shutdown(async {
                let _ = tokio::signal::ctrl_c().await;
            })
            .await
            .context("serving HTTP")
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn admin_key_file_first_line_or_clear_error() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("k");
        std::fs::write(&p, "  abcdefghijklmnopqrstuvwxyz \nignored\n").unwrap();
        assert_eq!(admin_key(Some(&p)).unwrap(), "abcdefghijklmnopqrstuvwxyz");
        let err = admin_key(Some(&dir.path().join("missing"))).unwrap_err();
        assert_eq!(crate::error::exit_code(&err), 2);
        assert!(err.to_string().contains("--admin-key-file"), "{err}");
    }
}

//! `zhisuan api`: the quota API as its own server, on the embedded ledger and
//! an in-process multi-region cluster whose clock follows the wall clock.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use chrono::Utc;

use crate::api::{router, ApiConfig, ApiState, JobBackend, RateLimit};
use crate::error::InputError;
use crate::ledger::journal::Claim;
use crate::ledger::Ledger;
use crate::regions::catalog::Catalog;
use crate::sim::backend::{usage_records, WorldBackend};
use crate::sim::world::WorldConfig;

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
    /// File whose first line is the scrape key: with it (or the admin key)
    /// `/metrics` also serves the series with a `tenant` label (charges,
    /// vouchers, tokens per tenant); a tenant's key gets its own. Give it to
    /// Prometheus; without any key those series are left out. Never logged.
    #[arg(long, value_name = "PATH")]
    pub metrics_key_file: Option<PathBuf>,
    /// Ledger: a SQLite file path (created if missing) or a postgres:// URL.
    #[arg(long, default_value = "zhisuan-ledger.db")]
    pub db: String,
    /// File holding the ledger's location (one line; e.g. a mounted Secret
    /// with the postgres:// URL); instead of --db.
    #[arg(long, value_name = "PATH", conflicts_with = "db")]
    pub db_file: Option<PathBuf>,
    /// Region catalog (YAML); default: the shipped catalog.
    #[arg(long, value_name = "FILE")]
    pub regions: Option<PathBuf>,
    /// Requests per second allowed per API key (sustained).
    #[arg(long, default_value_t = 50.0)]
    pub rate_limit_rps: f64,
    /// Jobs one tenant may have waiting to start; more are refused
    /// (422 quota_exceeded, field `pending_jobs`).
    #[arg(long, default_value_t = crate::api::MAX_PENDING_JOBS)]
    pub max_pending_jobs: u64,
    /// Requests allowed at once per API key after a quiet period.
    #[arg(long, default_value_t = 100.0)]
    pub rate_limit_burst: f64,
    /// A model the token gateway serves: `NAME=URL` or `NAME@REGION=URL`
    /// (URL = http://HOST:PORT of an OpenAI-compatible server). Repeat for
    /// more models, or for more upstreams of one model (load-balanced).
    #[arg(long, value_name = "NAME=URL")]
    pub upstream: Vec<String>,
    /// A served model's price tier: `NAME=basic|industry|high_value`
    /// (default basic).
    #[arg(long, value_name = "NAME=TIER")]
    pub upstream_tier: Vec<String>,
    /// Tokens each API key may use per minute through the gateway (0: no
    /// limit); a key past it gets 429 with Retry-After.
    #[arg(long, default_value_t = crate::api::gateway::TOKENS_PER_MINUTE)]
    pub tokens_per_minute: u64,
    /// Seconds an upstream may take to start its answer (a non-streamed
    /// generation included) before the gateway answers 504.
    #[arg(long, default_value_t = crate::api::gateway::UPSTREAM_TIMEOUT.as_secs())]
    pub upstream_timeout_s: u64,
    /// Send a non-streamed gateway answer only once its call is in the
    /// ledger, so a crash never loses a delivered call (`false`: write calls
    /// just after answering — more calls/s, a kill -9 loses the last batch).
    #[arg(long, default_value_t = true, action = clap::ArgAction::Set)]
    pub durable_answers: bool,
    /// Seconds between ticks of the in-process cluster's clock (metering into
    /// the ledger; `--backend world` only).
    #[arg(long, default_value_t = 1)]
    pub tick_s: u64,
    /// Where tenants' jobs go: `kube` creates TrainingJob / InferenceService
    /// objects that the controller admits, places and meters (the chart's
    /// setting); `world` runs them in an in-process simulated cluster whose
    /// simulated usage is billed (standalone trials and the demo only).
    #[arg(long, value_enum, default_value_t = Backend::World)]
    pub backend: Backend,
    /// Namespace of the jobs' objects (`--backend kube`).
    #[arg(long, env = "ZHISUAN_JOBS_NAMESPACE", default_value = "zhisuan-jobs")]
    pub jobs_namespace: String,
}

/// Where the API's jobs run.
#[derive(clap::ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub enum Backend {
    /// Kubernetes: the controller's cluster.
    Kube,
    /// The in-process simulated cluster.
    World,
}

/// Name of the environment variable holding the admin key.
pub const ADMIN_KEY_ENV: &str = "ZHISUAN_ADMIN_KEY";

/// The admin key from `--admin-key-file` or [`ADMIN_KEY_ENV`].
/// The first line of a key file (`flag` names it in errors; the contents never).
fn key_file(flag: &str, path: &Path) -> anyhow::Result<String> {
    let text = std::fs::read_to_string(path).map_err(|e| {
        InputError::new(format!(
            "{flag} {}: cannot read it ({e}); give a readable file whose first line is the key",
            path.display()
        ))
    })?;
    Ok(text.lines().next().unwrap_or("").trim().to_string())
}

pub fn admin_key(file: Option<&Path>) -> anyhow::Result<String> {
    let key = match file {
        Some(path) => key_file("--admin-key-file", path)?,
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

/// The ledger at `db` with its metrics on `registry`; a fresh ledger gets
/// the documented default rate card, so usage is never left unpriced.
pub fn open_ledger(db: &str, registry: &prometheus::Registry) -> anyhow::Result<Ledger> {
    let ledger = Ledger::open(db).map_err(|e| e.into_anyhow())?;
    ledger
        .ensure_rate_card("api")
        .map_err(|e| e.into_anyhow())?;
    ledger
        .register_metrics(registry)
        .map_err(|e| e.into_anyhow())?;
    Ok(ledger)
}

/// A standalone server's parts: the API state, the simulated cluster (for
/// [`spawn_clock`]), its ledger and the claim on it (held while it runs).
pub struct Standalone {
    pub state: ApiState,
    pub backend: WorldBackend,
    pub ledger: Ledger,
    pub claim: Claim,
}

/// The API state of a standalone server: the ledger at `db` (claimed: no
/// other process may drive a simulated cluster into it), the in-process
/// cluster resumed from the ledger's journal, metrics on `registry`.
pub fn standalone(
    config: ApiConfig,
    db: &str,
    regions: Option<&Path>,
    registry: &prometheus::Registry,
) -> anyhow::Result<Standalone> {
    let ledger = open_ledger(db, registry)?;
    let claim = ledger
        .claim("zhisuan api --backend world")
        .map_err(|e| e.into_anyhow())?;
    let catalog = match regions {
        Some(p) => Catalog::load(p)?,
        None => Catalog::default_catalog(),
    };
    // Metered every minute; a new world starts now.
    let world = WorldConfig {
        start_s: Utc::now().timestamp(),
        metering_period_s: Some(60),
        keep_finished_s: Some(crate::sim::world::KEEP_FINISHED_S),
        ..WorldConfig::default()
    };
    let backend = WorldBackend::resume(&ledger, catalog, world)
        .with_context(|| format!("resuming the simulated cluster of {db}"))?;
    // The scheduler enforces the ledger's quotas (journalled, so a restart
    // replays them in the same order).
    let projections = ledger
        .quota_projections(None)
        .map_err(|e| e.into_anyhow())?;
    for (tenant, parent, q) in &projections {
        futures::executor::block_on(backend.project_quota(tenant, parent.as_deref(), q))
            .map_err(|e| anyhow::anyhow!("quota of tenant {tenant}: {e}"))?;
    }
    let state = ApiState::new(config, ledger.clone(), Arc::new(backend.clone()), registry)?;
    Ok(Standalone {
        state,
        backend,
        ledger,
        claim,
    })
}

/// Advances the cluster to the wall clock every `period`, writes the
/// metered usage to the ledger (records a failed write did not take are
/// written again with the next tick's; ids make that idempotent) and
/// samples the jobs waiting by reason into it (the operator page's pending
/// over time). Runs until the runtime stops.
pub fn spawn_clock(backend: WorldBackend, ledger: Ledger, period: Duration) {
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(period);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut unwritten = Vec::new();
        loop {
            tick.tick().await;
            let intervals = backend.advance_to(Utc::now().timestamp());
            let (b, l) = (backend.clone(), ledger.clone());
            match tokio::task::spawn_blocking(move || sample_pending(&b, &l)).await {
                Ok(Ok(())) => {}
                Ok(Err(e)) => tracing::warn!(error = %e, "pending sample not written"),
                Err(e) => tracing::error!(error = %e, "pending sample task failed"),
            }
            unwritten.extend(backend.with_world(|w| usage_records(w.catalog(), &intervals)));
            if unwritten.is_empty() {
                continue;
            }
            let records = std::mem::take(&mut unwritten);
            let l = ledger.clone();
            match tokio::task::spawn_blocking(move || (l.ingest(&records, &[]), records)).await {
                Ok((Ok(_), _)) => {}
                Ok((Err(e), records)) => {
                    tracing::error!(error = %e, records = records.len(), "metering into the ledger failed; retrying next tick");
                    unwritten = records;
                }
                Err(e) => tracing::error!(error = %e, "metering task failed"),
            }
        }
    });
}

/// Writes the simulated cluster's waiting jobs, by reason, as the ledger's
/// pending sample for its current minute (blocking: the world's lock and
/// the ledger).
pub fn sample_pending(backend: &WorldBackend, ledger: &Ledger) -> anyhow::Result<()> {
    let (now_s, by_reason) = backend.pending_by_reason();
    ledger.record_pending(now_s, &by_reason)?;
    Ok(())
}

/// How often `--backend kube` lists the InferenceServices served through
/// the gateway (a new replica takes calls within this time).
const MODEL_REFRESH: Duration = Duration::from_secs(5);

pub fn run(mut args: ApiArgs) -> anyhow::Result<()> {
    crate::logs::init("info");
    if args.tick_s == 0 {
        return Err(InputError::new("--tick-s: must be at least 1 second").into());
    }
    let config = ApiConfig {
        admin_key: admin_key(args.admin_key_file.as_deref())?,
        rate_limit: RateLimit {
            per_second: args.rate_limit_rps,
            burst: args.rate_limit_burst,
        },
        max_pending_jobs: args.max_pending_jobs,
        gateway: crate::api::gateway::GatewayConfig {
            upstreams: args.upstream.clone(),
            tiers: args.upstream_tier.clone(),
            tokens_per_minute: args.tokens_per_minute,
            upstream_timeout: Duration::from_secs(args.upstream_timeout_s.max(1)),
            durable_answers: args.durable_answers,
        },
        metrics: crate::api::metrics_access::MetricsAccess {
            tenant_series: Default::default(),
            scrape_key: args
                .metrics_key_file
                .as_deref()
                .map(|p| key_file("--metrics-key-file", p))
                .transpose()?,
        },
    };
    let registry = prometheus::Registry::new();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("starting the async runtime")?;
    if let Some(path) = &args.db_file {
        args.db = crate::ledger::cli::read_location_file("--db-file", path)?;
    }
    runtime.block_on(async move {
        // With the world backend, the claim on the ledger is held while serving.
        let (state, _claim) = match args.backend {
            Backend::World => {
                let s = standalone(config, &args.db, args.regions.as_deref(), &registry)?;
                spawn_clock(s.backend, s.ledger, Duration::from_secs(args.tick_s));
                (s.state, Some(s.claim))
            }
            Backend::Kube => {
                let client = kube::Client::try_default().await.context(
                    "--backend kube: connecting to the Kubernetes API (run in a cluster or set KUBECONFIG)",
                )?;
                let ledger = open_ledger(&args.db, &registry)?;
                let jobs = crate::operator::jobs::KubeJobs::new(client.clone(), &args.jobs_namespace);
                let state = ApiState::new(config, ledger, Arc::new(jobs), &registry)?;
                // InferenceServices with `spec.gateway` become the gateway's models.
                tokio::spawn(crate::operator::gateway_models::run(
                    client,
                    args.jobs_namespace.clone(),
                    state.gateway().clone(),
                    MODEL_REFRESH,
                ));
                (state, None)
            }
        };
        crate::api::gateway::health::spawn(state.gateway());
        let listener = tokio::net::TcpListener::bind(args.listen)
            .await
            .map_err(|e| InputError::new(format!("--listen {}: {e}", args.listen)))?;
        tracing::info!(listen = %args.listen, db = %crate::ledger::cli::redact_url(&args.db), "quota API serving");
        // Client addresses for the failed-key lockout.
        let gateway = state.gateway().clone();
        let app = router(state).into_make_service_with_connect_info::<std::net::SocketAddr>();
        axum::serve(listener, app)
            .with_graceful_shutdown(shutdown_signal())
            .await
            .context("serving HTTP")?;
        // Calls answered before the signal are billed and audited.
        gateway.flush().await;
        Ok(())
    })
}

/// Ctrl-C, or SIGTERM (how Kubernetes stops a pod).
async fn shutdown_signal() {
    #[cfg(unix)]
    {
        let mut term = match tokio::signal::unix::signal(
            tokio::signal::unix::SignalKind::terminate(),
        ) {
            Ok(t) => t,
            Err(e) => {
                tracing::warn!(error = %e, "cannot listen for SIGTERM; stopping on Ctrl-C only");
                let _ = tokio::signal::ctrl_c().await;
                return;
            }
        };
        tokio::select! {
            _ = tokio::signal::ctrl_c() => {}
            _ = term.recv() => {}
        }
    }
    #[cfg(not(unix))]
    {
        let _ = tokio::signal::ctrl_c().await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `--backend world` samples its waiting jobs into the ledger, as the
    /// controller and the demo do: with the clock running, a job no region
    /// can hold shows in the operator page's pending series (this test
    /// fails with the sample left out of the clock's tick — checked).
    #[test]
    fn the_world_backend_samples_its_waiting_jobs() {
        use crate::api::jobs::{JobBackend, JobKind, JobSpec};
        let start_s = Utc::now().timestamp() - 5;
        let world = crate::sim::world::World::new(
            crate::regions::Catalog::default_catalog(),
            WorldConfig {
                start_s,
                ..WorldConfig::default()
            },
        )
        .unwrap();
        let backend = WorldBackend::new(std::sync::Arc::new(std::sync::Mutex::new(world)));
        // One replica of 64 GPUs: no node of any region holds it.
        let huge = JobSpec::new("acme", JobKind::Training, "huge", 1, 64_000, "img:1");
        futures::executor::block_on(backend.submit(huge)).unwrap();
        let ledger = Ledger::open(":memory:").unwrap();
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        let peak = |points: &[crate::ledger::pending::PendingPoint]| {
            points.iter().map(|p| p.jobs).max().unwrap_or(0)
        };
        let series = runtime.block_on(async {
            spawn_clock(backend, ledger.clone(), Duration::from_millis(20));
            // Bounded: the first tick fires at once.
            for _ in 0..250 {
                let now = Utc::now().timestamp();
                let s = ledger
                    .pending_series(
                        start_s - 3600,
                        now + 3600,
                        crate::ledger::series::Bucket::Hour,
                    )
                    .unwrap();
                if peak(&s.total) > 0 {
                    return s;
                }
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            panic!("no pending sample within 5 s");
        });
        assert_eq!(peak(&series.total), 1, "{series:?}");
        let inventory = series.reasons.iter().find(|(r, _)| r == "inventory");
        assert_eq!(inventory.map(|(_, p)| peak(p)), Some(1), "{series:?}");
    }

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

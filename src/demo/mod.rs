//! The embedded demo: the whole system in one process (issue #8).
//!
//! observe → plan → act, in one loop: the openb workload arrives in
//! accelerated time into the multi-region [`World`] (placement engines per
//! region behind the region planner), the usage it meters is rated and
//! charged against vouchers in the SQLite ledger, and the quota API, the web
//! page and `/metrics` are served on `--listen` meanwhile.

pub mod callers;
pub mod meter;
pub mod metrics;
pub mod model;
pub mod setup;
pub mod summary;
pub mod telemetry;
pub mod tracker;

use crate::api::{ApiConfig, ApiState};
use crate::error::InputError;
use crate::ledger::types::Tier;
use crate::ledger::Ledger;
use crate::regions::catalog::Catalog;
use crate::regions::plan::{JobKind, JobSpec};
use crate::sim::backend::WorldBackend;
use crate::sim::world::{World, WorldConfig};
use anyhow::Context as _;
use chrono::{DateTime, Utc};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// Arguments of `zhisuan demo`.
#[derive(clap::Args, Debug)]
pub struct DemoArgs {
    /// Address of the quota API, the web page (`/`) and `/metrics`.
    #[arg(long, default_value = "127.0.0.1:8080")]
    pub listen: SocketAddr,
    /// Simulated seconds per wall-clock second.
    #[arg(long, default_value_t = 600.0)]
    pub speed: f64,
    /// Stop after this many wall-clock seconds (default: run until Ctrl-C).
    #[arg(long)]
    pub duration: Option<f64>,
    /// SQLite ledger file to keep across runs (default: a temporary one).
    /// A demo restarted on the same file carries on without double-counting.
    #[arg(long)]
    pub db: Option<PathBuf>,
    /// Print the final summary as JSON on stdout.
    #[arg(long)]
    pub json: bool,
    /// Region catalog (default: the shipped one, data/regions/catalog.yaml).
    #[arg(long)]
    pub regions: Option<PathBuf>,
    /// Workload CSV (default: the shipped openb workload, data/workload/openb-regions.csv).
    #[arg(long)]
    pub workload: Option<PathBuf>,
    /// File holding the admin key of the API (or set ZHISUAN_ADMIN_KEY).
    /// Without either, the demo writes a fresh key to a file beside the ledger.
    #[arg(long)]
    pub admin_key_file: Option<PathBuf>,
    /// Seconds between status lines on stderr (0: none).
    #[arg(long, default_value_t = 5.0)]
    pub status_every: f64,
    /// Stop once this many simulated hours have passed since the start.
    #[arg(long)]
    pub sim_hours: Option<f64>,
    /// Simulated start time (RFC 3339, e.g. 2026-11-01T00:00:00Z; default: the
    /// current hour). Ignored when resuming a kept `--db`.
    #[arg(long)]
    pub start_at: Option<DateTime<Utc>>,
    /// Seed of the placement engines' tie-breaks.
    #[arg(long, default_value_t = 1)]
    pub seed: u64,
    /// Calls per second (all tenants together) that the seeded tenants make
    /// to the demo's models through the token gateway (0: none). They are
    /// real calls at wall-clock time, billed when made and not replayed
    /// after a restart.
    #[arg(long, default_value_t = 2.0)]
    pub model_calls_per_s: f64,
}

/// Where a demo on a kept ledger got to, so a restart carries on from there.
#[derive(Debug, Clone, Copy, serde::Serialize, serde::Deserialize, PartialEq)]
struct Checkpoint {
    /// Unix seconds the simulated world started at.
    start_s: i64,
    /// Simulated time reached.
    reached_s: i64,
}

fn checkpoint_path(db: &Path) -> PathBuf {
    let mut name = db.file_name().unwrap_or_default().to_os_string();
    name.push(".demo.json");
    db.with_file_name(name)
}

fn load_checkpoint(path: &Path) -> anyhow::Result<Option<Checkpoint>> {
    match std::fs::read_to_string(path) {
        Ok(text) => Ok(Some(serde_json::from_str(&text).map_err(|e| {
            InputError::new(format!(
                "{}: not a demo checkpoint ({e}); delete it to start the simulation over",
                path.display()
            ))
        })?)),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(e).with_context(|| format!("reading {}", path.display())),
    }
}

/// Written to a temporary file and renamed, so a crash never leaves half a checkpoint.
fn save_checkpoint(path: &Path, cp: &Checkpoint) -> anyhow::Result<()> {
    let tmp = path.with_extension("json.tmp");
    std::fs::write(&tmp, serde_json::to_vec(cp)?)?;
    std::fs::rename(&tmp, path)?;
    Ok(())
}

/// Longest a demo job runs, simulated seconds.
const MAX_JOB_S: i64 = 6 * 3600;

/// Simulated seconds the driver advances while holding the world's lock.
const STEP_SLICE_S: i64 = 60;

/// The demo ledger's SQLite page cache (MiB).
const DEMO_SQLITE_CACHE_MIB: u32 = 8;

/// The workload, repeated: after the last arrival and [`MAX_JOB_S`] it
/// starts over (names suffixed `.c<cycle>`), so a long demo keeps arrivals coming.
struct Workload {
    jobs: Vec<(i64, JobSpec)>,
    cycle_s: i64,
    /// Index into the endless sequence of arrivals.
    next: u64,
}

impl Workload {
    fn new(mut jobs: Vec<(i64, JobSpec)>) -> anyhow::Result<Workload> {
        if jobs.is_empty() {
            return Err(InputError::new(
                "workload: no jobs; give a workload CSV with at least one row",
            )
            .into());
        }
        jobs.sort_by_key(|(t, _)| *t);
        // The openb trace's first hours hold a handful of long-running pods;
        // nearly all arrivals come later. Start ten minutes before the first
        // percentile of arrivals, the earlier jobs arriving at the start.
        let skip = (jobs[jobs.len() / 100].0 - 600).max(0);
        for (t, _) in &mut jobs {
            *t = (*t - skip).max(0);
        }
        // Every job leaves within MAX_JOB_S (the trace holds pods that run
        // for months), so each cycle of the workload starts on a drained
        // cluster and a long demo neither piles up nor slows down.
        for (_, spec) in &mut jobs {
            spec.duration_s = Some(spec.duration_s.unwrap_or(MAX_JOB_S).min(MAX_JOB_S));
        }
        let last = jobs.last().map_or(0, |(t, _)| *t);
        let cycle_s = last + MAX_JOB_S;
        Ok(Workload {
            jobs,
            cycle_s,
            next: 0,
        })
    }

    fn peek(&self) -> (i64, u64, &JobSpec) {
        let n = self.jobs.len() as u64;
        let (cycle, i) = (self.next / n, (self.next % n) as usize);
        let (t, spec) = &self.jobs[i];
        (t + cycle as i64 * self.cycle_s, cycle, spec)
    }

    /// The next job arriving at or before `until_s` (offset from the world start).
    fn pop_until(&mut self, until_s: i64) -> Option<(i64, JobSpec)> {
        let (t, cycle, spec) = self.peek();
        if t > until_s {
            return None;
        }
        let mut spec = spec.clone();
        if cycle > 0 {
            spec.name = format!("{}.c{cycle}", spec.name);
        }
        self.next += 1;
        Some((t, spec))
    }
}

/// A private temporary directory for a throw-away ledger, removed on drop.
struct ScratchDir(PathBuf);

impl ScratchDir {
    fn new() -> anyhow::Result<ScratchDir> {
        let mut suffix = [0u8; 8];
        getrandom::fill(&mut suffix)
            .map_err(|e| anyhow::anyhow!("no randomness for a temp dir name: {e}"))?;
        let dir = std::env::temp_dir().join(format!("zhisuan-demo-{}", hex::encode(suffix)));
        std::fs::create_dir(&dir).with_context(|| format!("creating {}", dir.display()))?;
        Ok(ScratchDir(dir))
    }
}

impl Drop for ScratchDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// The simulation side of the demo: world, workload, ledger, metrics.
struct Driver {
    /// The world, shared with the quota API's job endpoints.
    backend: WorldBackend,
    workload: Workload,
    ledger: Ledger,
    start_s: i64,
    metrics: metrics::WorldMetrics,
    tracker: tracker::JobTracker,
    started: Vec<crate::sim::world::JobId>,
    agents: Arc<Mutex<telemetry::SimAgents>>,
    last_step: Instant,
    failed: u64,
    records_new: u64,
    records_duplicate: u64,
    /// When the waiting jobs were last sampled into the ledger (the
    /// operator page's "pending over time"), at most once a wall second.
    pending_sampled: Option<Instant>,
}

impl Driver {
    /// Moves the world to `t_s` (unix seconds): submits the arrivals up to it
    /// at their own times, then meters the usage into the ledger.
    fn step(&mut self, t_s: i64) -> anyhow::Result<()> {
        // In slices of simulated time, the world's lock released between
        // them: an API request waits for one slice, not for a whole step
        // (which grows when the demo runs behind its speed).
        let mut intervals = Vec::new();
        let mut reached = lock(self.backend.world()).now_s();
        loop {
            let to = reached.saturating_add(STEP_SLICE_S).min(t_s);
            {
                let mut world = lock(self.backend.world());
                while let Some((at, spec)) = self.workload.pop_until(to - self.start_s) {
                    world.advance_to(self.start_s + at);
                    if world.submit(spec).is_err() {
                        self.failed += 1;
                    }
                }
            }
            // Through the backend, so the API's view of what tenants hold follows.
            intervals.append(&mut self.backend.advance_to(to));
            reached = to;
            if reached >= t_s {
                break;
            }
            std::thread::yield_now();
        }
        let (usage, tokens, pending) = {
            let world = lock(self.backend.world());
            let mut usage = Vec::with_capacity(intervals.len());
            let mut tokens = Vec::new();
            for iv in &intervals {
                usage.extend(meter::usage_record(world.catalog(), iv));
                let kind = world
                    .job(iv.job_id)
                    .map_or(JobKind::Training, |j| j.spec.kind);
                // Jobs submitted through the API say their tier; the workload's follow the tenant.
                let tier = self
                    .backend
                    .token_tier(iv.job_id)
                    .and_then(|t| Tier::parse(t.as_str()))
                    .unwrap_or_else(|| setup::tier_of(&iv.tenant));
                if let Some(t) = meter::token_record(iv, kind, tier) {
                    tokens.push(t);
                }
            }
            self.tracker.refresh(&world, &mut self.started);
            self.metrics.observe(&world, &self.tracker, &self.started);
            let due = self
                .pending_sampled
                .is_none_or(|t| t.elapsed() >= Duration::from_secs(1));
            let pending = due.then(|| {
                (
                    world.now_s(),
                    metrics::pending_by_reason(&world, &self.tracker),
                )
            });
            let dt_ms = self.last_step.elapsed().as_millis() as u64;
            self.last_step = Instant::now();
            lock(&self.agents).step(&world, &self.tracker, dt_ms);
            (usage, tokens, pending)
        };
        if let Some((at_s, by_reason)) = pending {
            self.ledger
                .record_pending(at_s, &by_reason)
                .context("pending sample")?;
            self.pending_sampled = Some(Instant::now());
        }
        if !usage.is_empty() || !tokens.is_empty() {
            let report = self
                .ledger
                .ingest(&usage, &tokens)
                .context("ledger ingestion")?;
            self.records_new += report.usage_new as u64;
            self.records_duplicate += report.usage_duplicate as u64;
        }
        Ok(())
    }

    fn job_counts(&self) -> summary::JobCounts {
        let t = &self.tracker;
        summary::JobCounts {
            // Jobs submitted through the API count too.
            submitted: t.submitted() + self.failed,
            placed: t.placed,
            running: t.running,
            finished: t.finished,
            pending: t.pending,
            failed: self.failed,
        }
    }

    fn summary(
        &self,
        wall_s: f64,
        speed: f64,
        rss_mib_by_sim_day: Vec<f64>,
    ) -> anyhow::Result<summary::Summary> {
        let jobs = self.job_counts();
        let (now_s, regions, jobs_kept) = {
            let world = lock(self.backend.world());
            (world.now_s(), world.region_stats(), world.jobs_kept())
        };
        let proc = crate::telemetry::cli::ProcSelf::read();
        let memory = summary::Memory {
            rss_last_day_over_first: summary::Memory::ratio(&rss_mib_by_sim_day),
            rss_mib_by_sim_day,
            rss_mib_end: proc.rss_kib as f64 / 1024.0,
            peak_rss_mib: proc.rss_peak_kib as f64 / 1024.0,
            jobs_kept,
        };
        let regions: Vec<summary::RegionLine> = regions
            .into_iter()
            .map(|r| summary::RegionLine {
                allocation_pct: pct(r.gpus_allocated, r.gpus as f64),
                side: format!("{:?}", r.side).to_lowercase(),
                name: r.name,
                display: r.display,
                gpus: r.gpus,
                gpus_allocated: r.gpus_allocated,
                gpu_hours: r.gpu_seconds / 3600.0,
                facility_kwh: r.facility_kwh,
                green_share: r.green_share,
                carbon_kg: r.carbon_kg,
            })
            .collect();
        let mut tenants = Vec::new();
        for t in self.ledger.tenants()? {
            let u = self.ledger.usage_summary(&t.name, None, None)?;
            let vouchers: Vec<summary::VoucherLine> = self
                .ledger
                .vouchers(Some(&t.name))?
                .into_iter()
                .map(|v| summary::VoucherLine {
                    used_fen: v.face_value_fen - v.balance_fen,
                    id: v.id,
                    issuer: v.issuer,
                    face_value_fen: v.face_value_fen,
                    balance_fen: v.balance_fen,
                })
                .collect();
            if u.gross_fen == 0 && vouchers.is_empty() && u.gpu_hours == 0.0 {
                continue; // a parent node of the tenant tree only
            }
            tenants.push(summary::TenantLine {
                tenant: t.name,
                gpu_hours: u.gpu_hours,
                tokens: u.tokens.values().sum(),
                kwh: u.kwh,
                carbon_kg: u.carbon_kg,
                gross_fen: u.gross_fen,
                voucher_fen: u.voucher_fen,
                net_fen: u.net_fen,
                vouchers,
            });
        }
        let gpus: u64 = regions.iter().map(|r| r.gpus).sum();
        let gpus_allocated: f64 = regions.iter().map(|r| r.gpus_allocated).sum();
        Ok(summary::Summary {
            wall_s,
            speed,
            sim_start: iso(self.start_s),
            sim_now: iso(now_s),
            sim_hours: (now_s - self.start_s) as f64 / 3600.0,
            jobs,
            gpus,
            gpus_allocated,
            allocation_pct: pct(gpus_allocated, gpus as f64),
            gross_fen: tenants.iter().map(|t| t.gross_fen).sum(),
            voucher_fen: tenants.iter().map(|t| t.voucher_fen).sum(),
            net_fen: tenants.iter().map(|t| t.net_fen).sum(),
            regions,
            tenants,
            records_ingested: self.records_new,
            records_already_present: self.records_duplicate,
            memory,
        })
    }

    fn status_line(&self, wall_s: f64) -> String {
        let c = self.job_counts();
        let world = lock(self.backend.world());
        let stats = world.region_stats();
        let gpus: u64 = stats.iter().map(|r| r.gpus).sum();
        let alloc: f64 = stats.iter().map(|r| r.gpus_allocated).sum();
        let carbon: f64 = stats.iter().map(|r| r.carbon_kg).sum();
        format!(
            "[{:>5.0}s | sim {}] jobs {} placed {} running {} pending {} | GPUs {:.0}/{} ({:.1}%) | carbon {:.0} kg",
            wall_s,
            iso(world.now_s()),
            c.submitted,
            c.placed,
            c.running,
            c.pending,
            alloc,
            gpus,
            pct(alloc, gpus as f64),
            carbon
        )
    }
}

fn pct(part: f64, whole: f64) -> f64 {
    if whole > 0.0 {
        100.0 * part / whole
    } else {
        0.0
    }
}

fn iso(t_s: i64) -> String {
    DateTime::<Utc>::from_timestamp(t_s, 0)
        .map(|t| t.format("%Y-%m-%d %H:%M").to_string())
        .unwrap_or_default()
}

fn validate(args: &DemoArgs) -> Result<(), InputError> {
    if !(args.speed.is_finite() && args.speed > 0.0) {
        return Err(InputError::new(format!(
            "--speed {}: must be a positive number of simulated seconds per second, e.g. --speed 1800",
            args.speed
        )));
    }
    if let Some(d) = args.duration {
        if !(d.is_finite() && d > 0.0) {
            return Err(InputError::new(format!(
                "--duration {d}: must be a positive number of seconds, or left out to run until Ctrl-C"
            )));
        }
    }
    if let Some(h) = args.sim_hours {
        if !(h.is_finite() && h > 0.0) {
            return Err(InputError::new(format!(
                "--sim-hours {h}: must be a positive number of simulated hours"
            )));
        }
    }
    if !(args.status_every.is_finite() && args.status_every >= 0.0) {
        return Err(InputError::new(
            "--status-every: must be ≥ 0 seconds (0 = no status line)",
        ));
    }
    Ok(())
}

pub fn run(args: DemoArgs) -> anyhow::Result<()> {
    validate(&args)?;
    let catalog = match &args.regions {
        Some(path) => Catalog::load(path)?,
        None => Catalog::default_catalog(),
    };
    let (workload_text, workload_name) = match &args.workload {
        Some(p) => (
            std::fs::read_to_string(p)
                .map_err(|e| InputError::new(format!("--workload {}: {e}", p.display())))?,
            p.display().to_string(),
        ),
        None => (
            crate::sim::workload::DEFAULT_WORKLOAD_CSV.to_string(),
            crate::sim::workload::DEFAULT_WORKLOAD_PATH.to_string(),
        ),
    };
    let jobs = crate::sim::workload::parse_workload(&workload_text, &workload_name, &catalog)?;
    let workload = Workload::new(jobs)?;

    // The ledger: a kept file, or a temporary one removed at the end.
    let scratch = match &args.db {
        Some(_) => None,
        None => Some(ScratchDir::new()?),
    };
    let db_path = match (&args.db, &scratch) {
        (Some(p), _) => p.clone(),
        (None, Some(dir)) => dir.0.join("ledger.sqlite"),
        (None, None) => unreachable!("a scratch directory exists when --db is absent"),
    };
    let cp_path = checkpoint_path(&db_path);
    let checkpoint = if args.db.is_some() {
        load_checkpoint(&cp_path)?
    } else {
        None
    };
    let start_s = match (checkpoint, args.start_at) {
        (Some(c), _) => c.start_s,
        (None, Some(t)) => t.timestamp(),
        (None, None) => Utc::now().timestamp() / 3600 * 3600,
    };
    let end_s = args.sim_hours.map(|h| start_s + (h * 3600.0) as i64);
    // A small page cache: the demo writes hourly records of its ~1,000
    // running jobs, and its memory stays flat over simulated weeks (the
    // default 64 MiB fills over days: 1.7× the first day's RSS by day 10).
    let ledger = Ledger::open_with(&db_path.display().to_string(), DEMO_SQLITE_CACHE_MIB)
        .with_context(|| format!("opening the ledger {}", db_path.display()))?;
    // One process drives a ledger's simulated cluster at a time.
    let _claim = ledger.claim("the demo")?;
    let valid_from = DateTime::<Utc>::from_timestamp(start_s, 0).unwrap_or_default();
    setup::seed(
        &ledger,
        valid_from,
        valid_from + chrono::Duration::days(366),
    )?;

    let registry = prometheus::Registry::new();
    ledger.register_metrics(&registry)?;
    let mut world = World::new(
        catalog,
        WorldConfig {
            seed: args.seed,
            start_s,
            // Long jobs are metered hourly while they run.
            metering_period_s: Some(3600),
            keep_finished_s: Some(crate::sim::world::KEEP_FINISHED_S),
            ..WorldConfig::default()
        },
    )?;
    // The seeded quotas hold from the start; API changes come through the
    // journal.
    setup::project_quotas(&mut world);
    let agents = Arc::new(Mutex::new(telemetry::SimAgents::new(&world, 1)?));
    registry.register(Box::new(telemetry::AgentsCollector(Arc::clone(&agents))))?;
    let mut backend = WorldBackend::new(Arc::new(Mutex::new(world)));
    if args.db.is_some() {
        // The API's inputs are journalled, so a restart replays them.
        backend = backend.with_journal(ledger.clone());
    }
    let mut driver = Driver {
        backend: backend.clone(),
        workload,
        ledger: ledger.clone(),
        start_s,
        metrics: metrics::WorldMetrics::new(&registry)?,
        tracker: tracker::JobTracker::default(),
        started: Vec::new(),
        agents: Arc::clone(&agents),
        last_step: Instant::now(),
        pending_sampled: None,
        failed: 0,
        records_new: 0,
        records_duplicate: 0,
    };

    // Carry on where a previous run on this ledger stopped: replay up to its
    // simulated time (the ledger skips records it already holds), with the
    // API's journalled inputs applied where they came, after the workload's
    // arrivals up to then, as the first run applied them.
    let journal = ledger.journal()?;
    backend.clone().replay(&journal, |at_s| driver.step(at_s))?;
    let resume_s = checkpoint.map_or(start_s, |c| c.reached_s.max(start_s));
    if resume_s > start_s {
        eprintln!(
            "demo: resuming {} simulated hours from {}",
            (resume_s - start_s) / 3600,
            cp_path.display()
        );
        let mut t = start_s;
        while t < resume_s {
            t = (t + 6 * 3600).min(resume_s);
            driver.step(t)?;
        }
    }

    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    let stop = Arc::new(AtomicBool::new(false));
    let listener = runtime
        .block_on(tokio::net::TcpListener::bind(args.listen))
        .map_err(|e| InputError::new(format!("--listen {}: {e}", args.listen)))?;
    let key_dir = match (&scratch, db_path.parent()) {
        (Some(dir), _) => dir.0.clone(),
        (None, Some(parent)) if !parent.as_os_str().is_empty() => parent.to_path_buf(),
        (None, _) => PathBuf::from("."),
    };
    // The demo's models behind the token gateway (see `model`).
    let model_addr = runtime
        .block_on(model::start(model::Upstream {
            usage_in_stream: true,
            word_delay: Duration::from_millis(5),
            seen: Arc::default(),
        }))
        .context("starting the demo's model server")?;
    let config = ApiConfig {
        gateway: crate::api::gateway::GatewayConfig {
            upstreams: callers::MODELS
                .iter()
                .map(|(name, _)| format!("{name}=http://{model_addr}"))
                .collect(),
            tiers: callers::MODELS
                .iter()
                .map(|(name, tier)| format!("{name}={tier}"))
                .collect(),
            ..Default::default()
        },
        // One local user, all data simulated: the page at `/` shows every
        // tenant's series without signing in.
        metrics: crate::api::metrics_access::MetricsAccess {
            tenant_series: crate::api::metrics_access::TenantSeries::Public,
            scrape_key: None,
        },
        ..ApiConfig::with_admin_key(&admin_key(args.admin_key_file.as_deref(), &key_dir)?)
    };
    // The quota API, the page at `/` and `/metrics` (the world's, the ledger's,
    // the agents' and the API's own series, one registry).
    let state = ApiState::new(config, ledger.clone(), Arc::new(backend.clone()), &registry)?;
    let gateway = state.gateway().clone();
    {
        let _in_runtime = runtime.enter();
        crate::api::gateway::health::spawn(&gateway);
    }
    let app = crate::api::router(state);
    let server = {
        let stop = Arc::clone(&stop);
        runtime.spawn(async move {
            // Client addresses for the failed-key lockout.
            let app = app.into_make_service_with_connect_info::<std::net::SocketAddr>();
            axum::serve(listener, app)
                .with_graceful_shutdown(async move {
                    while !stop.load(Ordering::Relaxed) {
                        tokio::time::sleep(Duration::from_millis(100)).await;
                    }
                })
                .await
        })
    };
    {
        let stop = Arc::clone(&stop);
        // Ctrl-C or SIGTERM: finish the step, write the summary, clean up.
        runtime.spawn(async move {
            let mut term =
                tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()).ok();
            let terminated = async {
                match term.as_mut() {
                    Some(t) => t.recv().await,
                    None => std::future::pending().await,
                }
            };
            tokio::select! {
                _ = tokio::signal::ctrl_c() => {}
                _ = terminated => {}
            }
            stop.store(true, Ordering::Relaxed);
        });
    }
    let mut callers = Vec::new();
    if args.model_calls_per_s > 0.0 {
        for t in setup::TENANTS {
            callers.push(callers::Caller {
                tenant: t.name.to_string(),
                key: ledger.create_api_key(setup::ACTOR, t.name)?,
                tier: t.tier,
            });
        }
    }
    let caller_keys: Vec<(String, String)> = callers
        .iter()
        .map(|c| (c.tenant.clone(), crate::ledger::hash_api_key(&c.key)))
        .collect();
    callers::spawn(
        &runtime,
        format!("http://{}", args.listen),
        callers,
        args.model_calls_per_s,
        args.seed,
        Arc::clone(&stop),
    );
    eprintln!(
        "demo: serving the API, the web page and /metrics on http://{} ({}× speed{})",
        args.listen,
        args.speed,
        args.duration
            .map_or(", Ctrl-C to stop".to_string(), |d| format!(", for {d} s"))
    );

    let began = Instant::now();
    let mut last_status = Instant::now();
    // RSS at the end of each simulated day of this run.
    let mut rss_by_day: Vec<f64> = Vec::new();
    let result = (|| -> anyhow::Result<()> {
        loop {
            let wall = began.elapsed().as_secs_f64();
            let mut done = stop.load(Ordering::Relaxed) || args.duration.is_some_and(|d| wall >= d);
            let mut target = resume_s + (wall * args.speed) as i64;
            if let Some(end) = end_s {
                done |= target >= end;
                target = target.min(end);
            }
            driver.step(target)?;
            while target - resume_s >= (rss_by_day.len() as i64 + 1) * 86_400 {
                let rss = crate::telemetry::cli::ProcSelf::read().rss_kib as f64 / 1024.0;
                rss_by_day.push(rss);
            }
            if args.db.is_some() {
                save_checkpoint(
                    &cp_path,
                    &Checkpoint {
                        start_s,
                        reached_s: target,
                    },
                )?;
            }
            if done {
                return Ok(());
            }
            if args.status_every > 0.0 && last_status.elapsed().as_secs_f64() >= args.status_every {
                eprintln!("{}", driver.status_line(wall));
                last_status = Instant::now();
            }
            std::thread::sleep(Duration::from_millis(200));
        }
    })();
    stop.store(true, Ordering::Relaxed);
    let _ = runtime.block_on(server);
    runtime.block_on(gateway.flush());
    // The callers' keys lived for this run only.
    for (tenant, hash) in &caller_keys {
        let _ = ledger.revoke_api_key(setup::ACTOR, tenant, &hash[..crate::ledger::KEY_ID_LEN]);
    }
    result?;

    let summary = driver.summary(began.elapsed().as_secs_f64(), args.speed, rss_by_day)?;
    if args.json {
        println!("{}", serde_json::to_string_pretty(&summary)?);
    } else {
        print!("{}", summary.render());
    }
    Ok(())
}

/// The admin key: `--admin-key-file` or ZHISUAN_ADMIN_KEY as for `zhisuan api`;
/// without either, a fresh random key written to `dir/admin.key` (mode 0600),
/// whose path (never the key) is printed.
fn admin_key(file: Option<&Path>, dir: &Path) -> anyhow::Result<String> {
    if file.is_some() || std::env::var_os(crate::cmd::api::ADMIN_KEY_ENV).is_some() {
        return crate::cmd::api::admin_key(file);
    }
    let mut bytes = [0u8; 24];
    getrandom::fill(&mut bytes)
        .map_err(|e| anyhow::anyhow!("no randomness for an admin key: {e}"))?;
    let key = hex::encode(bytes);
    let path = dir.join("admin.key");
    {
        use std::io::Write as _;
        use std::os::unix::fs::OpenOptionsExt as _;
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(0o600)
            .open(&path)
            .with_context(|| format!("writing the admin key to {}", path.display()))?;
        writeln!(f, "{key}")?;
    }
    eprintln!(
        "demo: admin key written to {} (curl -H \"Authorization: Bearer $(cat {})\" …)",
        path.display(),
        path.display()
    );
    Ok(key)
}

/// Locks a mutex, taking the data of a poisoned one (the demo's state stays usable).
fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(name: &str) -> JobSpec {
        JobSpec {
            duration_s: Some(60),
            ..JobSpec::new("acme", name, JobKind::Training)
        }
    }

    #[test]
    fn workload_repeats_with_new_names() {
        let mut w = Workload::new(vec![(100, spec("b")), (0, spec("a"))]).unwrap();
        assert_eq!(w.cycle_s, 100 + MAX_JOB_S);
        let first: Vec<_> = std::iter::from_fn(|| w.pop_until(MAX_JOB_S + 99))
            .map(|(t, s)| (t, s.name))
            .collect();
        assert_eq!(first, vec![(0, "a".to_string()), (100, "b".to_string())]);
        assert!(w.pop_until(MAX_JOB_S + 99).is_none());
        let (t, s) = w.pop_until(MAX_JOB_S + 100).unwrap();
        assert_eq!((t, s.name.as_str()), (MAX_JOB_S + 100, "a.c1"));
        assert_eq!(s.duration_s, Some(60), "short jobs keep their duration");
        let (t, s) = w.pop_until(i64::MAX).unwrap();
        assert_eq!((t, s.name.as_str()), (MAX_JOB_S + 200, "b.c1"));
    }

    #[test]
    fn checkpoint_round_trips_beside_the_db() {
        let dir = tempfile::tempdir().unwrap();
        let db = dir.path().join("ledger.sqlite");
        let path = checkpoint_path(&db);
        assert_eq!(path, dir.path().join("ledger.sqlite.demo.json"));
        assert_eq!(load_checkpoint(&path).unwrap(), None);
        let cp = Checkpoint {
            start_s: 3600,
            reached_s: 7200,
        };
        save_checkpoint(&path, &cp).unwrap();
        assert_eq!(load_checkpoint(&path).unwrap(), Some(cp));
        std::fs::write(&path, "{not json").unwrap();
        let err = load_checkpoint(&path).unwrap_err();
        assert_eq!(crate::error::exit_code(&err), 2, "{err:#}");
    }

    #[test]
    fn bad_flags_name_the_flag() {
        let args = |speed: f64, duration: Option<f64>| DemoArgs {
            listen: "127.0.0.1:0".parse().unwrap(),
            speed,
            duration,
            db: None,
            json: false,
            regions: None,
            workload: None,
            admin_key_file: None,
            status_every: 5.0,
            sim_hours: None,
            start_at: None,
            seed: 1,
            model_calls_per_s: 0.0,
        };
        assert!(validate(&args(0.0, None))
            .unwrap_err()
            .0
            .contains("--speed"));
        assert!(validate(&args(f64::NAN, None))
            .unwrap_err()
            .0
            .contains("--speed"));
        assert!(validate(&args(10.0, Some(-1.0)))
            .unwrap_err()
            .0
            .contains("--duration"));
        assert!(validate(&args(10.0, Some(5.0))).is_ok());
    }
}

//! The embedded demo: the whole system in one process (issue #8).
//!
//! observe → plan → act, in one loop: the openb workload arrives in
//! accelerated time into the multi-region [`World`](crate::sim::world::World) (placement engines per
//! region behind the region planner), the usage it meters is rated and
//! charged against vouchers in the SQLite ledger, and the quota API, the web
//! page and `/metrics` are served on `--listen` meanwhile.

mod arrivals;
pub mod callers;
mod driver;
pub mod meter;
pub mod metrics;
pub mod model;
mod serve;
pub mod setup;
mod state;
pub mod summary;
pub mod telemetry;
pub mod tracker;

use crate::error::InputError;
use crate::ledger::Ledger;
use crate::regions::catalog::Catalog;
use anyhow::Context as _;
use chrono::{DateTime, Utc};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use arrivals::Workload;
use driver::Driver;
use serve::Serving;
use state::DemoState;

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

/// The demo's ledger SQLite page cache (MiB).
const DEMO_SQLITE_CACHE_MIB: u32 = 8;

/// `zhisuan demo`: runs the world and serves it until `--duration`,
/// `--sim-hours` or Ctrl-C, then prints the summary.
pub fn run(args: DemoArgs) -> anyhow::Result<()> {
    validate(&args)?;
    let (catalog, workload) = inputs(&args)?;
    let state = DemoState::locate(&args)?;
    let ledger = open_ledger(&state)?;
    // One process drives a ledger's simulated cluster at a time.
    let _claim = ledger.claim("the demo")?;
    setup::seed(
        &ledger,
        valid_from(state.start_s),
        valid_from(state.start_s) + chrono::Duration::days(366),
    )?;
    let registry = prometheus::Registry::new();
    ledger.register_metrics(&registry)?;
    let mut driver = Driver::build(
        catalog,
        workload,
        &ledger,
        &registry,
        args.seed,
        state.start_s,
        state.kept(),
    )?;
    let resume_s = state.resume_s();
    if resume_s > state.start_s {
        eprintln!(
            "demo: resuming {} simulated hours from {}",
            (resume_s - state.start_s) / 3600,
            state.checkpoint_path().display()
        );
    }
    driver.catch_up(resume_s)?;
    let serving = Serving::start(&args, &ledger, &driver.backend, &registry, &state.key_dir())?;
    let began = Instant::now();
    let result = drive(&args, &mut driver, &state, resume_s, &serving.stop, began);
    serving.shut_down(&ledger);
    let rss_by_day = result?;
    let summary = driver.summary(began.elapsed().as_secs_f64(), args.speed, rss_by_day)?;
    if args.json {
        println!("{}", serde_json::to_string_pretty(&summary)?);
    } else {
        print!("{}", summary.render());
    }
    Ok(())
}

/// The region catalog and the workload (`--regions`, `--workload`, or the shipped ones).
fn inputs(args: &DemoArgs) -> anyhow::Result<(Catalog, Workload)> {
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
    Ok((catalog, Workload::new(jobs)?))
}

/// The ledger, with a small page cache: the demo writes hourly records of
/// its ~1,000 running jobs, and its memory stays flat over simulated weeks
/// (the default 64 MiB fills over days: 1.7× the first day's RSS by day 10).
fn open_ledger(state: &DemoState) -> anyhow::Result<Ledger> {
    Ledger::open_with(&state.db.display().to_string(), DEMO_SQLITE_CACHE_MIB)
        .with_context(|| format!("opening the ledger {}", state.db.display()))
}

/// When the seeded quotas and vouchers start to hold: the simulated start.
fn valid_from(start_s: i64) -> DateTime<Utc> {
    DateTime::<Utc>::from_timestamp(start_s, 0).unwrap_or_default()
}

/// Moves the world on at `--speed` from `resume_s` until `--duration`,
/// `--sim-hours` or `stop`, with a checkpoint after each step (a kept
/// ledger) and a status line every `--status-every` seconds; returns the
/// RSS (MiB) at the end of each simulated day of this run.
fn drive(
    args: &DemoArgs,
    driver: &mut Driver,
    state: &DemoState,
    resume_s: i64,
    stop: &AtomicBool,
    began: Instant,
) -> anyhow::Result<Vec<f64>> {
    let end_s = args.sim_hours.map(|h| state.start_s + (h * 3600.0) as i64);
    let mut last_status = Instant::now();
    let mut rss_by_day: Vec<f64> = Vec::new();
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
        state.save(target)?;
        if done {
            return Ok(rss_by_day);
        }
        if args.status_every > 0.0 && last_status.elapsed().as_secs_f64() >= args.status_every {
            eprintln!("{}", driver.status_line(wall));
            last_status = Instant::now();
        }
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// Locks a mutex, taking the data of a poisoned one (the demo's state stays usable).
fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

#[cfg(test)]
mod tests {
    use super::*;

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

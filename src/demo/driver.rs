//! The simulation side of the demo: moves the world on, meters its usage
//! into the ledger, keeps the metrics and the telemetry agents in step,
//! and sums it all up at the end.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::Context as _;
use chrono::{DateTime, Utc};

use super::arrivals::Workload;
use super::{lock, meter, metrics, setup, summary, telemetry, tracker};
use crate::ledger::types::Tier;
use crate::ledger::Ledger;
use crate::regions::catalog::Catalog;
use crate::regions::job::JobKind;
use crate::sim::backend::WorldBackend;
use crate::sim::world::{World, WorldConfig};

/// Simulated seconds the driver advances while holding the world's lock.
const STEP_SLICE_S: i64 = 60;

/// The simulation side of the demo: world, workload, ledger, metrics.
pub(super) struct Driver {
    /// The world, shared with the quota API's job endpoints.
    pub(super) backend: WorldBackend,
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
    /// The world of `catalog` from `start_s`, with the seeded quotas, the
    /// simulated telemetry agents and the world's metrics on `registry`;
    /// the API's inputs journalled in the ledger when it is kept, so a
    /// restart replays them.
    pub(super) fn build(
        catalog: Catalog,
        workload: Workload,
        ledger: &Ledger,
        registry: &prometheus::Registry,
        seed: u64,
        start_s: i64,
        journalled: bool,
    ) -> anyhow::Result<Driver> {
        let mut world = World::new(
            catalog,
            WorldConfig {
                seed,
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
        if journalled {
            backend = backend.with_journal(ledger.clone());
        }
        Ok(Driver {
            backend,
            workload,
            ledger: ledger.clone(),
            start_s,
            metrics: metrics::WorldMetrics::new(registry)?,
            tracker: tracker::JobTracker::default(),
            started: Vec::new(),
            agents,
            last_step: Instant::now(),
            pending_sampled: None,
            failed: 0,
            records_new: 0,
            records_duplicate: 0,
        })
    }

    /// Carries on where a previous run on this ledger stopped: replays up
    /// to `resume_s` (the ledger skips records it already holds), with the
    /// API's journalled inputs applied where they came, after the
    /// workload's arrivals up to then, as the first run applied them.
    pub(super) fn catch_up(&mut self, resume_s: i64) -> anyhow::Result<()> {
        let journal = self.ledger.journal()?;
        self.backend
            .clone()
            .replay(&journal, |at_s| self.step(at_s))?;
        let mut t = self.start_s;
        while t < resume_s {
            t = (t + 6 * 3600).min(resume_s);
            self.step(t)?;
        }
        Ok(())
    }

    /// Moves the world to `t_s` (unix seconds): submits the arrivals up to it
    /// at their own times, then meters the usage into the ledger.
    pub(super) fn step(&mut self, t_s: i64) -> anyhow::Result<()> {
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

    pub(super) fn summary(
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

    pub(super) fn status_line(&self, wall_s: f64) -> String {
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

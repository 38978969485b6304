//! `zhisuan sim`: a time-stepped multi-region simulation (arrivals AND
//! departures) of a workload over the region catalog, under a region policy.
//!
//! Both files default to the shipped ones (`data/regions/catalog.yaml`,
//! `data/workload/openb-regions.csv`, embedded in the binary). The workload
//! is built deterministically from the openb trace by
//! [`super::workload::build_workload`] (`zhisuan sim --from-trace TRACE.csv
//! --write-workload OUT.csv`); the comparison and table it prints are
//! [`super::compare`]'s.

use crate::error::InputError;
use crate::placement::Policy;
use crate::regions::catalog::{Catalog, Side, MILLI_FEN_PER_CNY};
use crate::regions::job::{JobKind, JobSpec};
use crate::regions::plan::{violations, RegionPolicy};
use crate::sim::compare::{compare, table, SPACE_ONLY};
use crate::sim::workload::{
    build_workload, parse_workload, write_workload, DEFAULT_WORKLOAD_CSV, DEFAULT_WORKLOAD_PATH,
};
use crate::sim::world::{Phase, World, WorldConfig};
use serde::Serialize;
use std::path::{Path, PathBuf};

/// Arguments of `zhisuan sim`.
#[derive(clap::Args, Debug)]
pub struct SimArgs {
    /// Region catalog (YAML). Default: the shipped 8 hubs / 10 clusters.
    #[arg(long, value_name = "FILE")]
    pub regions: Option<PathBuf>,
    /// Workload CSV. Default: the shipped openb-derived workload.
    #[arg(long, value_name = "FILE")]
    pub workload: Option<PathBuf>,
    /// Region policy: nearest, nearest-strict, round-robin, cheapest,
    /// greenest, green (the default), a comma-separated list of them, or all
    /// (the six, compared).
    #[arg(long, value_name = "NAME")]
    pub policy: Option<String>,
    /// Node placement policy inside each region (see `zhisuan replay`).
    #[arg(long, value_name = "NAME", default_value = "default")]
    pub placement: String,
    /// Seed of the engines' tie-break orders (the same seed for every policy).
    #[arg(long, value_name = "N", default_value_t = 1)]
    pub seed: u64,
    /// Print JSON instead of a table.
    #[arg(long)]
    pub json: bool,
    /// Also print the placement explanation of this job ("why did it go there?"):
    /// its name, or TENANT/NAME where several tenants use the name.
    #[arg(long, value_name = "JOB")]
    pub explain: Option<String>,
    /// No progress bar (it is drawn on stderr only when that is a terminal).
    #[arg(long, short)]
    pub quiet: bool,
    /// Write every job's outcome under each policy (region, start, wait, reason) to this CSV.
    #[arg(long, value_name = "FILE")]
    pub jobs_out: Option<PathBuf>,
    /// Build a workload from an openb pod list instead of simulating (with --write-workload).
    #[arg(long, value_name = "TRACE_CSV", requires = "write_workload")]
    pub from_trace: Option<PathBuf>,
    /// Where to write the built workload.
    #[arg(long, value_name = "FILE", requires = "from_trace")]
    pub write_workload: Option<PathBuf>,
    /// Run on the seeded generated catalog and workload SEED (varied
    /// regions, prices, green profiles, distances, scarce models, gangs,
    /// load) instead of the shipped ones.
    #[arg(long, value_name = "SEED", conflicts_with_all = ["regions", "workload"])]
    pub generated: Option<u64>,
    /// Time shifting: give every training and batch-inference job that has
    /// none this latest start (seconds after arrival), and add a
    /// `green-space-only` run of the same workload without the delays.
    #[arg(long, value_name = "SECONDS")]
    pub max_delay: Option<i64>,
    /// Also write the generated catalog.yaml and workload.csv into DIR.
    #[arg(long, value_name = "DIR", requires = "generated")]
    pub write_generated: Option<PathBuf>,
    /// Run every policy on each generated pair of seeds A..B (both
    /// included) and tally how the default policy fares: mean wait within
    /// the bound of nearest's, dominated by a baseline, constraints kept.
    #[arg(
        long,
        value_name = "A..B",
        conflicts_with_all = [
            "regions", "workload", "generated", "policy", "explain", "jobs_out",
            "from_trace", "max_delay",
        ]
    )]
    pub sweep: Option<String>,
}

// ---------------------------------------------------------------------------
// Running a simulation.

/// Per-region result.
#[derive(Debug, Clone, Serialize)]
pub struct RegionResult {
    pub name: String,
    pub display: String,
    pub side: Side,
    pub gpus: u64,
    /// Mean GPU allocation over the arrival window (first to last arrival), percent.
    pub utilisation_pct: f64,
    pub gpu_hours: f64,
    pub facility_kwh: f64,
    pub carbon_kg: f64,
    pub energy_cost_cny: f64,
    pub jobs: u32,
}

/// One policy's result (the `--json` object).
#[derive(Debug, Clone, Serialize)]
pub struct SimResult {
    pub policy: String,
    pub placement_policy: String,
    pub jobs: usize,
    pub placed: usize,
    pub never_placed: usize,
    pub gpu_hours: f64,
    pub facility_kwh: f64,
    pub carbon_kg: f64,
    /// From the exact integer milli-fen total.
    pub energy_cost_cny: f64,
    pub energy_cost_milli_fen: i64,
    pub slo_violations: usize,
    pub residency_violations: usize,
    pub mean_wait_s: f64,
    pub max_wait_s: i64,
    /// Placed jobs that waited at all (only the peak queues; the mean wait
    /// is sensitive to a few long waits there).
    pub jobs_waited: usize,
    /// Jobs with a latest start (`max_delay_s`), and those that started
    /// after it (or never).
    pub deadline_jobs: usize,
    pub deadline_misses: usize,
    pub fallbacks: usize,
    pub west_gpu_hours_pct: f64,
    pub span_s: i64,
    pub regions: Vec<RegionResult>,
}

/// Runs the workload through a fresh world under `policy` until every job
/// has departed (or can never start); returns the figures and the world.
pub fn simulate(
    catalog: &Catalog,
    workload: &[(i64, JobSpec)],
    policy: RegionPolicy,
    placement: Policy,
    seed: u64,
    progress: &indicatif::ProgressBar,
) -> Result<(SimResult, World), InputError> {
    let start = workload.first().map_or(0, |(t, _)| *t);
    let config = WorldConfig {
        region_policy: policy,
        placement_policy: placement,
        seed,
        start_s: start,
        ..Default::default()
    };
    let mut world = World::new(catalog.clone(), config)?;
    let run = run_workload(&mut world, workload, progress)?;
    let end = world.now_s();
    let tally = JobTally::of(&world, catalog, end);
    let regions = region_results(&world, &run, start, &tally.per_region_jobs);
    let milli_fen: i64 = run.usage.iter().map(|u| u.energy_cost_milli_fen).sum();
    let gpu_hours: f64 = regions.iter().map(|r| r.gpu_hours).sum();
    let west: f64 = regions
        .iter()
        .filter(|r| r.side == Side::West)
        .map(|r| r.gpu_hours)
        .sum();
    let placed = tally.placed;
    let result = SimResult {
        policy: policy.name().to_string(),
        placement_policy: placement.name().to_string(),
        jobs: workload.len(),
        placed,
        never_placed: workload.len() - placed,
        gpu_hours,
        facility_kwh: regions.iter().map(|r| r.facility_kwh).sum(),
        carbon_kg: regions.iter().map(|r| r.carbon_kg).sum(),
        energy_cost_cny: milli_fen as f64 / MILLI_FEN_PER_CNY as f64,
        energy_cost_milli_fen: milli_fen,
        slo_violations: tally.slo_violations,
        residency_violations: tally.residency_violations,
        mean_wait_s: if placed > 0 {
            tally.waits as f64 / placed as f64
        } else {
            0.0
        },
        max_wait_s: tally.max_wait,
        jobs_waited: tally.jobs_waited,
        deadline_jobs: tally.deadline_jobs,
        deadline_misses: tally.deadline_misses,
        fallbacks: tally.fallbacks,
        west_gpu_hours_pct: if gpu_hours > 0.0 {
            100.0 * west / gpu_hours
        } else {
            0.0
        },
        span_s: (end - start).max(1),
        regions,
    };
    Ok((result, world))
}

/// What running a workload through the world gave: its usage, and each
/// region's allocation integrated over the arrival window.
struct WorkloadRun {
    usage: Vec<crate::sim::world::UsageInterval>,
    /// Milli-GPU × seconds allocated per region, from the first arrival to
    /// the last (piecewise constant between arrivals, sampled just before
    /// each one).
    alloc_milli_s: Vec<f64>,
    /// The last arrival.
    last_arrival_s: i64,
}

/// Submits every job at its arrival time, then runs the world until
/// nothing is left to happen.
fn run_workload(
    world: &mut World,
    workload: &[(i64, JobSpec)],
    progress: &indicatif::ProgressBar,
) -> Result<WorkloadRun, InputError> {
    let mut usage = Vec::new();
    let mut alloc_milli_s = vec![0f64; world.catalog().regions.len()];
    let mut prev_t = workload.first().map_or(0, |(t, _)| *t);
    for (t, spec) in workload {
        world.advance_to(*t);
        for (r, acc) in alloc_milli_s.iter_mut().enumerate() {
            *acc += world.allocated_milli(r) as f64 * (*t - prev_t) as f64;
        }
        prev_t = *t;
        world.submit(spec.clone())?;
        usage.append(&mut world.take_usage());
        progress.inc(1);
    }
    while let Some(t) = world.next_event_s() {
        world.advance_to(t);
        usage.append(&mut world.take_usage());
    }
    Ok(WorkloadRun {
        usage,
        alloc_milli_s,
        last_arrival_s: prev_t,
    })
}

/// The jobs' outcomes summed: placements per region, violations, waits,
/// deadlines and fallbacks.
#[derive(Default)]
struct JobTally {
    per_region_jobs: Vec<u32>,
    placed: usize,
    slo_violations: usize,
    residency_violations: usize,
    /// Summed waits of the placed jobs (s).
    waits: i64,
    max_wait: i64,
    jobs_waited: usize,
    deadline_jobs: usize,
    deadline_misses: usize,
    /// Jobs placed in a region other than their first-ranked one.
    fallbacks: usize,
}

impl JobTally {
    /// Every job of `world`, its waits counted up to `end`.
    fn of(world: &World, catalog: &Catalog, end: i64) -> JobTally {
        let mut t = JobTally {
            per_region_jobs: vec![0u32; catalog.regions.len()],
            ..JobTally::default()
        };
        for j in world.jobs() {
            if let Some(d) = j.spec.max_delay_s {
                t.deadline_jobs += 1;
                t.deadline_misses += usize::from(j.started_s.is_none_or(|s| s - j.submitted_s > d));
            }
            let Some(p) = &j.placement else {
                debug_assert_eq!(j.phase, Phase::Pending);
                continue;
            };
            t.placed += 1;
            let r = p.region;
            t.per_region_jobs[r] += 1;
            let (s, res) = violations(catalog, &j.resolved, r);
            if s && j.spec.kind == JobKind::OnlineInference {
                t.slo_violations += 1;
            }
            t.residency_violations += res as usize;
            let w = j.wait_s(end);
            t.jobs_waited += (w > 0) as usize;
            t.waits += w;
            t.max_wait = t.max_wait.max(w);
            if let Some(crate::regions::explain::Candidate {
                verdict: crate::regions::explain::Verdict::Chosen { rank },
                ..
            }) = j.explanation.candidates.get(r)
            {
                t.fallbacks += (*rank > 0) as usize;
            }
        }
        t
    }
}

/// Each region's figures: GPUs, utilisation over the arrival window,
/// GPU-hours, energy, carbon, energy cost and jobs placed.
fn region_results(
    world: &World,
    run: &WorkloadRun,
    start: i64,
    per_region_jobs: &[u32],
) -> Vec<RegionResult> {
    let window = run.last_arrival_s - start;
    world
        .region_stats()
        .into_iter()
        .enumerate()
        .map(|(r, s)| RegionResult {
            name: s.name,
            display: s.display,
            side: s.side,
            gpus: s.gpus,
            utilisation_pct: if s.gpus > 0 && window > 0 {
                100.0 * run.alloc_milli_s[r] / (s.gpus as f64 * 1000.0 * window as f64)
            } else {
                0.0
            },
            gpu_hours: s.gpu_seconds / 3600.0,
            facility_kwh: s.facility_kwh,
            carbon_kg: s.carbon_kg,
            energy_cost_cny: s.energy_cost_milli_fen as f64 / MILLI_FEN_PER_CNY as f64,
            jobs: per_region_jobs[r],
        })
        .collect()
}

/// The job `--explain` names: `NAME`, or `TENANT/NAME` where several
/// tenants have a job of that name.
fn explained_job(world: &World, wanted: &str) -> Result<crate::sim::world::JobId, InputError> {
    let (tenant, name) = match wanted.split_once('/') {
        Some((t, n)) => (Some(t), n),
        None => (None, wanted),
    };
    let mut found = world
        .jobs()
        .filter(|j| j.spec.name == name && tenant.is_none_or(|t| j.spec.tenant == t));
    let first = found.next().ok_or_else(|| {
        InputError::new(format!(
            "--explain: no job named {wanted:?} in the workload"
        ))
    })?;
    if let Some(other) = found.next() {
        return Err(InputError::new(format!(
            "--explain: tenants {:?} and {:?} both have a job named {name:?}; write TENANT/NAME",
            first.spec.tenant, other.spec.tenant
        )));
    }
    Ok(first.id)
}

/// A generated pair's workload as the simulation reads it (written and
/// parsed, as a user's file would be).
fn parsed_rows(
    g: &crate::sim::generate::Generated,
    seed: u64,
) -> Result<Vec<(i64, JobSpec)>, InputError> {
    let mut text = Vec::new();
    write_workload(&g.rows, &mut text).map_err(|e| InputError::new(e.to_string()))?;
    let text = String::from_utf8(text).map_err(|e| InputError::new(e.to_string()))?;
    parse_workload(&text, &format!("generated workload {seed}"), &g.catalog)
}

/// The seeded generated pair: catalog and parsed workload.
pub(super) fn generated_workload(
    seed: u64,
) -> Result<(crate::sim::generate::Generated, Vec<(i64, JobSpec)>), InputError> {
    let g = crate::sim::generate::generate(seed);
    let rows = parsed_rows(&g, seed)?;
    Ok((g, rows))
}

/// `--sweep A..B`: every policy on each generated pair, and the tally.
fn run_sweep(range: &str, args: &SimArgs) -> anyhow::Result<()> {
    let seeds = crate::sim::sweep::parse_range(range)?;
    let placement = placement_of(args)?;
    let pairs = crate::sim::sweep::sweep(seeds, placement, args.seed, args.quiet)?;
    let summary = crate::sim::sweep::Summary::of(&pairs);
    if args.json {
        let out = serde_json::json!({ "pairs": pairs, "summary": summary });
        println!("{}", serde_json::to_string_pretty(&out)?);
    } else {
        print!("{}", crate::sim::sweep::table(&pairs, &summary));
    }
    Ok(())
}

/// The node placement policy `--placement` names.
fn placement_of(args: &SimArgs) -> Result<Policy, InputError> {
    args.placement
        .parse()
        .map_err(|e: String| InputError::new(format!("--placement: {e}")))
}

/// `zhisuan sim`: a sweep, a trace converted into a workload, or the
/// policies run on one catalog and workload and reported.
pub fn run(args: SimArgs) -> anyhow::Result<()> {
    if let Some(range) = &args.sweep {
        return run_sweep(range, &args);
    }
    if let (Some(trace), Some(out)) = (&args.from_trace, &args.write_workload) {
        return convert_trace(trace, out);
    }
    let generated = args.generated.map(generated_workload).transpose()?;
    if let (Some((g, _)), Some(dir)) = (&generated, &args.write_generated) {
        write_generated(g, dir)?;
    }
    let (catalog, workload) = match generated {
        Some((g, rows)) => (g.catalog, rows),
        None => {
            let catalog = match &args.regions {
                Some(p) => Catalog::load(p)?,
                None => Catalog::default_catalog(),
            };
            let rows = workload_file(args.workload.as_deref(), &catalog)?;
            (catalog, rows)
        }
    };
    let (workload, space_only) = with_max_delay(workload, args.max_delay)?;
    let placement = placement_of(&args)?;
    let policies = policies_of(&args)?;
    let mut runs = run_policies(&catalog, &workload, &policies, placement, &args)?;
    if let Some(undelayed) = space_only.filter(|_| policies.contains(&RegionPolicy::Green)) {
        let result = space_only_run(&catalog, &undelayed, placement, &args)?;
        runs.results.push(result);
    }
    if let Some(path) = &args.jobs_out {
        write_job_outcomes(path, &runs.outcomes)?;
    }
    if args.json {
        println!("{}", runs_json(&runs)?);
    } else {
        print!("{}", table(&runs.results));
        for v in &runs.explained {
            print!("{}", explanation_text(v));
        }
    }
    Ok(())
}

/// `--from-trace TRACE --write-workload OUT`: the workload built from an
/// openb trace, written as CSV.
fn convert_trace(trace: &Path, out: &Path) -> anyhow::Result<()> {
    let text = std::fs::read_to_string(trace)
        .map_err(|e| InputError::new(format!("{}: cannot read the trace: {e}", trace.display())))?;
    let rows = build_workload(&text, &trace.display().to_string())?;
    let mut f = std::fs::File::create(out)?;
    write_workload(&rows, &mut f)?;
    eprintln!("wrote {} jobs to {}", rows.len(), out.display());
    Ok(())
}

/// `--write-generated DIR`: the generated pair's catalog and workload.
fn write_generated(g: &crate::sim::generate::Generated, dir: &Path) -> anyhow::Result<()> {
    std::fs::create_dir_all(dir)?;
    std::fs::write(
        dir.join("catalog.yaml"),
        serde_yaml::to_string(&g.catalog_file)?,
    )?;
    let mut f = std::fs::File::create(dir.join("workload.csv"))?;
    write_workload(&g.rows, &mut f)?;
    eprintln!(
        "wrote {0}/catalog.yaml and {0}/workload.csv (offered load {1:.2})",
        dir.display(),
        g.load
    );
    Ok(())
}

/// A workload as the simulation reads it: each job with its arrival (s).
type Jobs = Vec<(i64, JobSpec)>;

/// `--workload FILE`, or the shipped workload.
fn workload_file(path: Option<&Path>, catalog: &Catalog) -> Result<Jobs, InputError> {
    let Some(p) = path else {
        return parse_workload(DEFAULT_WORKLOAD_CSV, DEFAULT_WORKLOAD_PATH, catalog);
    };
    let text = std::fs::read_to_string(p).map_err(|e| {
        InputError::new(format!(
            "{}: cannot read the workload: {e}; pass an existing file to --workload",
            p.display()
        ))
    })?;
    parse_workload(&text, &p.display().to_string(), catalog)
}

/// `--max-delay D`: every job but online inference without a latest start
/// of its own may start up to D seconds late; the workload as it was comes
/// back beside it for the space-only run.
fn with_max_delay(
    mut workload: Jobs,
    max_delay: Option<i64>,
) -> Result<(Jobs, Option<Jobs>), InputError> {
    let d = match max_delay {
        None => return Ok((workload, None)),
        Some(d) if d <= 0 => {
            return Err(InputError::new(format!(
                "--max-delay {d}: must be a positive number of seconds"
            )))
        }
        Some(d) => d,
    };
    let undelayed = workload.clone();
    for (_, spec) in &mut workload {
        if spec.kind != JobKind::OnlineInference && spec.max_delay_s.is_none() {
            spec.max_delay_s = Some(d);
        }
    }
    Ok((workload, Some(undelayed)))
}

/// `--policy`: green alone, `all`, or a comma-separated list.
fn policies_of(args: &SimArgs) -> Result<Vec<RegionPolicy>, InputError> {
    match args.policy.as_deref() {
        None => Ok(vec![RegionPolicy::Green]),
        Some("all") => Ok(RegionPolicy::ALL.to_vec()),
        Some(list) => list
            .split(',')
            .map(|p| {
                p.parse().map_err(|e: String| {
                    InputError::new(format!("--policy: {e} (or all, or a comma-separated list)"))
                })
            })
            .collect(),
    }
}

/// What the policies' runs gave: their figures, the `--explain`ed job
/// under each, and every job's outcome when `--jobs-out` asks for them.
struct Runs {
    results: Vec<SimResult>,
    explained: Vec<crate::sim::world::JobView>,
    outcomes: Vec<crate::sim::outcomes::JobOutcome>,
}

fn run_policies(
    catalog: &Catalog,
    workload: &[(i64, JobSpec)],
    policies: &[RegionPolicy],
    placement: Policy,
    args: &SimArgs,
) -> anyhow::Result<Runs> {
    let mut runs = Runs {
        results: Vec::with_capacity(policies.len()),
        explained: Vec::new(),
        outcomes: Vec::new(),
    };
    for &p in policies {
        let label = format!("sim {}", p.name());
        let (result, world) = simulate_shown(catalog, workload, p, placement, args, label)?;
        if let Some(wanted) = &args.explain {
            let id = explained_job(&world, wanted)?;
            runs.explained.push(world.job_view(id).expect("job exists"));
        }
        if args.jobs_out.is_some() {
            runs.outcomes
                .extend(crate::sim::outcomes::job_outcomes(&world, p.name()));
        }
        runs.results.push(result);
    }
    Ok(runs)
}

/// Green on the workload without its delays (`--max-delay`'s space-only
/// figures).
fn space_only_run(
    catalog: &Catalog,
    undelayed: &[(i64, JobSpec)],
    placement: Policy,
    args: &SimArgs,
) -> anyhow::Result<SimResult> {
    let label = "sim green, space only".to_string();
    let (mut result, _) = simulate_shown(
        catalog,
        undelayed,
        RegionPolicy::Green,
        placement,
        args,
        label,
    )?;
    result.policy = SPACE_ONLY.into();
    Ok(result)
}

/// [`simulate`] with a progress bar of the jobs, labelled `label` (none
/// with `--quiet`).
fn simulate_shown(
    catalog: &Catalog,
    workload: &[(i64, JobSpec)],
    policy: RegionPolicy,
    placement: Policy,
    args: &SimArgs,
    label: String,
) -> Result<(SimResult, World), InputError> {
    let progress = crate::progress::bar(workload.len() as u64, "jobs", args.quiet);
    progress.set_message(label);
    let run = simulate(catalog, workload, policy, placement, args.seed, &progress);
    progress.finish_and_clear();
    run
}

/// `--jobs-out FILE`: one row a job and policy.
fn write_job_outcomes(
    path: &Path,
    outcomes: &[crate::sim::outcomes::JobOutcome],
) -> anyhow::Result<()> {
    let f = std::fs::File::create(path).map_err(|e| {
        InputError::new(format!("--jobs-out {}: cannot create: {e}", path.display()))
    })?;
    crate::sim::outcomes::write_outcomes(outcomes, std::io::BufWriter::new(f))?;
    eprintln!(
        "wrote {} job outcomes to {}",
        outcomes.len(),
        path.display()
    );
    Ok(())
}

/// `--json`: one run's object, or the runs with their comparison (and
/// the explanations, with `--explain`).
fn runs_json(runs: &Runs) -> serde_json::Result<String> {
    if !runs.explained.is_empty() {
        serde_json::to_string_pretty(&serde_json::json!({
            "runs": runs.results,
            "comparison": compare(&runs.results),
            "explanations": runs.explained,
        }))
    } else if runs.results.len() == 1 {
        serde_json::to_string_pretty(&runs.results[0])
    } else {
        serde_json::to_string_pretty(&serde_json::json!({
            "runs": runs.results,
            "comparison": compare(&runs.results),
        }))
    }
}

/// `--explain`'s words: the job's summary, then each region's verdict,
/// reason and terms.
fn explanation_text(v: &crate::sim::world::JobView) -> String {
    let mut s = format!(
        "\n{} under {}: {}\n",
        v.name, v.explanation.policy, v.explanation.summary
    );
    for c in &v.explanation.candidates {
        let terms = c
            .terms
            .as_ref()
            .map(|t| {
                format!(
                    "{:.2} kWh, {:.4} CNY, {:.3} kg CO2, green {:.0}%{}",
                    t.facility_kwh,
                    t.energy_cost_cny,
                    t.carbon_kg,
                    t.green_share * 100.0,
                    t.latency_ms
                        .map(|l| format!(", {l:.1} ms"))
                        .unwrap_or_default()
                )
            })
            .unwrap_or_default();
        s.push_str(&format!(
            "  {:<14} {:<10} {:<60} {}\n",
            c.region, c.verdict, c.reason, terms
        ));
    }
    s
}

//! `zhisuan replay`: the openb trace through a placement policy, exactly per
//! the FGD paper's protocol as `docs/benchmarks.md` ("Protocol") states it (shuffle, tune to 130%,
//! no departures, fixed tie-break order, allocation at 90/100/130% arrival).

use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::Context;
use rand::seq::SliceRandom;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use serde::Serialize;

use crate::error::InputError;
use crate::placement::{Cluster, Engine, Policy, Request};
use crate::sim::openb::{load_nodes, load_pods, TracePod};

/// Arrival levels (% of cluster GPU capacity) at which allocation is reported.
pub const LEVELS: [u32; 3] = [90, 100, 130];

const DEFAULT_NODES: &str = "data/openb/openb_node_list_gpu_node.csv";
const DEFAULT_PODS: &str = "data/openb/openb_pod_list_default.csv";

/// Arguments of `zhisuan replay`.
#[derive(clap::Args, Debug, Clone)]
pub struct ReplayArgs {
    /// Node list CSV (sn,cpu_milli,memory_mib,gpu,model).
    #[arg(long, default_value = DEFAULT_NODES)]
    pub nodes: PathBuf,
    /// Pod list CSV (name,cpu_milli,memory_mib,num_gpu,gpu_milli[,gpu_spec,...]).
    #[arg(long, default_value = DEFAULT_PODS)]
    pub pods: PathBuf,
    /// Placement policy: random, bestfit, dotprod, gpupacking, gpuclustering, fgd, zhisuan (= default).
    #[arg(long, default_value = "default")]
    pub policy: String,
    /// First seed.
    #[arg(long, default_value_t = 1)]
    pub seed: u64,
    /// Number of seeds (seed, seed+1, …); figures are means over them.
    #[arg(long, default_value_t = 1)]
    pub seeds: u64,
    /// Workload size as a multiple of cluster GPU capacity.
    #[arg(long, default_value_t = 1.3, allow_negative_numbers = true)]
    pub tune: f64,
    /// Print one JSON object instead of a table.
    #[arg(long)]
    pub json: bool,
    /// No progress bar (it is drawn on stderr only when that is a terminal).
    #[arg(long, short)]
    pub quiet: bool,
}

/// Result of one seed.
#[derive(Clone, Debug, Serialize)]
pub struct SeedResult {
    pub seed: u64,
    /// `alloc_pct` at each of [`LEVELS`].
    pub alloc_pct: [f64; 3],
    pub pods_arrived: usize,
    pub pods_failed: usize,
    pub decisions: usize,
    pub schedule_seconds: f64,
}

/// Runs one seed of the protocol on a cluster (cloned) and a trace.
pub fn run_seed(
    cluster: &Cluster,
    trace: &[TracePod],
    policy: Policy,
    seed: u64,
    tune: f64,
) -> SeedResult {
    let capacity = cluster.total_gpus() as f64 * 1000.0;
    let arrivals = tuned_workload(trace, capacity, seed, tune);
    let mut engine = Engine::new(cluster.clone(), policy, seed);
    // FGD's setting: typical shapes from the whole (tuned) workload. The
    // default gets the same knowledge; live, both learn shapes online.
    if policy.uses_shapes() {
        engine.set_workload(arrivals.iter().copied());
    }
    let mut sums = [0.0f64; 3];
    let mut counts = [0usize; 3];
    // Nearest recorded value per level, for levels no record rounds to.
    let mut nearest = [(f64::INFINITY, 0.0f64); 3];
    let mut arrived_milli = 0u64;
    let mut failed = 0usize;
    let start = Instant::now();
    for req in &arrivals {
        arrived_milli += req.gpu.total_milli() as u64;
        if engine.schedule(req).is_none() {
            failed += 1;
        }
        let arrived_pct = 100.0 * arrived_milli as f64 / capacity;
        let alloc_pct = 100.0 * engine.cluster().gpu_milli_allocated() as f64 / capacity;
        for (i, &level) in LEVELS.iter().enumerate() {
            if arrived_pct.round() as u32 == level {
                sums[i] += alloc_pct;
                counts[i] += 1;
            }
            let dist = (arrived_pct - level as f64).abs();
            if dist < nearest[i].0 {
                nearest[i] = (dist, alloc_pct);
            }
        }
    }
    let schedule_seconds = start.elapsed().as_secs_f64();
    let alloc_pct = std::array::from_fn(|i| {
        if counts[i] > 0 {
            sums[i] / counts[i] as f64
        } else {
            nearest[i].1
        }
    });
    SeedResult {
        seed,
        alloc_pct,
        pods_arrived: arrivals.len(),
        pods_failed: failed,
        decisions: arrivals.len(),
        schedule_seconds,
    }
}

/// Steps 1–2 of the protocol: order by name, shuffle, then tune the total
/// requested milli-GPU to `tune × capacity`.
pub fn tuned_workload(trace: &[TracePod], capacity: f64, seed: u64, tune: f64) -> Vec<&Request> {
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let mut pods: Vec<&TracePod> = trace.iter().collect();
    pods.sort_by(|a, b| a.name.cmp(&b.name));
    pods.shuffle(&mut rng);
    let target = tune * capacity;
    let mut total: u64 = pods
        .iter()
        .map(|p| p.request.gpu.total_milli() as u64)
        .sum();
    if (total as f64) < target && !trace.is_empty() {
        loop {
            let p = &trace[rng.random_range(0..trace.len())];
            let m = p.request.gpu.total_milli() as u64;
            if (total + m) as f64 > target {
                break;
            }
            total += m;
            pods.push(p);
        }
    } else {
        while total as f64 > target && !pods.is_empty() {
            let i = rng.random_range(0..pods.len());
            total -= pods.remove(i).request.gpu.total_milli() as u64;
        }
    }
    pods.into_iter().map(|p| &p.request).collect()
}

/// Summary over seeds (the `--json` object).
#[derive(Clone, Debug, Serialize)]
pub struct Summary {
    pub trace: String,
    pub policy: String,
    pub seeds: u64,
    pub nodes: usize,
    pub gpus: usize,
    pub tune: f64,
    pub alloc_pct_at_arrival: std::collections::BTreeMap<String, f64>,
    pub pods_arrived: f64,
    pub pods_failed: f64,
    pub decisions_per_sec: f64,
    pub peak_rss_mb: Option<f64>,
    pub per_seed: Vec<SeedResult>,
}

/// A path given relative to the repository: as given if it exists, else
/// beside the crate (so the defaults work from any directory).
fn resolve(path: &Path) -> PathBuf {
    if path.exists() || path.is_absolute() {
        return path.to_path_buf();
    }
    let beside = Path::new(env!("CARGO_MANIFEST_DIR")).join(path);
    if beside.exists() {
        beside
    } else {
        path.to_path_buf()
    }
}

/// Loads the node and pod lists: the cluster and the trace's pods.
pub fn load(nodes: &Path, pods: &Path) -> Result<(Cluster, Vec<TracePod>), InputError> {
    let specs = load_nodes(&resolve(nodes))?;
    let mut cluster = Cluster::from_specs(&specs)
        .map_err(|e| InputError::new(format!("{}: {e}", nodes.display())))?;
    let trace = load_pods(&resolve(pods), cluster.models_mut())?;
    Ok((cluster, trace))
}

/// Runs `seeds` seeds and averages.
pub fn summarise(
    args: &ReplayArgs,
    cluster: &Cluster,
    trace: &[TracePod],
) -> Result<Summary, InputError> {
    let policy: Policy = args
        .policy
        .parse()
        .map_err(|e| InputError::new(format!("--policy: {e}")))?;
    if args.seeds == 0 {
        return Err(InputError::new("--seeds must be at least 1"));
    }
    if !(args.tune.is_finite() && args.tune > 0.0 && args.tune <= 100.0) {
        return Err(InputError::new(format!(
            "--tune must be a number in (0, 100], got {}",
            args.tune
        )));
    }
    let progress = crate::progress::bar(args.seeds, "seeds", args.quiet);
    progress.set_message(format!("replay {}", policy.name()));
    let per_seed: Vec<SeedResult> = (args.seed..args.seed + args.seeds)
        .map(|s| {
            let r = run_seed(cluster, trace, policy, s, args.tune);
            progress.inc(1);
            r
        })
        .collect();
    progress.finish_and_clear();
    let n = per_seed.len() as f64;
    let mean = |f: &dyn Fn(&SeedResult) -> f64| per_seed.iter().map(f).sum::<f64>() / n;
    let decisions: usize = per_seed.iter().map(|r| r.decisions).sum();
    let seconds: f64 = per_seed.iter().map(|r| r.schedule_seconds).sum();
    let alloc = LEVELS
        .iter()
        .enumerate()
        .map(|(i, l)| (l.to_string(), round2(mean(&|r| r.alloc_pct[i]))))
        .collect();
    let trace_name = args.pods.file_stem().map_or_else(
        || args.pods.display().to_string(),
        |s| s.to_string_lossy().into_owned(),
    );
    Ok(Summary {
        trace: trace_name,
        policy: policy.name().to_string(),
        seeds: args.seeds,
        nodes: cluster.len(),
        gpus: cluster.total_gpus(),
        tune: args.tune,
        alloc_pct_at_arrival: alloc,
        pods_arrived: mean(&|r| r.pods_arrived as f64),
        pods_failed: mean(&|r| r.pods_failed as f64),
        decisions_per_sec: (decisions as f64 / seconds.max(1e-9)).round(),
        peak_rss_mb: peak_rss_mb(),
        per_seed,
    })
}

fn round2(x: f64) -> f64 {
    (x * 100.0).round() / 100.0
}

/// Peak resident set size of this process (Linux), in MB.
pub fn peak_rss_mb() -> Option<f64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
    let kb: f64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some((kb / 1024.0 * 10.0).round() / 10.0)
}

pub fn run(args: ReplayArgs) -> anyhow::Result<()> {
    let (cluster, trace) = load(&args.nodes, &args.pods)?;
    let s = summarise(&args, &cluster, &trace)?;
    if args.json {
        println!(
            "{}",
            serde_json::to_string(&s).context("serialising the summary")?
        );
        return Ok(());
    }
    println!("trace    {}  ({} nodes, {} GPUs)", s.trace, s.nodes, s.gpus);
    println!(
        "policy   {}  seeds {}..{}  tune {}",
        s.policy,
        args.seed,
        args.seed + args.seeds - 1,
        s.tune
    );
    println!(
        "{:>8} {:>10} {:>10} {:>10} {:>10}",
        "seed", "alloc@90", "alloc@100", "alloc@130", "failed"
    );
    for r in &s.per_seed {
        println!(
            "{:>8} {:>10.2} {:>10.2} {:>10.2} {:>10}",
            r.seed, r.alloc_pct[0], r.alloc_pct[1], r.alloc_pct[2], r.pods_failed
        );
    }
    let a = &s.alloc_pct_at_arrival;
    println!(
        "{:>8} {:>10.2} {:>10.2} {:>10.2} {:>10.1}",
        "mean", a["90"], a["100"], a["130"], s.pods_failed
    );
    let rss = s
        .peak_rss_mb
        .map_or_else(|| "n/a".to_string(), |mb| format!("{mb:.1} MB"));
    println!(
        "pods arrived {:.1}, decisions/s {:.0}, peak RSS {rss}",
        s.pods_arrived, s.decisions_per_sec
    );
    Ok(())
}

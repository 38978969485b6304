//! Topology-aware gangs against topology-blind placement (issue #18).
//!
//! One region of `--nodes` (default 256) 8-GPU nodes, `--per-rack` (8) nodes
//! a rack and 4 racks a block, fed by the simulated cluster (the scheduler
//! the controller runs) with one seeded stream of `--jobs` (2,000) jobs at
//! `--load` (0.9) of the GPUs: half multi-node training gangs of 2..=8 whole
//! 8-GPU nodes, half single-replica jobs of 1, 2 or 4 GPUs that fragment
//! the racks. The same stream runs three times: the gangs blind, asking
//! `topology: {preferred: rack}`, and asking `{required: rack}`. Printed
//! (JSON, one object per mode): the share of multi-node gangs placed within
//! one rack and within one block, the mean GPU allocation while jobs arrive
//! (the cost of keeping gangs together: GPUs left idle waiting for a rack),
//! the mean wait of gangs and of all jobs, and the makespan.
//!
//! Run: `cargo bench --bench topology` (`-- --jobs 500` for a quick run).

use std::collections::{BTreeSet, HashMap};

use serde_json::json;
use zhisuan::placement::topology::{BLOCK_LABEL, RACK_LABEL};
use zhisuan::placement::{Level, TopologySpec};
use zhisuan::regions::job::{JobKind, JobSpec};
use zhisuan::regions::Catalog;
use zhisuan::sim::generate::Rng;
use zhisuan::sim::world::{Phase, World, WorldConfig};

struct Args {
    nodes: u32,
    per_rack: u32,
    jobs: usize,
    load: f64,
    seed: u64,
}

fn args() -> Args {
    let mut a = Args {
        nodes: 256,
        per_rack: 8,
        jobs: 2000,
        load: 0.9,
        seed: 7,
    };
    let argv: Vec<String> = std::env::args().collect();
    let mut i = 1;
    while i < argv.len() {
        let value = || argv.get(i + 1).map(String::as_str).unwrap_or("");
        match argv[i].as_str() {
            "--nodes" => a.nodes = value().parse().expect("--nodes N"),
            "--per-rack" => a.per_rack = value().parse().expect("--per-rack N"),
            "--jobs" => a.jobs = value().parse().expect("--jobs N"),
            "--load" => a.load = value().parse().expect("--load 0.9"),
            "--seed" => a.seed = value().parse().expect("--seed N"),
            // `cargo bench` passes --bench; `--test` (cargo test --benches)
            // asks for a smoke run.
            "--test" => a.jobs = a.jobs.min(200),
            _ => {
                i += 1;
                continue;
            }
        }
        i += 2;
    }
    a
}

fn catalog(a: &Args) -> Catalog {
    let yaml = format!(
        r#"
accelerators: [{{model: H100, vendor: nvidia, power_w: 700}}]
regions:
  - {{name: east, hub: e, side: east, pue: 1.2, green_share: 0.3, price_cny_per_kwh: 0.6,
     grid_factor_kg_per_kwh: 0.6, inventory: [
       {{model: H100, nodes: {}, gpus_per_node: 8, cpu_milli: 192000, memory_mib: 2097152,
        nodes_per_rack: {}, racks_per_block: 4}}]}}
user_regions: []
links: []
"#,
        a.nodes, a.per_rack
    );
    Catalog::from_yaml(&yaml, "topology bench").expect("bench catalog")
}

/// The job stream: (arrival s, spec, multi-node gang?).
fn stream(a: &Args) -> Vec<(i64, JobSpec, bool)> {
    let mut rng = Rng(a.seed);
    let mean_duration = 3600.0;
    let mean_gpus = 0.5 * 5.0 * 8.0 + 0.5 * (1.0 + 2.0 + 4.0) / 3.0;
    let rate = a.load * (a.nodes as f64 * 8.0) / (mean_gpus * mean_duration);
    let mut t = 0.0;
    (0..a.jobs)
        .map(|i| {
            t += rng.exp(1.0 / rate);
            let gang = rng.unit() < 0.5;
            let (replicas, gpus) = if gang {
                (2 + (rng.draw() % 7) as u32, 8)
            } else {
                (1, [1, 2, 4][(rng.draw() % 3) as usize])
            };
            let spec = JobSpec {
                replicas,
                gpus_per_replica: gpus,
                cpu_milli_per_replica: 1000,
                memory_mib_per_replica: 1024,
                duration_s: Some(rng.exp(mean_duration).max(60.0) as i64),
                ..JobSpec::new("t", &format!("j{i}"), JobKind::Training)
            };
            (t as i64, spec, gang)
        })
        .collect()
}

fn run(a: &Args, topology: Option<TopologySpec>) -> serde_json::Value {
    let mut world = World::new(catalog(a), WorldConfig::default()).expect("world");
    let label_of: HashMap<String, (String, String)> = world
        .nodes()
        .iter()
        .map(|n| {
            let get = |k: &str| {
                n.labels
                    .iter()
                    .find(|(key, _)| key == k)
                    .map(|(_, v)| v.clone())
                    .unwrap_or_default()
            };
            (n.name.clone(), (get(RACK_LABEL), get(BLOCK_LABEL)))
        })
        .collect();
    let total_milli = a.nodes as f64 * 8000.0;
    let mut gangs = Vec::new();
    let mut ids = Vec::new();
    let (mut alloc_sum, mut samples) = (0.0, 0u64);
    let jobs = stream(a);
    let last_arrival = jobs.last().map_or(0, |j| j.0);
    let mut next_sample = 0;
    for (at, mut spec, gang) in jobs {
        while next_sample <= at {
            world.advance_to(next_sample);
            alloc_sum += world.allocated_milli(0) as f64 / total_milli;
            samples += 1;
            next_sample += 60;
        }
        world.advance_to(at);
        if gang {
            spec.topology = topology;
        }
        let id = world.submit(spec).expect("a valid job");
        ids.push(id);
        if gang {
            gangs.push(id);
        }
    }
    while let Some(t) = world.next_event_s() {
        world.advance_to(t);
    }
    let now = world.now_s();
    let (mut in_rack, mut in_block, mut gang_wait, mut started) = (0, 0, 0i64, 0);
    for &id in &gangs {
        let j = world.job(id).expect("kept");
        let Some(p) = &j.placement else { continue };
        started += 1;
        gang_wait += j.wait_s(now);
        let racks: BTreeSet<&str> = p
            .replicas
            .iter()
            .map(|r| label_of[&r.node].0.as_str())
            .collect();
        let blocks: BTreeSet<&str> = p
            .replicas
            .iter()
            .map(|r| label_of[&r.node].1.as_str())
            .collect();
        in_rack += (racks.len() == 1) as usize;
        in_block += (blocks.len() == 1) as usize;
    }
    let all_wait: i64 = ids
        .iter()
        .map(|&id| world.job(id).expect("kept").wait_s(now))
        .sum();
    let unfinished = ids
        .iter()
        .filter(|&&id| world.job(id).expect("kept").phase != Phase::Succeeded)
        .count();
    let share = |n: usize| n as f64 / started.max(1) as f64;
    json!({
        "gangs": gangs.len(),
        "gangs_started": started,
        "gangs_within_one_rack": share(in_rack),
        "gangs_within_one_block": share(in_block),
        "mean_gpu_allocation_while_arriving": alloc_sum / samples.max(1) as f64,
        "mean_gang_wait_s": gang_wait as f64 / started.max(1) as f64,
        "mean_wait_s": all_wait as f64 / ids.len().max(1) as f64,
        "makespan_s": now,
        "last_arrival_s": last_arrival,
        "unfinished": unfinished,
    })
}

fn main() {
    let a = args();
    let modes = [
        ("blind", None),
        (
            "preferred_rack",
            Some(TopologySpec {
                required: None,
                preferred: Some(Level::Rack),
            }),
        ),
        (
            "required_rack",
            Some(TopologySpec {
                required: Some(Level::Rack),
                preferred: None,
            }),
        ),
    ];
    let mut out = serde_json::Map::new();
    for (name, t) in modes {
        out.insert(name.into(), run(&a, t));
    }
    let out = json!({
        "nodes": a.nodes,
        "nodes_per_rack": a.per_rack,
        "racks_per_block": 4,
        "jobs": a.jobs,
        "load": a.load,
        "seed": a.seed,
        "modes": out,
    });
    println!("{}", serde_json::to_string_pretty(&out).expect("json"));
}

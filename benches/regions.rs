//! Cost of region choice against a whole scheduling decision.
//!
//! Over the first 1,000 jobs of the shipped workload (default catalog):
//! - `rank_only`: region choice alone (filters, cost model, score, order);
//! - `scheduler`: the jobs submitted to the simulated cluster, each one
//!   planning pass of the controller's scheduler (quota, fair share, region
//!   choice, the packing band ordered by fit, the gang placed and launched)
//!   — the code path `zhisuan sim`, the demo and the controller run;
//! - `scheduler_strict`: the same in strict score order (`pack_band: 0`);
//! - `flat_engine`: one engine over all the catalog's nodes, no regions, no
//!   scheduler (placement alone).
//!
//! Run: `cargo bench --bench regions`; per-decision time = reported time / 1000.
//! Region choice's share of a decision = rank_only / scheduler.

use criterion::{criterion_group, criterion_main, BatchSize, Criterion, Throughput};
use zhisuan::placement::{Cluster, Engine, Policy, Request};
use zhisuan::regions::explain::Explanation;
use zhisuan::regions::job::JobSpec;
use zhisuan::regions::nodes::node_specs;
use zhisuan::regions::plan::{InventoryIndex, RegionChooser};
use zhisuan::regions::{Catalog, RegionPolicy};
use zhisuan::sim::workload::{parse_workload, DEFAULT_WORKLOAD_CSV, DEFAULT_WORKLOAD_PATH};
use zhisuan::sim::world::{World, WorldConfig};

const JOBS: usize = 1000;

/// One replica of a job as a placement request (whole GPUs or a share).
fn replica(spec: &JobSpec) -> Request {
    if spec.gpu_milli > 0 {
        let m = spec.gpu_milli as u16;
        Request::shared(spec.cpu_milli_per_replica, spec.memory_mib_per_replica, m)
    } else {
        let g = spec.gpus_per_replica as u8;
        Request::whole(spec.cpu_milli_per_replica, spec.memory_mib_per_replica, g)
    }
}

fn bench(c: &mut Criterion) {
    let catalog = Catalog::default_catalog();
    let workload = parse_workload(DEFAULT_WORKLOAD_CSV, DEFAULT_WORKLOAD_PATH, &catalog).unwrap();
    let jobs: Vec<(i64, JobSpec)> = workload.into_iter().take(JOBS).collect();
    let inventory = InventoryIndex::new(&catalog);
    let all_nodes: Vec<_> = (0..catalog.regions.len())
        .flat_map(|r| node_specs(&catalog, r).unwrap())
        .collect();

    let mut g = c.benchmark_group("regions");
    g.throughput(Throughput::Elements(jobs.len() as u64));
    g.sample_size(20);
    g.bench_function("rank_only", |b| {
        let resolved: Vec<_> = jobs
            .iter()
            .map(|(t, s)| (*t, s.resolve(&catalog).unwrap()))
            .collect();
        let mut chooser = RegionChooser::new(RegionPolicy::Green);
        let (mut expl, mut order) = (Explanation::default(), Vec::new());
        b.iter(|| {
            let mut ranked = 0;
            for (t, job) in &resolved {
                ranked += chooser.rank(&catalog, &inventory, job, *t, &mut expl, &mut order);
            }
            ranked
        })
    });
    // The default (packing band 0.3) and strict score order (pack_band 0):
    // the band's fit evaluations in the near-equal regions, side by side.
    let mut strict = catalog.clone();
    strict.weights.pack_band = 0.0;
    for (name, catalog) in [("scheduler", &catalog), ("scheduler_strict", &strict)] {
        g.bench_function(name, |b| {
            b.iter_batched(
                || World::new(catalog.clone(), WorldConfig::default()).unwrap(),
                |mut world| {
                    for (t, spec) in &jobs {
                        world.advance_to(*t);
                        world.submit(spec.clone()).unwrap();
                    }
                    world
                },
                BatchSize::LargeInput,
            )
        });
    }
    g.bench_function("flat_engine", |b| {
        b.iter_batched(
            || {
                Engine::new(
                    Cluster::from_specs(&all_nodes).unwrap(),
                    Policy::default(),
                    1,
                )
            },
            |mut engine| {
                let (mut placed, mut members) = (0, Vec::new());
                for (_, spec) in &jobs {
                    members.clear();
                    members.resize(spec.replicas as usize, replica(spec));
                    placed += engine.place_gang(&members, None).is_ok() as usize;
                }
                (engine, placed)
            },
            BatchSize::LargeInput,
        )
    });
    g.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);

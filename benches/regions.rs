//! Cost of region choice against the placement engine's per-decision time.
//!
//! Over the first 1,000 jobs of the shipped workload (default catalog):
//! - `rank_only`: region choice alone (filters, cost model, score, order);
//! - `two_level`: region choice + the region's engine placing (and allocating) the gang
//!   (with the arrival counted for the engines' shapes, as the world does), the
//!   packing band first ordered by each near-equal region's fit;
//! - `two_level_strict`: the same in strict score order (`pack_band: 0`);
//! - `flat_engine`: one engine over all the catalog's nodes, no regions.
//!
//! Run: `cargo bench --bench regions`; per-decision time = reported time / 1000.
//! Region choice's share of a two-level decision = rank_only / two_level.

use criterion::{criterion_group, criterion_main, BatchSize, Criterion, Throughput};
use zhisuan::placement::{Cluster, Engine, Policy};
use zhisuan::regions::engines::{node_specs, replica_request, RegionEngines, ReplicaShape};
use zhisuan::regions::plan::{
    Explanation, InventoryIndex, NoQuota, RegionChooser, RegionPolicy, ResolvedJob,
};
use zhisuan::regions::Catalog;
use zhisuan::sim::regions::{parse_workload, DEFAULT_WORKLOAD_CSV, DEFAULT_WORKLOAD_PATH};

const JOBS: usize = 1000;

fn bench(c: &mut Criterion) {
    let catalog = Catalog::default_catalog();
    let workload = parse_workload(DEFAULT_WORKLOAD_CSV, DEFAULT_WORKLOAD_PATH, &catalog).unwrap();
    let jobs: Vec<(i64, String, ResolvedJob, ReplicaShape)> = workload
        .iter()
        .take(JOBS)
        .map(|(t, s)| {
            let shape = ReplicaShape {
                cpu_milli: s.cpu_milli_per_replica,
                memory_mib: s.memory_mib_per_replica,
            };
            (*t, s.tenant.clone(), s.resolve(&catalog).unwrap(), shape)
        })
        .collect();
    let inventory = InventoryIndex::new(&catalog);
    let all_nodes: Vec<_> = (0..catalog.regions.len())
        .flat_map(|r| node_specs(&catalog, r).unwrap())
        .collect();

    let mut g = c.benchmark_group("regions");
    g.throughput(Throughput::Elements(jobs.len() as u64));
    g.sample_size(20);
    g.bench_function("rank_only", |b| {
        let mut chooser = RegionChooser::new(RegionPolicy::Green);
        let (mut expl, mut order) = (Explanation::default(), Vec::new());
        b.iter(|| {
            let mut ranked = 0;
            for (t, tenant, job, _) in &jobs {
                ranked += chooser.rank(
                    &catalog, &inventory, tenant, job, *t, &NoQuota, &mut expl, &mut order,
                );
            }
            ranked
        })
    });
    // The default (packing band 0.3) and strict score order (pack_band 0):
    // the band's fit evaluations in the near-equal regions, side by side.
    let mut strict = catalog.clone();
    strict.weights.pack_band = 0.0;
    for (name, catalog) in [("two_level", &catalog), ("two_level_strict", &strict)] {
        g.bench_function(name, |b| {
            b.iter_batched(
                || RegionEngines::from_catalog(catalog, Policy::default(), 1).unwrap(),
                |mut engines| {
                    let mut chooser = RegionChooser::new(RegionPolicy::Green);
                    let (mut expl, mut order) = (Explanation::default(), Vec::new());
                    let mut placed = 0;
                    for (t, tenant, job, shape) in &jobs {
                        // As the world does: each job counted once for the shapes.
                        engines.observe_arrival(catalog, job, *shape);
                        chooser.rank(
                            catalog, &inventory, tenant, job, *t, &NoQuota, &mut expl, &mut order,
                        );
                        placed += engines
                            .place(catalog, job, *shape, &mut order, &mut expl)
                            .is_some() as usize;
                    }
                    (engines, placed)
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
                for (_, _, job, shape) in &jobs {
                    members.clear();
                    members.resize(job.replicas as usize, replica_request(job, *shape));
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

//! Placement decisions per second (issue #2 figures):
//! - `replay/<policy>`: one whole seed of the openb protocol on the 1213-node
//!   trace (throughput = placement decisions);
//! - `steady/<policy>/<nodes>`: a loaded cluster at steady state, each
//!   iteration one decision plus one release of the oldest pod, on the trace
//!   cluster and on a synthetic 10,000-node / 80,000-GPU cluster.
//!
//! Run: `cargo bench --bench placement` (one core is enough; criterion prints
//! elements/s = decisions/s).

use std::collections::VecDeque;
use std::hint::black_box;
use std::path::Path;

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use zhisuan::placement::{Cluster, Decision, Engine, NodeSpec, Policy, Request};
use zhisuan::sim::openb::TracePod;
use zhisuan::sim::replay::{load, run_seed, tuned_workload};

fn trace() -> (Cluster, Vec<TracePod>) {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    load(
        &root.join("data/openb/openb_node_list_gpu_node.csv"),
        &root.join("data/openb/openb_pod_list_default.csv"),
    )
    .expect("shipped openb trace")
}

/// `nodes` 8-GPU nodes of the trace's models, CPU and memory as in openb.
fn synthetic(nodes: usize) -> Cluster {
    let kinds = [
        ("G2", 96_000, 393_216),
        ("T4", 96_000, 393_216),
        ("G3", 128_000, 786_432),
        ("V100M32", 96_000, 786_432),
    ];
    let specs: Vec<NodeSpec> = (0..nodes)
        .map(|i| {
            let (model, cpu, mem) = kinds[i % kinds.len()];
            NodeSpec {
                name: format!("syn-{i}"),
                cpu_milli: cpu,
                memory_mib: mem,
                gpus: 8,
                model: model.into(),
                labels: vec![],
            }
        })
        .collect();
    Cluster::from_specs(&specs).unwrap()
}

fn replay(c: &mut Criterion) {
    let (cluster, pods) = trace();
    let mut g = c.benchmark_group("replay");
    g.sample_size(10);
    for policy in [Policy::BestFit, Policy::Fgd, Policy::Zhisuan] {
        let n = run_seed(&cluster, &pods, policy, 1, 1.3).decisions as u64;
        g.throughput(Throughput::Elements(n));
        g.bench_function(policy.name(), |b| {
            b.iter(|| black_box(run_seed(&cluster, &pods, policy, 1, 1.3)))
        });
    }
    g.finish();
}

/// A loaded engine: filled to `load` of GPU capacity with trace pods.
fn loaded(
    cluster: Cluster,
    arrivals: &[Request],
    policy: Policy,
    load: f64,
) -> (Engine, VecDeque<Decision>) {
    let capacity = cluster.total_gpus() as f64 * 1000.0;
    let mut engine = Engine::new(cluster, policy, 1);
    let mut live = VecDeque::new();
    for r in arrivals.iter().cycle().take(arrivals.len() * 20) {
        if engine.cluster().gpu_milli_allocated() as f64 >= load * capacity {
            break;
        }
        if let Some(d) = engine.schedule(r) {
            live.push_back(d);
        }
    }
    (engine, live)
}

fn steady(c: &mut Criterion) {
    let (trace_cluster, pods) = trace();
    let arrivals: Vec<Request> = tuned_workload(&pods, 6_212_000.0, 1, 1.3)
        .into_iter()
        .cloned()
        .collect();
    let mut g = c.benchmark_group("steady");
    g.throughput(Throughput::Elements(1));
    for (label, cluster) in [("1213", trace_cluster), ("10000", synthetic(10_000))] {
        for policy in [Policy::Fgd, Policy::Zhisuan] {
            let (engine, live) = loaded(cluster.clone(), &arrivals, policy, 0.7);
            let mut state = (engine, live, 0usize);
            g.bench_function(format!("{}/{label}", policy.name()), |b| {
                b.iter(|| {
                    let (engine, live, next) = &mut state;
                    let r = &arrivals[*next % arrivals.len()];
                    *next += 1;
                    if let Some(d) = engine.schedule(r) {
                        live.push_back(d);
                    }
                    if let Some(old) = live.pop_front() {
                        engine.release(&old).unwrap();
                    }
                })
            });
        }
    }
    g.finish();
}

criterion_group!(benches, replay, steady);
criterion_main!(benches);

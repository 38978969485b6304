//! Operator throughput against the in-process API-server stand-in with
//! simulated nodes (8 GPUs each, 4 regions, default 1,000), a quota tree
//! (one parent, four tenants), the real controller and a real
//! `kube::Client` over HTTP on loopback. Prints one JSON object:
//! - `bindings_per_s`: the median over `--rounds` rounds (default 3) of N
//!   single-GPU TrainingJobs created at once (32 concurrent clients): pods
//!   bound per second from the first create until every pod is bound; each
//!   round's figure in `rounds_per_s`;
//! - `gang_s`: one gang of `--gang` replicas × 8 GPUs (default 512 from
//!   4,096 nodes up, else 64), seconds from create until all its pods are
//!   bound;
//! - `pass_ms`: with `--pending` more 8-GPU jobs than the cluster can still
//!   hold waiting (default 4 per node: 20,000 at 5,000 nodes), the mean
//!   milliseconds of each step of the controller's scheduling pass
//!   (`zhisuan_controller_pass_step_seconds`) over the passes of a 3 s
//!   window once it settled, with how many jobs were waiting then.
//!
//! By default 4 ComputeRegions select the nodes, so every job goes through
//! the region planner; `--no-regions` places by the node label alone.
//!
//! Run: `cargo bench --bench operator -- --nodes 5000` (`--jobs N` per
//! round, default one per node; `--rounds`, `--gang`, `--pending`).

#[path = "../tests/support/apiserver.rs"]
mod apiserver;

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use apiserver::ApiServer;
use futures::StreamExt;
use k8s_openapi::api::core::v1::Node;
use kube::api::{Api, ApiResource, DynamicObject, PostParams};
use serde_json::{json, Value};
use zhisuan::operator::controller::{Controller, ControllerConfig};
use zhisuan::operator::crd::{ComputeRegion, TenantQuota, TrainingJob};
use zhisuan::operator::leader::LeaseTiming;

fn bound_pods(server: &ApiServer, prefix: &str) -> usize {
    server.count("v1/pods", |p| {
        p.pointer("/metadata/name")
            .and_then(Value::as_str)
            .is_some_and(|n| n.starts_with(prefix))
            && p.pointer("/spec/nodeName")
                .and_then(Value::as_str)
                .is_some_and(|n| !n.is_empty())
    })
}

/// Waits until the stand-in has made `want` more bindings than `before`
/// (an O(1) counter, polled every millisecond, so the wait steals no CPU
/// from what it measures), then checks the pods themselves once.
async fn wait_bound(
    server: &ApiServer,
    prefix: &str,
    before: u64,
    want: usize,
    limit: Duration,
) -> Option<Duration> {
    let t0 = Instant::now();
    while t0.elapsed() < limit {
        if server.bindings() >= before + want as u64 {
            let elapsed = t0.elapsed();
            let bound = bound_pods(server, prefix);
            assert_eq!(
                bound, want,
                "bindings counted but {bound} {prefix}* pods bound"
            );
            return Some(elapsed);
        }
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    None
}

/// The quota tree's leaves: every job belongs to one of them.
const TENANTS: [&str; 4] = ["team-a", "team-b", "team-c", "team-d"];

fn job(name: &str, tenant: &str, replicas: u32, gpus: u32) -> DynamicObject {
    serde_json::from_value(json!({
        "apiVersion": "zhisuan.io/v1alpha1", "kind": "TrainingJob",
        "metadata": {"name": name, "namespace": "bench"},
        "spec": {"tenant": tenant, "replicas": replicas, "gpusPerReplica": gpus,
                 "template": {"spec": {"containers": [{"name": "c", "image": "x",
                     "resources": {"requests": {"cpu": "1", "memory": "1Gi"}}}]}}}
    }))
    .unwrap()
}

/// What one run measures.
struct Args {
    nodes: usize,
    jobs: usize,
    rounds: usize,
    gang: u32,
    pending: usize,
    compute_regions: bool,
}

/// Creates `n` jobs named `<prefix>-<i>` from 32 concurrent clients.
async fn create_jobs(
    tj: &Api<DynamicObject>,
    prefix: &str,
    n: usize,
    replicas: u32,
    gpus: u32,
) -> Duration {
    let t0 = Instant::now();
    futures::stream::iter(0..n)
        .map(|i| {
            let tj = tj.clone();
            async move {
                let obj = job(
                    &format!("{prefix}-{i:05}"),
                    TENANTS[i % TENANTS.len()],
                    replicas,
                    gpus,
                );
                tj.create(&PostParams::default(), &obj).await.unwrap();
            }
        })
        .buffer_unordered(32)
        .collect::<Vec<()>>()
        .await;
    t0.elapsed()
}

async fn create_cluster(client: &kube::Client, args: &Args) {
    let nodes: Api<Node> = Api::all(client.clone());
    futures::stream::iter(0..args.nodes)
        .map(|i| {
            let nodes = nodes.clone();
            async move {
                let region = ["beijing", "shanghai", "ningxia", "guizhou"][i % 4];
                let node: Node = serde_json::from_value(json!({
                    "metadata": {"name": format!("node-{i:05}"), "labels": {
                        "zhisuan.io/region": region, "zhisuan.io/gpu-model": "H100",
                        "zhisuan.io/gpu-count": "8", "zhisuan.io/accelerator-vendor": "nvidia"}},
                    "status": {"allocatable": {"cpu": "128", "memory": "1024Gi"}}
                }))
                .unwrap();
                nodes.create(&PostParams::default(), &node).await.unwrap();
            }
        })
        .buffer_unordered(32)
        .collect::<Vec<()>>()
        .await;
    if args.compute_regions {
        // The region planner ranks the 4 regions for every job (green policy).
        let cr: Api<DynamicObject> =
            Api::all_with(client.clone(), &ApiResource::erase::<ComputeRegion>(&()));
        let regions = [
            ("beijing", "east", 0.2),
            ("shanghai", "east", 0.3),
            ("ningxia", "west", 0.7),
            ("guizhou", "west", 0.6),
        ];
        for (name, side, green) in regions {
            let obj: DynamicObject = serde_json::from_value(json!({
                "apiVersion": "zhisuan.io/v1alpha1", "kind": "ComputeRegion",
                "metadata": {"name": name},
                "spec": {"hub": name, "side": side, "pue": 1.25, "greenShare": green,
                         "electricityFenPerKwh": 45, "gridKgCo2PerKwh": 0.57,
                         "nodeSelector": {"zhisuan.io/region": name}}
            }))
            .unwrap();
            cr.create(&PostParams::default(), &obj).await.unwrap();
        }
    }
    // A quota tree: the organisation (no limit) over four teams, each
    // guaranteed a quarter of the GPUs (fair-share weights), borrowing the rest.
    let tq: Api<DynamicObject> =
        Api::all_with(client.clone(), &ApiResource::erase::<TenantQuota>(&()));
    let quarter = (args.nodes * 8 / 4) as i64;
    let tree = std::iter::once(json!({"tenant": "org", "gpus": {}})).chain(
        TENANTS
            .iter()
            .map(|t| json!({"tenant": t, "parent": "org", "gpus": {}, "guaranteedGpus": quarter})),
    );
    for spec in tree {
        let name = spec["tenant"].as_str().unwrap().to_string();
        let quota: DynamicObject = serde_json::from_value(json!({
            "apiVersion": "zhisuan.io/v1alpha1", "kind": "TenantQuota",
            "metadata": {"name": name}, "spec": spec
        }))
        .unwrap();
        tq.create(&PostParams::default(), &quota).await.unwrap();
    }
}

/// Sum and count of each pass step's histogram.
fn step_times(registry: &prometheus::Registry) -> BTreeMap<String, (f64, u64)> {
    let mut out = BTreeMap::new();
    for family in registry.gather() {
        if family.name() != "zhisuan_controller_pass_step_seconds" {
            continue;
        }
        for m in family.get_metric() {
            let step = m
                .get_label()
                .iter()
                .find(|l| l.name() == "step")
                .map(|l| l.value().to_string())
                .unwrap_or_default();
            let h = m.get_histogram();
            out.insert(step, (h.get_sample_sum(), h.get_sample_count()));
        }
    }
    out
}

/// Jobs waiting, as the controller's last pass counted them.
fn waiting(registry: &prometheus::Registry) -> f64 {
    registry
        .gather()
        .iter()
        .filter(|f| f.name() == "zhisuan_pending_jobs")
        .flat_map(|f| f.get_metric().iter().map(|m| m.get_gauge().value()))
        .sum()
}

/// Waits until the server saw no write for `quiet` (the controller settled).
async fn settle(server: &ApiServer, quiet: Duration, limit: Duration) {
    // Lease renewals go on; every other write is the controller's work.
    let writes = || {
        server
            .requests()
            .iter()
            .filter(|(k, _)| {
                ["patch ", "create ", "bind ", "update "]
                    .iter()
                    .any(|v| k.starts_with(v))
                    && !k.contains("leases")
            })
            .map(|(_, n)| n)
            .sum::<u64>()
    };
    let t0 = Instant::now();
    let mut last = writes();
    let mut since = Instant::now();
    while t0.elapsed() < limit {
        tokio::time::sleep(Duration::from_millis(100)).await;
        let now = writes();
        if now != last {
            last = now;
            since = Instant::now();
        } else if since.elapsed() >= quiet {
            return;
        }
    }
}

/// CPU seconds (user + system) used so far by this process's threads
/// whose name starts with each prefix (`/proc/self/task/*/stat`).
fn cpu_by_thread(prefixes: &[&str]) -> Vec<f64> {
    let tick = 100.0; // USER_HZ on Linux
    let mut out = vec![0.0; prefixes.len()];
    let Ok(tasks) = std::fs::read_dir("/proc/self/task") else {
        return out;
    };
    for t in tasks.flatten() {
        let comm = std::fs::read_to_string(t.path().join("comm")).unwrap_or_default();
        let stat = std::fs::read_to_string(t.path().join("stat")).unwrap_or_default();
        // Fields after the parenthesised name: state is field 3, utime 14, stime 15.
        let Some(rest) = stat.rsplit_once(')').map(|(_, r)| r) else {
            continue;
        };
        let f: Vec<&str> = rest.split_whitespace().collect();
        let ticks: f64 = [11, 12]
            .iter()
            .filter_map(|&i| f.get(i).and_then(|v| v.parse::<f64>().ok()))
            .sum();
        if let Some(k) = prefixes.iter().position(|p| comm.trim().starts_with(p)) {
            out[k] += ticks / tick;
        }
    }
    out
}

/// The three parts of a run, each on its own threads so their CPU time is
/// told apart: the API-server stand-in, the controller (with its client) and
/// the bench's clients.
const PARTS: [&str; 3] = ["apiserver", "controller", "clients"];

fn runtime(name: &'static str, threads: usize) -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(threads)
        .thread_name(name)
        .enable_all()
        .build()
        .unwrap()
}

async fn run(args: Args) -> Value {
    let server_rt = runtime(PARTS[0], 2);
    let controller_rt = runtime(PARTS[1], 2);
    let server = server_rt.spawn(ApiServer::start()).await.unwrap();
    let client = server.client();
    create_cluster(&client, &args).await;

    let registry = prometheus::Registry::new();
    let config = ControllerConfig {
        identity: "bench".into(),
        // The bench's jobs share one namespace across tenants.
        namespace_tenancy: zhisuan::operator::tenancy::NamespaceTenancy::Optional,
        timing: LeaseTiming {
            lease_duration: Duration::from_secs(5),
            renew_deadline: Duration::from_secs(3),
            retry_period: Duration::from_millis(500),
        },
        resync: Duration::from_millis(200),
        parallelism: 64,
        ..ControllerConfig::default()
    };
    // The controller's client lives on the controller's threads.
    let url = server.url();
    let controller_client = controller_rt
        .spawn(
            async move { kube::Client::try_from(kube::Config::new(url.parse().unwrap())).unwrap() },
        )
        .await
        .unwrap();
    let controller = Controller::new(controller_client, config, &registry).unwrap();
    let leadership = controller.leadership();
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let task = controller_rt.spawn(controller.run(stop_rx));
    while !leadership.is_leader() {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }

    let tj: Api<DynamicObject> = Api::namespaced_with(
        client.clone(),
        "bench",
        &ApiResource::erase::<TrainingJob>(&()),
    );
    // Rounds of single-GPU jobs: one binding each.
    let mut rounds = Vec::new();
    let mut create_s = Vec::new();
    let cpu0 = cpu_by_thread(&PARTS);
    let binds0 = server.bindings();
    for round in 0..args.rounds {
        let prefix = format!("single{round}");
        let before = server.bindings();
        let t0 = Instant::now();
        create_s.push(
            create_jobs(&tj, &prefix, args.jobs, 1, 1)
                .await
                .as_secs_f64(),
        );
        let bound = wait_bound(
            &server,
            &prefix,
            before,
            args.jobs,
            Duration::from_secs(300),
        )
        .await;
        rounds.push(bound.map(|_| args.jobs as f64 / t0.elapsed().as_secs_f64()));
    }
    let cpu: Vec<f64> = cpu_by_thread(&PARTS)
        .iter()
        .zip(&cpu0)
        .map(|(a, b)| a - b)
        .collect();
    let round_binds = (server.bindings() - binds0) as f64;
    let mut sorted: Vec<f64> = rounds.iter().flatten().copied().collect();
    sorted.sort_by(f64::total_cmp);
    let median =
        (sorted.len() == args.rounds && !sorted.is_empty()).then(|| sorted[sorted.len() / 2]);

    // One gang of whole nodes.
    let before = server.bindings();
    let t1 = Instant::now();
    tj.create(
        &PostParams::default(),
        &job("gang", TENANTS[0], args.gang, 8),
    )
    .await
    .unwrap();
    let gang = wait_bound(
        &server,
        "gang-",
        before,
        args.gang as usize,
        Duration::from_secs(120),
    )
    .await
    .map(|_| t1.elapsed().as_secs_f64());

    // More whole-node jobs than fit: what still fits starts, `pending` wait.
    let used_nodes = (args.rounds * args.jobs).div_ceil(8) + args.gang as usize;
    let fit = args.nodes.saturating_sub(used_nodes);
    let t2 = Instant::now();
    create_jobs(&tj, "wait", args.pending + fit, 1, 8).await;
    settle(&server, Duration::from_secs(2), Duration::from_secs(120)).await;
    let settled_s = t2.elapsed().as_secs_f64();
    let before = step_times(&registry);
    tokio::time::sleep(Duration::from_secs(3)).await;
    let after = step_times(&registry);
    let pass_ms: BTreeMap<String, Option<f64>> = after
        .iter()
        .map(|(step, (sum, n))| {
            let (sum0, n0) = before.get(step).copied().unwrap_or_default();
            let mean = (n > &n0).then(|| (sum - sum0) / (n - n0) as f64 * 1000.0);
            (step.clone(), mean)
        })
        .collect();
    let passes = after.get("plan").map_or(0, |a| a.1) - before.get("plan").map_or(0, |b| b.1);
    let waiting = waiting(&registry);

    let _ = stop_tx.send(true);
    let _ = task.await;
    drop(server);
    server_rt.shutdown_background();
    controller_rt.shutdown_background();
    json!({
        "nodes": args.nodes,
        "gpus": args.nodes * 8,
        "single_jobs_per_round": args.jobs,
        "compute_regions": args.compute_regions,
        "create_s": create_s,
        "rounds_per_s": rounds,
        "bindings_per_s": median,
        "rounds_cpu_s": PARTS.iter().zip(&cpu).map(|(p, c)| (p.to_string(), json!(c))).collect::<serde_json::Map<_, _>>(),
        "controller_binds_per_cpu_s": (cpu[1] > 0.0).then(|| round_binds / cpu[1]),
        "gang_replicas": args.gang,
        "gang_s": gang,
        "waiting_jobs": waiting,
        "workloads": args.rounds * args.jobs + 1 + args.pending + fit,
        "settle_s": settled_s,
        "window_passes": passes,
        "pass_ms": pass_ms,
        "target": {"bindings_per_s": 2000, "gang_s": 1.0, "plan_ms": 100},
    })
}

fn flag<T: std::str::FromStr>(args: &[String], name: &str) -> Option<T> {
    let i = args.iter().position(|a| a == name)?;
    args.get(i + 1).and_then(|s| s.parse().ok())
}

fn main() {
    let argv: Vec<String> = std::env::args().collect();
    let nodes: usize = flag(&argv, "--nodes").unwrap_or(1000);
    let mut args = Args {
        nodes,
        jobs: flag(&argv, "--jobs").unwrap_or(nodes),
        rounds: flag(&argv, "--rounds").unwrap_or(3).max(1),
        gang: flag(&argv, "--gang").unwrap_or(if nodes >= 4096 { 512 } else { 64 }),
        pending: flag(&argv, "--pending").unwrap_or(4 * nodes),
        compute_regions: !argv.iter().any(|a| a == "--no-regions"),
    };
    // `cargo test --benches` runs benches with `--test`-like flags: keep it quick there.
    if argv.iter().any(|a| a == "--test") {
        args = Args {
            nodes: 100,
            jobs: 20,
            rounds: 1,
            gang: 8,
            pending: 50,
            ..args
        };
    }
    let result = runtime(PARTS[2], 2).block_on(run(args));
    println!("{}", serde_json::to_string_pretty(&result).unwrap());
}

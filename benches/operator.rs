//! Operator throughput against the in-process API-server stand-in with
//! 1,000 simulated nodes (8 GPUs each, 4 regions), the real controller and a
//! real `kube::Client` over HTTP on loopback. Prints one JSON object:
//! - `bindings_per_s`: N single-GPU TrainingJobs created at once; pods bound
//!   per second from the first create until every pod is bound;
//! - `gang64_s`: one gang of 64 × 8 GPUs, seconds from create until all 64
//!   pods are bound.
//!
//! By default 4 ComputeRegions select the nodes, so every job goes through
//! the region planner; `--no-regions` places by the node label alone.
//!
//! Run: `cargo bench --bench operator` (add `-- --jobs 2000` to change N).

#[path = "../tests/support/apiserver.rs"]
mod apiserver;

use std::time::{Duration, Instant};

use apiserver::ApiServer;
use futures::StreamExt;
use k8s_openapi::api::core::v1::Node;
use kube::api::{Api, ApiResource, DynamicObject, PostParams};
use serde_json::{json, Value};
use zhisuan::operator::controller::{Controller, ControllerConfig};
use zhisuan::operator::crd::{ComputeRegion, TenantQuota, TrainingJob};
use zhisuan::operator::leader::LeaseTiming;

const NODES: usize = 1000;

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

fn job(name: &str, replicas: u32, gpus: u32) -> DynamicObject {
    serde_json::from_value(json!({
        "apiVersion": "zhisuan.io/v1alpha1", "kind": "TrainingJob",
        "metadata": {"name": name, "namespace": "bench"},
        "spec": {"tenant": "bench", "replicas": replicas, "gpusPerReplica": gpus,
                 "template": {"spec": {"containers": [{"name": "c", "image": "x",
                     "resources": {"requests": {"cpu": "1", "memory": "1Gi"}}}]}}}
    }))
    .unwrap()
}

async fn run(jobs: usize, compute_regions: bool) -> Value {
    let server = ApiServer::start().await;
    let client = server.client();
    let nodes: Api<Node> = Api::all(client.clone());
    for i in 0..NODES {
        let region = ["beijing", "shanghai", "ningxia", "guizhou"][i % 4];
        let node: Node = serde_json::from_value(json!({
            "metadata": {"name": format!("node-{i:04}"), "labels": {
                "zhisuan.io/region": region, "zhisuan.io/gpu-model": "H100",
                "zhisuan.io/gpu-count": "8", "zhisuan.io/accelerator-vendor": "nvidia"}},
            "status": {"allocatable": {"cpu": "128", "memory": "1024Gi"}}
        }))
        .unwrap();
        nodes.create(&PostParams::default(), &node).await.unwrap();
    }
    if compute_regions {
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
    let tq: Api<DynamicObject> =
        Api::all_with(client.clone(), &ApiResource::erase::<TenantQuota>(&()));
    let quota: DynamicObject = serde_json::from_value(json!({
        "apiVersion": "zhisuan.io/v1alpha1", "kind": "TenantQuota",
        "metadata": {"name": "bench"}, "spec": {"tenant": "bench", "gpus": {}}
    }))
    .unwrap();
    tq.create(&PostParams::default(), &quota).await.unwrap();

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
    let controller = Controller::new(client.clone(), config, &registry).unwrap();
    let leadership = controller.leadership();
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let task = tokio::spawn(controller.run(stop_rx));
    while !leadership.is_leader() {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }

    let tj: Api<DynamicObject> = Api::namespaced_with(
        client.clone(),
        "bench",
        &ApiResource::erase::<TrainingJob>(&()),
    );
    // Single-GPU jobs: one binding each.
    let t0 = Instant::now();
    // Created by 32 concurrent clients, as many users submitting at once.
    futures::stream::iter(0..jobs)
        .map(|i| {
            let tj = tj.clone();
            async move {
                let obj = job(&format!("single-{i:05}"), 1, 1);
                tj.create(&PostParams::default(), &obj).await.unwrap();
            }
        })
        .buffer_unordered(32)
        .collect::<Vec<()>>()
        .await;
    let created = t0.elapsed();
    let singles = wait_bound(&server, "single-", 0, jobs, Duration::from_secs(300)).await;
    let singles_total = singles.map(|_| t0.elapsed());

    // A gang of 64 × 8 GPUs (64 whole nodes' worth).
    let before = server.bindings();
    let t1 = Instant::now();
    tj.create(&PostParams::default(), &job("gang64", 64, 8))
        .await
        .unwrap();
    let gang = wait_bound(&server, "gang64-", before, 64, Duration::from_secs(120)).await;

    let _ = stop_tx.send(true);
    let _ = task.await;
    json!({
        "nodes": NODES,
        "gpus": NODES * 8,
        "single_jobs": jobs,
        "compute_regions": compute_regions,
        "create_s": created.as_secs_f64(),
        "bindings_s": singles_total.map(|d| d.as_secs_f64()),
        "bindings_per_s": singles_total.map(|d| jobs as f64 / d.as_secs_f64()),
        "gang64_s": gang.map(|_| t1.elapsed().as_secs_f64()),
        "target": {"bindings_per_s": 500, "gang64_s": 1.0},
    })
}

fn main() {
    let mut jobs = 1000usize;
    let args: Vec<String> = std::env::args().collect();
    if let Some(i) = args.iter().position(|a| a == "--jobs") {
        jobs = args.get(i + 1).and_then(|s| s.parse().ok()).unwrap_or(jobs);
    }
    // `cargo test --benches` runs benches with `--test`-like flags: keep it quick there.
    if args.iter().any(|a| a == "--test") {
        jobs = 20;
    }
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    let compute_regions = !args.iter().any(|a| a == "--no-regions");
    let result = runtime.block_on(run(jobs, compute_regions));
    println!("{}", serde_json::to_string_pretty(&result).unwrap());
}

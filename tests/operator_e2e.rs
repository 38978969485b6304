//! The operator end to end: the real controller and a real `kube::Client`
//! against the in-process API-server stand-in (`support/apiserver.rs`).

#[path = "support/apiserver.rs"]
mod apiserver;
#[path = "support/cluster.rs"]
mod cluster;

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use apiserver::ApiServer;
use cluster::{add_labelled_node, add_node, controller_config, eventually};
use futures::StreamExt;
use k8s_openapi::api::core::v1::{Binding, Node, ObjectReference, Pod, Secret};
use kube::api::{Api, ApiResource, DynamicObject, ObjectMeta, Patch, PatchParams, PostParams};
use kube::runtime::watcher;
use kube::ResourceExt;
use serde_json::{json, Value};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use zhisuan::ledger::{Ledger, Month};
use zhisuan::operator::controller::{Controller, ControllerConfig};
use zhisuan::operator::crd::{ComputeRegion, InferenceService, TenantQuota, TrainingJob};
use zhisuan::operator::leader::{Leadership, LeaseTiming};
use zhisuan::operator::snapshot::MonthToDate;
use zhisuan::operator::tenancy::NamespaceTenancy;
use zhisuan::operator::usage::FixedUsage;
use zhisuan::telemetry::tokens::TokenScrapeConfig;

fn pod(name: &str) -> Pod {
    serde_json::from_value(json!({
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": name, "labels": {"app": "x"}},
        "spec": {"containers": [{"name": "c", "image": "busybox"}]}
    }))
    .unwrap()
}

/// The stand-in keeps the API-server semantics a controller relies on.
#[tokio::test]
async fn stand_in_keeps_resource_versions_bindings_and_watches() {
    let server = ApiServer::start().await;
    let client = server.client();
    let pods: Api<Pod> = Api::namespaced(client.clone(), "default");
    let created = pods
        .create(&PostParams::default(), &pod("a"))
        .await
        .unwrap();
    let rv = created.metadata.resource_version.clone().unwrap();

    // Duplicate create: 409 AlreadyExists.
    let dup = pods
        .create(&PostParams::default(), &pod("a"))
        .await
        .unwrap_err();
    assert!(
        matches!(dup, kube::Error::Api(ref s) if s.code == 409),
        "{dup:?}"
    );

    // Stale write: 409 Conflict.
    let mut fresh = created.clone();
    fresh
        .metadata
        .labels
        .get_or_insert_default()
        .insert("v".into(), "2".into());
    pods.replace("a", &PostParams::default(), &fresh)
        .await
        .unwrap();
    let stale = pods
        .replace("a", &PostParams::default(), &fresh)
        .await
        .unwrap_err();
    assert!(
        matches!(stale, kube::Error::Api(ref s) if s.code == 409),
        "{stale:?}"
    );

    // Binding sets nodeName once and copies annotations.
    let binding = Binding {
        metadata: ObjectMeta {
            name: Some("a".into()),
            annotations: Some([("zhisuan.io/gpu-devices".to_string(), "0,1".to_string())].into()),
            ..Default::default()
        },
        target: ObjectReference {
            kind: Some("Node".into()),
            name: Some("n1".into()),
            ..Default::default()
        },
    };
    let body = serde_json::to_vec(&binding).unwrap();
    let req = http_post(
        &server,
        "/api/v1/namespaces/default/pods/a/binding",
        body.clone(),
    )
    .await;
    assert_eq!(req, 201);
    let bound = pods.get("a").await.unwrap();
    assert_eq!(bound.spec.unwrap().node_name.as_deref(), Some("n1"));
    assert_eq!(
        bound.metadata.annotations.unwrap()["zhisuan.io/gpu-devices"],
        "0,1"
    );
    assert_eq!(
        http_post(&server, "/api/v1/namespaces/default/pods/a/binding", body).await,
        409
    );

    // Status subresource: the main resource cannot change status, /status can.
    let patch = json!({"status": {"phase": "Running"}});
    let p = pods
        .patch("a", &PatchParams::default(), &Patch::Merge(&patch))
        .await
        .unwrap();
    assert_eq!(p.status.unwrap().phase, None);
    let p = pods
        .patch_status("a", &PatchParams::default(), &Patch::Merge(&patch))
        .await
        .unwrap();
    assert_eq!(p.status.unwrap().phase.as_deref(), Some("Running"));

    // Finalizers hold a delete until removed.
    let fin = json!({"metadata": {"finalizers": ["x/y"]}});
    pods.patch("a", &PatchParams::default(), &Patch::Merge(&fin))
        .await
        .unwrap();
    pods.delete("a", &Default::default()).await.unwrap();
    let held = pods.get("a").await.unwrap();
    assert!(held.metadata.deletion_timestamp.is_some());
    let unfin = json!({"metadata": {"finalizers": null}});
    pods.patch("a", &PatchParams::default(), &Patch::Merge(&unfin))
        .await
        .unwrap();
    assert!(pods.get_opt("a").await.unwrap().is_none());

    // A watch from an old version replays what happened since; a compacted
    // history answers 410 and the kube watcher relists by itself.
    let nodes: Api<Node> = Api::all(client.clone());
    let (tx, mut names) = tokio::sync::mpsc::unbounded_channel();
    let watch_nodes = nodes.clone();
    tokio::spawn(async move {
        let mut stream = std::pin::pin!(watcher(watch_nodes, watcher::Config::default()));
        while let Some(ev) = stream.next().await {
            if let Ok(watcher::Event::Apply(n) | watcher::Event::InitApply(n)) = ev {
                if tx.send(n.metadata.name.unwrap()).is_err() {
                    return;
                }
            }
        }
    });
    let node = |name: &str| -> Node {
        serde_json::from_value(json!({"metadata": {"name": name}})).unwrap()
    };
    nodes
        .create(&PostParams::default(), &node("n1"))
        .await
        .unwrap();
    assert_eq!(next_name(&mut names).await, "n1");
    wait_for(|| server.request_count("watch", "v1/nodes") >= 1).await;
    // Unrelated writes move the global version past the watcher's.
    pods.create(&PostParams::default(), &pod("b"))
        .await
        .unwrap();
    server.restart_watches();
    nodes
        .create(&PostParams::default(), &node("n2"))
        .await
        .unwrap();
    // The dropped watch resumes from a compacted version: 410, relist, watch again.
    while next_name(&mut names).await != "n2" {}
    assert!(server.request_count("watch", "v1/nodes") >= 2);
    assert!(server.request_count("list", "v1/nodes") >= 2);
    assert!(rv.parse::<u64>().unwrap() > 0);
}

/// A watch resumed from an old resourceVersion with a label selector is
/// sent the changes since that match it, and only those (the stand-in
/// keeps past changes as their lines and reads a kept line's labels again).
#[tokio::test]
async fn a_resumed_watch_replays_only_what_its_selector_matches() {
    let server = ApiServer::start().await;
    let pods: Api<Pod> = Api::namespaced(server.client(), "default");
    let labelled = |name: &str, team: &str| -> Pod {
        let mut p = pod(name);
        p.metadata.labels = Some([("team".to_string(), team.to_string())].into());
        p
    };
    let make = |p: Pod| {
        let pods = pods.clone();
        async move { pods.create(&PostParams::default(), &p).await.unwrap() }
    };
    let first = make(labelled("a1", "a")).await;
    let since = first.metadata.resource_version.unwrap();
    make(labelled("b1", "b")).await;
    make(labelled("a2", "a")).await;
    make(labelled("b2", "b")).await;
    let params = kube::api::WatchParams::default().labels("team=a");
    let mut events = pods.watch(&params, &since).await.unwrap().boxed();
    // The replay, then a live change as the marker that it has ended.
    assert_eq!(next_added(&mut events).await, "a2");
    make(labelled("b3", "b")).await;
    make(labelled("a3", "a")).await;
    assert_eq!(next_added(&mut events).await, "a3");
}

/// A change wakes only the watches of its own resource (the real API
/// server keeps a watch cache per resource): a nodes watch is never handed
/// the pods' changes, while a pods watch is handed each of them.
#[tokio::test]
async fn a_watch_is_handed_only_its_resources_changes() {
    let server = ApiServer::start().await;
    let client = server.client();
    let nodes: Api<Node> = Api::all(client.clone());
    let pods: Api<Pod> = Api::namespaced(client, "default");
    let mut node_events = nodes.watch(&Default::default(), "0").await.unwrap().boxed();
    wait_for(|| server.request_count("watch", "v1/nodes") == 1).await;
    let mut last = String::new();
    for name in ["p1", "p2", "p3"] {
        let p = pods
            .create(&PostParams::default(), &pod(name))
            .await
            .unwrap();
        last = p.metadata.resource_version.unwrap();
    }
    // The pods' changes reached no watch: only the nodes watch is open.
    let node: Node = serde_json::from_value(json!({"metadata": {"name": "n1"}})).unwrap();
    nodes.create(&PostParams::default(), &node).await.unwrap();
    let ev = tokio::time::timeout(Duration::from_secs(10), node_events.next())
        .await
        .expect("no watch event within 10 s")
        .expect("watch ended")
        .unwrap();
    assert!(matches!(ev, kube::api::WatchEvent::Added(ref n) if n.name_any() == "n1"));
    assert_eq!(server.changes_handed_to_watches(), 1);

    let mut pod_events = pods
        .watch(&Default::default(), &last)
        .await
        .unwrap()
        .boxed();
    wait_for(|| server.request_count("watch", "v1/pods") == 1).await;
    pods.create(&PostParams::default(), &pod("p4"))
        .await
        .unwrap();
    assert_eq!(next_added(&mut pod_events).await, "p4");
    assert_eq!(server.changes_handed_to_watches(), 2);
}

async fn next_added(
    events: &mut futures::stream::BoxStream<'_, kube::Result<kube::api::WatchEvent<Pod>>>,
) -> String {
    let ev = tokio::time::timeout(Duration::from_secs(10), events.next())
        .await
        .expect("no watch event within 10 s")
        .expect("watch ended")
        .unwrap();
    match ev {
        kube::api::WatchEvent::Added(p) => p.name_any(),
        other => panic!("unexpected {other:?}"),
    }
}

async fn next_name(rx: &mut tokio::sync::mpsc::UnboundedReceiver<String>) -> String {
    tokio::time::timeout(std::time::Duration::from_secs(10), rx.recv())
        .await
        .expect("no watch event within 10 s")
        .expect("watcher ended")
}

/// Polls a condition every 10 ms for up to 10 s (never a fixed sleep).
async fn wait_for(mut cond: impl FnMut() -> bool) {
    for _ in 0..1000 {
        if cond() {
            return;
        }
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
    }
    panic!("condition not reached within 10 s");
}

async fn http_post(server: &ApiServer, path: &str, body: Vec<u8>) -> u16 {
    let url = format!("{}{path}", server.url());
    tokio::task::spawn_blocking(move || {
        reqwest::blocking::Client::new()
            .post(url)
            .header("content-type", "application/json")
            .body(body)
            .send()
            .unwrap()
            .status()
            .as_u16()
    })
    .await
    .unwrap()
}

// ---------------------------------------------------------------------------
// The real controller against the stand-in.

/// A controller replica running as a task; dropping or aborting it is a kill.
struct Replica {
    task: tokio::task::JoinHandle<anyhow::Result<()>>,
    leadership: Leadership,
    registry: prometheus::Registry,
}

fn start_controller(server: &ApiServer, identity: &str, lease: Duration) -> Replica {
    let config = controller_config(identity, lease);
    let registry = prometheus::Registry::new();
    let controller = Controller::new(server.client(), config, &registry).unwrap();
    let leadership = controller.leadership();
    let (_tx, rx) = tokio::sync::watch::channel(false);
    let task = tokio::spawn(async move {
        let _keep = _tx;
        controller.run(rx).await
    });
    Replica {
        task,
        leadership,
        registry,
    }
}

fn dynamic_api(
    server: &ApiServer,
    ar: &ApiResource,
    namespace: Option<&str>,
) -> Api<DynamicObject> {
    match namespace {
        Some(ns) => Api::namespaced_with(server.client(), ns, ar),
        None => Api::all_with(server.client(), ar),
    }
}

async fn create_raw(server: &ApiServer, ar: &ApiResource, namespace: Option<&str>, obj: Value) {
    let obj: DynamicObject = serde_json::from_value(obj).unwrap();
    dynamic_api(server, ar, namespace)
        .create(&PostParams::default(), &obj)
        .await
        .unwrap();
}

fn tj_ar() -> ApiResource {
    ApiResource::erase::<TrainingJob>(&())
}
fn tq_ar() -> ApiResource {
    ApiResource::erase::<TenantQuota>(&())
}

async fn quota(server: &ApiServer, tenant: &str, parent: Option<&str>, gpus: Value) {
    create_raw(
        server,
        &tq_ar(),
        None,
        json!({
            "apiVersion": "zhisuan.io/v1alpha1", "kind": "TenantQuota",
            "metadata": {"name": tenant},
            "spec": {"tenant": tenant, "parent": parent, "gpus": gpus}
        }),
    )
    .await;
}

fn job_json(name: &str, tenant: &str, replicas: i64, gpus: i64) -> Value {
    json!({
        "apiVersion": "zhisuan.io/v1alpha1", "kind": "TrainingJob",
        "metadata": {"name": name, "namespace": "ml"},
        "spec": {"tenant": tenant, "replicas": replicas, "gpusPerReplica": gpus,
                 "template": {"spec": {"containers": [{"name": "train", "image": "trainer:1",
                     "resources": {"requests": {"cpu": "2", "memory": "8Gi"}}}]}}}
    })
}

async fn job(server: &ApiServer, name: &str, tenant: &str, replicas: i64, gpus: i64) {
    create_raw(
        server,
        &tj_ar(),
        Some("ml"),
        job_json(name, tenant, replicas, gpus),
    )
    .await;
}

async fn status_of(server: &ApiServer, name: &str) -> Value {
    dynamic_api(server, &tj_ar(), Some("ml"))
        .get(name)
        .await
        .unwrap()
        .data
        .get("status")
        .cloned()
        .unwrap_or(Value::Null)
}

/// Pods of a workload: name → (node, devices annotation).
fn pods_of(server: &ApiServer, workload: &str) -> BTreeMap<String, (String, String)> {
    server
        .objects("v1/pods")
        .into_iter()
        .filter(|p| {
            p.pointer("/metadata/labels/zhisuan.io~1workload")
                .and_then(Value::as_str)
                == Some(workload)
        })
        .map(|p| {
            let name = p
                .pointer("/metadata/name")
                .and_then(Value::as_str)
                .unwrap()
                .to_string();
            let node = p
                .pointer("/spec/nodeName")
                .and_then(Value::as_str)
                .unwrap_or("")
                .to_string();
            let dev = p
                .pointer("/metadata/annotations/zhisuan.io~1gpu-devices")
                .and_then(Value::as_str)
                .unwrap_or("")
                .to_string();
            (name, (node, dev))
        })
        .collect()
}

/// Sets a pod's phase in namespace `ml` (the kubelet's part).
async fn set_pod_phase(server: &ApiServer, pod: &str, phase: &str) {
    Api::<Pod>::namespaced(server.client(), "ml")
        .patch_status(
            pod,
            &PatchParams::default(),
            &Patch::Merge(json!({"status": {"phase": phase}})),
        )
        .await
        .unwrap();
}

async fn phase(server: &ApiServer, name: &str) -> String {
    status_of(server, name).await["phase"]
        .as_str()
        .unwrap_or("")
        .to_string()
}

/// No device of any node is held by two pods.
fn assert_no_device_shared(server: &ApiServer) {
    let mut seen = BTreeSet::new();
    for p in server.objects("v1/pods") {
        let node = p
            .pointer("/spec/nodeName")
            .and_then(Value::as_str)
            .unwrap_or("")
            .to_string();
        let devs = p
            .pointer("/metadata/annotations/zhisuan.io~1gpu-devices")
            .and_then(Value::as_str)
            .unwrap_or("");
        for d in devs.split(',').filter(|d| !d.is_empty()) {
            assert!(
                seen.insert((node.clone(), d.to_string())),
                "device {d} of {node} given twice"
            );
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn gang_of_four_lands_all_or_nothing() {
    let server = ApiServer::start().await;
    add_node(&server, "gpu-a", "east", "H100", 8).await;
    add_node(&server, "gpu-b", "east", "H100", 8).await;
    quota(&server, "acme", None, json!({})).await;
    let _c = start_controller(&server, "c1", Duration::from_secs(2));
    // 4 × 4 GPUs fill both nodes exactly.
    job(&server, "big", "acme", 4, 4).await;
    eventually(15, "big runs", || async {
        phase(&server, "big").await == "Running"
    })
    .await;
    let pods = pods_of(&server, "big");
    assert_eq!(
        pods.keys().collect::<Vec<_>>(),
        ["big-0", "big-1", "big-2", "big-3"]
    );
    assert!(pods
        .values()
        .all(|(node, dev)| !node.is_empty() && dev.split(',').count() == 4));
    assert_no_device_shared(&server);

    // A second gang of 4 × 1 GPU does not fit: no pod of it exists at all.
    job(&server, "second", "acme", 4, 1).await;
    eventually(15, "second explained", || async {
        let s = status_of(&server, "second").await;
        s["reason"] == "Unschedulable"
            && s["conditions"].as_array().is_some_and(|cs| {
                cs.iter().any(|c| {
                    c["type"] == "Scheduled"
                        && c["message"]
                            .as_str()
                            .unwrap_or("")
                            .contains("fits in no allowed region")
                })
            })
    })
    .await;
    assert!(
        pods_of(&server, "second").is_empty(),
        "a blocked gang created pods"
    );

    // Deleting the first job releases its pods (finalizer) and the second lands whole.
    dynamic_api(&server, &tj_ar(), Some("ml"))
        .delete("big", &Default::default())
        .await
        .unwrap();
    eventually(15, "second runs", || async {
        phase(&server, "second").await == "Running"
    })
    .await;
    assert!(pods_of(&server, "big").is_empty());
    assert!(dynamic_api(&server, &tj_ar(), Some("ml"))
        .get_opt("big")
        .await
        .unwrap()
        .is_none());
    assert_eq!(pods_of(&server, "second").len(), 4);
    assert_no_device_shared(&server);
}

/// Monthly GPU-hour limits are checked against the month-to-date use the
/// controller reads from its usage source (the ledger in production).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn monthly_gpu_hours_from_the_usage_source_block_then_admit() {
    let server = ApiServer::start().await;
    add_node(&server, "gpu-a", "east", "H100", 8).await;
    create_raw(
        &server,
        &tq_ar(),
        None,
        json!({"apiVersion": "zhisuan.io/v1alpha1", "kind": "TenantQuota",
               "metadata": {"name": "acme"},
               "spec": {"tenant": "acme", "gpuHoursPerMonth": {"H100": 10}}}),
    )
    .await;
    // acme has used exactly 10 H100-hours this month (10 × 3,600,000 milli-GPU-s).
    let used = FixedUsage(
        [(
            "acme".to_string(),
            MonthToDate {
                milli_gpu_s: [("H100".to_string(), 36_000_000)].into(),
                tokens: Default::default(),
            },
        )]
        .into(),
    );
    let config = ControllerConfig {
        usage_refresh: ControllerConfig::default().usage_refresh,
        ..controller_config("c1", Duration::from_secs(2))
    };
    let controller = Controller::new(server.client(), config, &prometheus::Registry::new())
        .unwrap()
        .with_usage(std::sync::Arc::new(used));
    let (_stop, rx) = tokio::sync::watch::channel(false);
    let _task = tokio::spawn(controller.run(rx));

    job(&server, "late", "acme", 1, 1).await;
    eventually(15, "late blocked by the monthly limit", || async {
        let s = status_of(&server, "late").await;
        s["reason"] == "MonthlyGpuHoursExceeded"
            && scheduled_message(&s).contains("spec.gpuHoursPerMonth[H100]=10")
    })
    .await;
    assert!(pods_of(&server, "late").is_empty());
    let patch = json!({"spec": {"gpuHoursPerMonth": {"H100": 11}}});
    dynamic_api(&server, &tq_ar(), None)
        .patch("acme", &PatchParams::default(), &Patch::Merge(&patch))
        .await
        .unwrap();
    eventually(15, "late runs under the raised limit", || async {
        phase(&server, "late").await == "Running"
    })
    .await;
}

/// The workload reconcilers (kube-rs `Controller`): the finalizer goes on
/// first, and the owned pods decide the phase (status by server-side apply):
/// all pods Succeeded → Succeeded; a pod Failed → Failed, the gang's pods deleted.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn owned_pods_decide_the_phase() {
    let server = ApiServer::start().await;
    add_node(&server, "gpu-a", "east", "H100", 8).await;
    quota(&server, "acme", None, json!({})).await;
    let _c = start_controller(&server, "c1", Duration::from_secs(2));
    job(&server, "done", "acme", 2, 1).await;
    job(&server, "broken", "acme", 2, 1).await;
    for name in ["done", "broken"] {
        eventually(15, "both run", || async {
            phase(&server, name).await == "Running"
        })
        .await;
    }
    let jobs = dynamic_api(&server, &tj_ar(), Some("ml"));
    let finalizers = jobs.get("done").await.unwrap().metadata.finalizers;
    assert_eq!(finalizers, Some(vec!["zhisuan.io/cleanup".to_string()]));
    set_pod_phase(&server, "done-0", "Succeeded").await;
    set_pod_phase(&server, "broken-1", "Failed").await;
    eventually(15, "broken fails", || async {
        phase(&server, "broken").await == "Failed"
    })
    .await;
    assert_eq!(status_of(&server, "broken").await["reason"], "PodFailed");
    eventually(15, "broken's pods deleted", || async {
        pods_of(&server, "broken").is_empty()
    })
    .await;
    // Half the gang done is not done.
    assert_eq!(phase(&server, "done").await, "Running");
    set_pod_phase(&server, "done-1", "Succeeded").await;
    eventually(15, "done succeeds", || async {
        phase(&server, "done").await == "Succeeded"
    })
    .await;
    assert_eq!(status_of(&server, "done").await["reason"], "Completed");
}

/// A vLLM stand-in on loopback: serves the counters the test sets and
/// counts the scrapes it answered.
async fn vllm_exporter() -> (u16, Arc<Mutex<(u64, u64)>>, Arc<AtomicUsize>) {
    let counters = Arc::new(Mutex::new((0u64, 0u64)));
    let scrapes = Arc::new(AtomicUsize::new(0));
    let (c, n) = (counters.clone(), scrapes.clone());
    let app = axum::Router::new().route(
        "/metrics",
        axum::routing::get(move || {
            let (prompt, generation) = *c.lock().unwrap();
            n.fetch_add(1, Ordering::SeqCst);
            async move {
                format!(
                    "# TYPE vllm:prompt_tokens_total counter\n\
                     vllm:prompt_tokens_total{{model_name=\"qwen-72b\"}} {prompt}\n\
                     # TYPE vllm:generation_tokens_total counter\n\
                     vllm:generation_tokens_total{{model_name=\"qwen-72b\"}} {generation}\n"
                )
            }
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    (port, counters, scrapes)
}

/// With a ledger, the leader scrapes each running pod of an InferenceService
/// with `spec.metrics` (pod IP + metrics port) and the token deltas land in
/// the ledger under the service's tenant.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn inference_tokens_are_scraped_from_running_pods_into_the_ledger() {
    let server = ApiServer::start().await;
    add_node(&server, "gpu-a", "east", "H100", 8).await;
    quota(&server, "acme", None, json!({})).await;
    let ledger = Ledger::open(":memory:").unwrap();
    ledger.ensure_rate_card("test").unwrap();
    ledger.create_tenant("test", "acme", None).unwrap();
    let (port, counters, scrapes) = vllm_exporter().await;
    *counters.lock().unwrap() = (1000, 400);

    let config = ControllerConfig {
        identity: "c1".into(),
        resync: Duration::from_millis(200),
        namespace_tenancy: NamespaceTenancy::Optional,
        timing: LeaseTiming {
            lease_duration: Duration::from_secs(2),
            renew_deadline: Duration::from_millis(1333),
            retry_period: Duration::from_millis(333),
        },
        ..ControllerConfig::default()
    };
    let scrape = TokenScrapeConfig {
        interval: Duration::from_secs(1),
        ..TokenScrapeConfig::default()
    };
    let controller = Controller::new(server.client(), config, &prometheus::Registry::new())
        .unwrap()
        .with_token_counting(ledger.clone(), scrape);
    let (_stop, rx) = tokio::sync::watch::channel(false);
    let _task = tokio::spawn(controller.run(rx));

    let isvc_ar = ApiResource::erase::<InferenceService>(&());
    create_raw(
        &server,
        &isvc_ar,
        Some("ai"),
        json!({
            "apiVersion": "zhisuan.io/v1alpha1", "kind": "InferenceService",
            "metadata": {"name": "chat", "namespace": "ai"},
            "spec": {"tenant": "acme", "modelName": "qwen-72b", "tokenTier": "industry",
                     "replicas": 1, "gpusPerReplica": 1, "metrics": {"port": port},
                     "template": {"spec": {"containers": [{"name": "serve", "image": "vllm:1"}]}}}
        }),
    )
    .await;
    let isvc = dynamic_api(&server, &isvc_ar, Some("ai"));
    eventually(15, "chat runs", || async {
        isvc.get("chat").await.unwrap().data["status"]["phase"] == "Running"
    })
    .await;
    // No scrape before the pod reports an IP (the kubelet's part, done here).
    assert_eq!(scrapes.load(Ordering::SeqCst), 0);
    let pods: Api<Pod> = Api::namespaced(server.client(), "ai");
    pods.patch_status(
        "chat-serve0",
        &PatchParams::default(),
        &Patch::Merge(json!({"status": {"phase": "Running", "podIP": "127.0.0.1"}})),
    )
    .await
    .unwrap();
    // The first scrape only sets the baseline; the served tokens after it count.
    eventually(15, "first scrape (baseline)", || async {
        scrapes.load(Ordering::SeqCst) >= 1
    })
    .await;
    *counters.lock().unwrap() = (1300, 600);
    let month = {
        let now = chrono::Utc::now();
        Month {
            year: chrono::Datelike::year(&now),
            month: chrono::Datelike::month(&now),
        }
    };
    eventually(15, "tokens in the ledger", || async {
        ledger.month_use("acme", month).unwrap().tokens > 0
    })
    .await;
    assert_eq!(ledger.month_use("acme", month).unwrap().tokens, 300 + 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn quota_blocks_then_admits() {
    let server = ApiServer::start().await;
    add_node(&server, "gpu-a", "east", "H100", 8).await;
    add_node(&server, "gpu-b", "east", "H100", 8).await;
    // A city with 12 GPUs and a department that may use 16: the city binds.
    quota(&server, "city", None, json!({"*": 12})).await;
    quota(&server, "dept", Some("city"), json!({"H100": 16})).await;
    let _c = start_controller(&server, "c1", Duration::from_secs(2));
    job(&server, "first", "dept", 1, 8).await;
    eventually(15, "first runs", || async {
        phase(&server, "first").await == "Running"
    })
    .await;
    job(&server, "second", "dept", 1, 8).await;
    eventually(15, "second blocked by the city's quota", || async {
        let s = status_of(&server, "second").await;
        s["reason"] == "QuotaExceeded" && s["conditions"].to_string().contains("spec.gpus[*]=12")
    })
    .await;
    assert!(pods_of(&server, "second").is_empty());
    // Raising the city's limit admits it.
    let patch = json!({"spec": {"gpus": {"*": 16}}});
    dynamic_api(&server, &tq_ar(), None)
        .patch("city", &PatchParams::default(), &Patch::Merge(&patch))
        .await
        .unwrap();
    eventually(15, "second runs", || async {
        phase(&server, "second").await == "Running"
    })
    .await;
    let q = dynamic_api(&server, &tq_ar(), None)
        .get("city")
        .await
        .unwrap();
    assert_eq!(q.data["status"]["usedMilliGpus"], 16000);
}

async fn compute_region(server: &ApiServer, name: &str, spec: Value) {
    create_raw(
        server,
        &ApiResource::erase::<ComputeRegion>(&()),
        None,
        json!({"apiVersion": "zhisuan.io/v1alpha1", "kind": "ComputeRegion",
               "metadata": {"name": name}, "spec": spec}),
    )
    .await;
}

fn scheduled_message(status: &Value) -> String {
    status["conditions"]
        .as_array()
        .and_then(|cs| cs.iter().find(|c| c["type"] == "Scheduled"))
        .and_then(|c| c["message"].as_str())
        .unwrap_or("")
        .to_string()
}

/// ComputeRegions form the region planner's catalog: an unconstrained job
/// goes to the greener region with the explanation in its condition, a
/// residency constraint forces the other, and a member-cluster region whose
/// kubeconfig Secret is missing is flagged (naming the Secret and key) and
/// never used.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn compute_regions_choose_the_region_and_explain_it() {
    let server = ApiServer::start().await;
    add_node(&server, "zw-1", "dc-zw", "H100", 8).await;
    add_node(&server, "sh-1", "dc-sh", "H100", 8).await;
    add_node(&server, "far-1", "dc-far", "H100", 8).await;
    let region = |cluster: &str, side: &str, green: f64, dc: &str| {
        json!({"hub": cluster, "cluster": cluster, "side": side, "pue": 1.2,
               "greenShare": green, "electricityFenPerKwh": 40, "gridKgCo2PerKwh": 0.6,
               "nodeSelector": {"zhisuan.io/region": dc}})
    };
    compute_region(&server, "zhongwei", region("中卫", "west", 0.8, "dc-zw")).await;
    compute_region(&server, "shanghai", region("上海", "east", 0.1, "dc-sh")).await;
    let mut member = region("远端", "west", 1.0, "dc-far");
    member["kubeconfigSecretRef"] = json!({"name": "far-kubeconfig", "namespace": "zhisuan"});
    compute_region(&server, "far", member.clone()).await;
    // A Secret outside the controller's own namespace is never read.
    member["nodeSelector"] = json!({"zhisuan.io/region": "dc-none"});
    member["kubeconfigSecretRef"] = json!({"name": "far-kubeconfig", "namespace": "kube-system"});
    compute_region(&server, "elsewhere", member).await;
    quota(&server, "acme", None, json!({})).await;
    let _c = start_controller(&server, "c1", Duration::from_secs(2));

    job(&server, "free", "acme", 1, 8).await;
    let mut resident = job_json("resident", "acme", 1, 8);
    resident["spec"]["regions"] = json!({"residency": ["shanghai"]});
    create_raw(&server, &tj_ar(), Some("ml"), resident).await;
    let mut nowhere = job_json("nowhere", "acme", 1, 1);
    nowhere["spec"]["regions"] = json!({"residency": ["atlantis"]});
    create_raw(&server, &tj_ar(), Some("ml"), nowhere).await;

    for name in ["free", "resident"] {
        eventually(15, &format!("{name} runs"), || async {
            phase(&server, name).await == "Running"
        })
        .await;
    }
    let free = status_of(&server, "free").await;
    assert_eq!(free["placement"]["region"], "zhongwei", "{free}");
    let why = scheduled_message(&free);
    assert!(
        why.contains("placed in zhongwei (中卫) by policy green"),
        "{why}"
    );
    assert_eq!(pods_of(&server, "free")["free-0"].0, "zw-1");
    // The greener region is free, yet residency forces shanghai.
    let resident = status_of(&server, "resident").await;
    assert_eq!(resident["placement"]["region"], "shanghai", "{resident}");
    assert_eq!(pods_of(&server, "resident")["resident-0"].0, "sh-1");
    assert!(scheduled_message(&resident).contains("shanghai (上海)"));

    // An unknown residency region is explained, naming the field.
    eventually(15, "nowhere explained", || async {
        let s = status_of(&server, "nowhere").await;
        s["reason"] == "Unschedulable"
            && scheduled_message(&s).contains("spec.regions.residency")
            && scheduled_message(&s).contains("atlantis")
    })
    .await;
    assert!(pods_of(&server, "nowhere").is_empty());
    // The member-cluster region is flagged, and nothing ran on its node.
    let regions = dynamic_api(&server, &ApiResource::erase::<ComputeRegion>(&()), None);
    eventually(15, "far flagged", || async {
        let far = regions.get("far").await.unwrap();
        let c = &far.data["status"]["conditions"][0];
        c["type"] == "Usable"
            && c["status"] == "False"
            && c["reason"] == "KubeconfigSecretUnusable"
            && c["message"].as_str().is_some_and(|m| {
                m.contains("Secret zhisuan/far-kubeconfig key \"kubeconfig\"")
                    && m.contains("does not exist")
            })
    })
    .await;
    eventually(15, "elsewhere flagged", || async {
        let r = regions.get("elsewhere").await.unwrap();
        let c = &r.data["status"]["conditions"][0];
        c["status"] == "False"
            && c["message"]
                .as_str()
                .is_some_and(|m| m.contains("reads Secrets only in its own namespace \"zhisuan\""))
    })
    .await;
    eventually(15, "zhongwei status counts its GPUs", || async {
        let zw = regions.get("zhongwei").await.unwrap();
        zw.data["status"]["gpus"] == 8 && zw.data["status"]["gpusAllocated"] == 8.0
    })
    .await;
    assert!(server
        .objects("v1/pods")
        .iter()
        .all(|p| p.pointer("/spec/nodeName").and_then(Value::as_str) != Some("far-1")));
}

/// Home and member regions over two stand-in API servers: a Secret in
/// `home` holds a kubeconfig for `far`, ComputeRegion `home` selects
/// `dc-home` nodes at home and ComputeRegion `far` (a member) `dc-far` nodes
/// in `far`.
async fn home_and_member_regions(home: &ApiServer, far: &ApiServer) {
    let kubeconfig = format!(
        "apiVersion: v1\nkind: Config\nclusters:\n- name: far\n  cluster:\n    server: {}\n\
         contexts:\n- name: far\n  context:\n    cluster: far\n    user: far\n\
         current-context: far\nusers:\n- name: far\n  user: {{}}\n",
        far.url()
    );
    let secret = Secret {
        metadata: ObjectMeta {
            name: Some("far-kubeconfig".into()),
            namespace: Some("zhisuan".into()),
            ..Default::default()
        },
        data: Some(BTreeMap::from([(
            "config".to_string(),
            k8s_openapi::ByteString(kubeconfig.into_bytes()),
        )])),
        ..Default::default()
    };
    Api::<Secret>::namespaced(home.client(), "zhisuan")
        .create(&PostParams::default(), &secret)
        .await
        .unwrap();
    let region = |dc: &str, green: f64| {
        json!({"hub": dc, "side": "west", "pue": 1.2, "greenShare": green,
               "electricityFenPerKwh": 40, "gridKgCo2PerKwh": 0.6,
               "nodeSelector": {"zhisuan.io/region": dc}})
    };
    compute_region(home, "home", region("dc-home", 0.5)).await;
    let mut member = region("dc-far", 0.9);
    member["kubeconfigSecretRef"] =
        json!({"name": "far-kubeconfig", "namespace": "zhisuan", "key": "config"});
    compute_region(home, "far", member).await;
}

/// A TrainingJob in namespace `ml` kept to one ComputeRegion.
async fn job_in(server: &ApiServer, name: &str, replicas: i64, region: &str) {
    let mut j = job_json(name, "acme", replicas, 8);
    j["spec"]["regions"] = json!({"residency": [region]});
    create_raw(server, &tj_ar(), Some("ml"), j).await;
}

/// A ComputeRegion whose kubeconfig Secret points at a second API server:
/// its nodes exist only there, one named like a home node
/// (`kind-control-plane`, which every kind cluster has) and kept apart from
/// it; a job resident there gets its pods created and bound there (none at
/// home, no owner reference, the owner labels); deleting the job removes
/// them there.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn member_cluster_region_runs_pods_in_the_member_cluster() {
    let home = ApiServer::start().await;
    let far = ApiServer::start().await;
    add_node(&home, "kind-control-plane", "dc-home", "H100", 8).await;
    add_node(&far, "kind-control-plane", "dc-far", "H100", 8).await;
    add_node(&far, "far-2", "dc-far", "H100", 8).await;
    // A node of the member cluster outside the region's selector.
    add_node(&far, "far-other", "dc-other", "H100", 8).await;
    home_and_member_regions(&home, &far).await;
    quota(&home, "acme", None, json!({})).await;
    let _c = start_controller(&home, "c1", Duration::from_secs(2));

    // The home node is full first: a member gang counted on it would wait.
    job_in(&home, "local", 1, "home").await;
    eventually(20, "local runs", || async {
        phase(&home, "local").await == "Running"
    })
    .await;
    let here = pods_of(&home, "local");
    assert_eq!(here["local-0"].0, "kind-control-plane", "{here:?}");

    job_in(&home, "remote", 2, "far").await;
    eventually(20, "remote runs", || async {
        phase(&home, "remote").await == "Running"
    })
    .await;
    let st = status_of(&home, "remote").await;
    assert_eq!(st["placement"]["region"], "far", "{st}");
    let placed: BTreeSet<&str> = st["placement"]["replicas"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["node"].as_str().unwrap())
        .collect();
    assert_eq!(
        placed,
        BTreeSet::from(["far/far-2", "far/kind-control-plane"]),
        "{st}"
    );
    let there = pods_of(&far, "remote");
    let nodes: BTreeSet<&str> = there.values().map(|(n, _)| n.as_str()).collect();
    assert_eq!(
        nodes,
        BTreeSet::from(["far-2", "kind-control-plane"]),
        "{there:?}"
    );
    assert!(pods_of(&home, "remote").is_empty());
    for p in far.objects("v1/pods") {
        assert_eq!(p.pointer("/metadata/namespace"), Some(&json!("ml")));
        assert!(p.pointer("/metadata/ownerReferences").is_none(), "{p}");
        assert_eq!(
            p.pointer("/metadata/labels/zhisuan.io~1workload-kind"),
            Some(&json!("trainingjob"))
        );
        assert_eq!(
            p.pointer("/metadata/annotations/zhisuan.io~1job"),
            Some(&json!("ml/remote"))
        );
    }
    let regions = dynamic_api(&home, &ApiResource::erase::<ComputeRegion>(&()), None);
    eventually(15, "each region counts its own cluster's GPUs", || async {
        let r = regions.get("far").await.unwrap();
        let h = regions.get("home").await.unwrap();
        r.data["status"]["gpus"] == 16
            && r.data["status"]["gpusAllocated"] == 16.0
            && r.data["status"]["conditions"][0]["status"] == "True"
            && h.data["status"]["gpus"] == 8
            && h.data["status"]["gpusAllocated"] == 8.0
    })
    .await;

    // The phase follows the pods in the member cluster.
    for name in ["remote-0", "remote-1"] {
        set_pod_phase(&far, name, "Succeeded").await;
    }
    eventually(20, "remote succeeds from its member pods", || async {
        phase(&home, "remote").await == "Succeeded"
    })
    .await;

    // Deleting the job deletes its pods in the member cluster.
    dynamic_api(&home, &tj_ar(), Some("ml"))
        .delete("remote", &Default::default())
        .await
        .unwrap();
    eventually(20, "member pods deleted and the job gone", || async {
        pods_of(&far, "remote").is_empty()
            && dynamic_api(&home, &tj_ar(), Some("ml"))
                .get_opt("remote")
                .await
                .unwrap()
                .is_none()
    })
    .await;
    assert_eq!(home.count("v1/pods", |_| true), 1, "local-0 only");
}

/// Pods are deleted and read only in the cluster of their placement's
/// region: a job at home and a job in the member cluster each have an
/// unrelated pod of the same name in the other cluster, which neither the
/// phase reconciler, a failed gang's stop, nor deletion cleanup touches.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pods_are_stopped_and_read_only_in_their_placements_cluster() {
    let home = ApiServer::start().await;
    let far = ApiServer::start().await;
    add_node(&home, "home-1", "dc-home", "H100", 8).await;
    add_node(&far, "far-1", "dc-far", "H100", 8).await;
    home_and_member_regions(&home, &far).await;
    quota(&home, "acme", None, json!({})).await;
    // Someone else's pods, named like the jobs' pods, in the other cluster.
    let bystander = |server: &ApiServer, name: &str| {
        let api: Api<Pod> = Api::namespaced(server.client(), "ml");
        let pod = pod(name);
        async move { api.create(&PostParams::default(), &pod).await.unwrap() }
    };
    bystander(&home, "remote-0").await;
    bystander(&far, "local-0").await;
    let exists = |server: &ApiServer, name: &str| {
        server.count("v1/pods", |p| {
            p.pointer("/metadata/name") == Some(&json!(name))
                && p.pointer("/metadata/labels/app") == Some(&json!("x"))
        }) == 1
    };
    let _c = start_controller(&home, "c1", Duration::from_secs(2));
    job_in(&home, "local", 1, "home").await;
    job_in(&home, "remote", 1, "far").await;
    eventually(20, "both run", || async {
        phase(&home, "local").await == "Running" && phase(&home, "remote").await == "Running"
    })
    .await;
    assert_eq!(pods_of(&far, "remote")["remote-0"].0, "far-1");

    // The member pod's phase decides, not the home pod of the same name.
    set_pod_phase(&far, "remote-0", "Succeeded").await;
    eventually(20, "remote succeeds", || async {
        phase(&home, "remote").await == "Succeeded"
    })
    .await;

    // A failed home gang is stopped at home only (its status is written
    // after the deletions).
    set_pod_phase(&home, "local-0", "Failed").await;
    eventually(20, "local fails", || async {
        phase(&home, "local").await == "Failed"
    })
    .await;
    assert!(pods_of(&home, "local").is_empty());
    assert!(
        exists(&far, "local-0"),
        "the member cluster's own local-0 was deleted"
    );

    // Deletion cleanup (the finalizer goes once the deletions are done).
    for name in ["local", "remote"] {
        dynamic_api(&home, &tj_ar(), Some("ml"))
            .delete(name, &Default::default())
            .await
            .unwrap();
    }
    eventually(20, "both jobs gone with their pods", || async {
        let jobs = dynamic_api(&home, &tj_ar(), Some("ml"));
        jobs.get_opt("local").await.unwrap().is_none()
            && jobs.get_opt("remote").await.unwrap().is_none()
            && pods_of(&far, "remote").is_empty()
    })
    .await;
    assert!(
        exists(&home, "remote-0"),
        "the home cluster's own remote-0 was deleted"
    );
    assert!(
        exists(&far, "local-0"),
        "the member cluster's own local-0 was deleted"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn controller_killed_mid_gang_restarts_with_exactly_the_right_pods() {
    let server = ApiServer::start().await;
    for i in 0..4 {
        add_node(&server, &format!("gpu-{i}"), "west", "A100", 8).await;
    }
    quota(&server, "acme", None, json!({})).await;
    server.pause_bindings_after(2);
    let first = start_controller(&server, "first", Duration::from_secs(1));
    job(&server, "gang", "acme", 4, 8).await;
    // Two pods were bound and a third is hanging: kill the controller.
    eventually(15, "mid-gang", || async {
        server.request_count("create", "v1/pods") >= 3
    })
    .await;
    assert_eq!(phase(&server, "gang").await, "Admitted");
    let bound_before = pods_of(&server, "gang")
        .values()
        .filter(|(n, _)| !n.is_empty())
        .count();
    assert_eq!(bound_before, 2);
    first.task.abort();
    let _ = first.task.await;
    server.resume_bindings();

    let second = start_controller(&server, "second", Duration::from_secs(1));
    eventually(20, "gang runs under the new leader", || async {
        phase(&server, "gang").await == "Running"
    })
    .await;
    assert!(second.leadership.is_leader());
    let pods = pods_of(&server, "gang");
    assert_eq!(
        pods.keys().collect::<Vec<_>>(),
        ["gang-0", "gang-1", "gang-2", "gang-3"]
    );
    // Every pod is where the recorded placement says, with its devices.
    let status = status_of(&server, "gang").await;
    for r in status["placement"]["replicas"].as_array().unwrap() {
        let (node, dev) = &pods[r["pod"].as_str().unwrap()];
        assert_eq!(node, r["node"].as_str().unwrap());
        let want: Vec<String> = r["devices"]
            .as_array()
            .unwrap()
            .iter()
            .map(|d| d.to_string())
            .collect();
        assert_eq!(dev, &want.join(","));
    }
    assert_no_device_shared(&server);
    assert_eq!(
        server.objects("v1/pods").len(),
        4,
        "no duplicate or stray pods"
    );
}

/// The Lease deleted under a holder that is stuck (it stopped renewing but
/// its term still runs): the other candidate waits a full lease duration of
/// seeing it missing, so the two never lead at once (issue #16, item 11).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_deleted_lease_is_not_taken_while_its_holder_may_still_act() {
    use zhisuan::operator::leader::Elector;
    let server = ApiServer::start().await;
    let timing = LeaseTiming {
        lease_duration: Duration::from_millis(1500),
        renew_deadline: Duration::from_millis(1000),
        retry_period: Duration::from_millis(100),
    };
    let leases: Api<k8s_openapi::api::coordination::v1::Lease> =
        Api::namespaced(server.client(), "default");
    let mut a = Elector::new(leases.clone(), "l", "a", timing.clone());
    let a_leads = a.leadership();
    // a creates the Lease (after waiting out a missing one), then is stuck.
    let began = tokio::time::Instant::now();
    while !a.step().await {
        assert!(began.elapsed() < Duration::from_secs(15), "a never led");
        tokio::time::sleep(timing.retry_period).await;
    }
    let b = Elector::new(leases.clone(), "l", "b", timing.clone());
    let b_leads = b.leadership();
    let (_stop, stop_rx) = tokio::sync::watch::channel(false);
    tokio::spawn(b.run(stop_rx));
    leases.delete("l", &Default::default()).await.unwrap();
    let start = tokio::time::Instant::now();
    let mut both = 0;
    while start.elapsed() < Duration::from_secs(3) {
        if a_leads.is_leader() && b_leads.is_leader() {
            both += 1;
        }
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    assert_eq!(both, 0, "b led while a's term ran");
    assert!(!a_leads.is_leader(), "a's term ended");
    assert!(b_leads.is_leader(), "b never took over");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_controllers_never_both_lead() {
    let server = ApiServer::start().await;
    let lease = Duration::from_millis(900);
    let a = start_controller(&server, "a", lease);
    let b = start_controller(&server, "b", lease);
    let mut both = 0;
    let mut leaders_seen = BTreeSet::new();
    let mut killed = None;
    let start = tokio::time::Instant::now();
    while start.elapsed() < Duration::from_secs(6) {
        let (la, lb) = (a.leadership.is_leader(), b.leadership.is_leader());
        if la && lb {
            both += 1;
        }
        if la {
            leaders_seen.insert("a");
        }
        if lb {
            leaders_seen.insert("b");
        }
        // Once someone leads, kill it: the other must take over, never overlapping.
        if killed.is_none() && start.elapsed() > Duration::from_secs(2) && (la || lb) {
            let victim = if la { &a } else { &b };
            victim.task.abort();
            killed = Some(if la { "a" } else { "b" });
        }
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    assert_eq!(both, 0, "both replicas led at once");
    assert_eq!(
        leaders_seen.len(),
        2,
        "the survivor never took over: {leaders_seen:?}"
    );
    let survivor = if killed == Some("a") { &b } else { &a };
    assert!(survivor.leadership.is_leader());
    let holder = zhisuan::operator::controller::lease_holder(
        server.client(),
        "zhisuan",
        "zhisuan-controller",
    )
    .await;
    assert_eq!(
        holder.as_deref(),
        Some(if killed == Some("a") { "b" } else { "a" })
    );
    let metrics = prometheus::TextEncoder::new()
        .encode_to_string(&survivor.registry.gather())
        .unwrap();
    assert!(
        metrics.contains("zhisuan_controller_is_leader 1"),
        "{metrics}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn invalid_specs_get_a_condition_naming_the_field_and_never_stall() {
    let server = ApiServer::start().await;
    add_node(&server, "gpu-a", "east", "H100", 8).await;
    quota(&server, "acme", None, json!({})).await;
    quota(&server, "loop-a", Some("loop-b"), json!({})).await;
    quota(&server, "loop-b", Some("loop-a"), json!({})).await;
    create_raw(
        &server,
        &tq_ar(),
        None,
        json!({
            "apiVersion": "zhisuan.io/v1alpha1", "kind": "TenantQuota",
            "metadata": {"name": "negative"}, "spec": {"tenant": "negative", "gpus": {"H100": -1}}
        }),
    )
    .await;
    let c = start_controller(&server, "c1", Duration::from_secs(2));
    let mut zero = job_json("zero", "acme", 0, 1);
    zero["metadata"]["name"] = json!("zero");
    create_raw(&server, &tj_ar(), Some("ml"), zero).await;
    let mut milli = job_json("milli", "acme", 1, 1);
    milli["spec"]
        .as_object_mut()
        .unwrap()
        .remove("gpusPerReplica");
    milli["spec"]["gpuMilli"] = json!(1500);
    create_raw(&server, &tj_ar(), Some("ml"), milli).await;
    let mut model = job_json("model", "acme", 1, 1);
    model["spec"]["gpuModels"] = json!(["Z9000"]);
    create_raw(&server, &tj_ar(), Some("ml"), model).await;
    let mut garbage = job_json("garbage", "acme", 1, 1);
    garbage["spec"]["replicas"] = json!("many");
    create_raw(&server, &tj_ar(), Some("ml"), garbage).await;
    job(&server, "cyclic", "loop-a", 1, 1).await;
    job(&server, "good", "acme", 1, 2).await;
    // A privileged pod with the node's root filesystem: refused at the
    // default Pod Security level (baseline) until its tenant is trusted.
    quota(&server, "ops", None, json!({})).await;
    let mut root = job_json("root", "ops", 1, 1);
    root["spec"]["template"]["spec"]["containers"][0]["securityContext"] =
        json!({"privileged": true});
    root["spec"]["template"]["spec"]["volumes"] =
        json!([{"name": "host", "hostPath": {"path": "/"}}]);
    create_raw(&server, &tj_ar(), Some("ml"), root).await;
    // A pod that would run as another service account (with its API
    // rights): refused until its tenant's TenantQuota lists the account.
    quota(&server, "svc", None, json!({})).await;
    let mut sa = job_json("sa", "svc", 1, 1);
    sa["spec"]["template"]["spec"]["serviceAccountName"] = json!("trainer");
    create_raw(&server, &tj_ar(), Some("ml"), sa).await;

    eventually(15, "good runs despite the bad ones", || async {
        phase(&server, "good").await == "Running"
    })
    .await;
    for (name, field) in [
        ("zero", "spec.replicas"),
        ("milli", "spec.gpuMilli"),
        ("model", "spec.gpuModels[0]"),
        ("garbage", "spec.replicas"),
        (
            "root",
            "spec.template.spec.containers[0].securityContext.privileged",
        ),
        ("root", "spec.template.spec.volumes[0].hostPath"),
        ("sa", "spec.template.spec.serviceAccountName"),
    ] {
        eventually(15, name, || async {
            let s = status_of(&server, name).await;
            s["reason"] == "InvalidSpec"
                && s["conditions"].as_array().is_some_and(|cs| {
                    cs.iter().any(|c| {
                        c["type"] == "Valid"
                            && c["status"] == "False"
                            && c["message"].as_str().unwrap_or("").contains(field)
                    })
                })
        })
        .await;
        assert!(pods_of(&server, name).is_empty());
    }
    eventually(15, "cycle named", || async {
        let s = status_of(&server, "cyclic").await;
        s["reason"] == "QuotaInvalid"
            && s["conditions"]
                .to_string()
                .contains("spec.parent forms a cycle")
    })
    .await;
    eventually(15, "negative quota named", || async {
        let q = dynamic_api(&server, &tq_ar(), None)
            .get("negative")
            .await
            .unwrap();
        q.data["status"]["conditions"]
            .to_string()
            .contains("spec.gpus[H100]")
    })
    .await;
    // Fixing a spec (a new generation) is picked up.
    let fix = json!({"spec": {"replicas": 1}});
    dynamic_api(&server, &tj_ar(), Some("ml"))
        .patch("zero", &PatchParams::default(), &Patch::Merge(&fix))
        .await
        .unwrap();
    eventually(15, "fixed job runs", || async {
        phase(&server, "zero").await == "Running"
    })
    .await;
    // The operator trusts tenant ops: its TenantQuota allows privileged pods.
    let trust = json!({"spec": {"podSecurity": "privileged"}});
    dynamic_api(&server, &tq_ar(), None)
        .patch("ops", &PatchParams::default(), &Patch::Merge(&trust))
        .await
        .unwrap();
    eventually(15, "trusted tenant's job runs", || async {
        phase(&server, "root").await == "Running"
    })
    .await;
    let allow = json!({"spec": {"serviceAccounts": ["trainer"]}});
    dynamic_api(&server, &tq_ar(), None)
        .patch("svc", &PatchParams::default(), &Patch::Merge(&allow))
        .await
        .unwrap();
    eventually(15, "the job with a listed service account runs", || async {
        phase(&server, "sa").await == "Running"
    })
    .await;
    assert!(!c.task.is_finished(), "the controller stopped");
    let metrics = prometheus::TextEncoder::new()
        .encode_to_string(&c.registry.gather())
        .unwrap();
    assert!(
        metrics.contains("zhisuan_pending_jobs{reason=\"InvalidSpec\"} 3"),
        "{metrics}"
    );
}

/// The quota API's Kubernetes backend: submissions become TrainingJobs the
/// controller runs; another tenant sees none of them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kube_jobs_backend_submits_and_isolates_tenants() {
    use zhisuan::api::jobs::{BackendError, JobBackend, JobKind, JobSpec};
    use zhisuan::jobs::Phase;
    use zhisuan::operator::jobs::KubeJobs;
    let server = ApiServer::start().await;
    add_node(&server, "gpu-a", "east", "H100", 8).await;
    quota(&server, "acme", None, json!({})).await;
    let _c = start_controller(&server, "c1", Duration::from_secs(2));
    let jobs = KubeJobs::new(server.client(), "ml");
    let spec = JobSpec::new("acme", JobKind::Training, "train", 2, 2000, "trainer:1");
    let view = jobs.submit(spec.clone()).await.unwrap();
    assert_eq!(view.phase, Phase::Pending);
    assert!(matches!(
        jobs.submit(spec).await,
        Err(BackendError::Conflict(_))
    ));
    let id = view.id.clone();
    eventually(15, "running via the API backend", || async {
        jobs.get("acme", &id)
            .await
            .is_ok_and(|v| v.phase == Phase::Running && v.placement.len() == 2)
    })
    .await;
    assert!(matches!(
        jobs.get("other", &id).await,
        Err(BackendError::NotFound(_))
    ));
    assert!(jobs.list("other", None, 10).await.unwrap().jobs.is_empty());
    assert!(matches!(
        jobs.cancel("other", &id).await,
        Err(BackendError::NotFound(_))
    ));
    assert_eq!(jobs.gpu_use("acme").await.unwrap().total_milli, 4000);
    assert_eq!(
        jobs.cancel("acme", &id).await.unwrap().phase,
        Phase::Cancelled
    );
    eventually(15, "cancelled job and its pods are gone", || async {
        jobs.list("acme", None, 10).await.unwrap().jobs.is_empty()
            && pods_of(&server, &id).is_empty()
    })
    .await;
}

/// `GET /v1/jobs` on a cluster: pages in id order across both kinds, read
/// two objects per list call (`limit` + `continue`), so no list answer holds
/// every job; `gpu_use` sums over the same chunks.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kube_jobs_backend_pages_with_limit_and_continue() {
    use zhisuan::api::jobs::{JobBackend, JobKind, JobSpec};
    use zhisuan::operator::jobs::KubeJobs;
    let server = ApiServer::start().await;
    let jobs = KubeJobs::new(server.client(), "ml").with_list_chunk(2);
    let spec = |kind, name: &str| JobSpec::new("acme", kind, name, 1, 1000, "trainer:1");
    let mut ids = Vec::new();
    for (kind, name) in [
        (JobKind::Training, "t1"),
        (JobKind::Inference, "s1"),
        (JobKind::Training, "t2"),
        (JobKind::Training, "t3"),
        (JobKind::Inference, "s2"),
        (JobKind::Training, "t4"),
        (JobKind::Training, "t5"),
    ] {
        ids.push(jobs.submit(spec(kind, name)).await.unwrap().id);
    }
    let mut other = spec(JobKind::Training, "t9");
    other.tenant = "beta".into();
    jobs.submit(other).await.unwrap();
    ids.sort();
    let mut seen = Vec::new();
    let mut after: Option<String> = None;
    loop {
        let page = jobs.list("acme", after.as_deref(), 3).await.unwrap();
        assert!(page.jobs.len() <= 3);
        seen.extend(page.jobs.iter().map(|j| j.id.clone()));
        match page.next {
            Some(n) => after = Some(n),
            None => break,
        }
    }
    assert_eq!(seen, ids, "every job once, in id order, none of beta's");
    assert_eq!(jobs.gpu_use("acme").await.unwrap().total_milli, 7000);
    // The admin's view: every tenant's waiting jobs (no controller runs
    // here, so all wait), longest first, as many as asked for.
    let waiting = jobs.waiting(100).await.unwrap();
    assert_eq!(waiting.len(), 8);
    assert_eq!(waiting.iter().filter(|(t, _)| t == "beta").count(), 1);
    assert!(waiting
        .windows(2)
        .all(|w| w[0].1.submitted_at <= w[1].1.submitted_at));
    assert_eq!(jobs.waiting(3).await.unwrap().len(), 3);
    for resource in [
        "zhisuan.io/v1alpha1/trainingjobs",
        "zhisuan.io/v1alpha1/inferenceservices",
    ] {
        let most = server.largest_list(resource);
        assert!(
            (1..=2).contains(&most),
            "{resource}: a list answer held {most} objects"
        );
    }
}

// ---------------------------------------------------------------------------
// Against a real cluster (KUBECONFIG): `cargo test --test operator_e2e -- --ignored real_cluster`.
// Needs the CRDs applied (`kubectl apply -f crds/`) and rights to create
// TrainingJobs, TenantQuotas, pods/binding and Leases in namespace `zhisuan-e2e`.
// See docs/operator.md.

async fn real_client() -> kube::Client {
    kube::Client::try_default()
        .await
        .expect("KUBECONFIG (or in-cluster config) must point at a cluster")
}

/// The API server itself rejects bad specs through the CRD's OpenAPI bounds
/// and CEL rules (this needs a real API server: the stand-in does not validate).
#[tokio::test]
#[ignore]
async fn real_cluster_rejects_invalid_specs_up_front() {
    let client = real_client().await;
    let api: Api<DynamicObject> = Api::namespaced_with(client, "zhisuan-e2e", &tj_ar());
    for (name, patch) in [
        ("e2e-zero", json!({"replicas": 0})),
        ("e2e-milli", json!({"gpuMilli": 1500})),
        ("e2e-both", json!({"gpuMilli": 500})),
    ] {
        let mut obj = job_json(name, "e2e", 1, 1);
        obj["metadata"]["namespace"] = json!("zhisuan-e2e");
        for (k, v) in patch.as_object().unwrap() {
            obj["spec"][k] = v.clone();
        }
        if name == "e2e-milli" {
            obj["spec"]
                .as_object_mut()
                .unwrap()
                .remove("gpusPerReplica");
        }
        let obj: DynamicObject = serde_json::from_value(obj).unwrap();
        let err = api.create(&PostParams::default(), &obj).await.unwrap_err();
        assert!(
            matches!(err, kube::Error::Api(ref s) if s.code == 422),
            "{name}: {err:?}"
        );
    }
}

/// The controller against the real cluster: a 1-replica job on a node the
/// agent labelled gets placed, or gets a "why pending" condition.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore]
async fn real_cluster_places_or_explains_a_job() {
    let client = real_client().await;
    let config = ControllerConfig {
        identity: format!("e2e-{}", std::process::id()),
        namespace_tenancy: NamespaceTenancy::Optional,
        lease_namespace: "zhisuan-e2e".into(),
        lease_name: "zhisuan-e2e".into(),
        ..ControllerConfig::default()
    };
    let registry = prometheus::Registry::new();
    let controller = Controller::new(client.clone(), config, &registry).unwrap();
    let (tx, rx) = tokio::sync::watch::channel(false);
    let task = tokio::spawn(controller.run(rx));
    let tq: Api<DynamicObject> = Api::all_with(client.clone(), &tq_ar());
    let quota: DynamicObject = serde_json::from_value(json!({
        "apiVersion": "zhisuan.io/v1alpha1", "kind": "TenantQuota",
        "metadata": {"name": "e2e"}, "spec": {"tenant": "e2e", "gpus": {}}
    }))
    .unwrap();
    let _ = tq.create(&PostParams::default(), &quota).await;
    let api: Api<DynamicObject> = Api::namespaced_with(client.clone(), "zhisuan-e2e", &tj_ar());
    let mut obj = job_json("e2e-one", "e2e", 1, 1);
    obj["metadata"]["namespace"] = json!("zhisuan-e2e");
    let _ = api
        .create(
            &PostParams::default(),
            &serde_json::from_value(obj).unwrap(),
        )
        .await;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    let mut explained = false;
    while tokio::time::Instant::now() < deadline && !explained {
        let s = api.get("e2e-one").await.unwrap().data["status"].clone();
        explained = s["phase"] == "Running"
            || s["conditions"]
                .as_array()
                .is_some_and(|c| c.iter().any(|c| c["type"] == "Scheduled"));
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    let _ = api.delete("e2e-one", &Default::default()).await;
    let _ = tq.delete("e2e", &Default::default()).await;
    let _ = tx.send(true);
    let _ = task.await;
    assert!(
        explained,
        "the job was neither placed nor explained within 60 s"
    );
}

/// A failed launch rolls back only this workload's pods: a pod that already
/// has the planned name but belongs to someone else survives; and a
/// TrainingJob `x-serve` and an InferenceService `x` get pods of their own
/// (issue #16, item 12).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rollback_deletes_only_this_workloads_pods_and_kinds_never_share_one() {
    let server = ApiServer::start().await;
    add_node(&server, "gpu-a", "east", "H100", 8).await;
    quota(&server, "acme", None, json!({})).await;
    let pods: Api<Pod> = Api::namespaced(server.client(), "ml");
    let mut foreign = pod("victim-0");
    foreign.metadata.namespace = Some("ml".into());
    pods.create(&PostParams::default(), &foreign).await.unwrap();
    let _c = start_controller(&server, "c1", Duration::from_secs(2));
    job(&server, "victim", "acme", 1, 1).await;
    eventually(15, "the launch fails on the foreign pod", || async {
        status_of(&server, "victim").await["conditions"]
            .to_string()
            .contains("is not this workload's")
    })
    .await;
    let still = pods.get_opt("victim-0").await.unwrap();
    assert!(
        still.is_some_and(|p| p.labels().get("zhisuan.io/workload").is_none()),
        "the rollback deleted a pod that was not the workload's"
    );

    job(&server, "x-serve", "acme", 1, 1).await;
    let isvc_ar = ApiResource::erase::<InferenceService>(&());
    create_raw(
        &server,
        &isvc_ar,
        Some("ml"),
        json!({
            "apiVersion": "zhisuan.io/v1alpha1", "kind": "InferenceService",
            "metadata": {"name": "x", "namespace": "ml"},
            "spec": {"tenant": "acme", "modelName": "m", "tokenTier": "basic", "replicas": 1, "gpusPerReplica": 1,
                     "template": {"spec": {"containers": [{"name": "serve", "image": "vllm:1"}]}}}
        }),
    )
    .await;
    let isvc = dynamic_api(&server, &isvc_ar, Some("ml"));
    let mut both = false;
    for _ in 0..150 {
        both = phase(&server, "x-serve").await == "Running"
            && isvc.get("x").await.unwrap().data["status"]["phase"] == "Running";
        if both {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(
        both,
        "both run: {} / {}",
        status_of(&server, "x-serve").await,
        isvc.get("x").await.unwrap().data["status"]
    );
    let train = pods.get("x-serve-0").await.unwrap();
    let serve = pods.get("x-serve0").await.unwrap();
    assert_eq!(train.labels()["zhisuan.io/workload-kind"], "trainingjob");
    assert_eq!(
        serve.labels()["zhisuan.io/workload-kind"],
        "inferenceservice"
    );
}

/// `spec.tenant` is not trusted on its own (issue #16, item 1): a workload
/// runs only in a namespace bound to its tenant; another tenant's namespace
/// or an unbound one leaves it `TenantMismatch` with no pods, until the
/// namespace is labelled for it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn namespaces_bind_workloads_to_their_tenant() {
    let server = ApiServer::start().await;
    add_node(&server, "gpu-a", "east", "H100", 8).await;
    quota(&server, "acme", None, json!({})).await;
    quota(&server, "rival", None, json!({})).await;
    let nss: Api<k8s_openapi::api::core::v1::Namespace> = Api::all(server.client());
    for (name, labels) in [
        ("acme-ml", json!({"zhisuan.io/tenant": "acme"})),
        ("misc", json!({})),
    ] {
        let ns =
            serde_json::from_value(json!({"metadata": {"name": name, "labels": labels}})).unwrap();
        nss.create(&PostParams::default(), &ns).await.unwrap();
    }
    let config = ControllerConfig {
        namespace_tenancy: NamespaceTenancy::Required,
        ..controller_config("c1", Duration::from_secs(2))
    };
    let controller =
        Controller::new(server.client(), config, &prometheus::Registry::new()).unwrap();
    let (_stop, rx) = tokio::sync::watch::channel(false);
    let _task = tokio::spawn(controller.run(rx));

    let in_ns = |name: &str, ns: &str, tenant: &str| {
        let mut j = job_json(name, tenant, 1, 1);
        j["metadata"]["namespace"] = json!(ns);
        j
    };
    create_raw(
        &server,
        &tj_ar(),
        Some("acme-ml"),
        in_ns("ours", "acme-ml", "acme"),
    )
    .await;
    create_raw(
        &server,
        &tj_ar(),
        Some("acme-ml"),
        in_ns("spoof", "acme-ml", "rival"),
    )
    .await;
    create_raw(
        &server,
        &tj_ar(),
        Some("misc"),
        in_ns("stray", "misc", "acme"),
    )
    .await;
    let api = |ns: &str| dynamic_api(&server, &tj_ar(), Some(ns));
    let status = |ns: &'static str, name: &'static str| {
        let api = api(ns);
        async move { api.get(name).await.unwrap().data["status"].clone() }
    };
    eventually(15, "acme's job in acme's namespace runs", || async {
        status("acme-ml", "ours").await["phase"] == "Running"
    })
    .await;
    for (ns, name, says) in [
        ("acme-ml", "spoof", "namespace acme-ml belongs to tenant"),
        (
            "misc",
            "stray",
            "kubectl label namespace misc zhisuan.io/tenant=acme",
        ),
    ] {
        let mut s = Value::Null;
        for _ in 0..150 {
            s = status(ns, name).await;
            if s["reason"] == "TenantMismatch" && s["conditions"].to_string().contains(says) {
                break;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        assert_eq!(s["reason"], "TenantMismatch", "{name}: {s}");
        assert!(s["conditions"].to_string().contains(says), "{name}: {s}");
        assert!(pods_of(&server, name).is_empty(), "{name} got pods");
    }
    // Binding the namespace to the tenant lets its job in.
    let label = json!({"metadata": {"labels": {"zhisuan.io/tenant": "acme"}}});
    nss.patch("misc", &PatchParams::default(), &Patch::Merge(&label))
        .await
        .unwrap();
    eventually(15, "the stray job runs once misc is acme's", || async {
        status("misc", "stray").await["phase"] == "Running"
    })
    .await;
    assert_eq!(status("acme-ml", "spoof").await["reason"], "TenantMismatch");
}

/// Dedicated zones through the controller: a node labelled
/// `zhisuan.io/dedicated-to` takes only that tenant subtree's workloads,
/// a subtree whose TenantQuota says `dedicatedOnly` runs only there, and
/// both waits are explained in the workload's status.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dedicated_zones_hold_through_the_controller() {
    let server = ApiServer::start().await;
    let zone = [
        ("zhisuan.io/dedicated-to", "fujian-gov"),
        ("zhisuan.io/node-group", "gov-zone"),
    ];
    add_labelled_node(&server, "gov-1", "east", "H100", 8, &zone).await;
    add_node(&server, "open-1", "east", "H100", 8).await;
    create_raw(
        &server,
        &tq_ar(),
        None,
        json!({
            "apiVersion": "zhisuan.io/v1alpha1", "kind": "TenantQuota",
            "metadata": {"name": "fujian-gov"},
            "spec": {"tenant": "fujian-gov", "dedicatedOnly": true}
        }),
    )
    .await;
    quota(&server, "xiamen", Some("fujian-gov"), json!({})).await;
    quota(&server, "acme", None, json!({})).await;
    let _c = start_controller(&server, "c1", Duration::from_secs(2));
    job(&server, "city", "xiamen", 1, 8).await;
    eventually(15, "city runs", || async {
        phase(&server, "city").await == "Running"
    })
    .await;
    assert_eq!(pods_of(&server, "city")["city-0"].0, "gov-1");
    // acme's gang of two whole nodes sees only open-1.
    job(&server, "outsider", "acme", 2, 8).await;
    // xiamen is confined to the zone (its parent's dedicatedOnly): with
    // gov-1 taken it waits, although open-1 is free.
    job(&server, "city2", "xiamen", 1, 8).await;
    for (name, says) in [
        (
            "outsider",
            r#"node group "gov-zone" is reserved to tenant subtree "fujian-gov""#,
        ),
        (
            "city2",
            r#"Confined to dedicated zones by TenantQuota spec.dedicatedOnly of tenant "fujian-gov""#,
        ),
    ] {
        eventually(15, &format!("{name} explained"), || async {
            let s = status_of(&server, name).await;
            s["reason"] == "Unschedulable" && scheduled_message(&s).contains(says)
        })
        .await;
        assert!(pods_of(&server, name).is_empty());
    }
    assert!(server
        .objects("v1/pods")
        .iter()
        .all(|p| p.pointer("/spec/nodeName").and_then(Value::as_str) != Some("open-1")));
}

//! The production loop: a tenant's job goes API → Kubernetes → placed →
//! metered → billed, against the in-process API-server stand-in, with the
//! real quota API (HTTP, `KubeJobs` backend), the real controller(s) with
//! GPU metering, and one ledger (SQLite file) shared as the chart shares it.

#[path = "support/apiserver.rs"]
mod apiserver;
#[path = "support/cluster.rs"]
mod cluster;

use std::net::SocketAddr;
use std::time::Duration;

use apiserver::ApiServer;
use cluster::{add_node, controller_config, eventually};
use k8s_openapi::api::core::v1::{Namespace, Pod};
use kube::api::{Api, ApiResource, DynamicObject, Patch, PatchParams, PostParams};
use serde_json::{json, Value};
use zhisuan::ledger::{Ledger, Month};
use zhisuan::operator::controller::{Controller, ControllerConfig};
use zhisuan::operator::crd::TrainingJob;
use zhisuan::operator::jobs::KubeJobs;
use zhisuan::operator::metering::{MeterConfig, GPU_METER};
use zhisuan::operator::tenancy::NamespaceTenancy;

const ADMIN: &str = "admin-key-0123456789abcdef";
const NS: &str = "ml";
/// The test's metering grid, seconds.
const PERIOD: i64 = 2;

/// The quota API on loopback over the `KubeJobs` backend; returns its base URL.
async fn start_api(server: &ApiServer, ledger: Ledger) -> String {
    let config = zhisuan::api::ApiConfig {
        rate_limit: zhisuan::api::RateLimit {
            per_second: 100_000.0,
            burst: 100_000.0,
        },
        ..zhisuan::api::ApiConfig::with_admin_key(ADMIN)
    };
    let jobs = std::sync::Arc::new(KubeJobs::new(server.client(), NS));
    let state =
        zhisuan::api::ApiState::new(config, ledger, jobs, &prometheus::Registry::new()).unwrap();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr: SocketAddr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        axum::serve(listener, zhisuan::api::router(state))
            .await
            .unwrap()
    });
    format!("http://{addr}")
}

/// The API's jobs namespace, shared (`zhisuan.io/multi-tenant`), and tenant
/// beta's own namespace, as an operator sets them up.
async fn tenant_namespaces(server: &ApiServer) {
    let api: Api<Namespace> = Api::all(server.client());
    for (name, label, value) in [
        (NS, "zhisuan.io/multi-tenant", "true"),
        ("beta", "zhisuan.io/tenant", "beta"),
    ] {
        let ns: Namespace =
            serde_json::from_value(json!({"metadata": {"name": name, "labels": {label: value}}}))
                .unwrap();
        api.create(&PostParams::default(), &ns).await.unwrap();
    }
}

/// One HTTP call: (status, JSON body).
async fn call(
    method: reqwest::Method,
    url: String,
    key: &str,
    body: Option<Value>,
) -> (u16, Value) {
    let mut req = reqwest::Client::new().request(method, url).bearer_auth(key);
    if let Some(b) = body {
        req = req.json(&b);
    }
    let resp = req.send().await.unwrap();
    let status = resp.status().as_u16();
    let text = resp.text().await.unwrap();
    (status, serde_json::from_str(&text).unwrap_or(Value::Null))
}

/// The admin creates tenant `name` through the API; its first key.
async fn create_tenant(api: &str, name: &str) -> String {
    let (st, body) = call(
        reqwest::Method::POST,
        format!("{api}/v1/tenants"),
        ADMIN,
        Some(json!({"name": name})),
    )
    .await;
    assert_eq!(st, 201, "{body}");
    body["api_key"].as_str().unwrap().to_string()
}

/// The admin sets tenant `name`'s quota through the API.
async fn set_quota(api: &str, name: &str, quota: Value) {
    let (st, body) = call(
        reqwest::Method::PUT,
        format!("{api}/v1/tenants/{name}/quota"),
        ADMIN,
        Some(quota),
    )
    .await;
    assert_eq!(st, 200, "{body}");
}

struct Replica {
    task: tokio::task::JoinHandle<anyhow::Result<()>>,
    leadership: zhisuan::operator::leader::Leadership,
}

fn start_controller(server: &ApiServer, identity: &str, db: &str) -> Replica {
    let lease = Duration::from_secs(2);
    let config = ControllerConfig {
        usage_refresh: Duration::from_millis(200),
        // As the chart runs it: namespaces bound to tenants, the API's shared.
        namespace_tenancy: NamespaceTenancy::Required,
        ..controller_config(identity, lease)
    };
    let registry = prometheus::Registry::new();
    // Each replica opens the ledger itself, as separate pods would.
    let ledger = Ledger::open(db).unwrap();
    let meter = MeterConfig {
        period: Duration::from_secs(PERIOD as u64),
        grace: Duration::from_secs(3),
        max_windows: 10_000,
        energy_wait: Duration::from_secs(20),
    };
    let controller = Controller::new(server.client(), config, &registry)
        .unwrap()
        .with_gpu_metering(ledger.clone(), meter, &registry)
        .unwrap()
        .with_vouchers(ledger.clone(), Duration::from_millis(200))
        .with_usage(std::sync::Arc::new(ledger));
    let leadership = controller.leadership();
    let (tx, rx) = tokio::sync::watch::channel(false);
    let task = tokio::spawn(async move {
        let _keep = tx;
        controller.run(rx).await
    });
    Replica { task, leadership }
}

/// A node agent (simulated H100s on the wall clock) for `node`, publishing
/// per-pod energy on the test's metering grid; its metrics registry and the
/// sender that stops it.
fn start_agent(
    server: &ApiServer,
    node: &str,
) -> (prometheus::Registry, tokio::sync::oneshot::Sender<()>) {
    use zhisuan::telemetry::agent::{Agent, AgentConfig};
    use zhisuan::telemetry::health::HealthPolicy;
    use zhisuan::telemetry::metrics::AgentMetrics;
    use zhisuan::telemetry::serve::{serve_agent, ServeOptions};
    use zhisuan::telemetry::sim::{SimConfig, SimNode};
    let registry = prometheus::Registry::new();
    let metrics = AgentMetrics::new(&registry).unwrap();
    let publish_errors = metrics.publish_error_counter();
    let agent = Agent::new(
        SimNode::wall_clock(SimConfig::default()),
        AgentConfig {
            node: node.into(),
            region: Some("east".into()),
            health: HealthPolicy {
                hold_samples: 1,
                max_temperature_c: 0,
            },
            proc_root: "/nonexistent".into(),
        },
        Some(metrics),
    );
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    tokio::spawn(serve_agent(
        agent,
        registry.clone(),
        publish_errors,
        ServeOptions {
            listen: "127.0.0.1:0".into(),
            node: node.into(),
            interval: Duration::from_millis(100),
            heartbeat: Duration::from_secs(30),
            samples: None,
            energy: zhisuan::ledger::EnergyWindows::new(PERIOD, 100_000).unwrap(),
            device_plugin: None,
        },
        Some(server.client()),
        async move {
            let _ = stop_rx.await;
        },
        |_| {},
    ));
    (registry, stop_tx)
}

/// The agent's `zhisuan_pod_energy_joules_total` of `pod`, over its devices.
fn agent_pod_joules(registry: &prometheus::Registry, pod: &str) -> f64 {
    registry
        .gather()
        .iter()
        .filter(|f| f.name() == "zhisuan_pod_energy_joules_total")
        .flat_map(|f| f.get_metric().iter())
        .filter(|m| {
            m.get_label()
                .iter()
                .any(|l| l.name() == "pod" && l.value() == pod)
        })
        .map(|m| m.get_counter().value())
        .sum()
}

fn pods_of(server: &ApiServer, workload: &str) -> Vec<String> {
    server
        .objects("v1/pods")
        .into_iter()
        .filter(|p| {
            p.pointer("/metadata/labels/zhisuan.io~1workload")
                .and_then(Value::as_str)
                == Some(workload)
                && p.pointer("/spec/nodeName").is_some()
        })
        .filter_map(|p| p.pointer("/metadata/name")?.as_str().map(str::to_string))
        .collect()
}

fn rfc3339(s: i64) -> String {
    chrono::DateTime::from_timestamp(s, 0).unwrap().to_rfc3339()
}

/// The kubelet's part: the pod's container runs since `start` (and, with
/// `end`, finished then).
async fn kubelet(server: &ApiServer, pod: &str, start: i64, end: Option<i64>) {
    let (phase, state) = match end {
        None => ("Running", json!({"running": {"startedAt": rfc3339(start)}})),
        Some(e) => (
            "Succeeded",
            json!({"terminated": {"exitCode": 0, "startedAt": rfc3339(start), "finishedAt": rfc3339(e)}}),
        ),
    };
    let status = json!({"status": {
        "phase": phase, "startTime": rfc3339(start),
        "containerStatuses": [{"name": "main", "image": "trainer:1", "imageID": "", "ready": end.is_none(),
                               "restartCount": 0, "state": state}]}});
    Api::<Pod>::namespaced(server.client(), NS)
        .patch_status(pod, &PatchParams::default(), &Patch::Merge(status))
        .await
        .unwrap();
}

/// Σ over the grid windows of one run: (milli-GPU-s, gross fen, voucher fen)
/// as the ledger's documented rules price them (each window its own record,
/// rounded half up; the voucher pays floor(Σ gross × co-pay) over them all).
fn expected(milli: i64, start: i64, end: i64, fen_per_hour: i64, copay_bp: i64) -> (i64, i64, i64) {
    let (mut gpu_s, mut gross, mut voucher) = (0, 0, 0);
    let mut w = start.div_euclid(PERIOD) * PERIOD;
    while w < end {
        let secs = end.min(w + PERIOD) - start.max(w);
        let ms = milli * secs;
        let g = (2 * ms * fen_per_hour + 3_600_000) / 7_200_000;
        gpu_s += ms;
        gross += g;
        w += PERIOD;
    }
    // The voucher's co-pay is taken of the running total of the charges it
    // shared: over all of them, the co-pay of their sum (each 3-fen window
    // alone would give 1 fen: a third, not half).
    voucher += gross * copay_bp / 10_000;
    (gpu_s, gross, voucher)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_tenants_job_goes_api_kubernetes_metered_billed_and_survives_failover() {
    let server = ApiServer::start().await;
    tenant_namespaces(&server).await;
    add_node(&server, "gpu-a", "east", "H100", 8).await;
    let (agent, stop_agent) = start_agent(&server, "gpu-a");
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("ledger.db").to_str().unwrap().to_string();
    let api_ledger = Ledger::open(&db).unwrap();
    api_ledger.ensure_rate_card("test").unwrap();
    let api = start_api(&server, api_ledger.clone()).await;
    let c1 = start_controller(&server, "c1", &db);
    eventually(10, "c1 leads", || async { c1.leadership.is_leader() }).await;
    let c2 = start_controller(&server, "c2", &db);

    // The admin creates the tenant, its quota and a voucher through the API.
    let key = create_tenant(&api, "acme").await;
    set_quota(
        &api,
        "acme",
        json!({"gpus": {"*": 4}, "gpu_hours_per_month": 1}),
    )
    .await;
    let (st, body) = call(
        reqwest::Method::POST,
        format!("{api}/v1/vouchers"),
        ADMIN,
        Some(
            json!({"tenant": "acme", "issuer": "hangzhou-bureau", "face_value_fen": 1_000_000,
                    "copay_ratio": 0.5, "valid_from": "2020-01-01", "valid_until": "2099-01-01"}),
        ),
    )
    .await;
    assert_eq!(st, 201, "{body}");
    let voucher = body["id"].as_str().unwrap().to_string();
    // The quota is what the controller enforces: a TenantQuota now exists.
    let tq = server.objects("zhisuan.io/v1alpha1/tenantquotas");
    assert_eq!(tq.len(), 1, "{tq:?}");
    assert_eq!(tq[0]["spec"]["gpus"]["*"], 4);
    assert_eq!(tq[0]["spec"]["gpuHoursPerMonth"]["*"], 1);

    // The tenant submits a 2-GPU training job: a TrainingJob object appears,
    // the controller admits, places and binds it.
    let (st, body) = call(
        reqwest::Method::POST,
        format!("{api}/v1/jobs"),
        &key,
        Some(
            json!({"kind": "training", "name": "train", "replicas": 1, "gpus_per_replica": 2,
                    "image": "trainer:1"}),
        ),
    )
    .await;
    assert_eq!(st, 201, "{body}");
    let id = body["id"].as_str().unwrap().to_string();
    let tj: Api<DynamicObject> =
        Api::namespaced_with(server.client(), NS, &ApiResource::erase::<TrainingJob>(&()));
    assert!(
        tj.get_opt(&id).await.unwrap().is_some(),
        "no TrainingJob {id}"
    );
    eventually(15, "the job's pod is bound", || async {
        pods_of(&server, &id).len() == 1
    })
    .await;
    let pod = pods_of(&server, &id).remove(0);

    // The kubelet starts it; it has been running for 30 minutes (2 GPUs ×
    // 30 min = 1 GPU-hour, the month's limit, once it finishes).
    let now = chrono::Utc::now().timestamp();
    let start = now - 1_800;
    kubelet(&server, &pod, start, None).await;
    let ledger = Ledger::open(&db).unwrap();
    eventually(20, "c1 meters the running pod", || {
        let l = ledger.clone();
        async move {
            l.meter_cursor(GPU_METER)
                .unwrap()
                .is_some_and(|c| c >= now - 10)
        }
    })
    .await;

    // Leader failover in the middle: c1 is killed, c2 takes over from the
    // ledger's cursor.
    c1.task.abort();
    eventually(20, "c2 leads", || async { c2.leadership.is_leader() }).await;
    let end = chrono::Utc::now().timestamp() + 2;
    kubelet(&server, &pod, start, Some(end)).await;
    eventually(30, "c2 meters up to the pod's end", || {
        let l = ledger.clone();
        async move {
            l.meter_cursor(GPU_METER)
                .unwrap()
                .is_some_and(|c| c >= end + PERIOD)
        }
    })
    .await;

    // The ledger holds exactly the truth: GPU time, price, voucher, co-pay.
    let (gpu_s, gross, voucher_fen) = expected(2000, start, end, 2_500, 5_000);
    let month = Month::of(chrono::DateTime::from_timestamp(end, 0).unwrap());
    let st = ledger.statement("acme", month).unwrap();
    assert_eq!(st.gpu.len(), 1, "{:?}", st.gpu);
    assert_eq!(st.gpu[0].model, "H100");
    assert_eq!(
        st.gpu[0].milli_gpu_seconds, gpu_s,
        "GPU time lost or doubled"
    );
    assert_eq!(st.gpu[0].gross_fen, gross);
    assert_eq!(st.gpu[0].voucher_fen, voucher_fen);
    assert_eq!(st.gpu[0].net_fen, gross - voucher_fen);
    let v = ledger
        .vouchers(Some("acme"))
        .unwrap()
        .into_iter()
        .find(|v| v.id == voucher)
        .unwrap();
    assert_eq!(v.balance_fen, 1_000_000 - voucher_fen);
    assert!(gpu_s >= 3_600_000);
    // The energy is the agent's: what its per-pod counter says, to the
    // joule below (each window's joules telescope from the pod's total).
    let ledger_j: i64 = st.energy.iter().map(|e| e.it_energy_j).sum();
    let agent_j = agent_pod_joules(&agent, &pod);
    assert!(agent_j > 100.0, "the agent attributed {agent_j} J to {pod}");
    assert!(
        (ledger_j as f64 - agent_j).abs() < 1.0,
        "ledger {ledger_j} J, agent counter {agent_j} J"
    );
    let _ = stop_agent.send(());

    // The month's GPU-hours are used up: the API refuses the next job, and
    // the controller leaves a TrainingJob applied with kubectl pending.
    let (st, body) = call(
        reqwest::Method::POST,
        format!("{api}/v1/jobs"),
        &key,
        Some(
            json!({"kind": "training", "name": "more", "replicas": 1, "gpus_per_replica": 1,
                    "image": "trainer:1"}),
        ),
    )
    .await;
    assert_eq!(st, 422, "{body}");
    // Set in the older shape (one number), enforced as the `*` limit.
    assert_eq!(body["error"]["field"], "gpu_hours_per_month.*", "{body}");
    let direct: DynamicObject = serde_json::from_value(json!({
        "apiVersion": "zhisuan.io/v1alpha1", "kind": "TrainingJob",
        "metadata": {"name": "direct", "namespace": NS},
        "spec": {"tenant": "acme", "replicas": 1, "gpusPerReplica": 1,
                 "template": {"spec": {"containers": [{"name": "main", "image": "trainer:1"}]}}}
    }))
    .unwrap();
    tj.create(&PostParams::default(), &direct).await.unwrap();
    eventually(
        20,
        "the controller refuses with MonthlyGpuHoursExceeded",
        || {
            let tj = tj.clone();
            async move {
                let o = tj.get("direct").await.unwrap();
                o.data.pointer("/status/reason").and_then(Value::as_str)
                    == Some("MonthlyGpuHoursExceeded")
            }
        },
    )
    .await;
    assert!(pods_of(&server, "direct").is_empty());
    c2.task.abort();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_compute_voucher_applied_with_kubectl_is_issued_once_redeemed_and_shows_its_balance() {
    let server = ApiServer::start().await;
    tenant_namespaces(&server).await;
    add_node(&server, "gpu-a", "east", "H100", 8).await;
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("ledger.db").to_str().unwrap().to_string();
    let ledger = Ledger::open(&db).unwrap();
    ledger.ensure_rate_card("test").unwrap();
    let api = start_api(&server, ledger.clone()).await;
    let c1 = start_controller(&server, "c1", &db);
    eventually(10, "c1 leads", || async { c1.leadership.is_leader() }).await;
    let c2 = start_controller(&server, "c2", &db);

    // The voucher is applied before its tenant exists: refused, saying why.
    let cvs: Api<DynamicObject> = Api::all_with(
        server.client(),
        &ApiResource::erase::<zhisuan::operator::crd::ComputeVoucher>(&()),
    );
    let cv: DynamicObject = serde_json::from_value(json!({
        "apiVersion": "zhisuan.io/v1alpha1", "kind": "ComputeVoucher",
        "metadata": {"name": "hz-2026-001"},
        "spec": {"issuer": "hangzhou-bureau", "tenant": "acme", "faceValueFen": 200_000,
                 "copayBasisPoints": 10_000, "validFrom": "2020-01-01T00:00:00Z",
                 "validUntil": "2099-01-01T00:00:00Z", "resourceKinds": ["gpu"]}
    }))
    .unwrap();
    let created = cvs.create(&PostParams::default(), &cv).await.unwrap();
    let uid = created.metadata.uid.clone().unwrap();
    let status = |field: &'static str| {
        let cvs = cvs.clone();
        async move {
            cvs.get("hz-2026-001")
                .await
                .unwrap()
                .data
                .pointer(&format!("/status/{field}"))
                .cloned()
                .unwrap_or(Value::Null)
        }
    };
    eventually(10, "the voucher is rejected: no such tenant", || async {
        status("phase").await == "Rejected"
    })
    .await;
    assert!(
        status("message")
            .await
            .as_str()
            .unwrap()
            .contains("POST /v1/tenants"),
        "{}",
        status("message").await
    );

    // The tenant is created through the API: the voucher is issued, once.
    let key = create_tenant(&api, "acme").await;
    set_quota(&api, "acme", json!({"gpus": {"*": 2}})).await;
    eventually(10, "the voucher is issued", || async {
        status("phase").await == "Issued" && status("balanceFen").await == 200_000
    })
    .await;
    assert_eq!(status("ledgerId").await, format!("cv-{uid}"));
    // The tenant sees it through the API like any other voucher.
    let (st, body) = call(
        reqwest::Method::GET,
        format!("{api}/v1/vouchers"),
        &key,
        None,
    )
    .await;
    assert_eq!(st, 200, "{body}");
    assert!(body.to_string().contains(&format!("cv-{uid}")), "{body}");

    // A 1-GPU job ran 10 minutes; the voucher pays all of it (co-pay 100%).
    let (st, body) = call(
        reqwest::Method::POST,
        format!("{api}/v1/jobs"),
        &key,
        Some(
            json!({"kind": "training", "name": "t", "replicas": 1, "gpus_per_replica": 1,
                    "image": "trainer:1"}),
        ),
    )
    .await;
    assert_eq!(st, 201, "{body}");
    let id = body["id"].as_str().unwrap().to_string();
    eventually(15, "the job's pod is bound", || async {
        pods_of(&server, &id).len() == 1
    })
    .await;
    let pod = pods_of(&server, &id).remove(0);
    let now = chrono::Utc::now().timestamp();
    let (start, end) = (now - 600, now + 1);
    kubelet(&server, &pod, start, Some(end)).await;
    // The leader changes while the voucher is being redeemed: once c1 has
    // metered part of the run, so c2 takes over from c1's cursor (and must
    // not meter the rest before its first pass has seen the pod).
    eventually(15, "c1 meters part of the run", || async {
        ledger
            .meter_cursor(zhisuan::operator::metering::GPU_METER)
            .unwrap()
            .is_some_and(|c| c > start && c < end)
    })
    .await;
    c1.task.abort();
    eventually(20, "c2 leads", || async { c2.leadership.is_leader() }).await;
    let (_, gross, voucher_fen) = expected(1000, start, end, 2_500, 10_000);
    assert_eq!(gross, voucher_fen);
    // Bound: a window may be held back for the agent's energy report up to
    // `energy_wait` (20 s here), then the next voucher sync writes the status;
    // under a loaded machine 30 s was once not enough.
    let t0 = std::time::Instant::now();
    while status("redeemedFen").await != voucher_fen {
        if t0.elapsed() > Duration::from_secs(60) {
            // Say what the ledger holds, so a miss here can be told apart.
            let month = zhisuan::ledger::Month::of(chrono::Utc::now());
            panic!(
                "not reached within 60 s: redeemedFen {} (want {voucher_fen} of gross {gross}, run {start}..{end}); vouchers {:?}; statement {}",
                status("redeemedFen").await,
                ledger.vouchers(Some("acme")).unwrap(),
                serde_json::to_string(&ledger.statement("acme", month).unwrap()).unwrap()
            );
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert_eq!(status("balanceFen").await, 200_000 - voucher_fen);
    let vouchers = ledger.vouchers(Some("acme")).unwrap();
    assert_eq!(vouchers.len(), 1, "issued more than once: {vouchers:?}");
    assert_eq!(vouchers[0].balance_fen, 200_000 - voucher_fen);
    let audit = ledger.audit_since(0, 1_000).unwrap();
    assert!(
        audit
            .iter()
            .any(|a| a.action == "voucher.issue"
                && a.actor == "kubernetes:computevoucher/hz-2026-001"),
        "the issue is not audited under the object's name"
    );
    c2.task.abort();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_child_tenants_quota_set_through_the_api_admits_its_jobs() {
    let server = ApiServer::start().await;
    tenant_namespaces(&server).await;
    add_node(&server, "gpu-a", "east", "H100", 8).await;
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("ledger.db").to_str().unwrap().to_string();
    let ledger = Ledger::open(&db).unwrap();
    let api = start_api(&server, ledger).await;
    let c = start_controller(&server, "c1", &db);
    for body in [
        json!({"name": "hangzhou"}),
        json!({"name": "hz-llm", "parent": "hangzhou"}),
    ] {
        let (st, b) = call(
            reqwest::Method::POST,
            format!("{api}/v1/tenants"),
            ADMIN,
            Some(body),
        )
        .await;
        assert_eq!(st, 201, "{b}");
    }
    // Only the child is limited; its parent never got a quota.
    let (st, b) = call(
        reqwest::Method::PUT,
        format!("{api}/v1/tenants/hz-llm/quota"),
        ADMIN,
        Some(json!({"gpus": {"*": 2}})),
    )
    .await;
    assert_eq!(st, 200, "{b}");
    let tq = server.objects("zhisuan.io/v1alpha1/tenantquotas");
    let parent = tq
        .iter()
        .find(|q| q["spec"]["tenant"] == "hangzhou")
        .unwrap_or_else(|| panic!("no TenantQuota for the parent: {tq:?}"));
    assert!(
        parent["spec"]
            .get("gpus")
            .is_none_or(|g| g.as_object().is_some_and(|m| m.is_empty())),
        "{parent}"
    );
    // A job of the child is admitted and bound (a missing parent quota
    // would leave it Pending with QuotaInvalid).
    let obj: DynamicObject = serde_json::from_value(json!({
        "apiVersion": "zhisuan.io/v1alpha1", "kind": "TrainingJob",
        "metadata": {"name": "t", "namespace": NS},
        "spec": {"tenant": "hz-llm", "replicas": 1, "gpusPerReplica": 1,
                 "template": {"spec": {"containers": [{"name": "main", "image": "t:1"}]}}}
    }))
    .unwrap();
    let tj: Api<DynamicObject> =
        Api::namespaced_with(server.client(), NS, &ApiResource::erase::<TrainingJob>(&()));
    tj.create(&PostParams::default(), &obj).await.unwrap();
    eventually(20, "the child's job is bound", || async {
        pods_of(&server, "t").len() == 1
    })
    .await;
    c.task.abort();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_submissions_never_exceed_the_quota() {
    let server = ApiServer::start().await;
    tenant_namespaces(&server).await;
    add_node(&server, "gpu-a", "east", "H100", 8).await;
    add_node(&server, "gpu-b", "east", "H100", 8).await;
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("ledger.db").to_str().unwrap().to_string();
    let ledger = Ledger::open(&db).unwrap();
    let api = start_api(&server, ledger).await;
    let (_, body) = call(
        reqwest::Method::POST,
        format!("{api}/v1/tenants"),
        ADMIN,
        Some(json!({"name": "acme"})),
    )
    .await;
    let key = body["api_key"].as_str().unwrap().to_string();
    let (st, _) = call(
        reqwest::Method::PUT,
        format!("{api}/v1/tenants/acme/quota"),
        ADMIN,
        Some(json!({"gpus": {"*": 4}})),
    )
    .await;
    assert_eq!(st, 200);

    // Through the API: 50 concurrent 1-GPU submissions, exactly 4 accepted.
    let calls = (0..50).map(|i| {
        let (api, key) = (api.clone(), key.clone());
        tokio::spawn(async move {
            call(
                reqwest::Method::POST,
                format!("{api}/v1/jobs"),
                &key,
                Some(
                    json!({"kind": "training", "name": format!("j{i}"), "replicas": 1,
                            "gpus_per_replica": 1, "image": "trainer:1"}),
                ),
            )
            .await
        })
    });
    let mut accepted = 0;
    for c in futures::future::join_all(calls).await {
        let (st, body) = c.unwrap();
        match st {
            201 => accepted += 1,
            422 => assert_eq!(body["error"]["field"], "gpus.*", "{body}"),
            other => panic!("unexpected {other}: {body}"),
        }
    }
    assert_eq!(
        accepted, 4,
        "the API accepted {accepted} 1-GPU jobs on a 4-GPU quota"
    );
    // The TrainingJobs come back a page at a time.
    let (st, page) = call(
        reqwest::Method::GET,
        format!("{api}/v1/jobs?limit=3"),
        &key,
        None,
    )
    .await;
    assert_eq!(st, 200, "{page}");
    assert_eq!(page["jobs"].as_array().unwrap().len(), 3, "{page}");
    let next = page["next"].as_str().unwrap().to_string();
    let (_, rest) = call(
        reqwest::Method::GET,
        format!("{api}/v1/jobs?limit=3&after={next}"),
        &key,
        None,
    )
    .await;
    assert_eq!(rest["jobs"].as_array().unwrap().len(), 1, "{rest}");
    assert!(rest.get("next").is_none(), "{rest}");

    // Through the controller: another tenant's quota of 4 GPUs (set through
    // the API) and 50 TrainingJobs applied at once with kubectl, of which
    // the controller binds exactly 4 GPUs' worth.
    call(
        reqwest::Method::POST,
        format!("{api}/v1/tenants"),
        ADMIN,
        Some(json!({"name": "beta"})),
    )
    .await;
    let (st, _) = call(
        reqwest::Method::PUT,
        format!("{api}/v1/tenants/beta/quota"),
        ADMIN,
        Some(json!({"gpus": {"*": 4}})),
    )
    .await;
    assert_eq!(st, 200);
    let c = start_controller(&server, "c1", &db);
    let tj: Api<DynamicObject> = Api::namespaced_with(
        server.client(),
        "beta",
        &ApiResource::erase::<TrainingJob>(&()),
    );
    let creates = (0..50).map(|i| {
        let tj = tj.clone();
        async move {
            let o: DynamicObject = serde_json::from_value(json!({
                "apiVersion": "zhisuan.io/v1alpha1", "kind": "TrainingJob",
                "metadata": {"name": format!("k{i}"), "namespace": "beta"},
                "spec": {"tenant": "beta", "replicas": 1, "gpusPerReplica": 1,
                         "template": {"spec": {"containers": [{"name": "main", "image": "t:1"}]}}}
            }))
            .unwrap();
            tj.create(&PostParams::default(), &o).await.unwrap();
        }
    });
    futures::future::join_all(creates).await;
    let bound = |tenant: &'static str| {
        server.count("v1/pods", move |p| {
            p.pointer("/spec/nodeName").is_some()
                && p.pointer("/metadata/annotations/zhisuan.io~1tenant")
                    .and_then(Value::as_str)
                    == Some(tenant)
        })
    };
    eventually(20, "4 of acme's and 4 of beta's jobs are bound", || async {
        bound("acme") == 4 && bound("beta") == 4
    })
    .await;
    eventually(20, "the other 46 are pending on the quota", || {
        let tj = tj.clone();
        async move {
            let list = tj.list(&Default::default()).await.unwrap();
            list.items
                .iter()
                .filter(|o| {
                    o.data.pointer("/status/phase").and_then(Value::as_str) == Some("Pending")
                })
                .count()
                == 46
        }
    })
    .await;
    assert_eq!((bound("acme"), bound("beta")), (4, 4));
    // The leader sampled them into the ledger: the operator page's
    // "pending over time" shows this hour's peak, by reason.
    let ledger = Ledger::open(&db).unwrap();
    let now = chrono::Utc::now().timestamp();
    eventually(
        10,
        "this hour's pending peak is 46, on the quota",
        || async {
            let s = ledger
                .pending_series(
                    now - 3600,
                    now + 3600,
                    zhisuan::ledger::series::Bucket::Hour,
                )
                .unwrap();
            let peak =
                |p: &[zhisuan::ledger::pending::PendingPoint]| p.iter().map(|p| p.jobs).max();
            peak(&s.total) == Some(46)
                && s.reasons
                    .iter()
                    .any(|(r, p)| r == "QuotaExceeded" && peak(p) == Some(46))
        },
    )
    .await;
    c.task.abort();
}

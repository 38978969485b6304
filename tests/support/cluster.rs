//! Helpers the cluster tests share over the API-server stand-in: a GPU
//! node as the agent labels it, and waiting for a condition.

use std::time::Duration;

use k8s_openapi::api::core::v1::Node;
use kube::api::{Api, PostParams};
use serde_json::json;

use zhisuan::operator::controller::ControllerConfig;
use zhisuan::operator::leader::LeaseTiming;
use zhisuan::operator::tenancy::NamespaceTenancy;

use super::apiserver::ApiServer;

/// A controller replica's configuration for tests: a short lease (renewed
/// at 2/3, retried at 1/6 of it), a 200 ms resync, and namespaces that need
/// no tenant label (these tests put several tenants in one namespace; the
/// namespace ↔ tenant rule has a test of its own).
pub fn controller_config(identity: &str, lease: Duration) -> ControllerConfig {
    ControllerConfig {
        identity: identity.into(),
        // Its own namespace, as a chart install's: the Lease and the
        // member clusters' kubeconfig Secrets live there.
        lease_namespace: "zhisuan".into(),
        timing: LeaseTiming {
            lease_duration: lease,
            renew_deadline: lease * 2 / 3,
            retry_period: lease / 6,
        },
        resync: Duration::from_millis(200),
        namespace_tenancy: NamespaceTenancy::Optional,
        ..ControllerConfig::default()
    }
}

/// Creates a Ready node with `gpus` GPUs of `model` in `region`, labelled
/// as the node agent labels it.
pub async fn add_node(server: &ApiServer, name: &str, region: &str, model: &str, gpus: u32) {
    add_labelled_node(server, name, region, model, gpus, &[]).await;
}

/// [`add_node`] with more labels (an administrator's, such as a dedicated
/// zone's `zhisuan.io/dedicated-to`).
#[allow(dead_code)]
pub async fn add_labelled_node(
    server: &ApiServer,
    name: &str,
    region: &str,
    model: &str,
    gpus: u32,
    extra: &[(&str, &str)],
) {
    let mut labels = json!({
        "zhisuan.io/region": region, "zhisuan.io/gpu-model": model,
        "zhisuan.io/gpu-count": gpus.to_string(), "zhisuan.io/accelerator-vendor": "nvidia"});
    for (k, v) in extra {
        labels[*k] = json!(v);
    }
    let node: Node = serde_json::from_value(json!({
        "metadata": {"name": name, "labels": labels},
        "status": {"allocatable": {"cpu": "64", "memory": "512Gi", "nvidia.com/gpu": gpus.to_string()},
                   "conditions": [{"type": "Ready", "status": "True"}]}
    }))
    .unwrap();
    Api::<Node>::all(server.client())
        .create(&PostParams::default(), &node)
        .await
        .unwrap();
}

/// Polls an async condition every 20 ms for up to `secs` seconds.
pub async fn eventually<F, Fut>(secs: u64, what: &str, mut cond: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = tokio::time::Instant::now() + Duration::from_secs(secs);
    while tokio::time::Instant::now() < deadline {
        if cond().await {
            return;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    panic!("not reached within {secs} s: {what}");
}

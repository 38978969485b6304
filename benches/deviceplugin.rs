//! The device plugin's cost on a node (issue #14). Prints one JSON object:
//! - `allocate_ms`: p50 / p99 / max of Allocate round trips over the unix
//!   socket (gRPC, pod match, pod-resources call to the kubelet stand-in)
//!   with `--pods` (100) pods bound to an 8-GPU node, each a share;
//! - `agent`: the release agent binary run with `--device-plugin` against the
//!   kubelet stand-in (ListAndWatch open) for `--samples` samples: CPU % of
//!   one core and peak RSS, from its own `--report-overhead`.
//!
//! Run: `cargo bench --bench deviceplugin` (`-- --pods 200 --samples 60`).

#[path = "../tests/support/kubelet.rs"]
mod kubelet;

use kubelet::{kubelet_registration, serve_uds, PodResources};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::{mpsc, watch};
use zhisuan::telemetry::deviceplugin::proto::podresources as pr;
use zhisuan::telemetry::deviceplugin::proto::v1beta1 as dp;
use zhisuan::telemetry::deviceplugin::service::uds_channel;
use zhisuan::telemetry::deviceplugin::{
    register, NodeDevices, PluginState, PodClaim, RESOURCE_SHARE,
};
use zhisuan::telemetry::sim::{SimConfig, SimNode};
use zhisuan::telemetry::{Accelerator, Vendor};

fn arg(name: &str, default: usize) -> usize {
    let args: Vec<String> = std::env::args().collect();
    args.iter()
        .position(|a| a == name)
        .and_then(|i| args.get(i + 1)?.parse().ok())
        .unwrap_or(default)
}

fn percentile(sorted: &[f64], p: f64) -> f64 {
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i]
}

async fn allocate_latency(pods_n: usize) -> serde_json::Value {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().to_path_buf();
    let pr_socket = dir.join("pod-resources.sock");
    let (reg_tx, mut reg_rx) = mpsc::unbounded_channel();
    serve_uds(&dir.join("kubelet.sock"), kubelet_registration(reg_tx));
    let held = PodResources::default();
    serve_uds(
        &pr_socket,
        tonic::transport::Server::builder().add_service(
            pr::pod_resources_lister_server::PodResourcesListerServer::new(held.clone()),
        ),
    );
    let node = NodeDevices {
        node: "gpu-1".into(),
        vendor: Vendor::Nvidia,
        devices: SimNode::new(SimConfig::default()).inventory().to_vec(),
        unhealthy: Vec::new(),
    };
    // Shares of 5 slots, spread over the 8 devices.
    let per_device = 100 / 5;
    assert!(
        pods_n <= 8 * per_device,
        "--pods at most {}",
        8 * per_device
    );
    let pods: Vec<PodClaim> = (0..pods_n)
        .map(|i| PodClaim {
            namespace: "t1".into(),
            name: format!("p{i}"),
            created: i as i64,
            devices: vec![(i % 8) as u32],
            milli: Some(50),
            whole: 0,
            slots: 5,
            waiting: true,
            annotation_error: None,
        })
        .collect();
    let ids_of = |i: usize| -> Vec<String> {
        let d = &node.devices[i % 8];
        let first = (i / 8) * 5;
        (first..first + 5)
            .map(|s| format!("{}::{s}", d.uuid))
            .collect()
    };
    let (_tx, rx) = watch::channel(Arc::new(node.clone()));
    let source = pods.clone();
    let state = Arc::new(PluginState {
        devices: rx,
        pods: Arc::new(move || source.clone()),
        pod_resources: pr_socket,
    });
    let (stop_tx, stop_rx) = watch::channel(false);
    tokio::spawn(register::run(dir.clone(), state, stop_rx));
    let mut endpoint = None;
    while endpoint.is_none() {
        let r = reg_rx.recv().await.unwrap();
        if r.resource_name == RESOURCE_SHARE {
            endpoint = Some(r.endpoint);
        }
    }
    let channel = uds_channel(&dir.join(endpoint.unwrap())).await.unwrap();
    let mut client = dp::device_plugin_client::DevicePluginClient::new(channel);
    let mut ms = Vec::with_capacity(pods_n);
    for i in 0..pods_n {
        let ids = ids_of(i);
        let t = Instant::now();
        client
            .allocate(dp::AllocateRequest {
                container_requests: vec![dp::ContainerAllocateRequest {
                    devices_ids: ids.clone(),
                }],
            })
            .await
            .unwrap_or_else(|e| panic!("allocate p{i}: {}", e.message()));
        ms.push(t.elapsed().as_secs_f64() * 1000.0);
        // The kubelet records the allocation: the next call sees one more held pod.
        held.0.lock().unwrap().push(pr::PodResources {
            name: format!("p{i}"),
            namespace: "t1".into(),
            containers: vec![pr::ContainerResources {
                name: "main".into(),
                devices: vec![pr::ContainerDevices {
                    resource_name: RESOURCE_SHARE.into(),
                    device_ids: ids,
                }],
            }],
        });
    }
    let _ = stop_tx.send(true);
    ms.sort_by(f64::total_cmp);
    serde_json::json!({
        "pods": pods_n,
        "p50": percentile(&ms, 0.5),
        "p99": percentile(&ms, 0.99),
        "max": ms[ms.len() - 1],
    })
}

async fn agent_overhead(samples: usize) -> serde_json::Value {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().to_path_buf();
    let (reg_tx, mut reg_rx) = mpsc::unbounded_channel();
    serve_uds(&dir.join("kubelet.sock"), kubelet_registration(reg_tx));
    let child = tokio::process::Command::new(env!("CARGO_BIN_EXE_zhisuan"))
        .args([
            "agent",
            "--backend",
            "sim",
            "--no-publish",
            "--interval",
            "1",
        ])
        .args([
            "--listen",
            "127.0.0.1:0",
            "--device-plugin",
            "--report-overhead",
        ])
        .arg("--samples")
        .arg(samples.to_string())
        .arg("--device-plugin-dir")
        .arg(&dir)
        .arg("--pod-resources-socket")
        .arg(dir.join("none.sock"))
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .spawn()
        .expect("run the zhisuan binary");
    // Keep both ListAndWatch streams open, as the kubelet does.
    let mut streams = Vec::new();
    for _ in 0..2 {
        let r = tokio::time::timeout(Duration::from_secs(30), reg_rx.recv())
            .await
            .expect("the agent registers")
            .unwrap();
        let ch = uds_channel(&dir.join(&r.endpoint)).await.unwrap();
        let mut c = dp::device_plugin_client::DevicePluginClient::new(ch);
        let mut s = c.list_and_watch(dp::Empty {}).await.unwrap().into_inner();
        streams.push(tokio::spawn(async move {
            while let Ok(Some(_)) = s.message().await {}
        }));
    }
    let out = child.wait_with_output().await.unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    let line = text.lines().last().unwrap_or("{}");
    serde_json::from_str(line).unwrap_or_else(|e| panic!("agent overhead ({e}): {text}"))
}

fn main() {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let test_mode = std::env::args().any(|a| a == "--test");
    let pods = arg("--pods", 100);
    let samples = arg("--samples", if test_mode { 3 } else { 30 });
    let allocate = rt.block_on(allocate_latency(pods));
    let agent = rt.block_on(agent_overhead(samples));
    let out = serde_json::json!({"allocate_ms": allocate, "agent": agent});
    println!("{}", serde_json::to_string_pretty(&out).unwrap());
}

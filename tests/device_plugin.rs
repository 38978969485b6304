//! The agent's device plugin against a kubelet stand-in that speaks the real
//! device-plugin (v1beta1) and pod-resources (v1) protocols over unix sockets
//! in a temp dir: registration, ListAndWatch on a health change, Allocate for
//! whole devices and shares, refusals, PreStartContainer's check, and
//! re-registration after a kubelet restart (issue #14).

#[path = "support/kubelet.rs"]
mod kubelet;

use kubelet::{kubelet_registration, serve_uds, PodResources};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::mpsc;
use zhisuan::telemetry::agent::{Agent, AgentConfig};
use zhisuan::telemetry::deviceplugin::proto::podresources as pr;
use zhisuan::telemetry::deviceplugin::proto::v1beta1 as dp;
use zhisuan::telemetry::deviceplugin::service::uds_channel;
use zhisuan::telemetry::deviceplugin::{PodClaim, RESOURCE_GPU, RESOURCE_SHARE};
use zhisuan::telemetry::health::HealthPolicy;
use zhisuan::telemetry::metrics::AgentMetrics;
use zhisuan::telemetry::serve::{serve_agent, DevicePluginSetup, ServeOptions};
use zhisuan::telemetry::sim::{Fault, SharedSimNode, SimConfig, SimNode};
use zhisuan::telemetry::Accelerator;

/// Waits for a registration (bounded).
async fn registered(rx: &mut mpsc::UnboundedReceiver<dp::RegisterRequest>) -> dp::RegisterRequest {
    tokio::time::timeout(Duration::from_secs(20), rx.recv())
        .await
        .expect("the plugin registers with the kubelet")
        .unwrap()
}

async fn plugin(
    dir: &Path,
    endpoint: &str,
) -> dp::device_plugin_client::DevicePluginClient<tonic::transport::Channel> {
    dp::device_plugin_client::DevicePluginClient::new(
        uds_channel(&dir.join(endpoint)).await.unwrap(),
    )
}

fn claim(name: &str, created: i64, devices: &[u32], milli: Option<u32>) -> PodClaim {
    PodClaim::placed("t1", name, created, devices, milli)
}

/// Reads ListAndWatch until `pred` holds for a list (bounded).
async fn watch_until(
    stream: &mut tonic::Streaming<dp::ListAndWatchResponse>,
    what: &str,
    pred: impl Fn(&[dp::Device]) -> bool,
) -> Vec<dp::Device> {
    let wait = async {
        loop {
            let msg = stream.message().await.unwrap().expect("stream open");
            if pred(&msg.devices) {
                return msg.devices;
            }
        }
    };
    tokio::time::timeout(Duration::from_secs(20), wait)
        .await
        .unwrap_or_else(|_| panic!("ListAndWatch never showed: {what}"))
}

fn allocate_req(ids: &[String]) -> dp::AllocateRequest {
    dp::AllocateRequest {
        container_requests: vec![dp::ContainerAllocateRequest {
            devices_ids: ids.to_vec(),
        }],
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_kubelet_gets_exactly_the_placed_devices() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("device-plugins");
    std::fs::create_dir(&dir).unwrap();
    let pr_socket = tmp.path().join("pod-resources.sock");
    let (reg_tx, mut reg_rx) = mpsc::unbounded_channel();
    let kubelet = serve_uds(
        &dir.join("kubelet.sock"),
        kubelet_registration(reg_tx.clone()),
    );
    let held = PodResources::default();
    serve_uds(
        &pr_socket,
        tonic::transport::Server::builder().add_service(
            pr::pod_resources_lister_server::PodResourcesListerServer::new(held.clone()),
        ),
    );

    // The agent on a simulated 8-GPU node, its pods given by the test.
    let sim = SharedSimNode::new(SimNode::wall_clock(SimConfig::default()));
    let uuids: Vec<String> = sim.inventory().iter().map(|d| d.uuid.clone()).collect();
    let pods: Arc<Mutex<Vec<PodClaim>>> = Arc::default();
    let source = pods.clone();
    let registry = prometheus::Registry::new();
    let metrics = AgentMetrics::new(&registry).unwrap();
    let publish_errors = metrics.publish_error_counter();
    let agent = Agent::new(
        sim.clone(),
        AgentConfig {
            node: "gpu-1".into(),
            region: None,
            health: HealthPolicy {
                hold_samples: 1,
                max_temperature_c: 0,
            },
            proc_root: PathBuf::from("/nonexistent"),
        },
        Some(metrics),
    );
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let agent_task = tokio::spawn(serve_agent(
        agent,
        registry,
        publish_errors,
        ServeOptions {
            listen: "127.0.0.1:0".into(),
            node: "gpu-1".into(),
            interval: Duration::from_millis(200),
            heartbeat: Duration::from_secs(30),
            samples: None,
            energy: zhisuan::ledger::EnergyWindows::new(60, 15).unwrap(),
            device_plugin: Some(DevicePluginSetup {
                dir: dir.clone(),
                pod_resources: pr_socket.clone(),
                pods: Some(Arc::new(move || source.lock().unwrap().clone())),
            }),
        },
        None,
        async move {
            let _ = stop_rx.await;
        },
        |_| {},
    ));

    // Registration: both resources, v1beta1, their own sockets.
    let mut regs = [registered(&mut reg_rx).await, registered(&mut reg_rx).await];
    regs.sort_by(|a, b| a.resource_name.cmp(&b.resource_name));
    assert_eq!(regs[0].resource_name, RESOURCE_GPU);
    assert_eq!(regs[1].resource_name, RESOURCE_SHARE);
    for r in &regs {
        assert_eq!(r.version, "v1beta1");
        let o = r.options.as_ref().unwrap();
        assert!(o.pre_start_required && o.get_preferred_allocation_available);
        assert!(dir.join(&r.endpoint).exists(), "{}", r.endpoint);
    }
    let mut whole = plugin(&dir, &regs[0].endpoint).await;
    let mut share = plugin(&dir, &regs[1].endpoint).await;
    let o = whole
        .get_device_plugin_options(dp::Empty {})
        .await
        .unwrap()
        .into_inner();
    assert!(o.pre_start_required);

    // ListAndWatch: the 8 devices by UUID, healthy after the first sample.
    let mut list = whole
        .list_and_watch(dp::Empty {})
        .await
        .unwrap()
        .into_inner();
    let devices = watch_until(&mut list, "8 healthy devices", |d| {
        d.len() == 8 && d.iter().all(|d| d.health == "Healthy")
    })
    .await;
    let ids: Vec<&str> = devices.iter().map(|d| d.id.as_str()).collect();
    assert_eq!(ids, uuids.iter().map(String::as_str).collect::<Vec<_>>());
    let mut slots = share
        .list_and_watch(dp::Empty {})
        .await
        .unwrap()
        .into_inner();
    let s = watch_until(&mut slots, "800 healthy slots", |d| {
        d.len() == 800 && d.iter().all(|d| d.health == "Healthy")
    })
    .await;
    assert_eq!(s[0].id, format!("{}::0", uuids[0]));

    // GPU 3 lost: Unhealthy in both lists at the next sample.
    sim.with(|s| s.inject(3, Fault::DeviceLost));
    let d = watch_until(&mut list, "GPU 3 unhealthy", |d| d[3].health == "Unhealthy").await;
    assert_eq!(d.iter().filter(|d| d.health == "Unhealthy").count(), 1);
    let s = watch_until(&mut slots, "GPU 3's slots unhealthy", |d| {
        d[300].health == "Unhealthy"
    })
    .await;
    assert_eq!(s.iter().filter(|d| d.health == "Unhealthy").count(), 100);

    // Pods zhisuan placed: "a" on GPUs 5 and 2, "s" half of GPU 4, "sick" on GPU 3.
    *pods.lock().unwrap() = vec![
        claim("a", 10, &[5, 2], None),
        claim("s", 11, &[4], Some(500)),
        claim("sick", 12, &[3], None),
    ];
    let healthy: Vec<String> = uuids
        .iter()
        .enumerate()
        .filter(|(i, _)| *i != 3)
        .map(|(_, u)| u.clone())
        .collect();
    let pref = whole
        .get_preferred_allocation(dp::PreferredAllocationRequest {
            container_requests: vec![dp::ContainerPreferredAllocationRequest {
                available_device_i_ds: healthy.clone(),
                must_include_device_i_ds: vec![],
                allocation_size: 2,
            }],
        })
        .await
        .unwrap()
        .into_inner();
    let preferred = pref.container_responses[0].device_i_ds.clone();
    assert_eq!(preferred, [uuids[5].clone(), uuids[2].clone()]);

    let a = whole
        .allocate(allocate_req(&preferred))
        .await
        .unwrap()
        .into_inner();
    let c = &a.container_responses[0];
    assert_eq!(
        c.envs["NVIDIA_VISIBLE_DEVICES"],
        format!("{},{}", uuids[2], uuids[5])
    );
    assert_eq!(c.envs["ZHISUAN_GPU_DEVICES"], "2,5");
    let paths: Vec<&str> = c.devices.iter().map(|d| d.host_path.as_str()).collect();
    assert_eq!(
        paths,
        [
            "/dev/nvidia2",
            "/dev/nvidia5",
            "/dev/nvidiactl",
            "/dev/nvidia-uvm",
            "/dev/nvidia-uvm-tools"
        ]
    );

    // The share: 50 slots of GPU 4, limited to half its SMs and memory.
    let slot_ids: Vec<String> = (0..50).map(|i| format!("{}::{i}", uuids[4])).collect();
    let a = share
        .allocate(allocate_req(&slot_ids))
        .await
        .unwrap()
        .into_inner();
    let c = &a.container_responses[0];
    assert_eq!(c.envs["NVIDIA_VISIBLE_DEVICES"], uuids[4]);
    assert_eq!(c.envs["CUDA_MPS_ACTIVE_THREAD_PERCENTAGE"], "50");
    let mem = sim.inventory()[4].memory_mib / 2;
    assert_eq!(
        c.envs["CUDA_MPS_PINNED_DEVICE_MEM_LIMIT"],
        format!("0={mem}M")
    );

    // Refusals name the pod and the device.
    let e = whole
        .allocate(allocate_req(&[uuids[6].clone(), uuids[7].clone()]))
        .await
        .unwrap_err();
    assert_eq!(e.code(), tonic::Code::FailedPrecondition);
    assert!(
        e.message().contains("pod t1/a is placed on device(s) 5,2"),
        "{}",
        e.message()
    );
    let e = whole
        .allocate(allocate_req(&[uuids[3].clone()]))
        .await
        .unwrap_err();
    assert!(
        e.message().contains("device 3 of node gpu-1 is unhealthy"),
        "{}",
        e.message()
    );
    let e = whole
        .allocate(allocate_req(&["GPU-nope".to_string()]))
        .await
        .unwrap_err();
    assert!(
        e.message()
            .contains("\"GPU-nope\" is not a device of node gpu-1"),
        "{}",
        e.message()
    );
    // Once the kubelet says "a" holds its devices, nothing else matches them.
    held.0.lock().unwrap().push(pr::PodResources {
        name: "a".into(),
        namespace: "t1".into(),
        containers: vec![pr::ContainerResources {
            name: "main".into(),
            devices: vec![pr::ContainerDevices {
                resource_name: RESOURCE_GPU.into(),
                device_ids: vec![uuids[5].clone(), uuids[2].clone()],
            }],
        }],
    });
    let e = whole.allocate(allocate_req(&preferred)).await.unwrap_err();
    assert!(
        e.message()
            .contains("no pod zhisuan placed on this node waits"),
        "{}",
        e.message()
    );

    // PreStartContainer: the holder per pod-resources must be the placed pod.
    whole
        .pre_start_container(dp::PreStartContainerRequest {
            devices_ids: preferred.clone(),
        })
        .await
        .unwrap();
    held.0.lock().unwrap()[0].containers[0].devices[0].device_ids =
        vec![uuids[0].clone(), uuids[1].clone()];
    let e = whole
        .pre_start_container(dp::PreStartContainerRequest {
            devices_ids: vec![uuids[0].clone(), uuids[1].clone()],
        })
        .await
        .unwrap_err();
    assert!(
        e.message().contains("pod t1/a was given device(s) 0,1")
            && e.message().contains("placed it on 5,2"),
        "{}",
        e.message()
    );

    // Kubelet restart: it wipes the plugin sockets and serves a new kubelet.sock.
    kubelet.abort();
    for r in &regs {
        std::fs::remove_file(dir.join(&r.endpoint)).unwrap();
    }
    std::fs::remove_file(dir.join("kubelet.sock")).unwrap();
    serve_uds(&dir.join("kubelet.sock"), kubelet_registration(reg_tx));
    let mut again = [registered(&mut reg_rx).await, registered(&mut reg_rx).await];
    again.sort_by(|a, b| a.resource_name.cmp(&b.resource_name));
    assert_eq!(again[0].resource_name, RESOURCE_GPU);
    assert_eq!(again[1].resource_name, RESOURCE_SHARE);
    let mut whole = plugin(&dir, &again[0].endpoint).await;
    let mut list = whole
        .list_and_watch(dp::Empty {})
        .await
        .unwrap()
        .into_inner();
    watch_until(&mut list, "the devices after re-registration", |d| {
        d.len() == 8
    })
    .await;

    let _ = stop_tx.send(());
    tokio::time::timeout(Duration::from_secs(20), agent_task)
        .await
        .unwrap()
        .unwrap()
        .unwrap();
}

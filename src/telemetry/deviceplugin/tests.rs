use super::plan::*;
use crate::telemetry::{DeviceInfo, Vendor};

fn node(vendor: Vendor, n: u32, unhealthy: &[u32]) -> NodeDevices {
    NodeDevices {
        node: "gpu-1".into(),
        vendor,
        devices: (0..n)
            .map(|i| DeviceInfo {
                index: i,
                model: "H100".into(),
                memory_mib: 81_920,
                uuid: format!("GPU-{i}"),
                product_name: String::new(),
                // Minor numbers need not follow the index.
                minor: Some(10 + i),
            })
            .collect(),
        unhealthy: unhealthy.to_vec(),
    }
}

fn pod(name: &str, created: i64, devices: &[u32], milli: Option<u32>) -> PodClaim {
    PodClaim::placed("t1", name, created, devices, milli)
}

fn ids(v: &[&str]) -> Vec<String> {
    v.iter().map(|s| s.to_string()).collect()
}

#[test]
fn devices_are_advertised_with_their_health_and_shares_as_slots() {
    let n = node(Vendor::Nvidia, 2, &[1]);
    let whole = n.advertised(Resource::Whole);
    assert_eq!(
        whole,
        [("GPU-0".to_string(), true), ("GPU-1".to_string(), false)]
    );
    let share = n.advertised(Resource::Share);
    assert_eq!(share.len(), 2 * SLOTS_PER_DEVICE as usize);
    assert_eq!(share[0], ("GPU-0::0".to_string(), true));
    assert_eq!(share[150], ("GPU-1::50".to_string(), false));
    assert_eq!(n.index_of("GPU-1::99", Resource::Share), Some(1));
    assert_eq!(n.index_of("GPU-1::100", Resource::Share), None);
    assert_eq!(n.index_of("GPU-1", Resource::Share), None);
    assert_eq!(n.index_of("GPU-7", Resource::Whole), None);
}

#[test]
fn the_preferred_ids_are_the_waiting_pods_placement() {
    let n = node(Vendor::Nvidia, 4, &[]);
    let all: Vec<String> = n
        .advertised(Resource::Whole)
        .into_iter()
        .map(|d| d.0)
        .collect();
    let pods = [pod("b", 20, &[3, 1], None), pod("a", 10, &[0, 2], None)];
    // The oldest waiting pod of that size is admitted first.
    let got = prefer(&n, &pods, &[], Resource::Whole, &all, &[], 2);
    assert_eq!(got, ids(&["GPU-0", "GPU-2"]));
    // Once "a" holds its devices, "b" is next.
    let held = [("t1".to_string(), "a".to_string())];
    let got = prefer(&n, &pods, &held, Resource::Whole, &all, &[], 2);
    assert_eq!(got, ids(&["GPU-3", "GPU-1"]));
    // A placement that is not free is no preference: the kubelet picks.
    let free = ids(&["GPU-0", "GPU-1"]);
    assert!(prefer(&n, &pods, &held, Resource::Whole, &free, &[], 2).is_empty());
    // Shares take free slots of the pod's one device.
    let shares: Vec<String> = n
        .advertised(Resource::Share)
        .into_iter()
        .map(|d| d.0)
        .collect();
    let s = [pod("s", 1, &[2], Some(250))];
    let got = prefer(&n, &s, &[], Resource::Share, &shares[5..], &[], 25);
    assert_eq!(got.len(), 25);
    assert!(got.iter().all(|i| i.starts_with("GPU-2::")), "{got:?}");
}

#[test]
fn whole_devices_get_exactly_their_uuids_and_device_nodes() {
    let n = node(Vendor::Nvidia, 4, &[]);
    let pods = [pod("a", 1, &[2, 0], None)];
    let a = allocate(&n, &pods, &[], Resource::Whole, &ids(&["GPU-2", "GPU-0"])).unwrap();
    assert_eq!(a.pod, "t1/a");
    assert_eq!(a.envs["NVIDIA_VISIBLE_DEVICES"], "GPU-0,GPU-2");
    assert_eq!(a.envs["ZHISUAN_GPU_DEVICES"], "0,2");
    assert!(!a.envs.contains_key("CUDA_MPS_ACTIVE_THREAD_PERCENTAGE"));
    let paths: Vec<&str> = a
        .device_nodes
        .iter()
        .map(|d| d.host_path.as_str())
        .collect();
    assert_eq!(
        paths,
        [
            "/dev/nvidia10",
            "/dev/nvidia12",
            "/dev/nvidiactl",
            "/dev/nvidia-uvm",
            "/dev/nvidia-uvm-tools"
        ]
    );
    assert!(a.device_nodes.iter().all(|d| d.permissions == "rw"));
}

#[test]
fn a_share_gets_its_device_and_the_mps_limits_of_its_share() {
    let n = node(Vendor::Nvidia, 4, &[]);
    let pods = [pod("s", 1, &[3], Some(500))];
    let slots: Vec<String> = (0..50).map(|i| format!("GPU-3::{}", i + 7)).collect();
    let a = allocate(&n, &pods, &[], Resource::Share, &slots).unwrap();
    assert_eq!(a.envs["NVIDIA_VISIBLE_DEVICES"], "GPU-3");
    assert_eq!(a.envs["CUDA_MPS_ACTIVE_THREAD_PERCENTAGE"], "50");
    assert_eq!(a.envs["CUDA_MPS_PINNED_DEVICE_MEM_LIMIT"], "0=40960M");
    assert_eq!(a.envs["ZHISUAN_GPU_MILLI"], "500");
    // A share of 0.37 rounds up to 37 slots (37%).
    let pods = [pod("s", 1, &[1], Some(365))];
    let slots: Vec<String> = (0..37).map(|i| format!("GPU-1::{i}")).collect();
    let a = allocate(&n, &pods, &[], Resource::Share, &slots).unwrap();
    assert_eq!(a.envs["CUDA_MPS_ACTIVE_THREAD_PERCENTAGE"], "37");
    assert_eq!(a.envs["CUDA_MPS_PINNED_DEVICE_MEM_LIMIT"], "0=30310M");
}

#[test]
fn ascend_devices_are_visible_by_index() {
    let n = node(Vendor::Huawei, 8, &[]);
    let pods = [pod("npu", 1, &[5], None)];
    let a = allocate(&n, &pods, &[], Resource::Whole, &ids(&["GPU-5"])).unwrap();
    assert_eq!(a.envs["ASCEND_VISIBLE_DEVICES"], "5");
    assert!(!a.envs.contains_key("NVIDIA_VISIBLE_DEVICES"));
    assert_eq!(a.device_nodes[0].host_path, "/dev/davinci15");
    assert!(a
        .device_nodes
        .iter()
        .any(|d| d.host_path == "/dev/davinci_manager"));
}

#[test]
fn requests_that_match_no_placement_are_refused_naming_pod_and_device() {
    let n = node(Vendor::Nvidia, 4, &[1]);
    let pods = [pod("a", 1, &[2], None)];
    // The kubelet offered another device than the placement.
    let e = allocate(&n, &pods, &[], Resource::Whole, &ids(&["GPU-3"])).unwrap_err();
    assert!(
        e.contains("device(s) 3") && e.contains("pod t1/a is placed on device(s) 2"),
        "{e}"
    );
    // No waiting pod of that size at all.
    let e = allocate(&n, &pods, &[], Resource::Whole, &ids(&["GPU-2", "GPU-3"])).unwrap_err();
    assert!(
        e.contains("no pod zhisuan placed on this node waits"),
        "{e}"
    );
    // The pod that holds its devices already is not waiting for them again.
    let held = [("t1".to_string(), "a".to_string())];
    let e = allocate(&n, &pods, &held, Resource::Whole, &ids(&["GPU-2"])).unwrap_err();
    assert!(e.contains("no pod zhisuan placed"), "{e}");
    // An unhealthy device is never handed out.
    let sick = [pod("b", 1, &[1], None)];
    let e = allocate(&n, &sick, &[], Resource::Whole, &ids(&["GPU-1"])).unwrap_err();
    assert!(e.contains("device 1 of node gpu-1 is unhealthy"), "{e}");
    // A placement on a device this node does not have.
    let foreign = [pod("c", 1, &[9], None)];
    let e = allocate(&n, &foreign, &[], Resource::Whole, &ids(&["GPU-0"])).unwrap_err();
    assert!(
        e.contains("pod t1/c's zhisuan.io/gpu-devices names device 9"),
        "{e}"
    );
    // Unknown ids, and a share split over two devices.
    let e = allocate(&n, &pods, &[], Resource::Whole, &ids(&["GPU-8"])).unwrap_err();
    assert!(e.contains("\"GPU-8\" is not a device of node gpu-1"), "{e}");
    let s = [pod("s", 1, &[0], Some(20))];
    let e = allocate(
        &n,
        &s,
        &[],
        Resource::Share,
        &ids(&["GPU-0::1", "GPU-2::1"]),
    )
    .unwrap_err();
    assert!(e.contains("a share must be on one device"), "{e}");
    // A pod not yet placed by zhisuan (no annotation) gets nothing.
    let bare = [pod("d", 1, &[], None)];
    let mut bare = bare;
    bare[0].whole = 1;
    let e = allocate(&n, &bare, &[], Resource::Whole, &ids(&["GPU-0"])).unwrap_err();
    assert!(e.contains("pod t1/d is placed on device(s) none"), "{e}");
}

#[test]
fn a_container_started_on_devices_of_another_placement_is_stopped() {
    let n = node(Vendor::Nvidia, 4, &[]);
    let pods = [pod("a", 1, &[0], None), pod("b", 2, &[1], None)];
    let owner = ("t1".to_string(), "b".to_string());
    assert!(check_start(&n, &pods, Resource::Whole, &ids(&["GPU-1"]), Some(&owner)).is_ok());
    let e = check_start(&n, &pods, Resource::Whole, &ids(&["GPU-0"]), Some(&owner)).unwrap_err();
    assert!(
        e.contains("pod t1/b was given device(s) 0") && e.contains("placed it on 1"),
        "{e}"
    );
    let stranger = ("t2".to_string(), "x".to_string());
    let e = check_start(
        &n,
        &pods,
        Resource::Whole,
        &ids(&["GPU-2"]),
        Some(&stranger),
    )
    .unwrap_err();
    assert!(e.contains("not a pod zhisuan placed here"), "{e}");
}

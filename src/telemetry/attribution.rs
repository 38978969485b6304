//! Per-pod energy attribution (plan layer: pure, no I/O, no clock).
//!
//! Each device's energy over a window is the delta of its own energy counter
//! (not utilisation × TDP). That energy is split among the pods holding the
//! device in proportion to their share of it: 1000 milli for a whole-GPU pod,
//! `zhisuan.io/gpu-milli` for a shared one. Holders come from the controller's
//! pod annotations and, for pods without them, from the driver's process list
//! mapped to pods through `/proc/<pid>/cgroup`. The unallocated share (and the
//! whole device when nobody holds it) is idle. All arithmetic is integer
//! millijoules, so Σ pods + idle = device energy exactly.

use std::collections::BTreeMap;

/// Pod annotation: device indices the controller bound a pod to (`"0,1"`).
pub const ANNOTATION_GPU_DEVICES: &str = "zhisuan.io/gpu-devices";
/// Pod annotation: milli-share of one device for a shared pod (absent = whole GPUs).
pub const ANNOTATION_GPU_MILLI: &str = "zhisuan.io/gpu-milli";

/// One whole device, in milli-shares.
pub const WHOLE_DEVICE_MILLI: u32 = 1000;

/// Identity of a pod on this node.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct PodRef {
    pub namespace: String,
    pub name: String,
    pub uid: String,
}

/// Devices a pod was bound to, read from its annotations.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PodDevices {
    pub pod: PodRef,
    /// The container that holds the devices (empty when not known, e.g. a
    /// pod found only through its processes).
    pub container: String,
    pub devices: Vec<u32>,
    /// Milli-share per device for a shared pod; `None` = whole devices.
    pub milli: Option<u32>,
}

/// Device indices and the optional milli-share, as annotated on a pod.
pub type AnnotatedDevices = (Vec<u32>, Option<u32>);

/// Reads `zhisuan.io/gpu-devices` / `zhisuan.io/gpu-milli`. `Ok(None)` when the
/// pod carries no device annotation (not placed by zhisuan).
pub fn devices_from_annotations(
    annotations: &BTreeMap<String, String>,
) -> Result<Option<AnnotatedDevices>, String> {
    let Some(list) = annotations.get(ANNOTATION_GPU_DEVICES) else {
        return Ok(None);
    };
    let mut devices = Vec::new();
    for part in list.split(',').map(str::trim).filter(|p| !p.is_empty()) {
        let d = part.parse::<u32>().map_err(|_| {
            format!("annotation {ANNOTATION_GPU_DEVICES}: '{part}' is not a device index (expected e.g. \"0,1\")")
        })?;
        if !devices.contains(&d) {
            devices.push(d);
        }
    }
    let milli = match annotations.get(ANNOTATION_GPU_MILLI) {
        None => None,
        Some(m) => {
            let v = m
                .trim()
                .parse::<u32>()
                .ok()
                .filter(|v| (1..=1000).contains(v));
            Some(v.ok_or_else(|| {
                format!("annotation {ANNOTATION_GPU_MILLI}: '{m}' must be an integer in 1..=1000")
            })?)
        }
    };
    Ok(Some((devices, milli)))
}

/// The pod uid a process belongs to, from the text of `/proc/<pid>/cgroup`.
/// Handles the cgroupfs driver (`/kubepods/burstable/pod<uid>/<ctr>`) and the
/// systemd driver (`kubepods-burstable-pod<uid_with_underscores>.slice`).
pub fn pod_uid_from_cgroup(cgroup: &str) -> Option<String> {
    for line in cgroup.lines() {
        // hierarchy-id:controllers:path
        let path = line.splitn(3, ':').nth(2).unwrap_or(line);
        for segment in path.split('/') {
            let seg = segment.strip_suffix(".slice").unwrap_or(segment);
            // systemd: kubepods-besteffort-pod<uid>  /  cgroupfs: pod<uid>
            let candidate = match seg.rfind("-pod") {
                Some(i) if seg.starts_with("kubepods") => &seg[i + 4..],
                _ => match seg.strip_prefix("pod") {
                    Some(rest) => rest,
                    None => continue,
                },
            };
            let uid = candidate.replace('_', "-");
            if is_uid(&uid) {
                return Some(uid);
            }
        }
    }
    None
}

fn is_uid(s: &str) -> bool {
    s.len() == 36
        && s.bytes().enumerate().all(|(i, c)| match i {
            8 | 13 | 18 | 23 => c == b'-',
            _ => c.is_ascii_hexdigit(),
        })
}

/// A driver-reported process, resolved to the pod that owns it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ProcessOwner {
    pub device: u32,
    pub pod_uid: String,
}

/// One pod's share of one device.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Share {
    /// Index into the `pods` slice given to [`shares`].
    pub pod: usize,
    pub device: u32,
    pub milli: u32,
}

/// Who holds which device. Annotated pods hold their annotated devices (a
/// binding holds the device whether or not its process is running right now);
/// a pod with a process on a device it has no annotation for — one not placed
/// by zhisuan — holds that device whole.
pub fn shares(pods: &[PodDevices], owners: &[ProcessOwner]) -> Vec<Share> {
    let mut out = Vec::new();
    for (i, p) in pods.iter().enumerate() {
        let milli = p.milli.unwrap_or(WHOLE_DEVICE_MILLI);
        for &d in &p.devices {
            out.push(Share {
                pod: i,
                device: d,
                milli,
            });
        }
    }
    for o in owners {
        let Some(i) = pods.iter().position(|p| p.pod.uid == o.pod_uid) else {
            continue;
        };
        if !out.iter().any(|s| s.pod == i && s.device == o.device) {
            out.push(Share {
                pod: i,
                device: o.device,
                milli: WHOLE_DEVICE_MILLI,
            });
        }
    }
    out
}

/// Energy a device counted over a window from two readings of its counter.
/// A counter that went backwards was reset (driver reload): everything since
/// the reset, i.e. the new value, belongs to this window.
pub fn counter_delta(start_mj: u64, end_mj: u64) -> u64 {
    if end_mj >= start_mj {
        end_mj - start_mj
    } else {
        end_mj
    }
}

/// Energy one pod drew from one device over the window.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PodEnergy {
    pub pod: usize,
    pub device: u32,
    pub energy_mj: u64,
}

/// Result of one window: per-pod energy and per-device idle energy.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Attribution {
    pub pods: Vec<PodEnergy>,
    /// `(device, idle mJ)` for every device in the input, in input order.
    pub idle: Vec<(u32, u64)>,
}

impl Attribution {
    /// Σ pods + idle for one device: always its energy delta.
    pub fn device_total(&self, device: u32) -> u64 {
        let pods: u64 = self
            .pods
            .iter()
            .filter(|p| p.device == device)
            .map(|p| p.energy_mj)
            .sum();
        let idle: u64 = self
            .idle
            .iter()
            .filter(|(d, _)| *d == device)
            .map(|(_, e)| *e)
            .sum();
        pods + idle
    }
}

/// Splits each device's window energy (`(device, mJ)`) among its shares.
/// Weights are milli-shares over max(1000, Σ milli): a device shared below
/// capacity leaves the free share idle; an over-committed one is split
/// proportionally. Rounding is down, and the rounding remainder (< one mJ per
/// pod) is idle, so every device adds up exactly.
pub fn attribute(device_energy: &[(u32, u64)], shares: &[Share]) -> Attribution {
    let mut out = Attribution::default();
    for &(device, energy) in device_energy {
        let on_device = || shares.iter().filter(move |s| s.device == device);
        let total_milli: u64 = on_device().map(|s| s.milli as u64).sum();
        let denominator = total_milli.max(WHOLE_DEVICE_MILLI as u64) as u128;
        let mut given = 0u64;
        for s in on_device() {
            let e = (energy as u128 * s.milli as u128 / denominator) as u64;
            given += e;
            out.pods.push(PodEnergy {
                pod: s.pod,
                device,
                energy_mj: e,
            });
        }
        out.idle.push((device, energy - given));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pod(name: &str, uid: &str, devices: &[u32], milli: Option<u32>) -> PodDevices {
        PodDevices {
            pod: PodRef {
                namespace: "ns".into(),
                name: name.into(),
                uid: uid.into(),
            },
            container: "main".into(),
            devices: devices.to_vec(),
            milli,
        }
    }

    const UID_A: &str = "0b6c1a2e-7d7e-4f3c-9a51-2f3d4e5f6a7b";
    const UID_B: &str = "1c7d2b3f-8e8f-4a4d-8b62-3a4e5f6a7b8c";

    #[test]
    fn whole_gpu_pods_take_their_devices_and_free_devices_are_idle() {
        // Hand-computed: device 0 → 1000 J to A; device 1 → 600 J to A;
        // device 2 (nobody) → 250 J idle.
        let pods = [pod("a", UID_A, &[0, 1], None)];
        let sh = shares(&pods, &[]);
        let a = attribute(&[(0, 1_000_000), (1, 600_000), (2, 250_000)], &sh);
        assert_eq!(
            a.pods,
            vec![
                PodEnergy {
                    pod: 0,
                    device: 0,
                    energy_mj: 1_000_000
                },
                PodEnergy {
                    pod: 0,
                    device: 1,
                    energy_mj: 600_000
                },
            ]
        );
        assert_eq!(a.idle, vec![(0, 0), (1, 0), (2, 250_000)]);
    }

    #[test]
    fn shared_device_splits_by_milli_and_free_share_is_idle() {
        // 900 J on one device; A holds 500 milli, B 250 milli, 250 free.
        // A = 900 × 500/1000 = 450 J, B = 225 J, idle = 225 J.
        let pods = [
            pod("a", UID_A, &[3], Some(500)),
            pod("b", UID_B, &[3], Some(250)),
        ];
        let a = attribute(&[(3, 900_000)], &shares(&pods, &[]));
        assert_eq!(a.pods[0].energy_mj, 450_000);
        assert_eq!(a.pods[1].energy_mj, 225_000);
        assert_eq!(a.idle, vec![(3, 225_000)]);
    }

    #[test]
    fn rounding_remainder_goes_to_idle_and_totals_are_exact() {
        // 1000 mJ among three pods of 333 milli: 333 mJ each (333.0 exactly:
        // 1000 × 333 / 1000), 1 mJ idle. Then 10 mJ: 3 each, 1 idle.
        let pods = [
            pod("a", UID_A, &[0], Some(333)),
            pod("b", UID_B, &[0], Some(333)),
            pod("c", "c", &[0], Some(333)),
        ];
        let sh = shares(&pods, &[]);
        let a = attribute(&[(0, 1_000)], &sh);
        assert!(a.pods.iter().all(|p| p.energy_mj == 333));
        assert_eq!(a.idle, vec![(0, 1)]);
        let a = attribute(&[(0, 10)], &sh);
        assert!(a.pods.iter().all(|p| p.energy_mj == 3));
        assert_eq!(a.device_total(0), 10);
    }

    #[test]
    fn overcommitted_device_is_split_proportionally_with_no_idle_share() {
        // Two whole-device holders (one annotated, one found by process):
        // 2000 milli over 1000 → half each of 700 mJ.
        let pods = [pod("a", UID_A, &[1], None), pod("b", UID_B, &[], None)];
        let owners = [ProcessOwner {
            device: 1,
            pod_uid: UID_B.into(),
        }];
        let a = attribute(&[(1, 700)], &shares(&pods, &owners));
        assert_eq!(a.pods.len(), 2);
        assert!(a.pods.iter().all(|p| p.energy_mj == 350));
        assert_eq!(a.idle, vec![(1, 0)]);
    }

    #[test]
    fn a_process_on_an_annotated_device_adds_no_second_share() {
        let pods = [pod("a", UID_A, &[0], Some(500))];
        let owners = [
            ProcessOwner {
                device: 0,
                pod_uid: UID_A.into(),
            },
            ProcessOwner {
                device: 0,
                pod_uid: "unknown-pod".into(),
            },
        ];
        let sh = shares(&pods, &owners);
        assert_eq!(
            sh,
            vec![Share {
                pod: 0,
                device: 0,
                milli: 500
            }]
        );
    }

    #[test]
    fn sum_of_pods_and_idle_equals_device_energy_for_arbitrary_splits() {
        use proptest::prelude::*;
        proptest!(|(energy in 0u64..u64::MAX / 2,
                    millis in proptest::collection::vec(1u32..=1000, 0..12))| {
            let pods: Vec<PodDevices> = millis
                .iter()
                .enumerate()
                .map(|(i, m)| pod(&format!("p{i}"), &format!("u{i}"), &[7], Some(*m)))
                .collect();
            let a = attribute(&[(7, energy)], &shares(&pods, &[]));
            prop_assert_eq!(a.device_total(7), energy);
            let sum: u64 = millis.iter().map(|m| *m as u64).sum();
            // Each pod within 1 mJ of its exact share.
            for (p, m) in a.pods.iter().zip(&millis) {
                let exact = energy as f64 * *m as f64 / sum.max(1000) as f64;
                prop_assert!((p.energy_mj as f64 - exact).abs() <= 1.0 + exact * 1e-12);
            }
        });
    }

    #[test]
    fn counter_delta_handles_a_reset() {
        assert_eq!(counter_delta(1_000, 1_500), 500);
        assert_eq!(counter_delta(1_000, 1_000), 0);
        assert_eq!(counter_delta(9_000_000, 40), 40);
    }

    #[test]
    fn annotations_parse_and_reject_bad_values_naming_the_annotation() {
        let mut ann = BTreeMap::new();
        assert_eq!(devices_from_annotations(&ann), Ok(None));
        ann.insert(ANNOTATION_GPU_DEVICES.to_string(), "0, 2,2".to_string());
        assert_eq!(devices_from_annotations(&ann), Ok(Some((vec![0, 2], None))));
        ann.insert(ANNOTATION_GPU_MILLI.to_string(), "250".to_string());
        assert_eq!(
            devices_from_annotations(&ann),
            Ok(Some((vec![0, 2], Some(250))))
        );
        ann.insert(ANNOTATION_GPU_MILLI.to_string(), "1500".to_string());
        let err = devices_from_annotations(&ann).unwrap_err();
        assert!(err.contains(ANNOTATION_GPU_MILLI) && err.contains("1..=1000"));
        ann.insert(ANNOTATION_GPU_DEVICES.to_string(), "0,x".to_string());
        let err = devices_from_annotations(&ann).unwrap_err();
        assert!(err.contains(ANNOTATION_GPU_DEVICES) && err.contains("'x'"));
    }

    #[test]
    fn cgroup_paths_resolve_to_pod_uids() {
        let cgroupfs =
            "12:devices:/kubepods/burstable/pod0b6c1a2e-7d7e-4f3c-9a51-2f3d4e5f6a7b/3f2a\n";
        assert_eq!(pod_uid_from_cgroup(cgroupfs).as_deref(), Some(UID_A));
        let systemd_v2 = "0::/kubepods.slice/kubepods-besteffort.slice/kubepods-besteffort-pod1c7d2b3f_8e8f_4a4d_8b62_3a4e5f6a7b8c.slice/cri-containerd-abc.scope\n";
        assert_eq!(pod_uid_from_cgroup(systemd_v2).as_deref(), Some(UID_B));
        let guaranteed =
            "0::/kubepods.slice/kubepods-pod1c7d2b3f_8e8f_4a4d_8b62_3a4e5f6a7b8c.slice/x\n";
        assert_eq!(pod_uid_from_cgroup(guaranteed).as_deref(), Some(UID_B));
        assert_eq!(
            pod_uid_from_cgroup("0::/user.slice/user-0.slice/session-1.scope\n"),
            None
        );
        assert_eq!(pod_uid_from_cgroup("0::/kubepods/podnot-a-uid/x\n"), None);
    }
}

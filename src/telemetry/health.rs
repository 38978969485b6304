//! Device health verdicts (plan layer: pure, no I/O, no clock — time is the
//! sample sequence number).
//!
//! A device is unhealthy while it is lost, thermally or hardware throttled,
//! waiting for a memory repair, reported unhealthy by its vendor, or within
//! `hold_samples` samples of a new critical XID or uncorrected ECC error. The
//! verdict for a sample is ready as soon as the sample is read, so the agent
//! takes a device out of placement within one sampling period and puts it back
//! once the condition has cleared.

use super::DeviceReading;
use serde::Serialize;

/// XIDs that a user application causes (illegal address, page fault, kill):
/// they say nothing about the device. The NVIDIA device plugin skips the same.
pub const APPLICATION_XIDS: [u32; 6] = [13, 31, 43, 45, 68, 109];

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HealthPolicy {
    /// Samples a device stays out after a new critical XID or uncorrected ECC error.
    pub hold_samples: u64,
    /// Temperature at or above which a device is out (0 = no limit).
    pub max_temperature_c: u32,
}

impl Default for HealthPolicy {
    fn default() -> Self {
        HealthPolicy {
            hold_samples: 3,
            max_temperature_c: 0,
        }
    }
}

/// Why a device is out.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Reason {
    Lost,
    Xid { code: u32 },
    EccUncorrected { errors: u64 },
    ThermalThrottle,
    HardwareSlowdown,
    MemoryRepairPending,
    OverTemperature { celsius: u32 },
    VendorReported,
}

impl std::fmt::Display for Reason {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Reason::Lost => write!(f, "device lost"),
            Reason::Xid { code } => write!(f, "XID {code}"),
            Reason::EccUncorrected { errors } => write!(f, "{errors} uncorrected ECC error(s)"),
            Reason::ThermalThrottle => write!(f, "thermal throttle"),
            Reason::HardwareSlowdown => write!(f, "hardware slowdown"),
            Reason::MemoryRepairPending => write!(f, "memory repair pending reset"),
            Reason::OverTemperature { celsius } => write!(f, "{celsius} °C"),
            Reason::VendorReported => write!(f, "vendor reports unhealthy"),
        }
    }
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Verdict {
    pub index: u32,
    pub healthy: bool,
    pub reasons: Vec<Reason>,
}

#[derive(Clone, Debug, Default)]
struct DeviceState {
    xid_count: u64,
    ecc_uncorrected: u64,
    /// Sample number until which the device is held out, and why.
    hold_until: u64,
    hold_reason: Option<Reason>,
}

/// Carries counter baselines and hold windows from one sample to the next.
#[derive(Clone, Debug, Default)]
pub struct HealthTracker {
    policy: HealthPolicy,
    seq: u64,
    devices: Vec<DeviceState>,
}

impl HealthTracker {
    pub fn new(policy: HealthPolicy) -> Self {
        HealthTracker {
            policy,
            seq: 0,
            devices: Vec::new(),
        }
    }

    /// Verdicts for one sample, written to `out` in reading order.
    pub fn observe(&mut self, readings: &[DeviceReading], out: &mut Vec<Verdict>) {
        self.seq += 1;
        out.clear();
        for r in readings {
            let i = r.index as usize;
            if self.devices.len() <= i {
                self.devices.resize(i + 1, DeviceState::default());
            }
            let st = &mut self.devices[i];
            let mut reasons = Vec::new();
            if r.lost {
                reasons.push(Reason::Lost);
            } else {
                // Counters only move forward; a backwards step is a driver
                // reload and becomes the new baseline.
                // Counts already there at first sight are events too (the
                // NVML backend counts from zero; a simulator may start faulty).
                let new_xid = r.xid_count > st.xid_count;
                if new_xid && !APPLICATION_XIDS.contains(&r.last_xid) {
                    st.hold_until = self.seq + self.policy.hold_samples;
                    st.hold_reason = Some(Reason::Xid { code: r.last_xid });
                }
                let new_ecc = r.ecc_uncorrected > st.ecc_uncorrected;
                if new_ecc {
                    st.hold_until = self.seq + self.policy.hold_samples;
                    st.hold_reason = Some(Reason::EccUncorrected {
                        errors: r.ecc_uncorrected,
                    });
                }
                st.xid_count = r.xid_count;
                st.ecc_uncorrected = r.ecc_uncorrected;

                if self.seq < st.hold_until {
                    reasons.extend(st.hold_reason.clone());
                }
                if r.throttle.thermal {
                    reasons.push(Reason::ThermalThrottle);
                }
                if r.throttle.hw_slowdown && !r.throttle.thermal {
                    reasons.push(Reason::HardwareSlowdown);
                }
                if r.memory_repair_pending {
                    reasons.push(Reason::MemoryRepairPending);
                }
                if self.policy.max_temperature_c > 0
                    && r.temperature_c >= self.policy.max_temperature_c
                {
                    reasons.push(Reason::OverTemperature {
                        celsius: r.temperature_c,
                    });
                }
                if r.vendor_healthy == Some(false) {
                    reasons.push(Reason::VendorReported);
                }
            }
            out.push(Verdict {
                index: r.index,
                healthy: reasons.is_empty(),
                reasons,
            });
        }
    }
}

/// Indices of unhealthy devices, ascending.
pub fn unhealthy_indices(verdicts: &[Verdict]) -> Vec<u32> {
    let mut v: Vec<u32> = verdicts
        .iter()
        .filter(|v| !v.healthy)
        .map(|v| v.index)
        .collect();
    v.sort_unstable();
    v
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::telemetry::Throttle;

    fn healthy(n: u32) -> Vec<DeviceReading> {
        (0..n)
            .map(|index| DeviceReading {
                index,
                ..DeviceReading::default()
            })
            .collect()
    }

    fn run(t: &mut HealthTracker, r: &[DeviceReading]) -> Vec<u32> {
        let mut v = Vec::new();
        t.observe(r, &mut v);
        unhealthy_indices(&v)
    }

    #[test]
    fn critical_xid_takes_device_out_for_hold_samples_then_back() {
        let mut t = HealthTracker::new(HealthPolicy {
            hold_samples: 2,
            ..HealthPolicy::default()
        });
        let mut r = healthy(4);
        assert!(run(&mut t, &r).is_empty());
        r[2].xid_count = 1;
        r[2].last_xid = 79;
        let mut v = Vec::new();
        t.observe(&r, &mut v);
        assert_eq!(unhealthy_indices(&v), [2], "out in the same sample");
        assert_eq!(v[2].reasons, [Reason::Xid { code: 79 }]);
        assert_eq!(run(&mut t, &r), [2], "held");
        assert!(run(&mut t, &r).is_empty(), "back after the hold");
    }

    #[test]
    fn application_xids_do_not_mark_the_device() {
        let mut t = HealthTracker::new(HealthPolicy::default());
        let mut r = healthy(1);
        run(&mut t, &r);
        r[0].xid_count = 1;
        r[0].last_xid = 13;
        assert!(run(&mut t, &r).is_empty());
        r[0].xid_count = 2;
        r[0].last_xid = 48;
        assert_eq!(run(&mut t, &r), [0]);
    }

    #[test]
    fn new_uncorrected_ecc_counts_but_old_ones_set_the_baseline() {
        let mut t = HealthTracker::new(HealthPolicy {
            hold_samples: 1,
            ..HealthPolicy::default()
        });
        let mut r = healthy(2);
        r[0].ecc_uncorrected = 5; // errors before the agent started
        assert_eq!(run(&mut t, &r), [0], "first sight of errors counts");
        assert!(run(&mut t, &r).is_empty());
        r[1].ecc_uncorrected = 1;
        assert_eq!(run(&mut t, &r), [1]);
        assert!(run(&mut t, &r).is_empty());
    }

    #[test]
    fn lasting_conditions_hold_exactly_while_present() {
        let mut t = HealthTracker::new(HealthPolicy {
            hold_samples: 3,
            max_temperature_c: 90,
        });
        let mut r = healthy(6);
        r[0].lost = true;
        r[1].throttle = Throttle {
            thermal: true,
            hw_slowdown: true,
            power_cap: false,
        };
        r[2].throttle.power_cap = true; // normal under load
        r[3].memory_repair_pending = true;
        r[4].temperature_c = 95;
        r[5].vendor_healthy = Some(false);
        let mut v = Vec::new();
        t.observe(&r, &mut v);
        assert_eq!(unhealthy_indices(&v), [0, 1, 3, 4, 5]);
        assert_eq!(v[1].reasons, [Reason::ThermalThrottle]);
        assert_eq!(v[4].reasons, [Reason::OverTemperature { celsius: 95 }]);
        let r = healthy(6);
        assert!(run(&mut t, &r).is_empty(), "all back the next sample");
    }

    #[test]
    fn counter_going_backwards_is_a_new_baseline_not_an_event() {
        let mut t = HealthTracker::new(HealthPolicy {
            hold_samples: 1,
            ..HealthPolicy::default()
        });
        let mut r = healthy(1);
        r[0].xid_count = 4;
        r[0].last_xid = 79;
        assert_eq!(run(&mut t, &r), [0], "first sight counts");
        assert!(run(&mut t, &r).is_empty(), "hold over, no new event");
        r[0].xid_count = 0;
        r[0].last_xid = 0;
        assert!(run(&mut t, &r).is_empty());
        r[0].xid_count = 1;
        r[0].last_xid = 79;
        assert_eq!(run(&mut t, &r), [0], "counting again from the new baseline");
    }
}

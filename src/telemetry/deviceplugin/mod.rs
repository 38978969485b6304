//! The kubelet device plugin in the node agent (issue #14): the devices the
//! controller picks are the devices the container gets.
//!
//! The agent serves two resources over the kubelet's device-plugin API
//! (v1beta1, unix sockets in `/var/lib/kubelet/device-plugins`):
//! `zhisuan.io/gpu` (whole devices, id = the device's UUID) and
//! `zhisuan.io/gpu-share` (one id per 1% slot of each device). Devices the
//! agent's health verdicts take out are listed Unhealthy in ListAndWatch
//! within one sample. The controller's pods ask for these resources instead of
//! the vendor's; the kubelet allocates ids exclusively, GetPreferredAllocation
//! steers it to the devices in the pod's `zhisuan.io/gpu-devices`, Allocate
//! answers only when the ids are exactly a waiting pod's placement (and
//! refuses with the pod and device named otherwise), and PreStartContainer
//! checks through the kubelet's pod-resources API that the pod holding the
//! ids is that pod.
//!
//! Layers: [`plan`] decides (pure), [`pods`] reads pods into plain claims,
//! [`service`] speaks gRPC, [`register`] serves the sockets and registers.

pub mod plan;
pub mod pods;
pub mod register;
pub mod service;
#[cfg(test)]
mod tests;

/// Generated from `proto/` by `build.rs`.
pub mod proto {
    /// The device-plugin API (kubelet ↔ plugin).
    pub mod v1beta1 {
        #![allow(clippy::all, missing_docs)]
        tonic::include_proto!("v1beta1");
    }
    /// The kubelet's pod-resources API (who holds which device ids).
    pub mod podresources {
        #![allow(clippy::all, missing_docs)]
        tonic::include_proto!("v1");
    }
}

pub use plan::{NodeDevices, PodClaim, Resource, RESOURCE_GPU, RESOURCE_SHARE};
pub use pods::PodSource;
pub use service::PluginState;

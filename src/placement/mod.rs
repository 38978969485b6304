//! Pure placement engine (issue #2): cluster model, requests, policies.
//!
//! No kube, no I/O, no clock. A [`Cluster`] holds nodes in dense arrays (CPU
//! milli, memory MiB, accelerator model id, per-device free milli-share and
//! health flag, labels). A [`Request`] asks for CPU only, a milli-share of ONE
//! device, or whole devices on one node, optionally restricted to accelerator
//! models ([`ModelSet`]) and node labels. An [`Engine`] owns the cluster, picks
//! nodes under a [`Policy`] chosen at run time by name, and returns
//! [`Decision`]s with node AND device indices; it allocates and releases them,
//! and places gangs all-or-nothing with rollback.
//!
//! ```
//! use zhisuan::placement::{Cluster, Engine, NodeSpec, Policy, Request};
//! let mut cluster = Cluster::new();
//! cluster.add_node(&NodeSpec { name: "n0".into(), cpu_milli: 64000, memory_mib: 262144,
//!     gpus: 8, model: "A10".into(), labels: vec![] }).unwrap();
//! let mut engine = Engine::new(cluster, "fgd".parse::<Policy>().unwrap(), 1);
//! let d = engine.schedule(&Request::shared(4000, 8192, 500)).unwrap();
//! assert_eq!((d.node, d.devices.len()), (0, 1));
//! ```

mod cluster;
mod engine;
mod fgd;
mod model;
mod policy;
mod recall;
mod request;
pub mod topology;

pub use cluster::{Cluster, NodeSpec, MAX_DEVICES_PER_NODE, NO_MODEL};
pub use engine::{Engine, FitReport, GangError, Score};
pub(crate) use fgd::FxBuild;
pub use fgd::{Shape, ShapeCounter, Shapes};
pub use model::{ModelId, ModelSet, ModelTable, MAX_MODELS};
pub use policy::Policy;
pub use request::{Decision, DeviceMask, GpuDemand, Request, MILLI_PER_GPU};
pub use topology::{DomainPlaced, Level, TopologyAsk, TopologyError, TopologySpec};

#[cfg(test)]
mod tests;

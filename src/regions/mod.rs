//! East Data, West Computing (东数西算): multi-region placement (issue #3).
//!
//! - [`catalog`]: regions (hubs / clusters, PUE, green share, price, grid
//!   factor, accelerator inventory), user regions and the network graph.
//! - [`cost`]: the cost model, one pure function of plain data.
//! - [`job`]: a job as region choice sees it, checked against a catalog.
//! - [`plan`]: region choice (hard filters, then a policy's score).
//! - [`explain`]: the explanation record of every decision, for people
//!   and JSON.
//! - [`nodes`]: the catalog's nodes and the least-power tie order.
//! - [`shift`]: time shifting (greener or cheaper hours before a deadline).
//!
//! The second level — the placement engine over a region's nodes, gangs
//! never spanning regions — is the scheduler's ([`crate::schedule`]).
//!
//! Plan layer: no clock (time is passed in), no I/O except loading a catalog.

pub mod catalog;
pub mod cost;
pub mod explain;
pub mod job;
pub mod nodes;
pub mod plan;
pub mod shift;

pub use catalog::{Catalog, Region, Side};
pub use cost::{estimate, CostEstimate, Site, Usage};
pub use explain::{Explanation, ExplanationView, Filter, Verdict};
pub use job::{JobKind, JobSpec, ResolvedJob, SpecError};
pub use plan::{InventoryIndex, RegionChooser, RegionPolicy};

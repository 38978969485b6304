//! The job contract (domain core): one job spec, phase, placement and status
//! for every entry point — the controller's CRDs, the API, the simulated
//! cluster of `zhisuan sim`, the demo and `zhisuan api --backend world`.
//! Imports no edge module (`operator`, `api`, `telemetry`, `sim`, `demo`).

mod phase;
mod status;
mod text;
mod vendor;
mod view;

pub use phase::Phase;
pub use status::*;
pub use vendor::*;
pub use view::*;

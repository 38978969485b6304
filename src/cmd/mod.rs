//! Entry points that compose edges: `zhisuan api` wires the quota API to a
//! job backend (Kubernetes through `operator`, or the simulated cluster of
//! `sim`), so `api` itself knows neither.

pub mod admin_key;
pub mod api;

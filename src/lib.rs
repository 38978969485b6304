//! zhisuan (智算): a GPU/NPU cluster scheduler for China's national compute network.
//!
//! One pipeline: observe (watch / telemetry) → snapshot (plain data) →
//! plan (pure functions: admission, placement, metering) → act (bind, patch
//! status, write ledger).
//!
//! The domain core — `placement`, `regions`, `ledger` — imports nothing of
//! `operator`, `api`, `telemetry`, `sim` or `demo`; packing knows no money.

pub mod error;
pub mod jobs;
pub mod logs;
pub mod progress;
pub mod schedule;

// Domain core (plan layer, plus the ledger's storage).
pub mod ledger;
pub mod placement;
pub mod regions;

// Edges: observe and act.
pub mod api;
pub mod demo;
pub mod operator;
pub mod sim;
pub mod telemetry;

// Entry points: compose the edges into the commands users run.
pub mod cmd;

/// The allocator of everything built on this crate — the shipped binary,
/// and so the tests and benches that measure it: mimalloc, which costs the
/// controller about a tenth less CPU per bind than glibc's malloc, while
/// small processes (the node agent, a replay) hold more memory
/// (docs/operator.md, "Benchmark", "The allocator").
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

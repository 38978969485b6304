//! Accelerator telemetry (NVML, sim, NPU exporter) and the node agent (issue #5).

pub mod cli;

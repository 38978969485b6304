//! Simulators: trace replay (issue #2) and the multi-region simulation (issue #3).

pub mod backend;
pub mod compare;
pub mod generate;
pub mod jobtable;
pub mod openb;
pub mod outcomes;
pub mod regions;
pub mod replay;
pub mod sweep;
pub mod workload;
pub mod world;

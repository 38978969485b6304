//! Kubernetes operator: CRDs, controller, leader election (issue #4).

pub mod cli;
pub mod crd;
pub mod validate;

//! Kubernetes operator: CRDs, controller, leader election (issue #4).

pub mod cli;

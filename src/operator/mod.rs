//! Kubernetes operator (issue #4): CRDs, controller, leader election.
//!
//! Pipeline: observe (reflectors) → [`snapshot`] (plain data) →
//! [`crate::schedule`] (pure: quota, fair share, preemption, placement) → act
//! ([`controller`]: create pods, bind, patch status), only while holding the
//! leader Lease ([`leader`]); per-object lifecycle (finalizer, cleanup, phase
//! from owned pods) in kube-rs `Controller` reconcilers (`reconcile`).

mod act;
mod caches;
pub mod cli;
pub mod controller;
pub mod crd;
mod echo;
mod events;
pub mod gateway_models;
pub mod jobs;
mod kept;
pub mod leader;
pub mod members;
pub mod metering;
pub mod metrics;
pub mod pods;
pub mod podsecurity;
mod reconcile;
pub mod regions;
mod sentences;
mod shared;
pub mod snapshot;
mod snapshotter;
pub mod tenancy;
pub mod tokens;
mod triggers;
pub mod usage;
pub mod validate;
pub mod vouchers;

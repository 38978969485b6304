//! Accounting (issue #6): an append-only, double-entry ledger of per-tenant
//! GPU time, energy, carbon and tokens, priced by a versioned rate card and
//! paid partly by compute vouchers (算力券).
//!
//! Layers:
//! - plan (pure, no I/O, no clock): [`types`] (records with deterministic
//!   ids, validation), [`money`] (integer fen, rounding rules), [`rating`]
//!   (rate cards), [`vouchers`] (redemption), [`tokens`] (counter deltas),
//!   [`plan`] (a batch's rows and journal entry);
//! - act: [`Ledger`] stores it in SQLite (default) or PostgreSQL, one schema,
//!   one transaction per call, each journal entry and redemption a link of
//!   a hash chain ([`chain`]); [`statement`] reads it back; [`metrics`]
//!   exports it.

pub mod calls;
pub mod chain;
pub mod cli;
mod cursors;
pub mod energy;
pub mod error;
pub mod idempotency;
mod ingest;
pub mod journal;
mod keys;
pub mod metrics;
pub mod money;
pub mod pending;
pub mod plan;
pub mod quota;
pub mod quota_tree;
pub mod rating;
pub mod routing;
mod schema;
pub mod series;
mod sql;
pub mod statement;
mod store;
pub mod tokens;
pub mod totals;
pub mod types;
pub mod vouchers;
pub mod windows;

/// The test PostgreSQL server of the integration tests, for unit tests.
#[cfg(test)]
#[path = "../../tests/support/pg.rs"]
mod test_pg;

pub use calls::{CallQuery, CallRecord, STATUS_CLIENT_GONE};
pub use chain::{ChainBreak, ChainHead, ChainReport};
pub use energy::{EnergyReport, EnergyWindows, ANNOTATION_POD_ENERGY};
pub use error::{LedgerError, Result};
pub use keys::{ApiKeyInfo, KEY_ID_LEN};
pub use metrics::LedgerMetrics;
pub use money::{format_yuan, ratio_to_bp, Fen};
pub use quota::{Quota, MAX_QUOTA_GPUS, MAX_QUOTA_GPU_HOURS};
pub use rating::{default_rate_card, GpuPrice, RateBook, RateCard, TokenPrice};
pub use sql::Backend;
pub use statement::Statement;
pub use store::{check_location, hash_api_key, IngestReport, Ledger, MonthUse, UsageSummary};
pub use tokens::{counter_delta, TokenCounterNames, TokenDelta, TokenMeter};
pub use types::{
    AuditEvent, ChargeKind, Holder, MeteredTokens, MeteredUsage, Month, Tenant, Tier, TokenRecord,
    UsageRecord, Voucher, VoucherSpec, VoucherStatus,
};
pub use windows::{meter_windows, window_floor, window_id, Metered, PodRun};

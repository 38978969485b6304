//! What the API needs from the ledger (tenants, hashed keys, quotas, vouchers,
//! usage, statements, audit), as a trait so the HTTP layer does not care
//! whether the ledger is SQLite or PostgreSQL. Methods are blocking: handlers
//! call them through `spawn_blocking`.

use std::collections::BTreeMap;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use super::error::ApiError;

/// Why an accounts call failed; mapped onto HTTP statuses by [`From`].
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum AccountsError {
    #[error("{0}")]
    NotFound(String),
    #[error("{0}")]
    Conflict(String),
    #[error("{field}: {message}")]
    Invalid { field: String, message: String },
    #[error("{0}")]
    Internal(String),
}

impl From<AccountsError> for ApiError {
    fn from(e: AccountsError) -> Self {
        match e {
            AccountsError::NotFound(m) => ApiError::not_found(m),
            AccountsError::Conflict(m) => ApiError::conflict(m),
            AccountsError::Invalid { field, message } => ApiError::invalid(field, message),
            AccountsError::Internal(m) => ApiError::internal(m),
        }
    }
}

/// A tenant (a company, a department); `parent` makes the
/// national → province → city → county tree.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct Tenant {
    pub name: String,
    pub parent: Option<String>,
}

/// A tenant's limits. Absent limits are unlimited.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct Quota {
    /// Most GPUs held at once (pending + running), all models together.
    #[serde(default)]
    pub max_gpus: Option<u32>,
    /// Most GPUs held at once per accelerator model (e.g. `{"H100": 8}`).
    #[serde(default)]
    pub gpus_per_model: BTreeMap<String, u32>,
    /// GPU-hours per calendar month (UTC).
    #[serde(default)]
    pub gpu_hours_per_month: Option<u64>,
    /// Tokens (prompt + completion, all tiers) per calendar month (UTC).
    #[serde(default)]
    pub tokens_per_month: Option<u64>,
    /// GPUs guaranteed to this tenant even when the cluster is busy.
    #[serde(default)]
    pub guaranteed_gpus: u32,
    /// GPUs it may borrow above the guarantee when others leave them idle.
    #[serde(default)]
    pub borrowable_gpus: u32,
}

/// A voucher to issue. `copay_ratio_bp` is in basis points (10000 = the
/// voucher may cover the whole of each charge).
#[derive(Debug, Clone, PartialEq)]
pub struct NewVoucher {
    pub tenant: String,
    pub issuer: String,
    pub face_value_fen: i64,
    pub copay_ratio_bp: u32,
    pub valid_from: DateTime<Utc>,
    pub valid_until: DateTime<Utc>,
    /// Empty: valid in every region.
    pub regions: Vec<String>,
}

/// A voucher with what is left on it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct Voucher {
    pub id: String,
    pub tenant: String,
    pub issuer: String,
    pub face_value_fen: i64,
    /// Share of each charge the voucher may cover, 0..=1.
    pub copay_ratio: f64,
    pub valid_from: DateTime<Utc>,
    pub valid_until: DateTime<Utc>,
    pub regions: Vec<String>,
    pub redeemed_fen: i64,
    pub balance_fen: i64,
}

/// Usage and money over an interval. `gross_fen = voucher_fen + net_fen`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct UsageSummary {
    pub gpu_hours: f64,
    /// Tokens by tier (`basic`, `industry`, `high_value`).
    pub tokens: BTreeMap<String, u64>,
    pub kwh: f64,
    pub carbon_kg: f64,
    pub gross_fen: i64,
    pub voucher_fen: i64,
    pub net_fen: i64,
}

/// A monthly statement as the ledger renders it.
#[derive(Debug, Clone, PartialEq)]
pub struct Statement {
    pub json: serde_json::Value,
    pub csv: String,
}

/// One audited action. Never holds a secret.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct AuditEntry {
    pub at: DateTime<Utc>,
    /// `admin`, a tenant name, or `system`.
    pub actor: String,
    /// e.g. `tenant.create`, `quota.set`, `voucher.issue`, `job.submit`.
    pub action: String,
    pub target: String,
    #[schema(value_type = Object)]
    pub detail: serde_json::Value,
}

/// The ledger as the API sees it. Blocking; implementations are shared by
/// many request threads.
pub trait Accounts: Send + Sync + 'static {
    /// Creates a tenant holding one API key, stored as its SHA-256 only.
    fn create_tenant(&self, tenant: &Tenant, key_sha256: &[u8; 32]) -> Result<(), AccountsError>;
    fn list_tenants(&self) -> Result<Vec<Tenant>, AccountsError>;
    /// The tenant a key hash belongs to, if any.
    fn tenant_for_key(&self, key_sha256: &[u8; 32]) -> Result<Option<String>, AccountsError>;
    fn set_quota(&self, tenant: &str, quota: &Quota) -> Result<(), AccountsError>;
    /// `NotFound` for an unknown tenant; the default (unlimited) quota if none was set.
    fn quota(&self, tenant: &str) -> Result<Quota, AccountsError>;
    fn issue_voucher(&self, voucher: &NewVoucher) -> Result<Voucher, AccountsError>;
    fn vouchers(&self, tenant: &str) -> Result<Vec<Voucher>, AccountsError>;
    /// Usage in `[from, to)`; `None` bounds are open.
    fn usage(
        &self,
        tenant: &str,
        from: Option<DateTime<Utc>>,
        to: Option<DateTime<Utc>>,
    ) -> Result<UsageSummary, AccountsError>;
    /// The statement for `month` (`YYYY-MM`).
    fn statement(&self, tenant: &str, year: i32, month: u32) -> Result<Statement, AccountsError>;
    fn audit(&self, entry: &AuditEntry) -> Result<(), AccountsError>;
    fn audit_since(&self, since: Option<DateTime<Utc>>) -> Result<Vec<AuditEntry>, AccountsError>;
}

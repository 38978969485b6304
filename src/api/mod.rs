//! The quota API for SMEs and admins (issue #7): axum over HTTP, JSON
//! everywhere, Bearer keys, one error envelope, per-key rate limits, an
//! OpenAPI document generated from this code.
//!
//! `router(state)` is reused by `zhisuan api`, `zhisuan controller` and
//! `zhisuan demo`; behind it sit the ledger ([`Ledger`], SQLite or
//! PostgreSQL) and a [`JobBackend`] (the in-process `World` in [`world`], or
//! Kubernetes in `operator/`).

mod admin;
pub mod auth;
mod cache;
mod checks;
pub mod console;
pub mod error;
pub mod extract;
pub mod gateway;
mod handlers;
pub mod idempotency;
mod job_endpoints;
pub mod jobs;
pub mod keys;
pub mod lockout;
pub mod metrics;
pub mod metrics_access;
pub mod openapi;
pub mod overview;
pub mod page;
pub mod pending;
pub mod ratelimit;
mod schemas;
pub mod series;

use std::collections::HashMap;
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};

use axum::extract::DefaultBodyLimit;
use axum::routing::{delete, get, post, put};
use axum::Router;

pub use error::ApiError;
pub use job_endpoints::gpu_limit_milli;
pub use jobs::{BackendError, JobBackend};
pub use ratelimit::RateLimit;

use crate::ledger::{Ledger, LedgerError, Month, MonthUse, Quota};

/// Largest request body accepted, in bytes.
pub const BODY_LIMIT_BYTES: usize = 64 * 1024;

/// How long a tenant's month-to-date usage and quota are reused (another
/// replica's quota change shows within this time; this server's at once).
const USAGE_CACHE_TTL: Duration = Duration::from_secs(1);

/// How long a key → tenant lookup is trusted: a key revoked through another
/// replica stops working here within this time (this replica's at once).
pub const KEY_CACHE_TTL: Duration = Duration::from_secs(1);

/// Settings of one API server.
#[derive(Clone)]
pub struct ApiConfig {
    /// The admin key itself (kept only as its SHA-256 once the state is built).
    pub admin_key: String,
    pub rate_limit: RateLimit,
    /// Jobs a tenant may have waiting to start; a submission beyond is
    /// refused (`pending_jobs`), so one tenant cannot flood the queue.
    pub max_pending_jobs: u64,
    /// The token gateway's upstreams and limits.
    pub gateway: gateway::GatewayConfig,
    /// Who may read the per-tenant series of `/metrics`.
    pub metrics: metrics_access::MetricsAccess,
}

impl ApiConfig {
    /// The defaults of `zhisuan api` with this admin key: 50 requests/s
    /// (burst 100) per key, [`MAX_PENDING_JOBS`], the gateway's defaults,
    /// per-tenant series of `/metrics` only with a key.
    pub fn with_admin_key(admin_key: &str) -> Self {
        ApiConfig {
            admin_key: admin_key.to_string(),
            rate_limit: RateLimit {
                per_second: 50.0,
                burst: 100.0,
            },
            max_pending_jobs: MAX_PENDING_JOBS,
            gateway: Default::default(),
            metrics: Default::default(),
        }
    }
}

/// Default of [`ApiConfig::max_pending_jobs`].
pub const MAX_PENDING_JOBS: u64 = 1000;

impl std::fmt::Debug for ApiConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ApiConfig")
            .field("admin_key", &"<redacted>")
            .field("rate_limit", &self.rate_limit)
            .field("max_pending_jobs", &self.max_pending_jobs)
            .field("gateway", &self.gateway)
            .field("metrics", &self.metrics)
            .finish()
    }
}

/// Shortest admin key accepted.
pub const MIN_ADMIN_KEY_LEN: usize = 16;

/// Shared state behind every handler; cheap to clone.
#[derive(Clone)]
pub struct ApiState {
    inner: Arc<Inner>,
}

struct Inner {
    ledger: Ledger,
    jobs: Arc<dyn JobBackend>,
    admin_key_sha256: [u8; 32],
    limiter: ratelimit::RateLimiter,
    max_pending_jobs: u64,
    /// Unknown keys and failed attempts per client address.
    lockout: lockout::Lockout,
    /// Key hash → (when looked up, tenant).
    key_cache: RwLock<HashMap<[u8; 32], (Instant, String)>>,
    /// Tenant → (when read, month, use in that month) for quota checks.
    usage_cache: cache::TtlCache<(Month, MonthUse)>,
    /// Tenant → (when read, quota); dropped when this server sets the quota.
    quota_cache: cache::TtlCache<Quota>,
    /// Tenant → its admission lock: a submission's quota check and the
    /// backend's reservation (the job it creates) happen under it, so
    /// concurrent submissions of one tenant never exceed a limit.
    admission: Mutex<HashMap<String, Arc<tokio::sync::Mutex<()>>>>,
    metrics: metrics::ApiMetrics,
    registry: prometheus::Registry,
    /// Who may read the per-tenant series of `/metrics`.
    metrics_access: metrics_access::AccessState,
    gateway: Arc<gateway::Gateway>,
}

impl ApiState {
    /// Builds the state. The API's metrics are registered on `registry`,
    /// which `/metrics` serves (so the caller can add its own).
    pub fn new(
        config: ApiConfig,
        ledger: Ledger,
        jobs: Arc<dyn JobBackend>,
        registry: &prometheus::Registry,
    ) -> Result<Self, crate::error::InputError> {
        let key = config.admin_key.trim();
        if key.len() < MIN_ADMIN_KEY_LEN {
            return Err(crate::error::InputError::new(format!(
                "admin key: must be at least {MIN_ADMIN_KEY_LEN} characters; generate one with `head -c 32 /dev/urandom | xxd -p -c 64`"
            )));
        }
        if !(config.rate_limit.per_second > 0.0 && config.rate_limit.burst >= 1.0) {
            return Err(crate::error::InputError::new(
                "rate limit: per-second rate must be > 0 and burst >= 1",
            ));
        }
        let metrics_access = metrics_access::AccessState::new(&config.metrics)?;
        let metrics = metrics::ApiMetrics::new(registry)
            .map_err(|e| crate::error::InputError::new(format!("registering API metrics: {e}")))?;
        let gateway = Arc::new(gateway::Gateway::new(
            &config.gateway,
            ledger.clone(),
            registry,
        )?);
        Ok(ApiState {
            inner: Arc::new(Inner {
                ledger,
                jobs,
                admin_key_sha256: auth::key_hash(key),
                limiter: ratelimit::RateLimiter::new(config.rate_limit),
                max_pending_jobs: config.max_pending_jobs,
                lockout: lockout::Lockout::default(),
                key_cache: RwLock::new(HashMap::new()),
                usage_cache: cache::TtlCache::new(USAGE_CACHE_TTL),
                quota_cache: cache::TtlCache::new(USAGE_CACHE_TTL),
                admission: Mutex::new(HashMap::new()),
                metrics,
                registry: registry.clone(),
                metrics_access,
                gateway,
            }),
        })
    }

    fn metrics_access(&self) -> &metrics_access::AccessState {
        &self.inner.metrics_access
    }

    pub fn ledger(&self) -> &Ledger {
        &self.inner.ledger
    }

    pub fn jobs(&self) -> &Arc<dyn JobBackend> {
        &self.inner.jobs
    }

    /// The token gateway (its models may be none).
    pub fn gateway(&self) -> &Arc<gateway::Gateway> {
        &self.inner.gateway
    }

    /// Jobs a tenant may have waiting to start.
    pub fn max_pending_jobs(&self) -> u64 {
        self.inner.max_pending_jobs
    }

    /// The admission lock of `tenant` (held across the check and the submit;
    /// a tokio mutex, so waiting never blocks a worker thread).
    pub(crate) fn admission_lock(&self, tenant: &str) -> Arc<tokio::sync::Mutex<()>> {
        self.inner
            .admission
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .entry(tenant.to_string())
            .or_default()
            .clone()
    }

    /// Runs a blocking ledger call off the async workers.
    pub(crate) async fn blocking<T, F>(&self, f: F) -> Result<T, ApiError>
    where
        T: Send + 'static,
        F: FnOnce(&Ledger) -> Result<T, LedgerError> + Send + 'static,
    {
        let ledger = self.inner.ledger.clone();
        tokio::task::spawn_blocking(move || f(&ledger))
            .await
            .map_err(ApiError::internal)?
            .map_err(ApiError::from)
    }

    /// The tenant owning `key` (whose hash is `hash`), cached for [`KEY_CACHE_TTL`].
    /// The tenant of a key that is not the admin's. A key that failed
    /// recently is answered without a lookup, and a client that failed too
    /// often gets 429 before any (`client`: its address, [`lockout::client_id`]).
    async fn tenant_for_key(
        &self,
        key: &str,
        hash: &[u8; 32],
        client: &[u8; 32],
    ) -> Result<Option<String>, ApiError> {
        let now = Instant::now();
        let lockout = &self.inner.lockout;
        if lockout.is_unknown(hash, now) {
            lockout
                .fail(client, now)
                .map_err(ApiError::auth_throttled)?;
            return Ok(None);
        }
        if let Some((at, t)) = self
            .inner
            .key_cache
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .get(hash)
        {
            if now.duration_since(*at) < KEY_CACHE_TTL {
                return Ok(Some(t.clone()));
            }
        }
        lockout
            .blocked(client, now)
            .map_err(ApiError::auth_throttled)?;
        let k = key.to_string();
        self.inner.metrics.key_lookups.inc();
        let found = self.blocking(move |l| l.tenant_for_api_key(&k)).await?;
        if found.is_none() {
            lockout.remember_unknown(*hash, now);
            lockout
                .fail(client, now)
                .map_err(ApiError::auth_throttled)?;
        }
        let mut cache = self
            .inner
            .key_cache
            .write()
            .unwrap_or_else(|p| p.into_inner());
        match &found {
            Some(t) => {
                cache.insert(*hash, (now, t.clone()));
            }
            None => {
                cache.remove(hash);
            }
        }
        Ok(found)
    }

    /// The quota of `tenant` (unlimited if none was set), at most
    /// [`USAGE_CACHE_TTL`] old.
    async fn quota_of(&self, tenant: &str) -> Result<Quota, ApiError> {
        if let Some(q) = self.inner.quota_cache.get(tenant) {
            return Ok(q);
        }
        let read_at = Instant::now();
        let t = tenant.to_string();
        let quota = self
            .blocking(move |l| l.quota(&t))
            .await?
            .unwrap_or_default();
        self.inner.quota_cache.put(tenant, read_at, quota.clone());
        Ok(quota)
    }

    /// Forgets cached lookups of the key named `id` (a revoked key).
    fn forget_key(&self, id: &str) {
        let id = id.to_ascii_lowercase();
        self.inner
            .key_cache
            .write()
            .unwrap_or_else(|p| p.into_inner())
            .retain(|hash, _| !hex::encode(hash).starts_with(&id));
    }

    /// Forgets the cached quota of `tenant` (after this server changed it).
    fn forget_quota(&self, tenant: &str) {
        self.inner.quota_cache.forget(tenant);
    }

    /// Month-to-date usage of `tenant`, at most [`USAGE_CACHE_TTL`] old.
    async fn month_usage(
        &self,
        tenant: &str,
        now: chrono::DateTime<chrono::Utc>,
    ) -> Result<MonthUse, ApiError> {
        let month = Month::of(now);
        if let Some((m, u)) = self.inner.usage_cache.get(tenant) {
            if m == month {
                return Ok(u);
            }
        }
        let read_at = Instant::now();
        let t = tenant.to_string();
        let usage = self.blocking(move |l| l.month_use(&t, month)).await?;
        self.inner.usage_cache.put(tenant, read_at, (month, usage));
        Ok(usage)
    }
}

/// Every endpoint of the API, plus the web page at `/` (owned by `page`).
pub fn router(state: ApiState) -> Router {
    use handlers as h;
    Router::new()
        .route("/healthz", get(h::healthz))
        .route("/metrics", get(h::metrics))
        .route("/openapi.json", get(h::openapi_json))
        .route(
            "/v1/tenants",
            post(admin::create_tenant).get(admin::list_tenants),
        )
        .route("/v1/tenants/{name}/quota", put(admin::set_quota))
        .route("/v1/tenants/{name}/usage", get(admin::tenant_usage))
        .route(
            "/v1/tenants/{name}/keys",
            post(keys::create_key).get(keys::list_keys),
        )
        .route("/v1/tenants/{name}/keys/{id}", delete(keys::revoke_key))
        .route(
            "/v1/vouchers",
            post(admin::issue_voucher).get(h::own_vouchers),
        )
        .route("/v1/audit", get(admin::audit_log))
        .route("/v1/quota", get(h::own_quota))
        .route(
            "/v1/jobs",
            post(job_endpoints::submit_job).get(job_endpoints::list_jobs),
        )
        .route(
            "/v1/jobs/{id}",
            get(job_endpoints::get_job).delete(job_endpoints::delete_job),
        )
        .route("/v1/usage", get(h::own_usage))
        .route("/v1/usage/series", get(series::own_series))
        .route("/v1/series", get(series::grouped_series))
        .route("/v1/series/pending", get(series::pending_series))
        .route("/v1/pending", get(pending::pending))
        .route("/v1/overview", get(overview::overview))
        .route("/v1/statements/{month}", get(h::statement))
        .route("/v1/regions", get(h::regions))
        .merge(gateway::handlers::routes())
        .merge(page::router())
        .merge(console::router())
        .fallback(h::not_found)
        .method_not_allowed_fallback(h::method_not_allowed)
        .layer(axum::middleware::from_fn_with_state(
            state.clone(),
            idempotency::guard,
        ))
        .layer(axum::middleware::from_fn_with_state(
            state.clone(),
            metrics::track,
        ))
        .layer(DefaultBodyLimit::max(BODY_LIMIT_BYTES))
        .with_state(state)
}

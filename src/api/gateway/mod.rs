//! The token gateway (词元综合管理监控平台): an OpenAI-compatible front door
//! on the API's own port and keys. It routes each call to a healthy
//! upstream of the model, passes the answer through (streams unbuffered),
//! counts the call's tokens exactly (the upstream's `usage`) or, where the
//! upstream reports none, by tokenizing what was delivered (marked
//! `estimated`), and records one audited, idempotent token record per call
//! (id = request id) priced by the model's tier. Permission control (which
//! tenant may call which model), monthly token limits per tier and
//! per-key tokens-per-minute buckets are checked before a call.
//! Nothing of a prompt or a completion is stored.

pub mod handlers;
pub mod health;
pub mod metrics;
mod proxy;
pub mod recorder;
pub mod registry;
pub mod routing;
mod stream;
pub mod tokenize;
pub mod usage;

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::Full;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;

use super::cache::TtlCache;
use super::ratelimit::{RateLimit, RateLimiter};
use super::{ApiError, ApiState};
use crate::error::InputError;
use crate::ledger::routing::Routing;
use crate::ledger::{Ledger, Month, Tier};

pub use registry::{Model, ModelSpec, Registry, Upstream};

/// The HTTP client the gateway speaks to upstreams with (HTTP/1.1, pooled).
pub type HttpClient = Client<HttpConnector, Full<Bytes>>;

/// Default of [`GatewayConfig::tokens_per_minute`].
pub const TOKENS_PER_MINUTE: u64 = 200_000;

/// How long a tenant's model grants, routing default and month-to-date
/// tokens are reused.
const CACHE_TTL: Duration = Duration::from_secs(1);

/// The gateway's settings (`zhisuan api --upstream …`).
#[derive(Debug, Clone)]
pub struct GatewayConfig {
    /// `NAME[@REGION]=URL`, repeatable.
    pub upstreams: Vec<String>,
    /// `NAME=TIER`.
    pub tiers: Vec<String>,
    /// Tokens each key may use per minute (0 = no limit).
    pub tokens_per_minute: u64,
    /// How long an upstream may take to start its answer (a non-streamed
    /// generation included) before the call is answered 504.
    pub upstream_timeout: Duration,
    /// A non-streamed answer is sent only once its call is in the ledger
    /// (a crash never loses a delivered call); off: calls are written just
    /// after their answers (faster; a kill -9 loses the last batch).
    pub durable_answers: bool,
}

/// Default of [`GatewayConfig::upstream_timeout`].
pub const UPSTREAM_TIMEOUT: Duration = Duration::from_secs(600);

impl Default for GatewayConfig {
    fn default() -> Self {
        GatewayConfig {
            upstreams: Vec::new(),
            tiers: Vec::new(),
            tokens_per_minute: TOKENS_PER_MINUTE,
            upstream_timeout: UPSTREAM_TIMEOUT,
            durable_answers: true,
        }
    }
}

/// Round-trip ms from a user region to a region: (user region, region) → ms.
pub type LatencyTable = HashMap<(String, String), f64>;

/// How long the latency table read from the regions is reused.
const LATENCY_TTL: Duration = Duration::from_secs(30);

/// A tenant's model grants (`None`: every shared model).
type Grants = Option<Vec<String>>;

/// What the gateway keeps of a tenant's settings (read together, cached
/// together for [`CACHE_TTL`]).
#[derive(Clone)]
struct TenantSettings {
    grants: Grants,
    /// Where its users call from and the round trip they accept.
    routing: Option<Routing>,
}

/// The gateway's state, shared by its handlers.
pub struct Gateway {
    /// The models of the flags (`--upstream`).
    flags: Registry,
    /// What is served now: the flags' models and those found on a cluster.
    registry: RwLock<Arc<Registry>>,
    client: HttpClient,
    /// Tokens each key may use per minute (0: no limit).
    pub tokens_per_minute: u64,
    /// See [`GatewayConfig::upstream_timeout`].
    upstream_timeout: Duration,
    /// See [`GatewayConfig::durable_answers`].
    durable_answers: bool,
    /// One bucket of `tokens_per_minute` per key, charged after each call.
    tpm: Option<RateLimiter>,
    recorder: recorder::Recorder,
    metrics: metrics::GatewayMetrics,
    epoch: Instant,
    tenants: TtlCache<TenantSettings>,
    /// Tenant → (month, tokens per tier the ledger held then).
    month: Arc<TtlCache<(Month, BTreeMap<Tier, i64>)>>,
    /// When read, and the table (the lock is never held across the read).
    latency: Mutex<(Option<Instant>, Arc<LatencyTable>)>,
}

impl Gateway {
    pub fn new(
        config: &GatewayConfig,
        ledger: Ledger,
        registry: &prometheus::Registry,
    ) -> Result<Self, InputError> {
        let models = Registry::from_flags(&config.upstreams, &config.tiers)?;
        let metrics = metrics::GatewayMetrics::new(registry)
            .map_err(|e| InputError::new(format!("registering gateway metrics: {e}")))?;
        let mut connector = HttpConnector::new();
        connector.set_nodelay(true);
        connector.set_connect_timeout(Some(Duration::from_secs(5)));
        let client = Client::builder(TokioExecutor::new())
            .pool_idle_timeout(Duration::from_secs(60))
            .pool_max_idle_per_host(512)
            .build(connector);
        let month = Arc::new(TtlCache::new(CACHE_TTL));
        let forget = month.clone();
        let recorder = recorder::Recorder::new(
            ledger,
            Arc::new(move |tenants: &[String]| {
                for t in tenants {
                    forget.forget(t);
                }
            }),
            metrics.write_failures.clone(),
            metrics.backlog.clone(),
        );
        Ok(Gateway {
            registry: RwLock::new(Arc::new(models.clone())),
            flags: models,
            client,
            tokens_per_minute: config.tokens_per_minute,
            upstream_timeout: config.upstream_timeout,
            durable_answers: config.durable_answers,
            tpm: (config.tokens_per_minute > 0).then(|| {
                let per_minute = config.tokens_per_minute as f64;
                RateLimiter::new(RateLimit {
                    per_second: per_minute / 60.0,
                    burst: per_minute,
                })
            }),
            recorder,
            metrics,
            epoch: Instant::now(),
            tenants: TtlCache::new(CACHE_TTL),
            month,
            latency: Mutex::new((None, Arc::default())),
        })
    }

    /// The models served now.
    pub fn registry(&self) -> Arc<Registry> {
        self.registry
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// Serves the flags' models and `found` (a cluster's, replacing the
    /// previous ones).
    pub fn set_discovered(&self, found: Vec<ModelSpec>) {
        let next = Arc::new(self.registry().with_discovered(&self.flags, found));
        *self.registry.write().unwrap_or_else(|p| p.into_inner()) = next;
    }

    /// `Ok` when `key` may start a call at `now`; else the seconds until its
    /// tokens-per-minute bucket is positive again.
    fn tokens_left(&self, key: &[u8; 32], now: Instant) -> Result<(), u64> {
        self.tpm.as_ref().map_or(Ok(()), |b| b.peek(key, now))
    }

    /// Charges a call's tokens to its key's bucket.
    fn charge_tokens(&self, key: &[u8; 32], tokens: i64, now: Instant) {
        if let Some(b) = &self.tpm {
            b.charge(key, tokens as f64, now);
        }
    }

    /// Round-trip times from the user regions to the regions (the
    /// backend's region catalog), at most [`LATENCY_TTL`] old. A failed
    /// read keeps the table read before.
    async fn latency(&self, jobs: &dyn crate::api::JobBackend) -> Arc<LatencyTable> {
        let (read_at, table) = self
            .latency
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone();
        if read_at.is_some_and(|at| at.elapsed() < LATENCY_TTL) {
            return table;
        }
        match jobs.regions().await {
            Ok(regions) => {
                let fresh: Arc<LatencyTable> = Arc::new(
                    regions
                        .into_iter()
                        .flat_map(|r| {
                            r.latency_ms
                                .into_iter()
                                .map(move |(user, ms)| ((user, r.name.clone()), ms))
                        })
                        .collect(),
                );
                *self.latency.lock().unwrap_or_else(|p| p.into_inner()) =
                    (Some(Instant::now()), fresh.clone());
                fresh
            }
            Err(e) => {
                tracing::warn!(error = %e, "reading the regions' latencies for the gateway failed");
                table
            }
        }
    }

    /// Milliseconds since the gateway started (the routing clock).
    fn now_ms(&self) -> u64 {
        self.epoch.elapsed().as_millis() as u64
    }

    /// Waits until every call answered so far is in the ledger.
    pub async fn flush(&self) {
        self.recorder.flush().await;
    }

    /// Forgets the cached settings of `tenant` (after this server set them).
    pub fn forget_tenant(&self, tenant: &str) {
        self.tenants.forget(tenant);
    }

    /// May `tenant` see and call `model`? A dedicated model only by its
    /// owner; a shared one by every tenant without grants, else by those
    /// whose grants name it.
    pub fn may_call(model: &Model, tenant: &str, grants: Option<&[String]>) -> bool {
        match &model.owner {
            Some(owner) => owner == tenant,
            None => grants.is_none_or(|g| g.contains(&model.name)),
        }
    }

    /// `tenant`'s grants and routing default, cached for [`CACHE_TTL`].
    async fn settings_of(
        &self,
        state: &ApiState,
        tenant: &str,
    ) -> Result<TenantSettings, ApiError> {
        if let Some(s) = self.tenants.get(tenant) {
            return Ok(s);
        }
        let read_at = Instant::now();
        let t = tenant.to_string();
        let s = state
            .blocking(move |l| {
                Ok(TenantSettings {
                    grants: l.model_grants(&t)?,
                    routing: l.routing(&t)?,
                })
            })
            .await?;
        self.tenants.put(tenant, read_at, s.clone());
        Ok(s)
    }

    /// Tokens `tenant` used in `month` per tier: what the ledger holds
    /// (cached for [`CACHE_TTL`], dropped when this gateway writes the
    /// tenant's calls) plus the calls still queued for writing.
    async fn month_tokens(
        &self,
        state: &ApiState,
        tenant: &str,
        month: Month,
    ) -> Result<BTreeMap<Tier, i64>, ApiError> {
        let cached = self
            .month
            .get(tenant)
            .filter(|(m, _)| *m == month)
            .map(|(_, by_tier)| by_tier);
        let mut by_tier = match cached {
            Some(b) => b,
            None => {
                let read_at = Instant::now();
                let t = tenant.to_string();
                let b = state
                    .blocking(move |l| l.month_tokens_by_tier(&t, month))
                    .await?;
                self.month.put(tenant, read_at, (month, b.clone()));
                b
            }
        };
        for (tier, n) in self.recorder.queued(tenant) {
            *by_tier.entry(tier).or_default() += n;
        }
        Ok(by_tier)
    }
}

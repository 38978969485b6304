//! Who may read which series of `/metrics` (issue #16, item 4). Series
//! with a `tenant` label — charges, net payable, voucher balances, tokens,
//! GPU-hours per tenant — are each tenant's own business: without a key
//! `/metrics` serves every other series; the scrape key (`--metrics-key-file`,
//! what Prometheus holds) or the admin key get everything; a tenant's key
//! gets its own tenant's series beside the rest. A key that is none of
//! these is refused (401), so a misconfigured scraper is seen, not silently
//! served less. The rule follows the label, so a new per-tenant series is
//! covered without a list to keep.

use axum::extract::FromRequestParts;
use axum::http::{header, request::Parts};
use prometheus::proto::MetricFamily;

use super::auth::{bearer, constant_time_eq, key_hash, Principal};
use super::error::ApiError;
use super::ApiState;

/// The label that marks a series as one tenant's data.
pub const TENANT_LABEL: &str = "tenant";

/// Whether per-tenant series need a key.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum TenantSeries {
    /// Only to the scrape key, the admin key or the tenant's own key.
    #[default]
    KeyRequired,
    /// To anyone who can reach `/metrics` (the demo: one local user, all
    /// data simulated).
    Public,
}

/// `/metrics` access settings.
#[derive(Clone, Default)]
pub struct MetricsAccess {
    pub tenant_series: TenantSeries,
    /// The scrape key (a read-only credential for Prometheus).
    pub scrape_key: Option<String>,
}

impl std::fmt::Debug for MetricsAccess {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MetricsAccess")
            .field("tenant_series", &self.tenant_series)
            .field(
                "scrape_key",
                &self.scrape_key.as_ref().map(|_| "<redacted>"),
            )
            .finish()
    }
}

/// What one reader of `/metrics` sees.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum MetricsReader {
    /// Every series.
    All,
    /// Series without a tenant label.
    Public,
    /// Series without a tenant label and this tenant's own.
    Tenant(String),
}

impl FromRequestParts<ApiState> for MetricsReader {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &ApiState) -> Result<Self, ApiError> {
        let access = state.metrics_access();
        if parts.headers.get(header::AUTHORIZATION).is_none() {
            return Ok(match access.tenant_series {
                TenantSeries::Public => MetricsReader::All,
                TenantSeries::KeyRequired => MetricsReader::Public,
            });
        }
        if let Some(want) = access.scrape_key_sha256 {
            if constant_time_eq(&key_hash(bearer(parts)?), &want) {
                return Ok(MetricsReader::All);
            }
        }
        Ok(match Principal::from_request_parts(parts, state).await? {
            Principal::Admin => MetricsReader::All,
            Principal::Tenant(t) => MetricsReader::Tenant(t),
        })
    }
}

impl MetricsReader {
    /// Whether this reader may see `tenant`'s data.
    pub fn sees(&self, tenant: &str) -> bool {
        match self {
            MetricsReader::All => true,
            MetricsReader::Public => false,
            MetricsReader::Tenant(own) => own == tenant,
        }
    }

    /// Keeps the series this reader may see; families left empty go.
    pub fn filter(&self, families: Vec<MetricFamily>) -> Vec<MetricFamily> {
        if *self == MetricsReader::All {
            return families;
        }
        families
            .into_iter()
            .filter_map(|mut family| {
                let metrics = family.take_metric();
                let kept: Vec<_> = metrics
                    .into_iter()
                    .filter(
                        |m| match m.get_label().iter().find(|l| l.name() == TENANT_LABEL) {
                            None => true,
                            Some(l) => self.sees(l.value()),
                        },
                    )
                    .collect();
                (!kept.is_empty()).then(|| {
                    family.set_metric(kept);
                    family
                })
            })
            .collect()
    }
}

/// The settings as the state keeps them (the key as its hash only).
pub(super) struct AccessState {
    pub tenant_series: TenantSeries,
    pub scrape_key_sha256: Option<[u8; 32]>,
}

impl AccessState {
    pub fn new(access: &MetricsAccess) -> Result<Self, crate::error::InputError> {
        let scrape_key_sha256 = match access.scrape_key.as_deref().map(str::trim) {
            None => None,
            Some(k) if k.len() < super::MIN_ADMIN_KEY_LEN => {
                return Err(crate::error::InputError::new(format!(
                    "metrics key: must be at least {} characters",
                    super::MIN_ADMIN_KEY_LEN
                )))
            }
            Some(k) => Some(key_hash(k)),
        };
        Ok(AccessState {
            tenant_series: access.tenant_series,
            scrape_key_sha256,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn families() -> Vec<MetricFamily> {
        let r = prometheus::Registry::new();
        let money = prometheus::IntGaugeVec::new(
            prometheus::Opts::new("zhisuan_tenant_net_fen_total", "net"),
            &["tenant"],
        )
        .unwrap();
        let region = prometheus::IntGaugeVec::new(
            prometheus::Opts::new("zhisuan_region_gpus", "gpus"),
            &["region"],
        )
        .unwrap();
        r.register(Box::new(money.clone())).unwrap();
        r.register(Box::new(region.clone())).unwrap();
        money.with_label_values(&["acme"]).set(5);
        money.with_label_values(&["beta"]).set(7);
        region.with_label_values(&["guian"]).set(8);
        r.gather()
    }

    fn seen(reader: MetricsReader) -> Vec<String> {
        let mut out = Vec::new();
        for f in reader.filter(families()) {
            for m in f.get_metric() {
                let labels: Vec<String> = m
                    .get_label()
                    .iter()
                    .map(|l| l.value().to_string())
                    .collect();
                out.push(format!("{}{{{}}}", f.name(), labels.join(",")));
            }
        }
        out
    }

    #[test]
    fn tenant_series_go_only_to_the_keys_that_may_see_them() {
        assert_eq!(
            seen(MetricsReader::All),
            [
                "zhisuan_region_gpus{guian}",
                "zhisuan_tenant_net_fen_total{acme}",
                "zhisuan_tenant_net_fen_total{beta}"
            ]
        );
        assert_eq!(seen(MetricsReader::Public), ["zhisuan_region_gpus{guian}"]);
        assert_eq!(
            seen(MetricsReader::Tenant("acme".into())),
            [
                "zhisuan_region_gpus{guian}",
                "zhisuan_tenant_net_fen_total{acme}"
            ]
        );
    }
}

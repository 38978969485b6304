//! Active health checks: every [`PROBE_EVERY`] each upstream is asked
//! `GET /v1/models` (every OpenAI-compatible server answers it) with a
//! [`PROBE_TIMEOUT`]. One that does not answer 2xx is left out until the
//! next round; one that answers is taken back at once. Between rounds, a
//! refused connection still marks an upstream down for
//! [`super::registry::DOWN_FOR_MS`] (passive).

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::Full;

use super::registry::Upstream;
use super::Gateway;

/// Time between probe rounds.
pub const PROBE_EVERY: Duration = Duration::from_secs(10);
/// How long a probe may take.
pub const PROBE_TIMEOUT: Duration = Duration::from_secs(2);

/// Does `u` answer `GET /v1/models` in time?
async fn answers(gw: &Gateway, u: &Upstream) -> bool {
    let Ok(req) =
        axum::http::Request::get(format!("{}/v1/models", u.base)).body(Full::new(Bytes::new()))
    else {
        return false;
    };
    matches!(
        tokio::time::timeout(PROBE_TIMEOUT, gw.client.request(req)).await,
        Ok(Ok(resp)) if resp.status().is_success()
    )
}

/// One round over every upstream served now (each probed once, all at once).
pub async fn probe_round(gw: &Gateway) {
    let registry = gw.registry();
    let upstreams: BTreeMap<&str, &Arc<Upstream>> = registry
        .models()
        .flat_map(|m| m.upstreams.iter())
        .map(|u| (u.base.as_str(), u))
        .collect();
    let results = futures::future::join_all(upstreams.values().map(|u| answers(gw, u))).await;
    let now = gw.now_ms();
    let down_for = (PROBE_EVERY + PROBE_TIMEOUT).as_millis() as u64;
    for (u, ok) in upstreams.values().zip(results) {
        if ok {
            u.mark_up();
        } else {
            if u.healthy_at(now) {
                tracing::warn!(upstream = %u.base, "upstream does not answer GET /v1/models; left out until it does");
            }
            u.mark_down_for(now, down_for);
            gw.metrics
                .upstream_errors
                .with_label_values(&[u.base.as_str(), "probe"])
                .inc();
        }
    }
}

/// Probes every [`PROBE_EVERY`] for as long as the gateway lives.
pub fn spawn(gw: &Arc<Gateway>) {
    let weak = Arc::downgrade(gw);
    tokio::spawn(async move {
        while let Some(gw) = weak.upgrade() {
            probe_round(&gw).await;
            drop(gw);
            tokio::time::sleep(PROBE_EVERY).await;
        }
    });
}

//! The API's own Prometheus series, registered on a registry passed in.

use std::time::Instant;

use axum::extract::{MatchedPath, Request, State};
use axum::http::Method;
use axum::middleware::Next;
use axum::response::Response;
use prometheus::{HistogramOpts, HistogramVec, IntCounter, IntCounterVec, Opts, Registry};

use super::ApiState;

/// Request counts and latencies by route template (bounded labels: never a raw path).
pub struct ApiMetrics {
    pub requests: IntCounterVec,
    pub latency: HistogramVec,
    /// Tenant-key lookups that reached the ledger (cache misses).
    pub key_lookups: IntCounter,
}

impl ApiMetrics {
    pub fn new(registry: &Registry) -> prometheus::Result<Self> {
        let requests = IntCounterVec::new(
            Opts::new(
                "zhisuan_api_requests_total",
                "HTTP requests answered by the quota API",
            ),
            &["method", "route", "status"],
        )?;
        let latency = HistogramVec::new(
            HistogramOpts::new(
                "zhisuan_api_request_seconds",
                "Time to answer a quota API request",
            )
            .buckets(vec![
                0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1.0,
            ]),
            &["route"],
        )?;
        let key_lookups = IntCounter::new(
            "zhisuan_api_key_lookups_total",
            "Tenant-key lookups that reached the ledger (not answered from the caches)",
        )?;
        registry.register(Box::new(requests.clone()))?;
        registry.register(Box::new(latency.clone()))?;
        registry.register(Box::new(key_lookups.clone()))?;
        Ok(ApiMetrics {
            requests,
            latency,
            key_lookups,
        })
    }
}

/// Middleware: counts and times every request under its route template.
pub async fn track(State(state): State<ApiState>, req: Request, next: Next) -> Response {
    let route = req
        .extensions()
        .get::<MatchedPath>()
        .map(|p| p.as_str().to_string())
        .unwrap_or_else(|| "unmatched".to_string());
    // Bounded label: clients may send any method name.
    let method: &'static str = match *req.method() {
        Method::GET => "GET",
        Method::POST => "POST",
        Method::PUT => "PUT",
        Method::DELETE => "DELETE",
        Method::HEAD => "HEAD",
        Method::OPTIONS => "OPTIONS",
        Method::PATCH => "PATCH",
        _ => "other",
    };
    let start = Instant::now();
    let resp = next.run(req).await;
    let m = &state.inner.metrics;
    m.latency
        .with_label_values(&[route.as_str()])
        .observe(start.elapsed().as_secs_f64());
    m.requests
        .with_label_values(&[method, route.as_str(), resp.status().as_str()])
        .inc();
    resp
}

//! The gateway's Prometheus series.

use prometheus::{
    exponential_buckets, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGauge, Opts,
    Registry,
};

#[derive(Clone)]
pub struct GatewayMetrics {
    /// tenant, model, tier, kind (prompt | completion).
    pub tokens: IntCounterVec,
    /// model, code (HTTP status answered).
    pub requests: IntCounterVec,
    /// model.
    pub duration: HistogramVec,
    /// model.
    pub ttft: HistogramVec,
    /// upstream, reason (connect | response).
    pub upstream_errors: IntCounterVec,
    /// Calls whose tokens were estimated (no usage from the upstream).
    pub estimated: IntCounter,
    pub write_failures: IntCounter,
    pub backlog: IntGauge,
}

impl GatewayMetrics {
    pub fn new(registry: &Registry) -> prometheus::Result<Self> {
        let buckets = exponential_buckets(0.005, 2.0, 14)?;
        let m = GatewayMetrics {
            tokens: IntCounterVec::new(
                Opts::new(
                    "zhisuan_gateway_tokens_total",
                    "Tokens served through the gateway, by tenant, model, tier and kind (prompt or completion)",
                ),
                &["tenant", "model", "tier", "kind"],
            )?,
            requests: IntCounterVec::new(
                Opts::new(
                    "zhisuan_gateway_requests_total",
                    "Calls through the gateway by model and the HTTP status answered (499: client went away)",
                ),
                &["model", "code"],
            )?,
            duration: HistogramVec::new(
                HistogramOpts::new(
                    "zhisuan_gateway_request_duration_seconds",
                    "Time from a call's arrival to the end of its answer",
                )
                .buckets(buckets.clone()),
                &["model"],
            )?,
            ttft: HistogramVec::new(
                HistogramOpts::new(
                    "zhisuan_gateway_time_to_first_token_seconds",
                    "Time from a call's arrival to the first byte of generated output",
                )
                .buckets(buckets),
                &["model"],
            )?,
            upstream_errors: IntCounterVec::new(
                Opts::new(
                    "zhisuan_gateway_upstream_errors_total",
                    "Upstream failures: connect (retried elsewhere), response (answered 502) or probe (GET /v1/models failed; left out until it answers)",
                ),
                &["upstream", "reason"],
            )?,
            estimated: IntCounter::new(
                "zhisuan_gateway_estimated_calls_total",
                "Calls whose tokens the gateway counted itself (no usage from the upstream, or the client went away)",
            )?,
            write_failures: IntCounter::new(
                "zhisuan_gateway_ledger_write_failures_total",
                "Failed writes of gateway calls to the ledger (each is retried)",
            )?,
            backlog: IntGauge::new(
                "zhisuan_gateway_calls_unwritten",
                "Calls answered and not yet written to the ledger",
            )?,
        };
        registry.register(Box::new(m.tokens.clone()))?;
        registry.register(Box::new(m.requests.clone()))?;
        registry.register(Box::new(m.duration.clone()))?;
        registry.register(Box::new(m.ttft.clone()))?;
        registry.register(Box::new(m.upstream_errors.clone()))?;
        registry.register(Box::new(m.estimated.clone()))?;
        registry.register(Box::new(m.write_failures.clone()))?;
        registry.register(Box::new(m.backlog.clone()))?;
        Ok(m)
    }
}

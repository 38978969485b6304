//! One call through the gateway: send it to an upstream (another one when
//! the connection is refused), pass the answer back — a stream chunk by
//! chunk, as it arrives ([`super::stream`]) — and, once the answer ended or
//! the client went away, count its tokens and queue its record.

use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::body::Body;
use axum::http::{header, HeaderValue, Response, StatusCode};
use bytes::Bytes;
use chrono::{DateTime, Utc};
use http_body_util::{BodyExt, Full};
use serde_json::Value;

use super::registry::{InFlight, Model, Upstream};
use super::stream::Tallied;
use super::usage::{prompt_text, text_of, usage_of, Usage};
use super::Gateway;
use crate::api::ApiError;
use crate::ledger::{CallRecord, STATUS_CLIENT_GONE};

/// Most bytes of a non-streamed answer read.
const MAX_ANSWER: usize = 64 << 20;

/// One call in flight.
pub(super) struct Call {
    pub gw: Arc<Gateway>,
    pub model: Arc<Model>,
    pub tenant: String,
    pub key_hash: [u8; 32],
    /// `chat/completions`, `completions` or `embeddings`.
    pub endpoint: &'static str,
    pub request_id: String,
    pub request: Value,
    pub started: Instant,
    pub at: DateTime<Utc>,
    /// The caller's region (`X-Zhisuan-Region`): its upstreams first.
    pub user_region: Option<String>,
    /// The caller's latency SLO (`X-Zhisuan-Latency-Slo-Ms`) with the
    /// round-trip table: upstreams within it first.
    pub slo: Option<(f64, Arc<super::LatencyTable>)>,
}

/// How a call ended, for its record.
pub(super) struct Ended {
    pub upstream: Option<Arc<Upstream>>,
    pub status: u16,
    pub usage: Option<Usage>,
    /// Generated text delivered (to count when `usage` is missing).
    pub text: String,
    pub ttft_ms: Option<i64>,
}

/// Sends the call and answers the client.
pub(super) async fn forward(
    call: Call,
    body: Bytes,
    stream: bool,
) -> Result<Response<Body>, ApiError> {
    let (upstream, inflight, resp) = match send(&call, body).await {
        Ok(r) => r,
        Err(e) => {
            finish(
                call,
                Ended {
                    upstream: None,
                    status: e.status.as_u16(),
                    usage: None,
                    text: String::new(),
                    ttft_ms: None,
                },
                false,
            )
            .await;
            return Err(e);
        }
    };
    let status = resp.status();
    let is_sse = resp
        .headers()
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|ct| ct.starts_with("text/event-stream"));
    let request_id =
        HeaderValue::from_str(&call.request_id).unwrap_or(HeaderValue::from_static(""));
    if stream && is_sse && status.is_success() {
        let tallied = Tallied::new(
            resp.into_body().into_data_stream(),
            call,
            upstream,
            inflight,
        );
        return Ok(Response::builder()
            .status(status)
            .header(header::CONTENT_TYPE, "text/event-stream")
            .header(header::CACHE_CONTROL, "no-cache")
            .header("x-request-id", request_id)
            .body(Body::from_stream(tallied))
            .unwrap_or_default());
    }
    let content_type = resp.headers().get(header::CONTENT_TYPE).cloned();
    let read = http_body_util::Limited::new(resp.into_body(), MAX_ANSWER)
        .collect()
        .await;
    let ttft_ms = Some(call.started.elapsed().as_millis() as i64);
    drop(inflight);
    let bytes = match read {
        Ok(b) => b.to_bytes(),
        Err(e) => {
            call.gw
                .metrics
                .upstream_errors
                .with_label_values(&[upstream.base.as_str(), "response"])
                .inc();
            let err = ApiError::bad_gateway(format!(
                "model `{}`: the upstream's answer broke off ({e}); retry the call",
                call.model.name
            ));
            finish(
                call,
                Ended {
                    upstream: Some(upstream),
                    status: 502,
                    usage: None,
                    text: String::new(),
                    ttft_ms,
                },
                false,
            )
            .await;
            return Err(err);
        }
    };
    let gw_durable = call.gw.durable_answers;
    let parsed: Option<Value> = serde_json::from_slice(&bytes).ok();
    let usage = parsed.as_ref().and_then(usage_of);
    let mut text = String::new();
    if let Some(v) = &parsed {
        text_of(v, &mut text);
    }
    finish(
        call,
        Ended {
            upstream: Some(upstream),
            status: status.as_u16(),
            usage,
            text,
            ttft_ms,
        },
        gw_durable,
    )
    .await;
    let mut out = Response::builder()
        .status(status)
        .header("x-request-id", request_id);
    if let Some(ct) = content_type {
        out = out.header(header::CONTENT_TYPE, ct);
    }
    Ok(out.body(Body::from(bytes)).unwrap_or_default())
}

/// Sends the request to the model's upstreams in turn until one accepts
/// the connection.
async fn send(
    call: &Call,
    body: Bytes,
) -> Result<(Arc<Upstream>, InFlight, Response<hyper::body::Incoming>), ApiError> {
    let gw = &call.gw;
    let mut tried = Vec::new();
    loop {
        let Some(i) = call.model.pick(
            call.user_region.as_deref(),
            &|region: &str| within_slo(call, region),
            gw.now_ms(),
            &tried,
        ) else {
            return Err(ApiError::unavailable(format!(
                "model `{}` has no healthy upstream now ({} tried); retry in a few seconds",
                call.model.name,
                tried.len()
            )));
        };
        tried.push(i);
        let upstream = call.model.upstreams[i].clone();
        let inflight = upstream.begin();
        let req = axum::http::Request::post(format!("{}/v1/{}", upstream.base, call.endpoint))
            .header(header::CONTENT_TYPE, "application/json")
            .body(Full::new(body.clone()))
            .map_err(ApiError::internal)?;
        let answer = match tokio::time::timeout(gw.upstream_timeout, gw.client.request(req)).await {
            Ok(answer) => answer,
            Err(_) => {
                gw.metrics
                    .upstream_errors
                    .with_label_values(&[upstream.base.as_str(), "timeout"])
                    .inc();
                return Err(ApiError::gateway_timeout(format!(
                    "model `{}`: the upstream did not start answering within {} s; it was not retried",
                    call.model.name,
                    gw.upstream_timeout.as_secs()
                )));
            }
        };
        match answer {
            Ok(resp) => return Ok((upstream, inflight, resp)),
            Err(e) if e.is_connect() => {
                upstream.mark_down(gw.now_ms());
                gw.metrics
                    .upstream_errors
                    .with_label_values(&[upstream.base.as_str(), "connect"])
                    .inc();
                tracing::warn!(upstream = %upstream.base, model = %call.model.name, error = %e,
                    "upstream refused the connection; trying another");
            }
            Err(e) => {
                gw.metrics
                    .upstream_errors
                    .with_label_values(&[upstream.base.as_str(), "response"])
                    .inc();
                return Err(ApiError::bad_gateway(format!(
                    "model `{}`: the upstream failed after the request was sent ({e}); it was not retried",
                    call.model.name
                )));
            }
        }
    }
}

/// Is an upstream in `region` within the call's latency SLO? (Without an
/// SLO every region is.)
fn within_slo(call: &Call, region: &str) -> bool {
    match (&call.slo, &call.user_region) {
        (Some((slo_ms, table)), Some(user)) => table
            .get(&(user.clone(), region.to_string()))
            .is_some_and(|ms| *ms <= *slo_ms),
        _ => true,
    }
}

/// How long a non-streamed answer waits for its call to be in the ledger
/// before it is sent anyway (the call stays queued and is written later).
const DURABLE_PATIENCE: Duration = Duration::from_secs(5);

/// Counts the call's tokens and queues its record; `durable`: returns once
/// the record is in the ledger (a non-streamed answer is sent only then, so
/// a crash never loses a call whose answer was delivered).
pub(super) async fn finish(call: Call, ended: Ended, durable: bool) {
    let gw = &call.gw;
    let counted = ended.status < 300 || ended.status == STATUS_CLIENT_GONE;
    let (usage, estimated) = match (ended.usage, &ended.upstream) {
        (Some(u), _) => (u, false),
        (None, Some(up)) if counted => {
            let model = call.model.name.as_str();
            let prompt =
                super::tokenize::count(&gw.client, up, model, &prompt_text(&call.request)).await;
            let completion = super::tokenize::count(&gw.client, up, model, &ended.text).await;
            gw.metrics.estimated.inc();
            (Usage { prompt, completion }, true)
        }
        _ => (Usage::default(), false),
    };
    let latency = call.started.elapsed();
    let tier = call.model.tier;
    let m = &gw.metrics;
    let model = call.model.name.as_str();
    if usage.total() > 0 {
        let labels = |kind| [call.tenant.as_str(), model, tier.as_str(), kind];
        m.tokens
            .with_label_values(&labels("prompt"))
            .inc_by(usage.prompt as u64);
        m.tokens
            .with_label_values(&labels("completion"))
            .inc_by(usage.completion as u64);
    }
    let code = StatusCode::from_u16(ended.status)
        .map(|s| s.as_str().to_string())
        .unwrap_or_default();
    m.requests.with_label_values(&[model, code.as_str()]).inc();
    m.duration
        .with_label_values(&[model])
        .observe(latency.as_secs_f64());
    if let Some(t) = ended.ttft_ms {
        m.ttft
            .with_label_values(&[model])
            .observe(t as f64 / 1000.0);
    }
    gw.charge_tokens(&call.key_hash, usage.total(), Instant::now());
    let (upstream, region) = match &ended.upstream {
        Some(u) => (u.base.clone(), u.region.clone()),
        None => (String::new(), String::new()),
    };
    let record = CallRecord {
        request_id: call.request_id,
        tenant: call.tenant,
        key_prefix: hex::encode(&call.key_hash[..6]),
        model: call.model.name.clone(),
        tier,
        upstream,
        region,
        endpoint: call.endpoint.to_string(),
        status: ended.status,
        prompt_tokens: usage.prompt,
        completion_tokens: usage.completion,
        estimated,
        ttft_ms: ended.ttft_ms,
        latency_ms: latency.as_millis() as i64,
        at: call.at,
    };
    if !durable {
        gw.recorder.record(record);
    } else if !gw.recorder.record_durably(record, DURABLE_PATIENCE).await {
        tracing::warn!(
            "a call's record was not in the ledger within {DURABLE_PATIENCE:?}; answering, its write goes on"
        );
    }
}

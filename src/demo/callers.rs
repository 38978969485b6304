//! The demo's model callers: each seeded tenant calls the demo's models
//! through the token gateway on the demo's own port with a key of its own,
//! a few calls a second in all (`--model-calls-per-s`), some streamed, so
//! the gateway's metering, audit, vouchers and dashboards have traffic.
//! These are real HTTP calls at wall-clock time, not simulated ones: they
//! are billed when they happen and are not replayed after a restart.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use rand::{Rng, SeedableRng};
use serde_json::json;

use crate::ledger::Tier;

/// The demo's models: (name, tier).
pub const MODELS: [(&str, Tier); 2] = [("demo-chat", Tier::Industry), ("demo-lite", Tier::Basic)];

/// A tenant with its key.
pub struct Caller {
    pub tenant: String,
    pub key: String,
    pub tier: Tier,
}

/// Calls `base`'s gateway `per_s` times a second in all until `stop`.
pub fn spawn(
    runtime: &tokio::runtime::Runtime,
    base: String,
    callers: Vec<Caller>,
    per_s: f64,
    seed: u64,
    stop: Arc<AtomicBool>,
) {
    if callers.is_empty() || per_s <= 0.0 {
        return;
    }
    runtime.spawn(async move {
        let client: Client<_, Full<Bytes>> = Client::builder(TokioExecutor::new()).build_http();
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(seed);
        let mut tick = tokio::time::interval(Duration::from_secs_f64(1.0 / per_s));
        let url = format!("{base}/v1/chat/completions");
        for i in 0usize.. {
            tick.tick().await;
            if stop.load(Ordering::Relaxed) {
                return;
            }
            let c = &callers[i % callers.len()];
            // A tenant whose services are industry-tier calls that model.
            let model = if c.tier == Tier::Industry { MODELS[0].0 } else { MODELS[1].0 };
            let body = json!({
                "model": model,
                "messages": [{"role": "user", "content": "summarise this week's GPU usage by region"}],
                "max_tokens": rng.random_range(8..=120),
                "stream": rng.random_bool(0.3),
            });
            let Ok(req) = hyper::Request::post(&url)
                .header("content-type", "application/json")
                .header("authorization", format!("Bearer {}", c.key))
                .body(Full::new(Bytes::from(body.to_string())))
            else {
                continue;
            };
            let client = client.clone();
            tokio::spawn(async move {
                match client.request(req).await {
                    Ok(resp) => {
                        let _ = resp.into_body().collect().await;
                    }
                    Err(e) => tracing::debug!(error = %e, "demo model call failed"),
                }
            });
        }
    });
}

//! Counting tokens through the upstream's own tokenizer, for calls whose
//! upstream reported no usage (a stream without a usage chunk, a client
//! that went away). llama-cpp-python serves `POST /extras/tokenize`
//! (`{"input": …}` → `{"tokens": […]}`); vLLM serves `POST /tokenize`
//! (`{"prompt": …}` → `{"count": n}`). The first that answers is
//! remembered per upstream. When neither does, the count falls back to
//! one token per 4 bytes, rounded up (the record is marked estimated
//! either way). What the endpoint adds to any text (a BOS token) is
//! measured once by tokenizing the empty text, and taken off.

use std::sync::atomic::Ordering;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use serde_json::{json, Value};

use super::registry::{Upstream, TOKENIZE_LLAMA_CPP, TOKENIZE_UNKNOWN, TOKENIZE_VLLM};
use super::HttpClient;

/// Most bytes of a tokenize answer read.
const MAX_ANSWER: usize = 8 << 20;

/// Tokens of `text` as `upstream` counts them.
pub async fn count(client: &HttpClient, upstream: &Upstream, model: &str, text: &str) -> i64 {
    if text.is_empty() {
        return 0;
    }
    let known = upstream.tokenize.load(Ordering::Relaxed);
    let order: &[u8] = match known {
        TOKENIZE_VLLM => &[TOKENIZE_VLLM],
        TOKENIZE_LLAMA_CPP => &[TOKENIZE_LLAMA_CPP],
        _ => &[TOKENIZE_LLAMA_CPP, TOKENIZE_VLLM],
    };
    for &kind in order {
        if let Some(n) = ask(client, upstream, kind, model, text).await {
            if known == TOKENIZE_UNKNOWN {
                upstream.tokenize.store(kind, Ordering::Relaxed);
            }
            return (n - overhead(client, upstream, kind, model).await).max(0);
        }
    }
    tracing::warn!(upstream = %upstream.base, "upstream has no tokenize endpoint; counting 4 bytes a token");
    text.len().div_ceil(4) as i64
}

/// What the endpoint adds to every text (llama-cpp-python's adds the
/// model's BOS token): the count of the empty text, asked once.
async fn overhead(client: &HttpClient, upstream: &Upstream, kind: u8, model: &str) -> i64 {
    let known = upstream.tokenize_overhead.load(Ordering::Relaxed);
    if known >= 0 {
        return known;
    }
    let n = ask(client, upstream, kind, model, "")
        .await
        .unwrap_or(0)
        .max(0);
    upstream.tokenize_overhead.store(n, Ordering::Relaxed);
    n
}

async fn ask(
    client: &HttpClient,
    upstream: &Upstream,
    kind: u8,
    model: &str,
    text: &str,
) -> Option<i64> {
    let (path, body) = match kind {
        TOKENIZE_LLAMA_CPP => ("/extras/tokenize", json!({ "input": text, "model": model })),
        _ => (
            "/tokenize",
            json!({ "prompt": text, "model": model, "add_special_tokens": false }),
        ),
    };
    let req = axum::http::Request::post(format!("{}{path}", upstream.base))
        .header("content-type", "application/json")
        .body(Full::new(Bytes::from(body.to_string())))
        .ok()?;
    let resp = client.request(req).await.ok()?;
    if !resp.status().is_success() {
        return None;
    }
    let bytes = http_body_util::Limited::new(resp.into_body(), MAX_ANSWER)
        .collect()
        .await
        .ok()?
        .to_bytes();
    let v: Value = serde_json::from_slice(&bytes).ok()?;
    if let Some(n) = v.get("count").and_then(Value::as_i64) {
        return Some(n);
    }
    v.get("tokens")
        .and_then(Value::as_array)
        .map(|t| t.len() as i64)
}

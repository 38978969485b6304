//! The demo's model: a small OpenAI-compatible server the demo's token
//! gateway routes to (no weights, nothing downloaded). It answers
//! `max_tokens` words ("w1 w2 …"), counts a token per whitespace-separated
//! word, streams a chunk per word, sends the final usage chunk only when
//! `usage_in_stream` is set and the request asks for it, and serves
//! llama-cpp-python's `POST /extras/tokenize` and `GET /v1/models` (the gateway's
//! health probe). It keeps the last request
//! body and headers it received (the gateway's tests read them; the
//! gateway's bench uses it as the fast local upstream).

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::body::Body;
use axum::extract::State;
use axum::http::{HeaderMap, Response};
use axum::routing::post;
use axum::{Json, Router};
use serde_json::{json, Value};

#[derive(Default)]
pub struct Seen {
    pub body: Option<Value>,
    pub headers: Option<HeaderMap>,
    pub calls: u64,
}

#[derive(Clone)]
pub struct Upstream {
    pub usage_in_stream: bool,
    /// Time to generate one word (streamed: between chunks; not streamed:
    /// before the answer, for all its words).
    pub word_delay: Duration,
    pub seen: Arc<Mutex<Seen>>,
}

fn words(v: &Value) -> i64 {
    let mut n = 0;
    if let Some(msgs) = v.get("messages").and_then(Value::as_array) {
        for m in msgs {
            n += m["content"]
                .as_str()
                .unwrap_or("")
                .split_whitespace()
                .count() as i64;
        }
    }
    for key in ["prompt", "input"] {
        if let Some(s) = v.get(key).and_then(Value::as_str) {
            n += s.split_whitespace().count() as i64;
        }
    }
    n
}

async fn completion(
    State(u): State<Upstream>,
    headers: HeaderMap,
    Json(req): Json<Value>,
) -> Response<Body> {
    {
        let mut seen = u.seen.lock().unwrap_or_else(|p| p.into_inner());
        seen.body = Some(req.clone());
        seen.headers = Some(headers);
        seen.calls += 1;
    }
    let n = req["max_tokens"].as_i64().unwrap_or(5);
    let prompt = words(&req);
    let usage =
        json!({"prompt_tokens": prompt, "completion_tokens": n, "total_tokens": prompt + n});
    let text: Vec<String> = (1..=n)
        .map(|i| {
            if i == 1 {
                format!("w{i}")
            } else {
                format!(" w{i}")
            }
        })
        .collect();
    if req["stream"].as_bool() != Some(true) {
        // Generation takes as long as streaming the words would.
        if !u.word_delay.is_zero() {
            tokio::time::sleep(u.word_delay * u32::try_from(n.max(0)).unwrap_or(u32::MAX)).await;
        }
        let body = json!({
            "id": "x", "object": "chat.completion", "model": req["model"],
            "choices": [{"index": 0, "message": {"role": "assistant", "content": text.concat()}, "finish_reason": "length"}],
            "usage": usage,
        });
        return Response::builder()
            .header("content-type", "application/json")
            .body(Body::from(body.to_string()))
            .unwrap_or_default();
    }
    let with_usage =
        u.usage_in_stream && req["stream_options"]["include_usage"].as_bool() == Some(true);
    let delay = u.word_delay;
    let stream = async_stream(text, with_usage.then_some(usage), delay);
    Response::builder()
        .header("content-type", "text/event-stream")
        .body(Body::from_stream(stream))
        .unwrap_or_default()
}

fn async_stream(
    text: Vec<String>,
    usage: Option<Value>,
    delay: Duration,
) -> impl futures::Stream<Item = Result<String, std::io::Error>> {
    let mut events: Vec<String> = text
        .into_iter()
        .map(|w| {
            format!(
                "data: {}\n\n",
                json!({"choices": [{"index": 0, "delta": {"content": w}}]})
            )
        })
        .collect();
    if let Some(u) = usage {
        events.push(format!("data: {}\n\n", json!({"choices": [], "usage": u})));
    }
    events.push("data: [DONE]\n\n".to_string());
    futures::stream::unfold(events.into_iter(), move |mut it| async move {
        let next = it.next()?;
        if !delay.is_zero() {
            tokio::time::sleep(delay).await;
        }
        Some((Ok(next), it))
    })
}

async fn models() -> Json<Value> {
    Json(
        json!({"object": "list", "data": [{"id": "demo", "object": "model", "owned_by": "zhisuan"}]}),
    )
}

async fn tokenize(Json(req): Json<Value>) -> Json<Value> {
    let n = req["input"]
        .as_str()
        .unwrap_or("")
        .split_whitespace()
        .count();
    Json(json!({ "tokens": vec![7; n] }))
}

/// Starts the server on loopback (on the caller's runtime).
pub async fn start(u: Upstream) -> std::io::Result<SocketAddr> {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    Ok(serve(listener, u))
}

/// Serves on `listener` (on the caller's runtime); returns its address.
pub fn serve(listener: tokio::net::TcpListener, u: Upstream) -> SocketAddr {
    let app = Router::new()
        .route("/v1/chat/completions", post(completion))
        .route("/v1/completions", post(completion))
        .route("/extras/tokenize", post(tokenize))
        .route("/v1/models", axum::routing::get(models))
        .with_state(u);
    let addr = listener
        .local_addr()
        .unwrap_or_else(|_| SocketAddr::from(([127, 0, 0, 1], 0)));
    tokio::spawn(async move {
        if let Err(e) = axum::serve(listener, app).await {
            tracing::error!(error = %e, "the demo model stopped");
        }
    });
    addr
}

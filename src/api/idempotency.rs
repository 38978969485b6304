//! `Idempotency-Key` on every POST (issue #16, item 7): a client that
//! retries after a lost response — a voucher issued, a tenant created, a job
//! submitted — gets the first answer again instead of a second one. Same key
//! and same body → the stored answer (header `Idempotent-Replayed: true`);
//! same key, other body → 422; the first still running → 409. Keys are
//! scoped to the caller's credential and the route, kept in the ledger (so
//! every replica and a restart see them). Only successful answers are kept:
//! a failed request releases its key and may be retried.

use axum::body::{to_bytes, Body};
use axum::extract::{Request, State};
use axum::http::{header::AUTHORIZATION, HeaderValue, Method, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use sha2::{Digest, Sha256};

use super::error::ApiError;
use super::ApiState;
use crate::ledger::idempotency::Idempotent;

pub const HEADER: &str = "idempotency-key";
/// Most bytes of a request body read for hashing (the API's own limit is lower).
const MAX_REQUEST: usize = 4 * 1024 * 1024;
/// Most bytes of an answer kept for replay.
const MAX_ANSWER: usize = 4 * 1024 * 1024;

fn check_key(raw: &HeaderValue) -> Result<String, ApiError> {
    let key = raw.to_str().ok().map(str::trim).unwrap_or("");
    let ok = (1..=255).contains(&key.len()) && key.bytes().all(|b| b.is_ascii_graphic());
    if !ok {
        return Err(ApiError::invalid(
            "Idempotency-Key",
            "Idempotency-Key: 1 to 255 visible ASCII characters (e.g. a UUID)",
        ));
    }
    Ok(key.to_string())
}

/// Middleware: replays or runs a POST that carries an `Idempotency-Key`.
pub async fn guard(State(state): State<ApiState>, req: Request, next: Next) -> Response {
    let Some(raw) = req.headers().get(HEADER).cloned() else {
        return next.run(req).await;
    };
    if req.method() != Method::POST
        || super::gateway::handlers::CALL_PATHS.contains(&req.uri().path())
    {
        return next.run(req).await;
    }
    match guarded(state, raw, req, next).await {
        Ok(r) => r,
        Err(e) => e.into_response(),
    }
}

async fn guarded(
    state: ApiState,
    raw: HeaderValue,
    req: Request,
    next: Next,
) -> Result<Response, ApiError> {
    let key = check_key(&raw)?;
    // The caller's credential (hashed) and the route: one tenant's key never
    // answers another's request.
    let credential = req
        .headers()
        .get(AUTHORIZATION)
        .map(|v| hex::encode(Sha256::digest(v.as_bytes())))
        .unwrap_or_default();
    let scope = format!(
        "{} {}",
        &credential[..credential.len().min(32)],
        req.uri().path()
    );
    let (parts, body) = req.into_parts();
    let body = to_bytes(body, MAX_REQUEST)
        .await
        .map_err(|_| ApiError::payload_too_large(MAX_REQUEST))?;
    let request_hash = hex::encode(Sha256::digest(&body));
    let (s, k, h) = (scope.clone(), key.clone(), request_hash);
    let decision = state
        .blocking(move |l| l.idempotency_reserve(&s, &k, &h))
        .await?;
    match decision {
        Idempotent::Replay { status, body } => {
            let status = StatusCode::from_u16(status).unwrap_or(StatusCode::OK);
            let mut r = (status, [("content-type", "application/json")], body).into_response();
            r.headers_mut()
                .insert("idempotent-replayed", HeaderValue::from_static("true"));
            Ok(r)
        }
        Idempotent::Mismatch => Err(ApiError::invalid(
            "Idempotency-Key",
            "Idempotency-Key: already used with a different request body; use a new key for a new request",
        )),
        Idempotent::InProgress => Err(ApiError::conflict(
            "a request with this Idempotency-Key is still running; retry in a moment",
        )),
        Idempotent::Run => {
            let response = next.run(Request::from_parts(parts, Body::from(body))).await;
            finish(&state, scope, key, response).await
        }
    }
}

/// Stores a successful answer for replay; releases the key otherwise.
async fn finish(
    state: &ApiState,
    scope: String,
    key: String,
    response: Response,
) -> Result<Response, ApiError> {
    let status = response.status();
    if !status.is_success() {
        state
            .blocking(move |l| l.idempotency_release(&scope, &key))
            .await?;
        return Ok(response);
    }
    let (parts, body) = response.into_parts();
    let bytes = to_bytes(body, MAX_ANSWER)
        .await
        .map_err(ApiError::internal)?;
    let text = String::from_utf8_lossy(&bytes).into_owned();
    state
        .blocking(move |l| l.idempotency_complete(&scope, &key, status.as_u16(), &text))
        .await?;
    Ok(Response::from_parts(parts, Body::from(bytes)))
}

//! The one error envelope every endpoint answers with:
//! `{"error": {"code": "...", "message": "...", "field": "..."}}`.

use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use serde::Serialize;
use utoipa::ToSchema;

/// Body of every non-2xx answer.
#[derive(Debug, Clone, Serialize, serde::Deserialize, ToSchema)]
pub struct ErrorBody {
    pub error: ErrorDetail,
}

/// What went wrong, machine-readable (`code`), human-readable (`message`, which
/// says how to fix it) and, for bad input, which `field` was at fault.
#[derive(Debug, Clone, Serialize, serde::Deserialize, ToSchema)]
pub struct ErrorDetail {
    pub code: String,
    pub message: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub field: Option<String>,
}

/// An error an API handler returns; rendered as [`ErrorBody`].
#[derive(Debug, Clone)]
pub struct ApiError {
    pub status: StatusCode,
    pub code: &'static str,
    pub message: String,
    pub field: Option<String>,
    /// Seconds to put in `Retry-After` (429 only).
    pub retry_after_s: Option<u64>,
}

impl ApiError {
    fn new(status: StatusCode, code: &'static str, message: impl Into<String>) -> Self {
        ApiError {
            status,
            code,
            message: message.into(),
            field: None,
            retry_after_s: None,
        }
    }

    pub fn with_field(mut self, field: impl Into<String>) -> Self {
        self.field = Some(field.into());
        self
    }

    /// 400: the request could not be read at all (malformed JSON, wrong content type).
    pub fn bad_request(message: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, "bad_request", message)
    }

    /// 422: a field is well-formed JSON but not acceptable.
    pub fn invalid(field: impl Into<String>, message: impl Into<String>) -> Self {
        Self::new(StatusCode::UNPROCESSABLE_ENTITY, "invalid_field", message).with_field(field)
    }

    /// 422: the request would exceed a quota limit; `field` names the limit.
    pub fn quota_exceeded(limit: impl Into<String>, message: impl Into<String>) -> Self {
        Self::new(StatusCode::UNPROCESSABLE_ENTITY, "quota_exceeded", message).with_field(limit)
    }

    pub fn unauthorized(message: impl Into<String>) -> Self {
        Self::new(StatusCode::UNAUTHORIZED, "unauthorized", message)
    }

    pub fn forbidden(message: impl Into<String>) -> Self {
        Self::new(StatusCode::FORBIDDEN, "forbidden", message)
    }

    pub fn not_found(message: impl Into<String>) -> Self {
        Self::new(StatusCode::NOT_FOUND, "not_found", message)
    }

    pub fn conflict(message: impl Into<String>) -> Self {
        Self::new(StatusCode::CONFLICT, "conflict", message)
    }

    pub fn new_method_not_allowed() -> Self {
        Self::new(
            StatusCode::METHOD_NOT_ALLOWED,
            "method_not_allowed",
            "this method is not allowed on this endpoint; GET /openapi.json lists the methods",
        )
    }

    pub fn payload_too_large(limit_bytes: usize) -> Self {
        Self::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            "body_too_large",
            format!("request body exceeds {limit_bytes} bytes; send a smaller body"),
        )
    }

    pub fn rate_limited(retry_after_s: u64) -> Self {
        let mut e = Self::new(
            StatusCode::TOO_MANY_REQUESTS,
            "rate_limited",
            format!("too many requests for this API key; retry after {retry_after_s} s"),
        );
        e.retry_after_s = Some(retry_after_s);
        e
    }

    /// 429 for a client address whose failed keys ran out (no lookup made).
    pub fn auth_throttled(retry_after_s: u64) -> Self {
        let mut e = Self::new(
            StatusCode::TOO_MANY_REQUESTS,
            "rate_limited",
            format!("too many unknown API keys from this address; retry after {retry_after_s} s"),
        );
        e.retry_after_s = Some(retry_after_s);
        e
    }

    /// 429 for a call beyond a token limit (`field` names it), retryable
    /// after `retry_after_s`.
    pub fn token_limit(field: &str, retry_after_s: u64, message: impl Into<String>) -> Self {
        let mut e =
            Self::new(StatusCode::TOO_MANY_REQUESTS, "quota_exceeded", message).with_field(field);
        e.retry_after_s = Some(retry_after_s);
        e
    }

    /// 502: the upstream behind the gateway failed.
    pub fn bad_gateway(message: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_GATEWAY, "upstream_failed", message)
    }

    /// 504: the upstream behind the gateway did not answer in time.
    pub fn gateway_timeout(message: impl Into<String>) -> Self {
        Self::new(StatusCode::GATEWAY_TIMEOUT, "upstream_timeout", message)
    }

    /// 503: nothing can serve the request now.
    pub fn unavailable(message: impl Into<String>) -> Self {
        Self::new(StatusCode::SERVICE_UNAVAILABLE, "unavailable", message)
    }

    /// 500: logged with its cause; the client sees no internals.
    pub fn internal(cause: impl std::fmt::Display) -> Self {
        tracing::error!(%cause, "internal error in API handler");
        Self::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            "internal",
            "internal error; the server log has the cause",
        )
    }

    pub fn body(&self) -> ErrorBody {
        ErrorBody {
            error: ErrorDetail {
                code: self.code.to_string(),
                message: self.message.clone(),
                field: self.field.clone(),
            },
        }
    }
}

/// Ledger errors: bad input names its field (422), unknown names are 404 /
/// 422, duplicates 409, storage failures 500.
impl From<crate::ledger::LedgerError> for ApiError {
    fn from(e: crate::ledger::LedgerError) -> Self {
        use crate::ledger::LedgerError as L;
        match e {
            L::Invalid { field, message } => {
                let message = format!("{field}: {message}");
                ApiError::invalid(field, message)
            }
            L::UnknownTenant(_) => ApiError::invalid("tenant", e.to_string()),
            L::NotFound { .. } => ApiError::not_found(e.to_string()),
            L::Conflict { .. } => ApiError::conflict(e.to_string()),
            L::Storage(_) => ApiError::internal(e),
        }
    }
}

impl std::fmt::Display for ApiError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{} {}: {}",
            self.status.as_u16(),
            self.code,
            self.message
        )?;
        if let Some(field) = &self.field {
            write!(f, " (field {field})")?;
        }
        Ok(())
    }
}

impl std::error::Error for ApiError {}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let mut resp = (self.status, axum::Json(self.body())).into_response();
        if let Some(s) = self.retry_after_s {
            resp.headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from(s));
        }
        resp
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn envelope_names_code_message_and_field() {
        let e = ApiError::invalid("replicas", "must be at least 1");
        let v = serde_json::to_value(e.body()).unwrap();
        assert_eq!(v["error"]["code"], "invalid_field");
        assert_eq!(v["error"]["field"], "replicas");
        assert_eq!(v["error"]["message"], "must be at least 1");
        assert_eq!(e.status, StatusCode::UNPROCESSABLE_ENTITY);
    }

    #[test]
    fn rate_limited_sets_retry_after() {
        let resp = ApiError::rate_limited(3).into_response();
        assert_eq!(resp.status(), StatusCode::TOO_MANY_REQUESTS);
        assert_eq!(resp.headers()[header::RETRY_AFTER], "3");
    }
}

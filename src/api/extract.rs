//! JSON body and query-string extractors whose rejections use the API's error
//! envelope and name the offending field (axum's own say neither).

use axum::body::Bytes;
use axum::extract::{FromRequest, FromRequestParts, Request};
use axum::http::{header, request::Parts};
use serde::de::DeserializeOwned;

use super::error::ApiError;

/// Turns a serde failure at `path` into a 422 naming the field.
/// The name a message starts with ("name: what is wrong"), if any.
fn leading_name(message: &str) -> Option<&str> {
    let (name, _) = message.split_once(": ")?;
    (!name.is_empty() && name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_'))
        .then_some(name)
}

fn data_error(path: String, message: String) -> ApiError {
    let mut field = path;
    // serde reports unknown / missing fields at the parent; pull the name out.
    for marker in ["unknown field `", "missing field `"] {
        if let Some(rest) = message.split(marker).nth(1) {
            if let Some(name) = rest.split('`').next() {
                field = if field == "." || field.is_empty() {
                    name.to_string()
                } else if field == name || field.ends_with(&format!(".{name}")) {
                    field
                } else {
                    format!("{field}.{name}")
                };
            }
        }
    }
    if field == "." {
        // A check over several fields names the one to fix first: "name: ...".
        field = leading_name(&message).unwrap_or("request").to_string();
    }
    let hint = if message.starts_with("unknown field") {
        "; remove it (unknown fields are rejected)"
    } else {
        ""
    };
    ApiError::invalid(field.clone(), format!("{field}: {message}{hint}"))
}

/// A JSON request body of type `T` (which should `deny_unknown_fields`).
pub struct ApiJson<T>(pub T);

impl<S: Send + Sync, T: DeserializeOwned> FromRequest<S> for ApiJson<T> {
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &S) -> Result<Self, ApiError> {
        let is_json = req
            .headers()
            .get(header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .map(|ct| {
                let mime = ct.split(';').next().unwrap_or("").trim();
                mime.eq_ignore_ascii_case("application/json")
            })
            .unwrap_or(false);
        if !is_json {
            return Err(ApiError::bad_request(
                "send the body as JSON with `Content-Type: application/json`",
            )
            .with_field("Content-Type"));
        }
        let limit = super::BODY_LIMIT_BYTES;
        let bytes = Bytes::from_request(req, state)
            .await
            .map_err(|_| ApiError::payload_too_large(limit))?;
        let de = &mut serde_json::Deserializer::from_slice(&bytes);
        match serde_path_to_error::deserialize::<_, T>(de) {
            Ok(v) => Ok(ApiJson(v)),
            Err(err) => {
                let inner = err.inner();
                if inner.is_data() {
                    Err(data_error(err.path().to_string(), inner.to_string()))
                } else {
                    Err(ApiError::bad_request(format!(
                        "malformed JSON body: {inner}"
                    )))
                }
            }
        }
    }
}

/// A query string of type `T` (which should `deny_unknown_fields`).
pub struct ApiQuery<T>(pub T);

impl<S: Send + Sync, T: DeserializeOwned> FromRequestParts<S> for ApiQuery<T> {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, _state: &S) -> Result<Self, ApiError> {
        axum::extract::Query::<T>::try_from_uri(&parts.uri)
            .map(|q| ApiQuery(q.0))
            .map_err(|rejection| {
                let text = rejection.body_text();
                let message = text
                    .strip_prefix("Failed to deserialize query string: ")
                    .unwrap_or(&text)
                    .to_string();
                // axum prefixes the parameter's name: "format: unknown variant ...".
                let path = leading_name(&message).unwrap_or(".").to_string();
                data_error(path, message)
            })
    }
}

//! Bearer-key authentication. The admin key is compared in constant time;
//! tenant keys are made by the ledger (random, shown once, stored as SHA-256
//! only). No key is ever logged; past this module only hashes are kept.

use std::time::Instant;

use axum::extract::FromRequestParts;
use axum::http::{header, request::Parts};
use sha2::{Digest, Sha256};

use super::error::ApiError;
use super::ApiState;

/// SHA-256 of a key.
pub fn key_hash(key: &str) -> [u8; 32] {
    Sha256::digest(key.as_bytes()).into()
}

/// Equality whose time does not depend on where the inputs differ.
pub fn constant_time_eq(a: &[u8; 32], b: &[u8; 32]) -> bool {
    let diff = a
        .iter()
        .zip(b.iter())
        .fold(0u8, |acc, (x, y)| acc | (x ^ y));
    std::hint::black_box(diff) == 0
}

/// Who is calling.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Principal {
    Admin,
    Tenant(String),
}

impl Principal {
    pub fn actor(&self) -> &str {
        match self {
            Principal::Admin => "admin",
            Principal::Tenant(t) => t,
        }
    }
}

pub(super) fn bearer(parts: &Parts) -> Result<&str, ApiError> {
    let value = parts.headers.get(header::AUTHORIZATION).ok_or_else(|| {
        ApiError::unauthorized("missing Authorization header; send `Authorization: Bearer <key>`")
    })?;
    let value = value
        .to_str()
        .map_err(|_| ApiError::unauthorized("Authorization header is not ASCII"))?;
    let key = value
        .strip_prefix("Bearer ")
        .or_else(|| value.strip_prefix("bearer "))
        .ok_or_else(|| {
            ApiError::unauthorized("Authorization must use the Bearer scheme: `Bearer <key>`")
        })?
        .trim();
    if key.is_empty() {
        return Err(ApiError::unauthorized("empty bearer key"));
    }
    Ok(key)
}

impl FromRequestParts<ApiState> for Principal {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &ApiState) -> Result<Self, ApiError> {
        Ok(KeyCaller::from_request_parts(parts, state).await?.principal)
    }
}

/// Who is calling, with the SHA-256 of the key used (for per-key limits
/// and the call audit's key prefix).
pub struct KeyCaller {
    pub principal: Principal,
    pub key_hash: [u8; 32],
}

impl FromRequestParts<ApiState> for KeyCaller {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &ApiState) -> Result<Self, ApiError> {
        let key = bearer(parts)?;
        let hash = key_hash(key);
        let principal = if constant_time_eq(&hash, &state.inner.admin_key_sha256) {
            Principal::Admin
        } else {
            let client = super::lockout::client_id(parts);
            match state.tenant_for_key(key, &hash, &client).await? {
                Some(t) => Principal::Tenant(t),
                None => return Err(ApiError::unauthorized("unknown API key")),
            }
        };
        state
            .inner
            .limiter
            .check(&hash, Instant::now())
            .map_err(ApiError::rate_limited)?;
        Ok(KeyCaller {
            principal,
            key_hash: hash,
        })
    }
}

/// The caller is the admin (403 otherwise).
pub struct Admin;

impl FromRequestParts<ApiState> for Admin {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &ApiState) -> Result<Self, ApiError> {
        match Principal::from_request_parts(parts, state).await? {
            Principal::Admin => Ok(Admin),
            Principal::Tenant(_) => Err(ApiError::forbidden(
                "this endpoint needs the admin key; tenant keys cannot use it",
            )),
        }
    }
}

/// The caller is a tenant; holds its name (403 for the admin key).
pub struct TenantCaller(pub String);

impl FromRequestParts<ApiState> for TenantCaller {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &ApiState) -> Result<Self, ApiError> {
        match Principal::from_request_parts(parts, state).await? {
            Principal::Tenant(t) => Ok(TenantCaller(t)),
            Principal::Admin => Err(ApiError::forbidden(
                "this endpoint acts as a tenant; use that tenant's key, or the admin endpoints under /v1/tenants/{name}",
            )),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn key_hash_is_sha256() {
        assert_ne!(key_hash("a"), key_hash("b"));
        // Known SHA-256 vector.
        assert_eq!(
            hex::encode(key_hash("abc")),
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
    }

    #[test]
    fn constant_time_eq_compares_every_byte() {
        let a = [3u8; 32];
        let mut b = a;
        assert!(constant_time_eq(&a, &b));
        b[31] ^= 1;
        assert!(!constant_time_eq(&a, &b));
        b = a;
        b[0] ^= 0x80;
        assert!(!constant_time_eq(&a, &b));
    }
}

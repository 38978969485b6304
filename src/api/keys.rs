//! Admin endpoints for tenants' API keys (issue #16, item 7): a new key
//! (shown once), the list by id, and revocation of one key — effective on
//! this replica at once and on every replica within [`super::KEY_CACHE_TTL`].

use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::Json;
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use super::admin::{unknown_tenant_is_404, ADMIN_ACTOR};
use super::auth::Admin;
use super::checks::check_name;
use super::error::ApiError;
use super::openapi::StdErrors;
use super::ApiState;
use crate::ledger::{ApiKeyInfo, KEY_ID_LEN};

#[derive(Serialize, Deserialize, ToSchema)]
pub struct CreatedKey {
    /// Names the key in the list and for revocation.
    pub id: String,
    /// Shown once; only its hash is stored.
    pub api_key: String,
}

#[derive(Serialize, Deserialize, ToSchema)]
pub struct KeyView {
    pub id: String,
    pub created_at: chrono::DateTime<chrono::Utc>,
    /// When it was revoked; absent while it works.
    pub revoked_at: Option<chrono::DateTime<chrono::Utc>>,
}

#[derive(Serialize, Deserialize, ToSchema)]
pub struct KeyList {
    pub keys: Vec<KeyView>,
}

impl From<ApiKeyInfo> for KeyView {
    fn from(k: ApiKeyInfo) -> Self {
        KeyView {
            id: k.id,
            created_at: k.created_at,
            revoked_at: k.revoked_at,
        }
    }
}

/// A new API key for a tenant (admin): for rotation, create one, move the
/// clients, then revoke the old one.
#[utoipa::path(post, path = "/v1/tenants/{name}/keys", tag = "admin", security(("bearer" = [])),
    params(("name" = String, Path, description = "tenant name")),
    responses((status = 201, body = CreatedKey), StdErrors))]
pub async fn create_key(
    State(state): State<ApiState>,
    _admin: Admin,
    Path(name): Path<String>,
) -> Result<(StatusCode, Json<CreatedKey>), ApiError> {
    check_name("name", &name)?;
    let key = state
        .blocking(move |l| l.create_api_key(ADMIN_ACTOR, &name))
        .await
        .map_err(unknown_tenant_is_404)?;
    let id = hex::encode(super::auth::key_hash(&key))[..KEY_ID_LEN].to_string();
    Ok((StatusCode::CREATED, Json(CreatedKey { id, api_key: key })))
}

/// A tenant's keys by id, revoked ones included (admin). Never the keys.
#[utoipa::path(get, path = "/v1/tenants/{name}/keys", tag = "admin", security(("bearer" = [])),
    params(("name" = String, Path, description = "tenant name")),
    responses((status = 200, body = KeyList), StdErrors))]
pub async fn list_keys(
    State(state): State<ApiState>,
    _admin: Admin,
    Path(name): Path<String>,
) -> Result<Json<KeyList>, ApiError> {
    check_name("name", &name)?;
    let keys = state
        .blocking(move |l| l.api_keys(&name))
        .await
        .map_err(unknown_tenant_is_404)?;
    Ok(Json(KeyList {
        keys: keys.into_iter().map(KeyView::from).collect(),
    }))
}

/// Revoke one key of a tenant (admin): refused at once here, within a
/// second on every other API replica.
#[utoipa::path(delete, path = "/v1/tenants/{name}/keys/{id}", tag = "admin", security(("bearer" = [])),
    params(("name" = String, Path, description = "tenant name"),
           ("id" = String, Path, description = "key id from the list")),
    responses((status = 204, description = "revoked"), StdErrors))]
pub async fn revoke_key(
    State(state): State<ApiState>,
    _admin: Admin,
    Path((name, id)): Path<(String, String)>,
) -> Result<StatusCode, ApiError> {
    check_name("name", &name)?;
    let (n, i) = (name.clone(), id.clone());
    state
        .blocking(move |l| l.revoke_api_key(ADMIN_ACTOR, &n, &i))
        .await
        .map_err(unknown_tenant_is_404)?;
    state.forget_key(&id);
    Ok(StatusCode::NO_CONTENT)
}

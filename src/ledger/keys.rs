//! Tenants' API keys: made (shown once, stored as SHA-256 only), listed by
//! id, revoked one by one or all at once, and a tenant created together with
//! its first key in one transaction (a lost response never leaves a tenant
//! without a usable key). A key's id is the first [`KEY_ID_LEN`] hex digits
//! of its SHA-256: safe to show, enough to name it.

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use super::error::{LedgerError, Result};
use super::sql::{Tx, Val};
use super::store::{
    audit_tx, hash_api_key, insert_tenant, now_s, random_hex, require_tenant, ts, Ledger,
};
use super::types::{validate_tenant_name, Tenant};

/// Hex digits of a key's SHA-256 that name it.
pub const KEY_ID_LEN: usize = 12;

/// A key as the admin sees it (never the key itself).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ApiKeyInfo {
    pub id: String,
    pub created_at: DateTime<Utc>,
    pub revoked_at: Option<DateTime<Utc>>,
}

/// A new random key.
fn new_key() -> Result<String> {
    Ok(format!("zs_{}", random_hex(24)?))
}

/// Stores a key's hash for `tenant` (audited), in `tx`.
fn insert_key(tx: &mut dyn Tx, actor: &str, tenant: &str, hash: &str) -> Result<()> {
    require_tenant(tx, tenant)?;
    if !tx
        .rows(
            "SELECT 1 FROM api_keys WHERE key_hash = $1",
            &[Val::T(hash)],
        )?
        .is_empty()
    {
        return Err(LedgerError::Conflict {
            what: "api key",
            id: format!("sha256:{}…", &hash[..KEY_ID_LEN]),
        });
    }
    tx.exec(
        "INSERT INTO api_keys (key_hash, tenant, created_at) VALUES ($1, $2, $3)",
        &[Val::T(hash), Val::T(tenant), Val::I(now_s())],
    )?;
    audit_tx(
        tx,
        actor,
        "api_key.create",
        tenant,
        &serde_json::json!({ "key_id": &hash[..KEY_ID_LEN] }),
    )
}

impl Ledger {
    /// Creates a tenant and its first API key in one transaction; returns
    /// the tenant and the key (shown once).
    pub fn create_tenant_with_key(
        &self,
        actor: &str,
        name: &str,
        parent: Option<&str>,
    ) -> Result<(Tenant, String)> {
        validate_tenant_name(name)?;
        if let Some(p) = parent {
            validate_tenant_name(p).map_err(|_| {
                LedgerError::invalid("parent", format!("'{p}' is not a valid tenant name"))
            })?;
        }
        let key = new_key()?;
        let hash = hash_api_key(&key);
        let now = now_s();
        self.write(|tx| {
            insert_tenant(tx, actor, name, parent, now)?;
            insert_key(tx, actor, name, &hash)
        })?;
        let tenant = Tenant {
            name: name.into(),
            parent: parent.map(str::to_string),
            created_at: ts(now),
        };
        Ok((tenant, key))
    }

    /// Creates an API key for `tenant`; returns the key, which is shown once
    /// and stored only as its SHA-256.
    pub fn create_api_key(&self, actor: &str, tenant: &str) -> Result<String> {
        let key = new_key()?;
        self.add_api_key_hash(actor, tenant, &Sha256::digest(key.as_bytes()).into())?;
        Ok(key)
    }

    /// Stores an API key the caller generated, by its SHA-256 only (the API
    /// shows the key once and never keeps it).
    pub fn add_api_key_hash(&self, actor: &str, tenant: &str, key_sha256: &[u8; 32]) -> Result<()> {
        let hash = hex::encode(key_sha256);
        self.write(|tx| insert_key(tx, actor, tenant, &hash))
    }

    /// The tenant owning the key with this SHA-256, if known and not revoked.
    pub fn tenant_for_key_hash(&self, key_sha256: &[u8; 32]) -> Result<Option<String>> {
        let hash = hex::encode(key_sha256);
        let rows = self.read(|tx| {
            tx.rows(
                "SELECT tenant FROM api_keys WHERE key_hash = $1 AND revoked_at IS NULL",
                &[Val::T(&hash)],
            )
        })?;
        Ok(rows.first().map(|r| r[0].t()))
    }

    /// The tenant an API key belongs to, if the key is known and not revoked.
    pub fn tenant_for_api_key(&self, key: &str) -> Result<Option<String>> {
        self.tenant_for_key_hash(&Sha256::digest(key.as_bytes()).into())
    }

    /// The keys of `tenant`, oldest first.
    pub fn api_keys(&self, tenant: &str) -> Result<Vec<ApiKeyInfo>> {
        let rows = self.read(|tx| {
            require_tenant(tx, tenant)?;
            tx.rows(
                "SELECT key_hash, created_at, revoked_at FROM api_keys WHERE tenant = $1 \
                 ORDER BY created_at, key_hash",
                &[Val::T(tenant)],
            )
        })?;
        Ok(rows
            .iter()
            .map(|r| ApiKeyInfo {
                id: r[0].t().chars().take(KEY_ID_LEN).collect(),
                created_at: ts(r[1].i()),
                revoked_at: r[2].opt_i().map(ts),
            })
            .collect())
    }

    /// Revokes the key of `tenant` named `id` (see [`ApiKeyInfo::id`]);
    /// revoking a revoked key again is a no-op. Unknown ids are `NotFound`.
    pub fn revoke_api_key(&self, actor: &str, tenant: &str, id: &str) -> Result<()> {
        let valid = id.len() == KEY_ID_LEN && id.bytes().all(|b| b.is_ascii_hexdigit());
        if !valid {
            return Err(LedgerError::invalid(
                "id",
                format!("'{id}' is not a key id ({KEY_ID_LEN} hex digits, from GET /v1/tenants/{{name}}/keys)"),
            ));
        }
        let id = id.to_ascii_lowercase();
        let pattern = format!("{id}%");
        self.write(|tx| {
            require_tenant(tx, tenant)?;
            let found = tx.rows(
                "SELECT key_hash FROM api_keys WHERE tenant = $1 AND key_hash LIKE $2",
                &[Val::T(tenant), Val::T(&pattern)],
            )?;
            if found.is_empty() {
                return Err(LedgerError::NotFound {
                    what: "api key",
                    id: id.clone(),
                });
            }
            let n = tx.exec(
                "UPDATE api_keys SET revoked_at = $1 \
                 WHERE tenant = $2 AND key_hash LIKE $3 AND revoked_at IS NULL",
                &[Val::I(now_s()), Val::T(tenant), Val::T(&pattern)],
            )?;
            if n > 0 {
                audit_tx(
                    tx,
                    actor,
                    "api_key.revoke",
                    tenant,
                    &serde_json::json!({ "key_id": id }),
                )?;
            }
            Ok(())
        })
    }

    /// Revokes every key of `tenant`; returns how many were revoked.
    pub fn revoke_api_keys(&self, actor: &str, tenant: &str) -> Result<u64> {
        self.write(|tx| {
            require_tenant(tx, tenant)?;
            let n = tx.exec(
                "UPDATE api_keys SET revoked_at = $1 WHERE tenant = $2 AND revoked_at IS NULL",
                &[Val::I(now_s()), Val::T(tenant)],
            )?;
            audit_tx(
                tx,
                actor,
                "api_key.revoke",
                tenant,
                &serde_json::json!({ "revoked": n }),
            )?;
            Ok(n)
        })
    }
}

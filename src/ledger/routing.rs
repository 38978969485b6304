//! A tenant's routing default for the token gateway: the region its users
//! call from and the round trip they accept. A call's own headers
//! (`X-Zhisuan-Region`, `X-Zhisuan-Latency-Slo-Ms`) override it, field by
//! field; without either the gateway routes by load alone.

use serde::{Deserialize, Serialize};

use super::error::{LedgerError, Result};
use super::sql::Val;
use super::store::{audit_tx, require_tenant, Ledger};

/// Most a latency SLO may be, ms (a minute).
pub const MAX_SLO_MS: i64 = 60_000;

/// Where a tenant's users are and what round trip they accept.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Routing {
    /// The region the tenant's users call from (a user region of the
    /// latency table, or a region's own name).
    pub user_region: String,
    /// Upstreams farther than this round trip from `user_region` are not
    /// used (none: any region, nearest first).
    #[serde(default)]
    pub latency_slo_ms: Option<i64>,
}

impl Routing {
    /// Checks the fields, naming the one that is wrong.
    pub fn validate(&self) -> Result<()> {
        let r = &self.user_region;
        if r.is_empty() || r.len() > 63 || super::types::text_problem(r).is_some() {
            return Err(LedgerError::invalid(
                "user_region",
                format!("`{r}` must be a region name of 1-63 printable characters (GET /v1/regions lists them)"),
            ));
        }
        if let Some(ms) = self.latency_slo_ms {
            if !(1..=MAX_SLO_MS).contains(&ms) {
                return Err(LedgerError::invalid(
                    "latency_slo_ms",
                    format!("{ms} must be 1..={MAX_SLO_MS} milliseconds (or null for none)"),
                ));
            }
        }
        Ok(())
    }
}

impl Ledger {
    /// `tenant`'s routing default, if it has one.
    pub fn routing(&self, tenant: &str) -> Result<Option<Routing>> {
        let rows = self.read(|tx| {
            tx.rows(
                "SELECT user_region, latency_slo_ms FROM tenant_routing WHERE tenant = $1",
                &[Val::T(tenant)],
            )
        })?;
        Ok(rows.first().map(|r| Routing {
            user_region: r[0].t(),
            latency_slo_ms: r[1].opt_i(),
        }))
    }

    /// Sets (or with `None` clears) `tenant`'s routing default; audited.
    pub fn set_routing(&self, actor: &str, tenant: &str, routing: Option<&Routing>) -> Result<()> {
        if let Some(r) = routing {
            r.validate()?;
        }
        self.write(|tx| {
            require_tenant(tx, tenant)?;
            tx.exec(
                "DELETE FROM tenant_routing WHERE tenant = $1",
                &[Val::T(tenant)],
            )?;
            if let Some(r) = routing {
                let slo = r.latency_slo_ms.map_or(Val::NullT, Val::I);
                tx.exec(
                    "INSERT INTO tenant_routing (tenant, user_region, latency_slo_ms) VALUES ($1, $2, $3)",
                    &[Val::T(tenant), Val::T(&r.user_region), slo],
                )?;
            }
            audit_tx(
                tx,
                actor,
                "routing.set",
                tenant,
                &serde_json::json!({ "routing": routing }),
            )
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_routing_default_is_stored_replaced_cleared_and_audited() {
        let l = Ledger::open(":memory:").unwrap();
        l.create_tenant("admin", "acme", None).unwrap();
        assert_eq!(l.routing("acme").unwrap(), None);
        let beijing = Routing {
            user_region: "beijing".into(),
            latency_slo_ms: Some(40),
        };
        l.set_routing("acme", "acme", Some(&beijing)).unwrap();
        assert_eq!(l.routing("acme").unwrap(), Some(beijing));
        let anywhere = Routing {
            user_region: "shanghai".into(),
            latency_slo_ms: None,
        };
        l.set_routing("admin", "acme", Some(&anywhere)).unwrap();
        assert_eq!(l.routing("acme").unwrap(), Some(anywhere));
        l.set_routing("admin", "acme", None).unwrap();
        assert_eq!(l.routing("acme").unwrap(), None);
        let actions: Vec<String> = l
            .audit_since(0, 100)
            .unwrap()
            .into_iter()
            .filter(|e| e.action == "routing.set")
            .map(|e| e.actor)
            .collect();
        assert_eq!(actions, ["acme", "admin", "admin"]);
        let bad = |user_region: &str, latency_slo_ms| {
            l.set_routing(
                "admin",
                "acme",
                Some(&Routing {
                    user_region: user_region.into(),
                    latency_slo_ms,
                }),
            )
            .unwrap_err()
            .field()
            .map(str::to_string)
        };
        assert_eq!(bad("", None).as_deref(), Some("user_region"));
        assert_eq!(bad("bei\u{202e}jing", None).as_deref(), Some("user_region"));
        assert_eq!(bad("beijing", Some(0)).as_deref(), Some("latency_slo_ms"));
        assert_eq!(
            bad("beijing", Some(60_001)).as_deref(),
            Some("latency_slo_ms")
        );
        assert!(l.set_routing("admin", "nobody", None).is_err());
    }
}

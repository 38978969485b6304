//! The demo's tenants, quotas, compute vouchers (算力券) and rate card,
//! written to the ledger idempotently: a demo restarted on the same `--db`
//! finds them in place and issues nothing twice (fixed voucher ids).

use crate::jobs::QuotaNode;
use crate::ledger::types::{Tier, VoucherSpec};
use crate::ledger::Ledger;
use crate::ledger::Quota;
use chrono::{DateTime, Utc};
use std::collections::BTreeMap;

/// Who the ledger records as the actor of the demo's own admin actions.
pub const ACTOR: &str = "demo";

/// A tenant of the demo workload (`data/workload/openb-regions.csv`).
pub struct DemoTenant {
    pub name: &'static str,
    pub parent: Option<&'static str>,
    /// Price tier of the tokens its inference services serve.
    pub tier: Tier,
    /// GPUs it may hold at once (any model).
    pub max_gpus: i64,
    /// Its voucher, if any: (issuer, face value in CNY, co-pay ratio in basis
    /// points, eligible regions — empty = any).
    pub voucher: Option<(&'static str, i64, i64, &'static [&'static str])>,
}

/// Tree roots that are tenants only as quota parents.
pub const PARENTS: &[&str] = &["beijing", "hangzhou"];

pub const TENANTS: &[DemoTenant] = &[
    DemoTenant {
        name: "hz-llm-startup",
        parent: Some("hangzhou"),
        tier: Tier::Basic,
        max_gpus: 600,
        // Hangzhou-style compute voucher: covers up to 50% of each bill.
        voucher: Some((
            "Hangzhou Municipal Economic and Information Bureau",
            200_000,
            5_000,
            &[],
        )),
    },
    DemoTenant {
        name: "sh-fin-ai",
        parent: None,
        tier: Tier::HighValue,
        max_gpus: 500,
        voucher: None,
    },
    DemoTenant {
        name: "sz-vision-sme",
        parent: None,
        tier: Tier::Industry,
        max_gpus: 500,
        // Only for work placed in the western hubs.
        voucher: Some((
            "Shenzhen SME Service Bureau",
            50_000,
            3_000,
            &["zhongwei", "qingyang", "horinger", "guian"],
        )),
    },
    DemoTenant {
        name: "bj-gov-data",
        parent: Some("beijing"),
        tier: Tier::Industry,
        max_gpus: 400,
        voucher: None,
    },
    DemoTenant {
        name: "solo-dev",
        parent: None,
        tier: Tier::Basic,
        max_gpus: 120,
        // A one-person company: small voucher, covers 80% of each bill.
        voucher: Some(("Chengdu Science and Technology Bureau", 5_000, 8_000, &[])),
    },
    DemoTenant {
        name: "cd-edu-cloud",
        parent: None,
        tier: Tier::Basic,
        max_gpus: 300,
        voucher: Some((
            "Sichuan Provincial Department of Education",
            30_000,
            6_000,
            &[],
        )),
    },
];

/// Token tier of a tenant's inference (basic for a tenant not in the table).
pub fn tier_of(tenant: &str) -> Tier {
    TENANTS
        .iter()
        .find(|t| t.name == tenant)
        .map_or(Tier::Basic, |t| t.tier)
}

pub fn voucher_id(tenant: &str) -> String {
    format!("demo-voucher-{tenant}")
}

/// A seeded tenant's quota.
fn seeded_quota(t: &DemoTenant) -> Quota {
    Quota {
        gpus: BTreeMap::from([("*".to_string(), t.max_gpus)]),
        // Half guaranteed, the rest borrowed from idle capacity.
        guaranteed_gpus: t.max_gpus / 2,
        borrowable: true,
        ..Quota::default()
    }
}

/// The seeded quotas as the simulated cluster's, which its scheduler
/// enforces as the controller enforces TenantQuotas on a cluster. Quotas
/// set later through the API reach it through the journal, in order, so a
/// restarted demo replays exactly what the first run did.
pub fn project_quotas(world: &mut crate::sim::world::World) {
    // The tree's roots bound nothing themselves, but a child's quota
    // names its parent's, which must exist.
    for parent in PARENTS {
        world.set_quota(QuotaNode::new(parent, None, Quota::default()));
    }
    for t in TENANTS {
        world.set_quota(QuotaNode::new(t.name, t.parent, seeded_quota(t)));
    }
}

/// The demo's model voucher (模型券): (tenant, issuer, face value in CNY,
/// co-pay in basis points, tiers). Valid for decades, so it pays both the
/// simulated services' tokens and the calls made now through the gateway.
pub const MODEL_VOUCHER: (&str, &str, i64, i64, &[Tier]) = (
    "sz-vision-sme",
    "Shenzhen AI Model Voucher Programme",
    20_000,
    5_000,
    &[Tier::Industry],
);

/// Creates what is missing; returns how many tenants were created now.
pub fn seed(
    ledger: &Ledger,
    valid_from: DateTime<Utc>,
    valid_until: DateTime<Utc>,
) -> anyhow::Result<usize> {
    ledger.ensure_rate_card(ACTOR)?;
    let mut created = 0;
    for parent in PARENTS {
        if ledger.tenant(parent)?.is_none() {
            ledger.create_tenant(ACTOR, parent, None)?;
            created += 1;
        }
    }
    for t in TENANTS {
        if ledger.tenant(t.name)?.is_none() {
            ledger.create_tenant(ACTOR, t.name, t.parent)?;
            // Seeded once: a quota changed through the API later stays.
            ledger.set_quota(ACTOR, t.name, &seeded_quota(t))?;
            created += 1;
        }
        if let Some((issuer, yuan, copay_bp, regions)) = t.voucher {
            let id = voucher_id(t.name);
            let exists = ledger.vouchers(Some(t.name))?.iter().any(|v| v.id == id);
            if !exists {
                ledger.issue_voucher(
                    ACTOR,
                    &VoucherSpec {
                        id: Some(id),
                        tenant: t.name.to_string(),
                        issuer: issuer.to_string(),
                        face_value_fen: yuan * 100,
                        copay_ratio_bp: copay_bp,
                        valid_from,
                        valid_until,
                        regions: regions.iter().map(|r| r.to_string()).collect(),
                        kinds: Vec::new(),
                        tiers: vec![],
                        models: vec![],
                    },
                )?;
            }
        }
    }
    let (tenant, issuer, yuan, copay_bp, tiers) = MODEL_VOUCHER;
    let id = format!("demo-model-voucher-{tenant}");
    if !ledger.vouchers(Some(tenant))?.iter().any(|v| v.id == id) {
        let at = |y| {
            chrono::TimeZone::with_ymd_and_hms(&Utc, y, 1, 1, 0, 0, 0)
                .single()
                .unwrap_or(valid_from)
        };
        ledger.issue_voucher(
            ACTOR,
            &VoucherSpec {
                id: Some(id),
                tenant: tenant.to_string(),
                issuer: issuer.to_string(),
                face_value_fen: yuan * 100,
                copay_ratio_bp: copay_bp,
                valid_from: at(2020),
                valid_until: at(2100),
                regions: vec![],
                kinds: vec![],
                tiers: tiers.to_vec(),
                models: vec![],
            },
        )?;
    }
    Ok(created)
}

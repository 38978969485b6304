//! Quota: the tenant tree (hierarchical limits per GPU model, guarantees and
//! borrowing), GPUs held now, and monthly GPU-hour and token limits against
//! the month-to-date use. Pure; which models a job may still take is
//! [`quota_models`].

use std::collections::{BTreeMap, BTreeSet};

use crate::jobs::{describe, gpus_to_milli, MonthToDate, QuotaView, MILLI_GPU_S_PER_GPU_HOUR};

/// Tenant → quota, with validity decided over the whole tree.
pub(super) struct Quotas<'a> {
    pub(super) by_tenant: BTreeMap<&'a str, &'a QuotaView>,
    /// Tenant → why its quota (or an ancestor's) is unusable.
    pub(super) invalid: BTreeMap<String, String>,
}

impl<'a> Quotas<'a> {
    pub(super) fn new(quotas: &'a [QuotaView]) -> Quotas<'a> {
        let mut by_tenant = BTreeMap::new();
        let mut invalid = BTreeMap::new();
        for q in quotas {
            if !q.errors.is_empty() {
                invalid.insert(
                    q.spec.tenant.clone(),
                    format!("TenantQuota {}: {}", q.name, describe(&q.errors)),
                );
            }
            if let Some(first) = by_tenant.insert(q.spec.tenant.as_str(), q) {
                invalid.insert(
                    q.spec.tenant.clone(),
                    format!(
                        "TenantQuotas {} and {} both claim tenant {:?}: spec.tenant must be unique",
                        first.name, q.name, q.spec.tenant
                    ),
                );
            }
        }
        let parents: BTreeMap<String, Option<String>> = by_tenant
            .iter()
            .map(|(t, q)| (t.to_string(), q.spec.parent.clone()))
            .collect();
        for t in quota_cycles(&parents) {
            let q = by_tenant[t.as_str()];
            invalid.insert(
                t.clone(),
                format!("TenantQuota {}: spec.parent forms a cycle through tenant {t:?}; point spec.parent at a tenant outside the loop", q.name),
            );
        }
        for (t, q) in &by_tenant {
            if let Some(p) = &q.spec.parent {
                if !by_tenant.contains_key(p.as_str()) {
                    invalid.entry(t.to_string()).or_insert(format!(
                        "TenantQuota {}: spec.parent {p:?} has no TenantQuota; create it or clear spec.parent",
                        q.name
                    ));
                }
            }
        }
        Quotas { by_tenant, invalid }
    }

    /// The tenant and its ancestors, nearest first; Err names the problem.
    pub(super) fn chain(&self, tenant: &str) -> Result<Vec<&'a QuotaView>, (&'static str, String)> {
        let Some(mut q) = self.by_tenant.get(tenant).copied() else {
            return Err((
                "NoQuota",
                format!("tenant {tenant:?} has no TenantQuota: an administrator must create one"),
            ));
        };
        let mut out = Vec::new();
        loop {
            if let Some(why) = self.invalid.get(&q.spec.tenant) {
                return Err(("QuotaInvalid", why.clone()));
            }
            out.push(q);
            match q.spec.parent.as_deref().and_then(|p| self.by_tenant.get(p)) {
                Some(p) if out.len() <= self.by_tenant.len() => q = p,
                _ => return Ok(out),
            }
        }
    }
}

/// Milli-GPU in use per tenant, per model and in total (own workloads only).
#[derive(Default, Clone)]
pub(super) struct Usage {
    /// Tenant → model → milli-GPU.
    by_model: BTreeMap<String, BTreeMap<String, u64>>,
    total: BTreeMap<String, u64>,
}

impl Usage {
    pub(super) fn add(&mut self, tenant: &str, model: &str, milli: u64) {
        // Looked up by reference first: no allocation once a key exists.
        match self.total.get_mut(tenant) {
            Some(t) => *t += milli,
            None => {
                self.total.insert(tenant.to_string(), milli);
            }
        }
        let models = match self.by_model.get_mut(tenant) {
            Some(m) => m,
            None => self.by_model.entry(tenant.to_string()).or_default(),
        };
        match models.get_mut(model) {
            Some(m) => *m += milli,
            None => {
                models.insert(model.to_string(), milli);
            }
        }
    }
    pub(super) fn model(&self, tenant: &str, model: &str) -> u64 {
        self.by_model
            .get(tenant)
            .and_then(|m| m.get(model))
            .copied()
            .unwrap_or(0)
    }
    pub(super) fn total(&self, tenant: &str) -> u64 {
        self.total.get(tenant).copied().unwrap_or(0)
    }
}

/// Whether `ancestor` is `tenant` or on its parent chain.
pub(super) fn in_subtree(quotas: &Quotas, tenant: &str, ancestor: &str) -> bool {
    let mut cur = Some(tenant);
    let mut steps = 0;
    while let Some(c) = cur {
        if c == ancestor {
            return true;
        }
        steps += 1;
        if steps > quotas.by_tenant.len() + 1 {
            return false;
        }
        cur = quotas
            .by_tenant
            .get(c)
            .and_then(|q| q.spec.parent.as_deref());
    }
    false
}

/// Sum of `usage` over a tenant and its descendants.
pub(super) fn subtree(quotas: &Quotas, usage: &Usage, tenant: &str, model: Option<&str>) -> u64 {
    usage
        .total
        .keys()
        .filter(|t| in_subtree(quotas, t, tenant))
        .map(|t| match model {
            Some(m) => usage.model(t, m),
            None => usage.total(t),
        })
        .sum()
}

/// Month-to-date use of each tenant's whole subtree (itself and its
/// descendants), summed once per pass: the ledger's figures do not change
/// while a pass admits.
pub(super) fn month_subtrees(
    quotas: &Quotas,
    month: &BTreeMap<String, MonthToDate>,
) -> BTreeMap<String, MonthToDate> {
    let mut out: BTreeMap<String, MonthToDate> = BTreeMap::new();
    for (tenant, used) in month {
        // Up the parents, as `in_subtree` walks: each ancestor counts it once.
        let mut seen: Vec<&str> = Vec::new();
        let mut cur = Some(tenant.as_str());
        while let Some(c) = cur {
            if seen.contains(&c) {
                break; // a cyclic tree (refused by validation) ends here
            }
            seen.push(c);
            let total = out.entry(c.to_string()).or_default();
            for (model, v) in &used.milli_gpu_s {
                *total.milli_gpu_s.entry(model.clone()).or_default() += v;
            }
            for (tier, v) in &used.tokens {
                *total.tokens.entry(tier.clone()).or_default() += v;
            }
            cur = quotas
                .by_tenant
                .get(c)
                .and_then(|q| q.spec.parent.as_deref());
        }
    }
    out
}

/// A subtree's month-to-date figure for `key`, or summed over all keys for `*`.
pub(super) fn month_used(
    subtrees: &BTreeMap<String, MonthToDate>,
    tenant: &str,
    pick: impl Fn(&MonthToDate) -> &BTreeMap<String, i64>,
    key: &str,
) -> i64 {
    subtrees.get(tenant).map_or(0, |u| {
        let by_key = pick(u);
        if key == "*" {
            by_key.values().sum()
        } else {
            by_key.get(key).copied().unwrap_or(0)
        }
    })
}

/// `(key, limit)` of a monthly map for `key` and for `*` (any).
pub(super) fn monthly_limits<'a>(
    limits: &'a BTreeMap<String, i64>,
    key: &'a str,
) -> impl Iterator<Item = (&'a str, i64)> + 'a {
    [key, "*"]
        .into_iter()
        .filter_map(move |k| limits.get(k).map(|&l| (k, l)))
}

/// Whether the tenant (or an ancestor) has used up a monthly token limit of
/// the tier: `Err((reason, message))` naming the limit.
pub(super) fn monthly_tokens(
    quotas: &Quotas,
    month_subtrees: &BTreeMap<String, MonthToDate>,
    tenant: &str,
    tier: &str,
) -> Result<(), (&'static str, String)> {
    for q in quotas.chain(tenant)? {
        for (key, limit) in monthly_limits(&q.spec.quota.tokens_per_month, tier) {
            let used = month_used(month_subtrees, &q.spec.tenant, |u| &u.tokens, key);
            if used >= limit {
                return Err((
                    "MonthlyTokensExceeded",
                    format!(
                        "tenant {:?} used {used} tokens this month, reaching spec.tokensPerMonth[{key}]={limit} of TenantQuota {}; raise the limit or wait for next month",
                        q.spec.tenant, q.name
                    ),
                ));
            }
        }
    }
    Ok(())
}

/// Why the tenant (or an ancestor) may not use `model` any more this month
/// (its GPU-hour limit for the model or for `*` is used up).
pub(super) fn monthly_gpu_hours(
    month_subtrees: &BTreeMap<String, MonthToDate>,
    chain: &[&QuotaView],
    model: &str,
) -> Option<String> {
    for q in chain {
        for (key, limit) in monthly_limits(&q.spec.quota.gpu_hours_per_month, model) {
            let used = month_used(month_subtrees, &q.spec.tenant, |u| &u.milli_gpu_s, key);
            if used >= limit.saturating_mul(MILLI_GPU_S_PER_GPU_HOUR) {
                return Some(format!(
                    "tenant {:?} used {:.2} GPU-hours{} this month, reaching spec.gpuHoursPerMonth[{key}]={limit} of TenantQuota {}; raise the limit or wait for next month",
                    q.spec.tenant,
                    used as f64 / MILLI_GPU_S_PER_GPU_HOUR as f64,
                    if key == "*" { String::new() } else { format!(" of {key}") },
                    q.name
                ));
            }
        }
    }
    None
}

/// Models the tenant may still take `milli` more of, or why none.
pub(super) fn quota_models<'m>(
    quotas: &Quotas,
    usage: &Usage,
    month_subtrees: &BTreeMap<String, MonthToDate>,
    tenant: &str,
    candidates: &[&'m str],
    milli: u64,
) -> Result<Vec<&'m str>, (&'static str, String)> {
    let chain = quotas.chain(tenant)?;
    let mut first_refusal = None;
    let mut monthly_refusal = None;
    let mut ok = Vec::new();
    'model: for &m in candidates {
        if let Some(why) = monthly_gpu_hours(month_subtrees, &chain, m) {
            monthly_refusal.get_or_insert(why);
            continue 'model;
        }
        for (level, q) in chain.iter().enumerate() {
            let (s, l) = (&q.spec, &q.spec.quota);
            if level == 0 && !l.borrowable && l.guaranteed_gpus > 0 {
                let used = usage.total(tenant);
                if used + milli > gpus_to_milli(l.guaranteed_gpus) {
                    first_refusal.get_or_insert(format!(
                        "tenant {tenant:?} may not borrow (spec.borrowable=false): {} + {} milli-GPU exceeds spec.guaranteedGpus {}",
                        used, milli, l.guaranteed_gpus
                    ));
                    continue 'model;
                }
            }
            if l.gpus.is_empty() {
                continue;
            }
            let checks = [(l.gpus.get(m), Some(m)), (l.gpus.get("*"), None)];
            if checks.iter().all(|(lim, _)| lim.is_none()) {
                first_refusal.get_or_insert(format!(
                    "TenantQuota {} (tenant {:?}) has no limit for model {m} in spec.gpus",
                    q.name, s.tenant
                ));
                continue 'model;
            }
            for (limit, model) in checks {
                let Some(limit) = limit else { continue };
                let used = subtree(quotas, usage, &s.tenant, model);
                let cap = gpus_to_milli(*limit);
                if used + milli > cap {
                    first_refusal.get_or_insert(format!(
                        "tenant {:?} would use {} of spec.gpus[{}]={} GPUs ({} milli in use, {} requested)",
                        s.tenant,
                        (used + milli) as f64 / 1000.0,
                        model.unwrap_or("*"),
                        limit,
                        used,
                        milli
                    ));
                    continue 'model;
                }
            }
        }
        ok.push(m);
    }
    if ok.is_empty() {
        Err(match (first_refusal, monthly_refusal) {
            (Some(why), _) => ("QuotaExceeded", why),
            (None, Some(why)) => ("MonthlyGpuHoursExceeded", why),
            (None, None) => (
                "QuotaExceeded",
                "no GPU model is allowed by the job and the cluster".into(),
            ),
        })
    } else {
        Ok(ok)
    }
}

/// Tenants whose parent chain loops back on itself (each reported once).
/// `parents` maps tenant → parent.
pub fn quota_cycles(parents: &BTreeMap<String, Option<String>>) -> BTreeSet<String> {
    let mut in_cycle = BTreeSet::new();
    for start in parents.keys() {
        // Walk up at most |tenants| steps: a longer walk must have looped.
        let mut seen = BTreeSet::new();
        let mut cur = Some(start.clone());
        while let Some(t) = cur {
            if !seen.insert(t.clone()) {
                if &t == start {
                    in_cycle.insert(start.clone());
                }
                break;
            }
            cur = parents.get(&t).cloned().flatten();
        }
    }
    in_cycle
}

//! Which quotas a backend must enforce for the tenant tree: every tenant's
//! own, and for an ancestor that has none, an unlimited one — a child's
//! quota names its parent's (a TenantQuota whose `spec.parent` has none is
//! refused by admission), so a parent the administrator never limited must
//! still exist as a node of the tree.

use std::collections::{BTreeMap, BTreeSet};

use super::{Ledger, Quota, Result, Tenant};

/// `start` and its ancestors, nearest first. Bounded by the tree's size:
/// a loop in stored parents stops there.
fn chain<'t>(parent: &BTreeMap<&'t str, Option<&'t str>>, start: &'t str) -> Vec<&'t str> {
    let mut out = Vec::new();
    let mut at = Some(start);
    while let Some(t) = at.filter(|_| out.len() <= parent.len()) {
        out.push(t);
        at = parent.get(t).copied().flatten();
    }
    out
}

/// (tenant, parent, quota) to project.
pub type Projection = (String, Option<String>, Quota);

/// The projections for `tenants` with `quotas`: for `only = Some(t)`, t's
/// own (if it has one) and its ancestors without one; for `None`, every
/// tenant with a quota and every ancestor of those without one. Parents
/// come before their children.
pub fn projections(
    tenants: &[Tenant],
    quotas: &BTreeMap<String, Quota>,
    only: Option<&str>,
) -> Vec<Projection> {
    let parent: BTreeMap<&str, Option<&str>> = tenants
        .iter()
        .map(|t| (t.name.as_str(), t.parent.as_deref()))
        .collect();
    let roots: Vec<&str> = match only {
        Some(t) => vec![t],
        None => quotas.keys().map(String::as_str).collect(),
    };
    let mut out: Vec<Projection> = Vec::new();
    let mut seen = BTreeSet::new();
    for start in roots {
        let chain = chain(&parent, start);
        for (depth, t) in chain.iter().enumerate().rev() {
            let own = quotas.get(*t);
            // For one tenant, an ancestor with its own quota was projected
            // when that was set.
            if (only.is_some() && depth > 0 && own.is_some()) || !seen.insert(*t) {
                continue;
            }
            let q = match own {
                Some(q) => q.clone(),
                None if depth > 0 => Quota::default(),
                None => continue,
            };
            let p = parent.get(t).copied().flatten().map(str::to_string);
            out.push((t.to_string(), p, q));
        }
    }
    out
}

impl Ledger {
    /// [`projections`] over the stored tenants and quotas.
    /// For one tenant, only the quotas of its chain are read.
    pub fn quota_projections(&self, only: Option<&str>) -> Result<Vec<Projection>> {
        let tenants = self.tenants()?;
        let parent: BTreeMap<&str, Option<&str>> = tenants
            .iter()
            .map(|t| (t.name.as_str(), t.parent.as_deref()))
            .collect();
        let wanted: Vec<&str> = match only {
            None => tenants.iter().map(|t| t.name.as_str()).collect(),
            Some(t) => chain(&parent, t),
        };
        let mut quotas = BTreeMap::new();
        for t in wanted {
            if let Some(q) = self.quota(t)? {
                quotas.insert(t.to_string(), q);
            }
        }
        Ok(projections(&tenants, &quotas, only))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tenant(name: &str, parent: Option<&str>) -> Tenant {
        Tenant {
            name: name.into(),
            parent: parent.map(str::to_string),
            created_at: chrono::DateTime::from_timestamp(0, 0).unwrap(),
        }
    }

    fn limit(n: i64) -> Quota {
        Quota {
            gpus: BTreeMap::from([("*".to_string(), n)]),
            ..Quota::default()
        }
    }

    #[test]
    fn ancestors_without_a_quota_are_projected_unlimited_parents_first() {
        let tenants = [
            tenant("zhejiang", None),
            tenant("hangzhou", Some("zhejiang")),
            tenant("hz-llm", Some("hangzhou")),
            tenant("solo", None),
        ];
        let quotas = BTreeMap::from([
            ("hz-llm".to_string(), limit(8)),
            ("zhejiang".to_string(), limit(100)),
            ("solo".to_string(), limit(2)),
        ]);
        let names = |p: &[Projection]| -> Vec<(String, Option<String>, i64)> {
            p.iter()
                .map(|(t, parent, q)| {
                    (
                        t.clone(),
                        parent.clone(),
                        q.gpus.get("*").copied().unwrap_or(-1),
                    )
                })
                .collect()
        };
        let one = projections(&tenants, &quotas, Some("hz-llm"));
        // zhejiang has its own quota (projected when it was set); hangzhou
        // has none: unlimited, before its child.
        assert_eq!(
            names(&one),
            vec![
                ("hangzhou".into(), Some("zhejiang".into()), -1),
                ("hz-llm".into(), Some("hangzhou".into()), 8),
            ]
        );
        let all = projections(&tenants, &quotas, None);
        assert_eq!(
            names(&all),
            vec![
                ("zhejiang".into(), None, 100),
                ("hangzhou".into(), Some("zhejiang".into()), -1),
                ("hz-llm".into(), Some("hangzhou".into()), 8),
                ("solo".into(), None, 2),
            ]
        );
        // A tenant without a quota of its own projects nothing for itself.
        assert!(projections(&tenants, &quotas, Some("hangzhou")).is_empty());
    }
}

//! Namespace ↔ tenant (issue #16, item 1): `spec.tenant` is not trusted on
//! its own. A namespace labelled `zhisuan.io/tenant: <t>` holds tenant
//! `<t>`'s workloads only; one labelled `zhisuan.io/multi-tenant: "true"` is
//! shared (the API's jobs namespace), and the chart's admission policy lets
//! only the API's service account write workloads there; any other
//! namespace admits no tenant unless the controller runs with
//! `--tenant-namespaces optional`. Pure: the controller feeds it the
//! namespaces' labels and marks each workload it refuses (`TenantMismatch`).

use std::collections::BTreeMap;

/// Namespace label: the tenant whose namespace it is.
pub const LABEL_TENANT: &str = "zhisuan.io/tenant";
/// Namespace label: a namespace shared by tenants, written only by the API.
pub const LABEL_MULTI_TENANT: &str = "zhisuan.io/multi-tenant";

/// Whether a namespace must be bound to a tenant.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, clap::ValueEnum)]
pub enum NamespaceTenancy {
    /// Workloads only in namespaces labelled for their tenant (or shared).
    #[default]
    Required,
    /// Unlabelled namespaces take any tenant (labelled ones still must match):
    /// single-team clusters and trials only.
    Optional,
}

/// Why namespace `ns` (its labels, None when it is not known) does not
/// admit a workload of `tenant`; None when it does.
pub fn tenant_mismatch(
    ns: &str,
    labels: Option<&BTreeMap<String, String>>,
    tenant: &str,
    mode: NamespaceTenancy,
) -> Option<String> {
    if tenant.is_empty() {
        return None; // an invalid spec, reported as such
    }
    let label = |k: &str| labels.and_then(|l| l.get(k)).map(String::as_str);
    if let Some(owner) = label(LABEL_TENANT) {
        return (owner != tenant).then(|| {
            format!(
                "namespace {ns} belongs to tenant {owner:?} (label {LABEL_TENANT}), not to spec.tenant {tenant:?}: create the workload in a namespace of tenant {tenant:?}"
            )
        });
    }
    if label(LABEL_MULTI_TENANT) == Some("true") || mode == NamespaceTenancy::Optional {
        return None;
    }
    Some(format!(
        "namespace {ns} is bound to no tenant, so spec.tenant {tenant:?} cannot be trusted: \
         `kubectl label namespace {ns} {LABEL_TENANT}={tenant}` if it is that tenant's"
    ))
}

/// A per-tenant setting inherited down the tenant tree: each tenant's own
/// value, else its nearest ancestor's; tenants with neither are left out.
/// `entries` is `(tenant, parent, value)`; a parent cycle ends the walk.
pub fn inherited<T: Clone>(entries: &[(String, Option<String>, Option<T>)]) -> BTreeMap<String, T> {
    let by_tenant: BTreeMap<&str, (Option<&str>, Option<&T>)> = entries
        .iter()
        .map(|(t, p, v)| (t.as_str(), (p.as_deref(), v.as_ref())))
        .collect();
    let mut out = BTreeMap::new();
    for tenant in by_tenant.keys() {
        let mut at = Some(*tenant);
        // Bounded walk: a parent cycle ends at the tree's size.
        for _ in 0..=by_tenant.len() {
            let Some((parent, value)) = at.and_then(|t| by_tenant.get(t)) else {
                break;
            };
            if let Some(v) = value {
                out.insert(tenant.to_string(), (*v).clone());
                break;
            }
            at = *parent;
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn labels(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn a_namespace_admits_only_its_tenant_and_unbound_ones_none() {
        let team = labels(&[(LABEL_TENANT, "acme")]);
        let req = NamespaceTenancy::Required;
        assert_eq!(tenant_mismatch("team", Some(&team), "acme", req), None);
        let e = tenant_mismatch("team", Some(&team), "rival", req).unwrap();
        assert!(
            e.contains("belongs to tenant \"acme\"") && e.contains("\"rival\""),
            "{e}"
        );
        let e = tenant_mismatch("misc", Some(&labels(&[])), "acme", req).unwrap();
        assert!(
            e.contains("kubectl label namespace misc zhisuan.io/tenant=acme"),
            "{e}"
        );
        assert!(tenant_mismatch("gone", None, "acme", req).is_some());
        let shared = labels(&[(LABEL_MULTI_TENANT, "true")]);
        assert_eq!(tenant_mismatch("api", Some(&shared), "acme", req), None);
        // Optional: unbound namespaces take anyone, bound ones still only theirs.
        let opt = NamespaceTenancy::Optional;
        assert_eq!(tenant_mismatch("misc", None, "acme", opt), None);
        assert!(tenant_mismatch("team", Some(&team), "rival", opt).is_some());
    }

    #[test]
    fn settings_are_inherited_from_the_nearest_ancestor() {
        let e = |t: &str, p: Option<&str>, v: Option<&str>| {
            (t.to_string(), p.map(String::from), v.map(String::from))
        };
        let got = inherited(&[
            e("gov", None, Some("huawei")),
            e("gov-fj", Some("gov"), None),
            e("gov-fj-x", Some("gov-fj"), Some("nvidia")),
            e("sme", None, None),
            e("a", Some("b"), None),
            e("b", Some("a"), None),
        ]);
        assert_eq!(got.get("gov-fj").map(String::as_str), Some("huawei"));
        assert_eq!(got.get("gov-fj-x").map(String::as_str), Some("nvidia"));
        assert!(!got.contains_key("sme") && !got.contains_key("a"));
    }
}

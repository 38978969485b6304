//! Pure validation of specs: every error names the field (as `spec.x.y`) and
//! how to fix it. The controller turns these into a `Valid=False` condition;
//! they mirror the CEL / OpenAPI rules in the CRD schemas.

use std::collections::BTreeSet;

use super::crd::{
    ComputeRegionSpec, ComputeVoucherSpec, InferenceServiceSpec, TenantQuotaSpec, TrainingJobSpec,
    WorkloadCommon, WorkloadSpec, TOKEN_TIERS,
};

pub use crate::jobs::{describe, FieldError};
pub use crate::schedule::quota_cycles;

fn err(errors: &mut Vec<FieldError>, field: &str, message: String) {
    errors.push(FieldError {
        field: field.to_string(),
        message,
    });
}

/// Checks the GPU request part shared by jobs and services.
fn validate_gpu_request(req: &WorkloadCommon, known_models: &BTreeSet<String>) -> Vec<FieldError> {
    let mut e = Vec::new();
    if req.tenant.trim().is_empty() {
        err(
            &mut e,
            "spec.tenant",
            "must name a tenant (a TenantQuota's spec.tenant)".into(),
        );
    }
    if req.replicas < 1 {
        err(
            &mut e,
            "spec.replicas",
            format!("is {}; set it to 1 or more", req.replicas),
        );
    }
    match (req.gpus_per_replica, req.gpu_milli) {
        (Some(_), Some(_)) => err(
            &mut e,
            "spec.gpuMilli",
            "set either spec.gpusPerReplica (whole GPUs) or spec.gpuMilli (a share), not both"
                .into(),
        ),
        (None, None) => err(
            &mut e,
            "spec.gpusPerReplica",
            "missing: set spec.gpusPerReplica (whole GPUs) or spec.gpuMilli (1..1000)".into(),
        ),
        (Some(g), None) if !(1..=64).contains(&g) => err(
            &mut e,
            "spec.gpusPerReplica",
            format!("is {g}; must be 1..64"),
        ),
        (None, Some(m)) if !(1..=1000).contains(&m) => err(
            &mut e,
            "spec.gpuMilli",
            format!(
                "is {m}; must be 1..1000 thousandths of one GPU (use spec.gpusPerReplica for more)"
            ),
        ),
        _ => {}
    }
    if let Some(v) = req
        .accelerator_vendor
        .as_deref()
        .filter(|v| !v.trim().is_empty())
    {
        if let Err(m) = crate::jobs::accelerator_vendor(v) {
            err(&mut e, "spec.acceleratorVendor", m);
        }
    }
    if let Some(t) = &req.topology {
        if let Err(m) = t.ask() {
            err(&mut e, "spec.topology", m.into());
        }
    }
    for (i, model) in req.gpu_models.iter().enumerate() {
        if !known_models.contains(model) {
            let known: Vec<&str> = known_models.iter().map(String::as_str).collect();
            err(
                &mut e,
                &format!("spec.gpuModels[{i}]"),
                format!(
                    "unknown GPU model {model:?}; known models: {}",
                    known.join(", ")
                ),
            );
        }
    }
    e
}

/// Checks a TrainingJob spec against the accelerator models the cluster knows.
pub fn validate_training(
    spec: &TrainingJobSpec,
    known_models: &BTreeSet<String>,
) -> Vec<FieldError> {
    let mut e = validate_gpu_request(&spec.common(), known_models);
    for (field, value) in [
        ("spec.maxRuntimeSeconds", spec.max_runtime_seconds),
        ("spec.maxDelaySeconds", spec.max_delay_seconds),
    ] {
        if let Some(s) = value.filter(|&s| s < 1) {
            err(
                &mut e,
                field,
                format!("is {s}; must be 1 or more (or left out)"),
            );
        }
    }
    e
}

/// Checks an InferenceService spec.
pub fn validate_inference(
    spec: &InferenceServiceSpec,
    known_models: &BTreeSet<String>,
) -> Vec<FieldError> {
    let mut e = validate_gpu_request(&spec.common(), known_models);
    if !TOKEN_TIERS.contains(&spec.token_tier.as_str()) {
        err(
            &mut e,
            "spec.tokenTier",
            format!(
                "is {:?}; must be one of {}",
                spec.token_tier,
                TOKEN_TIERS.join(", ")
            ),
        );
    }
    if spec.model_name.trim().is_empty() {
        err(
            &mut e,
            "spec.modelName",
            "must name the served model".into(),
        );
    }
    if spec.gateway.is_some() && spec.metrics.is_some() {
        err(
            &mut e,
            "spec.gateway",
            "set either metrics (the service's own counters are scraped) or gateway (each call is metered by the token gateway), not both: its tokens would be counted twice".into(),
        );
    }
    if let Some(ms) = spec.latency_slo_ms {
        if ms < 1 {
            err(
                &mut e,
                "spec.latencySloMs",
                format!("is {ms}; must be 1 or more"),
            );
        }
    }
    e
}

/// A quota field as the ledger names it (`gpu_hours_per_month.H100`) as
/// the TenantQuota's (`spec.gpuHoursPerMonth[H100]`).
fn crd_field(ledger_field: &str) -> String {
    let (head, key) = match ledger_field.split_once('.') {
        Some((h, k)) => (h, Some(k)),
        None => (ledger_field, None),
    };
    let mut camel = String::from("spec.");
    let mut up = false;
    for c in head.chars() {
        match c {
            '_' => up = true,
            c if up => {
                camel.extend(c.to_uppercase());
                up = false;
            }
            c => camel.push(c),
        }
    }
    match key {
        Some(k) => format!("{camel}[{k}]"),
        None => camel,
    }
}

/// Checks one TenantQuota on its own (cycles need the whole tree: [`quota_cycles`]).
pub fn validate_quota(spec: &TenantQuotaSpec) -> Vec<FieldError> {
    let mut e = Vec::new();
    if spec.tenant.trim().is_empty() {
        err(&mut e, "spec.tenant", "must not be empty".into());
    }
    if spec.parent.as_deref() == Some(spec.tenant.as_str()) {
        err(
            &mut e,
            "spec.parent",
            "a tenant cannot be its own parent".into(),
        );
    }
    if let Some(v) = spec.default_accelerator_vendor.as_deref() {
        if let Err(m) = crate::jobs::accelerator_vendor(v) {
            err(&mut e, "spec.defaultAcceleratorVendor", m);
        }
    }
    for (i, name) in spec.service_accounts.iter().flatten().enumerate() {
        let dns = !name.is_empty()
            && name.len() <= 253
            && name
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'.')
            && name.starts_with(|c: char| c.is_ascii_alphanumeric())
            && name.ends_with(|c: char| c.is_ascii_alphanumeric());
        if !dns {
            err(
                &mut e,
                &format!("spec.serviceAccounts[{i}]"),
                format!("{name:?} is not a service account name (lowercase letters, digits, '-' and '.', starting and ending alphanumeric)"),
            );
        }
    }
    // The limits follow the one quota type's rules (as `PUT .../quota`).
    if let Err(crate::ledger::LedgerError::Invalid { field, message }) =
        super::snapshot::quota_limits(spec).validate()
    {
        err(&mut e, &crd_field(&field), message);
    }
    e
}

/// Checks a ComputeRegion.
pub fn validate_region(spec: &ComputeRegionSpec) -> Vec<FieldError> {
    let mut e = Vec::new();
    if spec.side != "east" && spec.side != "west" {
        err(
            &mut e,
            "spec.side",
            format!("is {:?}; must be east or west", spec.side),
        );
    }
    if !(1.0..=3.0).contains(&spec.pue) {
        err(
            &mut e,
            "spec.pue",
            format!("is {}; must be within 1.0..3.0", spec.pue),
        );
    }
    if !(0.0..=1.0).contains(&spec.green_share) {
        err(
            &mut e,
            "spec.greenShare",
            format!("is {}; must be within 0..1", spec.green_share),
        );
    }
    if spec.electricity_fen_per_kwh < 0 {
        err(
            &mut e,
            "spec.electricityFenPerKwh",
            "must be 0 or more".into(),
        );
    }
    // The catalog's own hourly checks, named as the CR spells the fields.
    use crate::regions::catalog::{check_green_profile, check_price_profile};
    let profiles = [
        (
            "green_profile",
            "spec.greenProfile",
            spec.green_profile.as_deref().map(check_green_profile),
        ),
        (
            "price_profile",
            "spec.priceProfile",
            spec.price_profile.as_deref().map(check_price_profile),
        ),
    ];
    for (name, cr_name, checked) in profiles {
        if let Some(Err((field, why))) = checked {
            err(&mut e, &field.replacen(name, cr_name, 1), why);
        }
    }
    if !(spec.grid_kg_co2_per_kwh.is_finite() && spec.grid_kg_co2_per_kwh >= 0.0) {
        err(
            &mut e,
            "spec.gridKgCo2PerKwh",
            format!("is {}; must be 0 or more", spec.grid_kg_co2_per_kwh),
        );
    }
    if let Some(t) = &spec.dedicated_to {
        if t.trim().is_empty() {
            err(
                &mut e,
                "spec.dedicatedTo",
                "is empty; name the tenant (a TenantQuota's spec.tenant) whose subtree the region is reserved to, or leave it out".into(),
            );
        } else if let Some(why) = crate::ledger::types::text_problem(t) {
            err(&mut e, "spec.dedicatedTo", why);
        }
    }
    for (place, ms) in &spec.latency_ms {
        if !(ms.is_finite() && *ms >= 0.0) {
            err(
                &mut e,
                &format!("spec.latencyMs[{place}]"),
                format!("is {ms}; a round-trip time is 0 ms or more"),
            );
        }
    }
    e
}

/// Checks a ComputeVoucher.
pub fn validate_voucher(spec: &ComputeVoucherSpec) -> Vec<FieldError> {
    let mut e = Vec::new();
    if spec.face_value_fen < 1 {
        err(
            &mut e,
            "spec.faceValueFen",
            format!("is {}; must be 1 fen or more", spec.face_value_fen),
        );
    }
    if !(0..=10_000).contains(&spec.copay_basis_points) {
        err(
            &mut e,
            "spec.copayBasisPoints",
            format!(
                "is {}; must be 0..10000 (100% = 10000)",
                spec.copay_basis_points
            ),
        );
    }
    let from = chrono::DateTime::parse_from_rfc3339(&spec.valid_from);
    let until = chrono::DateTime::parse_from_rfc3339(&spec.valid_until);
    if from.is_err() {
        err(
            &mut e,
            "spec.validFrom",
            format!(
                "{:?} is not RFC 3339 (e.g. 2026-11-01T00:00:00Z)",
                spec.valid_from
            ),
        );
    }
    if until.is_err() {
        err(
            &mut e,
            "spec.validUntil",
            format!(
                "{:?} is not RFC 3339 (e.g. 2026-12-01T00:00:00Z)",
                spec.valid_until
            ),
        );
    }
    if let (Ok(f), Ok(u)) = (from, until) {
        if u <= f {
            err(
                &mut e,
                "spec.validUntil",
                "must be after spec.validFrom".into(),
            );
        }
    }
    e
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeMap;

    fn models() -> BTreeSet<String> {
        ["A100", "H100"].iter().map(|s| s.to_string()).collect()
    }

    fn job() -> TrainingJobSpec {
        TrainingJobSpec {
            tenant: "acme".into(),
            replicas: 4,
            gpus_per_replica: Some(8),
            ..Default::default()
        }
    }

    fn fields(e: &[FieldError]) -> Vec<&str> {
        e.iter().map(|f| f.field.as_str()).collect()
    }

    #[test]
    fn a_good_job_passes() {
        assert!(validate_training(&job(), &models()).is_empty());
    }

    #[test]
    fn each_bad_job_field_is_named() {
        let mut j = job();
        j.replicas = 0;
        assert_eq!(fields(&validate_training(&j, &models())), ["spec.replicas"]);
        let mut j = job();
        j.gpus_per_replica = None;
        j.gpu_milli = Some(1500);
        let e = validate_training(&j, &models());
        assert_eq!(fields(&e), ["spec.gpuMilli"]);
        assert!(e[0].message.contains("1500"));
        let mut j = job();
        j.gpu_models = vec!["H100".into(), "Z9000".into()];
        let e = validate_training(&j, &models());
        assert_eq!(fields(&e), ["spec.gpuModels[1]"]);
        assert!(e[0].message.contains("Z9000") && e[0].message.contains("A100"));
        let mut j = job();
        j.gpu_milli = Some(500);
        assert_eq!(fields(&validate_training(&j, &models())), ["spec.gpuMilli"]);
        let mut j = job();
        j.tenant = " ".into();
        assert_eq!(fields(&validate_training(&j, &models())), ["spec.tenant"]);
        let mut j = job();
        j.max_delay_seconds = Some(0);
        assert_eq!(
            fields(&validate_training(&j, &models())),
            ["spec.maxDelaySeconds"]
        );
        let mut j = job();
        j.topology = Some(crate::placement::TopologySpec::default());
        let e = validate_training(&j, &models());
        assert_eq!(fields(&e), ["spec.topology"]);
        assert!(e[0]
            .message
            .contains("exactly one of required or preferred"));
    }

    #[test]
    fn inference_tier_is_checked() {
        let s = InferenceServiceSpec {
            tenant: "acme".into(),
            model_name: "qwen".into(),
            token_tier: "premium".into(),
            replicas: 1,
            gpu_milli: Some(500),
            ..Default::default()
        };
        assert_eq!(
            fields(&validate_inference(&s, &models())),
            ["spec.tokenTier"]
        );
    }

    #[test]
    fn a_service_is_metered_by_scraping_or_by_the_gateway_not_both() {
        let s = InferenceServiceSpec {
            tenant: "acme".into(),
            model_name: "qwen".into(),
            token_tier: "basic".into(),
            replicas: 1,
            gpu_milli: Some(500),
            metrics: Some(crate::operator::crd::MetricsEndpoint {
                port: 9000,
                path: None,
            }),
            gateway: Some(crate::operator::crd::GatewayEndpoint {
                port: 8000,
                shared: false,
            }),
            ..Default::default()
        };
        assert_eq!(fields(&validate_inference(&s, &models())), ["spec.gateway"]);
    }

    #[test]
    fn a_service_account_that_is_no_name_is_named() {
        let q = TenantQuotaSpec {
            tenant: "city".into(),
            service_accounts: Some(vec!["trainer".into(), "Bad Name".into()]),
            ..Default::default()
        };
        assert_eq!(fields(&validate_quota(&q)), ["spec.serviceAccounts[1]"]);
    }

    #[test]
    fn hourly_profiles_are_checked_hour_by_hour() {
        let mut r = ComputeRegionSpec {
            side: "west".into(),
            pue: 1.2,
            green_profile: Some(vec![0.5; 24]),
            price_profile: Some(vec![1.0; 24]),
            ..Default::default()
        };
        assert!(validate_region(&r).is_empty());
        r.green_profile = Some(vec![0.5; 23]);
        assert_eq!(fields(&validate_region(&r)), ["spec.greenProfile"]);
        let mut g = vec![0.5; 24];
        g[13] = 1.5;
        r.green_profile = Some(g);
        assert_eq!(fields(&validate_region(&r)), ["spec.greenProfile[13]"]);
        r.green_profile = None;
        r.price_profile = Some(vec![1.0; 25]);
        assert_eq!(fields(&validate_region(&r)), ["spec.priceProfile"]);
        let mut p = vec![1.0; 24];
        p[3] = 0.0;
        r.price_profile = Some(p);
        let e = validate_region(&r);
        assert_eq!(fields(&e), ["spec.priceProfile[3]"]);
        assert!(e[0].message.contains("multiplier"), "{e:?}");
    }

    #[test]
    fn a_dedication_to_no_tenant_is_named() {
        let mut r = ComputeRegionSpec {
            side: "west".into(),
            pue: 1.2,
            dedicated_to: Some("fujian-gov".into()),
            ..Default::default()
        };
        assert!(validate_region(&r).is_empty());
        r.dedicated_to = Some(" ".into());
        assert_eq!(fields(&validate_region(&r)), ["spec.dedicatedTo"]);
        r.dedicated_to = Some("gov\u{202E}".into());
        assert_eq!(fields(&validate_region(&r)), ["spec.dedicatedTo"]);
    }

    #[test]
    fn negative_quota_is_named() {
        let mut q = TenantQuotaSpec {
            tenant: "city".into(),
            ..Default::default()
        };
        q.gpus.insert("H100".into(), -2);
        let e = validate_quota(&q);
        assert_eq!(fields(&e), ["spec.gpus[H100]"]);
        q.gpus.clear();
        // A tier as CRDs spell it is taken; a tier that is none is named.
        q.tokens_per_month.insert("high-value".into(), 5);
        assert!(validate_quota(&q).is_empty());
        q.tokens_per_month.insert("gold".into(), 5);
        let e = validate_quota(&q);
        assert_eq!(fields(&e), ["spec.tokensPerMonth[gold]"]);
        assert!(e[0].message.contains("high_value"), "{e:?}");
        q.tokens_per_month.clear();
        q.guaranteed_gpus = -1;
        assert_eq!(fields(&validate_quota(&q)), ["spec.guaranteedGpus"]);
    }

    #[test]
    fn cycles_are_found_and_chains_are_not() {
        let mut p = BTreeMap::new();
        p.insert("nation".to_string(), None);
        p.insert("province".to_string(), Some("nation".to_string()));
        p.insert("a".to_string(), Some("b".to_string()));
        p.insert("b".to_string(), Some("c".to_string()));
        p.insert("c".to_string(), Some("a".to_string()));
        p.insert("leaf".to_string(), Some("a".to_string()));
        p.insert("orphan".to_string(), Some("missing".to_string()));
        let cyc: Vec<String> = quota_cycles(&p).into_iter().collect();
        assert_eq!(cyc, ["a", "b", "c"]);
    }

    #[test]
    fn voucher_window_and_copay() {
        let v = ComputeVoucherSpec {
            issuer: "hangzhou".into(),
            tenant: "acme".into(),
            face_value_fen: 100,
            copay_basis_points: 12_000,
            valid_from: "2026-12-01T00:00:00Z".into(),
            valid_until: "2026-11-01T00:00:00Z".into(),
            ..Default::default()
        };
        assert_eq!(
            fields(&validate_voucher(&v)),
            ["spec.copayBasisPoints", "spec.validUntil"]
        );
    }
}

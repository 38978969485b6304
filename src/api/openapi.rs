//! The OpenAPI document, generated from the handlers' annotations.

use crate::ledger::Tier;
use std::collections::BTreeMap;
use std::sync::OnceLock;

use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityScheme};
use utoipa::openapi::{ContentBuilder, Ref, RefOr, ResponseBuilder};
use utoipa::{Modify, OpenApi};

use super::error::{ErrorBody, ErrorDetail};
use super::jobs::{Explanation, GpuUse, JobKind, JobView, RegionView, ReplicaPlacement};
use super::{admin, handlers, job_endpoints};
use crate::ledger::{
    AuditEvent, CallRecord, ChargeKind, Quota, Statement, Tenant, UsageSummary, Voucher,
    VoucherStatus,
};

/// The error answers every authenticated endpoint may give.
pub struct StdErrors;

impl utoipa::IntoResponses for StdErrors {
    fn responses() -> BTreeMap<String, RefOr<utoipa::openapi::Response>> {
        [
            ("400", "malformed request (bad JSON, wrong content type)"),
            ("401", "missing or unknown API key"),
            ("403", "the key's role may not use this endpoint"),
            ("404", "no such object for this tenant"),
            ("405", "method not allowed"),
            ("409", "conflicts with an existing object"),
            ("413", "request body too large"),
            (
                "422",
                "a field is invalid, or a quota would be exceeded; `field` names it",
            ),
            ("429", "rate limited; see Retry-After"),
        ]
        .into_iter()
        .map(|(status, description)| {
            let response = ResponseBuilder::new()
                .description(description)
                .content(
                    "application/json",
                    ContentBuilder::new()
                        .schema(Some(Ref::from_schema_name("ErrorBody")))
                        .build(),
                )
                .build();
            (status.to_string(), RefOr::T(response))
        })
        .collect()
    }
}

struct BearerAuth;

impl Modify for BearerAuth {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        let components = openapi.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            "bearer",
            SecurityScheme::Http(HttpBuilder::new().scheme(HttpAuthScheme::Bearer).build()),
        );
    }
}

#[derive(OpenApi)]
#[openapi(
    info(title = "zhisuan quota API", description = "Self-service compute rental for tenants; admin endpoints for tenants, quotas and vouchers."),
    paths(
        handlers::healthz, handlers::metrics, handlers::openapi_json,
        admin::create_tenant, admin::list_tenants, admin::set_quota,
        admin::tenant_usage, admin::issue_voucher, admin::audit_log,
        handlers::own_quota, job_endpoints::submit_job, job_endpoints::list_jobs,
        job_endpoints::get_job, job_endpoints::delete_job, handlers::own_usage,
        handlers::statement, handlers::own_vouchers, handlers::regions,
        super::keys::create_key, super::keys::list_keys, super::keys::revoke_key,
        super::gateway::handlers::chat, super::gateway::handlers::completions,
        super::gateway::handlers::embeddings, super::gateway::handlers::models,
        super::gateway::handlers::calls, super::gateway::handlers::grants,
        super::gateway::handlers::set_grants, super::series::own_series, super::series::grouped_series, super::series::pending_series, super::pending::pending,
        super::overview::overview, super::gateway::routing::own, super::gateway::routing::set_own,
        super::gateway::routing::of_tenant, super::gateway::routing::set_of_tenant,
    ),
    components(schemas(
        ErrorBody, ErrorDetail, Tenant, Quota, Voucher, VoucherStatus, UsageSummary, AuditEvent, ChargeKind, Statement,
        JobKind, crate::jobs::Phase, JobView, ReplicaPlacement, Explanation, GpuUse, RegionView, Tier,
        handlers::Health, admin::CreateTenantRequest, admin::CreatedTenant,
        admin::TenantList, admin::VoucherRequest, admin::AuditList,
        handlers::QuotaUse, handlers::QuotaView, job_endpoints::JobRequest, super::jobs::JobPage,
        handlers::VoucherList, handlers::VoucherView, handlers::RegionList, handlers::StatementFormat,
        super::keys::CreatedKey, super::keys::KeyView, super::keys::KeyList,
        CallRecord, super::gateway::handlers::CallPage, super::gateway::handlers::ModelList,
        super::gateway::handlers::Grants, super::series::Series, crate::ledger::series::SeriesPoint,
        super::series::GroupSeries, super::series::GroupedSeries, crate::ledger::series::Group,
        super::pending::PendingJob, super::pending::PendingList,
        crate::ledger::series::Bucket, super::series::PendingOverTime, super::series::ReasonSeries,
        crate::ledger::pending::PendingPoint, crate::ledger::pending::PendingNow,
        crate::ledger::totals::TenantMonth, super::overview::Overview, super::overview::RegionNow,
        super::overview::VoucherBalance, super::gateway::routing::RoutingDefault,
        crate::ledger::routing::Routing,
    )),
    modifiers(&BearerAuth),
    tags(
        (name = "public", description = "No key needed"),
        (name = "admin", description = "Admin key only"),
        (name = "tenant", description = "A tenant's own data only"),
        (name = "gateway", description = "The token gateway: OpenAI-compatible calls, metered per tenant (docs/gateway.md)"),
    )
)]
pub struct ApiDoc;

/// The document as JSON, rendered once.
pub fn document_json() -> &'static str {
    static DOC: OnceLock<String> = OnceLock::new();
    DOC.get_or_init(|| {
        ApiDoc::openapi()
            .to_pretty_json()
            .unwrap_or_else(|e| format!("{{\"error\": \"openapi: {e}\"}}"))
    })
}

#[cfg(test)]
mod tests {
    #[test]
    fn document_lists_every_route_with_error_envelope() {
        let doc: serde_json::Value = serde_json::from_str(super::document_json()).unwrap();
        let paths = doc["paths"].as_object().unwrap();
        for p in [
            "/v1/tenants",
            "/v1/tenants/{name}/quota",
            "/v1/tenants/{name}/usage",
            "/v1/vouchers",
            "/v1/audit",
            "/v1/quota",
            "/v1/jobs",
            "/v1/jobs/{id}",
            "/v1/usage",
            "/v1/statements/{month}",
            "/v1/regions",
            "/healthz",
            "/metrics",
            "/openapi.json",
            "/v1/chat/completions",
            "/v1/completions",
            "/v1/embeddings",
            "/v1/models",
            "/v1/calls",
            "/v1/tenants/{name}/models",
        ] {
            assert!(paths.contains_key(p), "missing {p}");
        }
        assert_eq!(
            doc["paths"]["/v1/jobs"]["post"]["responses"]["422"]["content"]["application/json"]
                ["schema"]["$ref"],
            "#/components/schemas/ErrorBody"
        );
        assert!(doc["components"]["securitySchemes"]["bearer"].is_object());
    }
}

//! OpenAPI schemas of the ledger's types the API sends and receives. The
//! ledger (domain core) knows nothing of HTTP, so the schemas live here;
//! schemathesis checks every response against them, which keeps them honest.

use std::borrow::Cow;

use serde_json::{json, Value};
use utoipa::openapi::{RefOr, Schema};

use crate::ledger::{
    AuditEvent, CallRecord, ChargeKind, Quota, Statement, Tenant, Tier, UsageSummary, Voucher,
    VoucherStatus,
};

fn schema(v: Value) -> RefOr<Schema> {
    RefOr::T(serde_json::from_value(v).expect("hand-written schema is valid"))
}

fn time() -> Value {
    json!({"type": "string", "format": "date-time"})
}

macro_rules! ledger_schema {
    ($ty:ty, $name:literal, $body:expr) => {
        impl utoipa::PartialSchema for $ty {
            fn schema() -> RefOr<Schema> {
                schema($body)
            }
        }
        impl utoipa::ToSchema for $ty {
            fn name() -> Cow<'static, str> {
                Cow::Borrowed($name)
            }
        }
    };
}

ledger_schema!(
    Tenant,
    "Tenant",
    json!({
        "type": "object",
        "required": ["name", "parent", "created_at"],
        "properties": {
            "name": {"type": "string"},
            "parent": {"type": ["string", "null"]},
            "created_at": time(),
        }
    })
);

ledger_schema!(
    Quota,
    "Quota",
    json!({
        "type": "object",
        "additionalProperties": false,
        "description": "A tenant's limits (the same as a TenantQuota's spec on a cluster). Absent limits are unlimited. Maps are keyed by accelerator model (tokens: by price tier), \"*\" for all together. The shape written before (one number for gpu_hours_per_month / tokens_per_month, tokens_per_month_by_tier, guaranteed_share, borrowable_share) is still read.",
        "properties": {
            "gpus": {"type": "object", "additionalProperties": {"type": "integer", "minimum": 0},
                "description": "Most GPUs held at once per accelerator model"},
            "gpu_hours_per_month": {"type": "object", "additionalProperties": {"type": "integer", "minimum": 0},
                "description": "GPU-hours per calendar month per accelerator model"},
            "tokens_per_month": {"type": "object", "additionalProperties": false,
                "description": "Tokens (prompt + completion) per calendar month per price tier; \"*\" = all tiers together",
                "properties": {
                    "*": {"type": "integer", "minimum": 0},
                    "basic": {"type": "integer", "minimum": 0},
                    "industry": {"type": "integer", "minimum": 0},
                    "high_value": {"type": "integer", "minimum": 0}}},
            "guaranteed_gpus": {"type": "integer", "minimum": 0,
                "description": "GPUs never preempted; the tenant's fair-share weight (default 0)"},
            "borrowable": {"type": "boolean",
                "description": "May use idle capacity beyond guaranteed_gpus, up to gpus; borrowed GPUs may be preempted (default true)"},
        }
    })
);

ledger_schema!(
    crate::ledger::series::Bucket,
    "Bucket",
    json!({"type": "string", "enum": ["hour", "day"]})
);

ledger_schema!(
    crate::ledger::series::Group,
    "Group",
    json!({"type": "string", "enum": ["tenant", "region"]})
);

ledger_schema!(
    crate::ledger::series::SeriesPoint,
    "SeriesPoint",
    json!({
        "type": "object",
        "required": ["start_s", "milli_gpu_s", "gross_fen", "voucher_fen", "carbon_mg", "tokens"],
        "properties": {
            "start_s": {"type": "integer", "description": "bucket start, unix seconds UTC"},
            "milli_gpu_s": {"type": "integer", "description": "GPU time; 3,600,000 = one GPU-hour"},
            "gross_fen": {"type": "integer", "description": "charges of the records starting in the bucket, fen"},
            "voucher_fen": {"type": "integer", "description": "what vouchers paid of them, fen"},
            "carbon_mg": {"type": "integer", "description": "carbon, mg CO2"},
            "tokens": {"type": "integer", "description": "prompt + completion tokens"},
        }
    })
);

ledger_schema!(
    crate::ledger::pending::PendingPoint,
    "PendingPoint",
    json!({
        "type": "object",
        "required": ["start_s", "jobs", "samples"],
        "properties": {
            "start_s": {"type": "integer", "description": "bucket start, unix seconds UTC"},
            "jobs": {"type": "integer", "description": "most workloads waiting at any sample in the bucket"},
            "samples": {"type": "integer", "description": "samples taken in the bucket (one a minute while a controller leads; 0: none recorded)"},
        }
    })
);

ledger_schema!(
    crate::ledger::pending::PendingNow,
    "PendingNow",
    json!({
        "type": "object",
        "required": ["at_s", "total", "by_reason"],
        "properties": {
            "at_s": {"type": "integer", "description": "the sample's minute, unix seconds UTC"},
            "total": {"type": "integer", "description": "workloads waiting, every reason together"},
            "by_reason": {"type": "object", "additionalProperties": {"type": "integer"},
                "description": "workloads waiting by reason (QuotaExceeded, Unschedulable, ...); reasons with none left out"},
        }
    })
);

ledger_schema!(
    crate::ledger::totals::TenantMonth,
    "TenantMonth",
    json!({
        "type": "object",
        "required": ["tenant", "milli_gpu_s", "gross_fen", "voucher_fen", "net_fen", "tokens"],
        "properties": {
            "tenant": {"type": "string"},
            "milli_gpu_s": {"type": "integer", "description": "GPU time this month; 3,600,000 = one GPU-hour"},
            "gross_fen": {"type": "integer", "description": "charges (GPU, energy, tokens) before vouchers, fen"},
            "voucher_fen": {"type": "integer", "description": "what vouchers paid of them, fen"},
            "net_fen": {"type": "integer", "description": "what the tenant owes: gross less vouchers, fen"},
            "tokens": {"type": "object", "additionalProperties": {"type": "integer"},
                "description": "prompt + completion tokens by price tier"},
        }
    })
);

ledger_schema!(
    crate::ledger::routing::Routing,
    "Routing",
    json!({
        "type": "object",
        "additionalProperties": false,
        "required": ["user_region"],
        "properties": {
            "user_region": {"type": "string", "minLength": 1, "maxLength": 63,
                "description": "the region the tenant's users call from: a user region of the latency table or a region's name (GET /v1/regions)"},
            "latency_slo_ms": {"type": ["integer", "null"], "minimum": 1, "maximum": 60000,
                "description": "upstreams farther than this round trip from user_region are not used; null: any, nearest first"},
        }
    })
);

ledger_schema!(
    ChargeKind,
    "ChargeKind",
    json!({"type": "string", "enum": ["gpu", "energy", "tokens"]})
);

ledger_schema!(
    Voucher,
    "Voucher",
    json!({
        "type": "object",
        "required": ["id", "tenant", "issuer", "face_value_fen", "balance_fen", "copay_ratio_bp",
                     "valid_from", "valid_until", "regions", "kinds", "issued_at"],
        "properties": {
            "id": {"type": "string"},
            "tenant": {"type": "string"},
            "issuer": {"type": "string"},
            "face_value_fen": {"type": "integer"},
            "balance_fen": {"type": "integer", "minimum": 0},
            "copay_ratio_bp": {"type": "integer", "minimum": 1, "maximum": 10000,
                               "description": "largest share of each charge covered, basis points"},
            "valid_from": time(),
            "valid_until": time(),
            "regions": {"type": "array", "items": {"type": "string"}},
            "kinds": {"type": "array", "items": {"$ref": "#/components/schemas/ChargeKind"}},
            "tiers": {"type": "array", "items": {"type": "string", "enum": ["basic", "industry", "high_value"]},
                      "description": "model voucher: token tiers it pays (empty = any)"},
            "models": {"type": "array", "items": {"type": "string"},
                       "description": "model voucher: models whose tokens it pays (empty = any)"},
            "issued_at": time(),
        }
    })
);

ledger_schema!(
    VoucherStatus,
    "VoucherStatus",
    json!({"type": "string", "enum": ["not_yet_valid", "active", "exhausted", "expired"],
           "description": "expired: whatever balance is left has lapsed and is never spendable"})
);

ledger_schema!(
    UsageSummary,
    "UsageSummary",
    json!({
        "type": "object",
        "required": ["gpu_hours", "tokens", "kwh", "carbon_kg", "gross_fen", "voucher_fen", "net_fen"],
        "description": "gross_fen = voucher_fen + net_fen; money in integer fen.",
        "properties": {
            "gpu_hours": {"type": "number"},
            "tokens": {"type": "object", "additionalProperties": {"type": "integer"},
                       "description": "tokens (prompt + completion) by tier"},
            "kwh": {"type": "number", "description": "facility energy"},
            "carbon_kg": {"type": "number"},
            "gross_fen": {"type": "integer"},
            "voucher_fen": {"type": "integer"},
            "net_fen": {"type": "integer"},
        }
    })
);

ledger_schema!(
    AuditEvent,
    "AuditEvent",
    json!({
        "type": "object",
        "required": ["seq", "at", "actor", "action", "target", "detail"],
        "properties": {
            "seq": {"type": "integer", "description": "cursor for ?since="},
            "at": time(),
            "actor": {"type": "string"},
            "action": {"type": "string"},
            "target": {"type": "string"},
            "detail": {"type": ["object", "array", "string", "number", "integer", "boolean", "null"]},
        }
    })
);

/// An object schema whose properties are all required (every field of the
/// ledger's statement structs is always serialised).
fn all_required(description: &str, properties: Value) -> Value {
    let required: Vec<&String> = properties
        .as_object()
        .expect("properties is an object")
        .keys()
        .collect();
    json!({
        "type": "object",
        "description": description,
        "required": required,
        "properties": properties,
    })
}

fn money_line(description: &str, mut properties: Value) -> Value {
    let fields = properties.as_object_mut().expect("properties is an object");
    for f in ["gross_fen", "voucher_fen", "net_fen"] {
        fields.insert(f.into(), json!({"type": "integer"}));
    }
    all_required(description, properties)
}

ledger_schema!(
    Statement,
    "Statement",
    all_required(
        "A tenant's monthly statement (see docs/ledger.md); `totals.gross_fen = totals.voucher_fen + totals.net_fen`; money in integer fen.",
        json!({
            "tenant": {"type": "string"},
            "month": {"type": "string", "pattern": "^[0-9]{4}-(0[1-9]|1[0-2])$"},
            "period_start": time(),
            "period_end": time(),
            "as_of": {"type": "string", "format": "date-time",
                      "description": "when the statement was made: voucher balances are read, and their status judged, at this moment (also for a past month)"},
            "usage_records": {"type": "integer", "minimum": 0},
            "token_records": {"type": "integer", "minimum": 0},
            "gpu": {"type": "array", "items": money_line("GPU time of one model in one region.", json!({
                "model": {"type": "string"},
                "region": {"type": "string"},
                "gpu_hours": {"type": "number"},
                "milli_gpu_seconds": {"type": "integer"},
            }))},
            "energy": {"type": "array", "items": money_line("Energy and carbon in one region.", json!({
                "region": {"type": "string"},
                "it_kwh": {"type": "number"},
                "facility_kwh": {"type": "number", "description": "IT energy × PUE"},
                "carbon_kg": {"type": "number"},
                "it_energy_j": {"type": "integer"},
                "facility_j": {"type": "integer"},
                "carbon_mg": {"type": "integer"},
            }))},
            "tokens": {"type": "array", "items": money_line("Tokens of one tier.", json!({
                "tier": {"type": "string"},
                "prompt_tokens": {"type": "integer", "minimum": 0},
                "completion_tokens": {"type": "integer", "minimum": 0},
            }))},
            "vouchers": {"type": "array", "items": all_required(
                "One voucher: what it covered in the month and what is left at `as_of`.",
                json!({
                    "id": {"type": "string"},
                    "issuer": {"type": "string"},
                    "face_value_fen": {"type": "integer"},
                    "copay_ratio_bp": {"type": "integer", "minimum": 1, "maximum": 10000},
                    "redeemed_in_month_fen": {"type": "integer", "minimum": 0},
                    "balance_fen": {"type": "integer", "minimum": 0,
                                    "description": "stored balance at `as_of`"},
                    "status": {"$ref": "#/components/schemas/VoucherStatus"},
                    "spendable_fen": {"type": "integer", "minimum": 0,
                                      "description": "balance charges could still draw: 0 unless active"},
                    "lapsed_fen": {"type": "integer", "minimum": 0,
                                   "description": "balance left unused at expiry: 0 unless expired"},
                    "valid_from": time(),
                    "valid_until": time(),
                }),
            )},
            "totals": all_required(
                "gross = voucher + net; payable = net + adjustments.",
                json!({
                    "gpu_hours": {"type": "number"},
                    "tokens": {"type": "integer", "minimum": 0},
                    "facility_kwh": {"type": "number"},
                    "carbon_kg": {"type": "number"},
                    "gross_fen": {"type": "integer"},
                    "voucher_fen": {"type": "integer"},
                    "net_fen": {"type": "integer"},
                    "adjustments_fen": {"type": "integer"},
                    "payable_fen": {"type": "integer"},
                }),
            ),
            "chain_head": {
                "type": ["object", "null"],
                "description": "the ledger's tamper-evident chain head when the statement was made (null before any entry): `zhisuan ledger verify --head SEQ:HASH` checks the ledger still holds it",
                "required": ["seq", "hash"],
                "properties": {
                    "seq": {"type": "integer", "minimum": 1},
                    "hash": {"type": "string", "pattern": "^[0-9a-f]{64}$"},
                },
            },
        }),
    )
);

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ledger::{Ledger, Month, UsageRecord, VoucherSpec};
    use chrono::{TimeZone, Utc};

    /// Every object in `value` has exactly the properties `schema` lists,
    /// recursively (array items included); `$ref`s are taken on trust.
    fn same_fields(path: &str, value: &Value, schema: &Value) {
        if schema.get("$ref").is_some() {
            return;
        }
        match value {
            Value::Object(fields) => {
                let props = schema["properties"]
                    .as_object()
                    .unwrap_or_else(|| panic!("{path}: schema lists no properties"));
                let mut got: Vec<&String> = fields.keys().collect();
                let mut want: Vec<&String> = props.keys().collect();
                got.sort();
                want.sort();
                assert_eq!(got, want, "{path}: JSON fields vs schema properties");
                let required: Vec<&str> = schema["required"]
                    .as_array()
                    .map(|r| r.iter().filter_map(|v| v.as_str()).collect())
                    .unwrap_or_default();
                for (k, v) in fields {
                    assert!(required.contains(&k.as_str()), "{path}.{k} not required");
                    same_fields(&format!("{path}.{k}"), v, &props[k]);
                }
            }
            Value::Array(items) => {
                assert!(!items.is_empty(), "{path}: give the test some items");
                for (i, v) in items.iter().enumerate() {
                    same_fields(&format!("{path}[{i}]"), v, &schema["items"]);
                }
            }
            _ => {}
        }
    }

    /// The statement's OpenAPI schema describes exactly the JSON the API sends
    /// (voucher status, spendable and lapsed balances included).
    #[test]
    fn statement_schema_matches_statement_json() {
        let l = Ledger::open(":memory:").unwrap();
        l.ensure_rate_card("t").unwrap();
        l.create_tenant("t", "acme", None).unwrap();
        let start = Utc.with_ymd_and_hms(2026, 10, 5, 0, 0, 0).unwrap();
        l.issue_voucher(
            "t",
            &VoucherSpec {
                id: Some("v".into()),
                tenant: "acme".into(),
                issuer: "gov".into(),
                face_value_fen: 10_000,
                copay_ratio_bp: 5_000,
                valid_from: start,
                valid_until: start + chrono::Duration::days(20),
                regions: vec![],
                kinds: vec![],
                tiers: vec![],
                models: vec![],
            },
        )
        .unwrap();
        let usage = UsageRecord {
            source: "p".into(),
            tenant: "acme".into(),
            job: "ns/j".into(),
            region: "gansu".into(),
            node: "n".into(),
            model: "H100".into(),
            gpu_milli: 1000,
            start,
            end: start + chrono::Duration::hours(1),
            it_energy_j: 2_520_000,
            pue: 1.2,
            green_share: 0.5,
            grid_kg_per_kwh: 0.5703,
        };
        let tokens = crate::ledger::TokenRecord {
            source: "svc".into(),
            tenant: "acme".into(),
            service: "ns/chat".into(),
            model: "qwen".into(),
            region: "gansu".into(),
            tier: crate::ledger::Tier::Basic,
            start,
            end: start + chrono::Duration::minutes(1),
            prompt_tokens: 1000,
            completion_tokens: 10,
        };
        l.ingest(&[usage], &[tokens]).unwrap();
        let st = l
            .statement_as_of("acme", Month::parse("2026-10").unwrap(), start)
            .unwrap();
        let json = serde_json::to_value(&st).unwrap();
        let RefOr::T(schema) = <Statement as utoipa::PartialSchema>::schema() else {
            panic!("inline schema expected");
        };
        same_fields("statement", &json, &serde_json::to_value(schema).unwrap());
    }
}

ledger_schema!(
    CallRecord,
    "CallRecord",
    json!({
        "type": "object",
        "description": "One call through the token gateway. No prompt or completion text is kept.",
        "required": ["request_id", "tenant", "key_prefix", "model", "tier", "upstream", "region", "endpoint",
                     "status", "prompt_tokens", "completion_tokens", "estimated", "ttft_ms", "latency_ms", "at"],
        "properties": {
            "request_id": {"type": "string"},
            "tenant": {"type": "string"},
            "key_prefix": {"type": "string", "description": "first 12 hex digits of the key's SHA-256 (its id)"},
            "model": {"type": "string"},
            "tier": {"type": "string", "enum": ["basic", "industry", "high_value"]},
            "upstream": {"type": "string"},
            "region": {"type": "string"},
            "endpoint": {"type": "string", "enum": ["chat/completions", "completions", "embeddings"]},
            "status": {"type": "integer", "description": "HTTP status answered (499: the client went away)"},
            "prompt_tokens": {"type": "integer", "minimum": 0},
            "completion_tokens": {"type": "integer", "minimum": 0},
            "estimated": {"type": "boolean", "description": "counted by the gateway, not reported by the upstream"},
            "ttft_ms": {"type": ["integer", "null"]},
            "latency_ms": {"type": "integer"},
            "at": time(),
        }
    })
);

ledger_schema!(
    Tier,
    "TokenTier",
    json!({"type": "string", "enum": ["basic", "industry", "high_value"],
           "description": "Token price tier: basic (基础词元), industry (行业词元), high_value (高价值词元)"})
);

ledger_schema!(
    crate::jobs::Phase,
    "JobPhase",
    json!({"type": "string", "enum": ["pending", "running", "succeeded", "failed", "cancelled"]})
);

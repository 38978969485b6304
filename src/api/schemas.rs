//! OpenAPI schemas of the ledger's types the API sends and receives. The
//! ledger (domain core) knows nothing of HTTP, so the schemas live here;
//! schemathesis checks every response against them, which keeps them honest.

use std::borrow::Cow;

use serde_json::{json, Value};
use utoipa::openapi::{RefOr, Schema};

use crate::ledger::{
    AuditEvent, ChargeKind, Quota, Statement, Tenant, UsageSummary, Voucher, VoucherStatus,
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
        "description": "Absent limits are unlimited. `gpus` maps an accelerator model (or \"*\" for all models together) to the most GPUs held at once.",
        "properties": {
            "gpus": {"type": "object", "additionalProperties": {"type": "integer", "minimum": 0}},
            "gpu_hours_per_month": {"type": ["integer", "null"], "minimum": 0},
            "tokens_per_month": {"type": ["integer", "null"], "minimum": 0},
            "guaranteed_share": {"type": "number", "minimum": 0, "maximum": 1},
            "borrowable_share": {"type": "number", "minimum": 0, "maximum": 1},
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

ledger_schema!(
    Statement,
    "Statement",
    json!({
        "type": "object",
        "required": ["tenant", "month", "period_start", "period_end", "gpu", "energy", "tokens", "vouchers", "totals"],
        "description": "A tenant's monthly statement (see docs/ledger.md); `totals.gross_fen = totals.voucher_fen + totals.net_fen`.",
        "properties": {
            "tenant": {"type": "string"},
            "month": {"type": "string"},
            "period_start": time(),
            "period_end": time(),
            "gpu": {"type": "array", "items": {"type": "object"}},
            "energy": {"type": "array", "items": {"type": "object"}},
            "tokens": {"type": "array", "items": {"type": "object"}},
            "vouchers": {"type": "array", "items": {"type": "object"}},
            "totals": {"type": "object"},
        }
    })
);

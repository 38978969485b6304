//! ComputeVouchers (算力券) applied with kubectl are redeemable: while it
//! leads, the controller issues each one into the ledger and writes the
//! ledger's balance back into its status.
//!
//! The ledger is the one source of truth for money. A ComputeVoucher is an
//! order to issue a voucher: it is issued once, under an id derived from
//! the object's uid (`cv-<uid>`), so retries, restarts and leader changes
//! issue it exactly once; the issue is audited with the object's name. The
//! object's status is the ledger's projection (`ledgerId`, `balanceFen`,
//! `redeemedFen`, `phase`, `message`), refreshed every period. Editing the
//! spec of an issued voucher changes nothing in the ledger (the status says
//! so); deleting the object leaves the voucher in the ledger (money already
//! granted is never silently withdrawn).
//!
//! - plan (pure): [`voucher_spec`] (the ledger's spec, or the fields that
//!   are wrong) and [`status_of`] (what the status says after the ledger
//!   answered);
//! - act: [`sync_vouchers`] lists, issues, patches statuses.

use std::sync::Arc;
use std::time::Duration;

use kube::api::{Api, ListParams, Patch, PatchParams};
use kube::{Client, ResourceExt};

use super::crd::{ComputeVoucher, ComputeVoucherStatus};
use super::validate::validate_voucher;
use crate::jobs::describe;
use crate::ledger::{ChargeKind, Ledger, LedgerError, Voucher, VoucherSpec};

/// The ledger id of the voucher a ComputeVoucher issues.
pub fn ledger_id(uid: &str) -> String {
    format!("cv-{uid}")
}

/// Who the audit log names for an issue from a ComputeVoucher.
pub fn actor(name: &str) -> String {
    format!("kubernetes:computevoucher/{name}")
}

/// The ledger's spec for `cv`, or why it cannot be issued (the fields and
/// their fixes).
pub fn voucher_spec(cv: &ComputeVoucher) -> Result<VoucherSpec, String> {
    let uid = cv
        .uid()
        .ok_or_else(|| "metadata.uid: the object has no uid yet".to_string())?;
    let errors = validate_voucher(&cv.spec);
    if !errors.is_empty() {
        return Err(describe(&errors));
    }
    let at = |field: &str, text: &str| {
        chrono::DateTime::parse_from_rfc3339(text)
            .map(|t| t.with_timezone(&chrono::Utc))
            .map_err(|e| format!("{field}: {text:?} is not RFC 3339 ({e})"))
    };
    let mut kinds = Vec::with_capacity(cv.spec.resource_kinds.len());
    for k in &cv.spec.resource_kinds {
        kinds.push(ChargeKind::parse(k).ok_or_else(|| {
            format!("spec.resourceKinds: {k:?} is not a charge kind (gpu, energy or tokens)")
        })?);
    }
    Ok(VoucherSpec {
        id: Some(ledger_id(&uid)),
        tenant: cv.spec.tenant.clone(),
        issuer: cv.spec.issuer.clone(),
        face_value_fen: cv.spec.face_value_fen,
        copay_ratio_bp: cv.spec.copay_basis_points,
        valid_from: at("spec.validFrom", &cv.spec.valid_from)?,
        valid_until: at("spec.validUntil", &cv.spec.valid_until)?,
        regions: cv.spec.regions.clone(),
        kinds,
        tiers: vec![],
        models: vec![],
    })
}

/// What became of a ComputeVoucher in the ledger.
#[derive(Clone, Debug, PartialEq)]
pub enum Issued {
    /// Issued now or earlier, as the spec says.
    Yes(Voucher),
    /// Issued earlier; the spec was edited since (the ledger keeps the
    /// voucher as first issued).
    Edited(Voucher, String),
    /// Not issued: why, naming the field and the fix.
    Refused(String),
}

/// The status that shows `issued`.
pub fn status_of(issued: Issued, id: Option<&str>) -> ComputeVoucherStatus {
    let held = |v: Voucher, message: Option<String>| ComputeVoucherStatus {
        balance_fen: v.balance_fen,
        redeemed_fen: v.face_value_fen - v.balance_fen,
        ledger_id: Some(v.id),
        phase: Some("Issued".into()),
        message,
    };
    match issued {
        Issued::Yes(v) => held(v, None),
        Issued::Edited(v, why) => held(v, Some(why)),
        Issued::Refused(why) => ComputeVoucherStatus {
            ledger_id: id.map(str::to_string),
            phase: Some("Rejected".into()),
            message: Some(why),
            ..ComputeVoucherStatus::default()
        },
    }
}

/// Why an edited spec is not applied.
fn edit_refused(id: &str) -> String {
    format!(
        "the ledger holds voucher {id} as first issued; spec edits are not applied (apply a new ComputeVoucher for a new grant)"
    )
}

/// The voucher as the ledger holds it for `cv`, issuing it if it is not
/// there yet (blocking: the ledger's I/O). `known`: the ledger's vouchers
/// read once for the round — one already issued is answered from them,
/// without a write.
pub fn issue(ledger: &Ledger, cv: &ComputeVoucher, known: &[Voucher]) -> Issued {
    let spec = match voucher_spec(cv) {
        Ok(s) => s,
        Err(why) => return Issued::Refused(why),
    };
    if let Some(v) = known
        .iter()
        .find(|v| spec.id.as_deref() == Some(v.id.as_str()))
    {
        return if v.issued_as(&spec) {
            Issued::Yes(v.clone())
        } else {
            Issued::Edited(v.clone(), edit_refused(&v.id))
        };
    }
    match ledger.issue_voucher(&actor(&cv.name_any()), &spec) {
        Ok(v) => Issued::Yes(v),
        Err(LedgerError::Conflict { id, .. }) => {
            let why = edit_refused(&id);
            match ledger.vouchers(None) {
                Ok(all) => match all.into_iter().find(|v| v.id == id) {
                    Some(v) => Issued::Edited(v, why),
                    None => Issued::Refused(why),
                },
                Err(e) => Issued::Refused(e.to_string()),
            }
        }
        Err(LedgerError::UnknownTenant(t)) => Issued::Refused(format!(
            "spec.tenant: {t:?} is not a tenant of the ledger; create it (POST /v1/tenants) and the voucher is issued on the next sync"
        )),
        Err(e) => Issued::Refused(e.to_string()),
    }
}

/// One round: every ComputeVoucher issued (once) and its status brought in
/// step with the ledger. Returns how many statuses were written.
pub async fn sync_vouchers(api: &Api<ComputeVoucher>, ledger: &Ledger) -> anyhow::Result<usize> {
    let list = api.list(&ListParams::default()).await?;
    let l = ledger.clone();
    let known = Arc::new(tokio::task::spawn_blocking(move || l.vouchers(None)).await??);
    let mut written = 0;
    for cv in list.items {
        let id = cv.uid().map(|u| ledger_id(&u));
        let (l, obj, known) = (ledger.clone(), cv.clone(), known.clone());
        let issued = tokio::task::spawn_blocking(move || issue(&l, &obj, &known)).await?;
        let status = status_of(issued, id.as_deref());
        if cv.status.as_ref() == Some(&status) {
            continue;
        }
        api.patch_status(
            &cv.name_any(),
            &PatchParams::default(),
            &Patch::Merge(serde_json::json!({"status": status})),
        )
        .await?;
        written += 1;
    }
    Ok(written)
}

/// Syncs every `interval` until `term_over` resolves; a failed round is
/// logged and retried on the next.
pub async fn run_voucher_loop(
    client: Client,
    ledger: Ledger,
    interval: Duration,
    term_over: impl std::future::Future<Output = ()>,
) -> anyhow::Result<()> {
    let api: Api<ComputeVoucher> = Api::all(client);
    tokio::pin!(term_over);
    loop {
        if let Err(e) = sync_vouchers(&api, &ledger).await {
            tracing::warn!(error = %e, "ComputeVoucher sync failed; retrying next period");
        }
        tokio::select! {
            _ = &mut term_over => return Ok(()),
            _ = tokio::time::sleep(interval) => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::operator::crd::ComputeVoucherSpec;

    fn cv(face: i64) -> ComputeVoucher {
        let mut cv = ComputeVoucher::new(
            "hz-2026",
            ComputeVoucherSpec {
                issuer: "hangzhou-bureau".into(),
                tenant: "acme".into(),
                face_value_fen: face,
                copay_basis_points: 5_000,
                valid_from: "2026-01-01T00:00:00Z".into(),
                valid_until: "2027-01-01T00:00:00Z".into(),
                regions: vec![],
                resource_kinds: vec!["gpu".into()],
            },
        );
        cv.metadata.uid = Some("u-1".into());
        cv
    }

    #[test]
    fn a_voucher_is_issued_once_under_its_uid_and_edits_are_refused() {
        let ledger = Ledger::open(":memory:").unwrap();
        // No tenant yet: refused, naming the field and the fix.
        let Issued::Refused(why) = issue(&ledger, &cv(100_000), &[]) else {
            panic!("issued to an unknown tenant")
        };
        assert!(
            why.starts_with("spec.tenant") && why.contains("POST /v1/tenants"),
            "{why}"
        );
        ledger.create_tenant("admin", "acme", None).unwrap();
        let Issued::Yes(v) = issue(&ledger, &cv(100_000), &[]) else {
            panic!("not issued")
        };
        assert_eq!(v.id, "cv-u-1");
        // Issued again (a retry, a restart, the next leader): the same one.
        assert_eq!(issue(&ledger, &cv(100_000), &[]), Issued::Yes(v.clone()));
        assert_eq!(ledger.vouchers(Some("acme")).unwrap().len(), 1);
        // An edited face value is not applied; the status keeps the balance.
        let s = status_of(issue(&ledger, &cv(999_999), &[]), Some("cv-u-1"));
        let message = s.message.clone().unwrap_or_default();
        assert!(message.contains("spec edits are not applied"), "{s:?}");
        assert_eq!(s.balance_fen, 100_000);
        assert_eq!(ledger.vouchers(None).unwrap()[0].face_value_fen, 100_000);
        // A round that read the ledger's vouchers first answers an issued
        // one from them, with no write (checked against a ledger without
        // the tenant, where a write would be refused).
        let other = Ledger::open(":memory:").unwrap();
        assert_eq!(
            issue(&other, &cv(100_000), std::slice::from_ref(&v)),
            Issued::Yes(v.clone())
        );
        let Issued::Edited(_, why) = issue(&other, &cv(999_999), std::slice::from_ref(&v)) else {
            panic!("an edit was not refused")
        };
        assert!(why.contains("spec edits are not applied"), "{why}");
        // (without the round's vouchers it writes, and that ledger refuses)
        assert!(matches!(
            issue(&other, &cv(100_000), &[]),
            Issued::Refused(_)
        ));
        let s = status_of(Issued::Yes(v), None);
        assert_eq!((s.balance_fen, s.redeemed_fen), (100_000, 0));
        assert_eq!(s.phase.as_deref(), Some("Issued"));
    }

    #[test]
    fn a_bad_spec_names_its_field() {
        let mut bad = cv(0);
        bad.spec.resource_kinds = vec!["gpus".into()];
        let why = voucher_spec(&bad).unwrap_err();
        assert!(why.contains("spec.faceValueFen"), "{why}");
        let mut bad = cv(1);
        bad.spec.resource_kinds = vec!["gpus".into()];
        let why = voucher_spec(&bad).unwrap_err();
        assert!(why.contains("spec.resourceKinds"), "{why}");
    }
}

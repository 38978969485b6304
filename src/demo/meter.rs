//! Turns the world's metered usage into ledger records (plan layer: pure).
//!
//! Record sources are built from the job NAME and replica, not the world's
//! job number, so a demo restarted on the same ledger (which replays the
//! workload, possibly interleaved differently with API submissions) derives
//! the same record ids and the ledger counts each interval once.

use crate::ledger::types::{Tier, TokenRecord, UsageRecord};
use crate::regions::catalog::Catalog;
use crate::regions::job::JobKind;
use crate::sim::world::UsageInterval;
use chrono::{DateTime, Utc};

/// Tokens served per GPU-second by the demo's inference jobs (prompt,
/// completion). Assumed: a 7B-class model on one data-centre GPU serves a few
/// hundred to a few thousand tokens/s; batch runs at larger batch sizes.
pub const ONLINE_TOKENS_PER_GPU_S: (i64, i64) = (600, 200);
pub const BATCH_TOKENS_PER_GPU_S: (i64, i64) = (1500, 500);

/// Served model name recorded for the demo's inference jobs.
pub const SERVED_MODEL: &str = "qwen2.5-7b-instruct";

fn at(t_s: i64) -> DateTime<Utc> {
    DateTime::from_timestamp(t_s, 0).unwrap_or_default()
}

/// `demo/<tenant>/<job name>/<replica>`: the stable identity of one
/// replica's usage. The tenant is part of it: two tenants' jobs of the same
/// name are two sources (they were billed as one).
pub fn source_of(iv: &UsageInterval) -> String {
    // The world's id is `<job number>/<replica>/<start_s>`.
    let replica = iv.id.split('/').nth(1).unwrap_or("0");
    format!("demo/{}/{}/{}", iv.tenant, iv.job_name, replica)
}

/// The ledger record for one metered interval (none for an empty one): the
/// API's conversion, with the demo's replay-stable source.
pub fn usage_record(catalog: &Catalog, iv: &UsageInterval) -> Option<UsageRecord> {
    let mut record = crate::sim::backend::usage_records(catalog, std::slice::from_ref(iv)).pop()?;
    record.source = source_of(iv);
    Some(record)
}

/// Tokens served over an inference job's interval (none for training).
pub fn token_record(iv: &UsageInterval, kind: JobKind, tier: Tier) -> Option<TokenRecord> {
    let (prompt, completion) = match kind {
        JobKind::OnlineInference => ONLINE_TOKENS_PER_GPU_S,
        JobKind::BatchInference => BATCH_TOKENS_PER_GPU_S,
        JobKind::Training => return None,
    };
    // GPU-seconds in milli precision, so a half GPU serves half the tokens.
    let milli_gpu_s = i64::from(iv.milli_gpu) * (iv.end_s - iv.start_s);
    Some(TokenRecord {
        source: source_of(iv),
        tenant: iv.tenant.clone(),
        service: format!("demo/{}", iv.job_name),
        model: SERVED_MODEL.to_string(),
        region: iv.region.clone(),
        tier,
        start: at(iv.start_s),
        end: at(iv.end_s),
        prompt_tokens: prompt * milli_gpu_s / 1000,
        completion_tokens: completion * milli_gpu_s / 1000,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn interval(milli: u32, start: i64, end: i64) -> UsageInterval {
        UsageInterval {
            id: format!("17/2/{start}"),
            tenant: "acme".into(),
            job_id: 17,
            job_name: "openb-pod-0042".into(),
            region: "zhongwei".into(),
            node: "zw-node-3".into(),
            model: "G3".into(),
            milli_gpu: milli,
            start_s: start,
            end_s: end,
            gpu_seconds: f64::from(milli) / 1000.0 * (end - start) as f64,
            it_kwh: 0.4,
            facility_kwh: 0.46,
            energy_cost_milli_fen: 0,
            pue: 1.15,
            green_share: 0.6,
            carbon_kg: 0.1,
        }
    }

    #[test]
    fn record_identity_ignores_the_world_job_number() {
        let catalog = Catalog::default_catalog();
        let a = interval(1000, 3600, 7200);
        let mut b = a.clone();
        b.id = "99/2/3600".into();
        b.job_id = 99;
        assert_eq!(source_of(&a), "demo/acme/openb-pod-0042/2");
        let (ra, rb) = (
            usage_record(&catalog, &a).unwrap(),
            usage_record(&catalog, &b).unwrap(),
        );
        assert_eq!(ra.source, rb.source);
        assert_eq!(
            ra.meter().unwrap().id,
            rb.meter().unwrap().id,
            "same ledger record id"
        );
        let mut other_replica = a.clone();
        other_replica.id = "17/3/3600".into();
        assert_ne!(source_of(&a), source_of(&other_replica));
        // Another tenant's job of the same name is another source.
        let mut other_tenant = a.clone();
        other_tenant.tenant = "beta".into();
        assert_ne!(source_of(&a), source_of(&other_tenant));
        assert_ne!(
            usage_record(&catalog, &other_tenant)
                .unwrap()
                .meter()
                .unwrap()
                .id,
            ra.meter().unwrap().id
        );
    }

    #[test]
    fn usage_record_carries_energy_and_the_region_grid_factor() {
        let catalog = Catalog::default_catalog();
        let r = usage_record(&catalog, &interval(500, 0, 3600)).unwrap();
        // 0.4 kWh × 3.6 MJ/kWh.
        assert_eq!(r.it_energy_j, 1_440_000);
        assert_eq!(r.gpu_milli, 500);
        assert_eq!((r.start.timestamp(), r.end.timestamp()), (0, 3600));
        let zhongwei = catalog.region_index("zhongwei").unwrap();
        assert_eq!(
            r.grid_kg_per_kwh,
            catalog.regions[zhongwei].grid_factor_kg_per_kwh
        );
        assert!(r.meter().is_ok(), "the ledger accepts the record");
        assert!(
            usage_record(&catalog, &interval(500, 3600, 3600)).is_none(),
            "empty interval"
        );
    }

    #[test]
    fn tokens_follow_gpu_seconds_and_kind() {
        // Half a GPU for 100 s = 50 GPU-seconds.
        let iv = interval(500, 0, 100);
        let t = token_record(&iv, JobKind::OnlineInference, Tier::Basic).unwrap();
        assert_eq!((t.prompt_tokens, t.completion_tokens), (30_000, 10_000));
        let t = token_record(&iv, JobKind::BatchInference, Tier::Industry).unwrap();
        assert_eq!((t.prompt_tokens, t.completion_tokens), (75_000, 25_000));
        assert!(token_record(&iv, JobKind::Training, Tier::Basic).is_none());
    }
}

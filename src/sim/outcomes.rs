//! `zhisuan sim --jobs-out FILE`: one CSV row per job and policy — where it
//! ran, when it started, how long it waited and why (to find the job that
//! waited 52 h).

use crate::sim::world::{Phase, World};
use serde::Serialize;

/// One job's outcome under one policy.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct JobOutcome {
    pub policy: String,
    pub tenant: String,
    pub name: String,
    pub kind: String,
    pub submitted_s: i64,
    /// Empty when the job never started.
    pub region: String,
    pub started_s: Option<i64>,
    /// Seconds from submission to start (to the end of the run when it never started).
    pub wait_s: i64,
    pub finished_s: Option<i64>,
    pub phase: String,
    /// Why here, or why it never started.
    pub reason: String,
}

/// The outcome of every job in `world` (after the run), in submission order.
pub fn job_outcomes(world: &World, policy: &str) -> Vec<JobOutcome> {
    let end = world.now_s();
    let catalog = world.catalog();
    world
        .jobs()
        .map(|j| {
            let summary = j.explanation.render(catalog).summary;
            let reason = match (j.phase, &j.message) {
                (Phase::Pending, Some(m)) => m.clone(),
                _ => summary,
            };
            JobOutcome {
                policy: policy.to_string(),
                tenant: j.spec.tenant.clone(),
                name: j.spec.name.clone(),
                kind: j.spec.kind.name().to_string(),
                submitted_s: j.submitted_s,
                region: j
                    .placement
                    .as_ref()
                    .map(|p| catalog.regions[p.region].name.clone())
                    .unwrap_or_default(),
                started_s: j.started_s,
                wait_s: j.wait_s(end),
                finished_s: j.finished_s,
                phase: format!("{:?}", j.phase).to_lowercase(),
                reason,
            }
        })
        .collect()
}

/// Writes outcomes as CSV with a header.
pub fn write_outcomes(rows: &[JobOutcome], out: impl std::io::Write) -> anyhow::Result<()> {
    super::write_csv(rows, out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::placement::Policy;
    use crate::regions::catalog::Catalog;
    use crate::regions::plan::RegionPolicy;
    use crate::sim::regions::simulate;
    use crate::sim::workload::{parse_workload, DEFAULT_WORKLOAD_CSV};

    #[test]
    fn every_job_gets_a_row_with_its_region_start_and_wait() {
        let catalog = Catalog::default_catalog();
        let header = DEFAULT_WORKLOAD_CSV.lines().next().unwrap();
        let text = format!(
            "{header}\na,t1,training,0,600,1,1,0,1000,1024,,beijing,,,,false\n\
             b,t2,online-inference,30,60,1,0,500,1000,1024,,shanghai,50,,,false\n"
        );
        let workload = parse_workload(&text, "w.csv", &catalog).unwrap();
        let (_, world) = simulate(
            &catalog,
            &workload,
            RegionPolicy::Green,
            Policy::default(),
            1,
            &indicatif::ProgressBar::hidden(),
        )
        .unwrap();
        let rows = job_outcomes(&world, "green");
        assert_eq!(rows.len(), 2);
        for (r, (t, spec)) in rows.iter().zip(&workload) {
            assert_eq!(
                (&r.tenant, &r.name, r.submitted_s),
                (&spec.tenant, &spec.name, *t)
            );
            assert!(catalog.region_index(&r.region).is_some(), "{r:?}");
            assert_eq!(r.wait_s, r.started_s.unwrap() - r.submitted_s);
            assert_eq!(r.phase, "succeeded");
            assert!(
                r.reason.contains(&format!("placed in {}", r.region)),
                "{r:?}"
            );
        }
        let mut out = Vec::new();
        write_outcomes(&rows, &mut out).unwrap();
        let text = String::from_utf8(out).unwrap();
        assert!(text.starts_with("policy,tenant,name,kind,submitted_s,region,started_s,wait_s,"));
        assert_eq!(text.lines().count(), 3);
    }
}

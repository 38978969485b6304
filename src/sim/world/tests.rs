use super::*;
use crate::regions::explain::{Filter, Verdict};
use crate::regions::job::JobKind;

/// Two regions: `east` (near users, dirty, 3 nodes × 8 GPUs) and `west`
/// (green, 4 nodes × 8 GPUs), 10 ms apart; users in `city`.
const CATALOG: &str = r#"
accelerators:
  - {model: A10, vendor: nvidia, power_w: 150}
regions:
  - name: east
    hub: e
    side: east
    pue: 1.25
    green_share: 0.1
    price_cny_per_kwh: 0.7
    grid_factor_kg_per_kwh: 0.6
    inventory: [{model: A10, nodes: 3, gpus_per_node: 8, cpu_milli: 96000, memory_mib: 393216}]
  - name: west
    hub: w
    side: west
    pue: 1.1
    green_share: 0.6
    price_cny_per_kwh: 0.3
    grid_factor_kg_per_kwh: 0.6
    inventory: [{model: A10, nodes: 4, gpus_per_node: 8, cpu_milli: 96000, memory_mib: 393216}]
user_regions:
  - {name: city}
links:
  - {a: city, b: east, rtt_ms: 2, bandwidth_gbps: 100}
  - {a: east, b: west, rtt_ms: 10, bandwidth_gbps: 100}
"#;

fn world(policy: RegionPolicy, period: Option<i64>) -> World {
    let catalog = Catalog::from_yaml(CATALOG, "test.yaml").unwrap();
    let config = WorldConfig {
        region_policy: policy,
        metering_period_s: period,
        start_s: 1000,
        ..Default::default()
    };
    World::new(catalog, config).unwrap()
}

/// The west region's green share: 10% at night, 90% from 10:00 to 14:00
/// CST; a world starting at 02:00 CST.
fn solar_world() -> World {
    let profile: Vec<&str> = (0..24)
        .map(|h| if (10..14).contains(&h) { "0.9" } else { "0.1" })
        .collect();
    let yaml = CATALOG.replacen(
        "    green_share: 0.6\n",
        &format!(
            "    green_share: 0.6\n    green_profile: [{}]\n",
            profile.join(", ")
        ),
        1,
    );
    let catalog = Catalog::from_yaml(&yaml, "test.yaml").unwrap();
    let config = WorldConfig {
        start_s: MIDNIGHT_CST + 2 * 3600,
        ..Default::default()
    };
    World::new(catalog, config).unwrap()
}

/// 2026-01-01 00:00 CST.
const MIDNIGHT_CST: i64 = 1_767_196_800;

#[test]
fn a_job_that_may_start_late_waits_for_the_sunny_hours_and_no_longer() {
    let mut w = solar_world();
    let job = |name: &str, delay: i64| JobSpec {
        max_delay_s: Some(delay),
        max_runtime_s: Some(3600),
        ..spec(name, 1, 1, 3600)
    };
    let patient = w.submit(job("patient", 12 * 3600)).unwrap();
    // Its window closes at 05:30, before the sun: it starts now.
    let hurried = w.submit(job("hurried", 4 * 3600)).unwrap();
    let eager = w.submit(spec("eager", 1, 1, 3600)).unwrap();
    assert_eq!(w.job(hurried).unwrap().phase, Phase::Running);
    assert_eq!(w.job(eager).unwrap().phase, Phase::Running);
    let p = w.job(patient).unwrap();
    assert_eq!(p.phase, Phase::Pending);
    assert_eq!(p.reason.as_deref(), Some("TimeShifted"));
    // The others leave at 03:00; the world then wakes itself at 10:00
    // and starts it then, in the west.
    assert_eq!(w.next_event_s(), Some(MIDNIGHT_CST + 3 * 3600));
    while w.job(patient).unwrap().phase == Phase::Pending {
        let t = w.next_event_s().expect("a wake-up is due");
        w.advance_to(t);
    }
    let p = w.job(patient).unwrap();
    assert_eq!(p.started_s, Some(MIDNIGHT_CST + 10 * 3600));
    assert_eq!(
        w.catalog().regions[p.placement.as_ref().unwrap().region].name,
        "west"
    );
}

/// Time-shifted jobs' verdicts are kept for the rest of their hour
/// (`schedule::held`): over a day of arrivals, departures and hour
/// boundaries every pass plans exactly what a fresh scheduler plans,
/// and most held jobs are held again from the kept verdict.
#[test]
fn kept_time_shift_verdicts_plan_what_a_fresh_pass_plans() {
    let mut w = solar_world();
    // Best fit: no shapes learned from arrivals (the default policy's
    // are kept between passes on purpose), so a fresh pass is the
    // reference for everything.
    w.scheduler = Scheduler::new(PlanConfig {
        policy: "bestfit".parse().unwrap(),
        ..w.scheduler.config().clone()
    });
    w.check_fresh = true;
    let start = w.now_s();
    for i in 0..60i64 {
        let at = start + i * 1370; // every ~23 min, off the hour grid
        w.advance_to(at);
        let delay = [2 * 3600, 9 * 3600, 20 * 3600][(i % 3) as usize];
        let job = JobSpec {
            max_delay_s: Some(delay),
            max_runtime_s: Some(2 * 3600),
            ..spec(
                &format!("j{i}"),
                1 + (i % 2) as u32,
                1 + (i % 4) as u32,
                2 * 3600,
            )
        };
        w.submit(job).unwrap();
        // Jobs that may not wait, competing for the room.
        if i % 5 == 0 {
            w.submit(spec(&format!("now{i}"), 1, 2, 3 * 3600)).unwrap();
        }
    }
    while let Some(t) = w.next_event_s() {
        w.advance_to(t);
    }
    assert!(w.jobs().all(|j| j.phase != Phase::Pending));
    let reused = w.scheduler.held_verdicts_reused();
    assert!(reused > 100, "only {reused} held verdicts were reused");
    // Nobody started after its latest start.
    for j in w.jobs() {
        if let (Some(d), Some(s)) = (j.spec.max_delay_s, j.started_s) {
            assert!(s <= j.submitted_s + d, "{} started late", j.spec.name);
        }
    }
}

fn spec(name: &str, replicas: u32, gpus: u32, duration: i64) -> JobSpec {
    JobSpec {
        replicas,
        gpus_per_replica: gpus,
        cpu_milli_per_replica: 8000,
        memory_mib_per_replica: 16384,
        user_region: Some("city".into()),
        duration_s: Some(duration),
        ..JobSpec::new("acme", name, JobKind::Training)
    }
}

fn region_of(w: &World, id: JobId) -> String {
    w.job_view(id).unwrap().region.unwrap()
}

/// A region reserved to a tenant subtree (`dedicated_to`) takes only
/// that subtree's jobs, under the green policy that prefers it; a
/// subtree confined to its zones (`dedicated_only`) runs there only.
#[test]
fn a_dedicated_region_serves_only_its_subtree() {
    let yaml = CATALOG.replacen(
        "    green_share: 0.6\n",
        "    green_share: 0.6\n    dedicated_to: fujian-gov\n",
        1,
    );
    let catalog = Catalog::from_yaml(&yaml, "test.yaml").unwrap();
    let config = WorldConfig {
        start_s: 1000,
        ..Default::default()
    };
    let mut w = World::new(catalog, config).unwrap();
    let mut gov = QuotaNode::new("fujian-gov", None, Default::default());
    gov.dedicated_only = true;
    w.set_quota(gov);
    w.set_quota(QuotaNode::new(
        "xiamen",
        Some("fujian-gov"),
        Default::default(),
    ));
    let of = |tenant: &str, name: &str, replicas: u32| JobSpec {
        tenant: tenant.into(),
        ..spec(name, replicas, 8, 3600)
    };
    // acme goes east although the west is greener; the west is not its.
    let acme = w.submit(of("acme", "a", 1)).unwrap();
    assert_eq!(region_of(&w, acme), "east");
    let west = w.catalog().region_index("west").unwrap();
    assert!(matches!(
        w.job(acme).unwrap().explanation.candidates[west].verdict,
        Verdict::Removed {
            filter: Filter::Dedicated,
            ..
        }
    ));
    // xiamen (below fujian-gov) takes the west, and only the west: its
    // gang of 4 whole nodes fits, a second one waits with east free.
    let first = w.submit(of("xiamen", "x1", 4)).unwrap();
    assert_eq!(region_of(&w, first), "west");
    let second = w.submit(of("xiamen", "x2", 1)).unwrap();
    let job = w.job(second).unwrap();
    assert_eq!(job.phase, Phase::Pending);
    assert_eq!(job.pending_reason(), Some("capacity"), "its zone is full");
    let east = w.catalog().region_index("east").unwrap();
    assert!(matches!(
        job.explanation.candidates[east].verdict,
        Verdict::Removed {
            filter: Filter::Dedicated,
            ..
        }
    ));
    // A confined tenant with no zone of its own has no region at all.
    let mut lonely = QuotaNode::new("lonely", None, Default::default());
    lonely.dedicated_only = true;
    w.set_quota(lonely);
    let stranded = w.submit(of("lonely", "l", 1)).unwrap();
    let job = w.job(stranded).unwrap();
    assert_eq!(job.pending_reason(), Some("dedicated"));
}

#[test]
fn finished_jobs_are_dropped_after_the_retention_and_live_ones_never() {
    let catalog = Catalog::from_yaml(CATALOG, "test.yaml").unwrap();
    let config = WorldConfig {
        start_s: 1000,
        keep_finished_s: Some(3600),
        ..Default::default()
    };
    let mut w = World::new(catalog, config).unwrap();
    let long = w.submit(spec("long", 1, 1, 100_000)).unwrap();
    let short = w.submit(spec("short", 1, 1, 60)).unwrap();
    let cancelled = w.submit(spec("c", 1, 1, 60)).unwrap();
    assert_eq!(w.cancel(cancelled), Some(Phase::Cancelled));
    // A step far past the retention: what finished in it stays visible
    // after the step (retention counts from the clock before the step).
    w.advance_to(1000 + 50_000);
    assert_eq!(w.job(short).unwrap().phase, Phase::Succeeded);
    w.advance_to(1000 + 50_001);
    assert!(w.job(short).is_none() && w.job(cancelled).is_none());
    assert_eq!(w.job(long).unwrap().phase, Phase::Running, "live jobs stay");
    assert_eq!((w.submitted(), w.jobs_kept()), (3, 1));
    assert_eq!(w.first_kept_id(), long, "the running job holds the front");
    let next = w.submit(spec("next", 1, 1, 60)).unwrap();
    assert_eq!(next, 4, "ids keep counting");
    assert_eq!(w.jobs().map(|j| j.id).collect::<Vec<_>>(), vec![long, next]);
    assert_eq!(w.jobs_from(2).map(|j| j.id).collect::<Vec<_>>(), vec![next]);
    // Once the long job is gone too, the front moves past every dropped id.
    w.advance_to(1000 + 200_000);
    w.advance_to(1000 + 200_001);
    assert_eq!((w.jobs_kept(), w.first_kept_id()), (0, 5));
}

#[test]
fn without_a_retention_every_job_stays() {
    let mut w = world(RegionPolicy::Green, None);
    let id = w.submit(spec("t", 1, 1, 60)).unwrap();
    w.advance_to(1000 + 10_000_000);
    w.advance_to(1000 + 20_000_000);
    assert_eq!(w.job(id).unwrap().phase, Phase::Succeeded);
}

#[test]
fn a_job_runs_departs_and_is_metered_once() {
    let mut w = world(RegionPolicy::Green, None);
    let id = w.submit(spec("t", 1, 2, 7200)).unwrap();
    assert_eq!(w.job(id).unwrap().phase, Phase::Running);
    assert_eq!(
        region_of(&w, id),
        "west",
        "training goes to the green region"
    );
    let west = &w.region_stats()[1];
    assert_eq!(west.gpus_allocated, 2.0);
    w.advance_to(1000 + 7199);
    assert_eq!(w.job(id).unwrap().phase, Phase::Running);
    w.advance_to(1000 + 10_000);
    let j = w.job(id).unwrap();
    assert_eq!((j.phase, j.finished_s), (Phase::Succeeded, Some(8200)));
    let usage = w.take_usage();
    assert_eq!(usage.len(), 1);
    let u = &usage[0];
    assert_eq!(
        (u.id.as_str(), u.start_s, u.end_s, u.milli_gpu),
        ("1/0/1000", 1000, 8200, 2000)
    );
    // 2 GPUs × 2 h × 150 W = 0.6 kWh IT; × 1.1 = 0.66 kWh; × 0.3 CNY = 19 800 milli-fen.
    assert!((u.facility_kwh - 0.66).abs() < 1e-9);
    assert_eq!(u.energy_cost_milli_fen, 19_800);
    assert!((u.carbon_kg - 0.66 * 0.4 * 0.6).abs() < 1e-9);
    assert_eq!(w.region_stats()[1].gpus_allocated, 0.0);
    assert!(w.take_usage().is_empty(), "usage is handed over once");
}

/// One region with an 8-A100 node and an 8-GPU node of `model`.
fn one_region_two_models(model: &str, vendor: &str) -> Catalog {
    let yaml = format!(
        r#"
accelerators:
  - {{model: A100, vendor: nvidia, power_w: 400}}
  - {{model: {model}, vendor: {vendor}, power_w: 350}}
regions:
  - name: mixed
    hub: m
    side: east
    pue: 1.2
    green_share: 0.2
    price_cny_per_kwh: 0.5
    grid_factor_kg_per_kwh: 0.6
    inventory:
      - {{model: A100, nodes: 1, gpus_per_node: 8, cpu_milli: 96000, memory_mib: 393216}}
      - {{model: {model}, nodes: 1, gpus_per_node: 8, cpu_milli: 96000, memory_mib: 393216}}
user_regions:
  - {{name: city}}
links:
  - {{a: city, b: mixed, rtt_ms: 2, bandwidth_gbps: 100}}
"#
    );
    Catalog::from_yaml(&yaml, "two-models.yaml").unwrap()
}

/// One region with an 8-A100 node and an 8-NPU Ascend node: flexible
/// 2-GPU jobs (no vendor, no models) must not take the NPUs, so a job
/// asking for Ascend910B waits no longer than under bestfit (issue #14's
/// case: 35,913 s against 0 s before jobs had a vendor).
#[test]
fn flexible_jobs_leave_the_npus_to_the_job_that_needs_them() {
    let run = |placement_policy: Policy| {
        let catalog = one_region_two_models("Ascend910B", "huawei");
        let config = WorldConfig {
            placement_policy,
            start_s: 1000,
            ..Default::default()
        };
        let mut w = World::new(catalog, config).unwrap();
        let flexible: Vec<JobId> = (0..4)
            .map(|i| w.submit(spec(&format!("f{i}"), 1, 2, 36_000)).unwrap())
            .collect();
        let npu = w
            .submit(JobSpec {
                gpu_models: vec!["Ascend910B".into()],
                ..spec("npu", 1, 8, 600)
            })
            .unwrap();
        let cann = w
            .submit(JobSpec {
                accelerator_vendor: Some("cann".into()),
                ..spec("cann", 1, 8, 600)
            })
            .unwrap();
        w.advance_to(1000 + 36_000 + 1);
        let nodes: Vec<String> = flexible
            .iter()
            .map(|id| w.job_view(*id).unwrap().replicas[0].node.clone())
            .collect();
        let waited = |id| w.job(id).unwrap().wait_s(1000 + 36_001);
        (nodes, waited(npu), waited(cann))
    };
    let (nodes, npu_wait, cann_wait) = run(Policy::default());
    assert!(
        nodes.iter().all(|n| n.contains("a100")),
        "flexible CUDA jobs stay on NVIDIA: {nodes:?}"
    );
    let (_, npu_bestfit, _) = run(Policy::BestFit);
    assert_eq!(npu_wait, 0, "the NPU job starts at once");
    assert!(npu_wait <= npu_bestfit);
    // A job naming its stack (cann) runs on the NPUs once they are free.
    assert_eq!(cann_wait, 600, "waits only for the first NPU job");
}

/// Within one vendor: an A100 node and an H100 node; a job limited to
/// H100 holds two of its GPUs and an 8-GPU job limited to H100 waits
/// for it. Flexible 2-GPU jobs arriving meanwhile go to the A100 node
/// (best fit alone would pack them onto the H100 node's six free
/// GPUs and keep the big job waiting for ten hours), under the default
/// policy and under bestfit alike.
#[test]
fn flexible_jobs_leave_the_scarce_model_to_the_job_waiting_for_it() {
    let h100 = |name: &str, gpus, duration| JobSpec {
        gpu_models: vec!["H100".into()],
        ..spec(name, 1, gpus, duration)
    };
    let run = |placement_policy: Policy| {
        let catalog = one_region_two_models("H100", "nvidia");
        let config = WorldConfig {
            placement_policy,
            start_s: 1000,
            ..Default::default()
        };
        let mut w = World::new(catalog, config).unwrap();
        w.submit(h100("small", 2, 1000)).unwrap();
        w.advance_to(1010);
        let big = w.submit(h100("big", 8, 600)).unwrap();
        w.advance_to(1020);
        let flexible: Vec<JobId> = (0..4)
            .map(|i| w.submit(spec(&format!("f{i}"), 1, 2, 36_000)).unwrap())
            .collect();
        w.advance_to(1000 + 40_000);
        let nodes: Vec<String> = flexible
            .iter()
            .map(|id| w.job_view(*id).unwrap().replicas[0].node.clone())
            .collect();
        (nodes, w.job(big).unwrap().wait_s(41_000))
    };
    let (nodes, big_wait) = run(Policy::default());
    assert!(
        nodes.iter().all(|n| n.contains("a100")),
        "flexible jobs stay off the H100 node: {nodes:?}"
    );
    assert_eq!(big_wait, 990, "the big job waits only for the small one");
    let (bestfit_nodes, bestfit_wait) = run(Policy::BestFit);
    assert!(bestfit_nodes.iter().all(|n| n.contains("a100")));
    assert!(big_wait <= bestfit_wait);
}

/// Four nodes in each region; with `near`, east is nearly as green
/// and cheap as west (within green's packing band of it), otherwise
/// far dirtier and dearer. Users in `lake` sit 1 ms from west.
fn four_and_four(near: bool) -> World {
    let mut yaml = CATALOG.replacen("nodes: 3", "nodes: 4", 1).replacen(
        "  - {name: city}\n",
        "  - {name: city}\n  - {name: lake}\n",
        1,
    ) + "  - {a: lake, b: west, rtt_ms: 1, bandwidth_gbps: 100}\n";
    if near {
        yaml = yaml.replacen(
            "pue: 1.25\n    green_share: 0.1\n    price_cny_per_kwh: 0.7",
            "pue: 1.1\n    green_share: 0.55\n    price_cny_per_kwh: 0.32",
            1,
        );
    }
    let catalog = Catalog::from_yaml(&yaml, "four.yaml").unwrap();
    let config = WorldConfig {
        start_s: 1000,
        ..Default::default()
    };
    World::new(catalog, config).unwrap()
}

/// The gang limited to west by residency.
fn resident(gang: JobSpec) -> JobSpec {
    JobSpec {
        residency: vec!["west".into()],
        ..gang
    }
}

/// The gang limited to west by its users' latency SLO.
fn near_lake(gang: JobSpec) -> JobSpec {
    JobSpec {
        user_region: Some("lake".into()),
        latency_slo_ms: Some(5.0),
        ..gang
    }
}

/// A gang that only west serves (`limit`) needs all four of its nodes
/// and waits for a 3-node job there, then a flexible job arrives.
/// Returns where the flexible job ran, the gang's wait and the
/// flexible job's explanation.
fn gang_waits_for_west(near: bool, limit: fn(JobSpec) -> JobSpec) -> (String, i64, String) {
    let mut w = four_and_four(near);
    let fill = w.submit(spec("fill", 3, 8, 1000)).unwrap();
    assert_eq!(region_of(&w, fill), "west");
    w.advance_to(1010);
    let bound = w.submit(limit(spec("bound", 4, 8, 600))).unwrap();
    w.advance_to(1020);
    let flex = w.submit(spec("flex", 1, 8, 36_000)).unwrap();
    w.advance_to(3000);
    let why = w.job_view(flex).unwrap().explanation.summary;
    (region_of(&w, flex), w.job(bound).unwrap().wait_s(3000), why)
}

/// East is as good as west for a flexible job (in green's packing
/// band): it would take west's free node and keep the waiting gang
/// there for ten hours; while the gang waits, green tries west last
/// within the band, so the flexible job runs in east and the gang
/// starts as soon as the 3-node job ends.
#[test]
fn flexible_jobs_leave_the_region_a_limited_gang_waits_for() {
    for limit in [resident, near_lake] {
        let (region, gang_wait, why) = gang_waits_for_west(true, limit);
        assert_eq!(region, "east", "west is spared for the gang");
        assert_eq!(gang_wait, 990);
        assert!(why.contains("left for jobs limited to them"), "{why}");
    }
}

/// East far dirtier and dearer: the flexible job is not sent there to
/// spare west (sparing reorders only regions as good as the best).
#[test]
fn a_flexible_job_is_not_sent_to_a_far_worse_region_to_spare_one() {
    let (region, gang_wait, _) = gang_waits_for_west(false, resident);
    assert_eq!(region, "west");
    assert_eq!(gang_wait, 1990, "the gang waits for the flexible job too");
}

/// A job bound to west runs on half a node there; a flexible job of
/// the same size would pack onto that node's other half, the best fit
/// in the band: it runs in east instead, and says why, leaving west's
/// room to the jobs that can run nowhere else.
#[test]
fn flexible_jobs_leave_regions_that_bound_jobs_use() {
    let mut w = four_and_four(true);
    let bound = w
        .submit(JobSpec {
            residency: vec!["west".into()],
            ..spec("bound", 1, 4, 36_000)
        })
        .unwrap();
    assert_eq!(region_of(&w, bound), "west");
    w.advance_to(1010);
    let flex = w.submit(spec("flex", 1, 4, 36_000)).unwrap();
    assert_eq!(region_of(&w, flex), "east");
    let why = w.job_view(flex).unwrap().explanation.summary;
    assert!(why.contains("left for jobs limited to them"), "{why}");
    // Once the bound job has ended, west is the flexible jobs' again.
    w.advance_to(1000 + 36_001);
    let later = w.submit(spec("later", 1, 4, 600)).unwrap();
    assert_eq!(region_of(&w, later), "west");
}

#[test]
fn gangs_stay_in_one_region_and_fall_back_when_the_best_is_full() {
    let mut w = world(RegionPolicy::Green, None);
    // Fill west with 3 × 8 GPUs; a gang of 2 × 8 no longer fits there.
    let fill = w.submit(spec("fill", 3, 8, 500)).unwrap();
    assert_eq!(region_of(&w, fill), "west");
    let gang = w.submit(spec("gang", 2, 8, 500)).unwrap();
    let v = w.job_view(gang).unwrap();
    assert_eq!(
        v.region.as_deref(),
        Some("east"),
        "falls back to the next region"
    );
    assert_eq!(v.replicas.len(), 2);
    assert!(
        v.replicas.iter().all(|r| r.node.starts_with("east-")),
        "{:?}",
        v.replicas
    );
    let west = v
        .explanation
        .candidates
        .iter()
        .find(|c| c.region == "west")
        .unwrap();
    assert_eq!(west.verdict, "full");
    assert!(
        v.explanation
            .summary
            .contains("better-ranked region(s) were full"),
        "{}",
        v.explanation.summary
    );
    // A gang bigger than any region stays pending (it never spans regions).
    let huge = w.submit(spec("huge", 5, 8, 500)).unwrap();
    assert_eq!(w.job(huge).unwrap().phase, Phase::Pending);
    assert_eq!(w.job(huge).unwrap().pending_reason(), Some("inventory"));
}

#[test]
fn what_the_scheduler_does_not_model_is_refused_naming_the_field() {
    let mut w = world(RegionPolicy::Green, None);
    let mut s = spec("patient", 1, 8, 100);
    s.wait_for_best = true;
    let e = w.submit(s).unwrap_err();
    assert_eq!(e.field, "wait_for_best");
    let mut s = spec("frugal", 1, 8, 100);
    s.cost_budget_fen = Some(10);
    assert_eq!(w.submit(s).unwrap_err().field, "cost_budget_fen");
    assert_eq!(w.submitted(), 0, "nothing was submitted");
}

#[test]
fn an_slo_no_region_meets_stays_pending_with_that_reason() {
    let mut w = world(RegionPolicy::Green, None);
    let mut s = spec("chat", 1, 1, 100);
    s.kind = JobKind::OnlineInference;
    s.latency_slo_ms = Some(1.0);
    let id = w.submit(s).unwrap();
    w.advance_to(100_000);
    let v = w.job_view(id).unwrap();
    assert_eq!(v.phase, Phase::Pending);
    assert_eq!(v.pending_reason, Some("latency-slo"));
    assert!(
        v.explanation
            .summary
            .contains("No region meets the latency SLO of 1 ms"),
        "{}",
        v.explanation.summary
    );
    // With a reachable SLO it goes east (the only region within 5 ms).
    let mut s = spec("chat2", 1, 1, 100);
    s.kind = JobKind::OnlineInference;
    s.latency_slo_ms = Some(5.0);
    let id2 = w.submit(s).unwrap();
    assert_eq!(region_of(&w, id2), "east");
}

#[test]
fn cancel_frees_capacity_for_the_queue_and_meters_up_to_now() {
    let mut w = world(RegionPolicy::Nearest, None);
    let a = w.submit(spec("a", 7, 8, 10_000)).unwrap();
    assert_eq!(
        w.job(a).unwrap().phase,
        Phase::Pending,
        "7 × 8 GPUs fits no single region"
    );
    let b = w.submit(spec("b", 3, 8, 10_000)).unwrap();
    let c = w.submit(spec("c", 4, 8, 10_000)).unwrap();
    let d = w.submit(spec("d", 1, 8, 50)).unwrap();
    assert_eq!(
        (region_of(&w, b), region_of(&w, c)),
        ("east".into(), "west".into())
    );
    assert_eq!(w.job(d).unwrap().phase, Phase::Pending);
    w.advance_to(1300);
    assert_eq!(w.cancel(b), Some(Phase::Cancelled));
    assert_eq!(w.job(d).unwrap().started_s, Some(1300));
    let usage = w.take_usage();
    assert_eq!(usage.len(), 3, "three replicas of b metered");
    assert!(usage
        .iter()
        .all(|u| u.end_s == 1300 && u.gpu_seconds == 8.0 * 300.0));
    assert_eq!(w.cancel(a), Some(Phase::Cancelled));
    assert_eq!(w.cancel(999), None);
}

/// The controller's preemption, through the simulated cluster: a
/// higher-priority gang that fits nowhere evicts a lower one, which is
/// metered up to the eviction and requeued, and runs again later.
#[test]
fn a_higher_priority_job_preempts_and_the_victim_is_metered_and_requeued() {
    let mut w = world(RegionPolicy::Nearest, None);
    let low = w.submit(spec("low", 3, 8, 10_000)).unwrap(); // all of east
    let west = w.submit(spec("west", 4, 8, 10_000)).unwrap(); // all of west
    assert_eq!(region_of(&w, low), "east");
    assert_eq!(region_of(&w, west), "west");
    w.advance_to(1600);
    let mut urgent = spec("urgent", 1, 8, 500);
    urgent.priority = 10;
    let urgent = w.submit(urgent).unwrap();
    let j = w.job(urgent).unwrap();
    assert_eq!(j.phase, Phase::Pending, "evicting first");
    assert_eq!(j.reason.as_deref(), Some("Preempting"));
    let victim = w.job(low).unwrap();
    assert_eq!((victim.phase, victim.preemptions), (Phase::Pending, 1));
    let usage = w.take_usage();
    assert!(
        usage.iter().all(|u| u.job_id == low && u.end_s == 1600),
        "the victim is metered up to the eviction: {usage:?}"
    );
    assert_eq!(usage.len(), 3);
    // The next event (any departure, or a new arrival) admits the preemptor.
    w.reconsider_pending();
    assert_eq!(w.job(urgent).unwrap().phase, Phase::Running);
    assert_eq!(region_of(&w, urgent), "east");
    w.advance_to(50_000);
    let victim = w.job(low).unwrap();
    assert_eq!(victim.phase, Phase::Succeeded, "requeued and run again");
    assert!(victim.started_s.unwrap() >= 2100);
}

/// The controller's fair share: when capacity frees, the tenant using
/// the least goes first, even if another tenant's job waited longer
/// (first come, first served would start `large-waits`).
#[test]
fn freed_capacity_goes_to_the_tenant_using_the_least() {
    let mut w = world(RegionPolicy::Nearest, None);
    let mut a = |name: &str, tenant: &str, gpus: u32, duration: i64| {
        let mut s = spec(name, 1, gpus, duration);
        s.tenant = tenant.into();
        w.submit(s).unwrap()
    };
    let _big = a("big", "small", 8, 100_000);
    let short = a("short", "small", 8, 100);
    for i in 0..5 {
        a(&format!("fill{i}"), "large", 8, 100_000);
    }
    let large_waits = a("large-waits", "large", 8, 100);
    let small_waits = a("small-waits", "small", 8, 100);
    assert_eq!(w.job(small_waits).unwrap().phase, Phase::Pending);
    assert_eq!(w.job(large_waits).unwrap().phase, Phase::Pending);
    // `short` departs: small then holds 8 GPUs, large 40.
    w.advance_to(1000 + 150);
    assert!(w.job(short).unwrap().finished_s.is_some());
    let (h, l) = (w.job(small_waits).unwrap(), w.job(large_waits).unwrap());
    assert_eq!(
        (h.phase, l.phase),
        (Phase::Running, Phase::Pending),
        "the tenant holding less goes first"
    );
}

#[test]
fn metering_period_cuts_long_runs_into_intervals_that_add_up() {
    let mut w = world(RegionPolicy::Green, Some(3600));
    let id = w.submit(spec("long", 1, 1, 10_000)).unwrap();
    w.advance_to(20_000);
    assert_eq!(w.job(id).unwrap().phase, Phase::Succeeded);
    let usage = w.take_usage();
    let bounds: Vec<(i64, i64)> = usage.iter().map(|u| (u.start_s, u.end_s)).collect();
    assert_eq!(
        bounds,
        vec![(1000, 3600), (3600, 7200), (7200, 10_800), (10_800, 11_000)]
    );
    let total: f64 = usage.iter().map(|u| u.gpu_seconds).sum();
    assert_eq!(total, 10_000.0);
    let ids: std::collections::BTreeSet<&str> = usage.iter().map(|u| u.id.as_str()).collect();
    assert_eq!(ids.len(), 4, "ids are unique");
}

/// Two copies of CATALOG's `west`, `a` and `b`, equal on every figure
/// (`a` ranks first on ties), 5 ms from the users in `city`; users in
/// `town` sit 1 ms from b and 20 ms from a.
fn twins(pack_band: &str) -> Catalog {
    let west =
        &CATALOG[CATALOG.find("  - name: west").unwrap()..CATALOG.find("user_regions:").unwrap()];
    let head = &CATALOG[..CATALOG.find("  - name: east").unwrap()];
    let yaml = format!(
        "scoring: {{carbon: 1, cost: 1, latency: 0.1, pack_band: {pack_band}}}\n{head}{}{}\
             user_regions:\n  - {{name: city}}\n  - {{name: town}}\nlinks:\n\
             \x20 - {{a: city, b: a, rtt_ms: 5, bandwidth_gbps: 100}}\n\
             \x20 - {{a: city, b: b, rtt_ms: 5, bandwidth_gbps: 100}}\n\
             \x20 - {{a: town, b: b, rtt_ms: 1, bandwidth_gbps: 100}}\n\
             \x20 - {{a: town, b: a, rtt_ms: 20, bandwidth_gbps: 100}}\n",
        west.replace("name: west", "name: a"),
        west.replace("name: west", "name: b"),
    );
    Catalog::from_yaml(&yaml, "twins.yaml").unwrap()
}

#[test]
fn equally_green_regions_take_the_job_where_it_packs_best() {
    let run = |pack_band: &str| {
        let catalog = twins(pack_band);
        let config = WorldConfig {
            start_s: 1000,
            ..Default::default()
        };
        let mut w = World::new(catalog, config).unwrap();
        // Typical shapes: whole GPUs and half GPUs. Region b holds a
        // half-used GPU (an inference service whose SLO only b meets).
        w.submit(spec("whole", 1, 1, 600)).unwrap();
        let mut pinned = spec("pinned", 1, 0, 600);
        pinned.gpu_milli = 500;
        pinned.kind = JobKind::OnlineInference;
        pinned.user_region = Some("town".into());
        pinned.latency_slo_ms = Some(2.0);
        let pinned = w.submit(pinned).unwrap();
        assert_eq!(region_of(&w, pinned), "b");
        let mut half = spec("half", 1, 0, 600);
        half.gpu_milli = 500;
        let half = w.submit(half).unwrap();
        (w.job_view(half).unwrap(), w.job_view(pinned).unwrap())
    };
    // In band: b, where the half GPU fills the other half instead of
    // leaving a half GPU no whole-GPU job can use in a.
    let (half, pinned) = run("0.3");
    assert_eq!(half.region.as_deref(), Some("b"));
    assert_eq!(half.replicas[0].node, pinned.replicas[0].node);
    assert_eq!(half.replicas[0].devices, pinned.replicas[0].devices);
    assert!(
        half.explanation
            .summary
            .contains("packs best here among the 2 regions within 30%"),
        "{}",
        half.explanation.summary
    );
    let a = &half.explanation.candidates[0];
    assert_eq!((a.region.as_str(), a.verdict), ("a", "ranked"));
    assert!(a.reason.contains("packs better in b"), "{}", a.reason);
    // pack_band 0: strict score order, the first region.
    let (half, _) = run("0");
    assert_eq!(half.region.as_deref(), Some("a"));
}

mod props {
    use super::*;
    use proptest::prelude::*;

    const USERS: [&str; 8] = [
        "beijing",
        "shanghai",
        "hangzhou",
        "guangzhou",
        "shenzhen",
        "chengdu",
        "wuhan",
        "xian",
    ];

    fn arb_job() -> impl Strategy<Value = (JobSpec, Vec<usize>, i64)> {
        (
            0usize..8,
            prop::sample::select(vec![None, Some(2.0), Some(5.0), Some(10.0), Some(25.0)]),
            prop::collection::vec(0usize..10, 0..3),
            prop_oneof![
                (1u32..4, 1u32..9).prop_map(|(r, g)| (r, g, 0u32)),
                (1u32..1000).prop_map(|m| (1, 0, m))
            ],
            0u8..3,
            60i64..20_000,
            0i64..3_000,
        )
            .prop_map(
                |(user, slo, residency, (replicas, gpus, milli), kind, duration, gap)| {
                    let kind = [
                        JobKind::Training,
                        JobKind::BatchInference,
                        JobKind::OnlineInference,
                    ][kind as usize];
                    let spec = JobSpec {
                        replicas,
                        gpus_per_replica: gpus,
                        gpu_milli: milli,
                        cpu_milli_per_replica: 4000,
                        memory_mib_per_replica: 8192,
                        user_region: Some(USERS[user].into()),
                        latency_slo_ms: slo,
                        duration_s: Some(duration),
                        ..JobSpec::new("t", "p", kind)
                    };
                    (spec, residency, gap)
                },
            )
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: 48, ..ProptestConfig::default() })]
        /// Under the default policy no placement ever breaks residency or
        /// the latency SLO, and a gang sits in exactly one region.
        #[test]
        fn green_never_violates_residency_or_slo(jobs in prop::collection::vec(arb_job(), 1..120)) {
            let catalog = Catalog::default_catalog();
            let mut w = World::new(catalog.clone(), WorldConfig::default()).unwrap();
            let mut t = 0;
            for (mut spec, residency, gap) in jobs {
                spec.residency = residency.iter().map(|&r| catalog.regions[r].name.clone()).collect();
                t += gap;
                w.advance_to(t);
                w.submit(spec).unwrap();
            }
            while let Some(t) = w.next_event_s() { w.advance_to(t); }
            for j in w.jobs() {
                if let Some(p) = &j.placement {
                    let (slo, res) = crate::regions::plan::violations(&catalog, &j.resolved, p.region);
                    prop_assert!(!slo, "job {} placed beyond its SLO", j.id);
                    prop_assert!(!res, "job {} placed outside its residency", j.id);
                    prop_assert_eq!(p.replicas.len(), j.resolved.replicas as usize);
                    let region = &catalog.regions[p.region].name;
                    for r in w.job_view(j.id).unwrap().replicas {
                        prop_assert!(r.node.starts_with(region.as_str()), "replica on {} outside {}", r.node, region);
                    }
                } else {
                    prop_assert_eq!(j.phase, Phase::Pending);
                    prop_assert!(j.pending_reason().is_some());
                }
            }
            // Everything departed: every GPU is free again.
            for s in w.region_stats() { prop_assert_eq!(s.gpus_allocated, 0.0); }
        }
    }
}

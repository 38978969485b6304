//! Dedicated zones in the scheduler: reserved nodes take only their tenant
//! subtree, confined tenants take only their zones, and both are named in
//! the pending status.

use super::tests::{launches, node, pending_messages, quota, run_it, workload};
use super::*;
use crate::jobs::Dedication;

/// `g1`, `g2`: 8-GPU nodes of node group gov-zone, reserved to the subtree
/// of tenant `fujian-gov` (child `xiamen`); `p1`: an open 8-GPU node.
fn gov_nodes() -> Vec<NodeView> {
    let mut nodes = vec![
        node("g1", "east", 8),
        node("g2", "east", 8),
        node("p1", "east", 8),
    ];
    for n in &mut nodes[..2] {
        n.dedicated = Some(Dedication {
            tenant: "fujian-gov".into(),
            zone: "node group \"gov-zone\"".into(),
        });
    }
    nodes
}

/// The gov nodes with `workloads`; tenants `fujian-gov` (confined to its
/// zones when `confined`), `xiamen` below it and `acme`.
fn gov_snapshot(workloads: Vec<WorkloadView>, confined: bool) -> Snapshot {
    let mut gov = quota("fujian-gov", None, &[], 0);
    gov.spec.dedicated_only = confined;
    Snapshot {
        now: 100,
        nodes: gov_nodes(),
        workloads,
        quotas: vec![
            gov,
            quota("xiamen", Some("fujian-gov"), &[], 0),
            quota("acme", None, &[], 0),
        ],
        ..Default::default()
    }
}

fn placed_nodes(p: &Plan, name: &str) -> BTreeSet<String> {
    launches(p)
        .iter()
        .filter(|(n, _)| *n == name)
        .flat_map(|(_, s)| s.placement.as_ref().unwrap().replicas.iter())
        .map(|r| r.node.clone())
        .collect()
}

#[test]
fn reserved_nodes_take_only_their_tenant_subtree() {
    let snap = gov_snapshot(
        vec![
            workload("outsider", "acme", 2, 8, 0, 1),
            workload("city", "xiamen", 2, 8, 0, 2),
        ],
        false,
    );
    let p = plan(&snap, &PlanConfig::default());
    // acme's gang of two whole nodes sees one open node: it waits, and its
    // status says which zone is not its to use.
    assert!(placed_nodes(&p, "outsider").is_empty());
    let msg = pending_messages(&p)["outsider"];
    assert!(
        msg.contains(r#"node group "gov-zone" is reserved to tenant subtree "fujian-gov""#),
        "{msg}"
    );
    // A tenant below fujian-gov may use the zone (and the open node).
    assert_eq!(placed_nodes(&p, "city").len(), 2);
    // With the gov gang gone, the outsider still never lands on g1/g2.
    let only_outsider = Snapshot {
        workloads: vec![workload("outsider", "acme", 1, 8, 0, 1)],
        ..snap.clone()
    };
    let p = plan(&only_outsider, &PlanConfig::default());
    assert_eq!(
        placed_nodes(&p, "outsider"),
        BTreeSet::from(["p1".to_string()])
    );
}

#[test]
fn a_confined_subtree_runs_only_in_its_zones() {
    let snap = gov_snapshot(
        vec![
            workload("a", "xiamen", 1, 8, 0, 1),
            workload("b", "xiamen", 1, 8, 0, 2),
            workload("c", "xiamen", 1, 8, 0, 3),
        ],
        true,
    );
    let p = plan(&snap, &PlanConfig::default());
    // The parent's dedicatedOnly confines the child: two land on g1/g2,
    // the third waits although p1 is free, and is told why.
    let used: BTreeSet<String> = ["a", "b", "c"]
        .iter()
        .flat_map(|n| placed_nodes(&p, n))
        .collect();
    assert_eq!(used, BTreeSet::from(["g1".to_string(), "g2".to_string()]));
    let msg = pending_messages(&p)["c"];
    assert!(
        msg.contains(r#"Confined to dedicated zones by TenantQuota spec.dedicatedOnly of tenant "fujian-gov" (open to it: node group "gov-zone")"#),
        "{msg}"
    );
}

/// The pass's refused-shape cache is per access class: a shape refused
/// for a tenant outside the zone is still tried for one inside it.
#[test]
fn a_shape_refused_outside_a_zone_is_tried_inside_it() {
    let snap = gov_snapshot(
        vec![
            workload("outsider", "acme", 3, 8, 0, 1),
            workload("insider", "xiamen", 3, 8, 0, 2),
        ],
        false,
    );
    let p = plan(&snap, &PlanConfig::default());
    assert!(placed_nodes(&p, "outsider").is_empty());
    assert_eq!(placed_nodes(&p, "insider").len(), 3);
}

/// A preemptor outside a zone evicts nothing inside it: that frees nothing
/// it may use.
#[test]
fn preemption_evicts_only_from_nodes_the_preemptor_may_use() {
    let mut snap = gov_snapshot(
        vec![
            workload("gov-low", "xiamen", 2, 8, -1, 1),
            workload("open-low", "acme", 1, 8, 0, 2),
        ],
        false,
    );
    let p = plan(&snap, &PlanConfig::default());
    for (name, status) in launches(&p) {
        let i = snap
            .workloads
            .iter()
            .position(|w| w.key.name == name)
            .unwrap();
        let status = status.clone();
        run_it(&mut snap.workloads[i], &status);
    }
    assert!(snap.workloads.iter().all(|w| w.phase() == "Running"));
    snap.workloads.push(workload("urgent", "acme", 1, 8, 5, 3));
    let p = plan(&snap, &PlanConfig::default());
    let stopped: Vec<&str> = p
        .actions
        .iter()
        .filter_map(|a| match a {
            Action::Stop { key, .. } => Some(key.name.as_str()),
            _ => None,
        })
        .collect();
    assert_eq!(stopped, ["open-low"]);
}

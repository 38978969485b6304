//! ComputeRegions → the region planner's catalog (pure: no kube, no I/O).
//!
//! The controller places a workload in two levels, as `zhisuan sim` does:
//! [`crate::regions::RegionChooser`] filters (inventory, residency, latency
//! SLO) and ranks the regions, then the placement engine tries each region's
//! nodes in that order. This module only maps plain snapshot data:
//! - [`region_catalog`]: ComputeRegions + nodes → a [`Catalog`] (catalog
//!   fields from the CR, inventory from the nodes its `nodeSelector` picks,
//!   latency from `latencyMs`) and each region's member nodes;
//! - [`job_spec`]: a workload → the planner's [`JobSpec`];
//! - [`region_status`]: what a ComputeRegion's status should say.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::OnceLock;

use crate::regions::catalog::{
    AcceleratorSpec, CatalogFile, InventoryEntry, Link, Region, ScoreWeights, UserRegion,
};
use crate::regions::plan::InventoryIndex;
use crate::regions::{Catalog, Side};
use crate::schedule::{Action, RegionCatalog, RegionFigures};

use super::crd::{ComputeRegionStatus, Condition};
use super::snapshot::{keys, NodeView, RegionView};
use super::validate::describe;

/// Board power assumed for a model the shipped catalog does not list, W.
pub const ASSUMED_POWER_W: f64 = 400.0;
/// Bandwidth given to `latencyMs` links (the planner only reads their RTT).
const LINK_GBPS: f64 = 10.0;

fn shipped_catalog() -> &'static Catalog {
    static CATALOG: OnceLock<Catalog> = OnceLock::new();
    CATALOG.get_or_init(Catalog::default_catalog)
}

/// Whether a node carries every label of a selector (empty selects all).
pub fn selects(selector: &BTreeMap<String, String>, node: &NodeView) -> bool {
    selector
        .iter()
        .all(|(k, v)| node.labels.iter().any(|(nk, nv)| nk == k && nv == v))
}

/// The member region a node view belongs to (`None`: the home cluster's).
fn member_of(node: &NodeView) -> Option<&str> {
    node.labels
        .iter()
        .find(|(k, _)| k == keys::MEMBER_CLUSTER)
        .map(|(_, v)| v.as_str())
}

/// Installed inventory of a set of nodes: one entry per (model, GPUs per node),
/// with the smallest node's CPU and memory (what every node of the block has).
pub fn inventory_of(nodes: &[&NodeView]) -> Vec<InventoryEntry> {
    let mut blocks: BTreeMap<(&str, u8), InventoryEntry> = BTreeMap::new();
    for n in nodes.iter().filter(|n| n.gpus > 0 && !n.model.is_empty()) {
        let e = blocks
            .entry((n.model.as_str(), n.gpus))
            .or_insert_with(|| InventoryEntry {
                model: n.model.clone(),
                nodes: 0,
                gpus_per_node: n.gpus as u32,
                cpu_milli: n.cpu_milli as u64,
                memory_mib: n.memory_mib,
                nodes_per_rack: None,
                racks_per_block: None,
            });
        e.nodes += 1;
        e.cpu_milli = e.cpu_milli.min(n.cpu_milli as u64);
        e.memory_mib = e.memory_mib.min(n.memory_mib);
    }
    blocks.into_values().collect()
}

/// Maps ComputeRegions and nodes to the planner's catalog. `None` when the
/// cluster has no ComputeRegion at all (then the `zhisuan.io/region` node
/// label decides, as before). Regions with invalid specs, or member-cluster
/// regions whose cluster is not usable now (`member_problem`), are left out
/// and listed in `excluded` with a reason. A member region's nodes are those
/// labelled [`keys::MEMBER_CLUSTER`] = its name (its own cluster's); a home
/// region never picks such a node.
pub fn region_catalog(
    regions: &[RegionView],
    nodes: &[NodeView],
    scoring: ScoreWeights,
) -> Option<RegionCatalog> {
    if regions.is_empty() {
        return None;
    }
    let (usable, mut excluded) = usable_regions(regions);
    if usable.is_empty() {
        return Some(nothing_placeable(excluded));
    }
    let members = members_of(&usable, nodes);
    let file = catalog_file(&usable, nodes, &members, scoring);
    match Catalog::from_file(file, "ComputeRegions") {
        Ok(catalog) => Some(RegionCatalog {
            inventory: InventoryIndex::new(&catalog),
            catalog,
            members,
            excluded,
        }),
        Err(e) => {
            // Specs are validated one by one; what is left is a
            // cross-region problem (too many regions, a name clash).
            for r in &usable {
                excluded.insert(
                    r.name.clone(),
                    ("InvalidCatalog".to_string(), e.to_string()),
                );
            }
            Some(nothing_placeable(excluded))
        }
    }
}

/// The regions that can take part, and why each of the others is left out
/// (reason, message): an invalid spec, or a member cluster that cannot be
/// reached.
fn usable_regions(
    regions: &[RegionView],
) -> (Vec<&RegionView>, BTreeMap<String, (String, String)>) {
    let mut excluded = BTreeMap::new();
    let mut usable: Vec<&RegionView> = Vec::new();
    for r in regions {
        if !r.errors.is_empty() {
            excluded.insert(
                r.name.clone(),
                ("InvalidSpec".to_string(), describe(&r.errors)),
            );
        } else if let (Some(_), Some((reason, message))) =
            (&r.spec.kubeconfig_secret_ref, &r.member_problem)
        {
            excluded.insert(r.name.clone(), (reason.clone(), message.clone()));
        } else {
            usable.push(r);
        }
    }
    (usable, excluded)
}

/// Each region's nodes (indices into `nodes`): those its selector picks in
/// its own cluster (a member cluster's, or the home cluster's). A node
/// belongs to the first region selecting it: never counted or placed on in
/// two regions when node selectors overlap.
fn members_of(usable: &[&RegionView], nodes: &[NodeView]) -> Vec<Vec<usize>> {
    let mut taken = vec![false; nodes.len()];
    usable
        .iter()
        .map(|r| {
            let picked: Vec<usize> = (0..nodes.len())
                .filter(|&i| {
                    !taken[i]
                        && selects(&r.spec.node_selector, &nodes[i])
                        && member_of(&nodes[i])
                            == r.spec
                                .kubeconfig_secret_ref
                                .as_ref()
                                .map(|_| r.name.as_str())
                })
                .collect();
            for &i in &picked {
                taken[i] = true;
            }
            picked
        })
        .collect()
}

/// The catalog the regions and their nodes make: one region each (with the
/// inventory its nodes give), the accelerator models the nodes have, and
/// the links and user places of the regions' `latencyMs`.
fn catalog_file(
    usable: &[&RegionView],
    nodes: &[NodeView],
    members: &[Vec<usize>],
    scoring: ScoreWeights,
) -> CatalogFile {
    let region_names: BTreeSet<&str> = usable.iter().map(|r| r.name.as_str()).collect();
    let mut models: BTreeMap<String, String> = BTreeMap::new();
    let mut catalog_regions = Vec::with_capacity(usable.len());
    let mut places: BTreeSet<String> = BTreeSet::new();
    let mut links = Vec::new();
    for (r, picked) in usable.iter().zip(members) {
        let picked_nodes: Vec<&NodeView> = picked.iter().map(|&i| &nodes[i]).collect();
        for n in &picked_nodes {
            if n.gpus > 0 && !n.model.is_empty() {
                models
                    .entry(n.model.clone())
                    .or_insert_with(|| n.vendor.clone());
            }
        }
        for (place, ms) in &r.spec.latency_ms {
            if !region_names.contains(place.as_str()) {
                places.insert(place.clone());
            }
            links.push(Link {
                a: r.name.clone(),
                b: place.clone(),
                rtt_ms: *ms,
                bandwidth_gbps: LINK_GBPS,
                source: format!("ComputeRegion {} spec.latencyMs", r.name),
            });
        }
        catalog_regions.push(catalog_region(r, &picked_nodes));
    }
    // A link to the same place twice (both regions list each other) is
    // harmless: the shortest path wins.
    CatalogFile {
        version: 1,
        sources: BTreeMap::new(),
        accelerators: accelerators(models),
        regions: catalog_regions,
        user_regions: places
            .into_iter()
            .map(|name| UserRegion {
                name,
                display: String::new(),
                source: String::new(),
            })
            .collect(),
        links,
        scoring: Some(scoring),
    }
}

/// A region of the catalog from its spec and its nodes' inventory.
fn catalog_region(r: &RegionView, picked_nodes: &[&NodeView]) -> Region {
    Region {
        name: r.name.clone(),
        display: r.spec.cluster.clone().unwrap_or_default(),
        hub: r.spec.hub.clone(),
        hub_display: String::new(),
        side: if r.spec.side == "east" {
            Side::East
        } else {
            Side::West
        },
        province: String::new(),
        pue: r.spec.pue,
        green_share: r.spec.green_share,
        green_profile: r.spec.green_profile.clone(),
        price_cny_per_kwh: r.spec.electricity_fen_per_kwh as f64 / 100.0,
        price_profile: r.spec.price_profile.clone(),
        grid_factor_kg_per_kwh: r.spec.grid_kg_co2_per_kwh,
        inventory: inventory_of(picked_nodes),
        sources: BTreeMap::new(),
        dedicated_to: r.spec.dedicated_to.clone(),
    }
}

/// The accelerator models (model → vendor) the nodes have, with the board
/// power the shipped catalog gives (or an assumed one, said so).
fn accelerators(models: BTreeMap<String, String>) -> Vec<AcceleratorSpec> {
    let shipped = shipped_catalog();
    models
        .into_iter()
        .map(|(model, vendor)| {
            let known = shipped.accelerators.iter().find(|a| a.model == model);
            AcceleratorSpec {
                power_w: known.map_or(ASSUMED_POWER_W, |a| a.power_w),
                source: known.map_or_else(
                    || format!("assumed: {ASSUMED_POWER_W} W (model not in the shipped catalog)"),
                    |a| a.source.clone(),
                ),
                vendor: if vendor.is_empty() {
                    known.map_or_else(String::new, |a| a.vendor.clone())
                } else {
                    vendor
                },
                model,
            }
        })
        .collect()
}

/// The regions as a catalog with none placeable, saying why each is left out.
fn nothing_placeable(excluded: BTreeMap<String, (String, String)>) -> RegionCatalog {
    RegionCatalog {
        catalog: empty_catalog(),
        inventory: InventoryIndex::new(&empty_catalog()),
        members: Vec::new(),
        excluded,
    }
}

/// A catalog with no region (nothing is placeable).
fn empty_catalog() -> Catalog {
    let mut c = shipped_catalog().clone();
    c.regions.clear();
    c.price_milli_fen_per_kwh.clear();
    c.user_regions.clear();
    c.links.clear();
    c
}

/// Status of a ComputeRegion: its nodes and GPUs, GPUs allocated (milli),
/// and whether it is usable (with the reason when not).
pub fn region_status(
    old: &ComputeRegionStatus,
    now: i64,
    nodes: i64,
    gpus: i64,
    milli_allocated: u64,
    excluded: Option<&(String, String)>,
) -> ComputeRegionStatus {
    let (status, reason, message) = match excluded {
        Some((reason, message)) => ("False", reason.clone(), message.clone()),
        None => (
            "True",
            "Usable".to_string(),
            format!("{nodes} node(s), {gpus} GPU(s) available for placement"),
        ),
    };
    let since = old
        .conditions
        .iter()
        .find(|c| c.type_ == "Usable" && c.status == status)
        .and_then(|c| c.last_transition_time.clone())
        .or_else(|| Some(crate::jobs::rfc3339(now)));
    ComputeRegionStatus {
        gpus,
        gpus_allocated: milli_allocated as f64 / 1000.0,
        nodes,
        conditions: vec![Condition {
            type_: "Usable".into(),
            status: status.into(),
            reason: reason.into(),
            message: message.into(),
            last_transition_time: since,
            observed_generation: None,
        }],
    }
}

/// The status each ComputeRegion should have after a pass, for those whose
/// status differs: its capacity from the plan's figures, or why it is left
/// out of placement.
pub fn region_statuses(
    views: &[RegionView],
    catalog: Option<&RegionCatalog>,
    figures: &[RegionFigures],
    now: i64,
) -> Vec<Action> {
    let Some(rc) = catalog else {
        return Vec::new();
    };
    let mut out = Vec::new();
    for rv in views {
        let excluded = rc.excluded.get(&rv.name);
        let (nodes, gpus, milli) = match (excluded, figures.iter().find(|f| f.name == rv.name)) {
            (None, Some(f)) => (f.nodes as i64, f.gpus as i64, f.milli),
            _ => (0, 0, 0),
        };
        let status = region_status(&rv.status, now, nodes, gpus, milli, excluded);
        if status != rv.status {
            out.push(Action::RegionStatus {
                name: rv.name.clone(),
                status,
            });
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::jobs::{Kind, WorkloadView};
    use crate::operator::crd::{ComputeRegionSpec, SecretKeyRef};
    use crate::regions::explain::Verdict;
    use crate::regions::plan::{RegionChooser, RegionPolicy};
    use crate::schedule::job_spec;

    fn node(name: &str, region: &str, model: &str, gpus: u8) -> NodeView {
        NodeView {
            name: name.into(),
            region: String::new(),
            model: model.into(),
            vendor: "nvidia".into(),
            gpus,
            unhealthy: vec![],
            cpu_milli: 64_000,
            memory_mib: 512 * 1024,
            labels: vec![("dc".into(), region.into())],
            schedulable: true,
            dedicated: None,
        }
    }

    fn region(name: &str, dc: &str, green: f64, latency: &[(&str, f64)]) -> RegionView {
        RegionView {
            name: name.into(),
            spec: ComputeRegionSpec {
                hub: name.into(),
                cluster: Some(format!("{name}-dc")),
                side: "west".into(),
                pue: 1.2,
                green_share: green,
                electricity_fen_per_kwh: 30,
                grid_kg_co2_per_kwh: 0.6,
                node_selector: [("dc".to_string(), dc.to_string())].into(),
                latency_ms: latency.iter().map(|(k, v)| (k.to_string(), *v)).collect(),
                kubeconfig_secret_ref: None,
                dedicated_to: None,
                green_profile: None,
                price_profile: None,
            },
            status: ComputeRegionStatus::default(),
            errors: vec![],
            member_problem: None,
        }
    }

    #[test]
    fn member_regions_pick_only_their_own_clusters_nodes() {
        let mut far_node = node("f1", "b", "H100", 8);
        far_node
            .labels
            .push((keys::MEMBER_CLUSTER.into(), "far".into()));
        let nodes = vec![node("h1", "b", "H100", 8), far_node];
        let mut far = region("far", "b", 0.9, &[]);
        far.spec.kubeconfig_secret_ref = Some(SecretKeyRef {
            name: "kc".into(),
            namespace: "zhisuan".into(),
            key: None,
        });
        let home = region("home", "b", 0.1, &[]);
        let rc = region_catalog(&[home, far], &nodes, ScoreWeights::default()).unwrap();
        assert!(rc.excluded.is_empty(), "{:?}", rc.excluded);
        // Same selector, but home sees only h1 and far only f1.
        assert_eq!(rc.members, vec![vec![0], vec![1]]);
    }

    #[test]
    fn a_node_selected_by_two_regions_belongs_to_the_first_only() {
        let nodes = vec![node("a1", "a", "H100", 8), node("b1", "b", "A10", 4)];
        let mut everything = region("all", "a", 0.3, &[]);
        everything.spec.node_selector.clear(); // selects every node
        let west = region("west", "b", 0.8, &[]);
        let rc = region_catalog(&[everything, west], &nodes, ScoreWeights::default()).unwrap();
        assert_eq!(rc.members, vec![vec![0, 1], vec![]]);
        assert_eq!(rc.catalog.region_gpus(0), 12);
        assert_eq!(rc.catalog.region_gpus(1), 0);
    }

    #[test]
    fn no_compute_regions_means_no_catalog() {
        assert!(
            region_catalog(&[], &[node("a", "x", "H100", 8)], ScoreWeights::default()).is_none()
        );
    }

    #[test]
    fn crs_and_nodes_make_the_catalog() {
        let nodes = vec![
            node("a1", "a", "H100", 8),
            node("a2", "a", "H100", 8),
            node("a3", "a", "A10", 4),
            node("b1", "b", "A10", 4),
            node("c1", "c", "H100", 8),
        ];
        let mut regions = vec![
            region("east", "a", 0.3, &[("beijing", 5.0)]),
            region("west", "b", 0.8, &[("beijing", 40.0)]),
        ];
        regions[1].spec.dedicated_to = Some("fujian-gov".into());
        // A solar site with a time-of-use tariff: both profiles reach the
        // planner (time shifting waits for their hours).
        let solar: Vec<f64> = (0..24)
            .map(|h| if (10..15).contains(&h) { 0.9 } else { 0.2 })
            .collect();
        let tou: Vec<f64> = (0..24).map(|h| if h < 7 { 0.4 } else { 1.2 }).collect();
        regions[1].spec.green_profile = Some(solar.clone());
        regions[1].spec.price_profile = Some(tou.clone());
        let rc = region_catalog(&regions, &nodes, ScoreWeights::default()).unwrap();
        let c = &rc.catalog;
        assert_eq!(c.regions.len(), 2);
        assert_eq!(c.regions[1].green_profile.as_deref(), Some(&solar[..]));
        assert_eq!(c.regions[1].price_profile.as_deref(), Some(&tou[..]));
        assert_eq!(c.regions[0].price_profile, None);
        // A region's reservation reaches the planner's catalog.
        assert_eq!(c.regions[0].dedicated_to, None);
        assert_eq!(c.regions[1].dedicated_to.as_deref(), Some("fujian-gov"));
        assert_eq!(rc.members, vec![vec![0, 1, 2], vec![3]]);
        let east = &c.regions[0];
        assert_eq!(east.display, "east-dc");
        assert_eq!(east.price_cny_per_kwh, 0.30);
        // Two blocks in east: 2 × H100×8 and 1 × A10×4 (sorted by model).
        let inv: Vec<(&str, u32, u32)> = east
            .inventory
            .iter()
            .map(|e| (e.model.as_str(), e.nodes, e.gpus_per_node))
            .collect();
        assert_eq!(inv, vec![("A10", 1, 4), ("H100", 2, 8)]);
        assert_eq!(c.region_gpus(0), 20);
        assert_eq!(c.region_gpus(1), 4);
        // A10 is in the shipped catalog (150 W); H100 is assumed.
        let power = |m: &str| {
            c.accelerators
                .iter()
                .find(|a| a.model == m)
                .unwrap()
                .power_w
        };
        assert_eq!(power("A10"), 150.0);
        assert_eq!(power("H100"), ASSUMED_POWER_W);
        let beijing = c.place_index("beijing").unwrap();
        assert_eq!(c.rtt_ms(beijing, 0), 5.0);
        assert_eq!(c.rtt_ms(beijing, 1), 40.0);
        assert!(rc.excluded.is_empty());
    }

    #[test]
    fn member_clusters_and_bad_specs_are_left_out_with_a_reason() {
        let nodes = vec![node("a1", "a", "H100", 8), node("b1", "b", "H100", 8)];
        let mut member = region("member", "b", 0.5, &[]);
        member.spec.kubeconfig_secret_ref = Some(SecretKeyRef {
            name: "kc".into(),
            namespace: "zhisuan".into(),
            key: None,
        });
        member.member_problem = Some((
            "KubeconfigSecretUnusable".into(),
            "Secret zhisuan/kc key \"kubeconfig\" (spec.kubeconfigSecretRef): the Secret does not exist".into(),
        ));
        let mut bad = region("bad", "a", 0.5, &[]);
        bad.errors = crate::operator::validate::validate_region(&ComputeRegionSpec {
            pue: 0.5,
            ..bad.spec.clone()
        });
        let rc = region_catalog(
            &[region("ok", "a", 0.5, &[]), member, bad],
            &nodes,
            ScoreWeights::default(),
        )
        .unwrap();
        assert_eq!(rc.catalog.regions.len(), 1);
        assert_eq!(rc.catalog.regions[0].name, "ok");
        assert_eq!(rc.excluded["member"].0, "KubeconfigSecretUnusable");
        assert!(rc.excluded["member"].1.contains("Secret zhisuan/kc key"));
        assert_eq!(rc.excluded["bad"].0, "InvalidSpec");
        assert!(
            rc.excluded["bad"].1.contains("spec.pue"),
            "{:?}",
            rc.excluded
        );
        let st = region_status(
            &ComputeRegionStatus::default(),
            0,
            1,
            8,
            0,
            rc.excluded.get("member"),
        );
        assert_eq!(st.conditions[0].status, "False");
        assert_eq!(st.conditions[0].reason, "KubeconfigSecretUnusable");
        let since = st.conditions[0].last_transition_time.clone();
        assert_eq!(since.as_deref(), Some("1970-01-01T00:00:00Z"));
        // Unchanged verdict later: the transition time stays.
        let later = region_status(&st, 500, 1, 8, 0, rc.excluded.get("member"));
        assert_eq!(later, st);
    }

    #[test]
    fn the_planner_ranks_the_catalog_and_honours_slo_and_residency() {
        let nodes = vec![node("a1", "a", "H100", 8), node("b1", "b", "H100", 8)];
        let regions = vec![
            region("near", "a", 0.1, &[("shanghai", 4.0)]),
            region("green", "b", 0.9, &[("shanghai", 30.0)]),
        ];
        let rc = region_catalog(&regions, &nodes, ScoreWeights::default()).unwrap();
        let mut w = crate::schedule::tests::workload("svc", "t", 1, 1, 0, 0);
        w.key.kind = Kind::Inference;
        let rank = |w: &WorkloadView| {
            let job = job_spec(w, &[]).resolve(&rc.catalog).unwrap();
            let mut chooser = RegionChooser::new(RegionPolicy::Green);
            let mut expl = Default::default();
            let mut order = Vec::new();
            chooser.rank(&rc.catalog, &rc.inventory, &job, 0, &mut expl, &mut order);
            (order, expl)
        };
        // No SLO: the greener region first.
        assert_eq!(rank(&w).0, vec![1, 0]);
        // A 10 ms SLO from shanghai removes the green (30 ms) region.
        w.user_region = Some("shanghai".into());
        w.latency_slo_ms = Some(10.0);
        let (order, expl) = rank(&w);
        assert_eq!(order, vec![0]);
        assert!(matches!(
            expl.candidates[1].verdict,
            Verdict::Removed {
                filter: crate::regions::explain::Filter::LatencySlo,
                ..
            }
        ));
        // Residency keeps the job out of the greener region.
        w.latency_slo_ms = None;
        w.residency = vec!["near".into()];
        assert_eq!(rank(&w).0, vec![0]);
    }
}

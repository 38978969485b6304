//! Dedicated zones (政务算力专区): nodes reserved to a tenant subtree (a
//! node's `dedicated` reservation, else its region's `dedicated_to`), and
//! tenants confined to such nodes (`dedicated_only` on a tenant or any
//! tenant above it). Both are hard filters on the nodes a workload may be
//! placed on, decided per *access class*: tenants that may use exactly the
//! same zones, and the same undedicated nodes, share one class, so the
//! pass's caches of refused shapes stay shared between them.
//!
//! A reservation applies to placements from now on (as a `NoSchedule`
//! taint does): a workload already running on a node that becomes reserved
//! keeps running.

use std::collections::{BTreeSet, HashMap};

use crate::jobs::NodeView;
use crate::placement::FxBuild;

use super::quota::Quotas;
use super::{RegionCatalog, Snapshot};

/// No zone (an engine node open to every unconfined tenant).
const OPEN: u32 = u32::MAX;

/// One reservation: the tenant whose subtree may use it, and its name.
struct Zone {
    tenant: String,
    label: String,
    /// Regions (names) where it has nodes.
    regions: BTreeSet<String>,
}

/// What the tenants of one class may use.
struct Class {
    /// Per zone: open to the class.
    open: Vec<bool>,
    /// The tenant whose `dedicated_only` confines the class, if any.
    confined_by: Option<String>,
    /// Per region (catalog index), a bit when any of its nodes is open.
    region_mask: Option<u64>,
}

/// The pass's zones and access classes.
pub(super) struct Zones {
    /// Per engine node: its zone (index into `zones`), or [`OPEN`].
    node_zone: Vec<u32>,
    zones: Vec<Zone>,
    /// Class 0: tenants no zone is reserved to, and not confined (every
    /// undedicated node, no dedicated one).
    classes: Vec<Class>,
    of_tenant: HashMap<String, u32, FxBuild>,
}

impl Zones {
    /// The zones of a snapshot's nodes (`slot`: each snapshot node's engine
    /// index; `nodes`: the engine's nodes with their regions).
    pub(super) fn new(snapshot: &Snapshot, slot: &[Option<u32>], nodes: &[NodeView]) -> Zones {
        let mut zones: Vec<Zone> = Vec::new();
        let mut by_key: HashMap<(String, String), u32, FxBuild> = HashMap::default();
        let mut node_zone = vec![OPEN; nodes.len()];
        let region_of = region_dedications(snapshot, slot, nodes.len());
        for (i, n) in nodes.iter().enumerate() {
            let (tenant, label) = match (&n.dedicated, &region_of[i]) {
                (Some(d), _) => (&d.tenant, d.zone.clone()),
                (None, Some((tenant, region))) => (*tenant, format!("region {region:?}")),
                (None, None) => continue,
            };
            let key = (tenant.clone(), label);
            let z = *by_key.entry(key.clone()).or_insert_with(|| {
                zones.push(Zone {
                    tenant: key.0,
                    label: key.1,
                    regions: BTreeSet::new(),
                });
                zones.len() as u32 - 1
            });
            let regions = &mut zones[z as usize].regions;
            if !regions.contains(&n.region) {
                regions.insert(n.region.clone());
            }
            node_zone[i] = z;
        }
        let unrestricted = Class {
            open: vec![false; zones.len()],
            confined_by: None,
            region_mask: None,
        };
        Zones {
            node_zone,
            zones,
            classes: vec![unrestricted],
            of_tenant: HashMap::default(),
        }
    }

    /// Whether no node is reserved and no tenant confined can matter: with
    /// no zone, only confinement could filter, and [`Self::class_of`]
    /// finds that per tenant.
    fn no_zones(&self) -> bool {
        self.zones.is_empty()
    }

    /// The access class of a tenant (its quota tree from `quotas`): the
    /// zones reserved to it or to a tenant above it, and whether it or a
    /// tenant above it is confined to zones.
    pub(super) fn class_of(&mut self, tenant: &str, quotas: &Quotas) -> u32 {
        if let Some(&c) = self.of_tenant.get(tenant) {
            return c;
        }
        let chain = quotas.chain(tenant).unwrap_or_default();
        let mut above: Vec<&str> = chain.iter().map(|q| q.spec.tenant.as_str()).collect();
        if above.is_empty() {
            above.push(tenant);
        }
        let confined_by = chain
            .iter()
            .find(|q| q.spec.dedicated_only)
            .map(|q| q.spec.tenant.clone());
        let open: Vec<bool> = self
            .zones
            .iter()
            .map(|z| above.contains(&z.tenant.as_str()))
            .collect();
        let class = match self
            .classes
            .iter()
            .position(|c| c.open == open && c.confined_by == confined_by)
        {
            Some(c) => c as u32,
            None => {
                self.classes.push(Class {
                    open,
                    confined_by,
                    region_mask: None,
                });
                self.classes.len() as u32 - 1
            }
        };
        self.of_tenant.insert(tenant.to_string(), class);
        class
    }

    /// Whether tenants of `class` may be placed on engine node `node`.
    #[inline]
    pub(super) fn open(&self, class: u32, node: u32) -> bool {
        let c = &self.classes[class as usize];
        match self.node_zone[node as usize] {
            OPEN => c.confined_by.is_none(),
            z => c.open[z as usize],
        }
    }

    /// Whether the class may use every node (nothing to filter).
    pub(super) fn everywhere(&self, class: u32) -> bool {
        let c = &self.classes[class as usize];
        c.confined_by.is_none() && c.open.iter().all(|&o| o)
    }

    /// The catalog regions with a node open to the class (bit r = region
    /// r), for region choice's dedicated-zone filter.
    pub(super) fn region_mask(
        &mut self,
        class: u32,
        rc: &RegionCatalog,
        nodes: &[NodeView],
    ) -> u64 {
        if self.no_zones() && self.classes[class as usize].confined_by.is_none() {
            return u64::MAX;
        }
        if let Some(mask) = self.classes[class as usize].region_mask {
            return mask;
        }
        let mut mask = 0u64;
        for (i, n) in nodes.iter().enumerate() {
            if self.open(class, i as u32) {
                if let Some(r) = rc.catalog.region_index(&n.region) {
                    mask |= 1u64 << r;
                }
            }
        }
        self.classes[class as usize].region_mask = Some(mask);
        mask
    }

    /// Why nodes in `regions` are closed to the class, for a refusal's
    /// message (empty when none is): the zones there reserved to other
    /// subtrees, and the confinement with the zones it leaves open.
    pub(super) fn note(&self, class: u32, regions: &[String]) -> String {
        let c = &self.classes[class as usize];
        let here = |z: &Zone| regions.iter().any(|r| z.regions.contains(r));
        let closed: Vec<String> = self
            .zones
            .iter()
            .zip(&c.open)
            .filter(|(z, open)| !**open && here(z))
            .map(|(z, _)| format!("{} is reserved to tenant subtree {:?}", z.label, z.tenant))
            .collect();
        let mut out = String::new();
        if !closed.is_empty() {
            out.push_str(&format!(" Dedicated zones: {}.", list(&closed)));
        }
        if let Some(by) = &c.confined_by {
            let open: Vec<String> = self
                .zones
                .iter()
                .zip(&c.open)
                .filter(|(_, open)| **open)
                .map(|(z, _)| z.label.clone())
                .collect();
            let open = if open.is_empty() {
                "none exists".to_string()
            } else {
                format!("open to it: {}", list(&open))
            };
            out.push_str(&format!(
                " Confined to dedicated zones by TenantQuota spec.dedicatedOnly of tenant {by:?} ({open})."
            ));
        }
        out
    }
}

/// At most four items, then how many more.
fn list(items: &[String]) -> String {
    const SHOWN: usize = 4;
    let mut out = items[..items.len().min(SHOWN)].join("; ");
    if items.len() > SHOWN {
        out.push_str(&format!("; and {} more", items.len() - SHOWN));
    }
    out
}

/// Per engine node, the reservation of its catalog region (tenant, region).
fn region_dedications<'s>(
    snapshot: &'s Snapshot,
    slot: &[Option<u32>],
    engine_nodes: usize,
) -> Vec<Option<(&'s String, &'s str)>> {
    let mut out = vec![None; engine_nodes];
    let Some(rc) = &snapshot.regions else {
        return out;
    };
    for (r, members) in rc.members.iter().enumerate() {
        let region = &rc.catalog.regions[r];
        let Some(tenant) = region.dedicated_to.as_ref() else {
            continue;
        };
        for &m in members {
            if let Some(ci) = slot.get(m).copied().flatten() {
                out[ci as usize] = Some((tenant, region.name.as_str()));
            }
        }
    }
    out
}

//! A region's nodes as the placement engine sees them: the catalog's
//! inventory blocks as named nodes ([`node_specs`]), and the tie-break order
//! that sends equal-scoring placements to the GPUs drawing the least power
//! ([`energy_tie_order`]). The scheduler (`crate::schedule`) places on them.

use super::catalog::Catalog;
use crate::error::InputError;
use crate::placement::topology::{BLOCK_LABEL, RACK_LABEL};
use crate::placement::{Cluster, NodeSpec};

/// Node label carrying the region (same key as the operator's node label).
pub const REGION_LABEL: &str = "zhisuan.io/region";

/// The engines' tie-break order: nodes whose GPUs draw the least power
/// first, seeded order within equal power. Node scores tie often (an empty
/// cluster: every node), and a tie then decides which GPU model a
/// model-agnostic job lands on (70 W … 400 W in the default catalog); with a
/// purely random order the energy, cost and carbon of the same region choice
/// changed by up to a quarter from seed to seed.
pub fn energy_tie_order(catalog: &Catalog, cluster: &Cluster, seed: u64) -> Vec<u32> {
    let power = |n: u32| {
        catalog
            .power_w(cluster.models().name(cluster.model(n)))
            .unwrap_or(f64::INFINITY)
    };
    let mix = |n: u32| {
        // splitmix64 of (seed, node): a seeded order within equal power.
        let mut z = seed ^ (n as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15);
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    };
    let mut order: Vec<u32> = (0..cluster.len() as u32).collect();
    order.sort_by(|&a, &b| power(a).total_cmp(&power(b)).then(mix(a).cmp(&mix(b))));
    order
}

/// The nodes of a region, from its inventory: named `<region>-<model>-<n>`,
/// labelled with the region and, where the inventory gives
/// `nodes_per_rack` (and `racks_per_block`), with their rack (and block):
/// racks are numbered across the region's inventory entries.
pub fn node_specs(catalog: &Catalog, region: usize) -> Result<Vec<NodeSpec>, InputError> {
    let reg = &catalog.regions[region];
    let mut specs = Vec::new();
    let mut first_rack = 0;
    for inv in &reg.inventory {
        let cpu_milli = u32::try_from(inv.cpu_milli).map_err(|_| {
            InputError::new(format!(
                "region {}: inventory cpu_milli {} is too large",
                reg.name, inv.cpu_milli
            ))
        })?;
        for i in 0..inv.nodes {
            let mut labels = vec![(REGION_LABEL.to_string(), reg.name.clone())];
            if let Some(per_rack) = inv.nodes_per_rack {
                let rack = first_rack + i / per_rack;
                labels.push((RACK_LABEL.into(), format!("{}-rack{rack:03}", reg.name)));
                if let Some(per_block) = inv.racks_per_block {
                    let block = rack / per_block;
                    labels.push((BLOCK_LABEL.into(), format!("{}-block{block:02}", reg.name)));
                }
            }
            specs.push(NodeSpec {
                name: format!(
                    "{}-{}-{:03}",
                    reg.name,
                    inv.model.to_ascii_lowercase(),
                    specs.len()
                ),
                cpu_milli,
                memory_mib: inv.memory_mib,
                gpus: inv.gpus_per_node as u8,
                model: inv.model.clone(),
                labels,
            });
        }
        if let Some(per_rack) = inv.nodes_per_rack {
            first_rack += inv.nodes.div_ceil(per_rack);
        }
    }
    Ok(specs)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::placement::{Engine, Policy, Request};

    /// One region with 70 W and 400 W GPUs.
    const CATALOG: &str = r#"
accelerators: [{model: A100, vendor: nvidia, power_w: 400}, {model: T4, vendor: nvidia, power_w: 70}]
regions:
  - {name: west, hub: w, side: west, pue: 1.1, green_share: 0.6, price_cny_per_kwh: 0.3,
     grid_factor_kg_per_kwh: 0.6, inventory: [
       {model: A100, nodes: 6, gpus_per_node: 8, cpu_milli: 96000, memory_mib: 393216},
       {model: T4, nodes: 6, gpus_per_node: 8, cpu_milli: 96000, memory_mib: 393216}]}
user_regions: []
links: []
"#;

    #[test]
    fn ties_go_to_the_least_power_gpus_whatever_the_seed() {
        let catalog = Catalog::from_yaml(CATALOG, "test.yaml").unwrap();
        let cluster = Cluster::from_specs(&node_specs(&catalog, 0).unwrap()).unwrap();
        let one = Request::whole(8000, 16384, 1);
        for policy in [Policy::default(), Policy::Fgd, Policy::BestFit] {
            for seed in 0..16 {
                let mut engine = Engine::new(cluster.clone(), policy, seed);
                let order = energy_tie_order(&catalog, engine.cluster(), seed);
                engine.set_tie_order(&order).unwrap();
                engine.set_workload([&one]);
                let d = engine.place(&one).unwrap();
                let c = engine.cluster();
                assert_eq!(
                    c.models().name(c.model(d.node)),
                    "T4",
                    "{policy} seed {seed}: an empty region's tie goes to the 70 W GPUs"
                );
            }
        }
    }

    #[test]
    fn inventory_racks_and_blocks_become_node_labels_numbered_across_entries() {
        let yaml = CATALOG.replace(
            "{model: A100, nodes: 6, gpus_per_node: 8, cpu_milli: 96000, memory_mib: 393216}",
            "{model: A100, nodes: 6, gpus_per_node: 8, cpu_milli: 96000, memory_mib: 393216, nodes_per_rack: 4, racks_per_block: 2}",
        )
        .replace(
            "{model: T4, nodes: 6, gpus_per_node: 8, cpu_milli: 96000, memory_mib: 393216}",
            "{model: T4, nodes: 6, gpus_per_node: 8, cpu_milli: 96000, memory_mib: 393216, nodes_per_rack: 3, racks_per_block: 2}",
        );
        let catalog = Catalog::from_yaml(&yaml, "test.yaml").unwrap();
        let label = |s: &NodeSpec, k: &str| {
            s.labels
                .iter()
                .find(|(key, _)| key == k)
                .map(|(_, v)| v.clone())
                .unwrap()
        };
        let specs = node_specs(&catalog, 0).unwrap();
        let racks: Vec<String> = specs.iter().map(|s| label(s, RACK_LABEL)).collect();
        let blocks: Vec<String> = specs.iter().map(|s| label(s, BLOCK_LABEL)).collect();
        // A100: 4 + 2 nodes in racks 0, 1; T4: 3 + 3 in racks 2, 3.
        let r = |i: u32| format!("west-rack{i:03}");
        assert_eq!(racks, [0, 0, 0, 0, 1, 1, 2, 2, 2, 3, 3, 3].map(r).to_vec());
        let b = |i: u32| format!("west-block{i:02}");
        assert_eq!(blocks, [0, 0, 0, 0, 0, 0, 1, 1, 1, 1, 1, 1].map(b).to_vec());
        // Racks of zero nodes are refused with the field named.
        let bad = CATALOG.replace(
            "memory_mib: 393216}",
            "memory_mib: 393216, nodes_per_rack: 0}",
        );
        let e = Catalog::from_yaml(&bad, "test.yaml")
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("inventory[0]") && e.contains("nodes_per_rack"),
            "{e}"
        );
    }
}

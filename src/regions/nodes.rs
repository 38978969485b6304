//! A region's nodes as the placement engine sees them: the catalog's
//! inventory blocks as named nodes ([`node_specs`]), and the tie-break order
//! that sends equal-scoring placements to the GPUs drawing the least power
//! ([`energy_tie_order`]). The scheduler (`crate::schedule`) places on them.

use super::catalog::Catalog;
use crate::error::InputError;
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
/// labelled with the region.
pub fn node_specs(catalog: &Catalog, region: usize) -> Result<Vec<NodeSpec>, InputError> {
    let reg = &catalog.regions[region];
    let mut specs = Vec::new();
    for inv in &reg.inventory {
        let cpu_milli = u32::try_from(inv.cpu_milli).map_err(|_| {
            InputError::new(format!(
                "region {}: inventory cpu_milli {} is too large",
                reg.name, inv.cpu_milli
            ))
        })?;
        for _ in 0..inv.nodes {
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
                labels: vec![(REGION_LABEL.to_string(), reg.name.clone())],
            });
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
}

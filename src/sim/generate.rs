//! Seeded catalogs and workloads the region policies were never tuned on
//! (issue #18): `zhisuan sim --generated SEED` runs one, and
//! `tests/regions_generalise.rs` checks the default policy across many.
//!
//! A pair varies everything region choice reads: 3–7 regions, east or west,
//! PUE, a flat or solar-shaped green share, electricity price (sometimes a
//! cheap eastern hub, sometimes a dear western one), grid factor, distances
//! to 3–6 user regions, 2–5 accelerator models (one of them scarce: in one
//! region only; sometimes an NPU), installed nodes; and a workload of
//! training jobs (some gangs of whole nodes), batch and online inference
//! (latency SLOs), residency, pinned models, at a load from light to
//! saturated. Every job can run somewhere: its shape fits an inventory
//! entry of a region it may use, and its SLO is met by some region holding
//! a model it may use.

use std::collections::BTreeMap;

use crate::regions::catalog::{
    AcceleratorSpec, CatalogFile, InventoryEntry, Link, Region, Side, UserRegion,
};
use crate::regions::job::JobKind;
use crate::regions::Catalog;

use super::workload::WorkloadRow;

/// A generated catalog (as its file, for `--write-generated`) and workload.
pub struct Generated {
    pub catalog_file: CatalogFile,
    pub catalog: Catalog,
    pub rows: Vec<WorkloadRow>,
    /// Offered GPU load as a share of the installed GPUs.
    pub load: f64,
    /// The load level it was drawn around (±15%): one of [`LOAD_LEVELS`].
    pub load_level: f64,
}

/// The offered loads the seeds cycle through, light to saturated.
pub const LOAD_LEVELS: [f64; 4] = [0.3, 0.6, 0.9, 1.2];

/// splitmix64: the seeded stream of the generator (and of the benches that
/// draw workloads).
pub struct Rng(pub u64);

impl Rng {
    pub fn draw(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }
    pub fn unit(&mut self) -> f64 {
        (self.draw() >> 11) as f64 / (1u64 << 53) as f64
    }
    pub fn range(&mut self, lo: f64, hi: f64) -> f64 {
        lo + (hi - lo) * self.unit()
    }
    /// lo..=hi.
    pub fn int(&mut self, lo: u32, hi: u32) -> u32 {
        lo + (self.draw() % u64::from(hi - lo + 1)) as u32
    }
    pub fn chance(&mut self, p: f64) -> bool {
        self.unit() < p
    }
    pub fn pick<'a, T>(&mut self, items: &'a [T]) -> &'a T {
        &items[(self.draw() % items.len() as u64) as usize]
    }
    pub fn exp(&mut self, mean: f64) -> f64 {
        -mean * (1.0 - self.unit()).ln()
    }
}

/// (model, vendor, board W, GPUs per node).
const MODELS: [(&str, &str, f64, u32); 5] = [
    ("H100", "nvidia", 700.0, 8),
    ("A100", "nvidia", 400.0, 8),
    ("L40S", "nvidia", 350.0, 8),
    ("T4", "nvidia", 70.0, 4),
    ("Ascend910B", "huawei", 400.0, 8),
];

/// Jobs per generated workload.
pub const JOBS: usize = 400;

fn round(x: f64, digits: i32) -> f64 {
    let f = 10f64.powi(digits);
    (x * f).round() / f
}

/// The catalog of seed `seed`.
fn catalog_file(rng: &mut Rng) -> CatalogFile {
    let (models, scarce) = pick_models(rng);
    let n = rng.int(3, 7) as usize;
    let users = rng.int(3, 6) as usize;
    // Places on a 100 × 100 map: users and eastern regions on the left,
    // western regions on the right.
    let user_at: Vec<(f64, f64)> = (0..users)
        .map(|_| (rng.range(0.0, 35.0), rng.range(0.0, 100.0)))
        .collect();
    let mut regions = Vec::with_capacity(n);
    let mut region_at = Vec::with_capacity(n);
    let scarce_home = rng.int(0, n as u32 - 1) as usize;
    for r in 0..n {
        let side = match r {
            0 => Side::East,
            1 => Side::West,
            _ if rng.chance(0.5) => Side::East,
            _ => Side::West,
        };
        let (region, at) = region(rng, r, side, &models, scarce, r == scarce_home);
        regions.push(region);
        region_at.push(at);
    }
    let links = links(&user_at, &region_at, &regions);
    CatalogFile {
        version: 1,
        sources: BTreeMap::new(),
        accelerators: models
            .iter()
            .map(|&m| AcceleratorSpec {
                model: MODELS[m].0.into(),
                vendor: MODELS[m].1.into(),
                power_w: MODELS[m].2,
                source: "assumed: generated".into(),
            })
            .collect(),
        regions,
        user_regions: (0..users)
            .map(|u| UserRegion {
                name: format!("u{u}"),
                display: String::new(),
                source: String::new(),
            })
            .collect(),
        links,
        scoring: None,
    }
}

/// Two to four NVIDIA models, sometimes the NPU (indices into [`MODELS`]),
/// and the scarce one (installed in one region only): the last.
fn pick_models(rng: &mut Rng) -> (Vec<usize>, usize) {
    let mut models: Vec<usize> = (0..4).collect();
    for i in (1..models.len()).rev() {
        models.swap(i, (rng.draw() % (i as u64 + 1)) as usize);
    }
    models.truncate(rng.int(2, 4) as usize);
    if rng.chance(0.3) {
        models.push(4);
    }
    let scarce = *models.last().expect("two models or more");
    (models, scarce)
}

/// Region `r` on `side` and its place on the map: PUE, green share (flat
/// or solar-shaped), price and grid factor drawn for its side, and an
/// inventory of some of `models` (the scarce one only in its home).
fn region(
    rng: &mut Rng,
    r: usize,
    side: Side,
    models: &[usize],
    scarce: usize,
    scarce_home: bool,
) -> (Region, (f64, f64)) {
    let east = side == Side::East;
    let at = if east {
        (rng.range(0.0, 40.0), rng.range(0.0, 100.0))
    } else {
        (rng.range(55.0, 100.0), rng.range(0.0, 100.0))
    };
    let (pue, green, price) = if east {
        let price = if rng.chance(0.25) {
            rng.range(0.25, 0.4) // a cheap eastern hub
        } else {
            rng.range(0.45, 0.95)
        };
        (rng.range(1.15, 1.5), rng.range(0.05, 0.45), price)
    } else {
        let price = if rng.chance(0.2) {
            rng.range(0.55, 0.8) // a dear western one
        } else {
            rng.range(0.22, 0.5)
        };
        (rng.range(1.08, 1.3), rng.range(0.3, 0.95), price)
    };
    let green_profile = rng.chance(0.4).then(|| solar_profile(rng, green));
    let inventory = inventory(rng, models, scarce, scarce_home);
    let region = Region {
        name: format!("r{r}-{}", if east { "east" } else { "west" }),
        display: String::new(),
        hub: format!("hub{r}"),
        hub_display: String::new(),
        side,
        province: String::new(),
        pue: round(pue, 3),
        green_share: round(green, 3),
        green_profile,
        price_profile: None,
        price_cny_per_kwh: round(price, 3),
        grid_factor_kg_per_kwh: round(rng.range(0.35, 0.95), 3),
        inventory,
        sources: BTreeMap::from([("all".to_string(), "assumed: generated".to_string())]),
        dedicated_to: None,
    };
    (region, at)
}

/// Solar: the day's mean stays near `green`, noon is greener.
fn solar_profile(rng: &mut Rng, green: f64) -> Vec<f64> {
    let amp = rng.range(0.1, 0.5);
    (0..24)
        .map(|h| {
            let sun = ((h as f64 - 6.0) / 12.0 * std::f64::consts::PI)
                .sin()
                .max(0.0);
            round((green - amp * 0.32 + amp * sun).clamp(0.0, 1.0), 3)
        })
        .collect()
}

/// Some of the models that are not scarce (at least one), the scarce one
/// in its home, 3–24 nodes each.
fn inventory(
    rng: &mut Rng,
    models: &[usize],
    scarce: usize,
    scarce_home: bool,
) -> Vec<InventoryEntry> {
    let mut here: Vec<usize> = models.iter().copied().filter(|&m| m != scarce).collect();
    here.retain(|_| rng.chance(0.7));
    if here.is_empty() {
        here.push(models[0]);
    }
    if scarce_home {
        here.push(scarce);
    }
    here.into_iter()
        .map(|m| {
            let (model, _, _, gpus) = MODELS[m];
            InventoryEntry {
                model: model.into(),
                nodes: rng.int(3, 24),
                gpus_per_node: gpus,
                cpu_milli: 128_000,
                memory_mib: 1_048_576,
                nodes_per_rack: None,
                racks_per_block: None,
            }
        })
        .collect()
}

/// A link from every user place to every region, its round trip growing
/// with the distance on the map.
fn links(user_at: &[(f64, f64)], region_at: &[(f64, f64)], regions: &[Region]) -> Vec<Link> {
    let dist = |a: (f64, f64), b: (f64, f64)| ((a.0 - b.0).powi(2) + (a.1 - b.1).powi(2)).sqrt();
    let mut links = Vec::new();
    for (u, &ua) in user_at.iter().enumerate() {
        for (r, &ra) in region_at.iter().enumerate() {
            links.push(Link {
                a: format!("u{u}"),
                b: regions[r].name.clone(),
                rtt_ms: round(1.0 + 0.5 * dist(ua, ra), 1),
                bandwidth_gbps: 100.0,
                source: String::new(),
            });
        }
    }
    links
}

/// One job's shape before its arrival time is known.
struct Shape {
    row: WorkloadRow,
    gpus: f64,
}

/// A job anchored on an inventory entry it fits (so it can run somewhere).
fn job(rng: &mut Rng, file: &CatalogFile, catalog: &Catalog, i: usize) -> Shape {
    // The anchor: a region and one of its inventory entries.
    let r = (rng.draw() % file.regions.len() as u64) as usize;
    let region = &file.regions[r];
    let entry = rng.pick(&region.inventory);
    let vendor = file
        .accelerators
        .iter()
        .find(|a| a.model == entry.model)
        .map_or("nvidia", |a| a.vendor.as_str());
    let npu = vendor != "nvidia";
    // NPU jobs and a quarter of the rest name their model.
    let pinned = npu || rng.chance(0.25);
    let user = rng.int(0, file.user_regions.len() as u32 - 1);
    let roll = rng.unit();
    let kind = if roll < 0.45 {
        JobKind::Training
    } else if roll < 0.75 {
        JobKind::BatchInference
    } else {
        JobKind::OnlineInference
    };
    let (replicas, gpus_per_replica, gpu_milli) = match kind {
        JobKind::Training if rng.chance(0.3) => {
            // A gang of whole nodes, no larger than the anchor block.
            let most = entry.nodes.min(6);
            (rng.int(2, most.max(2)), entry.gpus_per_node, 0)
        }
        JobKind::Training => (1, *rng.pick(&[1, 2, 4, entry.gpus_per_node]), 0),
        JobKind::BatchInference => (1, 0, *rng.pick(&[250, 500])),
        JobKind::OnlineInference => {
            if rng.chance(0.5) {
                (1, 1, 0)
            } else {
                (1, 0, 500)
            }
        }
    };
    let gpus_per_replica = gpus_per_replica.min(entry.gpus_per_node);
    // Residency: a tenth of batch work must stay in the anchor region
    // (sometimes with a second region).
    let mut residency = String::new();
    if kind != JobKind::OnlineInference && rng.chance(0.1) {
        residency = region.name.clone();
        if rng.chance(0.5) {
            let other = rng.pick(&file.regions);
            if other.name != region.name {
                residency = format!("{}|{}", region.name, other.name);
            }
        }
    }
    // Online inference: an SLO the anchor region meets from the user, with
    // some slack (1.2–3×); tight ones keep it in the east.
    let latency_slo_ms = (kind == JobKind::OnlineInference).then(|| {
        let place = catalog
            .place_index(&format!("u{user}"))
            .expect("generated user region");
        let rtt = catalog.rtt_ms(place, r);
        (rtt * rng.range(1.2, 3.0)).ceil() + 2.0
    });
    let milli = if gpu_milli > 0 {
        gpu_milli as f64
    } else {
        gpus_per_replica as f64 * 1000.0
    };
    Shape {
        gpus: replicas as f64 * milli / 1000.0,
        row: WorkloadRow {
            name: format!("g{i:04}"),
            tenant: format!("t{}", rng.int(0, 3)),
            kind: kind.name().into(),
            arrival_s: 0,
            duration_s: 0,
            replicas,
            gpus_per_replica,
            gpu_milli,
            cpu_milli: 4000,
            memory_mib: 16_384,
            gpu_models: if pinned {
                entry.model.clone()
            } else {
                String::new()
            },
            user_region: format!("u{user}"),
            latency_slo_ms,
            residency,
            accelerator_vendor: if npu { vendor.into() } else { String::new() },
            mixed_models: false,
            topology: String::new(),
            max_delay_s: None,
        },
    }
}

/// The catalog and workload of `seed`.
pub fn generate(seed: u64) -> Generated {
    let mut rng = Rng(seed ^ 0x005E_ED0F_2E61_0115);
    let file = catalog_file(&mut rng);
    let yaml = serde_yaml::to_string(&file).expect("a catalog serialises");
    let catalog = Catalog::from_yaml(&yaml, &format!("generated catalog {seed}"))
        .expect("generated catalogs are valid");
    // Load from light to saturated, spread over the seeds.
    let load_level = LOAD_LEVELS[(seed % LOAD_LEVELS.len() as u64) as usize];
    let load = load_level * rng.range(0.85, 1.15);
    let mean_duration = rng.range(1800.0, 7200.0);
    let mut shapes: Vec<Shape> = (0..JOBS)
        .map(|i| job(&mut rng, &file, &catalog, i))
        .collect();
    let installed: f64 = file
        .regions
        .iter()
        .flat_map(|r| &r.inventory)
        .map(|e| (e.nodes * e.gpus_per_node) as f64)
        .sum();
    let mean_gpus = shapes.iter().map(|s| s.gpus).sum::<f64>() / shapes.len() as f64;
    let rate = load * installed / (mean_gpus * mean_duration);
    let mut t = 0.0;
    for s in &mut shapes {
        t += rng.exp(1.0 / rate);
        s.row.arrival_s = t as i64;
        s.row.duration_s = (rng.exp(mean_duration) as i64).max(60);
    }
    Generated {
        catalog_file: file,
        catalog,
        rows: shapes.into_iter().map(|s| s.row).collect(),
        load,
        load_level,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_generated_job_is_valid_and_the_seed_decides_everything() {
        for seed in 0..30 {
            let g = generate(seed);
            assert_eq!(g.rows.len(), JOBS);
            for row in &g.rows {
                let spec = row.to_spec().unwrap();
                spec.resolve(&g.catalog)
                    .unwrap_or_else(|e| panic!("seed {seed}, {}: {e}", row.name));
            }
            let again = generate(seed);
            assert_eq!(again.rows, g.rows);
        }
        assert_ne!(generate(1).rows, generate(2).rows);
    }
}

//! The region catalog: hubs / data-centre clusters with their energy figures,
//! the places users sit, and the network between them (a petgraph graph whose
//! shortest paths give round-trip latency and bottleneck bandwidth).
//!
//! Loaded from a YAML file (`data/regions/catalog.yaml` ships the 8 hubs / 10
//! clusters of 东数西算) and validated at load: a bad figure is an
//! [`InputError`] naming the file, the entry and the rule broken.

mod checks;

use checks::input_err;
pub use checks::{green_profile as check_green_profile, price_profile as check_price_profile};

use super::cost::day_mean;
use crate::error::InputError;
use petgraph::graph::{NodeIndex, UnGraph};
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, HashMap};
use std::path::Path;

/// Path of the shipped default catalog, relative to the repository root.
pub const DEFAULT_CATALOG_PATH: &str = "data/regions/catalog.yaml";
/// The shipped catalog, embedded so the binary works from any directory.
pub const DEFAULT_CATALOG_YAML: &str = include_str!("../../data/regions/catalog.yaml");

/// Fen-thousandths: 1 CNY = 100 fen = 100_000 milli-fen. Energy prices and
/// energy costs are kept in this unit so sums stay exact integers.
pub const MILLI_FEN_PER_CNY: i64 = 100_000;

/// East (demand side, near users) or west (energy side, green power).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Side {
    East,
    West,
}

/// One accelerator model's expected board power (for the cost model).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AcceleratorSpec {
    pub model: String,
    /// nvidia | huawei | hygon | …
    pub vendor: String,
    /// Expected board power while busy, watts.
    pub power_w: f64,
    #[serde(default)]
    pub source: String,
}

/// A block of identical nodes installed in a region.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct InventoryEntry {
    pub model: String,
    pub nodes: u32,
    pub gpus_per_node: u32,
    pub cpu_milli: u64,
    pub memory_mib: u64,
    /// Network topology of the block (simulated regions): this many nodes
    /// share a rack (labels `topology.zhisuan.io/rack`), absent = no racks.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub nodes_per_rack: Option<u32>,
    /// This many racks share a block (`topology.zhisuan.io/block`; needs
    /// `nodes_per_rack`), absent = no blocks.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub racks_per_block: Option<u32>,
}

/// One data-centre cluster (a placement region).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Region {
    /// Stable ASCII id (`zhongwei`).
    pub name: String,
    /// Name for people (`中卫`).
    #[serde(default)]
    pub display: String,
    /// Hub id (`ningxia`) and its display name (`宁夏`).
    pub hub: String,
    #[serde(default)]
    pub hub_display: String,
    pub side: Side,
    #[serde(default)]
    pub province: String,
    /// Facility energy / IT energy, ≥ 1.0.
    pub pue: f64,
    /// Share of the facility's electricity covered by green-power contracts, 0..1.
    pub green_share: f64,
    /// Optional hour-of-day profile (China Standard Time, 24 values, 0..1)
    /// that replaces `green_share` when present.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub green_profile: Option<Vec<f64>>,
    /// Electricity price, CNY per kWh (facility energy): the flat price,
    /// or the time-of-use tariff's flat-period price (平段) with a profile.
    pub price_cny_per_kwh: f64,
    /// Optional time-of-use tariff (峰谷分时电价): 24 multipliers of
    /// `price_cny_per_kwh`, one per hour of day (China Standard Time), e.g.
    /// 0.4 in valley hours, 1.0 flat, 1.6 at the peak; each in (0, 10].
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub price_profile: Option<Vec<f64>>,
    /// Grid emission factor for the non-green share, kg CO2 per kWh.
    pub grid_factor_kg_per_kwh: f64,
    #[serde(default)]
    pub inventory: Vec<InventoryEntry>,
    /// Where each figure comes from (a citation or "assumed: why").
    #[serde(default)]
    pub sources: BTreeMap<String, String>,
    /// The tenant subtree the whole region is reserved to (a dedicated
    /// zone); absent = open to every tenant.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dedicated_to: Option<String>,
}

/// A place where users (or their data) sit; not a placement target.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UserRegion {
    pub name: String,
    #[serde(default)]
    pub display: String,
    #[serde(default)]
    pub source: String,
}

/// A network link between two places (regions or user regions).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Link {
    pub a: String,
    pub b: String,
    pub rtt_ms: f64,
    pub bandwidth_gbps: f64,
    #[serde(default)]
    pub source: String,
}

/// Weights of the default policy's score (lower score wins). Each term is
/// normalised by the best candidate's value, so weights are unit-free.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct ScoreWeights {
    pub carbon: f64,
    pub cost: f64,
    pub latency: f64,
    /// Regions whose score is within this fraction of the best one count as
    /// equally good; among them the job goes where it packs best (the
    /// placement engine's fragmentation score), so regions of one kind (the
    /// cheap green western hubs) fill evenly instead of one fragmenting
    /// first. 0 turns it off (strict score order). See docs/regions.md.
    #[serde(default = "default_pack_band")]
    pub pack_band: f64,
    /// Time shifting's share of the `cost` weight (`regions::shift`): at 0
    /// a job that may start late waits for the greenest hour wherever it
    /// is; at 1 only when carbon and energy cost together improve.
    #[serde(default = "default_shift_cost")]
    pub shift_cost: f64,
}

/// 0.3: on the shipped catalog, the highest share that still reaches the
/// issue's carbon goal with 6 h of delay (docs/regions.md "Time shifting").
fn default_shift_cost() -> f64 {
    0.3
}

/// 0.3: measured on the shipped catalog and workload (docs/regions.md).
fn default_pack_band() -> f64 {
    0.3
}

impl Default for ScoreWeights {
    fn default() -> Self {
        ScoreWeights {
            carbon: 1.0,
            cost: 1.0,
            latency: 0.1,
            pack_band: default_pack_band(),
            shift_cost: default_shift_cost(),
        }
    }
}

/// The file format.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CatalogFile {
    #[serde(default)]
    pub version: u32,
    /// Citations used by the entries, keyed by short id.
    #[serde(default)]
    pub sources: BTreeMap<String, String>,
    pub accelerators: Vec<AcceleratorSpec>,
    pub regions: Vec<Region>,
    #[serde(default)]
    pub user_regions: Vec<UserRegion>,
    #[serde(default)]
    pub links: Vec<Link>,
    #[serde(default)]
    pub scoring: Option<ScoreWeights>,
}

/// A validated catalog with dense, precomputed network figures.
///
/// Places are indexed `0..regions.len()` for regions, then user regions.
#[derive(Debug, Clone)]
pub struct Catalog {
    pub regions: Vec<Region>,
    pub user_regions: Vec<UserRegion>,
    pub accelerators: Vec<AcceleratorSpec>,
    pub links: Vec<Link>,
    pub weights: ScoreWeights,
    /// Electricity price per region in milli-fen per kWh (exact).
    pub price_milli_fen_per_kwh: Vec<i64>,
    /// Green share per region averaged over a day (see `cost::Site`).
    pub green_day_mean: Vec<f64>,
    /// Price multiplier per region averaged over a day (1.0 when flat).
    pub price_day_mean: Vec<f64>,
    place_index: HashMap<String, usize>,
    /// rtt_ms[place * n_regions + region]: shortest-path RTT (∞ if unreachable).
    rtt_ms: Vec<f64>,
    /// Bottleneck bandwidth along that shortest path, Gbit/s.
    bandwidth_gbps: Vec<f64>,
}

impl Catalog {
    /// The shipped default catalog.
    pub fn default_catalog() -> Catalog {
        Catalog::from_yaml(DEFAULT_CATALOG_YAML, DEFAULT_CATALOG_PATH)
            .expect("the shipped catalog is valid (tested)")
    }

    /// Load and validate a catalog file.
    pub fn load(path: &Path) -> Result<Catalog, InputError> {
        let shown = path.display().to_string();
        let text = std::fs::read_to_string(path).map_err(|e| {
            InputError::new(format!(
                "{shown}: cannot read the region catalog ({e}); pass an existing file to --regions"
            ))
        })?;
        Catalog::from_yaml(&text, &shown)
    }

    /// Parse and validate; `file` names the source in error messages.
    pub fn from_yaml(text: &str, file: &str) -> Result<Catalog, InputError> {
        let parsed: CatalogFile = serde_yaml::from_str(text).map_err(|e| {
            InputError::new(format!(
                "{file}: not a valid region catalog: {e} (see data/regions/catalog.yaml for the format)"
            ))
        })?;
        let catalog = Catalog::from_file(parsed, file)?;
        catalog.check_connected(file)?;
        Ok(catalog)
    }

    /// A catalog file describes one network: every region and user region
    /// is reachable from every other over its links (else latencies are
    /// unknown: "round trip inf ms"). ComputeRegions on a cluster may leave
    /// links out (latency-SLO jobs then skip those regions), so only files
    /// are held to it.
    fn check_connected(&self, file: &str) -> Result<(), InputError> {
        if self.regions.is_empty() {
            return Ok(());
        }
        let places = self.regions.len() + self.user_regions.len();
        match (1..places).find(|&p| !self.rtt_ms(p, 0).is_finite()) {
            None => Ok(()),
            Some(stray) => Err(input_err(
                file,
                "links",
                format!(
                    "no path of links joins {:?} to {:?}; every region and user region must be reachable \
                     (add a link, e.g. {{a: {}, b: {}, rtt_ms: …, bandwidth_gbps: …}})",
                    self.place_name(stray),
                    self.place_name(0),
                    self.place_name(stray),
                    self.place_name(0)
                ),
            )),
        }
    }

    /// Validate an already parsed catalog.
    pub fn from_file(parsed: CatalogFile, file: &str) -> Result<Catalog, InputError> {
        let CatalogFile {
            accelerators,
            regions,
            user_regions,
            links,
            scoring,
            ..
        } = parsed;
        checks::region_count(&regions, file)?;
        let models = checks::accelerators(&accelerators, file)?;
        let mut place_index = HashMap::new();
        for (i, r) in regions.iter().enumerate() {
            let entry = format!("regions[{i}] ({})", r.name);
            checks::region(r, &entry, &models, file)?;
            if place_index.insert(r.name.clone(), i).is_some() {
                return Err(input_err(
                    file,
                    &entry,
                    "duplicate region name; names must be unique",
                ));
            }
        }
        for (i, u) in user_regions.iter().enumerate() {
            if place_index
                .insert(u.name.clone(), regions.len() + i)
                .is_some()
            {
                return Err(input_err(
                    file,
                    &format!("user_regions[{i}] ({})", u.name),
                    "name already used by a region or user region; names must be unique",
                ));
            }
        }
        let mut graph: UnGraph<(), (f64, f64)> =
            UnGraph::with_capacity(place_index.len(), links.len());
        let nodes: Vec<NodeIndex> = (0..place_index.len()).map(|_| graph.add_node(())).collect();
        for (i, l) in links.iter().enumerate() {
            let entry = format!("links[{i}] ({} - {})", l.a, l.b);
            let (a, b) = checks::link(l, &entry, &place_index, file)?;
            graph.add_edge(nodes[a], nodes[b], (l.rtt_ms, l.bandwidth_gbps));
        }
        let weights = scoring.unwrap_or_default();
        checks::weights(&weights, file)?;
        let (rtt_ms, bandwidth_gbps) = shortest_paths(&graph, &nodes, regions.len());
        let price_milli_fen_per_kwh = regions
            .iter()
            .map(|r| (r.price_cny_per_kwh * MILLI_FEN_PER_CNY as f64).round() as i64)
            .collect();
        let green_day_mean = regions
            .iter()
            .map(|r| day_mean(r.green_share, r.green_profile.as_deref()))
            .collect();
        let price_day_mean = regions
            .iter()
            .map(|r| day_mean(1.0, r.price_profile.as_deref()))
            .collect();
        Ok(Catalog {
            green_day_mean,
            price_day_mean,
            regions,
            user_regions,
            accelerators,
            links,
            weights,
            price_milli_fen_per_kwh,
            place_index,
            rtt_ms,
            bandwidth_gbps,
        })
    }

    /// Index of a region (placement target) by name.
    pub fn region_index(&self, name: &str) -> Option<usize> {
        self.place_index
            .get(name)
            .copied()
            .filter(|&i| i < self.regions.len())
    }

    /// Index of any place (region or user region) by name.
    pub fn place_index(&self, name: &str) -> Option<usize> {
        self.place_index.get(name).copied()
    }

    /// Name of a place index.
    pub fn place_name(&self, place: usize) -> &str {
        if place < self.regions.len() {
            &self.regions[place].name
        } else {
            &self.user_regions[place - self.regions.len()].name
        }
    }

    /// Shortest-path round-trip time from a place to a region (∞ if unreachable).
    pub fn rtt_ms(&self, place: usize, region: usize) -> f64 {
        self.rtt_ms[place * self.regions.len() + region]
    }

    /// Bottleneck bandwidth on that path, Gbit/s (∞ for the region itself).
    pub fn bandwidth_gbps(&self, place: usize, region: usize) -> f64 {
        self.bandwidth_gbps[place * self.regions.len() + region]
    }

    /// Expected board power of a model, watts.
    pub fn power_w(&self, model: &str) -> Option<f64> {
        self.accelerators
            .iter()
            .find(|a| a.model == model)
            .map(|a| a.power_w)
    }

    /// Installed GPUs in a region.
    pub fn region_gpus(&self, region: usize) -> u64 {
        self.regions[region]
            .inventory
            .iter()
            .map(|e| e.nodes as u64 * e.gpus_per_node as u64)
            .sum()
    }
}

impl Region {
    /// Green share at an hour of day (0..24, China Standard Time).
    pub fn green_share_at_hour(&self, hour: usize) -> f64 {
        match &self.green_profile {
            Some(p) => p[hour % 24],
            None => self.green_share,
        }
    }
}

/// Most a time-of-use multiplier may be (ten times the flat price).
pub const MAX_PRICE_MULTIPLIER: f64 = 10.0;

/// Dense place × region tables of the shortest-path round trip (∞ when
/// unreachable) and the bottleneck bandwidth along that path, indexed
/// `place * n_regions + region`; places are the graph's `nodes`, regions
/// first.
fn shortest_paths(
    graph: &UnGraph<(), (f64, f64)>,
    nodes: &[NodeIndex],
    n_regions: usize,
) -> (Vec<f64>, Vec<f64>) {
    let n_places = nodes.len();
    let mut rtt_ms = vec![f64::INFINITY; n_places * n_regions];
    let mut bandwidth_gbps = vec![0.0; n_places * n_regions];
    for r in 0..n_regions {
        for p in 0..n_places {
            let k = p * n_regions + r;
            if p == r {
                rtt_ms[k] = 0.0;
                bandwidth_gbps[k] = f64::INFINITY;
                continue;
            }
            let found = petgraph::algo::astar(
                graph,
                nodes[p],
                |n| n == nodes[r],
                |e| e.weight().0,
                |_| 0.0,
            );
            if let Some((cost, path)) = found {
                rtt_ms[k] = cost;
                bandwidth_gbps[k] = path
                    .windows(2)
                    .filter_map(|w| graph.find_edge(w[0], w[1]).map(|e| graph[e].1))
                    .fold(f64::INFINITY, f64::min);
            }
        }
    }
    (rtt_ms, bandwidth_gbps)
}

#[cfg(test)]
mod tests {
    use super::*;

    const MINI: &str = r#"
accelerators:
  - {model: T4, vendor: nvidia, power_w: 70}
regions:
  - name: east1
    hub: h1
    side: east
    pue: 1.3
    green_share: 0.1
    price_cny_per_kwh: 0.7
    grid_factor_kg_per_kwh: 0.6
    inventory: [{model: T4, nodes: 2, gpus_per_node: 4, cpu_milli: 64000, memory_mib: 262144}]
  - name: west1
    hub: h2
    side: west
    pue: 1.1
    green_share: 0.6
    price_cny_per_kwh: 0.3
    grid_factor_kg_per_kwh: 0.6
user_regions:
  - {name: city}
links:
  - {a: city, b: east1, rtt_ms: 2, bandwidth_gbps: 100}
  - {a: east1, b: west1, rtt_ms: 20, bandwidth_gbps: 40}
"#;

    #[test]
    fn shortest_paths_give_latency_and_bottleneck_bandwidth() {
        let c = Catalog::from_yaml(MINI, "mini.yaml").unwrap();
        let city = c.place_index("city").unwrap();
        let (e, w) = (
            c.region_index("east1").unwrap(),
            c.region_index("west1").unwrap(),
        );
        assert_eq!(c.rtt_ms(city, e), 2.0);
        assert_eq!(c.rtt_ms(city, w), 22.0);
        assert_eq!(c.bandwidth_gbps(city, w), 40.0);
        assert_eq!(c.price_milli_fen_per_kwh, vec![70_000, 30_000]);
        assert_eq!(c.region_gpus(e), 8);
        assert!(
            c.region_index("city").is_none(),
            "a user region is not a placement target"
        );
    }

    fn expect_err(yaml: &str, needles: &[&str]) {
        let err = Catalog::from_yaml(yaml, "bad.yaml")
            .unwrap_err()
            .to_string();
        for n in needles {
            assert!(err.contains(n), "error {err:?} should mention {n:?}");
        }
    }

    #[test]
    fn bad_figures_are_rejected_naming_file_entry_and_rule() {
        expect_err(
            &MINI.replace("pue: 1.3", "pue: 0.9"),
            &["bad.yaml", "regions[0] (east1)", "pue 0.9", "below 1.0"],
        );
        expect_err(
            &MINI.replace("green_share: 0.6", "green_share: 1.2"),
            &[
                "bad.yaml",
                "regions[1] (west1)",
                "green_share 1.2",
                "outside [0, 1]",
            ],
        );
        expect_err(
            &MINI.replace("green_share: 0.6", "green_share: 0.6\n    dedicated_to: ''"),
            &["regions[1] (west1)", "dedicated_to is empty"],
        );
        expect_err(
            &MINI.replace("price_cny_per_kwh: 0.3", "price_cny_per_kwh: -0.3"),
            &["regions[1] (west1)", "negative"],
        );
        let tou = |values: &str| {
            MINI.replace(
                "price_cny_per_kwh: 0.3",
                &format!("price_cny_per_kwh: 0.3\n    price_profile: [{values}]"),
            )
        };
        let day = |v: &str, n: usize| vec![v; n].join(", ");
        assert!(Catalog::from_yaml(&tou(&day("0.5", 24)), "ok.yaml").is_ok());
        expect_err(
            &tou(&day("0.5", 23)),
            &["regions[1] (west1)", "price_profile has 23 values"],
        );
        expect_err(
            &tou(&format!("0, {}", day("1", 23))),
            &[
                "regions[1] (west1)",
                "price_profile[0] 0 is outside (0, 10]",
            ],
        );
        expect_err(
            &MINI.replace("{a: east1, b: west1", "{a: east1, b: mars"),
            &["links[1] (east1 - mars)", "unknown region \"mars\""],
        );
        expect_err(
            &MINI.replace("model: T4, nodes", "model: H100, nodes"),
            &["inventory[0]", "unknown accelerator model"],
        );
        expect_err(
            &MINI.replace("model: T4, nodes: 2", "model: T4, nodes: 0"),
            &[
                "bad.yaml",
                "regions[0] (east1).inventory[0]",
                "nodes 0",
                "≥ 1",
            ],
        );
        expect_err(
            &MINI.replace(
                "  - {a: east1, b: west1, rtt_ms: 20, bandwidth_gbps: 40}\n",
                "",
            ),
            &[
                "bad.yaml",
                "links",
                "no path of links",
                "\"west1\"",
                "\"east1\"",
            ],
        );
        expect_err(
            &MINI.replace("pue: 1.3", "pue: 1.3\n    colour: red"),
            &["bad.yaml", "colour"],
        );
        expect_err(
            &format!("scoring: {{carbon: 1, cost: 1, latency: 0.1, pack_band: -0.2}}\n{MINI}"),
            &["bad.yaml", "scoring.pack_band", "-0.2", "≥ 0"],
        );
    }

    #[test]
    fn shipped_catalog_is_valid_and_sourced() {
        let c = Catalog::default_catalog();
        assert_eq!(c.regions.len(), 10, "10 data-centre clusters");
        let hubs: std::collections::BTreeSet<&str> =
            c.regions.iter().map(|r| r.hub.as_str()).collect();
        assert_eq!(hubs.len(), 8, "8 hub nodes");
        for r in &c.regions {
            for key in ["pue", "green_share", "price", "grid_factor", "inventory"] {
                let s = r.sources.get(key).map(String::as_str).unwrap_or("");
                assert!(
                    !s.trim().is_empty(),
                    "region {} has no source for {key}",
                    r.name
                );
            }
            for u in 0..c.user_regions.len() {
                let p = c.regions.len() + u;
                assert!(c.rtt_ms(p, c.region_index(&r.name).unwrap()).is_finite());
            }
        }
        for a in &c.accelerators {
            assert!(
                !a.source.trim().is_empty(),
                "accelerator {} has no source",
                a.model
            );
        }
        for l in &c.links {
            assert!(
                !l.source.trim().is_empty(),
                "link {}-{} has no source",
                l.a,
                l.b
            );
        }
    }
}

//! Network topology of gangs: nodes carry topology labels (block → rack →
//! NVLink domain, inside a region), a gang may ask to run inside one domain
//! of a level (`required`) or to be placed there when it can (`preferred`),
//! and [`Engine::place_gang_within`] puts it into the smallest domain that
//! holds it. Kueue's Topology Aware Scheduling, Volcano's HyperNodes and
//! KAI's topology constraints are the models.

use std::fmt;

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use super::{Decision, Engine, GangError, Request};

/// Node label naming the block (spine) a node's rack hangs off.
pub const BLOCK_LABEL: &str = "topology.zhisuan.io/block";
/// Node label naming the node's rack (its top-of-rack switch).
pub const RACK_LABEL: &str = "topology.zhisuan.io/rack";
/// Node label naming the NVLink domain a node belongs to (a group of nodes
/// whose GPUs share one NVLink fabric, e.g. an NVL72 rack).
pub const NVLINK_LABEL: &str = "topology.zhisuan.io/nvlink-domain";

/// A level of the network, finest first (the order is the nesting).
#[derive(
    Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize, JsonSchema,
)]
#[serde(rename_all = "lowercase")]
pub enum Level {
    /// One NVLink domain.
    Nvlink,
    /// One rack.
    Rack,
    /// One block (spine) of racks.
    Block,
}

impl Level {
    /// Finest first.
    pub const ALL: [Level; 3] = [Level::Nvlink, Level::Rack, Level::Block];

    pub fn name(self) -> &'static str {
        match self {
            Level::Nvlink => "nvlink",
            Level::Rack => "rack",
            Level::Block => "block",
        }
    }

    /// The node label that names a node's domain of this level.
    pub fn label(self) -> &'static str {
        match self {
            Level::Nvlink => NVLINK_LABEL,
            Level::Rack => RACK_LABEL,
            Level::Block => BLOCK_LABEL,
        }
    }
}

impl fmt::Display for Level {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl std::str::FromStr for Level {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        Level::ALL
            .into_iter()
            .find(|l| l.name() == s.trim())
            .ok_or_else(|| format!("unknown level {s:?}; use nvlink, rack or block"))
    }
}

/// What a job asks of the network, as written in its spec:
/// `topology: {required: rack}` or `topology: {preferred: rack}`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct TopologySpec {
    /// Run the whole gang inside one domain of this level, or wait.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub required: Option<Level>,
    /// Place the gang inside one domain of this level when one has room,
    /// else inside the smallest coarser domain that has, else anywhere in
    /// the region.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub preferred: Option<Level>,
}

impl TopologySpec {
    /// The ask, or what to fix.
    pub fn ask(&self) -> Result<TopologyAsk, &'static str> {
        match (self.required, self.preferred) {
            (Some(level), None) => Ok(TopologyAsk {
                level,
                required: true,
            }),
            (None, Some(level)) => Ok(TopologyAsk {
                level,
                required: false,
            }),
            _ => Err("set exactly one of required or preferred (a level: nvlink, rack or block)"),
        }
    }
}

/// A checked topology ask.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct TopologyAsk {
    pub level: Level,
    pub required: bool,
}

impl From<TopologyAsk> for TopologySpec {
    fn from(a: TopologyAsk) -> Self {
        let level = Some(a.level);
        if a.required {
            TopologySpec {
                required: level,
                preferred: None,
            }
        } else {
            TopologySpec {
                required: None,
                preferred: level,
            }
        }
    }
}

impl TopologyAsk {
    /// The levels to try, finest first: only the asked one when required,
    /// else it and every coarser one.
    fn levels(self) -> impl Iterator<Item = Level> {
        Level::ALL
            .into_iter()
            .filter(move |&l| l == self.level || (!self.required && l > self.level))
    }
}

/// One domain of a level: its name (the labels' values from the block down,
/// joined by `/`) and its nodes.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Domain {
    pub name: String,
    pub nodes: Vec<u32>,
}

/// The value of a level's label among a node's labels.
fn value(labels: &[(String, String)], level: Level) -> Option<&str> {
    labels
        .iter()
        .find(|(k, _)| k == level.label())
        .map(|(_, v)| v.as_str())
}

/// A node's path from the block down to `finest` (the values of the
/// levels it has labels for, joined by `/`), empty when it has none.
fn path(labels: &[(String, String)], finest: Level) -> String {
    Level::ALL
        .iter()
        .rev()
        .filter(|&&l| l >= finest)
        .filter_map(|&l| value(labels, l))
        .collect::<Vec<_>>()
        .join("/")
}

/// The domains of `level` among `nodes`, by name. A node without that
/// level's label belongs to none.
pub fn domains(engine: &Engine, nodes: &[u32], level: Level) -> Vec<Domain> {
    let cluster = engine.cluster();
    let mut by_name: std::collections::BTreeMap<String, Vec<u32>> = Default::default();
    for &n in nodes {
        let labels = cluster.labels(n);
        if value(labels, level).is_some() {
            by_name.entry(path(labels, level)).or_default().push(n);
        }
    }
    by_name
        .into_iter()
        .map(|(name, nodes)| Domain { name, nodes })
        .collect()
}

/// Where a topology-aware gang went.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DomainPlaced {
    /// The level of the domain that holds the whole gang (`None`: no domain
    /// of any asked level had room, the gang spans the region).
    pub level: Option<Level>,
    /// The domain's name (empty when `level` is `None`).
    pub domain: String,
}

/// Why a topology-aware gang was not placed.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum TopologyError {
    /// No domain of the required level holds the gang.
    NoDomain {
        level: Level,
        /// Domains of that level among the nodes.
        domains: usize,
        /// The most free GPU share of any of them, milli.
        most_free_milli: u64,
        /// What the gang needs, milli.
        need_milli: u64,
    },
    /// Anywhere in the region (a preferred level that no domain could hold).
    Gang(GangError),
}

impl fmt::Display for TopologyError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            TopologyError::NoDomain {
                level,
                domains: 0,
                ..
            } => write!(
                f,
                "the job requires one {level} but no node here carries the {} label",
                level.label()
            ),
            TopologyError::NoDomain {
                level,
                domains,
                most_free_milli,
                need_milli,
            } => write!(
                f,
                "no {level} of {domains} holds the whole gang (it needs {:.1} GPUs; the freest {level} has {:.1})",
                *need_milli as f64 / 1000.0,
                *most_free_milli as f64 / 1000.0
            ),
            TopologyError::Gang(e) => write!(f, "{e}"),
        }
    }
}

impl std::error::Error for TopologyError {}

impl Engine {
    /// Keeps each network domain's nodes together in the tie-break order:
    /// domains in the order of their first node, nodes within a domain in
    /// their order. Equal-scoring placements then fill one rack before
    /// starting the next, so small jobs leave whole racks for gangs (with
    /// a random order they scatter over every rack). No-op where no node
    /// carries a topology label.
    pub fn keep_domains_together(&mut self) {
        let n = self.cluster().len() as u32;
        let paths: Vec<String> = (0..n)
            .map(|i| path(self.cluster().labels(i), Level::Nvlink))
            .collect();
        if paths.iter().all(String::is_empty) {
            return;
        }
        let mut order: Vec<u32> = (0..n).collect();
        order.sort_unstable_by_key(|&i| self.rank[i as usize]);
        let mut first: std::collections::HashMap<&str, u32> = Default::default();
        for &i in &order {
            first
                .entry(paths[i as usize].as_str())
                .or_insert(self.rank[i as usize]);
        }
        order.sort_by_key(|&i| (first[paths[i as usize].as_str()], self.rank[i as usize]));
        self.set_tie_order(&order)
            .expect("a permutation of the cluster's nodes");
    }

    /// Places a gang into the smallest domain that holds it: for each level
    /// the ask allows, finest first, the domains with enough free GPU share
    /// are tried tightest first (least free, then by name), and the first
    /// that takes every member wins; a preferred ask falls back to the whole
    /// of `nodes`. All or nothing, as [`Engine::place_gang`].
    pub fn place_gang_within(
        &mut self,
        members: &[Request],
        nodes: &[u32],
        ask: TopologyAsk,
    ) -> Result<(Vec<Decision>, DomainPlaced), TopologyError> {
        let need: u64 = members.iter().map(|r| r.gpu.total_milli() as u64).sum();
        let mut first_refusal = None;
        for level in ask.levels() {
            let doms = domains(self, nodes, level);
            let mut fitting: Vec<(u64, &Domain)> = Vec::with_capacity(doms.len());
            let mut most_free = 0;
            for d in &doms {
                let free = self.free_milli(&d.nodes);
                most_free = most_free.max(free);
                if free >= need {
                    fitting.push((free, d));
                }
            }
            fitting.sort_by(|a, b| a.0.cmp(&b.0).then_with(|| a.1.name.cmp(&b.1.name)));
            for (_, d) in fitting {
                if let Ok(ds) = self.place_gang(members, Some(&d.nodes)) {
                    let placed = DomainPlaced {
                        level: Some(level),
                        domain: d.name.clone(),
                    };
                    return Ok((ds, placed));
                }
            }
            first_refusal.get_or_insert(TopologyError::NoDomain {
                level,
                domains: doms.len(),
                most_free_milli: most_free,
                need_milli: need,
            });
        }
        if ask.required {
            return Err(first_refusal.expect("a required ask tries its level"));
        }
        let ds = self
            .place_gang(members, Some(nodes))
            .map_err(TopologyError::Gang)?;
        Ok((
            ds,
            DomainPlaced {
                level: None,
                domain: String::new(),
            },
        ))
    }

    /// Free GPU share of `nodes`, milli.
    fn free_milli(&self, nodes: &[u32]) -> u64 {
        nodes
            .iter()
            .map(|&n| self.cluster().usable_free_total(n) as u64)
            .sum()
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeSet;

    use super::*;
    use crate::placement::{Cluster, NodeSpec, Policy};

    /// `racks` racks of `per_rack` 8-GPU nodes, two racks a block.
    fn engine(racks: usize, per_rack: usize) -> Engine {
        let mut c = Cluster::new();
        for r in 0..racks {
            for i in 0..per_rack {
                c.add_node(&NodeSpec {
                    name: format!("r{r}-n{i}"),
                    cpu_milli: 64_000,
                    memory_mib: 262_144,
                    gpus: 8,
                    model: "A100".into(),
                    labels: vec![
                        (BLOCK_LABEL.into(), format!("b{}", r / 2)),
                        (RACK_LABEL.into(), format!("r{r}")),
                    ],
                })
                .unwrap();
            }
        }
        Engine::new(c, Policy::default(), 1)
    }

    fn rack_of(e: &Engine, d: &Decision) -> String {
        e.cluster()
            .name(d.node)
            .split('-')
            .next()
            .unwrap()
            .to_string()
    }

    fn all(e: &Engine) -> Vec<u32> {
        (0..e.cluster().len() as u32).collect()
    }

    fn ask(level: Level, required: bool) -> TopologyAsk {
        TopologyAsk { level, required }
    }

    #[test]
    fn a_gang_goes_into_the_tightest_rack_that_holds_it() {
        let mut e = engine(4, 4);
        let nodes = all(&e);
        // Rack r2 loses two nodes' worth to another job: it is the
        // tightest rack that still holds a 2-node gang.
        let filler = vec![Request::whole(1000, 1024, 8); 2];
        let r2: Vec<u32> = (8..12).collect();
        e.place_gang(&filler, Some(&r2)).unwrap();
        let gang = vec![Request::whole(1000, 1024, 8); 2];
        let (ds, placed) = e
            .place_gang_within(&gang, &nodes, ask(Level::Rack, true))
            .unwrap();
        assert_eq!(placed.level, Some(Level::Rack));
        assert_eq!(placed.domain, "b1/r2");
        assert!(ds.iter().all(|d| rack_of(&e, d) == "r2"));
    }

    #[test]
    fn a_required_rack_that_no_rack_holds_waits_and_allocates_nothing() {
        let mut e = engine(4, 4);
        let nodes = all(&e);
        let gang = vec![Request::whole(1000, 1024, 8); 5];
        let err = e
            .place_gang_within(&gang, &nodes, ask(Level::Rack, true))
            .unwrap_err();
        assert!(
            err.to_string()
                .contains("no rack of 4 holds the whole gang"),
            "{err}"
        );
        assert_eq!(e.cluster().gpu_milli_allocated(), 0);
        // Blind, the same gang fits across racks.
        assert!(e.place_gang(&gang, Some(&nodes)).is_ok());
    }

    #[test]
    fn a_preferred_rack_falls_back_to_one_block_then_the_region() {
        let mut e = engine(4, 4);
        let nodes = all(&e);
        let five = vec![Request::whole(1000, 1024, 8); 5];
        let (ds, placed) = e
            .place_gang_within(&five, &nodes, ask(Level::Rack, false))
            .unwrap();
        assert_eq!(placed.level, Some(Level::Block));
        let block = &placed.domain;
        assert!(ds.iter().all(|d| {
            let r: usize = rack_of(&e, d)[1..].parse().unwrap();
            format!("b{}", r / 2) == *block
        }));
        // Nine more nodes than one block holds: the region.
        let nine = vec![Request::whole(1000, 1024, 8); 9];
        let (_, placed) = e
            .place_gang_within(&nine, &nodes, ask(Level::Rack, false))
            .unwrap();
        assert_eq!(placed.level, None);
    }

    #[test]
    fn nodes_without_the_label_are_in_no_domain() {
        let mut c = Cluster::new();
        c.add_node(&NodeSpec {
            name: "bare".into(),
            cpu_milli: 64_000,
            memory_mib: 262_144,
            gpus: 8,
            model: "A100".into(),
            labels: vec![],
        })
        .unwrap();
        let mut e = Engine::new(c, Policy::default(), 1);
        let err = e
            .place_gang_within(
                &[Request::whole(1000, 1024, 1)],
                &[0],
                ask(Level::Rack, true),
            )
            .unwrap_err();
        assert!(err
            .to_string()
            .contains("carries the topology.zhisuan.io/rack label"));
        assert!(domains(&e, &[0], Level::Rack).is_empty());
    }

    #[test]
    fn a_spec_asks_exactly_one_level() {
        let both = TopologySpec {
            required: Some(Level::Rack),
            preferred: Some(Level::Block),
        };
        assert!(both.ask().unwrap_err().contains("exactly one"));
        assert!(TopologySpec::default().ask().is_err());
        let s: TopologySpec = serde_json::from_str(r#"{"preferred":"nvlink"}"#).unwrap();
        assert_eq!(s.ask().unwrap(), ask(Level::Nvlink, false));
        assert!(serde_json::from_str::<TopologySpec>(r#"{"required":"row"}"#).is_err());
    }

    #[test]
    fn ties_fill_one_rack_before_the_next() {
        let mut e = engine(8, 4);
        e.keep_domains_together();
        // Four whole-node jobs, blind: every node scores alike, the tie
        // order decides, and it keeps a rack's nodes together.
        let racks: BTreeSet<String> = (0..4)
            .map(|_| {
                let d = e.schedule(&Request::whole(1000, 1024, 8)).unwrap();
                rack_of(&e, &d)
            })
            .collect();
        assert_eq!(racks.len(), 1, "{racks:?}");
    }
}

//! The models the gateway serves: each name maps to its upstreams (base
//! URLs of OpenAI-compatible servers, each in a region) and its price tier,
//! and optionally to the one tenant that owns it (a dedicated service).
//! Routing state (outstanding requests, when an upstream was seen down)
//! lives beside each upstream as atomics, so picking one takes no lock.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicI64, AtomicU32, AtomicU64, AtomicU8, Ordering};
use std::sync::Arc;

use crate::error::InputError;
use crate::ledger::Tier;

/// Region of an upstream given without one.
pub const DEFAULT_REGION: &str = "local";

/// How long an upstream that refused a connection is left out, in ms.
pub const DOWN_FOR_MS: u64 = 5_000;

/// Which tokenize endpoint an upstream answered (0 = not known yet).
pub const TOKENIZE_UNKNOWN: u8 = 0;
/// llama-cpp-python: `POST /extras/tokenize {"input": ...}`.
pub const TOKENIZE_LLAMA_CPP: u8 = 1;
/// vLLM: `POST /tokenize {"prompt": ...}`.
pub const TOKENIZE_VLLM: u8 = 2;

/// One OpenAI-compatible server.
#[derive(Debug)]
pub struct Upstream {
    /// `http://host:port` (no trailing slash, no path).
    pub base: String,
    pub region: String,
    outstanding: AtomicU32,
    down_until_ms: AtomicU64,
    /// Which tokenize endpoint works here ([`TOKENIZE_LLAMA_CPP`], …).
    pub tokenize: AtomicU8,
    /// Tokens the tokenize endpoint adds to any text (a BOS token), once
    /// measured (-1 before).
    pub tokenize_overhead: AtomicI64,
}

impl Upstream {
    pub fn new(base: &str, region: &str) -> Self {
        Upstream {
            base: base.trim_end_matches('/').to_string(),
            region: region.to_string(),
            outstanding: AtomicU32::new(0),
            down_until_ms: AtomicU64::new(0),
            tokenize: AtomicU8::new(TOKENIZE_UNKNOWN),
            tokenize_overhead: AtomicI64::new(-1),
        }
    }

    pub fn outstanding(&self) -> u32 {
        self.outstanding.load(Ordering::Relaxed)
    }

    pub fn healthy_at(&self, now_ms: u64) -> bool {
        self.down_until_ms.load(Ordering::Relaxed) <= now_ms
    }

    /// Leaves the upstream out until `now_ms + DOWN_FOR_MS`.
    pub fn mark_down(&self, now_ms: u64) {
        self.mark_down_for(now_ms, DOWN_FOR_MS);
    }

    /// Leaves the upstream out until `now_ms + for_ms`.
    pub fn mark_down_for(&self, now_ms: u64, for_ms: u64) {
        self.down_until_ms
            .store(now_ms.saturating_add(for_ms), Ordering::Relaxed);
    }

    /// Takes the upstream back at once (it answered a probe).
    pub fn mark_up(&self) {
        self.down_until_ms.store(0, Ordering::Relaxed);
    }

    /// Counts a request in flight until the guard is dropped.
    pub fn begin(self: &Arc<Self>) -> InFlight {
        self.outstanding.fetch_add(1, Ordering::Relaxed);
        InFlight(self.clone())
    }
}

/// A request in flight on an upstream (decrements on drop).
#[derive(Debug)]
pub struct InFlight(pub Arc<Upstream>);

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.outstanding.fetch_sub(1, Ordering::Relaxed);
    }
}

/// A model name the gateway answers for.
#[derive(Debug)]
pub struct Model {
    pub name: String,
    pub tier: Tier,
    /// The tenant a dedicated model belongs to; `None` = shared (MaaS).
    pub owner: Option<String>,
    pub upstreams: Vec<Arc<Upstream>>,
}

impl Model {
    /// The upstream to send the next request to: among the healthy ones
    /// not in `tried`, those within the caller's latency SLO when any is
    /// (`within_slo` answers for an upstream's region), then those in
    /// `user_region` when any is, then the fewest requests outstanding
    /// (ties: the first listed). `None` when none is left.
    pub fn pick(
        &self,
        user_region: Option<&str>,
        within_slo: &dyn Fn(&str) -> bool,
        now_ms: u64,
        tried: &[usize],
    ) -> Option<usize> {
        let healthy = || {
            self.upstreams
                .iter()
                .enumerate()
                .filter(|(i, u)| !tried.contains(i) && u.healthy_at(now_ms))
        };
        let slo_met = healthy().any(|(_, u)| within_slo(&u.region));
        let candidates = || healthy().filter(move |(_, u)| !slo_met || within_slo(&u.region));
        let in_region = user_region.filter(|r| candidates().any(|(_, u)| u.region == *r));
        candidates()
            .filter(|(_, u)| in_region.is_none_or(|r| u.region == r))
            .min_by_key(|(i, u)| (u.outstanding(), *i))
            .map(|(i, _)| i)
    }
}

/// A model found on a cluster (an InferenceService served through the
/// gateway): plain data, so the gateway knows nothing of Kubernetes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ModelSpec {
    pub name: String,
    pub tier: Tier,
    /// The tenant of a dedicated service; `None` when it is offered to all.
    pub owner: Option<String>,
    /// (base URL `http://IP:PORT`, region) of each ready replica.
    pub upstreams: Vec<(String, String)>,
}

/// Every model the gateway serves, by name.
#[derive(Debug, Default, Clone)]
pub struct Registry {
    models: BTreeMap<String, Arc<Model>>,
}

impl Registry {
    /// Builds the registry from `--upstream NAME[@REGION]=URL` (repeatable:
    /// several upstreams of one model are load-balanced) and
    /// `--upstream-tier NAME=TIER` (default `basic`).
    pub fn from_flags(upstreams: &[String], tiers: &[String]) -> Result<Self, InputError> {
        let mut by_name: BTreeMap<String, Vec<Arc<Upstream>>> = BTreeMap::new();
        for flag in upstreams {
            let (name_region, url) = flag.split_once('=').ok_or_else(|| {
                InputError::new(format!(
                    "--upstream {flag}: expected NAME=URL or NAME@REGION=URL, e.g. qwen=http://10.0.0.5:8000"
                ))
            })?;
            let (name, region) = match name_region.split_once('@') {
                Some((n, r)) => (n, r),
                None => (name_region, DEFAULT_REGION),
            };
            check_name("--upstream", name)?;
            check_name("--upstream (region)", region)?;
            let base = check_url(flag, url)?;
            by_name
                .entry(name.to_string())
                .or_default()
                .push(Arc::new(Upstream::new(&base, region)));
        }
        let mut tier_of: BTreeMap<String, Tier> = BTreeMap::new();
        for flag in tiers {
            let (name, tier) = flag.split_once('=').ok_or_else(|| {
                InputError::new(format!(
                    "--upstream-tier {flag}: expected NAME=TIER with TIER one of basic, industry, high_value"
                ))
            })?;
            if !by_name.contains_key(name) {
                return Err(InputError::new(format!(
                    "--upstream-tier {flag}: no --upstream names the model `{name}`; add `--upstream {name}=URL` or fix the name"
                )));
            }
            let tier = parse_tier(tier).ok_or_else(|| {
                InputError::new(format!(
                    "--upstream-tier {flag}: unknown tier `{tier}`; use basic, industry or high_value"
                ))
            })?;
            tier_of.insert(name.to_string(), tier);
        }
        let models = by_name
            .into_iter()
            .map(|(name, upstreams)| {
                let tier = tier_of.get(&name).copied().unwrap_or(Tier::Basic);
                let model = Model {
                    name: name.clone(),
                    tier,
                    owner: None,
                    upstreams,
                };
                (name, Arc::new(model))
            })
            .collect();
        Ok(Registry { models })
    }

    /// This registry with `found` (models discovered on a cluster) added:
    /// a name already here (from `--upstream`) keeps its flags' upstreams,
    /// and an upstream already known by its URL keeps its routing state
    /// (requests in flight, when it was seen down).
    pub fn with_discovered(&self, base: &Registry, found: Vec<ModelSpec>) -> Registry {
        let known: BTreeMap<&str, &Arc<Upstream>> = self
            .models
            .values()
            .flat_map(|m| m.upstreams.iter())
            .map(|u| (u.base.as_str(), u))
            .collect();
        let mut models = base.models.clone();
        for spec in found {
            if models.contains_key(&spec.name) {
                tracing::warn!(model = %spec.name, "a discovered model has the name of another; it is left out");
                continue;
            }
            let upstreams = spec
                .upstreams
                .iter()
                .map(|(url, region)| match known.get(url.as_str()) {
                    Some(u) if u.region == *region => Arc::clone(u),
                    _ => Arc::new(Upstream::new(url, region)),
                })
                .collect();
            let model = Model {
                name: spec.name.clone(),
                tier: spec.tier,
                owner: spec.owner,
                upstreams,
            };
            models.insert(spec.name, Arc::new(model));
        }
        Registry { models }
    }

    pub fn get(&self, name: &str) -> Option<&Arc<Model>> {
        self.models.get(name)
    }

    pub fn is_empty(&self) -> bool {
        self.models.is_empty()
    }

    pub fn models(&self) -> impl Iterator<Item = &Arc<Model>> {
        self.models.values()
    }
}

/// `basic`, `industry` or `high_value` (also `high-value`).
pub fn parse_tier(s: &str) -> Option<Tier> {
    Tier::parse(&s.replace('-', "_"))
}

fn check_name(flag: &str, name: &str) -> Result<(), InputError> {
    let ok = !name.is_empty()
        && name.len() <= 200
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "-_.:/".contains(c));
    if ok {
        Ok(())
    } else {
        Err(InputError::new(format!(
            "{flag}: `{name}` must be 1-200 characters of letters, digits and - _ . : /"
        )))
    }
}

/// `http://host:port` with nothing after the authority (the gateway adds
/// `/v1/...`); https is not spoken to upstreams (they sit inside the cluster).
fn check_url(flag: &str, url: &str) -> Result<String, InputError> {
    let url = url.trim_end_matches('/');
    let url = url.strip_suffix("/v1").unwrap_or(url);
    let uri: axum::http::Uri = url.parse().map_err(|e| {
        InputError::new(format!(
            "--upstream {flag}: `{url}` is not a URL ({e}); write http://HOST:PORT"
        ))
    })?;
    if uri.scheme_str() != Some("http") || uri.authority().is_none() || uri.path().len() > 1 {
        return Err(InputError::new(format!(
            "--upstream {flag}: `{url}` must be http://HOST:PORT (no path; the gateway adds /v1/...)"
        )));
    }
    Ok(url.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn reg(ups: &[&str], tiers: &[&str]) -> Result<Registry, InputError> {
        let s = |v: &[&str]| v.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        Registry::from_flags(&s(ups), &s(tiers))
    }

    #[test]
    fn flags_build_models_with_tiers_and_regions() {
        let r = reg(
            &[
                "qwen=http://a:1/v1",
                "qwen@east=http://b:2/",
                "emb=http://c:3",
            ],
            &["qwen=high_value"],
        )
        .unwrap();
        let q = r.get("qwen").unwrap();
        assert_eq!(q.tier, Tier::HighValue);
        assert_eq!(q.upstreams[0].base, "http://a:1");
        assert_eq!(q.upstreams[1].region, "east");
        assert_eq!(r.get("emb").unwrap().tier, Tier::Basic);
    }

    #[test]
    fn bad_flags_name_the_flag_and_the_fix() {
        let e = reg(&["qwen"], &[]).unwrap_err().to_string();
        assert!(e.contains("NAME=URL"), "{e}");
        let e = reg(&["qwen=https://a:1"], &[]).unwrap_err().to_string();
        assert!(e.contains("http://HOST:PORT"), "{e}");
        let e = reg(&["qwen=http://a:1"], &["llama=basic"])
            .unwrap_err()
            .to_string();
        assert!(e.contains("no --upstream names the model `llama`"), "{e}");
        let e = reg(&["qwen=http://a:1"], &["qwen=gold"])
            .unwrap_err()
            .to_string();
        assert!(e.contains("unknown tier `gold`"), "{e}");
    }

    #[test]
    fn picking_prefers_the_region_then_the_least_busy_and_skips_down_ones() {
        let r = reg(
            &["m=http://a:1", "m@east=http://b:1", "m@east=http://c:1"],
            &[],
        )
        .unwrap();
        let m = r.get("m").unwrap();
        let any = |_: &str| true;
        assert_eq!(m.pick(None, &any, 0, &[]), Some(0));
        assert_eq!(m.pick(Some("east"), &any, 0, &[]), Some(1));
        let _busy = m.upstreams[1].begin();
        assert_eq!(m.pick(Some("east"), &any, 0, &[]), Some(2));
        m.upstreams[2].mark_down(100);
        assert_eq!(m.pick(Some("east"), &any, 200, &[]), Some(1));
        // out of the region's healthy ones: any other
        assert_eq!(m.pick(Some("east"), &any, 200, &[1]), Some(0));
        assert_eq!(m.pick(Some("east"), &any, 200, &[0, 1]), None);
        // back after DOWN_FOR_MS
        assert_eq!(m.pick(Some("east"), &any, 100 + DOWN_FOR_MS, &[1]), Some(2));
        // Within the latency SLO first, even outside the caller's region;
        // none within it: as if there were no SLO.
        let near_local = |r: &str| r == "local";
        assert_eq!(
            m.pick(Some("east"), &near_local, 100 + DOWN_FOR_MS, &[]),
            Some(0)
        );
        let nowhere = |_: &str| false;
        assert_eq!(
            m.pick(Some("east"), &nowhere, 100 + DOWN_FOR_MS, &[1]),
            Some(2)
        );
    }

    #[test]
    fn discovered_models_join_the_flags_and_keep_their_upstreams_state() {
        let flags = reg(&["qwen=http://a:1"], &[]).unwrap();
        let spec = |url: &str| ModelSpec {
            name: "chat".into(),
            tier: Tier::Industry,
            owner: Some("acme".into()),
            upstreams: vec![(url.into(), "gansu".into())],
        };
        let clash = ModelSpec {
            name: "qwen".into(),
            ..spec("http://x:1")
        };
        let first = flags.with_discovered(&flags, vec![spec("http://10.0.0.1:8000"), clash]);
        assert_eq!(first.get("qwen").unwrap().upstreams[0].base, "http://a:1");
        let chat = first.get("chat").unwrap();
        assert_eq!(chat.owner.as_deref(), Some("acme"));
        let _busy = chat.upstreams[0].begin();
        // The next refresh finds the same pod: its in-flight count carries over.
        let second = first.with_discovered(&flags, vec![spec("http://10.0.0.1:8000")]);
        assert_eq!(second.get("chat").unwrap().upstreams[0].outstanding(), 1);
        // A pod gone: the model goes with its last replica.
        let third = second.with_discovered(&flags, vec![]);
        assert!(third.get("chat").is_none());
    }
}

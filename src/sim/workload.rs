//! The workload file of `zhisuan sim`: one row a job and when it arrives
//! (`data/workload/openb-regions.csv` ships, built deterministically from
//! the openb trace by [`build_workload`]), parsed into the jobs the
//! simulated cluster runs.

use crate::error::InputError;
use crate::placement::{Level, TopologyAsk, TopologySpec};
use crate::regions::catalog::Catalog;
use crate::regions::job::{JobKind, JobSpec};
use serde::{Deserialize, Serialize};

/// The shipped workload, embedded.
pub const DEFAULT_WORKLOAD_CSV: &str = include_str!("../../data/workload/openb-regions.csv");
pub const DEFAULT_WORKLOAD_PATH: &str = "data/workload/openb-regions.csv";

/// One row of a workload CSV: a job and when it arrives.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WorkloadRow {
    pub name: String,
    pub tenant: String,
    pub kind: String,
    pub arrival_s: i64,
    pub duration_s: i64,
    pub replicas: u32,
    pub gpus_per_replica: u32,
    pub gpu_milli: u32,
    pub cpu_milli: u32,
    pub memory_mib: u64,
    /// `|`-separated allowed models (empty = any).
    pub gpu_models: String,
    pub user_region: String,
    /// Empty = no SLO.
    pub latency_slo_ms: Option<f64>,
    /// `|`-separated allowed regions (empty = anywhere).
    pub residency: String,
    /// Accelerator vendor or stack (nvidia / cuda, huawei / ascend / cann);
    /// the column may be left out (empty = nvidia).
    #[serde(default)]
    pub accelerator_vendor: String,
    /// `true`: the gang's replicas may run on different models; the column
    /// may be left out (one model per gang).
    #[serde(default)]
    pub mixed_models: bool,
    /// `required:LEVEL` or `preferred:LEVEL` (nvlink, rack, block): the
    /// network domain the gang must or should fit in; the column may be
    /// left out (anywhere in the region). Written only when set (the
    /// generated workloads leave it out).
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub topology: String,
    /// Seconds the job may wait past its arrival for greener hours (time
    /// shifting); the column may be left out (start as soon as it fits).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_delay_s: Option<i64>,
}

fn split_list(s: &str) -> Vec<String> {
    s.split('|')
        .map(str::trim)
        .filter(|x| !x.is_empty())
        .map(String::from)
        .collect()
}

/// The `topology` column: empty, `required:LEVEL` or `preferred:LEVEL`.
fn topology_column(s: &str) -> Result<Option<TopologySpec>, String> {
    let s = s.trim();
    if s.is_empty() {
        return Ok(None);
    }
    let bad = || {
        format!(
            "topology {s:?}: write required:LEVEL or preferred:LEVEL (LEVEL: nvlink, rack, block)"
        )
    };
    let (how, level) = s.split_once(':').ok_or_else(bad)?;
    let level: Level = level.parse().map_err(|_| bad())?;
    let required = match how.trim() {
        "required" => true,
        "preferred" => false,
        _ => return Err(bad()),
    };
    Ok(Some(TopologyAsk { level, required }.into()))
}

impl WorkloadRow {
    pub fn to_spec(&self) -> Result<JobSpec, String> {
        Ok(JobSpec {
            tenant: self.tenant.clone(),
            name: self.name.clone(),
            kind: self.kind.parse()?,
            replicas: self.replicas,
            gpus_per_replica: self.gpus_per_replica,
            gpu_milli: self.gpu_milli,
            cpu_milli_per_replica: self.cpu_milli,
            memory_mib_per_replica: self.memory_mib,
            gpu_models: split_list(&self.gpu_models),
            accelerator_vendor: Some(self.accelerator_vendor.clone()).filter(|s| !s.is_empty()),
            mixed_models: self.mixed_models,
            topology: topology_column(&self.topology)?,
            max_delay_s: self.max_delay_s,
            user_region: Some(self.user_region.clone()).filter(|s| !s.is_empty()),
            data_region: None,
            latency_slo_ms: self.latency_slo_ms,
            residency: split_list(&self.residency),
            cost_budget_fen: None,
            wait_for_best: false,
            priority: 0,
            max_runtime_s: None,
            duration_s: Some(self.duration_s),
        })
    }
}

/// Parses a workload CSV; every error names the file and the line.
pub fn parse_workload(
    text: &str,
    file: &str,
    catalog: &Catalog,
) -> Result<Vec<(i64, JobSpec)>, InputError> {
    let mut rdr = csv::ReaderBuilder::new()
        .trim(csv::Trim::All)
        .from_reader(text.as_bytes());
    let headers = rdr
        .headers()
        .map_err(|e| InputError::new(format!("{file}:1: bad header: {e}")))?
        .clone();
    let mut out = Vec::new();
    let mut lines_by_name: std::collections::HashMap<(String, String), usize> =
        std::collections::HashMap::new();
    for (i, row) in rdr.deserialize::<WorkloadRow>().enumerate() {
        let line = i + 2;
        let row = row.map_err(|e| row_error(file, line, &headers, e))?;
        if let Some(first) = lines_by_name.insert((row.tenant.clone(), row.name.clone()), line) {
            return Err(InputError::new(format!(
                "{file}:{line}: column `name`: job {:?} of tenant {:?} is already on line {first}; \
                 a tenant's job names are unique",
                row.name, row.tenant
            )));
        }
        if row.arrival_s < 0 {
            return Err(InputError::new(format!(
                "{file}:{line}: arrival_s {} must be ≥ 0",
                row.arrival_s
            )));
        }
        let spec = row
            .to_spec()
            .map_err(|e| InputError::new(format!("{file}:{line}: field `kind`: {e}")))?;
        spec.resolve(catalog)
            .map_err(|e| InputError::new(format!("{file}:{line}: {e}")))?;
        out.push((row.arrival_s, spec));
    }
    if out.is_empty() {
        return Err(InputError::new(format!("{file}: the workload has no jobs")));
    }
    out.sort_by_key(|(t, _)| *t);
    Ok(out)
}

/// A CSV row error naming the column by its header, not its position.
fn row_error(file: &str, line: usize, headers: &csv::StringRecord, e: csv::Error) -> InputError {
    if let csv::ErrorKind::Deserialize { err, .. } = e.kind() {
        if let Some(column) = err.field().and_then(|f| headers.get(f as usize)) {
            return InputError::new(format!("{file}:{line}: column `{column}`: {}", err.kind()));
        }
    }
    InputError::new(format!("{file}:{line}: bad workload row: {e}"))
}

// ---------------------------------------------------------------------------
// Building the workload from the openb trace.

/// Arrivals are the trace's creation times divided by this factor (the trace
/// spans 149 days at ~14 busy GPUs on average; compressed, the same jobs load
/// the catalog's ~1,550 GPUs). Durations are kept as in the trace.
pub const ARRIVAL_COMPRESSION: i64 = 300;
/// Shortest job duration (the trace has pods deleted within seconds).
pub const MIN_DURATION_S: i64 = 60;

#[derive(Debug, Deserialize)]
struct OpenbPod {
    name: String,
    cpu_milli: u32,
    memory_mib: u64,
    num_gpu: u32,
    gpu_milli: u32,
    #[serde(default)]
    gpu_spec: String,
    qos: String,
    creation_time: i64,
    deletion_time: i64,
}

/// FNV-1a, 64 bit: a stable hash of a pod name (and a salt) for the
/// deterministic draws of the workload builder.
fn fnv(name: &str, salt: u8) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in name.bytes().chain(std::iter::once(salt)) {
        h ^= b as u64;
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    h
}

/// Draws an item by weight with a hash value.
fn pick<'a>(h: u64, items: &[(&'a str, u64)]) -> &'a str {
    let total: u64 = items.iter().map(|(_, w)| w).sum();
    let mut x = h % total;
    for (name, w) in items {
        if x < *w {
            return name;
        }
        x -= w;
    }
    items[items.len() - 1].0
}

/// Where users sit (weights in percent).
const USER_REGIONS: &[(&str, u64)] = &[
    ("beijing", 22),
    ("shanghai", 20),
    ("hangzhou", 10),
    ("guangzhou", 14),
    ("shenzhen", 10),
    ("chengdu", 10),
    ("wuhan", 8),
    ("xian", 6),
];
const TENANTS: &[(&str, u64)] = &[
    ("hz-llm-startup", 25),
    ("sz-vision-sme", 20),
    ("bj-gov-data", 15),
    ("sh-fin-ai", 20),
    ("cd-edu-cloud", 10),
    ("solo-dev", 10),
];
/// Regions of a user's home hub, for jobs bound to data that may not leave it.
fn home_hub(user: &str) -> &'static str {
    match user {
        "beijing" => "zhangjiakou",
        "shanghai" | "hangzhou" => "yangtze-demo|wuhu",
        "guangzhou" | "shenzhen" => "shaoguan",
        "chengdu" => "tianfu|chongqing",
        _ => "",
    }
}

/// Builds the shipped workload from an openb pod list (deterministic):
/// - GPU pods only, in trace order; arrival = creation_time / [`ARRIVAL_COMPRESSION`];
///   duration = deletion − creation (at least [`MIN_DURATION_S`]);
/// - kind: a GPU-sharing pod (`gpu_milli < 1000`) with QoS `LS` is online
///   inference; QoS `BE` is batch inference; the rest (whole GPUs: LS,
///   Burstable, Guaranteed) is training;
/// - user region and tenant: drawn by weight from FNV-1a of the pod name;
/// - online inference gets a round-trip SLO of 10 ms (60%) or 25 ms (40%);
/// - 8% of training / batch jobs whose users sit in a hub city must stay in
///   that hub's clusters (data residency).
pub fn build_workload(trace_csv: &str, file: &str) -> Result<Vec<WorkloadRow>, InputError> {
    let mut rdr = csv::ReaderBuilder::new()
        .trim(csv::Trim::All)
        .from_reader(trace_csv.as_bytes());
    let mut pods = Vec::new();
    for (i, p) in rdr.deserialize::<OpenbPod>().enumerate() {
        let p =
            p.map_err(|e| InputError::new(format!("{file}:{}: bad openb pod row: {e}", i + 2)))?;
        if p.num_gpu > 0 {
            pods.push(p);
        }
    }
    pods.sort_by(|a, b| {
        a.creation_time
            .cmp(&b.creation_time)
            .then_with(|| a.name.cmp(&b.name))
    });
    let mut rows = Vec::with_capacity(pods.len());
    for p in pods {
        let shared = p.num_gpu == 1 && p.gpu_milli < 1000;
        let kind = if shared && p.qos == "LS" {
            JobKind::OnlineInference
        } else if p.qos == "BE" {
            JobKind::BatchInference
        } else {
            JobKind::Training
        };
        let user = pick(fnv(&p.name, 1), USER_REGIONS);
        let tenant = pick(fnv(&p.name, 2), TENANTS);
        let slo = (kind == JobKind::OnlineInference).then(|| {
            if fnv(&p.name, 3) % 10 < 6 {
                10.0
            } else {
                25.0
            }
        });
        let residency = if kind != JobKind::OnlineInference && fnv(&p.name, 4) % 100 < 8 {
            home_hub(user)
        } else {
            ""
        };
        let (gpus, milli) = if shared {
            (0, p.gpu_milli)
        } else {
            (p.num_gpu, 0)
        };
        rows.push(WorkloadRow {
            name: p.name,
            tenant: tenant.to_string(),
            kind: kind.name().to_string(),
            arrival_s: p.creation_time / ARRIVAL_COMPRESSION,
            duration_s: (p.deletion_time - p.creation_time).max(MIN_DURATION_S),
            replicas: 1,
            gpus_per_replica: gpus,
            gpu_milli: milli,
            cpu_milli: p.cpu_milli,
            memory_mib: p.memory_mib,
            gpu_models: p.gpu_spec,
            user_region: user.to_string(),
            latency_slo_ms: slo,
            residency: residency.to_string(),
            accelerator_vendor: String::new(),
            mixed_models: false,
            topology: String::new(),
            max_delay_s: None,
        });
    }
    Ok(rows)
}

/// Writes workload rows as CSV.
pub fn write_workload(rows: &[WorkloadRow], out: &mut impl std::io::Write) -> anyhow::Result<()> {
    super::write_csv(rows, out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shipped_workload_is_rebuilt_exactly_from_the_trace() {
        let trace = concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/data/openb/openb_pod_list_default.csv"
        );
        let rows = build_workload(&std::fs::read_to_string(trace).unwrap(), trace).unwrap();
        let mut out = Vec::new();
        write_workload(&rows, &mut out).unwrap();
        assert!(
            String::from_utf8(out).unwrap() == DEFAULT_WORKLOAD_CSV,
            "regenerate data/workload/openb-regions.csv"
        );
        let kinds = |k: JobKind| rows.iter().filter(|r| r.kind == k.name()).count();
        assert_eq!(
            (
                kinds(JobKind::Training),
                kinds(JobKind::BatchInference),
                kinds(JobKind::OnlineInference)
            ),
            (3357, 2948, 759)
        );
    }

    /// The `topology` column: empty, `required:LEVEL` or `preferred:LEVEL`
    /// reach the job; anything else is refused naming the column, its
    /// value, the file and the line.
    #[test]
    fn the_topology_column_reaches_the_job_or_is_named() {
        let catalog = Catalog::default_catalog();
        let header = format!("{},topology", DEFAULT_WORKLOAD_CSV.lines().next().unwrap());
        let row = "j,t,training,0,60,2,8,0,1000,1024,,beijing,,,,false";
        let parse = |topology: &str| {
            let text = format!("{header}\n{row},{topology}\n");
            parse_workload(&text, "w.csv", &catalog).map(|jobs| jobs[0].1.topology)
        };
        let ask = |level, required| Some(TopologyAsk { level, required }.into());
        assert_eq!(parse("").unwrap(), None);
        assert_eq!(parse("required:rack").unwrap(), ask(Level::Rack, true));
        assert_eq!(parse("preferred:block").unwrap(), ask(Level::Block, false));
        assert_eq!(parse("required:nvlink").unwrap(), ask(Level::Nvlink, true));
        for bad in ["rack", "required:shelf", "maybe:rack"] {
            let err = parse(bad).unwrap_err().to_string();
            assert!(
                err.contains("w.csv:2") && err.contains(&format!("topology {bad:?}")),
                "{bad}: {err}"
            );
        }
    }

    #[test]
    fn bad_workload_rows_name_file_line_and_field() {
        let catalog = Catalog::default_catalog();
        let header = DEFAULT_WORKLOAD_CSV.lines().next().unwrap();
        let bad = format!("{header}\nj,t,training,0,60,1,1,0,1000,1024,,atlantis,,,,false\n");
        let err = parse_workload(&bad, "w.csv", &catalog)
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("w.csv:2") && err.contains("user_region") && err.contains("atlantis"),
            "{err}"
        );
        let bad = format!("{header}\nj,t,sleeping,0,60,1,1,0,1000,1024,,beijing,,,,false\n");
        let err = parse_workload(&bad, "w.csv", &catalog)
            .unwrap_err()
            .to_string();
        assert!(err.contains("w.csv:2") && err.contains("kind"), "{err}");
        let bad = format!("{header}\nj,t,training,0,60,1,1,0,1000,1024,,beijing,,,nvida,false\n");
        let err = parse_workload(&bad, "w.csv", &catalog)
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("w.csv:2") && err.contains("accelerator_vendor") && err.contains("nvida"),
            "{err}"
        );
    }

    #[test]
    fn a_bad_value_names_its_column_and_a_repeated_job_name_is_refused() {
        let catalog = Catalog::default_catalog();
        let header = DEFAULT_WORKLOAD_CSV.lines().next().unwrap();
        let bad = format!("{header}\nj,t,training,0,sixty,1,1,0,1000,1024,,beijing,,,,false\n");
        let err = parse_workload(&bad, "w.csv", &catalog)
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("w.csv:2") && err.contains("column `duration_s`"),
            "{err}"
        );
        let row = |name: &str, tenant: &str| {
            format!("{name},{tenant},training,0,60,1,1,0,1000,1024,,beijing,,,,false\n")
        };
        let ok = format!("{header}\n{}{}", row("j", "a"), row("j", "b"));
        assert_eq!(parse_workload(&ok, "w.csv", &catalog).unwrap().len(), 2);
        let dup = format!(
            "{header}\n{}{}{}",
            row("j", "a"),
            row("k", "a"),
            row("j", "a")
        );
        let err = parse_workload(&dup, "w.csv", &catalog)
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("w.csv:4") && err.contains("\"j\"") && err.contains("line 2"),
            "{err}"
        );
    }

    #[test]
    fn the_vendor_columns_are_optional_and_carried_to_the_job() {
        let catalog = Catalog::default_catalog();
        let old = "name,tenant,kind,arrival_s,duration_s,replicas,gpus_per_replica,gpu_milli,cpu_milli,memory_mib,gpu_models,user_region,latency_slo_ms,residency\n\
                   j,t,training,0,60,1,1,0,1000,1024,,beijing,,\n";
        let jobs = parse_workload(old, "old.csv", &catalog).unwrap();
        assert_eq!(jobs[0].1.accelerator_vendor, None);
        assert!(!jobs[0].1.mixed_models);
        let header = DEFAULT_WORKLOAD_CSV.lines().next().unwrap();
        let new = format!("{header}\nj,t,training,0,60,4,1,0,1000,1024,,beijing,,,cann,true\n");
        let jobs = parse_workload(&new, "new.csv", &catalog).unwrap();
        assert_eq!(jobs[0].1.accelerator_vendor.as_deref(), Some("cann"));
        assert!(jobs[0].1.mixed_models);
    }
}

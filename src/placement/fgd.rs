//! Fragmentation as FGD (USENIX ATC '23) defines it: the free GPU share that the
//! workload's typical task shapes, weighted by popularity, could not use.

use std::collections::HashMap;

use super::model::{ModelId, ModelSet, MAX_MODELS};
use super::request::{GpuDemand, Request, MILLI_PER_GPU};

/// One typical task shape and its share of the workload.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Shape {
    pub cpu_milli: u32,
    /// Milli-share needed on each device (1000 for whole devices; 0 = no GPU).
    pub milli_per_gpu: u16,
    /// Devices needed (0 = CPU-only).
    pub gpus: u8,
    pub models: ModelSet,
    /// Popularity: this shape's count over all counted pods.
    pub weight: f64,
}

/// Counted task shapes; [`Shapes::typical`] keeps the most popular ones.
#[derive(Clone, Debug, Default)]
pub struct ShapeCounter {
    counts: HashMap<(u32, u16, u8, u64), u64>,
    total: u64,
}

/// Shape key of a request: CPU, milli per GPU, GPU count, allowed models.
fn shape_key(r: &Request) -> (u32, u16, u8, u64) {
    let (milli, gpus) = match r.gpu {
        GpuDemand::None => (0, 0),
        GpuDemand::Shared { milli } => (milli, 1),
        GpuDemand::Whole { count } => (MILLI_PER_GPU, count),
    };
    (r.cpu_milli, milli, gpus, r.models.0)
}

impl ShapeCounter {
    pub fn add(&mut self, r: &Request) {
        *self.counts.entry(shape_key(r)).or_insert(0) += 1;
        self.total += 1;
    }
    pub fn total(&self) -> u64 {
        self.total
    }
}

/// The typical shapes of a workload.
#[derive(Clone, Debug, Default)]
pub struct Shapes {
    pub shapes: Vec<Shape>,
    /// Per GPU model: milli-GPU the shapes that may run on it ask per CPU
    /// milli (popularity-weighted); infinite when they ask no CPU.
    gpu_per_cpu: Vec<f64>,
    /// The same over all shapes, CPU-only ones included.
    workload_gpu_per_cpu: f64,
}

impl Shapes {
    /// Typical shapes as given (weights are popularity shares).
    pub fn new(shapes: Vec<Shape>) -> Self {
        let per_model = (0..MAX_MODELS as ModelId)
            .map(|model| {
                gpu_per_cpu(
                    shapes
                        .iter()
                        .filter(|s| s.gpus > 0 && s.models.contains(model)),
                )
            })
            .collect();
        Shapes {
            workload_gpu_per_cpu: gpu_per_cpu(shapes.iter()),
            shapes,
            gpu_per_cpu: per_model,
        }
    }

    /// Milli-GPU the whole workload asks per CPU milli it asks (infinite
    /// when it asks no CPU). Below the cluster's own ratio, CPU runs out
    /// before GPUs cluster-wide and stranded GPUs cannot be avoided.
    pub fn workload_gpu_per_cpu(&self) -> f64 {
        self.workload_gpu_per_cpu
    }

    /// Weighs each GPU shape by its reach as well as its popularity: its
    /// weight is multiplied by (cluster GPUs / GPUs of the models it may run
    /// on), so the few places a model-constrained shape fits are protected
    /// in proportion to how few they are. Shapes that run anywhere keep
    /// their weight; the CPU-per-GPU ratios stay those of popularity.
    /// `gpus_by_model[m]` is the cluster's GPU count of model `m`.
    pub fn weigh_by_reach(&mut self, gpus_by_model: &[u64]) {
        let total: u64 = gpus_by_model.iter().sum();
        for s in self.shapes.iter_mut().filter(|s| s.gpus > 0) {
            let reach: u64 = gpus_by_model
                .iter()
                .enumerate()
                .filter(|&(m, _)| s.models.contains(m as ModelId))
                .map(|(_, g)| g)
                .sum();
            if reach > 0 {
                s.weight *= total as f64 / reach as f64;
            }
        }
    }

    /// The most popular shapes covering `coverage` (e.g. 0.95) of the counted
    /// pods, each weighted by its share of ALL counted pods.
    pub fn typical(counter: &ShapeCounter, coverage: f64) -> Self {
        Self::weighted(counter, coverage, |_| 1)
    }

    fn weighted(
        counter: &ShapeCounter,
        coverage: f64,
        unit: impl Fn((u32, u16, u8, u64)) -> u64,
    ) -> Self {
        let mut v: Vec<_> = counter
            .counts
            .iter()
            .map(|(k, c)| (*k, *c * unit(*k)))
            .filter(|(_, c)| *c > 0)
            .collect();
        let total: u64 = v.iter().map(|(_, c)| c).sum();
        // Most popular first; the key orders equal counts deterministically.
        v.sort_by(|a, b| b.1.cmp(&a.1).then(a.0.cmp(&b.0)));
        let total = total.max(1) as f64;
        let mut shapes = Vec::new();
        let mut covered = 0u64;
        for ((cpu, milli, gpus, models), count) in v {
            if covered as f64 >= coverage * total {
                break;
            }
            covered += count;
            shapes.push(Shape {
                cpu_milli: cpu,
                milli_per_gpu: milli,
                gpus,
                models: ModelSet(models),
                weight: count as f64 / total,
            });
        }
        Shapes::new(shapes)
    }

    /// From a workload sample.
    pub fn from_requests<'a>(reqs: impl IntoIterator<Item = &'a Request>, coverage: f64) -> Self {
        let mut c = ShapeCounter::default();
        for r in reqs {
            c.add(r);
        }
        Self::typical(&c, coverage)
    }

    /// Expected fragmented milli-GPU of a node state: `model` and `cpu_free`
    /// of the node, `free` its usable free share per device.
    pub fn fragmentation(&self, model: ModelId, cpu_free: u32, free: &[u16]) -> f64 {
        let total: u32 = free.iter().map(|&f| f as u32).sum();
        if total == 0 {
            return 0.0;
        }
        let mut f = 0.0;
        for s in &self.shapes {
            f += s.weight * shape_fragment(s, model, cpu_free, free, total) as f64;
        }
        f
    }
}

impl Shapes {
    /// Free GPU share of a node that its free CPU cannot feed: the shapes
    /// that run on `model` ask on average one milli-GPU per so many CPU
    /// milli, so `cpu_free` supports only that much of `gpu_free`. A node
    /// whose CPU runs out first strands its GPUs, which FGD's one-instance
    /// test of each shape does not see.
    pub fn cpu_stranded(&self, model: ModelId, cpu_free: u32, gpu_free: u32) -> f64 {
        let ratio = self.gpu_per_cpu.get(model as usize).copied();
        match ratio {
            Some(r) if r.is_finite() => (gpu_free as f64 - cpu_free as f64 * r).max(0.0),
            _ => 0.0,
        }
    }
}

/// Popularity-weighted milli-GPU asked per CPU milli asked by `shapes`
/// (infinite when they ask no CPU).
fn gpu_per_cpu<'a>(shapes: impl Iterator<Item = &'a Shape>) -> f64 {
    let (gpu, cpu) = shapes.fold((0.0, 0.0), |(gpu, cpu), s| {
        (
            gpu + s.weight * s.gpus as f64 * s.milli_per_gpu as f64,
            cpu + s.weight * s.cpu_milli as f64,
        )
    });
    if cpu > 0.0 {
        gpu / cpu
    } else {
        f64::INFINITY
    }
}

/// Devices per node up to which [`FragMemo`] memoises node states.
const MEMO_DEVICES: usize = 8;
/// Memoised states kept at most before the memo starts afresh.
const MEMO_ENTRIES_MAX: usize = 1 << 20;

/// A node state as fragmentation sees it: the model, how many of the shapes'
/// CPU thresholds the free CPU meets, and the sorted free shares.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
struct StateKey {
    model: ModelId,
    cpu_level: u16,
    devices: u8,
    free: [u16; MEMO_DEVICES],
}

/// Multiply-rotate hash (FxHash) for the small integer keys of the memo: the
/// default SipHash costs more than the lookup it guards.
#[derive(Clone, Copy, Debug, Default)]
pub(crate) struct FxHasher(u64);

impl std::hash::Hasher for FxHasher {
    fn finish(&self) -> u64 {
        self.0
    }
    /// Eight bytes at a time, the last few zero-padded.
    fn write(&mut self, bytes: &[u8]) {
        let mut chunks = bytes.chunks_exact(8);
        for chunk in &mut chunks {
            self.write_u64(u64::from_le_bytes(chunk.try_into().expect("8 bytes")));
        }
        let rest = chunks.remainder();
        if !rest.is_empty() {
            let mut b = [0u8; 8];
            b[..rest.len()].copy_from_slice(rest);
            self.write_u64(u64::from_le_bytes(b));
        }
    }
    fn write_u8(&mut self, i: u8) {
        self.write_u64(i as u64)
    }
    fn write_u16(&mut self, i: u16) {
        self.write_u64(i as u64)
    }
    fn write_u32(&mut self, i: u32) {
        self.write_u64(i as u64)
    }
    fn write_u64(&mut self, i: u64) {
        self.0 = (self.0.rotate_left(5) ^ i).wrapping_mul(0x51_7c_c1_b7_27_22_0a_95);
    }
    fn write_usize(&mut self, i: usize) {
        self.write_u64(i as u64)
    }
}

pub(crate) type FxBuild = std::hash::BuildHasherDefault<FxHasher>;

/// Fragmentation by node state: nodes in equal states (the common case —
/// idle nodes of one type, nodes filled by the same shapes) cost one lookup.
#[derive(Clone, Debug, Default)]
pub struct FragMemo {
    cpu_steps: Vec<u32>,
    map: HashMap<StateKey, f64, FxBuild>,
}

impl FragMemo {
    /// An empty memo for `shapes` (rebuild it when the shapes change).
    pub fn new(shapes: &Shapes) -> Self {
        let mut cpu_steps: Vec<u32> = shapes.shapes.iter().map(|s| s.cpu_milli).collect();
        cpu_steps.sort_unstable();
        cpu_steps.dedup();
        FragMemo {
            cpu_steps,
            map: HashMap::default(),
        }
    }

    /// `shapes.fragmentation(model, cpu_free, free)`, memoised.
    pub fn fragmentation(
        &mut self,
        shapes: &Shapes,
        model: ModelId,
        cpu_free: u32,
        free: &[u16],
    ) -> f64 {
        if free.len() > MEMO_DEVICES {
            return shapes.fragmentation(model, cpu_free, free);
        }
        let mut key = StateKey {
            model,
            cpu_level: self.cpu_steps.partition_point(|&c| c <= cpu_free) as u16,
            devices: free.len() as u8,
            free: [0; MEMO_DEVICES],
        };
        key.free[..free.len()].copy_from_slice(free);
        key.free[..free.len()].sort_unstable();
        if let Some(&f) = self.map.get(&key) {
            return f;
        }
        if self.map.len() >= MEMO_ENTRIES_MAX {
            self.map.clear();
        }
        let f = shapes.fragmentation(model, cpu_free, free);
        self.map.insert(key, f);
        f
    }
}

/// Free share of the node that shape `s` cannot use.
#[inline]
fn shape_fragment(s: &Shape, model: ModelId, cpu_free: u32, free: &[u16], total: u32) -> u32 {
    if s.gpus == 0 || !s.models.contains(model) || cpu_free < s.cpu_milli {
        return total;
    }
    let mut fitting = 0u32;
    let mut stranded = 0u32;
    for &f in free {
        if f >= s.milli_per_gpu {
            fitting += 1;
        } else {
            stranded += f as u32;
        }
    }
    if fitting < s.gpus as u32 {
        total
    } else {
        stranded
    }
}

/// The paper's integer score for a fragmentation change: `⌊100·sigmoid(drop/1000)⌋`.
pub fn sigmoid_score(before: f64, after: f64) -> i64 {
    let x = (before - after) / 1000.0;
    (100.0 / (1.0 + (-x).exp())) as i64
}

#[cfg(test)]
mod tests {
    use super::*;

    fn shapes() -> Shapes {
        Shapes::new(vec![
            Shape {
                cpu_milli: 4000,
                milli_per_gpu: 500,
                gpus: 1,
                models: ModelSet::ANY,
                weight: 0.5,
            },
            Shape {
                cpu_milli: 8000,
                milli_per_gpu: 1000,
                gpus: 2,
                models: ModelSet::ANY,
                weight: 0.5,
            },
        ])
    }

    /// Bytes hash as little-endian words, the last one zero-padded, one
    /// word at a time: the same value for a string however it is split
    /// into words (every key's hash, and so every map's order, is kept).
    #[test]
    fn bytes_hash_as_padded_words() {
        use std::hash::Hasher;
        let bytes: Vec<u8> = (1..=21).collect();
        for len in 0..=bytes.len() {
            let mut h = FxHasher::default();
            h.write(&bytes[..len]);
            let mut words = FxHasher::default();
            for chunk in bytes[..len].chunks(8) {
                let mut b = [0u8; 8];
                b[..chunk.len()].copy_from_slice(chunk);
                words.write_u64(u64::from_le_bytes(b));
            }
            assert_eq!(h.finish(), words.finish(), "{len} bytes");
        }
    }

    #[test]
    fn fragment_by_hand() {
        let s = shapes();
        // Free [1000, 300]: shape 0 fits on device 0, strands 300;
        // shape 1 needs two whole devices: all 1300 is fragment.
        let f = s.fragmentation(0, 64000, &[1000, 300]);
        assert!((f - (0.5 * 300.0 + 0.5 * 1300.0)).abs() < 1e-9, "{f}");
        // Not enough CPU for either: everything is fragment.
        let f = s.fragmentation(0, 1000, &[1000, 300]);
        assert!((f - 1300.0).abs() < 1e-9, "{f}");
        // Two whole devices: nothing stranded.
        assert_eq!(s.fragmentation(0, 64000, &[1000, 1000]), 0.0);
    }

    #[test]
    fn cpu_stranded_by_hand() {
        let s = shapes();
        // GPU per CPU: (0.5·500 + 0.5·2000) / (0.5·4000 + 0.5·8000) = 1250/6000.
        // 12000 CPU milli feed 2500 milli-GPU: of 4000 free, 1500 is stranded.
        let f = s.cpu_stranded(0, 12000, 4000);
        assert!((f - 1500.0).abs() < 1e-9, "{f}");
        assert_eq!(s.cpu_stranded(0, 24000, 4000), 0.0);
        // No shape asks CPU: nothing is stranded by CPU (and no NaN at 0 CPU).
        let free_cpu = Shapes::new(vec![Shape {
            cpu_milli: 0,
            ..s.shapes[0]
        }]);
        assert_eq!(free_cpu.cpu_stranded(0, 0, 4000), 0.0);
        assert_eq!(free_cpu.workload_gpu_per_cpu(), f64::INFINITY);
        // Half 2-GPU pods asking 8000, half CPU-only pods asking 9000: 1000 / 8500.
        let with_cpu_only = Shapes::new(vec![
            Shape {
                weight: 0.5,
                ..s.shapes[1]
            },
            Shape {
                cpu_milli: 9000,
                milli_per_gpu: 0,
                gpus: 0,
                models: ModelSet::ANY,
                weight: 0.5,
            },
        ]);
        let r = with_cpu_only.workload_gpu_per_cpu();
        assert!((r - 1000.0 / 8500.0).abs() < 1e-12, "{r}");
    }

    #[test]
    fn weigh_by_reach_by_hand() {
        // Model 0 has 2 GPUs, model 1 has 6: a shape limited to model 0
        // reaches 2 of 8 GPUs and weighs 4×; one that runs anywhere keeps 0.5.
        let mut s = shapes();
        s.shapes[0].models = ModelSet::only(0);
        s.weigh_by_reach(&[2, 6]);
        assert!((s.shapes[0].weight - 2.0).abs() < 1e-12);
        assert!((s.shapes[1].weight - 0.5).abs() < 1e-12);
        // The CPU-per-GPU ratio of model 0 is still that of popularity.
        assert!((s.cpu_stranded(0, 12000, 4000) - 1500.0).abs() < 1e-9);
    }

    #[test]
    fn typical_keeps_popular_shapes() {
        let a = Request::shared(1000, 0, 500);
        let b = Request::whole(1000, 0, 2);
        let reqs: Vec<_> = std::iter::repeat_n(a.clone(), 19).chain([b]).collect();
        let s = Shapes::from_requests(&reqs, 0.95);
        assert_eq!(s.shapes.len(), 1);
        assert!((s.shapes[0].weight - 0.95).abs() < 1e-9);
        assert_eq!(sigmoid_score(0.0, 0.0), 50);
        assert!(sigmoid_score(2000.0, 0.0) > 80);
    }
}

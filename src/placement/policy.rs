//! Placement policies, chosen at run time by name.

use std::fmt;
use std::str::FromStr;

/// A placement policy. Every policy filters the same way (resources, model,
/// labels, healthy devices) and differs only in how it scores feasible nodes;
/// equal scores go to the node earliest in the engine's tie-break order.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Default)]
pub enum Policy {
    /// Uniformly random feasible node.
    Random,
    /// Least CPU and GPU left after placement (FGD paper's BestFit).
    BestFit,
    /// Smallest dot product of free resources and demand (Tetris).
    DotProd,
    /// Prefer partly used GPUs, then used nodes, then idle nodes.
    GpuPacking,
    /// Put pods with the same GPU demand together.
    GpuClustering,
    /// Fragmentation Gradient Descent (ATC '23), shapes from the whole workload.
    Fgd,
    /// zhisuan's default: FGD whose fragmentation also counts the free GPU
    /// share a node's free CPU can no longer feed (at the shapes' mean CPU
    /// per GPU for that GPU model), so CPU-hungry pods go where CPU is
    /// plentiful instead of stranding GPUs; the device inside the node is
    /// chosen by exact fragmentation then best fit. Shapes from the workload
    /// when known, else learned online from arrivals.
    #[default]
    Zhisuan,
}

impl Policy {
    /// Every policy, baselines first.
    pub const ALL: [Policy; 7] = [
        Policy::Random,
        Policy::BestFit,
        Policy::DotProd,
        Policy::GpuPacking,
        Policy::GpuClustering,
        Policy::Fgd,
        Policy::Zhisuan,
    ];

    /// The name accepted by [`Policy::from_str`].
    pub fn name(self) -> &'static str {
        match self {
            Policy::Random => "random",
            Policy::BestFit => "bestfit",
            Policy::DotProd => "dotprod",
            Policy::GpuPacking => "gpupacking",
            Policy::GpuClustering => "gpuclustering",
            Policy::Fgd => "fgd",
            Policy::Zhisuan => "zhisuan",
        }
    }

    /// Whether the policy uses the workload's typical shapes.
    pub fn uses_shapes(self) -> bool {
        matches!(self, Policy::Fgd | Policy::Zhisuan)
    }
}

impl fmt::Display for Policy {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl FromStr for Policy {
    type Err = String;
    /// Case-insensitive; `default` means [`Policy::Zhisuan`].
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let lower = s.trim().to_ascii_lowercase();
        if lower == "default" {
            return Ok(Policy::Zhisuan);
        }
        Policy::ALL
            .into_iter()
            .find(|p| p.name() == lower)
            .ok_or_else(|| {
                let names: Vec<_> = Policy::ALL.iter().map(|p| p.name()).collect();
                format!(
                    "unknown policy {s:?}; choose one of: {}, default",
                    names.join(", ")
                )
            })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parse_names() {
        for p in Policy::ALL {
            assert_eq!(p.name().parse::<Policy>().unwrap(), p);
        }
        assert_eq!("FGD".parse::<Policy>().unwrap(), Policy::Fgd);
        assert_eq!("default".parse::<Policy>().unwrap(), Policy::Zhisuan);
        let e = "tetris".parse::<Policy>().unwrap_err();
        assert!(e.contains("tetris") && e.contains("bestfit"));
    }
}

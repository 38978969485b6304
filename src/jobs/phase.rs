//! Where a job is in its life: one phase type for the API, the simulated
//! cluster and the scheduler's views. The CRDs' status keeps its own finer
//! lifecycle ([`super::PHASES`]: Admitted and Preempted besides these,
//! capitalised as Kubernetes objects write them); [`Phase::of_status`] is
//! the one reading of it.

use serde::{Deserialize, Serialize};

/// Lifecycle phase.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Phase {
    Pending,
    Running,
    Succeeded,
    Failed,
    Cancelled,
}

impl Phase {
    /// Waiting or running: holds (or will hold) capacity.
    pub fn is_active(self) -> bool {
        matches!(self, Phase::Pending | Phase::Running)
    }

    /// The API's spelling (`pending`, …).
    pub fn as_str(self) -> &'static str {
        match self {
            Phase::Pending => "pending",
            Phase::Running => "running",
            Phase::Succeeded => "succeeded",
            Phase::Failed => "failed",
            Phase::Cancelled => "cancelled",
        }
    }

    /// A CRD's phase as a job's: Admitted and Preempted jobs wait
    /// (Pending); an object being deleted before it ended is Cancelled.
    pub fn of_status(status: Option<&str>, deleting: bool) -> Phase {
        match status {
            Some("Running") => Phase::Running,
            Some("Succeeded") => Phase::Succeeded,
            Some("Failed") => Phase::Failed,
            _ if deleting => Phase::Cancelled,
            _ => Phase::Pending,
        }
    }

    /// The CRDs' status spelling (`Pending`, …).
    pub fn as_status(self) -> &'static str {
        match self {
            Phase::Pending => "Pending",
            Phase::Running => "Running",
            Phase::Succeeded => "Succeeded",
            Phase::Failed => "Failed",
            Phase::Cancelled => "Cancelled",
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn spellings_agree_with_serde() {
        for p in [
            Phase::Pending,
            Phase::Running,
            Phase::Succeeded,
            Phase::Failed,
            Phase::Cancelled,
        ] {
            assert_eq!(serde_json::to_value(p).unwrap(), p.as_str());
            assert_eq!(p.as_status().to_lowercase(), p.as_str());
        }
        assert_eq!(Phase::of_status(Some("Preempted"), false), Phase::Pending);
        assert_eq!(Phase::of_status(Some("Admitted"), true), Phase::Cancelled);
        assert_eq!(Phase::of_status(Some("Succeeded"), true), Phase::Succeeded);
    }
}

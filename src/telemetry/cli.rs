//! Placeholder until issue #5 lands; the owner replaces this file.

/// Arguments (filled in by issue #5).
#[derive(clap::Args, Debug)]
pub struct AgentArgs {}

pub fn run(_args: AgentArgs) -> anyhow::Result<()> {
    anyhow::bail!("not built yet (issue #5)")
}

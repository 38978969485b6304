//! Placeholder until issue #3 lands; the owner replaces this file.

/// Arguments (filled in by issue #3).
#[derive(clap::Args, Debug)]
pub struct SimArgs {}

pub fn run(_args: SimArgs) -> anyhow::Result<()> {
    anyhow::bail!("not built yet (issue #3)")
}

//! Placeholder until issue #2 lands; the owner replaces this file.

/// Arguments (filled in by issue #2).
#[derive(clap::Args, Debug)]
pub struct ReplayArgs {}

pub fn run(_args: ReplayArgs) -> anyhow::Result<()> {
    anyhow::bail!("not built yet (issue #2)")
}

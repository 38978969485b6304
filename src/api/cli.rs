//! Placeholder until issue #7 lands; the owner replaces this file.

/// Arguments (filled in by issue #7).
#[derive(clap::Args, Debug)]
pub struct ApiArgs {}

pub fn run(_args: ApiArgs) -> anyhow::Result<()> {
    anyhow::bail!("not built yet (issue #7)")
}

//! Placeholder until issue #6 lands; the owner replaces this file.

/// Arguments (filled in by issue #6).
#[derive(clap::Args, Debug)]
pub struct StatementArgs {}

pub fn run(_args: StatementArgs) -> anyhow::Result<()> {
    anyhow::bail!("not built yet (issue #6)")
}

//! The embedded demo: the whole system in one process (issue #8).
//! Placeholder until issue #8 lands; the owner replaces this file.

/// Arguments (filled in by issue #8).
#[derive(clap::Args, Debug)]
pub struct DemoArgs {}

pub fn run(_args: DemoArgs) -> anyhow::Result<()> {
    anyhow::bail!("not built yet (issue #8)")
}

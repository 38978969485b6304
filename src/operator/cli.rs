//! Placeholder until issue #4 lands; the owner replaces this file.

/// Arguments of `zhisuan crd`.
#[derive(clap::Args, Debug)]
pub struct CrdArgs {}

/// Arguments of `zhisuan controller`.
#[derive(clap::Args, Debug)]
pub struct ControllerArgs {}

pub fn run_crd(_args: CrdArgs) -> anyhow::Result<()> {
    anyhow::bail!("not built yet (issue #4)")
}

pub fn run_controller(_args: ControllerArgs) -> anyhow::Result<()> {
    anyhow::bail!("not built yet (issue #4)")
}

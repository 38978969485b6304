//! `zhisuan api`: serve the quota API. (Wired to the ledger and the in-process
//! World once those land.)

/// Arguments of `zhisuan api`.
#[derive(clap::Args, Debug)]
pub struct ApiArgs {}

pub fn run(_args: ApiArgs) -> anyhow::Result<()> {
    anyhow::bail!("`zhisuan api` is not wired yet: it needs the ledger store (issue #6) and the in-process World (issue #3)")
}

//! `zhisuan crd` and `zhisuan controller`.

use std::path::PathBuf;

use anyhow::Context;

use super::crd;

/// Arguments of `zhisuan crd`.
#[derive(clap::Args, Debug)]
pub struct CrdArgs {
    /// Write one file per CRD into this directory instead of printing a YAML stream.
    #[arg(long)]
    pub out_dir: Option<PathBuf>,
}

/// Arguments of `zhisuan controller`.
#[derive(clap::Args, Debug)]
pub struct ControllerArgs {}

pub fn run_crd(args: CrdArgs) -> anyhow::Result<()> {
    match args.out_dir {
        None => print!("{}", crd::crds_yaml()?),
        Some(dir) => {
            std::fs::create_dir_all(&dir)
                .with_context(|| format!("creating --out-dir {}", dir.display()))?;
            for (name, text) in crd::crd_files()? {
                let path = dir.join(name);
                std::fs::write(&path, text)
                    .with_context(|| format!("writing {}", path.display()))?;
            }
        }
    }
    Ok(())
}

pub fn run_controller(_args: ControllerArgs) -> anyhow::Result<()> {
    anyhow::bail!("not built yet (issue #4)")
}

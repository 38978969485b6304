//! Where the demo keeps its state: the ledger file (a kept `--db` or a
//! throw-away one), the checkpoint beside a kept one that lets a restart
//! carry on, the simulated start, and the admin key file.

use std::path::{Path, PathBuf};

use anyhow::Context as _;
use chrono::Utc;

use super::DemoArgs;
use crate::error::InputError;

/// Where a demo on a kept ledger got to, so a restart carries on from there.
#[derive(Debug, Clone, Copy, serde::Serialize, serde::Deserialize, PartialEq)]
pub(super) struct Checkpoint {
    /// Unix seconds the simulated world started at.
    start_s: i64,
    /// Simulated time reached.
    reached_s: i64,
}

fn checkpoint_path(db: &Path) -> PathBuf {
    let mut name = db.file_name().unwrap_or_default().to_os_string();
    name.push(".demo.json");
    db.with_file_name(name)
}

fn load_checkpoint(path: &Path) -> anyhow::Result<Option<Checkpoint>> {
    match std::fs::read_to_string(path) {
        Ok(text) => Ok(Some(serde_json::from_str(&text).map_err(|e| {
            InputError::new(format!(
                "{}: not a demo checkpoint ({e}); delete it to start the simulation over",
                path.display()
            ))
        })?)),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(e).with_context(|| format!("reading {}", path.display())),
    }
}

/// Written to a temporary file and renamed, so a crash never leaves half a checkpoint.
fn save_checkpoint(path: &Path, cp: &Checkpoint) -> anyhow::Result<()> {
    let tmp = path.with_extension("json.tmp");
    std::fs::write(&tmp, serde_json::to_vec(cp)?)?;
    std::fs::rename(&tmp, path)?;
    Ok(())
}

/// A private temporary directory for a throw-away ledger, removed on drop.
struct ScratchDir(PathBuf);

impl ScratchDir {
    fn new() -> anyhow::Result<ScratchDir> {
        let mut suffix = [0u8; 8];
        getrandom::fill(&mut suffix)
            .map_err(|e| anyhow::anyhow!("no randomness for a temp dir name: {e}"))?;
        let dir = std::env::temp_dir().join(format!("zhisuan-demo-{}", hex::encode(suffix)));
        std::fs::create_dir(&dir).with_context(|| format!("creating {}", dir.display()))?;
        Ok(ScratchDir(dir))
    }
}

impl Drop for ScratchDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// The demo's files and where its simulated time starts.
pub(super) struct DemoState {
    /// The throw-away directory of a run without `--db` (removed on drop).
    scratch: Option<ScratchDir>,
    /// The ledger file.
    pub(super) db: PathBuf,
    /// The checkpoint beside it (read and written for a kept `--db` only).
    checkpoint_path: PathBuf,
    /// Where the last run on a kept `--db` got to.
    checkpoint: Option<Checkpoint>,
    /// Unix seconds the simulated world starts at: a kept ledger's start,
    /// `--start-at`, or the current hour.
    pub(super) start_s: i64,
}

impl DemoState {
    /// The ledger file of `args` (or a fresh throw-away one) and how far a
    /// previous run on it got.
    pub(super) fn locate(args: &DemoArgs) -> anyhow::Result<DemoState> {
        let scratch = match &args.db {
            Some(_) => None,
            None => Some(ScratchDir::new()?),
        };
        let db = match (&args.db, &scratch) {
            (Some(p), _) => p.clone(),
            (None, Some(dir)) => dir.0.join("ledger.sqlite"),
            (None, None) => unreachable!("a scratch directory exists when --db is absent"),
        };
        let checkpoint_path = checkpoint_path(&db);
        let checkpoint = if scratch.is_none() {
            load_checkpoint(&checkpoint_path)?
        } else {
            None
        };
        let start_s = match (checkpoint, args.start_at) {
            (Some(c), _) => c.start_s,
            (None, Some(t)) => t.timestamp(),
            (None, None) => Utc::now().timestamp() / 3600 * 3600,
        };
        Ok(DemoState {
            scratch,
            db,
            checkpoint_path,
            checkpoint,
            start_s,
        })
    }

    /// Whether the ledger is kept (`--db`), so a restart carries on.
    pub(super) fn kept(&self) -> bool {
        self.scratch.is_none()
    }

    /// Where the simulated time carries on from.
    pub(super) fn resume_s(&self) -> i64 {
        self.checkpoint
            .map_or(self.start_s, |c| c.reached_s.max(self.start_s))
    }

    pub(super) fn checkpoint_path(&self) -> &Path {
        &self.checkpoint_path
    }

    /// Records that the simulated time reached `reached_s` (a kept ledger only).
    pub(super) fn save(&self, reached_s: i64) -> anyhow::Result<()> {
        if !self.kept() {
            return Ok(());
        }
        save_checkpoint(
            &self.checkpoint_path,
            &Checkpoint {
                start_s: self.start_s,
                reached_s,
            },
        )
    }

    /// Where a fresh admin key is written: the throw-away directory, or
    /// beside the kept ledger.
    pub(super) fn key_dir(&self) -> PathBuf {
        match (&self.scratch, self.db.parent()) {
            (Some(dir), _) => dir.0.clone(),
            (None, Some(parent)) if !parent.as_os_str().is_empty() => parent.to_path_buf(),
            (None, _) => PathBuf::from("."),
        }
    }
}

/// The admin key: `--admin-key-file` or ZHISUAN_ADMIN_KEY as for `zhisuan api`;
/// without either, a fresh random key written to `dir/admin.key` (mode 0600),
/// whose path (never the key) is printed.
pub(super) fn admin_key(file: Option<&Path>, dir: &Path) -> anyhow::Result<String> {
    if file.is_some() || std::env::var_os(crate::cmd::api::ADMIN_KEY_ENV).is_some() {
        return crate::cmd::api::admin_key(file);
    }
    let mut bytes = [0u8; 24];
    getrandom::fill(&mut bytes)
        .map_err(|e| anyhow::anyhow!("no randomness for an admin key: {e}"))?;
    let key = hex::encode(bytes);
    let path = dir.join("admin.key");
    {
        use std::io::Write as _;
        use std::os::unix::fs::OpenOptionsExt as _;
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(0o600)
            .open(&path)
            .with_context(|| format!("writing the admin key to {}", path.display()))?;
        writeln!(f, "{key}")?;
    }
    eprintln!(
        "demo: admin key written to {} (curl -H \"Authorization: Bearer $(cat {})\" …)",
        path.display(),
        path.display()
    );
    Ok(key)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn checkpoint_round_trips_beside_the_db() {
        let dir = tempfile::tempdir().unwrap();
        let db = dir.path().join("ledger.sqlite");
        let path = checkpoint_path(&db);
        assert_eq!(path, dir.path().join("ledger.sqlite.demo.json"));
        assert_eq!(load_checkpoint(&path).unwrap(), None);
        let cp = Checkpoint {
            start_s: 3600,
            reached_s: 7200,
        };
        save_checkpoint(&path, &cp).unwrap();
        assert_eq!(load_checkpoint(&path).unwrap(), Some(cp));
        std::fs::write(&path, "{not json").unwrap();
        let err = load_checkpoint(&path).unwrap_err();
        assert_eq!(crate::error::exit_code(&err), 2, "{err:#}");
    }
}

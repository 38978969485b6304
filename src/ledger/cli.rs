//! `zhisuan statement …` and `zhisuan ledger …`: the ledger from the command line.

use super::types::{Month, TokenRecord, UsageRecord, VoucherSpec};
use super::{Ledger, LedgerError, RateCard};
use crate::error::InputError;
use anyhow::Context;
use std::io::{BufRead, Write};
use std::path::PathBuf;

/// A ledger location kept in a file (a mounted Secret, so the URL and its
/// password are in no environment variable or pod spec): the file's text,
/// trimmed. Errors name the flag and the path, never the contents.
pub fn read_location_file(flag: &str, path: &std::path::Path) -> anyhow::Result<String> {
    let text = std::fs::read_to_string(path).map_err(|e| {
        InputError::new(format!(
            "{flag} {}: cannot read it ({e}); mount the Secret holding the ledger URL there",
            path.display()
        ))
    })?;
    let location = text.trim();
    if location.is_empty() || location.contains('\n') {
        return Err(InputError::new(format!(
            "{flag} {}: the file must hold one line, the ledger URL or SQLite path (it holds {} lines)",
            path.display(),
            location.lines().count()
        ))
        .into());
    }
    Ok(location.to_string())
}

/// Where the ledger lives: a SQLite file path or a `postgres://` URL.
#[derive(clap::Args, Debug, Clone)]
pub struct DbArg {
    /// Ledger database: a SQLite file path (created if absent) or postgres://user@host:port/db.
    #[arg(long, env = "ZHISUAN_LEDGER_DB", default_value = "zhisuan-ledger.db")]
    pub db: String,
}

impl DbArg {
    /// Opens the ledger, creating a SQLite file that is not there (only
    /// `zhisuan ledger init` does).
    pub fn create_or_open(&self) -> anyhow::Result<Ledger> {
        Ledger::open(&self.db)
            .map_err(LedgerError::into_anyhow)
            .with_context(|| format!("opening ledger {}", redact_url(&self.db)))
    }

    /// Opens an existing ledger: a SQLite path that is not there is an
    /// error (a mistyped `--db` must not answer from a new, empty ledger).
    pub fn open(&self) -> anyhow::Result<Ledger> {
        let sqlite = !self.db.contains("://") && self.db != ":memory:";
        if sqlite && !std::path::Path::new(&self.db).exists() {
            return Err(crate::error::InputError::new(format!(
                "--db {}: no ledger there; check the path, or create one with `zhisuan ledger init --db {}`",
                self.db, self.db
            ))
            .into());
        }
        self.create_or_open()
    }
}

/// Hides a password in a connection URL before it is printed or logged
/// (every command that takes a ledger URL goes through this one).
pub fn redact_url(url: &str) -> String {
    let (base, query) = match url.split_once('?') {
        Some((b, q)) => (b, Some(q)),
        None => (url, None),
    };
    let mut out = match (base.find("://"), base.rfind('@')) {
        (Some(s), Some(at)) if at > s => {
            let creds = &base[s + 3..at];
            match creds.split_once(':') {
                Some((user, _)) => format!("{}{}:***{}", &base[..s + 3], user, &base[at..]),
                None => base.to_string(),
            }
        }
        _ => base.to_string(),
    };
    // Every query parameter's value: `password=` is one, and others
    // (`sslpassword`, tokens) may be secrets too.
    if let Some(q) = query {
        let params: Vec<String> = q
            .split('&')
            .map(|p| match p.split_once('=') {
                Some((k, _)) => format!("{k}=***"),
                None => p.to_string(),
            })
            .collect();
        out = format!("{out}?{}", params.join("&"));
    }
    out
}

/// Arguments of `zhisuan statement`.
#[derive(clap::Args, Debug)]
pub struct StatementArgs {
    /// Tenant name.
    #[arg(long)]
    pub tenant: String,
    /// Month, YYYY-MM (UTC).
    #[arg(long)]
    pub month: String,
    /// Print CSV instead of JSON.
    #[arg(long)]
    pub csv: bool,
    #[command(flatten)]
    pub db: DbArg,
}

pub fn run(args: StatementArgs) -> anyhow::Result<()> {
    let month = Month::parse(&args.month).map_err(LedgerError::into_anyhow)?;
    let ledger = args.db.open()?;
    let st = ledger
        .statement(&args.tenant, month)
        .map_err(LedgerError::into_anyhow)?;
    let out = if args.csv {
        st.to_csv()
    } else {
        serde_json::to_string_pretty(&st)? + "\n"
    };
    std::io::stdout().write_all(out.as_bytes())?;
    Ok(())
}

/// Arguments of `zhisuan ledger`.
#[derive(clap::Args, Debug)]
pub struct LedgerArgs {
    #[command(subcommand)]
    pub cmd: LedgerCmd,
}

#[derive(clap::Subcommand, Debug)]
pub enum LedgerCmd {
    /// Create (or migrate) the ledger and install the default rate card if it has none.
    Init(DbArg),
    /// Create a tenant.
    Tenant {
        name: String,
        #[arg(long)]
        parent: Option<String>,
        #[command(flatten)]
        db: DbArg,
    },
    /// Issue a voucher from a JSON spec (fields as VoucherSpec; copay_ratio_bp in basis points).
    Voucher {
        /// JSON file with the voucher spec.
        #[arg(long)]
        spec: PathBuf,
        #[command(flatten)]
        db: DbArg,
    },
    /// Add the next rate card version from a JSON file.
    RateCard {
        #[arg(long)]
        file: PathBuf,
        #[command(flatten)]
        db: DbArg,
    },
    /// Recompute the tamper-evident chain of journal entries and voucher
    /// redemptions and name the first broken link (exit status 1 if broken).
    Verify {
        /// Also check that the chain holds this head (SEQ:HASH, as a statement's `chain_head` gives it).
        #[arg(long)]
        head: Option<super::ChainHead>,
        /// Print the report as JSON.
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        db: DbArg,
    },
    /// Ingest usage and/or token records from JSON Lines files, in batches
    /// (each batch one durable transaction; re-running skips what is stored).
    Ingest {
        /// Usage records, one JSON object per line.
        #[arg(long)]
        usage: Option<PathBuf>,
        /// Token records, one JSON object per line.
        #[arg(long)]
        tokens: Option<PathBuf>,
        /// Records per transaction.
        #[arg(long, default_value_t = 5000)]
        batch: usize,
        #[command(flatten)]
        db: DbArg,
    },
}

pub fn run_ledger(args: LedgerArgs) -> anyhow::Result<()> {
    match args.cmd {
        LedgerCmd::Init(db) => {
            let l = db.create_or_open()?;
            let added = l
                .ensure_rate_card("cli")
                .map_err(LedgerError::into_anyhow)?;
            println!(
                "{}",
                serde_json::json!({ "db": redact_url(&db.db), "default_rate_card_added": added })
            );
        }
        LedgerCmd::Tenant { name, parent, db } => {
            let t = db
                .open()?
                .create_tenant("cli", &name, parent.as_deref())
                .map_err(LedgerError::into_anyhow)?;
            println!("{}", serde_json::to_string(&t)?);
        }
        LedgerCmd::Voucher { spec, db } => {
            let spec: VoucherSpec = read_json(&spec)?;
            let v = db
                .open()?
                .issue_voucher("cli", &spec)
                .map_err(LedgerError::into_anyhow)?;
            println!("{}", serde_json::to_string(&v)?);
        }
        LedgerCmd::RateCard { file, db } => {
            let card: RateCard = read_json(&file)?;
            db.open()?
                .add_rate_card("cli", &card)
                .map_err(LedgerError::into_anyhow)?;
            println!("{}", serde_json::json!({ "version": card.version }));
        }
        LedgerCmd::Verify { head, json, db } => {
            let report = db
                .open()?
                .verify_chain(head.as_ref())
                .map_err(LedgerError::into_anyhow)?;
            if json {
                println!("{}", serde_json::to_string_pretty(&report)?);
            }
            match &report.broken {
                None => {
                    if !json {
                        let head = report
                            .head
                            .as_ref()
                            .map_or("none".into(), |h| h.to_string());
                        println!(
                            "chain intact: {} links ({} journal entries, {} redemptions); head {head}",
                            report.links, report.journal_entries, report.redemptions
                        );
                    }
                }
                Some(b) => {
                    anyhow::bail!(
                        "ledger chain broken at link {} ({}): {}",
                        b.seq,
                        b.row,
                        b.why
                    )
                }
            }
        }
        LedgerCmd::Ingest {
            usage,
            tokens,
            batch,
            db,
        } => {
            if usage.is_none() && tokens.is_none() {
                return Err(
                    InputError::new("ingest: give --usage FILE and/or --tokens FILE").into(),
                );
            }
            if batch == 0 {
                return Err(InputError::new("--batch: must be at least 1").into());
            }
            let ledger = db.open()?;
            let mut total = super::IngestReport::default();
            if let Some(p) = usage {
                ingest_file::<UsageRecord>(&p, batch, &mut total, |b| ledger.ingest(b, &[]))?;
            }
            if let Some(p) = tokens {
                ingest_file::<TokenRecord>(&p, batch, &mut total, |b| ledger.ingest(&[], b))?;
            }
            println!("{}", serde_json::to_string(&total)?);
        }
    }
    Ok(())
}

fn read_json<T: serde::de::DeserializeOwned>(path: &PathBuf) -> anyhow::Result<T> {
    let text =
        std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    serde_json::from_str(&text)
        .map_err(|e| InputError::new(format!("{}: {e}", path.display())).into())
}

/// Streams a JSON Lines file in batches; after each committed batch prints
/// `committed <records so far>` on stderr (the kill -9 test watches it).
fn ingest_file<T: serde::de::DeserializeOwned>(
    path: &PathBuf,
    batch: usize,
    total: &mut super::IngestReport,
    mut ingest: impl FnMut(&[T]) -> super::Result<super::IngestReport>,
) -> anyhow::Result<()> {
    let file = std::fs::File::open(path).with_context(|| format!("opening {}", path.display()))?;
    let mut buf: Vec<T> = Vec::with_capacity(batch);
    let mut first_line = 1;
    let mut done = 0usize;
    let mut flush = |buf: &mut Vec<T>, first_line: usize| -> anyhow::Result<()> {
        if buf.is_empty() {
            return Ok(());
        }
        let r = ingest(buf).map_err(|e| {
            // Name the line: records[i] in the batch is line first_line + i.
            LedgerError::into_anyhow(e).context(format!(
                "{}: batch starting at line {first_line}",
                path.display()
            ))
        })?;
        total.usage_new += r.usage_new;
        total.usage_duplicate += r.usage_duplicate;
        total.tokens_new += r.tokens_new;
        total.tokens_duplicate += r.tokens_duplicate;
        total.gross_fen += r.gross_fen;
        total.voucher_fen += r.voucher_fen;
        total.net_fen += r.net_fen;
        done += buf.len();
        eprintln!("committed {done}");
        buf.clear();
        Ok(())
    };
    for (i, line) in std::io::BufReader::new(file).lines().enumerate() {
        let line = line.with_context(|| format!("reading {}", path.display()))?;
        if line.trim().is_empty() {
            continue;
        }
        let rec: T = serde_json::from_str(&line)
            .map_err(|e| InputError::new(format!("{} line {}: {e}", path.display(), i + 1)))?;
        buf.push(rec);
        if buf.len() >= batch {
            flush(&mut buf, first_line)?;
            first_line = i + 2;
        }
    }
    flush(&mut buf, first_line)
}

#[cfg(test)]
mod tests {
    use super::{read_location_file, redact_url};

    #[test]
    fn a_location_file_gives_its_one_line_and_errors_never_show_its_contents() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("url");
        std::fs::write(&path, "postgres://zs:s3cret@db:5432/ledger\n").unwrap();
        assert_eq!(
            read_location_file("--db-file", &path).unwrap(),
            "postgres://zs:s3cret@db:5432/ledger"
        );
        std::fs::write(
            &path,
            "postgres://zs:s3cret@db/a\npostgres://zs:s3cret@db/b\n",
        )
        .unwrap();
        let err = read_location_file("--db-file", &path)
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("--db-file") && err.contains("2 lines"),
            "{err}"
        );
        assert!(!err.contains("s3cret"), "{err}");
        std::fs::write(&path, "  \n").unwrap();
        assert!(read_location_file("--db-file", &path).is_err());
        let err = read_location_file("--ledger-file", &dir.path().join("none"))
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("--ledger-file") && err.contains("mount the Secret"),
            "{err}"
        );
    }

    #[test]
    fn passwords_never_printed() {
        assert_eq!(
            redact_url("postgres://zs:s3cret@127.0.0.1:5432/ledger"),
            "postgres://zs:***@127.0.0.1:5432/ledger"
        );
        assert_eq!(redact_url("ledger.db"), "ledger.db");
        assert_eq!(
            redact_url("postgres://zs@db/ledger?password=s3cret&sslmode=require"),
            "postgres://zs@db/ledger?password=***&sslmode=***"
        );
    }

    #[test]
    fn locations_other_than_a_postgres_url_or_a_path_are_refused_unechoed() {
        use crate::ledger::check_location;
        for bad in [
            "host=db password=s3cret dbname=ledger",
            "user=zs PASSWORD=s3cret",
            "mysql://zs:s3cret@db/ledger",
        ] {
            let e = check_location(bad).unwrap_err().to_string();
            assert!(!e.contains("s3cret"), "{e}");
            assert!(e.contains("postgres://"), "{e}");
        }
        for good in [
            "ledger.db",
            "/var/lib/zhisuan/ledger.sqlite",
            ":memory:",
            "postgresql://db/l",
        ] {
            assert!(check_location(good).is_ok(), "{good}");
        }
    }

    #[test]
    fn a_missing_ledger_file_is_an_error_except_for_init() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("typo.db").to_str().unwrap().to_string();
        let db = super::DbArg { db: path.clone() };
        let e = db.open().err().unwrap().to_string();
        assert!(e.contains("zhisuan ledger init"), "{e}");
        assert!(
            !std::path::Path::new(&path).exists(),
            "the failed open created {path}"
        );
        db.create_or_open().unwrap();
        db.open().unwrap();
    }
}

//! The simulated cluster's journal and the claim on a ledger.
//!
//! `zhisuan api --backend world` and the demo bill simulated usage. Their
//! world is deterministic given its inputs, so the inputs that come from
//! outside (API submissions, cancellations, quotas) are journalled here
//! before they are applied, and a restarted process replays them: the same
//! jobs get the same ids, the same usage the same record ids, and nothing
//! is lost or billed twice. Only one process may drive a ledger's world at a
//! time: [`Ledger::claim`] takes an exclusive lock that the operating
//! system (SQLite: a lock file) or the database (PostgreSQL: a session
//! advisory lock) releases when the process dies, even by `kill -9`.

use std::fs::{File, OpenOptions};

use super::error::{LedgerError, Result};
use super::sql::{Cell, Val};
use super::store::Ledger;

/// One journalled input.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct JournalEntry {
    pub seq: i64,
    /// The world's time when it was applied (unix s).
    pub at_s: i64,
    pub kind: String,
    /// JSON.
    pub body: String,
}

/// Held while a process drives the ledger's world; dropping it (or the
/// process dying) releases the claim.
#[derive(Debug)]
pub struct Claim {
    _file: Option<File>,
}

impl Ledger {
    /// Appends an input to the world journal; returns its sequence number.
    pub fn append_journal(&self, at_s: i64, kind: &str, body: &str) -> Result<i64> {
        self.write(|tx| {
            tx.exec(
                "INSERT INTO world_journal (at_s, kind, body) VALUES ($1, $2, $3)",
                &[Val::I(at_s), Val::T(kind), Val::T(body)],
            )?;
            let rows = tx.rows("SELECT MAX(seq) FROM world_journal", &[])?;
            match rows.first().and_then(|r| r.first()) {
                Some(Cell::I(seq)) => Ok(*seq),
                other => Err(LedgerError::Storage(format!(
                    "world journal: no sequence number after the insert ({other:?})"
                ))),
            }
        })
    }

    /// Whether a real meter (a meter cursor: the controller's GPU meter) has
    /// written into this ledger.
    pub fn metered_for_real(&self) -> Result<bool> {
        let rows = self.read(|tx| tx.rows("SELECT COUNT(*) FROM meter_cursors", &[]))?;
        Ok(matches!(rows.first().and_then(|r| r.first()), Some(Cell::I(n)) if *n > 0))
    }

    /// Whether a simulated cluster has written into this ledger (its journal
    /// is not empty): a real meter must not bill beside it.
    pub fn simulated(&self) -> Result<bool> {
        let rows = self.read(|tx| tx.rows("SELECT COUNT(*) FROM world_journal", &[]))?;
        Ok(matches!(rows.first().and_then(|r| r.first()), Some(Cell::I(n)) if *n > 0))
    }

    /// The world journal, oldest first.
    pub fn journal(&self) -> Result<Vec<JournalEntry>> {
        let rows = self.read(|tx| {
            tx.rows(
                "SELECT seq, at_s, kind, body FROM world_journal ORDER BY seq",
                &[],
            )
        })?;
        Ok(rows
            .iter()
            .map(|r| JournalEntry {
                seq: r[0].i(),
                at_s: r[1].i(),
                kind: r[2].t(),
                body: r[3].t(),
            })
            .collect())
    }

    /// Claims the ledger for one process driving a simulated cluster into
    /// it. Refused, naming the ledger, while another process holds it, and
    /// for a ledger a real meter (the controller's) writes: simulated usage
    /// is never billed beside real usage.
    pub fn claim(&self, what: &str) -> Result<Claim> {
        if self.metered_for_real()? {
            return Err(LedgerError::invalid(
                "db",
                format!(
                    "this ledger holds usage a real meter (the controller's) wrote; {what} would bill simulated usage beside it. Give a ledger of its own with --db"
                ),
            ));
        }
        if let Some(path) = self.file() {
            let mut lock = path.as_os_str().to_owned();
            lock.push(".lock");
            let file = OpenOptions::new()
                .create(true)
                .truncate(false)
                .write(true)
                .open(&lock)
                .map_err(|e| {
                    LedgerError::Storage(format!(
                        "{}: cannot create the lock file ({e})",
                        std::path::Path::new(&lock).display()
                    ))
                })?;
            return match file.try_lock() {
                Ok(()) => Ok(Claim { _file: Some(file) }),
                Err(std::fs::TryLockError::WouldBlock) => {
                    Err(in_use(what, &path.display().to_string()))
                }
                Err(std::fs::TryLockError::Error(e)) => Err(LedgerError::Storage(format!(
                    "{}: cannot lock ({e})",
                    std::path::Path::new(&lock).display()
                ))),
            };
        }
        if self.backend() == super::Backend::Postgres {
            let got = self.write(|tx| {
                tx.rows(
                    "SELECT CASE WHEN pg_try_advisory_lock(hashtext($1)) THEN 1 ELSE 0 END",
                    &[Val::T("zhisuan-world")],
                )
            })?;
            let held = matches!(got.first().and_then(|r| r.first()), Some(Cell::I(1)));
            return if held {
                Ok(Claim { _file: None })
            } else {
                Err(in_use(what, "the PostgreSQL ledger"))
            };
        }
        // A private in-memory ledger: no other process can reach it.
        Ok(Claim { _file: None })
    }
}

fn in_use(what: &str, ledger: &str) -> LedgerError {
    LedgerError::invalid(
        "db",
        format!(
            "{ledger} is in use by another zhisuan process driving a simulated cluster; {what} would bill its own simulated usage into it. Stop the other process or give another --db"
        ),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_journal_keeps_order_and_a_second_claim_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("l.sqlite");
        let a = Ledger::open(path.to_str().unwrap()).unwrap();
        assert_eq!(a.append_journal(10, "submit", "{\"n\":1}").unwrap(), 1);
        assert_eq!(a.append_journal(10, "cancel", "{}").unwrap(), 2);
        let j = a.journal().unwrap();
        assert_eq!(
            j.iter()
                .map(|e| (e.seq, e.at_s, e.kind.as_str()))
                .collect::<Vec<_>>(),
            vec![(1, 10, "submit"), (2, 10, "cancel")]
        );
        let held = a.claim("the demo").unwrap();
        let b = Ledger::open(path.to_str().unwrap()).unwrap();
        let e = b
            .claim("zhisuan api --backend world")
            .unwrap_err()
            .to_string();
        assert!(e.contains("in use by another zhisuan process"), "{e}");
        assert!(e.contains("l.sqlite"), "names the ledger: {e}");
        drop(held);
        b.claim("zhisuan api --backend world").unwrap();
        assert!(b.simulated().unwrap());
    }

    /// Simulated and real usage never share a ledger: a ledger a real meter
    /// wrote cannot be claimed for a simulated cluster.
    #[test]
    fn a_ledger_with_real_metering_is_not_claimed_for_a_simulation() {
        let l = Ledger::open(":memory:").unwrap();
        assert!(!l.metered_for_real().unwrap() && !l.simulated().unwrap());
        l.advance_meter_cursor("controller-gpu", 600).unwrap();
        let e = l.claim("the demo").unwrap_err().to_string();
        assert!(e.contains("real meter") && e.contains("--db"), "{e}");
    }

    #[test]
    fn on_postgres_a_second_process_is_refused_until_the_first_disconnects() {
        let Some(server) = crate::ledger::test_pg::PgServer::start() else {
            return;
        };
        let url = server.fresh_db();
        let a = Ledger::open(&url).unwrap();
        assert_eq!(a.append_journal(5, "start", "{}").unwrap(), 1);
        assert_eq!(a.journal().unwrap()[0].kind, "start");
        let _held = a.claim("the demo").unwrap();
        // Another connection is another process as far as the lock goes.
        let b = Ledger::open(&url).unwrap();
        let e = b
            .claim("zhisuan api --backend world")
            .unwrap_err()
            .to_string();
        assert!(e.contains("PostgreSQL ledger is in use"), "{e}");
        // The session ends: its advisory lock goes with it. The server ends
        // it after the client has gone: wait for that (a blocking take of
        // the same lock, bounded by a lock timeout that fails the test)
        // instead of racing it.
        drop(a);
        b.write(|tx| {
            tx.exec("SET LOCAL lock_timeout = '30s'", &[])?;
            tx.exec(
                "SELECT pg_advisory_xact_lock(hashtext($1))",
                &[Val::T("zhisuan-world")],
            )
        })
        .unwrap();
        b.claim("zhisuan api --backend world").unwrap();
    }
}

//! `Idempotency-Key` records (issue #16, item 7): the first request with a
//! key reserves it, runs, and stores its answer; a retry with the same key
//! and the same body gets that answer again instead of a second voucher,
//! tenant or job; the same key with another body is refused. Kept in the
//! ledger, so it holds across replicas and restarts.

use super::error::Result;
use super::sql::Val;
use super::store::{now_s, Ledger};

/// A reservation older than this with no answer is taken as abandoned (its
/// replica died mid-request) and may be taken over.
pub const ABANDONED_AFTER_S: i64 = 60;

/// What a request with an idempotency key should do.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Idempotent {
    /// First use: run the request, then [`Ledger::idempotency_complete`] or
    /// [`Ledger::idempotency_release`].
    Run,
    /// Answered before: send this status and body again.
    Replay { status: u16, body: String },
    /// The key was used with another request body.
    Mismatch,
    /// The first request with this key is still running.
    InProgress,
}

impl Ledger {
    /// Reserves `key` in `scope` for a request whose body hashes to `request`.
    pub fn idempotency_reserve(&self, scope: &str, key: &str, request: &str) -> Result<Idempotent> {
        let now = now_s();
        self.write(|tx| {
            let rows = tx.rows(
                "SELECT request_sha256, status, body, created_at FROM idempotency \
                 WHERE scope = $1 AND idem_key = $2",
                &[Val::T(scope), Val::T(key)],
            )?;
            let Some(r) = rows.first() else {
                tx.exec(
                    "INSERT INTO idempotency (scope, idem_key, request_sha256, status, body, created_at) \
                     VALUES ($1, $2, $3, 0, '', $4)",
                    &[Val::T(scope), Val::T(key), Val::T(request), Val::I(now)],
                )?;
                return Ok(Idempotent::Run);
            };
            if r[0].t() != request {
                return Ok(Idempotent::Mismatch);
            }
            let status = r[1].i();
            if status != 0 {
                return Ok(Idempotent::Replay {
                    status: u16::try_from(status).unwrap_or(500),
                    body: r[2].t(),
                });
            }
            if now - r[3].i() < ABANDONED_AFTER_S {
                return Ok(Idempotent::InProgress);
            }
            tx.exec(
                "UPDATE idempotency SET created_at = $1 WHERE scope = $2 AND idem_key = $3",
                &[Val::I(now), Val::T(scope), Val::T(key)],
            )?;
            Ok(Idempotent::Run)
        })
    }

    /// Stores the answer of the request that reserved `key`.
    pub fn idempotency_complete(
        &self,
        scope: &str,
        key: &str,
        status: u16,
        body: &str,
    ) -> Result<()> {
        self.write(|tx| {
            tx.exec(
                "UPDATE idempotency SET status = $1, body = $2 WHERE scope = $3 AND idem_key = $4",
                &[
                    Val::I(i64::from(status)),
                    Val::T(body),
                    Val::T(scope),
                    Val::T(key),
                ],
            )?;
            Ok(())
        })
    }

    /// Drops the reservation of a request that failed, so a retry runs again.
    pub fn idempotency_release(&self, scope: &str, key: &str) -> Result<()> {
        self.write(|tx| {
            tx.exec(
                "DELETE FROM idempotency WHERE scope = $1 AND idem_key = $2 AND status = 0",
                &[Val::T(scope), Val::T(key)],
            )?;
            Ok(())
        })
    }
}

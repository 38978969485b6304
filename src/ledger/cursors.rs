//! Meter cursors: how far each meter has metered (unix s, on its grid). A
//! meter reads its cursor when it starts (e.g. when a controller replica
//! becomes leader) and advances it after each successful ingest, so a new
//! leader meters on from the last metered window. Records are idempotent
//! per window, so a cursor that lags its records only costs a re-check.

use super::error::{LedgerError, Result};
use super::sql::{Cell, Val};
use super::store::Ledger;

impl Ledger {
    /// Where the meter `name` has metered up to, if it ever has.
    pub fn meter_cursor(&self, name: &str) -> Result<Option<i64>> {
        let rows = self.read(|tx| {
            tx.rows(
                "SELECT until_s FROM meter_cursors WHERE name = $1",
                &[Val::T(name)],
            )
        })?;
        match rows.first().and_then(|r| r.first()) {
            None => Ok(None),
            Some(Cell::I(v)) => Ok(Some(*v)),
            Some(other) => Err(LedgerError::Storage(format!(
                "meter cursor {name}: unreadable value {other:?}"
            ))),
        }
    }

    /// Moves the meter `name` forward to `until_s`; never backwards (a
    /// replica that lost its term and writes late cannot rewind it). Returns
    /// the cursor now stored.
    pub fn advance_meter_cursor(&self, name: &str, until_s: i64) -> Result<i64> {
        let now = chrono::Utc::now().timestamp();
        self.write(|tx| {
            let stored = tx.rows(
                "SELECT until_s FROM meter_cursors WHERE name = $1",
                &[Val::T(name)],
            )?;
            match stored.first().and_then(|r| r.first()) {
                Some(Cell::I(v)) if *v >= until_s => Ok(*v),
                Some(_) => {
                    tx.exec(
                        "UPDATE meter_cursors SET until_s = $1, updated_at = $2 WHERE name = $3",
                        &[Val::I(until_s), Val::I(now), Val::T(name)],
                    )?;
                    Ok(until_s)
                }
                None => {
                    tx.exec(
                        "INSERT INTO meter_cursors (name, until_s, updated_at) VALUES ($1, $2, $3)",
                        &[Val::T(name), Val::I(until_s), Val::I(now)],
                    )?;
                    Ok(until_s)
                }
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cursors_start_empty_and_only_move_forward() {
        let l = Ledger::open(":memory:").unwrap();
        assert_eq!(l.meter_cursor("gpu").unwrap(), None);
        assert_eq!(l.advance_meter_cursor("gpu", 600).unwrap(), 600);
        assert_eq!(l.advance_meter_cursor("gpu", 540).unwrap(), 600);
        assert_eq!(l.meter_cursor("gpu").unwrap(), Some(600));
        assert_eq!(l.advance_meter_cursor("gpu", 660).unwrap(), 660);
        assert_eq!(l.meter_cursor("other").unwrap(), None);
    }
}

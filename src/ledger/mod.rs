//! Append-only double-entry ledger, vouchers, statements, storage (issue #6).

pub mod cli;

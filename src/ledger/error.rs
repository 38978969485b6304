//! Ledger errors. Bad input names the field and the fix; storage failures are separate.

/// Result alias for the ledger.
pub type Result<T> = std::result::Result<T, LedgerError>;

/// What went wrong. `Invalid`, `UnknownTenant`, `NotFound` and `Conflict` are
/// the caller's fault (HTTP 4xx / exit code 2); `Storage` is ours.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum LedgerError {
    /// A field has a bad value: `message` says what is wrong and how to fix it.
    #[error("{field}: {message}")]
    Invalid { field: String, message: String },
    /// The record or request names a tenant the ledger does not know.
    #[error("tenant: unknown tenant '{0}'; create it first (POST /v1/tenants)")]
    UnknownTenant(String),
    /// A named object does not exist.
    #[error("{what} '{id}' not found")]
    NotFound { what: &'static str, id: String },
    /// A named object already exists.
    #[error("{what} '{id}' already exists")]
    Conflict { what: &'static str, id: String },
    /// The database failed (I/O, connection, constraint we did not expect).
    #[error("ledger storage: {0}")]
    Storage(String),
}

impl LedgerError {
    pub fn invalid(field: impl Into<String>, message: impl Into<String>) -> Self {
        LedgerError::Invalid {
            field: field.into(),
            message: message.into(),
        }
    }

    /// The input field at fault, when the error is the caller's.
    pub fn field(&self) -> Option<&str> {
        match self {
            LedgerError::Invalid { field, .. } => Some(field),
            LedgerError::UnknownTenant(_) => Some("tenant"),
            _ => None,
        }
    }

    /// True when the caller sent bad input (as opposed to a storage failure).
    pub fn is_input(&self) -> bool {
        !matches!(self, LedgerError::Storage(_))
    }

    /// Converts into `anyhow`, wrapping caller errors in [`crate::error::InputError`]
    /// so command line tools exit with code 2.
    pub fn into_anyhow(self) -> anyhow::Error {
        if self.is_input() {
            anyhow::Error::new(crate::error::InputError::new(self.to_string()))
        } else {
            anyhow::Error::new(self)
        }
    }

    /// Prefixes the field path (e.g. `records[3].`) to an `Invalid` error.
    pub fn at(self, prefix: &str) -> Self {
        match self {
            LedgerError::Invalid { field, message } => LedgerError::Invalid {
                field: format!("{prefix}{field}"),
                message,
            },
            other => other,
        }
    }
}

impl From<rusqlite::Error> for LedgerError {
    fn from(e: rusqlite::Error) -> Self {
        LedgerError::Storage(format!("sqlite: {e}"))
    }
}

impl From<postgres::Error> for LedgerError {
    fn from(e: postgres::Error) -> Self {
        LedgerError::Storage(format!("postgres: {e}"))
    }
}

//! Errors shared by every command line entry point.

use std::fmt;

/// Bad input from the user (a malformed file, an invalid flag value): the
/// binary prints it and exits with code 2, as opposed to 1 for internal
/// failures. The message names the file / field and how to fix it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InputError(pub String);

impl InputError {
    pub fn new(msg: impl Into<String>) -> Self {
        InputError(msg.into())
    }
}

impl fmt::Display for InputError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for InputError {}

/// Exit code for an error: 2 when any cause in its chain is an [`InputError`], else 1.
pub fn exit_code(err: &anyhow::Error) -> u8 {
    if err
        .chain()
        .any(|c| c.downcast_ref::<InputError>().is_some())
    {
        2
    } else {
        1
    }
}

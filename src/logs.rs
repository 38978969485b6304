//! Log output of the long-running commands: `RUST_LOG` filters (else the
//! given default level), and colour only on a terminal — a log written to a
//! file or collected by a cluster carries no ANSI escape codes.

use std::io::IsTerminal;

/// Installs the log subscriber once (later calls do nothing).
pub fn init(default_filter: &str) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| default_filter.into());
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(std::io::stdout().is_terminal())
        .try_init();
}

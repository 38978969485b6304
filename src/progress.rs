//! Progress bars for long command-line work (`zhisuan replay`, `zhisuan sim`):
//! drawn on stderr only when it is a terminal (never into a log file or a
//! pipe), and not at all with `--quiet`.

use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};

/// A bar over `len` steps of `what` (e.g. "seeds", "jobs"); hidden when
/// `quiet` or when stderr is not a terminal.
pub fn bar(len: u64, what: &str, quiet: bool) -> ProgressBar {
    let target = if quiet {
        ProgressDrawTarget::hidden()
    } else {
        // indicatif hides this one itself when stderr is not a terminal.
        ProgressDrawTarget::stderr()
    };
    let bar = ProgressBar::with_draw_target(Some(len), target);
    let style = ProgressStyle::with_template(&format!(
        "{{msg}} [{{bar:40}}] {{pos}}/{{len}} {what} ({{elapsed}}, ~{{eta}} left)"
    ))
    .unwrap_or_else(|_| ProgressStyle::default_bar())
    .progress_chars("=> ");
    bar.set_style(style);
    bar
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_quiet_bar_is_hidden_and_still_counts() {
        let b = bar(3, "seeds", true);
        assert!(b.is_hidden());
        b.inc(2);
        assert_eq!(b.position(), 2);
        // Under `cargo test` stderr is captured, not a terminal: hidden too.
        if !std::io::IsTerminal::is_terminal(&std::io::stderr()) {
            assert!(bar(3, "seeds", false).is_hidden());
        }
    }
}

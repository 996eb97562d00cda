//! Terminal styling: colours on when the terminal supports them, honouring `NO_COLOR` and
//! `FORCE_COLOR` (<https://no-color.org>, <https://force-color.org>).

use std::io::IsTerminal;

/// Whether and how to colour output.
#[derive(Debug, Clone, Copy)]
pub struct Style {
    /// Colours are on.
    pub color: bool,
}

impl Style {
    /// `FORCE_COLOR` (non-empty, not `0`) forces colours; `NO_COLOR` (non-empty) disables them;
    /// otherwise colours are on when stdout is a terminal and `TERM` is not `dumb`.
    pub fn detect() -> Style {
        let set = |k: &str| std::env::var_os(k).is_some_and(|v| !v.is_empty());
        let color = if std::env::var_os("FORCE_COLOR").is_some_and(|v| !v.is_empty() && v != "0") {
            true
        } else if set("NO_COLOR") {
            false
        } else {
            std::io::stdout().is_terminal() && std::env::var_os("TERM").is_none_or(|t| t != "dumb")
        };
        Style { color }
    }

    fn paint(&self, code: &str, s: &str) -> String {
        if self.color {
            format!("\x1b[{code}m{s}\x1b[0m")
        } else {
            s.to_owned()
        }
    }

    /// Bold text.
    pub fn bold(&self, s: &str) -> String {
        self.paint("1", s)
    }
    /// Dim text.
    pub fn dim(&self, s: &str) -> String {
        self.paint("2", s)
    }
    /// Green text.
    pub fn green(&self, s: &str) -> String {
        self.paint("32", s)
    }
    /// Yellow text.
    pub fn yellow(&self, s: &str) -> String {
        self.paint("33", s)
    }
    /// Red text.
    pub fn red(&self, s: &str) -> String {
        self.paint("31", s)
    }
}

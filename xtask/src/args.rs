//! Hand-written command-line flags for the xtask commands: `--flag value` or `--flag=value`.

use anyhow::Context;

/// The flags of one command, read in order.
pub struct Flags<'a> {
    args: std::slice::Iter<'a, String>,
    usage: &'static str,
}

impl<'a> Flags<'a> {
    /// Flags from `args`; `usage` is shown when a value is missing.
    pub fn new(args: &'a [String], usage: &'static str) -> Self {
        Self {
            args: args.iter(),
            usage,
        }
    }

    /// The next flag and its inline value (`--flag=value`), if any.
    pub fn next_flag(&mut self) -> Option<(&'a str, Option<&'a str>)> {
        let arg = self.args.next()?;
        Some(match arg.split_once('=') {
            Some((flag, value)) => (flag, Some(value)),
            None => (arg.as_str(), None),
        })
    }

    /// The value of `flag`: its inline value, or else the next argument.
    pub fn value(&mut self, flag: &str, inline: Option<&str>) -> anyhow::Result<String> {
        inline
            .map(str::to_owned)
            .or_else(|| self.args.next().cloned())
            .with_context(|| format!("{flag} needs a value\n\n{}", self.usage))
    }
}

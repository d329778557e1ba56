//! Where the bench's output goes: the report on stdout, progress on stderr, and the machine's load average.

/// The results: the only output on stdout, so it can be redirected to a file.
#[allow(clippy::print_stdout)]
pub(crate) fn report(text: &str) {
    print!("{text}");
}

/// Progress notes go to stderr, next to cargo's own output.
pub(crate) fn progress(text: &str) {
    eprintln!("{text}");
}

/// The 1-minute load average, or `?` where /proc does not say.
pub(crate) fn load_average() -> String {
    let load = std::fs::read_to_string("/proc/loadavg").unwrap_or_default();
    load.split_whitespace().next().unwrap_or("?").to_owned()
}

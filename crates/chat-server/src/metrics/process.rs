//! Process metrics in the Prometheus client libraries' names, read from `/proc` at each
//! scrape (so they cost nothing between scrapes). On systems without `/proc` nothing is
//! written.

use std::fmt::Write as _;

/// Appends the process metrics, with their `# TYPE` lines, to a scrape's text.
pub fn render_into(text: &mut String) {
    let Ok(stat) = std::fs::read_to_string("/proc/self/stat") else {
        return;
    };
    // Fields after the command name, which is in parentheses and may hold spaces.
    let fields: Vec<&str> = stat
        .rsplit_once(')')
        .map(|(_, rest)| rest.split_whitespace().collect())
        .unwrap_or_default();
    // SAFETY: sysconf only reads system configuration.
    let (ticks, page) = unsafe {
        (
            libc::sysconf(libc::_SC_CLK_TCK),
            libc::sysconf(libc::_SC_PAGESIZE),
        )
    };
    let field = |n: usize| fields.get(n - 3).and_then(|v| v.parse::<f64>().ok());
    if let (Some(utime), Some(stime)) = (field(14), field(15))
        && ticks > 0
    {
        let cpu = (utime + stime) / ticks as f64;
        write_metric(
            text,
            "process_cpu_seconds_total",
            "counter",
            "Total user and system CPU time spent in seconds.",
            cpu,
        );
    }
    if let Some(rss_pages) = field(24) {
        write_metric(
            text,
            "process_resident_memory_bytes",
            "gauge",
            "Resident memory size in bytes.",
            rss_pages * page as f64,
        );
    }
    if let (Some(start_ticks), Some(boot)) = (field(22), boot_time())
        && ticks > 0
    {
        let start = boot + start_ticks / ticks as f64;
        write_metric(
            text,
            "process_start_time_seconds",
            "gauge",
            "Start time of the process since unix epoch in seconds.",
            start,
        );
    }
    if let Ok(entries) = std::fs::read_dir("/proc/self/fd") {
        let open = entries.count() as f64;
        write_metric(
            text,
            "process_open_fds",
            "gauge",
            "Number of open file descriptors.",
            open,
        );
    }
    if let Some(max) = max_fds() {
        write_metric(
            text,
            "process_max_fds",
            "gauge",
            "Maximum number of open file descriptors.",
            max,
        );
    }
}

fn write_metric(text: &mut String, name: &str, kind: &str, help: &str, value: f64) {
    let _ = write!(
        text,
        "# HELP {name} {help}\n# TYPE {name} {kind}\n{name} {value}\n"
    );
}

/// The system's boot time in seconds since the Unix epoch (`btime` in `/proc/stat`).
fn boot_time() -> Option<f64> {
    let stat = std::fs::read_to_string("/proc/stat").ok()?;
    stat.lines()
        .find_map(|line| line.strip_prefix("btime "))
        .and_then(|value| value.trim().parse().ok())
}

/// The soft limit on open descriptors (`ulimit -n`).
fn max_fds() -> Option<f64> {
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit writes only into the struct it is given.
    let result = unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) };
    (result == 0).then_some(limit.rlim_cur as f64)
}

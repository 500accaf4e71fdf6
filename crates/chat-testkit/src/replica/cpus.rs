//! CPU placement on Linux: which CPUs a process may use, and pinning to some.

use anyhow::bail;

/// Parses a CPU list such as `1`, `0,2` or `1-3`.
pub(super) fn parse_cpus(text: &str) -> anyhow::Result<Vec<usize>> {
    let mut cpus = Vec::new();
    for part in text.split(',').map(str::trim) {
        let parsed = match part.split_once('-') {
            Some((first, last)) => first
                .parse::<usize>()
                .and_then(|f| last.parse::<usize>().map(|l| (f..=l).collect::<Vec<_>>())),
            None => part.parse::<usize>().map(|cpu| vec![cpu]),
        };
        match parsed {
            Ok(list) if !list.is_empty() => cpus.extend(list),
            _ => bail!("not a CPU list (like 1, 0,2 or 1-3): {text:?}"),
        }
    }
    Ok(cpus)
}

/// The CPUs this process may run on.
#[cfg(target_os = "linux")]
pub fn allowed_cpus() -> anyhow::Result<Vec<usize>> {
    // SAFETY: sched_getaffinity fills the zeroed set we own; CPU_ISSET only reads it.
    unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        if libc::sched_getaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &mut set) != 0 {
            bail!("sched_getaffinity: {}", std::io::Error::last_os_error());
        }
        Ok((0..libc::CPU_SETSIZE as usize)
            .filter(|&cpu| libc::CPU_ISSET(cpu, &set))
            .collect())
    }
}

/// Restricts the calling thread (and the threads and processes it starts from now
/// on) to `cpus`.
#[cfg(target_os = "linux")]
pub fn pin_to_cpus(cpus: &[usize]) -> anyhow::Result<()> {
    // SAFETY: CPU_SET writes into the zeroed set we own (indexes are checked first);
    // sched_setaffinity only reads it.
    unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        for &cpu in cpus {
            if cpu >= libc::CPU_SETSIZE as usize {
                bail!("CPU {cpu} is out of range");
            }
            libc::CPU_SET(cpu, &mut set);
        }
        if libc::sched_setaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &set) != 0 {
            bail!(
                "cannot pin to CPUs {cpus:?}: {}",
                std::io::Error::last_os_error()
            );
        }
    }
    Ok(())
}

/// The CPUs this process may run on (Linux only).
#[cfg(not(target_os = "linux"))]
pub fn allowed_cpus() -> anyhow::Result<Vec<usize>> {
    bail!("CPU pinning is only supported on Linux")
}

/// Restricts the calling thread to `cpus` (Linux only).
#[cfg(not(target_os = "linux"))]
pub fn pin_to_cpus(_cpus: &[usize]) -> anyhow::Result<()> {
    bail!("CPU pinning is only supported on Linux")
}

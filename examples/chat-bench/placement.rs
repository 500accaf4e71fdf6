//! `--placement`: where the client and the replicas run.
//!
//! `split` pins the benchmark (the client) to the first CPU it may use and the
//! replicas to the others — a client host and a server host, as far as one machine
//! allows; the default, `shared`, lets the OS put every process on every CPU.

use anyhow::bail;
use clap::ValueEnum;

use chat_testkit::replica::{allowed_cpus, pin_to_cpus};

/// Where the client and the replicas run.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum CpuPlacement {
    /// Anywhere: the OS schedules every process on every CPU.
    Shared,
    /// The client on the first CPU it may use, the replicas on the others.
    Split,
}

/// Applies `placement` to this process; returns the CPUs for the replicas (empty:
/// anywhere).
pub fn place(placement: CpuPlacement) -> anyhow::Result<Vec<usize>> {
    match placement {
        CpuPlacement::Shared => Ok(Vec::new()),
        CpuPlacement::Split => {
            let cpus = allowed_cpus()?;
            let Some((client, replicas)) = cpus.split_first().filter(|(_, r)| !r.is_empty()) else {
                bail!("--placement split needs at least 2 CPUs, this process may use {cpus:?}");
            };
            pin_to_cpus(&[*client])?;
            Ok(replicas.to_vec())
        }
    }
}

/// The placement, for the output.
pub fn describe(placement: CpuPlacement, replica_cpus: &[usize]) -> String {
    match placement {
        CpuPlacement::Shared => "shared (the client and the replicas on any CPU)".to_owned(),
        CpuPlacement::Split => {
            let client = allowed_cpus().unwrap_or_default();
            format!("split (the client on CPUs {client:?}, the replicas on CPUs {replica_cpus:?})")
        }
    }
}

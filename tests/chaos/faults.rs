//! The faults: a seeded plan of kills, freezes, freeze-plus-kill and a SIGTERM rolling
//! restart (and the soak's rounds of the same kinds), applied to real processes.

use std::{
    path::{Path, PathBuf},
    sync::Mutex,
    time::Duration,
};

use chat_lb_client::Balancer;
use chat_proto::v1::health_check_response::ServingStatus;
use chat_testkit::Replica;
use tokio::time::Instant;

use crate::checks::{ProcessSample, mib};
use crate::stats::{Rpc, Stats};
use crate::workload::every_replica_healthy;
use crate::{LONG_LIVED, REPLICAS, SeededRng};

// The fault plan (milliseconds, drawn from the seed).
const KILLS: usize = 5;
/// Freezes of a random replica (outside a write transaction, see `freeze`).
const FREEZES: usize = 3;
/// One replica frozen and another killed at the same time; the third serves alone.
const DOUBLE_FAULTS: usize = 1;
/// Load between two faults (the faulted replica serves again before the pause).
const PAUSE_MS: (u64, u64) = (500, 1_100);
/// How long a killed replica stays down before it is restarted on its port.
const DOWN_MS: (u64, u64) = (200, 1_000);
/// How long a replica stays frozen: long enough for probes, per-try timeouts and
/// keepalive to act, well below the calls' deadline (`workload::CALL_TIMEOUT`).
const FREEZE_MS: (u64, u64) = (500, 1_200);
// Bounds on every wait.
const SERVING_WITHIN: Duration = Duration::from_secs(15);
const TERMINATE_WITHIN: Duration = Duration::from_secs(15);

#[derive(Debug, Clone, Copy)]
pub(crate) enum Fault {
    /// SIGKILL, then restart on the same port after `down_for`.
    Kill { replica: usize, down_for: Duration },
    /// SIGSTOP, then SIGCONT after `frozen_for`.
    Freeze {
        replica: usize,
        frozen_for: Duration,
    },
    /// SIGSTOP one replica and SIGKILL another; after `down_for`, SIGCONT the first
    /// and restart the second.
    FreezeAndKill {
        frozen: usize,
        killed: usize,
        down_for: Duration,
    },
    /// One step of the rolling restart: SIGTERM (exit 0 expected), restart.
    Terminate { replica: usize },
}

/// A fault and the load before it.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Step {
    pub(crate) pause: Duration,
    pub(crate) fault: Fault,
}

/// The fault plan: kills, freezes and a freeze-plus-kill of random replicas in a
/// random order, then a rolling restart of every replica in a random order. Faults
/// never overlap and every replica is back and serving before the next one, so at
/// least two of the three replicas are healthy at any moment, and one during the
/// double fault.
pub(crate) fn plan_faults(rng: &mut SeededRng) -> Vec<Step> {
    let all: Vec<usize> = (0..REPLICAS).collect();
    plan(rng, &all, |rng| {
        let frozen = rng.below(REPLICAS);
        let killed = (frozen + 1 + rng.below(REPLICAS - 1)) % REPLICAS;
        (frozen, killed)
    })
}

/// The faults of one plan, shuffled, then the rolling restart of `killable`: kills
/// and freeze-plus-kills take `killable` replicas, freezes any; `double` draws the
/// (frozen, killed) pair of a freeze-plus-kill.
fn plan(
    rng: &mut SeededRng,
    killable: &[usize],
    double: impl Fn(&mut SeededRng) -> (usize, usize),
) -> Vec<Step> {
    let mut faults: Vec<Fault> = Vec::new();
    for _ in 0..KILLS {
        faults.push(Fault::Kill {
            replica: killable[rng.below(killable.len())],
            down_for: rng.millis(DOWN_MS),
        });
    }
    for _ in 0..FREEZES {
        faults.push(Fault::Freeze {
            replica: rng.below(REPLICAS),
            frozen_for: rng.millis(FREEZE_MS),
        });
    }
    for _ in 0..DOUBLE_FAULTS {
        let (frozen, killed) = double(rng);
        faults.push(Fault::FreezeAndKill {
            frozen,
            killed,
            down_for: rng.millis(FREEZE_MS),
        });
    }
    shuffle(&mut faults, rng);
    let mut order = killable.to_vec();
    shuffle(&mut order, rng);
    faults.extend(
        order
            .into_iter()
            .map(|replica| Fault::Terminate { replica }),
    );
    faults
        .into_iter()
        .map(|fault| Step {
            pause: rng.millis(PAUSE_MS),
            fault,
        })
        .collect()
}

pub(crate) fn shuffle<T>(items: &mut [T], rng: &mut SeededRng) {
    for i in (1..items.len()).rev() {
        items.swap(i, rng.below(i + 1));
    }
}

/// What was done when, for the report and failure messages.
pub(crate) struct FaultLog {
    pub(crate) started: Instant,
    pub(crate) entries: Mutex<Vec<String>>,
}

impl FaultLog {
    pub(crate) fn new(started: Instant) -> Self {
        Self {
            started,
            entries: Mutex::new(Vec::new()),
        }
    }

    pub(crate) fn note(&self, what: String) {
        let line = format!("at {:.2?} {what}", self.started.elapsed());
        eprintln!("chaos: {line}");
        self.entries
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .push(line);
    }

    pub(crate) fn lines(&self) -> String {
        self.entries
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .join("\n  ")
    }
}

/// Runs the plan against the replicas while the load runs.
pub(crate) async fn inject_faults(
    replicas: &mut [Replica],
    plan: &[Step],
    log: &FaultLog,
    store: &Path,
    balancers: &[Balancer],
) {
    for step in plan {
        // Pacing the schedule, not synchronising: the load runs meanwhile.
        tokio::time::sleep(step.pause).await;
        match step.fault {
            Fault::Kill { replica, down_for } => {
                let r = &mut replicas[replica];
                r.kill().await.expect("kill the replica");
                log.note(format!("kill -9 r{replica}"));
                tokio::time::sleep(down_for).await;
                restart(r, replica, log).await;
            }
            Fault::Freeze {
                replica,
                frozen_for,
            } => {
                let r = &replicas[replica];
                let lock = freeze(r, replica, store).await;
                log.note(format!("SIGSTOP r{replica} for {frozen_for:?}{lock}"));
                tokio::time::sleep(frozen_for).await;
                r.signal(libc::SIGCONT);
                log.note(format!("SIGCONT r{replica}"));
                wait_serving(r, replica, log).await;
            }
            Fault::FreezeAndKill {
                frozen,
                killed,
                down_for,
            } => {
                // The third replica must be usable by every client, not just serving:
                // a balancer keeps a replica it ejected (after a call failed on it)
                // out for the whole ejection time, 1-3s here, even once its probes
                // succeed again, and does not fall back to it when every other
                // endpoint is down. A replica faulted a moment ago may still be
                // ejected, and freezing and killing the other two then would leave a
                // client nothing to call although a replica is healthy.
                let waited = every_replica_healthy(balancers, SERVING_WITHIN)
                    .await
                    .unwrap_or_else(|problem| panic!("before the double fault: {problem}"));
                log.note(format!(
                    "every client sees every replica healthy (after {waited:.2?})"
                ));
                let lock = freeze(&replicas[frozen], frozen, store).await;
                replicas[killed].kill().await.expect("kill the replica");
                log.note(format!(
                    "SIGSTOP r{frozen}{lock} and kill -9 r{killed} for {down_for:?}: \
                     only the third replica serves"
                ));
                tokio::time::sleep(down_for).await;
                replicas[frozen].signal(libc::SIGCONT);
                log.note(format!("SIGCONT r{frozen}"));
                restart(&mut replicas[killed], killed, log).await;
                wait_serving(&replicas[frozen], frozen, log).await;
            }
            Fault::Terminate { replica } => {
                let r = &mut replicas[replica];
                let asked = Instant::now();
                log.note(format!("SIGTERM r{replica} (rolling restart)"));
                let status = r.terminate(TERMINATE_WITHIN).await;
                assert!(
                    status.success(),
                    "r{replica} exited with {status:?} after SIGTERM; faults:\n  {}",
                    log.lines()
                );
                log.note(format!("r{replica} exited 0 after {:.2?}", asked.elapsed()));
                restart(r, replica, log).await;
            }
        }
    }
}

/// Stops (SIGSTOP) a replica at a moment it does not hold the store's write lock:
/// when caught inside a write transaction it is continued at once and stopped again
/// a moment later. Returns a note for the log.
///
/// Why: a process frozen inside a write transaction keeps the shared store's write
/// lock (SQLite's lock cannot be taken from a live process), so every replica's
/// writes wait until SIGCONT. No replica is then healthy for writes, which breaks
/// the premise of the "no failed call while one replica is healthy" invariant: it
/// is the "all healthy replicas frozen" case, so the schedule must not create it.
/// (It does fail calls: healthy replicas time out per try behind the lock and get
/// tried or ejected, and the balancer, having no untried endpoint left, answers
/// UNAVAILABLE instead of waiting for a slow healthy one.) A stop caught inside a
/// transaction lasts a few milliseconds; an unknown lock state (no `/proc/locks`) is
/// noted in the log.
pub(crate) async fn freeze(replica: &Replica, index: usize, store: &Path) -> String {
    const TRIES: usize = 500;
    for attempt in 1..=TRIES {
        replica.signal(libc::SIGSTOP);
        wait_stopped(running(replica)).await;
        match holds_write_lock(store, running(replica)) {
            Some(false) if attempt == 1 => return String::new(),
            Some(false) => {
                return format!(
                    " (stopped {} time(s) inside a write transaction and continued first)",
                    attempt - 1
                );
            }
            None => return " (write lock unknown: /proc/locks unreadable)".to_owned(),
            Some(true) => {
                replica.signal(libc::SIGCONT);
                tokio::time::sleep(Duration::from_millis(3)).await;
            }
        }
    }
    panic!("r{index} held the store's write lock at each of {TRIES} stops");
}

/// The process id of a replica that must be running.
pub(crate) fn running(replica: &Replica) -> u32 {
    replica.pid().expect("replica is running")
}

/// Waits (up to 200ms) until every thread of `pid` is stopped: `kill(SIGSTOP)` returns
/// before the stop takes effect, and the lock check must see the frozen state.
pub(crate) async fn wait_stopped(pid: u32) {
    let deadline = Instant::now() + Duration::from_millis(200);
    while Instant::now() < deadline {
        let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) else {
            return;
        };
        let all_stopped = tasks.flatten().all(|task| {
            std::fs::read_to_string(task.path().join("stat")).is_ok_and(|stat| {
                // "tid (comm) STATE ...": the state follows the last ')'.
                stat.rsplit_once(')')
                    .and_then(|(_, rest)| rest.split_whitespace().next())
                    .is_some_and(|state| state == "T" || state == "t")
            })
        });
        if all_stopped {
            return;
        }
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
}

/// Restarts a stopped replica on its port and waits until it serves.
pub(crate) async fn restart(replica: &mut Replica, index: usize, log: &FaultLog) {
    // `restart` blocks until the readiness line (bounded by the harness): keep the
    // runtime's other worker running the load meanwhile.
    replica.restart().await.expect("restart the replica");
    log.note(format!("restarted r{index} (pid {})", running(replica)));
    wait_serving(replica, index, log).await;
}

pub(crate) async fn wait_serving(replica: &Replica, index: usize, log: &FaultLog) {
    let since = Instant::now();
    // `wait_for_status` is bounded by its own deadline; the timeout also bounds a
    // connection attempt that would hang.
    tokio::time::timeout(
        SERVING_WITHIN + Duration::from_secs(1),
        chat_testkit::wait_for_status(replica, ServingStatus::Serving, SERVING_WITHIN),
    )
    .await
    .unwrap_or_else(|_| panic!("r{index} did not answer HealthCheck within {SERVING_WITHIN:?}"));
    log.note(format!("r{index} serving after {:.2?}", since.elapsed()));
}

/// Whether process `pid` holds SQLite's WAL write lock on the store (Linux:
/// `/proc/locks`; `None` when it cannot be told). SQLite takes it as a POSIX lock on
/// byte 120 of the `-shm` file (`UNIX_SHM_BASE + WAL_WRITE_LOCK`).
pub(crate) fn holds_write_lock(db: &Path, pid: u32) -> Option<bool> {
    use std::os::unix::fs::MetadataExt;
    let mut shm = db.as_os_str().to_owned();
    shm.push("-shm");
    let inode = std::fs::metadata(PathBuf::from(shm))
        .ok()?
        .ino()
        .to_string();
    let locks = std::fs::read_to_string("/proc/locks").ok()?;
    let pid = pid.to_string();
    Some(locks.lines().any(|line| {
        // "3: POSIX  ADVISORY  WRITE 4242 fd:01:1234567 120 120" (waiters have "->").
        let fields: Vec<&str> = line.split_whitespace().collect();
        !line.contains("->")
            && fields.len() >= 8
            && fields[1] == "POSIX"
            && fields[3] == "WRITE"
            && fields[4] == pid
            && fields[5].rsplit(':').next() == Some(inode.as_str())
            && fields[6] == "120"
    }))
}

/// One round of soak faults: the chaos plan's faults drawn the same way, except that
/// the long-lived replica is only ever frozen (alone or in the freeze-plus-kill):
/// kills and the rolling restart take the other replicas. The safety rules are the
/// chaos plan's: `inject_faults` runs one fault at a time, each replica serves again
/// before the next, the double fault leaves the third replica serving, and `freeze`
/// never stops a replica holding the store's write lock.
pub(crate) fn plan_soak_round(rng: &mut SeededRng) -> Vec<Step> {
    let killable: Vec<usize> = (0..REPLICAS).filter(|r| *r != LONG_LIVED).collect();
    plan(rng, &killable, |rng| {
        let killed = killable[rng.below(killable.len())];
        let frozen = (killed + 1 + rng.below(REPLICAS - 1)) % REPLICAS;
        (frozen, killed)
    })
}

/// What the soak's fault rounds did.
#[derive(Debug, Default)]
pub(crate) struct SoakFaults {
    /// Rounds started (the last one is cut short when the time is up).
    pub(crate) rounds: u64,
    pub(crate) faults: u64,
    /// Per replica: kills and SIGTERMs, each followed by a restart (a new process).
    pub(crate) restarts: [u64; REPLICAS],
    /// Per replica: SIGSTOPs, alone or in the freeze-plus-kill.
    pub(crate) freezes: [u64; REPLICAS],
}

impl SoakFaults {
    pub(crate) fn count(&mut self, fault: Fault) {
        self.faults += 1;
        match fault {
            Fault::Kill { replica, .. } | Fault::Terminate { replica } => {
                self.restarts[replica] += 1;
            }
            Fault::Freeze { replica, .. } => self.freezes[replica] += 1,
            Fault::FreezeAndKill { frozen, killed, .. } => {
                self.freezes[frozen] += 1;
                self.restarts[killed] += 1;
            }
        }
    }
}

/// Runs soak rounds (`plan_soak_round`, from `rng`) while the load runs, until
/// `until`: no fault starts after it. Prints a progress line at each round.
pub(crate) async fn inject_soak_faults(
    replicas: &mut [Replica],
    rng: &mut SeededRng,
    until: Instant,
    (log, store, balancers, stats): (&FaultLog, &Path, &[Balancer], &Stats),
) -> SoakFaults {
    let started = Instant::now();
    let mut done = SoakFaults::default();
    'rounds: loop {
        let round = plan_soak_round(rng);
        done.rounds += 1;
        report_soak_progress(&done, started, until, stats, &replicas[LONG_LIVED]);
        for step in &round {
            if Instant::now() + step.pause >= until {
                break 'rounds;
            }
            inject_faults(replicas, std::slice::from_ref(step), log, store, balancers).await;
            done.count(step.fault);
        }
    }
    done
}

/// One line per round: how far, how it goes, and the long-lived replica's resources.
pub(crate) fn report_soak_progress(
    done: &SoakFaults,
    started: Instant,
    until: Instant,
    stats: &Stats,
    long_lived: &Replica,
) {
    let (acked, failed) = {
        let tally = stats.tally();
        let acked = tally.ok.get(&Rpc::SendMessage).copied().unwrap_or(0);
        (acked, tally.failed.values().sum::<u64>())
    };
    let sample = ProcessSample::of(running(long_lived));
    eprintln!(
        "soak: round {} at {}s ({}s left): {} faults, {acked} sends acknowledged, \
         {failed} calls failed; r{LONG_LIVED} RSS {}, {} fds",
        done.rounds,
        started.elapsed().as_secs(),
        until.saturating_duration_since(Instant::now()).as_secs(),
        done.faults,
        mib(sample.rss_kib),
        sample.fds
    );
}

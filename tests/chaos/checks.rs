//! The invariants checked at the end, and the reports printed before them.

use std::{
    collections::{BTreeMap, BTreeSet, HashMap, HashSet},
    time::Duration,
};

use chat_proto::v1::Message;
use chat_testkit::{Replica, procfs};

use crate::faults::{FaultLog, SoakFaults, running};
use crate::stats::Stats;
use crate::workload::{Ended, FeedOutcome, History, ReaderOutcome, SenderOutcome, User};
use crate::{FD_GROWTH_BOUND, LONG_LIVED, RSS_GROWTH_BOUND_KIB};

/// How the balancer reports a call whose connection broke after the server's answer
/// had begun (response headers received).
pub(crate) const BROKE_MID_ANSWER: &str = chat_testkit::ANSWER_CUT;

/// The soak's version of invariant 2. Over thousands of kills, one can land between a
/// replica sending an answer's headers and its end (the message waits for HTTP/2 send
/// capacity, which can take a second write; see the README's Failure behaviour). That call
/// is committed once its headers arrived (gRPC's retry rules: a call whose response
/// began is never retried, since the answer may already have been acted on), so the
/// client sees `UNAVAILABLE` "broke during the call" and retries it itself (the
/// workload's sends are idempotent: the exactly-once checks still hold). Those, and
/// only those, are allowed, at most one per hundred kills; any other failure fails.
pub(crate) fn check_soak_failed_calls(
    seed: u64,
    stats: &Stats,
    faults: &SoakFaults,
    log: &FaultLog,
) {
    let failures = stats.failures();
    let tally = stats.tally();
    let kills: u64 = faults.restarts.iter().sum();
    let allowed = (kills / 100).max(1);
    assert!(
        failures == tally.broke_mid_answer && failures <= allowed,
        "[CHAOS_SEED={seed}] {failures} call(s) failed ({} with an answer already begun; \
         at most {allowed} of those allowed for {kills} kills): {:?}\nfirst failures:\n  {}\n\
         faults:\n  {}\nhost: {}",
        tally.broke_mid_answer,
        tally.failed,
        tally.samples.join("\n  "),
        log.lines(),
        host_load()
    );
}

/// Invariant 2: no call failed (before any retry by the test). At most one replica
/// is faulted at a time, so a healthy one was always there to take every call. The
/// one exception: at most one call whose answer a kill cut (see
/// `check_soak_failed_calls`; the workload retries it, and the exactly-once checks
/// still hold). Over the test's six kills that is rare; two would say the window
/// grew.
///
/// The host's load is part of the message: when other processes starve the replicas
/// and the test, probes of healthy replicas time out, a client can see no replica
/// healthy, and the balancer (rightly) fails fast.
pub(crate) fn check_no_failed_calls(seed: u64, stats: &Stats, log: &FaultLog) {
    let failures = stats.failures();
    let tally = stats.tally();
    assert!(
        failures == tally.broke_mid_answer && failures <= 1,
        "[CHAOS_SEED={seed}] {failures} call(s) failed while at least one replica was \
         healthy ({} with an answer already begun; at most one of those allowed): {:?}\n\
         first failures:\n  {}\nfaults:\n  {}\nhost: {}",
        tally.broke_mid_answer,
        tally.failed,
        tally.samples.join("\n  "),
        log.lines(),
        host_load()
    );
}

/// The load average and CPU count (Linux), for reports.
pub(crate) fn host_load() -> String {
    let load = std::fs::read_to_string("/proc/loadavg").unwrap_or_default();
    let load: Vec<&str> = load.split_whitespace().take(3).collect();
    let cpus = std::thread::available_parallelism().map_or(0, usize::from);
    format!("load average {} on {cpus} CPUs", load.join(" "))
}

/// Invariant 1, from the store: every acknowledged send is in its recipient's history
/// exactly once, as acknowledged, in the order it was sent; histories are numbered
/// 1, 2, 3, ... and hold nothing that was not sent.
fn check_delivery(seed: u64, histories: &BTreeMap<String, History>, senders: &[SenderOutcome]) {
    // Every stored message by its text (unique per send).
    let mut stored: HashMap<&str, &Message> = HashMap::new();
    for (user, history) in histories {
        for (i, message) in history.messages.iter().enumerate() {
            assert_eq!(
                message.sequence,
                i as u64 + 1,
                "[CHAOS_SEED={seed}] {user}'s history is not numbered 1, 2, 3, ... \
                 (gap or duplicate at position {i}): {message:?}"
            );
            assert_eq!(
                &message.recipient, user,
                "[CHAOS_SEED={seed}] a message in {user}'s history is for someone else"
            );
            let previous = stored.insert(message.text.as_str(), message);
            assert!(
                previous.is_none(),
                "[CHAOS_SEED={seed}] stored twice (duplicate delivery): {previous:?} and {message:?}"
            );
        }
    }
    for sender in senders {
        let wrong = &sender.wrong_answers;
        none(
            seed,
            &sender.sender,
            "acknowledgements for another message: ",
            wrong,
        );
        let mut last_sequence: HashMap<&str, u64> = HashMap::new();
        for acked in &sender.acked {
            let found = stored.remove(acked.text.as_str()).unwrap_or_else(|| {
                panic!(
                    "[CHAOS_SEED={seed}] acknowledged but not delivered to {}: {:?}",
                    acked.recipient, acked.message
                )
            });
            assert_eq!(
                (
                    found.id,
                    found.sequence,
                    found.sender.as_str(),
                    found.recipient.as_str()
                ),
                (
                    acked.message.id,
                    acked.message.sequence,
                    sender.sender.as_str(),
                    acked.recipient.as_str()
                ),
                "[CHAOS_SEED={seed}] stored message differs from its acknowledgement"
            );
            let last = last_sequence.entry(acked.recipient.as_str()).or_default();
            assert!(
                found.sequence > *last,
                "[CHAOS_SEED={seed}] {}'s messages to {} out of order: {:?} after sequence {}",
                sender.sender,
                acked.recipient,
                acked.text,
                last
            );
            *last = found.sequence;
        }
    }
    // What is left was never acknowledged: only sends given up at the very end may be.
    let given_up: BTreeSet<&str> = senders
        .iter()
        .flat_map(|s| s.unacked.iter().map(String::as_str))
        .collect();
    let strays: Vec<&&Message> = stored
        .iter()
        .filter(|(text, _)| !given_up.contains(*text))
        .map(|(_, message)| message)
        .collect();
    assert!(
        strays.is_empty(),
        "[CHAOS_SEED={seed}] stored messages that no client sent: {strays:#?}"
    );
}

/// Panics, with the seed, unless `who` has no `items` (described as `what`).
fn none<T: std::fmt::Debug>(seed: u64, who: &str, what: &str, items: &[T]) {
    assert!(
        items.is_empty(),
        "[CHAOS_SEED={seed}] {who}: {what}{items:#?}"
    );
}

/// The readers saw well-formed pages and acknowledgements that never went backwards,
/// and every acknowledgement a reader saw confirmed survived the restarts.
fn check_reads(seed: u64, histories: &BTreeMap<String, History>, readers: &[ReaderOutcome]) {
    for reader in readers {
        none(seed, &reader.user, "", &reader.anomalies);
        let stored = histories[&reader.user].acked;
        assert!(
            reader.acked <= stored && stored <= reader.asked,
            "[CHAOS_SEED={seed}] {}: acknowledged up to {} (asked {}), the store says {stored}",
            reader.user,
            reader.acked,
            reader.asked
        );
    }
}

/// Invariants 1 and 3: every acknowledged send stored exactly once and delivered to
/// every reader and live feed, and every balancer built at the start recovered.
pub(crate) fn check_exactly_once(seed: u64, ended: &Ended) {
    check_delivery(seed, &ended.histories, &ended.senders);
    check_reads(seed, &ended.histories, &ended.readers);
    check_live_feeds(seed, &ended.histories, &ended.feeds);
    if let Err(problem) = &ended.recovered {
        panic!("[CHAOS_SEED={seed}] a balancer built at the start did not recover: {problem}");
    }
}

/// Invariant 1, live: each feed delivered exactly the stored history, over all its
/// resumptions: no duplicates, no gaps, strictly increasing sequences.
fn check_live_feeds(seed: u64, histories: &BTreeMap<String, History>, feeds: &[FeedOutcome]) {
    for feed in feeds {
        let sequences: Vec<u64> = feed.received.iter().map(|m| m.sequence).collect();
        if let Some(pair) = sequences.windows(2).find(|w| w[1] <= w[0]) {
            panic!(
                "[CHAOS_SEED={seed}] {}'s feed is not strictly increasing ({} after {}): {sequences:?}",
                feed.user, pair[1], pair[0]
            );
        }
        let history = &histories[&feed.user].messages;
        let got: Vec<(u64, u64, &str)> = feed
            .received
            .iter()
            .map(|m| (m.sequence, m.id, m.text.as_str()))
            .collect();
        let want: Vec<(u64, u64, &str)> = history
            .iter()
            .map(|m| (m.sequence, m.id, m.text.as_str()))
            .collect();
        assert!(
            got == want,
            "[CHAOS_SEED={seed}] {}'s feed ({} messages over {} streams) differs from the \
             stored history ({} messages); missing sequences {:?}",
            feed.user,
            got.len(),
            feed.streams,
            want.len(),
            {
                let received: HashSet<u64> = sequences.iter().copied().collect();
                want.iter()
                    .map(|m| m.0)
                    .filter(|s| !received.contains(s))
                    .collect::<Vec<_>>()
            }
        );
        assert!(
            feed.resume_mismatches.is_empty(),
            "[CHAOS_SEED={seed}] {}: {:#?}",
            feed.user,
            feed.resume_mismatches
        );
        // A replica ends a stream with a status (UNAVAILABLE when shutting down), and
        // the balancer reports a broken connection as UNAVAILABLE: one code to resume on.
        let other_codes: Vec<&String> =
            feed.breaks.keys().filter(|c| *c != "Unavailable").collect();
        assert!(
            feed.clean_ends == 0 && other_codes.is_empty(),
            "[CHAOS_SEED={seed}] {}'s streams ended without UNAVAILABLE: clean ends {}, breaks {:?}",
            feed.user,
            feed.clean_ends,
            feed.breaks
        );
    }
}

// ---- report -----------------------------------------------------------------------------

/// Throughput, failures by code, latencies, streams, balancer views and the faults.
pub(crate) fn report(
    seed: u64,
    times: (Duration, Duration),
    stats: &Stats,
    log: &FaultLog,
    ended: &Ended,
    users: &[User],
) {
    report_load(seed, times, stats, ended, users);
    eprintln!("chaos: faults:\n  {}", log.lines());
}

/// Throughput, failures by code, latencies, streams and balancer views.
pub(crate) fn report_load(
    seed: u64,
    (total, load_time): (Duration, Duration),
    stats: &Stats,
    ended: &Ended,
    users: &[User],
) {
    let (senders, readers, feeds) = (&ended.senders, &ended.readers, &ended.feeds);
    let tally = stats.tally();
    let acked: usize = senders.iter().map(|s| s.acked.len()).sum();
    let calls: u64 = tally.ok.values().sum::<u64>() + tally.failed.values().sum::<u64>();
    let secs = load_time.as_secs_f64();
    eprintln!("chaos: ---- report (CHAOS_SEED={seed}) ----");
    eprintln!(
        "chaos: total {total:.2?}, load under faults {load_time:.2?}, host {}",
        host_load()
    );
    eprintln!(
        "chaos: {acked} sends acknowledged ({:.0}/s), {calls} calls ({:.0}/s)",
        acked as f64 / secs,
        calls as f64 / secs
    );
    eprintln!("chaos: succeeded by RPC {:?}", tally.ok);
    eprintln!("chaos: failed by RPC and code {:?}", tally.failed);
    eprintln!("chaos: slowest call by RPC {:?}", tally.slowest);
    for reader in readers {
        eprintln!(
            "chaos: {} fetched {} times, acknowledged up to {}",
            reader.user, reader.fetches, reader.acked
        );
    }
    for feed in feeds {
        eprintln!(
            "chaos: {} feed: {} messages over {} streams on {} replica processes, breaks {:?}",
            feed.user,
            feed.received.len(),
            feed.streams,
            feed.replicas.len(),
            feed.breaks
        );
    }
    for user in users {
        let endpoints: Vec<String> = user
            .lb
            .snapshot()
            .iter()
            .map(|e| {
                format!(
                    "{} {} calls {} errors {} ejections {}",
                    e.address, e.state, e.calls, e.errors, e.ejections
                )
            })
            .collect();
        eprintln!("chaos: {}'s balancer: {}", user.name, endpoints.join("; "));
    }
}

// ---- the soak's resources and delivery ---------------------------------------------

/// One process's resident memory and open file descriptors (Linux `/proc`).
#[derive(Debug, Clone, Copy)]
pub(crate) struct ProcessSample {
    pub(crate) pid: u32,
    /// `VmRSS` of `/proc/PID/status`.
    pub(crate) rss_kib: u64,
    /// Entries of `/proc/PID/fd`.
    pub(crate) fds: usize,
}

impl ProcessSample {
    pub(crate) fn of(pid: u32) -> Self {
        Self {
            pid,
            rss_kib: procfs::resident_kib(pid),
            fds: procfs::open_fds(pid),
        }
    }
}

/// Every replica's sample (by index) and the test process's own.
pub(crate) struct Resources {
    pub(crate) replicas: Vec<ProcessSample>,
    pub(crate) test: ProcessSample,
}

impl Resources {
    pub(crate) fn sample(replicas: &[Replica]) -> Self {
        Self {
            replicas: replicas
                .iter()
                .map(|r| ProcessSample::of(running(r)))
                .collect(),
            test: ProcessSample::of(std::process::id()),
        }
    }
}

pub(crate) fn mib(kib: u64) -> String {
    format!("{:.1} MiB", kib as f64 / 1024.0)
}

/// The soak's headline numbers, counted rather than asserted one by one (the full
/// checks, run after the report, say exactly what is wrong).
pub(crate) struct DeliveryCounts {
    /// Sends the clients saw acknowledged.
    pub(crate) acked: usize,
    /// Acknowledged sends that are not in the store.
    pub(crate) lost: usize,
    /// Messages stored more than once (same text: one per send, retries included).
    pub(crate) stored_duplicates: usize,
    /// Messages a live feed delivered more than once (same sequence).
    pub(crate) feed_duplicates: usize,
}

impl DeliveryCounts {
    pub(crate) fn count(ended: &Ended) -> Self {
        let (histories, senders, feeds) = (&ended.histories, &ended.senders, &ended.feeds);
        let mut stored: HashMap<&str, usize> = HashMap::new();
        for message in histories.values().flat_map(|h| &h.messages) {
            *stored.entry(message.text.as_str()).or_default() += 1;
        }
        let acked = senders.iter().flat_map(|s| &s.acked);
        Self {
            acked: acked.clone().count(),
            lost: acked
                .filter(|a| !stored.contains_key(a.text.as_str()))
                .count(),
            stored_duplicates: stored.values().map(|n| n - 1).sum(),
            feed_duplicates: feeds
                .iter()
                .map(|feed| {
                    let distinct: HashSet<u64> = feed.received.iter().map(|m| m.sequence).collect();
                    feed.received.len() - distinct.len()
                })
                .sum(),
        }
    }
}

/// The soak's report: deliveries, calls, faults, and every replica's memory and
/// descriptors at the start and the end of the load.
pub(crate) fn report_soak(
    seed: u64,
    load_time: Duration,
    stats: &Stats,
    faults: &SoakFaults,
    delivery: &DeliveryCounts,
    (start, end): (&Resources, &Resources),
) {
    let secs = load_time.as_secs_f64();
    let calls: u64 = {
        let tally = stats.tally();
        tally.ok.values().sum::<u64>() + tally.failed.values().sum::<u64>()
    };
    eprintln!("soak: ---- soak report (CHAOS_SEED={seed}) ----");
    eprintln!(
        "soak: {load_time:.0?} of load under faults: {} faults in {} rounds, host {}",
        faults.faults,
        faults.rounds,
        host_load()
    );
    eprintln!(
        "soak: acknowledged sends {} ({:.0}/s); lost {}; duplicates {} stored, {} in live feeds",
        delivery.acked,
        delivery.acked as f64 / secs,
        delivery.lost,
        delivery.stored_duplicates,
        delivery.feed_duplicates
    );
    let tally = stats.tally();
    eprintln!(
        "soak: calls {calls} ({:.0}/s), failed {} ({} broke after the answer began): {:?}",
        calls as f64 / secs,
        tally.failed.values().sum::<u64>(),
        tally.broke_mid_answer,
        tally.failed
    );
    drop(tally);
    for (i, (before, after)) in start.replicas.iter().zip(&end.replicas).enumerate() {
        let process = if i == LONG_LIVED {
            format!("pid {} (never killed)", before.pid)
        } else {
            format!(
                "pid {} -> {} (restarted {} times)",
                before.pid, after.pid, faults.restarts[i]
            )
        };
        eprintln!(
            "soak: r{i} {process}, frozen {} times: RSS {} -> {} ({:+.1} MiB), fds {} -> {} ({:+})",
            faults.freezes[i],
            mib(before.rss_kib),
            mib(after.rss_kib),
            (after.rss_kib as f64 - before.rss_kib as f64) / 1024.0,
            before.fds,
            after.fds,
            after.fds as i64 - before.fds as i64
        );
    }
    eprintln!(
        "soak: bounds for r{LONG_LIVED}: RSS growth <= {}, fds growth <= {FD_GROWTH_BOUND}",
        mib(RSS_GROWTH_BOUND_KIB)
    );
    // With the histories fetched: about the test's peak (see `soak_budget`).
    let now = ProcessSample::of(std::process::id());
    eprintln!(
        "soak: test process: RSS {} -> {} (with the final histories {}), fds {} -> {}",
        mib(start.test.rss_kib),
        mib(end.test.rss_kib),
        mib(now.rss_kib),
        start.test.fds,
        end.test.fds
    );
}

/// Nothing acknowledged was lost, nothing was stored or delivered twice.
pub(crate) fn check_soak_delivery(seed: u64, delivery: &DeliveryCounts) {
    assert!(
        delivery.lost == 0 && delivery.stored_duplicates == 0 && delivery.feed_duplicates == 0,
        "[CHAOS_SEED={seed}] {} acknowledged sends lost, {} stored twice, {} delivered twice \
         by a live feed",
        delivery.lost,
        delivery.stored_duplicates,
        delivery.feed_duplicates
    );
}

/// The long-lived replica is the process it was at the start, and grew within the
/// bounds (see [`RSS_GROWTH_BOUND_KIB`], [`FD_GROWTH_BOUND`]).
pub(crate) fn check_long_lived_replica(seed: u64, start: &Resources, end: &Resources) {
    let (before, after) = (start.replicas[LONG_LIVED], end.replicas[LONG_LIVED]);
    assert_eq!(
        before.pid, after.pid,
        "[CHAOS_SEED={seed}] r{LONG_LIVED} is not the process it was at the start"
    );
    assert!(
        after.rss_kib <= before.rss_kib + RSS_GROWTH_BOUND_KIB,
        "[CHAOS_SEED={seed}] r{LONG_LIVED}'s RSS grew from {} to {}, more than {}",
        mib(before.rss_kib),
        mib(after.rss_kib),
        mib(RSS_GROWTH_BOUND_KIB)
    );
    assert!(
        after.fds <= before.fds + FD_GROWTH_BOUND,
        "[CHAOS_SEED={seed}] r{LONG_LIVED}'s open descriptors grew from {} to {}, more than \
         {FD_GROWTH_BOUND}",
        before.fds,
        after.fds
    );
}

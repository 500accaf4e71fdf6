//! Where the time of writes goes: the writer marks each stage of a batch ([`Marks`]),
//! and every [`REPORT_EVERY`] of activity [`Report`] logs at debug level, per stage,
//! the median, 99th percentile and maximum over the batches, the time requests spent
//! in the writer (queued to answered), and how the slowest 1% of requests split that
//! time between the stages: which stage holds the tail, and how many batches of other
//! replicas took the lock while one waited (`process_lock.rs`). Nothing is recorded
//! unless the report is logged (`RUST_LOG=chat_server::store::sqlite::writer=debug`).

use std::time::{Duration, Instant};

/// How often, at most, the writer logs its report.
const REPORT_EVERY: Duration = Duration::from_secs(5);

/// The stages of a batch, in order, as [`Report`] names them.
const STAGES: [&str; 6] = ["queue", "lock", "begin", "run", "commit", "answer"];

/// When a batch reached each stage. A stage the batch never reached (it failed
/// before) keeps the time of the one before, so it counts as taking no time.
#[derive(Debug, Clone, Copy)]
pub(super) struct Marks {
    /// The writer started on the batch (took its first request from the queue).
    pub started: Instant,
    /// It holds the replicas' lock (`process_lock.rs`).
    pub locked: Instant,
    /// `BEGIN IMMEDIATE` returned: it holds SQLite's write lock.
    pub begun: Instant,
    /// Every request's body has run.
    pub ran: Instant,
    /// `COMMIT` returned (the `fsync`, and any checkpoint SQLite ran in it).
    pub committed: Instant,
    /// How many batches of other processes took the replicas' lock while this one
    /// waited for it.
    pub others_first: u64,
}

impl Marks {
    /// Marks of a batch started at `started`, with no stage reached yet.
    pub fn new(started: Instant) -> Self {
        Self {
            started,
            locked: started,
            begun: started,
            ran: started,
            committed: started,
            others_first: 0,
        }
    }

    /// Each stage's time for a request queued at `queued`, answered at `answered`, in
    /// the order of [`STAGES`], in microseconds.
    fn stages(&self, queued: Instant, answered: Instant) -> [u32; 6] {
        let locked = self.locked.max(self.started);
        let begun = self.begun.max(locked);
        let ran = self.ran.max(begun);
        let committed = self.committed.max(ran);
        let micros = |from: Instant, to: Instant| {
            u32::try_from(to.saturating_duration_since(from).as_micros()).unwrap_or(u32::MAX)
        };
        [
            micros(queued, self.started),
            micros(self.started, locked),
            micros(locked, begun),
            micros(begun, ran),
            micros(ran, committed),
            micros(committed, answered),
        ]
    }
}

/// The requests and batches since the last report.
pub(super) struct Report {
    since: Instant,
    batches: Vec<[u32; 6]>,
    requests: Vec<[u32; 6]>,
    others_first: Vec<u32>,
}

impl Report {
    pub fn new() -> Self {
        Self {
            since: Instant::now(),
            batches: Vec::new(),
            requests: Vec::new(),
            others_first: Vec::new(),
        }
    }

    /// Whether the report is logged at all (debug level for this module): if not,
    /// the writer records nothing.
    pub fn enabled(&self) -> bool {
        tracing::enabled!(tracing::Level::DEBUG)
    }

    /// Records a batch whose requests were queued at `queued` (in batch order), and
    /// answered at `answered`; logs the report when it is due.
    pub fn record(
        &mut self,
        marks: &Marks,
        queued: impl Iterator<Item = Instant>,
        answered: Instant,
    ) {
        let mut oldest = None;
        for queued in queued {
            self.requests.push(marks.stages(queued, answered));
            oldest = Some(oldest.map_or(queued, |oldest: Instant| oldest.min(queued)));
        }
        self.batches
            .push(marks.stages(oldest.unwrap_or(marks.started), answered));
        self.others_first
            .push(u32::try_from(marks.others_first).unwrap_or(u32::MAX));
        if self.since.elapsed() >= REPORT_EVERY {
            self.log();
            *self = Self::new();
        }
    }

    fn log(&mut self) {
        let per_stage: Vec<String> = (0..STAGES.len())
            .map(|stage| {
                let mut values: Vec<u32> = self.batches.iter().map(|b| b[stage]).collect();
                values.sort_unstable();
                format!(
                    "{}={}/{}/{}",
                    STAGES[stage],
                    quantile(&values, 0.5),
                    quantile(&values, 0.99),
                    values.last().copied().unwrap_or(0)
                )
            })
            .collect();
        self.requests
            .sort_unstable_by_key(|stages| stages.iter().map(|&s| u64::from(s)).sum::<u64>());
        let totals: Vec<u32> = self
            .requests
            .iter()
            .map(|stages| stages.iter().fold(0u32, |sum, &s| sum.saturating_add(s)))
            .collect();
        // The slowest 1% of requests (at least one), and their mean time per stage.
        let tail = &self.requests[self.requests.len() - self.requests.len().div_ceil(100)..];
        let tail_split: Vec<String> = (0..STAGES.len())
            .map(|stage| {
                let sum: u64 = tail.iter().map(|stages| u64::from(stages[stage])).sum();
                format!("{}={}", STAGES[stage], sum / tail.len().max(1) as u64)
            })
            .collect();
        self.others_first.sort_unstable();
        tracing::debug!(
            others_first_p50_p99_max = format!(
                "{}/{}/{}",
                quantile(&self.others_first, 0.5),
                quantile(&self.others_first, 0.99),
                self.others_first.last().copied().unwrap_or(0)
            ),
            seconds = self.since.elapsed().as_secs_f64(),
            batches = self.batches.len(),
            requests = self.requests.len(),
            in_writer_us_p50_p99_p999_max = format!(
                "{}/{}/{}/{}",
                quantile(&totals, 0.5),
                quantile(&totals, 0.99),
                quantile(&totals, 0.999),
                totals.last().copied().unwrap_or(0)
            ),
            batch_stage_us_p50_p99_max = per_stage.join(" "),
            slowest_1pct_stage_us_mean = tail_split.join(" "),
            "database writer"
        );
    }
}

/// The `q` quantile of sorted `values` (0 if empty).
fn quantile(values: &[u32], q: f64) -> u32 {
    if values.is_empty() {
        return 0;
    }
    let index = ((values.len() as f64 * q).ceil() as usize).clamp(1, values.len()) - 1;
    values[index]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quantiles_of_sorted_values() {
        let values: Vec<u32> = (1..=100).collect();
        assert_eq!(quantile(&values, 0.5), 50);
        assert_eq!(quantile(&values, 0.99), 99);
        assert_eq!(quantile(&values, 0.999), 100);
        assert_eq!(quantile(&[7], 0.999), 7);
        assert_eq!(quantile(&[], 0.5), 0);
    }

    #[test]
    fn a_batch_splits_into_stages_and_a_stage_not_reached_takes_no_time() {
        let queued = Instant::now();
        let at = |ms: u64| queued + Duration::from_millis(ms);
        let mut marks = Marks::new(at(2));
        marks.locked = at(5);
        marks.begun = at(6);
        marks.ran = at(9);
        marks.committed = at(13);
        assert_eq!(
            marks.stages(queued, at(14)),
            [2_000, 3_000, 1_000, 3_000, 4_000, 1_000]
        );
        // `BEGIN` failed: the stages after the lock took nothing.
        let mut failed = Marks::new(at(2));
        failed.locked = at(5);
        assert_eq!(failed.stages(queued, at(6)), [2_000, 3_000, 0, 0, 0, 1_000]);
    }
}

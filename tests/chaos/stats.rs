//! Call accounting: every call the load makes, counted by outcome before any retry by
//! the test itself (invariant 2 is checked on these counts).

use std::{collections::BTreeMap, sync::Mutex, time::Duration};

use tokio::time::Instant;
use tonic::{Response, Status};

use crate::checks::BROKE_MID_ANSWER;

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub(crate) enum Rpc {
    CreateAccount,
    Login,
    SendMessage,
    FetchMessages,
    AckMessages,
    Subscribe,
}

/// Every call's outcome, before any retry by the test itself.
pub(crate) struct Stats {
    pub(crate) started: Instant,
    pub(crate) tally: Mutex<Tally>,
}

#[derive(Default)]
pub(crate) struct Tally {
    pub(crate) ok: BTreeMap<Rpc, u64>,
    pub(crate) failed: BTreeMap<(Rpc, String), u64>,
    pub(crate) slowest: BTreeMap<Rpc, Duration>,
    /// The first failures in full, with when they happened.
    pub(crate) samples: Vec<String>,
    /// Failures of calls whose answer had begun when its connection broke (see
    /// `check_soak_failed_calls`).
    pub(crate) broke_mid_answer: u64,
}

impl Stats {
    pub(crate) fn new(started: Instant) -> Self {
        Self {
            started,
            tally: Mutex::new(Tally::default()),
        }
    }

    pub(crate) fn tally(&self) -> std::sync::MutexGuard<'_, Tally> {
        self.tally
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Makes one call and records how it went (a `Subscribe` counts as a call until
    /// its response headers; a stream that breaks later is recorded by the feed).
    pub(crate) async fn call<T>(
        &self,
        rpc: Rpc,
        call: impl Future<Output = Result<Response<T>, Status>>,
    ) -> Result<Response<T>, Status> {
        let sent = Instant::now();
        let result = call.await;
        let took = sent.elapsed();
        let mut tally = self.tally();
        let slowest = tally.slowest.entry(rpc).or_default();
        *slowest = (*slowest).max(took);
        match &result {
            Ok(_) => *tally.ok.entry(rpc).or_default() += 1,
            Err(status) => {
                *tally
                    .failed
                    .entry((rpc, format!("{:?}", status.code())))
                    .or_default() += 1;
                if status.message().contains(BROKE_MID_ANSWER) {
                    tally.broke_mid_answer += 1;
                }
                if tally.samples.len() < 20 {
                    let at = sent.duration_since(self.started);
                    tally.samples.push(format!(
                        "at {at:.2?} {rpc:?} failed after {took:.2?}: {:?}: {}",
                        status.code(),
                        status.message()
                    ));
                }
            }
        }
        result
    }

    pub(crate) fn failures(&self) -> u64 {
        self.tally().failed.values().sum()
    }
}

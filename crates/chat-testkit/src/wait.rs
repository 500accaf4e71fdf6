//! Waiting, bounded, for a condition that no event announces.

use std::time::Duration;

/// Polls `check` every `every` until it gives `Ok`; panics with its last `Err` once
/// `within` has passed.
pub async fn eventually<T, E: std::fmt::Display, F: Future<Output = Result<T, E>>>(
    within: Duration,
    every: Duration,
    mut check: impl FnMut() -> F,
) -> T {
    let deadline = tokio::time::Instant::now() + within;
    loop {
        match check().await {
            Ok(value) => return value,
            Err(problem) => assert!(
                tokio::time::Instant::now() < deadline,
                "{problem}, within {within:?}"
            ),
        }
        tokio::time::sleep(every).await;
    }
}

//! Replayable request bodies, so a call can be retried on another endpoint.
//!
//! The body is **not** buffered before sending (that would deadlock a
//! bidirectional stream whose client waits for a reply before sending more).
//! Instead every attempt gets a [`ReplayBody`] handle on one shared source: it
//! forwards the source's frames as they come and keeps a copy of each data frame
//! (a `Bytes` clone: a reference count, no copy). A later attempt first replays
//! the kept frames, then continues with the source where the earlier attempt
//! left it. So a retry always sends exactly the body the caller produced, and
//! unary calls (one small message) are always replayable.
//!
//! The first kept frame lives in the shared state itself (a unary request is
//! one frame), so a unary call's replay allocates nothing beyond that state.
//!
//! Keeping copies stops once `max_replay_bytes` have been kept; from then on the
//! call can no longer be retried (unless the source was never read) and the
//! copies are released. Copies are also released once the call is committed to
//! a response, so long client streams do not accumulate memory.
//!
//! After each data frame the source is polled once more (**look-ahead**): a
//! body that ends right after it, as a unary request does, then says so
//! through `is_end_stream`, and hyper sends `END_STREAM` on that data frame.
//! Without it (tonic's own request bodies never say so early) every unary
//! request costs an extra, empty `DATA` frame that both ends encode, decode
//! and account for. A frame the look-ahead finds waits for the next poll.
//!
//! A superseded attempt's handle fails (`CANCELLED`) rather than ending the
//! stream, so the abandoned HTTP/2 stream is reset, never ended cleanly with a
//! truncated body.

use std::{
    pin::Pin,
    sync::{Arc, Mutex, MutexGuard, PoisonError},
    task::{Context, Poll},
};

use bytes::Bytes;
use http::HeaderMap;
use http_body::{Body as HttpBody, Frame};
use smallvec::SmallVec;
use tonic::{Status, body::Body};

/// The shared source of a call's attempts' bodies.
#[derive(Debug, Clone)]
pub(crate) struct Replay {
    shared: Arc<Mutex<State>>,
}

#[derive(Debug)]
struct State {
    source: Body,
    /// What the look-ahead polled from the source, not yet forwarded.
    peeked: Option<Result<Frame<Bytes>, Status>>,
    source_done: bool,
    kept: SmallVec<[Bytes; 1]>,
    kept_bytes: usize,
    trailers: Option<HeaderMap>,
    cap: usize,
    /// Keeping stopped after frames were forwarded: no replay possible.
    overflowed: bool,
    /// The source failed: no replay possible.
    failed: bool,
    /// The call is committed to a response: keep nothing more.
    committed: bool,
    /// The attempt whose handle is live.
    attempt: u64,
}

impl Replay {
    /// Wraps a call's request body; keeps at most `cap` bytes for replays.
    pub fn new(source: Body, cap: usize) -> Self {
        let source_done = source.is_end_stream();
        Self {
            shared: Arc::new(Mutex::new(State {
                source,
                peeked: None,
                source_done,
                kept: SmallVec::new(),
                kept_bytes: 0,
                trailers: None,
                cap,
                overflowed: false,
                failed: false,
                committed: false,
                attempt: 0,
            })),
        }
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        self.shared.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// The body of the next attempt; the previous attempt's handle stops working.
    pub fn attempt(&self) -> Body {
        let attempt = {
            let mut state = self.lock();
            state.attempt += 1;
            state.attempt
        };
        Body::new(ReplayBody {
            shared: self.shared.clone(),
            attempt,
            next: 0,
            trailers_sent: false,
        })
    }

    /// Whether another attempt would send the whole body.
    pub fn can_replay(&self) -> bool {
        let state = self.lock();
        !state.overflowed && !state.failed && !state.committed
    }

    /// Whether the caller's body itself failed (so its error, not the
    /// balancer's, is the call's outcome).
    pub fn source_failed(&self) -> bool {
        self.lock().failed
    }

    /// The call is committed: release the kept frames and keep no more.
    pub fn commit(&self) {
        let mut state = self.lock();
        state.committed = true;
        state.kept = SmallVec::new();
        state.trailers = None;
    }
}

impl State {
    /// The source's next frame: the one the look-ahead found, if any.
    fn poll_source(&mut self, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, Status>>> {
        match self.peeked.take() {
            Some(frame) => Poll::Ready(Some(frame)),
            None => Pin::new(&mut self.source).poll_frame(cx),
        }
    }

    /// The look-ahead (see the module docs): polls the source once more, so
    /// that its end is known as soon as it is reached.
    fn look_ahead(&mut self, cx: &mut Context<'_>) {
        if self.source_done || self.peeked.is_some() {
            return;
        }
        match Pin::new(&mut self.source).poll_frame(cx) {
            Poll::Pending => {}
            Poll::Ready(None) => self.source_done = true,
            Poll::Ready(Some(frame)) => self.peeked = Some(frame),
        }
    }
}

/// One attempt's view of a [`Replay`].
#[derive(Debug)]
struct ReplayBody {
    shared: Arc<Mutex<State>>,
    attempt: u64,
    /// The next kept frame to replay.
    next: usize,
    trailers_sent: bool,
}

impl HttpBody for ReplayBody {
    type Data = Bytes;
    type Error = Status;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Status>>> {
        let this = self.get_mut();
        let mut state = this.shared.lock().unwrap_or_else(PoisonError::into_inner);
        if state.attempt != this.attempt {
            return Poll::Ready(Some(Err(Status::cancelled(
                "request body superseded by a retry",
            ))));
        }
        if let Some(data) = state.kept.get(this.next) {
            this.next += 1;
            return Poll::Ready(Some(Ok(Frame::data(data.clone()))));
        }
        if state.source_done {
            if !this.trailers_sent {
                this.trailers_sent = true;
                if let Some(trailers) = state.trailers.clone() {
                    return Poll::Ready(Some(Ok(Frame::trailers(trailers))));
                }
            }
            return Poll::Ready(None);
        }
        let state = &mut *state;
        match state.poll_source(cx) {
            Poll::Pending => Poll::Pending,
            Poll::Ready(None) => {
                state.source_done = true;
                this.trailers_sent = true;
                Poll::Ready(None)
            }
            Poll::Ready(Some(Err(status))) => {
                state.failed = true;
                Poll::Ready(Some(Err(status)))
            }
            Poll::Ready(Some(Ok(frame))) => {
                let keep = !state.committed && !state.overflowed;
                if let Some(data) = frame.data_ref() {
                    if keep {
                        state.kept_bytes = state.kept_bytes.saturating_add(data.len());
                        if state.kept_bytes > state.cap {
                            state.overflowed = true;
                            state.kept = SmallVec::new();
                        } else {
                            state.kept.push(data.clone());
                        }
                    }
                    this.next = state.kept.len();
                    state.look_ahead(cx);
                } else if let Some(trailers) = frame.trailers_ref() {
                    if keep {
                        state.trailers = Some(trailers.clone());
                    }
                    this.trailers_sent = true;
                }
                Poll::Ready(Some(Ok(frame)))
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        let state = self.shared.lock().unwrap_or_else(PoisonError::into_inner);
        state.attempt == self.attempt
            && state.source_done
            && self.next >= state.kept.len()
            && (self.trailers_sent || state.trailers.is_none())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use futures::{StreamExt, stream};

    async fn collect(mut body: Body) -> Result<Vec<u8>, Status> {
        let mut out = Vec::new();
        while let Some(frame) = std::future::poll_fn(|cx| Pin::new(&mut body).poll_frame(cx)).await
        {
            if let Ok(data) = frame?.into_data() {
                out.extend_from_slice(&data);
            }
        }
        Ok(out)
    }

    fn streaming(chunks: &[&'static [u8]]) -> Body {
        let frames = chunks
            .iter()
            .map(|c| Ok::<_, Status>(Frame::data(Bytes::from_static(c))));
        Body::new(http_body_util_stream(stream::iter(
            frames.collect::<Vec<_>>(),
        )))
    }

    /// A minimal stream-backed body (http-body-util is not a dependency).
    fn http_body_util_stream(
        s: impl futures::Stream<Item = Result<Frame<Bytes>, Status>> + Send + Unpin + 'static,
    ) -> impl HttpBody<Data = Bytes, Error = Status> + Send + 'static {
        struct S<T>(T);
        impl<T: futures::Stream<Item = Result<Frame<Bytes>, Status>> + Unpin> HttpBody for S<T> {
            type Data = Bytes;
            type Error = Status;
            fn poll_frame(
                mut self: Pin<&mut Self>,
                cx: &mut Context<'_>,
            ) -> Poll<Option<Result<Frame<Bytes>, Status>>> {
                self.0.poll_next_unpin(cx)
            }
        }
        S(s)
    }

    #[tokio::test]
    async fn a_retry_replays_what_was_read_and_continues_the_source() {
        let replay = Replay::new(streaming(&[b"ab", b"cd", b"ef"]), 1024);
        let mut first = replay.attempt();
        // The first attempt reads one frame, then fails.
        let frame = std::future::poll_fn(|cx| Pin::new(&mut first).poll_frame(cx)).await;
        assert_eq!(frame.unwrap().unwrap().into_data().unwrap(), &b"ab"[..]);
        assert!(replay.can_replay());
        let second = replay.attempt();
        // The superseded handle fails instead of ending its stream.
        assert!(collect(first).await.is_err());
        assert_eq!(collect(second).await.unwrap(), b"abcdef");
        // A third attempt replays everything from the kept frames.
        assert_eq!(collect(replay.attempt()).await.unwrap(), b"abcdef");
    }

    #[tokio::test]
    async fn a_body_that_ends_after_a_frame_says_so_with_that_frame() {
        // Like tonic's unary request body: one data frame, its end known only
        // when polled again.
        let replay = Replay::new(streaming(&[b"msg"]), 1024);
        for attempt in 1..=2 {
            let mut body = replay.attempt();
            assert!(!body.is_end_stream(), "attempt {attempt}: nothing sent yet");
            let frame = std::future::poll_fn(|cx| Pin::new(&mut body).poll_frame(cx)).await;
            assert_eq!(frame.unwrap().unwrap().into_data().unwrap(), &b"msg"[..]);
            assert!(
                body.is_end_stream(),
                "attempt {attempt}: the end goes out with the data frame"
            );
        }
    }

    #[tokio::test]
    async fn a_body_over_the_cap_cannot_be_replayed_once_read() {
        let replay = Replay::new(streaming(&[b"0123456789", b"x"]), 8);
        assert!(
            replay.can_replay(),
            "an unread source can always be replayed"
        );
        assert_eq!(collect(replay.attempt()).await.unwrap(), b"0123456789x");
        assert!(!replay.can_replay());
    }

    #[tokio::test]
    async fn a_stream_that_waits_is_forwarded_as_it_comes() {
        // A bidi client sends one message, then waits for the server's reply:
        // the attempt must get that message now, not after the stream ends.
        let (tx, rx) = futures::channel::mpsc::unbounded::<Result<Frame<Bytes>, Status>>();
        let replay = Replay::new(Body::new(http_body_util_stream(rx)), 1024);
        tx.unbounded_send(Ok(Frame::data(Bytes::from_static(b"ping"))))
            .unwrap();
        let mut body = replay.attempt();
        let frame = std::future::poll_fn(|cx| Pin::new(&mut body).poll_frame(cx)).await;
        assert_eq!(frame.unwrap().unwrap().into_data().unwrap(), &b"ping"[..]);
        let pending = futures::poll!(std::future::poll_fn(|cx| Pin::new(&mut body).poll_frame(cx)));
        assert!(pending.is_pending(), "nothing more was sent yet");
        tx.unbounded_send(Ok(Frame::data(Bytes::from_static(b"pong?"))))
            .unwrap();
        drop(tx);
        assert_eq!(collect(body).await.unwrap(), b"pong?");
        assert_eq!(collect(replay.attempt()).await.unwrap(), b"pingpong?");
    }

    #[tokio::test]
    async fn commit_stops_replays() {
        let replay = Replay::new(streaming(&[b"a"]), 8);
        assert_eq!(collect(replay.attempt()).await.unwrap(), b"a");
        replay.commit();
        assert!(!replay.can_replay());
    }
}

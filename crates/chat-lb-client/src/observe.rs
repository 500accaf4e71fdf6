//! Watching a response body after the call was answered.
//!
//! A streaming response (or a unary one whose status comes in trailers) can
//! still fail after its headers: the replica dies mid-stream, or ends the stream
//! with a failure code in its trailers (`UNAVAILABLE` because it is shutting
//! down, `INTERNAL` because it failed). The balancer sees that here and counts
//! it against the endpoint like a failure code in response headers (the same
//! failure codes, see `classify`): the attempt, counted as a success when its
//! headers came, becomes a failure (see `CallContext::count_stream_failure`).
//! So a broken stream or a trailing `UNAVAILABLE` ejects the endpoint at once
//! (the caller's next call, typically a resumed subscription, lands
//! elsewhere), and the other failure codes accrue (see `outlier::accrual`).
//! Application outcomes in trailers (`NOT_FOUND`, ...) never count. A broken
//! connection is reported as `UNAVAILABLE` instead of tonic's `UNKNOWN`, so
//! callers have one code to resume on.

use std::{
    pin::Pin,
    sync::Arc,
    task::{Context, Poll},
};

use bytes::Bytes;
use http_body::{Body as HttpBody, Frame, SizeHint};
use tonic::{Status, body::Body};

use crate::{
    classify::{CallFailure, describe, failure_in, is_transport},
    context::CallContext,
    endpoint::Endpoint,
};

/// A response body that reports a late failure to its endpoint.
pub(crate) struct Observed {
    inner: Body,
    endpoint: Arc<Endpoint>,
    context: Arc<CallContext>,
    reported: bool,
}

impl Observed {
    pub fn wrap(
        response: http::Response<Body>,
        endpoint: Arc<Endpoint>,
        context: Arc<CallContext>,
    ) -> http::Response<Body> {
        response.map(|inner| {
            Body::new(Observed {
                inner,
                endpoint,
                context,
                reported: false,
            })
        })
    }

    /// Counts the call's failure of `kind` against its endpoint, once.
    fn report(&mut self, kind: CallFailure, message: &str) {
        if !self.reported {
            self.reported = true;
            self.context
                .count_stream_failure(&self.endpoint, kind, message);
        }
    }

    /// The stream ended with `trailers`: a failure code in them is reported.
    fn on_trailers(&mut self, trailers: &http::HeaderMap) {
        let codes = self.context.cfg.outlier.failure_codes;
        if let Some((kind, message)) = failure_in(trailers, codes) {
            self.report(kind, &format!("stream ended {}: {message}", kind.label()));
        }
    }
}

impl HttpBody for Observed {
    type Data = Bytes;
    type Error = Status;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Status>>> {
        let this = &mut *self;
        match Pin::new(&mut this.inner).poll_frame(cx) {
            Poll::Ready(Some(Err(status))) if is_transport(&status) => {
                let text = describe(&status);
                this.report(
                    CallFailure::Transport,
                    &format!("response stream broke: {text}"),
                );
                Poll::Ready(Some(Err(Status::unavailable(format!(
                    "chat-lb-client: the connection to {} broke during the call: {text}",
                    this.endpoint.addr
                )))))
            }
            Poll::Ready(Some(Ok(frame))) => {
                if let Some(trailers) = frame.trailers_ref() {
                    this.on_trailers(trailers);
                }
                Poll::Ready(Some(Ok(frame)))
            }
            other => other,
        }
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

//! Watching a response body after the call was answered.
//!
//! A streaming response (or a unary one whose status comes in trailers) can
//! still fail after its headers: the replica dies mid-stream, or ends the stream
//! with `UNAVAILABLE` because it is shutting down. The balancer sees that here,
//! ejects the endpoint at once (so the caller's next call — typically a resumed
//! subscription — lands elsewhere), and reports a broken connection as
//! `UNAVAILABLE` instead of tonic's `UNKNOWN`, so callers have one code to
//! resume on.

use std::{
    pin::Pin,
    sync::Arc,
    task::{Context, Poll},
    time::Duration,
};

use bytes::Bytes;
use http_body::{Body as HttpBody, Frame, SizeHint};
use tonic::{Status, body::Body};

use crate::{
    classify::CallFailure,
    classify::{GRPC_STATUS, describe, is_transport},
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

    fn report(&mut self, message: &str) {
        if !self.reported {
            self.reported = true;
            self.context.count_failure(
                &self.endpoint,
                CallFailure::Transport,
                message,
                Duration::ZERO,
            );
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
                this.report(&format!("response stream broke: {text}"));
                Poll::Ready(Some(Err(Status::unavailable(format!(
                    "chat-lb-client: the connection to {} broke during the call: {text}",
                    this.endpoint.addr
                )))))
            }
            Poll::Ready(Some(Ok(frame))) => {
                if let Some(trailers) = frame.trailers_ref()
                    && trailers
                        .get(&GRPC_STATUS)
                        .is_some_and(|s| s.as_bytes() == b"14")
                {
                    let message = Status::from_header_map(trailers)
                        .map(|s| s.message().to_owned())
                        .unwrap_or_default();
                    this.report(&format!("stream ended UNAVAILABLE: {message}"));
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

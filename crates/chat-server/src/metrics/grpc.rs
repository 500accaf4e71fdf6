//! The gRPC server metrics ([`super::GRPC_SERVER_STARTED`] and the others, in
//! go-grpc-prometheus's names and labels) as one tower layer around the tonic router.
//!
//! A call starts when its request arrives. It finishes with the `grpc-status` of the
//! response headers (a trailers-only response: how tonic answers an error before any
//! message) or of the trailers at the end of the response body; a body dropped before
//! its trailers (the client went away) finishes as `Canceled`. Messages are counted as
//! gRPC length-prefixed messages (a 5-byte header: a compression flag and a big-endian
//! length), not as HTTP/2 data frames, since one frame may carry several messages or
//! part of one. A unary or server-streaming call's one request message is counted as
//! the call starts, without watching its request body.

use std::{
    collections::HashMap,
    pin::Pin,
    sync::{Arc, OnceLock},
    task::{Context, Poll},
    time::Instant,
};

use ::metrics::{Counter, Histogram, Label};
use futures::future::BoxFuture;
use http_body::{Body as HttpBody, Frame};
use prost::Message as _;
use tonic::body::Body;

/// The canonical names of the gRPC status codes, by number.
const CODE_NAMES: [&str; 17] = [
    "OK",
    "Canceled",
    "Unknown",
    "InvalidArgument",
    "DeadlineExceeded",
    "NotFound",
    "AlreadyExists",
    "PermissionDenied",
    "ResourceExhausted",
    "FailedPrecondition",
    "Aborted",
    "OutOfRange",
    "Unimplemented",
    "Internal",
    "Unavailable",
    "DataLoss",
    "Unauthenticated",
];

/// The metrics of every method the server serves, by request path; paths not in it
/// share the metrics labelled `unknown`.
#[derive(Debug)]
pub struct MethodTable {
    methods: HashMap<String, Arc<MethodMetrics>>,
    unknown: Arc<MethodMetrics>,
}

/// One method's labels and its metric handles, each registered with the recorder on
/// first use and then kept, so a call costs atomic increments rather than look-ups.
#[derive(Debug)]
struct MethodMetrics {
    labels: [Label; 3],
    /// Whether the client sends a stream; otherwise its one request message is counted
    /// as the call starts, without watching the request body.
    client_streaming: bool,
    started: OnceLock<Counter>,
    received: OnceLock<Counter>,
    sent: OnceLock<Counter>,
    handling: OnceLock<Histogram>,
    /// `grpc_server_handled_total` by code number.
    handled: [OnceLock<Counter>; CODE_NAMES.len()],
}

impl MethodMetrics {
    fn new(labels: [Label; 3], client_streaming: bool) -> Self {
        Self {
            labels,
            client_streaming,
            started: OnceLock::new(),
            received: OnceLock::new(),
            sent: OnceLock::new(),
            handling: OnceLock::new(),
            handled: std::array::from_fn(|_| OnceLock::new()),
        }
    }

    fn counter(&self, cell: &OnceLock<Counter>, name: &'static str) -> Counter {
        cell.get_or_init(|| ::metrics::counter!(name, self.labels.iter()))
            .clone()
    }

    /// Records a finished call: its code (a number; unknown numbers count as
    /// `Unknown`) and how long it took.
    fn finish(&self, code: usize, elapsed: std::time::Duration) {
        let code = if code < CODE_NAMES.len() { code } else { 2 };
        let handled = self.handled[code].get_or_init(|| {
            let grpc_code = Label::from_static_parts("grpc_code", CODE_NAMES[code]);
            let labels = self.labels.iter().cloned().chain([grpc_code]);
            ::metrics::counter!(super::GRPC_SERVER_HANDLED, labels.collect::<Vec<_>>())
        });
        handled.increment(1);
        self.handling
            .get_or_init(|| {
                ::metrics::histogram!(super::GRPC_SERVER_HANDLING_SECONDS, self.labels.iter())
            })
            .record(elapsed);
    }
}

impl MethodTable {
    /// The methods of the services described by encoded `FileDescriptorSet`s, with their
    /// `grpc_type` from the descriptors' streaming flags.
    pub fn from_descriptor_sets(sets: &[&[u8]]) -> Result<Self, prost::DecodeError> {
        let mut methods = HashMap::new();
        for set in sets {
            let set = prost_types::FileDescriptorSet::decode(*set)?;
            for file in &set.file {
                for service in &file.service {
                    let service_name = match file.package() {
                        "" => service.name().to_owned(),
                        package => format!("{package}.{}", service.name()),
                    };
                    for method in &service.method {
                        let kind = match (method.client_streaming(), method.server_streaming()) {
                            (false, false) => "unary",
                            (true, false) => "client_stream",
                            (false, true) => "server_stream",
                            (true, true) => "bidi_stream",
                        };
                        let labels = [
                            Label::new("grpc_service", service_name.clone()),
                            Label::new("grpc_method", method.name().to_owned()),
                            Label::from_static_parts("grpc_type", kind),
                        ];
                        let path = format!("/{service_name}/{}", method.name());
                        let metrics = MethodMetrics::new(labels, method.client_streaming());
                        methods.insert(path, Arc::new(metrics));
                    }
                }
            }
        }
        let unknown = Arc::new(MethodMetrics::new(
            [
                Label::from_static_parts("grpc_service", "unknown"),
                Label::from_static_parts("grpc_method", "unknown"),
                Label::from_static_parts("grpc_type", "unknown"),
            ],
            true,
        ));
        Ok(Self { methods, unknown })
    }

    fn method(&self, path: &str) -> Arc<MethodMetrics> {
        self.methods.get(path).unwrap_or(&self.unknown).clone()
    }
}

/// The layer that records the gRPC server metrics of every call.
#[derive(Debug, Clone)]
pub struct GrpcMetricsLayer {
    methods: Arc<MethodTable>,
}

impl GrpcMetricsLayer {
    /// A layer that labels calls by `methods`.
    pub fn new(methods: MethodTable) -> Self {
        Self {
            methods: Arc::new(methods),
        }
    }
}

impl<S> tower::Layer<S> for GrpcMetricsLayer {
    type Service = GrpcMetrics<S>;

    fn layer(&self, inner: S) -> Self::Service {
        GrpcMetrics {
            inner,
            methods: self.methods.clone(),
        }
    }
}

/// The service of [`GrpcMetricsLayer`].
#[derive(Debug, Clone)]
pub struct GrpcMetrics<S> {
    inner: S,
    methods: Arc<MethodTable>,
}

impl<S> tower::Service<http::Request<Body>> for GrpcMetrics<S>
where
    S: tower::Service<http::Request<Body>, Response = http::Response<Body>>,
    S::Future: Send + 'static,
{
    type Response = http::Response<Body>;
    type Error = S::Error;
    type Future = BoxFuture<'static, Result<Self::Response, Self::Error>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: http::Request<Body>) -> Self::Future {
        let method = self.methods.method(request.uri().path());
        method
            .counter(&method.started, super::GRPC_SERVER_STARTED)
            .increment(1);
        let received = method.counter(&method.received, super::GRPC_SERVER_MSG_RECEIVED);
        let request = if method.client_streaming {
            request.map(|body| {
                Body::new(Counted {
                    inner: body,
                    messages: MessageCounter::default(),
                    counter: received,
                    call: None,
                })
            })
        } else {
            received.increment(1);
            request
        };
        let call = Call {
            method,
            start: Instant::now(),
            finished: false,
        };
        let response = self.inner.call(request);
        Box::pin(async move {
            let response = response.await?;
            let trailers_only = grpc_status(response.headers());
            Ok(response.map(|body| {
                let mut call = call;
                if let Some(code) = trailers_only {
                    call.finish(code);
                }
                let counter = call
                    .method
                    .counter(&call.method.sent, super::GRPC_SERVER_MSG_SENT);
                Body::new(Counted {
                    inner: body,
                    messages: MessageCounter::default(),
                    counter,
                    call: Some(call),
                })
            }))
        })
    }
}

/// The `grpc-status` in a header map, as a code number.
fn grpc_status(headers: &http::HeaderMap) -> Option<usize> {
    let value = headers.get("grpc-status")?;
    std::str::from_utf8(value.as_bytes()).ok()?.parse().ok()
}

/// One call being measured; finishes once (on its status, or as `Canceled` when dropped
/// before it).
struct Call {
    method: Arc<MethodMetrics>,
    start: Instant,
    finished: bool,
}

impl Call {
    fn finish(&mut self, code: usize) {
        if std::mem::replace(&mut self.finished, true) {
            return;
        }
        self.method.finish(code, self.start.elapsed());
    }
}

impl Drop for Call {
    fn drop(&mut self) {
        self.finish(1);
    }
}

/// Counts gRPC length-prefixed messages in a byte stream split anywhere.
#[derive(Debug, Default)]
struct MessageCounter {
    /// Bytes of the current message's 5-byte header seen so far.
    header: [u8; 5],
    header_len: usize,
    /// Bytes of the current message's body still to skip.
    remaining: u64,
}

impl MessageCounter {
    /// Feeds the next bytes; returns how many messages began in them.
    fn feed(&mut self, mut data: &[u8]) -> u64 {
        let mut started = 0;
        while !data.is_empty() {
            if self.remaining > 0 {
                let skip =
                    usize::try_from(self.remaining).map_or(data.len(), |r| r.min(data.len()));
                data = &data[skip..];
                self.remaining -= skip as u64;
                continue;
            }
            let take = (5 - self.header_len).min(data.len());
            self.header[self.header_len..self.header_len + take].copy_from_slice(&data[..take]);
            self.header_len += take;
            data = &data[take..];
            if self.header_len == 5 {
                started += 1;
                self.header_len = 0;
                let length = [
                    self.header[1],
                    self.header[2],
                    self.header[3],
                    self.header[4],
                ];
                self.remaining = u64::from(u32::from_be_bytes(length));
            }
        }
        started
    }
}

/// A request or response body that counts its messages; a response body also finishes
/// its call on the trailers' status.
struct Counted {
    inner: Body,
    messages: MessageCounter,
    counter: ::metrics::Counter,
    call: Option<Call>,
}

impl HttpBody for Counted {
    type Data = bytes::Bytes;
    type Error = tonic::Status;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Self::Data>, Self::Error>>> {
        let this = &mut *self;
        let polled = Pin::new(&mut this.inner).poll_frame(cx);
        match &polled {
            Poll::Ready(Some(Ok(frame))) => {
                if let Some(data) = frame.data_ref() {
                    this.counter.increment(this.messages.feed(data));
                } else if let (Some(trailers), Some(call)) = (frame.trailers_ref(), &mut this.call)
                {
                    call.finish(grpc_status(trailers).unwrap_or(2));
                }
            }
            Poll::Ready(None) => {
                if let Some(call) = &mut this.call {
                    call.finish(2);
                }
            }
            _ => {}
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> http_body::SizeHint {
        self.inner.size_hint()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn messages_are_counted_across_any_split() {
        let mut stream = Vec::new();
        for body in [&b"abc"[..], b"", b"0123456789"] {
            stream.push(0);
            stream.extend_from_slice(&(body.len() as u32).to_be_bytes());
            stream.extend_from_slice(body);
        }
        let whole = MessageCounter::default().feed(&stream);
        assert_eq!(whole, 3);
        for chunk in 1..stream.len() {
            let mut counter = MessageCounter::default();
            let total: u64 = stream.chunks(chunk).map(|part| counter.feed(part)).sum();
            assert_eq!(total, 3, "chunks of {chunk}");
        }
    }

    #[test]
    fn methods_come_from_the_descriptors_and_unknown_paths_share_one_label_set() {
        let table = MethodTable::from_descriptor_sets(&[
            chat_proto::FILE_DESCRIPTOR_SET,
            tonic_health::pb::FILE_DESCRIPTOR_SET,
        ])
        .expect("descriptors decode");
        let value = |path: &str, n: usize| table.method(path).labels[n].value().to_owned();
        assert_eq!(value("/grpc.health.v1.Health/Watch", 2), "server_stream");
        assert_eq!(value("/grpc.health.v1.Health/Check", 2), "unary");
        assert_eq!(
            value("/chat.v1.ChatService/Subscribe", 0),
            "chat.v1.ChatService"
        );
        assert_eq!(value("/chat.v1.ChatService/Subscribe", 1), "Subscribe");
        assert_eq!(value("/chat.v1.ChatService/Subscribe", 2), "server_stream");
        assert_eq!(value("/chat.v1.ChatService/Nope", 1), "unknown");
        assert_eq!(CODE_NAMES[16], "Unauthenticated");
    }
}

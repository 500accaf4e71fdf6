//! A client-side gRPC load balancer for tonic, with active and passive health
//! checking, retries and deadlines.
//!
//! [`Balancer`] is a drop-in transport for **any** tonic-generated client, like
//! a `tonic::transport::Channel`: it is `Clone` and a
//! `tower::Service<http::Request<tonic::body::Body>>`. Unlike
//! `Channel::balance_list`, it stops sending calls to replicas that are down or
//! say they are not serving, and retries calls that never reached a server.
//!
//! ```no_run
//! use chat_lb_client::{Balancer, RetrySafe};
//! use chat_proto::v1::{chat_service_client::ChatServiceClient, HealthCheckRequest};
//! use std::time::Duration;
//!
//! # async fn demo() -> Result<(), Box<dyn std::error::Error>> {
//! let lb = Balancer::builder()
//!     .addresses("replica-1:8500,replica-2:8500,replica-3:8500")
//!     // Every chat RPC is safe to retry (see chat.proto).
//!     .retry_safe(RetrySafe::prefix("/chat.v1.ChatService/"))
//!     .timeout(Duration::from_secs(5))
//!     .build()?;
//! let mut client = ChatServiceClient::new(lb.clone());
//! let health = client.health_check(HealthCheckRequest {}).await?.into_inner();
//! println!("served by {}", health.replica_id);
//!
//! // For a `status` command: fresh probes, then a table.
//! lb.wait_for_probe_round().await;
//! for ep in lb.snapshot() {
//!     println!("{} {} {:?}", ep.address, ep.state, ep.latency_estimate);
//! }
//! # Ok(()) }
//! ```
//!
//! # How a call flows
//!
//! 1. **Deadline and retry-safety.** The deadline comes from the `grpc-timeout`
//!    header (`tonic::Request::set_timeout`) or [`Builder::timeout`]. The call is
//!    *retry-safe* if [`RetrySafe`] says so for its method path, unless a
//!    [`SafeToRetry`] request extension overrides it.
//! 2. **Pick.** Among the endpoints of the best non-empty tier the [`Policy`]
//!    picks one: power of two random choices by default, on a cost
//!    ([`P2cCost`]): the endpoint's peak-EWMA latency estimate, raised while
//!    an attempt on it has waited longer than that for its answer (a replica
//!    that stops answering grows dearer by the millisecond). Two costs
//!    within a factor of [`Builder::p2c_tolerance`] (2) count as equal and
//!    either is taken at random, so that noise does not bunch calls up. The
//!    tiers, best first:
//!    1. *healthy* endpoints, except slow ones;
//!    2. *unknown* ones, not probed to a conclusion yet, and healthy ones
//!       whose probes are much slower than the others' ([slow](#health));
//!    3. the *last resort*: endpoints [ejected](#health) after a failed call
//!       whose most recent probe succeeded (like Envoy's panic threshold:
//!       rather a replica that failed a call lately than none at all). Being
//!       used as a last resort does not end the ejection;
//!    4. never: endpoints *unhealthy* or *not serving* by their probes, and
//!       ejected ones whose last probe failed (or that have none).
//!
//!    Endpoints the call already tried are skipped (unless they were out and
//!    came back meanwhile), so a retry moves down a tier only once the better
//!    ones were tried. If no endpoint can take the call, it is answered
//!    `UNAVAILABLE` at once, naming every endpoint with its state and last
//!    error, or, with [`Builder::wait_for_ready`], waits for one until the
//!    deadline.
//! 3. **Send** over the endpoint's own HTTP/2 connection, made when the first
//!    probe or call needs it and again after it closes, with nothing between
//!    the caller's task and hyper's connection (a tonic `Channel` instead
//!    under a [`Builder::configure_endpoint`] hook). The
//!    request body goes through a replay buffer (see below).
//! 4. **Classify** the outcome: response headers (success for balancing
//!    purposes, whatever the gRPC status — except a *failure code* and a shed
//!    call); a trailers-only answer with a failure code
//!    ([`Builder::failure_codes`]: `UNAVAILABLE`, `INTERNAL`, `UNKNOWN`,
//!    `DATA_LOSS` by default; application outcomes such as `NOT_FOUND` never
//!    are); a shed call (trailers-only `RESOURCE_EXHAUSTED` with a
//!    `grpc-retry-pushback-ms` trailer, see [overload](#overload)); a transport
//!    error that proves the request never reached the server (connection
//!    refused or failed, stream refused unprocessed); another transport error;
//!    no headers within the per-try timeout.
//! 5. **Update**: the latency feeds the endpoint's peak-EWMA (the estimate of
//!    an endpoint that took no call between two probe checks drops to the
//!    latest check's latency if that is lower, so one slow call long ago does
//!    not keep it unused under light load). A failure that says the replica
//!    may be down (no connection, a transport error, `UNAVAILABLE`, a per-try
//!    timeout) ejects the endpoint at once; the other failure codes accrue
//!    until a detector ejects it ([failure accrual](#failure-accrual)). An
//!    answered call's response body stays watched: a connection that breaks
//!    mid-stream, or a stream ended `UNAVAILABLE`, ejects the endpoint too.
//! 6. **Maybe retry** on another endpoint: always when the request never
//!    reached a server; for retry-safe calls also on a failure code, transport
//!    errors, per-try timeouts and shed calls (those after a backoff when no
//!    other endpoint can take them, see [overload](#overload)), within
//!    `max_attempts` and the retry budget.
//!    An attempt past its per-try timeout is not cancelled: the first attempt
//!    to get response headers answers the call, and a call gives up only at
//!    its deadline or when nothing is running and no retry is possible (the
//!    rules in full, transition by transition: `src/call/state.rs`). Its
//!    answer is the server's response as it came; a transport failure as
//!    `UNAVAILABLE` naming the endpoint and error; a passed deadline as
//!    `DEADLINE_EXCEEDED`.
//! 7. **Maybe hedge**: a call of a [hedged](#hedging) method with no response
//!    headers after the hedging delay is sent to another endpoint too, and the
//!    first response headers win.
//!
//! Every attempt after a call's first (retry or hedge) carries the
//! `grpc-previous-rpc-attempts` header: how many attempts came before it.
//!
//! What a tonic client sees from the balancer itself is always a `Status`:
//! `UNAVAILABLE` when no endpoint can take the call (the message lists every
//! endpoint as `address (state: last error)`, or `address (TLS: problem)`, see
//! [TLS](#tls), and every host name that has not resolved as
//! `name:port (cannot resolve: reason)`, see [`Balancer::unresolved_names`])
//! or when the call failed on a
//! broken connection and could not be retried, `DEADLINE_EXCEEDED` when its
//! deadline passed. A call with neither a deadline nor retry-safety that is stuck
//! on a frozen replica ends when HTTP/2 keepalive gives up on the connection
//! (10s + 5s by default): set a deadline for anything interactive.
//!
//! # Health
//!
//! Each endpoint has a prober task: a [`HealthProbe`] check every
//! `probe_interval` (± jitter) with its own timeout; `unhealthy_threshold`
//! failures in a row make it unhealthy, `healthy_threshold` successes healthy.
//! "Not serving" answers take it out at once. [`GrpcHealthProbe`] also keeps a
//! `grpc.health.v1` `Watch` stream open where the server supports it, so a
//! replica's switch to `NOT_SERVING` is seen the moment it happens.
//! Passive ejections last `base_ejection_time * n` for the n-th offence in a
//! row (capped at `max_ejection_time`), at most `max_ejection_percent` of the
//! endpoints at once; an endpoint comes back on the first successful probe after
//! its ejection time. Meanwhile, an ejected endpoint whose most recent probe
//! succeeded is a *last resort*: it takes calls only while no endpoint is
//! healthy or unknown (see step 2 above), so a single healthy replica that
//! failed one call is used rather than failing every call with `UNAVAILABLE`.
//!
//! # Failure accrual
//!
//! A replica that answers quickly *with errors* (`INTERNAL` from a bad deploy
//! or a broken dependency) passes its health checks, so one error proves
//! little; its failures accrue instead. Every endpoint counts its finished
//! attempts, answered or failed, over a sliding window
//! ([`accrual_window`](Builder::accrual_window), 10s, in ten buckets), and its
//! failed attempts in a row. Every failure kind counts (failure codes,
//! transport failures, per-try timeouts), and every other answer counts as a
//! success, whatever its status. A stream that fails after its response
//! headers counts too: one that breaks, or that ends with a failure code in
//! its trailers (`grpc-status` after the messages; the same failure codes as
//! in headers): its attempt, a success when the headers came, becomes a
//! failure. (Since those headers already reset the failures in a row, it is
//! the windowed rules that judge a replica whose streams fail late.) Three
//! rules eject, each judged on every failure, all on by default:
//!
//! | rule | ejects | defaults |
//! |---|---|---|
//! | [consecutive failures](Builder::consecutive_failures) | after N failed attempts in a row | N = 5 |
//! | [failure percentage](Builder::failure_percentage_ejection) (gRPC A50) | an endpoint whose share of failed attempts in the window is over the threshold and that failed at least [`minimum_failures`](Builder::failure_percentage_minimum_failures) attempts in it, once at least `minimum_hosts` endpoints have `request_volume` attempts in it | 3%, 5 failures, 3 endpoints, 50 attempts |
//! | [success rate](Builder::success_rate_ejection) (gRPC A50) | an endpoint whose success rate is under `mean - stdev_factor * stdev` of the rates of the endpoints with `request_volume` attempts, when there are at least `minimum_hosts` of them | 1.9, 5 endpoints, 100 attempts |
//!
//! A50's own failure-percentage defaults (85%, 5 endpoints) catch only a
//! replica that fails nearly everything, which is ejected at once anyway;
//! ours catch a replica failing one call in twenty-five among three replicas
//! (chat-bench's flaky replica fails 20% of its chat calls, about 4% of all
//! its calls with the health checks of its mix). The share alone would judge
//! a low volume on luck: 2 failures among the 50 attempts of the request
//! volume are 4%. So the rule also needs 5 failures in the window (as many as
//! the consecutive rule needs in a row): a couple of transient errors never
//! eject, while a replica failing 4% of a few hundred calls a second is out
//! within a second (a false ejection is
//! brief, capped, retried around, and the endpoint stays a last resort, but
//! it moves its load onto the others for nothing). The success
//! rate rule is for larger clusters: the lowest of `n` rates is at most
//! `(n - 1) / sqrt(n)` standard deviations under their mean, so with the
//! factor 1.9 it needs 6 endpoints to ever eject. These ejections are like
//! any other: the same growing ejection time, the same cap on the share
//! ejected (so replicas that all fail alike are never all ejected), a probe
//! to readmit, a last resort meanwhile; each says why in
//! [`EndpointSnapshot::ejection_reason`] and in the `reason` label of
//! `chat_lb_endpoint_ejections_total`. An ejection starts the endpoint's
//! accrual over, and so does its end. A retry-safe call that got a failure
//! code is retried on another endpoint, so a flaky replica costs the caller
//! nothing while accrual takes it out.
//!
//! **Slow endpoints.** Peak-EWMA steers calls away from a slow replica, but
//! not far enough: the healthy replicas' costs swing with their own latency,
//! so a replica several times slower still wins a few percent of the
//! power-of-two draws, and those calls set the tail latency (a replica 20ms
//! slower than the others once put p99 at 4-5x its steady value). So the
//! balancer also compares probe latencies. Each endpoint keeps the latencies
//! of its last 3 successful probe checks; its *probe latency* is the fastest
//! of them, so one slow connect or hiccup does not count, and a recovered
//! replica is seen at its first fast probe. After every probe check, an
//! endpoint healthy by its probes is marked **slow** when its probe latency is
//! over [`slow_endpoint_factor`](Builder::slow_endpoint_factor) (3) times the
//! median of the other healthy endpoints' and over
//! [`slow_endpoint_min_latency`](Builder::slow_endpoint_min_latency) (10ms);
//! it is no longer slow under 2/3 of the factor (2x), or at or under the
//! minimum. An endpoint with fewer than 3 successful probes, or without
//! another healthy endpoint to compare with, is never slow. A slow endpoint
//! stays healthy but drops to the second tier (see step 2 above): it takes
//! calls only while no other endpoint is healthy. [`EndpointSnapshot::slow`]
//! shows the mark, and each change is logged (`warn` when an endpoint becomes
//! slow, `info` when it recovers). Probe latency is the yardstick because the
//! probe is the same cheap RPC on every replica, so it compares like with
//! like, whatever mix of calls each replica happens to serve. Its limit: a
//! replica slow only on calls that touch its store, while its health check
//! stays fast, is not caught (peak-EWMA still sends it less). Turn it off with
//! [`Builder::slow_endpoint_detection`]`(false)`.
//!
//! # Overload
//!
//! A server that has no room for a call can shed it: answer at once,
//! trailers-only, `RESOURCE_EXHAUSTED` with gRPC's standard retry pushback
//! trailer `grpc-retry-pushback-ms` (gRPC A6; chat-server does so beyond its
//! `--max-concurrent-rpcs`). The balancer honours it:
//!
//! - the endpoint is **avoided for the pushback period**: its cost gets a
//!   penalty far above any latency cost until the period ends, so power of two
//!   choices picks any endpoint that is not overloaded over it (two overloaded
//!   ones count as equal). The period also counts as a
//!   latency sample of the endpoint (what a call sent there would have
//!   waited), so it does not look idle and cheap the moment the period ends
//!   and draw a burst it sheds again. Under [`Policy::PickFirst`] and
//!   [`Policy::RoundRobin`], which have no costs, every call (its first
//!   attempt as its retries) passes such an endpoint over for the next one of
//!   its tier (in order, or in turn) that is not within a pushback period, and
//!   takes it only when all of them are. A shed call is
//!   no failure: the endpoint is not ejected;
//! - a **retry-safe call is retried at once** on an endpoint it has not tried
//!   that is not itself within a pushback period, within `max_attempts` and
//!   the retry budget;
//! - when there is none, the retry **backs off**: it waits the longer of the
//!   pushback and the call's n-th backoff, `min(base * 2^(n-1), max)` scaled
//!   by a random factor from 0.5 to 1 ([`Builder::retry_backoff`], 25ms and
//!   1s), then picks afresh among all endpoints, the one that shed it
//!   included. A wait that would reach the call's deadline is not made, nor
//!   one the retry budget refuses (a retry the budget refused is counted once
//!   in `chat_lb_retry_budget_refusals_total`, whether it was refused
//!   elsewhere at once or for the backoff);
//! - a **negative (or malformed) pushback** means "do not retry": the caller
//!   gets the server's answer, as does a call that is not retry-safe (the
//!   balancer cannot know the server shed it before acting on it) or one out
//!   of attempts, budget or time.
//!
//! `RESOURCE_EXHAUSTED` **without** the trailer is an application's answer (a
//! quota, a throttled login): it is passed on like any other and never
//! retried. [`EndpointSnapshot::overloads`] counts an endpoint's shed calls
//! and [`EndpointSnapshot::overloaded_for`] says how long it is still avoided;
//! metrics: `chat_lb_endpoint_overloads_total`,
//! `chat_lb_retry_backoffs_total`.
//!
//! # Slow start
//!
//! An endpoint that (re)joins the healthy tier — new, back from an ejection or
//! from failed probes, or no longer slow — gets a share of the calls that
//! ramps up over [`slow_start_window`](Builder::slow_start_window) (10s)
//! instead of its full share at once: a restarted replica has cold caches and
//! connections, while its latency estimate, decayed while it took no calls,
//! makes it look cheap. Its **weight** follows Envoy's slow-start curve:
//!
//! ```text
//! weight = max(min_weight, (elapsed / window) ^ (1 / aggression))
//! ```
//!
//! with [`slow_start_aggression`](Builder::slow_start_aggression) 1 (linear;
//! above 1 ramps faster early) and
//! [`slow_start_min_weight`](Builder::slow_start_min_weight) 0.1 (so it warms
//! up from the start). When the policy would choose an endpoint of weight
//! `w < 1`, it takes the other candidate (power of two choices) or the next
//! one in turn (round-robin) instead with probability `1 - w`: its share is
//! about `w` times a full one. A lone candidate is never passed over, and
//! [`Policy::PickFirst`] has no shares to ramp: slow start is off under it.
//! [`EndpointSnapshot::slow_start_weight`] shows the weight while it ramps.
//! Turn it off with `slow_start_window(None)`.
//!
//! # Hedging
//!
//! A replica that stalls now and then sets the tail latency, and no
//! per-try timeout short enough to catch the stall is long enough for a
//! healthy call. Hedging (Finagle's backup requests, gRPC's hedging policy)
//! does not wait for a failure: a call of a method named with
//! [`Builder::hedge_methods`] that has no response headers after the
//! *hedging delay* is sent again, to an endpoint it has not tried, while the
//! first attempt goes on; whichever gets response headers first answers the
//! call, and the other attempts are dropped, which cancels them (the server
//! sees the stream reset). Unary and server-streaming calls alike: the headers
//! decide, so a stream is hedged only until it starts. Each further delay
//! without headers may send one more hedge, within `max_attempts` (hedges
//! count as attempts).
//!
//! ```no_run
//! use chat_lb_client::{Balancer, HedgeDelay, RetrySafe};
//!
//! # async fn demo() -> Result<(), chat_lb_client::BuildError> {
//! let lb = Balancer::builder()
//!     .addresses("replica-1:8500,replica-2:8500,replica-3:8500")
//!     .retry_safe(RetrySafe::prefix("/chat.v1.ChatService/"))
//!     .hedge_methods(["/chat.v1.ChatService/SendMessage", "/chat.v1.ChatService/FetchMessages"])
//!     .hedge_delay(HedgeDelay::Percentile(95.0)) // the default
//!     .build()?;
//! # let _ = lb; Ok(()) }
//! ```
//!
//! - **Which calls**: only the named methods (full paths), and only
//!   retry-safe ones: naming another fails the build
//!   ([`ConfigError::Hedge`]), since a hedge runs the call twice on purpose. A
//!   call whose [`SafeToRetry`] extension says `false` is not hedged.
//! - **The delay** ([`HedgeDelay`]): fixed, or (the default) the 95th
//!   percentile of that method's recent latency through this balancer, from a
//!   call's start to its response headers: the last 512 answered calls, the
//!   percentile recomputed every 32 (why a window and not a histogram:
//!   `src/hedge.rs`). A method is not hedged until 32 of its calls have
//!   answered. With p95, about one call in twenty waits long enough to be
//!   hedged. An adaptive delay is never under
//!   [`hedge_min_delay`](Builder::hedge_min_delay) (2ms): a hedge wins only
//!   when the first attempt would still take longer than a whole second one,
//!   which sub-millisecond jitter never does, so hedging calls of 0.3-1ms at
//!   their p95 only added 5% load (and made chat-bench's p99 worse at 8
//!   callers), while the stalls hedging is for last tens of milliseconds.
//!   Hedge the methods that can stall (store reads and writes), not health
//!   checks answered from memory.
//! - **The budget**: each hedge takes a token from the hedge budget
//!   ([`Builder::hedge_budget`]: 10% of the hedged methods' calls plus 1/s,
//!   over the retry budget's window) *and* from the retry budget, so retries
//!   and hedges together stay within the retry budget, and hedges alone add at
//!   most about 10% more attempts than calls. Without a token the call simply
//!   waits on its attempt.
//! - **Health**: being hedged is no failure: the attempt that lost is not
//!   counted against its endpoint. But its wait is a lower bound of its
//!   latency: when a hedge is sent, the hedged-over endpoint's latency
//!   estimate rises to the time its attempt has waited, so power of two
//!   choices sends a replica that stalls less (its stalled attempts, cancelled
//!   once a hedge wins, would otherwise never be observed, and it would keep
//!   its full share of calls, each then waiting out the hedging delay). A hedged attempt that fails still counts
//!   (and ejects), as any failed attempt; from the hedge on, the newest
//!   attempt's per-try timeout is the one that runs.
//! - **Seen in**: [`EndpointSnapshot::hedges`] and
//!   [`EndpointSnapshot::hedges_won`] (hedges sent to each endpoint, and
//!   those that answered their call), the metrics `chat_lb_hedges_total` and
//!   `chat_lb_hedges_won_total`, and `debug` events of target
//!   `chat_lb_client` for each hedge sent and won.
//!
//! # Defaults
//!
//! | setting | default |
//! |---|---|
//! | policy | power of two choices on latency (peak EWMA, decay 10s, initial 1ms; calls in flight not weighed, [`P2cCost`]), tolerance 2 |
//! | probe | `ChatHealthProbe` with the `chat-probe` feature (on by default), [`GrpcHealthProbe`] without; every 500ms ±10%, timeout 250ms ([features](#cargo-features)) |
//! | unhealthy / healthy threshold | 2 failed / 1 successful probes in a row |
//! | slow endpoints | on: probe latency (fastest of last 3) over 3x the others' median and over 10ms; cleared under 2x |
//! | ejection | 1s × offences in a row, at most 30s, at most 50% of endpoints |
//! | failure codes | `UNAVAILABLE` (ejects at once), `INTERNAL`, `UNKNOWN`, `DATA_LOSS` (accrue) |
//! | failure accrual | 5 in a row; over a 10s window: failure percentage over 3% with at least 5 failures (3 endpoints, 50 attempts), success rate under mean − 1.9 stdev (5 endpoints, 100 attempts) |
//! | retry-safe calls | none ([`RetrySafe::None`]) |
//! | max attempts (retry-safe) | 3 |
//! | per-try timeout (retry-safe) | 2s |
//! | retry budget | 20% of calls + 10/s over 10s |
//! | backoff after a shed call ([overload](#overload)) | 25ms doubling to 1s, × random 0.5..1, at least the pushback |
//! | slow start | 10s window, linear (aggression 1), from weight 0.1; off under pick-first |
//! | hedged methods | none ([`Builder::hedge_methods`]) |
//! | hedging delay | p95 of the method's last 512 answered calls ([`HedgeDelay`]), at least 2ms ([`Builder::hedge_min_delay`]) |
//! | hedge budget | 10% of hedged calls + 1/s over the retry budget's window, and a retry-budget token per hedge |
//! | replay buffer | 1 MiB |
//! | overall timeout / wait for ready | none / none (fail fast) |
//! | connect timeout, keepalive | 1s; HTTP/2 ping every 10s, 5s timeout |
//! | DNS | re-resolved every 30s, 5s timeout |
//! | TLS | off; on with any `tls_*` setting or an `https://` address ([TLS](#tls)) |
//!
//! # Cargo features
//!
//! `chat-probe` (on by default) adds `ChatHealthProbe`, the chat service's
//! own `HealthCheck` RPC as a probe, and makes it the default probe. The
//! balancer itself serves any tonic service: with `default-features = false`
//! it does not depend on the chat protocol crate at all, and its default probe
//! is [`GrpcHealthProbe`] (the standard `grpc.health.v1.Health` service, as
//! `tonic-health` serves it).
//!
//! # TLS
//!
//! Addresses may carry a scheme: `https://host:port` asks for TLS,
//! `http://host:port` for plaintext, and a plain `host:port` follows the
//! balancer's setting. TLS is on, for **every** endpoint (discovered ones
//! included), when any `tls_*` setting is made or any address says
//! `https://`:
//!
//! ```no_run
//! use chat_lb_client::{Balancer, RetrySafe};
//! use chat_proto::v1::{chat_service_client::ChatServiceClient, HealthCheckRequest};
//!
//! # async fn demo() -> Result<(), Box<dyn std::error::Error>> {
//! let lb = Balancer::builder()
//!     .addresses("https://10.0.0.1:8500,https://10.0.0.2:8500")
//!     .tls_ca_file("/etc/chat/ca.pem") // trust the CA that signed the replicas
//!     // The certificates name the service, not each replica's IP address:
//!     .tls_server_name("chat.internal")
//!     // Mutual TLS: the certificate this client presents, and its key.
//!     .tls_identity_files("/etc/chat/client.pem", "/etc/chat/client.key")
//!     .retry_safe(RetrySafe::prefix("/chat.v1.ChatService/"))
//!     .build()?; // reads and checks the files: a bad one is a `BuildError::Tls`
//! let mut client = ChatServiceClient::new(lb);
//! client.health_check(HealthCheckRequest {}).await?;
//! # Ok(()) }
//! ```
//!
//! | setting | does | default |
//! |---|---|---|
//! | [`Builder::tls_ca_pem`], [`Builder::tls_ca_file`] | trust these CA certificates (may be repeated) | none |
//! | [`Builder::tls_system_roots`] | trust the operating system's roots | off |
//! | [`Builder::tls_identity_pem`], [`Builder::tls_identity_files`] | present this client certificate (mutual TLS) | none |
//! | [`Builder::tls_server_name`] | verify every server's certificate against this name (also sent as SNI) | the host as written in each address |
//!
//! Something must be trusted: TLS without a CA or the system's roots is a
//! build error (`https:// needs trusted roots: ...`), and so is a list that
//! mixes `https://` and `http://`, or `http://` with TLS settings.
//! [`Builder::build`] reads every file and checks it holds PEM of the right
//! kind, that the client key is the client certificate's, and that the names
//! to verify are names: errors are one line naming the file
//! ([`TlsConfigError`]).
//!
//! **The name verified** in a server's certificate is the tls_server_name if
//! set; else the host as written: a host name (`https://chat-1.lan:8500`) for
//! every address it resolves to, an IP address for itself (the certificate
//! must then hold that IP address). Endpoints from [`Builder::discover`] are
//! IP addresses: give them a tls_server_name.
//!
//! **Failures.** A failed handshake is a failed connection: the call never
//! reached the server, so it is retried on another endpoint (whatever its
//! retry-safety) and the endpoint is ejected; probes fail too, so it stays out
//! until its certificate (or the settings) are fixed. That holds for a server
//! that refuses the client's certificate too, although with TLS 1.3 the
//! refusal only shows on the first request: the client has finished its half
//! of the handshake by then. The failure is put into words
//! ([`describe_tls_error`]) and is each endpoint's last error in the
//! [snapshot](Balancer::snapshot), and `UNAVAILABLE` messages name each
//! endpoint with it:
//!
//! ```text
//! chat-lb-client: no healthy endpoint for this call after 2 attempt(s); endpoints:
//! 10.0.0.1:8500 (TLS: certificate signed by an unknown authority); 10.0.0.2:8500
//! (TLS: certificate is not valid for name "10.0.0.2" (it is valid for chat.internal))
//! ```
//!
//! Other texts: `TLS: certificate has expired (not valid after ...)`, `TLS: the
//! server requires a client certificate`, `TLS: the server rejected our client
//! certificate (...)`, `TLS: the server does not speak TLS (plaintext
//! server?)`, `TLS: the handshake timed out (...)` (the handshake must end
//! within the connect timeout). A request that only saw its new connection
//! close (another request on it met the server's refusal) reads `TLS: the
//! server closed the connection after the handshake (does it require a client
//! certificate?)` until a probe tells the exact reason. The reverse mistake, a
//! plaintext client against a TLS server, fails at once too; the server just
//! closes the connection, so the error says so and adds `if it expects TLS,
//! use https:// addresses and trust its CA`.
//!
//! # Request bodies and retries of streaming calls
//!
//! Retrying needs the request body a second time, but buffering a body before
//! sending it would deadlock a bidirectional stream whose client waits for an
//! answer before it sends more. So nothing is held back: each attempt streams
//! the body as the caller produces it, while a copy of every frame is kept (up
//! to `max_replay_bytes`, 1 MiB by default; the copies are reference-counted
//! `Bytes`, not copies of the data). A retry replays the kept frames and then
//! continues with the caller's stream. Unary and server-streaming calls (one
//! request message) are thus always retryable; client-streaming and bidi calls
//! are retryable until their request outgrows the cap. Retries only ever happen
//! **before response headers arrive**: once the server has answered, the call
//! belongs to that server.
//!
//! After each data frame the body is polled once more, so a request that ends
//! there (every unary one) goes out with `END_STREAM` on its data frame rather
//! than in an extra, empty frame; a frame that poll finds waits only for
//! hyper's next poll.
//!
//! The per-try timeout fires when no response headers arrive in time. Servers
//! built with tonic send headers as soon as the handler returns (for a stream:
//! when it starts), but a server that withholds headers until the client has
//! sent something would trip it; do not mark such methods retry-safe.
//!
//! # Streams
//!
//! A server-streaming call (such as `Subscribe`) is placed like a unary call,
//! on a healthy endpoint, and stays there. The balancer keeps watching its
//! response: when the replica dies mid-stream the stream fails with
//! `UNAVAILABLE` (tonic alone would say `UNKNOWN`), and when the replica ends
//! it with `UNAVAILABLE` (shutting down) that is noted too; either way the
//! endpoint is ejected at once, so the application simply calls again, from
//! where it was, and lands on a healthy replica:
//!
//! ```no_run
//! # use chat_proto::v1::{chat_service_client::ChatServiceClient, SubscribeRequest};
//! # async fn demo(mut client: ChatServiceClient<chat_lb_client::Balancer>) {
//! let mut after = 0;
//! loop {
//!     let request = SubscribeRequest { after_sequence: after };
//!     let Ok(response) = client.subscribe(request).await else {
//!         tokio::time::sleep(std::time::Duration::from_millis(200)).await;
//!         continue;
//!     };
//!     let mut stream = response.into_inner();
//!     while let Ok(Some(message)) = stream.message().await {
//!         after = message.sequence; // resume point
//!     }
//!     // The stream broke: loop to resubscribe elsewhere from `after`.
//! }
//! # }
//! ```
//!
//! # Metrics
//!
//! The balancer records metrics through the [`metrics`](::metrics) facade and exports
//! nothing itself: install the recorder (exporter) of your choice, e.g.
//! `metrics-exporter-prometheus`, **before** building the balancer (each
//! endpoint registers its metric handles when it is added, so the call path
//! formats no label and looks nothing up). With no recorder installed,
//! recording costs next to nothing. Names follow Prometheus's rules (`chat_lb_`
//! prefix, seconds, counters end in `_total`); per-endpoint metrics carry an
//! `endpoint` label, its socket address. Each metric, its labels and exactly
//! what it counts: `src/metrics.rs`.
//!
//! | metric | labels |
//! |---|---|
//! | `chat_lb_endpoint_state` (gauge: 0 unknown, 1 healthy, 2 ejected, 3 unhealthy, 4 not serving) | `endpoint` |
//! | `chat_lb_endpoint_attempts_total`, `chat_lb_endpoint_calls_total` (answered), `chat_lb_endpoint_outstanding` (gauge) | `endpoint` |
//! | `chat_lb_endpoint_failures_total` | `endpoint`, `kind`: `refused`, `transport`, `unavailable`, `timeout`, `failure_code` |
//! | `chat_lb_endpoint_ejections_total` | `endpoint`, `reason`: `refused`, `transport`, `unavailable`, `timeout`, `consecutive_failures`, `success_rate`, `failure_percentage` |
//! | `chat_lb_endpoint_slow_marks_total`, `chat_lb_endpoint_overloads_total` (shed calls) | `endpoint` |
//! | `chat_lb_probe_duration_seconds` (histogram), `chat_lb_probes_total` | `endpoint`; probes also `result`: `serving`, `not_serving`, `failed` |
//! | `chat_lb_retries_total`, `chat_lb_retry_budget_refusals_total`, `chat_lb_retry_backoffs_total`, `chat_lb_no_endpoint_total` | none |
//! | `chat_lb_hedges_total`, `chat_lb_hedges_won_total` | none |
//! | `chat_lb_call_duration_seconds` (histogram: start to answer) | none |
//!
//! # Runtime and lifecycle
//!
//! [`Builder::build`] must run inside a tokio runtime; the probers, the DNS
//! resolver, discovery streams and the task that owns the endpoint set run on
//! it and stop when the last clone of the balancer is dropped. No lock is held across an `.await`; every future is
//! cancellation-safe (dropping a call releases its endpoint's load count).
//! Every endpoint state change is logged with `tracing` (target
//! `chat_lb_client`).
//!
//! # Inside the crate
//!
//! For whoever works on it, the path of a call through the source, each file
//! with its one job (its module docs teach its algorithm):
//!
//! | file | its job |
//! |---|---|
//! | `balancer.rs` | the handle an application clones; its settings in `builder.rs` and `config.rs` |
//! | `call/` | one call as a state machine: `state.rs` decides each step (`state/choose.rs`: which endpoint each attempt goes to), `mod.rs` drives it, `answer.rs` words the balancer's own answers |
//! | `picker.rs` | the tiers and the policies |
//! | `classify.rs` | what became of an attempt: headers, a failure code, shed (with its pushback), never sent, transport failure, expired |
//! | `retry/` | which calls may be retried, the retry budget, the backoff of a retry that must wait |
//! | `hedge.rs` | which calls are hedged, the hedging delay (fixed, or a percentile of recent latency with a floor) and the hedge budget |
//! | `ramp.rs` | slow start: the weight of an endpoint that (re)joined the healthy tier |
//! | `body.rs`, `observe.rs`, `deadline.rs` | replaying request bodies; watching response bodies; the `grpc-timeout` header |
//! | `transport.rs`, `connect.rs`, `http2.rs`, `tls/` | what attempts are sent over: each endpoint's own HTTP/2 connection (`http2.rs`), with TLS (`tls/`), or its tonic `Channel` under a hook |
//! | `endpoint.rs` | one endpoint: its load, latency estimate and overload penalty (`ewma.rs`), health record (`endpoint/record.rs`), ejection (`outlier.rs`, failure accrual in `outlier/accrual.rs`), slowness (`slow.rs`) and slow start (`ramp.rs`) |
//! | `members/` | the one owner of the endpoint set: its sources, reconciliation, publication through a `watch` channel |
//! | `update.rs` | the changes everything else reports to that owner |
//! | `resolve.rs`, `discover.rs` | host names and discovery streams, turned into updates |
//! | `health/` | the probes and each endpoint's prober task |
//! | `context.rs` | what every call shares: settings, the published endpoint set, the retry budget |
//! | `metrics.rs` | the metric names, and the handles each endpoint and the balancer record with |

#![warn(missing_docs)]

mod address;
mod balancer;
mod body;
mod builder;
mod call;
mod classify;
mod config;
mod connect;
mod context;
mod deadline;
mod discover;
mod endpoint;
mod error;
mod ewma;
mod health;
mod hedge;
mod http2;
mod members;
mod metrics;
mod observe;
mod outlier;
mod picker;
mod ramp;
mod resolve;
mod retry;
mod slow;
mod snapshot;
mod tls;
mod transport;
mod update;

pub use address::{Host, IntoTarget, Scheme, Target, parse_address_list};
pub use balancer::Balancer;
pub use builder::Builder;
pub use call::ResponseFuture;
pub use discover::Change;
pub use error::{
    AddressError, BoxError, BuildError, ConfigError, PemOrigin, PemRole, TlsConfigError,
};
#[cfg(feature = "chat-probe")]
pub use health::ChatHealthProbe;
pub use health::{GrpcHealthProbe, HealthProbe, ProbeStatus, ProbeTarget};
pub use hedge::HedgeDelay;
pub use picker::{P2cCost, Policy};
pub use retry::{RetrySafe, SafeToRetry};
pub use snapshot::{EjectionReason, EndpointSnapshot, EndpointState, ProbeOutcome, ProbeRecord};
pub use tls::describe_tls_error;
pub use transport::EndpointChannel;

//! Runs one replica: opens the store, starts the background tasks, serves gRPC, and
//! shuts down gracefully.
//!
//! Shutdown order, on the `shutdown` future (SIGTERM or Ctrl-C in the binary):
//! 1. health turns NOT_SERVING (both the chat `HealthCheck` and `grpc.health.v1`);
//! 2. live `Subscribe` streams end with UNAVAILABLE, telling clients where to resume,
//!    and `grpc.health.v1` Watch streams end after delivering NOT_SERVING;
//! 3. the listener closes and in-flight calls get up to `drain_timeout` to finish;
//! 4. [`run`] returns `Ok(())`.

use std::{future::Future, net::SocketAddr, sync::Arc};

use chat_proto::v1::chat_service_server::ChatServiceServer;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use tonic::transport::Server;
use tonic_health::pb::health_server::HealthServer;

use crate::{
    config::{ServerConfig, limits},
    health::{GrpcHealthService, ReplicaHealth},
    hub::{Doorbell, DoorbellWatch, Hub},
    listener::{self, Security},
    service::{ChatService, ServiceSettings},
    store::{self, StoreError},
    tls::{self, ReloadableTls, TlsError},
};

/// Why a replica could not start or stopped with an error.
#[derive(Debug, thiserror::Error)]
pub enum ServerError {
    /// The TLS files cannot be served.
    #[error(transparent)]
    Tls(#[from] TlsError),
    /// The store could not be opened or did not answer at start-up.
    #[error("cannot open store {uri:?}: {source}")]
    Store {
        /// The store URI as configured, its password masked ([`store::redacted_uri`]).
        uri: String,
        /// What went wrong.
        source: StoreError,
    },
    /// The listening address could not be bound.
    #[error("cannot listen on {address}: {source}")]
    Bind {
        /// The address asked for.
        address: SocketAddr,
        /// What went wrong.
        source: std::io::Error,
    },
    /// The reflection service could not be built from the descriptor set.
    #[error("cannot build the reflection service: {0}")]
    Reflection(#[from] tonic_reflection::server::Error),
    /// The metrics endpoint could not be started (`--metrics-addr`).
    #[error("cannot serve metrics on --metrics-addr {address}: {source}")]
    Metrics {
        /// The address asked for.
        address: SocketAddr,
        /// What went wrong.
        source: Box<dyn std::error::Error + Send + Sync>,
    },
    /// The gRPC server failed.
    #[error("gRPC server failed: {0}")]
    Transport(#[from] tonic::transport::Error),
}

/// Runs a replica until `shutdown` completes, then drains and returns.
///
/// `on_ready` is called once with the bound address (useful with port 0), after the
/// store answered and the listener is open, just before calls are accepted.
pub async fn run(
    config: ServerConfig,
    shutdown: impl Future<Output = ()>,
    on_ready: impl FnOnce(SocketAddr),
) -> Result<(), ServerError> {
    // TLS files first: a bad file is reported before anything else happens.
    let tls = match config.tls_files() {
        Some(files) => Some(Arc::new(ReloadableTls::load(files)?)),
        None => None,
    };
    let store = open_store(&config).await?;
    let (listener, address) = bind(&config)?;
    let replica_id = config
        .replica_id
        .clone()
        .unwrap_or_else(|| format!("{address}/{}", std::process::id()));

    let stop = CancellationToken::new();
    let metrics = start_metrics(&config, &stop).await?;
    let store = match metrics {
        Some(_) => crate::metrics::store::MeteredStore::wrap(store),
        None => store,
    };
    let reporter = tonic_health::server::HealthReporter::new();
    let health_service = HealthServer::new(GrpcHealthService::new(reporter.clone(), stop.clone()));
    let health = ReplicaHealth::new(replica_id.clone(), reporter);
    health.publish().await;

    let (hub, doorbell) = live_delivery(&config);
    let mut background =
        spawn_background_tasks(&config, &store, &hub, &health, tls.as_ref(), &stop);
    background
        .extend(doorbell.map(|watch| tokio::spawn(watch.wake_on_rings(hub.clone(), stop.clone()))));
    let chat = ChatService::new(
        store,
        hub,
        health.clone(),
        ServiceSettings {
            session_ttl: config.session_ttl,
            max_message_bytes: config.max_message_bytes,
            inject_delay: config.inject_delay,
        },
        stop.clone(),
    );
    if let Some(delay) = config.inject_delay {
        tracing::warn!(?delay, "FAULT INJECTION: every RPC is delayed");
    }
    let faults = config.fault_injection();
    if faults.is_active() {
        tracing::warn!(
            error_rate = faults.error_rate,
            stall = ?faults.stall,
            stall_rate = faults.stall_rate,
            "FAULT INJECTION: chat calls fail or stall on purpose (tests and benchmarks only)"
        );
    }
    let security = match &tls {
        Some(tls) => Security::Tls(tls.subscribe()),
        None => Security::Plaintext,
    };
    let (drain_tx, drain_rx) = tokio::sync::oneshot::channel::<()>();
    let serve = grpc_server(&config, listener, security, health_service, chat, drain_rx)?;
    announce(&config, address, &replica_id, tls.is_some());
    background.extend(metrics);
    on_ready(address);

    let drain = Drain {
        health: &health,
        stop: &stop,
        drain_tx,
        timeout: config.drain_timeout,
    };
    let result = serve_until_shutdown(serve, shutdown, drain).await;
    stop.cancel();
    for task in background {
        task.abort();
    }
    tracing::info!("replica stopped");
    Ok(result?)
}

/// The gRPC server on `listener`: `grpc.health.v1`, reflection (`v1` and `v1alpha`) and
/// the chat service, within the transport limits. It stops accepting calls when `drain`
/// fires, and finishes when the calls in flight have.
fn grpc_server(
    config: &ServerConfig,
    listener: tokio::net::TcpListener,
    security: Security,
    health: HealthServer<GrpcHealthService>,
    chat: ChatService,
    drain: tokio::sync::oneshot::Receiver<()>,
) -> Result<impl Future<Output = Result<(), tonic::transport::Error>>, ServerError> {
    // Reflection under both names: `v1`, and `v1alpha`, which many tools (Python
    // grpcio's reflection client among them) still speak only. Each lists every
    // service on the port, both reflection services included.
    let descriptors = || {
        tonic_reflection::server::Builder::configure()
            .register_encoded_file_descriptor_set(chat_proto::FILE_DESCRIPTOR_SET)
            .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
            .register_encoded_file_descriptor_set(tonic_reflection::pb::v1::FILE_DESCRIPTOR_SET)
            .register_encoded_file_descriptor_set(
                tonic_reflection::pb::v1alpha::FILE_DESCRIPTOR_SET,
            )
            .include_reflection_service(false)
    };
    let reflection = descriptors().build_v1()?;
    let reflection_v1alpha = descriptors().build_v1alpha()?;
    let grpc_metrics = match config.metrics_addr {
        Some(address) => Some(crate::metrics::grpc::GrpcMetricsLayer::new(
            served_methods().map_err(|source| ServerError::Metrics {
                address,
                source: source.into(),
            })?,
        )),
        None => None,
    };
    let router = Server::builder()
        .layer(tower::util::option_layer(grpc_metrics))
        .layer(tower::util::MapResponseLayer::new(
            crate::error::relabel_decode_errors as fn(_) -> _,
        ))
        // Inside the metrics layer, so shed calls count as RESOURCE_EXHAUSTED there.
        .layer(crate::shed::ShedLayer::new(config.max_concurrent_rpcs()))
        .layer(tower::util::option_layer(config.fault_injection().layer()))
        .max_concurrent_streams(limits::MAX_STREAMS_PER_CONNECTION)
        .http2_max_header_list_size(limits::MAX_HEADER_LIST_BYTES)
        .http2_keepalive_interval(Some(limits::KEEPALIVE_INTERVAL))
        .http2_keepalive_timeout(Some(limits::KEEPALIVE_TIMEOUT))
        .add_service(health)
        .add_service(reflection)
        .add_service(reflection_v1alpha)
        .add_service(
            ChatServiceServer::new(chat).max_decoding_message_size(limits::MAX_REQUEST_BYTES),
        );
    Ok(router.serve_with_incoming_shutdown(
        listener::incoming(listener, security, config.connection_limits()),
        async {
            let _ = drain.await;
        },
    ))
}

/// The methods this server serves, for the gRPC metrics' labels.
fn served_methods() -> Result<crate::metrics::grpc::MethodTable, prost::DecodeError> {
    crate::metrics::grpc::MethodTable::from_descriptor_sets(&[
        chat_proto::FILE_DESCRIPTOR_SET,
        tonic_health::pb::FILE_DESCRIPTOR_SET,
        tonic_reflection::pb::v1::FILE_DESCRIPTOR_SET,
        tonic_reflection::pb::v1alpha::FILE_DESCRIPTOR_SET,
    ])
}

/// With `--metrics-addr`: installs the Prometheus recorder, binds the metrics port,
/// logs its address and serves `/metrics` until `stop`.
async fn start_metrics(
    config: &ServerConfig,
    stop: &CancellationToken,
) -> Result<Option<JoinHandle<()>>, ServerError> {
    let Some(address) = config.metrics_addr else {
        return Ok(None);
    };
    let failed =
        |source: Box<dyn std::error::Error + Send + Sync>| ServerError::Metrics { address, source };
    let handle = crate::metrics::install().map_err(|error| failed(error.into()))?;
    let (listener, bound) = crate::metrics::endpoint::bind(address)
        .await
        .map_err(|error| failed(error.into()))?;
    tracing::info!(metrics_address = %bound, "metrics serving on http://{bound}/metrics");
    Ok(Some(tokio::spawn(crate::metrics::endpoint::serve(
        listener,
        handle,
        stop.clone(),
    ))))
}

/// Opens the configured store and checks that it answers. Zero set-up: the default
/// store's directory is made when missing. Any other store's directory must exist, so
/// that a typo cannot create a new database.
async fn open_store(config: &ServerConfig) -> Result<Arc<dyn store::Store>, ServerError> {
    let store_error = |source| ServerError::Store {
        uri: store::redacted_uri(&config.store).into_owned(),
        source,
    };
    if config.store == crate::config::DEFAULT_STORE {
        let directory = crate::config::default_store_directory();
        std::fs::create_dir_all(directory).map_err(|error| {
            store_error(StoreError::Unavailable(format!(
                "cannot create the directory {} for the default store: {error}",
                directory.display()
            )))
        })?;
    }
    let store = store::open(&config.store).await.map_err(store_error)?;
    store.ping().await.map_err(store_error)?;
    Ok(store)
}

/// The replica's hub and, with the embedded store, the watch on its doorbell
/// ([`crate::hub::Doorbell`]), set up before the replica serves so that no ring is
/// missed. Without a doorbell (MongoDB, or one that cannot be opened or watched) the
/// replica still works: messages from other replicas wait for the feed poll.
fn live_delivery(config: &ServerConfig) -> (Hub, Option<DoorbellWatch>) {
    let Some(database) = store::embedded_path(&config.store) else {
        return (Hub::default(), None);
    };
    let doorbell = match Doorbell::open(database) {
        Ok(doorbell) => doorbell,
        Err(error) => {
            tracing::warn!(%error, "cannot open the doorbell beside the database; messages from other replicas wait for the feed poll");
            return (Hub::default(), None);
        }
    };
    let watch = doorbell
        .watch()
        .inspect_err(|error| {
            tracing::warn!(%error, path = %doorbell.path().display(), "cannot watch the doorbell; messages from other replicas wait for the feed poll");
        })
        .ok();
    (Hub::with_doorbell(doorbell), watch)
}

/// Binds the listening socket; returns it with the address it is bound to (the port
/// chosen when the configuration says 0).
fn bind(config: &ServerConfig) -> Result<(tokio::net::TcpListener, SocketAddr), ServerError> {
    let address = SocketAddr::new(config.host, config.port);
    let listener =
        listener::bind(address).map_err(|source| ServerError::Bind { address, source })?;
    let address = listener
        .local_addr()
        .map_err(|source| ServerError::Bind { address, source })?;
    Ok((listener, address))
}

/// Starts the replica's background tasks: the hub's feed reader, the store health
/// monitor, the periodic purge and, with TLS, certificate reloading on SIGHUP. Each
/// stops on `stop`.
fn spawn_background_tasks(
    config: &ServerConfig,
    store: &Arc<dyn store::Store>,
    hub: &Hub,
    health: &ReplicaHealth,
    tls: Option<&Arc<ReloadableTls>>,
    stop: &CancellationToken,
) -> Vec<JoinHandle<()>> {
    let mut background = vec![
        tokio::spawn(
            hub.clone()
                .run(store.clone(), config.feed_poll_interval, stop.clone()),
        ),
        tokio::spawn(health.clone().monitor_store(
            store.clone(),
            config.store_check_interval,
            config.store_check_timeout,
            config.drain_file.clone(),
            stop.clone(),
        )),
        tokio::spawn(purge_periodically(
            store.clone(),
            config.purge_interval,
            config.history_retention,
            stop.clone(),
        )),
    ];
    if let Some(tls) = tls {
        background.push(tokio::spawn(tls::reload_on_sighup(
            tls.clone(),
            stop.clone(),
        )));
    }
    background
}

/// Logs that the replica serves (and warns when it serves plaintext beyond loopback).
fn announce(config: &ServerConfig, address: SocketAddr, replica_id: &str, tls: bool) {
    if !tls && !address.ip().is_loopback() {
        tracing::warn!(
            %address,
            "serving plaintext beyond loopback: passwords, tokens and messages cross the network unencrypted (use --tls-cert and --tls-key)"
        );
    }
    tracing::info!(
        %address,
        %replica_id,
        store = %store::redacted_uri(&config.store),
        tls,
        mutual_tls = config.tls_client_ca.is_some(),
        max_connections = config.connection_limits().max_connections,
        max_concurrent_rpcs = config.max_concurrent_rpcs(),
        password_hash_threads = crate::password::hashing_threads(),
        "replica serving"
    );
}

/// What a graceful shutdown works with.
struct Drain<'a> {
    health: &'a ReplicaHealth,
    stop: &'a CancellationToken,
    /// Tells the server to stop accepting and to finish the calls in flight.
    drain_tx: tokio::sync::oneshot::Sender<()>,
    /// How long the calls in flight get.
    timeout: std::time::Duration,
}

/// Serves until the server fails or `shutdown` completes, then shuts down in the order
/// the [module documentation](self) gives.
async fn serve_until_shutdown(
    serve: impl Future<Output = Result<(), tonic::transport::Error>>,
    shutdown: impl Future<Output = ()>,
    drain: Drain<'_>,
) -> Result<(), tonic::transport::Error> {
    tokio::pin!(serve);
    tokio::select! {
        result = &mut serve => result,
        () = shutdown => {
            tracing::info!("shutting down: NOT_SERVING, draining in-flight calls");
            drain.health.begin_shutdown().await;
            drain.stop.cancel();
            drain.health.end_watches().await;
            let _ = drain.drain_tx.send(());
            match tokio::time::timeout(drain.timeout, &mut serve).await {
                Ok(result) => result,
                Err(_) => {
                    tracing::warn!(timeout = ?drain.timeout, "drain timed out; closing remaining calls");
                    Ok(())
                }
            }
        }
    }
}

/// Deletes expired sessions, and with a history retention old acknowledged messages,
/// every `interval`. Every replica does it; the deletes are idempotent, so overlapping
/// purges are harmless.
async fn purge_periodically(
    store: Arc<dyn store::Store>,
    interval: std::time::Duration,
    history_retention: Option<std::time::Duration>,
    stop: CancellationToken,
) {
    loop {
        let now = crate::now_unix_ms();
        let sessions = store.purge_expired_sessions(now).await;
        match &sessions {
            Ok(0) => {}
            Ok(purged) => tracing::debug!(purged, "expired sessions purged"),
            Err(error) => tracing::warn!(%error, "cannot purge expired sessions"),
        }
        crate::metrics::record_purge("sessions", &sessions);
        if let Some(retention) = history_retention {
            let retention_ms = i64::try_from(retention.as_millis()).unwrap_or(i64::MAX);
            let history = store.purge_history(now.saturating_sub(retention_ms)).await;
            crate::metrics::record_purge("history", &history);
            match history {
                Ok(0) => {}
                Ok(purged) => {
                    tracing::info!(purged, "acknowledged messages past retention deleted")
                }
                Err(error) => tracing::warn!(%error, "cannot purge old history"),
            }
        }
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = tokio::time::sleep(interval) => {}
        }
    }
}

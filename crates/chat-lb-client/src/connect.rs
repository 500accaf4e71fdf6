//! Each endpoint's channel: its own HTTP/2 connection (see `http2`), or, with
//! the user's hook, a lazily connected tonic `Channel` to its socket address
//! with the balancer's connection settings (TLS included) and the hook.

use std::{net::SocketAddr, sync::Arc};

use tokio::runtime::Handle;
use tonic::transport::Channel;

use crate::{
    config::ConnectConfig, error::BoxError, http2::Http2Connection, transport::EndpointChannel,
};

/// The channel of the endpoint at `addr`, connected when the first probe or
/// call needs it, on `runtime`: a connection of the balancer's own; with a
/// hook to configure tonic's `Endpoint`, a tonic channel ([`connect_lazy`]).
pub(crate) fn endpoint_channel(
    addr: SocketAddr,
    host_name: Option<&str>,
    cfg: &ConnectConfig,
    runtime: &Handle,
) -> Result<EndpointChannel, BoxError> {
    if cfg.hook.is_none() {
        let connection = Http2Connection::new(addr, host_name, cfg, runtime.clone())?;
        return Ok(EndpointChannel::http2(Arc::new(connection)));
    }
    let _entered = runtime.enter();
    Ok(connect_lazy(addr, host_name, cfg)?.into())
}

/// Builds the lazily connecting channel of one endpoint: connect timeout,
/// `TCP_NODELAY`, HTTP/2 keepalive pings (also while idle, so a dead or frozen
/// peer is noticed on an idle connection too), TLS when it is on, then the
/// user's hook. Must run inside a tokio runtime context. Nothing connects until
/// the first probe or call; connection failures (TLS handshakes included)
/// reach the balancer as `tonic::ConnectError`.
///
/// `host_name` is the host name the address was resolved from, if any: with
/// TLS it is the name the server's certificate is verified against (unless a
/// server name is set), else the IP address is.
pub(crate) fn connect_lazy(
    addr: SocketAddr,
    host_name: Option<&str>,
    cfg: &ConnectConfig,
) -> Result<Channel, BoxError> {
    let scheme = if cfg.tls.is_some() { "https" } else { "http" };
    let mut endpoint = tonic::transport::Endpoint::from_shared(format!("{scheme}://{addr}"))?
        .connect_timeout(cfg.connect_timeout)
        .tcp_nodelay(cfg.tcp_nodelay);
    if let Some(interval) = cfg.keepalive_interval {
        endpoint = endpoint
            .http2_keep_alive_interval(interval)
            .keep_alive_timeout(cfg.keepalive_timeout)
            .keep_alive_while_idle(true);
    }
    if let Some(tls) = &cfg.tls {
        endpoint = endpoint.tls_config(tls.for_endpoint(host_name))?;
    }
    if let Some(hook) = &cfg.hook {
        endpoint = hook(endpoint);
    }
    Ok(endpoint.connect_lazy())
}

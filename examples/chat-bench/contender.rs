//! The contenders, which carry the same calls, and their transports.
//!
//! - `direct`: one tonic `Channel` to the scenario's reference replica (`A`, `P1` in
//!   `steady-one-process`; see `Cluster::reference`) — the reference;
//! - `tonic-balance`: `Channel::balance_list` over the scenario's address list;
//! - `chat-lb`: `chat_lb_client::Balancer` over the same list, with its defaults plus
//!   retry-safety for `/chat.v1.ChatService/` (every chat RPC is safe to retry), and
//!   any `--lb-set` overrides;
//! - `chat-lb-hedged` (`steady` and `tail-latency` only): `chat-lb` with hedging on
//!   for the chat methods ([`HEDGED_METHODS`]: every chat RPC but `HealthCheck`, all
//!   retry-safe), with the balancer's hedging defaults: a hedge after the method's
//!   recent p95 latency (at least 2ms), within a budget of 10% more attempts than
//!   calls;
//! - `chat-lb-single` (steady scenarios only): the same balancer given `direct`'s one
//!   replica. Same replica, same single connection as `direct`: the difference between
//!   the two is the balancer's own cost per call, apart from the cost of spreading
//!   calls over several connections and processes;
//! - `sqlite-ceiling` (`store-throughput` only): no transport, but raw SQLite
//!   transactions in the store's directory, once per run (`ceiling.rs`).
//!
//! The tonic endpoints get the balancer's connection settings (1s connect timeout,
//! `TCP_NODELAY`, HTTP/2 keepalive 10s/5s).

use std::{net::SocketAddr, time::Duration};

use anyhow::Context;
use chat_lb_client::{Balancer, RetrySafe};
use clap::ValueEnum;
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Endpoint};

use crate::{cluster::Cluster, lb_settings, plan::Plan, scenario::Scenario, tls::BenchTls};

/// Who carries the calls.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, ValueEnum)]
pub enum Contender {
    Direct,
    TonicBalance,
    ChatLb,
    ChatLbSingle,
    ChatLbHedged,
    SqliteCeiling,
}

impl Contender {
    /// Every contender.
    pub const ALL: [Contender; 6] = [
        Contender::Direct,
        Contender::TonicBalance,
        Contender::ChatLb,
        Contender::ChatLbSingle,
        Contender::ChatLbHedged,
        Contender::SqliteCeiling,
    ];

    /// The name in flags and output.
    pub fn name(self) -> &'static str {
        match self {
            Contender::Direct => "direct",
            Contender::TonicBalance => "tonic-balance",
            Contender::ChatLb => "chat-lb",
            Contender::ChatLbSingle => "chat-lb-single",
            Contender::ChatLbHedged => "chat-lb-hedged",
            Contender::SqliteCeiling => "sqlite-ceiling",
        }
    }

    /// Whether it carries calls in `scenario`: `chat-lb-single` only in the steady
    /// ones, where it measures the balancer's own cost; `chat-lb-hedged` in `steady`
    /// (what hedging costs) and `tail-latency` (what it is for); only `direct` and
    /// `chat-lb` in `store-throughput`; only `direct` in the delivery ones, which
    /// measure the replicas; `sqlite-ceiling` never (it is measured apart,
    /// `ceiling.rs`).
    pub fn runs_in(self, scenario: Scenario) -> bool {
        match self {
            Contender::Direct => true,
            Contender::ChatLb => !scenario.is_delivery(),
            Contender::TonicBalance => !scenario.on_disk() && !scenario.is_delivery(),
            Contender::ChatLbSingle => scenario.is_steady(),
            Contender::ChatLbHedged => {
                matches!(scenario, Scenario::Steady | Scenario::TailLatency)
            }
            Contender::SqliteCeiling => false,
        }
    }

    /// Whether it is a balancer (its rows report attempts per replica).
    pub fn is_balancer(self) -> bool {
        matches!(
            self,
            Contender::ChatLb | Contender::ChatLbSingle | Contender::ChatLbHedged
        )
    }
}

/// A contender's transport, ready for calls.
#[derive(Clone)]
pub enum Transport {
    /// `direct` and `tonic-balance`.
    Channel(Channel),
    /// `chat-lb`, `chat-lb-single` and `chat-lb-hedged`.
    Balancer(Balancer),
}

/// A tonic endpoint with the balancer's default connection settings, over TLS when
/// the run has certificates.
pub fn endpoint(address: SocketAddr, tls: Option<&BenchTls>) -> anyhow::Result<Endpoint> {
    let scheme = if tls.is_some() { "https" } else { "http" };
    let endpoint = Endpoint::from_shared(format!("{scheme}://{address}"))?
        .connect_timeout(Duration::from_secs(1))
        .tcp_nodelay(true)
        .http2_keep_alive_interval(Duration::from_secs(10))
        .keep_alive_timeout(Duration::from_secs(5))
        .keep_alive_while_idle(true);
    Ok(match tls {
        Some(tls) => endpoint.tls_config(
            ClientTlsConfig::new().ca_certificate(Certificate::from_pem(&tls.ca_pem)),
        )?,
        None => endpoint,
    })
}

/// Call attempts per endpoint so far (chat-lb only; empty for tonic channels).
pub fn attempts(transport: &Transport) -> Vec<(SocketAddr, u64)> {
    match transport {
        Transport::Channel(_) => Vec::new(),
        Transport::Balancer(balancer) => balancer
            .snapshot()
            .iter()
            .map(|endpoint| (endpoint.address, endpoint.calls))
            .collect(),
    }
}

/// Builds a contender's transport for `scenario` and waits until it can call.
pub async fn connect(
    contender: Contender,
    cluster: &Cluster,
    scenario: Scenario,
    plan: &Plan,
) -> anyhow::Result<Transport> {
    let addresses = cluster.addresses(scenario);
    Ok(match contender {
        Contender::Direct => Transport::Channel(
            endpoint(cluster.reference(scenario), plan.tls.as_ref())?
                .connect()
                .await
                .context("cannot connect to the reference replica")?,
        ),
        Contender::TonicBalance => {
            let endpoints = addresses
                .iter()
                .map(|&a| endpoint(a, plan.tls.as_ref()))
                .collect::<anyhow::Result<Vec<_>>>()?;
            Transport::Channel(Channel::balance_list(endpoints.into_iter()))
        }
        Contender::ChatLb => Transport::Balancer(balancer(addresses, plan, false).await?),
        Contender::ChatLbSingle => {
            let reference = vec![cluster.reference(scenario)];
            Transport::Balancer(balancer(reference, plan, false).await?)
        }
        Contender::ChatLbHedged => Transport::Balancer(balancer(addresses, plan, true).await?),
        Contender::SqliteCeiling => anyhow::bail!("sqlite-ceiling carries no calls"),
    })
}

/// The chat RPCs `chat-lb-hedged` hedges (see chat.proto): every one but
/// `HealthCheck`. A health check is answered from memory and never stalls (chat-server
/// neither stalls nor sheds it), so a hedge of one can only race ordinary jitter,
/// which it never beats: in a run with them hedged, 139 health-check-heavy hedges in
/// `steady` at 8 callers won 0 times, and were 2-5% more attempts for nothing. Its
/// clients hedge the calls that touch the store, as a real client would.
pub const HEDGED_METHODS: [&str; 9] = [
    "CreateAccount",
    "Login",
    "Logout",
    "ListAccounts",
    "SendMessage",
    "FetchMessages",
    "AckMessages",
    "Subscribe",
    "DeleteAccount",
];

/// chat-lb over `addresses`, started from probed endpoints, as a long-running client
/// would be; with `hedged`, hedging the [`HEDGED_METHODS`].
async fn balancer(
    addresses: Vec<SocketAddr>,
    plan: &Plan,
    hedged: bool,
) -> anyhow::Result<Balancer> {
    let mut builder = Balancer::builder().retry_safe(RetrySafe::prefix("/chat.v1.ChatService/"));
    if hedged {
        let service = chat_proto::CHAT_SERVICE_NAME;
        builder = builder.hedge_methods(HEDGED_METHODS.map(|m| format!("/{service}/{m}")));
    }
    for address in addresses {
        builder = builder.address(address);
    }
    builder = lb_settings::apply(&plan.lb_settings, builder);
    if let Some(tls) = &plan.tls {
        builder = builder.tls_ca_pem(tls.ca_pem.clone());
    }
    let balancer = builder.build()?;
    balancer.wait_for_probe_round().await;
    Ok(balancer)
}

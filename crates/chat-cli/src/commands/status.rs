//! `status`: a table of every server's health, after one fresh round of probes;
//! with `--watch`, refreshed until Ctrl-C.

use std::{io::IsTerminal, pin::pin, time::Duration};

use chat_lb_client::{Balancer, EndpointSnapshot, EndpointState};
use serde_json::json;

use crate::{
    error::{CliError, ErrorKind, one_line},
    output::{json_line, sanitize},
};

/// What the table shows in the health column of a host name that has no
/// address (it did not resolve).
const UNRESOLVED: &str = "unresolved";

/// Waits for one round of health probes (bounded by the probe timeout), prints a
/// table (or JSON lines), and fails when no server is healthy, naming each
/// server and its last error (a TLS failure in words, e.g. `127.0.0.1:8500 (TLS:
/// certificate signed by an unknown authority)`). A host name that did not
/// resolve is a row of its own, `unresolved`, with the resolver's reason, e.g.
/// `chat-1.invalid:8500 (cannot resolve: failed to lookup address information:
/// Name or service not known)`. Error texts are shown [`sanitize`]d.
///
/// `refresh` (`--watch`): print the table again every `refresh` until Ctrl-C,
/// then succeed, whatever the servers' health.
pub async fn run(
    balancer: &Balancer,
    json: bool,
    refresh: Option<Duration>,
) -> Result<(), CliError> {
    balancer.wait_for_probe_round().await;
    match refresh {
        None => print(balancer, json),
        Some(interval) => watch(balancer, json, interval).await,
    }
}

/// Prints the table every `interval` until Ctrl-C. On a terminal each table
/// replaces the last (the screen is cleared with ANSI codes); otherwise tables
/// follow one another, separated by a blank line (JSON lines: none).
async fn watch(balancer: &Balancer, json: bool, interval: Duration) -> Result<(), CliError> {
    let terminal = std::io::stdout().is_terminal();
    let mut ctrl_c = pin!(tokio::signal::ctrl_c());
    let mut first = true;
    loop {
        if terminal {
            print!("\x1b[2J\x1b[H");
        } else if !first && !json {
            println!();
        }
        first = false;
        // No healthy server is news in the table, not a reason to stop.
        let _no_healthy_server = print(balancer, json);
        tokio::select! {
            signal = &mut ctrl_c => {
                return signal.map_err(|error| {
                    CliError::new(ErrorKind::Other, format!("cannot wait for Ctrl-C: {error}"))
                });
            }
            () = tokio::time::sleep(interval) => {}
        }
    }
}

/// Prints the table of the current snapshot; fails when no server is healthy.
fn print(balancer: &Balancer, json: bool) -> Result<(), CliError> {
    let snapshot = balancer.snapshot();
    let unresolved = balancer.unresolved_names();
    if !json {
        println!(
            "{:<22} {:<12} {:>10} {:>11}  last error",
            "address", "health", "latency", "outstanding"
        );
    }
    for endpoint in &snapshot {
        let latency = endpoint.last_probe.as_ref().map(|probe| probe.latency);
        let last_error = endpoint.last_error.as_deref().unwrap_or("");
        if json {
            println!(
                "{}",
                json_line(&json!({
                    "type": "server",
                    "address": endpoint.address.to_string(),
                    "health": endpoint.state.to_string(),
                    "slow": endpoint.slow,
                    "latency_us": latency.map(|l| l.as_micros() as u64),
                    "outstanding": endpoint.outstanding,
                    "calls": endpoint.calls,
                    "errors": endpoint.errors,
                    "last_error": endpoint.last_error,
                }))
            );
        } else {
            let latency = latency
                .map(|l| format!("{:.1}ms", l.as_secs_f64() * 1000.0))
                .unwrap_or_else(|| "-".into());
            println!(
                "{:<22} {:<12} {:>10} {:>11}  {}",
                endpoint.address.to_string(),
                endpoint.state.to_string() + if endpoint.slow { " (slow)" } else { "" },
                latency,
                endpoint.outstanding,
                sanitize(&one_line(last_error))
            );
        }
    }
    for (target, why) in &unresolved {
        if json {
            println!(
                "{}",
                json_line(&json!({
                    "type": "server",
                    "address": target.to_string(),
                    "health": UNRESOLVED,
                    "slow": false,
                    "latency_us": null,
                    "outstanding": 0,
                    "calls": 0,
                    "errors": 0,
                    "last_error": why,
                }))
            );
        } else {
            println!(
                "{:<22} {:<12} {:>10} {:>11}  {}",
                target.to_string(),
                UNRESOLVED,
                "-",
                0,
                sanitize(&one_line(why))
            );
        }
    }
    let healthy = snapshot
        .iter()
        .filter(|endpoint| endpoint.state == EndpointState::Healthy)
        .count();
    if healthy == 0 {
        let servers: Vec<String> = snapshot
            .iter()
            .map(describe)
            .chain(
                unresolved
                    .iter()
                    .map(|(target, why)| format!("{target} ({why})")),
            )
            .collect();
        let message = if servers.is_empty() {
            "no servers configured".to_owned()
        } else {
            format!(
                "none of the {} servers is healthy: {}",
                servers.len(),
                servers.join("; ")
            )
        };
        return Err(CliError::new(
            ErrorKind::Unavailable,
            sanitize(&one_line(&message)).into_owned(),
        ));
    }
    Ok(())
}

/// `address (state: last error)`, or `address (TLS: ...)` for a TLS failure, as
/// the balancer's own errors name servers.
fn describe(endpoint: &EndpointSnapshot) -> String {
    match &endpoint.last_error {
        Some(error) if error.starts_with("TLS: ") => format!("{} ({error})", endpoint.address),
        Some(error) => format!("{} ({}: {error})", endpoint.address, endpoint.state),
        None => format!("{} ({})", endpoint.address, endpoint.state),
    }
}

//! `status`: a table of every server's health, after one fresh round of probes.

use chat_lb_client::{Balancer, EndpointSnapshot, EndpointState};
use serde_json::json;

use crate::error::{CliError, ErrorKind};

/// Waits for one round of health probes (bounded by the probe timeout), prints a
/// table (or JSON lines), and fails when no server is healthy, naming each
/// server and its last error (a TLS failure in words, e.g. `127.0.0.1:8500 (TLS:
/// certificate signed by an unknown authority)`).
pub async fn run(balancer: &Balancer, json: bool) -> Result<(), CliError> {
    balancer.wait_for_probe_round().await;
    let snapshot = balancer.snapshot();
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
                json!({
                    "type": "server",
                    "address": endpoint.address.to_string(),
                    "health": endpoint.state.to_string(),
                    "slow": endpoint.slow,
                    "latency_us": latency.map(|l| l.as_micros() as u64),
                    "outstanding": endpoint.outstanding,
                    "calls": endpoint.calls,
                    "errors": endpoint.errors,
                    "last_error": endpoint.last_error,
                })
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
                crate::error::one_line(last_error)
            );
        }
    }
    let healthy = snapshot
        .iter()
        .filter(|endpoint| endpoint.state == EndpointState::Healthy)
        .count();
    if healthy == 0 {
        let servers: Vec<String> = snapshot.iter().map(describe).collect();
        return Err(CliError::new(
            ErrorKind::Unavailable,
            crate::error::one_line(&format!(
                "none of the {} servers is healthy: {}",
                snapshot.len(),
                servers.join("; ")
            )),
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

//! A TLS failure is exit code 5 and one line naming each server and its TLS
//! problem. The "servers" are listeners on 127.0.0.1 that answer every
//! connection with plaintext and close it, as a server without TLS would.

mod support;

use std::{
    io::Write,
    net::{SocketAddr, TcpListener},
    process::Output,
};

/// A listener that answers every connection with a line of plaintext HTTP and
/// closes it; it lives as long as the test process.
fn plaintext_server() -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    std::thread::spawn(move || {
        for mut stream in listener.incoming().flatten() {
            let _ = stream.write_all(b"HTTP/1.1 400 Bad Request\r\n\r\n");
        }
    });
    addr
}

fn chat_cli(args: &[&str]) -> Output {
    let mut command = support::command();
    command.args(args).output().expect("run chat-cli")
}

/// A CA certificate file made at test time (it signed nothing the servers
/// show: they show no certificate at all).
fn ca_file() -> (std::path::PathBuf, String) {
    let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
    params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    let key = rcgen::KeyPair::generate().unwrap();
    let path = std::env::temp_dir().join(format!("chat-cli-tls-ca-{}.pem", std::process::id()));
    std::fs::write(&path, params.self_signed(&key).unwrap().pem()).unwrap();
    let text = path.display().to_string();
    (path, text)
}

/// Asserts exit code 5 and one line on stderr naming each server with the
/// TLS problem.
fn unavailable_naming(output: Output, servers: &[SocketAddr], what: &str) -> String {
    let stderr = String::from_utf8_lossy(&output.stderr).into_owned();
    assert_eq!(output.status.code(), Some(5), "{what}: {stderr}");
    assert_eq!(stderr.lines().count(), 1, "{what}: one line: {stderr}");
    for server in servers {
        let expected = format!("{server} (TLS: the server does not speak TLS (plaintext server?))");
        assert!(
            stderr.contains(&expected),
            "{what}: {stderr:?} lacks {expected:?}"
        );
    }
    stderr
}

#[test]
fn a_tls_failure_exits_5_naming_each_server_and_its_problem() {
    let (a, b) = (plaintext_server(), plaintext_server());
    let servers = format!("https://{a},https://{b}");
    let (ca, ca_text) = ca_file();

    let output = chat_cli(&[
        "--servers",
        &servers,
        "--ca-cert",
        &ca_text,
        "--timeout",
        "3s",
        "register",
        "--user",
        "alice",
        "--password",
        "correct horse battery",
    ]);
    let line = unavailable_naming(output, &[a, b], "register");
    assert!(
        line.starts_with("chat-cli: cluster unavailable: "),
        "{line}"
    );

    let output = chat_cli(&["--servers", &servers, "--ca-cert", &ca_text, "status"]);
    let line = unavailable_naming(output, &[a, b], "status");
    assert!(
        line.starts_with("chat-cli: none of the 2 servers is healthy: "),
        "{line}"
    );

    // A plain HOST:PORT with --ca-cert is TLS too.
    let output = chat_cli(&["--servers", &a.to_string(), "--ca-cert", &ca_text, "status"]);
    unavailable_naming(output, &[a], "--ca-cert with a plain address");
    let _ = std::fs::remove_file(ca);
}

#[test]
fn https_alone_uses_the_system_roots() {
    let a = plaintext_server();
    let output = chat_cli(&["--servers", &format!("https://{a}"), "status"]);
    let stderr = String::from_utf8_lossy(&output.stderr);
    if output.status.code() == Some(2) && stderr.contains("system's trusted roots") {
        eprintln!("skipped: this system has no trusted roots ({stderr})");
        return;
    }
    unavailable_naming(output, &[a], "https:// alone");
}

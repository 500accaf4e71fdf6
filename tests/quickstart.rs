//! The quickstart example over TLS, as a user runs it: three replicas serving
//! certificates it makes, the echo bot and the interactive chat through the balancer.

use std::{
    io::{BufRead, BufReader, Write},
    process::{Command, Stdio},
    sync::mpsc,
    time::Duration,
};

#[test]
fn the_quickstart_runs_a_whole_cluster_over_tls() {
    let dir = tempfile::tempdir().expect("tempdir");
    let base_port = chat_testkit::free_port_run(3);
    let mut quickstart = Command::new(chat_testkit::workspace_binary("examples/quickstart"))
        .current_dir(dir.path())
        .args(["--tls", "--base-port", &base_port.to_string()])
        .env("RUST_LOG", "warn")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("start the quickstart");
    let (lines_tx, lines) = mpsc::channel();
    let stdout = quickstart.stdout.take().expect("stdout");
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            let _ = lines_tx.send(line);
        }
    });
    let wait_for = |needle: &str| -> Vec<String> {
        let mut seen = Vec::new();
        loop {
            match lines.recv_timeout(Duration::from_secs(30)) {
                Ok(line) => {
                    let found = line.contains(needle);
                    seen.push(line);
                    if found {
                        return seen;
                    }
                }
                Err(_) => panic!("no line with {needle:?} in time; saw {seen:#?}"),
            }
        }
    };

    let banner = wait_for("logged in as me");
    assert!(
        banner.iter().any(|l| l.contains("cluster over TLS")),
        "{banner:#?}"
    );
    let hint = banner
        .iter()
        .find(|l| l.contains("chat-cli --servers https://"))
        .unwrap_or_else(|| panic!("a chat-cli line with https:// addresses: {banner:#?}"));
    assert!(
        hint.contains("--ca-cert chat-data/quickstart-certs/ca.pem"),
        "{hint}"
    );
    for file in [
        "ca.pem",
        "server.pem",
        "server.key",
        "client.pem",
        "client.key",
    ] {
        assert!(
            dir.path()
                .join("chat-data/quickstart-certs")
                .join(file)
                .is_file()
        );
    }

    let mut stdin = quickstart.stdin.take().expect("stdin");
    writeln!(stdin, "@echo-bot hello over tls").expect("type");
    wait_for("echo: hello over tls");
    drop(stdin); // Ctrl-D
    let status = quickstart.wait().expect("the quickstart exits");
    assert!(status.success(), "{status}");
}

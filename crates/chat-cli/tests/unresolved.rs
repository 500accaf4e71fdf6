//! A server whose host name does not resolve is named, with the resolver's
//! reason, in one line and exit code 5. Names under `.invalid` never resolve
//! (RFC 2606), so no network is needed.

mod support;

use std::process::Output;

fn chat_cli(args: &[&str]) -> Output {
    let mut command = support::command();
    command.args(args).output().expect("run chat-cli")
}

/// Asserts exit code 5 and one line on stderr; returns it.
fn unavailable(output: Output, what: &str) -> String {
    let stderr = String::from_utf8_lossy(&output.stderr).into_owned();
    assert_eq!(output.status.code(), Some(5), "{what}: {stderr}");
    assert_eq!(stderr.lines().count(), 1, "{what}: one line: {stderr}");
    stderr.trim_end().to_owned()
}

#[test]
fn status_names_a_host_that_does_not_resolve() {
    let output = chat_cli(&["--servers", "nosuchhost.invalid:8500", "status"]);
    let stdout = String::from_utf8_lossy(&output.stdout).into_owned();
    let line = unavailable(output, "status");
    assert!(
        line.starts_with(
            "chat-cli: none of the 1 servers is healthy: nosuchhost.invalid:8500 (cannot resolve: "
        ),
        "{line}"
    );
    // The table has a row for it.
    let row = stdout
        .lines()
        .find(|row| row.starts_with("nosuchhost.invalid:8500"))
        .unwrap_or_else(|| panic!("no row: {stdout}"));
    assert!(row.contains("unresolved"), "{row}");
    assert!(row.contains("cannot resolve: "), "{row}");
}

#[test]
fn a_call_names_a_host_that_does_not_resolve() {
    let output = chat_cli(&[
        "--servers",
        "nosuchhost.invalid:8500",
        "--user",
        "alice",
        "--password",
        "a long secret",
        "inbox",
    ]);
    let line = unavailable(output, "inbox");
    assert!(
        line.starts_with(
            "chat-cli: cluster unavailable: chat-lb-client: no endpoint: nosuchhost.invalid:8500 (cannot resolve: "
        ),
        "{line}"
    );
    assert!(!line.contains("no endpoints configured"), "{line}");
}

#[test]
fn status_json_lists_a_host_that_does_not_resolve() {
    let output = chat_cli(&["--servers", "nosuchhost.invalid:8500", "--json", "status"]);
    let stdout = String::from_utf8_lossy(&output.stdout).into_owned();
    unavailable(output, "status --json");
    let value: serde_json::Value = serde_json::from_str(stdout.trim()).unwrap();
    assert_eq!(value["type"], "server");
    assert_eq!(value["address"], "nosuchhost.invalid:8500");
    assert_eq!(value["health"], "unresolved");
    assert!(
        value["last_error"]
            .as_str()
            .unwrap()
            .starts_with("cannot resolve: "),
        "{value}"
    );
}

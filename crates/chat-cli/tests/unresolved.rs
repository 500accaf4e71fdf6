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

#[test]
fn logs_asked_for_are_plain_text_off_a_terminal_or_json_lines() {
    let logged = |format: &str| {
        let output = support::command()
            .args(["--servers", "nosuchhost.invalid:8500", "status"])
            .args(["--log-format", format])
            .env("RUST_LOG", "chat_lb_client=debug")
            .output()
            .expect("run chat-cli");
        let stderr = String::from_utf8_lossy(&output.stderr).into_owned();
        // The last line is the command's own error; the lines before it are the log.
        let mut lines: Vec<String> = stderr.lines().map(str::to_owned).collect();
        let error = lines.pop().unwrap_or_default();
        assert!(error.starts_with("chat-cli: "), "{stderr}");
        assert!(
            lines
                .iter()
                .any(|line| line.contains("cannot resolve host name")),
            "{stderr}"
        );
        lines
    };
    for line in logged("text") {
        assert!(!line.contains('\u{1b}'), "no ANSI escapes: {line:?}");
    }
    for line in logged("json") {
        let record: serde_json::Value =
            serde_json::from_str(&line).unwrap_or_else(|error| panic!("{error}: {line}"));
        assert!(record["timestamp"].is_string(), "{line}");
        assert!(record["level"].is_string(), "{line}");
        let target = record["target"].as_str().unwrap_or_default();
        assert!(target.starts_with("chat_lb_client"), "{line}");
        assert!(record["fields"]["message"].is_string(), "{line}");
    }
}

//! The `chat-cli` binary's command-line surface, without any server: help, version,
//! and usage errors (one line on stderr, exit code 2, never a panic).

use std::process::Command;

fn chat_cli(args: &[&str]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_chat-cli"))
        .args(args)
        .env_remove("CHAT_SERVERS")
        .env_remove("CHAT_USER")
        .env_remove("CHAT_PASSWORD")
        .output()
        .expect("run chat-cli")
}

#[test]
fn help_lists_every_subcommand_and_exits_zero() {
    let output = chat_cli(&["--help"]);
    assert!(output.status.success());
    let help = String::from_utf8_lossy(&output.stdout);
    for subcommand in [
        "register",
        "accounts",
        "send",
        "inbox",
        "watch",
        "delete-account",
        "status",
    ] {
        assert!(
            help.contains(subcommand),
            "{subcommand} missing from:\n{help}"
        );
    }
    assert!(chat_cli(&["--version"]).status.success());
}

#[test]
fn usage_errors_exit_2_without_a_panic() {
    for args in [
        &["frobnicate"][..],
        &["send", "bob"],
        &["--timeout", "soon", "status"],
        &["--servers", "127.0.0.1:1,no-port-here", "status"],
        &["inbox"],
    ] {
        let output = chat_cli(args);
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert_eq!(output.status.code(), Some(2), "{args:?}: {stderr}");
        assert!(!stderr.contains("panicked"), "{args:?}: {stderr}");
    }
}

//! The `chat-cli` binary's command-line surface, without any server: help, version,
//! and usage errors (one line on stderr, exit code 2, never a panic).

mod support;

use std::path::{Path, PathBuf};

use support::command;

fn chat_cli(args: &[&str]) -> std::process::Output {
    command().args(args).output().expect("run chat-cli")
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
        "login",
        "logout",
        "completions",
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

#[test]
fn clap_usage_errors_are_one_line() {
    for (args, expected) in [
        (
            &["--frobnicate", "status"][..],
            "chat-cli: unexpected argument '--frobnicate' found",
        ),
        (
            &["frobnicate"],
            "chat-cli: unrecognized subcommand 'frobnicate'",
        ),
        (
            &["send", "bob"],
            "chat-cli: the following required arguments were not provided: <TEXT>",
        ),
        (
            &["status", "--timeout"],
            "chat-cli: a value is required for '--timeout <TIMEOUT>' but none was supplied",
        ),
        (
            &["--timeout", "soon", "status"],
            "chat-cli: invalid value 'soon' for '--timeout <TIMEOUT>': expected number at 0 \
             (a duration from 10ms to 1h, like 5s or 500ms)",
        ),
        (
            &["--jsno", "status"],
            "chat-cli: unexpected argument '--jsno' found; tip: a similar argument exists: '--json'",
        ),
        (
            &["--log-format", "xml", "status"],
            "chat-cli: invalid value 'xml' for '--log-format <FORMAT>'; [possible values: text, json]",
        ),
    ] {
        let line = usage_error(chat_cli(args), &format!("{args:?}"));
        assert_eq!(line, expected, "{args:?}");
    }
    // Help and version are unchanged: several lines on stdout, exit code 0.
    let help = chat_cli(&["send", "--help"]);
    assert!(help.status.success());
    assert!(String::from_utf8_lossy(&help.stdout).lines().count() > 3);
    assert!(help.stderr.is_empty());
    let version = chat_cli(&["--version"]);
    assert!(version.status.success());
    assert!(String::from_utf8_lossy(&version.stdout).starts_with("chat-cli "));
}

#[test]
fn degenerate_settings_are_refused_naming_the_flag_and_range() {
    for (flag, value, range) in [
        ("--timeout", "0s", "from 10ms to 1h"),
        ("--keepalive", "0s", "from 100ms to 1h"),
        ("--try-timeout", "0s", "from 10ms to 1h"),
        ("--health-interval", "0s", "from 10ms to 1h"),
        ("--health-timeout", "0s", "from 10ms to 1m"),
        ("--connect-timeout", "0s", "from 10ms to 5m"),
        ("--timeout", "3h", "from 10ms to 1h"),
        ("--unhealthy-threshold", "0", "1..=100"),
    ] {
        let args = [flag, value];
        // Unreachable servers: a setting that were accepted would fail
        // differently (exit code 5), not with a usage error.
        let mut full = vec!["--servers", "127.0.0.1:1"];
        full.extend_from_slice(&args);
        full.push("status");
        let line = usage_error(chat_cli(&full), &format!("{args:?}"));
        assert!(
            line.starts_with(&format!(
                "chat-cli: invalid value '{}' for '{flag} <",
                args[1]
            )),
            "{args:?}: {line}"
        );
        assert!(
            line.ends_with(&format!("must be {range}")) || line.contains(range),
            "{args:?}: {line}"
        );
    }
    // Each range is in the flag's help.
    let help = String::from_utf8_lossy(&chat_cli(&["--help"]).stdout).into_owned();
    for range in [
        "(10ms-1h)",
        "(100ms-1h)",
        "(10ms-1m)",
        "(10ms-5m)",
        "(1-100)",
    ] {
        assert!(help.contains(range), "{range} missing from:\n{help}");
    }
}

/// A folder of PEM files made at test time: a CA and a client certificate and
/// key from it, another key, and a file that is not PEM.
struct Pem {
    dir: PathBuf,
}

impl Pem {
    fn new(test: &str) -> Self {
        let dir = std::env::temp_dir().join(format!("chat-cli-{test}-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
        params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        let ca_key = rcgen::KeyPair::generate().unwrap();
        std::fs::write(
            dir.join("ca.pem"),
            params.self_signed(&ca_key).unwrap().pem(),
        )
        .unwrap();
        let issuer = rcgen::Issuer::new(params, ca_key);
        let key = rcgen::KeyPair::generate().unwrap();
        let cert = rcgen::CertificateParams::new(vec!["client.test".to_owned()])
            .unwrap()
            .signed_by(&key, &issuer)
            .unwrap();
        std::fs::write(dir.join("client.pem"), cert.pem()).unwrap();
        std::fs::write(dir.join("client.key"), key.serialize_pem()).unwrap();
        let other = rcgen::KeyPair::generate().unwrap();
        std::fs::write(dir.join("other.key"), other.serialize_pem()).unwrap();
        std::fs::write(dir.join("junk.pem"), "not PEM at all\n").unwrap();
        Self { dir }
    }

    fn path(&self, name: &str) -> String {
        self.dir.join(name).display().to_string()
    }
}

impl Drop for Pem {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// Asserts a usage error: exit code 2 and one line on stderr, which is returned.
fn usage_error(output: std::process::Output, what: &str) -> String {
    let stderr = String::from_utf8_lossy(&output.stderr).into_owned();
    assert_eq!(output.status.code(), Some(2), "{what}: {stderr}");
    assert_eq!(stderr.lines().count(), 1, "{what}: one line: {stderr}");
    assert!(!stderr.contains("panicked"), "{what}: {stderr}");
    stderr.trim_end().to_owned()
}

/// The one-line usage error of `chat-cli ARGS` (`what` names the case), which must
/// start with `prefix`.
fn usage_error_starting(args: &[&str], what: &str, prefix: &str) -> String {
    let line = usage_error(chat_cli(args), what);
    assert!(line.starts_with(prefix), "{what}: {line}");
    line
}

/// The scheme errors of `--servers`: mixed schemes, and http:// with TLS flags
/// (`ca`: a CA file).
fn address_list_errors(ca: &str) {
    usage_error_starting(
        &[
            "--servers",
            "https://127.0.0.1:1,http://127.0.0.1:2",
            "status",
        ],
        "mixed schemes",
        "chat-cli: --servers: the address list mixes https://",
    );
    usage_error_starting(
        &["--servers", "http://127.0.0.1:1", "--ca-cert", ca, "status"],
        "http:// with TLS flags",
        "chat-cli: --servers: http://127.0.0.1:1 asks for plaintext",
    );
}

#[test]
fn tls_flag_errors_exit_2_in_one_line_naming_the_flag_and_file() {
    let pem = Pem::new("tls-flags");
    let (ca, cert, key) = (
        pem.path("ca.pem"),
        pem.path("client.pem"),
        pem.path("client.key"),
    );
    let missing = Path::new(&pem.dir).join("missing.pem");
    let missing_text = missing.display().to_string();
    let junk = pem.path("junk.pem");
    let other_key = pem.path("other.key");

    let line = usage_error(chat_cli(&["--client-cert", &cert, "status"]), "cert alone");
    assert_eq!(
        line,
        "chat-cli: --client-cert needs --client-key (mutual TLS needs the certificate's key)"
    );
    let line = usage_error(chat_cli(&["status", "--client-key", &key]), "key alone");
    assert!(line.contains("--client-key needs --client-cert"), "{line}");

    let line = usage_error(
        chat_cli(&["--ca-cert", &missing_text, "status"]),
        "missing CA",
    );
    assert_eq!(
        line,
        format!(
            "chat-cli: --ca-cert: cannot read TLS CA file {missing:?}: No such file or directory"
        )
    );
    let output = command()
        .env("CHAT_CA_CERT", &missing)
        .arg("status")
        .output()
        .unwrap();
    let line = usage_error(output, "missing CA from the environment");
    assert!(
        line.starts_with("chat-cli: --ca-cert: cannot read"),
        "{line}"
    );

    let line = usage_error(chat_cli(&["--ca-cert", &junk, "status"]), "CA without PEM");
    assert_eq!(
        line,
        format!(
            "chat-cli: --ca-cert: TLS CA file {:?} holds no PEM certificate",
            Path::new(&junk)
        )
    );
    usage_error_starting(
        &[
            "--ca-cert",
            &ca,
            "--client-cert",
            &junk,
            "--client-key",
            &key,
            "status",
        ],
        "client certificate without PEM",
        "chat-cli: --client-cert: TLS client certificate file",
    );
    let line = usage_error_starting(
        &[
            "--ca-cert",
            &ca,
            "--client-cert",
            &cert,
            "--client-key",
            &other_key,
            "status",
        ],
        "a key that is not the certificate's",
        "chat-cli: --client-key: TLS client key file",
    );
    assert!(line.contains("does not match"), "{line}");

    usage_error_starting(
        &[
            "--ca-cert",
            &ca,
            "--tls-server-name",
            "not a name",
            "status",
        ],
        "bad server name",
        "chat-cli: --tls-server-name: invalid TLS server name",
    );

    address_list_errors(&ca);
}

#[test]
fn completions_print_a_script_for_each_shell_and_refuse_others() {
    for shell in ["bash", "zsh", "fish"] {
        let output = chat_cli(&["completions", shell]);
        assert!(output.status.success(), "{shell}: {output:?}");
        let script = String::from_utf8(output.stdout).unwrap();
        assert!(script.contains("chat-cli"), "{shell}: {script}");
        for subcommand in ["login", "logout", "inbox"] {
            assert!(script.contains(subcommand), "{shell}: no {subcommand}");
        }
    }
    let output = chat_cli(&["completions", "tcsh"]);
    assert_eq!(output.status.code(), Some(2), "{output:?}");
    let stderr = String::from_utf8(output.stderr).unwrap();
    assert_eq!(stderr.lines().count(), 1, "{stderr}");
    assert!(
        stderr.starts_with("chat-cli: invalid value 'tcsh'"),
        "{stderr}"
    );
}

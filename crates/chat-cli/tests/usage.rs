//! The `chat-cli` binary's command-line surface, without any server: help, version,
//! and usage errors (one line on stderr, exit code 2, never a panic).

use std::{
    path::{Path, PathBuf},
    process::Command,
};

/// The binary, with none of its environment fallbacks set.
fn command() -> Command {
    let mut command = Command::new(env!("CARGO_BIN_EXE_chat-cli"));
    for var in [
        "CHAT_SERVERS",
        "CHAT_USER",
        "CHAT_PASSWORD",
        "CHAT_CA_CERT",
        "CHAT_CLIENT_CERT",
        "CHAT_CLIENT_KEY",
        "CHAT_TLS_SERVER_NAME",
    ] {
        command.env_remove(var);
    }
    command
}

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
    let line = usage_error(
        chat_cli(&[
            "--ca-cert",
            &ca,
            "--client-cert",
            &junk,
            "--client-key",
            &key,
            "status",
        ]),
        "client certificate without PEM",
    );
    assert!(
        line.starts_with("chat-cli: --client-cert: TLS client certificate file"),
        "{line}"
    );
    let line = usage_error(
        chat_cli(&[
            "--ca-cert",
            &ca,
            "--client-cert",
            &cert,
            "--client-key",
            &other_key,
            "status",
        ]),
        "a key that is not the certificate's",
    );
    assert!(
        line.starts_with("chat-cli: --client-key: TLS client key file"),
        "{line}"
    );
    assert!(line.contains("does not match"), "{line}");

    let line = usage_error(
        chat_cli(&[
            "--ca-cert",
            &ca,
            "--tls-server-name",
            "not a name",
            "status",
        ]),
        "bad server name",
    );
    assert!(
        line.starts_with("chat-cli: --tls-server-name: invalid TLS server name"),
        "{line}"
    );

    let line = usage_error(
        chat_cli(&[
            "--servers",
            "https://127.0.0.1:1,http://127.0.0.1:2",
            "status",
        ]),
        "mixed schemes",
    );
    assert!(
        line.starts_with("chat-cli: --servers: the address list mixes https://"),
        "{line}"
    );
    let line = usage_error(
        chat_cli(&[
            "--servers",
            "http://127.0.0.1:1",
            "--ca-cert",
            &ca,
            "status",
        ]),
        "http:// with TLS flags",
    );
    assert!(
        line.starts_with("chat-cli: --servers: http://127.0.0.1:1 asks for plaintext"),
        "{line}"
    );
}

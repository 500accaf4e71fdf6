//! What the chat-cli binary's tests share.

use std::process::Command;

/// The `chat-cli` binary, with none of its environment fallbacks set, so that the
/// test's own environment cannot change what it does, and a config directory of
/// its own that does not exist (so no kept session of the user's is used; a test
/// of kept sessions sets `XDG_CONFIG_HOME` again).
pub fn command() -> Command {
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
    let config = std::path::Path::new(env!("CARGO_TARGET_TMPDIR"))
        .join("chat-cli-no-config")
        .join(uuid::Uuid::new_v4().to_string());
    command.env("XDG_CONFIG_HOME", config);
    command
}

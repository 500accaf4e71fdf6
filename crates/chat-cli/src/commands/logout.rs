//! `logout`: end the kept session on the server and forget it.

use serde_json::json;
use tonic::Code;

use crate::{
    args::GlobalArgs,
    connect::ChatClient,
    error::CliError,
    output::{json_line, sanitize},
    session::StoreError,
    signin::Keeper,
};

/// Ends the kept session of this user on this cluster on the server, and
/// deletes it here (an unreadable entry is deleted too). The entry is deleted
/// even when the server cannot be told; the error then says so, and the server
/// ends the session when it expires.
pub async fn run(args: &GlobalArgs, client: ChatClient) -> Result<(), CliError> {
    let keeper = Keeper::new(args)?;
    let ended = match keeper.store.load(&keeper.cluster, &keeper.username) {
        Ok(Some(kept)) => Keeper::resume(client, &kept)?.logout().await,
        Ok(None) => {
            eprintln!(
                "chat-cli: no kept session of {} on {}",
                sanitize(&keeper.username),
                sanitize(&keeper.cluster)
            );
            return Ok(());
        }
        Err(StoreError::Corrupt { .. }) => Ok(()),
        Err(error) => return Err(error.into()),
    };
    keeper.forget()?;
    match ended {
        Err(status) if status.code() != Code::Unauthenticated => {
            let error = CliError::from(status);
            return Err(CliError::new(
                error.kind,
                format!(
                    "forgot the kept session, but the server could not end it (it ends when it expires): {error}"
                ),
            ));
        }
        _ => {}
    }
    if args.json {
        println!(
            "{}",
            json_line(&json!({"type": "logout", "username": keeper.username}))
        );
    } else {
        println!("logged out {}", sanitize(&keeper.username));
    }
    Ok(())
}

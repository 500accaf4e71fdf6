//! `login`: log in once and keep the session for later commands.

use serde_json::json;

use crate::{
    args::GlobalArgs,
    connect::{self, ChatClient},
    error::CliError,
    output::{format_time, json_line, sanitize},
    signin::Keeper,
};

/// Logs in with the password and keeps the session token (never the password)
/// for this user on this cluster, ending the one kept before, if any.
pub async fn run(args: &GlobalArgs, client: ChatClient) -> Result<(), CliError> {
    let keeper = Keeper::new(args)?;
    let password = connect::password(args)?;
    let session = connect::login_as(client.clone(), &keeper.username, &password).await?;
    // An older kept session would stay valid on the server until it expires.
    if let Ok(Some(old)) = keeper.load()
        && let Ok(old) = Keeper::resume(client, &old)
    {
        let _ = old.logout().await;
    }
    let path = keeper.keep(&session)?;
    let expires = (session.expires_at_unix_ms > 0).then(|| format_time(session.expires_at_unix_ms));
    if args.json {
        println!(
            "{}",
            json_line(&json!({
                "type": "login",
                "username": session.username,
                "expires": expires,
                "file": path.display().to_string(),
            }))
        );
    } else {
        println!(
            "logged in as {}; the session is kept in {}{}",
            sanitize(&session.username),
            sanitize(&path.display().to_string()),
            expires
                .map(|time| format!(" until {time}"))
                .unwrap_or_default()
        );
    }
    Ok(())
}

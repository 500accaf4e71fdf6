//! `delete-account`: delete your account (the password is checked again).

use chat_proto::v1::DeleteAccountRequest;
use serde_json::json;

use crate::{
    args::GlobalArgs,
    connect::{self, Session},
    error::CliError,
};

/// Deletes the logged-in account.
pub async fn run(args: &GlobalArgs, session: &Session) -> Result<(), CliError> {
    let password = connect::password(args)?;
    session
        .client
        .clone()
        .delete_account(session.request(DeleteAccountRequest { password }))
        .await?;
    // The account's sessions are gone with it.
    if session.kept
        && let Some(keeper) = crate::signin::Keeper::optional(args)?
    {
        keeper.forget()?;
    }
    if args.json {
        println!(
            "{}",
            crate::output::json_line(&json!({"type": "deleted", "username": session.username}))
        );
    } else {
        println!(
            "deleted account {}",
            crate::output::sanitize(&session.username)
        );
    }
    Ok(())
}

//! `register`: create the account named by --user.

use chat_proto::v1::CreateAccountRequest;
use serde_json::json;

use crate::{
    args::GlobalArgs,
    connect::{self, ChatClient},
    error::CliError,
};

/// Creates the account.
pub async fn run(args: &GlobalArgs, mut client: ChatClient) -> Result<(), CliError> {
    let username = connect::username(args)?;
    let password = connect::password(args)?;
    let created = client
        .create_account(CreateAccountRequest { username, password })
        .await?
        .into_inner();
    if args.json {
        println!(
            "{}",
            crate::output::json_line(&json!({"type": "registered", "username": created.username}))
        );
    } else {
        println!("registered {}", crate::output::sanitize(&created.username));
    }
    Ok(())
}

//! `accounts [PATTERN]`: list matching usernames, every page.

use chat_proto::v1::ListAccountsRequest;
use serde_json::json;

use crate::{
    connect::Session,
    error::CliError,
    output::{json_line, sanitize},
};

/// Lists every account matching `pattern` (all when `None`).
pub async fn run(session: &Session, pattern: Option<&str>, json: bool) -> Result<(), CliError> {
    for username in list(session, pattern.unwrap_or("*")).await? {
        if json {
            println!(
                "{}",
                json_line(&json!({"type": "account", "username": username}))
            );
        } else {
            println!("{}", sanitize(&username));
        }
    }
    Ok(())
}

/// Every username matching `pattern`, following pages to the end.
pub async fn list(session: &Session, pattern: &str) -> Result<Vec<String>, CliError> {
    let mut client = session.client.clone();
    let mut names = Vec::new();
    let mut page_token = String::new();
    loop {
        let page = client
            .list_accounts(session.request(ListAccountsRequest {
                pattern: pattern.to_owned(),
                page_size: 0,
                page_token,
            }))
            .await?
            .into_inner();
        names.extend(page.usernames);
        if page.next_page_token.is_empty() {
            return Ok(names);
        }
        page_token = page.next_page_token;
    }
}

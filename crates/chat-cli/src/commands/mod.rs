//! One module per subcommand.

pub mod accounts;
pub mod completions;
pub mod delete_account;
pub mod inbox;
pub mod login;
pub mod logout;
pub mod register;
pub mod send;
pub mod status;
pub mod watch;

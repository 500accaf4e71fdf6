//! One module per subcommand.

pub mod accounts;
pub mod delete_account;
pub mod inbox;
pub mod register;
pub mod send;
pub mod status;
pub mod watch;

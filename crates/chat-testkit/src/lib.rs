//! The workspace's one test kit: what the process-level tests (`tests/`), the
//! examples and the crates' own tests share.
//!
//! - [`replica`]: `chat-server` replicas as child processes (the workspace binary, or
//!   the calling example re-executed as one), with one readiness protocol, signals,
//!   restarts, captured logs and CPU placement;
//! - [`store`]: stores that replicas share (a temporary SQLite file, a private
//!   MongoDB-compatible server from [`nx27017`]);
//! - [`client`]: plain and balanced chat clients, accounts, sessions and inboxes;
//! - [`tls`]: a private CA with server and client certificates;
//! - [`binary`]: the workspace's built binaries and free loopback addresses;
//! - [`procfs`]: a process's memory and open files, from Linux's `/proc`;
//! - [`wait`]: bounded polling, for conditions no event announces.
#![warn(missing_docs)]

pub mod binary;
pub mod client;
pub mod nx27017;
pub mod procfs;
pub mod replica;
pub mod store;
pub mod tls;
pub mod wait;

pub use binary::{
    dead_address, free_port_run, run_server_to_exit, start_up_error, workspace_binary,
};
pub use client::{
    ANSWER_CUT, PASSWORD, SendLoad, alice_and_bob, authed, balancer_builder, client, fetch_all,
    fetch_inbox, inbox_texts, kill_for_good, login, next_message, refused, register_and_login,
    send, send_request, two_replicas, wait_for_status,
};
pub use replica::{Placement, Replica};
pub use store::{MongoFixture, SharedStore, StoreFixture};
pub use wait::eventually;

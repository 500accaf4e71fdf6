//! Transport security: the TLS settings of the [`Builder`](crate::Builder),
//! how they are checked and applied to each endpoint's connection, and how TLS
//! failures are put into words.
//!
//! * `settings`: the builder's `tls_*` methods and what they collect;
//! * `pem`: reading and checking the PEM inputs (CA certificates, the client
//!   identity);
//! * `client`: the checked settings against the addresses, as tonic's
//!   `ClientTlsConfig` for each endpoint;
//! * `describe`: TLS failures in words ([`describe_tls_error`]).

mod client;
mod describe;
mod pem;
mod settings;

pub(crate) use client::{ALPN_H2, ClientTls, resolve};
pub use describe::describe_tls_error;
pub(crate) use describe::{
    PLAINTEXT_HINT, closed_at_once, handshake_failed, is_guess, is_tls_text,
};
pub(crate) use settings::TlsSettings;

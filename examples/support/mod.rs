//! Code shared by the examples (not an example itself: Cargo only builds
//! `examples/*.rs` and `examples/*/main.rs`). Include it with `mod support;`.

// Each example uses a different part of it.
#![allow(dead_code)]

pub mod replica;

//! Generates the tonic/prost code for `chat.v1` with a vendored `protoc`, so a fresh
//! clone builds with cargo alone.

use std::{env, path::PathBuf};

fn main() -> Result<(), Box<dyn std::error::Error>> {
    // Prefer an explicitly configured protoc; otherwise use the vendored one.
    if env::var_os("PROTOC").is_none() {
        // SAFETY: build scripts are single-threaded; nothing else reads the environment yet.
        unsafe { env::set_var("PROTOC", protoc_bin_vendored::protoc_bin_path()?) };
    }
    let out_dir = PathBuf::from(env::var("OUT_DIR")?);
    tonic_prost_build::configure()
        .file_descriptor_set_path(out_dir.join("chat_v1_descriptor.bin"))
        .compile_protos(&["proto/chat/v1/chat.proto"], &["proto"])?;
    println!("cargo:rerun-if-changed=proto/chat/v1/chat.proto");
    Ok(())
}

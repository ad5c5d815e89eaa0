//! Compiles `econsult/**/*.proto` with protox (pure Rust, no `protoc` on the machine) and
//! generates tonic clients and servers, plus a file descriptor set for gRPC server reflection.

use std::{env, path::PathBuf};

const PROTOS: &[&str] = &[
    "econsult/audit/v1/audit.proto",
    "econsult/booking/v1/booking.proto",
    "econsult/proxy/v1/proxy.proto",
    "econsult/consultation/v1/consultation.proto",
    "econsult/signalling/v1/signalling.proto",
    "econsult/stats/v1/stats.proto",
    "econsult/notify/v1/notify.proto",
];

fn main() -> Result<(), Box<dyn std::error::Error>> {
    for proto in PROTOS {
        println!("cargo:rerun-if-changed={proto}");
    }
    let descriptors = protox::compile(PROTOS, ["."])?;
    let out = PathBuf::from(env::var("OUT_DIR")?);
    let descriptor_path = out.join("econsult_descriptor.bin");
    std::fs::write(
        &descriptor_path,
        prost::Message::encode_to_vec(&descriptors),
    )?;
    tonic_prost_build::configure()
        .build_server(true)
        .build_client(true)
        // Undecodable requests are INVALID_ARGUMENT, not prost's INTERNAL (src/codec.rs).
        .codec_path("crate::codec::Codec")
        .compile_fds(descriptors)?;
    Ok(())
}

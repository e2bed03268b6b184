//! Compiles proto/ with a vendored protoc: no system protoc is needed.
fn main() -> Result<(), Box<dyn std::error::Error>> {
    let protoc = protoc_bin_vendored::protoc_bin_path()?;
    // SAFETY: build scripts are single-threaded; nothing reads the env concurrently.
    unsafe { std::env::set_var("PROTOC", protoc) };
    println!("cargo:rerun-if-changed=proto");
    let out = std::path::PathBuf::from(std::env::var("OUT_DIR")?);
    tonic_prost_build::configure()
        .file_descriptor_set_path(out.join("mailspool_descriptor.bin"))
        .build_server(true)
        .build_client(true)
        .codec_path("crate::grpc_codec::StrictCodec")
        .compile_protos(&["proto/mailspool/v1/mailspool.proto"], &["proto"])?;
    Ok(())
}

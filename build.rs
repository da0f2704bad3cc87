//! Compiles the perm/v1 and permd.v1 protos with the vendored protoc (offline builds), and
//! writes the file descriptor set that server reflection serves.

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let out = std::path::PathBuf::from(std::env::var("OUT_DIR")?);
    let mut config = prost_build::Config::new();
    config.protoc_executable(protoc_bin_vendored::protoc_bin_path()?);
    let protos = [
        "proto/perm/v1/perm.proto",
        "proto/perm/v1/role.proto",
        "proto/perm/v1/group.proto",
        "proto/perm/v1/menu.proto",
        "proto/perm/v1/org.proto",
        "proto/permd/v1/permd.proto",
    ];
    tonic_prost_build::configure()
        .file_descriptor_set_path(out.join("permd_descriptor.bin"))
        .compile_with_config(config, &protos, &["proto"])?;
    Ok(())
}

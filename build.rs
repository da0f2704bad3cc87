//! Compiles the perm/v1 and permd.v1 protos with the vendored protoc (offline builds), and
//! writes the file descriptor set that server reflection serves; then, apart, the control
//! plane's perms.io organisation service (proto/perms/v1).

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
    // perm.v1 messages are also the JSON bodies of the HTTP routes for the read RPCs: proto
    // field names, absent fields default as in proto3.
    tonic_prost_build::configure()
        .message_attribute(
            ".perm.v1",
            "#[derive(serde::Serialize, serde::Deserialize)] #[serde(default)]",
        )
        .file_descriptor_set_path(out.join("permd_descriptor.bin"))
        .compile_with_config(config, &protos, &["proto"])?;
    // The perms.io organisation service (seed 000), served by the control plane only: its own
    // descriptor set, so the sidecar's reflection does not list a service it does not serve.
    // Its messages are also the JSON answers of the `/organisation-service/v1` REST paths.
    let mut config = prost_build::Config::new();
    config.protoc_executable(protoc_bin_vendored::protoc_bin_path()?);
    tonic_prost_build::configure()
        .message_attribute(
            ".organisation.v1",
            "#[derive(serde::Serialize, serde::Deserialize)] #[serde(default)]",
        )
        .message_attribute(
            ".pagination.v1",
            "#[derive(serde::Serialize, serde::Deserialize)] #[serde(default)]",
        )
        .file_descriptor_set_path(out.join("perms_descriptor.bin"))
        .compile_with_config(
            config,
            &[
                "proto/perms/v1/organisation_service.proto",
                "proto/perms/v1/pagination.proto",
            ],
            &["proto"],
        )?;
    Ok(())
}

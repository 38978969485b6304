//! Compiles the kubelet's gRPC protocols (proto/) into Rust with a pure-Rust
//! protobuf compiler (protox), so building needs no `protoc`.

fn main() {
    let files = ["proto/deviceplugin.proto", "proto/podresources.proto"];
    for f in files {
        println!("cargo:rerun-if-changed={f}");
    }
    let fds = protox::compile(files, ["proto"]).expect("compile proto/*.proto");
    tonic_prost_build::configure()
        .compile_fds(fds)
        .expect("generate gRPC code from proto/*.proto");
}

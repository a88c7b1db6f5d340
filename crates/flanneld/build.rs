//! Link flags for flanneld's binaries.

fn main() {
    println!("cargo:rerun-if-changed=build.rs");
    let features = std::env::var("CARGO_CFG_TARGET_FEATURE").unwrap_or_default();
    let static_glibc = std::env::var("CARGO_CFG_TARGET_ENV").as_deref() == Ok("gnu")
        && features.split(',').any(|f| f == "crt-static");
    if static_glibc {
        // The shipped build (scripts/build-dist.sh): relative relocations packed (DT_RELR).
        // A position-independent binary otherwise carries half a megabyte of them, all read
        // at every start and all resident after it. A static binary relocates itself with
        // the glibc linked in, so no runtime glibc version is asked of the host.
        println!("cargo:rustc-link-arg-bins=-Wl,-z,pack-relative-relocs");
    }
}

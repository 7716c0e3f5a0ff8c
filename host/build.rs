//! With the `torch` feature, binaries find libtorch where they were built against it: the
//! folder `LIBTORCH` names (as `cargo xtask setup` installs it) goes into their run path.
//! A libtorch with CUDA (`lib/libtorch_cuda.so`) is linked explicitly: nothing calls into
//! it directly, so the linker would drop it and CUDA would stay unavailable.

fn main() {
    println!("cargo:rerun-if-env-changed=LIBTORCH");
    if std::env::var_os("CARGO_FEATURE_TORCH").is_none() {
        return;
    }
    if let Some(libtorch) = std::env::var_os("LIBTORCH") {
        let lib = std::path::Path::new(&libtorch).join("lib");
        println!("cargo:rustc-link-arg=-Wl,-rpath,{}", lib.display());
        if lib.join("libtorch_cuda.so").is_file() {
            println!("cargo:rustc-link-arg=-L{}", lib.display());
            println!("cargo:rustc-link-arg=-Wl,--no-as-needed");
            println!("cargo:rustc-link-arg=-ltorch_cuda");
            println!("cargo:rustc-link-arg=-Wl,--as-needed");
        }
    }
}

//! Forces `libtorch_cuda.so` into every binary of this package.
//!
//! With `--as-needed` (the Debian/Ubuntu default) the linker drops `libtorch_cuda.so` because no
//! symbol of it is used directly, and `tch::Cuda::is_available()` is then false on a GPU machine
//! (see the project's GPU notes). The torch wheel ships `libtorch_cuda.so` even where no GPU is
//! present, so this link also succeeds on CPU-only machines.
fn main() {
    println!("cargo:rustc-link-arg=-Wl,--no-as-needed,-ltorch_cuda,--as-needed");
    println!("cargo:rerun-if-changed=build.rs");
}

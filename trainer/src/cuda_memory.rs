//! Sampling the CUDA device's memory in use from a background thread (tch 0.24 exposes no
//! caching-allocator statistics): started by the context of a CUDA phase, read by the summary.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::OnceLock;
use std::time::Duration;

static PEAK: AtomicU64 = AtomicU64::new(0);
static STARTED: OnceLock<bool> = OnceLock::new();

type MemGetInfo = unsafe extern "C" fn(*mut usize, *mut usize) -> i32;

fn mem_get_info() -> Option<MemGetInfo> {
    // libcudart is loaded with libtorch_cuda (linked into every trainer binary, see build.rs).
    let sym = unsafe { libc::dlsym(libc::RTLD_DEFAULT, c"cudaMemGetInfo".as_ptr()) };
    // SAFETY: cudaMemGetInfo(size_t* free, size_t* total) -> cudaError_t has this signature.
    (!sym.is_null()).then(|| unsafe { std::mem::transmute::<*mut libc::c_void, MemGetInfo>(sym) })
}

/// Starts the sampler once (on a CUDA run); later calls do nothing.
pub fn start() {
    STARTED.get_or_init(|| {
        let Some(f) = mem_get_info() else { return false };
        std::thread::spawn(move || loop {
            let (mut free, mut total) = (0usize, 0usize);
            // SAFETY: two valid out-pointers.
            if unsafe { f(&mut free, &mut total) } == 0 {
                PEAK.fetch_max(total.saturating_sub(free) as u64, Ordering::Relaxed);
            }
            std::thread::sleep(Duration::from_millis(20));
        });
        true
    });
}

/// The highest device memory in use seen so far, if the sampler runs and has seen any.
pub fn peak() -> Option<u64> {
    Some(PEAK.load(Ordering::Relaxed)).filter(|p| *p > 0)
}

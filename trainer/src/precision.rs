//! Mixed precision: autocast to bf16 on CUDA (matmuls, convolutions and attention in bf16; softmax,
//! norms and losses in fp32; weights, gradients and the optimiser stay fp32 — no loss scaling needed).
//!
//! tch 0.24 can switch autocast on but not choose its dtype (libtorch's CUDA default is fp16), so the
//! dtype is set through libtorch's own exported `at::autocast::set_autocast_dtype`.

use tch::Device;

/// `c10::DeviceType` values (an `int8_t` enum).
const DEVICE_CPU: i8 = 0;
const DEVICE_CUDA: i8 = 1;
/// `c10::ScalarType::BFloat16` (an `int8_t` enum).
const SCALAR_BFLOAT16: i8 = 15;

extern "C" {
    // at::autocast::set_autocast_dtype(c10::DeviceType, c10::ScalarType), in libtorch_cpu.so.
    #[link_name = "_ZN2at8autocast18set_autocast_dtypeEN3c1010DeviceTypeENS1_10ScalarTypeE"]
    fn at_set_autocast_dtype(device: i8, dtype: i8);
    // at::autocast::set_autocast_enabled(c10::DeviceType, bool)
    #[link_name = "_ZN2at8autocast20set_autocast_enabledEN3c1010DeviceTypeEb"]
    fn at_set_autocast_enabled(device: i8, enabled: bool);
}

/// Runs `f` with bf16 autocast when `enabled` and `device` is CUDA; otherwise runs it as it is (on CPU,
/// bf16 autocast is slower than fp32 on most processors).
pub fn autocast_bf16<T>(device: Device, enabled: bool, f: impl FnOnce() -> T) -> T {
    if !(enabled && device.is_cuda()) {
        return f();
    }
    // SAFETY: both functions only set thread-local autocast state; the enums are passed by value.
    unsafe { at_set_autocast_dtype(DEVICE_CUDA, SCALAR_BFLOAT16) };
    tch::autocast(true, f)
}

/// Runs `f` with bf16 autocast on the CPU (for tests of the binding; training uses [`autocast_bf16`]).
pub fn autocast_bf16_cpu<T>(f: impl FnOnce() -> T) -> T {
    // SAFETY: as above; the previous state (off) is restored before returning.
    unsafe {
        at_set_autocast_dtype(DEVICE_CPU, SCALAR_BFLOAT16);
        at_set_autocast_enabled(DEVICE_CPU, true);
    }
    let out = f();
    unsafe { at_set_autocast_enabled(DEVICE_CPU, false) };
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use tch::{Kind, Tensor};

    #[test]
    fn autocast_binding_switches_matmuls_to_bf16() {
        let a = Tensor::ones([4, 4], (Kind::Float, Device::Cpu));
        assert_eq!(a.matmul(&a).kind(), Kind::Float);
        let inside = autocast_bf16_cpu(|| a.matmul(&a));
        assert_eq!(inside.kind(), Kind::BFloat16, "the dtype symbol did not take effect");
        assert_eq!(a.matmul(&a).kind(), Kind::Float, "autocast must be off again");
        // On a CPU device the training wrapper leaves fp32 alone.
        assert_eq!(autocast_bf16(Device::Cpu, true, || a.matmul(&a)).kind(), Kind::Float);
    }
}

//! The GPU settings of a job, stated in one place and applied by the binaries first thing in
//! `main` (docs/gpu.md):
//!
//! - **TF32 off by default.** On Ampere and later GPUs cuDNN convolutions (and cuBLAS matrix
//!   products where allowed) may round fp32 inputs to TF32's 10-bit mantissa, which changes
//!   logits and so attack results; libtorch allows it for cuDNN by default. tch 0.26 exposes no
//!   switch for `at::globalContext().setAllowTF32CuDNN` / `setAllowTF32CuBLAS`, so the job sets
//!   `NVIDIA_TF32_OVERRIDE=0`, which cuBLAS and cuDNN read when libtorch first creates their
//!   handles (after `main` starts) and which turns TF32 off whatever libtorch asks for.
//!   `--allow-tf32` (or `RFB_ALLOW_TF32=1`, which worker processes inherit) leaves it unset.
//! - **cuDNN autotuning where shapes are fixed.** Training batches have one shape, so the first
//!   batch's autotuning pays for itself; attacks that drop finished points (APGD, FAB, Square)
//!   change the batch's size every few iterations, and autotuning every new size costs more than
//!   it saves, so evaluation leaves it off.
//! - Data moved to the device once per job and bf16 judged by fp32 are not switches: the
//!   evaluation moves its points once (`attacks::evaluate`), and a bf16 copy never decides what
//!   is counted (`attacks` module docs).
//!
//! On a machine without CUDA every setting is harmless: the variable is read by no library and
//! the cuDNN flag is libtorch's global, unused by the CPU kernels.

use tch::Device;

/// Set when TF32 was allowed, so that worker processes started by the job allow it too.
pub const ALLOW_TF32_VARIABLE: &str = "RFB_ALLOW_TF32";
/// NVIDIA's libraries' own switch: "0" turns TF32 off in cuBLAS and cuDNN.
pub const NVIDIA_TF32_OVERRIDE: &str = "NVIDIA_TF32_OVERRIDE";

/// What a job sets before any CUDA work.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DeviceSettings {
    pub allow_tf32: bool,
    pub cudnn_benchmark: bool,
}

impl DeviceSettings {
    /// Training: fixed batch shapes, so cuDNN autotuning on. TF32 as `allow_tf32` asks, or as
    /// the environment says ([`ALLOW_TF32_VARIABLE`]).
    pub fn for_training(allow_tf32: bool) -> Self {
        DeviceSettings { allow_tf32: allow_tf32 || tf32_allowed_by_environment(), cudnn_benchmark: true }
    }

    /// Evaluation: batch sizes change as attacks drop finished points, so no autotuning.
    pub fn for_evaluation(allow_tf32: bool) -> Self {
        DeviceSettings { allow_tf32: allow_tf32 || tf32_allowed_by_environment(), cudnn_benchmark: false }
    }

    /// Applies the settings to this process (and the processes it starts). Call it first in
    /// `main`, before any thread or tensor exists: it changes the environment.
    pub fn apply(&self) {
        // Safe here: called at the start of `main`, before the job starts any thread.
        if self.allow_tf32 {
            std::env::set_var(ALLOW_TF32_VARIABLE, "1");
            std::env::remove_var(NVIDIA_TF32_OVERRIDE);
        } else {
            std::env::remove_var(ALLOW_TF32_VARIABLE);
            std::env::set_var(NVIDIA_TF32_OVERRIDE, "0");
        }
        tch::Cuda::cudnn_set_benchmark(self.cudnn_benchmark);
    }

    /// One line for logs and reports: what the job runs with on `device`.
    pub fn describe(&self, device: Device) -> String {
        let device = match device {
            Device::Cuda(index) => format!("cuda:{index}"),
            other => format!("{other:?}").to_lowercase(),
        };
        format!(
            "device {device}, TF32 {}, cuDNN autotuning {}",
            if self.allow_tf32 { "allowed" } else { "off (NVIDIA_TF32_OVERRIDE=0)" },
            if self.cudnn_benchmark { "on" } else { "off" }
        )
    }
}

fn tf32_allowed_by_environment() -> bool {
    std::env::var(ALLOW_TF32_VARIABLE).is_ok_and(|v| v == "1")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn settings_state_what_each_job_runs_with() {
        std::env::remove_var(ALLOW_TF32_VARIABLE);
        let training = DeviceSettings::for_training(false);
        assert_eq!(training, DeviceSettings { allow_tf32: false, cudnn_benchmark: true });
        assert!(!DeviceSettings::for_evaluation(false).cudnn_benchmark);
        assert!(DeviceSettings::for_evaluation(true).allow_tf32);
        assert_eq!(training.describe(Device::Cuda(0)), "device cuda:0, TF32 off (NVIDIA_TF32_OVERRIDE=0), cuDNN autotuning on");
        // Applied on the CPU: the environment says it to worker processes; the cuDNN flag is
        // libtorch's global and harmless here.
        DeviceSettings { allow_tf32: true, cudnn_benchmark: false }.apply();
        assert!(DeviceSettings::for_evaluation(false).allow_tf32, "a worker inherits the allowance");
        assert!(std::env::var(NVIDIA_TF32_OVERRIDE).is_err());
        training.apply();
        assert_eq!(std::env::var(NVIDIA_TF32_OVERRIDE).as_deref(), Ok("0"));
        assert!(!DeviceSettings::for_evaluation(false).allow_tf32);
    }
}

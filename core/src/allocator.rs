//! Process-wide settings of glibc's allocator for libtorch's CPU tensors.
//!
//! By default glibc raises its mmap threshold as large blocks are freed, and returns freed
//! memory at the top of the heap to the kernel. An attack or a training step frees and
//! re-allocates the same activation buffers every iteration, so each iteration then pays
//! page faults to get zeroed pages back: a quarter of PGD-20's CPU time on ResNet-18 at batch
//! 128 went to the kernel, and the attack ran about 10% slower than the same attack from
//! Python. A fixed 32 MiB mmap threshold (glibc's largest) and a 1 GiB trim threshold keep the
//! buffers in the heap between iterations (measured: PGD-20 at batch 128, 3.1 to 4.2 images/s;
//! docs/attacks.md). The cost is up to 1 GiB of freed memory kept by the process.

/// Applies the settings above; call once at the start of a binary. A no-op off glibc.
pub fn keep_freed_memory_for_reuse() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    {
        const MIB: i32 = 1 << 20;
        // SAFETY: mallopt only changes allocator parameters; any values are accepted or refused.
        unsafe {
            libc::mallopt(libc::M_MMAP_THRESHOLD, 32 * MIB);
            libc::mallopt(libc::M_TRIM_THRESHOLD, 1024 * MIB);
        }
    }
}

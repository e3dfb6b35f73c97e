//! Process-wide settings of the C allocator, for programs built on this crate.
//!
//! A training step allocates and frees on the order of 100 MB of activations, spectra and
//! gradients (the anchor's model: 4 layers, H = 64, B = 16, L = 512). glibc's `malloc` serves
//! blocks over its mmap threshold (128 KiB, raised on the fly to at most 32 MiB) with fresh
//! mappings and trims the freed top of its heaps back to the kernel, so every step faults the
//! same memory in again, page by page: about 28 000 page faults and 20–27% of the step's time
//! (`perf stat -e page-faults` on `cargo bench -p s4-bench --bench train`).
//! [`retain_freed_memory`] keeps freed memory in the process for the next step. The `s4` command
//! and the benchmarks call it first thing; a program that uses the library can do the same, or
//! set `GLIBC_TUNABLES=glibc.malloc.mmap_threshold=33554432:glibc.malloc.trim_threshold=2147483647`.

/// Asks the C allocator to keep freed memory for reuse instead of returning it to the kernel:
/// glibc's `mallopt(M_MMAP_THRESHOLD, 32 MiB)` (blocks up to 32 MiB come from the heap, which
/// also fixes the threshold instead of letting it move) and `mallopt(M_TRIM_THRESHOLD, 2 GiB − 1)`
/// (the heap's free top is kept). The resident size then stays at the run's peak. Returns whether
/// the settings took effect: `false` off glibc (musl, macOS, Windows), where nothing changes.
pub fn retain_freed_memory() -> bool {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    {
        // SAFETY: `mallopt` only sets allocator parameters (it takes the allocator's own lock);
        // both values are in the ranges glibc documents (mmap threshold ≤ HEAP_MAX_SIZE / 2).
        let mmap = unsafe { libc::mallopt(libc::M_MMAP_THRESHOLD, 32 << 20) };
        let trim = unsafe { libc::mallopt(libc::M_TRIM_THRESHOLD, i32::MAX) };
        mmap == 1 && trim == 1
    }
    #[cfg(not(all(target_os = "linux", target_env = "gnu")))]
    {
        false
    }
}

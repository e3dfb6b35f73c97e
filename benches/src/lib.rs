//! Shared pieces of the criterion benchmarks (`cargo bench -p s4-bench --bench NAME`): the sizes of
//! the team's performance anchor (`../shared/design/perf-anchor.md`), at which the official
//! PyTorch S4 was timed on this machine kind, and the layer configuration the benchmarks time.
//! A package of its own so that `cargo test` on the library never builds criterion.

use s4::layer::S4LayerConfig;
use s4::ssm::KernelKind;

/// Model width H (channels) of the anchor.
pub const H: usize = 256;
/// State size N of the anchor.
pub const N: usize = 64;

/// An S4 layer of width `d_model` with N = [`N`], initialized as the official defaults for
/// `kernel`: HiPPO-LegS for DPLR, S4D-LegS for the diagonal kernel.
pub fn anchor_layer(kernel: KernelKind, d_model: usize) -> S4LayerConfig {
    let init = if kernel == KernelKind::Dplr { "legs" } else { "diag-legs" };
    S4LayerConfig { d_model, d_state: N, kernel, init: init.parse().expect("a known init"), ..Default::default() }
}

/// The benchmarks' criterion settings, after [`s4::allocator::retain_freed_memory`] (as the `s4`
/// command does first thing: freed activations stay in the process instead of being faulted in
/// again every iteration).
pub fn criterion() -> criterion::Criterion {
    s4::allocator::retain_freed_memory();
    criterion::Criterion::default()
}

//! # s4: structured state-space sequence models in Rust
//!
//! HiPPO operators, their diagonal-plus-low-rank (DPLR) form, discretizations, the S4 and S4D
//! convolution kernels and FFT convolution, S4 layers and deep models, and their training, checked
//! against slow, obvious references, finite differences, and the official PyTorch implementation
//! (state-spaces/s4).
//!
//! ## The pipeline
//!
//! ```text
//! hippo::transition ──► hippo::nplr ──► ssm::SsmParams ──► discretize ──► kernel ──► conv::FftConv
//!   (A, B) HiPPO        A = V(Λ − P̃P̃*)V*   Λ, P, B, C, Δ      Ā, B̄ (ZOH,     K_l = C Ā^l B̄   y = K * u + D u
//!   LegS/LegT/LagT/FouT  (f64, unitary V)  per channel       bilinear, GBT)  (H, L)          (B, H, L)
//! ```
//!
//! 1. [`hippo`]: the continuous-time HiPPO matrices, the rank correction P, the DPLR form by a
//!    Hermitian eigensolve in f64 ([`hippo::nplr`](mod@hippo::nplr)), the S4D diagonal inits ([`hippo::diag`]), and
//!    the memory demo that reads a signal's past back from the state ([`hippo::memory`]).
//! 2. [`ssm`]: per-channel parameters in the conjugate-pair half representation, and the seeded
//!    initialization a layer draws them from.
//! 3. [`discretize`]: Euler (forward, backward), bilinear, GBT(α), zero-order hold; dense and
//!    diagonal.
//! 4. [`kernel`]: the S4 DPLR kernel (C̃, roots of unity, Cauchy sums, Woodbury, exact Nyquist bin,
//!    inverse real FFT, streaming, parallel over channels), the S4D Vandermonde kernel, and the naive
//!    matrix-power reference.
//! 5. [`conv`]: causal and bidirectional FFT convolution with cached plans, and O(L²) references.
//! 6. [`layer`]: the S4 layer (the official `S4Block`) in convolutional mode (lengths, state in and
//!    out) and recurrent mode (an explicit [`layer::State`], O(N) steps), and the import of official
//!    PyTorch state dicts ([`layer::official`]).
//! 7. [`model`]: deep S4 models (encoder, residual blocks with LayerNorm/BatchNorm, pooling, head),
//!    LRA and language-model presets, the streaming LM API, and save/load with bf16/f16 weights
//!    ([`model::checkpoint`]).
//! 8. [`train`]: backward passes for every piece above ([`train::grad`], gradient-checked in f64),
//!    AdamW with the official parameter groups and a cosine schedule ([`train::optim`]), the
//!    training loop with checkpoints and exact resume ([`train::trainer`]), tasks and presets.
//! 9. [`data`]: long-range tasks generated offline (ListOps by the LRA rules, Pathfinder-style
//!    images, the adding problem) and loaders for real files (LRA release, UCR `.ts`, digits,
//!    the Shakespeare corpus).
//! 10. [`transformer`]: a decoder-only transformer in the GPT-2 layout (Hugging Face checkpoints
//!     by name, a truncatable KV cache, one pass over several new positions, backward passes and
//!     a training loop): the verifier of speculative decoding and a baseline; and the transformer
//!     encoder classifier of the Long Range Arena ([`transformer::classifier`]), which
//!     `s4 train --arch transformer` trains on the same tasks as S4.
//! 11. [`speculative`]: speculative decoding with an S4 draft stepping in recurrent mode and a
//!     transformer verifier (greedy, rejection sampling, typical acceptance, adaptive γ), and the
//!     distillation of the draft from the verifier.
//! 12. [`nn`] (GELU, GLU, feature-axis linear), [`io`] (.npz/.npy), [`plot`] (PNG),
//!     [`budget`]: the memory budget every allocation sized by user input is checked against, and
//!     [`allocator`]: keeping freed memory in the process (a fifth of a training step otherwise).
//!
//! ## Shape glossary
//!
//! | letter | meaning |
//! |---|---|
//! | B | batch size |
//! | H | channels (`d_model`): independent SISO SSMs, one per feature |
//! | N | state size (`d_state`); N/2 complex states are kept, one per conjugate pair |
//! | R | rank of the low-rank term P (1 for LegS, LagT, FouT; 2 for LegT) |
//! | L | sequence or kernel length |
//!
//! Sequences are laid out **(B, H, L)** throughout the crate (the official module's default
//! layout): each channel's signal is contiguous. Kernels are (H, L).
//!
//! ## Precision
//!
//! HiPPO and DPLR construction, C̃ and the discretization of dense systems always run in f64.
//! Kernels, convolutions, layers and models are generic over [`scalar::Real`] (f32 or f64); layers
//! and models run in f32 by default, and the tests check f64 against the official f64 outputs.
//! Measured against f64 matrix powers (tests/suite/kernels.rs): the f32 DPLR kernel is within 2e-6
//! relative for N ≤ 64, L ≤ 4096, Δ ∈ [1e-4, 1e-1]; the error grows with N, L and small Δ
//! (the research note measured 4e-5 at N = 256, L = 16384, Δ = 1e-4). C̃ = C(I − Ā^L) matters
//! most when ΔL is small (‖Ā^L‖ ≈ e^{−ΔL/2}): omitting it costs 21% at Δ = 1e-3, L = 1024.
//!
//! ## Quick start
//!
//! ```
//! use ndarray::Array3;
//! use s4::conv::FftConv;
//! use s4::kernel::ssm_kernel;
//! use s4::ssm::SsmInitConfig;
//!
//! // 4 channels of S4 (HiPPO-LegS, N = 64), Δ log-uniform in [1e-3, 1e-1]
//! let params = SsmInitConfig { d_state: 64, channels: 4, seed: 0, ..Default::default() }.draw()?;
//! let k = ssm_kernel::<f32>(&params, 1000, None)?; // (H, L) = (4, 1000)
//! let u = Array3::<f32>::ones((2, 4, 1000)); // (B, H, L)
//! let y = FftConv::new().causal(u.view(), k.view(), None)?;
//! assert_eq!(y.dim(), (2, 4, 1000));
//! # Ok::<(), s4::Error>(())
//! ```
//!
//! ## Errors
//!
//! Every public function that takes user input returns [`Result`]; the [`Error`] message names the
//! value and what was expected (e.g. `invalid dt = -1: expected a finite step size > 0`).

pub mod allocator;
pub mod budget;
pub mod conv;
pub mod data;
pub mod discretize;
pub mod error;
pub mod hippo;
pub mod io;
pub mod kernel;
pub mod layer;
pub mod model;
pub mod nn;
pub mod plot;
pub mod scalar;
pub mod speculative;
pub mod ssm;
pub mod train;
pub mod transformer;

pub use error::{Error, Result};

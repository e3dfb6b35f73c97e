//! Recurrent (step) mode of the S4 layer: the same weights as the convolution, advanced one input
//! at a time on an explicit state owned by the caller.
//!
//! * **S4D**: x ← Ā ⊙ x + B̄ u with Ā, B̄ from [`discretize_mode`], O(N) per channel.
//! * **S4 (DPLR)**: the bilinear step x' = (I − Δ/2·A)⁻¹ ((I + Δ/2·A) x + Δ B u) with
//!   A = Λ − P Q* (Q = P) applied in O(N·R) per channel from the DPLR structure (S4 paper,
//!   appendix C.2), never as a dense N × N matrix. On the half state (conjugate pairs), the low-rank
//!   coupling P_f* x_f = 2·Re(P* x) is real, so with D = (1 − Δ/2·Λ)⁻¹ and
//!   M = 2·Re(P* D P) (R × R, real):
//!
//!   v = (1 + Δ/2·Λ) ⊙ x − Δ/2 · P s(x) + Δ B u,  s(x) = 2·Re(P* x)
//!   s' = (I + Δ/2·M)⁻¹ · 2·Re(P* D v),  x' = D ⊙ (v − Δ/2 · P s').
//!
//!   The step folds the two passes this suggests into one read and one write of x: t = 2·Re(P* D v)
//!   is linear in x, t = 2·Re((D (1 + Δ/2·Λ) P)* x) + u·2·Re(P* D Δ B) − Δ/2·M s, so the R dots
//!   s and the R dots of t come from one pass over x, then (with Ā_Λ = D (1 + Δ/2·Λ) the bilinear
//!   diagonal part and B̄_Λ = D Δ B)
//!
//!   x' = Ā_Λ ⊙ x + B̄_Λ u − Δ/2 · (D P)(s + s').
//!
//!   The output needs the plain C, recovered from the trained C̃ as C = C̃ (I − Ā^L)⁻¹
//!   ([`recover_c`]).
//!
//! Outputs: y_c = 2·Re(C_c x) + D_c u per head, then GELU, the output linear and GLU, exactly as in
//! convolutional mode. The state is the kept half of each conjugate pair, shape (B, H, N/2),
//! shared by the heads.
//!
//! # Example
//!
//! Stepping through a sequence gives the convolutional output, for both kernels:
//!
//! ```
//! use ndarray::{s, Array2, Array3};
//! use s4::layer::S4LayerConfig;
//! use s4::ssm::KernelKind;
//!
//! for kernel in [KernelKind::Dplr, KernelKind::Diag] {
//!     let mut layer = S4LayerConfig { d_model: 3, d_state: 8, kernel, ..Default::default() }.build_as::<f64>()?;
//!     layer.set_kernel_length(64)?; // C̃ = C(I − Ā^64), as after the official first forward
//!     let u = Array3::from_shape_fn((2, 3, 64), |(b, h, t)| ((b + 2 * h + 3 * t) as f64 * 0.37).sin());
//!     let conv = layer.forward(u.view(), &Default::default())?.y; // (B, H, L)
//!
//!     let rec = layer.recurrent()?;
//!     let mut state = rec.zero_state(2); // (B, H, N/2) = (2, 3, 4)
//!     assert_eq!(state.x.dim(), (2, 3, 4));
//!     let mut snapshot = None;
//!     for t in 0..64 {
//!         if t == 40 {
//!             snapshot = Some(state.clone()); // a state is a plain value
//!         }
//!         let y_t: Array2<f64> = rec.step(&mut state, u.slice(s![.., .., t]))?; // (B, H)
//!         assert!((&y_t - &conv.slice(s![.., .., t])).iter().all(|e| e.abs() < 1e-9));
//!     }
//!     // restoring the snapshot replays the same outputs
//!     let mut again = snapshot.unwrap();
//!     let y40 = rec.step(&mut again, u.slice(s![.., .., 40]))?;
//!     assert!((&y40 - &conv.slice(s![.., .., 40])).iter().all(|e| e.abs() < 1e-9));
//!     // inputs of the wrong width are refused
//!     assert!(rec.step(&mut again, Array2::zeros((2, 4)).view()).is_err());
//! }
//! # Ok::<(), s4::Error>(())
//! ```

use super::S4Layer;
use crate::discretize::discretize_mode;
use crate::error::{Error, Result};
use crate::kernel::recover_c;
use crate::nn::linear::{packed_linear_into, PackedMatrix};
use crate::nn::simd::{all_finite, as_f32, as_f32_mut, dot_body, madd, simd_dispatch, SimdLevel};
use crate::nn::{gelu_in_place, glu_in_place};
use crate::scalar::{HalfPrecision, Real};
use crate::ssm::{KernelKind, SsmParams};
use ndarray::{Array2, Array3, ArrayView2, ArrayView3};
use num_complex::{Complex, Complex64};
use rayon::prelude::*;

/// Ranks up to this keep the step's low-rank scratch on the stack.
const MAX_FAST_RANK: usize = 4;
/// Steps over at least this many state values (B·H·N/2 complex numbers) split their sequences
/// across threads: from B = 16 at H = 256, N = 64. Below it a thread's wake-up (10–20 µs on a
/// shared 2-core host) costs more than half the work saves: the demo draft (H = 128) took 217 µs
/// for B = 8 split against 74 µs for B = 4 whole.
const PARALLEL_MIN_STATE: usize = 1 << 17;

/// The recurrent state of one layer: (B, H, N/2) complex, the kept half of each conjugate pair.
///
/// A plain value: `clone()` is a snapshot, assignment is a restore; `clone_from` copies into the
/// existing buffer.
#[derive(Debug, PartialEq)]
pub struct State<T> {
    /// (B, H, N/2).
    pub x: Array3<Complex<T>>,
}

impl<T: Clone> Clone for State<T> {
    fn clone(&self) -> Self {
        State { x: self.x.clone() }
    }
    fn clone_from(&mut self, source: &Self) {
        self.x.clone_from(&source.x);
    }
}

impl<T: Real> State<T> {
    /// The zero state for `batch` sequences: (B, H, N/2) = (`batch`, `d_model`, `half_state`).
    pub fn zeros(batch: usize, d_model: usize, half_state: usize) -> Self {
        State { x: Array3::from_elem((batch, d_model, half_state), Complex::new(T::zero(), T::zero())) }
    }

    /// Batch size.
    pub fn batch(&self) -> usize {
        self.x.shape()[0]
    }
}

/// Complex values as their interleaved (re, im) parts.
fn reals<T: Real>(x: &[Complex<T>]) -> &[T] {
    // SAFETY: as in `reals_mut`.
    unsafe { std::slice::from_raw_parts(x.as_ptr().cast::<T>(), 2 * x.len()) }
}

fn reals_mut<T: Real>(x: &mut [Complex<T>]) -> &mut [T] {
    // SAFETY: `Complex<T>` is `#[repr(C)]` { re, im }, so n complex values are 2n values of T.
    unsafe { std::slice::from_raw_parts_mut(x.as_mut_ptr().cast::<T>(), 2 * x.len()) }
}

fn push_complex<T: Real>(v: &mut Vec<T>, z: Complex64) {
    v.extend([T::of(z.re), T::of(z.im)]);
}

/// Per-channel discrete dynamics as interleaved (re, im) reals, channel-major so that channel i's
/// values are the contiguous run [i·2M, (i + 1)·2M) (or its R runs for the low-rank vectors).
/// Only what cannot be derived in registers is stored: a step streams these arrays, the state and
/// the output weights once, and at batch 1 its time is their size over the cache bandwidth.
#[derive(Clone, Debug)]
pub(crate) enum Dynamics<T> {
    Diag {
        /// Ā.
        a_bar: Vec<T>,
        /// B̄.
        b_bar: Vec<T>,
    },
    Dplr {
        /// Ā_Λ = D ⊙ (1 + Δ/2·Λ) with D = (1 − Δ/2·Λ)⁻¹.
        a_bar: Vec<T>,
        /// B̄_Λ = D ⊙ Δ·B.
        b_bar: Vec<T>,
        /// 2·P, run k of channel i at (i·R + k)·2M: the dot with x is s = 2·Re(P* x).
        p2: Vec<T>,
        /// 2·P ⊙ conj(Ā_Λ) (runs as `p2`): the dot with x is 2·Re(P* D (1 + Δ/2·Λ) x).
        pa: Vec<T>,
        /// Δ/4 · D ⊙ 2·P (runs as `p2`): x' = … − Σ_k (s_k + s'_k) · pd_k.
        pd: Vec<T>,
        /// 2·Re(P_k* D Δ B), [i·R + k]: the input's part of t.
        pb: Vec<T>,
        /// Δ/2·M with M = 2·Re(P* D P), [i·R² + a·R + b]: the part of t from s.
        half_m: Vec<T>,
        /// (I + Δ/2·M)⁻¹, [i·R² + a·R + b].
        s_inv: Vec<T>,
        /// Rank R.
        rank: usize,
    },
}

impl<T: Real> Dynamics<T> {
    /// Discretizes the layer's SSMs (`params`, in f64) and stores the step's tables as `T`. The
    /// state dynamics depend on the channel only: the rows of head 0 are used.
    ///
    /// # Errors
    /// A bidirectional layer (it has no recurrent state), or I + Δ/2·M singular for a channel
    /// (DPLR).
    fn new(layer: &S4Layer<T>, params: &SsmParams<f64>) -> Result<Self> {
        let cfg = layer.config();
        if cfg.bidirectional {
            return Err(Error::invalid("bidirectional", true, "a causal layer for recurrent mode"));
        }
        let (h, m) = (cfg.d_model, cfg.d_state / 2);
        let disc = cfg.discretization();
        Ok(match cfg.kernel {
            KernelKind::Diag => {
                let (mut a_bar, mut b_bar) = (Vec::with_capacity(2 * h * m), Vec::with_capacity(2 * h * m));
                for i in 0..h {
                    for j in 0..m {
                        let (a, f) = discretize_mode(params.lambda[[i, j]], params.dt[i], disc);
                        push_complex(&mut a_bar, a);
                        push_complex(&mut b_bar, f * params.b[[i, j]]);
                    }
                }
                Dynamics::Diag { a_bar, b_bar }
            }
            KernelKind::Dplr => {
                let p = params.p.as_ref().expect("DPLR has P");
                let r = p.shape()[0];
                let (mut a_bar, mut b_bar, mut p2, mut pa, mut pd) = (vec![], vec![], vec![], vec![], vec![]);
                let (mut pb, mut half_m, mut s_inv) = (vec![], vec![], vec![]);
                for i in 0..h {
                    let half = params.dt[i] / 2.0;
                    let lam = |j: usize| params.lambda[[i, j]];
                    let di: Vec<Complex64> = (0..m).map(|j| 1.0 / (1.0 - lam(j) * half)).collect();
                    let a_i: Vec<Complex64> = (0..m).map(|j| di[j] * (1.0 + lam(j) * half)).collect();
                    let bd: Vec<Complex64> = (0..m).map(|j| params.b[[i, j]] * params.dt[i]).collect();
                    for j in 0..m {
                        push_complex(&mut a_bar, a_i[j]);
                        push_complex(&mut b_bar, di[j] * bd[j]);
                    }
                    let pk = |k: usize, j: usize| p[[k, i, j]];
                    for k in 0..r {
                        for j in 0..m {
                            push_complex(&mut p2, 2.0 * pk(k, j));
                            push_complex(&mut pa, 2.0 * pk(k, j) * a_i[j].conj());
                            push_complex(&mut pd, half / 2.0 * di[j] * 2.0 * pk(k, j));
                        }
                        let s: Complex64 = (0..m).map(|j| pk(k, j).conj() * di[j] * bd[j]).sum();
                        pb.push(T::of(2.0 * s.re));
                    }
                    // I + Δ/2·M, M = 2·Re(P* D P)
                    let mut mat = nalgebra::DMatrix::<f64>::identity(r, r);
                    for a in 0..r {
                        for b in 0..r {
                            let s: Complex64 = (0..m).map(|j| pk(a, j).conj() * di[j] * pk(b, j)).sum();
                            mat[(a, b)] += half * 2.0 * s.re;
                            half_m.push(T::of(half * 2.0 * s.re));
                        }
                    }
                    let inv = mat.try_inverse().ok_or_else(|| {
                        Error::numerical("recurrent setup", format!("I + Δ/2·M is singular for channel {i}"))
                    })?;
                    for a in 0..r {
                        for b in 0..r {
                            s_inv.push(T::of(inv[(a, b)]));
                        }
                    }
                }
                Dynamics::Dplr { a_bar, b_bar, p2, pa, pd, pb, half_m, s_inv, rank: r }
            }
        })
    }
}

/// A layer set up for stepping (discretized once, C recovered from C̃).
#[derive(Clone, Debug)]
pub struct Recurrent<T> {
    dynamics: Dynamics<T>,
    /// 2·conj(C) interleaved, run (c·H + i)·2M: the dot with x is 2·Re(C_c x).
    c2: Vec<T>,
    /// D (channels, H).
    d: Array2<T>,
    /// Output linear Wᵀ (channels·H, 2H), packed for few-row products (in f32 or 16 bits).
    w: PackedMatrix<T>,
    bias: ndarray::Array1<T>,
    h: usize,
    m: usize,
    channels: usize,
}

/// The intermediate values of a recurrent step (the SSM's pre-activations, the output linear's
/// 2H values per sequence), kept between steps by a caller that steps many times so that a
/// step allocates nothing.
#[derive(Clone, Debug, Default)]
pub struct StepBuffers<T> {
    pre: Vec<T>,
    z: Vec<T>,
}

/// x ← a ⊙ x + b·u (complex, interleaved). Index loops over slices cut to x's length: zipped
/// chunk iterators stayed out-of-line calls per element inside the dispatched functions.
#[inline(always)]
fn scale_add<T: Real, const FMA: bool>(x: &mut [T], a: &[T], b: &[T], u: T) {
    let madd = madd::<T, FMA>;
    let n = x.len() / 2;
    let (x, a, b) = (&mut x[..2 * n], &a[..2 * n], &b[..2 * n]);
    for j in 0..n {
        let (re, im) = (x[2 * j], x[2 * j + 1]);
        let (ar, ai) = (a[2 * j], a[2 * j + 1]);
        let (br, bi) = (b[2 * j] * u, b[2 * j + 1] * u);
        x[2 * j] = madd(ar, re, madd(-ai, im, br));
        x[2 * j + 1] = madd(ar, im, madd(ai, re, bi));
    }
}

/// x ← x − s·v.
#[inline(always)]
fn sub_scaled<T: Real, const FMA: bool>(x: &mut [T], s: T, v: &[T]) {
    let n = x.len();
    let v = &v[..n];
    for j in 0..n {
        x[j] = madd::<T, FMA>(-s, v[j], x[j]);
    }
}

/// The low-rank scalars of one DPLR step of channel i (module docs): from the dots s_k = 2·Re(P_k* x)
/// and a_k = 2·Re((Ā_Λ P_k)* x) and the input u, t = a + u·pb − Δ/2·M s and s' = (I + Δ/2·M)⁻¹ t;
/// returns s + s' in `s` (`a` is scratch).
#[inline(always)]
fn low_rank_coefficients<T: Real, const FMA: bool>(
    pb: &[T],
    half_m: &[T],
    s_inv: &[T],
    i: usize,
    u: T,
    s: &mut [T],
    a: &mut [T],
) {
    let r = s.len();
    let madd = madd::<T, FMA>;
    let (hm, si) = (&half_m[i * r * r..][..r * r], &s_inv[i * r * r..][..r * r]);
    for k in 0..r {
        a[k] = (0..r).fold(madd(u, pb[i * r + k], a[k]), |acc, b| madd(-hm[k * r + b], s[b], acc));
    }
    for k in 0..r {
        s[k] = (0..r).fold(s[k], |acc, b| madd(si[k * r + b], a[b], acc));
    }
}

/// Advances channel i's half state x (2M interleaved reals) by one input u (module docs):
/// s = 2·Re(P* x), t = 2·Re((Ā_Λ P)* x) + u·2·Re(P* D Δ B) − Δ/2·M s, s' = (I + Δ/2·M)⁻¹ t,
/// x' = Ā_Λ ⊙ x + B̄_Λ u − Σ_k (s_k + s'_k)·(Δ/4 · D ⊙ 2P_k).
#[inline(always)]
fn advance_body<T: Real, const FMA: bool>(dynamics: &Dynamics<T>, i: usize, x: &mut [T], u: T) {
    let m2 = x.len();
    fn part<T>(v: &[T], start: usize, len: usize) -> &[T] {
        &v[start..][..len]
    }
    let run = |v| part(v, i * m2, m2);
    match dynamics {
        Dynamics::Diag { a_bar, b_bar } => scale_add::<T, FMA>(x, run(a_bar), run(b_bar), u),
        Dynamics::Dplr { a_bar, b_bar, p2, pa, pd, pb, half_m, s_inv, rank } => {
            let r = *rank;
            let low = |v, k: usize| part(v, (i * r + k) * m2, m2);
            let mut fast = [T::zero(); 2 * MAX_FAST_RANK];
            let mut heap = Vec::new();
            let st: &mut [T] = if r <= MAX_FAST_RANK {
                &mut fast[..2 * r]
            } else {
                heap.resize(2 * r, T::zero());
                &mut heap
            };
            let (s, a) = st.split_at_mut(r);
            for k in 0..r {
                s[k] = dot_body::<T, FMA>(low(p2, k), x);
                a[k] = dot_body::<T, FMA>(low(pa, k), x);
            }
            low_rank_coefficients::<T, FMA>(pb, half_m, s_inv, i, u, s, a);
            scale_add::<T, FMA>(x, run(a_bar), run(b_bar), u);
            for k in 0..r {
                sub_scaled::<T, FMA>(x, s[k], low(pd, k));
            }
        }
    }
}

/// Advances channel i's half state x by the inputs u₀, u₁, … in turn ([`advance_body`] each).
#[inline(always)]
fn advance_run_body<T: Real, const FMA: bool>(dynamics: &Dynamics<T>, i: usize, x: &mut [T], inputs: &[T]) {
    for &u in inputs {
        advance_body::<T, FMA>(dynamics, i, x, u);
    }
}

/// One step of the SSM part for the H channels of one sequence: advances its state xs (H·2M
/// interleaved reals) by u (H,) and writes the pre-activations pre[c·H + i] = 2·Re(C_c x_i) + D_c,i·u_i.
#[inline(always)]
fn ssm_step_body<T: Real, const FMA: bool>(
    rec: &Recurrent<T>,
    u: &[T],
    src: Option<&[T]>,
    xs: &mut [T],
    pre: &mut [T],
) -> bool {
    let (h, m2) = (rec.h, 2 * rec.m);
    if let Some(src) = src {
        if !all_finite(src) {
            return false;
        }
        xs.copy_from_slice(src);
    }
    for (i, x) in xs.chunks_exact_mut(m2).enumerate() {
        advance_body::<T, FMA>(&rec.dynamics, i, x, u[i]);
        for c in 0..rec.channels {
            let row = c * h + i;
            pre[row] = madd::<T, FMA>(rec.d[[c, i]], u[i], dot_body::<T, FMA>(&rec.c2[row * m2..][..m2], x));
        }
    }
    true
}

simd_dispatch! {
    /// [`ssm_step_body`] compiled for the widest vectors the CPU has.
    fn ssm_step_generic(rec: &Recurrent<T>, u: &[T], src: Option<&[T]>, xs: &mut [T], pre: &mut [T]) -> bool = ssm_step_body
}

/// [`ssm_step_body`] with the widest vectors [`SimdLevel::current`] allows: in f32 with AVX-512
/// ([`ssm_step_avx512`]) when M is a multiple of 8, with AVX2 + FMA ([`ssm_step_avx2`]) when it is
/// a multiple of 4, the rank at most [`MAX_FAST_RANK`]; otherwise generically. The state advances
/// from `src` into `xs` when `src` is given (the same length; `src` is left as it was), else in
/// place. Returns false if `src` holds a value that is not finite (then `xs` and `pre` are
/// unspecified); an in-place state is not checked.
#[must_use]
fn ssm_step<T: Real>(rec: &Recurrent<T>, u: &[T], src: Option<&[T]>, xs: &mut [T], pre: &mut [T]) -> bool {
    #[cfg(target_arch = "x86_64")]
    if SimdLevel::current() >= SimdLevel::Avx2Fma
        && rec.m.is_multiple_of(4)
        && rec.rank() <= MAX_FAST_RANK
        && src.is_none_or(|s| s.len() == xs.len())
        && let (Some(rec32), Some(u), Some(xs), Some(pre)) =
            ((rec as &dyn std::any::Any).downcast_ref::<Recurrent<f32>>(), as_f32(u), as_f32_mut(xs), as_f32_mut(pre))
    {
        let src = src.map(|s| as_f32(s).expect("the same type as xs"));
        if SimdLevel::current() >= SimdLevel::Avx512 && rec.m.is_multiple_of(8) {
            // SAFETY: the CPU supports AVX-512F (`current` never exceeds it); M, R and the
            // source's length checked above.
            return unsafe { ssm_step_avx512(rec32, u, src, xs, pre) };
        }
        // SAFETY: the CPU supports AVX2 and FMA (`current` never exceeds it); M, R and the
        // source's length checked above.
        return unsafe { ssm_step_avx2(rec32, u, src, xs, pre) };
    }
    ssm_step_generic(rec, u, src, xs, pre)
}

/// Defines an f32 SSM step kernel (see [`ssm_step_avx2`]) for one vector width: `$w` floats per
/// register and the intrinsics of that width, so the AVX2 and AVX-512 kernels are one body.
macro_rules! ssm_step_kernel {
    (
        $(#[$doc:meta])* $name:ident, $features:literal, $w:literal, $v:ty,
        load: $load:ident, store: $store:ident, zero: $zero:ident, set1: $set1:ident, add: $add:ident,
        mul: $mul:ident, fmadd: $fmadd:ident, fnmadd: $fnmadd:ident, fmaddsub: $fmaddsub:ident,
        ldup: $ldup:ident, hdup: $hdup:ident, swap: $swap:expr, hsum: $hsum:expr, hsums: $hsums:expr
    ) => {
        $(#[$doc])*
        #[cfg(target_arch = "x86_64")]
        #[target_feature(enable = $features)]
        unsafe fn $name(rec: &Recurrent<f32>, u: &[f32], src: Option<&[f32]>, xs: &mut [f32], pre: &mut [f32]) -> bool {
            use std::arch::x86_64::*;
            let (h, m2, ch) = (rec.h, 2 * rec.m, rec.channels);
            assert!(m2 % $w == 0 && u.len() == h && xs.len() == h * m2 && pre.len() == ch * h);
            assert!(src.is_none_or(|s| s.len() == xs.len()));
            // the state is read from `input` and written to `output` (the same buffer in place)
            let output = xs.as_mut_ptr();
            let input = src.map_or(output.cast_const(), <[f32]>::as_ptr);
            let lanes = m2 / $w;
            // SAFETY (all blocks below): every pointer offset stays inside a run of 2M values that the
            // assertion above and the layout of `Recurrent` guarantee.
            /// The lanes of Σ_l a[l]·x[l] over the run's registers: their sum is the dot product.
            #[inline(always)]
            unsafe fn products(a: *const f32, x: *const f32, lanes: usize) -> $v {
                unsafe {
                    let (mut s0, mut s1) = ($zero(), $zero());
                    let mut l = 0;
                    while l + 2 <= lanes {
                        s0 = $fmadd($load(a.add($w * l)), $load(x.add($w * l)), s0);
                        s1 = $fmadd($load(a.add($w * l + $w)), $load(x.add($w * l + $w)), s1);
                        l += 2;
                    }
                    if l < lanes {
                        s0 = $fmadd($load(a.add($w * l)), $load(x.add($w * l)), s0);
                    }
                    $add(s0, s1)
                }
            }
            /// Σ over the run of a[l]·x[l].
            #[inline(always)]
            unsafe fn dot(a: *const f32, x: *const f32, lanes: usize) -> f32 {
                unsafe { ($hsum)(products(a, x, lanes)) }
            }
            /// a ⊙ x for a register of complex values, plus `acc`.
            #[inline(always)]
            unsafe fn cmul_add(a: $v, x: $v, acc: $v) -> $v {
                unsafe {
                    let im_x = $mul($hdup(a), ($swap)(x));
                    // (Re a·Re x − Im a·Im x, Re a·Im x + Im a·Re x) = fmaddsub(Re a, x, swap term)
                    $add($fmaddsub($ldup(a), x, im_x), acc)
                }
            }
            /// y = a ⊙ x + b·u − Σ_k c_k·v_k over the run (y may be x), with `low` = (v₀, the
            /// distance between the runs v_k, the coefficients c_k); `poison` += 0·x, which turns
            /// NaN once x holds a value that is not finite.
            #[inline(always)]
            #[allow(clippy::too_many_arguments)]
            unsafe fn update(
                x: *const f32,
                out: *mut f32,
                a: *const f32,
                b: *const f32,
                u: f32,
                low: (*const f32, usize, &[f32]),
                lanes: usize,
                poison: &mut $v,
            ) {
                unsafe {
                    let uv = $set1(u);
                    for l in 0..lanes {
                        let xv = $load(x.add($w * l));
                        *poison = $fmadd(xv, $zero(), *poison);
                        let mut y = cmul_add($load(a.add($w * l)), xv, $mul($load(b.add($w * l)), uv));
                        let (v, stride, c) = low;
                        for (k, &ck) in c.iter().enumerate() {
                            y = $fnmadd($set1(ck), $load(v.add(k * stride + $w * l)), y);
                        }
                        $store(out.add($w * l), y);
                    }
                }
            }
            unsafe {
                let mut poison = $zero();
                let d = rec.d.as_slice().expect("D in standard layout");
                // channels in groups of $w: the states advance, then each output row's $w dot
                // products are summed across in one transposed reduction (`hsums`), where a
                // horizontal sum per channel cost more than the channel's update at M = 8
                let mut sums = [[0.0f32; $w]; $w];
                for i0 in (0..h).step_by($w) {
                    let group = $w.min(h - i0);
                    for i in i0..i0 + group {
                        let off = i * m2;
                        let (x, out) = (input.add(off), output.add(off));
                        let ui = u[i];
                        match &rec.dynamics {
                            Dynamics::Diag { a_bar, b_bar } => {
                                let (a, b) = (a_bar.as_ptr().add(off), b_bar.as_ptr().add(off));
                                update(x, out, a, b, ui, (std::ptr::null(), 0, &[]), lanes, &mut poison);
                            }
                            Dynamics::Dplr { a_bar, b_bar, p2, pa, pd, pb, half_m, s_inv, rank } => {
                                let r = *rank;
                                let low = |v: &[f32], k: usize| v.as_ptr().add((i * r + k) * m2);
                                let (mut s, mut t) = ([0.0f32; MAX_FAST_RANK], [0.0f32; MAX_FAST_RANK]);
                                for k in 0..r {
                                    s[k] = dot(low(p2, k), x, lanes);
                                    t[k] = dot(low(pa, k), x, lanes);
                                }
                                low_rank_coefficients::<f32, true>(pb, half_m, s_inv, i, ui, &mut s[..r], &mut t[..r]);
                                let (a, b) = (a_bar.as_ptr().add(off), b_bar.as_ptr().add(off));
                                update(x, out, a, b, ui, (low(pd, 0), m2, &s[..r]), lanes, &mut poison);
                            }
                        }
                    }
                    // pre[c·H + i] = D_c,i·u_i + 2·Re(C_c x_i), $w channels at a time
                    for c in 0..ch {
                        for (j, row) in sums.iter_mut().enumerate() {
                            let v = if j < group {
                                let i = i0 + j;
                                products(rec.c2.as_ptr().add((c * h + i) * m2), output.add(i * m2), lanes)
                            } else {
                                $zero()
                            };
                            $store(row.as_mut_ptr(), v);
                        }
                        let dots = ($hsums)(sums.as_ptr().cast::<f32>());
                        let row = c * h + i0;
                        if group == $w {
                            let y = $fmadd($load(d.as_ptr().add(row)), $load(u.as_ptr().add(i0)), dots);
                            $store(pre.as_mut_ptr().add(row), y);
                        } else {
                            let mut tail = [0.0f32; $w];
                            $store(tail.as_mut_ptr(), dots);
                            for j in 0..group {
                                pre[row + j] = d[row + j].mul_add(u[i0 + j], tail[j]);
                            }
                        }
                    }
                }
                ($hsum)(poison) == 0.0
            }
        }
    };
}

ssm_step_kernel! {
    /// [`ssm_step_body`] for f32 with AVX2 + FMA intrinsics: four complex values per register; a
    /// complex product a ⊙ x is (Re a, Re a)·x ± (Im a, Im a)·swap(x), with the duplicated parts and
    /// the pair swap made by one shuffle each (`vmovsldup`, `vmovshdup`, `vpermilps`) and the sign by
    /// `vfmaddsub`; the dots 2·Re(·) are plain multiply–adds over the interleaved parts, the
    /// lanes of 8 channels' dots summed in one transposed reduction (15 shuffles and 7 additions
    /// where 8 horizontal sums take 48 operations).
    ///
    /// # Safety
    /// The CPU must support AVX2 and FMA; M a multiple of 4, rank ≤ [`MAX_FAST_RANK`]; `u` (H,),
    /// `xs` (H·2M), `pre` (channels·H).
    ssm_step_avx2, "avx2,fma", 8, __m256,
    load: _mm256_loadu_ps, store: _mm256_storeu_ps, zero: _mm256_setzero_ps, set1: _mm256_set1_ps,
    add: _mm256_add_ps, mul: _mm256_mul_ps, fmadd: _mm256_fmadd_ps, fnmadd: _mm256_fnmadd_ps,
    fmaddsub: _mm256_fmaddsub_ps, ldup: _mm256_moveldup_ps, hdup: _mm256_movehdup_ps,
    swap: |x| _mm256_permute_ps::<0b1011_0001>(x),
    hsum: |v: __m256| {
        let s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps::<1>(v));
        let s = _mm_add_ps(s, _mm_movehl_ps(s, s));
        _mm_cvtss_f32(_mm_add_ss(s, _mm_movehdup_ps(s)))
    },
    // the sums of 8 registers (row j at p + 8j) in one: halves, then pairs, then neighbours;
    // lane 4L + e ends up holding register 2e + L, which the last permutation puts in place
    hsums: |p: *const f32| {
        let v = |j: usize| _mm256_loadu_ps(p.add(8 * j));
        let halves = |j: usize| {
            let (a, b) = (v(2 * j), v(2 * j + 1));
            _mm256_add_ps(_mm256_permute2f128_ps::<0x20>(a, b), _mm256_permute2f128_ps::<0x31>(a, b))
        };
        let pairs = |u: __m256, w: __m256| {
            _mm256_add_ps(_mm256_shuffle_ps::<0b01_00_01_00>(u, w), _mm256_shuffle_ps::<0b11_10_11_10>(u, w))
        };
        let (x, y) = (pairs(halves(0), halves(1)), pairs(halves(2), halves(3)));
        let s = _mm256_add_ps(_mm256_shuffle_ps::<0b10_00_10_00>(x, y), _mm256_shuffle_ps::<0b11_01_11_01>(x, y));
        _mm256_permutevar8x32_ps(s, _mm256_setr_epi32(0, 4, 1, 5, 2, 6, 3, 7))
    }
}

ssm_step_kernel! {
    /// [`ssm_step_avx2`] with AVX-512F: eight complex values per register (M a multiple of 8).
    ///
    /// # Safety
    /// The CPU must support AVX-512F; M a multiple of 8, rank ≤ [`MAX_FAST_RANK`]; `u` (H,),
    /// `xs` (H·2M), `pre` (channels·H).
    ssm_step_avx512, "avx512f", 16, __m512,
    load: _mm512_loadu_ps, store: _mm512_storeu_ps, zero: _mm512_setzero_ps, set1: _mm512_set1_ps,
    add: _mm512_add_ps, mul: _mm512_mul_ps, fmadd: _mm512_fmadd_ps, fnmadd: _mm512_fnmadd_ps,
    fmaddsub: _mm512_fmaddsub_ps, ldup: _mm512_moveldup_ps, hdup: _mm512_movehdup_ps,
    swap: |x| _mm512_permute_ps::<0b1011_0001>(x),
    hsum: |v: __m512| _mm512_reduce_add_ps(v),
    // the sums of 16 registers (row j at p + 16j) in one: 128-bit quarters, then quarter pairs,
    // then pairs, then neighbours; lane 4q + e ends up holding register 4e + q, which the last
    // permutation puts in place
    hsums: |p: *const f32| {
        let v = |j: usize| _mm512_loadu_ps(p.add(16 * j));
        let quarters = |j: usize| {
            let (a, b) = (v(2 * j), v(2 * j + 1));
            _mm512_add_ps(_mm512_shuffle_f32x4::<0b01_00_01_00>(a, b), _mm512_shuffle_f32x4::<0b11_10_11_10>(a, b))
        };
        let halves = |j: usize| {
            let (s, t) = (quarters(2 * j), quarters(2 * j + 1));
            _mm512_add_ps(_mm512_shuffle_f32x4::<0b10_00_10_00>(s, t), _mm512_shuffle_f32x4::<0b11_01_11_01>(s, t))
        };
        let pairs = |u: __m512, w: __m512| {
            _mm512_add_ps(_mm512_shuffle_ps::<0b01_00_01_00>(u, w), _mm512_shuffle_ps::<0b11_10_11_10>(u, w))
        };
        let (x, y) = (pairs(halves(0), halves(1)), pairs(halves(2), halves(3)));
        let s = _mm512_add_ps(_mm512_shuffle_ps::<0b10_00_10_00>(x, y), _mm512_shuffle_ps::<0b11_01_11_01>(x, y));
        _mm512_permutexvar_ps(_mm512_setr_epi32(0, 4, 8, 12, 1, 5, 9, 13, 2, 6, 10, 14, 3, 7, 11, 15), s)
    }
}

simd_dispatch! {
    /// [`advance_run_body`] with the widest vectors the CPU has: one call per channel and sequence.
    fn advance_run(dynamics: &Dynamics<T>, i: usize, x: &mut [T], inputs: &[T]) -> () = advance_run_body
}

impl<T: Real> Recurrent<T> {
    /// Discretizes the layer's SSMs (in f64, then stored as `T`) and recovers C from C̃.
    ///
    /// # Errors
    /// A bidirectional layer, or I − Ā^L singular in the C̃ recovery (Re Λ ≈ 0 with small ΔL).
    pub fn new(layer: &S4Layer<T>) -> Result<Self> {
        Self::with_weights(layer, None)
    }

    /// [`Recurrent::new`] with the output linear, the step's largest weight, packed in a 16-bit
    /// format (`Some`; half the bytes, widened to f32 as the kernel loads them, f32 arithmetic):
    /// the step then equals the f32 step of the layer whose output linear was rounded to that
    /// format ([`S4Layer::with_half_weights`] rounds it, and C and D, the same way).
    ///
    /// # Errors
    /// As [`Recurrent::new`].
    pub fn with_weights(layer: &S4Layer<T>, weights: Option<HalfPrecision>) -> Result<Self> {
        let cfg = layer.config();
        let params = layer.ssm_params()?.cast::<f64>();
        let dynamics = Dynamics::new(layer, &params)?;
        let (h, m, ch) = (cfg.d_model, cfg.d_state / 2, cfg.channels);
        let c_plain = match (cfg.kernel, layer.weights().l_kernel) {
            (KernelKind::Dplr, l) if l > 0 => recover_c(&params, l)?,
            _ => params.c.clone(),
        };
        let mut c2 = Vec::with_capacity(2 * c_plain.len());
        for &z in c_plain.iter() {
            push_complex(&mut c2, 2.0 * z.conj());
        }
        let w = layer.weights();
        Ok(Recurrent {
            dynamics,
            c2,
            d: w.d.clone(),
            w: PackedMatrix::with_precision(w.w.t(), weights),
            bias: w.bias.clone(),
            h,
            m,
            channels: ch,
        })
    }

    /// The rank R of the low-rank term (0 for S4D).
    fn rank(&self) -> usize {
        match &self.dynamics {
            Dynamics::Diag { .. } => 0,
            Dynamics::Dplr { rank, .. } => *rank,
        }
    }

    /// A zero state for `batch` sequences, (B, H, N/2).
    pub fn zero_state(&self, batch: usize) -> State<T> {
        State::zeros(batch, self.h, self.m)
    }

    /// 2·Re(C_c x) for head `c` of channel `i`.
    fn read_out(&self, c: usize, i: usize, x: &[T]) -> T {
        let m2 = 2 * self.m;
        crate::nn::simd::dot(&self.c2[(c * self.h + i) * m2..][..m2], x)
    }

    /// Checks a state's shape (B, H, N/2) and its standard layout.
    fn check_state_shape(&self, state: &State<T>, batch: usize) -> Result<()> {
        if state.x.dim() != (batch, self.h, self.m) {
            return Err(Error::shape(
                "state",
                format!("(B, H, N/2) = ({batch}, {}, {})", self.h, self.m),
                state.x.shape(),
            ));
        }
        if !state.x.is_standard_layout() {
            return Err(Error::invalid("state", "a non-contiguous array", "a standard-layout (B, H, N/2) array"));
        }
        Ok(())
    }

    /// Checks a state's shape and layout, and that its values are finite (one pass over it).
    fn check_state(&self, state: &State<T>, batch: usize) -> Result<()> {
        self.check_state_shape(state, batch)?;
        let xs = state.x.as_slice().expect("checked standard layout");
        // SAFETY: as in `reals_mut`.
        let reals = unsafe { std::slice::from_raw_parts(xs.as_ptr().cast::<T>(), 2 * xs.len()) };
        if !all_finite(reals)
            && let Some(((b, i, j), _)) = state.x.indexed_iter().find(|(_, z)| !(z.re.is_finite() && z.im.is_finite()))
        {
            return Err(Error::invalid(format!("state[{b}, {i}, {j}]"), "non-finite", "finite values"));
        }
        Ok(())
    }

    /// One step: advances `state` (B, H, N/2) by the inputs u_t (B, H) and returns the layer
    /// output y_t (B, H), equal to column t of the convolutional output (see the module docs).
    ///
    /// Work: O(B·H·(N + channels·N)) for the SSMs (one fused, vectorized pass per channel, sequences
    /// split across threads from 2¹⁷ state values on) and O(B·channels·H·2H) for the output
    /// linear (the packed few-row kernel shared with the transformer's decoding).
    ///
    /// # Errors
    /// Wrong shapes of `u_t` or `state`, non-finite input or state (named; after a non-finite
    /// state the other sequences' states may have advanced), or an output that is not finite
    /// (named by its position).
    pub fn step(&self, state: &mut State<T>, u_t: ArrayView2<T>) -> Result<Array2<T>> {
        self.advance(None, state, u_t)
    }

    /// [`step`](Self::step) from the state `from` into `to` (of the same shape, whatever it
    /// held), leaving `from` as it was: what a caller that keeps the state before the step (a
    /// snapshot for a rollback) would otherwise copy first.
    ///
    /// # Errors
    /// As [`step`](Self::step), for either state.
    pub fn step_into(&self, from: &State<T>, to: &mut State<T>, u_t: ArrayView2<T>) -> Result<Array2<T>> {
        self.advance(Some(from), to, u_t)
    }

    /// [`step`](Self::step) in place (`from` = `None`) or from `from` into `to`.
    fn advance(&self, from: Option<&State<T>>, to: &mut State<T>, u_t: ArrayView2<T>) -> Result<Array2<T>> {
        let (batch, h) = u_t.dim();
        if h != self.h || batch == 0 {
            return Err(Error::shape("u_t", format!("(B, H) with H = {}", self.h), u_t.shape()));
        }
        let u = u_t.as_standard_layout();
        let mut y = Array2::<T>::zeros((batch, h));
        let ys = y.as_slice_mut().expect("a fresh array");
        self.advance_rows(from, to, u.as_slice().expect("standard layout"), ys, &mut StepBuffers::default())?;
        Ok(y)
    }

    /// The step on row-major slices: u and y (B·H), `buffers` for the intermediate values (a
    /// caller that steps many times keeps them; [`crate::model::RecurrentModel::step_with`]).
    pub(crate) fn advance_rows(
        &self,
        from: Option<&State<T>>,
        to: &mut State<T>,
        us: &[T],
        ys: &mut [T],
        buffers: &mut StepBuffers<T>,
    ) -> Result<()> {
        let h = self.h;
        let batch = us.len() / h;
        if us.len() != batch * h || ys.len() != us.len() || batch == 0 {
            return Err(Error::invalid(
                "step input and output lengths",
                format!("{} and {}", us.len(), ys.len()),
                format!("equal, a positive multiple of H = {h}"),
            ));
        }
        if let Some(from) = from {
            self.check_state_shape(from, batch)?;
        }
        self.check_state_shape(to, batch)?;
        if !all_finite(us)
            && let Some(k) = us.iter().position(|x| !x.is_finite())
        {
            return Err(Error::invalid(format!("u_t[{}, {}]", k / h, k % h), "non-finite", "finite values"));
        }
        let (m2, f) = (2 * self.m, self.channels * h);
        let pres = &mut buffers.pre;
        pres.clear();
        pres.resize(batch * f, T::zero());
        let parallel = batch > 1 && batch * h * self.m >= PARALLEL_MIN_STATE;
        let src = match from {
            // sequences split across threads advance in place, from a copy
            Some(from) if parallel => {
                to.x.assign(&from.x);
                None
            }
            Some(from) => Some(reals(from.x.as_slice().expect("checked standard layout"))),
            None => None,
        };
        let xs = reals_mut(to.x.as_slice_mut().expect("checked standard layout"));
        // Each sequence's state is checked finite right before or as it is updated, while it is
        // in the cache for it (a separate pass over all B·H·N values first cost as much as the
        // update itself at B = 32). A non-finite state is named; the other sequences' states may
        // have advanced by then.
        let non_finite = |b: usize, state: &[T]| {
            let k = state.iter().position(|v| !v.is_finite()).expect("a non-finite value") / 2;
            let (i, j) = (k / self.m, k % self.m);
            Error::invalid(format!("state[{b}, {i}, {j}]"), "non-finite", "finite values")
        };
        // A state stepped out of place is checked by the kernel as it reads it; one in place
        // before (the kernel's check comes after the state is overwritten)
        let row = |b: usize, src: Option<&[T]>, x: &mut [T], p: &mut [T], u: &[T]| -> Result<()> {
            if src.is_none() && !all_finite(x) {
                return Err(non_finite(b, x));
            }
            match (ssm_step(self, u, src, x, p), src) {
                (false, Some(src)) => Err(non_finite(b, src)),
                _ => Ok(()),
            }
        };
        if parallel {
            let results: Vec<Result<()>> = xs
                .par_chunks_mut(h * m2)
                .zip(pres.par_chunks_mut(f))
                .zip(us.par_chunks(h))
                .enumerate()
                .map(|(b, ((x, p), u))| row(b, None, x, p, u))
                .collect();
            results.into_iter().collect::<Result<()>>()?;
        } else {
            for (b, ((x, p), u)) in xs.chunks_mut(h * m2).zip(pres.chunks_mut(f)).zip(us.chunks(h)).enumerate() {
                row(b, src.map(|s| &s[b * h * m2..][..h * m2]), x, p, u)?;
            }
        }
        gelu_in_place(pres);
        let z = &mut buffers.z;
        z.clear();
        z.resize(batch * 2 * h, T::zero());
        packed_linear_into(pres, &self.w, self.bias.as_slice().expect("a bias vector"), z, true);
        for (zb, yb) in z.chunks_exact(2 * h).zip(ys.chunks_exact_mut(h)) {
            glu_in_place(&zb[..h], &zb[h..], yb);
        }
        if !all_finite(ys) {
            let k = ys.iter().position(|v| !v.is_finite()).expect("a non-finite value");
            return Err(Error::numerical(
                "recurrent step",
                format!(
                    "output y_t[{}, {}] = {}: the layer overflowed (inputs or state too large)",
                    k / h,
                    k % h,
                    ys[k]
                ),
            ));
        }
        Ok(())
    }

    /// Adds the response to an initial state to the pre-activation outputs y (B, channels·H, L):
    /// y_c[t] += 2·Re(C_c Ā^{t+1} x₀).
    pub(crate) fn add_state_response(&self, s0: &State<T>, y: &mut Array3<T>, lengths: Option<&[usize]>) -> Result<()> {
        let (batch, _, len) = y.dim();
        self.check_state(s0, batch)?;
        let h = self.h;
        let responses: Vec<(usize, usize, Vec<T>)> = (0..batch * h)
            .into_par_iter()
            .map(|bi| {
                let (b, i) = (bi / h, bi % h);
                let n = lengths.map_or(len, |l| l[b]);
                let mut x: Vec<Complex<T>> = s0.x.slice(ndarray::s![b, i, ..]).to_vec();
                let x = reals_mut(&mut x);
                let mut out = vec![T::zero(); self.channels * n];
                for t in 0..n {
                    advance_run(&self.dynamics, i, x, &[T::zero()]);
                    for c in 0..self.channels {
                        out[c * n + t] = self.read_out(c, i, x);
                    }
                }
                (b, i, out)
            })
            .collect();
        for (b, i, out) in responses {
            let n = out.len() / self.channels;
            for c in 0..self.channels {
                for t in 0..n {
                    y[[b, c * h + i, t]] += out[c * n + t];
                }
            }
        }
        Ok(())
    }

    /// The state after each sequence's inputs u (B, H, L) (up to its length), from `initial`.
    pub(crate) fn final_state(
        &self,
        initial: Option<&State<T>>,
        u: ArrayView3<T>,
        lengths: Option<&[usize]>,
    ) -> Result<State<T>> {
        let state = match initial {
            Some(s) => {
                self.check_state(s, u.dim().0)?;
                s.clone()
            }
            None => self.zero_state(u.dim().0),
        };
        Ok(advance_states(&self.dynamics, state, u, lengths))
    }
}

/// The state after each sequence's inputs u (B, H, L) (up to its length), from zero: what
/// [`Recurrent::final_state`] gives, from the layer's discretized dynamics alone (no C recovery,
/// which costs O(H·N³·log L) for DPLR, and no packed output linear).
///
/// # Errors
/// A bidirectional layer, or I + Δ/2·M singular for a channel (DPLR).
pub(crate) fn state_after<T: Real>(
    layer: &S4Layer<T>,
    u: ArrayView3<T>,
    lengths: Option<&[usize]>,
) -> Result<State<T>> {
    let cfg = layer.config();
    let dynamics = Dynamics::new(layer, &layer.ssm_params()?.cast::<f64>())?;
    let state = State::zeros(u.dim().0, cfg.d_model, cfg.d_state / 2);
    Ok(advance_states(&dynamics, state, u, lengths))
}

/// Advances each sequence's state (B, H, N/2) by its inputs u (B, H, L) (up to its length): one
/// dispatched run per sequence and channel, in parallel.
fn advance_states<T: Real>(
    dynamics: &Dynamics<T>,
    mut state: State<T>,
    u: ArrayView3<T>,
    lengths: Option<&[usize]>,
) -> State<T> {
    let (batch, h, len) = u.dim();
    let m = state.x.dim().2;
    let rows: Vec<Vec<Complex<T>>> = (0..batch * h)
        .into_par_iter()
        .map(|bi| {
            let (b, i) = (bi / h, bi % h);
            let n = lengths.map_or(len, |l| l[b]);
            let mut x: Vec<Complex<T>> = state.x.slice(ndarray::s![b, i, ..]).to_vec();
            let inputs: Vec<T> = u.slice(ndarray::s![b, i, ..n]).to_vec();
            advance_run(dynamics, i, reals_mut(&mut x), &inputs);
            x
        })
        .collect();
    for (bi, x) in rows.into_iter().enumerate() {
        let (b, i) = (bi / h, bi % h);
        for j in 0..m {
            state.x[[b, i, j]] = x[j];
        }
    }
    state
}

#[cfg(test)]
mod tests {
    use super::Recurrent;
    use crate::layer::S4LayerConfig;
    use crate::nn::simd::{with_simd_level, SimdLevel};
    use crate::scalar::HalfPrecision;
    use crate::ssm::KernelKind;
    use ndarray::{s, Array3};

    /// Every dispatch path of the step (the f32 intrinsics where M is a multiple of 4, the generic
    /// body otherwise, at every level this CPU runs) gives the convolution's outputs.
    #[test]
    fn step_equals_conv_at_every_simd_level() {
        // H = 5 and 21: the kernels' groups of 16 or 8 channels, whole and partial
        for (kernel, init, d_state, channels, h) in [
            // M = 8: the AVX-512 kernel; M = 12: the AVX2 kernel even at the AVX-512 level
            (KernelKind::Dplr, "legs", 16, 1, 5),
            (KernelKind::Dplr, "legs", 24, 1, 21),
            (KernelKind::Dplr, "legt", 16, 2, 21),
            (KernelKind::Dplr, "legs", 6, 1, 5),
            (KernelKind::Diag, "diag-lin", 16, 2, 21),
            (KernelKind::Diag, "diag-lin", 16, 1, 5),
            (KernelKind::Diag, "diag-legs", 10, 1, 5),
        ] {
            let cfg = S4LayerConfig {
                d_model: h,
                d_state,
                channels,
                kernel,
                init: init.parse().unwrap(),
                ..Default::default()
            };
            let mut layer = cfg.build().unwrap();
            let len = 48;
            layer.set_kernel_length(len).unwrap();
            let u = Array3::from_shape_fn((3, h, len), |(b, i, t)| ((b * 7 + i * 3 + t * 5) % 11) as f32 / 5.5 - 1.0);
            let conv = layer.forward(u.view(), &Default::default()).unwrap().y;
            let rec = layer.recurrent().unwrap();
            // 16-bit output weights: the f32 step of the layer with that linear rounded, bit for bit
            let half: Vec<_> = [HalfPrecision::Bf16, HalfPrecision::F16]
                .into_iter()
                .map(|p| {
                    let mut rounded = layer.clone();
                    rounded.weights.w.mapv_inplace(|v| p.round(v));
                    (p, Recurrent::with_weights(&layer, Some(p)).unwrap(), rounded.recurrent().unwrap())
                })
                .collect();
            for level in SimdLevel::available() {
                with_simd_level(level, || {
                    let mut state = rec.zero_state(3);
                    // one sequence stepped out of place: the same bits, its source left as it was
                    let (mut from, mut to) = (rec.zero_state(1), rec.zero_state(1));
                    let mut states: Vec<_> = half.iter().map(|_| (rec.zero_state(3), rec.zero_state(3))).collect();
                    for t in 0..len {
                        let ut = u.slice(s![.., .., t]);
                        let y = rec.step(&mut state, ut).unwrap();
                        let before = from.clone();
                        let y1 = rec.step_into(&from, &mut to, u.slice(s![1..2, .., t])).unwrap();
                        assert_eq!(from, before);
                        assert!(y1.iter().zip(y.row(1)).all(|(a, b)| a.to_bits() == b.to_bits()), "{level}, t = {t}");
                        assert!(to.x.iter().zip(state.x.slice(s![1, .., ..])).all(|(a, b)| a == b));
                        std::mem::swap(&mut from, &mut to);
                        let err = (&y - &conv.slice(s![.., .., t])).iter().fold(0.0f32, |m, e| m.max(e.abs()));
                        assert!(err < 2e-5, "{kernel} {init} N={d_state} at {level}, t = {t}: {err}");
                        for ((p, packed, rounded), (s16, s32)) in half.iter().zip(&mut states) {
                            let (a, b) = (packed.step(s16, ut).unwrap(), rounded.step(s32, ut).unwrap());
                            assert!(
                                a.iter().zip(&b).all(|(x, y)| x.to_bits() == y.to_bits()),
                                "{p:?} at {level}, t = {t}"
                            );
                        }
                    }
                });
            }
        }
    }
}

//! Shared primitives below both model families (S4 and the transformers), as plain functions over
//! arrays (the llm.c style): GELU, GLU and the feature-axis linear map of (B, F, L) sequences here;
//! losses in [`loss`]; trainable parameters, gradient norms and clipping in [`params`].
//!
//! # Example
//!
//! The tail of an S4 layer, GELU → Linear(F → 2F) → GLU, on a (B, F, L) = (1, 2, 3) sequence:
//!
//! ```
//! use ndarray::{array, Array3};
//! use s4::nn::linear::linear_features;
//! use s4::nn::{gelu, glu_features, sigmoid};
//!
//! assert_eq!(gelu(0.0f64), 0.0);
//! assert!((gelu(1.0f64) - 0.8413447460685429).abs() < 1e-15); // Φ(1)
//! assert!((sigmoid(0.0f32) - 0.5).abs() < 1e-7 && sigmoid(-1000.0f64) == 0.0);
//!
//! let x = Array3::from_shape_vec((1, 2, 3), vec![1.0, 2.0, 3.0, -1.0, 0.0, 1.0])?.mapv(gelu::<f64>);
//! let w = array![[1.0, 0.0], [0.0, 1.0], [0.0, 0.0], [0.0, 0.0]]; // (2F, F) = (4, 2)
//! let b = array![0.0, 0.0, 0.0, 100.0];
//! let z = linear_features(x.view(), w.view(), b.view()); // (1, 4, 3)
//! assert_eq!(z.dim(), (1, 4, 3));
//! let y = glu_features(z.view()); // first half × sigmoid(second half): (1, 2, 3)
//! assert_eq!(y.dim(), (1, 2, 3));
//! // gate 0 → ×½; gate 100 → ×1
//! assert!((y[[0, 0, 2]] - 0.5 * gelu(3.0)).abs() < 1e-12);
//! assert!((y[[0, 1, 0]] - gelu(-1.0)).abs() < 1e-12);
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```

pub mod linear;
pub mod loss;
pub mod norm;
pub(crate) mod pair;
pub mod params;
pub mod simd;

use crate::error::{Error, Result};
use crate::scalar::Real;
use ndarray::{Array2, Array3, ArrayView3};
use rayon::prelude::*;

/// The feature vectors of a (B, F, L) sequence as rows (B·L, F), row b·L + t = x[b, :, t].
pub fn feature_rows<T: Real>(x: ArrayView3<T>) -> Array2<T> {
    let (b, f, l) = x.dim();
    let mut rows = Array2::<T>::zeros((b * l, f));
    if rows.is_empty() {
        return rows;
    }
    match (x.as_slice(), rows.as_slice_mut()) {
        (Some(src), Some(dst)) => {
            src.par_chunks_exact(f * l).zip(dst.par_chunks_exact_mut(l * f)).for_each(|(s, d)| transpose(s, f, l, d));
        }
        _ => {
            for (i, seq) in x.outer_iter().enumerate() {
                rows.slice_mut(ndarray::s![i * l..(i + 1) * l, ..]).assign(&seq.t());
            }
        }
    }
    rows
}

/// The inverse of [`feature_rows`]: rows (B·L, F) back to a (B, F, L) sequence.
pub fn from_feature_rows<T: Real>(rows: Array2<T>, b: usize, l: usize) -> Array3<T> {
    let f = rows.ncols();
    let mut x = Array3::<T>::zeros((b, f, l));
    if x.is_empty() {
        return x;
    }
    match (rows.as_slice(), x.as_slice_mut()) {
        (Some(src), Some(dst)) => {
            src.par_chunks_exact(l * f).zip(dst.par_chunks_exact_mut(f * l)).for_each(|(s, d)| transpose(s, l, f, d));
        }
        _ => {
            for (i, mut seq) in x.outer_iter_mut().enumerate() {
                seq.assign(&rows.slice(ndarray::s![i * l..(i + 1) * l, ..]).t());
            }
        }
    }
    x
}

/// `dst` (cols × rows, row-major) = the transpose of `src` (rows × cols, row-major), in tiles of
/// 16 × 16 so that both sides are read and written a cache line at a time (ndarray's copy of a
/// permuted view walks one side element by element: 5–10% of a training step).
fn transpose<T: Copy>(src: &[T], rows: usize, cols: usize, dst: &mut [T]) {
    const TILE: usize = 16;
    debug_assert!(src.len() == rows * cols && dst.len() == rows * cols);
    for r0 in (0..rows).step_by(TILE) {
        let r1 = (r0 + TILE).min(rows);
        for c0 in (0..cols).step_by(TILE) {
            let c1 = (c0 + TILE).min(cols);
            for r in r0..r1 {
                let line = &src[r * cols + c0..r * cols + c1];
                for (c, &v) in (c0..c1).zip(line) {
                    dst[c * rows + r] = v;
                }
            }
        }
    }
}

/// Exact GELU: x·Φ(x) = ½x(1 + erf(x/√2)) (PyTorch's default `nn.GELU()`).
#[inline]
pub fn gelu<T: Real>(x: T) -> T {
    let half = T::of(0.5);
    half * x * (T::one() + (x * T::of(std::f64::consts::FRAC_1_SQRT_2)).erf())
}

/// d/dx of the exact GELU x·Φ(x): Φ(x) + x·φ(x).
#[inline]
pub fn gelu_grad<T: Real>(x: T) -> T {
    let half = T::of(0.5);
    let cdf = half * (T::one() + (x * T::of(std::f64::consts::FRAC_1_SQRT_2)).erf());
    let pdf = T::of(1.0 / (2.0 * std::f64::consts::PI).sqrt()) * (-(x * x) * half).exp();
    cdf + x * pdf
}

const SQRT_2_OVER_PI: f64 = 0.797_884_560_802_865_4;
const GELU_C: f64 = 0.044_715;

/// σ(2u) for the tanh form: ½(1 + tanh u) = 1/(1 + e^(−2u)) with u = √(2/π)(x + 0.044715x³)
/// (one `exp` instead of `tanh`, and no cancellation in 1 + tanh u for u ≪ 0).
#[inline]
fn gelu_tanh_gate<T: Real>(x: T) -> T {
    let u = T::of(SQRT_2_OVER_PI) * (x + T::of(GELU_C) * x * x * x);
    T::one() / (T::one() + (-(u + u)).exp())
}

/// The tanh approximation of GELU (Hugging Face's `gelu_new`):
/// 0.5·x·(1 + tanh(√(2/π)(x + 0.044715x³))), computed as x·σ(2u) (the same function).
#[inline]
pub fn gelu_tanh<T: Real>(x: T) -> T {
    x * gelu_tanh_gate(x)
}

/// d/dx of [`gelu_tanh`]: with s = σ(2u), s + 2x·s(1 − s)·√(2/π)(1 + 3·0.044715x²)
/// (= ½(1 + tanh u) + ½x(1 − tanh²u)·u′).
#[inline]
pub fn gelu_tanh_grad<T: Real>(x: T) -> T {
    let s = gelu_tanh_gate(x);
    let du = T::of(SQRT_2_OVER_PI) * (T::one() + T::of(3.0 * GELU_C) * x * x);
    s + T::of(2.0) * x * s * (T::one() - s) * du
}

/// A GELU variant (Hugging Face `ACT2FN` names).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Activation {
    /// `gelu_new` / `gelu_pytorch_tanh`: [`gelu_tanh`].
    GeluTanh,
    /// `gelu`: the exact [`gelu`].
    GeluErf,
}

impl Activation {
    /// Parses a Hugging Face `activation_function` name.
    ///
    /// # Errors
    /// Any name other than `gelu_new`, `gelu_pytorch_tanh` and `gelu`.
    pub fn parse(name: &str) -> Result<Self> {
        match name {
            "gelu_new" | "gelu_pytorch_tanh" => Ok(Activation::GeluTanh),
            "gelu" => Ok(Activation::GeluErf),
            _ => Err(Error::invalid("activation_function", name, "gelu_new, gelu_pytorch_tanh or gelu")),
        }
    }

    /// The activation at x.
    #[inline]
    pub fn apply<T: Real>(self, x: T) -> T {
        match self {
            Activation::GeluTanh => gelu_tanh(x),
            Activation::GeluErf => gelu(x),
        }
    }

    /// The activation over a slice, in place: in f64 exactly [`apply`](Self::apply); in f32 with
    /// e^x or erf from the vectorized approximations of [`simd`] (|error| ≤ 1e-6).
    pub fn apply_in_place<T: Real>(self, xs: &mut [T]) {
        match self {
            Activation::GeluTanh => gelu_tanh_slice(xs),
            Activation::GeluErf => gelu_slice(xs),
        }
    }

    /// Its derivative at x.
    #[inline]
    pub fn grad<T: Real>(self, x: T) -> T {
        match self {
            Activation::GeluTanh => gelu_tanh_grad(x),
            Activation::GeluErf => gelu_grad(x),
        }
    }
}

/// GELU over a slice, in place, as the layers apply it: in f64 exactly [`gelu`]; in f32 with
/// erf from a rational approximation in vector registers (`simd::erf_f32`) (|error of GELU| ≤ 1e-6, where libm's
/// scalar `erff` would cost about as much as the rest of an S4 layer's step; PyTorch's CPU kernels
/// approximate erf the same way).
pub fn gelu_in_place<T: Real>(xs: &mut [T]) {
    gelu_slice(xs);
}

#[inline(always)]
fn gelu_slice_body<T: Real, const FMA: bool>(xs: &mut [T]) {
    match simd::as_f32_mut(xs) {
        Some(xs) => {
            for x in xs {
                *x = 0.5 * *x * (1.0 + simd::erf_f32(*x * std::f32::consts::FRAC_1_SQRT_2));
            }
        }
        None => xs.iter_mut().for_each(|x| *x = gelu(*x)),
    }
}

simd::simd_dispatch! {
    /// [`gelu_slice_body`] with the widest vectors the CPU has.
    fn gelu_slice(xs: &mut [T]) -> () = gelu_slice_body
}

#[inline(always)]
fn gelu_tanh_slice_body<T: Real, const FMA: bool>(xs: &mut [T]) {
    match simd::as_f32_mut(xs) {
        Some(xs) => {
            for x in xs {
                // x·σ(2u) as in gelu_tanh_gate
                let u = SQRT_2_OVER_PI as f32 * (*x + GELU_C as f32 * *x * *x * *x);
                *x /= 1.0 + simd::exp_f32(-(u + u));
            }
        }
        None => xs.iter_mut().for_each(|x| *x = gelu_tanh(*x)),
    }
}

simd::simd_dispatch! {
    /// [`gelu_tanh_slice_body`] with the widest vectors the CPU has.
    fn gelu_tanh_slice(xs: &mut [T]) -> () = gelu_tanh_slice_body
}

/// GLU of one feature row pair, `out_t = a_t·σ(gate_t)`: in f64 by [`sigmoid`]; in f32 with e^x
/// from a vectorized `simd::exp_f32` (relative error ≤ 1e-6).
///
/// # Panics
/// If the three slices differ in length.
pub fn glu_in_place<T: Real>(a: &[T], gate: &[T], out: &mut [T]) {
    assert!(a.len() == gate.len() && a.len() == out.len(), "glu_in_place: slices of one length");
    glu_slice(a, gate, out);
}

#[inline(always)]
fn glu_slice_body<T: Real, const FMA: bool>(a: &[T], gate: &[T], out: &mut [T]) {
    match (simd::as_f32(a), simd::as_f32(gate), simd::as_f32_mut(out)) {
        (Some(a), Some(gate), Some(out)) => {
            for ((o, &x), &g) in out.iter_mut().zip(a).zip(gate) {
                *o = x / (1.0 + simd::exp_f32(-g));
            }
        }
        _ => {
            for ((o, &x), &g) in out.iter_mut().zip(a).zip(gate) {
                *o = x * sigmoid(g);
            }
        }
    }
}

simd::simd_dispatch! {
    /// [`glu_slice_body`] with the widest vectors the CPU has.
    fn glu_slice(a: &[T], gate: &[T], out: &mut [T]) -> () = glu_slice_body
}

/// Backward of [`gelu_in_place`]: g ← g·GELU′(x) elementwise, GELU′(x) = Φ(x) + x·φ(x) (in f64
/// exactly [`gelu_grad`]; in f32 with the vectorized erf and e^x).
///
/// # Panics
/// If the slices differ in length.
pub fn gelu_backward_in_place<T: Real>(g: &mut [T], x: &[T]) {
    assert_eq!(g.len(), x.len(), "gelu_backward_in_place: slices of one length");
    gelu_backward_slice(g, x);
}

#[inline(always)]
fn gelu_backward_body<T: Real, const FMA: bool>(g: &mut [T], x: &[T]) {
    match (simd::as_f32_mut(g), simd::as_f32(x)) {
        (Some(g), Some(x)) => {
            const INV_SQRT_2PI: f32 = 0.398_942_3;
            for (g, &x) in g.iter_mut().zip(x) {
                let cdf = 0.5 * (1.0 + simd::erf_f32(x * std::f32::consts::FRAC_1_SQRT_2));
                *g *= cdf + x * INV_SQRT_2PI * simd::exp_f32(-0.5 * x * x);
            }
        }
        _ => g.iter_mut().zip(x).for_each(|(g, &x)| *g *= gelu_grad(x)),
    }
}

simd::simd_dispatch! {
    /// [`gelu_backward_body`] with the widest vectors the CPU has.
    fn gelu_backward_slice(g: &mut [T], x: &[T]) -> () = gelu_backward_body
}

/// Backward of [`glu_in_place`] for one row pair, o = a·σ(gate): ga = go·σ(gate),
/// g_gate = go·a·σ(gate)(1 − σ(gate)) (σ in f32 from the vectorized e^x).
///
/// # Panics
/// If the slices differ in length.
pub fn glu_backward_in_place<T: Real>(a: &[T], gate: &[T], go: &[T], ga: &mut [T], g_gate: &mut [T]) {
    let n = a.len();
    assert!(gate.len() == n && go.len() == n && ga.len() == n && g_gate.len() == n, "glu_backward_in_place: lengths");
    glu_backward_slice(a, gate, go, ga, g_gate);
}

#[inline(always)]
fn glu_backward_body<T: Real, const FMA: bool>(a: &[T], gate: &[T], go: &[T], ga: &mut [T], g_gate: &mut [T]) {
    match (simd::as_f32(a), simd::as_f32(gate), simd::as_f32(go), simd::as_f32_mut(ga), simd::as_f32_mut(g_gate)) {
        (Some(a), Some(gate), Some(go), Some(ga), Some(gg)) => {
            for i in 0..a.len() {
                let s = 1.0 / (1.0 + simd::exp_f32(-gate[i]));
                ga[i] = go[i] * s;
                gg[i] = go[i] * a[i] * s * (1.0 - s);
            }
        }
        _ => {
            for i in 0..a.len() {
                let s = sigmoid(gate[i]);
                ga[i] = go[i] * s;
                g_gate[i] = go[i] * a[i] * s * (T::one() - s);
            }
        }
    }
}

simd::simd_dispatch! {
    /// [`glu_backward_body`] with the widest vectors the CPU has.
    fn glu_backward_slice(a: &[T], gate: &[T], go: &[T], ga: &mut [T], g_gate: &mut [T]) -> () = glu_backward_body
}

/// The logistic sigmoid 1/(1 + e^{−x}), without overflow for large |x|.
#[inline]
pub fn sigmoid<T: Real>(x: T) -> T {
    if x >= T::zero() {
        T::one() / (T::one() + (-x).exp())
    } else {
        let e = x.exp();
        e / (T::one() + e)
    }
}

/// GLU over the feature axis of (B, 2F, L) → (B, F, L): `y[b, j, t] = z[b, j, t]·σ(z[b, F + j, t])`,
/// the first half times the sigmoid of the second half (PyTorch's `nn.GLU(dim=-2)`).
///
/// # Panics
/// If the feature axis is odd.
pub fn glu_features<T: Real>(z: ArrayView3<T>) -> Array3<T> {
    let (b, f2, l) = z.dim();
    assert!(f2 % 2 == 0, "glu_features: the feature axis must be even");
    let f = f2 / 2;
    let z = z.as_standard_layout();
    let mut y = Array3::<T>::zeros((b, f, l));
    let zs = z.as_slice().expect("standard layout");
    for (i, yb) in y.as_slice_mut().expect("standard layout").chunks_mut(f * l).enumerate() {
        let zb = &zs[i * f2 * l..][..f2 * l];
        glu_in_place(&zb[..f * l], &zb[f * l..], yb);
    }
    y
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::nn::linear::linear_features;

    #[test]
    fn gelu_matches_known_values() {
        // values of 0.5 x (1 + erf(x / sqrt 2)) from the closed form
        assert_eq!(gelu(0.0f64), 0.0);
        assert!((gelu(1.0f64) - 0.8413447460685429).abs() < 1e-15);
        assert!((gelu(-2.0f64) - (-0.04550026389635842)).abs() < 1e-15);
        assert!((gelu(3.0f32) - 2.9959502).abs() < 1e-6);
    }

    #[test]
    fn feature_rows_are_the_permuted_sequence_and_back() {
        // shapes across the 16 × 16 tiles, contiguous and strided inputs
        for (b, f, l) in [(1, 1, 1), (2, 3, 5), (3, 17, 33), (2, 64, 40)] {
            let x = Array3::from_shape_fn((b, f, l), |(i, j, t)| (i * 10_000 + j * 100 + t) as f32);
            let rows = feature_rows(x.view());
            for (i, j, t) in [(0, 0, 0), (b - 1, f - 1, l - 1), (b / 2, f / 2, l / 3)] {
                assert_eq!(rows[[i * l + t, j]], x[[i, j, t]]);
            }
            assert_eq!(
                rows,
                x.view().permuted_axes([0, 2, 1]).as_standard_layout().into_shape_with_order((b * l, f)).unwrap()
            );
            assert_eq!(from_feature_rows(rows, b, l), x);
            let wide = Array3::from_shape_fn((b, f, 2 * l), |(i, j, t)| (i * 10_000 + j * 100 + t) as f32);
            let strided = wide.slice(ndarray::s![.., .., ..;2]);
            assert_eq!(from_feature_rows(feature_rows(strided), b, l), strided);
        }
    }

    #[test]
    fn sigmoid_is_stable() {
        assert_eq!(sigmoid(-1000.0f64), 0.0);
        assert_eq!(sigmoid(1000.0f64), 1.0);
        assert!((sigmoid(0.3f64) - 1.0 / (1.0 + (-0.3f64).exp())).abs() < 1e-16);
    }

    #[test]
    fn linear_and_glu_by_hand() {
        let x = Array3::from_shape_vec((1, 2, 2), vec![1.0, 2.0, 3.0, 4.0]).unwrap();
        let w = ndarray::array![[1.0, 0.0], [0.0, 1.0], [1.0, 1.0], [0.0, 0.0]];
        let b = ndarray::array![0.0, 0.0, 0.0, 0.0];
        let z = linear_features(x.view(), w.view(), b.view());
        assert_eq!(z[[0, 2, 1]], 6.0);
        let g = glu_features(z.view());
        assert!((g[[0, 0, 0]] - sigmoid(4.0f64)).abs() < 1e-15);
        assert_eq!(g[[0, 1, 0]], 3.0 * 0.5);
    }
}

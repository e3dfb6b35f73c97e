//! Inner loops shared by inference and training: dot products and axpys over contiguous slices
//! (written so the compiler vectorizes them), linear layers, LayerNorm, the activations, the tied
//! LM head, and the causal attention of one query against a run of keys and values.
//!
//! Linear layers with a few rows (single-token decoding, scoring a handful of draft tokens) stream
//! the weight matrix once, row by row (y_n += x_n,i · W_i,: for every row i of W), which is the
//! memory-bound optimum; with more rows they use matrixmultiply's gemm (ndarray's
//! `general_mat_mul`), in blocks of rows run in parallel.

use super::Activation;
use crate::scalar::Real;
use ndarray::linalg::general_mat_mul;
use ndarray::{Array1, Array2, ArrayView1, ArrayView2, ArrayViewMut2, Axis};
use rayon::prelude::*;

/// Up to this many rows, linear layers and the LM head stream the weights row by row instead of
/// calling gemm.
pub(crate) const SMALL_ROWS: usize = 8;
/// Row block of the parallel gemm (a fixed size, so results never depend on the thread count).
const GEMM_ROWS: usize = 64;
/// Below about this many multiply–adds a task is not worth sending to another thread.
pub(crate) const PAR_WORK: usize = 1 << 17;

/// Σ a_i b_i over the common length, with 8 independent partial sums (vectorizable).
#[inline]
pub(crate) fn dot<T: Real>(a: &[T], b: &[T]) -> T {
    let n = a.len().min(b.len());
    let (a, b) = (&a[..n], &b[..n]);
    let mut acc = [T::zero(); 8];
    let (ca, cb) = (a.chunks_exact(8), b.chunks_exact(8));
    let (ra, rb) = (ca.remainder(), cb.remainder());
    for (x, y) in ca.zip(cb) {
        for k in 0..8 {
            acc[k] += x[k] * y[k];
        }
    }
    let mut s = ((acc[0] + acc[4]) + (acc[1] + acc[5])) + ((acc[2] + acc[6]) + (acc[3] + acc[7]));
    for (x, y) in ra.iter().zip(rb) {
        s += *x * *y;
    }
    s
}

/// y += a·x elementwise.
#[inline]
pub(crate) fn axpy<T: Real>(y: &mut [T], a: T, x: &[T]) {
    for (yi, &xi) in y.iter_mut().zip(x) {
        *yi += a * xi;
    }
}

/// `out += x·w` for a few rows: x (m, k), w (k, o), out (m, o), all row-major slices. Four rows of
/// `w` at a time are combined into each output row (y_r += x_r,i·w_i + … + x_r,i+3·w_i+3), so the
/// weights stream through once in order and each output entry is loaded and stored k/4 times
/// (a plain axpy per weight row is bound by those loads and stores). With `FMA`, each product is
/// a fused multiply–add (only compiled into [`small_matmul_fma`], where the instruction exists).
#[inline(always)]
fn small_matmul_body<T: Real, const FMA: bool>(x: &[T], k: usize, w: &[T], o: usize, out: &mut [T]) {
    let madd = |a: T, b: T, c: T| if FMA { a.mul_add(b, c) } else { a * b + c };
    let mut i = 0;
    while i + 4 <= k {
        let (w0, w1, w2, w3) = (&w[i * o..][..o], &w[(i + 1) * o..][..o], &w[(i + 2) * o..][..o], &w[(i + 3) * o..][..o]);
        for (xr, y) in x.chunks_exact(k).zip(out.chunks_exact_mut(o)) {
            let (a0, a1, a2, a3) = (xr[i], xr[i + 1], xr[i + 2], xr[i + 3]);
            for ((((yj, &b0), &b1), &b2), &b3) in y.iter_mut().zip(w0).zip(w1).zip(w2).zip(w3) {
                *yj = madd(a3, b3, madd(a2, b2, madd(a1, b1, madd(a0, b0, *yj))));
            }
        }
        i += 4;
    }
    for i in i..k {
        let wi = &w[i * o..][..o];
        for (xr, y) in x.chunks_exact(k).zip(out.chunks_exact_mut(o)) {
            for (yj, &b) in y.iter_mut().zip(wi) {
                *yj = madd(xr[i], b, *yj);
            }
        }
    }
}

/// [`small_matmul_body`] compiled for AVX2 and FMA (8 f32 lanes, fused multiply–adds).
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
fn small_matmul_fma<T: Real>(x: &[T], k: usize, w: &[T], o: usize, out: &mut [T]) {
    small_matmul_body::<T, true>(x, k, w, o, out);
}

/// [`small_matmul_body`] with the widest vectors and FMA if the CPU has them (checked at run time).
fn small_matmul<T: Real>(x: &[T], k: usize, w: &[T], o: usize, out: &mut [T]) {
    #[cfg(target_arch = "x86_64")]
    if std::arch::is_x86_feature_detected!("avx2") && std::arch::is_x86_feature_detected!("fma") {
        // SAFETY: the CPU supports AVX2 and FMA (checked just above).
        unsafe { small_matmul_fma(x, k, w, o, out) };
        return;
    }
    small_matmul_body::<T, false>(x, k, w, o, out);
}

/// `out = x·w (+ out)`: for at most [`SMALL_ROWS`] rows by [`small_matmul`] (w in standard
/// layout), otherwise by gemm, in parallel blocks of [`GEMM_ROWS`] rows when large. `out` holds
/// the bias (or zeros) on entry.
fn matmul_acc<T: Real>(x: ArrayView2<T>, w: ArrayView2<T>, mut out: ArrayViewMut2<T>) {
    let (n, k) = x.dim();
    if n <= SMALL_ROWS && k > 0 && w.is_standard_layout() && out.is_standard_layout() {
        let xs = x.as_standard_layout();
        let o = w.ncols();
        small_matmul(
            xs.as_slice().expect("standard layout"),
            k,
            w.as_slice().expect("standard layout"),
            o,
            out.as_slice_mut().expect("standard layout"),
        );
    } else if n >= 2 * GEMM_ROWS && n * k * w.ncols() >= PAR_WORK {
        out.axis_chunks_iter_mut(Axis(0), GEMM_ROWS)
            .into_par_iter()
            .zip(x.axis_chunks_iter(Axis(0), GEMM_ROWS))
            .for_each(|(mut o, xb)| general_mat_mul(T::one(), &xb, &w, T::one(), &mut o));
    } else {
        general_mat_mul(T::one(), &x, &w, T::one(), &mut out);
    }
}

/// y = x·W + b: x (N, in), W (in, out) (`Conv1D` layout), b (out,) → (N, out).
pub(crate) fn linear<T: Real>(x: ArrayView2<T>, w: ArrayView2<T>, b: ArrayView1<T>) -> Array2<T> {
    let mut y = Array2::from_shape_fn((x.nrows(), w.ncols()), |(_, j)| b[j]);
    matmul_acc(x, w, y.view_mut());
    y
}

/// logits = x·wteᵀ: x (N, C), wte (V, C) → (N, V); a few rows by one dot product per (row, token).
pub(crate) fn lm_head<T: Real>(x: ArrayView2<T>, wte: ArrayView2<T>) -> Array2<T> {
    let (n, c) = x.dim();
    let v = wte.nrows();
    let mut y = Array2::<T>::zeros((n, v));
    if n <= SMALL_ROWS && wte.is_standard_layout() {
        let xs = x.as_standard_layout();
        let ws = wte.as_slice().expect("standard layout");
        for (r, mut yr) in y.outer_iter_mut().enumerate() {
            let xr = xs.row(r);
            let xr = xr.as_slice().expect("standard layout");
            for (k, wk) in ws.chunks_exact(c.max(1)).enumerate() {
                yr[k] = dot(xr, wk);
            }
        }
    } else {
        matmul_acc(x, wte.t(), y.view_mut());
    }
    y
}

/// LayerNorm of one row: writes x̂ = (x − μ)·rstd into `xhat` (if given) and y = x̂·w + b into `y`;
/// returns rstd = 1/√(σ² + ε) (biased variance, `torch.nn.LayerNorm`).
#[inline]
pub(crate) fn layer_norm_row<T: Real>(
    x: &[T],
    w: &[T],
    b: &[T],
    eps: T,
    y: &mut [T],
    mut xhat: Option<&mut [T]>,
) -> T {
    let n = T::of(x.len() as f64);
    let mean = x.iter().fold(T::zero(), |a, &v| a + v) / n;
    let var = x.iter().fold(T::zero(), |a, &v| a + (v - mean) * (v - mean)) / n;
    let rstd = T::one() / (var + eps).sqrt();
    for j in 0..x.len() {
        let xh = (x[j] - mean) * rstd;
        if let Some(h) = xhat.as_deref_mut() {
            h[j] = xh;
        }
        y[j] = xh * w[j] + b[j];
    }
    rstd
}

/// LayerNorm of every row of x (N, C) (inference: no cache kept).
pub(crate) fn layer_norm<T: Real>(x: ArrayView2<T>, w: ArrayView1<T>, b: ArrayView1<T>, eps: f64) -> Array2<T> {
    let x = x.as_standard_layout();
    let (w, b) = (w.to_vec(), b.to_vec());
    let mut y = Array2::<T>::zeros(x.dim());
    let c = x.ncols().max(1);
    let xs = x.as_slice().expect("standard layout");
    let ys = y.as_slice_mut().expect("standard layout");
    for (xr, yr) in xs.chunks_exact(c).zip(ys.chunks_exact_mut(c)) {
        layer_norm_row(xr, &w, &b, T::of(eps), yr, None);
    }
    y
}

const SQRT_2_OVER_PI: f64 = 0.797_884_560_802_865_4;
const GELU_C: f64 = 0.044_715;

/// The activation at x.
#[inline]
pub(crate) fn activation<T: Real>(x: T, act: Activation) -> T {
    let half = T::of(0.5);
    match act {
        Activation::GeluTanh => half * x * (T::one() + (T::of(SQRT_2_OVER_PI) * (x + T::of(GELU_C) * x * x * x)).tanh()),
        Activation::GeluErf => half * x * (T::one() + (x * T::of(std::f64::consts::FRAC_1_SQRT_2)).erf()),
    }
}

/// d/dx of [`activation`]: for the tanh form, with u = √(2/π)(x + 0.044715x³),
/// ½(1 + tanh u) + ½x(1 − tanh²u)·√(2/π)(1 + 3·0.044715x²); for the exact form Φ(x) + x·φ(x).
#[inline]
pub(crate) fn activation_grad<T: Real>(x: T, act: Activation) -> T {
    let half = T::of(0.5);
    match act {
        Activation::GeluTanh => {
            let th = (T::of(SQRT_2_OVER_PI) * (x + T::of(GELU_C) * x * x * x)).tanh();
            let du = T::of(SQRT_2_OVER_PI) * (T::one() + T::of(3.0 * GELU_C) * x * x);
            half * (T::one() + th) + half * x * (T::one() - th * th) * du
        }
        Activation::GeluErf => {
            let cdf = half * (T::one() + (x * T::of(std::f64::consts::FRAC_1_SQRT_2)).erf());
            let pdf = T::of(1.0 / (2.0 * std::f64::consts::PI).sqrt()) * (-(x * x) * half).exp();
            cdf + x * pdf
        }
    }
}

/// Applies the activation to every entry.
pub(crate) fn activate_in_place<T: Real>(mut x: ArrayViewMut2<T>, act: Activation) {
    x.mapv_inplace(|v| activation(v, act));
}

/// Causal attention of one query against key/value rows `0 .. n`: keys and values are row `j` at
/// `keys[j·stride ..][.. d]` (d = q.len()). Writes the softmax weights into `p[.. n]` and
/// `out = Σ_j p_j v_j` (overwritten).
#[inline]
pub(crate) fn attend_row<T: Real>(
    q: &[T],
    keys: &[T],
    values: &[T],
    stride: usize,
    n: usize,
    scale: T,
    p: &mut [T],
    out: &mut [T],
) {
    let d = q.len();
    let mut mx = T::neg_infinity();
    for j in 0..n {
        let s = dot(q, &keys[j * stride..j * stride + d]) * scale;
        p[j] = s;
        mx = mx.max(s);
    }
    let mut z = T::zero();
    for pj in &mut p[..n] {
        *pj = (*pj - mx).exp();
        z += *pj;
    }
    let inv = T::one() / z;
    out.fill(T::zero());
    for j in 0..n {
        p[j] *= inv;
        axpy(out, p[j], &values[j * stride..j * stride + d]);
    }
}

/// Column sums of dy (N, O) → (O,), in row order.
pub(crate) fn col_sums<T: Real>(dy: ArrayView2<T>) -> Array1<T> {
    let mut s = Array1::<T>::zeros(dy.ncols());
    for r in dy.outer_iter() {
        s += &r;
    }
    s
}

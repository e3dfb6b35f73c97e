//! Inner loops shared by inference and training: dot products and axpys over contiguous slices
//! (written so the compiler vectorizes them), linear layers, LayerNorm, the activations, the tied
//! LM head, and the causal attention of one query against a run of keys and values.
//!
//! Linear layers with a few rows (single-token decoding, scoring a handful of draft tokens) stream
//! the weight matrix once in order ([`small_matmul_body`]), which is what a memory-bound pass
//! needs; with more rows they use matrixmultiply's gemm (ndarray's `general_mat_mul`), in blocks of
//! rows run in parallel. The hot loops are compiled three times, for AVX-512, for AVX2 + FMA and
//! for the baseline target, and the widest the CPU supports is picked at run time
//! ([`simd_dispatch`]): the crate is built for generic x86-64 (SSE2), where they would run at a
//! quarter of the width and without fused multiply–adds.

use super::Activation;
use crate::scalar::Real;
use ndarray::linalg::general_mat_mul;
use ndarray::{Array1, Array2, ArrayView1, ArrayView2, ArrayViewMut2, Axis};
use rayon::prelude::*;

/// Up to this many rows, linear layers and the LM head stream the weights instead of calling gemm
/// (whose packing of the weights costs as much as 8–12 rows of products).
pub(crate) const SMALL_ROWS: usize = 8;
/// Row block of the parallel gemm (a fixed size, so results never depend on the thread count).
const GEMM_ROWS: usize = 64;
/// Below about this many multiply–adds a task is not worth sending to another thread.
pub(crate) const PAR_WORK: usize = 1 << 17;

/// Defines `pub(crate) fn $name<T: Real>(args)` that calls `$body::<T, true>(args)` compiled with
/// AVX-512F or with AVX2 + FMA when the CPU has them (checked at run time, cached by std), and
/// `$body::<T, false>(args)` (no fused multiply–add) otherwise. `$body` must be
/// `#[inline(always)]` so that it is compiled with the caller's target features.
macro_rules! simd_dispatch {
    ($(#[$meta:meta])* fn $name:ident($($arg:ident: $ty:ty),* $(,)?) -> $ret:ty = $body:ident) => {
        $(#[$meta])*
        pub(crate) fn $name<T: Real>($($arg: $ty),*) -> $ret {
            #[cfg(target_arch = "x86_64")]
            {
                #[target_feature(enable = "avx512f")]
                fn avx512<T: Real>($($arg: $ty),*) -> $ret {
                    $body::<T, true>($($arg),*)
                }
                #[target_feature(enable = "avx2,fma")]
                fn avx2_fma<T: Real>($($arg: $ty),*) -> $ret {
                    $body::<T, true>($($arg),*)
                }
                if std::arch::is_x86_feature_detected!("avx512f") {
                    // SAFETY: the CPU supports AVX-512F (checked just above).
                    return unsafe { avx512::<T>($($arg),*) };
                }
                if std::arch::is_x86_feature_detected!("avx2") && std::arch::is_x86_feature_detected!("fma") {
                    // SAFETY: the CPU supports AVX2 and FMA (checked just above).
                    return unsafe { avx2_fma::<T>($($arg),*) };
                }
            }
            $body::<T, false>($($arg),*)
        }
    };
}

/// a·b + c, fused when `FMA` (only instantiated where the instruction exists).
#[inline(always)]
fn madd<T: Real, const FMA: bool>(a: T, b: T, c: T) -> T {
    if FMA {
        a.mul_add(b, c)
    } else {
        a * b + c
    }
}

/// Σ a_i b_i over the common length, with 8 independent partial sums (vectorizable).
#[inline(always)]
fn dot_body<T: Real, const FMA: bool>(a: &[T], b: &[T]) -> T {
    let n = a.len().min(b.len());
    let (a, b) = (&a[..n], &b[..n]);
    let mut acc = [T::zero(); 8];
    let (ca, cb) = (a.chunks_exact(8), b.chunks_exact(8));
    let (ra, rb) = (ca.remainder(), cb.remainder());
    for (x, y) in ca.zip(cb) {
        for k in 0..8 {
            acc[k] = madd::<T, FMA>(x[k], y[k], acc[k]);
        }
    }
    let mut s = ((acc[0] + acc[4]) + (acc[1] + acc[5])) + ((acc[2] + acc[6]) + (acc[3] + acc[7]));
    for (x, y) in ra.iter().zip(rb) {
        s = madd::<T, FMA>(*x, *y, s);
    }
    s
}

/// y += a·x elementwise.
#[inline(always)]
fn axpy_body<T: Real, const FMA: bool>(y: &mut [T], a: T, x: &[T]) {
    for (yi, &xi) in y.iter_mut().zip(x) {
        *yi = madd::<T, FMA>(a, xi, *yi);
    }
}

/// Σ a_i b_i over the common length (baseline target; the hot loops use [`dot_body`] inside their
/// dispatched kernels).
#[inline]
pub(crate) fn dot<T: Real>(a: &[T], b: &[T]) -> T {
    dot_body::<T, false>(a, b)
}

/// y += a·x elementwise (baseline target).
#[inline]
pub(crate) fn axpy<T: Real>(y: &mut [T], a: T, x: &[T]) {
    axpy_body::<T, false>(y, a, x);
}

/// Output columns per block of [`small_matmul_body`]: with 4 weight rows and up to
/// [`SMALL_ROWS`] output rows, a block's working set (≤ 12 KiB in f32) stays in L1.
const COL_BLOCK: usize = 256;

/// `out += x·w`: x (m, k) and out (m, o) row-major, w (k, o) with rows `ws` apart (w_i at
/// `w[i·ws ..][.. o]`). By blocks of [`COL_BLOCK`] output columns, four rows of `w` at a time are
/// combined into each output row (y_r += x_r,i·w_i + … + x_r,i+3·w_i+3): every weight is read
/// from memory once, in order, and the output block is loaded and stored k/4 times from L1 (a
/// plain axpy per weight row would be bound by those loads and stores).
#[inline(always)]
fn small_matmul_body<T: Real, const FMA: bool>(x: &[T], k: usize, w: &[T], ws: usize, o: usize, out: &mut [T]) {
    let madd = madd::<T, FMA>;
    let m = out.len() / o.max(1);
    for j0 in (0..o).step_by(COL_BLOCK) {
        let cb = COL_BLOCK.min(o - j0);
        let mut i = 0;
        while i + 4 <= k {
            let seg = |r: usize| &w[r * ws + j0..][..cb];
            let (w0, w1, w2, w3) = (seg(i), seg(i + 1), seg(i + 2), seg(i + 3));
            for r in 0..m {
                let xr = &x[r * k..][..k];
                let (a0, a1, a2, a3) = (xr[i], xr[i + 1], xr[i + 2], xr[i + 3]);
                let y = &mut out[r * o + j0..][..cb];
                for ((((yj, &b0), &b1), &b2), &b3) in y.iter_mut().zip(w0).zip(w1).zip(w2).zip(w3) {
                    *yj = madd(a3, b3, madd(a2, b2, madd(a1, b1, madd(a0, b0, *yj))));
                }
            }
            i += 4;
        }
        for i in i..k {
            let wi = &w[i * ws + j0..][..cb];
            for r in 0..m {
                axpy_body::<T, FMA>(&mut out[r * o + j0..][..cb], x[r * k + i], wi);
            }
        }
    }
}

simd_dispatch! {
    /// [`small_matmul_body`] with the widest vectors the CPU has.
    fn small_matmul(x: &[T], k: usize, w: &[T], ws: usize, o: usize, out: &mut [T]) -> () = small_matmul_body
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
    let mut y = Array2::<T>::zeros((x.nrows(), w.ncols()));
    y.assign(&b.broadcast((x.nrows(), w.ncols())).expect("bias of the output width"));
    matmul_acc(x, w, y.view_mut());
    y
}

/// out[r, v] = x_r·wte_v for a few rows: x (m, c), wte (V, c), out (m, V) row-major; `wte` is
/// streamed once (token outer, rows inner).
#[inline(always)]
fn small_head_body<T: Real, const FMA: bool>(x: &[T], c: usize, wte: &[T], out: &mut [T]) {
    let v = wte.len() / c;
    for (k, wk) in wte.chunks_exact(c).enumerate() {
        for (r, xr) in x.chunks_exact(c).enumerate() {
            out[r * v + k] = dot_body::<T, FMA>(xr, wk);
        }
    }
}

simd_dispatch! {
    /// [`small_head_body`] with the widest vectors the CPU has.
    fn small_head(x: &[T], c: usize, wte: &[T], out: &mut [T]) -> () = small_head_body
}

/// logits = x·wteᵀ: x (N, C), wte (V, C) → (N, V); a few rows by dot products, more by gemm.
pub(crate) fn lm_head<T: Real>(x: ArrayView2<T>, wte: ArrayView2<T>) -> Array2<T> {
    let (n, c) = x.dim();
    let mut y = Array2::<T>::zeros((n, wte.nrows()));
    if n <= SMALL_ROWS && c > 0 && wte.is_standard_layout() {
        let xs = x.as_standard_layout();
        let ws = wte.as_slice().expect("standard layout");
        small_head(xs.as_slice().expect("standard layout"), c, ws, y.as_slice_mut().expect("standard layout"));
    } else {
        matmul_acc(x, wte.t(), y.view_mut());
    }
    y
}

/// LayerNorm of one row: writes x̂ = (x − μ)·rstd into `xhat` (if given) and y = x̂·w + b into `y`;
/// returns rstd = 1/√(σ² + ε) (biased variance, `torch.nn.LayerNorm`).
#[inline]
pub(crate) fn layer_norm_row<T: Real>(x: &[T], w: &[T], b: &[T], eps: T, y: &mut [T], mut xhat: Option<&mut [T]>) -> T {
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

/// σ(2u) for the tanh form: ½(1 + tanh u) = 1/(1 + e^(−2u)) with u = √(2/π)(x + 0.044715x³)
/// (one `exp` instead of `tanh`, and no cancellation in 1 + tanh u for u ≪ 0).
#[inline]
fn gelu_tanh_gate<T: Real>(x: T) -> T {
    let u = T::of(SQRT_2_OVER_PI) * (x + T::of(GELU_C) * x * x * x);
    T::one() / (T::one() + (-(u + u)).exp())
}

/// The activation at x: `gelu_new` 0.5·x·(1 + tanh(√(2/π)(x + 0.044715x³))), computed as
/// x·σ(2u) (the same function), or exact `gelu` 0.5·x·(1 + erf(x/√2)).
#[inline]
pub(crate) fn activation<T: Real>(x: T, act: Activation) -> T {
    match act {
        Activation::GeluTanh => x * gelu_tanh_gate(x),
        Activation::GeluErf => T::of(0.5) * x * (T::one() + (x * T::of(std::f64::consts::FRAC_1_SQRT_2)).erf()),
    }
}

/// d/dx of [`activation`]: for the tanh form, with s = σ(2u), s + 2x·s(1 − s)·√(2/π)(1 + 3·0.044715x²)
/// (= ½(1 + tanh u) + ½x(1 − tanh²u)·u′); for the exact form Φ(x) + x·φ(x).
#[inline]
pub(crate) fn activation_grad<T: Real>(x: T, act: Activation) -> T {
    match act {
        Activation::GeluTanh => {
            let s = gelu_tanh_gate(x);
            let du = T::of(SQRT_2_OVER_PI) * (T::one() + T::of(3.0 * GELU_C) * x * x);
            s + T::of(2.0) * x * s * (T::one() - s) * du
        }
        Activation::GeluErf => {
            let half = T::of(0.5);
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
#[allow(clippy::too_many_arguments)]
#[inline(always)]
fn attend_row_body<T: Real, const FMA: bool>(
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
        let s = dot_body::<T, FMA>(q, &keys[j * stride..][..d]) * scale;
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
        axpy_body::<T, FMA>(out, p[j], &values[j * stride..][..d]);
    }
}

simd_dispatch! {
    /// [`attend_row_body`] with the widest vectors the CPU has.
    #[allow(clippy::too_many_arguments)]
    fn attend_row(q: &[T], keys: &[T], values: &[T], stride: usize, n: usize, scale: T, p: &mut [T], out: &mut [T]) -> () = attend_row_body
}

/// Causal attention of t new queries of one (sequence, head) against a KV cache:
/// q (t, d) row-major; keys stored transposed, `kt` (d, cap) (key j is column j); values `v`
/// (cap, d); positions `0 .. past + t` valid, query i sees `0 ..= past + i`. Scores S = q·Kᵀ and
/// the output P·V are both [`small_matmul_body`] products (the masked scores are computed and then
/// zeroed). `s` is scratch of at least t·(past + t); writes `out` (t, d).
#[allow(clippy::too_many_arguments)]
#[inline(always)]
fn attend_cached_body<T: Real, const FMA: bool>(
    q: &[T],
    kt: &[T],
    v: &[T],
    cap: usize,
    past: usize,
    scale: T,
    s: &mut [T],
    out: &mut [T],
) {
    let d = v.len() / cap.max(1);
    let t = q.len() / d.max(1);
    let n = past + t;
    let s = &mut s[..t * n];
    s.fill(T::zero());
    small_matmul_body::<T, FMA>(q, d, kt, cap, n, s);
    for (i, row) in s.chunks_exact_mut(n).enumerate() {
        let seen = past + i + 1;
        let mx = row[..seen].iter().fold(T::neg_infinity(), |m, &x| m.max(x));
        let mut z = T::zero();
        for x in &mut row[..seen] {
            *x = ((*x - mx) * scale).exp();
            z += *x;
        }
        let inv = T::one() / z;
        row[..seen].iter_mut().for_each(|x| *x *= inv);
        row[seen..].fill(T::zero());
    }
    out.fill(T::zero());
    small_matmul_body::<T, FMA>(s, n, v, d, d, out);
}

simd_dispatch! {
    /// [`attend_cached_body`] with the widest vectors the CPU has.
    #[allow(clippy::too_many_arguments)]
    fn attend_cached(q: &[T], kt: &[T], v: &[T], cap: usize, past: usize, scale: T, s: &mut [T], out: &mut [T]) -> () = attend_cached_body
}

/// Column sums of dy (N, O) → (O,), in row order.
pub(crate) fn col_sums<T: Real>(dy: ArrayView2<T>) -> Array1<T> {
    let mut s = Array1::<T>::zeros(dy.ncols());
    for r in dy.outer_iter() {
        s += &r;
    }
    s
}

/// How many panel rows (64-byte lines in f32) ahead [`packed_tile_avx512`] prefetches.
const PREFETCH_ROWS: usize = 32;

/// Columns per panel of a [`PackedMatrix`] (one AVX-512 register of f32).
pub(crate) const PANEL: usize = 16;

/// A weight matrix W (k, o) stored for decoding: panels of [`PANEL`] consecutive columns, each
/// panel k rows of `PANEL` contiguous values (`data[p·k·PANEL + i·PANEL + c] = W[i, p·PANEL + c]`,
/// zero past column o). A product with a few rows then reads the weights in one sequential
/// stream, where the row-major layout would read `PANEL` columns at a stride of o values.
#[derive(Clone, Debug)]
pub(crate) struct PackedMatrix<T> {
    k: usize,
    o: usize,
    data: Vec<T>,
}

impl<T: Real> PackedMatrix<T> {
    /// Packs `w` (k, o).
    pub(crate) fn new(w: ArrayView2<T>) -> Self {
        let (k, o) = w.dim();
        let panels = o.div_ceil(PANEL);
        let mut data = vec![T::zero(); panels * k * PANEL];
        for (i, row) in w.rows().into_iter().enumerate() {
            let row = row.to_vec();
            for (p, src) in row.chunks(PANEL).enumerate() {
                data[(p * k + i) * PANEL..][..src.len()].copy_from_slice(src);
            }
        }
        PackedMatrix { k, o, data }
    }
}

/// `out[r0 + r, j0 .. j0 + n] += x_{r0+r} · W[:, j0 .. j0 + n]` for the `R` rows of a register tile
/// (n = the panel's valid columns, j0 = panel·[`PANEL`]): the R × [`PANEL`] accumulators stay in
/// registers for the whole sum over the k rows of the panel, and each panel row (one vector load)
/// is applied to all R rows by fused multiply–adds with a broadcast of x_{r,i}.
#[inline(always)]
fn packed_tile_body<T: Real, const FMA: bool, const R: usize>(
    x: &[T],
    panel: &[T],
    k: usize,
    o: usize,
    out: &mut [T],
    r0: usize,
    j0: usize,
) {
    let madd = madd::<T, FMA>;
    let n = PANEL.min(o - j0);
    let mut acc = [[T::zero(); PANEL]; R];
    for (r, a) in acc.iter_mut().enumerate() {
        a[..n].copy_from_slice(&out[(r0 + r) * o + j0..][..n]);
    }
    let xs: [&[T]; R] = std::array::from_fn(|r| &x[(r0 + r) * k..][..k]);
    for (i, wi) in panel.chunks_exact(PANEL).enumerate() {
        let wi: &[T; PANEL] = wi.try_into().expect("PANEL columns");
        for (a, xr) in acc.iter_mut().zip(&xs) {
            let xi = xr[i];
            for l in 0..PANEL {
                a[l] = madd(xi, wi[l], a[l]);
            }
        }
    }
    for (r, a) in acc.iter().enumerate() {
        out[(r0 + r) * o + j0..][..n].copy_from_slice(&a[..n]);
    }
}

/// `out += x·W` for m rows (x (m, k), out (m, o) row-major) with W packed: panel by panel, rows
/// in register tiles of at most `MR` ([`packed_tile_body`]); a panel (k·[`PANEL`] values) read for
/// the first tile is still in cache for the next.
#[inline(always)]
fn packed_matmul_body<T: Real, const FMA: bool, const MR: usize>(x: &[T], w: &PackedMatrix<T>, out: &mut [T]) {
    let (k, o) = (w.k, w.o);
    let m = out.len() / o.max(1);
    for (p, panel) in w.data.chunks_exact(k * PANEL).enumerate() {
        let mut r0 = 0;
        while r0 < m {
            let r = MR.min(m - r0);
            macro_rules! tiles {
                ($($n:literal)*) => {
                    match r {
                        $($n => packed_tile_body::<T, FMA, $n>(x, panel, k, o, out, r0, p * PANEL),)*
                        _ => unreachable!("register tiles have 1 to 16 rows"),
                    }
                };
            }
            tiles!(1 2 3 4 5 6 7 8 9 10 11 12 13 14 15 16);
            r0 += r;
        }
    }
}

/// [`packed_tile_body`] for f32 with AVX-512 intrinsics: one 16-lane register per accumulator
/// row, each panel row loaded once and combined with every row by `vfmadd231ps` with an embedded
/// broadcast of x_{r,i}. (Written out because the compiler's vectorization of the generic body
/// varies with R.)
///
/// # Safety
/// The CPU must support AVX-512F; `x` holds rows `r0 .. r0 + R` of length k, `panel` k·16 values,
/// `out` rows `r0 .. r0 + R` of length o ≥ j0 + 1.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
unsafe fn packed_tile_avx512<const R: usize>(
    x: &[f32],
    panel: &[f32],
    k: usize,
    o: usize,
    out: &mut [f32],
    r0: usize,
    j0: usize,
) {
    use std::arch::x86_64::*;
    let n = PANEL.min(o - j0);
    let mask: __mmask16 = if n == PANEL { 0xffff } else { (1u16 << n) - 1 };
    let xs = x.as_ptr().add(r0 * k);
    let outp = out.as_mut_ptr().add(r0 * o + j0);
    let mut acc = [_mm512_setzero_ps(); R];
    for (r, a) in acc.iter_mut().enumerate() {
        *a = _mm512_maskz_loadu_ps(mask, outp.add(r * o));
    }
    let w = panel.as_ptr();
    for i in 0..k {
        // the panel is one sequential stream: ask for it well ahead of its use
        _mm_prefetch::<_MM_HINT_T0>(w.wrapping_add((i + PREFETCH_ROWS) * PANEL).cast::<i8>());
        let wi = _mm512_loadu_ps(w.add(i * PANEL));
        for (r, a) in acc.iter_mut().enumerate() {
            *a = _mm512_fmadd_ps(_mm512_set1_ps(*xs.add(r * k + i)), wi, *a);
        }
    }
    for (r, a) in acc.iter().enumerate() {
        _mm512_mask_storeu_ps(outp.add(r * o), mask, *a);
    }
}

/// `out += x·W` in f32 with W packed, AVX-512: as [`packed_matmul_body`] with
/// [`packed_tile_avx512`] tiles of up to 16 rows (16 of the 32 vector registers hold
/// accumulators).
///
/// # Safety
/// The CPU must support AVX-512F; x (m, k) and out (m, o) row-major.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
unsafe fn packed_matmul_avx512(x: &[f32], w: &PackedMatrix<f32>, out: &mut [f32]) {
    let (k, o) = (w.k, w.o);
    let m = out.len() / o.max(1);
    assert!(x.len() >= m * k && out.len() == m * o && w.data.len() == o.div_ceil(PANEL) * k * PANEL);
    // as few tiles as 16-row tiles allow, of even sizes (17 rows: 9 + 8, not 16 + 1)
    let per_tile = m.div_ceil(m.div_ceil(16).max(1)).max(1);
    for (p, panel) in w.data.chunks_exact(k * PANEL).enumerate() {
        let mut r0 = 0;
        while r0 < m {
            let r = per_tile.min(m - r0);
            macro_rules! tiles {
                ($($n:literal)*) => {
                    match r {
                        $($n => packed_tile_avx512::<$n>(x, panel, k, o, out, r0, p * PANEL),)*
                        _ => unreachable!("register tiles have 1 to 16 rows"),
                    }
                };
            }
            tiles!(1 2 3 4 5 6 7 8 9 10 11 12 13 14 15 16);
            r0 += r;
        }
    }
}

/// `out += x·W` with W packed, with the widest vectors the CPU has and register tiles sized to its
/// register file: f32 with AVX-512 by [`packed_matmul_avx512`] (up to 16 rows per tile); otherwise
/// the generic [`packed_matmul_body`] with tiles of up to 6 rows with AVX2 + FMA (12 of 16
/// registers hold accumulators in f32), 3 on the baseline target.
fn packed_matmul<T: Real>(x: &[T], w: &PackedMatrix<T>, out: &mut [T]) {
    #[cfg(target_arch = "x86_64")]
    {
        if std::arch::is_x86_feature_detected!("avx512f") {
            if let (Some(x), Some(w), Some(out)) =
                (as_f32(x), (w as &dyn std::any::Any).downcast_ref::<PackedMatrix<f32>>(), as_f32_mut(out))
            {
                // SAFETY: the CPU supports AVX-512F (checked above); the shapes are asserted inside.
                return unsafe { packed_matmul_avx512(x, w, out) };
            }
            #[target_feature(enable = "avx512f")]
            fn avx512<T: Real>(x: &[T], w: &PackedMatrix<T>, out: &mut [T]) {
                packed_matmul_body::<T, true, 8>(x, w, out)
            }
            // SAFETY: the CPU supports AVX-512F (checked just above).
            return unsafe { avx512::<T>(x, w, out) };
        }
        #[target_feature(enable = "avx2,fma")]
        fn avx2_fma<T: Real>(x: &[T], w: &PackedMatrix<T>, out: &mut [T]) {
            packed_matmul_body::<T, true, 6>(x, w, out)
        }
        if std::arch::is_x86_feature_detected!("avx2") && std::arch::is_x86_feature_detected!("fma") {
            // SAFETY: the CPU supports AVX2 and FMA (checked just above).
            return unsafe { avx2_fma::<T>(x, w, out) };
        }
    }
    packed_matmul_body::<T, false, 3>(x, w, out)
}

/// `x` as `&[f32]` when T is f32.
fn as_f32<T: Real>(x: &[T]) -> Option<&[f32]> {
    // SAFETY: T and f32 are the same type (checked by TypeId), so the layout is identical.
    (std::any::TypeId::of::<T>() == std::any::TypeId::of::<f32>())
        .then(|| unsafe { std::slice::from_raw_parts(x.as_ptr().cast::<f32>(), x.len()) })
}

/// `x` as `&mut [f32]` when T is f32.
fn as_f32_mut<T: Real>(x: &mut [T]) -> Option<&mut [f32]> {
    if std::any::TypeId::of::<T>() == std::any::TypeId::of::<f32>() {
        // SAFETY: T and f32 are the same type (checked by TypeId), so the layout is identical.
        Some(unsafe { std::slice::from_raw_parts_mut(x.as_mut_ptr().cast::<f32>(), x.len()) })
    } else {
        None
    }
}

/// y = x·W + b with W packed: x (m, k), b (o,) → (m, o); for the few rows of a decoding step
/// (any m works; beyond a few dozen rows gemm is faster).
pub(crate) fn packed_linear<T: Real>(x: ArrayView2<T>, w: &PackedMatrix<T>, b: ArrayView1<T>) -> Array2<T> {
    let m = x.nrows();
    let mut y = Array2::<T>::zeros((m, w.o));
    y.assign(&b.broadcast((m, w.o)).expect("bias of the output width"));
    let xs = x.as_standard_layout();
    packed_matmul(xs.as_slice().expect("standard layout"), w, y.as_slice_mut().expect("standard layout"));
    y
}

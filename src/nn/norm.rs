//! LayerNorm over the features of each row (`torch.nn.LayerNorm`, biased variance): one row
//! kernel, the inference pass, and the training forward/backward pair. Rows are (N, C) row-major;
//! a (B, F, L) sequence goes through [`feature_rows`](super::feature_rows) and back.
//!
//! ```
//! use ndarray::array;
//! use s4::nn::norm::{layer_norm, layer_norm_backward, layer_norm_forward};
//! let x = array![[1.0f64, 2.0, 3.0, 6.0]];
//! let (w, b) = (array![1.0, 1.0, 2.0, 1.0], array![0.0, 0.0, 0.5, 0.0]);
//! let (y, cache) = layer_norm_forward(x.view(), w.view(), b.view(), 1e-5);
//! assert_eq!(y, layer_norm(x.view(), w.view(), b.view(), 1e-5));
//! // x̂ has mean 0 and variance 1 (up to ε)
//! assert!(cache.xhat.sum().abs() < 1e-12);
//! // the backward against a central difference of Σ y·r
//! let r = array![[0.3, -1.0, 0.2, 0.7]];
//! let (gx, _, _) = layer_norm_backward(&cache, w.view(), r.view());
//! let h = 1e-6;
//! let f = |d: f64| { let mut xp = x.clone(); xp[[0, 1]] += d; (layer_norm(xp.view(), w.view(), b.view(), 1e-5) * &r).sum() };
//! assert!(((f(h) - f(-h)) / (2.0 * h) - gx[[0, 1]]).abs() < 1e-8);
//! ```

use super::simd::{dot_body, madd, simd_dispatch, sum_body, total8};
use crate::scalar::Real;
use ndarray::{Array1, Array2, ArrayView1, ArrayView2};

/// LayerNorm of one row: writes x̂ = (x − μ)·rstd into `xhat` (if given) and y = x̂·w + b into
/// `y`; returns rstd = 1/√(σ² + ε).
#[inline]
pub fn layer_norm_row<T: Real>(x: &[T], w: &[T], b: &[T], eps: T, y: &mut [T], xhat: Option<&mut [T]>) -> T {
    layer_norm_row_simd(x, w, b, eps, y, xhat)
}

/// Σ (x − c)² with 8 partial sums.
#[inline(always)]
fn squares8<T: Real, const FMA: bool>(x: &[T], c: T) -> T {
    let mut acc = [T::zero(); 8];
    let (chunks, rest) = x.as_chunks::<8>();
    for ch in chunks {
        for l in 0..8 {
            let d = ch[l] - c;
            acc[l] = madd::<T, FMA>(d, d, acc[l]);
        }
    }
    total8(acc) + rest.iter().fold(T::zero(), |a, &v| a + (v - c) * (v - c))
}

/// [`layer_norm_row`]'s body: the mean and the variance as sums of 8 lanes, the row in vector
/// loops.
#[inline(always)]
fn layer_norm_row_body<T: Real, const FMA: bool>(
    x: &[T],
    w: &[T],
    b: &[T],
    eps: T,
    y: &mut [T],
    xhat: Option<&mut [T]>,
) -> T {
    let c = x.len();
    let (w, b, y) = (&w[..c], &b[..c], &mut y[..c]);
    let n = T::of(c as f64);
    let mean = sum_body(x) / n;
    let var = squares8::<T, FMA>(x, mean) / n;
    let rstd = T::one() / (var + eps).sqrt();
    match xhat {
        Some(h) => {
            let h = &mut h[..c];
            for j in 0..c {
                let xh = (x[j] - mean) * rstd;
                h[j] = xh;
                y[j] = madd::<T, FMA>(xh, w[j], b[j]);
            }
        }
        None => {
            for j in 0..c {
                y[j] = madd::<T, FMA>((x[j] - mean) * rstd, w[j], b[j]);
            }
        }
    }
    rstd
}

simd_dispatch! {
    /// [`layer_norm_row_body`] with the widest vectors the CPU has.
    fn layer_norm_row_simd(x: &[T], w: &[T], b: &[T], eps: T, y: &mut [T], xhat: Option<&mut [T]>) -> T = layer_norm_row_body
}

/// One row of [`layer_norm_backward`]: ĝ = dy·w, dx = (ĝ − mean(ĝ) − x̂·mean(ĝ·x̂))·rstd, and
/// dy·x̂ and dy added into dw and db; `g` is scratch of the row's length.
#[inline(always)]
#[allow(clippy::too_many_arguments)]
fn layer_norm_backward_row_body<T: Real, const FMA: bool>(
    xh: &[T],
    gy: &[T],
    w: &[T],
    rstd: T,
    g: &mut [T],
    dw: &mut [T],
    db: &mut [T],
    dx: &mut [T],
) {
    let c = xh.len();
    let (gy, w, g, dw, db, dx) = (&gy[..c], &w[..c], &mut g[..c], &mut dw[..c], &mut db[..c], &mut dx[..c]);
    for j in 0..c {
        g[j] = gy[j] * w[j];
        dw[j] = madd::<T, FMA>(gy[j], xh[j], dw[j]);
        db[j] += gy[j];
    }
    let cn = T::of(c as f64);
    let (m1, m2) = (sum_body(g) / cn, dot_body::<T, FMA>(g, xh) / cn);
    for j in 0..c {
        dx[j] = (g[j] - m1 - xh[j] * m2) * rstd;
    }
}

simd_dispatch! {
    /// [`layer_norm_backward_row_body`] with the widest vectors the CPU has.
    #[allow(clippy::too_many_arguments)]
    fn layer_norm_backward_row(xh: &[T], gy: &[T], w: &[T], rstd: T, g: &mut [T], dw: &mut [T], db: &mut [T], dx: &mut [T]) -> () = layer_norm_backward_row_body
}

/// LayerNorm of every row of x (N, C), keeping nothing (inference).
pub fn layer_norm<T: Real>(x: ArrayView2<T>, w: ArrayView1<T>, b: ArrayView1<T>, eps: f64) -> Array2<T> {
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

/// What LayerNorm's backward needs: x̂ = (x − μ)·rstd (N, C) and rstd = 1/√(σ² + ε) per row (N,).
#[derive(Clone, Debug)]
pub struct LayerNormCache<T> {
    /// The normalized input.
    pub xhat: Array2<T>,
    /// 1/√(σ² + ε) per row.
    pub rstd: Array1<T>,
}

/// LayerNorm of every row of x (N, C), keeping what the backward needs: (y (N, C), cache).
pub fn layer_norm_forward<T: Real>(
    x: ArrayView2<T>,
    w: ArrayView1<T>,
    b: ArrayView1<T>,
    eps: f64,
) -> (Array2<T>, LayerNormCache<T>) {
    let x = x.as_standard_layout();
    let (n, c) = x.dim();
    let (w, b) = (w.to_vec(), b.to_vec());
    let mut y = Array2::<T>::zeros((n, c));
    let mut xhat = Array2::<T>::zeros((n, c));
    let mut rstd = Array1::<T>::zeros(n);
    let c1 = c.max(1);
    let rows = x.as_slice().expect("standard layout").chunks_exact(c1);
    let yrows = y.as_slice_mut().expect("standard layout").chunks_exact_mut(c1);
    let hrows = xhat.as_slice_mut().expect("standard layout").chunks_exact_mut(c1);
    for (((xr, yr), hr), r) in rows.zip(yrows).zip(hrows).zip(rstd.iter_mut()) {
        *r = layer_norm_row(xr, &w, &b, T::of(eps), yr, Some(hr));
    }
    (y, LayerNormCache { xhat, rstd })
}

/// Backward of [`layer_norm_forward`]: with ĝ = dy·w per row,
/// dx = (ĝ − mean(ĝ) − x̂·mean(ĝ·x̂))·rstd; dw = Σ_rows dy·x̂, db = Σ_rows dy.
/// Returns (dx (N, C), dw (C,), db (C,)).
pub fn layer_norm_backward<T: Real>(
    cache: &LayerNormCache<T>,
    w: ArrayView1<T>,
    dy: ArrayView2<T>,
) -> (Array2<T>, Array1<T>, Array1<T>) {
    let (n, c) = dy.dim();
    let mut dx = Array2::<T>::zeros((n, c));
    let mut dw = Array1::<T>::zeros(c);
    let mut db = Array1::<T>::zeros(c);
    let mut g = vec![T::zero(); c];
    let (dy, w) = (dy.as_standard_layout(), w.to_vec());
    let (dws, dbs) = (dw.as_slice_mut().expect("a fresh array"), db.as_slice_mut().expect("a fresh array"));
    let c1 = c.max(1);
    let rows = cache
        .xhat
        .as_slice()
        .expect("standard layout")
        .chunks_exact(c1)
        .zip(dy.as_slice().expect("standard layout").chunks_exact(c1));
    let out = dx.as_slice_mut().expect("a fresh array").chunks_exact_mut(c1).zip(cache.rstd.iter());
    for ((xh, gy), (dxr, &rs)) in rows.zip(out) {
        layer_norm_backward_row(xh, gy, &w, rs, &mut g, dws, dbs, dxr);
    }
    (dx, dw, db)
}

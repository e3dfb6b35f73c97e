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

use crate::scalar::Real;
use ndarray::{Array1, Array2, ArrayView1, ArrayView2};

/// LayerNorm of one row: writes x̂ = (x − μ)·rstd into `xhat` (if given) and y = x̂·w + b into
/// `y`; returns rstd = 1/√(σ² + ε).
#[inline]
pub fn layer_norm_row<T: Real>(x: &[T], w: &[T], b: &[T], eps: T, y: &mut [T], mut xhat: Option<&mut [T]>) -> T {
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
    let cn = T::of(c as f64);
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
    let (g, w, dws, dbs) = (&mut g[..c], &w[..c], &mut dws[..c], &mut dbs[..c]);
    for ((xh, gy), (dxr, &rs)) in rows.zip(out) {
        let (xh, gy, dxr) = (&xh[..c], &gy[..c], &mut dxr[..c]);
        let (mut m1, mut m2) = (T::zero(), T::zero());
        for j in 0..c {
            g[j] = gy[j] * w[j];
            m1 += g[j];
            m2 += g[j] * xh[j];
            dws[j] += gy[j] * xh[j];
            dbs[j] += gy[j];
        }
        let (m1, m2) = (m1 / cn, m2 / cn);
        for j in 0..c {
            dxr[j] = (g[j] - m1 - xh[j] * m2) * rs;
        }
    }
    (dx, dw, db)
}

//! Forward/backward pairs of the pieces around the SSM, as plain functions over (B, F, L) arrays
//! (the llm.c style: each backward takes what its forward saw and the gradient of its output, and
//! returns the gradients of its inputs and weights).
//!
//! Every reduction over the batch (weight gradients) is done per sequence in parallel and then
//! summed in sequence order, so results do not depend on the number of threads.
//!
//! ```
//! use ndarray::array;
//! use s4::nn::gelu_grad;
//! // GELU′(x) = Φ(x) + x·φ(x): ½ at 0, and against a central difference of x·Φ(x) at 1
//! assert!((gelu_grad(0.0f64) - 0.5).abs() < 1e-15);
//! let phi = |x: f64| 0.5 * (1.0 + s4::scalar::Real::erf(x / 2f64.sqrt()));
//! let h = 1e-5;
//! let fd = ((1.0 + h) * phi(1.0 + h) - (1.0 - h) * phi(1.0 - h)) / (2.0 * h);
//! assert!((gelu_grad(1.0f64) - fd).abs() < 1e-8);
//! ```

use crate::model::norm::EPS;
use crate::scalar::Real;
use ndarray::{Array1, Array2, Array3, ArrayView1, ArrayView2, ArrayView3, Axis, Zip};

/// Backward of GLU over the feature axis: z (B, 2F, L) → o = a·σ(g) with `a = z[:F]`, `g = z[F:]`;
/// ga = go·σ(g), gg = go·a·σ(g)(1 − σ(g)).
pub fn glu_backward<T: Real>(z: ArrayView3<T>, go: ArrayView3<T>) -> Array3<T> {
    let (b, f2, l) = z.dim();
    let f = f2 / 2;
    let (z, go) = (z.as_standard_layout(), go.as_standard_layout());
    let mut gz = Array3::<T>::zeros((b, f2, l));
    Zip::from(gz.outer_iter_mut()).and(z.outer_iter()).and(go.outer_iter()).par_for_each(|mut gzb, zb, gob| {
        let zs = zb.to_slice().expect("standard layout");
        let gos = gob.to_slice().expect("standard layout");
        let (ga, gg) = gzb.as_slice_mut().expect("a fresh array").split_at_mut(f * l);
        crate::nn::glu_backward_in_place(&zs[..f * l], &zs[f * l..], &gos[..f * l], ga, gg);
    });
    gz
}

/// What BatchNorm's backward needs: the normalized x̂ (B, H, L) and 1/σ per feature (1, H).
#[derive(Clone, Debug)]
pub struct NormCache<T> {
    /// x̂ = (x − μ)/σ.
    pub xhat: Array3<T>,
    /// 1/σ per feature, (1, H).
    pub rstd: Array2<T>,
}

/// BatchNorm in training mode over (B, L) per feature: y = x̂·w + b with the batch mean and biased
/// variance (PyTorch's `BatchNorm1d.train()`). Returns the output, the cache, and the batch mean and
/// unbiased variance for the running statistics.
pub fn batch_norm_forward<T: Real>(
    x: ArrayView3<T>,
    w: ArrayView1<T>,
    bias: ArrayView1<T>,
) -> (Array3<T>, NormCache<T>, Array1<T>, Array1<T>) {
    let (b, h, l) = x.dim();
    let count = (b * l) as f64;
    let mut mean = Array1::<T>::zeros(h);
    let mut var = Array1::<T>::zeros(h);
    for j in 0..h {
        let s = x.index_axis(Axis(1), j);
        let mu = s.iter().fold(0.0, |a, &v| a + v.as_f64()) / count;
        let v = s.iter().fold(0.0, |a, &v| a + (v.as_f64() - mu).powi(2)) / count;
        mean[j] = T::of(mu);
        var[j] = T::of(v);
    }
    let rstd = var.mapv(|v| T::one() / (v + T::of(EPS)).sqrt());
    let mut xhat = x.to_owned();
    let mut y = x.to_owned();
    Zip::from(xhat.outer_iter_mut()).and(y.outer_iter_mut()).par_for_each(|mut xhb, mut yb| {
        for j in 0..h {
            for t in 0..l {
                let xh = (xhb[[j, t]] - mean[j]) * rstd[j];
                xhb[[j, t]] = xh;
                yb[[j, t]] = xh * w[j] + bias[j];
            }
        }
    });
    let unbiased = if b * l > 1 { var.mapv(|v| v * T::of(count / (count - 1.0))) } else { var.clone() };
    let rstd2 = rstd.insert_axis(Axis(0));
    (y, NormCache { xhat, rstd: rstd2 }, mean, unbiased)
}

/// Backward of [`batch_norm_forward`]: per feature, with ĝ = gy·w and means over (B, L),
/// gx = (ĝ − mean(ĝ) − x̂·mean(ĝ x̂))/σ; gw = Σ gy x̂, gb = Σ gy.
pub fn batch_norm_backward<T: Real>(
    cache: &NormCache<T>,
    w: ArrayView1<T>,
    gy: ArrayView3<T>,
) -> (Array3<T>, Array1<T>, Array1<T>) {
    let (b, h, l) = gy.dim();
    let count = T::of((b * l) as f64);
    let mut gw = Array1::<T>::zeros(h);
    let mut gb = Array1::<T>::zeros(h);
    for j in 0..h {
        let (g, xh) = (gy.index_axis(Axis(1), j), cache.xhat.index_axis(Axis(1), j));
        gb[j] = g.iter().fold(T::zero(), |a, &v| a + v);
        gw[j] = Zip::from(&g).and(&xh).fold(T::zero(), |a, &gv, &xv| a + gv * xv);
    }
    let mut gx = gy.to_owned();
    Zip::from(gx.outer_iter_mut()).and(cache.xhat.outer_iter()).par_for_each(|mut gxb, xhb| {
        for j in 0..h {
            let (m1, m2) = (gb[j] * w[j] / count, gw[j] * w[j] / count);
            let r = cache.rstd[[0, j]];
            for t in 0..l {
                gxb[[j, t]] = (gxb[[j, t]] * w[j] - m1 - xhb[[j, t]] * m2) * r;
            }
        }
    });
    (gx, gw, gb)
}

/// The inverted-dropout mask of a (B, F, L) activation: entries are 0 or 1/(1 − p), drawn exactly
/// as the model's training forward draws them (stream seeded by (seed, sequence index)).
pub fn dropout_mask<T: Real>(shape: (usize, usize, usize), p: f64, seed: u64) -> Array3<T> {
    let mut m = Array3::<T>::ones(shape);
    for (i, mb) in m.outer_iter_mut().enumerate() {
        crate::layer::dropout_in_place(mb, p, seed, i);
    }
    m
}

/// Backward of the token embedding: `g_table[token] += gx[b, :, t]` (in position order).
pub fn embedding_backward<T: Real>(tokens: ArrayView2<u32>, gx: ArrayView3<T>, vocab: usize) -> Array2<T> {
    let (b, h, l) = gx.dim();
    let mut g = Array2::<T>::zeros((vocab, h));
    for i in 0..b {
        for t in 0..l {
            let k = tokens[[i, t]] as usize;
            for j in 0..h {
                g[[k, j]] += gx[[i, j, t]];
            }
        }
    }
    g
}

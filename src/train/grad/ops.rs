//! Forward/backward pairs of the pieces around the SSM, as plain functions over (B, F, L) arrays
//! (the llm.c style: each backward takes what its forward saw and the gradient of its output, and
//! returns the gradients of its inputs and weights).
//!
//! Every reduction over the batch (weight gradients) is done per sequence in parallel and then
//! summed in sequence order, so results do not depend on the number of threads.
//!
//! ```
//! use ndarray::array;
//! use s4::train::grad::ops::{cross_entropy, gelu_grad};
//! // GELU′(x) = Φ(x) + x·φ(x): ½ at 0, and against a central difference of x·Φ(x) at 1
//! assert!((gelu_grad(0.0f64) - 0.5).abs() < 1e-15);
//! let phi = |x: f64| 0.5 * (1.0 + s4::scalar::Real::erf(x / 2f64.sqrt()));
//! let h = 1e-5;
//! let fd = ((1.0 + h) * phi(1.0 + h) - (1.0 - h) * phi(1.0 - h)) / (2.0 * h);
//! assert!((gelu_grad(1.0f64) - fd).abs() < 1e-8);
//! // softmax cross-entropy: uniform logits over 4 classes cost ln 4, gradient (softmax − onehot)/rows
//! let (loss, g, correct) = cross_entropy(array![[0.0f64, 0.0, 0.0, 0.0]].view(), &[2]);
//! assert!((loss - 4f64.ln()).abs() < 1e-12);
//! assert!((g[[0, 2]] + 0.75).abs() < 1e-12 && (g[[0, 0]] - 0.25).abs() < 1e-12);
//! assert_eq!(correct, 0); // ties go to the first class
//! ```

use crate::model::norm::EPS;
use crate::nn::sigmoid;
use crate::scalar::Real;
use ndarray::linalg::general_mat_mul;
use ndarray::{Array1, Array2, Array3, ArrayView1, ArrayView2, ArrayView3, Axis, Zip};
use rayon::prelude::*;

/// Sums per-sequence partial results in sequence order (thread-count independent).
fn ordered_sum<T: Real>(parts: Vec<Array2<T>>) -> Array2<T> {
    let mut it = parts.into_iter();
    let mut acc = it.next().expect("at least one sequence");
    for p in it {
        acc += &p;
    }
    acc
}

/// `y[b] = W x[b] + bias` over the feature axis: x (B, F, L), W (O, F), bias (O,) → (B, O, L),
/// one matrix product per sequence, sequences in parallel.
pub fn linear_forward<T: Real>(x: ArrayView3<T>, w: ArrayView2<T>, bias: ArrayView1<T>) -> Array3<T> {
    let (b, _, l) = x.dim();
    let mut y = Array3::<T>::zeros((b, w.nrows(), l));
    y.axis_iter_mut(Axis(0)).into_par_iter().zip(x.axis_iter(Axis(0))).for_each(|(mut yb, xb)| {
        for (mut row, &bv) in yb.outer_iter_mut().zip(bias.iter()) {
            row.fill(bv);
        }
        general_mat_mul(T::one(), &w, &xb, T::one(), &mut yb);
    });
    y
}

/// Backward of [`linear_forward`]: gx = Wᵀ gy, gW = Σ_b gy_b x_bᵀ, gbias = Σ_{b,t} gy.
pub fn linear_backward<T: Real>(
    x: ArrayView3<T>,
    w: ArrayView2<T>,
    gy: ArrayView3<T>,
) -> (Array3<T>, Array2<T>, Array1<T>) {
    let (b, f, l) = x.dim();
    let o = w.nrows();
    let mut gx = Array3::<T>::zeros((b, f, l));
    let parts: Vec<(Array2<T>, Array1<T>)> = gx
        .axis_iter_mut(Axis(0))
        .into_par_iter()
        .zip(x.axis_iter(Axis(0)))
        .zip(gy.axis_iter(Axis(0)))
        .map(|((mut gxb, xb), gyb)| {
            general_mat_mul(T::one(), &w.t(), &gyb, T::zero(), &mut gxb);
            let mut gw = Array2::<T>::zeros((o, f));
            general_mat_mul(T::one(), &gyb, &xb.t(), T::zero(), &mut gw);
            (gw, gyb.sum_axis(Axis(1)))
        })
        .collect();
    let (gws, gbs): (Vec<_>, Vec<_>) = parts.into_iter().unzip();
    let mut gb = Array1::<T>::zeros(o);
    for p in gbs {
        gb += &p;
    }
    (gx, ordered_sum(gws), gb)
}

/// d/dx of the exact GELU x·Φ(x): Φ(x) + x·φ(x).
#[inline]
pub fn gelu_grad<T: Real>(x: T) -> T {
    let half = T::of(0.5);
    let cdf = half * (T::one() + (x * T::of(std::f64::consts::FRAC_1_SQRT_2)).erf());
    let pdf = T::of(1.0 / (2.0 * std::f64::consts::PI).sqrt()) * (-(x * x) * half).exp();
    cdf + x * pdf
}

/// Backward of GLU over the feature axis: z (B, 2F, L) → o = a·σ(g) with `a = z[:F]`, `g = z[F:]`;
/// ga = go·σ(g), gg = go·a·σ(g)(1 − σ(g)).
pub fn glu_backward<T: Real>(z: ArrayView3<T>, go: ArrayView3<T>) -> Array3<T> {
    let (b, f2, l) = z.dim();
    let f = f2 / 2;
    let mut gz = Array3::<T>::zeros((b, f2, l));
    Zip::from(gz.outer_iter_mut()).and(z.outer_iter()).and(go.outer_iter()).par_for_each(|mut gzb, zb, gob| {
        for j in 0..f {
            for t in 0..l {
                let (a, g) = (zb[[j, t]], zb[[f + j, t]]);
                let s = sigmoid(g);
                let gov = gob[[j, t]];
                gzb[[j, t]] = gov * s;
                gzb[[f + j, t]] = gov * a * s * (T::one() - s);
            }
        }
    });
    gz
}

/// What LayerNorm's backward needs: the normalized x̂ (B, H, L) and 1/σ per position (B, L).
#[derive(Clone, Debug)]
pub struct NormCache<T> {
    /// x̂ = (x − μ)/σ.
    pub xhat: Array3<T>,
    /// 1/σ per position (LayerNorm, (B, L)) or per feature (BatchNorm, (1, H)).
    pub rstd: Array2<T>,
}

/// LayerNorm over the feature axis at every position: y = x̂·w + b, x̂ = (x − μ)/√(var + ε)
/// (biased variance, ε = 1e-5, PyTorch's `nn.LayerNorm`).
pub fn layer_norm_forward<T: Real>(
    x: ArrayView3<T>,
    w: ArrayView1<T>,
    bias: ArrayView1<T>,
) -> (Array3<T>, NormCache<T>) {
    let (b, h, l) = x.dim();
    let mut y = Array3::<T>::zeros((b, h, l));
    let mut xhat = Array3::<T>::zeros((b, h, l));
    let mut rstd = Array2::<T>::zeros((b, l));
    let n = T::of(h as f64);
    Zip::from(y.outer_iter_mut())
        .and(xhat.outer_iter_mut())
        .and(rstd.outer_iter_mut())
        .and(x.outer_iter())
        .par_for_each(|mut yb, mut xb_hat, mut rb, xb| {
            let mean = xb.sum_axis(Axis(0)) / n;
            let mut var = Array1::<T>::zeros(l);
            for j in 0..h {
                for t in 0..l {
                    let d = xb[[j, t]] - mean[t];
                    var[t] += d * d;
                }
            }
            for t in 0..l {
                rb[t] = T::one() / (var[t] / n + T::of(EPS)).sqrt();
            }
            for j in 0..h {
                for t in 0..l {
                    let xh = (xb[[j, t]] - mean[t]) * rb[t];
                    xb_hat[[j, t]] = xh;
                    yb[[j, t]] = xh * w[j] + bias[j];
                }
            }
        });
    (y, NormCache { xhat, rstd })
}

/// Backward of [`layer_norm_forward`]: with ĝ = gy·w,
/// gx = (ĝ − mean_H(ĝ) − x̂·mean_H(ĝ x̂))/σ; gw = Σ gy x̂, gb = Σ gy.
pub fn layer_norm_backward<T: Real>(
    cache: &NormCache<T>,
    w: ArrayView1<T>,
    gy: ArrayView3<T>,
) -> (Array3<T>, Array1<T>, Array1<T>) {
    let (b, h, l) = gy.dim();
    let n = T::of(h as f64);
    let mut gx = Array3::<T>::zeros((b, h, l));
    let parts: Vec<(Array1<T>, Array1<T>)> = gx
        .axis_iter_mut(Axis(0))
        .into_par_iter()
        .enumerate()
        .map(|(i, mut gxb)| {
            let (xh, gyb, r) = (cache.xhat.index_axis(Axis(0), i), gy.index_axis(Axis(0), i), cache.rstd.row(i));
            let mut m1 = vec![T::zero(); l];
            let mut m2 = vec![T::zero(); l];
            let mut gw = Array1::<T>::zeros(h);
            let mut gb = Array1::<T>::zeros(h);
            for j in 0..h {
                for t in 0..l {
                    let g = gyb[[j, t]] * w[j];
                    m1[t] += g;
                    m2[t] += g * xh[[j, t]];
                    gw[j] += gyb[[j, t]] * xh[[j, t]];
                    gb[j] += gyb[[j, t]];
                }
            }
            for j in 0..h {
                for t in 0..l {
                    let g = gyb[[j, t]] * w[j];
                    gxb[[j, t]] = (g - m1[t] / n - xh[[j, t]] * m2[t] / n) * r[t];
                }
            }
            (gw, gb)
        })
        .collect();
    let mut gw = Array1::<T>::zeros(h);
    let mut gb = Array1::<T>::zeros(h);
    for (a, c) in parts {
        gw += &a;
        gb += &c;
    }
    (gx, gw, gb)
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

/// Softmax cross-entropy averaged over rows: logits (R, C), labels (R,); returns the mean loss, the
/// gradient (softmax − onehot)/R, and the number of correct argmax predictions.
pub fn cross_entropy<T: Real>(logits: ArrayView2<T>, labels: &[u32]) -> (f64, Array2<T>, usize) {
    let (r, c) = logits.dim();
    let mut g = Array2::<T>::zeros((r, c));
    let mut loss = 0.0;
    let mut correct = 0;
    for i in 0..r {
        let row = logits.row(i);
        let mx = row.iter().fold(f64::NEG_INFINITY, |m, &v| m.max(v.as_f64()));
        let z: f64 = row.iter().map(|&v| (v.as_f64() - mx).exp()).sum();
        let y = labels[i] as usize;
        loss += z.ln() + mx - row[y].as_f64();
        let arg = (0..c).fold(0, |a, k| if row[k].as_f64() > row[a].as_f64() { k } else { a });
        correct += usize::from(arg == y);
        for k in 0..c {
            let p = (row[k].as_f64() - mx).exp() / z;
            g[[i, k]] = T::of((p - if k == y { 1.0 } else { 0.0 }) / r as f64);
        }
    }
    (loss / r as f64, g, correct)
}

/// KL(p ‖ softmax(z)) averaged over rows: logits z (R, C), target probabilities p (R, C); returns
/// the mean Σₖ pₖ(ln pₖ − log softmax(z)ₖ) and its gradient (softmax(z) − p)/R (0·ln 0 = 0).
pub fn kl_divergence<T: Real>(logits: ArrayView2<T>, p: ArrayView2<f32>) -> (f64, Array2<T>) {
    let (r, c) = logits.dim();
    let mut g = Array2::<T>::zeros((r, c));
    let mut loss = 0.0;
    for i in 0..r {
        let row = logits.row(i);
        let mx = row.iter().fold(f64::NEG_INFINITY, |m, &v| m.max(v.as_f64()));
        let log_z = row.iter().map(|&v| (v.as_f64() - mx).exp()).sum::<f64>().ln() + mx;
        for k in 0..c {
            let pk = p[[i, k]] as f64;
            let log_q = row[k].as_f64() - log_z;
            if pk > 0.0 {
                loss += pk * (pk.ln() - log_q);
            }
            g[[i, k]] = T::of((log_q.exp() - pk) / r as f64);
        }
    }
    (loss / r as f64, g)
}

/// Mean squared error over rows: pred (R,), target (R,); returns the loss and its gradient 2(p − y)/R.
pub fn mse<T: Real>(pred: ArrayView1<T>, target: &[f32]) -> (f64, Array1<T>) {
    let r = pred.len();
    let mut loss = 0.0;
    let g = Array1::from_shape_fn(r, |i| {
        let d = pred[i].as_f64() - target[i] as f64;
        loss += d * d;
        T::of(2.0 * d / r as f64)
    });
    (loss / r as f64, g)
}

//! Normalization over the feature axis of (B, H, L) sequences: LayerNorm, and BatchNorm with
//! running statistics (evaluation mode).
//!
//! With ε = [`EPS`], for each position's feature vector x (H,):
//! - LayerNorm: y = (x − mean(x)) / √(var(x) + ε) · γ + β (biased variance over the H features);
//! - BatchNorm: y_h = (x_h − running_mean_h) / √(running_var_h + ε) · γ_h + β_h.
//!
//! # Example
//!
//! ```
//! use ndarray::{array, Array3};
//! use s4::model::norm::{Norm, NormKind, EPS};
//!
//! // LayerNorm: every position of a (B, H, L) = (1, 4, 2) sequence gets mean 0, variance ≈ 1
//! let ln = Norm::<f64>::new(NormKind::Layer, 4);
//! let x = Array3::from_shape_vec((1, 4, 2), vec![1.0, 10.0, 2.0, 20.0, 3.0, 30.0, 6.0, 60.0]).unwrap();
//! let y = ln.forward(x.view());
//! for t in 0..2 {
//!     let col = y.slice(ndarray::s![0, .., t]);
//!     assert!(col.sum().abs() < 1e-12);
//!     assert!((col.mapv(|v| v * v).mean().unwrap() - 1.0).abs() < 1e-5);
//! }
//!
//! // BatchNorm in evaluation mode: the running statistics, per feature
//! let mut bn = Norm::<f64>::new(NormKind::Batch, 2);
//! bn.running_mean = array![1.0, -1.0];
//! bn.running_var = array![4.0, 1.0];
//! bn.weight = array![2.0, 1.0];
//! let y = bn.forward_step(array![[3.0, 0.0]].view()); // one step, (B, H)
//! assert!((y[[0, 0]] - (3.0 - 1.0) / (4.0 + EPS).sqrt() * 2.0).abs() < 1e-12);
//! assert!((y[[0, 1]] - 1.0 / (1.0 + EPS).sqrt()).abs() < 1e-12);
//!
//! bn.running_var[1] = -1.0;
//! assert!(bn.validate("norm", 2).is_err()); // a negative variance
//! assert!(ln.validate("norm", 3).is_err()); // 4 features, not 3
//! ```

use crate::error::{Error, Result};
use crate::nn::norm::layer_norm_row;
use crate::nn::{feature_rows, from_feature_rows};
use crate::scalar::Real;
use ndarray::{Array1, Array2, Array3, ArrayView2, ArrayView3};

/// Which normalization a residual block uses.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum NormKind {
    /// LayerNorm over the H features of each position.
    Layer,
    /// BatchNorm per feature with running statistics (the LRA configurations).
    Batch,
}

/// A normalization layer's weights.
#[derive(Clone, Debug, PartialEq)]
pub struct Norm<T> {
    /// Kind.
    pub kind: NormKind,
    /// Scale γ (H,).
    pub weight: Array1<T>,
    /// Shift β (H,).
    pub bias: Array1<T>,
    /// BatchNorm running mean (H,) (zeros for LayerNorm, unused).
    pub running_mean: Array1<T>,
    /// BatchNorm running variance (H,) (ones for LayerNorm, unused).
    pub running_var: Array1<T>,
}

/// ε of PyTorch's LayerNorm and BatchNorm.
pub const EPS: f64 = 1e-5;

impl<T: Real> Norm<T> {
    /// γ = 1, β = 0, running mean 0 and variance 1.
    pub fn new(kind: NormKind, h: usize) -> Self {
        Norm {
            kind,
            weight: Array1::ones(h),
            bias: Array1::zeros(h),
            running_mean: Array1::zeros(h),
            running_var: Array1::ones(h),
        }
    }

    /// Number of features.
    pub fn features(&self) -> usize {
        self.weight.len()
    }

    /// Checks that all vectors have length `h` and are finite, and that the running variances
    /// are ≥ 0.
    ///
    /// # Errors
    /// The first bad vector, named `{name}.{weight|bias|running_mean|running_var}`.
    pub fn validate(&self, name: &str, h: usize) -> Result<()> {
        for (what, v) in [
            ("weight", &self.weight),
            ("bias", &self.bias),
            ("running_mean", &self.running_mean),
            ("running_var", &self.running_var),
        ] {
            if v.len() != h {
                return Err(Error::shape(format!("{name}.{what}"), format!("({h},)"), v.shape()));
            }
            if v.iter().any(|x| !x.is_finite()) {
                return Err(Error::invalid(format!("{name}.{what}"), "non-finite values", "finite values"));
            }
        }
        if self.running_var.iter().any(|&v| v < T::zero()) {
            return Err(Error::invalid(format!("{name}.running_var"), "negative entries", "variances >= 0"));
        }
        Ok(())
    }

    /// Normalizes a (B, H, L) sequence over its feature axis (evaluation mode for BatchNorm; see
    /// the module docs for the formulas). H must be [`features`](Self::features).
    pub fn forward(&self, x: ArrayView3<T>) -> Array3<T> {
        let (b, _, l) = x.dim();
        from_feature_rows(self.forward_step(feature_rows(x).view()), b, l)
    }

    /// Normalizes feature vectors given as rows (N, H): one step's features (B, H), or every
    /// position of [`forward`](Self::forward). LayerNorm is [`crate::nn::norm::layer_norm`];
    /// BatchNorm (evaluation mode) (x − running mean)/√(running var + ε)·w + b.
    pub fn forward_step(&self, x: ArrayView2<T>) -> Array2<T> {
        let x = x.as_standard_layout();
        let mut y = Array2::<T>::zeros(x.dim());
        self.forward_rows(x.as_slice().expect("standard layout"), y.as_slice_mut().expect("a fresh array"));
        y
    }

    /// [`forward_step`](Self::forward_step) on row-major slices x and y (N·H), into a buffer the
    /// caller keeps.
    pub(crate) fn forward_rows(&self, x: &[T], y: &mut [T]) {
        let h = self.weight.len().max(1);
        assert!(x.len() == y.len() && x.len().is_multiple_of(h), "rows of {h} features");
        let (w, b) = (self.weight.as_slice().expect("a weight vector"), self.bias.as_slice().expect("a bias vector"));
        match self.kind {
            NormKind::Layer => {
                for (xr, yr) in x.chunks_exact(h).zip(y.chunks_exact_mut(h)) {
                    layer_norm_row(xr, w, b, T::of(EPS), yr, None);
                }
            }
            NormKind::Batch => {
                let eps = T::of(EPS);
                for (xr, yr) in x.chunks_exact(h).zip(y.chunks_exact_mut(h)) {
                    for (i, (v, out)) in xr.iter().zip(yr.iter_mut()).enumerate() {
                        *out = (*v - self.running_mean[i]) / (self.running_var[i] + eps).sqrt() * w[i] + b[i];
                    }
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn layer_norm_zero_mean_unit_variance() {
        let n = Norm::<f64>::new(NormKind::Layer, 4);
        let x = Array3::from_shape_vec((1, 4, 1), vec![1.0, 2.0, 3.0, 6.0]).unwrap();
        let y = n.forward(x.view());
        let mean: f64 = y.iter().sum::<f64>() / 4.0;
        let var: f64 = y.iter().map(|v| (v - mean) * (v - mean)).sum::<f64>() / 4.0;
        assert!(mean.abs() < 1e-15 && (var - 1.0 / (1.0 + EPS / 3.5)).abs() < 1e-12);
    }

    #[test]
    fn batch_norm_uses_running_statistics() {
        let mut n = Norm::<f64>::new(NormKind::Batch, 2);
        n.running_mean = ndarray::array![1.0, -1.0];
        n.running_var = ndarray::array![4.0, 1.0];
        n.weight = ndarray::array![2.0, 1.0];
        let y = n.forward_step(ndarray::array![[3.0, 0.0]].view());
        assert!((y[[0, 0]] - 2.0 * 2.0 / (4.0 + EPS).sqrt()).abs() < 1e-12);
        assert!((y[[0, 1]] - 1.0 / (1.0 + EPS).sqrt()).abs() < 1e-12);
    }
}

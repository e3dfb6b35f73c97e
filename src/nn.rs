//! The small neural-network pieces around the SSM, as plain functions over arrays (the llm.c
//! style): GELU, GLU, and the feature-axis linear map of (B, F, L) sequences.
//!
//! # Example
//!
//! The tail of an S4 layer, GELU → Linear(F → 2F) → GLU, on a (B, F, L) = (1, 2, 3) sequence:
//!
//! ```
//! use ndarray::{array, Array3};
//! use s4::nn::{gelu, glu_features, linear_features, sigmoid};
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

use crate::scalar::Real;
use ndarray::{Array2, Array3, ArrayView1, ArrayView2, ArrayView3, Axis};

/// Exact GELU: x·Φ(x) = ½x(1 + erf(x/√2)) (PyTorch's default `nn.GELU()`).
#[inline]
pub fn gelu<T: Real>(x: T) -> T {
    let half = T::of(0.5);
    half * x * (T::one() + (x * T::of(std::f64::consts::FRAC_1_SQRT_2)).erf())
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

/// `y[b, o, t] = Σ_i W[o, i]·x[b, i, t] + bias[o]`: a linear map over the feature axis of a (B, F, L)
/// sequence (PyTorch's `nn.Linear` applied to the transposed layout, or a kernel-size-1 `Conv1d`).
///
/// # Panics
/// If W is not (O, F) or bias is not (O,) (shapes are validated by the layers that own them).
pub fn linear_features<T: Real>(x: ArrayView3<T>, w: ArrayView2<T>, bias: ArrayView1<T>) -> Array3<T> {
    let (b, f, l) = x.dim();
    assert_eq!(w.ncols(), f, "linear_features: W must be (O, F)");
    assert_eq!(bias.len(), w.nrows(), "linear_features: bias must be (O,)");
    let mut y = Array3::zeros((b, w.nrows(), l));
    for (xb, mut yb) in x.outer_iter().zip(y.outer_iter_mut()) {
        let z: Array2<T> = w.dot(&xb);
        ndarray::Zip::from(&mut yb)
            .and(&z)
            .and_broadcast(&bias.view().insert_axis(Axis(1)))
            .for_each(|y, &z, &b| *y = z + b);
    }
    y
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
    Array3::from_shape_fn((b, f, l), |(i, j, t)| z[[i, j, t]] * sigmoid(z[[i, f + j, t]]))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn gelu_matches_known_values() {
        // values of 0.5 x (1 + erf(x / sqrt 2)) from the closed form
        assert_eq!(gelu(0.0f64), 0.0);
        assert!((gelu(1.0f64) - 0.8413447460685429).abs() < 1e-15);
        assert!((gelu(-2.0f64) - (-0.04550026389635842)).abs() < 1e-15);
        assert!((gelu(3.0f32) - 2.9959502).abs() < 1e-6);
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

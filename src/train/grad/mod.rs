//! Backward passes, one forward/backward pair per piece (llm.c style), and the whole-model
//! training step built from them. Every backward is checked against central finite differences in
//! f64 (tests/suite/grad.rs).
//!
//! ```
//! use ndarray::{Array2, Array3};
//! use s4::nn::linear::{linear_features, linear_features_backward};
//! // a backward pass against central differences: loss = Σ gy ⊙ linear(x)
//! let x = Array3::from_shape_fn((2, 3, 4), |(b, f, l)| ((b * 12 + f * 4 + l) as f64 * 0.37).sin());
//! let w = Array2::from_shape_fn((5, 3), |(o, f)| ((o * 3 + f) as f64 * 0.91).cos());
//! let bias = ndarray::Array1::from_vec(vec![0.1, -0.2, 0.3, 0.0, 0.5]);
//! let gy = Array3::from_shape_fn((2, 5, 4), |(b, o, l)| ((b + o + l) as f64 * 0.53).sin());
//! let loss = |w: &Array2<f64>| (&linear_features(x.view(), w.view(), bias.view()) * &gy).sum();
//! let (_, gw, _) = linear_features_backward(x.view(), w.view(), gy.view());
//! let (h, mut wp, mut wm) = (1e-6, w.clone(), w.clone());
//! wp[[1, 2]] += h;
//! wm[[1, 2]] -= h;
//! assert!(((loss(&wp) - loss(&wm)) / (2.0 * h) - gw[[1, 2]]).abs() < 1e-8);
//! ```

pub mod conv;
pub mod kernel;
pub mod model;
pub mod ops;

pub use conv::{conv_backward, ConvGrads};
pub use kernel::{diag_kernel_backward, dplr_kernel_backward, SsmGrads};
pub use model::{
    evaluate_loss, first_non_finite, for_each_tensor, forward_backward, squared_norm, tensors_mut, zeros_like,
    LossStats, ParamGroup, Parameters, Target, TensorMut, TrainOptions,
};

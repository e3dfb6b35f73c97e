//! Trainable parameters as the optimizer sees them: every tensor of a model by name, with its
//! optimizer group, as one flat slice ([`Parameters`], implemented beside each model), and the
//! reductions over them (gradient norm, clipping, the first non-finite entry).
//!
//! ```
//! use s4::nn::params::{clip_grad_norm, ParamGroup, Parameters, TensorMut};
//!
//! #[derive(Clone)]
//! struct Affine { w: Vec<f64>, b: Vec<f64> }
//! impl Parameters for Affine {
//!     type Scalar = f64;
//!     fn parameters_mut(&mut self) -> Vec<TensorMut<'_, f64>> {
//!         vec![
//!             TensorMut { name: "w".into(), group: ParamGroup::Decay, values: &mut self.w },
//!             TensorMut { name: "b".into(), group: ParamGroup::NoDecay, values: &mut self.b },
//!         ]
//!     }
//!     fn zeros_like(&self) -> Self {
//!         Affine { w: vec![0.0; self.w.len()], b: vec![0.0; self.b.len()] }
//!     }
//! }
//! // the global norm of (3, 4) is 5; clipping to 1 scales every entry by 1/(5 + 1e-6)
//! let mut g = Affine { w: vec![3.0], b: vec![4.0] };
//! assert_eq!(clip_grad_norm(&mut g, Some(1.0)), 5.0);
//! assert!((g.w[0] - 3.0 / (5.0 + 1e-6)).abs() < 1e-15);
//! ```

use crate::error::Result;
use crate::scalar::Real;
use std::path::Path;

/// Which optimizer settings a trainable tensor takes (the official S4 `register` groups; the
/// transformer uses only [`Decay`](ParamGroup::Decay) and [`NoDecay`](ParamGroup::NoDecay)).
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ParamGroup {
    /// Δ (`inv_dt`): SSM learning rate for Δ, no weight decay.
    Dt,
    /// A (`A_real`, `A_imag`, `P`): SSM learning rate for A, no weight decay.
    A,
    /// `B`: SSM learning rate for B, no weight decay.
    B,
    /// Other weights (C, D, linear layers): global learning rate and weight decay.
    Decay,
    /// Biases, norm parameters and embeddings: global learning rate, no weight decay.
    NoDecay,
}

/// A trainable tensor of a model: its checkpoint name, optimizer group, and values (complex
/// tensors viewed as interleaved (re, im) pairs, as PyTorch's `view_as_real`).
#[derive(Debug)]
pub struct TensorMut<'a, T> {
    /// The checkpoint name, e.g. `layers.0.layer.kernel.B`.
    pub name: String,
    /// Optimizer group.
    pub group: ParamGroup,
    /// The values, flat.
    pub values: &'a mut [T],
}

/// A trainable model as the optimizer and the trainers see it: its tensors by name and group, and a
/// zero model of the same shape (the shape of its gradient and of the AdamW moments). Implemented
/// beside each model: [`S4Model`](crate::model::S4Model),
/// [`TransformerClassifier`](crate::transformer::TransformerClassifier) and
/// [`Gpt`](crate::transformer::Gpt).
pub trait Parameters: Clone {
    /// The precision.
    type Scalar: Real;

    /// Every trainable tensor, in a fixed order (the same for any two models of one
    /// configuration, so a model, its gradient and the optimizer moments line up entry by entry).
    fn parameters_mut(&mut self) -> Vec<TensorMut<'_, Self::Scalar>>;

    /// A model of the same shape with every trainable entry (and every running statistic) 0.
    fn zeros_like(&self) -> Self;
}

/// The first non-finite entry among a model's trainable tensors, as `"name[index]"`.
pub fn first_non_finite<M: Parameters>(model: &mut M) -> Option<String> {
    model
        .parameters_mut()
        .into_iter()
        .find_map(|t| t.values.iter().position(|v| !v.as_f64().is_finite()).map(|i| format!("{}[{i}]", t.name)))
}

/// Sum of squares of every trainable entry, in f64 (for gradient norms).
pub fn squared_norm<M: Parameters>(model: &mut M) -> f64 {
    model.parameters_mut().iter().map(|t| t.values.iter().map(|v| v.as_f64() * v.as_f64()).sum::<f64>()).sum()
}

/// The global L2 norm of `grads`; if it exceeds `max_norm`, scales every entry by
/// max_norm/(norm + 1e-6) (`torch.nn.utils.clip_grad_norm_`). Returns the norm before clipping.
pub fn clip_grad_norm<M: Parameters>(grads: &mut M, max_norm: Option<f64>) -> f64 {
    let norm = squared_norm(grads).sqrt();
    if let Some(mx) = max_norm.filter(|&mx| norm > mx) {
        let f = M::Scalar::of(mx / (norm + 1e-6));
        for t in grads.parameters_mut() {
            t.values.iter_mut().for_each(|v| *v *= f);
        }
    }
    norm
}

/// A model the training loop can train and checkpoint: f32 [`Parameters`] and a model folder
/// (`config.json` + `model.safetensors`) of its own `"format"`. Implemented beside each model.
pub trait Trainable: Parameters<Scalar = f32> + Send + Sync {
    /// The `"format"` of the model folder (e.g. `s4-model`).
    const FORMAT: &'static str;

    /// Writes the model folder into `dir`.
    ///
    /// # Errors
    /// I/O errors.
    fn save_folder(&self, dir: &Path) -> Result<()>;

    /// Reads what [`save_folder`](Self::save_folder) wrote.
    ///
    /// # Errors
    /// Missing or invalid files.
    fn load_folder(dir: &Path) -> Result<Self>;
}

//! Backward passes, one forward/backward pair per piece (llm.c style), and the whole-model
//! training step built from them. Every backward is checked against central finite differences in
//! f64 (tests/grad.rs).

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

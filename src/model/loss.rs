//! What a model's output is compared with in training and evaluation ([`Target`]), the statistics
//! of one loss evaluation ([`LossStats`]), and the checks every model family runs on them (the S4
//! models and the transformer classifier share them).

use super::Pooling;
use crate::error::{Error, Result};
use ndarray::ArrayView3;

/// What the loss compares the model's output with.
#[derive(Clone, Copy, Debug)]
pub enum Target<'a> {
    /// A class per sequence (pooled models): softmax cross-entropy.
    Classes(&'a [u32]),
    /// A value per sequence (pooled models with d_output = 1): mean squared error.
    Values(&'a [f32]),
    /// A class per position (B, L) (unpooled models, e.g. next-token prediction): cross-entropy
    /// averaged over the valid positions.
    Tokens(ndarray::ArrayView2<'a, u32>),
    /// Distillation of an unpooled model: next tokens (B, L) as in [`Target::Tokens`], plus a
    /// teacher's next-token distribution at every position (B, L, V). Loss per position:
    /// CE(tokens) + `soft_weight`·KL(teacher ‖ model) (Mamba-in-the-Llama, Wang et al. 2024,
    /// eq. 2 with α = 1, β = `soft_weight`); averaged over the valid positions.
    Distill {
        /// Hard targets (B, L).
        tokens: ndarray::ArrayView2<'a, u32>,
        /// Teacher probabilities (B, L, V), each row summing to 1.
        teacher: ArrayView3<'a, f32>,
        /// Weight β of the KL term.
        soft_weight: f64,
    },
}

/// Loss and counts of one forward pass.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct LossStats {
    /// Mean loss over the predictions.
    pub loss: f64,
    /// Correct argmax predictions (classification).
    pub correct: usize,
    /// Number of predictions (sequences, or valid positions).
    pub count: usize,
}

/// Checks per-sequence lengths: one per sequence, each in 1..=`len`.
///
/// # Errors
/// Another count, or a length outside 1..=`len`.
pub fn check_lengths(lengths: Option<&[usize]>, batch: usize, len: usize) -> Result<()> {
    if let Some(l) = lengths {
        if l.len() != batch {
            return Err(Error::shape("lengths", format!("({batch},)"), &[l.len()]));
        }
        if let Some((i, &n)) = l.iter().enumerate().find(|&(_, &n)| n == 0 || n > len) {
            return Err(Error::invalid(format!("lengths[{i}]"), n, format!("in 1..=L = {len}")));
        }
    }
    Ok(())
}

/// Checks that a target fits the model's pooling and output size.
///
/// # Errors
/// A target of the wrong kind, count or shape, a class ≥ `d_output`, a non-finite value.
pub fn check_target(target: &Target, pooling: Pooling, d_output: usize, batch: usize, len: usize) -> Result<()> {
    match (target, pooling) {
        (Target::Classes(y), Pooling::Mean | Pooling::Last) => {
            check_targets(y.len(), batch)?;
            if let Some((i, &c)) = y.iter().enumerate().find(|&(_, &c)| c as usize >= d_output) {
                return Err(Error::invalid(format!("label {i}"), c, format!("< d_output = {d_output}")));
            }
        }
        (Target::Values(y), Pooling::Mean | Pooling::Last) => {
            check_targets(y.len(), batch)?;
            if d_output != 1 {
                return Err(Error::invalid("d_output", d_output, "1 for a regression target"));
            }
            if let Some((i, v)) = y.iter().enumerate().find(|(_, v)| !v.is_finite()) {
                return Err(Error::invalid(format!("target {i}"), v, "a finite value"));
            }
        }
        (Target::Tokens(y), Pooling::None) => {
            if y.dim() != (batch, len) {
                return Err(Error::shape("target tokens", format!("({batch}, {len})"), y.shape()));
            }
            if let Some(((b, t), &c)) = y.indexed_iter().find(|&(_, &c)| c as usize >= d_output) {
                return Err(Error::invalid(format!("target token [{b}, {t}]"), c, format!("< d_output = {d_output}")));
            }
        }
        (Target::Distill { tokens, teacher, soft_weight }, Pooling::None) => {
            check_target(&Target::Tokens(*tokens), pooling, d_output, batch, len)?;
            if teacher.dim() != (batch, len, d_output) {
                return Err(Error::shape(
                    "teacher probabilities",
                    format!("({batch}, {len}, {d_output})"),
                    teacher.shape(),
                ));
            }
            if let Some((i, _)) = teacher.indexed_iter().find(|(_, p)| !(p.is_finite() && **p >= 0.0)) {
                return Err(Error::invalid(format!("teacher probability {i:?}"), teacher[i], "a finite value >= 0"));
            }
            if !(soft_weight.is_finite() && *soft_weight >= 0.0) {
                return Err(Error::invalid("soft_weight", soft_weight, "a finite value >= 0"));
            }
        }
        (Target::Tokens(_) | Target::Distill { .. }, _) => {
            return Err(Error::invalid("target", "per-position tokens", "one target per sequence (pooled model)"))
        }
        (_, Pooling::None) => {
            return Err(Error::invalid("target", "one per sequence", "per-position tokens (B, L) (unpooled model)"))
        }
    }
    Ok(())
}

fn check_targets(n: usize, batch: usize) -> Result<()> {
    if n != batch {
        return Err(Error::shape("targets", format!("({batch},)"), &[n]));
    }
    Ok(())
}

//! AdamW with the official S4 parameter groups, the learning-rate [schedules](super::schedule), and
//! gradient-norm clipping ([`clip_grad_norm`]).
//!
//! Groups (s4-math note §1.7, the official `register` hook and `optimizer_param_grouping`):
//! Δ, A (Re/Im Λ, P) and B each have their own learning rate (`None` = the global one) and no
//! weight decay; biases and norm parameters have the global learning rate and no weight decay;
//! everything else (C, D, linears, embedding) the global learning rate and weight decay.
//!
//! AdamW (Loshchilov & Hutter; PyTorch's `torch.optim.AdamW`), per entry, at step t ≥ 1 with
//! learning rate η and decay λ:
//! θ ← θ(1 − ηλ); m ← β₁m + (1 − β₁)g; v ← β₂v + (1 − β₂)g²;
//! θ ← θ − η·(m/(1 − β₁ᵗ)) / (√(v/(1 − β₂ᵗ)) + ε).
//!
//! ```
//! use s4::train::{OptimConfig, Schedule};
//! let cfg = OptimConfig { warmup_fraction: 0.1, schedule: Schedule::Cosine, ..Default::default() };
//! // linear warmup over the first 10 of 100 steps, then cosine from 1 down to 0
//! assert_eq!(cfg.lr_factor(0, 100), 0.0);
//! assert!((cfg.lr_factor(5, 100) - 0.5).abs() < 1e-12);
//! assert!((cfg.lr_factor(10, 100) - 1.0).abs() < 1e-12);
//! assert!((cfg.lr_factor(55, 100) - 0.5).abs() < 1e-12);
//! assert!(cfg.lr_factor(100, 100).abs() < 1e-12);
//! // bad settings are errors that name the value
//! let bad = OptimConfig { lr: -1.0, ..Default::default() };
//! assert!(bad.validate().unwrap_err().to_string().contains("lr"));
//! ```

pub use super::schedule::Schedule;
use crate::error::{Error, Result};
use crate::nn::params::{clip_grad_norm, ParamGroup, Parameters};
use crate::scalar::Real;

/// Optimizer settings (plain struct; `Default` is the official S4 defaults for a generic task).
#[derive(Clone, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct OptimConfig {
    /// Global learning rate.
    pub lr: f64,
    /// Global weight decay (decoupled).
    pub weight_decay: f64,
    /// Learning rate of Δ (`None`: the global one; 0 freezes Δ, as the official `lr=0.0` makes it a
    /// buffer).
    pub lr_dt: Option<f64>,
    /// Learning rate of A = (Re Λ, Im Λ, P) (`None`: the global one; 0 freezes A).
    pub lr_a: Option<f64>,
    /// Learning rate of B (`None`: the global one; 0 freezes B, e.g. at 1 for a model exported to
    /// `example.py`'s S4D, which has no B).
    pub lr_b: Option<f64>,
    /// Adam β₁.
    pub beta1: f64,
    /// Adam β₂.
    pub beta2: f64,
    /// Adam ε.
    pub eps: f64,
    /// Fraction of all steps spent in linear warmup (see `warmup_steps`).
    pub warmup_fraction: f64,
    /// Warmup steps, if given (instead of `warmup_fraction`).
    pub warmup_steps: Option<u64>,
    /// Schedule after warmup.
    pub schedule: Schedule,
    /// Clip the global gradient norm to this value (`None`: no clipping).
    pub grad_clip: Option<f64>,
}

impl Default for OptimConfig {
    fn default() -> Self {
        OptimConfig {
            lr: 0.01,
            weight_decay: 0.05,
            lr_dt: Some(0.001),
            lr_a: Some(0.001),
            lr_b: Some(0.001),
            beta1: 0.9,
            beta2: 0.999,
            eps: 1e-8,
            warmup_fraction: 0.1,
            warmup_steps: None,
            schedule: Schedule::Cosine,
            grad_clip: None,
        }
    }
}

impl OptimConfig {
    /// Checks every value (positive rates, β in [0, 1), fractions in [0, 1]).
    ///
    /// # Errors
    /// The first invalid field, by name.
    pub fn validate(&self) -> Result<()> {
        let pos = |name: &str, v: f64| {
            if v.is_finite() && v > 0.0 {
                Ok(())
            } else {
                Err(Error::invalid(name, v, "a finite value > 0"))
            }
        };
        pos("lr", self.lr)?;
        for (n, v) in [("lr_dt", self.lr_dt), ("lr_a", self.lr_a), ("lr_b", self.lr_b)] {
            if let Some(v) = v
                && !(v.is_finite() && v >= 0.0)
            {
                return Err(Error::invalid(n, v, "a finite value >= 0 (0 freezes the group)"));
            }
        }
        pos("eps", self.eps)?;
        if let Some(c) = self.grad_clip {
            pos("grad_clip", c)?;
        }
        for (n, v) in [("beta1", self.beta1), ("beta2", self.beta2)] {
            if !(0.0..1.0).contains(&v) {
                return Err(Error::invalid(n, v, "a value in [0, 1)"));
            }
        }
        if !(self.weight_decay.is_finite() && self.weight_decay >= 0.0) {
            return Err(Error::invalid("weight_decay", self.weight_decay, "a finite value >= 0"));
        }
        if !(0.0..=1.0).contains(&self.warmup_fraction) {
            return Err(Error::invalid("warmup_fraction", self.warmup_fraction, "a value in [0, 1]"));
        }
        if let Schedule::NanoGpt { min_factor } = self.schedule
            && !(0.0..=1.0).contains(&min_factor)
        {
            return Err(Error::invalid("schedule min_factor", min_factor, "a value in [0, 1] (min_lr <= lr)"));
        }
        Ok(())
    }

    /// (learning rate, weight decay) of a group before the schedule.
    pub fn group_settings(&self, group: ParamGroup) -> (f64, f64) {
        match group {
            ParamGroup::Dt => (self.lr_dt.unwrap_or(self.lr), 0.0),
            ParamGroup::A => (self.lr_a.unwrap_or(self.lr), 0.0),
            ParamGroup::B => (self.lr_b.unwrap_or(self.lr), 0.0),
            ParamGroup::Decay => (self.lr, self.weight_decay),
            ParamGroup::NoDecay => (self.lr, 0.0),
        }
    }

    /// The schedule's multiplier at 0-based `step` of `total` steps, with `warmup_steps`, or
    /// round(`warmup_fraction`·total) steps of warmup ([`Schedule::factor`]).
    pub fn lr_factor(&self, step: u64, total: u64) -> f64 {
        let warmup = self.warmup_steps.unwrap_or_else(|| (self.warmup_fraction * total as f64).round() as u64);
        self.schedule.factor(step, warmup, total)
    }
}

/// AdamW state: the step count and the first and second moments, stored as models of the same
/// shape as the trained one (`M` = [`S4Model`](crate::model::S4Model) or
/// [`TransformerClassifier`](crate::transformer::TransformerClassifier): any [`Parameters`]).
#[derive(Clone, Debug)]
pub struct AdamW<M> {
    /// Settings.
    pub config: OptimConfig,
    /// Steps taken.
    pub step: u64,
    /// First moments.
    pub m: M,
    /// Second moments.
    pub v: M,
}

/// What one optimizer step did.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct StepInfo {
    /// Global gradient norm before clipping.
    pub grad_norm: f64,
    /// The schedule's multiplier used.
    pub lr_factor: f64,
}

impl<M: Parameters> AdamW<M> {
    /// Fresh state (zero moments) for `model`.
    ///
    /// # Errors
    /// An invalid configuration.
    pub fn new(model: &M, config: OptimConfig) -> Result<Self> {
        config.validate()?;
        Ok(AdamW { config, step: 0, m: model.zeros_like(), v: model.zeros_like() })
    }

    /// One AdamW step on `model` with gradients `grads` (clipped in place if `grad_clip` is set),
    /// at schedule position `self.step` of `total_steps`.
    pub fn step(&mut self, model: &mut M, grads: &mut M, total_steps: u64) -> StepInfo {
        let c = &self.config;
        let grad_norm = clip_grad_norm(grads, c.grad_clip);
        let factor = c.lr_factor(self.step, total_steps);
        self.step += 1;
        let t = self.step as i32;
        let (bc1, bc2) = (1.0 - c.beta1.powi(t), 1.0 - c.beta2.powi(t));
        let of = <M::Scalar as Real>::of;
        let one = <M::Scalar as num_traits::One>::one();
        let (b1, b2, eps) = (of(c.beta1), of(c.beta2), c.eps);
        let params = model.parameters_mut();
        let gs = grads.parameters_mut();
        let ms = self.m.parameters_mut();
        let vs = self.v.parameters_mut();
        for (((p, g), m), v) in params.into_iter().zip(gs).zip(ms).zip(vs) {
            let (lr, wd) = c.group_settings(p.group);
            let lr = lr * factor;
            let decay = of(1.0 - lr * wd);
            for i in 0..p.values.len() {
                let gi = g.values[i];
                m.values[i] = b1 * m.values[i] + (one - b1) * gi;
                v.values[i] = b2 * v.values[i] + (one - b2) * gi * gi;
                let mhat = m.values[i].as_f64() / bc1;
                let vhat = v.values[i].as_f64() / bc2;
                p.values[i] = p.values[i] * decay - of(lr * mhat / (vhat.sqrt() + eps));
            }
        }
        StepInfo { grad_norm, lr_factor: factor }
    }
}

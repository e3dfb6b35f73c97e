//! Training the transformer language model (nanoGPT's `train.py` without dropout or gradient
//! accumulation) on the [generic loop](super::trainer): random windows of `context + 1` tokens,
//! AdamW (decay on the 2-D tensors), linear warmup then cosine decay to `min_lr`
//! ([`Schedule::NanoGpt`]), global-norm clipping, data parallel over the batch; a round is
//! `eval_every` steps and ends with the validation loss.
//!
//! Deterministic for a fixed seed, whatever the number of threads: the windows of step s come
//! from a Pcg64 seeded with (seed, s), so a run resumed from a checkpoint continues exactly, and
//! [`forward_backward`] sums the per-sequence gradients in sequence order.
//!
//! ```
//! use s4::train::lm::{train_lm, LmTrainConfig};
//! use s4::transformer::{Gpt, GptConfig};
//! // a tiny model learns a repeating text (a uniform guess costs ln 256 = 5.5 nats)
//! let text: Vec<u32> = b"abcd".repeat(64).iter().map(|&b| b as u32).collect();
//! let mut model = Gpt::<f32>::new(
//!     GptConfig { vocab_size: 256, n_positions: 16, n_embd: 16, n_layer: 1, n_head: 2, ..Default::default() },
//!     0,
//! )?;
//! let cfg = LmTrainConfig { context: 12, batch_size: 4, steps: 60, lr: 1e-2, warmup_steps: 5, ..Default::default() };
//! let report = train_lm(&mut model, &text, &text, &cfg, false, |_, _, _| {})?;
//! let last = report.evals.last().unwrap();
//! assert!(last.val_loss < 2.0, "{last:?}");
//! # Ok::<(), s4::Error>(())
//! ```

use super::optim::{OptimConfig, Schedule};
use super::trainer::{self, fingerprint, interval_steps, step_seed, Job, RoundTraining, RunOptions};
use crate::budget::Estimate;
use crate::error::{Error, Result};
use crate::model::LossStats;
use crate::plot::{write_png, Panel, Series};
use crate::transformer::grad::{forward_backward, lm_loss, LmTarget};
use crate::transformer::Gpt;
use ndarray::Array2;
use rand::{RngExt, SeedableRng};
use std::path::Path;
use std::time::Instant;

/// Training settings (plain struct; `Default` is a short run of a small character model).
#[derive(Clone, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct LmTrainConfig {
    /// Optimizer steps.
    pub steps: usize,
    /// Windows per step.
    pub batch_size: usize,
    /// Window length T (each window holds T + 1 tokens: inputs and shifted targets); ≤ `n_positions`.
    pub context: usize,
    /// Peak learning rate.
    pub lr: f64,
    /// Final learning rate of the cosine decay.
    pub min_lr: f64,
    /// Linear warmup steps.
    pub warmup_steps: usize,
    /// Decoupled weight decay of the 2-D tensors (linear weights and both embeddings).
    pub weight_decay: f64,
    /// Adam β₁.
    pub beta1: f64,
    /// Adam β₂.
    pub beta2: f64,
    /// Adam ε.
    pub eps: f64,
    /// Clip the global gradient norm to this value (`None`: no clipping).
    pub grad_clip: Option<f64>,
    /// Seed of the window sampling (training windows of step s from (seed, s); the validation
    /// windows from a derived seed).
    pub seed: u64,
    /// Evaluate every this many steps (0: only after the last step; the last step always is).
    pub eval_every: usize,
    /// Validation batches (of `batch_size` windows, the same windows at every evaluation).
    pub eval_batches: usize,
}

impl Default for LmTrainConfig {
    fn default() -> Self {
        LmTrainConfig {
            steps: 2000,
            batch_size: 16,
            context: 256,
            lr: 1e-3,
            min_lr: 1e-4,
            warmup_steps: 100,
            weight_decay: 0.1,
            beta1: 0.9,
            beta2: 0.99,
            eps: 1e-8,
            grad_clip: Some(1.0),
            seed: 0,
            eval_every: 250,
            eval_batches: 8,
        }
    }
}

impl LmTrainConfig {
    /// Checks every value (sizes ≥ 1, rates finite with 0 ≤ min_lr ≤ lr, β in [0, 1), ε > 0,
    /// decay ≥ 0, clip > 0).
    ///
    /// # Errors
    /// The first invalid field, by name.
    pub fn validate(&self) -> Result<()> {
        for (name, v) in [
            ("steps", self.steps),
            ("batch_size", self.batch_size),
            ("context", self.context),
            ("eval_batches", self.eval_batches),
        ] {
            if v == 0 {
                return Err(Error::invalid(name, v, "an integer >= 1"));
            }
        }
        if !(self.lr.is_finite() && self.lr > 0.0) {
            return Err(Error::invalid("lr", self.lr, "a finite value > 0"));
        }
        if !(self.min_lr >= 0.0 && self.min_lr <= self.lr) {
            return Err(Error::invalid("min_lr", self.min_lr, format!("a value in [0, lr = {}]", self.lr)));
        }
        if !(self.weight_decay.is_finite() && self.weight_decay >= 0.0) {
            return Err(Error::invalid("weight_decay", self.weight_decay, "a finite value >= 0"));
        }
        for (name, v) in [("beta1", self.beta1), ("beta2", self.beta2)] {
            if !(0.0..1.0).contains(&v) {
                return Err(Error::invalid(name, v, "a value in [0, 1)"));
            }
        }
        if !(self.eps.is_finite() && self.eps > 0.0) {
            return Err(Error::invalid("eps", self.eps, "a finite value > 0"));
        }
        if let Some(c) = self.grad_clip
            && !(c.is_finite() && c > 0.0)
        {
            return Err(Error::invalid("grad_clip", c, "a finite value > 0"));
        }
        Ok(())
    }

    /// The optimizer: AdamW with these rates, β, ε, decay and clipping, and nanoGPT's schedule
    /// (`warmup_steps` of linear warmup, cosine from `lr` to `min_lr` over `steps`).
    pub fn optim(&self) -> OptimConfig {
        OptimConfig {
            lr: self.lr,
            weight_decay: self.weight_decay,
            lr_dt: None,
            lr_a: None,
            lr_b: None,
            beta1: self.beta1,
            beta2: self.beta2,
            eps: self.eps,
            warmup_fraction: 0.0,
            warmup_steps: Some(self.warmup_steps as u64),
            schedule: Schedule::NanoGpt { min_factor: self.min_lr / self.lr },
            grad_clip: self.grad_clip,
        }
    }

    /// The learning rate of 0-based `step`: `lr` times the schedule's factor.
    pub fn lr_at(&self, step: usize) -> f64 {
        self.lr * self.optim().lr_factor(step as u64, self.steps as u64)
    }
}

/// One evaluation of [`train_lm`].
#[derive(Clone, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct LmEval {
    /// Steps done.
    pub step: usize,
    /// Mean training loss of the steps since the previous evaluation.
    pub train_loss: f64,
    /// Mean validation loss (nats per token) over the fixed validation windows.
    pub val_loss: f64,
}

/// What [`train_lm`] did.
#[derive(Clone, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct LmTrainReport {
    /// Every evaluation, in order (the last one after the last step), including those before a
    /// resume.
    pub evals: Vec<LmEval>,
    /// Mean training loss of the last round.
    pub last_train_loss: f64,
    /// Wall-clock seconds of this invocation (evaluations included).
    pub seconds: f64,
}

/// `count` windows of `len` tokens (inputs, targets = the next tokens), starts uniform in
/// `0 ..= tokens.len() − len − 1`.
fn windows(tokens: &[u32], len: usize, count: usize, rng: &mut rand_pcg::Pcg64) -> (Array2<u32>, Array2<u32>) {
    let mut ids = Array2::<u32>::zeros((count, len));
    let mut tgt = Array2::<u32>::zeros((count, len));
    for b in 0..count {
        let start = rng.random_range(0..=tokens.len() - len - 1);
        for t in 0..len {
            ids[[b, t]] = tokens[start + t];
            tgt[[b, t]] = tokens[start + t + 1];
        }
    }
    (ids, tgt)
}

fn check_tokens(name: &str, tokens: &[u32], vocab: usize, need: usize) -> Result<()> {
    if tokens.len() < need {
        return Err(Error::invalid(
            format!("{name} length"),
            tokens.len(),
            format!(">= context + 1 = {need} tokens (one window)"),
        ));
    }
    if let Some(i) = tokens.iter().position(|&t| t as usize >= vocab) {
        return Err(Error::invalid(format!("{name}[{i}]"), tokens[i], format!("a token id < vocab_size = {vocab}")));
    }
    Ok(())
}

/// The language-model run as a [`Job`]: a round is `eval_every` steps (the last may be shorter).
struct LmJob<'a> {
    train: &'a [u32],
    val_tokens: &'a [u32],
    val: Vec<(Array2<u32>, Array2<u32>)>,
    cfg: &'a LmTrainConfig,
    model_config: crate::transformer::GptConfig,
}

impl Job for LmJob<'_> {
    type Model = Gpt<f32>;
    type Batch = (Array2<u32>, Array2<u32>);
    type Metrics = LmEval;

    fn total_steps(&self) -> u64 {
        self.cfg.steps as u64
    }

    fn steps_in_round(&self, _round: usize, first_step: u64) -> u64 {
        interval_steps(self.cfg.steps, self.cfg.eval_every, first_step)
    }

    fn batches(&self, round: usize, first_step: u64) -> Result<Vec<Self::Batch>> {
        Ok((first_step..first_step + self.steps_in_round(round, first_step))
            .map(|s| {
                let mut rng = rand_pcg::Pcg64::seed_from_u64(step_seed(self.cfg.seed, s));
                windows(self.train, self.cfg.context, self.cfg.batch_size, &mut rng)
            })
            .collect())
    }

    fn train_step(&self, model: &mut Gpt<f32>, (ids, tgt): &Self::Batch, step: u64) -> Result<(LossStats, Gpt<f32>)> {
        // the inputs were checked: an error here is a non-finite loss or gradient
        let (loss, grads) = forward_backward(model, ids.view(), tgt.view())
            .map_err(|e| Error::numerical("language-model training", format!("stopped at step {}: {e}", step + 1)))?;
        Ok((LossStats { loss, correct: 0, count: ids.len() }, grads))
    }

    fn round_metrics(&self, model: &Gpt<f32>, _round: usize, t: &RoundTraining) -> Result<LmEval> {
        let mut s = 0.0;
        for (ids, tgt) in &self.val {
            s += lm_loss(model, ids.view(), LmTarget::Tokens(tgt.view()))?;
        }
        Ok(LmEval { step: t.step as usize, train_loss: t.train_loss, val_loss: s / self.val.len() as f64 })
    }

    fn settings(&self) -> serde_json::Value {
        serde_json::json!({"train": self.cfg, "model": self.model_config,
            "corpus": {"train_tokens": self.train.len(), "val_tokens": self.val_tokens.len()}})
    }

    /// Every setting but the number of steps, the model's configuration and the corpus.
    fn resume_key(&self) -> serde_json::Value {
        let mut train = serde_json::to_value(self.cfg).expect("serializes");
        train.as_object_mut().expect("a struct").remove("steps");
        serde_json::json!({"train": train, "model": self.model_config,
            "train_tokens": fingerprint(self.train.iter().map(|&t| u64::from(t))),
            "val_tokens": fingerprint(self.val_tokens.iter().map(|&t| u64::from(t)))})
    }

    fn check_model(&self, model: &Gpt<f32>) -> Result<()> {
        if model.config() == &self.model_config {
            Ok(())
        } else {
            Err(Error::invalid("resume", "a checkpoint with a different model configuration", "the same model"))
        }
    }

    fn progress_message(&self, s: &LossStats, seconds: f64) -> String {
        format!("loss {:.4} | {:.0} tok/s", s.loss, s.count as f64 / seconds.max(1e-9))
    }

    fn describe(&self, m: &LmEval) -> String {
        format!("step {}: train loss {:.4} | val loss {:.4}", m.step, m.train_loss, m.val_loss)
    }

    fn plot(&self, path: &Path, evals: &[LmEval]) -> Result<()> {
        let pts = |f: fn(&LmEval) -> f64| evals.iter().map(|e| (e.step as f64, f(e))).collect();
        let series = vec![
            Series { label: "train".into(), points: pts(|e| e.train_loss) },
            Series { label: "validation".into(), points: pts(|e| e.val_loss) },
        ];
        let panel = Panel {
            title: "language model: loss".into(),
            x_label: "step".into(),
            y_label: "nats per token".into(),
            series,
        };
        write_png(path, &[panel], 900, 320)
    }

    fn name(&self) -> &str {
        "language-model training"
    }
}

/// Trains `model` in memory (nothing written): [`train_lm_run`] without an output folder, with a
/// progress bar if `progress`; `on_eval(step, mean train loss of the round, val loss)` is called
/// for every evaluation, in order.
///
/// # Errors
/// As [`train_lm_run`].
pub fn train_lm(
    model: &mut Gpt<f32>,
    train_tokens: &[u32],
    val_tokens: &[u32],
    cfg: &LmTrainConfig,
    progress: bool,
    mut on_eval: impl FnMut(usize, f64, f64),
) -> Result<LmTrainReport> {
    let opts = RunOptions { progress, ..Default::default() };
    let report = train_lm_run(model, train_tokens, val_tokens, cfg, None, &opts)?;
    report.evals.iter().for_each(|e| on_eval(e.step, e.train_loss, e.val_loss));
    Ok(report)
}

/// Checks a training run's memory against the budget before it starts: the fixed validation
/// windows, one batch of windows, the activations of the sequences in flight (one per thread:
/// per layer about 16·n_embd values and n_head attention rows per position, and the logits), and
/// the weights with their gradients per thread and AdamW's two moments.
///
/// # Errors
/// Over the budget, or a thread count out of range.
pub fn check_memory(model: &crate::transformer::GptConfig, cfg: &LmTrainConfig, opts: &RunOptions) -> Result<u64> {
    opts.validate()?;
    let threads = opts.threads.unwrap_or_else(rayon::current_num_threads).min(cfg.batch_size);
    let (t, c, v) = (cfg.context, model.n_embd, model.vocab_size);
    let per_position =
        model.n_layer.saturating_mul(c.saturating_mul(16).saturating_add(model.n_head.saturating_mul(t)));
    let params = model.parameter_count().unwrap_or(usize::MAX);
    Estimate::new(format!(
        "language-model training with batch_size = {}, context = {t}, eval_batches = {}",
        cfg.batch_size, cfg.eval_batches
    ))
    .arrays::<u32>(cfg.eval_batches.saturating_add(1), &[cfg.batch_size, t + 1])
    .arrays::<f32>(threads, &[t, per_position.saturating_add(v.saturating_mul(2))])
    .arrays::<f32>(threads.saturating_add(3), &[params])
    .check()
}

/// Trains `model` on random windows of `train_tokens` for `cfg.steps` AdamW steps
/// ([`LmTrainConfig::optim`]): each step draws `batch_size` windows of `context + 1` tokens and
/// takes the mean next-token cross-entropy ([`forward_backward`], sequences in parallel). Every
/// `eval_every` steps and after the last, the mean loss over `eval_batches` fixed batches of
/// windows of `val_tokens` is recorded. With `out`, the run is written there and can be resumed
/// or extended ([`RunOptions`]; on resume `model` is replaced by the checkpoint's). The result is
/// the same for any number of threads; `model` holds the trained weights.
///
/// # Errors
/// An invalid `cfg`, `context` > `n_positions`, fewer than `context + 1` training or validation
/// tokens, a token id ≥ V, a folder holding another run, a thread pool that cannot be built, or a
/// non-finite loss, gradient or weight (the error names the step).
pub fn train_lm_run(
    model: &mut Gpt<f32>,
    train_tokens: &[u32],
    val_tokens: &[u32],
    cfg: &LmTrainConfig,
    out: Option<&Path>,
    opts: &RunOptions,
) -> Result<LmTrainReport> {
    cfg.validate()?;
    let (np, vocab) = (model.config().n_positions, model.config().vocab_size);
    if cfg.context > np {
        return Err(Error::invalid("context", cfg.context, format!("<= the model's n_positions = {np}")));
    }
    check_tokens("train_tokens", train_tokens, vocab, cfg.context + 1)?;
    check_tokens("val_tokens", val_tokens, vocab, cfg.context + 1)?;
    check_memory(model.config(), cfg, opts)?;
    let mut val_rng = rand_pcg::Pcg64::seed_from_u64(cfg.seed ^ 0x5641_4C5F_5749_4E44);
    let val = (0..cfg.eval_batches).map(|_| windows(val_tokens, cfg.context, cfg.batch_size, &mut val_rng)).collect();
    let job = LmJob { train: train_tokens, val_tokens, val, cfg, model_config: model.config().clone() };
    let t0 = Instant::now();
    let (evals, trained) = trainer::run(&job, model.clone(), &cfg.optim(), out, opts)?;
    *model = trained;
    Ok(LmTrainReport {
        last_train_loss: evals.last().map_or(f64::NAN, |e| e.train_loss),
        seconds: t0.elapsed().as_secs_f64(),
        evals,
    })
}

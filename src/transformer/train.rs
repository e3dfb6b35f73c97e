//! A small language-model training loop for [`Gpt`] (nanoGPT's `train.py` without dropout or
//! gradient accumulation): random windows of `context + 1` tokens, AdamW, linear warmup then
//! cosine decay to `min_lr`, global-norm gradient clipping, data parallel over the batch.
//!
//! Deterministic for a fixed seed, whatever the number of threads: the windows come from a Pcg64
//! seeded with `seed`, and [`forward_backward`] sums the per-sequence gradients in sequence order.
//!
//! ```
//! use s4::transformer::train::{train_lm, LmTrainConfig};
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

use super::grad::{forward_backward, lm_loss, LmTarget};
use super::Gpt;
use crate::error::{Error, Result};
use crate::scalar::Real;
use ndarray::Array2;
use rand::{RngExt, SeedableRng};
use std::time::Instant;

/// Training settings (plain struct; `Default` is a short run of a small character model).
#[derive(Clone, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(default)]
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
    /// Decoupled weight decay of the 2-D weights (see [`LmAdamW`]).
    pub weight_decay: f64,
    /// Adam β₁.
    pub beta1: f64,
    /// Adam β₂.
    pub beta2: f64,
    /// Adam ε.
    pub eps: f64,
    /// Clip the global gradient norm to this value (`None`: no clipping).
    pub grad_clip: Option<f64>,
    /// Seed of the window sampling (training windows; the validation windows use a derived seed).
    pub seed: u64,
    /// Worker threads (`None`: the current rayon pool).
    pub threads: Option<usize>,
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
            context: 128,
            lr: 1e-3,
            min_lr: 1e-4,
            warmup_steps: 100,
            weight_decay: 0.1,
            beta1: 0.9,
            beta2: 0.99,
            eps: 1e-8,
            grad_clip: Some(1.0),
            seed: 0,
            threads: None,
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
        if let Some(c) = self.grad_clip {
            if !(c.is_finite() && c > 0.0) {
                return Err(Error::invalid("grad_clip", c, "a finite value > 0"));
            }
        }
        if self.threads == Some(0) {
            return Err(Error::invalid("threads", 0, "a count >= 1, or null for the current pool"));
        }
        Ok(())
    }

    /// The learning rate of 0-based `step` (nanoGPT's `get_lr`): lr·(step + 1)/(warmup + 1) during
    /// warmup, then min_lr + ½(1 + cos(π·p))·(lr − min_lr) with p = (step − warmup)/(steps − warmup).
    pub fn lr_at(&self, step: usize) -> f64 {
        if step < self.warmup_steps {
            return self.lr * (step + 1) as f64 / (self.warmup_steps + 1) as f64;
        }
        let span = self.steps.saturating_sub(self.warmup_steps).max(1);
        let p = ((step - self.warmup_steps) as f64 / span as f64).min(1.0);
        self.min_lr + 0.5 * (1.0 + (std::f64::consts::PI * p).cos()) * (self.lr - self.min_lr)
    }
}

/// AdamW (Loshchilov & Hutter; `torch.optim.AdamW`) for a [`Gpt`]: per entry at step t ≥ 1 with
/// learning rate η and decay λ, θ ← θ(1 − ηλ); m ← β₁m + (1 − β₁)g; v ← β₂v + (1 − β₂)g²;
/// θ ← θ − η·(m/(1 − β₁ᵗ))/(√(v/(1 − β₂ᵗ)) + ε).
///
/// Weight decay applies to the 2-D tensors only (nanoGPT's `configure_optimizers`): the linear
/// weights and both embeddings (`wte`, which is also the tied head, and `wpe`); biases and
/// LayerNorm parameters are not decayed.
#[derive(Clone, Debug)]
pub struct LmAdamW<T> {
    /// Adam β₁.
    pub beta1: f64,
    /// Adam β₂.
    pub beta2: f64,
    /// Adam ε.
    pub eps: f64,
    /// Decoupled weight decay λ of the 2-D tensors.
    pub weight_decay: f64,
    /// Steps taken.
    pub step: u64,
    m: Gpt<T>,
    v: Gpt<T>,
}

impl<T: Real> LmAdamW<T> {
    /// Fresh state (zero moments) for `model`, with β₁, β₂, ε and the decay of `cfg`.
    pub fn new(model: &Gpt<T>, cfg: &LmTrainConfig) -> Self {
        LmAdamW {
            beta1: cfg.beta1,
            beta2: cfg.beta2,
            eps: cfg.eps,
            weight_decay: cfg.weight_decay,
            step: 0,
            m: model.zeros_like(),
            v: model.zeros_like(),
        }
    }

    /// One AdamW step of `model` along `grads` (same shapes) with learning rate `lr`.
    pub fn update(&mut self, model: &mut Gpt<T>, grads: &Gpt<T>, lr: f64) {
        self.step += 1;
        let t = self.step as i32;
        let (bc1, bc2) = (1.0 - self.beta1.powi(t), 1.0 - self.beta2.powi(t));
        let (b1, b2) = (T::of(self.beta1), T::of(self.beta2));
        let (step_size, eps) = (T::of(lr / bc1), T::of(self.eps));
        let inv_bc2 = T::of(1.0 / bc2);
        let ms = self.m.tensors_mut();
        let vs = self.v.tensors_mut();
        for ((((_, mut p), (_, g)), (_, mut m)), (_, mut v)) in
            model.tensors_mut().into_iter().zip(grads.tensors()).zip(ms).zip(vs)
        {
            let decay = T::of(if p.ndim() == 2 { 1.0 - lr * self.weight_decay } else { 1.0 });
            ndarray::Zip::from(&mut p).and(&g).and(&mut m).and(&mut v).for_each(|p, &g, m, v| {
                *m = b1 * *m + (T::one() - b1) * g;
                *v = b2 * *v + (T::one() - b2) * g * g;
                *p = *p * decay - step_size * *m / ((*v * inv_bc2).sqrt() + eps);
            });
        }
    }
}

/// The global L2 norm of `grads` (in f64); if it exceeds `max_norm`, scales every gradient by
/// max_norm/(norm + 1e-6) (`torch.nn.utils.clip_grad_norm_`). Returns the norm before clipping.
pub fn clip_grad_norm<T: Real>(grads: &mut Gpt<T>, max_norm: Option<f64>) -> f64 {
    let norm = grads.tensors().iter().flat_map(|(_, t)| t.iter().map(|v| v.as_f64() * v.as_f64())).sum::<f64>().sqrt();
    if let Some(mx) = max_norm {
        if norm > mx {
            let f = T::of(mx / (norm + 1e-6));
            for (_, mut t) in grads.tensors_mut() {
                t.mapv_inplace(|v| v * f);
            }
        }
    }
    norm
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
    /// Every evaluation, in order (the last one after the last step).
    pub evals: Vec<LmEval>,
    /// Training loss of the last step.
    pub last_train_loss: f64,
    /// Wall-clock seconds of the training steps (evaluations excluded).
    pub train_seconds: f64,
    /// Training tokens (batch_size · context per step) per second of `train_seconds`.
    pub tokens_per_second: f64,
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

/// Trains `model` on random windows of `train_tokens` for `cfg.steps` AdamW steps (learning rate
/// [`LmTrainConfig::lr_at`], clipping [`clip_grad_norm`], decay as [`LmAdamW`]): each step draws
/// `batch_size` windows of `context + 1` tokens from a Pcg64 seeded with `seed` and takes the mean
/// next-token cross-entropy ([`forward_backward`], sequences in parallel). Every `eval_every` steps
/// and after the last, the mean loss over `eval_batches` fixed batches of windows of `val_tokens`
/// is computed and passed to `on_eval(step, mean train loss since the last evaluation, val loss)`.
/// With `progress`, an indicatif bar shows the loss and tokens/s. The result is the same for any
/// number of threads.
///
/// # Errors
/// An invalid `cfg`, `context` > `n_positions`, fewer than `context + 1` training or validation
/// tokens, a token id ≥ V, a thread pool that cannot be built, or a non-finite loss, gradient or
/// weight (the error names the step; the model then holds the weights before that step's update
/// if the loss or a gradient was non-finite).
pub fn train_lm(
    model: &mut Gpt<f32>,
    train_tokens: &[u32],
    val_tokens: &[u32],
    cfg: &LmTrainConfig,
    progress: bool,
    mut on_eval: impl FnMut(usize, f64, f64),
) -> Result<LmTrainReport> {
    cfg.validate()?;
    let (np, vocab) = (model.config().n_positions, model.config().vocab_size);
    if cfg.context > np {
        return Err(Error::invalid("context", cfg.context, format!("<= the model's n_positions = {np}")));
    }
    check_tokens("train_tokens", train_tokens, vocab, cfg.context + 1)?;
    check_tokens("val_tokens", val_tokens, vocab, cfg.context + 1)?;
    let pool = match cfg.threads {
        Some(n) => Some(
            rayon::ThreadPoolBuilder::new()
                .num_threads(n)
                .build()
                .map_err(|e| Error::invalid("threads", n, format!("a buildable thread pool ({e})")))?,
        ),
        None => None,
    };
    let mut rng = rand_pcg::Pcg64::seed_from_u64(cfg.seed);
    let mut val_rng = rand_pcg::Pcg64::seed_from_u64(cfg.seed ^ 0x5641_4C5F_5749_4E44);
    let val: Vec<(Array2<u32>, Array2<u32>)> =
        (0..cfg.eval_batches).map(|_| windows(val_tokens, cfg.context, cfg.batch_size, &mut val_rng)).collect();
    let bar = progress_bar(progress, cfg.steps as u64);
    let mut opt = LmAdamW::new(model, cfg);
    let (mut evals, mut since_eval, mut n_since) = (Vec::new(), 0.0, 0usize);
    let (mut train_seconds, mut last) = (0.0, f64::NAN);
    let tokens_per_step = (cfg.batch_size * cfg.context) as f64;
    for step in 0..cfg.steps {
        let t0 = Instant::now();
        let (ids, tgt) = windows(train_tokens, cfg.context, cfg.batch_size, &mut rng);
        let m: &Gpt<f32> = model;
        let failed =
            |what: String| Error::numerical("language-model training", format!("stopped at step {}: {what}", step + 1));
        // the inputs were checked above: an error here is a non-finite loss or gradient
        let (loss, mut grads) =
            in_pool(&pool, || forward_backward(m, ids.view(), tgt.view())).map_err(|e| failed(e.to_string()))?;
        clip_grad_norm(&mut grads, cfg.grad_clip);
        opt.update(model, &grads, cfg.lr_at(step));
        if let Some(p) = model.first_non_finite() {
            return Err(failed(format!("non-finite weight {p} after the update")));
        }
        train_seconds += t0.elapsed().as_secs_f64();
        last = loss;
        since_eval += loss;
        n_since += 1;
        bar.set_message(format!(
            "loss {loss:.4} | {:.0} tok/s",
            tokens_per_step * (step + 1) as f64 / train_seconds.max(1e-9)
        ));
        bar.inc(1);
        let done = step + 1;
        if done == cfg.steps || (cfg.eval_every > 0 && done.is_multiple_of(cfg.eval_every)) {
            let m: &Gpt<f32> = model;
            let val_loss = in_pool(&pool, || -> Result<f64> {
                let mut s = 0.0;
                for (ids, tgt) in &val {
                    s += lm_loss(m, ids.view(), LmTarget::Tokens(tgt.view()))?;
                }
                Ok(s / val.len() as f64)
            })?;
            let train_loss = since_eval / n_since as f64;
            on_eval(done, train_loss, val_loss);
            if progress {
                bar.println(format!("step {done}: train loss {train_loss:.4} | val loss {val_loss:.4}"));
            }
            evals.push(LmEval { step: done, train_loss, val_loss });
            (since_eval, n_since) = (0.0, 0);
        }
    }
    bar.finish_and_clear();
    Ok(LmTrainReport {
        evals,
        last_train_loss: last,
        train_seconds,
        tokens_per_second: tokens_per_step * cfg.steps as f64 / train_seconds.max(1e-9),
    })
}

/// Runs `f` in `pool` if given, else in the current pool.
fn in_pool<R: Send>(pool: &Option<rayon::ThreadPool>, f: impl FnOnce() -> R + Send) -> R {
    match pool {
        Some(p) => p.install(f),
        None => f(),
    }
}

fn progress_bar(show: bool, len: u64) -> indicatif::ProgressBar {
    if !show {
        return indicatif::ProgressBar::hidden();
    }
    let bar = indicatif::ProgressBar::new(len);
    bar.set_style(
        indicatif::ProgressStyle::with_template("train [{bar:30}] {pos}/{len} {msg} ({elapsed}<{eta})")
            .expect("valid template")
            .progress_chars("=> "),
    );
    bar
}

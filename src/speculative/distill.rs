//! Distilling an S4 draft language model from a verifier.
//!
//! The draft is trained on a mix of verifier-generated text (sequence-level distillation: the
//! draft learns the verifier's own continuations, the text it will be asked to predict) and real
//! corpus windows, with the loss per position
//! CE(next token) + β·KL(p_verifier ‖ q_draft)
//! (Mamba in the Llama, Wang et al. 2024, eq. 2, with α = 1; the research note §3.4). The
//! verifier's distributions p come from one full pass over each window. Acceptance is what the
//! draft is for, so the report measures it directly on held-out windows: the expected acceptance
//! at temperature 1, E[Σ min(p, q)] = 1 − E[TV(p, q)] (Leviathan et al. Corollary 3.6), and the
//! greedy acceptance, the fraction of positions where the two arg-maxes agree.
//!
//! Training uses the crate's S4 machinery: [`forward_backward`] with [`Target::Distill`], AdamW
//! with the official parameter groups and a cosine schedule ([`AdamW`]).
//!
//! # Example
//!
//! A few steps on a tiny pair (a real run uses thousands, see [`DistillConfig::default`]):
//!
//! ```
//! use s4::model::S4ModelConfig;
//! use s4::speculative::distill::{distill, DistillConfig};
//! use s4::train::optim::OptimConfig;
//! use s4::transformer::{Gpt, GptConfig};
//!
//! let teacher = Gpt::<f32>::new(GptConfig { vocab_size: 12, n_positions: 32, n_embd: 16, n_layer: 1, n_head: 2, ..Default::default() }, 0)?;
//! let mut cfg = S4ModelConfig::causal_lm(12);
//! cfg.n_layers = 1;
//! cfg.layer.d_model = 8;
//! cfg.layer.d_state = 4;
//! let mut student = cfg.build()?;
//! let text: Vec<u32> = (0..300u32).map(|i| (i * i + 3 * i) % 12).collect();
//! let settings = DistillConfig {
//!     steps: 40,
//!     batch_size: 4,
//!     window: 12,
//!     generated: 4,
//!     prompt_len: 4,
//!     eval_windows: 8,
//!     optim: OptimConfig { lr: 1e-2, weight_decay: 0.0, ..Default::default() },
//!     ..Default::default()
//! };
//! let report = distill(&mut student, &teacher, &text[..200], &text[200..], &settings, false)?;
//! let [kl0, accept0, greedy0] = report.initial;
//! assert_eq!(report.steps, 40);
//! assert!(report.final_loss.is_finite());
//! // Σ min(p, q) and the arg-max agreement are rates; KL(p ‖ q) ≥ 0 dropped with training
//! for rate in [accept0, greedy0, report.eval_acceptance_sampling, report.eval_acceptance_greedy] {
//!     assert!((0.0..=1.0).contains(&rate));
//! }
//! assert!(report.eval_kl >= 0.0 && report.eval_kl < kl0, "{} vs {kl0}", report.eval_kl);
//!
//! // the draft must share the verifier's vocabulary
//! let mut other = S4ModelConfig { d_output: 13, vocab_size: Some(13), ..cfg }.build()?;
//! assert!(distill(&mut other, &teacher, &text[..200], &text[200..], &settings, false).is_err());
//! # Ok::<(), s4::Error>(())
//! ```

use std::time::Instant;

use ndarray::{s, Array2, Array3, Axis};
use rand::{RngExt, SeedableRng};
use rand_pcg::Pcg64;
use rayon::prelude::*;

use super::{generate, GptSession, Sampling, SpecConfig};
use crate::error::{Error, Result};
use crate::model::{Input, Pooling, S4Model};
use crate::train::grad::{first_non_finite, forward_backward, Target, TrainOptions};
use crate::train::optim::{AdamW, OptimConfig};
use crate::train::trainer::progress_bar;
use crate::transformer::Gpt;

/// Settings of a distillation run (plain struct; `Default` suits a character-level pair).
#[derive(Clone, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(default)]
pub struct DistillConfig {
    /// Optimizer steps.
    pub steps: usize,
    /// Windows per step.
    pub batch_size: usize,
    /// Window length L (tokens the draft reads; each window has L + 1 tokens).
    pub window: usize,
    /// Verifier-generated sequences (each `window + 1` tokens: a corpus prompt, then the
    /// verifier's continuation).
    pub generated: usize,
    /// Length of the corpus prompt of each generated sequence.
    pub prompt_len: usize,
    /// Temperatures of the verifier when generating, cycled over the sequences (0 = its greedy
    /// output, the text greedy speculative decoding will be asked to predict).
    pub generate_temperatures: Vec<f64>,
    /// Fraction of each batch drawn from the real corpus (the rest from generated text).
    pub corpus_fraction: f64,
    /// β, the weight of KL(verifier ‖ draft).
    pub soft_weight: f64,
    /// Held-out windows for the acceptance estimates.
    pub eval_windows: usize,
    /// Optimizer.
    pub optim: OptimConfig,
    /// Seed of window sampling and generation.
    pub seed: u64,
}

impl Default for DistillConfig {
    fn default() -> Self {
        DistillConfig {
            steps: 1500,
            batch_size: 16,
            window: 128,
            generated: 256,
            prompt_len: 16,
            generate_temperatures: vec![1.0, 0.0],
            corpus_fraction: 0.5,
            soft_weight: 1.0,
            eval_windows: 64,
            optim: OptimConfig { lr: 3e-3, weight_decay: 0.0, warmup_fraction: 0.05, ..Default::default() },
            seed: 0,
        }
    }
}

impl DistillConfig {
    /// Checks the values.
    ///
    /// # Errors
    /// Zero sizes, a prompt not shorter than the window, fractions outside [0, 1], a negative β.
    pub fn validate(&self) -> Result<()> {
        for (name, v) in [("steps", self.steps), ("batch_size", self.batch_size), ("window", self.window)] {
            if v == 0 {
                return Err(Error::invalid(name, 0, "at least 1"));
            }
        }
        if self.generated > 0 && (self.prompt_len == 0 || self.prompt_len >= self.window) {
            return Err(Error::invalid("prompt_len", self.prompt_len, format!("in 1..window = {}", self.window)));
        }
        if !(0.0..=1.0).contains(&self.corpus_fraction) || (self.generated == 0 && self.corpus_fraction < 1.0) {
            return Err(Error::invalid(
                "corpus_fraction",
                self.corpus_fraction,
                "in [0, 1], and 1 when no text is generated",
            ));
        }
        if self.generated > 0 && self.generate_temperatures.is_empty() {
            return Err(Error::invalid("generate_temperatures", "empty", "at least one temperature (0 = greedy)"));
        }
        if !(self.soft_weight.is_finite() && self.soft_weight >= 0.0) {
            return Err(Error::invalid("soft_weight", self.soft_weight, "a finite value >= 0"));
        }
        self.optim.validate()
    }
}

/// What a distillation run measured.
#[derive(Clone, Debug, PartialEq, serde::Serialize)]
pub struct DistillReport {
    /// Steps taken.
    pub steps: usize,
    /// Mean training loss over the last 10% of the steps.
    pub final_loss: f64,
    /// Seconds spent generating verifier text.
    pub generate_seconds: f64,
    /// Seconds spent training.
    pub train_seconds: f64,
    /// On held-out corpus windows: mean KL(p ‖ q) in nats per token.
    pub eval_kl: f64,
    /// Mean Σ min(p, q): the expected acceptance rate at temperature 1.
    pub eval_acceptance_sampling: f64,
    /// Fraction of positions with argmax p = argmax q: the greedy acceptance rate.
    pub eval_acceptance_greedy: f64,
    /// The same three numbers before training, for comparison.
    pub initial: [f64; 3],
}

/// Softmax over the last axis, in f32.
fn softmax3(logits: &Array3<f32>) -> Array3<f32> {
    let mut p = logits.clone();
    for mut row in p.lanes_mut(Axis(2)) {
        let m = row.fold(f32::NEG_INFINITY, |a, &b| a.max(b));
        row.mapv_inplace(|x| (x - m).exp());
        let s = row.sum();
        row /= s;
    }
    p
}

/// `[KL(p ‖ q), Σ min(p, q), arg-max agreement]` of the draft q against the verifier p, each
/// averaged over all B·L positions of `windows` (B, L + 1) (the first L tokens are read): the KL
/// in nats, the expected acceptance rate at temperature 1 (= 1 − TV(p, q)), and the greedy
/// acceptance rate.
///
/// # Errors
/// Model failures (e.g. L beyond the verifier's context, unknown tokens).
pub fn acceptance_estimates(student: &S4Model<f32>, teacher: &Gpt<f32>, windows: &Array2<u32>) -> Result<[f64; 3]> {
    let l = windows.ncols() - 1;
    let x = windows.slice(s![.., ..l]);
    let p = softmax3(&teacher.forward(x)?);
    let q_logits = student.forward(Input::Tokens(x), None)?; // (B, V, L)
    let q = softmax3(&q_logits.permuted_axes([0, 2, 1]).as_standard_layout().to_owned());
    let (mut kl, mut overlap, mut agree) = (0.0, 0.0, 0.0);
    let mut n = 0.0;
    for (pr, qr) in p.lanes(Axis(2)).into_iter().zip(q.lanes(Axis(2))) {
        let (mut pa, mut qa) = (0, 0);
        for k in 0..pr.len() {
            let (a, b) = (pr[k] as f64, qr[k] as f64);
            if a > 0.0 {
                kl += a * (a.ln() - b.max(1e-30).ln());
            }
            overlap += a.min(b);
            if pr[k] > pr[pa] {
                pa = k;
            }
            if qr[k] > qr[qa] {
                qa = k;
            }
        }
        agree += f64::from(u8::from(pa == qa));
        n += 1.0;
    }
    Ok([kl / n, overlap / n, agree / n])
}

fn windows_from(
    sources: &[&[u32]],
    count: usize,
    len: usize,
    rng: &mut Pcg64,
    pick: impl Fn(&mut Pcg64) -> usize,
) -> Array2<u32> {
    let mut w = Array2::zeros((count, len));
    for mut row in w.rows_mut() {
        let src = sources[pick(rng)];
        let start = rng.random_range(0..=src.len() - len);
        row.assign(&ndarray::ArrayView1::from(&src[start..start + len]));
    }
    w
}

/// Distills `student` (an S4 causal language model) from `teacher` on `corpus` tokens, and
/// measures the [`acceptance_estimates`] on `cfg.eval_windows` random `val` windows before and
/// after. Each step minimizes the mean over the batch's positions of
/// CE(next token) + β·KL(p_teacher ‖ q_student) (β = `cfg.soft_weight`); `progress` shows
/// progress bars on the terminal.
///
/// # Errors
/// Bad settings, a student that is not an unpooled token model with the teacher's vocabulary, a
/// corpus or validation text shorter than a window, or a non-finite loss (naming the step).
pub fn distill(
    student: &mut S4Model<f32>,
    teacher: &Gpt<f32>,
    corpus: &[u32],
    val: &[u32],
    cfg: &DistillConfig,
    progress: bool,
) -> Result<DistillReport> {
    cfg.validate()?;
    let v = teacher.config().vocab_size;
    let sc = student.config();
    if sc.vocab_size != Some(v) || sc.d_output != v || sc.pooling != Pooling::None {
        return Err(Error::invalid(
            "draft model",
            format!("vocab {:?}, d_output {}, pooling {:?}", sc.vocab_size, sc.d_output, sc.pooling),
            format!("a causal token model with the verifier's vocabulary {v} and no pooling"),
        ));
    }
    let need = cfg.window + 1;
    if need > teacher.config().n_positions {
        return Err(Error::invalid(
            "window",
            cfg.window,
            format!("< the verifier's context {}", teacher.config().n_positions),
        ));
    }
    for (name, text) in [("corpus", corpus), ("validation text", val)] {
        if text.len() < need {
            return Err(Error::invalid(
                name,
                format!("{} tokens", text.len()),
                format!("at least window + 1 = {need}"),
            ));
        }
    }
    let mut rng = Pcg64::seed_from_u64(cfg.seed);
    let eval = windows_from(&[val], cfg.eval_windows.max(1), need, &mut rng, |_| 0);
    let initial = acceptance_estimates(student, teacher, &eval)?;

    // sequence-level distillation data: the verifier's own continuations of corpus prompts
    let t0 = Instant::now();
    let prompts = windows_from(&[corpus], cfg.generated, cfg.prompt_len, &mut rng, |_| 0);
    let gen_bar = progress_bar(progress, cfg.generated as u64, "generating");
    let generated: Vec<Vec<u32>> = (0..cfg.generated)
        .into_par_iter()
        .map(|i| {
            let prompt = prompts.row(i).to_vec();
            let gen_cfg = SpecConfig {
                sampling: Sampling {
                    temperature: cfg.generate_temperatures[i % cfg.generate_temperatures.len()],
                    ..Default::default()
                },
                max_new: need - cfg.prompt_len,
                seed: cfg.seed.wrapping_add(1 + i as u64),
                ..Default::default()
            };
            let g = generate(&mut GptSession::new(teacher), &prompt, &gen_cfg)?;
            gen_bar.inc(1);
            Ok([prompt, g.tokens].concat())
        })
        .collect::<Result<_>>()?;
    gen_bar.finish_and_clear();
    let generate_seconds = t0.elapsed().as_secs_f64();

    student.set_kernel_length(cfg.window)?;
    let mut opt = AdamW::new(student, cfg.optim.clone())?;
    let gen_refs: Vec<&[u32]> = generated.iter().map(|g| g.as_slice()).collect();
    let n_corpus = ((cfg.batch_size as f64) * cfg.corpus_fraction).round() as usize;
    let bar = progress_bar(progress, cfg.steps as u64, "distilling");
    let t1 = Instant::now();
    let mut losses = Vec::with_capacity(cfg.steps);
    for step in 0..cfg.steps {
        let mut w = windows_from(&[corpus], n_corpus, need, &mut rng, |_| 0);
        if cfg.batch_size > n_corpus {
            let g = windows_from(&gen_refs, cfg.batch_size - n_corpus, need, &mut rng, |r| {
                r.random_range(0..gen_refs.len())
            });
            w = ndarray::concatenate(Axis(0), &[w.view(), g.view()])
                .map_err(|e| Error::numerical("batch", e.to_string()))?;
        }
        let x = w.slice(s![.., ..cfg.window]);
        let y = w.slice(s![.., 1..]);
        let p = softmax3(&teacher.forward(x)?);
        let target = Target::Distill { tokens: y, teacher: p.view(), soft_weight: cfg.soft_weight };
        let opts = TrainOptions {
            dropout_seed: Some(cfg.seed ^ (step as u64).wrapping_mul(0x9E37_79B9)),
            update_running_stats: true,
        };
        let (stats, mut grads) = forward_backward(student, Input::Tokens(x), None, target, opts)?;
        if !stats.loss.is_finite() {
            let culprit = first_non_finite(&mut grads).unwrap_or_else(|| "no gradient".into());
            return Err(Error::numerical(
                "distillation",
                format!("loss {} at step {} ({culprit})", stats.loss, step + 1),
            ));
        }
        opt.step(student, &mut grads, cfg.steps as u64);
        losses.push(stats.loss);
        bar.set_message(format!("loss {:.4}", stats.loss));
        bar.inc(1);
    }
    bar.finish_and_clear();
    let tail = (cfg.steps / 10).max(1);
    let final_loss = losses[losses.len() - tail..].iter().sum::<f64>() / tail as f64;
    let [eval_kl, eval_acceptance_sampling, eval_acceptance_greedy] = acceptance_estimates(student, teacher, &eval)?;
    Ok(DistillReport {
        steps: cfg.steps,
        final_loss,
        generate_seconds,
        train_seconds: t1.elapsed().as_secs_f64(),
        eval_kl,
        eval_acceptance_sampling,
        eval_acceptance_greedy,
        initial,
    })
}

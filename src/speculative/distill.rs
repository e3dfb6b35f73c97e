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
//! Training runs on the crate's [one training loop](crate::train::trainer) (progress, metrics and
//! acceptance estimates every `eval_every` steps, checkpoints, exact resume): [`forward_backward`]
//! with [`Target::Distill`], AdamW with the official parameter groups and a cosine schedule.
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
use crate::budget::Estimate;
use crate::error::{Error, Result};
use crate::model::{Input, LossStats, Pooling, S4Model, S4ModelConfig, Target};
use crate::nn::loss::softmax;
use crate::plot::{write_png, Panel, Series};
use crate::train::grad::{forward_backward, TrainOptions};
use crate::train::optim::OptimConfig;
use crate::train::trainer::{self, fingerprint, interval_steps, step_seed, Job, Progress, RoundTraining, RunOptions};
use crate::transformer::Gpt;
use std::path::Path;

/// Settings of a distillation run (plain struct; `Default` suits a character-level pair).
#[derive(Clone, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(default, deny_unknown_fields)]
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
    /// Measure the acceptance estimates every this many steps (a round of the training loop; 0:
    /// only after the last step).
    pub eval_every: usize,
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
            eval_every: 500,
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

/// One round of a distillation run (a line of its `metrics.jsonl`).
#[derive(Clone, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct DistillEval {
    /// Steps done.
    pub step: u64,
    /// Mean training loss of the round.
    pub train_loss: f64,
    /// On the held-out windows: mean KL(p ‖ q) in nats per token.
    pub kl: f64,
    /// Mean Σ min(p, q): the expected acceptance rate at temperature 1.
    pub acceptance_sampling: f64,
    /// Fraction of positions with argmax p = argmax q: the greedy acceptance rate.
    pub acceptance_greedy: f64,
}

/// What a distillation run measured.
#[derive(Clone, Debug, PartialEq, serde::Serialize)]
pub struct DistillReport {
    /// Steps taken (in all, including those before a resume).
    pub steps: usize,
    /// Mean training loss of the last round.
    pub final_loss: f64,
    /// Seconds spent generating verifier text.
    pub generate_seconds: f64,
    /// Seconds spent training in this invocation.
    pub train_seconds: f64,
    /// Every round's record.
    pub rounds: Vec<DistillEval>,
    /// On held-out corpus windows: mean KL(p ‖ q) in nats per token.
    pub eval_kl: f64,
    /// Mean Σ min(p, q): the expected acceptance rate at temperature 1.
    pub eval_acceptance_sampling: f64,
    /// Fraction of positions with argmax p = argmax q: the greedy acceptance rate.
    pub eval_acceptance_greedy: f64,
    /// The same three numbers before training, for comparison.
    pub initial: [f64; 3],
}

/// Softmax over the last axis of (B, L, V).
fn softmax3(logits: &Array3<f32>) -> Array3<f32> {
    let (b, l, v) = logits.dim();
    let rows = logits.as_standard_layout();
    let p = softmax(rows.view().into_shape_with_order((b * l, v)).expect("standard layout"));
    p.into_shape_with_order((b, l, v)).expect("same size")
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

/// The distillation run as a [`Job`] of the training loop: a round is `eval_every` steps.
struct DistillJob<'a> {
    teacher: &'a Gpt<f32>,
    corpus: &'a [u32],
    val: &'a [u32],
    generated: Vec<Vec<u32>>,
    eval: Array2<u32>,
    cfg: &'a DistillConfig,
    student_config: S4ModelConfig,
}

impl Job for DistillJob<'_> {
    type Model = S4Model<f32>;
    type Batch = Array2<u32>;
    type Metrics = DistillEval;

    fn total_steps(&self) -> u64 {
        self.cfg.steps as u64
    }

    fn steps_in_round(&self, _round: usize, first_step: u64) -> u64 {
        interval_steps(self.cfg.steps, self.cfg.eval_every, first_step)
    }

    /// The windows of each step: `corpus_fraction` of the batch from the corpus, the rest from
    /// the generated text, drawn from (seed, step).
    fn batches(&self, round: usize, first_step: u64) -> Result<Vec<Array2<u32>>> {
        let need = self.cfg.window + 1;
        let n_corpus = ((self.cfg.batch_size as f64) * self.cfg.corpus_fraction).round() as usize;
        let gen_refs: Vec<&[u32]> = self.generated.iter().map(|g| g.as_slice()).collect();
        (first_step..first_step + self.steps_in_round(round, first_step))
            .map(|s| {
                let mut rng = Pcg64::seed_from_u64(step_seed(self.cfg.seed ^ 0x0D15_7111, s));
                let w = windows_from(&[self.corpus], n_corpus, need, &mut rng, |_| 0);
                if self.cfg.batch_size == n_corpus {
                    return Ok(w);
                }
                let g = windows_from(&gen_refs, self.cfg.batch_size - n_corpus, need, &mut rng, |r| {
                    r.random_range(0..gen_refs.len())
                });
                ndarray::concatenate(Axis(0), &[w.view(), g.view()])
                    .map_err(|e| Error::numerical("batch", e.to_string()))
            })
            .collect()
    }

    fn train_step(&self, student: &mut S4Model<f32>, w: &Array2<u32>, step: u64) -> Result<(LossStats, S4Model<f32>)> {
        let x = w.slice(s![.., ..self.cfg.window]);
        let y = w.slice(s![.., 1..]);
        let p = softmax3(&self.teacher.forward(x)?);
        let target = Target::Distill { tokens: y, teacher: p.view(), soft_weight: self.cfg.soft_weight };
        let opts = TrainOptions { dropout_seed: Some(step_seed(self.cfg.seed, step)), update_running_stats: true };
        forward_backward(student, Input::Tokens(x), None, target, opts)
    }

    fn round_metrics(&self, student: &S4Model<f32>, _round: usize, t: &RoundTraining) -> Result<DistillEval> {
        let [kl, acceptance_sampling, acceptance_greedy] = acceptance_estimates(student, self.teacher, &self.eval)?;
        Ok(DistillEval { step: t.step, train_loss: t.train_loss, kl, acceptance_sampling, acceptance_greedy })
    }

    fn settings(&self) -> serde_json::Value {
        serde_json::json!({"distill": self.cfg, "draft": self.student_config, "verifier": self.teacher.config(),
            "corpus": {"train_tokens": self.corpus.len(), "val_tokens": self.val.len()}})
    }

    /// Every setting but the number of steps, the draft's configuration, the verifier's weights and
    /// the corpus.
    fn resume_key(&self) -> serde_json::Value {
        let mut cfg = serde_json::to_value(self.cfg).expect("serializes");
        cfg.as_object_mut().expect("a struct").remove("steps");
        let weights = self
            .teacher
            .tensors()
            .into_iter()
            .flat_map(|(_, t)| t.iter().map(|v| u64::from(v.to_bits())).collect::<Vec<_>>());
        serde_json::json!({"distill": cfg, "draft": self.student_config, "verifier": fingerprint(weights),
            "train_tokens": fingerprint(self.corpus.iter().map(|&t| u64::from(t))),
            "val_tokens": fingerprint(self.val.iter().map(|&t| u64::from(t)))})
    }

    fn check_model(&self, student: &S4Model<f32>) -> Result<()> {
        if student.config() == &self.student_config {
            Ok(())
        } else {
            Err(Error::invalid("resume", "a checkpoint with a different draft configuration", "the same draft"))
        }
    }

    fn describe(&self, m: &DistillEval) -> String {
        format!(
            "step {}: train loss {:.4} | KL {:.4} | acceptance {:.3} (greedy {:.3})",
            m.step, m.train_loss, m.kl, m.acceptance_sampling, m.acceptance_greedy
        )
    }

    fn plot(&self, path: &Path, rounds: &[DistillEval]) -> Result<()> {
        let pts = |f: fn(&DistillEval) -> f64| rounds.iter().map(|e| (e.step as f64, f(e))).collect();
        let panels = [
            Panel {
                title: "distillation: loss and KL(verifier ‖ draft)".into(),
                x_label: "step".into(),
                y_label: "nats per token".into(),
                series: vec![
                    Series { label: "train loss".into(), points: pts(|e| e.train_loss) },
                    Series { label: "held-out KL".into(), points: pts(|e| e.kl) },
                ],
            },
            Panel {
                title: "held-out acceptance".into(),
                x_label: "step".into(),
                y_label: "rate".into(),
                series: vec![
                    Series { label: "sampling: mean sum min(p, q)".into(), points: pts(|e| e.acceptance_sampling) },
                    Series { label: "greedy: arg-max agreement".into(), points: pts(|e| e.acceptance_greedy) },
                ],
            },
        ];
        write_png(path, &panels, 900, 320)
    }

    fn name(&self) -> &str {
        "distillation"
    }
}

/// Distills `student` in memory (nothing written): [`distill_run`] without an output folder.
///
/// # Errors
/// As [`distill_run`].
pub fn distill(
    student: &mut S4Model<f32>,
    teacher: &Gpt<f32>,
    corpus: &[u32],
    val: &[u32],
    cfg: &DistillConfig,
    progress: bool,
) -> Result<DistillReport> {
    distill_run(student, teacher, corpus, val, cfg, None, &RunOptions { progress, ..Default::default() })
}

/// Distills `student` (an S4 causal language model) from `teacher` on `corpus` tokens, and
/// measures the [`acceptance_estimates`] on `cfg.eval_windows` random `val` windows before and
/// every `eval_every` steps. Each step minimizes the mean over the batch's positions of
/// CE(next token) + β·KL(p_teacher ‖ q_student) (β = `cfg.soft_weight`). With `out`, the run is
/// written there and can be resumed or extended ([`RunOptions`]; on resume `student` is replaced
/// by the checkpoint's; the verifier text is generated again, identically, from the seed).
///
/// # Errors
/// Bad settings, a student that is not an unpooled token model with the teacher's vocabulary, a
/// corpus or validation text shorter than a window, a folder holding another run, or a non-finite
/// loss (naming the step).
pub fn distill_run(
    student: &mut S4Model<f32>,
    teacher: &Gpt<f32>,
    corpus: &[u32],
    val: &[u32],
    cfg: &DistillConfig,
    out: Option<&Path>,
    opts: &RunOptions,
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
    // the verifier-generated sequences and the evaluation windows
    Estimate::new(format!("distillation data for generated = {}, window = {}", cfg.generated, cfg.window))
        .arrays::<u32>(cfg.generated.saturating_add(cfg.eval_windows.max(1)), &[need])
        .check()?;
    let mut rng = Pcg64::seed_from_u64(cfg.seed);
    let eval = windows_from(&[val], cfg.eval_windows.max(1), need, &mut rng, |_| 0);
    student.set_kernel_length(cfg.window)?;
    let initial = acceptance_estimates(student, teacher, &eval)?;

    // sequence-level distillation data: the verifier's own continuations of corpus prompts
    let t0 = Instant::now();
    let prompts = windows_from(&[corpus], cfg.generated, cfg.prompt_len, &mut rng, |_| 0);
    let mut gen_bar =
        Progress::new(opts.progress).with_sink(opts.progress_sink.clone()).bar(cfg.generated as u64, "generating");
    let gen_bar_lock = std::sync::Mutex::new(&mut gen_bar);
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
            gen_bar_lock.lock().expect("no panic while holding the bar").tick("sequences");
            Ok([prompt, g.tokens].concat())
        })
        .collect::<Result<_>>()?;
    gen_bar.finish();
    let generate_seconds = t0.elapsed().as_secs_f64();

    let job = DistillJob { teacher, corpus, val, generated, eval, cfg, student_config: student.config().clone() };
    let t1 = Instant::now();
    let (rounds, trained) = trainer::run(&job, student.clone(), &cfg.optim, out, opts)?;
    *student = trained;
    let last = rounds.last().cloned().ok_or_else(|| Error::invalid("steps", 0, "at least 1"))?;
    Ok(DistillReport {
        steps: last.step as usize,
        final_loss: last.train_loss,
        generate_seconds,
        train_seconds: t1.elapsed().as_secs_f64(),
        eval_kl: last.kl,
        eval_acceptance_sampling: last.acceptance_sampling,
        eval_acceptance_greedy: last.acceptance_greedy,
        initial,
        rounds,
    })
}

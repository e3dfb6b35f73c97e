//! The one training loop, generic over a [`Job`]: minibatch steps with AdamW, data parallelism
//! inside each step, a progress bar (plain lines when stderr is not a terminal), evaluation and a
//! metrics record per round, learning curves, checkpoints after every round, exact resume,
//! extension of a finished run, and a stop on non-finite values. Three jobs run on it: the
//! long-range tasks ([`supervised`](super::supervised), `s4 train`), the transformer language
//! model ([`lm`](super::lm), `s4 train-lm`) and the distillation of an S4 draft
//! ([`distill`](crate::speculative::distill), `s4 distill`).
//!
//! # Output folder
//! ```text
//! OUT/config.json        the job's settings (what the numbers depend on)
//! OUT/metrics.jsonl      one JSON object per round (the job's metrics: an epoch, or an evaluation interval;
//!                        the first round after an extension also carries `"extended": {"from_steps", "to_steps"}`)
//! OUT/curves.png         learning curves
//! OUT/checkpoint/        the last completed round: the model folder (config.json + model.safetensors),
//!                        optimizer.safetensors (both AdamW moments and the step) and state.json
//! ```
//!
//! # Determinism and resume
//! A job draws the batches of a round from (seed, round) or (seed, step), never from a stream
//! that runs across rounds, so a run resumed after round r continues exactly as the uninterrupted
//! run did: the checkpoint holds the weights (and BatchNorm statistics), both moments and the
//! step. A resume refuses a changed job (its [`Job::resume_key`] differs) and a changed length unless
//! it is an extension ([`RunOptions::extend`]): then the learning-rate schedule keeps the length of
//! the original run, the extra rounds continue at its final rate, and the extension is recorded in
//! `metrics.jsonl` (on the first round it adds) and `state.json`; `config.json` keeps the settings
//! the run started with. Every parallel reduction sums per-sequence parts in sequence order, so nothing
//! depends on the number of threads.

use super::optim::{AdamW, OptimConfig};
use crate::error::{Error, Result};
use crate::io::{read_json, write_atomic, write_json};
use crate::model::LossStats;
use crate::nn::params::{first_non_finite, Parameters, Trainable};
use safetensors::tensor::TensorView;
use safetensors::Dtype;
use std::io::IsTerminal;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

/// What one training job is: its model type, its batches, its loss, its evaluation.
pub trait Job: Sync {
    /// The trained model.
    type Model: Trainable;
    /// One step's data.
    type Batch: Send;
    /// One round's record (a line of `metrics.jsonl`).
    type Metrics: Clone + std::fmt::Debug + Send + serde::Serialize + serde::de::DeserializeOwned;

    /// Optimizer steps of the whole run (the learning-rate schedule's length).
    fn total_steps(&self) -> u64;

    /// The batches of 1-based `round`, drawn from the job's seed and the round alone (so a resume
    /// replays them exactly); `first_step` is the global 0-based step of the first one.
    ///
    /// # Errors
    /// Data that do not fit the model.
    fn batches(&self, round: usize, first_step: u64) -> Result<Vec<Self::Batch>>;

    /// Optimizer steps in 1-based `round`, which starts at the global 0-based step `first_step`
    /// (the length of [`batches`](Self::batches)). Evaluation intervals end at multiples of the
    /// interval, so a run extended from a length that was not one keeps that grid.
    fn steps_in_round(&self, round: usize, first_step: u64) -> u64;

    /// The training loss statistics and the gradients (a model of the same shape) of one batch at
    /// 0-based global `step`.
    ///
    /// # Errors
    /// Inputs the model refuses, or non-finite activations.
    fn train_step(&self, model: &mut Self::Model, batch: &Self::Batch, step: u64) -> Result<(LossStats, Self::Model)>;

    /// The record of a finished round: the training statistics the loop measured and the job's
    /// evaluation of `model`.
    ///
    /// # Errors
    /// Evaluation failures.
    fn round_metrics(&self, model: &Self::Model, round: usize, training: &RoundTraining) -> Result<Self::Metrics>;

    /// The run's settings, written to `OUT/config.json` when the run starts.
    fn settings(&self) -> serde_json::Value;

    /// What a resume must not change, as a JSON object (the length of the run excluded): kept in
    /// the checkpoint and compared field by field.
    fn resume_key(&self) -> serde_json::Value;

    /// Checks a checkpoint's model against the job (its configuration), on resume.
    ///
    /// # Errors
    /// A model the job would not have built.
    fn check_model(&self, model: &Self::Model) -> Result<()>;

    /// The model this job trains, in a refusal to resume from another kind of checkpoint (e.g.
    /// `--arch s4`).
    fn model_description(&self) -> String {
        self.name().to_string()
    }

    /// What a round is called (`epoch`, `round`): `state.json` counts `{name}s_done`.
    fn round_name(&self) -> &str {
        "round"
    }

    /// The progress-bar message after `count` training predictions of the round with mean loss
    /// `loss` and `correct` arg-max hits, in `seconds`.
    fn progress_message(&self, stats: &LossStats, seconds: f64) -> String {
        format!("loss {:.4} {:.0}/s", stats.loss, stats.count as f64 / seconds.max(1e-9))
    }

    /// One line summarizing a round's record (printed when progress is shown).
    fn describe(&self, metrics: &Self::Metrics) -> String;

    /// Draws the learning curves of `metrics` into `path` (PNG).
    ///
    /// # Errors
    /// A failure to write the file.
    fn plot(&self, path: &Path, metrics: &[Self::Metrics]) -> Result<()>;

    /// The name of the job in errors (e.g. `training`).
    fn name(&self) -> &str;
}

/// What the loop measured over one round, handed to [`Job::round_metrics`].
#[derive(Clone, Debug, PartialEq)]
pub struct RoundTraining {
    /// Optimizer steps so far (all rounds).
    pub step: u64,
    /// Mean training loss over the round's predictions.
    pub train_loss: f64,
    /// Correct arg-max predictions over the round (classification).
    pub correct: usize,
    /// Predictions of the round (sequences or positions).
    pub count: usize,
    /// Learning-rate multiplier at the end of the round.
    pub lr_factor: f64,
    /// Mean global gradient norm (before clipping).
    pub grad_norm: f64,
    /// Wall time of the round's training steps, in seconds.
    pub train_seconds: f64,
}

/// How to run (not part of the result: any thread count gives the same numbers).
#[derive(Clone, Debug, Default)]
pub struct RunOptions {
    /// Worker threads (`None`: all cores).
    pub threads: Option<usize>,
    /// Show progress on stderr (a bar on a terminal, a line at least every 30 s otherwise).
    pub progress: bool,
    /// Continue from `OUT/checkpoint` if it exists.
    pub resume: bool,
    /// Stop after this many rounds in this invocation (the schedule still spans the whole run);
    /// for interrupting and resuming.
    pub stop_after: Option<usize>,
    /// With `resume`: the job may be longer than the checkpoint's run (more epochs or steps); the
    /// schedule keeps the original length and the extension is recorded in `metrics.jsonl` (on the
    /// first round it adds, as `"extended": {"from_steps", "to_steps"}`) and `state.json`.
    pub extend: bool,
    /// Where progress lines go instead of stderr (with `progress`), e.g. a Python callback.
    pub progress_sink: Option<ProgressSink>,
}

/// A receiver of progress lines (one line per call, no newline): what a binding passes to show
/// progress where its users look (a notebook, a logger) instead of the process's stderr.
#[derive(Clone)]
pub struct ProgressSink(pub std::sync::Arc<dyn Fn(&str) + Send + Sync>);

impl std::fmt::Debug for ProgressSink {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("ProgressSink")
    }
}

impl RunOptions {
    /// Checks the thread count: `None`, or 1 to 4 × the available cores
    /// ([`check_threads`](crate::budget::check_threads)).
    ///
    /// # Errors
    /// A thread count outside that range.
    pub fn validate(&self) -> Result<()> {
        self.threads.map(crate::budget::check_threads).transpose()?;
        Ok(())
    }
}

/// Saved with each checkpoint as `state.json` (`rounds_done` under the job's name for a round,
/// e.g. `epochs_done`).
#[derive(Clone, Debug, PartialEq)]
struct State {
    rounds_done: usize,
    step: u64,
    /// The length of the learning-rate schedule, in steps (the original run's).
    schedule_steps: u64,
    /// Each extension: (steps before, steps after).
    extensions: Vec<(u64, u64)>,
    /// What a resume must not change ([`Job::resume_key`]).
    key: serde_json::Value,
}

impl State {
    fn to_json(&self, round_name: &str) -> serde_json::Value {
        let mut m = serde_json::Map::new();
        m.insert(format!("{round_name}s_done"), self.rounds_done.into());
        m.insert("step".into(), self.step.into());
        m.insert("schedule_steps".into(), self.schedule_steps.into());
        m.insert("extensions".into(), serde_json::json!(self.extensions));
        m.insert("run".into(), self.key.clone());
        serde_json::Value::Object(m)
    }

    fn from_json(v: &serde_json::Value, round_name: &str, path: &Path) -> Result<State> {
        let bad = |what: &str| Error::format(path, format!("no valid {what:?}"));
        let num = |k: &str| v.get(k).and_then(|x| x.as_u64()).ok_or_else(|| bad(k));
        let done = format!("{round_name}s_done");
        Ok(State {
            rounds_done: num(&done)? as usize,
            step: num("step")?,
            schedule_steps: num("schedule_steps")?,
            extensions: serde_json::from_value(v.get("extensions").cloned().unwrap_or_default())
                .map_err(|_| bad("extensions"))?,
            key: v.get("run").cloned().ok_or_else(|| bad("run"))?,
        })
    }
}

/// An extension of a run's length by `--extend`, in optimizer steps.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
struct Extended {
    from_steps: u64,
    to_steps: u64,
}

/// A line of `metrics.jsonl`: the job's metrics of a round, and the extension that round was the
/// first of, if any.
#[derive(serde::Serialize, serde::Deserialize)]
struct MetricsLine<M> {
    #[serde(flatten)]
    metrics: M,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    extended: Option<Extended>,
}

const CHECKPOINT: &str = "checkpoint";
const METRICS: &str = "metrics.jsonl";
const CURVES: &str = "curves.png";

/// The checkpoint folder to resume from: `checkpoint`, or, if a swap was cut short, the complete
/// `checkpoint.tmp` (its `state.json` is written last) or else `checkpoint.old`.
pub fn checkpoint_dir(out: &Path) -> Option<PathBuf> {
    [CHECKPOINT, "checkpoint.tmp", "checkpoint.old"].iter().map(|n| out.join(n)).find(|p| p.join("state.json").exists())
}

/// Checks that a run may be written into `out`: without `resume`, `out` must not hold a previous
/// run (a checkpoint or metrics). [`run`] checks this too; commands call it before printing
/// anything.
///
/// # Errors
/// A previous run in `out` without `resume`.
pub fn check_out(out: &Path, resume: bool) -> Result<()> {
    if !resume && (checkpoint_dir(out).is_some() || out.join(METRICS).exists()) {
        return Err(Error::invalid(
            "--out",
            out.display(),
            "a folder without a previous run (continue it with --resume, replace it with --force, or choose another folder)",
        ));
    }
    Ok(())
}

/// Trains `model` (or, on resume, the checkpoint's model) on `job` with AdamW over `optim`,
/// writing the run into `out` if given (see the module docs; without `out` nothing is written and
/// nothing can be resumed). Returns every round's metrics (including those before a resume) and the
/// trained model.
///
/// # Errors
/// An invalid `optim`, I/O errors, a folder holding another run (without `resume`), a checkpoint
/// of another job, model or length (see [`RunOptions::extend`]), an unbuildable thread pool, or a
/// non-finite loss, gradient or weight (the message names the step and the first bad tensor; the
/// last checkpoint is kept).
pub fn run<J: Job>(
    job: &J,
    model: J::Model,
    optim: &OptimConfig,
    out: Option<&Path>,
    opts: &RunOptions,
) -> Result<(Vec<J::Metrics>, J::Model)> {
    optim.validate()?;
    opts.validate()?;
    let pool = rayon::ThreadPoolBuilder::new()
        .num_threads(opts.threads.unwrap_or(0))
        .build()
        .map_err(|e| Error::invalid("threads", format!("{:?}", opts.threads), format!("a buildable pool ({e})")))?;
    let created = out.filter(|o| !o.exists());
    let result = pool.install(|| run_in_pool(job, model, optim, out, opts));
    // a run that failed before its first checkpoint leaves nothing behind in a folder it created
    if let (Err(_), Some(dir)) = (&result, created)
        && checkpoint_dir(dir).is_none()
    {
        let _ = std::fs::remove_dir_all(dir);
    }
    result
}

/// Removes the temporary files an interrupted run left in `out` (`.NAME.PID-K.tmp.EXT`, from
/// [`atomic_path`](crate::io::atomic_path)); the checkpoint's own `.tmp`/`.old` folders are left
/// to [`checkpoint_dir`].
fn remove_stale_temporaries(out: &Path) -> Result<()> {
    for entry in std::fs::read_dir(out).map_err(|e| Error::io(out, e))? {
        let path = entry.map_err(|e| Error::io(out, e))?.path();
        let name = path.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
        if name.starts_with('.') && name.contains(".tmp.") && path.is_file() {
            std::fs::remove_file(&path).map_err(|e| Error::io(&path, e))?;
        }
    }
    Ok(())
}

fn run_in_pool<J: Job>(
    job: &J,
    model: J::Model,
    optim: &OptimConfig,
    out: Option<&Path>,
    opts: &RunOptions,
) -> Result<(Vec<J::Metrics>, J::Model)> {
    let total_steps = job.total_steps();
    let fresh =
        State { rounds_done: 0, step: 0, schedule_steps: total_steps, extensions: Vec::new(), key: job.resume_key() };
    // `extended`: an extension made by this invocation, recorded on the first round it runs
    let (mut model, mut opt, mut state, lines, mut extended) = match out {
        None => {
            let opt = AdamW::new(&model, optim.clone())?;
            (model, opt, fresh, Vec::new(), None)
        }
        Some(out) => {
            check_out(out, opts.resume)?;
            std::fs::create_dir_all(out).map_err(|e| Error::io(out, e))?;
            match checkpoint_dir(out).filter(|_| opts.resume) {
                Some(dir) => {
                    remove_stale_temporaries(out)?;
                    resume::<J>(job, out, &dir, optim, total_steps, opts.extend)?
                }
                None => {
                    write_json(&out.join("config.json"), &job.settings())?;
                    let opt = AdamW::new(&model, optim.clone())?;
                    (model, opt, fresh, Vec::new(), None)
                }
            }
        }
    };
    // the rounds' metrics, and (round index, extension) for the lines that record one
    let mut marks: Vec<(usize, Extended)> =
        lines.iter().enumerate().filter_map(|(i, l)| l.extended.map(|e| (i, e))).collect();
    let mut metrics: Vec<J::Metrics> = lines.into_iter().map(|l| l.metrics).collect();
    let rounds = state.rounds_done + rounds_left(job, state.rounds_done, state.step, total_steps);
    let last_round = opts.stop_after.map_or(rounds, |s| (state.rounds_done + s).min(rounds));
    let progress = Progress::new(opts.progress).with_sink(opts.progress_sink.clone());
    while state.rounds_done < last_round {
        let round = state.rounds_done + 1;
        let batches = job.batches(round, state.step)?;
        let mut bar = progress.bar(batches.len() as u64, &format!("{} {round}/{rounds}", job.round_name()));
        let t0 = Instant::now();
        let mut seen = LossStats::default();
        let (mut loss_sum, mut gn_sum, mut lr_factor) = (0.0, 0.0, 0.0);
        for batch in &batches {
            let (stats, mut grads) = job.train_step(&mut model, batch, state.step).map_err(|e| {
                let overflow = matches!(e, Error::Numerical { .. })
                    || (matches!(e, Error::InvalidArgument { .. }) && e.to_string().contains("non-finite"));
                if overflow {
                    overflow_error(job, out, &mut model, state.step + 1, "", &e)
                } else {
                    e
                }
            })?;
            if !stats.loss.is_finite() {
                let culprit = first_non_finite(&mut grads)
                    .map(|g| format!("first non-finite gradient {g}"))
                    .or_else(|| first_non_finite(&mut model).map(|p| format!("first non-finite weight {p}")))
                    .unwrap_or_else(|| "weights and gradients finite".into());
                return Err(non_finite(job, out, state.step + 1, &format!("loss {} ({culprit})", stats.loss)));
            }
            if let Some(g) = first_non_finite(&mut grads) {
                return Err(non_finite(job, out, state.step + 1, &format!("non-finite gradient {g}")));
            }
            let info = opt.step(&mut model, &mut grads, state.schedule_steps);
            if let Some(p) = first_non_finite(&mut model) {
                return Err(non_finite(job, out, state.step + 1, &format!("non-finite weight {p} after the update")));
            }
            state.step += 1;
            lr_factor = info.lr_factor;
            loss_sum += stats.loss * stats.count as f64;
            seen.correct += stats.correct;
            seen.count += stats.count;
            gn_sum += info.grad_norm;
            seen.loss = loss_sum / seen.count.max(1) as f64;
            bar.tick(&job.progress_message(&seen, t0.elapsed().as_secs_f64()));
        }
        bar.finish();
        let training = RoundTraining {
            step: state.step,
            train_loss: seen.loss,
            correct: seen.correct,
            count: seen.count,
            lr_factor,
            grad_norm: gn_sum / batches.len().max(1) as f64,
            train_seconds: t0.elapsed().as_secs_f64(),
        };
        // an evaluation that overflows inside the network stops the run as a non-finite loss does
        let m = job.round_metrics(&model, round, &training).map_err(|e| match e {
            Error::Numerical { .. } => overflow_error(job, out, &mut model, state.step, "evaluation: ", &e),
            e => e,
        })?;
        progress.line(&format!("{} {round}: {}", job.round_name(), job.describe(&m)));
        if let Some(e) = extended.take() {
            marks.push((metrics.len(), e));
        }
        metrics.push(m);
        state.rounds_done = round;
        if let Some(out) = out {
            // metrics first: a crash between the two leaves an extra line that resume truncates
            write_metrics(out, &metrics, &marks)?;
            save_checkpoint(out, &model, &mut opt, &state.to_json(job.round_name()))?;
            job.plot(&out.join(CURVES), &metrics)?;
        }
    }
    Ok((metrics, model))
}

/// The model, optimizer, state and metrics of the checkpoint in `dir`, checked against `job`, and
/// the extension this resume makes (if `extend` lengthens the run).
#[allow(clippy::type_complexity)]
fn resume<J: Job>(
    job: &J,
    out: &Path,
    dir: &Path,
    optim: &OptimConfig,
    total_steps: u64,
    extend: bool,
) -> Result<(J::Model, AdamW<J::Model>, State, Vec<MetricsLine<J::Metrics>>, Option<Extended>)> {
    // an s4 folder's "format", or a Hugging Face folder's "model_type"
    let folder: serde_json::Value = read_json(&dir.join("config.json"))?;
    let format = folder.get("format").or_else(|| folder.get("model_type")).and_then(|f| f.as_str()).map(str::to_string);
    if format.as_deref() != Some(J::Model::FORMAT) {
        return Err(Error::invalid(
            "resume",
            format!("a checkpoint in {} of format {}", dir.display(), format.unwrap_or_default()),
            format!(
                "a {} checkpoint for {} (use a new --out to start over)",
                J::Model::FORMAT,
                job.model_description()
            ),
        ));
    }
    let spath = dir.join("state.json");
    let mut state = State::from_json(&read_json(&spath)?, job.round_name(), &spath)?;
    let key = job.resume_key();
    if state.key != key {
        let mut changed = Vec::new();
        json_diff("", &state.key, &key, &mut changed);
        return Err(Error::invalid(
            "resume",
            format!("the run in {} with other settings ({})", out.display(), changed.join(", ")),
            "the checkpoint's settings (the schedule and the data order depend on them; use a new --out to start over)",
        ));
    }
    let model = J::Model::load_folder(dir)?;
    job.check_model(&model)?;
    let mut opt = AdamW::new(&model, optim.clone())?;
    load_optimizer(&mut opt, &dir.join("optimizer.safetensors"))?;
    let run_steps = state.extensions.last().map_or(state.schedule_steps, |e| e.1);
    if total_steps != run_steps {
        if !(extend && total_steps > run_steps) {
            return Err(Error::invalid(
                "resume",
                format!("a run of {total_steps} steps"),
                format!(
                    "the checkpoint's run length of {run_steps} steps (the schedule depends on it; a longer run \
                     continues it only with --extend)"
                ),
            ));
        }
        state.extensions.push((run_steps, total_steps));
    }
    let extended = (total_steps != run_steps).then_some(Extended { from_steps: run_steps, to_steps: total_steps });
    let mut metrics = read_metrics::<MetricsLine<J::Metrics>>(out)?;
    if metrics.len() < state.rounds_done {
        return Err(Error::format(
            out.join(METRICS),
            format!("{} rounds of metrics, the checkpoint has {}", metrics.len(), state.rounds_done),
        ));
    }
    metrics.truncate(state.rounds_done);
    Ok((model, opt, state, metrics, extended))
}

/// The trainable entry of largest magnitude, as ("name[index]", value).
fn largest_weight<M: Parameters<Scalar = f32>>(model: &mut M) -> (String, f32) {
    let mut best = (String::new(), 0.0f32);
    for t in model.parameters_mut() {
        for (i, v) in t.values.iter().enumerate() {
            if v.abs() > best.1.abs() {
                best = (format!("{}[{i}]", t.name), *v);
            }
        }
    }
    best
}

/// The error for an overflow inside the network (finite weights, non-finite activations) at
/// `step`, in training or (`stage` = "evaluation: ") evaluation: the run stops as on a non-finite
/// loss, naming the largest weight.
fn overflow_error<J: Job>(
    job: &J,
    out: Option<&Path>,
    model: &mut J::Model,
    step: u64,
    stage: &str,
    e: &Error,
) -> Error {
    let (name, v) = largest_weight(model);
    non_finite(job, out, step, &format!("{stage}{e} (largest weight {name} = {v:e})"))
}

fn non_finite<J: Job>(job: &J, out: Option<&Path>, step: u64, what: &str) -> Error {
    let kept = match out.and_then(checkpoint_dir) {
        Some(d) => format!("; the last good checkpoint is kept in {}", d.display()),
        None if out.is_some() => "; no checkpoint yet".to_string(),
        None => String::new(),
    };
    Error::numerical(job.name(), format!("stopped at step {step}: {what}{kept}"))
}

/// Writes the AdamW moments and the step into `path` (safetensors, atomically).
fn save_optimizer<M: Parameters<Scalar = f32>>(opt: &mut AdamW<M>, path: &Path) -> Result<()> {
    let mut bufs: Vec<(String, Vec<u8>, usize)> = Vec::new();
    for (prefix, model) in [("m.", &mut opt.m), ("v.", &mut opt.v)] {
        for t in model.parameters_mut() {
            let bytes: Vec<u8> = t.values.iter().flat_map(|x| x.to_le_bytes()).collect();
            bufs.push((format!("{prefix}{}", t.name), bytes, t.values.len()));
        }
    }
    let views: Vec<(String, TensorView)> = bufs
        .iter()
        .map(|(n, b, len)| (n.clone(), TensorView::new(Dtype::F32, vec![*len], b).expect("length matches")))
        .collect();
    let meta = std::collections::HashMap::from([("step".to_string(), opt.step.to_string())]);
    let bytes = safetensors::serialize(views, Some(meta))
        .map_err(|e| Error::format(path, format!("cannot serialize the optimizer state: {e}")))?;
    write_atomic(path, &bytes)
}

/// Reads the moments saved by [`save_optimizer`] into `opt` (every tensor must be present with
/// the right length; nothing is changed on error).
fn load_optimizer<M: Parameters<Scalar = f32>>(opt: &mut AdamW<M>, path: &Path) -> Result<()> {
    let bytes = std::fs::read(path).map_err(|e| Error::io(path, e))?;
    let (_, meta) = safetensors::SafeTensors::read_metadata(&bytes)
        .map_err(|e| Error::format(path, format!("not a safetensors file: {e}")))?;
    let st = safetensors::SafeTensors::deserialize(&bytes)
        .map_err(|e| Error::format(path, format!("not a safetensors file: {e}")))?;
    let step: u64 = meta
        .metadata()
        .as_ref()
        .and_then(|m| m.get("step"))
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| Error::format(path, "missing the optimizer step in the metadata"))?;
    let mut staged = opt.clone();
    for (prefix, model) in [("m.", &mut staged.m), ("v.", &mut staged.v)] {
        for t in model.parameters_mut() {
            let name = format!("{prefix}{}", t.name);
            let view = st.tensor(&name).map_err(|_| Error::format(path, format!("missing tensor {name}")))?;
            if view.dtype() != Dtype::F32 || view.data().len() != 4 * t.values.len() {
                return Err(Error::format(
                    path,
                    format!(
                        "tensor {name}: {:?} with {} bytes, expected F32 x {}",
                        view.dtype(),
                        view.data().len(),
                        t.values.len()
                    ),
                ));
            }
            for (v, b) in t.values.iter_mut().zip(view.data().chunks_exact(4)) {
                *v = f32::from_le_bytes([b[0], b[1], b[2], b[3]]);
            }
        }
    }
    staged.step = step;
    *opt = staged;
    Ok(())
}

/// Writes the checkpoint folder for a completed round: into `checkpoint.tmp`, then swapped in by
/// renames, so `OUT/checkpoint` is always a complete checkpoint (the previous one survives any
/// interruption).
fn save_checkpoint<M: Trainable>(out: &Path, model: &M, opt: &mut AdamW<M>, state: &serde_json::Value) -> Result<()> {
    let tmp = out.join("checkpoint.tmp");
    if tmp.exists() {
        std::fs::remove_dir_all(&tmp).map_err(|e| Error::io(&tmp, e))?;
    }
    model.save_folder(&tmp)?;
    save_optimizer(opt, &tmp.join("optimizer.safetensors"))?;
    write_json(&tmp.join("state.json"), state)?;
    // one complete checkpoint on disk at every moment: checkpoint, or mid-swap .old and the
    // complete .tmp (the order checkpoint_dir looks in)
    crate::io::swap_folder(&tmp, &out.join(CHECKPOINT), &out.join("checkpoint.old"))
}

/// The leaves that differ between two JSON values, as `path old -> new` (objects compared key by
/// key, anything else as a whole).
fn json_diff(path: &str, old: &serde_json::Value, new: &serde_json::Value, out: &mut Vec<String>) {
    match (old, new) {
        (serde_json::Value::Object(a), serde_json::Value::Object(b)) => {
            let keys: std::collections::BTreeSet<&String> = a.keys().chain(b.keys()).collect();
            for k in keys {
                let p = if path.is_empty() { k.clone() } else { format!("{path}.{k}") };
                let none = serde_json::Value::Null;
                json_diff(&p, a.get(k).unwrap_or(&none), b.get(k).unwrap_or(&none), out);
            }
        }
        (a, b) if a != b => out.push(format!("{path} {a} -> {b}")),
        _ => {}
    }
}

/// The records of `OUT/metrics.jsonl` (none if the file does not exist).
///
/// # Errors
/// An unreadable file or a line that is not a record of `M`.
pub fn read_metrics<M: serde::de::DeserializeOwned>(out: &Path) -> Result<Vec<M>> {
    let path = out.join(METRICS);
    if !path.exists() {
        return Ok(Vec::new());
    }
    let text = std::fs::read_to_string(&path).map_err(|e| Error::io(&path, e))?;
    text.lines()
        .filter(|l| !l.trim().is_empty())
        .enumerate()
        .map(|(i, l)| serde_json::from_str(l).map_err(|e| Error::format(&path, format!("line {}: {e}", i + 1))))
        .collect()
}

/// Writes `metrics` as `metrics.jsonl`, line i carrying the extension `marks` gives for round i.
fn write_metrics<M: serde::Serialize>(out: &Path, metrics: &[M], marks: &[(usize, Extended)]) -> Result<()> {
    let mut text = String::new();
    for (i, m) in metrics.iter().enumerate() {
        let extended = marks.iter().find(|(r, _)| *r == i).map(|(_, e)| *e);
        text.push_str(&serde_json::to_string(&MetricsLine { metrics: m, extended }).expect("serializes"));
        text.push('\n');
    }
    write_atomic(&out.join(METRICS), text.as_bytes())
}

/// Progress on stderr: an indicatif bar on a terminal; otherwise a plain line at most every 30 s
/// (and at the end), so logs of long runs show that they advance. With a [`ProgressSink`] the
/// lines go to the sink instead, at most every 2 s.
#[derive(Clone, Debug)]
pub struct Progress {
    show: bool,
    terminal: bool,
    sink: Option<ProgressSink>,
}

impl Progress {
    /// Progress shown if `show`, as a bar if stderr is a terminal.
    pub fn new(show: bool) -> Self {
        Progress { show, terminal: std::io::stderr().is_terminal(), sink: None }
    }

    /// The same, with lines sent to `sink` (if any) instead of stderr.
    pub fn with_sink(mut self, sink: Option<ProgressSink>) -> Self {
        if sink.is_some() {
            self.terminal = false;
        }
        self.sink = sink;
        self
    }

    /// One line of progress (if shown).
    pub fn line(&self, text: &str) {
        if self.show {
            emit(self.sink.as_ref(), text);
        }
    }

    /// A bar (or line reporter) over `len` units, labelled `prefix`.
    pub fn bar(&self, len: u64, prefix: &str) -> ProgressBar {
        let bar = if self.show && self.terminal {
            let b = indicatif::ProgressBar::new(len);
            b.set_style(
                indicatif::ProgressStyle::with_template("{prefix} [{bar:30}] {pos}/{len} {msg} ({elapsed}<{eta})")
                    .expect("valid template")
                    .progress_chars("=> "),
            );
            b.set_prefix(prefix.to_string());
            b
        } else {
            indicatif::ProgressBar::hidden()
        };
        ProgressBar {
            bar,
            lines: self.show && !self.terminal,
            every: Duration::from_secs(if self.sink.is_some() { 2 } else { 30 }),
            sink: self.sink.clone(),
            prefix: prefix.to_string(),
            len,
            pos: 0,
            started: Instant::now(),
            last_line: Instant::now(),
        }
    }
}

/// One progress bar of [`Progress`].
#[derive(Debug)]
pub struct ProgressBar {
    bar: indicatif::ProgressBar,
    lines: bool,
    every: Duration,
    sink: Option<ProgressSink>,
    prefix: String,
    len: u64,
    pos: u64,
    started: Instant,
    last_line: Instant,
}

impl ProgressBar {
    /// One unit done; `message` describes the state.
    pub fn tick(&mut self, message: &str) {
        self.pos += 1;
        self.bar.set_message(message.to_string());
        self.bar.inc(1);
        if self.lines && (self.last_line.elapsed() >= self.every || self.pos == self.len) {
            self.last_line = Instant::now();
            let line = format!(
                "{} {}/{} {message} ({:.0} s)",
                self.prefix,
                self.pos,
                self.len,
                self.started.elapsed().as_secs_f64()
            );
            emit(self.sink.as_ref(), &line);
        }
    }

    /// Removes the bar.
    pub fn finish(&self) {
        self.bar.finish_and_clear();
    }
}

/// A progress line to `sink`, or to stderr.
fn emit(sink: Option<&ProgressSink>, line: &str) {
    match sink {
        Some(sink) => (sink.0)(line),
        None => eprintln!("{line}"),
    }
}

/// The seed of 0-based `step` of a run seeded with `seed` (SplitMix64's finalizer of both): the
/// streams of consecutive steps are decorrelated, and a step's stream does not depend on the steps
/// before it, so a resumed run draws what the uninterrupted one did.
pub fn step_seed(seed: u64, step: u64) -> u64 {
    splitmix64(seed ^ splitmix64(step))
}

/// SplitMix64's finalizer.
fn splitmix64(x: u64) -> u64 {
    let mut z = x.wrapping_add(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// FNV-1a over `values`, in hex: identifies a corpus or a model's weights in a resume check.
pub fn fingerprint(values: impl IntoIterator<Item = u64>) -> String {
    let h = values.into_iter().fold(0xcbf2_9ce4_8422_2325u64, |h, v| (h ^ v).wrapping_mul(0x0100_0000_01b3));
    format!("{h:016x}")
}

/// The steps of the round starting at global step `first_step` of a run of `steps` steps evaluated
/// every `every` steps (0: once, after the last): up to the next multiple of `every`, or the end.
pub fn interval_steps(steps: usize, every: usize, first_step: u64) -> u64 {
    let per = if every == 0 { steps } else { every.min(steps) }.max(1) as u64;
    (per - first_step % per).min((steps as u64).saturating_sub(first_step))
}

/// The rounds a run still has from global step `step` (after `rounds_done` rounds) to `total`.
fn rounds_left<J: Job>(job: &J, rounds_done: usize, mut step: u64, total: u64) -> usize {
    let mut rounds = 0;
    while step < total {
        let n = job.steps_in_round(rounds_done + rounds + 1, step);
        if n == 0 {
            break;
        }
        step += n;
        rounds += 1;
    }
    rounds
}

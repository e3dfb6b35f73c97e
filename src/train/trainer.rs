//! The training loop: minibatches, data parallelism, evaluation, metrics, curves, checkpoints,
//! exact resume and a stop on non-finite values, for both architectures ([`Arch`]): the S4 model
//! ([`S4Model`], `TrainConfig::model`) and the transformer encoder classifier, the LRA baseline
//! ([`TransformerClassifier`], `TrainConfig::transformer`). One loop trains either, through the
//! small [`TrainModel`] trait (a batch's forward/backward and evaluation loss, checkpoint save and
//! load) and [`Parameters`] (tensors by name and optimizer group, for AdamW, the optimizer state and
//! the non-finite checks).
//!
//! # Output folder
//! ```text
//! OUT/config.json        the TrainConfig, the task name and the split sizes
//! OUT/metrics.jsonl      one JSON object per epoch (EpochMetrics)
//! OUT/curves.png         learning curves
//! OUT/checkpoint/        the last completed epoch: config.json + model.safetensors (a model folder:
//!                        "format" s4-model, which `s4 run` also loads, or transformer-classifier;
//!                        `s4 eval` loads both), optimizer.safetensors, state.json
//! ```
//!
//! # Determinism
//! Epoch e visits the training set in an order drawn from (seed, e) (token sequences are bucketed by
//! length within pools of 50 batches, to cut padding); the dropout stream of step s is drawn from
//! (seed, s) (S4; the transformer baseline trains without dropout). Every parallel reduction
//! (weight gradients over the batch) sums per-sequence parts in sequence order, so the result does
//! not depend on the number of threads.
//! A checkpoint holds the weights, the BatchNorm statistics (S4), both AdamW moments and the step,
//! so a run resumed from epoch e continues exactly as the uninterrupted run did.
//!
//! ```
//! use s4::data::{adding, SplitSizes};
//! use s4::train::trainer::checkpoint_dir;
//! use s4::train::{preset, train, RunOptions};
//! let task = adding::generate(&adding::Config { len: 32 }, &SplitSizes::new(32, 8, 8), 0)?;
//! let mut cfg = preset("tiny")?;
//! cfg.epochs = 2;
//! let out = std::env::temp_dir().join(format!("s4-doc-trainer-{}", std::process::id()));
//! # std::fs::remove_dir_all(&out).ok();
//! // one epoch, interrupted, then resumed: the same metrics as an uninterrupted run
//! train(&task, &cfg, &out, &RunOptions { stop_after: Some(1), ..Default::default() })?;
//! assert!(checkpoint_dir(&out).is_some());
//! let resumed = train(&task, &cfg, &out, &RunOptions { resume: true, ..Default::default() })?;
//! let whole_dir = out.with_extension("whole");
//! # std::fs::remove_dir_all(&whole_dir).ok();
//! let whole = train(&task, &cfg, &whole_dir, &RunOptions::default())?;
//! assert_eq!(resumed.metrics.len(), 2);
//! assert_eq!(resumed.metrics[1].test_loss, whole.metrics[1].test_loss);
//! // a folder with a run in it is not overwritten
//! assert!(train(&task, &cfg, &out, &RunOptions::default()).is_err());
//! # std::fs::remove_dir_all(&out).ok();
//! # std::fs::remove_dir_all(&whole_dir).ok();
//! # Ok::<(), s4::Error>(())
//! ```

use super::grad::{evaluate_loss, first_non_finite, forward_backward, LossStats, Parameters, Target, TrainOptions};
use super::optim::{AdamW, OptimConfig};
use crate::data::{batch_features, batch_tokens, Split, Targets, TaskData};
use crate::error::{Error, Result};
use crate::io::{read_json, write_atomic, write_json};
use crate::model::checkpoint;
use crate::model::{Input, S4Model, S4ModelConfig};
use crate::plot::{write_png, Panel, Series};
use crate::transformer::classifier::FORMAT as TRANSFORMER_FORMAT;
use crate::transformer::{TransformerClassifier, TransformerClassifierConfig};
use rand::seq::SliceRandom;
use rand::SeedableRng;
use safetensors::tensor::TensorView;
use safetensors::Dtype;
use std::path::{Path, PathBuf};
use std::time::Instant;

/// The architecture a run trains.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
#[cfg_attr(feature = "cli", derive(clap::ValueEnum))]
pub enum Arch {
    /// The S4 model of [`TrainConfig::model`] (`"s4"`).
    #[default]
    S4,
    /// The transformer encoder classifier of [`TrainConfig::transformer`], the LRA baseline
    /// (`"transformer"`).
    Transformer,
}

impl Arch {
    /// The name on the command line and in JSON: `s4` or `transformer`.
    pub fn name(self) -> &'static str {
        match self {
            Arch::S4 => "s4",
            Arch::Transformer => "transformer",
        }
    }
}

impl std::fmt::Display for Arch {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

impl std::str::FromStr for Arch {
    type Err = Error;

    /// Parses `s4` or `transformer`.
    ///
    /// # Errors
    /// Any other name (the message names it and the accepted ones).
    fn from_str(s: &str) -> Result<Self> {
        match s {
            "s4" => Ok(Arch::S4),
            "transformer" => Ok(Arch::Transformer),
            _ => Err(Error::invalid("arch", s, "s4 or transformer")),
        }
    }
}

/// Everything that defines a training run (plain struct, serde, `Default`; missing keys take the
/// default values, so a config.json written before `arch` existed loads as an S4 run).
#[derive(Clone, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(default)]
pub struct TrainConfig {
    /// Which model to train: [`Arch::S4`] (`model`) or [`Arch::Transformer`] (`transformer`).
    pub arch: Arch,
    /// The S4 model (input and output sizes are set from the task by [`for_task`](Self::for_task)).
    pub model: S4ModelConfig,
    /// The transformer baseline (input and output sizes and the number of positions are set from
    /// the task by [`for_task`](Self::for_task)).
    pub transformer: TransformerClassifierConfig,
    /// The optimizer.
    pub optim: OptimConfig,
    /// Passes over the training split.
    pub epochs: usize,
    /// Sequences per step.
    pub batch_size: usize,
    /// Seed of the initialization, the data order and dropout.
    pub seed: u64,
}

impl Default for TrainConfig {
    fn default() -> Self {
        TrainConfig {
            arch: Arch::S4,
            model: S4ModelConfig::default(),
            transformer: TransformerClassifierConfig::default(),
            optim: OptimConfig::default(),
            epochs: 10,
            batch_size: 32,
            seed: 0,
        }
    }
}

impl TrainConfig {
    /// The configuration with both models' encoders (vocabulary or d_input), output sizes and seeds
    /// set from the task, and the transformer's `max_len` set to the task's longest sequence (over
    /// all splits), as the S4 model ties its kernel length to it.
    pub fn for_task(mut self, task: &TaskData) -> Self {
        self.model.vocab_size = task.vocab_size;
        self.model.d_input = task.d_input;
        self.model.d_output = task.d_output;
        self.model.seed = self.seed;
        let t = &mut self.transformer;
        t.vocab_size = task.vocab_size;
        t.d_input = task.d_input;
        t.d_output = task.d_output;
        t.seed = self.seed;
        t.max_len = longest(task);
        self
    }

    /// Checks the configuration of the chosen architecture, the optimizer and the sizes.
    ///
    /// # Errors
    /// The first invalid value, by name.
    pub fn validate(&self) -> Result<()> {
        match self.arch {
            Arch::S4 => self.model.validate()?,
            Arch::Transformer => self.transformer.validate()?,
        }
        self.optim.validate()?;
        if self.epochs == 0 {
            return Err(Error::invalid("epochs", 0, "at least 1"));
        }
        if self.batch_size == 0 {
            return Err(Error::invalid("batch_size", 0, "at least 1"));
        }
        Ok(())
    }
}

/// The longest sequence of a task over all splits (at least 1).
fn longest(task: &TaskData) -> usize {
    [&task.train, &task.val, &task.test].iter().map(|s| s.max_len()).max().unwrap_or(1).max(1)
}

/// What the training loop needs of a model, beyond its [`Parameters`]: implemented by
/// [`S4Model<f32>`] and [`TransformerClassifier<f32>`], so that one loop ([`train`]) trains either.
pub trait TrainModel: Parameters<Scalar = f32> + std::fmt::Debug + Send + Sync {
    /// The `"format"` of the model folder in a checkpoint.
    const FORMAT: &'static str;

    /// A fresh model for `cfg` (as [`TrainConfig::for_task`] returns it) on a task whose longest
    /// sequence has `max_len` positions.
    ///
    /// # Errors
    /// An invalid configuration.
    fn build(cfg: &TrainConfig, max_len: usize) -> Result<Self>;

    /// Whether the model has `cfg`'s configuration of its architecture (checked on resume).
    fn matches(&self, cfg: &TrainConfig) -> bool;

    /// Training-mode forward, loss and backward of one batch: the loss statistics and the
    /// gradients (a model of the same shape).
    ///
    /// # Errors
    /// Inputs, lengths or targets that do not fit the model.
    fn train_batch(
        &mut self,
        input: Input<f32>,
        lengths: Option<&[usize]>,
        target: Target,
        opts: TrainOptions,
    ) -> Result<(LossStats, Self)>;

    /// Evaluation-mode loss statistics of one batch.
    ///
    /// # Errors
    /// As [`train_batch`](Self::train_batch).
    fn eval_batch(&self, input: Input<f32>, lengths: Option<&[usize]>, target: Target) -> Result<LossStats>;

    /// Writes the model folder (`config.json` + `model.safetensors`) into `dir`.
    ///
    /// # Errors
    /// I/O errors.
    fn save_model(&self, dir: &Path) -> Result<()>;

    /// Reads what [`save_model`](Self::save_model) wrote.
    ///
    /// # Errors
    /// Missing or invalid files.
    fn load_model(dir: &Path) -> Result<Self>;
}

impl TrainModel for S4Model<f32> {
    const FORMAT: &'static str = "s4-model";

    /// [`S4ModelConfig::build`], with every DPLR layer's C̃ tied to `max_len`.
    fn build(cfg: &TrainConfig, max_len: usize) -> Result<Self> {
        let mut model = cfg.model.build()?;
        model.set_kernel_length(max_len)?;
        Ok(model)
    }

    fn matches(&self, cfg: &TrainConfig) -> bool {
        self.config() == &cfg.model
    }

    fn train_batch(
        &mut self,
        input: Input<f32>,
        lengths: Option<&[usize]>,
        target: Target,
        opts: TrainOptions,
    ) -> Result<(LossStats, Self)> {
        forward_backward(self, input, lengths, target, opts)
    }

    fn eval_batch(&self, input: Input<f32>, lengths: Option<&[usize]>, target: Target) -> Result<LossStats> {
        evaluate_loss(self, input, lengths, target)
    }

    fn save_model(&self, dir: &Path) -> Result<()> {
        checkpoint::save(self, dir)
    }

    fn load_model(dir: &Path) -> Result<Self> {
        checkpoint::load(dir)
    }
}

impl TrainModel for TransformerClassifier<f32> {
    const FORMAT: &'static str = TRANSFORMER_FORMAT;

    /// [`TransformerClassifier::new`] of `cfg.transformer` (whose `max_len` [`TrainConfig::for_task`]
    /// set).
    fn build(cfg: &TrainConfig, _max_len: usize) -> Result<Self> {
        TransformerClassifier::new(cfg.transformer.clone())
    }

    fn matches(&self, cfg: &TrainConfig) -> bool {
        self.config() == &cfg.transformer
    }

    /// [`TransformerClassifier::forward_backward`] (no dropout: `opts` is not used).
    fn train_batch(
        &mut self,
        input: Input<f32>,
        lengths: Option<&[usize]>,
        target: Target,
        _opts: TrainOptions,
    ) -> Result<(LossStats, Self)> {
        self.forward_backward(input, lengths, target)
    }

    fn eval_batch(&self, input: Input<f32>, lengths: Option<&[usize]>, target: Target) -> Result<LossStats> {
        self.evaluate_loss(input, lengths, target)
    }

    fn save_model(&self, dir: &Path) -> Result<()> {
        self.save(dir)
    }

    fn load_model(dir: &Path) -> Result<Self> {
        TransformerClassifier::load(dir)
    }
}

/// A trained model of either architecture.
#[derive(Clone, Debug)]
pub enum TrainedModel {
    /// [`Arch::S4`].
    S4(S4Model<f32>),
    /// [`Arch::Transformer`].
    Transformer(TransformerClassifier<f32>),
}

impl TrainedModel {
    /// The architecture.
    pub fn arch(&self) -> Arch {
        match self {
            TrainedModel::S4(_) => Arch::S4,
            TrainedModel::Transformer(_) => Arch::Transformer,
        }
    }

    /// Loads a model folder of either architecture (a checkpoint folder of [`train`]), by the
    /// `"format"` of its `config.json`.
    ///
    /// # Errors
    /// Missing or invalid files, or an unknown format.
    pub fn load(dir: &Path) -> Result<Self> {
        let format = read_json::<serde_json::Value>(&dir.join(checkpoint::CONFIG_FILE))?
            .get("format")
            .and_then(|f| f.as_str())
            .map(str::to_string);
        match format.as_deref() {
            Some(<S4Model<f32> as TrainModel>::FORMAT) => Ok(TrainedModel::S4(checkpoint::load(dir)?)),
            Some(TRANSFORMER_FORMAT) => Ok(TrainedModel::Transformer(TransformerClassifier::load(dir)?)),
            other => Err(Error::format(
                dir.join(checkpoint::CONFIG_FILE),
                format!("unknown format {other:?}: expected s4-model or {TRANSFORMER_FORMAT}"),
            )),
        }
    }

    /// [`evaluate`] with the model.
    ///
    /// # Errors
    /// As [`evaluate`].
    pub fn evaluate(&self, split: &Split, batch_size: usize) -> Result<(f64, Option<f64>)> {
        match self {
            TrainedModel::S4(m) => evaluate(m, split, batch_size),
            TrainedModel::Transformer(m) => evaluate(m, split, batch_size),
        }
    }
}

/// How to run (not part of the result: any thread count gives the same numbers).
#[derive(Clone, Debug, Default)]
pub struct RunOptions {
    /// Worker threads (`None`: all cores).
    pub threads: Option<usize>,
    /// Show a progress bar on stderr.
    pub progress: bool,
    /// Continue from `OUT/checkpoint` if it exists.
    pub resume: bool,
    /// Stop after this many epochs in this invocation (the schedule still spans `epochs`); for
    /// interrupting and resuming.
    pub stop_after: Option<usize>,
}

/// Metrics of one epoch (a line of `metrics.jsonl`).
#[derive(Clone, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct EpochMetrics {
    /// 1-based epoch.
    pub epoch: usize,
    /// Optimizer steps so far.
    pub step: u64,
    /// Mean training loss over the epoch's steps.
    pub train_loss: f64,
    /// Training accuracy (classification), during the epoch.
    pub train_acc: Option<f64>,
    /// Validation loss (evaluation mode).
    pub val_loss: f64,
    /// Validation accuracy.
    pub val_acc: Option<f64>,
    /// Test loss.
    pub test_loss: f64,
    /// Test accuracy.
    pub test_acc: Option<f64>,
    /// Learning-rate multiplier at the end of the epoch.
    pub lr_factor: f64,
    /// Mean global gradient norm (before clipping).
    pub grad_norm: f64,
    /// Wall time of the epoch's training steps, in seconds.
    pub train_seconds: f64,
    /// Training throughput.
    pub sequences_per_second: f64,
}

/// Saved with each checkpoint.
#[derive(Clone, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
struct State {
    epochs_done: usize,
    step: u64,
    /// What the schedule and the data order depend on (a resume must not change them).
    epochs: usize,
    batch_size: usize,
    train_sequences: usize,
}

const CHECKPOINT: &str = "checkpoint";
const METRICS: &str = "metrics.jsonl";

/// The batch's model input, lengths and targets.
struct Batch {
    tokens: Option<ndarray::Array2<u32>>,
    features: Option<ndarray::Array3<f32>>,
    lengths: Option<Vec<usize>>,
    classes: Vec<u32>,
    values: Vec<f32>,
}

impl Batch {
    fn new(split: &Split, idx: &[usize]) -> Result<Batch> {
        let (tokens, features, lengths) = match &split.inputs {
            crate::data::Inputs::Tokens(_) => {
                let (t, l) = batch_tokens(split, idx, None)?;
                let full = l.iter().all(|&n| n == t.ncols());
                (Some(t), None, (!full).then_some(l))
            }
            crate::data::Inputs::Features { .. } => (None, Some(batch_features(split, idx)?), None),
        };
        let (classes, values) = match &split.targets {
            Targets::Classes(c) => (idx.iter().map(|&i| c[i]).collect(), Vec::new()),
            Targets::Values(v) => (Vec::new(), idx.iter().map(|&i| v[i]).collect()),
        };
        Ok(Batch { tokens, features, lengths, classes, values })
    }

    fn input(&self) -> Input<'_, f32> {
        match (&self.tokens, &self.features) {
            (Some(t), _) => Input::Tokens(t.view()),
            (_, Some(f)) => Input::Features(f.view()),
            _ => unreachable!("a batch has tokens or features"),
        }
    }

    fn target(&self) -> Target<'_> {
        if self.values.is_empty() {
            Target::Classes(&self.classes)
        } else {
            Target::Values(&self.values)
        }
    }
}

/// Evaluation-mode loss and accuracy of `model` (either architecture) over a whole split, in
/// batches of `batch_size`: (mean loss, accuracy for classification).
///
/// # Errors
/// Invalid inputs (see [`S4Model::forward`], [`TransformerClassifier::forward`]).
pub fn evaluate<M: TrainModel>(model: &M, split: &Split, batch_size: usize) -> Result<(f64, Option<f64>)> {
    let mut total = LossStats::default();
    let mut loss_sum = 0.0;
    let idx: Vec<usize> = (0..split.len()).collect();
    for chunk in idx.chunks(batch_size.max(1)) {
        let b = Batch::new(split, chunk)?;
        let s = model.eval_batch(b.input(), b.lengths.as_deref(), b.target())?;
        loss_sum += s.loss * s.count as f64;
        total.correct += s.correct;
        total.count += s.count;
    }
    let n = total.count.max(1) as f64;
    let acc = matches!(split.targets, Targets::Classes(_)).then(|| total.correct as f64 / n);
    Ok((loss_sum / n, acc))
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

/// Writes the checkpoint folder for a completed epoch: into `checkpoint.tmp`, then swapped in by
/// renames, so `OUT/checkpoint` is always a complete checkpoint (the previous one survives any
/// interruption).
fn save_checkpoint<M: TrainModel>(out: &Path, model: &M, opt: &mut AdamW<M>, state: &State) -> Result<()> {
    let tmp = out.join("checkpoint.tmp");
    if tmp.exists() {
        std::fs::remove_dir_all(&tmp).map_err(|e| Error::io(&tmp, e))?;
    }
    model.save_model(&tmp)?;
    save_optimizer(opt, &tmp.join("optimizer.safetensors"))?;
    write_json(&tmp.join("state.json"), state)?;
    let dst = out.join(CHECKPOINT);
    let old = out.join("checkpoint.old");
    // keep one complete checkpoint on disk at every moment: checkpoint (or, mid-swap, .old and the
    // complete .tmp) until the new one is in place
    if dst.exists() {
        if old.exists() {
            std::fs::remove_dir_all(&old).map_err(|e| Error::io(&old, e))?;
        }
        std::fs::rename(&dst, &old).map_err(|e| Error::io(&dst, e))?;
    }
    std::fs::rename(&tmp, &dst).map_err(|e| Error::io(&tmp, e))?;
    if old.exists() {
        std::fs::remove_dir_all(&old).map_err(|e| Error::io(&old, e))?;
    }
    Ok(())
}

/// The checkpoint folder to resume from: `checkpoint`, or, if a swap was cut short, the complete
/// `checkpoint.tmp` (its `state.json` is written last) or else `checkpoint.old`.
pub fn checkpoint_dir(out: &Path) -> Option<PathBuf> {
    [CHECKPOINT, "checkpoint.tmp", "checkpoint.old"].iter().map(|n| out.join(n)).find(|p| p.join("state.json").exists())
}

fn read_metrics(out: &Path) -> Result<Vec<EpochMetrics>> {
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

fn write_metrics(out: &Path, metrics: &[EpochMetrics]) -> Result<()> {
    let mut text = String::new();
    for m in metrics {
        text.push_str(&serde_json::to_string(m).expect("serializes"));
        text.push('\n');
    }
    write_atomic(&out.join(METRICS), text.as_bytes())
}

/// The learning-curve figure: losses, then accuracies (classification).
pub fn plot_curves(path: &Path, metrics: &[EpochMetrics], title: &str) -> Result<()> {
    let pts = |f: &dyn Fn(&EpochMetrics) -> Option<f64>| -> Vec<(f64, f64)> {
        metrics.iter().filter_map(|m| f(m).map(|v| (m.epoch as f64, v))).collect()
    };
    let mut panels = vec![Panel {
        title: format!("{title}: loss"),
        x_label: "epoch".into(),
        y_label: "loss".into(),
        series: vec![
            Series { label: "train".into(), points: pts(&|m| Some(m.train_loss)) },
            Series { label: "validation".into(), points: pts(&|m| Some(m.val_loss)) },
            Series { label: "test".into(), points: pts(&|m| Some(m.test_loss)) },
        ],
    }];
    if metrics.iter().any(|m| m.val_acc.is_some()) {
        panels.push(Panel {
            title: format!("{title}: accuracy"),
            x_label: "epoch".into(),
            y_label: "accuracy".into(),
            series: vec![
                Series { label: "train".into(), points: pts(&|m| m.train_acc) },
                Series { label: "validation".into(), points: pts(&|m| m.val_acc) },
                Series { label: "test".into(), points: pts(&|m| m.test_acc) },
            ],
        });
    }
    write_png(path, &panels, 900, 320)
}

/// The result of [`train`].
#[derive(Clone, Debug)]
pub struct TrainReport {
    /// Metrics of every epoch so far (including those before a resume).
    pub metrics: Vec<EpochMetrics>,
    /// The trained model (of the configuration's architecture).
    pub model: TrainedModel,
}

/// Trains the model of `cfg.arch` (S4 or the transformer baseline) on `task` as `cfg` says, writing
/// into `out` (see the module docs).
///
/// # Errors
/// An invalid configuration, data that does not fit it, I/O errors, a checkpoint of another
/// architecture or whose model configuration differs from `cfg` when resuming, or a non-finite
/// loss, gradient or weight
/// (the message names the step and the first bad tensor; the last checkpoint is kept).
pub fn train(task: &TaskData, cfg: &TrainConfig, out: &Path, opts: &RunOptions) -> Result<TrainReport> {
    let cfg = cfg.clone().for_task(task);
    cfg.validate()?;
    task.validate()?;
    if task.train.is_empty() {
        return Err(Error::invalid(format!("{} train split", task.name), "empty", "at least one sequence"));
    }
    let pool = rayon::ThreadPoolBuilder::new()
        .num_threads(opts.threads.unwrap_or(0))
        .build()
        .map_err(|e| Error::invalid("threads", format!("{:?}", opts.threads), format!("a buildable pool ({e})")))?;
    pool.install(|| train_in_pool(task, &cfg, out, opts))
}

fn train_in_pool(task: &TaskData, cfg: &TrainConfig, out: &Path, opts: &RunOptions) -> Result<TrainReport> {
    std::fs::create_dir_all(out).map_err(|e| Error::io(out, e))?;
    let previous = checkpoint_dir(out);
    if !opts.resume && (previous.is_some() || out.join(METRICS).exists()) {
        return Err(Error::invalid(
            "--out",
            out.display(),
            "a folder without a previous run (continue it with --resume, or choose another folder)",
        ));
    }
    let previous = previous.filter(|_| opts.resume);
    Ok(match cfg.arch {
        Arch::S4 => {
            let (metrics, m) = run::<S4Model<f32>>(task, cfg, out, opts, previous)?;
            TrainReport { metrics, model: TrainedModel::S4(m) }
        }
        Arch::Transformer => {
            let (metrics, m) = run::<TransformerClassifier<f32>>(task, cfg, out, opts, previous)?;
            TrainReport { metrics, model: TrainedModel::Transformer(m) }
        }
    })
}

/// The training loop of one architecture, from scratch or from the checkpoint in `previous`.
fn run<M: TrainModel>(
    task: &TaskData,
    cfg: &TrainConfig,
    out: &Path,
    opts: &RunOptions,
    previous: Option<PathBuf>,
) -> Result<(Vec<EpochMetrics>, M)> {
    let expected = |epochs_done, step| State {
        epochs_done,
        step,
        epochs: cfg.epochs,
        batch_size: cfg.batch_size,
        train_sequences: task.train.len(),
    };
    let (mut model, mut opt, mut state, mut metrics) = match previous {
        Some(dir) => {
            let format = read_json::<serde_json::Value>(&dir.join(checkpoint::CONFIG_FILE))?
                .get("format")
                .and_then(|f| f.as_str())
                .map(str::to_string);
            if format.as_deref() != Some(M::FORMAT) {
                return Err(Error::invalid(
                    "resume",
                    format!("a checkpoint in {} of format {}", dir.display(), format.unwrap_or_default()),
                    format!("a {} checkpoint for --arch {} (use a new --out to start over)", M::FORMAT, cfg.arch),
                ));
            }
            let model = M::load_model(&dir)?;
            if !model.matches(cfg) {
                return Err(Error::invalid(
                    "resume",
                    format!("a checkpoint in {} with a different model configuration", dir.display()),
                    "the same model configuration (use a new --out to start over)",
                ));
            }
            let mut opt = AdamW::new(&model, cfg.optim.clone())?;
            load_optimizer(&mut opt, &dir.join("optimizer.safetensors"))?;
            let sp = dir.join("state.json");
            let text = std::fs::read_to_string(&sp).map_err(|e| Error::io(&sp, e))?;
            let state: State = serde_json::from_str(&text).map_err(|e| Error::format(&sp, e.to_string()))?;
            if state != expected(state.epochs_done, state.step) {
                return Err(Error::invalid(
                    "resume",
                    format!(
                        "{} epochs, batch {}, {} training sequences",
                        state.epochs, state.batch_size, state.train_sequences
                    ),
                    format!(
                        "the checkpoint's run (now {} epochs, batch {}, {} sequences; the schedule and data order depend on them)",
                        cfg.epochs,
                        cfg.batch_size,
                        task.train.len()
                    ),
                ));
            }
            let mut metrics = read_metrics(out)?;
            if metrics.len() < state.epochs_done {
                return Err(Error::format(
                    out.join(METRICS),
                    format!("{} epochs of metrics, the checkpoint has {}", metrics.len(), state.epochs_done),
                ));
            }
            metrics.truncate(state.epochs_done);
            (model, opt, state, metrics)
        }
        None => {
            let model = M::build(cfg, longest(task))?;
            let opt = AdamW::new(&model, cfg.optim.clone())?;
            (model, opt, expected(0, 0), Vec::new())
        }
    };
    // the split sizes let `s4 eval` regenerate the same test split by default
    let run_json = serde_json::json!({"task": task.name, "train": cfg,
        "splits": {"train": task.train.len(), "val": task.val.len(), "test": task.test.len()}});
    write_json(&out.join("config.json"), &run_json)?;
    let n = task.train.len();
    let steps_per_epoch = n.div_ceil(cfg.batch_size) as u64;
    let total_steps = steps_per_epoch * cfg.epochs as u64;
    let last_epoch = opts.stop_after.map_or(cfg.epochs, |s| (state.epochs_done + s).min(cfg.epochs));
    let eval_batch = (2 * cfg.batch_size).max(16);
    while state.epochs_done < last_epoch {
        let epoch = state.epochs_done + 1;
        let batches = epoch_batches(&task.train, cfg.batch_size, cfg.seed, epoch);
        let bar = progress_bar(opts.progress, steps_per_epoch, &format!("epoch {epoch}/{}", cfg.epochs));
        let t0 = Instant::now();
        let (mut loss_sum, mut correct, mut count, mut gn_sum) = (0.0, 0usize, 0usize, 0.0);
        let mut lr_factor = 0.0;
        for chunk in &batches {
            let batch = Batch::new(&task.train, chunk)?;
            let topts = TrainOptions {
                dropout_seed: Some(splitmix64(cfg.seed ^ splitmix64(state.step))),
                update_running_stats: true,
            };
            let (stats, mut grads) = model
                .train_batch(batch.input(), batch.lengths.as_deref(), batch.target(), topts)
                .map_err(|e| match e {
                    // finite weights, non-finite activations: overflow inside the network
                    Error::InvalidArgument { .. } if e.to_string().contains("non-finite") => {
                        let (name, v) = largest_weight(&mut model);
                        non_finite(out, state.step + 1, &format!("{e} (largest weight {name} = {v:e})"))
                    }
                    e => e,
                })?;
            if !stats.loss.is_finite() {
                let culprit = first_non_finite(&mut grads)
                    .map(|g| format!("first non-finite gradient {g}"))
                    .or_else(|| first_non_finite(&mut model).map(|p| format!("first non-finite weight {p}")))
                    .unwrap_or_else(|| "weights and gradients finite".into());
                return Err(non_finite(out, state.step + 1, &format!("loss {} ({culprit})", stats.loss)));
            }
            if let Some(g) = first_non_finite(&mut grads) {
                return Err(non_finite(out, state.step + 1, &format!("non-finite gradient {g}")));
            }
            let info = opt.step(&mut model, &mut grads, total_steps);
            if let Some(p) = first_non_finite(&mut model) {
                return Err(non_finite(out, state.step + 1, &format!("non-finite weight {p} after the update")));
            }
            state.step += 1;
            lr_factor = info.lr_factor;
            loss_sum += stats.loss * stats.count as f64;
            correct += stats.correct;
            count += stats.count;
            gn_sum += info.grad_norm;
            let secs = t0.elapsed().as_secs_f64().max(1e-9);
            bar.set_message(format!(
                "loss {:.4}{} {:.0} seq/s",
                loss_sum / count as f64,
                if task.regression { String::new() } else { format!(" acc {:.3}", correct as f64 / count as f64) },
                count as f64 / secs
            ));
            bar.inc(1);
        }
        bar.finish_and_clear();
        let train_seconds = t0.elapsed().as_secs_f64();
        let (val_loss, val_acc) = evaluate(&model, &task.val, eval_batch)?;
        let (test_loss, test_acc) = evaluate(&model, &task.test, eval_batch)?;
        let steps = steps_per_epoch as f64;
        let m = EpochMetrics {
            epoch,
            step: state.step,
            train_loss: loss_sum / count.max(1) as f64,
            train_acc: (!task.regression).then(|| correct as f64 / count.max(1) as f64),
            val_loss,
            val_acc,
            test_loss,
            test_acc,
            lr_factor,
            grad_norm: gn_sum / steps,
            train_seconds,
            sequences_per_second: count as f64 / train_seconds.max(1e-9),
        };
        if opts.progress {
            let acc = |a: Option<f64>| a.map_or(String::new(), |a| format!(" acc {a:.4}"));
            eprintln!(
                "epoch {epoch}: train loss {:.4}{} | val loss {:.4}{} | test loss {:.4}{} | {:.1} s",
                m.train_loss,
                acc(m.train_acc),
                m.val_loss,
                acc(m.val_acc),
                m.test_loss,
                acc(m.test_acc),
                train_seconds
            );
        }
        metrics.push(m);
        state.epochs_done = epoch;
        // metrics first: a crash between the two leaves an extra line that resume truncates
        write_metrics(out, &metrics)?;
        save_checkpoint(out, &model, &mut opt, &state)?;
        plot_curves(&out.join("curves.png"), &metrics, &task.name)?;
    }
    Ok((metrics, model))
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

/// The batches of one epoch: a permutation drawn from (seed, epoch); for variable-length token
/// sequences, each pool of 50 batches is sorted by length before it is cut into batches (less
/// padding), and the batch order is shuffled again.
fn epoch_batches(split: &Split, batch_size: usize, seed: u64, epoch: usize) -> Vec<Vec<usize>> {
    let mut rng = rand_pcg::Pcg64::seed_from_u64(seed ^ (epoch as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15));
    let mut order: Vec<usize> = (0..split.len()).collect();
    order.shuffle(&mut rng);
    let crate::data::Inputs::Tokens(seqs) = &split.inputs else {
        return order.chunks(batch_size).map(<[usize]>::to_vec).collect();
    };
    let mut batches: Vec<Vec<usize>> = Vec::new();
    for pool in order.chunks(batch_size * 50) {
        let mut pool = pool.to_vec();
        pool.sort_by_key(|&i| seqs[i].len());
        batches.extend(pool.chunks(batch_size).map(<[usize]>::to_vec));
    }
    batches.shuffle(&mut rng);
    batches
}

/// SplitMix64's finalizer: decorrelates the dropout seeds of consecutive steps (layer i of step
/// s + 1 must not reuse the stream of another layer of step s).
fn splitmix64(x: u64) -> u64 {
    let mut z = x.wrapping_add(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

fn non_finite(out: &Path, step: u64, what: &str) -> Error {
    let kept = checkpoint_dir(out)
        .map_or("no checkpoint yet".to_string(), |d| format!("the last good checkpoint is kept in {}", d.display()));
    Error::numerical("training", format!("stopped at step {step}: {what}; {kept}"))
}

/// A progress bar (hidden when `show` is false) shared by the training loops.
pub(crate) fn progress_bar(show: bool, len: u64, prefix: &str) -> indicatif::ProgressBar {
    if !show {
        return indicatif::ProgressBar::hidden();
    }
    let bar = indicatif::ProgressBar::new(len);
    bar.set_style(
        indicatif::ProgressStyle::with_template("{prefix} [{bar:30}] {pos}/{len} {msg} ({elapsed}<{eta})")
            .expect("valid template")
            .progress_chars("=> "),
    );
    bar.set_prefix(prefix.to_string());
    bar
}

//! Supervised training on the long-range tasks (classification and regression), for both
//! architectures ([`Arch`]): the S4 model ([`S4Model`], `TrainConfig::model`) and the transformer
//! encoder classifier, the LRA baseline ([`TransformerClassifier`], `TrainConfig::transformer`).
//! A round of the [generic loop](super::trainer) is an epoch: epoch e visits the training set in an
//! order drawn from (seed, e) (token sequences are bucketed by length within pools of 50 batches,
//! to cut padding), the dropout stream of step s is drawn from (seed, s) (S4; the transformer
//! baseline trains without dropout), and each epoch ends with the validation and test losses.
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

use super::grad::{evaluate_loss, forward_backward, TrainOptions};
use super::optim::OptimConfig;
use super::trainer::{self, step_seed, Job, RoundTraining, RunOptions};
use crate::data::{batch_features, batch_tokens, Split, Targets, TaskData};
use crate::error::{Error, Result};
use crate::io::read_json;
use crate::model::checkpoint;
use crate::model::{Input, LossStats, S4Model, S4ModelConfig, Target};
use crate::nn::params::Trainable;
use crate::plot::{write_png, Panel, Series};
use crate::transformer::classifier::FORMAT as TRANSFORMER_FORMAT;
use crate::transformer::{TransformerClassifier, TransformerClassifierConfig};
use rand::seq::SliceRandom;
use rand::SeedableRng;
use std::path::Path;

/// The architecture a run trains.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
#[cfg_attr(feature = "cli", derive(clap::ValueEnum))]
pub enum Arch {
    /// The S4 model of [`TrainConfig::model`] (`"s4"`).
    #[cfg_attr(feature = "cli", value(help = "the S4 model of the preset or --config"))]
    #[default]
    S4,
    /// The transformer encoder classifier of [`TrainConfig::transformer`], the LRA baseline
    /// (`"transformer"`).
    #[cfg_attr(feature = "cli", value(help = "the LRA transformer encoder baseline of the preset or --config"))]
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
#[serde(default, deny_unknown_fields)]
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

/// What the training loop needs of a model, beyond its [`Trainable`]: implemented by
/// [`S4Model<f32>`] and [`TransformerClassifier<f32>`], so that one loop ([`train`]) trains either.
pub trait TrainModel: Trainable + std::fmt::Debug {
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
}

impl TrainModel for S4Model<f32> {
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
}

impl TrainModel for TransformerClassifier<f32> {
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
            Some(<S4Model<f32> as Trainable>::FORMAT) => Ok(TrainedModel::S4(checkpoint::load(dir)?)),
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
/// An empty split, or invalid inputs (see [`S4Model::forward`], [`TransformerClassifier::forward`]).
pub fn evaluate<M: TrainModel>(model: &M, split: &Split, batch_size: usize) -> Result<(f64, Option<f64>)> {
    if split.is_empty() {
        return Err(Error::invalid(
            "evaluation split",
            "empty",
            "at least one sequence (a mean over none is undefined)",
        ));
    }
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
/// into `out` (see the module docs) through the [generic loop](trainer::run).
///
/// # Errors
/// An invalid configuration, data that does not fit it, I/O errors, a checkpoint of another
/// architecture or whose model configuration differs from `cfg` when resuming, or a non-finite
/// loss, gradient or weight (the message names the step and the first bad tensor; the last
/// checkpoint is kept).
pub fn train(task: &TaskData, cfg: &TrainConfig, out: &Path, opts: &RunOptions) -> Result<TrainReport> {
    train_to(task, cfg, Some(out), opts)
}

/// [`train`], or with `out` = `None` a run in memory: nothing written, nothing to resume.
///
/// # Errors
/// As [`train`].
pub fn train_to(task: &TaskData, cfg: &TrainConfig, out: Option<&Path>, opts: &RunOptions) -> Result<TrainReport> {
    let cfg = cfg.clone().for_task(task);
    cfg.validate()?;
    task.validate()?;
    for (name, split) in [("train", &task.train), ("val", &task.val), ("test", &task.test)] {
        if split.is_empty() {
            return Err(Error::invalid(format!("{} {name} split", task.name), "empty", "at least one sequence"));
        }
    }
    Ok(match cfg.arch {
        Arch::S4 => {
            let job = TaskJob::<S4Model<f32>> { task, cfg: &cfg, model: std::marker::PhantomData };
            let (metrics, m) = trainer::run(&job, S4Model::build(&cfg, longest(task))?, &cfg.optim, out, opts)?;
            TrainReport { metrics, model: TrainedModel::S4(m) }
        }
        Arch::Transformer => {
            let job = TaskJob::<TransformerClassifier<f32>> { task, cfg: &cfg, model: std::marker::PhantomData };
            let model = TransformerClassifier::build(&cfg, longest(task))?;
            let (metrics, m) = trainer::run(&job, model, &cfg.optim, out, opts)?;
            TrainReport { metrics, model: TrainedModel::Transformer(m) }
        }
    })
}

/// A task's training run as a [`Job`] of the generic loop: one round per epoch.
struct TaskJob<'a, M> {
    task: &'a TaskData,
    cfg: &'a TrainConfig,
    model: std::marker::PhantomData<M>,
}

impl<M: TrainModel> TaskJob<'_, M> {
    fn steps_per_epoch(&self) -> u64 {
        self.task.train.len().div_ceil(self.cfg.batch_size) as u64
    }
}

impl<M: TrainModel> Job for TaskJob<'_, M> {
    type Model = M;
    type Batch = Vec<usize>;
    type Metrics = EpochMetrics;

    fn total_steps(&self) -> u64 {
        self.cfg.epochs as u64 * self.steps_per_epoch()
    }

    fn batches(&self, round: usize, _first_step: u64) -> Result<Vec<Vec<usize>>> {
        Ok(epoch_batches(&self.task.train, self.cfg.batch_size, self.cfg.seed, round))
    }

    fn steps_in_round(&self, _round: usize, _first_step: u64) -> u64 {
        self.steps_per_epoch()
    }

    fn train_step(&self, model: &mut M, idx: &Vec<usize>, step: u64) -> Result<(LossStats, M)> {
        let batch = Batch::new(&self.task.train, idx)?;
        let opts = TrainOptions { dropout_seed: Some(step_seed(self.cfg.seed, step)), update_running_stats: true };
        model.train_batch(batch.input(), batch.lengths.as_deref(), batch.target(), opts)
    }

    fn round_metrics(&self, model: &M, round: usize, t: &RoundTraining) -> Result<EpochMetrics> {
        let eval_batch = (2 * self.cfg.batch_size).max(16);
        let (val_loss, val_acc) = evaluate(model, &self.task.val, eval_batch)?;
        let (test_loss, test_acc) = evaluate(model, &self.task.test, eval_batch)?;
        Ok(EpochMetrics {
            epoch: round,
            step: t.step,
            train_loss: t.train_loss,
            train_acc: (!self.task.regression).then(|| t.correct as f64 / t.count.max(1) as f64),
            val_loss,
            val_acc,
            test_loss,
            test_acc,
            lr_factor: t.lr_factor,
            grad_norm: t.grad_norm,
            train_seconds: t.train_seconds,
            sequences_per_second: t.count as f64 / t.train_seconds.max(1e-9),
        })
    }

    /// The task, the configuration and the split sizes (`s4 eval` regenerates the same test split
    /// from them by default).
    fn settings(&self) -> serde_json::Value {
        let t = self.task;
        serde_json::json!({"task": t.name, "train": self.cfg,
            "splits": {"train": t.train.len(), "val": t.val.len(), "test": t.test.len()}})
    }

    /// Every setting that changes the numbers (the whole configuration but the epochs, which
    /// `--extend` may raise) and the training data.
    fn resume_key(&self) -> serde_json::Value {
        let mut train = serde_json::to_value(self.cfg).expect("serializes");
        train.as_object_mut().expect("a struct").remove("epochs");
        serde_json::json!({"train": train, "train_sequences": self.task.train.len()})
    }

    fn check_model(&self, model: &M) -> Result<()> {
        if model.matches(self.cfg) {
            Ok(())
        } else {
            Err(Error::invalid(
                "resume",
                "a checkpoint with a different model configuration",
                "the same model configuration (use a new --out to start over)",
            ))
        }
    }

    fn progress_message(&self, s: &LossStats, seconds: f64) -> String {
        let acc = if self.task.regression {
            String::new()
        } else {
            format!(" acc {:.3}", s.correct as f64 / s.count.max(1) as f64)
        };
        format!("loss {:.4}{acc} {:.0} seq/s", s.loss, s.count as f64 / seconds.max(1e-9))
    }

    fn describe(&self, m: &EpochMetrics) -> String {
        let acc = |a: Option<f64>| a.map_or(String::new(), |a| format!(" acc {a:.4}"));
        format!(
            "train loss {:.4}{} | val loss {:.4}{} | test loss {:.4}{} | {:.1} s",
            m.train_loss,
            acc(m.train_acc),
            m.val_loss,
            acc(m.val_acc),
            m.test_loss,
            acc(m.test_acc),
            m.train_seconds
        )
    }

    fn plot(&self, path: &Path, metrics: &[EpochMetrics]) -> Result<()> {
        plot_curves(path, metrics, &self.task.name)
    }

    fn name(&self) -> &str {
        "training"
    }

    fn model_description(&self) -> String {
        format!("--arch {}", self.cfg.arch)
    }

    fn round_name(&self) -> &str {
        "epoch"
    }
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

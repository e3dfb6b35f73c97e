//! The tasks `s4 train` knows, how their data is obtained, and their presets (model, optimizer,
//! epochs, batch size): the official LRA configurations, small CPU presets that finish in
//! minutes, and a CPU transformer baseline per task (`cpu-transformer-*`, picked by
//! `--arch transformer`).
//!
//! ```
//! use s4::data::SplitSizes;
//! use s4::train::{default_preset, load_task, preset, TASKS};
//! assert!(TASKS.contains(&"listops"));
//! assert_eq!(default_preset("adding"), "cpu-adding");
//! let cfg = preset("cpu-transformer-listops")?;
//! cfg.validate()?;
//! // generated tasks need no files; real data sets name the command that fetches them
//! let task = load_task("listops", None, &SplitSizes::new(8, 2, 2), 0)?;
//! assert_eq!((task.train.len(), task.d_output), (8, 10));
//! assert!(preset("no-such-preset").unwrap_err().to_string().contains("no-such-preset"));
//! # Ok::<(), s4::Error>(())
//! ```

use super::optim::OptimConfig;
use super::supervised::{Arch, TrainConfig};
use crate::data::{self, SplitSizes, TaskData};
use crate::error::{Error, Result};
use crate::layer::{DtTransform, S4LayerConfig};
use crate::model::{NormKind, Pooling, S4ModelConfig};
use crate::transformer::TransformerClassifierConfig;
use std::path::Path;

/// Task names accepted by [`load_task`].
pub const TASKS: &[&str] = &["listops", "pathfinder", "adding", "acsf1", "digits", "text", "retrieval"];

/// Loads or generates a task.
///
/// - `listops`: generated as the LRA generator does it (CPU lengths 100..1000 unless `lra_lengths`);
///   with `data`, the LRA release TSVs (`basic_{train,val,test}.tsv`) in that folder.
/// - `pathfinder`: the Pathfinder-style generator (32 × 32, L = 1024); with `data`, the LRA
///   release folder (`pathfinder32/...`).
/// - `adding`: the adding problem at L = 1000.
/// - `acsf1`: UCR ACSF1 (L = 1460, 10 classes) from the sktime wheel under `data` (default `data/`).
/// - `digits`: scikit-learn's digits as a sequential image (L = 64) from the wheel under `data`.
/// - `text`: a `label<TAB>text` TSV folder (`train.tsv`, `test.tsv`, optional `val.tsv`), byte-level.
/// - `retrieval`: the LRA AAN pair files in `data`.
///
/// # Errors
/// An unknown task, missing data files (the message gives the command that fetches them), or
/// invalid files.
pub fn load_task(name: &str, data_dir: Option<&Path>, sizes: &SplitSizes, seed: u64) -> Result<TaskData> {
    let default_data = Path::new("data");
    let task = match (name, data_dir) {
        ("listops", None) => data::listops::generate(&data::listops::Config::cpu(), sizes, seed)?,
        ("listops", Some(d)) => data::listops::load_tsv(d)?,
        ("pathfinder", None) => data::pathfinder::generate(&data::pathfinder::Config::default(), sizes, seed)?,
        ("pathfinder", Some(d)) => data::pathfinder::load_lra_dir(d, 32)?,
        ("adding", _) => data::adding::generate(&data::adding::Config::default(), sizes, seed)?,
        ("acsf1", d) => {
            let root = d.unwrap_or(default_data);
            let dir = data::ucr::find_sktime_data(root).ok_or_else(|| {
                Error::invalid(
                    "data folder",
                    root.display(),
                    "the unpacked sktime wheel: python3 -m pip download --no-deps sktime==1.2.0 -d data/ && \
                     (cd data && unzip -q sktime-1.2.0-py3-none-any.whl 'sktime/datasets/data/*' -d sktime-1.2.0)",
                )
            })?;
            data::ucr::load_ucr(&dir, "ACSF1", 0.1, seed)?
        }
        ("digits", d) => {
            let root = d.unwrap_or(default_data);
            let path = find_file(root, "scikit_learn-", ".whl").ok_or_else(|| {
                Error::invalid(
                    "data folder",
                    root.display(),
                    "the scikit-learn wheel: python3 -m pip download --no-deps scikit-learn==1.9.1 -d data/",
                )
            })?;
            data::digits::load_digits(&path, seed)?
        }
        ("text", Some(d)) => {
            let max = Some(4096);
            let train = data::lra::load_text_tsv(&d.join("train.tsv"), max)?;
            let test = data::lra::load_text_tsv(&d.join("test.tsv"), max)?;
            let val = if d.join("val.tsv").exists() {
                data::lra::load_text_tsv(&d.join("val.tsv"), max)?
            } else {
                test.clone()
            };
            TaskData {
                name: "text".into(),
                train,
                val,
                test,
                vocab_size: Some(257),
                d_input: 1,
                d_output: 2,
                regression: false,
            }
        }
        ("retrieval", Some(d)) => data::lra::load_aan(d, 4000)?,
        ("text" | "retrieval", None) => {
            return Err(Error::invalid(format!("task {name}"), "no --data", "a folder with the LRA release files"))
        }
        _ => return Err(Error::invalid("task", name, format!("one of {}", TASKS.join(", ")))),
    };
    task.validate()?;
    Ok(task)
}

fn find_file(dir: &Path, prefix: &str, suffix: &str) -> Option<std::path::PathBuf> {
    let mut found: Vec<_> = std::fs::read_dir(dir)
        .ok()?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| {
            p.file_name().and_then(|n| n.to_str()).is_some_and(|n| n.starts_with(prefix) && n.ends_with(suffix))
        })
        .collect();
    found.sort();
    found.pop()
}

/// Preset names accepted by [`preset`].
pub const PRESETS: &[&str] = &[
    "cpu-listops",
    "cpu-pathfinder",
    "cpu-adding",
    "cpu-acsf1",
    "cpu-digits",
    "tiny",
    "lra-listops",
    "lra-text",
    "lra-retrieval",
    "lra-image",
    "lra-pathfinder",
    "lra-pathx",
    "cpu-transformer-listops",
    "cpu-transformer-pathfinder",
    "cpu-transformer-adding",
    "cpu-transformer-acsf1",
    "cpu-transformer-digits",
    "cpu-transformer-text",
    "cpu-transformer-retrieval",
];

/// The default preset of a task for an architecture: [`default_preset`] for S4, the task's
/// `cpu-transformer-*` preset for the transformer baseline (`cpu-transformer-listops` for an
/// unknown task).
pub fn default_preset_for(task: &str, arch: Arch) -> &'static str {
    match (arch, task) {
        (Arch::S4, _) => default_preset(task),
        (Arch::Transformer, "pathfinder") => "cpu-transformer-pathfinder",
        (Arch::Transformer, "adding") => "cpu-transformer-adding",
        (Arch::Transformer, "acsf1") => "cpu-transformer-acsf1",
        (Arch::Transformer, "digits") => "cpu-transformer-digits",
        (Arch::Transformer, "text") => "cpu-transformer-text",
        (Arch::Transformer, "retrieval") => "cpu-transformer-retrieval",
        (Arch::Transformer, _) => "cpu-transformer-listops",
    }
}

/// The default S4 preset of a task (a CPU preset, or the LRA preset for text and retrieval).
pub fn default_preset(task: &str) -> &'static str {
    match task {
        "listops" => "cpu-listops",
        "pathfinder" => "cpu-pathfinder",
        "adding" => "cpu-adding",
        "acsf1" => "cpu-acsf1",
        "digits" => "cpu-digits",
        "text" => "lra-text",
        "retrieval" => "lra-retrieval",
        _ => "tiny",
    }
}

fn lra_optim(lr: f64, lr_dt: Option<f64>) -> OptimConfig {
    OptimConfig { lr, weight_decay: 0.05, lr_dt, lr_a: Some(1e-3), lr_b: Some(1e-3), ..Default::default() }
}

/// A small causal/bidirectional S4 stack for CPU presets.
fn cpu_model(n_layers: usize, h: usize, n: usize, bidirectional: bool, norm: NormKind, prenorm: bool) -> S4ModelConfig {
    S4ModelConfig {
        n_layers,
        layer: S4LayerConfig {
            d_model: h,
            d_state: n,
            bidirectional,
            dt_transform: DtTransform::Softplus,
            ..Default::default()
        },
        prenorm,
        norm,
        pooling: Pooling::Mean,
        ..Default::default()
    }
}

/// A transformer baseline preset: the LRA encoder layout (pre-LayerNorm blocks, bidirectional
/// attention, MLP width 2·C, mean pooling) at `n_layers` × C = `d_model` with 4 heads, AdamW at
/// `lr` (weight decay 0.01 on the 2-D weights, 10% warmup, cosine, gradient clipping at 1; no SSM
/// groups), trained for `epochs` in batches of `batch_size`.
fn cpu_transformer(n_layers: usize, d_model: usize, lr: f64, epochs: usize, batch_size: usize) -> TrainConfig {
    TrainConfig {
        arch: Arch::Transformer,
        transformer: TransformerClassifierConfig {
            n_layers,
            d_model,
            n_heads: 4,
            d_mlp: 2 * d_model,
            pooling: Pooling::Mean,
            ..Default::default()
        },
        optim: OptimConfig {
            lr,
            weight_decay: 0.01,
            lr_dt: None,
            lr_a: None,
            lr_b: None,
            grad_clip: Some(1.0),
            ..Default::default()
        },
        epochs,
        batch_size,
        ..TrainConfig::default()
    }
}

/// A named training preset. The task's input kind and sizes (vocabulary, d_input, classes; the
/// transformer's positions) are filled in by [`TrainConfig::for_task`].
///
/// - `lra-*`: the official LRA configurations (s4-math note §1.10): layers, width, state size,
///   norm, dropout, n_ssm, Δ range, learning rates (SSM groups at 1e-3, no decay), weight decay
///   0.05, batch size, epochs, cosine schedule with 10% warmup.
/// - `cpu-*`: small models that train in minutes on 2 cores (see the README for measured results).
/// - `tiny`: 2 layers, H = 16, N = 16, for smoke tests.
/// - `cpu-transformer-*`: the transformer baseline ([`Arch::Transformer`]) of each task, LRA's
///   encoder layout at a CPU size: 2 layers, C = 64, 4 heads, MLP 128, mean pooling, AdamW lr 1e-3
///   (2e-3 for the short digits and adding runs), the epochs and batch sizes of the S4 CPU preset
///   (`text`, `retrieval`: 10 epochs of 16; attention keeps 2·4·L² weights per sequence in
///   flight, about 0.5 GB per thread at L = 4096).
///
/// # Errors
/// An unknown name.
pub fn preset(name: &str) -> Result<TrainConfig> {
    let base = TrainConfig::default();
    let cfg = match name {
        "lra-listops" => TrainConfig {
            model: S4ModelConfig::lra_listops(),
            optim: lra_optim(0.01, None),
            epochs: 40,
            batch_size: 32,
            ..base
        },
        "lra-text" => TrainConfig {
            model: S4ModelConfig::lra_text(),
            optim: lra_optim(0.01, None),
            epochs: 32,
            batch_size: 16,
            ..base
        },
        "lra-retrieval" => TrainConfig {
            model: S4ModelConfig::lra_retrieval(),
            optim: lra_optim(0.01, None),
            epochs: 20,
            batch_size: 64,
            ..base
        },
        "lra-image" => TrainConfig {
            model: S4ModelConfig::lra_image(),
            optim: lra_optim(0.01, Some(1e-3)),
            epochs: 200,
            batch_size: 50,
            ..base
        },
        "lra-pathfinder" => TrainConfig {
            model: S4ModelConfig::lra_pathfinder(),
            optim: lra_optim(0.004, Some(1e-3)),
            epochs: 200,
            batch_size: 64,
            ..base
        },
        "lra-pathx" => TrainConfig {
            model: S4ModelConfig::lra_pathx(),
            optim: lra_optim(0.001, Some(1e-3)),
            epochs: 50,
            batch_size: 16,
            ..base
        },
        "cpu-listops" => TrainConfig {
            // the official ListOps architecture (postnorm BatchNorm, N = 4, bidirectional, A and B
            // at lr 1e-3, Δ at the global lr) at 4 layers of width 64
            model: {
                let mut m = cpu_model(4, 64, 4, true, NormKind::Batch, false);
                m.layer.n_ssm = Some(1);
                m
            },
            optim: lra_optim(0.01, None),
            epochs: 12,
            batch_size: 32,
            ..base
        },
        "cpu-pathfinder" => TrainConfig {
            // the official Pathfinder setup (prenorm BatchNorm, N = 64, n_ssm = H, lr 0.004, SSM
            // lr 1e-3) at 4 layers of width 64, with the S4D-LegS kernel (as good as S4 on
            // Pathfinder in the S4D paper; its backward pass is O(N·L) per channel). Measured with
            // 5000 images: LayerNorm instead (pre or post) stayed at chance for 2 epochs, and with
            // postnorm BatchNorm for 1; evaluation accuracy lags the training accuracy for the
            // first 2 epochs (running statistics of fast-moving weights), then catches up
            model: {
                let mut m = cpu_model(4, 64, 64, true, NormKind::Batch, true);
                m.layer.kernel = crate::ssm::KernelKind::Diag;
                m.layer.init = crate::ssm::SsmInit::Diag(crate::hippo::diag::DiagInit::Legs);
                m
            },
            optim: lra_optim(0.004, Some(1e-3)),
            epochs: 6,
            batch_size: 32,
            ..base
        },
        "cpu-adding" => TrainConfig {
            // the LRA architecture (bidirectional layers, mean pooling) at a small size; a causal
            // model read out at the last position sits on the 0.167 plateau for many epochs
            model: cpu_model(2, 32, 32, true, NormKind::Layer, true),
            optim: OptimConfig { lr: 0.01, weight_decay: 0.0, grad_clip: Some(1.0), ..Default::default() },
            epochs: 8,
            batch_size: 32,
            ..base
        },
        "cpu-acsf1" => TrainConfig {
            model: cpu_model(4, 64, 64, true, NormKind::Layer, true),
            optim: OptimConfig { lr: 0.004, ..Default::default() },
            epochs: 60,
            batch_size: 16,
            ..base
        },
        "cpu-digits" => TrainConfig {
            model: cpu_model(2, 32, 32, true, NormKind::Layer, true),
            optim: OptimConfig { lr: 0.01, ..Default::default() },
            epochs: 20,
            batch_size: 32,
            ..base
        },
        "tiny" => TrainConfig {
            model: cpu_model(2, 16, 16, true, NormKind::Layer, true),
            optim: OptimConfig { lr: 0.01, ..Default::default() },
            epochs: 2,
            batch_size: 16,
            ..base
        },
        "cpu-transformer-listops" => cpu_transformer(2, 64, 1e-3, 12, 32),
        "cpu-transformer-pathfinder" => cpu_transformer(2, 64, 1e-3, 6, 32),
        "cpu-transformer-adding" => cpu_transformer(2, 64, 2e-3, 8, 32),
        "cpu-transformer-acsf1" => cpu_transformer(2, 64, 1e-3, 60, 16),
        "cpu-transformer-digits" => cpu_transformer(2, 64, 2e-3, 20, 32),
        "cpu-transformer-text" | "cpu-transformer-retrieval" => cpu_transformer(2, 64, 1e-3, 10, 16),
        _ => return Err(Error::invalid("preset", name, format!("one of {}", PRESETS.join(", ")))),
    };
    Ok(cfg)
}

/// Loads or generates `task` (default sizes, seed 0), trains its default CPU preset into `out`
/// with a progress bar (continuing a previous run there), and returns the data and the report:
/// what each task example runs.
///
/// # Errors
/// As [`load_task`] and [`train`](super::train).
pub fn train_default(task: &str, out: &Path) -> Result<(TaskData, super::TrainReport)> {
    let data = load_task(task, None, &SplitSizes::default(), 0)?;
    let name = default_preset(task);
    println!("{}: {} train / {} test sequences, preset {name}", data.name, data.train.len(), data.test.len());
    let opts = super::RunOptions { progress: true, resume: true, ..Default::default() };
    let report = super::train(&data, &preset(name)?, out, &opts)?;
    Ok((data, report))
}

/// The final test metric beside its baseline, in one line.
pub fn summary(task: &TaskData, report: &super::TrainReport) -> String {
    let Some(last) = report.metrics.last() else {
        return "no epoch trained".into();
    };
    match (last.test_acc, task.majority_rate(), task.mean_baseline_mse()) {
        (Some(acc), Some(majority), _) => format!("test accuracy {acc:.4} (majority class {majority:.4})"),
        (_, _, Some(mean)) => format!("test MSE {:.5} (predicting the mean: {mean:.4})", last.test_loss),
        _ => format!("test loss {:.4}", last.test_loss),
    }
}

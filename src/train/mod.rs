//! Training in Rust: backward passes ([`grad`]), AdamW with the official parameter groups and the
//! learning-rate schedules ([`optim`]), the one training loop ([`trainer`]) and its jobs: the
//! long-range tasks for S4 and the transformer baseline ([`supervised`], with the tasks and presets
//! of `s4 train` in [`tasks`]) and the transformer language model ([`lm`]).
//!
//! # Example
//! ```
//! use s4::data::{adding, SplitSizes};
//! use s4::train::{preset, train, RunOptions};
//! let task = adding::generate(&adding::Config { len: 64 }, &SplitSizes::new(64, 16, 16), 0)?;
//! let mut cfg = preset("tiny")?;
//! cfg.epochs = 1;
//! let out = std::env::temp_dir().join(format!("s4-doc-train-{}", std::process::id()));
//! let report = train(&task, &cfg, &out, &RunOptions::default())?;
//! assert_eq!(report.metrics.len(), 1);
//! assert!(report.metrics[0].test_loss.is_finite());
//! # std::fs::remove_dir_all(&out).ok();
//! # Ok::<(), s4::Error>(())
//! ```

pub mod grad;
pub mod lm;
pub mod optim;
pub mod schedule;
pub mod supervised;
pub mod tasks;
pub mod trainer;

pub use optim::{AdamW, OptimConfig, Schedule};
pub use supervised::{
    evaluate, train, train_to, Arch, EpochMetrics, TrainConfig, TrainModel, TrainReport, TrainedModel,
};
pub use tasks::{default_preset, default_preset_for, load_task, preset, summary, train_default, PRESETS, TASKS};
pub use trainer::RunOptions;

//! Training: train an S4 model (or the transformer baseline) on a long-range task; evaluate a run.

use clap::{Args, Subcommand};
use s4::train::Arch;
use s4::{Error, Result};
use serde_json::json;
use std::path::PathBuf;
use std::time::Instant;

#[derive(Subcommand, Debug)]
pub enum Command {
    /// Trains an S4 model (or, with --arch transformer, the Transformer baseline of the Long Range
    /// Arena) on a long-range task and writes metrics, curves and checkpoints to --out.
    ///
    /// Tasks: listops (generated as LRA does, or the LRA TSVs with --data DIR), pathfinder (the
    /// 32x32 Pathfinder-style generator, or the LRA release with --data), adding (L = 1000),
    /// acsf1 (UCR ACSF1 from the sktime wheel in --data, default data/), digits (scikit-learn's
    /// digits from the wheel in --data), text and retrieval (LRA files in --data). Presets:
    /// cpu-listops, cpu-pathfinder, cpu-adding, cpu-acsf1, cpu-digits, tiny, and the official
    /// lra-listops, lra-text, lra-retrieval, lra-image, lra-pathfinder, lra-pathx, and the
    /// transformer baselines cpu-transformer-TASK. Prints the final metrics as JSON.
    Train(TrainArgs),
    /// Evaluates a training run's checkpoint (S4 or transformer) on its task's test split; prints
    /// JSON.
    Eval(EvalArgs),
}

pub fn run(cmd: Command) -> Result<()> {
    match cmd {
        Command::Train(a) => cmd_train(a),
        Command::Eval(a) => cmd_eval(a),
    }
}

#[derive(Args, Debug)]
pub struct TrainArgs {
    /// Task name.
    #[arg(long)]
    task: String,
    /// Architecture: s4, or transformer (a bidirectional transformer encoder classifier: token
    /// embedding or linear encoder, learned positions, pre-LayerNorm blocks, mean pooling;
    /// trained by the same loop, same metrics and checkpoints). Default: the preset's (s4).
    #[arg(long, value_enum)]
    arch: Option<Arch>,
    /// Preset (default: the task's CPU preset for the architecture).
    #[arg(long)]
    preset: Option<String>,
    /// Folder with real data files (see the task list).
    #[arg(long)]
    data: Option<PathBuf>,
    /// Epochs (default: the preset's).
    #[arg(long)]
    epochs: Option<usize>,
    /// Batch size (default: the preset's).
    #[arg(long)]
    batch_size: Option<usize>,
    /// Global learning rate (default: the preset's).
    #[arg(long)]
    lr: Option<f64>,
    /// Sizes of the generated train/val/test splits.
    #[arg(long, value_delimiter = ',', default_value = "10000,1000,1000")]
    sizes: Vec<usize>,
    /// Seed of the data, the initialization and dropout.
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// A JSON file with a full TrainConfig (overrides the preset).
    #[arg(long)]
    config: Option<PathBuf>,
    #[command(flatten)]
    run: super::RunControl,
    /// Output folder.
    #[arg(long)]
    out: PathBuf,
}

#[derive(Args, Debug)]
pub struct EvalArgs {
    /// The --out folder of `s4 train`.
    dir: PathBuf,
    /// Folder with real data files, if the run used one.
    #[arg(long)]
    data: Option<PathBuf>,
    /// Sizes of the generated splits (default: the run's, from its config.json; else
    /// 10000,1000,1000).
    #[arg(long, value_delimiter = ',')]
    sizes: Option<Vec<usize>>,
    /// Seed of the data (default: the run's seed; else 0).
    #[arg(long)]
    seed: Option<u64>,
}

fn split_sizes(sizes: &[usize]) -> Result<s4::data::SplitSizes> {
    match sizes {
        [a, b, c] if *a > 0 && *b > 0 && *c > 0 => Ok(s4::data::SplitSizes::new(*a, *b, *c)),
        _ => Err(Error::invalid("--sizes", format!("{sizes:?}"), "three positive counts TRAIN,VAL,TEST")),
    }
}

fn cmd_train(a: TrainArgs) -> Result<()> {
    use s4::train::{default_preset_for, load_task, preset, train, TrainConfig};
    let t0 = Instant::now();
    let opts = a.run.options()?;
    a.run.check_out(&a.out, &a.out)?;
    let arch = a.arch;
    let task = load_task(&a.task, a.data.as_deref(), &split_sizes(&a.sizes)?, a.seed)?;
    let preset_name =
        a.preset.clone().unwrap_or_else(|| default_preset_for(&a.task, arch.unwrap_or_default()).to_string());
    let mut cfg = match &a.config {
        Some(path) => {
            let mut cfg: TrainConfig = s4::io::read_json(path)?;
            cfg.arch = arch.unwrap_or(cfg.arch);
            cfg
        }
        None => {
            let cfg = preset(&preset_name)?;
            if let Some(arch) = arch.filter(|&arch| arch != cfg.arch) {
                return Err(Error::invalid(
                    "--preset",
                    &preset_name,
                    format!(
                        "a preset for --arch {arch} (preset {preset_name} trains {}; omit --preset for {})",
                        cfg.arch,
                        default_preset_for(&a.task, arch)
                    ),
                ));
            }
            cfg
        }
    };
    cfg.seed = a.seed;
    if let Some(e) = a.epochs {
        cfg.epochs = e;
    }
    if let Some(b) = a.batch_size {
        cfg.batch_size = b;
    }
    if let Some(lr) = a.lr {
        cfg.optim.lr = lr;
    }
    if opts.progress {
        eprintln!(
            "task {}: {} train / {} val / {} test sequences, max length {}; arch {}, preset {preset_name}",
            task.name,
            task.train.len(),
            task.val.len(),
            task.test.len(),
            task.train.max_len(),
            cfg.arch
        );
    }
    let aside = a.run.clear_out(&a.out)?;
    let report = super::RunControl::settle(aside, &a.out, train(&task, &cfg, &a.out, &opts))?;
    let last = report.metrics.last();
    println!(
        "{}",
        json!({"task": task.name, "arch": cfg.arch, "preset": preset_name, "out": a.out, "epochs": report.metrics.len(),
               "final": last, "best_val_acc": report.metrics.iter().filter_map(|m| m.val_acc).fold(None, |b: Option<f64>, v| Some(b.map_or(v, |b| b.max(v)))),
               "majority_rate": task.majority_rate(), "mean_baseline_mse": task.mean_baseline_mse(),
               "wall_seconds": t0.elapsed().as_secs_f64()})
    );
    Ok(())
}

fn cmd_eval(a: EvalArgs) -> Result<()> {
    let (dir, data, sizes, seed) = (a.dir.as_path(), a.data.as_deref(), a.sizes, a.seed);
    let cfg_path = dir.join("config.json");
    let run: serde_json::Value = s4::io::read_json(&cfg_path)?;
    let task_name = run["task"]
        .as_str()
        .ok_or_else(|| Error::format(&cfg_path, "no \"task\" (not the --out folder of s4 train?)"))?;
    let base = task_name.split('/').next().unwrap_or(task_name).to_lowercase();
    let base = if base == "ucr" { "acsf1".to_string() } else { base };
    // by default the run's own splits and seed, so that generated tasks give back its test split
    let sizes = sizes.unwrap_or_else(|| {
        let n = |k: &str| run["splits"][k].as_u64().map(|v| v as usize);
        match (n("train"), n("val"), n("test")) {
            (Some(a), Some(b), Some(c)) => vec![a, b, c],
            _ => vec![10000, 1000, 1000],
        }
    });
    let seed = seed.or_else(|| run["train"]["seed"].as_u64()).unwrap_or(0);
    let task = s4::train::load_task(&base, data, &split_sizes(&sizes)?, seed)?;
    let ckpt = s4::train::trainer::checkpoint_dir(dir)
        .ok_or_else(|| Error::invalid("run folder", dir.display(), "a folder with a checkpoint/ (from s4 train)"))?;
    let model = s4::train::TrainedModel::load(&ckpt)?;
    let t0 = Instant::now();
    let (loss, acc) = model.evaluate(&task.test, 64)?;
    println!(
        "{}",
        json!({"task": task.name, "arch": model.arch(), "checkpoint": ckpt, "test_loss": loss, "test_acc": acc,
               "test_sequences": task.test.len(),
               "majority_rate": task.majority_rate(), "mean_baseline_mse": task.mean_baseline_mse(),
               "seconds": t0.elapsed().as_secs_f64()})
    );
    Ok(())
}

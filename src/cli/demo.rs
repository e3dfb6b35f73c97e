//! The main job: what S4 is for, in about a minute. A small causal S4 model learns the adding
//! problem (a long-range regression: two marked values among L noisy inputs, predict their sum),
//! is scored against predicting the mean, and then runs as a stream, one input at a time, giving
//! the outputs of the convolution over the whole sequence.

use clap::Args;
use ndarray::{s, Array2, Axis};
use s4::data::{adding, batch_features, SplitSizes, TaskData};
use s4::layer::{DtTransform, S4LayerConfig};
use s4::model::{Input, NormKind, Pooling, S4Model, S4ModelConfig, StepInput};
use s4::plot::{write_png, Panel, Series};
use s4::train::{train_to, Arch, OptimConfig, RunOptions, TrainConfig, TrainedModel};
use s4::{Error, Result};
use serde_json::json;
use std::path::PathBuf;
use std::time::Instant;

#[derive(Args, Debug)]
pub struct DemoArgs {
    /// Sequence length L of the adding problem.
    #[arg(long, default_value_t = 100)]
    length: usize,
    /// Learning rate of every parameter (the SSM's Δ, A and B included).
    #[arg(long, default_value_t = 0.01)]
    lr: f64,
    /// Width H of the model.
    #[arg(long, default_value_t = 32)]
    d_model: usize,
    /// Training sequences (the validation and test splits have 500 each).
    #[arg(long, default_value_t = 8000)]
    train_size: usize,
    /// Epochs.
    #[arg(long, default_value_t = 6)]
    epochs: usize,
    /// Seed of the data, the initialization and dropout.
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// The dashboard PNG: learning curves, test predictions, the stream.
    #[arg(long, default_value = "s4_demo.png")]
    plot: PathBuf,
    /// Print the JSON summary instead of the text.
    #[arg(long)]
    json: bool,
    /// No progress on stderr.
    #[arg(long)]
    quiet: bool,
    /// Worker threads (default: all cores; results do not depend on it).
    #[arg(long)]
    threads: Option<usize>,
}

/// The demo's model: 2 causal S4 layers (H = 32, N = 32), prenorm LayerNorm, read out at the last
/// position, so it can run as a stream.
fn demo_config(a: &DemoArgs) -> TrainConfig {
    TrainConfig {
        arch: Arch::S4,
        model: S4ModelConfig {
            n_layers: 2,
            layer: S4LayerConfig {
                d_model: 32,
                d_state: 32,
                dt_transform: DtTransform::Softplus,
                ..Default::default()
            },
            prenorm: true,
            norm: NormKind::Layer,
            pooling: Pooling::Last,
            ..Default::default()
        },
        optim: OptimConfig {
            lr: a.lr,
            lr_dt: None,
            lr_a: None,
            lr_b: None,
            weight_decay: 0.0,
            grad_clip: Some(1.0),
            ..Default::default()
        },
        epochs: a.epochs,
        batch_size: 32,
        seed: a.seed,
        ..Default::default()
    }
}

/// The same weights without pooling: an output at every position (what recurrent mode steps).
fn unpooled(model: &S4Model<f32>) -> Result<S4Model<f32>> {
    let cfg = S4ModelConfig { pooling: Pooling::None, ..model.config().clone() };
    let (w, b) = model.decoder();
    S4Model::from_parts(
        cfg,
        model.encoder().clone(),
        model.blocks().to_vec(),
        model.final_norm().cloned(),
        w.clone(),
        b.clone(),
    )
}

/// Runs `model` (unpooled) over `x` (B, 2, L) both ways: the convolution over whole sequences, and
/// recurrent steps one input at a time. Returns (conv outputs (B, L), step outputs (B, L)).
fn both_modes(model: &S4Model<f32>, x: &ndarray::Array3<f32>) -> Result<(Array2<f32>, Array2<f32>)> {
    let conv = model.forward(Input::Features(x.view()), None)?.index_axis_move(Axis(1), 0);
    let rec = model.recurrent()?;
    let (b, _, l) = x.dim();
    let mut state = rec.zero_state(b);
    let mut steps = Array2::<f32>::zeros((b, l));
    for t in 0..l {
        let y = rec.step(&mut state, StepInput::Features(x.slice(s![.., .., t])))?;
        steps.column_mut(t).assign(&y.column(0));
    }
    Ok((conv, steps))
}

pub fn cmd_demo(a: &DemoArgs) -> Result<()> {
    let t0 = Instant::now();
    let opts = RunOptions { threads: a.threads, progress: !a.quiet, ..Default::default() };
    opts.validate()?;
    super::check_outputs(&[("--plot", Some(&a.plot))])?;
    let task: TaskData =
        adding::generate(&adding::Config { len: a.length }, &SplitSizes::new(a.train_size, 500, 500), a.seed)?;
    let cfg = demo_config(a);
    let baseline = task.mean_baseline_mse().ok_or_else(|| Error::invalid("task", "adding", "a regression task"))?;
    if !a.quiet {
        eprintln!(
            "training a causal S4 model (2 layers, H = 32, N = 32) on the adding problem, L = {}: {} sequences, {} epochs",
            a.length, a.train_size, a.epochs
        );
    }
    let report = train_to(&task, &cfg, None, &opts)?;
    let train_seconds = t0.elapsed().as_secs_f64();
    let TrainedModel::S4(model) = report.model else { unreachable!("the demo trains S4") };
    let last = report.metrics.last().ok_or_else(|| Error::invalid("epochs", 0, "at least 1"))?;
    let test_mse = last.test_loss;

    // test predictions, and the stream against the convolution on a few test sequences
    let idx: Vec<usize> = (0..task.test.len()).collect();
    let x = batch_features(&task.test, &idx)?;
    let pred = model.forward(Input::Features(x.view()), None)?.index_axis_move(Axis(1), 0).column(0).to_owned();
    let truth: Vec<f32> = match &task.test.targets {
        s4::data::Targets::Values(v) => v.clone(),
        s4::data::Targets::Classes(_) => unreachable!("the adding problem is a regression"),
    };
    let shown = 8.min(idx.len());
    let xs = x.slice(s![..shown, .., ..]).to_owned();
    let stream = unpooled(&model)?;
    let (conv, steps) = both_modes(&stream, &xs)?;
    let stream_diff = conv.iter().zip(&steps).fold(0.0f32, |m, (c, s)| m.max((c - s).abs()));
    let last_diff = (0..shown).fold(0.0f32, |m, i| m.max((steps[[i, a.length - 1]] - pred[i]).abs()));

    // the dashboard
    let curve = |f: &dyn Fn(&s4::train::EpochMetrics) -> f64| -> Vec<(f64, f64)> {
        report.metrics.iter().map(|m| (m.epoch as f64, f(m))).collect()
    };
    let mut order: Vec<usize> = (0..truth.len()).collect();
    order.sort_by(|&i, &j| truth[i].total_cmp(&truth[j]));
    let marks: Vec<usize> = (0..a.length).filter(|&t| xs[[0, 1, t]] > 0.5).collect();
    let panels = [
        Panel {
            title: format!("training: mean squared error (predicting the mean: {baseline:.3})"),
            x_label: "epoch".into(),
            y_label: "MSE".into(),
            series: vec![
                Series { label: "train".into(), points: curve(&|m| m.train_loss) },
                Series { label: "validation".into(), points: curve(&|m| m.val_loss) },
                Series { label: "predicting the mean".into(), points: curve(&|_| baseline) },
            ],
        },
        Panel {
            title: format!("{} test sequences, sorted by their target: test MSE {test_mse:.4}", truth.len()),
            x_label: "test sequence (by target)".into(),
            y_label: "sum of the marked values".into(),
            series: vec![
                Series {
                    label: "target".into(),
                    points: order.iter().enumerate().map(|(k, &i)| (k as f64, truth[i] as f64)).collect(),
                },
                Series {
                    label: "S4 prediction".into(),
                    points: order.iter().enumerate().map(|(k, &i)| (k as f64, pred[i] as f64)).collect(),
                },
            ],
        },
        Panel {
            title: format!(
                "as a stream, one input at a time (marked inputs at t = {marks:?}): |stream - convolution| <= {stream_diff:.0e}"
            ),
            x_label: "time step t".into(),
            y_label: "running prediction".into(),
            series: vec![
                Series {
                    label: "convolution (the same curve)".into(),
                    points: conv.row(0).iter().enumerate().map(|(t, &v)| (t as f64, v as f64)).collect(),
                },
                Series {
                    label: "recurrent steps".into(),
                    points: steps.row(0).iter().enumerate().map(|(t, &v)| (t as f64, v as f64)).collect(),
                },
                Series {
                    label: "target".into(),
                    points: vec![(0.0, truth[0] as f64), ((a.length - 1) as f64, truth[0] as f64)],
                },
            ],
        },
    ];
    write_png(&a.plot, &panels, 1000, 300)?;
    let summary = json!({
        "task": {"name": "adding", "length": a.length, "train": task.train.len(), "test": task.test.len()},
        "model": cfg.model, "epochs": a.epochs, "train_seconds": train_seconds,
        "test_mse": test_mse, "mean_baseline_mse": baseline, "ratio_to_baseline": test_mse / baseline,
        "stream_vs_convolution_max_abs_diff": stream_diff, "stream_last_vs_pooled_max_abs_diff": last_diff,
        "metrics": report.metrics, "plot": a.plot, "seconds": t0.elapsed().as_secs_f64(),
    });
    if a.json {
        println!("{summary}");
    } else {
        println!(
            "S4 learned the adding problem at L = {}: test MSE {test_mse:.4}, against {baseline:.4} for predicting the mean \
             ({:.1}% of it), after {} epochs on {} sequences ({train_seconds:.0} s).",
            a.length,
            100.0 * test_mse / baseline,
            a.epochs,
            task.train.len()
        );
        println!(
            "As a stream, one input at a time (recurrent mode, O(N) per step), the same model gives the convolution's \
             outputs: max difference {stream_diff:.1e} over {shown} sequences x {} steps.",
            a.length
        );
        println!("Dashboard: {} (learning curves, test predictions, the stream). JSON: --json.", a.plot.display());
    }
    Ok(())
}

//! The training machinery: overfitting a fixed batch, AdamW against its formula, the schedule,
//! the parameter groups, exact resume, thread-count independence, and the non-finite stop.

use ndarray::Array2;
use rand::{RngExt, SeedableRng};
use s4::data::{adding, listops, SplitSizes};
use s4::layer::S4LayerConfig;
use s4::model::{Input, NormKind, Pooling, S4ModelConfig};
use s4::train::grad::{forward_backward, tensors_mut, ParamGroup, Target, TrainOptions};
use s4::train::{preset, train, AdamW, OptimConfig, RunOptions, Schedule, TrainConfig};
use std::path::PathBuf;

fn tmp(name: &str) -> PathBuf {
    let p = std::env::temp_dir().join(format!("s4-train-test-{}-{name}", std::process::id()));
    let _ = std::fs::remove_dir_all(&p);
    p
}

fn small_cfg() -> TrainConfig {
    let mut cfg = preset("tiny").unwrap();
    cfg.model.layer.d_model = 8;
    cfg.model.layer.d_state = 8;
    cfg.model.layer.dropout = 0.1;
    cfg.model.norm = NormKind::Batch;
    cfg.model.prenorm = false;
    cfg.batch_size = 8;
    cfg.epochs = 3;
    cfg
}

#[test]
fn a_tiny_model_overfits_a_fixed_batch() {
    let cfg = S4ModelConfig {
        vocab_size: Some(6),
        d_output: 4,
        n_layers: 2,
        layer: S4LayerConfig { d_model: 16, d_state: 16, ..Default::default() },
        pooling: Pooling::Mean,
        ..Default::default()
    };
    let mut model = cfg.build().unwrap();
    model.set_kernel_length(40).unwrap();
    let mut rng = rand_pcg::Pcg64::seed_from_u64(5);
    let tokens = Array2::from_shape_fn((8, 40), |_| rng.random_range(0..6u32));
    let labels: Vec<u32> = (0..8).map(|b| (b % 4) as u32).collect();
    let optim =
        OptimConfig { lr: 0.01, lr_dt: None, warmup_fraction: 0.0, schedule: Schedule::Constant, ..Default::default() };
    let mut opt = AdamW::new(&model, optim).unwrap();
    let opts = TrainOptions { dropout_seed: None, update_running_stats: true };
    let mut first = None;
    let mut last = 0.0;
    for _ in 0..200 {
        let (s, mut g) =
            forward_backward(&mut model, Input::Tokens(tokens.view()), None, Target::Classes(&labels), opts).unwrap();
        first.get_or_insert(s.loss);
        last = s.loss;
        opt.step(&mut model, &mut g, 200);
    }
    let first = first.unwrap();
    assert!(first > 1.0, "initial loss {first} (ln 4 = 1.39 expected)");
    assert!(last < 0.02, "loss {first} -> {last}: did not fit the batch");
}

#[test]
fn adamw_first_step_matches_its_formula_per_group() {
    let cfg = S4ModelConfig {
        n_layers: 1,
        layer: S4LayerConfig { d_model: 4, d_state: 4, ..Default::default() },
        ..Default::default()
    };
    let mut model = cfg.build().unwrap();
    model.set_kernel_length(10).unwrap();
    let x = ndarray::Array3::from_shape_fn((2, 1, 10), |(b, _, t)| (b as f32 + 1.0) * (t as f32 * 0.7).sin());
    let (_, mut grads) = forward_backward(
        &mut model,
        Input::Features(x.view()),
        None,
        Target::Classes(&[1, 2]),
        TrainOptions { dropout_seed: None, update_running_stats: false },
    )
    .unwrap();
    let optim = OptimConfig {
        lr: 0.01,
        weight_decay: 0.1,
        lr_dt: Some(0.002),
        lr_a: Some(0.003),
        lr_b: Some(0.004),
        warmup_fraction: 0.0,
        schedule: Schedule::Constant,
        ..Default::default()
    };
    let before = model.clone();
    let g_before = grads.clone();
    let mut opt = AdamW::new(&model, optim.clone()).unwrap();
    opt.step(&mut model, &mut grads, 10);
    let (mut b, mut g) = (before, g_before);
    let mut groups = Vec::new();
    for ((p1, p0), gr) in tensors_mut(&mut model).into_iter().zip(tensors_mut(&mut b)).zip(tensors_mut(&mut g)) {
        let (lr, wd) = optim.group_settings(p0.group);
        for i in 0..p0.values.len() {
            let (w, gi) = (p0.values[i] as f64, gr.values[i] as f64);
            // first step, bias-corrected: m̂ = g, v̂ = g²
            let expect = w * (1.0 - lr * wd) - lr * gi / (gi.abs() + 1e-8);
            assert!((p1.values[i] as f64 - expect).abs() <= 1e-6 * (1.0 + expect.abs()), "{}[{i}]", p0.name);
        }
        groups.push((p0.name.clone(), p0.group));
    }
    let group_of = |suffix: &str| groups.iter().find(|(n, _)| n.ends_with(suffix)).unwrap().1;
    assert_eq!(group_of("kernel.inv_dt"), ParamGroup::Dt);
    assert_eq!(group_of("kernel.A_real"), ParamGroup::A);
    assert_eq!(group_of("kernel.A_imag"), ParamGroup::A);
    assert_eq!(group_of("kernel.P"), ParamGroup::A);
    assert_eq!(group_of("kernel.B"), ParamGroup::B);
    assert_eq!(group_of("kernel.C"), ParamGroup::Decay);
    assert_eq!(group_of("output_linear.0.bias"), ParamGroup::NoDecay);
    assert_eq!(group_of("norm.weight"), ParamGroup::NoDecay);
    assert_eq!(group_of("decoder.weight"), ParamGroup::Decay);
}

#[test]
fn cosine_schedule_with_warmup() {
    let c = OptimConfig { warmup_fraction: 0.1, ..Default::default() };
    assert_eq!(c.lr_factor(0, 100), 0.0);
    assert!((c.lr_factor(5, 100) - 0.5).abs() < 1e-12);
    assert!((c.lr_factor(10, 100) - 1.0).abs() < 1e-12);
    assert!((c.lr_factor(55, 100) - 0.5).abs() < 1e-12); // halfway through the cosine
    assert!(c.lr_factor(99, 100) < 1e-3);
    let k = OptimConfig { schedule: Schedule::Constant, ..c };
    assert_eq!(k.lr_factor(80, 100), 1.0);
    assert!(OptimConfig { lr: -1.0, ..Default::default() }.validate().unwrap_err().to_string().contains("lr"));
}

fn adding_task() -> s4::data::TaskData {
    adding::generate(&adding::Config { len: 24 }, &SplitSizes::new(40, 16, 16), 3).unwrap()
}

#[test]
fn resume_is_exact_and_threads_do_not_change_results() {
    let task = listops::generate(
        &listops::Config { max_depth: 3, max_args: 3, min_length: 4, max_length: 30 },
        &SplitSizes::new(40, 16, 16),
        1,
    )
    .unwrap();
    let cfg = small_cfg();
    let full = train(&task, &cfg, &tmp("full"), &RunOptions { threads: Some(2), ..Default::default() }).unwrap();

    let out = tmp("resumed");
    let part = RunOptions { threads: Some(1), stop_after: Some(1), ..Default::default() };
    let first = train(&task, &cfg, &out, &part).unwrap();
    assert_eq!(first.metrics.len(), 1);
    let rest = train(&task, &cfg, &out, &RunOptions { threads: Some(1), resume: true, ..Default::default() }).unwrap();
    assert_eq!(rest.metrics.len(), 3);
    for (a, b) in full.metrics.iter().zip(&rest.metrics) {
        assert_eq!(
            (a.train_loss, a.val_loss, a.test_loss, a.val_acc),
            (b.train_loss, b.val_loss, b.test_loss, b.val_acc),
            "epoch {}",
            a.epoch
        );
    }
    // the saved model evaluates as the in-memory one
    let saved: s4::model::S4Model<f32> = s4::model::checkpoint::load(&out.join("checkpoint")).unwrap();
    // (the trainer evaluates in batches of max(2 × batch, 16); padding changes FFT sizes and so the rounding)
    let (l1, _) = s4::train::evaluate(&saved, &task.test, 16).unwrap();
    assert_eq!(l1, rest.metrics[2].test_loss);
    assert!(out.join("curves.png").exists() && out.join("metrics.jsonl").exists());
}

#[test]
fn non_finite_training_stops_and_keeps_the_last_checkpoint() {
    let task = adding_task();
    let mut cfg = small_cfg();
    // one step per epoch; the warmup keeps step 0 at lr 0, so the first epoch is finite and the
    // second (lr 5e29) is not
    cfg.epochs = 2;
    cfg.batch_size = task.train.len();
    cfg.optim.lr = 1e30;
    cfg.optim.warmup_fraction = 1.0;
    cfg.optim.schedule = Schedule::Constant;
    let out = tmp("nan");
    train(&task, &cfg, &out, &RunOptions { stop_after: Some(1), ..Default::default() }).unwrap();
    let saved = std::fs::read(out.join("checkpoint/model.safetensors")).unwrap();
    let err = train(&task, &cfg, &out, &RunOptions { resume: true, ..Default::default() }).unwrap_err().to_string();
    assert!(err.contains("stopped at step"), "{err}");
    assert!(err.contains("non-finite") || err.contains("not finite") || err.contains("loss"), "{err}");
    assert!(err.contains("layers.") || err.contains("decoder") || err.contains("encoder"), "names a tensor: {err}");
    assert_eq!(std::fs::read(out.join("checkpoint/model.safetensors")).unwrap(), saved);
    let state = std::fs::read_to_string(out.join("checkpoint/state.json")).unwrap();
    assert!(state.contains("\"epochs_done\": 1"), "{state}");
}

#[test]
fn resuming_with_another_model_is_refused() {
    let task = adding_task();
    let cfg = small_cfg();
    let out = tmp("mismatch");
    train(&task, &cfg, &out, &RunOptions { stop_after: Some(1), ..Default::default() }).unwrap();
    let mut other = cfg.clone();
    other.model.n_layers = 3;
    let err = train(&task, &other, &out, &RunOptions { resume: true, ..Default::default() }).unwrap_err().to_string();
    assert!(err.contains("train.model.n_layers 2 -> 3"), "{err}");
}

#[test]
fn a_previous_run_is_never_overwritten_and_resume_keeps_its_schedule() {
    let task = adding_task();
    let cfg = small_cfg();
    let out = tmp("guard");
    train(&task, &cfg, &out, &RunOptions { stop_after: Some(1), ..Default::default() }).unwrap();
    let saved = std::fs::read(out.join("checkpoint/model.safetensors")).unwrap();
    let err = train(&task, &cfg, &out, &RunOptions::default()).unwrap_err().to_string();
    assert!(err.contains("--resume"), "{err}");
    let mut other = cfg.clone();
    other.batch_size = 4;
    let err = train(&task, &other, &out, &RunOptions { resume: true, ..Default::default() }).unwrap_err().to_string();
    assert!(err.contains("batch"), "{err}");
    // nor any other setting that changes the numbers: the learning rate, the seed
    for change in [|c: &mut TrainConfig| c.optim.lr *= 2.0, |c: &mut TrainConfig| c.seed += 1] {
        let mut other = cfg.clone();
        change(&mut other);
        let err = train(&task, &other, &out, &RunOptions { resume: true, ..Default::default() }).unwrap_err();
        assert!(err.to_string().contains("with other settings"), "{err}");
    }
    assert_eq!(std::fs::read(out.join("checkpoint/model.safetensors")).unwrap(), saved);
}

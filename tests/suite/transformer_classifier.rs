//! The transformer baseline (`s4 train --arch transformer`): gradient checks of the whole
//! classifier and of the key-padding-masked bidirectional attention against finite differences in
//! f64, the attention against a direct O(L²) reference, padding without influence, training
//! through the shared trainer (learning, thread-count independence, exact resume, the non-finite
//! stop), save/load, and errors.
//!
//! `cargo test --release --test transformer_classifier -- --nocapture` prints the measured errors.

use ndarray::{s, Array2, Array3};
use rand::{RngExt, SeedableRng};
use rand_distr::{Distribution, StandardNormal};
use s4::data::{Inputs, Split, Targets, TaskData};
use s4::model::{Input, Pooling};
use s4::train::grad::{Parameters, Target};
use s4::train::{train, Arch, OptimConfig, RunOptions, Schedule, TrainConfig, TrainedModel};
use s4::transformer::grad::{attention_backward_masked, attention_forward_masked, AttentionMask};
use s4::transformer::{TransformerClassifier, TransformerClassifierConfig};
use std::path::PathBuf;

use crate::common;
use common::{bump, check, check_tensors, dot2, randn2, rng};

fn tmp(name: &str) -> PathBuf {
    let p = std::env::temp_dir().join(format!("s4-tfc-test-{}-{name}", std::process::id()));
    let _ = std::fs::remove_dir_all(&p);
    p
}

/// A tiny classifier with every weight moved off its initialization (LayerNorm scales, biases), so
/// that no gradient is trivially exact.
fn tiny(cfg: TransformerClassifierConfig, seed: u64) -> TransformerClassifier<f64> {
    let mut m =
        TransformerClassifier::<f64>::new(TransformerClassifierConfig { initializer_range: 0.5, seed, ..cfg }).unwrap();
    let mut r = rng(seed + 100);
    for (_, mut t) in m.tensors_mut() {
        for v in t.iter_mut() {
            let e: f64 = StandardNormal.sample(&mut r);
            *v += 0.2 * e;
        }
    }
    m
}

fn token_cfg() -> TransformerClassifierConfig {
    TransformerClassifierConfig {
        vocab_size: Some(7),
        d_output: 3,
        max_len: 6,
        d_model: 8,
        n_layers: 2,
        n_heads: 2,
        d_mlp: 12,
        ..Default::default()
    }
}

fn feature_cfg() -> TransformerClassifierConfig {
    TransformerClassifierConfig {
        vocab_size: None,
        d_input: 2,
        d_output: 1,
        max_len: 5,
        d_model: 8,
        n_layers: 2,
        n_heads: 2,
        d_mlp: 12,
        pooling: Pooling::Last,
        activation_function: "gelu_new".into(),
        ..Default::default()
    }
}

/// Every parameter tensor of the classifier's gradient against central differences of the loss.
fn check_classifier(
    tag: &str,
    model: &TransformerClassifier<f64>,
    input: Input<f64>,
    lengths: &[usize],
    target: Target,
) -> f64 {
    let (stats, g) = model.forward_backward(input, Some(lengths), target).unwrap();
    let eval = model.evaluate_loss(input, Some(lengths), target).unwrap();
    assert!((stats.loss - eval.loss).abs() < 1e-12, "{tag}: training loss {} vs evaluation {}", stats.loss, eval.loss);
    let worst = check_tensors(tag, g.tensors(), |k, i, d| {
        let mut m = model.clone();
        m.tensors_mut()[k].1.as_slice_mut().unwrap()[i] += d;
        m.forward_backward(input, Some(lengths), target).unwrap().0.loss
    });
    println!("{tag}: {} tensors, worst relative error {worst:.2e}", g.tensors().len());
    worst
}

#[test]
fn classifier_gradients_match_finite_differences() {
    // tokens, mean pooling, cross-entropy; the second and third sequences are padded
    let model = tiny(token_cfg(), 1);
    let tokens = ndarray::array![[1u32, 5, 2, 6, 0], [2, 2, 4, 1, 3], [0, 6, 3, 5, 5]];
    let lengths = [5, 3, 4];
    let worst = check_classifier(
        "tokens, mean, classes",
        &model,
        Input::Tokens(tokens.view()),
        &lengths,
        Target::Classes(&[0, 2, 1]),
    );
    // positions past every sequence and padded positions get exactly zero gradient
    let (_, g) =
        model.forward_backward(Input::Tokens(tokens.view()), Some(&lengths), Target::Classes(&[0, 2, 1])).unwrap();
    assert!(g.wpe().row(5).iter().all(|&v| v == 0.0));

    // features, last-position pooling, regression (mean squared error), gelu_new
    let model = tiny(feature_cfg(), 2);
    let mut r = rng(3);
    let x = Array3::from_shape_fn((2, 2, 5), |_| StandardNormal.sample(&mut r));
    let worst2 = check_classifier(
        "features, last, values",
        &model,
        Input::Features(x.view()),
        &[5, 3],
        Target::Values(&[0.7, -1.2]),
    );
    println!("classifier: worst relative error {:.2e}", worst.max(worst2));
}

/// Direct O(L²) masked bidirectional attention of one (sequence, head): scores over the keys
/// j < n, softmax, weighted values; rows i ≥ n are 0.
fn reference_attention(qkv: &Array2<f64>, b: usize, t: usize, h: usize, d: usize, n: usize) -> Array2<f64> {
    let c = qkv.ncols() / 3;
    let mut out = Array2::<f64>::zeros((t, d));
    for i in 0..n {
        let q = qkv.slice(s![b * t + i, h * d..(h + 1) * d]);
        let scores: Vec<f64> =
            (0..n).map(|j| q.dot(&qkv.slice(s![b * t + j, c + h * d..c + (h + 1) * d])) / (d as f64).sqrt()).collect();
        let mx = scores.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
        let z: f64 = scores.iter().map(|s| (s - mx).exp()).sum();
        for (j, sc) in scores.iter().enumerate() {
            let p = (sc - mx).exp() / z;
            let v = qkv.slice(s![b * t + j, 2 * c + h * d..2 * c + (h + 1) * d]);
            out.row_mut(i).scaled_add(p, &v);
        }
    }
    out
}

#[test]
fn bidirectional_attention_matches_a_direct_reference() {
    // B = 3, T = 7, C = 12, 3 heads of 4
    let (batch, t, heads, d) = (3, 7, 3, 4);
    let qkv = randn2((batch * t, 3 * heads * d), 21);
    let mut worst = 0.0f64;
    for lengths in [None, Some(vec![7, 4, 1])] {
        let (out, cache) =
            attention_forward_masked(qkv.view(), batch, heads, AttentionMask::Padding(lengths.as_deref()));
        for b in 0..batch {
            let n = lengths.as_ref().map_or(t, |l| l[b]);
            for h in 0..heads {
                let r = reference_attention(&qkv, b, t, h, d, n);
                let got = out.slice(s![b * t..(b + 1) * t, h * d..(h + 1) * d]);
                worst = worst.max(got.iter().zip(&r).fold(0.0, |m, (x, y)| m.max((x - y).abs())));
                // softmax rows sum to 1 over the valid keys, 0 elsewhere
                let p = cache.probs.slice(s![b, h, .., ..]);
                for i in 0..t {
                    let row_sum: f64 = p.row(i).slice(s![..n]).sum();
                    let masked: f64 = p.row(i).slice(s![n..]).iter().map(|v| v.abs()).sum();
                    assert_eq!(masked, 0.0);
                    assert!((row_sum - if i < n { 1.0 } else { 0.0 }).abs() < 1e-12);
                }
            }
        }
    }
    println!("masked bidirectional attention vs O(L²) reference: max abs diff {worst:.1e}");
    assert!(worst < 1e-12, "{worst:e}");
}

#[test]
fn masked_attention_gradients_match_finite_differences() {
    // B = 2, T = 5, C = 8, 2 heads; every entry of q, k and v
    let qkv = randn2((10, 24), 31);
    let r = randn2((10, 8), 32);
    let mut worst = 0.0f64;
    for lengths in [None, Some(vec![5, 3])] {
        let mask = AttentionMask::Padding(lengths.as_deref());
        let (_, cache) = attention_forward_masked(qkv.view(), 2, 2, mask);
        let g = attention_backward_masked(qkv.view(), &cache, r.view(), 2, 2, mask);
        // the entries of the valid rows (all but sequence 1's positions 3 and 4 when padded)
        let valid = if lengths.is_some() { 8 * 24 } else { qkv.len() };
        let all: Vec<usize> = (0..valid).collect();
        for chunk in all.chunks(40) {
            let an: Vec<f64> = chunk.iter().map(|&i| g.as_slice().unwrap()[i]).collect();
            worst = worst.max(check(&format!("masked attention {lengths:?}"), &an, an.len(), |k, d| {
                dot2(&attention_forward_masked(bump(&qkv, chunk[k], d).view(), 2, 2, mask).0, &r)
            }));
        }
        if lengths.is_some() {
            // padded rows (sequence 1, positions 3 and 4) get no gradient at all
            assert!(g.slice(s![8..10, ..]).iter().all(|&v| v == 0.0));
        }
    }
    println!("masked attention: worst relative error {worst:.2e}");
}

#[test]
fn padding_has_no_influence() {
    let cfg = TransformerClassifierConfig {
        vocab_size: Some(9),
        d_output: 4,
        max_len: 12,
        d_model: 16,
        ..Default::default()
    };
    let model = TransformerClassifier::<f32>::new(cfg).unwrap();
    let lengths = [12, 5, 9];
    let mut r = rng(7);
    let tokens = Array2::from_shape_fn((3, 12), |_| r.random_range(0..9u32));
    let mut other = tokens.clone();
    for (b, &n) in lengths.iter().enumerate() {
        other.slice_mut(s![b, n..]).mapv_inplace(|v| (v + 1 + b as u32) % 9);
    }
    assert_ne!(tokens, other);
    let run = |t: &Array2<u32>| {
        let input = Input::Tokens(t.view());
        let logits = model.forward(input, Some(&lengths)).unwrap();
        let (stats, g) = model.forward_backward(input, Some(&lengths), Target::Classes(&[0, 3, 2])).unwrap();
        (logits, stats, g)
    };
    let (l1, s1, g1) = run(&tokens);
    let (l2, s2, g2) = run(&other);
    assert_eq!(l1, l2, "logits depend on padding");
    assert_eq!(s1, s2);
    for ((name, a), (_, b)) in g1.tensors().into_iter().zip(g2.tensors()) {
        // the padded tokens' embedding rows get +0, the same bits as before
        assert!(a.iter().zip(b.iter()).all(|(x, y)| x.to_bits() == y.to_bits()), "gradient {name} depends on padding");
    }
    // features: the same with random padded values
    let fcfg = TransformerClassifierConfig {
        d_input: 3,
        d_output: 2,
        max_len: 10,
        d_model: 8,
        n_heads: 2,
        ..Default::default()
    };
    let fmodel = TransformerClassifier::<f32>::new(fcfg).unwrap();
    let x = Array3::from_shape_fn((2, 3, 10), |_| r.random_range(-1.0f32..1.0));
    let mut y = x.clone();
    y.slice_mut(s![1, .., 6..]).mapv_inplace(|v| v * 100.0 - 3.0);
    let f = |x: &Array3<f32>| fmodel.forward(Input::Features(x.view()), Some(&[10, 6])).unwrap();
    assert_eq!(f(&x), f(&y));
    // and the attention itself: valid rows are unchanged when padded rows of q, k and v change
    let qkv = randn2((8, 12), 9);
    let mut moved = qkv.clone();
    moved.slice_mut(s![6..8, ..]).mapv_inplace(|v| v * 7.0 + 1.0); // sequence 1, positions 2, 3
    let mask = AttentionMask::Padding(Some(&[4, 2]));
    let (a, _) = attention_forward_masked(qkv.view(), 2, 2, mask);
    let (b, _) = attention_forward_masked(moved.view(), 2, 2, mask);
    assert_eq!(a, b);
}

/// A trivially learnable token task: the class is the first token (0, 1 or 2); the other tokens are
/// 3..8, lengths lo..hi.
fn first_token_task(n: usize, lo: usize, hi: usize, seed: u64) -> TaskData {
    let mut r = rand_pcg::Pcg64::seed_from_u64(seed);
    let mut split = |n: usize| {
        let mut seqs = Vec::new();
        let mut labels = Vec::new();
        for _ in 0..n {
            let y = r.random_range(0..3u32);
            let len = r.random_range(lo..=hi);
            let mut s = vec![y];
            s.extend((1..len).map(|_| r.random_range(3..8u32)));
            seqs.push(s);
            labels.push(y);
        }
        Split { inputs: Inputs::Tokens(seqs), targets: Targets::Classes(labels) }
    };
    let (train, val, test) = (split(n), split(n / 4), split(n / 4));
    TaskData {
        name: "first-token".into(),
        train,
        val,
        test,
        vocab_size: Some(8),
        d_input: 1,
        d_output: 3,
        regression: false,
    }
}

fn tiny_train_cfg(epochs: usize) -> TrainConfig {
    TrainConfig {
        arch: Arch::Transformer,
        transformer: TransformerClassifierConfig {
            d_model: 16,
            n_heads: 4,
            d_mlp: 32,
            n_layers: 1,
            ..Default::default()
        },
        optim: OptimConfig {
            lr: 3e-3,
            weight_decay: 0.01,
            lr_dt: None,
            lr_a: None,
            lr_b: None,
            warmup_fraction: 0.1,
            schedule: Schedule::Cosine,
            grad_clip: Some(1.0),
            ..Default::default()
        },
        epochs,
        batch_size: 16,
        seed: 5,
        ..TrainConfig::default()
    }
}

#[test]
fn training_learns_a_trivial_task() {
    let task = first_token_task(240, 4, 12, 1);
    let mut cfg = tiny_train_cfg(10);
    cfg.optim.lr = 1e-2;
    let report = train(&task, &cfg, &tmp("learn"), &RunOptions::default()).unwrap();
    let (first, last) = (&report.metrics[0], report.metrics.last().unwrap());
    println!(
        "first-token task: train loss {:.3} -> {:.3}, val acc {:?} -> {:?}",
        first.train_loss, last.train_loss, first.val_acc, last.val_acc
    );
    assert!(last.train_loss < 0.3 * first.train_loss, "loss {} -> {}", first.train_loss, last.train_loss);
    assert!(last.val_acc.unwrap() > 0.9, "val acc {:?}", last.val_acc);
    assert!(matches!(report.model, TrainedModel::Transformer(_)));
}

#[test]
fn threads_do_not_change_results_and_resume_is_exact() {
    // long enough sequences that the heads of a sequence also run in parallel
    let task = first_token_task(24, 120, 160, 2);
    let mut cfg = tiny_train_cfg(2);
    cfg.batch_size = 8;
    let run = |threads: usize, out: &str| {
        train(&task, &cfg, &tmp(out), &RunOptions { threads: Some(threads), ..Default::default() }).unwrap()
    };
    let one = run(1, "t1");
    let two = run(2, "t2");
    let weights = |r: &s4::train::TrainReport| match &r.model {
        TrainedModel::Transformer(m) => m.clone(),
        _ => panic!("a transformer run"),
    };
    let (m1, m2) = (weights(&one), weights(&two));
    for ((name, a), (_, b)) in m1.tensors().into_iter().zip(m2.tensors()) {
        assert!(a.iter().zip(b.iter()).all(|(x, y)| x.to_bits() == y.to_bits()), "{name} differs");
    }
    let key = |m: &s4::train::EpochMetrics| (m.train_loss, m.val_loss, m.test_loss, m.val_acc, m.grad_norm);
    assert_eq!(one.metrics.iter().map(key).collect::<Vec<_>>(), two.metrics.iter().map(key).collect::<Vec<_>>());

    // interrupted after one epoch, resumed: the uninterrupted run's numbers and weights
    let out = tmp("resume");
    let first =
        train(&task, &cfg, &out, &RunOptions { threads: Some(2), stop_after: Some(1), ..Default::default() }).unwrap();
    assert_eq!(first.metrics.len(), 1);
    let rest = train(&task, &cfg, &out, &RunOptions { threads: Some(2), resume: true, ..Default::default() }).unwrap();
    assert_eq!(rest.metrics.iter().map(key).collect::<Vec<_>>(), two.metrics.iter().map(key).collect::<Vec<_>>());
    assert_eq!(weights(&rest), m2);
    // the checkpoint evaluates as the in-memory model
    let saved = TrainedModel::load(&out.join("checkpoint")).unwrap();
    assert_eq!(saved.arch(), Arch::Transformer);
    let (loss, _) = saved.evaluate(&task.test, 16).unwrap();
    assert_eq!(loss, rest.metrics[1].test_loss);
    assert!(out.join("curves.png").exists() && out.join("metrics.jsonl").exists());
    // resuming with the other architecture is refused, naming it
    let s4cfg = TrainConfig { arch: Arch::S4, ..cfg.clone() };
    let err = train(&task, &s4cfg, &out, &RunOptions { resume: true, ..Default::default() }).unwrap_err().to_string();
    assert!(err.contains("--arch s4") && err.contains("transformer-classifier"), "{err}");
    println!("1 vs 2 threads bit-identical, resume exact: {:?}", two.metrics.iter().map(key).collect::<Vec<_>>());
}

#[test]
fn non_finite_training_stops_naming_the_step_and_a_tensor() {
    let task = first_token_task(32, 4, 8, 3);
    let mut cfg = tiny_train_cfg(1);
    cfg.optim.lr = 1e30;
    cfg.optim.warmup_fraction = 0.0;
    cfg.optim.grad_clip = None;
    let err = train(&task, &cfg, &tmp("nan"), &RunOptions::default()).unwrap_err().to_string();
    println!("{err}");
    assert!(err.contains("stopped at step"), "{err}");
    assert!(["layers.", "head.", "encoder.", "ln_f.", "pos_embedding."].iter().any(|n| err.contains(n)), "{err}");
}

#[test]
fn save_and_load_round_trip() {
    let cfg = TransformerClassifierConfig {
        vocab_size: Some(11),
        d_output: 4,
        max_len: 9,
        d_model: 8,
        n_heads: 2,
        seed: 4,
        ..Default::default()
    };
    let model = TransformerClassifier::<f32>::new(cfg).unwrap();
    let dir = tmp("save");
    model.save(&dir).unwrap();
    let back = TransformerClassifier::<f32>::load(&dir).unwrap();
    assert_eq!(back, model);
    let tokens = ndarray::array![[1u32, 10, 3, 3, 0, 7]];
    assert_eq!(
        back.forward(Input::Tokens(tokens.view()), None).unwrap(),
        model.forward(Input::Tokens(tokens.view()), None).unwrap()
    );
    // f64 weights load into f32 (converted) and back
    let m64 = model.cast::<f64>();
    let dir64 = tmp("save64");
    m64.save(&dir64).unwrap();
    assert_eq!(TransformerClassifier::<f32>::load(&dir64).unwrap(), model);
    assert_eq!(TransformerClassifier::<f64>::load(&dir64).unwrap(), m64);
    assert!(matches!(TrainedModel::load(&dir).unwrap(), TrainedModel::Transformer(_)));
    // a missing tensor is named; an S4 folder is refused by format
    let mut other = model.clone();
    let bigger = TransformerClassifierConfig { n_layers: 3, ..other.config().clone() };
    other = TransformerClassifier::new(bigger).unwrap();
    let cfg_json = std::fs::read(dir.join("config.json")).unwrap();
    other.save(&dir).unwrap();
    std::fs::write(dir.join("config.json"), &cfg_json).unwrap();
    let err = TransformerClassifier::<f32>::load(&dir).unwrap_err().to_string();
    assert!(err.contains("unexpected layers.2."), "{err}");
    let s4dir = tmp("s4-folder");
    s4::model::checkpoint::save(
        &s4::model::S4ModelConfig { n_layers: 1, ..Default::default() }.build().unwrap(),
        &s4dir,
    )
    .unwrap();
    let err = TransformerClassifier::<f32>::load(&s4dir).unwrap_err().to_string();
    assert!(err.contains("transformer-classifier"), "{err}");
    assert!(matches!(TrainedModel::load(&s4dir).unwrap(), TrainedModel::S4(_)));
}

#[test]
fn bad_inputs_and_settings_are_errors() {
    let model = TransformerClassifier::<f32>::new(token_cfg()).unwrap(); // V = 7, max_len = 6, 3 classes
    let tokens = ndarray::array![[1u32, 5, 2, 6], [2, 2, 4, 1]];
    let t = Input::Tokens(tokens.view());
    let err = |r: s4::Result<ndarray::Array2<f32>>| r.unwrap_err().to_string();
    assert!(err(model.forward(t, Some(&[4]))).contains("lengths"));
    assert!(err(model.forward(t, Some(&[4, 0]))).contains("lengths[1]"));
    assert!(err(model.forward(t, Some(&[5, 2]))).contains("lengths[0]"));
    let bad = ndarray::array![[1u32, 5, 7, 6]];
    let e = err(model.forward(Input::Tokens(bad.view()), None));
    assert!(e.contains("tokens[0, 2]") && e.contains("vocab_size = 7"), "{e}");
    let long = Array2::<u32>::zeros((1, 7));
    let e = err(model.forward(Input::Tokens(long.view()), None));
    assert!(e.contains("sequence length") && e.contains("max_len = 6"), "{e}");
    let empty = Array2::<u32>::zeros((0, 3));
    assert!(err(model.forward(Input::Tokens(empty.view()), None)).contains("tokens"));
    let x = Array3::<f32>::zeros((1, 1, 4));
    assert!(err(model.forward(Input::Features(x.view()), None)).contains("tokens"));
    let fmodel = TransformerClassifier::<f32>::new(feature_cfg()).unwrap(); // d_input = 2
    assert!(err(fmodel.forward(Input::Features(x.view()), None)).contains("d_input = 2"));
    let mut nan = Array3::<f32>::zeros((1, 2, 4));
    nan[[0, 1, 3]] = f32::NAN;
    assert!(err(fmodel.forward(Input::Features(nan.view()), None)).contains("input[0, 1, 3]"));
    // targets
    let fb = |target: Target| model.forward_backward(t, None, target).unwrap_err().to_string();
    assert!(fb(Target::Classes(&[0, 3])).contains("label 1"));
    assert!(fb(Target::Classes(&[0])).contains("targets"));
    assert!(fb(Target::Values(&[0.0, 1.0])).contains("d_output"));
    assert!(fb(Target::Tokens(tokens.view())).contains("one target per sequence"));
    // settings
    let invalid = |c: TransformerClassifierConfig| TransformerClassifier::<f32>::new(c).unwrap_err().to_string();
    assert!(invalid(TransformerClassifierConfig { d_model: 10, n_heads: 4, ..token_cfg() }).contains("n_heads = 4"));
    assert!(invalid(TransformerClassifierConfig { pooling: Pooling::None, ..token_cfg() }).contains("pooling"));
    assert!(invalid(TransformerClassifierConfig { max_len: 0, ..token_cfg() }).contains("max_len"));
    let relu = TransformerClassifierConfig { activation_function: "relu".into(), ..token_cfg() };
    assert!(invalid(relu).contains("relu"));
    let e = "rnn".parse::<Arch>().unwrap_err().to_string();
    assert!(e.contains("rnn") && e.contains("s4 or transformer"), "{e}");
    // a config.json written before `arch` existed loads as an S4 run
    let old: TrainConfig = serde_json::from_str(r#"{"epochs": 3, "batch_size": 8}"#).unwrap();
    assert_eq!((old.arch, old.epochs), (Arch::S4, 3));
    let round: TrainConfig = serde_json::from_str(&serde_json::to_string(&tiny_train_cfg(2)).unwrap()).unwrap();
    assert_eq!(round, tiny_train_cfg(2));
}

#[test]
fn parameter_groups_leave_embeddings_biases_and_norms_undecayed() {
    let mut m = TransformerClassifier::<f32>::new(token_cfg()).unwrap();
    let groups: Vec<(String, s4::train::grad::ParamGroup)> =
        m.parameters_mut().into_iter().map(|t| (t.name, t.group)).collect();
    use s4::train::grad::ParamGroup::{Decay, NoDecay};
    let group = |n: &str| groups.iter().find(|(g, _)| g == n).unwrap().1;
    assert_eq!(group("encoder.weight"), NoDecay);
    assert_eq!(group("pos_embedding.weight"), NoDecay);
    assert_eq!(group("layers.0.attn.c_attn.weight"), Decay);
    assert_eq!(group("layers.1.attn.c_attn.bias"), NoDecay);
    assert_eq!(group("layers.0.ln_2.weight"), NoDecay);
    assert_eq!(group("head.weight"), Decay);
    assert_eq!(groups.len(), m.tensors().len());
    assert_eq!(m.num_params(), m.parameters_mut().iter().map(|t| t.values.len()).sum::<usize>());
}

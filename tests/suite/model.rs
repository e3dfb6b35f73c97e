//! Deep S4 models: conv = recurrent through 4 layers, the streaming LM API, presets, errors.

use crate::common;

use common::rel_err;
use ndarray::{s, Array2, Array3};
use s4::layer::S4LayerConfig;
use s4::model::{Input, NormKind, Pooling, S4ModelConfig, StepInput};
use s4::ssm::KernelKind;

fn seq_config(kernel: KernelKind, prenorm: bool, norm: NormKind) -> S4ModelConfig {
    let init = if kernel == KernelKind::Dplr { "legs" } else { "diag-inv" };
    S4ModelConfig {
        d_input: 2,
        d_output: 3,
        n_layers: 4,
        layer: S4LayerConfig { d_model: 8, d_state: 16, kernel, init: init.parse().unwrap(), ..Default::default() },
        prenorm,
        norm,
        pooling: Pooling::None,
        seed: 7,
        ..Default::default()
    }
}

fn features(b: usize, l: usize) -> Array3<f64> {
    Array3::from_shape_fn((b, 2, l), |(i, j, t)| ((i * 5 + j * 3 + t * 7) % 13) as f64 / 6.5 - 1.0)
}

fn run_steps<T: s4::scalar::Real>(model: &s4::model::S4Model<T>, x: &Array3<T>) -> Array3<T> {
    let rec = model.recurrent().unwrap();
    let (b, _, l) = x.dim();
    let mut st = rec.zero_state(b);
    let mut y = Array3::<T>::zeros((b, model.config().d_output, l));
    for t in 0..l {
        let yt = rec.step(&mut st, StepInput::Features(x.slice(s![.., .., t]))).unwrap();
        y.slice_mut(s![.., .., t]).assign(&yt);
    }
    y
}

#[test]
fn four_layer_model_conv_equals_recurrent() {
    for (kernel, prenorm, norm) in
        [(KernelKind::Dplr, true, NormKind::Layer), (KernelKind::Diag, false, NormKind::Batch)]
    {
        let cfg = seq_config(kernel, prenorm, norm);
        // f64, with non-trivial BatchNorm statistics
        let mut m64 = cfg.build_as::<f64>().unwrap();
        if norm == NormKind::Batch {
            let blocks: Vec<_> = m64
                .blocks()
                .iter()
                .map(|b| {
                    let mut b = b.clone();
                    b.norm.running_mean.fill(0.1);
                    b.norm.running_var.fill(2.0);
                    b
                })
                .collect();
            let (w, bias) = m64.decoder();
            m64 = s4::model::S4Model::from_parts(
                m64.config().clone(),
                m64.encoder().clone(),
                blocks,
                m64.final_norm().cloned(),
                w.clone(),
                bias.clone(),
            )
            .unwrap();
        }
        let x = features(2, 300);
        let conv = m64.forward(Input::Features(x.view()), None).unwrap();
        let e64 = rel_err(&run_steps(&m64, &x), &conv);
        assert!(e64 < 1e-10, "{kernel} f64: {e64:e}");
        // f32 over L = 4096
        let m32 = cfg.build().unwrap();
        let x32 = features(1, 4096).mapv(|v| v as f32);
        let conv = m32.forward(Input::Features(x32.view()), None).unwrap();
        let e32 = rel_err(&run_steps(&m32, &x32).mapv(|v| v as f64), &conv.mapv(|v| v as f64));
        assert!(e32 < 1e-4, "{kernel} f32 L=4096: {e32:e}");
        println!("4-layer {kernel} model: conv vs step f64 {e64:.1e}, f32 (L = 4096) {e32:.1e}");
    }
}

#[test]
fn streaming_lm_prefill_then_step_matches_the_full_forward() {
    let mut cfg = S4ModelConfig::causal_lm(11);
    cfg.layer.d_model = 16;
    cfg.layer.d_state = 8;
    cfg.n_layers = 2;
    let model = cfg.build_as::<f64>().unwrap();
    let tokens = Array2::from_shape_fn((2, 40), |(b, t)| ((b * 3 + t * 5) % 11) as u32);
    let full = model.forward(Input::Tokens(tokens.view()), None).unwrap(); // (B, V, L)
    let (last, mut state) = model.prefill(tokens.slice(s![.., ..25])).unwrap();
    assert!(rel_err(&last, &full.slice(s![.., .., 24]).to_owned()) < 1e-10);
    let rec = model.recurrent().unwrap();
    for t in 25..40 {
        let col: Vec<u32> = tokens.column(t).to_vec();
        let logits = rec.step_tokens(&mut state, &col).unwrap();
        let e = rel_err(&logits, &full.slice(s![.., .., t]).to_owned());
        assert!(e < 1e-10, "position {t}: {e:e}");
    }
    // snapshot and restore are plain copies
    let snap = state.clone();
    let a = rec.step_tokens(&mut state, &[1, 2]).unwrap();
    let mut restored = snap.clone();
    let b = rec.step_tokens(&mut restored, &[1, 2]).unwrap();
    assert_eq!(a, b);
}

#[test]
fn presets_build_and_pool() {
    for (name, cfg) in [
        ("listops", S4ModelConfig::lra_listops()),
        ("text", S4ModelConfig::lra_text()),
        ("retrieval", S4ModelConfig::lra_retrieval()),
        ("image", S4ModelConfig::lra_image()),
        ("pathfinder", S4ModelConfig::lra_pathfinder()),
        ("pathx", S4ModelConfig::lra_pathx()),
        ("lm", S4ModelConfig::causal_lm(256)),
    ] {
        cfg.validate().unwrap_or_else(|e| panic!("{name}: {e}"));
    }
    // a small copy of the ListOps preset runs end to end with lengths
    let mut cfg = S4ModelConfig::lra_listops();
    cfg.layer.d_model = 8;
    cfg.n_layers = 2;
    let model = cfg.build().unwrap();
    let tokens = Array2::from_shape_fn((2, 50), |(b, t)| ((b + t) % 20) as u32);
    let y = model.forward(Input::Tokens(tokens.view()), Some(&[30, 50])).unwrap();
    assert_eq!(y.dim(), (2, 10, 1));
    // padding does not leak into the pooled output
    let mut t2 = tokens.clone();
    t2.slice_mut(s![0, 30..]).fill(3);
    let y2 = model.forward(Input::Tokens(t2.view()), Some(&[30, 50])).unwrap();
    assert_eq!(y, y2);
}

#[test]
fn model_errors_name_the_problem() {
    let model = S4ModelConfig::causal_lm(5).build().unwrap();
    let bad = Array2::from_elem((1, 3), 7u32);
    let e = model.forward(Input::Tokens(bad.view()), None).unwrap_err().to_string();
    assert!(e.contains("tokens[0, 0] = 7") && e.contains("vocab_size = 5"), "{e}");
    let e = model.forward(Input::Features(Array3::<f32>::zeros((1, 1, 3)).view()), None).unwrap_err().to_string();
    assert!(e.contains("tokens"), "{e}");
    let e = S4ModelConfig { n_layers: 0, ..Default::default() }.build().unwrap_err().to_string();
    assert!(e.contains("n_layers = 0"), "{e}");
    // a block whose layer configuration differs from the model's is rejected
    let cfg = seq_config(KernelKind::Dplr, true, NormKind::Layer);
    let m = cfg.build_as::<f64>().unwrap();
    let other = S4LayerConfig { dt_transform: s4::layer::DtTransform::Softplus, ..cfg.layer.clone() }
        .build_as::<f64>()
        .unwrap();
    let mut blocks = m.blocks().to_vec();
    blocks[1].layer = other;
    let (w, b) = m.decoder();
    let e = s4::model::S4Model::from_parts(
        cfg.clone(),
        m.encoder().clone(),
        blocks,
        m.final_norm().cloned(),
        w.clone(),
        b.clone(),
    )
    .unwrap_err()
    .to_string();
    assert!(e.contains("layers.1"), "{e}");
    let e = S4ModelConfig { vocab_size: Some(1 << 40), ..S4ModelConfig::default() }.build().unwrap_err().to_string();
    assert!(e.contains("vocab_size"), "{e}");
    let classifier = S4ModelConfig::default().build().unwrap();
    assert!(classifier.prefill(Array2::zeros((1, 2)).view()).is_err());
    let bidir = S4ModelConfig::lra_pathfinder();
    let small =
        S4ModelConfig { layer: S4LayerConfig { d_model: 4, d_state: 4, ..bidir.layer.clone() }, n_layers: 1, ..bidir };
    assert!(small.build().unwrap().recurrent().is_err());
}

#[test]
fn save_load_round_trip_is_bit_exact() {
    use s4::model::checkpoint::{load, save};
    let dir = std::env::temp_dir().join(format!("s4-model-{}", std::process::id()));
    for (i, cfg) in
        [seq_config(KernelKind::Dplr, true, NormKind::Layer), seq_config(KernelKind::Diag, false, NormKind::Batch)]
            .into_iter()
            .enumerate()
    {
        let d = dir.join(format!("m{i}"));
        let mut model = cfg.build().unwrap();
        // tie C̃ to a length in the first layer, as a forward pass of the official code does
        let mut blocks = model.blocks().to_vec();
        blocks[0].layer.set_kernel_length(64).unwrap();
        let (w, b) = model.decoder();
        model = s4::model::S4Model::from_parts(
            model.config().clone(),
            model.encoder().clone(),
            blocks,
            model.final_norm().cloned(),
            w.clone(),
            b.clone(),
        )
        .unwrap();
        save(&model, &d).unwrap();
        let back = load::<f32>(&d).unwrap();
        let x = features(2, 64).mapv(|v| v as f32);
        let y0 = model.forward(Input::Features(x.view()), None).unwrap();
        let y1 = back.forward(Input::Features(x.view()), None).unwrap();
        assert_eq!(y0, y1, "outputs differ after a round trip");
        for (a, b) in model.blocks().iter().zip(back.blocks()) {
            assert_eq!(a.layer.weights(), b.layer.weights());
            assert_eq!(a.norm, b.norm);
        }
        // no temporary files are left behind
        let names: Vec<_> =
            std::fs::read_dir(&d).unwrap().map(|e| e.unwrap().file_name().into_string().unwrap()).collect();
        assert_eq!(names.len(), 2, "{names:?}");
    }
}

#[test]
fn corrupted_files_and_configs_are_clear_errors() {
    use s4::model::checkpoint::{load, save};
    let dir = std::env::temp_dir().join(format!("s4-model-bad-{}", std::process::id()));
    let model = seq_config(KernelKind::Dplr, true, NormKind::Layer).build().unwrap();
    save(&model, &dir).unwrap();
    let weights = dir.join("model.safetensors");
    let bytes = std::fs::read(&weights).unwrap();
    // truncated
    std::fs::write(&weights, &bytes[..bytes.len() - 10]).unwrap();
    let e = load::<f32>(&dir).unwrap_err().to_string();
    assert!(e.contains("model.safetensors") && e.contains("safetensors"), "{e}");
    // garbage
    std::fs::write(&weights, b"not a safetensors file at all").unwrap();
    assert!(load::<f32>(&dir).is_err());
    std::fs::write(&weights, &bytes).unwrap();
    assert!(load::<f32>(&dir).is_ok());
    // a config that does not match the weights: every problem is named
    let cfg_path = dir.join("config.json");
    let text = std::fs::read_to_string(&cfg_path).unwrap();
    std::fs::write(
        &cfg_path,
        text.replace("\"n_layers\": 4", "\"n_layers\": 3").replace("\"d_output\": 3", "\"d_output\": 5"),
    )
    .unwrap();
    let e = load::<f32>(&dir).unwrap_err().to_string();
    assert!(e.contains("decoder.weight has shape [3, 8], expected [5, 8]"), "{e}");
    assert!(e.contains("unexpected") && e.contains("layers.3."), "{e}");
    // an invalid config value
    std::fs::write(&cfg_path, text.replace("\"d_state\": 16", "\"d_state\": 15")).unwrap();
    let e = load::<f32>(&dir).unwrap_err().to_string();
    assert!(e.contains("N = 15"), "{e}");
    std::fs::write(&cfg_path, "{ not json").unwrap();
    assert!(load::<f32>(&dir).unwrap_err().to_string().contains("invalid JSON"));
}

#[test]
fn half_precision_weights_error_and_storage() {
    use s4::model::checkpoint::{load, save, save_as};
    use s4::scalar::HalfPrecision;
    let cfg = seq_config(KernelKind::Dplr, true, NormKind::Layer);
    let model = cfg.build().unwrap();
    let x = features(2, 512).mapv(|v| v as f32);
    let y32 = model.forward(Input::Features(x.view()), None).unwrap().mapv(|v| v as f64);
    let dir = std::env::temp_dir().join(format!("s4-half-{}", std::process::id()));
    save(&model, &dir.join("f32")).unwrap();
    let full = std::fs::metadata(dir.join("f32/model.safetensors")).unwrap().len();
    for (p, bound) in [(HalfPrecision::Bf16, 5e-2), (HalfPrecision::F16, 5e-3)] {
        let half = model.with_half_weights(p).unwrap();
        let y = half.forward(Input::Features(x.view()), None).unwrap().mapv(|v| v as f64);
        let e = rel_err(&y, &y32);
        println!("{p:?} weights, f32 state and accumulation: relative output error {e:.2e}");
        assert!(e < bound && e > 0.0, "{p:?}: {e:e}");
        // conv and step still agree: the dynamics are untouched
        let step = run_steps(&half, &x.slice(s![..1, .., ..256]).to_owned()).mapv(|v| v as f64);
        let conv = half.forward(Input::Features(x.slice(s![..1, .., ..256])), None).unwrap().mapv(|v| v as f64);
        assert!(rel_err(&step, &conv) < 1e-4);
        // stored in 16 bits, loaded back exactly
        let d = dir.join(format!("{p:?}"));
        save_as(&model, &d, Some(p)).unwrap();
        let size = std::fs::metadata(d.join("model.safetensors")).unwrap().len();
        assert!(size < full, "{size} vs {full}"); // the SSM dynamics stay f32
        let back = load::<f32>(&d).unwrap();
        let yb = back.forward(Input::Features(x.view()), None).unwrap().mapv(|v| v as f64);
        assert_eq!(yb, y, "{p:?}: loading the 16-bit file gives the rounded model");
    }
}

#[test]
fn model_dropout_only_in_training_mode() {
    let mut cfg = seq_config(KernelKind::Diag, true, NormKind::Layer);
    cfg.dropout = 0.3;
    cfg.layer.dropout = 0.2;
    let model = cfg.build_as::<f64>().unwrap();
    let x = features(2, 50);
    let eval = model.forward(Input::Features(x.view()), None).unwrap();
    let t1 = model.forward_train(Input::Features(x.view()), None, 9).unwrap();
    assert_eq!(t1, model.forward_train(Input::Features(x.view()), None, 9).unwrap());
    assert!(rel_err(&t1, &eval) > 1e-3);
    let plain =
        S4ModelConfig { dropout: 0.0, layer: S4LayerConfig { dropout: 0.0, ..cfg.layer.clone() }, ..cfg.clone() }
            .build_as::<f64>()
            .unwrap();
    assert_eq!(eval, plain.forward(Input::Features(x.view()), None).unwrap());
}

//! Whole models of the official code: `example.py`'s `S4Model` imported from its state dict
//! (fixtures written by `tools/official_models.py` with torch) gives the official outputs, and
//! exporting it back gives the same tensors bit for bit; parts with no equivalent are refused.

use std::path::PathBuf;

use ndarray::{Array3, Ix2, Ix3};
use s4::model::official::{export_example, import_example, import_example_files, ExampleS4Model};
use s4::model::{Input, NormKind, S4Model, S4ModelConfig};
use s4::scalar::Real;
use s4::ssm::KernelKind;

fn case(name: &str, file: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/official-models").join(name).join(file)
}

/// The official input (B, L, d_input) as this crate's (B, d_input, L).
fn input<T: Real>(name: &str) -> Array3<T> {
    let x: Array3<f32> = s4::io::read_npy::<f32, Ix3>(case(name, "input.npy")).unwrap();
    x.permuted_axes([0, 2, 1]).mapv(|v| T::of(v as f64))
}

fn run<T: Real>(name: &str) -> (S4Model<T>, f64) {
    let model: S4Model<T> = import_example_files(&case(name, "model.safetensors"), &case(name, "config.json")).unwrap();
    let y = model.forward(Input::Features(input::<T>(name).view()), None).unwrap(); // (B, d_output, 1)
    let expected = s4::io::read_npy::<f32, Ix2>(case(name, "output.npy")).unwrap();
    let (b, d) = expected.dim();
    assert_eq!(y.dim(), (b, d, 1));
    let diff = (0..b)
        .flat_map(|i| (0..d).map(move |j| (i, j)))
        .fold(0.0f64, |m, (i, j)| m.max((y[[i, j, 0]].as_f64() - expected[[i, j]] as f64).abs()));
    let scale = expected.iter().fold(0.0f64, |m, v| m.max(v.abs() as f64));
    (model, diff / scale)
}

#[test]
fn example_s4model_outputs_match_the_official_code() {
    for name in ["example-postnorm", "example-prenorm"] {
        let (model, rel32) = run::<f32>(name);
        let (_, rel64) = run::<f64>(name);
        println!("{name}: relative difference to the official output {rel32:.1e} (f32), {rel64:.1e} (f64)");
        assert!(rel32 < 1e-4 && rel64 < 1e-4, "{name}: {rel32} / {rel64}");
        assert!(model.final_norm().is_none());
        assert_eq!(model.config().prenorm, name.ends_with("prenorm"));
    }
}

#[test]
fn example_s4model_round_trips_bit_for_bit() {
    for name in ["example-postnorm", "example-prenorm"] {
        let (model, _) = run::<f64>(name);
        let (bytes, kwargs) = export_example(&model).unwrap();
        let original = std::fs::read(case(name, "model.safetensors")).unwrap();
        let (a, b) = (
            safetensors::SafeTensors::deserialize(&original).unwrap(),
            safetensors::SafeTensors::deserialize(&bytes).unwrap(),
        );
        let mut names = a.names();
        names.sort();
        let mut exported = b.names();
        exported.sort();
        assert_eq!(names, exported, "{name}: the same state-dict names");
        for n in names {
            let (x, y) = (a.tensor(n).unwrap(), b.tensor(n).unwrap());
            assert_eq!((x.dtype(), x.shape()), (y.dtype(), y.shape()), "{name}: {n}");
            assert_eq!(x.data(), y.data(), "{name}: {n} differs");
        }
        let cfg: serde_json::Value = s4::io::read_json(&case(name, "config.json")).unwrap();
        assert_eq!(kwargs, ExampleS4Model::from_json(&cfg).unwrap());
        // and the exported bytes import again to the same model
        let again: S4Model<f64> = import_example(&bytes, &case(name, "exported"), &kwargs).unwrap();
        assert_eq!(again.decoder(), model.decoder());
    }
}

#[test]
fn parts_without_an_equivalent_are_named() {
    let base = ExampleS4Model { d_input: 2, d_output: 3, d_model: 4, n_layers: 1, d_state: 4, ..Default::default() };
    let err = |cfg: S4ModelConfig| export_example(&cfg.build().unwrap()).unwrap_err().to_string();
    let mut dplr = base.model_config();
    dplr.layer.kernel = KernelKind::Dplr;
    dplr.layer.init = "legs".parse().unwrap();
    dplr.layer.disc = None;
    assert!(err(dplr).contains("layer kernel"), "DPLR layer");
    let mut batch = base.model_config();
    batch.norm = NormKind::Batch;
    assert!(err(batch).contains("norm"));
    let mut fin = base.model_config();
    fin.prenorm = true;
    fin.final_norm = true;
    assert!(err(fin).contains("final_norm"));
    let lm = S4ModelConfig::causal_lm(16);
    assert!(err(lm).contains("encoder"));
    // keyword arguments are checked; lr is accepted and ignored
    assert!(ExampleS4Model::from_json(&serde_json::json!({"d_input": 1, "lr": 0.001})).is_ok());
    let e = ExampleS4Model::from_json(&serde_json::json!({"d_input": 1, "d_modle": 8})).unwrap_err().to_string();
    assert!(e.contains("d_modle"), "{e}");
    // a state dict with a tensor too few or too many
    let bytes = std::fs::read(case("example-postnorm", "model.safetensors")).unwrap();
    let kwargs =
        ExampleS4Model::from_json(&s4::io::read_json(&case("example-postnorm", "config.json")).unwrap()).unwrap();
    let wrong = ExampleS4Model { n_layers: 3, ..kwargs.clone() };
    let e = import_example::<f32>(&bytes, &case("example-postnorm", "model.safetensors"), &wrong).unwrap_err();
    assert!(e.to_string().contains("norms.2.weight"), "{e}");
    let fewer = ExampleS4Model { n_layers: 1, ..kwargs };
    let e = import_example::<f32>(&bytes, &case("example-postnorm", "model.safetensors"), &fewer).unwrap_err();
    assert!(e.to_string().contains("unexpected tensors") && e.to_string().contains("s4_layers.1."), "{e}");
}

/// A model trained here with B frozen at 1 (`lr_b = 0`, the official `lr=0.0`) exports to
/// `example.py`'s names, and the export imports back to the same outputs.
#[test]
fn a_model_trained_here_exports_to_example_py() {
    use s4::data::SplitSizes;
    use s4::train::{load_task, preset, train_to, RunOptions};
    let task = load_task("adding", None, &SplitSizes::new(64, 16, 16), 0).unwrap();
    let mut cfg = preset("tiny").unwrap();
    let kwargs = ExampleS4Model {
        d_input: 2,
        d_output: 1,
        d_model: 8,
        n_layers: 2,
        d_state: 8,
        dropout: 0.0,
        prenorm: true,
        lr: None,
    };
    cfg.model = kwargs.model_config();
    cfg.epochs = 1;
    cfg.optim.lr_b = Some(0.0);
    let report = train_to(&task, &cfg, None, &RunOptions::default()).unwrap();
    let s4::train::TrainedModel::S4(model) = report.model else { panic!("an S4 model") };
    let (bytes, back) = export_example(&model).unwrap();
    assert_eq!(back, kwargs);
    let again: S4Model<f32> = import_example(&bytes, &case("trained", "exported"), &back).unwrap();
    let x = input::<f32>("example-prenorm").slice(ndarray::s![.., ..2, ..]).to_owned();
    let (a, b) = (
        model.forward(Input::Features(x.view()), None).unwrap(),
        again.forward(Input::Features(x.view()), None).unwrap(),
    );
    assert_eq!(a, b);
    // trained with B learning, the model has no example.py equivalent, and the error says why
    cfg.optim.lr_b = None;
    let s4::train::TrainedModel::S4(trained) = train_to(&task, &cfg, None, &RunOptions::default()).unwrap().model
    else {
        panic!("an S4 model")
    };
    let e = export_example(&trained).unwrap_err().to_string();
    assert!(e.contains("B = 1"), "{e}");
}

/// The training repository's `SequenceModel` with its task encoder and decoder (Lightning names),
/// for the ListOps shape (tokens, postnorm BatchNorm, bidirectional DPLR) and a prenorm S4D model
/// on features: official outputs, and a round trip to the same tensors.
#[test]
fn sequence_models_match_the_official_code_and_round_trip() {
    use s4::model::official::{export_sequence_model, import_sequence_model, SequenceModelSettings};
    for name in ["sequence-listops", "sequence-prenorm-s4d"] {
        let settings =
            SequenceModelSettings::from_json(&s4::io::read_json(&case(name, "config.json")).unwrap()).unwrap();
        let bytes = std::fs::read(case(name, "model.safetensors")).unwrap();
        let model: S4Model<f32> = import_sequence_model(&bytes, &case(name, "model.safetensors"), &settings).unwrap();
        let y = if model.config().vocab_size.is_some() {
            let t = s4::io::read_npy::<i64, Ix2>(case(name, "input.npy")).unwrap().mapv(|v| v as u32);
            model.forward(Input::Tokens(t.view()), None).unwrap()
        } else {
            model.forward(Input::Features(input::<f32>(name).view()), None).unwrap()
        };
        let expected = s4::io::read_npy::<f32, Ix2>(case(name, "output.npy")).unwrap();
        let (b, d) = expected.dim();
        assert_eq!(y.dim(), (b, d, 1));
        let diff = (0..b)
            .flat_map(|i| (0..d).map(move |j| (i, j)))
            .fold(0.0f64, |m, (i, j)| m.max((y[[i, j, 0]] as f64 - expected[[i, j]] as f64).abs()));
        let rel = diff / expected.iter().fold(0.0f64, |m, v| m.max(v.abs() as f64));
        println!("{name}: relative difference to the official output {rel:.1e}");
        assert!(rel < 1e-4, "{name}: {rel}");
        let (out, back) = export_sequence_model(&model).unwrap();
        let (a, e) = (
            safetensors::SafeTensors::deserialize(&bytes).unwrap(),
            safetensors::SafeTensors::deserialize(&out).unwrap(),
        );
        let (mut na, mut ne) = (a.names(), e.names());
        na.sort();
        ne.sort();
        assert_eq!(na, ne, "{name}: the same names");
        for n in na.iter().filter(|n| !n.ends_with("num_batches_tracked")) {
            assert_eq!(a.tensor(n).unwrap().data(), e.tensor(n).unwrap().data(), "{name}: {n}");
        }
        let again: S4Model<f32> = import_sequence_model(&out, &case(name, "exported"), &back).unwrap();
        assert_eq!(again.config(), model.config());
    }
}

/// A causal S4 language model crosses as a SequenceModel whose decoder keeps every position
/// (`l_output` null), and comes back the same.
#[test]
fn a_causal_lm_exports_as_a_per_position_sequence_model() {
    use s4::model::official::{export_sequence_model, import_sequence_model};
    let mut cfg = S4ModelConfig::causal_lm(12);
    cfg.n_layers = 2;
    cfg.layer.d_model = 8;
    cfg.layer.d_state = 4;
    let lm = cfg.build().unwrap();
    let (bytes, settings) = export_sequence_model(&lm).unwrap();
    assert_eq!(settings.l_output, None);
    let json = serde_json::to_value(&settings).unwrap();
    assert!(json["l_output"].is_null(), "{json}");
    let back: S4Model<f32> = import_sequence_model(&bytes, &case("lm", "exported"), &settings).unwrap();
    let tokens = ndarray::Array2::from_shape_fn((2, 16), |(b, t)| ((b * 7 + t * 3) % 12) as u32);
    assert_eq!(
        back.forward(Input::Tokens(tokens.view()), None).unwrap(),
        lm.forward(Input::Tokens(tokens.view()), None).unwrap()
    );
    // read from JSON, an absent l_output is the classification default (0): a pooling decoder
    let mut pooled = json.clone();
    pooled.as_object_mut().unwrap().remove("l_output");
    let s = s4::model::official::SequenceModelSettings::from_json(&pooled).unwrap();
    assert_eq!(s.model_config().unwrap().pooling, s4::model::Pooling::Last);
}

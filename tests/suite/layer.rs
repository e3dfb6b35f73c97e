//! The S4 layer: official PyTorch parity, conv = recurrent, chunked state forwarding, padding.

use crate::common;

use common::{fixture, rel_err};
use ndarray::{s, Array2, Array3};
use s4::io::read_npy;
use s4::layer::official::import_official_files;
use s4::layer::{ForwardOptions, S4Layer, S4LayerConfig};
use s4::ssm::KernelKind;

const CASES: [&str; 4] = ["s4block-dplr-legs", "s4block-diag-inv", "s4block-dplr-bidirectional", "s4d-minimal"];

fn load<T: s4::scalar::Real>(case: &str, file: &str) -> S4Layer<T> {
    import_official_files(&fixture(case, file), &fixture(case, "config.json")).unwrap()
}

#[test]
fn official_outputs_match_in_f32() {
    for case in CASES {
        let layer = load::<f32>(case, "model.safetensors");
        let x: Array3<f32> = read_npy(fixture(case, "input.npy")).unwrap();
        let expected: Array3<f32> = read_npy(fixture(case, "output.npy")).unwrap();
        let y = layer.forward(x.view(), &ForwardOptions::default()).unwrap().y;
        let e = rel_err(&y.mapv(|v| v as f64), &expected.mapv(|v| v as f64));
        println!("{case}: f32 output vs official relative difference {e:.2e}");
        assert!(e < 1e-4, "{case}: {e:e}");
    }
}

#[test]
fn official_outputs_match_in_f64_from_the_initial_state_dict() {
    // model_init holds the plain C (l_kernel = 0): the C -> C̃ conversion runs here in f64
    for case in CASES {
        let layer = load::<f64>(case, "model_init.safetensors");
        let x: Array3<f32> = read_npy(fixture(case, "input.npy")).unwrap();
        let expected: Array3<f64> = read_npy(fixture(case, "output_f64.npy")).unwrap();
        let y = layer.forward(x.mapv(|v| v as f64).view(), &ForwardOptions::default()).unwrap().y;
        let e = rel_err(&y, &expected);
        println!("{case}: f64 output vs official f64 relative difference {e:.2e}");
        assert!(e < 1e-9, "{case}: {e:e}");
    }
}

#[test]
fn official_step_outputs_match() {
    for case in ["s4block-dplr-legs", "s4block-diag-inv"] {
        let layer = load::<f32>(case, "model.safetensors");
        let x: Array3<f32> = read_npy(fixture(case, "input.npy")).unwrap();
        let expected: Array3<f32> = read_npy(fixture(case, "output_step.npy")).unwrap();
        let rec = layer.recurrent().unwrap();
        let (b, h, l) = x.dim();
        let mut state = rec.zero_state(b);
        let mut y = Array3::<f32>::zeros((b, h, l));
        for t in 0..l {
            let yt = rec.step(&mut state, x.slice(s![.., .., t])).unwrap();
            y.slice_mut(s![.., .., t]).assign(&yt);
        }
        let e = rel_err(&y.mapv(|v| v as f64), &expected.mapv(|v| v as f64));
        println!("{case}: step output vs official step relative difference {e:.2e}");
        assert!(e < 1e-4, "{case}: {e:e}");
    }
}

fn input(b: usize, h: usize, l: usize) -> Array3<f64> {
    Array3::from_shape_fn((b, h, l), |(i, j, t)| ((i * 37 + j * 11 + t * 7) % 23) as f64 / 11.5 - 1.0)
}

fn run_steps<T: s4::scalar::Real>(layer: &S4Layer<T>, x: &Array3<T>) -> Array3<T> {
    let rec = layer.recurrent().unwrap();
    let (b, h, l) = x.dim();
    let mut state = rec.zero_state(b);
    let mut y = Array3::<T>::zeros((b, h, l));
    for t in 0..l {
        y.slice_mut(s![.., .., t]).assign(&rec.step(&mut state, x.slice(s![.., .., t])).unwrap());
    }
    y
}

#[test]
fn conv_equals_recurrent_f64_and_f32() {
    for (kernel, init) in [
        (KernelKind::Dplr, "legs"),
        (KernelKind::Dplr, "legt"),
        (KernelKind::Diag, "diag-inv"),
        (KernelKind::Diag, "diag-lin"),
    ] {
        let cfg = S4LayerConfig {
            d_model: 6,
            d_state: 16,
            kernel,
            init: init.parse().unwrap(),
            channels: 2,
            seed: 3,
            ..Default::default()
        };
        let mut layer64 = cfg.build_as::<f64>().unwrap();
        layer64.set_kernel_length(200).unwrap();
        let x = input(2, 6, 200);
        let conv = layer64.forward(x.view(), &ForwardOptions::default()).unwrap().y;
        let e = rel_err(&run_steps(&layer64, &x), &conv);
        assert!(e < 1e-10, "{kernel} {init} f64: {e:e}");
        // f32 over a long sequence
        let layer32 = cfg.build().unwrap();
        let x32 = input(1, 6, 4096).mapv(|v| v as f32);
        let conv = layer32.forward(x32.view(), &ForwardOptions::default()).unwrap().y;
        let e32 = rel_err(&run_steps(&layer32, &x32).mapv(|v| v as f64), &conv.mapv(|v| v as f64));
        assert!(e32 < 1e-4, "{kernel} {init} f32 L=4096: {e32:e}");
        println!("{kernel} {init}: conv vs step f64 {e:.1e}, f32 (L = 4096) {e32:.1e}");
    }
}

#[test]
fn chunked_state_forwarding_equals_one_piece() {
    for kernel in [KernelKind::Dplr, KernelKind::Diag] {
        let init = if kernel == KernelKind::Dplr { "legs" } else { "diag-inv" };
        let cfg = S4LayerConfig {
            d_model: 4,
            d_state: 8,
            kernel,
            init: init.parse().unwrap(),
            seed: 1,
            ..Default::default()
        };
        let layer = cfg.build_as::<f64>().unwrap();
        let x = input(2, 4, 300);
        let whole = layer.forward(x.view(), &ForwardOptions { return_state: true, ..Default::default() }).unwrap();
        let mut state = None;
        let mut pieces = Vec::new();
        for (a, b) in [(0, 120), (120, 121), (121, 300)] {
            let opts = ForwardOptions { initial_state: state.take(), return_state: true, ..Default::default() };
            let out = layer.forward(x.slice(s![.., .., a..b]), &opts).unwrap();
            pieces.push(out.y);
            state = out.state;
        }
        let views: Vec<_> = pieces.iter().map(|p| p.view()).collect();
        let joined = ndarray::concatenate(ndarray::Axis(2), &views).unwrap();
        assert!(rel_err(&joined, &whole.y) < 1e-10, "{kernel}: chunks differ");
        let sd = (&state.unwrap().x - &whole.state.unwrap().x).iter().fold(0.0f64, |m, z| m.max(z.norm()));
        assert!(sd < 1e-10, "{kernel}: final states differ by {sd:e}");
    }
}

#[test]
fn padding_never_leaks() {
    for bidirectional in [false, true] {
        let cfg = S4LayerConfig { d_model: 3, d_state: 8, bidirectional, seed: 5, ..Default::default() };
        let layer = cfg.build_as::<f64>().unwrap();
        let mut x = input(2, 3, 64);
        let lengths = vec![40, 64];
        let opts =
            ForwardOptions { lengths: Some(lengths.clone()), return_state: !bidirectional, ..Default::default() };
        let a = layer.forward(x.view(), &opts).unwrap();
        x.slice_mut(s![0, .., 40..]).fill(123.0);
        let b = layer.forward(x.view(), &opts).unwrap();
        assert_eq!(a.y, b.y, "bidirectional={bidirectional}: padding changed the outputs");
        assert!(a.y.slice(s![0, .., 40..]).iter().all(|&v| v == 0.0));
        if !bidirectional {
            assert_eq!(a.state, b.state);
            // the same as running the unpadded sequence alone
            let alone = layer
                .forward(x.slice(s![0..1, .., ..40]), &ForwardOptions { return_state: true, ..Default::default() })
                .unwrap();
            assert!(rel_err(&a.y.slice(s![0..1, .., ..40]).to_owned(), &alone.y) < 1e-12);
            let sd = (&a.state.unwrap().x.slice(s![0..1, .., ..]).to_owned() - &alone.state.unwrap().x)
                .iter()
                .fold(0.0f64, |m, z| m.max(z.norm()));
            assert!(sd < 1e-12);
        }
    }
}

#[test]
fn bad_configs_and_inputs_are_errors() {
    let base = S4LayerConfig { d_model: 4, d_state: 16, ..Default::default() };
    let e = S4LayerConfig { d_state: 7, ..base.clone() }.build().unwrap_err().to_string();
    assert!(e.contains("N = 7"), "{e}");
    let e = S4LayerConfig { n_ssm: Some(3), ..base.clone() }.build().unwrap_err().to_string();
    assert!(e.contains("n_ssm = 3") && e.contains("H = 4"), "{e}");
    let e = S4LayerConfig { dt_min: 0.5, dt_max: 0.1, ..base.clone() }.build().unwrap_err().to_string();
    assert!(e.contains("dt_min = 0.5"), "{e}");
    let e = S4LayerConfig { disc: Some("zoh".parse().unwrap()), ..base.clone() }.build().unwrap_err().to_string();
    assert!(e.contains("bilinear"), "{e}");
    let layer = base.build().unwrap();
    let e = layer.forward(Array3::<f32>::zeros((1, 5, 10)).view(), &Default::default()).unwrap_err().to_string();
    assert!(e.contains("input u"), "{e}");
    let mut x = Array3::<f32>::zeros((1, 4, 10));
    x[[0, 2, 7]] = f32::NAN;
    let e = layer.forward(x.view(), &Default::default()).unwrap_err().to_string();
    assert!(e.contains("u[0, 2, 7]"), "{e}");
    let opts = ForwardOptions { lengths: Some(vec![11]), ..Default::default() };
    let e = layer.forward(Array3::<f32>::zeros((1, 4, 10)).view(), &opts).unwrap_err().to_string();
    assert!(e.contains("lengths[0] = 11"), "{e}");
    let rec = layer.recurrent().unwrap();
    let mut st = rec.zero_state(2);
    let e = rec.step(&mut st, Array2::<f32>::zeros((1, 4)).view()).unwrap_err().to_string();
    assert!(e.contains("state"), "{e}");
    let opts = ForwardOptions { lengths: Some(vec![0]), ..Default::default() };
    let e = layer.forward(Array3::<f32>::zeros((1, 4, 10)).view(), &opts).unwrap_err().to_string();
    assert!(e.contains("lengths[0] = 0"), "{e}");
    let mut st = rec.zero_state(1);
    st.x[[0, 1, 2]].re = f32::NAN;
    let e = rec.step(&mut st, Array2::<f32>::zeros((1, 4)).view()).unwrap_err().to_string();
    assert!(e.contains("state[0, 1, 2]"), "{e}");
    // stepped out of place, the kernel finds it as it reads the state, which stays as it was
    let mut st = rec.zero_state(1);
    st.x[[0, 1, 2]].im = f32::INFINITY;
    let before = st.clone();
    let mut to = rec.zero_state(1);
    let e = rec.step_into(&st, &mut to, Array2::<f32>::zeros((1, 4)).view()).unwrap_err().to_string();
    assert!(e.contains("state[0, 1, 2]"), "{e}");
    assert_eq!(st, before);
    let e = rec.step_into(&st, &mut rec.zero_state(2), Array2::<f32>::zeros((1, 4)).view()).unwrap_err().to_string();
    assert!(e.contains("state"), "{e}");
    let capped = S4LayerConfig { l_max: Some(5), ..base.clone() }.build().unwrap();
    let opts = ForwardOptions { return_state: true, ..Default::default() };
    let e = capped.forward(Array3::<f32>::zeros((1, 4, 10)).view(), &opts).unwrap_err().to_string();
    assert!(e.contains("l_max"), "{e}");
    let e = S4LayerConfig { d_model: 1 << 40, ..base }.build().unwrap_err().to_string();
    assert!(e.contains("d_model"), "{e}");
}

#[test]
fn official_import_reports_bad_files_by_name() {
    let dir = std::env::temp_dir().join(format!("s4-import-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let cfg = fixture("s4block-dplr-legs", "config.json");
    let bytes = std::fs::read(fixture("s4block-dplr-legs", "model.safetensors")).unwrap();
    let trunc = dir.join("trunc.safetensors");
    std::fs::write(&trunc, &bytes[..bytes.len() - 100]).unwrap();
    let e = import_official_files::<f32>(&trunc, &cfg).unwrap_err().to_string();
    assert!(e.contains("trunc.safetensors") && e.contains("safetensors"), "{e}");
    // the diag config against the dplr weights: P and l_kernel are unexpected
    let e = import_official_files::<f32>(
        &fixture("s4block-dplr-legs", "model.safetensors"),
        &fixture("s4block-diag-inv", "config.json"),
    )
    .unwrap_err()
    .to_string();
    assert!(e.contains("unexpected tensors") && e.contains("layer.kernel.P"), "{e}");
    // the S4D config against S4Block weights: missing tensor named
    let e = import_official_files::<f32>(
        &fixture("s4block-dplr-legs", "model.safetensors"),
        &fixture("s4d-minimal", "config.json"),
    )
    .unwrap_err()
    .to_string();
    assert!(e.contains("missing tensor 'D'"), "{e}");
    // an official option the importer does not implement is named, not ignored
    let cfg_text =
        std::fs::read_to_string(&cfg).unwrap().replace("\"dropout\": 0.0", "\"dropout\": 0.0, \"dt_fast\": true");
    let odd = dir.join("config_dt_fast.json");
    std::fs::write(&odd, cfg_text).unwrap();
    let e =
        import_official_files::<f32>(&fixture("s4block-dplr-legs", "model.safetensors"), &odd).unwrap_err().to_string();
    assert!(e.contains("dt_fast"), "{e}");
}

#[test]
fn dropout_is_active_only_in_training_mode() {
    let cfg = S4LayerConfig { d_model: 16, d_state: 8, dropout: 0.5, seed: 2, ..Default::default() };
    let layer = cfg.build_as::<f64>().unwrap();
    let x = input(4, 16, 64);
    let eval = layer.forward(x.view(), &ForwardOptions::default()).unwrap().y;
    let no_drop = S4LayerConfig { dropout: 0.0, ..cfg.clone() }.build_as::<f64>().unwrap();
    assert_eq!(eval, no_drop.forward(x.view(), &ForwardOptions::default()).unwrap().y, "eval mode has no dropout");
    let train =
        |seed| layer.forward(x.view(), &ForwardOptions { dropout_seed: Some(seed), ..Default::default() }).unwrap().y;
    let (a, b) = (train(1), train(1));
    assert_eq!(a, b, "seeded");
    assert_ne!(a, train(2));
    assert!(rel_err(&a, &eval) > 1e-3, "training mode changes the output");
}

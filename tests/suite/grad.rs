//! Every backward pass against central finite differences in f64 (relative error ≤ 1e-6).

use ndarray::{Array1, Array2, Array3};
use num_complex::Complex64;
use rand_distr::{Distribution, StandardNormal};
use s4::conv::FftConv;
use s4::discretize::Discretization;
use s4::kernel::{diag_kernel, DplrKernel};
use s4::layer::S4LayerConfig;
use s4::model::{Input, NormKind, Pooling, S4ModelConfig};
use s4::nn::{feature_rows, from_feature_rows, loss, norm};
use s4::ssm::{KernelKind, SsmInitConfig, SsmParams};
use s4::train::grad::{self, ops, Target, TrainOptions};

use crate::common;
use common::{check, randn2, rng};

fn randn3(shape: (usize, usize, usize), seed: u64) -> Array3<f64> {
    let mut r = rng(seed);
    Array3::from_shape_fn(shape, |_| StandardNormal.sample(&mut r))
}

fn dot3(a: &Array3<f64>, b: &Array3<f64>) -> f64 {
    a.iter().zip(b).map(|(x, y)| x * y).sum()
}

#[test]
fn linear_gradients() {
    let x = randn3((3, 4, 5), 1);
    let w = randn2((6, 4), 2);
    let b = Array1::from_vec(vec![0.1, -0.2, 0.3, 0.0, 0.5, 1.0]);
    let r = randn3((3, 6, 5), 3);
    let (gx, gw, gb) = s4::nn::linear::linear_features_backward(x.view(), w.view(), r.view());
    let f = |x: &Array3<f64>, w: &Array2<f64>, b: &Array1<f64>| {
        dot3(&s4::nn::linear::linear_features(x.view(), w.view(), b.view()), &r)
    };
    check("linear x", gx.as_slice().unwrap(), x.len(), |i, d| {
        let mut xp = x.clone();
        xp.as_slice_mut().unwrap()[i] += d;
        f(&xp, &w, &b)
    });
    check("linear W", gw.as_slice().unwrap(), w.len(), |i, d| {
        let mut wp = w.clone();
        wp.as_slice_mut().unwrap()[i] += d;
        f(&x, &wp, &b)
    });
    check("linear bias", gb.as_slice().unwrap(), b.len(), |i, d| {
        let mut bp = b.clone();
        bp[i] += d;
        f(&x, &w, &bp)
    });
}

#[test]
fn gelu_and_glu_gradients() {
    let x = randn3((2, 6, 7), 4) * 2.0;
    let r = randn3((2, 3, 7), 5);
    let gz = ops::glu_backward(x.view(), r.view());
    check("glu", gz.as_slice().unwrap(), x.len(), |i, d| {
        let mut xp = x.clone();
        xp.as_slice_mut().unwrap()[i] += d;
        dot3(&s4::nn::glu_features(xp.view()), &r)
    });
    let an: Vec<f64> = x.iter().map(|&v| s4::nn::gelu_grad(v)).collect();
    check("gelu", &an, x.len(), |i, d| s4::nn::gelu(x.as_slice().unwrap()[i] + d));
}

#[test]
fn norm_gradients() {
    let x = randn3((3, 5, 4), 6) * 1.5 + 0.3;
    let w = Array1::from_vec(vec![1.0, 0.5, -1.2, 2.0, 0.9]);
    let b = Array1::from_vec(vec![0.0, 0.1, 0.2, -0.3, 0.4]);
    let r = randn3((3, 5, 4), 7);
    for kind in ["layer", "batch"] {
        let fwd = |x: &Array3<f64>, w: &Array1<f64>, b: &Array1<f64>| match kind {
            // LayerNorm over the feature axis of (B, H, L): the shared row LayerNorm on its feature rows
            "layer" => {
                let y = norm::layer_norm_forward(feature_rows(x.view()).view(), w.view(), b.view(), 1e-5).0;
                from_feature_rows(y, 3, 4)
            }
            _ => ops::batch_norm_forward(x.view(), w.view(), b.view()).0,
        };
        let (gx, gw, gb) = match kind {
            "layer" => {
                let (_, c) = norm::layer_norm_forward(feature_rows(x.view()).view(), w.view(), b.view(), 1e-5);
                let (gx, gw, gb) = norm::layer_norm_backward(&c, w.view(), feature_rows(r.view()).view());
                (from_feature_rows(gx, 3, 4), gw, gb)
            }
            _ => {
                let (_, c, _, _) = ops::batch_norm_forward(x.view(), w.view(), b.view());
                ops::batch_norm_backward(&c, w.view(), r.view())
            }
        };
        check(&format!("{kind} norm x"), gx.as_slice().unwrap(), x.len(), |i, d| {
            let mut xp = x.clone();
            xp.as_slice_mut().unwrap()[i] += d;
            dot3(&fwd(&xp, &w, &b), &r)
        });
        check(&format!("{kind} norm w"), gw.as_slice().unwrap(), w.len(), |i, d| {
            let mut wp = w.clone();
            wp[i] += d;
            dot3(&fwd(&x, &wp, &b), &r)
        });
        check(&format!("{kind} norm b"), gb.as_slice().unwrap(), b.len(), |i, d| {
            let mut bp = b.clone();
            bp[i] += d;
            dot3(&fwd(&x, &w, &bp), &r)
        });
    }
}

#[test]
fn losses_and_embedding_gradients() {
    let logits = randn2((5, 4), 8);
    let labels = [0u32, 3, 1, 1, 2];
    let (_, g, _) = loss::cross_entropy(logits.view(), labels[..].into()).unwrap();
    check("cross-entropy", g.as_slice().unwrap(), logits.len(), |i, d| {
        let mut lp = logits.clone();
        lp.as_slice_mut().unwrap()[i] += d;
        loss::cross_entropy(lp.view(), labels[..].into()).unwrap().0
    });
    let pred = Array1::from_vec(vec![0.3, -1.0, 2.0]);
    let target = [0.5f32, 0.25, 1.0];
    let (_, g) = loss::mse(pred.view(), &target);
    check("mse", g.as_slice().unwrap(), 3, |i, d| {
        let mut p = pred.clone();
        p[i] += d;
        loss::mse(p.view(), &target).0
    });
    let tokens = ndarray::array![[1u32, 0, 3, 1], [2, 2, 0, 1]];
    let table = randn2((4, 3), 9);
    let r = randn3((2, 3, 4), 10);
    let embed = |t: &Array2<f64>| Array3::from_shape_fn((2, 3, 4), |(b, j, l)| t[[tokens[[b, l]] as usize, j]]);
    let gt = ops::embedding_backward(tokens.view(), r.view(), 4);
    check("embedding", gt.as_slice().unwrap(), table.len(), |i, d| {
        let mut tp = table.clone();
        tp.as_slice_mut().unwrap()[i] += d;
        dot3(&embed(&tp), &r)
    });
}

#[test]
fn fft_convolution_gradients() {
    for (len, klen, bidir) in [(17, 17, false), (16, 9, false), (20, 20, true), (13, 7, true)] {
        let u = randn3((2, 3, len), 11);
        let kf = randn2((3, klen), 12);
        let kb = randn2((3, klen), 13);
        let r = randn3((2, 3, len), 14);
        let y = |u: &Array3<f64>, kf: &Array2<f64>, kb: &Array2<f64>| {
            let mut c = FftConv::<f64>::new();
            if bidir {
                c.bidirectional(u.view(), kf.view(), kb.view(), None).unwrap()
            } else {
                c.causal(u.view(), kf.view(), None).unwrap()
            }
        };
        let kbv = bidir.then_some(kb.view());
        let g = grad::conv_backward(u.view(), kf.view(), kbv, r.view(), None).unwrap();
        let tag = format!("conv L={len} Lk={klen} bidirectional={bidir}");
        // the forward that keeps its input spectra gives the same output, and the backward given
        // them the same gradients, bit for bit; spectra of another size are refused
        let (yk, spectra) =
            FftConv::<f64>::new().convolve_keeping_input_spectra(u.view(), kf.view(), kbv, None).unwrap();
        assert!(yk.iter().zip(&y(&u, &kf, &kb)).all(|(a, b)| a.to_bits() == b.to_bits()), "{tag}: forward");
        let gk = grad::conv_backward(u.view(), kf.view(), kbv, r.view(), Some(&spectra)).unwrap();
        let bits = |a: &Array3<f64>, b: &Array3<f64>| a.iter().zip(b).all(|(x, y)| x.to_bits() == y.to_bits());
        assert!(bits(&g.input, &gk.input) && g.k_fwd == gk.k_fwd && g.k_bwd == gk.k_bwd, "{tag}: with spectra");
        let one = u.slice(ndarray::s![..1, .., ..]).to_owned();
        let (_, other) =
            FftConv::<f64>::new().convolve_keeping_input_spectra(one.view(), kf.view(), kbv, None).unwrap();
        let err = grad::conv_backward(u.view(), kf.view(), kbv, r.view(), Some(&other)).unwrap_err().to_string();
        assert!(err.contains("input spectra") && err.contains("(B, H, n/2 + 1)"), "{err}");
        check(&format!("{tag} input"), g.input.as_slice().unwrap(), u.len(), |i, d| {
            let mut up = u.clone();
            up.as_slice_mut().unwrap()[i] += d;
            dot3(&y(&up, &kf, &kb), &r)
        });
        check(&format!("{tag} k_fwd"), g.k_fwd.as_slice().unwrap(), kf.len(), |i, d| {
            let mut kp = kf.clone();
            kp.as_slice_mut().unwrap()[i] += d;
            dot3(&y(&u, &kp, &kb), &r)
        });
        if bidir {
            check(&format!("{tag} k_bwd"), g.k_bwd.as_ref().unwrap().as_slice().unwrap(), kb.len(), |i, d| {
                let mut kp = kb.clone();
                kp.as_slice_mut().unwrap()[i] += d;
                dot3(&y(&u, &kf, &kp), &r)
            });
        }
    }
}

/// Perturbs entry i (real/imag interleaved for complex fields) of one field of SsmParams.
fn perturb(p: &SsmParams<f64>, field: &str, i: usize, d: f64) -> SsmParams<f64> {
    let mut q = p.clone();
    let bump = |z: &mut Complex64| if i.is_multiple_of(2) { z.re += d } else { z.im += d };
    match field {
        "lambda" => bump(&mut q.lambda.as_slice_mut().unwrap()[i / 2]),
        "b" => bump(&mut q.b.as_slice_mut().unwrap()[i / 2]),
        "c" => bump(&mut q.c.as_slice_mut().unwrap()[i / 2]),
        "p" => bump(&mut q.p.as_mut().unwrap().as_slice_mut().unwrap()[i / 2]),
        "dt" => q.dt[i] += d,
        _ => unreachable!(),
    }
    q
}

fn interleave(z: &[num_complex::Complex<f64>]) -> Vec<f64> {
    z.iter().flat_map(|c| [c.re, c.im]).collect()
}

fn check_ssm_grads(
    tag: &str,
    params: &SsmParams<f64>,
    g: &grad::SsmGrads<f64>,
    kernel: impl Fn(&SsmParams<f64>) -> Array2<f64>,
    r: &Array2<f64>,
) {
    let loss = |p: &SsmParams<f64>| kernel(p).iter().zip(r).map(|(a, b)| a * b).sum::<f64>();
    let mut fields = vec![
        ("lambda", interleave(g.lambda.as_slice().unwrap())),
        ("b", interleave(g.b.as_slice().unwrap())),
        ("c", interleave(g.c.as_slice().unwrap())),
        ("dt", g.dt.to_vec()),
    ];
    if let Some(gp) = &g.p {
        fields.push(("p", interleave(gp.as_slice().unwrap())));
    }
    for (field, an) in fields {
        check(&format!("{tag} {field}"), &an, an.len(), |i, d| loss(&perturb(params, field, i, d)));
    }
}

#[test]
fn dplr_kernel_gradients() {
    // N = 20: 10 modes, a full vector block of 8 and a remainder in the Cauchy-node loop
    for (init, n, l_kernel, len) in
        [("legs", 8, 64, 64), ("legs", 8, 33, 20), ("legt", 6, 40, 40), ("fout", 8, 31, 31), ("legs", 20, 48, 48)]
    {
        let mut params =
            SsmInitConfig { d_state: n, channels: 2, init: init.parse().unwrap(), seed: 3, ..Default::default() }
                .draw()
                .unwrap();
        params.dt.mapv_inplace(|d| d * 20.0); // larger Δ: the kernel changes visibly over L
        let k0 = DplrKernel::<f64>::new(&params, l_kernel).unwrap();
        let p_tilde = k0.params().clone();
        let kernel = |p: &SsmParams<f64>| DplrKernel::from_c_tilde(p.clone(), l_kernel).unwrap().kernel(len).unwrap();
        let r = randn2((2, len), 15);
        let g = grad::dplr_kernel_backward(&p_tilde, l_kernel, r.view()).unwrap();
        check_ssm_grads(&format!("DPLR {init} N={n} L={l_kernel} len={len}"), &p_tilde, &g, kernel, &r);
    }
}

#[test]
fn diag_kernel_gradients() {
    for (init, method) in
        [("diag-lin", Discretization::Zoh), ("diag-inv", Discretization::Bilinear), ("diag-legs", Discretization::Zoh)]
    {
        let mut params = SsmInitConfig {
            kind: KernelKind::Diag,
            d_state: 8,
            channels: 3,
            init: init.parse().unwrap(),
            seed: 4,
            ..Default::default()
        }
        .draw()
        .unwrap();
        params.dt.mapv_inplace(|d| d * 10.0);
        let len = 50;
        let r = randn2((3, len), 16);
        let g = grad::diag_kernel_backward(&params, r.view(), method).unwrap();
        let kernel = |p: &SsmParams<f64>| diag_kernel(p, len, method).unwrap();
        check_ssm_grads(&format!("S4D {init} {method:?}"), &params, &g, kernel, &r);
    }
}

/// Whole-model check: every trainable tensor (up to 40 entries each) against central differences.
fn check_model(
    tag: &str,
    cfg: S4ModelConfig,
    input: Input<f64>,
    lengths: Option<&[usize]>,
    target: Target,
    len: usize,
) {
    let mut model = cfg.build_as::<f64>().unwrap();
    model.set_kernel_length(len).unwrap();
    // move every weight off its init (norm scales 1, biases 0) so no gradient is trivially exact
    let mut r = rng(99);
    grad::for_each_tensor(&mut model, &mut |_, _, x| {
        for v in x.iter_mut() {
            let e: f64 = StandardNormal.sample(&mut r);
            *v += 0.05 * e;
        }
    });
    let opts = TrainOptions { dropout_seed: Some(7), update_running_stats: false };
    let (_, mut g) = grad::forward_backward(&mut model.clone(), input, lengths, target, opts).unwrap();
    let mut analytic: Vec<(String, Vec<f64>)> = Vec::new();
    grad::for_each_tensor(&mut g, &mut |name, _, x| analytic.push((name.to_string(), x.to_vec())));
    for (t, (name, an)) in analytic.iter().enumerate() {
        check(&format!("{tag} {name}"), an, an.len(), |i, d| {
            let mut m = model.clone();
            let mut k = 0;
            grad::for_each_tensor(&mut m, &mut |_, _, x| {
                if k == t {
                    x[i] += d;
                }
                k += 1;
            });
            grad::forward_backward(&mut m, input, lengths, target, opts).unwrap().0.loss
        });
    }
}

#[test]
fn whole_model_dplr_bidirectional_batchnorm_embedding() {
    let cfg = S4ModelConfig {
        vocab_size: Some(7),
        d_output: 3,
        n_layers: 2,
        layer: S4LayerConfig {
            d_model: 4,
            d_state: 4,
            bidirectional: true,
            dropout: 0.2,
            n_ssm: Some(2),
            dt_transform: s4::layer::DtTransform::Softplus,
            ..Default::default()
        },
        prenorm: false,
        norm: NormKind::Batch,
        dropout: 0.1,
        pooling: Pooling::Mean,
        ..Default::default()
    };
    let tokens = ndarray::array![[1u32, 5, 2, 6, 0, 3, 3, 1, 4, 2], [2, 2, 0, 1, 6, 5, 4, 3, 0, 0]];
    let lengths = [10usize, 8];
    check_model("dplr", cfg, Input::Tokens(tokens.view()), Some(&lengths), Target::Classes(&[2, 0]), 10);
}

#[test]
fn whole_model_s4d_layernorm_regression_and_lm() {
    let layer = S4LayerConfig {
        d_model: 4,
        d_state: 6,
        kernel: KernelKind::Diag,
        init: "diag-lin".parse().unwrap(),
        ..Default::default()
    };
    let cfg = S4ModelConfig {
        d_input: 2,
        d_output: 1,
        n_layers: 2,
        layer: layer.clone(),
        prenorm: true,
        norm: NormKind::Layer,
        pooling: Pooling::Last,
        ..Default::default()
    };
    let x = randn3((3, 2, 12), 17);
    check_model("s4d regression", cfg, Input::Features(x.view()), None, Target::Values(&[0.5, -1.0, 2.0]), 12);
    let lm = S4ModelConfig {
        vocab_size: Some(5),
        d_output: 5,
        n_layers: 1,
        layer: S4LayerConfig { kernel: KernelKind::Dplr, init: "legs".parse().unwrap(), ..layer },
        pooling: Pooling::None,
        ..Default::default()
    };
    let tokens = ndarray::array![[1u32, 4, 2, 0, 3, 3], [0, 1, 2, 3, 4, 0]];
    let next = ndarray::array![[4u32, 2, 0, 3, 3, 1], [1, 2, 3, 4, 0, 0]];
    check_model("lm", lm.clone(), Input::Tokens(tokens.view()), Some(&[6, 5]), Target::Tokens(next.view()), 6);
    // distillation: hard tokens plus KL to a teacher's distributions (B, L, V)
    let mut r = rng(5);
    let mut teacher = ndarray::Array3::<f32>::from_shape_fn((2, 6, 5), |_| {
        let e: f64 = StandardNormal.sample(&mut r);
        (e as f32).exp()
    });
    for mut row in teacher.lanes_mut(ndarray::Axis(2)) {
        let s = row.sum();
        row /= s;
    }
    let target = Target::Distill { tokens: next.view(), teacher: teacher.view(), soft_weight: 0.7 };
    check_model("lm distill", lm, Input::Tokens(tokens.view()), Some(&[6, 5]), target, 6);
}

#[test]
fn training_forward_matches_the_model_forward() {
    // no BatchNorm (its training mode uses batch statistics), dropout active: same streams
    let cfg = S4ModelConfig {
        d_input: 3,
        d_output: 4,
        n_layers: 2,
        layer: S4LayerConfig { d_model: 8, d_state: 8, dropout: 0.3, ..Default::default() },
        dropout: 0.2,
        ..Default::default()
    };
    let mut model = cfg.build_as::<f64>().unwrap();
    model.set_kernel_length(30).unwrap();
    let x = randn3((2, 3, 30), 18);
    let labels = [1u32, 3];
    let (stats, _) = grad::forward_backward(
        &mut model.clone(),
        Input::Features(x.view()),
        None,
        Target::Classes(&labels),
        TrainOptions { dropout_seed: Some(5), update_running_stats: false },
    )
    .unwrap();
    let logits = model.forward_train(Input::Features(x.view()), None, 5).unwrap();
    let (loss, _, _) = loss::cross_entropy(logits.index_axis(ndarray::Axis(2), 0), labels[..].into()).unwrap();
    assert!((stats.loss - loss).abs() < 1e-12, "{} vs {loss}", stats.loss);
}

#[test]
fn batchnorm_running_statistics_reproduce_the_training_forward() {
    // after many training-mode passes over one batch (no updates), the running statistics are that
    // batch's statistics, so evaluation mode must give the training-mode loss on it
    for prenorm in [true, false] {
        let cfg = S4ModelConfig {
            d_input: 1,
            d_output: 2,
            n_layers: 3,
            layer: S4LayerConfig { d_model: 8, d_state: 8, bidirectional: true, ..Default::default() },
            prenorm,
            norm: NormKind::Batch,
            ..Default::default()
        };
        let mut model = cfg.build_as::<f64>().unwrap();
        model.set_kernel_length(64).unwrap();
        let x = randn3((4, 1, 64), 21).mapv(|v| v * 3.0 + 1.0);
        let y = [0u32, 1, 1, 0];
        let opts = TrainOptions { dropout_seed: None, update_running_stats: true };
        let mut train_loss = 0.0;
        for _ in 0..400 {
            train_loss = grad::forward_backward(&mut model, Input::Features(x.view()), None, Target::Classes(&y), opts)
                .unwrap()
                .0
                .loss;
        }
        let eval = grad::evaluate_loss(&model, Input::Features(x.view()), None, Target::Classes(&y)).unwrap().loss;
        assert!(
            (eval - train_loss).abs() < 1e-3 * train_loss.abs().max(1.0),
            "prenorm {prenorm}: {train_loss} vs {eval}"
        );
    }
}

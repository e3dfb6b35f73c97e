//! Every fast kernel against the slow, obvious one: S4 (DPLR) and S4D kernels against matrix powers
//! and the diagonal recurrence, the C̃ correction, length doubling, and the official PyTorch kernels.

use crate::common;

use common::{official_params, rel_err, to_f64};
use ndarray::{Array1, Array2, Array3};
use num_complex::Complex64;
use s4::discretize::{discretize_mode, Discretization};
use s4::hippo::{nplr, transition, Measure};
use s4::io::read_npy;
use s4::kernel::{c_tilde, diag_kernel, kernel_naive, ssm_kernel, ssm_kernel_naive, DplrKernel};
use s4::ssm::{KernelKind, SsmInit, SsmInitConfig, SsmParams};

fn legs_params(n: usize, h: usize, dt: f64, seed: u64) -> SsmParams<f64> {
    let mut p = SsmInitConfig { d_state: n, channels: h, seed, ..Default::default() }.draw().unwrap();
    p.dt.fill(dt);
    p
}

#[test]
fn dplr_kernel_matches_matrix_powers_f64_and_f32() {
    let mut worst64 = 0.0f64;
    let mut worst32 = 0.0f64;
    for n in [4, 16, 64] {
        for dt in [1e-4, 1e-3, 1e-1] {
            let params = legs_params(n, 2, dt, n as u64);
            for len in [1, 7, 1000, 4096] {
                let reference = ssm_kernel_naive(&params, len, Discretization::Bilinear).unwrap();
                let k64 = DplrKernel::<f64>::new(&params, len).unwrap().kernel(len).unwrap();
                let k32 = DplrKernel::<f32>::new(&params, len).unwrap().kernel(len).unwrap();
                let e64 = rel_err(&k64, &reference);
                let e32 = rel_err(&to_f64(&k32), &reference);
                assert!(e64 <= 1e-9, "f64 N={n} L={len} dt={dt}: {e64:e}");
                assert!(e32 <= 1e-4, "f32 N={n} L={len} dt={dt}: {e32:e}");
                worst64 = worst64.max(e64);
                worst32 = worst32.max(e32);
            }
        }
    }
    println!("DPLR vs matrix powers: worst relative error f64 {worst64:.2e}, f32 {worst32:.2e}");
}

#[test]
fn omitting_c_tilde_fails_at_dt_1e_3_l_1024() {
    let params = legs_params(64, 1, 1e-3, 11);
    let len = 1024;
    let reference = ssm_kernel_naive(&params, len, Discretization::Bilinear).unwrap();
    // the raw C handed to the generating-function kernel as if it were C̃
    let wrong = DplrKernel::<f64>::from_c_tilde(params.clone(), len).unwrap().kernel(len).unwrap();
    let err = rel_err(&wrong, &reference);
    assert!(err > 0.05, "without C̃ the kernel should be visibly wrong, got {err:e}");
    let right = DplrKernel::<f64>::new(&params, len).unwrap().kernel(len).unwrap();
    assert!(rel_err(&right, &reference) < 1e-9);
    println!("omitting C̃: relative error {err:.3e}");
}

#[test]
fn length_doubling_updates_c_tilde() {
    let params = legs_params(16, 3, 1e-3, 5);
    let mut k = DplrKernel::<f64>::new(&params, 300).unwrap();
    k.double_length().unwrap();
    assert_eq!(k.l_kernel(), 600);
    let direct = c_tilde(&params, 600).unwrap();
    let diff = (&k.params().c - &direct).iter().fold(0.0f64, |m, z| m.max(z.norm()));
    assert!(diff < 1e-11, "{diff:e}");
    let reference = ssm_kernel_naive(&params, 600, Discretization::Bilinear).unwrap();
    assert!(rel_err(&k.kernel(600).unwrap(), &reference) < 1e-9);
    // a shorter request is the truncation of the l_kernel kernel; a longer one is an error
    let short = k.kernel(100).unwrap();
    assert!(rel_err(&short, &reference.slice(ndarray::s![.., ..100]).to_owned()) < 1e-9);
    let e = k.kernel(601).unwrap_err().to_string();
    assert!(e.contains("601") && e.contains("l_kernel = 600"), "{e}");
}

#[test]
fn rank_two_and_general_rank_woodbury() {
    // LegT has rank 2
    let mut legt =
        SsmInitConfig { init: SsmInit::Hippo(Measure::LegT), d_state: 16, channels: 2, seed: 1, ..Default::default() }
            .draw()
            .unwrap();
    legt.dt.fill(1e-2);
    let reference = ssm_kernel_naive(&legt, 500, Discretization::Bilinear).unwrap();
    assert!(rel_err(&DplrKernel::<f64>::new(&legt, 500).unwrap().kernel(500).unwrap(), &reference) < 1e-9);
    // a random rank-3 P
    let mut p = legs_params(16, 2, 3e-2, 9);
    let p3 = Array3::from_shape_fn((3, 2, 8), |(r, h, j)| {
        Complex64::new(((r * 31 + h * 7 + j) as f64).sin() * 0.7, ((r * 13 + j) as f64).cos() * 0.4)
    });
    p.p = Some(p3);
    let reference = ssm_kernel_naive(&p, 333, Discretization::Bilinear).unwrap();
    let e = rel_err(&DplrKernel::<f64>::new(&p, 333).unwrap().kernel(333).unwrap(), &reference);
    assert!(e < 1e-9, "rank 3: {e:e}");
}

#[test]
fn dplr_kernel_of_hippo_equals_powers_of_the_dense_hippo_matrix() {
    // The whole chain: dense HiPPO-LegS in its original basis vs the DPLR kernel from nplr.
    let n = 32;
    let (a, b) = transition(Measure::LegS, n).unwrap();
    let d = nplr(Measure::LegS, n).unwrap();
    let c_real = Array1::from_shape_fn(n, |i| ((i * 7 % 5) as f64 - 2.0) / 3.0);
    let dt = 5e-3;
    let len = 777;
    let (ab, bb) = s4::discretize::discretize_dense(a.view(), b.view(), dt, Discretization::Bilinear).unwrap();
    let reference = kernel_naive(ab.view(), bb.view(), c_real.view(), len).unwrap();
    // y = C x = 2 Re(C V x̃): the half-state C is C V
    let c_half = d.v.t().dot(&c_real.mapv(|x| Complex64::new(x, 0.0)));
    let params = SsmParams {
        lambda: d.lambda.clone().insert_axis(ndarray::Axis(0)),
        p: Some(d.p.clone().insert_axis(ndarray::Axis(1))),
        b: d.b.clone().insert_axis(ndarray::Axis(0)),
        c: c_half.insert_axis(ndarray::Axis(0)),
        dt: Array1::from_elem(1, dt),
    };
    let k = DplrKernel::<f64>::new(&params, len).unwrap().kernel(len).unwrap();
    let e = rel_err(&k.row(0).to_owned(), &reference);
    assert!(e < 1e-9, "{e:e}");
}

/// Impulse response of the diagonal recurrence x ← Ā x + B̄ u, y = 2 Re(C x), in f64.
fn diag_impulse_response(params: &SsmParams<f64>, len: usize, method: Discretization) -> Array2<f64> {
    let (h, m) = params.lambda.dim();
    let mut k = Array2::zeros((h, len));
    for ch in 0..h {
        let modes: Vec<_> = (0..m).map(|j| discretize_mode(params.lambda[[ch, j]], params.dt[ch], method)).collect();
        let mut x = vec![Complex64::new(0.0, 0.0); m];
        for l in 0..len {
            let u = if l == 0 { 1.0 } else { 0.0 };
            let mut y = 0.0;
            for (j, (xj, &(ab, fb))) in x.iter_mut().zip(&modes).enumerate() {
                *xj = ab * *xj + fb * params.b[[ch, j]] * u;
                y += 2.0 * (params.c[[ch, j]] * *xj).re;
            }
            k[[ch, l]] = y;
        }
    }
    k
}

#[test]
fn s4d_kernel_matches_the_diagonal_recurrence() {
    let mut worst = (0.0f64, 0.0f64);
    for init in ["diag-lin", "diag-inv", "diag-legs", "diag-real"] {
        for n in [4, 16, 64] {
            for dt in [1e-4, 1e-3, 1e-1] {
                let cfg = SsmInitConfig {
                    kind: KernelKind::Diag,
                    init: init.parse().unwrap(),
                    d_state: n,
                    channels: 2,
                    seed: 3,
                    ..Default::default()
                };
                let mut params = cfg.draw().unwrap();
                params.dt.fill(dt);
                for method in [Discretization::Zoh, Discretization::Bilinear] {
                    for len in [1, 7, 1000, 4096] {
                        let reference = diag_impulse_response(&params, len, method);
                        let k64 = diag_kernel(&params, len, method).unwrap();
                        let k32 = diag_kernel(&params.cast::<f32>(), len, method).unwrap();
                        let e64 = rel_err(&k64, &reference);
                        let e32 = rel_err(&to_f64(&k32), &reference);
                        assert!(e64 <= 1e-9, "{init} {method} N={n} L={len} dt={dt}: f64 {e64:e}");
                        assert!(e32 <= 1e-4, "{init} {method} N={n} L={len} dt={dt}: f32 {e32:e}");
                        worst = (worst.0.max(e64), worst.1.max(e32));
                    }
                }
            }
        }
    }
    println!("S4D vs recurrence: worst relative error f64 {:.2e}, f32 {:.2e}", worst.0, worst.1);
}

#[test]
fn s4d_kernel_matches_dense_matrix_exponential_powers() {
    let cfg = SsmInitConfig {
        kind: KernelKind::Diag,
        init: "diag-inv".parse().unwrap(),
        d_state: 16,
        channels: 3,
        seed: 2,
        ..Default::default()
    };
    let params = cfg.draw().unwrap();
    for method in [Discretization::Zoh, Discretization::Bilinear, Discretization::Gbt(0.3)] {
        let reference = ssm_kernel_naive(&params, 600, method).unwrap();
        let e = rel_err(&diag_kernel(&params, 600, method).unwrap(), &reference);
        assert!(e < 1e-9, "{method}: {e:e}");
    }
}

#[test]
fn dplr_kernel_matches_the_official_pytorch_kernel() {
    // model.safetensors holds C̃ for l_kernel = L = 300; kernel.npy is layer.kernel(L=300) (float32)
    let (params, heads) = official_params("s4block-dplr-legs");
    assert_eq!(heads, 1);
    let official: Array3<f32> = read_npy(common::fixture("s4block-dplr-legs", "kernel.npy")).unwrap();
    let official = to_f64(&official.index_axis(ndarray::Axis(0), 0).to_owned());
    let k = DplrKernel::<f64>::from_c_tilde(params.clone(), 300).unwrap().kernel(300).unwrap();
    let e = rel_err(&k, &official);
    // the official kernel is float32: its own f32-vs-f64 error is 1.7e-6 of max |K| = 0.26
    assert!(e < 3e-5, "{e:e}");
    let k32 = DplrKernel::<f32>::from_c_tilde(params.cast(), 300).unwrap().kernel(300).unwrap();
    assert!(rel_err(&to_f64(&k32), &official) < 3e-5);
    println!("official DPLR kernel: relative difference {e:.2e}");
}

#[test]
fn bidirectional_official_kernel_has_two_heads_that_match() {
    let (params, heads) = official_params("s4block-dplr-bidirectional");
    assert_eq!(heads, 2);
    let official: Array3<f32> = read_npy(common::fixture("s4block-dplr-bidirectional", "kernel.npy")).unwrap();
    let (c2, h, l) = official.dim();
    let official = to_f64(&official.into_shape_with_order((c2 * h, l)).unwrap());
    let k = DplrKernel::<f64>::from_c_tilde(params, l).unwrap().kernel(l).unwrap();
    let e = rel_err(&k, &official);
    assert!(e < 3e-5, "{e:e}");
}

#[test]
fn s4d_kernel_matches_the_official_pytorch_kernel() {
    let (params, _) = official_params("s4block-diag-inv");
    let official: Array3<f32> = read_npy(common::fixture("s4block-diag-inv", "kernel.npy")).unwrap();
    let official = to_f64(&official.index_axis(ndarray::Axis(0), 0).to_owned());
    let k = diag_kernel(&params, official.ncols(), Discretization::Zoh).unwrap();
    let e = rel_err(&k, &official);
    assert!(e < 3e-5, "{e:e}");
    println!("official S4D kernel: relative difference {e:.2e}");
}

#[test]
fn ssm_kernel_dispatches_and_rejects_zoh_for_dplr() {
    let params = legs_params(8, 2, 1e-2, 1);
    let e = ssm_kernel::<f64>(&params, 10, Some(Discretization::Zoh)).unwrap_err().to_string();
    assert!(e.contains("zoh") && e.contains("bilinear"), "{e}");
    assert!(ssm_kernel::<f64>(&params, 0, None).unwrap_err().to_string().contains("L = 0"));
    let mut bad = params.clone();
    bad.dt[1] = -1.0;
    let e = ssm_kernel::<f32>(&bad, 10, None).unwrap_err().to_string();
    assert!(e.contains("dt[1] = -1"), "{e}");
    let mut bad = params.clone();
    bad.b = Array2::zeros((2, 3));
    let e = ssm_kernel::<f32>(&bad, 10, None).unwrap_err().to_string();
    assert!(e.contains("wrong shape for B"), "{e}");
    let diag = SsmInitConfig {
        kind: KernelKind::Diag,
        init: "diag-lin".parse().unwrap(),
        d_state: 8,
        channels: 2,
        ..Default::default()
    }
    .draw()
    .unwrap();
    assert!(DplrKernel::<f64>::new(&diag, 10).is_err());
    assert!(diag_kernel(&params, 10, Discretization::Zoh).is_err());
}

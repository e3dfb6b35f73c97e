//! Helpers shared by the integration tests.
#![allow(dead_code)]

use ndarray::{Array, Array2, Axis, Dimension};
use num_complex::Complex64;
use rand::SeedableRng;
use rand_distr::{Distribution, StandardNormal};
use s4::ssm::SsmParams;
use std::path::PathBuf;

/// max |a − b| / max |b|.
pub fn rel_err<D: Dimension>(a: &Array<f64, D>, b: &Array<f64, D>) -> f64 {
    assert_eq!(a.shape(), b.shape());
    let d = a.iter().zip(b.iter()).fold(0.0f64, |m, (x, y)| m.max((x - y).abs()));
    d / b.iter().fold(0.0f64, |m, x| m.max(x.abs()))
}

pub fn to_f64<D: Dimension>(a: &Array<f32, D>) -> Array<f64, D> {
    a.mapv(|x| x as f64)
}

pub fn fixture(case: &str, file: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/official-s4").join(case).join(file)
}

/// A tensor of an official state dict as (shape, f32 values).
pub fn tensor(st: &safetensors::SafeTensors, name: &str) -> (Vec<usize>, Vec<f32>) {
    let t = st.tensor(name).unwrap_or_else(|e| panic!("{name}: {e}"));
    assert_eq!(t.dtype(), safetensors::Dtype::F32, "{name}");
    let v = t.data().chunks_exact(4).map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]])).collect();
    (t.shape().to_vec(), v)
}

/// Kernel parameters of an official S4Block state dict (`layer.kernel.*`, dt_transform 'exp',
/// n_ssm = H, channels = 1): Λ = −exp(A_real) − i·A_imag, dt = exp(inv_dt), complex tensors with a
/// trailing dimension of 2. Returns the params (c = the stored C, which is C̃ for DPLR) and the
/// number of C heads.
pub fn official_params(case: &str) -> (SsmParams<f64>, usize) {
    let bytes = std::fs::read(fixture(case, "model.safetensors")).unwrap();
    let st = safetensors::SafeTensors::deserialize(&bytes).unwrap();
    let (s_re, a_re) = tensor(&st, "layer.kernel.A_real");
    let (_, a_im) = tensor(&st, "layer.kernel.A_imag");
    let (h, m) = (s_re[0], s_re[1]);
    let lambda = Array2::from_shape_fn((h, m), |(i, j)| {
        Complex64::new(-(a_re[i * m + j] as f64).exp(), -(a_im[i * m + j] as f64))
    });
    let cplx = |v: &[f32], idx: usize| Complex64::new(v[2 * idx] as f64, v[2 * idx + 1] as f64);
    let (_, b) = tensor(&st, "layer.kernel.B");
    let b = Array2::from_shape_fn((h, m), |(i, j)| cplx(&b, i * m + j));
    let (c_shape, c) = tensor(&st, "layer.kernel.C");
    let heads = c_shape[0];
    // stack heads along the channel axis: (heads * H, N/2)
    let c = Array2::from_shape_fn((heads * h, m), |(i, j)| cplx(&c, i * m + j));
    let (_, inv_dt) = tensor(&st, "layer.kernel.inv_dt");
    let dt = ndarray::Array1::from_shape_fn(h, |i| (inv_dt[i] as f64).exp());
    let p = st.tensor("layer.kernel.P").ok().map(|_| {
        let (ps, p) = tensor(&st, "layer.kernel.P");
        ndarray::Array3::from_shape_fn((ps[0], h, m), |(r, i, j)| cplx(&p, (r * h + i) * m + j))
    });
    // repeat Λ, B, P, dt for each head
    let rep = |a: &Array2<Complex64>| ndarray::concatenate(ndarray::Axis(0), &vec![a.view(); heads]).unwrap();
    let params = SsmParams {
        lambda: rep(&lambda),
        p: p.map(|p| ndarray::concatenate(ndarray::Axis(1), &vec![p.view(); heads]).unwrap()),
        b: rep(&b),
        c,
        dt: ndarray::concatenate(ndarray::Axis(0), &vec![dt.view(); heads]).unwrap(),
    };
    (params, heads)
}

// ---------------------------------------------------------------------------------------------
// Gradient checks (f64, central differences with one Richardson step, relative error ≤ 1e-6)

pub const H: f64 = 1e-5;
pub const TOL: f64 = 1e-6;

pub fn rng(seed: u64) -> rand_pcg::Pcg64 {
    rand_pcg::Pcg64::seed_from_u64(seed)
}

pub fn randn2(shape: (usize, usize), seed: u64) -> Array2<f64> {
    let mut r = rng(seed);
    Array2::from_shape_fn(shape, |_| StandardNormal.sample(&mut r))
}

pub fn randn1(n: usize, seed: u64) -> ndarray::Array1<f64> {
    randn2((1, n), seed).index_axis_move(Axis(0), 0)
}

/// Compares analytic gradients with Richardson-extrapolated central differences of `loss_at(i, h)`
/// (the loss with entry i moved by h), at up to 40 entries; returns max|a − fd| / max|fd|.
pub fn check(name: &str, analytic: &[f64], n: usize, mut loss_at: impl FnMut(usize, f64) -> f64) -> f64 {
    let idx: Vec<usize> = if n <= 40 { (0..n).collect() } else { (0..40).map(|i| i * n / 40).collect() };
    let mut num = 0.0f64;
    let mut den = 0.0f64;
    for &i in &idx {
        let d1 = (loss_at(i, H) - loss_at(i, -H)) / (2.0 * H);
        let d2 = (loss_at(i, H / 2.0) - loss_at(i, -H / 2.0)) / H;
        let fd = (4.0 * d2 - d1) / 3.0;
        num = num.max((fd - analytic[i]).abs());
        den = den.max(fd.abs());
    }
    let rel = num / den.max(1e-300);
    assert!(den > 0.0, "{name}: gradient is identically zero at the checked entries");
    assert!(rel <= TOL, "{name}: relative error {rel:.3e} (max |fd| {den:.3e})");
    eprintln!("{name}: {rel:.1e}");
    rel
}

pub fn dot2(a: &Array2<f64>, b: &Array2<f64>) -> f64 {
    a.iter().zip(b).map(|(x, y)| x * y).sum()
}

/// `x` with flat entry i moved by d.
pub fn bump<D: ndarray::Dimension>(x: &ndarray::Array<f64, D>, i: usize, d: f64) -> ndarray::Array<f64, D> {
    let mut y = x.clone();
    y.as_slice_mut().unwrap()[i] += d;
    y
}

/// [`check`] of every named tensor of a gradient: `loss_with(k, i, d)` is the loss with entry i of
/// tensor k moved by d. Returns the worst relative error.
pub fn check_tensors(
    tag: &str,
    grads: Vec<(String, ndarray::ArrayViewD<'_, f64>)>,
    mut loss_with: impl FnMut(usize, usize, f64) -> f64,
) -> f64 {
    let mut worst = 0.0f64;
    for (k, (name, an)) in grads.into_iter().enumerate() {
        let an = an.as_slice().unwrap().to_vec();
        worst = worst.max(check(&format!("{tag} {name}"), &an, an.len(), |i, d| loss_with(k, i, d)));
    }
    worst
}

//! Backward of the SSM kernels: the gradient of a loss with respect to (Λ, P, B, C or C̃, Δ) given
//! its gradient with respect to the kernel K (rows, L).
//!
//! Conventions: for a real loss ℓ and a complex parameter z, the gradient is g_z = ∂ℓ/∂Re z +
//! i ∂ℓ/∂Im z (what PyTorch reports for a complex tensor viewed as real pairs). For w = f(z)
//! holomorphic, g_z = conj(f'(z))·g_w; for w = conj(z), g_z = conj(g_w).
//!
//! **DPLR** (see [`kernel::dplr`](crate::kernel::DplrKernel)): K = irfft(X)/L with X_k = (1 + z_k/2)·W_k,
//! W = S₀₀ − S₀ᵣ M⁻¹ Sᵣ₀, M = I + Sᵣₛ, and Cauchy sums S_ab(z) = Σ_j v_j/(z − w_j) + v̄_j/(z − w̄_j),
//! v = left_a ⊙ right_b (left ∈ {C̃, P̄_r}, right ∈ {ΔB, ΔP_r}), w = ΔΛ. Backward, step by step:
//! 1. g_X = rfft(g_K)·(2/L) (bins 0 and L/2: 1/L, real parts only), the adjoint of the inverse real FFT;
//! 2. g_W = conj(1 + z/2)·g_X; ∂W/∂S₀₀ = 1, ∂W/∂S₀ᵣ = −x_r, ∂W/∂Sᵣ₀ = −y_r, ∂W/∂Mᵣₛ = y_r x_s with
//!    x = M⁻¹Sᵣ₀ and y = M⁻ᵀS₀ᵣ;
//! 3. g_v_j += g_S·conj(r1_j) + conj(g_S)·r2_j and g_w_j += g_S·conj(v_j r1_j²) + conj(g_S)·v̄_j r2_j²,
//!    with r1 = 1/(z − w_j), r2 = 1/(z − w̄_j);
//! 4. the products v = left·right, w = ΔΛ and the Nyquist bin X = Δ·Re Σ C̃_j B_j by the chain rule.
//!
//! **S4D**: K_l = 2 Re Σ_j a_j Ā_j^l with a = C·B̄ = C·B·φ. With G₀ = Σ_l g_l conj(Ā)^l and
//! G₁ = Σ_l l g_l conj(Ā)^{l−1} (Horner), g_a = 2G₀ and g_Ā = 2 conj(a) G₁; then through
//! Ā = e^{Δλ}, φ = (e^{Δλ} − 1)/λ (ZOH) or Ā = (1 + (1−α)Δλ)/(1 − αΔλ), φ = Δ/(1 − αΔλ) (GBT).
//!
//! Both run per channel in parallel, in f64.
//!
//! ```
//! use ndarray::Array2;
//! use s4::discretize::Discretization;
//! use s4::kernel::diag_kernel;
//! use s4::ssm::{KernelKind, SsmInitConfig};
//! use s4::train::grad::kernel::diag_kernel_backward;
//! // the gradient of ⟨g, K⟩ with respect to Δ and Re Λ against central differences (S4D-Lin, ZOH)
//! let cfg = SsmInitConfig { kind: KernelKind::Diag, init: "diag-lin".parse()?, d_state: 8, channels: 1, ..Default::default() };
//! let p = cfg.draw()?;
//! let g = Array2::from_shape_fn((1, 16), |(_, l)| (l as f64 * 0.4).sin());
//! let loss = |p: &s4::ssm::SsmParams<f64>| (&diag_kernel(p, 16, Discretization::Zoh).unwrap() * &g).sum();
//! let grads = diag_kernel_backward(&p, g.view(), Discretization::Zoh)?;
//! let h = 1e-6;
//! let (mut pp, mut pm) = (p.clone(), p.clone());
//! pp.dt[0] += h;
//! pm.dt[0] -= h;
//! assert!(((loss(&pp) - loss(&pm)) / (2.0 * h) - grads.dt[0]).abs() < 1e-6);
//! let (mut pp, mut pm) = (p.clone(), p.clone());
//! pp.lambda[[0, 1]].re += h;
//! pm.lambda[[0, 1]].re -= h;
//! assert!(((loss(&pp) - loss(&pm)) / (2.0 * h) - grads.lambda[[0, 1]].re).abs() < 1e-6);
//! # Ok::<(), s4::Error>(())
//! ```

use crate::discretize::Discretization;
use crate::error::{Error, Result};
use crate::nn::simd;
use crate::scalar::{cplx, Real};
use crate::ssm::SsmParams;
use ndarray::{Array1, Array2, Array3, ArrayView2};
use num_complex::Complex64;
use rayon::prelude::*;
use realfft::RealFftPlanner;

/// Gradients with respect to the fields of [`SsmParams`] (same shapes; `c` is C̃ for DPLR).
#[derive(Clone, Debug)]
pub struct SsmGrads<T> {
    /// (rows, N/2).
    pub lambda: Array2<num_complex::Complex<T>>,
    /// (R, rows, N/2).
    pub p: Option<Array3<num_complex::Complex<T>>>,
    /// (rows, N/2).
    pub b: Array2<num_complex::Complex<T>>,
    /// (rows, N/2).
    pub c: Array2<num_complex::Complex<T>>,
    /// (rows,).
    pub dt: Array1<T>,
}

/// One channel's gradients in f64.
struct RowGrads {
    lambda: Vec<Complex64>,
    p: Vec<Vec<Complex64>>,
    b: Vec<Complex64>,
    c: Vec<Complex64>,
    dt: f64,
}

fn assemble<T: Real>(rows: Vec<RowGrads>, rank: usize, m: usize, has_p: bool) -> SsmGrads<T> {
    let h = rows.len();
    let lambda = Array2::from_shape_fn((h, m), |(r, j)| cplx(rows[r].lambda[j]));
    let b = Array2::from_shape_fn((h, m), |(r, j)| cplx(rows[r].b[j]));
    let c = Array2::from_shape_fn((h, m), |(r, j)| cplx(rows[r].c[j]));
    let dt = Array1::from_shape_fn(h, |r| T::of(rows[r].dt));
    let p = has_p.then(|| Array3::from_shape_fn((rank, h, m), |(k, r, j)| cplx(rows[r].p[k][j])));
    SsmGrads { lambda, p, b, c, dt }
}

fn c64<T: Real>(z: num_complex::Complex<T>) -> Complex64 {
    Complex64::new(z.re.as_f64(), z.im.as_f64())
}

/// Solves the R × R complex system M x = rhs (row-major), or its transpose.
fn solve(m: &[Complex64], rhs: &[Complex64], r: usize, transpose: bool) -> Vec<Complex64> {
    let mut a: Vec<Complex64> = (0..r * r).map(|i| if transpose { m[(i % r) * r + i / r] } else { m[i] }).collect();
    let mut x = rhs.to_vec();
    crate::kernel::solve_small(&mut a, &mut x, r);
    x
}

/// Gradient of the DPLR kernel K (rows, len) = `DplrKernel::from_c_tilde(params, l_kernel).kernel(len)`
/// with respect to Λ, P, B, C̃ and Δ, given g_K (rows, len), `len ≤ l_kernel`.
///
/// # Errors
/// A parameter set without P, or g_K of the wrong shape.
pub fn dplr_kernel_backward<T: Real>(params: &SsmParams<T>, l_kernel: usize, gk: ArrayView2<T>) -> Result<SsmGrads<T>> {
    params.validate()?;
    let p = params.p.as_ref().ok_or_else(|| Error::invalid("P", "absent", "a DPLR parameter set"))?;
    let (rows, m) = params.lambda.dim();
    let rank = p.shape()[0];
    let len = gk.ncols();
    if gk.nrows() != rows || len > l_kernel || len == 0 {
        return Err(Error::shape("kernel gradient", format!("({rows}, 1..={l_kernel})"), gk.shape()));
    }
    let l = l_kernel;
    let nb = l / 2 + 1;
    let has_nyquist = l.is_multiple_of(2);
    let n_cauchy = if has_nyquist { l / 2 } else { l / 2 + 1 };
    let y: Vec<f64> = (0..n_cauchy).map(|k| 2.0 * (std::f64::consts::PI * k as f64 / l as f64).tan()).collect();
    let fft = RealFftPlanner::<f64>::new().plan_fft_forward(l);
    let r1n = 1 + rank;
    let sums = r1n * r1n;
    let out: Vec<RowGrads> = (0..rows)
        .into_par_iter()
        .map(|ch| {
            // 1. adjoint of K = irfft(X)/L
            let mut buf = vec![0.0; l];
            for t in 0..len {
                buf[t] = gk[[ch, t]].as_f64();
            }
            let mut gx = fft.make_output_vec();
            fft.process(&mut buf, &mut gx).expect("plan buffers");
            for (k, g) in gx.iter_mut().enumerate() {
                let edge = k == 0 || (has_nyquist && k == nb - 1);
                *g = if edge { Complex64::new(g.re / l as f64, 0.0) } else { *g * (2.0 / l as f64) };
            }
            let dt = params.dt[ch].as_f64();
            let lam: Vec<Complex64> = (0..m).map(|j| c64(params.lambda[[ch, j]])).collect();
            let bv: Vec<Complex64> = (0..m).map(|j| c64(params.b[[ch, j]])).collect();
            let ct: Vec<Complex64> = (0..m).map(|j| c64(params.c[[ch, j]])).collect();
            let pv: Vec<Vec<Complex64>> = (0..rank).map(|r| (0..m).map(|j| c64(p[[r, ch, j]])).collect()).collect();
            let left = |a: usize, j: usize| if a == 0 { ct[j] } else { pv[a - 1][j].conj() };
            let right = |b: usize, j: usize| if b == 0 { bv[j] * dt } else { pv[b - 1][j] * dt };
            let v: Vec<Complex64> = (0..sums)
                .flat_map(|s| (0..m).map(move |j| (s, j)))
                .map(|(s, j)| left(s / r1n, j) * right(s % r1n, j))
                .collect();
            let w: Vec<Complex64> = lam.iter().map(|&x| x * dt).collect();
            let (gv, gw) = cauchy_adjoint::<f64>(&y, &gx, &w, &v, rank);
            let mut g_dt = 0.0;
            let mut g_ct = vec![Complex64::new(0.0, 0.0); m];
            let mut g_b = vec![Complex64::new(0.0, 0.0); m];
            if has_nyquist {
                // X = Δ Re Σ C̃_j B_j
                let g = gx[nb - 1].re;
                let sum: Complex64 = (0..m).map(|j| ct[j] * bv[j]).sum();
                g_dt += g * sum.re;
                for j in 0..m {
                    g_ct[j] += g * dt * bv[j].conj();
                    g_b[j] += g * dt * ct[j].conj();
                }
            }
            // 4. v = left_a · right_b, w = Δλ
            let mut g_p = vec![vec![Complex64::new(0.0, 0.0); m]; rank];
            for si in 0..sums {
                let (a, bi) = (si / r1n, si % r1n);
                for j in 0..m {
                    let g = gv[si * m + j];
                    let g_left = g * right(bi, j).conj();
                    let g_right = g * left(a, j).conj();
                    if a == 0 {
                        g_ct[j] += g_left;
                    } else {
                        g_p[a - 1][j] += g_left.conj();
                    }
                    if bi == 0 {
                        g_b[j] += g_right * dt;
                        g_dt += (g_right.conj() * bv[j]).re;
                    } else {
                        g_p[bi - 1][j] += g_right * dt;
                        g_dt += (g_right.conj() * pv[bi - 1][j]).re;
                    }
                }
            }
            let g_lam: Vec<Complex64> = gw.iter().map(|&g| g * dt).collect();
            g_dt += (0..m).map(|j| (gw[j].conj() * lam[j]).re).sum::<f64>();
            RowGrads { lambda: g_lam, p: g_p, b: g_b, c: g_ct, dt: g_dt }
        })
        .collect();
    Ok(assemble(out, rank, m, true))
}

simd::simd_dispatch! {
    /// Steps 2 and 3 of [`dplr_kernel_backward`] for one row: over the Cauchy nodes z_k = i·y_k
    /// (k < `y.len()`), the sums S_ab(z_k), the Woodbury adjoint g_S from g_X, and the accumulated
    /// (g_v, g_w). Returns g_v (`v.len()` = (1 + R)² · m, one block of m per sum) and g_w (m).
    fn cauchy_adjoint(y: &[f64], gx: &[Complex64], w: &[Complex64], v: &[Complex64], rank: usize) -> (Vec<Complex64>, Vec<Complex64>) = cauchy_adjoint_body
}

/// [`cauchy_adjoint`] over struct-of-arrays f64 vectors, so that every loop over the m modes is a
/// vector loop. With r1 = 1/(z − w) and r2 = 1/(z − w̄), a = Re(r1 + r2), b = Im(r2 − r1),
/// c = Im(r1 + r2), d = Re(r1 − r2):
/// - S = Σ_j v r1 + v̄ r2 = Σ_j (Re v·a + Im v·b) + i (Re v·c + Im v·d);
/// - g_v += g·conj(r1) + conj(g)·r2 = (Re g·a + Im g·c) + i (Im g·d + Re g·b);
/// - g_w += conj(r1)²·P + r2²·conj(Q), with P = Σ_S g_S·conj(v_S) and Q = Σ_S g_S·v_S
///   (step 3 of the module docs, summed over the (1 + R)² sums before the products).
#[inline(always)]
#[allow(clippy::extra_unused_type_parameters)] // `simd_dispatch!` passes the scalar type; this body is f64
fn cauchy_adjoint_body<T: Real, const FMA: bool>(
    y: &[f64],
    gx: &[Complex64],
    w: &[Complex64],
    v: &[Complex64],
    rank: usize,
) -> (Vec<Complex64>, Vec<Complex64>) {
    use simd::{dot_body, madd};
    let m = w.len();
    let r1n = 1 + rank;
    let sums = r1n * r1n;
    let (wr, wi): (Vec<f64>, Vec<f64>) = w.iter().map(|z| (z.re, z.im)).unzip();
    let (vr, vi): (Vec<f64>, Vec<f64>) = v.iter().map(|z| (z.re, z.im)).unzip();
    let zeros = || vec![0.0; m];
    let (mut a, mut b, mut c, mut d) = (zeros(), zeros(), zeros(), zeros());
    let (mut e1r, mut e1i, mut e2r, mut e2i) = (zeros(), zeros(), zeros(), zeros());
    let (mut pr, mut pi, mut qr, mut qi) = (zeros(), zeros(), zeros(), zeros());
    let (mut gvr, mut gvi) = (vec![0.0; sums * m], vec![0.0; sums * m]);
    let (mut gwr, mut gwi) = (zeros(), zeros());
    let mut s = vec![Complex64::new(0.0, 0.0); sums];
    let mut gs = vec![Complex64::new(0.0, 0.0); sums];
    let (mut x, mut yv) = (vec![Complex64::new(0.0, 0.0); rank], vec![Complex64::new(0.0, 0.0); rank]);
    for (&yk, &gxk) in y.iter().zip(gx) {
        {
            // every slice cut to m, so that the loop runs without bounds checks (as a vector loop)
            let (wr, wi, a, b, c, d) = (&wr[..m], &wi[..m], &mut a[..m], &mut b[..m], &mut c[..m], &mut d[..m]);
            let (e1r, e1i, e2r, e2i) = (&mut e1r[..m], &mut e1i[..m], &mut e2r[..m], &mut e2i[..m]);
            for j in 0..m {
                // z − w = −Re w + i (y − Im w), z − w̄ = −Re w + i (y + Im w); 1/u = ū/|u|²
                let re = -wr[j];
                let (im1, im2) = (yk - wi[j], yk + wi[j]);
                let (n1, n2) = (1.0 / (re * re + im1 * im1), 1.0 / (re * re + im2 * im2));
                let (r1r, r1i, r2r, r2i) = (re * n1, -im1 * n1, re * n2, -im2 * n2);
                (a[j], b[j], c[j], d[j]) = (r1r + r2r, r2i - r1i, r1i + r2i, r1r - r2r);
                // conj(r1)² = e1r − i·e1i, r2² = e2r + i·e2i
                (e1r[j], e1i[j]) = (r1r * r1r - r1i * r1i, 2.0 * r1r * r1i);
                (e2r[j], e2i[j]) = (r2r * r2r - r2i * r2i, 2.0 * r2r * r2i);
            }
        }
        for (si, sv) in s.iter_mut().enumerate() {
            let (xr, xi) = (&vr[si * m..(si + 1) * m], &vi[si * m..(si + 1) * m]);
            *sv = Complex64::new(
                dot_body::<f64, FMA>(xr, &a) + dot_body::<f64, FMA>(xi, &b),
                dot_body::<f64, FMA>(xr, &c) + dot_body::<f64, FMA>(xi, &d),
            );
        }
        // 2. through X = (1 + z/2) W and the Woodbury identity
        let g_w = Complex64::new(1.0, yk / 2.0).conj() * gxk;
        gs[0] = g_w;
        if rank == 1 {
            // M = 1 + S₁₁ is a number: no small system to set up (this runs once per node)
            let m11 = s[3] + 1.0;
            (x[0], yv[0]) = (s[2] / m11, s[1] / m11);
        } else {
            let mmat: Vec<Complex64> = (0..rank * rank)
                .map(|i| {
                    let (r, q) = (i / rank, i % rank);
                    s[(1 + r) * r1n + 1 + q] + if r == q { 1.0 } else { 0.0 }
                })
                .collect();
            let s0r: Vec<Complex64> = (0..rank).map(|r| s[1 + r]).collect();
            let sr0: Vec<Complex64> = (0..rank).map(|r| s[(1 + r) * r1n]).collect();
            (x, yv) = (solve(&mmat, &sr0, rank, false), solve(&mmat, &s0r, rank, true));
        }
        for r in 0..rank {
            gs[1 + r] = (-x[r]).conj() * g_w;
            gs[(1 + r) * r1n] = (-yv[r]).conj() * g_w;
            for q in 0..rank {
                gs[(1 + r) * r1n + 1 + q] = (yv[r] * x[q]).conj() * g_w;
            }
        }
        // 3. through the Cauchy sums
        for t in [&mut pr, &mut pi, &mut qr, &mut qi] {
            t.fill(0.0);
        }
        for (si, g) in gs.iter().enumerate() {
            let (xr, xi) = (&vr[si * m..(si + 1) * m], &vi[si * m..(si + 1) * m]);
            let (hr, hi) = (&mut gvr[si * m..(si + 1) * m], &mut gvi[si * m..(si + 1) * m]);
            let (a, b, c, d) = (&a[..m], &b[..m], &c[..m], &d[..m]);
            let (pr, pi, qr, qi) = (&mut pr[..m], &mut pi[..m], &mut qr[..m], &mut qi[..m]);
            let (gr, gi) = (g.re, g.im);
            for j in 0..m {
                hr[j] = madd::<f64, FMA>(gr, a[j], madd::<f64, FMA>(gi, c[j], hr[j]));
                hi[j] = madd::<f64, FMA>(gi, d[j], madd::<f64, FMA>(gr, b[j], hi[j]));
                // P += g·conj(v), Q += g·v
                let (gvr_, gvi_, gv_r, gv_i) = (gr * xr[j], gi * xi[j], gi * xr[j], gr * xi[j]);
                pr[j] += gvr_ + gvi_;
                pi[j] += gv_r - gv_i;
                qr[j] += gvr_ - gvi_;
                qi[j] += gv_i + gv_r;
            }
        }
        let (e1r, e1i, e2r, e2i) = (&e1r[..m], &e1i[..m], &e2r[..m], &e2i[..m]);
        let (pr, pi, qr, qi, gwr, gwi) = (&pr[..m], &pi[..m], &qr[..m], &qi[..m], &mut gwr[..m], &mut gwi[..m]);
        for j in 0..m {
            gwr[j] += e1r[j] * pr[j] + e1i[j] * pi[j] + e2r[j] * qr[j] + e2i[j] * qi[j];
            gwi[j] += e1r[j] * pi[j] - e1i[j] * pr[j] + e2i[j] * qr[j] - e2r[j] * qi[j];
        }
    }
    let join = |re: &[f64], im: &[f64]| re.iter().zip(im).map(|(&r, &i)| Complex64::new(r, i)).collect();
    (join(&gvr, &gvi), join(&gwr, &gwi))
}

/// Ā, φ = B̄/B and their derivatives (∂Ā/∂λ, ∂Ā/∂Δ, ∂φ/∂λ, ∂φ/∂Δ) for one mode.
fn mode_derivatives(lam: Complex64, dt: f64, method: Discretization) -> [Complex64; 6] {
    match method.alpha() {
        None => {
            let e = (lam * dt).exp();
            let z = lam * dt;
            // φ = (e^{Δλ} − 1)/λ = Δ·expm1(z)/z, with the series near z = 0
            let (phi, dphi_dlam) = if z.norm() < 1e-4 {
                (dt * (1.0 + z / 2.0 + z * z / 6.0), dt * dt * (0.5 + z / 3.0 + z * z / 8.0))
            } else {
                ((e - 1.0) / lam, (dt * e * lam - (e - 1.0)) / (lam * lam))
            };
            [e, phi, dt * e, lam * e, dphi_dlam, e]
        }
        Some(alpha) => {
            let den = 1.0 - lam * (alpha * dt);
            let den2 = den * den;
            let e = (1.0 + lam * ((1.0 - alpha) * dt)) / den;
            [e, dt / den, dt / den2, lam / den2, alpha * dt * dt / den2, 1.0 / den2]
        }
    }
}

/// Gradient of the S4D kernel `diag_kernel(params, len, method)` with respect to Λ, B, C and Δ,
/// given g_K (rows, len).
///
/// # Errors
/// g_K of the wrong shape or an invalid GBT α.
pub fn diag_kernel_backward<T: Real>(
    params: &SsmParams<T>,
    gk: ArrayView2<T>,
    method: Discretization,
) -> Result<SsmGrads<T>> {
    params.validate()?;
    let method = method.validate()?;
    let (rows, m) = params.lambda.dim();
    if gk.nrows() != rows || gk.ncols() == 0 {
        return Err(Error::shape("kernel gradient", format!("({rows}, L >= 1)"), gk.shape()));
    }
    let len = gk.ncols();
    let out: Vec<RowGrads> = (0..rows)
        .into_par_iter()
        .map(|ch| {
            let dt = params.dt[ch].as_f64();
            let g: Vec<f64> = (0..len).map(|t| gk[[ch, t]].as_f64()).collect();
            let mut row = RowGrads {
                lambda: vec![Complex64::new(0.0, 0.0); m],
                p: Vec::new(),
                b: vec![Complex64::new(0.0, 0.0); m],
                c: vec![Complex64::new(0.0, 0.0); m],
                dt: 0.0,
            };
            let modes: Vec<_> = (0..m).map(|j| mode_derivatives(c64(params.lambda[[ch, j]]), dt, method)).collect();
            // G0 = Σ g_l q^l, G1 = Σ l g_l q^{l−1} with q = conj(Ā), for every mode of the row
            let q: Vec<Complex64> = modes.iter().map(|d| d[0].conj()).collect();
            let sums = horner_sums(&g, &q);
            for (j, (&[_, phi, de_dl, de_dt, dphi_dl, dphi_dt], (g0, g1))) in modes.iter().zip(sums).enumerate() {
                let (bj, cj) = (c64(params.b[[ch, j]]), c64(params.c[[ch, j]]));
                let a = cj * bj * phi;
                let g_a = 2.0 * g0;
                let g_e = 2.0 * a.conj() * g1;
                let cb = cj * bj;
                row.lambda[j] = de_dl.conj() * g_e + (cb * dphi_dl).conj() * g_a;
                row.dt += (g_e.conj() * de_dt).re + (g_a.conj() * cb * dphi_dt).re;
                row.c[j] = (bj * phi).conj() * g_a;
                row.b[j] = (cj * phi).conj() * g_a;
            }
            row
        })
        .collect();
    Ok(assemble(out, 0, m, false))
}

/// (G0, G1) = (Σ_l g_l q^l, Σ_l l·g_l·q^(l−1)) for each q of `q`, by Horner's rule from the last
/// g_l: G1 ← G1·q + G0, then G0 ← G0·q + g_l. One mode's recurrence is a serial chain of complex
/// multiplications (latency-bound); `LANES` modes run side by side in struct-of-arrays form so
/// that their chains overlap. Each lane performs `Complex64`'s operations in its order, so the sums
/// equal the one-mode recurrence bit for bit.
fn horner_sums(g: &[f64], q: &[Complex64]) -> Vec<(Complex64, Complex64)> {
    horner_sums_simd::<f64>(g, q)
}

simd::simd_dispatch! {
    /// [`horner_sums_body`] compiled for the widest vectors the CPU has: one AVX-512 register per
    /// array of 8 lanes (4 SSE registers in the baseline build). The body has no `mul_add`, so
    /// every level computes the same values bit for bit.
    fn horner_sums_simd(g: &[f64], q: &[Complex64]) -> Vec<(Complex64, Complex64)> = horner_sums_body
}

/// [`horner_sums`]' body (`T` and `FMA` unused: f64, plain products and sums; the parameters are
/// the dispatch macro's).
#[inline(always)]
#[allow(clippy::extra_unused_type_parameters)]
fn horner_sums_body<T, const FMA: bool>(g: &[f64], q: &[Complex64]) -> Vec<(Complex64, Complex64)> {
    const LANES: usize = 8;
    let mut out = Vec::with_capacity(q.len());
    for block in q.chunks(LANES) {
        let (mut qr, mut qi) = ([0.0; LANES], [0.0; LANES]);
        for (k, z) in block.iter().enumerate() {
            (qr[k], qi[k]) = (z.re, z.im);
        }
        let (mut g0r, mut g0i, mut g1r, mut g1i) = ([0.0; LANES], [0.0; LANES], [0.0; LANES], [0.0; LANES]);
        for &gl in g.iter().rev() {
            for k in 0..LANES {
                let (r1, i1) = (g1r[k] * qr[k] - g1i[k] * qi[k], g1r[k] * qi[k] + g1i[k] * qr[k]);
                let (r0, i0) = (g0r[k] * qr[k] - g0i[k] * qi[k], g0r[k] * qi[k] + g0i[k] * qr[k]);
                (g1r[k], g1i[k]) = (r1 + g0r[k], i1 + g0i[k]);
                (g0r[k], g0i[k]) = (r0 + gl, i0);
            }
        }
        out.extend((0..block.len()).map(|k| (Complex64::new(g0r[k], g0i[k]), Complex64::new(g1r[k], g1i[k]))));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn horner_sums_equal_one_mode_at_a_time_and_the_power_sums() {
        let g: Vec<f64> = (0..37).map(|l| ((l * 7 % 11) as f64 - 5.0) / 3.0).collect();
        // 11 modes: a full block of 8 and a partial one
        let q: Vec<Complex64> = (0..11).map(|j| Complex64::from_polar(0.9 - 0.03 * j as f64, 0.4 * j as f64)).collect();
        // the same bits at every vector width
        let sums = horner_sums(&g, &q);
        for level in crate::nn::simd::SimdLevel::available() {
            assert_eq!(crate::nn::simd::with_simd_level(level, || horner_sums(&g, &q)), sums, "{level}");
        }
        for (z, (g0, g1)) in q.iter().zip(sums) {
            let (mut h0, mut h1) = (Complex64::new(0.0, 0.0), Complex64::new(0.0, 0.0));
            for &gl in g.iter().rev() {
                h1 = h1 * z + h0;
                h0 = h0 * z + gl;
            }
            assert_eq!((g0, g1), (h0, h1));
            let p0: Complex64 = g.iter().enumerate().map(|(l, &gl)| gl * z.powu(l as u32)).sum();
            let p1: Complex64 = g.iter().enumerate().skip(1).map(|(l, &gl)| gl * l as f64 * z.powu(l as u32 - 1)).sum();
            assert!((g0 - p0).norm() < 1e-12 && (g1 - p1).norm() < 1e-11, "{g0} {p0} {g1} {p1}");
        }
    }
}

//! The S4 convolution kernel of a diagonal-plus-low-rank SSM, discretized with the bilinear rule.
//!
//! Gu, Goel, Ré, *Efficiently Modeling Long Sequences with Structured State Spaces* (ICLR 2022),
//! Algorithm 1, following the official `SSMKernelDPLR.forward` of state-spaces/s4:
//!
//! 1. **Truncated generating function.** Σ_{l<L} C Ā^l B̄ ω^l = C (I − Ā^L ω^L)(I − Āω)⁻¹ B̄. At the
//!    L-th roots of unity ω_k = e^{−2πik/L}, ω^L = 1, so with C̃ = C (I − Ā^L) the DFT of the kernel is
//!    K̂(ω) = C̃ (I − Āω)⁻¹ B̄. C̃ is what a layer stores and trains, tied to its length `l_kernel`
//!    ([`c_tilde`]); doubling the length uses C̃_{2L} = C̃_L (I + Ā^L) ([`DplrKernel::double_length`]).
//! 2. **Bilinear frequency map.** With Ā, B̄ bilinear, K̂(ω) = (2/(1+ω)) C̃ (zI − ΔA)⁻¹ ΔB with
//!    z = 2(1−ω)/(1+ω) = 2i·tan(πk/L), and 2/(1+ω) = 1 + z/2.
//! 3. **Woodbury.** ΔA = ΔΛ − ΔP Q* (Q = P), so with Cauchy sums k(a, b) = Σ_j a_j b_j/(z − Δλ_j)
//!    over the full state ([`CauchyTile`](super::CauchyTile)):
//!    K̂ = (1 + z/2) [k(C̃, ΔB) − k(C̃, ΔP) (I + k(Q*, ΔP))⁻¹ k(Q*, ΔB)], for any rank R.
//! 4. **Nyquist bin** (ω = −1, even L): z = ∞ and the formula is 0·∞; its limit is
//!    K̂(−1) = (Δ/2) Σ_full C̃_j B_j = Δ·Re Σ_half C̃_j B_j (the Woodbury term vanishes as O(1/z²)).
//! 5. **Inverse real FFT** of the L/2 + 1 bins gives K_0..K_{L−1}, for any L.
//!
//! **Range of Δ.** The bilinear map puts Ā = −I + 2(I − ΔA/2)⁻¹: for Δ·|λ| ≫ 1 every mode sits
//! at distance about 4/(Δ|λ|) from −1, and the Cauchy/Woodbury form (and C̃ = C(I − Ā^L))
//! evaluates that distance from terms of size 1, so its relative error grows as ε·Δ·max|λ|
//! (ε = 2⁻⁵³ of the f64 set-up). Measured against the matrix-power reference, which steps the
//! recurrence and stays at 1e-13 for any Δ: 3e-10 at Δ·max|λ| = 1.3e7, 1.2e-6 at 1.3e11, 3% at
//! 1.3e15, and overflow (|K| ≈ 1e285 for a true 1) at Δ = 1e300. The kernel therefore refuses
//! Δ·max_j|λ_j| > [`MAX_DT_LAMBDA`] = 10⁸, where the bound predicts a relative error ≤ 1e-8 (tests
//! check the edge against matrix powers). Ordinary models sit far inside: N = 256 LegS has
//! max|λ| ≈ 2·10⁴, so Δ up to 5·10³ is accepted.
//!
//! The evaluation streams: each channel evaluates its (1+R)² Cauchy sums over tiles of 256 nodes
//! and never stores an N × L matrix; memory is O(H·L + threads·(N + L)). Channels run in parallel.

use super::cauchy::CauchyTile;
use super::check_finite;
use crate::budget::Estimate;
use crate::error::{check_len, Error, Result};
use crate::nn::simd::{madd, simd_dispatch};
use crate::scalar::Real;
use crate::ssm::{KernelKind, SsmParams};
use nalgebra::DMatrix;
use ndarray::{Array1, Array2, Axis};
use num_complex::{Complex, Complex64};
use rayon::prelude::*;
use realfft::{ComplexToReal, RealFftPlanner};
use std::sync::Arc;

const TILE: usize = 256;

/// The largest Δ·max_j|λ_j| the DPLR kernel accepts (see the module docs: its relative error grows
/// as 1.1e-16·Δ·max|λ|, so ≤ about 1e-8 here).
pub const MAX_DT_LAMBDA: f64 = 1e8;

/// Checks every channel's Δ·max_j|λ_j| ≤ [`MAX_DT_LAMBDA`].
fn check_dt_range<T: Real>(params: &SsmParams<T>) -> Result<()> {
    for (h, lam) in params.lambda.outer_iter().enumerate() {
        let max_lam = lam.iter().map(|l| l.re.as_f64().hypot(l.im.as_f64())).fold(0.0f64, f64::max);
        let dt = params.dt[h].as_f64();
        if dt * max_lam > MAX_DT_LAMBDA {
            return Err(Error::invalid(
                format!("dt[{h}]"),
                dt,
                format!(
                    "at most {:.3e} for this channel (max|Λ| = {max_lam:.3e}): past dt·max|Λ| = 1e8 the DPLR kernel's bilinear form loses accuracy (relative error about 1e-16·dt·max|Λ|)",
                    MAX_DT_LAMBDA / max_lam
                ),
            ));
        }
    }
    Ok(())
}

/// The dense real bilinear Ā_r of channel `h` (see [`SsmParams::dense_real`]).
fn bilinear_dense(params: &SsmParams<f64>, h: usize) -> Result<DMatrix<f64>> {
    let (a, _, _) = params.dense_real(h);
    let n = a.nrows();
    let dt = params.dt[h];
    let am = DMatrix::from_fn(n, n, |i, k| a[[i, k]] * dt / 2.0);
    let eye = DMatrix::<f64>::identity(n, n);
    (&eye - &am)
        .lu()
        .solve(&(&eye + &am))
        .ok_or_else(|| Error::numerical("bilinear discretization", format!("I - Δ/2·A is singular for channel {h}")))
}

/// c_r Ā_r^power for the dense real bilinear system of channel `h` (row vector times matrix power,
/// by repeated squaring: O(N³ log power)).
fn row_times_power(params: &SsmParams<f64>, h: usize, row: &Array1<f64>, power: usize) -> Result<Array1<f64>> {
    let mut p = bilinear_dense(params, h)?;
    let n = p.nrows();
    let mut v = nalgebra::RowDVector::from_fn(n, |_, k| row[k]);
    let mut e = power;
    while e > 0 {
        if e & 1 == 1 {
            v = &v * &p;
        }
        e >>= 1;
        if e > 0 {
            p = &p * &p;
        }
    }
    Ok(Array1::from_shape_fn(n, |k| v[k]))
}

/// Ā_r^power by repeated squaring.
fn matrix_power(mut p: DMatrix<f64>, power: usize) -> DMatrix<f64> {
    let mut acc = DMatrix::<f64>::identity(p.nrows(), p.ncols());
    let mut e = power;
    while e > 0 {
        if e & 1 == 1 {
            acc = &acc * &p;
        }
        e >>= 1;
        if e > 0 {
            p = &p * &p;
        }
    }
    acc
}

/// Recovers the plain C = C̃ (I − Ā^L)⁻¹ from C̃ tied to length `l_kernel` (what step mode needs),
/// for every channel, in f64.
///
/// # Errors
/// Invalid parameters, `l_kernel == 0`, or I − Ā^L numerically singular (Re Λ ≈ 0 and small ΔL:
/// the C̃ parameterization then cannot be inverted; the s4-math note §7.3).
pub fn recover_c(params: &SsmParams<f64>, l_kernel: usize) -> Result<Array2<Complex64>> {
    params.validate()?;
    check_len("l_kernel", l_kernel)?;
    let mut out = params.c.clone();
    out.axis_iter_mut(Axis(0)).into_par_iter().enumerate().try_for_each(|(h, mut row)| -> Result<()> {
        let pw = matrix_power(bilinear_dense(params, h)?, l_kernel);
        let n = pw.nrows();
        let m = DMatrix::<f64>::identity(n, n) - pw;
        let ct = c_to_row(row.view());
        let rhs = nalgebra::DVector::from_fn(n, |i, _| ct[i]);
        let sol = m.transpose().lu().solve(&rhs).ok_or_else(|| {
            Error::numerical("C recovery", format!("I - Ā^L is singular for channel {h} (L = {l_kernel})"))
        })?;
        if sol.iter().any(|x| !x.is_finite()) {
            return Err(Error::numerical("C recovery", format!("non-finite C for channel {h}")));
        }
        row.assign(&row_to_c(&Array1::from_shape_fn(n, |i| sol[i])));
        Ok(())
    })?;
    Ok(out)
}

/// Real row (2 Re C, −2 Im C) of a half-state output vector, and back.
fn c_to_row(c: ndarray::ArrayView1<Complex64>) -> Array1<f64> {
    let m = c.len();
    Array1::from_shape_fn(2 * m, |i| if i < m { 2.0 * c[i].re } else { -2.0 * c[i - m].im })
}

fn row_to_c(row: &Array1<f64>) -> Array1<Complex64> {
    let m = row.len() / 2;
    Array1::from_shape_fn(m, |j| Complex64::new(row[j] / 2.0, -row[j + m] / 2.0))
}

/// C̃ = C (I − Ā^L) for every channel (H, N/2), with Ā the bilinear discretization, in f64.
///
/// Computed on the dense real form of each channel ([`SsmParams::dense_real`]) by repeated squaring:
/// O(H·N³·log L), a one-time cost when a layer is set up for a length.
///
/// # Errors
/// Invalid parameters or `len == 0`.
pub fn c_tilde(params: &SsmParams<f64>, len: usize) -> Result<Array2<Complex64>> {
    params.validate()?;
    check_len("kernel length L", len)?;
    apply_power_correction(params, params.c.clone(), len, -1.0)
}

/// Returns C' + sign · C' Ā^power, per channel, for C' = `c`.
fn apply_power_correction(
    params: &SsmParams<f64>,
    c: Array2<Complex64>,
    power: usize,
    sign: f64,
) -> Result<Array2<Complex64>> {
    let mut out = c;
    out.axis_iter_mut(Axis(0)).into_par_iter().enumerate().try_for_each(|(h, mut row)| -> Result<()> {
        let r = c_to_row(row.view());
        let rp = row_times_power(params, h, &r, power)?;
        row.assign(&row_to_c(&(&r + &(rp * sign))));
        Ok(())
    })?;
    Ok(out)
}

/// An S4 kernel ready to evaluate: (Λ, P, B, Δ) and the output vector C̃ tied to `l_kernel`, with
/// the inverse-FFT plan and the frequency nodes of that length planned once.
#[derive(Clone)]
pub struct DplrKernel<T: Real> {
    params: SsmParams<T>,
    l_kernel: usize,
    /// Imaginary parts y_k = 2 tan(πk/L) of the nodes z_k, k < L/2 (the Nyquist bin is exact).
    nodes: Vec<T>,
    ifft: Arc<dyn ComplexToReal<T>>,
}

impl<T: Real> std::fmt::Debug for DplrKernel<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DplrKernel")
            .field("params", &self.params)
            .field("l_kernel", &self.l_kernel)
            .finish_non_exhaustive()
    }
}

/// Nodes and inverse real FFT plan for length `l`.
fn plan<T: Real>(l: usize) -> Result<(Vec<T>, Arc<dyn ComplexToReal<T>>)> {
    // the nodes (L/2) and the inverse FFT's twiddles and buffers (about 2L complex)
    Estimate::new(format!("DPLR kernel plan for l_kernel = {l}"))
        .array::<T>(&[l / 2 + 1])
        .arrays::<Complex<T>>(2, &[l])
        .check()?;
    let n_cauchy = if l.is_multiple_of(2) { l / 2 } else { l / 2 + 1 };
    let nodes = (0..n_cauchy).map(|k| T::of(2.0 * (std::f64::consts::PI * k as f64 / l as f64).tan())).collect();
    Ok((nodes, RealFftPlanner::<T>::new().plan_fft_inverse(l)))
}

impl<T: Real> DplrKernel<T> {
    /// Sets up the kernel of length `l_kernel` from continuous parameters (C, not C̃): computes
    /// C̃ = C (I − Ā^L) in f64, then stores everything as `T`.
    ///
    /// # Errors
    /// Invalid parameters, a diagonal (no P) parameter set, `l_kernel == 0`, Δ·max|λ| > 10⁸
    /// ([`MAX_DT_LAMBDA`]), or a length over the memory budget.
    ///
    /// # Example
    /// ```
    /// use s4::kernel::{ssm_kernel_naive, DplrKernel};
    /// use s4::discretize::Discretization;
    /// use s4::ssm::SsmInitConfig;
    /// let params = SsmInitConfig { d_state: 8, channels: 2, ..Default::default() }.draw()?;
    /// let k = DplrKernel::<f64>::new(&params, 100)?.kernel(100)?;
    /// let reference = ssm_kernel_naive(&params, 100, Discretization::Bilinear)?;
    /// let err = (&k - &reference).iter().fold(0.0f64, |m, x| m.max(x.abs()));
    /// assert!(err < 1e-10);
    /// # Ok::<(), s4::Error>(())
    /// ```
    pub fn new(params: &SsmParams<f64>, l_kernel: usize) -> Result<Self> {
        if params.kind() != KernelKind::Dplr {
            return Err(Error::invalid("P", "absent", "a low-rank factor P (R, H, N/2) for the DPLR kernel"));
        }
        check_dt_range(params)?;
        let ct = c_tilde(params, l_kernel)?;
        let mut p = params.clone();
        p.c = ct;
        let (nodes, ifft) = plan(l_kernel)?;
        Ok(DplrKernel { params: p.cast(), l_kernel, nodes, ifft })
    }

    /// Wraps parameters whose `c` already holds C̃ for length `l_kernel` (a trained or imported
    /// layer, e.g. the official `kernel.C` with `l_kernel`).
    ///
    /// # Errors
    /// Invalid parameters, no P, `l_kernel == 0`, Δ·max|λ| > 10⁸ ([`MAX_DT_LAMBDA`]), or a length
    /// over the memory budget.
    pub fn from_c_tilde(params: SsmParams<T>, l_kernel: usize) -> Result<Self> {
        params.validate()?;
        check_len("l_kernel", l_kernel)?;
        if params.kind() != KernelKind::Dplr {
            return Err(Error::invalid("P", "absent", "a low-rank factor P (R, H, N/2) for the DPLR kernel"));
        }
        check_dt_range(&params)?;
        let (nodes, ifft) = plan(l_kernel)?;
        Ok(DplrKernel { params, l_kernel, nodes, ifft })
    }

    /// The length C̃ is tied to.
    pub fn l_kernel(&self) -> usize {
        self.l_kernel
    }

    /// The parameters, with `c` holding C̃.
    pub fn params(&self) -> &SsmParams<T> {
        &self.params
    }

    /// Doubles `l_kernel`: C̃_{2L} = C̃_L (I + Ā^L) (computed in f64).
    ///
    /// # Errors
    /// A singular bilinear system (cannot happen for valid parameters).
    pub fn double_length(&mut self) -> Result<()> {
        let doubled = self
            .l_kernel
            .checked_mul(2)
            .ok_or_else(|| Error::invalid("l_kernel", self.l_kernel, "a length whose double fits in usize"))?;
        let (nodes, ifft) = plan(doubled)?;
        let p64 = self.params.cast::<f64>();
        let ct = apply_power_correction(&p64, p64.c.clone(), self.l_kernel, 1.0)?;
        self.params.c = ct.mapv(crate::scalar::cplx);
        self.l_kernel = doubled;
        (self.nodes, self.ifft) = (nodes, ifft);
        Ok(())
    }

    /// The kernel K (H, len) for `len ≤ l_kernel`: evaluated at the `l_kernel` roots of unity and
    /// truncated to the first `len` taps (as the official code does).
    ///
    /// # Errors
    /// `len == 0` or `len > l_kernel` (call [`double_length`](Self::double_length) first).
    pub fn kernel(&self, len: usize) -> Result<Array2<T>> {
        check_len("kernel length L", len)?;
        if len > self.l_kernel {
            return Err(Error::invalid(
                "kernel length L",
                len,
                format!("<= l_kernel = {} (double the length of C̃ first)", self.l_kernel),
            ));
        }
        let l = self.l_kernel;
        let h = self.params.channels();
        let m = self.params.half_state();
        let rank = self.params.rank();
        let sums = (1 + rank) * (1 + rank);
        let nb = l / 2 + 1;
        let has_nyquist = l.is_multiple_of(2);
        // z_k = 2i tan(pi k / L), exact on the imaginary axis
        let (y, ifft) = (&self.nodes, &self.ifft);
        let n_cauchy = y.len();
        let scale = T::of(1.0 / l as f64);
        let p = self.params.p.as_ref().expect("DPLR kernel has P");
        // K (H, len), and per thread a spectrum, a signal and the FFT's scratch (about 2L complex)
        Estimate::new(format!("DPLR kernel (H, L) = ({h}, {len})"))
            .array::<T>(&[h, len])
            .arrays::<Complex<T>>(2 * rayon::current_num_threads(), &[l])
            .check()?;
        let mut out = Array2::<T>::zeros((h, len));
        out.axis_iter_mut(Axis(0)).into_par_iter().enumerate().for_each_init(
            || {
                (
                    CauchyTile::<T>::new(sums, TILE),
                    ifft.make_input_vec(),
                    ifft.make_output_vec(),
                    ifft.make_scratch_vec(),
                    vec![Complex::new(T::zero(), T::zero()); sums * m],
                    vec![Complex::new(T::zero(), T::zero()); m],
                )
            },
            |(tile, spec, time, scratch, v, w), (ch, mut row)| {
                let dt = self.params.dt[ch];
                let lam = self.params.lambda.row(ch);
                let b = self.params.b.row(ch);
                let ct = self.params.c.row(ch);
                // left factors a ∈ {C̃, Q*_r = conj P_r}, right factors b ∈ {ΔB, ΔP_r}
                let left = |a: usize, j: usize| if a == 0 { ct[j] } else { p[[a - 1, ch, j]].conj() };
                let right = |bi: usize, j: usize| if bi == 0 { b[j] * dt } else { p[[bi - 1, ch, j]] * dt };
                for a in 0..=rank {
                    for bi in 0..=rank {
                        let s = a * (1 + rank) + bi;
                        for j in 0..m {
                            v[s * m + j] = left(a, j) * right(bi, j);
                        }
                    }
                }
                for j in 0..m {
                    w[j] = lam[j] * dt;
                }
                let mut start = 0;
                while start < n_cauchy {
                    let end = (start + TILE).min(n_cauchy);
                    tile.evaluate(v, w, &y[start..end]);
                    if rank == 1 {
                        let k = |s| tile.sum(s);
                        spectrum_rank1([k(0), k(1), k(2), k(3)], &y[start..end], &mut spec[start..end]);
                    } else {
                        for k in start..end {
                            let wood = woodbury(tile, k - start, rank);
                            let z_half = Complex::new(T::one(), y[k] * T::of(0.5));
                            spec[k] = z_half * wood;
                        }
                    }
                    start = end;
                }
                spec[0].im = T::zero();
                if has_nyquist {
                    let s: T = (0..m).map(|j| (ct[j] * b[j]).re).fold(T::zero(), |x, y| x + y);
                    spec[nb - 1] = Complex::new(dt * s, T::zero());
                }
                ifft.process_with_scratch(spec, time, scratch).expect("buffers come from the same plan");
                for (o, t) in row.iter_mut().zip(time.iter()) {
                    *o = *t * scale;
                }
            },
        );
        check_finite(&out, "S4 kernel")?;
        Ok(out)
    }
}

/// The spectrum at a tile's nodes for rank 1: (1 + z/2)·(k00 − k01·k10/(1 + k11)) with
/// z = i·y, from the four Cauchy sums as (real parts, imaginary parts) over the nodes — the
/// rank-1 case of [`woodbury`], written over the parts so that it runs in vector registers.
#[inline(always)]
fn spectrum_rank1_body<T: Real, const FMA: bool>(sums: [(&[T], &[T]); 4], y: &[T], out: &mut [Complex<T>]) {
    let madd = madd::<T, FMA>;
    let [(r00, i00), (r01, i01), (r10, i10), (r11, i11)] = sums;
    let half = T::of(0.5);
    for k in 0..out.len().min(y.len()).min(r00.len()) {
        let (a1, b1, a2, b2) = (r01[k], i01[k], r10[k], i10[k]);
        // k01·k10, over 1 + k11
        let (nr, ni) = (madd(a1, a2, -b1 * b2), madd(a1, b2, b1 * a2));
        let (dr, di) = (r11[k] + T::one(), i11[k]);
        let inv = T::one() / madd(dr, dr, di * di);
        let (qr, qi) = (madd(nr, dr, ni * di) * inv, madd(ni, dr, -nr * di) * inv);
        let (wr, wi) = (r00[k] - qr, i00[k] - qi);
        let yh = y[k] * half;
        out[k] = Complex::new(madd(-wi, yh, wr), madd(wr, yh, wi));
    }
}

simd_dispatch! {
    /// [`spectrum_rank1_body`] with the widest vectors the CPU has.
    fn spectrum_rank1(sums: [(&[T], &[T]); 4], y: &[T], out: &mut [Complex<T>]) -> () = spectrum_rank1_body
}

/// k00 − k01 (I + k11)⁻¹ k10 at node `k` of the tile, for rank R (sums laid out (1+R) × (1+R)):
/// closed form at R = 2, a small solve otherwise (rank 1 goes through [`spectrum_rank1`], which
/// the tests check against this).
fn woodbury<T: Real>(tile: &CauchyTile<T>, k: usize, rank: usize) -> Complex<T> {
    let r1 = 1 + rank;
    let k00 = tile.get(0, k);
    match rank {
        2 => {
            let k01 = [tile.get(1, k), tile.get(2, k)];
            let k10 = [tile.get(r1, k), tile.get(2 * r1, k)];
            let m00 = tile.get(r1 + 1, k) + T::one();
            let m01 = tile.get(r1 + 2, k);
            let m10 = tile.get(2 * r1 + 1, k);
            let m11 = tile.get(2 * r1 + 2, k) + T::one();
            let det = m00 * m11 - m01 * m10;
            // x = M⁻¹ k10
            let x0 = (m11 * k10[0] - m01 * k10[1]) / det;
            let x1 = (m00 * k10[1] - m10 * k10[0]) / det;
            k00 - (k01[0] * x0 + k01[1] * x1)
        }
        _ => {
            let mut mat: Vec<Complex<T>> = Vec::with_capacity(rank * rank);
            for r in 0..rank {
                for rp in 0..rank {
                    let mut e = tile.get((1 + r) * r1 + 1 + rp, k);
                    if r == rp {
                        e += T::one();
                    }
                    mat.push(e);
                }
            }
            let mut x: Vec<Complex<T>> = (0..rank).map(|r| tile.get((1 + r) * r1, k)).collect();
            solve_small(&mut mat, &mut x, rank);
            let mut acc = k00;
            for (rp, xr) in x.iter().enumerate() {
                acc -= tile.get(1 + rp, k) * xr;
            }
            acc
        }
    }
}

/// Solves M x = rhs in place (Gaussian elimination with partial pivoting), M row-major R × R.
pub(crate) fn solve_small<T: Real>(mat: &mut [Complex<T>], rhs: &mut [Complex<T>], r: usize) {
    for col in 0..r {
        let piv = (col..r)
            .max_by(|&a, &b| mat[a * r + col].norm_sqr().total_cmp_real(&mat[b * r + col].norm_sqr()))
            .expect("non-empty");
        if piv != col {
            for c in 0..r {
                mat.swap(col * r + c, piv * r + c);
            }
            rhs.swap(col, piv);
        }
        let d = mat[col * r + col];
        for row in col + 1..r {
            let f = mat[row * r + col] / d;
            for c in col..r {
                let v = mat[col * r + c];
                mat[row * r + c] -= f * v;
            }
            let v = rhs[col];
            rhs[row] -= f * v;
        }
    }
    for row in (0..r).rev() {
        let mut acc = rhs[row];
        for c in row + 1..r {
            acc -= mat[row * r + c] * rhs[c];
        }
        rhs[row] = acc / mat[row * r + row];
    }
}

/// Total order on reals for pivot selection (NaN sorts low).
trait TotalCmpReal {
    fn total_cmp_real(&self, other: &Self) -> std::cmp::Ordering;
}

impl<T: Real> TotalCmpReal for T {
    fn total_cmp_real(&self, other: &Self) -> std::cmp::Ordering {
        self.partial_cmp(other).unwrap_or(std::cmp::Ordering::Less)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::nn::simd::{with_simd_level, SimdLevel};

    #[test]
    fn rank1_spectrum_matches_the_general_woodbury_at_every_level() {
        let m = 6;
        let w: Vec<Complex<f32>> = (0..m).map(|j| Complex::new(-0.05 - 0.01 * j as f32, 0.7 * j as f32)).collect();
        let v: Vec<Complex<f32>> =
            (0..4 * m).map(|i| Complex::new((i as f32 * 0.37).sin(), (i as f32 * 0.91).cos() * 0.5)).collect();
        let y: Vec<f32> = (0..37).map(|k| 2.0 * (std::f64::consts::PI * k as f64 / 80.0).tan() as f32).collect();
        let mut tile = CauchyTile::<f32>::new(4, 64);
        tile.evaluate(&v, &w, &y);
        for level in SimdLevel::available() {
            let mut fast = vec![Complex::new(0.0f32, 0.0); y.len()];
            with_simd_level(level, || {
                let k = |s| tile.sum(s);
                spectrum_rank1([k(0), k(1), k(2), k(3)], &y, &mut fast);
            });
            for (k, f) in fast.iter().enumerate() {
                let slow = Complex::new(1.0, y[k] * 0.5) * woodbury(&tile, k, 1);
                assert!((f - slow).norm() <= 1e-5 * (1.0 + slow.norm()), "{level} node {k}: {f} vs {slow}");
            }
        }
    }

    #[test]
    fn small_solver_matches_2x2_closed_form() {
        let m =
            [Complex64::new(1.0, 2.0), Complex64::new(0.5, -1.0), Complex64::new(-3.0, 0.1), Complex64::new(2.0, 2.0)];
        let rhs = [Complex64::new(1.0, 0.0), Complex64::new(0.0, 1.0)];
        let mut a = m.to_vec();
        let mut x = rhs.to_vec();
        solve_small(&mut a, &mut x, 2);
        for r in 0..2 {
            let lhs = m[r * 2] * x[0] + m[r * 2 + 1] * x[1];
            assert!((lhs - rhs[r]).norm() < 1e-14);
        }
        // a 3x3 that needs pivoting
        let m3: Vec<Complex64> =
            [0.0, 1.0, 2.0, 1.0, 0.0, 3.0, 4.0, -3.0, 8.0].iter().map(|&x| Complex64::new(x, 0.0)).collect();
        let rhs3 = vec![Complex64::new(1.0, 0.0), Complex64::new(2.0, 0.0), Complex64::new(3.0, 1.0)];
        let mut a3 = m3.clone();
        let mut x3 = rhs3.clone();
        solve_small(&mut a3, &mut x3, 3);
        for r in 0..3 {
            let lhs: Complex64 = (0..3).map(|c| m3[r * 3 + c] * x3[c]).sum();
            assert!((lhs - rhs3[r]).norm() < 1e-13);
        }
    }

    #[test]
    fn c_tilde_round_trip_through_row_form() {
        let c = ndarray::array![Complex64::new(1.0, -2.0), Complex64::new(0.5, 3.0)];
        assert_eq!(row_to_c(&c_to_row(c.view())), c);
    }
}

//! Normal plus low rank (NPLR) and diagonal plus low rank (DPLR) forms of a HiPPO matrix.
//!
//! With P from [`rank_correction`](super::rank_correction()), A + P Pᵀ = c·I + S with S real
//! skew-symmetric. −i·S is Hermitian, so a Hermitian eigensolve gives a *unitary* V with
//! −i·S = V diag(w) V*, hence
//!
//! A = V (Λ − P̃ P̃*) V*,  Λ = c + i·w,  P̃ = V* P,  B̃ = V* B.
//!
//! This is the S4 paper's Theorem 1 (Gu, Goel, Ré, *Efficiently Modeling Long Sequences with
//! Structured State Spaces*, ICLR 2022) and the official `nplr` of state-spaces/s4, with two
//! deliberate differences: the scalar diagonal is subtracted before the eigensolve (so the matrix
//! handed to the solver is exactly Hermitian; state-spaces/s4#159), and each eigenvector's phase is
//! fixed so that B̃ is real and non-negative (the official result depends on the LAPACK build's phase
//! convention; every kernel is invariant to it).
//!
//! Eigenvalues of the real skew matrix come in conjugate pairs ±w; only the N/2 with w ≤ 0 are kept
//! ("conjugate-pair halving"): every sum over the full state becomes 2·Re of the sum over the kept
//! half. A single zero pair (FouT's constant term) is split into (r₁ + i r₂)/√2 with r₁, r₂ a real
//! orthonormal basis of its eigenspace, so that the kept column and its conjugate stay orthogonal.

use super::{rank_correction, transition, Measure};
use crate::budget::Estimate;
use crate::error::{check_even_state, Error, Result};
use nalgebra::DMatrix;
use ndarray::{Array1, Array2, ArrayView1, ArrayView2, Axis};
use num_complex::Complex64;

/// The DPLR form of a HiPPO system over the N/2 kept conjugate-pair representatives.
///
/// # Shapes
/// `lambda` (N/2,), `p` (R, N/2), `b` (N/2,), `v` (N, N/2). The full state is the kept half plus its
/// conjugates, and A = 2·Re(V diag(Λ) V*) − Σ_r P_r P_rᵀ (see [`Nplr::reconstruct_a`]).
#[derive(Clone, Debug)]
pub struct Nplr {
    /// Kept eigenvalues Λ, sorted by imaginary part ascending (all Im Λ ≤ 0).
    pub lambda: Array1<Complex64>,
    /// P̃ = V* P, one row per rank component.
    pub p: Array2<Complex64>,
    /// B̃ = V* B.
    pub b: Array1<Complex64>,
    /// The kept unitary eigenvector columns V.
    pub v: Array2<Complex64>,
    /// The real low-rank factor P (R, N) in the original basis.
    pub p_real: Array2<f64>,
}

/// The DPLR form of the HiPPO matrix of `measure` at state size `n` (even).
///
/// # Errors
/// `n` zero or odd (conjugate-pair halving needs an even N), or an eigensolver failure.
///
/// # Example
/// ```
/// use s4::hippo::{nplr, Measure};
/// let d = nplr(Measure::LegS, 4)?;
/// // Kept eigenvalues of LegS at N = 4 (phase-invariant): -0.5 - 4.6033i and -0.5 - 0.5565i
/// assert!((d.lambda[0].re + 0.5).abs() < 1e-12);
/// assert!((d.lambda[0].im + 4.6033).abs() < 1e-4);
/// assert!((d.lambda[1].im + 0.5565).abs() < 1e-4);
/// # Ok::<(), s4::Error>(())
/// ```
pub fn nplr(measure: Measure, n: usize) -> Result<Nplr> {
    check_even_state(n)?;
    let (a, b) = transition(measure, n)?;
    let p = rank_correction(measure, n)?;
    nplr_from(a.view(), b.view(), p.view())
}

/// The DPLR form of any real (A, B) with a correction P (R, N) such that
/// A + Σ_r P_r P_rᵀ = c·I + skew-symmetric.
///
/// # Errors
/// Mismatched shapes, odd N, A + Σ P_r P_rᵀ not of the form c·I + skew (tolerance 1e-8 relative),
/// more than one zero-eigenvalue pair, or an eigensolver failure.
pub fn nplr_from(a: ArrayView2<f64>, b: ArrayView1<f64>, p: ArrayView2<f64>) -> Result<Nplr> {
    let n = a.nrows();
    if a.ncols() != n || n == 0 {
        return Err(Error::shape("A", "a non-empty square matrix (N, N)", a.shape()));
    }
    check_even_state(n)?;
    if b.len() != n {
        return Err(Error::shape("B", format!("(N,) = ({n},)"), b.shape()));
    }
    if p.ncols() != n || p.nrows() == 0 {
        return Err(Error::shape("P", format!("(R, N) = (R, {n}) with R >= 1"), p.shape()));
    }
    // the Hermitian eigensolve holds a few complex (N, N) matrices (input, eigenvectors, V, work)
    Estimate::new(format!("DPLR form for N = {n}")).arrays::<Complex64>(6, &[n, n]).check()?;
    if a.iter().chain(b.iter()).chain(p.iter()).any(|x| !x.is_finite()) {
        return Err(Error::invalid("A, B, P", "non-finite entries", "finite values"));
    }
    let ap = &a + &p.t().dot(&p);
    let c = ap.diag().mean().expect("n > 0");
    let scale = ap.iter().fold(1.0f64, |m, x| m.max(x.abs()));
    let mut normal_err = 0.0f64;
    for i in 0..n {
        normal_err = normal_err.max((ap[[i, i]] - c).abs());
        for k in 0..i {
            normal_err = normal_err.max((ap[[i, k]] + ap[[k, i]]).abs());
        }
    }
    if normal_err > 1e-8 * scale {
        return Err(Error::numerical(
            "NPLR",
            format!("A + P Pᵀ is not a scalar plus a skew-symmetric matrix (deviation {normal_err:.3e})"),
        ));
    }
    // Hermitian matrix -i S with S = AP - c I, exactly Hermitian by construction.
    let herm = DMatrix::<Complex64>::from_fn(n, n, |i, k| {
        if i == k {
            Complex64::new(0.0, 0.0)
        } else {
            let s = 0.5 * (ap[[i, k]] - ap[[k, i]]);
            Complex64::new(0.0, -s)
        }
    });
    let eig = nalgebra::linalg::SymmetricEigen::try_new(herm, 1e-15, 10_000)
        .ok_or_else(|| Error::numerical("hermitian eigensolve", "did not converge"))?;
    let mut order: Vec<usize> = (0..n).collect();
    order.sort_by(|&x, &y| eig.eigenvalues[x].total_cmp(&eig.eigenvalues[y]));
    let half = n / 2;
    let wmax = eig.eigenvalues.iter().fold(1.0f64, |m, w| m.max(w.abs()));
    let tol = 1e-9 * wmax;
    let zeros: Vec<usize> = order.iter().copied().filter(|&i| eig.eigenvalues[i].abs() <= tol).collect();
    if zeros.len() > 2 {
        return Err(Error::numerical(
            "NPLR",
            format!("{} zero eigenvalues; at most one conjugate pair (2) is supported", zeros.len()),
        ));
    }
    let mut v = Array2::<Complex64>::zeros((n, half));
    let mut lambda = Array1::<Complex64>::zeros(half);
    for (j, &idx) in order.iter().take(half).enumerate() {
        lambda[j] = Complex64::new(c, eig.eigenvalues[idx]);
        for i in 0..n {
            v[[i, j]] = eig.eigenvectors[(i, idx)];
        }
    }
    if zeros.len() == 2 {
        // The kept zero eigenvector must not be real (its conjugate would be itself): replace it by
        // (r1 + i r2)/sqrt 2 with r1, r2 a real orthonormal basis of the zero eigenspace.
        let j = order.iter().position(|&i| i == zeros[0]).expect("zero eigenvalue is in the order");
        if j >= half {
            return Err(Error::numerical("NPLR", "zero eigenvalue pair is not at the boundary of the kept half"));
        }
        lambda[j] = Complex64::new(c, 0.0);
        let col = real_pair_vector(&eig.eigenvectors, zeros[0], zeros[1]);
        for i in 0..n {
            v[[i, j]] = col[i];
        }
    }
    // Fix each column's phase so that B̃_j is real and >= 0 (or P̃_0j when B̃_j vanishes).
    let bc = b.mapv(|x| Complex64::new(x, 0.0));
    let p0 = p.row(0).mapv(|x| Complex64::new(x, 0.0));
    for j in 0..half {
        let col = v.column(j);
        let bt: Complex64 = col.iter().zip(bc.iter()).map(|(vi, bi)| vi.conj() * bi).sum();
        let reference = if bt.norm() > 1e-12 * (1.0 + b.iter().fold(0.0f64, |m, x| m.max(x.abs()))) {
            bt
        } else {
            col.iter().zip(p0.iter()).map(|(vi, pi)| vi.conj() * pi).sum()
        };
        if reference.norm() > 0.0 {
            let phase = reference / reference.norm();
            // v -> v * phase makes v* x -> conj(phase) (v* x) = |v* x|
            v.column_mut(j).mapv_inplace(|z| z * phase);
        }
    }
    let vh = v.t().mapv(|z| z.conj()); // (N/2, N)
    let b_t = vh.dot(&bc);
    let p_c = p.mapv(|x| Complex64::new(x, 0.0));
    let p_t = p_c.dot(&vh.t()); // (R, N) x (N, N/2)
    Ok(Nplr { lambda, p: p_t, b: b_t, v, p_real: p.to_owned() })
}

/// (r1 + i r2)/√2 for a real orthonormal basis r1, r2 of span{u_a, u_b} (a conjugation-closed plane).
fn real_pair_vector(vecs: &DMatrix<Complex64>, a: usize, b: usize) -> Vec<Complex64> {
    let n = vecs.nrows();
    let cands: Vec<Vec<f64>> = vec![
        (0..n).map(|i| vecs[(i, a)].re).collect(),
        (0..n).map(|i| vecs[(i, a)].im).collect(),
        (0..n).map(|i| vecs[(i, b)].re).collect(),
        (0..n).map(|i| vecs[(i, b)].im).collect(),
    ];
    let mut basis: Vec<Vec<f64>> = Vec::new();
    for _ in 0..2 {
        // Gram-Schmidt: pick the candidate with the largest component orthogonal to the basis
        let mut best: Option<Vec<f64>> = None;
        let mut best_norm = 0.0;
        for c in &cands {
            let mut r = c.clone();
            for q in &basis {
                let d: f64 = r.iter().zip(q).map(|(x, y)| x * y).sum();
                r.iter_mut().zip(q).for_each(|(x, y)| *x -= d * y);
            }
            let nr = r.iter().map(|x| x * x).sum::<f64>().sqrt();
            if nr > best_norm {
                best_norm = nr;
                best = Some(r.into_iter().map(|x| x / nr).collect());
            }
        }
        basis.push(best.expect("eigenvectors are non-zero"));
    }
    let s = std::f64::consts::FRAC_1_SQRT_2;
    (0..n).map(|i| Complex64::new(basis[0][i] * s, basis[1][i] * s)).collect()
}

impl Nplr {
    /// State size N.
    pub fn n(&self) -> usize {
        self.v.nrows()
    }

    /// Reconstructs A = 2·Re(V diag(Λ) V*) − Σ_r P_r P_rᵀ, shape (N, N).
    pub fn reconstruct_a(&self) -> Array2<f64> {
        let vl = &self.v * &self.lambda.view().insert_axis(Axis(0));
        let vh = self.v.t().mapv(|z| z.conj());
        let normal = vl.dot(&vh).mapv(|z| 2.0 * z.re);
        normal - self.p_real.t().dot(&self.p_real)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rel_err(a: &Array2<f64>, b: &Array2<f64>) -> f64 {
        let d = (a - b).iter().fold(0.0f64, |m, x| m.max(x.abs()));
        d / b.iter().fold(0.0f64, |m, x| m.max(x.abs()))
    }

    #[test]
    fn reconstructs_a_to_1e_10() {
        let cases = [
            (Measure::LegS, 4),
            (Measure::LegS, 64),
            (Measure::LegS, 256),
            (Measure::LegT, 64),
            (Measure::LagT, 64),
            (Measure::FouT, 64),
        ];
        for (m, n) in cases {
            let d = nplr(m, n).unwrap();
            let (a, _) = transition(m, n).unwrap();
            let e = rel_err(&d.reconstruct_a(), &a);
            assert!(e <= 1e-10, "{m} N={n}: relative reconstruction error {e:e}");
        }
    }

    #[test]
    fn full_eigenvector_matrix_is_unitary_and_tilde_vectors_match() {
        for (m, n) in [(Measure::LegS, 16), (Measure::LegT, 16), (Measure::FouT, 16), (Measure::LagT, 10)] {
            let d = nplr(m, n).unwrap();
            let mut full = Array2::<Complex64>::zeros((n, n));
            full.slice_mut(ndarray::s![.., ..n / 2]).assign(&d.v);
            full.slice_mut(ndarray::s![.., n / 2..]).assign(&d.v.mapv(|z| z.conj()));
            let g = full.t().mapv(|z| z.conj()).dot(&full);
            for i in 0..n {
                for k in 0..n {
                    let e = if i == k { 1.0 } else { 0.0 };
                    assert!((g[[i, k]] - e).norm() < 1e-12, "{m}: V not unitary at {i},{k}");
                }
            }
            // the DPLR form on the full state: A = V_full (Λ_full - P̃_full P̃_full*) V_full*
            let (a, _) = transition(m, n).unwrap();
            let (_, b) = transition(m, n).unwrap();
            let b_t = d.v.t().mapv(|z| z.conj()).dot(&b.mapv(|x| Complex64::new(x, 0.0)));
            assert!((&b_t - &d.b).iter().all(|z| z.norm() < 1e-12));
            let mut lam_full = Array1::<Complex64>::zeros(n);
            let mut p_full = Array2::<Complex64>::zeros((m.rank(), n));
            for j in 0..n / 2 {
                lam_full[j] = d.lambda[j];
                lam_full[j + n / 2] = d.lambda[j].conj();
                for r in 0..m.rank() {
                    p_full[[r, j]] = d.p[[r, j]];
                    p_full[[r, j + n / 2]] = d.p[[r, j]].conj();
                }
            }
            let mut inner = Array2::from_diag(&lam_full);
            inner = inner - p_full.t().dot(&p_full.mapv(|z| z.conj()));
            let rec = full.dot(&inner).dot(&full.t().mapv(|z| z.conj()));
            let err = rec.iter().zip(a.iter()).fold(0.0f64, |mx, (x, y)| mx.max((x - y).norm()));
            assert!(err < 1e-10 * a.iter().fold(1.0f64, |mx, x| mx.max(x.abs())), "{m}: DPLR form error {err}");
        }
    }

    #[test]
    fn legs_spectrum_and_invariants_match_the_note() {
        let d = nplr(Measure::LegS, 8).unwrap();
        let expected = [-19.8574, -5.3542, -1.9578, -0.4275];
        for (j, e) in expected.iter().enumerate() {
            assert!((d.lambda[j].re + 0.5).abs() < 1e-12);
            assert!((d.lambda[j].im - e).abs() < 1e-4, "Im Λ[{j}] = {}", d.lambda[j].im);
        }
        let d4 = nplr(Measure::LegS, 4).unwrap();
        let mut mags: Vec<f64> = d4.b.iter().map(|z| z.norm()).collect();
        mags.sort_by(|a, b| b.total_cmp(a));
        assert!((mags[0] - 2.658).abs() < 1e-3 && (mags[1] - 0.967).abs() < 1e-3, "{mags:?}");
        // P̃ = B̃ / sqrt 2 for LegS, and our phase convention makes B̃ real and non-negative
        for n in [8, 64] {
            let d = nplr(Measure::LegS, n).unwrap();
            for j in 0..n / 2 {
                assert!((d.p[[0, j]] * 2f64.sqrt() - d.b[j]).norm() < 1e-10);
                assert!(d.b[j].im.abs() < 1e-12 && d.b[j].re >= 0.0);
            }
        }
        let d64 = nplr(Measure::LegS, 64).unwrap();
        let max_im = d64.lambda.iter().fold(0.0f64, |m, z| m.max(-z.im));
        let min_im = d64.lambda.iter().fold(f64::INFINITY, |m, z| m.min(-z.im));
        assert!((max_im - 1303.27).abs() < 0.01 && (min_im - 0.264).abs() < 1e-3, "{max_im} {min_im}");
        let max_b = d64.b.iter().fold(0.0f64, |m, z| m.max(z.norm()));
        assert!((max_b - 40.75).abs() < 0.01, "{max_b}");
        assert!(d64.lambda.windows(2).into_iter().all(|w| w[0].im <= w[1].im), "sorted ascending");
    }

    #[test]
    fn fout_zero_pair_is_split_into_a_complex_vector() {
        let d = nplr(Measure::FouT, 8).unwrap();
        let j = d.lambda.iter().position(|z| z.im.abs() < 1e-9).expect("one zero eigenvalue kept");
        let col = d.v.column(j);
        // support on e0, e1 only, with equal magnitudes 1/sqrt2
        for i in 2..8 {
            assert!(col[i].norm() < 1e-12);
        }
        assert!((col[0].norm() - std::f64::consts::FRAC_1_SQRT_2).abs() < 1e-12);
        assert!((col[1].norm() - std::f64::consts::FRAC_1_SQRT_2).abs() < 1e-12);
        let self_conj: Complex64 = col.iter().map(|z| z.conj() * z.conj()).sum();
        assert!(self_conj.norm() < 1e-12, "kept column orthogonal to its conjugate");
    }

    #[test]
    fn rejects_bad_input() {
        assert!(nplr(Measure::LegS, 0).is_err());
        let e = nplr(Measure::LegS, 7).unwrap_err().to_string();
        assert!(e.contains("N = 7") && e.contains("even"), "{e}");
        // -I/2 + a skew matrix with two distinct rotation frequencies: fine
        let mut a = Array2::<f64>::eye(4) * -0.5;
        a[[0, 1]] = 1.0;
        a[[1, 0]] = -1.0;
        a[[2, 3]] = 2.0;
        a[[3, 2]] = -2.0;
        let b = Array1::<f64>::ones(4);
        let p = Array2::<f64>::zeros((1, 4));
        let d = nplr_from(a.view(), b.view(), p.view()).unwrap();
        assert!((d.lambda[0] - Complex64::new(-0.5, -2.0)).norm() < 1e-12);
        // all-zero skew part: two zero pairs are not supported
        assert!(nplr_from(Array2::<f64>::eye(4).view(), b.view(), p.view()).is_err());
        // a non-normal matrix is rejected
        let mut bad = Array2::<f64>::eye(4);
        bad[[1, 0]] = 3.0;
        let e = nplr_from(bad.view(), b.view(), p.view()).unwrap_err().to_string();
        assert!(e.contains("skew"), "{e}");
        assert!(nplr_from(a.view(), Array1::<f64>::ones(3).view(), p.view()).is_err());
    }
}

//! Discretization: from the continuous system x' = A x + B u to the recurrence
//! x_k = Ā x_{k−1} + B̄ u_k with step size Δ.
//!
//! | method | Ā | B̄ |
//! |---|---|---|
//! | forward Euler (GBT α = 0) | I + ΔA | ΔB |
//! | backward Euler (GBT α = 1) | (I − ΔA)⁻¹ | (I − ΔA)⁻¹ ΔB |
//! | bilinear / Tustin (GBT α = ½) | (I − ΔA/2)⁻¹ (I + ΔA/2) | (I − ΔA/2)⁻¹ ΔB |
//! | generalized bilinear GBT(α) | (I − αΔA)⁻¹ (I + (1−α)ΔA) | (I − αΔA)⁻¹ ΔB |
//! | zero-order hold | exp(ΔA) | A⁻¹ (exp(ΔA) − I) B = ∫₀^Δ e^{sA} ds B |
//!
//! Sources: Zhang, Yang, *Generalized bilinear transform* (as used by the LSSL, Gu et al. 2021,
//! `src/models/hippo/transition.py` of state-spaces/s4) and the S4/S4D papers. The dense ZOH is
//! computed from one exponential of the augmented matrix [[A, B], [0, 0]]·Δ, which stays exact when
//! A is singular; the diagonal ZOH uses expm1(Δλ)/λ, whose λ → 0 limit is Δ.

use crate::error::{check_dt, Error, Result};
use nalgebra::DMatrix;
use ndarray::{Array1, Array2, ArrayView1, ArrayView2};
use num_complex::Complex64;
use std::fmt;
use std::str::FromStr;

/// A discretization rule.
#[derive(Clone, Copy, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Discretization {
    /// Forward Euler: Ā = I + ΔA, B̄ = ΔB.
    ForwardEuler,
    /// Backward Euler: Ā = (I − ΔA)⁻¹, B̄ = (I − ΔA)⁻¹ ΔB.
    BackwardEuler,
    /// Bilinear (Tustin): GBT with α = ½. The S4 (DPLR) default.
    Bilinear,
    /// Generalized bilinear transform with parameter α ∈ [0, 1].
    Gbt(f64),
    /// Zero-order hold: Ā = exp(ΔA). The S4D default.
    Zoh,
}

impl Discretization {
    /// The α of the equivalent GBT, or `None` for zero-order hold.
    pub fn alpha(self) -> Option<f64> {
        match self {
            Discretization::ForwardEuler => Some(0.0),
            Discretization::BackwardEuler => Some(1.0),
            Discretization::Bilinear => Some(0.5),
            Discretization::Gbt(a) => Some(a),
            Discretization::Zoh => None,
        }
    }

    /// Checks that a GBT α is finite and in [0, 1].
    pub fn validate(self) -> Result<Self> {
        if let Discretization::Gbt(a) = self
            && !(a.is_finite() && (0.0..=1.0).contains(&a))
        {
            return Err(Error::invalid("GBT alpha", a, "a number in [0, 1]"));
        }
        Ok(self)
    }
}

impl fmt::Display for Discretization {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Discretization::ForwardEuler => f.write_str("forward-euler"),
            Discretization::BackwardEuler => f.write_str("backward-euler"),
            Discretization::Bilinear => f.write_str("bilinear"),
            Discretization::Gbt(a) => write!(f, "gbt:{a}"),
            Discretization::Zoh => f.write_str("zoh"),
        }
    }
}

impl FromStr for Discretization {
    type Err = Error;
    /// Parses `zoh`, `bilinear`, `forward-euler`, `backward-euler` or `gbt:ALPHA`.
    fn from_str(s: &str) -> Result<Self> {
        let bad =
            || Error::invalid("discretization", s, "one of zoh, bilinear, forward-euler, backward-euler, gbt:ALPHA");
        match s {
            "zoh" => Ok(Discretization::Zoh),
            "bilinear" => Ok(Discretization::Bilinear),
            "forward-euler" | "euler" => Ok(Discretization::ForwardEuler),
            "backward-euler" => Ok(Discretization::BackwardEuler),
            _ => {
                let a = s.strip_prefix("gbt:").ok_or_else(bad)?.parse::<f64>().map_err(|_| bad())?;
                Discretization::Gbt(a).validate()
            }
        }
    }
}

fn to_na(a: ArrayView2<f64>) -> DMatrix<f64> {
    DMatrix::from_fn(a.nrows(), a.ncols(), |i, k| a[[i, k]])
}

fn from_na(m: &DMatrix<f64>) -> Array2<f64> {
    Array2::from_shape_fn((m.nrows(), m.ncols()), |(i, k)| m[(i, k)])
}

/// Discretizes a dense system (A (N, N), B (N,)) with step `dt`.
///
/// # Errors
/// Non-square A, B of the wrong length, non-finite entries, `dt` not finite and positive, α outside
/// [0, 1], a singular
/// I − αΔA, or non-finite results.
///
/// # Example
/// ```
/// use ndarray::array;
/// use s4::discretize::{discretize_dense, Discretization};
/// let a = array![[-1.0]];
/// let b = array![1.0];
/// let (ab, bb) = discretize_dense(a.view(), b.view(), 0.1, Discretization::Zoh)?;
/// assert!((ab[[0, 0]] - (-0.1f64).exp()).abs() < 1e-14);
/// assert!((bb[0] - (1.0 - (-0.1f64).exp())).abs() < 1e-14);
/// # Ok::<(), s4::Error>(())
/// ```
pub fn discretize_dense(
    a: ArrayView2<f64>,
    b: ArrayView1<f64>,
    dt: f64,
    method: Discretization,
) -> Result<(Array2<f64>, Array1<f64>)> {
    let n = a.nrows();
    if a.ncols() != n || n == 0 {
        return Err(Error::shape("A", "a non-empty square matrix (N, N)", a.shape()));
    }
    if b.len() != n {
        return Err(Error::shape("B", format!("(N,) = ({n},)"), b.shape()));
    }
    check_dt("dt", dt)?;
    if a.iter().chain(b.iter()).any(|x| !x.is_finite()) {
        return Err(Error::invalid("A, B", "non-finite entries", "finite values"));
    }
    let method = method.validate()?;
    let (ab, bb) = match method.alpha() {
        Some(alpha) => {
            let am = to_na(a);
            let eye = DMatrix::<f64>::identity(n, n);
            let lhs = &eye - &am * (alpha * dt);
            let rhs = &eye + &am * ((1.0 - alpha) * dt);
            let lu = lhs.lu();
            let ab = lu
                .solve(&rhs)
                .ok_or_else(|| Error::numerical("discretize", format!("I - {alpha}·dt·A is singular (dt = {dt})")))?;
            let bv = nalgebra::DVector::from_fn(n, |i, _| b[i] * dt);
            let bb = lu.solve(&bv).expect("same LU as above");
            (from_na(&ab), Array1::from_shape_fn(n, |i| bb[i]))
        }
        None => {
            // exp([[A, B], [0, 0]] dt) = [[exp(A dt), ∫ exp(sA) ds B], [0, 1]]
            let mut aug = DMatrix::<f64>::zeros(n + 1, n + 1);
            for i in 0..n {
                for k in 0..n {
                    aug[(i, k)] = a[[i, k]] * dt;
                }
                aug[(i, n)] = b[i] * dt;
            }
            let e = aug.exp();
            let ab = Array2::from_shape_fn((n, n), |(i, k)| e[(i, k)]);
            let bb = Array1::from_shape_fn(n, |i| e[(i, n)]);
            (ab, bb)
        }
    };
    if ab.iter().chain(bb.iter()).any(|x| !x.is_finite()) {
        return Err(Error::numerical("discretize", format!("non-finite Ā or B̄ with {method} at dt = {dt}")));
    }
    Ok((ab, bb))
}

/// (e^z − 1)/z, accurate for small |z| and equal to 1 at z = 0.
pub fn expm1_over_z(z: Complex64) -> Complex64 {
    if z.norm() < 1e-4 {
        // Taylor series 1 + z/2 + z²/6 + z³/24 (error O(z⁴) < 1e-17)
        Complex64::new(1.0, 0.0) + z * (0.5 + z * (1.0 / 6.0 + z / 24.0))
    } else {
        (z.exp() - 1.0) / z
    }
}

/// Discretizes one diagonal mode: returns (ā, b̄/b), the discrete eigenvalue and the factor that
/// multiplies B (so B̄ = factor · B).
///
/// ZOH: ā = e^{Δλ}, factor = (e^{Δλ} − 1)/λ; GBT(α): ā = (1 + (1−α)Δλ)/(1 − αΔλ),
/// factor = Δ/(1 − αΔλ).
///
/// This is the unchecked scalar rule used by the kernels; [`discretize_diag`] validates its inputs.
pub fn discretize_mode(lambda: Complex64, dt: f64, method: Discretization) -> (Complex64, Complex64) {
    match method.alpha() {
        Some(alpha) => {
            let den = 1.0 - lambda * (alpha * dt);
            ((1.0 + lambda * ((1.0 - alpha) * dt)) / den, dt / den)
        }
        None => {
            let z = lambda * dt;
            (z.exp(), expm1_over_z(z) * dt)
        }
    }
}

/// Discretizes a diagonal system (Λ (M,), B (M,)) with step `dt`: returns (Ā, B̄) elementwise.
///
/// # Errors
/// Mismatched lengths, `dt` not finite and positive, α outside [0, 1], or non-finite results
/// (e.g. 1 − αΔλ = 0).
///
/// # Example
/// ```
/// use ndarray::array;
/// use num_complex::Complex64 as C;
/// use s4::discretize::{discretize_diag, Discretization};
/// let lam = array![C::new(-0.5, -3.0)];
/// let b = array![C::new(1.0, 0.0)];
/// let (ab, bb) = discretize_diag(lam.view(), b.view(), 1e-2, Discretization::Bilinear)?;
/// let z = lam[0] * 1e-2;
/// assert!((ab[0] - (1.0 + z / 2.0) / (1.0 - z / 2.0)).norm() < 1e-15);
/// assert!((bb[0] - 1e-2 / (1.0 - z / 2.0)).norm() < 1e-15);
/// # Ok::<(), s4::Error>(())
/// ```
pub fn discretize_diag(
    lambda: ArrayView1<Complex64>,
    b: ArrayView1<Complex64>,
    dt: f64,
    method: Discretization,
) -> Result<(Array1<Complex64>, Array1<Complex64>)> {
    if b.len() != lambda.len() {
        return Err(Error::shape("B", format!("(M,) = ({},) like Λ", lambda.len()), b.shape()));
    }
    check_dt("dt", dt)?;
    if lambda.iter().chain(b.iter()).any(|z| !(z.re.is_finite() && z.im.is_finite())) {
        return Err(Error::invalid("Λ, B", "non-finite entries", "finite values"));
    }
    let method = method.validate()?;
    let mut ab = Array1::zeros(lambda.len());
    let mut bb = Array1::zeros(lambda.len());
    for i in 0..lambda.len() {
        let (a, f) = discretize_mode(lambda[i], dt, method);
        ab[i] = a;
        bb[i] = f * b[i];
    }
    if ab.iter().chain(bb.iter()).any(|z| !(z.re.is_finite() && z.im.is_finite())) {
        return Err(Error::numerical("discretize", format!("non-finite Ā or B̄ with {method} at dt = {dt}")));
    }
    Ok((ab, bb))
}

#[cfg(test)]
mod tests {
    use super::*;
    use ndarray::array;

    #[test]
    fn zoh_of_a_rotation_matches_the_closed_form() {
        // A = [[0, -w], [w, 0]]: exp(ΔA) is a rotation by wΔ, and ∫ e^{sA} ds e0 is known in closed form
        let w: f64 = 3.0;
        let dt = 0.2;
        let a = array![[0.0, -w], [w, 0.0]];
        let b = array![1.0, 0.0];
        let (ab, bb) = discretize_dense(a.view(), b.view(), dt, Discretization::Zoh).unwrap();
        let (c, s) = ((w * dt).cos(), (w * dt).sin());
        let expected = array![[c, -s], [s, c]];
        assert!((&ab - &expected).iter().all(|x| x.abs() < 1e-13));
        assert!((bb[0] - s / w).abs() < 1e-13);
        assert!((bb[1] - (1.0 - c) / w).abs() < 1e-13);
    }

    #[test]
    fn zoh_with_singular_a_integrates_b() {
        let a = array![[0.0, 1.0], [0.0, 0.0]]; // double integrator
        let b = array![0.0, 1.0];
        let (ab, bb) = discretize_dense(a.view(), b.view(), 0.5, Discretization::Zoh).unwrap();
        assert!((ab[[0, 1]] - 0.5).abs() < 1e-14);
        assert!((bb[0] - 0.125).abs() < 1e-14 && (bb[1] - 0.5).abs() < 1e-14);
    }

    #[test]
    fn gbt_family_matches_closed_forms_in_1d() {
        let (l, dt) = (-2.0, 0.1);
        let a = array![[l]];
        let b = array![3.0];
        let cases = [
            (Discretization::ForwardEuler, 1.0 + dt * l, dt * 3.0),
            (Discretization::BackwardEuler, 1.0 / (1.0 - dt * l), dt * 3.0 / (1.0 - dt * l)),
            (Discretization::Bilinear, (1.0 + dt * l / 2.0) / (1.0 - dt * l / 2.0), dt * 3.0 / (1.0 - dt * l / 2.0)),
            (
                Discretization::Gbt(0.25),
                (1.0 + 0.75 * dt * l) / (1.0 - 0.25 * dt * l),
                dt * 3.0 / (1.0 - 0.25 * dt * l),
            ),
        ];
        for (m, ea, eb) in cases {
            let (ab, bb) = discretize_dense(a.view(), b.view(), dt, m).unwrap();
            approx::assert_relative_eq!(ab[[0, 0]], ea, max_relative = 1e-14);
            approx::assert_relative_eq!(bb[0], eb, max_relative = 1e-14);
            let (da, db) =
                discretize_diag(array![Complex64::new(l, 0.0)].view(), array![Complex64::new(3.0, 0.0)].view(), dt, m)
                    .unwrap();
            assert!((da[0].re - ea).abs() < 1e-15 && (db[0].re - eb).abs() < 1e-15, "{m} diag");
        }
    }

    #[test]
    fn dense_and_diagonal_agree_on_a_diagonal_system() {
        // a complex diagonal mode λ = a + ib is the real 2x2 block [[a, -b], [b, a]]
        let lam = Complex64::new(-0.7, 5.0);
        let a = array![[lam.re, -lam.im], [lam.im, lam.re]];
        let b = array![1.0, 0.0];
        for m in [Discretization::Zoh, Discretization::Bilinear, Discretization::Gbt(0.8), Discretization::ForwardEuler]
        {
            let (ab, bb) = discretize_dense(a.view(), b.view(), 0.05, m).unwrap();
            let (da, fb) = discretize_mode(lam, 0.05, m);
            assert!((ab[[0, 0]] - da.re).abs() < 1e-13 && (ab[[1, 0]] - da.im).abs() < 1e-13, "{m}");
            assert!((bb[0] - fb.re).abs() < 1e-13 && (bb[1] - fb.im).abs() < 1e-13, "{m}");
        }
    }

    #[test]
    fn zoh_mode_limit_at_zero() {
        let (a, f) = discretize_mode(Complex64::new(0.0, 0.0), 0.3, Discretization::Zoh);
        assert_eq!(a, Complex64::new(1.0, 0.0));
        assert!((f - Complex64::new(0.3, 0.0)).norm() < 1e-16);
        let (_, f) = discretize_mode(Complex64::new(-1e-9, 2e-9), 0.3, Discretization::Zoh);
        assert!((f.re - 0.3).abs() < 1e-9);
    }

    #[test]
    fn bad_input_is_an_error() {
        let a = array![[-1.0]];
        let b = array![1.0];
        for dt in [0.0, -1.0, f64::NAN, f64::INFINITY] {
            let e = discretize_dense(a.view(), b.view(), dt, Discretization::Zoh).unwrap_err().to_string();
            assert!(e.contains("invalid dt"), "{e}");
        }
        let e = discretize_dense(a.view(), b.view(), 0.1, Discretization::Gbt(1.5)).unwrap_err().to_string();
        assert!(e.contains("alpha = 1.5"), "{e}");
        assert!(discretize_dense(a.view(), array![1.0, 2.0].view(), 0.1, Discretization::Zoh).is_err());
        assert!(discretize_dense(array![[1.0, 0.0]].view(), b.view(), 0.1, Discretization::Zoh).is_err());
        // 1 - dt a = 0: singular backward Euler
        let e = discretize_dense(array![[10.0]].view(), b.view(), 0.1, Discretization::BackwardEuler).unwrap_err();
        assert!(e.to_string().contains("singular"), "{e}");
        assert_eq!("gbt:0.3".parse::<Discretization>().unwrap(), Discretization::Gbt(0.3));
        assert!("gbt:2".parse::<Discretization>().is_err());
        assert!("tustin".parse::<Discretization>().is_err());
    }
}

//! HiPPO operators: the continuous-time state matrices (A, B) that give S4 its long memory.
//!
//! A HiPPO operator projects the history of an input u(t) onto an orthogonal basis; the projection
//! coefficients x(t) follow the linear ODE x'(t) = A x(t) + B u(t). Reference: Gu et al., *HiPPO:
//! Recurrent Memory with Optimal Polynomial Projections* (NeurIPS 2020) and the official
//! `src/models/hippo/hippo.py` of state-spaces/s4, whose conventions are followed exactly:
//! A is already negated (stable), LegT is halved (window of 2 time units) and FouT has its rank-one
//! endpoint correction subtracted.
//!
//! | measure | A (n, k = 0..N-1) | B | rank of P |
//! |---|---|---|---|
//! | LegS | −√((2n+1)(2k+1)) for n > k, −(n+1) for n = k, 0 above | √(2n+1) | 1 |
//! | LegT | −½√((2n+1)(2k+1)) · (1 if n ≥ k else (−1)^(n−k)) | ½√(2n+1) | 2 |
//! | LagT | −½ on the diagonal, −1 below, 0 above | 1 | 1 |
//! | FouT | rotation blocks ∓πk on (2k, 2k+1), minus B Bᵀ | B₀ = 1, B₂ₖ = √2 | 1 |
//!
//! Submodules: [`nplr`](mod@nplr) writes A as normal plus low rank and diagonalizes the normal part (the DPLR
//! form S4 uses), [`diag`] gives the S4D diagonal initializations, and [`memory`] reconstructs a
//! signal's past from the HiPPO state (the online function approximation demo).

pub mod diag;
pub mod memory;

pub mod nplr;

use crate::budget::Estimate;
use crate::error::{Error, Result};
use ndarray::{Array1, Array2};
use std::fmt;
use std::str::FromStr;

pub use nplr::{nplr, Nplr};

/// The HiPPO measures (the weighting of the past that the state remembers).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
#[cfg_attr(feature = "cli", derive(clap::ValueEnum))]
pub enum Measure {
    /// Scaled Legendre: the S4 default. As an LTI system it remembers with an exponentially warped
    /// Legendre basis (measure e^{-s}); as the original time-varying system it covers all history.
    #[cfg_attr(feature = "cli", value(name = "legs", alias = "hippo"))]
    LegS,
    /// Translated Legendre: a sliding window (2 time units with the halved matrices used here).
    #[cfg_attr(feature = "cli", value(name = "legt"))]
    LegT,
    /// Translated Laguerre: exponentially decaying memory.
    #[cfg_attr(feature = "cli", value(name = "lagt"))]
    LagT,
    /// Truncated Fourier on a sliding window of 2 time units. N must be even.
    #[cfg_attr(feature = "cli", value(name = "fout", alias = "fourier"))]
    FouT,
}

impl Measure {
    /// All measures, in a fixed order.
    pub const ALL: [Measure; 4] = [Measure::LegS, Measure::LegT, Measure::LagT, Measure::FouT];

    /// The name used on the command line and in files (`legs`, `legt`, `lagt`, `fout`).
    pub fn name(self) -> &'static str {
        match self {
            Measure::LegS => "legs",
            Measure::LegT => "legt",
            Measure::LagT => "lagt",
            Measure::FouT => "fout",
        }
    }

    /// The rank R of the correction P that makes A + P Pᵀ normal (2 for LegT, 1 otherwise).
    pub fn rank(self) -> usize {
        match self {
            Measure::LegT => 2,
            _ => 1,
        }
    }
}

impl fmt::Display for Measure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl FromStr for Measure {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self> {
        match s.to_ascii_lowercase().as_str() {
            "legs" | "hippo" => Ok(Measure::LegS),
            "legt" => Ok(Measure::LegT),
            "lagt" => Ok(Measure::LagT),
            "fout" | "fourier" => Ok(Measure::FouT),
            _ => Err(Error::invalid("measure", s, "one of legs, legt, lagt, fout")),
        }
    }
}

/// Checks the state size for `measure`: N ≥ 1, and N even for FouT.
fn check_n(measure: Measure, n: usize) -> Result<()> {
    if n == 0 {
        return Err(Error::invalid("d_state N", n, "an integer >= 1"));
    }
    if measure == Measure::FouT && n % 2 == 1 {
        return Err(Error::invalid("d_state N", n, "an even integer for the FouT measure (cosine/sine pairs)"));
    }
    // A (N, N) and a temporary of its size
    Estimate::new(format!("HiPPO matrices for N = {n}")).arrays::<f64>(2, &[n, n]).check()?;
    Ok(())
}

/// The continuous-time HiPPO system x' = A x + B u for `measure` with state size `n`.
///
/// Returns `(A, B)` with shapes (N, N) and (N,), in `f64`. The formulas are in the
/// [module documentation](self).
///
/// # Errors
/// `n == 0`, or `n` odd for [`Measure::FouT`].
///
/// # Example
/// ```
/// use s4::hippo::{transition, Measure};
/// let (a, b) = transition(Measure::LegS, 4)?;
/// assert_eq!(a[[0, 0]], -1.0);
/// assert!((a[[1, 0]] + 3f64.sqrt()).abs() < 1e-15);
/// assert!((b[3] - 7f64.sqrt()).abs() < 1e-15);
/// # Ok::<(), s4::Error>(())
/// ```
pub fn transition(measure: Measure, n: usize) -> Result<(Array2<f64>, Array1<f64>)> {
    check_n(measure, n)?;
    let q = |i: usize| (2.0 * i as f64 + 1.0).sqrt();
    Ok(match measure {
        Measure::LegS => {
            let a = Array2::from_shape_fn((n, n), |(i, k)| match i.cmp(&k) {
                std::cmp::Ordering::Greater => -q(i) * q(k),
                std::cmp::Ordering::Equal => -(i as f64 + 1.0),
                std::cmp::Ordering::Less => 0.0,
            });
            (a, Array1::from_shape_fn(n, q))
        }
        Measure::LegT => {
            let a = Array2::from_shape_fn((n, n), |(i, k)| {
                let sign = if i >= k || (k - i) % 2 == 0 { 1.0 } else { -1.0 };
                -0.5 * q(i) * q(k) * sign
            });
            (a, Array1::from_shape_fn(n, |i| 0.5 * q(i)))
        }
        Measure::LagT => {
            let a = Array2::from_shape_fn((n, n), |(i, k)| match i.cmp(&k) {
                std::cmp::Ordering::Greater => -1.0,
                std::cmp::Ordering::Equal => -0.5,
                std::cmp::Ordering::Less => 0.0,
            });
            (a, Array1::ones(n))
        }
        Measure::FouT => {
            let b = fout_b(n);
            let pi = std::f64::consts::PI;
            let a = Array2::from_shape_fn((n, n), |(i, k)| {
                let rot = if i % 2 == 0 && k == i + 1 {
                    -pi * (i / 2) as f64
                } else if i % 2 == 1 && k + 1 == i {
                    pi * (k / 2) as f64
                } else {
                    0.0
                };
                rot - b[i] * b[k]
            });
            (a, b)
        }
    })
}

/// FouT's B: 1 for the constant term, √2 for every cosine term, 0 for the sine terms.
fn fout_b(n: usize) -> Array1<f64> {
    Array1::from_shape_fn(n, |i| match i {
        0 => 1.0,
        _ if i % 2 == 0 => std::f64::consts::SQRT_2,
        _ => 0.0,
    })
}

/// The low-rank correction P (shape (R, N)) such that A + Σ_r P_r P_rᵀ is a real scalar times the
/// identity plus a skew-symmetric matrix (so normal, and unitarily diagonalizable).
///
/// LegS: P = √(n + ½); LegT: two rows √((2n+1)/2) on the odd and on the even indices; LagT: √½;
/// FouT: P = B.
///
/// # Errors
/// As [`transition`].
///
/// # Example
/// ```
/// use s4::hippo::{rank_correction, Measure};
/// let p = rank_correction(Measure::LegT, 6)?;
/// assert_eq!(p.dim(), (2, 6));
/// # Ok::<(), s4::Error>(())
/// ```
pub fn rank_correction(measure: Measure, n: usize) -> Result<Array2<f64>> {
    check_n(measure, n)?;
    Ok(match measure {
        Measure::LegS => Array2::from_shape_fn((1, n), |(_, i)| (i as f64 + 0.5).sqrt()),
        Measure::LegT => Array2::from_shape_fn((2, n), |(r, i)| {
            // row 0 lives on the odd indices, row 1 on the even ones
            if (r == 0) == (i % 2 == 1) {
                ((2.0 * i as f64 + 1.0) / 2.0).sqrt()
            } else {
                0.0
            }
        }),
        Measure::LagT => Array2::from_elem((1, n), 0.5f64.sqrt()),
        Measure::FouT => fout_b(n).insert_axis(ndarray::Axis(0)),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn legs_n4_matches_official_values() {
        let (a, b) = transition(Measure::LegS, 4).unwrap();
        let expected = [
            [-1.0, 0.0, 0.0, 0.0],
            [-1.7320508075688772, -2.0, 0.0, 0.0],
            [-2.23606797749979, -3.872983346207417, -3.0, 0.0],
            [-2.6457513110645907, -4.58257569495584, -5.916079783099616, -4.0],
        ];
        for i in 0..4 {
            for k in 0..4 {
                assert!((a[[i, k]] - expected[i][k]).abs() < 1e-12, "A[{i},{k}]");
            }
        }
        let eb = [1.0, 1.7320508075688772, 2.23606797749979, 2.6457513110645907];
        for i in 0..4 {
            assert!((b[i] - eb[i]).abs() < 1e-12);
        }
    }

    #[test]
    fn legs_eigenvalues_are_minus_one_to_minus_n() {
        // A is lower triangular, so its eigenvalues are its diagonal: -1, ..., -N.
        for n in [1, 4, 17, 64] {
            let (a, _) = transition(Measure::LegS, n).unwrap();
            for i in 0..n {
                assert_eq!(a[[i, i]], -(i as f64 + 1.0));
                for k in i + 1..n {
                    assert_eq!(a[[i, k]], 0.0);
                }
            }
        }
        // and independently through nalgebra's Schur form on a small case
        let (a, _) = transition(Measure::LegS, 6).unwrap();
        let m = nalgebra::DMatrix::from_fn(6, 6, |i, k| a[[i, k]]);
        let mut ev: Vec<f64> = m.complex_eigenvalues().iter().map(|z| z.re).collect();
        ev.sort_by(|x, y| y.partial_cmp(x).unwrap());
        for (i, e) in ev.iter().enumerate() {
            assert!((e + (i as f64 + 1.0)).abs() < 1e-8, "eigenvalue {e}");
        }
    }

    #[test]
    fn a_plus_ppt_is_scalar_plus_skew_for_every_measure() {
        for m in Measure::ALL {
            for n in [2, 4, 8, 33, 64] {
                if m == Measure::FouT && n % 2 == 1 {
                    continue;
                }
                let (a, _) = transition(m, n).unwrap();
                let p = rank_correction(m, n).unwrap();
                assert_eq!(p.nrows(), m.rank());
                let ap = &a + &p.t().dot(&p);
                let c = ap[[0, 0]];
                let expected_c = if m == Measure::LegS { -0.5 } else { 0.0 };
                assert!((c - expected_c).abs() < 1e-12, "{m} N={n}: scalar {c}");
                for i in 0..n {
                    assert!((ap[[i, i]] - c).abs() < 1e-12, "{m} N={n}: diagonal");
                    for k in 0..n {
                        if i != k {
                            assert!((ap[[i, k]] + ap[[k, i]]).abs() < 1e-12, "{m} N={n}: skew at {i},{k}");
                        }
                    }
                }
            }
        }
    }

    #[test]
    fn fout_matches_the_official_construction() {
        let (a, b) = transition(Measure::FouT, 6).unwrap();
        let pi = std::f64::consts::PI;
        assert_eq!(b.to_vec(), vec![1.0, 0.0, 2f64.sqrt(), 0.0, 2f64.sqrt(), 0.0]);
        // rotation entries A[2k, 2k+1] = -pi k, A[2k+1, 2k] = pi k, before subtracting B Bᵀ
        assert!((a[[2, 3]] - (-pi)).abs() < 1e-14);
        assert!((a[[3, 2]] - pi).abs() < 1e-14);
        assert!((a[[4, 5]] - (-2.0 * pi)).abs() < 1e-14);
        assert!((a[[0, 0]] + 1.0).abs() < 1e-14);
        assert!((a[[2, 4]] + 2.0).abs() < 1e-14);
    }

    #[test]
    fn bad_sizes_are_errors() {
        let e = transition(Measure::LegS, 0).unwrap_err().to_string();
        assert!(e.contains("d_state N = 0"), "{e}");
        let e = transition(Measure::FouT, 5).unwrap_err().to_string();
        assert!(e.contains("N = 5") && e.contains("even"), "{e}");
        assert!(rank_correction(Measure::FouT, 3).is_err());
        assert!("legx".parse::<Measure>().is_err());
        assert_eq!("LegT".parse::<Measure>().unwrap(), Measure::LegT);
    }
}

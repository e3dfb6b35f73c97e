//! Diagonal state matrices for S4D (Gu, Gupta, Goel, Ré, *On the Parameterization and
//! Initialization of Diagonal State Space Models*, NeurIPS 2022), as the official `dplr` initializer
//! of state-spaces/s4 builds them.
//!
//! For n = 0..N/2−1 (one member of each conjugate pair, negative imaginary part):
//!
//! | init | Λ_n |
//! |---|---|
//! | `diag-lin` (S4D-Lin) | −½ − iπn |
//! | `diag-inv` (S4D-Inv) | −½ − i(N/π)(N/(2n+1) − 1) |
//! | `diag-legs` (S4D-LegS) | the Λ of the DPLR form of LegS (−½ + i·eig) |
//! | `diag-real` (S4D-Real) | −(n+1) |
//!
//! B is 1 for every diagonal init (the official `B_init='constant'`).

use super::{nplr, Measure};
use crate::error::{check_even_state, Error, Result};
use ndarray::Array1;
use num_complex::Complex64;
use std::f64::consts::PI;
use std::fmt;
use std::str::FromStr;

/// The S4D diagonal initializations.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
pub enum DiagInit {
    /// S4D-Lin: Λ_n = −½ − iπn.
    #[serde(rename = "diag-lin")]
    Lin,
    /// S4D-Inv: Λ_n = −½ − i(N/π)(N/(2n+1) − 1), which tracks the LegS spectrum.
    #[serde(rename = "diag-inv")]
    Inv,
    /// S4D-LegS: the diagonal part Λ of the DPLR form of HiPPO-LegS.
    #[serde(rename = "diag-legs")]
    Legs,
    /// S4D-Real: Λ_n = −(n+1), n < N/2 (the smallest eigenvalues of LegS). The modes are real, and
    /// the 2·Re convention over conjugate pairs counts each of them twice (an effective factor 2 on
    /// C), as the official code does with its default `is_real = False`.
    #[serde(rename = "diag-real")]
    Real,
}

impl DiagInit {
    /// The name used on the command line (`diag-lin`, `diag-inv`, `diag-legs`, `diag-real`).
    pub fn name(self) -> &'static str {
        match self {
            DiagInit::Lin => "diag-lin",
            DiagInit::Inv => "diag-inv",
            DiagInit::Legs => "diag-legs",
            DiagInit::Real => "diag-real",
        }
    }
}

impl fmt::Display for DiagInit {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl FromStr for DiagInit {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self> {
        match s {
            "diag-lin" => Ok(DiagInit::Lin),
            "diag-inv" => Ok(DiagInit::Inv),
            "diag-legs" => Ok(DiagInit::Legs),
            "diag-real" => Ok(DiagInit::Real),
            _ => Err(Error::invalid("diagonal init", s, "one of diag-lin, diag-inv, diag-legs, diag-real")),
        }
    }
}

/// The kept half Λ (N/2,) of the diagonal state matrix for `init` at state size `n` (even).
///
/// # Errors
/// `n` zero or odd.
///
/// # Example
/// ```
/// use s4::hippo::diag::{diag_lambda, DiagInit};
/// let lam = diag_lambda(DiagInit::Lin, 8)?;
/// assert_eq!(lam.len(), 4);
/// assert!((lam[2].im + 2.0 * std::f64::consts::PI).abs() < 1e-12);
/// # Ok::<(), s4::Error>(())
/// ```
pub fn diag_lambda(init: DiagInit, n: usize) -> Result<Array1<Complex64>> {
    check_even_state(n)?;
    let nf = n as f64;
    Ok(match init {
        DiagInit::Lin => Array1::from_shape_fn(n / 2, |i| Complex64::new(-0.5, -PI * i as f64)),
        DiagInit::Inv => {
            Array1::from_shape_fn(n / 2, |i| Complex64::new(-0.5, -(nf / PI) * (nf / (2.0 * i as f64 + 1.0) - 1.0)))
        }
        DiagInit::Legs => nplr(Measure::LegS, n)?.lambda,
        DiagInit::Real => Array1::from_shape_fn(n / 2, |i| Complex64::new(-(i as f64 + 1.0), 0.0)),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn inv_tracks_the_legs_spectrum() {
        // the note: S4D-Inv at N = 64 spans |Im| 1283 .. 0.32 against LegS 1303 .. 0.26
        let inv = diag_lambda(DiagInit::Inv, 64).unwrap();
        assert!((inv[0].im + 1283.0).abs() < 1.0, "{}", inv[0].im);
        assert!((inv[31].im + 0.3234).abs() < 1e-3, "{}", inv[31].im);
        let legs = diag_lambda(DiagInit::Legs, 64).unwrap();
        assert!(legs.iter().all(|z| (z.re + 0.5).abs() < 1e-12 && z.im <= 0.0));
    }

    #[test]
    fn real_and_lin_values() {
        let r = diag_lambda(DiagInit::Real, 6).unwrap();
        assert_eq!(r.to_vec(), vec![Complex64::new(-1.0, 0.0), Complex64::new(-2.0, 0.0), Complex64::new(-3.0, 0.0)]);
        let l = diag_lambda(DiagInit::Lin, 4).unwrap();
        assert_eq!(l[0], Complex64::new(-0.5, 0.0));
        assert!(diag_lambda(DiagInit::Lin, 3).is_err());
        assert_eq!("diag-inv".parse::<DiagInit>().unwrap(), DiagInit::Inv);
        assert!("inv".parse::<DiagInit>().is_err());
    }
}

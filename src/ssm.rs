//! Continuous-time SSM parameters per channel, in the conjugate-pair half representation, and the
//! initializations a layer draws them from.
//!
//! Each of the H channels (features) has its own single-input single-output SSM
//! x' = A x + B u, y = C x with a diagonal-plus-low-rank state matrix on the full state
//! (the kept half plus its conjugates):
//!
//! A = diag(Λ, Λ̄) − P_f P_f*,  P_f = [P; P̄],  B_f = [B; B̄],  C_f = [C, C̄],
//!
//! so y = 2·Re(C x_half) for real inputs. The diagonal (S4D) kind has no P. This is the layout of
//! the official state-spaces/s4 kernels (`SSMKernelDPLR`, `SSMKernelDiag`) with Q = P tied.
//!
//! # Shapes
//! `lambda` (H, N/2), `p` (R, H, N/2) (DPLR only), `b` (H, N/2), `c` (H, N/2), `dt` (H,).

use crate::budget::Estimate;
use crate::error::{check_dt, check_even_state, Error, Result};
use crate::hippo::diag::{diag_lambda, DiagInit};
use crate::hippo::{nplr, Measure};
use crate::scalar::Real;
use ndarray::{Array1, Array2, Array3};
use num_complex::{Complex, Complex64};
use rand::{RngExt, SeedableRng};
use rand_distr::StandardNormal;
use std::fmt;
use std::str::FromStr;

/// Which kernel an SSM uses.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
#[cfg_attr(feature = "cli", derive(clap::ValueEnum))]
pub enum KernelKind {
    /// S4: diagonal plus low rank state matrix, bilinear discretization, Cauchy + Woodbury kernel.
    #[cfg_attr(feature = "cli", value(alias = "s4", alias = "nplr"))]
    Dplr,
    /// S4D: diagonal state matrix, ZOH or bilinear, Vandermonde kernel.
    #[cfg_attr(feature = "cli", value(alias = "s4d"))]
    Diag,
}

impl FromStr for KernelKind {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self> {
        match s {
            "dplr" | "s4" | "nplr" => Ok(KernelKind::Dplr),
            "diag" | "s4d" => Ok(KernelKind::Diag),
            _ => Err(Error::invalid("kernel kind", s, "dplr or diag")),
        }
    }
}

impl fmt::Display for KernelKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            KernelKind::Dplr => "dplr",
            KernelKind::Diag => "diag",
        })
    }
}

/// Initialization of (Λ, P, B): a HiPPO operator in DPLR form, or an S4D diagonal init.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
#[serde(into = "String", try_from = "String")]
pub enum SsmInit {
    /// The DPLR form of a HiPPO measure (`legs`, `legt`, `fout`; `lagt` is accepted too).
    Hippo(Measure),
    /// A diagonal init (`diag-lin`, `diag-inv`, `diag-legs`, `diag-real`); P = 0 for the DPLR kind.
    Diag(DiagInit),
}

impl fmt::Display for SsmInit {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl SsmInit {
    /// Every initialization, in the order the command line lists them.
    pub const ALL: [SsmInit; 8] = [
        SsmInit::Hippo(Measure::LegS),
        SsmInit::Hippo(Measure::LegT),
        SsmInit::Hippo(Measure::FouT),
        SsmInit::Hippo(Measure::LagT),
        SsmInit::Diag(DiagInit::Lin),
        SsmInit::Diag(DiagInit::Inv),
        SsmInit::Diag(DiagInit::Legs),
        SsmInit::Diag(DiagInit::Real),
    ];

    /// The name on the command line and in configs (`legs`, `diag-lin`, ...).
    pub fn name(self) -> &'static str {
        match self {
            SsmInit::Hippo(m) => m.name(),
            SsmInit::Diag(d) => d.name(),
        }
    }
}

/// The initializations as command-line choices, by their names (`legs`, `diag-lin`, ...).
#[cfg(feature = "cli")]
impl clap::ValueEnum for SsmInit {
    fn value_variants<'a>() -> &'a [Self] {
        &Self::ALL
    }
    fn to_possible_value(&self) -> Option<clap::builder::PossibleValue> {
        Some(clap::builder::PossibleValue::new(self.name()))
    }
}

impl FromStr for SsmInit {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self> {
        if s.starts_with("diag-") {
            Ok(SsmInit::Diag(s.parse()?))
        } else {
            s.parse::<Measure>().map(SsmInit::Hippo).map_err(|_| {
                Error::invalid("init", s, "one of legs, legt, lagt, fout, diag-lin, diag-inv, diag-legs, diag-real")
            })
        }
    }
}

impl From<SsmInit> for String {
    fn from(i: SsmInit) -> String {
        i.to_string()
    }
}

impl TryFrom<String> for SsmInit {
    type Error = Error;
    fn try_from(s: String) -> Result<Self> {
        s.parse()
    }
}

/// Continuous-time parameters of H SSMs (one per channel); see the [module docs](self) for the
/// conventions and shapes.
#[derive(Clone, Debug, PartialEq)]
pub struct SsmParams<T> {
    /// Λ (H, N/2): kept eigenvalues, Re Λ < 0.
    pub lambda: Array2<Complex<T>>,
    /// P (R, H, N/2): low-rank factor (Q = P tied); `None` for the diagonal kind.
    pub p: Option<Array3<Complex<T>>>,
    /// B (H, N/2).
    pub b: Array2<Complex<T>>,
    /// C (H, N/2): the output vector of the continuous system (not C̃).
    pub c: Array2<Complex<T>>,
    /// Δ (H,): step size per channel.
    pub dt: Array1<T>,
}

impl<T: Real> SsmParams<T> {
    /// Number of channels H.
    pub fn channels(&self) -> usize {
        self.lambda.nrows()
    }

    /// Number of kept conjugate-pair states N/2.
    pub fn half_state(&self) -> usize {
        self.lambda.ncols()
    }

    /// Rank R of P (0 for the diagonal kind).
    pub fn rank(&self) -> usize {
        self.p.as_ref().map_or(0, |p| p.shape()[0])
    }

    /// The kernel kind implied by the presence of P.
    pub fn kind(&self) -> KernelKind {
        if self.p.is_some() {
            KernelKind::Dplr
        } else {
            KernelKind::Diag
        }
    }

    /// Checks shapes, finiteness, Δ > 0 and Re Λ < 0 (stable modes).
    ///
    /// # Errors
    /// The first violation found, naming the array and index.
    pub fn validate(&self) -> Result<()> {
        let (h, m) = self.lambda.dim();
        if h == 0 || m == 0 {
            return Err(Error::shape("Lambda", "(H, N/2) with H >= 1 and N/2 >= 1", &[h, m]));
        }
        for (name, arr) in [("B", &self.b), ("C", &self.c)] {
            if arr.dim() != (h, m) {
                return Err(Error::shape(name, format!("(H, N/2) = ({h}, {m}) like Lambda"), arr.shape()));
            }
        }
        if self.dt.len() != h {
            return Err(Error::shape("dt", format!("(H,) = ({h},)"), self.dt.shape()));
        }
        if let Some(p) = &self.p
            && (p.shape()[0] == 0 || p.shape()[1..] != [h, m])
        {
            return Err(Error::shape("P", format!("(R, H, N/2) = (R, {h}, {m}) with R >= 1"), p.shape()));
        }
        for (i, &d) in self.dt.iter().enumerate() {
            check_dt(&format!("dt[{i}]"), d.as_f64())?;
        }
        let finite = |z: &Complex<T>| z.re.is_finite() && z.im.is_finite();
        for ((i, j), z) in self.lambda.indexed_iter() {
            if !finite(z) || z.re >= T::zero() {
                return Err(Error::invalid(
                    format!("Lambda[{i}, {j}]"),
                    format!("{}{:+}i", z.re, z.im),
                    "a finite value with Re < 0 (a stable mode)",
                ));
            }
        }
        let arrays = [("B", &self.b), ("C", &self.c)];
        for (name, arr) in arrays {
            if let Some(((i, j), _)) = arr.indexed_iter().find(|(_, z)| !finite(z)) {
                return Err(Error::invalid(format!("{name}[{i}, {j}]"), "non-finite", "a finite complex number"));
            }
        }
        if let Some(p) = &self.p
            && let Some((idx, _)) = p.indexed_iter().find(|(_, z)| !finite(z))
        {
            return Err(Error::invalid(format!("P{idx:?}"), "non-finite", "a finite complex number"));
        }
        Ok(())
    }

    /// Converts every array to another float type.
    pub fn cast<U: Real>(&self) -> SsmParams<U> {
        let c = |z: &Complex<T>| Complex::new(U::of(z.re.as_f64()), U::of(z.im.as_f64()));
        SsmParams {
            lambda: self.lambda.map(c),
            p: self.p.as_ref().map(|p| p.map(c)),
            b: self.b.map(c),
            c: self.c.map(c),
            dt: self.dt.mapv(|d| U::of(d.as_f64())),
        }
    }

    /// The SSM of channel `h` as a dense *real* system (A_r (N, N), B_r (N,), C_r (N,)) in f64, in the
    /// coordinates z = (Re x, Im x) of the kept half state x:
    ///
    /// A_r = [[diag Re Λ, −diag Im Λ], [diag Im Λ, diag Re Λ]] − 2 Σ_r g_r g_rᵀ with g_r = (Re P_r, Im P_r),
    /// B_r = (Re B, Im B), C_r = (2 Re C, −2 Im C),
    ///
    /// so that C_r e^{tA_r} B_r = 2 Re(C e^{tA} B) summed over the half (the full-state kernel). Used
    /// by the naive reference kernel and by the C̃ correction.
    ///
    /// # Panics
    /// If `h >= self.channels()` or the arrays are inconsistent (call [`validate`](Self::validate)
    /// first; every constructor in the crate does).
    pub fn dense_real(&self, h: usize) -> (Array2<f64>, Array1<f64>, Array1<f64>) {
        let m = self.half_state();
        let n = 2 * m;
        let lam = self.lambda.row(h);
        let mut a = Array2::<f64>::zeros((n, n));
        for j in 0..m {
            let (re, im) = (lam[j].re.as_f64(), lam[j].im.as_f64());
            a[[j, j]] = re;
            a[[j + m, j + m]] = re;
            a[[j, j + m]] = -im;
            a[[j + m, j]] = im;
        }
        if let Some(p) = &self.p {
            for r in 0..p.shape()[0] {
                let g: Vec<f64> = (0..n)
                    .map(|i| if i < m { p[[r, h, i]].re.as_f64() } else { p[[r, h, i - m]].im.as_f64() })
                    .collect();
                for i in 0..n {
                    for k in 0..n {
                        a[[i, k]] -= 2.0 * g[i] * g[k];
                    }
                }
            }
        }
        let b =
            Array1::from_shape_fn(
                n,
                |i| {
                    if i < m {
                        self.b[[h, i]].re.as_f64()
                    } else {
                        self.b[[h, i - m]].im.as_f64()
                    }
                },
            );
        let c = Array1::from_shape_fn(n, |i| {
            if i < m {
                2.0 * self.c[[h, i]].re.as_f64()
            } else {
                -2.0 * self.c[[h, i - m]].im.as_f64()
            }
        });
        (a, b, c)
    }
}

/// How to draw the parameters of H SSMs, as a layer initializes them.
#[derive(Clone, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct SsmInitConfig {
    /// Kernel kind (whether P is kept).
    pub kind: KernelKind,
    /// Initialization of Λ, P, B.
    pub init: SsmInit,
    /// State size N (even); N/2 complex states are kept.
    pub d_state: usize,
    /// Number of channels H.
    pub channels: usize,
    /// Smallest Δ of the log-uniform draw.
    pub dt_min: f64,
    /// Largest Δ of the log-uniform draw.
    pub dt_max: f64,
    /// Seed of the random draws (Δ and C).
    pub seed: u64,
}

impl Default for SsmInitConfig {
    fn default() -> Self {
        SsmInitConfig {
            kind: KernelKind::Dplr,
            init: SsmInit::Hippo(Measure::LegS),
            d_state: 64,
            channels: 1,
            dt_min: 1e-3,
            dt_max: 1e-1,
            seed: 0,
        }
    }
}

/// Smallest |Re Λ| at init; HiPPO measures with Re Λ = 0 (LegT, LagT, FouT) are moved to −1e-4, as
/// the official code clamps them.
pub const MIN_REAL_PART: f64 = 1e-4;

impl SsmInitConfig {
    /// Draws the parameters: Λ, P, B from the init (shared by all channels, as n_ssm = 1 would;
    /// every copy is identical at init anyway), Δ log-uniform in [dt_min, dt_max] per channel, and C
    /// complex standard normal (real and imaginary parts of variance ½), from a seeded PCG-64 stream.
    ///
    /// Differences from the official init, on purpose: B̃ is not clipped (the official `B_clip = 2`
    /// clamps Im B̃, which depends on the eigensolver's phase convention; ours makes B̃ real, so
    /// the clip would be a no-op).
    ///
    /// # Errors
    /// N zero or odd, H = 0, Δ bounds not finite and positive or dt_min > dt_max.
    ///
    /// # Example
    /// ```
    /// use s4::ssm::{KernelKind, SsmInitConfig};
    /// let cfg = SsmInitConfig { d_state: 8, channels: 3, ..Default::default() };
    /// let p = cfg.draw()?;
    /// assert_eq!(p.lambda.dim(), (3, 4));
    /// assert_eq!(p.kind(), KernelKind::Dplr);
    /// # Ok::<(), s4::Error>(())
    /// ```
    pub fn draw(&self) -> Result<SsmParams<f64>> {
        let (n, h) = (self.d_state, self.channels);
        if h == 0 {
            return Err(Error::invalid("channels H", h, "an integer >= 1"));
        }
        check_dt("dt_min", self.dt_min)?;
        check_dt("dt_max", self.dt_max)?;
        if self.dt_min > self.dt_max {
            return Err(Error::invalid("dt_min", self.dt_min, format!("<= dt_max = {}", self.dt_max)));
        }
        check_even_state(n)?;
        // Λ, B, C and up to two rank-correction rows, (H, N/2) complex each
        Estimate::new(format!("SSM parameters for H = {h}, N = {n}")).arrays::<Complex64>(5, &[h, n / 2]).check()?;
        let (lambda, p, b) = match self.init {
            SsmInit::Hippo(measure) => {
                let d = nplr(measure, n)?;
                (d.lambda, d.p, d.b)
            }
            SsmInit::Diag(init) => {
                let lam = diag_lambda(init, n)?;
                (lam, Array2::zeros((1, n / 2)), Array1::from_elem(n / 2, Complex64::new(1.0, 0.0)))
            }
        };
        let lambda = lambda.mapv(|z| Complex64::new(z.re.min(-MIN_REAL_PART), z.im));
        let bcast = |v: &Array1<Complex64>| v.broadcast((h, n / 2)).expect("broadcast a row").to_owned();
        let p = match self.kind {
            KernelKind::Dplr => {
                let r = p.nrows();
                Some(Array3::from_shape_fn((r, h, n / 2), |(k, _, j)| p[[k, j]]))
            }
            KernelKind::Diag => None,
        };
        let mut rng = rand_pcg::Pcg64::seed_from_u64(self.seed);
        let (lo, hi) = (self.dt_min.ln(), self.dt_max.ln());
        let dt = Array1::from_shape_fn(h, |_| (lo + (hi - lo) * rng.random::<f64>()).exp());
        let s = std::f64::consts::FRAC_1_SQRT_2;
        let c = Array2::from_shape_fn((h, n / 2), |_| {
            let re: f64 = rng.sample(StandardNormal);
            let im: f64 = rng.sample(StandardNormal);
            Complex64::new(re * s, im * s)
        });
        let params = SsmParams { lambda: bcast(&lambda), p, b: bcast(&b), c, dt };
        params.validate()?;
        Ok(params)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::discretize::{discretize_dense, Discretization};

    #[test]
    fn dense_real_form_matches_the_complex_full_state() {
        let params = SsmInitConfig { d_state: 8, channels: 2, seed: 3, ..Default::default() }.draw().unwrap();
        // compare C_r exp(t A_r) B_r with the full complex system via a small time step power series:
        // here through one ZOH step each, where the full complex state evolves block-wise.
        let (a, b, c) = params.dense_real(1);
        let (ab, bb) = discretize_dense(a.view(), b.view(), 0.01, Discretization::Bilinear).unwrap();
        // the same on the complex full state
        let m = 4;
        let mut full = Array2::<Complex64>::zeros((8, 8));
        let p = params.p.as_ref().unwrap();
        for j in 0..m {
            full[[j, j]] = params.lambda[[1, j]];
            full[[j + m, j + m]] = params.lambda[[1, j]].conj();
        }
        let pf: Vec<Complex64> = (0..8).map(|i| if i < m { p[[0, 1, i]] } else { p[[0, 1, i - m]].conj() }).collect();
        for i in 0..8 {
            for k in 0..8 {
                full[[i, k]] -= pf[i] * pf[k].conj();
            }
        }
        let dt = 0.01;
        let eye = Array2::<Complex64>::eye(8);
        let lhs = &eye - &full.mapv(|z| z * (dt / 2.0));
        let rhs = &eye + &full.mapv(|z| z * (dt / 2.0));
        let lhs_na = nalgebra::DMatrix::from_fn(8, 8, |i, k| lhs[[i, k]]);
        let rhs_na = nalgebra::DMatrix::from_fn(8, 8, |i, k| rhs[[i, k]]);
        let lu = lhs_na.lu();
        let abar = lu.solve(&rhs_na).unwrap();
        let bf =
            nalgebra::DVector::from_fn(
                8,
                |i, _| {
                    if i < m {
                        params.b[[1, i]] * dt
                    } else {
                        params.b[[1, i - m]].conj() * dt
                    }
                },
            );
        let bbar = lu.solve(&bf).unwrap();
        let cf: Vec<Complex64> =
            (0..8).map(|i| if i < m { params.c[[1, i]] } else { params.c[[1, i - m]].conj() }).collect();
        // K_l for l = 0..5 both ways
        let mut x = bbar.clone();
        let mut xr = bb.clone();
        for _ in 0..5 {
            let kc: Complex64 = (0..8).map(|i| cf[i] * x[i]).sum();
            let kr = c.dot(&xr);
            assert!(kc.im.abs() < 1e-12);
            assert!((kc.re - kr).abs() < 1e-12, "{} vs {}", kc.re, kr);
            x = &abar * &x;
            xr = ab.dot(&xr);
        }
    }

    #[test]
    fn draw_is_seeded_and_dt_in_range() {
        let cfg =
            SsmInitConfig { d_state: 16, channels: 32, seed: 7, dt_min: 1e-3, dt_max: 1e-1, ..Default::default() };
        let a = cfg.draw().unwrap();
        let b = cfg.draw().unwrap();
        assert_eq!(a, b);
        assert!(a.dt.iter().all(|&d| (1e-3..=1e-1).contains(&d)));
        let c = SsmInitConfig { seed: 8, ..cfg.clone() }.draw().unwrap();
        assert_ne!(a.c, c.c);
        // FouT and LegT get Re Λ clamped to -1e-4
        let f = SsmInitConfig { init: "fout".parse().unwrap(), ..cfg.clone() }.draw().unwrap();
        assert!(f.lambda.iter().all(|z| (z.re + 1e-4).abs() < 1e-15));
        let t = SsmInitConfig { init: "legt".parse().unwrap(), ..cfg.clone() }.draw().unwrap();
        assert_eq!(t.rank(), 2);
        let d = SsmInitConfig { kind: KernelKind::Diag, init: "diag-lin".parse().unwrap(), ..cfg }.draw().unwrap();
        assert!(d.p.is_none());
    }

    #[test]
    fn bad_configs_are_errors() {
        let base = SsmInitConfig::default();
        let e = SsmInitConfig { d_state: 0, ..base.clone() }.draw().unwrap_err().to_string();
        assert!(e.contains("N = 0"), "{e}");
        assert!(SsmInitConfig { d_state: 5, ..base.clone() }.draw().is_err());
        assert!(SsmInitConfig { channels: 0, ..base.clone() }.draw().is_err());
        let e = SsmInitConfig { dt_min: -1.0, ..base.clone() }.draw().unwrap_err().to_string();
        assert!(e.contains("dt_min = -1"), "{e}");
        assert!(SsmInitConfig { dt_min: 0.5, dt_max: 0.1, ..base.clone() }.draw().is_err());
        assert!(SsmInitConfig { dt_max: f64::NAN, ..base }.draw().is_err());
        let mut p = SsmInitConfig { d_state: 4, channels: 2, ..Default::default() }.draw().unwrap();
        p.lambda[[1, 0]].re = 0.25;
        let e = p.validate().unwrap_err().to_string();
        assert!(e.contains("Lambda[1, 0]") && e.contains("Re < 0"), "{e}");
    }
}

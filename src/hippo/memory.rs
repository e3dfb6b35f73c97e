//! Online function approximation: the HiPPO state remembers the past of a signal, and the past can
//! be read back from it (Gu et al., *HiPPO*, NeurIPS 2020, §2 and Figure 1; Gu et al., *How to Train
//! Your HiPPO*, 2022, for the LTI LegS basis). The reconstruction formulas are those of the
//! research note (re-derived and checked numerically there); s is the time ago, in the units of Δ:
//!
//! | operator | reconstruction | window |
//! |---|---|---|
//! | LegT (halved matrices, θ = 2) | f(t − s) ≈ Σ c_n √(2n+1) P_n(1 − 2s/θ) | 0 ≤ s ≤ θ |
//! | LegS, time-invariant | f(t − s) ≈ Σ c_n √(2n+1) P_n(2e^{−s} − 1) | s ≥ 0, measure e^{−s} |
//! | LegS, scaled (x' = (Ax + Bu)/t) | f(x t) ≈ Σ c_n √(2n+1) P_n(2x − 1) | 0 ≤ x ≤ 1 (all history) |
//! | LagT | f(t − s) ≈ Σ c_n L_n(s) e^{−s/2} (Laguerre) | s ≥ 0 |
//! | FouT (θ = 2) | f(t − s) ≈ c₀ + √2 Σ_{k≥1} c_{2k} cos(πks) + c_{2k+1} sin(πks) | 0 ≤ s ≤ 2 |
//!
//! The LTI operators are discretized with the bilinear rule at step Δ; the scaled LegS uses the
//! bilinear rule on A/k, B/k at step k (the original time-varying HiPPO-LegS).
//!
//! "Flipped" bases (P_n(2s/θ − 1) without the (−1)^n, and the analogous flips for the others) are
//! the classic convention error; [`reconstruct`] can evaluate them as a negative control.

use super::{transition, Measure};
use crate::discretize::{discretize_dense, Discretization};
use crate::error::{check_dt, Error, Result};
use crate::plot::{Panel, Series};
use ndarray::{Array1, Array2};
use num_complex::Complex64;
use rand::{RngExt, SeedableRng};
use rand_distr::StandardNormal;
use std::fmt;
use std::str::FromStr;

/// The memory operators of the demo.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
#[serde(into = "String", try_from = "String")]
pub enum MemoryOperator {
    /// Translated Legendre, sliding window of 2 time units.
    LegT,
    /// Scaled Legendre as a time-invariant system (what S4 uses).
    LegS,
    /// Scaled Legendre as the original time-varying system: uniform memory of all history.
    LegSScaled,
    /// Translated Laguerre.
    LagT,
    /// Truncated Fourier, window of 2 time units.
    FouT,
}

impl MemoryOperator {
    /// All operators in a fixed order.
    pub const ALL: [MemoryOperator; 5] = [
        MemoryOperator::LegT,
        MemoryOperator::LegS,
        MemoryOperator::LegSScaled,
        MemoryOperator::LagT,
        MemoryOperator::FouT,
    ];

    /// Name on the command line and in JSON (`legt`, `legs`, `legs-scaled`, `lagt`, `fout`).
    pub fn name(self) -> &'static str {
        match self {
            MemoryOperator::LegT => "legt",
            MemoryOperator::LegS => "legs",
            MemoryOperator::LegSScaled => "legs-scaled",
            MemoryOperator::LagT => "lagt",
            MemoryOperator::FouT => "fout",
        }
    }

    fn measure(self) -> Measure {
        match self {
            MemoryOperator::LegT => Measure::LegT,
            MemoryOperator::LegS | MemoryOperator::LegSScaled => Measure::LegS,
            MemoryOperator::LagT => Measure::LagT,
            MemoryOperator::FouT => Measure::FouT,
        }
    }

    /// The range of ages s (time ago) over which the reconstruction is scored, for a signal of
    /// `duration` time units: the window for LegT/FouT (FouT without its Gibbs edges), s < 1 for the
    /// exponentially fading LTI LegS, s < 2 for LagT, all history for scaled LegS.
    pub fn scored_ages(self, duration: f64) -> (f64, f64) {
        let (lo, hi) = match self {
            MemoryOperator::LegT => (0.0, 2.0),
            MemoryOperator::LegS => (0.0, 1.0),
            MemoryOperator::LegSScaled => (0.0, duration),
            MemoryOperator::LagT => (0.0, 2.0),
            MemoryOperator::FouT => (0.1, 1.9),
        };
        (lo, hi.min(duration))
    }
}

impl fmt::Display for MemoryOperator {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl FromStr for MemoryOperator {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self> {
        MemoryOperator::ALL
            .into_iter()
            .find(|o| o.name() == s)
            .ok_or_else(|| Error::invalid("memory operator", s, "one of legt, legs, legs-scaled, lagt, fout"))
    }
}

impl From<MemoryOperator> for String {
    fn from(o: MemoryOperator) -> String {
        o.name().to_string()
    }
}

impl TryFrom<String> for MemoryOperator {
    type Error = Error;
    fn try_from(s: String) -> Result<Self> {
        s.parse()
    }
}

/// The operators as command-line choices, by [`MemoryOperator::name`].
#[cfg(feature = "cli")]
impl clap::ValueEnum for MemoryOperator {
    fn value_variants<'a>() -> &'a [Self] {
        &Self::ALL
    }
    fn to_possible_value(&self) -> Option<clap::builder::PossibleValue> {
        Some(clap::builder::PossibleValue::new(self.name()))
    }
}

/// Largest number of samples the demo accepts.
pub const MAX_SAMPLES: usize = 10_000_000;

/// Settings of the memory demo.
#[derive(Clone, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct MemoryConfig {
    /// State size N.
    pub n: usize,
    /// Step size Δ.
    pub dt: f64,
    /// Signal duration in time units (the number of samples is duration/Δ).
    pub duration: f64,
    /// Highest frequency of the band-limited signal, in cycles per time unit.
    pub cutoff: f64,
    /// RMS of the signal.
    pub rms: f64,
    /// Seed of the signal.
    pub seed: u64,
}

impl Default for MemoryConfig {
    fn default() -> Self {
        MemoryConfig { n: 64, dt: 1e-3, duration: 4.0, cutoff: 1.5, rms: 0.5, seed: 0 }
    }
}

impl MemoryConfig {
    /// Number of samples, round(duration/Δ).
    pub fn samples(&self) -> usize {
        (self.duration / self.dt).round() as usize
    }

    fn validate(&self) -> Result<()> {
        if self.n == 0 {
            return Err(Error::invalid("N", self.n, "an integer >= 1"));
        }
        check_dt("dt", self.dt)?;
        for (name, v) in [("duration", self.duration), ("cutoff", self.cutoff), ("rms", self.rms)] {
            if !(v.is_finite() && v > 0.0) {
                return Err(Error::invalid(name, v, "a finite number > 0"));
            }
        }
        let nyquist = 0.5 / self.dt;
        if self.cutoff > nyquist {
            return Err(Error::invalid(
                "cutoff",
                self.cutoff,
                format!("at most the Nyquist frequency 1/(2 dt) = {nyquist} (higher frequencies cannot be sampled)"),
            ));
        }
        let steps = self.duration / self.dt;
        if steps > MAX_SAMPLES as f64 {
            return Err(Error::invalid(
                "duration / dt",
                format!("{steps:.3e}"),
                format!("at most {MAX_SAMPLES} steps (lower the duration or raise dt)"),
            ));
        }
        if self.samples() < 2 {
            return Err(Error::invalid("duration", self.duration, format!("at least 2 steps of dt = {}", self.dt)));
        }
        Ok(())
    }
}

/// A band-limited random signal of `len` samples at step `dt`: random complex Gaussian Fourier
/// coefficients at every frequency k/(len·dt) ≤ `cutoff` (k ≥ 1), zero elsewhere, scaled to `rms`
/// (the nengo `WhiteSignal` the HiPPO experiments use, made periodic over the duration).
pub fn band_limited_signal(len: usize, dt: f64, cutoff: f64, rms: f64, seed: u64) -> Array1<f64> {
    let mut rng = rand_pcg::Pcg64::seed_from_u64(seed);
    let period = len as f64 * dt;
    let kmax = ((cutoff * period).floor() as usize).max(1);
    let coef: Vec<Complex64> = (0..=kmax)
        .map(|k| {
            if k == 0 {
                Complex64::new(0.0, 0.0)
            } else {
                Complex64::new(rng.sample::<f64, _>(StandardNormal), rng.sample::<f64, _>(StandardNormal))
            }
        })
        .collect();
    let two_pi = 2.0 * std::f64::consts::PI;
    let mut x = Array1::from_shape_fn(len, |i| {
        let t = i as f64 / len as f64;
        coef.iter()
            .enumerate()
            .skip(1)
            .map(|(k, c)| c.re * (two_pi * k as f64 * t).cos() - c.im * (two_pi * k as f64 * t).sin())
            .sum::<f64>()
    });
    let cur = (x.iter().map(|v| v * v).sum::<f64>() / len as f64).sqrt();
    if cur > 0.0 {
        x *= rms / cur;
    }
    x
}

/// Runs the operator's recurrence over `signal` and returns the final state c (N,).
///
/// # Errors
/// Bad N (0, or odd for FouT), `dt` not finite and positive, or an empty signal.
pub fn run(op: MemoryOperator, signal: &[f64], n: usize, dt: f64) -> Result<Array1<f64>> {
    if signal.is_empty() {
        return Err(Error::invalid("signal length", 0, "at least 1 sample"));
    }
    check_dt("dt", dt)?;
    let (a, b) = transition(op.measure(), n)?;
    let mut c = Array1::<f64>::zeros(n);
    match op {
        MemoryOperator::LegSScaled => {
            // x_k = (I - A/2k)^{-1} ((I + A/2k) x_{k-1} + B u_k / k); A is lower triangular
            for (step, &u) in signal.iter().enumerate() {
                let k = (step + 1) as f64;
                let mut rhs = &c + &(a.dot(&c) / (2.0 * k)) + &(&b * (u / k));
                for i in 0..n {
                    let mut acc = rhs[i];
                    for j in 0..i {
                        acc += a[[i, j]] / (2.0 * k) * rhs[j];
                    }
                    rhs[i] = acc / (1.0 - a[[i, i]] / (2.0 * k));
                }
                c = rhs;
            }
        }
        _ => {
            let (ab, bb) = discretize_dense(a.view(), b.view(), dt, Discretization::Bilinear)?;
            for &u in signal {
                c = ab.dot(&c) + &bb * u;
            }
        }
    }
    Ok(c)
}

/// Legendre polynomials P_0..P_{n−1} at x.
fn legendre(n: usize, x: f64) -> Vec<f64> {
    let mut p = vec![0.0; n];
    if n > 0 {
        p[0] = 1.0;
    }
    if n > 1 {
        p[1] = x;
    }
    for k in 1..n.saturating_sub(1) {
        p[k + 1] = ((2 * k + 1) as f64 * x * p[k] - k as f64 * p[k - 1]) / (k + 1) as f64;
    }
    p
}

/// Laguerre polynomials L_0..L_{n−1} at x.
fn laguerre(n: usize, x: f64) -> Vec<f64> {
    let mut p = vec![0.0; n];
    if n > 0 {
        p[0] = 1.0;
    }
    if n > 1 {
        p[1] = 1.0 - x;
    }
    for k in 1..n.saturating_sub(1) {
        p[k + 1] = ((2 * k + 1) as f64 - x) * p[k] / (k + 1) as f64 - k as f64 * p[k - 1] / (k + 1) as f64;
    }
    p
}

/// The reconstruction f(t − s) at each age s in `ages`, from the final state `c` of [`run`] at
/// time t = `duration`. With `flipped`, evaluates the sign-flipped basis (a negative control).
/// An empty state reconstructs zero.
pub fn reconstruct(op: MemoryOperator, c: &Array1<f64>, ages: &[f64], duration: f64, flipped: bool) -> Vec<f64> {
    let n = c.len();
    if n == 0 {
        return vec![0.0; ages.len()];
    }
    let sq = |k: usize| (2.0 * k as f64 + 1.0).sqrt();
    let flip = if flipped { -1.0 } else { 1.0 };
    ages.iter()
        .map(|&s| match op {
            MemoryOperator::LegT => {
                let p = legendre(n, flip * (1.0 - s));
                (0..n).map(|k| c[k] * sq(k) * p[k]).sum()
            }
            MemoryOperator::LegS => {
                let p = legendre(n, flip * (2.0 * (-s).exp() - 1.0));
                (0..n).map(|k| c[k] * sq(k) * p[k]).sum()
            }
            MemoryOperator::LegSScaled => {
                let x = 1.0 - s / duration;
                let p = legendre(n, flip * (2.0 * x - 1.0));
                (0..n).map(|k| c[k] * sq(k) * p[k]).sum()
            }
            MemoryOperator::LagT => {
                let l = laguerre(n, s);
                let w = (-s / 2.0).exp();
                (0..n).map(|k| c[k] * l[k] * w * if flipped && k % 2 == 1 { -1.0 } else { 1.0 }).sum()
            }
            MemoryOperator::FouT => {
                let pi = std::f64::consts::PI;
                let mut y = c[0];
                for k in 1..n / 2 {
                    let w = pi * k as f64 * s;
                    y += std::f64::consts::SQRT_2 * (c[2 * k] * w.cos() + flip * c[2 * k + 1] * w.sin());
                }
                y
            }
        })
        .collect()
}

/// The outcome of one memory run.
#[derive(Clone, Debug, serde::Serialize)]
pub struct MemoryResult {
    /// Operator.
    pub operator: MemoryOperator,
    /// State size.
    pub n: usize,
    /// Ages scored, [from, to] in time units before the end.
    pub ages: (f64, f64),
    /// RMSE of the reconstruction over the scored ages.
    pub rmse: f64,
    /// RMSE divided by the RMS of the true signal over the same ages.
    pub relative_rmse: f64,
    /// Times (absolute, 0..duration) of the scored samples, ascending.
    #[serde(skip)]
    pub times: Vec<f64>,
    /// Reconstructed values at `times`.
    #[serde(skip)]
    pub reconstruction: Vec<f64>,
    /// True signal at `times`.
    #[serde(skip)]
    pub truth: Vec<f64>,
}

/// Runs `op` over the configured signal and scores the reconstruction of the past.
///
/// # Errors
/// Invalid configuration (N = 0, odd N for FouT, non-positive Δ, duration or cutoff).
///
/// # Example
/// ```
/// use s4::hippo::memory::{evaluate, MemoryConfig, MemoryOperator};
/// let cfg = MemoryConfig { n: 32, duration: 2.0, ..Default::default() };
/// let r = evaluate(MemoryOperator::LegT, &cfg, false)?;
/// assert!(r.relative_rmse < 0.05);
/// # Ok::<(), s4::Error>(())
/// ```
pub fn evaluate(op: MemoryOperator, cfg: &MemoryConfig, flipped: bool) -> Result<MemoryResult> {
    cfg.validate()?;
    let len = cfg.samples();
    let signal = band_limited_signal(len, cfg.dt, cfg.cutoff, cfg.rms, cfg.seed);
    let c = run(op, signal.as_slice().expect("contiguous"), cfg.n, cfg.dt)?;
    let duration = (len - 1) as f64 * cfg.dt;
    let (lo, hi) = op.scored_ages(duration);
    // sample i is at time i·dt, age (len-1-i)·dt
    let idx: Vec<usize> = (0..len)
        .filter(|&i| {
            let age = (len - 1 - i) as f64 * cfg.dt;
            age >= lo - 1e-12 && age <= hi + 1e-12
        })
        .collect();
    let ages: Vec<f64> = idx.iter().map(|&i| (len - 1 - i) as f64 * cfg.dt).collect();
    let rec = reconstruct(op, &c, &ages, duration, flipped);
    let truth: Vec<f64> = idx.iter().map(|&i| signal[i]).collect();
    let m = truth.len() as f64;
    let rmse = (rec.iter().zip(&truth).map(|(r, t)| (r - t).powi(2)).sum::<f64>() / m).sqrt();
    let rms = (truth.iter().map(|t| t * t).sum::<f64>() / m).sqrt();
    Ok(MemoryResult {
        operator: op,
        n: cfg.n,
        ages: (lo, hi),
        rmse,
        relative_rmse: rmse / rms,
        times: idx.iter().map(|&i| i as f64 * cfg.dt).collect(),
        reconstruction: rec,
        truth,
    })
}

/// The signal of `cfg` with its sample times, for plotting.
pub fn signal_of(cfg: &MemoryConfig) -> (Vec<f64>, Array1<f64>) {
    let len = cfg.samples();
    ((0..len).map(|i| i as f64 * cfg.dt).collect(), band_limited_signal(len, cfg.dt, cfg.cutoff, cfg.rms, cfg.seed))
}

/// A relative-RMSE table: one row per operator, one column per N.
pub fn sweep(ops: &[MemoryOperator], ns: &[usize], cfg: &MemoryConfig) -> Result<Array2<f64>> {
    let mut out = Array2::zeros((ops.len(), ns.len()));
    for (i, &op) in ops.iter().enumerate() {
        for (j, &n) in ns.iter().enumerate() {
            out[[i, j]] = evaluate(op, &MemoryConfig { n, ..cfg.clone() }, false)?.relative_rmse;
        }
    }
    Ok(out)
}

/// The memory demo's figure: the whole signal, then one panel per result with the signal and its
/// reconstruction from the final state over the scored window.
pub fn memory_panels(cfg: &MemoryConfig, results: &[MemoryResult]) -> Vec<Panel> {
    let (times, signal) = signal_of(cfg);
    let mut panels = vec![Panel {
        title: format!("band-limited signal (cutoff {} / time unit), dt = {}", cfg.cutoff, cfg.dt),
        x_label: "time".into(),
        y_label: "u(t)".into(),
        series: vec![Series {
            label: "signal".into(),
            points: times.iter().copied().zip(signal.iter().copied()).collect(),
        }],
    }];
    for r in results {
        let pts = |v: &[f64]| r.times.iter().copied().zip(v.iter().copied()).collect::<Vec<_>>();
        panels.push(Panel {
            title: format!(
                "{} N = {}: relative RMSE {:.2e} over ages {}..{}{}",
                r.operator,
                r.n,
                r.relative_rmse,
                r.ages.0,
                r.ages.1,
                if r.operator == MemoryOperator::LagT {
                    " (expected: the Laguerre basis spans the whole e^-s weighted past, coarse on this window)"
                } else {
                    ""
                }
            ),
            x_label: "time".into(),
            y_label: "u(t)".into(),
            series: vec![
                Series { label: "signal".into(), points: pts(&r.truth) },
                Series { label: "reconstruction from the final state".into(), points: pts(&r.reconstruction) },
            ],
        });
    }
    panels
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn polynomials_match_closed_forms() {
        let p = legendre(4, 0.3);
        assert!((p[2] - 0.5 * (3.0 * 0.09 - 1.0)).abs() < 1e-15);
        assert!((p[3] - 0.5 * (5.0 * 0.027 - 3.0 * 0.3)).abs() < 1e-15);
        let l = laguerre(3, 0.7);
        assert!((l[2] - 0.5 * (0.49 - 4.0 * 0.7 + 2.0)).abs() < 1e-15);
    }

    #[test]
    fn signal_is_seeded_with_the_requested_rms() {
        let a = band_limited_signal(1000, 1e-3, 3.0, 0.5, 1);
        let b = band_limited_signal(1000, 1e-3, 3.0, 0.5, 1);
        assert_eq!(a, b);
        let rms = (a.iter().map(|v| v * v).sum::<f64>() / 1000.0).sqrt();
        assert!((rms - 0.5).abs() < 1e-12);
    }
}

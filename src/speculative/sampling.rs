//! Turning logits into the distribution a token is drawn from: temperature, top-k, top-p.
//!
//! The same [`Sampling`] is applied to the verifier's logits (p) and to the draft's (q) before any
//! ratio or residual is formed (Chen et al. 2023, "modified rejection sampling"; Hugging Face
//! PR #28166 fixed exactly this omission). The order is Hugging Face's: temperature, then top-k,
//! then top-p, then renormalization. Temperature 0 is greedy decoding: the distribution is the
//! point mass at the arg-max (the lowest index among ties).
//!
//! # Example
//!
//! ```
//! use rand::SeedableRng;
//! use s4::speculative::sampling::{argmax, sample, Sampling};
//!
//! let logits = [1.0f32, 3.0, 2.0, 3.0, -1.0];
//! // greedy: the point mass at the first arg-max
//! assert_eq!(Sampling::greedy().probs(&logits)?, vec![0.0, 1.0, 0.0, 0.0, 0.0]);
//! assert_eq!(argmax(&logits), 1);
//! // temperature 1: the softmax
//! let p = Sampling::default().probs(&logits)?;
//! let z: f64 = logits.iter().map(|&x| (x as f64).exp()).sum();
//! assert!((p[2] / (2f64.exp() / z) - 1.0).abs() < 1e-6); // a vectorized f32 exp
//! // top-k keeps ties at the k-th logit; temperature 0.5 squares the ratios
//! let k = Sampling { temperature: 0.5, top_k: Some(3), top_p: None }.probs(&logits)?;
//! assert_eq!(k[0], 0.0);
//! assert!((k[1] / k[2] / 2f64.exp() - 1.0).abs() < 1e-6); // e^{(3 − 2)/0.5}
//! // top-p keeps the smallest set of likeliest tokens reaching the mass: here the two 3.0 logits
//! let n = Sampling { top_p: Some(0.5), ..Default::default() }.probs(&logits)?;
//! assert_eq!(n.iter().filter(|&&x| x > 0.0).count(), 2);
//!
//! // drawing never returns a zero-probability token
//! let mut rng = rand_pcg::Pcg64::seed_from_u64(0);
//! assert!((0..100).all(|_| [1, 3].contains(&sample(&n, &mut rng))));
//! assert!(Sampling { top_p: Some(1.5), ..Default::default() }.validate().is_err());
//! # Ok::<(), s4::Error>(())
//! ```

use rand::RngExt;

use crate::error::{Error, Result};
use crate::scalar::Real;

/// How a distribution is derived from logits (plain struct; `Default` is plain sampling at
/// temperature 1).
#[derive(Clone, Copy, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(default)]
pub struct Sampling {
    /// Softmax temperature τ: probabilities ∝ exp(logit / τ). 0 means greedy (point mass at the
    /// arg-max).
    pub temperature: f64,
    /// Keep only the k most likely tokens (ties at the k-th logit are kept). `None`: all.
    pub top_k: Option<usize>,
    /// Nucleus: keep the smallest set of most likely tokens whose mass reaches `top_p`. `None`: all.
    pub top_p: Option<f64>,
}

impl Default for Sampling {
    fn default() -> Self {
        Sampling { temperature: 1.0, top_k: None, top_p: None }
    }
}

impl Sampling {
    /// Greedy decoding (temperature 0).
    pub fn greedy() -> Self {
        Sampling { temperature: 0.0, top_k: None, top_p: None }
    }

    /// True at temperature 0.
    pub fn is_greedy(&self) -> bool {
        self.temperature == 0.0
    }

    /// Checks the values.
    ///
    /// # Errors
    /// A negative or non-finite temperature, `top_k = 0`, `top_p` outside (0, 1] (each named).
    pub fn validate(&self) -> Result<()> {
        if !(self.temperature.is_finite() && self.temperature >= 0.0) {
            return Err(Error::invalid("temperature", self.temperature, "a finite number >= 0 (0 = greedy)"));
        }
        if self.top_k == Some(0) {
            return Err(Error::invalid("top_k", 0, "at least 1 (or unset for no limit)"));
        }
        if let Some(p) = self.top_p
            && !(p > 0.0 && p <= 1.0)
        {
            return Err(Error::invalid("top_p", p, "a number in (0, 1]"));
        }
        Ok(())
    }

    /// The warped distribution of one row of logits (length V), as V probabilities in f64 that
    /// sum to 1: p ∝ exp(logit/τ) over the top-k, then cut to the top-p nucleus and
    /// renormalized (the point mass at [`argmax`] when τ = 0). The exponentials are taken in f32
    /// by a vectorized exp (relative error about 1e-6 at |logit − max|/τ ≈ 10), the sums in f64.
    /// The values are not validated here (see [`validate`](Self::validate)).
    ///
    /// # Errors
    /// Empty or non-finite logits (named by index).
    pub fn probs(&self, logits: &[f32]) -> Result<Vec<f64>> {
        if logits.is_empty() {
            return Err(Error::invalid("logits", "an empty row", "at least one entry"));
        }
        if let Some(i) =
            (!crate::nn::simd::all_finite(logits)).then(|| logits.iter().position(|x| !x.is_finite())).flatten()
        {
            return Err(Error::numerical("sampling", format!("logit {i} is {} (not finite)", logits[i])));
        }
        let v = logits.len();
        if self.is_greedy() {
            let mut p = vec![0.0; v];
            p[argmax(logits)] = 1.0;
            return Ok(p);
        }
        // e^{(x − max)/τ} in f32 by a vectorized exp (one pass over V: the sampling of a
        // token costs about a tenth of libm's f64 exp), summed and normalized in f64
        let m = crate::nn::simd::max_body(logits);
        let scale = 1.0 / self.temperature;
        let mut p: Vec<f64> = if scale < f64::from(f32::MAX) {
            let mut e = logits.to_vec();
            scaled_exp(&mut e, m, scale as f32);
            e.iter().map(|&x| f64::from(x)).collect()
        } else {
            // τ below f32's range: 1/τ itself would overflow
            logits.iter().map(|&x| ((f64::from(x) - f64::from(m)) * scale).exp()).collect()
        };
        if let Some(k) = self.top_k.filter(|&k| k < v) {
            // x/τ is increasing in x: the k-th largest logit marks the k-th largest z
            let mut sorted = logits.to_vec();
            sorted.sort_unstable_by(|a, b| b.total_cmp(a));
            let kth = sorted[k - 1];
            p.iter_mut().zip(logits).filter(|(_, x)| **x < kth).for_each(|(p, _)| *p = 0.0);
        }
        normalize(&mut p);
        if let Some(top_p) = self.top_p.filter(|&x| x < 1.0) {
            let mut order: Vec<usize> = (0..v).collect();
            order.sort_by(|&a, &b| p[b].total_cmp(&p[a]).then(a.cmp(&b)));
            let mut mass = 0.0;
            let mut keep = v;
            for (rank, &i) in order.iter().enumerate() {
                mass += p[i];
                if mass >= top_p {
                    keep = rank + 1;
                    break;
                }
            }
            for &i in &order[keep..] {
                p[i] = 0.0;
            }
            normalize(&mut p);
        }
        Ok(p)
    }
}

/// x ← e^{(x − shift)·scale} in f32 ([`crate::nn::simd::exp_f32`], relative error ≤ 2e-7 plus
/// the rounding of the argument), 0 where the argument is below −87 (e^{−87} ≈ 1.6e-38).
#[inline(always)]
fn scaled_exp_body<T: Real, const FMA: bool>(xs: &mut [T], shift: T, scale: T) {
    match crate::nn::simd::as_f32_mut(xs) {
        Some(xs) => {
            let (shift, scale) = (shift.as_f64() as f32, scale.as_f64() as f32);
            for x in xs {
                let a = (*x - shift) * scale;
                *x = if a < -87.0 { 0.0 } else { crate::nn::simd::exp_f32(a) };
            }
        }
        None => xs.iter_mut().for_each(|x| *x = ((*x - shift) * scale).exp()),
    }
}

crate::nn::simd::simd_dispatch! {
    /// [`scaled_exp_body`] with the widest vectors the CPU has.
    fn scaled_exp(xs: &mut [T], shift: T, scale: T) -> () = scaled_exp_body
}

/// Index of the largest entry (the lowest index among ties; NaN never wins).
pub fn argmax(x: &[f32]) -> usize {
    let mut best = 0;
    for (i, &v) in x.iter().enumerate() {
        if v > x[best] {
            best = i;
        }
    }
    best
}

/// Scales `p` to sum 1 (left alone when the sum is 0).
fn normalize(p: &mut [f64]) {
    let s = crate::nn::simd::sum_body(p);
    if s > 0.0 {
        let inv = 1.0 / s;
        p.iter_mut().for_each(|x| *x *= inv);
    }
}

/// Draws an index from probabilities `p` (summing to 1 up to rounding) by the inverse CDF of one
/// uniform draw. Zero-probability entries are never returned.
pub fn sample<R: rand::Rng + ?Sized>(p: &[f64], rng: &mut R) -> u32 {
    let total: f64 = p.iter().sum();
    let u = rng.random::<f64>() * total;
    let mut acc = 0.0;
    let mut last = 0;
    for (i, &x) in p.iter().enumerate() {
        if x > 0.0 {
            acc += x;
            last = i;
            if u < acc {
                return i as u32;
            }
        }
    }
    last as u32
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn temperature_top_k_top_p() {
        let logits = [1.0f32, 3.0, 2.0, 3.0, -1.0];
        let g = Sampling::greedy().probs(&logits).unwrap();
        assert_eq!(g, vec![0.0, 1.0, 0.0, 0.0, 0.0]);
        let p = Sampling::default().probs(&logits).unwrap();
        let e: Vec<f64> = logits.iter().map(|&x| (x as f64).exp()).collect();
        let s: f64 = e.iter().sum();
        for (a, b) in p.iter().zip(&e) {
            assert!((a / (b / s) - 1.0).abs() < 1e-6);
        }
        // top-2 keeps both tied 3.0 logits
        let k = Sampling { top_k: Some(2), ..Default::default() }.probs(&logits).unwrap();
        assert_eq!(k.iter().filter(|&&x| x > 0.0).count(), 2);
        assert!((k[1] - 0.5).abs() < 1e-12 && (k[3] - 0.5).abs() < 1e-12);
        // top-p 0.5 with probs sorted: the two tied 3.0 tokens hold > 0.5 together
        let n = Sampling { top_p: Some(0.5), ..Default::default() }.probs(&logits).unwrap();
        assert_eq!(n.iter().filter(|&&x| x > 0.0).count(), 2);
        assert!(Sampling { temperature: -1.0, ..Default::default() }.validate().is_err());
        assert!(Sampling { top_p: Some(0.0), ..Default::default() }.validate().is_err());
        assert!(Sampling::default().probs(&[1.0, f32::NAN]).is_err());
        // a temperature whose inverse overflows f32: the point mass at the maximum, no NaN
        let tiny = Sampling { temperature: 1e-300, ..Default::default() }.probs(&logits).unwrap();
        assert_eq!(tiny, vec![0.0, 0.5, 0.0, 0.5, 0.0]);
    }
}

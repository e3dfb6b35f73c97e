//! The draft length γ: fixed, grown and shrunk by a heuristic, or chosen from the measured
//! acceptance rate and cost ratio with the formula of Leviathan et al. (2023).
//!
//! Under the i.i.d. acceptance model (each drafted token accepted with probability α), one round
//! emits E\[L\] = (1 − α^{γ+1}) / (1 − α) tokens (Leviathan eq. 1) and costs γ draft steps plus one
//! verifier pass; with c = (time of a draft step) / (time of a verifier pass) the expected
//! wall-time speedup over verifier-only decoding is
//! S(α, γ, c) = (1 − α^{γ+1}) / ((1 − α)(γc + 1)) (Leviathan Theorem 3.8).

/// How γ is chosen each round.
#[derive(Clone, Copy, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum GammaPolicy {
    /// The same γ every round.
    Fixed(usize),
    /// Hugging Face's "heuristic" schedule: γ + 2 after a fully accepted round, γ − 1 after a
    /// rejection, kept in [min, max].
    Heuristic {
        /// First γ.
        initial: usize,
        /// Smallest γ.
        min: usize,
        /// Largest γ.
        max: usize,
    },
    /// The heuristic for the first rounds, then γ = argmax over 1..=max of S(α̂, γ, ĉ) with α̂
    /// and ĉ measured so far in this generation.
    Auto {
        /// Largest γ considered.
        max: usize,
    },
}

impl Default for GammaPolicy {
    fn default() -> Self {
        GammaPolicy::Auto { max: 12 }
    }
}

/// Expected tokens per round, (1 − α^{γ+1}) / (1 − α) (γ + 1 when α = 1).
pub fn expected_tokens(alpha: f64, gamma: usize) -> f64 {
    if alpha >= 1.0 {
        return gamma as f64 + 1.0;
    }
    (1.0 - alpha.powi(gamma as i32 + 1)) / (1.0 - alpha)
}

/// Predicted wall-time speedup S(α, γ, c) = E\[L\] / (γc + 1).
pub fn predicted_speedup(alpha: f64, gamma: usize, cost_ratio: f64) -> f64 {
    expected_tokens(alpha, gamma) / (gamma as f64 * cost_ratio + 1.0)
}

/// The γ in 1..=max with the largest predicted speedup (the smallest such γ on ties).
pub fn best_gamma(alpha: f64, cost_ratio: f64, max: usize) -> usize {
    let mut best = (1, predicted_speedup(alpha, 1, cost_ratio));
    for g in 2..=max.max(1) {
        let s = predicted_speedup(alpha, g, cost_ratio);
        if s > best.1 * (1.0 + 1e-12) {
            best = (g, s);
        }
    }
    best.0
}

/// Rounds spent on the heuristic before [`GammaPolicy::Auto`] trusts its estimates.
const AUTO_WARMUP_ROUNDS: usize = 4;

/// Running state of a [`GammaPolicy`] over one generation.
#[derive(Clone, Debug)]
pub struct GammaController {
    policy: GammaPolicy,
    current: usize,
    rounds: usize,
    accepted: usize,
    trials: usize,
}

impl GammaController {
    /// Starts a generation.
    pub fn new(policy: GammaPolicy) -> Self {
        let current = match policy {
            GammaPolicy::Fixed(g) => g,
            GammaPolicy::Heuristic { initial, .. } => initial,
            GammaPolicy::Auto { max } => 4.min(max),
        };
        GammaController { policy, current, rounds: 0, accepted: 0, trials: 0 }
    }

    /// The γ for the next round.
    pub fn gamma(&self) -> usize {
        self.current
    }

    /// The per-token acceptance rate estimated so far: kept tokens over acceptance trials, where
    /// a round contributes its kept tokens plus one trial if it ended in a rejection (the
    /// maximum-likelihood estimate under the i.i.d. model with censored rounds). `None` before any
    /// trial.
    pub fn alpha(&self) -> Option<f64> {
        (self.trials > 0).then(|| self.accepted as f64 / self.trials as f64)
    }

    /// Records a round that drafted `gamma` tokens and kept `accepted`, with the measured cost
    /// ratio c so far, and picks the next γ.
    pub fn update(&mut self, gamma: usize, accepted: usize, cost_ratio: Option<f64>) {
        if gamma == 0 {
            return;
        }
        self.rounds += 1;
        self.accepted += accepted;
        self.trials += accepted + usize::from(accepted < gamma);
        let heuristic = |cur: usize, min: usize, max: usize| {
            if accepted == gamma {
                (cur + 2).min(max)
            } else {
                cur.saturating_sub(1).max(min)
            }
        };
        self.current = match self.policy {
            GammaPolicy::Fixed(g) => g,
            GammaPolicy::Heuristic { min, max, .. } => heuristic(self.current, min.max(1), max.max(1)),
            GammaPolicy::Auto { max } => match (self.alpha(), cost_ratio) {
                (Some(a), Some(c)) if self.rounds >= AUTO_WARMUP_ROUNDS => best_gamma(a.min(0.999), c, max),
                _ => heuristic(self.current, 1, max.max(1)),
            },
        };
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn leviathan_numbers() {
        // Leviathan §3: α = 0.8, γ = 5 gives E[L] ≈ 3.69; Table 1 (c = 0) 3.69× speed.
        assert!((expected_tokens(0.8, 5) - 3.68928).abs() < 1e-4);
        assert!((predicted_speedup(0.8, 5, 0.0) - 3.68928).abs() < 1e-4);
        // γ = 1: S = (1 + α)/(1 + c)
        assert!((predicted_speedup(0.6, 1, 0.2) - 1.6 / 1.2).abs() < 1e-12);
        // c ≥ α: no γ > 1 helps more than γ = 1
        assert_eq!(best_gamma(0.3, 0.5, 10), 1);
        assert!(best_gamma(0.9, 0.02, 16) > 5);
    }

    #[test]
    fn controllers() {
        let mut h = GammaController::new(GammaPolicy::Heuristic { initial: 3, min: 1, max: 6 });
        h.update(3, 3, None);
        assert_eq!(h.gamma(), 5);
        h.update(5, 5, None);
        assert_eq!(h.gamma(), 6);
        h.update(6, 2, None);
        assert_eq!(h.gamma(), 5);
        assert!((h.alpha().unwrap() - 10.0 / 11.0).abs() < 1e-12);
        let mut a = GammaController::new(GammaPolicy::Auto { max: 10 });
        for _ in 0..6 {
            a.update(a.gamma(), 0, Some(0.1));
        }
        assert_eq!(a.gamma(), 1);
    }
}

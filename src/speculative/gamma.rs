//! The draft length γ: fixed, grown and shrunk by a heuristic, or chosen from the measured
//! acceptance rate and cost ratio with the formula of Leviathan et al. (2023).
//!
//! Under the i.i.d. acceptance model (each drafted token accepted with probability α), one round
//! emits E\[L\] = (1 − α^{γ+1}) / (1 − α) tokens (Leviathan eq. 1) and costs γ draft steps plus one
//! verifier pass; with c = (time of a draft step) / (time of a verifier pass) the expected
//! wall-time speedup over verifier-only decoding is
//! S(α, γ, c) = (1 − α^{γ+1}) / ((1 − α)(γc + 1)) (Leviathan Theorem 3.8).
//!
//! That formula takes a verifier pass over γ + 1 positions to cost as much as a pass over one,
//! true when the pass is bound by reading the weights (a large model on a GPU), not on a CPU,
//! where every extra position adds its multiply–adds. [`PassCost`] measures the verifier's
//! pass time as an affine function of the positions scored, t(k) = a + b·k, and the draft's time
//! per step d; a round then costs a + b·(γ + 1) + γ·d against a + b per token for the verifier
//! alone, so
//! S(α, γ) = E\[L\]·(a + b) / (a + b·(γ + 1) + γ·d) ([`PassCost::speedup`]), which is
//! Leviathan's S with c = d/a when b = 0. [`GammaPolicy::Auto`] maximizes it.
//!
//! ```
//! use s4::speculative::{best_gamma, expected_tokens, predicted_speedup, CostFit};
//! // Leviathan et al. §3: α = 0.8, γ = 5 emits 3.69 tokens per round on average
//! assert!((expected_tokens(0.8, 5) - 3.6893).abs() < 1e-4);
//! // with a free verifier pass and a draft step at 5% of it, long drafts pay
//! assert!(best_gamma(0.9, 0.05, 16) >= 6);
//! // a CPU verifier: 2 ms + 0.4 ms per scored position, draft step 0.1 ms, measured online
//! let mut fit = CostFit::default();
//! for k in [1usize, 3, 5, 9] {
//!     fit.add_pass(k, 2e-3 + 4e-4 * k as f64);
//! }
//! fit.add_draft(10, 1e-3);
//! let cost = fit.cost().unwrap();
//! assert!((cost.per_position - 4e-4).abs() < 1e-12 && (cost.fixed - 2e-3).abs() < 1e-12);
//! // the positions' cost makes shorter drafts best, and the speedup smaller than Leviathan's
//! let g = cost.best_gamma(0.9, 16);
//! assert!(g < best_gamma(0.9, 0.05, 16));
//! assert!(cost.speedup(0.9, g) < predicted_speedup(0.9, g, 0.05));
//! ```

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
    /// The heuristic for the first rounds, then γ = argmax over 1..=max of the cost model's
    /// speedup [`PassCost::speedup`] with α̂ and the costs (a, b, d) measured so far in this
    /// generation.
    Auto {
        /// Largest γ considered.
        max: usize,
    },
}

impl Default for GammaPolicy {
    fn default() -> Self {
        GammaPolicy::Auto { max: 16 }
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

/// Measured costs of a speculative round: the verifier's pass time t(k) = a + b·k over k
/// scored positions, fitted by least squares over the passes seen so far, and the draft's time
/// per step d (seconds).
#[derive(Clone, Copy, Debug, Default, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct PassCost {
    /// a: the part of a verifier pass that does not grow with the positions (reading the weights).
    pub fixed: f64,
    /// b: the verifier's extra time per scored position.
    pub per_position: f64,
    /// d: the time of one draft step.
    pub draft_step: f64,
}

impl PassCost {
    /// Seconds of one round with γ drafted tokens: a + b·(γ + 1) + γ·d.
    pub fn round_seconds(&self, gamma: usize) -> f64 {
        let g = gamma as f64;
        self.fixed + self.per_position * (g + 1.0) + g * self.draft_step
    }

    /// Predicted speedup over verifier-only decoding (a + b per token) with per-token acceptance
    /// α: E\[L\](α, γ)·(a + b) / (a + b·(γ + 1) + γ·d). With b = 0 it is
    /// [`predicted_speedup`]`(α, γ, d/a)`.
    pub fn speedup(&self, alpha: f64, gamma: usize) -> f64 {
        expected_tokens(alpha, gamma) * (self.fixed + self.per_position) / self.round_seconds(gamma).max(1e-300)
    }

    /// The γ in 1..=max with the largest [`speedup`](Self::speedup) (the smallest on ties).
    pub fn best_gamma(&self, alpha: f64, max: usize) -> usize {
        let mut best = (1, self.speedup(alpha, 1));
        for g in 2..=max.max(1) {
            let s = self.speedup(alpha, g);
            if s > best.1 * (1.0 + 1e-12) {
                best = (g, s);
            }
        }
        best.0
    }
}

/// A round or pass is counted as at most this many times what it should take (the median of its
/// window of rounds, the fitted pass time): on a shared host one round in a few dozen takes
/// 0.3–1.2 ms where its neighbours take 0.16–0.3 (the host taking the core), and such a round
/// decided verdicts alone. In single `s4 speculate` runs of the demo pair one 1.2 ms round in a
/// window of six sent the default into 16 plain rounds, and one as the first pass over 7
/// positions made the cost fit keep γ at 2 for the rest of the generation (1.01× the verifier
/// alone, against 1.4–1.7× for a fixed γ = 4). A host that turns slower for good (2× here) still
/// moves the medians.
const SPIKE: f64 = 2.5;

/// Σ `seconds`, each counted as at most [`SPIKE`] times their median.
fn despiked_sum(seconds: &[f64]) -> f64 {
    let mut sorted = seconds.to_vec();
    sorted.sort_by(f64::total_cmp);
    let Some(&median) = sorted.get(sorted.len() / 2) else { return 0.0 };
    seconds.iter().map(|&s| s.min(SPIKE * median)).sum()
}

/// Passes kept per number of positions by [`CostFit`].
const FIT_SAMPLES: usize = 16;

/// Online fit of the verifier's pass time against the positions it scored, and the mean
/// draft-step time: the inputs of [`PassCost`]. The line is the least-squares fit through the
/// median time at each number of positions (of its last 16 passes), weighted by
/// their counts: in the loop one pass in a few dozen takes 1–2 ms more than the others (a first
/// use of that many positions, the host taking the core), and one such pass bent a plain
/// least-squares slope enough that `--gamma auto` drafted 2–3 tokens where 8 pay more.
#[derive(Clone, Debug, Default)]
pub struct CostFit {
    /// Per number of positions, its recent pass times (seconds), oldest first.
    passes: std::collections::BTreeMap<usize, std::collections::VecDeque<f64>>,
    /// The line through them, (a, b), refitted as each pass is added (read every round).
    line: Option<(f64, f64)>,
    draft_seconds: f64,
    draft_steps: usize,
}

impl CostFit {
    /// Records a verifier pass over `positions` new positions that took `seconds`, as at most
    /// 2.5 times the fitted time once passes of two lengths are in the fit.
    pub fn add_pass(&mut self, positions: usize, seconds: f64) {
        let seconds = match self.line {
            Some((a, b)) if self.passes.len() >= 2 && self.draft_steps > 0 => {
                seconds.min(SPIKE * (a + b * positions as f64).max(1e-9))
            }
            _ => seconds,
        };
        let times = self.passes.entry(positions).or_default();
        if times.len() == FIT_SAMPLES {
            times.pop_front();
        }
        times.push_back(seconds);
        self.line = Some(self.fit_line());
    }

    /// Records `steps` draft steps that took `seconds` in all.
    pub fn add_draft(&mut self, steps: usize, seconds: f64) {
        self.draft_steps += steps;
        self.draft_seconds += seconds;
    }

    /// The fitted costs, once there is a pass and a draft step: b is the weighted least-squares
    /// slope through the medians, clamped to [0, mean time / mean positions] (0 while every pass
    /// scored the same number of positions, which is Leviathan's model), and a the intercept at
    /// that slope.
    pub fn cost(&self) -> Option<PassCost> {
        let (fixed, per_position) = self.line.filter(|_| self.draft_steps > 0)?;
        Some(PassCost { fixed, per_position, draft_step: self.draft_seconds / self.draft_steps as f64 })
    }

    /// (a, b) through the passes' medians (see [`cost`](Self::cost)); at least one pass.
    fn fit_line(&self) -> (f64, f64) {
        let (mut n, mut sk, mut skk, mut st, mut skt) = (0.0, 0.0, 0.0, 0.0, 0.0);
        for (&k, times) in &self.passes {
            let mut sorted: Vec<f64> = times.iter().copied().collect();
            sorted.sort_by(f64::total_cmp);
            let half = sorted.len() / 2;
            let median = if sorted.len() % 2 == 1 { sorted[half] } else { 0.5 * (sorted[half - 1] + sorted[half]) };
            let (w, k) = (sorted.len() as f64, k as f64);
            n += w;
            sk += w * k;
            skk += w * k * k;
            st += w * median;
            skt += w * k * median;
        }
        let (mk, mt) = (sk / n, st / n);
        let var = skk / n - mk * mk;
        let slope = if var > 1e-9 { (skt / n - mk * mt) / var } else { 0.0 };
        let b = slope.clamp(0.0, mt / mk.max(1.0));
        ((mt - b * mk).max(0.0), b)
    }
}

/// The acceptance rate [`PayoffGuard::alpha_estimate`] starts from before any is measured (the
/// demo pair's per-token rates are 0.7–0.95).
pub const PRIOR_ALPHA: f64 = 0.7;

/// The weight of [`PRIOR_ALPHA`] in [`PayoffGuard::alpha_estimate`], in samples.
const PRIOR_WEIGHT: f64 = 4.0;
/// The cost model's best speedup (with [`PayoffGuard::alpha_estimate`]) a guard asks for before a
/// speculative round: the model leaves out the rounds' bookkeeping and sampling, so a pair it
/// gives 1.1× only breaks even (the tiny pair of the README).
const TRY_GAIN: f64 = 1.15;
/// Agreement samples after which a predicted speedup below [`TRY_GAIN`] ends speculation for the
/// generation (α̂ within about ±0.1), so that the drafter stops working beside the passes.
const CONFIDENT_AGREEMENTS: usize = 16;

/// Rounds spent on the heuristic before [`GammaPolicy::Auto`] trusts its estimates.
const AUTO_WARMUP_ROUNDS: usize = 4;
/// [`GammaPolicy::Auto`] at most doubles γ from one round to the next. After a few rounds that
/// kept everything α̂ is near 1 and the model asks for the longest draft at once; the first pass
/// over that many positions pays first-use costs (the demo verifier: 4.5 ms for 33 positions,
/// 2.5 ms later), and that one sample bent the fitted per-position cost upward, so the policy ran
/// γ = 2–3 for the rest of the generation where 8 pays more.
const AUTO_GROWTH: usize = 2;

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

    /// Before the first round: starts [`GammaPolicy::Auto`] at the γ its cost model prefers on
    /// `cost` (measured in plain rounds, [`PayoffGuard::plain_cost`]) with the acceptance rate
    /// `alpha` ([`PayoffGuard::alpha_estimate`]), instead of 4: a verifier whose extra positions
    /// cost much against its pass (the tiny pair: b ≈ 0.2·t(1)) starts at γ = 1 rather than
    /// paying for four drafted tokens before any is kept; the heuristic grows γ from there while
    /// drafts are kept.
    pub fn start_from(&mut self, cost: PassCost, alpha: f64) {
        if let (GammaPolicy::Auto { max }, 0) = (self.policy, self.rounds) {
            self.current = cost.best_gamma(alpha.min(0.999), max);
        }
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

    /// Records a round that drafted `gamma` tokens and kept `accepted`, with the costs measured so
    /// far, and picks the next γ.
    pub fn update(&mut self, gamma: usize, accepted: usize, cost: Option<PassCost>) {
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
            GammaPolicy::Auto { max } => match (self.alpha(), cost) {
                (Some(a), Some(c)) if self.rounds >= AUTO_WARMUP_ROUNDS => {
                    c.best_gamma(a.min(0.999), max).min(AUTO_GROWTH * gamma)
                }
                _ => heuristic(self.current, 1, max.max(1)),
            },
        };
    }
}

/// Plain rounds before the first probe after speculation was found not to pay; doubled after
/// every probe that still does not pay, up to [`MAX_BACKOFF`].
const FIRST_BACKOFF: usize = 16;
/// Speculative rounds measured before their rate is compared with plain rounds': the tokens a
/// round keeps are nearly geometric (at T = 1 with α ≈ 0.6 one round in three keeps nothing), so a
/// verdict from two or three rounds falls back on pairs where speculation pays (the demo pair at
/// T = 1: 0.99× with a verdict after two rounds, against 1.62× for a fixed γ = 4).
const JUDGED_ROUNDS: usize = 6;
/// How much faster than plain rounds the first window of speculative rounds (after the start or
/// a back-off) must be: a pair that only breaks even gains nothing from speculating but the noise
/// of its verdicts (and the speculative rounds' spread), so it decodes plainly.
const REQUIRED_GAIN: f64 = 1.05;
/// How fast, against plain rounds, the later windows of a stretch must be to go on. Each switch
/// to plain rounds costs (the drafter then catches up beside their passes, which slows them: the
/// tiny pair's plain rounds ran 11% slower than the verifier alone), so a stretch that still at
/// least breaks even goes on: with the start's 1.05 for every window, the tiny pair, whose
/// speculation gains 2–8%, switched back and forth and ran at 0.93–0.94 times the verifier alone.
const KEEP_GAIN: f64 = 1.0;
/// The longest draft the guard's predictions consider.
const LONGEST_DRAFT: usize = 32;
/// The longest stretch of plain rounds between probes.
const MAX_BACKOFF: usize = 1024;
/// Plain rounds whose median is the guard's plain cost.
const PLAIN_SAMPLES: usize = 64;

/// The guard of the default policies: measures speculative rounds against plain ones (one
/// verifier pass, one token) as they go and falls back to plain decoding where speculation does
/// not pay.
///
/// The first three rounds are plain: the prompt's pass t(P) and one-token passes t(1) (the
/// fastest plain round so far) give the verifier's cost per extra position
/// b = (t(P) − t(1)) / (P − 1), and one draft step is timed (d). From then on, while rounds are
/// plain, the drafter catches up beside each pass on the other core
/// ([`background_chunk`](Self::background_chunk)), and wherever a plain round emitted a token it
/// measures how likely its draft would have been kept there
/// ([`record_agreement`](Self::record_agreement)): the guard knows α̂ before it risks a
/// speculative round.
///
/// Before each speculative round the guard asks two questions. Could speculation pay at all?
/// With every drafted token kept, a round of γ tokens emits γ + 1 for t(1) + b·γ + d·γ, so the
/// best speedup is S* = max_γ (γ + 1)·t(1) / (t(1) + (b + d)·γ); if S* ≤ 1, or if the time S*
/// could save on the tokens still to come does not repay twice the drafter's catching up on the
/// tokens it has not seen (d each), it gives up. Does it pay at the measured acceptance? The cost
/// model [`PassCost::speedup`] with [`alpha_estimate`](Self::alpha_estimate) (the prior
/// [`PRIOR_ALPHA`] until measured) must reach 1.15 (the model leaves out the rounds'
/// bookkeeping); below it the round is plain, and after 16 samples the guard gives up. The fifth
/// round is plain.
///
/// The first speculative round is not measured (it carries the first use of the draft's stepping
/// and of the verifier's pass over several positions); after every six more, their tokens per
/// second (their catching up excluded, each round counted as at most 2.5 times the window's
/// median) must be at least 1.05 times those of plain rounds (the lower quartile of the
/// last 64) in the first window of a stretch, and at least as many in the later ones; otherwise
/// the next 16, 32, …, 1024 rounds are plain, each stretch followed by a probe (speculative rounds
/// that pass the same checks first) judged on six rounds of its own. Three rounds that would have
/// lost even had every drafted token been kept end speculation for the generation.
///
/// ```
/// use s4::speculative::gamma::PayoffGuard;
/// let run = |pass_1: f64, per_position: f64, step: f64, spec: (usize, f64, usize)| {
///     let mut g = PayoffGuard::default();
///     g.record_prompt(32, pass_1 + 31.0 * per_position);
///     for round in 0..8 {
///         if g.needs_draft_step() {
///             g.set_draft_step(step);
///         }
///         if g.speculate_now(100 - round, 1) {
///             g.record_speculative(spec.0, spec.1, spec.2)
///         } else {
///             g.record_plain(pass_1)
///         }
///     }
///     g
/// };
/// // a 1 ms pass, 0.05 ms per extra position, 0.1 ms draft steps; 3 tokens per 2 ms round: it pays
/// assert!(run(1e-3, 5e-5, 1e-4, (3, 2e-3, 5)).speculate_now(90, 1));
/// // a draft step as costly as the pass: even full acceptance cannot pay, so it never tries
/// let g = run(1e-3, 5e-4, 1e-3, (1, 4e-3, 3));
/// assert!(g.gave_up());
/// ```
#[derive(Clone, Debug, Default)]
pub struct PayoffGuard {
    rounds: usize,
    prompt: Option<(usize, f64)>,
    spec_tokens: f64,
    /// The seconds of each speculative round of the window being judged.
    spec_seconds: Vec<f64>,
    spec_best_tokens: f64,
    warmed_up: bool,
    draft_step: Option<f64>,
    /// The most recent plain rounds' seconds (at most [`PLAIN_SAMPLES`]).
    plain_seconds: std::collections::VecDeque<f64>,
    plain_fastest: Option<f64>,
    plain_rounds: usize,
    plain_left: usize,
    backoff: usize,
    /// Windows of speculative rounds judged to pay since the last back-off (or the start).
    paying_windows: usize,
    never: bool,
    /// Σ and count of [`record_agreement`](Self::record_agreement)'s samples.
    agreement_sum: f64,
    agreements: usize,
    background_step: Option<f64>,
}

impl PayoffGuard {
    /// Records the prompt's round: a plain pass over `positions` that took `seconds`.
    pub fn record_prompt(&mut self, positions: usize, seconds: f64) {
        self.rounds += 1;
        self.prompt = Some((positions, seconds));
    }

    /// Whether the loop should time one draft step ([`set_draft_step`](Self::set_draft_step))
    /// before asking for the next round.
    pub fn needs_draft_step(&self) -> bool {
        !self.never && self.draft_step.is_none() && self.plain_rounds > 0
    }

    /// Sets the time of one draft step.
    pub fn set_draft_step(&mut self, seconds: f64) {
        self.draft_step = Some(seconds);
    }

    /// Whether the next round should speculate, with `remaining` tokens still to generate and the
    /// drafter `catch_up` tokens behind.
    pub fn speculate_now(&mut self, remaining: usize, catch_up: usize) -> bool {
        if self.never || self.rounds < 3 || self.plain_left > 0 || self.rounds == 4 {
            return false;
        }
        if self.hopeless(remaining, catch_up) {
            // nothing measured later can change the bound but the tokens left, which only fall
            self.never = true;
            return false;
        }
        // the cost model with the acceptance rate measured so far (the prior until measured)
        if let Some(cost) = self.plain_cost() {
            let alpha = self.alpha_estimate();
            let predicted = cost.speedup(alpha, cost.best_gamma(alpha, LONGEST_DRAFT));
            if predicted < TRY_GAIN {
                if self.agreements >= CONFIDENT_AGREEMENTS {
                    self.never = true;
                }
                return false;
            }
        }
        true
    }

    /// Sets the time of one draft step taken beside a plain round's pass
    /// ([`background_chunk`](Self::background_chunk)).
    pub fn set_background_step(&mut self, seconds: f64) {
        self.background_step = Some(seconds);
    }

    /// Records how likely a drafted token would have been kept at one position of a plain round:
    /// min(1, q(y)/p(y)) for the token y the verifier emitted with probability p(y) there, q the
    /// draft's (warped) distribution at the same position, computed when the drafter caught up
    /// beside a later pass. Over y ~ p its mean is Σ_y min(p(y), q(y)) = α, the acceptance rate
    /// of speculative sampling (Leviathan et al. 2023, §3.1); at temperature 0 (p and q point
    /// masses) it is 1 where the draft's arg-max is y. So the guard knows α before it risks a
    /// speculative round.
    pub fn record_agreement(&mut self, value: f64) {
        self.agreement_sum += value.clamp(0.0, 1.0);
        self.agreements += 1;
    }

    /// The mean of the [`record_agreement`](Self::record_agreement) samples and their number
    /// (`None` before the first).
    pub fn measured_alpha(&self) -> Option<(f64, usize)> {
        (self.agreements > 0).then(|| (self.agreement_sum / self.agreements as f64, self.agreements))
    }

    /// α measured in plain rounds ([`record_agreement`](Self::record_agreement)), shrunk toward
    /// [`PRIOR_ALPHA`] as if the prior were 4 samples.
    pub fn alpha_estimate(&self) -> f64 {
        (PRIOR_ALPHA * PRIOR_WEIGHT + self.agreement_sum) / (PRIOR_WEIGHT + self.agreements as f64)
    }

    /// How many of the `behind` tokens the drafter has not seen it should consume during a plain
    /// round's one-position pass, on the other core ([`crate::speculative`]'s plain rounds): as
    /// many draft steps as fit in that pass, k = t(1)/d, at least 2 (the round adds one token to
    /// catch up on), at most `behind`. 0 before t(1) and d are measured, once the guard gave up,
    /// and early in a stretch of plain rounds: the drafter starts catching up when the stretch's
    /// rounds left, k − 1 tokens each, just cover `behind` (a drafter working beside the pass
    /// slows it a little, 5% on the tiny pair, so it works only when a probe will need it).
    pub fn background_chunk(&self, behind: usize) -> usize {
        match (self.draft_step, self.plain_fastest) {
            (Some(_), Some(t1)) if !self.never => {
                // two steps until a chunk measured them beside a pass (the timed step alone
                // ran at half that cost on the tiny pair)
                let k = self.background_step.map_or(2, |d| ((t1 / d.max(1e-12)) as usize).clamp(2, 1 << 20));
                if self.plain_left.saturating_sub(1) * (k - 1) >= behind {
                    0
                } else {
                    k.min(behind)
                }
            }
            _ => 0,
        }
    }

    /// The costs measured before any speculative round: t(1) the fastest plain round (the first
    /// ones carry first-use costs that flatter speculation), b = (t(P) − t(1)) / (P − 1) from the
    /// prompt's pass over P positions, d the timed draft step or, if slower, the last step taken
    /// beside a pass (after the verifier's pass, as in a round; the timed step alone ran at half
    /// that on the tiny pair); `None` until all are measured.
    pub fn plain_cost(&self) -> Option<PassCost> {
        let (Some(d), Some(t1)) = (self.draft_step, self.plain_fastest) else { return None };
        let d = self.background_step.map_or(d, |b| b.max(d));
        let b = match self.prompt {
            Some((p, tp)) if p > 1 => ((tp - t1) / (p - 1) as f64).clamp(0.0, t1),
            _ => 0.0,
        };
        Some(PassCost { fixed: t1 - b, per_position: b, draft_step: d })
    }

    /// S* ≤ 1, or the best-case saving on `remaining` tokens does not repay `catch_up` draft steps.
    fn hopeless(&self, remaining: usize, catch_up: usize) -> bool {
        let Some(cost) = self.plain_cost() else { return false };
        let (t1, d) = (cost.fixed + cost.per_position, cost.draft_step);
        let best = cost.speedup(1.0, cost.best_gamma(1.0, LONGEST_DRAFT));
        // the saving assumes every drafted token kept: ask it to repay the catching up twice
        best <= 1.0 || remaining as f64 * t1 * (1.0 - 1.0 / best) <= 2.0 * catch_up as f64 * d
    }

    /// The lower quartile of the recent plain rounds. The first ones carry first-use costs (the
    /// first one-position pass after the prompt's took twice a later one on the tiny pair) and
    /// are most of the samples early in a generation: a mean, and even a median of those few,
    /// flattered speculation (the tiny pair at T = 1 judged 25k tokens/s of plain rounds that ran
    /// at 28–32k).
    fn plain_seconds_per_round(&self) -> Option<f64> {
        let mut t: Vec<f64> = self.plain_seconds.iter().copied().collect();
        t.sort_by(f64::total_cmp);
        t.get(t.len() / 4).copied()
    }

    /// Tokens per second of plain rounds, once one was measured.
    pub fn plain_rate(&self) -> Option<f64> {
        self.plain_seconds_per_round().map(|t| 1.0 / t.max(1e-12))
    }

    /// Whether the guard concluded that speculation cannot pay for this generation.
    pub fn gave_up(&self) -> bool {
        self.never
    }

    /// Records a speculative round that emitted `tokens` in `seconds` (the drafter's catching up
    /// excluded) and would have emitted `best_tokens` had every drafted token been kept.
    pub fn record_speculative(&mut self, tokens: usize, seconds: f64, best_tokens: usize) {
        self.rounds += 1;
        if !self.warmed_up {
            // the first speculative round pays the first use of the draft's stepping and of the
            // verifier's pass over several positions (up to 5× a later round here): not a sample
            self.warmed_up = true;
            return;
        }
        // a window of rounds, judged once it holds JUDGED_ROUNDS and then started afresh: each
        // verdict rests on rounds no earlier verdict saw (a moving average judged after every
        // round kept the rounds that caused a back-off, so the probe after the stretch failed
        // on them again, and one unlucky stretch made the rest of a generation plain)
        self.spec_tokens += tokens as f64;
        self.spec_seconds.push(seconds);
        self.spec_best_tokens += best_tokens as f64;
        let Some(plain_rate) = self.plain_rate() else { return };
        let window = self.spec_seconds.len();
        let seconds = despiked_sum(&self.spec_seconds).max(1e-12);
        if window >= 3 && self.spec_best_tokens / seconds < plain_rate {
            // even keeping everything, these rounds would have lost: the draft is too slow
            self.never = true;
        } else if window >= JUDGED_ROUNDS {
            let required = if self.paying_windows == 0 { REQUIRED_GAIN } else { KEEP_GAIN };
            if self.spec_tokens / seconds < required * plain_rate {
                self.backoff = (self.backoff * 2).clamp(FIRST_BACKOFF, MAX_BACKOFF);
                self.plain_left = self.backoff;
                self.paying_windows = 0;
            } else {
                self.backoff = 0;
                self.paying_windows += 1;
            }
            (self.spec_tokens, self.spec_best_tokens) = (0.0, 0.0);
            self.spec_seconds.clear();
        }
    }

    /// Records a plain round (one pass, one token) that took `seconds`.
    pub fn record_plain(&mut self, seconds: f64) {
        self.rounds += 1;
        if self.plain_seconds.len() == PLAIN_SAMPLES {
            self.plain_seconds.pop_front();
        }
        self.plain_seconds.push_back(seconds);
        self.plain_fastest = Some(self.plain_fastest.map_or(seconds, |f| f.min(seconds)));
        self.plain_rounds += 1;
        // a stretch of plain rounds ends with a probe
        self.plain_left = self.plain_left.saturating_sub(1);
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
        let cost = PassCost { fixed: 1.0, per_position: 0.0, draft_step: 0.1 };
        for _ in 0..6 {
            a.update(a.gamma(), 0, Some(cost));
        }
        assert_eq!(a.gamma(), 1);
    }

    /// A guard that measured a 1 ms pass over one position, 0.05 ms per further position, a
    /// 0.1 ms draft step and a draft kept 90% of the time.
    fn agreeing_guard() -> PayoffGuard {
        let mut g = PayoffGuard::default();
        g.record_prompt(32, 1e-3 + 31.0 * 5e-5);
        g.record_plain(1e-3);
        g.set_draft_step(1e-4);
        for _ in 0..16 {
            g.record_agreement(0.9);
        }
        g
    }

    /// After a stretch of plain rounds, a probe is judged on its own rounds: rounds that pay
    /// resume speculation at once. (A moving average over all speculative rounds still held the
    /// losing rounds that caused the back-off, failed the probe on them and doubled the stretch.)
    #[test]
    fn a_probe_is_judged_on_its_own_rounds() {
        let mut g = agreeing_guard();
        // a round: speculative ones emit `tokens` in 2 ms, plain ones 1 token in 1 ms
        let round = |g: &mut PayoffGuard, tokens: usize| {
            let spec = g.speculate_now(10_000, 1);
            if spec {
                g.record_speculative(tokens, 2e-3, 5)
            } else {
                g.record_plain(1e-3)
            }
            spec
        };
        // losing rounds (half the plain rate) until the guard backs off: a warm-up round and six
        // judged ones, then a plain round
        let mut speculative = 0;
        for _ in 0..40 {
            let spec = round(&mut g, 1);
            if speculative >= 7 && !spec {
                break;
            }
            speculative += usize::from(spec);
        }
        assert!(speculative == 7 && !g.gave_up(), "it speculated 7 rounds ({speculative}), then backed off");
        // rounds that pay (2.5× the plain rate): the first stretch of 16 and one probe of six
        // judged rounds, then speculation goes on
        let spec: Vec<bool> = (0..60).map(|_| round(&mut g, 5)).collect();
        assert!(spec[..15].iter().all(|s| !s), "the stretch is plain: {spec:?}");
        assert!(spec[20..].iter().all(|&s| s), "the probe's own rounds resume speculation: {spec:?}");
    }

    /// [`agreeing_guard`] past its first rounds: plain ones (1 ms) and the unmeasured first
    /// speculative round; the next speculative round is the first of a judged window.
    fn warmed_up_guard() -> PayoffGuard {
        let mut g = agreeing_guard();
        while g.rounds < 5 {
            if g.speculate_now(10_000, 1) {
                g.record_speculative(2, 1e-3, 5);
            } else {
                g.record_plain(1e-3);
            }
        }
        g
    }

    /// One round that took ten times its neighbours (the host taking the core) counts as 2.5
    /// times the window's median: a window that pays 1.5× with it does not back off (counted in
    /// full it would be judged at 0.6×); three such rounds out of six still do. A first pass over
    /// a new number of positions ten times the fitted line is counted at 2.5 times it.
    #[test]
    fn a_spike_decides_no_verdict() {
        let window = |spikes: usize| {
            let mut g = warmed_up_guard();
            // 1.5 tokens per ms against the plain rounds' 1, the last `spikes` rounds ten times slower
            for r in 0..JUDGED_ROUNDS {
                assert!(g.speculate_now(10_000, 1));
                g.record_speculative(2, if r + spikes >= JUDGED_ROUNDS { 1.3333e-2 } else { 1.3333e-3 }, 5);
            }
            g.speculate_now(10_000, 1)
        };
        assert!(window(0), "no spike");
        assert!(window(1), "one spike is clipped");
        assert!(!window(3), "half the window slow is a verdict");
        assert!((despiked_sum(&[1.0, 1.0, 10.0]) - 4.5).abs() < 1e-12);
        let mut fit = CostFit::default();
        fit.add_draft(1, 1e-5);
        fit.add_pass(2, 1.2e-4);
        fit.add_pass(4, 1.4e-4);
        fit.add_pass(8, 1.8e-2);
        let c = fit.cost().unwrap();
        assert!((c.fixed + 8.0 * c.per_position) < 5e-4, "{c:?}");
    }

    /// A stretch starts only at 1.05 times the plain rate and goes on while it at least breaks
    /// even: a window at 1.02 ends no established stretch, but cannot start one.
    #[test]
    fn a_stretch_starts_at_a_gain_and_goes_on_while_it_breaks_even() {
        let guard = warmed_up_guard;
        // windows of six judged speculative rounds, each emitting `rate` times the plain rate
        // (1 token per ms); then whether the guard still speculates
        let run = |g: &mut PayoffGuard, rates: &[f64]| {
            for (w, &rate) in rates.iter().enumerate() {
                for _ in 0..JUDGED_ROUNDS {
                    assert!(g.speculate_now(10_000, 1), "window {w} speculates");
                    g.record_speculative(2, 2e-3 / rate, 5);
                }
            }
            g.speculate_now(10_000, 1)
        };
        assert!(run(&mut guard(), &[1.2, 1.02, 1.02]), "an established stretch goes on at 1.02");
        assert!(!run(&mut guard(), &[1.02]), "a stretch does not start at 1.02");
        assert!(!run(&mut guard(), &[1.2, 0.97]), "a stretch that loses stops");
    }

    #[test]
    fn measured_acceptance_decides_before_any_speculative_round() {
        // t(1) = 30 µs, 6 µs per extra position, 10 µs draft steps: with the prior α = 0.7 the
        // model's best is 1.7·30 / (24 + 12 + 10) ≈ 1.11 (γ = 1), short of 1.15
        let measured = || {
            let mut g = PayoffGuard::default();
            g.record_prompt(32, 30e-6 + 31.0 * 6e-6);
            g.record_plain(30e-6);
            g.set_draft_step(10e-6);
            g.record_plain(31e-6);
            g
        };
        let mut g = measured();
        assert!((g.alpha_estimate() - PRIOR_ALPHA).abs() < 1e-12);
        assert!(!g.speculate_now(90, 1) && !g.gave_up(), "waits for α̂, plain");
        // the drafter catches up two steps per pass until a chunk measured its steps
        assert_eq!(g.background_chunk(40), 2);
        g.set_background_step(10e-6);
        assert_eq!(g.background_chunk(40), 3);
        assert_eq!(g.background_chunk(1), 1);
        // a draft that agrees: E[L] = 3.71 tokens at γ = 3 for 78 µs, 1.43× → speculate
        for _ in 0..16 {
            g.record_agreement(0.95);
        }
        assert!((g.alpha_estimate() - (0.7 * 4.0 + 0.95 * 16.0) / 20.0).abs() < 1e-12);
        assert!(g.speculate_now(90, 1));
        // a draft that agrees half the time: plain, then given up once measured
        let mut g = measured();
        for i in 0..CONFIDENT_AGREEMENTS {
            assert!(!g.speculate_now(90, 1));
            assert!(!g.gave_up(), "{i} samples");
            g.record_agreement(0.5);
        }
        assert!(!g.speculate_now(90, 1) && g.gave_up());
        assert_eq!(g.background_chunk(40), 0);
    }

    #[test]
    fn affine_cost_model() {
        // b = 0 is Leviathan's formula with c = d/a
        let lev = PassCost { fixed: 2.0, per_position: 0.0, draft_step: 0.1 };
        for g in 1..10 {
            assert!((lev.speedup(0.9, g) - predicted_speedup(0.9, g, 0.05)).abs() < 1e-12);
        }
        assert_eq!(lev.best_gamma(0.9, 30), best_gamma(0.9, 0.05, 30));
        // a cost per position shortens the best draft
        let cpu = PassCost { fixed: 2.0, per_position: 0.5, draft_step: 0.1 };
        assert!(cpu.best_gamma(0.9, 30) < lev.best_gamma(0.9, 30));
        // by hand: α = 0.5, γ = 1: E[L] = 1.5, speedup = 1.5·2.5 / (2 + 1 + 0.1)
        assert!((cpu.speedup(0.5, 1) - 1.5 * 2.5 / 3.1).abs() < 1e-12);
        // the fit recovers t(k) = 2 + 0.5 k exactly, and d
        let mut fit = CostFit::default();
        assert!(fit.cost().is_none());
        for k in [1usize, 3, 5, 2, 9] {
            fit.add_pass(k, 2.0 + 0.5 * k as f64);
        }
        fit.add_draft(4, 0.4);
        let c = fit.cost().unwrap();
        assert!((c.fixed - 2.0).abs() < 1e-12 && (c.per_position - 0.5).abs() < 1e-12, "{c:?}");
        assert!((c.draft_step - 0.1).abs() < 1e-15);
        // one pass size only: no slope (Leviathan's model)
        let mut flat = CostFit::default();
        flat.add_pass(5, 3.0);
        flat.add_pass(5, 3.2);
        flat.add_draft(1, 0.1);
        let c = flat.cost().unwrap();
        assert_eq!(c.per_position, 0.0);
        assert!((c.fixed - 3.1).abs() < 1e-12);
        // a pass far off the line (a first use, a preemption) barely moves the fit
        let mut noisy = CostFit::default();
        for k in [1usize, 3, 3, 5, 5, 9, 9, 1, 9] {
            noisy.add_pass(k, 2.0 + 0.5 * k as f64);
        }
        noisy.add_pass(9, 40.0);
        noisy.add_draft(4, 0.4);
        let c = noisy.cost().unwrap();
        assert!((c.fixed - 2.0).abs() < 1e-12 && (c.per_position - 0.5).abs() < 1e-12, "{c:?}");
    }
}

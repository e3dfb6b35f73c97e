//! Speculative decoding: a cheap draft model proposes γ tokens, the verifier scores them all in
//! one pass, and a verification rule keeps a prefix of them plus one token of its own.
//!
//! An S4 language model is a natural draft: in recurrent mode one token costs O(layers·H·N)
//! whatever the context length, with no KV cache. The verifier (here the GPT-2-layout
//! [`crate::transformer`]) scores γ + 1 positions with matrix–matrix products, which costs
//! little more than one position while the weights, not the arithmetic, bound its speed.
//!
//! ## One round (Leviathan et al. 2023, Algorithm 1; Chen et al. 2023, Algorithm 2)
//!
//! 1. The drafter consumes the committed tokens it has not seen yet and draws x₁…x_γ, xᵢ ~ qᵢ.
//! 2. The verifier consumes the same pending tokens plus x₁…x_γ in one pass and returns
//!    p₁…p_{γ+1}, pᵢ = p(· | prefix, x₁…x_{i−1}).
//! 3. A rule from [`verify`] keeps n of the drafted tokens and emits one more token y.
//! 4. Both models roll back to "prefix + x₁…x_n"; y is pending for the next round.
//!
//! **Why the output is exactly the verifier's** (rejection sampling, one position, β = Σ min(p, q)):
//! x is proposed and kept with probability q(x)·min(1, p(x)/q(x)) = min(p(x), q(x)); a rejection
//! happens with probability 1 − β, and Σ (p − q)₊ = 1 − β, so the residual draw contributes
//! (1 − β)·(p(x) − min(p(x), q(x)))/(1 − β); the two add up to p(x). Each later position is only
//! reached after the earlier ones were kept, and its p is the verifier's conditional on exactly
//! that prefix, so by induction every emitted sequence has the verifier's probability. This holds
//! for any q, so the draft's quality changes the speed, never the output. The only lossy mode,
//! [`Acceptance::Typical`], is labelled so.
//!
//! ## Bookkeeping (research note §5.1)
//!
//! At the start of a round both models have consumed the committed sequence except its pending
//! tail (the prompt at first, afterwards the token y emitted last round). After verification with
//! n kept tokens the verifier is rolled back to `old + pending + n` (a KV-cache truncation) and the
//! drafter to the same length (an S4 drafter restores a per-position state snapshot: a pick, not a
//! replay); when all γ were kept the drafter has not consumed x_γ yet and x_γ joins the pending
//! tokens instead.
//!
//! ## Pieces
//! - [`Drafter`] and [`Verifier`]: the two roles; [`models`] implements them for
//!   [`S4Model`](crate::model::S4Model) (drafter) and [`Gpt`](crate::transformer::Gpt) (both).
//! - [`sampling`]: temperature, top-k, top-p, applied identically to p and q.
//! - [`verify`]: greedy, rejection sampling, typical acceptance.
//! - [`gamma`]: fixed, heuristic and cost-model choice of γ, and the predicted speedup.
//! - [`speculate`], [`speculate_batch`] and the verifier-only baseline [`generate`].
//! - [`distill`]: training an S4 draft against a verifier.
//!
//! ## Example
//!
//! ```
//! use s4::model::S4ModelConfig;
//! use s4::speculative::{generate, speculate, GammaPolicy, GptSession, S4Session, Sampling, SpecConfig};
//! use s4::transformer::{Gpt, GptConfig};
//!
//! let verifier = Gpt::<f32>::new(GptConfig { vocab_size: 32, n_positions: 64, n_embd: 32, n_layer: 2, n_head: 2, ..Default::default() }, 0)?;
//! let mut cfg = S4ModelConfig::causal_lm(32);
//! cfg.layer.d_model = 16;
//! cfg.layer.d_state = 8;
//! let draft = cfg.build()?;
//! let config = SpecConfig { gamma: GammaPolicy::Fixed(3), sampling: Sampling::greedy(), max_new: 20, ..Default::default() };
//! let fast = speculate(&mut S4Session::new(&draft, 8)?, &mut GptSession::new(&verifier), &[1, 2, 3], &config)?;
//! let slow = generate(&mut GptSession::new(&verifier), &[1, 2, 3], &config)?;
//! assert_eq!(fast.tokens, slow.tokens); // greedy: token for token the verifier's own output
//! println!("alpha {:.2}, tau {:.2}", fast.stats.alpha, fast.stats.tau);
//! # Ok::<(), s4::Error>(())
//! ```

pub mod distill;
pub mod gamma;
pub mod models;
pub mod sampling;
pub mod tree;
pub mod verify;

use std::collections::VecDeque;
use std::time::Instant;

use ndarray::Array2;
use rand::SeedableRng;
use rand_pcg::Pcg64;
use rayon::prelude::*;

pub use gamma::{
    best_gamma, expected_tokens, predicted_speedup, CostFit, GammaController, GammaPolicy, PassCost, PayoffGuard,
};
pub use models::{check_causal_lm, CausalModel, GptSession, S4Session};
pub use sampling::Sampling;
pub use tree::{draft_tree, verify_tree, AcceptanceOdds, TokenTree, TreeOutcome, TreeShape};

use crate::budget::Estimate;
use crate::error::{Error, Result};
use crate::transformer::TreeMask;

/// A causal model that drafts tokens for a verifier.
///
/// Implementors provide [`extend`](Drafter::extend) and [`rollback`](Drafter::rollback); the
/// drafting loop [`propose`](Drafter::propose) is provided.
pub trait Drafter {
    /// Vocabulary size V (must equal the verifier's).
    fn vocab_size(&self) -> usize;
    /// Number of tokens consumed so far.
    fn len(&self) -> usize;
    /// True before any token was consumed.
    fn is_empty(&self) -> bool {
        self.len() == 0
    }
    /// Consumes `tokens` (at least one) and returns the next-token logits after the last of them
    /// (length V).
    ///
    /// # Errors
    /// Unknown tokens, an empty slice, or a model failure.
    fn extend(&mut self, tokens: &[u32]) -> Result<Vec<f32>>;
    /// Forgets everything after the first `len` consumed tokens.
    ///
    /// # Errors
    /// `len` larger than [`len`](Drafter::len), or further back than the drafter can restore.
    fn rollback(&mut self, len: usize) -> Result<()>;

    /// A promise that no later [`rollback`](Drafter::rollback) goes below `len` tokens, except
    /// to 0 (a fresh start), until the next commit: the drafter may forget, or not keep, what
    /// it would need to restore shorter lengths. The speculative loops commit the prompt before
    /// it is consumed and the committed length after every round. The default keeps everything.
    fn commit(&mut self, len: usize) {
        let _ = len;
    }

    /// Tree drafting: steps from the state after tree node `parent` (`None`: the root, the state
    /// after the first `root` consumed tokens) with the last token of `path` (the tokens from depth
    /// 1 down to the new node); the new state is tree node `node`. Returns its next-token logits.
    /// The default replays the path from the root (a rollback and an extend); an S4 drafter takes
    /// one step from the parent's state into a buffer of the node's own.
    ///
    /// # Errors
    /// As [`extend`](Drafter::extend) and [`rollback`](Drafter::rollback).
    fn tree_step(&mut self, root: usize, node: usize, parent: Option<usize>, path: &[u32]) -> Result<Vec<f32>> {
        let _ = (node, parent);
        self.rollback(root)?;
        self.extend(path)
    }

    /// Continues after tree node `node` (`None`: the root) whose tokens from depth 1 down are
    /// `path`, as if the drafter had consumed the first `root` tokens and `path`; forgets the
    /// tree. `node` must have been stepped ([`tree_step`](Drafter::tree_step)).
    ///
    /// # Errors
    /// As [`extend`](Drafter::extend) and [`rollback`](Drafter::rollback).
    fn tree_adopt(&mut self, root: usize, node: Option<usize>, path: &[u32]) -> Result<()> {
        let _ = node;
        self.rollback(root)?;
        if !path.is_empty() {
            self.extend(path)?;
        }
        Ok(())
    }

    /// Consumes `pending` and drafts `gamma` tokens, each drawn from its distribution qᵢ (the
    /// logits warped by `sampling`, or the point mass at the arg-max when `argmax` is set).
    /// Afterwards the drafter has consumed `pending` and x₁…x_{γ−1} (not x_γ).
    ///
    /// # Errors
    /// As [`extend`](Drafter::extend); `gamma = 0`.
    fn propose(
        &mut self,
        pending: &[u32],
        gamma: usize,
        sampling: &Sampling,
        argmax: bool,
        rng: &mut Pcg64,
    ) -> Result<Draft> {
        if gamma == 0 {
            return Err(Error::invalid("gamma", 0, "at least 1 drafted token per round"));
        }
        let warp = if argmax { Sampling::greedy() } else { *sampling };
        let mut logits = self.extend(pending)?;
        let mut draft = Draft { tokens: Vec::with_capacity(gamma), dists: Vec::with_capacity(gamma) };
        for i in 0..gamma {
            let q = warp.probs(&logits)?;
            let x = sampling::sample(&q, rng);
            draft.tokens.push(x);
            draft.dists.push(q);
            if i + 1 < gamma {
                logits = self.extend(&[x])?;
            }
        }
        Ok(draft)
    }
}

/// Drafted tokens and the distributions they were drawn from.
#[derive(Clone, Debug, PartialEq)]
pub struct Draft {
    /// x₁…x_γ.
    pub tokens: Vec<u32>,
    /// q₁…q_γ (each of length V, summing to 1).
    pub dists: Vec<Vec<f64>>,
}

/// A causal model that scores a prefix plus drafted tokens in one pass.
pub trait Verifier {
    /// Vocabulary size V.
    fn vocab_size(&self) -> usize;
    /// Longest sequence the model accepts (`None`: unbounded).
    fn max_len(&self) -> Option<usize>;
    /// Number of tokens consumed so far.
    fn len(&self) -> usize;
    /// True before any token was consumed.
    fn is_empty(&self) -> bool {
        self.len() == 0
    }
    /// Consumes `tokens` in one pass and returns their next-token logits, (tokens.len(), V): row
    /// i is the distribution after `tokens[..=i]`.
    ///
    /// # Errors
    /// Unknown tokens, an empty slice, exceeding [`max_len`](Verifier::max_len).
    fn score(&mut self, tokens: &[u32]) -> Result<Array2<f32>>;
    /// Forgets everything after the first `len` consumed tokens (a KV-cache truncation).
    ///
    /// # Errors
    /// `len` larger than [`len`](Verifier::len).
    fn rollback(&mut self, len: usize) -> Result<()>;

    /// A hint that the sequence will grow to `total` tokens (at most [`max_len`](Verifier::max_len)):
    /// a transformer makes room in its KV cache at once, instead of growing it in the middle of
    /// a generation. [`generate`] and [`speculate`] give the prompt's length plus `max_new`. The
    /// default does nothing.
    fn reserve(&mut self, total: usize) {
        let _ = total;
    }

    /// Scores `tokens` arranged as `tree` in one pass (tree attention: each token sees the
    /// consumed tokens and its ancestors in the tree): row i is the next-token distribution after
    /// the consumed tokens and the path to i. Afterwards the verifier has consumed all of them;
    /// [`keep`](Verifier::keep) selects one path. The default scores each path separately.
    ///
    /// # Errors
    /// As [`score`](Verifier::score); `tokens.len()` ≠ the tree's size.
    fn score_tree(&mut self, tokens: &[u32], tree: &TreeMask) -> Result<Array2<f32>> {
        if tokens.len() != tree.len() {
            return Err(Error::invalid("tree tokens", tokens.len(), format!("one per tree position ({})", tree.len())));
        }
        let base = self.len();
        let mut out = Array2::zeros((tokens.len(), self.vocab_size()));
        for i in 0..tokens.len() {
            let path: Vec<u32> = tree.path(i).iter().map(|&j| tokens[j]).collect();
            self.rollback(base)?;
            let rows = self.score(&path)?;
            out.row_mut(i).assign(&rows.row(rows.nrows() - 1));
        }
        Ok(out)
    }

    /// After [`score_tree`](Verifier::score_tree) from length `base`, keeps the scored positions
    /// `base + positions[i]` (increasing offsets, whose tokens are `tokens`) as if only they had
    /// been consumed. The default rolls back and scores them again; a transformer compacts its KV
    /// cache.
    ///
    /// # Errors
    /// As [`rollback`](Verifier::rollback) and [`score`](Verifier::score).
    fn keep(&mut self, base: usize, positions: &[usize], tokens: &[u32]) -> Result<()> {
        let _ = positions;
        self.rollback(base)?;
        if !tokens.is_empty() {
            self.score(tokens)?;
        }
        Ok(())
    }
}

/// How drafted tokens are accepted.
#[derive(Clone, Copy, Debug, PartialEq, Default, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Acceptance {
    /// Greedy verification at temperature 0, speculative (rejection) sampling otherwise: the
    /// output follows the verifier's distribution exactly (lossless).
    #[default]
    Exact,
    /// Medusa's typical acceptance — **lossy**: faster, but the output distribution is no longer
    /// the verifier's. See [`verify::typical`].
    Typical {
        /// Hard probability floor ε (Medusa: 0.09).
        epsilon: f64,
        /// Entropy-adaptive floor scale δ (Medusa: 0.3).
        delta: f64,
    },
}

/// Settings of one speculative generation (plain struct; `Default`: auto γ, sampling at
/// temperature 1, exact acceptance, 64 new tokens, seed 0).
#[derive(Clone, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(default)]
pub struct SpecConfig {
    /// How γ is chosen.
    pub gamma: GammaPolicy,
    /// Warping of p and q.
    pub sampling: Sampling,
    /// Draft by arg-max (q is then the point mass at the drafted token) instead of sampling from
    /// the warped q.
    pub argmax_draft: bool,
    /// The acceptance rule.
    pub acceptance: Acceptance,
    /// Number of tokens to generate.
    pub max_new: usize,
    /// Stop after emitting this token.
    pub stop_token: Option<u32>,
    /// Seed of the sampler's random stream.
    pub seed: u64,
    /// Draft a token tree of this shape each round instead of a chain of γ tokens (see [`tree`];
    /// `gamma` is then unused). Exact acceptance only.
    pub tree: Option<TreeShape>,
    /// Let the adaptive policies (`GammaPolicy::Auto`, a tree with a budget) fall back to plain
    /// decoding where speculation does not pay ([`PayoffGuard`]); `false` always speculates
    /// (measurements of the drafting itself, tests).
    pub fallback: bool,
}

impl Default for SpecConfig {
    fn default() -> Self {
        SpecConfig {
            gamma: GammaPolicy::default(),
            sampling: Sampling::default(),
            argmax_draft: false,
            acceptance: Acceptance::Exact,
            max_new: 64,
            stop_token: None,
            seed: 0,
            tree: None,
            fallback: true,
        }
    }
}

/// Statistics of a generation (the quantities of the research note §7.1).
#[derive(Clone, Debug, Default, PartialEq, serde::Serialize)]
pub struct SpecStats {
    /// Rounds (verifier passes after the prompt).
    pub rounds: usize,
    /// Drafted tokens.
    pub drafted: usize,
    /// Drafted tokens kept.
    pub accepted: usize,
    /// Rounds that ended in a rejection (kept fewer than they drafted).
    pub rejections: usize,
    /// Tokens emitted.
    pub emitted: usize,
    /// Verifier passes (prefill included).
    pub verifier_calls: usize,
    /// Draft steps (tokens the drafter consumed while drafting).
    pub draft_steps: usize,
    /// Seconds in the drafter.
    pub draft_seconds: f64,
    /// Seconds in the verifier.
    pub verify_seconds: f64,
    /// Wall time of the whole generation.
    pub total_seconds: f64,
    /// Acceptance rate α = accepted / drafted (the literature's tables).
    pub alpha: f64,
    /// The per-token acceptance probability of the i.i.d. model (Leviathan et al.), estimated by
    /// maximum likelihood: accepted / (accepted + rejections) (each round is its kept tokens plus
    /// one rejected trial if it ended in a rejection). It is the α of E\[L\] and of the predicted
    /// speedups; `alpha` is smaller for γ > 1 even when acceptances are independent, because a
    /// round stops at its first rejection.
    pub alpha_iid: f64,
    /// Mean tokens emitted per verifier pass τ (after the prompt's pass).
    pub tau: f64,
    /// Emitted tokens per second.
    pub tokens_per_second: f64,
    /// Measured c = (seconds per draft step) / (seconds per verifier pass after the prompt).
    pub cost_ratio: f64,
    /// The fitted costs: verifier pass time a + b·k over k positions, draft step time d
    /// ([`PassCost`], from the passes after the prompt's).
    pub cost: PassCost,
    /// Mean γ over rounds.
    pub mean_gamma: f64,
    /// How many rounds kept exactly n drafted tokens, n = 0, 1, ….
    pub accepted_histogram: Vec<usize>,
    /// Acceptance per depth d = 1, 2, …: of the rounds that kept d − 1 tokens and had a drafted
    /// candidate at depth d, the share that kept one.
    pub acceptance_by_depth: Vec<f64>,
    /// Tree drafting: acceptance per sibling rank j = 1, 2, …: of the j-th children verification
    /// tried (every earlier sibling rejected), the share it kept.
    pub acceptance_by_rank: Vec<f64>,
    /// Tree drafting: nodes drafted in all (the verifier scored them, plus the pending tokens).
    pub tree_nodes: usize,
    /// Tree drafting: mean nodes per round.
    pub mean_tree_nodes: f64,
    /// The draft's acceptance rate the default policy's guard measured in plain rounds, before or
    /// between speculative ones ([`PayoffGuard::record_agreement`]: the mean of min(1, q(y)/p(y))
    /// over the positions scored; at T = 0 the share where the draft's arg-max is the verifier's
    /// token), and the number of positions; `None` without a guard or a position scored.
    pub plain_alpha: Option<f64>,
    /// The positions behind [`plain_alpha`](Self::plain_alpha).
    pub plain_alpha_samples: usize,
}

impl SpecStats {
    /// Copies what the guard (if any) measured in plain rounds.
    fn record_guard(&mut self, guard: Option<&PayoffGuard>) {
        if let Some((alpha, samples)) = guard.and_then(PayoffGuard::measured_alpha) {
            (self.plain_alpha, self.plain_alpha_samples) = (Some(alpha), samples);
        }
    }
}

/// What the adaptive drafting of earlier generations learned about a pair, for the next one to
/// start from: the acceptance odds of token trees ([`AcceptanceOdds`]: how often verification keeps
/// a child of each sibling rank and draft confidence).
///
/// [`speculate`] starts from nothing every call, so every generation's first tree rounds are shaped
/// by a prior (the draft's own confidence, which undervalues first choices that a verifier mostly
/// keeps) while the odds are being counted. [`speculate_with`] carries a calibration from one
/// generation of a pair to the next, as a server decoding many prompts would. It is kept per
/// setting (sampling, γ policy or tree, acceptance, fall-back; not the seed or the length): a
/// generation under another setting starts afresh and replaces it. Chains keep nothing in it:
/// carrying `--gamma auto`'s cost fit, acceptance counts and fall-back verdicts the same way
/// measured no gain on the demo pair (auto at 0.91 / 0.91 of the best fixed γ carried against
/// 0.90 / 0.89 afresh, 64-token generations, T = 0 / 1) and lost the tiny pair's T = 0 gain.
///
/// ```
/// use s4::model::S4ModelConfig;
/// use s4::speculative::{speculate_with, Calibration, GptSession, S4Session, SpecConfig};
/// use s4::transformer::{Gpt, GptConfig};
///
/// let verifier = Gpt::<f32>::new(GptConfig { vocab_size: 32, n_positions: 64, n_embd: 32, n_layer: 2, n_head: 2, ..Default::default() }, 0)?;
/// let mut cfg = S4ModelConfig::causal_lm(32);
/// cfg.layer.d_model = 16;
/// let draft = cfg.build()?;
/// let config = SpecConfig { tree: Some("budget=8".parse()?), max_new: 16, ..Default::default() };
/// let mut calibration = Calibration::default();
/// for prompt in [[1, 2, 3], [4, 5, 6]] {
///     speculate_with(&mut S4Session::new(&draft, 8)?, &mut GptSession::new(&verifier), &prompt, &config, &mut calibration)?;
/// }
/// assert_eq!(calibration.generations(), 2);
/// # Ok::<(), s4::Error>(())
/// ```
#[derive(Clone, Debug, Default)]
pub struct Calibration {
    /// The setting it was learned under (a [`SpecConfig`] without seed, length and stop token).
    under: Option<SpecConfig>,
    generations: usize,
    odds: AcceptanceOdds,
}

impl Calibration {
    /// The tree acceptance odds counted so far.
    pub fn odds(&self) -> &AcceptanceOdds {
        &self.odds
    }

    /// The generations it learned from (since the last change of setting).
    pub fn generations(&self) -> usize {
        self.generations
    }

    /// Starts one more generation with `config`: what was learned under the same setting, else
    /// nothing.
    fn start(&mut self, config: &SpecConfig) -> &mut Self {
        let setting = SpecConfig { seed: 0, max_new: 0, stop_token: None, ..config.clone() };
        if self.under.as_ref() != Some(&setting) {
            *self = Calibration { under: Some(setting), ..Default::default() };
        }
        self.generations += 1;
        self
    }
}

/// The result of a generation.
#[derive(Clone, Debug, PartialEq, serde::Serialize)]
pub struct Generation {
    /// The new tokens (the prompt not included).
    pub tokens: Vec<u32>,
    /// What it cost.
    pub stats: SpecStats,
}

fn check_prompt(prompt: &[u32], vocab: usize, max_len: Option<usize>, max_new: usize) -> Result<()> {
    if prompt.is_empty() {
        return Err(Error::invalid("prompt", "empty", "at least one token"));
    }
    if let Some((i, &t)) = prompt.iter().enumerate().find(|&(_, &t)| t as usize >= vocab) {
        return Err(Error::invalid(format!("prompt[{i}]"), t, format!("a token id < vocabulary size {vocab}")));
    }
    if let Some(m) = max_len {
        if prompt.len() > m {
            return Err(Error::invalid(
                "prompt length",
                prompt.len(),
                format!("at most the verifier's context of {m} tokens"),
            ));
        }
        if prompt.len().saturating_add(max_new) > m {
            return Err(Error::invalid(
                "prompt length + max_new",
                format!("{} + {max_new}", prompt.len()),
                format!("at most the verifier's context of {m} tokens"),
            ));
        }
    }
    // the tokens (the output grows to max_new; nothing is reserved for more than a few thousand)
    Estimate::new(format!("generating max_new = {max_new} tokens"))
        .array::<u32>(&[prompt.len().saturating_add(max_new)])
        .check()?;
    Ok(())
}

/// Verifier-only decoding (the baseline): one verifier pass per token, the prompt in one pass.
/// Each token is drawn from the warped p (arg-max at temperature 0) with the seeded stream.
///
/// # Errors
/// An empty prompt, unknown tokens, a prompt + `max_new` beyond the verifier's context, bad
/// sampling values.
pub fn generate<V: Verifier + ?Sized>(verifier: &mut V, prompt: &[u32], config: &SpecConfig) -> Result<Generation> {
    config.sampling.validate()?;
    check_prompt(prompt, verifier.vocab_size(), verifier.max_len(), config.max_new)?;
    verifier.rollback(0)?;
    verifier.reserve(prompt.len() + config.max_new);
    let mut rng = Pcg64::seed_from_u64(config.seed);
    let start = Instant::now();
    let mut stats = SpecStats::default();
    let mut out = Vec::with_capacity(config.max_new.min(4096));
    decode_plain(verifier, prompt.to_vec(), &mut out, config, &mut rng, &mut stats)?;
    stats.emitted = out.len();
    stats.total_seconds = start.elapsed().as_secs_f64();
    stats.tau = 1.0;
    stats.tokens_per_second = out.len() as f64 / stats.total_seconds.max(1e-12);
    Ok(Generation { tokens: out, stats })
}

/// Plain decoding with the verifier alone, one pass per token: the verifier first reads `pending`
/// (tokens it has not seen), then tokens are drawn from its warped distribution and appended to
/// `out` until it holds `max_new` or the stop token. [`generate`] is this loop; the speculative
/// loops hand over to it once their [`PayoffGuard`] concludes that drafting cannot pay, so that
/// from then on a token costs exactly what it costs the verifier alone.
fn decode_plain<V: Verifier + ?Sized>(
    verifier: &mut V,
    mut pending: Vec<u32>,
    out: &mut Vec<u32>,
    config: &SpecConfig,
    rng: &mut Pcg64,
    stats: &mut SpecStats,
) -> Result<()> {
    while out.len() < config.max_new {
        let t = Instant::now();
        let logits = verifier.score(&pending)?;
        stats.verify_seconds += t.elapsed().as_secs_f64();
        stats.verifier_calls += 1;
        let row = logits.row(logits.nrows() - 1);
        let row = row.as_slice().ok_or_else(|| Error::numerical("generate", "non-contiguous logits"))?;
        let y = sampling::sample(&config.sampling.probs(row)?, rng);
        out.push(y);
        pending = vec![y];
        if config.stop_token == Some(y) {
            break;
        }
    }
    Ok(())
}

/// Speculative decoding of one prompt: rounds of draft γ, verify once, keep n + 1 tokens (see the
/// module docs), until `max_new` tokens or the stop token. Both models are reset first. With
/// [`Acceptance::Exact`] the output has the verifier's distribution; at temperature 0 it is
/// token for token the verifier's greedy decoding ([`generate`] with the same config).
///
/// # Errors
/// Different vocabularies, an empty prompt, unknown tokens, a prompt + `max_new` beyond the
/// verifier's context, a fixed γ of 0, bad sampling values, model failures.
pub fn speculate<D: Drafter + Send + ?Sized, V: Verifier + ?Sized>(
    drafter: &mut D,
    verifier: &mut V,
    prompt: &[u32],
    config: &SpecConfig,
) -> Result<Generation> {
    speculate_with(drafter, verifier, prompt, config, &mut Calibration::default())
}

/// [`speculate`], starting from what earlier generations of the pair learned and adding this
/// one's counts to it (see [`Calibration`]).
///
/// # Errors
/// As [`speculate`].
pub fn speculate_with<D: Drafter + Send + ?Sized, V: Verifier + ?Sized>(
    drafter: &mut D,
    verifier: &mut V,
    prompt: &[u32],
    config: &SpecConfig,
    calibration: &mut Calibration,
) -> Result<Generation> {
    config.sampling.validate()?;
    let vocab = verifier.vocab_size();
    if drafter.vocab_size() != vocab {
        return Err(Error::invalid(
            "draft vocabulary size",
            drafter.vocab_size(),
            format!("the verifier's vocabulary size {vocab} (the two models must share a tokenizer)"),
        ));
    }
    match config.gamma {
        GammaPolicy::Fixed(0) => return Err(Error::invalid("gamma", 0, "at least 1")),
        GammaPolicy::Heuristic { initial, min, max } if initial == 0 || min == 0 || max < min.max(initial) => {
            return Err(Error::invalid(
                "gamma heuristic (initial, min, max)",
                format!("({initial}, {min}, {max})"),
                "1 <= min <= initial <= max",
            ))
        }
        GammaPolicy::Auto { max: 0 } => return Err(Error::invalid("gamma auto max", 0, "at least 1")),
        _ => {}
    }
    if let Acceptance::Typical { epsilon, delta } = config.acceptance
        && !(epsilon > 0.0 && epsilon <= 1.0 && delta > 0.0 && delta.is_finite())
    {
        return Err(Error::invalid(
            "typical acceptance (epsilon, delta)",
            format!("({epsilon}, {delta})"),
            "0 < epsilon <= 1 and delta > 0",
        ));
    }
    check_prompt(prompt, vocab, verifier.max_len(), config.max_new)?;
    verifier.rollback(0)?;
    verifier.reserve(prompt.len() + config.max_new);
    drafter.rollback(0)?;
    // no round rolls back into the prompt
    drafter.commit(prompt.len());
    if let Some(shape) = &config.tree {
        return tree::speculate_tree(drafter, verifier, prompt, config, shape, &mut calibration.start(config).odds);
    }
    calibration.start(config);

    let mut rng = Pcg64::seed_from_u64(config.seed);
    let greedy = config.sampling.is_greedy() && config.acceptance == Acceptance::Exact;
    let mut log = RoundLog::new();
    let mut control = GammaController::new(config.gamma);
    // the default policy falls back to plain decoding where speculation does not pay
    let mut guard = (config.fallback && matches!(config.gamma, GammaPolicy::Auto { .. })).then(PayoffGuard::default);
    let mut out: Vec<u32> = Vec::with_capacity(config.max_new.min(4096) + 16);
    let mut pending_v: Vec<u32> = prompt.to_vec();
    let mut pending_d: Vec<u32> = prompt.to_vec();
    let mut emitted = Emitted::default();

    'rounds: while out.len() < config.max_new {
        let remaining = config.max_new - out.len();
        if guard.as_ref().is_some_and(PayoffGuard::gave_up) {
            decode_plain(verifier, pending_v, &mut out, config, &mut rng, &mut log.stats)?;
            break;
        }
        let gamma = if guarded_round(&mut guard, drafter, remaining, &pending_d)? {
            if let Some(g) = &guard
                && let Some(cost) = g.plain_cost()
            {
                control.start_from(cost, g.alpha_estimate());
            }
            control.gamma().min(remaining - 1)
        } else {
            0
        };
        let round = Instant::now();
        let catch_up = if gamma > 0 { log.catch_up(drafter, &mut pending_d)? } else { 0.0 };
        // draft
        let t = Instant::now();
        let draft = if gamma > 0 {
            let d = drafter.propose(&pending_d, gamma, &config.sampling, config.argmax_draft || greedy, &mut rng)?;
            log.draft(pending_d.len() + gamma - 1, t.elapsed().as_secs_f64());
            pending_d.clear();
            d
        } else {
            Draft { tokens: vec![], dists: vec![] }
        };
        // verify: pending tokens and the draft in one pass
        let base = verifier.len();
        let t = Instant::now();
        let mut input = pending_v.clone();
        input.extend_from_slice(&draft.tokens);
        let (logits, waited) = if gamma > 0 {
            (verifier.score(&input)?, 0.0)
        } else {
            let draft_warp = if config.argmax_draft || greedy { Sampling::greedy() } else { config.sampling };
            let observe = Observe { emitted: &mut emitted, draft_warp };
            plain_pass(verifier, drafter, &input, &mut pending_d, guard.as_mut(), observe, &mut log)?
        };
        log.pass(input.len(), t.elapsed().as_secs_f64() - waited, gamma > 0);
        let catch_up = catch_up + waited;
        let first = pending_v.len() - 1;
        let rows: Vec<&[f32]> = (first..first + gamma + 1)
            .map(|i| logits.row(i).to_slice().ok_or_else(|| Error::numerical("speculate", "non-contiguous logits")))
            .collect::<Result<_>>()?;
        let p =
            (!greedy).then(|| rows.iter().map(|r| config.sampling.probs(r)).collect::<Result<Vec<_>>>()).transpose()?;
        let outcome = match (&p, config.acceptance) {
            (None, _) => verify::greedy(&rows, &draft.tokens)?,
            (Some(p), Acceptance::Exact) => verify::rejection_sampling(p, &draft.dists, &draft.tokens, &mut rng)?,
            (Some(p), Acceptance::Typical { epsilon, delta }) => {
                verify::typical(p, &draft.tokens, epsilon, delta, &mut rng)?
            }
        };
        if gamma == 0 {
            // a greedy verifier emits its arg-max: probability 1
            emitted.push(base + pending_v.len(), outcome.next, p.as_ref().map_or(1.0, |p| p[0][outcome.next as usize]));
        }
        let n = outcome.accepted;
        if gamma > 0 {
            log.round(gamma, n, n < gamma);
        }
        control.update(gamma, n, log.fit.cost());
        if let Some(g) = &mut guard {
            record_round(g, &log, input.len(), (gamma > 0).then_some((n + 1, gamma + 1)), round, catch_up);
        }
        // roll back and commit
        let kept = base + pending_v.len() + n;
        verifier.rollback(kept)?;
        if gamma > 0 {
            if n < gamma {
                drafter.rollback(kept)?;
            } else {
                pending_d.push(draft.tokens[gamma - 1]);
            }
        }
        drafter.commit(kept.min(drafter.len()));
        for &x in draft.tokens[..n].iter().chain(std::iter::once(&outcome.next)) {
            out.push(x);
            if config.stop_token == Some(x) || out.len() == config.max_new {
                break 'rounds;
            }
        }
        pending_v = vec![outcome.next];
        pending_d.push(outcome.next);
    }
    let mut stats = log.finish(out.len());
    stats.record_guard(guard.as_ref());
    Ok(Generation { stats, tokens: out })
}

/// The tokens plain rounds emitted, by position, with the verifier's probability of each: what
/// the draft's distribution at the same position is compared with once the drafter gets there
/// ([`PayoffGuard::record_agreement`]).
#[derive(Debug, Default)]
pub(super) struct Emitted(VecDeque<(usize, u32, f64)>);

impl Emitted {
    /// The verifier emitted `token` at sequence position `position` with probability `p`.
    pub(super) fn push(&mut self, position: usize, token: u32, p: f64) {
        self.0.push_back((position, token, p));
    }

    /// The token emitted at `position` and its probability, if a plain round emitted it.
    fn at(&self, position: usize) -> Option<(u32, f64)> {
        self.0.binary_search_by_key(&position, |e| e.0).ok().map(|i| (self.0[i].1, self.0[i].2))
    }

    /// Forgets the positions up to `position`.
    fn forget_through(&mut self, position: usize) {
        while self.0.front().is_some_and(|e| e.0 <= position) {
            self.0.pop_front();
        }
    }
}

/// What a plain round's drafter compares its distributions with: the emitted tokens and the warp
/// its drafts are drawn with.
pub(super) struct Observe<'a> {
    pub(super) emitted: &'a mut Emitted,
    pub(super) draft_warp: Sampling,
}

/// A plain round's verifier pass over `input`. When the guard has measured the costs, the
/// drafter meanwhile consumes the next [`PayoffGuard::background_chunk`] of the tokens it has not
/// seen (all of `pending_d` but the last) on the other core ([`crate::nn::pair::join`]), so that
/// a later speculative round, or a probe after a stretch of plain rounds, finds it caught up
/// instead of paying for it; at each position a plain round emitted, its distribution tells the
/// guard how likely a drafted token would have been kept there. Returns the logits and the
/// seconds the round waited for the drafter after the verifier was done.
fn plain_pass<D: Drafter + Send + ?Sized, V: Verifier + ?Sized>(
    verifier: &mut V,
    drafter: &mut D,
    input: &[u32],
    pending_d: &mut Vec<u32>,
    guard: Option<&mut PayoffGuard>,
    observe: Observe<'_>,
    log: &mut RoundLog,
) -> Result<(Array2<f32>, f64)> {
    let Some(guard) = guard else { return Ok((verifier.score(input)?, 0.0)) };
    observe.emitted.forget_through(drafter.len());
    let chunk = guard.background_chunk(pending_d.len().saturating_sub(1));
    if chunk == 0 {
        return Ok((verifier.score(input)?, 0.0));
    }
    let start = Instant::now();
    let (head, seen) = (&pending_d[..chunk], drafter.len());
    let (emitted, warp) = (&*observe.emitted, observe.draft_warp);
    let ((logits, verified), drafted) = crate::nn::pair::join(
        || (verifier.score(input), start.elapsed().as_secs_f64()),
        || -> Result<(f64, Vec<f64>)> {
            let t = Instant::now();
            let mut agreements = Vec::new();
            for (i, x) in head.iter().enumerate() {
                // the logits after position seen + i predict position seen + i + 1
                let q = drafter.extend(std::slice::from_ref(x))?;
                if let Some((y, p)) = emitted.at(seen + i + 1) {
                    agreements.push(warp.probs(&q)?[y as usize] / p);
                }
            }
            Ok((t.elapsed().as_secs_f64(), agreements))
        },
    );
    let waited = (start.elapsed().as_secs_f64() - verified).max(0.0);
    let (logits, (draft_seconds, agreements)) = (logits?, drafted?);
    log.draft(chunk, draft_seconds);
    guard.set_background_step(draft_seconds / chunk as f64);
    agreements.into_iter().for_each(|a| guard.record_agreement(a));
    observe.emitted.forget_through(seen + chunk);
    pending_d.drain(..chunk);
    Ok((logits, waited))
}

/// Asks the guard (if any) whether this round speculates, with the drafter `pending.len() − 1`
/// tokens behind; times one draft step first (a step and a rollback) when the guard needs it.
fn guarded_round<D: Drafter + ?Sized>(
    guard: &mut Option<PayoffGuard>,
    drafter: &mut D,
    remaining: usize,
    pending: &[u32],
) -> Result<bool> {
    let Some(g) = guard else { return Ok(true) };
    // (the drafter is still at the start then: the prompt is committed, and only length 0 is
    // restorable below it). The second of two steps is timed: a process's first step touches
    // the draft's weights and tables for the first time, and in single `s4 speculate` runs of the
    // demo pair it took 22-35 µs against 6 in the loop, which made the guard judge that
    // speculation could not pay and decode plainly (0.82-0.90x the verifier alone) in 3 of 10.
    if g.needs_draft_step() && drafter.is_empty() {
        let len = drafter.len();
        let first = pending.len().min(2) - 1;
        if first > 0 {
            drafter.extend(&pending[..first])?;
        }
        let t = Instant::now();
        drafter.extend(&pending[first..first + 1])?;
        g.set_draft_step(t.elapsed().as_secs_f64());
        drafter.rollback(len)?;
    }
    Ok(g.speculate_now(remaining, pending.len().saturating_sub(1)))
}

/// Tells the guard how a round went: the prompt's pass (the first), a speculative round
/// (`speculated`: tokens emitted, tokens had everything been kept) or a plain one; `catch_up`
/// seconds of the round were the drafter catching up.
fn record_round(
    guard: &mut PayoffGuard,
    log: &RoundLog,
    positions: usize,
    speculated: Option<(usize, usize)>,
    round: Instant,
    catch_up: f64,
) {
    let seconds = (round.elapsed().as_secs_f64() - catch_up).max(0.0);
    match speculated {
        _ if log.stats.verifier_calls == 1 => guard.record_prompt(positions, seconds),
        Some((tokens, best)) => guard.record_speculative(tokens, seconds, best),
        None => guard.record_plain(seconds),
    }
}

/// The statistics of one speculative generation as its rounds go (chains and trees).
#[derive(Debug)]
struct RoundLog {
    stats: SpecStats,
    start: Instant,
    fit: CostFit,
    depths: DepthCounts,
    /// Verifier seconds after the prompt's pass.
    round_verify_seconds: f64,
    /// Σ γ (or tree nodes) over rounds.
    drafted_sum: usize,
}

impl RoundLog {
    fn new() -> Self {
        RoundLog {
            stats: SpecStats::default(),
            start: Instant::now(),
            fit: CostFit::default(),
            depths: DepthCounts::default(),
            round_verify_seconds: 0.0,
            drafted_sum: 0,
        }
    }

    /// `steps` draft steps took `seconds`.
    fn draft(&mut self, steps: usize, seconds: f64) {
        self.stats.draft_steps += steps;
        self.stats.draft_seconds += seconds;
        self.fit.add_draft(steps, seconds);
    }

    /// Lets the drafter consume all but the last of `pending` (catching up after plain rounds;
    /// the prompt is left whole) and returns the seconds it took.
    fn catch_up<D: Drafter + ?Sized>(&mut self, drafter: &mut D, pending: &mut Vec<u32>) -> Result<f64> {
        if pending.len() < 2 || drafter.is_empty() {
            return Ok(0.0);
        }
        let t = Instant::now();
        let last = pending.len() - 1;
        drafter.extend(&pending[..last])?;
        pending.drain(..last);
        let seconds = t.elapsed().as_secs_f64();
        self.draft(last, seconds);
        Ok(seconds)
    }

    /// A verifier pass over `positions` took `seconds` (the first one is the prompt's);
    /// `speculative`: a speculative round's pass, the only kind the cost fit takes. A plain
    /// round's pass often runs beside the drafter catching up on the other core, so on one
    /// thread: fitted beside the speculative passes, its one position made the line's intercept
    /// too high and its slope too low, and `--gamma auto` drafted 5–6 tokens at T = 1 where 3 pay
    /// most.
    fn pass(&mut self, positions: usize, seconds: f64, speculative: bool) {
        self.stats.verify_seconds += seconds;
        if self.stats.verifier_calls > 0 {
            self.round_verify_seconds += seconds;
            if speculative {
                self.fit.add_pass(positions, seconds);
            }
        }
        self.stats.verifier_calls += 1;
    }

    /// A round drafted `drafted` tokens and kept `accepted`; `tried_next`: it had a candidate
    /// after the kept ones (a rejection).
    fn round(&mut self, drafted: usize, accepted: usize, tried_next: bool) {
        let s = &mut self.stats;
        s.rounds += 1;
        s.drafted += drafted;
        s.accepted += accepted;
        s.rejections += usize::from(tried_next);
        self.drafted_sum += drafted;
        if s.accepted_histogram.len() <= accepted {
            s.accepted_histogram.resize(accepted + 1, 0);
        }
        s.accepted_histogram[accepted] += 1;
        self.depths.record(accepted, tried_next);
    }

    fn finish(mut self, emitted: usize) -> SpecStats {
        let s = &mut self.stats;
        s.emitted = emitted;
        s.total_seconds = self.start.elapsed().as_secs_f64();
        s.alpha = if s.drafted > 0 { s.accepted as f64 / s.drafted as f64 } else { 0.0 };
        let trials = s.accepted + s.rejections;
        s.alpha_iid = if trials > 0 { s.accepted as f64 / trials as f64 } else { 0.0 };
        s.tau = emitted as f64 / s.verifier_calls.max(1) as f64;
        s.tokens_per_second = emitted as f64 / s.total_seconds.max(1e-12);
        s.cost_ratio = cost_ratio(s, self.round_verify_seconds).unwrap_or(0.0);
        s.cost = self.fit.cost().unwrap_or_default();
        s.mean_gamma = if s.rounds > 0 { self.drafted_sum as f64 / s.rounds as f64 } else { 0.0 };
        s.acceptance_by_depth = self.depths.rates();
        self.stats
    }
}

/// Counts for [`SpecStats::acceptance_by_depth`].
#[derive(Debug, Default)]
struct DepthCounts {
    /// Rounds with a candidate at depth d + 1 after keeping d tokens.
    tried: Vec<usize>,
    /// Of those, rounds that kept one.
    kept: Vec<usize>,
}

impl DepthCounts {
    /// A round that kept `accepted` tokens; `tried_next`: it had a candidate at the next depth.
    fn record(&mut self, accepted: usize, tried_next: bool) {
        let depth = accepted + usize::from(tried_next);
        if self.tried.len() < depth {
            self.tried.resize(depth, 0);
            self.kept.resize(depth, 0);
        }
        self.tried[..depth].iter_mut().for_each(|c| *c += 1);
        self.kept[..accepted].iter_mut().for_each(|c| *c += 1);
    }

    fn rates(&self) -> Vec<f64> {
        self.tried.iter().zip(&self.kept).map(|(&t, &k)| k as f64 / t.max(1) as f64).collect()
    }
}

/// c = (draft seconds per step) / (verifier seconds per pass), excluding the prompt's pass.
fn cost_ratio(stats: &SpecStats, round_verify_seconds: f64) -> Option<f64> {
    let passes = stats.verifier_calls.saturating_sub(1);
    (stats.draft_steps > 0 && passes > 0 && round_verify_seconds > 0.0)
        .then(|| (stats.draft_seconds / stats.draft_steps as f64) / (round_verify_seconds / passes as f64))
}

/// Decodes independent prompts together: the prompts are spread over rayon's threads, each with
/// its own drafter and verifier session from `sessions` and the seed `config.seed + index`, so
/// the result of each prompt does not depend on the others or on the thread count.
///
/// # Errors
/// The first error of any prompt (as [`speculate`]), or of `sessions`.
pub fn speculate_batch<D, V, F>(sessions: F, prompts: &[Vec<u32>], config: &SpecConfig) -> Result<Vec<Generation>>
where
    D: Drafter + Send,
    V: Verifier,
    F: Fn() -> Result<(D, V)> + Sync,
{
    prompts
        .par_iter()
        .enumerate()
        .map(|(i, prompt)| {
            let (mut d, mut v) = sessions()?;
            let cfg = SpecConfig { seed: config.seed.wrapping_add(i as u64), ..config.clone() };
            speculate(&mut d, &mut v, prompt, &cfg)
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A Markov model over 4 tokens whose arg-max after token x is `next[x]` (as drafter and as
    /// verifier: one row of logits per consumed token).
    struct Markov {
        next: [u32; 4],
        len: usize,
    }

    impl Markov {
        fn logits(&self, x: u32) -> Vec<f32> {
            (0..4u32).map(|y| if y == self.next[x as usize] { 3.0 } else { 0.0 }).collect()
        }
    }

    impl Drafter for Markov {
        fn vocab_size(&self) -> usize {
            4
        }
        fn len(&self) -> usize {
            self.len
        }
        fn extend(&mut self, tokens: &[u32]) -> Result<Vec<f32>> {
            self.len += tokens.len();
            Ok(self.logits(*tokens.last().expect("a token")))
        }
        fn rollback(&mut self, len: usize) -> Result<()> {
            self.len = len;
            Ok(())
        }
    }

    impl Verifier for Markov {
        fn vocab_size(&self) -> usize {
            4
        }
        fn max_len(&self) -> Option<usize> {
            None
        }
        fn len(&self) -> usize {
            self.len
        }
        fn score(&mut self, tokens: &[u32]) -> Result<Array2<f32>> {
            self.len += tokens.len();
            let rows: Vec<f32> = tokens.iter().flat_map(|&x| self.logits(x)).collect();
            Ok(Array2::from_shape_vec((tokens.len(), 4), rows).expect("4 logits per token"))
        }
        fn rollback(&mut self, len: usize) -> Result<()> {
            self.len = len;
            Ok(())
        }
    }

    /// Plain rounds with the drafter catching up beside them score, at each position a plain
    /// round emitted, the draft's arg-max against the verifier's token: the draft agrees after
    /// tokens 0 and 1 only, so the agreements counted are exactly those of the emitted tokens
    /// that follow a 0 or a 1, position by position.
    #[test]
    fn plain_rounds_measure_the_drafts_agreement_at_the_emitted_positions() {
        let mut verifier = Markov { next: [1, 2, 3, 0], len: 0 };
        let mut drafter = Markov { next: [1, 2, 0, 1], len: 0 };
        let mut guard = PayoffGuard::default();
        guard.record_prompt(4, 4e-3);
        guard.record_plain(1e-3);
        guard.set_draft_step(1e-4);
        guard.record_plain(1e-3);
        let mut log = RoundLog::new();
        let mut emitted = Emitted::default();
        let prompt = vec![2u32, 3, 0, 1];
        let (mut pending_v, mut pending_d) = (prompt.clone(), prompt.clone());
        let mut sequence = prompt.clone();
        for _ in 0..30 {
            let observe = Observe { emitted: &mut emitted, draft_warp: Sampling::greedy() };
            let base = Verifier::len(&verifier);
            let (logits, _) = plain_pass(
                &mut verifier,
                &mut drafter,
                &pending_v,
                &mut pending_d,
                Some(&mut guard),
                observe,
                &mut log,
            )
            .unwrap();
            let y = sampling::argmax(logits.row(logits.nrows() - 1).as_slice().unwrap()) as u32;
            emitted.push(base + pending_v.len(), y, 1.0);
            sequence.push(y);
            pending_v = vec![y];
            pending_d.push(y);
        }
        // the drafter caught up beside the passes (to all but the last pending token before the
        // last pass, which emitted one more) and scored every emitted position p it passed (from
        // 4: the prompt's tokens were not emitted), with its logits after token p − 1
        assert_eq!(drafter.len, sequence.len() - 2);
        let (mut n, mut agree) = (0usize, 0usize);
        for p in (prompt.len()..sequence.len()).filter(|&p| p <= drafter.len) {
            n += 1;
            agree += usize::from(sequence[p - 1] < 2);
        }
        assert!(n >= 20, "{n} positions scored");
        let want = (gamma::PRIOR_ALPHA * 4.0 + agree as f64) / (4.0 + n as f64);
        assert!((guard.alpha_estimate() - want).abs() < 1e-12, "{} against {want}", guard.alpha_estimate());
    }

    /// The cost fit behind `--gamma auto` takes only speculative rounds' passes: a plain round's
    /// pass, slower beside the drafter on the other core, moves neither its intercept nor its
    /// slope (fitted in, the slow one-position points flattened the line and auto drafted more).
    #[test]
    fn plain_passes_stay_out_of_the_cost_fit() {
        let mut log = RoundLog::new();
        log.draft(4, 4e-5);
        // the prompt's pass, then speculative passes on t(k) = 1 ms + 0.1 ms·k
        log.pass(32, 5e-3, false);
        for k in [3, 4, 5, 3, 4, 5] {
            log.pass(k, 1e-3 + 1e-4 * k as f64, true);
        }
        let before = log.fit.cost().expect("passes and draft steps");
        assert!((before.fixed - 1e-3).abs() < 1e-12 && (before.per_position - 1e-4).abs() < 1e-12, "{before:?}");
        // plain one-position passes at twice their cost: counted, not fitted
        for _ in 0..8 {
            log.pass(1, 2.2e-3, false);
        }
        assert_eq!(log.fit.cost(), Some(before));
        assert_eq!(log.stats.verifier_calls, 15);
        assert!((log.stats.verify_seconds - (5e-3 + 8.4e-3 + 8.0 * 2.2e-3)).abs() < 1e-12);
    }
}

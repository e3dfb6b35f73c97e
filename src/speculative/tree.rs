//! Token trees: the S4 draft proposes several continuations at once by forking its state, the
//! verifier scores the whole tree in one pass (tree attention), and recursive rejection sampling
//! keeps one root-to-node path plus one token of the verifier's own.
//!
//! ## Drafting (SpecInfer; EAGLE-2's dynamic trees)
//!
//! The root is the drafter's state after the committed tokens; a node is a drafted token whose
//! state is its parent's state advanced by one recurrent step (for an S4 draft a step from the
//! parent's layers × H × N/2 numbers into a buffer of the child's own: no copy, never a replay). A
//! node's value is its cumulative draft probability (the product of q along its path). Nodes are
//! added best first under a budget: a heap holds *slots* (the next child of an expanded node, at
//! priority value(parent) × the expected q of that child) and *expansions* (stepping a node to
//! learn its q, at priority value(node), an upper bound of its children's values), so a node is
//! stepped only if one of its children can still make the budget, and a leaf costs no draft step.
//! With [`TreeShape::widths`] `[k₁, …, k_D]` every node at depth d − 1 may get k_d children;
//! without a budget that is a static tree of Σ_d Π_{i≤d} k_i nodes, with a budget m the m best
//! (EAGLE-2's rule: the top m by value, which is always a tree since a child's value never exceeds
//! its parent's). In [`speculate`](super::speculate) a node's value is instead the estimated chance
//! that verification keeps its whole path: each child's chance of being the kept one is the rate at
//! which verification keeps children of its sibling rank and draft confidence in this generation
//! (and earlier ones of the pair, with [`speculate_with`](super::speculate_with)),
//! refined once its token is drawn by the probability the draft gave that token
//! ([`AcceptanceOdds`]), so the tree runs deep where the draft is confident and right, and spends
//! siblings where first choices get rejected.
//!
//! Children are proposed in one of two ways, the order of siblings being the order of proposal:
//! - **Deterministic** (greedy decoding, or `argmax_draft`): the k most likely tokens of the
//!   draft's distribution, each proposal a point mass δ_x.
//! - **Sampled without replacement** (otherwise): x₁ ~ q, x₂ ~ q restricted to V ∖ {x₁} and
//!   renormalized, …; the j-th proposal is q_j = q·1[∉ {x₁…x_{j−1}}] / (1 − Σ_{i<j} q(xᵢ)). Whether
//!   a slot is filled is decided (by its priority) before its token is drawn.
//!
//! ## Verification: recursive rejection sampling (Jeon et al. 2024; Yang et al. 2024)
//!
//! At the root, with the verifier's distribution p there, go through the children x₁, x₂, … in
//! order: accept xⱼ with probability min(1, p(xⱼ)/qⱼ(xⱼ)); on a rejection replace p by the residual
//! norm(max(0, p − qⱼ)) and try the next child. An accepted child becomes the new root with the
//! verifier's p at that node; when every child is rejected (or there is none), emit a token drawn
//! from the current p. [`verify_tree`] implements it; at temperature 0 p is a point mass and the
//! rule follows the child equal to the verifier's arg-max, so greedy tree decoding is token for
//! token the verifier's greedy decoding.
//!
//! **Why the emitted token follows p exactly.** Fix a node and condition on everything drafted
//! before child j is proposed and on x₁…x_{j−1} having been rejected; call the verifier's current
//! (residual) distribution pⱼ. Claim: the token emitted at this depth is distributed as pⱼ. If no
//! j-th child exists, the token is drawn from pⱼ. Otherwise xⱼ ~ qⱼ is drawn independently of the
//! verifier's uniforms, and one rejection step with proposal qⱼ and target pⱼ keeps xⱼ = x with
//! probability qⱼ(x)·min(1, pⱼ(x)/qⱼ(x)) = min(pⱼ(x), qⱼ(x)) and rejects with probability
//! 1 − Σ min(pⱼ, qⱼ) = Σ (pⱼ − qⱼ)₊, after which, by induction on the remaining children, the
//! token follows p_{j+1} = (pⱼ − qⱼ)₊ / Σ (pⱼ − qⱼ)₊; the two parts add to pⱼ(x). At j = 1,
//! p₁ = p. A rejected token gets p_{j+1}(xⱼ) = 0 (a rejection needs pⱼ(xⱼ) < qⱼ(xⱼ)), so a later
//! sibling can never be accepted as a duplicate. The argument needs only that each qⱼ is the
//! distribution xⱼ was drawn from given what came before: sampling without replacement, a point
//! mass (then the rule is "draw y ~ p and follow the child equal to y"), and budgets that decide
//! whether a slot exists before its token is drawn all qualify. Once a child is kept, the next
//! depth uses the verifier's p conditional on exactly the kept path, so by induction over depths
//! every emitted sequence has the verifier's probability, whatever the draft.
//!
//! ## Example
//!
//! ```
//! use s4::model::S4ModelConfig;
//! use s4::speculative::{generate, speculate, GptSession, S4Session, Sampling, SpecConfig, TreeShape};
//! use s4::transformer::{Gpt, GptConfig};
//!
//! let verifier = Gpt::<f32>::new(GptConfig { vocab_size: 32, n_positions: 64, n_embd: 32, n_layer: 2, n_head: 2, ..Default::default() }, 0)?;
//! let mut cfg = S4ModelConfig::causal_lm(32);
//! cfg.layer.d_model = 16;
//! cfg.layer.d_state = 8;
//! let draft = cfg.build()?;
//! // up to 3 children at the first depth, 2 at the second, 1 below: 3 + 6 + 6 + 6 = 21 nodes
//! let tree: TreeShape = "3x2x1x1".parse()?;
//! let config = SpecConfig { tree: Some(tree), sampling: Sampling::greedy(), max_new: 20, ..Default::default() };
//! let fast = speculate(&mut S4Session::new(&draft, 8)?, &mut GptSession::new(&verifier), &[1, 2, 3], &config)?;
//! let slow = generate(&mut GptSession::new(&verifier), &[1, 2, 3], &config)?;
//! assert_eq!(fast.tokens, slow.tokens);
//! assert!(fast.stats.tree_nodes > 0);
//! # Ok::<(), s4::Error>(())
//! ```

use std::cmp::Ordering;
use std::collections::BinaryHeap;
use std::fmt;
use std::str::FromStr;
use std::time::Instant;

use rand::{RngExt, SeedableRng};
use rand_pcg::Pcg64;

use super::sampling::{sample, Sampling};
use super::{
    decode_plain, guarded_round, plain_pass, record_round, Acceptance, Drafter, Emitted, Generation, Observe,
    PayoffGuard, RoundLog, SpecConfig, Verifier,
};
use crate::error::{Error, Result};
use crate::transformer::TreeMask;

/// The largest node budget of one tree.
pub const MAX_TREE_NODES: usize = 512;
/// Children per node of a tree given by its budget alone (its depth is the budget: a chain of
/// that many nodes is one of its shapes).
const DYNAMIC_WIDTH: usize = 4;

/// The shape of the draft tree: how many children a node at each depth may get, and optionally a
/// node budget (a dynamic tree: the budget's best nodes by cumulative draft probability).
///
/// Parsed from `"4x2x2x1"` (static: every node gets its children, 4 + 8 + 16 + 16 = 44 nodes),
/// `"4x2x2x1,budget=16"` (the 16 best of those), or `"budget=32"` (dynamic, 4 children per node
/// and any depth up to the budget).
///
/// In JSON (settings files, reports) a shape is its string form.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(into = "String", try_from = "String")]
pub struct TreeShape {
    /// Children per node at depth 1, 2, … (the length is the tree's depth).
    pub widths: Vec<usize>,
    /// Most nodes in the tree (`None`: all the widths allow).
    pub budget: Option<usize>,
}

impl From<TreeShape> for String {
    fn from(shape: TreeShape) -> String {
        shape.to_string()
    }
}

impl TryFrom<String> for TreeShape {
    type Error = Error;

    fn try_from(s: String) -> Result<Self> {
        s.parse()
    }
}

impl TreeShape {
    /// A chain of γ tokens (one child per node).
    pub fn chain(gamma: usize) -> Self {
        TreeShape { widths: vec![1; gamma], budget: None }
    }

    /// A dynamic tree: up to `budget` nodes, 4 children per node, any depth up to the budget.
    pub fn dynamic(budget: usize) -> Self {
        TreeShape { widths: vec![DYNAMIC_WIDTH; budget], budget: Some(budget) }
    }

    /// Number of nodes of the tree (the budget, or the full static tree if smaller).
    pub fn nodes(&self) -> usize {
        let mut total = 0usize;
        let mut level = 1usize;
        for &w in &self.widths {
            level = level.saturating_mul(w);
            total = total.saturating_add(level);
        }
        self.budget.map_or(total, |b| b.min(total))
    }

    /// Checks the shape.
    ///
    /// # Errors
    /// No depth, a width of 0, a budget of 0, or more than [`MAX_TREE_NODES`] nodes.
    pub fn validate(&self) -> Result<()> {
        if self.widths.is_empty() || self.widths.contains(&0) {
            return Err(Error::invalid(
                "tree widths",
                format!("{:?}", self.widths),
                "at least one depth, each with at least 1 child per node",
            ));
        }
        if self.budget == Some(0) {
            return Err(Error::invalid("tree budget", 0, "at least 1 node"));
        }
        if self.nodes() > MAX_TREE_NODES {
            return Err(Error::invalid(
                "tree size",
                self.nodes(),
                format!("at most {MAX_TREE_NODES} nodes (set a budget, e.g. \"4x4x4x4,budget=64\")"),
            ));
        }
        Ok(())
    }
}

impl fmt::Display for TreeShape {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.budget {
            Some(b) if self.widths == TreeShape::dynamic(b).widths => write!(f, "budget={b}"),
            budget => {
                let widths: Vec<String> = self.widths.iter().map(|w| w.to_string()).collect();
                write!(f, "{}", widths.join("x"))?;
                if let Some(b) = budget {
                    write!(f, ",budget={b}")?;
                }
                Ok(())
            }
        }
    }
}

impl FromStr for TreeShape {
    type Err = Error;

    fn from_str(s: &str) -> Result<Self> {
        let bad = |what: &str| {
            Error::invalid(
                "tree shape",
                format!("{s:?} ({what})"),
                "widths per depth like \"4x2x2x1\", optionally \",budget=N\"; or \"budget=N\" alone",
            )
        };
        let mut shape = TreeShape { widths: vec![], budget: None };
        for part in s.split(',').map(str::trim) {
            if let Some(b) = part.strip_prefix("budget=") {
                shape.budget = Some(b.parse().map_err(|_| bad("the budget is not a number"))?);
            } else {
                shape.widths = part
                    .split('x')
                    .map(|w| w.trim().parse::<usize>())
                    .collect::<std::result::Result<_, _>>()
                    .map_err(|_| bad("a width is not a number"))?;
            }
        }
        if let (true, Some(b)) = (shape.widths.is_empty(), shape.budget) {
            shape.widths = TreeShape::dynamic(b).widths;
        }
        shape.validate()?;
        Ok(shape)
    }
}

/// How a node's children were proposed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Proposal {
    /// The most likely tokens of the draft, each a point mass.
    Deterministic,
    /// Drawn from the draft's (warped) distribution without replacement.
    WithoutReplacement,
}

/// A drafted token tree: nodes in creation order (a parent before its children, siblings in the
/// order they were proposed).
#[derive(Clone, Debug, PartialEq)]
pub struct TokenTree {
    /// The token of each node.
    pub tokens: Vec<u32>,
    /// The parent of each node (`None`: a child of the root).
    pub parents: Vec<Option<usize>>,
    /// Each node's value: its cumulative draft probability (the product of q along its path), or
    /// with [`AcceptanceOdds`] the estimated chance that verification keeps its whole path (once
    /// its token is drawn, refined by it: the value its descendants and younger siblings build on).
    pub values: Vec<f64>,
    /// Each node's sibling rank and the draft's confidence in its slot (see [`AcceptanceOdds`]).
    slots: Vec<Slot>,
    /// How children were proposed.
    pub proposal: Proposal,
    /// The draft's distribution q at the root (index 0) and at each expanded node (`dist_of`).
    dists: Vec<Vec<f64>>,
    /// Index into `dists` of each node's q, when the node was expanded (stepped).
    dist_of: Vec<Option<usize>>,
}

impl TokenTree {
    /// A tree without nodes (verification then draws from the verifier's distribution at the
    /// root: plain decoding).
    pub fn empty() -> Self {
        TokenTree {
            tokens: vec![],
            parents: vec![],
            values: vec![],
            slots: vec![],
            proposal: Proposal::Deterministic,
            dists: vec![vec![]],
            dist_of: vec![],
        }
    }

    /// Number of nodes.
    pub fn len(&self) -> usize {
        self.tokens.len()
    }

    /// Whether the tree has no node.
    pub fn is_empty(&self) -> bool {
        self.tokens.is_empty()
    }

    /// Node `i`'s rank among its siblings (0 for the first child proposed).
    pub fn sibling_rank(&self, i: usize) -> usize {
        self.slots[i].rank
    }

    /// Whether the draft stepped node `i` (its state exists in the drafter).
    pub fn stepped(&self, i: usize) -> bool {
        self.dist_of[i].is_some()
    }

    /// The nodes from depth 1 down to `i`.
    pub fn path(&self, i: usize) -> Vec<usize> {
        TreeMask::path_in(&self.parents, i)
    }

    /// The depth of every node (1 for the root's children).
    pub fn depths(&self) -> Vec<usize> {
        let mut d: Vec<usize> = Vec::with_capacity(self.len());
        for p in &self.parents {
            d.push(p.map_or(1, |p| d[p] + 1));
        }
        d
    }

    /// The children of the root (`None`) or of a node, in the order they were proposed.
    pub fn children(&self, of: Option<usize>) -> impl Iterator<Item = usize> + '_ {
        self.parents.iter().enumerate().filter(move |(_, p)| **p == of).map(|(i, _)| i)
    }

    /// The draft's distribution q at the root (`None`) or at a node it stepped.
    fn dist_at(&self, at: Option<usize>) -> Option<&[f64]> {
        match at {
            None => Some(&self.dists[0]),
            Some(n) => self.dist_of[n].map(|d| self.dists[d].as_slice()),
        }
    }

    /// The attention mask of `pending` committed tokens (a chain) followed by the tree: the
    /// root's children hang under the last pending token.
    ///
    /// # Errors
    /// `pending = 0`, or too many positions for one pass.
    pub fn mask(&self, pending: usize) -> Result<TreeMask> {
        if pending == 0 {
            return Err(Error::invalid("pending tokens", 0, "at least one (the root of the tree)"));
        }
        let parents: Vec<Option<usize>> = (0..pending)
            .map(|i| i.checked_sub(1))
            .chain(self.parents.iter().map(|p| Some(p.map_or(pending - 1, |p| pending + p))))
            .collect();
        TreeMask::new(&parents)
    }
}

/// The measured rate at which verification keeps a child it tries, by the child's sibling rank j
/// and by the draft's confidence c in it when its slot was filled (the expected draft probability
/// of the next proposal: Σ q² / (1 − Σ_{taken} q) for draws without replacement, q(x) for the
/// j-th most likely token), in 10 bins of c: r(j, c) = (kept + 2r̄ⱼ) / (tried + 2), where the
/// prior r̄ⱼ = (kept at rank j + 2c) / (tried at rank j + 2) is the rate of the rank over all bins,
/// itself starting from the draft's own confidence (two trials of prior each). The value of a j-th
/// child is then the chance that it is the kept one, r(j, cⱼ)·Π_{i<j}(1 − r(i, cᵢ)), times its
/// parent's: a tree built on these values runs deep where the draft is confident and its first
/// choices get kept, and spends siblings where they do not (EAGLE-2's rule, with the draft's
/// confidence calibrated against the verifier in this generation, or in all of a
/// [`Calibration`](super::Calibration)'s).
///
/// Once a drawn child's token x is known, its rate is refined by the probability d = qⱼ(x) its
/// proposal gave it, in a second table of the same form: r'(j, d) with r(j, cⱼ) as prior (a tail
/// draw is kept less often than a confident one: with the demo pair at T = 1, 0.66 of the draws
/// with d < 0.02, 0.99 of those with d > 0.95). The refined rate is the node's value for its
/// descendants and its younger siblings; whether the node itself is in the tree was decided before
/// its draw, as exactness requires (see the module docs).
///
/// The counts are expectations, not coins: the verifier scores every node of a tree, so for every
/// child of every expanded node (on the accepted path or not) both chances are known exactly. The
/// j-th child is tried with probability wⱼ = R·Π_{i<j} (1 − aᵢ), where R is the chance that
/// verification walks to its parent and keeps it (1 at the root; a kept child's is wⱼ·aⱼ) and
/// aᵢ = min(1, pᵢ(xᵢ)/qᵢ(xᵢ)) keeps the elder sibling xᵢ actually drafted, and then kept with
/// probability kⱼ = Σ_y min(pⱼ(y), qⱼ(y)) (the residual pⱼ and the proposal qⱼ of the module docs,
/// averaged over the draw of xⱼ), or aⱼ for the drawn token's own table. A round adds wⱼ to
/// "tried" and wⱼ·kⱼ (wⱼ·aⱼ) to "kept" for all its children: the expectations of what verification
/// would count, from every node instead of only the path it walks, and without the noise of its
/// accept/reject draws (a Rao–Blackwellized count).
#[derive(Clone, Debug, Default)]
pub struct AcceptanceOdds {
    /// By the confidence before the draw.
    before: RateTable,
    /// By the drawn token's proposal probability (draws without replacement).
    drawn: RateTable,
}

impl AcceptanceOdds {
    /// r(j, c) (see the type's docs).
    pub fn rate(&self, rank: usize, confidence: f64) -> f64 {
        self.before.rate(rank, confidence, confidence)
    }

    /// r'(j, d): the rate of a j-th child drawn with proposal probability `drawn`, whose rate
    /// before the draw was `before` (see the type's docs).
    pub fn rate_drawn(&self, rank: usize, drawn: f64, before: f64) -> f64 {
        self.drawn.rate(rank, drawn, before)
    }

    /// Counts every child of `tree` with its chances of being tried and kept, from the
    /// verifier's distributions `p` at the root (`p[0]`) and at each node (`p[1 + i]`), as
    /// [`verify_tree`] takes them.
    ///
    /// # Errors
    /// As [`verify_tree`]: `p` of the wrong number or lengths.
    pub fn record(&mut self, tree: &TokenTree, p: &[Vec<f64>]) -> Result<()> {
        check_distributions(tree, p)?;
        // the chance that verification walks to each node and keeps it (parents come first)
        let mut reached = vec![0.0; tree.len()];
        let parents = std::iter::once(None).chain((0..tree.len()).filter(|&i| tree.stepped(i)).map(Some));
        for at in parents {
            let Some(q) = tree.dist_at(at) else { continue };
            let mut target = Residual::new(&p[at.map_or(0, |n| n + 1)], q, tree.proposal);
            // the chance that the next child is tried: its parent reached, its elder siblings rejected
            let mut tried = at.map_or(1.0, |n| reached[n]);
            for c in tree.children(at) {
                let x = tree.tokens[c] as usize;
                let slot = tree.slots[c];
                let proposed = target.proposed(x);
                let kept = (target.target[x] / proposed).min(1.0);
                self.before.add(slot.rank, slot.confidence, tried, tried * target.keep_chance(x));
                if tree.proposal == Proposal::WithoutReplacement {
                    self.drawn.add(slot.rank, proposed, tried, tried * kept);
                }
                reached[c] = tried * kept;
                tried *= 1.0 - kept;
                target.reject(x);
            }
        }
        Ok(())
    }
}

/// Sibling ranks [`AcceptanceOdds`] counts apart (later ranks share the last).
const ODDS_RANKS: usize = 4;
/// Bins of a probability (the draft's confidence) [`AcceptanceOdds`] counts apart.
const ODDS_BINS: usize = 10;

/// Tried and kept counts by sibling rank and by a probability in [`ODDS_BINS`] bins.
#[derive(Clone, Debug, Default)]
struct RateTable {
    tried: [[f64; ODDS_BINS]; ODDS_RANKS],
    kept: [[f64; ODDS_BINS]; ODDS_RANKS],
}

impl RateTable {
    fn cell(rank: usize, x: f64) -> (usize, usize) {
        let bin = (x.clamp(0.0, 1.0) * ODDS_BINS as f64) as usize;
        (rank.min(ODDS_RANKS - 1), bin.min(ODDS_BINS - 1))
    }

    fn add(&mut self, rank: usize, x: f64, tried: f64, kept: f64) {
        let (j, b) = Self::cell(rank, x);
        self.tried[j][b] += tried;
        self.kept[j][b] += kept;
    }

    /// (kept + 2r̄) / (tried + 2) in `x`'s bin, where r̄ = (kept at the rank + 2·prior) / (tried at
    /// the rank + 2).
    fn rate(&self, rank: usize, x: f64, prior: f64) -> f64 {
        let (j, b) = Self::cell(rank, x);
        let (tried, kept) = (self.tried[j].iter().sum::<f64>(), self.kept[j].iter().sum::<f64>());
        let rank_rate = (kept + 2.0 * prior.clamp(0.0, 1.0)) / (tried + 2.0);
        (self.kept[j][b] + 2.0 * rank_rate) / (self.tried[j][b] + 2.0)
    }
}

/// A node's place among its siblings, as [`AcceptanceOdds`] counts it.
#[derive(Clone, Copy, Debug, PartialEq)]
struct Slot {
    /// Its rank among its siblings (0 for the first child proposed).
    rank: usize,
    /// The draft's confidence in the slot before its token was drawn.
    confidence: f64,
}

/// The verifier's distribution at a node as its children are tried in order (the module docs'
/// pⱼ): p₁ = p, and after the rejection of child j the residual norm(max(0, pⱼ − qⱼ)), where qⱼ is
/// the j-th child's proposal: a point mass, or q without the elder siblings, renormalized.
struct Residual {
    target: Vec<f64>,
    proposal: Proposal,
    /// Without replacement: q with zeros at the children tried so far (empty for point masses).
    rest: Vec<f64>,
    /// 1 − the draft probability of the children tried so far.
    left: f64,
}

impl Residual {
    /// p₁ = `p` at a node whose draft distribution is `q`.
    fn new(p: &[f64], q: &[f64], proposal: Proposal) -> Self {
        let rest = if proposal == Proposal::WithoutReplacement { q.to_vec() } else { vec![] };
        Residual { target: p.to_vec(), proposal, rest, left: 1.0 }
    }

    /// qⱼ(x): the probability the next child's proposal gave its token `x`.
    fn proposed(&self, x: usize) -> f64 {
        match self.proposal {
            Proposal::Deterministic => 1.0,
            Proposal::WithoutReplacement => self.rest[x] / self.left,
        }
    }

    /// Σ_y min(pⱼ(y), qⱼ(y)): the chance that the next child, token `x`, is kept.
    fn keep_chance(&self, x: usize) -> f64 {
        match self.proposal {
            Proposal::Deterministic => self.target[x],
            Proposal::WithoutReplacement => {
                let inv = 1.0 / self.left;
                self.target.iter().zip(&self.rest).map(|(t, r)| t.min(r * inv)).sum()
            }
        }
    }

    /// pⱼ₊₁ after child `x` is rejected.
    fn reject(&mut self, x: usize) {
        // (pⱼ − qⱼ)₊ in one pass to sum it, one to write it normalized (without a division per
        // token: this runs for every child of every node of every round); when rounding leaves
        // nothing, pⱼ and qⱼ were equal (a rejection had probability 0) and pⱼ stays
        match self.proposal {
            Proposal::Deterministic => {
                let minus = |y: usize, t: f64| if y == x { (t - 1.0).max(0.0) } else { t };
                let total: f64 = self.target.iter().enumerate().map(|(y, &t)| minus(y, t)).sum();
                if total > 0.0 {
                    let scale = 1.0 / total;
                    self.target.iter_mut().enumerate().for_each(|(y, t)| *t = minus(y, *t) * scale);
                }
            }
            Proposal::WithoutReplacement => {
                let inv = 1.0 / self.left;
                let total: f64 = self.target.iter().zip(&self.rest).map(|(t, r)| (t - r * inv).max(0.0)).sum();
                if total > 0.0 {
                    let scale = 1.0 / total;
                    for (t, r) in self.target.iter_mut().zip(&self.rest) {
                        *t = (*t - r * inv).max(0.0) * scale;
                    }
                }
                self.left -= self.rest[x];
                self.rest[x] = 0.0;
            }
        }
    }
}

/// An entry of the drafting heap: fill the next child slot of a node, or step a node.
#[derive(Debug)]
struct Entry {
    priority: f64,
    order: usize,
    /// `Ok(parent)` for a child slot (`None` = the root), `Err(node)` to expand a node.
    what: std::result::Result<Option<usize>, usize>,
}

impl PartialEq for Entry {
    fn eq(&self, other: &Self) -> bool {
        self.cmp(other) == Ordering::Equal
    }
}
impl Eq for Entry {}
impl PartialOrd for Entry {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}
impl Ord for Entry {
    /// Highest priority first; the earlier entry on ties.
    fn cmp(&self, other: &Self) -> Ordering {
        self.priority.total_cmp(&other.priority).then(other.order.cmp(&self.order))
    }
}

/// The children proposed so far at one node.
#[derive(Debug, Default)]
struct Slots {
    /// Proposed tokens.
    taken: Vec<u32>,
    /// Their total draft probability.
    mass: f64,
    /// Without replacement: Σ q² over the tokens not taken.
    square_left: f64,
    /// Deterministic: the tokens by decreasing q.
    ranked: Vec<u32>,
    /// The estimated chance that verification rejects every child proposed so far.
    miss: f64,
}

impl Slots {
    fn new(q: &[f64], proposal: Proposal, width: usize) -> Self {
        let ranked = match proposal {
            // the `width` most likely tokens, by decreasing q (the smaller id first on ties):
            // for a few, one pass that inserts into a short sorted list (a token that does not
            // beat the last is one comparison); for more, a selection in O(V) and a sort of those
            // (a full sort of the V tokens at every expanded node took a tenth of a tree round's
            // drafting, the selection still a third of a greedy tree's extra drafting time)
            Proposal::Deterministic if width <= 8 => {
                let mut top: Vec<u32> = Vec::with_capacity(width + 1);
                for (x, &v) in q.iter().enumerate().filter(|(_, v)| **v > 0.0) {
                    // an equal q ranks after the ones in the list, whose ids are smaller
                    if top.len() == width && top.last().is_none_or(|&t| v <= q[t as usize]) {
                        continue;
                    }
                    let at = top.partition_point(|&t| q[t as usize] >= v);
                    top.insert(at, x as u32);
                    top.truncate(width);
                }
                top
            }
            Proposal::Deterministic => {
                let by_q = |a: &u32, b: &u32| q[*b as usize].total_cmp(&q[*a as usize]).then(a.cmp(b));
                let mut order: Vec<u32> = (0..q.len() as u32).filter(|&x| q[x as usize] > 0.0).collect();
                if width < order.len() {
                    order.select_nth_unstable_by(width, by_q);
                    order.truncate(width);
                }
                order.sort_by(by_q);
                order
            }
            Proposal::WithoutReplacement => vec![],
        };
        let square_left = match proposal {
            Proposal::Deterministic => 0.0,
            Proposal::WithoutReplacement => q.iter().map(|v| v * v).sum(),
        };
        Slots { taken: vec![], mass: 0.0, square_left, ranked, miss: 1.0 }
    }

    /// The expected draft probability of the next child, or `None` when q has no token left.
    fn next_value(&self, q: &[f64], proposal: Proposal) -> Option<f64> {
        match proposal {
            Proposal::Deterministic => self.ranked.get(self.taken.len()).map(|&x| q[x as usize]),
            Proposal::WithoutReplacement => {
                let left = 1.0 - self.mass;
                (left > 1e-12 && self.square_left > 0.0).then(|| self.square_left / left)
            }
        }
    }

    /// Proposes the next child: the next ranked token, or a draw from q without the taken ones.
    fn propose(&mut self, q: &[f64], proposal: Proposal, rng: &mut Pcg64) -> u32 {
        let x = match proposal {
            Proposal::Deterministic => self.ranked[self.taken.len()],
            Proposal::WithoutReplacement => {
                let mut rest = q.to_vec();
                for &t in &self.taken {
                    rest[t as usize] = 0.0;
                }
                sample(&rest, rng)
            }
        };
        self.taken.push(x);
        self.mass += q[x as usize];
        self.square_left -= q[x as usize] * q[x as usize];
        x
    }
}

/// Drafts a token tree: the drafter consumes `pending` (the root), then nodes are added best first
/// under `shape` (see the module docs), each expansion one [`Drafter::tree_step`] from its
/// parent's state. `sampling` warps the draft's logits into q; with `deterministic` the children
/// are the most likely tokens (of q, or of the unwarped softmax at temperature 0), otherwise
/// draws from q without replacement.
///
/// # Errors
/// An invalid shape, an empty `pending`, drafter failures.
pub fn draft_tree<D: Drafter + ?Sized>(
    drafter: &mut D,
    pending: &[u32],
    shape: &TreeShape,
    sampling: &Sampling,
    deterministic: bool,
    odds: Option<&AcceptanceOdds>,
    rng: &mut Pcg64,
) -> Result<TokenTree> {
    shape.validate()?;
    let proposal = if deterministic { Proposal::Deterministic } else { Proposal::WithoutReplacement };
    // rank by the draft's own softmax at temperature 0, where the warped q is a point mass
    let warp = if sampling.is_greedy() { Sampling::default() } else { *sampling };
    let root_len = drafter.len() + pending.len();
    let budget = shape.nodes();
    let logits = drafter.extend(pending)?;
    let mut tree = TokenTree {
        tokens: vec![],
        parents: vec![],
        values: vec![],
        slots: vec![],
        proposal,
        dists: vec![warp.probs(&logits)?],
        dist_of: vec![],
    };
    let mut slots: Vec<Slots> = vec![Slots::new(&tree.dists[0], proposal, shape.widths[0])];
    // slot index of each node's children (index 0 is the root's)
    let mut slot_of: Vec<Option<usize>> = vec![];
    let mut heap = BinaryHeap::new();
    let mut order = 0usize;
    let mut push = |heap: &mut BinaryHeap<Entry>, priority: f64, what| {
        heap.push(Entry { priority, order, what });
        order += 1;
    };
    // the weight of a parent's next child, with the draft's confidence in it and its estimated
    // rate of being kept when tried: the chance that it is the kept one, or its expected q
    let weigh = |slots: &Slots, q: &[f64]| {
        let c = slots.next_value(q, proposal)?;
        Some(match odds {
            Some(o) => {
                let r = o.rate(slots.taken.len(), c);
                (slots.miss * r, c, r)
            }
            None => (c, c, c),
        })
    };
    if let Some((v, ..)) = weigh(&slots[0], &tree.dists[0]) {
        push(&mut heap, v, Ok(None));
    }
    while tree.len() < budget {
        let Some(entry) = heap.pop() else { break };
        match entry.what {
            Ok(parent) => {
                let (s, q_index, depth, base) = match parent {
                    None => (0, 0, 0, 1.0),
                    Some(p) => (
                        slot_of[p].expect("expanded"),
                        tree.dist_of[p].expect("expanded"),
                        tree.path(p).len(),
                        tree.values[p],
                    ),
                };
                let q = &tree.dists[q_index];
                let rank = slots[s].taken.len();
                let (_, confidence, rate) = weigh(&slots[s], q).expect("a slot is queued only with a token left");
                let (miss, left) = (slots[s].miss, 1.0 - slots[s].mass);
                let x = slots[s].propose(q, proposal, rng);
                // the rate refined by the drawn token's proposal probability
                let rate = match (odds, proposal) {
                    (Some(o), Proposal::WithoutReplacement) => o.rate_drawn(rank, q[x as usize] / left, rate),
                    _ => rate,
                };
                slots[s].miss *= 1.0 - rate;
                let node = tree.len();
                tree.tokens.push(x);
                tree.parents.push(parent);
                tree.values.push(base * if odds.is_some() { miss * rate } else { q[x as usize] });
                tree.slots.push(Slot { rank, confidence });
                tree.dist_of.push(None);
                slot_of.push(None);
                if slots[s].taken.len() < shape.widths[depth]
                    && let Some((v, ..)) = weigh(&slots[s], q)
                {
                    push(&mut heap, base * v, Ok(parent));
                }
                if depth + 1 < shape.widths.len() {
                    push(&mut heap, tree.values[node], Err(node));
                }
            }
            Err(node) => {
                let path: Vec<u32> = tree.path(node).iter().map(|&i| tree.tokens[i]).collect();
                let logits = drafter.tree_step(root_len, node, tree.parents[node], &path)?;
                let q = warp.probs(&logits)?;
                let depth = path.len();
                slots.push(Slots::new(&q, proposal, shape.widths[depth]));
                slot_of[node] = Some(slots.len() - 1);
                tree.dists.push(q);
                tree.dist_of[node] = Some(tree.dists.len() - 1);
                let s = slots.len() - 1;
                if let Some((v, ..)) = weigh(&slots[s], &tree.dists[tree.dists.len() - 1]) {
                    push(&mut heap, tree.values[node] * v, Ok(Some(node)));
                }
            }
        }
    }
    Ok(tree)
}

/// The result of verifying a tree.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TreeOutcome {
    /// The accepted nodes, from depth 1 down.
    pub path: Vec<usize>,
    /// The token emitted after them (drawn from the verifier's residual distribution).
    pub next: u32,
    /// Every child tried, in order: the node and whether it was kept.
    pub tried: Vec<(usize, bool)>,
}

/// Recursive rejection sampling over a token tree (see the module docs): `p[0]` is the verifier's
/// (warped) distribution at the root, `p[1 + i]` at node i. The emitted tokens follow the
/// verifier's distribution exactly.
///
/// # Errors
/// `p.len() != tree.len() + 1`, distributions of the wrong length, or a drafted token with draft
/// probability 0 under its own proposal.
pub fn verify_tree<R: rand::Rng + ?Sized>(tree: &TokenTree, p: &[Vec<f64>], rng: &mut R) -> Result<TreeOutcome> {
    check_distributions(tree, p)?;
    let v = p[0].len();
    let mut path = vec![];
    let mut tried = vec![];
    let mut at: Option<usize> = None;
    'depth: loop {
        let q = tree.dist_at(at);
        let mut target = Residual::new(&p[at.map_or(0, |n| n + 1)], q.unwrap_or(&[]), tree.proposal);
        for c in tree.children(at) {
            let x = tree.tokens[c] as usize;
            if q.is_none() {
                return Err(Error::numerical("tree verification", format!("node {c} has an unexpanded parent")));
            }
            if x >= v {
                return Err(Error::invalid(format!("tree node {c}"), x, format!("a token id < vocabulary size {v}")));
            }
            let qx = target.proposed(x);
            if qx.is_nan() || qx <= 0.0 {
                return Err(Error::numerical(
                    "tree verification",
                    format!("node {c} (token {x}) has probability 0 under its own proposal"),
                ));
            }
            let r: f64 = rng.random();
            let kept = r < target.target[x] / qx;
            tried.push((c, kept));
            if kept {
                path.push(c);
                at = Some(c);
                continue 'depth;
            }
            target.reject(x);
        }
        return Ok(TreeOutcome { path, next: sample(&target.target, rng), tried });
    }
}

/// Checks that `p` holds one distribution at the root and one per node of `tree`, all of the
/// length of the tree's draft distributions.
fn check_distributions(tree: &TokenTree, p: &[Vec<f64>]) -> Result<()> {
    if p.len() != tree.len() + 1 {
        return Err(Error::invalid(
            "verifier distributions",
            p.len(),
            format!("one at the root and one per tree node ({})", tree.len() + 1),
        ));
    }
    let v = p[0].len();
    if let Some(i) = p.iter().position(|r| r.len() != v) {
        return Err(Error::invalid(format!("verifier distribution {i}"), p[i].len(), format!("length {v}")));
    }
    if let Some(q) = tree.dists.iter().find(|q| !q.is_empty() && q.len() != v) {
        return Err(Error::invalid("draft distribution in the tree", q.len(), format!("length {v} (the verifier's)")));
    }
    Ok(())
}

/// [`speculate`](super::speculate) with a token tree per round (the models are reset and the
/// settings checked by the caller): draft a tree from the drafter's state, score the pending
/// tokens and the tree in one verifier pass, keep the path [`verify_tree`] accepts plus its token.
pub(super) fn speculate_tree<D: Drafter + Send + ?Sized, V: Verifier + ?Sized>(
    drafter: &mut D,
    verifier: &mut V,
    prompt: &[u32],
    config: &SpecConfig,
    shape: &TreeShape,
    odds: &mut AcceptanceOdds,
) -> Result<Generation> {
    shape.validate()?;
    if config.acceptance != Acceptance::Exact {
        return Err(Error::invalid(
            "acceptance with a tree",
            "typical",
            "exact acceptance (typical acceptance is implemented for chains only)",
        ));
    }
    let mut rng = Pcg64::seed_from_u64(config.seed);
    let greedy = config.sampling.is_greedy();
    let deterministic = greedy || config.argmax_draft;
    let warp = if greedy { Sampling::greedy() } else { config.sampling };
    let mut log = RoundLog::new();
    let mut out: Vec<u32> = Vec::with_capacity(config.max_new.min(4096) + 16);
    let mut pending_v: Vec<u32> = prompt.to_vec();
    let mut pending_d: Vec<u32> = prompt.to_vec();
    let mut emitted = Emitted::default();
    let mut nodes_total = 0usize;
    // (tried, kept) per sibling rank
    let mut by_rank: Vec<(usize, usize)> = vec![];
    // a dynamic tree (a budget) falls back to plain decoding where speculation does not pay
    let mut guard = (config.fallback && shape.budget.is_some()).then(PayoffGuard::default);

    'rounds: while out.len() < config.max_new {
        // no deeper, and no more nodes, than the tokens still wanted (as a chain's γ), no wider
        // than the verifier's context
        let remaining = config.max_new - out.len();
        if guard.as_ref().is_some_and(PayoffGuard::gave_up) {
            decode_plain(verifier, pending_v, &mut out, config, &mut rng, &mut log.stats)?;
            break;
        }
        let speculate_now = guarded_round(&mut guard, drafter, remaining, &pending_d)?;
        let round = Instant::now();
        let catch_up = if speculate_now { log.catch_up(drafter, &mut pending_d)? } else { 0.0 };
        let base = verifier.len();
        let room = verifier.max_len().map_or(usize::MAX, |m| m.saturating_sub(base + pending_v.len()));
        let mut round_shape = shape.clone();
        round_shape.widths.truncate(remaining - 1);
        round_shape.budget = Some(shape.nodes().min(room).min(remaining - 1));
        let t = Instant::now();
        let (tree, root) = if round_shape.widths.is_empty() || room == 0 || !speculate_now {
            (TokenTree::empty(), None)
        } else {
            let root = drafter.len() + pending_d.len();
            let steps_before = pending_d.len();
            let tree =
                draft_tree(drafter, &pending_d, &round_shape, &config.sampling, deterministic, Some(odds), &mut rng)?;
            let stepped = (0..tree.len()).filter(|&i| tree.stepped(i)).count();
            log.draft(steps_before + stepped, t.elapsed().as_secs_f64());
            pending_d.clear();
            (tree, Some(root))
        };
        // one pass over the pending tokens and the tree
        let t = Instant::now();
        let mut input = pending_v.clone();
        input.extend_from_slice(&tree.tokens);
        // a round without a tree (the fall-back's plain rounds) is an ordinary causal pass
        let (logits, waited) = if tree.is_empty() {
            let observe =
                Observe { emitted: &mut emitted, draft_warp: if deterministic { Sampling::greedy() } else { warp } };
            plain_pass(verifier, drafter, &input, &mut pending_d, guard.as_mut(), observe, &mut log)?
        } else {
            (verifier.score_tree(&input, &tree.mask(pending_v.len())?)?, 0.0)
        };
        log.pass(input.len(), t.elapsed().as_secs_f64() - waited, !tree.is_empty());
        let catch_up = catch_up + waited;
        let first = pending_v.len() - 1;
        let p = (first..input.len())
            .map(|i| {
                let row = logits.row(i);
                warp.probs(row.as_slice().ok_or_else(|| Error::numerical("speculate", "non-contiguous logits"))?)
            })
            .collect::<Result<Vec<_>>>()?;
        let outcome = verify_tree(&tree, &p, &mut rng)?;
        if tree.is_empty() {
            emitted.push(base + pending_v.len(), outcome.next, p[0][outcome.next as usize]);
        }
        odds.record(&tree, &p)?;
        for &(node, kept) in &outcome.tried {
            let rank = tree.sibling_rank(node);
            if by_rank.len() <= rank {
                by_rank.resize(rank + 1, (0, 0));
            }
            by_rank[rank].0 += 1;
            by_rank[rank].1 += usize::from(kept);
        }
        let n = outcome.path.len();
        let last = outcome.path.last().copied();
        if !tree.is_empty() {
            nodes_total += tree.len();
            log.round(tree.len(), n, tree.children(last).next().is_some());
        }
        if let Some(g) = &mut guard {
            let depth = tree.depths().into_iter().max().unwrap_or(0);
            record_round(g, &log, input.len(), (!tree.is_empty()).then_some((n + 1, depth + 1)), round, catch_up);
        }
        // keep the pending tokens and the accepted path
        let positions: Vec<usize> =
            (0..pending_v.len()).chain(outcome.path.iter().map(|&i| pending_v.len() + i)).collect();
        let kept: Vec<u32> = positions.iter().map(|&i| input[i]).collect();
        if !tree.is_empty() {
            verifier.keep(base, &positions, &kept)?;
        }
        let path_tokens: Vec<u32> = outcome.path.iter().map(|&i| tree.tokens[i]).collect();
        if let Some(root) = root {
            // the drafter continues from the deepest stepped node of the path (a leaf was never
            // stepped: its token joins the pending ones)
            let stepped = outcome.path.iter().take_while(|&&i| tree.stepped(i)).count();
            let node = stepped.checked_sub(1).map(|i| outcome.path[i]);
            drafter.tree_adopt(root, node, &path_tokens[..stepped])?;
            pending_d.extend_from_slice(&path_tokens[stepped..]);
        }
        drafter.commit(drafter.len());
        for &x in path_tokens.iter().chain(std::iter::once(&outcome.next)) {
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
    stats.tree_nodes = nodes_total;
    stats.acceptance_by_rank = by_rank.iter().map(|&(t, k)| k as f64 / t.max(1) as f64).collect();
    stats.mean_tree_nodes = if stats.rounds > 0 { nodes_total as f64 / stats.rounds as f64 } else { 0.0 };
    Ok(Generation { tokens: out, stats })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// What [`AcceptanceOdds::record`] counts is what verification counts, on average: over many
    /// trees of two children at the root and two under the first (drawn without replacement, or
    /// the most likely as point masses), the recorded "tried" and "kept" per rank (expectations,
    /// in both tables) and the ones [`verify_tree`] reports (draws) agree within 4.5 standard
    /// errors of the draws; counting every child as tried (no weights) is far outside.
    #[test]
    fn recorded_keep_chances_are_verifications_counts_on_average() {
        let q = [0.4, 0.25, 0.2, 0.1, 0.05];
        let q0 = [0.1, 0.15, 0.5, 0.05, 0.2];
        let p = vec![
            vec![0.1, 0.3, 0.1, 0.35, 0.15],
            vec![0.3, 0.1, 0.2, 0.1, 0.3],
            vec![0.2; 5],
            vec![0.2; 5],
            vec![0.2; 5],
        ];
        let mut rng = Pcg64::seed_from_u64(3);
        let n = 20_000;
        for proposal in [Proposal::WithoutReplacement, Proposal::Deterministic] {
            let mut odds = AcceptanceOdds::default();
            let (mut tried, mut kept) = ([0.0f64; 2], [0.0f64; 2]);
            for _ in 0..n {
                let mut tree = TokenTree { proposal, dists: vec![q.to_vec(), q0.to_vec()], ..TokenTree::empty() };
                for (parent, dist) in [(None, &q), (Some(0), &q0)] {
                    let mut slots = Slots::new(dist, proposal, 2);
                    for rank in 0..2 {
                        tree.tokens.push(slots.propose(dist, proposal, &mut rng));
                        tree.parents.push(parent);
                        tree.values.push(0.0);
                        tree.slots.push(Slot { rank, confidence: 0.5 });
                        tree.dist_of.push(None);
                    }
                }
                tree.dist_of[0] = Some(1);
                odds.record(&tree, &p).unwrap();
                for (node, k) in verify_tree(&tree, &p, &mut rng).unwrap().tried {
                    tried[tree.slots[node].rank] += 1.0;
                    kept[tree.slots[node].rank] += f64::from(u8::from(k));
                }
            }
            let tolerance = 4.5 * (2.0 * n as f64 * 0.25).sqrt();
            for rank in 0..2 {
                let what = format!("{proposal:?}, rank {rank}");
                let mut tables = vec![("before the draw", &odds.before)];
                if proposal == Proposal::WithoutReplacement {
                    tables.push(("by the drawn token", &odds.drawn));
                }
                for (table, t) in tables {
                    let (t_tried, t_kept) = (t.tried[rank].iter().sum::<f64>(), t.kept[rank].iter().sum::<f64>());
                    assert!(
                        (t_tried - tried[rank]).abs() < tolerance,
                        "{what} {table}: tried {t_tried} vs {}",
                        tried[rank]
                    );
                    assert!((t_kept - kept[rank]).abs() < tolerance, "{what} {table}: kept {t_kept} vs {}", kept[rank]);
                }
                // every tree offers each rank twice; verification tries a rank-0 child under the
                // first only when that was kept, a rank-1 child only after a rejection
                assert!(2.0 * n as f64 - tried[rank] > 5.0 * tolerance, "{what}: tried {}", tried[rank]);
            }
        }
    }

    /// The children of a deterministic node are the `width` most likely tokens by decreasing q,
    /// the smaller id first on ties: the selection equals a full sort, ties and zeros included.
    #[test]
    fn deterministic_children_are_the_most_likely_tokens_in_order() {
        let q: Vec<f64> = (0..256).map(|i| [0.0, 0.5, 0.25, 0.25, 1.0][(i * 7) % 5] * (1 + i % 3) as f64).collect();
        for width in [1, 2, 3, 4, 5, 8, 9, 17, 200, 256, 300] {
            let mut sorted: Vec<u32> = (0..256u32).filter(|&x| q[x as usize] > 0.0).collect();
            sorted.sort_by(|&a, &b| q[b as usize].total_cmp(&q[a as usize]).then(a.cmp(&b)));
            sorted.truncate(width);
            assert_eq!(Slots::new(&q, Proposal::Deterministic, width).ranked, sorted, "width {width}");
        }
    }
}

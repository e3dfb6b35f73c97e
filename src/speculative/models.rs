//! [`Drafter`] and [`Verifier`] for the crate's models: an S4 language model stepping in
//! recurrent mode ([`S4Session`]) and the GPT-2-layout transformer with its KV cache
//! ([`GptSession`]).
//!
//! Both roll back cheaply: the S4 session picks a stored state snapshot, the transformer
//! session truncates its KV cache; after a rollback the models continue exactly as if the
//! dropped tokens had never been consumed.
//!
//! # Example
//!
//! ```
//! use ndarray::Array2;
//! use s4::model::S4ModelConfig;
//! use s4::speculative::{Drafter, GptSession, S4Session, Verifier};
//! use s4::transformer::{Gpt, GptConfig};
//!
//! let close = |a: &[f32], b: &[f32]| a.iter().zip(b).all(|(x, y)| (x - y).abs() < 1e-4);
//!
//! // the verifier: one pass scores several positions; rolling back truncates the cache
//! let gpt = Gpt::<f32>::new(GptConfig { vocab_size: 16, n_positions: 32, n_embd: 16, n_layer: 1, n_head: 2, ..Default::default() }, 0)?;
//! let mut v = GptSession::new(&gpt);
//! let all: Array2<f32> = v.score(&[1, 2, 3, 4])?; // (4, V): row i follows tokens[..=i]
//! assert_eq!(all.dim(), (4, 16));
//! Verifier::rollback(&mut v, 2)?;
//! let tail = v.score(&[3, 4])?;
//! assert!(close(tail.as_slice().unwrap(), all.slice(ndarray::s![2.., ..]).to_slice().unwrap()));
//!
//! // the draft consumes tokens by recurrent steps; its logits are the convolutional prefill's
//! let mut cfg = S4ModelConfig::causal_lm(16);
//! cfg.n_layers = 1;
//! cfg.layer.d_model = 8;
//! cfg.layer.d_state = 4;
//! let s4 = cfg.build()?;
//! let prompt: Vec<u32> = (0..40).map(|i| (i * 7 % 16) as u32).collect();
//! let mut steps = S4Session::new(&s4, 4)?; // can roll back up to 4 tokens
//! let q = steps.extend(&prompt)?; // next-token logits, length V
//! let (conv, _state) = s4.prefill(Array2::from_shape_vec((1, 40), prompt.clone()).unwrap().view())?;
//! assert!(close(&q, conv.as_slice().unwrap())); // recurrence = convolution
//! Drafter::rollback(&mut steps, 38)?; // a stored snapshot
//! assert!(close(&steps.extend(&prompt[38..])?, &q));
//! assert!(Drafter::rollback(&mut steps, 41).is_err()); // only 40 tokens were consumed
//! # Ok::<(), s4::Error>(())
//! ```

use std::collections::VecDeque;
use std::path::Path;

use ndarray::{Array2, Array3, ArrayView2, Axis};

use super::{Drafter, Verifier};
use crate::budget::Estimate;
use crate::error::{Error, Result};
use crate::model::{Input, ModelState, Pooling, RecurrentModel, S4Model, S4ModelConfig, StepInput, StepWorkspace};
use crate::scalar::{HalfPrecision, MatmulPrecision};
use crate::transformer::{Gpt, KvCache, TreeMask};

/// An S4 language model as a drafter (and, for tests and self-drafting, a verifier).
///
/// Every token, the prompt's too, is consumed by a recurrent step: at batch 1 that costs less
/// than a convolutional prefill ([`S4Model::prefill`]) up to 8192 tokens at least. The states
/// after each of the last `window` lengths before the current one are kept as snapshots, so
/// rolling back to any of them is a pick, not a replay. A state is layers × H × N/2 complex
/// numbers (e.g. 4 × 256 × 32 × 8 bytes = 256 KB); a step that keeps a snapshot writes the new
/// state into a spare buffer ([`RecurrentModel::step_with`]) and keeps the old one, so
/// neither a step nor a rollback copies a state.
#[derive(Debug)]
pub struct S4Session<'a> {
    model: &'a S4Model<f32>,
    rec: RecurrentModel<'a, f32>,
    /// The state after the `len` tokens consumed.
    state: ModelState<f32>,
    len: usize,
    /// (length, state after consuming `length` tokens) for up to `window` lengths below `len`,
    /// oldest first.
    history: VecDeque<(usize, ModelState<f32>)>,
    window: usize,
    /// No rollback goes below this length ([`Drafter::commit`]): shorter states are not kept.
    committed: usize,
    /// Tree drafting: the state of each stepped tree node (index = node), grown from `state`.
    tree: Vec<Option<ModelState<f32>>>,
    /// State buffers no longer in use, for the next steps to write into (a fresh state per step
    /// cost about a fifth of the demo draft's step in allocation and page faults), last freed
    /// first: the buffers in use stay the few of the current round, warm in the cache.
    spare: Vec<ModelState<f32>>,
    /// The steps' intermediate values, kept so that a step allocates nothing.
    workspace: StepWorkspace<f32>,
}

/// Checks that an S4 model (`what` names it in the error, e.g. its folder) is a causal language
/// model, one that can generate or draft: token inputs (an embedding), causal layers, no pooling,
/// and one output per vocabulary entry.
///
/// # Errors
/// Any of these missing, named (e.g. a classifier checkpoint given to `s4 generate`).
pub fn check_causal_lm(cfg: &S4ModelConfig, what: &str) -> Result<()> {
    let problem = match cfg.vocab_size {
        None => Some("it reads real-valued inputs, not tokens".to_string()),
        Some(_) if cfg.pooling != Pooling::None => Some(format!("it pools its outputs ({:?})", cfg.pooling)),
        Some(_) if cfg.layer.bidirectional => Some("its layers are bidirectional".to_string()),
        Some(v) if cfg.d_output != v => Some(format!("it has {} outputs for a vocabulary of {v}", cfg.d_output)),
        Some(_) => None,
    };
    match problem {
        Some(p) => Err(Error::invalid(
            what,
            format!("not a causal language model ({p})"),
            "an S4 model with an embedding, causal layers, no pooling and one output per token (e.g. \
             S4ModelConfig::causal_lm)",
        )),
        None => Ok(()),
    }
}

impl<'a> S4Session<'a> {
    /// A session over `model` that can roll back up to `window` tokens (at least 1; a round of
    /// speculative decoding needs γ).
    ///
    /// # Errors
    /// A model that is not a causal token model without pooling, or `window = 0`.
    pub fn new(model: &'a S4Model<f32>, window: usize) -> Result<Self> {
        check_causal_lm(model.config(), "model")?;
        if window == 0 {
            return Err(Error::invalid("rollback window", 0, "at least 1 token"));
        }
        let rec = model.recurrent()?;
        let state = rec.zero_state(1);
        Ok(S4Session {
            model,
            rec,
            state,
            len: 0,
            history: VecDeque::new(),
            window,
            committed: 0,
            tree: vec![],
            spare: vec![],
            workspace: StepWorkspace::default(),
        })
    }

    /// The current recurrent state (batch 1).
    pub fn state(&self) -> &ModelState<f32> {
        &self.state
    }

    /// A state buffer to step into (its values are overwritten).
    fn buffer(&mut self) -> ModelState<f32> {
        self.spare.pop().unwrap_or_else(|| self.rec.zero_state(1))
    }

    /// Keeps `state` as the snapshot of length `len`, forgetting the oldest beyond the window.
    fn keep_snapshot(&mut self, len: usize, state: ModelState<f32>) {
        if self.history.len() == self.window {
            let (_, oldest) = self.history.pop_front().expect("a full history");
            self.spare.push(oldest);
        }
        self.history.push_back((len, state));
    }

    /// Consumes `tokens` and returns the logits after each of them, (tokens.len(), V).
    fn consume(&mut self, tokens: &[u32], all_rows: bool) -> Result<Array2<f32>> {
        if tokens.is_empty() {
            return Err(Error::invalid("tokens", "an empty slice", "at least one token"));
        }
        let v = self.model.config().d_output;
        let mut out = Array2::zeros((if all_rows { tokens.len() } else { 1 }, v));
        // Stepping, whatever the length: at batch 1 it costs less than a convolutional prefill
        // (S4Model::prefill) up to 8192 tokens at least (the demo draft: 0.81 against 5.3 ms for
        // 32 tokens, 206 against 216 ms for 8192; a prefill's kernels and discretization alone
        // cost about 0.8 ms per layer). The states before the last `window` steps become snapshots.
        let first_kept = tokens.len().saturating_sub(self.window);
        for (i, &t) in tokens.iter().enumerate() {
            let input = StepInput::Tokens(std::slice::from_ref(&t));
            let mut next = (i >= first_kept && self.len >= self.committed).then(|| self.buffer());
            let stepped = match next.as_mut() {
                Some(next) => self.rec.step_with(Some(&self.state), next, input, &mut self.workspace),
                None => self.rec.step_with(None, &mut self.state, input, &mut self.workspace),
            };
            match stepped {
                Ok(y) if all_rows => out.row_mut(i).assign(&y.index_axis(Axis(0), 0)),
                Ok(y) if i + 1 == tokens.len() => out.row_mut(0).assign(&y.index_axis(Axis(0), 0)),
                Ok(_) => {}
                Err(e) => {
                    self.spare.extend(next);
                    return Err(e);
                }
            }
            if let Some(next) = next {
                let before = std::mem::replace(&mut self.state, next);
                self.keep_snapshot(self.len, before);
            }
            self.len += 1;
        }
        Ok(out)
    }

    /// Rolls back to `len` tokens; on error nothing changes.
    fn restore(&mut self, len: usize) -> Result<()> {
        if len > self.len {
            return Err(Error::invalid("rollback length", len, format!("at most the {} tokens consumed", self.len)));
        }
        if len > 0 && len < self.len && !self.history.iter().any(|(l, _)| *l == len) {
            return Err(Error::invalid(
                "rollback length",
                len,
                format!(
                    "one of the last {} positions, not below the last commit (or 0): the snapshots before are gone",
                    self.window
                ),
            ));
        }
        self.recycle_tree();
        if len == self.len {
            return Ok(());
        }
        if len == 0 {
            self.spare.extend(self.history.drain(..).map(|(_, s)| s));
            self.state = self.rec.zero_state(1);
            self.len = 0;
            return Ok(());
        }
        while let Some((l, s)) = self.history.pop_back() {
            if l == len {
                self.spare.push(std::mem::replace(&mut self.state, s));
                self.len = len;
                return Ok(());
            }
            self.spare.push(s);
        }
        unreachable!("the snapshot of length {len} was found above")
    }

    /// Returns the tree's states to the spare buffers.
    fn recycle_tree(&mut self) {
        self.spare.extend(self.tree.drain(..).flatten());
    }
}

impl Drafter for S4Session<'_> {
    fn vocab_size(&self) -> usize {
        self.model.config().d_output
    }
    fn len(&self) -> usize {
        self.len
    }
    fn extend(&mut self, tokens: &[u32]) -> Result<Vec<f32>> {
        Ok(self.consume(tokens, false)?.into_raw_vec_and_offset().0)
    }
    fn rollback(&mut self, len: usize) -> Result<()> {
        self.restore(len)
    }
    /// Forgets the snapshots of lengths below `len`, so that the buffers in use stay those of
    /// the current round (a few, warm in the cache) instead of cycling through the whole window
    /// (with the demo pair a draft step right after a verifier pass took 30 µs instead of 36–40),
    /// and keeps none below `len` from now on (a prompt committed before it is consumed is
    /// stepped in place).
    fn commit(&mut self, len: usize) {
        self.committed = len;
        while self.history.front().is_some_and(|(l, _)| *l < len) {
            let (_, s) = self.history.pop_front().expect("a snapshot");
            self.spare.push(s);
        }
    }
    /// One recurrent step from the parent's state (or from the current state at the root) into
    /// a spare buffer.
    fn tree_step(&mut self, root: usize, node: usize, parent: Option<usize>, path: &[u32]) -> Result<Vec<f32>> {
        if root != self.len {
            return Err(Error::invalid(
                "tree root",
                root,
                format!("the session's length {} (the tree grows from the current state)", self.len),
            ));
        }
        let token =
            *path.last().ok_or_else(|| Error::invalid("tree path", "empty", "the tokens down to the new node"))?;
        if let Some(p) = parent
            && self.tree.get(p).is_none_or(Option::is_none)
        {
            return Err(Error::invalid(
                "tree parent",
                p,
                "a node stepped before (parents are stepped before their children)",
            ));
        }
        let mut next = self.buffer();
        let from = match parent {
            None => &self.state,
            Some(p) => self.tree[p].as_ref().expect("checked above"),
        };
        let y = match self.rec.step_with(Some(from), &mut next, StepInput::Tokens(&[token]), &mut self.workspace) {
            Ok(y) => y,
            Err(e) => {
                self.spare.push(next);
                return Err(e);
            }
        };
        if self.tree.len() <= node {
            self.tree.resize_with(node + 1, || None);
        }
        if let Some(old) = self.tree[node].replace(next) {
            self.spare.push(old);
        }
        Ok(y.index_axis(Axis(0), 0).to_vec())
    }
    /// Takes the node's state (no step; the state at the root becomes a snapshot); the tree is
    /// forgotten.
    fn tree_adopt(&mut self, root: usize, node: Option<usize>, path: &[u32]) -> Result<()> {
        if root != self.len {
            return Err(Error::invalid("tree root", root, format!("the session's length {}", self.len)));
        }
        if let Some(n) = node {
            let state = self
                .tree
                .get_mut(n)
                .and_then(Option::take)
                .ok_or_else(|| Error::invalid("adopted tree node", n, "a node stepped in this tree (tree_step)"))?;
            let root_state = std::mem::replace(&mut self.state, state);
            self.keep_snapshot(root, root_state);
            self.len = root + path.len();
        }
        self.recycle_tree();
        Ok(())
    }
}

impl Verifier for S4Session<'_> {
    fn vocab_size(&self) -> usize {
        self.model.config().d_output
    }
    fn max_len(&self) -> Option<usize> {
        None
    }
    fn len(&self) -> usize {
        self.len
    }
    fn score(&mut self, tokens: &[u32]) -> Result<Array2<f32>> {
        self.consume(tokens, true)
    }
    fn rollback(&mut self, len: usize) -> Result<()> {
        self.restore(len)
    }
}

/// A GPT-2-layout transformer with its KV cache (batch 1), as a verifier or a drafter. Rolling
/// back truncates the cache.
#[derive(Debug)]
pub struct GptSession<'a> {
    model: &'a Gpt<f32>,
    cache: KvCache<f32>,
}

impl<'a> GptSession<'a> {
    /// An empty cache over `model` (builds the model's decoding weights if needed:
    /// [`Gpt::prepare_decoding`]).
    pub fn new(model: &'a Gpt<f32>) -> Self {
        model.prepare_decoding();
        GptSession { model, cache: model.new_cache(1) }
    }

    /// The KV cache.
    pub fn cache(&self) -> &KvCache<f32> {
        &self.cache
    }
}

impl Verifier for GptSession<'_> {
    fn vocab_size(&self) -> usize {
        self.model.config().vocab_size
    }
    fn max_len(&self) -> Option<usize> {
        Some(self.model.config().n_positions)
    }
    fn len(&self) -> usize {
        self.cache.len()
    }
    fn score(&mut self, tokens: &[u32]) -> Result<Array2<f32>> {
        let ids = Array2::from_shape_vec((1, tokens.len()), tokens.to_vec())
            .map_err(|e| Error::numerical("score", e.to_string()))?;
        let logits = self.model.forward_cached(&mut self.cache, ids.view())?;
        Ok(logits.index_axis_move(Axis(0), 0))
    }
    fn rollback(&mut self, len: usize) -> Result<()> {
        self.cache.truncate(len)
    }
    /// Grows the KV cache to `total` positions now (capped at the model's context), so that no
    /// pass of the generation pays for growing it (zeroing and copying a few MB for the demo
    /// verifier, 1–2 ms on that pass).
    fn reserve(&mut self, total: usize) {
        self.cache.reserve(total.min(self.model.config().n_positions));
    }
    /// One pass with tree attention ([`Gpt::forward_tree`]).
    fn score_tree(&mut self, tokens: &[u32], tree: &TreeMask) -> Result<Array2<f32>> {
        self.model.forward_tree(&mut self.cache, tokens, tree)
    }
    /// Compacts the KV cache ([`KvCache::compact`]).
    fn keep(&mut self, base: usize, positions: &[usize], _tokens: &[u32]) -> Result<()> {
        self.cache.compact(base, positions)
    }
}

impl Drafter for GptSession<'_> {
    fn vocab_size(&self) -> usize {
        self.model.config().vocab_size
    }
    fn len(&self) -> usize {
        self.cache.len()
    }
    fn extend(&mut self, tokens: &[u32]) -> Result<Vec<f32>> {
        let rows = self.score(tokens)?;
        Ok(rows.row(rows.nrows() - 1).to_vec())
    }
    fn rollback(&mut self, len: usize) -> Result<()> {
        self.cache.truncate(len)
    }
}

/// A causal language model read from a folder: the GPT-2-layout transformer (a Hugging Face or
/// `s4 train-lm` folder) or an S4 language model (token embedding, no pooling, `d_output` =
/// vocabulary). Either can verify or draft.
#[derive(Clone, Debug)]
pub enum CausalModel {
    /// A GPT-2-layout transformer.
    Gpt(Box<Gpt<f32>>),
    /// An S4 language model.
    S4(Box<S4Model<f32>>),
}

impl CausalModel {
    /// Reads the model in `dir`: GPT-2 if its `config.json` says `"model_type": "gpt2"` (or has
    /// `n_embd`), an S4 model otherwise.
    ///
    /// # Errors
    /// A missing or unreadable folder, or an S4 model that is not a causal language model.
    pub fn load(dir: &Path) -> Result<Self> {
        let v: serde_json::Value = crate::io::read_json(&dir.join("config.json"))?;
        if v.get("model_type").and_then(|m| m.as_str()) == Some("gpt2") || v.get("n_embd").is_some() {
            Ok(CausalModel::Gpt(Box::new(Gpt::load(dir)?)))
        } else {
            let m: S4Model<f32> = crate::model::checkpoint::load(dir)?;
            check_causal_lm(m.config(), &format!("model {}", dir.display()))?;
            Ok(CausalModel::S4(Box::new(m)))
        }
    }

    /// Decodes with 16-bit weights (`Some`) or with the weights as loaded (`None`): a transformer keeps
    /// the packed copy its decoding passes stream in 16 bits
    /// ([`Gpt::set_decoding_precision`]: half the bytes, f32 arithmetic); an S4 model's weights
    /// are rounded to the format ([`S4Model::with_half_weights`]; its dynamics stay f32).
    ///
    /// # Errors
    /// A weight beyond the format's range.
    pub fn set_weights(&mut self, precision: Option<HalfPrecision>) -> Result<()> {
        match (self, precision) {
            (CausalModel::Gpt(g), p) => g.set_decoding_precision(p)?,
            (CausalModel::S4(m), Some(p)) => **m = m.with_half_weights(p)?,
            (CausalModel::S4(_), None) => {}
        }
        Ok(())
    }

    /// Sets the arithmetic of a transformer's decoding products ([`Gpt::set_matmul_precision`]).
    ///
    /// # Errors
    /// [`MatmulPrecision::Medium`] for an S4 model (its step keeps f32 products), or a transformer
    /// weight beyond bf16's range.
    pub fn set_matmul_precision(&mut self, matmul: MatmulPrecision) -> Result<()> {
        match (self, matmul) {
            (CausalModel::Gpt(g), m) => g.set_matmul_precision(m),
            (CausalModel::S4(_), MatmulPrecision::Highest) => Ok(()),
            (CausalModel::S4(_), MatmulPrecision::Medium) => Err(Error::invalid(
                "matmul precision",
                "medium for an S4 model",
                "a GPT-2 model (S4 steps keep f32 products)",
            )),
        }
    }

    /// The longest sequence the model takes (GPT-2's positions; an S4 model has no limit).
    pub fn context(&self) -> Option<usize> {
        match self {
            CausalModel::Gpt(g) => Some(g.config().n_positions),
            CausalModel::S4(_) => None,
        }
    }

    /// The vocabulary size.
    pub fn vocab(&self) -> usize {
        match self {
            CausalModel::Gpt(g) => g.config().vocab_size,
            CausalModel::S4(m) => m.config().d_output,
        }
    }

    /// The next-token logits after every position of `tokens` (B, T): (B, T, V), in one pass from
    /// position 0 (Hugging Face's `model(input_ids).logits`): a transformer's full forward, an S4
    /// model's convolutional mode.
    ///
    /// # Errors
    /// An empty batch or sequence, a token id ≥ V, more positions than a transformer's context,
    /// logits beyond the memory budget.
    pub fn logits(&self, tokens: ArrayView2<u32>) -> Result<Array3<f32>> {
        let (b, t) = tokens.dim();
        if b == 0 || t == 0 {
            return Err(Error::shape("token ids", "(B, T) with B, T >= 1", &[b, t]));
        }
        let v = self.vocab();
        if let Some(((i, j), &x)) = tokens.indexed_iter().find(|&(_, &x)| x as usize >= v) {
            return Err(Error::invalid(format!("token id at (sequence {i}, position {j})"), x, format!("an id < {v}")));
        }
        Estimate::new(format!("logits of {b} x {t} tokens")).array::<f32>(&[b, t, v]).check()?;
        Ok(match self {
            CausalModel::Gpt(g) => g.forward(tokens)?,
            // (B, V, T) → (B, T, V)
            CausalModel::S4(m) => {
                m.forward(Input::Tokens(tokens), None)?.permuted_axes([0, 2, 1]).as_standard_layout().into_owned()
            }
        })
    }

    /// A fresh verifier session over the model (an S4 session keeps 64 snapshots).
    ///
    /// # Errors
    /// An S4 model that cannot step (see [`S4Session::new`]).
    pub fn verifier(&self) -> Result<Box<dyn Verifier + '_>> {
        Ok(match self {
            CausalModel::Gpt(g) => Box::new(GptSession::new(g)),
            CausalModel::S4(m) => Box::new(S4Session::new(m, 64)?),
        })
    }

    /// A fresh drafter session over the model (an S4 session keeps 64 snapshots).
    ///
    /// # Errors
    /// An S4 model that cannot step (see [`S4Session::new`]).
    pub fn drafter(&self) -> Result<Box<dyn Drafter + Send + '_>> {
        Ok(match self {
            CausalModel::Gpt(g) => Box::new(GptSession::new(g)),
            CausalModel::S4(m) => Box::new(S4Session::new(m, 64)?),
        })
    }
}

//! A decoder-only transformer in the GPT-2 layout (Radford et al. 2019; Hugging Face
//! `transformers/models/gpt2/modeling_gpt2.py`, `GPT2LMHeadModel`), with a KV cache for incremental
//! decoding, Hugging Face safetensors loading and saving, analytic backward passes and a small
//! training loop.
//!
//! ## The model
//!
//! With token ids `x` (B, T) at positions `p0 .. p0 + T` (`p0` = the cache length):
//!
//! ```text
//! h⁰ = wte[x] + wpe[p0 + t]                                  (B·T, C)
//! for each block ℓ:  a = h + c_proj(attn(c_attn(ln_1(h))))   pre-LayerNorm, residual
//!                    h = a + mlp_c_proj(act(c_fc(ln_2(a))))
//! logits = ln_f(h) · wteᵀ                                    (B, T, V), lm_head tied to wte, no bias
//! ```
//!
//! Every linear layer is a `Conv1D` in the Hugging Face sense: the weight is stored **[in, out]** and
//! y = x·W + b, so `x.dot(&w)` reads W row by row. `c_attn` maps C → 3C, split into q, k, v (in that
//! order), each split into `n_head` heads of `head_dim = C / n_head` contiguous columns. Attention
//! is causal, softmax(q·kᵀ/√head_dim)·v per head. LayerNorm uses the biased variance and
//! `layer_norm_epsilon`. The activation is `gelu_new` (the tanh approximation), `gelu_pytorch_tanh`
//! (the same function) or `gelu` (exact, with erf). Dropout is not implemented (inference and the
//! training loop here run without it; GPT-2's eval mode).
//!
//! Activations are laid out row-major as (B·T, C) (sequence-major rows), not the (B, H, L) of the
//! S4 modules: every linear layer is then one matrix product over all new positions.
//!
//! ## Incremental decoding
//!
//! [`Gpt::forward_cached`] appends T tokens per sequence to a [`KvCache`] in one pass: each linear
//! layer is one product (B·T, C)·(C, ·) (the weights are read once for all new positions, so scoring
//! k + 1 draft tokens costs far less than k + 1 single-token passes), and each new position attends
//! to the cached keys and values plus the new ones up to itself. [`KvCache::truncate`] drops
//! rejected positions (speculative decoding).
//!
//! Performance: up to 96 new positions (B·T ≤ 96: decoding, scoring draft tokens, short prompts) the linear
//! layers run on a copy of their weights packed in 16-column panels ([`Gpt::prepare_decoding`]),
//! read as one sequential, prefetched stream while register tiles of up to 16 rows accumulate
//! (AVX-512 intrinsics for f32; generic kernels for AVX2 + FMA and the baseline target, picked at
//! run time); more rows use gemm. At nanoGPT's `shakespeare_char` size (C = 384, 6 layers, 6 heads,
//! V = 256, 10.7 M parameters), batch 1, a 160-position cache, on the 2-core development machine
//! (best of 40; `benches/benches/speculative.rs`, `verifier_score_at_192`): 1 position 2.0 ms, 5 positions
//! 2.7 ms, 9 positions 3.2 ms, 16 positions 4.7 ms, 32 positions 11 ms (gemm: 15 ms), 96 positions
//! 28 ms (gemm: 31 ms). Prompts go through the same weights, so that the packed copy stays in
//! cache for the decoding steps that follow. Scoring
//! γ + 1 draft tokens is therefore far cheaper than γ + 1 passes, not free: the pass costs about
//! a + b·k with b ≈ 0.17 ms ≈ a/12, which [`crate::speculative::PassCost`] models.
//!
//! ```
//! use ndarray::array;
//! use s4::transformer::{Gpt, GptConfig};
//!
//! let cfg = GptConfig { vocab_size: 16, n_positions: 32, n_embd: 8, n_layer: 2, n_head: 2, ..Default::default() };
//! let model = Gpt::<f32>::new(cfg, 0)?;
//! let full = model.forward(array![[1u32, 2, 3, 4, 5]].view())?; // (1, 5, 16)
//!
//! let mut cache = model.new_cache(1);
//! model.forward_cached(&mut cache, array![[1u32, 2, 3]].view())?; // prefill 3 positions
//! let next = model.forward_cached(&mut cache, array![[4u32, 5]].view())?; // 2 more in one pass
//! assert_eq!(cache.len(), 5);
//! assert!((next[[0, 1, 7]] - full[[0, 4, 7]]).abs() < 1e-5);
//!
//! cache.truncate(3)?; // forget positions 3 and 4, then score other tokens there
//! let other = model.forward_cached(&mut cache, array![[9u32]].view())?;
//! assert_eq!(other.dim(), (1, 1, 16));
//! # Ok::<(), s4::Error>(())
//! ```
//!
//! ## Training
//!
//! [`grad`] holds a forward/backward pair of plain functions for every piece (llm.c style) and
//! [`grad::forward_backward`] for the whole model; [`crate::train::lm`] trains it on the crate's one
//! training loop (random windows, AdamW, nanoGPT's schedule, gradient clipping, data parallel over
//! the batch with results independent of the thread count, checkpoints and exact resume).
//!
//! ## The encoder classifier
//!
//! [`classifier::TransformerClassifier`] reuses these blocks, kernels and backward passes for the
//! Transformer baseline of the Long Range Arena: bidirectional attention with a key-padding mask
//! ([`grad::AttentionMask`]), learned positions, mean pooling and a classification (or regression)
//! head, trained by the crate's trainer (`s4 train --arch transformer`).

mod attention;
mod cache;
mod weights;

pub mod classifier;
pub mod grad;

pub use attention::TreeMask;
pub use cache::KvCache;
pub use classifier::{TransformerClassifier, TransformerClassifierConfig};

use crate::budget::Estimate;
use crate::error::{Error, Result};
use crate::nn::linear::{linear, lm_head, PackedColumns, PackedMlp};
use crate::nn::params::{ParamGroup, Parameters, TensorMut, Trainable};
use crate::scalar::{HalfPrecision, MatmulPrecision, Real};
use ndarray::{s, Array1, Array2, Array3, ArrayView2, ArrayViewD, ArrayViewMutD, Axis};
use rand::SeedableRng;
use rand_distr::{Distribution, StandardNormal};
use rayon::prelude::*;
use std::path::Path;

pub use crate::nn::loss::IGNORE;
pub use crate::nn::Activation;

/// Model hyperparameters, serde-compatible with a Hugging Face GPT-2 `config.json` (the keys are
/// the same; unknown keys are ignored, missing keys take the [`Default`] values).
///
/// `Default` is a small character-level model: 256 byte tokens, context 256, C = 384, 6 layers,
/// 6 heads (nanoGPT's `shakespeare_char` size), `gelu_new`, ε = 1e-5.
#[derive(Clone, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(default)]
pub struct GptConfig {
    /// Vocabulary size V (token ids are `0 .. V`; V < `u32::MAX`, which is [`IGNORE`]).
    pub vocab_size: usize,
    /// Context window: the number of learned positions (`wpe` has this many rows).
    pub n_positions: usize,
    /// Model width C.
    pub n_embd: usize,
    /// Number of transformer blocks.
    pub n_layer: usize,
    /// Attention heads per block (C must be a multiple).
    pub n_head: usize,
    /// Width of the MLP's hidden layer (`None`: 4·C, as in GPT-2).
    pub n_inner: Option<usize>,
    /// LayerNorm ε (added to the biased variance).
    pub layer_norm_epsilon: f64,
    /// `"gelu_new"` or `"gelu_pytorch_tanh"` (0.5·x·(1 + tanh(√(2/π)·(x + 0.044715·x³)))), or
    /// `"gelu"` (x·Φ(x), exact).
    pub activation_function: String,
    /// Standard deviation of the weight initialization in [`Gpt::new`] (Hugging Face's
    /// `initializer_range`).
    pub initializer_range: f64,
    /// Whether the output projection is `wte` (the only supported layout: must be `true`).
    pub tie_word_embeddings: bool,
}

impl Default for GptConfig {
    fn default() -> Self {
        GptConfig {
            vocab_size: 256,
            n_positions: 256,
            n_embd: 384,
            n_layer: 6,
            n_head: 6,
            n_inner: None,
            layer_norm_epsilon: 1e-5,
            activation_function: "gelu_new".into(),
            initializer_range: 0.02,
            tie_word_embeddings: true,
        }
    }
}

impl GptConfig {
    /// Checks every value: sizes ≥ 1, `n_embd` a multiple of `n_head`, `vocab_size < u32::MAX`,
    /// ε finite and > 0, a known activation, `initializer_range` finite and ≥ 0, tied embeddings,
    /// and a parameter count that does not overflow.
    ///
    /// # Errors
    /// The first invalid field, by name.
    pub fn validate(&self) -> Result<()> {
        for (name, v) in [
            ("vocab_size", self.vocab_size),
            ("n_positions", self.n_positions),
            ("n_embd", self.n_embd),
            ("n_layer", self.n_layer),
            ("n_head", self.n_head),
        ] {
            if v == 0 {
                return Err(Error::invalid(name, v, "an integer >= 1"));
            }
        }
        if self.vocab_size >= IGNORE as usize {
            return Err(Error::invalid("vocab_size", self.vocab_size, "< 4294967295 (u32::MAX marks ignored targets)"));
        }
        if !self.n_embd.is_multiple_of(self.n_head) {
            return Err(Error::invalid(
                "n_embd",
                self.n_embd,
                format!("a multiple of n_head = {} (heads split the width evenly)", self.n_head),
            ));
        }
        if self.n_inner == Some(0) {
            return Err(Error::invalid("n_inner", 0, "an integer >= 1 or null (4·n_embd)"));
        }
        if !(self.layer_norm_epsilon.is_finite() && self.layer_norm_epsilon > 0.0) {
            return Err(Error::invalid("layer_norm_epsilon", self.layer_norm_epsilon, "a finite value > 0"));
        }
        if !(self.initializer_range.is_finite() && self.initializer_range >= 0.0) {
            return Err(Error::invalid("initializer_range", self.initializer_range, "a finite value >= 0"));
        }
        if !self.tie_word_embeddings {
            return Err(Error::invalid(
                "tie_word_embeddings",
                false,
                "true (the output projection is wte; untied heads are not supported)",
            ));
        }
        Activation::parse(&self.activation_function)?;
        match self.parameter_count() {
            Some(n) if n <= (isize::MAX as usize) / 16 => Ok(()),
            _ => Err(Error::invalid(
                "model size",
                format!("vocab_size {} · n_embd {} · n_layer {} ...", self.vocab_size, self.n_embd, self.n_layer),
                "a parameter count that fits in memory",
            )),
        }
    }

    /// The number of parameters (`None`: more than `usize` counts).
    pub fn parameter_count(&self) -> Option<usize> {
        let (c, i) = (self.n_embd, self.inner());
        (|| {
            // per block: c_attn c·3c + 3c, attn c_proj c·c + c, c_fc c·i + i, mlp c_proj i·c + c, 2 LayerNorms 4c
            let per_block =
                [c.checked_mul(c)?.checked_mul(4)?, c.checked_mul(i)?.checked_mul(2)?, c.checked_mul(9)?, i]
                    .into_iter()
                    .try_fold(0usize, |a, x| a.checked_add(x))?;
            let emb = self.vocab_size.checked_add(self.n_positions)?.checked_mul(c)?;
            per_block.checked_mul(self.n_layer)?.checked_add(emb)?.checked_add(c.checked_mul(2)?)
        })()
    }

    /// The MLP hidden width: `n_inner`, or 4·`n_embd`.
    pub fn inner(&self) -> usize {
        self.n_inner.unwrap_or(self.n_embd.saturating_mul(4))
    }

    /// The width of one attention head, `n_embd / n_head`.
    pub fn head_dim(&self) -> usize {
        self.n_embd / self.n_head
    }
}

/// LayerNorm parameters: y = (x − μ)/√(σ² + ε)·weight + bias over the C features of a position.
#[derive(Clone, Debug, PartialEq)]
pub struct LayerNorm<T> {
    /// Scale (C,).
    pub weight: Array1<T>,
    /// Shift (C,).
    pub bias: Array1<T>,
}

/// A `Conv1D` layer: y = x·W + b with W stored [in, out].
#[derive(Clone, Debug, PartialEq)]
pub struct Linear<T> {
    /// (in, out).
    pub weight: Array2<T>,
    /// (out,).
    pub bias: Array1<T>,
}

/// One pre-LayerNorm transformer block (`GPT2Block`).
#[derive(Clone, Debug, PartialEq)]
pub struct Block<T> {
    /// `ln_1`, before attention.
    pub ln_1: LayerNorm<T>,
    /// `attn.c_attn`: C → 3C (q, k, v).
    pub c_attn: Linear<T>,
    /// `attn.c_proj`: C → C.
    pub attn_proj: Linear<T>,
    /// `ln_2`, before the MLP.
    pub ln_2: LayerNorm<T>,
    /// `mlp.c_fc`: C → inner.
    pub c_fc: Linear<T>,
    /// `mlp.c_proj`: inner → C.
    pub mlp_proj: Linear<T>,
}

/// A GPT-2 language model (`GPT2LMHeadModel` without dropout), generic over the precision: `f32`
/// to run, `f64` for gradient checks. Gradients ([`grad::forward_backward`]) are a `Gpt` of the
/// same shape.
#[derive(Clone, Debug, PartialEq)]
pub struct Gpt<T = f32> {
    config: GptConfig,
    activation: Activation,
    wte: Array2<T>,
    wpe: Array2<T>,
    blocks: Vec<Block<T>>,
    ln_f: LayerNorm<T>,
    decode: DecodeWeights<T>,
}

/// Up to this many new positions per pass, [`Gpt::forward_cached`] runs the linear layers on a
/// panel-packed copy of their weights ([`DecodeWeights`]); more rows go to gemm (on the 2-core
/// machine the packed kernel is faster up to about 100 rows: gemm packs the weights on every call).
const DECODE_ROWS: usize = 96;

/// The four linear layers of every block (`c_attn`, `attn.c_proj`, `c_fc`, `mlp.c_proj`) and the
/// tied head (wteᵀ, with a zero bias) packed in column panels for the passes of a few rows that decoding and speculative verification make:
/// the product of a few rows with a row-major weight reads it at a stride, or packs it on every
/// call (gemm); a panel-packed copy is read once, sequentially, and register tiles of up to 16
/// rows make scoring γ + 1 draft positions cost little more than one position (see
/// `benches/benches/speculative.rs`). Built on the first such pass (a copy of the weights: the model's
/// memory doubles) and dropped by every method that can change the weights
/// ([`Gpt::tensors_mut`]); not compared, cloned (a clone rebuilds it) or printed.
struct DecodeWeights<T> {
    packed: std::sync::OnceLock<Packed<T>>,
    /// 16-bit storage of the packed copy ([`Gpt::set_decoding_precision`]), or the compute type.
    precision: Option<HalfPrecision>,
    /// The arithmetic of its products ([`Gpt::set_matmul_precision`]).
    matmul: MatmulPrecision,
}

/// The contents of [`DecodeWeights`].
struct Packed<T> {
    /// c_attn and attn_proj of each block.
    blocks: Vec<[PackedColumns<T>; 2]>,
    /// c_fc and mlp_proj of each block, split by hidden units.
    mlps: Vec<PackedMlp<T>>,
    /// wteᵀ (C, V) and its zero bias.
    head: (PackedColumns<T>, Array1<T>),
}

impl<T> Default for DecodeWeights<T> {
    fn default() -> Self {
        DecodeWeights { packed: std::sync::OnceLock::new(), precision: None, matmul: MatmulPrecision::Highest }
    }
}

impl<T> Clone for DecodeWeights<T> {
    fn clone(&self) -> Self {
        DecodeWeights { packed: std::sync::OnceLock::new(), precision: self.precision, matmul: self.matmul }
    }
}

impl<T> PartialEq for DecodeWeights<T> {
    fn eq(&self, _: &Self) -> bool {
        true
    }
}

impl<T> std::fmt::Debug for DecodeWeights<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "DecodeWeights {{ built: {}, precision: {:?}, matmul: {:?} }}",
            self.packed.get().is_some(),
            self.precision,
            self.matmul
        )
    }
}

fn layer_norm_params<T: Real>(c: usize) -> LayerNorm<T> {
    LayerNorm { weight: Array1::ones(c), bias: Array1::zeros(c) }
}

impl<T: Real> Block<T> {
    /// A block of width C with MLP width `inner`: every weight and bias 0, LayerNorm scales 1.
    pub(crate) fn zeros(c: usize, inner: usize) -> Self {
        let lin = |i: usize, o: usize| Linear { weight: Array2::zeros((i, o)), bias: Array1::zeros(o) };
        Block {
            ln_1: layer_norm_params(c),
            c_attn: lin(c, 3 * c),
            attn_proj: lin(c, c),
            ln_2: layer_norm_params(c),
            c_fc: lin(c, inner),
            mlp_proj: lin(inner, c),
        }
    }

    /// The block's tensors under `prefix`, in the Hugging Face order: `ln_1.weight`, `ln_1.bias`,
    /// `attn.c_attn.*`, `attn.c_proj.*`, `ln_2.*`, `mlp.c_fc.*`, `mlp.c_proj.*`.
    pub(crate) fn tensors(&self, prefix: &str) -> Vec<(String, ArrayViewD<'_, T>)> {
        let b = self;
        let mut out = Vec::with_capacity(12);
        for (n, w, bias) in [
            ("ln_1", b.ln_1.weight.view().into_dyn(), b.ln_1.bias.view().into_dyn()),
            ("attn.c_attn", b.c_attn.weight.view().into_dyn(), b.c_attn.bias.view().into_dyn()),
            ("attn.c_proj", b.attn_proj.weight.view().into_dyn(), b.attn_proj.bias.view().into_dyn()),
            ("ln_2", b.ln_2.weight.view().into_dyn(), b.ln_2.bias.view().into_dyn()),
            ("mlp.c_fc", b.c_fc.weight.view().into_dyn(), b.c_fc.bias.view().into_dyn()),
            ("mlp.c_proj", b.mlp_proj.weight.view().into_dyn(), b.mlp_proj.bias.view().into_dyn()),
        ] {
            out.push((format!("{prefix}{n}.weight"), w));
            out.push((format!("{prefix}{n}.bias"), bias));
        }
        out
    }

    /// As [`Block::tensors`], mutable.
    pub(crate) fn tensors_mut(&mut self, prefix: &str) -> Vec<(String, ArrayViewMutD<'_, T>)> {
        let Block { ln_1, c_attn, attn_proj, ln_2, c_fc, mlp_proj } = self;
        let mut out = Vec::with_capacity(12);
        for (n, w, bias) in [
            ("ln_1", ln_1.weight.view_mut().into_dyn(), ln_1.bias.view_mut().into_dyn()),
            ("attn.c_attn", c_attn.weight.view_mut().into_dyn(), c_attn.bias.view_mut().into_dyn()),
            ("attn.c_proj", attn_proj.weight.view_mut().into_dyn(), attn_proj.bias.view_mut().into_dyn()),
            ("ln_2", ln_2.weight.view_mut().into_dyn(), ln_2.bias.view_mut().into_dyn()),
            ("mlp.c_fc", c_fc.weight.view_mut().into_dyn(), c_fc.bias.view_mut().into_dyn()),
            ("mlp.c_proj", mlp_proj.weight.view_mut().into_dyn(), mlp_proj.bias.view_mut().into_dyn()),
        ] {
            out.push((format!("{prefix}{n}.weight"), w));
            out.push((format!("{prefix}{n}.bias"), bias));
        }
        out
    }
}

impl<T: Real> Gpt<T> {
    /// A model with every weight 0, every LayerNorm scale 1 (the shapes of `config`).
    fn zeros(config: GptConfig) -> Result<Self> {
        config.validate()?;
        let n = config.parameter_count().unwrap_or(usize::MAX);
        // the weights, and the packed copy the decoding kernels read
        Estimate::new(format!(
            "transformer weights ({n} parameters: n_layer = {}, n_embd = {}, n_positions = {}, vocab_size = {})",
            config.n_layer, config.n_embd, config.n_positions, config.vocab_size
        ))
        .arrays::<T>(2, &[n])
        .check()?;
        let activation = Activation::parse(&config.activation_function)?;
        let (c, inner) = (config.n_embd, config.inner());
        let blocks = (0..config.n_layer).map(|_| Block::zeros(c, inner)).collect();
        Ok(Gpt {
            wte: Array2::zeros((config.vocab_size, c)),
            wpe: Array2::zeros((config.n_positions, c)),
            blocks,
            ln_f: layer_norm_params(c),
            activation,
            config,
            decode: DecodeWeights::default(),
        })
    }

    /// A randomly initialized model, as Hugging Face's `GPT2PreTrainedModel._init_weights`: every
    /// `Conv1D` weight and both embeddings N(0, σ²) with σ = `initializer_range`, the two residual
    /// projections (`attn.c_proj`, `mlp.c_proj`) N(0, (σ/√(2·n_layer))²) (GPT-2 paper §2.3),
    /// biases 0, LayerNorm 1 / 0. Drawn from a Pcg64 seeded with `seed`, tensor by tensor in
    /// [`Gpt::tensors`] order.
    ///
    /// # Errors
    /// An invalid configuration ([`GptConfig::validate`]).
    pub fn new(config: GptConfig, seed: u64) -> Result<Self> {
        let mut model = Self::zeros(config)?;
        let sigma = model.config.initializer_range;
        let proj_sigma = sigma / (2.0 * model.config.n_layer as f64).sqrt();
        let mut rng = rand_pcg::Pcg64::seed_from_u64(seed);
        for (name, mut t) in model.tensors_mut() {
            if t.ndim() != 2 {
                continue; // biases 0, LayerNorm 1 / 0
            }
            let sd = if name.ends_with("c_proj.weight") { proj_sigma } else { sigma };
            for v in t.iter_mut() {
                let z: f64 = StandardNormal.sample(&mut rng);
                *v = T::of(sd * z);
            }
        }
        Ok(model)
    }

    /// Loads a Hugging Face GPT-2 folder: `config.json` and `model.safetensors`.
    ///
    /// Tensor names are accepted with or without the `transformer.` prefix (`GPT2LMHeadModel` vs
    /// `GPT2Model` checkpoints); the `h.N.attn.bias` / `h.N.attn.masked_bias` mask buffers of older
    /// checkpoints are ignored, and so is an `lm_head.weight` equal to `wte.weight`. Tensors may be
    /// F32, F64, F16 or BF16 (converted to `T`).
    ///
    /// # Errors
    /// A missing or unreadable file, invalid JSON or configuration (including the unsupported
    /// `scale_attn_by_inverse_layer_idx`, `scale_attn_weights = false` and `add_cross_attention`),
    /// a file that is not safetensors (e.g. truncated); every missing, mis-shaped, mis-typed,
    /// non-finite and unexpected tensor is listed in one [`Error::Format`].
    pub fn load(dir: &Path) -> Result<Self> {
        weights::load(dir)
    }

    /// Saves into the folder `dir` (created if needed) in the Hugging Face layout: `config.json`
    /// (this configuration plus `model_type: "gpt2"`) and `model.safetensors` with
    /// `transformer.`-prefixed names in `T`'s precision (F32 or F64), `lm_head` tied and not
    /// stored. Each file is written atomically (temporary file, then rename), the weights first.
    /// [`Gpt::load`] gives back the same model bit for bit.
    ///
    /// # Errors
    /// The folder or a file cannot be written.
    pub fn save(&self, dir: &Path) -> Result<()> {
        weights::save(self, dir, None)
    }

    /// [`Gpt::save`] with every tensor stored in a 16-bit format (`Some`; half the file, which
    /// [`Gpt::load`] reads back as the rounded values) or in the model's precision (`None`).
    ///
    /// # Errors
    /// As [`Gpt::save`]; a weight beyond the format's range (|x| > 65504 in f16).
    pub fn save_as(&self, dir: &Path, weights: Option<HalfPrecision>) -> Result<()> {
        if let Some(p) = weights
            && let Some((name, x)) = self
                .tensors()
                .iter()
                .find_map(|(n, t)| t.iter().find(|x| !p.round(x.as_f64() as f32).is_finite()).map(|x| (n.clone(), *x)))
        {
            return Err(Error::invalid(format!("weight {name}"), x, format!("a value within {}'s range", p.name())));
        }
        weights::save(self, dir, weights)
    }

    /// The configuration.
    pub fn config(&self) -> &GptConfig {
        &self.config
    }

    /// The activation parsed from the configuration.
    pub fn activation(&self) -> Activation {
        self.activation
    }

    /// Token embedding `wte` (V, C); also the output projection.
    pub fn wte(&self) -> &Array2<T> {
        &self.wte
    }

    /// Position embedding `wpe` (n_positions, C).
    pub fn wpe(&self) -> &Array2<T> {
        &self.wpe
    }

    /// The transformer blocks.
    pub fn blocks(&self) -> &[Block<T>] {
        &self.blocks
    }

    /// The final LayerNorm `ln_f`.
    pub fn ln_f(&self) -> &LayerNorm<T> {
        &self.ln_f
    }

    /// Every parameter tensor with its Hugging Face `GPT2Model` name (no `transformer.` prefix), in
    /// `named_parameters()` order: `wte.weight`, `wpe.weight`, then for each block `h.{i}.ln_1.weight`,
    /// `h.{i}.ln_1.bias`, `h.{i}.attn.c_attn.weight`, `.bias`, `h.{i}.attn.c_proj.*`, `h.{i}.ln_2.*`,
    /// `h.{i}.mlp.c_fc.*`, `h.{i}.mlp.c_proj.*`, and `ln_f.weight`, `ln_f.bias`.
    pub fn tensors(&self) -> Vec<(String, ArrayViewD<'_, T>)> {
        let mut out = vec![("wte.weight".to_string(), self.wte.view().into_dyn())];
        out.push(("wpe.weight".to_string(), self.wpe.view().into_dyn()));
        for (i, b) in self.blocks.iter().enumerate() {
            out.extend(b.tensors(&format!("h.{i}.")));
        }
        out.push(("ln_f.weight".to_string(), self.ln_f.weight.view().into_dyn()));
        out.push(("ln_f.bias".to_string(), self.ln_f.bias.view().into_dyn()));
        out
    }

    /// As [`Gpt::tensors`], mutable (the values can change, the shapes cannot).
    pub fn tensors_mut(&mut self) -> Vec<(String, ArrayViewMutD<'_, T>)> {
        let Gpt { wte, wpe, blocks, ln_f, decode, .. } = self;
        decode.packed.take();
        let mut out = vec![("wte.weight".to_string(), wte.view_mut().into_dyn())];
        out.push(("wpe.weight".to_string(), wpe.view_mut().into_dyn()));
        for (i, b) in blocks.iter_mut().enumerate() {
            out.extend(b.tensors_mut(&format!("h.{i}.")));
        }
        let LayerNorm { weight, bias } = ln_f;
        out.push(("ln_f.weight".to_string(), weight.view_mut().into_dyn()));
        out.push(("ln_f.bias".to_string(), bias.view_mut().into_dyn()));
        out
    }

    /// The number of parameters (`wte` counted once: the head is tied).
    pub fn num_params(&self) -> usize {
        self.tensors().iter().map(|(_, t)| t.len()).sum()
    }

    /// A model of the same shape with every entry 0 (LayerNorm scales included), e.g. a gradient
    /// accumulator.
    pub fn zeros_like(&self) -> Self {
        let mut z = Self::zeros(self.config.clone()).expect("the configuration was validated");
        for ln in z.blocks.iter_mut().flat_map(|b| [&mut b.ln_1, &mut b.ln_2]).chain([&mut z.ln_f]) {
            ln.weight.fill(T::zero());
        }
        z
    }

    /// The same model in another precision (`f32` ↔ `f64`; rounding to nearest for `f32`).
    pub fn cast<U: Real>(&self) -> Gpt<U> {
        let mut out = Gpt::<U>::zeros(self.config.clone()).expect("the configuration was validated");
        for ((_, src), (_, mut dst)) in self.tensors().into_iter().zip(out.tensors_mut()) {
            dst.zip_mut_with(&src, |d, &s| *d = U::of(s.as_f64()));
        }
        out
    }

    /// An empty KV cache for `batch` sequences (keys and values of every layer; storage grows on
    /// demand up to `n_positions`).
    pub fn new_cache(&self, batch: usize) -> KvCache<T> {
        KvCache::new(self.config.n_layer, batch, self.config.n_head, self.config.head_dim(), self.config.n_positions)
    }

    /// Logits of every position of `ids` (B, T) in one full pass from position 0, no cache:
    /// (B, T, V). Equal to [`Gpt::forward_cached`] on a fresh cache.
    ///
    /// # Errors
    /// As [`Gpt::forward_cached`]: empty input, T > `n_positions`, a token id ≥ V.
    pub fn forward(&self, ids: ArrayView2<u32>) -> Result<Array3<T>> {
        let mut cache = self.new_cache(ids.nrows());
        self.forward_cached(&mut cache, ids)
    }

    /// Checks token ids (B, T): B, T ≥ 1, every id < V.
    pub(crate) fn check_ids(&self, ids: ArrayView2<u32>) -> Result<()> {
        let (b, t) = ids.dim();
        if b == 0 {
            return Err(Error::shape("token ids", "(batch, T) with batch >= 1", &[b, t]));
        }
        if t == 0 {
            return Err(Error::shape("token ids", "(batch, T) with T >= 1 (empty input)", &[b, t]));
        }
        let v = self.config.vocab_size;
        if let Some(((i, j), &id)) = ids.indexed_iter().find(|&(_, &id)| id as usize >= v) {
            return Err(Error::invalid(
                format!("token id at (sequence {i}, position {j})"),
                id,
                format!("an id < vocab_size = {v}"),
            ));
        }
        Ok(())
    }

    /// Appends the T tokens of each of the B sequences of `ids` (B, T) to `cache` and returns their
    /// logits (B, T, V), in one pass: every linear layer is one matrix–matrix product over the B·T
    /// new positions, and new position `L + t` (L = `cache.len()`) attends causally to cache
    /// positions `0 .. L` and new positions `0 ..= t` (HF `GPT2Attention` with `past_key_values`);
    /// its learned position is `L + t`. The result equals the corresponding rows of a full
    /// [`Gpt::forward`] over the whole sequence up to float rounding.
    ///
    /// On error the cache is left as it was.
    ///
    /// # Errors
    /// Empty input (B or T = 0), a token id ≥ V (naming its sequence and position), `cache.batch()`
    /// ≠ B, a cache made for another model shape, `cache.len() + T > n_positions`, non-finite
    /// logits (non-finite weights or an overflow).
    pub fn forward_cached(&self, cache: &mut KvCache<T>, ids: ArrayView2<u32>) -> Result<Array3<T>> {
        self.forward_inner(cache, ids, None)
    }

    /// Appends a tree of new tokens to a batch-1 `cache` and returns their logits (T, V) in one
    /// pass (SpecInfer's tree attention): token i attends to the cached positions and to its
    /// ancestors in `tree` (and itself), at learned position `cache.len() + depth(i)`. Row i equals
    /// the last row of a [`Gpt::forward_cached`] over the cache plus the tokens of i's path. All
    /// T tokens stay in the cache afterwards, in tree order; [`KvCache::compact`] keeps one path.
    ///
    /// # Errors
    /// As [`Gpt::forward_cached`]; `tokens.len()` ≠ the tree's size; a cache with batch ≠ 1.
    pub fn forward_tree(&self, cache: &mut KvCache<T>, tokens: &[u32], tree: &TreeMask) -> Result<Array2<T>> {
        if tokens.len() != tree.len() {
            return Err(Error::invalid("tree tokens", tokens.len(), format!("one per tree position ({})", tree.len())));
        }
        let ids =
            ArrayView2::from_shape((1, tokens.len()), tokens).map_err(|e| Error::numerical("tree", e.to_string()))?;
        let logits = self.forward_inner(cache, ids, Some(tree))?;
        Ok(logits.index_axis_move(Axis(0), 0))
    }

    /// [`Gpt::forward_cached`], with tree attention when `tree` is given (batch 1).
    fn forward_inner(
        &self,
        cache: &mut KvCache<T>,
        ids: ArrayView2<u32>,
        tree: Option<&TreeMask>,
    ) -> Result<Array3<T>> {
        // With two threads, a pass over the packed decoding weights splits its work by
        // `nn::pair` (the halves of each weight or of its rows, of the attention heads), which
        // starts without a wake-up on the calling thread. Other passes run whole on a worker of
        // rayon's pool: their parallel regions then start by work stealing, where a caller
        // outside the pool would sleep on a latch and be woken for every one of them.
        if crate::nn::pair::replaces_pool() && ids.len() <= DECODE_ROWS {
            return self.forward_pass(cache, ids, tree);
        }
        rayon::scope(|_| self.forward_pass(cache, ids, tree))
    }

    /// [`Gpt::forward_inner`]'s pass.
    fn forward_pass(&self, cache: &mut KvCache<T>, ids: ArrayView2<u32>, tree: Option<&TreeMask>) -> Result<Array3<T>> {
        self.check_ids(ids)?;
        let (b, t) = ids.dim();
        let cfg = &self.config;
        cache.check_compatible(cfg.n_layer, cfg.n_head, cfg.head_dim())?;
        if cache.batch() != b {
            return Err(Error::shape(
                "token ids",
                format!("(batch, T) with batch = {} (the cache's batch size)", cache.batch()),
                &[b, t],
            ));
        }
        let past = cache.len();
        if tree.is_some() && b != 1 {
            return Err(Error::shape("tree tokens", "(1, T): tree attention scores one sequence", &[b, t]));
        }
        if past + t > cfg.n_positions {
            return Err(Error::invalid(
                "cache length + new tokens",
                format!("{past} + {t} = {}", past + t),
                format!("<= n_positions = {} (the model's context window is full)", cfg.n_positions),
            ));
        }
        cache.reserve(past + t);
        let eps = cfg.layer_norm_epsilon;
        let packed = (b * t <= DECODE_ROWS).then(|| self.decode_weights());
        let linear = |x: &Array2<T>, layer: &Linear<T>, l: usize, which: usize| match packed {
            Some(p) => p.blocks[l][which].linear(x.view(), layer.bias.view()),
            None => linear(x.view(), layer.weight.view(), layer.bias.view()),
        };
        let mut x = match tree {
            Some(tree) => {
                let mut x = Array2::<T>::zeros((t, cfg.n_embd));
                for ((mut row, &id), &depth) in x.rows_mut().into_iter().zip(ids.iter()).zip(tree.depths()) {
                    row.assign(&self.wte.row(id as usize));
                    row += &self.wpe.row(past + depth);
                }
                x
            }
            None => grad::embedding_forward(self.wte.view(), self.wpe.view(), ids, past),
        };
        let visible = tree.map_or(&[][..], |tree| tree.visibility());
        for (l, blk) in self.blocks.iter().enumerate() {
            let h = crate::nn::norm::layer_norm(x.view(), blk.ln_1.weight.view(), blk.ln_1.bias.view(), eps);
            let qkv = linear(&h, &blk.c_attn, l, 0);
            let att = cache.write_attend(l, qkv.view(), t, past, visible);
            x += &linear(&att, &blk.attn_proj, l, 1);
            let h = crate::nn::norm::layer_norm(x.view(), blk.ln_2.weight.view(), blk.ln_2.bias.view(), eps);
            let act = self.activation;
            match packed {
                // the activation on each part's thread
                Some(p) => {
                    let (b1, b2) = (blk.c_fc.bias.view(), blk.mlp_proj.bias.view());
                    x += &p.mlps[l].forward(h.view(), b1, b2, |y| act.apply_in_place(y));
                }
                None => {
                    let mut f = linear(&h, &blk.c_fc, l, 2);
                    act.apply_in_place(f.as_slice_mut().expect("a fresh array"));
                    x += &linear(&f, &blk.mlp_proj, l, 3);
                }
            }
        }
        let h = crate::nn::norm::layer_norm(x.view(), self.ln_f.weight.view(), self.ln_f.bias.view(), eps);
        let logits = match packed {
            Some(p) => p.head.0.linear(h.view(), p.head.1.view()),
            None => lm_head(h.view(), self.wte.view()),
        };
        if let Some(pos) = logits.rows().into_iter().position(|r| r.iter().any(|v| !v.is_finite())) {
            return Err(Error::numerical(
                "GPT forward",
                format!(
                    "non-finite logits at (sequence {}, position {}) (non-finite weights or an overflow)",
                    pos / t,
                    past + pos % t
                ),
            ));
        }
        cache.set_len(past + t);
        let v = cfg.vocab_size;
        Ok(logits.into_shape_with_order((b, t, v)).expect("B·T rows of V logits"))
    }

    /// Builds the copy of the weights that passes over a few positions (decoding, scoring draft
    /// tokens) read, if it is not built yet: the linear layers in column panels (see
    /// [`Gpt::forward_cached`]; the model's memory doubles). It is otherwise built by the first
    /// such pass; sessions call this up front so that no decoding step pays for it.
    pub fn prepare_decoding(&self) {
        self.decode_weights();
    }

    /// Keeps the packed copy that decoding passes read ([`Gpt::prepare_decoding`]) in 16 bits
    /// (`Some`: half the bytes to stream per pass; the kernels widen each weight to f32 as they
    /// load it, and accumulate in f32) or in the compute type (`None`, the default). Passes over
    /// many positions (training, prefill beyond a few dozen tokens) keep using the full weights.
    ///
    /// # Errors
    /// A weight of the packed layers beyond the format's range (|x| > 65504 in f16).
    pub fn set_decoding_precision(&mut self, precision: Option<HalfPrecision>) -> Result<()> {
        if let Some(p) = precision {
            self.check_decoding_range(p)?;
        }
        if self.decode.precision != precision {
            self.decode = DecodeWeights { packed: std::sync::OnceLock::new(), precision, matmul: self.decode.matmul };
        }
        Ok(())
    }

    /// Sets the arithmetic of the decoding passes' products (PyTorch's
    /// `torch.set_float32_matmul_precision`): [`MatmulPrecision::Medium`] keeps the packed copy in
    /// bf16 pairs and rounds each product's activations to bf16, summing exact products in f32
    /// (`vdpbf16ps` on CPUs with AVX512-BF16: twice the multiply–adds per instruction, so passes
    /// over many positions cost less; the same sums by FMA elsewhere, bit for bit). Each position's
    /// result still does not depend on the positions scored with it, so speculative decoding stays
    /// exactly this model's output. Lossy against `Highest` (the default): see
    /// [`MatmulPrecision`]. The attention and the passes over many positions keep f32.
    ///
    /// # Errors
    /// `Medium` with a weight of the packed layers beyond bf16's range.
    pub fn set_matmul_precision(&mut self, matmul: MatmulPrecision) -> Result<()> {
        if matmul == MatmulPrecision::Medium {
            self.check_decoding_range(HalfPrecision::Bf16)?;
        }
        if self.decode.matmul != matmul {
            self.decode =
                DecodeWeights { packed: std::sync::OnceLock::new(), precision: self.decode.precision, matmul };
        }
        Ok(())
    }

    /// The arithmetic of the decoding products ([`Gpt::set_matmul_precision`]).
    pub fn matmul_precision(&self) -> MatmulPrecision {
        self.decode.matmul
    }

    /// An error naming the first weight of the packed layers that `p` rounds to infinity.
    fn check_decoding_range(&self, p: HalfPrecision) -> Result<()> {
        let packed = self.blocks.iter().flat_map(|b| [&b.c_attn, &b.attn_proj, &b.c_fc, &b.mlp_proj]);
        let mut weights = packed.map(|l| l.weight.view()).chain(std::iter::once(self.wte.view()));
        match weights.find_map(|w| w.iter().copied().find(|x| !p.round(x.as_f64() as f32).is_finite())) {
            Some(x) => Err(Error::invalid("decoding weight", x, format!("a value within {}'s range", p.name()))),
            None => Ok(()),
        }
    }

    /// The storage of the decoding copy ([`Gpt::set_decoding_precision`]).
    pub fn decoding_precision(&self) -> Option<HalfPrecision> {
        self.decode.precision
    }

    /// The bytes of the packed decoding weights, once built ([`Gpt::prepare_decoding`]).
    pub fn decoding_bytes(&self) -> Option<usize> {
        self.decode.packed.get().map(|p| {
            p.blocks.iter().flatten().map(PackedColumns::bytes).sum::<usize>()
                + p.mlps.iter().map(PackedMlp::bytes).sum::<usize>()
                + p.head.0.bytes()
        })
    }

    /// The packed decoding weights ([`DecodeWeights`]), built on first use.
    fn decode_weights(&self) -> &Packed<T> {
        let (precision, matmul) = (self.decode.precision, self.decode.matmul);
        let pack = |w: ndarray::ArrayView2<T>| PackedColumns::with_matmul(w, precision, matmul);
        self.decode.packed.get_or_init(|| Packed {
            blocks: self.blocks.iter().map(|b| [&b.c_attn, &b.attn_proj].map(|l| pack(l.weight.view()))).collect(),
            mlps: self
                .blocks
                .iter()
                .map(|b| PackedMlp::with_matmul(b.c_fc.weight.view(), b.mlp_proj.weight.view(), precision, matmul))
                .collect(),
            head: (pack(self.wte.t()), Array1::zeros(self.wte.nrows())),
        })
    }

    /// The first non-finite entry, as `"name[flat index]"`.
    pub(crate) fn first_non_finite(&self) -> Option<String> {
        self.tensors()
            .iter()
            .find_map(|(name, t)| t.iter().position(|v| !v.is_finite()).map(|i| format!("{name}[{i}]")))
    }

    /// Adds `other` to `self` tensor by tensor (same shapes), e.g. to sum gradients.
    pub(crate) fn add_assign(&mut self, other: &Self) {
        for ((_, mut a), (_, b)) in self.tensors_mut().into_iter().zip(other.tensors()) {
            a += &b;
        }
    }
}

/// Gpt's tensors for the optimizer: the 2-D tensors (linear weights and both embeddings, `wte`
/// being the tied head too) in [`ParamGroup::Decay`], biases and LayerNorm parameters in
/// [`ParamGroup::NoDecay`] (nanoGPT's `configure_optimizers`).
impl<T: Real> Parameters for Gpt<T> {
    type Scalar = T;

    fn parameters_mut(&mut self) -> Vec<TensorMut<'_, T>> {
        self.tensors_mut()
            .into_iter()
            .map(|(name, t)| {
                let group = if t.ndim() == 2 { ParamGroup::Decay } else { ParamGroup::NoDecay };
                TensorMut { name, group, values: t.into_slice().expect("owned tensors are contiguous") }
            })
            .collect()
    }

    fn zeros_like(&self) -> Self {
        Gpt::zeros_like(self)
    }
}

/// A Hugging Face GPT-2 folder.
impl Trainable for Gpt<f32> {
    const FORMAT: &'static str = "gpt2";

    fn save_folder(&self, dir: &Path) -> Result<()> {
        self.save(dir)
    }

    fn load_folder(dir: &Path) -> Result<Self> {
        Self::load(dir)
    }
}

/// Runs `f` over `items` in parallel when `parallel` (rayon), in order otherwise; results in order.
pub(crate) fn maybe_par_map<I: Sync, R: Send>(
    items: &[I],
    parallel: bool,
    f: impl Fn(&I) -> R + Sync + Send,
) -> Vec<R> {
    if parallel {
        items.par_iter().map(f).collect()
    } else {
        items.iter().map(f).collect()
    }
}

/// Concatenates the per-position rows of a (B, T, ·) view into (B·T, ·).
pub(crate) fn flatten_rows<T: Real>(a: ndarray::ArrayView3<T>) -> Array2<T> {
    let (b, t, v) = a.dim();
    let mut out = Array2::zeros((b * t, v));
    for (i, seq) in a.axis_iter(Axis(0)).enumerate() {
        out.slice_mut(s![i * t..(i + 1) * t, ..]).assign(&seq);
    }
    out
}

//! A transformer encoder classifier: the Transformer baseline of the Long Range Arena (Tay et al.
//! 2021), trained by the same trainer on the same tasks as S4 (`s4 train --arch transformer`).
//!
//! ## The model
//!
//! With tokens x (B, L) (an embedding, when `vocab_size` is set) or features u (B, d_input, L) (a
//! linear encoder), sequence b valid at positions t < n_b (`lengths`; all L when none are given):
//!
//! ```text
//! h⁰_t = E[x_t] + P_t        or   h⁰_t = W_e u_t + b_e + P_t            (L, C), P learned (max_len, C)
//! for each block ℓ:  a = h + c_proj(attn(c_attn(ln_1(h))))            pre-LayerNorm, residual
//!                    h = a + mlp_c_proj(gelu(c_fc(ln_2(a))))
//! z = pool(ln_f(h))      mean over t < n_b (LRA), or the last valid position t = n_b − 1
//! logits = z·W_head + b_head                                           (B, d_output)
//! ```
//!
//! Attention is **bidirectional** with a key-padding mask ([`AttentionMask::Padding`]): position i
//! of sequence b attends to every key j < n_b with softmax(q_i·k_j/√d) per head of d = C/n_heads
//! features; padded positions are never attended to (and their own attention outputs 0), so the
//! values at padded positions have no influence on the output. The blocks are the GPT-2 blocks of
//! this module ([`Block`], the same LayerNorm, linear, attention and GELU kernels and backward
//! passes, in [`grad`]); every linear layer is y = x·W + b with W stored [in, out], except the
//! linear encoder `encoder.weight` (C, d_input), stored as PyTorch's `nn.Linear` and S4's encoder.
//!
//! Loss: softmax cross-entropy over the classes ([`Target::Classes`]), or, with d_output = 1, the
//! mean squared error ([`Target::Values`]); averaged over the batch.
//!
//! **No dropout**: the training forward is the evaluation forward (LRA's small baselines use
//! dropout 0.1; here the baseline trains without it, which on the short CPU runs costs little).
//!
//! ## Tensors and checkpoints
//!
//! `encoder.weight` (V, C) or (C, d_input), `encoder.bias` (C,) (linear encoder only),
//! `pos_embedding.weight` (max_len, C), per block `layers.{i}.ln_1.{weight,bias}`,
//! `layers.{i}.attn.c_attn.*` (C, 3C), `layers.{i}.attn.c_proj.*` (C, C), `layers.{i}.ln_2.*`,
//! `layers.{i}.mlp.c_fc.*` (C, d_mlp), `layers.{i}.mlp.c_proj.*` (d_mlp, C), then `ln_f.*` and
//! `head.weight` (C, d_output), `head.bias`. A saved folder holds `config.json`
//! (`"format": "transformer-classifier"` and the configuration) and `model.safetensors`, each written
//! atomically.
//!
//! ## Parallelism and determinism
//!
//! The sequences of a batch run in parallel (rayon), each with its own forward and backward, and
//! their losses and gradients are summed in sequence order: results do not depend on the number of
//! threads.
//!
//! ```
//! use ndarray::array;
//! use s4::model::Input;
//! use s4::model::Target;
//! use s4::transformer::{TransformerClassifier, TransformerClassifierConfig};
//!
//! let cfg = TransformerClassifierConfig {
//!     vocab_size: Some(12),
//!     d_output: 3,
//!     max_len: 16,
//!     d_model: 8,
//!     n_heads: 2,
//!     d_mlp: 16,
//!     ..Default::default()
//! };
//! let model = TransformerClassifier::<f32>::new(cfg)?;
//! let tokens = array![[1u32, 5, 7, 2], [3, 3, 0, 0]]; // the second sequence is padded after 2
//! let lengths = [4, 2];
//! let logits = model.forward(Input::Tokens(tokens.view()), Some(&lengths))?;
//! assert_eq!(logits.dim(), (2, 3));
//!
//! // padding has no influence
//! let other = array![[1u32, 5, 7, 2], [3, 3, 11, 9]];
//! assert_eq!(model.forward(Input::Tokens(other.view()), Some(&lengths))?, logits);
//!
//! let target = Target::Classes(&[0, 2]);
//! let (stats, grads) = model.forward_backward(Input::Tokens(tokens.view()), Some(&lengths), target)?;
//! assert!(stats.loss > 0.0 && stats.count == 2);
//! assert_eq!(grads.config(), model.config()); // gradients are a model of the same shape
//! # Ok::<(), s4::Error>(())
//! ```

use super::grad::{self, AttentionMask, BlockActs, BlockSpec};
use super::{Activation, Block, LayerNorm, Linear};
use crate::error::{Error, Result};
use crate::io::read_json;
use crate::io::tensors::{load_named, save_named, CONFIG_FILE};
use crate::model::loss::{check_lengths, check_target, LossStats, Target};
use crate::model::{Encoder, Input, Pooling};
use crate::nn::linear::{linear, linear_backward};
use crate::nn::loss::{cross_entropy_sum, mse};
use crate::nn::norm::{layer_norm_backward, layer_norm_forward, LayerNormCache};
use crate::nn::params::{ParamGroup, Parameters, TensorMut, Trainable};
use crate::scalar::Real;
use ndarray::{s, Array1, Array2, ArrayViewD, ArrayViewMutD, Axis};
use rand::SeedableRng;
use rand_distr::{Distribution, StandardNormal, Uniform};
use std::path::Path;

/// The `"format"` of a saved classifier's `config.json`.
pub const FORMAT: &str = "transformer-classifier";

/// Hyperparameters of a [`TransformerClassifier`] (plain struct, serde, `Default`; missing keys
/// take the default values).
///
/// `Default`: features of width 1, 10 classes, 1024 positions, C = 64, 2 layers, 4 heads, MLP width
/// 128 (LRA's 2·C), exact GELU, ε = 1e-5, mean pooling, σ = 0.02. The trainer sets `vocab_size`,
/// `d_input`, `d_output`, `max_len` and `seed` from the task
/// ([`TrainConfig::for_task`](crate::train::TrainConfig::for_task)).
#[derive(Clone, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct TransformerClassifierConfig {
    /// Vocabulary size V: the input is tokens `0 .. V` embedded by a table (V, C) when set, and
    /// features through a linear encoder otherwise.
    pub vocab_size: Option<usize>,
    /// Features per position (linear encoder); ignored when `vocab_size` is set.
    pub d_input: usize,
    /// Outputs: classes (cross-entropy), or 1 for regression (mean squared error).
    pub d_output: usize,
    /// Learned positions: the longest sequence the model takes.
    pub max_len: usize,
    /// Model width C.
    pub d_model: usize,
    /// Transformer blocks.
    pub n_layers: usize,
    /// Attention heads per block (C must be a multiple).
    pub n_heads: usize,
    /// Hidden width of the MLPs.
    pub d_mlp: usize,
    /// LayerNorm ε (added to the biased variance).
    pub layer_norm_epsilon: f64,
    /// `"gelu"` (x·Φ(x), exact) or `"gelu_new"` / `"gelu_pytorch_tanh"` (the tanh approximation).
    pub activation_function: String,
    /// `mean` (over the valid positions, LRA) or `last` (the last valid position); `none` is
    /// rejected (a classifier pools).
    pub pooling: Pooling,
    /// Standard deviation σ of the initialization (see [`TransformerClassifier::new`]).
    pub initializer_range: f64,
    /// Seed of the initialization.
    pub seed: u64,
}

impl Default for TransformerClassifierConfig {
    fn default() -> Self {
        TransformerClassifierConfig {
            vocab_size: None,
            d_input: 1,
            d_output: 10,
            max_len: 1024,
            d_model: 64,
            n_layers: 2,
            n_heads: 4,
            d_mlp: 128,
            layer_norm_epsilon: 1e-5,
            activation_function: "gelu".into(),
            pooling: Pooling::Mean,
            initializer_range: 0.02,
            seed: 0,
        }
    }
}

/// Upper bound of every size field (vocabulary, widths, positions, outputs).
const MAX_SIZE: usize = 1 << 24;

impl TransformerClassifierConfig {
    /// Checks every value: sizes in 1 ..= 2²⁴ (`n_layers` ≤ 4096), `d_model` a multiple of `n_heads`,
    /// ε finite and > 0, a known activation, σ finite and ≥ 0, pooling `mean` or `last`, and a
    /// parameter count that fits in memory.
    ///
    /// # Errors
    /// The first invalid field, by name.
    pub fn validate(&self) -> Result<()> {
        let mut sizes = vec![
            ("d_output", self.d_output),
            ("max_len", self.max_len),
            ("d_model", self.d_model),
            ("n_heads", self.n_heads),
            ("d_mlp", self.d_mlp),
        ];
        match self.vocab_size {
            Some(v) => sizes.push(("vocab_size", v)),
            None => sizes.push(("d_input", self.d_input)),
        }
        for (name, v) in sizes {
            if v == 0 || v > MAX_SIZE {
                return Err(Error::invalid(name, v, format!("an integer in 1..={MAX_SIZE}")));
            }
        }
        if self.n_layers == 0 || self.n_layers > 4096 {
            return Err(Error::invalid("n_layers", self.n_layers, "an integer in 1..=4096"));
        }
        if !self.d_model.is_multiple_of(self.n_heads) {
            return Err(Error::invalid(
                "d_model",
                self.d_model,
                format!("a multiple of n_heads = {} (heads split the width evenly)", self.n_heads),
            ));
        }
        if !(self.layer_norm_epsilon.is_finite() && self.layer_norm_epsilon > 0.0) {
            return Err(Error::invalid("layer_norm_epsilon", self.layer_norm_epsilon, "a finite value > 0"));
        }
        if !(self.initializer_range.is_finite() && self.initializer_range >= 0.0) {
            return Err(Error::invalid("initializer_range", self.initializer_range, "a finite value >= 0"));
        }
        Activation::parse(&self.activation_function)?;
        if self.pooling == Pooling::None {
            return Err(Error::invalid("pooling", "none", "mean or last (a classifier pools its sequence)"));
        }
        let (c, m) = (self.d_model, self.d_mlp);
        let count = (|| {
            let per_block = c.checked_mul(4 * c + 2 * m)?.checked_add(9 * c + m)?;
            let input = self.vocab_size.unwrap_or(self.d_input + 1);
            let io = input.checked_add(self.max_len)?.checked_add(self.d_output + 2)?.checked_mul(c)?;
            per_block.checked_mul(self.n_layers)?.checked_add(io)
        })();
        match count {
            Some(n) if n <= (isize::MAX as usize) / 16 => Ok(()),
            _ => Err(Error::invalid(
                "model size",
                format!("d_model {c} · d_mlp {m} · n_layers {} ...", self.n_layers),
                "a parameter count that fits in memory",
            )),
        }
    }

    /// The width of one attention head, `d_model / n_heads`.
    pub fn head_dim(&self) -> usize {
        self.d_model / self.n_heads
    }
}

/// A transformer encoder classifier (see the [module docs](self)), generic over the precision:
/// `f32` to train, `f64` for gradient checks. Gradients ([`forward_backward`](Self::forward_backward))
/// are a `TransformerClassifier` of the same shape.
#[derive(Clone, Debug, PartialEq)]
pub struct TransformerClassifier<T = f32> {
    config: TransformerClassifierConfig,
    activation: Activation,
    encoder: Encoder<T>,
    wpe: Array2<T>,
    blocks: Vec<Block<T>>,
    ln_f: LayerNorm<T>,
    head: Linear<T>,
}

/// What one sequence's backward needs.
#[derive(Debug)]
struct Tape<T> {
    /// The linear encoder's input rows (L, d_input) (features only).
    rows: Option<Array2<T>>,
    acts: Vec<BlockActs<T>>,
    hf_cache: LayerNormCache<T>,
    /// The pooled features (1, C).
    pooled: Array2<T>,
}

impl<T: Real> TransformerClassifier<T> {
    /// The shapes of `config` with every weight 0 and every LayerNorm scale 1.
    fn zeros(config: TransformerClassifierConfig) -> Result<Self> {
        config.validate()?;
        let activation = Activation::parse(&config.activation_function)?;
        let c = config.d_model;
        let encoder = match config.vocab_size {
            Some(v) => Encoder::Embedding { table: Array2::zeros((v, c)) },
            None => Encoder::Linear { w: Array2::zeros((c, config.d_input)), b: Array1::zeros(c) },
        };
        Ok(TransformerClassifier {
            encoder,
            wpe: Array2::zeros((config.max_len, c)),
            blocks: (0..config.n_layers).map(|_| Block::zeros(c, config.d_mlp)).collect(),
            ln_f: LayerNorm { weight: Array1::ones(c), bias: Array1::zeros(c) },
            head: Linear { weight: Array2::zeros((c, config.d_output)), bias: Array1::zeros(config.d_output) },
            activation,
            config,
        })
    }

    /// A randomly initialized model: token embedding N(0, 1) (PyTorch's `nn.Embedding`), or the
    /// linear encoder's weight and bias uniform in ±1/√d_input (`nn.Linear`); positions, block and
    /// head weights N(0, σ²) with σ = `initializer_range`, the residual projections
    /// (`attn.c_proj`, `mlp.c_proj`) N(0, σ²/(2·n_layers)) (GPT-2); biases 0, LayerNorm 1 / 0.
    /// Drawn from a Pcg64 seeded with `seed`, tensor by tensor in [`tensors`](Self::tensors) order.
    ///
    /// # Errors
    /// An invalid configuration ([`TransformerClassifierConfig::validate`]).
    pub fn new(config: TransformerClassifierConfig) -> Result<Self> {
        let mut model = Self::zeros(config)?;
        let cfg = &model.config;
        let sigma = cfg.initializer_range;
        let proj_sigma = sigma / (2.0 * cfg.n_layers as f64).sqrt();
        let bound = 1.0 / (cfg.d_input as f64).sqrt();
        let embedding = cfg.vocab_size.is_some();
        let uniform = Uniform::new_inclusive(-bound, bound).expect("bound > 0");
        let mut rng = rand_pcg::Pcg64::seed_from_u64(cfg.seed);
        for (name, mut t) in model.tensors_mut() {
            // Some(σ): N(0, σ²); None: uniform in ±1/√d_input
            let normal_sd = match name.as_str() {
                "encoder.weight" if embedding => Some(1.0),
                "encoder.weight" | "encoder.bias" => None,
                _ if t.ndim() != 2 => continue, // biases 0, LayerNorm 1 / 0
                n if n.ends_with("c_proj.weight") => Some(proj_sigma),
                _ => Some(sigma),
            };
            for v in t.iter_mut() {
                *v = T::of(match normal_sd {
                    Some(sd) => sd * <StandardNormal as Distribution<f64>>::sample(&StandardNormal, &mut rng),
                    None => uniform.sample(&mut rng),
                });
            }
        }
        Ok(model)
    }

    /// The configuration.
    pub fn config(&self) -> &TransformerClassifierConfig {
        &self.config
    }

    /// The input encoder: a token embedding (V, C), or a linear map W (C, d_input), b (C,).
    pub fn encoder(&self) -> &Encoder<T> {
        &self.encoder
    }

    /// The learned position embedding (max_len, C).
    pub fn wpe(&self) -> &Array2<T> {
        &self.wpe
    }

    /// The transformer blocks.
    pub fn blocks(&self) -> &[Block<T>] {
        &self.blocks
    }

    /// The final LayerNorm.
    pub fn ln_f(&self) -> &LayerNorm<T> {
        &self.ln_f
    }

    /// The classification head: W (C, d_output), b (d_output,).
    pub fn head(&self) -> &Linear<T> {
        &self.head
    }

    /// Every parameter tensor with its checkpoint name, in a fixed order: `encoder.weight`,
    /// `encoder.bias` (linear encoder only), `pos_embedding.weight`, each block's tensors under
    /// `layers.{i}.` (`ln_1`, `attn.c_attn`, `attn.c_proj`, `ln_2`, `mlp.c_fc`, `mlp.c_proj`, each
    /// `.weight` then `.bias`), `ln_f.weight`, `ln_f.bias`, `head.weight`, `head.bias`.
    pub fn tensors(&self) -> Vec<(String, ArrayViewD<'_, T>)> {
        let mut out = match &self.encoder {
            Encoder::Embedding { table } => vec![("encoder.weight".to_string(), table.view().into_dyn())],
            Encoder::Linear { w, b } => vec![
                ("encoder.weight".to_string(), w.view().into_dyn()),
                ("encoder.bias".to_string(), b.view().into_dyn()),
            ],
        };
        out.push(("pos_embedding.weight".to_string(), self.wpe.view().into_dyn()));
        for (i, b) in self.blocks.iter().enumerate() {
            out.extend(b.tensors(&format!("layers.{i}.")));
        }
        out.push(("ln_f.weight".to_string(), self.ln_f.weight.view().into_dyn()));
        out.push(("ln_f.bias".to_string(), self.ln_f.bias.view().into_dyn()));
        out.push(("head.weight".to_string(), self.head.weight.view().into_dyn()));
        out.push(("head.bias".to_string(), self.head.bias.view().into_dyn()));
        out
    }

    /// As [`tensors`](Self::tensors), mutable (the values can change, the shapes cannot).
    pub fn tensors_mut(&mut self) -> Vec<(String, ArrayViewMutD<'_, T>)> {
        let TransformerClassifier { encoder, wpe, blocks, ln_f, head, .. } = self;
        let mut out = match encoder {
            Encoder::Embedding { table } => vec![("encoder.weight".to_string(), table.view_mut().into_dyn())],
            Encoder::Linear { w, b } => vec![
                ("encoder.weight".to_string(), w.view_mut().into_dyn()),
                ("encoder.bias".to_string(), b.view_mut().into_dyn()),
            ],
        };
        out.push(("pos_embedding.weight".to_string(), wpe.view_mut().into_dyn()));
        for (i, b) in blocks.iter_mut().enumerate() {
            out.extend(b.tensors_mut(&format!("layers.{i}.")));
        }
        out.push(("ln_f.weight".to_string(), ln_f.weight.view_mut().into_dyn()));
        out.push(("ln_f.bias".to_string(), ln_f.bias.view_mut().into_dyn()));
        out.push(("head.weight".to_string(), head.weight.view_mut().into_dyn()));
        out.push(("head.bias".to_string(), head.bias.view_mut().into_dyn()));
        out
    }

    /// The number of parameters.
    pub fn num_params(&self) -> usize {
        self.tensors().iter().map(|(_, t)| t.len()).sum()
    }

    /// The same model in another precision (`f32` ↔ `f64`; rounding to nearest for `f32`).
    pub fn cast<U: Real>(&self) -> TransformerClassifier<U> {
        let mut out = TransformerClassifier::<U>::zeros(self.config.clone()).expect("the configuration was validated");
        for ((_, src), (_, mut dst)) in self.tensors().into_iter().zip(out.tensors_mut()) {
            dst.zip_mut_with(&src, |d, &s| *d = U::of(s.as_f64()));
        }
        out
    }

    /// Checks an input batch and its lengths; returns (B, L).
    fn check_input(&self, input: Input<T>, lengths: Option<&[usize]>) -> Result<(usize, usize)> {
        let (b, l) = self.encoder.check_input(input)?;
        if l > self.config.max_len {
            return Err(Error::invalid(
                "sequence length L",
                l,
                format!("<= max_len = {} (the learned positions)", self.config.max_len),
            ));
        }
        check_lengths(lengths, b, l)?;
        Ok((b, l))
    }

    fn spec<'a>(&self, lengths: &'a [usize]) -> BlockSpec<'a> {
        BlockSpec {
            batch: 1,
            heads: self.config.n_heads,
            eps: self.config.layer_norm_epsilon,
            act: self.activation,
            mask: AttentionMask::Padding(Some(lengths)),
        }
    }

    /// Training-path forward of sequence `b` (valid length n) over its padded width: the logits
    /// (1, d_output) and the tape.
    fn forward_one(&self, input: Input<T>, b: usize, n: usize) -> (Array2<T>, Tape<T>) {
        let (mut x, rows) = match (&self.encoder, input) {
            (Encoder::Embedding { table }, Input::Tokens(tok)) => {
                (grad::embedding_forward(table.view(), self.wpe.view(), tok.slice(s![b..b + 1, ..]), 0), None)
            }
            (Encoder::Linear { w, b: bias }, Input::Features(u)) => {
                let rows = u.index_axis(Axis(0), b).t().as_standard_layout().into_owned();
                let mut x = linear(rows.view(), w.t(), bias.view());
                x += &self.wpe.slice(s![..rows.nrows(), ..]);
                (x, Some(rows))
            }
            _ => unreachable!("check_input matched the input to the encoder"),
        };
        let lens = [n];
        let sp = self.spec(&lens);
        let acts: Vec<BlockActs<T>> = self.blocks.iter().map(|blk| grad::block_forward(blk, &mut x, sp)).collect();
        let (hf, hf_cache) = layer_norm_forward(x.view(), self.ln_f.weight.view(), self.ln_f.bias.view(), sp.eps);
        let pooled = match self.config.pooling {
            Pooling::Last => hf.slice(s![n - 1..n, ..]).to_owned(),
            _ => {
                let sum = hf.slice(s![..n, ..]).rows().into_iter().fold(Array1::<T>::zeros(hf.ncols()), |mut a, r| {
                    a += &r;
                    a
                });
                (sum / T::of(n as f64)).insert_axis(Axis(0))
            }
        };
        let logits = linear(pooled.view(), self.head.weight.view(), self.head.bias.view());
        (logits, Tape { rows, acts, hf_cache, pooled })
    }

    /// Backward of [`forward_one`](Self::forward_one) from dlogits (1, d_output): every gradient.
    fn backward_one(&self, input: Input<T>, b: usize, n: usize, tape: &Tape<T>, dlogits: Array2<T>) -> Self {
        let mut g = self.zeros_like();
        let (dpooled, dw, db) = linear_backward(tape.pooled.view(), self.head.weight.view(), dlogits.view());
        (g.head.weight, g.head.bias) = (dw, db);
        let mut dhf = Array2::<T>::zeros(tape.hf_cache.xhat.dim());
        match self.config.pooling {
            Pooling::Last => dhf.row_mut(n - 1).assign(&dpooled.row(0)),
            _ => {
                let share = dpooled.row(0).mapv(|v| v / T::of(n as f64));
                dhf.slice_mut(s![..n, ..]).rows_mut().into_iter().for_each(|mut r| r.assign(&share));
            }
        }
        let (mut dx, dw, db) = layer_norm_backward(&tape.hf_cache, self.ln_f.weight.view(), dhf.view());
        (g.ln_f.weight, g.ln_f.bias) = (dw, db);
        let lens = [n];
        let sp = self.spec(&lens);
        for ((blk, a), gb) in self.blocks.iter().zip(&tape.acts).zip(g.blocks.iter_mut()).rev() {
            grad::block_backward(blk, a, &mut dx, gb, sp);
        }
        match (&self.encoder, input, &mut g.encoder) {
            (Encoder::Embedding { table }, Input::Tokens(tok), Encoder::Embedding { table: gt }) => {
                let ids = tok.slice(s![b..b + 1, ..]);
                (*gt, g.wpe) = grad::embedding_backward(ids, dx.view(), table.nrows(), self.config.max_len, 0);
            }
            (Encoder::Linear { w, .. }, _, Encoder::Linear { w: gw, b: gbias }) => {
                let rows = tape.rows.as_ref().expect("the linear encoder keeps its input rows");
                let (_, dw, db) = linear_backward(rows.view(), w.t(), dx.view());
                gw.assign(&dw.t());
                *gbias = db;
                g.wpe.slice_mut(s![..dx.nrows(), ..]).assign(&dx);
            }
            _ => unreachable!("check_input matched the input to the encoder"),
        }
        g
    }

    /// Logits (B, d_output) of a batch in evaluation mode: tokens (B, L) or features
    /// (B, d_input, L), sequence b valid at positions t < `lengths[b]` (all L when `None`; the
    /// values at padded positions have no influence). Sequences run in parallel; each result
    /// depends only on its own sequence.
    ///
    /// # Errors
    /// Input of the wrong kind or width, an empty batch, L > `max_len`, a token id ≥ V, non-finite
    /// features, or lengths that are not one per sequence in 1 ..= L.
    pub fn forward(&self, input: Input<T>, lengths: Option<&[usize]>) -> Result<Array2<T>> {
        let (b, l) = self.check_input(input, lengths)?;
        let mut logits = Array2::<T>::zeros((b, self.config.d_output));
        let mut next = 0;
        grad::map_fold_in_order(
            b,
            b,
            |i| self.forward_one(input, i, lengths.map_or(l, |n| n[i])).0,
            |row| {
                logits.row_mut(next).assign(&row.row(0));
                next += 1;
            },
        );
        Ok(logits)
    }

    /// The loss of `target` over a batch (as [`forward`](Self::forward)) and the gradient of
    /// every parameter (a model of the same shape): the mean softmax cross-entropy over the
    /// sequences for [`Target::Classes`] (with the number of correct argmax predictions), the
    /// mean squared error for [`Target::Values`] (d_output = 1). No dropout: the forward is the
    /// evaluation forward. Sequences run in parallel, each with its own forward and backward, and
    /// their losses and gradients are summed in sequence order (independent of the thread count).
    ///
    /// # Errors
    /// As [`forward`](Self::forward), and a target that is not one class < d_output (or one finite
    /// value, with d_output = 1) per sequence.
    pub fn forward_backward(
        &self,
        input: Input<T>,
        lengths: Option<&[usize]>,
        target: Target,
    ) -> Result<(LossStats, Self)> {
        let (b, l) = self.check_input(input, lengths)?;
        check_target(&target, self.config.pooling, self.config.d_output, b, l)?;
        let inv_b = T::of(1.0 / b as f64);
        let mut stats = LossStats { count: b, ..Default::default() };
        let mut grads: Option<Self> = None;
        let one_sequence = |i: usize| {
            let n = lengths.map_or(l, |n| n[i]);
            let (logits, tape) = self.forward_one(input, i, n);
            let (loss, dlogits, correct) = sequence_loss(logits, target, i);
            (loss, correct, self.backward_one(input, i, n, &tape, dlogits * inv_b))
        };
        // the whole batch in one wave (rayon balances sequences of unequal lengths): a classifier's
        // gradient is small, and each sequence's activations are freed when its backward ends
        grad::map_fold_in_order(b, b, one_sequence, |(loss, correct, g): (f64, usize, Self)| {
            stats.loss += loss / b as f64;
            stats.correct += correct;
            match &mut grads {
                Some(acc) => acc.add_assign(&g),
                None => grads = Some(g),
            }
        });
        Ok((stats, grads.expect("at least one sequence")))
    }

    /// The loss of `target` over a batch from [`forward`](Self::forward), without gradients: the
    /// value [`forward_backward`](Self::forward_backward) returns.
    ///
    /// # Errors
    /// As [`forward_backward`](Self::forward_backward).
    pub fn evaluate_loss(&self, input: Input<T>, lengths: Option<&[usize]>, target: Target) -> Result<LossStats> {
        let logits = self.forward(input, lengths)?;
        let b = logits.nrows();
        let l = match input {
            Input::Tokens(t) => t.ncols(),
            Input::Features(f) => f.shape()[2],
        };
        check_target(&target, self.config.pooling, self.config.d_output, b, l)?;
        let mut stats = LossStats { count: b, ..Default::default() };
        for i in 0..b {
            let (loss, _, correct) = sequence_loss(logits.slice(s![i..i + 1, ..]).to_owned(), target, i);
            stats.loss += loss / b as f64;
            stats.correct += correct;
        }
        Ok(stats)
    }

    /// Adds `other` to `self` tensor by tensor (same shapes), e.g. to sum gradients.
    fn add_assign(&mut self, other: &Self) {
        for ((_, mut a), (_, b)) in self.tensors_mut().into_iter().zip(other.tensors()) {
            a += &b;
        }
    }

    /// Saves into the folder `dir` (created if needed): `config.json` (`"format":
    /// "transformer-classifier"`, the dtype and the configuration) and `model.safetensors` (every
    /// tensor by its [`tensors`](Self::tensors) name, in `T`'s precision), each written atomically,
    /// the weights first. [`load`](Self::load) gives back the same model bit for bit.
    ///
    /// # Errors
    /// The folder or a file cannot be written.
    pub fn save(&self, dir: &Path) -> Result<()> {
        let dtype = if std::mem::size_of::<T>() == 4 { "f32" } else { "f64" };
        let cfg = serde_json::json!({"format": FORMAT, "version": 1, "dtype": dtype, "model": self.config});
        save_named(dir, self.tensors(), &cfg)
    }

    /// Loads a folder written by [`save`](Self::save) in precision `T` (F32, F64, BF16 or F16
    /// tensors are converted).
    ///
    /// # Errors
    /// A missing or unreadable file, a `config.json` of another format or with an invalid
    /// configuration, an invalid safetensors file; every missing, mis-shaped, mis-typed and
    /// unexpected tensor is named in one [`Error::Format`], and so are non-finite weights.
    pub fn load(dir: &Path) -> Result<Self> {
        let cpath = dir.join(CONFIG_FILE);
        let v: serde_json::Value = read_json(&cpath)?;
        if v.get("format").and_then(|f| f.as_str()) != Some(FORMAT) {
            return Err(Error::format(
                &cpath,
                format!("not a transformer classifier (\"format\": \"{FORMAT}\" expected)"),
            ));
        }
        let cfg: TransformerClassifierConfig = serde_json::from_value(v.get("model").cloned().unwrap_or_default())
            .map_err(|e| Error::format(&cpath, format!("invalid model config: {e}")))?;
        let mut model = Self::zeros(cfg).map_err(|e| Error::format(&cpath, e.to_string()))?;
        load_named(dir, model.tensors_mut())?;
        Ok(model)
    }
}

/// The loss of sequence `i` from its logits (1, d_output): (loss, dloss/dlogits, 1 if the argmax
/// is the class). `target` was checked.
fn sequence_loss<T: Real>(logits: Array2<T>, target: Target, i: usize) -> (f64, Array2<T>, usize) {
    match target {
        Target::Classes(y) => cross_entropy_sum(logits.view(), ndarray::ArrayView1::from(&y[i..i + 1]), 1.0),
        Target::Values(y) => {
            let (loss, g) = mse(logits.column(0), &y[i..i + 1]);
            (loss, g.insert_axis(Axis(1)), 0)
        }
        Target::Tokens(_) | Target::Distill { .. } => {
            unreachable!("check_target: a classifier takes one target per sequence")
        }
    }
}

impl Trainable for TransformerClassifier<f32> {
    const FORMAT: &'static str = FORMAT;

    fn save_folder(&self, dir: &Path) -> Result<()> {
        self.save(dir)
    }

    fn load_folder(dir: &Path) -> Result<Self> {
        Self::load(dir)
    }
}

impl<T: Real> Parameters for TransformerClassifier<T> {
    type Scalar = T;

    /// The tensors of [`tensors_mut`](TransformerClassifier::tensors_mut) with their groups: the
    /// 2-D weights (linear encoder, attention, MLP, head) [`ParamGroup::Decay`]; the embeddings
    /// (tokens, positions), biases and LayerNorm parameters [`ParamGroup::NoDecay`].
    fn parameters_mut(&mut self) -> Vec<TensorMut<'_, T>> {
        let embedding = self.config.vocab_size.is_some();
        self.tensors_mut()
            .into_iter()
            .map(|(name, t)| {
                let is_embedding = name == "pos_embedding.weight" || (embedding && name == "encoder.weight");
                let group = if t.ndim() == 2 && !is_embedding { ParamGroup::Decay } else { ParamGroup::NoDecay };
                TensorMut { name, group, values: t.into_slice().expect("owned tensors are contiguous") }
            })
            .collect()
    }

    fn zeros_like(&self) -> Self {
        let mut z = self.clone();
        for (_, mut t) in z.tensors_mut() {
            t.fill(T::zero());
        }
        z
    }
}

//! Deep S4 models: encoder → n residual S4 blocks → decoder (the official `SequenceModel` with
//! `SequenceResidualBlock`s), in convolutional mode over whole sequences and in recurrent mode one
//! step at a time, with presets for the official LRA configurations and a causal language model.
//!
//! ```text
//! input ─► encoder (linear over features, or token embedding) ─► (B, H, L)
//!       ─► n × block: prenorm  x + S4Layer(norm(x))      (final norm after the last block)
//!                    postnorm norm(x + S4Layer(x))
//!       ─► pooling (mean over valid positions / last valid position / none) ─► linear head
//! ```

pub mod checkpoint;
pub mod loss;
pub mod norm;
pub mod official;

pub use loss::{LossStats, Target};
pub use norm::{Norm, NormKind};

use crate::budget::Estimate;
use crate::error::{Error, Result};
use crate::layer::{ForwardOptions, Recurrent, S4Layer, S4LayerConfig, State};
use crate::nn::linear::{packed_linear_into, PackedMatrix};
use crate::scalar::Real;
use ndarray::{s, Array1, Array2, Array3, ArrayView2, ArrayView3, Axis};
use rand::SeedableRng;
use rand_distr::{Distribution, StandardNormal, Uniform};

/// How the decoder reduces the sequence.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Pooling {
    /// Mean over the valid positions (classification; the LRA default).
    Mean,
    /// The last valid position.
    Last,
    /// No pooling: an output per position (sequence-to-sequence, language models).
    None,
}

/// Configuration of an [`S4Model`].
#[derive(Clone, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct S4ModelConfig {
    /// Features per input position (linear encoder); ignored when `vocab_size` is set.
    pub d_input: usize,
    /// Vocabulary size: the encoder is a token embedding when set.
    pub vocab_size: Option<usize>,
    /// Outputs of the linear head (classes, or the vocabulary of a language model).
    pub d_output: usize,
    /// Number of residual blocks.
    pub n_layers: usize,
    /// The S4 layer of every block; its `d_model` is the model width H.
    pub layer: S4LayerConfig,
    /// Normalize before the layer rather than after the residual sum.
    pub prenorm: bool,
    /// With `prenorm`: one more norm after the last block (the official training repository's
    /// `SequenceModel` has it; `example.py`'s `S4Model` has not). Ignored without `prenorm`.
    pub final_norm: bool,
    /// LayerNorm or BatchNorm.
    pub norm: NormKind,
    /// Residual dropout (on each layer's output before the residual sum; active in
    /// [`S4Model::forward_train`] only).
    pub dropout: f64,
    /// Decoder pooling.
    pub pooling: Pooling,
    /// Seed of the initialization (layer i uses seed + i + 1).
    pub seed: u64,
}

impl Default for S4ModelConfig {
    fn default() -> Self {
        S4ModelConfig {
            d_input: 1,
            vocab_size: None,
            d_output: 10,
            n_layers: 4,
            layer: S4LayerConfig { d_model: 64, d_state: 64, ..Default::default() },
            prenorm: true,
            final_norm: true,
            norm: NormKind::Layer,
            dropout: 0.0,
            pooling: Pooling::Mean,
            seed: 0,
        }
    }
}

impl S4ModelConfig {
    /// The common LRA setup of the official configs (`configs/model/s4.yaml`): DPLR LegS, rank 1,
    /// layer-level bidirectional, softplus Δ, BatchNorm, mean pooling, 6 layers.
    fn lra(h: usize, n: usize, prenorm: bool, n_ssm: Option<usize>, dt_min: f64) -> Self {
        S4ModelConfig {
            n_layers: 6,
            layer: S4LayerConfig {
                d_model: h,
                d_state: n,
                n_ssm,
                bidirectional: true,
                dt_min,
                dt_max: 1e-1,
                dt_transform: crate::layer::DtTransform::Softplus,
                ..Default::default()
            },
            prenorm,
            norm: NormKind::Batch,
            pooling: Pooling::Mean,
            ..Default::default()
        }
    }

    /// LRA ListOps (`s4-listops.yaml`): 6 layers, H = 256, N = 4, postnorm, n_ssm = 1; tokens
    /// (vocabulary 20: digits, operators, brackets, padding), 10 classes.
    pub fn lra_listops() -> Self {
        S4ModelConfig { vocab_size: Some(20), d_output: 10, ..Self::lra(256, 4, false, Some(1), 1e-3) }
    }

    /// LRA Text / IMDB bytes (`s4-imdb.yaml`): 6 layers, H = 256, N = 4, prenorm, n_ssm = 1;
    /// byte tokens (256), 2 classes.
    pub fn lra_text() -> Self {
        S4ModelConfig { vocab_size: Some(256), d_output: 2, ..Self::lra(256, 4, true, Some(1), 1e-3) }
    }

    /// LRA Retrieval / AAN (`s4-aan.yaml`): 6 layers, H = 256, N = 4, prenorm, n_ssm = 1; byte
    /// tokens, 2 classes. (The official retrieval decoder pairs two documents; this preset is the
    /// encoder for one document.)
    pub fn lra_retrieval() -> Self {
        S4ModelConfig { vocab_size: Some(256), d_output: 2, ..Self::lra(256, 4, true, Some(1), 1e-3) }
    }

    /// LRA Image / sCIFAR grayscale (`s4-cifar.yaml`): 6 layers, H = 512, N = 64, postnorm,
    /// dropout 0.1, n_ssm = 1; one pixel per step, 10 classes.
    pub fn lra_image() -> Self {
        let mut c = Self::lra(512, 64, false, Some(1), 1e-3);
        c.d_input = 1;
        c.d_output = 10;
        c.dropout = 0.1;
        c.layer.dropout = 0.1;
        c
    }

    /// LRA Pathfinder 32×32 (`s4-pathfinder.yaml`): 6 layers, H = 256, N = 64, prenorm,
    /// n_ssm = H; one pixel per step, 2 classes.
    pub fn lra_pathfinder() -> Self {
        S4ModelConfig { d_input: 1, d_output: 2, ..Self::lra(256, 64, true, None, 1e-3) }
    }

    /// LRA Path-X 128×128, L = 16384 (`s4-pathx.yaml`): as Pathfinder with Δ from 1e-4.
    pub fn lra_pathx() -> Self {
        S4ModelConfig { d_input: 1, d_output: 2, ..Self::lra(256, 64, true, None, 1e-4) }
    }

    /// A causal language model over `vocab` tokens: embedding, 4 causal DPLR blocks (H = 256,
    /// N = 64, prenorm LayerNorm), logits at every position.
    pub fn causal_lm(vocab: usize) -> Self {
        S4ModelConfig {
            vocab_size: Some(vocab),
            d_output: vocab,
            n_layers: 4,
            layer: S4LayerConfig { d_model: 256, d_state: 64, ..Default::default() },
            prenorm: true,
            norm: NormKind::Layer,
            pooling: Pooling::None,
            ..Default::default()
        }
    }

    /// Model width H.
    pub fn d_model(&self) -> usize {
        self.layer.d_model
    }

    /// Whether the model has a norm after its last block (`prenorm` and `final_norm`).
    pub fn has_final_norm(&self) -> bool {
        self.prenorm && self.final_norm
    }

    /// Checks every field (and the layer configuration).
    ///
    /// # Errors
    /// Zero sizes, a vocabulary of 0, an invalid layer configuration, or dropout outside [0, 1).
    pub fn validate(&self) -> Result<()> {
        self.layer.validate()?;
        const MAX_LAYERS: usize = 4096;
        const MAX_IO: usize = 1 << 24;
        if self.n_layers == 0 || self.n_layers > MAX_LAYERS {
            return Err(Error::invalid("n_layers", self.n_layers, format!("an integer in 1..={MAX_LAYERS}")));
        }
        if self.d_output == 0 || self.d_output > MAX_IO {
            return Err(Error::invalid("d_output", self.d_output, format!("an integer in 1..={MAX_IO}")));
        }
        match self.vocab_size {
            Some(v) if v == 0 || v > MAX_IO => {
                return Err(Error::invalid("vocab_size", v, format!("an integer in 1..={MAX_IO}")))
            }
            None if self.d_input == 0 || self.d_input > MAX_IO => {
                return Err(Error::invalid("d_input", self.d_input, format!("an integer in 1..={MAX_IO}")))
            }
            _ => {}
        }
        if !(self.dropout.is_finite() && (0.0..1.0).contains(&self.dropout)) {
            return Err(Error::invalid("dropout", self.dropout, "a probability in [0, 1)"));
        }
        Ok(())
    }

    /// Checks the memory of this model's weights in precision `T` against the budget (per layer the
    /// output linear (channels·H, 2H) and Λ, B, P, C as complex (H, N/2); the encoder and decoder).
    ///
    /// # Errors
    /// [`Error::Budget`] naming the sizes.
    pub fn check_memory<T: Real>(&self) -> Result<u64> {
        let h = self.d_model();
        let lc = &self.layer;
        let per_layer = lc
            .channels
            .saturating_mul(2 * h * h)
            .saturating_add(h.saturating_mul(lc.d_state).saturating_mul(4 + lc.channels));
        let table = self.vocab_size.unwrap_or(self.d_input).saturating_add(self.d_output).saturating_mul(h);
        Estimate::new(format!(
            "S4 model weights (n_layers = {}, d_model = {h}, d_state = {}, vocab_size / d_input = {})",
            self.n_layers,
            lc.d_state,
            self.vocab_size.unwrap_or(self.d_input)
        ))
        .arrays::<T>(self.n_layers, &[per_layer])
        .array::<T>(&[table])
        .check()
    }

    /// Validates and draws an f32 model.
    ///
    /// # Errors
    /// See [`validate`](Self::validate).
    pub fn build(&self) -> Result<S4Model<f32>> {
        self.build_as()
    }

    /// Validates and draws a model in precision `T`: layers as [`S4LayerConfig::build_as`] (seed
    /// + i + 1), norms at identity, linear encoder/decoder uniform in ±1/√fan-in, embedding N(0, 1).
    ///
    /// # Errors
    /// See [`validate`](Self::validate).
    pub fn build_as<T: Real>(&self) -> Result<S4Model<T>> {
        self.validate()?;
        self.check_memory::<T>()?;
        let h = self.d_model();
        let mut rng = rand_pcg::Pcg64::seed_from_u64(self.seed);
        let mut uniform = |rows: usize, cols: usize, fan_in: usize| {
            let bound = 1.0 / (fan_in as f64).sqrt();
            let u = Uniform::new_inclusive(-bound, bound).expect("bound > 0");
            Array2::from_shape_fn((rows, cols), |_| T::of(u.sample(&mut rng)))
        };
        let encoder = match self.vocab_size {
            Some(v) => {
                let mut r = rand_pcg::Pcg64::seed_from_u64(self.seed ^ 0xE4B);
                Encoder::Embedding { table: Array2::from_shape_fn((v, h), |_| T::of(StandardNormal.sample(&mut r))) }
            }
            None => {
                let w = uniform(h, self.d_input, self.d_input);
                let b = uniform(1, h, self.d_input).row(0).to_owned();
                Encoder::Linear { w, b }
            }
        };
        let decoder_w = uniform(self.d_output, h, h);
        let decoder_b = uniform(1, self.d_output, h).row(0).to_owned();
        let blocks = (0..self.n_layers)
            .map(|i| {
                let cfg = S4LayerConfig { seed: self.seed.wrapping_add(i as u64 + 1), ..self.layer.clone() };
                Ok(Block { layer: cfg.build_as()?, norm: Norm::new(self.norm, h) })
            })
            .collect::<Result<Vec<_>>>()?;
        let final_norm = self.has_final_norm().then(|| Norm::new(self.norm, h));
        S4Model::from_parts(self.clone(), encoder, blocks, final_norm, decoder_w, decoder_b)
    }
}

/// The input encoder.
#[derive(Clone, Debug, PartialEq)]
pub enum Encoder<T> {
    /// x ↦ W x + b over the features: W (H, d_input), b (H,).
    Linear {
        /// (H, d_input).
        w: Array2<T>,
        /// (H,).
        b: Array1<T>,
    },
    /// token ↦ `table[token]`: table (vocab, H).
    Embedding {
        /// (vocab, H).
        table: Array2<T>,
    },
}

impl<T: Real> Encoder<T> {
    /// Checks a batch against the encoder and returns its (B, L): tokens (B, L) for an embedding,
    /// each id < vocab_size; features (B, d_input, L) for a linear encoder, all finite; B, L ≥ 1.
    ///
    /// # Errors
    /// Input of the other kind, an empty batch or sequence, a feature count other than d_input, a
    /// token id ≥ vocab_size or a non-finite feature (named by its index).
    pub fn check_input(&self, input: Input<T>) -> Result<(usize, usize)> {
        match (self, input) {
            (Encoder::Linear { w, .. }, Input::Features(x)) => {
                let (bs, f, l) = x.dim();
                if f != w.ncols() || bs == 0 || l == 0 {
                    return Err(Error::shape(
                        "input",
                        format!("(B, d_input, L) with d_input = {} and B, L >= 1", w.ncols()),
                        x.shape(),
                    ));
                }
                if let Some(((i, j, t), _)) = x.indexed_iter().find(|(_, v)| !v.is_finite()) {
                    return Err(Error::invalid(format!("input[{i}, {j}, {t}]"), "non-finite", "finite values"));
                }
                Ok((bs, l))
            }
            (Encoder::Embedding { table }, Input::Tokens(tok)) => {
                let (bs, l) = tok.dim();
                if bs == 0 || l == 0 {
                    return Err(Error::shape("tokens", "(B, L) with B, L >= 1", tok.shape()));
                }
                let v = table.nrows();
                if let Some(((i, t), &bad)) = tok.indexed_iter().find(|&(_, &k)| k as usize >= v) {
                    return Err(Error::invalid(
                        format!("tokens[{i}, {t}]"),
                        bad,
                        format!("a token id < vocab_size = {v}"),
                    ));
                }
                Ok((bs, l))
            }
            (Encoder::Linear { .. }, Input::Tokens(_)) => {
                Err(Error::invalid("input", "tokens", "features (the encoder is linear)"))
            }
            (Encoder::Embedding { .. }, Input::Features(_)) => {
                Err(Error::invalid("input", "features", "tokens (the encoder is an embedding)"))
            }
        }
    }
}

/// One residual block: an S4 layer and its normalization.
#[derive(Clone, Debug)]
pub struct Block<T> {
    /// The layer.
    pub layer: S4Layer<T>,
    /// Its norm (before the layer when prenorm, after the residual sum otherwise).
    pub norm: Norm<T>,
}

/// Model inputs: features (B, d_input, L) for a linear encoder, or tokens (B, L).
#[derive(Clone, Copy, Debug)]
pub enum Input<'a, T> {
    /// (B, d_input, L).
    Features(ArrayView3<'a, T>),
    /// (B, L).
    Tokens(ArrayView2<'a, u32>),
}

/// One step's inputs: features (B, d_input) or tokens (B,).
#[derive(Clone, Copy, Debug)]
pub enum StepInput<'a, T> {
    /// (B, d_input).
    Features(ArrayView2<'a, T>),
    /// (B,).
    Tokens(&'a [u32]),
}

/// A deep S4 model in precision `T`.
#[derive(Clone, Debug)]
pub struct S4Model<T> {
    config: S4ModelConfig,
    pub(crate) encoder: Encoder<T>,
    pub(crate) blocks: Vec<Block<T>>,
    pub(crate) final_norm: Option<Norm<T>>,
    pub(crate) decoder_w: Array2<T>,
    pub(crate) decoder_b: Array1<T>,
}

/// The recurrent state of a whole model: one [`State`] per layer. Clone to snapshot; `clone_from`
/// copies into the existing buffers.
#[derive(Debug, PartialEq)]
pub struct ModelState<T> {
    /// Per layer, (B, H, N/2).
    pub layers: Vec<State<T>>,
}

impl<T: Clone> Clone for ModelState<T> {
    fn clone(&self) -> Self {
        ModelState { layers: self.layers.clone() }
    }
    fn clone_from(&mut self, source: &Self) {
        self.layers.clone_from(&source.layers);
    }
}

impl<T: Real> S4Model<T> {
    /// Assembles a model, checking every shape against the configuration.
    ///
    /// # Errors
    /// A mis-shaped tensor (named), a layer whose config differs from the model's, non-finite
    /// weights.
    pub fn from_parts(
        config: S4ModelConfig,
        encoder: Encoder<T>,
        blocks: Vec<Block<T>>,
        final_norm: Option<Norm<T>>,
        decoder_w: Array2<T>,
        decoder_b: Array1<T>,
    ) -> Result<Self> {
        config.validate()?;
        let h = config.d_model();
        match (&encoder, config.vocab_size) {
            (Encoder::Embedding { table }, Some(v)) => {
                if table.dim() != (v, h) {
                    return Err(Error::shape("encoder.weight", format!("[{v}, {h}]"), table.shape()));
                }
            }
            (Encoder::Linear { w, b }, None) => {
                if w.dim() != (h, config.d_input) {
                    return Err(Error::shape("encoder.weight", format!("[{h}, {}]", config.d_input), w.shape()));
                }
                if b.len() != h {
                    return Err(Error::shape("encoder.bias", format!("[{h}]"), b.shape()));
                }
            }
            _ => return Err(Error::invalid("encoder", "mismatched kind", "an embedding iff vocab_size is set")),
        }
        if blocks.len() != config.n_layers {
            return Err(Error::invalid("number of blocks", blocks.len(), format!("n_layers = {}", config.n_layers)));
        }
        for (i, blk) in blocks.iter().enumerate() {
            let lc = blk.layer.config();
            if (S4LayerConfig { seed: config.layer.seed, ..lc.clone() }) != config.layer {
                return Err(Error::invalid(
                    format!("layers.{i}"),
                    "a layer whose configuration differs from the model's",
                    "every block built from S4ModelConfig::layer (seeds aside)",
                ));
            }
            blk.norm.validate(&format!("layers.{i}.norm"), h)?;
            if blk.norm.kind != config.norm {
                return Err(Error::invalid(
                    format!("layers.{i}.norm"),
                    format!("{:?}", blk.norm.kind),
                    format!("{:?}", config.norm),
                ));
            }
        }
        match (&final_norm, config.has_final_norm()) {
            (Some(n), true) => n.validate("norm", h)?,
            (None, false) => {}
            _ => {
                return Err(Error::invalid(
                    "norm",
                    "present/absent",
                    "a final norm exactly when prenorm and final_norm",
                ));
            }
        }
        if decoder_w.dim() != (config.d_output, h) {
            return Err(Error::shape("decoder.weight", format!("[{}, {h}]", config.d_output), decoder_w.shape()));
        }
        if decoder_b.len() != config.d_output {
            return Err(Error::shape("decoder.bias", format!("[{}]", config.d_output), decoder_b.shape()));
        }
        Ok(S4Model { config, encoder, blocks, final_norm, decoder_w, decoder_b })
    }

    /// The configuration.
    pub fn config(&self) -> &S4ModelConfig {
        &self.config
    }

    /// The encoder.
    pub fn encoder(&self) -> &Encoder<T> {
        &self.encoder
    }

    /// The residual blocks.
    pub fn blocks(&self) -> &[Block<T>] {
        &self.blocks
    }

    /// The final norm (prenorm models).
    pub fn final_norm(&self) -> Option<&Norm<T>> {
        self.final_norm.as_ref()
    }

    /// The decoder head (W (d_output, H), b (d_output,)).
    pub fn decoder(&self) -> (&Array2<T>, &Array1<T>) {
        (&self.decoder_w, &self.decoder_b)
    }

    /// Encodes the input into (B, H, L).
    pub(crate) fn encode(&self, input: Input<T>) -> Result<Array3<T>> {
        self.encoder.check_input(input)?;
        let h = self.config.d_model();
        Ok(match (&self.encoder, input) {
            (Encoder::Linear { w, b }, Input::Features(x)) => crate::nn::linear::linear_features(x, w.view(), b.view()),
            (Encoder::Embedding { table }, Input::Tokens(tok)) => {
                let (bs, l) = tok.dim();
                Array3::from_shape_fn((bs, h, l), |(i, j, t)| table[[tok[[i, t]] as usize, j]])
            }
            _ => unreachable!("check_input matched the input to the encoder"),
        })
    }

    /// Convolutional mode over whole sequences.
    ///
    /// Returns (B, d_output, L) without pooling, (B, d_output, 1) with mean or last pooling (over
    /// the valid positions when `lengths` are given). With `initial` the layers start from that
    /// state; with `return_state` the final state of every layer is returned (causal models).
    ///
    /// # Errors
    /// Bad shapes, tokens out of the vocabulary, non-finite input, lengths > L, state options on a
    /// bidirectional model.
    pub fn forward_with_state(
        &self,
        input: Input<T>,
        lengths: Option<&[usize]>,
        initial: Option<&ModelState<T>>,
        return_state: bool,
    ) -> Result<(Array3<T>, Option<ModelState<T>>)> {
        self.forward_impl(input, lengths, initial, return_state, None)
    }

    /// Training-mode forward: as [`forward`](Self::forward), with the layers' dropout and the
    /// residual dropout active, drawn from `seed` (BatchNorm still uses its running statistics).
    ///
    /// # Errors
    /// As [`forward_with_state`](Self::forward_with_state).
    pub fn forward_train(&self, input: Input<T>, lengths: Option<&[usize]>, seed: u64) -> Result<Array3<T>> {
        Ok(self.forward_impl(input, lengths, None, false, Some(seed))?.0)
    }

    fn forward_impl(
        &self,
        input: Input<T>,
        lengths: Option<&[usize]>,
        initial: Option<&ModelState<T>>,
        return_state: bool,
        dropout_seed: Option<u64>,
    ) -> Result<(Array3<T>, Option<ModelState<T>>)> {
        let mut x = self.encode(input)?;
        check_activation(&x, "the encoder's output x")?;
        let (batch, _, len) = x.dim();
        if let Some(init) = initial
            && init.layers.len() != self.blocks.len()
        {
            return Err(Error::invalid(
                "state",
                format!("{} layers", init.layers.len()),
                format!("{} layers", self.blocks.len()),
            ));
        }
        let mut states = Vec::new();
        for (i, blk) in self.blocks.iter().enumerate() {
            let layer_seed = dropout_seed.map(|s| s.wrapping_add(2 * i as u64 + 1));
            let opts = ForwardOptions {
                lengths: lengths.map(<[usize]>::to_vec),
                initial_state: initial.map(|s| s.layers[i].clone()),
                return_state,
                dropout_seed: layer_seed,
            };
            let residual_dropout = |mut y: Array3<T>| {
                if let (Some(seed), true) = (dropout_seed, self.config.dropout > 0.0) {
                    for (b, yb) in y.outer_iter_mut().enumerate() {
                        crate::layer::dropout_in_place(yb, self.config.dropout, seed.wrapping_add(2 * i as u64 + 2), b);
                    }
                }
                y
            };
            let in_layer = |e: Error| match e {
                Error::Numerical { op, detail } => Error::Numerical { op: format!("{op}, layer {i}"), detail },
                other => other,
            };
            if self.config.prenorm {
                let z = blk.norm.forward(x.view());
                check_activation(&z, &format!("layer {i}'s normalized input z"))?;
                let out = blk.layer.forward(z.view(), &opts).map_err(in_layer)?;
                x += &residual_dropout(out.y);
                states.extend(out.state);
            } else {
                let out = blk.layer.forward(x.view(), &opts).map_err(in_layer)?;
                x = blk.norm.forward((x + &residual_dropout(out.y)).view());
                states.extend(out.state);
            }
            check_activation(&x, &format!("layer {i}'s residual output x"))?;
        }
        if let Some(n) = &self.final_norm {
            x = n.forward(x.view());
        }
        let pooled = match self.config.pooling {
            Pooling::None => x,
            Pooling::Mean => Array3::from_shape_fn((batch, x.shape()[1], 1), |(b, j, _)| {
                let n = lengths.map_or(len, |l| l[b]).max(1);
                x.slice(s![b, j, ..n]).iter().fold(T::zero(), |a, &v| a + v) / T::of(n as f64)
            }),
            Pooling::Last => Array3::from_shape_fn((batch, x.shape()[1], 1), |(b, j, _)| {
                let n = lengths.map_or(len, |l| l[b]).max(1);
                x[[b, j, n - 1]]
            }),
        };
        let mut y = crate::nn::linear::linear_features(pooled.view(), self.decoder_w.view(), self.decoder_b.view());
        if let (Some(lengths), Pooling::None) = (lengths, self.config.pooling) {
            for (b, &n) in lengths.iter().enumerate() {
                y.slice_mut(s![b, .., n..]).fill(T::zero());
            }
        }
        check_activation(&y, "the decoder's output y")?;
        let state = return_state.then_some(ModelState { layers: states });
        Ok((y, state))
    }

    /// Ties every DPLR layer's C to kernel length `len` (C̃ = C(I − Ā^L), or doubling an existing
    /// C̃ until it covers `len`), as the official first forward does. Training needs this once, for
    /// the longest training sequence, so that C̃ is the trained parameter. No-op for S4D layers.
    ///
    /// # Errors
    /// `len == 0`.
    pub fn set_kernel_length(&mut self, len: usize) -> Result<()> {
        for blk in &mut self.blocks {
            blk.layer.set_kernel_length(len)?;
        }
        Ok(())
    }

    /// Convolutional mode (see [`forward_with_state`](Self::forward_with_state)).
    ///
    /// # Errors
    /// As [`forward_with_state`](Self::forward_with_state).
    ///
    /// # Example
    /// ```
    /// use ndarray::Array3;
    /// use s4::model::{Input, S4ModelConfig};
    /// let cfg = S4ModelConfig { n_layers: 2, ..Default::default() };
    /// let model = cfg.build()?;
    /// let x = Array3::<f32>::zeros((3, 1, 100)); // (B, d_input, L)
    /// let logits = model.forward(Input::Features(x.view()), None)?;
    /// assert_eq!(logits.dim(), (3, 10, 1)); // mean pooling
    /// # Ok::<(), s4::Error>(())
    /// ```
    pub fn forward(&self, input: Input<T>, lengths: Option<&[usize]>) -> Result<Array3<T>> {
        Ok(self.forward_with_state(input, lengths, None, false)?.0)
    }

    /// The model with every weight except the SSM dynamics (Λ, P, B, Δ) rounded to a 16-bit
    /// format (see [`S4Layer::with_half_weights`]): encoder, C, D, output linears, norms, decoder.
    ///
    /// # Errors
    /// A weight that overflows the format (|x| > 65504 in f16).
    pub fn with_half_weights(&self, p: crate::scalar::HalfPrecision) -> Result<S4Model<T>> {
        let r = |x: &T| T::of(p.round(x.as_f64() as f32) as f64);
        let encoder = match &self.encoder {
            Encoder::Linear { w, b } => Encoder::Linear { w: w.map(r), b: b.map(r) },
            Encoder::Embedding { table } => Encoder::Embedding { table: table.map(r) },
        };
        let rn = |n: &Norm<T>| Norm {
            kind: n.kind,
            weight: n.weight.map(r),
            bias: n.bias.map(r),
            running_mean: n.running_mean.map(r),
            running_var: n.running_var.map(r),
        };
        let blocks = self
            .blocks
            .iter()
            .map(|b| Ok(Block { layer: b.layer.with_half_weights(p)?, norm: rn(&b.norm) }))
            .collect::<Result<Vec<_>>>()?;
        S4Model::from_parts(
            self.config.clone(),
            encoder,
            blocks,
            self.final_norm.as_ref().map(rn),
            self.decoder_w.map(r),
            self.decoder_b.map(r),
        )
    }

    /// The model set up for recurrent mode (each layer discretized once).
    ///
    /// # Errors
    /// A bidirectional model, or a layer whose C̃ cannot be inverted.
    pub fn recurrent(&self) -> Result<RecurrentModel<'_, T>> {
        let layers = self.blocks.iter().map(|b| b.layer.recurrent()).collect::<Result<Vec<_>>>()?;
        let decoder = PackedMatrix::with_precision(self.decoder_w.t(), None);
        Ok(RecurrentModel { model: std::borrow::Cow::Borrowed(self), layers, decoder })
    }

    /// The model set up for recurrent mode, owning its weights: for holders that keep the
    /// recurrent form across calls (a binding's model object, a server) without a borrow.
    ///
    /// # Errors
    /// As [`recurrent`](Self::recurrent).
    pub fn into_recurrent(self) -> Result<RecurrentModel<'static, T>> {
        let layers = self.blocks.iter().map(|b| b.layer.recurrent()).collect::<Result<Vec<_>>>()?;
        let decoder = PackedMatrix::with_precision(self.decoder_w.t(), None);
        Ok(RecurrentModel { model: std::borrow::Cow::Owned(self), layers, decoder })
    }

    /// Streaming LM, step 1: runs a prompt (B, L) in convolutional mode and returns the logits of
    /// its last position (B, vocab) and the recurrent state to continue from.
    ///
    /// # Errors
    /// Not a causal token model without pooling, or bad tokens.
    pub fn prefill(&self, tokens: ArrayView2<u32>) -> Result<(Array2<T>, ModelState<T>)> {
        if self.config.pooling != Pooling::None || self.config.vocab_size.is_none() {
            return Err(Error::invalid("model", "a classifier", "a token model without pooling (a language model)"));
        }
        let (y, state) = self.forward_with_state(Input::Tokens(tokens), None, None, true)?;
        let last = y.index_axis(Axis(2), y.shape()[2] - 1).to_owned();
        Ok((last, state.expect("return_state was set")))
    }
}

/// The intermediate values of [`RecurrentModel::step_with`]: the residual stream, a layer's
/// normalized input and output, the layers' own buffers and the outputs. Empty when created;
/// the first step sizes it.
#[derive(Clone, Debug, Default)]
pub struct StepWorkspace<T> {
    x: Vec<T>,
    z: Vec<T>,
    y: Vec<T>,
    layer: crate::layer::StepBuffers<T>,
    out: Vec<T>,
}

/// A model in recurrent mode: borrows (or, from [`S4Model::into_recurrent`], owns) the weights,
/// owns the discretized layers and the decoder packed for few-row products (a step's one row
/// through a general gemm spent more time packing the decoder than multiplying).
#[derive(Clone, Debug)]
pub struct RecurrentModel<'a, T: Clone> {
    model: std::borrow::Cow<'a, S4Model<T>>,
    layers: Vec<Recurrent<T>>,
    decoder: PackedMatrix<T>,
}

impl<T: Real> RecurrentModel<'_, T> {
    /// The model it steps.
    pub fn model(&self) -> &S4Model<T> {
        &self.model
    }

    /// A zero state for `batch` sequences.
    pub fn zero_state(&self, batch: usize) -> ModelState<T> {
        ModelState { layers: self.layers.iter().map(|l| l.zero_state(batch)).collect() }
    }

    /// One step: advances `state` by one input per sequence and returns the outputs (B, d_output)
    /// of this position (the model must not pool).
    ///
    /// # Errors
    /// Bad shapes or tokens, a pooling model, or a state of another batch size or depth.
    pub fn step(&self, state: &mut ModelState<T>, input: StepInput<T>) -> Result<Array2<T>> {
        self.advance(None, state, input)
    }

    /// [`step`](Self::step) from the state `from` into `to` (of the same shapes, whatever it
    /// held), leaving `from` as it was: a snapshot of the state before the step without a copy
    /// ([`crate::speculative::S4Session`] keeps its rollback snapshots so).
    ///
    /// # Errors
    /// As [`step`](Self::step), for either state.
    pub fn step_into(&self, from: &ModelState<T>, to: &mut ModelState<T>, input: StepInput<T>) -> Result<Array2<T>> {
        self.advance(Some(from), to, input)
    }

    /// [`step`](Self::step) with the intermediate values in `workspace`, which a caller that
    /// steps many times keeps: the step then allocates nothing (a draft's step, H = 96, 4 layers:
    /// 4.7 µs against 5.7 µs with fresh buffers). Returns the outputs (B, d_output), a view into
    /// the workspace; the state advances in place (`from` = `None`) or from `from` into `state`
    /// (see [`step_into`](Self::step_into)).
    ///
    /// ```
    /// use s4::model::{S4ModelConfig, StepInput, StepWorkspace};
    /// let model = S4ModelConfig::causal_lm(32).build()?;
    /// let rec = model.recurrent()?;
    /// let mut workspace = StepWorkspace::default();
    /// // one workspace for every step, whatever the batch: the same outputs as fresh buffers
    /// for batch in [1usize, 3, 1] {
    ///     let (mut a, mut b) = (rec.zero_state(batch), rec.zero_state(batch));
    ///     for t in 0..4u32 {
    ///         let tokens: Vec<u32> = (0..batch as u32).map(|i| (7 * t + i) % 32).collect();
    ///         let fresh = rec.step(&mut a, StepInput::Tokens(&tokens))?;
    ///         let kept = rec.step_with(None, &mut b, StepInput::Tokens(&tokens), &mut workspace)?;
    ///         assert_eq!(fresh, kept);
    ///     }
    ///     assert_eq!(a, b);
    /// }
    /// # Ok::<(), s4::Error>(())
    /// ```
    ///
    /// # Errors
    /// As [`step`](Self::step).
    pub fn step_with<'w>(
        &self,
        from: Option<&ModelState<T>>,
        state: &mut ModelState<T>,
        input: StepInput<T>,
        workspace: &'w mut StepWorkspace<T>,
    ) -> Result<ArrayView2<'w, T>> {
        let m: &S4Model<T> = &self.model;
        if m.config.pooling != Pooling::None {
            return Err(Error::invalid("pooling", format!("{:?}", m.config.pooling), "none for recurrent mode"));
        }
        for s in from.into_iter().chain(std::iter::once(&*state)) {
            if s.layers.len() != self.layers.len() {
                return Err(Error::invalid(
                    "state",
                    format!("{} layers", s.layers.len()),
                    format!("{} layers", self.layers.len()),
                ));
            }
        }
        let h = m.config.d_model();
        let StepWorkspace { x, z, y, layer, out } = workspace;
        let batch = match (&m.encoder, input) {
            (Encoder::Linear { w, b }, StepInput::Features(u)) => {
                if u.ncols() != w.ncols() {
                    return Err(Error::shape("input", format!("(B, d_input) with d_input = {}", w.ncols()), u.shape()));
                }
                let e = u.dot(&w.t()) + b;
                x.clear();
                x.extend(e.iter().copied());
                u.nrows()
            }
            (Encoder::Embedding { table }, StepInput::Tokens(tok)) => {
                let v = table.nrows();
                if let Some((i, &bad)) = tok.iter().enumerate().find(|&(_, &k)| k as usize >= v) {
                    return Err(Error::invalid(format!("tokens[{i}]"), bad, format!("a token id < vocab_size = {v}")));
                }
                x.clear();
                for &t in tok {
                    x.extend(table.row(t as usize).iter().copied());
                }
                tok.len()
            }
            _ => {
                return Err(Error::invalid(
                    "input",
                    "of the other kind",
                    "features for a linear encoder, tokens for an embedding",
                ))
            }
        };
        if batch == 0 {
            return Err(Error::invalid("batch", 0, "at least one sequence"));
        }
        z.clear();
        z.resize(batch * h, T::zero());
        y.clear();
        y.resize(batch * h, T::zero());
        for (l, ((blk, rec), st)) in m.blocks.iter().zip(&self.layers).zip(state.layers.iter_mut()).enumerate() {
            let from = from.map(|f| &f.layers[l]);
            // x + layer(norm(x)) before the norm, norm(x + layer(x)) after it
            if m.config.prenorm {
                blk.norm.forward_rows(x, z);
                rec.advance_rows(from, st, z, y, layer)?;
            } else {
                rec.advance_rows(from, st, x, y, layer)?;
            }
            x.iter_mut().zip(y.iter()).for_each(|(a, b)| *a += *b);
            if !m.config.prenorm {
                blk.norm.forward_rows(x, z);
                std::mem::swap(x, z);
            }
        }
        if let Some(n) = &m.final_norm {
            n.forward_rows(x, z);
            std::mem::swap(x, z);
        }
        let o = m.decoder_b.len();
        out.clear();
        out.resize(batch * o, T::zero());
        packed_linear_into(x, &self.decoder, m.decoder_b.as_slice().expect("a bias vector"), out, true);
        Ok(ArrayView2::from_shape((batch, o), &out[..]).expect("B rows of d_output values"))
    }

    /// [`step`](Self::step) in place (`from` = `None`) or from `from` into `to`.
    fn advance(&self, from: Option<&ModelState<T>>, to: &mut ModelState<T>, input: StepInput<T>) -> Result<Array2<T>> {
        Ok(self.step_with(from, to, input, &mut StepWorkspace::default())?.to_owned())
    }

    /// Streaming LM, step 2: feeds one token per sequence and returns the next-token logits
    /// (B, vocab).
    ///
    /// # Errors
    /// As [`step`](Self::step).
    pub fn step_tokens(&self, state: &mut ModelState<T>, tokens: &[u32]) -> Result<Array2<T>> {
        self.step(state, StepInput::Tokens(tokens))
    }

    /// [`step_tokens`](Self::step_tokens) from `from` into `to` (see [`step_into`](Self::step_into)).
    ///
    /// # Errors
    /// As [`step_into`](Self::step_into).
    pub fn step_tokens_into(&self, from: &ModelState<T>, to: &mut ModelState<T>, tokens: &[u32]) -> Result<Array2<T>> {
        self.step_into(from, to, StepInput::Tokens(tokens))
    }
}

/// An error naming the first non-finite entry of an activation (B, features, L) and its input row.
fn check_activation<T: Real>(x: &Array3<T>, what: &str) -> Result<()> {
    match crate::nn::simd::first_non_finite(&x.view()) {
        None => Ok(()),
        Some((b, j, t)) => Err(Error::numerical(
            "S4 model forward (conv mode)",
            format!("{what}[{b}, {j}, {t}] is not finite (input row {b}): the input or the weights are too large for the precision"),
        )),
    }
}

//! Whole models of the official PyTorch code, in and out: the `S4Model` of `example.py`
//! (state-spaces/s4 at e757cef): a Linear encoder, `n_layers` residual blocks of the minimal `S4D`
//! (`models/s4/s4d.py`) with a LayerNorm each (before the layer with `prenorm`, after the residual
//! sum otherwise; no norm after the last block), mean pooling over the length, a Linear decoder.
//!
//! Its state dict: `encoder.{weight,bias}` (d_model, d_input), `s4_layers.{i}.` + the S4D names
//! (`D`, `kernel.{C,log_dt,log_A_real,A_imag}`, `output_linear.0.{weight,bias}`; see
//! [`crate::layer::official`]), `norms.{i}.{weight,bias}`, `decoder.{weight,bias}` (d_output,
//! d_model). Its constructor's keyword arguments are [`ExampleS4Model`]. The model takes its input
//! as (B, L, d_input) and returns (B, d_output); here the same model takes (B, d_input, L) and
//! returns (B, d_output, 1).
//!
//! [`import_example`] reads such a state dict (safetensors; `tools/convert_official.py` converts
//! a `.pt` file) into an [`S4Model`]; [`export_example`] writes an [`S4Model`] back under the same
//! names, with the keyword arguments that rebuild it, so that `S4Model(**kwargs)` loads it with
//! `load_state_dict(strict=True)`. A model with a part `example.py` has no equivalent for (a DPLR
//! layer, BatchNorm, a final norm, token inputs, …) is refused by name.
//!
//! # Example
//! ```
//! use s4::model::official::{export_example, import_example, ExampleS4Model};
//! let kwargs = ExampleS4Model { d_input: 3, d_output: 5, d_model: 8, n_layers: 2, d_state: 4, ..Default::default() };
//! let model = kwargs.model_config().build()?; // a fresh model of that shape
//! let (bytes, back) = export_example(&model)?;
//! assert_eq!(back, kwargs);
//! let again = import_example::<f32>(&bytes, std::path::Path::new("in-memory"), &back)?;
//! assert_eq!(again.decoder(), model.decoder());
//! # Ok::<(), s4::Error>(())
//! ```

use std::path::Path;

use ndarray::Array1;
use safetensors::SafeTensors;

use super::{Block, Encoder, Norm, NormKind, Pooling, S4Model, S4ModelConfig};
use crate::error::{Error, Result};
use crate::io::tensors::TensorWriter;
use crate::layer::official::{import_block, read_real, OfficialConfig, OfficialModule};
use crate::layer::{DtTransform, RealTransform, S4Layer};
use crate::scalar::Real;
use crate::ssm::KernelKind;

/// Reads named float32 tensors of a state dict (checked by shape and finiteness) and remembers the
/// names it read, so that the tensors nobody read can be reported.
struct StateDict<'a> {
    st: SafeTensors<'a>,
    path: &'a Path,
    read: Vec<String>,
}

impl<'a> StateDict<'a> {
    fn new(bytes: &'a [u8], path: &'a Path) -> Result<Self> {
        let st = SafeTensors::deserialize(bytes)
            .map_err(|e| Error::format(path, format!("not a valid safetensors file: {e}")))?;
        Ok(StateDict { st, path, read: Vec::new() })
    }

    fn real<T: Real, D: ndarray::Dimension>(&mut self, name: &str, shape: &[usize]) -> Result<ndarray::Array<T, D>> {
        self.read.push(name.to_string());
        let a = read_real(&self.st, self.path, name, shape)?.mapv(|x| T::of(x as f64));
        Ok(a.into_dimensionality().expect("the shape was checked"))
    }

    fn block<T: Real>(&mut self, config: &OfficialConfig, prefix: &str) -> Result<S4Layer<T>> {
        let (layer, names) = import_block(&self.st, self.path, config, prefix)?;
        self.read.extend(names);
        Ok(layer)
    }

    /// An error naming the tensors nobody read (`ignored` ones aside).
    fn finish(&self, ignored: impl Fn(&str) -> bool) -> Result<()> {
        let unexpected: Vec<&str> =
            self.st.names().into_iter().filter(|n| !self.read.iter().any(|r| r == *n) && !ignored(n)).collect();
        if unexpected.is_empty() {
            Ok(())
        } else {
            Err(Error::format(self.path, format!("unexpected tensors: {}", unexpected.join(", "))))
        }
    }
}

/// The keyword arguments of `example.py`'s `S4Model(d_input, d_output=10, d_model=256,
/// n_layers=4, dropout=0.2, prenorm=False)`, plus the `d_state` of its S4D layers (64 there;
/// `S4D(d_model, d_state=...)` to change it). `lr` (the SSM parameters' learning rate) is
/// accepted and ignored; any other key is an error.
#[derive(Clone, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ExampleS4Model {
    /// Input features per position.
    pub d_input: usize,
    /// Outputs (classes).
    pub d_output: usize,
    /// Model width H.
    pub d_model: usize,
    /// Residual blocks.
    pub n_layers: usize,
    /// Dropout inside each S4D and on each block's output.
    pub dropout: f64,
    /// LayerNorm before each layer (else after each residual sum).
    pub prenorm: bool,
    /// State size N of the S4D layers.
    pub d_state: usize,
    /// Learning rate of the SSM parameters (`min(0.001, args.lr)` in `example.py`): training only,
    /// not part of the model.
    #[serde(skip_serializing)]
    pub lr: Option<f64>,
}

impl Default for ExampleS4Model {
    fn default() -> Self {
        ExampleS4Model {
            d_input: 1,
            d_output: 10,
            d_model: 256,
            n_layers: 4,
            dropout: 0.2,
            prenorm: false,
            d_state: 64,
            lr: None,
        }
    }
}

impl ExampleS4Model {
    /// Reads the keyword arguments from JSON: the kwargs object alone, or
    /// `{"module": "S4Model", "kwargs": {...}}`.
    ///
    /// # Errors
    /// Not an object, another module, an unknown key or a value of the wrong type.
    pub fn from_json(v: &serde_json::Value) -> Result<Self> {
        let kwargs = match v.get("kwargs") {
            Some(k) => {
                match v.get("module").and_then(|m| m.as_str()) {
                    Some("S4Model") | None => {}
                    Some(m) => return Err(Error::invalid("module", m, "S4Model (example.py)")),
                }
                k
            }
            None => v,
        };
        let mut kwargs = kwargs.clone();
        if let Some(obj) = kwargs.as_object_mut() {
            obj.remove("module");
        }
        serde_json::from_value(kwargs)
            .map_err(|e| Error::invalid("example.py S4Model keyword arguments", e.to_string(), "its constructor's"))
    }

    /// The model configuration of the same network (S4D layers: diagonal, ZOH, B = 1, one SSM per
    /// channel; LayerNorm; no final norm; mean pooling).
    pub fn model_config(&self) -> S4ModelConfig {
        S4ModelConfig {
            d_input: self.d_input,
            vocab_size: None,
            d_output: self.d_output,
            n_layers: self.n_layers,
            layer: self.layer_kwargs().layer_config().expect("the S4D options are always supported"),
            prenorm: self.prenorm,
            final_norm: false,
            norm: NormKind::Layer,
            dropout: self.dropout,
            pooling: Pooling::Mean,
            seed: 0,
        }
    }

    fn layer_kwargs(&self) -> OfficialConfig {
        let kwargs = serde_json::json!({"d_model": self.d_model, "d_state": self.d_state, "dropout": self.dropout});
        OfficialConfig { module: OfficialModule::S4D, kwargs: kwargs.as_object().expect("an object").clone() }
    }

    /// The keyword arguments of a model, or an error naming the first part `example.py`'s
    /// `S4Model` has no equivalent for.
    ///
    /// # Errors
    /// See the [module docs](self).
    pub fn from_model(cfg: &S4ModelConfig) -> Result<Self> {
        let none = |what: &str, value: String| {
            Err(Error::invalid(
                what,
                value,
                "what example.py's S4Model has (S4D layers, LayerNorm, no final norm, mean pooling, a linear encoder)",
            ))
        };
        let l = &cfg.layer;
        if cfg.vocab_size.is_some() {
            return none("encoder", "a token embedding".into());
        }
        if cfg.norm != NormKind::Layer {
            return none("norm", format!("{:?}", cfg.norm));
        }
        if cfg.has_final_norm() {
            return none("final_norm", "true (a norm after the last block)".into());
        }
        if cfg.pooling != Pooling::Mean {
            return none("pooling", format!("{:?}", cfg.pooling));
        }
        if l.kernel != KernelKind::Diag {
            return none("layer kernel", format!("{} (only S4D layers)", l.kernel));
        }
        if l.discretization() != crate::discretize::Discretization::Zoh {
            return none("layer disc", format!("{:?} (S4D uses ZOH)", l.discretization()));
        }
        if l.dt_transform != DtTransform::Exp || l.real_transform != RealTransform::Exp {
            return none("layer dt_transform/real_transform", format!("{:?}/{:?}", l.dt_transform, l.real_transform));
        }
        if l.n_ssm() != l.d_model || l.channels != 1 || l.bidirectional {
            return none(
                "layer n_ssm/channels/bidirectional",
                format!("{}/{}/{} (S4D: one SSM per channel, 1 head, causal)", l.n_ssm(), l.channels, l.bidirectional),
            );
        }
        if l.dropout != cfg.dropout {
            return none(
                "dropout",
                format!("{} in the layers, {} on the residuals (one value there)", l.dropout, cfg.dropout),
            );
        }
        Ok(ExampleS4Model {
            d_input: cfg.d_input,
            d_output: cfg.d_output,
            d_model: l.d_model,
            n_layers: cfg.n_layers,
            dropout: cfg.dropout,
            prenorm: cfg.prenorm,
            d_state: l.d_state,
            lr: None,
        })
    }
}

/// Imports the state dict of `example.py`'s `S4Model` built with `kwargs` (safetensors bytes;
/// `path` names them in errors). Every tensor is checked by name, shape and finiteness, and a
/// tensor nobody reads is an error.
///
/// # Errors
/// A missing, mis-shaped or unexpected tensor (named), or invalid keyword arguments.
pub fn import_example<T: Real>(bytes: &[u8], path: &Path, kwargs: &ExampleS4Model) -> Result<S4Model<T>> {
    let mut sd = StateDict::new(bytes, path)?;
    let cfg = kwargs.model_config();
    cfg.validate()?;
    let (h, d_in, d_out) = (cfg.d_model(), cfg.d_input, cfg.d_output);
    let encoder = Encoder::Linear { w: sd.real("encoder.weight", &[h, d_in])?, b: sd.real("encoder.bias", &[h])? };
    let layer_kwargs = kwargs.layer_kwargs();
    let mut blocks = Vec::with_capacity(cfg.n_layers);
    for i in 0..cfg.n_layers {
        let mut norm = Norm::new(NormKind::Layer, h);
        norm.weight = sd.real(&format!("norms.{i}.weight"), &[h])?;
        norm.bias = sd.real(&format!("norms.{i}.bias"), &[h])?;
        let layer = sd.block(&layer_kwargs, &format!("s4_layers.{i}."))?;
        blocks.push(Block { layer, norm });
    }
    let decoder_w = sd.real("decoder.weight", &[d_out, h])?;
    let decoder_b: Array1<T> = sd.real("decoder.bias", &[d_out])?;
    sd.finish(|_| false)?;
    S4Model::from_parts(cfg, encoder, blocks, None, decoder_w, decoder_b)
}

/// Reads `model.safetensors` and the keyword-argument JSON from disk and imports them.
///
/// # Errors
/// Unreadable files, invalid JSON, and everything [`import_example`] reports.
pub fn import_example_files<T: Real>(model: &Path, config: &Path) -> Result<S4Model<T>> {
    let kwargs = ExampleS4Model::from_json(&crate::io::read_json(config)?)?;
    let bytes = std::fs::read(model).map_err(|e| Error::io(model, e))?;
    import_example(&bytes, model, &kwargs)
}

/// The state dict of `model` under `example.py`'s names (safetensors bytes, float32) and the
/// keyword arguments that rebuild it.
///
/// # Errors
/// A model with a part `example.py`'s `S4Model` has no equivalent for (named), or S4D weights
/// outside the minimal S4D's parameterization (B ≠ 1, C̃ tied to a length).
pub fn export_example<T: Real>(model: &S4Model<T>) -> Result<(Vec<u8>, ExampleS4Model)> {
    let kwargs = ExampleS4Model::from_model(model.config())?;
    let mut out = TensorWriter::new();
    let Encoder::Linear { w, b } = model.encoder() else {
        unreachable!("from_model refused an embedding");
    };
    out.real("encoder.weight", w.shape(), w.iter());
    out.real("encoder.bias", b.shape(), b.iter());
    for (i, blk) in model.blocks().iter().enumerate() {
        let p = format!("s4_layers.{i}.");
        let lw = blk.layer.weights();
        let (h, m) = (kwargs.d_model, kwargs.d_state / 2);
        if lw.b.iter().any(|b| *b != num_complex::Complex::new(T::one(), T::zero())) {
            return Err(Error::invalid(
                format!("layers.{i} B"),
                "a trained or non-unit B",
                "B = 1 (the minimal S4D has no B; train with the S4D layer of the training repository instead)",
            ));
        }
        if lw.l_kernel != 0 {
            return Err(Error::invalid(format!("layers.{i} l_kernel"), lw.l_kernel, "0 (S4D's C is the plain C)"));
        }
        out.real(&format!("{p}D"), &[h], lw.d.iter());
        out.complex(&format!("{p}kernel.C"), &[h, m], lw.c.iter());
        out.real(&format!("{p}kernel.log_dt"), &[h], lw.inv_dt.iter());
        out.real(&format!("{p}kernel.log_A_real"), &[h, m], lw.a_real.iter());
        let a_imag: Vec<T> = lw.a_imag.iter().map(|x| -*x).collect();
        out.real(&format!("{p}kernel.A_imag"), &[h, m], a_imag.iter());
        out.real(&format!("{p}output_linear.0.weight"), &[2 * h, h, 1], lw.w.iter());
        out.real(&format!("{p}output_linear.0.bias"), &[2 * h], lw.bias.iter());
        out.real(&format!("norms.{i}.weight"), &[h], blk.norm.weight.iter());
        out.real(&format!("norms.{i}.bias"), &[h], blk.norm.bias.iter());
    }
    let (w, b) = model.decoder();
    out.real("decoder.weight", w.shape(), w.iter());
    out.real("decoder.bias", b.shape(), b.iter());
    out.to_f32();
    Ok((out.serialize(Path::new("the example.py S4Model state dict"))?, kwargs))
}

/// The settings of a training-repository checkpoint (a PyTorch Lightning `SequenceLightningModule`
/// of the LRA experiments): the Hydra config's `model`, `encoder` and `decoder` sections, as
/// Lightning saves them under `hyper_parameters` (`tools/convert_official.py` extracts them). The
/// vocabulary (`n_tokens`), `d_input` and `d_output` come from the dataset there; here they are
/// read off the tensors' shapes when not given.
///
/// What is supported: `SequenceModel` with residual `R`, pooling stride 1, no model-level
/// bidirectional copy; S4Block layers (`_name_: s4`, `layer: fftconv`); LayerNorm or BatchNorm,
/// prenorm (with the final norm) or postnorm; an `embedding` or `linear` encoder; a `sequence`
/// decoder in `pool` or `last` mode, or keeping every position (`l_output` null: a causal language
/// model). Anything else is refused by name.
#[derive(Clone, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SequenceModelSettings {
    /// The `model:` section (`d_model`, `n_layers`, `prenorm`, `norm`, `dropout`, `layer`, …).
    pub model: serde_json::Map<String, serde_json::Value>,
    /// The `encoder:` section: `embedding` or `linear` (a name or `{"_name_": …}`).
    pub encoder: serde_json::Value,
    /// The `decoder:` section: `{"_name_": "sequence", "mode": "pool" | "last", …}`.
    pub decoder: serde_json::Value,
    /// Vocabulary size of an embedding encoder (default: from `encoder.0.weight`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub n_tokens: Option<usize>,
    /// Input features of a linear encoder (default: from `encoder.0.weight`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub d_input: Option<usize>,
    /// Outputs (default: from `decoder.0.output_transform.weight`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub d_output: Option<usize>,
    /// The dataset's `l_output`, which the `sequence` decoder takes: 0 (the default, as the LRA
    /// classification datasets have) reads out one pooled position; `null` keeps every position
    /// (a sequence-to-sequence model or a causal language model).
    #[serde(default = "pooled")]
    pub l_output: Option<usize>,
}

fn pooled() -> Option<usize> {
    Some(0)
}

fn name_of(v: &serde_json::Value) -> Option<&str> {
    v.as_str().or_else(|| v.get("_name_").and_then(|n| n.as_str()))
}

fn refuse(what: &str, value: impl std::fmt::Display, expected: &str) -> Error {
    Error::invalid(what, value, expected)
}

/// The S4Block keyword arguments of a Hydra `layer:` section: the options that only matter in
/// training or have their neutral value are dropped; any other unsupported one is refused.
fn s4block_kwargs(
    layer: &serde_json::Value,
    d_model: usize,
    dropout: f64,
) -> Result<serde_json::Map<String, serde_json::Value>> {
    use serde_json::Value;
    let mut kw = layer.as_object().cloned().ok_or_else(|| refuse("model.layer", layer, "a mapping"))?;
    match kw.remove("_name_") {
        None => {}
        Some(n) if n == "s4" => {}
        Some(n) => return Err(refuse("model.layer._name_", n, "s4 (the S4Block)")),
    }
    let neutral: [(&str, Value); 6] = [
        ("layer", Value::from("fftconv")),
        ("gate_act", Value::from("id")),
        ("weight_norm", Value::from(false)),
        ("mult_act", Value::Null),
        ("initializer", Value::Null),
        ("postact", Value::Null),
    ];
    for (key, want) in neutral {
        if let Some(v) = kw.remove(key)
            && v != want
            && !v.is_null()
        {
            return Err(refuse(
                &format!("model.layer.{key}"),
                v,
                &format!("{want} (the only value this importer supports)"),
            ));
        }
    }
    if let Some(m) = kw.remove("measure")
        && !m.is_null()
    {
        kw.insert("init".into(), m);
    }
    // training-only: weight decay, kernel dropout, the init's determinism, logging
    for key in ["wd", "drop_kernel", "deterministic", "verbose"] {
        kw.remove(key);
    }
    kw.insert("d_model".into(), d_model.into());
    if kw.get("dropout").is_none_or(Value::is_null) {
        kw.insert("dropout".into(), dropout.into());
    }
    Ok(kw)
}

impl SequenceModelSettings {
    /// Reads the settings from a JSON object holding the sections `model`, `encoder` and
    /// `decoder` (and optionally `n_tokens`, `d_input`, `d_output`): a whole Hydra config dump
    /// does (its other sections are ignored), and so does `{"module": "SequenceModel", …}`.
    ///
    /// # Errors
    /// Another module, a missing section, or a section of the wrong type.
    pub fn from_json(v: &serde_json::Value) -> Result<Self> {
        let obj = v.as_object().ok_or_else(|| refuse("SequenceModel settings", "not an object", "a JSON object"))?;
        match obj.get("module") {
            None => {}
            Some(m) if m == "SequenceModel" => {}
            Some(m) => return Err(refuse("module", m, "SequenceModel")),
        }
        let keep = ["model", "encoder", "decoder", "n_tokens", "d_input", "d_output", "l_output"];
        let picked: serde_json::Map<_, _> =
            obj.iter().filter(|(k, _)| keep.contains(&k.as_str())).map(|(k, v)| (k.clone(), v.clone())).collect();
        serde_json::from_value(serde_json::Value::Object(picked))
            .map_err(|e| refuse("SequenceModel settings", e, "the Hydra config's model, encoder and decoder sections"))
    }

    /// The model configuration, with the sizes `n_tokens`/`d_input` and `d_output` resolved.
    ///
    /// # Errors
    /// An unsupported option (named) or a missing size.
    pub fn model_config(&self) -> Result<S4ModelConfig> {
        use serde_json::Value;
        let m = &self.model;
        let num = |k: &str, default: Option<f64>| -> Result<f64> {
            match m.get(k) {
                None | Some(Value::Null) => default.ok_or_else(|| refuse(&format!("model.{k}"), "missing", "a number")),
                Some(v) => v.as_f64().ok_or_else(|| refuse(&format!("model.{k}"), v, "a number")),
            }
        };
        let flag = |k: &str, default: bool| -> Result<bool> {
            match m.get(k) {
                None | Some(Value::Null) => Ok(default),
                Some(v) => v.as_bool().ok_or_else(|| refuse(&format!("model.{k}"), v, "true or false")),
            }
        };
        let d_model = num("d_model", Some(256.0))? as usize;
        let n_layers = num("n_layers", Some(4.0))? as usize;
        let dropout = num("dropout", Some(0.0))?;
        if flag("bidirectional", false)? {
            return Err(refuse(
                "model.bidirectional",
                true,
                "false (a second, reversed copy of every layer is not supported; the layer-level bidirectional is)",
            ));
        }
        if num("n_repeat", Some(1.0))? != 1.0 || num("dropinp", Some(0.0))? != 0.0 {
            return Err(refuse(
                "model.n_repeat/dropinp",
                format!("{:?}/{:?}", m.get("n_repeat"), m.get("dropinp")),
                "1/0",
            ));
        }
        if let Some(r) = m.get("residual").filter(|r| !r.is_null())
            && name_of(r) != Some("R")
        {
            return Err(refuse("model.residual", r, "R (the plain residual)"));
        }
        if let Some(p) = m.get("pool").filter(|p| !p.is_null())
            && (p.get("stride").and_then(Value::as_u64).unwrap_or(1) != 1
                || p.get("expand").is_some_and(|e| !e.is_null()))
        {
            return Err(refuse("model.pool", p, "stride 1 and no expansion (no pooling inside the backbone)"));
        }
        let norm = match m.get("norm").map(name_of) {
            None | Some(Some("layer")) => NormKind::Layer,
            Some(Some("batch")) => NormKind::Batch,
            Some(n) => return Err(refuse("model.norm", format!("{n:?}"), "layer or batch")),
        };
        let kwargs = s4block_kwargs(self.layer_section()?, d_model, dropout)?;
        let layer = OfficialConfig { module: OfficialModule::S4Block, kwargs }.layer_config()?;
        let pooling = match (name_of(&self.decoder), self.decoder.get("mode").and_then(Value::as_str), self.l_output) {
            (Some("sequence"), Some("last") | None, None) => Pooling::None,
            (Some("sequence"), Some("pool"), Some(0)) => Pooling::Mean,
            (Some("sequence"), Some("last") | None, Some(0)) => Pooling::Last,
            (n, mode, l) => {
                return Err(refuse(
                    "decoder",
                    format!("{n:?} mode {mode:?} with l_output {l:?}"),
                    "sequence with mode pool or last and l_output 0, or mode last and l_output null (every position)",
                ));
            }
        };
        let vocab_size = match name_of(&self.encoder) {
            Some("embedding") => {
                Some(self.n_tokens.ok_or_else(|| refuse("n_tokens", "missing", "the vocabulary size"))?)
            }
            Some("linear") => None,
            n => return Err(refuse("encoder", format!("{n:?}"), "embedding or linear")),
        };
        Ok(S4ModelConfig {
            d_input: self.d_input.unwrap_or(1),
            vocab_size,
            d_output: self.d_output.ok_or_else(|| refuse("d_output", "missing", "the number of outputs"))?,
            n_layers,
            layer,
            prenorm: flag("prenorm", true)?,
            final_norm: true,
            norm,
            dropout,
            pooling,
            seed: 0,
        })
    }

    /// The `model.layer` section (one layer configuration, or a list of one).
    fn layer_section(&self) -> Result<&serde_json::Value> {
        match self.model.get("layer") {
            Some(serde_json::Value::Array(v)) if v.len() == 1 => Ok(&v[0]),
            Some(serde_json::Value::Array(v)) => {
                Err(refuse("model.layer", format!("a list of {}", v.len()), "one layer configuration"))
            }
            Some(l) => Ok(l),
            None => Err(refuse("model.layer", "missing", "the S4 layer's settings")),
        }
    }

    /// The sizes read off the state dict where the settings do not give them.
    fn with_sizes(&self, st: &SafeTensors) -> Self {
        let shape = |n: &str| st.tensor(n).ok().map(|t| t.shape().to_vec());
        let mut s = self.clone();
        if let Some(e) = shape("encoder.0.weight") {
            match name_of(&self.encoder) {
                Some("embedding") => s.n_tokens = s.n_tokens.or(e.first().copied()),
                _ => s.d_input = s.d_input.or(e.get(1).copied()),
            }
        }
        s.d_output = s.d_output.or(shape("decoder.0.output_transform.weight").and_then(|d| d.first().copied()));
        s
    }

    /// The settings that rebuild `cfg` in the training repository.
    ///
    /// # Errors
    /// A part with no equivalent there (a prenorm model without the final norm, a parameterization of Re Λ it lacks).
    pub fn from_model(cfg: &S4ModelConfig, rank: usize) -> Result<Self> {
        use serde_json::json;
        let l = &cfg.layer;
        if cfg.prenorm && !cfg.final_norm {
            return Err(refuse(
                "final_norm",
                false,
                "true (SequenceModel has a norm after the last block when prenorm)",
            ));
        }
        if l.real_transform != RealTransform::Exp {
            return Err(refuse("layer real_transform", format!("{:?}", l.real_transform), "exp"));
        }
        let (mode, l_output) = match cfg.pooling {
            Pooling::Mean => ("pool", Some(0)),
            Pooling::Last => ("last", Some(0)),
            Pooling::None => ("last", None),
        };
        let mut layer = json!({
            "_name_": "s4", "mode": l.kernel.to_string(), "init": l.init.to_string(), "d_state": l.d_state,
            "dt_min": l.dt_min, "dt_max": l.dt_max, "dt_transform": serde_json::to_value(l.dt_transform).expect("serializes"),
            "bidirectional": l.bidirectional, "channels": l.channels, "n_ssm": l.n_ssm, "l_max": l.l_max,
            "dropout": l.dropout, "activation": "gelu", "final_act": "glu", "rank": rank,
        });
        if l.kernel == KernelKind::Diag {
            layer["disc"] = json!(match l.discretization() {
                crate::discretize::Discretization::Zoh => "zoh",
                _ => "bilinear",
            });
        }
        let norm = match cfg.norm {
            NormKind::Layer => "layer",
            NormKind::Batch => "batch",
        };
        let model = json!({"_name_": "model", "d_model": l.d_model, "n_layers": cfg.n_layers, "prenorm": cfg.prenorm,
                           "norm": norm, "dropout": cfg.dropout, "residual": "R", "transposed": false,
                           "bidirectional": false, "layer": layer});
        Ok(SequenceModelSettings {
            model: model.as_object().expect("an object").clone(),
            encoder: json!(if cfg.vocab_size.is_some() { "embedding" } else { "linear" }),
            decoder: json!({"_name_": "sequence", "mode": mode}),
            n_tokens: cfg.vocab_size,
            d_input: cfg.vocab_size.is_none().then_some(cfg.d_input),
            d_output: Some(cfg.d_output),
            l_output,
        })
    }
}

/// Imports a training-repository checkpoint's state dict (the Lightning names: `model.layers.{i}.…`,
/// `model.norm.norm.*`, `encoder.0.*`, `decoder.0.output_transform.*`; safetensors bytes) with its
/// settings. Every tensor is checked by name, shape and finiteness; a tensor nobody reads is an
/// error (`num_batches_tracked`, a training counter, is read and ignored).
///
/// # Errors
/// A missing, mis-shaped or unexpected tensor (named), or an unsupported setting (named).
pub fn import_sequence_model<T: Real>(
    bytes: &[u8],
    path: &Path,
    settings: &SequenceModelSettings,
) -> Result<S4Model<T>> {
    let mut sd = StateDict::new(bytes, path)?;
    let settings = settings.with_sizes(&sd.st);
    let cfg = settings.model_config()?;
    cfg.validate()?;
    let h = cfg.d_model();
    let encoder = match cfg.vocab_size {
        Some(v) => Encoder::Embedding { table: sd.real("encoder.0.weight", &[v, h])? },
        None => {
            Encoder::Linear { w: sd.real("encoder.0.weight", &[h, cfg.d_input])?, b: sd.real("encoder.0.bias", &[h])? }
        }
    };
    let norm = |sd: &mut StateDict<'_>, prefix: &str| -> Result<Norm<T>> {
        let mut n = Norm::new(cfg.norm, h);
        n.weight = sd.real(&format!("{prefix}weight"), &[h])?;
        n.bias = sd.real(&format!("{prefix}bias"), &[h])?;
        if cfg.norm == NormKind::Batch {
            n.running_mean = sd.real(&format!("{prefix}running_mean"), &[h])?;
            n.running_var = sd.real(&format!("{prefix}running_var"), &[h])?;
        }
        Ok(n)
    };
    let layer_kwargs = OfficialConfig {
        module: OfficialModule::S4Block,
        kwargs: s4block_kwargs(settings.layer_section()?, h, cfg.dropout)?,
    };
    let mut blocks = Vec::with_capacity(cfg.n_layers);
    for i in 0..cfg.n_layers {
        let layer = sd.block(&layer_kwargs, &format!("model.layers.{i}.layer."))?;
        blocks.push(Block { layer, norm: norm(&mut sd, &format!("model.layers.{i}.norm.norm."))? });
    }
    let final_norm = if cfg.has_final_norm() { Some(norm(&mut sd, "model.norm.norm.")?) } else { None };
    let decoder_w = sd.real("decoder.0.output_transform.weight", &[cfg.d_output, h])?;
    let decoder_b: Array1<T> = sd.real("decoder.0.output_transform.bias", &[cfg.d_output])?;
    // num_batches_tracked: BatchNorm's training counter
    sd.finish(|n| n.ends_with(".num_batches_tracked"))?;
    S4Model::from_parts(cfg, encoder, blocks, final_norm, decoder_w, decoder_b)
}

/// The state dict of `model` under the training repository's Lightning names (safetensors bytes,
/// float32; `num_batches_tracked` = 0 for BatchNorm) and the settings that rebuild it.
///
/// # Errors
/// A part with no equivalent there (named).
pub fn export_sequence_model<T: Real>(model: &S4Model<T>) -> Result<(Vec<u8>, SequenceModelSettings)> {
    let rank = model.blocks().first().and_then(|b| b.layer.weights().p.as_ref()).map_or(1, |p| p.shape()[0]);
    let settings = SequenceModelSettings::from_model(model.config(), rank)?;
    let mut out = TensorWriter::new();
    match model.encoder() {
        Encoder::Embedding { table } => out.real("encoder.0.weight", table.shape(), table.iter()),
        Encoder::Linear { w, b } => {
            out.real("encoder.0.weight", w.shape(), w.iter());
            out.real("encoder.0.bias", b.shape(), b.iter());
        }
    }
    let norm = |prefix: &str, n: &Norm<T>, out: &mut TensorWriter| {
        crate::model::checkpoint::norm_entries(prefix, n, out);
        if n.kind == NormKind::Batch {
            out.int(&format!("{prefix}num_batches_tracked"), 0);
        }
    };
    for (i, blk) in model.blocks().iter().enumerate() {
        crate::model::checkpoint::layer_entries(&format!("model.layers.{i}.layer."), &blk.layer, &mut out);
        norm(&format!("model.layers.{i}.norm.norm."), &blk.norm, &mut out);
    }
    if let Some(n) = model.final_norm() {
        norm("model.norm.norm.", n, &mut out);
    }
    let (w, b) = model.decoder();
    out.real("decoder.0.output_transform.weight", w.shape(), w.iter());
    out.real("decoder.0.output_transform.bias", b.shape(), b.iter());
    out.to_f32();
    Ok((out.serialize(Path::new("the SequenceModel state dict"))?, settings))
}

/// The settings of a whole official model: which family, and what rebuilds it.
#[derive(Clone, Debug, PartialEq)]
pub enum OfficialModel {
    /// `example.py`'s `S4Model` and its keyword arguments.
    Example(ExampleS4Model),
    /// The training repository's `SequenceModel` and its Hydra sections.
    Sequence(SequenceModelSettings),
}

/// The official module an export is for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[cfg_attr(feature = "cli", derive(clap::ValueEnum))]
pub enum OfficialTarget {
    /// The training repository's `SequenceModel` with its task encoder and decoder.
    SequenceModel,
    /// `example.py`'s `S4Model`.
    Example,
}

impl OfficialModel {
    /// The whole-model settings in `v`, or `None` if they describe a single layer: `"module":
    /// "S4Model"` (keyword arguments) or `"SequenceModel"`, or no module but `model` and `decoder`
    /// sections (a Hydra config dump).
    ///
    /// # Errors
    /// Settings of a whole model that do not parse.
    pub fn from_json(v: &serde_json::Value) -> Result<Option<Self>> {
        match v.get("module").and_then(|m| m.as_str()) {
            Some("S4Model") => Ok(Some(OfficialModel::Example(ExampleS4Model::from_json(v)?))),
            Some("SequenceModel") => Ok(Some(OfficialModel::Sequence(SequenceModelSettings::from_json(v)?))),
            None if v.get("model").is_some() && v.get("decoder").is_some() => {
                Ok(Some(OfficialModel::Sequence(SequenceModelSettings::from_json(v)?)))
            }
            _ => Ok(None),
        }
    }

    /// The family's name.
    pub fn name(&self) -> &'static str {
        match self {
            OfficialModel::Example(_) => "example.py S4Model",
            OfficialModel::Sequence(_) => "SequenceModel",
        }
    }

    /// Imports a state dict (safetensors bytes; `path` names them in errors) with these settings.
    ///
    /// # Errors
    /// As [`import_example`] and [`import_sequence_model`].
    pub fn import<T: Real>(&self, bytes: &[u8], path: &Path) -> Result<S4Model<T>> {
        match self {
            OfficialModel::Example(k) => import_example(bytes, path, k),
            OfficialModel::Sequence(s) => import_sequence_model(bytes, path, s),
        }
    }

    /// The settings as JSON, with their `"module"`.
    pub fn to_json(&self) -> serde_json::Value {
        match self {
            OfficialModel::Example(k) => serde_json::json!({"module": "S4Model", "kwargs": k}),
            OfficialModel::Sequence(s) => {
                let mut v = serde_json::to_value(s).expect("settings serialize");
                v["module"] = "SequenceModel".into();
                v
            }
        }
    }
}

/// The state dict of `model` for `target` (safetensors bytes, float32) and the settings that
/// rebuild it.
///
/// # Errors
/// As [`export_example`] and [`export_sequence_model`].
pub fn export_official<T: Real>(model: &S4Model<T>, target: OfficialTarget) -> Result<(Vec<u8>, OfficialModel)> {
    Ok(match target {
        OfficialTarget::Example => {
            let (bytes, k) = export_example(model)?;
            (bytes, OfficialModel::Example(k))
        }
        OfficialTarget::SequenceModel => {
            let (bytes, s) = export_sequence_model(model)?;
            (bytes, OfficialModel::Sequence(s))
        }
    })
}

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
    let st = SafeTensors::deserialize(bytes)
        .map_err(|e| Error::format(path, format!("not a valid safetensors file: {e}")))?;
    let cfg = kwargs.model_config();
    cfg.validate()?;
    let (h, d_in, d_out) = (cfg.d_model(), cfg.d_input, cfg.d_output);
    let mut read: Vec<String> = Vec::new();
    let mut real = |name: &str, shape: &[usize]| -> Result<ndarray::ArrayD<T>> {
        read.push(name.to_string());
        Ok(read_real(&st, path, name, shape)?.mapv(|x| T::of(x as f64)))
    };
    let w = real("encoder.weight", &[h, d_in])?.into_dimensionality().expect("2-D");
    let b = real("encoder.bias", &[h])?.into_dimensionality().expect("1-D");
    let mut norms = Vec::with_capacity(cfg.n_layers);
    for i in 0..cfg.n_layers {
        let mut n = Norm::new(NormKind::Layer, h);
        n.weight = real(&format!("norms.{i}.weight"), &[h])?.into_dimensionality().expect("1-D");
        n.bias = real(&format!("norms.{i}.bias"), &[h])?.into_dimensionality().expect("1-D");
        norms.push(n);
    }
    let decoder_w = real("decoder.weight", &[d_out, h])?.into_dimensionality().expect("2-D");
    let decoder_b: Array1<T> = real("decoder.bias", &[d_out])?.into_dimensionality().expect("1-D");
    let layer_kwargs = kwargs.layer_kwargs();
    let mut blocks = Vec::with_capacity(cfg.n_layers);
    for (i, norm) in norms.into_iter().enumerate() {
        let (layer, names): (S4Layer<T>, _) = import_block(&st, path, &layer_kwargs, &format!("s4_layers.{i}."))?;
        read.extend(names);
        blocks.push(Block { layer, norm });
    }
    let unexpected: Vec<&str> = st.names().into_iter().filter(|n| !read.iter().any(|r| r == *n)).collect();
    if !unexpected.is_empty() {
        return Err(Error::format(path, format!("unexpected tensors: {}", unexpected.join(", "))));
    }
    S4Model::from_parts(cfg, Encoder::Linear { w, b }, blocks, None, decoder_w, decoder_b)
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

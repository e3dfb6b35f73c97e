//! Saving and loading whole models: a folder with `config.json` (the [`S4ModelConfig`] and the
//! dtype) and `model.safetensors` (every tensor by name). Both files are written atomically
//! (temporary file, then rename); loading checks every name, dtype and shape and reports all
//! missing, unexpected and mis-shaped tensors at once, so a bad file never yields a partial model.
//!
//! Tensor names follow the official S4Block state dict under `layers.{i}.`
//! (`layers.{i}.layer.kernel.C` (C'', H, N/2, 2), `layers.{i}.layer.kernel.inv_dt` (H, 1), …,
//! `layers.{i}.output_linear.0.weight`), plus `layers.{i}.norm.*`, `norm.*` (prenorm with a final norm),
//! `encoder.*` and `decoder.*`. Complex tensors have a trailing dimension of 2 (real, imag).
//!
//! # Example
//!
//! ```
//! use ndarray::Array3;
//! use s4::layer::S4LayerConfig;
//! use s4::model::checkpoint::{load, read_config, save, save_as, WEIGHTS_FILE};
//! use s4::model::{Input, S4ModelConfig};
//! use s4::scalar::HalfPrecision;
//!
//! let dir = std::env::temp_dir().join(format!("s4-doc-checkpoint-{}", std::process::id()));
//! let cfg = S4ModelConfig {
//!     d_input: 2,
//!     d_output: 3,
//!     n_layers: 2,
//!     layer: S4LayerConfig { d_model: 4, d_state: 8, ..Default::default() },
//!     ..Default::default()
//! };
//! let model = cfg.build()?;
//! save(&model, &dir)?;
//! assert_eq!(read_config(&dir)?, (cfg, "f32".to_string()));
//!
//! // the loaded model computes exactly the same outputs
//! let x = Array3::from_shape_fn((2, 2, 16), |(b, f, t)| (b + f + t) as f32 / 10.0);
//! let loaded = load::<f32>(&dir)?;
//! assert_eq!(loaded.forward(Input::Features(x.view()), None)?, model.forward(Input::Features(x.view()), None)?);
//!
//! // 16-bit weights load as the model with_half_weights gives
//! save_as(&model, &dir, Some(HalfPrecision::Bf16))?;
//! let half = model.with_half_weights(HalfPrecision::Bf16)?;
//! assert_eq!(load::<f32>(&dir)?.forward(Input::Features(x.view()), None)?, half.forward(Input::Features(x.view()), None)?);
//!
//! // a damaged file is an error, never a partial model
//! std::fs::write(dir.join(WEIGHTS_FILE), b"not safetensors").unwrap();
//! assert!(load::<f32>(&dir).unwrap_err().to_string().contains("not a valid safetensors file"));
//! # std::fs::remove_dir_all(&dir).unwrap();
//! # Ok::<(), s4::Error>(())
//! ```

use super::{Block, Encoder, Norm, NormKind, S4Model, S4ModelConfig};
use crate::error::{Error, Result};
use crate::io::tensors::{write_folder, TensorReader, TensorWriter};
use crate::layer::{S4Layer, Weights};
use crate::scalar::{HalfPrecision, Real};
use crate::ssm::KernelKind;
use ndarray::{Array1, Array2, Array3, ArrayD};
use std::path::Path;

pub use crate::io::tensors::{CONFIG_FILE, WEIGHTS_FILE};

fn dtype_name<T: Real>() -> &'static str {
    if std::mem::size_of::<T>() == 4 {
        "f32"
    } else {
        "f64"
    }
}

/// The SSM dynamics tensors, always stored in full precision.
fn is_dynamics(name: &str) -> bool {
    ["kernel.inv_dt", "kernel.A_real", "kernel.A_imag", "kernel.B", "kernel.P", "kernel.l_kernel"]
        .iter()
        .any(|s| name.ends_with(s))
}

/// The named tensors of a layer under `prefix` (official S4Block names).
pub(crate) fn layer_entries<T: Real>(prefix: &str, layer: &S4Layer<T>, out: &mut TensorWriter) {
    let w = layer.weights();
    let cfg = layer.config();
    let (h, m, n_ssm) = (cfg.d_model, cfg.d_state / 2, cfg.n_ssm());
    out.real(&format!("{prefix}layer.D"), w.d.shape(), w.d.iter());
    out.real(&format!("{prefix}layer.kernel.inv_dt"), &[h, 1], w.inv_dt.iter());
    out.real(&format!("{prefix}layer.kernel.A_real"), w.a_real.shape(), w.a_real.iter());
    out.real(&format!("{prefix}layer.kernel.A_imag"), w.a_imag.shape(), w.a_imag.iter());
    out.complex(&format!("{prefix}layer.kernel.B"), &[1, n_ssm, m], w.b.iter());
    out.complex(&format!("{prefix}layer.kernel.C"), w.c.shape(), w.c.iter());
    if let Some(p) = &w.p {
        out.complex(&format!("{prefix}layer.kernel.P"), p.shape(), p.iter());
        out.int(&format!("{prefix}layer.kernel.l_kernel"), w.l_kernel as i64);
    }
    out.real(&format!("{prefix}output_linear.0.weight"), w.w.shape(), w.w.iter());
    out.real(&format!("{prefix}output_linear.0.bias"), w.bias.shape(), w.bias.iter());
}

pub(crate) fn norm_entries<T: Real>(prefix: &str, n: &Norm<T>, out: &mut TensorWriter) {
    out.real(&format!("{prefix}weight"), n.weight.shape(), n.weight.iter());
    out.real(&format!("{prefix}bias"), n.bias.shape(), n.bias.iter());
    if n.kind == NormKind::Batch {
        out.real(&format!("{prefix}running_mean"), n.running_mean.shape(), n.running_mean.iter());
        out.real(&format!("{prefix}running_var"), n.running_var.shape(), n.running_var.iter());
    }
}

fn model_entries<T: Real>(model: &S4Model<T>) -> TensorWriter {
    let mut out = TensorWriter::new();
    match model.encoder() {
        Encoder::Linear { w, b } => {
            out.real("encoder.weight", w.shape(), w.iter());
            out.real("encoder.bias", b.shape(), b.iter());
        }
        Encoder::Embedding { table } => out.real("encoder.weight", table.shape(), table.iter()),
    }
    for (i, blk) in model.blocks().iter().enumerate() {
        layer_entries(&format!("layers.{i}."), &blk.layer, &mut out);
        norm_entries(&format!("layers.{i}.norm."), &blk.norm, &mut out);
    }
    if let Some(n) = model.final_norm() {
        norm_entries("norm.", n, &mut out);
    }
    let (w, b) = model.decoder();
    out.real("decoder.weight", w.shape(), w.iter());
    out.real("decoder.bias", b.shape(), b.iter());
    out
}

/// Saves `model` into the folder `dir` (created if needed): `config.json` and `model.safetensors`,
/// each written atomically. The weights are written first, so an interrupted save never leaves a
/// new config next to old weights.
///
/// # Errors
/// The folder or a file cannot be written.
pub fn save<T: Real>(model: &S4Model<T>, dir: &Path) -> Result<()> {
    save_as(model, dir, None)
}

/// As [`save`], optionally storing every weight except the SSM dynamics (Λ, P, B, Δ) in a 16-bit
/// format (about half the file size; the values are those of
/// [`S4Model::with_half_weights`], which loading reproduces exactly).
///
/// # Errors
/// The folder or a file cannot be written.
pub fn save_as<T: Real>(model: &S4Model<T>, dir: &Path, weights: Option<HalfPrecision>) -> Result<()> {
    let cfg = serde_json::json!({"format": "s4-model", "version": FORMAT_VERSION, "dtype": dtype_name::<T>(), "weights": weights,
                                 "model": model.config()});
    let mut tensors = model_entries(model);
    if let Some(p) = weights {
        tensors.to_half(p, is_dynamics);
    }
    write_folder(dir, tensors, &cfg)
}

/// Saves a single layer into `dir`: `config.json` (`"format": "s4-layer"`) and `model.safetensors`
/// with exactly the official S4Block state-dict names (`layer.D`, `layer.kernel.C`, …).
///
/// # Errors
/// The folder or a file cannot be written.
pub fn save_layer<T: Real>(layer: &S4Layer<T>, dir: &Path) -> Result<()> {
    let mut tensors = TensorWriter::new();
    layer_entries("", layer, &mut tensors);
    let cfg = serde_json::json!({"format": "s4-layer", "version": FORMAT_VERSION, "dtype": dtype_name::<T>(), "layer": layer.config()});
    write_folder(dir, tensors, &cfg)
}

/// A saved folder: one layer or a whole model.
#[derive(Clone, Debug)]
pub enum Saved<T> {
    /// `"format": "s4-layer"`.
    Layer(S4Layer<T>),
    /// `"format": "s4-model"`.
    Model(S4Model<T>),
}

/// The format version this crate writes and reads in its `config.json` files.
pub const FORMAT_VERSION: u64 = 1;

/// The parsed `config.json` of a folder.
fn read_json(dir: &Path) -> Result<serde_json::Value> {
    crate::io::read_json(&dir.join(CONFIG_FILE))
}

/// Checks the envelope of one of this crate's `config.json` files strictly: `"format"` is
/// `format`, `"version"` is [`FORMAT_VERSION`], and there is no key outside `allowed`.
fn check_envelope(v: &serde_json::Value, path: &Path, format: &str, allowed: &[&str]) -> Result<()> {
    if v.get("format").and_then(|f| f.as_str()) != Some(format) {
        return Err(Error::format(path, format!("not an {format} config (\"format\": \"{format}\" expected)")));
    }
    match v.get("version") {
        Some(serde_json::Value::Number(n)) if n.as_u64() == Some(FORMAT_VERSION) => {}
        other => {
            return Err(Error::format(
                path,
                format!(
                    "unsupported version {}: this build reads version {FORMAT_VERSION}",
                    other.map_or("(missing)".to_string(), |o| o.to_string())
                ),
            ));
        }
    }
    let object = v.as_object().expect("a format key was found, so this is an object");
    if let Some(k) =
        object.keys().find(|k| !allowed.contains(&k.as_str()) && !["format", "version"].contains(&k.as_str()))
    {
        return Err(Error::format(path, format!("unknown field '{k}' (expected {})", allowed.join(", "))));
    }
    Ok(())
}

/// Loads a layer folder written by [`save_layer`].
///
/// # Errors
/// As [`load`].
pub fn load_layer<T: Real>(dir: &Path) -> Result<S4Layer<T>> {
    let cpath = dir.join(CONFIG_FILE);
    let v = read_json(dir)?;
    check_envelope(&v, &cpath, "s4-layer", &["dtype", "layer"])?;
    let lc: crate::layer::S4LayerConfig = serde_json::from_value(v.get("layer").cloned().unwrap_or_default())
        .map_err(|e| Error::format(&cpath, format!("invalid layer config: {e}")))?;
    lc.validate().map_err(|e| Error::format(&cpath, e.to_string()))?;
    let path = dir.join(WEIGHTS_FILE);
    let mut r = TensorReader::open(&path)?;
    let w = read_layer::<T>(&mut r, "", &lc);
    r.finish()?;
    S4Layer::from_parts(lc, w).map_err(|e| Error::format(&path, e.to_string()))
}

/// Loads a layer or a model folder, whichever `config.json` says.
///
/// # Errors
/// As [`load`] and [`load_layer`].
pub fn load_any<T: Real>(dir: &Path) -> Result<Saved<T>> {
    match read_json(dir)?.get("format").and_then(|f| f.as_str()) {
        Some("s4-layer") => Ok(Saved::Layer(load_layer(dir)?)),
        Some("s4-model") => Ok(Saved::Model(load(dir)?)),
        other => Err(Error::format(
            dir.join(CONFIG_FILE),
            format!("unknown format {other:?}: expected s4-layer or s4-model"),
        )),
    }
}

/// Reads the model configuration (and the stored dtype) of a folder.
///
/// # Errors
/// A missing or invalid `config.json`.
pub fn read_config(dir: &Path) -> Result<(S4ModelConfig, String)> {
    let path = dir.join(CONFIG_FILE);
    let v = read_json(dir)?;
    check_envelope(&v, &path, "s4-model", &["dtype", "weights", "model"])?;
    let cfg: S4ModelConfig = serde_json::from_value(v.get("model").cloned().unwrap_or_default())
        .map_err(|e| Error::format(&path, format!("invalid model config: {e}")))?;
    cfg.validate().map_err(|e| Error::format(&path, e.to_string()))?;
    let dtype = v.get("dtype").and_then(|d| d.as_str()).unwrap_or("f32").to_string();
    Ok((cfg, dtype))
}

/// Reads one layer's tensors (official S4Block names) under `prefix`.
fn read_layer<T: Real>(r: &mut TensorReader, pre: &str, lc: &crate::layer::S4LayerConfig) -> Weights<T> {
    let (h, m, n_ssm, heads, ch) = (lc.d_model, lc.d_state / 2, lc.n_ssm(), lc.c_heads(), lc.channels);
    let rank = r.shape(&format!("{pre}layer.kernel.P")).and_then(|s| s.first().copied()).unwrap_or(1);
    let (p, l_kernel) = match lc.kernel {
        KernelKind::Dplr => (
            Some(d3(r.complex(&format!("{pre}layer.kernel.P"), &[rank, n_ssm, m]))),
            r.int(&format!("{pre}layer.kernel.l_kernel")),
        ),
        KernelKind::Diag => (None, 0),
    };
    Weights {
        inv_dt: d2(r.real(&format!("{pre}layer.kernel.inv_dt"), &[h, 1])).column(0).to_owned(),
        a_real: d2(r.real(&format!("{pre}layer.kernel.A_real"), &[n_ssm, m])),
        a_imag: d2(r.real(&format!("{pre}layer.kernel.A_imag"), &[n_ssm, m])),
        b: d3(r.complex(&format!("{pre}layer.kernel.B"), &[1, n_ssm, m])).index_axis_move(ndarray::Axis(0), 0),
        p,
        c: d3(r.complex(&format!("{pre}layer.kernel.C"), &[heads, h, m])),
        l_kernel,
        d: d2(r.real(&format!("{pre}layer.D"), &[ch, h])),
        w: d2(r.real(&format!("{pre}output_linear.0.weight"), &[2 * h, ch * h])),
        bias: d1(r.real(&format!("{pre}output_linear.0.bias"), &[2 * h])),
    }
}

fn d1<T: Clone>(a: ArrayD<T>) -> Array1<T> {
    a.into_dimensionality().expect("shape checked")
}
fn d2<T: Clone>(a: ArrayD<T>) -> Array2<T> {
    a.into_dimensionality().expect("shape checked")
}
fn d3<T: Clone>(a: ArrayD<T>) -> Array3<T> {
    a.into_dimensionality().expect("shape checked")
}

/// Loads a model saved by [`save`] in precision `T` (a file stored in the other float width is
/// converted).
///
/// # Errors
/// Unreadable or invalid files; every missing, unexpected, mis-typed or mis-shaped tensor is named.
pub fn load<T: Real>(dir: &Path) -> Result<S4Model<T>> {
    let (cfg, _) = read_config(dir)?;
    cfg.check_memory::<T>()?;
    let path = dir.join(WEIGHTS_FILE);
    let mut r = TensorReader::open(&path)?;
    let lc = &cfg.layer;
    let h = lc.d_model;
    let encoder = match cfg.vocab_size {
        Some(v) => Encoder::Embedding { table: d2(r.real::<T>("encoder.weight", &[v, h])) },
        None => {
            Encoder::Linear { w: d2(r.real("encoder.weight", &[h, cfg.d_input])), b: d1(r.real("encoder.bias", &[h])) }
        }
    };
    let read_norm = |r: &mut TensorReader, prefix: &str| -> Norm<T> {
        let mut n = Norm::new(cfg.norm, h);
        n.weight = d1(r.real(&format!("{prefix}weight"), &[h]));
        n.bias = d1(r.real(&format!("{prefix}bias"), &[h]));
        if cfg.norm == NormKind::Batch {
            n.running_mean = d1(r.real(&format!("{prefix}running_mean"), &[h]));
            n.running_var = d1(r.real(&format!("{prefix}running_var"), &[h]));
        }
        n
    };
    let mut raw_blocks = Vec::new();
    for i in 0..cfg.n_layers {
        let pre = format!("layers.{i}.");
        let weights = read_layer::<T>(&mut r, &pre, lc);
        let norm = read_norm(&mut r, &format!("{pre}norm."));
        raw_blocks.push((weights, norm));
    }
    let final_norm = cfg.has_final_norm().then(|| read_norm(&mut r, "norm."));
    let decoder_w = d2(r.real("decoder.weight", &[cfg.d_output, h]));
    let decoder_b = d1(r.real("decoder.bias", &[cfg.d_output]));
    r.finish()?;
    let blocks = raw_blocks
        .into_iter()
        .enumerate()
        .map(|(i, (w, norm))| {
            let layer = S4Layer::from_parts(cfg.layer.clone(), w)
                .map_err(|e| Error::format(&path, format!("layers.{i}: {e}")))?;
            Ok(Block { layer, norm })
        })
        .collect::<Result<Vec<_>>>()?;
    S4Model::from_parts(cfg, encoder, blocks, final_norm, decoder_w, decoder_b)
        .map_err(|e| Error::format(&path, e.to_string()))
}

impl crate::nn::params::Trainable for S4Model<f32> {
    const FORMAT: &'static str = "s4-model";

    fn save_folder(&self, dir: &Path) -> Result<()> {
        save(self, dir)
    }

    fn load_folder(dir: &Path) -> Result<Self> {
        load(dir)
    }
}

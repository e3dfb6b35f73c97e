//! Saving and loading whole models: a folder with `config.json` (the [`S4ModelConfig`] and the
//! dtype) and `model.safetensors` (every tensor by name). Both files are written atomically
//! (temporary file, then rename); loading checks every name, dtype and shape and reports all
//! missing, unexpected and mis-shaped tensors at once, so a bad file never yields a partial model.
//!
//! Tensor names follow the official S4Block state dict under `layers.{i}.`
//! (`layers.{i}.layer.kernel.C` (C'', H, N/2, 2), `layers.{i}.layer.kernel.inv_dt` (H, 1), …,
//! `layers.{i}.output_linear.0.weight`), plus `layers.{i}.norm.*`, `norm.*` (prenorm),
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
use crate::io::atomic_path;
use crate::layer::{S4Layer, Weights};
use crate::scalar::{HalfPrecision, Real};
use crate::ssm::KernelKind;
use ndarray::{Array1, Array2, Array3, ArrayD, IxDyn};
use num_complex::Complex;
use safetensors::tensor::TensorView;
use safetensors::{Dtype, SafeTensors};
use std::collections::BTreeMap;
use std::io::Write;
use std::path::Path;

/// Name of the config file in a model folder.
pub const CONFIG_FILE: &str = "config.json";
/// Name of the weights file in a model folder.
pub const WEIGHTS_FILE: &str = "model.safetensors";

fn dtype_of<T: Real>() -> (Dtype, &'static str) {
    if std::mem::size_of::<T>() == 4 {
        (Dtype::F32, "f32")
    } else {
        (Dtype::F64, "f64")
    }
}

/// The SSM dynamics tensors, always stored in full precision.
fn is_dynamics(name: &str) -> bool {
    ["kernel.inv_dt", "kernel.A_real", "kernel.A_imag", "kernel.B", "kernel.P", "kernel.l_kernel"]
        .iter()
        .any(|s| name.ends_with(s))
}

/// Re-encodes every non-dynamics floating tensor in a 16-bit format.
fn to_half(entries: BTreeMap<String, Entry>, p: HalfPrecision) -> BTreeMap<String, Entry> {
    entries
        .into_iter()
        .map(|(name, e)| {
            if is_dynamics(&name) || !(e.dtype == Dtype::F32 || e.dtype == Dtype::F64) {
                return (name, e);
            }
            let values: Vec<f32> = if e.dtype == Dtype::F32 {
                e.bytes.chunks_exact(4).map(|b| f32::from_le_bytes(b.try_into().expect("4"))).collect()
            } else {
                e.bytes.chunks_exact(8).map(|b| f64::from_le_bytes(b.try_into().expect("8")) as f32).collect()
            };
            let bytes = values.iter().flat_map(|&v| p.to_le_bytes(v)).collect();
            let dtype = match p {
                HalfPrecision::Bf16 => Dtype::BF16,
                HalfPrecision::F16 => Dtype::F16,
            };
            (name, Entry { dtype, shape: e.shape, bytes })
        })
        .collect()
}

/// A tensor to write: shape and little-endian bytes.
struct Entry {
    dtype: Dtype,
    shape: Vec<usize>,
    bytes: Vec<u8>,
}

fn real_entry<'a, T: Real>(shape: &[usize], values: impl Iterator<Item = &'a T>) -> Entry {
    let (dtype, _) = dtype_of::<T>();
    let mut bytes = Vec::new();
    for v in values {
        if dtype == Dtype::F32 {
            bytes.extend_from_slice(&(v.as_f64() as f32).to_le_bytes());
        } else {
            bytes.extend_from_slice(&v.as_f64().to_le_bytes());
        }
    }
    Entry { dtype, shape: shape.to_vec(), bytes }
}

fn complex_entry<'a, T: Real>(shape: &[usize], values: impl Iterator<Item = &'a Complex<T>>) -> Entry {
    let flat: Vec<T> = values.flat_map(|z| [z.re, z.im]).collect();
    let mut s = shape.to_vec();
    s.push(2);
    real_entry(&s, flat.iter())
}

/// The named tensors of a layer under `prefix` (official S4Block names).
fn layer_entries<T: Real>(prefix: &str, layer: &S4Layer<T>, out: &mut BTreeMap<String, Entry>) {
    let w = layer.weights();
    let cfg = layer.config();
    let (h, m, n_ssm) = (cfg.d_model, cfg.d_state / 2, cfg.n_ssm());
    out.insert(format!("{prefix}layer.D"), real_entry(w.d.shape(), w.d.iter()));
    out.insert(format!("{prefix}layer.kernel.inv_dt"), real_entry(&[h, 1], w.inv_dt.iter()));
    out.insert(format!("{prefix}layer.kernel.A_real"), real_entry(w.a_real.shape(), w.a_real.iter()));
    out.insert(format!("{prefix}layer.kernel.A_imag"), real_entry(w.a_imag.shape(), w.a_imag.iter()));
    out.insert(format!("{prefix}layer.kernel.B"), complex_entry(&[1, n_ssm, m], w.b.iter()));
    out.insert(format!("{prefix}layer.kernel.C"), complex_entry(w.c.shape(), w.c.iter()));
    if let Some(p) = &w.p {
        out.insert(format!("{prefix}layer.kernel.P"), complex_entry(p.shape(), p.iter()));
        out.insert(
            format!("{prefix}layer.kernel.l_kernel"),
            Entry { dtype: Dtype::I64, shape: vec![], bytes: (w.l_kernel as i64).to_le_bytes().to_vec() },
        );
    }
    out.insert(format!("{prefix}output_linear.0.weight"), real_entry(w.w.shape(), w.w.iter()));
    out.insert(format!("{prefix}output_linear.0.bias"), real_entry(w.bias.shape(), w.bias.iter()));
}

fn norm_entries<T: Real>(prefix: &str, n: &Norm<T>, out: &mut BTreeMap<String, Entry>) {
    out.insert(format!("{prefix}weight"), real_entry(n.weight.shape(), n.weight.iter()));
    out.insert(format!("{prefix}bias"), real_entry(n.bias.shape(), n.bias.iter()));
    if n.kind == NormKind::Batch {
        out.insert(format!("{prefix}running_mean"), real_entry(n.running_mean.shape(), n.running_mean.iter()));
        out.insert(format!("{prefix}running_var"), real_entry(n.running_var.shape(), n.running_var.iter()));
    }
}

fn model_entries<T: Real>(model: &S4Model<T>) -> BTreeMap<String, Entry> {
    let mut out = BTreeMap::new();
    match model.encoder() {
        Encoder::Linear { w, b } => {
            out.insert("encoder.weight".into(), real_entry(w.shape(), w.iter()));
            out.insert("encoder.bias".into(), real_entry(b.shape(), b.iter()));
        }
        Encoder::Embedding { table } => {
            out.insert("encoder.weight".into(), real_entry(table.shape(), table.iter()));
        }
    }
    for (i, blk) in model.blocks().iter().enumerate() {
        layer_entries(&format!("layers.{i}."), &blk.layer, &mut out);
        norm_entries(&format!("layers.{i}.norm."), &blk.norm, &mut out);
    }
    if let Some(n) = model.final_norm() {
        norm_entries("norm.", n, &mut out);
    }
    let (w, b) = model.decoder();
    out.insert("decoder.weight".into(), real_entry(w.shape(), w.iter()));
    out.insert("decoder.bias".into(), real_entry(b.shape(), b.iter()));
    out
}

pub(crate) fn write_atomic(path: &Path, bytes: &[u8]) -> Result<()> {
    let ext = path.extension().and_then(|e| e.to_str()).unwrap_or("tmp");
    let tmp = atomic_path(path, ext);
    let done = std::fs::File::create(&tmp)
        .and_then(|mut f| {
            f.write_all(bytes)?;
            f.sync_all()
        })
        .map_err(|e| Error::io(&tmp, e))
        .and_then(|_| std::fs::rename(&tmp, path).map_err(|e| Error::io(path, e)));
    if done.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    done
}

/// Writes the tensors, then the config (both atomically) into `dir`.
fn write_folder(dir: &Path, entries: BTreeMap<String, Entry>, config: serde_json::Value) -> Result<()> {
    std::fs::create_dir_all(dir).map_err(|e| Error::io(dir, e))?;
    let views: Vec<(String, TensorView)> = entries
        .iter()
        .map(|(k, e)| {
            (k.clone(), TensorView::new(e.dtype, e.shape.clone(), &e.bytes).expect("byte length matches the shape"))
        })
        .collect();
    let bytes = safetensors::serialize(views, None)
        .map_err(|e| Error::format(dir.join(WEIGHTS_FILE), format!("cannot serialize: {e}")))?;
    write_atomic(&dir.join(WEIGHTS_FILE), &bytes)?;
    write_atomic(&dir.join(CONFIG_FILE), serde_json::to_string_pretty(&config).expect("config serializes").as_bytes())
}

/// Writes named tensors (stored in `T`'s precision, F32 or F64) and `config` into the folder `dir`
/// (created if needed): `model.safetensors`, then `config.json`, each atomically, as [`save`].
///
/// # Errors
/// The folder or a file cannot be written.
pub(crate) fn save_named<T: Real>(
    dir: &Path,
    tensors: Vec<(String, ndarray::ArrayViewD<'_, T>)>,
    config: serde_json::Value,
) -> Result<()> {
    let entries = tensors.into_iter().map(|(name, t)| (name, real_entry(t.shape(), t.iter()))).collect();
    write_folder(dir, entries, config)
}

/// Reads `model.safetensors` of `dir` into `targets` (name, destination) by name, converting F32,
/// F64, BF16 or F16 to `T`. Every missing, mis-shaped, mis-typed and unexpected tensor is reported
/// in one [`Error::Format`] (the destinations may then be partly written: discard them).
///
/// # Errors
/// An unreadable or invalid file, or the problems above.
pub(crate) fn load_named<T: Real>(dir: &Path, targets: Vec<(String, ndarray::ArrayViewMutD<'_, T>)>) -> Result<()> {
    let path = dir.join(WEIGHTS_FILE);
    let bytes = std::fs::read(&path).map_err(|e| Error::io(&path, e))?;
    let st = SafeTensors::deserialize(&bytes)
        .map_err(|e| Error::format(&path, format!("not a valid safetensors file: {e}")))?;
    let mut r = Reader { st, path: &path, problems: Vec::new(), used: Vec::new() };
    for (name, mut t) in targets {
        let shape = t.shape().to_vec();
        t.assign(&r.real::<T>(&name, &shape));
    }
    r.finish()
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
    let (_, dtype) = dtype_of::<T>();
    let cfg = serde_json::json!({"format": "s4-model", "version": 1, "dtype": dtype, "weights": weights, "model": model.config()});
    let entries = model_entries(model);
    write_folder(dir, if let Some(p) = weights { to_half(entries, p) } else { entries }, cfg)
}

/// Saves a single layer into `dir`: `config.json` (`"format": "s4-layer"`) and `model.safetensors`
/// with exactly the official S4Block state-dict names (`layer.D`, `layer.kernel.C`, …).
///
/// # Errors
/// The folder or a file cannot be written.
pub fn save_layer<T: Real>(layer: &S4Layer<T>, dir: &Path) -> Result<()> {
    let mut entries = BTreeMap::new();
    layer_entries("", layer, &mut entries);
    let (_, dtype) = dtype_of::<T>();
    let cfg = serde_json::json!({"format": "s4-layer", "version": 1, "dtype": dtype, "layer": layer.config()});
    write_folder(dir, entries, cfg)
}

/// A saved folder: one layer or a whole model.
#[derive(Clone, Debug)]
pub enum Saved<T> {
    /// `"format": "s4-layer"`.
    Layer(S4Layer<T>),
    /// `"format": "s4-model"`.
    Model(S4Model<T>),
}

/// The parsed `config.json` of a folder.
pub(crate) fn read_json(dir: &Path) -> Result<serde_json::Value> {
    let path = dir.join(CONFIG_FILE);
    let text = std::fs::read_to_string(&path).map_err(|e| Error::io(&path, e))?;
    serde_json::from_str(&text).map_err(|e| Error::format(&path, format!("invalid JSON: {e}")))
}

/// Loads a layer folder written by [`save_layer`].
///
/// # Errors
/// As [`load`].
pub fn load_layer<T: Real>(dir: &Path) -> Result<S4Layer<T>> {
    let cpath = dir.join(CONFIG_FILE);
    let v = read_json(dir)?;
    if v.get("format").and_then(|f| f.as_str()) != Some("s4-layer") {
        return Err(Error::format(&cpath, "not an s4 layer config (\"format\": \"s4-layer\" expected)"));
    }
    let lc: crate::layer::S4LayerConfig = serde_json::from_value(v.get("layer").cloned().unwrap_or_default())
        .map_err(|e| Error::format(&cpath, format!("invalid layer config: {e}")))?;
    lc.validate().map_err(|e| Error::format(&cpath, e.to_string()))?;
    let path = dir.join(WEIGHTS_FILE);
    let bytes = std::fs::read(&path).map_err(|e| Error::io(&path, e))?;
    let st = SafeTensors::deserialize(&bytes)
        .map_err(|e| Error::format(&path, format!("not a valid safetensors file: {e}")))?;
    let mut r = Reader { st, path: &path, problems: Vec::new(), used: Vec::new() };
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
    if v.get("format").and_then(|f| f.as_str()) != Some("s4-model") {
        return Err(Error::format(&path, "not an s4 model config (\"format\": \"s4-model\" expected)"));
    }
    let cfg: S4ModelConfig = serde_json::from_value(v.get("model").cloned().unwrap_or_default())
        .map_err(|e| Error::format(&path, format!("invalid model config: {e}")))?;
    cfg.validate().map_err(|e| Error::format(&path, e.to_string()))?;
    let dtype = v.get("dtype").and_then(|d| d.as_str()).unwrap_or("f32").to_string();
    Ok((cfg, dtype))
}

/// Reads checked tensors out of a safetensors file.
struct Reader<'a> {
    st: SafeTensors<'a>,
    path: &'a Path,
    problems: Vec<String>,
    used: Vec<String>,
}

impl<'a> Reader<'a> {
    fn real<T: Real>(&mut self, name: &str, shape: &[usize]) -> ArrayD<T> {
        self.used.push(name.to_string());
        let zeros = || ArrayD::from_elem(IxDyn(shape), T::zero());
        let t = match self.st.tensor(name) {
            Ok(t) => t,
            Err(_) => {
                self.problems.push(format!("missing {name} {shape:?}"));
                return zeros();
            }
        };
        if t.shape() != shape {
            self.problems.push(format!("{name} has shape {:?}, expected {shape:?}", t.shape()));
            return zeros();
        }
        let values: Vec<T> = match t.dtype() {
            Dtype::F32 => {
                t.data().chunks_exact(4).map(|b| T::of(f32::from_le_bytes(b.try_into().expect("4")) as f64)).collect()
            }
            Dtype::F64 => {
                t.data().chunks_exact(8).map(|b| T::of(f64::from_le_bytes(b.try_into().expect("8")))).collect()
            }
            Dtype::BF16 => {
                t.data().chunks_exact(2).map(|b| T::of(half::bf16::from_le_bytes([b[0], b[1]]).to_f64())).collect()
            }
            Dtype::F16 => {
                t.data().chunks_exact(2).map(|b| T::of(half::f16::from_le_bytes([b[0], b[1]]).to_f64())).collect()
            }
            d => {
                self.problems.push(format!("{name} has dtype {d:?}, expected F32, F64, BF16 or F16"));
                return zeros();
            }
        };
        ArrayD::from_shape_vec(IxDyn(shape), values).expect("safetensors checked the byte length")
    }

    fn complex<T: Real>(&mut self, name: &str, shape: &[usize]) -> ArrayD<Complex<T>> {
        let mut s = shape.to_vec();
        s.push(2);
        let a = self.real::<T>(name, &s);
        let flat: Vec<T> = a.iter().copied().collect();
        let v: Vec<Complex<T>> = flat.chunks_exact(2).map(|p| Complex::new(p[0], p[1])).collect();
        ArrayD::from_shape_vec(IxDyn(shape), v).expect("pairs")
    }

    fn int(&mut self, name: &str) -> usize {
        self.used.push(name.to_string());
        match self.st.tensor(name) {
            Ok(t) if t.dtype() == Dtype::I64 && t.shape().is_empty() => {
                let v = i64::from_le_bytes(t.data()[..8].try_into().expect("8 bytes"));
                if v < 0 {
                    self.problems.push(format!("{name} = {v} is negative"));
                }
                v.max(0) as usize
            }
            Ok(_) => {
                self.problems.push(format!("{name} must be an int64 scalar"));
                0
            }
            Err(_) => {
                self.problems.push(format!("missing {name} (int64 scalar)"));
                0
            }
        }
    }

    fn finish(self) -> Result<()> {
        let mut problems = self.problems;
        let unexpected: Vec<String> =
            self.st.names().into_iter().filter(|n| !self.used.iter().any(|u| u == *n)).map(|n| n.to_string()).collect();
        if !unexpected.is_empty() {
            problems.push(format!("unexpected {}", unexpected.join(", ")));
        }
        if problems.is_empty() {
            Ok(())
        } else {
            Err(Error::format(self.path, format!("{} problem(s): {}", problems.len(), problems.join("; "))))
        }
    }
}

/// Reads one layer's tensors (official S4Block names) under `prefix`.
fn read_layer<T: Real>(r: &mut Reader, pre: &str, lc: &crate::layer::S4LayerConfig) -> Weights<T> {
    let (h, m, n_ssm, heads, ch) = (lc.d_model, lc.d_state / 2, lc.n_ssm(), lc.c_heads(), lc.channels);
    let rank =
        r.st.tensor(&format!("{pre}layer.kernel.P")).map(|t| t.shape().first().copied().unwrap_or(1)).unwrap_or(1);
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
    let path = dir.join(WEIGHTS_FILE);
    let bytes = std::fs::read(&path).map_err(|e| Error::io(&path, e))?;
    let st = SafeTensors::deserialize(&bytes)
        .map_err(|e| Error::format(&path, format!("not a valid safetensors file: {e}")))?;
    let mut r = Reader { st, path: &path, problems: Vec::new(), used: Vec::new() };
    let lc = &cfg.layer;
    let h = lc.d_model;
    let encoder = match cfg.vocab_size {
        Some(v) => Encoder::Embedding { table: d2(r.real::<T>("encoder.weight", &[v, h])) },
        None => {
            Encoder::Linear { w: d2(r.real("encoder.weight", &[h, cfg.d_input])), b: d1(r.real("encoder.bias", &[h])) }
        }
    };
    let read_norm = |r: &mut Reader, prefix: &str| -> Norm<T> {
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
    let final_norm = cfg.prenorm.then(|| read_norm(&mut r, "norm."));
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

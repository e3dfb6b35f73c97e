//! Import of the official PyTorch state dicts (state-spaces/s4 at e757cef): the standalone
//! `S4Block` of `models/s4/s4.py` (modes `dplr` and `diag`) and the minimal `S4D` of
//! `models/s4/s4d.py`, from safetensors (see `tools/convert_official.py` for `.pt` files) plus the
//! keyword arguments the module was built with.
//!
//! Conventions (s4-math note §1.9 and the fixtures' README):
//! * complex tensors are stored as real tensors with a trailing dimension of 2 (real, imag);
//! * S4Block: Δ = exp(inv_dt) or softplus(inv_dt) (`dt_transform`), Re Λ = −exp(A_real),
//!   Im Λ = −A_imag, C is C̃ tied to `l_kernel` once the module has run forward (0: plain C),
//!   channel h uses SSM copy h mod n_ssm, `output_linear.0` is a Linear(channels·H, 2H) before GLU;
//! * S4D: Δ = exp(log_dt), Λ = −exp(log_A_real) **+** i·A_imag (the opposite imaginary sign), B = 1,
//!   ZOH, `output_linear.0` is a kernel-size-1 Conv1d (2H, H, 1).
//!
//! # Example
//!
//! An `S4D(d_model=2, d_state=4)` state dict, built in memory (a real one comes from
//! `tools/convert_official.py`; then use [`import_official_files`]):
//!
//! ```
//! use std::path::Path;
//! use num_complex::Complex;
//! use safetensors::{tensor::TensorView, Dtype};
//! use s4::layer::official::{import_official, OfficialConfig};
//!
//! let (h, m) = (2, 2); // H, N/2
//! let tensors: Vec<(&str, Vec<usize>, Vec<f32>)> = vec![
//!     ("D", vec![h], vec![1.0; h]),
//!     ("kernel.C", vec![h, m, 2], vec![0.5; h * m * 2]), // complex: (re, im) pairs
//!     ("kernel.log_dt", vec![h], vec![0.01f32.ln(), 0.1f32.ln()]),
//!     ("kernel.log_A_real", vec![h, m], vec![0.5f32.ln(); h * m]),
//!     ("kernel.A_imag", vec![h, m], vec![3.0; h * m]),
//!     ("output_linear.0.weight", vec![2 * h, h, 1], vec![0.1; 2 * h * h]),
//!     ("output_linear.0.bias", vec![2 * h], vec![0.0; 2 * h]),
//! ];
//! let bytes: Vec<Vec<u8>> = tensors.iter().map(|t| t.2.iter().flat_map(|x| x.to_le_bytes()).collect()).collect();
//! let views = tensors.iter().zip(&bytes).map(|(t, b)| (t.0, TensorView::new(Dtype::F32, t.1.clone(), b).unwrap()));
//! let st = safetensors::serialize(views, None).unwrap();
//!
//! let s4d = OfficialConfig::from_json(&serde_json::json!({"module": "S4D", "kwargs": {"d_model": 2, "d_state": 4}}))?;
//! let layer = import_official::<f64>(&st, Path::new("s4d.safetensors"), &s4d)?;
//! let p = layer.ssm_params()?;
//! // S4D conventions: Δ = exp(log_dt), Λ = −exp(log_A_real) + i·A_imag
//! assert!((p.dt[1] - 0.1).abs() < 1e-7);
//! assert!((p.lambda[[0, 0]] - Complex::new(-0.5, 3.0)).norm() < 1e-7);
//!
//! // the same bytes are not an S4Block state dict: the first missing tensor is named
//! let block = OfficialConfig::from_json(&serde_json::json!({"d_model": 2, "d_state": 4}))?;
//! let err = import_official::<f64>(&st, Path::new("s4d.safetensors"), &block).unwrap_err();
//! assert!(err.to_string().contains("missing tensor 'layer.D'"), "{err}");
//! // and options this importer does not implement are refused by name
//! let gated = OfficialConfig::from_json(&serde_json::json!({"d_model": 2, "is_real": true}))?;
//! assert!(gated.layer_config().unwrap_err().to_string().contains("official option 'is_real'"));
//! # Ok::<(), s4::Error>(())
//! ```

use super::{RealTransform, S4Layer, S4LayerConfig, Weights};
use crate::discretize::Discretization;
use crate::error::{Error, Result};
use crate::hippo::Measure;
use crate::scalar::Real;
use crate::ssm::{KernelKind, SsmInit};
use ndarray::{Array2, ArrayD, IxDyn};
use num_complex::Complex;
use safetensors::{Dtype, SafeTensors};
use serde_json::Value;
use std::path::Path;

/// Which official module a state dict comes from.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum OfficialModule {
    /// `models/s4/s4.py` `S4Block`.
    S4Block,
    /// `models/s4/s4d.py` `S4D`.
    S4D,
}

/// The official module and its constructor keyword arguments.
#[derive(Clone, Debug)]
pub struct OfficialConfig {
    /// Module.
    pub module: OfficialModule,
    /// Keyword arguments (JSON object; `null` = Python `None`).
    pub kwargs: serde_json::Map<String, Value>,
}

impl OfficialConfig {
    /// Parses either `{"module": "S4Block"|"S4D", "kwargs": {...}}` (the fixtures' config.json) or a
    /// bare kwargs object (then `"module"` inside it, or S4Block).
    ///
    /// # Errors
    /// Not a JSON object, or an unknown module.
    pub fn from_json(v: &Value) -> Result<Self> {
        let obj = v.as_object().ok_or_else(|| Error::invalid("official config", "not an object", "a JSON object"))?;
        let (module, kwargs) = match obj.get("kwargs") {
            Some(k) => (obj.get("module"), k.as_object().cloned().unwrap_or_default()),
            None => (obj.get("module"), obj.clone()),
        };
        let module = match module.and_then(Value::as_str) {
            None | Some("S4Block") => OfficialModule::S4Block,
            Some("S4D") => OfficialModule::S4D,
            Some(m) => return Err(Error::invalid("module", m, "S4Block or S4D")),
        };
        Ok(OfficialConfig { module, kwargs })
    }

    fn get_usize(&self, key: &str, default: Option<usize>) -> Result<Option<usize>> {
        match self.kwargs.get(key) {
            None => Ok(default),
            Some(Value::Null) => Ok(None),
            Some(v) => v
                .as_u64()
                .map(|x| Some(x as usize))
                .ok_or_else(|| Error::invalid(key, v, "a non-negative integer or null")),
        }
    }

    fn get_f64(&self, key: &str, default: f64) -> Result<f64> {
        match self.kwargs.get(key) {
            None | Some(Value::Null) => Ok(default),
            Some(v) => v.as_f64().ok_or_else(|| Error::invalid(key, v, "a number")),
        }
    }

    fn get_str<'a>(&'a self, key: &str, default: &'a str) -> Result<&'a str> {
        match self.kwargs.get(key) {
            None | Some(Value::Null) => Ok(default),
            Some(v) => v.as_str().ok_or_else(|| Error::invalid(key, v, "a string")),
        }
    }

    fn get_bool(&self, key: &str, default: bool) -> Result<bool> {
        match self.kwargs.get(key) {
            None | Some(Value::Null) => Ok(default),
            Some(v) => v.as_bool().ok_or_else(|| Error::invalid(key, v, "true or false")),
        }
    }

    /// The equivalent [`S4LayerConfig`].
    ///
    /// # Errors
    /// Missing `d_model`, or an option this crate does not implement (named in the message).
    pub fn layer_config(&self) -> Result<S4LayerConfig> {
        let d_model =
            self.get_usize("d_model", None)?.ok_or_else(|| Error::invalid("d_model", "missing", "an integer"))?;
        let d_state = self.get_usize("d_state", Some(64))?.unwrap_or(64);
        let dt_min = self.get_f64("dt_min", 1e-3)?;
        let dt_max = self.get_f64("dt_max", 1e-1)?;
        let dropout = self.get_f64("dropout", 0.0)?;
        if self.module == OfficialModule::S4D {
            return Ok(S4LayerConfig {
                d_model,
                d_state,
                kernel: KernelKind::Diag,
                init: SsmInit::Diag(crate::hippo::diag::DiagInit::Lin),
                disc: Some(Discretization::Zoh),
                dt_min,
                dt_max,
                dropout,
                ..S4LayerConfig::default()
            });
        }
        const SUPPORTED: [&str; 24] = [
            "d_model",
            "d_state",
            "mode",
            "kernel",
            "init",
            "disc",
            "dt_min",
            "dt_max",
            "dt_transform",
            "bidirectional",
            "channels",
            "n_ssm",
            "rank",
            "l_max",
            "activation",
            "final_act",
            "transposed",
            "dropout",
            "tie_dropout",
            "real_transform",
            "imag_transform",
            "gate",
            "bottleneck",
            "lr",
        ];
        if let Some(k) = self.kwargs.keys().find(|k| !SUPPORTED.contains(&k.as_str())) {
            return Err(Error::invalid(
                format!("official option '{k}'"),
                &self.kwargs[k],
                "one of the options this importer implements (dt_fast, is_real, gates and the like are not)",
            ));
        }
        let mode = self.get_str("mode", self.get_str("kernel", "dplr")?)?;
        let kernel = match mode {
            "dplr" | "nplr" | "s4" => KernelKind::Dplr,
            "diag" | "s4d" => KernelKind::Diag,
            m => return Err(Error::invalid("mode", m, "dplr, nplr, s4, diag or s4d")),
        };
        let init = match self.get_str("init", "legs")? {
            "legs" | "hippo" => SsmInit::Hippo(Measure::LegS),
            "legt" => SsmInit::Hippo(Measure::LegT),
            "fout" | "fourier" => SsmInit::Hippo(Measure::FouT),
            s => s.parse()?,
        };
        let disc = match (kernel, self.get_str("disc", "zoh")?) {
            (KernelKind::Dplr, _) => Discretization::Bilinear,
            (KernelKind::Diag, "zoh") => Discretization::Zoh,
            (KernelKind::Diag, "bilinear") => Discretization::Bilinear,
            (_, d) => return Err(Error::invalid("disc", d, "zoh or bilinear")),
        };
        for (key, want) in
            [("activation", "gelu"), ("final_act", "glu"), ("real_transform", "exp"), ("imag_transform", "none")]
        {
            let got = self.get_str(key, want)?;
            if got != want {
                return Err(Error::invalid(key, got, format!("{want} (the only value this importer supports)")));
            }
        }
        for key in ["gate", "bottleneck"] {
            if !matches!(self.kwargs.get(key), None | Some(Value::Null)) {
                return Err(Error::invalid(key, &self.kwargs[key], "null (gates and bottlenecks are not supported)"));
            }
        }
        // `transposed` only says how the official module lays out its arrays; the weights are the same
        self.get_bool("transposed", true)?;
        Ok(S4LayerConfig {
            d_model,
            d_state,
            kernel,
            init,
            disc: Some(disc),
            dt_min,
            dt_max,
            dt_transform: self.get_str("dt_transform", "exp")?.parse()?,
            real_transform: RealTransform::Exp,
            n_ssm: self.get_usize("n_ssm", None)?,
            channels: self.get_usize("channels", Some(1))?.unwrap_or(1),
            bidirectional: self.get_bool("bidirectional", false)?,
            l_max: self.get_usize("l_max", None)?,
            dropout,
            seed: 0,
        })
    }
}

/// Reads one float32 tensor by name and checks its shape and that every value is finite.
/// The float32 tensor `name` of shape `shape` from a state dict, checked finite.
///
/// # Errors
/// A missing, mis-typed, mis-shaped or non-finite tensor (named).
pub fn read_real(st: &SafeTensors, path: &Path, name: &str, shape: &[usize]) -> Result<ArrayD<f32>> {
    let t = st
        .tensor(name)
        .map_err(|_| Error::format(path, format!("missing tensor '{name}' (expected shape {shape:?})")))?;
    if t.dtype() != Dtype::F32 {
        return Err(Error::format(path, format!("tensor '{name}' has dtype {:?}, expected float32", t.dtype())));
    }
    if t.shape() != shape {
        return Err(Error::shape(format!("tensor '{name}' in {}", path.display()), format!("{shape:?}"), t.shape()));
    }
    let v: Vec<f32> = t.data().chunks_exact(4).map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]])).collect();
    if let Some(i) = v.iter().position(|x| !x.is_finite()) {
        return Err(Error::format(
            path,
            format!("tensor '{name}' has a non-finite value ({} at flat index {i})", v[i]),
        ));
    }
    Ok(ArrayD::from_shape_vec(IxDyn(shape), v).expect("length checked by safetensors"))
}

fn complex<T: Real>(a: &ArrayD<f32>) -> ArrayD<Complex<T>> {
    let shape = a.shape()[..a.ndim() - 1].to_vec();
    let flat = a.as_slice().expect("fresh array is contiguous");
    let v: Vec<Complex<T>> =
        flat.chunks_exact(2).map(|p| Complex::new(T::of(p[0] as f64), T::of(p[1] as f64))).collect();
    ArrayD::from_shape_vec(IxDyn(&shape), v).expect("pairs of the trailing dimension")
}

/// Imports an official state dict (safetensors bytes) with its configuration into a layer.
///
/// Every expected tensor is checked by name, dtype and shape; unexpected tensors are reported.
///
/// # Errors
/// A missing, mis-shaped, mis-typed or unexpected tensor (named), an unsupported option, or
/// weights that give an unstable or non-finite layer.
pub fn import_official<T: Real>(bytes: &[u8], path: &Path, config: &OfficialConfig) -> Result<S4Layer<T>> {
    let st = SafeTensors::deserialize(bytes)
        .map_err(|e| Error::format(path, format!("not a valid safetensors file: {e}")))?;
    let (layer, expected) = import_block(&st, path, config, "")?;
    let unexpected: Vec<String> =
        st.names().into_iter().filter(|n| !expected.iter().any(|e| e == *n)).map(|n| n.to_string()).collect();
    if !unexpected.is_empty() {
        return Err(Error::format(path, format!("unexpected tensors: {}", unexpected.join(", "))));
    }
    Ok(layer)
}

/// Imports one block of an official state dict: the tensors named `prefix` + the module's own
/// names (e.g. `s4_layers.0.` + `kernel.C` in `example.py`'s model). Returns the layer and the
/// names it read, so a whole-model import can report the tensors nobody read.
///
/// # Errors
/// As [`import_official`], but tensors outside the block are not looked at.
pub fn import_block<T: Real>(
    st: &SafeTensors,
    path: &Path,
    config: &OfficialConfig,
    prefix: &str,
) -> Result<(S4Layer<T>, Vec<String>)> {
    let cfg = config.layer_config()?;
    cfg.validate()?;
    let (h, m) = (cfg.d_model, cfg.d_state / 2);
    let f = |a: ArrayD<f32>| a.mapv(|x| T::of(x as f64));
    let (weights, expected): (Weights<T>, Vec<&str>) = match config.module {
        OfficialModule::S4D => {
            let d = f(read_real(st, path, &format!("{prefix}D"), &[h])?).into_shape_with_order((1, h)).expect("H");
            let c = complex::<T>(&read_real(st, path, &format!("{prefix}kernel.C"), &[h, m, 2])?)
                .into_shape_with_order((1, h, m))
                .expect("(H, M)");
            let log_dt =
                f(read_real(st, path, &format!("{prefix}kernel.log_dt"), &[h])?).into_shape_with_order(h).expect("H");
            let log_a = f(read_real(st, path, &format!("{prefix}kernel.log_A_real"), &[h, m])?)
                .into_shape_with_order((h, m))
                .expect("(H, M)");
            let a_imag = f(read_real(st, path, &format!("{prefix}kernel.A_imag"), &[h, m])?)
                .into_shape_with_order((h, m))
                .expect("(H, M)");
            let w = f(read_real(st, path, &format!("{prefix}output_linear.0.weight"), &[2 * h, h, 1])?)
                .into_shape_with_order((2 * h, h))
                .expect("(2H, H)");
            let bias = f(read_real(st, path, &format!("{prefix}output_linear.0.bias"), &[2 * h])?)
                .into_shape_with_order(2 * h)
                .expect("2H");
            (
                Weights {
                    inv_dt: log_dt,
                    a_real: log_a,
                    // s4d.py: Λ = -exp(log_A_real) + i·A_imag; ours: Im Λ = -a_imag
                    a_imag: a_imag.mapv(|x| -x),
                    b: Array2::from_elem((h, m), Complex::new(T::one(), T::zero())),
                    p: None,
                    c,
                    l_kernel: 0,
                    d,
                    w,
                    bias,
                },
                vec![
                    "D",
                    "kernel.C",
                    "kernel.log_dt",
                    "kernel.log_A_real",
                    "kernel.A_imag",
                    "output_linear.0.weight",
                    "output_linear.0.bias",
                ],
            )
        }
        OfficialModule::S4Block => {
            let (n_ssm, heads, ch) = (cfg.n_ssm(), cfg.c_heads(), cfg.channels);
            let d = f(read_real(st, path, &format!("{prefix}layer.D"), &[ch, h])?)
                .into_shape_with_order((ch, h))
                .expect("(channels, H)");
            let inv_dt_t =
                st.tensor(&format!("{prefix}layer.kernel.inv_dt")).map(|t| t.shape().to_vec()).unwrap_or_default();
            if inv_dt_t.len() == 2 && inv_dt_t[1] != 1 {
                return Err(Error::invalid(
                    format!("{prefix}layer.kernel.inv_dt"),
                    format!("{inv_dt_t:?}"),
                    format!("[{h}, 1] (dt_tie; one Δ per channel)"),
                ));
            }
            let inv_dt = f(read_real(st, path, &format!("{prefix}layer.kernel.inv_dt"), &[h, 1])?)
                .into_shape_with_order(h)
                .expect("H");
            let c = complex::<T>(&read_real(st, path, &format!("{prefix}layer.kernel.C"), &[heads, h, m, 2])?)
                .into_shape_with_order((heads, h, m))
                .expect("(C'', H, M)");
            let b = complex::<T>(&read_real(st, path, &format!("{prefix}layer.kernel.B"), &[1, n_ssm, m, 2])?)
                .into_shape_with_order((n_ssm, m))
                .expect("(n_ssm, M)");
            let a_real = f(read_real(st, path, &format!("{prefix}layer.kernel.A_real"), &[n_ssm, m])?)
                .into_shape_with_order((n_ssm, m))
                .expect("2-D");
            let a_imag = f(read_real(st, path, &format!("{prefix}layer.kernel.A_imag"), &[n_ssm, m])?)
                .into_shape_with_order((n_ssm, m))
                .expect("2-D");
            let w = f(read_real(st, path, &format!("{prefix}output_linear.0.weight"), &[2 * h, ch * h])?)
                .into_shape_with_order((2 * h, ch * h))
                .expect("2-D");
            let bias = f(read_real(st, path, &format!("{prefix}output_linear.0.bias"), &[2 * h])?)
                .into_shape_with_order(2 * h)
                .expect("1-D");
            let mut names = vec![
                "layer.D",
                "layer.kernel.inv_dt",
                "layer.kernel.C",
                "layer.kernel.B",
                "layer.kernel.A_real",
                "layer.kernel.A_imag",
                "output_linear.0.weight",
                "output_linear.0.bias",
            ];
            let (p, l_kernel) = match cfg.kernel {
                KernelKind::Dplr => {
                    let rank = st
                        .tensor(&format!("{prefix}layer.kernel.P"))
                        .map(|t| t.shape().first().copied().unwrap_or(0))
                        .unwrap_or(1);
                    let p =
                        complex::<T>(&read_real(st, path, &format!("{prefix}layer.kernel.P"), &[rank, n_ssm, m, 2])?)
                            .into_shape_with_order((rank, n_ssm, m))
                            .expect("3-D");
                    let lk = st
                        .tensor(&format!("{prefix}layer.kernel.l_kernel"))
                        .map_err(|_| Error::format(path, "missing tensor 'layer.kernel.l_kernel' (int64 scalar)"))?;
                    if lk.dtype() != Dtype::I64 || !lk.shape().is_empty() {
                        return Err(Error::format(path, "tensor 'layer.kernel.l_kernel' must be an int64 scalar"));
                    }
                    let raw = i64::from_le_bytes(lk.data()[..8].try_into().expect("8 bytes"));
                    if raw < 0 {
                        return Err(Error::invalid(format!("{prefix}layer.kernel.l_kernel"), raw, "a length >= 0"));
                    }
                    names.extend(["layer.kernel.P", "layer.kernel.l_kernel"]);
                    (Some(p), raw as usize)
                }
                KernelKind::Diag => (None, 0),
            };
            (Weights { inv_dt, a_real, a_imag, b, p, c, l_kernel, d, w, bias }, names)
        }
    };
    let read = expected.iter().map(|n| format!("{prefix}{n}")).collect();
    Ok((S4Layer::from_parts(cfg, weights)?, read))
}

/// Reads `model.safetensors` and a config JSON from disk and imports them.
///
/// # Errors
/// Unreadable files, invalid JSON, and everything [`import_official`] reports.
pub fn import_official_files<T: Real>(model: &Path, config: &Path) -> Result<S4Layer<T>> {
    let bytes = std::fs::read(model).map_err(|e| Error::io(model, e))?;
    let text = std::fs::read_to_string(config).map_err(|e| Error::io(config, e))?;
    let v: Value = serde_json::from_str(&text).map_err(|e| Error::format(config, format!("invalid JSON: {e}")))?;
    import_official(&bytes, model, &OfficialConfig::from_json(&v)?)
}

//! `s4rs._native`: the PyO3 binding of the s4 library. Every function takes and returns numpy
//! arrays in the library's layouts ((B, H, L) sequences, (H, L) kernels), releases the GIL while
//! it computes, and raises the library's error message as `ValueError` (`OSError` for files).
//! The Pythonic surface (keyword arguments, dtype handling, docstrings) is `s4rs/__init__.py`;
//! this module is what it calls.

use std::path::PathBuf;
use std::sync::{Arc, Mutex, OnceLock};

use ndarray::ArrayView2;
use num_complex::Complex;
use numpy::{IntoPyArray, PyArray1, PyArray2, PyArray3, PyReadonlyArray1, PyReadonlyArray2, PyReadonlyArray3};
use pyo3::exceptions::{PyOSError, PyValueError};
use pyo3::prelude::*;
use pyo3::types::PyDict;

use s4::conv::FftConv;
use s4::hippo::Measure;
use s4::layer::{ForwardOptions, Recurrent, S4Layer, S4LayerConfig};
use s4::model::checkpoint;
use s4::model::{Input, ModelState, RecurrentModel, S4Model, S4ModelConfig, StepInput};
use s4::scalar::{HalfPrecision, MatmulPrecision, Real};
use s4::speculative::{CausalModel, SpecConfig};
use s4::ssm::{SsmInitConfig, SsmParams};

/// The library's error as a Python exception: `OSError` for files, `ValueError` otherwise.
fn py_err(e: s4::Error) -> PyErr {
    match e {
        s4::Error::Io { .. } => PyOSError::new_err(e.to_string()),
        e => PyValueError::new_err(e.to_string()),
    }
}

trait OrPy<T> {
    fn py(self) -> PyResult<T>;
}

impl<T> OrPy<T> for s4::Result<T> {
    fn py(self) -> PyResult<T> {
        self.map_err(py_err)
    }
}

fn json_err(what: &str, e: serde_json::Error) -> PyErr {
    PyValueError::new_err(format!("invalid {what}: {e}"))
}

fn parse<T: std::str::FromStr<Err = s4::Error>>(s: &str) -> PyResult<T> {
    s.parse().map_err(py_err)
}

// ---------------------------------------------------------------------------------------------
// S4 maths and kernels

/// A pair of float64 arrays: a matrix and a vector.
type MatrixVector<'py> = (Bound<'py, PyArray2<f64>>, Bound<'py, PyArray1<f64>>);

/// HiPPO (A, B) of `measure` at state size `n`, float64.
#[pyfunction]
fn hippo<'py>(py: Python<'py>, measure: &str, n: usize) -> PyResult<MatrixVector<'py>> {
    let m: Measure = parse(measure)?;
    let (a, b) = py.detach(|| s4::hippo::transition(m, n)).py()?;
    Ok((a.into_pyarray(py), b.into_pyarray(py)))
}

/// The DPLR form of HiPPO `measure` at state size `n`: a dict of Lambda (N/2,), P (R, N/2),
/// B (N/2,), V (N, N/2) complex128 and P_real (R, N) float64.
#[pyfunction]
fn dplr<'py>(py: Python<'py>, measure: &str, n: usize) -> PyResult<Bound<'py, PyDict>> {
    let m: Measure = parse(measure)?;
    let d = py.detach(|| s4::hippo::nplr(m, n)).py()?;
    let out = PyDict::new(py);
    out.set_item("Lambda", d.lambda.into_pyarray(py))?;
    out.set_item("P", d.p.into_pyarray(py))?;
    out.set_item("B", d.b.into_pyarray(py))?;
    out.set_item("V", d.v.into_pyarray(py))?;
    out.set_item("P_real", d.p_real.into_pyarray(py))?;
    Ok(out)
}

/// SSM parameters drawn as a layer draws them, from the JSON of an `SsmInitConfig`: a dict of
/// Lambda (H, N/2), P (R, H, N/2) or None, B and C (H, N/2) complex128, dt (H,) float64.
#[pyfunction]
fn init_ssm<'py>(py: Python<'py>, config_json: &str) -> PyResult<Bound<'py, PyDict>> {
    let cfg: SsmInitConfig = serde_json::from_str(config_json).map_err(|e| json_err("SSM init settings", e))?;
    let p = py.detach(|| cfg.draw()).py()?;
    params_dict(py, p)
}

fn params_dict(py: Python<'_>, p: SsmParams<f64>) -> PyResult<Bound<'_, PyDict>> {
    let out = PyDict::new(py);
    out.set_item("Lambda", p.lambda.into_pyarray(py))?;
    match p.p {
        Some(pp) => out.set_item("P", pp.into_pyarray(py))?,
        None => out.set_item("P", py.None())?,
    }
    out.set_item("B", p.b.into_pyarray(py))?;
    out.set_item("C", p.c.into_pyarray(py))?;
    out.set_item("dt", p.dt.into_pyarray(py))?;
    Ok(out)
}

fn params_from(
    lambda: PyReadonlyArray2<'_, Complex<f64>>,
    p: Option<PyReadonlyArray3<'_, Complex<f64>>>,
    b: PyReadonlyArray2<'_, Complex<f64>>,
    c: PyReadonlyArray2<'_, Complex<f64>>,
    dt: PyReadonlyArray1<'_, f64>,
) -> SsmParams<f64> {
    SsmParams {
        lambda: lambda.as_array().to_owned(),
        p: p.map(|p| p.as_array().to_owned()),
        b: b.as_array().to_owned(),
        c: c.as_array().to_owned(),
        dt: dt.as_array().to_owned(),
    }
}

/// The kernel (H, length) of continuous parameters by the fast method of their kind (DPLR if P is
/// given, else S4D), in float32 or float64 (`double`).
#[pyfunction]
#[pyo3(signature = (lambda_, p, b, c, dt, length, disc = None, double = false))]
#[allow(clippy::too_many_arguments)]
fn ssm_kernel<'py>(
    py: Python<'py>,
    lambda_: PyReadonlyArray2<'py, Complex<f64>>,
    p: Option<PyReadonlyArray3<'py, Complex<f64>>>,
    b: PyReadonlyArray2<'py, Complex<f64>>,
    c: PyReadonlyArray2<'py, Complex<f64>>,
    dt: PyReadonlyArray1<'py, f64>,
    length: usize,
    disc: Option<&str>,
    double: bool,
) -> PyResult<Bound<'py, pyo3::PyAny>> {
    let params = params_from(lambda_, p, b, c, dt);
    let disc = disc.map(parse).transpose()?;
    Ok(if double {
        py.detach(|| s4::kernel::ssm_kernel::<f64>(&params, length, disc)).py()?.into_pyarray(py).into_any()
    } else {
        py.detach(|| s4::kernel::ssm_kernel::<f32>(&params, length, disc)).py()?.into_pyarray(py).into_any()
    })
}

/// The reference kernel (H, length) by matrix powers K_l = C Ā^l B̄ (float64; O(L·N²) per channel).
#[pyfunction]
#[pyo3(signature = (lambda_, p, b, c, dt, length, disc = None))]
#[allow(clippy::too_many_arguments)]
fn ssm_kernel_naive<'py>(
    py: Python<'py>,
    lambda_: PyReadonlyArray2<'py, Complex<f64>>,
    p: Option<PyReadonlyArray3<'py, Complex<f64>>>,
    b: PyReadonlyArray2<'py, Complex<f64>>,
    c: PyReadonlyArray2<'py, Complex<f64>>,
    dt: PyReadonlyArray1<'py, f64>,
    length: usize,
    disc: Option<&str>,
) -> PyResult<Bound<'py, PyArray2<f64>>> {
    let params = params_from(lambda_, p, b, c, dt);
    let disc = match disc {
        Some(d) => parse(d)?,
        None => s4::kernel::default_discretization(params.kind()),
    };
    Ok(py.detach(|| s4::kernel::ssm_kernel_naive(&params, length, disc)).py()?.into_pyarray(py))
}

fn conv_typed<'py, T: Real + numpy::Element>(
    py: Python<'py>,
    u: &Bound<'py, PyAny>,
    k: &Bound<'py, PyAny>,
    k_bwd: Option<&Bound<'py, PyAny>>,
    d: Option<&Bound<'py, PyAny>>,
) -> PyResult<Bound<'py, PyArray3<T>>> {
    let u: PyReadonlyArray3<'py, T> = u.extract()?;
    let k: PyReadonlyArray2<'py, T> = k.extract()?;
    let kb: Option<PyReadonlyArray2<'py, T>> = k_bwd.map(|x| x.extract()).transpose()?;
    let d: Option<PyReadonlyArray1<'py, T>> = d.map(|x| x.extract()).transpose()?;
    let (u, k) = (u.as_array(), k.as_array());
    let kb = kb.as_ref().map(|x| x.as_array());
    let d = d.as_ref().map(|x| x.as_array());
    let y = py.detach(|| {
        let mut conv = FftConv::<T>::new();
        match kb {
            Some(kb) => conv.bidirectional(u, k, kb, d),
            None => conv.causal(u, k, d),
        }
    });
    Ok(y.py()?.into_pyarray(py))
}

/// FFT convolution y = K * u (+ D u): u (B, H, L), k (H, L_k); with k_bwd, the bidirectional
/// convolution. All arrays of one dtype, float32 or float64 (`double`).
#[pyfunction]
#[pyo3(signature = (u, k, k_bwd = None, d = None, double = false))]
fn fft_conv<'py>(
    py: Python<'py>,
    u: &Bound<'py, PyAny>,
    k: &Bound<'py, PyAny>,
    k_bwd: Option<&Bound<'py, PyAny>>,
    d: Option<&Bound<'py, PyAny>>,
    double: bool,
) -> PyResult<Bound<'py, PyAny>> {
    Ok(if double {
        conv_typed::<f64>(py, u, k, k_bwd, d)?.into_any()
    } else {
        conv_typed::<f32>(py, u, k, k_bwd, d)?.into_any()
    })
}

// ---------------------------------------------------------------------------------------------
// States

/// A recurrent state of a layer ((B, H, N/2) complex) or of a model (one per layer): an opaque
/// value; `copy()` is a snapshot.
#[pyclass(module = "s4rs._native")]
#[derive(Clone)]
struct State {
    inner: StateInner,
}

#[derive(Clone)]
enum StateInner {
    Layer32(s4::layer::State<f32>),
    Layer64(s4::layer::State<f64>),
    Model32(ModelState<f32>),
    Model64(ModelState<f64>),
}

#[pymethods]
impl State {
    /// A snapshot: stepping the copy leaves this state as it is.
    fn copy(&self) -> State {
        self.clone()
    }

    fn __copy__(&self) -> State {
        self.clone()
    }

    fn __deepcopy__(&self, _memo: &Bound<'_, PyAny>) -> State {
        self.clone()
    }

    /// Number of sequences.
    #[getter]
    fn batch(&self) -> usize {
        match &self.inner {
            StateInner::Layer32(s) => s.batch(),
            StateInner::Layer64(s) => s.batch(),
            StateInner::Model32(s) => s.layers.first().map_or(0, |l| l.batch()),
            StateInner::Model64(s) => s.layers.first().map_or(0, |l| l.batch()),
        }
    }

    /// The state's values: (B, H, N/2) complex for a layer, a list of those for a model
    /// (complex64 or complex128).
    fn numpy<'py>(&self, py: Python<'py>) -> PyResult<Py<PyAny>> {
        Ok(match &self.inner {
            StateInner::Layer32(s) => s.x.clone().into_pyarray(py).into_any().unbind(),
            StateInner::Layer64(s) => s.x.clone().into_pyarray(py).into_any().unbind(),
            StateInner::Model32(s) => s
                .layers
                .iter()
                .map(|l| l.x.clone().into_pyarray(py))
                .collect::<Vec<_>>()
                .into_pyobject(py)?
                .into_any()
                .unbind(),
            StateInner::Model64(s) => s
                .layers
                .iter()
                .map(|l| l.x.clone().into_pyarray(py))
                .collect::<Vec<_>>()
                .into_pyobject(py)?
                .into_any()
                .unbind(),
        })
    }

    fn __repr__(&self) -> String {
        let (what, dtype) = match &self.inner {
            StateInner::Layer32(_) => ("layer", "float32"),
            StateInner::Layer64(_) => ("layer", "float64"),
            StateInner::Model32(_) => ("model", "float32"),
            StateInner::Model64(_) => ("model", "float64"),
        };
        format!("<s4rs.State of a {what}, batch {}, {dtype}>", self.batch())
    }
}

fn wrong_state(expected: &str) -> PyErr {
    PyValueError::new_err(format!("invalid state: expected the state of {expected}"))
}

// ---------------------------------------------------------------------------------------------
// Layer

/// One S4 layer (the official `S4Block`) with its recurrent form built on first use.
struct TypedLayer<T> {
    layer: S4Layer<T>,
    recurrent: OnceLock<Recurrent<T>>,
}

impl<T: Real> TypedLayer<T> {
    fn new(layer: S4Layer<T>) -> Self {
        TypedLayer { layer, recurrent: OnceLock::new() }
    }

    fn recurrent(&self) -> s4::Result<&Recurrent<T>> {
        if let Some(r) = self.recurrent.get() {
            return Ok(r);
        }
        let r = self.layer.recurrent()?;
        Ok(self.recurrent.get_or_init(|| r))
    }
}

enum LayerInner {
    F32(TypedLayer<f32>),
    F64(TypedLayer<f64>),
}

/// An S4 layer in float32 or float64.
#[pyclass(module = "s4rs._native", frozen)]
struct Layer {
    inner: LayerInner,
}

trait StateOf: Real {
    fn layer_ref(s: &StateInner) -> Option<&s4::layer::State<Self>>;
    fn model_ref(s: &StateInner) -> Option<&ModelState<Self>>;
    fn wrap(s: s4::layer::State<Self>) -> StateInner;
    fn unwrap(s: &mut StateInner) -> Option<&mut s4::layer::State<Self>>;
    fn wrap_model(s: ModelState<Self>) -> StateInner;
    fn unwrap_model(s: &mut StateInner) -> Option<&mut ModelState<Self>>;
}

impl StateOf for f32 {
    fn layer_ref(s: &StateInner) -> Option<&s4::layer::State<f32>> {
        match s {
            StateInner::Layer32(s) => Some(s),
            _ => None,
        }
    }
    fn model_ref(s: &StateInner) -> Option<&ModelState<f32>> {
        match s {
            StateInner::Model32(s) => Some(s),
            _ => None,
        }
    }
    fn wrap(s: s4::layer::State<f32>) -> StateInner {
        StateInner::Layer32(s)
    }
    fn unwrap(s: &mut StateInner) -> Option<&mut s4::layer::State<f32>> {
        match s {
            StateInner::Layer32(s) => Some(s),
            _ => None,
        }
    }
    fn wrap_model(s: ModelState<f32>) -> StateInner {
        StateInner::Model32(s)
    }
    fn unwrap_model(s: &mut StateInner) -> Option<&mut ModelState<f32>> {
        match s {
            StateInner::Model32(s) => Some(s),
            _ => None,
        }
    }
}

impl StateOf for f64 {
    fn layer_ref(s: &StateInner) -> Option<&s4::layer::State<f64>> {
        match s {
            StateInner::Layer64(s) => Some(s),
            _ => None,
        }
    }
    fn model_ref(s: &StateInner) -> Option<&ModelState<f64>> {
        match s {
            StateInner::Model64(s) => Some(s),
            _ => None,
        }
    }
    fn wrap(s: s4::layer::State<f64>) -> StateInner {
        StateInner::Layer64(s)
    }
    fn unwrap(s: &mut StateInner) -> Option<&mut s4::layer::State<f64>> {
        match s {
            StateInner::Layer64(s) => Some(s),
            _ => None,
        }
    }
    fn wrap_model(s: ModelState<f64>) -> StateInner {
        StateInner::Model64(s)
    }
    fn unwrap_model(s: &mut StateInner) -> Option<&mut ModelState<f64>> {
        match s {
            StateInner::Model64(s) => Some(s),
            _ => None,
        }
    }
}

fn layer_forward<'py, T: StateOf + numpy::Element>(
    py: Python<'py>,
    l: &TypedLayer<T>,
    x: &Bound<'py, PyAny>,
    lengths: Option<Vec<usize>>,
    state: Option<&State>,
    return_state: bool,
) -> PyResult<(Bound<'py, PyArray3<T>>, Option<State>)> {
    let x: PyReadonlyArray3<'py, T> = x.extract()?;
    let initial_state = match state {
        Some(s) => Some(T::layer_ref(&s.inner).cloned().ok_or_else(|| wrong_state("this layer's dtype"))?),
        None => None,
    };
    let opts = ForwardOptions { lengths, initial_state, return_state, dropout_seed: None };
    let x = x.as_array();
    let out = py.detach(|| l.layer.forward(x, &opts)).py()?;
    Ok((out.y.into_pyarray(py), out.state.map(|s| State { inner: T::wrap(s) })))
}

fn layer_step<'py, T: StateOf + numpy::Element>(
    py: Python<'py>,
    l: &TypedLayer<T>,
    state: &mut State,
    u: &Bound<'py, PyAny>,
) -> PyResult<Bound<'py, PyArray2<T>>> {
    let u: PyReadonlyArray2<'py, T> = u.extract()?;
    let s = T::unwrap(&mut state.inner).ok_or_else(|| wrong_state("a layer of this dtype"))?;
    let u = u.as_array();
    let y = py.detach(|| l.recurrent()?.step(s, u)).py()?;
    Ok(y.into_pyarray(py))
}

#[pymethods]
impl Layer {
    /// A new layer from the JSON of an `S4LayerConfig` (float64 if `double`).
    #[staticmethod]
    #[pyo3(signature = (config_json, double = false))]
    fn from_config(py: Python<'_>, config_json: &str, double: bool) -> PyResult<Layer> {
        let cfg: S4LayerConfig = serde_json::from_str(config_json).map_err(|e| json_err("layer settings", e))?;
        let inner = py.detach(|| -> s4::Result<LayerInner> {
            Ok(if double {
                LayerInner::F64(TypedLayer::new(cfg.build_as::<f64>()?))
            } else {
                LayerInner::F32(TypedLayer::new(cfg.build_as::<f32>()?))
            })
        });
        Ok(Layer { inner: inner.py()? })
    }

    /// The layer saved in folder `path` (`s4 import-official`, `save`).
    #[staticmethod]
    #[pyo3(signature = (path, double = false))]
    fn load(py: Python<'_>, path: PathBuf, double: bool) -> PyResult<Layer> {
        let inner = py.detach(|| -> s4::Result<LayerInner> {
            Ok(if double {
                LayerInner::F64(TypedLayer::new(checkpoint::load_layer::<f64>(&path)?))
            } else {
                LayerInner::F32(TypedLayer::new(checkpoint::load_layer::<f32>(&path)?))
            })
        });
        Ok(Layer { inner: inner.py()? })
    }

    /// Saves the layer into folder `path` (config.json + model.safetensors, written whole).
    fn save(&self, py: Python<'_>, path: PathBuf) -> PyResult<()> {
        py.detach(|| match &self.inner {
            LayerInner::F32(l) => checkpoint::save_layer(&l.layer, &path),
            LayerInner::F64(l) => checkpoint::save_layer(&l.layer, &path),
        })
        .py()
    }

    /// The settings as JSON.
    fn config_json(&self) -> String {
        let cfg = match &self.inner {
            LayerInner::F32(l) => l.layer.config(),
            LayerInner::F64(l) => l.layer.config(),
        };
        serde_json::to_string(cfg).expect("a config serializes")
    }

    /// Whether the layer computes in float64.
    #[getter]
    fn double(&self) -> bool {
        matches!(self.inner, LayerInner::F64(_))
    }

    /// Convolutional mode: x (B, H, L) -> (y (B, H, L), final state or None).
    #[pyo3(signature = (x, lengths = None, state = None, return_state = false))]
    fn forward<'py>(
        &self,
        py: Python<'py>,
        x: &Bound<'py, PyAny>,
        lengths: Option<Vec<usize>>,
        state: Option<PyRef<'py, State>>,
        return_state: bool,
    ) -> PyResult<(Bound<'py, PyAny>, Option<State>)> {
        let state = state.as_deref();
        Ok(match &self.inner {
            LayerInner::F32(l) => {
                let (y, s) = layer_forward(py, l, x, lengths, state, return_state)?;
                (y.into_any(), s)
            }
            LayerInner::F64(l) => {
                let (y, s) = layer_forward(py, l, x, lengths, state, return_state)?;
                (y.into_any(), s)
            }
        })
    }

    /// The zero state for `batch` sequences.
    fn zero_state(&self, py: Python<'_>, batch: usize) -> PyResult<State> {
        let inner = py.detach(|| -> s4::Result<StateInner> {
            Ok(match &self.inner {
                LayerInner::F32(l) => StateInner::Layer32(l.recurrent()?.zero_state(batch)),
                LayerInner::F64(l) => StateInner::Layer64(l.recurrent()?.zero_state(batch)),
            })
        });
        Ok(State { inner: inner.py()? })
    }

    /// Recurrent mode: advances `state` in place by u (B, H) and returns y (B, H).
    fn step<'py>(
        &self,
        py: Python<'py>,
        mut state: PyRefMut<'py, State>,
        u: &Bound<'py, PyAny>,
    ) -> PyResult<Bound<'py, PyAny>> {
        Ok(match &self.inner {
            LayerInner::F32(l) => layer_step(py, l, &mut state, u)?.into_any(),
            LayerInner::F64(l) => layer_step(py, l, &mut state, u)?.into_any(),
        })
    }

    /// The SSM kernel (channels, H, length) the layer convolves with.
    fn kernel<'py>(&self, py: Python<'py>, length: usize) -> PyResult<Bound<'py, PyAny>> {
        Ok(match &self.inner {
            LayerInner::F32(l) => py.detach(|| l.layer.kernel(length)).py()?.into_pyarray(py).into_any(),
            LayerInner::F64(l) => py.detach(|| l.layer.kernel(length)).py()?.into_pyarray(py).into_any(),
        })
    }
}

// ---------------------------------------------------------------------------------------------
// Model

/// A model with its recurrent form, built on the first step and kept: it owns a copy of the
/// weights, so stepping costs one step, not a re-discretization of every layer.
struct TypedModel<T: Real> {
    model: S4Model<T>,
    recurrent: OnceLock<RecurrentModel<'static, T>>,
}

impl<T: Real> TypedModel<T> {
    fn new(model: S4Model<T>) -> Self {
        TypedModel { model, recurrent: OnceLock::new() }
    }

    fn recurrent(&self) -> s4::Result<&RecurrentModel<'static, T>> {
        if let Some(r) = self.recurrent.get() {
            return Ok(r);
        }
        let r = self.model.clone().into_recurrent()?;
        Ok(self.recurrent.get_or_init(|| r))
    }
}

impl<T: Real> std::ops::Deref for TypedModel<T> {
    type Target = S4Model<T>;
    fn deref(&self) -> &S4Model<T> {
        &self.model
    }
}

enum ModelInner {
    F32(TypedModel<f32>),
    F64(TypedModel<f64>),
}

/// A deep S4 model (encoder, residual S4 blocks, decoder) in float32 or float64.
#[pyclass(module = "s4rs._native", frozen)]
struct Model {
    inner: ModelInner,
}

fn model_forward<'py, T: StateOf + numpy::Element>(
    py: Python<'py>,
    m: &S4Model<T>,
    x: &Bound<'py, PyAny>,
    lengths: Option<Vec<usize>>,
    state: Option<&State>,
    return_state: bool,
) -> PyResult<(Bound<'py, PyArray3<T>>, Option<State>)> {
    let initial = match state {
        Some(s) => Some(T::model_ref(&s.inner).cloned().ok_or_else(|| wrong_state("a model of this dtype"))?),
        None => None,
    };
    let lengths = lengths.as_deref();
    let (y, s) = if let Ok(tokens) = x.extract::<PyReadonlyArray2<'py, u32>>() {
        let t = tokens.as_array();
        py.detach(|| m.forward_with_state(Input::Tokens(t), lengths, initial.as_ref(), return_state))
    } else {
        let feats: PyReadonlyArray3<'py, T> = x.extract()?;
        let f = feats.as_array();
        py.detach(|| m.forward_with_state(Input::Features(f), lengths, initial.as_ref(), return_state))
    }
    .py()?;
    Ok((y.into_pyarray(py), s.map(|s| State { inner: T::wrap_model(s) })))
}

fn model_step<'py, T: StateOf + numpy::Element>(
    py: Python<'py>,
    m: &TypedModel<T>,
    state: &mut State,
    x: &Bound<'py, PyAny>,
) -> PyResult<Bound<'py, PyArray2<T>>> {
    let s = T::unwrap_model(&mut state.inner).ok_or_else(|| wrong_state("a model of this dtype"))?;
    let y = if let Ok(tokens) = x.extract::<PyReadonlyArray1<'py, u32>>() {
        let t = tokens.as_array().to_vec();
        py.detach(|| m.recurrent()?.step_tokens(s, &t))
    } else {
        let feats: PyReadonlyArray2<'py, T> = x.extract()?;
        let f: ArrayView2<'_, T> = feats.as_array();
        py.detach(|| m.recurrent()?.step(s, StepInput::Features(f)))
    }
    .py()?;
    Ok(y.into_pyarray(py))
}

#[pymethods]
impl Model {
    /// A new model from the JSON of an `S4ModelConfig` (float64 if `double`).
    #[staticmethod]
    #[pyo3(signature = (config_json, double = false))]
    fn from_config(py: Python<'_>, config_json: &str, double: bool) -> PyResult<Model> {
        let cfg: S4ModelConfig = serde_json::from_str(config_json).map_err(|e| json_err("model settings", e))?;
        let inner = py.detach(|| -> s4::Result<ModelInner> {
            Ok(if double {
                ModelInner::F64(TypedModel::new(cfg.build_as()?))
            } else {
                ModelInner::F32(TypedModel::new(cfg.build_as()?))
            })
        });
        Ok(Model { inner: inner.py()? })
    }

    /// The settings (JSON) of the causal language-model preset over `vocab_size` tokens.
    #[staticmethod]
    fn causal_lm_config(vocab_size: usize) -> String {
        serde_json::to_string(&S4ModelConfig::causal_lm(vocab_size)).expect("a config serializes")
    }

    /// The model saved in folder `path` (a model folder, or a training run's `checkpoint/`).
    #[staticmethod]
    #[pyo3(signature = (path, double = false))]
    fn load(py: Python<'_>, path: PathBuf, double: bool) -> PyResult<Model> {
        let inner = py.detach(|| -> s4::Result<ModelInner> {
            Ok(if double {
                ModelInner::F64(TypedModel::new(checkpoint::load(&path)?))
            } else {
                ModelInner::F32(TypedModel::new(checkpoint::load(&path)?))
            })
        });
        Ok(Model { inner: inner.py()? })
    }

    /// A whole model of the official code from its state dict (safetensors at `weights`) and its
    /// settings (JSON): `example.py`'s `S4Model` (`{"module": "S4Model", "kwargs": …}` or the
    /// kwargs alone) or a training-repository checkpoint (`{"module": "SequenceModel", "model",
    /// "encoder", "decoder"}` or a Hydra config dump holding those sections).
    #[staticmethod]
    #[pyo3(signature = (weights, config_json, double = false))]
    fn import_official(py: Python<'_>, weights: PathBuf, config_json: &str, double: bool) -> PyResult<Model> {
        use s4::model::official::{ExampleS4Model, OfficialModel};
        let v: serde_json::Value = serde_json::from_str(config_json).map_err(|e| json_err("official settings", e))?;
        // a whole-model description, or else example.py's keyword arguments alone
        let official = match OfficialModel::from_json(&v).py()? {
            Some(o) => o,
            None => OfficialModel::Example(ExampleS4Model::from_json(&v).py()?),
        };
        let inner = py.detach(|| -> s4::Result<ModelInner> {
            let bytes = std::fs::read(&weights).map_err(|e| s4::Error::io(&weights, e))?;
            Ok(if double {
                ModelInner::F64(TypedModel::new(official.import(&bytes, &weights)?))
            } else {
                ModelInner::F32(TypedModel::new(official.import(&bytes, &weights)?))
            })
        });
        Ok(Model { inner: inner.py()? })
    }

    /// Writes the model as an official state dict (safetensors at `weights`): `to` is
    /// "sequence-model" (the training repository, Lightning names) or "example" (`example.py`'s
    /// `S4Model`). Returns the settings (JSON) that rebuild it.
    #[pyo3(signature = (weights, to = "sequence-model"))]
    fn export_official(&self, py: Python<'_>, weights: PathBuf, to: &str) -> PyResult<String> {
        use s4::model::official::{export_official, OfficialTarget};
        let target = match to {
            "sequence-model" => OfficialTarget::SequenceModel,
            "example" => OfficialTarget::Example,
            _ => {
                return Err(PyValueError::new_err(format!(
                    "invalid to = {to:?}: expected \"sequence-model\" or \"example\""
                )))
            }
        };
        py.detach(|| -> s4::Result<String> {
            let (bytes, official) = match &self.inner {
                ModelInner::F32(m) => export_official(m, target)?,
                ModelInner::F64(m) => export_official(m, target)?,
            };
            s4::io::write_atomic(&weights, &bytes)?;
            Ok(official.to_json().to_string())
        })
        .py()
    }

    /// Saves the model into folder `path`; `weights` "bf16" or "f16" stores 16-bit weights.
    #[pyo3(signature = (path, weights = None))]
    fn save(&self, py: Python<'_>, path: PathBuf, weights: Option<&str>) -> PyResult<()> {
        let half: Option<HalfPrecision> = weights.map(parse).transpose()?;
        py.detach(|| match &self.inner {
            ModelInner::F32(m) => checkpoint::save_as(m, &path, half),
            ModelInner::F64(m) => checkpoint::save_as(m, &path, half),
        })
        .py()
    }

    /// The settings as JSON.
    fn config_json(&self) -> String {
        let cfg = match &self.inner {
            ModelInner::F32(m) => m.config(),
            ModelInner::F64(m) => m.config(),
        };
        serde_json::to_string(cfg).expect("a config serializes")
    }

    /// Whether the model computes in float64.
    #[getter]
    fn double(&self) -> bool {
        matches!(self.inner, ModelInner::F64(_))
    }

    /// Convolutional mode over tokens (B, L) uint32 or features (B, d_input, L).
    #[pyo3(signature = (x, lengths = None, state = None, return_state = false))]
    fn forward<'py>(
        &self,
        py: Python<'py>,
        x: &Bound<'py, PyAny>,
        lengths: Option<Vec<usize>>,
        state: Option<PyRef<'py, State>>,
        return_state: bool,
    ) -> PyResult<(Bound<'py, PyAny>, Option<State>)> {
        let state = state.as_deref();
        Ok(match &self.inner {
            ModelInner::F32(m) => {
                let (y, s) = model_forward(py, m, x, lengths, state, return_state)?;
                (y.into_any(), s)
            }
            ModelInner::F64(m) => {
                let (y, s) = model_forward(py, m, x, lengths, state, return_state)?;
                (y.into_any(), s)
            }
        })
    }

    /// The zero state for `batch` sequences.
    fn zero_state(&self, py: Python<'_>, batch: usize) -> PyResult<State> {
        let inner = py.detach(|| -> s4::Result<StateInner> {
            Ok(match &self.inner {
                ModelInner::F32(m) => StateInner::Model32(m.recurrent()?.zero_state(batch)),
                ModelInner::F64(m) => StateInner::Model64(m.recurrent()?.zero_state(batch)),
            })
        });
        Ok(State { inner: inner.py()? })
    }

    /// A language model's prompt (B, L) in convolutional mode: (logits of the last position
    /// (B, vocab), the state to continue from).
    fn prefill<'py>(
        &self,
        py: Python<'py>,
        tokens: PyReadonlyArray2<'py, u32>,
    ) -> PyResult<(Bound<'py, PyAny>, State)> {
        let t = tokens.as_array();
        Ok(match &self.inner {
            ModelInner::F32(m) => {
                let (y, s) = py.detach(|| m.prefill(t)).py()?;
                (y.into_pyarray(py).into_any(), State { inner: StateInner::Model32(s) })
            }
            ModelInner::F64(m) => {
                let (y, s) = py.detach(|| m.prefill(t)).py()?;
                (y.into_pyarray(py).into_any(), State { inner: StateInner::Model64(s) })
            }
        })
    }

    /// Recurrent mode: advances `state` in place by one input per sequence (tokens (B,) uint32 or
    /// features (B, d_input)) and returns the outputs (B, d_output).
    fn step<'py>(
        &self,
        py: Python<'py>,
        mut state: PyRefMut<'py, State>,
        x: &Bound<'py, PyAny>,
    ) -> PyResult<Bound<'py, PyAny>> {
        Ok(match &self.inner {
            ModelInner::F32(m) => model_step(py, m, &mut state, x)?.into_any(),
            ModelInner::F64(m) => model_step(py, m, &mut state, x)?.into_any(),
        })
    }
}

// ---------------------------------------------------------------------------------------------
// Language models and speculative decoding

/// A causal language model folder: GPT-2 layout or S4.
#[pyclass(module = "s4rs._native", frozen)]
struct LanguageModel {
    model: Arc<CausalModel>,
}

fn generation_dict<'py>(py: Python<'py>, g: &s4::speculative::Generation) -> PyResult<Bound<'py, PyDict>> {
    let out = PyDict::new(py);
    out.set_item("ids", g.tokens.clone())?;
    out.set_item("stats_json", serde_json::to_string(&g.stats).expect("stats serialize"))?;
    Ok(out)
}

#[pymethods]
impl LanguageModel {
    /// The model in folder `path` (`s4 train-lm`, `s4 distill`, a Hugging Face GPT-2 folder);
    /// `weights` "bf16" or "f16" decodes from 16-bit weights (`s4 generate --weights`), and
    /// `matmul_precision` "medium" makes a transformer's decoding products bf16 (lossy; `s4
    /// generate --matmul-precision`).
    #[staticmethod]
    #[pyo3(signature = (path, weights = None, matmul_precision = None))]
    fn load(
        py: Python<'_>,
        path: PathBuf,
        weights: Option<&str>,
        matmul_precision: Option<&str>,
    ) -> PyResult<LanguageModel> {
        let half: Option<HalfPrecision> = weights.map(parse).transpose()?;
        let matmul: Option<MatmulPrecision> = matmul_precision.map(parse).transpose()?;
        let m = py
            .detach(|| -> s4::Result<CausalModel> {
                let mut m = CausalModel::load(&path)?;
                if half.is_some() {
                    m.set_weights(half)?;
                }
                if let Some(p) = matmul {
                    m.set_matmul_precision(p)?;
                }
                Ok(m)
            })
            .py()?;
        Ok(LanguageModel { model: Arc::new(m) })
    }

    /// Vocabulary size.
    #[getter]
    fn vocab_size(&self) -> usize {
        self.model.vocab()
    }

    /// The longest sequence it takes (None: no limit).
    #[getter]
    fn context(&self) -> Option<usize> {
        self.model.context()
    }

    /// Whether it is a transformer (else an S4 model).
    #[getter]
    fn is_transformer(&self) -> bool {
        matches!(*self.model, CausalModel::Gpt(_))
    }

    /// The next-token logits after every position of `tokens` (B, T) uint32, in one pass from
    /// position 0: (B, T, vocab) float32 (Hugging Face's `model(input_ids).logits`).
    fn logits<'py>(&self, py: Python<'py>, tokens: PyReadonlyArray2<'py, u32>) -> PyResult<Bound<'py, PyArray3<f32>>> {
        let t = tokens.as_array();
        Ok(py.detach(|| self.model.logits(t)).py()?.into_pyarray(py))
    }

    /// Decoding with this model alone; `config_json` is a `SpecConfig` (its γ and acceptance
    /// unused).
    fn generate<'py>(&self, py: Python<'py>, prompt: Vec<u32>, config_json: &str) -> PyResult<Bound<'py, PyDict>> {
        let cfg: SpecConfig = serde_json::from_str(config_json).map_err(|e| json_err("generation settings", e))?;
        let g = py.detach(|| s4::speculative::generate(self.model.verifier()?.as_mut(), &prompt, &cfg)).py()?;
        generation_dict(py, &g)
    }

    /// Speculative decoding with `draft` proposing and this model verifying, starting from and
    /// adding to `calibration` when given.
    #[pyo3(signature = (draft, prompt, config_json, calibration = None))]
    fn speculate<'py>(
        &self,
        py: Python<'py>,
        draft: &LanguageModel,
        prompt: Vec<u32>,
        config_json: &str,
        calibration: Option<&Calibration>,
    ) -> PyResult<Bound<'py, PyDict>> {
        let cfg: SpecConfig = serde_json::from_str(config_json).map_err(|e| json_err("speculation settings", e))?;
        let carried = calibration.map(|c| Arc::clone(&c.inner));
        let g = py
            .detach(|| {
                let mut d = draft.model.drafter()?;
                let mut v = self.model.verifier()?;
                match carried {
                    Some(c) => {
                        let mut c = c.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
                        s4::speculative::speculate_with(d.as_mut(), v.as_mut(), &prompt, &cfg, &mut c)
                    }
                    None => s4::speculative::speculate(d.as_mut(), v.as_mut(), &prompt, &cfg),
                }
            })
            .py()?;
        generation_dict(py, &g)
    }
}

/// What speculative decoding learned about a pair in earlier generations (a token tree's
/// acceptance odds), for the next one to start from: pass the same object to every
/// `speculate(..., calibration=...)` call of the pair. A generation under other settings
/// (sampling, gamma or tree, acceptance, fallback; not the seed or the length) starts it afresh.
#[pyclass(module = "s4rs._native", frozen)]
struct Calibration {
    inner: Arc<Mutex<s4::speculative::Calibration>>,
}

#[pymethods]
impl Calibration {
    #[new]
    fn new() -> Self {
        Calibration { inner: Arc::new(Mutex::new(s4::speculative::Calibration::default())) }
    }

    /// The generations it holds the counts of (since the last change of settings).
    #[getter]
    fn generations(&self) -> usize {
        self.inner.lock().unwrap_or_else(|poisoned| poisoned.into_inner()).generations()
    }

    fn __repr__(&self) -> String {
        format!("Calibration(generations={})", self.generations())
    }
}

/// Text to the byte-level token ids of the project's language models.
#[pyfunction]
fn encode_text(text: &str) -> Vec<u32> {
    s4::data::shakespeare::encode(text)
}

/// Byte-level token ids back to text.
#[pyfunction]
fn decode_text(ids: Vec<u32>) -> PyResult<String> {
    s4::data::shakespeare::decode(&ids).py()
}

// ---------------------------------------------------------------------------------------------
// Training

/// The training settings (JSON of a `TrainConfig`) of preset `name`, or of the task's default
/// CPU preset when `name` is None and `task` is given.
#[pyfunction]
#[pyo3(signature = (name = None, task = None))]
fn train_preset(name: Option<&str>, task: Option<&str>) -> PyResult<String> {
    let name = match (name, task) {
        (Some(n), _) => n,
        (None, Some(t)) => s4::train::default_preset(t),
        (None, None) => return Err(PyValueError::new_err("train_preset: give a preset name or a task")),
    };
    let cfg = s4::train::preset(name).py()?;
    Ok(serde_json::to_string(&cfg).expect("a config serializes"))
}

/// Trains `task` into folder `out` with the settings of `config_json` (a whole `TrainConfig`, or
/// None for the `preset`, or the task's default preset); `progress` receives each progress line.
/// Returns the run's metrics as JSON (one object per epoch).
#[pyfunction]
#[pyo3(signature = (task, out, config_json = None, preset = None, data = None, sizes = None, seed = 0, resume = false, threads = None, progress = None))]
#[allow(clippy::too_many_arguments)]
fn train(
    py: Python<'_>,
    task: &str,
    out: PathBuf,
    config_json: Option<&str>,
    preset: Option<&str>,
    data: Option<PathBuf>,
    sizes: Option<(usize, usize, usize)>,
    seed: u64,
    resume: bool,
    threads: Option<usize>,
    progress: Option<Py<PyAny>>,
) -> PyResult<String> {
    use s4::train::{default_preset, load_task, TrainConfig};
    let mut cfg: TrainConfig = match (config_json, preset) {
        (Some(json), _) => serde_json::from_str(json).map_err(|e| json_err("training settings", e))?,
        (None, Some(p)) => s4::train::preset(p).py()?,
        (None, None) => s4::train::preset(default_preset(task)).py()?,
    };
    cfg.seed = seed;
    let opts = run_options(threads, resume, progress);
    let sizes = sizes.map_or_else(s4::data::SplitSizes::default, |(a, b, c)| s4::data::SplitSizes::new(a, b, c));
    let report = py
        .detach(|| {
            let data = load_task(task, data.as_deref(), &sizes, seed)?;
            s4::train::train(&data, &cfg, &out, &opts)
        })
        .py()?;
    Ok(serde_json::to_string(&report.metrics).expect("metrics serialize"))
}

// ---------------------------------------------------------------------------------------------

/// The progress options of a binding call: lines to the Python callable `progress`, if any.
fn run_options(threads: Option<usize>, resume: bool, progress: Option<Py<PyAny>>) -> s4::train::RunOptions {
    let sink = progress.map(|cb| {
        s4::train::trainer::ProgressSink(Arc::new(move |line: &str| {
            Python::attach(|py| {
                if let Err(e) = cb.call1(py, (line,)) {
                    e.print(py);
                }
            })
        }))
    });
    s4::train::RunOptions { threads, progress: sink.is_some(), resume, progress_sink: sink, ..Default::default() }
}

/// Trains a GPT-2-layout verifier on the Shakespeare corpus in `data` (the `shakespeare` source
/// package, as `s4 train-lm`): the run in `out/run`, the finished model in `out`. `model_json`
/// is a `GptConfig` (its vocabulary is the corpus's bytes), `config_json` an `LmTrainConfig`.
/// Returns the report as JSON.
#[pyfunction]
#[pyo3(signature = (data, out, model_json, config_json, resume = false, threads = None, progress = None))]
#[allow(clippy::too_many_arguments)]
fn train_lm(
    py: Python<'_>,
    data: PathBuf,
    out: PathBuf,
    model_json: &str,
    config_json: &str,
    resume: bool,
    threads: Option<usize>,
    progress: Option<Py<PyAny>>,
) -> PyResult<String> {
    use s4::train::lm::{train_lm_run, LmTrainConfig};
    use s4::transformer::{Gpt, GptConfig};
    let mut gcfg: GptConfig = serde_json::from_str(model_json).map_err(|e| json_err("transformer settings", e))?;
    let cfg: LmTrainConfig = serde_json::from_str(config_json).map_err(|e| json_err("training settings", e))?;
    gcfg.vocab_size = s4::data::shakespeare::VOCAB;
    let opts = run_options(threads, resume, progress);
    py.detach(|| -> s4::Result<String> {
        let corpus = s4::data::shakespeare::load(&data)?;
        let mut model = Gpt::<f32>::new(gcfg, cfg.seed)?;
        s4::train::lm::check_memory(model.config(), &cfg, &opts)?;
        let report = train_lm_run(&mut model, &corpus.train, &corpus.val, &cfg, Some(&out.join("run")), &opts)?;
        if report.evals.last().is_some_and(|e| e.step == cfg.steps) {
            model.save(&out)?;
        }
        Ok(serde_json::to_string(&report).expect("report serializes"))
    })
    .py()
}

/// Distills an S4 draft (`model_json`: an `S4ModelConfig` of a causal LM over the verifier's
/// vocabulary) from the verifier in folder `verifier` on the corpus in `data` (as `s4 distill`):
/// the run in `out/run`, the finished draft in `out`. Returns the report as JSON.
#[pyfunction]
#[pyo3(signature = (verifier, data, out, model_json, config_json, resume = false, threads = None, progress = None))]
#[allow(clippy::too_many_arguments)]
fn distill(
    py: Python<'_>,
    verifier: PathBuf,
    data: PathBuf,
    out: PathBuf,
    model_json: &str,
    config_json: &str,
    resume: bool,
    threads: Option<usize>,
    progress: Option<Py<PyAny>>,
) -> PyResult<String> {
    use s4::speculative::distill::{distill_run, DistillConfig};
    let mc: S4ModelConfig = serde_json::from_str(model_json).map_err(|e| json_err("draft settings", e))?;
    let cfg: DistillConfig = serde_json::from_str(config_json).map_err(|e| json_err("distillation settings", e))?;
    let opts = run_options(threads, resume, progress);
    py.detach(|| -> s4::Result<String> {
        let teacher = s4::transformer::Gpt::<f32>::load(&verifier)?;
        let corpus = s4::data::shakespeare::load(&data)?;
        let mut student = mc.build()?;
        let report =
            distill_run(&mut student, &teacher, &corpus.train, &corpus.val, &cfg, Some(&out.join("run")), &opts)?;
        if report.steps == cfg.steps {
            checkpoint::save(&student, &out)?;
        }
        Ok(serde_json::to_string(&report).expect("report serializes"))
    })
    .py()
}

/// `s4::allocator::retain_freed_memory`: glibc keeps freed memory for reuse (whether it took effect).
#[pyfunction]
fn retain_freed_memory() -> bool {
    s4::allocator::retain_freed_memory()
}

#[pymodule]
fn _native(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add_function(wrap_pyfunction!(hippo, m)?)?;
    m.add_function(wrap_pyfunction!(dplr, m)?)?;
    m.add_function(wrap_pyfunction!(init_ssm, m)?)?;
    m.add_function(wrap_pyfunction!(ssm_kernel, m)?)?;
    m.add_function(wrap_pyfunction!(ssm_kernel_naive, m)?)?;
    m.add_function(wrap_pyfunction!(fft_conv, m)?)?;
    m.add_function(wrap_pyfunction!(encode_text, m)?)?;
    m.add_function(wrap_pyfunction!(decode_text, m)?)?;
    m.add_function(wrap_pyfunction!(train, m)?)?;
    m.add_function(wrap_pyfunction!(train_preset, m)?)?;
    m.add_function(wrap_pyfunction!(train_lm, m)?)?;
    m.add_function(wrap_pyfunction!(distill, m)?)?;
    m.add_function(wrap_pyfunction!(retain_freed_memory, m)?)?;
    m.add_class::<State>()?;
    m.add_class::<Layer>()?;
    m.add_class::<Model>()?;
    m.add_class::<LanguageModel>()?;
    m.add_class::<Calibration>()?;
    m.add("__version__", env!("CARGO_PKG_VERSION"))?;
    Ok(())
}

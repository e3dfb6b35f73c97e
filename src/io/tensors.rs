//! Folders of named tensors: `config.json` beside `model.safetensors`, the layout of Hugging Face
//! and of every model folder this crate writes. Writing is atomic per file, weights first (an
//! interrupted save never leaves a new config next to old weights); reading checks every name,
//! dtype, shape and value and reports all problems at once, so a bad file never yields a
//! partial model.
//!
//! # Example
//!
//! ```
//! use s4::io::tensors::{write_folder, TensorReader, TensorWriter, WEIGHTS_FILE};
//!
//! let dir = std::env::temp_dir().join(format!("s4-doc-tensors-{}", std::process::id()));
//! let mut w = TensorWriter::new();
//! w.real::<f32>("linear.weight", &[2, 2], [1.0f32, 2.0, 3.0, 4.0].iter());
//! write_folder(&dir, w, &serde_json::json!({"format": "demo"}))?;
//!
//! let mut r = TensorReader::open(&dir.join(WEIGHTS_FILE))?;
//! let t = r.real::<f64>("linear.weight", &[2, 2]);
//! assert_eq!(t.as_slice().unwrap(), &[1.0, 2.0, 3.0, 4.0]);
//! r.finish()?; // every stored tensor was read, none was missing
//!
//! let mut r = TensorReader::open(&dir.join(WEIGHTS_FILE))?;
//! r.real::<f64>("linear.bias", &[2]);
//! let err = r.finish().unwrap_err().to_string();
//! assert!(err.contains("missing linear.bias") && err.contains("unexpected linear.weight"));
//! # std::fs::remove_dir_all(&dir).unwrap();
//! # Ok::<(), s4::Error>(())
//! ```

use super::write_atomic;
use crate::error::{Error, Result};
use crate::scalar::{HalfPrecision, Real};
use ndarray::{ArrayD, ArrayViewD, ArrayViewMutD, IxDyn};
use num_complex::Complex;
use safetensors::tensor::TensorView;
use safetensors::{Dtype, SafeTensors};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

/// Name of the config file in a model folder.
pub const CONFIG_FILE: &str = "config.json";
/// Name of the weights file in a model folder.
pub const WEIGHTS_FILE: &str = "model.safetensors";

/// One tensor to write: dtype, shape and little-endian bytes.
struct Entry {
    dtype: Dtype,
    shape: Vec<usize>,
    bytes: Vec<u8>,
}

/// Named tensors collected for one safetensors file.
#[derive(Default)]
pub struct TensorWriter {
    entries: BTreeMap<String, Entry>,
}

impl std::fmt::Debug for TensorWriter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TensorWriter").field("names", &self.entries.keys().collect::<Vec<_>>()).finish()
    }
}

impl TensorWriter {
    /// An empty set of tensors.
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds a real tensor, stored in `T`'s precision (F32 or F64).
    pub fn real<'a, T: Real>(&mut self, name: &str, shape: &[usize], values: impl Iterator<Item = &'a T>) {
        let f32_storage = std::mem::size_of::<T>() == 4;
        let mut bytes = Vec::new();
        for v in values {
            if f32_storage {
                bytes.extend_from_slice(&(v.as_f64() as f32).to_le_bytes());
            } else {
                bytes.extend_from_slice(&v.as_f64().to_le_bytes());
            }
        }
        let dtype = if f32_storage { Dtype::F32 } else { Dtype::F64 };
        self.entries.insert(name.to_string(), Entry { dtype, shape: shape.to_vec(), bytes });
    }

    /// Adds a named view (see [`real`](Self::real)).
    pub fn view<T: Real>(&mut self, name: &str, t: ArrayViewD<'_, T>) {
        self.real(name, t.shape(), t.iter());
    }

    /// Adds a complex tensor as a real one with a trailing dimension of 2 (real, imag), the layout
    /// of PyTorch's `torch.view_as_real`.
    pub fn complex<'a, T: Real>(&mut self, name: &str, shape: &[usize], values: impl Iterator<Item = &'a Complex<T>>) {
        let flat: Vec<T> = values.flat_map(|z| [z.re, z.im]).collect();
        let mut s = shape.to_vec();
        s.push(2);
        self.real(name, &s, flat.iter());
    }

    /// Adds an int64 scalar.
    pub fn int(&mut self, name: &str, value: i64) {
        self.entries
            .insert(name.to_string(), Entry { dtype: Dtype::I64, shape: vec![], bytes: value.to_le_bytes().to_vec() });
    }

    /// Re-encodes every floating tensor for which `keep_full(name)` is false in a 16-bit format.
    pub fn to_half(&mut self, p: HalfPrecision, keep_full: impl Fn(&str) -> bool) {
        for (name, e) in self.entries.iter_mut() {
            if keep_full(name) || !(e.dtype == Dtype::F32 || e.dtype == Dtype::F64) {
                continue;
            }
            let values: Vec<f32> = if e.dtype == Dtype::F32 {
                e.bytes.chunks_exact(4).map(|b| f32::from_le_bytes(b.try_into().expect("4"))).collect()
            } else {
                e.bytes.chunks_exact(8).map(|b| f64::from_le_bytes(b.try_into().expect("8")) as f32).collect()
            };
            e.bytes = values.iter().flat_map(|&v| p.to_le_bytes(v)).collect();
            e.dtype = match p {
                HalfPrecision::Bf16 => Dtype::BF16,
                HalfPrecision::F16 => Dtype::F16,
            };
        }
    }

    /// Re-encodes every float64 tensor as float32 (what PyTorch state dicts hold).
    pub fn to_f32(&mut self) {
        for e in self.entries.values_mut().filter(|e| e.dtype == Dtype::F64) {
            e.bytes = e
                .bytes
                .chunks_exact(8)
                .flat_map(|b| (f64::from_le_bytes(b.try_into().expect("8")) as f32).to_le_bytes())
                .collect();
            e.dtype = Dtype::F32;
        }
    }

    /// The safetensors bytes (`path` names the destination in errors).
    ///
    /// # Errors
    /// The tensors cannot be serialized.
    pub fn serialize(&self, path: &Path) -> Result<Vec<u8>> {
        let views: Vec<(String, TensorView)> = self
            .entries
            .iter()
            .map(|(k, e)| {
                (k.clone(), TensorView::new(e.dtype, e.shape.clone(), &e.bytes).expect("byte length matches the shape"))
            })
            .collect();
        safetensors::serialize(views, None).map_err(|e| Error::format(path, format!("cannot serialize: {e}")))
    }
}

/// Writes `tensors` as `model.safetensors` and `config` as `config.json` (pretty JSON) into the
/// folder `dir`. A new folder is written whole into a hidden sibling and renamed into place, so
/// `dir` never exists half-written; into an existing folder (one that holds other files too, e.g.
/// a training run) each file is written atomically, weights first, so a config never sits next to
/// older weights.
///
/// # Errors
/// The folder or a file cannot be written (a new folder's partial copy is removed).
pub fn write_folder(dir: &Path, tensors: TensorWriter, config: &serde_json::Value) -> Result<()> {
    let write_into = |d: &Path| -> Result<()> {
        let weights = d.join(WEIGHTS_FILE);
        write_atomic(&weights, &tensors.serialize(&weights)?)?;
        write_atomic(&d.join(CONFIG_FILE), serde_json::to_string_pretty(config).expect("JSON serializes").as_bytes())
    };
    if dir.exists() {
        write_into(dir)
    } else {
        super::write_folder_whole(dir, write_into)
    }
}

/// Writes named views (stored in `T`'s precision) and `config` into `dir`, as [`write_folder`].
///
/// # Errors
/// The folder or a file cannot be written.
pub fn save_named<T: Real>(
    dir: &Path,
    tensors: Vec<(String, ArrayViewD<'_, T>)>,
    config: &serde_json::Value,
) -> Result<()> {
    let mut w = TensorWriter::new();
    for (name, t) in tensors {
        w.view(&name, t);
    }
    write_folder(dir, w, config)
}

/// Reads `model.safetensors` of `dir` into `targets` (name, destination) by name, through a
/// [`TensorReader`] (every problem reported at once; the destinations may then be partly written:
/// discard them).
///
/// # Errors
/// An unreadable or invalid file, or any problem [`TensorReader::finish`] reports.
pub fn load_named<T: Real>(dir: &Path, targets: Vec<(String, ArrayViewMutD<'_, T>)>) -> Result<()> {
    let mut r = TensorReader::open(&dir.join(WEIGHTS_FILE))?;
    for (name, mut t) in targets {
        let shape = t.shape().to_vec();
        t.assign(&r.real::<T>(&name, &shape));
    }
    r.finish()
}

/// Reads checked tensors out of a safetensors file. Each read records its problems (missing,
/// mis-shaped, mis-typed, non-finite) and returns zeros in their place; [`finish`](Self::finish)
/// reports them all, with every stored tensor that was never read.
pub struct TensorReader {
    bytes: Vec<u8>,
    path: PathBuf,
    problems: Vec<String>,
    used: Vec<String>,
}

impl std::fmt::Debug for TensorReader {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TensorReader").field("path", &self.path).field("problems", &self.problems).finish()
    }
}

impl TensorReader {
    /// Reads and parses the file at `path`.
    ///
    /// # Errors
    /// The file is missing, unreadable, or not a valid safetensors file.
    pub fn open(path: &Path) -> Result<Self> {
        let size = std::fs::metadata(path).map_err(|e| Error::io(path, e))?.len();
        crate::budget::Estimate::new(format!("reading {}", path.display())).bytes(size).check()?;
        let bytes = std::fs::read(path).map_err(|e| Error::io(path, e))?;
        SafeTensors::deserialize(&bytes)
            .map_err(|e| Error::format(path, format!("not a valid safetensors file (truncated or corrupt?): {e}")))?;
        Ok(TensorReader { bytes, path: path.to_path_buf(), problems: Vec::new(), used: Vec::new() })
    }

    fn st(&self) -> SafeTensors<'_> {
        SafeTensors::deserialize(&self.bytes).expect("validated in open")
    }

    /// The stored tensor names, sorted.
    pub fn names(&self) -> Vec<String> {
        let mut names: Vec<String> = self.st().names().into_iter().map(str::to_string).collect();
        names.sort_unstable();
        names
    }

    /// The stored shape of `name`, if it is there.
    pub fn shape(&self, name: &str) -> Option<Vec<usize>> {
        self.st().tensor(name).ok().map(|t| t.shape().to_vec())
    }

    /// Marks `name` as read without reading it (a buffer the caller ignores).
    pub fn skip(&mut self, name: &str) {
        self.used.push(name.to_string());
    }

    /// Records a problem found by the caller.
    pub fn problem(&mut self, message: String) {
        self.problems.push(message);
    }

    /// The real tensor `name` of shape `shape` in precision `T` (stored as F32, F64, BF16 or F16).
    pub fn real<T: Real>(&mut self, name: &str, shape: &[usize]) -> ArrayD<T> {
        self.used.push(name.to_string());
        let zeros = || ArrayD::from_elem(IxDyn(shape), T::zero());
        let values: std::result::Result<Vec<T>, String> = {
            let st = self.st();
            match st.tensor(name) {
                Err(_) => Err(format!("missing {name} {shape:?}")),
                Ok(t) if t.shape() != shape => Err(format!("{name} has shape {:?}, expected {shape:?}", t.shape())),
                Ok(t) => {
                    let d = t.data();
                    let v: Option<Vec<T>> = match t.dtype() {
                        Dtype::F32 => Some(
                            d.chunks_exact(4)
                                .map(|b| T::of(f32::from_le_bytes(b.try_into().expect("4")) as f64))
                                .collect(),
                        ),
                        Dtype::F64 => Some(
                            d.chunks_exact(8).map(|b| T::of(f64::from_le_bytes(b.try_into().expect("8")))).collect(),
                        ),
                        Dtype::BF16 => Some(
                            d.chunks_exact(2)
                                .map(|b| T::of(half::bf16::from_le_bytes([b[0], b[1]]).to_f64()))
                                .collect(),
                        ),
                        Dtype::F16 => Some(
                            d.chunks_exact(2).map(|b| T::of(half::f16::from_le_bytes([b[0], b[1]]).to_f64())).collect(),
                        ),
                        _ => None,
                    };
                    match v {
                        None => Err(format!("{name} has dtype {:?}, expected F32, F64, BF16 or F16", t.dtype())),
                        Some(v) if v.iter().any(|x| !x.is_finite()) => Err(format!("{name} has non-finite values")),
                        Some(v) => Ok(v),
                    }
                }
            }
        };
        match values {
            Ok(v) => ArrayD::from_shape_vec(IxDyn(shape), v).expect("safetensors checked the byte length"),
            Err(p) => {
                self.problems.push(p);
                zeros()
            }
        }
    }

    /// The complex tensor `name` of shape `shape`, stored as real with a trailing dimension of 2.
    pub fn complex<T: Real>(&mut self, name: &str, shape: &[usize]) -> ArrayD<Complex<T>> {
        let mut s = shape.to_vec();
        s.push(2);
        let a = self.real::<T>(name, &s);
        let v: Vec<Complex<T>> =
            a.iter().copied().collect::<Vec<T>>().chunks_exact(2).map(|p| Complex::new(p[0], p[1])).collect();
        ArrayD::from_shape_vec(IxDyn(shape), v).expect("pairs")
    }

    /// The non-negative int64 scalar `name`.
    pub fn int(&mut self, name: &str) -> usize {
        self.used.push(name.to_string());
        let found = self.st().tensor(name).ok().map(|t| {
            (t.dtype() == Dtype::I64 && t.shape().is_empty())
                .then(|| i64::from_le_bytes(t.data()[..8].try_into().expect("8 bytes")))
        });
        match found {
            Some(Some(v)) if v >= 0 => v as usize,
            Some(Some(v)) => {
                self.problems.push(format!("{name} = {v} is negative"));
                0
            }
            Some(None) => {
                self.problems.push(format!("{name} must be an int64 scalar"));
                0
            }
            None => {
                self.problems.push(format!("missing {name} (int64 scalar)"));
                0
            }
        }
    }

    /// Every problem found, and every stored tensor never read, in one [`Error::Format`].
    ///
    /// # Errors
    /// Any problem.
    pub fn finish(self) -> Result<()> {
        let mut problems = self.problems.clone();
        let unexpected: Vec<String> = self.names().into_iter().filter(|n| !self.used.contains(n)).collect();
        if !unexpected.is_empty() {
            problems.push(format!("unexpected {}", unexpected.join(", ")));
        }
        if problems.is_empty() {
            Ok(())
        } else {
            Err(Error::format(&self.path, format!("{} problem(s): {}", problems.len(), problems.join("; "))))
        }
    }
}

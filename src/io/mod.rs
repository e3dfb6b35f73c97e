//! Files in and out, in one place: arrays as numpy `.npy`/`.npz` files (so numpy users can check
//! every number), JSON, and folders of named tensors ([`tensors`]: `config.json` +
//! `model.safetensors`). Everything is written atomically: a temporary file in the same folder,
//! then a rename, so a crash never leaves a half-written file under the requested name.
//!
//! # Example
//!
//! ```
//! use ndarray::{array, Array2, Ix2};
//! use s4::io::{read_npy_any, write_npy_atomic, NpyArray, NpzIn, NpzOut};
//!
//! let dir = std::env::temp_dir().join(format!("s4-doc-io-{}", std::process::id()));
//! std::fs::create_dir_all(&dir).unwrap();
//! let path = dir.join("arrays.npz");
//!
//! // write two arrays into one archive (visible under `path` only after `finish`)
//! let k = array![[1.0f32, 0.5, 0.25], [2.0, 1.0, 0.5]];
//! let mut out = NpzOut::create(&path);
//! out.add("kernel", &k)?;
//! out.add("lengths", &array![3i64, 2])?;
//! out.finish()?;
//!
//! // read them back: the dtype and the number of dimensions are checked
//! let mut npz = NpzIn::open(&path)?;
//! assert!(npz.has("kernel") && !npz.has("state"));
//! let back: Array2<f32> = npz.read::<f32>("kernel", 2, "float32")?.into_dimensionality::<Ix2>().unwrap();
//! assert_eq!(back, k);
//! let err = npz.read::<f32>("state", 3, "float32").unwrap_err();
//! assert!(err.to_string().contains("missing array 'state'"));
//! assert!(npz.read::<f32>("kernel", 3, "float32").is_err()); // 2 dimensions, not 3
//!
//! // a single .npy of any supported dtype
//! let npy = dir.join("ids.npy");
//! write_npy_atomic(&npy, &array![[7i32, 8, 9]])?;
//! match read_npy_any(&npy)? {
//!     NpyArray::Int(a) => assert_eq!(a.into_raw_vec_and_offset().0, vec![7i64, 8, 9]),
//!     other => panic!("expected integers, got {other:?}"),
//! }
//! # std::fs::remove_dir_all(&dir).unwrap();
//! # Ok::<(), s4::Error>(())
//! ```

pub mod npy;
pub mod tensors;

use crate::error::{Error, Result};
use ndarray::{ArrayBase, ArrayD, Data, Dimension};
use npy::NpyElement;
use std::fs::File;
use std::io::Write;
use std::path::{Path, PathBuf};

/// A temporary sibling of `path` (same folder, so the final rename is atomic), ending in `.ext`:
/// `.{file name}.{process id}-{counter}.tmp.{ext}`, unique within the process.
pub fn atomic_path(path: &Path, ext: &str) -> PathBuf {
    static COUNTER: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let k = COUNTER.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let name = path.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_else(|| "out".into());
    path.with_file_name(format!(".{name}.{}-{k}.tmp.{ext}", std::process::id()))
}

/// Writes `bytes` to `path` atomically: a temporary sibling, synced, then renamed into place (the
/// temporary file is removed on failure).
///
/// # Errors
/// The file cannot be written or renamed.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> Result<()> {
    let ext = path.extension().and_then(|e| e.to_str()).unwrap_or("tmp");
    let tmp = atomic_path(path, ext);
    // errors name the user's path, not the hidden temporary one
    let done = File::create(&tmp)
        .and_then(|mut f| {
            f.write_all(bytes)?;
            f.sync_all()
        })
        .and_then(|_| std::fs::rename(&tmp, path))
        .map_err(|e| Error::io(path, e));
    if done.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    done
}

/// Puts the complete folder `new` in the place of `dst`: `dst` (if it exists) is renamed to `old`,
/// `new` to `dst`, then `old` is removed. At every moment a complete folder sits under `dst` or,
/// between the two renames, under `old` (with `new` complete beside it), so a reader that looks at
/// `dst`, then `new`, then `old` always finds one whole (the training checkpoints do).
///
/// # Errors
/// A rename or removal fails (the names involved are in the message); if the second rename fails,
/// `old` is renamed back to `dst`.
pub fn swap_folder(new: &Path, dst: &Path, old: &Path) -> Result<()> {
    if old.exists() {
        std::fs::remove_dir_all(old).map_err(|e| Error::io(old, e))?;
    }
    let had_old = dst.exists();
    if had_old {
        std::fs::rename(dst, old).map_err(|e| Error::io(dst, e))?;
    }
    if let Err(e) = std::fs::rename(new, dst) {
        if had_old {
            let _ = std::fs::rename(old, dst);
        }
        return Err(Error::io(dst, e));
    }
    if had_old {
        std::fs::remove_dir_all(old).map_err(|e| Error::io(old, e))?;
    }
    Ok(())
}

/// Writes the folder `dir` whole: `fill` writes its files into a new hidden sibling
/// ([`atomic_path`]), which then replaces `dir` ([`swap_folder`]; an existing `dir` is replaced
/// only once the new folder is complete). Callers decide whether replacing is allowed (the
/// command line asks for `--force`).
///
/// # Errors
/// What `fill` returns, or a folder that cannot be created or renamed; the partial sibling is
/// removed and an existing `dir` is left as it was.
pub fn write_folder_whole(dir: &Path, fill: impl FnOnce(&Path) -> Result<()>) -> Result<()> {
    if let Some(parent) = dir.parent().filter(|p| !p.as_os_str().is_empty()) {
        std::fs::create_dir_all(parent).map_err(|e| Error::io(parent, e))?;
    }
    let tmp = atomic_path(dir, "dir");
    let done = std::fs::create_dir(&tmp)
        .map_err(|e| Error::io(dir, e))
        .and_then(|_| fill(&tmp))
        .and_then(|_| swap_folder(&tmp, dir, &atomic_path(dir, "old")));
    if done.is_err() {
        let _ = std::fs::remove_dir_all(&tmp);
    }
    done
}

/// A folder moved out of the way of a new one (`--force` on a training command): renamed to a
/// hidden sibling, then either removed ([`discard`](Self::discard), once its replacement holds
/// something worth keeping) or, when dropped, put back in place of whatever was written there.
#[derive(Debug)]
pub struct MovedAside {
    original: PathBuf,
    aside: Option<PathBuf>,
}

impl MovedAside {
    /// Moves `dir` aside if it exists (nothing to do otherwise).
    ///
    /// # Errors
    /// The rename fails.
    pub fn new(dir: &Path) -> Result<Self> {
        let aside = if dir.exists() {
            let to = atomic_path(dir, "old");
            std::fs::rename(dir, &to).map_err(|e| Error::io(dir, e))?;
            Some(to)
        } else {
            None
        };
        Ok(MovedAside { original: dir.to_path_buf(), aside })
    }

    /// Removes the old folder for good.
    ///
    /// # Errors
    /// It cannot be removed.
    pub fn discard(mut self) -> Result<()> {
        match self.aside.take() {
            Some(a) => std::fs::remove_dir_all(&a).map_err(|e| Error::io(&a, e)),
            None => Ok(()),
        }
    }
}

impl Drop for MovedAside {
    fn drop(&mut self) {
        if let Some(a) = self.aside.take() {
            let _ = std::fs::remove_dir_all(&self.original);
            let _ = std::fs::rename(&a, &self.original);
        }
    }
}

/// Writes `value` as pretty JSON to `path` atomically.
///
/// # Errors
/// As [`write_atomic`].
pub fn write_json<V: serde::Serialize + ?Sized>(path: &Path, value: &V) -> Result<()> {
    write_atomic(path, serde_json::to_string_pretty(value).expect("JSON serializes").as_bytes())
}

/// Reads a JSON file into `C` (a settings struct, or [`serde_json::Value`]).
///
/// # Errors
/// A missing or unreadable file, invalid JSON, or JSON that does not fit `C` (the message names
/// the file).
pub fn read_json<C: serde::de::DeserializeOwned>(path: &Path) -> Result<C> {
    let size = std::fs::metadata(path).map_err(|e| Error::io(path, e))?.len();
    crate::budget::Estimate::new(format!("reading {}", path.display())).bytes(size).check()?;
    let text = std::fs::read_to_string(path).map_err(|e| Error::io(path, e))?;
    serde_json::from_str(&text).map_err(|e| Error::format(path, format!("invalid JSON: {e}")))
}

/// Collects named arrays and writes them as one `.npz` file atomically (a zip archive of `.npy`
/// entries, stored uncompressed, as `numpy.savez` writes it). The archive is built in memory and
/// written by [`write_atomic`] in [`finish`](Self::finish): nothing is on disk before.
pub struct NpzOut {
    path: PathBuf,
    writer: zip::ZipWriter<std::io::Cursor<Vec<u8>>>,
}

impl std::fmt::Debug for NpzOut {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NpzOut").field("path", &self.path).finish_non_exhaustive()
    }
}

impl NpzOut {
    /// Starts an archive to be written to `path` by [`finish`](Self::finish).
    pub fn create(path: &Path) -> Self {
        NpzOut { path: path.to_path_buf(), writer: zip::ZipWriter::new(std::io::Cursor::new(Vec::new())) }
    }

    /// Adds the array `name` (stored as `name.npy` in the archive).
    ///
    /// # Errors
    /// A name already in the archive.
    pub fn add<S, D, A>(&mut self, name: &str, array: &ArrayBase<S, D>) -> Result<()>
    where
        S: Data<Elem = A>,
        D: Dimension,
        A: NpyElement,
    {
        let bytes = npy::encode(array);
        let options = zip::write::SimpleFileOptions::default()
            .compression_method(zip::CompressionMethod::Stored)
            .large_file(bytes.len() as u64 >= u64::from(u32::MAX));
        self.writer
            .start_file(format!("{name}.npy"), options)
            .and_then(|_| self.writer.write_all(&bytes).map_err(zip::result::ZipError::from))
            .map_err(|e| Error::format(&self.path, format!("writing array {name}: {e}")))
    }

    /// Closes the archive and writes it to its path atomically.
    ///
    /// # Errors
    /// The file cannot be written.
    pub fn finish(self) -> Result<()> {
        let bytes = self
            .writer
            .finish()
            .map_err(|e| Error::format(&self.path, format!("closing the archive: {e}")))?
            .into_inner();
        write_atomic(&self.path, &bytes)
    }
}

/// Reads named arrays from an `.npz` file, with errors that name the file and the array. Each
/// array's declared shape is checked against its entry's size and the memory budget before its
/// data are read ([`npy`]).
pub struct NpzIn {
    path: PathBuf,
    zip: zip::ZipArchive<File>,
    names: Vec<String>,
}

impl std::fmt::Debug for NpzIn {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NpzIn").field("path", &self.path).field("names", &self.names).finish()
    }
}

impl NpzIn {
    /// Opens `path`.
    ///
    /// # Errors
    /// The file is missing, unreadable or not a zip archive of `.npy` files.
    pub fn open(path: &Path) -> Result<Self> {
        let file = File::open(path).map_err(|e| Error::io(path, e))?;
        let zip =
            zip::ZipArchive::new(file).map_err(|e| Error::format(path, format!("not a valid .npz archive: {e}")))?;
        let names = zip.file_names().map(|n| n.trim_end_matches(".npy").to_string()).collect();
        Ok(NpzIn { path: path.to_path_buf(), zip, names })
    }

    /// Whether the archive holds an array called `name`.
    pub fn has(&self, name: &str) -> bool {
        self.names.iter().any(|n| n == name)
    }

    /// Reads array `name` with element type `A` and checks that it has `ndim` dimensions;
    /// `dtype` only names the expected type in error messages (e.g. `"float32"`).
    ///
    /// # Errors
    /// Missing array, another dtype, another number of dimensions, a declared shape larger than
    /// the entry or the memory budget, or a corrupt entry.
    pub fn read<A: NpyElement>(&mut self, name: &str, ndim: usize, dtype: &str) -> Result<ArrayD<A>> {
        if !self.has(name) {
            return Err(Error::format(
                &self.path,
                format!("missing array '{name}' (found: {})", self.names.join(", ")),
            ));
        }
        let path = &self.path;
        let fail = |e: String| Error::format(path, format!("array '{name}' is not a readable {dtype} array: {e}"));
        let entry = if self.zip.index_for_name(&format!("{name}.npy")).is_some() {
            format!("{name}.npy")
        } else {
            name.to_string()
        };
        let mut f = self.zip.by_name(&entry).map_err(|e| fail(e.to_string()))?;
        let size = f.size();
        let h = npy::read_header(&mut f).map_err(fail)?;
        let available = size.saturating_sub(h.header_bytes as u64);
        let a: ArrayD<A> = npy::read_data(&mut f, &h, available, &format!("array '{name}'")).map_err(fail)?;
        if a.ndim() != ndim {
            return Err(Error::shape(
                format!("array '{name}' in {}", self.path.display()),
                format!("{ndim} dimensions"),
                a.shape(),
            ));
        }
        Ok(a)
    }
}

/// A `.npy` array as read from disk: floating point or integer.
#[derive(Clone, Debug)]
pub enum NpyArray {
    /// float32.
    F32(ArrayD<f32>),
    /// float64.
    F64(ArrayD<f64>),
    /// int64 or int32 (token ids), widened to i64.
    Int(ArrayD<i64>),
}

/// Reads a `.npy` file of float32, float64, int64 or int32.
///
/// # Errors
/// A missing file, or another dtype / a corrupt file.
pub fn read_npy_any(path: &Path) -> Result<NpyArray> {
    let file = File::open(path).map_err(|e| Error::io(path, e))?;
    let size = file.metadata().map_err(|e| Error::io(path, e))?.len();
    let mut r = std::io::BufReader::new(file);
    let fail = |e: String| Error::format(path, e);
    let h = npy::read_header(&mut r).map_err(fail)?;
    let available = size.saturating_sub(h.header_bytes as u64);
    let what = "the array";
    Ok(match h.code.as_str() {
        "f4" => NpyArray::F32(npy::read_data(&mut r, &h, available, what).map_err(fail)?),
        "f8" => NpyArray::F64(npy::read_data(&mut r, &h, available, what).map_err(fail)?),
        "i8" => NpyArray::Int(npy::read_data(&mut r, &h, available, what).map_err(fail)?),
        "i4" => NpyArray::Int(npy::read_data::<i32>(&mut r, &h, available, what).map_err(fail)?.mapv(i64::from)),
        other => {
            return Err(fail(format!("a .npy array of dtype '{other}': expected float32, float64, int64 or int32")))
        }
    })
}

/// Reads a `.npy` file of element type `A` with `D` dimensions (e.g. `read_npy::<f64, Ix2>`).
///
/// # Errors
/// A missing file, another dtype or number of dimensions, or a corrupt file.
pub fn read_npy<A: NpyElement, D: Dimension>(path: impl AsRef<Path>) -> Result<ndarray::Array<A, D>> {
    let path = path.as_ref();
    let file = File::open(path).map_err(|e| Error::io(path, e))?;
    let size = file.metadata().map_err(|e| Error::io(path, e))?.len();
    let mut r = std::io::BufReader::new(file);
    let fail = |e: String| Error::format(path, e);
    let h = npy::read_header(&mut r).map_err(fail)?;
    if h.code != A::CODE {
        return Err(fail(format!("a .npy array of dtype '{}': expected {}", h.code, A::NAME)));
    }
    let available = size.saturating_sub(h.header_bytes as u64);
    let a: ArrayD<A> = npy::read_data(&mut r, &h, available, "the array").map_err(fail)?;
    let shape = a.shape().to_vec();
    a.into_dimensionality::<D>()
        .map_err(|_| Error::shape(path.display().to_string(), format!("{} dimensions", D::NDIM.unwrap_or(0)), &shape))
}

/// Writes a `.npy` file atomically (temporary file, then rename).
///
/// # Errors
/// The file cannot be written.
pub fn write_npy_atomic<A: NpyElement, S: Data<Elem = A>, D: Dimension>(
    path: &Path,
    a: &ArrayBase<S, D>,
) -> Result<()> {
    write_atomic(path, &npy::encode(a))
}

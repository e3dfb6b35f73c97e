//! UCR/UEA time-series classification archives in the sktime `.ts` format.
//!
//! # The format
//!
//! A `.ts` file is UTF-8 text. Lines starting with `#` are comments and blank lines are skipped.
//! Header lines start with `@` (tags are case-insensitive):
//!
//! ```text
//! @problemName ACSF1
//! @timeStamps false        (true is not supported)
//! @missing false
//! @univariate true         (if true, exactly one dimension per row)
//! @dimensions 3            (optional; if present, the number of dimensions per row)
//! @equalLength true
//! @seriesLength 1460       (optional; if present, every dimension has this length)
//! @classLabel true 0 1 2   (required: the class labels, in order)
//! @data
//! ```
//!
//! After `@data`, each line is one case: its dimensions separated by `:`, each a comma-separated
//! list of values, then `:label`. For example `1,2,3:4,5,6:b` is a 2-dimensional series of length
//! 3 with label `b`. Other header tags are ignored.
//!
//! Only complete, equal-length series are accepted: a missing value `?` (or any value that is not
//! a finite number), a row whose dimensions differ in length from the first row's, a label not
//! declared by `@classLabel`, or a file without `@data` is an error naming the file and line.
//!
//! # Getting data
//!
//! The sktime wheel ships a few archives (ACSF1, ArrowHead, BasicMotions, GunPoint,
//! ItalyPowerDemand, JapaneseVowels, OSULeaf, PLAID, ...) under `sktime/datasets/data`:
//!
//! ```text
//! python3 -m pip download --no-deps sktime==1.2.0 -d data/ && cd data && unzip -q sktime-1.2.0-py3-none-any.whl 'sktime/datasets/data/*' -d sktime-1.2.0
//! ```
//!
//! after which [`find_sktime_data`]`("data")` returns `data/sktime-1.2.0/sktime/datasets/data` and
//! [`load_ucr`]`(that, "ACSF1", 0.1, seed)` loads ACSF1 (100 train + 100 test series of length
//! 1460, 10 classes). Some sktime archives (JapaneseVowels, PLAID) have unequal lengths and are
//! rejected; the regression ones (Covid3Month, Tecator) have no `@classLabel` and are rejected.
//!
//! # Example
//!
//! ```
//! use s4::data::ucr::{load_ucr, read_ts};
//! use s4::data::Inputs;
//!
//! let dir = std::env::temp_dir().join(format!("s4-doc-ucr-{}", std::process::id()));
//! std::fs::create_dir_all(dir.join("Toy")).unwrap();
//! let header = "@problemName Toy\n@univariate false\n@dimensions 2\n@equalLength true\n\
//!               @seriesLength 3\n@classLabel true a b\n@data\n";
//! let write = |file: &str, rows: &str| std::fs::write(dir.join("Toy").join(file), format!("{header}{rows}")).unwrap();
//! write("Toy_TRAIN.ts", "1,2,3:4,5,6:b\n3,4,5:6,7,8:a\n");
//! write("Toy_TEST.ts", "3,3,3:6,6,6:a\n");
//!
//! // one case is stored dimension-major: (d_input, len) = (2, 3)
//! let ts = read_ts(&dir.join("Toy/Toy_TRAIN.ts"))?;
//! assert_eq!((ts.class_labels, ts.labels), (vec!["a".to_string(), "b".into()], vec!["b".to_string(), "a".into()]));
//! let Inputs::Features { d_input: 2, len: 3, data } = &ts.inputs else { unreachable!() };
//! assert_eq!(data[0], vec![1.0, 2.0, 3.0, 4.0, 5.0, 6.0]);
//!
//! // the task is standardized with the train statistics (dimension means 3 and 6)
//! let task = load_ucr(&dir, "Toy", 0.0, 0)?;
//! assert_eq!((task.d_input, task.d_output, task.train.len()), (2, 2, 2));
//! assert_eq!(task.test.targets.classes(), Some(&[0][..])); // "a" is class 0
//! let Inputs::Features { data, .. } = &task.test.inputs else { unreachable!() };
//! assert!(data[0].iter().all(|v| v.abs() < 1e-6));
//!
//! // missing values are rejected, naming the file and the line
//! write("Toy_TEST.ts", "?,3,3:6,6,6:a\n");
//! let err = load_ucr(&dir, "Toy", 0.0, 0).unwrap_err().to_string();
//! assert!(err.contains("Toy_TEST.ts") && err.contains("line 8") && err.contains("missing value"), "{err}");
//! # std::fs::remove_dir_all(&dir).unwrap();
//! # Ok::<(), s4::Error>(())
//! ```

use std::path::{Path, PathBuf};

use super::{permutation, read_text, Inputs, Split, Targets, TaskData};
use crate::error::{Error, Result};

/// A parsed `.ts` file.
#[derive(Clone, Debug, PartialEq)]
pub struct TsFile {
    /// The `@problemName`, if given.
    pub problem_name: Option<String>,
    /// The labels declared by `@classLabel true ...`, in order.
    pub class_labels: Vec<String>,
    /// The series: `d_input` dimensions of length `len` each.
    pub inputs: Inputs,
    /// Each case's raw label (one of `class_labels`).
    pub labels: Vec<String>,
}

/// Reads and parses a `.ts` file (see the module docs for the accepted format).
///
/// # Errors
/// An unreadable or non-UTF-8 file, or (naming the file and line) a header or case that breaks
/// the format: missing `@classLabel` or `@data`, an undeclared label, a missing or non-finite
/// value, unequal lengths.
pub fn read_ts(path: &Path) -> Result<TsFile> {
    let text = read_text(path)?;
    parse_ts(&text, path)
}

/// Reads a `.ts` file and returns its series and each case's raw label.
///
/// # Errors
/// As [`read_ts`].
pub fn load_ts(path: &Path) -> Result<(Inputs, Vec<String>)> {
    let f = read_ts(path)?;
    Ok((f.inputs, f.labels))
}

fn parse_bool(path: &Path, lineno: usize, tag: &str, v: Option<&str>) -> Result<bool> {
    match v.map(str::to_ascii_lowercase).as_deref() {
        Some("true") => Ok(true),
        Some("false") => Ok(false),
        _ => Err(Error::format(path, format!("line {lineno}: {tag} must be followed by true or false"))),
    }
}

fn parse_usize(path: &Path, lineno: usize, tag: &str, v: Option<&str>) -> Result<usize> {
    v.and_then(|s| s.parse().ok())
        .ok_or_else(|| Error::format(path, format!("line {lineno}: {tag} must be followed by a non-negative integer")))
}

/// Parses the text of a `.ts` file; `path` only names the file in errors.
fn parse_ts(text: &str, path: &Path) -> Result<TsFile> {
    let mut problem_name = None;
    let mut class_labels: Option<Vec<String>> = None;
    let mut univariate = None;
    let mut dimensions = None;
    let mut series_length = None;
    let mut in_data = false;
    let mut shape: Option<(usize, usize)> = None; // (dimensions, length) of the first row
    let (mut data, mut labels) = (Vec::new(), Vec::new());

    for (i, raw) in text.lines().enumerate() {
        let lineno = i + 1;
        let line = raw.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        if !in_data {
            let Some(header) = line.strip_prefix('@') else {
                return Err(Error::format(
                    path,
                    format!("line {lineno}: expected a @tag line or @data before the data"),
                ));
            };
            let mut words = header.split_whitespace();
            let tag = words.next().unwrap_or("").to_ascii_lowercase();
            match tag.as_str() {
                "problemname" => problem_name = words.next().map(str::to_string),
                "timestamps" => {
                    let with_timestamps = parse_bool(path, lineno, "@timeStamps", words.next())?;
                    if with_timestamps {
                        return Err(Error::format(path, format!("line {lineno}: @timeStamps true is not supported")));
                    }
                }
                "univariate" => univariate = Some(parse_bool(path, lineno, "@univariate", words.next())?),
                "dimensions" => dimensions = Some(parse_usize(path, lineno, "@dimensions", words.next())?),
                "serieslength" => series_length = Some(parse_usize(path, lineno, "@seriesLength", words.next())?),
                "classlabel" => {
                    if !parse_bool(path, lineno, "@classLabel", words.next())? {
                        return Err(Error::format(
                            path,
                            format!("line {lineno}: @classLabel false: expected a classification file (@classLabel true ...)"),
                        ));
                    }
                    let list: Vec<String> = words.map(str::to_string).collect();
                    if list.is_empty() {
                        return Err(Error::format(path, format!("line {lineno}: @classLabel true lists no labels")));
                    }
                    class_labels = Some(list);
                }
                "data" => {
                    if class_labels.is_none() {
                        return Err(Error::format(
                            path,
                            format!("line {lineno}: @data before @classLabel (expected @classLabel true <labels>)"),
                        ));
                    }
                    in_data = true;
                }
                _ => {}
            }
            continue;
        }

        let case = data.len();
        let mut parts: Vec<&str> = line.split(':').collect();
        let label = parts.pop().unwrap_or("").trim();
        if parts.is_empty() {
            return Err(Error::format(path, format!("line {lineno} (case {case}): expected values then :label")));
        }
        let declared = class_labels.as_deref().unwrap_or(&[]);
        if !declared.iter().any(|l| l == label) {
            return Err(Error::format(
                path,
                format!("line {lineno} (case {case}): label {label:?} is not declared by @classLabel {declared:?}"),
            ));
        }
        let d = parts.len();
        let mut values = Vec::new();
        let mut len = None;
        for (j, dim) in parts.iter().enumerate() {
            let before = values.len();
            for v in dim.split(',') {
                let v = v.trim();
                match v.parse::<f32>() {
                    Ok(x) if x.is_finite() => values.push(x),
                    _ if v == "?" => {
                        return Err(Error::format(
                            path,
                            format!("line {lineno} (case {case}), dimension {j}: missing value '?' (not supported)"),
                        ))
                    }
                    _ => {
                        return Err(Error::format(
                            path,
                            format!("line {lineno} (case {case}), dimension {j}: {v:?} is not a finite number"),
                        ))
                    }
                }
            }
            let this = values.len() - before;
            match len {
                None => len = Some(this),
                Some(l) if l != this => {
                    return Err(Error::format(
                        path,
                        format!("line {lineno} (case {case}): dimension {j} has length {this}, dimension 0 has {l} (unequal lengths are not supported)"),
                    ))
                }
                Some(_) => {}
            }
        }
        let len = len.unwrap_or(0);
        match shape {
            None => {
                if univariate == Some(true) && d != 1 {
                    return Err(Error::format(path, format!("line {lineno}: @univariate true but {d} dimensions")));
                }
                if let Some(dd) = dimensions.filter(|&dd| dd != d) {
                    return Err(Error::format(path, format!("line {lineno}: @dimensions {dd} but {d} dimensions")));
                }
                if let Some(sl) = series_length.filter(|&sl| sl != len) {
                    return Err(Error::format(path, format!("line {lineno}: @seriesLength {sl} but length {len}")));
                }
                shape = Some((d, len));
            }
            Some((d0, l0)) if (d0, l0) != (d, len) => {
                return Err(Error::format(
                    path,
                    format!(
                        "line {lineno} (case {case}): {d} dimensions of length {len}, but the first case has {d0} of length {l0} (unequal lengths are not supported)"
                    ),
                ))
            }
            Some(_) => {}
        }
        data.push(values);
        labels.push(label.to_string());
    }
    if !in_data {
        return Err(Error::format(path, "no @data line"));
    }
    let Some((d_input, len)) = shape else {
        return Err(Error::format(path, "no cases after @data"));
    };
    Ok(TsFile {
        problem_name,
        class_labels: class_labels.unwrap_or_default(),
        inputs: Inputs::Features { d_input, len, data },
        labels,
    })
}

/// Loads `<dir>/<name>/<name>_TRAIN.ts` and `_TEST.ts` as a classification task.
///
/// - Classes are numbered 0..C-1 in the order of TRAIN's `@classLabel` list; a TEST label not in
///   it is an error.
/// - A seeded random `round(val_fraction * n)` of the TRAIN cases form the val split (the rest stay
///   in train); TEST is the test split. `val_fraction` must be in [0, 1) and leave a train case.
/// - Values are standardized per dimension with the mean and standard deviation of the train
///   split (all its cases and time steps; a zero deviation is taken as 1), applied to all three
///   splits. Many UCR series are already z-normalized one by one; this keeps their scale near 1
///   and makes raw archives usable without touching the test data's statistics.
///
/// # Errors
/// `val_fraction` outside [0, 1) or leaving no train case, everything [`read_ts`] reports for
/// either file, TEST series of another shape than TRAIN's, or a TEST label not among TRAIN's
/// classes.
pub fn load_ucr(dir: &Path, name: &str, val_fraction: f64, seed: u64) -> Result<TaskData> {
    if !(0.0..1.0).contains(&val_fraction) {
        return Err(Error::invalid("val_fraction", val_fraction, "a fraction in [0, 1)"));
    }
    let train_path = dir.join(name).join(format!("{name}_TRAIN.ts"));
    let test_path = dir.join(name).join(format!("{name}_TEST.ts"));
    let train = read_ts(&train_path)?;
    let test = read_ts(&test_path)?;
    let (Inputs::Features { d_input, len, .. }, Inputs::Features { d_input: td, len: tl, .. }) =
        (&train.inputs, &test.inputs)
    else {
        return Err(Error::format(&train_path, "expected feature inputs"));
    };
    let (d_input, len) = (*d_input, *len);
    if (*td, *tl) != (d_input, len) {
        return Err(Error::format(
            &test_path,
            format!("{td} dimensions of length {tl}, but TRAIN has {d_input} of length {len}"),
        ));
    }
    let classes = &train.class_labels;
    let to_class = |labels: &[String], path: &Path| -> Result<Vec<u32>> {
        labels
            .iter()
            .enumerate()
            .map(|(i, l)| match classes.iter().position(|c| c == l) {
                Some(c) => Ok(c as u32),
                None => {
                    Err(Error::format(path, format!("case {i}: label {l:?} is not one of TRAIN's classes {classes:?}")))
                }
            })
            .collect()
    };
    let train_all = Split { targets: Targets::Classes(to_class(&train.labels, &train_path)?), inputs: train.inputs };
    let mut test = Split { targets: Targets::Classes(to_class(&test.labels, &test_path)?), inputs: test.inputs };

    let n = train_all.len();
    let n_val = (val_fraction * n as f64).round() as usize;
    if n_val >= n {
        return Err(Error::invalid(
            "val_fraction",
            val_fraction,
            format!("a fraction leaving at least one of {n} train cases"),
        ));
    }
    let perm = permutation(n, seed);
    let mut val = train_all.select(&perm[..n_val]);
    let mut train_split = train_all.select(&perm[n_val..]);

    // Per-dimension statistics of the train split, in f64.
    let train_data: &[Vec<f32>] = match &train_split.inputs {
        Inputs::Features { data, .. } => data,
        Inputs::Tokens(_) => &[],
    };
    let mut stats = Vec::with_capacity(d_input);
    for j in 0..d_input {
        let (mut s, mut s2, mut count) = (0f64, 0f64, 0f64);
        for x in train_data {
            for &v in &x[j * len..(j + 1) * len] {
                s += v as f64;
                s2 += (v as f64) * (v as f64);
                count += 1.0;
            }
        }
        let mean = if count > 0.0 { s / count } else { 0.0 };
        let var = if count > 0.0 { (s2 / count - mean * mean).max(0.0) } else { 0.0 };
        let std = var.sqrt();
        stats.push((mean, if std > 0.0 { std } else { 1.0 }));
    }
    for split in [&mut train_split, &mut val, &mut test] {
        if let Inputs::Features { data, .. } = &mut split.inputs {
            for x in data {
                for (j, &(mean, std)) in stats.iter().enumerate() {
                    for v in &mut x[j * len..(j + 1) * len] {
                        *v = ((*v as f64 - mean) / std) as f32;
                    }
                }
            }
        }
    }
    Ok(TaskData {
        name: format!("ucr/{name}"),
        train: train_split,
        val,
        test,
        vocab_size: None,
        d_input,
        d_output: classes.len(),
        regression: false,
    })
}

/// Finds the sktime archive folder `sktime/datasets/data` under `data_root`: either directly
/// (`data_root/sktime/datasets/data`) or in an unpacked wheel folder
/// (`data_root/sktime-<version>/sktime/datasets/data`, the last in name order if several).
pub fn find_sktime_data(data_root: &Path) -> Option<PathBuf> {
    let tail = Path::new("sktime").join("datasets").join("data");
    let direct = data_root.join(&tail);
    if direct.is_dir() {
        return Some(direct);
    }
    let mut dirs: Vec<PathBuf> = std::fs::read_dir(data_root)
        .ok()?
        .filter_map(|e| e.ok())
        .filter(|e| e.file_name().to_string_lossy().starts_with("sktime"))
        .map(|e| e.path().join(&tail))
        .filter(|p| p.is_dir())
        .collect();
    dirs.sort();
    dirs.pop()
}

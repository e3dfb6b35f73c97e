//! Losses over rows of logits, each with its gradient (the llm.c style: one function returns the
//! loss and ∂loss/∂logits): softmax cross-entropy with ignored rows, KL divergence to a teacher's
//! distribution, mean squared error; and the softmax itself. Every reduction runs in f64 with the
//! row maximum subtracted. Shared by the S4 models and the transformers.
//!
//! ```
//! use ndarray::array;
//! use s4::nn::loss::{cross_entropy, kl_divergence, softmax, IGNORE};
//! // uniform logits over 4 classes cost ln 4; the gradient is (softmax − onehot)/rows
//! let (loss, g, correct) = cross_entropy(array![[0.0f64, 0.0, 0.0, 0.0]].view(), array![2u32].view())?;
//! assert!((loss - 4f64.ln()).abs() < 1e-12);
//! assert!((g[[0, 2]] + 0.75).abs() < 1e-12 && (g[[0, 0]] - 0.25).abs() < 1e-12);
//! assert_eq!(correct, 0); // ties go to the first class
//! // an ignored row costs nothing and gets no gradient
//! let (l2, g2, _) = cross_entropy(array![[0.0f64, 0.0, 0.0, 0.0], [5.0, 0.0, 0.0, 0.0]].view(), array![2u32, IGNORE].view())?;
//! assert_eq!((l2, g2.row(1).sum()), (loss, 0.0));
//! // KL(p ‖ softmax(z)) is 0 when the teacher is the model's own distribution
//! let z = array![[1.0f64, -2.0, 0.5]];
//! let (kl, _) = kl_divergence(z.view(), softmax(z.view()).view())?;
//! assert!(kl.abs() < 1e-12);
//! # Ok::<(), s4::Error>(())
//! ```

use crate::error::{Error, Result};
use crate::scalar::Real;
use ndarray::{Array1, Array2, ArrayView1, ArrayView2};

/// The target id of a position without a target (PyTorch's `ignore_index`).
pub const IGNORE: u32 = u32::MAX;

/// log Σ_k exp(l_k) of one row, in f64, and the row's softmax written into `q`.
fn log_softmax_row<T: Real>(row: ArrayView1<T>, q: &mut [f64]) -> f64 {
    let mx = row.iter().fold(f64::NEG_INFINITY, |m, &v| m.max(v.as_f64()));
    let mut z = 0.0;
    for (qk, &v) in q.iter_mut().zip(row) {
        *qk = (v.as_f64() - mx).exp();
        z += *qk;
    }
    for qk in q.iter_mut() {
        *qk /= z;
    }
    mx + z.ln()
}

/// Row-wise softmax of logits (N, V).
pub fn softmax<T: Real>(logits: ArrayView2<T>) -> Array2<T> {
    let mut out = Array2::<T>::zeros(logits.dim());
    let mut q = vec![0.0; logits.ncols()];
    for (row, mut o) in logits.outer_iter().zip(out.outer_iter_mut()) {
        log_softmax_row(row, &mut q);
        o.iter_mut().zip(&q).for_each(|(o, &v)| *o = T::of(v));
    }
    out
}

/// Σ over the rows whose target is not [`IGNORE`] of −log softmax(l)_y, its gradient
/// (softmax − onehot)·`weight` (zero rows where ignored), and the number of rows whose arg-max (the
/// first, on ties) is the target. logits (N, V), targets (N,), every target < V or [`IGNORE`].
///
/// # Panics
/// A target ≥ V that is not [`IGNORE`], or fewer targets than rows.
pub fn cross_entropy_sum<T: Real>(
    logits: ArrayView2<T>,
    targets: ArrayView1<u32>,
    weight: f64,
) -> (f64, Array2<T>, usize) {
    let mut g = Array2::<T>::zeros(logits.dim());
    let mut q = vec![0.0; logits.ncols()];
    let (mut loss, mut correct) = (0.0, 0);
    for ((row, mut gr), &y) in logits.outer_iter().zip(g.outer_iter_mut()).zip(targets) {
        if y == IGNORE {
            continue;
        }
        let y = y as usize;
        let lse = log_softmax_row(row, &mut q);
        loss += lse - row[y].as_f64();
        let arg = (0..row.len()).fold(0, |a, k| if row[k].as_f64() > row[a].as_f64() { k } else { a });
        correct += usize::from(arg == y);
        q[y] -= 1.0;
        gr.iter_mut().zip(&q).for_each(|(g, &v)| *g = T::of(v * weight));
    }
    (loss, g, correct)
}

/// Checks targets against V (ids < V or [`IGNORE`]) and their count against the rows; returns how
/// many are not ignored.
fn check_targets(targets: ArrayView1<u32>, rows: usize, vocab: usize) -> Result<usize> {
    if targets.len() != rows {
        return Err(Error::shape("targets", format!("(N,) = ({rows},) (one per logits row)"), targets.shape()));
    }
    let mut count = 0;
    for (i, &y) in targets.iter().enumerate() {
        if y == IGNORE {
            continue;
        }
        if y as usize >= vocab {
            return Err(Error::invalid(
                format!("target {i}"),
                y,
                format!("an id < {vocab} (the number of classes), or u32::MAX to ignore the row"),
            ));
        }
        count += 1;
    }
    Ok(count)
}

/// Softmax cross-entropy, mean over the rows whose target is not [`IGNORE`] (PyTorch's
/// `F.cross_entropy(..., ignore_index)`): logits (N, V), targets (N,). Returns the loss, its
/// gradient (softmax − onehot)/count, and the number of correct arg-max predictions.
///
/// # Errors
/// Mismatched lengths, a target ≥ V, or every target ignored.
pub fn cross_entropy<T: Real>(logits: ArrayView2<T>, targets: ArrayView1<u32>) -> Result<(f64, Array2<T>, usize)> {
    let count = check_targets(targets, logits.nrows(), logits.ncols())?;
    if count == 0 {
        return Err(Error::invalid("targets", "all ignored", "at least one target that is not u32::MAX"));
    }
    let (loss, g, correct) = cross_entropy_sum(logits, targets, 1.0 / count as f64);
    Ok((loss / count as f64, g, correct))
}

/// Σ over the rows with a teacher (probability mass s = Σ_k p_k > 0) of KL(p ‖ softmax(l)) =
/// Σ_k p_k(ln p_k − ln q_k) (0·ln 0 = 0), and its gradient (s·q − p)·`weight` (q − p for a
/// normalized teacher). logits (N, V), probs (N, V).
pub fn kl_sum<T: Real, P: Real>(logits: ArrayView2<T>, probs: ArrayView2<P>, weight: f64) -> (f64, Array2<T>) {
    let mut g = Array2::<T>::zeros(logits.dim());
    let mut q = vec![0.0; logits.ncols()];
    let mut loss = 0.0;
    for ((row, pr), mut gr) in logits.outer_iter().zip(probs.outer_iter()).zip(g.outer_iter_mut()) {
        let mass: f64 = pr.iter().map(|v| v.as_f64()).sum();
        if mass == 0.0 {
            continue;
        }
        let lse = log_softmax_row(row, &mut q);
        for k in 0..q.len() {
            let p = pr[k].as_f64();
            if p > 0.0 {
                loss += p * (p.ln() - (row[k].as_f64() - lse));
            }
            gr[k] = T::of((mass * q[k] - p) * weight);
        }
    }
    (loss, g)
}

/// Checks teacher probabilities: finite, ≥ 0, each row summing to 1 (within 1e-3) or to 0 (no
/// teacher at that position); returns the number of rows with a teacher.
///
/// # Errors
/// The first bad entry or row.
pub fn check_probs<P: Real>(probs: ArrayView2<P>) -> Result<usize> {
    let mut count = 0;
    for (r, row) in probs.outer_iter().enumerate() {
        if let Some(k) = row.iter().position(|v| !(v.is_finite() && *v >= P::zero())) {
            return Err(Error::invalid(
                format!("teacher probability at (row {r}, token {k})"),
                row[k],
                "a finite value >= 0",
            ));
        }
        let mass: f64 = row.iter().map(|v| v.as_f64()).sum();
        if mass == 0.0 {
            continue;
        }
        if (mass - 1.0).abs() > 1e-3 {
            return Err(Error::invalid(
                format!("teacher probabilities of row {r} (sum)"),
                mass,
                "1 (a distribution), or 0 to skip the position",
            ));
        }
        count += 1;
    }
    Ok(count)
}

/// The distillation loss KL(teacher ‖ student), mean over the rows that have a teacher (rows of
/// `probs` summing to 0 are skipped): logits (N, V), probs (N, V). The gradient is
/// (softmax(l) − p)/count (Hinton et al. 2015, at temperature 1). Equals the soft cross-entropy
/// −Σ p ln q minus the teacher's entropy.
///
/// # Errors
/// Mismatched shapes, a negative or non-finite probability, a row summing to neither 1 (±1e-3)
/// nor 0, or no row with a teacher.
pub fn kl_divergence<T: Real, P: Real>(logits: ArrayView2<T>, probs: ArrayView2<P>) -> Result<(f64, Array2<T>)> {
    if probs.dim() != logits.dim() {
        return Err(Error::shape(
            "teacher probabilities",
            format!("{:?} (the logits' shape)", logits.shape()),
            probs.shape(),
        ));
    }
    let count = check_probs(probs)?;
    if count == 0 {
        return Err(Error::invalid("teacher probabilities", "all rows 0", "at least one row that sums to 1"));
    }
    let (loss, g) = kl_sum(logits, probs, 1.0 / count as f64);
    Ok((loss / count as f64, g))
}

/// Mean squared error over rows: pred (R,), target (R,); returns the loss and its gradient 2(p − y)/R.
pub fn mse<T: Real>(pred: ArrayView1<T>, target: &[f32]) -> (f64, Array1<T>) {
    let r = pred.len();
    let mut loss = 0.0;
    let g = Array1::from_shape_fn(r, |i| {
        let d = pred[i].as_f64() - target[i] as f64;
        loss += d * d;
        T::of(2.0 * d / r as f64)
    });
    (loss / r as f64, g)
}

//! Backward passes of the GPT-2 model, as forward/backward pairs of plain functions (the llm.c
//! style: each backward takes what its forward saw and the gradient of its output, and returns the
//! gradients of its inputs and weights), and [`forward_backward`] for the whole model.
//!
//! Activations are (N, C) row-major with N = B·T rows, sequence-major (row `b·T + t`). Weights
//! are in the Hugging Face layout ([`Linear`](super::Linear): W is [in, out]). No dropout (GPT-2's
//! `attn_pdrop`, `resid_pdrop` and `embd_pdrop` are not implemented: the training here runs
//! without it).
//!
//! [`forward_backward`] runs the sequences of a batch in parallel (rayon) and sums their gradients
//! in sequence order, so the result does not depend on the number of threads. The plain functions
//! panic if their arguments' shapes disagree (they are building blocks; [`forward_backward`]
//! checks its inputs and returns errors).
//!
//! ```
//! use ndarray::Array2;
//! use s4::transformer::grad::{forward_backward, lm_loss, LmTarget};
//! use s4::transformer::{Gpt, GptConfig};
//! // the whole model's gradient against a central difference, in f64
//! let cfg = GptConfig { vocab_size: 11, n_positions: 8, n_embd: 8, n_layer: 1, n_head: 2, ..Default::default() };
//! let model = Gpt::<f64>::new(cfg, 0)?;
//! let ids = Array2::from_shape_fn((2, 6), |(b, t)| ((3 * b + 5 * t) % 11) as u32);
//! // targets: the next token (the last position has none)
//! let mut targets = Array2::from_elem((2, 6), s4::transformer::IGNORE);
//! targets.slice_mut(ndarray::s![.., ..5]).assign(&ids.slice(ndarray::s![.., 1..]));
//! let (loss, grads) = forward_backward(&model, ids.view(), targets.view())?;
//! assert!((loss - lm_loss(&model, ids.view(), LmTarget::Tokens(targets.view()))?).abs() < 1e-12);
//! let (name, h) = ("h.0.mlp.c_fc.weight", 1e-6);
//! let shift = |d: f64| -> s4::Result<f64> {
//!     let mut m = model.clone();
//!     m.tensors_mut().into_iter().find(|(n, _)| n == name).unwrap().1[[2, 3]] += d;
//!     lm_loss(&m, ids.view(), LmTarget::Tokens(targets.view()))
//! };
//! let fd = (shift(h)? - shift(-h)?) / (2.0 * h);
//! let g = grads.tensors().into_iter().find(|(n, _)| n == name).unwrap().1[[2, 3]];
//! assert!((fd - g).abs() < 1e-7, "{fd} {g}");
//! # Ok::<(), s4::Error>(())
//! ```

use super::attention::attend_row;
use super::{maybe_par_map, Activation, Block, Gpt, IGNORE};
use crate::error::{Error, Result};
use crate::nn::linear::{linear, linear_backward, lm_head, PAR_WORK};
use crate::nn::loss::{check_probs, cross_entropy_sum, kl_sum};
use crate::nn::norm::{layer_norm_backward, layer_norm_forward, LayerNormCache};
use crate::nn::simd::{axpy, dot};
use crate::scalar::Real;
use ndarray::linalg::general_mat_mul;
use ndarray::{s, Array2, Array3, Array4, ArrayView1, ArrayView2, ArrayView3, Axis};
use rayon::prelude::*;

/// Token plus position embedding (HF `GPT2Model.forward`: `inputs_embeds + position_embeds`):
/// row `b·T + t` = wte[ids[b, t]] + wpe[pos0 + t]. wte (V, C), wpe (P, C), ids (B, T) → (B·T, C).
///
/// # Panics
/// An id ≥ V or pos0 + T > P.
pub fn embedding_forward<T: Real>(
    wte: ArrayView2<T>,
    wpe: ArrayView2<T>,
    ids: ArrayView2<u32>,
    pos0: usize,
) -> Array2<T> {
    let (b, t) = ids.dim();
    let mut x = Array2::<T>::zeros((b * t, wte.ncols()));
    for ((i, j), &id) in ids.indexed_iter() {
        let mut row = x.row_mut(i * t + j);
        row.assign(&wte.row(id as usize));
        row += &wpe.row(pos0 + j);
    }
    x
}

/// Backward of [`embedding_forward`]: g_wte[ids[b, t]] += dx[b·T + t], g_wpe[pos0 + t] += dx[b·T + t]
/// (in row order). Returns (g_wte (V, C), g_wpe (P, C)).
pub fn embedding_backward<T: Real>(
    ids: ArrayView2<u32>,
    dx: ArrayView2<T>,
    vocab: usize,
    n_positions: usize,
    pos0: usize,
) -> (Array2<T>, Array2<T>) {
    let (_, t) = ids.dim();
    let c = dx.ncols();
    let mut gwte = Array2::<T>::zeros((vocab, c));
    let mut gwpe = Array2::<T>::zeros((n_positions, c));
    for ((i, j), &id) in ids.indexed_iter() {
        let g = dx.row(i * t + j);
        let mut r = gwte.row_mut(id as usize);
        r += &g;
        let mut r = gwpe.row_mut(pos0 + j);
        r += &g;
    }
    (gwte, gwpe)
}

/// The MLP activation elementwise ([`Activation`]): `gelu_new` =
/// 0.5·x·(1 + tanh(√(2/π)·(x + 0.044715·x³))) (HF `NewGELUActivation`), or exact `gelu` = x·Φ(x).
pub fn activation_forward<T: Real>(x: ArrayView2<T>, act: Activation) -> Array2<T> {
    let mut y = x.as_standard_layout().into_owned();
    act.apply_in_place(y.as_slice_mut().expect("standard layout"));
    y
}

/// Backward of [`activation_forward`]: dx = dy·act′(x).
pub fn activation_backward<T: Real>(x: ArrayView2<T>, dy: ArrayView2<T>, act: Activation) -> Array2<T> {
    let mut dx = dy.to_owned();
    dx.zip_mut_with(&x, |g, &v| *g *= act.grad(v));
    dx
}

/// What attention's backward needs: the softmax weights P (B, n_head, T, T) (zero where a key is
/// masked).
#[derive(Clone, Debug)]
pub struct AttentionCache<T> {
    /// P[b, h, i, j] = softmax_j(q_i·k_j/√d) over the keys j that query i sees ([`AttentionMask`]).
    pub probs: Array4<T>,
}

/// Which keys each query of sequence b sees.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AttentionMask<'a> {
    /// Causal (GPT-2): query i sees keys j ≤ i.
    Causal,
    /// Bidirectional with a key-padding mask (the LRA encoder): query i of sequence b sees every key
    /// j < n_b, with n_b = `lengths[b]` (every position when `None`); a query at a padded position
    /// i ≥ n_b sees no key and outputs 0 (padded positions never reach a valid output).
    Padding(Option<&'a [usize]>),
}

impl AttentionMask<'_> {
    /// The valid length n_b of sequence b of T positions (padding masks; T for causal masks).
    #[inline]
    fn valid(&self, b: usize, t: usize) -> usize {
        match self {
            AttentionMask::Padding(Some(l)) => l[b],
            _ => t,
        }
    }

    /// Panics unless the lengths fit the batch (one per sequence, each ≤ T).
    fn check(&self, batch: usize, t: usize) {
        if let AttentionMask::Padding(Some(l)) = self {
            assert_eq!(l.len(), batch, "one length per sequence");
            assert!(l.iter().all(|&n| n <= t), "lengths <= T = {t}");
        }
    }
}

/// Bidirectional attention of one (sequence, head) over its n valid positions, in matrix form:
/// q, k, v (n, d) → (out (n, d), P (n, n)) with S = scale·q·kᵀ (gemm), P = softmax over each row
/// (maximum subtracted), out = P·v (gemm).
fn attend_all<T: Real>(q: ArrayView2<T>, k: ArrayView2<T>, v: ArrayView2<T>, scale: T) -> (Array2<T>, Array2<T>) {
    let (n, d) = q.dim();
    let mut p = Array2::<T>::zeros((n, n));
    general_mat_mul(scale, &q, &k.t(), T::zero(), &mut p);
    for mut row in p.rows_mut() {
        let mx = row.iter().fold(T::neg_infinity(), |m, &x| m.max(x));
        let mut z = T::zero();
        row.mapv_inplace(|x| {
            let e = (x - mx).exp();
            z += e;
            e
        });
        let inv = T::one() / z;
        row.mapv_inplace(|x| x * inv);
    }
    let mut out = Array2::<T>::zeros((n, d));
    general_mat_mul(T::one(), &p, &v, T::zero(), &mut out);
    (out, p)
}

/// Backward of [`attend_all`] from dout (n, d): dV = Pᵀ·dout, dP = dout·vᵀ,
/// dS_ij = P_ij(dP_ij − Σ_k P_ik dP_ik)·scale, dq = dS·k, dk = dSᵀ·q (all gemm). Returns (dq, dk, dv).
fn attend_all_backward<T: Real>(
    q: ArrayView2<T>,
    k: ArrayView2<T>,
    v: ArrayView2<T>,
    p: ArrayView2<T>,
    dout: ArrayView2<T>,
    scale: T,
) -> (Array2<T>, Array2<T>, Array2<T>) {
    let (n, d) = q.dim();
    let mut dv = Array2::<T>::zeros((n, d));
    general_mat_mul(T::one(), &p.t(), &dout, T::zero(), &mut dv);
    let mut ds = Array2::<T>::zeros((n, n));
    general_mat_mul(T::one(), &dout, &v.t(), T::zero(), &mut ds);
    for (mut dsr, pr) in ds.rows_mut().into_iter().zip(p.rows()) {
        let sum = dsr.iter().zip(pr.iter()).fold(T::zero(), |a, (&x, &y)| a + x * y);
        dsr.zip_mut_with(&pr, |x, &y| *x = y * (*x - sum) * scale);
    }
    let mut dq = Array2::<T>::zeros((n, d));
    general_mat_mul(T::one(), &ds, &k, T::zero(), &mut dq);
    let mut dk = Array2::<T>::zeros((n, d));
    general_mat_mul(T::one(), &ds.t(), &q, T::zero(), &mut dk);
    (dq, dk, dv)
}

/// The (b, head) pairs of a batch.
fn head_tasks(batch: usize, n_head: usize) -> Vec<(usize, usize)> {
    (0..batch).flat_map(|b| (0..n_head).map(move |h| (b, h))).collect()
}

/// Causal multi-head self-attention (HF `GPT2Attention`, eager): qkv (B·T, 3C) = q | k | v, each
/// split into `n_head` heads of d = C/n_head contiguous columns; per sequence and head,
/// out_i = Σ_{j ≤ i} softmax_j(q_i·k_j/√d)·v_j. Returns (out (B·T, C), heads concatenated, cache).
/// [`attention_forward_masked`] with [`AttentionMask::Causal`].
pub fn attention_forward<T: Real>(qkv: ArrayView2<T>, batch: usize, n_head: usize) -> (Array2<T>, AttentionCache<T>) {
    attention_forward_masked(qkv, batch, n_head, AttentionMask::Causal)
}

/// Multi-head self-attention under `mask`: as [`attention_forward`], with out_i = Σ_j P_ij·v_j,
/// P_ij = softmax_j(q_i·k_j/√d) over the keys j query i sees ([`AttentionMask`]; out_i = 0 and
/// P_i = 0 for a query that sees none). The causal mask runs one query at a time (the decoding
/// kernel); the padding mask in matrix form per (sequence, head) over its n_b valid positions
/// (S = q·kᵀ/√d, then P·v, two gemms), so padded keys and queries cost nothing.
/// Returns (out (B·T, C), cache).
///
/// # Panics
/// Shapes that disagree (B·T rows, 3C columns, C a multiple of `n_head`), or padding lengths that
/// are not one per sequence, each ≤ T.
pub fn attention_forward_masked<T: Real>(
    qkv: ArrayView2<T>,
    batch: usize,
    n_head: usize,
    mask: AttentionMask,
) -> (Array2<T>, AttentionCache<T>) {
    let qkv = qkv.as_standard_layout();
    let (n, c3) = qkv.dim();
    let (t, c) = (n / batch, c3 / 3);
    mask.check(batch, t);
    let d = c / n_head;
    let scale = T::one() / T::of(d as f64).sqrt();
    let flat = qkv.as_slice().expect("standard layout");
    let tasks = head_tasks(batch, n_head);
    let work = tasks.len() * t * t * d;
    let parts = maybe_par_map(&tasks, tasks.len() > 1 && work >= PAR_WORK, |&(b, h)| {
        let mut out = Array2::<T>::zeros((t, d));
        if let AttentionMask::Padding(_) = mask {
            let n = mask.valid(b, t);
            let cols = |off: usize| qkv.slice(s![b * t..b * t + n, off + h * d..off + (h + 1) * d]);
            let (o, p) = attend_all(cols(0), cols(c), cols(2 * c), scale);
            out.slice_mut(s![..n, ..]).assign(&o);
            return (out, p); // P of the valid block (n, n)
        }
        let mut p = Array2::<T>::zeros((t, t));
        let seq = &flat[b * t * c3..(b + 1) * t * c3];
        for i in 0..t {
            let q = &seq[i * c3 + h * d..i * c3 + (h + 1) * d];
            let pr = p.row_mut(i).into_slice().expect("contiguous row");
            let o = out.row_mut(i).into_slice().expect("contiguous row");
            attend_row(q, &seq[c + h * d..], &seq[2 * c + h * d..], c3, i + 1, scale, pr, o);
        }
        (out, p)
    });
    let mut out = Array2::<T>::zeros((n, c));
    let mut probs = Array4::<T>::zeros((batch, n_head, t, t));
    for (&(b, h), (o, p)) in tasks.iter().zip(parts) {
        out.slice_mut(s![b * t..(b + 1) * t, h * d..(h + 1) * d]).assign(&o);
        let k = p.nrows();
        probs.slice_mut(s![b, h, ..k, ..k]).assign(&p);
    }
    (out, AttentionCache { probs })
}

/// Backward of [`attention_forward`]: with dP_ij = dout_i·v_j and dS_ij = P_ij(dP_ij − Σ_k P_ik dP_ik)/√d
/// (softmax backward), dq_i = Σ_j dS_ij k_j, dk_j = Σ_i dS_ij q_i, dv_j = Σ_i P_ij dout_i.
/// Returns dqkv (B·T, 3C). [`attention_backward_masked`] with [`AttentionMask::Causal`].
pub fn attention_backward<T: Real>(
    qkv: ArrayView2<T>,
    cache: &AttentionCache<T>,
    dout: ArrayView2<T>,
    batch: usize,
    n_head: usize,
) -> Array2<T> {
    attention_backward_masked(qkv, cache, dout, batch, n_head, AttentionMask::Causal)
}

/// Backward of [`attention_forward_masked`] under the same `mask`: the formulas of
/// [`attention_backward`] with the sums over the keys each query sees (masked keys and padded
/// queries get zero gradients). Returns dqkv (B·T, 3C).
///
/// # Panics
/// As [`attention_forward_masked`].
pub fn attention_backward_masked<T: Real>(
    qkv: ArrayView2<T>,
    cache: &AttentionCache<T>,
    dout: ArrayView2<T>,
    batch: usize,
    n_head: usize,
    mask: AttentionMask,
) -> Array2<T> {
    let qkv = qkv.as_standard_layout();
    let dout = dout.as_standard_layout();
    let (n, c3) = qkv.dim();
    let (t, c) = (n / batch, c3 / 3);
    mask.check(batch, t);
    let d = c / n_head;
    let scale = T::one() / T::of(d as f64).sqrt();
    let tasks = head_tasks(batch, n_head);
    let work = tasks.len() * t * t * d;
    let parts = maybe_par_map(&tasks, tasks.len() > 1 && work >= PAR_WORK, |&(b, h)| {
        let mut grads = [(); 3].map(|_| Array2::<T>::zeros((t, d)));
        if let AttentionMask::Padding(_) = mask {
            let n = mask.valid(b, t);
            let cols = |off: usize| qkv.slice(s![b * t..b * t + n, off + h * d..off + (h + 1) * d]);
            let go = dout.slice(s![b * t..b * t + n, h * d..(h + 1) * d]);
            let p = cache.probs.slice(s![b, h, ..n, ..n]);
            let (dq, dk, dv) = attend_all_backward(cols(0), cols(c), cols(2 * c), p, go, scale);
            for (g, part) in grads.iter_mut().zip([dq, dk, dv]) {
                g.slice_mut(s![..n, ..]).assign(&part);
            }
            return grads;
        }
        let row = |i: usize, off: usize| qkv.slice(s![b * t + i, off + h * d..off + (h + 1) * d]).to_vec();
        let qs: Vec<Vec<T>> = (0..t).map(|i| row(i, 0)).collect();
        let ks: Vec<Vec<T>> = (0..t).map(|i| row(i, c)).collect();
        let vs: Vec<Vec<T>> = (0..t).map(|i| row(i, 2 * c)).collect();
        let p = cache.probs.slice(s![b, h, .., ..]);
        let mut dq = vec![vec![T::zero(); d]; t];
        let mut dk = vec![vec![T::zero(); d]; t];
        let mut dv = vec![vec![T::zero(); d]; t];
        let mut dp = vec![T::zero(); t];
        for i in 0..t {
            let go = dout.slice(s![b * t + i, h * d..(h + 1) * d]).to_vec();
            let mut sum = T::zero();
            for j in 0..=i {
                dp[j] = dot(&go, &vs[j]);
                sum += p[[i, j]] * dp[j];
            }
            for j in 0..=i {
                let pij = p[[i, j]];
                let ds = pij * (dp[j] - sum) * scale;
                axpy(&mut dq[i], ds, &ks[j]);
                axpy(&mut dk[j], ds, &qs[i]);
                axpy(&mut dv[j], pij, &go);
            }
        }
        for (g, rows) in grads.iter_mut().zip([dq, dk, dv]) {
            for (mut gr, r) in g.rows_mut().into_iter().zip(rows) {
                gr.assign(&ArrayView1::from(r.as_slice()));
            }
        }
        grads
    });
    let mut dqkv = Array2::<T>::zeros((n, c3));
    for (&(b, h), grads) in tasks.iter().zip(parts) {
        for (off, g) in [0, c, 2 * c].into_iter().zip(grads) {
            dqkv.slice_mut(s![b * t..(b + 1) * t, off + h * d..off + (h + 1) * d]).assign(&g);
        }
    }
    dqkv
}

/// The tied LM head (HF `GPT2LMHeadModel.lm_head`, weight = `wte`, no bias): logits = x·wteᵀ.
/// x (N, C), wte (V, C) → (N, V).
pub fn lm_head_forward<T: Real>(x: ArrayView2<T>, wte: ArrayView2<T>) -> Array2<T> {
    lm_head(x, wte)
}

/// Backward of [`lm_head_forward`]: dx = dlogits·wte, dwte = dlogitsᵀ·x. Returns (dx, dwte).
pub fn lm_head_backward<T: Real>(
    x: ArrayView2<T>,
    wte: ArrayView2<T>,
    dlogits: ArrayView2<T>,
) -> (Array2<T>, Array2<T>) {
    let mut dx = Array2::<T>::zeros(x.dim());
    general_mat_mul(T::one(), &dlogits, &wte, T::zero(), &mut dx);
    let mut dw = Array2::<T>::zeros(wte.dim());
    general_mat_mul(T::one(), &dlogits.t(), &x, T::zero(), &mut dw);
    (dx, dw)
}

/// Checks targets against the vocabulary (ids < V or [`IGNORE`]); returns how many are not ignored.
fn check_targets(targets: ArrayView2<u32>, vocab: usize) -> Result<usize> {
    let mut count = 0;
    for ((i, j), &y) in targets.indexed_iter() {
        if y == IGNORE {
            continue;
        }
        if y as usize >= vocab {
            return Err(Error::invalid(
                format!("target id at (sequence {i}, position {j})"),
                y,
                format!("an id < vocab_size = {vocab}, or u32::MAX to ignore the position"),
            ));
        }
        count += 1;
    }
    Ok(count)
}

/// What the language-model loss compares the logits (B, T, V) with.
#[derive(Clone, Copy, Debug)]
pub enum LmTarget<'a, T> {
    /// Next-token ids (B, T) ([`IGNORE`] = no target): the mean [`cross_entropy`](crate::nn::loss::cross_entropy).
    Tokens(ArrayView2<'a, u32>),
    /// Distillation: `soft_weight`·(mean [`kl_divergence`](crate::nn::loss::kl_divergence) against
    /// `probs` (B, T, V)) + `hard_weight`·(mean cross-entropy against `tokens` (B, T), if given).
    Soft {
        /// Teacher distributions (rows summing to 1, or to 0 to skip a position).
        probs: ArrayView3<'a, T>,
        /// Optional next-token ids for the hard term.
        tokens: Option<ArrayView2<'a, u32>>,
        /// Weight of the cross-entropy term (ignored without `tokens`).
        hard_weight: f64,
        /// Weight of the KL term.
        soft_weight: f64,
    },
}

/// A checked target: per-row loss scales of the hard and soft terms (weight / count).
struct Scales {
    hard: f64,
    soft: f64,
}

fn check_lm_target<T: Real>(target: &LmTarget<T>, b: usize, t: usize, v: usize) -> Result<Scales> {
    let check_tokens = |tok: &ArrayView2<u32>| -> Result<usize> {
        if tok.dim() != (b, t) {
            return Err(Error::shape("targets", format!("(B, T) = ({b}, {t}) (the ids' shape)"), tok.shape()));
        }
        check_targets(tok.view(), v)
    };
    let none_left = || Error::invalid("targets", "all ignored", "at least one target that is not u32::MAX");
    match target {
        LmTarget::Tokens(tok) => match check_tokens(tok)? {
            0 => Err(none_left()),
            n => Ok(Scales { hard: 1.0 / n as f64, soft: 0.0 }),
        },
        LmTarget::Soft { probs, tokens, hard_weight, soft_weight } => {
            for (name, w) in [("hard_weight", *hard_weight), ("soft_weight", *soft_weight)] {
                if !(w.is_finite() && w >= 0.0) {
                    return Err(Error::invalid(name, w, "a finite weight >= 0"));
                }
            }
            if probs.dim() != (b, t, v) {
                return Err(Error::shape(
                    "teacher probabilities",
                    format!("(B, T, V) = ({b}, {t}, {v})"),
                    probs.shape(),
                ));
            }
            let n_soft = check_probs(super::flatten_rows(probs.view()).view())?;
            if n_soft == 0 && *soft_weight > 0.0 {
                return Err(Error::invalid("teacher probabilities", "all rows 0", "at least one row that sums to 1"));
            }
            let hard = match tokens {
                Some(tok) => match check_tokens(tok)? {
                    0 if *hard_weight > 0.0 => return Err(none_left()),
                    0 => 0.0,
                    n => hard_weight / n as f64,
                },
                None => 0.0,
            };
            let soft = if n_soft > 0 { soft_weight / n_soft as f64 } else { 0.0 };
            Ok(Scales { hard, soft })
        }
    }
}

/// The loss terms of sequence `b` over its logits (T, V): (Σ loss, dlogits).
fn seq_loss<T: Real>(logits: ArrayView2<T>, target: &LmTarget<T>, sc: &Scales, b: usize) -> (f64, Array2<T>) {
    match target {
        LmTarget::Tokens(tok) => {
            let (l, g, _) = cross_entropy_sum(logits, tok.row(b), sc.hard);
            (l * sc.hard, g)
        }
        LmTarget::Soft { probs, tokens, .. } => {
            let (mut loss, mut g) = (0.0, Array2::<T>::zeros(logits.dim()));
            if sc.soft > 0.0 {
                let (l, gs) = kl_sum(logits, probs.index_axis(Axis(0), b), sc.soft);
                loss += l * sc.soft;
                g += &gs;
            }
            if let (Some(tok), true) = (tokens, sc.hard > 0.0) {
                let (l, gh, _) = cross_entropy_sum(logits, tok.row(b), sc.hard);
                loss += l * sc.hard;
                g += &gh;
            }
            (loss, g)
        }
    }
}

/// The activations one block's backward needs.
#[derive(Debug)]
pub(crate) struct BlockActs<T> {
    ln1: Array2<T>,
    ln1_cache: LayerNormCache<T>,
    qkv: Array2<T>,
    att: Array2<T>,
    att_cache: AttentionCache<T>,
    ln2: Array2<T>,
    ln2_cache: LayerNormCache<T>,
    fc: Array2<T>,
    act: Array2<T>,
}

/// How the blocks of a model run: batch size, heads, LayerNorm ε, activation and attention mask.
#[derive(Clone, Copy, Debug)]
pub(crate) struct BlockSpec<'a> {
    pub(crate) batch: usize,
    pub(crate) heads: usize,
    pub(crate) eps: f64,
    pub(crate) act: Activation,
    pub(crate) mask: AttentionMask<'a>,
}

/// One pre-LayerNorm block in training mode over x (B·T, C), in place:
/// x ← x + attn_proj(attn(c_attn(ln_1(x)))), then x ← x + mlp_proj(act(c_fc(ln_2(x)))).
/// Returns what [`block_backward`] needs.
pub(crate) fn block_forward<T: Real>(blk: &Block<T>, x: &mut Array2<T>, sp: BlockSpec) -> BlockActs<T> {
    let (ln1, ln1_cache) = layer_norm_forward(x.view(), blk.ln_1.weight.view(), blk.ln_1.bias.view(), sp.eps);
    let qkv = linear(ln1.view(), blk.c_attn.weight.view(), blk.c_attn.bias.view());
    let (att, att_cache) = attention_forward_masked(qkv.view(), sp.batch, sp.heads, sp.mask);
    *x += &linear(att.view(), blk.attn_proj.weight.view(), blk.attn_proj.bias.view());
    let (ln2, ln2_cache) = layer_norm_forward(x.view(), blk.ln_2.weight.view(), blk.ln_2.bias.view(), sp.eps);
    let fc = linear(ln2.view(), blk.c_fc.weight.view(), blk.c_fc.bias.view());
    let act = activation_forward(fc.view(), sp.act);
    *x += &linear(act.view(), blk.mlp_proj.weight.view(), blk.mlp_proj.bias.view());
    BlockActs { ln1, ln1_cache, qkv, att, att_cache, ln2, ln2_cache, fc, act }
}

/// Backward of [`block_forward`]: dx (the gradient of the block's output) becomes the gradient of
/// its input, and the block's weight gradients are written into `gb`.
pub(crate) fn block_backward<T: Real>(
    blk: &Block<T>,
    a: &BlockActs<T>,
    dx: &mut Array2<T>,
    gb: &mut Block<T>,
    sp: BlockSpec,
) {
    let (dact, dw, db) = linear_backward(a.act.view(), blk.mlp_proj.weight.view(), dx.view());
    (gb.mlp_proj.weight, gb.mlp_proj.bias) = (dw, db);
    let dfc = activation_backward(a.fc.view(), dact.view(), sp.act);
    let (dln2, dw, db) = linear_backward(a.ln2.view(), blk.c_fc.weight.view(), dfc.view());
    (gb.c_fc.weight, gb.c_fc.bias) = (dw, db);
    let (dxm, dw, db) = layer_norm_backward(&a.ln2_cache, blk.ln_2.weight.view(), dln2.view());
    (gb.ln_2.weight, gb.ln_2.bias) = (dw, db);
    *dx += &dxm;
    let (datt, dw, db) = linear_backward(a.att.view(), blk.attn_proj.weight.view(), dx.view());
    (gb.attn_proj.weight, gb.attn_proj.bias) = (dw, db);
    let dqkv = attention_backward_masked(a.qkv.view(), &a.att_cache, datt.view(), sp.batch, sp.heads, sp.mask);
    let (dln1, dw, db) = linear_backward(a.ln1.view(), blk.c_attn.weight.view(), dqkv.view());
    (gb.c_attn.weight, gb.c_attn.bias) = (dw, db);
    let (dxi, dw, db) = layer_norm_backward(&a.ln1_cache, blk.ln_1.weight.view(), dln1.view());
    (gb.ln_1.weight, gb.ln_1.bias) = (dw, db);
    *dx += &dxi;
}

/// Forward of the training path over `ids` (B, T) from position 0, keeping every activation;
/// returns (logits (B·T, V), block activations, the final LayerNorm's input and output and cache).
fn forward_train<T: Real>(
    model: &Gpt<T>,
    ids: ArrayView2<u32>,
) -> (Array2<T>, Vec<BlockActs<T>>, Array2<T>, LayerNormCache<T>) {
    let cfg = model.config();
    let sp = gpt_spec(model, ids.nrows());
    let mut x = embedding_forward(model.wte().view(), model.wpe().view(), ids, 0);
    let acts: Vec<BlockActs<T>> = model.blocks().iter().map(|blk| block_forward(blk, &mut x, sp)).collect();
    let lnf = model.ln_f();
    let (hf, hf_cache) = layer_norm_forward(x.view(), lnf.weight.view(), lnf.bias.view(), cfg.layer_norm_epsilon);
    let logits = lm_head_forward(hf.view(), model.wte().view());
    (logits, acts, hf, hf_cache)
}

/// The causal block settings of a GPT over `batch` sequences.
fn gpt_spec<T: Real>(model: &Gpt<T>, batch: usize) -> BlockSpec<'static> {
    let cfg = model.config();
    BlockSpec {
        batch,
        heads: cfg.n_head,
        eps: cfg.layer_norm_epsilon,
        act: model.activation(),
        mask: AttentionMask::Causal,
    }
}

/// Backward of [`forward_train`] given dlogits (B·T, V): the gradient of every parameter.
fn backward_train<T: Real>(
    model: &Gpt<T>,
    ids: ArrayView2<u32>,
    acts: &[BlockActs<T>],
    hf: &Array2<T>,
    hf_cache: &LayerNormCache<T>,
    dlogits: ArrayView2<T>,
) -> Gpt<T> {
    let cfg = model.config();
    let sp = gpt_spec(model, ids.nrows());
    let mut g = model.zeros_like();
    let (dhf, dwte_head) = lm_head_backward(hf.view(), model.wte().view(), dlogits);
    let (mut dx, dw, db) = layer_norm_backward(hf_cache, model.ln_f().weight.view(), dhf.view());
    g.ln_f.weight = dw;
    g.ln_f.bias = db;
    for ((blk, a), gb) in model.blocks().iter().zip(acts).zip(g.blocks.iter_mut()).rev() {
        block_backward(blk, a, &mut dx, gb, sp);
    }
    let (dwte, dwpe) = embedding_backward(ids, dx.view(), cfg.vocab_size, cfg.n_positions, 0);
    g.wte = dwte_head + &dwte;
    g.wpe = dwpe;
    g
}

/// Runs `f` on items `0 .. n` in parallel (rayon), in waves of `wave` items (so at most that many
/// results are alive at once), and passes the results to `fold` in item order: a sum folded this
/// way does not depend on the number of threads.
pub(crate) fn map_fold_in_order<R: Send>(
    n: usize,
    wave: usize,
    f: impl Fn(usize) -> R + Sync + Send,
    mut fold: impl FnMut(R),
) {
    let wave = wave.max(1);
    let items: Vec<usize> = (0..n).collect();
    for chunk in items.chunks(wave) {
        let parts: Vec<R> = chunk.par_iter().map(|&i| f(i)).collect();
        parts.into_iter().for_each(&mut fold);
    }
}

/// Checks ids for a full pass from position 0: as [`Gpt::forward_cached`], T ≤ n_positions.
fn check_full_pass<T: Real>(model: &Gpt<T>, ids: ArrayView2<u32>) -> Result<()> {
    model.check_ids(ids)?;
    let np = model.config().n_positions;
    if ids.ncols() > np {
        return Err(Error::invalid("sequence length T", ids.ncols(), format!("<= n_positions = {np}")));
    }
    Ok(())
}

/// The language-model loss and the gradient of every parameter, for next-token targets
/// (B, T) ([`IGNORE`] = no target): the mean cross-entropy over the non-ignored positions, as
/// HF `GPT2LMHeadModel` with labels (shifted by the caller here: `targets[b, t]` is the token
/// after `ids[b, t]`). Same as [`forward_backward_with`] with [`LmTarget::Tokens`].
///
/// # Errors
/// As [`forward_backward_with`].
pub fn forward_backward<T: Real>(
    model: &Gpt<T>,
    ids: ArrayView2<u32>,
    targets: ArrayView2<u32>,
) -> Result<(f64, Gpt<T>)> {
    forward_backward_with(model, ids, LmTarget::Tokens(targets))
}

/// The loss of `target` ([`LmTarget`]) over the logits of `ids` (B, T) (positions from 0, no
/// dropout) and the gradient of every parameter (a [`Gpt`] of the same shape; `wte` collects both
/// the embedding and the tied head). The sequences run in parallel (rayon), each with its own
/// forward and backward, and their gradients are summed in sequence order: the result does not
/// depend on the number of threads.
///
/// # Errors
/// Empty ids, T > n_positions, an id or target ≥ V, a target of another shape, invalid teacher
/// probabilities or weights, nothing to learn from (every target ignored), or a non-finite loss or
/// gradient (naming the first non-finite gradient entry).
pub fn forward_backward_with<T: Real>(
    model: &Gpt<T>,
    ids: ArrayView2<u32>,
    target: LmTarget<T>,
) -> Result<(f64, Gpt<T>)> {
    check_full_pass(model, ids)?;
    let (b, t) = ids.dim();
    let sc = check_lm_target(&target, b, t, model.config().vocab_size)?;
    let mut loss = 0.0;
    let mut grads: Option<Gpt<T>> = None;
    let one_sequence = |i: usize| {
        let one = ids.slice(s![i..i + 1, ..]);
        let (logits, acts, hf, hf_cache) = forward_train(model, one);
        let (l, dlogits) = seq_loss(logits.view(), &target, &sc, i);
        (l, backward_train(model, one, &acts, &hf, &hf_cache, dlogits.view()))
    };
    // waves of one sequence per thread: a GPT gradient is a whole model's size
    map_fold_in_order(b, rayon::current_num_threads(), one_sequence, |(l, g): (f64, Gpt<T>)| {
        loss += l;
        match &mut grads {
            Some(acc) => acc.add_assign(&g),
            None => grads = Some(g),
        }
    });
    let grads = grads.expect("at least one sequence");
    if !loss.is_finite() {
        return Err(Error::numerical(
            "GPT forward/backward",
            format!("the loss is {loss} (non-finite weights or an overflow)"),
        ));
    }
    if let Some(g) = grads.first_non_finite() {
        return Err(Error::numerical("GPT forward/backward", format!("non-finite gradient {g}")));
    }
    Ok((loss, grads))
}

/// The loss of `target` over the logits of `ids` (B, T) from the inference forward
/// ([`Gpt::forward`]), without gradients (evaluation). The same value as [`forward_backward_with`]
/// up to float rounding.
///
/// # Errors
/// As [`forward_backward_with`].
pub fn lm_loss<T: Real>(model: &Gpt<T>, ids: ArrayView2<u32>, target: LmTarget<T>) -> Result<f64> {
    check_full_pass(model, ids)?;
    let (b, t) = ids.dim();
    let sc = check_lm_target(&target, b, t, model.config().vocab_size)?;
    let logits: Array3<T> = model.forward(ids)?;
    Ok((0..b).map(|i| seq_loss(logits.index_axis(Axis(0), i), &target, &sc, i).0).sum())
}

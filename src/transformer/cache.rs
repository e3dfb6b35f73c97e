//! The key/value cache of incremental decoding.

use super::attention::attend_cached;
use crate::error::{Error, Result};
use crate::nn::linear::PAR_WORK;
use crate::scalar::Real;
use ndarray::{s, Array2, Array4, ArrayView2, ArrayView4, ArrayViewMut2, ArrayViewMut3, Axis};
use rayon::prelude::*;

/// Keys and values of the positions seen so far, for every layer (HF's `past_key_values`, per
/// layer `(B, n_head, L, head_dim)`); the first [`len`](KvCache::len) positions are valid, and all
/// sequences of the batch have the same length. Values are stored (B, n_head, capacity, head_dim)
/// and keys transposed, (B, n_head, head_dim, capacity), so that both attention products stream
/// contiguous rows; [`keys`](KvCache::keys) shows them in the HF layout. Storage grows on demand
/// (doubling, capped at `n_positions`), so a decoding step only reallocates when the capacity is
/// reached.
///
/// Made by [`Gpt::new_cache`](super::Gpt::new_cache) and filled by
/// [`Gpt::forward_cached`](super::Gpt::forward_cached).
#[derive(Clone, Debug)]
pub struct KvCache<T> {
    /// (Kᵀ (B, H, D, capacity), V (B, H, capacity, D)) per layer.
    layers: Vec<(Array4<T>, Array4<T>)>,
    len: usize,
    batch: usize,
    n_head: usize,
    head_dim: usize,
    max_len: usize,
}

impl<T> KvCache<T> {
    /// Number of cached positions per sequence.
    pub fn len(&self) -> usize {
        self.len
    }

    /// Whether no position is cached.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Number of sequences B.
    pub fn batch(&self) -> usize {
        self.batch
    }

    /// Number of positions the storage holds without growing.
    pub fn capacity(&self) -> usize {
        self.layers.first().map_or(0, |(_, v)| v.dim().2)
    }

    /// Keeps the first `len` positions of every sequence and forgets the rest (e.g. rejected draft
    /// tokens in speculative decoding); the next [`forward_cached`](super::Gpt::forward_cached)
    /// continues at position `len`. The storage is kept.
    ///
    /// # Errors
    /// `len` > the current length.
    pub fn truncate(&mut self, len: usize) -> Result<()> {
        if len > self.len {
            return Err(Error::invalid(
                "KV cache truncation length",
                len,
                format!("<= the current cache length {}", self.len),
            ));
        }
        self.len = len;
        Ok(())
    }

    /// Keeps the positions `start + keep[i]` (strictly increasing offsets) at `start + i` and
    /// forgets every position after them: after a tree of draft tokens was scored
    /// ([`Gpt::forward_tree`](super::Gpt::forward_tree)), the accepted path's keys and values
    /// move next to the prefix, as if only that path had been consumed.
    ///
    /// # Errors
    /// `start` beyond the cached length, or offsets not strictly increasing within it.
    pub fn compact(&mut self, start: usize, keep: &[usize]) -> Result<()>
    where
        T: Copy,
    {
        let avail = self.len.checked_sub(start).ok_or_else(|| {
            Error::invalid("KV cache compaction start", start, format!("<= the current cache length {}", self.len))
        })?;
        if let Some(i) = (0..keep.len()).find(|&i| keep[i] >= avail || (i > 0 && keep[i] <= keep[i - 1])) {
            return Err(Error::invalid(
                format!("kept offset {i}"),
                keep[i],
                format!("strictly increasing offsets below {avail} (the positions after {start})"),
            ));
        }
        // the offsets that move (a kept position before them stays where it is)
        let moves: Vec<(usize, usize)> =
            keep.iter().enumerate().filter(|&(i, &k)| i != k).map(|(i, &k)| (start + k, start + i)).collect();
        if !moves.is_empty() {
            let cap = self.capacity();
            let d = self.head_dim;
            for (kt, v) in &mut self.layers {
                let (kt, v) = (contiguous(kt)?, contiguous(v)?);
                // a key is a column of Kᵀ (one value every `cap`), a value a row of V (`d` in a row)
                for row in kt.chunks_exact_mut(cap) {
                    moves.iter().for_each(|&(from, to)| row[to] = row[from]);
                }
                for head in v.chunks_exact_mut(cap * d) {
                    moves.iter().for_each(|&(from, to)| head.copy_within(from * d..(from + 1) * d, to * d));
                }
            }
        }
        self.len = start + keep.len();
        Ok(())
    }

    /// Forgets every position (as `truncate(0)`).
    pub fn clear(&mut self) {
        self.len = 0;
    }

    pub(crate) fn set_len(&mut self, len: usize) {
        self.len = len;
    }

    /// Checks that the cache was made for a model with these dimensions.
    pub(crate) fn check_compatible(&self, n_layer: usize, n_head: usize, head_dim: usize) -> Result<()> {
        if self.layers.len() != n_layer || self.n_head != n_head || self.head_dim != head_dim {
            return Err(Error::shape(
                "KV cache (layers, heads, head_dim)",
                format!("({n_layer}, {n_head}, {head_dim}) (the model's)"),
                &[self.layers.len(), self.n_head, self.head_dim],
            ));
        }
        Ok(())
    }
}

/// The elements of a cache array in memory order (the cache's arrays are made in standard layout).
fn contiguous<T>(a: &mut Array4<T>) -> Result<&mut [T]> {
    a.as_slice_mut().ok_or_else(|| Error::numerical("KV cache", "storage not in standard layout"))
}

impl<T: Real> KvCache<T> {
    pub(crate) fn new(n_layer: usize, batch: usize, n_head: usize, head_dim: usize, max_len: usize) -> Self {
        let layers = (0..n_layer)
            .map(|_| (Array4::zeros((batch, n_head, head_dim, 0)), Array4::zeros((batch, n_head, 0, head_dim))));
        KvCache { layers: layers.collect(), len: 0, batch, n_head, head_dim, max_len }
    }

    /// The cached keys of `layer`: (B, n_head, len, head_dim).
    ///
    /// # Errors
    /// `layer` ≥ the number of layers.
    pub fn keys(&self, layer: usize) -> Result<ArrayView4<'_, T>> {
        Ok(self.layer(layer)?.0.slice(s![.., .., .., ..self.len]).permuted_axes([0, 1, 3, 2]))
    }

    /// The cached values of `layer`: (B, n_head, len, head_dim).
    ///
    /// # Errors
    /// `layer` ≥ the number of layers.
    pub fn values(&self, layer: usize) -> Result<ArrayView4<'_, T>> {
        Ok(self.layer(layer)?.1.slice(s![.., .., ..self.len, ..]))
    }

    fn layer(&self, layer: usize) -> Result<&(Array4<T>, Array4<T>)> {
        self.layers.get(layer).ok_or_else(|| {
            Error::invalid("KV cache layer", layer, format!("< the number of layers {}", self.layers.len()))
        })
    }

    /// Makes room for `total` positions (≤ `max_len`), keeping the first `len`.
    pub(crate) fn reserve(&mut self, total: usize) {
        let cap = self.capacity();
        if total <= cap {
            return;
        }
        let new_cap = total.max(2 * cap).max(16).min(self.max_len.max(total));
        let (b, h, d, len) = (self.batch, self.n_head, self.head_dim, self.len);
        for (kt, v) in &mut self.layers {
            let mut grown = Array4::zeros((b, h, d, new_cap));
            grown.slice_mut(s![.., .., .., ..len]).assign(&kt.slice(s![.., .., .., ..len]));
            *kt = grown;
            let mut grown = Array4::zeros((b, h, new_cap, d));
            grown.slice_mut(s![.., .., ..len, ..]).assign(&v.slice(s![.., .., ..len, ..]));
            *v = grown;
        }
    }

    /// Stores the keys and values of the T new positions per sequence at `past ..` (from the rows
    /// of `qkv` (B·T, 3C): q | k | v, heads contiguous within each) and returns the attention of
    /// their queries over cache positions `0 ..= past + t`, causal or masked by `visible` (see
    /// [`attend_cached`]): (B·T, C), heads concatenated. Each head is written and attended by one
    /// task ([`HeadStep::run`]); with two threads and one sequence the two halves of the heads run
    /// on [`crate::nn::pair`] and write their outputs in place, otherwise the heads run in
    /// parallel when the work is large enough.
    pub(crate) fn write_attend(
        &mut self,
        layer: usize,
        qkv: ArrayView2<T>,
        t: usize,
        past: usize,
        visible: &[bool],
    ) -> Array2<T> {
        let (batch, h, d) = (self.batch, self.n_head, self.head_dim);
        let cap = self.capacity();
        let qkv = qkv.as_standard_layout();
        let qkv = qkv.as_slice().expect("standard layout");
        let step = HeadStep { qkv, t, past, visible, n_head: h, head_dim: d, cap };
        let (kt, v) = &mut self.layers[layer];
        let mut att = Array2::<T>::zeros((batch * t, h * d));
        if crate::nn::pair::replaces_pool() && batch == 1 && h > 1 {
            let (kt, v) = (kt.index_axis_mut(Axis(0), 0), v.index_axis_mut(Axis(0), 0));
            let half = h / 2;
            let ((kt0, kt1), (v0, v1)) = (kt.split_at(Axis(0), half), v.split_at(Axis(0), half));
            let (att0, att1) = att.view_mut().split_at(Axis(1), half * d);
            let heads = |h0: usize, mut kt: ArrayViewMut3<T>, mut v: ArrayViewMut3<T>, mut att: ArrayViewMut2<T>| {
                for (j, (kh, vh)) in kt.outer_iter_mut().zip(v.outer_iter_mut()).enumerate() {
                    let out = step.run(0, h0 + j, kh, vh);
                    att.slice_mut(s![.., j * d..(j + 1) * d]).assign(&out);
                }
            };
            crate::nn::pair::join(|| heads(0, kt0, v0, att0), || heads(half, kt1, v1, att1));
            return att;
        }
        let work = batch * h * t * (past + t) * d;
        let mut kt = kt.view_mut().into_shape_with_order((batch * h, d, cap)).expect("a standard-layout cache");
        let mut v = v.view_mut().into_shape_with_order((batch * h, cap, d)).expect("a standard-layout cache");
        // (sequence, head, its cached keys, its cached values)
        type Task<'a, T> = (usize, usize, ArrayViewMut2<'a, T>, ArrayViewMut2<'a, T>);
        let tasks: Vec<Task<T>> =
            kt.outer_iter_mut().zip(v.outer_iter_mut()).enumerate().map(|(i, (k, v))| (i / h, i % h, k, v)).collect();
        let run = |(b, hh, kh, vh): Task<T>| ((b, hh), step.run(b, hh, kh, vh));
        let heads: Vec<_> = if tasks.len() > 1 && work >= PAR_WORK {
            tasks.into_par_iter().map(run).collect()
        } else {
            tasks.into_iter().map(run).collect()
        };
        for ((b, hh), o) in heads {
            att.slice_mut(s![b * t..(b + 1) * t, hh * d..(hh + 1) * d]).assign(&o);
        }
        att
    }
}

/// One head's part of [`KvCache::write_attend`]: the new positions' rows of `qkv` (B·T, 3C) and
/// where they go.
struct HeadStep<'a, T> {
    qkv: &'a [T],
    t: usize,
    past: usize,
    visible: &'a [bool],
    n_head: usize,
    head_dim: usize,
    cap: usize,
}

impl<T: Real> HeadStep<'_, T> {
    /// Writes head `hh` of sequence `b` into its cached keys `kt` (head_dim, cap) and values `v`
    /// (cap, head_dim) at `past ..` and returns its attention output (T, head_dim).
    fn run(&self, b: usize, hh: usize, mut kt: ArrayViewMut2<T>, mut v: ArrayViewMut2<T>) -> Array2<T> {
        let (t, past, d, cap) = (self.t, self.past, self.head_dim, self.cap);
        let c = self.n_head * d;
        let q = {
            let kts = kt.as_slice_mut().expect("a contiguous head");
            let vs = v.as_slice_mut().expect("a contiguous head");
            let mut q = Vec::with_capacity(t * d);
            // plain index loops: ndarray's strided assignment costs more than these few values
            for tt in 0..t {
                let row = &self.qkv[(b * t + tt) * 3 * c..][..3 * c];
                q.extend_from_slice(&row[hh * d..][..d]);
                for (dd, &k) in row[c + hh * d..][..d].iter().enumerate() {
                    kts[dd * cap + past + tt] = k;
                }
                vs[(past + tt) * d..][..d].copy_from_slice(&row[2 * c + hh * d..][..d]);
            }
            q
        };
        let scale = T::one() / T::of(d as f64).sqrt();
        let mut scores = vec![T::zero(); t * (past + t)];
        let mut out = Array2::<T>::zeros((t, d));
        attend_cached(
            &q,
            kt.as_slice().expect("a contiguous head"),
            v.as_slice().expect("a contiguous head"),
            cap,
            past,
            scale,
            self.visible,
            &mut scores,
            out.as_slice_mut().expect("owned"),
        );
        out
    }
}

//! The key/value cache of incremental decoding.

use super::kernels::{attend_row, PAR_WORK};
use super::maybe_par_map;
use crate::error::{Error, Result};
use crate::scalar::Real;
use ndarray::{s, Array2, Array4, ArrayView2, ArrayView4};

/// Keys and values of the positions seen so far, for every layer: K and V of layer ℓ are
/// (B, n_head, capacity, head_dim) arrays of which the first [`len`](KvCache::len) positions are
/// valid (HF's `past_key_values`, per layer `(B, n_head, L, head_dim)`). All sequences of the batch
/// have the same length. Storage grows on demand (doubling, capped at `n_positions`), so a
/// single-token step never reallocates except when the capacity is reached.
///
/// Made by [`Gpt::new_cache`](super::Gpt::new_cache) and filled by
/// [`Gpt::forward_cached`](super::Gpt::forward_cached).
#[derive(Clone, Debug)]
pub struct KvCache<T> {
    /// (K, V) per layer, (B, H, capacity, D).
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
        self.layers.first().map_or(0, |(k, _)| k.dim().2)
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

impl<T: Real> KvCache<T> {
    pub(crate) fn new(n_layer: usize, batch: usize, n_head: usize, head_dim: usize, max_len: usize) -> Self {
        let empty = || Array4::zeros((batch, n_head, 0, head_dim));
        KvCache { layers: (0..n_layer).map(|_| (empty(), empty())).collect(), len: 0, batch, n_head, head_dim, max_len }
    }

    /// The cached keys of `layer`: (B, n_head, len, head_dim).
    ///
    /// # Errors
    /// `layer` ≥ the number of layers.
    pub fn keys(&self, layer: usize) -> Result<ArrayView4<'_, T>> {
        Ok(self.layer(layer)?.0.slice(s![.., .., ..self.len, ..]))
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
        for (k, v) in &mut self.layers {
            for a in [k, v] {
                let mut grown = Array4::zeros((b, h, new_cap, d));
                grown.slice_mut(s![.., .., ..len, ..]).assign(&a.slice(s![.., .., ..len, ..]));
                *a = grown;
            }
        }
    }

    /// Stores the keys and values of T new positions per sequence at `past ..`, from the rows of
    /// `qkv` (B·T, 3C) (q | k | v, heads contiguous within each).
    pub(crate) fn write(&mut self, layer: usize, qkv: ArrayView2<T>, t: usize, past: usize) {
        let (h, d) = (self.n_head, self.head_dim);
        let c = h * d;
        let (k, v) = &mut self.layers[layer];
        for b in 0..self.batch {
            let rows = qkv.slice(s![b * t..(b + 1) * t, ..]);
            for hh in 0..h {
                k.slice_mut(s![b, hh, past..past + t, ..]).assign(&rows.slice(s![.., c + hh * d..c + (hh + 1) * d]));
                v.slice_mut(s![b, hh, past..past + t, ..])
                    .assign(&rows.slice(s![.., 2 * c + hh * d..2 * c + (hh + 1) * d]));
            }
        }
    }

    /// Causal attention of the T new queries per sequence (rows of `qkv`, already written into the
    /// cache at `past ..`) over cache positions `0 ..= past + t`: (B·T, C), heads concatenated.
    /// Heads and sequences run in parallel when the work is large enough.
    pub(crate) fn attend(&self, layer: usize, qkv: ArrayView2<T>, t: usize, past: usize) -> Array2<T> {
        let (h, d) = (self.n_head, self.head_dim);
        let (k, v) = &self.layers[layer];
        let scale = T::one() / T::of(d as f64).sqrt();
        let tasks: Vec<(usize, usize)> = (0..self.batch).flat_map(|b| (0..h).map(move |hh| (b, hh))).collect();
        let work = tasks.len() * t * (past + t) * d;
        let heads = maybe_par_map(&tasks, tasks.len() > 1 && work >= PAR_WORK, |&(b, hh)| {
            let ks = k.slice(s![b, hh, .., ..]);
            let vs = v.slice(s![b, hh, .., ..]);
            let (ks, vs) = (ks.as_slice().expect("contiguous head"), vs.as_slice().expect("contiguous head"));
            let mut p = vec![T::zero(); past + t];
            let mut out = Array2::<T>::zeros((t, d));
            for (i, mut o) in out.outer_iter_mut().enumerate() {
                let qrow = qkv.row(b * t + i);
                let q = qrow.slice(s![hh * d..(hh + 1) * d]).to_vec();
                let o = o.as_slice_mut().expect("contiguous row");
                attend_row(&q, ks, vs, d, past + i + 1, scale, &mut p, o);
            }
            out
        });
        let mut att = Array2::<T>::zeros((self.batch * t, h * d));
        for (&(b, hh), o) in tasks.iter().zip(&heads) {
            att.slice_mut(s![b * t..(b + 1) * t, hh * d..(hh + 1) * d]).assign(o);
        }
        att
    }
}

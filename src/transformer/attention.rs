//! The causal attention of one query against a run of keys and values, and of a few new queries
//! against a KV cache: the transformer's own inner loops, over the shared vector kernels.

use crate::nn::simd::{
    as_f32, as_f32_mut, axpy_body, dot_body, exp_f32, madd, max_body, simd_dispatch, sum_body, SimdLevel,
};
use crate::scalar::Real;

/// Causal attention of one query against key/value rows `0 .. n`: keys and values are row `j` at
/// `keys[j·stride ..][.. d]` (d = q.len()). Writes the softmax weights into `p[.. n]` and
/// `out = Σ_j p_j v_j` (overwritten).
#[allow(clippy::too_many_arguments)]
#[inline(always)]
fn attend_row_body<T: Real, const FMA: bool>(
    q: &[T],
    keys: &[T],
    values: &[T],
    stride: usize,
    n: usize,
    scale: T,
    p: &mut [T],
    out: &mut [T],
) {
    let d = q.len();
    let mut mx = T::neg_infinity();
    for j in 0..n {
        let s = dot_body::<T, FMA>(q, &keys[j * stride..][..d]) * scale;
        p[j] = s;
        mx = mx.max(s);
    }
    let mut z = T::zero();
    for pj in &mut p[..n] {
        *pj = (*pj - mx).exp();
        z += *pj;
    }
    let inv = T::one() / z;
    out.fill(T::zero());
    for j in 0..n {
        p[j] *= inv;
        axpy_body::<T, FMA>(out, p[j], &values[j * stride..][..d]);
    }
}

simd_dispatch! {
    /// [`attend_row_body`] with the widest vectors the CPU has.
    #[allow(clippy::too_many_arguments)]
    fn attend_row(q: &[T], keys: &[T], values: &[T], stride: usize, n: usize, scale: T, p: &mut [T], out: &mut [T]) -> () = attend_row_body
}

/// Attention of t new queries of one (sequence, head) against a KV cache:
/// q (t, d) row-major; keys stored transposed, `kt` (d, cap) (key j is column j); values `v`
/// (cap, d); positions `0 .. past + t` valid. Query i sees the cached positions `0 .. past` and
/// the new positions j with `visible[i·t + j]` (a tree mask, t × t), or `0 ..= past + i` when
/// `visible` is empty (causal). Scores S = q·Kᵀ and the output P·V are both
/// [`tiled_product`]s (the masked scores are computed and then zeroed). `s` is scratch
/// of at least t·(past + t); writes `out` (t, d).
#[allow(clippy::too_many_arguments)]
#[inline(always)]
fn attend_cached_body<T: Real, const FMA: bool>(
    q: &[T],
    kt: &[T],
    v: &[T],
    cap: usize,
    past: usize,
    scale: T,
    visible: &[bool],
    s: &mut [T],
    out: &mut [T],
) {
    let d = v.len() / cap.max(1);
    let t = q.len() / d.max(1);
    let n = past + t;
    let s = &mut s[..t * n];
    tiled_product::<T, FMA>(q, d, kt, cap, n, s);
    // a tree position's weights: the ones it sees packed in place into a prefix (the cached
    // positions, then its ancestors and itself in depth order), the softmax of that prefix, and
    // each weight moved back to its position (zeros where it does not see): its sum then adds
    // them in the lanes of `softmax_prefix` over a pass along its path alone, so that its
    // probabilities, and so its logits, are the same bits (summed in place, between the zeros of
    // the positions it does not see, they differed in the last bit, enough to flip a near-tie
    // after bf16 rounding)
    for (i, row) in s.chunks_exact_mut(n).enumerate() {
        if visible.is_empty() {
            softmax_prefix(row, past + i + 1, scale);
            continue;
        }
        let sees = &visible[i * t..(i + 1) * t];
        // packing moves each seen weight to an index no larger than its own
        let mut len = past;
        for j in (0..t).filter(|&j| sees[j]) {
            row[len] = row[past + j];
            len += 1;
        }
        softmax_prefix(row, len, scale);
        // from the last position back, every packed weight not yet moved lies below the one written
        for j in (0..t).rev() {
            row[past + j] = if sees[j] {
                len -= 1;
                row[len]
            } else {
                T::zero()
            };
        }
    }
    tiled_product::<T, FMA>(s, n, v, d, d, out);
}

/// Columns per register tile of [`tiled_product`] (one AVX-512 register of f32).
const TILE_COLS: usize = 16;

/// `out = x·w`: x (m, k) row-major, w (k, ≥ o) with rows `ws` apart, out (m, o) row-major
/// (overwritten). Tiles of a few rows and [`TILE_COLS`] columns (the last one partial) are summed
/// in registers over i = 0, 1, …, k − 1 and stored once, so every output is the sum of a plain
/// loop in the same order, by every path. Attention's two products are short (q·Kᵀ: k = d) or
/// narrow (P·V: o = d); a product that stores its output after every few rows of w is bound by
/// those loads and stores there. In f32 with AVX-512 or AVX2 + FMA by intrinsics (left to
/// itself, the compiler vectorizes the generic tile along i, through shuffles).
#[inline(always)]
fn tiled_product<T: Real, const FMA: bool>(x: &[T], k: usize, w: &[T], ws: usize, o: usize, out: &mut [T]) {
    let m = out.len() / o.max(1);
    assert!(x.len() >= m * k && (k == 0 || w.len() >= (k - 1) * ws + o), "tiled_product: shapes");
    #[cfg(target_arch = "x86_64")]
    if let (Some(xf), Some(wf), Some(of)) = (as_f32(x), as_f32(w), as_f32_mut(out)) {
        match SimdLevel::current() {
            // SAFETY: the CPU supports AVX-512F (`current` never exceeds it); shapes asserted above.
            SimdLevel::Avx512 => return unsafe { tiled_product_avx512(xf, k, wf, ws, o, of) },
            // SAFETY: the CPU supports AVX2 and FMA; shapes asserted above.
            SimdLevel::Avx2Fma => return unsafe { tiled_product_avx2(xf, k, wf, ws, o, of) },
            SimdLevel::Baseline => {}
        }
    }
    for c0 in (0..o).step_by(TILE_COLS) {
        let cols = TILE_COLS.min(o - c0);
        for r in 0..m {
            let mut acc = [T::zero(); TILE_COLS];
            let mut wi = [T::zero(); TILE_COLS];
            for i in 0..k {
                wi[..cols].copy_from_slice(&w[i * ws + c0..][..cols]);
                let xi = x[r * k + i];
                for l in 0..TILE_COLS {
                    acc[l] = madd::<T, FMA>(xi, wi[l], acc[l]);
                }
            }
            out[r * o + c0..][..cols].copy_from_slice(&acc[..cols]);
        }
    }
}

/// [`tiled_product`] in f32 with AVX-512: tiles of up to 8 rows (of even sizes) by two registers
/// of 16 columns, 16 independent chains of `vfmadd231ps` at most (8 or more hide its latency on
/// two ports); masked loads and stores for the last columns.
///
/// # Safety
/// The CPU must support AVX-512F; x (m, k) and out (m, o) row-major, w rows `ws` apart with
/// `(k − 1)·ws + o` values at least (masked lanes are not read).
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
unsafe fn tiled_product_avx512(x: &[f32], k: usize, w: &[f32], ws: usize, o: usize, out: &mut [f32]) {
    use std::arch::x86_64::__mmask16;
    /// Rows 0 .. R of x times the P·16 columns of w from `w` (the last `cols` of them valid).
    #[inline(always)]
    unsafe fn tile<const R: usize, const P: usize>(
        x: *const f32,
        k: usize,
        w: *const f32,
        ws: usize,
        out: *mut f32,
        o: usize,
        masks: [__mmask16; P],
    ) {
        unsafe {
            use std::arch::x86_64::*;
            let mut acc = [[_mm512_setzero_ps(); R]; P];
            for i in 0..k {
                let wi = w.add(i * ws);
                let mut wv = [_mm512_setzero_ps(); P];
                for (q, v) in wv.iter_mut().enumerate() {
                    *v = _mm512_maskz_loadu_ps(masks[q], wi.add(q * TILE_COLS));
                }
                for r in 0..R {
                    let xb = _mm512_set1_ps(*x.add(r * k + i));
                    for q in 0..P {
                        acc[q][r] = _mm512_fmadd_ps(xb, wv[q], acc[q][r]);
                    }
                }
            }
            for q in 0..P {
                for (r, a) in acc[q].iter().enumerate() {
                    _mm512_mask_storeu_ps(out.add(r * o + q * TILE_COLS), masks[q], *a);
                }
            }
        }
    }
    let mask = |c0: usize| -> __mmask16 {
        let n = TILE_COLS.min(o - c0);
        if n == TILE_COLS {
            0xffff
        } else {
            (1u16 << n) - 1
        }
    };
    unsafe {
        let m = out.len() / o.max(1);
        // as few tiles as 8-row tiles allow, of even sizes (9 rows: 5 + 4, not 8 + 1)
        let per_tile = m.div_ceil(m.div_ceil(8).max(1)).max(1);
        let mut c0 = 0;
        while c0 < o {
            let pair = c0 + TILE_COLS < o;
            let mut r0 = 0;
            while r0 < m {
                let rows = per_tile.min(m - r0);
                let (xr, wc, or) = (x.as_ptr().add(r0 * k), w.as_ptr().add(c0), out.as_mut_ptr().add(r0 * o + c0));
                macro_rules! tiles {
                    ($p:literal, $masks:expr) => {
                        match rows {
                            8 => tile::<8, $p>(xr, k, wc, ws, or, o, $masks),
                            7 => tile::<7, $p>(xr, k, wc, ws, or, o, $masks),
                            6 => tile::<6, $p>(xr, k, wc, ws, or, o, $masks),
                            5 => tile::<5, $p>(xr, k, wc, ws, or, o, $masks),
                            4 => tile::<4, $p>(xr, k, wc, ws, or, o, $masks),
                            3 => tile::<3, $p>(xr, k, wc, ws, or, o, $masks),
                            2 => tile::<2, $p>(xr, k, wc, ws, or, o, $masks),
                            _ => tile::<1, $p>(xr, k, wc, ws, or, o, $masks),
                        }
                    };
                }
                if pair {
                    tiles!(2, [mask(c0), mask(c0 + TILE_COLS)]);
                } else {
                    tiles!(1, [mask(c0)]);
                }
                r0 += rows;
            }
            c0 += if pair { 2 * TILE_COLS } else { TILE_COLS };
        }
    }
}

/// [`tiled_product`] in f32 with AVX2 + FMA: tiles of up to 4 rows and of even sizes, two 8-lane
/// accumulators per row, masked loads and stores for the last columns.
///
/// # Safety
/// The CPU must support AVX2 and FMA; shapes as [`tiled_product_avx512`].
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn tiled_product_avx2(x: &[f32], k: usize, w: &[f32], ws: usize, o: usize, out: &mut [f32]) {
    #[inline(always)]
    unsafe fn tile<const R: usize>(
        x: *const f32,
        k: usize,
        w: *const f32,
        ws: usize,
        out: *mut f32,
        o: usize,
        cols: usize,
    ) {
        unsafe {
            use std::arch::x86_64::*;
            let lane = _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7);
            let lo_mask = _mm256_cmpgt_epi32(_mm256_set1_epi32(cols as i32), lane);
            let hi_mask = _mm256_cmpgt_epi32(_mm256_set1_epi32(cols as i32 - 8), lane);
            let (mut lo, mut hi) = ([_mm256_setzero_ps(); R], [_mm256_setzero_ps(); R]);
            for i in 0..k {
                let wi = w.add(i * ws);
                let (wl, wh) = (_mm256_maskload_ps(wi, lo_mask), _mm256_maskload_ps(wi.add(8), hi_mask));
                for r in 0..R {
                    let xb = _mm256_set1_ps(*x.add(r * k + i));
                    lo[r] = _mm256_fmadd_ps(xb, wl, lo[r]);
                    hi[r] = _mm256_fmadd_ps(xb, wh, hi[r]);
                }
            }
            for r in 0..R {
                _mm256_maskstore_ps(out.add(r * o), lo_mask, lo[r]);
                _mm256_maskstore_ps(out.add(r * o + 8), hi_mask, hi[r]);
            }
        }
    }
    unsafe {
        let m = out.len() / o.max(1);
        for c0 in (0..o).step_by(TILE_COLS) {
            let cols = TILE_COLS.min(o - c0);
            let per_tile = m.div_ceil(m.div_ceil(4).max(1)).max(1);
            let mut r0 = 0;
            while r0 < m {
                let rows = per_tile.min(m - r0);
                let (xr, wc, or) = (x.as_ptr().add(r0 * k), w.as_ptr().add(c0), out.as_mut_ptr().add(r0 * o + c0));
                match rows {
                    4 => tile::<4>(xr, k, wc, ws, or, o, cols),
                    3 => tile::<3>(xr, k, wc, ws, or, o, cols),
                    2 => tile::<2>(xr, k, wc, ws, or, o, cols),
                    _ => tile::<1>(xr, k, wc, ws, or, o, cols),
                }
                r0 += rows;
            }
        }
    }
}

simd_dispatch! {
    /// [`attend_cached_body`] with the widest vectors the CPU has.
    #[allow(clippy::too_many_arguments)]
    fn attend_cached(q: &[T], kt: &[T], v: &[T], cap: usize, past: usize, scale: T, visible: &[bool], s: &mut [T], out: &mut [T]) -> () = attend_cached_body
}

/// Softmax of `row[..seen] · scale` in place (shifted by the maximum); the rest of the row is
/// zeroed.
#[inline(always)]
fn softmax_prefix<T: Real>(row: &mut [T], seen: usize, scale: T) {
    let mx = max_body(&row[..seen]);
    for x in &mut row[..seen] {
        *x = exp((*x - mx) * scale);
    }
    let inv = T::one() / sum_body(&row[..seen]);
    row[..seen].iter_mut().for_each(|x| *x *= inv);
    row[seen..].fill(T::zero());
}

/// e^x: the vectorizable [`exp_f32`] in f32 (relative error ≤ 2e-7), `exp` in f64.
#[inline(always)]
fn exp<T: Real>(x: T) -> T {
    if std::any::TypeId::of::<T>() == std::any::TypeId::of::<f32>() {
        T::of(f64::from(exp_f32(x.as_f64() as f32)))
    } else {
        x.exp()
    }
}

/// The shape of t new positions scored in one pass as a tree (SpecInfer's tree attention): each
/// position has a parent among the earlier new positions, or none (it follows the cached
/// positions directly). Position i attends to every cached position and to its ancestors and
/// itself among the new ones; its learned position is `past + depth(i)`, depth 0 for a position
/// without parent. A chain (parents `None, 0, 1, …`) is ordinary causal attention.
///
/// # Example
///
/// ```
/// use s4::transformer::TreeMask;
/// // a root (0) with two children (1, 2); 3 continues 1
/// let tree = TreeMask::new(&[None, Some(0), Some(0), Some(1)])?;
/// assert_eq!(tree.depths(), &[0, 1, 1, 2]);
/// assert_eq!(tree.path(3), vec![0, 1, 3]);
/// assert!(tree.sees(3, 1) && !tree.sees(3, 2));
/// assert!(TreeMask::new(&[Some(0)]).is_err()); // a parent must come earlier
/// # Ok::<(), s4::Error>(())
/// ```
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TreeMask {
    parents: Vec<Option<usize>>,
    depths: Vec<usize>,
    /// t × t, row i: which new positions position i sees.
    visible: Vec<bool>,
}

impl TreeMask {
    /// The tree with these parents (`parents[i] < i`, or `None`).
    ///
    /// # Errors
    /// A parent that does not come before its child (named by index), or more than
    /// [`TreeMask::MAX_NODES`] positions.
    pub fn new(parents: &[Option<usize>]) -> crate::Result<Self> {
        let t = parents.len();
        if t > Self::MAX_NODES {
            return Err(crate::Error::invalid(
                "tree size",
                t,
                format!("at most {} positions in one pass", Self::MAX_NODES),
            ));
        }
        let mut depths = Vec::with_capacity(t);
        let mut visible = vec![false; t * t];
        for (i, &p) in parents.iter().enumerate() {
            match p {
                Some(p) if p >= i => {
                    return Err(crate::Error::invalid(
                        format!("parent of tree position {i}"),
                        p,
                        "an earlier position (parents come before their children)",
                    ))
                }
                Some(p) => {
                    depths.push(depths[p] + 1);
                    let (above, row) = visible.split_at_mut(i * t);
                    row[..t].copy_from_slice(&above[p * t..(p + 1) * t]);
                }
                None => depths.push(0),
            }
            visible[i * t + i] = true;
        }
        Ok(TreeMask { parents: parents.to_vec(), depths, visible })
    }

    /// The largest tree scored in one pass (4096 positions: the mask is t² booleans).
    pub const MAX_NODES: usize = 4096;

    /// A chain of t positions (causal attention).
    pub fn chain(t: usize) -> crate::Result<Self> {
        Self::new(&(0..t).map(|i| i.checked_sub(1)).collect::<Vec<_>>())
    }

    /// Number of positions t.
    pub fn len(&self) -> usize {
        self.parents.len()
    }

    /// Whether the tree is empty.
    pub fn is_empty(&self) -> bool {
        self.parents.is_empty()
    }

    /// The parent of each position.
    pub fn parents(&self) -> &[Option<usize>] {
        &self.parents
    }

    /// The depth of each position (0 for one without parent).
    pub fn depths(&self) -> &[usize] {
        &self.depths
    }

    /// Whether position i sees new position j (j is i or one of its ancestors).
    pub fn sees(&self, i: usize, j: usize) -> bool {
        self.visible[i * self.len() + j]
    }

    /// The positions from the top of i's branch down to i.
    pub fn path(&self, i: usize) -> Vec<usize> {
        Self::path_in(&self.parents, i)
    }

    /// The positions from the top of i's branch down to i in a forest given by its parents
    /// (`parents[j] < j`).
    pub fn path_in(parents: &[Option<usize>], i: usize) -> Vec<usize> {
        let mut path = vec![i];
        while let Some(p) = parents[*path.last().expect("not empty")] {
            path.push(p);
        }
        path.reverse();
        path
    }

    /// Whether the tree is a chain (then the pass is plain causal attention).
    pub fn is_chain(&self) -> bool {
        self.parents.iter().enumerate().all(|(i, &p)| p == i.checked_sub(1))
    }

    /// The t × t visibility matrix, row-major (empty for a chain: causal).
    pub(crate) fn visibility(&self) -> &[bool] {
        if self.is_chain() {
            &[]
        } else {
            &self.visible
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::nn::simd::with_simd_level;

    /// `tiled_product` (dispatched like attention) at every SIMD level.
    fn product(level: SimdLevel, x: &[f32], k: usize, w: &[f32], ws: usize, o: usize, m: usize) -> Vec<f32> {
        simd_dispatch! {
            fn tiled(x: &[T], k: usize, w: &[T], ws: usize, o: usize, out: &mut [T]) -> () = tiled_product
        }
        let mut out = vec![f32::NAN; m * o];
        with_simd_level(level, || tiled(x, k, w, ws, o, &mut out));
        out
    }

    #[test]
    fn tiled_product_matches_direct_sums_at_every_level_and_row_count() {
        for (k, o, ws) in [(1, 1, 1), (5, 15, 19), (32, 16, 16), (32, 17, 40), (201, 32, 32), (7, 40, 41)] {
            let w: Vec<f32> = (0..(k - 1) * ws + o).map(|i| ((i * 37) % 29) as f32 / 14.5 - 1.0).collect();
            let x: Vec<f32> = (0..11 * k).map(|i| ((i * 13) % 17) as f32 / 8.5 - 1.0).collect();
            let mut fused = None;
            for level in SimdLevel::available() {
                let all = product(level, &x, k, &w, ws, o, 11);
                for m in 1..=11 {
                    let y = product(level, &x, k, &w, ws, o, m);
                    for r in 0..m {
                        for c in 0..o {
                            let exact: f64 = (0..k).map(|i| x[r * k + i] as f64 * w[i * ws + c] as f64).sum();
                            let at = format!("{level}, (k, o) = ({k}, {o}), m = {m}, ({r}, {c})");
                            assert!((y[r * o + c] as f64 - exact).abs() < 1e-4, "{at}");
                            // a row's sums do not depend on the rows computed with it
                            assert_eq!(y[r * o + c].to_bits(), all[r * o + c].to_bits(), "{at}");
                        }
                    }
                }
                // the fused levels sum in the same order: the same bits
                if level != SimdLevel::Baseline {
                    let previous = fused.get_or_insert_with(|| all.clone());
                    assert!(previous.iter().zip(&all).all(|(a, b)| a.to_bits() == b.to_bits()), "{level}, ({k}, {o})");
                }
            }
        }
    }
}

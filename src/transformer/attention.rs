//! The causal attention of one query against a run of keys and values, and of a few new queries
//! against a KV cache: the transformer's own inner loops, over the shared vector kernels.

use crate::nn::linear::small_matmul_body;
use crate::nn::simd::{axpy_body, dot_body, exp_f32, simd_dispatch, sum_body};
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
/// [`small_matmul_body`] products (the masked scores are computed and then zeroed). `s` is scratch
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
    s.fill(T::zero());
    small_matmul_body::<T, FMA>(q, d, kt, cap, n, s);
    for (i, row) in s.chunks_exact_mut(n).enumerate() {
        if visible.is_empty() {
            softmax_prefix(row, past + i + 1, scale);
        } else {
            let sees = &visible[i * t..(i + 1) * t];
            let mx = row[..past]
                .iter()
                .chain(row[past..].iter().zip(sees).filter(|(_, v)| **v).map(|(x, _)| x))
                .fold(T::neg_infinity(), |m, &x| m.max(x));
            for x in &mut row[..past] {
                *x = exp((*x - mx) * scale);
            }
            for (x, &v) in row[past..].iter_mut().zip(sees) {
                *x = if v { exp((*x - mx) * scale) } else { T::zero() };
            }
            let inv = T::one() / sum_body(row);
            row.iter_mut().for_each(|x| *x *= inv);
        }
    }
    out.fill(T::zero());
    small_matmul_body::<T, FMA>(s, n, v, d, d, out);
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
    let mx = row[..seen].iter().fold(T::neg_infinity(), |m, &x| m.max(x));
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

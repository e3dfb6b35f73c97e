//! The causal attention of one query against a run of keys and values, and of a few new queries
//! against a KV cache: the transformer's own inner loops, over the shared vector kernels.

use crate::nn::linear::small_matmul_body;
use crate::nn::simd::{axpy_body, dot_body, simd_dispatch};
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

/// Causal attention of t new queries of one (sequence, head) against a KV cache:
/// q (t, d) row-major; keys stored transposed, `kt` (d, cap) (key j is column j); values `v`
/// (cap, d); positions `0 .. past + t` valid, query i sees `0 ..= past + i`. Scores S = q·Kᵀ and
/// the output P·V are both [`small_matmul_body`] products (the masked scores are computed and then
/// zeroed). `s` is scratch of at least t·(past + t); writes `out` (t, d).
#[allow(clippy::too_many_arguments)]
#[inline(always)]
fn attend_cached_body<T: Real, const FMA: bool>(
    q: &[T],
    kt: &[T],
    v: &[T],
    cap: usize,
    past: usize,
    scale: T,
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
        let seen = past + i + 1;
        let mx = row[..seen].iter().fold(T::neg_infinity(), |m, &x| m.max(x));
        let mut z = T::zero();
        for x in &mut row[..seen] {
            *x = ((*x - mx) * scale).exp();
            z += *x;
        }
        let inv = T::one() / z;
        row[..seen].iter_mut().for_each(|x| *x *= inv);
        row[seen..].fill(T::zero());
    }
    out.fill(T::zero());
    small_matmul_body::<T, FMA>(s, n, v, d, d, out);
}

simd_dispatch! {
    /// [`attend_cached_body`] with the widest vectors the CPU has.
    #[allow(clippy::too_many_arguments)]
    fn attend_cached(q: &[T], kt: &[T], v: &[T], cap: usize, past: usize, scale: T, s: &mut [T], out: &mut [T]) -> () = attend_cached_body
}

//! Cauchy sums over conjugate pairs, the core of the S4 (DPLR) kernel.
//!
//! For poles w_j (the kept half) and weights v_j, at nodes z on the imaginary axis, the sum over the
//! full state (each kept mode plus its conjugate) is
//!
//! S(z) = Σ_j v_j / (z − w_j) + v̄_j / (z − w̄_j).
//!
//! [`cauchy_naive`] evaluates it as written, materializing nothing but the output; the kernel uses
//! [`CauchyTile`], which evaluates several weight vectors at once over a tile of nodes with the
//! reciprocals shared between them, in a loop the compiler vectorizes. Nothing of size N × L is
//! ever stored: memory is O(N + tile).

use crate::nn::simd::{madd, simd_dispatch};
use crate::scalar::Real;
use num_complex::Complex;

/// S(z_k) = Σ_j v_j/(z_k − w_j) + conj(v_j)/(z_k − conj(w_j)) for each node z_k, directly.
///
/// The reference for [`CauchyTile`].
///
/// # Panics
/// If `v` and `w` have different lengths.
///
/// # Example
/// ```
/// use num_complex::Complex64 as C;
/// use s4::kernel::cauchy_naive;
/// let s = cauchy_naive(&[C::new(1.0, 0.0)], &[C::new(-1.0, 2.0)], &[C::new(0.0, 0.0)]);
/// // 1/(1 - 2i) + 1/(1 + 2i) = 2/5
/// assert!((s[0] - C::new(0.4, 0.0)).norm() < 1e-15);
/// ```
pub fn cauchy_naive<T: Real>(v: &[Complex<T>], w: &[Complex<T>], z: &[Complex<T>]) -> Vec<Complex<T>> {
    assert_eq!(v.len(), w.len(), "cauchy_naive: v and w must have the same length");
    z.iter()
        .map(|&zk| {
            v.iter()
                .zip(w)
                .map(|(&vj, &wj)| vj / (zk - wj) + vj.conj() / (zk - wj.conj()))
                .fold(Complex::new(T::zero(), T::zero()), |a, b| a + b)
        })
        .collect()
}

/// Accumulators for S Cauchy sums over a tile of nodes z_k = i·y_k (structure of arrays).
#[derive(Debug)]
pub struct CauchyTile<T> {
    /// Number of nodes in the current tile.
    len: usize,
    /// Real parts, `sums × capacity`.
    re: Vec<T>,
    /// Imaginary parts, `sums × capacity`.
    im: Vec<T>,
    /// Shared reciprocal combinations for one pole over the tile: p1+p2, p1−p2, q1+q2, q1−q2.
    sp: Vec<T>,
    dp: Vec<T>,
    sq: Vec<T>,
    dq: Vec<T>,
    sums: usize,
    capacity: usize,
}

impl<T: Real> CauchyTile<T> {
    /// Scratch for `sums` weight vectors over tiles of up to `capacity` nodes.
    pub fn new(sums: usize, capacity: usize) -> Self {
        let z = || vec![T::zero(); sums * capacity];
        let t = || vec![T::zero(); capacity];
        CauchyTile { len: 0, re: z(), im: z(), sp: t(), dp: t(), sq: t(), dq: t(), sums, capacity }
    }

    /// Evaluates S_s(i·y_k) = Σ_j v_sj/(i y_k − w_j) + conj(v_sj)/(i y_k − conj w_j) for every sum
    /// s (weights `v[s * m + j]`, m = `w.len()`) and every node of `y`.
    ///
    /// # Panics
    /// If `y` is longer than the capacity or `v` is not `sums × w.len()`.
    pub fn evaluate(&mut self, v: &[Complex<T>], w: &[Complex<T>], y: &[T]) {
        let (m, t) = (w.len(), y.len());
        assert!(t <= self.capacity, "CauchyTile: {t} nodes exceed the capacity {}", self.capacity);
        assert_eq!(v.len(), self.sums * m, "CauchyTile: weights must be sums × poles");
        self.len = t;
        let scratch = [&mut self.sp[..t], &mut self.dp[..t], &mut self.sq[..t], &mut self.dq[..t]];
        evaluate_tile(v, w, y, self.capacity, &mut self.re, &mut self.im, scratch);
    }

    /// Sum `s` over the nodes of the last evaluated tile: (real parts, imaginary parts).
    pub(crate) fn sum(&self, s: usize) -> (&[T], &[T]) {
        let at = s * self.capacity;
        (&self.re[at..at + self.len], &self.im[at..at + self.len])
    }

    /// The value of sum `s` at node `k` of the last evaluated tile.
    #[inline]
    pub fn get(&self, s: usize, k: usize) -> Complex<T> {
        debug_assert!(k < self.len);
        Complex::new(self.re[s * self.capacity + k], self.im[s * self.capacity + k])
    }
}

/// [`CauchyTile::evaluate`]'s loops: for each pole, the reciprocal combinations over the tile
/// (`scratch` = p1+p2, p1−p2, q1+q2, q1−q2), then each sum's weights applied to them.
#[inline(always)]
fn evaluate_tile_body<T: Real, const FMA: bool>(
    v: &[Complex<T>],
    w: &[Complex<T>],
    y: &[T],
    cap: usize,
    re: &mut [T],
    im: &mut [T],
    scratch: [&mut [T]; 4],
) {
    let madd = madd::<T, FMA>;
    let (m, t) = (w.len(), y.len());
    let sums = v.len() / m.max(1);
    let y = &y[..t];
    for s in 0..sums {
        re[s * cap..s * cap + t].fill(T::zero());
        im[s * cap..s * cap + t].fill(T::zero());
    }
    let [sp, dp, sq, dq] = scratch;
    let (sp, dp, sq, dq) = (&mut sp[..t], &mut dp[..t], &mut sq[..t], &mut dq[..t]);
    for (j, wj) in w.iter().enumerate() {
        let (wr, wi) = (wj.re, wj.im);
        let wr2 = wr * wr;
        // 1/(i y - w) = (-wr - i (y - wi)) / (wr² + (y - wi)²), and the same with wi -> -wi;
        // every slice has length t, so the indexing needs no bounds checks (iterator chains of
        // four zips stayed out-of-line calls)
        for k in 0..t {
            let a1 = y[k] - wi;
            let a2 = y[k] + wi;
            // one division for both reciprocals (division is the loop's slowest instruction):
            // 1/d1 = d2/(d1·d2); d1, d2 ∈ [wr², wr² + (|y| + |wi|)²], whose product stays well
            // inside f32's range for any discretized pole and node (|y| < 10⁹)
            let (d1, d2) = (madd(a1, a1, wr2), madd(a2, a2, wr2));
            let inv = T::one() / (d1 * d2);
            let (inv1, inv2) = (d2 * inv, d1 * inv);
            let p1 = -wr * inv1;
            let p2 = -wr * inv2;
            let q1 = -a1 * inv1;
            let q2 = -a2 * inv2;
            sp[k] = p1 + p2;
            dp[k] = p1 - p2;
            sq[k] = q1 + q2;
            dq[k] = q1 - q2;
        }
        for s in 0..sums {
            let vj = v[s * m + j];
            let (a, b) = (vj.re, vj.im);
            let re = &mut re[s * cap..s * cap + t];
            let im = &mut im[s * cap..s * cap + t];
            // v r1 + conj(v) r2 = (a(p1+p2) - b(q1-q2)) + i (a(q1+q2) + b(p1-p2))
            for k in 0..t {
                re[k] = madd(-b, dq[k], madd(a, sp[k], re[k]));
                im[k] = madd(b, dp[k], madd(a, sq[k], im[k]));
            }
        }
    }
}

simd_dispatch! {
    /// [`evaluate_tile_body`] with the widest vectors the CPU has (the method on its own compiled
    /// for the baseline target: 4-lane SSE without fused multiply–adds).
    #[allow(clippy::too_many_arguments)]
    fn evaluate_tile(v: &[Complex<T>], w: &[Complex<T>], y: &[T], cap: usize, re: &mut [T], im: &mut [T], scratch: [&mut [T]; 4]) -> () = evaluate_tile_body
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::nn::simd::{with_simd_level, SimdLevel};
    use num_complex::Complex64;

    #[test]
    fn tile_matches_naive() {
        let w: Vec<Complex64> = (0..7).map(|j| Complex64::new(-0.1 - 0.05 * j as f64, -(j as f64) * 3.1)).collect();
        let v: Vec<Complex64> = (0..14).map(|j| Complex64::new((j as f64).sin(), (j as f64 * 0.7).cos())).collect();
        let y: Vec<f64> = (0..40).map(|k| -20.0 + k as f64 * 1.01).collect();
        let z: Vec<Complex64> = y.iter().map(|&yk| Complex64::new(0.0, yk)).collect();
        // every vector path the CPU can run, in f64 and in f32
        for level in SimdLevel::available() {
            with_simd_level(level, || {
                let mut tile = CauchyTile::new(2, 64);
                tile.evaluate(&v, &w, &y);
                let mut tile32 = CauchyTile::<f32>::new(2, 64);
                let narrow =
                    |c: &[Complex64]| c.iter().map(|c| Complex::new(c.re as f32, c.im as f32)).collect::<Vec<_>>();
                let y32: Vec<f32> = y.iter().map(|&x| x as f32).collect();
                tile32.evaluate(&narrow(&v), &narrow(&w), &y32);
                for s in 0..2 {
                    let naive = cauchy_naive(&v[s * 7..s * 7 + 7], &w, &z);
                    for k in 0..y.len() {
                        let d = (tile.get(s, k) - naive[k]).norm();
                        assert!(d <= 1e-13 * (1.0 + naive[k].norm()), "{level} s={s} k={k}: {d}");
                        let g = tile32.get(s, k);
                        let d32 = (Complex64::new(g.re.into(), g.im.into()) - naive[k]).norm();
                        assert!(d32 <= 1e-5 * (1.0 + naive[k].norm()), "{level} f32 s={s} k={k}: {d32}");
                    }
                }
            });
        }
    }
}

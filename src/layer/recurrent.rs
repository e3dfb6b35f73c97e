//! Recurrent (step) mode of the S4 layer: the same weights as the convolution, advanced one input
//! at a time on an explicit state owned by the caller.
//!
//! * **S4D**: x ← Ā ⊙ x + B̄ u with Ā, B̄ from [`discretize_mode`], O(N) per channel.
//! * **S4 (DPLR)**: the bilinear step x' = (I − Δ/2·A)⁻¹ ((I + Δ/2·A) x + Δ B u) with
//!   A = Λ − P Q* (Q = P) applied in O(N·R) per channel from the DPLR structure (S4 paper,
//!   appendix C.2), never as a dense N × N matrix. On the half state (conjugate pairs), the low-rank
//!   coupling P_f* x_f = 2·Re(P* x) is real, so with D = (1 − Δ/2·Λ)⁻¹ and
//!   M = 2·Re(P* D P) (R × R, real):
//!
//!   v = (1 + Δ/2·Λ) ⊙ x − Δ/2 · P s(x) + Δ B u,  s(x) = 2·Re(P* x)
//!   s' = (I + Δ/2·M)⁻¹ · 2·Re(P* D v),  x' = D ⊙ (v − Δ/2 · P s').
//!
//!   The output needs the plain C, recovered from the trained C̃ as C = C̃ (I − Ā^L)⁻¹
//!   ([`recover_c`]).
//!
//! Outputs: y_c = 2·Re(C_c x) + D_c u per head, then GELU, the output linear and GLU, exactly as in
//! convolutional mode. The state is the kept half of each conjugate pair, shape (B, H, N/2),
//! shared by the heads.
//!
//! # Example
//!
//! Stepping through a sequence gives the convolutional output, for both kernels:
//!
//! ```
//! use ndarray::{s, Array2, Array3};
//! use s4::layer::S4LayerConfig;
//! use s4::ssm::KernelKind;
//!
//! for kernel in [KernelKind::Dplr, KernelKind::Diag] {
//!     let mut layer = S4LayerConfig { d_model: 3, d_state: 8, kernel, ..Default::default() }.build_as::<f64>()?;
//!     layer.set_kernel_length(64)?; // C̃ = C(I − Ā^64), as after the official first forward
//!     let u = Array3::from_shape_fn((2, 3, 64), |(b, h, t)| ((b + 2 * h + 3 * t) as f64 * 0.37).sin());
//!     let conv = layer.forward(u.view(), &Default::default())?.y; // (B, H, L)
//!
//!     let rec = layer.recurrent()?;
//!     let mut state = rec.zero_state(2); // (B, H, N/2) = (2, 3, 4)
//!     assert_eq!(state.x.dim(), (2, 3, 4));
//!     let mut snapshot = None;
//!     for t in 0..64 {
//!         if t == 40 {
//!             snapshot = Some(state.clone()); // a state is a plain value
//!         }
//!         let y_t: Array2<f64> = rec.step(&mut state, u.slice(s![.., .., t]))?; // (B, H)
//!         assert!((&y_t - &conv.slice(s![.., .., t])).iter().all(|e| e.abs() < 1e-9));
//!     }
//!     // restoring the snapshot replays the same outputs
//!     let mut again = snapshot.unwrap();
//!     let y40 = rec.step(&mut again, u.slice(s![.., .., 40]))?;
//!     assert!((&y40 - &conv.slice(s![.., .., 40])).iter().all(|e| e.abs() < 1e-9));
//!     // inputs of the wrong width are refused
//!     assert!(rec.step(&mut again, Array2::zeros((2, 4)).view()).is_err());
//! }
//! # Ok::<(), s4::Error>(())
//! ```

use super::S4Layer;
use crate::discretize::discretize_mode;
use crate::error::{Error, Result};
use crate::kernel::recover_c;
use crate::nn::{gelu, sigmoid};
use crate::scalar::Real;
use crate::ssm::KernelKind;
use ndarray::{Array2, Array3, ArrayView2, ArrayView3};
use num_complex::{Complex, Complex64};
use rayon::prelude::*;

/// Ranks up to this use a stack scratch buffer in the step.
const MAX_FAST_RANK: usize = 4;
/// Steps with at least this many (sequence, channel) rows run in parallel.
const PARALLEL_MIN_ROWS: usize = 512;

/// The recurrent state of one layer: (B, H, N/2) complex, the kept half of each conjugate pair.
///
/// A plain value: `clone()` is a snapshot, assignment is a restore.
#[derive(Clone, Debug, PartialEq)]
pub struct State<T> {
    /// (B, H, N/2).
    pub x: Array3<Complex<T>>,
}

impl<T: Real> State<T> {
    /// The zero state for `batch` sequences: (B, H, N/2) = (`batch`, `d_model`, `half_state`).
    pub fn zeros(batch: usize, d_model: usize, half_state: usize) -> Self {
        State { x: Array3::from_elem((batch, d_model, half_state), Complex::new(T::zero(), T::zero())) }
    }

    /// Batch size.
    pub fn batch(&self) -> usize {
        self.x.shape()[0]
    }
}

/// Per-channel discrete dynamics, flat and channel-major so each channel's data is contiguous
/// (built once per layer, so the size difference of the variants does not matter).
#[derive(Clone, Debug)]
#[allow(clippy::large_enum_variant)]
enum Dynamics<T> {
    Diag {
        /// Ā, [i·M + j].
        a_bar: Vec<Complex<T>>,
        /// B̄, [i·M + j].
        b_bar: Vec<Complex<T>>,
    },
    Dplr {
        /// 1 + Δ/2·Λ, [i·M + j].
        e: Vec<Complex<T>>,
        /// (1 − Δ/2·Λ)⁻¹, [i·M + j].
        dinv: Vec<Complex<T>>,
        /// Δ·B, [i·M + j].
        bd: Vec<Complex<T>>,
        /// P, [(i·R + k)·M + j].
        p: Vec<Complex<T>>,
        /// Δ/2·P, [(i·R + k)·M + j].
        p_half_dt: Vec<Complex<T>>,
        /// (I + Δ/2·M)⁻¹, [i·R² + a·R + b].
        s_inv: Vec<T>,
        /// Rank R.
        rank: usize,
    },
}

/// A layer set up for stepping (discretized once, C recovered from C̃).
#[derive(Clone, Debug)]
pub struct Recurrent<T> {
    dynamics: Dynamics<T>,
    /// Plain output vectors C, [(c·H + i)·M + j].
    c: Vec<Complex<T>>,
    /// D (channels, H).
    d: Array2<T>,
    /// Output linear (2H, channels·H), row-major.
    w: Array2<T>,
    bias: ndarray::Array1<T>,
    h: usize,
    m: usize,
    channels: usize,
}

/// Σ a_i b_i with eight independent partial sums (so the compiler vectorizes it).
#[inline]
fn dot<T: Real>(a: &[T], b: &[T]) -> T {
    let mut acc = [T::zero(); 8];
    let (ca, cb) = (a.chunks_exact(8), b.chunks_exact(8));
    let (ra, rb) = (ca.remainder(), cb.remainder());
    for (x, y) in ca.zip(cb) {
        for k in 0..8 {
            acc[k] += x[k] * y[k];
        }
    }
    let mut s = acc.iter().fold(T::zero(), |p, &q| p + q);
    for (x, y) in ra.iter().zip(rb) {
        s += *x * *y;
    }
    s
}

fn cv<T: Real>(z: Complex64) -> Complex<T> {
    Complex::new(T::of(z.re), T::of(z.im))
}

impl<T: Real> Recurrent<T> {
    /// Discretizes the layer's SSMs (in f64, then stored as `T`) and recovers C from C̃.
    ///
    /// # Errors
    /// A bidirectional layer, or I − Ā^L singular in the C̃ recovery (Re Λ ≈ 0 with small ΔL).
    pub fn new(layer: &S4Layer<T>) -> Result<Self> {
        let cfg = layer.config();
        if cfg.bidirectional {
            return Err(Error::invalid("bidirectional", true, "a causal layer for recurrent mode"));
        }
        let params = layer.ssm_params()?.cast::<f64>();
        let (h, m, ch) = (cfg.d_model, cfg.d_state / 2, cfg.channels);
        let disc = cfg.discretization();
        let c_plain = match (cfg.kernel, layer.weights().l_kernel) {
            (KernelKind::Dplr, l) if l > 0 => recover_c(&params, l)?,
            _ => params.c.clone(),
        };
        let c: Vec<Complex<T>> = c_plain.iter().map(|&z| cv(z)).collect();
        // the state dynamics depend on the channel only: use the rows of head 0
        let dynamics = match cfg.kernel {
            KernelKind::Diag => {
                let mut a_bar = Vec::with_capacity(h * m);
                let mut b_bar = Vec::with_capacity(h * m);
                for i in 0..h {
                    for j in 0..m {
                        let (a, f) = discretize_mode(params.lambda[[i, j]], params.dt[i], disc);
                        a_bar.push(cv(a));
                        b_bar.push(cv(f * params.b[[i, j]]));
                    }
                }
                Dynamics::Diag { a_bar, b_bar }
            }
            KernelKind::Dplr => {
                let p = params.p.as_ref().expect("DPLR has P");
                let r = p.shape()[0];
                let (mut e, mut dinv, mut bd) = (Vec::new(), Vec::new(), Vec::new());
                let (mut pv, mut phd, mut s_inv) = (Vec::new(), Vec::new(), Vec::new());
                for i in 0..h {
                    let half = params.dt[i] / 2.0;
                    let di: Vec<Complex64> = (0..m).map(|j| 1.0 / (1.0 - params.lambda[[i, j]] * half)).collect();
                    for j in 0..m {
                        e.push(cv(1.0 + params.lambda[[i, j]] * half));
                        dinv.push(cv(di[j]));
                        bd.push(cv(params.b[[i, j]] * params.dt[i]));
                    }
                    for k in 0..r {
                        for j in 0..m {
                            pv.push(cv(p[[k, i, j]]));
                            phd.push(cv(p[[k, i, j]] * half));
                        }
                    }
                    let mut mat = nalgebra::DMatrix::<f64>::identity(r, r);
                    for a in 0..r {
                        for b in 0..r {
                            let s: Complex64 = (0..m).map(|j| p[[a, i, j]].conj() * di[j] * p[[b, i, j]]).sum();
                            mat[(a, b)] += half * 2.0 * s.re;
                        }
                    }
                    let inv = mat.try_inverse().ok_or_else(|| {
                        Error::numerical("recurrent setup", format!("I + Δ/2·M is singular for channel {i}"))
                    })?;
                    for a in 0..r {
                        for b in 0..r {
                            s_inv.push(T::of(inv[(a, b)]));
                        }
                    }
                }
                Dynamics::Dplr { e, dinv, bd, p: pv, p_half_dt: phd, s_inv, rank: r }
            }
        };
        let w = layer.weights();
        Ok(Recurrent {
            dynamics,
            c,
            d: w.d.clone(),
            w: w.w.as_standard_layout().into_owned(),
            bias: w.bias.clone(),
            h,
            m,
            channels: ch,
        })
    }

    /// A zero state for `batch` sequences, (B, H, N/2).
    pub fn zero_state(&self, batch: usize) -> State<T> {
        State::zeros(batch, self.h, self.m)
    }

    /// Advances one channel's half state by one input.
    #[inline]
    fn advance(&self, i: usize, x: &mut [Complex<T>], u: T, scratch: &mut [T]) {
        let m = self.m;
        let ch = i * m..(i + 1) * m;
        match &self.dynamics {
            Dynamics::Diag { a_bar, b_bar } => {
                for ((xj, &a), &b) in x.iter_mut().zip(&a_bar[ch.clone()]).zip(&b_bar[ch]) {
                    *xj = a * *xj + b * u;
                }
            }
            Dynamics::Dplr { e, dinv, bd, p, p_half_dt, s_inv, rank } => {
                let r = *rank;
                let two = T::of(2.0);
                let (e, dinv, bd) = (&e[ch.clone()], &dinv[ch.clone()], &bd[ch]);
                let pr = |k: usize| &p[(i * r + k) * m..(i * r + k + 1) * m];
                let ph = |k: usize| &p_half_dt[(i * r + k) * m..(i * r + k + 1) * m];
                let (s, rest) = scratch.split_at_mut(r);
                let (t, s2) = rest.split_at_mut(r);
                // s = 2 Re(P* x)
                for k in 0..r {
                    s[k] = two
                        * pr(k)
                            .iter()
                            .zip(x.iter())
                            .fold(T::zero(), |acc, (pj, xj)| acc + pj.re * xj.re + pj.im * xj.im);
                }
                // v = e x - Δ/2 P s + Δ B u (in x)
                for ((xj, &ej), &bj) in x.iter_mut().zip(e).zip(bd) {
                    *xj = ej * *xj + bj * u;
                }
                for k in 0..r {
                    let sk = s[k];
                    for (xj, &pj) in x.iter_mut().zip(ph(k)) {
                        *xj -= pj * sk;
                    }
                }
                // t = 2 Re(P* D v), s' = (I + Δ/2 M)^{-1} t
                for k in 0..r {
                    t[k] = two
                        * pr(k).iter().zip(dinv).zip(x.iter()).fold(T::zero(), |acc, ((pj, dj), xj)| {
                            let z = *dj * *xj;
                            acc + pj.re * z.re + pj.im * z.im
                        });
                }
                let si = &s_inv[i * r * r..(i + 1) * r * r];
                for a in 0..r {
                    s2[a] = (0..r).fold(T::zero(), |acc, b| acc + si[a * r + b] * t[b]);
                }
                // x' = D (v - Δ/2 P s')
                for k in 0..r {
                    let sk = s2[k];
                    for (xj, &pj) in x.iter_mut().zip(ph(k)) {
                        *xj -= pj * sk;
                    }
                }
                for (xj, &dj) in x.iter_mut().zip(dinv) {
                    *xj = dj * *xj;
                }
            }
        }
    }

    /// 2·Re(C_c x) for head `c` of channel `i`.
    #[inline]
    fn read_out(&self, c: usize, i: usize, x: &[Complex<T>]) -> T {
        let off = (c * self.h + i) * self.m;
        T::of(2.0)
            * self.c[off..off + self.m]
                .iter()
                .zip(x)
                .fold(T::zero(), |acc, (cj, xj)| acc + cj.re * xj.re - cj.im * xj.im)
    }

    fn scratch_len(&self) -> usize {
        match &self.dynamics {
            Dynamics::Diag { .. } => 0,
            Dynamics::Dplr { rank, .. } => 3 * rank,
        }
    }

    fn check_state(&self, state: &State<T>, batch: usize) -> Result<()> {
        if state.x.dim() != (batch, self.h, self.m) {
            return Err(Error::shape(
                "state",
                format!("(B, H, N/2) = ({batch}, {}, {})", self.h, self.m),
                state.x.shape(),
            ));
        }
        if !state.x.is_standard_layout() {
            return Err(Error::invalid("state", "a non-contiguous array", "a standard-layout (B, H, N/2) array"));
        }
        if let Some(((b, i, j), _)) = state.x.indexed_iter().find(|(_, z)| !(z.re.is_finite() && z.im.is_finite())) {
            return Err(Error::invalid(format!("state[{b}, {i}, {j}]"), "non-finite", "finite values"));
        }
        Ok(())
    }

    /// One step: advances `state` (B, H, N/2) by the inputs u_t (B, H) and returns the layer
    /// output y_t (B, H), equal to column t of the convolutional output (see the module docs).
    ///
    /// # Errors
    /// Wrong shapes of `u_t` or `state`, or non-finite input.
    pub fn step(&self, state: &mut State<T>, u_t: ArrayView2<T>) -> Result<Array2<T>> {
        let (batch, h) = u_t.dim();
        if h != self.h || batch == 0 {
            return Err(Error::shape("u_t", format!("(B, H) with H = {}", self.h), u_t.shape()));
        }
        self.check_state(state, batch)?;
        if let Some(((b, i), _)) = u_t.indexed_iter().find(|(_, x)| !x.is_finite()) {
            return Err(Error::invalid(format!("u_t[{b}, {i}]"), "non-finite", "finite values"));
        }
        let (m, ch) = (self.m, self.channels);
        // SSM part: one task per (sequence, channel); pre[b·H + i][c] = GELU(2 Re(C_c x) + D_c u)
        let mut pre = vec![T::zero(); batch * h * ch];
        let xs = state.x.as_slice_mut().expect("the state is a standard-layout array");
        let work = |(bi, (x, out)): (usize, (&mut [Complex<T>], &mut [T]))| {
            let (b, i) = (bi / h, bi % h);
            let u = u_t[[b, i]];
            let mut scratch = [T::zero(); 3 * MAX_FAST_RANK];
            let mut big;
            let sc: &mut [T] = if self.scratch_len() <= scratch.len() {
                &mut scratch[..]
            } else {
                big = vec![T::zero(); self.scratch_len()];
                &mut big[..]
            };
            self.advance(i, x, u, sc);
            for (c, o) in out.iter_mut().enumerate() {
                *o = gelu(self.read_out(c, i, x) + self.d[[c, i]] * u);
            }
        };
        if batch * h >= PARALLEL_MIN_ROWS {
            xs.par_chunks_mut(m).zip(pre.par_chunks_mut(ch)).enumerate().with_min_len(64).for_each(work);
        } else {
            xs.chunks_mut(m).zip(pre.chunks_mut(ch)).enumerate().for_each(work);
        }
        // features in head-major order (c·H + i), then the output linear and GLU
        let y = Array2::from_shape_fn((batch, ch * h), |(b, f)| pre[(b * h + f % h) * ch + f / h]);
        let z = if batch <= 4 {
            // a few matrix-vector products: dot products over the contiguous rows of W
            Array2::from_shape_fn((batch, 2 * h), |(b, o)| {
                self.bias[o]
                    + dot(self.w.row(o).as_slice().expect("row-major W"), y.row(b).as_slice().expect("row-major y"))
            })
        } else {
            y.dot(&self.w.t()) + &self.bias
        };
        Ok(Array2::from_shape_fn((batch, h), |(b, i)| z[[b, i]] * sigmoid(z[[b, h + i]])))
    }

    /// Adds the response to an initial state to the pre-activation outputs y (B, channels·H, L):
    /// y_c[t] += 2·Re(C_c Ā^{t+1} x₀).
    pub(crate) fn add_state_response(&self, s0: &State<T>, y: &mut Array3<T>, lengths: Option<&[usize]>) -> Result<()> {
        let (batch, _, len) = y.dim();
        self.check_state(s0, batch)?;
        let h = self.h;
        let responses: Vec<(usize, usize, Vec<T>)> = (0..batch * h)
            .into_par_iter()
            .map(|bi| {
                let (b, i) = (bi / h, bi % h);
                let n = lengths.map_or(len, |l| l[b]);
                let mut x: Vec<Complex<T>> = s0.x.slice(ndarray::s![b, i, ..]).to_vec();
                let mut scratch = vec![T::zero(); self.scratch_len()];
                let mut out = vec![T::zero(); self.channels * n];
                for t in 0..n {
                    self.advance(i, &mut x, T::zero(), &mut scratch);
                    for c in 0..self.channels {
                        out[c * n + t] = self.read_out(c, i, &x);
                    }
                }
                (b, i, out)
            })
            .collect();
        for (b, i, out) in responses {
            let n = out.len() / self.channels;
            for c in 0..self.channels {
                for t in 0..n {
                    y[[b, c * h + i, t]] += out[c * n + t];
                }
            }
        }
        Ok(())
    }

    /// The state after each sequence's inputs u (B, H, L) (up to its length), from `initial`.
    pub(crate) fn final_state(
        &self,
        initial: Option<&State<T>>,
        u: ArrayView3<T>,
        lengths: Option<&[usize]>,
    ) -> Result<State<T>> {
        let (batch, h, len) = u.dim();
        let mut state = match initial {
            Some(s) => {
                self.check_state(s, batch)?;
                s.clone()
            }
            None => self.zero_state(batch),
        };
        let m = self.m;
        let rows: Vec<Vec<Complex<T>>> = (0..batch * h)
            .into_par_iter()
            .map(|bi| {
                let (b, i) = (bi / h, bi % h);
                let n = lengths.map_or(len, |l| l[b]);
                let mut x: Vec<Complex<T>> = state.x.slice(ndarray::s![b, i, ..]).to_vec();
                let mut scratch = vec![T::zero(); self.scratch_len()];
                for t in 0..n {
                    self.advance(i, &mut x, u[[b, i, t]], &mut scratch);
                }
                x
            })
            .collect();
        for (bi, x) in rows.into_iter().enumerate() {
            let (b, i) = (bi / h, bi % h);
            for j in 0..m {
                state.x[[b, i, j]] = x[j];
            }
        }
        Ok(state)
    }
}

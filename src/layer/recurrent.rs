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

/// The recurrent state of one layer: (B, H, N/2) complex, the kept half of each conjugate pair.
///
/// A plain value: `clone()` is a snapshot, assignment is a restore.
#[derive(Clone, Debug, PartialEq)]
pub struct State<T> {
    /// (B, H, N/2).
    pub x: Array3<Complex<T>>,
}

impl<T: Real> State<T> {
    /// The zero state for `batch` sequences.
    pub fn zeros(batch: usize, d_model: usize, half_state: usize) -> Self {
        State { x: Array3::from_elem((batch, d_model, half_state), Complex::new(T::zero(), T::zero())) }
    }

    /// Batch size.
    pub fn batch(&self) -> usize {
        self.x.shape()[0]
    }
}

/// Per-channel discrete dynamics (built once per layer, so the size difference of the variants
/// does not matter).
#[derive(Clone, Debug)]
#[allow(clippy::large_enum_variant)]
enum Dynamics<T> {
    Diag {
        /// Ā (H, N/2).
        a_bar: Array2<Complex<T>>,
        /// B̄ (H, N/2).
        b_bar: Array2<Complex<T>>,
    },
    Dplr {
        /// 1 + Δ/2·Λ (H, N/2).
        e: Array2<Complex<T>>,
        /// (1 − Δ/2·Λ)⁻¹ (H, N/2).
        dinv: Array2<Complex<T>>,
        /// Δ·B (H, N/2).
        bd: Array2<Complex<T>>,
        /// Δ/2·P (R, H, N/2).
        p_half_dt: Array3<Complex<T>>,
        /// P (R, H, N/2).
        p: Array3<Complex<T>>,
        /// (I + Δ/2·M)⁻¹ (H, R, R).
        s_inv: Array3<T>,
    },
}

/// A layer set up for stepping (discretized once, C recovered from C̃).
#[derive(Clone, Debug)]
pub struct Recurrent<T> {
    dynamics: Dynamics<T>,
    /// Plain output vectors C (heads, H, N/2).
    c: Array3<Complex<T>>,
    d: Array2<T>,
    w: Array2<T>,
    bias: ndarray::Array1<T>,
    h: usize,
    m: usize,
    channels: usize,
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
        let c = c_plain.mapv(cv::<T>).into_shape_with_order((ch, h, m)).expect("heads·H rows");
        // the state dynamics depend on the channel only: use the rows of head 0
        let dynamics = match cfg.kernel {
            KernelKind::Diag => {
                let mut a_bar = Array2::from_elem((h, m), Complex::new(T::zero(), T::zero()));
                let mut b_bar = a_bar.clone();
                for i in 0..h {
                    for j in 0..m {
                        let (a, f) = discretize_mode(params.lambda[[i, j]], params.dt[i], disc);
                        a_bar[[i, j]] = cv(a);
                        b_bar[[i, j]] = cv(f * params.b[[i, j]]);
                    }
                }
                Dynamics::Diag { a_bar, b_bar }
            }
            KernelKind::Dplr => {
                let p = params.p.as_ref().expect("DPLR has P");
                let r = p.shape()[0];
                let mut e = Array2::from_elem((h, m), Complex64::new(0.0, 0.0));
                let mut dinv = e.clone();
                let mut bd = e.clone();
                let mut s_inv = Array3::<f64>::zeros((h, r, r));
                for i in 0..h {
                    let half = params.dt[i] / 2.0;
                    for j in 0..m {
                        e[[i, j]] = 1.0 + params.lambda[[i, j]] * half;
                        dinv[[i, j]] = 1.0 / (1.0 - params.lambda[[i, j]] * half);
                        bd[[i, j]] = params.b[[i, j]] * params.dt[i];
                    }
                    let mut mat = nalgebra::DMatrix::<f64>::identity(r, r);
                    for a in 0..r {
                        for b in 0..r {
                            let s: Complex64 = (0..m).map(|j| p[[a, i, j]].conj() * dinv[[i, j]] * p[[b, i, j]]).sum();
                            mat[(a, b)] += half * 2.0 * s.re;
                        }
                    }
                    let inv = mat.try_inverse().ok_or_else(|| {
                        Error::numerical("recurrent setup", format!("I + Δ/2·M is singular for channel {i}"))
                    })?;
                    for a in 0..r {
                        for b in 0..r {
                            s_inv[[i, a, b]] = inv[(a, b)];
                        }
                    }
                }
                let p_h = p.slice(ndarray::s![.., ..h, ..]).to_owned();
                let p_half_dt = Array3::from_shape_fn(p_h.dim(), |(k, i, j)| p_h[[k, i, j]] * (params.dt[i] / 2.0));
                Dynamics::Dplr {
                    e: e.mapv(cv),
                    dinv: dinv.mapv(cv),
                    bd: bd.mapv(cv),
                    p_half_dt: p_half_dt.mapv(cv),
                    p: p_h.mapv(cv),
                    s_inv: s_inv.mapv(T::of),
                }
            }
        };
        let w = layer.weights();
        Ok(Recurrent { dynamics, c, d: w.d.clone(), w: w.w.clone(), bias: w.bias.clone(), h, m, channels: ch })
    }

    /// A zero state for `batch` sequences.
    pub fn zero_state(&self, batch: usize) -> State<T> {
        State::zeros(batch, self.h, self.m)
    }

    /// Advances one channel's half state by one input.
    #[inline]
    fn advance(&self, i: usize, x: &mut [Complex<T>], u: T, scratch: &mut [T]) {
        match &self.dynamics {
            Dynamics::Diag { a_bar, b_bar } => {
                for j in 0..self.m {
                    x[j] = a_bar[[i, j]] * x[j] + b_bar[[i, j]] * u;
                }
            }
            Dynamics::Dplr { e, dinv, bd, p_half_dt, p, s_inv } => {
                let r = p.shape()[0];
                let two = T::of(2.0);
                let (s, rest) = scratch.split_at_mut(r);
                let (t, s2) = rest.split_at_mut(r);
                for k in 0..r {
                    s[k] = two * (0..self.m).fold(T::zero(), |acc, j| acc + (p[[k, i, j]].conj() * x[j]).re);
                }
                // v = e x - Δ/2 P s + Δ B u (stored in x)
                for j in 0..self.m {
                    let mut v = e[[i, j]] * x[j] + bd[[i, j]] * u;
                    for k in 0..r {
                        v = v - p_half_dt[[k, i, j]] * s[k];
                    }
                    x[j] = v;
                }
                for k in 0..r {
                    t[k] = two
                        * (0..self.m).fold(T::zero(), |acc, j| acc + (p[[k, i, j]].conj() * dinv[[i, j]] * x[j]).re);
                }
                for a in 0..r {
                    s2[a] = (0..r).fold(T::zero(), |acc, b| acc + s_inv[[i, a, b]] * t[b]);
                }
                for j in 0..self.m {
                    let mut v = x[j];
                    for k in 0..r {
                        v = v - p_half_dt[[k, i, j]] * s2[k];
                    }
                    x[j] = dinv[[i, j]] * v;
                }
            }
        }
    }

    fn scratch_len(&self) -> usize {
        match &self.dynamics {
            Dynamics::Diag { .. } => 0,
            Dynamics::Dplr { p, .. } => 3 * p.shape()[0],
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
        Ok(())
    }

    /// One step: advances `state` by the inputs u_t (B, H) and returns the layer output (B, H).
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
        let mut scratch = vec![T::zero(); self.scratch_len()];
        let two = T::of(2.0);
        let mut y = Array2::<T>::zeros((batch, self.channels * h));
        for b in 0..batch {
            for i in 0..h {
                let mut xs = state.x.slice_mut(ndarray::s![b, i, ..]);
                let x = xs.as_slice_mut().expect("state rows are contiguous");
                let u = u_t[[b, i]];
                self.advance(i, x, u, &mut scratch);
                for c in 0..self.channels {
                    let yc = two * (0..self.m).fold(T::zero(), |acc, j| acc + (self.c[[c, i, j]] * x[j]).re);
                    y[[b, c * h + i]] = gelu(yc + self.d[[c, i]] * u);
                }
            }
        }
        // output linear over features, then GLU
        let z = y.dot(&self.w.t()) + &self.bias;
        Ok(Array2::from_shape_fn((batch, h), |(b, i)| z[[b, i]] * sigmoid(z[[b, h + i]])))
    }

    /// Adds the response to an initial state to the pre-activation outputs y (B, channels·H, L):
    /// y_c[t] += 2·Re(C_c Ā^{t+1} x₀).
    pub(crate) fn add_state_response(&self, s0: &State<T>, y: &mut Array3<T>, lengths: Option<&[usize]>) -> Result<()> {
        let (batch, _, len) = y.dim();
        self.check_state(s0, batch)?;
        let two = T::of(2.0);
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
                        out[c * n + t] =
                            two * (0..self.m).fold(T::zero(), |acc, j| acc + (self.c[[c, i, j]] * x[j]).re);
                    }
                }
                (b, i, out)
            })
            .collect();
        for (b, i, out) in responses {
            let n = out.len() / self.channels;
            for c in 0..self.channels {
                for t in 0..n {
                    y[[b, c * h + i, t]] = y[[b, c * h + i, t]] + out[c * n + t];
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

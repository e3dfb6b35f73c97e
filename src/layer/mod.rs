//! The S4 layer (the official `S4Block` with its defaults): an SSM convolution per channel, the D
//! skip, GELU, and an output linear H → 2H followed by GLU.
//!
//! ```text
//! u (B, H, L) ─► mask by lengths ─► y_c = K_c * u + D_c ⊙ u  (c = 1..channels heads) ─► GELU
//!             ─► Linear(channels·H → 2H) ─► GLU ─► (B, H, L)
//! ```
//!
//! One set of weights runs in two modes that agree: [`S4Layer::forward`] convolves whole sequences
//! with the kernel (training, long inputs), and [`Recurrent::step`](recurrent::Recurrent::step)
//! advances an explicit [`State`] one input at a time (streaming, generation).
//! The parameterization follows the official `SSMKernel` registration (s4-math note §1.7):
//!
//! | parameter | shape | meaning |
//! |---|---|---|
//! | `inv_dt` | (H,) | Δ = exp(inv_dt) or softplus(inv_dt) ([`DtTransform`]) |
//! | `a_real` | (n_ssm, N/2) | Re Λ = −exp(a_real), −softplus(a_real), or min(a_real, −1e-4) ([`RealTransform`]) |
//! | `a_imag` | (n_ssm, N/2) | Im Λ = −a_imag |
//! | `b` | (n_ssm, N/2) complex | B |
//! | `p` | (R, n_ssm, N/2) complex | P (DPLR only; Q = P) |
//! | `c` | (C'', H, N/2) complex | C, or C̃ = C(I − Ā^L) when `l_kernel` = L > 0 (DPLR); C'' = channels (×2 if bidirectional) |
//! | `d` | (channels, H) | D skip |
//! | `w`, `bias` | (2H, channels·H), (2H,) | output linear before GLU |
//!
//! Channel h uses SSM copy h mod n_ssm, as the official code broadcasts them.

pub mod official;
pub mod recurrent;

pub use recurrent::{Recurrent, State, StepBuffers};

use crate::conv::FftConv;
use crate::discretize::Discretization;
use crate::error::{check_dt, check_even_state, Error, Result};
use crate::kernel::{default_discretization, diag_kernel, DplrKernel};
use crate::nn::gelu_in_place;
use crate::nn::linear::linear_glu_features;
use crate::scalar::Real;
use crate::ssm::{KernelKind, SsmInit, SsmInitConfig, SsmParams};
use ndarray::{s, Array1, Array2, Array3, ArrayView3, Axis};
use num_complex::{Complex, Complex64};
use rand::SeedableRng;
use rand_distr::{Distribution, Uniform};
use rayon::prelude::*;
use std::str::FromStr;

/// How the stored `inv_dt` becomes the step size Δ.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum DtTransform {
    /// Δ = exp(inv_dt) (the official class default).
    Exp,
    /// Δ = softplus(inv_dt) = log(1 + e^inv_dt) (the official repository configs).
    Softplus,
}

/// How the stored `a_real` becomes Re Λ (always < 0, so every mode is stable).
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum RealTransform {
    /// Re Λ = −exp(a_real) (the official default).
    Exp,
    /// Re Λ = −softplus(a_real).
    Softplus,
    /// Re Λ = min(a_real, −1e-4): a_real stores Re Λ itself, clipped (annotated-s4, S5).
    Clip,
}

impl FromStr for DtTransform {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self> {
        match s {
            "exp" => Ok(DtTransform::Exp),
            "softplus" => Ok(DtTransform::Softplus),
            _ => Err(Error::invalid("dt_transform", s, "exp or softplus")),
        }
    }
}

impl FromStr for RealTransform {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self> {
        match s {
            "exp" => Ok(RealTransform::Exp),
            "softplus" => Ok(RealTransform::Softplus),
            "clip" => Ok(RealTransform::Clip),
            _ => Err(Error::invalid("real_transform", s, "exp, softplus or clip")),
        }
    }
}

fn softplus(x: f64) -> f64 {
    if x > 30.0 {
        x
    } else {
        x.exp().ln_1p()
    }
}

fn inv_softplus(y: f64) -> f64 {
    if y > 30.0 {
        y
    } else {
        y.exp_m1().ln()
    }
}

impl DtTransform {
    /// Δ from the stored value.
    pub fn apply(self, inv_dt: f64) -> f64 {
        match self {
            DtTransform::Exp => inv_dt.exp(),
            DtTransform::Softplus => softplus(inv_dt),
        }
    }

    /// The stored value for Δ.
    pub fn inverse(self, dt: f64) -> f64 {
        match self {
            DtTransform::Exp => dt.ln(),
            DtTransform::Softplus => inv_softplus(dt),
        }
    }

    /// dΔ/d(inv_dt): exp(inv_dt) or σ(inv_dt).
    pub fn derivative(self, inv_dt: f64) -> f64 {
        match self {
            DtTransform::Exp => inv_dt.exp(),
            DtTransform::Softplus => 1.0 / (1.0 + (-inv_dt).exp()),
        }
    }
}

/// Largest width, state size or head count a configuration may ask for (a guard against
/// corrupted configs allocating absurd amounts of memory).
pub const MAX_SIZE: usize = 1 << 16;

/// Smallest |Re Λ| the transforms allow at init (the official clamp).
const MIN_DECAY: f64 = 1e-4;

impl RealTransform {
    /// Re Λ from the stored value.
    pub fn apply(self, a: f64) -> f64 {
        match self {
            RealTransform::Exp => -a.exp(),
            RealTransform::Softplus => -softplus(a),
            RealTransform::Clip => a.min(-MIN_DECAY),
        }
    }

    /// The stored value for Re Λ (< 0), clamping |Re Λ| ≥ 1e-4 first.
    pub fn inverse(self, re: f64) -> f64 {
        let decay = (-re).max(MIN_DECAY);
        match self {
            RealTransform::Exp => decay.ln(),
            RealTransform::Softplus => inv_softplus(decay),
            RealTransform::Clip => -decay,
        }
    }

    /// d(Re Λ)/d(a_real): −exp(a), −σ(a), or 1 up to the clip (0 above it; at the clip itself 1,
    /// as `torch.clamp` passes the gradient there, so modes initialized at −1e-4 can move).
    pub fn derivative(self, a: f64) -> f64 {
        match self {
            RealTransform::Exp => -a.exp(),
            RealTransform::Softplus => -1.0 / (1.0 + (-a).exp()),
            RealTransform::Clip => {
                if a <= -MIN_DECAY {
                    1.0
                } else {
                    0.0
                }
            }
        }
    }
}

/// Configuration of an [`S4Layer`]: a plain struct with defaults (the official S4Block's), checked
/// once by [`build`](Self::build).
#[derive(Clone, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct S4LayerConfig {
    /// Model width H (`d_model`).
    pub d_model: usize,
    /// State size N (`d_state`, even); N/2 complex states are kept.
    pub d_state: usize,
    /// Kernel kind: `dplr` (S4) or `diag` (S4D).
    pub kernel: KernelKind,
    /// Initialization of Λ, P, B.
    pub init: SsmInit,
    /// Discretization; `None` is bilinear for DPLR (the only one it supports) and ZOH for diag.
    pub disc: Option<Discretization>,
    /// Smallest Δ of the log-uniform init.
    pub dt_min: f64,
    /// Largest Δ of the log-uniform init.
    pub dt_max: f64,
    /// Parameterization of Δ.
    pub dt_transform: DtTransform,
    /// Parameterization of Re Λ.
    pub real_transform: RealTransform,
    /// Number of independent (Λ, P, B) copies shared across channels; must divide H (`None` = H).
    pub n_ssm: Option<usize>,
    /// Number of output heads per channel (C has `channels` rows, ×2 if bidirectional).
    pub channels: usize,
    /// Non-causal: a forward and a backward kernel (the official layer-level option).
    pub bidirectional: bool,
    /// Maximum kernel length (`None`: as long as the input).
    pub l_max: Option<usize>,
    /// Dropout after the activation (active when [`ForwardOptions::dropout_seed`] is set).
    pub dropout: f64,
    /// Seed of the initialization.
    pub seed: u64,
}

impl Default for S4LayerConfig {
    fn default() -> Self {
        S4LayerConfig {
            d_model: 256,
            d_state: 64,
            kernel: KernelKind::Dplr,
            init: SsmInit::Hippo(crate::hippo::Measure::LegS),
            disc: None,
            dt_min: 1e-3,
            dt_max: 1e-1,
            dt_transform: DtTransform::Exp,
            real_transform: RealTransform::Exp,
            n_ssm: None,
            channels: 1,
            bidirectional: false,
            l_max: None,
            dropout: 0.0,
            seed: 0,
        }
    }
}

impl S4LayerConfig {
    /// Number of SSM copies (`n_ssm`, or H).
    pub fn n_ssm(&self) -> usize {
        self.n_ssm.unwrap_or(self.d_model)
    }

    /// Rows of C: channels, doubled when bidirectional.
    pub fn c_heads(&self) -> usize {
        self.channels * if self.bidirectional { 2 } else { 1 }
    }

    /// The effective discretization.
    pub fn discretization(&self) -> Discretization {
        self.disc.unwrap_or_else(|| default_discretization(self.kernel))
    }

    /// Checks every field.
    ///
    /// # Errors
    /// H = 0, N zero or odd, n_ssm not dividing H, channels = 0, dt bounds not finite and positive
    /// or dt_min > dt_max, a non-bilinear discretization for DPLR, l_max = 0, dropout outside [0, 1).
    pub fn validate(&self) -> Result<()> {
        if self.d_model == 0 || self.d_model > MAX_SIZE {
            return Err(Error::invalid("d_model H", self.d_model, format!("an integer in 1..={MAX_SIZE}")));
        }
        if self.d_state > MAX_SIZE || self.channels > MAX_SIZE {
            return Err(Error::invalid(
                "d_state N / channels",
                format!("{} / {}", self.d_state, self.channels),
                format!("at most {MAX_SIZE}"),
            ));
        }
        check_even_state(self.d_state)?;
        let n_ssm = self.n_ssm();
        if n_ssm == 0 || !self.d_model.is_multiple_of(n_ssm) {
            return Err(Error::invalid("n_ssm", n_ssm, format!("a divisor of d_model H = {}", self.d_model)));
        }
        if self.channels == 0 {
            return Err(Error::invalid("channels", 0, "an integer >= 1"));
        }
        check_dt("dt_min", self.dt_min)?;
        check_dt("dt_max", self.dt_max)?;
        if self.dt_min > self.dt_max {
            return Err(Error::invalid("dt_min", self.dt_min, format!("<= dt_max = {}", self.dt_max)));
        }
        let disc = self.discretization().validate()?;
        if self.kernel == KernelKind::Dplr && disc != Discretization::Bilinear {
            return Err(Error::invalid("disc", disc, "bilinear for the DPLR kernel"));
        }
        if self.l_max == Some(0) {
            return Err(Error::invalid("l_max", 0, "a length >= 1, or None for unbounded"));
        }
        if !(self.dropout.is_finite() && (0.0..1.0).contains(&self.dropout)) {
            return Err(Error::invalid("dropout", self.dropout, "a probability in [0, 1)"));
        }
        Ok(())
    }

    /// Validates the configuration and draws a layer in f32 (the default precision).
    ///
    /// # Errors
    /// See [`validate`](Self::validate).
    ///
    /// # Example
    /// ```
    /// use ndarray::Array3;
    /// use s4::layer::S4LayerConfig;
    /// let layer = S4LayerConfig { d_model: 4, d_state: 16, ..Default::default() }.build()?;
    /// let y = layer.forward(Array3::<f32>::ones((2, 4, 100)).view(), &Default::default())?.y;
    /// assert_eq!(y.dim(), (2, 4, 100));
    /// # Ok::<(), s4::Error>(())
    /// ```
    pub fn build(&self) -> Result<S4Layer<f32>> {
        self.build_as()
    }

    /// Validates the configuration and draws a layer in precision `T`.
    ///
    /// Λ, P, B as [`SsmInitConfig::draw`] (f64, then stored through the transforms), C complex
    /// normal, Δ log-uniform per channel, D standard normal, the output linear uniform in
    /// ±1/√(fan-in) (PyTorch's `nn.Linear` default), all from one seeded stream.
    ///
    /// # Errors
    /// See [`validate`](Self::validate).
    pub fn build_as<T: Real>(&self) -> Result<S4Layer<T>> {
        self.validate()?;
        let (h, m, n_ssm, heads) = (self.d_model, self.d_state / 2, self.n_ssm(), self.c_heads());
        let base = SsmInitConfig {
            kind: self.kernel,
            init: self.init,
            d_state: self.d_state,
            channels: heads * h,
            dt_min: self.dt_min,
            dt_max: self.dt_max,
            seed: self.seed,
        }
        .draw()?;
        let c = base.c.clone().into_shape_with_order((heads, h, m)).expect("heads·H rows");
        let lam = base.lambda.row(0);
        let a_real = Array2::from_shape_fn((n_ssm, m), |(_, j)| self.real_transform.inverse(lam[j].re));
        let a_imag = Array2::from_shape_fn((n_ssm, m), |(_, j)| -lam[j].im);
        let b = Array2::from_shape_fn((n_ssm, m), |(_, j)| base.b[[0, j]]);
        let p = base.p.as_ref().map(|p| Array3::from_shape_fn((p.shape()[0], n_ssm, m), |(r, _, j)| p[[r, 0, j]]));
        let inv_dt = Array1::from_shape_fn(h, |i| self.dt_transform.inverse(base.dt[i]));
        let mut rng = rand_pcg::Pcg64::seed_from_u64(self.seed ^ 0x05EE_D0FD_u64);
        let normal = rand_distr::StandardNormal;
        let d = Array2::from_shape_fn((self.channels, h), |_| {
            let v: f64 = normal.sample(&mut rng);
            v
        });
        let fan_in = (self.channels * h) as f64;
        let bound = 1.0 / fan_in.sqrt();
        let uni = Uniform::new_inclusive(-bound, bound).expect("bound > 0");
        let w = Array2::from_shape_fn((2 * h, self.channels * h), |_| uni.sample(&mut rng));
        let bias = Array1::from_shape_fn(2 * h, |_| uni.sample(&mut rng));
        let cv = |z: &Complex64| Complex::new(T::of(z.re), T::of(z.im));
        S4Layer::from_parts(
            self.clone(),
            Weights {
                inv_dt: inv_dt.mapv(T::of),
                a_real: a_real.mapv(T::of),
                a_imag: a_imag.mapv(T::of),
                b: b.map(cv),
                p: p.map(|p| p.map(cv)),
                c: c.map(cv),
                l_kernel: 0,
                d: d.mapv(T::of),
                w: w.mapv(T::of),
                bias: bias.mapv(T::of),
            },
        )
    }
}

/// The trainable tensors of a layer (see the table in the [module docs](self)).
#[derive(Clone, Debug, PartialEq)]
pub struct Weights<T> {
    /// (H,).
    pub inv_dt: Array1<T>,
    /// (n_ssm, N/2).
    pub a_real: Array2<T>,
    /// (n_ssm, N/2).
    pub a_imag: Array2<T>,
    /// (n_ssm, N/2).
    pub b: Array2<Complex<T>>,
    /// (R, n_ssm, N/2), DPLR only.
    pub p: Option<Array3<Complex<T>>>,
    /// (C'', H, N/2): C, or C̃ tied to `l_kernel` when it is > 0 (DPLR).
    pub c: Array3<Complex<T>>,
    /// Length C̃ is tied to (0: `c` holds the plain C).
    pub l_kernel: usize,
    /// (channels, H).
    pub d: Array2<T>,
    /// (2H, channels·H).
    pub w: Array2<T>,
    /// (2H,).
    pub bias: Array1<T>,
}

/// An S4 layer in precision `T` (f32 by default; f64 for references).
#[derive(Clone, Debug)]
pub struct S4Layer<T> {
    config: S4LayerConfig,
    pub(crate) weights: Weights<T>,
}

/// Options of a convolutional-mode forward pass.
#[derive(Clone, Debug, Default)]
pub struct ForwardOptions<T> {
    /// Per-sequence lengths (suffix padding): inputs at t ≥ `lengths[b]` are ignored and outputs
    /// there are zero.
    pub lengths: Option<Vec<usize>>,
    /// Recurrent state at the start of the chunk (causal layers only).
    pub initial_state: Option<State<T>>,
    /// Also return the state after the last (unpadded) input of each sequence (causal layers only).
    pub return_state: bool,
    /// Training mode with this dropout seed: the layer's dropout (after the activation) zeroes
    /// each feature with probability p and scales the rest by 1/(1 − p). `None` is evaluation
    /// mode (no dropout), the mode of the recurrent step.
    pub dropout_seed: Option<u64>,
}

/// Output of [`S4Layer::forward`].
#[derive(Clone, Debug)]
pub struct ForwardOutput<T> {
    /// (B, H, L).
    pub y: Array3<T>,
    /// The final state, when asked for.
    pub state: Option<State<T>>,
}

impl<T: Real> S4Layer<T> {
    /// Assembles a layer from a configuration and weights, checking every shape.
    ///
    /// # Errors
    /// An invalid configuration, a tensor of the wrong shape (named), or non-finite weights.
    pub fn from_parts(config: S4LayerConfig, weights: Weights<T>) -> Result<Self> {
        config.validate()?;
        let (h, m, n_ssm, heads, ch) =
            (config.d_model, config.d_state / 2, config.n_ssm(), config.c_heads(), config.channels);
        let expect = |name: &str, got: &[usize], want: &[usize]| -> Result<()> {
            if got != want {
                Err(Error::shape(name, format!("{want:?}"), got))
            } else {
                Ok(())
            }
        };
        let w = &weights;
        expect("inv_dt", w.inv_dt.shape(), &[h])?;
        expect("a_real", w.a_real.shape(), &[n_ssm, m])?;
        expect("a_imag", w.a_imag.shape(), &[n_ssm, m])?;
        expect("b", w.b.shape(), &[n_ssm, m])?;
        expect("c", w.c.shape(), &[heads, h, m])?;
        expect("d", w.d.shape(), &[ch, h])?;
        expect("w", w.w.shape(), &[2 * h, ch * h])?;
        expect("bias", w.bias.shape(), &[2 * h])?;
        match (config.kernel, &w.p) {
            (KernelKind::Dplr, Some(p)) => {
                if p.shape()[0] == 0 || p.shape()[1..] != [n_ssm, m] {
                    return Err(Error::shape("p", format!("[R, {n_ssm}, {m}] with R >= 1"), p.shape()));
                }
            }
            (KernelKind::Dplr, None) => return Err(Error::invalid("p", "absent", "a P tensor for the DPLR kernel")),
            (KernelKind::Diag, Some(_)) => return Err(Error::invalid("p", "present", "no P for the diagonal kernel")),
            (KernelKind::Diag, None) => {}
        }
        if w.l_kernel > 0 && config.kernel == KernelKind::Diag {
            return Err(Error::invalid("l_kernel", w.l_kernel, "0 for the diagonal kernel (it has no C̃)"));
        }
        let layer = S4Layer { config, weights };
        // Δ > 0 and Re Λ < 0 are enforced by the transforms; check they are finite
        layer.ssm_params()?.validate()?;
        let finite = |x: &T| x.is_finite();
        if !(w_all_finite(&layer.weights) && layer.weights.d.iter().all(finite)) {
            return Err(Error::invalid("layer weights", "non-finite values", "finite weights"));
        }
        Ok(layer)
    }

    /// The configuration.
    pub fn config(&self) -> &S4LayerConfig {
        &self.config
    }

    /// The weights.
    pub fn weights(&self) -> &Weights<T> {
        &self.weights
    }

    /// Model width H.
    pub fn d_model(&self) -> usize {
        self.config.d_model
    }

    /// Continuous parameters of all C''·H SSMs (head-major rows: head c, channel h at c·H + h),
    /// with `c` as stored (C̃ when `l_kernel` > 0).
    ///
    /// # Errors
    /// Non-finite or unstable parameters (cannot happen for a built layer unless weights were
    /// edited).
    pub fn ssm_params(&self) -> Result<SsmParams<T>> {
        let w = &self.weights;
        let cfg = &self.config;
        let (h, m, n_ssm, heads) = (cfg.d_model, cfg.d_state / 2, cfg.n_ssm(), cfg.c_heads());
        let rows = heads * h;
        let copy = |row: usize| (row % h) % n_ssm;
        let lambda = Array2::from_shape_fn((rows, m), |(r, j)| {
            let k = copy(r);
            Complex::new(T::of(cfg.real_transform.apply(w.a_real[[k, j]].as_f64())), -w.a_imag[[k, j]])
        });
        let b = Array2::from_shape_fn((rows, m), |(r, j)| w.b[[copy(r), j]]);
        let p = w.p.as_ref().map(|p| Array3::from_shape_fn((p.shape()[0], rows, m), |(k, r, j)| p[[k, copy(r), j]]));
        let c = w.c.clone().into_shape_with_order((rows, m)).expect("contiguous (C'', H, N/2)");
        let dt = Array1::from_shape_fn(rows, |r| T::of(cfg.dt_transform.apply(w.inv_dt[r % h].as_f64())));
        let params = SsmParams { lambda, p, b, c, dt };
        params.validate()?;
        Ok(params)
    }

    /// Ties C to a kernel length as the official first forward does: C̃ = C(I − Ā^L) and
    /// `l_kernel = L` if C is plain, or doubles `l_kernel` until it is ≥ `len`. No-op for diag.
    ///
    /// # Errors
    /// `len == 0`.
    pub fn set_kernel_length(&mut self, len: usize) -> Result<()> {
        crate::error::check_len("kernel length L", len)?;
        if self.config.kernel == KernelKind::Diag {
            return Ok(());
        }
        let k = self.dplr_kernel(len)?;
        let (heads, h, m) = self.weights.c.dim();
        self.weights.c = k.params().c.clone().into_shape_with_order((heads, h, m)).expect("rows are heads·H");
        self.weights.l_kernel = k.l_kernel();
        Ok(())
    }

    /// The DPLR kernel object valid for at least `len` taps (C̃ set up or doubled as needed).
    fn dplr_kernel(&self, len: usize) -> Result<DplrKernel<T>> {
        let params = self.ssm_params()?;
        let mut k = if self.weights.l_kernel == 0 {
            DplrKernel::new(&params.cast::<f64>(), len)?
        } else {
            DplrKernel::from_c_tilde(params, self.weights.l_kernel)?
        };
        while k.l_kernel() < len {
            k.double_length()?;
        }
        Ok(k)
    }

    /// The convolution kernel (C'', H, len) of every head (forward heads, then backward heads).
    ///
    /// # Errors
    /// `len == 0`.
    pub fn kernel(&self, len: usize) -> Result<Array3<T>> {
        crate::error::check_len("kernel length L", len)?;
        let k = match self.config.kernel {
            KernelKind::Dplr => self.dplr_kernel(len)?.kernel(len)?,
            KernelKind::Diag => diag_kernel(&self.ssm_params()?, len, self.config.discretization())?,
        };
        let (heads, h) = (self.config.c_heads(), self.config.d_model);
        Ok(k.into_shape_with_order((heads, h, len)).expect("rows are heads·H"))
    }

    /// Checks a (B, H, L) input and optional lengths.
    fn check_input(&self, u: &ArrayView3<T>, lengths: Option<&[usize]>) -> Result<()> {
        let (b, h, l) = u.dim();
        if h != self.config.d_model || b == 0 || l == 0 {
            return Err(Error::shape(
                "input u",
                format!("(B, H, L) with H = {} and B, L >= 1", self.config.d_model),
                u.shape(),
            ));
        }
        if let Some((i, j, t)) = crate::nn::simd::first_non_finite(u) {
            return Err(Error::invalid(format!("input u[{i}, {j}, {t}]"), "non-finite", "finite values"));
        }
        if let Some(len) = lengths {
            if len.len() != b {
                return Err(Error::shape("lengths", format!("(B,) = ({b},)"), &[len.len()]));
            }
            if let Some((i, &n)) = len.iter().enumerate().find(|&(_, &n)| n > l || n == 0) {
                return Err(Error::invalid(format!("lengths[{i}]"), n, format!("in 1..=L = {l}")));
            }
        }
        Ok(())
    }

    /// Convolutional mode over a batch u (B, H, L).
    ///
    /// With `lengths`, inputs past each sequence's length are ignored (zeroed before the SSM) and
    /// its outputs there are zero. With `initial_state`, the SSM starts from that state (the chunk
    /// continues a previous one); with `return_state`, the state after each sequence's last input
    /// is returned, so a long input can be processed in chunks with the same result as in one
    /// piece.
    ///
    /// # Errors
    /// Wrong shapes, non-finite input (the message names the first bad entry), lengths > L, a
    /// state option on a bidirectional layer, or a non-finite output (named, with its input row).
    pub fn forward(&self, u: ArrayView3<T>, opts: &ForwardOptions<T>) -> Result<ForwardOutput<T>> {
        self.check_input(&u, opts.lengths.as_deref())?;
        if self.config.bidirectional && (opts.initial_state.is_some() || opts.return_state) {
            return Err(Error::invalid(
                "state",
                "requested",
                "a causal layer (a bidirectional layer has no recurrent state)",
            ));
        }
        let (batch, h, len) = u.dim();
        // inputs past each sequence's length are zeroed (in a copy only when lengths are given)
        let masked;
        let u = match &opts.lengths {
            Some(lengths) => {
                let mut m = u.to_owned();
                for (b, &n) in lengths.iter().enumerate() {
                    m.slice_mut(s![b, .., n..]).fill(T::zero());
                }
                masked = m;
                masked.view()
            }
            None => u,
        };
        let lk = self.config.l_max.map_or(len, |m| m.min(len));
        if lk < len && (opts.initial_state.is_some() || opts.return_state) {
            return Err(Error::invalid(
                "l_max",
                lk,
                format!(">= L = {len} when the state is passed in or out (a truncated kernel is not a recurrence)"),
            ));
        }
        let k = self.kernel(lk)?;
        let ch = self.config.channels;
        let mut conv = FftConv::<T>::new();
        let mut heads = Vec::with_capacity(ch);
        for c in 0..ch {
            let d = self.weights.d.row(c);
            heads.push(if self.config.bidirectional {
                conv.bidirectional(u, k.index_axis(Axis(0), c), k.index_axis(Axis(0), ch + c), Some(d))?
            } else {
                conv.causal(u, k.index_axis(Axis(0), c), Some(d))?
            });
        }
        // (B, channels·H, L), head-major features; one head is the convolution's output as it is
        let mut y = if ch == 1 {
            heads.pop().expect("one head")
        } else {
            let mut y = Array3::<T>::zeros((batch, ch * h, len));
            for (c, yc) in heads.iter().enumerate() {
                y.slice_mut(s![.., c * h..(c + 1) * h, ..]).assign(yc);
            }
            y
        };
        let mut state = None;
        if let Some(s0) = &opts.initial_state {
            let rec = self.recurrent()?;
            rec.add_state_response(s0, &mut y, opts.lengths.as_deref())?;
            if opts.return_state {
                state = Some(rec.final_state(Some(s0), u.view(), opts.lengths.as_deref())?);
            }
        } else if opts.return_state {
            // the state alone needs the dynamics only (no C recovery: 42 ms per DPLR layer at H = 256)
            state = Some(recurrent::state_after(self, u.view(), opts.lengths.as_deref())?);
        }
        let mut out = Array3::<T>::zeros((batch, h, len));
        // activation, output linear and GLU, one sequence per task
        let drop = opts.dropout_seed.filter(|_| self.config.dropout > 0.0);
        let p = self.config.dropout;
        out.axis_iter_mut(Axis(0)).into_par_iter().zip(y.axis_iter_mut(Axis(0))).enumerate().for_each(
            |(b, (mut ob, mut yb))| {
                gelu_in_place(yb.as_slice_mut().expect("a row of a fresh array"));
                if let Some(seed) = drop {
                    dropout_in_place(yb.view_mut(), p, seed, b);
                }
                linear_glu_features(yb.view(), self.weights.w.view(), self.weights.bias.view(), ob.view_mut());
            },
        );
        if let Some(lengths) = &opts.lengths {
            for (b, &n) in lengths.iter().enumerate() {
                out.slice_mut(s![b, .., n..]).fill(T::zero());
            }
        }
        if let Some((b, i, t)) = crate::nn::simd::first_non_finite(&out.view()) {
            return Err(Error::numerical(
                "S4 layer forward (conv mode)",
                format!("the output y[{b}, {i}, {t}] is not finite (input row {b}): the input or the weights are too large for the precision"),
            ));
        }
        Ok(ForwardOutput { y: out, state })
    }

    /// The layer with its projection weights (C or C̃, D, the output linear) rounded to a 16-bit
    /// format, for mixed-precision inference. Λ, P, B and Δ, which set the recurrent dynamics Ā
    /// and B̄, stay f32: decay rates near 1 (the long-memory modes) do not survive 16 bits
    /// (0.999 rounds to 1.0 in bf16). The state and all accumulations stay f32 / complex64.
    ///
    /// # Errors
    /// A weight that overflows the format (|x| > 65504 in f16).
    pub fn with_half_weights(&self, p: crate::scalar::HalfPrecision) -> Result<S4Layer<T>> {
        let r = |x: &T| T::of(p.round(x.as_f64() as f32) as f64);
        let mut w = self.weights.clone();
        w.c = w.c.map(|z| Complex::new(r(&z.re), r(&z.im)));
        w.d = w.d.map(r);
        w.w = w.w.map(r);
        w.bias = w.bias.map(r);
        if !w_all_finite(&w) || w.d.iter().any(|x| !x.is_finite()) {
            return Err(Error::invalid("weights", format!("{p:?}"), "values within the 16-bit format's range"));
        }
        Ok(S4Layer { config: self.config.clone(), weights: w })
    }

    /// The recurrent form of this layer (discretized once; see [`Recurrent`]).
    ///
    /// # Errors
    /// A bidirectional layer (no recurrence), or a singular C̃ recovery.
    pub fn recurrent(&self) -> Result<Recurrent<T>> {
        Recurrent::new(self)
    }
}

/// Inverted dropout on one sequence's (F, L) features: each entry is zeroed with probability p and
/// the others scaled by 1/(1 − p), from a stream seeded by (seed, sequence index).
pub(crate) fn dropout_in_place<T: Real>(mut x: ndarray::ArrayViewMut2<T>, p: f64, seed: u64, index: usize) {
    use rand::RngExt;
    let mut rng = rand_pcg::Pcg64::seed_from_u64(seed ^ (index as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15));
    let scale = T::of(1.0 / (1.0 - p));
    x.iter_mut().for_each(|v| *v = if rng.random::<f64>() < p { T::zero() } else { *v * scale });
}

fn w_all_finite<T: Real>(w: &Weights<T>) -> bool {
    let f = |x: &T| x.is_finite();
    let fc = |z: &Complex<T>| z.re.is_finite() && z.im.is_finite();
    w.inv_dt.iter().all(f)
        && w.a_real.iter().all(f)
        && w.a_imag.iter().all(f)
        && w.b.iter().all(fc)
        && w.p.as_ref().is_none_or(|p| p.iter().all(fc))
        && w.c.iter().all(fc)
        && w.w.iter().all(f)
        && w.bias.iter().all(f)
}

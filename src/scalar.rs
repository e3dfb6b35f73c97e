//! The floating-point types the sequence computations run in.
//!
//! HiPPO and DPLR construction always run in `f64` (they are numerically sensitive, as in the official
//! code); kernels and convolutions are generic over [`Real`], which is implemented for `f32` (the
//! default for layers) and `f64` (for references and gradient checks). [`HalfPrecision`] is a
//! storage format for weights only (bf16 or f16); no computation runs in 16 bits.
//!
//! # Example
//!
//! ```
//! use num_complex::Complex;
//! use s4::scalar::{cplx, HalfPrecision, Real};
//!
//! // code generic over the precision: constants go through `Real::of`
//! fn rms<T: Real>(x: &[T]) -> T {
//!     (x.iter().map(|&v| v * v).sum::<T>() / T::of(x.len() as f64)).sqrt()
//! }
//! assert_eq!(rms(&[3.0f64, -3.0]), 3.0);
//! assert_eq!(rms(&[3.0f32, -3.0]).as_f64(), 3.0);
//! assert!((0.5f64.erf() - 0.5204998778130465).abs() < 1e-15);
//! assert_eq!(cplx::<f32>(Complex::new(0.5, -2.0)), Complex::new(0.5f32, -2.0));
//!
//! // 16-bit weights: bf16 keeps 8 significant bits, f16 11
//! let bf16: HalfPrecision = "bf16".parse()?;
//! assert_eq!(bf16.round(0.1), 0.10009765625); // 205/128 · 2⁻⁴
//! assert_eq!(bf16.round(1.0 + 2f32.powi(-9)), 1.0); // below half an ulp (2⁻⁸)
//! assert_eq!(HalfPrecision::F16.round(1.0 + 2f32.powi(-9)), 1.0 + 2f32.powi(-9));
//! assert_eq!(bf16.to_le_bytes(1.0), [0x80, 0x3F]); // 0x3F80
//! assert_eq!(HalfPrecision::F16.to_le_bytes(1.0), [0x00, 0x3C]); // 0x3C00
//! assert_eq!("f8".parse::<HalfPrecision>().unwrap_err().to_string(),
//!            "invalid weight precision = f8: expected bf16 or f16");
//! # Ok::<(), s4::Error>(())
//! ```

use num_complex::Complex;

/// A real floating-point type usable by the kernels and the FFT convolution: `f32` or `f64`.
pub trait Real:
    rustfft::FftNum
    + num_traits::Float
    + num_traits::FloatConst
    + num_traits::NumAssign
    + ndarray::ScalarOperand
    + ndarray::LinalgScalar
    + std::iter::Sum
    + std::fmt::Display
    + Default
    + Send
    + Sync
    + 'static
{
    /// Converts from `f64` (rounding for `f32`).
    fn of(x: f64) -> Self;
    /// Converts to `f64` (exact).
    fn as_f64(self) -> f64;
    /// The error function, in this precision (libm's `erff` / `erf`).
    fn erf(self) -> Self;
}

impl Real for f32 {
    fn of(x: f64) -> Self {
        x as f32
    }
    fn as_f64(self) -> f64 {
        self as f64
    }
    fn erf(self) -> Self {
        libm::erff(self)
    }
}

impl Real for f64 {
    fn of(x: f64) -> Self {
        x
    }
    fn as_f64(self) -> f64 {
        self
    }
    fn erf(self) -> Self {
        libm::erf(self)
    }
}

/// Converts a complex `f64` number to `Complex<T>`.
pub fn cplx<T: Real>(z: Complex<f64>) -> Complex<T> {
    Complex::new(T::of(z.re), T::of(z.im))
}

/// A 16-bit storage format for weights (mixed-precision inference): the weights take 16-bit
/// values, while the recurrent state, Ā, B̄ and every accumulation stay f32 / complex64.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
#[cfg_attr(feature = "cli", derive(clap::ValueEnum))]
pub enum HalfPrecision {
    /// bfloat16: f32's range, 8 significant bits (ε = 2⁻⁷).
    Bf16,
    /// IEEE binary16: 11 significant bits (ε = 2⁻¹⁰), range ±65504.
    F16,
}

impl HalfPrecision {
    /// Rounds x to the nearest value of this format (ties to even), back as f32. Values too large
    /// for the format become ±∞ (in f16, |x| ≥ 65520; the largest finite value is 65504).
    pub fn round(self, x: f32) -> f32 {
        match self {
            HalfPrecision::Bf16 => half::bf16::from_f32(x).to_f32(),
            HalfPrecision::F16 => half::f16::from_f32(x).to_f32(),
        }
    }

    /// The name the command line and JSON use (`bf16`, `f16`).
    pub fn name(self) -> &'static str {
        match self {
            HalfPrecision::Bf16 => "bf16",
            HalfPrecision::F16 => "f16",
        }
    }

    /// The 16-bit little-endian encoding of x.
    pub fn to_le_bytes(self, x: f32) -> [u8; 2] {
        match self {
            HalfPrecision::Bf16 => half::bf16::from_f32(x).to_le_bytes(),
            HalfPrecision::F16 => half::f16::from_f32(x).to_le_bytes(),
        }
    }
}

/// The arithmetic of the decoding products (PyTorch's `torch.set_float32_matmul_precision`, of
/// whose settings these are two): `highest` multiplies f32 activations by the weights (widened
/// exactly from 16-bit storage), `medium` rounds the activations and the weights to bf16 and sums
/// the exact products in f32, two at a time (x₂ᵢ₊₁·w₂ᵢ₊₁ first, then x₂ᵢ·w₂ᵢ: the order of the
/// AVX512-BF16 instruction `vdpbf16ps`, which does 32 multiply–adds where `vfmadd231ps` does 16).
/// `medium` is lossy against `highest`: the activations keep 8 significant bits (ε = 2⁻⁸ relative
/// rounding error per product).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
#[cfg_attr(feature = "cli", derive(clap::ValueEnum))]
pub enum MatmulPrecision {
    /// f32 activations times the weights as stored (exact widening), f32 sums.
    #[default]
    Highest,
    /// bf16 activations times bf16 weights, f32 sums of pairs of exact products.
    Medium,
}

impl MatmulPrecision {
    /// The name the command line and JSON use (`highest`, `medium`).
    pub fn name(self) -> &'static str {
        match self {
            MatmulPrecision::Highest => "highest",
            MatmulPrecision::Medium => "medium",
        }
    }
}

impl std::str::FromStr for MatmulPrecision {
    /// [`Error::InvalidArgument`](crate::Error::InvalidArgument) for anything but `highest` or
    /// `medium` (PyTorch's names; its `high`, tf32 products, has no CPU counterpart here).
    type Err = crate::Error;
    fn from_str(s: &str) -> crate::Result<Self> {
        [MatmulPrecision::Highest, MatmulPrecision::Medium]
            .into_iter()
            .find(|p| p.name() == s)
            .ok_or_else(|| crate::Error::invalid("matmul precision", s, "highest or medium"))
    }
}

impl std::str::FromStr for HalfPrecision {
    /// [`Error::InvalidArgument`](crate::Error::InvalidArgument) for anything but `bf16` or `f16`.
    type Err = crate::Error;
    fn from_str(s: &str) -> crate::Result<Self> {
        match s {
            "bf16" => Ok(HalfPrecision::Bf16),
            "f16" => Ok(HalfPrecision::F16),
            _ => Err(crate::Error::invalid("weight precision", s, "bf16 or f16")),
        }
    }
}

//! The floating-point types the sequence computations run in.
//!
//! HiPPO and DPLR construction always run in `f64` (they are numerically sensitive, as in the official
//! code); kernels and convolutions are generic over [`Real`], which is implemented for `f32` (the
//! default for layers) and `f64` (for references and gradient checks).

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
pub enum HalfPrecision {
    /// bfloat16: f32's range, 8 significant bits (ε = 2⁻⁷).
    Bf16,
    /// IEEE binary16: 11 significant bits (ε = 2⁻¹⁰), range ±65504.
    F16,
}

impl HalfPrecision {
    /// Rounds x to the nearest value of this format (ties to even), back as f32.
    pub fn round(self, x: f32) -> f32 {
        match self {
            HalfPrecision::Bf16 => half::bf16::from_f32(x).to_f32(),
            HalfPrecision::F16 => half::f16::from_f32(x).to_f32(),
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

impl std::str::FromStr for HalfPrecision {
    type Err = crate::Error;
    fn from_str(s: &str) -> crate::Result<Self> {
        match s {
            "bf16" => Ok(HalfPrecision::Bf16),
            "f16" => Ok(HalfPrecision::F16),
            _ => Err(crate::Error::invalid("weight precision", s, "bf16 or f16")),
        }
    }
}

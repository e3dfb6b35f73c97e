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

//! Vector loops compiled three times and picked at run time: for AVX-512F, for AVX2 + FMA and
//! for the baseline target (the `simd_dispatch!` macro). The crate is built for generic x86-64 (SSE2),
//! where the loops would run at a quarter of the width and without fused multiply–adds; `dot` and
//! `axpy` here are the building blocks of the [linear](super::linear) and attention kernels.
//!
//! The level a kernel runs at is [`SimdLevel::current`]: the widest the CPU has, capped by the
//! `S4_SIMD` environment variable (`avx512`, `avx2` or `baseline`, read once) and by
//! [`with_simd_level`] on the calling thread. The caps let every path be tested (and benchmarked)
//! on a host that has the widest one.
//!
//! ```
//! use s4::nn::simd::{with_simd_level, SimdLevel};
//!
//! let widest = SimdLevel::detected();
//! assert!(SimdLevel::available().contains(&widest));
//! with_simd_level(SimdLevel::Baseline, || assert_eq!(SimdLevel::current(), SimdLevel::Baseline));
//! ```

use crate::error::{Error, Result};
use crate::scalar::Real;
use std::cell::Cell;
use std::sync::OnceLock;

/// The instruction sets the dispatched kernels are compiled for, narrowest first.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum SimdLevel {
    /// The build target's baseline (SSE2 on x86-64): no fused multiply–add.
    Baseline,
    /// AVX2 with FMA (and F16C, to widen 16-bit weights): 16 registers of 8 f32.
    Avx2Fma,
    /// AVX-512F: 32 registers of 16 f32.
    Avx512,
}

/// The environment variable that caps the level for the whole process.
pub const SIMD_ENV: &str = "S4_SIMD";

thread_local! {
    static THREAD_CAP: Cell<SimdLevel> = const { Cell::new(SimdLevel::Avx512) };
}

impl SimdLevel {
    /// The widest level this CPU supports.
    pub fn detected() -> SimdLevel {
        #[cfg(target_arch = "x86_64")]
        {
            if std::arch::is_x86_feature_detected!("avx512f") {
                return SimdLevel::Avx512;
            }
            if std::arch::is_x86_feature_detected!("avx2")
                && std::arch::is_x86_feature_detected!("fma")
                && std::arch::is_x86_feature_detected!("f16c")
            {
                return SimdLevel::Avx2Fma;
            }
        }
        SimdLevel::Baseline
    }

    /// Every level this CPU can run, narrowest first.
    pub fn available() -> Vec<SimdLevel> {
        [SimdLevel::Baseline, SimdLevel::Avx2Fma, SimdLevel::Avx512]
            .into_iter()
            .filter(|&l| l <= Self::detected())
            .collect()
    }

    /// The cap set by [`SIMD_ENV`], if any.
    ///
    /// # Errors
    /// A value other than `avx512`, `avx2` or `baseline` (case-insensitive).
    pub fn from_env() -> Result<Option<SimdLevel>> {
        match std::env::var(SIMD_ENV) {
            Ok(v) => v.parse().map(Some),
            Err(_) => Ok(None),
        }
    }

    /// The level kernels run at on this thread: [`detected`](Self::detected), capped by
    /// [`SIMD_ENV`] (an invalid value caps nothing; the command line refuses it) and by
    /// [`with_simd_level`].
    pub fn current() -> SimdLevel {
        static PROCESS: OnceLock<SimdLevel> = OnceLock::new();
        let process = *PROCESS.get_or_init(|| {
            let detected = Self::detected();
            Self::from_env().ok().flatten().map_or(detected, |cap| cap.min(detected))
        });
        process.min(THREAD_CAP.with(Cell::get))
    }

    /// The name `S4_SIMD` accepts.
    pub fn name(self) -> &'static str {
        match self {
            SimdLevel::Baseline => "baseline",
            SimdLevel::Avx2Fma => "avx2",
            SimdLevel::Avx512 => "avx512",
        }
    }
}

impl std::fmt::Display for SimdLevel {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

impl std::str::FromStr for SimdLevel {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self> {
        match s.to_ascii_lowercase().as_str() {
            "avx512" => Ok(SimdLevel::Avx512),
            "avx2" => Ok(SimdLevel::Avx2Fma),
            "baseline" => Ok(SimdLevel::Baseline),
            _ => Err(Error::invalid(SIMD_ENV, s, "avx512, avx2 or baseline")),
        }
    }
}

/// Runs `f` with the kernels of the calling thread capped at `level` (work that `f` sends to other
/// threads is not capped). For tests and benchmarks of the narrower paths.
pub fn with_simd_level<R>(level: SimdLevel, f: impl FnOnce() -> R) -> R {
    struct Restore(SimdLevel);
    impl Drop for Restore {
        fn drop(&mut self) {
            THREAD_CAP.with(|c| c.set(self.0));
        }
    }
    let _restore = Restore(THREAD_CAP.with(|c| c.replace(level)));
    f()
}

/// Defines `pub(crate) fn $name<T: Real>(args)` that calls `$body::<T, true>(args)` compiled with
/// AVX-512F or with AVX2 + FMA when [`SimdLevel::current`] allows them, and
/// `$body::<T, false>(args)` (no fused multiply–add) otherwise. `$body` must be
/// `#[inline(always)]` so that it is compiled with the caller's target features.
macro_rules! simd_dispatch {
    ($(#[$meta:meta])* fn $name:ident($($arg:ident: $ty:ty),* $(,)?) -> $ret:ty = $body:ident) => {
        $(#[$meta])*
        pub(crate) fn $name<T: Real>($($arg: $ty),*) -> $ret {
            #[cfg(target_arch = "x86_64")]
            {
                #[target_feature(enable = "avx512f")]
                fn avx512<T: Real>($($arg: $ty),*) -> $ret {
                    $body::<T, true>($($arg),*)
                }
                #[target_feature(enable = "avx2,fma")]
                fn avx2_fma<T: Real>($($arg: $ty),*) -> $ret {
                    $body::<T, true>($($arg),*)
                }
                match $crate::nn::simd::SimdLevel::current() {
                    // SAFETY: `current` never exceeds what the CPU supports.
                    $crate::nn::simd::SimdLevel::Avx512 => return unsafe { avx512::<T>($($arg),*) },
                    // SAFETY: as above.
                    $crate::nn::simd::SimdLevel::Avx2Fma => return unsafe { avx2_fma::<T>($($arg),*) },
                    $crate::nn::simd::SimdLevel::Baseline => {}
                }
            }
            $body::<T, false>($($arg),*)
        }
    };
}
pub(crate) use simd_dispatch;

/// a·b + c, fused when `FMA` (only instantiated where the instruction exists).
#[inline(always)]
pub(crate) fn madd<T: Real, const FMA: bool>(a: T, b: T, c: T) -> T {
    if FMA {
        a.mul_add(b, c)
    } else {
        a * b + c
    }
}

/// The total of 8 partial sums, pairwise: ((a₀ + a₄) + (a₁ + a₅)) + ((a₂ + a₆) + (a₃ + a₇)).
#[inline(always)]
pub(crate) fn total8<T: Real>(acc: [T; 8]) -> T {
    ((acc[0] + acc[4]) + (acc[1] + acc[5])) + ((acc[2] + acc[6]) + (acc[3] + acc[7]))
}

/// Σ x with 8 partial sums (vectorizable, where one running sum is a chain of dependent adds);
/// the elements past the last multiple of 8 are summed in order and added last.
#[inline(always)]
pub(crate) fn sum_body<T: Real>(x: &[T]) -> T {
    let mut acc = [T::zero(); 8];
    let (chunks, rest) = x.as_chunks::<8>();
    for c in chunks {
        for l in 0..8 {
            acc[l] += c[l];
        }
    }
    total8(acc) + rest.iter().fold(T::zero(), |a, &b| a + b)
}

/// The largest value of `x` (−∞ if empty), NaN ignored, with 8 independent running maxima
/// (vectorizable, where one running maximum is a chain of dependent comparisons).
#[inline(always)]
pub(crate) fn max_body<T: Real>(x: &[T]) -> T {
    let mut acc = [T::neg_infinity(); 8];
    let (chunks, rest) = x.as_chunks::<8>();
    for c in chunks {
        for l in 0..8 {
            acc[l] = if c[l] > acc[l] { c[l] } else { acc[l] };
        }
    }
    acc.iter().chain(rest).fold(T::neg_infinity(), |m, &v| if v > m { v } else { m })
}

/// Σ a_i b_i over the common length, with 8 independent partial sums (vectorizable).
#[inline(always)]
pub(crate) fn dot_body<T: Real, const FMA: bool>(a: &[T], b: &[T]) -> T {
    let n = a.len().min(b.len());
    let (a, b) = (&a[..n], &b[..n]);
    let mut acc = [T::zero(); 8];
    // arrays of 8, not slices: the lane count is a constant and the loop below a vector loop
    let ((ca, ra), (cb, rb)) = (a.as_chunks::<8>(), b.as_chunks::<8>());
    for (x, y) in ca.iter().zip(cb) {
        for k in 0..8 {
            acc[k] = madd::<T, FMA>(x[k], y[k], acc[k]);
        }
    }
    let mut s = total8(acc);
    for (x, y) in ra.iter().zip(rb) {
        s = madd::<T, FMA>(*x, *y, s);
    }
    s
}

/// y += a·x elementwise.
#[inline(always)]
pub(crate) fn axpy_body<T: Real, const FMA: bool>(y: &mut [T], a: T, x: &[T]) {
    for (yi, &xi) in y.iter_mut().zip(x) {
        *yi = madd::<T, FMA>(a, xi, *yi);
    }
}

/// Σ a_i b_i over the common length (baseline target; the hot loops use [`dot_body`] inside their
/// dispatched kernels).
#[inline]
pub(crate) fn dot<T: Real>(a: &[T], b: &[T]) -> T {
    dot_body::<T, false>(a, b)
}

/// y += a·x elementwise (baseline target).
#[inline]
pub(crate) fn axpy<T: Real>(y: &mut [T], a: T, x: &[T]) {
    axpy_body::<T, false>(y, a, x);
}

/// Whether every value is finite: Σ 0·x is 0 exactly then (NaN otherwise), over 32 lanes
/// (four vectors of independent sums, so the additions' latency does not bound the pass).
#[inline(always)]
fn all_finite_body<T: Real, const FMA: bool>(xs: &[T]) -> bool {
    let mut acc = [T::zero(); 32];
    let (chunks, tail) = xs.as_chunks::<32>();
    for c in chunks {
        for k in 0..32 {
            acc[k] += c[k] * T::zero();
        }
    }
    acc.iter().chain(tail).all(|x| x.is_finite())
}

simd_dispatch! {
    /// Whether every value of `xs` is finite (a vectorized pass; find the first bad index on the
    /// error path only).
    fn all_finite(xs: &[T]) -> bool = all_finite_body
}

/// The index of the first non-finite entry of `a` (in logical order), if any: one vectorized
/// [`all_finite`] pass when `a` is contiguous, the indexed search only when something is found.
pub(crate) fn first_non_finite<T: Real, D: ndarray::Dimension>(a: &ndarray::ArrayView<T, D>) -> Option<D::Pattern> {
    if a.as_slice().is_some_and(all_finite) {
        return None;
    }
    a.indexed_iter().find(|(_, x)| !x.is_finite()).map(|(i, _)| i)
}

/// `x` as `&[f32]` when T is f32.
pub(crate) fn as_f32<T: Real>(x: &[T]) -> Option<&[f32]> {
    // SAFETY: T and f32 are the same type (checked by TypeId), so the layout is identical.
    (std::any::TypeId::of::<T>() == std::any::TypeId::of::<f32>())
        .then(|| unsafe { std::slice::from_raw_parts(x.as_ptr().cast::<f32>(), x.len()) })
}

/// `x` as `&mut [f32]` when T is f32.
pub(crate) fn as_f32_mut<T: Real>(x: &mut [T]) -> Option<&mut [f32]> {
    if std::any::TypeId::of::<T>() == std::any::TypeId::of::<f32>() {
        // SAFETY: T and f32 are the same type (checked by TypeId), so the layout is identical.
        Some(unsafe { std::slice::from_raw_parts_mut(x.as_mut_ptr().cast::<f32>(), x.len()) })
    } else {
        None
    }
}

/// e^x in f32 for vector loops: x = n·ln 2 + r with |r| ≤ ½ln 2 (Cody–Waite split of ln 2), e^r by
/// its degree-7 Taylor polynomial (truncation ≤ 4e-9 relative), 2^n by the exponent bits; x is
/// clamped to [−87, 88] (the normal range), so e^x never overflows to ∞ or flushes to 0.
/// Relative error ≤ 2e-7 (tested against `f64::exp`). NaN stays NaN.
#[inline(always)]
pub(crate) fn exp_f32(x: f32) -> f32 {
    let x = if x > 88.0 { 88.0 } else { x };
    let x = if x < -87.0 { -87.0 } else { x };
    // round to nearest by the 1.5·2^23 trick (no rounding instruction on the baseline target)
    const SHIFT: f32 = 12_582_912.0;
    let shifted = x * std::f32::consts::LOG2_E + SHIFT;
    let n = shifted - SHIFT;
    let r = (x - n * 0.693_145_75) - n * 1.428_606_8e-6;
    let mut p = 1.0 / 5040.0;
    for c in [1.0 / 720.0, 1.0 / 120.0, 1.0 / 24.0, 1.0 / 6.0, 0.5, 1.0, 1.0] {
        p = p * r + c;
    }
    // the low bits of `shifted` hold n (as 0x4B40_0000 + n): 2^n from integer operations only
    // (a float-to-int cast would not vectorize)
    let scale = f32::from_bits(shifted.to_bits().wrapping_sub(0x4B40_0000).wrapping_add(127) << 23);
    if x.is_nan() {
        x
    } else {
        p * scale
    }
}

/// erf(x) in f32 for vector loops: x·P(x²)/Q(x²) on [−4, 4] and ±1 beyond (the rational
/// approximation of Eigen's `generic_fast_erf_float`); |error| ≤ 5e-7 (tested against libm's
/// `erf` in f64). NaN stays NaN.
#[inline(always)]
pub(crate) fn erf_f32(x: f32) -> f32 {
    let x = if x > 4.0 { 4.0 } else { x };
    let x = if x < -4.0 { -4.0 } else { x };
    let x2 = x * x;
    let mut p = -2.726_142_3e-10;
    for c in [2.770_681_4e-8, -2.101_024e-6, -5.692_506_4e-5, -7.349_906e-4, -2.954_600_1e-3, -1.609_603_3e-2] {
        p = p * x2 + c;
    }
    let mut q = -1.456_607_2e-5;
    for c in [-2.133_740_6e-4, -1.682_827e-3, -7.373_329e-3, -1.426_474e-2] {
        q = q * x2 + c;
    }
    x * p / q
}

#[cfg(test)]
mod tests {
    use super::*;

    /// exp_f32 and erf_f32 against f64 references on a dense grid (and past the clamps), NaN kept.
    #[test]
    fn vector_exp_and_erf_match_f64() {
        let (mut worst_exp, mut worst_erf) = (0.0f64, 0.0f64);
        for i in -200_000..=200_000 {
            let x = i as f32 * 4.4e-4; // [-88, 88]
            let e = exp_f32(x) as f64;
            let exact = (x as f64).exp();
            if (-87.0..=88.0).contains(&x) {
                worst_exp = worst_exp.max((e - exact).abs() / exact);
            }
            let y = x / 11.0; // [-8, 8]
            worst_erf = worst_erf.max((erf_f32(y) as f64 - libm::erf(y as f64)).abs());
        }
        assert!(worst_exp < 2e-7, "exp relative error {worst_exp}");
        assert!(worst_erf < 5e-7, "erf absolute error {worst_erf}");
        assert!(exp_f32(f32::NAN).is_nan() && erf_f32(f32::NAN).is_nan());
        assert!(exp_f32(1000.0).is_finite() && exp_f32(-1000.0) > 0.0);
        assert!((erf_f32(100.0) - 1.0).abs() < 2e-7 && (erf_f32(-100.0) + 1.0).abs() < 2e-7);
    }

    /// The slice activations at every level: f32 within 1e-6 of the exact f64 GELU and GLU, f64
    /// exactly the scalar functions.
    #[test]
    fn slice_activations_at_every_level() {
        let xs: Vec<f64> = (-4000..=4000).map(|i| i as f64 * 2.5e-3).collect();
        for level in SimdLevel::available() {
            with_simd_level(level, || {
                let mut g32: Vec<f32> = xs.iter().map(|&x| x as f32).collect();
                crate::nn::gelu_in_place(&mut g32);
                let mut g64 = xs.clone();
                crate::nn::gelu_in_place(&mut g64);
                let ones32 = vec![1.0f32; xs.len()];
                let gate32: Vec<f32> = xs.iter().map(|&x| x as f32).collect();
                let mut s32 = vec![0.0f32; xs.len()];
                crate::nn::glu_in_place(&ones32, &gate32, &mut s32);
                for (i, &x) in xs.iter().enumerate() {
                    let exact = crate::nn::gelu(x as f32 as f64);
                    assert!((g32[i] as f64 - exact).abs() < 1e-6, "{level}: gelu({x})");
                    assert_eq!(g64[i], crate::nn::gelu(x), "{level}: f64 gelu({x})");
                    let sig = crate::nn::sigmoid(x as f32 as f64);
                    assert!((s32[i] as f64 - sig).abs() < 1e-6 * sig.max(1e-3), "{level}: sigmoid({x})");
                }
            });
        }
    }
}

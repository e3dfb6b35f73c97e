//! Vector loops compiled three times and picked at run time: for AVX-512F, for AVX2 + FMA and
//! for the baseline target (the `simd_dispatch!` macro). The crate is built for generic x86-64 (SSE2),
//! where the loops would run at a quarter of the width and without fused multiply–adds; `dot` and
//! `axpy` here are the building blocks of the [linear](super::linear) and attention kernels.

use crate::scalar::Real;

/// Defines `pub(crate) fn $name<T: Real>(args)` that calls `$body::<T, true>(args)` compiled with
/// AVX-512F or with AVX2 + FMA when the CPU has them (checked at run time, cached by std), and
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
                if std::arch::is_x86_feature_detected!("avx512f") {
                    // SAFETY: the CPU supports AVX-512F (checked just above).
                    return unsafe { avx512::<T>($($arg),*) };
                }
                if std::arch::is_x86_feature_detected!("avx2") && std::arch::is_x86_feature_detected!("fma") {
                    // SAFETY: the CPU supports AVX2 and FMA (checked just above).
                    return unsafe { avx2_fma::<T>($($arg),*) };
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

/// Σ a_i b_i over the common length, with 8 independent partial sums (vectorizable).
#[inline(always)]
pub(crate) fn dot_body<T: Real, const FMA: bool>(a: &[T], b: &[T]) -> T {
    let n = a.len().min(b.len());
    let (a, b) = (&a[..n], &b[..n]);
    let mut acc = [T::zero(); 8];
    let (ca, cb) = (a.chunks_exact(8), b.chunks_exact(8));
    let (ra, rb) = (ca.remainder(), cb.remainder());
    for (x, y) in ca.zip(cb) {
        for k in 0..8 {
            acc[k] = madd::<T, FMA>(x[k], y[k], acc[k]);
        }
    }
    let mut s = ((acc[0] + acc[4]) + (acc[1] + acc[5])) + ((acc[2] + acc[6]) + (acc[3] + acc[7]));
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

//! Long convolutions by FFT: how an SSM layer applies its kernel to a whole sequence.
//!
//! # Layout
//! The crate uses **(B, H, L)** for sequences everywhere (batch, channel, time), the official S4
//! module's default (`transposed=True`) and PyTorch's `Conv1d` layout: each channel's signal and
//! kernel are contiguous, which is what the FFT wants. Kernels are (H, L_k).
//!
//! # Algorithm
//! Causal: y = irfft(rfft(u, n) · rfft(k, n))[..L] + D ⊙ u with n ≥ L + L_k − 1, so the circular
//! convolution of the zero-padded signals equals the linear one and nothing wraps around. n is the
//! smallest 2^a·3^b·5^c ≥ that bound (fast sizes for RustFFT). Kernel spectra are computed once
//! per call and shared by the batch; (batch, channel) pairs run in parallel.
//!
//! Bidirectional (the official `FFTConv` with `bidirectional=True`): one causal kernel k_fwd and one
//! anticausal kernel k_bwd, combined as pad(k_fwd, right L) + pad(flip(k_bwd), left L):
//! `y[t] = Σ_{s≥0} k_fwd[s]·u[t−s] + Σ_{s≥0} k_bwd[s]·u[t+1+s] + D·u[t]`. The backward kernel starts
//! one step in the future (the official code's documented, deliberate off-by-one), so `k_bwd[0]`
//! multiplies `u[t+1]`.
//!
//! [`FftConv`] owns a [`RealFftPlanner`] (the RustFFT planner pattern): plans are built once per
//! FFT size and reused by every later call.

mod direct;

pub use direct::{bidirectional_conv_direct, causal_conv_direct};

use crate::budget::Estimate;
use crate::error::{Error, Result};
use crate::nn::simd::{madd, simd_dispatch};
use crate::scalar::Real;
use ndarray::{Array2, Array3, ArrayView1, ArrayView2, ArrayView3, Axis};
use num_complex::Complex;
use rayon::prelude::*;
use realfft::{ComplexToReal, RealFftPlanner, RealToComplex};
use std::sync::Arc;

/// Sizes of a validated convolution.
pub(crate) struct Layout {
    pub batch: usize,
    pub channels: usize,
    pub len: usize,
    pub klen: usize,
}

/// Checks u (B, H, L), kernels (H, L_k) with the same L_k, and D (H,).
pub(crate) fn check_inputs<T: Real>(
    u: ArrayView3<T>,
    kernels: &[ArrayView2<T>],
    d: Option<ArrayView1<T>>,
) -> Result<Layout> {
    let (batch, channels, len) = u.dim();
    if batch == 0 || channels == 0 || len == 0 {
        return Err(Error::shape("input u", "(B, H, L) with B, H, L >= 1", u.shape()));
    }
    let klen = kernels[0].ncols();
    for (i, k) in kernels.iter().enumerate() {
        let name = if kernels.len() == 1 {
            "kernel K".to_string()
        } else {
            ["forward kernel", "backward kernel"][i].to_string()
        };
        if k.nrows() != channels || k.ncols() == 0 || k.ncols() != klen {
            return Err(Error::shape(name, format!("(H, L_k) = ({channels}, {klen}) with L_k >= 1"), k.shape()));
        }
    }
    if let Some(d) = d
        && d.len() != channels
    {
        return Err(Error::shape("skip D", format!("(H,) = ({channels},)"), d.shape()));
    }
    if crate::nn::simd::first_non_finite(&u).is_some() {
        return Err(Error::invalid("input u", "non-finite entries", "finite values"));
    }
    if kernels.iter().any(|k| k.iter().any(|x| !x.is_finite())) {
        return Err(Error::invalid("kernel", "non-finite entries", "finite values"));
    }
    if d.is_some_and(|d| d.iter().any(|x| !x.is_finite())) {
        return Err(Error::invalid("skip D", "non-finite entries", "finite values"));
    }
    Ok(Layout { batch, channels, len, klen })
}

/// The smallest n ≥ `min` of the form 2^a·3^b·5^c with a ≥ 1 (even, fast for real FFTs).
pub fn fast_len(min: usize) -> usize {
    let mut best = usize::MAX;
    let mut p2 = 2usize;
    loop {
        let mut p3 = p2;
        loop {
            let mut p5 = p3;
            while p5 < min {
                p5 *= 5;
            }
            best = best.min(p5);
            if p3 >= min {
                break;
            }
            p3 *= 3;
        }
        if p2 >= min {
            break;
        }
        p2 *= 2;
    }
    best.max(2)
}

/// FFT convolution with cached plans. Reuse one value across calls.
///
/// # Example
/// ```
/// use ndarray::{Array2, Array3};
/// use s4::conv::{causal_conv_direct, FftConv};
/// let u = Array3::from_shape_fn((2, 3, 100), |(b, h, t)| ((b + h * 7 + t * 3) % 11) as f64 - 5.0);
/// let k = Array2::from_shape_fn((3, 100), |(h, t)| (-(t as f64) / (10.0 + h as f64)).exp());
/// let mut conv = FftConv::new();
/// let y = conv.causal(u.view(), k.view(), None)?;
/// let reference = causal_conv_direct(u.view(), k.view(), None)?;
/// assert!((&y - &reference).iter().all(|e| e.abs() < 1e-9));
/// # Ok::<(), s4::Error>(())
/// ```
pub struct FftConv<T: Real> {
    planner: RealFftPlanner<T>,
}

impl<T: Real> std::fmt::Debug for FftConv<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FftConv").finish_non_exhaustive()
    }
}

impl<T: Real> Default for FftConv<T> {
    fn default() -> Self {
        Self::new()
    }
}

impl<T: Real> FftConv<T> {
    /// A convolution engine with an empty plan cache.
    pub fn new() -> Self {
        FftConv { planner: RealFftPlanner::new() }
    }

    /// The forward and inverse real-FFT plans of size `n` (cached: the same `Arc`s on every call).
    pub fn plans(&mut self, n: usize) -> (Arc<dyn RealToComplex<T>>, Arc<dyn ComplexToReal<T>>) {
        (self.planner.plan_fft_forward(n), self.planner.plan_fft_inverse(n))
    }

    /// Causal convolution of u (B, H, L) with one kernel per channel k (H, L_k), plus D ⊙ u.
    ///
    /// Taps of k beyond L never touch the output and are ignored.
    ///
    /// # Errors
    /// Empty or mismatched shapes (k must have H rows, D length H), or non-finite input.
    pub fn causal(&mut self, u: ArrayView3<T>, k: ArrayView2<T>, d: Option<ArrayView1<T>>) -> Result<Array3<T>> {
        Ok(self.convolve(u, k, None, d, false)?.0)
    }

    /// [`causal`](Self::causal) (`k_bwd` `None`) or [`bidirectional`](Self::bidirectional), also
    /// returning the spectra of the zero-padded input, which the backward pass
    /// (`s4::train::grad::conv_backward`) would otherwise compute again (one of
    /// its three FFTs per sequence and channel; PyTorch's autograd keeps them the same way). They
    /// take (B, H, n/2 + 1) complex values, about twice the input's bytes.
    ///
    /// # Errors
    /// As [`causal`](Self::causal) and [`bidirectional`](Self::bidirectional).
    pub fn convolve_keeping_input_spectra(
        &mut self,
        u: ArrayView3<T>,
        k_fwd: ArrayView2<T>,
        k_bwd: Option<ArrayView2<T>>,
        d: Option<ArrayView1<T>>,
    ) -> Result<(Array3<T>, InputSpectra<T>)> {
        let (y, kept) = self.convolve(u, k_fwd, k_bwd, d, true)?;
        Ok((y, kept.expect("kept on request")))
    }

    /// Bidirectional convolution: causal k_fwd (H, L_k) and anticausal k_bwd (H, L_k), plus D ⊙ u;
    /// `y[t] = Σ_{s≥0} k_fwd[s]·u[t−s] + Σ_{s≥0} k_bwd[s]·u[t+1+s] + D·u[t]` (see the module docs).
    ///
    /// # Errors
    /// As [`causal`](Self::causal); both kernels must have the same shape.
    pub fn bidirectional(
        &mut self,
        u: ArrayView3<T>,
        k_fwd: ArrayView2<T>,
        k_bwd: ArrayView2<T>,
        d: Option<ArrayView1<T>>,
    ) -> Result<Array3<T>> {
        Ok(self.convolve(u, k_fwd, Some(k_bwd), d, false)?.0)
    }

    /// The one implementation behind the three above: causal without `k_bwd`, bidirectional with
    /// it; the input spectra kept if `keep`.
    fn convolve(
        &mut self,
        u: ArrayView3<T>,
        k_fwd: ArrayView2<T>,
        k_bwd: Option<ArrayView2<T>>,
        d: Option<ArrayView1<T>>,
        keep: bool,
    ) -> Result<(Array3<T>, Option<InputSpectra<T>>)> {
        let kernels: Vec<ArrayView2<T>> = std::iter::once(k_fwd).chain(k_bwd).collect();
        let lay = check_inputs(u, &kernels, d)?;
        let klen = lay.klen.min(lay.len);
        // bidirectional: u[t+1+s] for s < klen reaches t + klen, so n >= L + klen keeps every
        // wrap in the zero padding
        let n = if k_bwd.is_some() { fast_len(lay.len + klen) } else { fast_len(lay.len + klen - 1) };
        estimate::<T>(u.dim(), n, keep)?;
        let (fwd, inv) = self.plans(n);
        // the causal kernel at 0..klen; tap s of the backward kernel at lag −(s+1), index n−1−s
        let spectra = kernel_spectra(&fwd, lay.channels, n, |h, buf| {
            buf[..klen].copy_from_slice(&row(k_fwd, h)[..klen]);
            if let Some(kb) = k_bwd {
                let kb = row(kb, h);
                for s in 0..klen {
                    buf[n - 1 - s] = kb[s];
                }
            }
        });
        let (b, h, _) = u.dim();
        let mut kept = keep.then(|| Array3::from_elem((b, h, n / 2 + 1), Complex::new(T::zero(), T::zero())));
        let y = apply(u, &spectra, d, &fwd, &inv, kept.as_mut());
        Ok((y, kept.map(|spectra| InputSpectra { n, spectra })))
    }
}

/// The spectra of a convolution's zero-padded input rows, rfft(u[b, h] padded to n), (B, H, n/2 + 1):
/// what [`FftConv::convolve_keeping_input_spectra`] keeps for the backward pass.
#[derive(Clone, Debug)]
pub struct InputSpectra<T> {
    /// The FFT size n.
    pub n: usize,
    /// (B, H, n/2 + 1).
    pub spectra: Array3<Complex<T>>,
}

/// Checks the memory of a convolution of u (B, H, L) at FFT size n against the budget: the output,
/// the kernels' spectra (H, n/2 + 1), the kept input spectra (B, H, n/2 + 1) if `keep`, and per
/// thread a padded signal, its spectrum and scratch.
fn estimate<T: Real>((b, h, l): (usize, usize, usize), n: usize, keep: bool) -> Result<u64> {
    Estimate::new(format!("FFT convolution of (B, H, L) = ({b}, {h}, {l})"))
        .array::<T>(&[b, h, l])
        .array::<Complex<T>>(&[h, n / 2 + 1])
        .arrays::<Complex<T>>(usize::from(keep), &[b, h, n / 2 + 1])
        .arrays::<Complex<T>>(2 * rayon::current_num_threads(), &[n])
        .check()
}

fn row<T: Real>(k: ArrayView2<T>, h: usize) -> Vec<T> {
    k.row(h).to_vec()
}

/// rfft of each channel's padded kernel, (H, n/2+1), scaled by 1/n (the inverse FFT is unnormalized).
fn kernel_spectra<T: Real>(
    fwd: &Arc<dyn RealToComplex<T>>,
    channels: usize,
    n: usize,
    fill: impl Fn(usize, &mut [T]) + Sync,
) -> Array2<Complex<T>> {
    let nb = n / 2 + 1;
    let scale = T::of(1.0 / n as f64);
    let mut spectra = Array2::from_elem((channels, nb), Complex::new(T::zero(), T::zero()));
    spectra.axis_iter_mut(Axis(0)).into_par_iter().enumerate().for_each_init(
        || (fwd.make_input_vec(), fwd.make_scratch_vec()),
        |(buf, scratch), (h, mut out)| {
            buf.fill(T::zero());
            fill(h, buf);
            let out = out.as_slice_mut().expect("contiguous row");
            fwd.process_with_scratch(buf, out, scratch).expect("buffers come from the plan");
            out.iter_mut().for_each(|z| *z *= scale);
        },
    );
    spectra
}

/// y[b, h] = irfft(rfft(u[b, h], n) · spectra[h])[..L] + D[h] u[b, h], in parallel over (b, h);
/// rfft(u[b, h], n) copied to `keep` (B, H, n/2 + 1) if given.
fn apply<T: Real>(
    u: ArrayView3<T>,
    spectra: &Array2<Complex<T>>,
    d: Option<ArrayView1<T>>,
    fwd: &Arc<dyn RealToComplex<T>>,
    inv: &Arc<dyn ComplexToReal<T>>,
    keep: Option<&mut Array3<Complex<T>>>,
) -> Array3<T> {
    let (batch, channels, len) = u.dim();
    let mut y = Array3::<T>::zeros((batch, channels, len));
    let scratch_len = fwd.get_scratch_len().max(inv.get_scratch_len());
    // one task per (b, h) row of the flattened (B·H, L) views; buffers are reused per thread
    let mut y2 = y.view_mut().into_shape_with_order((batch * channels, len)).expect("fresh array is contiguous");
    let u_std = u.as_standard_layout();
    let u2 = u_std.view().into_shape_with_order((batch * channels, len)).expect("standard layout");
    let nb = fwd.len() / 2 + 1;
    let mut no_keep = Array2::from_elem((batch * channels, 0), Complex::new(T::zero(), T::zero()));
    let mut keep2 = match keep {
        Some(k) => k.view_mut().into_shape_with_order((batch * channels, nb)).expect("a fresh (B, H, n/2 + 1) array"),
        None => no_keep.view_mut(),
    };
    let rows = y2.axis_iter_mut(Axis(0)).into_par_iter().zip(keep2.axis_iter_mut(Axis(0)));
    rows.zip(u2.axis_iter(Axis(0))).enumerate().for_each_init(
        || (fwd.make_input_vec(), fwd.make_output_vec(), vec![Complex::new(T::zero(), T::zero()); scratch_len]),
        |(buf, spec, scratch), (row, ((mut out, mut kept), inp))| {
            let h = row % channels;
            buf[..len].copy_from_slice(inp.as_slice().expect("standard layout rows are contiguous"));
            buf[len..].fill(T::zero());
            fwd.process_with_scratch(buf, spec, scratch).expect("buffers come from the plan");
            if let Some(k) = kept.as_slice_mut().filter(|k| !k.is_empty()) {
                k.copy_from_slice(spec);
            }
            multiply_spectra(spec, spectra.row(h).as_slice().expect("a row of a fresh array"));
            // imaginary parts of DC and Nyquist are zero up to rounding; realfft wants them exactly zero
            spec[0].im = T::zero();
            if let Some(last) = spec.last_mut() {
                last.im = T::zero();
            }
            inv.process_with_scratch(spec, buf, scratch).expect("buffers come from the plan");
            let dh = d.map_or(T::zero(), |d| d[h]);
            for ((o, v), x) in out.iter_mut().zip(buf.iter()).zip(inp.iter()) {
                *o = *v + dh * *x;
            }
        },
    );
    y
}

/// s ← s·k elementwise (complex), over the common length.
#[inline(always)]
fn multiply_spectra_body<T: Real, const FMA: bool>(s: &mut [Complex<T>], k: &[Complex<T>]) {
    let n = s.len().min(k.len());
    let (s, k) = (&mut s[..n], &k[..n]);
    for j in 0..n {
        let (a, b, c, d) = (s[j].re, s[j].im, k[j].re, k[j].im);
        s[j] = Complex::new(madd::<T, FMA>(a, c, -b * d), madd::<T, FMA>(a, d, b * c));
    }
}

simd_dispatch! {
    /// [`multiply_spectra_body`] with the widest vectors the CPU has (`Complex`'s own `*=`
    /// compiled to 2-lane SSE code and was not always inlined).
    fn multiply_spectra(s: &mut [Complex<T>], k: &[Complex<T>]) -> () = multiply_spectra_body
}

/// The frequency bins of the FFT convolution's backward for one sequence and channel, given the
/// spectra g of the output gradient, u of the input and k of the kernel:
/// acc ← acc + g·conj(u) (the kernel's gradient, summed over the batch) and u ← g·conj(k) (the
/// input's gradient, in place).
#[inline(always)]
fn backward_bins_body<T: Real, const FMA: bool>(
    acc: &mut [Complex<T>],
    g: &[Complex<T>],
    u: &mut [Complex<T>],
    k: &[Complex<T>],
) {
    let n = acc.len().min(g.len()).min(u.len()).min(k.len());
    let (acc, g, u, k) = (&mut acc[..n], &g[..n], &mut u[..n], &k[..n]);
    let madd = madd::<T, FMA>;
    for j in 0..n {
        let (gr, gi, ur, ui, kr, ki) = (g[j].re, g[j].im, u[j].re, u[j].im, k[j].re, k[j].im);
        // g·conj(u) = (gr ur + gi ui) + i (gi ur − gr ui)
        acc[j] = Complex::new(acc[j].re + madd(gr, ur, gi * ui), acc[j].im + madd(gi, ur, -gr * ui));
        u[j] = Complex::new(madd(gr, kr, gi * ki), madd(gi, kr, -gr * ki));
    }
}

simd_dispatch! {
    /// [`backward_bins_body`] with the widest vectors the CPU has.
    fn backward_bins(acc: &mut [Complex<T>], g: &[Complex<T>], u: &mut [Complex<T>], k: &[Complex<T>]) -> () = backward_bins_body
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fast_len_is_smooth_and_minimal() {
        assert_eq!(fast_len(1), 2);
        assert_eq!(fast_len(7), 8);
        assert_eq!(fast_len(11), 12);
        assert_eq!(fast_len(2047), 2048);
        assert_eq!(fast_len(2049), 2160);
        for m in 1..500 {
            let n = fast_len(m);
            assert!(n >= m && n.is_multiple_of(2));
            let mut r = n;
            for p in [2, 3, 5] {
                while r.is_multiple_of(p) {
                    r /= p;
                }
            }
            assert_eq!(r, 1);
        }
    }

    #[test]
    fn plans_are_cached() {
        let mut conv = FftConv::<f32>::new();
        let (a, _) = conv.plans(96);
        let (b, _) = conv.plans(96);
        assert!(Arc::ptr_eq(&a, &b));
    }
}

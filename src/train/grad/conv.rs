//! Backward of the FFT convolution (causal and bidirectional), with respect to the input and the
//! kernel.
//!
//! Both forward modes are a circular convolution of length n ≥ L + L_k of the zero-padded input
//! with a combined kernel buffer κ (k_fwd at lags 0..L_k, and for bidirectional layers `k_bwd[s]` at
//! index n − 1 − s), keeping the first L outputs: y_t = Σ_m κ_{(t−m) mod n} u_m. Its adjoints are
//! circular correlations, computed with the same FFT size:
//!
//! - g_u_m = Σ_t g_t κ_{(t−m) mod n} = irfft(G · conj(K̂))_m,
//! - g_κ_s = Σ_{b,t} g_t u_{(t−s) mod n} = irfft(Σ_b G_b · conj(Û_b))_s,
//!
//! with G, Û, K̂ the spectra of the zero-padded g_y, u and κ. Channels run in parallel; the sum
//! over the batch runs in sequence order inside each channel.
//!
//! ```
//! use ndarray::{Array2, Array3};
//! use s4::train::grad::conv::conv_backward;
//! // the adjoint identity ⟨gy, conv(u)⟩ = ⟨g_u, u⟩ (the convolution is linear in u)
//! let u = Array3::from_shape_fn((1, 2, 7), |(_, h, l)| ((h * 7 + l) as f64 * 0.7).sin());
//! let k = Array2::from_shape_fn((2, 7), |(h, l)| (-(l as f64) / (2.0 + h as f64)).exp());
//! let gy = Array3::from_shape_fn((1, 2, 7), |(_, h, l)| ((h + 2 * l) as f64 * 0.3).cos());
//! let y = s4::conv::causal_conv_direct(u.view(), k.view(), None)?;
//! let g = conv_backward(u.view(), k.view(), None, gy.view(), None)?;
//! assert!(((&gy * &y).sum() - (&g.input * &u).sum()).abs() < 1e-10);
//! # Ok::<(), s4::Error>(())
//! ```

use crate::conv::{fast_len, InputSpectra};
use crate::error::{Error, Result};
use crate::scalar::Real;
use ndarray::{Array2, Array3, ArrayView2, ArrayView3, Axis};
use num_complex::Complex;
use rayon::prelude::*;
use realfft::RealFftPlanner;

/// Gradients of a convolution with respect to its input (B, H, L) and its kernels (H, L_k) each.
#[derive(Clone, Debug)]
pub struct ConvGrads<T> {
    /// (B, H, L).
    pub input: Array3<T>,
    /// (H, L_k), the causal kernel.
    pub k_fwd: Array2<T>,
    /// (H, L_k), the anticausal kernel (bidirectional only).
    pub k_bwd: Option<Array2<T>>,
}

/// Backward of `FftConv::causal` (without D) when `k_bwd` is `None`, of
/// `FftConv::bidirectional` otherwise. u (B, H, L), kernels (H, L_k), gy (B, H, L);
/// `input_spectra`, the forward's spectra of u
/// ([`FftConv::convolve_keeping_input_spectra`](crate::conv::FftConv::convolve_keeping_input_spectra)),
/// saves one FFT per sequence and channel (the result is bit-identical).
///
/// # Errors
/// Empty or mismatched shapes, or non-finite values; input spectra of another shape or FFT size.
pub fn conv_backward<T: Real>(
    u: ArrayView3<T>,
    k_fwd: ArrayView2<T>,
    k_bwd: Option<ArrayView2<T>>,
    gy: ArrayView3<T>,
    input_spectra: Option<&InputSpectra<T>>,
) -> Result<ConvGrads<T>> {
    let kernels: Vec<ArrayView2<T>> = std::iter::once(k_fwd).chain(k_bwd).collect();
    crate::conv::check_inputs(u, &kernels, None)?;
    if gy.dim() != u.dim() {
        return Err(Error::shape("output gradient", format!("{:?} (the input's shape)", u.shape()), gy.shape()));
    }
    let (batch, h, len) = u.dim();
    let klen = k_fwd.ncols().min(len);
    let n = if k_bwd.is_some() { fast_len(len + klen) } else { fast_len(len + klen - 1) };
    let mut planner = RealFftPlanner::<T>::new();
    let (fwd, inv) = (planner.plan_fft_forward(n), planner.plan_fft_inverse(n));
    let nb = n / 2 + 1;
    if let Some(sp) = input_spectra
        && (sp.n != n || sp.spectra.dim() != (batch, h, nb))
    {
        return Err(Error::invalid(
            "input spectra",
            format!("{:?} at FFT size {}", sp.spectra.shape(), sp.n),
            format!("(B, H, n/2 + 1) = ({batch}, {h}, {nb}) at FFT size n = {n}"),
        ));
    }
    let scale = T::of(1.0 / n as f64);
    let zero = Complex::new(T::zero(), T::zero());
    let per_channel: Vec<(Array2<T>, Vec<T>)> = (0..h)
        .into_par_iter()
        .map(|c| {
            let mut buf = fwd.make_input_vec();
            let mut scratch = fwd.make_scratch_vec();
            let mut iscratch = inv.make_scratch_vec();
            let mut kspec = fwd.make_output_vec();
            let mut gspec = fwd.make_output_vec();
            let mut uspec = fwd.make_output_vec();
            let mut acc = vec![zero; nb];
            let mut out = inv.make_output_vec();
            buf.fill(T::zero());
            for s in 0..klen {
                buf[s] = k_fwd[[c, s]];
            }
            if let Some(kb) = k_bwd {
                for s in 0..klen {
                    buf[n - 1 - s] = kb[[c, s]];
                }
            }
            fwd.process_with_scratch(&mut buf, &mut kspec, &mut scratch).expect("plan buffers");
            let mut gu = Array2::<T>::zeros((batch, len));
            // signal rows copied into the zero-padded FFT buffer (row slices where the layout allows)
            let load = |buf: &mut Vec<T>, row: ndarray::ArrayView1<T>| {
                buf.fill(T::zero());
                match row.as_slice() {
                    Some(r) => buf[..len].copy_from_slice(r),
                    None => buf.iter_mut().zip(row).for_each(|(d, &v)| *d = v),
                }
            };
            for b in 0..batch {
                load(&mut buf, gy.slice(ndarray::s![b, c, ..]));
                fwd.process_with_scratch(&mut buf, &mut gspec, &mut scratch).expect("plan buffers");
                match input_spectra {
                    Some(sp) => {
                        uspec.iter_mut().zip(sp.spectra.slice(ndarray::s![b, c, ..])).for_each(|(d, &z)| *d = z)
                    }
                    None => {
                        load(&mut buf, u.slice(ndarray::s![b, c, ..]));
                        fwd.process_with_scratch(&mut buf, &mut uspec, &mut scratch).expect("plan buffers");
                    }
                }
                crate::conv::backward_bins(&mut acc, &gspec, &mut uspec, &kspec);
                // the inverse real FFT ignores the imaginary parts of the DC and Nyquist bins, which
                // are exactly zero for the spectra of real signals
                uspec[0].im = T::zero();
                if n.is_multiple_of(2) {
                    uspec[nb - 1].im = T::zero();
                }
                inv.process_with_scratch(&mut uspec, &mut out, &mut iscratch).expect("plan buffers");
                for (g, &o) in gu.row_mut(b).iter_mut().zip(&out[..len]) {
                    *g = o * scale;
                }
            }
            acc[0].im = T::zero();
            if n.is_multiple_of(2) {
                acc[nb - 1].im = T::zero();
            }
            inv.process_with_scratch(&mut acc, &mut out, &mut iscratch).expect("plan buffers");
            (gu, out.iter().map(|&v| v * scale).collect())
        })
        .collect();
    let mut input = Array3::<T>::zeros((batch, h, len));
    let klen_full = k_fwd.ncols();
    let mut gk_fwd = Array2::<T>::zeros((h, klen_full));
    let mut gk_bwd = k_bwd.map(|_| Array2::<T>::zeros((h, klen_full)));
    for (c, (gu, gk)) in per_channel.into_iter().enumerate() {
        input.index_axis_mut(Axis(1), c).assign(&gu);
        for s in 0..klen {
            gk_fwd[[c, s]] = gk[s];
        }
        if let Some(g) = gk_bwd.as_mut() {
            for s in 0..klen {
                g[[c, s]] = gk[n - 1 - s];
            }
        }
    }
    Ok(ConvGrads { input, k_fwd: gk_fwd, k_bwd: gk_bwd })
}

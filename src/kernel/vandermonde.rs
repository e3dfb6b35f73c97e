//! The S4D convolution kernel of a diagonal SSM (Vandermonde product).
//!
//! Gu, Gupta, Goel, Ré, *On the Parameterization and Initialization of Diagonal State Space Models*
//! (NeurIPS 2022), and the official `SSMKernelDiag`: with Ā_j and B̄_j from
//! [`discretize_mode`] (ZOH: Ā = e^{Δλ}, B̄ = (e^{Δλ} − 1)/λ · B; bilinear:
//! Ā = (1 + Δλ/2)/(1 − Δλ/2), B̄ = Δ B/(1 − Δλ/2)),
//!
//! K_l = 2·Re Σ_j C_j B̄_j Ā_j^l,  l = 0..L−1,
//!
//! the product of the L × N/2 Vandermonde matrix [Ā_j^l] with the vector C ⊙ B̄. No C̃ is needed:
//! the kernel is the truncated sum itself.
//!
//! The Vandermonde matrix is never stored. Powers are produced in blocks of 64 taps: a table
//! Ā_j^m (m < 64) and one anchor C_j B̄_j Ā_j^{l₀} per block, both computed in f64 and rounded once,
//! so every tap is a single product of two rounded numbers (relative error ~ε of T, independent of l),
//! and the inner loop is a vectorizable multiply–add over the 64 taps. Modes that have decayed below
//! 1e-15 of the largest one are dropped, which keeps the arithmetic out of the (slow) subnormal range.

use super::check_finite;
use crate::budget::Estimate;
use crate::discretize::{discretize_mode, Discretization};
use crate::error::{check_len, Error, Result};
use crate::scalar::Real;
use crate::ssm::SsmParams;
use ndarray::{Array2, Axis};
use num_complex::Complex64;
use rayon::prelude::*;

const BLOCK: usize = 64;

/// Relative magnitude below which a power or a decayed mode is dropped (far below f32 and f64
/// output precision relative to the largest mode; keeps every product out of the subnormal range).
const CUTOFF: f64 = 1e-15;

/// The S4D kernel K (H, len) of diagonal parameters (no P) with discretization `method`.
///
/// # Errors
/// Invalid parameters, parameters with a P (use the DPLR kernel), `len == 0`, or an invalid GBT α.
///
/// # Example
/// ```
/// use s4::discretize::Discretization;
/// use s4::kernel::{diag_kernel, ssm_kernel_naive};
/// use s4::ssm::{KernelKind, SsmInitConfig};
/// let cfg = SsmInitConfig { kind: KernelKind::Diag, init: "diag-lin".parse()?, d_state: 8, channels: 2, ..Default::default() };
/// let params = cfg.draw()?;
/// let k = diag_kernel(&params, 50, Discretization::Zoh)?;
/// let reference = ssm_kernel_naive(&params, 50, Discretization::Zoh)?;
/// assert!((&k - &reference).iter().all(|d| d.abs() < 1e-10));
/// # Ok::<(), s4::Error>(())
/// ```
pub fn diag_kernel<T: Real>(params: &SsmParams<T>, len: usize, method: Discretization) -> Result<Array2<T>> {
    params.validate()?;
    check_len("kernel length L", len)?;
    let method = method.validate()?;
    if params.p.is_some() {
        return Err(Error::invalid("P", "present", "no low-rank factor for the diagonal (S4D) kernel"));
    }
    let (h, m) = params.lambda.dim();
    Estimate::new(format!("S4D kernel (H, L) = ({h}, {len})")).array::<T>(&[h, len]).check()?;
    let mut out = Array2::<T>::zeros((h, len));
    // powers per block: no more than the kernel's length (a short kernel is a prefill's)
    let block = BLOCK.min(len);
    out.axis_iter_mut(Axis(0)).into_par_iter().enumerate().for_each_init(
        || {
            (
                vec![T::zero(); m * block],
                vec![T::zero(); m * block],
                vec![Complex64::new(0.0, 0.0); m],
                vec![Complex64::new(0.0, 0.0); m],
            )
        },
        |(pr, pi, anchor, step), (ch, mut row)| {
            let dt = params.dt[ch].as_f64();
            for j in 0..m {
                let lam = Complex64::new(params.lambda[[ch, j]].re.as_f64(), params.lambda[[ch, j]].im.as_f64());
                let (ab, fb) = discretize_mode(lam, dt, method);
                let b = Complex64::new(params.b[[ch, j]].re.as_f64(), params.b[[ch, j]].im.as_f64());
                let c = Complex64::new(params.c[[ch, j]].re.as_f64(), params.c[[ch, j]].im.as_f64());
                anchor[j] = c * fb * b;
                let mut pw = Complex64::new(1.0, 0.0);
                for mm in 0..block {
                    // powers below the cutoff are flushed to zero: they change nothing visible and
                    // would otherwise become subnormal numbers, which are ~100x slower to multiply
                    let keep = pw.norm_sqr() >= CUTOFF * CUTOFF; // |z|² avoids a hypot per entry
                    pr[j * block + mm] = if keep { T::of(pw.re) } else { T::zero() };
                    pi[j * block + mm] = if keep { T::of(pw.im) } else { T::zero() };
                    pw *= ab;
                }
                step[j] = pw; // Ā_j^block
            }
            // a decaying mode (|Ā| < 1) whose anchor fell below CUTOFF · max |C B̄| only decays further
            let floor2 = CUTOFF * CUTOFF * anchor.iter().fold(0.0f64, |mx, z| mx.max(z.norm_sqr()));
            let decays: Vec<bool> = step.iter().map(|s| s.norm_sqr() < 1.0).collect();
            let row = row.as_slice_mut().expect("rows of a standard-layout array are contiguous");
            for out_blk in row.chunks_mut(block) {
                let bs = out_blk.len();
                let mut active = 0;
                for j in 0..m {
                    let a2 = anchor[j].norm_sqr();
                    if a2 == 0.0 || (decays[j] && a2 < floor2) {
                        continue;
                    }
                    active += 1;
                    let (sr, si) = (T::of(anchor[j].re), T::of(anchor[j].im));
                    let (tr, ti) = (&pr[j * block..j * block + bs], &pi[j * block..j * block + bs]);
                    for mm in 0..bs {
                        out_blk[mm] = out_blk[mm] + sr * tr[mm] - si * ti[mm];
                    }
                    anchor[j] *= step[j];
                }
                if active == 0 {
                    break;
                }
            }
            let two = T::of(2.0);
            row.iter_mut().for_each(|x| *x *= two);
        },
    );
    check_finite(&out, "S4D kernel")?;
    Ok(out)
}

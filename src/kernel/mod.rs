//! SSM convolution kernels K_l = C Ā^l B̄, l = 0..L−1: the whole sequence map of an LTI SSM as one
//! long convolution.
//!
//! | kernel | method | cost per channel |
//! |---|---|---|
//! | [`DplrKernel`] (S4) | C̃, roots of unity, Cauchy sums, Woodbury, inverse real FFT | O((N·(1+R)² + R³ + log L)·L) |
//! | [`diag_kernel`] (S4D) | Vandermonde product, ZOH or bilinear | O(N·L) |
//! | [`kernel_naive`], [`ssm_kernel_naive`] | matrix powers, dense f64 (the reference) | O(N²·L) |
//!
//! # Shapes
//! Kernels are (H, L): one row per channel.

mod cauchy;
mod dplr;
mod naive;
mod vandermonde;

pub use cauchy::{cauchy_naive, CauchyTile};
pub(crate) use dplr::solve_small;
pub use dplr::{c_tilde, recover_c, DplrKernel, MAX_DT_LAMBDA};
pub use naive::{kernel_naive, ssm_kernel_naive};
pub use vandermonde::diag_kernel;

use crate::discretize::Discretization;
use crate::error::{Error, Result};
use crate::scalar::Real;
use crate::ssm::{KernelKind, SsmParams};
use ndarray::Array2;

/// Fails with a clear error if a computed kernel overflowed (e.g. an unstable forward-Euler
/// discretization, |Ā| > 1).
pub(crate) fn check_finite<T: Real>(k: &Array2<T>, what: &str) -> Result<()> {
    match k.indexed_iter().find(|(_, v)| !v.is_finite()) {
        None => Ok(()),
        Some(((h, l), _)) => Err(Error::numerical(
            what,
            format!("non-finite value at channel {h}, lag {l}: the discrete system is unstable (|Ā| > 1?)"),
        )),
    }
}

/// The default discretization of a kernel kind: bilinear for DPLR, ZOH for diagonal (as in the
/// official code).
pub fn default_discretization(kind: KernelKind) -> Discretization {
    match kind {
        KernelKind::Dplr => Discretization::Bilinear,
        KernelKind::Diag => Discretization::Zoh,
    }
}

/// The kernel (H, len) of continuous parameters (C, not C̃) with the fast method of their kind:
/// the S4 DPLR kernel if P is present (bilinear only), the S4D kernel otherwise.
///
/// # Errors
/// Invalid parameters, `len == 0`, or a discretization other than bilinear for the DPLR kind.
///
/// # Example
/// ```
/// use s4::kernel::ssm_kernel;
/// use s4::ssm::SsmInitConfig;
/// let params = SsmInitConfig { d_state: 16, channels: 4, ..Default::default() }.draw()?;
/// let k = ssm_kernel::<f32>(&params, 1024, None)?;
/// assert_eq!(k.dim(), (4, 1024));
/// # Ok::<(), s4::Error>(())
/// ```
pub fn ssm_kernel<T: Real>(params: &SsmParams<f64>, len: usize, method: Option<Discretization>) -> Result<Array2<T>> {
    let method = method.unwrap_or_else(|| default_discretization(params.kind()));
    match params.kind() {
        KernelKind::Dplr => {
            if method != Discretization::Bilinear {
                return Err(Error::invalid(
                    "discretization",
                    method,
                    "bilinear for the DPLR kernel (its Cauchy/Woodbury form is derived for the bilinear rule)",
                ));
            }
            DplrKernel::<T>::new(params, len)?.kernel(len)
        }
        KernelKind::Diag => diag_kernel(&params.cast::<T>(), len, method),
    }
}

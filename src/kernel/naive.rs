//! The reference kernel by matrix powers: K_l = C Ā^l B̄ (Annotated S4's `K_conv`).
//!
//! O(L·N²) per channel in dense f64. Slow and obvious on purpose: every fast kernel is tested
//! against it.

use crate::budget::Estimate;
use crate::discretize::{discretize_dense, Discretization};
use crate::error::{check_len, Error, Result};
use crate::ssm::SsmParams;
use ndarray::{Array1, Array2, ArrayView1, ArrayView2, Axis};
use rayon::prelude::*;

/// K_l = c · Ā^l · b̄ for l = 0..len, by repeated matrix–vector products.
///
/// # Errors
/// `len == 0` or inconsistent shapes.
///
/// # Example
/// ```
/// use ndarray::array;
/// use s4::kernel::kernel_naive;
/// let k = kernel_naive(array![[0.5]].view(), array![1.0].view(), array![2.0].view(), 4)?;
/// assert_eq!(k.to_vec(), vec![2.0, 1.0, 0.5, 0.25]);
/// # Ok::<(), s4::Error>(())
/// ```
pub fn kernel_naive(
    a_bar: ArrayView2<f64>,
    b_bar: ArrayView1<f64>,
    c: ArrayView1<f64>,
    len: usize,
) -> Result<Array1<f64>> {
    check_len("kernel length L", len)?;
    Estimate::new(format!("naive kernel of length L = {len}")).array::<f64>(&[len]).check()?;
    let n = a_bar.nrows();
    if a_bar.ncols() != n {
        return Err(Error::shape("Ā", "a square matrix (N, N)", a_bar.shape()));
    }
    if b_bar.len() != n || c.len() != n {
        return Err(Error::shape("B̄ and C", format!("(N,) = ({n},)"), &[b_bar.len(), c.len()]));
    }
    let mut x = b_bar.to_owned();
    let mut k = Array1::zeros(len);
    for l in 0..len {
        k[l] = c.dot(&x);
        if l + 1 < len {
            x = a_bar.dot(&x);
        }
    }
    Ok(k)
}

/// The kernel (H, L) of every channel of `params` by matrix powers of the dense real form
/// ([`SsmParams::dense_real`]) discretized with `method`, in f64.
///
/// # Errors
/// Invalid parameters (see [`SsmParams::validate`]), `len == 0`, or a failed discretization.
pub fn ssm_kernel_naive(params: &SsmParams<f64>, len: usize, method: Discretization) -> Result<Array2<f64>> {
    params.validate()?;
    check_len("kernel length L", len)?;
    let h = params.channels();
    Estimate::new(format!("naive kernel (H, L) = ({h}, {len})")).array::<f64>(&[h, len]).check()?;
    let mut out = Array2::zeros((h, len));
    out.axis_iter_mut(Axis(0)).into_par_iter().enumerate().try_for_each(|(i, mut row)| -> Result<()> {
        let (a, b, c) = params.dense_real(i);
        let (ab, bb) = discretize_dense(a.view(), b.view(), params.dt[i], method)?;
        row.assign(&kernel_naive(ab.view(), bb.view(), c.view(), len)?);
        Ok(())
    })?;
    Ok(out)
}

//! O(L²) direct convolutions: the references for [`FftConv`](super::FftConv).

use super::{check_inputs, Layout};
use crate::error::Result;
use crate::scalar::Real;
use ndarray::{Array3, ArrayView1, ArrayView2, ArrayView3};

/// Causal convolution by direct sums:
/// `y[b, h, t] = Σ_{s=0}^{min(t, Lk−1)} k[h, s]·u[b, h, t−s] + D[h]·u[b, h, t]`.
///
/// # Errors
/// As [`FftConv::causal`](super::FftConv::causal).
///
/// # Example
/// ```
/// use ndarray::{array, Array3};
/// use s4::conv::causal_conv_direct;
/// let u = Array3::from_shape_vec((1, 1, 3), vec![1.0, 2.0, 3.0])?;
/// let k = array![[1.0, 0.5]];
/// let y = causal_conv_direct(u.view(), k.view(), None)?;
/// assert_eq!(y.into_raw_vec_and_offset().0, vec![1.0, 2.5, 4.0]);
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
pub fn causal_conv_direct<T: Real>(u: ArrayView3<T>, k: ArrayView2<T>, d: Option<ArrayView1<T>>) -> Result<Array3<T>> {
    let Layout { batch, channels, len, klen } = check_inputs(u, &[k], d)?;
    let mut y = Array3::zeros((batch, channels, len));
    for b in 0..batch {
        for h in 0..channels {
            for t in 0..len {
                let mut acc = d.map_or(T::zero(), |d| d[h] * u[[b, h, t]]);
                for s in 0..=t.min(klen - 1) {
                    acc += k[[h, s]] * u[[b, h, t - s]];
                }
                y[[b, h, t]] = acc;
            }
        }
    }
    Ok(y)
}

/// Bidirectional convolution by direct sums, with the official FFTConv's convention:
/// `y[t] = Σ_{s≥0} k_fwd[s]·u[t−s] + Σ_{s≥0} k_bwd[s]·u[t+1+s] + D·u[t]`.
///
/// # Errors
/// As [`FftConv::bidirectional`](super::FftConv::bidirectional).
pub fn bidirectional_conv_direct<T: Real>(
    u: ArrayView3<T>,
    k_fwd: ArrayView2<T>,
    k_bwd: ArrayView2<T>,
    d: Option<ArrayView1<T>>,
) -> Result<Array3<T>> {
    let Layout { batch, channels, len, klen } = check_inputs(u, &[k_fwd, k_bwd], d)?;
    let mut y = causal_conv_direct(u, k_fwd, d)?;
    for b in 0..batch {
        for h in 0..channels {
            for t in 0..len {
                let mut acc = T::zero();
                for s in 0..klen {
                    if t + 1 + s < len {
                        acc += k_bwd[[h, s]] * u[[b, h, t + 1 + s]];
                    }
                }
                y[[b, h, t]] += acc;
            }
        }
    }
    Ok(y)
}

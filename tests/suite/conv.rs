//! FFT convolution against direct sums, for every length 1..=130 and for long lengths that are not
//! powers of two.

use crate::common;

use common::rel_err;
use ndarray::{Array1, Array2, Array3};
use s4::conv::{bidirectional_conv_direct, causal_conv_direct, FftConv};

fn signal(b: usize, h: usize, l: usize, seed: u64) -> Array3<f64> {
    Array3::from_shape_fn((b, h, l), |(i, j, t)| {
        (((i * 131 + j * 71 + t * 17) as u64 * 2654435761 + seed) % 1000) as f64 / 500.0 - 1.0
    })
}

fn kernel(h: usize, l: usize) -> Array2<f64> {
    Array2::from_shape_fn((h, l), |(j, t)| {
        (-(t as f64) / (3.0 + 5.0 * j as f64)).exp() * ((t as f64) * 0.3 + j as f64).cos()
    })
}

#[test]
fn causal_fft_equals_direct_for_every_length_up_to_130() {
    let mut conv = FftConv::<f64>::new();
    let d = Array1::from_vec(vec![0.5, -1.0, 2.0]);
    for l in 1..=130 {
        let u = signal(2, 3, l, l as u64);
        for klen in [1, l.div_ceil(2), l, l + 5] {
            let k = kernel(3, klen);
            let y = conv.causal(u.view(), k.view(), Some(d.view())).unwrap();
            let r = causal_conv_direct(u.view(), k.view(), Some(d.view())).unwrap();
            assert!(rel_err(&y, &r) < 1e-12, "L={l} Lk={klen}");
        }
    }
}

#[test]
fn bidirectional_fft_equals_direct_for_every_length_up_to_130() {
    let mut conv = FftConv::<f64>::new();
    for l in 1..=130 {
        let u = signal(2, 2, l, 3);
        for klen in [1, l, l + 3] {
            let kf = kernel(2, klen);
            let kb = kernel(2, klen).mapv(|x| -0.7 * x);
            let y = conv.bidirectional(u.view(), kf.view(), kb.view(), None).unwrap();
            let r = bidirectional_conv_direct(u.view(), kf.view(), kb.view(), None).unwrap();
            assert!(rel_err(&y, &r) < 1e-12, "L={l} Lk={klen}");
        }
    }
}

#[test]
fn long_lengths_that_are_not_powers_of_two() {
    let mut conv = FftConv::<f64>::new();
    let mut conv32 = FftConv::<f32>::new();
    for l in [1000, 1531, 4097] {
        let u = signal(1, 2, l, 9);
        let k = kernel(2, l);
        let r = causal_conv_direct(u.view(), k.view(), None).unwrap();
        assert!(rel_err(&conv.causal(u.view(), k.view(), None).unwrap(), &r) < 1e-12, "L={l}");
        let y32 = conv32.causal(u.mapv(|x| x as f32).view(), k.mapv(|x| x as f32).view(), None).unwrap();
        assert!(rel_err(&y32.mapv(|x| x as f64), &r) < 1e-5, "f32 L={l}");
        let kb = kernel(2, l / 3);
        let kf = kernel(2, l / 3);
        let rb = bidirectional_conv_direct(u.view(), kf.view(), kb.view(), None).unwrap();
        assert!(rel_err(&conv.bidirectional(u.view(), kf.view(), kb.view(), None).unwrap(), &rb) < 1e-12);
    }
}

#[test]
fn bidirectional_matches_the_official_padding_formula() {
    // official: k = pad(k0, (0, L)) + pad(flip(k1), (L, 0)); y = irfft(rfft(k, 2L) rfft(u, 2L))[:L]
    let l = 9;
    let u = signal(1, 1, l, 5);
    let k0 = kernel(1, l);
    let k1 = kernel(1, l).mapv(|x| x * 0.3 + 0.1);
    let mut two_sided = vec![0.0; 2 * l];
    for s in 0..l {
        two_sided[s] += k0[[0, s]];
        two_sided[l + s] += k1[[0, l - 1 - s]];
    }
    // circular convolution of length 2L, by direct sums
    let mut expected = vec![0.0; l];
    for (t, e) in expected.iter_mut().enumerate() {
        for (m, km) in two_sided.iter().enumerate() {
            let idx = (t + 2 * l - m) % (2 * l);
            if idx < l {
                *e += km * u[[0, 0, idx]];
            }
        }
    }
    let y = FftConv::<f64>::new().bidirectional(u.view(), k0.view(), k1.view(), None).unwrap();
    for t in 0..l {
        assert!((y[[0, 0, t]] - expected[t]).abs() < 1e-12);
    }
}

#[test]
fn bad_shapes_are_errors() {
    let mut conv = FftConv::<f32>::new();
    let u = Array3::<f32>::zeros((2, 3, 10));
    let e = conv.causal(u.view(), Array2::zeros((4, 10)).view(), None).unwrap_err().to_string();
    assert!(e.contains("kernel K") && e.contains("[4, 10]"), "{e}");
    let e =
        conv.causal(u.view(), Array2::zeros((3, 10)).view(), Some(Array1::zeros(2).view())).unwrap_err().to_string();
    assert!(e.contains("skip D"), "{e}");
    assert!(conv.causal(Array3::<f32>::zeros((0, 3, 10)).view(), Array2::zeros((3, 10)).view(), None).is_err());
    assert!(conv.causal(u.view(), Array2::zeros((3, 0)).view(), None).is_err());
    let e =
        conv.bidirectional(u.view(), Array2::zeros((3, 10)).view(), Array2::zeros((3, 9)).view(), None).unwrap_err();
    assert!(e.to_string().contains("backward kernel"), "{e}");
    let mut bad = u.clone();
    bad[[0, 0, 0]] = f32::NAN;
    assert!(conv
        .causal(bad.view(), Array2::zeros((3, 10)).view(), None)
        .unwrap_err()
        .to_string()
        .contains("non-finite"));
}

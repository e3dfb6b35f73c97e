//! FFT convolution of a (B, H, L) batch with one kernel per channel (H = 256), against the O(L²)
//! direct sum where it is feasible.
//!
//! `cargo bench -p s4-bench --bench conv`

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use ndarray::{Array1, Array2, Array3};
use s4::conv::{causal_conv_direct, FftConv};
use std::hint::black_box;

use s4_bench::H;

fn inputs(b: usize, l: usize) -> (Array3<f32>, Array2<f32>, Array1<f32>) {
    let u = Array3::from_shape_fn((b, H, l), |(i, h, t)| ((i * 7 + h * 13 + t * 31) % 17) as f32 / 17.0 - 0.5);
    let k = Array2::from_shape_fn((H, l), |(h, t)| (-(t as f32) / (50.0 + h as f32)).exp());
    (u, k, Array1::from_elem(H, 0.5))
}

fn causal(c: &mut Criterion) {
    let mut g = c.benchmark_group("causal_conv_h256");
    g.sample_size(10);
    for &(b, l) in &[(1, 1024), (1, 4096), (1, 16384), (8, 4096)] {
        let (u, k, d) = inputs(b, l);
        let mut conv = FftConv::<f32>::new();
        g.throughput(Throughput::Elements((b * H * l) as u64));
        let id = format!("b{b}_l{l}");
        g.bench_function(BenchmarkId::new("fft_f32", &id), |bench| {
            bench.iter(|| black_box(conv.causal(u.view(), k.view(), Some(d.view())).unwrap()))
        });
        if l == 1024 {
            g.bench_function(BenchmarkId::new("direct_f32", &id), |bench| {
                bench.iter(|| black_box(causal_conv_direct(u.view(), k.view(), Some(d.view())).unwrap()))
            });
        }
    }
    g.finish();
}

fn bidirectional(c: &mut Criterion) {
    let mut g = c.benchmark_group("bidirectional_conv_h256");
    g.sample_size(10);
    let (u, k, d) = inputs(1, 4096);
    let mut conv = FftConv::<f32>::new();
    g.throughput(Throughput::Elements((H * 4096) as u64));
    g.bench_function("fft_f32_b1_l4096", |bench| {
        bench.iter(|| black_box(conv.bidirectional(u.view(), k.view(), k.view(), Some(d.view())).unwrap()))
    });
    g.finish();
}

criterion_group! {
    name = benches;
    config = s4_bench::criterion();
    targets = causal, bidirectional
}
criterion_main!(benches);

//! The S4 layer at the official anchor's sizes (H = 256, N = 64): convolutional forward (B = 8,
//! L = 4096) and one recurrent step at batch 1 and 32, DPLR and S4D, f32 (and the step with its
//! output linear in bf16).
//!
//! `cargo bench -p s4-bench --bench layer`

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use ndarray::{Array2, Array3};
use s4::layer::{ForwardOptions, Recurrent};
use s4::scalar::HalfPrecision;
use s4::ssm::KernelKind;
use s4_bench::{anchor_layer, H};
use std::hint::black_box;

fn forward(c: &mut Criterion) {
    let mut g = c.benchmark_group("layer_forward_h256_n64");
    g.sample_size(10);
    let (b, l) = (8, 4096);
    let x = Array3::from_shape_fn((b, 256, l), |(i, h, t)| ((i * 3 + h * 7 + t * 11) % 19) as f32 / 9.5 - 1.0);
    g.throughput(Throughput::Elements((b * l) as u64));
    for kernel in [KernelKind::Dplr, KernelKind::Diag] {
        let mut layer = anchor_layer(kernel, H).build().unwrap();
        layer.set_kernel_length(l).unwrap();
        g.bench_function(BenchmarkId::new(format!("{kernel}_b8"), l), |bench| {
            bench.iter(|| black_box(layer.forward(x.view(), &ForwardOptions::default()).unwrap()))
        });
    }
    g.finish();
}

fn step(c: &mut Criterion) {
    let mut g = c.benchmark_group("layer_step_h256_n64");
    for kernel in [KernelKind::Dplr, KernelKind::Diag] {
        let mut layer = anchor_layer(kernel, H).build().unwrap();
        layer.set_kernel_length(1024).unwrap();
        // the output linear packed in f32 and in bf16 (16 bits in memory, widened as loaded)
        for (label, weights) in [("", None), ("_bf16", Some(HalfPrecision::Bf16))] {
            let rec = Recurrent::with_weights(&layer, weights).unwrap();
            for b in [1, 32] {
                let u = Array2::from_shape_fn((b, 256), |(i, h)| ((i + h) % 7) as f32 / 3.5 - 1.0);
                let mut state = rec.zero_state(b);
                g.throughput(Throughput::Elements(b as u64));
                g.bench_function(BenchmarkId::new(format!("{kernel}{label}"), format!("b{b}")), |bench| {
                    bench.iter(|| black_box(rec.step(&mut state, u.view()).unwrap()))
                });
            }
        }
    }
    g.finish();
}

criterion_group! {
    name = benches;
    config = s4_bench::criterion();
    targets = forward, step
}
criterion_main!(benches);

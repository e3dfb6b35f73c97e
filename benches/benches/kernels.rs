//! Kernel generation at the sizes of the official PyTorch anchor (H = 256, N = 64):
//! S4 (DPLR) and S4D kernels in f32 (the layer default) and f64, with the naive matrix-power
//! reference in the same group where it is feasible (L = 1024).
//!
//! `cargo bench -p s4-bench --bench kernels`

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use s4::discretize::Discretization;
use s4::kernel::{diag_kernel, ssm_kernel_naive, DplrKernel};
use s4::ssm::{KernelKind, SsmInitConfig};
use std::hint::black_box;

use s4_bench::{H, N};
const LENGTHS: [usize; 3] = [1024, 4096, 16384];

fn dplr(c: &mut Criterion) {
    let params = SsmInitConfig { d_state: N, channels: H, ..Default::default() }.draw().unwrap();
    let mut g = c.benchmark_group("dplr_kernel_h256_n64");
    g.sample_size(10);
    for &l in &LENGTHS {
        g.throughput(Throughput::Elements((H * l) as u64));
        let k32 = DplrKernel::<f32>::new(&params, l).unwrap();
        g.bench_with_input(BenchmarkId::new("cauchy_f32", l), &l, |b, &l| b.iter(|| black_box(k32.kernel(l).unwrap())));
        let k64 = DplrKernel::<f64>::new(&params, l).unwrap();
        g.bench_with_input(BenchmarkId::new("cauchy_f64", l), &l, |b, &l| b.iter(|| black_box(k64.kernel(l).unwrap())));
        g.bench_with_input(BenchmarkId::new("setup_c_tilde_and_kernel_f32", l), &l, |b, &l| {
            b.iter(|| black_box(DplrKernel::<f32>::new(&params, l).unwrap().kernel(l).unwrap()))
        });
        if l == 1024 {
            g.bench_with_input(BenchmarkId::new("naive_matrix_powers_f64", l), &l, |b, &l| {
                b.iter(|| black_box(ssm_kernel_naive(&params, l, Discretization::Bilinear).unwrap()))
            });
        }
    }
    g.finish();
}

fn s4d(c: &mut Criterion) {
    let cfg = SsmInitConfig {
        kind: KernelKind::Diag,
        init: "diag-legs".parse().unwrap(),
        d_state: N,
        channels: H,
        ..Default::default()
    };
    let params = cfg.draw().unwrap();
    let p32 = params.cast::<f32>();
    let mut g = c.benchmark_group("s4d_kernel_h256_n64");
    g.sample_size(10);
    for &l in &LENGTHS {
        g.throughput(Throughput::Elements((H * l) as u64));
        g.bench_with_input(BenchmarkId::new("vandermonde_zoh_f32", l), &l, |b, &l| {
            b.iter(|| black_box(diag_kernel(&p32, l, Discretization::Zoh).unwrap()))
        });
        g.bench_with_input(BenchmarkId::new("vandermonde_zoh_f64", l), &l, |b, &l| {
            b.iter(|| black_box(diag_kernel(&params, l, Discretization::Zoh).unwrap()))
        });
        if l == 1024 {
            g.bench_with_input(BenchmarkId::new("naive_matrix_powers_f64", l), &l, |b, &l| {
                b.iter(|| black_box(ssm_kernel_naive(&params, l, Discretization::Zoh).unwrap()))
            });
        }
    }
    g.finish();
}

criterion_group! {
    name = benches;
    config = s4_bench::criterion();
    targets = dplr, s4d
}
criterion_main!(benches);

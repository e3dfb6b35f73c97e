//! The matrix products of s4 on three engines, one thread each, at the shapes s4 runs: the
//! decoding kernels of s4 (`PackedColumns`, weights packed in 16-column panels), matrixmultiply
//! (the gemm behind ndarray's `general_mat_mul`, which s4 uses for the S4 layer's linears and
//! training) and the `gemm` crate (the engine of faer and candle).
//!
//! Shapes (rows m, inner k, columns n; C = A·B, all row-major f32):
//! * decoding: x (m, k)·W (k, n) for m = 1…96 rows at the GPT-2-small query/key/value linear
//!   (768 → 2304) and the demo verifier's (256 → 768);
//! * the S4 layer's output linear per sequence, W (2H, H)·x (H, L) = (512, 256)·(256, 4096);
//! * its training products: dW = gy (512, 4096)·xᵀ (4096, 256), dx = Wᵀ (256, 512)·gy (512, 4096);
//! * the transformer's training linear: x (2048, 256)·W (256, 768).
//!
//! `cargo bench -p s4-bench --bench gemm`

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use ndarray::{Array1, Array2};
use s4::nn::linear::PackedColumns;
use std::hint::black_box;

fn matrix(m: usize, n: usize, seed: usize) -> Array2<f32> {
    Array2::from_shape_fn((m, n), |(i, j)| ((i * 31 + j * 17 + seed) % 23) as f32 / 11.5 - 1.0)
}

/// C = A·B by matrixmultiply (row-major strides).
fn by_matrixmultiply(a: &Array2<f32>, b: &Array2<f32>, c: &mut Array2<f32>) {
    let ((m, k), n) = (a.dim(), b.ncols());
    // SAFETY: the pointers and strides describe the three standard-layout arrays.
    unsafe {
        matrixmultiply::sgemm(
            m,
            k,
            n,
            1.0,
            a.as_ptr(),
            k as isize,
            1,
            b.as_ptr(),
            n as isize,
            1,
            0.0,
            c.as_mut_ptr(),
            n as isize,
            1,
        )
    }
}

/// C = A·B by the gemm crate (one thread).
fn by_gemm(a: &Array2<f32>, b: &Array2<f32>, c: &mut Array2<f32>) {
    let ((m, k), n) = (a.dim(), b.ncols());
    // SAFETY: as above; dst_cs = 1, dst_rs = n (row-major), alpha is ignored without read_dst.
    unsafe {
        gemm::gemm(
            m,
            n,
            k,
            c.as_mut_ptr(),
            1,
            n as isize,
            false,
            a.as_ptr(),
            1,
            k as isize,
            b.as_ptr(),
            1,
            n as isize,
            0.0,
            1.0,
            false,
            false,
            false,
            gemm::Parallelism::None,
        )
    }
}

/// Runs s4 on one thread: the global rayon pool of this process gets one thread (a per-call
/// `ThreadPool::install` would add a cross-thread hand-off of tens of µs to every product).
fn one_thread() {
    // an error means the pool exists already (set by the first bench function)
    let _ = rayon::ThreadPoolBuilder::new().num_threads(1).build_global();
    assert_eq!(rayon::current_num_threads(), 1, "s4 on one thread");
}

fn decoding(c: &mut Criterion) {
    one_thread();
    for (name, k, n, rows) in [
        ("gpt2_qkv_768x2304", 768, 2304, &[1, 2, 4, 8, 9, 16, 32, 64, 96][..]),
        ("demo_qkv_256x768", 256, 768, &[1, 9, 32]),
    ] {
        let mut g = c.benchmark_group(format!("decode_{name}"));
        let w = matrix(k, n, 1);
        let packed = PackedColumns::with_precision(w.view(), None);
        let bias = Array1::zeros(n);
        for &m in rows {
            let x = matrix(m, k, 2);
            let mut out = Array2::zeros((m, n));
            g.throughput(Throughput::Elements((m * k * n) as u64));
            g.bench_function(BenchmarkId::new("s4_packed", m), |b| {
                b.iter(|| black_box(packed.linear(x.view(), bias.view())))
            });
            g.bench_function(BenchmarkId::new("matrixmultiply", m), |b| {
                b.iter(|| by_matrixmultiply(&x, &w, black_box(&mut out)))
            });
            g.bench_function(BenchmarkId::new("gemm", m), |b| b.iter(|| by_gemm(&x, &w, black_box(&mut out))));
        }
        g.finish();
    }
}

fn training_shapes(c: &mut Criterion) {
    let mut g = c.benchmark_group("products");
    g.sample_size(20);
    for (name, m, k, n) in [
        ("s4_output_linear_512x256x4096", 512, 256, 4096),
        ("s4_grad_w_512x4096x256", 512, 4096, 256),
        ("s4_grad_x_256x512x4096", 256, 512, 4096),
        ("gpt_linear_2048x256x768", 2048, 256, 768),
    ] {
        let (a, b) = (matrix(m, k, 3), matrix(k, n, 4));
        let mut out = Array2::zeros((m, n));
        g.throughput(Throughput::Elements((m * k * n) as u64));
        g.bench_function(BenchmarkId::new("matrixmultiply", name), |bench| {
            bench.iter(|| by_matrixmultiply(&a, &b, black_box(&mut out)))
        });
        g.bench_function(BenchmarkId::new("gemm", name), |bench| bench.iter(|| by_gemm(&a, &b, black_box(&mut out))));
    }
    g.finish();
}

criterion_group! {
    name = benches;
    config = s4_bench::criterion();
    targets = decoding, training_shapes
}
criterion_main!(benches);

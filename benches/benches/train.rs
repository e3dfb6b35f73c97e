//! One training step at the perf anchor's sizes (../shared/design/perf-anchor.md §4): Embedding(20, 64)
//! → 4 × [S4 layer (H = 64, N = 64), residual, post-LayerNorm] → mean over L → Linear(64, 10);
//! B = 16, L = 512; cross-entropy; AdamW (lr 0.01, wd 0.01; SSM parameters lr 0.001, wd 0).
//! A step is forward, loss, backward and the AdamW update. DPLR and S4D, f32.
//!
//! `cargo bench -p s4-bench --bench train` (official PyTorch on this machine: DPLR 682 ms, S4D 241 ms per step)

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use ndarray::Array2;
use s4::model::{Input, NormKind, Pooling, S4ModelConfig};
use s4::ssm::KernelKind;
use s4::train::grad::{forward_backward, Target, TrainOptions};
use s4::train::{AdamW, OptimConfig};
use std::hint::black_box;

fn anchor_model(kernel: KernelKind) -> S4ModelConfig {
    S4ModelConfig {
        vocab_size: Some(20),
        d_output: 10,
        n_layers: 4,
        layer: s4_bench::anchor_layer(kernel, 64),
        prenorm: false,
        norm: NormKind::Layer,
        pooling: Pooling::Mean,
        ..Default::default()
    }
}

fn train_step(c: &mut Criterion) {
    let mut g = c.benchmark_group("train_step_4x_h64_n64_l512_b16");
    g.sample_size(10);
    let (b, l) = (16, 512);
    let tokens = Array2::from_shape_fn((b, l), |(i, t)| ((i * 7 + t * 13) % 20) as u32);
    let labels: Vec<u32> = (0..b as u32).map(|i| i % 10).collect();
    g.throughput(Throughput::Elements((b * l) as u64));
    for kernel in [KernelKind::Dplr, KernelKind::Diag] {
        let mut model = anchor_model(kernel).build().unwrap();
        model.set_kernel_length(l).unwrap();
        let optim = OptimConfig {
            lr: 0.01,
            weight_decay: 0.01,
            lr_dt: Some(0.001),
            lr_a: Some(0.001),
            lr_b: Some(0.001),
            warmup_fraction: 0.0,
            schedule: s4::train::Schedule::Constant,
            ..Default::default()
        };
        let mut opt = AdamW::new(&model, optim).unwrap();
        let opts = TrainOptions { dropout_seed: None, update_running_stats: true };
        g.bench_function(BenchmarkId::new(kernel.to_string(), l), |bench| {
            bench.iter(|| {
                let (stats, mut grads) =
                    forward_backward(&mut model, Input::Tokens(tokens.view()), None, Target::Classes(&labels), opts)
                        .unwrap();
                opt.step(&mut model, &mut grads, 1_000_000);
                black_box(stats.loss)
            })
        });
    }
    g.finish();
}

criterion_group! {
    name = benches;
    config = s4_bench::criterion();
    targets = train_step
}
criterion_main!(benches);

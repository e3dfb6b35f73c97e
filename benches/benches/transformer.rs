//! The GPT-2 transformer as the verifier of speculative decoding: a character-level model of
//! nanoGPT's `shakespeare_char` size (C = 384, 6 layers, 6 heads, V = 256, context 256, 10.7 M
//! parameters), f32, batch 1, with a KV cache holding 200 positions: one decoding step (1 token),
//! scoring 5 tokens in one pass (k = 4 drafts + 1), and 16; then the 200-token prefill, and one
//! training step (forward and backward) at B = 4, T = 128.
//!
//! `cargo bench -p s4-bench --bench transformer`

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use ndarray::Array2;
use s4::transformer::{grad, Gpt, GptConfig};
use std::hint::black_box;

const PAST: usize = 200;

fn model() -> Gpt<f32> {
    Gpt::new(GptConfig::default(), 0).unwrap()
}

fn ids(b: usize, t: usize, salt: usize) -> Array2<u32> {
    Array2::from_shape_fn((b, t), |(i, j)| ((i * 31 + j * 7 + salt) % 256) as u32)
}

fn decode(c: &mut Criterion) {
    let m = model();
    let mut g = c.benchmark_group("gpt_c384_l6_cache200");
    g.sample_size(30);
    let mut cache = m.new_cache(1);
    m.forward_cached(&mut cache, ids(1, PAST, 0).view()).unwrap();
    for t in [1, 5, 16] {
        let new = ids(1, t, 3);
        g.throughput(Throughput::Elements(t as u64));
        g.bench_function(BenchmarkId::new("score_tokens", t), |bench| {
            bench.iter(|| {
                let logits = m.forward_cached(&mut cache, new.view()).unwrap();
                cache.truncate(PAST).unwrap();
                black_box(logits)
            })
        });
    }
    g.finish();
}

fn prefill_and_train(c: &mut Criterion) {
    let m = model();
    let mut g = c.benchmark_group("gpt_c384_l6");
    g.sample_size(10);
    let prompt = ids(1, PAST, 0);
    g.throughput(Throughput::Elements(PAST as u64));
    g.bench_function(BenchmarkId::new("prefill", PAST), |bench| {
        bench.iter(|| {
            let mut cache = m.new_cache(1);
            black_box(m.forward_cached(&mut cache, prompt.view()).unwrap())
        })
    });
    let (x, y) = (ids(4, 128, 0), ids(4, 128, 7));
    g.throughput(Throughput::Elements(4 * 128));
    g.bench_function(BenchmarkId::new("train_step_b4", 128), |bench| {
        bench.iter(|| black_box(grad::forward_backward(&m, x.view(), y.view()).unwrap().0))
    });
    g.finish();
}

criterion_group! {
    name = benches;
    config = s4_bench::criterion();
    targets = decode, prefill_and_train
}
criterion_main!(benches);

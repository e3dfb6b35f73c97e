//! The pieces of a speculative-decoding round at the demo pair's sizes (random weights): one S4
//! draft step (4 S4D layers, H = 128, N = 64, V = 256, `s4 distill`'s shape until 2026-12-06; and
//! H = 96, N = 16, its default since and the committed demo draft's shape) through the session,
//! the bare model step with
//! k = 1…16 sequences at once (the cost of stepping k tree nodes in one batch), the transformer verifier (6 layers,
//! n_embd = 384, 6 heads, V = 256) scoring k = 1…32 positions at cache length 192 (the cost
//! curve t(k)), and whole
//! greedy generations of 64 tokens by the verifier alone and speculatively with γ = 4 (with
//! random weights the acceptance is low; the measured end-to-end speedups of the trained demo pair
//! come from `s4 bench-speculate`, see the README).
//!
//! `cargo bench -p s4-bench --bench speculative`

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion};
use s4::model::S4ModelConfig;
use s4::speculative::{
    generate, speculate, Drafter, GammaPolicy, GptSession, S4Session, Sampling, SpecConfig, Verifier,
};
use s4::ssm::KernelKind;
use s4::transformer::{Gpt, GptConfig};
use std::hint::black_box;

fn models() -> (Gpt<f32>, s4::model::S4Model<f32>) {
    let gpt = Gpt::new(
        GptConfig { vocab_size: 256, n_positions: 256, n_embd: 384, n_layer: 6, n_head: 6, ..Default::default() },
        0,
    )
    .unwrap();
    // an S4D draft (diagonal, S4D-Lin init) of `s4 distill`'s earlier default shape
    let mut cfg = S4ModelConfig::causal_lm(256);
    cfg.layer.d_model = 128;
    cfg.layer.d_state = 64;
    cfg.layer.kernel = KernelKind::Diag;
    cfg.layer.init = "diag-lin".parse().unwrap();
    (gpt, cfg.build().unwrap())
}

fn pieces(c: &mut Criterion) {
    let (gpt, lm) = models();
    let prompt: Vec<u32> = (0..192).map(|i| (i * 7 % 256) as u32).collect();
    let mut g = c.benchmark_group("speculative_pieces");
    // one draft step through the session: `s4 distill`'s earlier shape, and its default since,
    // the committed demo draft's (H = 96, N = 16)
    let mut cfg = lm.config().clone();
    (cfg.layer.d_model, cfg.layer.d_state) = (96, 16);
    let small = cfg.build().unwrap();
    for (name, model) in [("s4_draft_step", &lm), ("s4_draft_step_h96_n16", &small)] {
        let mut s4 = S4Session::new(model, 16).unwrap();
        Drafter::extend(&mut s4, &prompt).unwrap();
        g.bench_function(name, |b| {
            b.iter(|| {
                let l = Drafter::len(&s4);
                black_box(Drafter::extend(&mut s4, &[65]).unwrap());
                Drafter::rollback(&mut s4, l).unwrap();
            })
        });
    }
    // one step of k sequences at once: the cost of stepping k tree nodes in one batch
    let rec = lm.recurrent().unwrap();
    for k in [1usize, 2, 4, 8, 16] {
        let mut state = rec.zero_state(k);
        let tokens: Vec<u32> = (0..k as u32).map(|i| 65 + i).collect();
        g.bench_function(BenchmarkId::new("s4_draft_step_batch", k), |b| {
            b.iter(|| black_box(rec.step_tokens(&mut state, &tokens).unwrap()))
        });
    }
    let mut v = GptSession::new(&gpt);
    v.score(&prompt).unwrap();
    // the cost curve t(k): every k from 1 to 32 (short measurements: 32 points)
    g.sample_size(20).measurement_time(std::time::Duration::from_secs(2));
    for k in 1usize..=32 {
        let toks: Vec<u32> = (0..k as u32).collect();
        g.bench_function(BenchmarkId::new("verifier_score_at_192", k), |b| {
            b.iter(|| {
                black_box(v.score(&toks).unwrap());
                Verifier::rollback(&mut v, 192).unwrap();
            })
        });
    }
    g.finish();
}

fn end_to_end(c: &mut Criterion) {
    let (gpt, lm) = models();
    let prompt: Vec<u32> = (0..32).map(|i| (i * 5 % 256) as u32).collect();
    let cfg =
        SpecConfig { sampling: Sampling::greedy(), max_new: 64, gamma: GammaPolicy::Fixed(4), ..Default::default() };
    let mut g = c.benchmark_group("generate_64_tokens");
    g.sample_size(10);
    g.bench_function("verifier_alone", |b| {
        b.iter(|| black_box(generate(&mut GptSession::new(&gpt), &prompt, &cfg).unwrap()))
    });
    g.bench_function("speculative_gamma4_random_draft", |b| {
        b.iter(|| {
            black_box(
                speculate(&mut S4Session::new(&lm, 16).unwrap(), &mut GptSession::new(&gpt), &prompt, &cfg).unwrap(),
            )
        })
    });
    g.finish();
}

criterion_group! {
    name = benches;
    config = s4_bench::criterion();
    targets = pieces, end_to_end
}
criterion_main!(benches);

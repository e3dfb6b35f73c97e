//! Speculative decoding is lossless: chi-square tests of the acceptance rule and of whole
//! generated sequences, greedy identity, self-drafting, rollback exactness, bad input.

use ndarray::Array2;
use rand::{RngExt, SeedableRng};
use rand_pcg::Pcg64;
use s4::model::S4ModelConfig;
use s4::scalar::MatmulPrecision;
use s4::speculative::{
    draft_tree, generate, sampling::sample, speculate, speculate_batch, speculate_with, verify, verify_tree,
    Acceptance, AcceptanceOdds, Calibration, Drafter, GammaPolicy, Sampling, SpecConfig, TreeShape, Verifier,
};
use s4::speculative::{CausalModel, GptSession, S4Session};
use s4::transformer::{Gpt, GptConfig};

/// A first-order Markov model over V tokens: logits after token t are `table[t]`.
#[derive(Clone, Debug)]
struct Markov {
    table: Array2<f32>,
    history: Vec<u32>,
    max_len: Option<usize>,
}

impl Markov {
    fn random(v: usize, seed: u64, sharpness: f32) -> Self {
        let mut rng = Pcg64::seed_from_u64(seed);
        let table = Array2::from_shape_fn((v, v), |_| sharpness * (rng.random::<f32>() * 4.0 - 2.0));
        Markov { table, history: vec![], max_len: None }
    }
    fn row(&self, t: u32) -> Vec<f32> {
        self.table.row(t as usize).to_vec()
    }
    fn check(&self, tokens: &[u32]) -> s4::Result<()> {
        if tokens.is_empty() {
            return Err(s4::Error::invalid("tokens", "empty", "at least one"));
        }
        match tokens.iter().find(|&&t| t as usize >= self.table.nrows()) {
            Some(&t) => Err(s4::Error::invalid("token", t, "in vocabulary")),
            None => Ok(()),
        }
    }
}

impl Drafter for Markov {
    fn vocab_size(&self) -> usize {
        self.table.nrows()
    }
    fn len(&self) -> usize {
        self.history.len()
    }
    fn extend(&mut self, tokens: &[u32]) -> s4::Result<Vec<f32>> {
        self.check(tokens)?;
        self.history.extend_from_slice(tokens);
        Ok(self.row(*tokens.last().unwrap()))
    }
    fn rollback(&mut self, len: usize) -> s4::Result<()> {
        assert!(len <= self.history.len(), "rollback beyond length");
        self.history.truncate(len);
        Ok(())
    }
}

impl Verifier for Markov {
    fn vocab_size(&self) -> usize {
        self.table.nrows()
    }
    fn max_len(&self) -> Option<usize> {
        self.max_len
    }
    fn len(&self) -> usize {
        self.history.len()
    }
    fn score(&mut self, tokens: &[u32]) -> s4::Result<Array2<f32>> {
        self.check(tokens)?;
        self.history.extend_from_slice(tokens);
        let v = self.table.nrows();
        Ok(Array2::from_shape_fn((tokens.len(), v), |(i, j)| self.table[[tokens[i] as usize, j]]))
    }
    fn rollback(&mut self, len: usize) -> s4::Result<()> {
        assert!(len <= self.history.len(), "rollback beyond length");
        self.history.truncate(len);
        Ok(())
    }
}

/// Upper 1e-4 quantile of chi-square with `df` degrees of freedom (Wilson–Hilferty).
fn chi2_critical(df: usize) -> f64 {
    let d = df as f64;
    let z = 3.719; // standard normal 1 - 1e-4
    d * (1.0 - 2.0 / (9.0 * d) + z * (2.0 / (9.0 * d)).sqrt()).powi(3)
}

/// Pearson's statistic over the cells with expected probability > 0 (observed counts in cells
/// with probability 0 make it infinite) and its degrees of freedom.
fn chi2(counts: &[u64], probs: &[f64]) -> (f64, usize) {
    let n: u64 = counts.iter().sum();
    let mut stat = 0.0;
    let mut cells = 0;
    for (&o, &p) in counts.iter().zip(probs) {
        if p > 0.0 {
            let e = n as f64 * p;
            stat += (o as f64 - e).powi(2) / e;
            cells += 1;
        } else if o > 0 {
            return (f64::INFINITY, cells.max(2) - 1);
        }
    }
    (stat, cells - 1)
}

fn random_logits(v: usize, rng: &mut Pcg64) -> Vec<f32> {
    (0..v).map(|_| rng.random::<f32>() * 4.0 - 2.0).collect()
}

/// One speculative step (γ = 1) emits its first token from p, for random p and q, with several
/// warpings, including an arg-max draft treated as a point mass.
#[test]
fn one_step_follows_the_verifier_chi_square() {
    let n = 200_000;
    let mut rng = Pcg64::seed_from_u64(7);
    let warps = [
        (Sampling::default(), false),
        (Sampling { temperature: 0.6, ..Default::default() }, false),
        (Sampling { temperature: 1.3, top_k: Some(4), top_p: None }, false),
        (Sampling { temperature: 1.0, top_k: None, top_p: Some(0.8) }, false),
        (Sampling::default(), true),
    ];
    for (case, &(warp, argmax_draft)) in warps.iter().enumerate() {
        for v in [2usize, 5, 8] {
            let p_logits = random_logits(v, &mut rng);
            let q_logits = random_logits(v, &mut rng);
            let bonus = random_logits(v, &mut rng);
            let p = warp.probs(&p_logits).unwrap();
            let q_warp = if argmax_draft { Sampling::greedy() } else { warp };
            let q = q_warp.probs(&q_logits).unwrap();
            let p_bonus = warp.probs(&bonus).unwrap();
            let mut counts = vec![0u64; v];
            let mut accepted = 0u64;
            for _ in 0..n {
                let x = sample(&q, &mut rng);
                let o =
                    verify::rejection_sampling(&[p.clone(), p_bonus.clone()], std::slice::from_ref(&q), &[x], &mut rng)
                        .unwrap();
                let first = if o.accepted == 1 { x } else { o.next };
                accepted += o.accepted as u64;
                counts[first as usize] += 1;
            }
            let (stat, df) = chi2(&counts, &p);
            let beta: f64 = p.iter().zip(&q).map(|(a, b)| a.min(*b)).sum();
            let alpha = accepted as f64 / n as f64;
            println!(
                "case {case} V={v}: chi2 {stat:.1} (df {df}, critical {:.1}), alpha {alpha:.4} vs 1-TV {beta:.4}",
                chi2_critical(df.max(1))
            );
            if df > 0 {
                assert!(stat < chi2_critical(df), "case {case} V={v}: chi2 {stat} >= {}", chi2_critical(df));
            }
            assert!((alpha - beta).abs() < 5.0 * (beta * (1.0 - beta) / n as f64).sqrt() + 1e-9);
        }
    }
}

/// The same test has the power to see a 1% bias: the classic bug (arg-max draft, but the ratio
/// uses the softmax q; Hugging Face #32867) fails it.
#[test]
fn chi_square_detects_the_softmax_q_bug() {
    let n = 200_000;
    let mut rng = Pcg64::seed_from_u64(11);
    let v = 5;
    let p = Sampling::default().probs(&random_logits(v, &mut rng)).unwrap();
    let q_logits = random_logits(v, &mut rng);
    let q_soft = Sampling::default().probs(&q_logits).unwrap();
    let x = s4::speculative::sampling::argmax(&q_logits) as u32;
    let mut counts = vec![0u64; v];
    for _ in 0..n {
        let o =
            verify::rejection_sampling(&[p.clone(), p.clone()], std::slice::from_ref(&q_soft), &[x], &mut rng).unwrap();
        counts[if o.accepted == 1 { x } else { o.next } as usize] += 1;
    }
    let (stat, df) = chi2(&counts, &p);
    println!("buggy sampler: chi2 {stat:.0} (critical {:.1})", chi2_critical(df));
    assert!(stat > 10.0 * chi2_critical(df));
}

/// Exact joint distribution of the next `len` tokens of a warped Markov chain after `last`.
fn markov_joint(m: &Markov, warp: &Sampling, last: u32, len: usize) -> Vec<f64> {
    let v = m.table.nrows();
    let rows: Vec<Vec<f64>> = (0..v).map(|t| warp.probs(&m.row(t as u32)).unwrap()).collect();
    let mut joint = vec![1.0; 1];
    let mut lasts = vec![last];
    for _ in 0..len {
        let mut next = Vec::with_capacity(joint.len() * v);
        let mut next_last = Vec::with_capacity(joint.len() * v);
        for (pj, &l) in joint.iter().zip(&lasts) {
            for t in 0..v {
                next.push(pj * rows[l as usize][t]);
                next_last.push(t as u32);
            }
        }
        joint = next;
        lasts = next_last;
    }
    joint
}

/// Whole generations through the loop (draft rollback, bonus token, verifier rollback): the
/// joint frequencies of 3 generated tokens match the verifier's exact joint, for γ = 1, 2, 4 and
/// adaptive γ, at temperature 1 and with top-k.
#[test]
fn joint_sequences_follow_the_verifier_chi_square() {
    let v = 4;
    let len = 3;
    let verifier0 = Markov::random(v, 1, 1.0);
    let drafter0 = Markov::random(v, 2, 1.0);
    let runs = 40_000;
    let cases = [
        (GammaPolicy::Fixed(1), Sampling::default()),
        (GammaPolicy::Fixed(2), Sampling::default()),
        (GammaPolicy::Fixed(4), Sampling::default()),
        (
            GammaPolicy::Heuristic { initial: 1, min: 1, max: 4 },
            Sampling { temperature: 0.8, top_k: Some(3), top_p: None },
        ),
    ];
    for (gamma, warp) in cases {
        let cfg = SpecConfig { gamma, sampling: warp, max_new: len, ..Default::default() };
        check_joint(&format!("{gamma:?}, {warp:?}"), &verifier0, &drafter0, &cfg, runs, false);
    }
}

/// Generates `cfg.max_new` tokens after [0, 3] with seeds 0 .. `runs` and checks the joint
/// frequencies against the verifier's exact joint by chi-square. With `carry` every run starts
/// from the [`Calibration`] of the runs before it (each run is still drawn from the verifier's
/// joint given its start, so the counts are a multinomial sample all the same).
fn check_joint(label: &str, verifier0: &Markov, drafter0: &Markov, cfg: &SpecConfig, runs: u64, carry: bool) {
    let v = verifier0.table.nrows();
    let len = cfg.max_new;
    let expected = markov_joint(verifier0, &cfg.sampling, 3, len);
    let mut counts = vec![0u64; v.pow(len as u32)];
    let (mut ver, mut dr) = (verifier0.clone(), drafter0.clone());
    let mut accepted = 0;
    let mut calibration = Calibration::default();
    for seed in 0..runs {
        if !carry {
            calibration = Calibration::default();
        }
        let cfg = SpecConfig { seed, ..cfg.clone() };
        let g = speculate_with(&mut dr, &mut ver, &[0, 3], &cfg, &mut calibration).unwrap();
        assert_eq!(g.tokens.len(), len);
        accepted += g.stats.accepted;
        counts[g.tokens.iter().fold(0usize, |acc, &t| acc * v + t as usize)] += 1;
    }
    let (stat, df) = chi2(&counts, &expected);
    println!("{label}: chi2 {stat:.1} (df {df}, critical {:.1}); accepted {accepted}", chi2_critical(df));
    assert!(stat < chi2_critical(df), "{label}: chi2 {stat}");
}

#[test]
fn greedy_is_the_verifiers_own_greedy_decoding_markov() {
    for seed in 0..50u64 {
        let mut ver = Markov::random(7, 100 + seed, 2.0);
        let mut dr = Markov::random(7, 200 + seed, 2.0);
        // a drafter that is often right: mix the verifier's table in
        dr.table = &dr.table * 0.3 + &ver.table;
        let prompt: Vec<u32> = (0..1 + seed as usize % 4).map(|i| ((seed as usize + i) % 7) as u32).collect();
        for gamma in [GammaPolicy::Fixed(1), GammaPolicy::Fixed(3), GammaPolicy::Auto { max: 6 }] {
            let cfg = SpecConfig { gamma, sampling: Sampling::greedy(), max_new: 30, seed, ..Default::default() };
            let spec = speculate(&mut dr, &mut ver, &prompt, &cfg).unwrap();
            let base = generate(&mut ver, &prompt, &cfg).unwrap();
            assert_eq!(spec.tokens, base.tokens, "seed {seed} {gamma:?}");
        }
    }
}

#[test]
fn self_drafting_accepts_everything_markov() {
    let ver0 = Markov::random(6, 5, 1.0);
    for warp in
        [Sampling::greedy(), Sampling::default(), Sampling { temperature: 0.7, top_k: Some(3), top_p: Some(0.9) }]
    {
        let (mut ver, mut dr) = (ver0.clone(), ver0.clone());
        let cfg = SpecConfig { gamma: GammaPolicy::Fixed(4), sampling: warp, max_new: 200, ..Default::default() };
        let g = speculate(&mut dr, &mut ver, &[1, 2], &cfg).unwrap();
        assert_eq!(g.stats.accepted, g.stats.drafted, "{warp:?}");
        assert_eq!(g.stats.tau, 5.0);
    }
}

#[test]
fn bad_input_is_an_error() {
    let mut ver = Markov { max_len: Some(10), ..Markov::random(5, 1, 1.0) };
    let mut dr = Markov::random(5, 2, 1.0);
    let cfg = SpecConfig { max_new: 4, ..Default::default() };
    let msg = |r: s4::Result<s4::speculative::Generation>| r.unwrap_err().to_string();
    assert!(msg(speculate(&mut dr, &mut ver, &[], &cfg)).contains("prompt"));
    assert!(msg(speculate(&mut dr, &mut ver, &[1, 9], &cfg)).contains("prompt[1]"));
    assert!(msg(speculate(&mut dr, &mut ver, &[1; 11], &cfg)).contains("context"));
    assert!(msg(speculate(&mut dr, &mut ver, &[1; 8], &cfg)).contains("max_new"));
    let g0 = SpecConfig { gamma: GammaPolicy::Fixed(0), ..cfg.clone() };
    assert!(msg(speculate(&mut dr, &mut ver, &[1], &g0)).contains("gamma"));
    let mut other = Markov::random(6, 3, 1.0);
    assert!(msg(speculate(&mut other, &mut ver, &[1], &cfg)).contains("vocabulary"));
    let t = SpecConfig { sampling: Sampling { temperature: f64::NAN, ..Default::default() }, ..cfg.clone() };
    assert!(msg(speculate(&mut dr, &mut ver, &[1], &t)).contains("temperature"));
    let typ = SpecConfig { acceptance: Acceptance::Typical { epsilon: 0.0, delta: 0.3 }, ..cfg };
    assert!(msg(speculate(&mut dr, &mut ver, &[1], &typ)).contains("typical"));
}

fn tiny_gpt(vocab: usize, seed: u64) -> Gpt<f32> {
    let cfg = GptConfig { vocab_size: vocab, n_positions: 96, n_embd: 32, n_layer: 2, n_head: 4, ..Default::default() };
    Gpt::new(cfg, seed).unwrap()
}

fn tiny_s4_lm(vocab: usize, seed: u64) -> s4::model::S4Model<f32> {
    let mut cfg = S4ModelConfig::causal_lm(vocab);
    cfg.n_layers = 2;
    cfg.layer.d_model = 32;
    cfg.layer.d_state = 16;
    cfg.seed = seed;
    cfg.build().unwrap()
}

/// Distillation runs on the shared training loop: interrupted after one round and resumed, it
/// ends with the uninterrupted run's draft weights and acceptance estimates, bit for bit.
#[test]
fn distillation_resumes_exactly() {
    use s4::speculative::distill::{distill, distill_run, DistillConfig};
    use s4::train::{OptimConfig, RunOptions};
    let teacher = tiny_gpt(12, 3);
    let text: Vec<u32> = (0..400u32).map(|i| (i * i + 3 * i) % 12).collect();
    let cfg = DistillConfig {
        steps: 6,
        batch_size: 4,
        window: 12,
        generated: 4,
        prompt_len: 4,
        eval_windows: 4,
        eval_every: 3,
        optim: OptimConfig { lr: 1e-2, weight_decay: 0.0, ..Default::default() },
        ..Default::default()
    };
    let mut whole = tiny_s4_lm(12, 5);
    let w = distill(&mut whole, &teacher, &text[..300], &text[300..], &cfg, false).unwrap();
    let out = std::env::temp_dir().join(format!("s4-distill-resume-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&out);
    let mut part = tiny_s4_lm(12, 5);
    let stop = RunOptions { stop_after: Some(1), ..Default::default() };
    distill_run(&mut part, &teacher, &text[..300], &text[300..], &cfg, Some(&out), &stop).unwrap();
    let mut resumed = tiny_s4_lm(12, 5);
    let resume = RunOptions { resume: true, ..Default::default() };
    let r = distill_run(&mut resumed, &teacher, &text[..300], &text[300..], &cfg, Some(&out), &resume).unwrap();
    assert_eq!(r.rounds, w.rounds);
    use s4::nn::params::Parameters;
    let bits = |m: &mut s4::model::S4Model<f32>| -> Vec<u32> {
        m.parameters_mut().into_iter().flat_map(|t| t.values.iter().map(|v| v.to_bits()).collect::<Vec<_>>()).collect()
    };
    assert_eq!(bits(&mut resumed), bits(&mut whole), "resumed draft differs from the uninterrupted run");
    assert!(out.join("metrics.jsonl").exists() && out.join("curves.png").exists());
    std::fs::remove_dir_all(&out).unwrap();
}

/// Both arithmetics of the verifier's products, each with seeds 0..n.
fn matmuls_and_seeds(n: u64) -> impl Iterator<Item = (MatmulPrecision, u64)> {
    [MatmulPrecision::Highest, MatmulPrecision::Medium].into_iter().flat_map(move |m| (0..n).map(move |s| (m, s)))
}

/// Greedy identity with the real model pair: an S4 drafter and a transformer verifier (random
/// weights; the verifier's logits are sharpened by its large init so that greedy paths vary).
#[test]
fn greedy_identity_s4_draft_transformer_verifier() {
    let v = 24;
    let mut gpt = tiny_gpt(v, 3);
    let lm = tiny_s4_lm(v, 4);
    // both arithmetics of the verifier's products: with bf16 products the output is that verifier's
    for (matmul, seed) in matmuls_and_seeds(10) {
        gpt.set_matmul_precision(matmul).unwrap();
        let mut rng = Pcg64::seed_from_u64(seed);
        let prompt: Vec<u32> = (0..1 + rng.random_range(0..12)).map(|_| rng.random_range(0..v as u32)).collect();
        for gamma in [GammaPolicy::Fixed(1), GammaPolicy::Fixed(4), GammaPolicy::Auto { max: 8 }] {
            let cfg = SpecConfig { gamma, sampling: Sampling::greedy(), max_new: 40, seed, ..Default::default() };
            let mut ver = GptSession::new(&gpt);
            let mut dr = S4Session::new(&lm, 16).unwrap();
            let spec = speculate(&mut dr, &mut ver, &prompt, &cfg).unwrap();
            let base = generate(&mut GptSession::new(&gpt), &prompt, &cfg).unwrap();
            assert_eq!(spec.tokens, base.tokens, "seed {seed} {gamma:?} {matmul:?}");
        }
    }
}

#[test]
fn self_drafting_transformer_and_s4() {
    let v = 16;
    let gpt = tiny_gpt(v, 8);
    let lm = tiny_s4_lm(v, 9);
    for warp in [Sampling::greedy(), Sampling::default()] {
        let cfg = SpecConfig { gamma: GammaPolicy::Fixed(3), sampling: warp, max_new: 40, ..Default::default() };
        let g = speculate(&mut GptSession::new(&gpt), &mut GptSession::new(&gpt), &[1, 2, 3], &cfg).unwrap();
        assert_eq!(g.stats.accepted, g.stats.drafted, "transformer {warp:?}: {:?}", g.stats);
        let g = speculate(&mut S4Session::new(&lm, 8).unwrap(), &mut S4Session::new(&lm, 8).unwrap(), &[1, 2, 3], &cfg)
            .unwrap();
        assert_eq!(g.stats.accepted, g.stats.drafted, "s4 {warp:?}: {:?}", g.stats);
    }
}

/// After a rejection, the S4 drafter's state equals a fresh run over the kept prefix (bit for
/// bit), and the transformer's cache gives the logits of a fresh prefill.
#[test]
fn rollback_equals_a_fresh_run() {
    let v = 20;
    let lm = tiny_s4_lm(v, 12);
    let gpt = tiny_gpt(v, 13);
    let prompt = [3u32, 1, 4, 1, 5];
    let drafted = [9u32, 2, 6, 5, 3];
    for keep in 0..drafted.len() {
        let mut s = S4Session::new(&lm, 8).unwrap();
        Drafter::extend(&mut s, &prompt).unwrap();
        Drafter::extend(&mut s, &drafted[..1]).unwrap();
        Drafter::extend(&mut s, &drafted[1..]).unwrap();
        Drafter::rollback(&mut s, prompt.len() + keep).unwrap();
        let mut fresh = S4Session::new(&lm, 8).unwrap();
        Drafter::extend(&mut fresh, &prompt).unwrap();
        for &t in &drafted[..keep] {
            Drafter::extend(&mut fresh, &[t]).unwrap();
        }
        assert_eq!(s.state(), fresh.state(), "keep {keep}");
        assert_eq!(Drafter::extend(&mut s, &[7]).unwrap(), Drafter::extend(&mut fresh, &[7]).unwrap());

        let mut g = GptSession::new(&gpt);
        // a reservation beyond the context is capped at it, and changes no result
        g.reserve(usize::MAX);
        g.score(&prompt).unwrap();
        g.score(&drafted).unwrap();
        Verifier::rollback(&mut g, prompt.len() + keep).unwrap();
        assert_eq!(Verifier::len(&g), prompt.len() + keep);
        let next = g.score(&[7]).unwrap();
        let mut all: Vec<u32> = prompt.to_vec();
        all.extend_from_slice(&drafted[..keep]);
        all.push(7);
        let mut f = GptSession::new(&gpt);
        let fresh_logits = f.score(&all).unwrap();
        let diff =
            next.row(0).iter().zip(fresh_logits.row(all.len() - 1)).map(|(a, b)| (a - b).abs()).fold(0.0f32, f32::max);
        assert!(diff < 1e-5, "keep {keep}: {diff}");
    }
    // rolling back further than the window is an error, not a wrong state
    let mut s = S4Session::new(&lm, 2).unwrap();
    Drafter::extend(&mut s, &prompt).unwrap();
    Drafter::extend(&mut s, &drafted).unwrap();
    assert!(Drafter::rollback(&mut s, prompt.len()).is_err());
    // after a commit, rollbacks reach the committed length but not below it
    let mut s = S4Session::new(&lm, 8).unwrap();
    Drafter::extend(&mut s, &prompt).unwrap();
    s.commit(prompt.len());
    Drafter::extend(&mut s, &drafted).unwrap();
    assert!(Drafter::rollback(&mut s, prompt.len() - 1).is_err());
    Drafter::rollback(&mut s, prompt.len()).unwrap();
    let mut fresh = S4Session::new(&lm, 8).unwrap();
    Drafter::extend(&mut fresh, &prompt).unwrap();
    assert_eq!(s.state(), fresh.state());
}

#[test]
fn batch_equals_one_by_one() {
    let v = 16;
    let gpt = tiny_gpt(v, 21);
    let lm = tiny_s4_lm(v, 22);
    let prompts: Vec<Vec<u32>> = (0..5).map(|i| vec![i as u32 + 1, 3, i as u32 + 2]).collect();
    let cfg = SpecConfig { gamma: GammaPolicy::Fixed(3), max_new: 20, seed: 5, ..Default::default() };
    let batch = speculate_batch(|| Ok((S4Session::new(&lm, 8)?, GptSession::new(&gpt))), &prompts, &cfg).unwrap();
    for (i, p) in prompts.iter().enumerate() {
        let one = speculate(
            &mut S4Session::new(&lm, 8).unwrap(),
            &mut GptSession::new(&gpt),
            p,
            &SpecConfig { seed: 5 + i as u64, ..cfg.clone() },
        )
        .unwrap();
        assert_eq!(batch[i].tokens, one.tokens);
    }
}

// ---------------------------------------------------------------------------------------------
// Token trees

fn shapes() -> Vec<TreeShape> {
    ["1x1x1", "3", "2x2", "3x2x1", "4x2x2x1,budget=9", "budget=12"].iter().map(|s| s.parse().unwrap()).collect()
}

/// Greedy tree decoding is token for token the verifier's greedy decoding: Markov pairs of every
/// quality, several static and dynamic shapes.
#[test]
fn greedy_tree_is_the_verifiers_greedy_decoding_markov() {
    for seed in 0..30u64 {
        let mut ver = Markov::random(7, 300 + seed, 2.0);
        let mut dr = Markov::random(7, 400 + seed, 2.0);
        dr.table = &dr.table * (0.2 + 0.1 * (seed % 5) as f32) + &ver.table;
        let prompt: Vec<u32> = (0..1 + seed as usize % 4).map(|i| ((seed as usize + 2 * i) % 7) as u32).collect();
        let base = generate(
            &mut ver,
            &prompt,
            &SpecConfig { sampling: Sampling::greedy(), max_new: 30, ..Default::default() },
        )
        .unwrap();
        for tree in shapes() {
            let cfg = SpecConfig {
                tree: Some(tree.clone()),
                sampling: Sampling::greedy(),
                max_new: 30,
                seed,
                ..Default::default()
            };
            let spec = speculate(&mut dr, &mut ver, &prompt, &cfg).unwrap();
            assert_eq!(spec.tokens, base.tokens, "seed {seed} tree {tree}");
            // without the fall-back to plain decoding every round drafts
            let always = speculate(&mut dr, &mut ver, &prompt, &SpecConfig { fallback: false, ..cfg }).unwrap();
            assert_eq!(always.tokens, base.tokens, "seed {seed} tree {tree}");
            assert!(always.stats.tree_nodes >= always.stats.rounds && always.stats.rounds > 0);
        }
    }
}

/// The same with the real pair: an S4 drafter forking its state and a transformer verifier with
/// tree attention and KV-cache compaction.
#[test]
fn greedy_tree_identity_s4_draft_transformer_verifier() {
    let v = 24;
    let mut gpt = tiny_gpt(v, 3);
    let lm = tiny_s4_lm(v, 4);
    for (matmul, seed) in matmuls_and_seeds(6) {
        gpt.set_matmul_precision(matmul).unwrap();
        let mut rng = Pcg64::seed_from_u64(seed);
        let prompt: Vec<u32> = (0..1 + rng.random_range(0..12)).map(|_| rng.random_range(0..v as u32)).collect();
        let greedy = SpecConfig { sampling: Sampling::greedy(), max_new: 40, seed, ..Default::default() };
        let base = generate(&mut GptSession::new(&gpt), &prompt, &greedy).unwrap();
        for tree in shapes() {
            let cfg = SpecConfig { tree: Some(tree.clone()), fallback: false, ..greedy.clone() };
            let mut ver = GptSession::new(&gpt);
            let spec = speculate(&mut S4Session::new(&lm, 16).unwrap(), &mut ver, &prompt, &cfg).unwrap();
            assert_eq!(spec.tokens, base.tokens, "seed {seed} tree {tree} {matmul:?}");
            // the cache was made room for at the start and no pass grew it: a tree scores no more
            // nodes than tokens are still wanted, as a chain drafts no more
            let reserved = (prompt.len() + cfg.max_new).min(gpt.config().n_positions);
            assert_eq!(ver.cache().capacity(), reserved.max(16), "seed {seed} tree {tree}");
        }
    }
    // self-drafting with a tree: the verifier's own arg-max is always the first child
    let cfg = SpecConfig {
        tree: Some("3x2x1x1".parse().unwrap()),
        sampling: Sampling::greedy(),
        max_new: 30,
        ..Default::default()
    };
    let g =
        speculate(&mut S4Session::new(&lm, 8).unwrap(), &mut S4Session::new(&lm, 8).unwrap(), &[1, 2], &cfg).unwrap();
    assert!(g.stats.acceptance_by_depth.iter().all(|&a| a == 1.0), "{:?}", g.stats);
    // a dynamic tree whose first choices are always kept becomes the chain of its budget, deeper
    // than any fixed depth limit
    // (the verifier's session keeps the snapshots of a round of 17 positions)
    let cfg = SpecConfig { tree: Some("budget=16".parse().unwrap()), max_new: 60, fallback: false, ..cfg };
    let g =
        speculate(&mut S4Session::new(&lm, 8).unwrap(), &mut S4Session::new(&lm, 32).unwrap(), &[1, 2], &cfg).unwrap();
    assert_eq!(g.stats.acceptance_by_depth.len(), 16, "{:?}", g.stats);
    assert!(g.stats.acceptance_by_depth.iter().all(|&a| a == 1.0), "{:?}", g.stats);
}

/// [`CausalModel::logits`] (one pass from position 0) equals the decoding sessions' logits
/// position by position: an S4 model's convolutional mode against its recurrent steps, a
/// transformer's full pass against its KV-cached pass; an empty input and an id ≥ V are errors.
#[test]
fn causal_model_logits_equal_the_decoding_sessions() {
    let v = 24;
    let tokens: Vec<u32> = (0..20).map(|i| (i * 7 % v) as u32).collect();
    let ids = ndarray::ArrayView2::from_shape((1, 20), &tokens).unwrap();
    for m in [CausalModel::Gpt(Box::new(tiny_gpt(v, 3))), CausalModel::S4(Box::new(tiny_s4_lm(v, 4)))] {
        let logits = m.logits(ids).unwrap();
        assert_eq!(logits.shape(), &[1, 20, v]);
        let stepped = m.verifier().unwrap().score(&tokens).unwrap();
        let d =
            logits.index_axis(ndarray::Axis(0), 0).iter().zip(&stepped).fold(0.0f32, |a, (x, y)| a.max((x - y).abs()));
        assert!(d < 1e-4, "{d:e}");
        let empty = m.logits(ndarray::ArrayView2::from_shape((1, 0), &[]).unwrap()).unwrap_err().to_string();
        assert!(empty.contains("token ids"), "{empty}");
        let bad = m.logits(ndarray::ArrayView2::from_shape((1, 1), &[v as u32]).unwrap()).unwrap_err().to_string();
        assert!(bad.contains("24") && bad.contains("position 0"), "{bad}");
    }
}

/// The first emitted token of one tree round follows the verifier's p: random p and q, trees of
/// several shapes, candidates drawn without replacement or taken deterministically (top-k).
#[test]
fn tree_one_step_follows_the_verifier_chi_square() {
    let n = 60_000;
    let v = 6;
    for (case, (shape, argmax)) in [("3", false), ("2x2", false), ("4x1", true), ("budget=5", false)].iter().enumerate()
    {
        let shape: TreeShape = shape.parse().unwrap();
        let mut rng = Pcg64::seed_from_u64(70 + case as u64);
        let ver = Markov::random(v, 80 + case as u64, 1.0);
        let dr = Markov::random(v, 90 + case as u64, 1.0);
        let p0 = Sampling::default().probs(&ver.row(2)).unwrap();
        let mut counts = vec![0u64; v];
        for _ in 0..n {
            let mut d = dr.clone();
            let tree = draft_tree(&mut d, &[2], &shape, &Sampling::default(), *argmax, None, &mut rng).unwrap();
            let mut p = vec![p0.clone()];
            p.extend(tree.tokens.iter().map(|&t| Sampling::default().probs(&ver.row(t)).unwrap()));
            let o = verify_tree(&tree, &p, &mut rng).unwrap();
            counts[o.path.first().map_or(o.next, |&i| tree.tokens[i]) as usize] += 1;
        }
        let (stat, df) = chi2(&counts, &p0);
        println!("tree {shape} (deterministic {argmax}): chi2 {stat:.1} (df {df}, critical {:.1})", chi2_critical(df));
        assert!(stat < chi2_critical(df), "tree {shape}: chi2 {stat}");
    }
}

/// The measured acceptance odds start at the draft's own confidence, move with the chances the
/// verifier's distributions give the children, and decide the tree: a confident first choice that
/// the verifier keeps less than half the time earns a sibling, where the draft's own probabilities
/// would have gone deeper.
#[test]
fn acceptance_odds_calibrate_the_draft_and_shape_the_tree() {
    let mut dr = Markov::random(3, 0, 0.0);
    // after token 0 the draft is sure of token 1 (q ≈ 0.9993); after 1 or 2 it is uniform
    dr.table.row_mut(0).assign(&ndarray::arr1(&[0.0, 8.0, 0.0]));
    let greedy = Sampling::greedy();
    let mut rng = Pcg64::seed_from_u64(0);
    let mut odds = AcceptanceOdds::default();
    assert!((odds.rate(2, 0.4) - 0.4).abs() < 1e-12, "no trials: the draft's confidence");
    let two = draft_tree(&mut dr.clone(), &[0], &"2".parse().unwrap(), &greedy, true, None, &mut rng).unwrap();
    assert_eq!(two.tokens, vec![1, 0], "the two most likely, the smaller id first on a tie");
    // the verifier keeps token 1 with probability 0.4; after its rejection (0.6), token 0 with
    // 0.3 / 0.6
    let p = vec![vec![0.3, 0.4, 0.3]; 3];
    for _ in 0..5 {
        odds.record(&two, &p).unwrap();
    }
    assert!(odds.record(&two, &p[..2]).is_err(), "one distribution per node and the root");
    // the bin's counts (tried 5, kept 2 at rank 0; tried 3, kept 1.5 at rank 1), with the rank's
    // pooled rate (itself from the confidence) as prior
    let q1 = two.values[0];
    assert!(q1 > 0.999);
    let pooled = (2.0 + 2.0 * q1) / 7.0;
    assert!((odds.rate(0, q1) - (2.0 + 2.0 * pooled) / 7.0).abs() < 1e-12);
    let q2 = two.values[1];
    let pooled = (1.5 + 2.0 * q2) / 5.0;
    assert!((odds.rate(1, q2) - (1.5 + 2.0 * pooled) / 5.0).abs() < 1e-12);
    // another bin of a counted rank starts from the rank's rate
    assert!((odds.rate(0, 0.5) - (2.0 + 1.0) / 7.0).abs() < 1e-12);
    let shape: TreeShape = "2x1,budget=2".parse().unwrap();
    let by_draft = draft_tree(&mut dr.clone(), &[0], &shape, &greedy, true, None, &mut rng).unwrap();
    assert_eq!(by_draft.parents, vec![None, Some(0)], "the draft alone goes deep");
    let by_odds = draft_tree(&mut dr.clone(), &[0], &shape, &greedy, true, Some(&odds), &mut rng).unwrap();
    assert_eq!(by_odds.parents, vec![None, None], "measured odds give the first choice a sibling");
    assert!((by_odds.values[0] - odds.rate(0, q1)).abs() < 1e-12);
    assert!((by_odds.values[1] - (1.0 - odds.rate(0, q1)) * odds.rate(1, q2)).abs() < 1e-12);
}

/// A [`Calibration`] carries a tree's acceptance odds from one generation to the next under one
/// setting: self-drafting, where every first choice is kept, a second greedy generation starts from
/// odds that already know it and drafts its first round as the chain of its budget (a fresh one
/// starts from the draft's confidence and spends nodes on siblings), with output the verifier's
/// own. Another setting (a chain, other sampling) starts it afresh.
#[test]
fn calibration_carries_tree_odds_between_generations() {
    let mut ver = Markov::random(7, 11, 1.0);
    let mut dr = ver.clone();
    let greedy = SpecConfig {
        tree: Some("budget=6".parse().unwrap()),
        sampling: Sampling::greedy(),
        max_new: 7,
        fallback: false,
        ..Default::default()
    };
    let prompt = [2u32, 5];
    let base = generate(&mut ver, &prompt, &greedy).unwrap();
    let mut calibration = Calibration::default();
    let fresh = speculate_with(&mut dr, &mut ver, &prompt, &greedy, &mut calibration).unwrap();
    let carried = speculate_with(&mut dr, &mut ver, &prompt, &greedy, &mut calibration).unwrap();
    assert_eq!(fresh.tokens, base.tokens);
    assert_eq!(carried.tokens, base.tokens);
    assert_eq!(calibration.generations(), 2);
    assert!(fresh.stats.rounds > 1, "fresh odds spend the first round's nodes on siblings: {:?}", fresh.stats);
    assert_eq!(carried.stats.rounds, 1, "carried odds draft the chain of 6: {:?}", carried.stats);
    assert!(calibration.odds().rate(0, 0.3) > 0.9, "first choices are always kept");
    let chain = SpecConfig { tree: None, gamma: GammaPolicy::Fixed(3), ..greedy.clone() };
    let chained = speculate_with(&mut dr, &mut ver, &prompt, &chain, &mut calibration).unwrap();
    assert_eq!(chained.tokens, base.tokens);
    assert_eq!(calibration.generations(), 1, "another setting starts afresh");
    let other_seed = SpecConfig { seed: 9, max_new: 5, ..chain };
    speculate_with(&mut dr, &mut ver, &prompt, &other_seed, &mut calibration).unwrap();
    assert_eq!(calibration.generations(), 2, "the seed and the length are not part of the setting");
    let sampled = SpecConfig { sampling: Sampling::default(), ..greedy };
    speculate_with(&mut dr, &mut ver, &prompt, &sampled, &mut calibration).unwrap();
    assert_eq!(calibration.generations(), 1);
}

/// Power: SpecInfer's rule for candidates drawn independently (accept with min(1, p/q), residual
/// (p − q)₊, the same q for every sibling) applied to candidates drawn without replacement biases
/// the output, and the test sees it.
#[test]
fn tree_chi_square_detects_a_wrong_rule() {
    let n = 60_000;
    let v = 6;
    let mut rng = Pcg64::seed_from_u64(5);
    let ver = Markov::random(v, 6, 1.0);
    let dr = Markov::random(v, 7, 1.0);
    let p0 = Sampling::default().probs(&ver.row(1)).unwrap();
    let q = Sampling::default().probs(&dr.row(1)).unwrap();
    let shape: TreeShape = "3".parse().unwrap();
    let mut counts = vec![0u64; v];
    for _ in 0..n {
        let mut d = dr.clone();
        let tree = draft_tree(&mut d, &[1], &shape, &Sampling::default(), false, None, &mut rng).unwrap();
        let mut target = p0.clone();
        let mut emitted = None;
        for &x in &tree.tokens {
            if rng.random::<f64>() < target[x as usize] / q[x as usize] {
                emitted = Some(x);
                break;
            }
            target.iter_mut().zip(&q).for_each(|(t, qi)| *t = (*t - qi).max(0.0));
            let z: f64 = target.iter().sum();
            target.iter_mut().for_each(|t| *t /= z);
        }
        counts[emitted.unwrap_or_else(|| sample(&target, &mut rng)) as usize] += 1;
    }
    let (stat, df) = chi2(&counts, &p0);
    println!("independent-draw rule on draws without replacement: chi2 {stat:.0} (critical {:.1})", chi2_critical(df));
    assert!(stat > 10.0 * chi2_critical(df));
}

/// Whole generations with trees through the loop (state forks, KV compaction, pending leaves):
/// the joint frequencies of 3 generated tokens match the verifier's exact joint.
#[test]
fn tree_joint_sequences_follow_the_verifier_chi_square() {
    let v = 4;
    let len = 3;
    let verifier0 = Markov::random(v, 1, 1.0);
    let drafter0 = Markov::random(v, 2, 1.0);
    let runs = 30_000;
    // (shape, warping, arg-max draft, odds carried from run to run)
    let cases = [
        ("2x2", Sampling::default(), false, false),
        ("3x1", Sampling { temperature: 0.8, top_k: Some(3), top_p: None }, false, false),
        ("budget=6", Sampling::default(), false, false),
        ("budget=6", Sampling::default(), false, true),
        ("2x2", Sampling::default(), true, false),
    ];
    for (shape, warp, argmax, carry) in cases {
        let cfg = SpecConfig {
            tree: Some(shape.parse().unwrap()),
            sampling: warp,
            max_new: len,
            argmax_draft: argmax,
            fallback: false,
            ..Default::default()
        };
        let label = format!("tree {shape}, {warp:?}, argmax {argmax}, carried {carry}");
        check_joint(&label, &verifier0, &drafter0, &cfg, runs, carry);
    }
}

#[test]
fn tree_shapes_parse_and_bad_ones_are_errors() {
    let t: TreeShape = "4x2x2x1".parse().unwrap();
    assert_eq!((t.widths.clone(), t.budget, t.nodes()), (vec![4, 2, 2, 1], None, 4 + 8 + 16 + 16));
    assert_eq!(t.to_string(), "4x2x2x1");
    let d: TreeShape = "budget=32".parse().unwrap();
    assert_eq!((d.nodes(), d.to_string().parse::<TreeShape>().unwrap()), (32, d.clone()));
    for bad in ["", "4x0", "budget=0", "budget=x", "9x9x9x9", "a"] {
        let e = bad.parse::<TreeShape>().unwrap_err().to_string();
        assert!(e.contains("tree"), "{bad}: {e}");
    }
    let mut ver = Markov::random(5, 1, 1.0);
    let mut dr = Markov::random(5, 2, 1.0);
    let cfg = SpecConfig {
        tree: Some(t),
        acceptance: Acceptance::Typical { epsilon: 0.09, delta: 0.3 },
        max_new: 4,
        ..Default::default()
    };
    assert!(speculate(&mut dr, &mut ver, &[1], &cfg).unwrap_err().to_string().contains("typical"));
}

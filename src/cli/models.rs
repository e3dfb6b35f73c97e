//! Layers and models: import official checkpoints, describe and run saved folders.

use clap::{Args, Subcommand, ValueEnum};
use ndarray::{s, Array3, Ix2, Ix3};
use s4::io::{read_npy_any, write_npy_atomic, NpyArray};
use s4::layer::ForwardOptions;
use s4::model::checkpoint::{load_any, Saved};
use s4::model::{Input, StepInput};
use s4::scalar::HalfPrecision;
use s4::{Error, Result};
use serde_json::json;
use std::path::{Path, PathBuf};
use std::time::Instant;

#[derive(Subcommand, Debug)]
pub enum Command {
    /// Import an official PyTorch state dict (safetensors, e.g. from tools/convert_official.py) with
    /// its settings: an S4Block or S4D layer into a layer folder; example.py's whole S4Model
    /// ("module": "S4Model", its keyword arguments) or a training-repository checkpoint ("module":
    /// "SequenceModel", the Hydra config's model, encoder and decoder sections) into a model folder.
    ImportOfficial(ImportArgs),
    /// Export a model folder as an official state dict (safetensors, float32) and the settings that
    /// rebuild it: the training repository's SequenceModel under the names of a Lightning checkpoint
    /// (model.*, encoder.0.*, decoder.0.*), or example.py's S4Model; the official module loads it
    /// with `load_state_dict(strict=True)`. A part with no equivalent is refused by name.
    ExportOfficial(ExportArgs),
    /// Describe a folder s4 wrote, as JSON: a layer or model (S4, the transformer classifier, GPT-2:
    /// configuration, parameter count and, for DPLR layers, the length C-tilde is tied to), or a
    /// training run (settings, rounds done, last metrics, and its checkpoint).
    Info {
        /// The folder.
        dir: PathBuf,
    },
    /// Copy a model folder with its weights stored in 16 bits (half the file): a GPT-2 folder
    /// (every tensor) or an S4 model (every weight but the SSM dynamics Λ, P, B, Δ, which stay
    /// f32). Loading reads the rounded values back; prints JSON (sizes before and after).
    Convert(ConvertArgs),
    /// Run a saved layer or model on an input array (.npy) and write the output array (.npy).
    ///
    /// A layer takes (B, H, L) floats; a model takes (B, d_input, L) floats, or (B, L) integer token
    /// ids for an embedding model. `--layout blh` reads and writes (B, L, features) instead. Output:
    /// (B, H, L) for a layer, (B, d_output, L) for a model without pooling, (B, d_output, 1) with.
    #[command(allow_negative_numbers = true)]
    Run(RunArgs),
}

pub fn run(cmd: Command) -> Result<()> {
    match cmd {
        Command::ImportOfficial(a) => cmd_import(&a),
        Command::ExportOfficial(a) => cmd_export(&a),
        Command::Info { dir } => cmd_info(&dir),
        Command::Convert(a) => cmd_convert(&a),
        Command::Run(a) if a.f64 => cmd_run::<f64>(&a),
        Command::Run(a) => cmd_run::<f32>(&a),
    }
}

#[derive(Args, Debug)]
pub struct ImportArgs {
    /// The state dict as safetensors.
    model: PathBuf,
    /// JSON with the keyword arguments ({"module": ..., "kwargs": {...}} or the kwargs alone).
    #[arg(long)]
    config: PathBuf,
    /// Output folder (new or empty; see --force).
    #[arg(long)]
    out: PathBuf,
    /// Replace an --out folder that already holds files (the imported layer is written whole
    /// before the old folder is removed).
    #[arg(long)]
    force: bool,
}

#[derive(Args, Debug)]
pub struct ExportArgs {
    /// The model folder (`s4 train`'s checkpoint/, `import-official`, the library's `save`).
    dir: PathBuf,
    /// The state dict to write (safetensors).
    #[arg(long)]
    out: PathBuf,
    /// Where to write the settings (JSON: {"module": "SequenceModel", "model", "encoder", "decoder", …}
    /// or {"module": "S4Model", "kwargs": {...}}, where `d_state` is the S4D layers' state size).
    /// Default: the --out path with the extension .json.
    #[arg(long)]
    config_out: Option<PathBuf>,
    /// Replace existing output files.
    #[arg(long)]
    force: bool,
    /// The official module: `sequence-model` (the training repository's, any model this library
    /// builds with pooling) or `example` (example.py's S4Model: S4D layers, LayerNorm, no final norm).
    #[arg(long, value_enum, default_value_t = s4::model::official::OfficialTarget::SequenceModel)]
    to: s4::model::official::OfficialTarget,
}

#[derive(Args, Debug)]
pub struct ConvertArgs {
    /// The model folder (GPT-2 layout, or an S4 model).
    dir: PathBuf,
    /// Output folder (new or empty; see --force).
    #[arg(long)]
    out: PathBuf,
    /// The 16-bit format.
    #[arg(long, value_enum, default_value = "bf16")]
    weights: HalfPrecision,
    /// Replace an --out folder that already holds files (the copy is written whole before the old
    /// folder is removed).
    #[arg(long)]
    force: bool,
}

/// Array layout of `s4 run`'s input and output.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
enum Layout {
    /// (batch, features, time): the official module's default.
    Bhl,
    /// (batch, time, features).
    Blh,
}

/// How `s4 run` processes the sequence.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
enum Mode {
    /// Convolutional mode: whole sequences at once.
    Conv,
    /// Recurrent mode: one position at a time.
    Step,
}

#[derive(Args, Debug)]
pub struct RunArgs {
    /// The folder (from `s4 import-official`, or saved by the library).
    dir: PathBuf,
    /// Input .npy (float32, float64, or int32/int64 tokens).
    #[arg(long)]
    input: PathBuf,
    /// Output .npy.
    #[arg(long)]
    out: PathBuf,
    /// Array layout.
    #[arg(long, value_enum, default_value = "bhl")]
    layout: Layout,
    /// Processing mode.
    #[arg(long, value_enum, default_value = "conv")]
    mode: Mode,
    /// Per-sequence lengths (comma-separated; suffix padding).
    #[arg(long, value_delimiter = ',')]
    lengths: Option<Vec<usize>>,
    /// Run in float64 instead of float32.
    #[arg(long)]
    f64: bool,
    /// Mixed precision: round the weights (not the SSM dynamics) to bf16 or f16; the state and
    /// all accumulations stay f32.
    #[arg(long, value_enum)]
    weights: Option<HalfPrecision>,
}

fn cmd_import(a: &ImportArgs) -> Result<()> {
    let out = &a.out;
    let occupied = out.exists() && std::fs::read_dir(out).map_err(|e| s4::Error::io(out, e))?.next().is_some();
    if occupied && !a.force {
        return Err(s4::Error::invalid(
            "--out",
            out.display(),
            "a new or empty folder (it holds files; --force replaces it with the imported layer)",
        ));
    }
    let config: serde_json::Value = s4::io::read_json(&a.config)?;
    if let Some(official) = s4::model::official::OfficialModel::from_json(&config)? {
        let bytes = std::fs::read(&a.model).map_err(|e| Error::io(&a.model, e))?;
        let model = official.import::<f32>(&bytes, &a.model)?;
        s4::io::write_folder_whole(out, |d| s4::model::checkpoint::save(&model, d))?;
        let c = model.config();
        println!(
            "{}",
            json!({"out": out, "format": "s4-model", "from": official.name(), "n_layers": c.n_layers,
                   "d_model": c.d_model(), "kernel": c.layer.kernel.to_string(), "d_output": c.d_output})
        );
        return Ok(());
    }
    let layer = s4::layer::official::import_official_files::<f32>(&a.model, &a.config)?;
    // an occupied folder is replaced only once the imported layer is written whole beside it
    s4::io::write_folder_whole(out, |d| s4::model::checkpoint::save_layer(&layer, d))?;
    let cfg = layer.config();
    println!(
        "{}",
        json!({"out": out, "format": "s4-layer", "kernel": cfg.kernel.to_string(), "d_model": cfg.d_model,
               "d_state": cfg.d_state, "channels": cfg.channels, "bidirectional": cfg.bidirectional,
               "l_kernel": layer.weights().l_kernel})
    );
    Ok(())
}

fn cmd_convert(a: &ConvertArgs) -> Result<()> {
    let out = &a.out;
    let occupied = out.exists() && std::fs::read_dir(out).map_err(|e| Error::io(out, e))?.next().is_some();
    if occupied && !a.force {
        return Err(Error::invalid(
            "--out",
            out.display(),
            "a new or empty folder (it holds files; --force replaces it)",
        ));
    }
    let config: serde_json::Value = s4::io::read_json(&a.dir.join("config.json"))?;
    let p = Some(a.weights);
    let format = if config.get("model_type").and_then(|m| m.as_str()) == Some("gpt2") || config.get("n_embd").is_some()
    {
        let gpt = s4::transformer::Gpt::<f32>::load(&a.dir)?;
        s4::io::write_folder_whole(out, |d| gpt.save_as(d, p))?;
        "gpt2"
    } else {
        match load_any::<f32>(&a.dir)? {
            Saved::Model(m) => s4::io::write_folder_whole(out, |d| s4::model::checkpoint::save_as(&m, d, p))?,
            Saved::Layer(_) => {
                return Err(Error::invalid(
                    "model folder",
                    a.dir.display(),
                    "a model (GPT-2 or S4 model), not a layer",
                ));
            }
        }
        "s4-model"
    };
    let bytes = |d: &Path| std::fs::metadata(d.join("model.safetensors")).map(|m| m.len()).map_err(|e| Error::io(d, e));
    println!(
        "{}",
        json!({"out": out, "format": format, "weights": a.weights.name(),
               "bytes_before": bytes(&a.dir)?, "bytes_after": bytes(out)?})
    );
    Ok(())
}

fn cmd_export(a: &ExportArgs) -> Result<()> {
    let config_out = a.config_out.clone().unwrap_or_else(|| a.out.with_extension("json"));
    for path in [&a.out, &config_out] {
        if path.exists() && !a.force {
            return Err(Error::invalid(
                "output",
                path.display(),
                "a path that does not exist yet (--force replaces it)",
            ));
        }
    }
    let model: s4::model::S4Model<f32> = s4::model::checkpoint::load(&a.dir)?;
    let (bytes, official) = s4::model::official::export_official(&model, a.to)?;
    let config = official.to_json();
    s4::io::write_atomic(&a.out, &bytes)?;
    s4::io::write_atomic(&config_out, serde_json::to_string_pretty(&config).expect("JSON").as_bytes())?;
    println!("{}", json!({"out": a.out, "config_out": config_out, "settings": config}));
    Ok(())
}

fn layer_param_count<T>(w: &s4::layer::Weights<T>) -> usize {
    w.inv_dt.len()
        + w.a_real.len()
        + w.a_imag.len()
        + 2 * w.b.len()
        + 2 * w.p.as_ref().map_or(0, |p| p.len())
        + 2 * w.c.len()
        + w.d.len()
        + w.w.len()
        + w.bias.len()
}

fn cmd_info(dir: &Path) -> Result<()> {
    println!("{}", describe(dir)?);
    Ok(())
}

/// What `s4 info` prints about a folder: a layer or model folder (S4, the transformer classifier,
/// a GPT-2 folder), or a training run folder (`s4 train`, or the `run/` of `train-lm` and `distill`)
/// with its settings, progress and checkpoint.
fn describe(dir: &Path) -> Result<serde_json::Value> {
    use s4::model::checkpoint::{load_any, Saved, CONFIG_FILE};
    use s4::transformer::{classifier::FORMAT, Gpt, TransformerClassifier};
    if let Some(ckpt) = s4::train::trainer::checkpoint_dir(dir) {
        let metrics: Vec<serde_json::Value> = s4::train::trainer::read_metrics(dir)?;
        let settings: serde_json::Value = s4::io::read_json(&dir.join(CONFIG_FILE))?;
        return Ok(json!({"format": "run", "settings": settings, "rounds_done": metrics.len(),
                         "last": metrics.last(), "checkpoint": describe(&ckpt)?}));
    }
    let cpath = dir.join(CONFIG_FILE);
    if !cpath.exists() && dir.join("run").is_dir() {
        return describe(&dir.join("run")); // a train-lm or distill output folder before the end
    }
    let v: serde_json::Value = s4::io::read_json(&cpath)?;
    if v["format"] == FORMAT {
        let model = TransformerClassifier::<f32>::load(dir)?;
        return Ok(json!({"format": FORMAT, "config": model.config(), "parameters": model.num_params()}));
    }
    if v["model_type"] == "gpt2" {
        let model = Gpt::<f32>::load(dir)?;
        return Ok(json!({"format": "gpt2", "config": model.config(), "parameters": model.num_params()}));
    }
    if !matches!(v["format"].as_str(), Some("s4-layer" | "s4-model")) {
        return Err(Error::format(
            &cpath,
            format!(
                "unknown format {}: expected a folder written by s4 (s4-layer, s4-model, {FORMAT}, a GPT-2 folder, or a \
                 training run)",
                v.get("format").or_else(|| v.get("model_type")).unwrap_or(&serde_json::Value::Null)
            ),
        ));
    }
    Ok(match load_any::<f32>(dir)? {
        Saved::Layer(layer) => {
            json!({"format": "s4-layer", "config": layer.config(), "parameters": layer_param_count(layer.weights()),
                   "l_kernel": layer.weights().l_kernel})
        }
        Saved::Model(model) => {
            let mut params: usize =
                model.blocks().iter().map(|b| layer_param_count(b.layer.weights()) + 2 * b.norm.features()).sum();
            params += match model.encoder() {
                s4::model::Encoder::Linear { w, b } => w.len() + b.len(),
                s4::model::Encoder::Embedding { table } => table.len(),
            };
            params += model.final_norm().map_or(0, |n| 2 * n.features());
            let (w, b) = model.decoder();
            params += w.len() + b.len();
            let l_kernels: Vec<usize> = model.blocks().iter().map(|b| b.layer.weights().l_kernel).collect();
            json!({"format": "s4-model", "config": model.config(), "parameters": params, "l_kernel": l_kernels})
        }
    })
}

/// (B, L, F) <-> (B, F, L).
fn swap_last<T: Clone>(a: ndarray::Array3<T>) -> ndarray::Array3<T> {
    a.permuted_axes([0, 2, 1]).as_standard_layout().into_owned()
}

fn cmd_run<T: s4::scalar::Real + s4::io::npy::NpyElement>(a: &RunArgs) -> Result<()> {
    super::check_outputs(&[("--out", Some(&a.out))])?;
    let blh = a.layout == Layout::Blh;
    let step = a.mode == Mode::Step;
    let saved = match (load_any::<T>(&a.dir)?, a.weights) {
        (s, None) => s,
        (Saved::Layer(l), Some(p)) => Saved::Layer(l.with_half_weights(p)?),
        (Saved::Model(m), Some(p)) => Saved::Model(m.with_half_weights(p)?),
    };
    let raw = read_npy_any(&a.input)?;
    let floats = |raw: NpyArray| -> Result<Array3<T>> {
        let arr = match raw {
            NpyArray::F32(x) => x.mapv(|v| T::of(v as f64)),
            NpyArray::F64(x) => x.mapv(T::of),
            NpyArray::Int(_) => return Err(Error::format(&a.input, "expected a float array, got integers")),
        };
        let arr = arr
            .into_dimensionality::<Ix3>()
            .map_err(|_| Error::format(&a.input, "expected a 3-D array (B, features, L) or (B, L, features)"))?;
        Ok(if blh { swap_last(arr) } else { arr })
    };
    let lengths = a.lengths.as_deref();
    let t0 = Instant::now();
    let y: Array3<T> = match saved {
        Saved::Layer(layer) => {
            let x = floats(raw)?;
            if step {
                let rec = layer.recurrent()?;
                let (b, h, l) = x.dim();
                if b == 0 || l == 0 {
                    return Err(Error::invalid("input", format!("B = {b}, L = {l}"), "B, L >= 1"));
                }
                if let Some(ls) = lengths
                    && (ls.len() != b || ls.iter().any(|&n| n == 0 || n > l))
                {
                    return Err(Error::invalid("lengths", format!("{ls:?}"), format!("{b} lengths <= L = {l}")));
                }
                let mut st = rec.zero_state(b);
                let mut y = Array3::<T>::zeros((b, h, l));
                for t in 0..l {
                    let yt = rec.step(&mut st, x.slice(s![.., .., t]))?;
                    y.slice_mut(s![.., .., t]).assign(&yt);
                }
                if let Some(ls) = lengths {
                    for (i, &n) in ls.iter().enumerate() {
                        y.slice_mut(s![i, .., n..]).fill(T::zero());
                    }
                }
                y
            } else {
                let opts = ForwardOptions { lengths: a.lengths.clone(), ..Default::default() };
                layer.forward(x.view(), &opts)?.y
            }
        }
        Saved::Model(model) => {
            let tokens;
            let feats;
            let input = match raw {
                NpyArray::Int(t) => {
                    let t = t
                        .into_dimensionality::<Ix2>()
                        .map_err(|_| Error::format(&a.input, "token ids must be a 2-D (B, L) array"))?;
                    if let Some(((i, j), &bad)) = t.indexed_iter().find(|&(_, &v)| v < 0 || v > u32::MAX as i64) {
                        return Err(Error::invalid(format!("tokens[{i}, {j}]"), bad, "a non-negative token id"));
                    }
                    tokens = t.mapv(|v| v as u32);
                    Input::Tokens(tokens.view())
                }
                other => {
                    feats = floats(other)?;
                    Input::Features(feats.view())
                }
            };
            if step {
                let rec = model.recurrent()?;
                let (b, l) = match input {
                    Input::Tokens(t) => t.dim(),
                    Input::Features(f) => (f.shape()[0], f.shape()[2]),
                };
                if b == 0 || l == 0 {
                    return Err(Error::invalid("input", format!("B = {b}, L = {l}"), "B, L >= 1"));
                }
                if let Some(ls) = lengths
                    && (ls.len() != b || ls.iter().any(|&n| n == 0 || n > l))
                {
                    return Err(Error::invalid("lengths", format!("{ls:?}"), format!("{b} lengths in 1..={l}")));
                }
                let mut st = rec.zero_state(b);
                let mut y = Array3::<T>::zeros((b, model.config().d_output, l));
                for t in 0..l {
                    let col: Vec<u32>;
                    let yt = match input {
                        Input::Tokens(tok) => {
                            col = tok.column(t).to_vec();
                            rec.step(&mut st, StepInput::Tokens(&col))?
                        }
                        Input::Features(f) => rec.step(&mut st, StepInput::Features(f.slice(s![.., .., t])))?,
                    };
                    y.slice_mut(s![.., .., t]).assign(&yt);
                }
                if let Some(ls) = lengths {
                    for (i, &n) in ls.iter().enumerate() {
                        y.slice_mut(s![i, .., n..]).fill(T::zero());
                    }
                }
                y
            } else {
                model.forward(input, lengths)?
            }
        }
    };
    let secs = t0.elapsed().as_secs_f64();
    let y = if blh { swap_last(y) } else { y };
    write_npy_atomic(&a.out, &y)?;
    let (mode, layout) = (if step { "step" } else { "conv" }, if blh { "blh" } else { "bhl" });
    println!("{}", json!({"out": a.out, "shape": y.shape(), "mode": mode, "layout": layout, "seconds": secs}));
    Ok(())
}

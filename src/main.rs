//! The `s4` command line: HiPPO matrices, SSM kernels and the HiPPO memory demo, with numpy files
//! in and out and JSON on stdout. Run `s4 --help` or `s4 COMMAND --help`.

#[path = "cli/lm.rs"]
mod lm;

use clap::{Parser, Subcommand};
use ndarray::{Array2, Ix1, Ix2, Ix3};
use num_complex::Complex64;
use s4::discretize::Discretization;
use s4::hippo::memory::{evaluate, sweep, MemoryConfig, MemoryOperator};
use s4::hippo::{nplr, rank_correction, transition, Measure};
use s4::io::{NpzIn, NpzOut};
use s4::kernel::ssm_kernel;
use s4::plot::{memory_panels, write_png, Panel, Series};
use s4::ssm::{KernelKind, SsmInit, SsmInitConfig, SsmParams};
use s4::{Error, Result};
use serde_json::json;
use std::path::{Path, PathBuf};
use std::time::Instant;

#[derive(Parser, Debug)]
#[command(name = "s4", version, about = "Structured state-space sequence models (S4, S4D, HiPPO) in Rust")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    #[command(flatten)]
    Lm(lm::LmCommand),
    /// HiPPO matrices (A, B) and, with --dplr, their diagonal-plus-low-rank form.
    ///
    /// Writes A (N, N) and B (N,) float64; with --dplr also Lambda (N/2,), V (N, N/2), P_tilde (R, N/2)
    /// and B_tilde (N/2,) complex128, so that A = 2 Re(V diag(Lambda) V*) - sum_r P_r P_r^T. Without
    /// --out the arrays are printed as JSON (complex numbers as [re, im]).
    #[command(allow_negative_numbers = true)]
    Hippo {
        /// Measure: legs, legt, lagt or fout.
        #[arg(long)]
        measure: String,
        /// State size N.
        #[arg(long)]
        n: usize,
        /// Also compute the DPLR form (N must be even).
        #[arg(long)]
        dplr: bool,
        /// Output .npz file.
        #[arg(long)]
        out: Option<PathBuf>,
    },
    /// SSM convolution kernels, from a layer-style initialization or from a parameter file.
    ///
    /// Writes K (H, L) float64 and the parameters that produced it over the N/2 kept
    /// conjugate-pair representatives: Lambda (H, N/2), P (R, H, N/2) (DPLR only), B (H, N/2),
    /// C (H, N/2) complex128 (the continuous C, not C-tilde) and dt (H,) float64. The full state is the
    /// kept half plus its conjugates, A = diag(Lambda) - P P* on it, and K_l = C Abar^l Bbar summed over
    /// the full state. With --params FILE.npz the kernel is recomputed from a file of that layout
    /// (DPLR if it holds P). Prints a JSON summary.
    #[command(allow_negative_numbers = true)]
    Kernel(KernelArgs),
    /// Times the kernels and the FFT convolution and prints them side by side with the official
    /// PyTorch S4 on this machine kind (CPU, 2 threads; the team's performance anchor).
    ///
    /// Prints JSON on stdout (medians in ms, ratios official/ours, peak RSS) and a table on stderr.
    /// Criterion benchmarks with confidence intervals: `cargo bench`.
    #[command(allow_negative_numbers = true)]
    Bench {
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
    },
    /// Describe a saved layer or model folder (config.json + model.safetensors) as JSON: its
    /// configuration, parameter count and, for DPLR layers, the length C-tilde is tied to.
    Info {
        /// The folder.
        dir: PathBuf,
    },
    /// Run a saved layer or model on an input array (.npy) and write the output array (.npy).
    ///
    /// A layer takes (B, H, L) floats; a model takes (B, d_input, L) floats, or (B, L) integer token
    /// ids for an embedding model. `--layout blh` reads and writes (B, L, features) instead. Output:
    /// (B, H, L) for a layer, (B, d_output, L) for a model without pooling, (B, d_output, 1) with.
    #[command(allow_negative_numbers = true)]
    Run {
        /// The folder (from `s4 import-official`, or saved by the library).
        dir: PathBuf,
        /// Input .npy (float32, float64, or int32/int64 tokens).
        #[arg(long)]
        input: PathBuf,
        /// Output .npy.
        #[arg(long)]
        out: PathBuf,
        /// Array layout: bhl (batch, features, time; the official module's default) or blh.
        #[arg(long, default_value = "bhl")]
        layout: String,
        /// conv (whole sequences) or step (recurrent, one position at a time).
        #[arg(long, default_value = "conv")]
        mode: String,
        /// Per-sequence lengths (comma-separated; suffix padding).
        #[arg(long, value_delimiter = ',')]
        lengths: Option<Vec<usize>>,
        /// Run in float64 instead of float32.
        #[arg(long)]
        f64: bool,
        /// Mixed precision: round the weights (not the SSM dynamics) to bf16 or f16; the state and
        /// all accumulations stay f32.
        #[arg(long)]
        weights: Option<String>,
    },
    /// Import an official PyTorch S4Block / S4D state dict (safetensors, e.g. from
    /// tools/convert_official.py) with the constructor's keyword arguments into a layer folder.
    ImportOfficial {
        /// The state dict as safetensors.
        model: PathBuf,
        /// JSON with the keyword arguments ({"module": ..., "kwargs": {...}} or the kwargs alone).
        #[arg(long)]
        config: PathBuf,
        /// Output folder.
        #[arg(long)]
        out: PathBuf,
    },
    /// Trains an S4 model (or, with --arch transformer, the Transformer baseline of the Long Range
    /// Arena) on a long-range task and writes metrics, curves and checkpoints to --out.
    ///
    /// Tasks: listops (generated as LRA does, or the LRA TSVs with --data DIR), pathfinder (the
    /// 32x32 Pathfinder-style generator, or the LRA release with --data), adding (L = 1000),
    /// acsf1 (UCR ACSF1 from the sktime wheel in --data, default data/), digits (scikit-learn's
    /// digits from the wheel in --data), text and retrieval (LRA files in --data). Presets:
    /// cpu-listops, cpu-pathfinder, cpu-adding, cpu-acsf1, cpu-digits, tiny, and the official
    /// lra-listops, lra-text, lra-retrieval, lra-image, lra-pathfinder, lra-pathx, and the
    /// transformer baselines cpu-transformer-TASK. Prints the final metrics as JSON.
    Train {
        /// Task name.
        #[arg(long)]
        task: String,
        /// Architecture: s4, or transformer (a bidirectional transformer encoder classifier: token
        /// embedding or linear encoder, learned positions, pre-LayerNorm blocks, mean pooling;
        /// trained by the same loop, same metrics and checkpoints). Default: the preset's (s4).
        #[arg(long)]
        arch: Option<String>,
        /// Preset (default: the task's CPU preset for the architecture).
        #[arg(long)]
        preset: Option<String>,
        /// Folder with real data files (see the task list).
        #[arg(long)]
        data: Option<PathBuf>,
        /// Epochs (default: the preset's).
        #[arg(long)]
        epochs: Option<usize>,
        /// Batch size (default: the preset's).
        #[arg(long)]
        batch_size: Option<usize>,
        /// Global learning rate (default: the preset's).
        #[arg(long)]
        lr: Option<f64>,
        /// Sizes of the generated train/val/test splits.
        #[arg(long, value_delimiter = ',', default_value = "10000,1000,1000")]
        sizes: Vec<usize>,
        /// Worker threads (default: all cores; results do not depend on it).
        #[arg(long)]
        threads: Option<usize>,
        /// Seed of the data, the initialization and dropout.
        #[arg(long, default_value_t = 0)]
        seed: u64,
        /// Continue from OUT/checkpoint.
        #[arg(long)]
        resume: bool,
        /// Stop after this many epochs (resume later with --resume).
        #[arg(long)]
        stop_after: Option<usize>,
        /// A JSON file with a full TrainConfig (overrides the preset).
        #[arg(long)]
        config: Option<PathBuf>,
        /// No progress bar.
        #[arg(long)]
        quiet: bool,
        /// Output folder.
        #[arg(long)]
        out: PathBuf,
    },
    /// Evaluates a training run's checkpoint (S4 or transformer) on its task's test split; prints
    /// JSON.
    Eval {
        /// The --out folder of `s4 train`.
        dir: PathBuf,
        /// Folder with real data files, if the run used one.
        #[arg(long)]
        data: Option<PathBuf>,
        /// Sizes of the generated splits (default: the run's, from its config.json; else
        /// 10000,1000,1000).
        #[arg(long, value_delimiter = ',')]
        sizes: Option<Vec<usize>>,
        /// Seed of the data (default: the run's seed; else 0).
        #[arg(long)]
        seed: Option<u64>,
    },
    /// The HiPPO memory demo: reconstruct the past of a band-limited random signal from the state.
    ///
    /// Prints JSON metrics (relative RMSE per operator, and a sweep over N) and optionally plots the
    /// signal against each reconstruction.
    #[command(allow_negative_numbers = true)]
    Reconstruct {
        /// Operator: legt, legs, legs-scaled, lagt, fout (default: all). `--measure legs` runs both
        /// the time-invariant and the scaled LegS.
        #[arg(long)]
        measure: Option<String>,
        /// State size N.
        #[arg(long, default_value_t = 64)]
        n: usize,
        /// Step size.
        #[arg(long, default_value_t = 1e-3)]
        dt: f64,
        /// Signal duration (time units).
        #[arg(long, default_value_t = 4.0)]
        duration: f64,
        /// Highest frequency of the signal (cycles per time unit).
        #[arg(long, default_value_t = 1.5)]
        cutoff: f64,
        /// Signal seed.
        #[arg(long, default_value_t = 0)]
        seed: u64,
        /// State sizes of the sweep (comma-separated).
        #[arg(long, default_value = "16,32,64,128", value_delimiter = ',')]
        sweep: Vec<usize>,
        /// Write a PNG of signal vs reconstruction.
        #[arg(long)]
        plot: Option<PathBuf>,
    },
}

fn main() {
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(e) if !e.use_stderr() => e.exit(), // --help, --version
        Err(e) => {
            // one line: clap's first line, plus where to look
            let text = e.to_string();
            let msg: Vec<&str> = text
                .lines()
                .take_while(|l| !l.starts_with("Usage:"))
                .map(str::trim)
                .filter(|l| !l.is_empty())
                .collect();
            let msg = msg.join(" ");
            eprintln!("error: {} (see --help)", msg.trim_start_matches("error: "));
            std::process::exit(2);
        }
    };
    let res = match cli.command {
        Command::Lm(c) => lm::run(c),
        Command::Hippo { measure, n, dplr, out } => cmd_hippo(&measure, n, dplr, out.as_deref()),
        Command::Kernel(args) => cmd_kernel(args),
        Command::Bench { channels, n, lengths, repeats } => cmd_bench(channels, n, &lengths, repeats),
        Command::Info { dir } => cmd_info(&dir),
        Command::Run { dir, input, out, layout, mode, lengths, f64, weights } => {
            let args = RunArgs { dir, input, out, layout, mode, lengths, weights };
            if f64 {
                cmd_run::<f64>(&args)
            } else {
                cmd_run::<f32>(&args)
            }
        }
        Command::ImportOfficial { model, config, out } => cmd_import(&model, &config, &out),
        Command::Train {
            task,
            arch,
            preset,
            data,
            epochs,
            batch_size,
            lr,
            sizes,
            threads,
            seed,
            resume,
            stop_after,
            config,
            quiet,
            out,
        } => cmd_train(TrainArgs {
            task,
            arch,
            preset,
            data,
            epochs,
            batch_size,
            lr,
            sizes,
            threads,
            seed,
            resume,
            stop_after,
            config,
            quiet,
            out,
        }),
        Command::Eval { dir, data, sizes, seed } => cmd_eval(&dir, data.as_deref(), sizes, seed),
        Command::Reconstruct { measure, n, dt, duration, cutoff, seed, sweep, plot } => cmd_reconstruct(
            measure.as_deref(),
            MemoryConfig { n, dt, duration, cutoff, rms: 0.5, seed },
            &sweep,
            plot.as_deref(),
        ),
    };
    if let Err(e) = res {
        eprintln!("error: {e}");
        std::process::exit(1);
    }
}

fn cjson(z: &Complex64) -> serde_json::Value {
    json!([z.re, z.im])
}

fn cmd_hippo(measure: &str, n: usize, dplr: bool, out: Option<&Path>) -> Result<()> {
    let m: Measure = measure.parse()?;
    let (a, b) = transition(m, n)?;
    let d = if dplr { Some(nplr(m, n)?) } else { None };
    let rec_err = d.as_ref().map(|d| {
        let r = d.reconstruct_a();
        let diff = (&r - &a).iter().fold(0.0f64, |x, y| x.max(y.abs()));
        diff / a.iter().fold(0.0f64, |x, y| x.max(y.abs()))
    });
    match out {
        Some(path) => {
            let mut npz = NpzOut::create(path)?;
            npz.add("A", &a)?;
            npz.add("B", &b)?;
            if let Some(d) = &d {
                npz.add("Lambda", &d.lambda)?;
                npz.add("V", &d.v)?;
                npz.add("P_tilde", &d.p)?;
                npz.add("B_tilde", &d.b)?;
            }
            npz.finish()?;
            let mut arrays = vec!["A", "B"];
            if dplr {
                arrays.extend(["Lambda", "V", "P_tilde", "B_tilde"]);
            }
            println!(
                "{}",
                json!({"measure": m.name(), "n": n, "rank": m.rank(), "out": path, "arrays": arrays,
                       "dplr_reconstruction_rel_error": rec_err})
            );
        }
        None => {
            let rows = |x: &Array2<f64>| x.outer_iter().map(|r| r.to_vec()).collect::<Vec<_>>();
            let mut v = json!({"measure": m.name(), "n": n, "rank": m.rank(), "A": rows(&a), "B": b.to_vec(),
                               "P": rows(&rank_correction(m, n)?)});
            if let Some(d) = &d {
                v["Lambda"] = d.lambda.iter().map(cjson).collect();
                v["B_tilde"] = d.b.iter().map(cjson).collect();
                v["P_tilde"] = d.p.outer_iter().map(|r| r.iter().map(cjson).collect::<Vec<_>>()).collect();
                v["V"] = d.v.outer_iter().map(|r| r.iter().map(cjson).collect::<Vec<_>>()).collect();
                v["dplr_reconstruction_rel_error"] = json!(rec_err);
            }
            println!("{v}");
        }
    }
    Ok(())
}

#[derive(clap::Args, Debug)]
struct KernelArgs {
    /// Kernel kind: dplr (S4) or diag (S4D).
    #[arg(long, default_value = "dplr")]
    kind: String,
    /// Initialization: legs, legt, fout, lagt, diag-lin, diag-inv, diag-legs, diag-real.
    #[arg(long, default_value = "legs")]
    init: String,
    /// Discretization: zoh, bilinear, forward-euler, backward-euler or gbt:ALPHA (default: bilinear
    /// for dplr, the only one its kernel supports; zoh for diag).
    #[arg(long)]
    disc: Option<String>,
    /// State size N (even).
    #[arg(long, default_value_t = 64)]
    n: usize,
    /// Kernel length L.
    #[arg(long)]
    length: usize,
    /// Number of channels H.
    #[arg(long, default_value_t = 1)]
    channels: usize,
    /// Smallest step size of the log-uniform draw.
    #[arg(long, default_value_t = 1e-3)]
    dt_min: f64,
    /// Largest step size of the log-uniform draw.
    #[arg(long, default_value_t = 1e-1)]
    dt_max: f64,
    /// Random seed (dt and C).
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// Read the parameters from this .npz instead of drawing them.
    #[arg(long, conflicts_with_all = ["kind", "init", "n", "channels", "dt_min", "dt_max", "seed"])]
    params: Option<PathBuf>,
    /// Output .npz file.
    #[arg(long)]
    out: Option<PathBuf>,
    /// Also plot the first channels' kernels to this PNG.
    #[arg(long)]
    plot: Option<PathBuf>,
    /// Number of taps shown in the plot.
    #[arg(long, default_value_t = 1000)]
    plot_taps: usize,
}

/// Reads kernel parameters in the layout `s4 kernel` writes.
fn read_params(path: &Path) -> Result<SsmParams<f64>> {
    let mut f = NpzIn::open(path)?;
    let c2 = |f: &mut NpzIn, name: &str| -> Result<Array2<Complex64>> {
        Ok(f.read::<Complex64>(name, 2, "complex128")?.into_dimensionality::<Ix2>().expect("checked 2-D"))
    };
    let lambda = c2(&mut f, "Lambda")?;
    let b = c2(&mut f, "B")?;
    let c = c2(&mut f, "C")?;
    let dt = f.read::<f64>("dt", 1, "float64")?.into_dimensionality::<Ix1>().expect("checked 1-D");
    let p = if f.has("P") {
        Some(f.read::<Complex64>("P", 3, "complex128")?.into_dimensionality::<Ix3>().expect("checked 3-D"))
    } else {
        None
    };
    let params = SsmParams { lambda, p, b, c, dt };
    params.validate().map_err(|e| Error::format(path, e.to_string()))?;
    Ok(params)
}

fn cmd_kernel(a: KernelArgs) -> Result<()> {
    let (params, source) = match &a.params {
        Some(path) => (read_params(path)?, json!({"params": path})),
        None => {
            let cfg = SsmInitConfig {
                kind: a.kind.parse::<KernelKind>()?,
                init: a.init.parse::<SsmInit>()?,
                d_state: a.n,
                channels: a.channels,
                dt_min: a.dt_min,
                dt_max: a.dt_max,
                seed: a.seed,
            };
            let p = cfg.draw()?;
            (p, serde_json::to_value(&cfg).expect("config serializes"))
        }
    };
    let disc = a.disc.as_deref().map(str::parse::<Discretization>).transpose()?;
    let t0 = Instant::now();
    let k = ssm_kernel::<f64>(&params, a.length, disc)?;
    let secs = t0.elapsed().as_secs_f64();
    let disc = disc.unwrap_or_else(|| s4::kernel::default_discretization(params.kind()));
    if let Some(path) = &a.out {
        let mut npz = NpzOut::create(path)?;
        npz.add("K", &k)?;
        npz.add("Lambda", &params.lambda)?;
        if let Some(p) = &params.p {
            npz.add("P", p)?;
        }
        npz.add("B", &params.b)?;
        npz.add("C", &params.c)?;
        npz.add("dt", &params.dt)?;
        npz.finish()?;
    }
    if let Some(path) = &a.plot {
        let shown = k.nrows().min(4);
        let taps = a.length.min(a.plot_taps.max(1));
        let series = (0..shown)
            .map(|h| Series {
                label: format!("channel {h} (dt = {:.2e})", params.dt[h]),
                points: k.row(h).iter().take(taps).enumerate().map(|(l, &v)| (l as f64, v)).collect(),
            })
            .collect();
        let title = format!(
            "{} kernel, N = {}, {} discretization (first {taps} of {} taps)",
            params.kind(),
            2 * params.half_state(),
            disc,
            a.length
        );
        write_png(path, &[Panel { title, x_label: "lag l".into(), y_label: "K_l".into(), series }], 1000, 450)?;
    }
    let max_abs = k.iter().fold(0.0f64, |m, x| m.max(x.abs()));
    println!(
        "{}",
        json!({"kind": params.kind().to_string(), "disc": disc.to_string(), "channels": params.channels(),
               "d_state": 2 * params.half_state(), "rank": params.rank(), "length": a.length,
               "seconds": secs, "max_abs_K": max_abs, "out": a.out, "plot": a.plot, "source": source})
    );
    Ok(())
}

fn cmd_reconstruct(measure: Option<&str>, cfg: MemoryConfig, ns: &[usize], plot: Option<&Path>) -> Result<()> {
    let ops: Vec<MemoryOperator> = match measure {
        None => MemoryOperator::ALL.to_vec(),
        Some("legs") => vec![MemoryOperator::LegS, MemoryOperator::LegSScaled],
        Some(m) => vec![m.parse()?],
    };
    let results = ops.iter().map(|&op| evaluate(op, &cfg, false)).collect::<Result<Vec<_>>>()?;
    let flipped = ops.iter().map(|&op| evaluate(op, &cfg, true)).collect::<Result<Vec<_>>>()?;
    let table = sweep(&ops, ns, &cfg)?;
    let mut sweep_json = serde_json::Map::new();
    sweep_json.insert("n".into(), json!(ns));
    for (i, op) in ops.iter().enumerate() {
        sweep_json.insert(op.name().into(), json!(table.row(i).to_vec()));
    }
    let metrics: Vec<_> = results
        .iter()
        .zip(&flipped)
        .map(|(r, f)| {
            json!({"operator": r.operator.name(), "n": r.n, "ages": [r.ages.0, r.ages.1], "rmse": r.rmse,
                   "relative_rmse": r.relative_rmse, "flipped_basis_relative_rmse": f.relative_rmse})
        })
        .collect();
    if let Some(path) = plot {
        write_png(path, &memory_panels(&cfg, &results), 1000, 260)?;
    }
    println!("{}", json!({"config": cfg, "results": metrics, "sweep_relative_rmse": sweep_json, "plot": plot}));
    Ok(())
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

fn cmd_bench(channels: usize, n: usize, lengths: &[usize], repeats: usize) -> Result<()> {
    use ndarray::Array3;
    use s4::conv::FftConv;
    use s4::kernel::{diag_kernel, DplrKernel};
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

fn cmd_import(model: &Path, config: &Path, out: &Path) -> Result<()> {
    let layer = s4::layer::official::import_official_files::<f32>(model, config)?;
    s4::model::checkpoint::save_layer(&layer, out)?;
    let cfg = layer.config();
    println!(
        "{}",
        json!({"out": out, "format": "s4-layer", "kernel": cfg.kernel.to_string(), "d_model": cfg.d_model,
               "d_state": cfg.d_state, "channels": cfg.channels, "bidirectional": cfg.bidirectional,
               "l_kernel": layer.weights().l_kernel})
    );
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
    use s4::model::checkpoint::{load_any, Saved};
    use s4::transformer::{classifier::FORMAT, TransformerClassifier};
    let cpath = dir.join(s4::model::checkpoint::CONFIG_FILE);
    let text = std::fs::read_to_string(&cpath).map_err(|e| Error::io(&cpath, e))?;
    if serde_json::from_str::<serde_json::Value>(&text).is_ok_and(|v| v["format"] == FORMAT) {
        let model = TransformerClassifier::<f32>::load(dir)?;
        println!("{}", json!({"format": FORMAT, "config": model.config(), "parameters": model.num_params()}));
        return Ok(());
    }
    match load_any::<f32>(dir)? {
        Saved::Layer(layer) => println!(
            "{}",
            json!({"format": "s4-layer", "config": layer.config(), "parameters": layer_param_count(layer.weights()),
                   "l_kernel": layer.weights().l_kernel})
        ),
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
            println!(
                "{}",
                json!({"format": "s4-model", "config": model.config(), "parameters": params, "l_kernel": l_kernels})
            );
        }
    }
    Ok(())
}

struct RunArgs {
    dir: PathBuf,
    input: PathBuf,
    out: PathBuf,
    layout: String,
    mode: String,
    lengths: Option<Vec<usize>>,
    weights: Option<String>,
}

/// (B, L, F) <-> (B, F, L).
fn swap_last<T: Clone>(a: ndarray::Array3<T>) -> ndarray::Array3<T> {
    a.permuted_axes([0, 2, 1]).as_standard_layout().into_owned()
}

fn cmd_run<T: s4::scalar::Real + ndarray_npy::WritableElement>(a: &RunArgs) -> Result<()> {
    use ndarray::{s, Array3, Ix2, Ix3};
    use s4::io::{read_npy_any, write_npy_atomic, NpyArray};
    use s4::layer::ForwardOptions;
    use s4::model::checkpoint::{load_any, Saved};
    use s4::model::{Input, StepInput};
    let blh = match a.layout.as_str() {
        "bhl" => false,
        "blh" => true,
        other => return Err(Error::invalid("layout", other, "bhl or blh")),
    };
    let step = match a.mode.as_str() {
        "conv" => false,
        "step" => true,
        other => return Err(Error::invalid("mode", other, "conv or step")),
    };
    let half = a.weights.as_deref().map(str::parse::<s4::scalar::HalfPrecision>).transpose()?;
    let saved = match (load_any::<T>(&a.dir)?, half) {
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
                if let Some(ls) = lengths {
                    if ls.len() != b || ls.iter().any(|&n| n == 0 || n > l) {
                        return Err(Error::invalid("lengths", format!("{ls:?}"), format!("{b} lengths <= L = {l}")));
                    }
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
                    if let Some(((i, j), &bad)) = t.indexed_iter().find(|(_, &v)| v < 0 || v > u32::MAX as i64) {
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
                if let Some(ls) = lengths {
                    if ls.len() != b || ls.iter().any(|&n| n == 0 || n > l) {
                        return Err(Error::invalid("lengths", format!("{ls:?}"), format!("{b} lengths in 1..={l}")));
                    }
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
    println!("{}", json!({"out": a.out, "shape": y.shape(), "mode": a.mode, "layout": a.layout, "seconds": secs}));
    Ok(())
}

struct TrainArgs {
    task: String,
    arch: Option<String>,
    preset: Option<String>,
    data: Option<PathBuf>,
    epochs: Option<usize>,
    batch_size: Option<usize>,
    lr: Option<f64>,
    sizes: Vec<usize>,
    threads: Option<usize>,
    seed: u64,
    resume: bool,
    stop_after: Option<usize>,
    config: Option<PathBuf>,
    quiet: bool,
    out: PathBuf,
}

fn split_sizes(sizes: &[usize]) -> Result<s4::data::SplitSizes> {
    match sizes {
        [a, b, c] if *a > 0 && *b > 0 && *c > 0 => Ok(s4::data::SplitSizes::new(*a, *b, *c)),
        _ => Err(Error::invalid("--sizes", format!("{sizes:?}"), "three positive counts TRAIN,VAL,TEST")),
    }
}

fn cmd_train(a: TrainArgs) -> Result<()> {
    use s4::train::{default_preset_for, load_task, preset, train, Arch, RunOptions, TrainConfig};
    let t0 = Instant::now();
    let arch = a.arch.as_deref().map(str::parse::<Arch>).transpose()?;
    let task = load_task(&a.task, a.data.as_deref(), &split_sizes(&a.sizes)?, a.seed)?;
    let preset_name =
        a.preset.clone().unwrap_or_else(|| default_preset_for(&a.task, arch.unwrap_or_default()).to_string());
    let mut cfg = match &a.config {
        Some(path) => {
            let text = std::fs::read_to_string(path).map_err(|e| Error::io(path, e))?;
            let mut cfg = serde_json::from_str::<TrainConfig>(&text).map_err(|e| Error::format(path, e.to_string()))?;
            cfg.arch = arch.unwrap_or(cfg.arch);
            cfg
        }
        None => {
            let cfg = preset(&preset_name)?;
            if let Some(arch) = arch.filter(|&arch| arch != cfg.arch) {
                return Err(Error::invalid(
                    "--preset",
                    &preset_name,
                    format!(
                        "a preset for --arch {arch} (preset {preset_name} trains {}; omit --preset for {})",
                        cfg.arch,
                        default_preset_for(&a.task, arch)
                    ),
                ));
            }
            cfg
        }
    };
    cfg.seed = a.seed;
    if let Some(e) = a.epochs {
        cfg.epochs = e;
    }
    if let Some(b) = a.batch_size {
        cfg.batch_size = b;
    }
    if let Some(lr) = a.lr {
        cfg.optim.lr = lr;
    }
    let opts = RunOptions { threads: a.threads, progress: !a.quiet, resume: a.resume, stop_after: a.stop_after };
    if !a.quiet {
        eprintln!(
            "task {}: {} train / {} val / {} test sequences, max length {}; arch {}, preset {preset_name}",
            task.name,
            task.train.len(),
            task.val.len(),
            task.test.len(),
            task.train.max_len(),
            cfg.arch
        );
    }
    let report = train(&task, &cfg, &a.out, &opts)?;
    let last = report.metrics.last();
    println!(
        "{}",
        json!({"task": task.name, "arch": cfg.arch, "preset": preset_name, "out": a.out, "epochs": report.metrics.len(),
               "final": last, "best_val_acc": report.metrics.iter().filter_map(|m| m.val_acc).fold(None, |b: Option<f64>, v| Some(b.map_or(v, |b| b.max(v)))),
               "majority_rate": task.majority_rate(), "mean_baseline_mse": task.mean_baseline_mse(),
               "wall_seconds": t0.elapsed().as_secs_f64()})
    );
    Ok(())
}

fn cmd_eval(dir: &Path, data: Option<&Path>, sizes: Option<Vec<usize>>, seed: Option<u64>) -> Result<()> {
    let cfg_path = dir.join("config.json");
    let text = std::fs::read_to_string(&cfg_path).map_err(|e| Error::io(&cfg_path, e))?;
    let run: serde_json::Value = serde_json::from_str(&text).map_err(|e| Error::format(&cfg_path, e.to_string()))?;
    let task_name = run["task"]
        .as_str()
        .ok_or_else(|| Error::format(&cfg_path, "no \"task\" (not the --out folder of s4 train?)"))?;
    let base = task_name.split('/').next().unwrap_or(task_name).to_lowercase();
    let base = if base == "ucr" { "acsf1".to_string() } else { base };
    // by default the run's own splits and seed, so that generated tasks give back its test split
    let sizes = sizes.unwrap_or_else(|| {
        let n = |k: &str| run["splits"][k].as_u64().map(|v| v as usize);
        match (n("train"), n("val"), n("test")) {
            (Some(a), Some(b), Some(c)) => vec![a, b, c],
            _ => vec![10000, 1000, 1000],
        }
    });
    let seed = seed.or_else(|| run["train"]["seed"].as_u64()).unwrap_or(0);
    let task = s4::train::load_task(&base, data, &split_sizes(&sizes)?, seed)?;
    let ckpt = s4::train::trainer::checkpoint_dir(dir)
        .ok_or_else(|| Error::invalid("run folder", dir.display(), "a folder with a checkpoint/ (from s4 train)"))?;
    let model = s4::train::TrainedModel::load(&ckpt)?;
    let t0 = Instant::now();
    let (loss, acc) = model.evaluate(&task.test, 64)?;
    println!(
        "{}",
        json!({"task": task.name, "arch": model.arch(), "checkpoint": ckpt, "test_loss": loss, "test_acc": acc,
               "test_sequences": task.test.len(),
               "majority_rate": task.majority_rate(), "mean_baseline_mse": task.mean_baseline_mse(),
               "seconds": t0.elapsed().as_secs_f64()})
    );
    Ok(())
}

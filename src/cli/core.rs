//! Core maths: HiPPO matrices, SSM kernels, the HiPPO memory demo.

use clap::{Args, Subcommand};
use ndarray::{Array2, Ix1, Ix2, Ix3};
use num_complex::Complex64;
use s4::discretize::Discretization;
use s4::hippo::memory::{evaluate, memory_panels, sweep, MemoryConfig, MemoryOperator};
use s4::hippo::{nplr, rank_correction, transition, Measure};
use s4::io::{NpzIn, NpzOut};
use s4::kernel::ssm_kernel;
use s4::plot::{write_png, Panel, Series};
use s4::ssm::{KernelKind, SsmInit, SsmInitConfig, SsmParams};
use s4::{Error, Result};
use serde_json::json;
use std::path::{Path, PathBuf};
use std::time::Instant;

#[derive(Subcommand, Debug)]
pub enum Command {
    /// HiPPO matrices (A, B) and, with --dplr, their diagonal-plus-low-rank form.
    ///
    /// Writes A (N, N) and B (N,) float64; with --dplr also Lambda (N/2,), V (N, N/2), P_tilde (R, N/2)
    /// and B_tilde (N/2,) complex128, so that A = 2 Re(V diag(Lambda) V*) - sum_r P_r P_r^T. Without
    /// --out the arrays are printed as JSON (complex numbers as [re, im]).
    #[command(allow_negative_numbers = true)]
    Hippo(HippoArgs),
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
    /// The HiPPO memory demo: reconstruct the past of a band-limited random signal from the state.
    ///
    /// Prints JSON metrics (relative RMSE per operator, and a sweep over N) and optionally plots the
    /// signal against each reconstruction.
    #[command(allow_negative_numbers = true)]
    Reconstruct(ReconstructArgs),
}

pub fn run(cmd: Command) -> Result<()> {
    match cmd {
        Command::Hippo(a) => cmd_hippo(&a),
        Command::Kernel(a) => cmd_kernel(&a),
        Command::Reconstruct(a) => cmd_reconstruct(&a),
    }
}

#[derive(Args, Debug)]
pub struct HippoArgs {
    /// Measure.
    #[arg(long, value_enum, ignore_case = true)]
    measure: Measure,
    /// State size N.
    #[arg(long)]
    n: usize,
    /// Also compute the DPLR form (N must be even).
    #[arg(long)]
    dplr: bool,
    /// Output .npz file.
    #[arg(long)]
    out: Option<PathBuf>,
}

#[derive(Args, Debug)]
pub struct ReconstructArgs {
    /// Operator (default: all). `--measure legs` runs both the time-invariant and the scaled LegS.
    #[arg(long, value_enum)]
    measure: Option<MemoryOperator>,
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
}

fn cjson(z: &Complex64) -> serde_json::Value {
    json!([z.re, z.im])
}

fn cmd_hippo(a: &HippoArgs) -> Result<()> {
    let (m, n, dplr, out) = (a.measure, a.n, a.dplr, a.out.as_deref());
    super::check_outputs(&[("--out", out)])?;
    let (a, b) = transition(m, n)?;
    let d = if dplr { Some(nplr(m, n)?) } else { None };
    let rec_err = d.as_ref().map(|d| {
        let r = d.reconstruct_a();
        let diff = (&r - &a).iter().fold(0.0f64, |x, y| x.max(y.abs()));
        diff / a.iter().fold(0.0f64, |x, y| x.max(y.abs()))
    });
    match out {
        Some(path) => {
            let mut npz = NpzOut::create(path);
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

#[derive(Args, Debug)]
pub struct KernelArgs {
    /// Kernel kind: dplr (S4) or diag (S4D).
    #[arg(long, value_enum, default_value = "dplr")]
    kind: KernelKind,
    /// Initialization.
    #[arg(long, value_enum, default_value = "legs")]
    init: SsmInit,
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

fn cmd_kernel(a: &KernelArgs) -> Result<()> {
    super::check_outputs(&[("--out", a.out.as_deref()), ("--plot", a.plot.as_deref())])?;
    let (params, source) = match &a.params {
        Some(path) => (read_params(path)?, json!({"params": path})),
        None => {
            let cfg = SsmInitConfig {
                kind: a.kind,
                init: a.init,
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
        let mut npz = NpzOut::create(path);
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

fn cmd_reconstruct(a: &ReconstructArgs) -> Result<()> {
    let cfg = MemoryConfig { n: a.n, dt: a.dt, duration: a.duration, cutoff: a.cutoff, rms: 0.5, seed: a.seed };
    let (ns, plot) = (&a.sweep, a.plot.as_deref());
    super::check_outputs(&[("--plot", plot)])?;
    let ops: Vec<MemoryOperator> = match a.measure {
        None => MemoryOperator::ALL.to_vec(),
        Some(MemoryOperator::LegS) => vec![MemoryOperator::LegS, MemoryOperator::LegSScaled],
        Some(m) => vec![m],
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

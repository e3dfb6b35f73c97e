//! HiPPO memory: a state of N numbers remembers the past of a signal, and the past can be read
//! back from it (HiPPO, Gu et al. 2020, Figure 1).
//!
//! Runs LegT (sliding window), LegS as a time-invariant system (what S4 uses) and the original
//! time-varying scaled LegS over a band-limited random signal, prints the relative RMSE of the
//! reconstruction per operator and N as JSON, and writes `hippo_memory_sweep.png` (N = 64;
//! `s4 reconstruct --plot` draws another figure).
//!
//! `cargo run --release --example hippo_memory [-- OUT.png]`

use s4::hippo::memory::{evaluate, memory_panels, MemoryConfig, MemoryOperator};
use s4::plot::write_png;

fn main() -> s4::Result<()> {
    let out = std::env::args().nth(1).unwrap_or_else(|| "hippo_memory_sweep.png".to_string());
    let cfg = MemoryConfig { n: 64, dt: 1e-3, duration: 4.0, cutoff: 1.5, rms: 0.5, seed: 0 };
    let ops = [MemoryOperator::LegT, MemoryOperator::LegS, MemoryOperator::LegSScaled];

    let mut rows = Vec::new();
    let mut shown = Vec::new();
    for op in ops {
        for n in [8, 16, 32, 64, 128] {
            let r = evaluate(op, &MemoryConfig { n, ..cfg.clone() }, false)?;
            rows.push(serde_json::json!({"operator": op.name(), "n": n, "ages": [r.ages.0, r.ages.1],
                                         "relative_rmse": r.relative_rmse}));
            if n == cfg.n {
                shown.push(r);
            }
        }
    }
    println!("{}", serde_json::json!({"signal": cfg, "results": rows}));
    write_png(std::path::Path::new(&out), &memory_panels(&cfg, &shown), 1000, 260)?;
    eprintln!("wrote {out}");
    Ok(())
}

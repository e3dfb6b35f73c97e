//! Trains the task's CPU preset: Pathfinder-style 32x32 images flattened to L = 1024 (are the two markers connected?).
//!
//! `cargo run --release --example pathfinder` writes runs/example-pathfinder/ (metrics.jsonl,
//! curves.png, checkpoint/) and prints the final metrics; `s4 train --task pathfinder --help` has
//! every option (epochs, sizes, threads, resume, the official LRA presets).

use s4::data::SplitSizes;
use s4::train::{default_preset, load_task, preset, train, RunOptions};

fn main() -> Result<(), s4::Error> {
    let task = load_task("pathfinder", None, &SplitSizes::default(), 0)?;
    let name = default_preset("pathfinder");
    let cfg = preset(name)?;
    println!("{}: {} train / {} test sequences, preset {name}", task.name, task.train.len(), task.test.len());
    let out = std::path::Path::new("runs").join("example-pathfinder");
    // resume: a second run continues (or just reports) the first one instead of refusing its folder
    let report = train(&task, &cfg, &out, &RunOptions { progress: true, resume: true, ..Default::default() })?;
    let last = report.metrics.last().expect("at least one epoch");
    match (last.test_acc, task.majority_rate(), task.mean_baseline_mse()) {
        (Some(acc), Some(majority), _) => println!("test accuracy {acc:.4} (majority class {majority:.4})"),
        (_, _, Some(mean)) => println!("test MSE {:.5} (predicting the mean: {mean:.4})", last.test_loss),
        _ => println!("test loss {:.4}", last.test_loss),
    }
    println!("curves: {}", out.join("curves.png").display());
    Ok(())
}

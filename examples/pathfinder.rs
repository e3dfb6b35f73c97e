//! Trains the task's CPU preset: Pathfinder-style 32x32 images flattened to L = 1024 (are the two markers connected?).
//!
//! `cargo run --release --example pathfinder` writes runs/example-pathfinder/ (metrics.jsonl,
//! curves.png, checkpoint/) and prints the final metrics; `s4 train --task pathfinder --help` has
//! every option (epochs, sizes, threads, resume, the official LRA presets). A second run
//! continues (or just reports) the first one.

fn main() -> Result<(), s4::Error> {
    let out = std::path::Path::new("runs").join("example-pathfinder");
    let (task, report) = s4::train::train_default("pathfinder", &out)?;
    println!("{}", s4::train::summary(&task, &report));
    println!("curves: {}", out.join("curves.png").display());
    Ok(())
}

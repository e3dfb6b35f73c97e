//! Trains the task's CPU preset: the adding problem at L = 1000 (regression; predicting the mean gives MSE 0.167).
//!
//! `cargo run --release --example adding_problem` writes runs/example-adding/ (metrics.jsonl,
//! curves.png, checkpoint/) and prints the final metrics; `s4 train --task adding --help` has
//! every option (epochs, sizes, threads, resume, the official LRA presets). A second run
//! continues (or just reports) the first one.

fn main() -> Result<(), s4::Error> {
    let out = std::path::Path::new("runs").join("example-adding");
    let (task, report) = s4::train::train_default("adding", &out)?;
    println!("{}", s4::train::summary(&task, &report));
    println!("curves: {}", out.join("curves.png").display());
    Ok(())
}

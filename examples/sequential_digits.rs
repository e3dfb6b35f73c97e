//! Trains the task's CPU preset: scikit-learn's digits read pixel by pixel (L = 64, 10 classes; fetch the wheel first, see the README).
//!
//! `cargo run --release --example sequential_digits` writes runs/example-digits/ (metrics.jsonl,
//! curves.png, checkpoint/) and prints the final metrics; `s4 train --task digits --help` has
//! every option (epochs, sizes, threads, resume, the official LRA presets). A second run
//! continues (or just reports) the first one.

fn main() -> Result<(), s4::Error> {
    let out = std::path::Path::new("runs").join("example-digits");
    let (task, report) = s4::train::train_default("digits", &out)?;
    println!("{}", s4::train::summary(&task, &report));
    println!("curves: {}", out.join("curves.png").display());
    Ok(())
}

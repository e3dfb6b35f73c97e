//! Trains the task's CPU preset: UCR ACSF1 from the sktime wheel (L = 1460, 10 classes; fetch it first, see the README).
//!
//! `cargo run --release --example ucr_acsf1` writes runs/example-acsf1/ (metrics.jsonl,
//! curves.png, checkpoint/) and prints the final metrics; `s4 train --task acsf1 --help` has
//! every option (epochs, sizes, threads, resume, the official LRA presets). A second run
//! continues (or just reports) the first one.

fn main() -> Result<(), s4::Error> {
    let out = std::path::Path::new("runs").join("example-acsf1");
    let (task, report) = s4::train::train_default("acsf1", &out)?;
    println!("{}", s4::train::summary(&task, &report));
    println!("curves: {}", out.join("curves.png").display());
    Ok(())
}

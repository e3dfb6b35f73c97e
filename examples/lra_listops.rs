//! Trains the task's CPU preset: ListOps (LRA generator rules, CPU lengths 100..1000; 10 classes).
//!
//! `cargo run --release --example lra_listops` writes runs/example-listops/ (metrics.jsonl,
//! curves.png, checkpoint/) and prints the final metrics; `s4 train --task listops --help` has
//! every option (epochs, sizes, threads, resume, the official LRA presets). A second run
//! continues (or just reports) the first one.

fn main() -> Result<(), s4::Error> {
    let out = std::path::Path::new("runs").join("example-listops");
    let (task, report) = s4::train::train_default("listops", &out)?;
    println!("{}", s4::train::summary(&task, &report));
    println!("curves: {}", out.join("curves.png").display());
    Ok(())
}

//! Trains a long-range task's CPU preset from library calls: what `s4 train --task TASK` does, in
//! a dozen lines. TASK is one of listops, pathfinder, adding, acsf1, digits (acsf1 and digits need
//! their wheel fetched first, see the README); the default is adding.
//!
//! `cargo run --release --example train_task -- listops` writes runs/example-listops/
//! (metrics.jsonl, curves.png, checkpoint/) and prints the final metric beside its baseline; a
//! second run continues (or just reports) the first one. `s4 train --help` has every option
//! (epochs, sizes, threads, resume, the official LRA presets).

fn main() -> Result<(), s4::Error> {
    let task = std::env::args().nth(1).unwrap_or_else(|| "adding".to_string());
    if !s4::train::TASKS.contains(&task.as_str()) {
        return Err(s4::Error::invalid("task", &task, format!("one of {}", s4::train::TASKS.join(", "))));
    }
    let out = std::path::Path::new("runs").join(format!("example-{task}"));
    let (data, report) = s4::train::train_default(&task, &out)?;
    println!("{}", s4::train::summary(&data, &report));
    println!("curves: {}", out.join("curves.png").display());
    Ok(())
}

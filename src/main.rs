//! The `s4` command line: `s4 --help`, or `s4 COMMAND --help`. The commands live in [`cli`], one
//! module per group; this file only parses and reports.

mod cli;

fn main() {
    s4::allocator::retain_freed_memory();
    if let Err(e) = cli::run(cli::parse()) {
        eprintln!("error: {e}");
        std::process::exit(1);
    }
}

//! The `s4` command line, the top layer: one module per command group, each command an `Args`
//! struct and a `run` function over the library's public API. Nothing below imports from here.
//!
//! | group | module | commands |
//! |---|---|---|
//! | start here | [`demo`] | `demo` |
//! | core maths | [`core`] | `hippo`, `kernel`, `reconstruct` |
//! | layers and models | [`models`] | `import-official`, `export-official`, `info`, `run` |
//! | training | [`training`] | `train`, `eval` |
//! | language models and speculative decoding | [`lm`] | `logits`, `generate`, `speculate`, `train-lm`, `distill` |
//! | benchmarks | [`bench`] | `bench`, `bench-speculate` |

mod bench;
mod core;
mod demo;
mod lm;
mod models;
mod training;

use clap::{Args, Parser, Subcommand};
use s4::{Error, Result};
use std::path::Path;

/// The commands by task, as `s4 --help` and a bare `s4` list them (a test checks that every
/// command is here).
const COMMAND_MAP: &str = "\
Commands, by task (s4 COMMAND --help for each, with defaults):
  Start here
    demo             S4 learns a long-range task in a minute, then runs as a stream (PNG + JSON)
  Core maths
    hippo            HiPPO matrices (A, B) and their diagonal-plus-low-rank form
    kernel           SSM convolution kernels (S4 DPLR, S4D) from an initialization or a file
    reconstruct      the HiPPO memory demo: read a signal's past back from the state
  Layers and models
    import-official  import an official PyTorch state dict (S4Block, S4D, example.py's S4Model)
    export-official  export a model folder as the state dict of example.py's S4Model
    info             describe a folder s4 wrote: layer, model, GPT-2, or training run
    convert          copy a model folder with 16-bit (bf16 or f16) weights
    run              run a saved layer or model on a .npy input (conv or step mode)
  Training
    train            train S4 (or the transformer baseline) on a long-range task
    eval             evaluate a training run's checkpoint on its test split
  Language models and speculative decoding
    logits           next-token logits of a causal model
    generate         generate text with one model
    speculate        speculative decoding: an S4 draft proposes, a transformer verifies
    train-lm         train the transformer verifier on the Shakespeare corpus
    distill          distill an S4 draft from a verifier
  Benchmarks
    bench            kernels and FFT convolution beside the official PyTorch numbers
    bench-speculate  speculative decoding on a model pair, several draft lengths and trees
    bench-verifier   the verifier's pass time over k = 1, 2, ... positions (the cost curve t(k))";

/// The parsed command line.
#[derive(Parser, Debug)]
#[command(
    name = "s4",
    version,
    about = "Structured state-space sequence models (S4, S4D, HiPPO) in Rust",
    arg_required_else_help = true,
    disable_help_subcommand = true,
    help_template = "{about}\n\n{usage-heading} {usage}\n{after-help}\n\nOptions:\n{options}",
    after_help = COMMAND_MAP
)]
pub struct Cli {
    #[command(subcommand)]
    command: Command,
    /// Memory budget for any one piece of work, e.g. 4G or 512M; larger requests are refused
    /// before they allocate [default: $S4_MAX_MEMORY, else half of the available memory].
    #[arg(long, global = true, value_name = "SIZE")]
    max_memory: Option<String>,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// The main job: a small causal S4 model learns the adding problem (a long-range regression)
    /// in about a minute, is scored against predicting the mean, then runs as a stream, one input
    /// at a time, giving the convolution's outputs. Prints a summary (or JSON with --json) and
    /// draws a dashboard PNG.
    Demo(demo::DemoArgs),
    #[command(flatten)]
    Core(core::Command),
    #[command(flatten)]
    Models(models::Command),
    #[command(flatten)]
    Training(training::Command),
    #[command(flatten)]
    Lm(lm::Command),
    #[command(flatten)]
    Bench(bench::Command),
}

/// Parses the arguments; `--help` and `--version` print and exit 0, a usage error prints one line
/// (clap's message and where to look) and exits 2.
pub fn parse() -> Cli {
    match Cli::try_parse() {
        Ok(cli) => cli,
        // --help, --version, and a bare `s4` (the command map, exit 2)
        Err(e) if !e.use_stderr() || e.kind() == clap::error::ErrorKind::DisplayHelpOnMissingArgumentOrSubcommand => {
            e.exit()
        }
        Err(e) => {
            let text = e.to_string();
            let msg: Vec<&str> = text
                .lines()
                .take_while(|l| !l.starts_with("Usage:"))
                .map(str::trim)
                .filter(|l| !l.is_empty() && !l.starts_with("For more information"))
                .collect();
            let msg = expected_choices(msg.join(" ").trim_start_matches("error: "));
            eprintln!("error: {msg} (see --help)");
            std::process::exit(2);
        }
    }
}

/// Rewrites clap's `[possible values: a, b, c]` in the library's style: `expected a, b or c`.
fn expected_choices(msg: &str) -> String {
    let Some(start) = msg.find("[possible values: ") else { return msg.to_string() };
    let Some(len) = msg[start..].find(']') else { return msg.to_string() };
    let values: Vec<&str> = msg[start + 18..start + len].split(", ").collect();
    let list = match values.split_last() {
        Some((last, rest)) if !rest.is_empty() => format!("{} or {last}", rest.join(", ")),
        _ => values.join(""),
    };
    format!("{}: expected {list}{}", msg[..start].trim_end(), &msg[start + len + 1..])
}

/// Runs the parsed command, after checking the `S4_SIMD` cap (which the library would ignore)
/// and setting the memory budget (`--max-memory`, else a valid `S4_MAX_MEMORY`).
pub fn run(cli: Cli) -> Result<()> {
    s4::nn::simd::SimdLevel::from_env()?;
    match &cli.max_memory {
        Some(v) => s4::budget::set_max_memory(
            s4::budget::parse_bytes(v)
                .map_err(|_| Error::invalid("--max-memory", v, "a size such as 4G, 512MiB or 1000000 (bytes)"))?,
        )?,
        None => {
            s4::budget::memory_budget()?;
        }
    }
    match cli.command {
        Command::Demo(a) => demo::cmd_demo(&a),
        Command::Core(c) => core::run(c),
        Command::Models(c) => models::run(c),
        Command::Training(c) => training::run(c),
        Command::Lm(c) => lm::run(c),
        Command::Bench(c) => bench::run(c),
    }
}

/// Settings from a JSON file (missing fields take their defaults), or the defaults.
fn config_or_default<C: Default + serde::de::DeserializeOwned>(path: Option<&Path>) -> Result<C> {
    let Some(p) = path else { return Ok(C::default()) };
    s4::io::read_json(p)
}

/// Checks, before any work, that each output file `(flag, path)` can be created: its folder
/// exists. So a command never fails after writing one output because another cannot be written.
fn check_outputs(outputs: &[(&str, Option<&Path>)]) -> Result<()> {
    for (flag, path) in outputs {
        let Some(path) = path else { continue };
        let folder = path.parent().filter(|p| !p.as_os_str().is_empty()).unwrap_or(Path::new("."));
        if !folder.is_dir() {
            return Err(Error::invalid(
                *flag,
                path.display(),
                format!("a file in an existing folder ({} does not exist)", folder.display()),
            ));
        }
        if path.is_dir() {
            return Err(Error::invalid(*flag, path.display(), "a file path (this is a folder)"));
        }
    }
    Ok(())
}

/// `Error::invalid` for a folder that already holds a saved model.
fn refuse_overwrite(out: &Path) -> Error {
    Error::invalid(
        "--out",
        out.display(),
        "a folder without a saved model (refusing to overwrite it; --force replaces it, or choose another folder)",
    )
}

/// How a training command runs: threads, progress, and resuming (shared by `train`, `train-lm`
/// and `distill`).
#[derive(Args, Debug)]
struct RunControl {
    /// Worker threads (default: all cores; results do not depend on it).
    #[arg(long)]
    threads: Option<usize>,
    /// Continue the run in --out from its last checkpoint.
    #[arg(long)]
    resume: bool,
    /// With --resume: continue a run for more epochs or steps than it was started with (the
    /// learning-rate schedule keeps its original length; recorded in the checkpoint's state.json).
    #[arg(long, requires = "resume")]
    extend: bool,
    /// Stop after this many rounds (epochs for train, evaluation intervals for train-lm and
    /// distill); continue later with --resume.
    #[arg(long)]
    stop_after: Option<usize>,
    /// No progress on stderr.
    #[arg(long)]
    quiet: bool,
    /// Replace what --out holds (a previous run or a saved model): it is moved to a hidden
    /// sibling, removed once the new run has written its first checkpoint, and put back if the new
    /// run stops before that.
    #[arg(long, conflicts_with = "resume")]
    force: bool,
}

impl RunControl {
    /// The run options, checked (a thread count out of range is refused before any work).
    fn options(&self) -> Result<s4::train::RunOptions> {
        let opts = s4::train::RunOptions {
            threads: self.threads,
            progress: !self.quiet,
            resume: self.resume,
            stop_after: self.stop_after,
            extend: self.extend,
            progress_sink: None,
        };
        opts.validate()?;
        Ok(opts)
    }

    /// Checks, before any work or output, that `out` may take a new run whose run folder is `run`
    /// (`out` itself for `train`, `out/run` for `train-lm` and `distill`, which write their model
    /// into `out` at the end): without --resume it must hold no run and no saved model, unless
    /// --force is given.
    fn check_out(&self, out: &Path, run: &Path) -> Result<()> {
        if self.force {
            return Ok(());
        }
        let has_model = out.join(s4::model::checkpoint::CONFIG_FILE).exists() || out.join("model.safetensors").exists();
        // a `train` run folder holds its settings as config.json: that is a run, not a model
        let own_run = run == out && s4::train::trainer::check_out(run, false).is_err();
        if !self.resume && has_model && !own_run {
            return Err(refuse_overwrite(out));
        }
        s4::train::trainer::check_out(run, self.resume)
    }

    /// With --force, moves `out` aside just before the run starts (see [`settle`](Self::settle)).
    fn clear_out(&self, out: &Path) -> Result<Option<s4::io::MovedAside>> {
        self.force.then(|| s4::io::MovedAside::new(out)).transpose()
    }

    /// After the run: the folder moved aside by --force is removed if the new run in `run` wrote a
    /// checkpoint, and put back otherwise. Returns the run's result.
    fn settle<T>(aside: Option<s4::io::MovedAside>, run: &Path, result: Result<T>) -> Result<T> {
        if let Some(aside) = aside
            && s4::train::trainer::checkpoint_dir(run).is_some()
        {
            aside.discard()?;
        } // dropped otherwise: the previous folder goes back in place
        result
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    #[test]
    fn the_command_map_lists_every_command() {
        for sub in Cli::command().get_subcommands() {
            let name = sub.get_name();
            assert!(COMMAND_MAP.contains(&format!("    {name} ")), "{name} is missing from COMMAND_MAP");
        }
        let listed = COMMAND_MAP.lines().filter(|l| l.starts_with("    ")).count();
        assert_eq!(listed, Cli::command().get_subcommands().count(), "COMMAND_MAP lists a command that does not exist");
    }
}

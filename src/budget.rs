//! The memory budget: one check, before any allocation whose size comes from the user (a CLI
//! value, a file header, a config field), that the work fits in memory.
//!
//! Each piece of work estimates the bytes it will allocate from its sizes, with checked
//! arithmetic, in an [`Estimate`], and checks it before it starts. Over the budget, or past what
//! 64 bits can count, is an [`Error::Budget`] naming the work (with the value that sized it), the
//! bytes it would take and the budget, never an abort or a panic.
//!
//! The budget, first that applies:
//! 1. [`with_memory_budget`] for the calling thread (tests);
//! 2. [`set_max_memory`] for the process (the CLI's `--max-memory`);
//! 3. the environment variable `S4_MAX_MEMORY` (`4G`, `512MiB`, `1000000`, ...);
//! 4. half of the memory available to the process, read once: the least of `MemAvailable`, the
//!    cgroup's limit less its usage (v2 `memory.max`, v1 `memory.limit_in_bytes`) and the
//!    address-space limit (`RLIMIT_AS`, from `/proc/self/limits`) less the process's size; 4 GiB
//!    where none of these can be read.
//!
//! Estimates count the large buffers of a piece of work (the arrays sized by the user's values),
//! not every small allocation: they bound what the input can ask for, they do not profile.
//!
//! # Example
//!
//! ```
//! use s4::budget::{with_memory_budget, Estimate};
//!
//! // a (H, L) f32 kernel with H = 256, L = 16384 takes 16 MiB
//! let ok = with_memory_budget(1 << 30, || Estimate::new("kernel (H, L) = (256, 16384)").array::<f32>(&[256, 16384]).check());
//! assert_eq!(ok.unwrap(), 16 << 20);
//!
//! // L = 10^12 is refused before anything is allocated, with the bytes and the budget named
//! let err = with_memory_budget(1 << 30, || Estimate::new("kernel length L = 1000000000000").array::<f32>(&[256, 1_000_000_000_000]).check())
//!     .unwrap_err();
//! assert!(err.to_string().starts_with("kernel length L = 1000000000000 would take 931.3 TiB"), "{err}");
//! assert!(err.to_string().contains("over the memory budget of 1.0 GiB"), "{err}");
//!
//! // sizes whose byte count overflows 64 bits are refused the same way, without a panic
//! let err = Estimate::new("state size N = 2^64 - 1").array::<f64>(&[usize::MAX, usize::MAX]).check().unwrap_err();
//! assert!(err.to_string().contains("more than 2^64 bytes"), "{err}");
//! ```

pub use crate::error::human_bytes;
use crate::error::{Error, Result};
use std::cell::Cell;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::OnceLock;

/// The environment variable that sets the budget (below `--max-memory`, above the default).
pub const BUDGET_ENV: &str = "S4_MAX_MEMORY";

/// The process-wide budget set by [`set_max_memory`] (0: not set).
static PROCESS_BUDGET: AtomicU64 = AtomicU64::new(0);

thread_local! {
    static THREAD_BUDGET: Cell<Option<u64>> = const { Cell::new(None) };
}

/// Where the budget in force came from (named in the error, so the user knows what to change).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BudgetSource {
    /// [`with_memory_budget`] on this thread.
    Thread,
    /// [`set_max_memory`] (the CLI's `--max-memory`).
    Process,
    /// The `S4_MAX_MEMORY` environment variable.
    Environment,
    /// Half of the memory available to the process.
    Available,
}

impl BudgetSource {
    /// In words, as error messages name it.
    pub fn describe(self) -> &'static str {
        match self {
            BudgetSource::Thread => "set for this thread",
            BudgetSource::Process => "set by --max-memory",
            BudgetSource::Environment => "set by S4_MAX_MEMORY",
            BudgetSource::Available => "half of the available memory; raise it with --max-memory or S4_MAX_MEMORY",
        }
    }
}

/// Sets the budget for the whole process (the CLI's `--max-memory`); `bytes` ≥ 1.
///
/// # Errors
/// `bytes` = 0.
pub fn set_max_memory(bytes: u64) -> Result<()> {
    if bytes == 0 {
        return Err(Error::invalid("--max-memory", 0, "a size of at least 1 byte (e.g. 4G, 512M)"));
    }
    PROCESS_BUDGET.store(bytes, Ordering::Relaxed);
    Ok(())
}

/// Runs `f` with a budget of `bytes` on the calling thread (for tests and embedders), then
/// restores the previous one.
pub fn with_memory_budget<R>(bytes: u64, f: impl FnOnce() -> R) -> R {
    struct Restore(Option<u64>);
    impl Drop for Restore {
        fn drop(&mut self) {
            THREAD_BUDGET.with(|b| b.set(self.0));
        }
    }
    let _restore = Restore(THREAD_BUDGET.with(|b| b.replace(Some(bytes))));
    f()
}

/// The budget in force on this thread and where it came from.
///
/// # Errors
/// `S4_MAX_MEMORY` is set to something that is not a size.
pub fn memory_budget() -> Result<(u64, BudgetSource)> {
    if let Some(b) = THREAD_BUDGET.with(Cell::get) {
        return Ok((b, BudgetSource::Thread));
    }
    let p = PROCESS_BUDGET.load(Ordering::Relaxed);
    if p > 0 {
        return Ok((p, BudgetSource::Process));
    }
    if let Ok(v) = std::env::var(BUDGET_ENV) {
        let b = parse_bytes(&v)
            .map_err(|_| Error::invalid(BUDGET_ENV, &v, "a size such as 4G, 512MiB or 1000000 (bytes)"))?;
        if b == 0 {
            return Err(Error::invalid(BUDGET_ENV, &v, "a size of at least 1 byte"));
        }
        return Ok((b, BudgetSource::Environment));
    }
    static AVAILABLE: OnceLock<u64> = OnceLock::new();
    Ok((*AVAILABLE.get_or_init(|| available_memory().unwrap_or(8 << 30) / 2), BudgetSource::Available))
}

/// Parses a size: an integer or decimal number of bytes with an optional unit, `K`/`M`/`G`/`T`
/// (powers of 1024, also written `KiB`, `KB`, ...), case-insensitive.
///
/// # Errors
/// Anything else, or a size of 2^64 bytes or more.
pub fn parse_bytes(s: &str) -> Result<u64> {
    let bad = || Error::invalid("memory size", s, "a size such as 4G, 512MiB or 1000000 (bytes)");
    let t = s.trim();
    let split = t.find(|c: char| !(c.is_ascii_digit() || c == '.')).unwrap_or(t.len());
    let (num, unit) = t.split_at(split);
    let shift = match unit.trim().to_ascii_lowercase().as_str() {
        "" | "b" => 0,
        "k" | "kb" | "kib" => 10,
        "m" | "mb" | "mib" => 20,
        "g" | "gb" | "gib" => 30,
        "t" | "tb" | "tib" => 40,
        _ => return Err(bad()),
    };
    let value: f64 = num.parse().map_err(|_| bad())?;
    let bytes = value * (1u64 << shift) as f64;
    if !bytes.is_finite() || bytes >= u64::MAX as f64 {
        return Err(bad());
    }
    Ok(bytes as u64)
}

/// The bytes of the large buffers a piece of work will allocate, summed with checked arithmetic
/// (an overflow is remembered and refused by [`check`](Self::check)).
#[derive(Clone, Debug)]
#[must_use = "an estimate does nothing until it is checked"]
pub struct Estimate {
    what: String,
    bytes: Option<u64>,
}

impl Estimate {
    /// Starts an estimate for `what`: the work and the value that sizes it, as the user knows
    /// them (e.g. `"hippo matrices for N = 100000"`).
    pub fn new(what: impl Into<String>) -> Self {
        Estimate { what: what.into(), bytes: Some(0) }
    }

    /// Adds `n` bytes.
    pub fn bytes(mut self, n: u64) -> Self {
        self.bytes = self.bytes.and_then(|b| b.checked_add(n));
        self
    }

    /// Adds one array of `shape` with elements of type `A`.
    pub fn array<A>(self, shape: &[usize]) -> Self {
        self.arrays::<A>(1, shape)
    }

    /// Adds `count` arrays of `shape` with elements of type `A`.
    pub fn arrays<A>(mut self, count: usize, shape: &[usize]) -> Self {
        let factors = || shape.iter().chain([&count, &std::mem::size_of::<A>()]);
        // an empty array takes nothing, however large its other dimensions
        let n = if factors().any(|&d| d == 0) {
            Some(0)
        } else {
            factors().try_fold(1u64, |acc, &d| acc.checked_mul(d as u64))
        };
        self.bytes = match (self.bytes, n) {
            (Some(b), Some(n)) => b.checked_add(n),
            _ => None,
        };
        self
    }

    /// Adds another estimate's bytes (for work built from parts).
    pub fn and(mut self, other: &Estimate) -> Self {
        self.bytes = match (self.bytes, other.bytes) {
            (Some(a), Some(b)) => a.checked_add(b),
            _ => None,
        };
        self
    }

    /// The bytes counted so far (`None`: more than 2^64).
    pub fn total(&self) -> Option<u64> {
        self.bytes
    }

    /// Checks the estimate against the budget in force and returns the bytes.
    ///
    /// # Errors
    /// [`Error::Budget`] when the bytes exceed the budget or 2^64; an invalid `S4_MAX_MEMORY`.
    pub fn check(self) -> Result<u64> {
        let (budget, source) = memory_budget()?;
        match self.bytes {
            Some(b) if b <= budget => Ok(b),
            bytes => Err(Error::Budget { what: self.what, bytes, budget, source: source.describe() }),
        }
    }
}

/// The number of elements of `shape`, or `None` when it overflows `usize`.
pub fn element_count(shape: &[usize]) -> Option<usize> {
    if shape.contains(&0) {
        return Some(0);
    }
    shape.iter().try_fold(1usize, |acc, &d| acc.checked_mul(d))
}

/// Checks a requested worker-thread count: at least 1 and at most 4 × the available cores.
///
/// # Errors
/// `threads` = 0 or above the cap (the message names both).
pub fn check_threads(threads: usize) -> Result<usize> {
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    let cap = 4 * cores;
    if (1..=cap).contains(&threads) {
        Ok(threads)
    } else {
        Err(Error::invalid("--threads", threads, format!("1 to {cap} (4 × the {cores} available cores)")))
    }
}

/// Memory available to this process in bytes: the least of the system's available memory, the
/// cgroup's headroom and the address-space headroom, or `None` when none can be read.
fn available_memory() -> Option<u64> {
    let read = |p: &str| std::fs::read_to_string(p).ok();
    let num = |s: Option<String>| s.and_then(|t| t.trim().parse::<u64>().ok());
    let mut best: Option<u64> = None;
    let mut take = |v: Option<u64>| {
        if let Some(v) = v {
            best = Some(best.map_or(v, |b| b.min(v)));
        }
    };
    // /proc/meminfo: "MemAvailable:   24351332 kB"
    take(read("/proc/meminfo").and_then(|t| kib_field(&t, "MemAvailable:")));
    // cgroup v2, then v1 (limits of 2^62 and more mean "none")
    for (limit, usage) in [
        ("/sys/fs/cgroup/memory.max", "/sys/fs/cgroup/memory.current"),
        ("/sys/fs/cgroup/memory/memory.limit_in_bytes", "/sys/fs/cgroup/memory/memory.usage_in_bytes"),
    ] {
        if let Some(l) = num(read(limit)).filter(|&l| l < 1 << 62) {
            take(Some(l.saturating_sub(num(read(usage)).unwrap_or(0))));
        }
    }
    // RLIMIT_AS: "Max address space   4294967296   4294967296   bytes", less the current size
    if let Some(limits) = read("/proc/self/limits") {
        let soft = limits
            .lines()
            .find(|l| l.starts_with("Max address space"))
            .and_then(|l| l.split_whitespace().nth(3))
            .and_then(|v| v.parse::<u64>().ok());
        if let Some(soft) = soft {
            let size = read("/proc/self/status").and_then(|t| kib_field(&t, "VmSize:")).unwrap_or(0);
            take(Some(soft.saturating_sub(size)));
        }
    }
    best
}

/// The value of a `Name:   123 kB` line, in bytes.
fn kib_field(text: &str, name: &str) -> Option<u64> {
    let line = text.lines().find(|l| l.starts_with(name))?;
    line[name.len()..].split_whitespace().next()?.parse::<u64>().ok()?.checked_mul(1024)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_parse_in_binary_units() {
        assert_eq!(parse_bytes("1000000").unwrap(), 1_000_000);
        assert_eq!(parse_bytes("4G").unwrap(), 4 << 30);
        assert_eq!(parse_bytes("512MiB").unwrap(), 512 << 20);
        assert_eq!(parse_bytes("1.5k").unwrap(), 1536);
        assert_eq!(parse_bytes(" 2 tb ").unwrap(), 2 << 40);
        for bad in ["", "G", "4X", "-1", "1e3", "99999999999T", "nan"] {
            assert!(parse_bytes(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn the_thread_budget_wins_and_is_restored() {
        let inner = with_memory_budget(100, || {
            let nested = with_memory_budget(7, || memory_budget().unwrap());
            (nested, memory_budget().unwrap())
        });
        assert_eq!(inner, ((7, BudgetSource::Thread), (100, BudgetSource::Thread)));
        assert_ne!(memory_budget().unwrap().0, 7);
    }

    #[test]
    fn estimates_refuse_over_budget_and_overflow() {
        with_memory_budget(1000, || {
            assert_eq!(Estimate::new("x").array::<f32>(&[10, 25]).check().unwrap(), 1000);
            let e = Estimate::new("y for n = 1001").array::<u8>(&[1001]).check().unwrap_err();
            assert_eq!(
                e.to_string(),
                "y for n = 1001 would take 1001 B, over the memory budget of 1000 B (set for this thread)"
            );
            let e = Estimate::new("v").array::<f32>(&[1 << 20]).check().unwrap_err();
            assert!(e.to_string().starts_with("v would take 4.0 MiB (4194304 bytes), over"), "{e}");
            let e = Estimate::new("z").arrays::<f64>(usize::MAX, &[2]).check().unwrap_err();
            assert!(e.to_string().starts_with("z would take more than 2^64 bytes"), "{e}");
            let e = Estimate::new("w").bytes(u64::MAX).bytes(1).check().unwrap_err();
            assert!(e.to_string().contains("more than 2^64 bytes"));
        });
    }

    #[test]
    fn the_default_is_half_of_something_available() {
        let avail = available_memory().expect("Linux exposes /proc/meminfo");
        assert!(avail > 1 << 20);
        assert!(check_threads(0).is_err());
        assert!(check_threads(1).is_ok());
        assert!(check_threads(100_000).unwrap_err().to_string().contains("4 × the"));
    }
}

//! A mutation fuzzer on stable Rust for every reader of untrusted files, and property tests of the
//! budget arithmetic.
//!
//! Each target starts from its seed corpus in `tests/fuzz/<target>/`, applies random byte-level
//! mutations (flips, interesting bytes, digit runs that make huge shapes, insertions, deletions,
//! splices, truncations) and feeds each input to the reader under a 64 MiB memory budget. A reader
//! may return any error; a panic fails the test and the input is kept in
//! `target/fuzz-crashes/`. Each target runs for `S4_FUZZ_SECONDS` (default 5; CI keeps the whole
//! module under 60 s), e.g. `S4_FUZZ_SECONDS=600 cargo test --release fuzz::npy` for a long run.

use s4::budget::{with_memory_budget, Estimate};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

/// xorshift64*: a small, seeded generator (the fuzzer must not depend on the crate under test).
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }
    fn below(&mut self, n: usize) -> usize {
        (self.next() % n.max(1) as u64) as usize
    }
}

/// One random mutation of `data` (in place; `data` may become empty).
fn mutate(rng: &mut Rng, data: &mut Vec<u8>, corpus: &[Vec<u8>]) {
    const INTERESTING: [u8; 12] = [0, 1, 0x7f, 0x80, 0xff, b'9', b'0', b',', b'(', b')', b'\'', b'\n'];
    let len = data.len();
    match rng.below(8) {
        0 if len > 0 => {
            let i = rng.below(len);
            data[i] ^= 1 << rng.below(8);
        }
        1 if len > 0 => {
            let i = rng.below(len);
            data[i] = INTERESTING[rng.below(INTERESTING.len())];
        }
        2 => {
            // a run of digits: shapes, lengths and sizes far past anything real
            let digits: Vec<u8> = (0..1 + rng.below(24)).map(|_| b'0' + rng.below(10) as u8).collect();
            let at = rng.below(len + 1);
            data.splice(at..at, digits);
        }
        3 if len > 0 => {
            let (a, n) = (rng.below(len), 1 + rng.below(16));
            data.drain(a..(a + n).min(len));
        }
        4 if len > 0 => {
            // duplicate a chunk
            let (a, n) = (rng.below(len), 1 + rng.below(32));
            let chunk = data[a..(a + n).min(len)].to_vec();
            let at = rng.below(data.len() + 1);
            data.splice(at..at, chunk);
        }
        5 if len > 0 => data.truncate(rng.below(len)),
        6 if !corpus.is_empty() => {
            // splice in part of another seed
            let other = &corpus[rng.below(corpus.len())];
            if !other.is_empty() {
                let (a, n) = (rng.below(other.len()), 1 + rng.below(64));
                let at = rng.below(len + 1);
                data.splice(at..at, other[a..(a + n).min(other.len())].iter().copied());
            }
        }
        _ if len >= 8 => {
            // overwrite 8 bytes with a little-endian extreme (sizes and offsets in binary headers)
            let i = rng.below(len - 7);
            let v = [u64::MAX, 1 << 40, 1 << 62, 0, u32::MAX as u64][rng.below(5)];
            data[i..i + 8].copy_from_slice(&v.to_le_bytes());
        }
        _ => data.push(INTERESTING[rng.below(INTERESTING.len())]),
    }
}

fn seeds(target: &str) -> Vec<(String, Vec<u8>)> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fuzz").join(target);
    let mut out: Vec<(String, Vec<u8>)> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .map(|e| {
            let p = e.unwrap().path();
            (p.file_name().unwrap().to_string_lossy().into_owned(), std::fs::read(&p).unwrap())
        })
        .collect();
    out.sort();
    out
}

fn budget() -> Duration {
    let secs = std::env::var("S4_FUZZ_SECONDS").ok().and_then(|s| s.parse().ok()).unwrap_or(5.0);
    Duration::from_secs_f64(secs)
}

fn scratch(target: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("s4-fuzz-{target}-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// Runs `target` for the time budget: each round picks a seed file (by name, so a target can
/// mutate one file of a folder), mutates it 1 to 4 times and calls `run(name, bytes)`. Panics are
/// collected with their inputs; the test fails if there was any. Returns the number of inputs.
fn fuzz(target: &str, seed: u64, run: impl Fn(&str, &[u8])) -> u64 {
    let corpus = seeds(target);
    let all: Vec<Vec<u8>> = corpus.iter().map(|(_, b)| b.clone()).collect();
    let mut rng = Rng(seed | 1);
    let (start, limit) = (Instant::now(), budget());
    let mut crashes = Vec::new();
    let mut count = 0u64;
    // the seeds themselves first
    let mut inputs: Vec<(String, Vec<u8>)> = corpus.clone();
    while start.elapsed() < limit {
        let (name, bytes) = inputs.pop().unwrap_or_else(|| {
            let (name, b) = &corpus[rng.below(corpus.len())];
            let mut b = b.clone();
            for _ in 0..1 + rng.below(4) {
                mutate(&mut rng, &mut b, &all);
            }
            (name.clone(), b)
        });
        count += 1;
        let outcome = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            with_memory_budget(64 << 20, || run(&name, &bytes))
        }));
        if outcome.is_err() {
            let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("target/fuzz-crashes");
            std::fs::create_dir_all(&dir).unwrap();
            let path = dir.join(format!("{target}-{count}-{name}"));
            std::fs::write(&path, &bytes).unwrap();
            crashes.push(path.display().to_string());
        }
    }
    assert!(crashes.is_empty(), "{target}: {} panics, inputs kept in {crashes:?}", crashes.len());
    assert!(count > corpus.len() as u64, "{target}: only the seeds ran");
    eprintln!("fuzz {target}: {count} inputs in {:.1} s, no panic", start.elapsed().as_secs_f64());
    count
}

#[test]
fn npy() {
    use num_complex::Complex64;
    use s4::io::npy::{read_data, read_header};
    fuzz("npy", 1, |_, bytes| {
        let mut r = bytes;
        let Ok(h) = read_header(&mut r) else { return };
        let avail = (bytes.len() - h.header_bytes.min(bytes.len())) as u64;
        let _ = match h.code.as_str() {
            "f4" => read_data::<f32>(&mut r, &h, avail, "x").map(|_| ()),
            "i8" => read_data::<i64>(&mut r, &h, avail, "x").map(|_| ()),
            "c16" => read_data::<Complex64>(&mut r, &h, avail, "x").map(|_| ()),
            _ => read_data::<f64>(&mut r, &h, avail, "x").map(|_| ()),
        };
    });
}

#[test]
fn npz() {
    let dir = scratch("npz");
    fuzz("npz", 2, |_, bytes| {
        let path = dir.join("k.npz");
        std::fs::write(&path, bytes).unwrap();
        let Ok(mut f) = s4::io::NpzIn::open(&path) else { return };
        for name in ["K", "Lambda", "B", "C", "P", "dt"] {
            let _ = f.read::<f64>(name, 1, "float64");
            let _ = f.read::<num_complex::Complex64>(name, 2, "complex128");
        }
    });
}

/// A layer folder: either file mutated, loaded in both precisions, then run when it loads.
#[test]
fn layer_folder() {
    let dir = scratch("layer");
    let seeds = seeds("layer");
    fuzz("layer", 3, |name, bytes| {
        for (n, b) in &seeds {
            std::fs::write(dir.join(n), if n == name { bytes } else { b }).unwrap();
        }
        if let Ok(s4::model::checkpoint::Saved::Layer(layer)) = s4::model::checkpoint::load_any::<f32>(&dir) {
            let u = ndarray::Array3::<f32>::ones((1, layer.config().d_model, 16));
            let _ = layer.forward(u.view(), &Default::default());
        }
        let _ = s4::model::checkpoint::load_any::<f64>(&dir);
    });
}

#[test]
fn listops_tsv() {
    let dir = scratch("listops");
    fuzz("listops", 4, |_, bytes| {
        for split in ["train", "val", "test"] {
            std::fs::write(dir.join(format!("basic_{split}.tsv")), bytes).unwrap();
        }
        let _ = s4::data::listops::load_tsv(&dir);
        let _ = s4::data::lra::load_text_tsv(&dir.join("basic_train.tsv"), Some(64));
        if let Ok(tokens) = s4::data::listops::tokenize(&String::from_utf8_lossy(bytes)) {
            let _ = s4::data::listops::Tree::parse(&tokens).map(|t| t.evaluate());
        }
    });
}

#[test]
fn ucr_ts() {
    let dir = scratch("ucr");
    fuzz("ucr", 5, |_, bytes| {
        let path = dir.join("Toy_TRAIN.ts");
        std::fs::write(&path, bytes).unwrap();
        std::fs::write(dir.join("Toy_TEST.ts"), bytes).unwrap();
        let _ = s4::data::ucr::read_ts(&path);
        let _ = s4::data::ucr::load_ucr(&dir, "Toy", 0.2, 0);
    });
}

/// Property: an estimate's total is the exact sum of products (0 for an array with a zero
/// dimension), or `None` exactly when that sum (computed in 128 bits) exceeds 2^64 − 1; `check` accepts it exactly when it fits the budget.
#[test]
fn budget_arithmetic_is_exact_or_refused() {
    let mut rng = Rng(0x5EED);
    let dim = |rng: &mut Rng| match rng.below(4) {
        0 => rng.below(4),
        1 => rng.below(1 << 16),
        2 => 1 << rng.below(40),
        _ => rng.next() as usize >> rng.below(64),
    };
    for _ in 0..20_000 {
        let mut e = Estimate::new("property");
        let mut exact: Option<u128> = Some(0);
        for _ in 0..1 + rng.below(3) {
            let shape: Vec<usize> = (0..rng.below(4)).map(|_| dim(&mut rng)).collect();
            let count = dim(&mut rng);
            e = e.arrays::<f32>(count, &shape);
            // an array with a zero dimension takes 0 bytes, however large the others
            let factors = || shape.iter().chain([&count]);
            let product = if factors().any(|&d| d == 0) {
                Some(0)
            } else {
                factors().try_fold(4u128, |a, &d| a.checked_mul(d as u128))
            };
            exact = match (exact, product) {
                (Some(a), Some(p)) => a.checked_add(p),
                _ => None,
            };
        }
        let expected = exact.filter(|&b| b <= u64::MAX as u128).map(|b| b as u64);
        assert_eq!(e.total(), expected);
        let budget = rng.next() >> rng.below(64);
        let accepted = with_memory_budget(budget.max(1), || e.clone().check());
        assert_eq!(accepted.is_ok(), expected.is_some_and(|b| b <= budget.max(1)), "{expected:?} vs budget {budget}");
    }
}

//! ListOps (Nangia & Bowman 2018) as generated for the Long Range Arena (Tay et al. 2021).
//!
//! # The generator
//!
//! This follows `lra_benchmarks/data/listops.py` of google-research/long-range-arena rule by rule:
//!
//! - A node at depth `d < max_depth` draws `r ~ U[0, 1)`; at `d = max_depth`, `r = 1`. If
//!   `r > 0.25` the node is a value leaf, a digit drawn uniformly from 0..=9. Otherwise it is an
//!   operator node with `n ~ U{2, ..., max_args}` arguments, each generated at depth `d + 1`, after
//!   which the operator is drawn uniformly from MIN, MAX, MED, SM. The root is at depth 1.
//! - The length of a tree counts its tokens without parentheses: 1 per leaf, and per operator node
//!   2 (the operator and its closing `]`) plus its arguments' lengths.
//! - A tree is kept if `min_length < length < max_length` (both strict, as in the original) and it
//!   is not a duplicate (the original collects trees in a set; here duplicates are detected by a
//!   64-bit hash of the token sequence, so a distinct tree is wrongly dropped with probability
//!   about n²/2⁶⁵). Accepted trees fill train, then val, then test.
//! - Values: `MIN`, `MAX`; `MED` is `int(np.median(args))`, i.e. the middle value for an odd count
//!   and the floor of the mean of the two middle values for an even count (`[MED 2 9 ]` = 5, not
//!   the lower median 2); `SM` is the sum modulo 10. The label is the root's value, 0..=9.
//!
//! Defaults are LRA's flags: `max_depth = 10`, `max_args = 10`, `min_length = 500`,
//! `max_length = 2000`, with 96 000 / 2 000 / 2 000 sequences ([`LRA_SIZES`]). The random stream
//! is this crate's PCG64, not Python's Mersenne twister, so the sequences are not LRA's, but they
//! have the same distribution. A tree is abandoned as soon as its running length reaches
//! `max_length`: such a tree would be rejected anyway, so the distribution of accepted trees is
//! unchanged while the (supercritical, up to 10⁹-leaf) branching never runs away.
//!
//! # Text format and tokenization
//!
//! [`to_string`] prints a tree exactly as the LRA release does (its `Source` column): the original
//! stores an operator node as left-nested pairs `((((op, a1), a2), ...), ])` and prints every pair
//! in parentheses, so `[MAX 2 9 ]` is written `( ( ( [MAX 2 ) 9 ) ] )`.
//!
//! The LRA input pipeline (`lra_benchmarks/listops/input_pipeline.py`) tokenizes that string with
//! `tfds.deprecated.text.Tokenizer()`, which keeps only alphanumeric runs: it drops the
//! parentheses and also the `[` of operators and every closing `]`, leaving `MAX 2 9`. The
//! official S4 repository (`src/dataloaders/lra.py`, `listops_tokenizer`) instead maps `]` to a
//! token `X`, deletes the parentheses and splits on whitespace, so the closing bracket stays
//! visible (its vocabulary: `<pad>`, `<unk>`, `<eos>` and the 15 tokens, 18 in all; it appends
//! `<eos>` to every sequence).
//!
//! This module does what S4 does, with a fixed vocabulary and without `<unk>`/`<eos>`:
//! parentheses are dropped (they carry no information given the brackets), `]` is kept, and the
//! ids are
//!
//! | id | token | id | token |
//! |---|---|---|---|
//! | 0 | padding | 5 | `]` |
//! | 1 | `[MIN` | 6..=15 | `0`..=`9` (digit + 6) |
//! | 2 | `[MAX` | | |
//! | 3 | `[MED` | | |
//! | 4 | `[SM` | | |
//!
//! so [`VOCAB_SIZE`] = 16 and a sequence's length is exactly the generator's length.
//!
//! # Example
//!
//! ```
//! use s4::data::listops::{generate, to_string, tokenize, Config, Op, Tree};
//! use s4::data::{Inputs, SplitSizes};
//!
//! // the LRA text of [MAX 2 9 ], its tokens and its value
//! let source = "( ( ( [MAX 2 ) 9 ) ] )";
//! let tokens = tokenize(source)?;
//! assert_eq!(tokens, vec![2, 8, 15, 5]); // [MAX, 2, 9, ]
//! let tree = Tree::parse(&tokens)?;
//! assert_eq!(tree.evaluate()?, 9);
//! assert_eq!(to_string(&tree), source);
//! assert_eq!(Op::Med.apply(&[2, 9]), Some(5)); // int(np.median), not the lower median
//! assert!(tokenize("[MAX 2 10 ]").is_err()); // "10" is not a token
//!
//! // a small generated task: every label is the value of its expression
//! let cfg = Config { max_depth: 4, max_args: 4, min_length: 5, max_length: 30 };
//! let task = generate(&cfg, &SplitSizes::new(20, 2, 2), 0)?;
//! let Inputs::Tokens(seqs) = &task.train.inputs else { unreachable!() };
//! for (seq, &label) in seqs.iter().zip(task.train.targets.classes().unwrap()) {
//!     assert!(seq.len() > 5 && seq.len() < 30); // both bounds strict
//!     assert_eq!(Tree::parse(seq)?.evaluate()? as u32, label);
//! }
//! # Ok::<(), s4::Error>(())
//! ```

use std::collections::HashSet;
use std::hash::{DefaultHasher, Hash, Hasher};
use std::path::Path;

use rand::{Rng, RngExt, SeedableRng};
use rand_pcg::Pcg64;
use serde::{Deserialize, Serialize};

use super::{read_text, Inputs, Split, SplitSizes, Targets, TaskData};
use crate::error::{Error, Result};

/// Number of token ids (padding included).
pub const VOCAB_SIZE: usize = 16;
/// Number of classes (the root's value, 0..=9).
pub const N_CLASSES: usize = 10;
/// Token id of `]`.
pub const END_ID: u32 = 5;
/// Token id of the digit 0 (digit d has id `DIGIT0_ID + d`).
pub const DIGIT0_ID: u32 = 6;
/// LRA's split sizes: 96 000 / 2 000 / 2 000.
pub const LRA_SIZES: SplitSizes = SplitSizes::new(96_000, 2_000, 2_000);

/// Probability of an operator node above `max_depth` (the original's `VALUE_P`: a node is a leaf
/// when `r > VALUE_P`).
const VALUE_P: f64 = 0.25;

/// The four operators.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Op {
    /// `[MIN`: the smallest argument.
    Min,
    /// `[MAX`: the largest argument.
    Max,
    /// `[MED`: `int(np.median(args))`.
    Med,
    /// `[SM`: the sum of the arguments modulo 10.
    SumMod,
}

impl Op {
    const ALL: [Op; 4] = [Op::Min, Op::Max, Op::Med, Op::SumMod];

    /// The printed token (`"[MIN"`, `"[MAX"`, `"[MED"`, `"[SM"`).
    pub fn token(self) -> &'static str {
        match self {
            Op::Min => "[MIN",
            Op::Max => "[MAX",
            Op::Med => "[MED",
            Op::SumMod => "[SM",
        }
    }

    /// The token id (1..=4).
    pub fn id(self) -> u32 {
        match self {
            Op::Min => 1,
            Op::Max => 2,
            Op::Med => 3,
            Op::SumMod => 4,
        }
    }

    /// Applies the operator to argument values (each 0..=9); `None` for no arguments.
    pub fn apply(self, args: &[u8]) -> Option<u8> {
        if args.is_empty() {
            return None;
        }
        Some(match self {
            Op::Min => *args.iter().min()?,
            Op::Max => *args.iter().max()?,
            Op::Med => {
                let mut s = args.to_vec();
                s.sort_unstable();
                let n = s.len();
                if n % 2 == 1 {
                    s[n / 2]
                } else {
                    ((s[n / 2 - 1] as u16 + s[n / 2] as u16) / 2) as u8
                }
            }
            Op::SumMod => (args.iter().map(|&a| a as u32).sum::<u32>() % 10) as u8,
        })
    }
}

/// A ListOps expression.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum Tree {
    /// A digit 0..=9.
    Value(u8),
    /// An operator applied to its arguments.
    Node {
        /// The operator.
        op: Op,
        /// The arguments, in order.
        args: Vec<Tree>,
    },
}

impl Tree {
    /// The value of the expression, 0..=9.
    ///
    /// # Errors
    /// A digit above 9 or an operator without arguments (neither is produced by the generator or
    /// the parser).
    pub fn evaluate(&self) -> Result<u8> {
        match self {
            Tree::Value(v) if *v <= 9 => Ok(*v),
            Tree::Value(v) => Err(Error::invalid("ListOps value", v, "a digit 0..=9")),
            Tree::Node { op, args } => {
                let vals = args.iter().map(Tree::evaluate).collect::<Result<Vec<u8>>>()?;
                op.apply(&vals).ok_or_else(|| Error::invalid("ListOps argument count", 0, "at least 1"))
            }
        }
    }

    /// Number of tokens without parentheses (the generator's length).
    pub fn len(&self) -> usize {
        match self {
            Tree::Value(_) => 1,
            Tree::Node { args, .. } => 2 + args.iter().map(Tree::len).sum::<usize>(),
        }
    }

    /// Always false: a tree has at least one token.
    pub fn is_empty(&self) -> bool {
        false
    }

    /// The token ids (see the table in the module docs).
    pub fn tokens(&self) -> Vec<u32> {
        let mut out = Vec::with_capacity(self.len());
        self.push_tokens(&mut out);
        out
    }

    fn push_tokens(&self, out: &mut Vec<u32>) {
        match self {
            Tree::Value(v) => out.push(DIGIT0_ID + *v as u32),
            Tree::Node { op, args } => {
                out.push(op.id());
                for a in args {
                    a.push_tokens(out);
                }
                out.push(END_ID);
            }
        }
    }

    /// Parses token ids (without padding) back into a tree: `expr = digit | op expr+ ]`.
    ///
    /// # Errors
    /// The position of the first token that does not fit the grammar, a missing `]`, or nesting
    /// deeper than 1000.
    pub fn parse(tokens: &[u32]) -> Result<Tree> {
        let mut pos = 0;
        let tree = parse_at(tokens, &mut pos, 0)?;
        if pos != tokens.len() {
            return Err(Error::invalid(
                format!("ListOps token at position {pos}"),
                tokens[pos],
                "the end of the expression",
            ));
        }
        Ok(tree)
    }
}

/// Recursive-descent parser behind [`Tree::parse`]; `depth` guards the stack.
fn parse_at(tokens: &[u32], pos: &mut usize, depth: usize) -> Result<Tree> {
    const MAX_PARSE_DEPTH: usize = 1_000;
    let Some(&id) = tokens.get(*pos) else {
        return Err(Error::invalid(
            format!("ListOps token at position {pos}"),
            "end of input",
            "a digit or an operator",
        ));
    };
    *pos += 1;
    match id {
        6..=15 => Ok(Tree::Value((id - DIGIT0_ID) as u8)),
        1..=4 => {
            if depth >= MAX_PARSE_DEPTH {
                return Err(Error::invalid("ListOps nesting depth", depth, format!("at most {MAX_PARSE_DEPTH}")));
            }
            let op = Op::ALL[(id - 1) as usize];
            let mut args = Vec::new();
            while tokens.get(*pos) != Some(&END_ID) {
                args.push(parse_at(tokens, pos, depth + 1)?);
            }
            *pos += 1;
            if args.is_empty() {
                return Err(Error::invalid(format!("ListOps {} argument count", op.token()), 0, "at least 1"));
            }
            Ok(Tree::Node { op, args })
        }
        _ => Err(Error::invalid(format!("ListOps token at position {}", *pos - 1), id, "a digit or an operator")),
    }
}

/// The token strings by id (id 0, padding, is `"<pad>"`).
pub fn vocab() -> Vec<&'static str> {
    vec!["<pad>", "[MIN", "[MAX", "[MED", "[SM", "]", "0", "1", "2", "3", "4", "5", "6", "7", "8", "9"]
}

/// Tokenizes a whitespace-separated ListOps string (the LRA `Source` format): `(` and `)` are
/// dropped, every other token maps to its id (see the table in the module docs).
///
/// # Errors
/// An unknown token, naming it.
pub fn tokenize(s: &str) -> Result<Vec<u32>> {
    let table = vocab();
    let mut out = Vec::new();
    for tok in s.split_whitespace() {
        if tok == "(" || tok == ")" {
            continue;
        }
        match table.iter().skip(1).position(|&t| t == tok) {
            Some(i) => out.push(i as u32 + 1),
            None => {
                return Err(Error::invalid("ListOps token", format!("{tok:?}"), "one of [MIN [MAX [MED [SM ] ( ) 0-9"))
            }
        }
    }
    Ok(out)
}

/// Prints a tree as the LRA generator does (see the module docs): every (left-nested) pair in
/// parentheses, tokens separated by single spaces.
pub fn to_string(t: &Tree) -> String {
    match t {
        Tree::Value(v) => v.to_string(),
        Tree::Node { op, args } => {
            // ((((op, a1), a2), ...), ]) printed as "( " + left + " " + right + " )".
            let mut s = op.token().to_string();
            for a in args {
                s = format!("( {s} {} )", to_string(a));
            }
            format!("( {s} ] )")
        }
    }
}

/// Generator settings.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Config {
    /// Maximum tree depth (the root is at depth 1; nodes at this depth are leaves).
    pub max_depth: usize,
    /// Maximum number of arguments of an operator (at least 2).
    pub max_args: usize,
    /// Sequences are longer than this many tokens (strict).
    pub min_length: usize,
    /// Sequences are shorter than this many tokens (strict).
    pub max_length: usize,
}

impl Default for Config {
    /// LRA's defaults: depth 10, 10 arguments, 500 < length < 2000.
    fn default() -> Self {
        Config { max_depth: 10, max_args: 10, min_length: 500, max_length: 2000 }
    }
}

impl Config {
    /// A CPU preset: LRA's tree rule (depth 10, up to 10 arguments) with 100 < length < 1000.
    pub fn cpu() -> Self {
        Config { max_depth: 10, max_args: 10, min_length: 100, max_length: 1000 }
    }

    /// Checks the ranges: 1 ≤ max_depth ≤ 100, 2 ≤ max_args ≤ 1000, min_length + 1 < max_length
    /// ≤ 10⁶, and that a tree longer than `min_length` is possible at all.
    ///
    /// # Errors
    /// The first field out of range, named.
    pub fn validate(&self) -> Result<()> {
        if !(1..=100).contains(&self.max_depth) {
            return Err(Error::invalid("ListOps max_depth", self.max_depth, "1..=100"));
        }
        if !(2..=1000).contains(&self.max_args) {
            return Err(Error::invalid("ListOps max_args", self.max_args, "2..=1000"));
        }
        if self.max_length > 1_000_000 {
            return Err(Error::invalid("ListOps max_length", self.max_length, "at most 1000000"));
        }
        if self.min_length + 1 >= self.max_length {
            return Err(Error::invalid(
                "ListOps min_length",
                self.min_length,
                format!("less than max_length - 1 = {} (both bounds are strict)", self.max_length as i64 - 1),
            ));
        }
        // Longest possible tree: every node above max_depth an operator with max_args arguments.
        let mut longest: usize = 1;
        for _ in 1..self.max_depth {
            longest = longest.saturating_mul(self.max_args).saturating_add(2);
        }
        if longest <= self.min_length {
            return Err(Error::invalid(
                "ListOps min_length",
                self.min_length,
                format!("less than the longest possible tree ({longest} tokens at max_depth {})", self.max_depth),
            ));
        }
        Ok(())
    }
}

/// Samples one tree by the LRA rule, writing its tokens to `out`. Returns the label, or `None` if
/// the running length reached `cfg.max_length` (the tree would be rejected).
fn sample_tokens<R: Rng>(cfg: &Config, depth: usize, rng: &mut R, out: &mut Vec<u32>) -> Option<u8> {
    if out.len() >= cfg.max_length {
        return None;
    }
    let r = if depth < cfg.max_depth { rng.random::<f64>() } else { 1.0 };
    if r > VALUE_P {
        let v: u8 = rng.random_range(0..10);
        out.push(DIGIT0_ID + v as u32);
        return Some(v);
    }
    let n_args = rng.random_range(2..=cfg.max_args);
    let slot = out.len();
    out.push(0); // the operator is drawn after the arguments, as in the original
    let mut vals = Vec::with_capacity(n_args);
    for _ in 0..n_args {
        vals.push(sample_tokens(cfg, depth + 1, rng, out)?);
    }
    let op = Op::ALL[rng.random_range(0..4)];
    out[slot] = op.id();
    out.push(END_ID);
    if out.len() >= cfg.max_length {
        return None;
    }
    op.apply(&vals)
}

/// Generates a ListOps task (see the module docs for the rules): token sequences with
/// `min_length < len < max_length` and their values as classes 0..=9. Deterministic in `seed`.
///
/// # Errors
/// An invalid [`Config`], or fewer than one tree in 10⁴ falls in the length window (the loop
/// would effectively not end).
pub fn generate(cfg: &Config, sizes: &SplitSizes, seed: u64) -> Result<TaskData> {
    cfg.validate()?;
    // each sequence is kept twice (the split and the set of sequences seen)
    sizes.check_memory::<u32>("listops", 2 * cfg.max_length)?;
    let total = sizes.total();
    let mut rng = Pcg64::seed_from_u64(seed);
    let mut seen = HashSet::with_capacity(total);
    let mut seqs = Vec::with_capacity(total);
    let mut labels = Vec::with_capacity(total);
    let mut buf = Vec::with_capacity(cfg.max_length);
    let max_attempts = 10_000u64 * total as u64 + 1_000_000;
    let mut attempts = 0u64;
    while seqs.len() < total {
        attempts += 1;
        if attempts > max_attempts {
            return Err(Error::invalid(
                "ListOps config",
                format!("{cfg:?}"),
                format!("a length window that trees hit (only {} of {attempts} attempts accepted)", seqs.len()),
            ));
        }
        buf.clear();
        let Some(label) = sample_tokens(cfg, 1, &mut rng, &mut buf) else { continue };
        if buf.len() <= cfg.min_length || buf.len() >= cfg.max_length {
            continue;
        }
        let mut h = DefaultHasher::new();
        buf.hash(&mut h);
        if seen.insert(h.finish()) {
            seqs.push(buf.clone());
            labels.push(label as u32);
        }
    }
    let mut seqs = seqs.into_iter();
    let mut labels = labels.into_iter();
    let mut take = |n: usize| Split {
        inputs: Inputs::Tokens(seqs.by_ref().take(n).collect()),
        targets: Targets::Classes(labels.by_ref().take(n).collect()),
    };
    let train = take(sizes.train);
    let val = take(sizes.val);
    let test = take(sizes.test);
    Ok(task(train, val, test))
}

fn task(train: Split, val: Split, test: Split) -> TaskData {
    TaskData {
        name: "listops".into(),
        train,
        val,
        test,
        vocab_size: Some(VOCAB_SIZE),
        d_input: 1,
        d_output: N_CLASSES,
        regression: false,
    }
}

/// Loads the LRA release (`lra_release/listops-1000/`): `basic_train.tsv`, `basic_val.tsv` and
/// `basic_test.tsv` in `dir`, each with the header `Source\tTarget` and rows of an expression (as
/// printed by [`to_string`]) and its value 0..=9. Sources are tokenized by [`tokenize`].
///
/// # Errors
/// A missing or unreadable file; the file and line of a missing header, an unknown token, a bad
/// label or a malformed row.
pub fn load_tsv(dir: &Path) -> Result<TaskData> {
    let load = |split: &str| -> Result<Split> {
        let path = dir.join(format!("basic_{split}.tsv"));
        let text = read_text(&path)?;
        let mut lines = text.lines().enumerate();
        match lines.next() {
            Some((_, h)) if h.trim_end() == "Source\tTarget" => {}
            other => {
                return Err(Error::format(
                    &path,
                    format!("line 1: expected the header \"Source\\tTarget\", got {:?}", other.map_or("", |(_, h)| h)),
                ))
            }
        }
        let (mut seqs, mut labels) = (Vec::new(), Vec::new());
        for (i, line) in lines {
            let line = line.trim_end_matches('\r');
            if line.is_empty() {
                continue;
            }
            let lineno = i + 1;
            let Some((source, target)) = line.split_once('\t') else {
                return Err(Error::format(&path, format!("line {lineno}: expected \"source<TAB>target\"")));
            };
            let tokens = tokenize(source).map_err(|e| Error::format(&path, format!("line {lineno}: {e}")))?;
            if tokens.is_empty() {
                return Err(Error::format(&path, format!("line {lineno}: empty source")));
            }
            let label = match target.trim().parse::<u32>() {
                Ok(v) if (v as usize) < N_CLASSES => v,
                _ => {
                    return Err(Error::format(&path, format!("line {lineno}: target {target:?} is not a digit 0..=9")))
                }
            };
            seqs.push(tokens);
            labels.push(label);
        }
        Ok(Split { inputs: Inputs::Tokens(seqs), targets: Targets::Classes(labels) })
    };
    Ok(task(load("train")?, load("val")?, load("test")?))
}

//! Byte-level text loaders for the LRA text tasks.
//!
//! # Tokens
//!
//! Text is read as raw bytes (no UTF-8 decoding, as LRA's byte-level tasks): byte `b` has token
//! id `b + 1`, 0 is padding, so [`TEXT_VOCAB_SIZE`] = 257. Retrieval pairs add a separator token
//! [`SEP_ID`] = 257, so [`AAN_VOCAB_SIZE`] = 258.
//!
//! # Text classification (IMDB and the like): [`load_text_tsv`]
//!
//! LRA reads IMDB through `tensorflow_datasets`, and the official S4 repository through the
//! Hugging Face `datasets` hub; neither ships a file format. This loader takes a plain TSV instead:
//! one example per line, `label<TAB>text`, the label a class index 0, 1, ..., the text everything
//! after the first tab (a text cannot contain a newline). An optional first line `label<TAB>text`
//! is a header. Texts are truncated to `max_len` bytes if given (LRA and S4 use 4096 for IMDB).
//!
//! # Retrieval (ACL Anthology Network): [`load_aan`]
//!
//! The LRA release (`lra_release/tsv_data/`) has `new_aan_pairs.train.tsv`, `.eval.tsv` and
//! `.test.tsv`, without a header, each line `label<TAB>id1<TAB>id2<TAB>text1<TAB>text2` with a
//! float label `0.0`/`1.0` (LRA's `matching/input_pipeline.py` reads them as such; the official S4
//! `AAN` loader uses the same columns). LRA and S4 encode the two documents separately and combine
//! them in a two-tower model; since this crate's models read one sequence, the pair is encoded as
//! one: the bytes of text1 (truncated to `max_len`), [`SEP_ID`], the bytes of text2 (truncated to
//! `max_len`), at most `2 max_len + 1` tokens (LRA: `max_len` = 4000).
//!
//! # Example
//!
//! ```
//! use s4::data::lra::{load_aan, load_text_tsv, SEP_ID};
//! use s4::data::Inputs;
//!
//! let dir = std::env::temp_dir().join(format!("s4-doc-lra-{}", std::process::id()));
//! std::fs::create_dir_all(&dir).unwrap();
//! let tsv = dir.join("imdb.tsv");
//! std::fs::write(&tsv, "label\ttext\n1\tGood!\n0\tbad\n").unwrap();
//! let split = load_text_tsv(&tsv, Some(3))?; // truncated to 3 bytes
//! let Inputs::Tokens(seqs) = &split.inputs else { unreachable!() };
//! assert_eq!(seqs[0], vec![b'G' as u32 + 1, b'o' as u32 + 1, b'o' as u32 + 1]); // byte + 1
//! assert_eq!(split.targets.classes(), Some(&[1, 0][..]));
//!
//! // errors name the file and the line
//! std::fs::write(&tsv, "1\tfine\nx\toops\n").unwrap();
//! let err = load_text_tsv(&tsv, None).unwrap_err().to_string();
//! assert!(err.contains("imdb.tsv") && err.contains("line 2"), "{err}");
//!
//! // retrieval pairs become one sequence: text1, SEP, text2
//! for split in ["train", "eval", "test"] {
//!     std::fs::write(dir.join(format!("new_aan_pairs.{split}.tsv")), "1.0\tid1\tid2\tab\tcd\n").unwrap();
//! }
//! let aan = load_aan(&dir, 4000)?;
//! let Inputs::Tokens(pairs) = &aan.val.inputs else { unreachable!() };
//! assert_eq!(pairs[0], vec![98, 99, SEP_ID, 100, 101]);
//! # std::fs::remove_dir_all(&dir).unwrap();
//! # Ok::<(), s4::Error>(())
//! ```

use std::path::Path;

use super::{Inputs, Split, Targets, TaskData};
use crate::error::{Error, Result};

/// Vocabulary size of byte-level text: padding + 256 bytes.
pub const TEXT_VOCAB_SIZE: usize = 257;
/// Separator between the two documents of a retrieval pair.
pub const SEP_ID: u32 = 257;
/// Vocabulary size of retrieval pairs: padding + 256 bytes + separator.
pub const AAN_VOCAB_SIZE: usize = 258;

/// Token ids of `bytes` (byte + 1), at most `max_len` of them.
fn byte_tokens(bytes: &[u8], max_len: Option<usize>) -> Vec<u32> {
    let n = max_len.map_or(bytes.len(), |m| m.min(bytes.len()));
    bytes[..n].iter().map(|&b| b as u32 + 1).collect()
}

/// Lines of a file as bytes (trailing `\r` removed), with 1-based line numbers.
fn byte_lines(raw: &[u8]) -> impl Iterator<Item = (usize, &[u8])> {
    raw.split(|&b| b == b'\n')
        .enumerate()
        .map(|(i, l)| (i + 1, l.strip_suffix(b"\r").unwrap_or(l)))
        .filter(|(_, l)| !l.is_empty())
}

/// Loads a byte-level text classification TSV (`label<TAB>text` per line; see the module docs).
/// Returns token sequences (byte + 1, at most `max_len` each) and class targets.
///
/// # Errors
/// `max_len = Some(0)`, an unreadable file, or (naming the file and line) a row without a tab, a
/// label that is not a non-negative integer, or an empty text.
pub fn load_text_tsv(path: &Path, max_len: Option<usize>) -> Result<Split> {
    if max_len == Some(0) {
        return Err(Error::invalid("max_len", 0, "at least 1 (or None for no truncation)"));
    }
    let raw = std::fs::read(path).map_err(|e| Error::io(path, e))?;
    let (mut seqs, mut labels) = (Vec::new(), Vec::new());
    for (lineno, line) in byte_lines(&raw) {
        let Some(tab) = line.iter().position(|&b| b == b'\t') else {
            return Err(Error::format(path, format!("line {lineno}: expected \"label<TAB>text\"")));
        };
        let (label, text) = (&line[..tab], &line[tab + 1..]);
        if lineno == 1 && label == b"label" && text == b"text" {
            continue;
        }
        let label = match std::str::from_utf8(label).ok().and_then(|s| s.trim().parse::<u32>().ok()) {
            Some(l) => l,
            None => {
                return Err(Error::format(
                    path,
                    format!("line {lineno}: label {:?} is not a class index 0, 1, ...", String::from_utf8_lossy(label)),
                ))
            }
        };
        if text.is_empty() {
            return Err(Error::format(path, format!("line {lineno}: empty text")));
        }
        seqs.push(byte_tokens(text, max_len));
        labels.push(label);
    }
    Ok(Split { inputs: Inputs::Tokens(seqs), targets: Targets::Classes(labels) })
}

/// Loads one AAN pairs file as single sequences `text1 SEP text2`.
fn load_aan_file(path: &Path, max_len: usize) -> Result<Split> {
    let raw = std::fs::read(path).map_err(|e| Error::io(path, e))?;
    let (mut seqs, mut labels) = (Vec::new(), Vec::new());
    for (lineno, line) in byte_lines(&raw) {
        let fields: Vec<&[u8]> = line.splitn(5, |&b| b == b'\t').collect();
        if fields.len() != 5 {
            return Err(Error::format(
                path,
                format!(
                    "line {lineno}: expected 5 tab-separated fields (label, id1, id2, text1, text2), got {}",
                    fields.len()
                ),
            ));
        }
        let label = std::str::from_utf8(fields[0]).ok().and_then(|s| s.trim().parse::<f64>().ok());
        let label = match label {
            Some(v) if v == 0.0 || v == 1.0 => v as u32,
            _ => {
                return Err(Error::format(
                    path,
                    format!("line {lineno}: label {:?} is not 0 or 1", String::from_utf8_lossy(fields[0])),
                ))
            }
        };
        let mut seq = byte_tokens(fields[3], Some(max_len));
        seq.push(SEP_ID);
        seq.extend(byte_tokens(fields[4], Some(max_len)));
        seqs.push(seq);
        labels.push(label);
    }
    Ok(Split { inputs: Inputs::Tokens(seqs), targets: Targets::Classes(labels) })
}

/// Loads the LRA retrieval task from `dir/new_aan_pairs.{train,eval,test}.tsv` (see the module
/// docs), each document truncated to `max_len` bytes; `eval` is the val split. 2 classes,
/// vocabulary [`AAN_VOCAB_SIZE`].
///
/// # Errors
/// `max_len = 0`, a missing or unreadable file, or (naming the file and line) a row without 5
/// fields or with a label other than 0 or 1.
pub fn load_aan(dir: &Path, max_len: usize) -> Result<TaskData> {
    if max_len == 0 {
        return Err(Error::invalid("max_len", 0, "at least 1"));
    }
    let load = |split: &str| load_aan_file(&dir.join(format!("new_aan_pairs.{split}.tsv")), max_len);
    Ok(TaskData {
        name: "aan".into(),
        train: load("train")?,
        val: load("eval")?,
        test: load("test")?,
        vocab_size: Some(AAN_VOCAB_SIZE),
        d_input: 1,
        d_output: 2,
        regression: false,
    })
}

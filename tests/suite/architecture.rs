//! The crate's imports point down: every `crate::` path in src/ (use lines, grouped uses and
//! inline paths alike; comments excluded) names a module of a lower layer than the file's own, or
//! of the same module. The layer table is the README's "Architecture" section.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

/// Modules bottom to top. Within a layer, a module may import only from the modules listed
/// before it (so the order inside a row matters too).
const LAYERS: [(&str, &[&str]); 8] = [
    ("foundations", &["error", "allocator", "budget", "scalar", "io", "plot", "nn", "data"]),
    ("S4 maths", &["discretize", "hippo", "ssm"]),
    ("kernels", &["kernel", "conv"]),
    ("layer", &["layer"]),
    ("models", &["model", "transformer"]),
    ("training", &["train"]),
    ("speculative decoding", &["speculative"]),
    ("command line", &["cli"]),
];

/// The position of a module in the bottom-to-top order.
fn rank(module: &str) -> Option<usize> {
    LAYERS.iter().flat_map(|(_, mods)| mods.iter()).position(|m| *m == module)
}

fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) {
    for entry in std::fs::read_dir(dir).expect("src/ is readable") {
        let path = entry.expect("dir entry").path();
        if path.is_dir() {
            rust_files(&path, out);
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
}

/// The top-level module a file of src/ belongs to (`cli` for the binary's files).
fn module_of(rel: &Path) -> String {
    let first = rel.components().next().expect("a path under src/").as_os_str().to_string_lossy().into_owned();
    match first.strip_suffix(".rs") {
        Some("main") => "cli".to_string(),
        Some(m) => m.to_string(),
        None => first,
    }
}

/// The code of a file without its comments (line comments and doc comments).
fn code_of(text: &str) -> String {
    text.lines()
        .map(|l| match l.find("//") {
            // a `//` inside a string literal would cut the line short: only a few characters are lost
            Some(i) => &l[..i],
            None => l,
        })
        .collect::<Vec<_>>()
        .join("\n")
}

/// The first path segments of the groups after `prefix{` (e.g. `use crate::{a::b, c}` → a, c),
/// nested braces skipped.
fn grouped(code: &str, prefix: &str, out: &mut BTreeSet<String>) {
    let pat = format!("{prefix}{{");
    let mut rest = code;
    while let Some(i) = rest.find(&pat) {
        let body = &rest[i + pat.len()..];
        let (mut depth, mut item, mut end) = (0usize, String::new(), body.len());
        for (j, c) in body.char_indices() {
            match c {
                '{' => depth += 1,
                '}' if depth == 0 => {
                    end = j;
                    break;
                }
                '}' => depth -= 1,
                ',' if depth == 0 => {
                    push_first(&item, out);
                    item.clear();
                    continue;
                }
                _ => {}
            }
            if depth == 0 || c != '{' {
                item.push(c);
            }
        }
        push_first(&item, out);
        rest = &body[end..];
    }
}

fn push_first(item: &str, out: &mut BTreeSet<String>) {
    let name: String = item.trim().chars().take_while(|c| c.is_alphanumeric() || *c == '_').collect();
    if !name.is_empty() {
        out.insert(name);
    }
}

/// Every module named by a `prefix` path (`crate::x`, `crate::{x, y}`).
fn targets(code: &str, prefix: &str) -> BTreeSet<String> {
    let mut out = BTreeSet::new();
    for (i, _) in code.match_indices(prefix) {
        let before = code[..i].chars().last();
        if before.is_some_and(|c| c.is_alphanumeric() || c == '_' || c == ':' || c == '$') {
            continue; // e.g. `$crate::` or `other_crate::`
        }
        push_first(&code[i + prefix.len()..], &mut out);
    }
    grouped(code, prefix, &mut out);
    // `crate::Error`, `crate::Result` are the root's re-exports of the error module
    out.into_iter()
        .map(|m| if m == "Error" || m == "Result" { "error".to_string() } else { m })
        .filter(|m| !m.is_empty())
        .collect()
}

#[test]
fn imports_point_down() {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut files = Vec::new();
    rust_files(&src, &mut files);
    let mut upward = Vec::new();
    let mut unknown = BTreeSet::new();
    for file in files {
        let rel = file.strip_prefix(&src).expect("under src/").to_path_buf();
        if rel == Path::new("lib.rs") {
            continue; // the root declares every module
        }
        let module = module_of(&rel);
        let Some(own) = rank(&module) else {
            unknown.insert(module);
            continue;
        };
        let code = code_of(&std::fs::read_to_string(&file).expect("readable"));
        let mut names = targets(&code, "crate::");
        // `super::` at the top of a module (src/x.rs, src/x/mod.rs) is the crate root
        let top = rel.components().count() == 1
            || rel.file_name().is_some_and(|f| f == "mod.rs") && rel.components().count() == 2;
        if top {
            names.extend(targets(&code, "super::"));
        }
        for target in names {
            match rank(&target) {
                Some(r) if r > own => upward.push(format!("{} imports {target} ({module} is below it)", rel.display())),
                Some(_) => {}
                // the binary imports the library as `s4::`; other names are items of the root
                None if module == "cli" => {}
                None => {
                    unknown.insert(format!("{target} (in {})", rel.display()));
                }
            }
        }
    }
    assert!(unknown.is_empty(), "modules missing from the layer table: {unknown:?}");
    assert!(upward.is_empty(), "upward imports:\n{}", upward.join("\n"));
}

#[test]
fn the_checker_sees_every_form_of_path() {
    let code = code_of(
        "use crate::a::X;\nuse crate::{b::{Y, Z}, c};\nfn f() { crate::d::g(); }\n// crate::e in a comment\n\
         let s = $crate::f;",
    );
    let found: Vec<String> = targets(&code, "crate::").into_iter().collect();
    assert_eq!(found, ["a", "b", "c", "d"]);
}

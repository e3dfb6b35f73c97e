//! The GPT-2 transformer: Hugging Face parity (full pass and KV cache), cache truncation, loading
//! variants and errors, gradient checks against finite differences in f64, training.
//!
//! `cargo test --release --test transformer -- --nocapture` prints the measured differences.

use ndarray::{s, Array2, Array3, Axis};
use rand_distr::{Distribution, StandardNormal};
use s4::io::read_npy;
use s4::nn::loss;
use s4::train::lm::{train_lm, train_lm_run, LmTrainConfig};
use s4::train::RunOptions;
use s4::transformer::grad::{self, LmTarget};
use s4::transformer::{Activation, Gpt, GptConfig, TreeMask, IGNORE};
use safetensors::tensor::TensorView;
use safetensors::{Dtype, SafeTensors};
use std::path::{Path, PathBuf};

use crate::common;
use common::{bump, check, check_tensors, dot2, randn1, randn2, rng};

fn fixture_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/gpt2-tiny")
}

fn fixture_ids() -> Array2<u32> {
    let ids: Array2<i64> = read_npy(fixture_dir().join("input_ids.npy")).unwrap();
    ids.mapv(|v| u32::try_from(v).unwrap())
}

fn fixture_array(name: &str) -> Array3<f32> {
    read_npy(fixture_dir().join(name)).unwrap()
}

fn max_abs_diff<D: ndarray::Dimension>(a: &ndarray::Array<f32, D>, b: &ndarray::Array<f32, D>) -> f32 {
    assert_eq!(a.shape(), b.shape());
    a.iter().zip(b).fold(0.0f32, |m, (x, y)| m.max((x - y).abs()))
}

/// A fresh temporary folder for one test.
fn temp_dir(tag: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("s4-transformer-{tag}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

// ---------------------------------------------------------------------------------------------
// Hugging Face parity

#[test]
fn fixture_full_pass_matches_hugging_face() {
    let model = Gpt::<f32>::load(&fixture_dir()).unwrap();
    assert_eq!(model.config().activation_function, "gelu_new");
    let ids = fixture_ids();
    let logits = model.forward(ids.view()).unwrap();
    let d = max_abs_diff(&logits, &fixture_array("logits.npy"));
    println!("forward vs logits.npy: max abs diff {d:.2e}");
    assert!(d < 1e-4, "{d:e}");
    // the same through the model-agnostic loader (the CLI's `logits`, Python's `LanguageModel.logits`)
    let any = s4::speculative::CausalModel::load(&fixture_dir()).unwrap();
    assert_eq!(any.logits(ids.view()).unwrap(), logits);
    // the same model in f64
    let l64 = model.cast::<f64>().forward(ids.view()).unwrap().mapv(|v| v as f32);
    let d64 = max_abs_diff(&l64, &fixture_array("logits.npy"));
    println!("f64 forward vs logits.npy: max abs diff {d64:.2e}");
    assert!(d64 < 1e-4, "{d64:e}");
}

#[test]
fn fixture_incremental_decoding_matches_hugging_face() {
    let model = Gpt::<f32>::load(&fixture_dir()).unwrap();
    let ids = fixture_ids();
    let (b, t) = ids.dim();
    let full = model.forward(ids.view()).unwrap();
    // 12-token prefill, then 8 single-token passes (HF DynamicCache)
    let mut cache = model.new_cache(b);
    let mut inc = Array3::<f32>::zeros((b, t, 100));
    let pre = model.forward_cached(&mut cache, ids.slice(s![.., ..12])).unwrap();
    inc.slice_mut(s![.., ..12, ..]).assign(&pre);
    for p in 12..t {
        let one = model.forward_cached(&mut cache, ids.slice(s![.., p..p + 1])).unwrap();
        inc.slice_mut(s![.., p..p + 1, ..]).assign(&one);
    }
    assert_eq!(cache.len(), t);
    let d = max_abs_diff(&inc, &fixture_array("logits_incremental.npy"));
    println!("12 + 8×1 cached vs logits_incremental.npy: max abs diff {d:.2e}");
    assert!(d < 1e-4, "{d:e}");
    // 12-token prefill, then the 8 remaining tokens in one pass
    let mut cache = model.new_cache(b);
    let pre = model.forward_cached(&mut cache, ids.slice(s![.., ..12])).unwrap();
    let rest = model.forward_cached(&mut cache, ids.slice(s![.., 12..])).unwrap();
    let d1 = max_abs_diff(&pre, &full.slice(s![.., ..12, ..]).to_owned());
    let d2 = max_abs_diff(&rest, &full.slice(s![.., 12.., ..]).to_owned());
    println!("12 + 8 cached vs full pass: max abs diff {:.2e}", d1.max(d2));
    assert!(d1.max(d2) < 1e-5, "{d1:e} {d2:e}");
}

#[test]
fn truncated_cache_continues_like_a_fresh_one() {
    let model = Gpt::<f32>::load(&fixture_dir()).unwrap();
    let ids = fixture_ids().slice(s![.., ..15]).to_owned();
    let mut cache = model.new_cache(2);
    model.forward_cached(&mut cache, ids.slice(s![.., ..10])).unwrap();
    model.forward_cached(&mut cache, ids.slice(s![.., 10..])).unwrap();
    assert_eq!(cache.len(), 15);
    let mut worst = 0.0f32;
    for variant in 0..2u32 {
        // the same tokens again, then different ones at positions 10..15
        let mut seq = ids.clone();
        seq.slice_mut(s![.., 10..]).mapv_inplace(|v| (v + 37 * variant) % 100);
        cache.truncate(10).unwrap();
        assert_eq!(cache.len(), 10);
        let again = model.forward_cached(&mut cache, seq.slice(s![.., 10..])).unwrap();
        let fresh = model.forward(seq.view()).unwrap();
        worst = worst.max(max_abs_diff(&again, &fresh.slice(s![.., 10.., ..]).to_owned()));
        let mut fresh_cache = model.new_cache(2);
        model.forward_cached(&mut fresh_cache, seq.view()).unwrap();
        for l in 0..model.config().n_layer {
            for (a, b) in [
                (cache.keys(l).unwrap(), fresh_cache.keys(l).unwrap()),
                (cache.values(l).unwrap(), fresh_cache.values(l).unwrap()),
            ] {
                assert_eq!(a.shape(), b.shape());
                worst = worst.max(max_abs_diff(&a.to_owned(), &b.to_owned()));
            }
        }
    }
    println!("truncate(10) + 5 tokens vs fresh cache: max abs diff {worst:.2e} (logits and K/V)");
    assert!(worst < 1e-5, "{worst:e}");
    cache.clear();
    assert!(cache.is_empty());
}

/// Decoding with 16-bit weights: the packed copy holds bf16 or f16 values and the kernels widen
/// them as they load, so decoding equals f32 decoding of a model whose packed weights were rounded
/// to the format, bit for bit; the copy takes half the bytes; an f16 overflow is an error.
#[test]
fn sixteen_bit_decoding_weights_equal_rounded_f32_weights() {
    use s4::scalar::HalfPrecision;
    let ids = fixture_ids();
    for p in [HalfPrecision::Bf16, HalfPrecision::F16] {
        // the weights the decoding copy packs (the four linears of each block and wte), rounded
        let mut rounded = Gpt::<f32>::load(&fixture_dir()).unwrap();
        for (name, mut t) in rounded.tensors_mut() {
            if ["wte.weight", "c_attn.weight", "c_proj.weight", "c_fc.weight"].iter().any(|s| name.ends_with(s)) {
                t.mapv_inplace(|v| p.round(v));
            }
        }
        let mut half = rounded.clone();
        half.set_decoding_precision(Some(p)).unwrap();
        assert_eq!(half.decoding_precision(), Some(p));
        let (mut c16, mut c32) = (half.new_cache(2), rounded.new_cache(2));
        for range in [0..10, 10..15] {
            let a = half.forward_cached(&mut c16, ids.slice(s![.., range.clone()])).unwrap();
            let b = rounded.forward_cached(&mut c32, ids.slice(s![.., range])).unwrap();
            assert!(a.iter().zip(&b).all(|(x, y)| x.to_bits() == y.to_bits()), "{p:?}");
        }
        let full = Gpt::<f32>::load(&fixture_dir()).unwrap();
        full.prepare_decoding();
        let (b32, b16) = (full.decoding_bytes().unwrap(), half.decoding_bytes().unwrap());
        println!("{p:?}: packed decoding weights {b16} bytes against {b32} in f32");
        assert!(b16 * 2 <= b32 + 64, "{b16} vs {b32}");
    }
    let mut big = Gpt::<f32>::load(&fixture_dir()).unwrap();
    if let Some((_, mut t)) = big.tensors_mut().into_iter().find(|(n, _)| n.ends_with("c_fc.weight")) {
        t[[0, 0]] = 1e6;
    }
    let e = big.set_decoding_precision(Some(HalfPrecision::F16)).unwrap_err().to_string();
    assert!(e.contains("1000000") && e.contains("f16"), "{e}");
    big.set_decoding_precision(Some(HalfPrecision::Bf16)).unwrap();
}

/// Decoding with bf16 products ([`MatmulPrecision::Medium`]): every position's logits are the
/// same bits whether it is scored alone or with others (what speculative decoding relies on), and
/// stay within the rounding of bf16 activations of the f32 products' logits.
#[test]
fn bf16_products_score_each_position_as_alone_and_near_f32() {
    use s4::scalar::MatmulPrecision;
    let ids = fixture_ids();
    let full = Gpt::<f32>::load(&fixture_dir()).unwrap();
    let mut medium = full.clone();
    medium.set_matmul_precision(MatmulPrecision::Medium).unwrap();
    assert_eq!(medium.matmul_precision(), MatmulPrecision::Medium);
    let (t, v) = (ids.ncols(), full.config().vocab_size);
    let (mut together, mut one_by_one, mut exact) = (medium.new_cache(2), medium.new_cache(2), full.new_cache(2));
    let all = medium.forward_cached(&mut together, ids.view()).unwrap();
    let reference = full.forward_cached(&mut exact, ids.view()).unwrap();
    let (mut worst, mut scale) = (0f32, 0f32);
    for i in 0..t {
        let alone = medium.forward_cached(&mut one_by_one, ids.slice(s![.., i..i + 1])).unwrap();
        for b in 0..ids.nrows() {
            for j in 0..v {
                assert_eq!(alone[[b, 0, j]].to_bits(), all[[b, i, j]].to_bits(), "position {i}, row {b}, logit {j}");
                worst = worst.max((all[[b, i, j]] - reference[[b, i, j]]).abs());
                scale = scale.max(reference[[b, i, j]].abs());
            }
        }
    }
    println!("bf16 products: logits within {worst:.3e} of f32 products (largest |logit| {scale:.2})");
    assert!(worst > 0.0 && worst < 2e-2 * scale.max(1.0), "{worst} vs {scale}");
    let mut big = full.clone();
    if let Some((_, mut w)) = big.tensors_mut().into_iter().find(|(n, _)| n.ends_with("c_fc.weight")) {
        w[[0, 0]] = f32::MAX;
    }
    let e = big.set_matmul_precision(MatmulPrecision::Medium).unwrap_err().to_string();
    assert!(e.contains("bf16"), "{e}");
}

/// One sequence as a (1, T) array.
fn row(tokens: &[u32]) -> Array2<u32> {
    Array2::from_shape_vec((1, tokens.len()), tokens.to_vec()).unwrap()
}

#[test]
fn tree_attention_equals_a_pass_per_path_and_compaction_a_fresh_prefill() {
    let f32_products = Gpt::<f32>::load(&fixture_dir()).unwrap();
    let mut bf16_products = f32_products.clone();
    bf16_products.set_matmul_precision(s4::scalar::MatmulPrecision::Medium).unwrap();
    let prefix: Vec<u32> = fixture_ids().row(0).iter().take(6).copied().collect();
    // the pending token (no parent), two children, grandchildren, and a second branch of depth 3
    let parents = [None, Some(0), Some(0), Some(1), Some(1), Some(2), Some(5), Some(6), Some(0)];
    let tree = TreeMask::new(&parents).unwrap();
    let tokens: Vec<u32> = (0..parents.len() as u32).map(|i| (7 + 13 * i) % 100).collect();
    // every node's logits, and the compacted cache, are the bits of a pass along its path alone,
    // with either arithmetic of the products (greedy speculative decoding with trees depends on
    // it: a last-bit difference flipped a near-tie of the demo verifier with bf16 products)
    for model in [&bf16_products, &f32_products] {
        let mut cache = model.new_cache(1);
        model.forward_cached(&mut cache, row(&prefix).view()).unwrap();
        let scored = model.forward_tree(&mut cache, &tokens, &tree).unwrap();
        assert_eq!(cache.len(), prefix.len() + tokens.len());
        for i in 0..tokens.len() {
            let path: Vec<u32> = tree.path(i).iter().map(|&j| tokens[j]).collect();
            let mut fresh = model.new_cache(1);
            model.forward_cached(&mut fresh, row(&prefix).view()).unwrap();
            let rows = model.forward_cached(&mut fresh, row(&path).view()).unwrap();
            let last = rows.slice(s![0, path.len() - 1, ..]);
            assert!(scored.row(i).iter().zip(last).all(|(a, b)| a.to_bits() == b.to_bits()), "node {i}");
        }
        // keep the path 0 → 2 → 5 → 6 → 7: the cache equals a fresh prefill of prefix + that path
        let keep = tree.path(7);
        assert_eq!(keep, vec![0, 2, 5, 6, 7]);
        cache.compact(prefix.len(), &keep).unwrap();
        let mut text = prefix.clone();
        text.extend(keep.iter().map(|&j| tokens[j]));
        let mut fresh = model.new_cache(1);
        model.forward_cached(&mut fresh, row(&text).view()).unwrap();
        assert_eq!(cache.len(), fresh.len());
        for l in 0..model.config().n_layer {
            assert_eq!(cache.keys(l).unwrap(), fresh.keys(l).unwrap(), "keys of layer {l}");
            assert_eq!(cache.values(l).unwrap(), fresh.values(l).unwrap(), "values of layer {l}");
        }
        // and both continue alike
        let next = [[42u32, 17]];
        let a = model.forward_cached(&mut cache, ndarray::aview2(&next).view()).unwrap();
        let b = model.forward_cached(&mut fresh, ndarray::aview2(&next).view()).unwrap();
        assert_eq!(a, b);
    }
    let model = &f32_products;
    let text: Vec<u32> = prefix.iter().copied().chain([0, 2, 5, 6, 7].map(|j| tokens[j])).collect();
    // a chain is causal attention
    let chain = model.forward_tree(&mut model.new_cache(1), &text, &TreeMask::chain(text.len()).unwrap()).unwrap();
    let full = model.forward(row(&text).view()).unwrap();
    assert!(max_abs_diff(&chain, &full.index_axis(Axis(0), 0).to_owned()) < 1e-5);
    // errors
    let mut c = model.new_cache(1);
    assert!(model.forward_tree(&mut c, &tokens[..3], &tree).is_err());
    assert!(c.compact(1, &[0]).is_err());
    model.forward_cached(&mut c, ndarray::aview2(&[[1u32, 2, 3]]).view()).unwrap();
    assert!(c.compact(1, &[1, 0]).is_err() && c.compact(1, &[2]).is_err());
    c.compact(1, &[1]).unwrap();
    assert_eq!(c.len(), 2);
}

// ---------------------------------------------------------------------------------------------
// Loading and saving

/// The fixture's tensors: name -> (dtype, shape, bytes).
fn fixture_tensors() -> Vec<(String, Dtype, Vec<usize>, Vec<u8>)> {
    let bytes = std::fs::read(fixture_dir().join("model.safetensors")).unwrap();
    let st = SafeTensors::deserialize(&bytes).unwrap();
    let mut out: Vec<_> =
        st.tensors().into_iter().map(|(n, t)| (n, t.dtype(), t.shape().to_vec(), t.data().to_vec())).collect();
    out.sort_by(|a, b| a.0.cmp(&b.0));
    out
}

/// Writes a GPT-2 folder with the fixture's config.json and these tensors.
fn write_folder(dir: &Path, tensors: &[(String, Dtype, Vec<usize>, Vec<u8>)]) {
    std::fs::create_dir_all(dir).unwrap();
    std::fs::copy(fixture_dir().join("config.json"), dir.join("config.json")).unwrap();
    let views: Vec<(String, TensorView)> =
        tensors.iter().map(|(n, d, s, b)| (n.clone(), TensorView::new(*d, s.clone(), b).unwrap())).collect();
    std::fs::write(dir.join("model.safetensors"), safetensors::serialize(views, None).unwrap()).unwrap();
}

fn f32_bytes(v: &[f32]) -> Vec<u8> {
    v.iter().flat_map(|x| x.to_le_bytes()).collect()
}

#[test]
fn loads_hub_layouts_and_reports_every_bad_tensor() {
    let root = temp_dir("load");
    let reference = Gpt::<f32>::load(&fixture_dir()).unwrap();
    let tensors = fixture_tensors();
    let wte = tensors.iter().find(|t| t.0 == "transformer.wte.weight").unwrap().clone();

    // GPT2Model names (no prefix), mask buffers, lm_head.weight = wte
    let mut hub: Vec<_> = tensors
        .iter()
        .map(|(n, d, s, b)| (n.trim_start_matches("transformer.").to_string(), *d, s.clone(), b.clone()))
        .collect();
    let mask: Vec<f32> = (0..128 * 128).map(|k| if k % 128 <= k / 128 { 1.0 } else { 0.0 }).collect();
    hub.push(("h.0.attn.bias".into(), Dtype::F32, vec![1, 1, 128, 128], f32_bytes(&mask)));
    hub.push(("h.1.attn.bias".into(), Dtype::F32, vec![1, 1, 128, 128], f32_bytes(&mask)));
    hub.push(("h.0.attn.masked_bias".into(), Dtype::F32, vec![], f32_bytes(&[-1e4])));
    hub.push(("lm_head.weight".into(), wte.1, wte.2.clone(), wte.3.clone()));
    write_folder(&root.join("hub"), &hub);
    let m = Gpt::<f32>::load(&root.join("hub")).unwrap();
    assert_eq!(m, reference);

    // F16 tensors are converted
    let half: Vec<_> = tensors
        .iter()
        .map(|(n, _, s, b)| {
            let h: Vec<u8> = b
                .chunks_exact(4)
                .flat_map(|c| half::f16::from_f32(f32::from_le_bytes([c[0], c[1], c[2], c[3]])).to_le_bytes())
                .collect();
            (n.clone(), Dtype::F16, s.clone(), h)
        })
        .collect();
    write_folder(&root.join("f16"), &half);
    let m16 = Gpt::<f32>::load(&root.join("f16")).unwrap();
    let w16 = m16.wte()[[3, 5]];
    assert_eq!(w16, half::f16::from_f32(reference.wte()[[3, 5]]).to_f32());

    // missing tensor, wrong shape, unexpected tensor, untied head: all reported at once
    let mut bad: Vec<_> = tensors.iter().filter(|t| t.0 != "transformer.h.1.ln_2.bias").cloned().collect();
    let fc = bad.iter_mut().find(|t| t.0 == "transformer.h.0.mlp.c_fc.bias").unwrap();
    fc.2 = vec![255];
    fc.3.truncate(255 * 4);
    bad.push(("transformer.h.7.ln_1.weight".into(), Dtype::F32, vec![64], f32_bytes(&[1.0; 64])));
    let mut other_head = wte.3.clone();
    other_head[0] ^= 1;
    bad.push(("lm_head.weight".into(), Dtype::F32, wte.2.clone(), other_head));
    write_folder(&root.join("bad"), &bad);
    let e = Gpt::<f32>::load(&root.join("bad")).unwrap_err().to_string();
    println!("bad tensors: {e}");
    for needle in [
        "missing h.1.ln_2.bias",
        "transformer.h.0.mlp.c_fc.bias has shape [255]",
        "unexpected transformer.h.7.ln_1.weight",
        "lm_head.weight differs",
        "model.safetensors",
    ] {
        assert!(e.contains(needle), "{needle:?} not in {e}");
    }

    // a truncated file
    let full = std::fs::read(fixture_dir().join("model.safetensors")).unwrap();
    let cut = root.join("cut");
    write_folder(&cut, &tensors);
    std::fs::write(cut.join("model.safetensors"), &full[..full.len() / 2]).unwrap();
    let e = Gpt::<f32>::load(&cut).unwrap_err().to_string();
    println!("truncated: {e}");
    assert!(e.contains("model.safetensors") && e.contains("not a valid safetensors file"), "{e}");

    // a config the model cannot honour
    let cfg_dir = root.join("cfg");
    write_folder(&cfg_dir, &tensors);
    let text = std::fs::read_to_string(cfg_dir.join("config.json")).unwrap();
    std::fs::write(cfg_dir.join("config.json"), text.replace("\"n_head\": 4", "\"n_head\": 5")).unwrap();
    let e = Gpt::<f32>::load(&cfg_dir).unwrap_err().to_string();
    assert!(e.contains("config.json") && e.contains("n_head = 5"), "{e}");
    std::fs::write(
        cfg_dir.join("config.json"),
        text.replace("\"tie_word_embeddings\": true", "\"tie_word_embeddings\": false"),
    )
    .unwrap();
    let e = Gpt::<f32>::load(&cfg_dir).unwrap_err().to_string();
    assert!(e.contains("tie_word_embeddings"), "{e}");
    assert!(Gpt::<f32>::load(&root.join("nowhere")).unwrap_err().to_string().contains("config.json"));
    std::fs::remove_dir_all(&root).unwrap();
}

#[test]
fn save_then_load_is_bit_exact() {
    let root = temp_dir("save");
    let model = Gpt::<f32>::load(&fixture_dir()).unwrap();
    model.save(&root.join("a")).unwrap();
    let back = Gpt::<f32>::load(&root.join("a")).unwrap();
    assert_eq!(back, model);
    // the same names as the Hugging Face file, nothing else in the folder
    let bytes = std::fs::read(root.join("a/model.safetensors")).unwrap();
    let mut names: Vec<String> =
        SafeTensors::deserialize(&bytes).unwrap().names().iter().map(|s| s.to_string()).collect();
    names.sort();
    let expected: Vec<String> = fixture_tensors().into_iter().map(|t| t.0).collect();
    assert_eq!(names, expected);
    let mut files: Vec<_> = std::fs::read_dir(root.join("a")).unwrap().map(|e| e.unwrap().file_name()).collect();
    files.sort();
    assert_eq!(files, ["config.json", "model.safetensors"]);
    let cfg: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(root.join("a/config.json")).unwrap()).unwrap();
    assert_eq!(cfg["model_type"], "gpt2");
    // f64 models round-trip too
    let m64 = Gpt::<f64>::new(GptConfig { n_embd: 16, n_head: 2, n_layer: 1, ..GptConfig::default() }, 5).unwrap();
    m64.save(&root.join("b")).unwrap();
    assert_eq!(Gpt::<f64>::load(&root.join("b")).unwrap(), m64);
    std::fs::remove_dir_all(&root).unwrap();
}

// ---------------------------------------------------------------------------------------------
// Errors

#[test]
fn bad_inputs_are_errors_with_useful_messages() {
    let model = Gpt::<f32>::load(&fixture_dir()).unwrap();
    let mut ids = fixture_ids();
    ids[[1, 7]] = 100;
    let e = model.forward(ids.view()).unwrap_err().to_string();
    println!("{e}");
    assert!(e.contains("sequence 1, position 7") && e.contains("100") && e.contains("vocab_size = 100"), "{e}");

    let e = model.forward(Array2::<u32>::zeros((2, 0)).view()).unwrap_err().to_string();
    println!("{e}");
    assert!(e.contains("empty"), "{e}");
    assert!(model.forward(Array2::<u32>::zeros((0, 3)).view()).is_err());

    let e = model.forward(Array2::<u32>::zeros((1, 129)).view()).unwrap_err().to_string();
    println!("{e}");
    assert!(e.contains("n_positions = 128"), "{e}");
    let mut cache = model.new_cache(1);
    model.forward_cached(&mut cache, Array2::<u32>::zeros((1, 120)).view()).unwrap();
    let e = model.forward_cached(&mut cache, Array2::<u32>::zeros((1, 10)).view()).unwrap_err().to_string();
    println!("{e}");
    assert!(e.contains("120 + 10 = 130") && e.contains("n_positions = 128"), "{e}");
    assert_eq!(cache.len(), 120, "a failed call leaves the cache as it was");
    model.forward_cached(&mut cache, Array2::<u32>::zeros((1, 8)).view()).unwrap();
    assert_eq!(cache.len(), 128);

    let e = cache.truncate(129).unwrap_err().to_string();
    println!("{e}");
    assert!(e.contains("129") && e.contains("current cache length 128"), "{e}");
    assert!(cache.keys(2).is_err());

    let e = model.forward_cached(&mut model.new_cache(3), fixture_ids().view()).unwrap_err().to_string();
    println!("{e}");
    assert!(e.contains("batch = 3"), "{e}");
    let other =
        Gpt::<f32>::new(GptConfig { vocab_size: 100, n_embd: 32, n_head: 4, n_layer: 2, ..Default::default() }, 0)
            .unwrap();
    assert!(model.forward_cached(&mut other.new_cache(2), fixture_ids().view()).is_err());

    // training inputs
    let small = tiny_model::<f64>(Activation::GeluTanh, 1);
    let ids = Array2::from_shape_fn((2, 5), |(b, t)| ((b * 5 + t) % 11) as u32);
    let mut tgt = ids.clone();
    tgt[[0, 3]] = 11;
    let e = grad::forward_backward(&small, ids.view(), tgt.view()).unwrap_err().to_string();
    assert!(e.contains("target id at (sequence 0, position 3)"), "{e}");
    let e =
        grad::forward_backward(&small, ids.view(), Array2::from_elem((2, 5), IGNORE).view()).unwrap_err().to_string();
    assert!(e.contains("all ignored"), "{e}");
    let e = grad::forward_backward(&small, ids.view(), Array2::zeros((2, 4)).view()).unwrap_err().to_string();
    assert!(e.contains("targets"), "{e}");

    // configurations
    let bad = |f: fn(&mut GptConfig)| {
        let mut c = GptConfig::default();
        f(&mut c);
        Gpt::<f32>::new(c, 0).unwrap_err().to_string()
    };
    assert!(bad(|c| c.n_head = 5).contains("multiple of n_head"));
    assert!(bad(|c| c.tie_word_embeddings = false).contains("tie_word_embeddings"));
    assert!(bad(|c| c.activation_function = "relu".into()).contains("activation_function"));
    assert!(bad(|c| c.layer_norm_epsilon = 0.0).contains("layer_norm_epsilon"));
    assert!(bad(|c| c.n_layer = 0).contains("n_layer"));
    assert!(bad(|c| c.n_embd = usize::MAX / 6 * 6).contains("model size"));
}

#[test]
fn config_reads_hugging_face_json() {
    let text = std::fs::read_to_string(fixture_dir().join("config.json")).unwrap();
    let cfg: GptConfig = serde_json::from_str(&text).unwrap();
    let expected = GptConfig {
        vocab_size: 100,
        n_positions: 128,
        n_embd: 64,
        n_layer: 2,
        n_head: 4,
        initializer_range: 0.1,
        ..GptConfig::default()
    };
    assert_eq!(cfg, expected);
    cfg.validate().unwrap();
    assert_eq!(cfg.inner(), 256);
}

// ---------------------------------------------------------------------------------------------
// Gradient checks (f64, central differences with one Richardson step, relative error ≤ 1e-6)

#[test]
fn op_gradients() {
    let mut worst = 0.0f64;
    // LayerNorm
    let x = randn2((6, 5), 1) * 1.5 + 0.3;
    let (w, b) = (randn1(5, 2) * 0.5 + 1.0, randn1(5, 3));
    let r = randn2((6, 5), 4);
    let (_, cache) = s4::nn::norm::layer_norm_forward(x.view(), w.view(), b.view(), 1e-5);
    let (gx, gw, gb) = s4::nn::norm::layer_norm_backward(&cache, w.view(), r.view());
    let f = |x: &Array2<f64>, w: &ndarray::Array1<f64>, b: &ndarray::Array1<f64>| {
        dot2(&s4::nn::norm::layer_norm_forward(x.view(), w.view(), b.view(), 1e-5).0, &r)
    };
    worst = worst.max(check("layer norm x", gx.as_slice().unwrap(), x.len(), |i, d| f(&bump(&x, i, d), &w, &b)));
    worst = worst.max(check("layer norm w", gw.as_slice().unwrap(), w.len(), |i, d| f(&x, &bump(&w, i, d), &b)));
    worst = worst.max(check("layer norm b", gb.as_slice().unwrap(), b.len(), |i, d| f(&x, &w, &bump(&b, i, d))));

    // linear (Conv1D layout), with enough rows for the gemm path and few for the streaming path
    for rows in [3, 20] {
        let x = randn2((rows, 5), 5);
        let (w, b) = (randn2((5, 3), 6), randn1(3, 7));
        let r = randn2((rows, 3), 8);
        let (gx, gw, gb) = s4::nn::linear::linear_backward(x.view(), w.view(), r.view());
        let f = |x: &Array2<f64>, w: &Array2<f64>, b: &ndarray::Array1<f64>| {
            dot2(&s4::nn::linear::linear(x.view(), w.view(), b.view()), &r)
        };
        let tag = format!("linear ({rows} rows)");
        worst =
            worst.max(check(&format!("{tag} x"), gx.as_slice().unwrap(), x.len(), |i, d| f(&bump(&x, i, d), &w, &b)));
        worst =
            worst.max(check(&format!("{tag} W"), gw.as_slice().unwrap(), w.len(), |i, d| f(&x, &bump(&w, i, d), &b)));
        worst =
            worst.max(check(&format!("{tag} b"), gb.as_slice().unwrap(), b.len(), |i, d| f(&x, &w, &bump(&b, i, d))));
    }

    // activations
    for act in [Activation::GeluTanh, Activation::GeluErf] {
        let x = randn2((4, 6), 9) * 2.0;
        let r = randn2((4, 6), 10);
        let gx = grad::activation_backward(x.view(), r.view(), act);
        worst = worst.max(check(&format!("{act:?}"), gx.as_slice().unwrap(), x.len(), |i, d| {
            dot2(&grad::activation_forward(bump(&x, i, d).view(), act), &r)
        }));
    }

    // causal attention: B = 2, T = 5, C = 8, 2 heads
    let qkv = randn2((10, 24), 11);
    let r = randn2((10, 8), 12);
    let (_, cache) = grad::attention_forward(qkv.view(), 2, 2);
    let g = grad::attention_backward(qkv.view(), &cache, r.view(), 2, 2);
    worst = worst.max(check("attention qkv", g.as_slice().unwrap(), qkv.len(), |i, d| {
        dot2(&grad::attention_forward(bump(&qkv, i, d).view(), 2, 2).0, &r)
    }));
    // all 240 entries, not a sample: q, k and v of every head and position
    let idx_all = |n: usize| -> Vec<usize> { (0..n).collect() };
    for chunk in idx_all(qkv.len()).chunks(40) {
        let an: Vec<f64> = chunk.iter().map(|&i| g.as_slice().unwrap()[i]).collect();
        check("attention qkv (all entries)", &an, an.len(), |k, d| {
            dot2(&grad::attention_forward(bump(&qkv, chunk[k], d).view(), 2, 2).0, &r)
        });
    }

    // embedding (tokens + positions from 1)
    let ids = ndarray::array![[1u32, 0, 3, 1, 10], [2, 2, 0, 1, 7]];
    let (wte, wpe) = (randn2((11, 8), 13), randn2((7, 8), 14));
    let r = randn2((10, 8), 15);
    let (gwte, gwpe) = grad::embedding_backward(ids.view(), r.view(), 11, 7, 1);
    let f = |wte: &Array2<f64>, wpe: &Array2<f64>| {
        dot2(&grad::embedding_forward(wte.view(), wpe.view(), ids.view(), 1), &r)
    };
    worst = worst.max(check("embedding wte", gwte.as_slice().unwrap(), wte.len(), |i, d| f(&bump(&wte, i, d), &wpe)));
    worst = worst.max(check("embedding wpe", gwpe.as_slice().unwrap(), wpe.len(), |i, d| f(&wte, &bump(&wpe, i, d))));

    // tied LM head
    for rows in [3, 12] {
        let x = randn2((rows, 8), 16);
        let r = randn2((rows, 11), 17);
        let (gx, gw) = grad::lm_head_backward(x.view(), wte.view(), r.view());
        let f = |x: &Array2<f64>, w: &Array2<f64>| dot2(&grad::lm_head_forward(x.view(), w.view()), &r);
        worst = worst.max(check(&format!("lm head ({rows} rows) x"), gx.as_slice().unwrap(), x.len(), |i, d| {
            f(&bump(&x, i, d), &wte)
        }));
        worst = worst.max(check(&format!("lm head ({rows} rows) wte"), gw.as_slice().unwrap(), wte.len(), |i, d| {
            f(&x, &bump(&wte, i, d))
        }));
    }

    // losses
    let logits = randn2((5, 4), 18) * 2.0;
    let labels = ndarray::array![0u32, 3, IGNORE, 1, 2];
    let (_, g, _) = loss::cross_entropy(logits.view(), labels.view()).unwrap();
    assert!(g.row(2).iter().all(|&v| v == 0.0));
    worst = worst.max(check("cross-entropy (one ignored)", g.as_slice().unwrap(), logits.len(), |i, d| {
        loss::cross_entropy(bump(&logits, i, d).view(), labels.view()).unwrap().0
    }));
    let mut teacher = loss::softmax(randn2((5, 4), 19).view());
    teacher.row_mut(3).fill(0.0); // no teacher at row 3
    teacher[[1, 2]] = 0.0; // a zero probability
    let s: f64 = teacher.row(1).sum();
    teacher.row_mut(1).mapv_inplace(|v| v / s);
    let (kl, g) = loss::kl_divergence(logits.view(), teacher.view()).unwrap();
    assert!(kl > 0.0);
    worst = worst.max(check("soft cross-entropy (KL)", g.as_slice().unwrap(), logits.len(), |i, d| {
        loss::kl_divergence(bump(&logits, i, d).view(), teacher.view()).unwrap().0
    }));
    let (kl_self, _) = loss::kl_divergence(logits.view(), loss::softmax(logits.view()).view()).unwrap();
    assert!(kl_self.abs() < 1e-12, "KL(p ‖ p) = {kl_self}");
    println!("ops: worst relative error {worst:.2e}");
}

#[test]
fn matrix_kernels_match_naive_products() {
    // every row count of the streaming kernels and of gemm, with odd tails (k % 4, o % 16, o > 256)
    let mut worst = 0.0f64;
    for (k, o) in [(7, 37), (64, 300), (5, 3)] {
        let w = randn2((k, o), 40);
        let b = randn1(o, 41);
        for m in 1..=12 {
            let x = randn2((m, k), 42 + m as u64);
            let y = s4::nn::linear::linear(x.view(), w.view(), b.view());
            let naive =
                Array2::from_shape_fn((m, o), |(r, j)| b[j] + (0..k).map(|i| x[[r, i]] * w[[i, j]]).sum::<f64>());
            worst = worst.max(y.iter().zip(&naive).fold(0.0, |a, (p, q)| a.max((p - q).abs())));
            let wte = randn2((o, k), 43);
            let logits = grad::lm_head_forward(x.view(), wte.view());
            let naive = Array2::from_shape_fn((m, o), |(r, v)| (0..k).map(|i| x[[r, i]] * wte[[v, i]]).sum::<f64>());
            worst = worst.max(logits.iter().zip(&naive).fold(0.0, |a, (p, q)| a.max((p - q).abs())));
        }
    }
    println!("linear and LM head vs naive products: max abs diff {worst:.1e}");
    assert!(worst < 1e-12, "{worst:e}");
}

/// A tiny model (V = 11, C = 8, 2 layers, 2 heads, 7 positions) with every weight moved off its
/// initialization (LayerNorm scales, biases) so that no gradient is trivially exact.
fn tiny_model<T: s4::scalar::Real>(act: Activation, seed: u64) -> Gpt<T> {
    let cfg = GptConfig {
        vocab_size: 11,
        n_positions: 7,
        n_embd: 8,
        n_layer: 2,
        n_head: 2,
        initializer_range: 0.5,
        activation_function: if act == Activation::GeluErf { "gelu".into() } else { "gelu_new".into() },
        ..GptConfig::default()
    };
    let mut m = Gpt::<f64>::new(cfg, seed).unwrap();
    let mut r = rng(seed + 100);
    for (_, mut t) in m.tensors_mut() {
        for v in t.iter_mut() {
            let e: f64 = StandardNormal.sample(&mut r);
            *v += 0.2 * e;
        }
    }
    m.cast()
}

/// Every parameter tensor of a whole-model gradient against central differences of the loss.
fn check_model(tag: &str, model: &Gpt<f64>, ids: &Array2<u32>, target: LmTarget<f64>) -> f64 {
    let (loss, g) = grad::forward_backward_with(model, ids.view(), target).unwrap();
    let eval = grad::lm_loss(model, ids.view(), target).unwrap();
    assert!((loss - eval).abs() < 1e-12, "{tag}: training-path loss {loss} vs inference-path loss {eval}");
    let worst = check_tensors(tag, g.tensors(), |k, i, d| {
        let mut m = model.clone();
        m.tensors_mut()[k].1.as_slice_mut().unwrap()[i] += d;
        grad::forward_backward_with(&m, ids.view(), target).unwrap().0
    });
    println!("{tag}: {} tensors, worst relative error {worst:.2e}", g.tensors().len());
    worst
}

#[test]
fn whole_model_gradients() {
    let ids = ndarray::array![[1u32, 5, 2, 10, 0], [2, 2, 9, 1, 6]];
    let mut next = ndarray::array![[5u32, 2, 10, 0, 3], [2, 9, 1, 6, 4]];
    next[[1, 2]] = IGNORE;
    let model = tiny_model::<f64>(Activation::GeluTanh, 1);
    check_model("hard targets, gelu_new", &model, &ids, LmTarget::Tokens(next.view()));

    let model = tiny_model::<f64>(Activation::GeluErf, 2);
    let mut probs = Array3::<f64>::zeros((2, 5, 11));
    for b in 0..2 {
        let p = loss::softmax((randn2((5, 11), 30 + b as u64) * 2.0).view());
        probs.index_axis_mut(Axis(0), b).assign(&p);
    }
    probs.slice_mut(s![0, 4, ..]).fill(0.0); // no teacher at one position
    let target = LmTarget::Soft { probs: probs.view(), tokens: Some(next.view()), hard_weight: 0.3, soft_weight: 0.7 };
    check_model("soft + hard targets, gelu", &model, &ids, target);
}

// ---------------------------------------------------------------------------------------------
// Training

fn tokens(n: usize, vocab: u32, seed: u64) -> Vec<u32> {
    use rand::RngExt;
    let mut r = rng(seed);
    (0..n).map(|_| r.random_range(0..vocab)).collect()
}

#[test]
fn tiny_model_overfits_one_window() {
    let cfg = GptConfig { vocab_size: 11, n_positions: 32, n_embd: 16, n_layer: 2, n_head: 2, ..GptConfig::default() };
    let mut model = Gpt::<f32>::new(cfg, 3).unwrap();
    let data = tokens(17, 11, 4); // exactly one window of 16 + 1 tokens
    let tc = LmTrainConfig {
        steps: 150,
        batch_size: 2,
        context: 16,
        lr: 1e-2,
        min_lr: 1e-3,
        warmup_steps: 10,
        weight_decay: 0.0,
        eval_every: 50,
        eval_batches: 1,
        ..LmTrainConfig::default()
    };
    let mut seen = Vec::new();
    let report = train_lm(&mut model, &data, &data, &tc, false, |s, t, v| seen.push((s, t, v))).unwrap();
    println!("overfit: evals {seen:?}");
    assert_eq!(seen.iter().map(|e| e.0).collect::<Vec<_>>(), [50, 100, 150]);
    let first = seen[0].1;
    let last = report.evals.last().unwrap().val_loss;
    assert!(first > 0.5 && last < 0.05, "loss {first} -> {last}");
}

#[test]
fn training_is_bit_identical_for_one_and_two_threads() {
    // sizes where the attention heads and the gemm row blocks run in parallel
    let cfg = GptConfig { vocab_size: 11, n_positions: 128, n_embd: 32, n_layer: 2, n_head: 4, ..GptConfig::default() };
    let train = tokens(600, 11, 5);
    let val = tokens(300, 11, 6);
    let tc = LmTrainConfig {
        steps: 3,
        batch_size: 3,
        context: 128,
        warmup_steps: 1,
        eval_every: 2,
        eval_batches: 1,
        ..LmTrainConfig::default()
    };
    let run = |threads: usize| {
        rayon::ThreadPoolBuilder::new().num_threads(threads).build().unwrap().install(|| {
            let mut model = Gpt::<f32>::new(cfg.clone(), 7).unwrap();
            let report = train_lm(&mut model, &train, &val, &tc, false, |_, _, _| {}).unwrap();
            (model, report.evals)
        })
    };
    let (m1, e1) = run(1);
    let (m2, e2) = run(2);
    assert_eq!(e1, e2);
    for ((name, a), (_, b)) in m1.tensors().into_iter().zip(m2.tensors()) {
        assert!(a.iter().zip(b.iter()).all(|(x, y)| x.to_bits() == y.to_bits()), "{name} differs");
    }
    assert_ne!(m1, Gpt::<f32>::new(cfg, 7).unwrap(), "training changed the weights");
    println!("1 vs 2 threads: bit-identical after 3 steps; evals {e1:?}");
}

/// `train-lm`'s run folder: interrupted after one round and resumed, it ends with the weights
/// and evaluations of the uninterrupted in-memory run, bit for bit; a finished run extended by
/// more steps continues (recorded in state.json) only with `extend`, and a changed setting is
/// refused.
#[test]
fn training_resumes_exactly_and_extends() {
    let cfg = GptConfig { vocab_size: 11, n_positions: 32, n_embd: 16, n_layer: 1, n_head: 2, ..GptConfig::default() };
    let train = tokens(400, 11, 8);
    let val = tokens(100, 11, 9);
    let tc = LmTrainConfig {
        steps: 6,
        batch_size: 2,
        context: 16,
        warmup_steps: 2,
        eval_every: 2,
        eval_batches: 1,
        ..LmTrainConfig::default()
    };
    let mut whole = Gpt::<f32>::new(cfg.clone(), 1).unwrap();
    let whole_report = train_lm(&mut whole, &train, &val, &tc, false, |_, _, _| {}).unwrap();
    let out = temp_dir("lm-resume");
    let mut first = Gpt::<f32>::new(cfg.clone(), 1).unwrap();
    let stop = RunOptions { stop_after: Some(1), ..Default::default() };
    let part = train_lm_run(&mut first, &train, &val, &tc, Some(&out), &stop).unwrap();
    assert_eq!(part.evals.len(), 1);
    // a second start without resume refuses the folder; with resume it continues
    assert!(train_lm_run(&mut first.clone(), &train, &val, &tc, Some(&out), &RunOptions::default()).is_err());
    let mut resumed = Gpt::<f32>::new(cfg.clone(), 99).unwrap(); // replaced by the checkpoint's weights
    let resume = RunOptions { resume: true, ..Default::default() };
    let rest = train_lm_run(&mut resumed, &train, &val, &tc, Some(&out), &resume).unwrap();
    assert_eq!(rest.evals, whole_report.evals);
    assert_eq!(resumed, whole, "resumed weights differ from the uninterrupted run");
    // a changed learning rate is refused; so is a longer run without `extend`
    let other = LmTrainConfig { lr: 2e-3, ..tc.clone() };
    let err = train_lm_run(&mut resumed.clone(), &train, &val, &other, Some(&out), &resume).unwrap_err().to_string();
    assert!(err.contains("lr"), "{err}");
    let longer = LmTrainConfig { steps: 8, ..tc.clone() };
    let err = train_lm_run(&mut resumed.clone(), &train, &val, &longer, Some(&out), &resume).unwrap_err().to_string();
    assert!(err.contains("--extend"), "{err}");
    let extend = RunOptions { resume: true, extend: true, ..Default::default() };
    let ext = train_lm_run(&mut resumed, &train, &val, &longer, Some(&out), &extend).unwrap();
    assert_eq!(ext.evals.len(), 4);
    assert_eq!(ext.evals[..3], whole_report.evals[..]);
    let state = std::fs::read_to_string(out.join("checkpoint/state.json")).unwrap();
    assert!(state.contains("\"extensions\"") && state.contains("8"), "{state}");
    // the extension is a line of the run's metrics (on the first round it adds); config.json
    // keeps the settings the run started with
    let lines: Vec<serde_json::Value> = std::fs::read_to_string(out.join("metrics.jsonl"))
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let marks: Vec<_> = lines.iter().map(|l| l.get("extended").cloned()).collect();
    assert_eq!(marks[..3], [None, None, None]);
    assert_eq!(marks[3], Some(serde_json::json!({"from_steps": 6, "to_steps": 8})));
    let config = std::fs::read_to_string(out.join("config.json")).unwrap();
    assert!(config.contains("\"steps\": 6"), "{config}");
    // a run whose length was not a multiple of the interval, extended, reaches its new length on
    // the same grid of evaluations
    let out = temp_dir("lm-extend-grid");
    let five = LmTrainConfig { steps: 5, ..tc.clone() };
    let mut m = Gpt::<f32>::new(cfg.clone(), 1).unwrap();
    train_lm_run(&mut m, &train, &val, &five, Some(&out), &RunOptions::default()).unwrap();
    let ext = train_lm_run(&mut m, &train, &val, &longer, Some(&out), &extend).unwrap();
    assert_eq!(ext.evals.iter().map(|e| e.step).collect::<Vec<_>>(), [2, 4, 5, 6, 8]);
    println!("train-lm: resumed = uninterrupted over {} evaluations; extended to 8 steps", rest.evals.len());
}

#[test]
fn training_rejects_bad_settings() {
    let cfg = GptConfig { vocab_size: 11, n_positions: 16, n_embd: 8, n_layer: 1, n_head: 2, ..GptConfig::default() };
    let mut model = Gpt::<f32>::new(cfg, 0).unwrap();
    let data = tokens(100, 11, 1);
    let tc = LmTrainConfig { steps: 2, batch_size: 2, context: 8, eval_batches: 1, ..LmTrainConfig::default() };
    let err = |tc: &LmTrainConfig, train: &[u32]| {
        train_lm(&mut model.clone(), train, &data, tc, false, |_, _, _| {}).unwrap_err().to_string()
    };
    assert!(err(&LmTrainConfig { context: 17, ..tc.clone() }, &data).contains("n_positions = 16"));
    assert!(err(&tc, &data[..8]).contains("train_tokens length"));
    let mut bad = data.clone();
    bad[42] = 11;
    assert!(err(&tc, &bad).contains("train_tokens[42]"));
    assert!(err(&LmTrainConfig { lr: f64::NAN, ..tc.clone() }, &data).contains("lr"));
    assert!(err(&LmTrainConfig { min_lr: 1.0, ..tc.clone() }, &data).contains("min_lr"));
    // a huge learning rate blows the weights up: the error names the step
    let wild = LmTrainConfig { lr: 1e30, min_lr: 1e30, warmup_steps: 0, grad_clip: None, steps: 20, ..tc.clone() };
    let e = train_lm(&mut model, &data, &data, &wild, false, |_, _, _| {}).unwrap_err().to_string();
    println!("{e}");
    assert!(e.contains("stopped at step"), "{e}");
}

/// Scoring k positions at once (the panel-packed decoding path up to 32 rows, gemm above) gives
/// the rows of a full pass, for every k from 1 to 40 and odd widths (a partial last panel); and
/// changing the weights through `tensors_mut` is seen by the next cached pass (the packed copy
/// is rebuilt, never stale).
#[test]
fn scoring_k_positions_matches_the_full_pass_and_follows_weight_changes() {
    let cfg = GptConfig { vocab_size: 61, n_positions: 96, n_embd: 40, n_layer: 2, n_head: 4, ..Default::default() };
    let mut model = Gpt::<f32>::new(cfg, 3).unwrap();
    let ids = Array2::from_shape_fn((1, 90), |(_, j)| ((j * 17 + 5) % 61) as u32);
    let mut worst = 0.0f32;
    for k in 1..=40usize {
        let full = model.forward(ids.slice(s![.., ..20 + k])).unwrap();
        let mut cache = model.new_cache(1);
        model.forward_cached(&mut cache, ids.slice(s![.., ..20])).unwrap();
        let part = model.forward_cached(&mut cache, ids.slice(s![.., 20..20 + k])).unwrap();
        worst = worst.max(max_abs_diff(&part, &full.slice(s![.., 20.., ..]).to_owned()));
    }
    println!("k = 1..40 positions after a 20-token prefix vs full pass: max abs diff {worst:.2e}");
    assert!(worst < 1e-5, "{worst:e}");
    let mut cache = model.new_cache(1);
    let before = model.forward_cached(&mut cache, ids.slice(s![.., ..4])).unwrap();
    for (name, mut t) in model.tensors_mut() {
        if name.ends_with("mlp.c_fc.weight") {
            t.mapv_inplace(|v| 2.0 * v);
        }
    }
    let mut cache = model.new_cache(1);
    let after = model.forward_cached(&mut cache, ids.slice(s![.., ..4])).unwrap();
    let reference = model.clone().forward(ids.slice(s![.., ..40])).unwrap();
    assert!(max_abs_diff(&before, &after) > 1e-3, "the weight change must show");
    let d = max_abs_diff(&after, &reference.slice(s![.., ..4, ..]).to_owned());
    assert!(d < 1e-5, "stale packed weights: {d:e}");
}

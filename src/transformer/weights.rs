//! Hugging Face GPT-2 folders: `config.json` and `model.safetensors`.

use super::{Gpt, GptConfig};
use crate::error::{Error, Result};
use crate::model::checkpoint::{write_atomic, CONFIG_FILE, WEIGHTS_FILE};
use crate::scalar::Real;
use safetensors::tensor::TensorView;
use safetensors::{Dtype, SafeTensors};
use std::collections::BTreeMap;
use std::path::Path;

/// The prefix of `GPT2LMHeadModel` state dicts.
const PREFIX: &str = "transformer.";

pub(super) fn save<T: Real>(model: &Gpt<T>, dir: &Path) -> Result<()> {
    std::fs::create_dir_all(dir).map_err(|e| Error::io(dir, e))?;
    let (dtype, torch) = if std::mem::size_of::<T>() == 4 { (Dtype::F32, "float32") } else { (Dtype::F64, "float64") };
    let entries: Vec<(String, Vec<usize>, Vec<u8>)> = model
        .tensors()
        .into_iter()
        .map(|(name, t)| {
            let bytes = t
                .iter()
                .flat_map(|&v| {
                    if dtype == Dtype::F32 {
                        (v.as_f64() as f32).to_le_bytes().to_vec()
                    } else {
                        v.as_f64().to_le_bytes().to_vec()
                    }
                })
                .collect();
            (format!("{PREFIX}{name}"), t.shape().to_vec(), bytes)
        })
        .collect();
    let views: Vec<(String, TensorView)> = entries
        .iter()
        .map(|(n, shape, bytes)| {
            (n.clone(), TensorView::new(dtype, shape.clone(), bytes).expect("byte length matches the shape"))
        })
        .collect();
    let weights = dir.join(WEIGHTS_FILE);
    let bytes =
        safetensors::serialize(views, None).map_err(|e| Error::format(&weights, format!("cannot serialize: {e}")))?;
    write_atomic(&weights, &bytes)?;
    let mut cfg = serde_json::to_value(model.config()).expect("the config serializes");
    if let Some(obj) = cfg.as_object_mut() {
        obj.insert("model_type".into(), "gpt2".into());
        obj.insert("architectures".into(), serde_json::json!(["GPT2LMHeadModel"]));
        obj.insert("dtype".into(), torch.into());
    }
    let text = serde_json::to_string_pretty(&cfg).expect("JSON serializes");
    write_atomic(&dir.join(CONFIG_FILE), text.as_bytes())
}

/// Reads and checks `config.json`: the [`GptConfig`] keys, plus the Hugging Face options that would
/// change the architecture (rejected unless at their GPT-2 values).
fn read_config(path: &Path) -> Result<GptConfig> {
    let text = std::fs::read_to_string(path).map_err(|e| Error::io(path, e))?;
    let v: serde_json::Value =
        serde_json::from_str(&text).map_err(|e| Error::format(path, format!("invalid JSON: {e}")))?;
    for (key, supported) in
        [("scale_attn_weights", true), ("scale_attn_by_inverse_layer_idx", false), ("add_cross_attention", false)]
    {
        if let Some(b) = v.get(key).and_then(|b| b.as_bool()) {
            if b != supported {
                return Err(Error::format(path, format!("{key} = {b} is not supported (only {supported})")));
            }
        }
    }
    if let Some(mt) = v.get("model_type").and_then(|m| m.as_str()) {
        if mt != "gpt2" {
            return Err(Error::format(path, format!("model_type = {mt:?}: expected \"gpt2\"")));
        }
    }
    let cfg: GptConfig =
        serde_json::from_value(v).map_err(|e| Error::format(path, format!("invalid GPT-2 config: {e}")))?;
    cfg.validate().map_err(|e| Error::format(path, e.to_string()))?;
    Ok(cfg)
}

/// The values of a stored tensor as f64, or why they cannot be read.
fn values(t: &TensorView) -> std::result::Result<Vec<f64>, String> {
    let d = t.data();
    Ok(match t.dtype() {
        Dtype::F32 => d.chunks_exact(4).map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]) as f64).collect(),
        Dtype::F64 => d.chunks_exact(8).map(|b| f64::from_le_bytes(b.try_into().expect("8 bytes"))).collect(),
        Dtype::F16 => d.chunks_exact(2).map(|b| half::f16::from_le_bytes([b[0], b[1]]).to_f64()).collect(),
        Dtype::BF16 => d.chunks_exact(2).map(|b| half::bf16::from_le_bytes([b[0], b[1]]).to_f64()).collect(),
        other => return Err(format!("dtype {other:?}, expected F32, F64, F16 or BF16")),
    })
}

/// Whether `name` (without prefix) is an attention mask buffer `h.N.attn.bias` / `h.N.attn.masked_bias`.
fn is_mask_buffer(name: &str) -> bool {
    let parts: Vec<&str> = name.split('.').collect();
    matches!(parts.as_slice(), ["h", n, "attn", "bias" | "masked_bias"] if n.parse::<usize>().is_ok())
}

pub(super) fn load<T: Real>(dir: &Path) -> Result<Gpt<T>> {
    let config = read_config(&dir.join(CONFIG_FILE))?;
    let path = dir.join(WEIGHTS_FILE);
    let bytes = std::fs::read(&path).map_err(|e| Error::io(&path, e))?;
    let st = SafeTensors::deserialize(&bytes)
        .map_err(|e| Error::format(&path, format!("not a valid safetensors file (truncated or corrupt?): {e}")))?;
    let mut problems = Vec::new();
    // canonical name (no prefix) -> stored name
    let mut stored: BTreeMap<String, String> = BTreeMap::new();
    let mut lm_head = None;
    let mut names: Vec<&str> = st.names();
    names.sort_unstable();
    for name in names {
        let canon = name.strip_prefix(PREFIX).unwrap_or(name);
        if is_mask_buffer(canon) {
            continue;
        }
        if canon == "lm_head.weight" {
            lm_head = Some(name.to_string());
            continue;
        }
        if let Some(prev) = stored.insert(canon.to_string(), name.to_string()) {
            problems.push(format!("{canon} stored twice (as {prev} and {name})"));
        }
    }
    let mut model = Gpt::<T>::zeros(config)?;
    for (name, mut t) in model.tensors_mut() {
        let Some(sname) = stored.remove(&name) else {
            problems.push(format!("missing {name} {:?}", t.shape()));
            continue;
        };
        let view = st.tensor(&sname).expect("listed by the file");
        if view.shape() != t.shape() {
            problems.push(format!("{sname} has shape {:?}, expected {:?}", view.shape(), t.shape()));
            continue;
        }
        match values(&view) {
            Err(e) => problems.push(format!("{sname} has {e}")),
            Ok(vals) if vals.iter().any(|v| !v.is_finite()) => problems.push(format!("{sname} has non-finite values")),
            Ok(vals) => t.iter_mut().zip(vals).for_each(|(d, v)| *d = T::of(v)),
        }
    }
    if !stored.is_empty() {
        problems.push(format!("unexpected {}", stored.into_values().collect::<Vec<_>>().join(", ")));
    }
    if let Some(name) = lm_head {
        let view = st.tensor(&name).expect("listed by the file");
        let same = view.shape() == model.wte().shape()
            && values(&view).is_ok_and(|v| v.iter().zip(model.wte()).all(|(&a, &b)| T::of(a) == b));
        if !same {
            problems.push(format!("{name} differs from wte.weight (untied output embeddings are not supported)"));
        }
    }
    if problems.is_empty() {
        Ok(model)
    } else {
        Err(Error::format(&path, format!("{} problem(s): {}", problems.len(), problems.join("; "))))
    }
}

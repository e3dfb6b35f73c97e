//! Hugging Face GPT-2 folders: `config.json` and `model.safetensors`.

use super::{Gpt, GptConfig};
use crate::error::{Error, Result};
use crate::io::read_json;
use crate::io::tensors::{write_folder, TensorReader, TensorWriter, CONFIG_FILE, WEIGHTS_FILE};
use crate::scalar::{HalfPrecision, Real};
use std::collections::BTreeMap;
use std::path::Path;

/// The prefix of `GPT2LMHeadModel` state dicts.
const PREFIX: &str = "transformer.";

pub(super) fn save<T: Real>(model: &Gpt<T>, dir: &Path, weights: Option<HalfPrecision>) -> Result<()> {
    let mut tensors = TensorWriter::new();
    for (name, t) in model.tensors() {
        tensors.view(&format!("{PREFIX}{name}"), t);
    }
    if let Some(p) = weights {
        tensors.to_half(p, |_| false);
    }
    let dtype = match weights {
        Some(HalfPrecision::Bf16) => "bfloat16",
        Some(HalfPrecision::F16) => "float16",
        None if std::mem::size_of::<T>() == 4 => "float32",
        None => "float64",
    };
    let mut cfg = serde_json::to_value(model.config()).expect("the config serializes");
    if let Some(obj) = cfg.as_object_mut() {
        obj.insert("model_type".into(), "gpt2".into());
        obj.insert("architectures".into(), serde_json::json!(["GPT2LMHeadModel"]));
        obj.insert("dtype".into(), dtype.into());
    }
    write_folder(dir, tensors, &cfg)
}

/// Reads and checks `config.json`: the [`GptConfig`] keys, plus the Hugging Face options that would
/// change the architecture (rejected unless at their GPT-2 values).
fn read_config(path: &Path) -> Result<GptConfig> {
    let v: serde_json::Value = read_json(path)?;
    if let Some(format) = v.get("format").and_then(|f| f.as_str()) {
        return Err(Error::format(
            path,
            format!("a folder of format {format:?} (an s4 model), not a GPT-2 folder (model_type \"gpt2\")"),
        ));
    }
    for (key, supported) in
        [("scale_attn_weights", true), ("scale_attn_by_inverse_layer_idx", false), ("add_cross_attention", false)]
    {
        if let Some(b) = v.get(key).and_then(|b| b.as_bool())
            && b != supported
        {
            return Err(Error::format(path, format!("{key} = {b} is not supported (only {supported})")));
        }
    }
    if let Some(mt) = v.get("model_type").and_then(|m| m.as_str())
        && mt != "gpt2"
    {
        return Err(Error::format(path, format!("model_type = {mt:?}: expected \"gpt2\"")));
    }
    let cfg: GptConfig =
        serde_json::from_value(v).map_err(|e| Error::format(path, format!("invalid GPT-2 config: {e}")))?;
    cfg.validate().map_err(|e| Error::format(path, e.to_string()))?;
    Ok(cfg)
}

/// Whether `name` (without prefix) is an attention mask buffer `h.N.attn.bias` / `h.N.attn.masked_bias`.
fn is_mask_buffer(name: &str) -> bool {
    let parts: Vec<&str> = name.split('.').collect();
    matches!(parts.as_slice(), ["h", n, "attn", "bias" | "masked_bias"] if n.parse::<usize>().is_ok())
}

pub(super) fn load<T: Real>(dir: &Path) -> Result<Gpt<T>> {
    let config = read_config(&dir.join(CONFIG_FILE))?;
    let mut r = TensorReader::open(&dir.join(WEIGHTS_FILE))?;
    // canonical name (no prefix) -> stored name
    let mut stored: BTreeMap<String, String> = BTreeMap::new();
    let mut lm_head = None;
    for name in r.names() {
        let canon = name.strip_prefix(PREFIX).unwrap_or(&name).to_string();
        if is_mask_buffer(&canon) {
            r.skip(&name);
        } else if canon == "lm_head.weight" {
            lm_head = Some(name);
        } else if let Some(prev) = stored.insert(canon.clone(), name.clone()) {
            r.problem(format!("{canon} stored twice (as {prev} and {name})"));
        }
    }
    let mut model = Gpt::<T>::zeros(config)?;
    for (name, mut t) in model.tensors_mut() {
        let shape = t.shape().to_vec();
        // a missing tensor is reported under its canonical name
        let sname = stored.get(&name).cloned().unwrap_or(name);
        t.assign(&r.real::<T>(&sname, &shape));
    }
    if let Some(name) = lm_head {
        let same = r.shape(&name).as_deref() == Some(model.wte().shape())
            && r.real::<T>(&name, model.wte().shape()).iter().zip(model.wte()).all(|(a, b)| a == b);
        if !same {
            r.problem(format!("{name} differs from wte.weight (untied output embeddings are not supported)"));
        }
    }
    r.finish()?;
    Ok(model)
}

//! Loading models of the perceiver-io library (krasserm/perceiver-io, `CausalSequenceModel`):
//! its config, and its state dict under the library's parameter names.
//!
//! The library names follow its module nesting (`cross_attention.1.module.3.weight` is the
//! second linear of the cross layer's MLP); [`library_to_project_name`] spells out the
//! correspondence with this project's names, one line per kind of tensor.

use std::collections::HashSet;

use nn::checkpoint::TensorFile;
use serde_json::Value;

use crate::config::{AbsolutePositions, PerceiverArConfig};
use crate::error::{Error, Result};
use crate::model::PerceiverAr;

/// The fields of the library's `CausalSequenceModelConfig`: those [`config_from_library`]
/// reads, and the last three, which only matter for training's memory and the attention's
/// head chunking (accepted, no effect on the numbers).
const LIBRARY_FIELDS: [&str; 19] = [
    "abs_pos_emb",
    "cross_attention_dropout",
    "cross_attention_widening_factor",
    "init_scale",
    "max_latents",
    "max_seq_len",
    "num_channels",
    "num_heads",
    "num_self_attention_layers",
    "num_self_attention_rotary_layers",
    "output_bias",
    "output_norm",
    "post_attention_dropout",
    "residual_dropout",
    "self_attention_widening_factor",
    "vocab_size",
    "activation_checkpointing",
    "activation_offloading",
    "max_heads_parallel",
];

/// The library's `CausalSequenceModelConfig` (the `config` object of a dump's config.json, the
/// `model_config` of a snapshot). A field this project does not know may change the model, so
/// it is refused.
pub fn config_from_library(lib: &Value) -> Result<PerceiverArConfig> {
    if let Some(fields) = lib.as_object() {
        let mut unknown: Vec<&str> =
            fields.keys().map(String::as_str).filter(|k| !LIBRARY_FIELDS.contains(k)).collect();
        if !unknown.is_empty() {
            unknown.sort_unstable();
            return Err(Error::Config(format!("unknown library config fields {}", unknown.join(", "))));
        }
    }
    let get = |k: &str| lib.get(k).ok_or_else(|| Error::Config(format!("library config has no field {k}")));
    let uint = |k: &str| -> Result<usize> {
        get(k)?
            .as_u64()
            .map(|v| v as usize)
            .ok_or_else(|| Error::Config(format!("library config field {k} is not a non-negative integer")))
    };
    let float = |k: &str| -> Result<f32> {
        get(k)?
            .as_f64()
            .map(|v| v as f32)
            .ok_or_else(|| Error::Config(format!("library config field {k} is not a number")))
    };
    let boolean = |k: &str| -> Result<bool> {
        get(k)?.as_bool().ok_or_else(|| Error::Config(format!("library config field {k} is not a boolean")))
    };
    let rotary_layers = get("num_self_attention_rotary_layers")?
        .as_i64()
        .ok_or_else(|| Error::Config("num_self_attention_rotary_layers is not an integer".into()))?;
    let (channels, heads) = (uint("num_channels")?, uint("num_heads")?);
    let abs_pos = boolean("abs_pos_emb")?;
    let head_dim = channels.checked_div(heads).unwrap_or(0);
    let mut c = PerceiverArConfig::perceiver_io(
        uint("vocab_size")?,
        uint("max_seq_len")?,
        uint("max_latents")?,
        channels,
        heads,
        uint("num_self_attention_layers")?,
    );
    c.cross_widening = uint("cross_attention_widening_factor")?;
    c.self_widening = uint("self_attention_widening_factor")?;
    c.cross_attend_dropout = float("cross_attention_dropout")?;
    c.attention_dropout = float("post_attention_dropout")?;
    c.residual_dropout = float("residual_dropout")?;
    c.output_norm = boolean("output_norm")?;
    c.output_bias = boolean("output_bias")?;
    c.init_scale = float("init_scale")?;
    c.absolute_positions = if abs_pos { AbsolutePositions::Learned } else { AbsolutePositions::None };
    // Rotary over half of each head with absolute embeddings, over all of it without.
    c.rotary_dims = if abs_pos { head_dim / 2 } else { head_dim };
    c.rotary_self_layers = if rotary_layers < 0 { None } else { Some(rotary_layers as usize) };
    c.validate()?;
    Ok(c)
}

/// This project's name for a library parameter, or `None` for names it does not know.
pub fn library_to_project_name(lib: &str) -> Option<String> {
    let fixed = [
        ("input_adapter.txt_embedding.weight", "token_embedding.weight"),
        ("input_adapter.pos_embedding.weight", "position_embedding.weight"),
        ("output_adapter.bias", "output.bias"),
        ("out_norm.weight", "out_norm.weight"),
        ("out_norm.bias", "out_norm.bias"),
    ];
    if let Some((_, ours)) = fixed.iter().find(|(l, _)| *l == lib) {
        return Some(ours.to_string());
    }
    let mlp = library_mlp_name;
    if let Some(rest) = lib.strip_prefix("cross_attention.0.module.") {
        // q_norm.*, kv_norm.*, attention.{q,k,v,o}_proj.* keep their names.
        return Some(format!("cross.{rest}"));
    }
    if let Some(rest) = lib.strip_prefix("cross_attention.1.module.") {
        return mlp(rest).map(|m| format!("cross.{m}"));
    }
    if let Some(rest) = lib.strip_prefix("self_attention.") {
        let (layer, rest) = rest.split_once('.')?;
        layer.parse::<usize>().ok()?;
        if let Some(rest) = rest.strip_prefix("0.module.") {
            return Some(format!("self_attention.{layer}.{rest}"));
        }
        if let Some(rest) = rest.strip_prefix("1.module.") {
            return mlp(rest).map(|m| format!("self_attention.{layer}.{m}"));
        }
    }
    None
}

/// This project's name for a tensor of the library's MLP, `nn.Sequential(LayerNorm, Linear,
/// GELU, Linear)`: `{0,1,3}.{leaf}` → `mlp.{norm,fc1,fc2}.{leaf}`.
pub(crate) fn library_mlp_name(rest: &str) -> Option<String> {
    let (idx, leaf) = rest.split_once('.')?;
    let part = match idx {
        "0" => "norm",
        "1" => "fc1",
        "3" => "fc2",
        _ => return None,
    };
    Some(format!("mlp.{part}.{leaf}"))
}

/// The rotary frequencies buffer the library keeps in its state dict.
const INV_FREQ: &str = "input_adapter.frq_pos_encoding.inv_freq";

/// Copies a library state dict into `model`; every parameter must be present with its shape,
/// and every tensor in the file must be known.
pub fn load_library_weights(model: &mut PerceiverAr, file: &TensorFile) -> Result<()> {
    let mut seen = HashSet::new();
    let mut names: Vec<&String> = file.floats.keys().collect();
    names.sort();
    for lib in names {
        let value = &file.floats[lib];
        if lib == INV_FREQ {
            let rotary = model.rotary.as_mut().ok_or_else(|| {
                Error::Config(format!(
                    "{}: {INV_FREQ} given but the model has no rotary",
                    file.path.display()
                ))
            })?;
            let inv = value.to_vec()?;
            if inv.len() != rotary.inv_freq.len() {
                return Err(Error::Config(format!(
                    "{}: {INV_FREQ} has {} frequencies, the config implies {}",
                    file.path.display(),
                    inv.len(),
                    rotary.inv_freq.len()
                )));
            }
            rotary.inv_freq = inv;
            continue;
        }
        let ours = library_to_project_name(lib)
            .ok_or_else(|| Error::Config(format!("{}: unexpected tensor {lib}", file.path.display())))?;
        model
            .params
            .set_by_name(&ours, value.clone())
            .map_err(|e| Error::Config(format!("{}: tensor {lib}: {e}", file.path.display())))?;
        seen.insert(ours);
    }
    let missing: Vec<&str> =
        model.params.iter().map(|p| p.name.as_str()).filter(|n| !seen.contains(*n)).collect();
    if !missing.is_empty() {
        return Err(Error::Config(format!(
            "{}: missing tensors for {}",
            file.path.display(),
            missing.join(", ")
        )));
    }
    Ok(())
}

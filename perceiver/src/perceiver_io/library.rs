//! The perceiver-io library's `MaskedLanguageModel` (Perceiver IO) and `ImageClassifier`
//! (Perceiver): their configs, their parameter names, and `perceiver verify` of their dumps.
//!
//! Library names follow its module nesting: `0.` is the encoder, `1.` the decoder;
//! `cross_attn_1` the first cross-attention layer and `cross_attn_n` the later ones' own
//! weights; `self_attn_1.{i}` layer `i` of the first self-attention block; inside a layer
//! `0.module.` (or `0.` without a residual) is the attention and `1.module.{0,1,3}` the MLP's
//! norm and two linears.

use std::path::Path;

use autograd::Tape;
use nn::checkpoint::{read_safetensors, TensorFile};
use nn::loss::{cross_entropy, CrossEntropy};
use nn::Ctx;
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;
use serde_json::Value;

use super::{AttentionConfig, InputConfig, ModelInput, OutputConfig, PerceiverIo, PerceiverIoConfig};
use crate::error::{Error, Result};
use crate::verify::{check_loss_and_gradients, Comparison, VerifyReport, LOGITS_TOL};

/// The label that is not scored (PyTorch's `ignore_index`).
const IGNORE_LABEL: i64 = -100;

/// Whether a dump's library config (`config` of its config.json) is an encoder-decoder model.
pub fn is_encoder_decoder(lib: &Value) -> bool {
    lib.get("encoder").is_some() && lib.get("decoder").is_some()
}

/// The model of a library config with `encoder` and `decoder` objects.
pub fn config_from_library(lib: &Value) -> Result<PerceiverIoConfig> {
    let field = |obj: &str, k: &str| -> Result<&Value> {
        let o = if obj.is_empty() { lib } else { lib.get(obj).unwrap_or(&Value::Null) };
        o.get(k).ok_or_else(|| Error::Config(format!("library config has no field {obj}.{k}")))
    };
    let uint = |obj: &str, k: &str| -> Result<usize> {
        field(obj, k)?.as_u64().map(|v| v as usize).ok_or_else(|| {
            Error::Config(format!("library config field {obj}.{k} is not a non-negative integer"))
        })
    };
    let opt_uint = |obj: &str, k: &str| -> Result<Option<usize>> {
        match lib.get(obj).and_then(|o| o.get(k)) {
            None | Some(Value::Null) => Ok(None),
            Some(_) => uint(obj, k).map(Some),
        }
    };
    let boolean = |obj: &str, k: &str| -> Result<bool> {
        field(obj, k)?
            .as_bool()
            .ok_or_else(|| Error::Config(format!("library config field {obj}.{k} is not a boolean")))
    };
    let float = |obj: &str, k: &str| -> Result<f32> {
        field(obj, k)?
            .as_f64()
            .map(|v| v as f32)
            .ok_or_else(|| Error::Config(format!("library config field {obj}.{k} is not a number")))
    };
    let attention = |obj: &str, prefix: &str, heads: &str, widening: &str| -> Result<AttentionConfig> {
        Ok(AttentionConfig {
            heads: uint(obj, heads)?,
            qk: opt_uint(obj, &format!("num_{prefix}_qk_channels"))?,
            v: opt_uint(obj, &format!("num_{prefix}_v_channels"))?,
            widening: uint(obj, widening)?,
        })
    };
    let e = "encoder";
    let image = lib.get(e).and_then(|v| v.get("image_shape")).is_some();
    let input = if image {
        let shape: Vec<usize> = field(e, "image_shape")?
            .as_array()
            .map(|a| a.iter().filter_map(Value::as_u64).map(|v| v as usize).collect())
            .unwrap_or_default();
        let shape: [usize; 3] = shape
            .try_into()
            .map_err(|_| Error::Config("library config field encoder.image_shape is not [H, W, C]".into()))?;
        InputConfig::Image { shape, bands: uint(e, "num_frequency_bands")? }
    } else {
        InputConfig::Tokens {
            vocab_size: uint(e, "vocab_size")?,
            max_seq_len: uint(e, "max_seq_len")?,
            channels: uint(e, "num_input_channels")?,
        }
    };
    let mut cross =
        attention(e, "cross_attention", "num_cross_attention_heads", "cross_attention_widening_factor")?;
    if image {
        // The library's image classifier makes the cross layer's query/key width the input's.
        cross.qk = Some(cross.qk.unwrap_or(input.channels()));
    }
    let d = "decoder";
    let (output, output_queries, output_query_channels) = match &input {
        InputConfig::Image { .. } => (
            OutputConfig::Classes { classes: uint(d, "num_classes")? },
            uint(d, "num_output_queries")?,
            uint(d, "num_output_query_channels")?,
        ),
        InputConfig::Tokens { channels, vocab_size, .. } => match opt_uint(d, "num_output_query_channels")? {
            None => (OutputConfig::TiedTokens, uint(d, "max_seq_len")?, *channels),
            Some(q) => (OutputConfig::Tokens { vocab_size: *vocab_size }, uint(d, "max_seq_len")?, q),
        },
    };
    let config = PerceiverIoConfig {
        input,
        latents: uint("", "num_latents")?,
        latent_channels: uint("", "num_latent_channels")?,
        cross,
        cross_layers: uint(e, "num_cross_attention_layers")?,
        first_cross_shared: boolean(e, "first_cross_attention_layer_shared")?,
        self_attention: attention(
            e,
            "self_attention",
            "num_self_attention_heads",
            "self_attention_widening_factor",
        )?,
        self_layers_per_block: uint(e, "num_self_attention_layers_per_block")?,
        self_blocks: uint(e, "num_self_attention_blocks")?,
        first_block_shared: boolean(e, "first_self_attention_block_shared")?,
        decoder: attention(
            d,
            "cross_attention",
            "num_cross_attention_heads",
            "cross_attention_widening_factor",
        )?,
        decoder_residual: boolean(d, "cross_attention_residual")?,
        output_queries,
        output_query_channels,
        output,
        dropout: float(e, "dropout")?,
        init_scale: float(e, "init_scale")?,
    };
    config.validate()?;
    Ok(config)
}

/// This project's name for a library parameter, or `None` for names it does not know.
pub fn library_to_project_name(lib: &str) -> Option<String> {
    // Inside a layer: the attention half, then the MLP's norm and linears.
    let layer = |rest: &str| -> Option<String> {
        match rest.strip_prefix("0.module.").or_else(|| rest.strip_prefix("0.")) {
            Some(r) => Some(r.to_string()),
            None => crate::import::library_mlp_name(rest.strip_prefix("1.module.")?),
        }
    };
    let fixed = [
        ("0.input_adapter.txt_embedding.weight", "encoder.input.token_embedding.weight"),
        ("0.input_adapter.pos_embedding.weight", "encoder.input.position_embedding.weight"),
        ("0.latent_provider._query", "encoder.latents"),
        ("1.output_query_provider._query", "decoder.queries"),
        ("1.output_adapter.bias", "decoder.output.bias"),
        ("1.output_adapter.linear.weight", "decoder.output.weight"),
        ("1.output_adapter.linear.bias", "decoder.output.bias"),
    ];
    if let Some((_, ours)) = fixed.iter().find(|(l, _)| *l == lib) {
        return Some(ours.to_string());
    }
    for (prefix, ours) in [
        ("0.cross_attn_1.", "encoder.cross_first"),
        ("0.cross_attn_n.", "encoder.cross_later"),
        ("1.cross_attn.", "decoder.cross"),
    ] {
        if let Some(rest) = lib.strip_prefix(prefix) {
            return layer(rest).map(|l| format!("{ours}.{l}"));
        }
    }
    for (prefix, ours) in
        [("0.self_attn_1.", "encoder.block_first"), ("0.self_attn_n.", "encoder.block_later")]
    {
        if let Some(rest) = lib.strip_prefix(prefix) {
            let (i, rest) = rest.split_once('.')?;
            i.parse::<usize>().ok()?;
            return layer(rest).map(|l| format!("{ours}.{i}.{l}"));
        }
    }
    None
}

/// The Fourier features the library keeps in its state dict (a buffer, checked, not loaded).
const FOURIER: &str = "0.input_adapter.position_encoding.position_encoding";

/// Copies a library state dict into `model`: every parameter must be present with its shape,
/// every tensor in the file must be known, and a stored Fourier table must equal ours.
pub fn load_library_weights(model: &mut PerceiverIo, file: &TensorFile) -> Result<()> {
    let path = file.path.display();
    let mut seen = std::collections::HashSet::new();
    for (lib, value) in &file.floats {
        if lib == FOURIER {
            let ours = model.fourier_features().ok_or_else(|| {
                Error::Config(format!("{path}: {FOURIER} given but the model reads tokens"))
            })?;
            let c = Comparison::new(
                FOURIER,
                (&ours.to_vec()?, ours.shape()),
                (&value.to_vec()?, value.shape()),
                1e-5,
                false,
            );
            if !c.passed() {
                return Err(Error::Config(format!(
                    "{path}: the Fourier features differ from this project's: {c}"
                )));
            }
            continue;
        }
        let ours = library_to_project_name(lib)
            .ok_or_else(|| Error::Config(format!("{path}: unexpected tensor {lib}")))?;
        model
            .params
            .set_by_name(&ours, value.clone())
            .map_err(|e| Error::Config(format!("{path}: tensor {lib}: {e}")))?;
        seen.insert(ours);
    }
    let missing: Vec<&str> =
        model.params.iter().map(|p| p.name.as_str()).filter(|n| !seen.contains(*n)).collect();
    if !missing.is_empty() {
        return Err(Error::Config(format!("{path}: missing tensors for {}", missing.join(", "))));
    }
    Ok(())
}

/// `perceiver verify` of a masked language model or image classifier dump: logits, loss and
/// every gradient against the library's, with the Perceiver AR dumps' tolerances.
pub fn verify_dump(dir: &Path, lib: &Value) -> Result<VerifyReport> {
    let config = config_from_library(lib)?;
    let mut model = PerceiverIo::new(config.clone(), 0)?;
    load_library_weights(&mut model, &read_safetensors(&dir.join("model.safetensors"))?)?;
    let case = read_safetensors(&dir.join("case.safetensors"))?;
    let case_path = case.path.display().to_string();

    let tape = Tape::new();
    let mut rng = ChaCha8Rng::seed_from_u64(0);
    let ctx = Ctx::new(&tape, &model.params, false, &mut rng);
    let (label_values, label_shape) = case.int("labels")?;
    let (logits, labels) = match config.input {
        InputConfig::Tokens { .. } => {
            let (values, shape) = case.int("inputs")?;
            let &[batch, len] = shape.as_slice() else {
                return Err(Error::Input(format!(
                    "{case_path}: inputs has shape {shape:?}, not [batch, len]"
                )));
            };
            let ids = values
                .iter()
                .map(|&v| {
                    usize::try_from(v)
                        .map_err(|_| Error::Input(format!("{case_path}: negative token id {v}")))
                })
                .collect::<Result<Vec<_>>>()?;
            let padding = match case.ints.get("pad_mask") {
                Some((mask, mask_shape)) if mask_shape == shape => {
                    Some(mask.iter().map(|&m| m != 0).collect::<Vec<_>>())
                }
                Some((_, mask_shape)) => {
                    return Err(Error::Input(format!(
                        "{case_path}: pad_mask has shape {mask_shape:?}, inputs {shape:?}"
                    )))
                }
                None => None,
            };
            let input = ModelInput::Tokens { ids: &ids, batch, len, padding: padding.as_deref() };
            if label_shape != shape {
                return Err(Error::Input(format!(
                    "{case_path}: labels has shape {label_shape:?}, inputs {shape:?}"
                )));
            }
            (model.forward(&ctx, &input)?, label_values)
        }
        InputConfig::Image { .. } => {
            let images = case.float("inputs")?;
            if label_shape.as_slice() != [images.shape().first().copied().unwrap_or(0)] {
                return Err(Error::Input(format!(
                    "{case_path}: labels has shape {label_shape:?}, not [batch]"
                )));
            }
            (model.forward(&ctx, &ModelInput::Image(images))?, label_values)
        }
    };
    let reference_logits = case.float("logits")?;
    let logits_check = Comparison::new(
        "logits",
        (&logits.value().to_vec()?, logits.shape()),
        (&reference_logits.to_vec()?, reference_logits.shape()),
        LOGITS_TOL,
        false,
    );
    // Logits over the last axis, one label per row; -100 is not scored.
    let vocab = logits.shape().last().copied().unwrap_or(0);
    let targets = labels
        .iter()
        .map(|&l| match l {
            IGNORE_LABEL => Ok(usize::MAX),
            l => usize::try_from(l)
                .ok()
                .filter(|&t| t < vocab)
                .ok_or_else(|| Error::Input(format!("{case_path}: label {l} out of range"))),
        })
        .collect::<Result<Vec<_>>>()?;
    let opts = CrossEntropy { ignore_index: Some(usize::MAX), z_loss: 0.0 };
    let loss = cross_entropy(&logits, &targets, opts)?;
    drop(ctx);
    let grads = tape.backward(&loss)?;
    let (loss_check, grad_checks) = check_loss_and_gradients(
        loss.value().to_scalar()?,
        &grads,
        (&case, &model.params),
        &library_to_project_name,
    )?;
    Ok(VerifyReport {
        logits: logits_check,
        loss: loss_check,
        grads: grad_checks,
        greedy: Vec::new(),
        reference_greedy: Vec::new(),
        greedy_problem: None,
    })
}

//! The models `perceiver train` can train, behind one type: what the training loop, the
//! checkpoints and `eval` need of a model is its parameters and its logits for a [`Batch`].
//!
//! | model | reads | predicts | task |
//! |---|---|---|---|
//! | [`PerceiverAr`] | a prefix and latents of token ids | the token after each latent | copy, text |
//! | [`PerceiverIo`] with a token input | token ids, some masked | every position's original token | masked bytes |
//! | [`PerceiverIo`] with an image input (the Perceiver) | images | one class per image | shapes |
//! | [`SparseTransformer`] (or the dense decoder) | token ids | the token after each scored position | copy, text |
//!
//! In every case the logits have one row per entry of `batch.targets`, so one cross-entropy
//! and one scoring routine serve all of them.

use autograd::Var;
use nn::{Ctx, ParamStore};
use serde::{Deserialize, Serialize};

use crate::config::PerceiverArConfig;
use crate::data::Batch;
use crate::error::{Error, Result};
use crate::model::PerceiverAr;
use crate::perceiver_io::{ModelInput, PerceiverIo, PerceiverIoConfig};
use crate::sparse_transformer::{AttentionPattern, SparseTransformer, SparseTransformerConfig};

/// A model's hyperparameters, tagged by family: `{"perceiver_ar": {...}}`,
/// `{"perceiver_io": {...}}` or `{"sparse_transformer": {...}}`. Checkpoints written before there were several families hold a
/// bare Perceiver AR config, which still reads as one.
#[derive(Clone, Debug, PartialEq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum ModelConfig {
    PerceiverAr(PerceiverArConfig),
    PerceiverIo(PerceiverIoConfig),
    SparseTransformer(SparseTransformerConfig),
}

impl<'de> Deserialize<'de> for ModelConfig {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> std::result::Result<Self, D::Error> {
        use serde::de::Error as _;
        let value = serde_json::Value::deserialize(deserializer)?;
        let tagged = value.as_object().filter(|o| o.len() == 1).and_then(|o| o.iter().next());
        let parsed = match tagged {
            Some((tag, inner)) if tag == "perceiver_ar" => {
                serde_json::from_value(inner.clone()).map(ModelConfig::PerceiverAr)
            }
            Some((tag, inner)) if tag == "perceiver_io" => {
                serde_json::from_value(inner.clone()).map(ModelConfig::PerceiverIo)
            }
            Some((tag, inner)) if tag == "sparse_transformer" => {
                serde_json::from_value(inner.clone()).map(ModelConfig::SparseTransformer)
            }
            Some((tag, _)) => {
                return Err(D::Error::custom(format!(
                    "unknown model family `{tag}` (expected perceiver_ar, perceiver_io or sparse_transformer)"
                )))
            }
            // The layout of checkpoints from before the families: a bare Perceiver AR config.
            None => serde_json::from_value(value).map(ModelConfig::PerceiverAr),
        };
        parsed.map_err(|e| D::Error::custom(format!("model: {e}")))
    }
}

impl ModelConfig {
    pub fn validate(&self) -> Result<()> {
        match self {
            ModelConfig::PerceiverAr(c) => c.validate(),
            ModelConfig::PerceiverIo(c) => c.validate(),
            ModelConfig::SparseTransformer(c) => c.validate(),
        }
    }

    /// The longest window and the positions scored in training, for the autoregressive
    /// families (`None` for the encoder-decoder ones).
    pub fn sequence(&self) -> Option<(usize, usize)> {
        match self {
            ModelConfig::PerceiverAr(c) => Some((c.max_seq_len, c.max_latents)),
            ModelConfig::SparseTransformer(c) => Some((c.max_seq_len, c.max_latents)),
            ModelConfig::PerceiverIo(_) => None,
        }
    }

    /// The family's name, as `perceiver train --model` spells it.
    pub fn family(&self) -> &'static str {
        match self {
            ModelConfig::PerceiverAr(_) => "perceiver-ar",
            ModelConfig::PerceiverIo(c) if c.is_image_classifier() => "perceiver",
            ModelConfig::PerceiverIo(_) => "perceiver-io",
            ModelConfig::SparseTransformer(c) if c.pattern == AttentionPattern::Dense => "dense-decoder",
            ModelConfig::SparseTransformer(_) => "sparse-transformer",
        }
    }

    /// The model's size in a few words.
    pub fn shape(&self) -> String {
        match self {
            ModelConfig::PerceiverAr(m) => format!(
                "context {}, latents {}, channels {}, heads {}, layers {}",
                m.max_seq_len, m.max_latents, m.channels, m.heads, m.self_attention_layers
            ),
            ModelConfig::PerceiverIo(c) => {
                let input = match &c.input {
                    crate::perceiver_io::InputConfig::Tokens { max_seq_len, channels, .. } => {
                        format!("{max_seq_len} tokens of {channels} channels")
                    }
                    crate::perceiver_io::InputConfig::Image { shape, bands } => {
                        format!("images {}x{}x{} with {bands} Fourier bands", shape[0], shape[1], shape[2])
                    }
                };
                format!(
                    "input {input}, latents {} of {} channels, cross heads {}, self heads {}, {} self-attention layers x {} blocks",
                    c.latents,
                    c.latent_channels,
                    c.cross.heads,
                    c.self_attention.heads,
                    c.self_layers_per_block,
                    c.self_blocks
                )
            }
            ModelConfig::SparseTransformer(c) => format!(
                "context {}, scored {}, channels {}, heads {}, layers {}, {:?} attention, {:?} heads",
                c.max_seq_len, c.max_latents, c.channels, c.heads, c.layers, c.pattern, c.head_layout
            ),
        }
    }

    /// The Perceiver AR config, or an error saying that `what` needs one.
    pub fn perceiver_ar_mut(&mut self, what: &str) -> Result<&mut PerceiverArConfig> {
        match self {
            ModelConfig::PerceiverAr(c) => Ok(c),
            other => Err(Error::Config(format!("{what} needs a Perceiver AR model, not {}", other.family()))),
        }
    }
}

/// A model of any family (boxed: the models hold their layers inline, hundreds of bytes).
pub enum Model {
    PerceiverAr(Box<PerceiverAr>),
    PerceiverIo(Box<PerceiverIo>),
    SparseTransformer(Box<SparseTransformer>),
}

impl Model {
    /// A freshly initialised model.
    pub fn new(config: &ModelConfig, seed: u64) -> Result<Model> {
        Ok(match config {
            ModelConfig::PerceiverAr(c) => Model::PerceiverAr(Box::new(PerceiverAr::new(c.clone(), seed)?)),
            ModelConfig::PerceiverIo(c) => Model::PerceiverIo(Box::new(PerceiverIo::new(c.clone(), seed)?)),
            ModelConfig::SparseTransformer(c) => {
                Model::SparseTransformer(Box::new(SparseTransformer::new(c.clone(), seed)?))
            }
        })
    }

    pub fn params(&self) -> &ParamStore {
        match self {
            Model::PerceiverAr(m) => &m.params,
            Model::PerceiverIo(m) => &m.params,
            Model::SparseTransformer(m) => &m.params,
        }
    }

    pub fn params_mut(&mut self) -> &mut ParamStore {
        match self {
            Model::PerceiverAr(m) => &mut m.params,
            Model::PerceiverIo(m) => &mut m.params,
            Model::SparseTransformer(m) => &mut m.params,
        }
    }

    pub fn to_device(&mut self, device: &tensor::Device) -> Result<()> {
        Ok(self.params_mut().to_device(device)?)
    }

    /// Logits with one row per target of `batch`: `[B, latents, V]` for Perceiver AR,
    /// `[B, N, V]` for masked tokens, `[B, classes]` for images.
    pub fn logits(&self, ctx: &Ctx, batch: &Batch) -> Result<Var> {
        match self {
            Model::PerceiverAr(m) => m.forward(ctx, &batch.input()),
            Model::SparseTransformer(m) => m.forward(ctx, &batch.input()),
            Model::PerceiverIo(m) => {
                let images;
                let input = match &batch.images {
                    Some(pixels) => {
                        let device = m.params.iter().next().map_or(tensor::Device::Cpu, |p| p.value.device());
                        images = pixels.tensor()?.to_device(&device)?;
                        ModelInput::Image(&images)
                    }
                    None => ModelInput::Tokens {
                        ids: &batch.ids,
                        batch: batch.batch,
                        len: batch.seq_len,
                        padding: None,
                    },
                };
                m.forward(ctx, &input)
            }
        }
    }

    /// The Perceiver AR model, or an error saying that `what` needs one.
    pub fn into_perceiver_ar(self, what: &str) -> Result<PerceiverAr> {
        match self {
            Model::PerceiverAr(m) => Ok(*m),
            other => {
                let family = match other {
                    Model::PerceiverIo(m) => ModelConfig::PerceiverIo(m.config).family(),
                    Model::SparseTransformer(m) => ModelConfig::SparseTransformer(m.config).family(),
                    Model::PerceiverAr(_) => unreachable!("matched above"),
                };
                Err(Error::Input(format!(
                    "{what} needs a Perceiver AR checkpoint; this one holds a {family} model"
                )))
            }
        }
    }
}

//! Perceiver (Jaegle et al., 2021) and Perceiver IO (Jaegle et al., 2022): the encoder-decoder
//! family that Perceiver AR extends, as the perceiver-io library builds it.
//!
//! * **Input adapter**: the task's input as `M` vectors of `C_in` channels: tokens plus a
//!   learned position embedding `[B, M] → [B, M, C_in]`, or an image's pixels with Fourier
//!   position features appended `[B, H, W, c] → [B, H·W, c + 2·(2·bands + 1)]`.
//! * **Encoder**: a learned latent array `[N, D]` cross-attends to the input (cost `O(M·N)`),
//!   then a block of self-attention layers works on the latents alone (`O(N²)` per layer,
//!   independent of `M`). The block repeats `self_blocks` times with shared weights, the first
//!   `cross_layers` repeats preceded by a cross-attention to the input again (the second and
//!   later cross layers share the first's weights, or share one weight set of their own).
//! * **Decoder** (Perceiver IO): `O` learned output queries cross-attend to the latents, so the
//!   output has any shape the queries give it: one query per token for masked language
//!   modelling, one query for classification (the original Perceiver's decoder is this with a
//!   single query).
//! * **Output adapter**: token logits through the transposed input embedding plus a bias
//!   (tied), or a linear layer to the classes.
//!
//! Backward is the tape's: shared layers accumulate each use's gradient.

use autograd::{ParamId, Var};
use nn::attention::AttentionDims;
use nn::embedding::Embedding;
use nn::linear::Linear;
use nn::mlp::Activation;
use nn::perceiver_layers::{CrossAttentionLayer, LayerSettings, SelfAttentionBlock};
use nn::{Builder, Ctx, ParamStore};
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;
use serde::{Deserialize, Serialize};
use tensor::Tensor;

use crate::error::{Error, Result};

pub mod library;

/// What the model reads.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub enum InputConfig {
    /// Token ids with a learned position embedding, `channels` wide.
    Tokens { vocab_size: usize, max_seq_len: usize, channels: usize },
    /// An image `[height, width, channels]` with Fourier features of `bands` bands per axis.
    Image { shape: [usize; 3], bands: usize },
}

impl InputConfig {
    /// Channels of the adapted input.
    pub fn channels(&self) -> usize {
        match self {
            InputConfig::Tokens { channels, .. } => *channels,
            InputConfig::Image { shape, bands } => shape[2] + 2 * (2 * bands + 1),
        }
    }
}

/// What the decoder's output becomes.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub enum OutputConfig {
    /// Logits over the input's vocabulary through its transposed embedding, plus a bias.
    TiedTokens,
    /// Logits over a vocabulary through a linear layer of their own.
    Tokens { vocab_size: usize },
    /// Class logits through a linear layer (one output query).
    Classes { classes: usize },
}

/// Heads and widths of one kind of attention layer (`qk`, `v`: channels of queries/keys and of
/// values; `None` for the library's defaults).
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
pub struct AttentionConfig {
    pub heads: usize,
    pub qk: Option<usize>,
    pub v: Option<usize>,
    pub widening: usize,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct PerceiverIoConfig {
    pub input: InputConfig,
    pub latents: usize,
    pub latent_channels: usize,
    pub cross: AttentionConfig,
    /// Cross-attention layers (at most `self_blocks`).
    pub cross_layers: usize,
    /// Whether later cross layers reuse the first's weights.
    pub first_cross_shared: bool,
    pub self_attention: AttentionConfig,
    pub self_layers_per_block: usize,
    pub self_blocks: usize,
    /// Whether later blocks reuse the first block's weights.
    pub first_block_shared: bool,
    pub decoder: AttentionConfig,
    /// Whether the decoder adds its queries back to its attention's output.
    pub decoder_residual: bool,
    pub output_queries: usize,
    pub output_query_channels: usize,
    pub output: OutputConfig,
    pub dropout: f32,
    pub init_scale: f32,
}

impl PerceiverIoConfig {
    /// Whether this is the Perceiver of the shapes task: an image in, classes out.
    pub fn is_image_classifier(&self) -> bool {
        matches!(self.input, InputConfig::Image { .. })
    }

    pub fn validate(&self) -> Result<()> {
        let bad = |m: String| Err(Error::Config(m));
        if self.cross_layers == 0 || self.self_blocks == 0 || self.cross_layers > self.self_blocks {
            return bad(format!(
                "cross_layers ({}) must be in 1..=self_blocks ({})",
                self.cross_layers, self.self_blocks
            ));
        }
        if self.latents == 0 || self.latent_channels == 0 || self.output_queries == 0 {
            return bad("latents, latent_channels and output_queries must be at least 1".into());
        }
        if matches!(self.output, OutputConfig::TiedTokens)
            && !matches!(self.input, InputConfig::Tokens { .. })
        {
            return bad("a tied token output needs a token input".into());
        }
        Ok(())
    }
}

/// The input adapter's parameters.
enum InputAdapter {
    Tokens { tokens: Embedding, positions: Embedding },
    Image { shape: [usize; 3], features: Tensor },
}

/// What the model reads, one batch.
pub enum ModelInput<'a> {
    /// Token ids `[batch, len]` row-major, and optionally padding flags of the same shape.
    Tokens { ids: &'a [usize], batch: usize, len: usize, padding: Option<&'a [bool]> },
    /// Images `[batch, height, width, channels]`.
    Image(&'a Tensor),
}

pub struct PerceiverIo {
    pub config: PerceiverIoConfig,
    pub params: ParamStore,
    input: InputAdapter,
    latents: ParamId,
    cross_first: CrossAttentionLayer,
    /// The later cross layers' own weights (`None`: they reuse the first's).
    cross_later: Option<CrossAttentionLayer>,
    block_first: SelfAttentionBlock,
    block_later: Option<SelfAttentionBlock>,
    output_queries: ParamId,
    decoder: CrossAttentionLayer,
    output: Option<Linear>,
    output_bias: Option<ParamId>,
}

/// The library's defaults: `qk` defaults to the query input's width, `v` to `qk`.
fn dims(q_in: usize, kv_in: usize, a: &AttentionConfig) -> AttentionDims {
    let qk = a.qk.unwrap_or(q_in);
    AttentionDims { q_in, kv_in, qk, v: a.v.unwrap_or(qk), out: q_in }
}

impl PerceiverIo {
    /// A model with weights ~ N(0, init_scale²), norms at identity, biases zero.
    pub fn new(config: PerceiverIoConfig, seed: u64) -> Result<Self> {
        config.validate()?;
        let c = &config;
        let mut params = ParamStore::new();
        let mut rng = ChaCha8Rng::seed_from_u64(seed);
        let mut b = Builder::new(&mut params, &mut rng);
        let std = c.init_scale;
        let settings = |a: &AttentionConfig| LayerSettings {
            heads: a.heads,
            widening: a.widening,
            activation: Activation::Gelu,
            std,
            eps: 1e-5,
            dropout: c.dropout,
        };
        let input = match c.input {
            InputConfig::Tokens { vocab_size, max_seq_len, channels } => InputAdapter::Tokens {
                tokens: Embedding::new(
                    &mut b.sub("encoder.input.token_embedding"),
                    vocab_size,
                    channels,
                    std,
                )?,
                positions: Embedding::new(
                    &mut b.sub("encoder.input.position_embedding"),
                    max_seq_len,
                    channels,
                    std,
                )?,
            },
            InputConfig::Image { shape, bands } => {
                InputAdapter::Image { shape, features: nn::position::fourier(&shape[..2], bands) }
            }
        };
        let (d, c_in) = (c.latent_channels, c.input.channels());
        let latents = b.normal("encoder.latents", &[c.latents, d], std, true)?;
        let cross_dims = dims(d, c_in, &c.cross);
        let cross = |b: &mut Builder, name: &str| {
            CrossAttentionLayer::new(&mut b.sub(name), cross_dims, settings(&c.cross), true)
        };
        let cross_first = cross(&mut b, "encoder.cross_first")?;
        let cross_later = match c.cross_layers > 1 && !c.first_cross_shared {
            true => Some(cross(&mut b, "encoder.cross_later")?),
            false => None,
        };
        let self_dims = dims(d, d, &c.self_attention);
        let block = |b: &mut Builder, name: &str| {
            SelfAttentionBlock::new(
                &mut b.sub(name),
                c.self_layers_per_block,
                self_dims,
                settings(&c.self_attention),
            )
        };
        let block_first = block(&mut b, "encoder.block_first")?;
        let block_later = match c.self_blocks > 1 && !c.first_block_shared {
            true => Some(block(&mut b, "encoder.block_later")?),
            false => None,
        };
        let q = c.output_query_channels;
        let output_queries = b.normal("decoder.queries", &[c.output_queries, q], std, true)?;
        let decoder = CrossAttentionLayer::new(
            &mut b.sub("decoder.cross"),
            dims(q, d, &c.decoder),
            settings(&c.decoder),
            c.decoder_residual,
        )?;
        let (output, output_bias) = match c.output {
            OutputConfig::TiedTokens => {
                let InputConfig::Tokens { vocab_size, .. } = c.input else { unreachable!("validated") };
                (None, Some(b.sub("decoder.output").constant("bias", &[vocab_size], 0.0)?))
            }
            OutputConfig::Classes { classes: n } | OutputConfig::Tokens { vocab_size: n } => {
                (Some(Linear::new(&mut b.sub("decoder.output"), q, n, true, std)?), None)
            }
        };
        Ok(PerceiverIo {
            config,
            params,
            input,
            latents,
            cross_first,
            cross_later,
            block_first,
            block_later,
            output_queries,
            decoder,
            output,
            output_bias,
        })
    }

    /// Moves every parameter to `device`.
    pub fn to_device(&mut self, device: &tensor::Device) -> Result<()> {
        Ok(self.params.to_device(device)?)
    }

    /// The adapted input `[B, M, C_in]`, its batch size and key padding.
    fn adapt<'a>(&self, ctx: &Ctx, input: &ModelInput<'a>) -> Result<(Var, usize, Option<&'a [bool]>)> {
        match (&self.input, input) {
            (
                InputAdapter::Tokens { tokens, positions },
                &ModelInput::Tokens { ids, batch, len, padding },
            ) => {
                let max = positions.vocab;
                if len > max || ids.len() != batch * len || padding.is_some_and(|p| p.len() != ids.len()) {
                    return Err(Error::Input(format!(
                        "{} token ids (padding {:?}) do not form a batch of {batch} x {len} (at most {max} long)",
                        ids.len(),
                        padding.map(<[bool]>::len)
                    )));
                }
                let x = tokens.forward_plus(ctx, ids, &[batch, len], &positions.rows(ctx, 0, len)?)?;
                Ok((x, batch, padding))
            }
            (InputAdapter::Image { shape, features }, ModelInput::Image(images)) => {
                let &[batch, h, w, ch] = images.shape() else {
                    return Err(Error::Input(format!(
                        "images of shape {:?}, not [B, H, W, C]",
                        images.shape()
                    )));
                };
                if [h, w, ch] != *shape {
                    return Err(Error::Input(format!(
                        "images of shape {:?}, the model reads {shape:?}",
                        [h, w, ch]
                    )));
                }
                let pixels = Var::constant(images.reshape(&[batch, h * w, ch])?);
                let device = pixels.value().device();
                let f = features.to_device(&device)?.unsqueeze(0)?.broadcast_to(&[
                    batch,
                    h * w,
                    features.shape()[1],
                ])?;
                Ok((Var::cat(&[&pixels, &Var::constant(f)], 2)?, batch, None))
            }
            _ => Err(Error::Input("the input does not match the model's input adapter".into())),
        }
    }

    /// Logits: `[B, O, V]` for token outputs (only the first `len` queries for a token input of
    /// length `len`, as the library does), `[B, classes]` for a classifier.
    pub fn forward(&self, ctx: &Ctx, input: &ModelInput) -> Result<Var> {
        let c = &self.config;
        let (x, batch, padding) = self.adapt(ctx, input)?;
        let d = c.latent_channels;
        let mut h = ctx.param(self.latents).broadcast_to(&[batch, c.latents, d])?;
        let cross_later = self.cross_later.as_ref().unwrap_or(&self.cross_first);
        let block_later = self.block_later.as_ref().unwrap_or(&self.block_first);
        for i in 0..c.self_blocks {
            let (cross, block) =
                if i == 0 { (&self.cross_first, &self.block_first) } else { (cross_later, block_later) };
            if i < c.cross_layers {
                h = cross.forward(ctx, &h, &x, padding)?;
            }
            h = block.forward(ctx, h)?;
        }
        let q = c.output_query_channels;
        let queries = ctx.param(self.output_queries).broadcast_to(&[batch, c.output_queries, q])?;
        let out = self.decoder.forward(ctx, &queries, &h, None)?; // [B, O, q]
                                                                  // Token outputs: the first `len` queries for an input of `len` tokens.
        let out = match input {
            ModelInput::Tokens { len, .. } => out.narrow(1, 0, (*len).min(c.output_queries))?,
            ModelInput::Image(_) => out,
        };
        match (&self.output, &self.input) {
            (Some(linear), _) => {
                let logits = linear.forward(ctx, &out)?; // [B, O, classes]
                let classes = logits.shape()[2];
                Ok(match c.output {
                    OutputConfig::Classes { .. } if c.output_queries == 1 => {
                        logits.reshape(&[batch, classes])?
                    }
                    _ => logits,
                })
            }
            (None, InputAdapter::Tokens { tokens, .. }) => {
                let embedding_t = ctx.param(tokens.weight).t()?;
                match self.output_bias {
                    Some(bias) => Ok(out.matmul_bias(&embedding_t, &ctx.param(bias))?),
                    None => Ok(out.matmul(&embedding_t)?),
                }
            }
            (None, InputAdapter::Image { .. }) => {
                Err(Error::Config("a tied output needs a token input".into()))
            }
        }
    }

    /// The Fourier features of an image input (`None` for tokens).
    pub fn fourier_features(&self) -> Option<&Tensor> {
        match &self.input {
            InputAdapter::Image { features, .. } => Some(features),
            InputAdapter::Tokens { .. } => None,
        }
    }
}

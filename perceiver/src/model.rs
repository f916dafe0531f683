//! Perceiver AR (Hawthorne et al., 2022): a causal cross-attention from `L` latents to the whole
//! input, then a stack of causal self-attention layers over the latents only.
//!
//! Input `x[0..n)` is embedded to `C` channels. The last `L` positions are the latents (queries)
//! and the first `P = n − L` the prefix. Layer 0 is cross-attention: latent `i` (position
//! `P + i`) attends to every key `j ≤ P + i`, the keys being the prefix followed by the latents
//! themselves. The self-attention layers then mix the `L` latents causally, and a projection to
//! the vocabulary at each latent predicts the next token. So each output sees only its past,
//! while the cost of the deep stack grows with `L`, not with `n` (paper, section 3).
//!
//! Every layer is pre-norm with residuals: `h ← h + attend(norm(h))`, `h ← h + mlp(h)`. The
//! backward pass needs nothing model-specific: every op records itself on the tape.

use autograd::ParamId;
use autograd::Var;
use nn::attention::{causal_mask, AttendOptions, Attention, AttentionBiases};
use nn::dropout::dropout;
use nn::embedding::Embedding;
use nn::layer_norm::LayerNorm;
use nn::linear::Linear;
use nn::mlp::Mlp;
use nn::rotary::{Rotary, RotaryTables};
use nn::{Builder, Ctx, ParamStore};
use rand::seq::index::sample;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use tensor::Tensor;

use crate::config::{AbsolutePositions, CrossAttendDropout, LatentKeyNorm, PerceiverArConfig};
use crate::error::{Error, Result};

/// Token ids of a batch, row-major `[batch, seq_len]`, split into prefix and latents.
#[derive(Clone, Copy, Debug)]
pub struct Input<'a> {
    pub ids: &'a [usize],
    pub batch: usize,
    pub seq_len: usize,
    /// Positions `0..prefix_len` are the prefix, the rest are latents.
    pub prefix_len: usize,
}

impl Input<'_> {
    pub fn latents(&self) -> usize {
        self.seq_len - self.prefix_len
    }
}

/// Causal cross-attention from the latents to prefix + latents, then an MLP.
pub struct CrossLayer {
    pub q_norm: LayerNorm,
    pub kv_norm: LayerNorm,
    pub attention: Attention,
    pub mlp: Mlp,
}

/// Causal self-attention over the latents, then an MLP.
pub struct SelfLayer {
    pub norm: LayerNorm,
    pub attention: Attention,
    pub mlp: Mlp,
}

pub struct PerceiverAr {
    pub config: PerceiverArConfig,
    pub params: ParamStore,
    pub token_embedding: Embedding,
    pub position_embedding: Option<Embedding>,
    sinusoidal: Option<Tensor>,
    pub rotary: Option<Rotary>,
    pub cross: CrossLayer,
    pub self_layers: Vec<SelfLayer>,
    pub out_norm: Option<LayerNorm>,
    /// The untied output projection (absent when tied to the token embedding).
    pub output: Option<Linear>,
    /// The output bias of a tied output.
    pub output_bias: Option<ParamId>,
}

impl PerceiverAr {
    /// A model with weights ~ N(0, init_scale²), norms at identity, biases zero.
    pub fn new(config: PerceiverArConfig, seed: u64) -> Result<Self> {
        config.validate()?;
        let c = &config;
        crate::memory::ensure_fits(c.parameter_count() * 4, || {
            format!(
                "a model of {} parameters (vocab_size {}, channels {}, max_seq_len {}, {} self-attention layers)",
                c.parameter_count(),
                c.vocab_size,
                c.channels,
                c.max_seq_len,
                c.self_attention_layers
            )
        })?;
        let mut params = ParamStore::new();
        let mut rng = ChaCha8Rng::seed_from_u64(seed);
        let mut b = Builder::new(&mut params, &mut rng);
        let (std, eps) = (c.init_scale, c.layer_norm_eps);
        let token_embedding = Embedding::new(&mut b.sub("token_embedding"), c.vocab_size, c.channels, std)?;
        let position_embedding = match c.absolute_positions {
            AbsolutePositions::Learned => {
                Some(Embedding::new(&mut b.sub("position_embedding"), c.max_seq_len, c.channels, std)?)
            }
            _ => None,
        };
        let sinusoidal = (c.absolute_positions == AbsolutePositions::Sinusoidal)
            .then(|| nn::position::sinusoidal(c.max_seq_len, c.channels));
        let rotary = if c.rotary_dims > 0 { Some(Rotary::new(c.rotary_dims, c.rotary_base)?) } else { None };
        let cross = {
            let mut b = b.sub("cross");
            CrossLayer {
                q_norm: LayerNorm::new(&mut b.sub("q_norm"), c.channels, eps)?,
                kv_norm: LayerNorm::new(&mut b.sub("kv_norm"), c.channels, eps)?,
                attention: Attention::new(
                    &mut b.sub("attention"),
                    c.channels,
                    c.channels,
                    c.heads,
                    AttentionBiases { qkv: c.cross_qkv_bias, out: c.cross_out_bias },
                    std,
                )?,
                mlp: Mlp::new(
                    &mut b.sub("mlp"),
                    c.channels,
                    c.cross_widening,
                    c.activation,
                    c.mlp_bias,
                    std,
                    eps,
                )?,
            }
        };
        let mut self_layers = Vec::new();
        for i in 0..c.self_attention_layers {
            let mut b = b.sub(format!("self_attention.{i}"));
            self_layers.push(SelfLayer {
                norm: LayerNorm::new(&mut b.sub("norm"), c.channels, eps)?,
                attention: Attention::new(
                    &mut b.sub("attention"),
                    c.channels,
                    c.channels,
                    c.heads,
                    AttentionBiases { qkv: c.self_qkv_bias, out: c.self_out_bias },
                    std,
                )?,
                mlp: Mlp::new(
                    &mut b.sub("mlp"),
                    c.channels,
                    c.self_widening,
                    c.activation,
                    c.mlp_bias,
                    std,
                    eps,
                )?,
            });
        }
        let out_norm =
            if c.output_norm { Some(LayerNorm::new(&mut b.sub("out_norm"), c.channels, eps)?) } else { None };
        let (output, output_bias) = if c.tied_output {
            let bias = if c.output_bias {
                Some(b.sub("output").constant("bias", &[c.vocab_size], 0.0)?)
            } else {
                None
            };
            (None, bias)
        } else {
            (Some(Linear::new(&mut b.sub("output"), c.channels, c.vocab_size, c.output_bias, std)?), None)
        };
        Ok(PerceiverAr {
            config,
            params,
            token_embedding,
            position_embedding,
            sinusoidal,
            rotary,
            cross,
            self_layers,
            out_norm,
            output,
            output_bias,
        })
    }

    /// Moves every parameter to `device`; inputs stay token ids on the host.
    pub fn to_device(&mut self, device: &tensor::Device) -> Result<()> {
        Ok(self.params.to_device(device)?)
    }

    /// Where the parameters live.
    pub fn device(&self) -> tensor::Device {
        self.params.iter().next().map_or(tensor::Device::Cpu, |p| p.value.device())
    }

    fn check_input(&self, input: &Input) -> Result<()> {
        let c = &self.config;
        let Input { ids, batch, seq_len, prefix_len } = *input;
        if batch == 0 || seq_len == 0 || ids.len() != batch * seq_len {
            return Err(Error::Input(format!(
                "{} token ids do not form a batch of {batch} x {seq_len}",
                ids.len()
            )));
        }
        if seq_len > c.max_seq_len {
            return Err(Error::Input(format!(
                "sequence length {seq_len} exceeds max_seq_len {}",
                c.max_seq_len
            )));
        }
        if prefix_len >= seq_len {
            return Err(Error::Input(format!(
                "prefix length {prefix_len} leaves no latents in a sequence of {seq_len}"
            )));
        }
        if let Some(&bad) = ids.iter().find(|&&t| t >= c.vocab_size) {
            return Err(Error::Input(format!(
                "token id {bad} is outside the vocabulary of {}",
                c.vocab_size
            )));
        }
        Ok(())
    }

    /// Logits `[batch, latents, vocab]`: position `i` predicts token `prefix_len + i + 1`.
    pub fn forward(&self, ctx: &Ctx, input: &Input) -> Result<Var> {
        self.check_input(input)?;
        let c = &self.config;
        let Input { ids, batch, seq_len: n, prefix_len: p } = *input;
        let l = n - p;

        // Embeddings, plus absolute positions 0..n.
        let mut x = self.token_embedding.forward(ctx, ids, &[batch, n])?;
        if let Some(pos) = &self.position_embedding {
            let positions: Vec<usize> = (0..n).collect();
            x = x.add(&pos.forward(ctx, &positions, &[n])?)?;
        }
        if let Some(table) = &self.sinusoidal {
            // Fixed sinusoids have unit amplitude; as in Vaswani et al. (2017) the token
            // embeddings are scaled by √C so the two are comparable and tokens stay visible.
            x = x.mul_scalar((c.channels as f32).sqrt())?;
            x = x.add(&Var::constant(table.narrow(0, 0, n)?.to_device(&x.value().device())?))?;
        }
        let latents = x.narrow(1, p, l)?;
        let mut prefix = x.narrow(1, 0, p)?;

        // Cross-attend dropout: which prefix keys survive, and their positions (for rotary).
        let training_dropout = ctx.train && p > 0 && c.cross_attend_dropout > 0.0;
        let mut key_positions: Vec<Vec<usize>> = vec![(0..n).collect(); 1];
        let mut key_mask: Option<Tensor> = None;
        if training_dropout {
            match c.cross_attend_dropout_kind {
                CrossAttendDropout::KeepCount => {
                    let keep = p - (p as f32 * c.cross_attend_dropout) as usize;
                    let mut rng = ctx.rng.borrow_mut();
                    let mut rows = Vec::with_capacity(batch);
                    let mut flat = Vec::with_capacity(batch * keep);
                    for bi in 0..batch {
                        let mut kept = sample(&mut **rng, p, keep).into_vec();
                        kept.sort_unstable();
                        flat.extend(kept.iter().map(|&j| bi * p + j));
                        rows.push(kept.into_iter().chain(p..n).collect());
                    }
                    let ch = c.channels;
                    prefix = prefix
                        .reshape(&[batch * p, ch])?
                        .index_select(0, &flat)?
                        .reshape(&[batch, keep, ch])?;
                    key_positions = rows;
                }
                CrossAttendDropout::Bernoulli => {
                    let mut rng = ctx.rng.borrow_mut();
                    let mask: Vec<f32> = (0..batch)
                        .flat_map(|_| {
                            (0..n)
                                .map(|j| (j < p && rng.gen::<f32>() < c.cross_attend_dropout) as u8 as f32)
                                .collect::<Vec<_>>()
                        })
                        .collect();
                    key_mask = Some(Tensor::from_vec(mask, &[batch, 1, 1, n])?);
                }
            }
        }
        let keys = prefix.shape()[1] + l;

        // Rotary tables: one row of positions per batch element when dropout kept different
        // prefix positions; latents always sit at the end.
        let tables = match &self.rotary {
            Some(r) => {
                let rows = key_positions.len();
                let flat: Vec<f32> = key_positions.iter().flatten().map(|&q| q as f32).collect();
                Some(r.tables(&flat, rows, keys)?)
            }
            None => None,
        };

        // Layer 0: causal cross-attention of the latents to prefix + latents.
        let mask = causal_mask(l, keys)?;
        let mask = match key_mask {
            Some(km) => mask.maximum(&km)?,
            None => mask,
        };
        let q_in = self.cross.q_norm.forward(ctx, &latents)?;
        let kv_prefix = self.cross.kv_norm.forward(ctx, &prefix)?;
        let kv_latents = match c.latent_key_norm {
            LatentKeyNorm::Query => q_in.clone(),
            LatentKeyNorm::Kv => self.cross.kv_norm.forward(ctx, &latents)?,
        };
        let kv = Var::cat(&[&kv_prefix, &kv_latents], 1)?;
        let cross_rotary = tables.as_ref().filter(|_| c.rotary_cross);
        let opts = AttendOptions {
            mask: Some(&mask),
            rotary_q: cross_rotary,
            rotary_k: cross_rotary,
            dropout: c.attention_dropout,
        };
        let attended = self.cross.attention.forward(ctx, &q_in, &kv, &opts)?;
        let mut h = latents.add(&dropout(ctx, &attended, c.residual_dropout)?)?;
        h = h.add(&dropout(ctx, &self.cross.mlp.forward(ctx, &h)?, c.residual_dropout)?)?;

        // Causal self-attention over the latents.
        let self_mask = causal_mask(l, l)?;
        for (i, layer) in self.self_layers.iter().enumerate() {
            let rot: Option<&RotaryTables> = tables.as_ref().filter(|_| c.rotary_in_self_layer(i));
            let opts = AttendOptions {
                mask: Some(&self_mask),
                rotary_q: rot,
                rotary_k: rot,
                dropout: c.attention_dropout,
            };
            let a = layer.norm.forward(ctx, &h)?;
            let attended = layer.attention.forward(ctx, &a, &a, &opts)?;
            h = h.add(&dropout(ctx, &attended, c.residual_dropout)?)?;
            h = h.add(&dropout(ctx, &layer.mlp.forward(ctx, &h)?, c.residual_dropout)?)?;
        }

        if let Some(norm) = &self.out_norm {
            h = norm.forward(ctx, &h)?;
        }
        match &self.output {
            Some(linear) => Ok(linear.forward(ctx, &h)?),
            None => {
                let logits = h.matmul(&ctx.param(self.token_embedding.weight).t()?)?;
                Ok(match self.output_bias {
                    Some(bias) => logits.add(&ctx.param(bias))?,
                    None => logits,
                })
            }
        }
    }
}

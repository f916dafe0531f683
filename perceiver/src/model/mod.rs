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

use std::sync::Arc;

use autograd::ParamId;
use autograd::Var;
use nn::attention::{AttendOptions, Attention, AttentionBiases};
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
use tensor::{KeyVisibility, Tensor};

use crate::config::{AbsolutePositions, CrossAttendDropout, LatentKeyNorm, PerceiverArConfig};
use crate::error::{Error, Result};

mod cache;
pub use cache::{through_cache, KvBuffer, KvCache};

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

/// An attention block's two halves: attention with the given biases, and the MLP after it
/// (widened `widening` times).
fn attention_and_mlp(
    b: &mut Builder,
    c: &PerceiverArConfig,
    biases: AttentionBiases,
    widening: usize,
) -> Result<(Attention, Mlp)> {
    let (std, eps) = (c.init_scale, c.layer_norm_eps);
    let attention = Attention::new(&mut b.sub("attention"), c.channels, c.channels, c.heads, biases, std)?;
    let mlp = Mlp::new(&mut b.sub("mlp"), c.channels, widening, c.activation, c.mlp_bias, std, eps)?;
    Ok((attention, mlp))
}

impl CrossLayer {
    fn new(b: &mut Builder, c: &PerceiverArConfig) -> Result<Self> {
        let biases = AttentionBiases { qkv: c.cross_qkv_bias, out: c.cross_out_bias };
        let (q_norm, kv_norm) = (
            LayerNorm::new(&mut b.sub("q_norm"), c.channels, c.layer_norm_eps)?,
            LayerNorm::new(&mut b.sub("kv_norm"), c.channels, c.layer_norm_eps)?,
        );
        let (attention, mlp) = attention_and_mlp(b, c, biases, c.cross_widening)?;
        Ok(CrossLayer { q_norm, kv_norm, attention, mlp })
    }
}

impl SelfLayer {
    fn new(b: &mut Builder, c: &PerceiverArConfig) -> Result<Self> {
        let biases = AttentionBiases { qkv: c.self_qkv_bias, out: c.self_out_bias };
        let norm = LayerNorm::new(&mut b.sub("norm"), c.channels, c.layer_norm_eps)?;
        let (attention, mlp) = attention_and_mlp(b, c, biases, c.self_widening)?;
        Ok(SelfLayer { norm, attention, mlp })
    }
}

/// The prefix keys that cross-attend dropout leaves in one training step (section 3 of the
/// paper): either fewer prefix positions (`KeepCount`, the kept ones gathered), or all of them
/// with a mask of dropped keys (`Bernoulli`).
struct KeptKeys {
    /// The prefix as the cross layer's keys see it: `[B, P', C]`.
    prefix: Var,
    /// Absolute positions of the keys (cached ones, kept prefix, then latents), one row per
    /// batch element, or one row shared by all when nothing was dropped: for rotary.
    positions: Vec<Vec<usize>>,
    /// `[B, N]` row-major, true at dropped keys (Bernoulli form only).
    dropped: Option<Vec<bool>>,
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
        let cross = CrossLayer::new(&mut b.sub("cross"), c)?;
        let self_layers = (0..c.self_attention_layers)
            .map(|i| SelfLayer::new(&mut b.sub(format!("self_attention.{i}")), c))
            .collect::<Result<Vec<_>>>()?;
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
    ///
    /// The four stages of the paper's figure 1, each below as its own method:
    /// [`embed`](Self::embed) `[B, N] → [B, N, C]`, [`cross_attend`](Self::cross_attend)
    /// `→ [B, L, C]` (the latents read the whole input), [`self_attend`](Self::self_attend)
    /// `→ [B, L, C]` (the deep stack, over the latents only), [`head`](Self::head)
    /// `→ [B, L, V]`. [`forward_cached`](Self::forward_cached) runs the same stages on the
    /// newest positions only, with the keys and values of the earlier ones from a cache.
    pub fn forward(&self, ctx: &Ctx, input: &Input) -> Result<Var> {
        self.check_input(input)?;
        let x = self.embed(ctx, input, 0)?;
        let (latents, tables) = self.cross_attend(ctx, &x, input.prefix_len, None)?;
        let latents = self.self_attend(ctx, latents, tables.as_ref(), None)?;
        self.head(ctx, latents)
    }

    /// Token embeddings plus absolute positions `first..first + N`: `[B, N] → [B, N, C]`.
    pub fn embed(&self, ctx: &Ctx, input: &Input, first: usize) -> Result<Var> {
        let (batch, n) = (input.batch, input.seq_len);
        let mut x = match &self.position_embedding {
            // [n, C] added over the batch as the tokens are looked up.
            Some(pos) => {
                self.token_embedding.forward_plus(ctx, input.ids, &[batch, n], &pos.rows(ctx, first, n)?)?
            }
            None => self.token_embedding.forward(ctx, input.ids, &[batch, n])?,
        };
        if let Some(table) = &self.sinusoidal {
            // Fixed sinusoids have unit amplitude; as in Vaswani et al. (2017) the token
            // embeddings are scaled by √C so the two are comparable and tokens stay visible.
            x = x.mul_scalar((self.config.channels as f32).sqrt())?;
            x = x.add(&Var::constant(table.narrow(0, first, n)?.to_device(&x.value().device())?))?;
        }
        Ok(x)
    }

    /// Layer 0: the last `L = N − P` positions (the latents, `[B, L, C]`) attend causally to
    /// the prefix and to themselves (`[B, P + L, C]`), then an MLP. Returns the latents and
    /// the rotary tables of the key positions, which the self-attention layers reuse.
    ///
    /// With a `cache`, the `N` positions come after the `S` whose keys and values it holds
    /// (window positions `S..S + N`): their keys and values are appended to it, and the
    /// latents attend to all `S + N`.
    pub fn cross_attend(
        &self,
        ctx: &Ctx,
        x: &Var,
        prefix_len: usize,
        cache: Option<&mut KvBuffer>,
    ) -> Result<(Var, Option<RotaryTables>)> {
        let c = &self.config;
        let &[batch, n, _] = x.shape() else {
            return Err(Error::Input(format!("cross_attend: input of shape {:?}, not [B, N, C]", x.shape())));
        };
        if prefix_len >= n {
            return Err(Error::Input(format!(
                "prefix length {prefix_len} leaves no latents in a sequence of {n}"
            )));
        }
        let seen = cache.as_ref().map_or(0, |cache| cache.len());
        let (p, l) = (prefix_len, n - prefix_len);
        let latents = x.narrow(1, p, l)?; // [B, L, C]
        let kept = self.cross_attend_dropout(ctx, x.narrow(1, 0, p)?, seen, n)?;
        let keys = kept.prefix.shape()[1] + l;

        // Rotary tables of every key position, the cached ones first: one row of positions
        // per batch element when dropout kept different prefix positions; latents always sit
        // at the end.
        let tables = match &self.rotary {
            Some(r) => {
                let rows = kept.positions.len();
                let flat: Vec<f32> = kept.positions.iter().flatten().map(|&q| q as f32).collect();
                Some(r.tables(&flat, rows, seen + keys)?)
            }
            None => None,
        };
        // Latent i sees every kept prefix key and the latents up to itself: causal in key
        // order, with the latents the last L keys; Bernoulli-dropped keys are hidden.
        let visibility = KeyVisibility {
            causal: Some(seen + keys - l),
            key_positions: None,
            hidden_keys: kept.dropped.map(Arc::from),
            pattern: None,
        };
        let layer = &self.cross;
        let queries = layer.q_norm.forward(ctx, &latents)?;
        let kv = if p > 0 && kept.prefix.shape()[1] == p {
            // Every prefix position is a key (a kept set as large as the prefix is all of it,
            // in order): normalise the whole input at once, then put the latents' own keys in
            // place, so no concatenated copy of the prefix is made.
            let normed = layer.kv_norm.forward(ctx, x)?; // [B, N, C]
            match c.latent_key_norm {
                LatentKeyNorm::Query => normed.overwrite_narrow(1, p, &queries)?,
                LatentKeyNorm::Kv => normed,
            }
        } else {
            let kv_latents = match c.latent_key_norm {
                LatentKeyNorm::Query => queries.clone(),
                LatentKeyNorm::Kv => layer.kv_norm.forward(ctx, &latents)?,
            };
            match kept.prefix.shape()[1] {
                0 => kv_latents,
                _ => Var::cat(&[&layer.kv_norm.forward(ctx, &kept.prefix)?, &kv_latents], 1)?, // [B, keys, C]
            }
        };
        let rotary = tables.as_ref().filter(|_| c.rotary_cross);
        let opts = AttendOptions {
            visibility: Some(&visibility),
            dropout: c.attention_dropout,
            ..Default::default()
        };
        let q = layer.attention.queries(ctx, &queries, rotary)?;
        let (k, v) = layer.attention.keys_values(ctx, &kv, None)?;
        let (k, v) = through_cache(cache, k, v)?;
        let k = rotated(k, rotary)?;
        let parts = (&layer.attention, &layer.mlp);
        let h = attend_and_mlp(ctx, parts, (&q, &k, &v), &opts, (&latents, c.residual_dropout))?;
        debug_assert_eq!(h.shape(), [batch, l, c.channels]);
        Ok((h, tables))
    }

    /// Which prefix keys the cross layer sees in this step. Outside training, or with no
    /// prefix, all of them; in training, the config's form of cross-attend dropout, drawn
    /// from the context's random stream.
    /// The new positions start at window position `first` (after `first` cached ones, which
    /// are always kept).
    fn cross_attend_dropout(&self, ctx: &Ctx, prefix: Var, first: usize, n: usize) -> Result<KeptKeys> {
        let c = &self.config;
        let (batch, p) = (prefix.shape()[0], prefix.shape()[1]);
        let all =
            KeptKeys { prefix: prefix.clone(), positions: vec![(0..first + n).collect()], dropped: None };
        if !(ctx.train && p > 0 && c.cross_attend_dropout > 0.0) {
            return Ok(all);
        }
        let mut rng = ctx.rng.borrow_mut();
        match c.cross_attend_dropout_kind {
            CrossAttendDropout::KeepCount => {
                // Keep P − ⌊P·rate⌋ prefix positions per row, in order.
                let keep = p - (p as f32 * c.cross_attend_dropout) as usize;
                let mut positions = Vec::with_capacity(batch);
                let mut flat = Vec::with_capacity(batch * keep);
                for row in 0..batch {
                    let mut kept = sample(&mut **rng, p, keep).into_vec();
                    kept.sort_unstable();
                    flat.extend(kept.iter().map(|&j| row * p + j));
                    positions.push(kept.into_iter().chain(p..n).collect());
                }
                let ch = c.channels;
                let prefix =
                    prefix.reshape(&[batch * p, ch])?.index_select(0, &flat)?.reshape(&[batch, keep, ch])?;
                Ok(KeptKeys { prefix, positions, dropped: None })
            }
            CrossAttendDropout::Bernoulli => {
                // Each prefix key dropped with probability `rate`, before the softmax.
                let dropped: Vec<bool> = (0..batch)
                    .flat_map(|_| {
                        (0..n).map(|j| j < p && rng.gen::<f32>() < c.cross_attend_dropout).collect::<Vec<_>>()
                    })
                    .collect();
                Ok(KeptKeys { dropped: Some(dropped), ..all })
            }
        }
    }

    /// The stack of causal self-attention layers over the latents: `[B, L, C] → [B, L, C]`.
    /// Rotary uses the latents' positions, the last `L` columns of the key tables. With
    /// `caches` (one per layer), the `L` latents come after those whose keys and values each
    /// cache holds, and attend to them too.
    pub fn self_attend(
        &self,
        ctx: &Ctx,
        mut h: Var,
        tables: Option<&RotaryTables>,
        mut caches: Option<&mut [KvBuffer]>,
    ) -> Result<Var> {
        let c = &self.config;
        for (i, layer) in self.self_layers.iter().enumerate() {
            let cache = caches.as_mut().map(|caches| &mut caches[i]);
            // Latent i sees the cached latents and latents 0..=i.
            let visibility = KeyVisibility::causal(cache.as_ref().map_or(0, |cache| cache.len()));
            let rotary = tables.filter(|_| c.rotary_in_self_layer(i));
            let opts = AttendOptions {
                visibility: Some(&visibility),
                dropout: c.attention_dropout,
                ..Default::default()
            };
            let normed = layer.norm.forward(ctx, &h)?;
            let q = layer.attention.queries(ctx, &normed, rotary)?;
            let (k, v) = layer.attention.keys_values(ctx, &normed, None)?;
            let (k, v) = through_cache(cache, k, v)?;
            let k = rotated(k, rotary)?;
            let parts = (&layer.attention, &layer.mlp);
            h = attend_and_mlp(ctx, parts, (&q, &k, &v), &opts, (&h, c.residual_dropout))?;
        }
        Ok(h)
    }

    /// The output head: optional final norm, then logits through the untied projection or
    /// the transposed token embedding (plus bias): `[B, L, C] → [B, L, V]`.
    pub fn head(&self, ctx: &Ctx, mut h: Var) -> Result<Var> {
        if let Some(norm) = &self.out_norm {
            h = norm.forward(ctx, &h)?;
        }
        match &self.output {
            Some(linear) => Ok(linear.forward(ctx, &h)?),
            None => {
                let embedding_t = ctx.param(self.token_embedding.weight).t()?;
                Ok(match self.output_bias {
                    Some(bias) => h.matmul_bias(&embedding_t, &ctx.param(bias))?,
                    None => h.matmul(&embedding_t)?,
                })
            }
        }
    }
}

/// Keys rotated by the last positions of `rotary` (as many as there are keys). Keys are
/// rotated after the cache, which holds them as projected: a cache whose window slides (the
/// perceiver-io library's generation) then rotates its keys by their current positions.
fn rotated(k: Var, rotary: Option<&RotaryTables>) -> Result<Var> {
    match rotary {
        Some(r) => Ok(r.apply(k)?),
        None => Ok(k),
    }
}

/// The rest of a layer from its heads: `h + attend(q, k, v)`, then `+ mlp(·)` (each branch
/// through residual dropout `p`). Without dropout (`p = 0`, or outside training) each branch
/// is added by its last product ([`Attention::attend_adding`], [`Mlp::forward_residual`]).
fn attend_and_mlp(
    ctx: &Ctx,
    (attention, mlp): (&Attention, &Mlp),
    (q, k, v): (&Var, &Var, &Var),
    opts: &AttendOptions,
    (h, p): (&Var, f32),
) -> Result<Var> {
    if !ctx.train || p == 0.0 {
        let h = attention.attend_adding(ctx, (q, k, v), opts, h)?;
        return Ok(mlp.forward_residual(ctx, &h)?);
    }
    let h = h.add(&dropout(ctx, &attention.attend(ctx, q, k, v, opts)?, p)?)?;
    Ok(h.add(&dropout(ctx, &mlp.forward(ctx, &h)?, p)?)?)
}

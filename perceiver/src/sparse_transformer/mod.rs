//! The Sparse Transformer (Child et al., 2019): a decoder-only transformer whose heads attend
//! along factorized sparse patterns, so that each position sees about `√n` earlier positions
//! instead of all `n`. It is the long-context baseline Perceiver AR is measured against, built
//! here from the same pieces: the same embeddings, pre-norm layers and MLP as the rest of the
//! project, and the fused attention with a [`SparsePattern`] (or plain causality: the dense
//! decoder of the same size).
//!
//! * **Embed**: token ids `[B, N]` → token embedding + learned positions `[B, N, C]`.
//! * **Layers** (`layers` times, pre-norm): `h = x + attend(norm(x))` causally along the
//!   pattern, then `h + mlp(h)` ([`SelfAttentionLayer`]).
//! * **Head**: final norm, logits through the transposed token embedding plus a bias, for the
//!   last `L` positions (the scored ones; a Perceiver AR batch's latents): `[B, L, V]`.
//!
//! How the two parts of a pattern are spread over heads ([`HeadLayout`], section 4.3 of the
//! paper): every head attends to both (*merged*), alternate layers take one part each
//! (*interleaved*), or half the heads take each part (*split*).
//!
//! Backward is the tape's; the attention's is the fused kernel's, which visits only the key
//! blocks the pattern reaches.
//!
//! Generation keeps each layer's keys and values ([`SparseTransformer::forward_cached`]): a new
//! token then costs one position per layer. Positions are learned and absolute, so when the
//! window is full the cache is rebuilt from the last half of it (see `crate::generate`).

use std::sync::Arc;

use autograd::{ParamId, Var};
use nn::attention::AttentionDims;
use nn::embedding::Embedding;
use nn::layer_norm::LayerNorm;
use nn::mlp::Activation;
use nn::perceiver_layers::{LayerSettings, SelfAttentionLayer};
use nn::{Builder, Ctx, ParamStore};
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;
use serde::{Deserialize, Serialize};
use tensor::{KeyVisibility, SparsePattern};

use crate::error::{Error, Result};
use crate::model::{through_cache, Input, KvBuffer};

/// Which keys a position sees, besides being causal.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum AttentionPattern {
    /// Every earlier position: the dense decoder.
    Dense,
    /// The `stride` latest positions and every `stride`-th one before them.
    Strided { stride: usize },
    /// The positions of the query's block of `block`, and the last `summary` of every block.
    Fixed { block: usize, summary: usize },
}

/// How a pattern's two parts are spread over the heads and layers.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum HeadLayout {
    /// Every head of every layer attends to both parts.
    Merged,
    /// Even layers attend to the first part, odd layers to the second.
    Interleaved,
    /// Even heads attend to the first part, odd heads to the second.
    Split,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct SparseTransformerConfig {
    pub vocab_size: usize,
    pub max_seq_len: usize,
    /// Positions scored in training (the last ones of a window), like Perceiver AR's latents;
    /// any number up to `max_seq_len` works at run time.
    pub max_latents: usize,
    pub channels: usize,
    pub heads: usize,
    pub layers: usize,
    pub widening: usize,
    pub pattern: AttentionPattern,
    pub head_layout: HeadLayout,
    pub dropout: f32,
    pub init_scale: f32,
}

impl SparseTransformerConfig {
    pub fn validate(&self) -> Result<()> {
        let bad = |m: String| Err(Error::Config(m));
        for (name, v) in [
            ("vocab_size", self.vocab_size),
            ("max_seq_len", self.max_seq_len),
            ("max_latents", self.max_latents),
            ("channels", self.channels),
            ("heads", self.heads),
            ("layers", self.layers),
            ("widening", self.widening),
        ] {
            if v == 0 {
                return bad(format!("{name} must be at least 1"));
            }
        }
        if !self.channels.is_multiple_of(self.heads) {
            return bad(format!("heads ({}) must divide channels ({})", self.heads, self.channels));
        }
        if self.max_latents > self.max_seq_len {
            return bad(format!(
                "max_latents ({}) must not exceed max_seq_len ({})",
                self.max_latents, self.max_seq_len
            ));
        }
        if self.head_layout == HeadLayout::Split && self.heads < 2 && self.pattern != AttentionPattern::Dense
        {
            return bad("split heads need at least 2 heads, one per part of the pattern".into());
        }
        if let Some(problem) = self.patterns(0).into_iter().flatten().find_map(|p| p.problem()) {
            return bad(format!("pattern: {problem}"));
        }
        let init_ok = self.init_scale.is_finite() && self.init_scale > 0.0;
        if !((0.0..1.0).contains(&self.dropout) && init_ok) {
            return bad(format!(
                "dropout must be in [0, 1) and init_scale above 0, got {} and {}",
                self.dropout, self.init_scale
            ));
        }
        Ok(())
    }

    /// The pattern of each head of layer `layer` (one for all heads, or one per head), `None`
    /// for the dense decoder.
    pub fn patterns(&self, layer: usize) -> Option<Vec<SparsePattern>> {
        let whole = match self.pattern {
            AttentionPattern::Dense => return None,
            AttentionPattern::Strided { stride } => SparsePattern::strided(stride),
            AttentionPattern::Fixed { block, summary } => SparsePattern::fixed(block, summary),
        };
        Some(match self.head_layout {
            HeadLayout::Merged => vec![whole],
            HeadLayout::Interleaved => vec![SparsePattern::only(whole.parts[layer % 2])],
            HeadLayout::Split => (0..self.heads).map(|h| SparsePattern::only(whole.parts[h % 2])).collect(),
        })
    }
}

pub struct SparseTransformer {
    pub config: SparseTransformerConfig,
    pub params: ParamStore,
    token_embedding: Embedding,
    position_embedding: Embedding,
    layers: Vec<SelfAttentionLayer>,
    out_norm: LayerNorm,
    output_bias: ParamId,
}

impl SparseTransformer {
    /// A model with weights ~ N(0, init_scale²), norms at identity, biases zero.
    pub fn new(config: SparseTransformerConfig, seed: u64) -> Result<Self> {
        config.validate()?;
        let c = &config;
        let mut params = ParamStore::new();
        let mut rng = ChaCha8Rng::seed_from_u64(seed);
        let mut b = Builder::new(&mut params, &mut rng);
        let std = c.init_scale;
        let token_embedding = Embedding::new(&mut b.sub("token_embedding"), c.vocab_size, c.channels, std)?;
        let position_embedding =
            Embedding::new(&mut b.sub("position_embedding"), c.max_seq_len, c.channels, std)?;
        let settings = LayerSettings {
            heads: c.heads,
            widening: c.widening,
            activation: Activation::Gelu,
            std,
            eps: 1e-5,
            dropout: c.dropout,
        };
        let dims = AttentionDims::new(c.channels, c.channels);
        let layers = (0..c.layers)
            .map(|i| SelfAttentionLayer::new(&mut b.sub("layers").sub(i), dims, settings))
            .collect::<std::result::Result<Vec<_>, _>>()?;
        let out_norm = LayerNorm::new(&mut b.sub("out_norm"), c.channels, 1e-5)?;
        let output_bias = b.sub("output").constant("bias", &[c.vocab_size], 0.0)?;
        Ok(SparseTransformer {
            config,
            params,
            token_embedding,
            position_embedding,
            layers,
            out_norm,
            output_bias,
        })
    }

    /// Logits of the last `seq_len - prefix_len` positions: `[B, L, V]`. Every position is
    /// computed (each layer needs all earlier ones); only the scored ones reach the head.
    pub fn forward(&self, ctx: &Ctx, input: &Input) -> Result<Var> {
        self.forward_cached(ctx, input, None)
    }

    /// Empty key/value caches, one per layer, for `batch` sequences of up to `max_seq_len`.
    pub fn new_cache(&self, batch: usize) -> Result<Vec<KvBuffer>> {
        let device = self.params.iter().next().map_or(tensor::Device::Cpu, |p| p.value.device());
        self.layers
            .iter()
            .map(|layer| KvBuffer::new(self.config.max_seq_len, batch, &layer.attention, &device))
            .collect()
    }

    /// [`SparseTransformer::forward`] for positions that follow those whose keys and values
    /// `caches` (one per layer) hold: the input's positions are numbered after them, its keys
    /// and values are appended, and its queries attend to everything cached. On empty caches
    /// this is the forward pass that also fills them; with one token it is a generation step
    /// costing one position per layer.
    pub fn forward_cached(
        &self,
        ctx: &Ctx,
        input: &Input,
        mut caches: Option<&mut [KvBuffer]>,
    ) -> Result<Var> {
        let c = &self.config;
        let Input { ids, batch, seq_len: n, prefix_len } = *input;
        let first = caches.as_ref().map_or(0, |caches| caches[0].len());
        if first + n > c.max_seq_len {
            return Err(Error::Input(format!(
                "{n} positions after {first} cached exceed max_seq_len {}",
                c.max_seq_len
            )));
        }
        if batch == 0 || n == 0 || ids.len() != batch * n || n > c.max_seq_len || prefix_len >= n {
            return Err(Error::Input(format!(
                "{} token ids as a batch of {batch} x {n} with {prefix_len} unscored (at most {} long, at least one scored)",
                ids.len(),
                c.max_seq_len
            )));
        }
        if let Some(&bad) = ids.iter().find(|&&t| t >= c.vocab_size) {
            return Err(Error::Input(format!(
                "token id {bad} is outside the vocabulary of {}",
                c.vocab_size
            )));
        }
        let positions = self.position_embedding.rows(ctx, first, n)?;
        let mut x = self.token_embedding.forward_plus(ctx, ids, &[batch, n], &positions)?;
        for (i, layer) in self.layers.iter().enumerate() {
            // Query j sits at position first + j; the keys are positions 0.. (cached, then new).
            let visibility = KeyVisibility {
                causal: Some(first),
                pattern: c.patterns(i).map(Arc::from),
                ..Default::default()
            };
            let cache = caches.as_mut().map(|caches| &mut caches[i]);
            x = layer.forward_through(ctx, &x, &visibility, |k, v| through_cache(cache, k, v))?;
        }
        let scored = x.narrow(1, prefix_len, n - prefix_len)?;
        let h = self.out_norm.forward(ctx, &scored)?;
        let embedding_t = ctx.param(self.token_embedding.weight).t()?;
        Ok(h.matmul_bias(&embedding_t, &ctx.param(self.output_bias))?)
    }
}

//! The model's hyperparameters, able to express both published Perceiver AR variants.
//!
//! | choice | [`PerceiverArConfig::paper`] | [`PerceiverArConfig::perceiver_io`] |
//! |---|---|---|
//! | MLP | squared ReLU, biases | exact GELU, no biases |
//! | q/k/v/o biases | all | cross: output only; self: none |
//! | norm of the latents as keys | the kv norm | the query norm |
//! | rotary | a fraction of each head, every layer | half of each head (all without absolute embeddings), cross + first k self layers |
//! | absolute positions | sinusoidal or learned | learned (optional) |
//! | output | final norm, untied linear | optional norm, tied to the embedding, optional bias |
//! | cross-attend dropout | Bernoulli mask on prefix keys | keep a fixed count of prefix positions |

use nn::mlp::Activation;
use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};

/// Which layer norm normalises the latents where they serve as keys and values of the cross
/// layer.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum LatentKeyNorm {
    /// The query norm (the latents are normed once, perceiver-io).
    Query,
    /// The kv norm, like the prefix (the paper's code).
    Kv,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum AbsolutePositions {
    None,
    Learned,
    Sinusoidal,
}

/// The two published forms of cross-attend dropout (Perceiver AR, section 3).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum CrossAttendDropout {
    /// Mask each prefix key with probability `p` before the softmax, without rescaling.
    Bernoulli,
    /// Keep `P - floor(P·p)` prefix positions chosen at random, in order.
    KeepCount,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct PerceiverArConfig {
    pub vocab_size: usize,
    /// The longest input (prefix + latents) the model handles.
    pub max_seq_len: usize,
    /// Latents used in training; any number up to `max_seq_len` works at run time.
    pub max_latents: usize,
    pub channels: usize,
    pub heads: usize,
    pub self_attention_layers: usize,
    pub cross_widening: usize,
    pub self_widening: usize,
    pub activation: Activation,
    pub mlp_bias: bool,
    pub cross_qkv_bias: bool,
    pub cross_out_bias: bool,
    pub self_qkv_bias: bool,
    pub self_out_bias: bool,
    pub latent_key_norm: LatentKeyNorm,
    /// Rotated channels per head (even; 0 for none).
    pub rotary_dims: usize,
    pub rotary_base: f32,
    /// Whether the cross layer uses rotary.
    pub rotary_cross: bool,
    /// How many self-attention layers (from the first) use rotary; `None` for all.
    pub rotary_self_layers: Option<usize>,
    pub absolute_positions: AbsolutePositions,
    pub output_norm: bool,
    /// Logits through the transposed token embedding instead of a separate matrix.
    pub tied_output: bool,
    pub output_bias: bool,
    pub cross_attend_dropout: f32,
    pub cross_attend_dropout_kind: CrossAttendDropout,
    /// Dropout on attention probabilities.
    pub attention_dropout: f32,
    /// Dropout on each residual branch.
    pub residual_dropout: f32,
    pub init_scale: f32,
    pub layer_norm_eps: f32,
}

impl PerceiverArConfig {
    /// The perceiver-io library's `CausalSequenceModel`.
    pub fn perceiver_io(
        vocab_size: usize,
        max_seq_len: usize,
        max_latents: usize,
        channels: usize,
        heads: usize,
        layers: usize,
    ) -> Self {
        PerceiverArConfig {
            vocab_size,
            max_seq_len,
            max_latents,
            channels,
            heads,
            self_attention_layers: layers,
            cross_widening: 4,
            self_widening: 4,
            activation: Activation::Gelu,
            mlp_bias: false,
            cross_qkv_bias: false,
            cross_out_bias: true,
            self_qkv_bias: false,
            self_out_bias: false,
            latent_key_norm: LatentKeyNorm::Query,
            // `heads = 0` is caught by `validate`; it must not divide by zero before that.
            rotary_dims: channels.checked_div(heads).unwrap_or(0) / 2,
            rotary_base: 10000.0,
            rotary_cross: true,
            rotary_self_layers: Some(1),
            absolute_positions: AbsolutePositions::Learned,
            output_norm: false,
            tied_output: true,
            output_bias: true,
            cross_attend_dropout: 0.5,
            cross_attend_dropout_kind: CrossAttendDropout::KeepCount,
            attention_dropout: 0.0,
            residual_dropout: 0.0,
            init_scale: 0.02,
            layer_norm_eps: 1e-5,
        }
    }

    /// The Perceiver AR paper's model (Hawthorne et al., 2022, appendix C).
    pub fn paper(
        vocab_size: usize,
        max_seq_len: usize,
        max_latents: usize,
        channels: usize,
        heads: usize,
        layers: usize,
    ) -> Self {
        PerceiverArConfig {
            activation: Activation::SquaredRelu,
            mlp_bias: true,
            cross_qkv_bias: true,
            cross_out_bias: true,
            self_qkv_bias: true,
            self_out_bias: true,
            latent_key_norm: LatentKeyNorm::Kv,
            rotary_dims: (channels.checked_div(heads).unwrap_or(0) / 2) & !1,
            rotary_self_layers: None,
            absolute_positions: AbsolutePositions::Sinusoidal,
            output_norm: true,
            tied_output: false,
            output_bias: true,
            cross_attend_dropout_kind: CrossAttendDropout::Bernoulli,
            ..Self::perceiver_io(vocab_size, max_seq_len, max_latents, channels, heads, layers)
        }
    }

    pub fn head_dim(&self) -> usize {
        self.channels / self.heads.max(1)
    }

    /// Whether self-attention layer `i` uses rotary.
    pub fn rotary_in_self_layer(&self, i: usize) -> bool {
        self.rotary_dims > 0 && self.rotary_self_layers.is_none_or(|k| i < k)
    }

    /// Checks every constraint, naming the option that breaks one.
    pub fn validate(&self) -> Result<()> {
        let bad = |m: String| Err(Error::Config(m));
        for (name, v) in [
            ("vocab_size", self.vocab_size),
            ("channels", self.channels),
            ("max_seq_len", self.max_seq_len),
            ("heads", self.heads),
        ] {
            if v == 0 {
                return bad(format!("{name} must be at least 1"));
            }
        }
        if !self.channels.is_multiple_of(self.heads) {
            return bad(format!("heads ({}) must divide channels ({})", self.heads, self.channels));
        }
        if self.max_latents == 0 || self.max_latents > self.max_seq_len {
            return bad(format!(
                "max_latents ({}) must be between 1 and max_seq_len ({})",
                self.max_latents, self.max_seq_len
            ));
        }
        if !self.rotary_dims.is_multiple_of(2) || self.rotary_dims > self.head_dim() {
            return bad(format!(
                "rotary_dims ({}) must be even and at most the head dim ({})",
                self.rotary_dims,
                self.head_dim()
            ));
        }
        if self.cross_widening == 0 || self.self_widening == 0 {
            return bad("widening factors must be positive".into());
        }
        for (name, v) in [
            ("init_scale", self.init_scale),
            ("layer_norm_eps", self.layer_norm_eps),
            ("rotary_base", self.rotary_base),
        ] {
            let ok = if name == "init_scale" { v >= 0.0 } else { v > 0.0 };
            if !(ok && v.is_finite()) {
                return bad(format!("{name} must be a finite number above 0, got {v}"));
            }
        }
        for (name, p) in [
            ("cross_attend_dropout", self.cross_attend_dropout),
            ("attention_dropout", self.attention_dropout),
            ("residual_dropout", self.residual_dropout),
        ] {
            if !(0.0..1.0).contains(&p) {
                return bad(format!("{name} must be in [0, 1), got {p}"));
            }
        }
        Ok(())
    }

    /// The number of parameters [`crate::PerceiverAr::new`] creates, computed without
    /// allocating anything (in `u128`, so that no config can overflow it): memory checks use it
    /// before a model is built.
    pub fn parameter_count(&self) -> u128 {
        let (v, n, c) = (self.vocab_size as u128, self.max_seq_len as u128, self.channels as u128);
        let linear = |i: u128, o: u128, bias: bool| i * o + if bias { o } else { 0 };
        let norm = 2 * c;
        let attention = |qkv_bias: bool, out_bias: bool| 3 * linear(c, c, qkv_bias) + linear(c, c, out_bias);
        let mlp = |w: usize| {
            let hidden = w as u128 * c;
            norm + linear(c, hidden, self.mlp_bias) + linear(hidden, c, self.mlp_bias)
        };
        let embeddings =
            v * c + if self.absolute_positions == AbsolutePositions::Learned { n * c } else { 0 };
        let cross = 2 * norm + attention(self.cross_qkv_bias, self.cross_out_bias) + mlp(self.cross_widening);
        let one_self = norm + attention(self.self_qkv_bias, self.self_out_bias) + mlp(self.self_widening);
        let output = match (self.tied_output, self.output_bias) {
            (true, true) => v,
            (true, false) => 0,
            (false, bias) => linear(c, v, bias),
        };
        let out_norm = if self.output_norm { norm } else { 0 };
        embeddings + cross + self.self_attention_layers as u128 * one_self + out_norm + output
    }
}

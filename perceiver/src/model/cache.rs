//! Key/value caches: what lets generation run each new position through the model once.
//!
//! Attention at a position reads the keys and values of the positions before it, and in a
//! causal model those never change when later positions arrive. (Keys are cached as projected
//! and rotated by their positions when read, so a window that slides can re-position them.) So a generator can keep them:
//! the cross layer's for every position of the window (`[B, H, S, D]` for `S` positions seen),
//! each self-attention layer's for every latent so far. A new position then costs one row
//! through every layer plus one attention over the cache, instead of a whole forward pass.
//!
//! [`PerceiverAr::forward_cached`] is that computation. It is the ordinary forward pass (the
//! same methods, with the cache passed in): the new positions' keys and values are appended,
//! and their queries attend to everything the cache holds, causally. Called on an empty cache
//! with a whole window it is a full forward pass that also fills the cache; called with one
//! token it is one cached step. Appendix E.3 of the paper explains why Perceiver AR cannot
//! keep latents forever (a latent buffer as wide as training's, refilled at half when full);
//! that policy lives with generation (`crate::generate::cached`).
//!
//! Buffers are allocated once at their full width; appending writes rows in place
//! ([`Tensor::write_narrow`]), so a step copies only its own keys, never the cache. Each head's
//! keys lie together (head-major), so attention reads them as one contiguous block.

use autograd::Var;
use nn::attention::Attention;
use nn::Ctx;
use tensor::{Device, Tensor};

use super::{Input, PerceiverAr};
use crate::error::{Error, Result};

/// One attention layer's keys and values for the positions seen so far: `[B, H, capacity, D]`
/// and `[B, H, capacity, Dv]`, of which the first `len` positions are filled.
pub struct KvBuffer {
    keys: Tensor,
    values: Tensor,
    len: usize,
}

impl KvBuffer {
    /// Empty buffers for `attention`'s keys and values. Each has storage of its own, so the
    /// first append writes in place.
    pub fn new(capacity: usize, batch: usize, attention: &Attention, device: &Device) -> Result<Self> {
        let zeros = |d: usize| Tensor::zeros(&[batch, attention.heads, capacity, d]).to_device(device);
        Ok(KvBuffer { keys: zeros(attention.head_dim)?, values: zeros(attention.v_head_dim)?, len: 0 })
    }

    /// Positions held.
    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    pub fn capacity(&self) -> usize {
        self.keys.shape()[2]
    }

    /// Forgets every position (the buffers stay allocated).
    pub fn clear(&mut self) {
        self.len = 0;
    }

    /// Appends the keys and values `[B, H, n, D]` of `n` new positions.
    pub fn append(&mut self, k: &Tensor, v: &Tensor) -> Result<()> {
        let n = k.shape()[2];
        if self.len + n > self.capacity() {
            return Err(Error::Input(format!(
                "key/value cache of {} positions cannot take {n} more after {}",
                self.capacity(),
                self.len
            )));
        }
        self.keys.write_narrow(2, self.len, k)?;
        self.values.write_narrow(2, self.len, v)?;
        self.len += n;
        Ok(())
    }

    /// Forgets the `count` oldest positions; the others move to the front (a window that
    /// slides). Costs a copy of the buffer.
    pub fn drop_oldest(&mut self, count: usize) -> Result<()> {
        let count = count.min(self.len);
        if count > 0 {
            let kept = self.len - count;
            // The views share the buffers, so each write first makes a private copy.
            let (keys, values) = (self.keys.narrow(2, count, kept)?, self.values.narrow(2, count, kept)?);
            self.keys.write_narrow(2, 0, &keys)?;
            self.values.write_narrow(2, 0, &values)?;
            self.len = kept;
        }
        Ok(())
    }

    /// The keys held, `[B, H, len, D]` (a view of the buffer).
    pub fn keys(&self) -> Result<Tensor> {
        Ok(self.keys.narrow(2, 0, self.len)?)
    }

    /// The values held, `[B, H, len, D]` (a view of the buffer).
    pub fn values(&self) -> Result<Tensor> {
        Ok(self.values.narrow(2, 0, self.len)?)
    }
}

/// Without a cache, the keys and values just computed; with one, they are appended and all
/// the cache holds is returned (as constants: a cache serves inference, not training).
pub fn through_cache(cache: Option<&mut KvBuffer>, k: Var, v: Var) -> Result<(Var, Var)> {
    match cache {
        None => Ok((k, v)),
        Some(cache) => {
            cache.append(k.value(), v.value())?;
            Ok((Var::constant(cache.keys()?), Var::constant(cache.values()?)))
        }
    }
}

/// Everything a Perceiver AR keeps between generation steps: the cross layer's keys and values
/// for every window position (up to `max_seq_len`), and each self-attention layer's for up to
/// `latent_capacity` latents.
pub struct KvCache {
    pub cross: KvBuffer,
    pub layers: Vec<KvBuffer>,
    latents: usize,
    latent_capacity: usize,
}

impl KvCache {
    /// An empty cache for `batch` sequences, on the model's device.
    pub fn new(model: &PerceiverAr, batch: usize, latent_capacity: usize) -> Result<Self> {
        let c = &model.config;
        let device = model.device();
        let rows = c.max_seq_len as u128 + c.self_attention_layers as u128 * latent_capacity as u128;
        crate::memory::ensure_fits(2 * 4 * batch as u128 * c.channels as u128 * rows, || {
            format!(
                "a key/value cache of {} positions and {latent_capacity} latents, batch {batch}",
                c.max_seq_len
            )
        })?;
        let cross = KvBuffer::new(c.max_seq_len, batch, &model.cross.attention, &device)?;
        let layers = model
            .self_layers
            .iter()
            .map(|l| KvBuffer::new(latent_capacity, batch, &l.attention, &device))
            .collect::<Result<Vec<_>>>()?;
        Ok(KvCache { cross, layers, latents: 0, latent_capacity })
    }

    /// Window positions held (prefix and latents).
    pub fn positions(&self) -> usize {
        self.cross.len()
    }

    /// Latents held.
    pub fn latents(&self) -> usize {
        self.latents
    }

    pub fn latent_capacity(&self) -> usize {
        self.latent_capacity
    }

    /// Forgets the `count` oldest window positions of the cross layer (its window slides).
    pub fn drop_oldest_positions(&mut self, count: usize) -> Result<()> {
        self.cross.drop_oldest(count)
    }

    /// Forgets the `count` oldest latents of every self-attention layer.
    pub fn drop_oldest_latents(&mut self, count: usize) -> Result<()> {
        let count = count.min(self.latents);
        self.layers.iter_mut().try_for_each(|l| l.drop_oldest(count))?;
        self.latents -= count;
        Ok(())
    }

    /// Forgets everything, keeping the buffers.
    pub fn clear(&mut self) {
        self.cross.clear();
        self.layers.iter_mut().for_each(KvBuffer::clear);
        self.latents = 0;
    }
}

impl PerceiverAr {
    /// The forward pass over `input`'s positions as window positions `S..S + N`, after the `S`
    /// whose keys and values `cache` holds; returns the logits of the new latents `[B, L, V]`
    /// and appends the new keys and values to the cache. From an empty cache this equals
    /// [`forward`](Self::forward) on `input`; each later call equals `forward` on the whole
    /// window so far, with the same prefix, restricted to the new latents. A prefix (P > 0) is
    /// only allowed while the cache holds no latents: the prefix comes before every latent.
    pub fn forward_cached(&self, ctx: &Ctx, input: &Input, cache: &mut KvCache) -> Result<Var> {
        self.check_input(input)?;
        let (seen, n, l) = (cache.positions(), input.seq_len, input.latents());
        if ctx.train {
            return Err(Error::Input("a key/value cache serves inference, not training".into()));
        }
        if input.prefix_len > 0 && cache.latents > 0 {
            return Err(Error::Input(format!(
                "a prefix of {} cannot follow the {} latents the cache holds",
                input.prefix_len, cache.latents
            )));
        }
        if seen + n > self.config.max_seq_len {
            return Err(Error::Input(format!(
                "{n} positions after the {seen} cached exceed max_seq_len {}",
                self.config.max_seq_len
            )));
        }
        if cache.latents + l > cache.latent_capacity {
            return Err(Error::Input(format!(
                "{l} latents after the {} cached exceed the cache's {}",
                cache.latents, cache.latent_capacity
            )));
        }
        if cache.cross.keys.shape()[0] != input.batch {
            return Err(Error::Input(format!(
                "a batch of {} given to a cache for {}",
                input.batch,
                cache.cross.keys.shape()[0]
            )));
        }
        let x = self.embed(ctx, input, seen)?;
        let (latents, tables) = self.cross_attend(ctx, &x, input.prefix_len, Some(&mut cache.cross))?;
        let latents = self.self_attend(ctx, latents, tables.as_ref(), Some(&mut cache.layers))?;
        cache.latents += l;
        self.head(ctx, latents)
    }
}

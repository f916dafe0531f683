//! `Embedding`: row `id` of a `[vocab, dim]` table for each token. The backward adds each
//! output gradient row into its token's row (`index_add`), so repeated tokens accumulate.

use autograd::{ParamId, Var};

use crate::ctx::Ctx;
use crate::error::Result;
use crate::params::Builder;

pub struct Embedding {
    pub weight: ParamId,
    pub vocab: usize,
    pub dim: usize,
}

impl Embedding {
    pub fn new(b: &mut Builder, vocab: usize, dim: usize, std: f32) -> Result<Self> {
        Ok(Embedding { weight: b.normal("weight", &[vocab, dim], std, false)?, vocab, dim })
    }

    /// `ids` of shape `shape` → `shape + [dim]`.
    pub fn forward(&self, ctx: &Ctx, ids: &[usize], shape: &[usize]) -> Result<Var> {
        Ok(ctx.param(self.weight).embedding(ids, shape)?)
    }

    /// [`Embedding::forward`] plus `rows` `[N, dim]` (for `shape` `[.., N]`, e.g. the positions'
    /// embeddings), added as the tokens are looked up (one node, one pass).
    pub fn forward_plus(&self, ctx: &Ctx, ids: &[usize], shape: &[usize], rows: &Var) -> Result<Var> {
        Ok(ctx.param(self.weight).embedding_plus(ids, shape, rows)?)
    }

    /// Rows `start..start + len` as `[len, dim]`: the lookup of consecutive ids (positions),
    /// as a view of the table instead of a gathered copy. Its backward pads the gradient
    /// with zeros to the table's rows.
    pub fn rows(&self, ctx: &Ctx, start: usize, len: usize) -> Result<Var> {
        Ok(ctx.param(self.weight).narrow(0, start, len)?)
    }
}

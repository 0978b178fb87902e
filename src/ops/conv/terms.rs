//! What a conv adds to its output besides the product (a per-image channel bias, a residual), what its forward keeps
//! for the backward, and which bias sums its backward makes.

use crate::autograd::{Tape, Var};
use crate::backend::{Backend, ReduceOps};
use crate::desc::Planes;
use crate::error::Result;

/// A per-image channel bias as a conv reads it: columns `start..start + c_out` of `var: [n, width]`. The UNet's
/// ResBlocks read their time projections so, as columns of the one linear layer's output that makes them all; a
/// bias of its own is all of its `var`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ChanBias {
    pub var: Var,
    pub start: usize,
}

impl ChanBias {
    /// All of `var`.
    pub fn of(var: Var) -> Self {
        ChanBias { var, start: 0 }
    }
}

/// Optional terms fused into a conv's output (see [`Epilogue`](crate::desc::Epilogue)).
#[derive(Clone, Copy, Debug, Default)]
pub struct ConvExtra {
    /// Added to every pixel of channel c of image n (the ResBlock's time projection).
    pub chan_bias: Option<ChanBias>,
    /// `[n, c_out, oh, ow]`, added elementwise (a residual connection).
    pub residual: Option<Var>,
    /// Also write the output as the backend's [`ConvOps::Operand`](super::ConvOps::Operand) (in the same launch),
    /// for a conv or linear layer that reads it next ([`Tape::operand`] hands it over); only [`Tape::norm_conv2d`]
    /// writes one.
    pub operand: bool,
}

/// What a conv's forward keeps for the backward ([`ConvOps::Kept`](super::ConvOps::Kept)): what the weight gradient
/// reads (asked for when the weight needs a gradient) and what the input gradient reads (when the input needs one).
#[derive(Clone, Copy, Debug, Default)]
pub struct Keep {
    pub for_dw: bool,
    pub for_dx: bool,
}

impl Keep {
    /// What the tape's op with input `x` and weight `w` should keep.
    pub fn on<B: Backend>(tape: &Tape<B>, x: Var, w: Var) -> Self {
        Keep { for_dw: tape.needs_grad(w), for_dx: tape.needs_grad(x) }
    }
}

/// Which per-channel sums of `gout` a conv's backward makes: over images and pixels, written into `bias` (a bias's
/// gradient, so that on a GPU it lands in its place in the gradient arena), and over each image's pixels, returned
/// as a fresh `[n, c]` buffer when `chan_bias` (a per-image channel bias's gradient: an activation's, not a
/// parameter's).
#[derive(Debug)]
pub struct BiasSums<'a, T> {
    /// `[c]`, overwritten.
    pub bias: Option<&'a mut T>,
    /// Whether to return the `[n, c]` sums.
    pub chan_bias: bool,
}

impl<T> Default for BiasSums<'_, T> {
    /// No sums.
    fn default() -> Self {
        BiasSums { bias: None, chan_bias: false }
    }
}

impl<T> BiasSums<'_, T> {
    /// Whether any sum is asked for.
    pub(crate) fn any(&self) -> bool {
        self.bias.is_some() || self.chan_bias
    }

    /// These sums of `gout: [d.n, d.c, d.plane]` through [`ReduceOps::channel_sums`], one call each; returns the
    /// per-image sums when asked for.
    pub fn reduce<B: ReduceOps<Buf = T>>(self, be: &B, d: Planes, gout: &T) -> Result<Option<T>> {
        if let Some(bias) = self.bias {
            be.channel_sums(d, gout, false, bias)?;
        }
        if !self.chan_bias {
            return Ok(None);
        }
        let mut per_image = be.alloc(d.n * d.c)?;
        be.channel_sums(d, gout, true, &mut per_image)?;
        Ok(Some(per_image))
    }
}

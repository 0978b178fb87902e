//! Gradients' operands: a gradient in the layout the tensor-core GEMMs read, with the channel sums the bias
//! gradients are made of, written by the op that completes the gradient and handed by the tape to its readers.

use super::{ConvExtra, ConvOps};
use crate::autograd::{Tape, Var};
use crate::backend::{Backend, Memory};
use crate::error::Result;
use crate::tensor::Tensor;
use std::sync::Arc;

/// A gradient `dy: [n, c, plane]` as a conv's or linear layer's backward reads it where the backend has operands:
/// its [`ConvOps::Operand`] and its channel sums (what bias gradients are sums of), made once per gradient, by the
/// op that made the gradient or its first reader, and shared by its readers ([`Tape::gout_operand`]).
pub struct GradOperand<B: ConvOps> {
    pub operand: B::Operand,
    /// `None` when they were not asked for.
    pub sums: Option<ChannelSums<B::Buf>>,
    /// The sums' own `GradOperand` (a `[n, c]` gradient is its own per-image sums), when written with them: the
    /// operand of a per-image channel bias's gradient.
    pub of_sums: Option<Arc<GradOperand<B>>>,
}

/// Where a backward writes a channel bias's gradient straight into its columns of a wider value's gradient
/// (`values: [n, stride]`, the block from column `start`) and of that gradient's operand
/// ([`Tape::with_grad_columns`](crate::autograd::Tape)).
pub struct ColumnsOut<'a, B: ConvOps> {
    pub values: &'a mut B::Buf,
    pub operand: &'a mut B::Operand,
    pub start: usize,
    pub stride: usize,
}

/// The two parts of a split gradient, and the operands written with them.
pub type Split<B> = ([<B as Memory>::Buf; 2], [Option<GradOperand<B>>; 2]);

/// A gradient's channel sums as `[rows, c]`, whose columns add up to its sums over images and pixels.
pub struct ChannelSums<T> {
    pub buf: T,
    pub rows: usize,
    /// Whether the rows are the images' (`rows` = n): a per-image channel bias's gradient. Otherwise they are per
    /// block of the kernel that wrote them.
    pub per_image: bool,
}

impl<T> ChannelSums<T> {
    /// The per-image sums `[n, c]` in `buf`.
    pub fn per_image(buf: T, n: usize) -> Self {
        ChannelSums { buf, rows: n, per_image: true }
    }
}

/// A gradient as the conv and linear backwards take it, and the gradients' operands they exchange with the tape:
/// its f32 values and its operand when the tape has one (a backward that converts `values` itself leaves what it
/// made in `operand`, for the tape to hand to the gradient's other readers); and when `want_dx_operand`, the
/// operand of the input gradient the backward writes, left in `dx_operand` when it could write one.
pub struct Gout<'a, B: ConvOps> {
    pub values: &'a B::Buf,
    pub operand: Option<Arc<GradOperand<B>>>,
    pub want_dx_operand: bool,
    pub dx_operand: Option<GradOperand<B>>,
}

impl<'a, B: ConvOps> Gout<'a, B> {
    /// `values` with no operand yet, and none asked for dx.
    pub fn of(values: &'a B::Buf) -> Self {
        Gout { values, operand: None, want_dx_operand: false, dx_operand: None }
    }
}

/// A conv's `gout` with the operand the tape has for it, and after its backward: `gout` passed on to the residual
/// term (the gradient of an output term is the output's) with the operand the backward read as that gradient's,
/// and the operand of the per-image sums (the channel bias's gradient) as the channel bias's, when there is one.
pub(crate) fn with_gout<B: Backend>(
    tape: &Tape<B>,
    gout: Tensor<B>,
    extra: ConvExtra,
    backward: impl FnOnce(&mut Gout<'_, B>) -> Result<Vec<(Var, Tensor<B>)>>,
) -> Result<Vec<(Var, Tensor<B>)>> {
    let mut g = Gout { operand: tape.gout_operand(), ..Gout::of(gout.buf()) };
    let mut out = backward(&mut g)?;
    let operand = g.operand;
    // A channel bias that is all of its value takes the sums' operand as its gradient's (columns of a wider value
    // have theirs written into its gradient's operand by the op that made the sums: Tape::add_grad_columns).
    let whole = extra.chan_bias.filter(|&cb| tape.is_whole(cb, gout.shape()[1]));
    if let (Some(cb), Some(op)) = (whole, operand.as_ref().and_then(|o| o.of_sums.clone())) {
        tape.set_grad_operand(cb.var, op);
    }
    if let Some(r) = extra.residual.filter(|&v| tape.needs_grad(v)) {
        if let Some(op) = operand {
            tape.set_grad_operand(r, op);
        }
        out.push((r, gout));
    }
    Ok(out)
}

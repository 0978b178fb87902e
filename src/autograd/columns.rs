//! Gradients assembled from column blocks. The UNet's ResBlocks read their time projections as columns of one
//! `[n, width]` value (one linear layer makes them all, [`ChanBias`]), so that value's gradient is made of the
//! blocks its readers' backwards deliver: each block's per-image channel sums, copied into its columns
//! ([`Tape::add_grad_columns`]) or, where the backend has operands, written there by the op that made the sums,
//! with their operand, in the launch that made them ([`Tape::with_grad_columns`]). When the tape reaches the
//! value, the assembled gradient is its gradient, and the operand, if every block wrote its columns of it, that
//! gradient's operand: the linear layer's backward then reads it without a conversion.

use super::{Op, Tape, Var};
use crate::backend::Backend;
use crate::desc::Planes;
use crate::error::Result;
use crate::ops::conv::{ChanBias, ChannelSums, ColumnsOut, GradOperand};
use crate::tensor::Tensor;
use std::collections::hash_map::{Entry, HashMap};
use std::sync::Arc;

/// A value's gradient as its column blocks arrive.
pub(super) struct Assembled<B: Backend> {
    /// `[n, width]`; columns no block has written yet are unspecified until [`Tape::take_assembled`] zeroes them.
    values: Tensor<B>,
    /// The gradient's operand, while every block delivered so far wrote its columns of it.
    operand: Option<B::Operand>,
    blocks: Vec<Block>,
}

/// Columns `start..start + width`, the gradient of `reader`'s channel bias.
#[derive(Clone, Copy, Debug)]
struct Block {
    start: usize,
    width: usize,
    reader: usize,
}

impl Block {
    fn overlaps(&self, start: usize, width: usize) -> bool {
        start < self.start + self.width && self.start < start + width
    }
}

impl<B: Backend> Tape<'_, B> {
    /// Whether `cb`, read as `width` columns, is all of its value.
    pub fn is_whole(&self, cb: ChanBias, width: usize) -> bool {
        cb.start == 0 && self.value(cb.var).shape().get(1) == Some(&width)
    }

    /// The channel bias added by the op that made `v`, when it is columns of a wider value: the op making `v`'s
    /// gradient can write the bias's gradient (the per-image sums of `v`'s) into them ([`Tape::with_grad_columns`]).
    pub(crate) fn chan_bias_columns(&self, v: Var) -> Option<ChanBias> {
        let Op::Computed(rule) = &self.nodes[v.0].op else { return None };
        let width = *self.value(v).shape().get(1)?;
        rule.chan_bias().filter(|&cb| !self.is_whole(cb, width) && self.needs_grad(cb.var))
    }

    /// Runs `write` with where to put the gradient of `reader`'s channel bias (`target`: the bias and its width in
    /// columns) straight into its value's assembled gradient and operand: `Some` where the backend has operands,
    /// the block lies on the operand's 8-column groups and no other block holds those columns, else `None` (and
    /// the reader's backward delivers the block: [`Tape::add_grad_columns`]). `write` returns whether it wrote the
    /// block there.
    pub(crate) fn with_grad_columns<R>(
        &self,
        target: Option<(ChanBias, usize, Var)>,
        write: impl FnOnce(Option<ColumnsOut<'_, B>>) -> Result<(R, bool)>,
    ) -> Result<R> {
        let Some((cb, width, reader)) = target else { return write(None).map(|(r, _)| r) };
        let mut columns = self.columns.borrow_mut();
        let a = self.assembly(&mut columns, cb.var)?;
        // The operand's 8-column groups are written whole by one block each.
        let aligned = cb.start.is_multiple_of(8) && width.is_multiple_of(8);
        let stride = a.values.shape()[1];
        let free = aligned && !a.blocks.iter().any(|b| b.overlaps(cb.start, width));
        let out = match (free, a.operand.as_mut()) {
            (true, Some(operand)) => Some(ColumnsOut { values: a.values.buf_mut(), operand, start: cb.start, stride }),
            _ => None,
        };
        let (r, written) = write(out)?;
        if written {
            a.blocks.push(Block { start: cb.start, width, reader: reader.0 });
        }
        Ok(r)
    }

    /// During the backward of the running rule, whose channel bias `cb` is columns of a wider value: adds `part`
    /// (`[n, width]`, the bias's gradient) into those columns of that value's gradient, unless the op that made the
    /// sums wrote them there already (`Tape::with_grad_columns`). A block written this way has no operand, so
    /// the assembled gradient has none.
    pub fn add_grad_columns(&self, cb: ChanBias, part: Tensor<B>) -> Result<()> {
        let (be, reader, width) = (self.backend(), self.current.get(), part.shape()[1]);
        let mut columns = self.columns.borrow_mut();
        let a = self.assembly(&mut columns, cb.var)?;
        if a.blocks.iter().any(|b| (b.start, b.width, b.reader) == (cb.start, width, reader)) {
            return Ok(());
        }
        let (n, stride) = (a.values.shape()[0], a.values.shape()[1]);
        if a.blocks.iter().any(|b| b.overlaps(cb.start, width)) {
            // Columns another reader's block holds: added through a zero matrix of this block alone.
            let mut spread = Tensor::full_on(be, a.values.shape(), 0.0)?;
            be.copy_columns(part.buf(), (n, width), spread.buf_mut(), (cb.start, stride))?;
            be.add_assign(a.values.buf_mut(), spread.buf())?;
        } else {
            be.copy_columns(part.buf(), (n, width), a.values.buf_mut(), (cb.start, stride))?;
        }
        a.operand = None;
        a.blocks.push(Block { start: cb.start, width, reader });
        Ok(())
    }

    /// The assembly of `v`'s gradient in `columns`, begun when it is not there yet: `[n, width]`, with an operand
    /// where the backend has operands and `width` needs no padding in them (a multiple of 8).
    fn assembly<'c>(&self, columns: &'c mut HashMap<usize, Assembled<B>>, v: Var) -> Result<&'c mut Assembled<B>> {
        let e = match columns.entry(v.0) {
            Entry::Occupied(e) => return Ok(e.into_mut()),
            Entry::Vacant(e) => e,
        };
        let shape = self.value(v).shape().to_vec();
        let values = Tensor::alloc(self.backend(), &shape)?;
        let operand = match shape[1].is_multiple_of(8) {
            true => self.backend().operand_for_output(Planes { n: shape[0], c: shape[1], plane: 1 })?,
            false => None,
        };
        Ok(e.insert(Assembled { values, operand, blocks: Vec::new() }))
    }

    /// During [`Tape::backward`], on reaching node `v`: `gout` (its gradient from ordinary readers, if any) with
    /// the blocks its column readers delivered added, the columns no block covered being zero. When only blocks
    /// that wrote their operand make it up, that operand is recorded as the gradient's.
    pub(super) fn take_assembled(&mut self, v: usize, gout: Option<Tensor<B>>) -> Result<Option<Tensor<B>>> {
        let Some(mut a) = self.columns.get_mut().remove(&v) else { return Ok(gout) };
        let be = self.backend().clone();
        let (n, stride) = (a.values.shape()[0], a.values.shape()[1]);
        a.blocks.sort_by_key(|b| b.start);
        let mut gaps = Vec::new();
        let mut covered = 0;
        for b in &a.blocks {
            if b.start > covered {
                gaps.push((covered, b.start - covered));
            }
            covered = covered.max(b.start + b.width);
        }
        if covered < stride {
            gaps.push((covered, stride - covered));
        }
        for &(start, width) in &gaps {
            let zeros = be.full(n * width, 0.0)?;
            be.copy_columns(&zeros, (n, width), a.values.buf_mut(), (start, stride))?;
        }
        if let Some(mut g) = gout {
            be.add_assign(g.buf_mut(), a.values.buf())?;
            self.grad_operands.get_mut().remove(&v);
            return Ok(Some(g));
        }
        if let (Some(operand), true) = (a.operand, gaps.is_empty()) {
            // A [n, width] gradient is its own per-image sums.
            let sums = Some(ChannelSums::per_image(be.view(a.values.buf(), 0, n * stride)?, n));
            self.grad_operands.get_mut().insert(v, Arc::new(GradOperand { operand, sums, of_sums: None }));
        }
        Ok(Some(a.values))
    }
}

//! Embedding lookup added to a vector per row: `y[i, :] = x[i, :] + table[labels[i], :]`, the class label's row
//! added to the time embedding of a class-conditional UNet. The lookup is a gather of table rows; its gradient is
//! the scatter-add `dtable[r, :] = Σ_{i: labels[i] = r} gy[i, :]`, which every backend sums in ascending i, so the
//! CPU and the GPU agree bit for bit (no atomics). The added `x` gets `gy` unchanged.

mod cpu;
mod gpu;
#[cfg(test)]
mod tests;

use crate::autograd::{list_vars, profile, Rule, Tape, Var};
use crate::backend::{Backend, Memory};
use crate::error::Result;
use crate::shape_err;
use crate::tensor::Tensor;
use std::fmt;

/// The sizes of an embedding lookup: `n` rows looked up in a table of `rows` rows of width `dim`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct EmbedDesc {
    pub n: usize,
    pub rows: usize,
    pub dim: usize,
}

/// What a backend offers for embedding lookups. The labels index the table, so each backend checks that they lie
/// below `rows` where it can see them (the CPU always; a GPU where the host knows a bound), and a GPU kernel
/// never reads outside the table (an out-of-range label yields NaN rows).
pub trait EmbedOps: Memory {
    /// `y[i, :] = x[i, :] + table[labels[i], :]` for `x, y: [n, dim]`, `table: [rows, dim]`, `labels: [n]`.
    fn embed_add(
        &self,
        d: EmbedDesc,
        x: &Self::Buf,
        table: &Self::Buf,
        labels: &Self::Idx,
        y: &mut Self::Buf,
    ) -> Result<()>;
    /// `dtable[r, :] = Σ_{i: labels[i] = r} gy[i, :]` (ascending i; 0 for rows no label picks), overwriting
    /// `dtable: [rows, dim]`.
    fn embed_backward(&self, d: EmbedDesc, gy: &Self::Buf, labels: &Self::Idx, dtable: &mut Self::Buf) -> Result<()>;
}

impl<B: Backend> Tape<'_, B> {
    /// `y = x + table[labels]`: row `labels[i]` of `table` (`[rows, dim]`) added to row i of `x` (`[n, dim]`).
    /// The tape keeps `labels` (`n` values, each below `rows`) for the backward pass.
    pub fn embed_add(&mut self, x: Var, table: Var, labels: B::Idx, n: usize) -> Result<Var> {
        let started = profile::start();
        let (xv, tv) = (self.value(x), self.value(table));
        let d = match (xv.shape(), tv.shape()) {
            (&[xn, dim], &[rows, tdim]) if xn == n && tdim == dim && rows > 0 => EmbedDesc { n, rows, dim },
            (xs, ts) => return shape_err!("embed_add: x {xs:?} and table {ts:?} for {n} labels"),
        };
        let mut y = Tensor::alloc(self.backend(), xv.shape())?;
        self.backend().embed_add(d, xv.buf(), tv.buf(), &labels, y.buf_mut())?;
        Ok(self.push(EmbedAdd { x, table, labels, d }, y, started))
    }
}

/// `y = x + table[labels]`: `dx = gy`, `dtable = scatter_add(gy, labels)`.
struct EmbedAdd<B: Memory> {
    x: Var,
    table: Var,
    labels: B::Idx,
    d: EmbedDesc,
}

impl<B: Backend> Rule<B> for EmbedAdd<B> {
    fn name(&self) -> &'static str {
        "embed_add"
    }
    fn inputs(&self) -> Vec<Var> {
        vec![self.x, self.table]
    }
    fn backward(&self, tape: &Tape<B>, gout: Tensor<B>) -> Result<Vec<(Var, Tensor<B>)>> {
        let mut grads = Vec::with_capacity(2);
        if let Some(mut dtable) = tape.grad_for(self.table)? {
            tape.backend().embed_backward(self.d, gout.buf(), &self.labels, dtable.buf_mut())?;
            grads.push((self.table, dtable));
        }
        grads.push((self.x, gout));
        Ok(grads)
    }
}

impl<B: Memory> fmt::Display for EmbedAdd<B> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "embed_add({}, {} rows of {})", list_vars(&[self.x, self.table]), self.d.rows, self.d.dim)
    }
}

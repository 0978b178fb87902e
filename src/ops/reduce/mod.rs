//! Sums and copies: gradient accumulation where a value fans out, the gradients of broadcast biases (sums over
//! pixels and images), and the channel concat of the UNet's skip connections with its inverse.

pub(crate) mod cpu;
pub(crate) mod gpu;
#[cfg(test)]
mod tests;

use crate::autograd::{list_vars, profile, Rule, Tape, Var};
use crate::backend::{Backend, Memory};
use crate::desc::{ConcatDesc, Planes};
use crate::error::Result;
use crate::shape_err;
use crate::tensor::Tensor;
use std::fmt;

/// What a backend offers for sums and copies.
pub trait ReduceOps: Memory {
    /// `acc += g` elementwise (gradient accumulation where a value fans out).
    fn add_assign(&self, acc: &mut Self::Buf, g: &Self::Buf) -> Result<()>;
    /// `out` = the per-channel sums of `t: [n, c, plane]`: `[n, c]` when `per_image`, else `[c]` (a broadcast
    /// bias's gradient, written where the caller keeps it: on a GPU, its place in the gradient arena).
    fn channel_sums(&self, d: Planes, t: &Self::Buf, per_image: bool, out: &mut Self::Buf) -> Result<()>;
    /// `out[cols]` = the column sums of `m: [rows, cols]` (a linear bias's gradient, written in place).
    fn column_sums(&self, m: &Self::Buf, rows: usize, cols: usize, out: &mut Self::Buf) -> Result<()>;
    /// `out = [a, b]` along channels.
    fn concat(&self, d: ConcatDesc, a: &Self::Buf, b: &Self::Buf, out: &mut Self::Buf) -> Result<()>;
    /// The inverse of [`ReduceOps::concat`]: `g` split into its two channel blocks.
    fn split(&self, d: ConcatDesc, g: &Self::Buf) -> Result<(Self::Buf, Self::Buf)>;
    /// `dst[i, start..start + width] = src[i, ..]` for `src: [rows, width]` and `dst: [rows, stride]`.
    fn copy_columns(
        &self,
        src: &Self::Buf,
        rows_width: (usize, usize),
        dst: &mut Self::Buf,
        start_stride: (usize, usize),
    ) -> Result<()>;
}

impl<B: Backend> Tape<'_, B> {
    /// `y = [a, b]` concatenated along channels (`[n, ca, h, w]`, `[n, cb, h, w]` → `[n, ca+cb, h, w]`).
    pub fn concat(&mut self, a: Var, b: Var) -> Result<Var> {
        self.concat_with(a, b, false)
    }

    /// [`Tape::concat`]; with `operand`, `y`'s operand is written in the same pass, for a conv that reads `y`
    /// ([`Tape::operand`]).
    pub fn concat_with(&mut self, a: Var, b: Var, operand: bool) -> Result<Var> {
        let started = profile::start();
        let (n, ca, h, w) = self.value(a).dims4("concat first input")?;
        let (nb, cb, hb, wb) = self.value(b).dims4("concat second input")?;
        if (n, h, w) != (nb, hb, wb) {
            let (sa, sb) = (self.value(a).shape(), self.value(b).shape());
            return shape_err!("concat: {sa:?} and {sb:?} differ outside the channel dim");
        }
        let d = ConcatDesc { n, ca, cb, plane: h * w };
        let mut y = Tensor::alloc(self.backend(), &[n, ca + cb, h, w])?;
        let (be, ab) = (self.backend(), (self.value(a).buf(), self.value(b).buf()));
        let room = if operand { be.operand_for_output(Planes { n, c: ca + cb, plane: h * w })? } else { None };
        let Some(mut op) = room else {
            be.concat(d, ab.0, ab.1, y.buf_mut())?;
            return Ok(self.push(Concat { a, b, d }, y, started));
        };
        be.concat_with_operand(d, ab, y.buf_mut(), &mut op)?;
        let v = self.push(Concat { a, b, d }, y, started);
        self.set_operand(v, op);
        Ok(v)
    }
}

/// `y = [a, b]`: each input's gradient is its channel block of `gout`.
struct Concat {
    a: Var,
    b: Var,
    d: ConcatDesc,
}

impl<B: Backend> Rule<B> for Concat {
    fn name(&self) -> &'static str {
        "concat"
    }
    fn inputs(&self) -> Vec<Var> {
        vec![self.a, self.b]
    }
    fn backward(&self, tape: &Tape<B>, gout: Tensor<B>) -> Result<Vec<(Var, Tensor<B>)>> {
        let be = tape.backend();
        let parts = [self.a, self.b];
        // Each part's gradient written with its operand when a conv's backward reads it.
        let (grads, operands) =
            be.split_with_operands(self.d, gout.buf(), parts.map(|v| tape.wants_grad_operand(v)))?;
        let mut out = Vec::with_capacity(2);
        for ((v, g), op) in parts.into_iter().zip(grads).zip(operands) {
            if let Some(op) = op {
                tape.set_grad_operand(v, std::sync::Arc::new(op));
            }
            out.push((v, Tensor::from_buf(be.clone(), tape.value(v).shape(), g)?));
        }
        Ok(out)
    }
}

impl fmt::Display for Concat {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "concat({})", list_vars(&[self.a, self.b]))
    }
}

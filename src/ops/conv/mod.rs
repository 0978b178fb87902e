//! Convolutions: conv2d with an optional fused epilogue (bias, per-image channel bias, residual) and
//! conv_transpose2d, forward and backward. A conv maps an image `[C, H, W]` to `[C_out, OH, OW]`,
//! `OH = (H + 2p - k)/s + 1`; written as a matrix product, `out = W[C_out, C·k·k] · im2col(x)[C·k·k, OH·OW]`. The
//! transposed conv is the adjoint of that map.
//!
//! On the CPU (`cpu.rs`) the column matrix is built in cache-sized bands, the backward passes are forward convs
//! where they can be, and the 3x3 stride-1 convs run as Winograd F(2x2, 3x3) (`winograd.rs`). On the GPU
//! (`gpu.rs`, `conv.cu`) it is im2col and a tiled GEMM.

pub(crate) mod cpu;
pub(crate) mod gpu;
pub(crate) mod im2col;
pub(crate) mod mma;
mod normed;
mod operand;
#[cfg(test)]
mod operand_tests;
mod terms;
#[cfg(test)]
mod tests;
mod winograd;

use crate::autograd::{list_vars, profile, Rule, Tape, Var};
use crate::backend::{Backend, Memory, ReduceOps};
use crate::desc::{Columns, ConcatDesc, ConvDesc, ConvGeom, Epilogue, GradsInto, LayerGrads, NormDesc, Planes};
use crate::error::Result;
use crate::ops::loss::LossOps;
use crate::ops::norm::NormOps;
use crate::ops::unary::{UnaryKind, UnaryOps};
use crate::shape_err;
use crate::tensor::Tensor;
use std::fmt;
use std::sync::Arc;

pub use normed::{norm_then_conv, Norm, NormConv};
pub(crate) use operand::with_gout;
pub use operand::{ChannelSums, ColumnsOut, Gout, GradOperand, Split};
pub use terms::{BiasSums, ChanBias, ConvExtra, Keep};

/// What a backend offers for convolutions. The `_keep` / `_with` forms are what the tape uses: the forward may keep
/// a value for the backward ([`ConvOps::Kept`]), and the backward also makes the bias gradients ([`BiasSums`]), so
/// that a backend can get them from a pass over `gout` it makes anyway. By default they are the plain forms plus
/// [`ReduceOps::channel_sums`].
pub trait ConvOps: Memory + ReduceOps + NormOps + UnaryOps + LossOps {
    /// What a forward keeps for its backward besides the tensors on the tape (as [`Keep`] asks): under bf16 on the
    /// GPU, the bf16 channels-last copy of the input that the forward made and the weight gradient reads again, and
    /// the weight packed for the input gradient's GEMM, made in the same launch as the forward's.
    type Kept: 'static;
    /// What packing every weight (4-D, and the linear layers' 2-D) of a parameter arena at once needs that depends on the shapes only (made once
    /// per parameter set: see [`crate::params::Params::packed`]).
    type PackPlan: Send + Sync + 'static;
    /// A weight in the layouts the conv kernels read, made by [`ConvOps::pack_weights`] and reused by every
    /// conv until the parameters change.
    type PackedWeight: Send + Sync + 'static;
    /// A tensor in the layout the conv kernels read (under bf16 on the GPU, its bf16 channels-last copy), made
    /// once per tensor and shared by every conv and linear layer that reads it ([`Tape::operand`]), or written by
    /// the conv that produces the tensor; `()` where the convs read f32 tensors as they are.
    type Operand: Send + Sync + 'static;

    /// `x: [d.n, d.c, d.plane]` as an [`ConvOps::Operand`] (one conversion), or `None` (the default) where the convs
    /// read f32 tensors as they are.
    fn operand(&self, x: &Self::Buf, d: Planes) -> Result<Option<Self::Operand>> {
        let _ = (x, d);
        Ok(None)
    }
    /// The host values `x` of a `[d.n, d.c, d.plane]` tensor as an operand made on the host and copied over (no
    /// conversion launch), or `None` (the default) where there are no operands.
    fn upload_operand(&self, x: &[f32], d: Planes) -> Result<Option<Self::Operand>> {
        let _ = (x, d);
        Ok(None)
    }
    /// Room for the operand of a conv's `[d.n, d.c, d.plane]` output, which that conv's forward writes with its
    /// output when given it; `None` (the default) where there are no operands.
    fn operand_for_output(&self, d: Planes) -> Result<Option<Self::Operand>> {
        let _ = d;
        Ok(None)
    }
    /// [`UnaryOps::unary_forward`] of a `[d.n, d.c]` matrix (`d.plane` 1), also writing `y`'s operand into
    /// `operand` (from [`ConvOps::operand_for_output`]); by default the activation, then a conversion.
    fn unary_with_operand(
        &self,
        kind: UnaryKind,
        (x, d): (&Self::Buf, Planes),
        y: &mut Self::Buf,
        operand: &mut Self::Operand,
    ) -> Result<()> {
        self.unary_forward(kind, x, y)?;
        if let Some(op) = self.operand(y, d)? {
            *operand = op;
        }
        Ok(())
    }
    /// [`UnaryOps::unary_backward`] of a `[d.n, d.c]` matrix (`d.plane` 1), also writing `dx`'s [`GradOperand`] for
    /// the linear layer that made `x`; by default without (`None`).
    fn unary_backward_with_operand(
        &self,
        kind: UnaryKind,
        (x, d): (&Self::Buf, Planes),
        gy: &Self::Buf,
        dx: &mut Self::Buf,
    ) -> Result<Option<GradOperand<Self>>> {
        let _ = d;
        self.unary_backward(kind, x, gy, dx).map(|()| None)
    }
    /// [`ReduceOps::concat`] of `a` and `b` into `out: [d.n, d.ca + d.cb, d.plane]`, also writing `out`'s operand
    /// into `operand` (from [`ConvOps::operand_for_output`]); by default the concat, then a conversion.
    fn concat_with_operand(
        &self,
        d: ConcatDesc,
        (a, b): (&Self::Buf, &Self::Buf),
        out: &mut Self::Buf,
        operand: &mut Self::Operand,
    ) -> Result<()> {
        self.concat(d, a, b, out)?;
        if let Some(op) = self.operand(out, Planes { n: d.n, c: d.ca + d.cb, plane: d.plane })? {
            *operand = op;
        }
        Ok(())
    }

    /// [`NormOps::group_norm_backward`], and with `operand` also `dx`'s [`GradOperand`] (its operand and per-image
    /// channel sums, and theirs), written in the same pass from the values `dx` ends up holding; by default
    /// without (`None`). With `sums_into` as well, the sums' f32 and operand values go into those columns of a wider
    /// value's gradient and its operand instead (the gradient of a channel bias that is columns of that value), and
    /// the returned operand has no `of_sums`.
    #[allow(clippy::too_many_arguments)] // the backward's own arguments, plus what it writes besides
    fn group_norm_backward_with(
        &self,
        d: NormDesc,
        inputs: (&Self::Buf, &Self::Buf, &Self::Buf),
        stats: (&Self::Buf, &Self::Buf),
        gy: &Self::Buf,
        dx: Option<(&mut Self::Buf, bool)>,
        daffine: (&mut Self::Buf, &mut Self::Buf),
        (operand, sums_into): (bool, Option<ColumnsOut<'_, Self>>),
    ) -> Result<Option<GradOperand<Self>>> {
        let _ = (operand, sums_into);
        self.group_norm_backward(d, inputs, stats, gy, dx, daffine).map(|()| None)
    }

    /// [`LossOps::mse_backward`] of a prediction `p: [d.n, d.c, d.plane]`, also writing `dp`'s [`GradOperand`] for
    /// the conv that made `p`; by default without (`None`).
    fn mse_backward_with_operand(
        &self,
        (p, t, gloss): (&Self::Buf, &Self::Buf, &Self::Buf),
        dp: &mut Self::Buf,
        d: Planes,
    ) -> Result<Option<GradOperand<Self>>> {
        let _ = d;
        self.mse_backward(p, t, gloss, dp).map(|()| None)
    }

    /// [`ReduceOps::split`] of a gradient `g: [d.n, d.ca + d.cb, d.plane]`, also writing the [`GradOperand`] of each
    /// part that `operands` asks for; by default without (`None`s).
    fn split_with_operands(&self, d: ConcatDesc, g: &Self::Buf, operands: [bool; 2]) -> Result<Split<Self>> {
        let _ = operands;
        let (a, b) = self.split(d, g)?;
        Ok(([a, b], [None, None]))
    }

    /// The plan for packing the 4-D and 2-D tensors among `tensors` (each its offset in an arena's words and its shape);
    /// `None` (the default) where the convs read their weights as they are.
    fn pack_plan(&self, tensors: &[(usize, &[usize])]) -> Result<Option<Self::PackPlan>> {
        let _ = tensors;
        Ok(None)
    }
    /// Every weight of `plan` packed from `arena`: one entry per tensor of the plan, `None` for those that are not
    /// weights. Only called with a plan [`ConvOps::pack_plan`] made.
    fn pack_weights(&self, plan: &Self::PackPlan, arena: &Self::Buf) -> Result<Vec<Option<Self::PackedWeight>>> {
        let _ = (plan, arena);
        Ok(Vec::new())
    }

    /// `out[i] = W·im2col(x[i]) + epilogue`, `x: [n, geom.c, geom.h, geom.w]`, `w: [channels, geom.c, k, k]`.
    fn conv2d_forward(
        &self,
        d: &ConvDesc,
        x: &Self::Buf,
        w: &Self::Buf,
        epi: Epilogue<Self::Buf>,
        out: &mut Self::Buf,
    ) -> Result<()>;
    /// `dx[i] = col2im(Wᵀ·gout[i])`, `dW = Σ_i gout[i]·im2col(x[i])ᵀ`, each only when asked for.
    fn conv2d_backward(
        &self,
        d: &ConvDesc,
        x: &Self::Buf,
        w: &Self::Buf,
        gout: &Self::Buf,
        grads: LayerGrads<Self::Buf>,
    ) -> Result<()>;
    /// The adjoint of the conv `d.geom`, plus `bias`: `x: [n, channels, geom.oh, geom.ow]`,
    /// `out: [n, geom.c, geom.h, geom.w]`.
    fn conv_transpose2d_forward(
        &self,
        d: &ConvDesc,
        x: &Self::Buf,
        w: &Self::Buf,
        bias: Option<&Self::Buf>,
        out: &mut Self::Buf,
    ) -> Result<()>;
    /// Input and weight gradients of [`ConvOps::conv_transpose2d_forward`].
    fn conv_transpose2d_backward(
        &self,
        d: &ConvDesc,
        x: &Self::Buf,
        w: &Self::Buf,
        gout: &Self::Buf,
        grads: LayerGrads<Self::Buf>,
    ) -> Result<()>;

    /// [`ConvOps::conv2d_forward`], also returning what [`ConvOps::conv2d_backward_with`] can reuse, as `keep` asks.
    /// `w.1` is the weight already packed, when it is a parameter and the backend packs.
    fn conv2d_forward_keep(
        &self,
        d: &ConvDesc,
        (x, operand): InputIn<'_, Self>,
        (w, packed): (&Self::Buf, Option<&Self::PackedWeight>),
        epi: Epilogue<Self::Buf>,
        out: &mut Self::Buf,
        keep: Keep,
    ) -> Result<Option<Self::Kept>> {
        let _ = (keep, packed, operand);
        self.conv2d_forward(d, x, w, epi, out).map(|()| None)
    }
    /// [`ConvOps::conv2d_backward`] with what the forward kept, `dx` added to when `grads` says so, and the channel
    /// sums of `gout: [n, channels, oh, ow]` that `sums` asks for: the bias's written into `sums.bias`, the
    /// per-image ones returned. `x` may be absent when the forward kept what the weight gradient reads (`Err` if it
    /// is needed and absent).
    fn conv2d_backward_with(
        &self,
        d: &ConvDesc,
        (x, w, gout): (Option<&Self::Buf>, &Self::Buf, &mut Gout<'_, Self>),
        kept: Option<&Self::Kept>,
        grads: GradsInto<Self::Buf>,
        sums: BiasSums<Self::Buf>,
    ) -> Result<Option<Self::Buf>> {
        let (_, gout) = (kept, gout.values);
        if grads.grads.dw.is_some() || grads.grads.dx.is_some() {
            overwriting(self, grads, |g| self.conv2d_backward(d, need_input(x)?, w, gout, g))?;
        }
        sums.reduce(self, Planes { n: d.n, c: d.channels, plane: d.geom.oh * d.geom.ow }, gout)
    }
    /// `out = conv2d(a, w) + epilogue` with `a` = GroupNorm (then SiLU when `nd.silu`) of `x`, for a GroupNorm
    /// whose only reader is this conv ([`Tape::norm_conv2d`]); `out`'s operand written too when given (from
    /// [`ConvOps::operand_for_output`]). Returns GroupNorm's saved `(μ, 1/σ)`, `a` when the backward reads it from
    /// here, and what the conv keeps. By default the two ops in turn ([`norm_then_conv`]).
    fn norm_conv2d_forward(
        &self,
        norm: (NormDesc, &Self::Buf, (&Self::Buf, &Self::Buf)),
        d: &ConvDesc,
        w: (&Self::Buf, Option<&Self::PackedWeight>),
        epi: Epilogue<Self::Buf>,
        out: (&mut Self::Buf, Option<&mut Self::Operand>),
        keep: Keep,
    ) -> Result<NormConv<Self>> {
        norm_then_conv(self, norm, d, w, epi, out.0, keep)
    }
    /// [`ConvOps::conv_transpose2d_forward`], keeping what [`ConvOps::conv_transpose2d_backward_with`] can reuse;
    /// `w.1` as in [`ConvOps::conv2d_forward_keep`].
    fn conv_transpose2d_forward_keep(
        &self,
        d: &ConvDesc,
        (x, operand): InputIn<'_, Self>,
        (w, packed): (&Self::Buf, Option<&Self::PackedWeight>),
        bias: Option<&Self::Buf>,
        out: &mut Self::Buf,
        keep: Keep,
    ) -> Result<Option<Self::Kept>> {
        let _ = (keep, packed, operand);
        self.conv_transpose2d_forward(d, x, w, bias, out).map(|()| None)
    }
    /// [`ConvOps::conv_transpose2d_backward`] with what the forward kept, `dx` added to when `grads` says so, and
    /// the channel sums of `gout: [n, geom.c, geom.h, geom.w]` that `sums` asks for: the bias's written into
    /// `sums.bias`, the per-image ones returned.
    fn conv_transpose2d_backward_with(
        &self,
        d: &ConvDesc,
        (x, w, gout): (&Self::Buf, &Self::Buf, &mut Gout<'_, Self>),
        kept: Option<&Self::Kept>,
        grads: GradsInto<Self::Buf>,
        sums: BiasSums<Self::Buf>,
    ) -> Result<Option<Self::Buf>> {
        let (_, gout) = (kept, gout.values);
        overwriting(self, grads, |g| self.conv_transpose2d_backward(d, x, w, gout, g))?;
        sums.reduce(self, Planes { n: d.n, c: d.geom.c, plane: d.geom.h * d.geom.w }, gout)
    }
}

/// A weight as the convs' forwards take it: its values, and the same packed when it is a parameter and the
/// backend packs ([`ConvOps::pack_weights`]).
pub type WeightIn<'a, B> = (&'a <B as Memory>::Buf, Option<&'a <B as ConvOps>::PackedWeight>);

/// An input as the convs' and linear layers' forwards take it: its values, and its [`ConvOps::Operand`] when the
/// tape has one ([`Tape::operand`]; the forward makes it otherwise).
pub type InputIn<'a, B> = (&'a <B as Memory>::Buf, Option<&'a Arc<<B as ConvOps>::Operand>>);

/// `backward`, a pass that overwrites its `dx`, run for `grads`: when they ask to add to `dx`, into a temporary
/// then added (`acc + fresh`, as the tape would add it, so the same bits).
pub(crate) fn overwriting<B: Memory + ReduceOps, R>(
    be: &B,
    grads: GradsInto<B::Buf>,
    backward: impl FnOnce(LayerGrads<B::Buf>) -> Result<R>,
) -> Result<R> {
    let GradsInto { grads: LayerGrads { dx, dw }, add_dx } = grads;
    match dx {
        Some(dx) if add_dx => {
            let mut fresh = be.alloc(B::buf_len(dx))?;
            let r = backward(LayerGrads { dx: Some(&mut fresh), dw })?;
            be.add_assign(dx, &fresh)?;
            Ok(r)
        }
        dx => backward(LayerGrads { dx, dw }),
    }
}

/// The input a conv's backward reads, or an error naming it when it was not kept.
fn need_input<T>(x: Option<&T>) -> Result<&T> {
    x.ok_or_else(|| crate::error::Error::Shape("conv2d backward: the input was neither kept nor given".into()))
}

impl<B: Backend> Tape<'_, B> {
    /// `y = conv2d(x, w, stride, pad) + b + extra` with `x: [n, c_in, h, w]`, `w: [c_out, c_in, k, k]`,
    /// `b: [c_out]`; `y: [n, c_out, (h+2p-k)/s+1, (w+2p-k)/s+1]`.
    pub fn conv2d(
        &mut self,
        x: Var,
        w: Var,
        b: Option<Var>,
        stride: usize,
        pad: usize,
        extra: ConvExtra,
    ) -> Result<Var> {
        let started = profile::start();
        let d = self.conv2d_desc(x, w, b, (stride, pad), extra)?;
        let mut y = Tensor::alloc(self.backend(), &[d.n, d.channels, d.geom.oh, d.geom.ow])?;
        let epi = self.epilogue(b, extra);
        let keep = Keep::on(self, x, w);
        let w_in = (self.value(w).buf(), self.packed(w)?);
        let operand = self.operand(x)?;
        let x_in = (self.value(x).buf(), operand.as_ref());
        let kept = self.backend().conv2d_forward_keep(&d, x_in, w_in, epi, y.buf_mut(), keep)?;
        Ok(self.push(Conv2d { x, w, b, extra, d, kept }, y, started))
    }

    /// The conv2d of `x` by `w`, its bias and extra terms checked against each other.
    fn conv2d_desc(
        &self,
        x: Var,
        w: Var,
        b: Option<Var>,
        (stride, pad): (usize, usize),
        extra: ConvExtra,
    ) -> Result<ConvDesc> {
        let (n, ci, h, wd) = self.value(x).dims4("conv2d input")?;
        let (co, wci, kh, kw) = self.value(w).dims4("conv2d weight")?;
        if wci != ci || kh != kw {
            let (ws, xs) = (self.value(w).shape(), self.value(x).shape());
            return shape_err!("conv2d: weight {ws:?} does not fit input {xs:?}");
        }
        let Some(geom) = ConvGeom::new(ci, h, wd, kh, stride, pad) else {
            return shape_err!("conv2d: kernel {kh} stride {stride} pad {pad} does not fit a {h}x{wd} input");
        };
        self.check_shape(b, &[co], "conv2d bias")?;
        if let Some(cb) = extra.chan_bias {
            match *self.value(cb.var).shape() {
                [rows, width] if rows == n && cb.start + co <= width => {}
                ref s => {
                    return shape_err!(
                        "conv2d channel bias: columns {}..{} of [{n}, ..] wanted, got shape {s:?}",
                        cb.start,
                        cb.start + co
                    )
                }
            }
        }
        self.check_shape(extra.residual, &[n, co, geom.oh, geom.ow], "conv2d residual")?;
        Ok(ConvDesc { n, geom, channels: co })
    }

    /// The buffers of a conv's output terms.
    fn epilogue(&self, b: Option<Var>, extra: ConvExtra) -> Epilogue<'_, B::Buf> {
        let buf = |v: Option<Var>| v.map(|v| self.value(v).buf());
        let chan_bias = extra.chan_bias.map(|cb| {
            let v = self.value(cb.var);
            Columns { buf: v.buf(), start: cb.start, stride: v.shape()[1] }
        });
        Epilogue { bias: buf(b), chan_bias, residual: buf(extra.residual) }
    }

    /// `y = conv_transpose2d(x, w, stride, pad) + b` (PyTorch's ConvTranspose2d), `x: [n, c_in, h, w]`,
    /// `w: [c_in, c_out, k, k]`, `y: [n, c_out, (h-1)s - 2p + k, (w-1)s - 2p + k]`.
    pub fn conv_transpose2d(&mut self, x: Var, w: Var, b: Option<Var>, stride: usize, pad: usize) -> Result<Var> {
        let started = profile::start();
        let (n, ci, h, wd) = self.value(x).dims4("conv_transpose2d input")?;
        let (wci, co, kh, kw) = self.value(w).dims4("conv_transpose2d weight")?;
        let out_len = |len: usize| (len as isize - 1) * stride as isize - 2 * pad as isize + kh as isize;
        let (oh, ow) = (out_len(h), out_len(wd));
        if wci != ci || kh != kw || stride == 0 || oh <= 0 || ow <= 0 {
            let (ws, xs) = (self.value(w).shape(), self.value(x).shape());
            return shape_err!(
                "conv_transpose2d: weight {ws:?} (stride {stride}, pad {pad}) does not fit input {xs:?}"
            );
        }
        // The conv whose adjoint this is maps the [co, oh, ow] output back onto the [h, w] input grid.
        let geom = match ConvGeom::new(co, oh as usize, ow as usize, kh, stride, pad) {
            Some(g) if g.oh == h && g.ow == wd => g,
            _ => {
                return shape_err!(
                    "conv_transpose2d: stride {stride} pad {pad} k {kh} is not invertible for a {h}x{wd} input"
                )
            }
        };
        self.check_shape(b, &[co], "conv_transpose2d bias")?;
        let d = ConvDesc { n, geom, channels: ci };
        let mut y = Tensor::alloc(self.backend(), &[n, co, geom.h, geom.w])?;
        let bias = b.map(|b| self.value(b).buf());
        let operand = self.operand(x)?;
        let (xb, wb) = ((self.value(x).buf(), operand.as_ref()), (self.value(w).buf(), self.packed(w)?));
        let kept = self.backend().conv_transpose2d_forward_keep(&d, xb, wb, bias, y.buf_mut(), Keep::on(self, x, w))?;
        Ok(self.push(ConvTranspose2d { x, w, b, d, kept }, y, started))
    }
}

/// The input and weight gradients of a conv or transposed conv through `kernel` (the backend's backward, given
/// `x`, `w`, `gout`, the gradient buffers and the bias sums to make), with the bias's gradient written into its
/// place ([`Tape::grad_for`]) and the channel bias's as `kernel` returned it.
fn input_grads<B: Backend>(
    tape: &Tape<B>,
    (x, w): (Var, Var),
    gout: &mut Gout<'_, B>,
    biases: (Option<Var>, Option<ChanBias>),
    kernel: impl FnOnce((&B::Buf, &B::Buf, &mut Gout<'_, B>), GradsInto<B::Buf>, BiasSums<B::Buf>) -> Result<Option<B::Buf>>,
) -> Result<Vec<(Var, Tensor<B>)>> {
    let mut dx = tape.grad_into(x)?;
    let (xb, wb) = (tape.value(x).buf(), tape.value(w).buf());
    gout.want_dx_operand = dx.is_some() && tape.wants_grad_operand(x);
    let rest = weight_grads(tape, dx.as_mut(), w, biases, |grads, sums| kernel((xb, wb, gout), grads, sums))?;
    if let Some(op) = gout.dx_operand.take() {
        tape.set_grad_operand(x, Arc::new(op));
    }
    Ok(dx.map(|(d, _)| (x, d)).into_iter().chain(rest).collect())
}

/// The gradients of a conv's weight and biases through `kernel` (the backend's backward, given the gradient
/// buffers and the bias sums to make), with the input's written into `dx` when given: the weight's and the bias's
/// in their places ([`Tape::grad_for`]), the channel bias's as `kernel` returned it (into its columns of a wider
/// value's gradient: [`Tape::add_grad_columns`]).
fn weight_grads<B: Backend>(
    tape: &Tape<B>,
    dx: Option<&mut (Tensor<B>, bool)>,
    w: Var,
    (bias, chan_bias): (Option<Var>, Option<ChanBias>),
    kernel: impl FnOnce(GradsInto<B::Buf>, BiasSums<B::Buf>) -> Result<Option<B::Buf>>,
) -> Result<Vec<(Var, Tensor<B>)>> {
    let mut dw = tape.grad_for(w)?;
    let mut db = bias.map(|b| tape.grad_for(b)).transpose()?.flatten();
    let chan_bias = chan_bias.filter(|cb| tape.needs_grad(cb.var));
    let add_dx = dx.as_ref().is_some_and(|d| d.1);
    let grads = LayerGrads { dx: dx.map(|d| d.0.buf_mut()), dw: dw.as_mut().map(Tensor::buf_mut) };
    let grads = GradsInto { grads, add_dx };
    let sums = BiasSums { bias: db.as_mut().map(Tensor::buf_mut), chan_bias: chan_bias.is_some() };
    let per_image = kernel(grads, sums)?;
    let mut out: Vec<_> = dw.map(|d| (w, d)).into_iter().collect();
    out.extend(bias.zip(db));
    if let (Some(cb), Some(sum)) = (chan_bias, per_image) {
        let n = tape.value(cb.var).shape()[0];
        let sum = Tensor::from_buf(tape.backend().clone(), &[n, B::buf_len(&sum) / n.max(1)], sum)?;
        match tape.is_whole(cb, sum.shape()[1]) {
            true => out.push((cb.var, sum)),
            false => tape.add_grad_columns(cb, sum)?,
        }
    }
    Ok(out)
}

/// `y = conv2d(x, w) + b + chan_bias[n, c] + residual`: the backend's conv backward for `x` and `w` and the
/// per-channel sums of `gout` for the biases; `gout` itself for the residual. Keeps what the forward left for the
/// backward (see [`ConvOps::Kept`]).
struct Conv2d<B: Backend> {
    x: Var,
    w: Var,
    b: Option<Var>,
    extra: ConvExtra,
    d: ConvDesc,
    kept: Option<B::Kept>,
}

impl<B: Backend> Conv2d<B> {
    /// The values this op reads.
    fn vars(&self) -> Vec<Var> {
        let cb = self.extra.chan_bias.map(|cb| cb.var);
        [Some(self.x), Some(self.w), self.b, cb, self.extra.residual].into_iter().flatten().collect()
    }
}

impl<B: Backend> Rule<B> for Conv2d<B> {
    fn name(&self) -> &'static str {
        match self.d.geom {
            g if g.k == 1 => "conv2d_1x1",
            g if g.stride == 2 => "conv2d_s2",
            _ => "conv2d",
        }
    }
    fn inputs(&self) -> Vec<Var> {
        self.vars()
    }
    fn backward(&self, tape: &Tape<B>, gout: Tensor<B>) -> Result<Vec<(Var, Tensor<B>)>> {
        let be = tape.backend();
        let biases = (self.b, self.extra.chan_bias);
        with_gout(tape, gout, self.extra, |gout| {
            input_grads(tape, (self.x, self.w), gout, biases, |(x, w, g), grads, sums| {
                be.conv2d_backward_with(&self.d, (Some(x), w, g), self.kept.as_ref(), grads, sums)
            })
        })
    }
    fn reads_grad_operand(&self) -> bool {
        true
    }
    fn chan_bias(&self) -> Option<ChanBias> {
        self.extra.chan_bias
    }
}

impl<B: Backend> fmt::Display for Conv2d<B> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let (g, inputs) = (self.d.geom, list_vars(&self.vars()));
        write!(f, "conv2d({inputs}; k={} s={} p={})", g.k, g.stride, g.pad)
    }
}

/// `y = conv_transpose2d(x, w) + b`: the backend's backward for `x` and `w`, and per-channel sums for `b`.
struct ConvTranspose2d<B: Backend> {
    x: Var,
    w: Var,
    b: Option<Var>,
    d: ConvDesc,
    kept: Option<B::Kept>,
}

impl<B: Backend> ConvTranspose2d<B> {
    /// The values this op reads.
    fn vars(&self) -> Vec<Var> {
        [Some(self.x), Some(self.w), self.b].into_iter().flatten().collect()
    }
}

impl<B: Backend> Rule<B> for ConvTranspose2d<B> {
    fn name(&self) -> &'static str {
        "conv_transpose2d"
    }
    fn inputs(&self) -> Vec<Var> {
        self.vars()
    }
    fn backward(&self, tape: &Tape<B>, gout: Tensor<B>) -> Result<Vec<(Var, Tensor<B>)>> {
        let be = tape.backend();
        with_gout(tape, gout, ConvExtra::default(), |gout| {
            input_grads(tape, (self.x, self.w), gout, (self.b, None), |bufs, grads, sums| {
                be.conv_transpose2d_backward_with(&self.d, bufs, self.kept.as_ref(), grads, sums)
            })
        })
    }
    fn reads_grad_operand(&self) -> bool {
        true
    }
}

impl<B: Backend> fmt::Display for ConvTranspose2d<B> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let (g, inputs) = (self.d.geom, list_vars(&self.vars()));
        write!(f, "conv_transpose2d({inputs}; k={} s={} p={})", g.k, g.stride, g.pad)
    }
}

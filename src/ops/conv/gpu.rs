//! The convolutions' launches. Under [`Precision::Bf16`], every GEMM whose channel counts allow it runs on the
//! tensor cores (`mma.rs`); the rest, and everything under [`Precision::Fp32`], is a materialised column matrix (`im2col`, or `col2im` for the adjoint) and the GEMM
//! of `crate::ops::linear::gpu`, then the bias epilogue. The weight gradient sums over the batch inside the GEMM
//! (a fixed order), not with atomics.

use super::im2col::{add_channel_bias, col2im, im2col, with_columns};
use super::mma::{self, ActOut, Gather, Kept, Nhwc, PackedWeight, Wgrad};
use super::{
    need_input, norm_then_conv, overwriting, BiasSums, ChannelSums, ColumnsOut, ConvOps, Gout, GradOperand, InputIn,
    Keep, NormConv, Split, WeightIn,
};
use crate::backend::{Gpu, Memory, Precision};
use crate::desc::{ConcatDesc, ConvDesc, Epilogue, GradsInto, LayerGrads, NormDesc, Planes};
use crate::error::{Error, Result};
use crate::gpu::launch::need;
use crate::gpu::{Bf16Buf, Executor};
use crate::ops::linear::gpu::{sgemm, Gemm};
use crate::ops::linear::Activated;
use crate::ops::loss::gpu::mse_backward;
use crate::ops::norm::gpu::{backward as norm_backward, group_norm_forward_nhwc, DxOperand};
use crate::ops::norm::NormOps;
use crate::ops::reduce::gpu::{concat_channels, copy_at, split_channels};
use crate::ops::unary::gpu::unary_copy;
use crate::ops::unary::{UnaryKind, UnaryOps};
use std::sync::Arc;

impl<E: Executor> Gpu<E> {
    /// Whether this backend's convolutions run on the tensor cores.
    fn tensor_cores(&self) -> bool {
        self.precision() == Precision::Bf16
    }

    /// A channel bias's gradient: a view of the `[n, c]` per-image sums of the gradient's operand (shared with it).
    fn chan_bias_sums(&self, sums: Option<&ChannelSums<E::Buf>>, d: Planes) -> Result<Option<E::Buf>> {
        sums.map(|s| self.view(&s.buf, 0, d.n * d.c)).transpose()
    }

    /// A backward's input-gradient GEMM into `dx` (added to it when `add`), also writing `dx: [d]`'s operand and
    /// channel sums when `gout` asks for them, left in `gout.dx_operand`.
    fn gather_dx(
        &self,
        gather: &Gather,
        (gb, wp): (&Nhwc<E::Buf>, &Bf16Buf<E::Buf>),
        (dx, add): (&mut E::Buf, bool),
        gout: &mut Gout<'_, Self>,
        d: Planes,
    ) -> Result<()> {
        let e = self.executor();
        let room = if gout.want_dx_operand { self.operand_for_output(d)? } else { None };
        let rows = gather.sums_rows()?;
        let mut written = match room {
            Some(op) => Some((op, e.alloc(rows * d.c)?)),
            None => None,
        };
        let out = written.as_mut().map(|(op, sums)| (op, Some(sums)));
        mma::gather(e, gather, gb, wp, (None, None, None), add, (dx, None), out)?;
        gout.dx_operand = match written {
            Some((operand, buf)) => {
                let sums = ChannelSums { buf, rows, per_image: false };
                Some(GradOperand { operand, sums: Some(sums), of_sums: None })
            }
            None => None,
        };
        Ok(())
    }
}

impl<E: Executor> ConvOps for Gpu<E> {
    type Kept = Kept<E::Buf>;
    type PackPlan = mma::PackPlan<E::Buf>;
    type PackedWeight = mma::PackedWeight<E::Buf>;
    type Operand = Nhwc<E::Buf>;

    /// Under bf16, the bf16 channels-last copy the tensor-core GEMMs gather from.
    fn operand(&self, x: &E::Buf, d: Planes) -> Result<Option<Self::Operand>> {
        if !self.tensor_cores() {
            return Ok(None);
        }
        mma::to_nhwc_bf16(self.executor(), x, d.n, d.c, d.plane).map(Some)
    }
    fn operand_for_output(&self, d: Planes) -> Result<Option<Self::Operand>> {
        if !self.tensor_cores() {
            return Ok(None);
        }
        Ok(Some(Nhwc::new(self.executor().alloc_bf16(d.n * d.plane * mma::padded(d.c))?, d.c)))
    }
    /// Rounded to bf16 as the kernels round (`mma::bf16_bits`) and laid out channels-last, padding zero, on the
    /// host.
    fn upload_operand(&self, x: &[f32], d: Planes) -> Result<Option<Self::Operand>> {
        if !self.tensor_cores() {
            return Ok(None);
        }
        if x.len() != d.n * d.c * d.plane {
            return Err(Error::Shape(format!("upload_operand: {} values for {d:?}", x.len())));
        }
        let cp = mma::padded(d.c);
        let mut nhwc = vec![0u16; d.n * d.plane * cp];
        for (e, &v) in x.iter().enumerate() {
            let (ic, p) = (e / d.plane, e % d.plane);
            let (i, c) = (ic / d.c, ic % d.c);
            nhwc[(i * d.plane + p) * cp + c] = mma::bf16_bits(v);
        }
        Ok(Some(Nhwc::new(self.executor().upload_bf16(&nhwc)?, d.c)))
    }
    /// One `unary_fwd` launch writing both.
    fn unary_with_operand(
        &self,
        kind: UnaryKind,
        (x, d): (&E::Buf, Planes),
        y: &mut E::Buf,
        operand: &mut Self::Operand,
    ) -> Result<()> {
        if d.plane != 1 || operand.c != d.c {
            return Err(Error::Shape(format!("unary_with_operand: {d:?} is not a matrix of the operand's shape")));
        }
        unary_copy(self.executor(), kind, (x, None), y, Some((&mut operand.buf, d.c)))
    }
    /// Under bf16, one `unary_bwd` launch writing both; a `[n, c]` gradient is its own per-image sums.
    fn unary_backward_with_operand(
        &self,
        kind: UnaryKind,
        (x, d): (&E::Buf, Planes),
        gy: &E::Buf,
        dx: &mut E::Buf,
    ) -> Result<Option<GradOperand<Self>>> {
        let room = if d.plane == 1 { self.operand_for_output(d)? } else { None };
        let Some(mut operand) = room else {
            return self.unary_backward(kind, x, gy, dx).map(|()| None);
        };
        unary_copy(self.executor(), kind, (x, Some(gy)), dx, Some((&mut operand.buf, d.c)))?;
        Ok(Some(GradOperand {
            operand,
            sums: Some(ChannelSums::per_image(self.view(dx, 0, d.n * d.c)?, d.n)),
            of_sums: None,
        }))
    }
    /// Under bf16, one `mse_bwd` launch writing both, a block per channel and image.
    fn mse_backward_with_operand(
        &self,
        inputs: (&E::Buf, &E::Buf, &E::Buf),
        dp: &mut E::Buf,
        d: Planes,
    ) -> Result<Option<GradOperand<Self>>> {
        let Some(operand) = self.operand_for_output(d)? else {
            return mse_backward(self.executor(), inputs, dp, None).map(|()| None);
        };
        let sums = self.executor().alloc(d.n * d.c)?;
        mse_backward(self.executor(), inputs, dp, Some((d, &operand.buf, &sums)))?;
        Ok(Some(GradOperand { operand, sums: Some(ChannelSums::per_image(sums, d.n)), of_sums: None }))
    }
    /// Under bf16, one `split_channels` launch writing both parts and the operands asked for, each with its
    /// per-image sums.
    fn split_with_operands(&self, d: ConcatDesc, g: &E::Buf, operands: [bool; 2]) -> Result<Split<Self>> {
        let e = self.executor();
        let parts = [d.ca, d.cb].map(|c| Planes { n: d.n, c, plane: d.plane });
        let mut written = [None, None];
        for (slot, (want, part)) in written.iter_mut().zip(operands.into_iter().zip(parts)) {
            let room = if want { self.operand_for_output(part)? } else { None };
            if let Some(op) = room {
                *slot = Some((op, e.alloc(part.n * part.c)?));
            }
        }
        let (mut a, mut b) = (e.alloc(d.n * d.ca * d.plane)?, e.alloc(d.n * d.cb * d.plane)?);
        let [wa, wb] = &mut written;
        split_channels(e, d, g, (&mut a, &mut b), (part(wa), part(wb)))?;
        let grad_operand = |w: Option<(Nhwc<E::Buf>, E::Buf)>| {
            w.map(|(operand, sums)| GradOperand {
                operand,
                sums: Some(ChannelSums::per_image(sums, d.n)),
                of_sums: None,
            })
        };
        let [wa, wb] = written;
        Ok(([a, b], [grad_operand(wa), grad_operand(wb)]))
    }
    /// Under bf16 with channels a multiple of 8 (every GroupNorm of the UNet), one `group_norm_bwd` launch writing
    /// dx, its operand, its per-image sums and theirs.
    fn group_norm_backward_with(
        &self,
        d: NormDesc,
        inputs: (&E::Buf, &E::Buf, &E::Buf),
        stats: (&E::Buf, &E::Buf),
        gy: &E::Buf,
        dx: Option<(&mut E::Buf, bool)>,
        daffine: (&mut E::Buf, &mut E::Buf),
        (operand, sums_into): (bool, Option<ColumnsOut<'_, Self>>),
    ) -> Result<Option<GradOperand<Self>>> {
        if !(operand && self.tensor_cores() && dx.is_some() && d.c.is_multiple_of(8)) {
            return self.group_norm_backward(d, inputs, stats, gy, dx, daffine).map(|()| None);
        }
        let (e, nc) = (self.executor(), d.n * d.c);
        let (dxb, sums) = (e.alloc_bf16(nc * d.plane)?, e.alloc(nc)?);
        // A [n, c] gradient is its own per-image sums.
        let per_image = |buf| Some(ChannelSums::per_image(buf, d.n));
        let of_sums = match sums_into {
            Some(out) => {
                let b = &out.operand.buf;
                let sums_b = e.view_bf16(b, out.start, b.len() - out.start)?;
                let sums_f = e.view(out.values, out.start, Self::buf_len(out.values) - out.start)?;
                let o =
                    DxOperand { dxb: &dxb, sums: &sums, sums_b: &sums_b, sums_f: Some(&sums_f), stride: out.stride };
                norm_backward(self, d, (inputs, stats, gy), dx, daffine, Some(o))?;
                None
            }
            None => {
                let sums_b = e.alloc_bf16(nc)?;
                let o = DxOperand { dxb: &dxb, sums: &sums, sums_b: &sums_b, sums_f: None, stride: d.c };
                norm_backward(self, d, (inputs, stats, gy), dx, daffine, Some(o))?;
                let sums = per_image(self.view(&sums, 0, nc)?);
                Some(Arc::new(GradOperand { operand: Nhwc::new(sums_b, d.c), sums, of_sums: None }))
            }
        };
        Ok(Some(GradOperand { operand: Nhwc::new(dxb, d.c), sums: per_image(sums), of_sums }))
    }
    /// One `concat_channels` launch writing both.
    fn concat_with_operand(
        &self,
        d: ConcatDesc,
        (a, b): (&E::Buf, &E::Buf),
        out: &mut E::Buf,
        operand: &mut Self::Operand,
    ) -> Result<()> {
        if operand.c != d.ca + d.cb {
            return Err(Error::Shape(format!("concat_with_operand: operand of {} channels for {d:?}", operand.c)));
        }
        concat_channels(self.executor(), d, (a, b), out, Some(&mut operand.buf))
    }

    /// Under bf16, the plan of `mma::pack_weights`; in f32 the GEMMs read the weights as they are.
    fn pack_plan(&self, tensors: &[(usize, &[usize])]) -> Result<Option<Self::PackPlan>> {
        if !self.tensor_cores() {
            return Ok(None);
        }
        mma::pack_plan(self.executor(), tensors)
    }
    fn pack_weights(&self, plan: &Self::PackPlan, arena: &E::Buf) -> Result<Vec<Option<Self::PackedWeight>>> {
        mma::pack_weights(self.executor(), plan, arena)
    }

    fn conv2d_forward(
        &self,
        d: &ConvDesc,
        x: &E::Buf,
        w: &E::Buf,
        epi: Epilogue<E::Buf>,
        out: &mut E::Buf,
    ) -> Result<()> {
        self.conv2d_forward_keep(d, (x, None), (w, None), epi, out, Keep::default()).map(drop)
    }
    fn conv2d_backward(
        &self,
        d: &ConvDesc,
        x: &E::Buf,
        w: &E::Buf,
        gout: &E::Buf,
        grads: LayerGrads<E::Buf>,
    ) -> Result<()> {
        self.conv2d_backward_with(d, (Some(x), w, &mut Gout::of(gout)), None, grads.into(), BiasSums::default())
            .map(drop)
    }
    fn conv_transpose2d_forward(
        &self,
        d: &ConvDesc,
        x: &E::Buf,
        w: &E::Buf,
        bias: Option<&E::Buf>,
        out: &mut E::Buf,
    ) -> Result<()> {
        self.conv_transpose2d_forward_keep(d, (x, None), (w, None), bias, out, Keep::default()).map(drop)
    }
    fn conv_transpose2d_backward(
        &self,
        d: &ConvDesc,
        x: &E::Buf,
        w: &E::Buf,
        gout: &E::Buf,
        grads: LayerGrads<E::Buf>,
    ) -> Result<()> {
        self.conv_transpose2d_backward_with(d, (x, w, &mut Gout::of(gout)), None, grads.into(), BiasSums::default())
            .map(drop)
    }

    /// `out[i] = W·im2col(x[i]) + bias + chan_bias[i] + residual[i]`: under bf16 the GEMM's epilogue adds every
    /// term; in f32 the residual is copied into `out` first and the GEMM accumulates onto it, as on the CPU.
    fn conv2d_forward_keep(
        &self,
        d: &ConvDesc,
        (x, operand): InputIn<'_, Self>,
        (w, packed): (&E::Buf, Option<&Self::PackedWeight>),
        epi: Epilogue<E::Buf>,
        out: &mut E::Buf,
        keep: Keep,
    ) -> Result<Option<Self::Kept>> {
        let (e, g, n, co) = (self.executor(), &d.geom, d.n, d.channels);
        let (kk, plane) = (g.col_rows(), g.col_cols());
        if self.tensor_cores() {
            let xb = given_or(operand, || mma::to_nhwc_bf16(e, x, n, g.c, g.h * g.w))?;
            return conv2d_mma(e, d, xb, (w, packed), epi, (out, None, None), keep);
        }
        if let Some(r) = epi.residual {
            need("conv2d residual", r, n * co * plane)?;
            copy_at(e, r, out, 0)?;
        }
        let gemm = Gemm {
            stride_b: kk * plane,
            stride_c: co * plane,
            batches: n,
            accumulate: epi.residual.is_some(),
            ..Gemm::plain(co, plane, kk, false, false)
        };
        with_columns(e, g, n, x, |col| sgemm(e, &gemm, w, col, out))?;
        add_channel_bias(e, out, (epi.bias, epi.chan_bias), n, co, plane)?;
        Ok(None)
    }

    /// Under bf16, with channel counts that are multiples of 8, GroupNorm writes the conv's channels-last operand
    /// itself, and the conv keeps it for the weight gradient; otherwise [`norm_then_conv`].
    fn norm_conv2d_forward(
        &self,
        (nd, x, affine): (NormDesc, &E::Buf, (&E::Buf, &E::Buf)),
        d: &ConvDesc,
        w: (&E::Buf, Option<&Self::PackedWeight>),
        epi: Epilogue<E::Buf>,
        (out, out_operand): (&mut E::Buf, Option<&mut Self::Operand>),
        keep: Keep,
    ) -> Result<NormConv<Self>> {
        if !self.tensor_cores() || !nd.c.is_multiple_of(8) {
            let done = norm_then_conv(self, (nd, x, affine), d, w, epi, out, keep)?;
            if let Some(op) = out_operand {
                *op = mma::to_nhwc_bf16(self.executor(), out, d.n, d.channels, d.geom.oh * d.geom.ow)?;
            }
            return Ok(done);
        }
        let (ab, stats) = group_norm_forward_nhwc(self.executor(), nd, x, affine)?;
        let kept = conv2d_mma(self.executor(), d, Arc::new(ab), w, epi, (out, out_operand, None), keep)?;
        Ok(NormConv { stats, activation: None, kept })
    }

    /// `dx[i] = col2im(Wᵀ·gout[i])` and `dW = Σ_i gout[i]·im2col(x[i])ᵀ` (summed over images inside the GEMM, in
    /// order). Under bf16 the bias sums come with gout's conversion, the weight gradient reads the forward's copy
    /// of x when it was kept, and the input gradient's GEMM adds to dx itself when asked to.
    fn conv2d_backward_with(
        &self,
        d: &ConvDesc,
        (x, w, gout): (Option<&E::Buf>, &E::Buf, &mut Gout<'_, Self>),
        kept: Option<&Self::Kept>,
        GradsInto { grads, add_dx }: GradsInto<E::Buf>,
        sums: BiasSums<E::Buf>,
    ) -> Result<Option<E::Buf>> {
        let (e, g, n, co) = (self.executor(), &d.geom, d.n, d.channels);
        let (kk, plane) = (g.col_rows(), g.col_cols());
        let planes = Planes { n, c: co, plane };
        if self.tensor_cores() {
            let go = gout_operand(e, gout, planes, &sums)?;
            let (gb, gsums) = (&go.operand, go.sums.as_ref());
            let mut bias = pending(sums.bias, gsums, co);
            if let Some(dw) = grads.dw {
                let mut fresh = None;
                let xb = kept_or(kept.and_then(|k| k.input.as_deref()), &mut fresh, || {
                    mma::to_nhwc_bf16(e, need_input(x)?, n, g.c, g.h * g.w)
                })?;
                mma::wgrad(e, &Wgrad::of(g, n, co), (gb, xb), dw, bias.take(), self.tickets()?)?;
            }
            bias.map_or(Ok(()), |b| b.sum(e))?;
            if let Some(dx) = grads.dx {
                let mut fresh = None;
                let wp = kept_or(kept.and_then(|k| k.weight.as_ref()), &mut fresh, || {
                    Ok(mma::pack_weight(e, w, (g.c, co, g.k * g.k), true, false)?.0)
                })?;
                let dx_planes = Planes { n, c: g.c, plane: g.h * g.w };
                self.gather_dx(&Gather::of(g, n, co, true), (gb, wp), (dx, add_dx), gout, dx_planes)?;
            }
            return self.chan_bias_sums(gsums.filter(|_| sums.chan_bias), planes);
        }
        let gout = gout.values;
        overwriting(self, GradsInto { grads, add_dx }, |grads| {
            if let Some(dw) = grads.dw {
                let gemm = Gemm {
                    stride_a: co * plane,
                    stride_b: kk * plane,
                    nsum: n,
                    ..Gemm::plain(co, kk, plane, false, true)
                };
                with_columns(e, g, n, need_input(x)?, |col| sgemm(e, &gemm, gout, col, dw))?;
            }
            if let Some(dx) = grads.dx {
                let gemm = Gemm {
                    stride_b: co * plane,
                    stride_c: kk * plane,
                    batches: n,
                    ..Gemm::plain(kk, plane, co, true, false)
                };
                if g.is_pointwise() {
                    sgemm(e, &gemm, w, gout, dx)?;
                } else {
                    let mut col = e.alloc(n * kk * plane)?;
                    sgemm(e, &gemm, w, gout, &mut col)?;
                    col2im(e, g, n, &col, dx)?;
                }
            }
            Ok(())
        })?;
        sums.reduce(self, planes, gout)
    }

    /// The adjoint of the conv with geometry `d.geom`: `out[i] = col2im(Wᵀ·x[i]) + bias`.
    fn conv_transpose2d_forward_keep(
        &self,
        d: &ConvDesc,
        (x, operand): InputIn<'_, Self>,
        (w, packed): (&E::Buf, Option<&Self::PackedWeight>),
        bias: Option<&E::Buf>,
        out: &mut E::Buf,
        keep: Keep,
    ) -> Result<Option<Self::Kept>> {
        let (e, g, n, ci) = (self.executor(), &d.geom, d.n, d.channels);
        let (kk, plane) = (g.col_rows(), g.col_cols());
        if self.tensor_cores() {
            let xb = given_or(operand, || mma::to_nhwc_bf16(e, x, n, ci, plane))?;
            let (wp, wp_adj) = operands(e, (w, packed), (g.c, ci, g.k * g.k), true, keep.for_dx)?;
            mma::gather(e, &Gather::of(g, n, ci, true), &xb, &wp, (bias, None, None), false, (out, None), None)?;
            return Ok(Kept::of(keep, xb, wp_adj));
        }
        let mut col = e.alloc(n * kk * plane)?;
        let gemm =
            Gemm { stride_b: ci * plane, stride_c: kk * plane, batches: n, ..Gemm::plain(kk, plane, ci, true, false) };
        sgemm(e, &gemm, w, x, &mut col)?;
        col2im(e, g, n, &col, out)?;
        add_channel_bias(e, out, (bias, None), n, g.c, g.h * g.w)?;
        Ok(None)
    }

    /// With `col[i] = im2col(gout[i])`: `dx[i] = W·col[i]` and `dW = Σ_i x[i]·col[i]ᵀ`.
    fn conv_transpose2d_backward_with(
        &self,
        d: &ConvDesc,
        (x, w, gout): (&E::Buf, &E::Buf, &mut Gout<'_, Self>),
        kept: Option<&Self::Kept>,
        GradsInto { grads, add_dx }: GradsInto<E::Buf>,
        sums: BiasSums<E::Buf>,
    ) -> Result<Option<E::Buf>> {
        let (e, g, n, ci) = (self.executor(), &d.geom, d.n, d.channels);
        let (kk, plane) = (g.col_rows(), g.col_cols());
        let planes = Planes { n, c: g.c, plane: g.h * g.w };
        if self.tensor_cores() {
            let go = gout_operand(e, gout, planes, &sums)?;
            let (gb, gsums) = (&go.operand, go.sums.as_ref());
            let mut bias = pending(sums.bias, gsums, g.c);
            if let Some(dw) = grads.dw {
                let mut fresh = None;
                let xb = kept_or(kept.and_then(|k| k.input.as_deref()), &mut fresh, || {
                    mma::to_nhwc_bf16(e, x, n, ci, plane)
                })?;
                mma::wgrad(e, &Wgrad::of(g, n, ci), (xb, gb), dw, bias.take(), self.tickets()?)?;
            }
            bias.map_or(Ok(()), |b| b.sum(e))?;
            if let Some(dx) = grads.dx {
                let mut fresh = None;
                let wp = kept_or(kept.and_then(|k| k.weight.as_ref()), &mut fresh, || {
                    Ok(mma::pack_weight(e, w, (ci, g.c, g.k * g.k), false, false)?.0)
                })?;
                let dx_planes = Planes { n, c: ci, plane };
                self.gather_dx(&Gather::of(g, n, ci, false), (gb, wp), (dx, add_dx), gout, dx_planes)?;
            }
            return self.chan_bias_sums(gsums.filter(|_| sums.chan_bias), planes);
        }
        let gout = gout.values;
        overwriting(self, GradsInto { grads, add_dx }, |grads| {
            let (dx, dw) = (grads.dx, grads.dw);
            if dw.is_some() || dx.is_some() {
                let mut col = e.alloc(n * kk * plane)?;
                im2col(e, g, n, gout, &mut col)?;
                if let Some(dw) = dw {
                    let gemm = Gemm {
                        stride_a: ci * plane,
                        stride_b: kk * plane,
                        nsum: n,
                        ..Gemm::plain(ci, kk, plane, false, true)
                    };
                    sgemm(e, &gemm, x, &col, dw)?;
                }
                if let Some(dx) = dx {
                    let gemm = Gemm {
                        stride_b: kk * plane,
                        stride_c: ci * plane,
                        batches: n,
                        ..Gemm::plain(ci, plane, kk, false, false)
                    };
                    sgemm(e, &gemm, w, &col, dx)?;
                }
            }
            Ok(())
        })?;
        sums.reduce(self, planes, gout)
    }
}

/// `gout`'s operand, with the channel sums `sums` asks for (per image for a channel bias): the one the tape gave
/// when it has them, else converted now (one launch) and left in `gout` for the tape to hand to the gradient's
/// other readers.
fn gout_operand<E: Executor>(
    e: &E,
    gout: &mut Gout<'_, Gpu<E>>,
    planes: Planes,
    sums: &BiasSums<E::Buf>,
) -> Result<Arc<GradOperand<Gpu<E>>>> {
    let enough = |o: &&Arc<GradOperand<Gpu<E>>>| match &o.sums {
        Some(s) => s.per_image || !sums.chan_bias,
        None => !sums.any(),
    };
    if let Some(op) = gout.operand.as_ref().filter(enough) {
        return Ok(op.clone());
    }
    let (operand, per_image) = mma::to_nhwc_bf16_summed(e, gout.values, planes, sums.any())?;
    let sums = per_image.map(|buf| ChannelSums::per_image(buf, planes.n));
    let op = Arc::new(GradOperand { operand, sums, of_sums: None });
    gout.operand = Some(op.clone());
    Ok(op)
}

/// A tensor-core conv forward's outputs: its f32 result, and when given its operand and an activation of it (then
/// the operand holds the activation's).
type ForwardOut<'a, B> = (&'a mut B, Option<&'a mut Nhwc<B>>, ActOut<'a, B>);

/// The tensor-core conv forward of the channels-last `xb`: the weight packed (also for the input gradient's GEMM
/// when `keep` asks), the GEMM with every epilogue term, and what `keep` asks kept.
fn conv2d_mma<E: Executor>(
    e: &E,
    d: &ConvDesc,
    xb: Arc<Nhwc<E::Buf>>,
    (w, packed): (&E::Buf, Option<&PackedWeight<E::Buf>>),
    epi: Epilogue<E::Buf>,
    (out, out_operand, act): ForwardOut<'_, E::Buf>,
    keep: Keep,
) -> Result<Option<Kept<E::Buf>>> {
    let (g, n, co) = (&d.geom, d.n, d.channels);
    let (wp, wp_adj) = operands(e, (w, packed), (co, g.c, g.k * g.k), false, keep.for_dx)?;
    let terms = (epi.bias, epi.chan_bias, epi.residual);
    let gather = Gather::of(g, n, co, false);
    mma::gather(e, &gather, &xb, &wp, terms, false, (out, act), out_operand.map(|o| (o, None)))?;
    Ok(Kept::of(keep, xb, wp_adj))
}

/// [`ConvOps::conv2d_forward_keep`] under bf16 with the activation `f(out)` of its result written into `act.1`
/// and, when given, the operand `act.2` holding it, all by the GEMM's epilogue: a linear layer and the activation
/// after it in one launch.
pub(crate) fn conv2d_act<E: Executor>(
    gpu: &Gpu<E>,
    d: &ConvDesc,
    ((x, operand), w): (InputIn<'_, Gpu<E>>, WeightIn<'_, Gpu<E>>),
    epi: Epilogue<E::Buf>,
    (out, (kind, act, act_operand)): (&mut E::Buf, Activated<'_, Gpu<E>>),
    keep: Keep,
) -> Result<Option<Kept<E::Buf>>> {
    let (e, g) = (gpu.executor(), &d.geom);
    let xb = given_or(operand, || mma::to_nhwc_bf16(e, x, d.n, g.c, g.h * g.w))?;
    conv2d_mma(e, d, xb, w, epi, (out, act_operand, Some((kind, act))), keep)
}

/// The forward GEMM's weight operand and, when `adjoint`, the input gradient's: views of the parameters' packed
/// weights when given (a transposed conv, `swap`, reads them the other way round), else packed here
/// ([`mma::pack_weight`], same arguments).
fn operands<E: Executor>(
    e: &E,
    (w, packed): (&E::Buf, Option<&PackedWeight<E::Buf>>),
    shape: (usize, usize, usize),
    swap: bool,
    adjoint: bool,
) -> Result<mma::Packed<E::Buf>> {
    let Some(p) = packed else { return mma::pack_weight(e, w, shape, swap, adjoint) };
    let view = |b: &Bf16Buf<E::Buf>| e.view_bf16(b, 0, b.len());
    let [fwd, adj] = if swap { [&p.operands[1], &p.operands[0]] } else { [&p.operands[0], &p.operands[1]] };
    let (o, c, kk) = shape;
    if fwd.len() != o * kk * mma::padded(c) {
        return Err(crate::error::Error::Shape(format!(
            "packed weight of {} values for a [{o}, {c}, {kk}] conv",
            fwd.len()
        )));
    }
    Ok((view(fwd)?, if adjoint { Some(view(adj)?) } else { None }))
}

/// The operand the tape gave, shared, else `make()`'s.
fn given_or<T>(given: Option<&Arc<T>>, make: impl FnOnce() -> Result<T>) -> Result<Arc<T>> {
    given.cloned().map_or_else(|| make().map(Arc::new), Ok)
}

/// An operand and its sums as [`split_channels`] writes them.
fn part<B>(written: &mut Option<(Nhwc<B>, B)>) -> Option<(&mut Bf16Buf<B>, &mut B)> {
    written.as_mut().map(|(o, s)| (&mut o.buf, s))
}

/// The bias gradient `bias` asks for, as the sum of the rows of the `c` channels' `sums`, still to be done.
fn pending<'a, B>(
    bias: Option<&'a mut B>,
    sums: Option<&'a ChannelSums<B>>,
    c: usize,
) -> Option<mma::PendingBias<'a, B>> {
    let sums = sums?;
    Some(mma::PendingBias { rows: &sums.buf, n: sums.rows, len: c, out: bias? })
}

/// `kept` when the forward kept it, else `make()`'s result, held in `fresh`.
fn kept_or<'a, T>(kept: Option<&'a T>, fresh: &'a mut Option<T>, make: impl FnOnce() -> Result<T>) -> Result<&'a T> {
    match kept {
        Some(v) => Ok(v),
        None => Ok(fresh.insert(make()?)),
    }
}

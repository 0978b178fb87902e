//! The GPU's f32 GEMM (`gemm.cu`: 64x64 tiles, optionally batched and summed over a batch in a fixed order, a
//! batch sum split over several blocks whose partials are added in a fixed order) and the linear layers on it;
//! under bf16 the linear layers run as 1x1 convs on the tensor cores.

use super::{Activated, LinearOps};
use crate::backend::{ConvOps, Gpu, Memory, Precision, ReduceOps};
use crate::desc::{ConvDesc, ConvGeom, Epilogue, GradsInto, LayerGrads, LinearDesc};
use crate::error::{Error, Result};
use crate::gpu::launch::{elementwise, i32_arg, int, need, run, SPLIT_TARGET_BLOCKS};
use crate::gpu::{Arg, Cost, Executor, Kernel, LaunchCfg};
use crate::ops::conv::gpu::conv2d_act;
use crate::ops::conv::im2col::add_channel_bias;
use crate::ops::conv::{overwriting, BiasSums, Gout, InputIn, Keep, WeightIn};
use crate::ops::unary::UnaryOps;

impl<E: Executor> LinearOps for Gpu<E> {
    fn linear_forward(
        &self,
        d: LinearDesc,
        x: &E::Buf,
        w: &E::Buf,
        bias: Option<&E::Buf>,
        y: &mut E::Buf,
    ) -> Result<()> {
        self.linear_forward_keep(d, ((x, None), (w, None), bias), y, Keep::default()).map(drop)
    }
    fn linear_backward(
        &self,
        d: LinearDesc,
        x: &E::Buf,
        w: &E::Buf,
        gy: &E::Buf,
        grads: LayerGrads<E::Buf>,
    ) -> Result<()> {
        self.linear_backward_with(d, (x, w, &mut Gout::of(gy)), None, (grads.into(), None))
    }
    fn linear_forward_keep(
        &self,
        d: LinearDesc,
        (x, w, bias): (InputIn<'_, Self>, WeightIn<'_, Self>, Option<&E::Buf>),
        y: &mut E::Buf,
        keep: Keep,
    ) -> Result<Option<Self::Kept>> {
        if self.precision() == Precision::Bf16 {
            return self.conv2d_forward_keep(&as_conv(d), x, w, Epilogue { bias, ..Epilogue::none() }, y, keep);
        }
        let (x, w) = (x.0, w.0);
        let e = self.executor();
        sgemm(e, &Gemm::plain(d.batch, d.fout, d.fin, false, true), x, w, y)?;
        add_channel_bias(e, y, (bias, None), d.batch, d.fout, 1)?;
        Ok(None)
    }
    fn linear_forward_act(
        &self,
        d: LinearDesc,
        (x, w, bias): (InputIn<'_, Self>, WeightIn<'_, Self>, Option<&E::Buf>),
        (y, (kind, a, operand)): (&mut E::Buf, Activated<'_, Self>),
        keep: Keep,
    ) -> Result<Option<Self::Kept>> {
        // Under bf16 the GEMM's epilogue applies the activation (and writes its operand): one launch.
        if self.precision() == Precision::Bf16 {
            let epi = Epilogue { bias, ..Epilogue::none() };
            return conv2d_act(self, &as_conv(d), (x, w), epi, (y, (kind, a, operand)), keep);
        }
        let kept = self.linear_forward_keep(d, (x, w, bias), y, keep)?;
        self.unary_forward(kind, y, a)?;
        Ok(kept)
    }
    fn linear_backward_with(
        &self,
        d: LinearDesc,
        (x, w, gy): (&E::Buf, &E::Buf, &mut Gout<'_, Self>),
        kept: Option<&Self::Kept>,
        (grads, db): (GradsInto<E::Buf>, Option<&mut E::Buf>),
    ) -> Result<()> {
        if self.precision() == Precision::Bf16 {
            // The bias sums come out of the conv backward's conversion of dy and its weight-gradient reduction, as
            // a conv's do: no launch of their own.
            let sums = BiasSums { bias: db, chan_bias: false };
            return self.conv2d_backward_with(&as_conv(d), (Some(x), w, gy), kept, grads, sums).map(drop);
        }
        let gy = gy.values;
        if let Some(db) = db {
            self.column_sums(gy, d.batch, d.fout, db)?;
        }
        let e = self.executor();
        overwriting(self, grads, |grads| {
            if let Some(dx) = grads.dx {
                sgemm(e, &Gemm::plain(d.batch, d.fin, d.fout, false, false), gy, w, dx)?;
            }
            if let Some(dw) = grads.dw {
                sgemm(e, &Gemm::plain(d.fout, d.fin, d.batch, true, false), gy, x, dw)?;
            }
            Ok(())
        })
    }
}

/// A linear layer as the 1x1 conv on 1x1 images that it is (`x: [batch, fin, 1, 1]`, `W: [fout, fin, 1, 1]`), so
/// that under bf16 it runs on the convolutions' tensor-core GEMMs.
fn as_conv(d: LinearDesc) -> ConvDesc {
    let geom = ConvGeom::new(d.fin, 1, 1, 1, 1, 0).expect("a 1x1 kernel fits a 1x1 image");
    ConvDesc { n: d.batch, geom, channels: d.fout }
}

/// One (batched) matrix product for [`sgemm`]: `C_z (+)= Σ_{s<nsum} op(A_{z·nsum+s})·op(B_{z·nsum+s})`
/// for `z < batches`, with `op(A)` `m×k` (stored `k×m` when `trans_a`) and `op(B)` `k×n` (stored `n×k` when
/// `trans_b`). Batch item `i` of A starts `i·stride_a` words in (0 repeats one matrix); likewise B and C.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Gemm {
    /// Rows of `op(A)` and C.
    pub m: usize,
    /// Columns of `op(B)` and C.
    pub n: usize,
    /// The summed dimension.
    pub k: usize,
    /// A is stored `k×m`.
    pub trans_a: bool,
    /// B is stored `n×k`.
    pub trans_b: bool,
    /// Words between consecutive A matrices (0: one A for all).
    pub stride_a: usize,
    /// Words between consecutive B matrices (0: one B for all).
    pub stride_b: usize,
    /// Words between consecutive C matrices (non-zero when `batches > 1`).
    pub stride_c: usize,
    /// Independent products, each to its own C (grid z).
    pub batches: usize,
    /// Products summed into each C, in order.
    pub nsum: usize,
    /// Add to C instead of overwriting it.
    pub accumulate: bool,
}

impl Gemm {
    /// A single `C = op(A)·op(B)`.
    pub(crate) fn plain(m: usize, n: usize, k: usize, trans_a: bool, trans_b: bool) -> Self {
        Gemm {
            m,
            n,
            k,
            trans_a,
            trans_b,
            stride_a: 0,
            stride_b: 0,
            stride_c: 0,
            batches: 1,
            nsum: 1,
            accumulate: false,
        }
    }
}

/// The fewest 16-deep stages per split, so that each block's work outweighs writing and re-reading its partial C.
const MIN_SPLIT_STAGES: usize = 16;

/// How many runs [`sgemm`] cuts the summed stages of each C tile into: 1 unless the product sums over a batch
/// (`nsum > 1`, the conv weight gradients), whose few C tiles would otherwise leave most of the GPU idle while
/// each block walks the whole batch. A function of the shapes only.
pub(crate) fn split_count(g: &Gemm) -> usize {
    if g.nsum <= 1 {
        return 1;
    }
    let tiles = g.m.div_ceil(64) * g.n.div_ceil(64) * g.batches;
    let stages = g.nsum * g.k.div_ceil(16);
    SPLIT_TARGET_BLOCKS.div_ceil(tiles).min(stages / MIN_SPLIT_STAGES).max(1)
}

/// `C (+)= op(A)·op(B)`, batched and/or summed over a batch, as described by [`Gemm`] (kernel `sgemm`, 64×64
/// tiles). Summing over a batch in-kernel replaces atomics: the order is fixed. A batch sum is split over
/// [`split_count`] blocks per C tile, whose partial sums a second kernel adds in order.
pub(crate) fn sgemm<E: Executor>(e: &E, g: &Gemm, a: &E::Buf, b: &E::Buf, c: &mut E::Buf) -> Result<()> {
    sgemm_split(e, g, split_count(g), a, b, c)
}

/// [`sgemm`] with the summed stages of each C tile cut into `splits` contiguous runs (1: one block sums them all).
/// Each run writes its partial C to a workspace of `batches·splits·m·n` words; `sgemm_sum_splits` adds them in run
/// order into C.
pub(crate) fn sgemm_split<E: Executor>(
    e: &E,
    g: &Gemm,
    splits: usize,
    a: &E::Buf,
    b: &E::Buf,
    c: &mut E::Buf,
) -> Result<()> {
    let items = g.batches * g.nsum;
    if g.m == 0 || g.n == 0 || items == 0 {
        return Ok(());
    }
    if g.batches > 1 && g.stride_c == 0 {
        return Err(Error::Arg("sgemm: batches writing one C would race; sum them with nsum".into()));
    }
    if splits == 0 {
        return Err(Error::Arg("sgemm: splits must be at least 1".into()));
    }
    need("sgemm A", a, (items - 1) * g.stride_a + g.m * g.k)?;
    need("sgemm B", b, (items - 1) * g.stride_b + g.k * g.n)?;
    need("sgemm C", c, (g.batches - 1) * g.stride_c + g.m * g.n)?;
    let cfg = LaunchCfg {
        grid: [g.n.div_ceil(64) as u32, g.m.div_ceil(64) as u32, int(g.batches * splits)? as u32],
        block: [256, 1, 1],
        shared_bytes: 0,
    };
    let s = |v: usize| Arg::I64(v as i64);
    let args = |c, stride_c, accumulate: bool| -> Result<Vec<Arg<E::Buf>>> {
        Ok(vec![
            Arg::Buf(a),
            Arg::Buf(b),
            c,
            i32_arg(g.m)?,
            i32_arg(g.n)?,
            i32_arg(g.k)?,
            Arg::I32(g.trans_a as i32),
            Arg::I32(g.trans_b as i32),
            s(g.stride_a),
            s(g.stride_b),
            s(stride_c),
            i32_arg(g.nsum)?,
            i32_arg(splits)?,
            Arg::I32(accumulate as i32),
        ])
    };
    // Every A and B read once and every C written once (and read when accumulating).
    let mn = g.m * g.n;
    let flops = 2 * mn * g.k * items;
    let operands = items * (g.m * g.k + g.k * g.n);
    if splits == 1 {
        let c_words = g.batches * mn * (1 + g.accumulate as usize);
        let cost = Cost::simt(flops, 4 * (operands + c_words));
        return run(e, Kernel::Sgemm, cfg, cost, &args(Arg::Buf(c), g.stride_c, g.accumulate)?);
    }
    let parts = e.alloc(g.batches * splits * mn)?;
    let cost = Cost::simt(flops, 4 * (operands + g.batches * splits * mn));
    run(e, Kernel::Sgemm, cfg, cost, &args(Arg::Buf(&parts), mn, false)?)?;
    let sum = [
        Arg::Buf(&parts),
        Arg::Buf(c),
        s(mn),
        i32_arg(g.batches)?,
        i32_arg(splits)?,
        s(g.stride_c),
        Arg::I32(g.accumulate as i32),
    ];
    let c_words = g.batches * mn * (1 + g.accumulate as usize);
    let cost = Cost::pass(g.batches * splits * mn + c_words, g.batches * mn, splits);
    run(e, Kernel::SgemmSumSplits, elementwise(g.batches * mn), cost, &sum)
}

//! The embedding lookup's launches: one elementwise kernel each way (`embed.cu`).

use super::{EmbedDesc, EmbedOps};
use crate::backend::Gpu;
use crate::error::{Error, Result};
use crate::gpu::launch::{elementwise, i32_arg, need, run};
use crate::gpu::{Arg, Cost, Executor, IntBuf, Kernel};

/// `Err` unless `labels` holds `d.n` values that, as far as the host knows, all pick a row of the table.
fn check_labels<B: crate::gpu::DeviceBuf>(d: EmbedDesc, labels: &IntBuf<B>) -> Result<()> {
    if labels.len() < d.n {
        return Err(Error::Shape(format!("embedding: {} labels for {} rows", labels.len(), d.n)));
    }
    match labels.bound() {
        Some(b) if b > d.rows as u64 => {
            Err(Error::Arg(format!("embedding: labels up to {} outside a table of {} rows", b - 1, d.rows)))
        }
        _ => Ok(()),
    }
}

impl<E: Executor> EmbedOps for Gpu<E> {
    fn embed_add(
        &self,
        d: EmbedDesc,
        x: &E::Buf,
        table: &E::Buf,
        labels: &IntBuf<E::Buf>,
        y: &mut E::Buf,
    ) -> Result<()> {
        check_labels(d, labels)?;
        let len = d.n * d.dim;
        need("embed_add x", x, len)?;
        need("embed_add y", y, len)?;
        need("embed_add table", table, d.rows * d.dim)?;
        let args = [
            Arg::Buf(x),
            Arg::Buf(table),
            Arg::Ints(labels),
            Arg::Buf(y),
            Arg::I64(d.n as i64),
            i32_arg(d.rows)?,
            i32_arg(d.dim)?,
        ];
        run(self.executor(), Kernel::EmbedAdd, elementwise(len), Cost::pass(2 * len + d.n, len, 1), &args)
    }
    fn embed_backward(&self, d: EmbedDesc, gy: &E::Buf, labels: &IntBuf<E::Buf>, dtable: &mut E::Buf) -> Result<()> {
        check_labels(d, labels)?;
        let len = d.rows * d.dim;
        need("embed_bwd gy", gy, d.n * d.dim)?;
        need("embed_bwd dtable", dtable, len)?;
        let args = [
            Arg::Buf(gy),
            Arg::Ints(labels),
            Arg::Buf(dtable),
            Arg::I64(d.n as i64),
            i32_arg(d.rows)?,
            i32_arg(d.dim)?,
        ];
        // Every table element scans the n labels and sums the rows that pick it.
        run(self.executor(), Kernel::EmbedBwd, elementwise(len), Cost::pass(d.n * d.dim + d.n, len, d.n), &args)
    }
}

//! The embedding lookup on the CPU: a row gather added to x, and the scatter-add of its gradient.

use super::{EmbedDesc, EmbedOps};
use crate::backend::Cpu;
use crate::error::{Error, Result};

/// `Err` unless the buffers have the sizes `d` gives them and every label picks a row of the table.
fn check(d: EmbedDesc, rows_buf: usize, table: usize, labels: &[u32]) -> Result<()> {
    if rows_buf != d.n * d.dim || table != d.rows * d.dim || labels.len() < d.n {
        return Err(Error::Shape(format!(
            "embedding: {rows_buf} words of rows, {table} of table and {} labels for {d:?}",
            labels.len()
        )));
    }
    match labels[..d.n].iter().find(|&&l| l as usize >= d.rows) {
        Some(bad) => Err(Error::Arg(format!("embedding: label {bad} outside a table of {} rows", d.rows))),
        None => Ok(()),
    }
}

impl EmbedOps for Cpu {
    fn embed_add(
        &self,
        d: EmbedDesc,
        x: &Vec<f32>,
        table: &Vec<f32>,
        labels: &Vec<u32>,
        y: &mut Vec<f32>,
    ) -> Result<()> {
        check(d, x.len(), table.len(), labels)?;
        check(d, y.len(), table.len(), labels)?;
        for (i, &l) in labels[..d.n].iter().enumerate() {
            let row = &table[l as usize * d.dim..][..d.dim];
            for ((o, &a), &b) in y[i * d.dim..][..d.dim].iter_mut().zip(&x[i * d.dim..][..d.dim]).zip(row) {
                *o = a + b;
            }
        }
        Ok(())
    }
    fn embed_backward(&self, d: EmbedDesc, gy: &Vec<f32>, labels: &Vec<u32>, dtable: &mut Vec<f32>) -> Result<()> {
        check(d, gy.len(), dtable.len(), labels)?;
        dtable.fill(0.0);
        // Ascending i into each row, as the GPU kernel sums (each of its threads owns one table element).
        for (i, &l) in labels[..d.n].iter().enumerate() {
            for (o, &g) in dtable[l as usize * d.dim..][..d.dim].iter_mut().zip(&gy[i * d.dim..][..d.dim]) {
                *o += g;
            }
        }
        Ok(())
    }
}

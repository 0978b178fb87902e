//! The CPU backend's memory: host `Vec`s. Its kernels are each family's `cpu.rs`.

use super::{Memory, Precision};
use crate::error::Result;

/// The CPU: multi-threaded kernels over host memory.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Cpu;

impl Memory for Cpu {
    type Buf = Vec<f32>;
    type Idx = Vec<u32>;

    fn describe(&self) -> String {
        match rayon::current_num_threads() {
            1 => "CPU (1 thread)".to_string(),
            n => format!("CPU ({n} threads)"),
        }
    }
    /// The CPU has an f32 path only.
    fn precision(&self) -> Precision {
        Precision::Fp32
    }
    fn at_precision(&self, precision: Precision) -> Result<Self> {
        match precision {
            Precision::Fp32 => Ok(Cpu),
            Precision::Bf16 => {
                Err(crate::error::Error::Arg("the CPU has no bf16 path (its convolutions are f32)".into()))
            }
        }
    }
    fn buf_len(buf: &Vec<f32>) -> usize {
        buf.len()
    }
    fn alloc(&self, len: usize) -> Result<Vec<f32>> {
        Ok(vec![0.0; len])
    }
    fn full(&self, len: usize, v: f32) -> Result<Vec<f32>> {
        Ok(vec![v; len])
    }
    fn upload(&self, data: Vec<f32>) -> Result<Vec<f32>> {
        Ok(data)
    }
    fn download(&self, buf: &Vec<f32>) -> Result<Vec<f32>> {
        Ok(buf.clone())
    }
    fn download_owned(&self, buf: Vec<f32>) -> Result<Vec<f32>> {
        Ok(buf)
    }
    fn copy(&self, buf: &Vec<f32>) -> Result<Vec<f32>> {
        Ok(buf.clone())
    }
    fn copy_into(&self, src: &Vec<f32>, dst: &mut Vec<f32>, at: usize) -> Result<()> {
        let Some(dst) = dst.get_mut(at..at + src.len()) else {
            return Err(crate::error::Error::Shape(format!(
                "copy of {} words past the end of {}",
                src.len(),
                dst.len()
            )));
        };
        dst.copy_from_slice(src);
        Ok(())
    }
    fn upload_indices(&self, data: &[u32]) -> Result<Vec<u32>> {
        Ok(data.to_vec())
    }
    fn share_indices(&self, idx: &Vec<u32>) -> Result<Vec<u32>> {
        Ok(idx.clone())
    }
    fn download_indices(&self, idx: &Vec<u32>) -> Result<Vec<u32>> {
        Ok(idx.clone())
    }
    /// None: the CPU launches nothing to record.
    type Graph = std::convert::Infallible;
    fn replay(&self, graph: &Self::Graph) -> Result<()> {
        match *graph {}
    }
}

//! The one interface every op, optimiser and sampler step runs through.
//!
//! A backend is [`Memory`] (its buffer types, allocation and copies to and from the host) plus one trait per op
//! family, each declared and implemented in that family's folder, beside its kernels:
//!
//! | trait | family |
//! |---|---|
//! | [`ConvOps`] | `src/ops/conv/`: conv2d and conv_transpose2d |
//! | [`EmbedOps`] | `src/ops/embed/`: embedding lookup added to a vector |
//! | [`NormOps`] | `src/ops/norm/`: group norm (+ fused SiLU) |
//! | [`UnaryOps`] | `src/ops/unary/`: elementwise activations, by [`UnaryKind`](crate::ops::unary::UnaryKind) |
//! | [`LinearOps`] | `src/ops/linear/`: linear layers (and the GEMMs under the convs) |
//! | [`ReduceOps`] | `src/ops/reduce/`: gradient sums, bias gradients, concat |
//! | [`PoolOps`] | `src/ops/pool/`: 2x2 max pooling |
//! | [`LossOps`] | `src/ops/loss/`: MSE and softmax cross-entropy |
//! | [`OptimOps`] | `src/optim/`: AdamW, EMA, gradient clipping |
//! | [`DiffusionOps`] | `src/diffusion/`: q_sample, the training batch's draw, the time sinusoid, the sampler steps |
//!
//! [`Backend`] is all of them together; model code is written once against `Tape<B: Backend>`. The two backends:
//! [`Cpu`] (`Vec<f32>` buffers, the kernels in each family's `cpu.rs`) and [`Gpu<E>`] (buffers on an
//! [`Executor`](crate::gpu::Executor), launches in each family's `gpu.rs`), where `Gpu<Emulator>` and
//! `Gpu<Cuda>` share every line of launch code.
//!
//! Dimensions travel as the descriptors of [`crate::desc`]. Outputs are `&mut` buffers: a signature says which
//! buffers an entry point writes.

mod cpu;
mod gpu;

pub use cpu::Cpu;
pub use gpu::{Gpu, TICKETS};

pub use crate::diffusion::DiffusionOps;
pub use crate::ops::conv::ConvOps;
pub use crate::ops::embed::EmbedOps;
pub use crate::ops::linear::LinearOps;
pub use crate::ops::loss::LossOps;
pub use crate::ops::norm::NormOps;
pub use crate::ops::pool::PoolOps;
pub use crate::ops::reduce::ReduceOps;
pub use crate::ops::unary::UnaryOps;
pub use crate::optim::OptimOps;

use crate::error::Result;
use std::fmt;

/// The arithmetic of the convolutions and linear layers. Everything else (normalisation statistics, the loss, the
/// optimiser, the sampler updates, master weights and checkpoints) is f32 under either, as under
/// `torch.autocast(dtype=torch.bfloat16)`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Precision {
    /// f32 operands, f32 accumulation.
    Fp32,
    /// Operands rounded to bfloat16 (8 significant bits, round to nearest even), products accumulated in f32, on
    /// the GPU's tensor cores.
    Bf16,
}

impl Precision {
    /// "fp32" or "bf16", as `--precision` spells it.
    pub fn name(self) -> &'static str {
        match self {
            Precision::Fp32 => "fp32",
            Precision::Bf16 => "bf16",
        }
    }
}

/// Where tensors live: buffer types and the copies between them and the host. A value of this type is a cheap
/// handle (a unit struct for the CPU, a shared pointer to the device for the GPU) that every tensor carries.
pub trait Memory: Clone + fmt::Debug + Send + Sync + 'static {
    /// A buffer of f32 words.
    type Buf: fmt::Debug + Send + Sync;
    /// A buffer of class or position indices (`u32` words), e.g. labels or max-pool argmaxes.
    type Idx: fmt::Debug + Send + Sync;

    /// What runs the kernels, e.g. "CPU (2 threads)" or "CUDA device 0: NVIDIA H200 (...)".
    fn describe(&self) -> String;
    /// The arithmetic of the convolutions and linear layers.
    fn precision(&self) -> Precision;
    /// The same device with its convolutions and linear layers in `precision`; `Err` where it has no such path.
    fn at_precision(&self, precision: Precision) -> Result<Self>;
    /// Length of `buf` in words.
    fn buf_len(buf: &Self::Buf) -> usize;
    /// A buffer of `len` words for a kernel to overwrite completely (zeros on the CPU; unspecified on a device).
    fn alloc(&self, len: usize) -> Result<Self::Buf>;
    /// A buffer of `len` words equal to `v`.
    fn full(&self, len: usize, v: f32) -> Result<Self::Buf>;
    /// A buffer holding `data` (moved, on the CPU).
    fn upload(&self, data: Vec<f32>) -> Result<Self::Buf>;
    /// A host copy of `buf`, after all work queued before has finished.
    fn download(&self, buf: &Self::Buf) -> Result<Vec<f32>>;
    /// `buf` on the host, consuming it (a move on the CPU).
    fn download_owned(&self, buf: Self::Buf) -> Result<Vec<f32>> {
        self.download(&buf)
    }
    /// A copy of `buf` on the same backend.
    fn copy(&self, buf: &Self::Buf) -> Result<Self::Buf>;
    /// `dst[at..at + src.len()] = src`.
    fn copy_into(&self, src: &Self::Buf, dst: &mut Self::Buf, at: usize) -> Result<()>;
    /// Whether a copy to the host waits for the work queued before it (a GPU), so that callers read results in
    /// batches; on the CPU every op has finished when it returns, and reading costs nothing.
    fn reads_wait(&self) -> bool {
        false
    }
    /// Whether tensors can be views of one arena ([`Memory::view`]): on a GPU, so that the optimiser updates every
    /// parameter in one launch; not on the CPU, whose tensors are separate `Vec`s.
    fn has_views(&self) -> bool {
        false
    }
    /// `len` words of `arena` from word `offset`, aliasing it (see [`Executor::view`](crate::gpu::Executor::view));
    /// only where [`Memory::has_views`].
    fn view(&self, arena: &Self::Buf, offset: usize, len: usize) -> Result<Self::Buf> {
        let _ = (arena, offset, len);
        Err(crate::error::Error::Device(format!("{} has no views of buffers", self.describe())))
    }
    /// Whether `a` and `b` are the same words of one allocation (always false where there are no views).
    fn same_words(&self, a: &Self::Buf, b: &Self::Buf) -> bool {
        let _ = (a, b);
        false
    }
    /// An index buffer holding `data`. Kernels index memory with these values, so the caller (who made them)
    /// checks their range before they are uploaded.
    fn upload_indices(&self, data: &[u32]) -> Result<Self::Idx>;
    /// The indices of `idx` again, with nothing copied from the host: a view of it where there are views
    /// ([`Memory::has_views`]), else a copy.
    fn share_indices(&self, idx: &Self::Idx) -> Result<Self::Idx>;
    /// A host copy of an index buffer.
    fn download_indices(&self, idx: &Self::Idx) -> Result<Vec<u32>>;
    /// Waits until all work queued so far has finished, so that a timer read after it covers that work. The CPU
    /// runs every op to completion before it returns, so by default there is nothing to wait for.
    fn synchronize(&self) -> Result<()> {
        Ok(())
    }
    /// A recorded launch sequence that [`Memory::replay`] runs again without the host (a CUDA graph).
    type Graph;
    /// Whether [`Memory::capture`] records graphs here (not on the CPU, which launches nothing).
    fn has_graphs(&self) -> bool {
        false
    }
    /// Runs `work` with this backend recording its launches instead of running them ([`crate::gpu::graph`]), and
    /// returns the recording, not yet run.
    fn capture(&self, work: &mut dyn FnMut() -> Result<()>) -> Result<Self::Graph> {
        let _ = work;
        Err(crate::error::Error::Device(format!("{} records no graphs", self.describe())))
    }
    /// Runs a recording of [`Memory::capture`] once more.
    fn replay(&self, graph: &Self::Graph) -> Result<()>;
}

/// Every op family: what the tape, the optimiser and the samplers need of a device.
pub trait Backend:
    Memory + ConvOps + EmbedOps + NormOps + UnaryOps + LinearOps + ReduceOps + PoolOps + LossOps + OptimOps + DiffusionOps
{
}

impl<T> Backend for T where
    T: Memory
        + ConvOps
        + EmbedOps
        + NormOps
        + UnaryOps
        + LinearOps
        + ReduceOps
        + PoolOps
        + LossOps
        + OptimOps
        + DiffusionOps
{
}

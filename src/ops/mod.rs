//! The ops the UNet and the MNIST classifier are made of, one folder per family. Each folder holds everything
//! about its ops:
//!
//! - `mod.rs`: the `Tape` methods (shape checks, then the forward kernel) with, right below each, the autograd rule
//!   whose `backward` turns `dL/d(output)` into the inputs' gradients; and the family's backend trait, the entry
//!   points its kernels offer every device.
//! - `cpu.rs`: the CPU kernels and the trait's implementation for [`Cpu`](crate::backend::Cpu).
//! - `gpu.rs`: the launchers and the trait's implementation for [`Gpu`](crate::backend::Gpu), over any
//!   [`Executor`](crate::gpu::Executor) (the emulator or CUDA).
//! - `<family>.cu`: the CUDA kernels (build.rs compiles them to PTX, and as host C++ for the emulator).
//! - `tests.rs`: the GPU kernels against the CPU ones, on the emulator (and on CUDA with `--ignored`).
//!
//! | family | ops |
//! |---|---|
//! | [`conv`] | conv2d (with a fused bias / per-image channel bias / residual epilogue), conv_transpose2d |
//! | [`embed`] | embedding lookup added to a vector (class labels into the time embedding) |
//! | [`norm`] | group norm, optionally fused with SiLU |
//! | [`unary`] | elementwise activations (SiLU, ReLU), one [`unary::UnaryKind`] each |
//! | [`linear`] | linear layers; the GEMMs under them and under the convs |
//! | [`reduce`] | gradient accumulation, bias gradients, channel concat |
//! | [`pool`] | 2x2 max pooling, flatten |
//! | [`loss`] | mean-squared error, softmax cross-entropy |
//!
//! Two more families live with the code that uses them: the optimiser's kernels (AdamW, EMA, clipping) in
//! [`crate::optim`] and the diffusion kernels (q_sample, the DDPM and DDIM steps) in [`crate::diffusion`].

pub mod conv;
pub mod cpu;
pub mod embed;
pub mod linear;
pub mod loss;
pub mod norm;
pub mod pool;
pub mod reduce;
pub mod unary;

#[cfg(test)]
pub(crate) mod testing;

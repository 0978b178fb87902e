//! The reference's optimisation step: global gradient-norm clipping, AdamW, and an EMA of the weights, each with
//! PyTorch's semantics and f32 order of operations. The optimiser's state lives in `adamw.rs` and `ema.rs`; its
//! kernels in `cpu.rs`, `gpu.rs` and `optim.cu` behind [`OptimOps`].

mod adamw;
mod clip;
mod cpu;
mod ema;
mod gpu;
#[cfg(test)]
mod tests;

pub use adamw::{AdamW, AdamWScalars};
pub use clip::clip_grad_norm;
pub use ema::Ema;

use crate::backend::{Backend, Memory};
use crate::error::Result;
use crate::params::{GradStore, Params};
use crate::train::StepPlan;

/// One optimiser step of a training run: the gradients clipped to global norm `max_norm`, AdamW, then the EMA.
/// Where the parameters, gradients, moments and shadow are arenas (a GPU), three launches that leave
/// `[total norm, clip coefficient]` in `stats` from word `at`, and `None` comes back; else per tensor, returning
/// `Some((total, coef))`. Both give the per-tensor kernels' bits. With a `plan` (arenas only), the step's bias
/// corrections and EMA decay are read from its current row.
pub fn step<B: Backend>(
    params: &mut Params<B>,
    grads: &mut GradStore<B>,
    (opt, ema): (&mut AdamW<B>, &mut Ema<B>),
    max_norm: f32,
    (stats, at): (&mut B::Buf, usize),
    plan: Option<&StepPlan<B>>,
) -> Result<Option<(f32, f32)>> {
    let be = params.backend().clone();
    // The scalars of the step the flat path takes (the per-tensor path forms the same ones itself).
    let (adam, scalars) = (opt.scalars(opt.step + 1), ema.scalars());
    let flat = (
        params.arena_mut().buf_mut(),
        opt.arenas.0.buf_mut(),
        opt.arenas.1.buf_mut(),
        ema.arena.buf_mut(),
        grads.arena.buf(),
        grads.norm_table.as_ref(),
    );
    if let (Some(p), Some(m), Some(v), Some(shadow), Some(g), Some(norm_table)) = flat {
        let stats = (stats, at);
        be.flat_step(FlatStep { p, m, v, shadow, g, norm_table, adam, ema: scalars, max_norm, stats, plan })?;
        count_flat_step(opt, ema);
        return Ok(None);
    }
    if plan.is_some() {
        return Err(crate::error::Error::Arg("a planned optimiser step needs its state in arenas (a GPU's)".into()));
    }
    let clipped = clip_grad_norm(&mut grads.grads, max_norm)?;
    opt.step(params, &grads.grads)?;
    ema.update(params)?;
    Ok(Some(clipped))
}

/// Counts one optimiser step over the arenas (AdamW's step count and the EMA's updates, which the next step's
/// scalars come from): what [`step`] counts after queuing it, and a replay of a captured step for the step it
/// queues.
pub(crate) fn count_flat_step<B: Backend>(opt: &mut AdamW<B>, ema: &mut Ema<B>) {
    opt.step += 1;
    ema.updates += 1;
}

/// What a backend offers the optimiser.
pub trait OptimOps: Memory {
    /// `torch.nn.utils.clip_grad_norm_` over all `grads` together: `total = ‖g‖₂`,
    /// `coef = min(1, max_norm/(total + 1e-6))`, `g *= coef` when `coef < 1`. Returns `(total, coef)`.
    fn clip_grad_norm(&self, grads: &mut [&mut Self::Buf], max_norm: f32) -> Result<(f32, f32)>;
    /// One AdamW update of `p` with moments `m`, `v` from gradient `g` (`AdamW::step`'s f32 order).
    fn adamw_step(
        &self,
        s: &AdamWScalars,
        p: &mut Self::Buf,
        m: &mut Self::Buf,
        v: &mut Self::Buf,
        g: &Self::Buf,
    ) -> Result<()>;
    /// `shadow = shadow·d + alpha·p` (`Ema::update`).
    fn ema_update(&self, d: f32, alpha: f32, shadow: &mut Self::Buf, p: &Self::Buf) -> Result<()>;
    /// The whole step over arenas (backends with views, [`crate::arena`]): clipping, AdamW and the EMA of every
    /// parameter in three launches, equal to the per-tensor kernels to the bit. Backends without views have no
    /// arenas to run it on.
    fn flat_step(&self, f: FlatStep<'_, Self>) -> Result<()> {
        let _ = f;
        Err(crate::error::Error::Device(format!("{} keeps no arenas for a flat optimiser step", self.describe())))
    }
    /// The end of a planned step: its 3 statistics words, `staged`, copied to its row's words of `ring`, and the
    /// plan moved on to its next row (one launch). Backends without graphs have no plans.
    fn advance_plan(&self, plan: &mut StepPlan<Self>, staged: &Self::Buf, ring: &mut Self::Buf) -> Result<()> {
        let _ = (plan, staged, ring);
        Err(crate::error::Error::Device(format!("{} runs no planned steps", self.describe())))
    }
}

/// The buffers and scalars of [`OptimOps::flat_step`]: arenas of one layout, and where the norm goes.
pub struct FlatStep<'a, B: Memory> {
    pub p: &'a mut B::Buf,
    pub m: &'a mut B::Buf,
    pub v: &'a mut B::Buf,
    pub shadow: &'a mut B::Buf,
    pub g: &'a B::Buf,
    /// The per-tensor partition of the gradient norm's first pass ([`GradStore`]).
    pub norm_table: &'a B::Idx,
    pub adam: AdamWScalars,
    /// The EMA's `(d, 1 - d)`.
    pub ema: (f32, f32),
    pub max_norm: f32,
    /// Receives `[total norm, clip coefficient]` at the given word.
    pub stats: (&'a mut B::Buf, usize),
    /// A plan whose current row's bias corrections and EMA decay replace those in `adam` and `ema`.
    pub plan: Option<&'a StepPlan<B>>,
}

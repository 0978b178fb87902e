//! Conv2d, ConvTranspose2d, GroupNorm, Linear, the sinusoidal time embedding and the class-label embedding.
//!
//! Initialisation follows PyTorch's defaults: weights and biases uniform in `±1/sqrt(fan_in)` (what
//! `kaiming_uniform_(a=√5)` reduces to), where `fan_in = weight.size(1)·k·k`; for ConvTranspose2d the weight is
//! `[c_in, c_out, k, k]`, so its fan_in is `c_out·k·k`. GroupNorm starts at γ = 1, β = 0.

use crate::autograd::{Tape, Var};
use crate::backend::{Backend, Memory};
use crate::desc::Planes;
use crate::diffusion::{SamplerPlan, WithOperand};
use crate::error::Result;
use crate::ops::conv::{ConvExtra, Norm};
use crate::ops::unary::UnaryKind;
use crate::params::{ParamId, Params};
use crate::tensor::Tensor;
use rand::Rng;
use rand_distr::StandardNormal;

/// A tensor of `shape` uniform in `[-bound, bound)`.
fn uniform(rng: &mut impl Rng, shape: &[usize], bound: f32) -> Tensor {
    let n = shape.iter().product();
    let data = (0..n).map(|_| rng.random_range(-bound..bound)).collect();
    Tensor::new(shape, data).expect("length matches shape")
}

/// `y = x * W + b` for images: `nn.Conv2d(c_in, c_out, k, stride, padding)`.
#[derive(Clone, Debug)]
pub struct Conv2d {
    pub weight: ParamId,
    pub bias: ParamId,
    pub stride: usize,
    pub pad: usize,
}

impl Conv2d {
    /// Registers `{name}.weight [c_out, c_in, k, k]` and `{name}.bias [c_out]` for `(c_in, c_out)` channels and a
    /// `(k, stride, pad)` kernel.
    pub fn new(
        p: &mut Params,
        rng: &mut impl Rng,
        name: &str,
        (cin, cout): (usize, usize),
        (k, stride, pad): (usize, usize, usize),
    ) -> Self {
        let bound = 1.0 / ((cin * k * k) as f32).sqrt();
        let weight = p.add(&format!("{name}.weight"), uniform(rng, &[cout, cin, k, k], bound));
        let bias = p.add(&format!("{name}.bias"), uniform(rng, &[cout], bound));
        Conv2d { weight, bias, stride, pad }
    }

    /// The conv of `x`, with optional fused extra terms.
    pub fn forward<B: Backend>(&self, tape: &mut Tape<B>, x: Var, extra: ConvExtra) -> Result<Var> {
        let (w, b) = (tape.param(self.weight), tape.param(self.bias));
        tape.conv2d(x, w, Some(b), self.stride, self.pad, extra)
    }

    /// The conv of `silu(norm(x))`, with optional fused extra terms: one op ([`Tape::norm_conv2d`]), since the
    /// normalised activation has no other reader.
    pub fn forward_normed<B: Backend>(
        &self,
        tape: &mut Tape<B>,
        norm: &GroupNorm,
        x: Var,
        extra: ConvExtra,
    ) -> Result<Var> {
        let (gamma, beta) = (tape.param(norm.weight), tape.param(norm.bias));
        let (w, b) = (tape.param(self.weight), tape.param(self.bias));
        let norm = Norm { gamma, beta, groups: norm.groups, silu: true };
        tape.norm_conv2d(x, norm, w, Some(b), self.stride, self.pad, extra)
    }
}

/// `nn.ConvTranspose2d(c_in, c_out, k, stride, padding)`, weight `[c_in, c_out, k, k]`.
#[derive(Clone, Debug)]
pub struct ConvTranspose2d {
    pub weight: ParamId,
    pub bias: ParamId,
    pub stride: usize,
    pub pad: usize,
}

impl ConvTranspose2d {
    /// Registers `{name}.weight [c_in, c_out, k, k]` and `{name}.bias [c_out]` for `(c_in, c_out)` channels and a
    /// `(k, stride, pad)` kernel.
    pub fn new(
        p: &mut Params,
        rng: &mut impl Rng,
        name: &str,
        (cin, cout): (usize, usize),
        (k, stride, pad): (usize, usize, usize),
    ) -> Self {
        let bound = 1.0 / ((cout * k * k) as f32).sqrt();
        let weight = p.add(&format!("{name}.weight"), uniform(rng, &[cin, cout, k, k], bound));
        let bias = p.add(&format!("{name}.bias"), uniform(rng, &[cout], bound));
        ConvTranspose2d { weight, bias, stride, pad }
    }

    /// The transposed conv of `x`.
    pub fn forward<B: Backend>(&self, tape: &mut Tape<B>, x: Var) -> Result<Var> {
        let (w, b) = (tape.param(self.weight), tape.param(self.bias));
        tape.conv_transpose2d(x, w, Some(b), self.stride, self.pad)
    }
}

/// `nn.GroupNorm(groups, c)`: affine, eps 1e-5.
#[derive(Clone, Debug)]
pub struct GroupNorm {
    pub weight: ParamId,
    pub bias: ParamId,
    pub groups: usize,
}

impl GroupNorm {
    /// Registers `{name}.weight = 1` and `{name}.bias = 0`, both `[c]`.
    pub fn new(p: &mut Params, name: &str, groups: usize, c: usize) -> Self {
        let weight = p.add(&format!("{name}.weight"), Tensor::full(&[c], 1.0));
        let bias = p.add(&format!("{name}.bias"), Tensor::zeros(&[c]));
        GroupNorm { weight, bias, groups }
    }

    /// `GroupNorm(x)`, followed by SiLU when `silu` (fused).
    pub fn forward<B: Backend>(&self, tape: &mut Tape<B>, x: Var, silu: bool) -> Result<Var> {
        let (g, b) = (tape.param(self.weight), tape.param(self.bias));
        tape.group_norm(x, g, b, self.groups, silu)
    }
}

/// `nn.Linear(in, out)`: `y = x Wᵀ + b`.
#[derive(Clone, Debug)]
pub struct Linear {
    pub weight: ParamId,
    pub bias: ParamId,
}

impl Linear {
    /// Registers `{name}.weight [out, in]` and `{name}.bias [out]`.
    pub fn new(p: &mut Params, rng: &mut impl Rng, name: &str, fin: usize, fout: usize) -> Self {
        let bound = 1.0 / (fin as f32).sqrt();
        let weight = p.add(&format!("{name}.weight"), uniform(rng, &[fout, fin], bound));
        let bias = p.add(&format!("{name}.bias"), uniform(rng, &[fout], bound));
        Linear { weight, bias }
    }

    /// `x Wᵀ + b`.
    pub fn forward<B: Backend>(&self, tape: &mut Tape<B>, x: Var) -> Result<Var> {
        let (w, b) = (tape.param(self.weight), tape.param(self.bias));
        tape.linear(x, w, Some(b))
    }

    /// `(y, f(y))` for `y = x Wᵀ + b` and the activation `kind` ([`Tape::linear_act`]).
    pub fn forward_act<B: Backend>(&self, tape: &mut Tape<B>, x: Var, kind: UnaryKind) -> Result<(Var, Var)> {
        let (w, b) = (tape.param(self.weight), tape.param(self.bias));
        tape.linear_act(x, w, Some(b), kind)
    }
}

/// The timesteps a forward pass is conditioned on, one per image.
pub enum Timesteps<'a, B: Memory> {
    /// On the host (the samplers'): the sinusoid is made there and uploaded.
    Host(&'a [usize]),
    /// The first `n` values of an index buffer on the backend (the training step draws them there): the sinusoid is
    /// made there too, and nothing crosses the bus.
    Device { t: &'a B::Idx, n: usize },
    /// The current step of a sampler's plan, for all `n` images: the sinusoid is read from the plan on the
    /// backend ([`plan_sinusoid`](crate::diffusion::DiffusionOps::plan_sinusoid)), so the call can be captured.
    Planned { plan: &'a SamplerPlan<B>, n: usize },
}

impl<B: Memory> Timesteps<'_, B> {
    /// The number of timesteps.
    pub fn len(&self) -> usize {
        match self {
            Timesteps::Host(t) => t.len(),
            Timesteps::Device { n, .. } | Timesteps::Planned { n, .. } => *n,
        }
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// The reference's `TimeEmbedding(dim, hidden)`: a sinusoid of `t` (all sines, then all cosines), then
/// `Linear(dim, hidden) → SiLU → Linear(hidden, hidden)` (PyTorch names `time.mlp.0`, `time.mlp.2`).
#[derive(Clone, Debug)]
pub struct TimeEmbedding {
    pub dim: usize,
    pub lin0: Linear,
    pub lin2: Linear,
}

impl TimeEmbedding {
    /// Registers `{name}.mlp.0` and `{name}.mlp.2`; `dim` must be even.
    pub fn new(p: &mut Params, rng: &mut impl Rng, name: &str, dim: usize, hidden: usize) -> Self {
        let lin0 = Linear::new(p, rng, &format!("{name}.mlp.0"), dim, hidden);
        let lin2 = Linear::new(p, rng, &format!("{name}.mlp.2"), hidden, hidden);
        TimeEmbedding { dim, lin0, lin2 }
    }

    /// `freqs[i] = exp(-ln(10000)·i / half)`, `half = dim/2`, in f32 in the reference's order (the product, then the
    /// division, then exp).
    pub fn freqs(dim: usize) -> Vec<f32> {
        let half = dim / 2;
        let c = Self::freq_log();
        (0..half).map(|i| ((c * i as f32) / half as f32).exp()).collect()
    }

    /// `-ln(10000)` rounded to f32, the frequencies' scale (also passed to the device's sinusoid kernel).
    pub fn freq_log() -> f32 {
        -(10000f64.ln()) as f32
    }

    /// The sinusoid `[sin(t·f_0..), cos(t·f_0..)]`, `[len(t), dim]`, with `t·f` formed in f32 as the reference does.
    pub fn sinusoid(t: &[usize], dim: usize) -> Tensor {
        let freqs = Self::freqs(dim);
        let mut out = Vec::with_capacity(t.len() * dim);
        for &ti in t {
            let args: Vec<f32> = freqs.iter().map(|&f| ti as f32 * f).collect();
            out.extend(args.iter().map(|a| a.sin()));
            out.extend(args.iter().map(|a| a.cos()));
        }
        Tensor::new(&[t.len(), dim], out).expect("length matches shape")
    }

    /// A sinusoid `[n, dim]` made on the backend, with its operand where there is one, as the tape's input.
    fn made_input<B: Backend>(tape: &mut Tape<B>, n: usize, dim: usize, made: WithOperand<B>) -> Result<Var> {
        let (s, operand) = made;
        let v = tape.input(Tensor::from_buf(tape.backend().clone(), &[n, dim], s)?);
        if let Some(op) = operand {
            tape.set_operand(v, op);
        }
        Ok(v)
    }

    /// `mlp(sinusoid(t))`, `[len(t), hidden]`, and with `silu` its SiLU too (the ResBlocks' input), made with the
    /// last linear layer ([`Tape::linear_act`]).
    pub fn forward<B: Backend>(
        &self,
        tape: &mut Tape<B>,
        t: Timesteps<'_, B>,
        silu: bool,
    ) -> Result<(Var, Option<Var>)> {
        let e = match t {
            // Made on the host (a few hundred values) with the same f32 sin/cos as the golden reference, then
            // uploaded, with its operand for lin0 where the backend has operands (made on the host too, so no
            // conversion launch).
            Timesteps::Host(t) => {
                let s = Self::sinusoid(t, self.dim);
                let planes = Planes { n: t.len(), c: self.dim, plane: 1 };
                let operand = tape.backend().upload_operand(s.data(), planes)?;
                let v = tape.input_host(s)?;
                if let Some(op) = operand {
                    tape.set_operand(v, op);
                }
                v
            }
            // Made on the backend from its timesteps, in the same f32 operations (DiffusionOps::time_sinusoid).
            // With its operand for lin0, where the backend has operands.
            // Made on the backend from its timesteps, in the same f32 operations (DiffusionOps::time_sinusoid), or
            // read from a sampler's plan, which holds the host-made sinusoid of each of its steps. With its operand
            // for lin0, where the backend has operands.
            Timesteps::Device { t, n } => {
                let made = tape.backend().time_sinusoid(t, n, self.dim, true)?;
                Self::made_input(tape, n, self.dim, made)?
            }
            Timesteps::Planned { plan, n } => {
                let made = tape.backend().plan_sinusoid(plan, n, true)?;
                Self::made_input(tape, n, self.dim, made)?
            }
        };
        // The SiLU written with its operand for lin2, by lin0's GEMM where the backend fuses them.
        let (_, h) = self.lin0.forward_act(tape, e, UnaryKind::Silu)?;
        if silu {
            let (emb, act) = self.lin2.forward_act(tape, h, UnaryKind::Silu)?;
            return Ok((emb, Some(act)));
        }
        Ok((self.lin2.forward(tape, h)?, None))
    }
}

/// The class-label embedding of a class-conditional UNet: `nn.Embedding(classes + 1, dim)` (PyTorch name
/// `{name}.weight`), its last row the null label that stands for "no class" (classifier-free guidance, Ho &
/// Salimans 2022). Initialised N(0, 1), as PyTorch initialises an embedding.
#[derive(Clone, Debug)]
pub struct LabelEmbedding {
    pub weight: ParamId,
    /// The number of real classes; label `classes` is the null label.
    pub classes: usize,
}

impl LabelEmbedding {
    /// Registers `{name}.weight [classes + 1, dim]`.
    pub fn new(p: &mut Params, rng: &mut impl Rng, name: &str, classes: usize, dim: usize) -> Self {
        let data = (0..(classes + 1) * dim).map(|_| rng.sample::<f32, _>(StandardNormal)).collect();
        let weight = p.add(&format!("{name}.weight"), Tensor::new(&[classes + 1, dim], data).expect("shape"));
        LabelEmbedding { weight, classes }
    }

    /// `x + weight[labels]`: each row of `x` (`[n, dim]`) plus its label's row. `labels` holds `n` values, each at
    /// most `classes`.
    pub fn forward<B: Backend>(&self, tape: &mut Tape<B>, x: Var, labels: B::Idx, n: usize) -> Result<Var> {
        let w = tape.param(self.weight);
        tape.embed_add(x, w, labels, n)
    }
}

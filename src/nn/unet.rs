//! The reference's UNet: three resolutions (32, 16, 8 for a 32x32 input), one ResBlock per level on the way down, one
//! at the bottleneck, one per level on the way up, skips joined by channel concatenation.

use super::layers::{Conv2d, ConvTranspose2d, GroupNorm, LabelEmbedding, Linear, TimeEmbedding, Timesteps};
use crate::autograd::{Tape, Var};
use crate::backend::{Backend, Cpu};
use crate::diffusion::{Denoiser, SamplerPlan};
use crate::error::{Error, Result};
use crate::ops::conv::{ChanBias, ConvExtra};
use crate::ops::unary::UnaryKind;
use crate::params::{Params, SpanId};
use rand::Rng;

/// Groups of every GroupNorm, as in the reference.
pub const GROUPS: usize = 8;

/// The most classes a conditional UNet may have: far beyond MNIST's 10, small enough that a damaged checkpoint
/// cannot ask for a huge label table.
pub const MAX_CLASSES: usize = 1 << 16;

/// The UNet's sizes: `in_ch` image channels, `base` channels at full resolution, `t_dim` sinusoid width (the
/// time MLP is `4·t_dim` wide), and `classes` labels it is conditioned on (0: unconditional, the reference).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct UNetConfig {
    pub in_ch: usize,
    pub base: usize,
    pub t_dim: usize,
    pub classes: usize,
}

impl Default for UNetConfig {
    /// The reference's recipe: `UNet(in_ch=1, base=64, t_dim=128)`.
    fn default() -> Self {
        UNetConfig { in_ch: 1, base: 64, t_dim: 128, classes: 0 }
    }
}

impl UNetConfig {
    /// `Err` unless every GroupNorm can split its channels into 8 groups and the sinusoid has even width.
    pub fn validate(&self) -> Result<()> {
        if self.in_ch == 0 || self.base == 0 || !self.base.is_multiple_of(GROUPS) {
            return Err(Error::Arg(format!(
                "base must be a positive multiple of {GROUPS} (GroupNorm({GROUPS})), got {}",
                self.base
            )));
        }
        if self.t_dim == 0 || !self.t_dim.is_multiple_of(2) {
            return Err(Error::Arg(format!("t_dim must be positive and even, got {}", self.t_dim)));
        }
        if self.classes > MAX_CLASSES {
            return Err(Error::Arg(format!("classes must be at most {MAX_CLASSES}, got {}", self.classes)));
        }
        Ok(())
    }
}

/// The reference's ResBlock:
/// `h = conv1(silu(norm1(x))) + t_proj(silu(t_emb))[:, :, None, None]`; `out = conv2(silu(norm2(h))) + skip(x)`,
/// with `skip` a 1x1 conv when the channel count changes, else the identity. The UNet runs the five blocks'
/// `t_proj` layers as one ([`UNet::t_proj`]), so a block takes its time projection made.
#[derive(Clone, Debug)]
pub struct ResBlock {
    pub norm1: GroupNorm,
    pub conv1: Conv2d,
    pub t_proj: Linear,
    pub norm2: GroupNorm,
    pub conv2: Conv2d,
    pub skip: Option<Conv2d>,
}

impl ResBlock {
    /// Registers the block's parameters under `name` in PyTorch's order.
    pub fn new(p: &mut Params, rng: &mut impl Rng, name: &str, cin: usize, cout: usize, t_out: usize) -> Self {
        let norm1 = GroupNorm::new(p, &format!("{name}.norm1"), GROUPS, cin);
        let conv1 = Conv2d::new(p, rng, &format!("{name}.conv1"), (cin, cout), (3, 1, 1));
        let t_proj = Linear::new(p, rng, &format!("{name}.t_proj"), t_out, cout);
        let norm2 = GroupNorm::new(p, &format!("{name}.norm2"), GROUPS, cout);
        let conv2 = Conv2d::new(p, rng, &format!("{name}.conv2"), (cout, cout), (3, 1, 1));
        let skip = (cin != cout).then(|| Conv2d::new(p, rng, &format!("{name}.skip"), (cin, cout), (1, 1, 0)));
        ResBlock { norm1, conv1, t_proj, norm2, conv2, skip }
    }

    /// The block applied to `x`, given its time projection `tp = t_proj(silu(t_emb))` (columns of the one linear
    /// layer's output that makes all five). The time projection and the residual are fused into the convs'
    /// outputs, and each GroupNorm+SiLU into the conv that reads it. With `feeds_conv` the output is also written
    /// as the operand of the conv that reads it next.
    pub fn forward<B: Backend>(&self, tape: &mut Tape<B>, x: Var, tp: ChanBias, feeds_conv: bool) -> Result<Var> {
        let extra = ConvExtra { chan_bias: Some(tp), ..ConvExtra::default() };
        let h = self.conv1.forward_normed(tape, &self.norm1, x, extra)?;
        let skip = match &self.skip {
            Some(conv) => conv.forward(tape, x, ConvExtra::default())?,
            None => x,
        };
        let extra = ConvExtra { residual: Some(skip), operand: feeds_conv, ..ConvExtra::default() };
        self.conv2.forward_normed(tape, &self.norm2, h, extra)
    }
}

/// The reference's `UNet(in_ch, base, t_dim)`, predicting the noise ε in x_t.
#[derive(Clone, Debug)]
pub struct UNet {
    pub config: UNetConfig,
    pub time: TimeEmbedding,
    pub in_conv: Conv2d,
    pub down1: ResBlock,
    pub pool1: Conv2d,
    pub down2: ResBlock,
    pub pool2: Conv2d,
    pub mid: ResBlock,
    pub up2: ConvTranspose2d,
    pub dec2: ResBlock,
    pub up1: ConvTranspose2d,
    pub dec1: ResBlock,
    pub out_norm: GroupNorm,
    pub out_conv: Conv2d,
    /// The class-label embedding added to the time embedding's output; only when `config.classes > 0`.
    pub label: Option<LabelEmbedding>,
    /// The weights and the biases of the five ResBlocks' `t_proj` layers (in the order down1, down2, mid, dec2,
    /// dec1) as spans ([`Params::add_span`]): one `[Σ c_out, 4·t_dim]` linear layer makes every block's time
    /// projection, as columns of one output, in one GEMM forward and two backward.
    pub t_proj: (SpanId, SpanId),
}

impl UNet {
    /// Builds the UNet, registering its parameters in `p` (PyTorch names and order), initialised from `rng`.
    pub fn new(config: UNetConfig, p: &mut Params, rng: &mut impl Rng) -> Result<Self> {
        config.validate()?;
        let UNetConfig { in_ch, base: b, t_dim, classes } = config;
        let t_out = 4 * t_dim;
        let mut unet = UNet {
            config,
            time: TimeEmbedding::new(p, rng, "time", t_dim, t_out),
            in_conv: Conv2d::new(p, rng, "in_conv", (in_ch, b), (3, 1, 1)),
            down1: ResBlock::new(p, rng, "down1", b, b, t_out),
            pool1: Conv2d::new(p, rng, "pool1", (b, 2 * b), (3, 2, 1)),
            down2: ResBlock::new(p, rng, "down2", 2 * b, 2 * b, t_out),
            pool2: Conv2d::new(p, rng, "pool2", (2 * b, 4 * b), (3, 2, 1)),
            mid: ResBlock::new(p, rng, "mid", 4 * b, 4 * b, t_out),
            up2: ConvTranspose2d::new(p, rng, "up2", (4 * b, 2 * b), (4, 2, 1)),
            dec2: ResBlock::new(p, rng, "dec2", 4 * b, 2 * b, t_out),
            up1: ConvTranspose2d::new(p, rng, "up1", (2 * b, b), (4, 2, 1)),
            dec1: ResBlock::new(p, rng, "dec1", 2 * b, b, t_out),
            out_norm: GroupNorm::new(p, "out_norm", GROUPS, b),
            out_conv: Conv2d::new(p, rng, "out_conv", (b, in_ch), (3, 1, 1)),
            label: None,
            t_proj: (SpanId(0), SpanId(0)),
        };
        let t_projs = unet.blocks().map(|blk| &blk.t_proj);
        unet.t_proj = (p.add_span(&t_projs.map(|l| l.weight)), p.add_span(&t_projs.map(|l| l.bias)));
        // Registered last, so that the other parameters are initialised from the same draws as an unconditional
        // model's.
        unet.label = (classes > 0).then(|| LabelEmbedding::new(p, rng, "label_emb", classes, t_out));
        Ok(unet)
    }

    /// The ResBlocks in the order their time projections are stacked: the order they are registered in.
    fn blocks(&self) -> [&ResBlock; 5] {
        [&self.down1, &self.down2, &self.mid, &self.dec2, &self.dec1]
    }

    /// Every ResBlock's time projection `t_proj(t_act)` from one linear layer: the blocks' channel biases, as
    /// columns of its output, in [`UNet::blocks`] order.
    fn time_projections<B: Backend>(&self, tape: &mut Tape<B>, t_act: Var) -> Result<[ChanBias; 5]> {
        let (w, b) = (tape.param_span(self.t_proj.0)?, tape.param_span(self.t_proj.1)?);
        let tp = tape.linear(t_act, w, Some(b))?;
        let params = tape.params();
        let mut start = 0;
        Ok(self.blocks().map(|blk| {
            let cb = ChanBias { var: tp, start };
            start += params.get(blk.t_proj.bias).numel();
            cb
        }))
    }

    /// `ε̂ = UNet(x_t, t)` for `x: [n, in_ch, H, W]` (H, W divisible by 4) and one timestep per image; a
    /// conditional model predicts it for the null label (unconditionally).
    pub fn forward<B: Backend>(&self, tape: &mut Tape<B>, x: Var, t: &[usize]) -> Result<Var> {
        self.forward_traced(tape, x, Timesteps::Host(t), None, &mut |_, _| {})
    }

    /// [`UNet::forward`] with the timesteps on the host or already on the backend, and the class labels of a
    /// conditional model (n values in `0..=classes`; `None`: the null label for every image).
    pub fn forward_at<B: Backend>(
        &self,
        tape: &mut Tape<B>,
        x: Var,
        t: Timesteps<'_, B>,
        labels: Option<B::Idx>,
    ) -> Result<Var> {
        self.forward_traced(tape, x, t, labels, &mut |_, _| {})
    }

    /// [`UNet::forward_at`], calling `trace(name, var)` with each submodule's output, named as the golden files
    /// name them (`time`, `in_conv`, `down1`, … `out_conv`; `out_norm` is not traced since it is fused with its
    /// SiLU). `time` is the time embedding before any label embedding is added.
    pub fn forward_traced<B: Backend>(
        &self,
        tape: &mut Tape<B>,
        x: Var,
        t: Timesteps<'_, B>,
        labels: Option<B::Idx>,
        trace: &mut dyn FnMut(&'static str, Var),
    ) -> Result<Var> {
        let (n, c, h, w) = tape.value(x).dims4("UNet input")?;
        if c != self.config.in_ch || h % 4 != 0 || w % 4 != 0 || t.len() != n {
            return Err(Error::Shape(format!(
                "UNet: expected input [n, {}, H, W] with H, W divisible by 4 and n timesteps, got {:?} with {} timesteps",
                self.config.in_ch, tape.value(x).shape(), t.len()
            )));
        }
        let mut traced = |name, v: Var| {
            trace(name, v);
            v
        };
        if self.label.is_none() && labels.is_some() {
            return Err(Error::Arg("class labels given to an unconditional UNet".into()));
        }
        // The SiLU of the time embedding (the time projections' input, written with its operand for their linear
        // layer) is made with it, unless a conditional model adds its label's row (the null label's when none is
        // given) in between.
        let (t_emb, t_act) = self.time.forward(tape, t, self.label.is_none())?;
        traced("time", t_emb);
        let t_act = match (&self.label, t_act) {
            (None, Some(t_act)) => t_act,
            (None, None) => tape.unary_with(UnaryKind::Silu, t_emb, true)?,
            (Some(emb), _) => {
                let labels = match labels {
                    Some(l) => l,
                    None => tape.backend().upload_indices(&vec![emb.classes as u32; n])?,
                };
                let t_emb = emb.forward(tape, t_emb, labels, n)?;
                tape.unary_with(UnaryKind::Silu, t_emb, true)?
            }
        };
        let [tp_down1, tp_down2, tp_mid, tp_dec2, tp_dec1] = self.time_projections(tape, t_act)?;
        let h0 = traced("in_conv", self.in_conv.forward(tape, x, ConvExtra::default())?);
        // Each block whose output a conv reads next (a pool, an upsampler) writes that conv's operand too.
        let h1 = traced("down1", self.down1.forward(tape, h0, tp_down1, true)?);
        let p1 = traced("pool1", self.pool1.forward(tape, h1, ConvExtra::default())?);
        let h2 = traced("down2", self.down2.forward(tape, p1, tp_down2, true)?);
        let p2 = traced("pool2", self.pool2.forward(tape, h2, ConvExtra::default())?);
        let hb = traced("mid", self.mid.forward(tape, p2, tp_mid, true)?);
        let u2 = traced("up2", self.up2.forward(tape, hb)?);
        // The decoder blocks' 1x1 skip convs read the concatenations: written with their operands.
        let cat2 = tape.concat_with(u2, h2, true)?;
        let d2 = traced("dec2", self.dec2.forward(tape, cat2, tp_dec2, true)?);
        let u1 = traced("up1", self.up1.forward(tape, d2)?);
        let cat1 = tape.concat_with(u1, h1, true)?;
        let d1 = traced("dec1", self.dec1.forward(tape, cat1, tp_dec1, false)?);
        Ok(traced("out_conv", self.out_conv.forward_normed(tape, &self.out_norm, d1, ConvExtra::default())?))
    }
}

/// The UNet with fixed weights as a [`Denoiser`] for the samplers (inference only: no tape is kept), on the
/// backend of its parameters.
pub struct UNetDenoiser<'a, B: Backend = Cpu> {
    pub model: &'a UNet,
    pub params: &'a Params<B>,
}

impl<B: Backend> UNetDenoiser<'_, B> {
    /// x as the tape's input: on a backend with views a view of it (no copy launch), else a copy.
    fn input(&self, x: &crate::Tensor<B>) -> Result<crate::Tensor<B>> {
        let be = self.params.backend();
        match be.has_views() {
            true => crate::Tensor::from_buf(be.clone(), x.shape(), be.view(x.buf(), 0, x.numel())?),
            false => x.try_clone(),
        }
    }
}

impl<B: Backend> Denoiser<B> for UNetDenoiser<'_, B> {
    /// On a backend with views, x enters the tape as a view and ε leaves it moved: no copy launches.
    fn predict_eps(&mut self, x: &crate::Tensor<B>, t: &[usize]) -> Result<crate::Tensor<B>> {
        let mut tape = Tape::inference(self.params);
        let xv = tape.input(self.input(x)?);
        let eps = self.model.forward(&mut tape, xv, t)?;
        tape.into_value(eps)
    }

    /// An unconditional model only: a conditional one uploads its null labels at each call.
    fn plan_width(&self) -> Option<usize> {
        self.model.label.is_none().then_some(self.model.config.t_dim)
    }

    fn predict_eps_planned(&mut self, x: &crate::Tensor<B>, plan: &SamplerPlan<B>) -> Result<crate::Tensor<B>> {
        let mut tape = Tape::inference(self.params);
        let xv = tape.input(self.input(x)?);
        let t = Timesteps::Planned { plan, n: x.shape().first().copied().unwrap_or(0) };
        let eps = self.model.forward_at(&mut tape, xv, t, None)?;
        tape.into_value(eps)
    }
}

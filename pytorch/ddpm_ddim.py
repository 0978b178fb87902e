# The reference: the blog post's PyTorch code, the behavioural specification this project ports to Rust.
# Copied from the post "Diffusion Deep Dive Part 3: Coding a DDPM from Scratch", section "Full Source: A Single
# Runnable File" (the post's text is in shared/seed/ddpm-ddim-blog-post.txt). The post's listing lost its
# indentation; it is restored here. One change, outside the math: the torchvision imports are guarded, so that
# importing this module for its model, schedule and samplers (compare.py, make_golden.py) needs torch alone.
# torchvision is still needed by get_loader() and the __main__ block, which train on MNIST exactly as the post's
# file does when run as a script.
"""
ddpm_ddim.py — Minimal DDPM training + DDPM/DDIM sampling, from scratch.

Companion code for:
  Part 1: /blog/diffusion-series-1-math-of-diffusion
  Part 2: /blog/diffusion-series-2-ddim
  Part 3: /blog/diffusion-series-3-coding-ddpm

Run:
  python ddpm_ddim.py

Dependencies: torch, torchvision.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.utils.data import DataLoader

try:
    from torchvision import datasets, transforms
    from torchvision.utils import save_image
except ImportError:  # only get_loader() and the __main__ block use them
    datasets = transforms = save_image = None

device = "cuda" if torch.cuda.is_available() else "cpu"


# ---------------------------------------------------------------------------
# Data
# ---------------------------------------------------------------------------

def get_loader(batch_size: int = 128) -> DataLoader:
    transform = transforms.Compose([
        transforms.Resize(32),
        transforms.ToTensor(),                      # [0, 1]
        transforms.Normalize((0.5,), (0.5,)),       # [-1, 1]
    ])
    dataset = datasets.MNIST("./data", train=True, download=True, transform=transform)
    return DataLoader(dataset, batch_size=batch_size, shuffle=True,
                      num_workers=2, drop_last=True, pin_memory=True)


# ---------------------------------------------------------------------------
# Schedule
# ---------------------------------------------------------------------------

@dataclass
class Schedule:
    T: int
    betas: torch.Tensor
    alphas: torch.Tensor
    alphas_bar: torch.Tensor
    sqrt_alphas_bar: torch.Tensor
    sqrt_one_minus_alphas_bar: torch.Tensor
    sqrt_recip_alphas: torch.Tensor
    posterior_variance: torch.Tensor


def make_schedule(T: int = 1000, beta_start: float = 1e-4,
                  beta_end: float = 2e-2, device: str = "cpu") -> Schedule:
    betas = torch.linspace(beta_start, beta_end, T, device=device)
    alphas = 1.0 - betas
    alphas_bar = torch.cumprod(alphas, dim=0)
    alphas_bar_prev = F.pad(alphas_bar[:-1], (1, 0), value=1.0)
    posterior_variance = betas * (1.0 - alphas_bar_prev) / (1.0 - alphas_bar)
    return Schedule(
        T=T,
        betas=betas,
        alphas=alphas,
        alphas_bar=alphas_bar,
        sqrt_alphas_bar=torch.sqrt(alphas_bar),
        sqrt_one_minus_alphas_bar=torch.sqrt(1.0 - alphas_bar),
        sqrt_recip_alphas=torch.sqrt(1.0 / alphas),
        posterior_variance=posterior_variance,
    )


def gather(buf: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    return buf.gather(0, t).view(-1, 1, 1, 1)


def q_sample(x0: torch.Tensor, t: torch.Tensor,
             noise: torch.Tensor, sched: Schedule) -> torch.Tensor:
    """x_t from q(x_t | x_0) in closed form. [Part 1 eq. (41)]"""
    return gather(sched.sqrt_alphas_bar, t) * x0 + \
        gather(sched.sqrt_one_minus_alphas_bar, t) * noise


# ---------------------------------------------------------------------------
# UNet
# ---------------------------------------------------------------------------

class TimeEmbedding(nn.Module):
    def __init__(self, dim: int, hidden: int):
        super().__init__()
        assert dim % 2 == 0
        self.dim = dim
        self.mlp = nn.Sequential(
            nn.Linear(dim, hidden),
            nn.SiLU(),
            nn.Linear(hidden, hidden),
        )

    def forward(self, t: torch.Tensor) -> torch.Tensor:
        half = self.dim // 2
        freqs = torch.exp(
            -math.log(10000) * torch.arange(half, device=t.device) / half
        )
        args = t[:, None].float() * freqs[None]
        emb = torch.cat([args.sin(), args.cos()], dim=-1)
        return self.mlp(emb)


class ResBlock(nn.Module):
    def __init__(self, in_ch: int, out_ch: int, t_dim: int):
        super().__init__()
        self.norm1 = nn.GroupNorm(8, in_ch)
        self.conv1 = nn.Conv2d(in_ch, out_ch, 3, padding=1)
        self.t_proj = nn.Linear(t_dim, out_ch)
        self.norm2 = nn.GroupNorm(8, out_ch)
        self.conv2 = nn.Conv2d(out_ch, out_ch, 3, padding=1)
        self.skip = nn.Conv2d(in_ch, out_ch, 1) if in_ch != out_ch else nn.Identity()

    def forward(self, x: torch.Tensor, t_emb: torch.Tensor) -> torch.Tensor:
        h = self.conv1(F.silu(self.norm1(x)))
        h = h + self.t_proj(F.silu(t_emb))[:, :, None, None]
        h = self.conv2(F.silu(self.norm2(h)))
        return h + self.skip(x)


class UNet(nn.Module):
    def __init__(self, in_ch: int = 1, base: int = 64, t_dim: int = 128):
        super().__init__()
        self.time = TimeEmbedding(dim=t_dim, hidden=t_dim * 4)
        t_out = t_dim * 4
        self.in_conv = nn.Conv2d(in_ch, base, 3, padding=1)
        self.down1 = ResBlock(base, base, t_out)
        self.pool1 = nn.Conv2d(base, base * 2, 3, stride=2, padding=1)
        self.down2 = ResBlock(base * 2, base * 2, t_out)
        self.pool2 = nn.Conv2d(base * 2, base * 4, 3, stride=2, padding=1)
        self.mid = ResBlock(base * 4, base * 4, t_out)
        self.up2 = nn.ConvTranspose2d(base * 4, base * 2, 4, stride=2, padding=1)
        self.dec2 = ResBlock(base * 4, base * 2, t_out)
        self.up1 = nn.ConvTranspose2d(base * 2, base, 4, stride=2, padding=1)
        self.dec1 = ResBlock(base * 2, base, t_out)
        self.out_norm = nn.GroupNorm(8, base)
        self.out_conv = nn.Conv2d(base, in_ch, 3, padding=1)

    def forward(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        t_emb = self.time(t)
        h0 = self.in_conv(x)
        h1 = self.down1(h0, t_emb)
        h2 = self.down2(self.pool1(h1), t_emb)
        hb = self.mid(self.pool2(h2), t_emb)
        u2 = self.up2(hb)
        u2 = self.dec2(torch.cat([u2, h2], dim=1), t_emb)
        u1 = self.up1(u2)
        u1 = self.dec1(torch.cat([u1, h1], dim=1), t_emb)
        return self.out_conv(F.silu(self.out_norm(u1)))


# ---------------------------------------------------------------------------
# Training
# ---------------------------------------------------------------------------

def train_step(model: UNet, x0: torch.Tensor, sched: Schedule,
               optimizer: torch.optim.Optimizer) -> float:
    B = x0.size(0)
    t = torch.randint(0, sched.T, (B,), device=x0.device)
    noise = torch.randn_like(x0)
    x_t = q_sample(x0, t, noise, sched)
    noise_pred = model(x_t, t)
    loss = F.mse_loss(noise_pred, noise)
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    torch.nn.utils.clip_grad_norm_(model.parameters(), max_norm=1.0)
    optimizer.step()
    return loss.item()


class EMA:
    def __init__(self, model: nn.Module, decay: float = 0.9999):
        self.decay = decay
        self.shadow = {k: v.detach().clone() for k, v in model.state_dict().items()}

    @torch.no_grad()
    def update(self, model: nn.Module) -> None:
        for k, v in model.state_dict().items():
            if v.dtype.is_floating_point:
                self.shadow[k].mul_(self.decay).add_(v.detach(), alpha=1.0 - self.decay)
            else:
                self.shadow[k].copy_(v)

    def copy_to(self, model: nn.Module) -> None:
        model.load_state_dict(self.shadow)


def train(epochs: int = 30, batch_size: int = 128, lr: float = 2e-4,
          T: int = 1000) -> tuple[UNet, EMA, Schedule]:
    loader = get_loader(batch_size)
    sched = make_schedule(T=T, device=device)
    model = UNet(in_ch=1, base=64).to(device)
    ema = EMA(model, decay=0.9999)
    opt = torch.optim.AdamW(model.parameters(), lr=lr)
    step = 0
    for epoch in range(epochs):
        for x0, _ in loader:
            x0 = x0.to(device, non_blocking=True)
            loss = train_step(model, x0, sched, opt)
            ema.update(model)
            step += 1
            if step % 200 == 0:
                print(f"epoch {epoch} step {step}: loss {loss:.4f}")
    return model, ema, sched


# ---------------------------------------------------------------------------
# Samplers
# ---------------------------------------------------------------------------

@torch.no_grad()
def sample(model: UNet, sched: Schedule, n: int = 16,
           img_size: int = 32, channels: int = 1) -> torch.Tensor:
    """DDPM ancestral sampler (Ho et al. 2020, Algorithm 2). [Part 1 eq. (51)]"""
    model.eval()
    x = torch.randn(n, channels, img_size, img_size, device=device)
    for t in reversed(range(sched.T)):
        t_batch = torch.full((n,), t, device=device, dtype=torch.long)
        eps = model(x, t_batch)
        coef = sched.betas[t] / sched.sqrt_one_minus_alphas_bar[t]
        mean = sched.sqrt_recip_alphas[t] * (x - coef * eps)
        if t > 0:
            noise = torch.randn_like(x)
            x = mean + torch.sqrt(sched.posterior_variance[t]) * noise
        else:
            x = mean
    model.train()
    return x.clamp(-1, 1)


def make_ddim_timesteps(T: int, num_steps: int) -> list[int]:
    """Ascending sub-sequence of timestep indices 0..T-1."""
    stride = max(1, T // num_steps)
    ts = list(range(0, T, stride))
    if ts[-1] != T - 1:
        ts.append(T - 1)
    return ts


@torch.no_grad()
def sample_ddim(model: UNet, sched: Schedule, n: int = 16,
                img_size: int = 32, channels: int = 1,
                num_steps: int = 50, eta: float = 0.0) -> torch.Tensor:
    """DDIM sampler (Song, Meng, Ermon 2021). [Part 2 eq. (6), (7), (11)]
    eta=0.0 is deterministic (probability-flow ODE); eta=1.0 recovers DDPM
    on the sub-sampled grid."""
    model.eval()
    x = torch.randn(n, channels, img_size, img_size, device=device)
    ts = make_ddim_timesteps(sched.T, num_steps)
    for i in reversed(range(len(ts))):
        t = ts[i]
        t_prev = ts[i - 1] if i > 0 else -1
        t_batch = torch.full((n,), t, device=device, dtype=torch.long)
        eps = model(x, t_batch)
        ab_t = sched.alphas_bar[t]
        ab_prev = sched.alphas_bar[t_prev] if t_prev >= 0 else torch.tensor(1.0, device=device)
        x0_pred = ((x - torch.sqrt(1.0 - ab_t) * eps) / torch.sqrt(ab_t)).clamp(-1, 1)
        sigma_sq = (eta ** 2) * ((1.0 - ab_prev) / (1.0 - ab_t)) * (1.0 - ab_t / ab_prev)
        sigma = torch.sqrt(sigma_sq.clamp(min=0.0))
        dir_coef = torch.sqrt((1.0 - ab_prev - sigma_sq).clamp(min=0.0))
        z = torch.randn_like(x) if i > 0 else torch.zeros_like(x)
        x = torch.sqrt(ab_prev) * x0_pred + dir_coef * eps + sigma * z
    model.train()
    return x.clamp(-1, 1)


@torch.no_grad()
def sample_with_ema(model: UNet, ema: EMA, sched: Schedule,
                    fn=sample, **kwargs) -> torch.Tensor:
    backup = {k: v.clone() for k, v in model.state_dict().items()}
    ema.copy_to(model)
    imgs = fn(model, sched, **kwargs)
    model.load_state_dict(backup)
    return imgs


# ---------------------------------------------------------------------------
# Entry point
# ---------------------------------------------------------------------------

if __name__ == "__main__":
    torch.manual_seed(0)
    model, ema, sched = train(epochs=30)

    ddpm_imgs = sample_with_ema(model, ema, sched, fn=sample, n=64)
    ddim_imgs = sample_with_ema(model, ema, sched, fn=sample_ddim, n=64,
                                num_steps=50, eta=0.0)

    save_image((ddpm_imgs + 1) / 2, "samples_ddpm.png", nrow=8)
    save_image((ddim_imgs + 1) / 2, "samples_ddim.png", nrow=8)
    print("Wrote samples_ddpm.png and samples_ddim.png")

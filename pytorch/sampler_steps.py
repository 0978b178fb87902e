"""One reverse step of each of the reference's samplers, for callers that need a single step with a given eps and z.

The reference (ddpm_ddim.py) writes each step only inside its sampling loop (`sample`, `sample_ddim`). These two
functions are those loop bodies, line for line, minus the network call and the random draw: the caller passes
`eps` and `z`. make_golden.py checks on every run that looping them reproduces the reference's `sample` and
`sample_ddim` bit for bit (same RNG draws, a stub network); compare.py times one DDIM step with them.
"""
from __future__ import annotations

import torch


def ddpm_step(x, eps, z, t, sched):
    """x_{t-1} from x_t: the body of the reference's `sample` loop. z is ignored at t = 0."""
    coef = sched.betas[t] / sched.sqrt_one_minus_alphas_bar[t]
    mean = sched.sqrt_recip_alphas[t] * (x - coef * eps)
    if t > 0:
        return mean + torch.sqrt(sched.posterior_variance[t]) * z
    return mean


def ddim_step(x, eps, z, i, ts, sched, eta):
    """x at ts[i-1] from x at ts[i] (ab_prev = 1 at i = 0): the body of the reference's `sample_ddim` loop.
    z is replaced by zeros at i = 0, as the reference does."""
    t = ts[i]
    t_prev = ts[i - 1] if i > 0 else -1
    ab_t = sched.alphas_bar[t]
    ab_prev = sched.alphas_bar[t_prev] if t_prev >= 0 else \
        torch.tensor(1.0, dtype=sched.alphas_bar.dtype, device=sched.alphas_bar.device)
    x0_pred = ((x - torch.sqrt(1.0 - ab_t) * eps) / torch.sqrt(ab_t)).clamp(-1, 1)
    sigma_sq = (eta ** 2) * ((1.0 - ab_prev) / (1.0 - ab_t)) * (1.0 - ab_t / ab_prev)
    sigma = torch.sqrt(sigma_sq.clamp(min=0.0))
    dir_coef = torch.sqrt((1.0 - ab_prev - sigma_sq).clamp(min=0.0))
    if i == 0:
        z = torch.zeros_like(x)
    return torch.sqrt(ab_prev) * x0_pred + dir_coef * eps + sigma * z

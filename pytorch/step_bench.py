#!/usr/bin/env python3
"""The reference's training step and DDIM step timed in PyTorch: the counterpart of `ddpm bench --what train` and
`ddpm bench --what sample`.

usage: python3 pytorch/step_bench.py [--device cuda|cpu] [--what train|sample|both] [--modes eager,compile]
                                     [--batch 128] [--n 64] [--base 64] [--t-dim 128] [--iters 20]
                                     [--warmup 3] [--precision auto|bf16|fp32] [--threads N]

The model, schedule, q_sample and EMA are the reference's (pytorch/ddpm_ddim.py, imported), the DDIM update is
sampler_steps.ddim_step (the body of the reference's sample_ddim loop); nothing of the model is copied here.

  train   one step of the reference recipe (ddpm_ddim.train_step, then EMA.update), on one synthetic batch of
          --batch images in [-1, 1] (standard normal, clamped, as ours): random t and noise, q_sample, the
          ε-prediction MSE, backward, clip_grad_norm_(1.0), AdamW (the reference's lr 2e-4, PyTorch's default
          weight decay 0.01, as the reference leaves it), loss.item() (as the reference's train_step returns it),
          then the EMA update (decay 0.9999). Autocast covers the forward and the loss only.
  sample  one step of DDIM-50 on --n images at t = 500: the UNet forward (no grad), then the DDIM update (eta 0,
          with the reference's random draw). Ours times the steps of a DDIM run the same way (forward and update,
          waited for; the network's cost does not depend on t).

Modes: eager runs the model as it is; compile wraps it in torch.compile (default mode, static shapes), whose
compilation happens in the warm-up calls and is not timed (it can take a minute: progress goes to stderr).
Precision: auto is bf16 on CUDA (torch.autocast to bfloat16, model and inputs channels_last,
torch.backends.cudnn.benchmark = True) and fp32 on the CPU (NCHW, no autocast); fp32 on CUDA turns TF32 off, as
our fp32 path is plain f32.
Timing: each call is bracketed by torch.cuda.synchronize() on CUDA (so the host clock covers the queued work, as
ours does), by nothing on the CPU; the host clock is time.perf_counter. --warmup untimed calls, then the median,
min and max of --iters timed ones.

Prints one JSON line per (what, mode) on stdout: what, mode, device, precision, amp, channels_last, batch, base,
t_dim, iters, median_ms, min_ms, max_ms, torch (version); a mode that fails prints a line with an "error" field
instead and the others still run. Exit status 0 if at least one (what, mode) was timed, else 1.
"""
import argparse
import contextlib
import json
import statistics
import sys
import time
import traceback
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))  # the reference and sampler_steps.py beside this file

import torch  # noqa: E402

import ddpm_ddim  # noqa: E402
from sampler_steps import ddim_step  # noqa: E402

DDIM_STEPS = 50  # the recipe's sampler: DDIM-50
SAMPLE_T = 500  # the timestep ours times (src/cli/bench.rs)
EMA_DECAY = 0.9999  # the reference's train()
LR = 2e-4  # the reference's train()


def log(msg):
    print(f"step_bench: {msg}", file=sys.stderr, flush=True)


class Setup:
    """What every (what, mode) shares: device, precision, timing."""

    def __init__(self, a):
        self.a = a
        self.device = torch.device(a.device)
        self.cuda = self.device.type == "cuda"
        precision = a.precision if a.precision != "auto" else ("bf16" if self.cuda else "fp32")
        self.precision = precision
        self.amp = precision == "bf16"
        self.memory_format = torch.channels_last if self.amp else torch.contiguous_format

    def autocast(self):
        if self.amp:
            return torch.autocast(device_type=self.device.type, dtype=torch.bfloat16)
        return contextlib.nullcontext()

    def sync(self):
        if self.cuda:
            torch.cuda.synchronize()

    def time_ms(self, fn):
        self.sync()
        t0 = time.perf_counter()
        fn()
        self.sync()
        return (time.perf_counter() - t0) * 1e3

    def model(self, mode):
        """A fresh reference UNet (same initial weights every time), on the device, and what the step calls: the
        model itself, or its torch.compile wrapper."""
        torch.manual_seed(0)
        model = ddpm_ddim.UNet(in_ch=1, base=self.a.base, t_dim=self.a.t_dim).to(self.device)
        model = model.to(memory_format=self.memory_format)
        if mode == "compile":
            return model, torch.compile(model, dynamic=False)
        return model, model

    def images(self, n, seed):
        g = torch.Generator().manual_seed(seed)
        x = torch.randn(n, 1, 32, 32, generator=g).clamp(-1.0, 1.0)
        return x.to(self.device).contiguous(memory_format=self.memory_format)


def train_step_fn(s, mode):
    """One call = one step of the reference recipe (see the module's doc)."""
    model, net = s.model(mode)
    sched = ddpm_ddim.make_schedule(T=1000, device=str(s.device))
    opt = torch.optim.AdamW(model.parameters(), lr=LR)
    ema = ddpm_ddim.EMA(model, decay=EMA_DECAY)
    x0 = s.images(s.a.batch, 1)
    model.train()

    def step():
        # ddpm_ddim.train_step, line for line, with the network called through `net` (the compiled wrapper in
        # compile mode) and autocast around the forward and the loss only.
        B = x0.size(0)
        t = torch.randint(0, sched.T, (B,), device=x0.device)
        noise = torch.randn_like(x0)
        x_t = ddpm_ddim.q_sample(x0, t, noise, sched)
        with s.autocast():
            noise_pred = net(x_t, t)
            loss = torch.nn.functional.mse_loss(noise_pred, noise)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), max_norm=1.0)
        opt.step()
        loss_value = loss.item()
        ema.update(model)
        return loss_value

    return step


def sample_step_fn(s, mode):
    """One call = one DDIM-50 step on --n images at t = 500 (see the module's doc)."""
    model, net = s.model(mode)
    model.eval()
    sched = ddpm_ddim.make_schedule(T=1000, device=str(s.device))
    ts = ddpm_ddim.make_ddim_timesteps(sched.T, DDIM_STEPS)
    i = min(range(len(ts)), key=lambda j: abs(ts[j] - SAMPLE_T))
    n = s.a.n
    x = s.images(n, 2)
    t_batch = torch.full((n,), ts[i], device=s.device, dtype=torch.long)

    @torch.no_grad()
    def step():
        with s.autocast():
            eps = net(x, t_batch)
        z = torch.randn_like(x)
        return ddim_step(x, eps.float(), z, i, ts, sched, 0.0)

    return step


def bench(s, what, mode):
    build = train_step_fn if what == "train" else sample_step_fn
    step = build(s, mode)
    warmup = max(s.a.warmup, 2 if mode == "compile" else 1)
    for w in range(warmup):
        if mode == "compile" and w == 0:
            log(f"{what}, compile: first call (compilation, can take a minute) ...")
        t0 = time.perf_counter()
        step()
        s.sync()
        if mode == "compile" and w == 0:
            log(f"{what}, compile: first call took {time.perf_counter() - t0:.1f} s")
    times = [s.time_ms(step) for _ in range(s.a.iters)]
    return times


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--device", default="cuda", choices=["cuda", "cpu"])
    ap.add_argument("--what", default="both", choices=["train", "sample", "both"])
    ap.add_argument("--modes", default="eager,compile", help="comma list of eager, compile")
    ap.add_argument("--batch", type=int, default=128, help="training batch")
    ap.add_argument("--n", type=int, default=64, help="images of the sampler step")
    ap.add_argument("--base", type=int, default=64, help="UNet width (ddpm bench --base)")
    ap.add_argument("--t-dim", type=int, default=128, help="time-embedding width (ddpm bench --t-dim)")
    ap.add_argument("--iters", type=int, default=20, help="timed calls; the median is reported")
    ap.add_argument("--warmup", type=int, default=3, help="untimed calls first (compile mode: at least 2)")
    ap.add_argument("--precision", default="auto", choices=["auto", "bf16", "fp32"],
                    help="auto: bf16 autocast on CUDA, fp32 on the CPU")
    ap.add_argument("--threads", type=int, default=0, help="CPU threads (default: PyTorch's choice)")
    a = ap.parse_args()
    if min(a.iters, a.batch, a.n, a.base, a.t_dim) < 1 or a.warmup < 0:
        sys.exit("error: --iters, --batch, --n, --base and --t-dim must be at least 1, --warmup at least 0")
    if a.base % 8 or a.t_dim % 2:
        sys.exit("error: the reference's UNet needs --base a multiple of 8 (GroupNorm(8, ...)) and an even --t-dim")
    modes = [m.strip() for m in a.modes.split(",") if m.strip()]
    bad = [m for m in modes if m not in ("eager", "compile")]
    if bad or not modes:
        sys.exit(f"error: --modes: {', '.join(bad) or 'empty'}: expected a comma list of eager, compile")
    if a.device == "cuda" and not torch.cuda.is_available():
        sys.exit("error: --device cuda: PyTorch sees no CUDA device (torch %s); --device cpu runs on the CPU"
                 % torch.__version__)
    if a.threads:
        torch.set_num_threads(a.threads)
    torch.backends.cudnn.benchmark = True
    s = Setup(a)
    if s.precision == "fp32":
        torch.backends.cudnn.allow_tf32 = False
        torch.backends.cuda.matmul.allow_tf32 = False
    whats = ["train", "sample"] if a.what == "both" else [a.what]
    if s.cuda:
        log(f"PyTorch {torch.__version__}, cuDNN {torch.backends.cudnn.version()}, {torch.cuda.get_device_name(0)}")
    ok = 0
    # Every eager measurement first: a compilation that runs past the caller's time limit loses only its own lines.
    for mode in modes:
        for what in whats:
            row = {
                "what": what, "mode": mode, "device": a.device, "precision": s.precision,
                "amp": "autocast-bf16" if s.amp else "none", "channels_last": s.amp,
                "batch": a.batch if what == "train" else a.n, "base": a.base, "t_dim": a.t_dim, "iters": a.iters,
            }
            try:
                times = bench(s, what, mode)
                row.update(median_ms=round(statistics.median(times), 4), min_ms=round(min(times), 4),
                           max_ms=round(max(times), 4))
                ok += 1
            except Exception as e:  # one failing mode (e.g. torch.compile without a C++ compiler) spares the others
                traceback.print_exc(file=sys.stderr)
                first = (str(e).strip().splitlines() or [""])[0]
                row["error"] = f"{type(e).__name__}: {first}"[:400]
            row["torch"] = torch.__version__
            print(json.dumps(row, separators=(",", ":")), flush=True)
            if s.cuda:
                torch.cuda.empty_cache()
    sys.exit(0 if ok else 1)


if __name__ == "__main__":
    main()

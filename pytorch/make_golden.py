"""
make_golden.py -- the golden tensors of tests/golden/, made by running the reference (ddpm_ddim.py).

Usage:
  python3 pytorch/make_golden.py OUT_DIR   (needs torch, numpy, safetensors; pillow for mnist_resize)

Writes into OUT_DIR:
  weights.safetensors  UNet(in_ch=1, base=16, t_dim=32) state_dict after
                       torch.manual_seed(0), exact PyTorch names
  io.safetensors       fixed x/t/noise, time embedding (before and after the
                       MLP), eps = model(x, t), MSE loss, grad.<name> for every
                       parameter, clip stats, q_sample case, schedule buffers
  acts.safetensors     per-module forward activations for the same x/t
                       (to localise a mismatch; optional)
  steps.safetensors    single DDPM and DDIM update steps with fixed x/eps/z
                       for several t, make_ddim_timesteps grids, and one
                       deterministic DDIM(eta=0) trajectory of the golden model
  optim.safetensors    params after one AdamW step (lr 2e-4, torch defaults,
                       grad clip 1.0) and EMA shadow after one update (0.9999);
                       plus a small synthetic 3-step AdamW+clip case
  mnist_resize.safetensors
                       the reference's input pipeline (PIL bilinear resize to
                       32x32, then [-1, 1]) on the first 16 training images of
                       data/mnist; skipped, with a message, without pillow
  README.md            every tensor's name/shape/dtype, and tolerances
                       (from golden_readme_template.md beside this file)
  report.json          float32-vs-float64 discrepancies measured here

Every tensor is computed with the reference's own code (ddpm_ddim.py) in float32
on CPU, 2 threads.  As a yard-stick for tolerances, everything is recomputed in float64
from the same initial weights/inputs and the max |f32 - f64| is recorded.
check_golden.py regenerates into a temporary folder and compares with tests/golden/.
"""
from __future__ import annotations

import copy
import gzip
import json
import math
import os
import sys

import torch
import torch.nn.functional as F
from safetensors.torch import save_file, load_file

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(HERE)
sys.path.insert(0, HERE)
import ddpm_ddim as ref  # noqa: E402
from sampler_steps import ddim_step, ddpm_step  # noqa: E402

ref.device = "cpu"  # the reference picks CUDA when it can; the goldens are CPU float32
torch.set_num_threads(2)

BASE, T_DIM, B = 16, 32, 4
T_VALUES = [0, 10, 500, 999]
LR, CLIP, EMA_DECAY = 2e-4, 1.0, 0.9999
DDPM_TS = [999, 500, 10, 1, 0]
DDIM_IS = [50, 25, 1, 0]          # indices into make_ddim_timesteps(1000, 50)
DDIM_ETAS = [0.0, 1.0]
DDIM_GRIDS = [(1000, 50), (1000, 25), (1000, 10), (1000, 7), (1000, 1000), (1000, 3000), (1000, 1)]
TRAJ_N, TRAJ_STEPS = 2, 10


def c(t: torch.Tensor) -> torch.Tensor:
    return t.detach().contiguous().clone()


class _StubModel(torch.nn.Module):
    """Cheap deterministic eps(x, t) used only to check ddpm_step/ddim_step."""
    def forward(self, x, t):
        return 0.7 * x + (t.float() / 1000.0)[:, None, None, None] - 0.3


def verify_step_functions(sched):
    stub = _StubModel()
    n = 2
    # DDPM (the reference's full T=1000 loop) vs. ddpm_step with the same RNG draws.
    torch.manual_seed(123)
    full = ref.sample(stub, sched, n=n)
    torch.manual_seed(123)
    x = torch.randn(n, 1, 32, 32)
    for t in reversed(range(sched.T)):
        eps = stub(x, torch.full((n,), t, dtype=torch.long))
        z = torch.randn_like(x) if t > 0 else None
        x = ddpm_step(x, eps, z, t, sched)
    assert torch.equal(full, x.clamp(-1, 1)), "ddpm_step does not reproduce the reference's sample()"
    # DDIM, eta 0 and 1.
    for eta in (0.0, 1.0):
        torch.manual_seed(321)
        full = ref.sample_ddim(stub, sched, n=n, num_steps=50, eta=eta)
        torch.manual_seed(321)
        x = torch.randn(n, 1, 32, 32)
        ts = ref.make_ddim_timesteps(sched.T, 50)
        for i in reversed(range(len(ts))):
            eps = stub(x, torch.full((n,), ts[i], dtype=torch.long))
            z = torch.randn_like(x) if i > 0 else torch.zeros_like(x)
            x = ddim_step(x, eps, z, i, ts, sched, eta)
        assert torch.equal(full, x.clamp(-1, 1)), f"ddim_step(eta={eta}) does not reproduce the reference's sample_ddim()"


# ---------------------------------------------------------------------------
# float64 yard-stick: the reference's code with .double() weights.  Its
# TimeEmbedding does `t[:, None].float()` (forces float32), so the f64 model
# has that one forward swapped for an f64 sinusoid.
# ---------------------------------------------------------------------------

def sinusoid_f64(t: torch.Tensor, dim: int) -> torch.Tensor:
    half = dim // 2
    freqs = torch.exp(-math.log(10000) * torch.arange(half, dtype=torch.float64) / half)
    args = t[:, None].double() * freqs[None]
    return torch.cat([args.sin(), args.cos()], dim=-1)


def make_f64_model(model32):
    m = copy.deepcopy(model32).double()

    def time_fwd(t, _te=m.time):
        return _te.mlp(sinusoid_f64(t, _te.dim))
    m.time.forward = time_fwd
    return m


def make_schedule_f64(T=1000):
    """The reference's make_schedule run with float64 as torch's default dtype, and its alphas_bar_prev."""
    old = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)
    try:
        sched = ref.make_schedule(T=T)
    finally:
        torch.set_default_dtype(old)
    return sched, F.pad(sched.alphas_bar[:-1], (1, 0), value=1.0)


def check_recipes(io) -> dict:
    """Plain-f32/f64 recipes (as a Rust port would write them) vs torch's
    f32 schedule; returns the number of mismatching elements per buffer."""
    import numpy as np
    f = np.float32
    T = io["sched.betas"].numel()
    i = np.arange(T)
    start, end = f(1e-4), f(2e-2)
    step = (end - start) / f(T - 1)                                   # f32 ops
    b = np.where(i < T // 2, np.float64(start) + np.float64(step) * i,
                 np.float64(end) - np.float64(step) * (T - 1 - i)).astype(f)
    out = {}
    g = {k: v.numpy() for k, v in io.items() if k.startswith("sched.")}
    out["betas (f32 step, symmetric halves, f64 eval, round)"] = int((b != g["sched.betas"]).sum())
    naive = (start + step * i.astype(f)).astype(f)
    out["betas (naive f32 start + i*step)"] = int((naive != g["sched.betas"]).sum())
    a = (f(1) - b).astype(f)
    out["alphas (f32 1 - betas)"] = int((a != g["sched.alphas"]).sum())
    acc, ab = 1.0, np.empty(T, f)
    for k in range(T):
        acc *= float(a[k])
        ab[k] = f(acc)
    out["alphas_bar (cumprod with f64 accumulator, round each)"] = int((ab != g["sched.alphas_bar"]).sum())
    ab32 = np.cumprod(a, dtype=f)
    out["alphas_bar (cumprod with f32 accumulator)"] = int((ab32 != g["sched.alphas_bar"]).sum())
    abp = np.concatenate([[f(1)], ab[:-1]]).astype(f)
    pv = (b * (f(1) - abp) / (f(1) - ab)).astype(f)
    out["posterior_variance (f32, b*(1-abp)/(1-ab) left to right)"] = int((pv != g["sched.posterior_variance"]).sum())
    out["sqrt_alphas_bar (IEEE f32 sqrt)"] = int((np.sqrt(ab) != g["sched.sqrt_alphas_bar"]).sum())
    out["sqrt_one_minus_alphas_bar (IEEE f32 sqrt(1-ab))"] = int((np.sqrt(f(1) - ab) != g["sched.sqrt_one_minus_alphas_bar"]).sum())
    out["sqrt_recip_alphas (IEEE f32 sqrt(1/a))"] = int((np.sqrt((f(1) / a).astype(f)) != g["sched.sqrt_recip_alphas"]).sum())
    # max ulp distance for the sqrt ones
    def ulps(x, y):
        return int(np.abs(x.view(np.int32).astype(np.int64) - y.view(np.int32).astype(np.int64)).max())
    out["max ulp, sqrt-derived buffers"] = max(ulps(np.sqrt(ab), g["sched.sqrt_alphas_bar"]),
                                              ulps(np.sqrt(f(1) - ab), g["sched.sqrt_one_minus_alphas_bar"]),
                                              ulps(np.sqrt((f(1) / a).astype(f)), g["sched.sqrt_recip_alphas"]))
    return out


def np_adamw_f32(p, g, m, v, k, lr=LR, b1=0.9, b2=0.999, eps=1e-8, wd=0.01):
    """Plain numpy float32 AdamW step in torch's operation order (what a port
    would write). Returns new (p, m, v)."""
    import numpy as np
    f = np.float32
    p = (p * f(1 - lr * wd)).astype(f)
    m = (m + (g - m) * f(1 - b1)).astype(f)
    v = (v * f(b2) + f(1 - b2) * g * g).astype(f)
    step_size = lr / (1 - b1 ** k)
    bc2_sqrt = math.sqrt(1 - b2 ** k)
    denom = (np.sqrt(v) / f(bc2_sqrt) + f(eps)).astype(f)
    p = (p + f(-step_size) * (m / denom)).astype(f)
    return p, m, v


def np_clip_coef(grads, max_norm=CLIP):
    import numpy as np
    f = np.float32
    total = f(math.sqrt(sum(float((g.astype(np.float64) ** 2).sum()) for g in grads)))
    return total, min(f(1.0), f(max_norm) / (total + f(1e-6)))


def self_checks(sd, io, optim) -> dict:
    """Independent numpy-f32 ports of clip/AdamW/EMA and a naive f32
    schedule, compared with the goldens (substantiates README tolerances)."""
    import numpy as np
    f = np.float32
    out = {}
    names = list(sd)
    grads = [io["grad." + n].numpy() for n in names]
    total, coef = np_clip_coef(grads)
    out["clip total_norm: numpy vs golden (rel)"] = abs(float(total) - io["clip.total_norm"].item()) / io["clip.total_norm"].item()
    worst = 0.0
    worst_ema = 0.0
    for n, g in zip(names, grads):
        p0 = sd[n].numpy()
        p1, _, _ = np_adamw_f32(p0, (g * coef).astype(f), np.zeros_like(p0), np.zeros_like(p0), 1)
        worst = max(worst, float(np.abs(p1 - optim["adamw1." + n].numpy()).max()))
        e = (p0 * f(EMA_DECAY) + optim["adamw1." + n].numpy() * f(1 - EMA_DECAY)).astype(f)
        worst_ema = max(worst_ema, float(np.abs(e - optim["ema1." + n].numpy()).max()))
    out["adamw1 from golden grads: numpy-f32 port, max abs"] = worst
    out["ema1 from golden adamw1: numpy-f32 port, max abs"] = worst_ema
    p = optim["synth.p0"].numpy()
    m = np.zeros_like(p)
    v = np.zeros_like(p)
    w = 0.0
    for k in (1, 2, 3):
        g = optim[f"synth.g{k}"].numpy()
        tn, cf = np_clip_coef([g])
        w = max(w, abs(float(tn) - optim[f"synth.total_norm{k}"].item()))
        p, m, v = np_adamw_f32(p, (g * cf).astype(f), m, v, k)
        w = max(w, float(np.abs(p - optim[f"synth.p{k}"].numpy()).max()))
    w = max(w, float(np.abs(m - optim["synth.exp_avg3"].numpy()).max()),
            float(np.abs(v - optim["synth.exp_avg_sq3"].numpy()).max()))
    out["synth 3-step: numpy-f32 port, max abs over p1..p3, state, norms"] = w
    # naive f32 schedule port
    T = 1000
    i = np.arange(T)
    b = (f(1e-4) + ((f(2e-2) - f(1e-4)) / f(T - 1)) * i.astype(f)).astype(f)
    a = (f(1) - b).astype(f)
    ab = np.cumprod(a, dtype=f)
    abp = np.concatenate([[f(1)], ab[:-1]]).astype(f)
    naive = {"betas": b, "alphas": a, "alphas_bar": ab, "sqrt_alphas_bar": np.sqrt(ab),
             "sqrt_one_minus_alphas_bar": np.sqrt(f(1) - ab), "sqrt_recip_alphas": np.sqrt(f(1) / a),
             "posterior_variance": (b * (f(1) - abp) / (f(1) - ab)).astype(f)}
    for k, val in naive.items():
        gold = io["sched." + k].numpy().astype(np.float64)
        d = np.abs(val.astype(np.float64) - gold)
        rel = d / np.maximum(np.abs(gold), 1e-30)
        rel[gold == 0] = d[gold == 0]
        out[f"naive f32 schedule port: {k} max abs / max rel"] = [float(d.max()), float(rel.max())]
    return out


def mnist_resize(out_dir: str) -> bool:
    """The reference's input pipeline (transforms.Resize(32) on a PIL image, ToTensor, Normalize((0.5,), (0.5,)))
    on the first 16 images of data/mnist's training set. PIL resizes uint8 and rounds, so `resized_u8` is exact."""
    try:
        from PIL import Image
    except ImportError:
        print("pillow is not installed: mnist_resize.safetensors not written", file=sys.stderr)
        return False
    import numpy as np
    n = 16
    mnist = os.path.join(REPO, "data", "mnist")
    with gzip.open(os.path.join(mnist, "train-images-idx3-ubyte.gz")) as f:
        images = np.frombuffer(f.read(16 + n * 28 * 28)[16:], np.uint8).reshape(n, 28, 28)
    with gzip.open(os.path.join(mnist, "train-labels-idx1-ubyte.gz")) as f:
        labels = np.frombuffer(f.read(8 + n)[8:], np.uint8)
    resized = np.stack([np.asarray(Image.fromarray(im).resize((32, 32), Image.BILINEAR)) for im in images])
    resized_t = torch.from_numpy(resized.copy())
    normalized = (resized_t.float().div(255) - 0.5) / 0.5  # ToTensor, then Normalize((0.5,), (0.5,))
    save_file({"mnist_u8": torch.from_numpy(images.copy()), "labels": torch.from_numpy(labels.copy()),
               "resized_u8": resized_t, "normalized": normalized.contiguous()},
              os.path.join(out_dir, "mnist_resize.safetensors"))
    return True


def diff(a32: torch.Tensor, a64: torch.Tensor) -> dict:
    a = a32.double()
    d = (a - a64).abs()
    scale = a64.abs().max().item()
    return {"max_abs": d.max().item(), "max_abs_over_maxref": d.max().item() / max(scale, 1e-300),
            "max_ref": scale}


# ---------------------------------------------------------------------------

def main(out_dir: str):
    os.makedirs(out_dir, exist_ok=True)
    report = {"torch": torch.__version__, "threads": torch.get_num_threads(), "diffs": {}}
    D = report["diffs"]

    # -------- model ----------------------------------------------------
    torch.manual_seed(0)
    model = ref.UNet(in_ch=1, base=BASE, t_dim=T_DIM)
    gn = {n: (m.num_groups, m.num_channels) for n, m in model.named_modules()
          if isinstance(m, torch.nn.GroupNorm)}
    assert all(ch % g == 0 for g, ch in gn.values())
    report["groupnorms"] = {k: list(v) for k, v in gn.items()}
    sd = {k: c(v) for k, v in model.state_dict().items()}
    assert list(sd) == [n for n, _ in model.named_parameters()], "state_dict has non-parameter entries"
    save_file(sd, os.path.join(out_dir, "weights.safetensors"))
    report["n_params"] = sum(v.numel() for v in sd.values())

    model64 = make_f64_model(model)

    # -------- fixed inputs (drawn in this order after manual_seed(1)) --
    torch.manual_seed(1)
    x = torch.randn(B, 1, 32, 32)
    noise = torch.randn(B, 1, 32, 32)
    x0 = torch.rand(B, 1, 32, 32) * 2 - 1
    t = torch.tensor(T_VALUES, dtype=torch.long)

    sched = ref.make_schedule(T=1000)
    sched64, abar_prev64 = make_schedule_f64(1000)
    verify_step_functions(sched)
    report["step_functions_match_reference_samplers"] = True

    io = {"x": x, "t": t, "noise": noise}

    # time embedding
    half = T_DIM // 2
    # The reference's frequency table, its own expression; checked below against what its forward uses.
    io["t_freqs"] = torch.exp(-math.log(10000) * torch.arange(half) / half)
    captured = {}
    h = model.time.mlp[0].register_forward_hook(lambda m, i, o: captured.__setitem__("in", i[0].detach().clone()))
    with torch.no_grad():
        io["t_emb"] = model.time(t)
    h.remove()
    io["t_emb_sin"] = captured["in"]  # the sinusoid, as the reference's TimeEmbedding feeds it to its MLP
    args = t[:, None].float() * io["t_freqs"][None]
    assert torch.equal(torch.cat([args.sin(), args.cos()], dim=-1), io["t_emb_sin"])
    D["t_emb_sin"] = diff(io["t_emb_sin"], sinusoid_f64(t, T_DIM))
    with torch.no_grad():
        D["t_emb"] = diff(io["t_emb"], model64.time(t))

    # Sensitivity: the same f32 model, but with correctly rounded freqs
    # (f64 exp rounded to f32; differs from torch's f32 exp by 1 ulp in some
    # entries) and with t*freq formed in f64.  Shows what an independent
    # sinusoid implementation costs downstream.
    freqs_cr = torch.exp(-math.log(10000) * torch.arange(half, dtype=torch.float64) / half).float()
    report["t_freqs_ulp_mismatch_vs_correctly_rounded"] = int((freqs_cr != io["t_freqs"]).sum())
    with torch.no_grad():
        args = t[:, None].float() * freqs_cr[None]
        sin_cr = torch.cat([args.sin(), args.cos()], dim=-1)
        args64 = t[:, None].double() * io["t_freqs"].double()[None]
        sin_a64 = torch.cat([args64.sin(), args64.cos()], dim=-1).float()
        te = model.time
        orig_fwd = te.forward
        te.forward = lambda tt: te.mlp(sin_cr)
        eps_cr = model(x, t)
        te.forward = orig_fwd
    report["sensitivity"] = {
        "t_emb_sin: correctly-rounded freqs vs torch freqs (max abs)": (sin_cr - io["t_emb_sin"]).abs().max().item(),
        "t_emb_sin: args t*freq formed in f64 vs f32 (max abs)": (sin_a64 - io["t_emb_sin"]).abs().max().item(),
        "eps: correctly-rounded freqs vs golden (max abs)": None,  # filled below
    }

    # forward + activations
    acts = {}
    hooks = []
    act_modules = ["time", "in_conv", "down1", "pool1", "down2", "pool2", "mid",
                   "up2", "dec2", "up1", "dec1", "out_norm", "out_conv"]
    for name in act_modules:
        mod = getattr(model, name)
        hooks.append(mod.register_forward_hook(
            lambda m, i, o, name=name: acts.__setitem__("act." + name, o.detach().clone())))
    model.zero_grad(set_to_none=True)
    eps = model(x, t)
    for hk in hooks:
        hk.remove()
    loss = F.mse_loss(eps, noise)
    loss.backward()
    io["eps"] = c(eps)
    report["sensitivity"]["eps: correctly-rounded freqs vs golden (max abs)"] = (eps_cr - eps).abs().max().item()
    io["loss"] = loss.detach().reshape(1).clone()
    grads = {n: c(p.grad) for n, p in model.named_parameters()}
    for n, g in grads.items():
        io["grad." + n] = g

    # f64 yard-stick for forward/backward
    acts64 = {}
    hooks = [getattr(model64, name).register_forward_hook(
        lambda m, i, o, name=name: acts64.__setitem__("act." + name, o.detach().clone()))
        for name in act_modules]
    eps64 = model64(x.double(), t)
    for hk in hooks:
        hk.remove()
    loss64 = F.mse_loss(eps64, noise.double())
    loss64.backward()
    D["eps"] = diff(io["eps"], eps64)
    D["loss"] = diff(io["loss"], loss64.detach().reshape(1))
    for k in acts:
        D[k] = diff(acts[k], acts64[k])
    gd = {n: diff(grads[n], p.grad) for n, p in model64.named_parameters()}
    D["grad.* (worst over params, abs)"] = max(gd.values(), key=lambda d: d["max_abs"])
    D["grad.* (worst over params, rel-to-max)"] = max(gd.values(), key=lambda d: d["max_abs_over_maxref"])
    report["grad_diffs_per_param"] = gd

    # -------- clip + AdamW + EMA (model) --------------------------------
    ema = ref.EMA(model, decay=EMA_DECAY)
    opt = torch.optim.AdamW(model.parameters(), lr=LR)
    report["adamw_defaults"] = {k: (list(v) if isinstance(v, tuple) else v)
                                for k, v in opt.defaults.items() if isinstance(v, (int, float, bool, tuple)) or v is None}
    total_norm = torch.nn.utils.clip_grad_norm_(model.parameters(), max_norm=CLIP)
    io["clip.total_norm"] = total_norm.detach().reshape(1).clone()
    io["clip.coef"] = torch.clamp(CLIP / (total_norm.detach() + 1e-6), max=1.0).reshape(1)
    opt.step()
    ema.update(model)
    optim = {}
    for n, p in model.named_parameters():
        optim["adamw1." + n] = c(p)
    for k, v in ema.shadow.items():
        optim["ema1." + k] = c(v)

    # f64 optimizer on f64 grads
    opt64 = torch.optim.AdamW(model64.parameters(), lr=LR)
    ema64 = ref.EMA(model64, decay=EMA_DECAY)
    tn64 = torch.nn.utils.clip_grad_norm_(model64.parameters(), max_norm=CLIP)
    D["clip.total_norm"] = diff(io["clip.total_norm"], tn64.reshape(1))
    opt64.step()
    ema64.update(model64)
    p64 = dict(model64.named_parameters())
    ad = {n: diff(optim["adamw1." + n], p64[n].detach()) for n in p64}
    D["adamw1.* (worst, abs)"] = max(ad.values(), key=lambda d: d["max_abs"])
    ed = {n: diff(optim["ema1." + n], ema64.shadow[n]) for n in p64}
    D["ema1.* (worst, abs)"] = max(ed.values(), key=lambda d: d["max_abs"])
    tot = sum(v.numel() for v in sd.values())
    cnt = {th: sum(int(((optim["adamw1." + n].double() - p64[n].detach()).abs() > th).sum()) for n in p64)
           for th in (1e-7, 1e-6, 1e-5, 1e-4)}
    report["adamw1_end_to_end_elements_over"] = {f"{th:g}": f"{cnt[th]} of {tot}" for th in cnt}
    # update size relative to lr: how far params moved
    moved = max((optim["adamw1." + n] - sd[n]).abs().max().item() for n in sd)
    report["adamw1_max_param_change"] = moved

    # Optimizer-only replay: apply AdamW in f64 to the *stored f32 grads* to
    # show what an isolated optimizer test can reach.
    rep = {}
    for n in sd:
        g = grads[n].double() * io["clip.coef"].double()
        p = sd[n].double() * (1 - LR * 0.01)
        m = 0.1 * g
        v = 0.001 * g * g
        p = p - (LR / 0.1) * m / (v.sqrt() / math.sqrt(0.001) + 1e-8)
        rep[n] = diff(optim["adamw1." + n], p)
    D["adamw1 replay from stored grads (f64 closed form), worst abs"] = max(rep.values(), key=lambda d: d["max_abs"])

    # -------- q_sample ---------------------------------------------------
    io["q.x0"] = x0
    io["q.xt"] = ref.q_sample(x0, t, noise, sched)
    D["q.xt"] = diff(io["q.xt"], ref.q_sample(x0.double(), t, noise.double(), sched64))

    # -------- schedule buffers -----------------------------------------
    sched_names = ["betas", "alphas", "alphas_bar", "sqrt_alphas_bar", "sqrt_one_minus_alphas_bar",
                   "sqrt_recip_alphas", "posterior_variance"]
    for nme in sched_names:
        io["sched." + nme] = c(getattr(sched, nme))
        D["sched." + nme] = diff(io["sched." + nme], getattr(sched64, nme))
    io["sched.alphas_bar_prev"] = F.pad(sched.alphas_bar[:-1], (1, 0), value=1.0)
    D["sched.alphas_bar_prev"] = diff(io["sched.alphas_bar_prev"], abar_prev64)
    # relative error of posterior_variance (small values at t=0)
    pv_rel = ((io["sched.posterior_variance"].double() - sched64.posterior_variance).abs()
              / sched64.posterior_variance.abs().clamp(min=1e-300)).max().item()
    report["sched.posterior_variance_max_rel"] = pv_rel
    ab_rel = ((io["sched.alphas_bar"].double() - sched64.alphas_bar).abs() / sched64.alphas_bar).max().item()
    report["sched.alphas_bar_max_rel"] = ab_rel
    report["recipe_mismatches_of_1000"] = check_recipes(io)
    save_file({k: c(v) for k, v in io.items()}, os.path.join(out_dir, "io.safetensors"))
    save_file({k: c(v) for k, v in acts.items()}, os.path.join(out_dir, "acts.safetensors"))

    # -------- single sampler steps -------------------------------------
    steps = {}
    torch.manual_seed(2)
    sx = torch.randn(B, 1, 32, 32)
    seps = torch.randn(B, 1, 32, 32)
    sz = torch.randn(B, 1, 32, 32)
    steps.update({"step.x": sx, "step.eps": seps, "step.z": sz})
    worst = {"max_abs": 0.0}
    for tt in DDPM_TS:
        out = ddpm_step(sx, seps, sz, tt, sched)
        steps[f"ddpm.t{tt}"] = c(out)
        d = diff(out, ddpm_step(sx.double(), seps.double(), sz.double(), tt, sched64))
        if d["max_abs"] > worst["max_abs"]:
            worst = dict(d, where=f"t={tt}")
    D["ddpm.t*"] = worst
    ts50 = ref.make_ddim_timesteps(1000, 50)
    worst = {"max_abs": 0.0}
    for eta in DDIM_ETAS:
        for i in DDIM_IS:
            out = ddim_step(sx, seps, sz, i, ts50, sched, eta)
            steps[f"ddim.eta{int(eta)}.i{i}"] = c(out)
            d = diff(out, ddim_step(sx.double(), seps.double(), sz.double(), i, ts50, sched64, eta))
            if d["max_abs"] > worst["max_abs"]:
                worst = dict(d, where=f"eta={eta} i={i}")
    D["ddim.eta*.i*"] = worst
    for (TT, ns) in DDIM_GRIDS:
        steps[f"ddim_ts.T{TT}.n{ns}"] = torch.tensor(ref.make_ddim_timesteps(TT, ns), dtype=torch.long)

    # deterministic DDIM(eta=0) trajectory of the golden (initial) weights
    torch.manual_seed(0)
    model_init = ref.UNet(in_ch=1, base=BASE, t_dim=T_DIM)
    model_init.load_state_dict(sd)
    torch.manual_seed(3)
    xT = torch.randn(TRAJ_N, 1, 32, 32)
    torch.manual_seed(3)
    traj = ref.sample_ddim(model_init, sched, n=TRAJ_N, num_steps=TRAJ_STEPS, eta=0.0)
    steps["traj.ddim10.xT"] = c(xT)
    steps["traj.ddim10.out"] = c(traj)
    m64 = make_f64_model(model_init)
    with torch.no_grad():
        xx = xT.double()
        tsg = ref.make_ddim_timesteps(1000, TRAJ_STEPS)
        for i in reversed(range(len(tsg))):
            e = m64(xx, torch.full((TRAJ_N,), tsg[i], dtype=torch.long))
            xx = ddim_step(xx, e, torch.zeros_like(xx), i, tsg, sched64, 0.0)
        D["traj.ddim10.out"] = diff(traj, xx.clamp(-1, 1))
    save_file({k: c(v) for k, v in steps.items()}, os.path.join(out_dir, "steps.safetensors"))

    # -------- synthetic 3-step AdamW + clip ------------------------------
    torch.manual_seed(4)
    p0 = torch.randn(2, 32)
    g_list = [torch.randn(2, 32) * 0.05,           # norm < 1: clip coef clamps to 1
              torch.randn(2, 32) * 3.0,            # norm > 1: clipped
              torch.randn(2, 32) * 1e-3]
    g_list[2][0, :4] = 0.0                         # exact zeros
    g_list[2][1, :4] = 1e-9                        # below eps scale
    prm = torch.nn.Parameter(p0.clone())
    o = torch.optim.AdamW([prm], lr=LR)
    optim["synth.p0"] = c(p0)
    for k, g in enumerate(g_list, start=1):
        prm.grad = g.clone()
        tn = torch.nn.utils.clip_grad_norm_([prm], max_norm=CLIP)
        o.step()
        optim[f"synth.g{k}"] = c(g)
        optim[f"synth.total_norm{k}"] = tn.detach().reshape(1).clone()
        optim[f"synth.p{k}"] = c(prm)
    st = o.state[prm]
    optim["synth.exp_avg3"] = c(st["exp_avg"])
    optim["synth.exp_avg_sq3"] = c(st["exp_avg_sq"])
    save_file({k: c(v) for k, v in optim.items()}, os.path.join(out_dir, "optim.safetensors"))
    report["self_checks"] = self_checks(sd, io, optim)

    # -------- the input pipeline ------------------------------------------
    mnist_resize(out_dir)

    # -------- README ----------------------------------------------------
    with open(os.path.join(out_dir, "report.json"), "w") as f:
        json.dump(report, f, indent=1, default=float)
    write_readme(out_dir, report)
    print(json.dumps({k: v for k, v in report.items() if k != "grad_diffs_per_param"}, indent=1, default=float))


def _table(path):
    ts = load_file(path)
    rows = []
    for k, v in ts.items():
        rows.append(f"| `{k}` | {list(v.shape)} | {str(v.dtype).replace('torch.', '')} |")
    return ts, rows


def readme_fields(out_dir, report) -> dict:
    """The generated parts of README.md: tensor tables, file sizes and the measured numbers."""
    parts = {}
    sizes = {}
    for fn in ["weights", "io", "acts", "steps", "optim"]:
        p = os.path.join(out_dir, fn + ".safetensors")
        ts, rows = _table(p)
        # compress grad./adamw1./ema1. families into their base names
        if fn in ("io", "optim"):
            keep, fam = [], {}
            for r, k in zip(rows, ts):
                pre = k.split(".")[0] + "."
                if pre in ("grad.", "adamw1.", "ema1."):
                    fam[pre] = fam.get(pre, 0) + 1
                    continue
                keep.append(r)
            for pre, cnt in fam.items():
                keep.append(f"| `{pre}<param name>` | same as `<param name>` in weights.safetensors ({cnt} tensors) | float32 |")
            rows = keep
        parts[fn] = "\n".join(["| name | shape | dtype |", "|---|---|---|"] + rows)
        sizes[fn] = os.path.getsize(p)
    diffs = ["| quantity | max abs f32-f64 | max abs / max abs(ref) | max abs(ref) |", "|---|---|---|---|"]
    for k, d in report["diffs"].items():
        diffs.append(f"| {k} | {d['max_abs']:.3g} | {d['max_abs_over_maxref']:.3g} | {d['max_ref']:.3g} |")
    size_lines = "\n".join(f"- `{k}.safetensors`: {v:,} bytes" for k, v in sizes.items())
    return dict(
        torch=report["torch"].split("+")[0], n_params=f"{report['n_params']:,}",
        weights_table=parts["weights"], io_table=parts["io"], acts_table=parts["acts"],
        steps_table=parts["steps"], optim_table=parts["optim"], diff_table="\n".join(diffs),
        sizes=size_lines, groupnorms=", ".join(f"{k}: {g}x{ch // g}" for k, (g, ch) in report["groupnorms"].items()),
        ab_rel=f"{report['sched.alphas_bar_max_rel']:.3g}", pv_rel=f"{report['sched.posterior_variance_max_rel']:.3g}",
        moved=f"{report['adamw1_max_param_change']:.6g}",
        sensitivity="\n".join(f"- {k}: {v:.3g}" for k, v in report["sensitivity"].items()),
        adam_counts=", ".join(f"> {k}: {v}" for k, v in report["adamw1_end_to_end_elements_over"].items()),
        freq_mism=report["t_freqs_ulp_mismatch_vs_correctly_rounded"],
        self_checks="\n".join(f"- {k}: " + (", ".join(f"{x:.3g}" for x in v) if isinstance(v, list) else f"{v:.3g}")
                               for k, v in report["self_checks"].items()),
        recipes="\n".join(f"- {k}: {v}" for k, v in report["recipe_mismatches_of_1000"].items()),
    )


def write_readme(out_dir, report):
    """README.md from golden_readme_template.md (str.format fields; literal braces doubled)."""
    with open(os.path.join(HERE, "golden_readme_template.md")) as f:
        tmpl = f.read()
    with open(os.path.join(out_dir, "README.md"), "w") as f:
        f.write(tmpl.format(**readme_fields(out_dir, report)))


if __name__ == "__main__":
    if len(sys.argv) != 2:
        sys.exit("usage: make_golden.py OUT_DIR")
    main(sys.argv[1])

#!/usr/bin/env python3
"""Side-by-side benchmark: the blog post's PyTorch reference (`ddpm_ddim.py`) against our `ddpm` binary.

usage: python3 pytorch/compare.py [--rounds 5] [--threads 2] [--workloads train,sample64,sample16,ddim50]
                                  [--ddpm-bin target/release/ddpm] [--iters K] [--quick] [--json]

The PyTorch side is the reference itself: ddpm_ddim.py beside this file (model, schedule, training step, EMA and
samplers, imported, not copied).

Needs PyTorch, which this script never installs:  pip install torch numpy safetensors
(into a private folder if you like: pip install --target DIR torch numpy safetensors, then PYTHONPATH=DIR).
Needs our binary:                                  cargo build --release

Each workload runs in fresh processes, alternating A B A B for --rounds rounds: A = the PyTorch reference (this
file re-run as a worker), B = our binary. Both sides time the same thing the same way (one warm-up, then the
median of --iters timed repetitions, measured inside the process), on the same shapes, float32, with the same
thread count (torch.set_num_threads(N) plus OMP/MKL_NUM_THREADS=N for PyTorch, RAYON_NUM_THREADS=N for ours).
The peak memory of each side is the max RSS of its own process, read with os.wait4 when it exits.

Workloads (the defaults are train, sample64, sample16 and ddim50):
  train        one training step (forward, backward, clip_grad_norm_, AdamW, EMA) at batch 128, base 64
  trainB       the same at batch B
  sampleN      one sampler step at n = N (UNet forward at t = 500 under no_grad + the DDIM update);
               ours (`ddpm bench --what sample`) times the steps of a DDIM run (forward + update; the
               network's cost does not depend on t)
  ddimS[-nN][-eta1]
               a full DDIM-S run (the reference's make_ddim_timesteps grid: S+1 network calls when T % S leaves
               a remainder) at n = N (default 16), eta 0 (or 1); timed inside each process, weights exported
               once from the reference model's initialisation (seed 0) so both sides run the same network
  ddpm[-nN]    a full ancestral DDPM run (T = 1000 network calls) at n = N (default 64)
  ddim50 is DDIM-50 at n = 16.  The blog post's wall-clock table is: ddpm-n64,ddim100-n64-eta1,ddim50-n64,ddim20-n64,ddim10-n64

--quick shrinks everything (base 16, t_dim 32, batch 4, n <= 4, DDIM 5 steps, 2 iterations) for a smoke test;
its numbers mean nothing.

Output: a table on stdout; with --json, one JSON object per line on stdout instead (first a "meta" line with the
machine, then one line per workload) and the table on stderr.
"""
from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import re
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
sys.path.insert(0, str(HERE))  # ddpm_ddim.py and sampler_steps.py, imported by the PyTorch workers only
T_SAMPLE_STEP = 500  # the timestep of the one DDIM-50 step timed here (the network's cost does not depend on it)


# =====================================================================================================
# Workloads
# =====================================================================================================

class Workload:
    """One thing to time. kind: train | step | ddim | ddpm."""

    def __init__(self, name, kind, n, steps=None, eta=0.0, iters=1):
        self.name, self.kind, self.n, self.steps, self.eta, self.iters = name, kind, n, steps, eta, iters

    def label(self, base):
        if self.kind == "train":
            return f"train step  b={self.n} base={base}"
        if self.kind == "step":
            return f"sampler step n={self.n} base={base}"
        if self.kind == "ddim":
            return f"DDIM-{self.steps} eta={self.eta:g} n={self.n} base={base}"
        return f"DDPM-1000 n={self.n} base={base}"


def parse_workloads(spec, quick, iters):
    out = []
    for name in [s.strip() for s in spec.split(",") if s.strip()]:
        if m := re.fullmatch(r"train(\d+)?", name):
            w = Workload(name, "train", int(m[1] or 128), iters=3)
        elif m := re.fullmatch(r"sample(\d+)", name):
            w = Workload(name, "step", int(m[1]), iters=10)
        elif m := re.fullmatch(r"ddim(\d+)(?:-n(\d+))?(-eta1)?", name):
            w = Workload(name, "ddim", int(m[2] or 16), steps=int(m[1]), eta=1.0 if m[3] else 0.0)
        elif m := re.fullmatch(r"ddpm(?:-n(\d+))?", name):
            w = Workload(name, "ddpm", int(m[1] or 64))
        else:
            sys.exit(f"unknown workload {name!r} (want train[B], sampleN, ddimS[-nN][-eta1], ddpm[-nN])")
        if quick:
            if w.kind == "train":
                w.n = 4
            elif w.kind == "step":
                w.n = max(1, min(4, w.n // 16))
            elif w.kind == "ddim":
                w.n, w.steps = 2, 5
            else:
                w.n = 1
            if w.kind in ("train", "step"):
                w.iters = 2
        if iters and w.kind in ("train", "step"):
            w.iters = iters
        out.append(w)
    return out


# =====================================================================================================
# Side A: the PyTorch reference, run as `compare.py --torch-worker ...` in its own process
# =====================================================================================================

def load_reference(device):
    """The reference module (ddpm_ddim.py beside this file), its samplers pointed at `device`: the reference reads
    its module-level global `device` when sampling."""
    import ddpm_ddim
    ddpm_ddim.device = device
    return ddpm_ddim


def ddim_sampler_step(ref, model, sched, x, i, ts, eta):
    """One iteration of the reference's sample_ddim loop at index i of ts: its network call and noise draw, then
    its update (sampler_steps.ddim_step, checked against sample_ddim by make_golden.py). Call under no_grad."""
    import torch
    from sampler_steps import ddim_step
    n = x.shape[0]
    t_batch = torch.full((n,), ts[i], device=ref.device, dtype=torch.long)
    eps = model(x, t_batch)
    z = torch.randn_like(x) if i > 0 else torch.zeros_like(x)
    return ddim_step(x, eps, z, i, ts, sched, eta)


def save_state_dict(state_dict, path):
    """safetensors.torch.save_file when the package is there, else the same format written by hand."""
    try:
        from safetensors.torch import save_file
    except ImportError:
        save_file = None
    sd = {k: v.detach().float().contiguous().cpu() for k, v in state_dict.items()}
    if save_file is not None:
        save_file(sd, str(path))
        return
    header, blobs, off = {}, [], 0
    for k, v in sd.items():
        b = v.numpy().tobytes()
        header[k] = {"dtype": "F32", "shape": list(v.shape), "data_offsets": [off, off + len(b)]}
        blobs.append(b)
        off += len(b)
    h = json.dumps(header, separators=(",", ":")).encode()
    h += b" " * (-len(h) % 8)
    with open(path, "wb") as f:
        f.write(len(h).to_bytes(8, "little") + h + b"".join(blobs))


def torch_worker(a):
    """Runs one workload with the reference code and prints one JSON line (the same fields as `ddpm bench`)."""
    import resource
    import torch
    rss_import_kb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    torch.set_num_threads(a.threads)
    device = a.device
    ref = load_reference(device)
    torch.manual_seed(0)
    model = ref.UNet(in_ch=1, base=a.base, t_dim=a.t_dim).to(device)
    if a.torch_worker == "export":
        save_state_dict(model.state_dict(), a.out)
        return
    sched = ref.make_schedule(T=1000, device=device)
    sync = torch.cuda.synchronize if device == "cuda" else (lambda: None)
    times = []

    def timed(fn, iters, warmup=True):
        for k in range(iters + (1 if warmup else 0)):
            sync()
            start = time.perf_counter()
            fn()
            sync()
            if k > 0 or not warmup:
                times.append(time.perf_counter() - start)

    if a.torch_worker == "train":
        x0 = torch.randn(a.n, 1, 32, 32, device=device).clamp(-1, 1)
        ema = ref.EMA(model, decay=0.9999)
        opt = torch.optim.AdamW(model.parameters(), lr=2e-4)

        def step():  # one iteration of the reference's train() loop body
            ref.train_step(model, x0, sched, opt)
            ema.update(model)
        timed(step, a.iters)
    elif a.torch_worker == "step":
        x = torch.randn(a.n, 1, 32, 32, device=device)
        ts = ref.make_ddim_timesteps(sched.T, 50)
        i = ts.index(T_SAMPLE_STEP)
        model.eval()

        @torch.no_grad()
        def step():
            ddim_sampler_step(ref, model, sched, x, i, ts, 0.0)
        timed(step, a.iters)
    elif a.torch_worker == "ddim":
        timed(lambda: ref.sample_ddim(model, sched, n=a.n, num_steps=a.steps, eta=a.eta), 1, warmup=False)
    elif a.torch_worker == "ddpm":
        timed(lambda: ref.sample(model, sched, n=a.n), 1, warmup=False)
    else:
        sys.exit(f"unknown worker {a.torch_worker}")
    times.sort()
    rec = {"workload": a.torch_worker, "device": device, "batch": a.n, "base": a.base,
           "threads": torch.get_num_threads(), "iters": len(times), "median_s": times[len(times) // 2],
           "min_s": times[0], "max_s": times[-1], "rss_after_import_kb": rss_import_kb,
           "torch": torch.__version__}
    if device == "cuda":
        rec["cuda_max_allocated_bytes"] = torch.cuda.max_memory_allocated()
    print(json.dumps(rec), flush=True)


# =====================================================================================================
# The driver
# =====================================================================================================

def run_process(cmd, env):
    """Runs cmd to completion; returns (returncode, stdout, stderr, wall seconds, max RSS in KiB)."""
    with tempfile.TemporaryFile() as err:
        start = time.perf_counter()
        p = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=err, env=env)
        out = p.stdout.read()
        p.stdout.close()
        _, status, ru = os.wait4(p.pid, 0)
        wall = time.perf_counter() - start
        p.returncode = os.waitstatus_to_exitcode(status)
        err.seek(0)
        return p.returncode, out.decode(errors="replace"), err.read().decode(errors="replace"), wall, ru.ru_maxrss


def last_json(text):
    for line in reversed(text.strip().splitlines()):
        line = line.strip()
        if line.startswith("{"):
            return json.loads(line)
    raise ValueError("no JSON line in the output")


class Runner:
    def __init__(self, a, tmpdir):
        self.a, self.tmpdir, self.checkpoints = a, Path(tmpdir), {}
        base_env = {k: v for k, v in os.environ.items()
                    if k not in ("RAYON_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS")}
        self.torch_env = dict(base_env, OMP_NUM_THREADS=str(a.threads), MKL_NUM_THREADS=str(a.threads))
        self.ours_env = dict(base_env, RAYON_NUM_THREADS=str(a.threads))

    def torch_cmd(self, what, w=None, extra=()):
        a = self.a
        cmd = [sys.executable, str(Path(__file__).resolve()), "--torch-worker", what, "--threads", str(a.threads),
               "--device", a.device, "--base", str(a.base), "--t-dim", str(a.t_dim)]
        if w is not None:
            cmd += ["--n", str(w.n), "--iters", str(w.iters)]
            if w.steps is not None:
                cmd += ["--steps", str(w.steps), "--eta", str(w.eta)]
        return cmd + list(extra)

    def checkpoint(self):
        """A base/t_dim state dict exported from the reference's own initialisation (seed 0), made once."""
        key = (self.a.base, self.a.t_dim)
        if key not in self.checkpoints:
            path = self.tmpdir / f"reference_base{key[0]}_t{key[1]}.safetensors"
            rc, out, err, _, _ = run_process(self.torch_cmd("export", extra=["--out", str(path)]), self.torch_env)
            if rc != 0:
                raise RuntimeError(f"exporting the reference's weights failed:\n{err[-2000:]}")
            self.checkpoints[key] = path
        return self.checkpoints[key]

    def run_torch(self, w):
        rc, out, err, wall, rss = run_process(self.torch_cmd(w.kind, w), self.torch_env)
        if rc != 0:
            return {"error": f"exit {rc}: {err.strip()[-1500:]}", "rss_kb": rss, "wall_s": wall}
        rec = last_json(out)
        return dict(rec, rss_kb=rss, wall_s=wall)

    def run_ours(self, w):
        a = self.a
        if w.kind in ("train", "step"):
            cmd = [a.ddpm_bin, "bench", "--what", "train" if w.kind == "train" else "sample", "--batch", str(w.n),
                   "--base", str(a.base), "--t-dim", str(a.t_dim), "--iters", str(w.iters), "--device", a.device]
        else:
            out_path = self.tmpdir / "ours_samples.safetensors"
            cmd = [a.ddpm_bin, "sample", "--checkpoint", str(self.checkpoint()), "--n", str(w.n),
                   "--out", str(out_path), "--device", a.device, "--seed", "0"]
            cmd += ["--sampler", "ddpm"] if w.kind == "ddpm" else \
                ["--sampler", "ddim", "--steps", str(w.steps), "--eta", str(w.eta)]
        rc, out, err, wall, rss = run_process(cmd, self.ours_env)
        if rc != 0:
            return {"error": f"exit {rc}: {err.strip()[-1500:]}", "rss_kb": rss, "wall_s": wall}
        if w.kind in ("train", "step"):
            return dict(last_json(out), rss_kb=rss, wall_s=wall)
        # `ddpm sample` reports its sampling time (after loading the weights) on stderr, to 0.1 s:
        # "wrote PATH (N images, C network calls, X.Y s)"
        m = re.search(r"network calls, ([0-9.]+) s\)", err)
        if not m:
            return {"error": f"no timing line in `ddpm sample`'s output: {err.strip()[-500:]}", "rss_kb": rss}
        s = float(m[1])
        return {"median_s": s, "min_s": s, "max_s": s, "iters": 1, "threads": a.threads, "rss_kb": rss,
                "wall_s": wall, "resolution_s": 0.1}


def machine_info(a):
    info = {"kind": "meta", "date": datetime.datetime.now().astimezone().isoformat(timespec="seconds"),
            "host": platform.node(), "python": platform.python_version(), "cores": os.cpu_count(),
            "threads": a.threads, "device": a.device, "rounds": a.rounds, "quick": a.quick,
            "base": a.base, "t_dim": a.t_dim}
    try:
        cpuinfo = Path("/proc/cpuinfo").read_text()
        m = re.search(r"^model name\s*:\s*(.*)$", cpuinfo, re.M)
        info["cpu"] = m[1].strip() if m else "?"
        flags = re.search(r"^flags\s*:\s*(.*)$", cpuinfo, re.M)
        flags = set(flags[1].split()) if flags else set()
        info["avx2"], info["avx512f"] = "avx2" in flags, "avx512f" in flags
        info["loadavg_start"] = Path("/proc/loadavg").read_text().split()[:3]
    except OSError:
        pass
    try:
        info["commit"] = subprocess.run(["git", "-C", str(REPO), "rev-parse", "--short", "HEAD"], capture_output=True,
                                        text=True).stdout.strip()
        dirty = subprocess.run(["git", "-C", str(REPO), "status", "--porcelain", "--untracked-files=no"],
                               capture_output=True, text=True).stdout.strip()
        info["dirty"] = bool(dirty)
    except OSError:
        pass
    try:
        info["ddpm"] = subprocess.run([a.ddpm_bin, "--version"], capture_output=True, text=True).stdout.strip()
    except OSError:
        info["ddpm"] = "?"
    return info


def fmt_s(v):
    if v is None:
        return "-"
    return f"{v * 1e3:.1f} ms" if v < 1 else f"{v:.3f} s"


def fmt_mb(kb):
    return "-" if kb is None else f"{kb / 1024:.0f} MiB"


def summarise(results):
    ok = [r for r in results if "error" not in r]
    if not ok:
        return {"median_s": None, "best_s": None, "rounds_median_s": [], "peak_rss_kb": None,
                "error": results[-1].get("error") if results else "not run"}
    meds = [r["median_s"] for r in ok]
    s = {"median_s": statistics.median(meds), "best_s": min(r["min_s"] for r in ok), "rounds_median_s": meds,
         "peak_rss_kb": max(r["rss_kb"] for r in ok), "iters": ok[0].get("iters"), "threads": ok[0].get("threads")}
    if len(ok) < len(results):
        s["failed_rounds"] = len(results) - len(ok)
    for k in ("rss_after_import_kb", "torch", "resolution_s"):
        if k in ok[0]:
            s[k] = ok[0][k]
    return s


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0],
                                usage="python3 pytorch/compare.py [options]   "
                                      "(needs: pip install torch numpy safetensors; cargo build --release)")
    p.add_argument("--rounds", type=int, default=5, help="A B rounds per workload (default 5)")
    p.add_argument("--threads", type=int, default=2, help="threads for both sides (default 2)")
    p.add_argument("--workloads", default="train,sample64,sample16,ddim50",
                   help="comma list of train[B], sampleN, ddimS[-nN][-eta1], ddpm[-nN] "
                        "(default train,sample64,sample16,ddim50)")
    p.add_argument("--ddpm-bin", default=str(REPO / "target" / "release" / "ddpm"), help="our binary")
    p.add_argument("--iters", type=int, default=0,
                   help="timed repetitions per process for train/sample steps (default 3 for train, 10 for sample)")
    p.add_argument("--base", type=int, default=None, help="UNet width (default 64; 16 with --quick)")
    p.add_argument("--t-dim", type=int, default=None, help="time-embedding width (default 128; 32 with --quick)")
    p.add_argument("--device", default="cpu", choices=["cpu", "cuda"], help="both sides (default cpu)")
    p.add_argument("--quick", action="store_true", help="tiny sizes, 2 iterations: a smoke test, not a measurement")
    p.add_argument("--json", action="store_true", help="JSON lines on stdout, the table on stderr")
    # internal: the PyTorch side's worker process
    p.add_argument("--torch-worker", help=argparse.SUPPRESS)
    p.add_argument("--n", type=int, help=argparse.SUPPRESS)
    p.add_argument("--steps", type=int, help=argparse.SUPPRESS)
    p.add_argument("--eta", type=float, default=0.0, help=argparse.SUPPRESS)
    p.add_argument("--out", help=argparse.SUPPRESS)
    a = p.parse_args()
    if a.base is None:
        a.base = 16 if a.quick else 64
    if a.t_dim is None:
        a.t_dim = 32 if a.quick else 128

    if a.torch_worker:
        torch_worker(a)
        return

    if not Path(a.ddpm_bin).exists():
        sys.exit(f"{a.ddpm_bin} not found: run `cargo build --release` (or pass --ddpm-bin)")
    probe = subprocess.run([sys.executable, "-c", "import torch"], capture_output=True, text=True)
    if probe.returncode != 0:
        sys.exit("PyTorch is not importable: pip install torch numpy safetensors "
                 "(or pip install --target DIR ... and set PYTHONPATH=DIR)\n" + probe.stderr.strip()[-500:])
    workloads = parse_workloads(a.workloads, a.quick, a.iters)
    table = sys.stderr if a.json else sys.stdout
    meta = machine_info(a)
    if a.json:
        print(json.dumps(meta), flush=True)

    results = {w.name: {"torch": [], "ours": []} for w in workloads}
    with tempfile.TemporaryDirectory(prefix="ddpm-bench-") as tmp:
        runner = Runner(a, tmp)
        for r in range(a.rounds):
            for w in workloads:
                for side, fn in (("torch", runner.run_torch), ("ours", runner.run_ours)):  # A then B
                    rec = fn(w)
                    results[w.name][side].append(rec)
                    what = f"error: {rec['error'].splitlines()[-1]}" if "error" in rec else fmt_s(rec["median_s"])
                    print(f"[round {r + 1}/{a.rounds}] {w.label(a.base):34} {side:5} {what}"
                          f"  (peak {fmt_mb(rec.get('rss_kb'))}, process {rec.get('wall_s', 0):.1f} s)",
                          file=sys.stderr, flush=True)

    meta["loadavg_end"] = Path("/proc/loadavg").read_text().split()[:3] if Path("/proc/loadavg").exists() else None
    rows = []
    for w in workloads:
        t, o = summarise(results[w.name]["torch"]), summarise(results[w.name]["ours"])
        ratio = t["median_s"] / o["median_s"] if t["median_s"] and o["median_s"] else None
        row = {"kind": "result", "workload": w.name, "label": w.label(a.base), "n": w.n, "steps": w.steps,
               "eta": w.eta, "torch": t, "ours": o, "ratio_torch_over_ours": ratio,
               "rss_ratio_ours_over_torch": (o["peak_rss_kb"] / t["peak_rss_kb"]
                                             if t["peak_rss_kb"] and o["peak_rss_kb"] else None)}
        rows.append(row)
        if a.json:
            print(json.dumps(row), flush=True)

    print(file=table)
    print(f"# {meta.get('cpu', '?')}, {meta['cores']} cores, AVX-512: {'yes' if meta.get('avx512f') else 'no'}; "
          f"{a.threads} threads; device {a.device}; {a.rounds} rounds; {meta.get('ddpm', '?')} "
          f"commit {meta.get('commit', '?')}{' (dirty)' if meta.get('dirty') else ''}; "
          f"torch {next((r['torch'].get('torch') for r in rows if r['torch'].get('torch')), '?')}; "
          f"load {' '.join(meta.get('loadavg_start', []))} -> {' '.join(meta.get('loadavg_end') or [])}; "
          f"{meta['date']}" + ("; QUICK: smoke test, not a measurement" if a.quick else ""), file=table)
    load = float((meta.get("loadavg_start") or ["0"])[0])
    if load > 0.5:
        print(f"# WARNING: the machine was busy (1-min load {load:.2f} on {meta['cores']} cores before the first run): "
              "timings are unreliable, and PyTorch's OpenMP threads suffer far more from it than ours", file=table)
    hdr = f"{'workload':36} {'PyTorch':>11} {'ours':>11} {'torch/ours':>10} {'PyTorch peak':>13} {'ours peak':>10}"
    print(hdr, file=table)
    print("-" * len(hdr), file=table)
    for row in rows:
        t, o = row["torch"], row["ours"]
        ratio = f"{row['ratio_torch_over_ours']:.2f}x" if row["ratio_torch_over_ours"] else "-"
        print(f"{row['label']:36} {fmt_s(t['median_s']):>11} {fmt_s(o['median_s']):>11} {ratio:>10} "
              f"{fmt_mb(t['peak_rss_kb']):>13} {fmt_mb(o['peak_rss_kb']):>10}", file=table)
        for side in ("torch", "ours"):
            if row[side].get("error"):
                print(f"    {side} failed: {row[side]['error'].splitlines()[-1]}", file=table)
    print("times: median over rounds of each process's median (sampler steps: ours = UNet forward only; full runs: "
          "timed inside each process, ours to 0.1 s); torch/ours > 1 means ours is faster; peak = max RSS of the "
          "process (PyTorch's includes ~"
          f"{fmt_mb(next((r['torch'].get('rss_after_import_kb') for r in rows if r['torch'].get('rss_after_import_kb')), None))}"
          " for `import torch` alone)", file=table)


if __name__ == "__main__":
    main()

#!/usr/bin/env python3
"""The UNet's conv shapes timed in PyTorch: the counterpart of `ddpm bench --what convs --json`.

usage: python3 pytorch/conv_bench.py [--device cuda|cpu] [--precision bf16|fp32] [--batch 128] [--base 64]
                                     [--iters 20] [--threads N]

The same distinct shapes as src/cli/bench_convs.rs (every conv of the UNet in src/nn/unet.rs, layers of the same
shape merged into the first one's entry), each pass timed alone:
  forward      F.conv2d(x, w, b) / F.conv_transpose2d(x, w, b)
  input_grad   torch.autograd.grad of y with respect to x alone (dL/dy random), as the backward of the layer computes it
  weight_grad  torch.autograd.grad with respect to w alone
Each pass: one warm-up (with cudnn.benchmark, also the autotuning run), then the median of --iters timed runs; on CUDA
timed with CUDA events around the call, on the CPU with perf_counter. Under bf16 the tensors are bf16 and
channels_last (what autocast feeds cuDNN's tensor-core kernels), with torch.backends.cudnn.benchmark = True; fp32
keeps NCHW with TF32 off (our fp32 path is plain f32). Inputs are random (never zeros).

Prints one JSON line per (shape, pass) with the fields of ours: name, layers, pass, n, cin, cout, h, w, k, stride,
pad, transposed, precision, device, iters, median_ms, gflops.
"""
import argparse
import importlib.util
import json
import statistics
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F


def unet_layers(b):
    """(layer, cin, cout, side, k, stride, pad, transposed) of every conv of the UNet at width b, in forward order,
    from scripts/conv-cost.py (the one Python copy of the list, kept beside src/cli/bench_convs.rs's)."""
    path = Path(__file__).resolve().parent.parent / "scripts" / "conv-cost.py"
    spec = importlib.util.spec_from_file_location("conv_cost", path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod.convs(b)


def unet_convs(b):
    """(layers, cin, cout, side, k, stride, pad, transposed, needs_dx) of each distinct conv shape at width b, in
    forward order: the list of src/cli/bench_convs.rs."""
    every = unet_layers(b)
    shapes = []
    for layer, *dims in every:
        key = tuple(dims) + (layer != "in_conv",)  # the image needs no gradient: in_conv has no input_grad
        for s in shapes:
            if s[1:] == key:
                s[0].append(layer)
                break
        else:
            shapes.append(([layer],) + key)
    return shapes


def out_side(side, k, stride, pad, transposed):
    return (side - 1) * stride + k - 2 * pad if transposed else (side + 2 * pad - k) // stride + 1


def flops(n, cin, cout, side, k, stride, pad, transposed):
    """Useful FLOPs of one pass, as ConvShape::flops counts them: 2 per multiply-add of the conv's GEMM (of its
    adjoint's for a transposed conv)."""
    pixels = side * side if transposed else out_side(side, k, stride, pad, transposed) ** 2
    return 2 * n * pixels * cin * cout * k * k


class Timer:
    """Milliseconds of a callable: CUDA events on a GPU (the device's time for the queued work), else the host clock."""

    def __init__(self, device):
        self.cuda = device.type == "cuda"

    def __call__(self, fn):
        if self.cuda:
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            fn()
            end.record()
            end.synchronize()
            return start.elapsed_time(end)
        t0 = time.perf_counter()
        fn()
        return (time.perf_counter() - t0) * 1e3


def bench_shape(shape, n, dtype, device, iters, memory_format, timer, gen):
    layers, cin, cout, side, k, stride, pad, transposed, needs_dx = shape
    o = out_side(side, k, stride, pad, transposed)

    def rand(*size, scale=1.0):
        return (torch.randn(*size, generator=gen) * scale).to(device=device, dtype=dtype)

    x = rand(n, cin, side, side).contiguous(memory_format=memory_format)
    if transposed:
        w = rand(cin, cout, k, k, scale=(cout * k * k) ** -0.5)
        op = lambda x, w, b: F.conv_transpose2d(x, w, b, stride=stride, padding=pad)
    else:
        w = rand(cout, cin, k, k, scale=(cin * k * k) ** -0.5).contiguous(memory_format=memory_format)
        op = lambda x, w, b: F.conv2d(x, w, b, stride=stride, padding=pad)
    b = rand(cout, scale=0.1)
    gout = rand(n, cout, o, o).contiguous(memory_format=memory_format)

    passes = {"forward": None}
    if needs_dx:
        passes["input_grad"] = "x"
    passes["weight_grad"] = "w"
    results = []
    for name, wrt in passes.items():
        if wrt is None:
            def fn():
                with torch.no_grad():
                    op(x, w, b)
        else:
            # Only the one input requires a gradient, so autograd runs only its half of the backward; the forward
            # is recorded once outside the timed region and its graph kept for every repetition.
            xi = x.detach().requires_grad_(wrt == "x")
            wi = w.detach().requires_grad_(wrt == "w")
            y = op(xi, wi, b)
            target = xi if wrt == "x" else wi

            def fn(y=y, target=target):
                torch.autograd.grad(y, target, gout, retain_graph=True)
        fn()  # warm-up (and cuDNN's autotuning under cudnn.benchmark)
        times = [timer(fn) for _ in range(iters)]
        results.append((name, statistics.median(times)))
    return results


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--device", default="cuda", choices=["cuda", "cpu"])
    ap.add_argument("--precision", default="bf16", choices=["bf16", "fp32"])
    ap.add_argument("--batch", type=int, default=128)
    ap.add_argument("--base", type=int, default=64)
    ap.add_argument("--iters", type=int, default=20)
    ap.add_argument("--threads", type=int, default=0, help="CPU threads (default: PyTorch's choice)")
    a = ap.parse_args()
    if a.iters < 1 or a.batch < 1 or a.base < 1:
        sys.exit("error: --iters, --batch and --base must be at least 1")
    if a.device == "cuda" and not torch.cuda.is_available():
        sys.exit("error: --device cuda: PyTorch sees no CUDA device (torch %s); --device cpu runs on the CPU"
                 % torch.__version__)
    if a.threads:
        torch.set_num_threads(a.threads)
    device = torch.device(a.device)
    dtype = torch.bfloat16 if a.precision == "bf16" else torch.float32
    memory_format = torch.channels_last if a.precision == "bf16" else torch.contiguous_format
    torch.backends.cudnn.benchmark = True
    # fp32 is compared with our plain-f32 path: no TF32 on either side.
    torch.backends.cudnn.allow_tf32 = False
    torch.backends.cuda.matmul.allow_tf32 = False
    timer = Timer(device)
    gen = torch.Generator().manual_seed(0)
    for shape in unet_convs(a.base):
        layers, cin, cout, side, k, stride, pad, transposed, _ = shape
        for pass_name, ms in bench_shape(shape, a.batch, dtype, device, a.iters, memory_format, timer, gen):
            f = flops(a.batch, cin, cout, side, k, stride, pad, transposed)
            print(json.dumps({
                "name": layers[0], "layers": " ".join(layers), "pass": pass_name, "n": a.batch, "cin": cin,
                "cout": cout, "h": side, "w": side, "k": k, "stride": stride, "pad": pad, "transposed": transposed,
                "precision": a.precision, "device": a.device, "iters": a.iters, "median_ms": round(ms, 5),
                "gflops": round(f / (ms * 1e-3) / 1e9, 2),
            }, separators=(",", ":")), flush=True)
    if device.type == "cuda":
        print(f"PyTorch {torch.__version__}, cuDNN {torch.backends.cudnn.version()}, "
              f"{torch.cuda.get_device_name(0)}", file=sys.stderr)


if __name__ == "__main__":
    main()

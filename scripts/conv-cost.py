#!/usr/bin/env python3
"""Per-launch cost estimate of the UNet's convolutions in one training step on an H200, old path against new.

Counts, from the shapes alone, what each launch must do (FLOPs executed, DRAM bytes each input read once and each
output written once) and turns them into times with stated ceilings. No GPU is needed; the first GPU run replaces
the ceilings with measured ones. Usage: scripts/conv-cost.py [--base 64] [--batch 128] > docs/gpu-cost.md

Paths:
- old (Precision::Fp32): im2col writes the column matrix and the f32 SIMT GEMM (64x64 tiles, 256 threads) reads it;
  col2im for input gradients; the weight gradient sums the batch inside one block per 64x64 output tile, so it
  runs on ceil(M/64)*ceil(N/64) blocks, often far fewer than the 132 multiprocessors.
- new (Precision::Bf16): each gathered activation converted once to NHWC bf16 (read 4 B, write 2 B per value),
  implicit-GEMM on mma.sync (no column matrix), weight gradient split over the pixels onto >= 264 blocks, the
  splits added in a fixed order by each output tile's last block (same launch). Adjoint (stride-2) gathers run
  each class of output pixels (by position mod the stride) over only the taps it reads: no zero taps.
  Channel counts are padded to multiples of 8 with zeros (the 1-channel input and output convs do 8x their
  FLOPs, which is still far cheaper than the old path's column matrix).
"""
import argparse
import math

SMS = 132
BF16_TC = 790e12  # dense bf16 tensor-core rate measured by the workplace on this H200
MMA_SYNC_FRACTION = 0.6  # mma.sync on Hopper reaches ~60% of peak in the literature (wgmma more)
FP32 = 67e12  # H200 fp32 FMA peak
SIMT_FRACTION = 0.25  # 64x64-tile SIMT GEMM without double buffering, uncoalesced transposed loads: an assumption
DRAM = 4.3e12  # bytes/s, H200 HBM3e datasheet (4.8 TB/s) less the usual ~10%
LAUNCH = 3e-6  # seconds per launch without CUDA graphs


def convs(b):
    """(name, cin, cout, h_in, k, stride, pad, transposed) of every conv of the UNet at width b."""
    c1, c2, c4 = b, 2 * b, 4 * b
    return [
        ("in_conv", 1, c1, 32, 3, 1, 1, False),
        ("down1.conv1", c1, c1, 32, 3, 1, 1, False),
        ("down1.conv2", c1, c1, 32, 3, 1, 1, False),
        ("pool1", c1, c2, 32, 3, 2, 1, False),
        ("down2.conv1", c2, c2, 16, 3, 1, 1, False),
        ("down2.conv2", c2, c2, 16, 3, 1, 1, False),
        ("pool2", c2, c4, 16, 3, 2, 1, False),
        ("mid.conv1", c4, c4, 8, 3, 1, 1, False),
        ("mid.conv2", c4, c4, 8, 3, 1, 1, False),
        ("up2", c4, c2, 8, 4, 2, 1, True),
        ("dec2.conv1", c4, c2, 16, 3, 1, 1, False),
        ("dec2.conv2", c2, c2, 16, 3, 1, 1, False),
        ("dec2.skip", c4, c2, 16, 1, 1, 0, False),
        ("up1", c2, c1, 16, 4, 2, 1, True),
        ("dec1.conv1", c2, c1, 32, 3, 1, 1, False),
        ("dec1.conv2", c1, c1, 32, 3, 1, 1, False),
        ("dec1.skip", c2, c1, 32, 1, 1, 0, False),
        ("out_conv", c1, 1, 32, 3, 1, 1, False),
    ]


def gemms(name, cin, cout, h, k, s, p, transposed, n):
    """The conv's three GEMMs as (kind, m, n, k, zero_fraction, gathered channels, values gathered, values of
    the row operand (dW only), values of the old path's column matrix)."""
    kk = k * k
    if transposed:
        hi, ho = h, h * s  # input grid h -> output grid s*h
        small, large, c_small, c_large = hi, ho, cin, cout
    else:
        ho = (h + 2 * p - k) // s + 1
        small, large, c_small, c_large = ho, h, cout, cin
    # `small` is the conv-geometry output grid (channels c_small), `large` its input grid (c_large).
    ps, pl = n * small * small, n * large * large
    conv_fwd = ("fwd" if not transposed else "dx", ps, c_small, kk * c_large, 0.0, c_large, pl * c_large, 0, ps * kk * c_large)
    adjoint = ("dx" if not transposed else "fwd", pl, c_large, kk * c_small, 1 - 1 / (s * s) if s > 1 else 0.0,
               c_small, ps * c_small, 0, ps * kk * c_large)
    wgrad = ("dW", c_small, kk * c_large, ps, 0.0, (c_small, c_large), pl * c_large, ps * c_small, ps * kk * c_large)
    out = sorted([conv_fwd, adjoint, wgrad], key=lambda g: ["fwd", "dx", "dW"].index(g[0]))
    if name == "in_conv":
        out = [g for g in out if g[0] != "dx"]  # the input image needs no gradient
    return out


def splits(m, w, pixels):
    """The weight gradient's split-K partition, as src/ops/conv/mma.rs computes it."""
    tiles = math.ceil(m / 64) * math.ceil(w / 64)
    ktiles = max(1, math.ceil(pixels / 32))
    want = min(max(1, math.ceil(264 / tiles)), min(64, ktiles))
    per = math.ceil(ktiles / want) * 32
    return max(1, math.ceil(pixels / per))


def old_time(g):
    kind, m, nn, k, zero, _, _, _, col = g
    flops = 2 * m * nn * k * (1 - zero)  # the column matrix holds only the taps that exist
    blocks = math.ceil(m / 64) * math.ceil(nn / 64)  # dW: the whole batch is summed inside each block
    rate = FP32 * SIMT_FRACTION * min(1.0, blocks / SMS)
    bytes_ = 2 * 4 * col + 4 * m * nn  # column matrix written and read once, result written
    return flops, bytes_, max(flops / rate, bytes_ / DRAM) + 3 * LAUNCH


def pad8(c):
    return -(-c // 8) * 8


def new_time(g):
    kind, m, nn, k, zero, ch, gathered, rows, _ = g
    # channel counts padded to multiples of 8 (the 1-channel convs run 8x their FLOPs)
    if kind == "dW":
        m, nn = pad8(m), nn // ch[1] * pad8(ch[1])
    else:
        k = k // ch * pad8(ch)
    flops = 2 * m * nn * k * (1 - zero)  # an adjoint's classes skip the taps that meet no input pixel
    if kind == "dW":
        sp = splits(m, nn, k)
        # both operands converted (f32 read, bf16 written) and read once; partials written, read and reduced
        bytes_ = 8 * (gathered + rows) + 2 * 4 * sp * m * nn + 4 * m * nn
        launches = 3
    else:
        bytes_ = 8 * gathered + 2 * nn * k + 4 * m * nn
        launches = 3
    return flops, bytes_, max(flops / (BF16_TC * MMA_SYNC_FRACTION), bytes_ / DRAM) + launches * LAUNCH


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--base", type=int, default=64)
    ap.add_argument("--batch", type=int, default=128)
    a = ap.parse_args()
    n = a.batch
    rows = []
    tot_old = tot_new = 0.0
    for name, cin, cout, h, k, s, p, tr in convs(a.base):
        for g in gemms(name, cin, cout, h, k, s, p, tr, n):
            fo, bo, to = old_time(g)
            gathered = g[5] if isinstance(g[5], tuple) else (g[5],)
            fn, bn, tn = new_time(g)
            path = "bf16 mma" + (f", per output class ({g[4]:.0%} of the taps skipped)" if g[4] else "")
            if any(c % 8 for c in gathered):
                path += ", channels padded to 8"
            rows.append((f"{name} {g[0]}", fo, to, bn, tn, path))
            tot_old += to
            tot_new += tn
    print(f"# Convolution cost estimate: one training step, base {a.base}, batch {n}, H200\n")
    print("Generated by `scripts/conv-cost.py --base %d --batch %d`; no GPU involved. Ceilings: bf16 tensor cores "
          "%.0f TFLOP/s x %.0f%% (mma.sync), f32 SIMT %.0f TFLOP/s x %.0f%% scaled by the fraction of the %d "
          "multiprocessors the grid covers, DRAM %.1f TB/s, %.0f us per launch. Each time is the larger of "
          "FLOPs/rate and bytes/bandwidth, plus launches. Convolutions only (GroupNorm, SiLU, concat, the "
          "optimiser and the rest of the step are not in it). The new kernels use 64x64 tiles of 4 warps and "
          "mma.sync: reaching 60%% of the tensor cores' peak with them is optimistic, so the new column is a "
          "floor more than a forecast. Estimates, to be replaced by the first GPU run's measurements.\n" % (a.base, n, BF16_TC / 1e12, MMA_SYNC_FRACTION * 100, FP32 / 1e12,
                                SIMT_FRACTION * 100, SMS, DRAM / 1e12, LAUNCH * 1e6))
    print("| GEMM | GFLOP (old path) | old ms | new MB moved | new ms | new path |")
    print("|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r[0]} | {r[1]/1e9:.2f} | {r[2]*1e3:.3f} | {r[3]/1e6:.1f} | {r[4]*1e3:.3f} | {r[5]} |")
    print(f"| **total** | | **{tot_old*1e3:.1f}** | | **{tot_new*1e3:.2f}** | |")


if __name__ == "__main__":
    main()

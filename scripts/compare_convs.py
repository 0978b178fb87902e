#!/usr/bin/env python3
"""Our conv times against PyTorch's, shape by shape, as a Markdown table.

usage: scripts/compare_convs.py OURS.jsonl TORCH.jsonl [--no-model]

OURS.jsonl: lines of `ddpm bench --what convs --json`; TORCH.jsonl: lines of `pytorch/conv_bench.py` (either may
hold several precisions; lines that are not JSON objects are skipped). Rows are joined on (precision, name, pass)
and listed in our order; a row either side lacks is listed with a dash. ratio = ours / PyTorch (above 1: we are
slower). The model column is scripts/conv-cost.py's estimate of the same GEMM on an H200 (the path it expects under
that precision), only meaningful for a GPU run at that script's sizes. The last rows sum each column weighted by
the number of UNet layers with the shape: the convs of one training step.

What each side's time covers: ours is the host clock from the call to the end of a device synchronisation, so it
includes launch overhead (a few microseconds per launch) and, under bf16, the conversion of the f32 operands to
channels-last bf16 that each of our convs does; PyTorch's is CUDA events around the call on tensors that are
bf16 channels-last already (on the CPU both are the host clock).
"""
import argparse
import importlib.util
import json
import sys
from pathlib import Path

PASS_KIND = {"forward": "fwd", "input_grad": "dx", "weight_grad": "dW"}


def json_lines(path):
    """(line number, object) of each line of `path` that starts with `{` (the others are a tool's prose); exits
    with an error naming the file for an unreadable file or a line that is not JSON."""
    try:
        lines = Path(path).read_text().splitlines()
    except OSError as e:
        sys.exit(f"error: cannot read {path}: {e.strerror}")
    for i, line in enumerate(lines, 1):
        line = line.strip()
        if not line.startswith("{"):
            continue
        try:
            yield i, json.loads(line)
        except json.JSONDecodeError as e:
            sys.exit(f"error: {path}:{i}: not valid JSON ({e.msg})")


def read(path):
    rows = []
    for i, r in json_lines(path):
        missing = [f for f in ("name", "pass", "precision", "median_ms") if f not in r]
        if missing:
            sys.exit(f"error: {path}:{i}: no field {', '.join(missing)}")
        rows.append(r)
    return rows


def cost_model():
    """scripts/conv-cost.py as a module, or None when it cannot be loaded."""
    path = Path(__file__).resolve().parent / "conv-cost.py"
    try:
        spec = importlib.util.spec_from_file_location("conv_cost", path)
        mod = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(mod)
        return mod
    except Exception as e:  # the table is still useful without the model column
        print(f"note: no cost model ({path}: {e})", file=sys.stderr)
        return None


def predict_ms(model, r):
    """conv-cost.py's milliseconds for this (shape, pass), or None."""
    if model is None:
        return None
    g = [g for g in model.gemms(r["name"], r["cin"], r["cout"], r["h"], r["k"], r["stride"], r["pad"],
                                r["transposed"], r["n"]) if g[0] == PASS_KIND[r["pass"]]]
    if not g:
        return None
    g = g[0]
    gathered = g[5] if isinstance(g[5], tuple) else (g[5],)
    tc = r["precision"] == "bf16" and all(c % 8 == 0 for c in gathered)
    return (model.new_time(g) if tc else model.old_time(g))[2] * 1e3


def fmt(v, spec=".3f"):
    return "-" if v is None else format(v, spec)


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("ours")
    ap.add_argument("torch")
    ap.add_argument("--no-model", action="store_true", help="leave out conv-cost.py's estimate")
    a = ap.parse_args()
    ours, theirs = read(a.ours), read(a.torch)
    if not ours and not theirs:
        sys.exit(f"error: neither {a.ours} nor {a.torch} holds a result line")
    model = None if a.no_model else cost_model()
    key = lambda r: (r["precision"], r["name"], r["pass"])
    by_key = {key(r): r for r in theirs}
    keys = [key(r) for r in ours] + [k for k in by_key if k not in {key(r) for r in ours}]
    mine = {key(r): r for r in ours}
    for precision in dict.fromkeys(k[0] for k in keys):
        ref = next((mine.get(k) or by_key.get(k)) for k in keys if k[0] == precision)
        print(f"\n### {precision}, batch {ref.get('n')}, ours on {ref.get('device', '?')} "
              f"against PyTorch on {next((r.get('device') for r in theirs if r['precision'] == precision), '-')}\n")
        print("| shape | pass | layers | ours ms | PyTorch ms | ratio | ours GFLOP/s | PyTorch GFLOP/s | model ms |")
        print("|---|---|---|---|---|---|---|---|---|")
        tot = [0.0, 0.0, 0.0]
        complete = [True, True, True]
        for k in keys:
            if k[0] != precision:
                continue
            o, t = mine.get(k), by_key.get(k)
            r = o or t
            shape = f"{'T ' if r.get('transposed') else ''}{r.get('cin')}x{r.get('h')}x{r.get('w')}->{r.get('cout')} " \
                    f"k{r.get('k')}s{r.get('stride')}"
            om, tm = o and o["median_ms"], t and t["median_ms"]
            pm = predict_ms(model, r)
            ratio = om / tm if om is not None and tm else None
            layers = len(str(r.get("layers", r["name"])).split())
            for i, v in enumerate((om, tm, pm)):
                if v is None:
                    complete[i] = False
                else:
                    tot[i] += layers * v
            print(f"| {r['name']} {shape} | {r['pass']} | {layers} | {fmt(om, '.4f')} | {fmt(tm, '.4f')} | "
                  f"{fmt(ratio, '.2f')} | {fmt(o and o.get('gflops'), '.1f')} | {fmt(t and t.get('gflops'), '.1f')} | "
                  f"{fmt(pm, '.4f')} |")
        sums = [f"{v:.3f}" if ok else f"{v:.3f} (partial)" for v, ok in zip(tot, complete)]
        ratio = fmt(tot[0] / tot[1], ".2f") if all(complete[:2]) and tot[1] else "-"
        print(f"| **one training step's convs** (x layers) | all | | **{sums[0]}** | **{sums[1]}** | **{ratio}** | | | "
              f"{sums[2] if model else '-'} |")


if __name__ == "__main__":
    main()

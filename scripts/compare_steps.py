#!/usr/bin/env python3
"""Our training and sampler step times against PyTorch's (eager and torch.compile), as a Markdown table.

usage: scripts/compare_steps.py FILE.jsonl... [--train-goal 2] [--sample-goal 3]

Each file may hold any mix of three kinds of JSON lines (other lines are skipped):
  ours        `ddpm bench --what train|sample [--json]`: workload, device, precision, batch, base, median_s, ...
  PyTorch     `pytorch/step_bench.py`: what, mode (eager or compile), device, precision, batch, base, median_ms,
              or an "error" field for a mode that failed
  predicted   `ddpm bench --model h200 --json`: step (train, ddim or ddpm), precision, batch, base, graph_launches,
              predicted_ms (the step as it ran: replayed from a graph or launched one by one; the cost model of
              docs/gpu-model.md)
One row per line of ours, in their order; PyTorch's lines are joined on (step kind, batch, base), preferring the
same precision; the prediction on (step kind: sample is its ddim step, precision, batch, base, with graphs or
without as ours ran). ratio = PyTorch /
ours (above 1: we are faster). The goals: a training step at least 2x faster than PyTorch eager bf16, a DDIM step
at n = 64 at least 3x; a verdict is given only where both sides ran bf16 on a CUDA GPU (and n = 64 for the DDIM
step), else the goal is shown without one.

What each side's time covers: ours is the host clock around one call, ended by a device synchronisation (the
training step is waited for; the sampler step is the UNet forward and the DDIM update, replayed from a CUDA graph
unless the line says graphs false);
PyTorch's is the host clock between two torch.cuda.synchronize() (the training step is the reference's, with its
loss.item() and EMA update; the sampler step is the UNet forward and the DDIM update).
"""
import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))  # compare_convs.py beside this file
from compare_convs import json_lines  # noqa: E402


def read(paths):
    ours, torch_rows, predicted = [], [], []
    for path in paths:
        for i, r in json_lines(path):
            if "workload" in r and "median_s" in r:
                r["kind"] = str(r["workload"]).lower()
                ours.append(r)
            elif "what" in r and "mode" in r:
                r["kind"] = r["what"]
                torch_rows.append(r)
            elif "step" in r and "predicted_ms" in r:
                predicted.append(r)
            else:
                print(f"note: {path}:{i}: neither a bench, a step_bench nor a --model line: skipped", file=sys.stderr)
    return ours, torch_rows, predicted


def fmt(v, spec=".3f"):
    return "-" if v is None else format(v, spec)


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("files", nargs="+", metavar="FILE.jsonl")
    ap.add_argument("--train-goal", type=float, default=2.0, help="PyTorch eager / ours wanted for a training step")
    ap.add_argument("--sample-goal", type=float, default=3.0, help="PyTorch eager / ours wanted for a DDIM step")
    ap.add_argument("--goal-n", type=int, default=64, help="the n of the DDIM-step goal")
    a = ap.parse_args()
    ours, theirs, predicted = read(a.files)
    if not ours and not theirs:
        sys.exit(f"error: no bench or step_bench line in {', '.join(a.files)}")

    def torch_match(kind, mode, batch, base, precision):
        rows = [t for t in theirs if t["kind"] == kind and t["mode"] == mode and t.get("batch") == batch
                and t.get("base") == base]
        same = [t for t in rows if t.get("precision") == precision]
        return (same or rows or [None])[-1]

    def predict(kind, precision, batch, base, graphs):
        step = "ddim" if kind == "sample" else kind
        rows = [p for p in predicted if p["step"] == step and p.get("precision") == precision
                and p.get("batch") == batch and p.get("base") == base]
        # The prediction with graphs (a replay: graph_launches > 0) or without, as ours ran.
        rows = [p for p in rows if (p.get("graph_launches", 0) > 0) == graphs] or rows
        return rows[-1] if rows else None

    lines = []
    if theirs:
        t = theirs[0]
        lines.append(f"PyTorch {t.get('torch', '?')} on {t.get('device', '?')}; ours on "
                     f"{', '.join(dict.fromkeys(str(o.get('device')) for o in ours)) or '-'}; "
                     f"predicted: {', '.join(dict.fromkeys(str(p.get('model')) for p in predicted)) or '-'}")
        lines.append("")
    lines.append("| step | n | precision (ours / PyTorch) | ours ms | PyTorch eager ms | PyTorch compile ms | "
                 "eager / ours | compile / ours | predicted ms | goal |")
    lines.append("|---|---|---|---|---|---|---|---|---|---|")
    errors = []
    rows = [(o["kind"], o.get("batch"), o.get("base"), o.get("precision"), o) for o in ours]
    # PyTorch lines with no line of ours still get a row.
    for t in theirs:
        if not any(k == t["kind"] and b == t.get("batch") and base == t.get("base") for k, b, base, _, _ in rows):
            rows.append((t["kind"], t.get("batch"), t.get("base"), t.get("precision"), None))
    for kind, batch, base, precision, o in rows:
        om = o["median_s"] * 1e3 if o else None
        eager = torch_match(kind, "eager", batch, base, precision)
        comp = torch_match(kind, "compile", batch, base, precision)
        cells, ratios, tprec = [], [], None
        for t in (eager, comp):
            if t is None:
                cells.append(None)
            elif "error" in t:
                cells.append(None)
                errors.append(f"PyTorch {t['mode']} {kind}: {t['error']}")
            else:
                cells.append(t["median_ms"])
                tprec = tprec or t.get("precision")
        for c in cells:
            ratios.append(c / om if c is not None and om else None)
        ratio_cells = [fmt(r, ".2f") + ("*" if r is not None and tprec != precision else "") for r in ratios]
        p = predict(kind, precision, batch, base, o is None or o.get("graphs") is not False)
        pcell = f"{p['predicted_ms']:.3f}" if p else "-"
        goal_x = a.train_goal if kind == "train" else a.sample_goal
        goal = f">= {goal_x:g}x eager"
        if kind == "sample":
            goal += f" at n = {a.goal_n}"
        gpu_bf16 = (o is not None and o.get("device") == "cuda" and precision == "bf16" and eager is not None
                    and eager.get("device") == "cuda" and eager.get("precision") == "bf16")
        if gpu_bf16 and (kind == "train" or batch == a.goal_n) and ratios[0] is not None:
            goal += ": **met**" if ratios[0] >= goal_x else ": **not met**"
        else:
            goal += " (no verdict: not a bf16 CUDA run" + (f" at n = {a.goal_n})" if kind == "sample" else ")")
        name = {"train": "training step", "sample": "sampler step (DDIM)"}.get(kind, kind)
        if o is not None and o.get("graphs") is False:
            name += " (no graphs)"
        lines.append(f"| {name} | {batch} | {precision or '-'} / {tprec or '-'} | {fmt(om)} | {fmt(cells[0])} | "
                     f"{fmt(cells[1])} | {ratio_cells[0]} | {ratio_cells[1]} | {pcell} | {goal} |")
    lines.append("")
    lines.append("ratio = PyTorch / ours (above 1: ours is faster); * = the two sides ran different precisions.")
    for e in dict.fromkeys(errors):
        lines.append(f"- {e}")
    print("\n".join(lines))


if __name__ == "__main__":
    main()

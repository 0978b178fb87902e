#!/usr/bin/env python3
"""Regenerates the goldens with make_golden.py and compares every tensor with the committed tests/golden/.

usage: python3 pytorch/check_golden.py [--golden tests/golden] [--out DIR | --from DIR] [--verbose]

Each tensor must satisfy |new - committed| <= atol + rtol*|committed| element-wise, with the tolerances of
tests/golden/README.md ("Tolerances to expect from a float32 reimplementation"); a regeneration on another CPU or
torch build is such a reimplementation. Tensors that the README's table does not cover are inputs drawn from torch's
CPU RNG (weights, x, noise, ...) and integers: those must match to 1e-6 relative and exactly. Prints, per file, the
worst |diff| and the worst fraction of its tolerance that any element used, and exits 1 if any tensor fails, is
missing or has another shape or dtype.

--out DIR keeps the regenerated files there; --from DIR compares files made earlier instead of regenerating.
Needs torch, numpy and safetensors (pillow for mnist_resize.safetensors), as make_golden.py does.
"""
from __future__ import annotations

import argparse
import fnmatch
import os
import subprocess
import sys
import tempfile

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(HERE)

# (pattern, atol, rtol, why), first match wins; patterns are fnmatch patterns on "file:tensor".
TOLERANCES = [
    ("io:sched.*", 5e-6, 1e-6, "README: sched.*"),
    ("io:t_emb_sin", 1e-6, 0.0, "README: t_emb_sin"),
    ("io:t_emb", 1e-5, 1e-5, "README: t_emb, act.time"),
    ("acts:act.*", 1e-5, 1e-5, "README: act.*, eps"),
    ("io:eps", 1e-5, 1e-5, "README: act.*, eps"),
    ("io:loss", 0.0, 1e-6, "README: loss"),
    ("io:grad.*", 1e-7, 1e-4, "README: grad.*"),
    ("io:clip.*", 0.0, 1e-5, "README: clip.total_norm, clip.coef"),
    ("io:q.xt", 1e-5, 1e-6, "README: q.xt"),
    ("optim:adamw1.*", None, None, "README: adamw1.* end to end"),  # special rule, see check_adamw1
    ("optim:ema1.*", 1e-7, 0.0, "README: ema1.*"),
    ("optim:synth.p[123]", 1e-7, 1e-6, "README: synth.*"),
    ("optim:synth.exp_avg*", 1e-7, 1e-6, "README: synth.*"),
    ("optim:synth.total_norm*", 1e-7, 1e-6, "README: synth.*"),
    ("steps:ddpm.t*", 1e-5, 1e-5, "README: single steps"),
    ("steps:ddim.eta*", 1e-5, 1e-5, "README: single steps"),
    ("steps:traj.ddim10.out", 5e-4, 0.0, "README: traj.ddim10.out"),  # plus the mean-abs fallback below
    ("*", 0.0, 1e-6, "input from torch's RNG, or the frequency table"),
]
ADAMW_ATOL, ADAMW_MAX, ADAMW_FRACTION = 5e-6, 4.1e-4, 1e-3  # README: adamw1.* end to end (your own grads)
TRAJ_MEAN_ABS = 2e-5  # README: if a few pixels of traj.ddim10.out fail, the mean abs error must be < 2e-5
FILES = ["weights", "io", "acts", "steps", "optim", "mnist_resize"]


def tolerance(key):
    for pat, atol, rtol, why in TOLERANCES:
        if fnmatch.fnmatchcase(key, pat):
            return atol, rtol, why
    raise AssertionError(key)


def compare_tensor(key, new, old):
    """Returns (ok, max |diff|, worst fraction of the tolerance used, note)."""
    import numpy as np
    if new.dtype != old.dtype or new.shape != old.shape:
        return False, float("inf"), float("inf"), f"shape/dtype {new.shape} {new.dtype} vs {old.shape} {old.dtype}"
    if not np.issubdtype(old.dtype, np.floating):
        n = int((new != old).sum())
        return n == 0, float(np.abs(new.astype(np.int64) - old.astype(np.int64)).max(initial=0)), \
            (0.0 if n == 0 else float("inf")), "integers: exact" + ("" if n == 0 else f", {n} differ")
    d = np.abs(new.astype(np.float64) - old.astype(np.float64))
    worst = float(d.max(initial=0.0))
    atol, rtol, why = tolerance(key)
    if atol is None:  # adamw1.*: most elements within ADAMW_ATOL, a few sign-like steps up to ADAMW_MAX
        return worst <= ADAMW_MAX, worst, worst / ADAMW_MAX, why
    bound = atol + rtol * np.abs(old.astype(np.float64))
    with np.errstate(divide="ignore", invalid="ignore"):
        used = np.where(d == 0, 0.0, d / bound)
    frac = float(used.max(initial=0.0))
    ok = bool((d <= bound).all())
    note = why
    if not ok and key == "steps:traj.ddim10.out":
        over = float((d > bound).mean())
        mean = float(d.mean())
        ok = over <= 0.01 and mean < TRAJ_MEAN_ABS
        note += f"; {over:.2%} of pixels over, mean abs {mean:.3g} (must be < {TRAJ_MEAN_ABS:g})"
    return ok, worst, frac, note


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--golden", default=os.path.join(REPO, "tests", "golden"), help="the committed goldens")
    g = p.add_mutually_exclusive_group()
    g.add_argument("--out", help="regenerate into DIR and keep it (default: a temporary folder)")
    g.add_argument("--from", dest="src", help="compare DIR, made earlier by make_golden.py, without regenerating")
    p.add_argument("--verbose", action="store_true", help="one line per tensor")
    a = p.parse_args()

    import numpy as np
    from safetensors.numpy import load_file

    with tempfile.TemporaryDirectory(prefix="golden-") as tmp:
        new_dir = a.src or a.out or tmp
        if not a.src:
            print(f"regenerating into {new_dir} with {os.path.join(HERE, 'make_golden.py')} ...", flush=True)
            r = subprocess.run([sys.executable, os.path.join(HERE, "make_golden.py"), new_dir],
                               capture_output=True, text=True)
            if r.returncode != 0:
                sys.exit(f"make_golden.py failed (exit {r.returncode}):\n{r.stderr[-3000:]}")
            if r.stderr.strip():
                print(r.stderr.strip(), file=sys.stderr)
        failures = 0
        print(f"{'file':28} {'tensors':>7} {'worst |diff|':>13}  {'in':30} {'worst diff/tol':>14}  {'in':30}")
        for fn in FILES:
            old_path = os.path.join(a.golden, fn + ".safetensors")
            new_path = os.path.join(new_dir, fn + ".safetensors")
            if not os.path.exists(new_path):
                print(f"{fn + '.safetensors':28} not regenerated")
                failures += 1
                continue
            old, new = load_file(old_path), load_file(new_path)
            missing, extra = sorted(set(old) - set(new)), sorted(set(new) - set(old))
            for k in missing:
                print(f"    FAIL {fn}:{k} missing from the regenerated file")
            for k in extra:
                print(f"    FAIL {fn}:{k} is not in the committed file")
            failures += len(missing) + len(extra)
            worst, worst_at, frac, frac_at, bad = 0.0, "-", 0.0, "-", []
            for k in sorted(set(old) & set(new)):
                ok, w, f, note = compare_tensor(f"{fn}:{k}", new[k], old[k])
                if w > worst:
                    worst, worst_at = w, k
                if f > frac:
                    frac, frac_at = f, k
                if not ok:
                    bad.append(f"    FAIL {fn}:{k}: max |diff| {w:.3g}, {f:.3g}x its tolerance ({note})")
                elif a.verbose:
                    print(f"    ok   {fn}:{k}: max |diff| {w:.3g}, {f:.3g}x its tolerance ({note})")
            print(f"{fn + '.safetensors':28} {len(old):7} {worst:13.3g}  {worst_at:30} {frac:14.3g}  {frac_at:30}")
            for line in bad:
                print(line)
            failures += len(bad)
        # The adamw1.* rule also bounds how many elements may exceed ADAMW_ATOL.
        old_o, new_o = load_file(os.path.join(a.golden, "optim.safetensors")), \
            load_file(os.path.join(new_dir, "optim.safetensors")) if os.path.exists(
                os.path.join(new_dir, "optim.safetensors")) else {}
        keys = [k for k in old_o if k.startswith("adamw1.") and k in new_o]
        if keys:
            over = sum(int((np.abs(new_o[k].astype(np.float64) - old_o[k]) > ADAMW_ATOL).sum()) for k in keys)
            total = sum(old_o[k].size for k in keys)
            ok = over <= ADAMW_FRACTION * total
            print(f"adamw1.*: {over} of {total} elements differ by more than {ADAMW_ATOL:g} "
                  f"(at most {ADAMW_FRACTION:.1%} allowed){'' if ok else ': FAIL'}")
            failures += 0 if ok else 1
        old_readme, new_readme = os.path.join(a.golden, "README.md"), os.path.join(new_dir, "README.md")
        if os.path.exists(new_readme):
            same = open(old_readme).read() == open(new_readme).read()
            print(f"README.md: {'identical' if same else 'differs (its measured numbers depend on the machine)'}")
    print(f"{'FAILED' if failures else 'OK'}: {failures} failure(s); tolerances from tests/golden/README.md")
    sys.exit(1 if failures else 0)


if __name__ == "__main__":
    main()

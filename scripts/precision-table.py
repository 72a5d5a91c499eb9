#!/usr/bin/env python3
"""Paired PSNR change of half-precision networks against f32 on one `daps eval` setup.

    scripts/precision-table.py runs/precision/f32 runs/precision/bf16 [runs/precision/f16 ...]

Each folder is a `daps eval` run that differs from the first only in `--prior` (default,
default@bf16, default@f16): same images, tasks, methods, seed, hence the same measurements and
the same noise draws, so the per-image PSNR difference isolates the precision. Prints, per task
and method, the mean paired difference (run − first) with a 95% interval (1.96 × standard error
over images) and the largest |difference|; then the mean over tasks.
"""
import json
import math
import pathlib
import sys


def records(run):
    out = {}
    for f in pathlib.Path(run, "records").rglob("*.json"):
        r = json.loads(f.read_text())
        out[(r["task"], r["method"], r["image"], r["run"])] = r["psnr"]
    return out


def main(base, others):
    ref = records(base)
    settings = json.loads(pathlib.Path(base, "eval.json").read_text())
    print(f"reference: {base} (prior {settings['prior']}), {len(ref)} records")
    for run in others:
        prior = json.loads(pathlib.Path(run, "eval.json").read_text())["prior"]
        rec = records(run)
        print(f"\n{run} (prior {prior}) − reference, PSNR dB")
        print(f"{'task':16} {'method':12} {'images':>6} {'mean Δ ± 95%':>18} {'max |Δ|':>8}")
        groups = {}
        for k, v in rec.items():
            if k in ref:
                groups.setdefault(k[:2], []).append(v - ref[k])
        means = []
        for (task, method), d in sorted(groups.items()):
            n = len(d)
            m = sum(d) / n
            sd = math.sqrt(sum((x - m) ** 2 for x in d) / (n - 1)) if n > 1 else float("nan")
            means.append(m)
            print(f"{task:16} {method:12} {n:6} {m:+9.3f} ± {1.96 * sd / math.sqrt(n):6.3f} "
                  f"{max(abs(x) for x in d):8.3f}")
        if means:
            print(f"mean over {len(means)} task/method rows: {sum(means) / len(means):+.3f} dB")


if __name__ == "__main__":
    if len(sys.argv) < 3:
        sys.exit(__doc__)
    main(sys.argv[1], sys.argv[2:])

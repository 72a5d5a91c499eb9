#!/usr/bin/env python3
"""Methods of a `daps eval` report against a DPS-1000 baseline on the same digits.

    scripts/equal-nfe-compare.py EVAL_REPORT.json BASELINE.json [BASELINE_METHOD]

EVAL_REPORT.json is `daps report RUN --json` of an eval run on held-out digits. BASELINE.json is
either another eval report (its `dps-1000` rows; an eval run with the same seed, digits and tasks
simulates the same measurements, so the pairs share y exactly) or the stored demo file
results/digits/dps1000.json (per-digit DPS-1000 on digits 9000–9099, best of 4 for phase
retrieval), whose measurement noise draws are its own: then the per-digit differences pair
images, not noise, and their spread includes two noise draws. Prints, per task and eval method:
mean PSNR/SSIM on the common digits, the baseline's, the paired mean difference with a 95%
interval (1.96 SE) and wins. BASELINE_METHOD (default dps-1000) picks another method of an eval
report as the baseline, e.g. `daps-1k` of results/digits/equal-nfe-100/daps1k.json.
"""
import json
import math
import sys


def ci(d):
    n = len(d)
    m = sum(d) / n
    if n < 2:
        return m, float("nan")
    sd = math.sqrt(sum((x - m) ** 2 for x in d) / (n - 1))
    return m, 1.96 * sd / math.sqrt(n)


def main(report, dps, method="dps-1000"):
    rep = json.load(open(report))
    base = {}
    b = json.load(open(dps))
    if isinstance(b, dict):  # an eval report
        for r in b["rows"]:
            if r["method"] == method:
                base[r["task"]] = {int(s["image"].split("-")[1]): (s["psnr"], s["ssim"])
                                   for s in r["scores"]}
    else:
        for r in b:
            if r["method"] == "DPS-1000":
                base[r["task"]] = {d: (p, s) for d, p, s in zip(r["digits"], r["psnr"], r["ssim"])}
    name = "DPS-1000" if method == "dps-1000" else method
    print(f"{'task':16} {'method':44} {'n':>3} {'PSNR':>6} {name:>8} "
          f"{'Δ PSNR ± 95%':>15} {'wins':>5} {'SSIM':>6} {'base':>6}")
    means = {}
    for row in rep["rows"]:
        t, m = row["task"], row["method"]
        if t not in base:
            continue
        pairs = []
        for s in row["scores"]:
            digit = int(s["image"].split("-")[1])
            if digit in base[t]:
                pairs.append((s["psnr"], s["ssim"], *base[t][digit]))
        if not pairs:
            continue
        n = len(pairs)
        d = [a - c for a, _, c, _ in pairs]
        md, h = ci(d)
        wins = sum(x > 0 for x in d)
        pa = sum(p[0] for p in pairs) / n
        pc = sum(p[2] for p in pairs) / n
        sa = sum(p[1] for p in pairs) / n
        sc = sum(p[3] for p in pairs) / n
        means.setdefault(m, []).append((pa, pc))
        print(f"{t:16} {m:44} {n:3} {pa:6.2f} {pc:8.2f} {md:+7.2f} ± {h:5.2f} {wins:3}/{n:<2}"
              f" {sa:6.3f} {sc:6.3f}")
    for m, v in means.items():
        a = sum(x for x, _ in v) / len(v)
        c = sum(y for _, y in v) / len(v)
        print(f"mean over {len(v)} tasks, {m}: {a:.2f} dB vs {name} {c:.2f} dB ({a - c:+.2f})")


if __name__ == "__main__":
    if len(sys.argv) not in (3, 4):
        sys.exit(__doc__)
    main(*sys.argv[1:])

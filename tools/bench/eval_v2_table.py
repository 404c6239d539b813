"""Markdown tables for the v2 test model from `rkv eval --json` runs whose budgets are shares
of each problem's length (`--budgets 10%,15%,...`): docs/BENCHMARKS.md, "The v2 model".

    /usr/bin/python3 tools/bench/eval_v2_table.py --policies docs/bench/eval-adder2.json \
        [--granularity docs/bench/eval-adder2-gran-layer.json ...] \
        [--lambda docs/bench/eval-adder2-lambda-0.3.json ...] \
        [--hindsight docs/bench/oracle-hindsight-adder2-0.json ...]

Prints: accuracy per policy and budget share (full cache, the structural oracle and, from
--hindsight files, the hindsight oracle included, with the binomial standard error of one
cell), each policy's share of the full cache's accuracy, the gap to the oracle (the hindsight
one when given), peak KV blocks and decode tokens/s; R-KV per selection granularity; R-KV per
λ; and the paper's criterion (R-KV at <= 30% of the sequence keeps >= 90% of full
accuracy)."""

import argparse
import json
import math
import sys

ORDER = ["hindsight", "oracle", "rkv", "snapkv", "streaming", "h2o"]
NAMES = {"full": "full cache", "hindsight": "hindsight oracle", "oracle": "structural oracle",
         "rkv": "R-KV", "snapkv": "SnapKV",
         "streaming": "StreamingLLM", "h2o": "H2O"}


def load(path):
    with open(path) as f:
        return json.load(f)


def pct_runs(d):
    """{(policy, pct): run} of a file's per-share runs, and its full-cache run (or None)."""
    cell = {(r["policy"], r["budget_pct"]): r for r in d["runs"] if r["policy"] != "full"}
    full = next((r for r in d["runs"] if r["policy"] == "full"), None)
    return cell, full


def merge_hindsight(paths, cell, d):
    """Adds the hindsight oracle's runs (several files: problem ranges that must tile 0..N
    without overlap, on the eval's problem set) to cell as policy "hindsight"; returns N."""
    acc = {}
    ranges = []
    for path in paths:
        h = load(path)
        for k in ("seed", "digits", "buffer", "window"):
            if h[k] != d[k]:
                sys.exit(f"eval_v2_table.py: {path}: {k} {h[k]} is not the eval's {d[k]}")
        ranges.append((h["first"], h["first"] + h["problems"], path))
        for r in h["runs"]:
            c, t = acc.get(r["budget_pct"], (0, 0))
            acc[r["budget_pct"]] = (c + r["correct"], t + r["problems"])
    n = 0
    for lo, hi, path in sorted(ranges):
        if lo != n:
            sys.exit(f"eval_v2_table.py: {path} starts at problem {lo}, not {n} (gap or overlap)")
        n = hi
    for pct, (c, t) in acc.items():
        cell[("hindsight", pct)] = {"accuracy": c / t, "correct": c, "problems": t}
    return n


def fmt_pct(p):
    return f"{p:g}%"


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--policies", required=True, help="the run with every policy (and full)")
    ap.add_argument("--granularity", nargs="*", default=[], help="R-KV runs at other units")
    ap.add_argument("--lambda", dest="lambdas", nargs="*", default=[], help="R-KV runs at other λ")
    ap.add_argument("--hindsight", nargs="*", default=[],
                    help="tools/model/oracle_hindsight.py --json files (merged: problem ranges)")
    args = ap.parse_args(argv)
    d = load(args.policies)
    cell, full = pct_runs(d)
    hind_n = merge_hindsight(args.hindsight, cell, d)
    if full is None:
        sys.exit("eval_v2_table.py: the --policies file has no full-cache run")
    shares = sorted({p for (_, p) in cell})
    pols = [p for p in ORDER if any((p, s) in cell for s in shares)]
    n = d["problems"]
    se = 100 * math.sqrt(0.25 / n)
    fa = full["accuracy"]
    out = []
    w = out.append
    w(f"{n} problems, {d['digits'][0]}-{d['digits'][1]} digits (seed {d['seed']}), buffer "
      f"{d['buffer']}, window {d['window']}, λ {d['lambda']}, block {d['block_size']}, batch "
      f"{d['batch']}; a budget is a share of each problem's reference length (prompt + trace), "
      f"per request. Full cache: **{100 * fa:.1f}%** ({full['correct']}/{full['problems']}), "
      f"mean generation {full['mean_generated']:.0f} tokens. One cell's standard error is at "
      f"most ±{se:.1f} points." + (
          (f" The hindsight oracle ran on all {hind_n} problems (PyTorch, " if hind_n == n else
           f" The hindsight oracle ran on the first {hind_n} of these problems (PyTorch, ") +
          f"tools/model/oracle_hindsight.py; one cell's standard error ±"
          f"{100 * math.sqrt(0.25 / hind_n):.1f} points)." if hind_n else ""))

    def table(title, rows, key="policy"):
        """A table by budget share: rows of (name, [cell text per share])."""
        if title:
            w("")
            w(title)
        w("")
        w(f"| {key} | " + " | ".join(fmt_pct(s) for s in shares) + " |")
        w("|---|" + "---:|" * len(shares))
        for name, cells in rows:
            w(f"| {name} | " + " | ".join(cells) + " |")

    def cells(p, fmt):
        return [fmt(cell[(p, s)], s) if (p, s) in cell else "" for s in shares]

    table(None, [(NAMES[p], cells(p, lambda r, s: f"{100 * r['accuracy']:.1f}")) for p in pols])
    if fa:
        table("Share of the full cache's accuracy (accuracy / full):",
              [(NAMES[p], cells(p, lambda r, s: f"{r['accuracy'] / fa:.2f}")) for p in pols])
    ref = "hindsight" if "hindsight" in pols else "oracle" if "oracle" in pols else None
    if ref:
        gap = lambda r, s: (f"{100 * (cell[(ref, s)]['accuracy'] - r['accuracy']):+.1f}"  # noqa: E731
                            if (ref, s) in cell else "")
        table(f"Gap to the {NAMES[ref]} in points ({NAMES[ref]} − policy):",
              [(NAMES[p], cells(p, gap)) for p in pols if p != ref])
    w("")
    w("Peak KV blocks in use (full cache: "
      f"{full['peak_kv_blocks']}) and decode tokens/s (full cache: {full['tokens_per_s']:.0f}):")
    w("")
    w("| policy | " + " | ".join(f"{fmt_pct(s)} blocks | tok/s" for s in shares) + " |")
    w("|---|" + "---:|---:|" * len(shares))
    for p in (p for p in pols if p != "hindsight"):  # not served through librkv
        row = []
        for s in shares:
            r = cell.get((p, s))
            row += [str(r["peak_kv_blocks"]), f"{r['tokens_per_s']:.0f}"] if r else ["", ""]
        w(f"| {NAMES[p]} | " + " | ".join(row) + " |")

    def rkv_rows(files, label):
        rows = []
        for path in files:
            g = load(path)
            c, _ = pct_runs(g)
            rows.append((label(g), [c.get(("rkv", s)) for s in shares]))
        return rows

    extra = []
    if args.granularity:
        base = ("stream (default)", [cell.get(("rkv", s)) for s in shares])
        extra.append(("R-KV by selection granularity", "unit",
                      [base] + rkv_rows(args.granularity, lambda g: g["granularity"])))
    if args.lambdas:
        base = (f"{d['lambda']:g} (default)", [cell.get(("rkv", s)) for s in shares])
        rows = [base] + rkv_rows(args.lambdas, lambda g: f"{g['lambda']:g}")
        rows.sort(key=lambda r: float(r[0].split()[0]))
        extra.append(("R-KV by λ (importance weight; 1 − λ weighs redundancy)", "λ", rows))
    for title, key, rows in extra:
        table(f"{title}:", [(name, [f"{100 * r['accuracy']:.1f}" if r else "" for r in rs])
                            for name, rs in rows], key)

    w("")
    ok = [s for s in shares if s <= 30 and ("rkv", s) in cell and fa and
          cell[("rkv", s)]["accuracy"] >= 0.9 * fa]
    if ok:
        w(f"Paper's criterion (R-KV at <= 30% keeps >= 90% of full accuracy): **met** at "
          f"{', '.join(fmt_pct(s) for s in ok)}.")
    else:
        w("Paper's criterion (R-KV at <= 30% keeps >= 90% of full accuracy): **not met**.")
    print("\n".join(out))
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Markdown tables from `rkv eval --json` output (docs/BENCHMARKS.md, "Accuracy vs KV budget").

    /usr/bin/python3 tools/bench/eval_table.py docs/bench/eval-adder.json [--by-digits 128,256]

Prints: accuracy per policy and budget (with the binomial standard error of one cell), R-KV's
lead over SnapKV and StreamingLLM in points at each budget, peak KV blocks and decode tokens/s,
and accuracy by digit count at the chosen budgets next to each digit count's sequence length
(prompt + trace = 26n + 46 tokens), i.e. the budget as a share of the full cache."""

import argparse
import json
import math
import sys

ORDER = ["rkv", "snapkv", "streaming", "h2o"]
NAMES = {"full": "full cache", "rkv": "R-KV", "snapkv": "SnapKV", "streaming": "StreamingLLM",
         "h2o": "H2O"}


def seq_len(n):
    return 26 * n + 46


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("json")
    ap.add_argument("--by-digits", default="128,256", help="budgets for the by-digit table")
    args = ap.parse_args(argv)
    with open(args.json) as f:
        d = json.load(f)
    runs = d["runs"]
    full = next((r for r in runs if r["policy"] == "full"), None)
    budgets = sorted({r["budget"] for r in runs if r["policy"] != "full"})
    cell = {(r["policy"], r["budget"]): r for r in runs if r["policy"] != "full"}
    pols = [p for p in ORDER if any((p, b) in cell for b in budgets)]
    n = d["problems"]
    se = 100 * math.sqrt(0.25 / n)
    out = []
    w = out.append
    w(f"{n} problems, {d['digits'][0]}-{d['digits'][1]} digits (seed {d['seed']}), buffer "
      f"{d['buffer']}, window {d['window']}, batch {d['batch']}, kv {d['kv_dtype']}; "
      f"one cell's standard error is at most ±{se:.1f} points.")
    w("")
    w("| policy | " + " | ".join(f"B={b}" for b in budgets) + " |")
    w("|---|" + "---|" * len(budgets))
    if full:
        w(f"| {NAMES['full']} | " + " | ".join(f"{100 * full['accuracy']:.1f}%" for _ in budgets) + " |")
    for p in pols:
        w(f"| {NAMES[p]} | " + " | ".join(
            f"{100 * cell[(p, b)]['accuracy']:.1f}%" if (p, b) in cell else "-" for b in budgets) + " |")
    w("")
    if "rkv" in pols:
        w("R-KV minus the others, percentage points:")
        w("")
        w("| vs | " + " | ".join(f"B={b}" for b in budgets) + " |")
        w("|---|" + "---|" * len(budgets))
        for p in pols:
            if p == "rkv":
                continue
            row = []
            for b in budgets:
                if ("rkv", b) in cell and (p, b) in cell:
                    row.append(f"{100 * (cell[('rkv', b)]['accuracy'] - cell[(p, b)]['accuracy']):+.1f}")
                else:
                    row.append("-")
            w(f"| {NAMES[p]} | " + " | ".join(row) + " |")
        w("")
    w("Peak KV blocks in use (block size 16, all layers and heads) / generated tokens per second:")
    w("")
    w("| policy | " + " | ".join(f"B={b}" for b in budgets) + " |")
    w("|---|" + "---|" * len(budgets))
    if full:
        w(f"| {NAMES['full']} | " + " | ".join(
            f"{full['peak_kv_blocks']} / {full['tokens_per_s']:.0f}" for _ in budgets) + " |")
    for p in pols:
        w(f"| {NAMES[p]} | " + " | ".join(
            f"{cell[(p, b)]['peak_kv_blocks']} / {cell[(p, b)]['tokens_per_s']:.0f}"
            if (p, b) in cell else "-" for b in budgets) + " |")
    w("")
    want = [int(x) for x in args.by_digits.split(",") if x]
    digits = sorted({int(k) for r in runs for k in r["accuracy_by_digits"]})
    cols = [(p, b) for b in want for p in pols if (p, b) in cell]
    if cols:
        w("Accuracy by digit count (about " + f"{n // max(1, len(digits))}" +
          " problems each); B / length is the budget's share of the full sequence:")
        w("")
        w("| digits | length | " + " | ".join(f"{NAMES[p]} B={b} (B/len)" for p, b in cols) + " |")
        w("|---|---|" + "---|" * len(cols))
        for k in digits:
            row = [str(k), str(seq_len(k))]
            for p, b in cols:
                a = cell[(p, b)]["accuracy_by_digits"].get(str(k))
                frac = min(1.0, b / seq_len(k))
                row.append("-" if a is None else f"{100 * a:.0f}% ({100 * frac:.0f}%)")
            w("| " + " | ".join(row) + " |")
    print("\n".join(out))
    return 0


if __name__ == "__main__":
    sys.exit(main())

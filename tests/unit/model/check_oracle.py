#!/usr/bin/env python3
"""rkv eval --policies oracle on the version-2 model (docs/MODEL.md, "The oracle").

Every compression of an oracle run checks the library's selection against the oracle's own
mirror of the kept positions (a divergence exits 1), and --require-bounds holds each request
to its own budget. Here, in addition: the oracle keeps what the rest of the trace reads, so at
30% (--share) of the sequence it must answer at least --floor of the problems (H2O, which runs through
the same selection with its own scores, is printed for comparison).
--relabel runs the mechanics on weights of another task version (a copy whose metadata says
version 2): their generations are not version-2 traces, so only the mirror, the bounds and
the bookkeeping are checked (use --floor 0).
usage: check_oracle.py RKV WEIGHTS [--problems N] [--digits LO-HI] [--floor X] [--relabel]"""
import argparse
import json
import os
import subprocess
import sys
import tempfile


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("rkv")
    ap.add_argument("weights")
    ap.add_argument("--problems", type=int, default=24)
    ap.add_argument("--digits", default="6-10")
    ap.add_argument("--floor", type=float, default=0.8)
    ap.add_argument("--relabel", action="store_true")
    ap.add_argument("--share", type=int, default=30, help="the budget, in percent")
    a = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        if a.relabel:
            sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..",
                                            "..", "..", "tools", "model"))
            from safetensors_io import load, save
            arrays, meta = load(a.weights)
            meta["generator_version"] = "2"
            a.weights = os.path.join(tmp, "relabelled.safetensors")
            save(a.weights, arrays, meta)
        gen = os.path.join(tmp, "gen.jsonl")
        cmd = [a.rkv, "eval", "--model", a.weights, "--problems", str(a.problems), "--digits",
               a.digits, "--policies", "full,oracle,h2o", "--budgets", f"{a.share}%", "--json",
               "--check", "--require-bounds", "--generations", gen]
        p = subprocess.run(cmd, capture_output=True, text=True,
                           env=dict(os.environ, OPENBLAS_NUM_THREADS="1"))
        if p.returncode != 0:
            sys.exit("FAIL: %s exited %d\n%s" % (" ".join(cmd), p.returncode, p.stderr[-3000:]))
        runs = {r["policy"]: r for r in json.loads(p.stdout)["runs"]}
        with open(gen) as f:
            lines = [json.loads(x) for x in f]
    ok = {(g["policy"], g["id"]): g["correct"] for g in lines}
    orc, h2o, full = runs["oracle"], runs["h2o"], runs["full"]
    print(f"full {full['accuracy']:.3f}, oracle at {a.share}% {orc['accuracy']:.3f} (mean budget "
          f"{orc['mean_budget']:.0f}, {orc['compressions']} compressions), h2o "
          f"{h2o['accuracy']:.3f}")
    fails = []
    if orc["budget_pct"] != a.share or not orc["budget_respected"]:
        fails.append(f"the oracle run is not a per-request {a.share}% run within its bounds")
    if orc["compressions"] == 0:
        fails.append("the oracle never compressed: nothing was checked")
    if orc["accuracy"] < a.floor:
        fails.append(f"oracle accuracy {orc['accuracy']:.3f} < floor {a.floor}")
    if len([1 for (pol, _), c in ok.items() if pol == "oracle" and c]) != orc["correct"]:
        fails.append("the generations file disagrees with the oracle's correct count")
    for f in fails:
        print("FAIL:", f)
    print(f"{4 - len(fails)} passed, {len(fails)} failed")
    return 1 if fails else 0


if __name__ == "__main__":
    sys.exit(main())

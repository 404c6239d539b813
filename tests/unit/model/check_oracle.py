#!/usr/bin/env python3
"""rkv eval --policies oracle on the version-2 model (docs/MODEL.md, "The oracle").

Every compression of an oracle run checks the library's selection against the oracle's own
mirror of the kept positions (a divergence exits 1), and --require-bounds holds each request
to its own budget. Here, in addition: the oracle keeps what the rest of the trace reads, so at
30% of the sequence it must answer at least --floor of the problems (H2O, which runs through
the same selection with its own scores, is printed for comparison).
usage: check_oracle.py RKV WEIGHTS [--problems N] [--digits LO-HI] [--floor X]"""
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
    a = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        gen = os.path.join(tmp, "gen.jsonl")
        cmd = [a.rkv, "eval", "--model", a.weights, "--problems", str(a.problems), "--digits",
               a.digits, "--policies", "full,oracle,h2o", "--budgets", "30%", "--json",
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
    print(f"full {full['accuracy']:.3f}, oracle at 30% {orc['accuracy']:.3f} (mean budget "
          f"{orc['mean_budget']:.0f}), h2o at 30% {h2o['accuracy']:.3f}")
    fails = []
    if orc["budget_pct"] != 30 or not orc["budget_respected"]:
        fails.append("the oracle run is not a per-request 30% run within its bounds")
    if orc["accuracy"] < a.floor:
        fails.append(f"oracle accuracy {orc['accuracy']:.3f} < floor {a.floor}")
    if len([1 for (pol, _), c in ok.items() if pol == "oracle" and c]) != orc["correct"]:
        fails.append("the generations file disagrees with the oracle's correct count")
    for f in fails:
        print("FAIL:", f)
    print(f"{3 - len(fails)} passed, {len(fails)} failed")
    return 1 if fails else 0


if __name__ == "__main__":
    sys.exit(main())

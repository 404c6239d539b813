#!/usr/bin/env python3
"""rkv eval with the prefix cache (docs/PREFIX-CACHING.md): every problem submitted twice, so
the second copy of each prompt shares the first's cached blocks. Greedy decoding makes the
claim exact:
  - full cache: cache on generates exactly the tokens of cache off (no hashes at all);
  - R-KV under the protect rule: cache on generates exactly the tokens of cache off with the
    same protection;
and the cache was used (prompt tokens taken from it, fewer computed, fewer blocks at peak).
usage: check_prefix.py RKV WEIGHTS [--problems N] [--digits LO-HI] [--budget B]
                       [--block-size N] [--floor X]"""
import argparse
import json
import os
import subprocess
import sys
import tempfile

REPEAT = 2
A = None  # the options


def run(rkv, weights, tmp, name, extra):
    gen = os.path.join(tmp, name + ".jsonl")
    cmd = [rkv, "eval", "--model", weights, "--problems", str(A.problems), "--repeat",
           str(REPEAT), "--digits", A.digits, "--policies", "full,rkv", "--budgets",
           str(A.budget), "--block-size", str(A.block_size), "--json", "--check",
           "--generations", gen] + extra
    p = subprocess.run(cmd, capture_output=True, text=True,
                       env=dict(os.environ, OPENBLAS_NUM_THREADS="1"))
    if p.returncode != 0:
        sys.exit("FAIL: %s exited %d\n%s" % (" ".join(cmd), p.returncode, p.stderr[-3000:]))
    runs = {r["policy"]: r for r in json.loads(p.stdout)["runs"]}
    with open(gen) as f:
        lines = [json.loads(s) for s in f]
    return runs, lines


def of(lines, policy):
    return [x for x in lines if x["policy"] == policy]


def main():
    global A
    ap = argparse.ArgumentParser()
    ap.add_argument("rkv")
    ap.add_argument("weights")
    ap.add_argument("--problems", type=int, default=24)
    ap.add_argument("--digits", default="6-20")
    ap.add_argument("--budget", type=int, default=192)
    ap.add_argument("--block-size", type=int, default=16)
    ap.add_argument("--floor", type=float, default=0.9, help="full-cache accuracy floor")
    A = ap.parse_args()
    rkv, weights, PROBLEMS, BUDGET = A.rkv, A.weights, A.problems, A.budget
    fails = []
    with tempfile.TemporaryDirectory() as tmp:
        off, g_off = run(rkv, weights, tmp, "off", [])
        on, g_on = run(rkv, weights, tmp, "on", ["--prefix-cache", "on"])
        prot, g_prot = run(rkv, weights, tmp, "protect", ["--prefix-rule", "protect"])
    n = PROBLEMS * REPEAT
    if len(of(g_on, "full")) != n or of(g_on, "full") != of(g_off, "full"):
        fails.append("full cache: generations with the prefix cache differ from without")
    if len(of(g_on, "rkv")) != n or of(g_on, "rkv") != of(g_prot, "rkv"):
        fails.append("rkv B=%d: generations with the prefix cache differ from the same protection "
                     "without it" % BUDGET)
    for pol, base in (("full", off), ("rkv", prot)):
        a, b = on[pol], base[pol]
        for k in ("correct", "steps", "compressions", "tokens_evicted", "mean_generated"):
            if a[k] != b[k]:
                fails.append("%s: %s %s with the cache, %s without" % (pol, k, a[k], b[k]))
        if not a["prefix_hit_tokens"] or b["prefix_hit_tokens"]:
            fails.append("%s: hit tokens %s with the cache, %s without" % (
                pol, a["prefix_hit_tokens"], b["prefix_hit_tokens"]))
        if a["prompt_tokens_computed"] + a["prefix_hit_tokens"] != b["prompt_tokens_computed"]:
            fails.append("%s: %s computed + %s hit != %s computed without the cache" % (
                pol, a["prompt_tokens_computed"], a["prefix_hit_tokens"],
                b["prompt_tokens_computed"]))
        if a["peak_kv_blocks"] >= b["peak_kv_blocks"]:
            fails.append("%s: peak blocks %s with the cache, %s without" % (
                pol, a["peak_kv_blocks"], b["peak_kv_blocks"]))
        print("%s: %d/%d correct both ways; prompt tokens computed %d with the cache (%d hit) vs "
              "%d; peak blocks %d vs %d" % (pol, a["correct"], n, a["prompt_tokens_computed"],
                                           a["prefix_hit_tokens"], b["prompt_tokens_computed"],
                                           a["peak_kv_blocks"], b["peak_kv_blocks"]))
    if on["full"]["correct"] < n * A.floor:
        fails.append("full cache solved only %d of %d" % (on["full"]["correct"], n))
    for f in fails:
        print("FAIL:", f)
    print("%d passed, %d failed" % (0 if fails else 1, len(fails)))
    return 1 if fails else 0


if __name__ == "__main__":
    sys.exit(main())

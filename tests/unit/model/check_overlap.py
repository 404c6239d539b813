#!/usr/bin/env python3
"""rkv eval with overlap scheduling (docs/OVERLAP.md): the next step is planned while the
current one's compressions and report are still to come. Greedy decoding makes the claim
exact: for every policy, overlap on generates exactly the tokens of overlap off (the same
generations, the same correct count), with the prefix cache off and on; and under overlap the
executor's device path (the emulated device) generates exactly what the CPU pool does.
usage: check_overlap.py RKV WEIGHTS [--problems N] [--digits LO-HI] [--budget B]
                        [--block-size N]"""
import argparse
import json
import os
import subprocess
import sys
import tempfile

POLICIES = "full,rkv,snapkv,streaming,h2o"
A = None  # the options


def run(tmp, name, extra):
    gen = os.path.join(tmp, name + ".jsonl")
    cmd = [A.rkv, "eval", "--model", A.weights, "--problems", str(A.problems), "--digits",
           A.digits, "--policies", POLICIES, "--budgets", str(A.budget), "--block-size",
           str(A.block_size), "--json", "--check", "--generations", gen] + extra
    p = subprocess.run(cmd, capture_output=True, text=True,
                       env=dict(os.environ, OPENBLAS_NUM_THREADS="1"))
    if p.returncode != 0:
        sys.exit("FAIL: %s exited %d\n%s" % (" ".join(cmd), p.returncode, p.stderr[-3000:]))
    runs = {r["policy"]: r for r in json.loads(p.stdout)["runs"]}
    with open(gen) as f:
        lines = [json.loads(s) for s in f]
    return runs, lines


def by_request(lines, policy):
    """Generations of one policy keyed by problem id: the order problems finish in may differ
    (a late end is reported a step later), what each generates may not."""
    return {x["id"]: x for x in lines if x["policy"] == policy}


def main():
    global A
    ap = argparse.ArgumentParser()
    ap.add_argument("rkv")
    ap.add_argument("weights")
    ap.add_argument("--problems", type=int, default=24)
    ap.add_argument("--digits", default="6-20")
    ap.add_argument("--budget", type=int, default=192)
    ap.add_argument("--block-size", type=int, default=16)
    A = ap.parse_args()
    fails = []
    with tempfile.TemporaryDirectory() as tmp:
        for label, extra in (("", []), (" with the prefix cache", ["--prefix-cache", "on",
                                                                   "--repeat", "2"])):
            sync, g_sync = run(tmp, "sync", extra + ["--overlap", "off"])
            over, g_over = run(tmp, "overlap", extra + ["--overlap", "on"])
            for pol in POLICIES.split(","):
                a, b = by_request(g_sync, pol), by_request(g_over, pol)
                if not a or a != b:
                    fails.append("%s%s: overlap generations differ from sync (%d vs %d)" % (
                        pol, label, len(a), len(b)))
                for k in ("correct", "mean_generated", "compressions", "tokens_evicted"):
                    if sync[pol][k] != over[pol][k]:
                        fails.append("%s%s: %s %s sync, %s overlap" % (
                            pol, label, k, sync[pol][k], over[pol][k]))
                print("%-9s%s: %d/%d correct both ways, %d generations identical; steps %d "
                      "sync, %d overlap" % (pol, label, sync[pol]["correct"],
                                            sync[pol]["problems"], len(a), sync[pol]["steps"],
                                            over[pol]["steps"]))
        # the executor's device path (emulated device) under overlap: the same tokens as the
        # CPU pool (copy rule: the device selection takes no protected prefix)
        # (block size 16: the device kernels take 16 or 32; the last --block-size counts)
        dev = ["--prefix-rule", "copy", "--overlap", "on", "--block-size", "16"]
        cpu, g_cpu = run(tmp, "cpu", dev)
        emu, g_emu = run(tmp, "emu", dev + ["--backend", "emu"])
        for pol in POLICIES.split(","):
            a, b = by_request(g_cpu, pol), by_request(g_emu, pol)
            if not a or a != b:
                fails.append("%s: overlap on the emulated device differs from the CPU pool" % pol)
            else:
                print("%-9s: overlap, emulated device = CPU pool, %d generations" % (pol, len(a)))
    for f in fails:
        print("FAIL: " + f)
    print("%d passed, %d failed" % (0 if fails else 1, len(fails)))
    return 1 if fails else 0


if __name__ == "__main__":
    sys.exit(main())

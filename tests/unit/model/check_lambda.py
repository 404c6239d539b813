"""`rkv eval --lambda`: with lambda = 1 (importance only) R-KV must select exactly what SnapKV
selects, so every count of the two runs agrees; with the default lambda the redundancy term
must change something (the option is wired through). Plain python3, no numpy.

    check_lambda.py RKV_BINARY WEIGHTS
Ends with the "N passed, N failed" line."""

import json
import os
import subprocess
import sys

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..", "common"))
from checks import Checks  # noqa: E402

FIELDS = ("correct", "mean_generated", "peak_kv_blocks", "max_stream_len", "compressions",
          "tokens_evicted", "blocks_freed", "accuracy_by_digits")


def run(rkv, weights, *extra):
    cmd = [rkv, "eval", "--model", weights, "--digits", "1-3", "--problems", "60", "--budgets",
           "24,32", "--buffer", "8", "--batch", "8", "--json", *extra]
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    if r.returncode != 0:
        print(" ".join(cmd) + "\n" + r.stderr)
        return None
    return {x["budget"]: x for x in json.loads(r.stdout)["runs"]}


def main():
    rkv, weights = sys.argv[1], sys.argv[2]
    checks = Checks()
    expect = checks.expect

    snap = run(rkv, weights, "--policies", "snapkv")
    imp = run(rkv, weights, "--policies", "rkv", "--lambda", "1")
    dflt = run(rkv, weights, "--policies", "rkv")
    expect(snap is not None and imp is not None and dflt is not None, "the three runs succeed")
    if snap and imp and dflt:
        for b in snap:
            for f in FIELDS:
                expect(snap[b][f] == imp[b][f],
                       f"B={b} {f}: snapkv {snap[b][f]} vs rkv --lambda 1 {imp[b][f]}")
        expect(any(snap[b][f] != dflt[b][f] for b in snap for f in FIELDS),
               "the default lambda (0.1) changes some selection vs SnapKV")
    return checks.finish()


if __name__ == "__main__":
    sys.exit(main())

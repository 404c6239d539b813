#!/usr/bin/env python3
"""Pins the results of `rkv sim` and `rkv eval` to values recorded before a refactor.

usage: pin_results.py RKV PINNED.json [extra rkv args...]

Runs the command recorded in PINNED.json (its first word replaced by the rkv binary) and
compares every recorded field of every run, exactly. Timing fields are not recorded, so they
are not compared. Exit 0 on equality, 1 with the differences listed otherwise."""
import json
import shlex
import subprocess
import sys


def main():
    rkv, pinned_path = sys.argv[1], sys.argv[2]
    pinned = json.load(open(pinned_path))
    cmd = [rkv] + shlex.split(pinned["command"])[1:] + sys.argv[3:]
    res = subprocess.run(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    if res.returncode != 0:
        print("command failed (%d): %s\n%s" % (res.returncode, " ".join(cmd), res.stderr[-2000:]))
        return 1
    got = json.loads(res.stdout)
    key = "policies" if "policies" in pinned else "runs"
    want_runs, got_runs = pinned[key], got[key]
    diffs = []
    if len(want_runs) != len(got_runs):
        diffs.append("%d runs, expected %d" % (len(got_runs), len(want_runs)))
    for want, have in zip(want_runs, got_runs):
        name = "%s/%s" % (want.get("policy"), want.get("budget", ""))
        for field, value in want.items():
            if have.get(field) != value:
                diffs.append("%s %s: %r, expected %r" % (name, field, have.get(field), value))
    for d in diffs:
        print(d)
    n = sum(len(r) for r in want_runs)
    print("%s: %d runs, %d fields compared, %d differ" % (pinned_path, len(want_runs), n, len(diffs)))
    return 1 if diffs else 0


if __name__ == "__main__":
    sys.exit(main())

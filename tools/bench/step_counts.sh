#!/bin/bash
# Deterministic per-step costs of `rkv bench step` for noisy machines: runs the bench under
# cachegrind at two lengths and prints the difference per sequence per step (instructions, L1
# data misses, misses of a simulated 1 MiB 8-way L2), so the warm-up and setup cancel out.
#   tools/bench/step_counts.sh [--rkv PATH] [bench step options, e.g. --plan-slots]
# Needs valgrind (Debian package `valgrind`); takes about a minute per binary.
set -euo pipefail
rkv=build/release/tools/rkv
if [ "${1:-}" = "--rkv" ]; then rkv=$2; shift 2; fi
case "${1:-}" in -h|--help) sed -n 2,6p "$0"; exit 0;; esac
command -v valgrind >/dev/null || { echo "step_counts: valgrind not found" >&2; exit 77; }
tmp=$(mktemp -d); trap 'rm -rf "$tmp"' EXIT
short=256 long=768 batch=256
args=("$@")
for ((i = 0; i + 1 < ${#args[@]}; i++)); do [ "${args[i]}" = "--batch" ] && batch=${args[i + 1]}; done
for s in $short $long; do
  echo "step_counts: $rkv bench step --steps $s $* under cachegrind" >&2
  valgrind --tool=cachegrind --cache-sim=yes --LL=1048576,8,64 \
    --cachegrind-out-file="$tmp/cg.$s" "$rkv" bench step --steps "$s" "$@" >/dev/null 2>&1
done
python3 - "$tmp/cg.$short" "$tmp/cg.$long" $((long - short)) $batch "$*" <<'PY'
import sys
def totals(path):  # the "summary:" line of a cachegrind out file: Ir I1mr ILmr Dr D1mr DLmr Dw D1mw DLmw
    for line in open(path):
        if line.startswith('events:'): ev = line.split()[1:]
        if line.startswith('summary:'): return dict(zip(ev, map(int, line.split()[1:])))
a, b = totals(sys.argv[1]), totals(sys.argv[2])
n = int(sys.argv[3]) * int(sys.argv[4])
d = {k: (b[k] - a[k]) / n for k in a}
print('{"bench": "step_counts", "args": "%s", "instructions": %.0f, "l1d_misses": %.1f, '
      '"l2_misses": %.1f}' % (sys.argv[5], d['Ir'], d['D1mr'] + d['D1mw'], d['DLmr'] + d['DLmw']))
PY

#!/bin/sh
# Every `rkv eval` run behind docs/BENCHMARKS.md, "The v2 model": the policy table (full, the
# structural oracle, R-KV, SnapKV, StreamingLLM, H2O at budgets of 10-60% of each problem's
# length), R-KV at each selection granularity (15-45%), and a λ sweep (15%, 30%); then the
# markdown tables (tools/bench/eval_v2_table.py). Two runs at a time, one thread each;
# progress on stderr. The hindsight oracle is tools/model/oracle_hindsight.py (torch).
#
#   sh tools/bench/eval_v2_runs.sh [RKV] [WEIGHTS] [OUTDIR] [PROBLEMS]
#
# Defaults: build/release/tools/rkv, tools/model/weights/adder2.safetensors, docs/bench, 500.
# Run from the repository root.
set -eu
rkv=${1:-build/release/tools/rkv}
weights=${2:-tools/model/weights/adder2.safetensors}
out=${3:-docs/bench}
problems=${4:-500}
shares=10%,15%,20%,30%,45%,60%
[ -x "$rkv" ] || { echo "eval_v2_runs.sh: no rkv at $rkv (cmake --preset release && cmake --build --preset release)" >&2; exit 2; }
[ -f "$weights" ] || { echo "eval_v2_runs.sh: no weights at $weights" >&2; exit 2; }
mkdir -p "$out"
export OPENBLAS_NUM_THREADS=1
run() { # name, then rkv eval arguments
  name=$1
  shift
  echo "eval_v2_runs.sh: $name ..." >&2
  start=$(date +%s)
  "$rkv" eval --model "$weights" --problems "$problems" --threads 1 --json "$@" >"$out/$name.json"
  echo "eval_v2_runs.sh: $name done in $(($(date +%s) - start)) s" >&2
}
# two queues of about equal work, one per core
(
  run eval-adder2 --policies full,oracle,rkv,snapkv,streaming,h2o --budgets $shares \
    --plot "$out/eval-adder2.svg"
) &
q1=$!
(
  for g in layer kvhead sequence; do
    run eval-adder2-gran-$g --policies rkv --budgets 15%,20%,30%,45% --granularity $g
  done
  for l in 0 0.3 1; do
    run eval-adder2-lambda-$l --policies rkv --budgets 15%,30% --lambda $l
  done
) &
q2=$!
fail=0
wait $q1 || fail=1
wait $q2 || fail=1
[ $fail -eq 0 ] || { echo "eval_v2_runs.sh: a run failed" >&2; exit 1; }
here=$(dirname "$0")
python3 "$here/eval_v2_table.py" --policies "$out/eval-adder2.json" \
  --granularity "$out"/eval-adder2-gran-*.json --lambda "$out"/eval-adder2-lambda-*.json

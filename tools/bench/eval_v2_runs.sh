#!/bin/sh
# Every run behind docs/BENCHMARKS.md, "The v2 model": the policy table (full, the structural
# oracle, R-KV, SnapKV, StreamingLLM, H2O at budgets of 10-60% of each problem's length), R-KV
# at each selection granularity (15-60%), a λ sweep (15%, 30%), then the hindsight oracle
# (tools/model/oracle_hindsight.py, PyTorch) at every budget, and the markdown tables
# (tools/bench/eval_v2_table.py). Two runs at a time, one thread each; progress on stderr.
#
#   sh tools/bench/eval_v2_runs.sh [RKV] [WEIGHTS] [OUTDIR] [PROBLEMS]
#
# Defaults: build/release/tools/rkv, tools/model/weights/adder2.safetensors, docs/bench, 500.
# Run from the repository root. The hindsight oracle needs a python3 with torch
# (RKV_TORCH_PYTHON, default /usr/bin/python3); without one it is skipped with a message and
# the tables leave its row out.
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
    run eval-adder2-gran-$g --policies rkv --budgets 15%,20%,30%,45%,60% --granularity $g
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
py=${RKV_TORCH_PYTHON:-/usr/bin/python3}
hind=""
if "$py" -c "import torch" 2>/dev/null; then
  # two processes over halves of the problem set (oracle_hindsight.py --first); the table
  # merges the ranges
  half=$(((problems + 1) / 2))
  rm -f "$out"/oracle-hindsight-adder2-*.json # an earlier run's ranges would overlap these
  echo "eval_v2_runs.sh: hindsight oracle ..." >&2
  start=$(date +%s)
  hindsight() { # first problem, count
    "$py" "$here/../model/oracle_hindsight.py" "$weights" --first "$1" --problems "$2" \
      --budgets $shares --batch 16 --json "$out/oracle-hindsight-adder2-$1.json" >/dev/null
  }
  hindsight 0 "$half" &
  h1=$!
  hindsight "$half" $((problems - half)) &
  h2=$!
  wait $h1 || fail=1
  wait $h2 || fail=1
  [ $fail -eq 0 ] || { echo "eval_v2_runs.sh: the hindsight oracle failed" >&2; exit 1; }
  echo "eval_v2_runs.sh: hindsight oracle done in $(($(date +%s) - start)) s" >&2
  hind="$out/oracle-hindsight-adder2-0.json $out/oracle-hindsight-adder2-$half.json"
else
  echo "eval_v2_runs.sh: no torch in $py: the hindsight oracle is skipped" >&2
fi
# shellcheck disable=SC2086 # the file lists split on purpose
python3 "$here/eval_v2_table.py" --policies "$out/eval-adder2.json" \
  --granularity "$out"/eval-adder2-gran-*.json --lambda "$out"/eval-adder2-lambda-*.json \
  ${hind:+--hindsight $hind}

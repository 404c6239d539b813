#!/usr/bin/env bash
# First run on a GPU, from one prepared script (issue 16; docs/GPU-CHECK.md): correctness, the
# sanitizers and the numbers, in order of value, each stage under its own timeout and all of
# them inside one wall-clock budget (default 500 s), so that one call on a lent GPU machine
# gives everything it can even when a stage fails.
#
#   tools/bench/cuda_gpu_check.sh [options] [OUT_DIR]
#
# Stages (--stages picks a subset; default all, in this order):
#   env        GPU model, driver, CUDA, compute-sanitizer, PyTorch versions (nvidia-smi, nvcc)
#   build      configure + build of the `gpu` preset (CUDA and GPU tests required), --jobs jobs
#   test       ctest -L gpu (GPU tests required: a skip fails; sim_cuda_gpu_matches_cpu and
#              model_eval_cuda run the executor's CUDA path through the tools, the former
#              also under overlap scheduling with swap), stopped at the stage's end; then the
#              NCCL and poison tests last and alone, 30 s each (either may hang or fault)
#   eval       rkv eval --backend cuda --compare-cpu on the trained model (accuracies must match)
#   sanitize   compute-sanitizer memcheck + racecheck on a subset of the GPU tests and two
#              small tool runs (skipped with a note where compute-sanitizer is missing)
#   attention  decode attention, Llama-8B layer (32 q / 8 kv heads, d 128, bf16, block 16),
#              batch 64-256 x context 4K-16K, as a fraction of a device-to-device copy
#   evict      the R-KV compression at B = 1024, n = 1152 against the PyTorch reference, and
#              as a share of the 128 decode steps between two compressions
#   sim        rkv sim --compute cuda: the paper's fixed-batch table (full vs R-KV, B = 1024,
#              16K generations) at one layer, measured
#   swap       rkv bench swap: the pool's host transfers (swap out / in of scattered blocks)
#              as a fraction of one contiguous copy of the same bytes
#
# Output (at most 8 files: what the device tool brings back): OUT_DIR/gpu.json (device,
# stages, rows: name, shape, seconds, gbps, fraction_of_copy, ...; rewritten after every
# stage; the commit from RKV_GPU_CHECK_COMMIT, else git), summary.txt (the lines
# printed), log.txt (every command with the end of its output), ctest-gpu.xml, eval-cuda.json.
# OUT_DIR defaults to $OUT when set, else ./gpu-check-out.
#
# Exit status: 0 all ran; 1 a correctness stage (build, test, eval, sanitize) failed or timed
# out; 2 only a benchmark stage failed; 64 bad usage. Later stages run after a failure
# wherever they can (no binaries: skipped).
#
# --dry-run (or RKV_GPU_CHECK_DRY_RUN=1) runs what needs no GPU: the build, argument handling,
# the stage logic and the JSON, with CUDA devices hidden (CUDA_VISIBLE_DEVICES=) so every GPU
# command takes its no-GPU path; benchmark rows are written as placeholders, and CPU stand-ins
# (bench attention on the CPU backend, rkv sim --compute none at the same shapes) check the
# parsers.
set -u
# Run by `sh` (the old usage): continue under bash.
if [ -z "${BASH_VERSION:-}" ]; then exec bash "$0" "$@"; fi

usage() {
  cat <<'EOF'
usage: tools/bench/cuda_gpu_check.sh [options] [OUT_DIR]
  --out DIR          output directory (default $OUT, else ./gpu-check-out)
  --build-dir DIR    build tree (default build/gpu, the gpu preset's)
  --reuse-build      use DIR as it is: no configure, no build (it must hold tools/rkv)
  --jobs N           build jobs (default 16, the gpu preset's)
  --stages LIST      comma list of env,build,test,eval,sanitize,attention,evict,sim,swap
  --budget S         wall-clock budget of the whole run in seconds (default 500)
  --quick            smaller eval / attention / sim sizes (a rerun on a warm machine)
  --dry-run          no GPU work (also RKV_GPU_CHECK_DRY_RUN=1); see the script's header
  -h, --help
EOF
}

# ---- arguments ---------------------------------------------------------------------------
ROOT=$(cd "$(dirname "$0")/../.." && pwd)
O=${OUT:-}
B=build/gpu
REUSE=0
JOBS=16
STAGES=env,build,test,eval,sanitize,attention,evict,sim,swap
BUDGET=500
QUICK=0
DRY=${RKV_GPU_CHECK_DRY_RUN:-0}
[ "$DRY" = 1 ] || DRY=0
while [ $# -gt 0 ]; do
  case "$1" in
    --out) [ $# -ge 2 ] || { usage >&2; exit 64; }; O=$2; shift ;;
    --build-dir) [ $# -ge 2 ] || { usage >&2; exit 64; }; B=$2; shift ;;
    --reuse-build) REUSE=1 ;;
    --jobs) [ $# -ge 2 ] || { usage >&2; exit 64; }; JOBS=$2; shift ;;
    --stages) [ $# -ge 2 ] || { usage >&2; exit 64; }; STAGES=$2; shift ;;
    --budget) [ $# -ge 2 ] || { usage >&2; exit 64; }; BUDGET=$2; shift ;;
    --quick) QUICK=1 ;;
    --dry-run) DRY=1 ;;
    -h | --help) usage; exit 0 ;;
    -*) echo "cuda_gpu_check: unknown option '$1'" >&2; usage >&2; exit 64 ;;
    *)
      # The old usage took the build tree as its argument: a bare argument holding a
      # CMakeCache.txt still means that.
      if [ -f "$1/CMakeCache.txt" ]; then B=$1; else O=$1; fi ;;
  esac
  shift
done
case "$JOBS" in '' | *[!0-9]*) echo "cuda_gpu_check: --jobs: not a number: '$JOBS'" >&2; exit 64 ;; esac
case "$BUDGET" in '' | *[!0-9]*) echo "cuda_gpu_check: --budget: not a number: '$BUDGET'" >&2; exit 64 ;; esac
for s in $(echo "$STAGES" | tr ',' ' '); do
  case "$s" in
    env | build | test | eval | sanitize | attention | evict | sim | swap) ;;
    *) echo "cuda_gpu_check: --stages: unknown stage '$s'" >&2; exit 64 ;;
  esac
done
[ -n "$O" ] || O=gpu-check-out
cd "$ROOT" || exit 64
case "$B" in /*) ;; *) B=$ROOT/$B ;; esac
mkdir -p "$O" || exit 64
O=$(cd "$O" && pwd)
rm -f "$O/gpu.json" "$O/gpu.json.tmp" "$O/summary.txt" "$O/log.txt" "$O/ctest-gpu.xml" "$O/eval-cuda.json"
W=$(mktemp -d "${TMPDIR:-/tmp}/rkv-gpu-check.XXXXXX") || exit 64
trap 'rm -rf "$W"' EXIT
: >"$W/rows" && : >"$W/stages"
export PATH="$PATH:/usr/local/cuda/bin:/usr/local/cuda/compute-sanitizer:/usr/local/nvidia/bin"
RKV=$B/tools/rkv
[ "$DRY" = 1 ] && export CUDA_VISIBLE_DEVICES=
T0=$(date +%s.%N 2>/dev/null || date +%s)
DEADLINE=$(($(date +%s) + BUDGET))
RC_CORRECT=0
RC_BENCH=0

# Sizes: the GPU run's, or --quick's for a rerun.
if [ "$QUICK" = 1 ]; then
  EVAL_PROBLEMS=32 ATT_BATCH=64,256 ATT_CTX=4096,16384 ATT_REPEAT=2 SIM_RKV_STEPS=1152,1664
else
  EVAL_PROBLEMS=100 ATT_BATCH=64,128,256 ATT_CTX=4096,8192,16384 ATT_REPEAT=3 SIM_RKV_STEPS=1152,1664
fi

# ---- helpers -----------------------------------------------------------------------------
has_stage() { case ",$STAGES," in *",$1,"*) return 0 ;; esac; return 1; }
now() { date +%s.%N 2>/dev/null || date +%s; }
since() { awk -v a="$1" -v b="$(now)" 'BEGIN { printf "%.1f", b - a }'; }
jstr() { printf '"%s"' "$(printf '%s' "$1" | tr -d '"\\' | tr '\n\t\r' '   ' | tr -d '\000-\010\013\014\016-\037\177')"; }
jnum() { case "$1" in '' | *[!0-9.eE+-]* | nan | inf) printf null ;; *) printf '%s' "$1" ;; esac; }
# Field of a one-line JSON object (numbers, booleans, bare strings).
jget() { sed -n "s/.*\"$1\": *\"\{0,1\}\([^,\"}]*\).*/\1/p" | head -1; }
jbool() { case "$1" in true | false) printf '%s' "$1" ;; *) printf null ;; esac; }
row() { printf '%s\n' "$1" >>"$W/rows"; }
say() { printf '%s\n' "$*" | tee -a "$O/summary.txt"; }
logcmd() { printf '\n$ %s\n' "$*" >>"$O/log.txt"; }
# Appends a file to log.txt, at most 1500 lines from each end.
logfile() {
  local n
  n=$(wc -l <"$1")
  if [ "$n" -gt 3000 ]; then
    head -1500 "$1" >>"$O/log.txt"
    printf '[... %d lines left out ...]\n' $((n - 3000)) >>"$O/log.txt"
    tail -1500 "$1" >>"$O/log.txt"
  else
    cat "$1" >>"$O/log.txt"
  fi
}
# Seconds a stage may take: its cap, clamped to what is left of the budget (5 s kept for the
# JSON); prints 0 when under 15 s are left.
stage_timeout() {
  local left=$((DEADLINE - $(date +%s) - 5)) t=$1
  [ "$left" -lt "$t" ] && t=$left
  [ "$t" -lt 15 ] && t=0
  echo "$t"
}
# Runs a command under a timeout, output to $W/out (also appended to log.txt); returns its
# status (124 on timeout).
run() {
  local t=$1
  shift
  logcmd "[timeout ${t}s] $*"
  timeout --kill-after=10 "$t" "$@" >"$W/out" 2>&1
  local rc=$?
  logfile "$W/out"
  printf '[exit %d]\n' "$rc" >>"$O/log.txt"
  return $rc
}
# gpu.json from the stages and rows so far.
write_json() {
  local commit
  commit=${RKV_GPU_CHECK_COMMIT:-$(git -C "$ROOT" rev-parse --short HEAD 2>/dev/null || echo unknown)}
  {
    printf '{\n  "schema": "rkv-gpu-check/1",\n  "date": "%s",\n  "commit": "%s",\n  "dry_run": %s,\n' \
      "$(date -u +%Y-%m-%dT%H:%M:%SZ)" "$commit" "$([ "$DRY" = 1 ] && echo true || echo false)"
    printf '  "device": {"gpu": %s, "driver": %s, "memory": %s, "cuda": %s, "compute_sanitizer": %s, "torch": %s, "kernel": %s, "cores": %s},\n' \
      "$(jstr "$GPU_NAME")" "$(jstr "$GPU_DRIVER")" "$(jstr "$GPU_MEM")" "$(jstr "$CUDA_VER")" \
      "$(jstr "$SAN_VER")" "$(jstr "$TORCH_VER")" "$(jstr "$(uname -r)")" "$(nproc)"
    printf '  "wall_seconds": %s,\n  "stages": [\n' "$(since "$T0")"
    sed '$!s/$/,/; s/^/    /' "$W/stages"
    printf '  ],\n  "rows": [\n'
    sed '$!s/$/,/; s/^/    /' "$W/rows"
    printf '  ]\n}\n'
  } >"$O/gpu.json.tmp" && mv "$O/gpu.json.tmp" "$O/gpu.json"
}
# stage NAME STATUS START NOTE: records and prints one summary line.
stage() {
  local secs
  secs=$(since "$3")
  printf '{"name": "%s", "status": "%s", "seconds": %s, "note": %s}\n' "$1" "$2" "$secs" \
    "$(jstr "$4")" >>"$W/stages"
  say "$(printf '[%-9s] %-7s %6ss  %s' "$1" "$2" "$secs" "$4")"
  write_json
  case "$2" in
    fail | timeout)
      case "$1" in build | test | eval | sanitize) RC_CORRECT=1 ;; *) RC_BENCH=1 ;; esac ;;
  esac
}
have_rkv() { [ -x "$RKV" ]; }
# tool_stage NAME CAP: sets t (the stage's start) and to (its timeout); records a skip and
# returns 1 when the rkv tool is missing or no time is left.
tool_stage() {
  t=$(now)
  to=$(stage_timeout "$2")
  if ! have_rkv; then
    stage "$1" skip "$t" "no $RKV"
    return 1
  elif [ "$to" = 0 ]; then
    stage "$1" skip "$t" "no time left"
    return 1
  fi
}
# The interpreters to try for PyTorch, first that imports it wins: RKV_PYTHON, the first python3
# on PATH, the GPU image's venv, Debian's.
PYTHONS="${RKV_PYTHON:-} python3 /opt/torch/.venv/bin/python3 /usr/bin/python3"
export RKV_PYTHON
# One row per test in a ctest run's output ($W/out), its name also in $W/ran. The status is
# what ctest printed between the dots and the seconds, stars and a trailing colon dropped
# ("Passed", "Failed", "Timeout", "Exception: SegFault", "Subprocess aborted Exception").
ctest_rows() {
  sed -n 's/^ *[0-9]*\/[0-9]* Test *#[0-9]*: *\([^ ]*\) \.*\(.*[^ 0-9.]\) *\([0-9][0-9.]*\) sec.*/\1|\2|\3/p' "$W/out" |
    while IFS='|' read -r name st secs; do
      st=$(printf '%s' "$st" | tr -s '*' ' ' | sed 's/^ *//; s/ *$//; s/:$//')
      echo "$name" >>"$W/ran"
      row "{\"name\": \"ctest\", \"shape\": {\"test\": $(jstr "$name")}, \"status\": $(jstr "$st"), \"seconds\": $(jnum "$secs")}"
    done
}
# Rows for the tests of list file $1 that no ctest run of this stage reported (cut by
# --stop-time before they started).
ctest_not_run() {
  local n
  while read -r n; do
    grep -qx "$n" "$W/ran" 2>/dev/null && continue
    row "{\"name\": \"ctest\", \"shape\": {\"test\": $(jstr "$n")}, \"status\": \"Not run (stage time)\", \"seconds\": null}"
    NOT_RUN="$NOT_RUN$n "
  done <"$1"
}

say "== rkv GPU check: $(date -u +%Y-%m-%dT%H:%M:%SZ), out $O, build $B, budget ${BUDGET}s$([ "$DRY" = 1 ] && echo ', DRY RUN (no GPU work)')$([ "$QUICK" = 1 ] && echo ', quick sizes')"
: >"$O/log.txt"

# ---- env ---------------------------------------------------------------------------------
GPU_NAME=none GPU_DRIVER=none GPU_MEM='' CUDA_VER=none SAN_VER=none TORCH_VER=none
if has_stage env; then
  t=$(now)
  if command -v nvidia-smi >/dev/null 2>&1 && [ "$DRY" = 0 ]; then
    run 30 nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.sm,clocks.max.sm,clocks.mem --format=csv,noheader
    line=$(head -1 "$W/out")
    GPU_NAME=$(echo "$line" | cut -d, -f1 | sed 's/^ *//;s/ *$//')
    GPU_DRIVER=$(echo "$line" | cut -d, -f2 | sed 's/^ *//;s/ *$//')
    GPU_MEM=$(echo "$line" | cut -d, -f3 | sed 's/^ *//;s/ *$//')
    run 30 nvidia-smi
  elif command -v nvidia-smi >/dev/null 2>&1; then
    GPU_NAME="(dry run: not queried)"
  fi
  if command -v nvcc >/dev/null 2>&1; then
    run 30 nvcc --version
    CUDA_VER=$(grep -o 'release [0-9.]*, V[0-9.]*' "$W/out" | head -1)
  fi
  if command -v compute-sanitizer >/dev/null 2>&1; then
    run 30 compute-sanitizer --version
    SAN_VER=$(grep -o 'Version [0-9.]*' "$W/out" | head -1)
  fi
  for py in $PYTHONS; do
    if v=$($py -c 'import torch; print(torch.__version__, "cuda", torch.version.cuda)' 2>/dev/null); then
      TORCH_VER="$v ($py)"
      break
    fi
  done
  logcmd "uname -r; nproc; cmake --version; command -v cmake make ninja gcc g++"
  { uname -r; nproc; cmake --version | head -1; command -v cmake make ninja gcc g++; } >>"$O/log.txt" 2>&1
  CMAKE_VER=$(cmake --version 2>/dev/null | head -1 | sed 's/^cmake version //')
  # Without cmake nothing can be built: said here, first, not as an empty configure error.
  if [ -z "$CMAKE_VER" ]; then
    stage env fail "$t" "cmake not found on PATH: no build is possible; gpu: $GPU_NAME; nvcc $CUDA_VER"
  else
    stage env pass "$t" "gpu: $GPU_NAME, driver $GPU_DRIVER, memory ${GPU_MEM:-?}; nvcc $CUDA_VER; cmake $CMAKE_VER; compute-sanitizer $SAN_VER; torch $TORCH_VER; kernel $(uname -r), $(nproc) cores"
  fi
fi

# ---- build -------------------------------------------------------------------------------
if has_stage build; then
  t=$(now)
  if [ "$REUSE" = 1 ]; then
    if have_rkv; then
      stage build skip "$t" "reused $B (--reuse-build)"
    else
      stage build fail "$t" "--reuse-build: $RKV is missing"
    fi
  else
    to=$(stage_timeout 300)
    gen=
    if [ ! -f "$B/CMakeCache.txt" ] && ! command -v make >/dev/null 2>&1 && command -v ninja >/dev/null 2>&1; then
      gen="-G Ninja"
    fi
    crc=0
    # shellcheck disable=SC2086
    [ "$to" = 0 ] || run "$to" cmake --preset gpu -B "$B" $gen || crc=$?
    if [ "$to" = 0 ]; then
      stage build skip "$t" "no time left"
    elif [ "$crc" != 0 ]; then
      stage build fail "$t" "configure failed (exit $crc): $(grep -m1 -E 'Error|error' "$W/out")"
    else
      tc=$(since "$t")
      to=$(stage_timeout 300)
      if [ "$to" = 0 ]; then
        stage build timeout "$t" "configure ${tc}s, no time left to build"
      else
        # Keep going past a failing object: the tool and the GPU tests may still build, and the
        # later stages then run on what did.
        kg=-k
        grep -q '^CMAKE_GENERATOR:INTERNAL=Ninja' "$B/CMakeCache.txt" 2>/dev/null && kg="-k 0"
        # shellcheck disable=SC2086
        run "$to" cmake --build "$B" -j "$JOBS" -- $kg
        brc=$?
        if [ "$brc" = 0 ]; then
          stage build pass "$t" "configure ${tc}s + build with $JOBS jobs ($(grep -c 'Building' "$W/out") objects)"
        elif [ "$brc" = 124 ] || [ "$brc" = 137 ]; then
          stage build timeout "$t" "build did not finish in ${to}s"
        else
          stage build fail "$t" "build failed (exit $brc): $(grep -m1 -E 'error' "$W/out")"
        fi
      fi
    fi
  fi
fi

# ---- test: ctest -L gpu ------------------------------------------------------------------
if has_stage test; then
  t=$(now)
  to=$(stage_timeout 220)
  if [ ! -f "$B/CTestTestfile.cmake" ]; then
    stage test skip "$t" "no build tree at $B"
  elif [ "$DRY" = 1 ]; then
    run 30 ctest --test-dir "$B" -N -L gpu
    list=$(sed -n 's/^ *Test *#[0-9]*: *//p' "$W/out" | tr '\n' ' ')
    stage test skip "$t" "dry run; would run: $list"
  elif [ "$to" = 0 ]; then
    stage test skip "$t" "no time left"
  else
    # comm_test_comm_nccl (label gpu) fails under RKV_TEST_REQUIRE_GPU in a build without NCCL.
    excl=
    if have_rkv && "$RKV" info 2>/dev/null | grep -q '^nccl no'; then
      excl=comm_test_comm_nccl
    fi
    # Two tests run last and alone, each under its own short timeout: the NCCL test aborts a
    # communicator whose peer never comes (NCCL aborts have hung), and the poison test faults
    # the context on purpose. ctest's --timeout does not shorten a test's own TIMEOUT
    # property, so the main run also gets --stop-time: a hung test is killed at the stage's
    # end, and the JUnit file and failure list are still written.
    run 30 ctest --test-dir "$B" -N -L gpu
    sed -n 's/^ *Test *#[0-9]*: *//p' "$W/out" | grep -vx "${excl:-^$}" >"$W/gpu_tests"
    : >"$W/ran"
    NOT_RUN=
    late=
    for n in comm_test_comm_nccl cuda_test_cuda_poison; do
      [ "$n" != "$excl" ] && grep -qE "Test +#[0-9]+: $n\$" "$W/out" && late="$late $n"
    done
    # The Python GPU tests (python_*: numpy, pytest, PyTorch, model runs) come after the C
    # ones, in the time the C ones leave (at least 60 s kept for them).
    nlate=$(echo $late | wc -w) py=$(grep -c '^python_' "$W/gpu_tests")
    main_to=$((to - 30 * nlate - $([ "$py" -gt 0 ] && echo 60 || echo 0)))
    [ "$main_to" -lt 30 ] && main_to=30
    stop=$(date -d "@$(($(date +%s) + main_to - 5))" +%H:%M:%S 2>/dev/null)
    skip_re=$(echo "$excl $late $([ "$py" -gt 0 ] && echo 'python_.*')" | sed 's/^ *//; s/ *$//; s/  */|/g')
    RKV_TEST_REQUIRE_GPU=1 run "$main_to" ctest --test-dir "$B" -L gpu ${skip_re:+-E "^($skip_re)\$"} \
      -j 1 ${stop:+--stop-time "$stop"} --output-on-failure --output-junit "$O/ctest-gpu.xml"
    trc=$?
    ctest_rows
    summ="$(grep -m1 'tests passed' "$W/out")${excl:+ (left out: $excl, no NCCL in this build)}"
    gpu_failed=$(sed -n 's/^[[:space:]]*[0-9]* - \([^ ]*\) .*/\1/p' "$W/out" | tr '\n' ' ')
    if [ "$py" -gt 0 ]; then
      left=$(awk -v a="$t" -v b="$(now)" -v s="$to" -v r="$((30 * nlate))" 'BEGIN { printf "%d", s - (b - a) - r }')
      if [ "$left" -lt 15 ]; then
        summ="$summ; python GPU tests: no time"
      else
        RKV_TEST_REQUIRE_GPU=1 run "$left" ctest --test-dir "$B" -L gpu -R '^python_' \
          --output-on-failure
        prc=$?
        ctest_rows
        summ="$summ; python: $(grep -m1 'tests passed' "$W/out")"
        # a python test skips (no numpy, pytest or PyTorch's CUDA) without failing
        gpu_failed="$gpu_failed$(sed -n '/(Skipped)/d; s/^[[:space:]]*[0-9]* - \([^ ]*\) .*/\1/p' "$W/out" | tr '\n' ' ')"
        [ "$trc" = 0 ] && [ "$prc" != 0 ] && trc=1
      fi
    fi
    for n in $late; do
      lt=$(stage_timeout 30)
      if [ "$lt" = 0 ]; then
        summ="$summ; $n: no time"
        continue
      fi
      RKV_TEST_REQUIRE_GPU=1 run "$lt" ctest --test-dir "$B" -R "^$n\$" --output-on-failure
      lrc=$?
      ctest_rows
      # killed with its ctest, it printed no line of its own
      if { [ "$lrc" = 124 ] || [ "$lrc" = 137 ]; } && ! grep -qx "$n" "$W/ran"; then
        echo "$n" >>"$W/ran"
        row "{\"name\": \"ctest\", \"shape\": {\"test\": $(jstr "$n")}, \"status\": \"Timeout\", \"seconds\": $lt}"
      fi
      case "$lrc" in
        0) summ="$summ; $n passed" ;;
        124 | 137) summ="$summ; $n timed out (${lt}s)" gpu_failed="$gpu_failed$n " ;;
        *) summ="$summ; $n failed" gpu_failed="$gpu_failed$n " ;;
      esac
      [ "$trc" = 0 ] && [ "$lrc" != 0 ] && trc=1
    done
    ctest_not_run "$W/gpu_tests"
    [ -n "$NOT_RUN" ] && summ="$summ; not run (stage time): $NOT_RUN" && [ "$trc" = 0 ] && trc=124
    if [ "$trc" = 0 ]; then
      stage test pass "$t" "$summ"
    elif [ "$trc" = 124 ] || [ "$trc" = 137 ]; then
      stage test timeout "$t" "ctest did not finish in ${main_to}s; $summ"
    else
      stage test fail "$t" "$summ; failed: $gpu_failed"
    fi
  fi
fi

# ---- eval: the trained model on the GPU, each run repeated on the CPU --------------------
if has_stage eval; then
  t=$(now)
  to=$(stage_timeout 180)
  # As for the sanitizer: 180 s stay for the benchmarks (the decode rows the issue must show),
  # so a slow test stage shortens this one, not the attention stage.
  keep=$((DEADLINE - $(date +%s) - 5 - 180))
  [ "$keep" -lt "$to" ] && to=$keep
  [ "$to" -lt 15 ] && to=0
  if ! have_rkv; then
    stage eval skip "$t" "no $RKV"
  elif [ "$to" = 0 ]; then
    stage eval skip "$t" "no time left (180 s kept for the benchmarks)"
  else
    run "$to" "$RKV" eval --backend cuda --compare-cpu --require-bounds --json \
      --problems "$EVAL_PROBLEMS" --policies full,rkv,snapkv,streaming --budgets 128,256
    erc=$?
    sed -n '/^{"model"/,/^\]}/p' "$W/out" >"$W/eval.json"
    if [ "$erc" = 77 ]; then
      stage eval skip "$t" "$(grep -m1 'skipped' "$W/out")"
    else
      [ -s "$W/eval.json" ] && cp "$W/eval.json" "$O/eval-cuda.json"
      # One row per run: the CUDA run's seconds and tokens/s, both accuracies, the CPU seconds.
      grep '"policy"' "$W/eval.json" | while IFS= read -r l; do
        p=$(echo "$l" | jget policy) bud=$(echo "$l" | jget budget)
        cpu_s=$(grep "^$p B=$bud on cpu:" "$W/out" | sed -n 's/.*(\([0-9.]*\)s).*/\1/p' | head -1)
        row "{\"name\": \"eval_cuda\", \"shape\": {\"policy\": \"$p\", \"budget\": $(jnum "$bud"), \"problems\": $EVAL_PROBLEMS}, \"seconds\": $(jnum "$(echo "$l" | jget seconds)"), \"tokens_per_s\": $(jnum "$(echo "$l" | jget tokens_per_s)"), \"accuracy\": $(jnum "$(echo "$l" | jget accuracy)"), \"cpu_accuracy\": $(jnum "$(echo "$l" | jget cpu_accuracy)"), \"cpu_seconds\": $(jnum "$cpu_s")}"
      done
      same=$(grep -c ', same as cuda' "$W/out")
      differ=$(grep -c 'DIFFERS from cuda' "$W/out")
      ident=$(grep -c 'generations identical' "$W/out")
      case "$erc" in
        0) stage eval pass "$t" "$same runs with the same accuracy on cuda and cpu ($ident with identical generations)" ;;
        124 | 137) stage eval timeout "$t" "did not finish in ${to}s ($same same, $differ differ so far)" ;;
        3) stage eval fail "$t" "$differ runs differ between cuda and cpu, or bounds broken: $(grep -m1 'rkv eval:' "$W/out")" ;;
        *) stage eval fail "$t" "exit $erc: $(grep -m1 'rkv eval' "$W/out")" ;;
      esac
    fi
  fi
fi

# ---- sanitize: compute-sanitizer memcheck and racecheck ----------------------------------
# The GPU tests run every RKV_CUDA_TEST_EVERY-th case (tests/cuda/cuda_test_util.h); the
# poison test is left out (it faults on purpose).
if has_stage sanitize; then
  t=$(now)
  to=$(stage_timeout 150)
  # 180 s stay for the benchmarks after it (the decode attention rows are what the issue must
  # show): a long test or eval stage shortens the sanitizer runs, not the attention stage.
  keep=$((DEADLINE - $(date +%s) - 5 - 180))
  [ "$keep" -lt "$to" ] && to=$keep
  [ "$to" -lt 30 ] && to=0
  if ! command -v compute-sanitizer >/dev/null 2>&1; then
    stage sanitize skip "$t" "compute-sanitizer not found (PATH and /usr/local/cuda/bin)"
  elif [ ! -x "$B/tests/cuda_test_attn_cuda" ]; then
    stage sanitize skip "$t" "no GPU test binaries in $B/tests"
  elif [ "$DRY" = 1 ]; then
    stage sanitize skip "$t" "dry run ($SAN_VER found)"
  elif [ "$to" = 0 ]; then
    stage sanitize skip "$t" "no time left (180 s kept for the benchmarks)"
  else
    # Every 6th case under memcheck, every 12th under racecheck (the slower one).
    EVERY_MEM=${RKV_CUDA_TEST_EVERY:-6} EVERY_RACE=${RKV_CUDA_TEST_EVERY:-12}
    bad=0 unsupported=0 done_n=0 short=0 notes=
    # tool|command; each run gets an equal share of what is left of the stage.
    set -- "memcheck|$B/tests/cuda_test_attn_cuda" "memcheck|$B/tests/cuda_test_evict_cuda" \
      "memcheck|$B/tests/cuda_test_qwindow_cuda" "memcheck|$B/tests/cuda_test_pool_cuda" \
      "memcheck|$RKV bench attention --backend cuda --batch 3 --ctx 700,2100 --min-time 0 --json" \
      "memcheck|$RKV bench evict --backend cuda --seqs 2 --layers 2 --iters 2 --no-torch" \
      "racecheck|$B/tests/cuda_test_attn_cuda" "racecheck|$B/tests/cuda_test_evict_cuda"
    n_left=$#
    for item in "$@"; do
      tool=${item%%|*} cmd=${item#*|}
      left=$(awk -v a="$t" -v b="$(now)" -v s="$to" 'BEGIN { printf "%d", s - (b - a) }')
      each=$((left / n_left))
      n_left=$((n_left - 1))
      name="$tool $(basename "$(echo "$cmd" | cut -d' ' -f1)")$(echo "$cmd" | cut -s -d' ' -f2-3 | sed 's/^/ /')"
      if [ "$each" -lt 10 ]; then
        notes="$notes; $name: no time"
        short=$((short + 1))
        continue
      fi
      ts=$(now)
      every=$EVERY_MEM
      [ "$tool" = racecheck ] && every=$EVERY_RACE
      # shellcheck disable=SC2086
      RKV_CUDA_TEST_EVERY=$every run "$each" compute-sanitizer --tool "$tool" --error-exitcode 86 \
        --print-limit 20 $cmd
      src=$?
      summ=$(grep -E 'ERROR SUMMARY|RACECHECK SUMMARY' "$W/out" | tail -1 | sed 's/^=* *//')
      if grep -qE 'Device not supported|Unable to find injection|unsupported on this device' "$W/out"; then
        unsupported=$((unsupported + 1)) st=unsupported
      elif [ "$src" = 0 ]; then
        st=pass done_n=$((done_n + 1))
      elif [ "$src" = 124 ] || [ "$src" = 137 ]; then
        st=timeout short=$((short + 1))
      else
        st=fail bad=$((bad + 1))
      fi
      row "{\"name\": \"sanitizer\", \"shape\": {\"tool\": \"$tool\", \"command\": $(jstr "$name"), \"every\": $every}, \"status\": \"$st\", \"exit\": $src, \"seconds\": $(since "$ts"), \"summary\": $(jstr "$summ")}"
      notes="$notes; $name: $st${summ:+ ($summ)}"
    done
    notes=${notes#; }
    if [ "$bad" -gt 0 ]; then
      stage sanitize fail "$t" "$notes"
    elif [ "$unsupported" -gt 0 ] && [ "$done_n" = 0 ]; then
      stage sanitize skip "$t" "compute-sanitizer cannot use this device (gVisor?): $notes"
    elif [ "$short" -gt 0 ]; then
      # No error found, but not every run finished: not a failure, not a pass either.
      stage sanitize partial "$t" "$notes"
    else
      stage sanitize pass "$t" "$notes"
    fi
  fi
fi

# ---- attention: decode bandwidth vs a device-to-device copy ------------------------------
ATT_SHARE_ROW=
if has_stage attention && tool_stage attention 150; then
  if [ "$DRY" = 1 ]; then
    # Placeholders for the GPU shapes, and the CPU backend through the same parser.
    for b in $(echo "$ATT_BATCH" | tr ',' ' '); do
      for c in $(echo "$ATT_CTX" 1088 | tr ',' ' '); do
        row "{\"name\": \"attn_decode\", \"backend\": \"cuda\", \"shape\": {\"batch\": $b, \"ctx\": $c, \"q_heads\": 32, \"kv_heads\": 8, \"head_dim\": 128, \"block\": 16, \"dtype\": \"bf16\"}, \"seconds\": null, \"gbps\": null, \"fraction_of_copy\": null, \"goal\": \">= 0.80\", \"status\": \"not run (dry run)\"}"
      done
    done
    run "$to" "$RKV" bench attention --backend cpu --batch 2 --ctx 1088 --min-time 0.01 \
      --fill-mib 1 --json
    arc=$?
    n=$(grep -c '^{"name": "attn_decode"' "$W/out")
    grep '^{"name": "attn_decode"' "$W/out" | sed 's/}$/, "dry_run": true}/' | while IFS= read -r l; do row "$l"; done
    if [ "$arc" = 0 ] && [ "$n" -ge 1 ]; then
      stage attention skip "$t" "dry run: $n CPU row(s) parsed (bench attention --json); GPU shapes are placeholders"
    else
      stage attention fail "$t" "dry run: bench attention --backend cpu --json gave exit $arc, $n rows"
    fi
  else
    run "$to" "$RKV" bench attention --backend cuda --batch "$ATT_BATCH" --ctx "$ATT_CTX" \
      --min-time 0.2 --repeat "$ATT_REPEAT" --fill-mib 64 --json
    arc=$?
    grep '^{"name": "attn_decode"' "$W/out" | sed 's/}$/, "goal": ">= 0.80"}/' >"$W/att"
    # The decode step between two compressions (ctx 1088 = B + buffer / 2), for the evict share.
    to2=$(stage_timeout 60)
    if [ "$to2" != 0 ] && run "$to2" "$RKV" bench attention --backend cuda --batch 256 --ctx 1088 \
      --min-time 0.2 --repeat "$ATT_REPEAT" --fill-mib 64 --json; then
      ATT_SHARE_ROW=$(grep -m1 '^{"name": "attn_decode"' "$W/out")
      [ -n "$ATT_SHARE_ROW" ] && echo "$ATT_SHARE_ROW" >>"$W/att"
    fi
    while IFS= read -r l; do row "$l"; done <"$W/att"
    n=$(wc -l <"$W/att")
    fr=$(awk -F'"fraction_of_copy": ' 'NF > 1 { split($2, a, /[,}]/); v = a[1] + 0;
      if (n == 0 || v < lo) lo = v; if (n == 0 || v > hi) hi = v; n++; if (v >= 0.8) ok++ }
      END { if (n) printf "fraction of a d2d copy %.3f..%.3f, %d of %d shapes >= 0.80", lo, hi, ok, n }' "$W/att")
    cp_gbps=$(jget copy_gbps <"$W/att")
    if [ "$arc" = 0 ]; then
      stage attention pass "$t" "$fr; d2d copy ${cp_gbps} GB/s"
    elif [ "$arc" = 124 ] || [ "$arc" = 137 ]; then
      stage attention timeout "$t" "$n shapes in ${to}s; $fr"
    else
      stage attention fail "$t" "exit $arc, $n shapes: $(grep -m1 'rkv bench' "$W/out")"
    fi
  fi
fi

# ---- evict: R-KV compression vs PyTorch, and its share of 128 decode steps ---------------
# 4 sequences x 32 layers x 8 kv heads = 1024 streams of n = 1152 cut to B = 1024 in one call.
EV_SEQS=4 EV_LAYERS=32
if has_stage evict; then
  t=$(now)
  torch_note=
  for py in $PYTHONS; do
    if $py -c 'import torch' 2>/dev/null; then
      # The reference's own CPU self-check against a literal loop (needs no GPU).
      ct=$(stage_timeout 60)
      if [ "$ct" = 0 ]; then
        torch_note="torch --check: no time"
      elif run "$ct" "$py" tools/bench/evict_torch.py --check; then
        torch_note="torch --check ok"
      else
        torch_note="torch --check FAILED"
        RC_BENCH=1
      fi
      break
    fi
  done
  [ -n "$torch_note" ] || torch_note="no python3 with torch"
  to=$(stage_timeout 150) # after the check: the bench's share is what is left
  if ! have_rkv; then
    stage evict skip "$t" "no $RKV; $torch_note"
  elif [ "$to" = 0 ]; then
    stage evict skip "$t" "no time left; $torch_note"
  else
    half=$((to * 2 / 3))
    run "$half" "$RKV" bench evict --backend cuda --policy rkv --seqs $EV_SEQS --layers $EV_LAYERS \
      --budget 1024 --buffer 128 --iters 20
    erc=$?
    cp "$W/out" "$W/evict_rkv"
    shape="\"seqs\": $EV_SEQS, \"layers\": $EV_LAYERS, \"kv_heads\": 8, \"q_heads\": 32, \"head_dim\": 128, \"block\": 16, \"dtype\": \"bf16\", \"budget\": 1024, \"n\": 1152"
    if [ "$erc" != 0 ] && grep -qE 'no usable CUDA device|not built with CUDA' "$W/out"; then
      for v in simt tensor_cores; do
        row "{\"name\": \"evict_rkv\", \"shape\": {$shape, \"similarity\": \"$v\"}, \"seconds\": null, \"speedup_vs_torch\": null, \"goal\": \">= 10x torch; <= 5% of 128 decode steps\", \"status\": \"not run ($(grep -m1 -oE 'no usable CUDA device|not built with CUDA' "$W/out"))\"}"
      done
      stage evict skip "$t" "$(grep -m1 -oE 'no usable CUDA device|not built with CUDA' "$W/out")$([ "$DRY" = 1 ] && echo ' (dry run)'); $torch_note"
    else
      # gpu compression[ [tensor cores]]: median X ms (...); Y ms per (seq, layer)...
      torch_ms=$(sed -n 's/^torch reference: median \([0-9.]*\) ms.*/\1/p' "$W/out" | head -1)
      best=
      for v in simt tensor_cores; do
        if [ "$v" = simt ]; then pat='^gpu compression: median'; else pat='^gpu compression \[tensor cores\]: median'; fi
        ms=$(grep -m1 "$pat" "$W/out" | sed -n 's/.*median \([0-9.]*\) ms.*/\1/p')
        tf=$(grep -m1 "$pat" "$W/out" | sed -n 's/.*at \([0-9.]*\) TFLOP\/s.*/\1/p')
        [ -n "$ms" ] || continue
        sp=$(awk -v a="$torch_ms" -v b="$ms" 'BEGIN { if (a > 0 && b > 0) printf "%.4g", a / b }')
        # Share of the 128 decode steps between two compressions, per layer, at batch 256:
        # b x (compression per seq-layer) / (that + 128 x decode attention of the batch), and
        # the same with the layer's bf16 weights (Llama-3-8B: 16.06 GB / 32 layers) read once
        # per step at the measured copy bandwidth.
        shares=$(echo "$ATT_SHARE_ROW" | awk -v ms="$ms" -v sl=$((EV_SEQS * EV_LAYERS)) -F'"seconds": ' '
          NF > 1 { split($2, a, /[,}]/); ta = a[1] + 0; n = split($0, c, "\"copy_gbps\": "); split(c[2], g, /[,}]/); gb = g[1] + 0
            te = ms / 1e3 / sl; b = 256; w = 16.06e9 / 32
            if (ta > 0) printf "%.4g %.4g", b * te / (b * te + 128 * ta), (gb > 0 ? b * te / (b * te + 128 * (ta + w / (gb * 1e9))) : -1) }')
        sa=${shares%% *} sw=${shares#* }
        row "{\"name\": \"evict_rkv\", \"shape\": {$shape, \"similarity\": \"$v\"}, \"seconds\": $(jnum "$(awk -v m="$ms" 'BEGIN { printf "%.6g", m / 1e3 }')"), \"tflops_similarity\": $(jnum "$tf"), \"torch_seconds\": $(jnum "$(awk -v m="$torch_ms" 'BEGIN { if (m > 0) printf "%.6g", m / 1e3 }')"), \"speedup_vs_torch\": $(jnum "$sp"), \"share_of_128_steps_attention\": $(jnum "$sa"), \"share_of_128_steps_with_weights\": $(jnum "$sw"), \"goal\": \">= 10x torch; <= 5% of 128 decode steps\"}"
        [ -z "$best" ] && best="$v ${ms} ms, ${sp:-?}x torch, share ${sa:-?} (attention) / ${sw:-?} (with weights)"
        [ "$v" = tensor_cores ] && best="$best; tensor cores ${ms} ms, ${sp:-?}x, share ${sa:-?} / ${sw:-?}"
      done
      # SnapKV (no redundancy term) for scale, without the torch run.
      to3=$(stage_timeout $((to - half)))
      if [ "$to3" != 0 ] && run "$to3" "$RKV" bench evict --backend cuda --policy snapkv --seqs $EV_SEQS \
        --layers $EV_LAYERS --budget 1024 --buffer 128 --iters 20 --no-torch; then
        ms=$(grep -m1 '^gpu compression: median' "$W/out" | sed -n 's/.*median \([0-9.]*\) ms.*/\1/p')
        row "{\"name\": \"evict_snapkv\", \"shape\": {$shape}, \"seconds\": $(jnum "$(awk -v m="$ms" 'BEGIN { if (m > 0) printf "%.6g", m / 1e3 }')")}"
      fi
      if [ "$erc" = 0 ]; then
        stage evict pass "$t" "${best:-no timing parsed}; torch ${torch_ms:-unavailable} ms; $torch_note"
      elif [ "$erc" = 124 ] || [ "$erc" = 137 ]; then
        stage evict timeout "$t" "bench evict did not finish in ${half}s; $torch_note"
      else
        stage evict fail "$t" "exit $erc: $(grep -m1 'rkv bench' "$W/evict_rkv"); $torch_note"
      fi
    fi
  fi
fi

# ---- sim: the paper's fixed-batch table, measured (--compute cuda: the library's executor
# over a CUDA pool, the tool only synthesising Q/K/V) ----------------------------------------
# Llama-8B heads at ONE layer with a 2 GiB pool (64 GiB / 32 layers), so the batches are the
# paper's (full 31, R-KV 450), 16,384 generated tokens, B = 1024, buffer 128. Full runs its
# whole wave; R-KV runs two prefixes and takes the steady state from their difference (every
# sequence compresses every 128 steps after step 1024). --compute none in a dry run.
if has_stage sim && tool_stage sim 180; then
  comp=cuda
  [ "$DRY" = 1 ] && comp=none
  SIM="sim --model llama-8b --layers 1 --workload fixed --prompt-len 128 --gen-len 16384 --pool-gib 2 --budget 1024 --buffer 128 --window 8 --gpu h100 --json --quiet --compute $comp"
  s1=${SIM_RKV_STEPS%,*} s2=${SIM_RKV_STEPS#*,}
  ok=0 failed=0 short=0 notes=
  # The R-KV prefixes first: their difference is the steady state, the run's main number.
  for spec in "rkv 450 $s1 512" "rkv 450 $s2 512" "full 31 0 64"; do
    set -- $spec
    left=$(awk -v a="$t" -v b="$(now)" -v s="$to" 'BEGIN { printf "%d", s - (b - a) }')
    if [ "$left" -lt 10 ]; then
      notes="$notes; $1 ${3}: no time"
      short=$((short + 1))
      continue
    fi
    steps_opt=
    [ "$3" != 0 ] && steps_opt="--steps $3"
    # shellcheck disable=SC2086
    run "$left" "$RKV" $SIM --policy "$1" --requests "$2" --max-seqs "$4" $steps_opt
    src=$?
    l=$(grep -m1 '"policy"' "$W/out")
    if [ "$src" = 124 ] || [ "$src" = 137 ]; then
      short=$((short + 1))
      notes="$notes; $1 steps ${3}: cut at the stage's end (${left}s)"
      continue
    elif [ "$src" != 0 ] || [ -z "$l" ]; then
      failed=$((failed + 1))
      notes="$notes; $1 steps ${3}: exit $src $(grep -m1 'rkv sim' "$W/out")"
      continue
    fi
    ok=$((ok + 1))
    echo "$1 $3 $l" >>"$W/sim"
    # The GPU engine must schedule exactly as block accounting alone does (docs/SIMULATOR.md).
    nt=$(stage_timeout 60)
    if [ "$comp" = cuda ] && [ "$nt" = 0 ]; then
      notes="$notes; $1 steps ${3}: no time to repeat with --compute none"
    elif [ "$comp" = cuda ]; then
      # shellcheck disable=SC2086
      run "$nt" "$RKV" ${SIM%--compute cuda} --compute none --policy "$1" --requests "$2" \
        --max-seqs "$4" $steps_opt
      ln=$(grep -m1 '"policy"' "$W/out")
      for k in steps max_batch compressions generation_tokens evicted_tokens compaction_freed_blocks; do
        a=$(echo "$l" | jget $k) b=$(echo "$ln" | jget $k)
        if [ "$a" != "$b" ]; then
          failed=$((failed + 1))
          notes="$notes; $1 steps ${3}: $k $a on cuda, $b with --compute none"
          break
        fi
      done
    fi
    wall=$(echo "$l" | jget wall_seconds) synth=$(echo "$l" | jget synth_seconds) gen=$(echo "$l" | jget generation_tokens)
    row "{\"name\": \"sim_fixed_batch\", \"shape\": {\"policy\": \"$1\", \"model\": \"llama-8b heads, 1 layer\", \"requests\": $2, \"gen_len\": 16384, \"budget\": 1024, \"buffer\": 128, \"pool_gib\": 2, \"steps_cap\": $3, \"compute\": \"$comp\"}, \"seconds\": $(jnum "$wall"), \"steps\": $(jnum "$(echo "$l" | jget steps)"), \"complete\": $(jbool "$(echo "$l" | jget complete)"), \"max_batch\": $(jnum "$(echo "$l" | jget max_batch)"), \"generation_tokens\": $(jnum "$gen"), \"tokens_per_s\": $(jnum "$(echo "$l" | jget host_tokens_per_s)"), \"tokens_per_s_without_synthesis\": $(jnum "$(awk -v g="$gen" -v w="$wall" -v s="$synth" 'BEGIN { if (w - s > 0) printf "%.6g", g / (w - s) }')"), \"compressions\": $(jnum "$(echo "$l" | jget compressions)"), \"attention_seconds\": $(jnum "$(echo "$l" | jget attention_seconds)"), \"evict_seconds\": $(jnum "$(echo "$l" | jget evict_seconds)"), \"synth_seconds\": $(jnum "$synth"), \"model_tokens_per_s\": $(jnum "$(echo "$l" | jget model_tokens_per_s)")}"
    notes="$notes; $1$([ "$3" != 0 ] && echo " ${3} steps"): batch $(echo "$l" | jget max_batch), $(echo "$l" | jget steps) steps, ${wall}s"
  done
  # R-KV steady state (difference of the two prefixes) against the full wave.
  if [ -s "$W/sim" ]; then
    derived=$(awk '
      function f(s, k,   a) { if (split(s, a, "\"" k "\": ") < 2) return ""; split(a[2], a, /[,}]/); return a[1] + 0 }
      $1 == "full" { fg = f($0, "generation_tokens"); fw = f($0, "wall_seconds"); fs = f($0, "synth_seconds") }
      $1 == "rkv" { n++; g[n] = f($0, "generation_tokens"); w[n] = f($0, "wall_seconds"); s[n] = f($0, "synth_seconds"); c[n] = f($0, "compressions") }
      END {
        if (n == 2 && w[2] > w[1]) {
          r = (g[2] - g[1]) / (w[2] - w[1]); rn = ((w[2] - s[2]) - (w[1] - s[1]) > 0) ? (g[2] - g[1]) / ((w[2] - s[2]) - (w[1] - s[1])) : 0
          # a ratio to full is null when the full run is missing
          printf "%.6g %.6g %s %s", r, rn, (fw > 0 && fg > 0 ? sprintf("%.6g", r / (fg / fw)) : "null"), (fw - fs > 0 && fg > 0 && rn > 0 ? sprintf("%.6g", rn / (fg / (fw - fs))) : "null")
        } else if (n == 2) print "null null null null" # the longer prefix was not slower: noise
      }' "$W/sim")
    if [ -n "$derived" ]; then
      set -- $derived
      row "{\"name\": \"sim_rkv_steady_state\", \"shape\": {\"model\": \"llama-8b heads, 1 layer\", \"requests\": 450, \"steps\": \"$s1..$s2\", \"budget\": 1024, \"compute\": \"$comp\"}, \"tokens_per_s\": $(jnum "$1"), \"tokens_per_s_without_synthesis\": $(jnum "$2"), \"ratio_to_full\": $(jnum "$3"), \"ratio_to_full_without_synthesis\": $(jnum "$4"), \"paper_ratio\": 9.2}"
      if [ "$1" = null ]; then
        notes="$notes; R-KV steady state: none (the $s2-step prefix took no longer than the $s1-step one: timing noise)"
      else
        notes="$notes; R-KV steady state $1 tok/s = ${3}x full (without host synthesis ${4}x)"
      fi
    fi
  fi
  notes=${notes#; }
  if [ "$failed" = 0 ] && [ "$short" -gt 0 ]; then
    # Nothing failed, but the budget cut a run: not a failure, not a pass either.
    stage sim partial "$t" "$notes"
  elif [ "$failed" = 0 ]; then
    stage sim "$([ "$DRY" = 1 ] && echo skip || echo pass)" "$t" "$([ "$DRY" = 1 ] && echo 'dry run, --compute none: ')$notes"
  elif [ "$DRY" = 0 ] && grep -q 'no usable' "$W/out"; then
    stage sim skip "$t" "$notes"
  else
    stage sim fail "$t" "$notes"
  fi
fi

# ---- swap: the pool's host transfers (swap preemption) vs one contiguous copy --------------
# 4,096 and 65,536 blocks of 8 KB (bf16, d 128, block 16; the larger is a 4K-token sequence of
# 32 layers x 8 kv heads) scattered over the pool, to and from pinned host memory.
if has_stage swap && tool_stage swap 30; then
  be=cuda blocks=4096,65536
  [ "$DRY" = 1 ] && be=cpu blocks=64,256
  run "$to" "$RKV" bench swap --backend "$be" --blocks "$blocks" --min-time 0.1 --json
  src=$?
  extra=
  [ "$DRY" = 1 ] && extra=', "dry_run": true'
  grep '^{"name": "swap_' "$W/out" | sed "s/}\$/$extra}/" >"$W/swap"
  while IFS= read -r l; do row "$l"; done <"$W/swap"
  n=$(wc -l <"$W/swap")
  fr=$(awk -F'"fraction_of_copy": ' 'NF > 1 { split($2, a, /[,}]/); v = a[1] + 0;
    if (n == 0 || v < lo) lo = v; if (n == 0 || v > hi) hi = v; n++ }
    END { if (n) printf "fraction of one contiguous copy %.3f..%.3f over %d rows", lo, hi, n }' "$W/swap")
  if [ "$src" = 0 ] && [ "$n" -ge 4 ]; then
    stage swap "$([ "$DRY" = 1 ] && echo skip || echo pass)" "$t" "$([ "$DRY" = 1 ] && echo 'dry run, CPU backend: ')$fr"
  elif [ "$src" = 124 ] || [ "$src" = 137 ]; then
    stage swap timeout "$t" "$n rows in ${to}s; $fr"
  else
    stage swap fail "$t" "exit $src, $n rows: $(grep -m1 'rkv bench' "$W/out")"
  fi
fi

# ---- gpu.json (rewritten after every stage: a run killed at the tool's limit keeps the rows of
# the stages it finished) --------------------------------------------------------------------
write_json
rc=0
[ "$RC_BENCH" = 1 ] && rc=2
[ "$RC_CORRECT" = 1 ] && rc=1
say "== done in $(since "$T0")s, exit $rc: $O/gpu.json ($(wc -l <"$W/rows") rows), summary.txt, log.txt"
exit $rc

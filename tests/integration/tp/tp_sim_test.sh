#!/bin/sh
# Scheduler-driven tensor-parallel tests of `rkv sim --tp` (docs/TP.md): the real scheduler,
# block managers and eviction on every rank, one step sync per step. Usage:
#   tp_sim_test.sh MODE NP RKV [LAUNCHER...]
# LAUNCHER is empty for in-process threads (--tp-launch threads) or an mpirun command line
# (one rank per process). MODE:
#   agree     random workload (azure-conv arrivals, reasoning lengths) with eviction and
#             optimistic admission (NO_BLOCKS preemptions happen): every rank reports the same
#             plan digest and step count for every policy, and says the digests agree
#   agreecpu  the same with --compute cpu (real attention + R-KV scoring) at a tiny size
#   match     a fixed batch (all at t = 0, so the modelled clock cannot reorder anything): every
#             rank's batch, preemptions and steps equal a single-rank run holding the same heads
#             in an NP times larger pool
#   fewer     rank 1 at 0.5x blocks: every rank's max batch equals that of a single-rank run
#             with 0.5x blocks, nobody preempts more than that run, and without the smaller rank
#             the batch is larger (so the limit really binds)
#   diverge   rank 1 perturbs one plan hash: every rank exits non-zero naming the divergence
#   nopoolmin unequal pools without the start-up MIN of pool sizes (--tp-no-pool-min, rank 1 at
#             0.5x blocks): the per-step free-block MIN alone makes every scheduler plan with
#             the smallest pool (rkv_sched_set_free_blocks_limit caps the usable pool), so the
#             ranks agree and their digests equal those of the same run with the start-up MIN,
#             for reserve admission (fixed batch) and for optimistic admission with growth
#             preemptions
#   bind      --tp-bind: every local rank reports its binding (or why not) and the run agrees
#   die       rank 1 dies mid-run: the job exits non-zero well within the limit, survivors
#             report the dead peer (threads: always; mpirun may kill them first)
# Prints `N passed, N failed`; exit 0 only when every check passed.
mode=$1
np=$2
rkv=$3
shift 3
tmp=$(mktemp -d "${TMPDIR:-/tmp}/rkv_tp.XXXXXX") || exit 1
trap 'rm -rf "$tmp"' EXIT
pass=0
fail=0
ok() { pass=$((pass + 1)); echo "ok: $*"; }
bad() { fail=$((fail + 1)); echo "FAIL: $*"; }
check() { # check DESCRIPTION command...
  d=$1
  shift
  if "$@"; then ok "$d"; else bad "$d"; fi
}

# a model whose kv heads split over 1, 2 and 4 ranks (GQA groups of 2 stay whole)
shape="--kv-heads 4 --q-heads 8 --quiet"
if [ $# -gt 0 ]; then launch="--tp-launch mpi"; else launch="--tp-launch threads"; fi

# run_tp OUT ERR args...: the TP run under the launcher; returns its exit status
run_tp() {
  o=$1
  e=$2
  shift 2
  timeout -k 5 100 "$@" >"$o" 2>"$e"
}

# rows POLICY FILE: the per-rank rows of a TP table for POLICY
rows() { awk -v p="$1" '$1 == p && NF == 13 && $2 ~ /^[0-9]+$/' "$2"; }
# single_col POLICY FILE N: column N of POLICY's row in the comparison table (4 = maxbat,
# 5 = preemptions)
single_col() { awk -v p="$1" -v c="$3" '$1 == p && NF == 15 { print $c }' "$2"; }

agree_checks() { # agree_checks OUT POLICIES...
  out=$1
  shift
  for pol in "$@"; do
    n=$(rows "$pol" "$out" | wc -l)
    check "$pol: $np rank rows" [ "$n" -eq "$np" ]
    nd=$(rows "$pol" "$out" | awk '{ print $10 }' | sort -u | wc -l)
    ns=$(rows "$pol" "$out" | awk '{ print $9 }' | sort -u | wc -l)
    check "$pol: one plan digest and one step count over the ranks" [ "$nd" -eq 1 -a "$ns" -eq 1 ]
    check "$pol: the tool says the digests agree" \
      grep -q "^tp $pol: plan digests agree on all $np ranks" "$out"
  done
}

case "$mode" in
  agree)
    args="$shape --compute none --policy full,rkv,snapkv --pool-blocks 150 --requests 48
      --admission optimistic --tp $np $launch"
    run_tp "$tmp/out" "$tmp/err" "$@" "$rkv" sim $args
    rc=$?
    check "exit status 0 (got $rc)" [ "$rc" -eq 0 ]
    agree_checks "$tmp/out" full rkv snapkv
    pre=$(rows rkv "$tmp/out" | awk 'NR == 1 { print $8 }')
    check "the workload preempts (NO_BLOCKS) on every rank: $pre" [ "${pre:-0}" -gt 0 ]
    ;;
  prefix)
    # prefix caching under memory pressure: hits, parking, reclaims and cache-aware admission
    # decide alike on every rank (equal pools after the start-up MIN)
    args="$shape --compute none --policy full,rkv --pool-blocks 150 --requests 48
      --admission optimistic --prefixes 3 --prefix-len 40-100 --prefix-cache on
      --cache-lookahead 8 --tp $np $launch"
    run_tp "$tmp/out" "$tmp/err" "$@" "$rkv" sim $args
    rc=$?
    check "exit status 0 (got $rc)" [ "$rc" -eq 0 ]
    agree_checks "$tmp/out" full rkv
    hit=$(grep -c "hit [1-9]" "$tmp/out")
    check "the prefix cache hits" [ "${hit:-0}" -gt 0 ]
    ahead=$(grep -c "[1-9][0-9]* admitted ahead" "$tmp/out")
    check "admissions go ahead of earlier requests" [ "${ahead:-0}" -gt 0 ]
    ;;
  overlap)
    # overlap scheduling with the prefix cache (and swap allowed), the real CPU kernels: the
    # plans made while a step is in flight agree on every rank
    args="$shape --compute cpu --policy rkv,h2o --requests 10 --gen-mean 300 --gen-cap 384
      --budget 64 --buffer 32 --head-dim 32 --pool-blocks 60 --admission optimistic
      --preempt swap --prefixes 2 --prefix-len 40-80 --prefix-cache on --overlap on
      --tp $np $launch"
    run_tp "$tmp/out" "$tmp/err" "$@" "$rkv" sim $args
    rc=$?
    check "exit status 0 (got $rc)" [ "$rc" -eq 0 ]
    agree_checks "$tmp/out" rkv h2o
    check "overlap on" grep -q "overlap on" "$tmp/out"
    ;;
  agreecpu)
    args="$shape --compute cpu --policy rkv --requests 16 --gen-mean 300 --gen-cap 512
      --budget 64 --buffer 32 --head-dim 32 --pool-blocks 40 --admission optimistic
      --tp $np $launch"
    run_tp "$tmp/out" "$tmp/err" "$@" "$rkv" sim $args
    rc=$?
    check "exit status 0 (got $rc)" [ "$rc" -eq 0 ]
    agree_checks "$tmp/out" rkv
    ;;
  match | fewer)
    # fixed batch at t = 0 with reasoning-length generations and R-KV eviction
    wl="$shape --compute none --policy full,rkv --workload fixed --requests 24 --gen-len 600"
    if [ "$mode" = match ]; then
      per=200
      scale=""
      single=$((per * np))
    else
      per=400
      scale="--tp-rank-blocks-scale 1:0.5"
      single=$((per * np / 2))
    fi
    run_tp "$tmp/out" "$tmp/err" "$@" "$rkv" sim $wl --pool-blocks $per $scale --tp $np $launch
    rc=$?
    check "tp run: exit status 0 (got $rc)" [ "$rc" -eq 0 ]
    timeout -k 5 100 "$rkv" sim $wl --pool-blocks $single >"$tmp/single" 2>"$tmp/serr"
    check "single-rank run ($single blocks): exit status 0" [ $? -eq 0 ]
    agree_checks "$tmp/out" full rkv
    for pol in full rkv; do
      sb=$(single_col "$pol" "$tmp/single" 4)
      sp=$(single_col "$pol" "$tmp/single" 5)
      check "$pol: single-rank batch and preemptions read ($sb, $sp)" [ -n "$sb" -a -n "$sp" ]
      rows "$pol" "$tmp/out" >"$tmp/rows"
      while read -r p rank pool usable peak mb maxbat preem steps digest syncs us ms; do
        check "$pol rank $rank: max batch $maxbat == single-rank $sb" [ "$maxbat" -eq "${sb:-x}" ]
        check "$pol rank $rank: preemptions $preem <= single-rank $sp" [ "$preem" -le "${sp:-x}" ]
        if [ "$mode" = fewer ]; then
          exp=$((per / 2))
          check "$pol rank $rank: usable blocks $usable == MIN over ranks $exp" [ "$usable" -eq "$exp" ]
        fi
      done <"$tmp/rows"
    done
    if [ "$mode" = fewer ]; then
      # control: without the smaller rank the same pools admit a larger batch
      run_tp "$tmp/out2" "$tmp/err2" "$@" "$rkv" sim $wl --pool-blocks $per --tp $np $launch
      b_full=$(rows rkv "$tmp/out2" | awk 'NR == 1 { print $7 }')
      b_half=$(rows rkv "$tmp/out" | awk 'NR == 1 { print $7 }')
      check "control: equal pools admit more (rkv batch ${b_full:-?} > ${b_half:-?})" \
        [ "${b_full:-0}" -gt "${b_half:-0}" ]
    fi
    ;;
  diverge)
    start=$(date +%s)
    run_tp "$tmp/out" "$tmp/err" "$@" "$rkv" sim $shape --compute none --policy rkv \
      --tp $np $launch --tp-inject-divergence 40 --tp-timeout 20
    rc=$?
    took=$(($(date +%s) - start))
    cat "$tmp/err"
    check "exit status non-zero and not killed by the limit (got $rc after ${took} s)" \
      [ "$rc" -ne 0 -a "$rc" -ne 124 -a "$rc" -ne 137 ]
    r=0
    while [ $r -lt "$np" ]; do
      check "rank $r reports the divergence of plan 40 naming rank 1" grep -Eq \
        "tp rank $r: step sync 41 \(checks plan 40\) failed: .*TP step-plan divergence: rank 0 at step 41 hash [0-9a-f]+; rank 1 step 41 hash [0-9a-f]+;.*schedulers disagree" \
        "$tmp/err"
      r=$((r + 1))
    done
    check "no table printed after a divergence" [ ! -s "$tmp/out" ]
    ;;
  bind)
    run_tp "$tmp/out" "$tmp/err" "$@" "$rkv" sim $shape --compute none --policy rkv \
      --tp $np $launch --tp-bind
    rc=$?
    check "exit status 0 (got $rc)" [ "$rc" -eq 0 ]
    r=0
    while [ $r -lt "$np" ]; do
      check "local rank $r reports its binding" grep -Eq \
        "tp local rank $r: (bound to NUMA node [0-9]+'s core|not bound \()" "$tmp/err"
      r=$((r + 1))
    done
    agree_checks "$tmp/out" rkv
    ;;
  nopoolmin)
    for wl in fixed optimistic; do
      if [ "$wl" = fixed ]; then
        args="$shape --compute none --policy full,rkv --workload fixed --requests 24
          --gen-len 600 --pool-blocks 400"
      else
        args="$shape --compute none --policy full,rkv --pool-blocks 150 --requests 48
          --admission optimistic"
      fi
      args="$args --tp-rank-blocks-scale 1:0.5 --tp $np $launch --tp-timeout 20"
      run_tp "$tmp/out" "$tmp/err" "$@" "$rkv" sim $args --tp-no-pool-min
      rc=$?
      check "$wl: exit status 0 without the pool MIN (got $rc)" [ "$rc" -eq 0 ]
      agree_checks "$tmp/out" full rkv
      run_tp "$tmp/ref" "$tmp/referr" "$@" "$rkv" sim $args
      check "$wl: reference run with the pool MIN: exit status 0" [ $? -eq 0 ]
      for pol in full rkv; do
        d=$(rows "$pol" "$tmp/out" | awk 'NR == 1 { print $10 }')
        dref=$(rows "$pol" "$tmp/ref" | awk 'NR == 1 { print $10 }')
        check "$wl $pol: digest ${d:-?} == digest with the pool MIN ${dref:-?}" \
          [ -n "$d" -a "$d" = "${dref:-x}" ]
        u0=$(rows "$pol" "$tmp/out" | awk '$2 == 0 { print $4 }')
        check "$wl $pol: rank 0 kept its own pool as usable (${u0:-?} blocks)" \
          [ "${u0:-0}" -gt 0 -a "${u0:-0}" -eq "$(rows "$pol" "$tmp/out" | awk '$2 == 0 { print $3 }')" ]
      done
      pre=$(rows rkv "$tmp/out" | awk 'NR == 1 { print $8 }')
      if [ "$wl" = optimistic ]; then
        check "optimistic: the workload preempts for growth: $pre" [ "${pre:-0}" -gt 0 ]
      fi
    done
    ;;
  die)
    start=$(date +%s)
    run_tp "$tmp/out" "$tmp/err" "$@" "$rkv" sim $shape --compute none --policy rkv \
      --tp $np $launch --tp-die 30 --tp-timeout 3
    rc=$?
    took=$(($(date +%s) - start))
    cat "$tmp/err"
    check "exit status non-zero (got $rc)" [ "$rc" -ne 0 ]
    check "not killed by the 100 s limit and done within 30 s (${took} s)" \
      [ "$rc" -ne 124 -a "$rc" -ne 137 -a "$took" -le 30 ]
    check "rank 1 died at step 30" grep -q "tp rank 1: dying at step 30" "$tmp/err"
    if [ $# -eq 0 ] || [ -n "$RKV_TP_EXPECT_SURVIVORS" ]; then
      # threads (and mpirun told not to kill the job): survivors detect the dead peer
      check "a survivor reports the dead peer (timeout or broken group)" grep -Eq \
        "tp rank [02-9][0-9]*: step sync 30 \(checks plan 29\) failed: (timed out|communication error)" \
        "$tmp/err"
    fi
    ;;
  *)
    echo "unknown mode '$mode'"
    fail=1
    ;;
esac
if [ "$fail" -ne 0 ]; then
  echo "--- stdout"
  cat "$tmp/out" 2>/dev/null
  echo "--- stderr"
  cat "$tmp/err" 2>/dev/null
fi
echo "$pass passed, $fail failed"
[ "$fail" -eq 0 ]

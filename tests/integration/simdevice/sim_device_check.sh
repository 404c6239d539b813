#!/bin/sh
# Checks of `rkv sim --compute cuda|emu` (the executor over a device pool: tools/rkv/sim_engine.c,
# scheduler/src/exec_device.c), run by ctest (tests/integration/simdevice/tests.cmake).
#   nogpu: without a usable GPU (or in a build without CUDA) the engine must refuse with one
#          clear line on stderr, exit 1 and print no table; where a GPU is usable it skips (77).
#   match: with a GPU, the scheduling results (steps, batch, preemptions, compressions, evicted
#          tokens, freed blocks, ...) of --compute cuda must equal those of --compute cpu for
#          the same workload: the scheduler only sees block counts, which do not depend on the
#          backend. Skips (77) without a GPU unless RKV_TEST_REQUIRE_GPU=1.
#   emu:   the same comparison with --compute emu (the cuda engine's host logic on the emulated
#          device, the CPU kernels behind device memory): runs everywhere.
# usage: sim_device_check.sh PATH/TO/rkv nogpu|match|emu
set -u
rkv=$1
mode=$2
tmp=$(mktemp -d) || exit 1
trap 'rm -rf "$tmp"' EXIT
pass=0
fail=0
NOGPU_RE='--compute cuda: (no usable GPU|this build of rkv has no CUDA)'

ok() { pass=$((pass + 1)); echo "ok: $*"; }
bad() { fail=$((fail + 1)); echo "FAIL: $*"; }
finish() {
  echo "$pass passed, $fail failed"
  [ "$fail" -eq 0 ] || exit 1
  exit 0
}
skip() {
  echo "SKIP: $*"
  if [ "$mode" = match ] && [ "${RKV_TEST_REQUIRE_GPU:-0}" = 1 ]; then
    echo "RKV_TEST_REQUIRE_GPU=1: a skip is a failure"
    echo "0 passed, 1 failed"
    exit 1
  fi
  echo "0 passed, 0 failed, 1 skipped"
  exit 77
}

# run NAME ARGS...: stdout in $tmp/NAME.out, stderr in $tmp/NAME.err, status in $rc
run() {
  name=$1
  shift
  "$rkv" sim --model tiny --quiet "$@" >"$tmp/$name.out" 2>"$tmp/$name.err"
  rc=$?
}

# values of one JSON key, one line per policy
field() { grep -o "\"$2\": [a-z0-9.e+-]*" "$1" | sed 's/^[^:]*: //'; }

if [ "$mode" = nogpu ]; then
  run nogpu --compute cuda --policy full,rkv
  if [ "$rc" -eq 0 ]; then
    skip "a GPU is usable here (sim_cuda_gpu_matches_cpu covers it)"
  fi
  cat "$tmp/nogpu.err"
  [ "$rc" -eq 1 ] && ok "exit status 1" || bad "exit status $rc, want 1"
  if grep -Eq -e "^rkv sim: $NOGPU_RE" "$tmp/nogpu.err"; then
    ok "stderr says why"
  else
    bad "stderr lacks 'rkv sim: --compute cuda: no usable GPU' (or 'no CUDA')"
  fi
  n=$(wc -l <"$tmp/nogpu.err")
  [ "$n" -eq 1 ] && ok "one line on stderr" || bad "$n lines on stderr, want 1"
  [ ! -s "$tmp/nogpu.out" ] && ok "nothing on stdout" || bad "stdout is not empty"
  # --compute cpu with the same options still works (the failure is the engine's, not the
  # options')
  run cpu --compute cpu --policy full,rkv --requests 4 --gen-cap 256
  [ "$rc" -eq 0 ] && ok "--compute cpu runs" || bad "--compute cpu failed ($rc): $(cat "$tmp/cpu.err")"
  "$rkv" sim --help | grep -q -e '--compute none|cpu|cuda' && ok "--help lists cuda" ||
    bad "--help does not list --compute cuda"
  finish
fi

dev=cuda
[ "$mode" = emu ] && dev=emu
[ "$mode" = match ] || [ "$mode" = emu ] || {
  echo "usage: $0 RKV nogpu|match|emu"
  exit 2
}

KEYS="complete steps peak_blocks max_batch max_running preemptions finished rejected
generation_tokens prompt_tokens compressions evicted_tokens compaction_freed_blocks
prefix_hit_tokens"
i=0
# 1: recompute preemption under a small pool; 2: overlap scheduling with swap preemption;
# 3: swap preemption, every policy; 4: shared system prompts through the prefix cache, copy
# rule (compactions copy the cached prompt blocks they keep: the CPU's per-layer calls and
# the device's single cut must keep the same groups, so the hits match); 5: shared system
# prompts, protect rule (the device selection runs after the protected blocks)
for cfg in "--policy full,rkv --pool-blocks 256 --admission optimistic" \
  "--policy rkv,h2o --pool-blocks 160 --requests 12 --admission optimistic --preempt swap --overlap on" \
  "--policy full,rkv,snapkv,streaming,h2o --pool-blocks 256 --admission optimistic --preempt swap" \
  "--policy full,rkv,h2o --pool-blocks 256 --admission optimistic --requests 16 --prefixes 3 --prefix-len 100-300 --prefix-cache on --prefix-rule copy" \
  "--policy full,rkv,h2o --pool-blocks 256 --admission optimistic --requests 16 --prefixes 3 --prefix-len 100-300 --prefix-cache on --prefix-rule protect"; do
  i=$((i + 1))
  # shellcheck disable=SC2086
  run cuda$i --compute $dev --json $cfg
  if [ "$rc" -ne 0 ]; then
    if grep -Eq -e "$NOGPU_RE" "$tmp/cuda$i.err"; then
      skip "$(cat "$tmp/cuda$i.err")"
    fi
    bad "config $i: --compute $dev failed ($rc): $(cat "$tmp/cuda$i.err")"
    continue
  fi
  # shellcheck disable=SC2086
  run cpu$i --compute cpu --json $cfg
  if [ "$rc" -ne 0 ]; then
    bad "config $i: --compute cpu failed ($rc): $(cat "$tmp/cpu$i.err")"
    continue
  fi
  grep -q "\"compute\": \"$dev\"" "$tmp/cuda$i.out" && ok "config $i: ran on $dev" ||
    bad "config $i: JSON does not say compute $dev"
  for k in $KEYS; do
    a=$(field "$tmp/cuda$i.out" "$k" | tr '\n' ' ')
    b=$(field "$tmp/cpu$i.out" "$k" | tr '\n' ' ')
    if [ -n "$b" ] && [ "$a" = "$b" ]; then
      ok "config $i: $k [$a]"
    else
      bad "config $i: $k $dev [$a] != cpu [$b]"
    fi
  done
  # the comparison must cover what it claims: preemptions and compressions happened
  pre=$(field "$tmp/cpu$i.out" preemptions | sort -n | tail -1)
  com=$(field "$tmp/cpu$i.out" compressions | sort -n | tail -1)
  [ "${pre:-0}" -gt 0 ] && [ "${com:-0}" -gt 0 ] && ok "config $i: preemptions and compressions exercised" ||
    bad "config $i: workload no longer preempts ($pre) or compresses ($com); retune it"
done
finish

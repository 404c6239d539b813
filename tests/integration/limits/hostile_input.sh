#!/bin/sh
# Hostile and mistyped input to the `rkv` tool (docs/REPLAY.md, docs/SIMULATOR.md,
# docs/EVICTION.md and docs/MODEL.md, "Input limits"): every case must end quickly with a
# non-zero exit status and a message naming what is wrong — never a crash, a hang, a silent
# exit or memory exhaustion. Run by ctest (tests/integration/limits/tests.cmake). Usage:
#   hostile_input.sh RKV MODE SOURCE_DIR
# MODE:
#   topo_alloc     --alloc of 2^40 bytes fails: exit 1 naming --alloc (freed an uninitialised
#                  buffer and crashed release builds; exited 0)
#   topo_gpu_numa  --gpu-numa lists that are empty, have an empty item, too many items, a node
#                  out of range or a non-decimal number: exit 2 naming --gpu-numa (under ASan
#                  the error paths must not leak either)
#   sim_trace      --trace lines with nan / inf / overflowing timestamps (the simulator waited
#                  forever for a NaN arrival), oversized or malformed token counts, overlong
#                  lines: exit non-zero naming FILE:LINE
#   sim_host_gib   --host-gib beyond the host pool's 2^30 blocks: named (was a float-to-integer
#                  overflow); a small value still runs
#   replay         a 55-byte script asking for a 2^31-block pool (16 GB, 65 s), /dev/zero, an
#                  overlong line, too many streams: exit 2 with the replay limit in the message;
#                  a pool at the limits still runs
#   select_npy     .npy keys / queries / scores with NaN or Inf, /dev/zero, a header promising
#                  4 TiB followed by an endless stream, trailing bytes: exit 1 naming the option
#   eval_model     safetensors weights with a NaN, overlapping tensors, /dev/zero: exit 1
#   options        numbers are decimal everywhere (--budget 010 is 10, 0x10 is rejected), empty
#                  or malformed comma lists are named (rkv eval --budgets , exited 2 silently)
# Commands run under a 4 GiB address-space limit (ASan builds: a 4 GiB allocation cap instead)
# so that a regression fails the test instead of exhausting the machine.
set -u
rkv=$1
mode=$2
src=$3
tmp=$(mktemp -d "${TMPDIR:-/tmp}/rkv_hostile.XXXXXX") || exit 1
trap 'rm -rf "$tmp"' EXIT
pass=0
fail=0
LIMIT_S=20

if [ "${RKV_TEST_SANITIZE:-0}" = 1 ]; then
  ASAN_OPTIONS="${ASAN_OPTIONS:+$ASAN_OPTIONS:}allocator_may_return_null=1:max_allocation_size_mb=4096"
  export ASAN_OPTIONS
fi

# expect DESCRIPTION WANT_RC REGEX COMMAND...: COMMAND must exit with WANT_RC within LIMIT_S
# seconds and print (stdout or stderr) a line matching the extended REGEX (none when empty).
expect() {
  desc=$1
  want=$2
  regex=$3
  shift 3
  (
    [ "${RKV_TEST_SANITIZE:-0}" = 1 ] || ulimit -v 4194304
    exec timeout -k 5 "$LIMIT_S" "$@"
  ) >"$tmp/out" 2>&1
  rc=$?
  if [ "$rc" -eq 124 ] || [ "$rc" -eq 137 ]; then
    fail=$((fail + 1))
    echo "FAIL: $desc: still running after $LIMIT_S s (killed)"
  elif [ "$rc" -ne "$want" ]; then
    fail=$((fail + 1))
    echo "FAIL: $desc: exit status $rc, expected $want"
  elif grep -Eq "runtime error:|ERROR: [A-Za-z]*Sanitizer" "$tmp/out"; then
    fail=$((fail + 1))
    echo "FAIL: $desc: a sanitizer report"
  elif [ -n "$regex" ] && ! grep -Eq -e "$regex" "$tmp/out"; then
    fail=$((fail + 1))
    echo "FAIL: $desc: no line matches /$regex/"
  else
    pass=$((pass + 1))
    echo "ok: $desc"
    return
  fi
  sed 's/^/  | /' "$tmp/out" | head -20
}

finish() {
  echo "$pass passed, $fail failed"
  [ "$fail" -eq 0 ]
  exit $?
}

# npy FILE SHAPE DATA: a version 1.0 '<f4' .npy file; DATA is printf escapes (little endian)
npy() {
  dict="{'descr': '<f4', 'fortran_order': False, 'shape': $2, }"
  total=$(((10 + ${#dict} + 1 + 63) / 64 * 64))
  hl=$((total - 10))
  {
    printf '\223NUMPY\001\000'
    printf "\\$(printf %03o $((hl % 256)))\\$(printf %03o $((hl / 256)))"
    printf '%s' "$dict"
    printf "%$((hl - ${#dict} - 1))s\n" ""
    printf "$3"
  } >"$1"
}
# rep N ESCAPES: ESCAPES N times
rep() {
  r=""
  i=0
  while [ "$i" -lt "$1" ]; do
    r="$r$2"
    i=$((i + 1))
  done
  printf '%s' "$r"
}
ONE='\000\000\200\077' # 1.0f
NAN='\000\000\300\177'
INF='\000\000\200\177'

# st FILE JSON DATA: a safetensors file (header length < 256 bytes); DATA is printf escapes
st() {
  {
    printf "\\$(printf %03o ${#2})\\000\\000\\000\\000\\000\\000\\000"
    printf '%s' "$2"
    printf "$3"
  } >"$1"
}

case "$mode" in
  topo_alloc)
    if [ "${RKV_TEST_SANITIZE:-0}" = 1 ] && [ "$(cat /proc/sys/vm/overcommit_memory 2>/dev/null)" = 1 ]; then
      # Without an address-space limit (ASan cannot run under one) a 1 TiB mapping would
      # succeed here and be touched page by page.
      echo "SKIP: sanitizer build on a host that always overcommits memory"
      echo "0 passed, 0 failed, 1 skipped"
      exit 77
    fi
    expect "--alloc 2^40 bytes fails cleanly" 1 \
      "^rkv topo: --alloc 1099511627776: RKV_ERR_NO_MEMORY" "$rkv" topo --alloc 1099511627776
    expect "the same with --json" 1 "\"alloc\": \"RKV_ERR_NO_MEMORY" \
      "$rkv" topo --json --alloc 1099511627776
    expect "--alloc 2^40 + 1 is out of range" 2 "bad value for --alloc" \
      "$rkv" topo --alloc 1099511627777
    expect "a small --alloc still works" 0 "host swap buffer: 65536 bytes" \
      "$rkv" topo --alloc 65536
    ;;
  topo_gpu_numa)
    long=$(rep 1025 "0,")0
    expect "--gpu-numa ," 2 "bad value for --gpu-numa: ',' \\(empty item" "$rkv" topo --gpu-numa ,
    expect "--gpu-numa with a trailing comma" 2 "bad value for --gpu-numa: '0,'" \
      "$rkv" topo --gpu-numa 0,
    expect "--gpu-numa empty" 2 "bad value for --gpu-numa: '' \\(empty list" "$rkv" topo --gpu-numa ""
    expect "--gpu-numa with 1026 items" 2 "bad value for --gpu-numa: .*more than 1024 items" \
      "$rkv" topo --gpu-numa "$long"
    expect "--gpu-numa node out of range" 2 "bad value for --gpu-numa: '4096'" \
      "$rkv" topo --gpu-numa 0,4096
    expect "--gpu-numa in hexadecimal" 2 "bad value for --gpu-numa: '0x0'" \
      "$rkv" topo --gpu-numa 0x0
    expect "--gpu-numa -1,0 is fine" 0 "placement of 2 local ranks" "$rkv" topo --gpu-numa -1,0
    ;;
  sim_trace)
    sim="$rkv sim --compute none --quiet --requests 4 --trace $tmp/t.csv"
    head="TIMESTAMP,ContextTokens,GeneratedTokens"
    for ts in "18:17:nan" "18:17:inf" "18:17:-inf" "18:17:NAN" "18:17:1e999"; do
      printf '%s\r\n2023-11-16 18:17:03.5,10,10\r\n2023-11-16 %s,10,10\r\n' "$head" "$ts" >"$tmp/t.csv"
      expect "timestamp $ts" 2 "t\\.csv:3: timestamp '2023-11-16 $ts' is not a finite time" $sim
    done
    printf '2023-11-16 18:17:nan,10,10\n' >"$tmp/t.csv"
    expect "nan on the first line" 2 "t\\.csv:1: timestamp .* is not a finite time" $sim
    printf '2023-11-16 18:17:-1e308,1,1\n2023-11-16 18:17:1e308,1,1\n' >"$tmp/t.csv"
    expect "an arrival offset that overflows" 2 "t\\.csv:2: timestamp .* is not a finite time" $sim
    printf '2023-11-16 18:17:03,10,10\n2023-11-16 18:17:04,99999999999999999999,10\n' >"$tmp/t.csv"
    expect "a context of 10^20 tokens" 2 "t\\.csv:2: ContextTokens and GeneratedTokens must be" $sim
    printf '2023-11-16 18:17:03,10,1073741825\n' >"$tmp/t.csv"
    expect "2^30 + 1 generated tokens" 2 "t\\.csv:1: ContextTokens and GeneratedTokens must be" $sim
    printf '2023-11-16 18:17:03,ten,10\n' >"$tmp/t.csv"
    expect "a token count that is not a number" 2 "t\\.csv:1: ContextTokens" $sim
    { printf '2023-11-16 18:17:03,10,10\n2023-11-16 18:17:04,'; rep 600 "1"; printf ',1\n'; } >"$tmp/t.csv"
    expect "an overlong line" 2 "t\\.csv:2: line longer than" $sim
    expect "/dev/zero as a trace" 2 "/dev/zero:1: malformed line" \
      "$rkv" sim --compute none --quiet --trace /dev/zero
    printf '%s\r\n2023-11-16 18:17:03.5,10,10\r\n2023-11-16 18:17:04.5,20,5\r\n' "$head" >"$tmp/t.csv"
    expect "a good trace still runs" 0 "" $sim
    ;;
  sim_host_gib)
    expect "--host-gib 1e6 with swap" 2 "bad value for --host-gib: .*host pool limit" \
      "$rkv" sim --compute none --quiet --preempt swap --host-gib 1e6 --steps 2
    expect "--host-gib 1e6 with a llama-8b block" 2 "bad value for --host-gib" \
      "$rkv" sim --model llama-8b --compute none --quiet --preempt swap --host-gib 1e6 --steps 2
    expect "--host-gib inf" 2 "bad value for --host-gib: 'inf'" \
      "$rkv" sim --compute none --quiet --preempt swap --host-gib inf --steps 2
    expect "--host-gib 0.01 still runs" 0 "" \
      "$rkv" sim --compute none --quiet --preempt swap --host-gib 0.01 --steps 20
    ;;
  replay)
    printf 'pool blocks=2147483647 block_size=1 layers=1 kv_heads=1\ncreate 1\n' >"$tmp/big.txt"
    expect "a 2^31-block pool" 2 "blocks=2147483647 exceeds the replay limit of 1048576" \
      "$rkv" replay "$tmp/big.txt"
    printf 'pool blocks=1048576 block_size=32 layers=1 kv_heads=1\n' >"$tmp/tok.txt"
    expect "2^25 tokens" 2 "blocks x block_size = 33554432 exceeds the replay limit" \
      "$rkv" replay "$tmp/tok.txt"
    printf 'pool blocks=8 block_size=4 layers=4097 kv_heads=1\n' >"$tmp/str.txt"
    expect "4097 streams" 2 "layers x kv_heads = 4097 exceeds the replay limit of 4096" \
      "$rkv" replay "$tmp/str.txt"
    expect "/dev/zero" 2 "\"op\": 1, .*NUL byte" "$rkv" replay /dev/zero
    {
      printf 'pool blocks=8 block_size=4 layers=1 kv_heads=1\n# '
      head -c 1100000 /dev/zero | tr '\000' x
      printf '\nshow\n'
    } >"$tmp/long.txt"
    expect "a 1.1 MB comment line" 2 "\"op\": 2, .*line longer than 1048576 bytes" \
      "$rkv" replay "$tmp/long.txt"
    printf 'pool blocks=8 block_size=4 layers=1 kv_heads=1\ncreate 1\nappend 1 5\nkeep 1 0 0 0-16777216\n' >"$tmp/keep.txt"
    expect "a keep line of 2^24 + 1 positions (reported, the script goes on)" 0 \
      "\"op\": 4, .*more than 16777215 positions" "$rkv" replay "$tmp/keep.txt"
    printf 'pool blocks=1048576 block_size=16 layers=64 kv_heads=64\ncreate 1\nappend 1 100\ncheck\n' >"$tmp/max.txt"
    expect "a pool at every limit still runs" 0 "" "$rkv" replay "$tmp/max.txt"
    ;;
  select_npy)
    sel="$rkv select --policy streaming --budget 6 --window 1 --sinks 0 --out $tmp/kept.npy"
    npy "$tmp/k.npy" "(1, 8, 4)" "$(rep 32 "$ONE")"
    expect "finite keys run" 0 "" $sel --keys "$tmp/k.npy"
    npy "$tmp/kn.npy" "(1, 8, 4)" "$(rep 29 "$ONE")$NAN$ONE$ONE"
    expect "a NaN key" 1 "^rkv select: --keys: .*kn\\.npy: element \\[0, 7, 1\\] is NaN" \
      $sel --keys "$tmp/kn.npy"
    npy "$tmp/ki.npy" "(1, 8, 4)" "$INF$(rep 31 "$ONE")"
    expect "an Inf key" 1 "--keys: .*element \\[0, 0, 0\\] is \\+Inf" $sel --keys "$tmp/ki.npy"
    npy "$tmp/q.npy" "(2, 2, 4)" "$(rep 12 "$ONE")$NAN$(rep 3 "$ONE")"
    expect "a NaN query" 1 "--queries: .*element \\[1, 1, 0\\] is NaN" \
      "$rkv" select --policy rkv --budget 6 --window 1 --sinks 0 --out "$tmp/kept.npy" \
      --keys "$tmp/k.npy" --queries "$tmp/q.npy"
    npy "$tmp/s.npy" "(1, 8)" "$(rep 3 "$ONE")$NAN$(rep 4 "$ONE")"
    expect "a NaN score" 1 "--scores: .*element \\[0, 3\\] is NaN" \
      "$rkv" select --policy h2o --budget 6 --window 1 --sinks 0 --out "$tmp/kept.npy" \
      --keys "$tmp/k.npy" --scores "$tmp/s.npy"
    expect "/dev/zero keys" 1 "--keys: /dev/zero: not a \\.npy file" $sel --keys /dev/zero
    npy "$tmp/huge.npy" "(1024, 1048576, 1024)" ""
    expect "a 4 TiB header on an endless stream" 1 \
      "--keys: .*4398046511104 data bytes exceed the 1073741824-byte limit" \
      sh -c "cat '$tmp/huge.npy' /dev/zero | $sel --keys /dev/stdin"
    npy "$tmp/tr.npy" "(1, 8, 4)" "$(rep 33 "$ONE")"
    expect "trailing bytes" 1 "--keys: .*trailing bytes after the 128 data bytes" \
      $sel --keys "$tmp/tr.npy"
    npy "$tmp/sh.npy" "(1, 8, 4)" "$(rep 31 "$ONE")"
    expect "truncated data" 1 "--keys: .*truncated data" $sel --keys "$tmp/sh.npy"
    ;;
  eval_model)
    eval_="$rkv eval --problems 1 --policies full --budgets 32 --digits 1-3"
    cp "$src/tests/unit/model/data/smoke.safetensors" "$tmp/nan.st"
    chmod u+w "$tmp/nan.st"
    size=$(wc -c <"$tmp/nan.st")
    printf "$NAN" | dd of="$tmp/nan.st" bs=1 seek=$((size - 4)) conv=notrunc 2>/dev/null
    expect "a NaN weight" 1 "^rkv eval: --model: .*nan\\.st: safetensors: tensor '.*' element [0-9]+ is NaN" \
      $eval_ --model "$tmp/nan.st"
    st "$tmp/ov.st" '{"a":{"dtype":"F32","shape":[2],"data_offsets":[0,8]},"b":{"dtype":"F32","shape":[2],"data_offsets":[4,12]}}' \
      "$ONE$ONE$ONE"
    expect "overlapping tensors" 1 "--model: .*tensors 'a' \\[0, 8\\] and 'b' \\[4, 12\\] overlap" \
      $eval_ --model "$tmp/ov.st"
    expect "/dev/zero weights" 1 "--model: .*/dev/zero.*header length 0" $eval_ --model /dev/zero
    expect "the smoke weights still load" 0 "" $eval_ --model "$src/tests/unit/model/data/smoke.safetensors"
    ;;
  options)
    npy "$tmp/k.npy" "(1, 16, 4)" "$(rep 64 "$ONE")"
    expect "--budget 010 is ten" 0 "" "$rkv" select --policy streaming --budget 010 --window 1 \
      --sinks 0 --keys "$tmp/k.npy" --out "$tmp/kept.npy"
    expect "  ... ten positions kept" 0 "'shape': \\(1, 10\\)" head -c 128 "$tmp/kept.npy"
    expect "--ranks 010 places ten ranks" 0 "placement of 10 local ranks" "$rkv" topo --ranks 010
    expect "--budget 0x10" 2 "bad value for --budget: '0x10'" "$rkv" select --policy streaming \
      --budget 0x10 --keys "$tmp/k.npy" --out "$tmp/kept.npy"
    expect "--requests +5" 2 "bad value for --requests: '\\+5'" "$rkv" sim --requests +5
    expect "--requests ' 5'" 2 "bad value for --requests: ' 5'" "$rkv" sim --requests " 5"
    expect "--rate 0x10 (a hexadecimal float)" 2 "bad value for --rate: '0x10'" "$rkv" sim --rate 0x10
    expect "--lambda nan" 2 "bad value for --lambda: 'nan'" "$rkv" eval --lambda nan
    expect "rkv eval --budgets ," 2 "bad value for --budgets: ',' \\(empty item" "$rkv" eval --budgets ,
    expect "rkv eval --budgets ''" 2 "bad value for --budgets: '' \\(empty list" "$rkv" eval --budgets ""
    expect "rkv eval --budgets 32," 2 "bad value for --budgets: '32,'" "$rkv" eval --budgets 32,
    expect "rkv eval --budgets with 17 items" 2 "bad value for --budgets: .*more than 16 items" \
      "$rkv" eval --budgets 16,17,18,19,20,21,22,23,24,25,26,27,28,29,30,31,32
    expect "rkv eval --budgets 4 (below the window)" 2 "--budgets: budget 4 must exceed --window 8" \
      "$rkv" eval --budgets 4
    expect "rkv eval --policies ,full" 2 "bad value for --policies: ',full'" "$rkv" eval --policies ,full
    expect "rkv eval --policies nope" 2 "bad value for --policies: unknown policy 'nope'" \
      "$rkv" eval --policies nope
    expect "rkv sim --policy full,,rkv" 2 "bad value for --policy: 'full,,rkv'" \
      "$rkv" sim --policy full,,rkv
    expect "rkv sim --model nope" 2 "bad value for --model: 'nope'" "$rkv" sim --model nope
    expect "rkv sim --workload nope" 2 "bad value for --workload: 'nope'" \
      "$rkv" sim --workload nope --compute none --quiet
    expect "rkv select --policy nope" 2 "bad value for --policy: 'nope'" "$rkv" select --policy nope
    expect "rkv select --dtype nope" 2 "bad value for --dtype: 'nope'" "$rkv" select --dtype nope
    expect "rkv bench attention --batch 2,,3" 2 "bad value for --batch: '2,,3'" \
      "$rkv" bench attention --batch 2,,3
    expect "rkv bench evict --budgets 32," 2 "bad --budgets '32,'" "$rkv" bench evict --budgets 32,
    expect "rkv bench evict --dtype nope" 2 "bad value for --dtype: 'nope'" \
      "$rkv" bench evict --dtype nope
    expect "rkv bench swap --blocks 2,,3" 2 "bad value for --blocks: '2,,3'" \
      "$rkv" bench swap --blocks 2,,3
    expect "rkv bench swap --host nope" 2 "bad value for --host: 'nope'" \
      "$rkv" bench swap --host nope
    expect "rkv bench swap --blocks 9 --pool-blocks 8" 2 "--blocks 9 exceeds --pool-blocks 8" \
      "$rkv" bench swap --blocks 9 --pool-blocks 8
    expect "rkv bench swap --repeat 0" 2 "bad value for --repeat" "$rkv" bench swap --repeat 0
    ;;
  *)
    echo "unknown mode '$mode'"
    exit 2
    ;;
esac
finish

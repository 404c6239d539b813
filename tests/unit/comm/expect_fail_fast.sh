#!/bin/sh
# Runs a command that is supposed to FAIL, quickly: passes when it exits non-zero before
# LIMIT seconds (not killed by the limit) and its output matches REGEX (skipped when REGEX is
# empty). Used for the mpirun tests where a peer hangs or dies: the survivors must error out,
# never hang. Usage: expect_fail_fast.sh LIMIT_S REGEX command [args...]
limit=$1
regex=$2
shift 2
out=$(mktemp "${TMPDIR:-/tmp}/rkv_fail_fast.XXXXXX") || exit 1
start=$(date +%s)
timeout -k 5 "$limit" "$@" >"$out" 2>&1
rc=$?
end=$(date +%s)
cat "$out"
ok=1
if [ "$rc" -eq 0 ]; then
  echo "FAIL: the command succeeded; it should have failed"
  ok=0
elif [ "$rc" -eq 124 ] || [ "$rc" -eq 137 ]; then
  echo "FAIL: the command hung: killed after the ${limit} s limit"
  ok=0
elif [ -n "$regex" ] && ! grep -Eq "$regex" "$out"; then
  echo "FAIL: output does not match /$regex/"
  ok=0
fi
rm -f "$out"
echo "exit status $rc after $((end - start)) s (limit ${limit} s)"
if [ "$ok" -eq 1 ]; then
  echo "1 passed, 0 failed"
  exit 0
fi
echo "0 passed, 1 failed"
exit 1

#!/bin/sh
# Runs one pytest file of the Python bindings (tools/python/tests) for ctest
# (tests/python/tests.cmake). Uses the first interpreter that imports numpy and pytest
# (/usr/bin/python3 first, then python3 on PATH). Exit 77 (skip) with a message when none
# does, or when every test of the file skipped (e.g. test_torch.py without PyTorch).
# usage: run_pytest.sh FILE  (env: RKV_LIBRARY, RKV_BUILD_DIR, PYTHONPATH from ctest)
set -u
file=$1
py=""
for cand in /usr/bin/python3 python3; do
  if command -v "$cand" >/dev/null 2>&1 && "$cand" -c "import numpy, pytest" >/dev/null 2>&1; then
    py=$cand
    break
  fi
done
if [ -z "$py" ]; then
  echo "SKIP: no python3 that imports numpy and pytest (apt-get install python3-numpy python3-pytest)"
  exit 77
fi
# -p no:cacheprovider: nothing written into the source tree (PYTHONDONTWRITEBYTECODE too)
out=$("$py" -m pytest -q -rs -p no:cacheprovider "$file" 2>&1)
rc=$?
echo "$out"
# 5: nothing collected (a module-level skip); 0 with nothing passed: every test skipped
if [ $rc -eq 5 ] || { [ $rc -eq 0 ] && ! echo "$out" | grep -Eq '[0-9]+ passed'; }; then
  echo "SKIP: every test of $(basename "$file") skipped"
  exit 77
fi
exit $rc

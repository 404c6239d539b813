#!/bin/sh
# Runs tools/bench/cuda_gpu_check.sh without a GPU and checks what it writes (docs/GPU-CHECK.md).
#   check_gpu_check.sh dry  SCRIPT BUILD_DIR WORK   --dry-run on the real build tree (no rebuild)
#   check_gpu_check.sh mock SCRIPT BUILD_DIR WORK   the GPU path with stand-ins for rkv, ctest's
#                                                   GPU tests, nvidia-smi, compute-sanitizer and
#                                                   python3 (mock/): every parser, the derived
#                                                   numbers and the exit status
#   check_gpu_check.sh mockfail ...                 the same with a cuda/cpu accuracy mismatch,
#                                                   a racecheck hazard and a hung poison test:
#                                                   exit 1, later stages still run
set -u
mode=$1 script=$2 build=$3 work=$4
here=$(cd "$(dirname "$0")" && pwd)
fail() { echo "FAIL: $*"; [ -f "$out/summary.txt" ] && cat "$out/summary.txt"; exit 1; }
PY=
for p in python3 /usr/bin/python3; do
  if "$p" -c 'import json' 2>/dev/null; then PY=$p; break; fi
done
rm -rf "$work/$mode" && mkdir -p "$work/$mode"
out=$work/$mode/out

case "$mode" in
  dry)
    bash "$script" --dry-run --reuse-build --build-dir "$build" --out "$out" --budget 120
    rc=$?
    [ "$rc" = 0 ] || fail "dry run exited $rc"
    ;;
  mock | mockfail)
    mb=$work/$mode/build
    mkdir -p "$mb/tools" "$mb/tests"
    cp "$here/mock/rkv" "$mb/tools/rkv"
    for t in cuda_test_attn_cuda cuda_test_evict_cuda; do
      cat >"$mb/tests/$t" <<'EOT'
#!/bin/sh
case ",${MOCK_FAIL:-},$0" in *,test,*evict*) echo "1 passed, 1 failed"; exit 1 ;; esac
echo "12 passed, 0 failed"
EOT
      chmod +x "$mb/tests/$t"
      printf 'add_test(%s "%s")\nset_tests_properties(%s PROPERTIES LABELS "gpu")\n' "$t" "$mb/tests/$t" "$t" >>"$mb/CTestTestfile.cmake"
    done
    # a Python GPU test runs after the C ones; mockfail's skips (77), which fails nothing
    cat >"$mb/tests/python_mock_cuda" <<'EOT'
#!/bin/sh
case ",${MOCK_FAIL:-}," in *,test,*) echo "SKIP: no pytest"; exit 77 ;; esac
echo "1 passed"
EOT
    chmod +x "$mb/tests/python_mock_cuda"
    printf 'add_test(python_mock_cuda "%s")\nset_tests_properties(python_mock_cuda PROPERTIES LABELS "python;gpu" SKIP_RETURN_CODE 77)\n' "$mb/tests/python_mock_cuda" >>"$mb/CTestTestfile.cmake"
    # the poison test runs last and alone under a short timeout: mockfail's hangs
    cat >"$mb/tests/cuda_test_cuda_poison" <<'EOT'
#!/bin/sh
case ",${MOCK_FAIL:-}," in *,hang,*) sleep 100 ;; esac
echo "1 passed, 0 failed"
EOT
    chmod +x "$mb/tests/cuda_test_cuda_poison"
    printf 'add_test(cuda_test_cuda_poison "%s")\nset_tests_properties(cuda_test_cuda_poison PROPERTIES LABELS "gpu" TIMEOUT 600)\n' "$mb/tests/cuda_test_cuda_poison" >>"$mb/CTestTestfile.cmake"
    # GPU test binaries the sanitize stage runs without ctest knowing them
    for t in cuda_test_qwindow_cuda cuda_test_pool_cuda; do
      printf '#!/bin/sh\necho "1 passed, 0 failed"\n' >"$mb/tests/$t"
      chmod +x "$mb/tests/$t"
    done
    printf 'add_test(not_gpu "/bin/true")\n' >>"$mb/CTestTestfile.cmake"
    [ "$mode" = mockfail ] && export MOCK_FAIL=eval,racecheck,test,hang
    PATH="$here/mock/bin:$PATH" bash "$script" --reuse-build --build-dir "$mb" --out "$out" --budget 300
    rc=$?
    if [ "$mode" = mock ]; then
      [ "$rc" = 0 ] || fail "mock run exited $rc"
    else
      [ "$rc" = 1 ] || fail "mockfail run exited $rc, not 1"
    fi
    ;;
  *) echo "usage: $0 dry|mock|mockfail SCRIPT BUILD_DIR WORK" >&2; exit 2 ;;
esac

j=$out/gpu.json
[ -s "$j" ] || fail "no $j"
[ -s "$out/summary.txt" ] || fail "no summary.txt"
n=$(find "$out" -type f | wc -l)
[ "$n" -le 8 ] || fail "$n files in the output (the device tool brings back 8)"
grep -q '"schema": "rkv-gpu-check/1"' "$j" || fail "no schema line"
for s in env build test eval sanitize attention evict sim swap; do
  grep -q "\"name\": \"$s\", \"status\"" "$j" || fail "stage $s missing"
done
if [ -z "$PY" ]; then
  echo "python3 missing: structure checked with grep only"
  exit 0
fi
"$PY" - "$j" "$mode" <<'EOP' || fail "gpu.json content (above)"
import json, sys
d = json.load(open(sys.argv[1]))
mode = sys.argv[2]
st = {s["name"]: s["status"] for s in d["stages"]}
rows = d["rows"]
def named(n): return [r for r in rows if r["name"] == n]
errs = []
def want(cond, what):
    if not cond: errs.append(what)
att = named("attn_decode")
if mode == "dry":
    want(d["dry_run"] is True, "dry_run flag")
    want(st["build"] == "skip" and st["test"] == "skip" and st["eval"] == "skip", "dry stages skipped: %s" % st)
    want(len([r for r in att if r["backend"] == "cuda" and r["seconds"] is None]) == 12, "12 GPU placeholders")
    want(any(r["backend"] == "cpu" and r["gbps"] > 0 for r in att), "a CPU row through the parser")
    sim = named("sim_fixed_batch")
    # the R-KV prefixes run first (their difference is the steady state), then full
    want([r["max_batch"] for r in sim] == [450, 450, 31], "sim batches 450/31: %s" % [r.get("max_batch") for r in sim])
    want(len(named("sim_rkv_steady_state")) == 1, "steady-state row")
    sw = named("swap_out") + named("swap_in")
    want(len(sw) == 4 and all(r["backend"] == "cpu" and r["gbps"] > 0 and r["dry_run"] for r in sw),
         "4 CPU swap rows through the parser: %s" % sw)
else:
    want(d["dry_run"] is False, "dry_run flag")
    want(d["device"]["gpu"] == "NVIDIA H100 80GB HBM3" and d["device"]["driver"] == "580.159.04", "device")
    want(d["device"]["compute_sanitizer"].startswith("Version 2025"), "sanitizer version")
    want(len(att) == 10 and all(0.79 < r["fraction_of_copy"] < 0.86 for r in att), "10 attention rows")
    ct = named("ctest")
    # the C tests, then the Python one, then the late ones alone
    tests = ["cuda_test_attn_cuda", "cuda_test_evict_cuda", "python_mock_cuda",
             "cuda_test_cuda_poison"]
    want([r["shape"]["test"] for r in ct] == tests, "ctest rows %s" % ct)
    # mockfail's poison test hangs: killed with its ctest, it still gets a row
    want([r["status"] for r in ct] == (["Passed"] * 4 if mode == "mock" else
                                       ["Passed", "Failed", "Skipped", "Timeout"]),
         "ctest statuses %s" % ct)
    ev = {r["shape"]["similarity"]: r for r in named("evict_rkv")}
    want(abs(ev["simt"]["speedup_vs_torch"] - 10) < 1e-6 and abs(ev["tensor_cores"]["speedup_vs_torch"] - 25) < 1e-6, "speed-ups %s" % ev)
    for r in ev.values():
        sa, sw = r["share_of_128_steps_attention"], r["share_of_128_steps_with_weights"]
        want(sa is not None and sw is not None and 0 < sw < sa < 1, "shares %s %s" % (sa, sw))
    want(len(named("evict_snapkv")) == 1, "snapkv row")
    want(len(named("eval_cuda")) == 2, "eval rows")
    san = named("sanitizer")
    want(len(san) == 8, "8 sanitizer runs")
    sw = named("swap_out") + named("swap_in")
    want(len(sw) == 4 and all(abs(r["fraction_of_copy"] - 20 / 24) < 1e-4 for r in sw)
         and sorted(r["shape"]["blocks"] for r in sw) == [4096, 4096, 65536, 65536], "swap rows %s" % sw)
    ss = named("sim_rkv_steady_state")
    want(len(ss) == 1 and abs(ss[0]["tokens_per_s"] - 22500) < 1 and abs(ss[0]["ratio_to_full"] - 1.125) < 0.01
         and abs(ss[0]["ratio_to_full_without_synthesis"] - 1.4766) < 0.01, "steady state %s" % ss)
    if mode == "mock":
        want(all(v in ("pass", "skip") for v in st.values()) and st["build"] == "skip", "stages %s" % st)
        want(all(r["status"] == "pass" for r in san), "sanitizer rows pass")
        want(all(r["accuracy"] == r["cpu_accuracy"] for r in named("eval_cuda")), "eval accuracies")
        en = [x["note"] for x in d["stages"] if x["name"] == "eval"][0]
        want("2 runs with the same accuracy" in en and "(1 with identical generations)" in en, "eval note: %s" % en)
    else:
        want(st["eval"] == "fail" and st["sanitize"] == "fail" and st["test"] == "fail", "failing stages %s" % st)
        note = [x["note"] for x in d["stages"] if x["name"] == "test"][0]
        want("failed: cuda_test_evict_cuda" in note and "python_mock_cuda" not in
             note.split("failed:")[1], "failed tests named, the skipped one not: %s" % note)
        want("cuda_test_cuda_poison timed out" in note, "the hung test timed out alone: %s" % note)
        want(st["attention"] == "pass" and st["evict"] == "pass" and st["sim"] == "pass"
             and st["swap"] == "pass", "later stages ran %s" % st)
        want([r["status"] for r in san if r["shape"]["tool"] == "racecheck"] == ["fail", "fail"], "racecheck rows fail")
for e in errs:
    print("gpu.json:", e)
sys.exit(1 if errs else 0)
EOP
echo "ok: $mode"

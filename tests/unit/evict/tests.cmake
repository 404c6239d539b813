# Eviction: the cross-check of `rkv select` (the real paged path) against the independent
# NumPy reference ref_rkv.py, for every policy; skipped (77) without a numpy interpreter.
if(RKV_NUMPY_PYTHON)
  add_test(NAME evict_crosscheck_numpy
    COMMAND ${RKV_NUMPY_PYTHON} ${CMAKE_CURRENT_LIST_DIR}/crosscheck_select.py
            --rkv $<TARGET_FILE:rkv> --workdir ${CMAKE_CURRENT_BINARY_DIR}/evict_crosscheck)
else()
  add_test(NAME evict_crosscheck_numpy
    COMMAND sh -c "echo 'SKIP: no python3 that imports numpy'; echo '0 passed, 0 failed'; exit 77")
endif()
set_tests_properties(evict_crosscheck_numpy PROPERTIES SKIP_RETURN_CODE 77 TIMEOUT 300
  LABELS "unit;evict")
# Selection granularity (stream, layer, kvhead, sequence) of `rkv select` on multi-layer
# inputs against ref_rkv.select_multi; skipped (77) without a numpy interpreter.
if(RKV_NUMPY_PYTHON)
  add_test(NAME evict_crosscheck_granularity
    COMMAND ${RKV_NUMPY_PYTHON} ${CMAKE_CURRENT_LIST_DIR}/crosscheck_granularity.py
            --rkv $<TARGET_FILE:rkv> --workdir ${CMAKE_CURRENT_BINARY_DIR}/evict_granularity)
else()
  add_test(NAME evict_crosscheck_granularity
    COMMAND sh -c "echo 'SKIP: no python3 that imports numpy'; echo '0 passed, 0 failed, 1 skipped'; exit 77")
endif()
set_tests_properties(evict_crosscheck_granularity PROPERTIES SKIP_RETURN_CODE 77 TIMEOUT 300
  LABELS "unit;evict")
# `rkv select --help` prints usage; bad input is a clear error, not a crash.
add_test(NAME evict_select_help COMMAND rkv select --help)
set_tests_properties(evict_select_help PROPERTIES TIMEOUT 30 LABELS "unit;evict"
  PASS_REGULAR_EXPRESSION "usage: rkv select")
# Must fail with exit 1 and say why (a crash would not print the message).
add_test(NAME evict_select_bad_npy
  COMMAND sh -c "out=$(\"$0\" select --policy rkv --keys \"$1\" --budget 16 --out \"$2\" 2>&1); rc=$?; echo \"$out\"; [ $rc -eq 1 ] && echo \"$out\" | grep -q Fortran-order"
          $<TARGET_FILE:rkv> ${CMAKE_CURRENT_LIST_DIR}/../../fuzz/corpus/fuzz_npy/fortran
          ${CMAKE_CURRENT_BINARY_DIR}/never.npy)
set_tests_properties(evict_select_bad_npy PROPERTIES TIMEOUT 30 LABELS "unit;evict")
# The benchmark stays runnable (tiny sizes: a smoke test, not a measurement).
add_test(NAME evict_bench_smoke
  COMMAND rkv bench evict --budgets 64,96 --kv-heads 2 --gqa 2 --head-dim 32 --reps 1)
set_tests_properties(evict_bench_smoke PROPERTIES TIMEOUT 60 LABELS "unit;evict")
# The granularity benchmark stays runnable (tiny sizes: a smoke test, not a measurement).
add_test(NAME evict_bench_granularity_smoke
  COMMAND rkv bench granularity --layers 2 --kv-heads 2 --gqa 2 --n 80 --budget 64 --head-dim 32
          --reps 1)
set_tests_properties(evict_bench_granularity_smoke PROPERTIES TIMEOUT 60 LABELS "unit;evict"
  PASS_REGULAR_EXPRESSION "sequence")

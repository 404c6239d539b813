# Scheduler tool tests (included by tests/CMakeLists.txt): short `rkv sim` runs that keep the
# simulator's paths working — compute none with the invariant walk after every step (table and
# JSON), a few requests through the real CPU kernels with swap preemption, the SVG writer,
# and the option errors. No claims about speed.
add_test(NAME scheduler_sim_none_check
         COMMAND $<TARGET_FILE:rkv> sim --model tiny --compute none --check --quiet
                 --admission optimistic --pool-blocks 512)
set_tests_properties(scheduler_sim_none_check PROPERTIES TIMEOUT 120 SKIP_RETURN_CODE 77
                     LABELS "unit;scheduler"
                     PASS_REGULAR_EXPRESSION "streaming +[0-9.]+ +[0-9.]+ +[0-9]+ +[0-9]+ +32/32 +0 ")

add_test(NAME scheduler_sim_cpu_swap_json
         COMMAND $<TARGET_FILE:rkv> sim --model tiny --compute cpu --requests 6 --gen-mean 300
                 --pool-blocks 192 --admission optimistic --preempt swap --check --quiet --json
                 --policy full,rkv,h2o --threads 1
                 --plot ${CMAKE_CURRENT_BINARY_DIR}/scheduler_sim_cpu_swap.svg)
set_tests_properties(scheduler_sim_cpu_swap_json PROPERTIES TIMEOUT 300 SKIP_RETURN_CODE 77
                     LABELS "unit;scheduler"
                     PASS_REGULAR_EXPRESSION "\"policy\": \"h2o\", \"complete\": true")

# --granularity on the CPU compute path (the executor's rkv_evict_seq) with --check every step;
# and on the emulated device (the evictor's batched launch) at layer.
add_test(NAME scheduler_sim_granularity
  COMMAND sh -c "out=$(\"$0\" sim --model tiny --compute cpu --requests 6 --gen-mean 300 --pool-blocks 192 --admission optimistic --preempt swap --check --quiet --json --policy rkv,h2o --threads 1 --granularity sequence); rc=$?; echo \"$out\"; [ $rc -eq 0 ] && echo \"$out\" | grep -q '\"granularity\": \"sequence\"' && echo \"$out\" | grep -q '\"policy\": \"h2o\", \"complete\": true' || exit 1; out=$(\"$0\" sim --model tiny --compute emu --requests 6 --gen-mean 300 --pool-blocks 192 --admission optimistic --preempt swap --check --quiet --json --policy rkv,h2o --threads 1 --granularity layer); rc=$?; echo \"$out\"; [ $rc -eq 0 ] && echo \"$out\" | grep -q '\"granularity\": \"layer\"' && echo \"$out\" | grep -q '\"policy\": \"rkv\", \"complete\": true'"
          $<TARGET_FILE:rkv>)
set_tests_properties(scheduler_sim_granularity PROPERTIES TIMEOUT 300 LABELS "unit;scheduler")

add_test(NAME scheduler_sim_bad_option COMMAND $<TARGET_FILE:rkv> sim --policy nope)
set_tests_properties(scheduler_sim_bad_option PROPERTIES TIMEOUT 30 WILL_FAIL TRUE
                     LABELS "unit;scheduler")

# The paper's serving-table arithmetic (docs/BENCHMARKS.md, "Serving simulator"): Llama-8B
# shape, 80 GiB pool, 16K generations, B = 1024 -> full KV sustains 39 sequences, R-KV 563.
# The first dozen steps admit everything; exact numbers, so any change to the admission
# arithmetic shows up here. Skipped at RKV_DEBUG 3, where the block manager walks its 10 M
# blocks after every operation.
if(RKV_DEBUG LESS 3)
  add_test(NAME scheduler_sim_paper_batch
           COMMAND $<TARGET_FILE:rkv> sim --model llama-8b --workload fixed --requests 600
                   --prompt-len 128 --gen-len 16384 --pool-gib 80 --budget 1024 --compute none
                   --gpu a100 --policy full,rkv --steps 12 --quiet --json)
  set_tests_properties(scheduler_sim_paper_batch PROPERTIES TIMEOUT 120 LABELS "unit;scheduler"
    PASS_REGULAR_EXPRESSION "\"policy\": \"full\"[^}]*\"max_batch\": 39,.*\"policy\": \"rkv\"[^}]*\"max_batch\": 563,")
endif()

# The embedding example (docs/EMBEDDING.md): a toy engine over the executor, public headers
# only, run to completion under every admission mode, swap and forks, with every check after
# every step. fork-optimistic with R-KV is the case where a compression of shared blocks must
# find its fresh blocks reserved.
rkv_add_test_exe(example_toy_engine SOURCES ${PROJECT_SOURCE_DIR}/docs/examples/toy_engine.c)
foreach(wl reserve optimistic swap fork fork-optimistic)
  foreach(pol rkv h2o streaming full)
    rkv_register_test(example_toy_engine_${wl}_${pol} COMMAND example_toy_engine ${wl} ${pol}
                      LABELS "unit;scheduler")
  endforeach()
endforeach()
rkv_register_test(example_toy_engine_fork-optimistic_snapkv
                  COMMAND example_toy_engine fork-optimistic snapkv LABELS "unit;scheduler")

# Results pinned across the executor refactor: the simulator's deterministic columns and the
# trained model's eval counts equal the values recorded with the engines that preceded it.
find_package(Python3 COMPONENTS Interpreter)
if(Python3_Interpreter_FOUND AND NOT RKV_SANITIZE)
  foreach(pin sim_tiny eval_trained)
    add_test(NAME integration_pinned_${pin}
             COMMAND ${Python3_EXECUTABLE} ${PROJECT_SOURCE_DIR}/tests/integration/pin_results.py
                     $<TARGET_FILE:rkv> ${PROJECT_SOURCE_DIR}/tests/integration/pinned/${pin}.json)
    set_tests_properties(integration_pinned_${pin} PROPERTIES TIMEOUT 600 LABELS "integration"
                         WORKING_DIRECTORY ${PROJECT_SOURCE_DIR})
  endforeach()
endif()

# `rkv bench step` still runs (a smoke run at a small shape; timings are not checked here).
add_test(NAME scheduler_bench_step_smoke
         COMMAND $<TARGET_FILE:rkv> bench step --layers 2 --kv-heads 2 --batch 8 --budget 32
                 --buffer 8 --block-size 4 --steps 16 --json)
set_tests_properties(scheduler_bench_step_smoke PROPERTIES TIMEOUT 60 LABELS "unit;scheduler"
                     PASS_REGULAR_EXPRESSION "\"bench\": \"step\".*\"total_ns\"")

# tools/bench/step_counts.sh (the deterministic per-step counts BENCHMARKS.md reports) still
# runs and prints its JSON; skipped without valgrind, and not built under sanitizers (their
# runtimes do not run under valgrind).
if(NOT RKV_SANITIZE)
add_test(NAME scheduler_bench_step_counts_smoke
         COMMAND ${PROJECT_SOURCE_DIR}/tools/bench/step_counts.sh --rkv $<TARGET_FILE:rkv>
                 --layers 2 --kv-heads 2 --batch 8 --budget 32 --buffer 8 --block-size 4
                 --plan-slots)
set_tests_properties(scheduler_bench_step_counts_smoke PROPERTIES TIMEOUT 120 SKIP_RETURN_CODE 77
                     LABELS "unit;scheduler"
                     PASS_REGULAR_EXPRESSION "\"bench\": \"step_counts\".*\"instructions\": [1-9]")
endif()

# tools/bench/prefix_pressure.py (BENCHMARKS.md, "Copies under memory pressure" and
# "Cache-aware admission") still runs and prints its table (and writes its plot): the tiny
# model at a pool that fills and at one that does not, where the prefix cache must hit (76%
# when added); the compare runs add cache-aware admission.
if(RKV_NUMPY_PYTHON)
add_test(NAME scheduler_bench_prefix_pressure_smoke
         COMMAND ${RKV_NUMPY_PYTHON} ${PROJECT_SOURCE_DIR}/tools/bench/prefix_pressure.py
                 $<TARGET_FILE:rkv> --model tiny --prefix-len 16-64 --pool-unit blocks
                 --pools 96,1024 --compare $<TARGET_FILE:rkv>
                 --compare-args "--cache-lookahead 16"
                 --svg ${CMAKE_CURRENT_BINARY_DIR}/prefix_pressure_smoke.svg)
set_tests_properties(scheduler_bench_prefix_pressure_smoke PROPERTIES TIMEOUT 180
                     LABELS "unit;scheduler"
                     PASS_REGULAR_EXPRESSION "\\| 96 blocks \\|.*\\| 1024 blocks \\| [0-9]+ \\| [0-9]+ \\| [1-9][0-9]*\\.[0-9]% \\|")
endif()

# rkv sim --json reports the block manager's prefix groups: a 64-block pool under the copy rule
# reclaims parked prompts (30 of 34 groups when added).
add_test(NAME scheduler_sim_prefix_groups_json
         COMMAND $<TARGET_FILE:rkv> sim --model tiny --policy rkv --admission optimistic
                 --prefixes 4 --prefix-len 16-64 --prefix-cache on --prefix-rule copy
                 --pool-blocks 64 --json --quiet)
set_tests_properties(scheduler_sim_prefix_groups_json PROPERTIES TIMEOUT 120
                     LABELS "unit;scheduler"
                     PASS_REGULAR_EXPRESSION "\"prefix_groups_inserted\": [1-9][0-9]*, \"prefix_groups_reclaimed\": [1-9][0-9]*, \"prefix_groups_invalidated\": [0-9]+")

# rkv sim --cache-lookahead: at a 64-block pool some admissions go ahead of an earlier request
# (cache-aware admission, docs/PREFIX-CACHING.md), and the JSON reports the queue waits.
add_test(NAME scheduler_sim_cache_lookahead_json
         COMMAND $<TARGET_FILE:rkv> sim --model tiny --policy rkv --admission optimistic
                 --prefixes 4 --prefix-len 16-64 --prefix-cache on --prefix-rule copy
                 --pool-blocks 64 --cache-lookahead 16 --check --json --quiet)
set_tests_properties(scheduler_sim_cache_lookahead_json PROPERTIES TIMEOUT 120
                     LABELS "unit;scheduler"
                     PASS_REGULAR_EXPRESSION "\"cache_lookahead\": 16,.*\"mean_wait_s\": [0-9.e+-]+, \"max_wait_s\": [0-9.e+-]+,.*\"prefix_admissions_ahead\": [1-9][0-9]*,")

# Issue 17, finding 4: with more requests than max_seqs some plans are empty but carry finished
# ids; the simulator hands every plan to the executor, so query-window slots are freed (this
# exited with "sequence 5 has no query window" when empty plans skipped the engine).
add_test(NAME scheduler_sim_empty_plans_free_windows
         COMMAND $<TARGET_FILE:rkv> sim --requests 8 --max-seqs 4 --policy rkv --quiet)
set_tests_properties(scheduler_sim_empty_plans_free_windows PROPERTIES TIMEOUT 120
                     LABELS "unit;scheduler" PASS_REGULAR_EXPRESSION "rkv +[0-9.]+ +[0-9.]+ +[0-9]+ +[0-9]+ +8/8")


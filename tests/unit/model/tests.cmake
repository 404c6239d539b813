# Test model (tools/model, tools/rkv/model_*.c in rkv_toolkit): script and tool tests.
#  model_test_forward   C forward pass vs the PyTorch reference (auto-registered from
#                       test_forward.c)
#  model_numpy_reference  numpy twin of the model + the Python task generator against the same
#                       committed reference (skips without a numpy interpreter)
#  model_torch_reference  PyTorch cache path (extend / keep) and the committed reference still
#                       regenerating identically (skips without torch)
#  model_train_toy      train.py end to end on a toy size, one vs two data-parallel processes
#  model_diagnose       tools/model/diagnose.py (teacher-forced errors by token class) on the
#                       smoke weights
#  model_eval_oracle, model_oracle_hindsight, model_eval_v2_table, model_eval_v2_stages_table,
#  model_eval_adder2_floor
#                       the version-2 model's oracles and tables (and the three-stage weights'
#                       tables kept for comparison), its full-cache floor (registered when
#                       adder2.safetensors exists)
#  model_eval_smoke     a small `rkv eval` run (scheduler batching): budgets respected, and
#                       with trained weights present the full-cache accuracy floor
#  model_eval_simple_loop  the same through the tool's own batching loop
#  model_eval_prefix_cache  `rkv eval --repeat 2`: the prefix cache on generates exactly what
#                       it generates off (full cache; R-KV under the same protection)
#  model_eval_overlap   `rkv eval --overlap on` generates exactly what sync mode does, every
#                       policy, prefix cache off and on; and on the emulated device what the
#                       CPU pool does
set(_model_dir ${PROJECT_SOURCE_DIR}/tests/unit/model)
# model_test_forward reaches the tool's model code through rkv_toolkit (every test links it).
set_tests_properties(model_test_forward PROPERTIES TIMEOUT 300) # ~80 s alone under ASan on 2 cores

if(RKV_NUMPY_PYTHON)
  add_test(NAME model_numpy_reference
           COMMAND ${RKV_NUMPY_PYTHON} ${_model_dir}/check_reference.py
                   --weights ${_model_dir}/data/smoke.safetensors
                   --ref ${_model_dir}/data/smoke_ref.safetensors)
  # Skips (77) by itself when that interpreter lacks torch.
  add_test(NAME model_torch_reference
           COMMAND ${RKV_NUMPY_PYTHON} ${_model_dir}/check_torch.py
                   --weights ${_model_dir}/data/smoke.safetensors
                   --ref ${_model_dir}/data/smoke_ref.safetensors)
  set_tests_properties(model_torch_reference PROPERTIES SKIP_RETURN_CODE 77 TIMEOUT 120
                       LABELS "unit;model")
  # The same two checks for the committed trained weights `rkv eval` serves.
  set(_adder ${PROJECT_SOURCE_DIR}/tools/model/weights/adder.safetensors)
  add_test(NAME model_numpy_reference_trained
           COMMAND ${RKV_NUMPY_PYTHON} ${_model_dir}/check_reference.py
                   --weights ${_adder} --ref ${_model_dir}/data/adder_ref.safetensors)
  add_test(NAME model_torch_reference_trained
           COMMAND ${RKV_NUMPY_PYTHON} ${_model_dir}/check_torch.py
                   --weights ${_adder} --ref ${_model_dir}/data/adder_ref.safetensors)
  set_tests_properties(model_numpy_reference_trained model_torch_reference_trained PROPERTIES
                       SKIP_RETURN_CODE 77 TIMEOUT 120 LABELS "unit;model")
  # rkv eval --lambda 1 selects exactly what SnapKV selects (plain python3 + the rkv tool).
  add_test(NAME model_eval_lambda
           COMMAND ${RKV_NUMPY_PYTHON} ${_model_dir}/check_lambda.py $<TARGET_FILE:rkv>
                   ${_model_dir}/data/smoke.safetensors)
  set_tests_properties(model_eval_lambda PROPERTIES TIMEOUT 300 LABELS "integration;model")
  # sanitizer builds (no BLAS, instrumented): the smoke model on its short problems
  if(RKV_SANITIZE)
    set(_small_args ${_model_dir}/data/smoke.safetensors --problems 6 --digits 1-3 --budget 24
        --block-size 4)
    set(_prefix_args ${_small_args} --floor 0)
  else()
    set(_small_args ${_adder})
    set(_prefix_args ${_adder})
  endif()
  add_test(NAME model_eval_prefix_cache
           COMMAND ${RKV_NUMPY_PYTHON} ${_model_dir}/check_prefix.py $<TARGET_FILE:rkv>
                   ${_prefix_args})
  set_tests_properties(model_eval_prefix_cache PROPERTIES TIMEOUT 300 LABELS "integration;model")
  # overlap scheduling generates exactly what sync mode generates, every policy (same args)
  add_test(NAME model_eval_overlap
           COMMAND ${RKV_NUMPY_PYTHON} ${_model_dir}/check_overlap.py $<TARGET_FILE:rkv>
                   ${_small_args})
  set_tests_properties(model_eval_overlap PROPERTIES TIMEOUT 300 LABELS "integration;model")
  # diagnose.py: the smoke weights decode their 1-3 digit problems exactly, so teacher forcing
  # gets every token of all 12 right (skips without torch).
  add_test(NAME model_diagnose
           COMMAND ${RKV_NUMPY_PYTHON} ${PROJECT_SOURCE_DIR}/tools/model/diagnose.py
                   ${_model_dir}/data/smoke.safetensors --version 1 --digits 1-3 --per-digit 4)
  set_tests_properties(model_diagnose PROPERTIES SKIP_RETURN_CODE 77 TIMEOUT 120
                       PASS_REGULAR_EXPRESSION "teacher-forced exact 12/12" LABELS "unit;model")
  # train.py on a toy configuration, 1 vs 2 data-parallel processes (skips without torch).
  add_test(NAME model_train_toy COMMAND ${RKV_NUMPY_PYTHON} ${_model_dir}/check_train.py)
  set_tests_properties(model_train_toy PROPERTIES SKIP_RETURN_CODE 77 TIMEOUT 300
                       LABELS "unit;model")
else()
  add_test(NAME model_numpy_reference
           COMMAND sh -c "echo 'SKIP: no python3 with numpy (RKV_NUMPY_PYTHON)'; echo '0 passed, 0 failed, 1 skipped'; exit 77")
endif()
set_tests_properties(model_numpy_reference PROPERTIES SKIP_RETURN_CODE 77 TIMEOUT 120
                     LABELS "unit;model")

# With the trained weights the full cache must reach 90% over the trained 6-20 digits; until
# they exist the smoke weights (trained 3 minutes on 1-3 digits, 99% there) must reach 90% on
# their own range.
set(_model_trained ${PROJECT_SOURCE_DIR}/tools/model/weights/adder.safetensors)
if(EXISTS ${_model_trained})
  set(_eval_model ${_model_trained})
  set(_eval_digits 6-20)
else()
  set(_eval_model ${_model_dir}/data/smoke.safetensors)
  set(_eval_digits 1-3)
endif()
set(_eval_floor 0.9)
# Sanitizer builds run instrumented without BLAS (at -O0 ~50x slower; the presets now build
# them at -O1): there the small smoke model on its own range exercises the same code paths (6
# trained-model problems took ~2 min at -O0).
if(RKV_SANITIZE)
  set(_eval_model ${_model_dir}/data/smoke.safetensors)
  set(_eval_digits 1-3)
  set(_eval_problems 20)
  set(_eval_floor 0) # too few problems for an accuracy floor
else()
  set(_eval_problems 50)
endif()
add_test(NAME model_eval_smoke
         COMMAND rkv eval --model ${_eval_model} --digits ${_eval_digits} --problems ${_eval_problems}
                 --policies full,rkv,snapkv,streaming,h2o --budgets 32,64 --buffer 16 --batch 16
                 --check --require-bounds --min-full-accuracy ${_eval_floor})
set_tests_properties(model_eval_smoke PROPERTIES SKIP_RETURN_CODE 77 TIMEOUT 300
                     LABELS "integration;model")
add_test(NAME model_eval_simple_loop
         COMMAND rkv eval --model ${_model_dir}/data/smoke.safetensors --problems 8
                 --policies full,rkv,h2o --budgets 32 --buffer 16 --batch 4 --simple-loop --check
                 --require-bounds)
set_tests_properties(model_eval_simple_loop PROPERTIES SKIP_RETURN_CODE 77 TIMEOUT 120
                     LABELS "integration;model")

# Selection granularity in the scheduler loop (the executor runs rkv_evict_seq): R-KV and H2O
# at granularity layer and sequence must keep every stream within its bounds
# (--require-bounds) with --check on every step; kvhead runs with the prefix cache on, so the
# prompt's full blocks are protected (the bound then counts the protected prefix on top of the
# budget). The JSON reports the unit. A coarser unit with --simple-loop or on a device is a
# usage error (2).
if(RKV_SANITIZE)
  set(_gran_problems 6)
else()
  set(_gran_problems 16)
endif()
foreach(_gran layer sequence kvhead)
  set(_gran_extra --require-bounds)
  if(_gran STREQUAL "kvhead")
    list(APPEND _gran_extra --prefix-cache on)
  endif()
  # a pass regex alone would ignore the exit status (3 when a bound breaks): check both
  add_test(NAME model_eval_granularity_${_gran}
           COMMAND sh -c "out=$(\"$@\"); rc=$?; echo \"$out\"; [ $rc -eq 0 ] && echo \"$out\" | grep -q '\"granularity\": \"${_gran}\", \"accuracy\"'"
                   sh $<TARGET_FILE:rkv> eval --model ${_eval_model} --digits ${_eval_digits}
                   --problems ${_gran_problems} --policies rkv,h2o --budgets 32,64 --buffer 16
                   --batch 8 --granularity ${_gran} ${_gran_extra} --check --json)
  set_tests_properties(model_eval_granularity_${_gran} PROPERTIES SKIP_RETURN_CODE 77 TIMEOUT 300
                       LABELS "integration;model")
endforeach()
add_test(NAME model_eval_granularity_usage
  COMMAND sh -c "\"$0\" eval --model \"$1\" --problems 2 --granularity kvhead --simple-loop 2>&1; [ $? -eq 2 ] || exit 1; \"$0\" eval --model \"$1\" --problems 2 --granularity head 2>&1; [ $? -eq 2 ]"
          $<TARGET_FILE:rkv> ${_model_dir}/data/smoke.safetensors)
set_tests_properties(model_eval_granularity_usage PROPERTIES TIMEOUT 60 LABELS "unit;model"
                     PASS_REGULAR_EXPRESSION "needs the scheduler loop")
# The device path at a coarser unit (the evictor's batched launch aggregating each group's
# scores; its host twin on the emulated device) generates exactly what the CPU pool does.
add_test(NAME model_eval_granularity_emu
  COMMAND sh -c "set -e; for g in layer kvhead sequence; do for b in cpu emu; do \"$0\" eval --model \"$1\" --digits 1-3 --problems 40 --policies rkv,h2o --budgets 24,32 --buffer 8 --block-size 16 --granularity $g --backend $b --generations \"$2/granularity_emu_$b.jsonl\" > /dev/null; done; cmp \"$2/granularity_emu_cpu.jsonl\" \"$2/granularity_emu_emu.jsonl\"; echo \"$g: cpu and emu generations equal\"; done"
          $<TARGET_FILE:rkv> ${_model_dir}/data/smoke.safetensors ${CMAKE_CURRENT_BINARY_DIR})
set_tests_properties(model_eval_granularity_emu PROPERTIES TIMEOUT 300 LABELS "integration;model"
                     PASS_REGULAR_EXPRESSION "sequence: cpu and emu generations equal")

# model_eval_cuda (label gpu): `rkv eval --backend cuda` on the smoke weights, each run repeated
# on the CPU backend (--compare-cpu: equal accuracies or exit 3). Skips (77) without CUDA in the
# build or without a usable GPU; under RKV_REQUIRE_GPU_TESTS (gpu preset) a skip fails. The
# runner on a device steps through the library's executor (its CUDA path).
add_test(NAME model_eval_cuda
         COMMAND rkv eval --backend cuda --compare-cpu --model ${_model_dir}/data/smoke.safetensors
                 --digits 1-3 --problems 20 --policies full,rkv,streaming --budgets 32 --buffer 8
                 --check --require-bounds --min-full-accuracy 0.9)
set_tests_properties(model_eval_cuda PROPERTIES TIMEOUT 300 LABELS "gpu;model")
# The same at a coarser unit: the evictor's batched launch aggregates each group's scores
# (group_kernel) between scoring and selection. Not H2O: its masses are summed on the GPU with
# float atomics in no fixed order, so an exact accuracy match with the CPU is not promised
# (the emulated device runs H2O at every unit: model_eval_granularity_emu).
add_test(NAME model_eval_cuda_granularity
         COMMAND rkv eval --backend cuda --compare-cpu --model ${_model_dir}/data/smoke.safetensors
                 --digits 1-3 --problems 20 --policies rkv,snapkv --budgets 32 --buffer 8
                 --granularity sequence --check --require-bounds)
set_tests_properties(model_eval_cuda_granularity PROPERTIES TIMEOUT 300 LABELS "gpu;model")
if(NOT RKV_REQUIRE_GPU_TESTS)
  set_tests_properties(model_eval_cuda PROPERTIES SKIP_RETURN_CODE 77)
  set_tests_properties(model_eval_cuda_granularity PROPERTIES SKIP_RETURN_CODE 77)
endif()

# Budgets as a share of each problem's length (--budgets N%): a budget per request through
# rkv_sched_request.evict, each request's stream held to its own bound (--require-bounds);
# the JSON names the share. With --simple-loop it is a usage error (2).
add_test(NAME model_eval_budget_share
         COMMAND sh -c "out=$(\"$@\"); rc=$?; echo \"$out\"; [ $rc -eq 0 ] && echo \"$out\" | grep -q '\"budget_pct\": 40,'"
                 sh $<TARGET_FILE:rkv> eval --model ${_model_dir}/data/smoke.safetensors
                 --digits 1-3 --problems 12 --policies full,rkv,h2o,streaming --budgets 40%,60%
                 --buffer 8 --batch 4 --check --require-bounds --json)
set_tests_properties(model_eval_budget_share PROPERTIES TIMEOUT 120 LABELS "integration;model")
add_test(NAME model_eval_budget_share_usage
  COMMAND sh -c "\"$0\" eval --model \"$1\" --problems 2 --budgets 30% --simple-loop 2>&1; [ $? -eq 2 ] || exit 1; \"$0\" eval --model \"$1\" --problems 2 --budgets 0% 2>&1; [ $? -eq 2 ] || exit 1; \"$0\" eval --model \"$1\" --problems 2 --policies oracle 2>&1; [ $? -eq 2 ]"
          $<TARGET_FILE:rkv> ${_model_dir}/data/smoke.safetensors)
set_tests_properties(model_eval_budget_share_usage PROPERTIES TIMEOUT 60 LABELS "unit;model"
                     PASS_REGULAR_EXPRESSION "oracle needs a model of task version 2")

# The structural oracle on the version-2 model: every compression is checked against the
# oracle's own mirror of the kept positions (a divergence exits 1) and streams stay within
# their per-request bounds (check_oracle.py). No accuracy floor: keeping only what the
# structure says is read is not enough for this model (docs/MODEL.md, "The oracle").
# The hindsight oracle (tools/model/oracle_hindsight.py) has the floor: at 60% of the
# sequence it keeps what the rest of the trace attends to and must still answer.
set(_adder2 ${PROJECT_SOURCE_DIR}/tools/model/weights/adder2.safetensors)
if(EXISTS ${_adder2} AND RKV_NUMPY_PYTHON)
  if(RKV_SANITIZE)
    set(_oracle_args --problems 2 --digits 6-6 --floor 0)
  else()
    set(_oracle_args --problems 8 --digits 6-8 --floor 0)
  endif()
  add_test(NAME model_eval_oracle
           COMMAND ${RKV_NUMPY_PYTHON} ${_model_dir}/check_oracle.py $<TARGET_FILE:rkv> ${_adder2}
                   ${_oracle_args})
  set_tests_properties(model_eval_oracle PROPERTIES TIMEOUT 600 LABELS "integration;model")
  # the v2 tables of docs/BENCHMARKS.md from the committed runs (plain python3); the
  # three-stage weights' runs (docs/bench/adder2-stages) are kept for comparison
  set(_v2_table_cmd "\"$0\" \"$1\" --policies \"$2\"/eval-adder2.json --granularity \"$2\"/eval-adder2-gran-*.json --lambda \"$2\"/eval-adder2-lambda-*.json --hindsight \"$2\"/oracle-hindsight-adder2-*.json")
  set(_bench ${PROJECT_SOURCE_DIR}/docs/bench)
  add_test(NAME model_eval_v2_table
           COMMAND sh -c "${_v2_table_cmd}"
                   ${RKV_NUMPY_PYTHON} ${PROJECT_SOURCE_DIR}/tools/bench/eval_v2_table.py ${_bench})
  set_tests_properties(model_eval_v2_table PROPERTIES TIMEOUT 60 LABELS "unit;model"
                       PASS_REGULAR_EXPRESSION "hindsight oracle ran on all 500.*\\| R-KV \\| 0\\.0 \\| 0\\.0 \\| 0\\.0 \\| 8\\.2 \\| 37\\.0 \\| 65\\.0 \\|.*criterion")
  add_test(NAME model_eval_v2_stages_table
           COMMAND sh -c "${_v2_table_cmd}"
                   ${RKV_NUMPY_PYTHON} ${PROJECT_SOURCE_DIR}/tools/bench/eval_v2_table.py
                   ${_bench}/adder2-stages)
  set_tests_properties(model_eval_v2_stages_table PROPERTIES TIMEOUT 60 LABELS "unit;model"
                       PASS_REGULAR_EXPRESSION "hindsight oracle ran on all 500.*\\| R-KV \\| 0\\.0 \\| 0\\.0 \\| 1\\.0 \\| 27\\.4 \\| 74\\.2 \\| 92\\.8 \\|.*criterion")
  # The version-2 weights (one train.py command of <= 40 minutes): a full-cache floor on 24
  # problems (23/24 when committed).
  add_test(NAME model_eval_adder2_floor
           COMMAND rkv eval --model ${_adder2} --problems 24 --digits 6-8 --policies full
                   --threads 1 --min-full-accuracy 0.9)
  set_tests_properties(model_eval_adder2_floor PROPERTIES TIMEOUT 300 LABELS "integration;model")
  add_test(NAME model_oracle_hindsight
           COMMAND ${RKV_NUMPY_PYTHON} ${PROJECT_SOURCE_DIR}/tools/model/oracle_hindsight.py
                   ${_adder2} --problems 8 --digits 6-7 --budgets 60% --batch 8
                   --min-accuracy 0.75)
  set_tests_properties(model_oracle_hindsight PROPERTIES SKIP_RETURN_CODE 77 TIMEOUT 600
                       LABELS "integration;model")
endif()
# The oracle's mechanics without trained version-2 weights: the smoke weights relabelled as
# version 2 (their generations are not version-2 traces; every compression's mirror check,
# the per-request bounds and the bookkeeping still run).
if(RKV_NUMPY_PYTHON)
  add_test(NAME model_eval_oracle_mechanics
           COMMAND ${RKV_NUMPY_PYTHON} ${_model_dir}/check_oracle.py $<TARGET_FILE:rkv>
                   ${_model_dir}/data/smoke.safetensors --relabel --problems 8 --digits 1-3
                   --share 10 --floor 0)
  set_tests_properties(model_eval_oracle_mechanics PROPERTIES TIMEOUT 300
                       LABELS "integration;model")
endif()

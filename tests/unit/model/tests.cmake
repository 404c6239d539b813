# Test model (tools/model, tools/rkv/model_*.c): extra wiring and script / tool tests.
#  model_test_forward   C forward pass vs the PyTorch reference (auto-registered from
#                       test_forward.c; here it gets the tool's model sources)
#  model_numpy_reference  numpy twin of the model + the Python task generator against the same
#                       committed reference (skips without a numpy interpreter)
#  model_eval_smoke     a small `rkv eval` run (scheduler batching): budgets respected, and
#                       with trained weights present the full-cache accuracy floor
#  model_eval_simple_loop  the same through the tool's own batching loop
set(_model_dir ${PROJECT_SOURCE_DIR}/tests/unit/model)
set(_model_srcs ${PROJECT_SOURCE_DIR}/tools/rkv/model_st.c
    ${PROJECT_SOURCE_DIR}/tools/rkv/model_forward.c ${PROJECT_SOURCE_DIR}/tools/rkv/model_task.c)
target_sources(model_test_forward PRIVATE ${_model_srcs})
target_include_directories(model_test_forward PRIVATE ${PROJECT_SOURCE_DIR}/tools/rkv)
if(RKV_HAVE_BLAS)
  target_link_libraries(model_test_forward PRIVATE rkv_blas_dep)
  target_compile_definitions(model_test_forward PRIVATE RKV_HAVE_BLAS=1)
endif()
set_tests_properties(model_test_forward PROPERTIES TIMEOUT 120)

if(RKV_NUMPY_PYTHON)
  add_test(NAME model_numpy_reference
           COMMAND ${RKV_NUMPY_PYTHON} ${_model_dir}/check_reference.py
                   --weights ${_model_dir}/data/smoke.safetensors
                   --ref ${_model_dir}/data/smoke_ref.safetensors)
else()
  add_test(NAME model_numpy_reference
           COMMAND sh -c "echo 'SKIP: no python3 with numpy (RKV_NUMPY_PYTHON)'; echo '0 passed, 0 failed, 1 skipped'; exit 77")
endif()
set_tests_properties(model_numpy_reference PROPERTIES SKIP_RETURN_CODE 77 TIMEOUT 120
                     LABELS "unit;model")

# The trained weights decide what the eval test can promise: with them the full cache must
# reach the accuracy floor; the smoke weights only exercise the pipeline and the bounds.
set(_model_trained ${PROJECT_SOURCE_DIR}/tools/model/weights/adder.safetensors)
if(EXISTS ${_model_trained})
  set(_eval_model ${_model_trained})
  set(_eval_floor 0.9)
else()
  set(_eval_model ${_model_dir}/data/smoke.safetensors)
  set(_eval_floor 0)
endif()
add_test(NAME model_eval_smoke
         COMMAND rkv eval --model ${_eval_model} --problems 50 --policies full,rkv,snapkv,streaming,h2o
                 --budgets 32,64 --buffer 16 --batch 16 --check --require-bounds
                 --min-full-accuracy ${_eval_floor})
set_tests_properties(model_eval_smoke PROPERTIES SKIP_RETURN_CODE 77 TIMEOUT 300
                     LABELS "integration;model")
add_test(NAME model_eval_simple_loop
         COMMAND rkv eval --model ${_model_dir}/data/smoke.safetensors --problems 16
                 --policies full,rkv,h2o --budgets 32 --buffer 16 --batch 8 --simple-loop --check
                 --require-bounds)
set_tests_properties(model_eval_simple_loop PROPERTIES SKIP_RETURN_CODE 77 TIMEOUT 120
                     LABELS "integration;model")

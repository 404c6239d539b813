# The executor's device path through the tools (issue 12): `rkv sim --compute cuda|emu` and
# `rkv eval --backend cuda|emu` are the library's executor over a device pool; the tools only
# make Q/K/V and copy them through <rkv/buffer.h>.
#  sim_cuda_no_gpu            without a usable GPU (or without CUDA in the build) --compute cuda
#                             refuses with one clear line and exit 1; skips where a GPU is usable
#  sim_cuda_gpu_matches_cpu   (label gpu) the GPU engine's scheduling results equal the cpu
#                             engine's (recompute and swap preemption, every policy)
#  sim_emu_matches_cpu        the same comparison for --compute emu (the cuda engine's host logic
#                             on the emulated device): runs without a GPU
#  model_eval_emu             `rkv eval --backend emu --compare-cpu`: the device runner's host
#                             logic (padding, staging, the executor's device path) on the
#                             emulated device, every run's accuracy and every problem's
#                             generated text equal to the CPU backend's
set(_simdev ${CMAKE_CURRENT_LIST_DIR}/sim_device_check.sh)
add_test(NAME sim_cuda_no_gpu COMMAND sh ${_simdev} $<TARGET_FILE:rkv> nogpu)
set_tests_properties(sim_cuda_no_gpu PROPERTIES SKIP_RETURN_CODE 77 TIMEOUT 60
                     LABELS "integration;tool")
rkv_register_test(sim_cuda_gpu_matches_cpu COMMAND sh ${_simdev} $<TARGET_FILE:rkv> match
                  LABELS "gpu;integration;tool")
set_tests_properties(sim_cuda_gpu_matches_cpu PROPERTIES TIMEOUT 300)
rkv_register_test(sim_emu_matches_cpu COMMAND sh ${_simdev} $<TARGET_FILE:rkv> emu
                  LABELS "integration;tool")
# instrumented (sanitizer builds, -O1) the two engines take over a minute (~7 min at -O0)
if(RKV_SANITIZE)
  set_tests_properties(sim_emu_matches_cpu PROPERTIES TIMEOUT 600)
else()
  set_tests_properties(sim_emu_matches_cpu PROPERTIES TIMEOUT 300)
endif()
add_test(NAME model_eval_emu
         COMMAND rkv eval --backend emu --compare-cpu
                 --model ${PROJECT_SOURCE_DIR}/tests/unit/model/data/smoke.safetensors --digits 1-3
                 --problems 12 --policies full,rkv,snapkv,streaming,h2o --budgets 32 --buffer 8
                 --check --require-bounds)
set_tests_properties(model_eval_emu PROPERTIES TIMEOUT 300 LABELS "integration;model")

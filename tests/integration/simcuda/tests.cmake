# `rkv sim --compute cuda` (tools/rkv/sim_engine_cuda.c), both through sim_cuda_check.sh:
#  simcuda_sim_no_gpu           without a usable GPU (or without CUDA in the build) the engine
#                               refuses with one clear line and exit 1; skips where a GPU is usable
#  simcuda_sim_gpu_matches_cpu  (label gpu) the GPU engine's scheduling results equal the cpu
#                               engine's (recompute and swap preemption, every policy); skips
#                               without a GPU
add_test(NAME simcuda_sim_no_gpu
         COMMAND sh ${CMAKE_CURRENT_LIST_DIR}/sim_cuda_check.sh $<TARGET_FILE:rkv> nogpu)
set_tests_properties(simcuda_sim_no_gpu PROPERTIES SKIP_RETURN_CODE 77 TIMEOUT 60
                     LABELS "integration;tool")
rkv_register_test(simcuda_sim_gpu_matches_cpu
  COMMAND sh ${CMAKE_CURRENT_LIST_DIR}/sim_cuda_check.sh $<TARGET_FILE:rkv> match
  LABELS "gpu;integration;tool")
set_tests_properties(simcuda_sim_gpu_matches_cpu PROPERTIES TIMEOUT 300)

#  simcuda_sim_cuda_emu         the cuda engine's host logic without a GPU: compiled against a
#                               stand-in cuda_runtime.h with the GPU-only entries emulated on a
#                               CPU pool, run in lockstep with the cpu engine (identical plans,
#                               outputs and cached K/V bytes)
set(_simcuda_emu ${CMAKE_CURRENT_LIST_DIR}/emu)
rkv_add_test_exe(simcuda_sim_cuda_emu
  SOURCES ${CMAKE_CURRENT_LIST_DIR}/test_sim_cuda_emu.c ${_simcuda_emu}/emu_shim.c
          ${_simcuda_emu}/emu_sim_engine.c ${_simcuda_emu}/emu_sim_engine_cuda.c
          ${PROJECT_SOURCE_DIR}/tools/rkv/sim_workload.c ${PROJECT_SOURCE_DIR}/tools/rkv/tool_util.c)
target_include_directories(simcuda_sim_cuda_emu BEFORE PRIVATE ${_simcuda_emu}
  ${PROJECT_SOURCE_DIR}/tools/rkv ${PROJECT_BINARY_DIR}/tools)
rkv_register_test(simcuda_sim_cuda_emu LABELS "integration;tool")
set_tests_properties(simcuda_sim_cuda_emu PROPERTIES TIMEOUT 300) # ~120 s under ASan on a loaded 2-core machine

#  model_eval_cuda_emu          `rkv eval --backend cuda`'s host logic without a GPU
#                               (tools/rkv/model_cuda.c, model_forward.c, cmd_eval.c against the
#                               same stand-in runtime and shim): its --json equals the CPU
#                               backend's apart from "backend" and timings, on the smoke weights
#                               (both batching loops, f32 and bf16, blocks 16 and 32) and the
#                               trained weights, with no copy-ordering hazard. Sanitizer builds
#                               (unoptimised, no BLAS) run fewer smoke problems and skip the
#                               trained weights.
if(RKV_SANITIZE)
  set(_eval_emu_args 12 0)
else()
  set(_eval_emu_args 30 10)
endif()
rkv_add_test_exe(model_eval_cuda_emu
  SOURCES ${CMAKE_CURRENT_LIST_DIR}/test_model_eval_emu.c ${_simcuda_emu}/emu_shim.c
          ${_simcuda_emu}/emu_cmd_eval.c ${_simcuda_emu}/emu_model_forward.c
          ${_simcuda_emu}/emu_model_cuda.c ${PROJECT_SOURCE_DIR}/tools/rkv/model_st.c
          ${PROJECT_SOURCE_DIR}/tools/rkv/model_task.c ${PROJECT_SOURCE_DIR}/tools/rkv/tool_util.c)
target_include_directories(model_eval_cuda_emu BEFORE PRIVATE ${_simcuda_emu}
  ${PROJECT_SOURCE_DIR}/tools/rkv ${PROJECT_BINARY_DIR}/tools)
if(RKV_HAVE_BLAS)
  target_link_libraries(model_eval_cuda_emu PRIVATE rkv_blas_dep)
  target_compile_definitions(model_eval_cuda_emu PRIVATE RKV_HAVE_BLAS=1)
endif()
rkv_register_test(model_eval_cuda_emu COMMAND model_eval_cuda_emu ${_eval_emu_args}
  LABELS "integration;model")
set_tests_properties(model_eval_cuda_emu PROPERTIES TIMEOUT 300) # ~50 s alone under ASan on 2 cores

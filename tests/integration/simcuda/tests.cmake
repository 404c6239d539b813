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
set_tests_properties(simcuda_sim_cuda_emu PROPERTIES TIMEOUT 120)

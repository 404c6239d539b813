# tools/bench/cuda_gpu_check.sh (docs/GPU-CHECK.md), run without a GPU:
#  gpu_check_dry       --dry-run on this build tree (no configure, no build, CUDA devices
#                      hidden): every stage recorded, placeholder rows, the CPU stand-ins
#                      parsed, exit 0
#  gpu_check_mock      the GPU path against stand-ins for rkv, the GPU tests, nvidia-smi,
#                      compute-sanitizer and python3 (mock/): parsers, derived numbers, exit 0
#  gpu_check_mockfail  a cuda/cpu accuracy mismatch, a failing GPU test and a racecheck
#                      hazard: exit 1, and the benchmark stages after them still run
find_program(RKV_BASH_PROGRAM bash)
find_program(RKV_TIMEOUT_PROGRAM timeout)
if(RKV_BASH_PROGRAM AND RKV_TIMEOUT_PROGRAM)
  foreach(mode dry mock mockfail)
    add_test(NAME gpu_check_${mode}
             COMMAND sh ${CMAKE_CURRENT_LIST_DIR}/check_gpu_check.sh ${mode}
                     ${PROJECT_SOURCE_DIR}/tools/bench/cuda_gpu_check.sh ${PROJECT_BINARY_DIR}
                     ${PROJECT_BINARY_DIR}/gpu_check_work)
    set_tests_properties(gpu_check_${mode} PROPERTIES TIMEOUT 120 LABELS "integration;tool")
  endforeach()
endif()

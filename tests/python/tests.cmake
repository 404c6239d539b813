# Python bindings (tools/python/librkv, docs/PYTHON.md): the pytest files of tools/python/tests,
# one ctest test each (python_<name> for test_<name>.py), run by run_pytest.sh with the first
# python3 that imports numpy and pytest (/usr/bin/python3 first; exit 77 without one) against
# this build's librkv.so (RKV_LIBRARY) and the package source (PYTHONPATH):
#  python_blockmgr    block manager round trip (append, fork + copy-on-write, compact, export;
#                     truncate and the fresh-block bounds of a cut)
#  python_pool        zero-copy pool views: written through numpy, read by the library
#                     (read_blocks, copies, moves, paged attention) and the reverse
#  python_plan_views  plan arrays as numpy views: slots equal the block manager's, read-only,
#                     stale after the next step
#  python_toy_engine  docs/examples/toy_engine.c in Python: reserve, optimistic, swap, fork
#                     workloads to completion with every check after every step; results
#                     equal the C example's
#  python_errors      RkvError with status and the library's message; argument checks
#  python_evict       dense selection against tests/unit/evict/ref_rkv.py
#  python_abi         ctypes mirrors vs the headers (cc prints sizeof/offsetof/*_INIT values)
#  python_sched_prefix  prefix caching through the scheduler: shared system prompts, and
#                     cache-aware admission (cache_lookahead) admitting cached prompts first
#  python_install     `cmake --install` into a fresh prefix, then `import librkv` from there;
#                     `pip install tools/python` into a venv (offline)
#  python_torch       DLPack / torch views (skipped without PyTorch)
#  python_device      the executor on the emulated device with DeviceArray I/O, in lockstep
#                     with a CPU pool: equal plans, outputs and attention at every layer
#  python_device_cuda the same on a CUDA pool, with DeviceArrays and with torch CUDA tensors
#                     (label gpu too; skipped without a GPU)
#  python_model_client_cuda  serve.py with a CUDA pool and the model on the GPU against
#                     rkv eval --backend cuda (label gpu too; skipped without a GPU)
#  python_model_client  tools/model/serve.py (the trained model in PyTorch, librkv holding
#                     the KV cache through the binding) generates exactly what `rkv eval`
#                     does: 100 problems, full and R-KV B = 192 (skipped without PyTorch)
# Sanitizer builds: the instrumented librkv.so runs inside python with the ASan runtime
# preloaded (leak detection off: the interpreter keeps its allocations).
set(_py_dir ${PROJECT_SOURCE_DIR}/tools/python)
set(_py_env RKV_LIBRARY=$<TARGET_FILE:rkv_shared> RKV_BUILD_DIR=${PROJECT_BINARY_DIR}
    PYTHONPATH=${_py_dir} PYTHONDONTWRITEBYTECODE=1 CMAKE=${CMAKE_COMMAND}
    CC=${CMAKE_C_COMPILER})
set(_py_skip "")
if(RKV_SANITIZE)
  execute_process(COMMAND ${CMAKE_C_COMPILER} -print-file-name=libclang_rt.asan-x86_64.so
                  OUTPUT_VARIABLE _py_asan OUTPUT_STRIP_TRAILING_WHITESPACE ERROR_QUIET)
  if(_py_asan AND IS_ABSOLUTE "${_py_asan}" AND EXISTS "${_py_asan}")
    # the model client's 100 problems take minutes instrumented (no BLAS, -O1); 4 exercise the
    # same paths
    list(APPEND _py_env LD_PRELOAD=${_py_asan} ASAN_OPTIONS=detect_leaks=0
         UBSAN_OPTIONS=print_stacktrace=1:halt_on_error=1 RKV_CLIENT_PROBLEMS=4)
  else()
    set(_py_skip "no ASan runtime to preload into python for this sanitizer build")
  endif()
endif()
file(GLOB _py_tests CONFIGURE_DEPENDS ${_py_dir}/tests/test_*.py)
foreach(f ${_py_tests})
  get_filename_component(n ${f} NAME_WE)
  string(REGEX REPLACE "^test_" "python_" n ${n})
  if(_py_skip)
    add_test(NAME ${n} COMMAND sh -c "echo 'SKIP: ${_py_skip}'; exit 77")
  else()
    add_test(NAME ${n} COMMAND sh ${CMAKE_CURRENT_LIST_DIR}/run_pytest.sh ${f}
             WORKING_DIRECTORY ${PROJECT_SOURCE_DIR})
    set_tests_properties(${n} PROPERTIES ENVIRONMENT "${_py_env}")
  endif()
  # test_*_cuda.py also runs with the GPU tests (ctest -L gpu)
  set(_labels python)
  if(n MATCHES "_cuda$")
    set(_labels "python;gpu")
  endif()
  set_tests_properties(${n} PROPERTIES SKIP_RETURN_CODE 77 TIMEOUT 300 LABELS "${_labels}")
endforeach()

# ctest helper (cmake -P): runs `rkv replay SCRIPT` and compares its stdout byte for byte with
# EXPECTED; also requires exit status 0. Prints the harness's closing line either way.
# usage: cmake -DRKV=<rkv> -DSCRIPT=<file.txt> -DEXPECTED=<file.json> -P replay_compare.cmake
execute_process(COMMAND ${RKV} replay ${SCRIPT} OUTPUT_VARIABLE out ERROR_VARIABLE err
                RESULT_VARIABLE rc)
file(READ ${EXPECTED} want)
if(NOT rc EQUAL 0)
  message("rkv replay ${SCRIPT} exited with ${rc}\n${err}")
  message("0 passed, 1 failed")
  message(FATAL_ERROR "replay failed")
endif()
if(NOT out STREQUAL want)
  message("stdout of rkv replay ${SCRIPT} differs from ${EXPECTED}\n--- got:\n${out}--- expected:\n${want}")
  message("0 passed, 1 failed")
  message(FATAL_ERROR "replay output mismatch")
endif()
message("1 passed, 0 failed")

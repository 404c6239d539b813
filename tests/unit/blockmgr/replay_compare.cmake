# ctest helper (cmake -P): runs `rkv replay SCRIPT` and compares its stdout byte for byte with
# EXPECTED; also requires the exit status written in <SCRIPT without .txt>.rc when that file
# exists, else 0. Prints the harness's closing line either way.
# usage: cmake -DRKV=<rkv> -DSCRIPT=<file.txt> -DEXPECTED=<file.json> -P replay_compare.cmake
execute_process(COMMAND ${RKV} replay ${SCRIPT} OUTPUT_VARIABLE out ERROR_VARIABLE err
                RESULT_VARIABLE rc)
file(READ ${EXPECTED} want)
set(want_rc 0)
string(REGEX REPLACE "\\.txt$" ".rc" rc_file "${SCRIPT}")
if(EXISTS "${rc_file}")
  file(STRINGS "${rc_file}" want_rc LIMIT_COUNT 1)
endif()
if(NOT rc EQUAL want_rc)
  message("rkv replay ${SCRIPT} exited with ${rc}, expected ${want_rc}\n${err}")
  message("0 passed, 1 failed")
  message(FATAL_ERROR "replay failed")
endif()
if(NOT out STREQUAL want)
  message("stdout of rkv replay ${SCRIPT} differs from ${EXPECTED}\n--- got:\n${out}--- expected:\n${want}")
  message("0 passed, 1 failed")
  message(FATAL_ERROR "replay output mismatch")
endif()
message("1 passed, 0 failed")

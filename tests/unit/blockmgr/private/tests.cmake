# blockmgr_test_check (tests/unit/blockmgr/test_check.c) corrupts the manager's private state on
# purpose, so it needs the module's private headers. Kept in its own tests.cmake so it does not
# collide with tests/unit/blockmgr/tests.cmake (the tool tests).
if(TARGET blockmgr_test_check)
  target_include_directories(blockmgr_test_check PRIVATE ${PROJECT_SOURCE_DIR}/blockmgr/src
                             ${PROJECT_SOURCE_DIR}/runtime/internal)
endif()

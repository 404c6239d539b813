# Allocation-failure tests (tests/CMakeLists.txt registers each test_*.c here as
# faults_<name>): the sweep fails every allocation of a serving workload in turn and holds
# every failed call to "nothing changed", then the run to the fault-free results. Six scenarios
# (docs/TESTING.md); CI budget: about 10 s in the ci preset, under a minute under ASan.
if(TARGET faults_test_fault_sweep)
  set_tests_properties(faults_test_fault_sweep PROPERTIES TIMEOUT 300)
endif()

# faults_test_lost_plan_check forges the scheduler's private state (it compiles
# scheduler/src/sched.c itself), so it needs the module's private headers.
if(TARGET faults_test_lost_plan_check)
  target_include_directories(faults_test_lost_plan_check PRIVATE
                             ${PROJECT_SOURCE_DIR}/scheduler/src ${PROJECT_SOURCE_DIR}/runtime/internal)
endif()

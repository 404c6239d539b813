# Tensor parallelism driven by the real scheduler (docs/TP.md, `rkv sim --tp`).
#  tp_comm_local                 the in-process transport (kind local) behind --tp without mpirun
#  tp_sim_threads_np{2,4}_<mode> `rkv sim --tp N` with N threads: every build, no MPI needed
#  tp_sim_mpi_np{2,4}_<mode>     the same under mpirun, one rank per process (MPI builds with an
#                                mpirun; --oversubscribe --allow-run-as-root: CI has 2 cores)
# Modes (tp_sim_test.sh): agree, agreecpu, match, fewer, diverge, nopoolmin, die, bind, prefix,
# overlap. Each run is
# a fraction of a second except die (a 3 s collective deadline); every test has a TIMEOUT and
# the script itself kills a run after 100 s, so a hang fails instead of stalling CI.
rkv_add_test_exe(tp_comm_local SOURCES ${CMAKE_CURRENT_LIST_DIR}/test_comm_local.c)
rkv_register_test(tp_comm_local LABELS "integration;tp")
set_tests_properties(tp_comm_local PROPERTIES TIMEOUT 60)

set(_rkv_tp_script ${CMAKE_CURRENT_LIST_DIR}/tp_sim_test.sh)
# --tp-bind loads the hwloc topology, whose PCI plugin keeps a few hundred bytes forever:
# the topology tests' LeakSanitizer suppressions apply (ASan builds).
set(_rkv_tp_lsan
    "LSAN_OPTIONS=suppressions=${PROJECT_SOURCE_DIR}/tests/unit/topo/lsan.supp:fast_unwind_on_malloc=0")
set(_rkv_tp_modes agree agreecpu match fewer diverge nopoolmin die bind prefix overlap)
foreach(np 2 4)
  foreach(mode ${_rkv_tp_modes})
    rkv_register_test(tp_sim_threads_np${np}_${mode}
      COMMAND sh ${_rkv_tp_script} ${mode} ${np} $<TARGET_FILE:rkv>
      LABELS "integration;tp" ENV "${_rkv_tp_lsan}")
    set_tests_properties(tp_sim_threads_np${np}_${mode} PROPERTIES TIMEOUT 120)
  endforeach()
endforeach()

find_program(RKV_MPIRUN NAMES mpirun mpiexec)
if(RKV_HAVE_MPI AND RKV_MPIRUN)
  set(_rkv_tp_mpirun ${RKV_MPIRUN} --oversubscribe --allow-run-as-root --bind-to none)
  # yield_when_idle: oversubscribed ranks must not busy-poll each other off the cores (a step
  # sync then stalls for a scheduler time slice; docs/TP.md has the numbers).
  set(_rkv_tp_env OMPI_MCA_rmaps_base_oversubscribe=1 OMPI_MCA_mpi_yield_when_idle=1
      OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1
      # Open MPI keeps allocations until exit by design: LeakSanitizer would fail ASan builds.
      ASAN_OPTIONS=detect_leaks=0)
  execute_process(COMMAND ${RKV_MPIRUN} --version OUTPUT_VARIABLE _rkv_tp_mpirun_version
                  ERROR_QUIET RESULT_VARIABLE _rkv_tp_rc)
  set(_rkv_tp_ompi4 OFF)
  if(_rkv_tp_rc EQUAL 0 AND _rkv_tp_mpirun_version MATCHES "Open MPI\\) 4\\.")
    set(_rkv_tp_ompi4 ON)
  endif()
  foreach(np 2 4)
    foreach(mode ${_rkv_tp_modes})
      rkv_register_test(tp_sim_mpi_np${np}_${mode}
        COMMAND sh ${_rkv_tp_script} ${mode} ${np} $<TARGET_FILE:rkv> ${_rkv_tp_mpirun} -np ${np}
        LABELS "integration;tp;mpi" ENV ${_rkv_tp_env})
      set_tests_properties(tp_sim_mpi_np${np}_${mode} PROPERTIES TIMEOUT 120 PROCESSORS ${np})
    endforeach()
    # mpirun told not to kill the job when rank 1 exits (an Open MPI 4 parameter): the
    # survivors must notice the dead peer themselves through the collective deadline.
    if(NOT _rkv_tp_ompi4)
      continue()
    endif()
    rkv_register_test(tp_sim_mpi_np${np}_die_survivors
      COMMAND sh ${_rkv_tp_script} die ${np} $<TARGET_FILE:rkv> ${_rkv_tp_mpirun} -np ${np}
      LABELS "integration;tp;mpi"
      ENV ${_rkv_tp_env} OMPI_MCA_orte_abort_on_non_zero_status=0 RKV_TP_EXPECT_SURVIVORS=1)
    set_tests_properties(tp_sim_mpi_np${np}_die_survivors PROPERTIES TIMEOUT 120 PROCESSORS ${np})
  endforeach()
endif()

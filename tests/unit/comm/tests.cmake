# Multi-rank rkv_comm tests: tp_comm_mpi.c under mpirun with 2 and 4 ranks (oversubscribed:
# CI has 2 cores). Registered only when MPI was found and an mpirun exists. The hang/die
# modes must FAIL fast: expect_fail_fast.sh passes when mpirun exits non-zero well before its
# limit (a hang is a test failure, never a CI stall).
# test_comm_nccl.c is registered by the unit-test glob; it needs a GPU.
set_tests_properties(comm_test_comm_nccl PROPERTIES LABELS "unit;comm;gpu")

find_program(RKV_MPIRUN NAMES mpirun mpiexec)
if(RKV_HAVE_MPI AND RKV_MPIRUN)
  rkv_add_test_exe(comm_tp_comm_mpi SOURCES ${CMAKE_CURRENT_LIST_DIR}/tp_comm_mpi.c)
  # Without mpirun: an MPI singleton that the handle initialises and finalises itself.
  rkv_register_test(comm_mpi_singleton COMMAND comm_tp_comm_mpi single LABELS "unit;comm;mpi"
    ENV OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1 ASAN_OPTIONS=detect_leaks=0)
  set_tests_properties(comm_mpi_singleton PROPERTIES TIMEOUT 120)
  set(_rkv_mpirun ${RKV_MPIRUN} --oversubscribe --allow-run-as-root --bind-to none)
  # yield_when_idle: with 2 ranks on 2 busy CI cores Open MPI otherwise busy-polls and a
  # step sync can stall for a scheduler time slice (median 150 us instead of 2.6 us).
  set(_rkv_mpi_env OMPI_MCA_rmaps_base_oversubscribe=1 OMPI_MCA_mpi_yield_when_idle=1
      OMPI_ALLOW_RUN_AS_ROOT=1
      OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1
      # Open MPI keeps allocations until exit by design: LeakSanitizer would fail ASan builds.
      ASAN_OPTIONS=detect_leaks=0)
  # What the output must show: the survivors' own timeout report for hang; for die, any
  # output (Open MPI often kills the survivors before their deadline, which is fine).
  execute_process(COMMAND ${RKV_MPIRUN} --version OUTPUT_VARIABLE _rkv_mpirun_version
                  ERROR_QUIET RESULT_VARIABLE _rkv_rc)
  set(_rkv_ompi4 OFF)
  if(_rkv_rc EQUAL 0 AND _rkv_mpirun_version MATCHES "Open MPI\\) 4\\.")
    set(_rkv_ompi4 ON)
  endif()
  set(_rkv_want_hang "RKV_ERR_TIMEOUT after [0-9.]+ s: comm mpi")
  set(_rkv_want_die ".")
  foreach(np 2 4)
    foreach(mode agree split diverge diverge0)
      rkv_register_test(comm_mpi_np${np}_${mode}
        COMMAND ${_rkv_mpirun} -np ${np} $<TARGET_FILE:comm_tp_comm_mpi> ${mode}
        LABELS "unit;comm;mpi" ENV ${_rkv_mpi_env})
      set_tests_properties(comm_mpi_np${np}_${mode} PROPERTIES TIMEOUT 120 PROCESSORS ${np})
    endforeach()
    # hang: survivors time out after 2 s; die: Open MPI or the 5 s deadline ends the job.
    foreach(mode hang die)
      rkv_register_test(comm_mpi_np${np}_${mode}
        COMMAND sh ${CMAKE_CURRENT_LIST_DIR}/expect_fail_fast.sh 60
          "${_rkv_want_${mode}}"
          ${_rkv_mpirun} -np ${np} $<TARGET_FILE:comm_tp_comm_mpi> ${mode}
        LABELS "unit;comm;mpi" ENV ${_rkv_mpi_env})
      set_tests_properties(comm_mpi_np${np}_${mode} PROPERTIES TIMEOUT 120 PROCESSORS ${np})
    endforeach()
    # die_survivors: Open MPI 4's mpirun is told not to kill the job when a rank exits, so the
    # survivors must notice the dead peer themselves through the 5 s collective deadline.
    if(_rkv_ompi4)
      rkv_register_test(comm_mpi_np${np}_die_survivors
        COMMAND sh ${CMAKE_CURRENT_LIST_DIR}/expect_fail_fast.sh 60
          "RKV_ERR_(TIMEOUT|COMM) after [0-9.]+ s: comm mpi"
          ${_rkv_mpirun} -np ${np} $<TARGET_FILE:comm_tp_comm_mpi> die
        LABELS "unit;comm;mpi" ENV ${_rkv_mpi_env} OMPI_MCA_orte_abort_on_non_zero_status=0)
      set_tests_properties(comm_mpi_np${np}_die_survivors PROPERTIES TIMEOUT 120
        PROCESSORS ${np})
    endif()
  endforeach()
endif()

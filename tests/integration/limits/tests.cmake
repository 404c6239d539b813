# Hostile and mistyped input to the `rkv` tool (hostile_input.sh; the limits are listed in
# docs/REPLAY.md, docs/SIMULATOR.md, docs/EVICTION.md and docs/MODEL.md under "Input limits"):
#  hostile_<mode>  every case ends within seconds with a non-zero exit status and a message
#                  naming the option, file and line at fault; no crash, hang or silent exit.
#                  Modes: topo_alloc, topo_gpu_numa, sim_trace, sim_host_gib, replay,
#                  select_npy, eval_model, options (described in the script).
# Commands run under a 4 GiB address-space limit, or in sanitizer builds (which cannot run
# under one) a 4 GiB allocation cap, so a regression fails instead of exhausting the machine.
set(_rkv_hostile_env
    # `rkv topo` loads the hwloc topology, whose PCI plugin keeps a few hundred bytes forever
    "LSAN_OPTIONS=suppressions=${PROJECT_SOURCE_DIR}/tests/unit/topo/lsan.supp:fast_unwind_on_malloc=0")
if(RKV_SANITIZE)
  list(APPEND _rkv_hostile_env RKV_TEST_SANITIZE=1)
endif()
foreach(mode topo_alloc topo_gpu_numa sim_trace sim_host_gib replay select_npy eval_model options)
  rkv_register_test(hostile_${mode}
    COMMAND sh ${CMAKE_CURRENT_LIST_DIR}/hostile_input.sh $<TARGET_FILE:rkv> ${mode}
            ${PROJECT_SOURCE_DIR}
    LABELS "integration;tool" ENV "${_rkv_hostile_env}")
  set_tests_properties(hostile_${mode} PROPERTIES TIMEOUT 120)
endforeach()

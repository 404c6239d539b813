# `rkv topo` end to end (text, JSON placement on synthetic topologies). Needs a python3 for
# the JSON check (standard library only) and hwloc for synthetic topologies.
# hwloc's PCI discovery leaks a little inside hwloc_topology_load (ASan builds): suppress it;
# slow unwinding is needed because the leaking frames belong to an unloaded plugin.
set(_rkv_topo_lsan
    "LSAN_OPTIONS=suppressions=${CMAKE_CURRENT_LIST_DIR}/lsan.supp:fast_unwind_on_malloc=0")
set_property(TEST topo_test_topo APPEND PROPERTY ENVIRONMENT "${_rkv_topo_lsan}")

find_program(RKV_TOPO_PYTHON NAMES python3)
if(RKV_NUMPY_PYTHON)
  set(RKV_TOPO_PYTHON ${RKV_NUMPY_PYTHON})
endif()
if(RKV_TOPO_PYTHON AND RKV_HAVE_HWLOC)
  rkv_register_test(topo_rkv_topo_tool
    COMMAND ${RKV_TOPO_PYTHON} ${CMAKE_CURRENT_LIST_DIR}/check_rkv_topo.py $<TARGET_FILE:rkv>
    LABELS "unit;topo;tool" ENV "${_rkv_topo_lsan}")
  set_tests_properties(topo_rkv_topo_tool PROPERTIES TIMEOUT 120)
endif()
